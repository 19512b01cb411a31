//! What a probe found: one [`Report`] shape for every probe (S2S and C2S), serialized as JSON (`--json`) or
//! printed for people ([`Report::render`]), and the exit codes that sum it up ([`FailureKind::exit_code`]).
//!
//! Every key is always present: a part that does not apply to a probe, or that it did not reach, is `null` (or an
//! empty list), so scripts can read any report the same way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use crate::upstream::route::RouteSource;
use crate::xml::element::{Features, StreamError};

use super::dialback::VerifyRequest;
use super::tls::TlsReport;

/// Exit code: everything asked for worked.
pub const EXIT_OK: u8 = 0;
/// Exit code: a local problem (nothing to do with the server).
pub const EXIT_LOCAL: u8 = 1;
/// Exit code: DNS gave no usable address (SRV and A/AAAA), or a DNS query failed.
pub const EXIT_DNS: u8 = 2;
/// Exit code: no candidate address accepted a TCP connection.
pub const EXIT_CONNECT: u8 = 3;
/// Exit code: TLS failed: handshake, certificate not valid for the domain, or STARTTLS required but missing.
pub const EXIT_TLS: u8 = 4;
/// Exit code: authentication failed (SASL).
pub const EXIT_AUTH: u8 = 5;
/// Exit code: dialback was not `valid` (invalid, error, or no answer).
pub const EXIT_DIALBACK: u8 = 6;
/// Exit code: the stream failed: a stream error, a closed stream, an answer that breaks the protocol, a timeout.
pub const EXIT_STREAM: u8 = 7;
/// Exit code: a requested check failed: resource binding, roster, message delivery, ping.
pub const EXIT_CHECK: u8 = 8;

/// What kind of failure stopped (or spoiled) a probe; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// See [`EXIT_LOCAL`].
    Local,
    /// See [`EXIT_DNS`].
    Dns,
    /// See [`EXIT_CONNECT`].
    Connect,
    /// See [`EXIT_TLS`].
    Tls,
    /// See [`EXIT_AUTH`].
    Auth,
    /// See [`EXIT_DIALBACK`].
    Dialback,
    /// See [`EXIT_STREAM`].
    Stream,
    /// See [`EXIT_CHECK`].
    Check,
}

impl FailureKind {
    /// The process exit code for this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Local => EXIT_LOCAL,
            FailureKind::Dns => EXIT_DNS,
            FailureKind::Connect => EXIT_CONNECT,
            FailureKind::Tls => EXIT_TLS,
            FailureKind::Auth => EXIT_AUTH,
            FailureKind::Dialback => EXIT_DIALBACK,
            FailureKind::Stream => EXIT_STREAM,
            FailureKind::Check => EXIT_CHECK,
        }
    }
}

/// The failure that decides the exit code: the first one that stopped the probe, or the first failed check.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Its kind.
    pub kind: FailureKind,
    /// The phase it happened in.
    pub phase: String,
    /// What happened.
    pub error: String,
}

/// One timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `dns`, `connect`, `tls`, `stream`, `starttls`, `stream_after_tls`, `sasl`, `stream_after_sasl`, `bind`,
    /// `dialback`, `roster`, `message`, `ping`.
    pub name: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub ms: f64,
    /// A one-line summary.
    pub detail: String,
}

/// One SRV record.
#[derive(Debug, Clone, Serialize)]
pub struct SrvRecordReport {
    /// Lower first.
    pub priority: u16,
    /// Share among equal priorities.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host (`.` means no service).
    pub target: String,
}

/// One SRV query and its answer.
#[derive(Debug, Clone, Serialize)]
pub struct SrvQuery {
    /// The name asked, e.g. `_xmpps-server._tcp.example.net.`.
    pub name: String,
    /// Records of this name lead to Direct TLS (`_xmpps-`).
    pub direct_tls: bool,
    /// `records`, `none` (NXDOMAIN or no data), `not_offered` (a single record with target `.`), `error`.
    pub result: &'static str,
    /// The error, for `error`.
    pub error: Option<String>,
    /// The records as published, by priority then weight (highest first).
    pub records: Vec<SrvRecordReport>,
}

/// One address to try, in the order a server would try them.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateReport {
    /// The address.
    pub addr: SocketAddr,
    /// The host it was resolved from.
    pub host: String,
    /// TLS first (XEP-0368).
    pub direct_tls: bool,
    /// How it was chosen: `static` (`--host`), `srv` (with service, priority, weight, target), `fallback`
    /// (A/AAAA of the domain on the default port).
    pub source: RouteSource,
}

