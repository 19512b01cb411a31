//! Command-line interface. The doc comments on these types are what `xmpptap --help` prints.
//!
//! This module only describes flags; [`crate::config`] merges them with the config file and validates.

use crate::upstream::route::RouteTarget;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A transparent, intercepting XMPP proxy and debugger.
///
/// Put xmpptap between two XMPP servers to see every stanza that crosses the wire: it terminates TLS with
/// certificates minted from its own CA, lets Server Dialback pass end to end, and writes a JSON Lines
/// transcript.
#[derive(Debug, Parser)]
#[command(
    name = "xmpptap",
    version,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    /// More detail on stderr: -v for debug (every stanza), -vv for trace. RUST_LOG overrides this.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Intercept XMPP streams, server-to-server and client-to-server, STARTTLS or Direct TLS, and transcribe
    /// them.
    ///
    /// Each initiating server's stream goes to the domain in its stream header's `to`: a --route for that
    /// domain wins, else --upstream, else DNS SRV `_xmpps-server._tcp.DOMAIN` (Direct TLS) and
    /// `_xmpp-server._tcp.DOMAIN` ordered together (XEP-0368), then A/AAAA on 5269. Client streams do the
    /// same with --c2s-route, --c2s-upstream and the `-client` SRV records (A/AAAA on 5222).
    /// Point the initiating servers at xmpptap (DNS/SRV, or their own static routes) and make them trust the
    /// CA printed by `xmpptap ca export`, or disable certificate checks for S2S on them.
    ///
    /// Example: xmpptap proxy --s2s-listen 127.0.0.1:5269 --route b.test=10.0.0.3:5269 --log -
    Proxy(Box<ProxyArgs>),
    /// Manage xmpptap's certificate authority (the CA that signs the certificates xmpptap presents).
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
    /// Print a JSON Lines transcript for people: time, connection, direction with the domains, a summary and
    /// the XML pretty-printed (coloured on a terminal).
    ///
    /// Example: xmpptap show transcript.jsonl --follow --domain b.test --element message
    Show(ShowArgs),
    /// Make a shareable copy of a transcript (secrets redacted by default), and a pcap from it.
    ///
    /// Example: xmpptap export transcript.jsonl -o shared.jsonl --pcap shared.pcap
    Export(ExportArgs),
    /// Check a server from outside, as another server (s2s) or a client (c2s) would reach it: DNS, TCP,
    /// stream, features, TLS and the certificate, dialback or SASL, and a few requests, every phase timed.
    ///
    /// Prints a readable report, or JSON with --json (the same shape for both probes). The exit code says
    /// where it failed.
    ///
    /// Example: xmpptap probe s2s example.net --from probe.example.org --dialback
    #[command(after_help = PROBE_EXIT_CODES)]
    Probe {
        #[command(subcommand)]
        target: ProbeCommand,
    },
}

/// `xmpptap show` flags. Filters of different kinds must all match; a filter given several times matches any
/// of its values.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The transcript ("-" for stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Keep reading as the file grows (like tail -f), until interrupted.
    #[arg(short, long)]
    pub follow: bool,

    /// Only connection N.
    #[arg(long, value_name = "N")]
    pub conn: Vec<u64>,

    /// Only records involving DOMAIN: either side of the connection's domain pair, or the record's from/to.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Vec<String>,

    /// Only one direction: up (initiator to receiver) or down.
    #[arg(long, value_enum, value_name = "DIR")]
    pub dir: Option<DirFilter>,

    /// Only records whose XML is a NAME element (message, iq, db:result or result, features...).
    #[arg(long, value_name = "NAME")]
    pub element: Vec<String>,

    /// Only records of event type T (stanza, dialback, tls_established...) or stanza type T (chat, get,
    /// result, error...).
    #[arg(long = "type", value_name = "T")]
    pub kind: Vec<String>,

    /// Only records whose JSON line contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub grep: Vec<String>,

    /// Colour the output: auto (when stdout is a terminal and NO_COLOR is not set), always, never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
}

/// A direction to filter on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirFilter {
    /// From the initiator toward the receiver.
    Up,
    /// From the receiver toward the initiator.
    Down,
}

/// When to colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

