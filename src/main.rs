//! The `xmpptap` binary: parse flags, set up logging, run a subcommand, turn its error into one line on stderr
//! and an exit code (64 for bad usage or configuration, 1 for failures at run time; `probe` exits with its
//! report's code, see `xmpptap::probe::report`).

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use xmpptap::cli::{CaCommand, Cli, Command, ProxyArgs};
use xmpptap::config::ProxyConfig;
use xmpptap::tls::ca::Ca;
use xmpptap::tls::ca::CaError;
use xmpptap::upstream::route::Service;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else clap rejects is bad usage.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.verbose);
    match cli.command {
        Command::Proxy(args) => proxy(&args),
        Command::Ca { action } => ca(action),
        Command::Show(args) => show(&args),
        Command::Export(args) => export(&args),
        Command::Probe { target } => probe(&target),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "xmpptap=info",
        1 => "xmpptap=debug",
        _ => "xmpptap=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .init();
}

fn proxy(args: &ProxyArgs) -> ExitCode {
    let config = match ProxyConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &e),
    };
    if args.check {
        return runtime.block_on(check(config));
    }
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        on_signal.cancel();
    });
    match runtime.block_on(xmpptap::listen::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_USAGE, &e),
    }
}

/// `--check`: everything `run` would build, without serving and without creating anything: a CA that does not
/// exist yet is reported (the first real run creates it), and the upstream trust is checked with a throwaway CA.
async fn check(config: ProxyConfig) -> ExitCode {
    let ca = match Ca::load(&config.ca_dir) {
        Ok(ca) => {
            let info = ca.describe();
            format!(
                "{} ({}, SHA-256 {})",
                config.ca_dir.display(),
                info.subject,
                info.sha256_fingerprint
            )
        }
        Err(CaError::NotFound { .. }) => format!(
            "{} (none yet; the first run creates it)",
            config.ca_dir.display()
        ),
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let scratch = std::env::temp_dir().join(format!("xmpptap-check-{}", std::process::id()));
    // Silenced: "created a new CA" would be misleading for a CA that is deleted right away.
    let throwaway =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            Ca::init(&scratch, true)
        });
    let trust = throwaway
        .map(|ca| xmpptap::tls::TlsContext::new(std::sync::Arc::new(ca), &config.upstream_trust));
    let _ = std::fs::remove_dir_all(&scratch);
    match trust {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return fail(EXIT_USAGE, &e),
        Err(e) => return fail(1, &e),
    }
    let own: Vec<_> = config.listeners.iter().map(|l| l.addr).collect();
    for service in [Service::Server, Service::Client] {
        if let Err(e) = xmpptap::listen::router(&config, service, &own) {
            return fail(EXIT_USAGE, &e);
        }
    }
    println!("configuration OK");
    println!("  s2s listen:   {:?}", config.s2s_listen);
    for (domain, target) in &config.routes {
        println!("  route:        {domain} -> {target}");
    }
    match &config.upstream {
        Some(upstream) => println!("  upstream:     {upstream} (for domains without a route)"),
        None => println!(
            "  other domains: DNS SRV _xmpps-server._tcp + _xmpp-server._tcp, then A/AAAA on 5269"
        ),
    }
    for (domain, target) in &config.c2s_routes {
        println!("  c2s route:    {domain} -> {target}");
    }
    match &config.c2s_upstream {
        Some(upstream) => println!("  c2s upstream: {upstream} (for domains without a c2s route)"),
        None => println!(
            "  other c2s domains: DNS SRV _xmpps-client._tcp + _xmpp-client._tcp, then A/AAAA on 5222"
        ),
    }
    println!(
        "  upstream TLS: {:?}, trust {:?}",
        config.upstream_tls, config.upstream_trust
    );
    println!("  CA:           {ca}");
    if let Some(log) = &config.log {
        println!("  transcript:   {}", log.display());
    }
    println!("  redacted:     {}", config.redaction.describe());
    let limits = &config.limits;
    println!(
        "  limits:       stanzas {} bytes, depth {}; {} connections, {} per domain; timeouts: header {:?}, \
         TLS {:?}, negotiation {:?}, idle {}",
        limits.framer.max_stanza_bytes,
        limits.framer.max_depth,
        limits.max_connections,
        limits.max_connections_per_domain,
        limits.header_timeout,
        limits.tls_timeout,
        limits.negotiation_timeout,
        limits
            .idle_timeout
            .map_or_else(|| String::from("never"), |idle| format!("{idle:?}")),
    );
    if let Some(path) = &config.rules {
        // --check already parsed the file (ProxyConfig::merge): count what it holds.
        let count = xmpptap::rules::SharedRules::new(Some(path.clone()))
            .map_or(0, |rules| rules.current().rules().len());
        let noun = if count == 1 { "rule" } else { "rules" };
        println!("  rules:        {} ({count} {noun})", path.display());
    }
    if let Some((interval, timeout)) = config.ping {
        println!("  pings:        every {interval:?}, timeout {timeout:?}");
    }
    if let Some(addr) = config.control {
        let token = if config.control_token.is_some() {
            "bearer token required"
        } else {
            "no token"
        };
        println!("  control API:  http://{addr}/ ({token})");
    }
    let policy = &config.policy;
    if !policy.is_open() {
        let mut parts = vec![policy.mode.to_string()];
        if !policy.allow.is_empty() {
            parts.push(format!("allow {}", policy.allow.join(", ")));
        }
        if !policy.block.is_empty() {
            parts.push(format!("block {}", policy.block.join(", ")));
        }
        if let Some(n) = policy.rate_connections {
            parts.push(format!("{n} connections/min"));
        }
        if let Some(n) = policy.rate_stanzas {
            parts.push(format!("{n} stanzas/s"));
        }
        if let Some(n) = policy.rate_bytes {
            parts.push(format!("{n} bytes/s"));
        }
        if policy.rate_stanzas.is_some() || policy.rate_bytes.is_some() {
            parts.push(format!("over the rate: {:?}", policy.rate_exceeded).to_lowercase());
        }
        println!("  policy:       {}", parts.join("; "));
    }
    if let Some(keylog) = &config.keylog {
        println!("  TLS key log:  {} (mode 0600)", keylog.display());
    }
    if let Some(pcap) = &config.pcap {
        println!("  pcap:         {} (decrypted)", pcap.display());
    }
    if let Some(pcapng) = &config.pcapng_tls {
        println!(
            "  pcapng:       {} (encrypted, with TLS secrets; mode 0600)",
            pcapng.display()
        );
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn ca(action: CaCommand) -> ExitCode {
    match action {
        CaCommand::Init { dir, force } => match Ca::init(&dir.ca_dir, force) {
            Ok(ca) => {
                println!("{}", ca.describe());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e),
        },
        CaCommand::Show { dir, json } => match Ca::load(&dir.ca_dir) {
            Ok(ca) if json => match serde_json::to_string_pretty(&ca.describe()) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            },
            Ok(ca) => {
                println!("{}", ca.describe());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e),
        },
        CaCommand::Export { dir } => match Ca::load(&dir.ca_dir) {
            Ok(ca) => {
                print!("{}", ca.cert_pem());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e),
        },
    }
}

