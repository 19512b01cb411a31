//! What xmpptap does, in one run: two real Prosody servers, a.test and b.test, federate through xmpptap
//! (STARTTLS + Server Dialback), alice@a.test and bob@b.test chat, and xmpptap's transcript is printed live,
//! one readable line per event.
//!
//! Run it with `examples/federation-demo.sh` (installs Prosody, builds, runs this). By hand:
//!
//! ```text
//! cargo build && XMPPTAP_BIN=target/debug/xmpptap cargo run --example federation_demo
//! ```
//!
//! It reuses the interop-test harness (`tests/support`): an in-process DNS server, Prosody instances on
//! loopback addresses with ephemeral ports, a minimal C2S client, and the real `xmpptap` binary as a child
//! process. Each Prosody's DNS says the other domain is served at xmpptap's address; xmpptap's static routes
//! send each domain to its real server, so both directions (and the dialback verifications) cross xmpptap.
//!
//! Everything started here is stopped at the end, on failure and on Ctrl-C. The raw JSONL transcript is copied
//! as it is written to `federation-demo.jsonl` in the current directory (or `$XMPPTAP_DEMO_TRANSCRIPT`).
//!
//! Environment: `XMPPTAP_BIN` (default: the `xmpptap` next to this example's build directory),
//! `XMPPTAP_DEMO_TRANSCRIPT`, `XMPPTAP_DEMO_ARGS` (more `xmpptap proxy` flags, e.g. `--ping-interval 1` or
//! `--rules examples/rules/delay.toml`), `NO_COLOR`.

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::fs::File;
use std::io::{IsTerminal as _, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::client::{Client, Element, Frame};
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyConfig};
use support::xmpptap::Xmpptap;

/// `println!` that ignores a closed stdout (`... | head`): a panic there would skip the cleanup.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Loopback slice `127.90.1.x` (see `tests/support/mod.rs`: file ids 10-30 are the tests').
const FILE_ID: u8 = 90;
const RUN_ID: u8 = 1;

/// Where the transcript is copied unless `XMPPTAP_DEMO_TRANSCRIPT` says otherwise.
const DEFAULT_TRANSCRIPT: &str = "federation-demo.jsonl";

/// README sections suggested at the end.
const README_NEXT: &[(&str, &str)] = &[
    (
        "Quick start: between your own servers",
        "xmpptap between real servers, with its CA",
    ),
    ("The transcript", "every event and field of the JSONL file"),
    (
        "When things go wrong",
        "what each side gets when a peer misbehaves",
    ),
];

/// How long each message may take to arrive.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The conversation: (sender is alice?, body).
const CONVERSATION: &[(bool, &str)] = &[
    (true, "Hi Bob! This message crosses xmpptap."),
    (
        false,
        "Hi Alice, got it. Markup like <b> & co stays escaped.",
    ),
    (true, "Great. Can you see us, xmpptap?"),
    (false, "Bye!"),
];

/// Set on Ctrl-C / SIGTERM: the demo is being torn down on purpose, so harness panics are not failures.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let style = Style::detect();
    if let Err(e) = locate_binary() {
        err!("{}", style.red(format!("federation demo: {e:#}")));
        return ExitCode::FAILURE;
    }
    // Harness panics are the demo's failures; while shutting down on a signal they are only noise.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !INTERRUPTED.load(Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            err!("federation demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(style))
}