/// `xmpptap export` flags. Secrets are redacted by default: the point of an export is to share it.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The transcript ("-" for stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Write the redacted transcript to OUT ("-" for stdout). Default: stdout, unless --pcap is given.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Also write a pcap of the (redacted) conversations, as `xmpptap proxy --pcap` would have.
    #[arg(long, value_name = "OUT")]
    pub pcap: Option<PathBuf>,

    /// Redact every secret: SASL payloads, dialback keys, passwords, stream management ids. This is the
    /// default; the flag only says so.
    #[arg(long)]
    pub redact: bool,

    /// Redact message bodies too.
    #[arg(long)]
    pub redact_bodies: bool,

    /// Copy the records without redacting anything (they keep what the proxy logged).
    #[arg(long, conflicts_with_all = ["redact", "redact_bodies"])]
    pub keep_secrets: bool,
}

/// `xmpptap ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (certificate + key) in the CA directory.
    Init {
        #[command(flatten)]
        dir: CaDir,
        /// Replace an existing CA. Servers trusting the old one must be given the new certificate.
        #[arg(long)]
        force: bool,
    },
    /// Describe the CA: subject, validity, SHA-256 fingerprint, file paths.
    Show {
        #[command(flatten)]
        dir: CaDir,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the CA certificate (PEM) to stdout, to add to a server's trust store.
    Export {
        #[command(flatten)]
        dir: CaDir,
    },
}

/// Where the CA lives.
#[derive(Debug, Args)]
pub struct CaDir {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub ca_dir: PathBuf,
}

/// When to use TLS on the leg from xmpptap to the receiving server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Mirror the initiator: STARTTLS upstream exactly when the initiator asks for it.
    #[default]
    Auto,
    /// Upgrade the upstream leg whenever the receiver offers STARTTLS, even if the initiator stays plaintext.
    /// The initiator then sees the receiver's post-TLS stream (use it to read a server that insists on TLS).
    Always,
}

/// What xmpptap does about S2S SASL EXTERNAL, which needs the initiator's private key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    /// Remove EXTERNAL from the receiver's features: the servers fall back to dialback.
    #[default]
    None,
    /// Present a client certificate for the initiating domain, minted from xmpptap's CA.
    Mint,
}

/// `xmpptap proxy` flags. Every flag can also be set in the --config file; a flag given here wins.
#[derive(Debug, Default, Args)]
pub struct ProxyArgs {
    /// TOML config file with any of these settings (keys as the flags, with underscores: s2s_listen,
    /// routes = { "b.test" = "10.0.0.3:5269" }, upstream, ...). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate flags, config file, CA and upstream trust, print the effective settings, and exit.
    #[arg(long)]
    pub check: bool,

    /// Address to accept S2S connections on (repeatable). Without any --*-listen flag, xmpptap listens on
    /// all four defaults: s2s 0.0.0.0:5269, c2s 0.0.0.0:5222, s2s-tls 0.0.0.0:5270, c2s-tls 0.0.0.0:5223;
    /// with any of them, only on those given.
    #[arg(long, value_name = "ADDR")]
    pub s2s_listen: Vec<SocketAddr>,

    /// Address to accept client (C2S) connections on (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub c2s_listen: Vec<SocketAddr>,

    /// Address to accept S2S Direct TLS (XEP-0368) connections on (repeatable): TLS first, with a
    /// certificate minted for the SNI name.
    #[arg(long, value_name = "ADDR")]
    pub s2s_tls_listen: Vec<SocketAddr>,

    /// Address to accept C2S Direct TLS (XEP-0368) connections on (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub c2s_tls_listen: Vec<SocketAddr>,

    /// Domain to mint the certificate for when a Direct TLS client sends no SNI.
    #[arg(long, value_name = "DOMAIN")]
    pub default_domain: Option<String>,

    /// Remove STARTTLS from the features the initiator sees (a deliberate downgrade, to read a plaintext path).
    /// Combine with --upstream-tls always when the receiver insists on TLS.
    #[arg(long)]
    pub strip_starttls: bool,

    /// Refuse initiators that do not use TLS (<policy-violation/>).
    #[arg(long)]
    pub require_tls: bool,