/// The DNS phase.
#[derive(Debug, Clone, Serialize)]
pub struct DnsReport {
    /// The domain looked up.
    pub domain: String,
    /// The resolver asked: `system` or `IP:PORT`.
    pub resolver: String,
    /// `--host`/`--port` given: DNS was not asked for SRV records.
    pub overridden: bool,
    /// Both SRV queries (empty with `--host`).
    pub srv: Vec<SrvQuery>,
    /// The candidate addresses, in the order they are tried (RFC 2782 order over both services merged,
    /// XEP-0368; random among equal priorities by weight, as a server does).
    pub candidates: Vec<CandidateReport>,
    /// Why there are none.
    pub error: Option<String>,
}

/// One TCP connection attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// The address tried.
    pub addr: SocketAddr,
    /// Whether it was a Direct TLS candidate.
    pub direct_tls: bool,
    /// Whether it connected.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// How long the attempt took.
    pub ms: f64,
}

/// The connect phase.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Every attempt, in order; the last one succeeded if `connected` is set.
    pub attempts: Vec<AttemptReport>,
    /// The address connected to.
    pub connected: Option<SocketAddr>,
    /// The local address of the connection.
    pub local: Option<SocketAddr>,
    /// Whether the connection starts with TLS.
    pub direct_tls: bool,
}

/// The features a stream offered: the proxy's parse ([`Features`]) plus what matters to a client.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesReport {
    /// STARTTLS, SASL mechanisms, dialback (and its errors), bidi, stream management, compression, the rest.
    #[serde(flatten)]
    pub features: Features,
    /// Resource binding offered.
    pub bind: bool,
    /// Legacy session establishment: `required`, `optional`, or null when not offered.
    pub session: Option<&'static str>,
    /// XEP-0440 channel binding types the server supports.
    pub channel_binding: Vec<String>,
    /// The features element as received.
    pub xml: String,
}

/// One stream header from the server, and the features after it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// `initial`, `after_tls` or `after_sasl`.
    pub stage: &'static str,
    /// The server's `from`.
    pub from: Option<String>,
    /// Its `to`.
    pub to: Option<String>,
    /// The stream id (dialback keys are computed over it).
    pub id: Option<String>,
    /// `version` (`1.0`; absent for pre-RFC 3920 servers, which send no features).
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// Whether the header declares the dialback namespace (XEP-0220 2.4).
    pub dialback_ns: bool,
    /// The features, if they came.
    pub features: Option<FeaturesReport>,
}

/// SASL.
#[derive(Debug, Clone, Serialize)]
pub struct SaslReport {
    /// Mechanisms the server offered.
    pub offered: Vec<String>,
    /// The mechanism used.
    pub mechanism: Option<String>,
    /// The channel binding type used by a -PLUS mechanism.
    pub channel_binding: Option<String>,
    /// `success`, `failure` (the server said no), `error` (the exchange broke), `skipped`.
    pub result: &'static str,
    /// The SASL failure condition, e.g. `not-authorized`.
    pub condition: Option<String>,
    /// The failure's text, or the error.
    pub text: Option<String>,
    /// For SCRAM: the server proved it knows the password (its signature verified).
    pub server_signature_verified: Option<bool>,
    /// Why this mechanism, or why SASL was skipped.
    pub note: Option<String>,
}

/// Server Dialback.
#[derive(Debug, Clone, Serialize)]
pub struct DialbackReport {
    /// The originating domain (`--from`).
    pub from: String,
    /// The receiving domain.
    pub to: String,
    /// The stream id the key was computed over.
    pub stream_id: String,
    /// `given` (`--dialback-secret`) or `random`.
    pub secret: &'static str,
    /// `valid`, `invalid`, `error`, `no_answer`.
    pub result: &'static str,
    /// For `error`: the condition, e.g. `remote-server-not-found`.
    pub error_condition: Option<String>,
    /// How long the answer took.
    pub ms: f64,
    /// The listener (`--dialback-listen`), as bound.
    pub listener: Option<SocketAddr>,
    /// `<db:verify>` requests the listener answered.
    pub verify_requests: Vec<VerifyRequest>,
}

/// Resource binding.
#[derive(Debug, Clone, Serialize)]
pub struct BindReport {
    /// The resource asked for.
    pub resource: String,
    /// The full JID the server bound.
    pub jid: Option<String>,
    /// The error, if binding failed.
    pub error: Option<String>,
}