/// Makes sure `XMPPTAP_BIN` names an existing binary, defaulting to `<target>/<profile>/xmpptap` next to this
/// example (`<target>/<profile>/examples/federation_demo`).
fn locate_binary() -> anyhow::Result<()> {
    let path = match std::env::var_os("XMPPTAP_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().context("where is this example?")?;
            let guess = exe
                .parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("xmpptap"))
                .context("cannot guess the xmpptap binary's path")?;
            // Single-threaded here: no runtime or other thread exists yet.
            std::env::set_var("XMPPTAP_BIN", &guess);
            guess
        }
    };
    ensure!(
        path.is_file(),
        "no xmpptap binary at {} (build it with `cargo build`, or set XMPPTAP_BIN)",
        path.display()
    );
    for tool in ["prosody", "prosodyctl"] {
        ensure!(
            on_path(tool),
            "`{tool}` not found on PATH: install Prosody 0.12 and lua-unbound \
             (`apt-get install prosody lua-unbound`, or run examples/federation-demo.sh)"
        );
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

async fn run(style: Style) -> ExitCode {
    let started = Instant::now();
    let out = std::env::var_os("XMPPTAP_DEMO_TRANSCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TRANSCRIPT));
    let mut demo = tokio::spawn(demo(style, out.clone()));
    let outcome = tokio::select! {
        biased;
        () = signal() => {
            INTERRUPTED.store(true, Ordering::SeqCst);
            // Dropping the demo's future drops the harness handles, which stop Prosody, xmpptap and DNS.
            demo.abort();
            let _ = demo.await;
            err!(
                "\n{} stopped everything it started (Prosody ×2, xmpptap, DNS).{}",
                style.yellow("Interrupted:"),
                kept(&out)
            );
            return ExitCode::from(130);
        }
        joined = &mut demo => joined,
    };
    match outcome {
        Ok(Ok(())) => {
            out!(
                "{}",
                style.dim(format!(
                    "(demo took {:.1} s)",
                    started.elapsed().as_secs_f64()
                ))
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            err!(
                "\n{} {e:#}{}",
                style.red("federation demo FAILED:"),
                kept(&out)
            );
            ExitCode::FAILURE
        }
        Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
            drop(e);
            ExitCode::from(130)
        }
        Err(e) => {
            let why = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| String::from("panic"))
            } else {
                e.to_string()
            };
            let first = why.lines().next().unwrap_or_default();
            err!(
                "\n{} {first}\n(details above; the processes the demo started have been stopped){}",
                style.red("federation demo FAILED:"),
                kept(&out)
            );
            ExitCode::FAILURE
        }
    }
}