/// `xmpptap show`.
fn show(args: &xmpptap::cli::ShowArgs) -> ExitCode {
    match xmpptap::show::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
}

/// `xmpptap export`: the outputs, then a summary on stderr.
fn export(args: &xmpptap::cli::ExportArgs) -> ExitCode {
    match xmpptap::export::run(args) {
        Ok(report) => {
            let redaction = xmpptap::export::redaction(args);
            eprintln!(
                "xmpptap: exported {} records, {} with secrets redacted ({})",
                report.records,
                report.redacted,
                redaction.describe()
            );
            if report.skipped > 0 {
                eprintln!(
                    "xmpptap: left out {} lines that are not transcript records",
                    report.skipped
                );
            }
            if let (Some(packets), Some(path)) = (report.packets, &args.pcap) {
                eprintln!("xmpptap: wrote {packets} packets to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e),
    }
}

/// `xmpptap probe`: runs it, prints the report (text or JSON) on stdout, exits with the report's code (64 when
/// the flags or files make the probe impossible).
fn probe(target: &xmpptap::cli::ProbeCommand) -> ExitCode {
    let json = match target {
        xmpptap::cli::ProbeCommand::S2s(args) => args.connect.json,
        xmpptap::cli::ProbeCommand::C2s(args) => args.connect.json,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &e),
    };
    let report = match runtime.block_on(xmpptap::probe::run(target)) {
        Ok(report) => report,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(1, &e),
        }
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code)
}

/// Prints `error` (with its causes) as one line and returns `code`.
fn fail(code: u8, error: &dyn std::error::Error) -> ExitCode {
    let mut line = format!("xmpptap: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
    ExitCode::from(code)
}