    /// S2S SASL EXTERNAL: `none` removes EXTERNAL from the features so the servers use dialback; `mint`
    /// presents upstream a client certificate for the initiating domain minted from xmpptap's CA (works where
    /// the receiver trusts that CA).
    #[arg(long, value_enum, value_name = "MODE")]
    pub client_cert: Option<ClientCert>,

    /// Send S2S streams for DOMAIN to HOST:PORT instead of asking DNS (repeatable; wins over everything).
    /// tls://HOST:PORT connects with Direct TLS (XEP-0368) instead of plaintext/STARTTLS.
    #[arg(long, value_name = "DOMAIN=[tls://]HOST:PORT", value_parser = parse_route)]
    pub route: Vec<(String, RouteTarget)>,

    /// Send every S2S stream without a --route to HOST:PORT (reverse-proxy mode), instead of asking DNS.
    /// tls://HOST:PORT connects with Direct TLS.
    #[arg(long, value_name = "[tls://]HOST:PORT")]
    pub upstream: Option<RouteTarget>,

    /// Send C2S streams for DOMAIN to HOST:PORT instead of asking DNS (repeatable). Separate from --route
    /// because a domain's client and server ports differ. tls://HOST:PORT connects with Direct TLS.
    #[arg(long, value_name = "DOMAIN=[tls://]HOST:PORT", value_parser = parse_route)]
    pub c2s_route: Vec<(String, RouteTarget)>,

    /// Send every C2S stream without a --c2s-route to HOST:PORT, instead of asking DNS
    /// (_xmpps-client/_xmpp-client SRV, then A/AAAA on 5222). tls://HOST:PORT connects with Direct TLS.
    #[arg(long, value_name = "[tls://]HOST:PORT")]
    pub c2s_upstream: Option<RouteTarget>,

    /// Ask this DNS server (UDP/TCP) for SRV and A/AAAA records instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,

    /// Verify receiving servers' certificates against the CA certificates in this PEM file instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Accept any certificate from receiving servers (no chain or name check). For test setups only: anyone
    /// on the path could then read the upstream leg.
    #[arg(long)]
    pub dangerous_accept_any_upstream_cert: bool,

    /// When to use TLS toward the receiving server.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub upstream_tls: Option<UpstreamTls>,