/// " Transcript so far: PATH" when the copy exists.
fn kept(out: &Path) -> String {
    if out.is_file() {
        format!(" Transcript so far: {}", out.display())
    } else {
        String::new()
    }
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn demo(style: Style, out: PathBuf) -> anyhow::Result<()> {
    out!(
        "{}",
        style.bold("xmpptap federation demo: two real Prosody servers federate through xmpptap")
    );
    out!(
        "  a.test and b.test each believe (through DNS) that the other domain lives at xmpptap's address;\n  \
         xmpptap relays each stream to the real server and writes down everything it sees.\n"
    );

    // --- Set up: DNS, two Prosody servers, xmpptap between them.
    let setup_started = Instant::now();
    let dns = DnsServer::start(support::addr(FILE_ID, RUN_ID, 53).into()).await;
    let forward = dns.unbound_forward();
    let a = Prosody::start(ProsodyConfig::new(
        "a.test",
        support::addr(FILE_ID, RUN_ID, 2),
        &forward,
    ));
    let b = Prosody::start(ProsodyConfig::new(
        "b.test",
        support::addr(FILE_ID, RUN_ID, 3),
        &forward,
    ));
    let proxy_ip = support::addr(FILE_ID, RUN_ID, 10);
    let mut args = vec![
        format!("--s2s-listen={proxy_ip}:0"),
        format!("--route=a.test={}", a.s2s_addr()),
        format!("--route=b.test={}", b.s2s_addr()),
        String::from("--dangerous-accept-any-upstream-cert"),
    ];
    // More `xmpptap proxy` flags from the command line of federation-demo.sh (rules, pings, control API).
    if let Some(more) = std::env::var_os("XMPPTAP_DEMO_ARGS") {
        args.extend(more.to_string_lossy().split_whitespace().map(str::to_owned));
    }
    let tap = Xmpptap::start(&args).await;
    for domain in ["a.test", "b.test"] {
        dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            0,
            0,
            tap.addr().port(),
            "proxy-host.test",
        );
    }
    dns.add_a("proxy-host.test", proxy_ip);
    a.register("alice", "alice-pw").await;
    b.register("bob", "bob-pw").await;
    a.wait_ready().await;
    b.wait_ready().await;

    let transcript = tap.dir().join("transcript.jsonl");
    out!("{}", style.bold("Setup (loopback only, ephemeral ports):"));
    for server in [&a, &b] {
        out!(
            "  {:<15} {:<18} c2s :{}  s2s :{}  STARTTLS required, dialback, self-signed certificate",
            format!("Prosody {}", server.domain()),
            server.ip(),
            server.c2s_port(),
            server.s2s_port()
        );
    }
    out!(
        "  {:<15} {:<18} _xmpp-server._tcp.a.test and _xmpp-server._tcp.b.test: SRV -> proxy-host.test:{} (xmpptap)",
        "DNS server",
        dns.addr().to_string(),
        tap.addr().port()
    );
    out!(
        "  {:<15} {:<18} routes a.test -> {}, b.test -> {}",
        "xmpptap",
        tap.addr().to_string(),
        a.s2s_addr(),
        b.s2s_addr()
    );
    out!(
        "{}",
        style.dim(format!(
            "      xmpptap proxy {} --log {} --ca-dir {}",
            args.join(" "),
            transcript.display(),
            tap.dir().join("ca").display()
        ))
    );
    out!(
        "  {} --dangerous-accept-any-upstream-cert because these Prosody servers use self-signed certificates.\n  \
         Toward the connecting server xmpptap presents certificates minted by its own CA; Prosody takes them\n  \
         here because its s2s_secure_auth is off, so Server Dialback authenticates the domains instead.",
        style.yellow("Note:")
    );
    out!(
        "  ready in {:.1} s\n",
        setup_started.elapsed().as_secs_f64()
    );

    let live = Live::start(transcript, &out, style)?;

    // --- The conversation.
    live.say(style.bold(
        "Conversation (▶/✔ = the clients; the other lines are xmpptap's transcript as it is written, times in UTC;\n\
         ↑ = sent by the server that opened that connection, ↓ = by the server it reached):",
    ));
    let mut bob = Client::login(b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    live.say(format!(
        "{} {} and {} logged in to their own servers (C2S, not through xmpptap)",
        style.green("✔"),
        alice.jid(),
        bob.jid()
    ));
    for &(from_alice, body) in CONVERSATION {
        let (sender, receiver, to) = if from_alice {
            (&mut alice, &mut bob, "bob@b.test")
        } else {
            (&mut bob, &mut alice, "alice@a.test")
        };
        live.say(style.bold(format!("▶ {} sends to {to}: {}", sender.jid(), quote(body))));
        let sent = Instant::now();
        sender.send_message(to, body).await;
        let (from, got) = receiver.wait_message(MESSAGE_TIMEOUT).await;
        let took = sent.elapsed();
        ensure!(
            from == sender.jid() && got == body,
            "{} expected {body:?} from {}, got {got:?} from {from}",
            receiver.jid(),
            sender.jid()
        );
        live.settle().await;
        live.say(format!(
            "{} {} received it after {} ms",
            style.green("✔"),
            receiver.jid(),
            took.as_millis()
        ));
    }

    let events = live.events();
    let summary = summarize(&events)?;
    live.say(format!("\n{} {summary}\n", style.bold("What xmpptap saw:")));

    // --- Tear down: clients, then servers (xmpptap records the connections closing), then xmpptap.
    live.say(style.bold("Stopping Prosody (xmpptap records the connections closing):"));
    alice.close().await;
    bob.close().await;
    let can_signal = on_path("kill");
    if can_signal {
        // A polite shutdown, so the transcript shows each server closing its streams.
        for server in [&a, &b] {
            terminate(&server.dir().join("prosody.pid"));
        }
        live.wait_until(Duration::from_secs(5), all_closed).await;
    }
    drop(a);
    drop(b);
    live.settle().await;
    let total = live.finish()?;
    let exit = if can_signal {
        match tap.stop().await {
            Some(code) => format!("exited with status {code}"),
            None => String::from("was stopped"),
        }
    } else {
        drop(tap);
        String::from("was stopped")
    };
    drop(dns);
    let shown = std::fs::canonicalize(&out).unwrap_or(out);
    out!(
        "\nStopped: both Prosody servers, the DNS server, xmpptap ({exit}). Temporary directories removed."
    );
    out!(
        "{} {} ({total} events: every stream header, feature list and stanza, with its raw XML)",
        style.bold("Full transcript:"),
        shown.display()
    );
    out!("\n{}", style.bold("Try next:"));
    out!(
        "  jq -c 'select(.event == \"dialback\") | {{conn, dir, element, result, from, to}}' {}",
        shown.display()
    );
    out!(
        "  jq -r 'select(.event == \"stanza\") | .xml' {}",
        shown.display()
    );
    out!("  xmpptap proxy --help");
    for (section, what) in README_NEXT {
        out!("  README, \"{section}\": {what}");
    }
    Ok(())
}

/// Sends SIGTERM to the process in `pidfile`, if there is one.
fn terminate(pidfile: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pidfile) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Every connection xmpptap accepted has closed.
fn all_closed(events: &[Value]) -> bool {
    let ids = |name: &str| -> BTreeSet<u64> {
        events
            .iter()
            .filter(|e| e["event"] == name)
            .filter_map(|e| e["conn"].as_u64())
            .collect()
    };
    ids("accepted") == ids("closed")
}

/// One sentence about the whole run; also checks that the demo showed what it claims.
fn summarize(events: &[Value]) -> anyhow::Result<String> {
    let conns: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["event"] == "accepted")
        .filter_map(|e| e["conn"].as_u64())
        .collect();
    let mut pairs = Vec::new();
    for conn in &conns {
        if let Some(header) = events.iter().find(|e| {
            e["conn"].as_u64() == Some(*conn) && e["event"] == "stream_opened" && e["dir"] == "up"
        }) {
            pairs.push(format!(
                "{}→{}",
                header["from"].as_str().unwrap_or("?"),
                header["to"].as_str().unwrap_or("?")
            ));
        }
    }
    let tls: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "tls_established")
        .collect();
    let versions: BTreeSet<&str> = tls.iter().filter_map(|e| e["version"].as_str()).collect();
    let valid = events
        .iter()
        .filter(|e| e["event"] == "dialback" && e["result"] == "valid")
        .count();
    let messages = events
        .iter()
        .filter(|e| e["event"] == "stanza" && e["name"] == "message")
        .count();
    if conns.is_empty() || messages < CONVERSATION.len() {
        bail!(
            "the transcript shows {} connections and {messages} messages; expected at least 1 and {}",
            conns.len(),
            CONVERSATION.len()
        );
    }
    Ok(format!(
        "{} S2S connection(s) ({}), TLS on {} of their {} legs ({}), {valid} valid dialback answer(s), \
         {messages} messages relayed and read in clear text.",
        conns.len(),
        pairs.join(", "),
        tls.len(),
        conns.len() * 2,
        versions.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Live transcript: follows the harness's transcript file, copies it to the output file, prints one line per event.

/// Follows xmpptap's transcript file while the demo runs.
struct Live {
    state: Arc<Mutex<LiveState>>,
    ticker: tokio::task::JoinHandle<()>,
}

struct LiveState {
    src: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    out: File,
    out_path: PathBuf,
    events: Vec<Value>,
    renderer: Renderer,
}

impl Live {
    fn start(src: PathBuf, out_path: &Path, style: Style) -> anyhow::Result<Live> {
        let out = File::create(out_path)
            .with_context(|| format!("create the transcript copy {}", out_path.display()))?;
        let state = Arc::new(Mutex::new(LiveState {
            src,
            offset: 0,
            partial: Vec::new(),
            out,
            out_path: out_path.to_owned(),
            events: Vec::new(),
            renderer: Renderer {
                style,
                conns: HashMap::new(),
            },
        }));
        let ticking = state.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                // A write error shows up again (and is reported) in `finish`.
                let _ = lock(&ticking).pump();
            }
        });
        Ok(Live { state, ticker })
    }

    /// Prints a narration line, in order with the transcript lines printed so far.
    fn say(&self, text: impl Display) {
        let mut state = lock(&self.state);
        let _ = state.pump();
        out!("{text}");
    }

    /// Waits until xmpptap has written nothing new for a moment (at most 3 s), printing what arrives.
    async fn settle(&self) {
        let started = Instant::now();
        let mut last_new = Instant::now();
        while last_new.elapsed() < Duration::from_millis(200)
            && started.elapsed() < Duration::from_secs(3)
        {
            if lock(&self.state).pump().unwrap_or(0) > 0 {
                last_new = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Prints transcript lines until `done(all events so far)` holds, or `limit` passes.
    async fn wait_until(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            {
                let mut state = lock(&self.state);
                let _ = state.pump();
                if done(&state.events) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    /// Stops following; returns how many events were copied.
    fn finish(&self) -> anyhow::Result<usize> {
        self.ticker.abort();
        let mut state = lock(&self.state);
        state.pump()?;
        Ok(state.events.len())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.ticker.abort();
        // On the way out (Ctrl-C, failure): keep the transcript copy as complete as possible.
        let _ = lock(&self.state).pump();
    }
}

fn lock(state: &Mutex<LiveState>) -> MutexGuard<'_, LiveState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveState {
    /// Reads what xmpptap appended since last time; copies and prints each complete line. Returns how many.
    fn pump(&mut self) -> anyhow::Result<usize> {
        let mut file = match File::open(&self.src) {
            Ok(file) => file,
            // Not created yet, or already removed with xmpptap's directory.
            Err(_) => return Ok(0),
        };
        let mut new = Vec::new();
        file.seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.read_to_end(&mut new))
            .with_context(|| format!("read {}", self.src.display()))?;
        self.offset += new.len() as u64;
        self.partial.extend_from_slice(&new);
        let mut count = 0;
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.out
                .write_all(&line)
                .with_context(|| format!("write {}", self.out_path.display()))?;
            match serde_json::from_slice::<Value>(&line) {
                Ok(event) => {
                    out!("{}", self.renderer.render(&event));
                    self.events.push(event);
                }
                Err(e) => out!(
                    "(unreadable transcript line: {e}: {})",
                    String::from_utf8_lossy(&line).trim_end()
                ),
            }
            count += 1;
        }
        Ok(count)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering one transcript event as one line.

/// Who opened a connection, to whom (from the initiator's stream header).
#[derive(Clone, Default)]
struct ConnInfo {
    initiator: Option<String>,
    receiver: Option<String>,
}

struct Renderer {
    style: Style,
    conns: HashMap<u64, ConnInfo>,
}

impl Renderer {
    fn render(&mut self, e: &Value) -> String {
        let s = self.style;
        let conn = e["conn"].as_u64().unwrap_or(0);
        let dir = e["dir"].as_str();
        if e["event"] == "stream_opened" && dir == Some("up") {
            let info = self.conns.entry(conn).or_default();
            info.initiator = e["from"]
                .as_str()
                .map(str::to_owned)
                .or(info.initiator.take());
            info.receiver = e["to"].as_str().map(str::to_owned).or(info.receiver.take());
        }
        if e["event"] == "upstream_connected" {
            let info = self.conns.entry(conn).or_default();
            if info.receiver.is_none() {
                info.receiver = e["domain"].as_str().map(str::to_owned);
            }
        }
        let info = self.conns.get(&conn).cloned().unwrap_or_default();
        let initiator = info.initiator.as_deref().unwrap_or("initiator");
        let receiver = info.receiver.as_deref().unwrap_or("receiver");

        let time = e["ts"]
            .as_str()
            .and_then(|ts| ts.get(11..23))
            .unwrap_or("??:??:??.???");
        let arrow = match dir {
            Some("up") => "↑",
            Some("down") => "↓",
            _ => " ",
        };
        // Elements xmpptap writes itself (stream errors, closes) are shown as coming from it.
        let by_xmpptap = e["origin"] == "xmpptap";
        let route = match dir {
            Some("up") if by_xmpptap => format!("xmpptap→{receiver}"),
            Some("down") if by_xmpptap => format!("xmpptap→{initiator}"),
            Some("up") => format!("{initiator}→{receiver}"),
            Some("down") => format!("{receiver}→{initiator}"),
            _ => String::new(),
        };
        let text = self.text(e, initiator, receiver);
        format!(
            "{}  {} {arrow} {route:<14} {text}",
            s.dim(time),
            s.conn(conn, format!("conn {conn}")),
        )
    }

    fn text(&self, e: &Value, initiator: &str, receiver: &str) -> String {
        let s = self.style;
        let str_of = |key: &str| e[key].as_str().unwrap_or("?").to_owned();
        let event = e["event"].as_str().unwrap_or("?");
        match event {
            "accepted" => format!(
                "accepted a connection from {} on {}",
                str_of("peer"),
                str_of("local")
            ),
            "upstream_connected" => {
                let route = &e["route"];
                let why = match route["kind"].as_str() {
                    Some("static") => String::from("static route"),
                    Some("upstream") => String::from("--upstream"),
                    Some("srv") => format!("SRV {}", route["target"].as_str().unwrap_or("?")),
                    Some("fallback") => String::from("A/AAAA fallback"),
                    _ => route.to_string(),
                };
                let failed = e["failed"].as_array().map_or(0, Vec::len);
                let retries = if failed > 0 {
                    format!(", after {failed} failed attempt(s)")
                } else {
                    String::new()
                };
                format!(
                    "connected upstream to {} at {} ({why}{retries})",
                    str_of("domain"),
                    str_of("addr")
                )
            }
            "upstream_failed" => s.red(format!(
                "could not reach {}: {}",
                str_of("domain"),
                str_of("error")
            )),
            "stream_opened" => {
                let mut text = format!("stream header #{}", e["stream"].as_u64().unwrap_or(0));
                for key in ["from", "to"] {
                    if let Some(value) = e[key].as_str() {
                        text.push_str(&format!(" {key}={value}"));
                    }
                }
                if let Some(id) = e["id"].as_str().filter(|id| !id.is_empty()) {
                    text.push_str(&format!(" id={}", shorten(id, 8)));
                }
                if e["origin"] == "xmpptap" {
                    text.push_str(" (written by xmpptap)");
                }
                text
            }
            "features" => format!("features: {}", features(e)),
            "starttls" => String::from("starttls: let's switch to TLS"),
            "proceed" => String::from("proceed: TLS handshakes start (one per leg)"),
            "tls_established" => {
                let (leg, peer) = if e["side"] == "initiator" {
                    ("initiator leg", initiator)
                } else {
                    ("receiver leg", receiver)
                };
                let mut text = format!(
                    "TLS established on the {leg} ({peer} ⇄ xmpptap): {} {}",
                    str_of("version"),
                    str_of("cipher")
                );
                if let Some(alpn) = e["alpn"].as_str() {
                    text.push_str(&format!(", ALPN {alpn}"));
                }
                s.green(text)
            }
            "tls_failed" => s.red(format!(
                "TLS failed on the {} leg: {}",
                str_of("side"),
                str_of("error")
            )),
            "stanza" => stanza(e, s),
            "dialback" => {
                let element = format!("db:{}", str_of("element"));
                let result = str_of("result");
                let text = match result.as_str() {
                    "request" if element == "db:result" => {
                        format!(
                            "{element} request: \"I am {}, let me send to {}\" (dialback key)",
                            str_of("from"),
                            str_of("to")
                        )
                    }
                    "request" => format!(
                        "{element} request: \"did you issue this key?\" (id={})",
                        shorten(e["id"].as_str().unwrap_or("?"), 8)
                    ),
                    "valid" => s.green(format!("{element} valid ✔")),
                    other => s.red(format!("{element} {other}")),
                };
                text
            }
            "stream_error" => {
                let who = if e["origin"] == "xmpptap" {
                    " (sent by xmpptap)"
                } else {
                    ""
                };
                let detail = e["text"]
                    .as_str()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default();
                s.yellow(format!(
                    "stream error <{}>{detail}{who}",
                    str_of("condition")
                ))
            }
            "stream_closed" => {
                if e["origin"] == "xmpptap" {
                    String::from("</stream:stream> (sent by xmpptap)")
                } else {
                    String::from("</stream:stream>")
                }
            }
            "protocol_error" => s.red(format!(
                "protocol error by the {}: <{}> {}",
                str_of("side"),
                str_of("condition"),
                str_of("error")
            )),
            "closed" => {
                let n = |key: &str| e[key].as_u64().unwrap_or(0);
                let (by, reason) = (str_of("by"), str_of("reason"));
                let why = if reason.starts_with(&by) {
                    reason
                } else {
                    format!("by {by}: {reason}")
                };
                format!(
                    "closed ({why}) after {} ms: ↑ {} B, {} stanzas; ↓ {} B, {} stanzas",
                    n("duration_ms"),
                    n("bytes_up"),
                    n("stanzas_up"),
                    n("bytes_down"),
                    n("stanzas_down")
                )
            }
            "tap_dropped" => s.red(format!(
                "the transcript writer fell behind: {} events dropped",
                e["count"]
            )),
            "rule" => {
                let text = |key: &str| e[key].as_str().unwrap_or("?").to_owned();
                let mut line = format!("rule {} {}", text("rule"), text("action"));
                if let Some(detail) = e["detail"].as_str() {
                    line.push_str(&format!(": {detail}"));
                }
                if let Some(refused) = e["refused"].as_str() {
                    line.push_str(&format!(" (refused: {refused})"));
                }
                s.yellow(line)
            }
            "ping" => {
                let mut line = format!(
                    "ping {} {}",
                    e["pair"].as_str().unwrap_or("?"),
                    e["result"].as_str().unwrap_or("?")
                );
                if let Some(rtt) = e["rtt_ms"].as_f64() {
                    line.push_str(&format!(" in {rtt:.1} ms"));
                }
                line
            }
            other => {
                // An event this renderer does not know yet: show its fields, minus the envelope.
                let mut rest = e.clone();
                if let Some(map) = rest.as_object_mut() {
                    for key in ["ts", "conn", "dir", "event"] {
                        map.remove(key);
                    }
                }
                format!("{other} {rest}")
            }
        }
    }
}

/// `starttls (required), dialback, SASL EXTERNAL`.
fn features(e: &Value) -> String {
    let mut parts = Vec::new();
    match e["starttls"].as_bool() {
        Some(true) => parts.push(String::from("starttls (required)")),
        Some(false) => parts.push(String::from("starttls")),
        None => {}
    }
    let list = |key: &str| -> Vec<String> {
        e[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mechanisms = list("mechanisms");
    if !mechanisms.is_empty() {
        parts.push(format!("SASL {}", mechanisms.join(" ")));
    }
    if e["dialback"] == true {
        parts.push(String::from(if e["dialback_errors"] == true {
            "dialback (with errors)"
        } else {
            "dialback"
        }));
    }
    for (key, name) in [("bidi", "bidi"), ("sm", "stream management")] {
        if e[key] == true {
            parts.push(String::from(name));
        }
    }
    let compression = list("compression");
    if !compression.is_empty() {
        parts.push(format!("compression {}", compression.join(" ")));
    }
    parts.extend(list("other"));
    if parts.is_empty() {
        String::from("(none)")
    } else {
        parts.join(", ")
    }
}

/// `message chat alice@a.test/test → bob@b.test: "hello"`, `iq get a.test → b.test: urn:xmpp:ping ping`.
fn stanza(e: &Value, s: Style) -> String {
    let name = e["name"].as_str().unwrap_or("?");
    let parsed =
        e["xml"]
            .as_str()
            .and_then(|xml| match support::client::next_frame(xml.as_bytes()) {
                Some((Frame::Element(element), _)) => Some(element),
                _ => None,
            });
    let mut head = String::from(name);
    if let Some(kind) = e["type"].as_str() {
        head.push(' ');
        head.push_str(kind);
    }
    let from = e["from"].as_str().unwrap_or("?");
    let to = e["to"].as_str().unwrap_or("?");
    let addressing = format!("{from} → {to}");
    match (name, parsed) {
        ("message", Some(element)) => match element.child("body") {
            Some(body) => s.bold(format!("{head} {addressing}: {}", quote(&body.text))),
            None => format!("{head} {addressing} {}", first_child(&element)),
        },
        (_, Some(element)) => format!("{head} {addressing} {}", first_child(&element)),
        (_, None) => {
            let ns = e["ns"]
                .as_str()
                .map(|ns| format!(" ({ns})"))
                .unwrap_or_default();
            format!("{head}{ns} {addressing}")
        }
    }
}

/// `[urn:xmpp:ping ping]` for the first child element, or nothing.
fn first_child(element: &Element) -> String {
    match element.children.first() {
        Some(child) => match child.attr("xmlns") {
            Some(ns) => format!("[{ns} {}]", child.local_name()),
            None => format!("[{}]", child.local_name()),
        },
        None => String::new(),
    }
}

/// A quoted, single-line, length-limited rendering of message text.
fn quote(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("\"{}\"", shorten(&one_line, 80))
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// ANSI colours when stdout is a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(self, code: &str, text: impl Display) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(self, text: impl Display) -> String {
        self.paint("1", text)
    }
    fn dim(self, text: impl Display) -> String {
        self.paint("2", text)
    }
    fn red(self, text: impl Display) -> String {
        self.paint("31", text)
    }
    fn green(self, text: impl Display) -> String {
        self.paint("32", text)
    }
    fn yellow(self, text: impl Display) -> String {
        self.paint("33", text)
    }

    /// A colour per connection, so interleaved connections are easy to tell apart.
    fn conn(self, conn: u64, text: impl Display) -> String {
        const COLORS: [&str; 4] = ["36", "35", "34", "33"];
        let index = usize::try_from(conn % 4).unwrap_or(0);
        self.paint(COLORS[index], text)
    }
}