/// One roster item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Contact {
    /// The contact's JID.
    pub jid: String,
    /// The name given to it.
    pub name: Option<String>,
    /// `none`, `to`, `from`, `both` (RFC 6121 2.1.2.5).
    pub subscription: String,
    /// `subscribe` while a subscription request is pending.
    pub ask: Option<String>,
    /// Every group, in order.
    pub groups: Vec<String>,
}

/// The roster.
#[derive(Debug, Clone, Serialize)]
pub struct RosterReport {
    /// Its contacts.
    pub contacts: Vec<Contact>,
    /// The roster version, if the server versions rosters.
    pub ver: Option<String>,
    /// The error, if the request failed.
    pub error: Option<String>,
}

/// A message sent with `--message`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageReport {
    /// The recipient.
    pub to: String,
    /// The message's id.
    pub id: String,
    /// `no_error` (nothing bounced while the probe waited), `error`.
    pub result: &'static str,
    /// The bounce's condition, e.g. `service-unavailable`.
    pub error_condition: Option<String>,
    /// The bounce's text.
    pub error_text: Option<String>,
    /// How long the probe watched for a bounce.
    pub waited_ms: f64,
}

/// XEP-0199 ping.
#[derive(Debug, Clone, Serialize)]
pub struct PingReport {
    /// Whom it was sent to.
    pub to: String,
    /// `pong`, `error` (an error answer: still proof the server is there), `no_answer`.
    pub result: &'static str,
    /// Round-trip time.
    pub rtt_ms: Option<f64>,
    /// The error condition, for `error`.
    pub error_condition: Option<String>,
    /// Where the answer came: `stream`, or `dialback_listener` (S2S streams are one-way).
    pub via: Option<&'static str>,
}

/// The whole report. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `s2s` or `c2s`.
    pub probe: &'static str,
    /// The domain probed.
    pub domain: String,
    /// S2S: the originating domain (`--from`); C2S: the JID (bare, as given).
    pub from: String,
    /// Whether everything asked for worked.
    pub ok: bool,
    /// The process exit code.
    pub exit_code: u8,
    /// What went wrong first.
    pub failure: Option<Failure>,
    /// Every phase, in order, timed.
    pub phases: Vec<Phase>,
    /// DNS.
    pub dns: Option<DnsReport>,
    /// TCP.
    pub connect: Option<ConnectReport>,
    /// Each stream header and its features.
    pub streams: Vec<StreamReport>,
    /// TLS.
    pub tls: Option<TlsReport>,
    /// SASL.
    pub sasl: Option<SaslReport>,
    /// Dialback (S2S).
    pub dialback: Option<DialbackReport>,
    /// Resource binding (C2S).
    pub bind: Option<BindReport>,
    /// Roster (C2S).
    pub roster: Option<RosterReport>,
    /// Message (C2S).
    pub message: Option<MessageReport>,
    /// Ping.
    pub ping: Option<PingReport>,
    /// The stream error the server ended the stream with.
    pub stream_error: Option<StreamError>,
    /// Things worth knowing that are not failures.
    pub notes: Vec<String>,
}

/// A running phase: see [`Report::start`].
#[derive(Debug)]
pub struct Running {
    name: &'static str,
    started: Instant,
}

impl Running {
    /// Milliseconds since the phase started.
    pub fn elapsed_ms(&self) -> f64 {
        ms(self.started)
    }
}

/// Milliseconds since `since`, to 0.1 ms.
pub fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

impl Report {
    /// An empty report for a probe of `domain`.
    pub fn new(probe: &'static str, domain: &str, from: &str) -> Self {
        Report {
            probe,
            domain: domain.to_owned(),
            from: from.to_owned(),
            ok: true,
            exit_code: EXIT_OK,
            failure: None,
            phases: Vec::new(),
            dns: None,
            connect: None,
            streams: Vec::new(),
            tls: None,
            sasl: None,
            dialback: None,
            bind: None,
            roster: None,
            message: None,
            ping: None,
            stream_error: None,
            notes: Vec::new(),
        }
    }

    /// Starts timing a phase.
    pub fn start(&self, name: &'static str) -> Running {
        Running {
            name,
            started: Instant::now(),
        }
    }

    /// Records a phase that worked.
    pub fn pass(&mut self, phase: Running, detail: impl Into<String>) {
        self.phases.push(Phase {
            name: phase.name.to_owned(),
            ok: true,
            ms: ms(phase.started),
            detail: detail.into(),
        });
    }