    /// Directory of xmpptap's CA (created on first use). Default: certs
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Write the JSON Lines transcript to FILE ("-" for stdout; on a terminal, stdout gets the readable live
    /// view of `xmpptap show` instead). Appends to an existing file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Redact every secret in the transcript and captures, not only SASL payloads: dialback keys, passwords
    /// in registration and iq:auth queries and private data-form fields, stream management resumption ids.
    /// Each is replaced by a marker of the same length (`[redacted:44]****...`).
    #[arg(long)]
    pub redact: bool,

    /// Redact message bodies too (implies --redact).
    #[arg(long)]
    pub redact_bodies: bool,

    /// Keep SASL payloads (credentials, SCRAM proofs) in the transcript and captures; by default they are
    /// redacted.
    #[arg(long, conflicts_with_all = ["redact", "redact_bodies"])]
    pub log_secrets: bool,

    /// Append the TLS secrets of both legs of every connection to FILE, in the NSS key log format
    /// (SSLKEYLOGFILE), so that Wireshark or tshark can decrypt a raw capture of the real traffic (tshark -o
    /// tls.keylog_file:FILE). Created with mode 0600: keep it private, whoever reads it can read every stream.
    #[arg(long, value_name = "FILE")]
    pub keylog: Option<PathBuf>,

    /// Write the decrypted conversations to FILE as a pcap for Wireshark or tshark ("-" for stdout, e.g.
    /// `| wireshark -k -i -`). Each leg is a TCP conversation with its real addresses and ports and synthetic
    /// headers; after STARTTLS the decrypted rest of a leg continues as a new conversation from the next client
    /// port. XMPP on ports other than 5222 needs decode-as: tshark -r FILE -d tcp.port==5269,xmpp. Replaces FILE.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Write what really crossed each leg (encrypted once TLS is up) to FILE as pcapng, with the TLS secrets of
    /// both legs embedded so that Wireshark and tshark decrypt it by themselves (tshark -r FILE -d
    /// tcp.port==5269,xmpp). Created with mode 0600: whoever reads it can read every stream. Replaces FILE.
    #[arg(long, value_name = "FILE")]
    pub pcapng_tls: Option<PathBuf>,

    /// Seconds to wait for one TCP connection attempt to the receiver. Default 10.
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<f64>,

    /// Extra rounds over all upstream addresses after the first fails. Default 3.
    #[arg(long, value_name = "N")]
    pub connect_retries: Option<u32>,

    /// Seconds to wait before the first retry; each later wait is multiplied by --connect-backoff-factor.
    /// Default 1.
    #[arg(long, value_name = "SECS")]
    pub connect_backoff: Option<f64>,

    /// Multiplier between retry waits. Default 2.
    #[arg(long, value_name = "N")]
    pub connect_backoff_factor: Option<u32>,

    /// Longest wait between retries, in seconds. Default 30.
    #[arg(long, value_name = "SECS")]
    pub connect_backoff_max: Option<f64>,

    /// Largest stanza accepted, in bytes; a bigger one gets <policy-violation/>. Default 262144.
    #[arg(long, value_name = "BYTES")]
    pub max_stanza_size: Option<usize>,

    /// Deepest element nesting accepted inside a stanza. Default 64.
    #[arg(long, value_name = "N")]
    pub max_depth: Option<usize>,

    /// Seconds an initiator has to send its stream header after connecting. Default 30.
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<f64>,

    /// Seconds a TLS handshake may take on either leg. Default 10.
    #[arg(long, value_name = "SECS")]
    pub tls_timeout: Option<f64>,

    /// Seconds to wait for each step of stream negotiation (headers, features, proceed). Default 60.
    #[arg(long, value_name = "SECS")]
    pub negotiation_timeout: Option<f64>,

    /// Seconds a relayed connection may go without a complete element or whitespace keepalive in either
    /// direction; then both sides get <connection-timeout/>. Bytes of an unfinished element do not count, so
    /// a peer trickling one element more slowly than this gets <connection-timeout/> alone. 0 never times
    /// out. Default 900 (longer than Prosody's 840 s keepalive interval).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,

    /// Most connections served at once, all listeners together. One more is answered <policy-violation/>
    /// (plaintext listeners) or closed (Direct TLS listeners) at once, without being read. Default 10000.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most connections served at once toward one receiving domain: the `to` of the initiator's stream header
    /// (S2S and C2S counted apart). One more gets <policy-violation/> before xmpptap connects upstream.
    /// Default 1000.
    #[arg(long, value_name = "N")]
    pub max_connections_per_domain: Option<usize>,

    /// Fault-injection and rewrite rules (TOML, `[[rule]]` tables; see examples/rules/). Reloaded on SIGHUP
    /// and through the control API (POST /rules/reload); a file that does not parse leaves the old rules in
    /// force. Every action taken is a `rule` event in the transcript.
    #[arg(long, value_name = "FILE", help_heading = "Rules, pings and control")]
    pub rules: Option<PathBuf>,

    /// Send an XEP-0199 ping every SECS on every established stream: S2S from the initiating to the
    /// receiving domain, C2S to the server on the client's behalf. The answer (on the same stream or, for
    /// S2S, on the reverse connection) is kept from the initiator; its round trip goes to the transcript
    /// (`ping` events) and to /metrics. Not sent on streams with XEP-0198 stream management.
    #[arg(long, value_name = "SECS", help_heading = "Rules, pings and control")]
    pub ping_interval: Option<f64>,

    /// Seconds after which an unanswered ping is reported as timed out. Default 10.
    #[arg(long, value_name = "SECS", help_heading = "Rules, pings and control")]
    pub ping_timeout: Option<f64>,

    /// Serve the control API and Prometheus metrics (GET /metrics) over HTTP on ADDR, e.g. 127.0.0.1:9269.
    /// A non-loopback address is refused unless --control-token is set.
    #[arg(long, value_name = "ADDR", help_heading = "Rules, pings and control")]
    pub control: Option<SocketAddr>,

    /// Bearer token the control API then requires (`Authorization: Bearer TOKEN`) on every request.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "XMPPTAP_CONTROL_TOKEN",
        hide_env_values = true,
        help_heading = "Rules, pings and control"
    )]
    pub control_token: Option<String>,

    #[command(flatten)]
    #[command(next_help_heading = "Federation policy")]
    pub policy: crate::policy::PolicyArgs,
}

/// Parses `DOMAIN=[tls://]HOST:PORT`.
pub fn parse_route(s: &str) -> Result<(String, RouteTarget), String> {
    let (domain, target) = s
        .split_once('=')
        .ok_or_else(|| format!("expected DOMAIN=[tls://]HOST:PORT, got {s:?}"))?;
    let target = target
        .parse::<RouteTarget>()
        .map_err(|e| format!("route for {domain}: {e}"))?;
    Ok((domain.trim().to_ascii_lowercase(), target))
}

/// The exit codes of `xmpptap probe`, printed under its --help.
pub const PROBE_EXIT_CODES: &str = "Exit codes: 0 everything asked for worked; 2 DNS (no usable SRV or A/AAAA \
    answer); 3 connect (no address accepted TCP); 4 TLS (handshake, certificate not valid for the domain, \
    STARTTLS required but missing); 5 authentication (SASL); 6 dialback (invalid, error or no answer); 7 stream \
    (stream error, protocol violation, timeout); 8 a requested check failed (bind, roster, message, ping); \
    1 local error; 64 bad usage.";

/// `xmpptap probe ...`
#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    /// Probe a domain's server-to-server service as the server of --from would reach it.
    ///
    /// DNS: SRV _xmpps-server._tcp and _xmpp-server._tcp, ordered together as a server tries them, then A/AAAA
    /// on 5269; each candidate is tried in order. Then the stream header and features, STARTTLS (or Direct
    /// TLS), the certificate chain and whether it verifies for DOMAIN, and optionally SASL EXTERNAL, dialback
    /// and a ping.
    ///
    /// To get dialback `valid`, the receiving server must be able to check the key: either give the real
    /// dialback secret of --from's server (--dialback-secret-env), or let the probe answer the check itself
    /// with --dialback-listen ADDR and make DNS for --from (as the receiving server sees it) point there, e.g.
    /// `_xmpp-server._tcp.FROM. SRV 0 0 PORT host-of-ADDR.`
    ///
    /// Example: xmpptap probe s2s example.net --from probe.example.org --dialback --dialback-listen
    /// 0.0.0.0:5269 --ping
    #[command(after_help = PROBE_EXIT_CODES)]
    S2s(ProbeS2sArgs),
    /// Log in to a domain's client service as JID and check it: DNS (_xmpps-client/_xmpp-client, then
    /// A/AAAA on 5222), TLS and the certificate, SASL, resource binding, and optionally the roster, a message
    /// and a ping.
    ///
    /// The password comes from --password-env VAR or --password-file FILE, never from the command line, and
    /// is never printed. Without one, the probe stops after TLS and the features.
    ///
    /// Example: XMPP_PASSWORD=... xmpptap probe c2s alice@example.net --password-env XMPP_PASSWORD --roster
    #[command(after_help = PROBE_EXIT_CODES)]
    C2s(ProbeC2sArgs),
}

/// How `xmpptap probe` reaches the server and checks TLS.
#[derive(Debug, Args)]
pub struct ProbeConnectArgs {
    /// Connect to HOST instead of asking DNS for SRV records (an IP address, or a name resolved with A/AAAA).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,

    /// Port to connect to (with or without --host; without it, the host is the domain). Default 5269 (s2s)
    /// or 5222 (c2s), 5270 / 5223 with --direct-tls.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// With --host/--port: start TLS right after connecting (XEP-0368 Direct TLS) instead of STARTTLS.
    /// Candidates from _xmpps-* SRV records always use Direct TLS.
    #[arg(long)]
    pub direct_tls: bool,

    /// STARTTLS: auto (when offered), require (fail if not offered), off (stay in plaintext).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::probe::StartTls::Auto)]
    pub starttls: crate::probe::StartTls,