    /// Records a phase that failed, and the failure if it is the first.
    pub fn fail(&mut self, phase: Running, kind: FailureKind, error: impl Into<String>) {
        let error = error.into();
        self.phases.push(Phase {
            name: phase.name.to_owned(),
            ok: false,
            ms: ms(phase.started),
            detail: error.clone(),
        });
        if self.failure.is_none() {
            self.ok = false;
            self.exit_code = kind.exit_code();
            self.failure = Some(Failure {
                kind,
                phase: phase.name.to_owned(),
                error,
            });
        }
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The report for people: a verdict line, the phases with their times, then each part in detail.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let who = match self.probe {
            "s2s" => format!("{} from {}", self.domain, self.from),
            _ => self.from.clone(),
        };
        match &self.failure {
            None => {
                let _ = writeln!(out, "xmpptap probe {} {who}: OK", self.probe);
            }
            Some(f) => {
                let _ = writeln!(
                    out,
                    "xmpptap probe {} {who}: FAILED in {} (exit {}): {}",
                    self.probe, f.phase, self.exit_code, f.error
                );
            }
        }
        out.push_str("\nphases\n");
        for phase in &self.phases {
            let _ = writeln!(
                out,
                "  {:<18} {:<4} {:>9.1} ms  {}",
                phase.name,
                if phase.ok { "ok" } else { "FAIL" },
                phase.ms,
                phase.detail
            );
        }
        if let Some(dns) = &self.dns {
            render_dns(&mut out, dns);
        }
        if let Some(connect) = &self.connect {
            out.push_str("\nconnect\n");
            for attempt in &connect.attempts {
                let tls = if attempt.direct_tls {
                    " (Direct TLS)"
                } else {
                    ""
                };
                let _ = match &attempt.error {
                    None => writeln!(
                        out,
                        "  {}{tls}: connected in {:.1} ms",
                        attempt.addr, attempt.ms
                    ),
                    Some(e) => writeln!(out, "  {}{tls}: {e} ({:.1} ms)", attempt.addr, attempt.ms),
                };
            }
        }
        // TLS where it happened: before the first stream (Direct TLS), or after it (STARTTLS).
        let tls_first = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.mode == "direct_tls" || self.streams.is_empty());
        if let (true, Some(tls)) = (tls_first, &self.tls) {
            render_tls(&mut out, tls);
        }
        for (i, stream) in self.streams.iter().enumerate() {
            render_stream(&mut out, stream);
            if let (0, false, Some(tls)) = (i, tls_first, &self.tls) {
                render_tls(&mut out, tls);
            }
        }
        if let Some(sasl) = &self.sasl {
            out.push_str("\nsasl\n");
            let _ = writeln!(out, "  offered: {}", list(&sasl.offered));
            if let Some(mechanism) = &sasl.mechanism {
                let cb = sasl
                    .channel_binding
                    .as_deref()
                    .map(|c| format!(" (channel binding {c})"))
                    .unwrap_or_default();
                let _ = writeln!(out, "  mechanism: {mechanism}{cb}");
            }
            let mut result = sasl.result.to_owned();
            if let Some(condition) = &sasl.condition {
                let _ = write!(result, " <{condition}/>");
            }
            if let Some(text) = &sasl.text {
                let _ = write!(result, ": {text}");
            }
            let _ = writeln!(out, "  result: {result}");
            if let Some(verified) = sasl.server_signature_verified {
                let _ = writeln!(
                    out,
                    "  server signature: {}",
                    if verified {
                        "verified (the server knows the password)"
                    } else {
                        "NOT verified"
                    }
                );
            }
            if let Some(note) = &sasl.note {
                let _ = writeln!(out, "  note: {note}");
            }
        }
        if let Some(db) = &self.dialback {
            out.push_str("\ndialback\n");
            let _ =
                writeln!(
                out,
                "  <db:result from='{}' to='{}'> over stream id {} ({} secret): {} in {:.1} ms{}",
                db.from,
                db.to,
                db.stream_id,
                db.secret,
                db.result,
                db.ms,
                db.error_condition.as_deref().map(|c| format!(" <{c}/>")).unwrap_or_default()
            );
            if let Some(listener) = db.listener {
                let _ = writeln!(out, "  listener on {listener}");
            }
            for verify in &db.verify_requests {
                let _ = writeln!(
                    out,
                    "  <db:verify> from {} ({}) for {} id {}: answered {}",
                    verify.from, verify.peer, verify.to, verify.id, verify.answer
                );
            }
        }
        if let Some(bind) = &self.bind {
            let _ = match (&bind.jid, &bind.error) {
                (Some(jid), _) => writeln!(out, "\nbind: {jid}"),
                (None, Some(e)) => writeln!(out, "\nbind: failed: {e}"),
                (None, None) => writeln!(out, "\nbind: no answer"),
            };
        }
        if let Some(roster) = &self.roster {
            let _ = writeln!(out, "\nroster: {} contact(s)", roster.contacts.len());
            if let Some(e) = &roster.error {
                let _ = writeln!(out, "  failed: {e}");
            }
            for c in &roster.contacts {
                let _ = writeln!(
                    out,
                    "  {}{}  subscription {}{}  groups: {}",
                    c.jid,
                    c.name
                        .as_deref()
                        .map(|n| format!(" \"{n}\""))
                        .unwrap_or_default(),
                    c.subscription,
                    c.ask
                        .as_deref()
                        .map(|a| format!(" (ask {a})"))
                        .unwrap_or_default(),
                    list(&c.groups)
                );
            }
        }
        if let Some(message) = &self.message {
            let _ = match message.result {
                "error" => writeln!(
                    out,
                    "\nmessage to {}: bounced <{}/>{}",
                    message.to,
                    message.error_condition.as_deref().unwrap_or("?"),
                    message
                        .error_text
                        .as_deref()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                ),
                _ => writeln!(
                    out,
                    "\nmessage to {}: sent, no error within {:.0} ms",
                    message.to, message.waited_ms
                ),
            };
        }
        if let Some(ping) = &self.ping {
            let _ = writeln!(
                out,
                "\nping {}: {}{}{}{}",
                ping.to,
                ping.result,
                ping.rtt_ms
                    .map(|ms| format!(" in {ms:.1} ms"))
                    .unwrap_or_default(),
                ping.error_condition
                    .as_deref()
                    .map(|c| format!(" <{c}/>"))
                    .unwrap_or_default(),
                ping.via.map(|v| format!(" (via {v})")).unwrap_or_default()
            );
        }
        if let Some(error) = &self.stream_error {
            let _ = writeln!(
                out,
                "\nstream error: <{}/>{}",
                error.condition,
                error
                    .text
                    .as_deref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            );
        }
        if !self.notes.is_empty() {
            out.push_str("\nnotes\n");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        out
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn render_dns(out: &mut String, dns: &DnsReport) {
    let _ = writeln!(out, "\ndns (resolver {})", dns.resolver);
    if dns.overridden {
        out.push_str("  --host given: SRV not asked\n");
    }
    for query in &dns.srv {
        let summary = match query.result {
            "records" => format!("{} record(s)", query.records.len()),
            "none" => "no records".to_owned(),
            "not_offered" => "not offered (target \".\")".to_owned(),
            _ => format!("error: {}", query.error.as_deref().unwrap_or("?")),
        };
        let _ = writeln!(out, "  {}  {summary}", query.name);
        for r in &query.records {
            let _ = writeln!(
                out,
                "      priority {} weight {} port {} target {}",
                r.priority, r.weight, r.port, r.target
            );
        }
    }
    if !dns.candidates.is_empty() {
        out.push_str("  candidates, in the order they are tried:\n");
        for (i, c) in dns.candidates.iter().enumerate() {
            let via = match &c.source {
                RouteSource::Srv {
                    service,
                    priority,
                    weight,
                    target,
                } => format!("SRV {service} priority {priority} weight {weight} {target}"),
                RouteSource::Static => "--host".to_owned(),
                RouteSource::Upstream => "upstream".to_owned(),
                RouteSource::Fallback => "A/AAAA fallback (no SRV records)".to_owned(),
            };
            let tls = if c.direct_tls {
                "Direct TLS"
            } else {
                "STARTTLS/plain"
            };
            let _ = writeln!(out, "    {}. {}  {tls}  ({via})", i + 1, c.addr);
        }
    }
    if let Some(e) = &dns.error {
        let _ = writeln!(out, "  error: {e}");
    }
}

fn render_stream(out: &mut String, stream: &StreamReport) {
    let _ = writeln!(
        out,
        "\nstream ({}): from {} id {} version {}{}",
        stream.stage,
        stream.from.as_deref().unwrap_or("(none)"),
        stream.id.as_deref().unwrap_or("(none)"),
        stream.version.as_deref().unwrap_or("(none)"),
        if stream.dialback_ns {
            ", declares dialback"
        } else {
            ""
        }
    );
    let Some(f) = &stream.features else {
        out.push_str("  no features\n");
        return;
    };
    let p = &f.features;
    let mut items = Vec::new();
    match p.starttls {
        Some(true) => items.push("STARTTLS (required)".to_owned()),
        Some(false) => items.push("STARTTLS".to_owned()),
        None => {}
    }
    if !p.mechanisms.is_empty() {
        items.push(format!("SASL {}", p.mechanisms.join(" ")));
    }
    if p.dialback {
        items.push(
            if p.dialback_errors {
                "dialback (with errors)"
            } else {
                "dialback"
            }
            .to_owned(),
        );
    }
    if p.bidi {
        items.push("bidi".to_owned());
    }
    if f.bind {
        items.push("bind".to_owned());
    }
    if let Some(session) = f.session {
        items.push(format!("session ({session})"));
    }
    if p.sm {
        items.push("stream management".to_owned());
    }
    if !f.channel_binding.is_empty() {
        items.push(format!("channel binding {}", f.channel_binding.join(" ")));
    }
    if !p.compression.is_empty() {
        items.push(format!("compression {}", p.compression.join(" ")));
    }
    // Shown above under their own names.
    const SHOWN: [&str; 3] = [
        "{urn:ietf:params:xml:ns:xmpp-bind}bind",
        "{urn:ietf:params:xml:ns:xmpp-session}session",
        "{urn:xmpp:sasl-cb:0}sasl-channel-binding",
    ];
    items.extend(
        p.other
            .iter()
            .filter(|o| !SHOWN.contains(&o.as_str()))
            .cloned(),
    );
    let _ = writeln!(out, "  features: {}", list(&items));
}

fn render_tls(out: &mut String, tls: &TlsReport) {
    let _ = writeln!(
        out,
        "\ntls ({}): {} {}, ALPN {}, SNI {}",
        tls.mode.replace('_', " "),
        tls.version.as_deref().unwrap_or("(no session)"),
        tls.cipher.as_deref().unwrap_or(""),
        tls.alpn.as_deref().unwrap_or("none"),
        tls.sni
    );
    let verdict = match tls.verified {
        Some(true) => "yes",
        Some(false) if tls.accepted_unverified => "NO (went on: --dangerous-accept-any-cert)",
        Some(false) => "NO",
        None => "unknown",
    };
    let _ = writeln!(
        out,
        "  verifies for {}: {verdict}: {}",
        tls.sni, tls.verification
    );
    if let Some(e) = &tls.error {
        let _ = writeln!(out, "  error: {e}");
    }
    if let Some(client) = &tls.client_certificate {
        let _ = writeln!(out, "  client certificate presented: {client}");
    }
    if !tls.channel_binding.is_empty() {
        let _ = writeln!(
            out,
            "  channel binding available: {}",
            tls.channel_binding.join(", ")
        );
    }
    for (i, cert) in tls.chain.iter().enumerate() {
        let _ = writeln!(out, "  [{i}] subject {}", cert.subject);
        let _ = writeln!(out, "      issuer  {}", cert.issuer);
        let _ = writeln!(
            out,
            "      valid   {} to {}{}",
            cert.not_before,
            cert.not_after,
            if cert.valid_now {
                ""
            } else {
                " (NOT valid now)"
            }
        );
        let _ = writeln!(out, "      names   {}", list(&cert.sans));
        let _ = writeln!(out, "      sha256  {}", cert.sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_decides_the_exit_code_and_every_key_is_present() {
        let mut report = Report::new("s2s", "b.test", "a.test");
        let phase = report.start("dns");
        report.pass(phase, "2 candidates");
        let phase = report.start("dialback");
        report.fail(phase, FailureKind::Dialback, "invalid");
        let phase = report.start("ping");
        report.fail(phase, FailureKind::Check, "no answer");
        assert_eq!(report.exit_code, EXIT_DIALBACK);
        assert!(!report.ok);
        let json = serde_json::to_value(&report).expect("json");
        for key in [
            "probe",
            "domain",
            "from",
            "ok",
            "exit_code",
            "failure",
            "phases",
            "dns",
            "connect",
            "streams",
            "tls",
            "sasl",
            "dialback",
            "bind",
            "roster",
            "message",
            "ping",
            "stream_error",
            "notes",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert_eq!(json["failure"]["kind"], "dialback");
        assert_eq!(json["phases"][1]["ok"], false);
        let text = report.render();
        assert!(
            text.starts_with("xmpptap probe s2s b.test from a.test: FAILED in dialback (exit 6)")
        );
    }
}