    /// Verify the server's certificate against the CA certificates in this PEM file instead of the system's
    /// roots.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "dangerous_accept_any_cert"
    )]
    pub ca: Option<PathBuf>,

    /// Go on when the server's certificate does not verify (the report still says whether and why not).
    /// Anyone on the path could then read and change the stream.
    #[arg(long)]
    pub dangerous_accept_any_cert: bool,

    /// Seconds to wait for each step: a TCP connection, the TLS handshake, each answer.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,

    /// Ask this DNS server (UDP/TCP) instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,

    /// Print the report as JSON (one object, the same shape for s2s and c2s).
    #[arg(long)]
    pub json: bool,
}

/// `xmpptap probe s2s` flags.
#[derive(Debug, Args)]
pub struct ProbeS2sArgs {
    /// The domain to probe (the receiving server).
    #[arg(value_name = "DOMAIN")]
    pub domain: String,

    /// The domain the probe speaks for (the originating server): the stream's `from` and the dialback
    /// domain.
    #[arg(long, value_name = "DOMAIN")]
    pub from: String,

    #[command(flatten)]
    pub connect: ProbeConnectArgs,

    /// Authenticate with Server Dialback (XEP-0220): send a key computed as XEP-0185 recommends and report
    /// valid, invalid, error or no answer.
    #[arg(long)]
    pub dialback: bool,

    /// The dialback secret the key is computed with (default: a random one). Visible to other local users in
    /// the process list; prefer --dialback-secret-env for a real server's secret.
    #[arg(
        long,
        value_name = "SECRET",
        requires = "dialback",
        conflicts_with = "dialback_secret_env"
    )]
    pub dialback_secret: Option<String>,

    /// Read the dialback secret from environment variable VAR.
    #[arg(long, value_name = "VAR", requires = "dialback")]
    pub dialback_secret_env: Option<String>,

    /// Answer the receiving server's dialback verification (<db:verify>) here, as --from's authoritative
    /// server. The receiving server must reach ADDR when it resolves --from (SRV or A/AAAA).
    #[arg(long, value_name = "ADDR", requires = "dialback")]
    pub dialback_listen: Option<SocketAddr>,

    /// Send an XEP-0199 ping to DOMAIN once authenticated and report the round-trip time. The answer comes
    /// back on the receiving server's own connection to --from: with --dialback-listen the probe sees it.
    #[arg(long)]
    pub ping: bool,

    /// Authenticate with SASL EXTERNAL using the client certificate (--client-cert, --client-key).
    #[arg(long, requires_all = ["client_cert", "client_key"])]
    pub sasl_external: bool,

    /// Client certificate (PEM, chain) to present in TLS.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// `xmpptap probe c2s` flags.
#[derive(Debug, Args)]
pub struct ProbeC2sArgs {
    /// The account to log in as: user@domain (a /resource asks for that resource).
    #[arg(value_name = "JID")]
    pub jid: String,

    /// Read the password from environment variable VAR.
    #[arg(long, value_name = "VAR", conflicts_with = "password_file")]
    pub password_env: Option<String>,

    /// Read the password from FILE (the first line, without its line ending).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    #[command(flatten)]
    pub connect: ProbeConnectArgs,

    /// Use this SASL mechanism (default: the strongest both sides support; -PLUS only with a channel binding
    /// type the server announces, XEP-0440).
    #[arg(long, value_enum, value_name = "MECHANISM", ignore_case = true)]
    pub mechanism: Option<crate::probe::sasl::Mechanism>,

    /// Allow PLAIN without TLS: the password crosses the network readable by anyone on the path.
    #[arg(long)]
    pub dangerous_plain_over_plaintext: bool,

    /// Resource to bind (default: the JID's resource, else xmpptap-probe-RANDOM).
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,

    /// Fetch the roster and list each contact's name, subscription and groups.
    #[arg(long)]
    pub roster: bool,

    /// Send a chat message with BODY to TO, then watch for a bounce (an error message) for --message-wait
    /// seconds.
    #[arg(long, num_args = 2, value_names = ["TO", "BODY"])]
    pub message: Vec<String>,

    /// Seconds to watch for a bounce after --message.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub message_wait: f64,

    /// Send an XEP-0199 ping to the server and report the round-trip time.
    #[arg(long)]
    pub ping: bool,
}
