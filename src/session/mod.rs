//! One intercepted connection, from accept to close.
//!
//! The same machinery serves S2S and C2S (the listener's kind picks the router, the ALPN and the feature
//! policy). The session is a short state machine followed by a relay:
//!
//! 0. Direct TLS (XEP-0368): on a TLS listener, or when the first bytes on a plaintext one are a ClientHello,
//!    the TLS handshake comes first, with a certificate minted for the SNI name.
//! 1. `ExpectInitiatorHeader`: read the initiator's `<stream:stream>`; its `to` names the receiving domain.
//! 2. Connect upstream ([`crate::upstream`]; TLS first if the route or SRV record says Direct TLS), then for
//!    each stream (the first, and the one after STARTTLS):
//!    send the initiator's header up, `ExpectReceiverHeader` and relay it down unchanged (its stream id is what
//!    dialback keys are computed over), `ExpectReceiverFeatures` and relay them down.
//!    The features go down minus what interception would break ([`rewrite`]). When the initiator uses TLS
//!    but the upstream leg does not yet (or `--upstream-tls always`), xmpptap first does STARTTLS upstream on
//!    its own and shows the initiator only the receiver's post-TLS header and features.
//! 3. If the receiver offered STARTTLS: `ExpectStarttls` from the initiator (anything else goes to the relay),
//!    forward it, `ExpectProceed` from the receiver, TLS handshake upstream, `<proceed/>` down, TLS handshake
//!    downstream with a certificate minted for the receiving domain, and back to 2 for the restarted stream.
//!    Later restarts (after SASL success) are ordinary frames for the relay, whose framer follows them.
//! 4. [`relay`]: copy whole frames both ways until the connection ends or goes idle (`--idle-timeout`), as
//!    [`steer`] plans each batch (rules, pings, policy rates); the rules also see the stream-level elements of
//!    steps 2 and 3 (features, `<starttls/>`, `<proceed/>`).
//!
//! Dialback and SASL are not special here: they are frames the relay forwards. Errors are answered once, in
//! one place per phase: the side at fault gets the stream error, the other side a clean close.
//!
//! Limits: a session holds an [`admission`] permit from the start (`--max-connections`) and another once the
//! initiator's header names the receiving domain (`--max-connections-per-domain`); every read is bounded in
//! time (header, negotiation, TLS and idle timeouts) and in size (the framer's `--max-stanza-size`: a side's
//! buffer never holds more than one unfinished frame plus one read, and the relay stops reading a side while
//! its peer is not taking what was already read).

pub mod admission;
mod leg;
pub mod observe;
pub mod ping;
mod relay;
mod rewrite;
mod steer;
mod transport;

use crate::config::{Listener, ListenerKind, ProxyConfig};
use crate::control::registry::{ConnHandle, Registry};
use crate::side::{Direction, Side};
use crate::tap::event::{Origin, Xml};
use crate::tap::{ClosedBy, Event, EventKind, Tap};
use crate::tls::TlsContext;
use crate::upstream::connect::{self, ConnectError};
use crate::upstream::route::Router;
use crate::xml::element::{self, ElementHead, Features, StreamHeader, NS_STREAM, NS_TLS};
use crate::xml::framer::{Frame, FrameError, FrameKind};
use admission::{Admission, OverLimit};
use bytes::Bytes;
use leg::Leg;
use observe::Observer;
use rewrite::Rewriter;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use steer::Shared as SteerShared;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use transport::{RawRecorder, Tcp, Transport};

/// What xmpptap sends the receiver when it upgrades the upstream leg on its own (`--upstream-tls always`).
const STARTTLS: &[u8] = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// What the initiator gets when the upstream TLS handshake failed after it asked for STARTTLS (RFC 6120 5.4.2.2).
const TLS_FAILURE: &[u8] = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>";

/// Everything a session needs that is built once in [`crate::listen::run`].
pub struct Context {
    /// Validated settings.
    pub config: ProxyConfig,
    /// Finds the receiving server for a domain (S2S).
    pub router: Router,
    /// Finds the server for a client's domain (C2S).
    pub c2s_router: Router,
    /// Certificates and TLS configurations for both legs.
    pub tls: TlsContext,
    /// Acceptors for Direct TLS initiators, [S2S, C2S]: mint for the SNI name, answer the kind's ALPN.
    pub direct_tls: [tokio_rustls::TlsAcceptor; 2],
    /// Where transcript events go.
    pub tap: Tap,
    /// XEP-0198 sessions by id, to link resumptions to the connection they resume.
    pub sm_index: Arc<observe::SmIndex>,
    /// Connection counts against `--max-connections` and `--max-connections-per-domain`.
    pub admission: Admission,
    /// Rules, pings, policy and metrics the relay steers with, and the registry the control API reads.
    pub steering: SteeringHandles,
}

/// The shared handles of [`Context::steering`].
#[derive(Clone, Debug)]
pub struct SteeringHandles {
    /// Live connections, for the control API.
    pub registry: Arc<Registry>,
    /// What every relay direction consults.
    pub shared: SteerShared,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A connection accepted by a listener.
#[derive(Debug)]
pub struct Accepted {
    /// The listener it came in on.
    pub listener: Listener,
    /// Connection id, unique in this process.
    pub conn: u64,
    /// The initiator's connection.
    pub stream: TcpStream,
    /// The initiator's address.
    pub peer: SocketAddr,
    /// The listening address it reached.
    pub local: SocketAddr,
}

/// Why a session failed. Each variant records which side is at fault where a side is.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A side's bytes are not an acceptable XMPP stream.
    #[error("{side} sent unacceptable XML: {source}")]
    Frame {
        side: Side,
        #[source]
        source: FrameError,
    },
    /// A side closed its connection in the middle of an element.
    #[error("{side} closed the connection in the middle of an element")]
    Truncated { side: Side },
    /// A side closed its connection while xmpptap waited for something.
    #[error("{side} closed the connection while xmpptap expected {expected}")]
    Closed { side: Side, expected: &'static str },
    /// Reading or writing a side's connection failed.
    #[error("connection to the {side} failed: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
    /// A side sent something that makes no sense at this point of the negotiation.
    #[error("{side} sent {found} where xmpptap expected {expected}")]
    Unexpected {
        side: Side,
        expected: &'static str,
        found: String,
    },
    /// A side sent nothing in time.
    #[error("{side} sent nothing for {}s while xmpptap expected {expected}", .after.as_secs_f32())]
    Timeout {
        side: Side,
        expected: &'static str,
        after: Duration,
    },
    /// The initiator's stream header names no receiving domain.
    #[error(
        "the initiator's stream header has no 'to' attribute, so there is no domain to route to"
    )]
    NoDomain,
    /// xmpptap found no way to the receiving domain.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// A TLS handshake failed.
    #[error("TLS handshake with the {side} failed: {reason}")]
    Tls { side: Side, reason: String },
    /// A side sent bytes between `<starttls/>`/`<proceed/>` and the TLS handshake.
    #[error("{side} sent {len} bytes after <{element}/> where the TLS handshake had to start")]
    BytesBeforeTls {
        side: Side,
        element: &'static str,
        len: usize,
    },
    /// `--require-tls` and the initiator's stream would stay plaintext.
    #[error("xmpptap requires TLS from the initiator (--require-tls), but {reason}")]
    TlsRequired { reason: &'static str },
    /// A connection limit is reached: the initiator is refused.
    #[error("{0}")]
    OverLimit(#[from] OverLimit),
    /// The relay saw no complete element or keepalive from either side for `--idle-timeout`.
    #[error(
        "idle: neither side sent anything for {}s (--idle-timeout)",
        .after.as_secs_f32()
    )]
    Idle { after: Duration },
    /// A side started an element and did not finish it within `--idle-timeout`, with nothing else relayed.
    #[error(
        "{side} sent part of an element and nothing complete for {}s (--idle-timeout)",
        .after.as_secs_f32()
    )]
    Slow { side: Side, after: Duration },
    /// A side took nothing of what xmpptap had to write to it for `--idle-timeout`.
    #[error(
        "{side} read nothing xmpptap relayed to it for {}s (--idle-timeout)",
        .after.as_secs_f32()
    )]
    Stalled { side: Side, after: Duration },
    /// xmpptap is shutting down.
    #[error("xmpptap is shutting down")]
    Shutdown,
    /// A `close` rule ended the stream of the side that sent the element it matched.
    #[error("rule '{rule}' closed the stream of the {side} with <{condition}/>")]
    Rule {
        rule: String,
        side: Side,
        condition: &'static str,
        text: Option<String>,
    },
    /// A `cut_after` rule's limit was reached: both connections end without a word.
    #[error("rule '{rule}' cut the connection after {after}")]
    Cut { rule: String, after: String },
    /// A `reset` rule: both connections get a TCP RST.
    #[error("rule '{rule}' reset the connection")]
    Reset { rule: String },
    /// The control API closed the connection; both sides get the condition, or a clean close without one.
    #[error("closed through the control API")]
    ControlClose {
        condition: Option<&'static str>,
        text: Option<String>,
    },
    /// The federation policy refused the initiator's domain or its traffic.
    #[error("{reason}")]
    Policy { reason: String },
}

impl SessionError {
    /// The side at fault, if a peer is.
    pub fn culprit(&self) -> Option<Side> {
        match self {
            SessionError::Frame { side, .. }
            | SessionError::Truncated { side }
            | SessionError::Closed { side, .. }
            | SessionError::Io { side, .. }
            | SessionError::Unexpected { side, .. }
            | SessionError::Timeout { side, .. }
            | SessionError::Tls { side, .. }
            | SessionError::BytesBeforeTls { side, .. }
            | SessionError::Slow { side, .. }
            | SessionError::Stalled { side, .. } => Some(*side),
            SessionError::Rule { side, .. } => Some(*side),
            SessionError::NoDomain
            | SessionError::TlsRequired { .. }
            | SessionError::OverLimit(_)
            | SessionError::Policy { .. } => Some(Side::Initiator),
            SessionError::Connect(_)
            | SessionError::Shutdown
            | SessionError::Idle { .. }
            | SessionError::Cut { .. }
            | SessionError::Reset { .. }
            | SessionError::ControlClose { .. } => None,
        }
    }

    /// The stream error condition to send (to the culprit, or to the initiator when no peer is at fault), or
    /// `None` when the culprit can no longer be told anything (its connection or TLS broke).
    pub fn condition(&self) -> Option<&'static str> {
        match self {
            SessionError::Frame { source, .. } => Some(source.condition()),
            SessionError::Unexpected { .. } | SessionError::BytesBeforeTls { .. } => {
                Some("bad-format")
            }
            SessionError::Timeout { .. }
            | SessionError::Idle { .. }
            | SessionError::Slow { .. }
            | SessionError::Stalled { .. } => Some("connection-timeout"),
            SessionError::NoDomain => Some("host-unknown"),
            SessionError::TlsRequired { .. }
            | SessionError::OverLimit(_)
            | SessionError::Policy { .. } => Some("policy-violation"),
            SessionError::Rule { condition, .. } => Some(condition),
            SessionError::ControlClose { condition, .. } => *condition,
            SessionError::Connect(e) => Some(connect_condition(e)),
            SessionError::Shutdown => Some("system-shutdown"),
            SessionError::Truncated { .. }
            | SessionError::Closed { .. }
            | SessionError::Io { .. }
            | SessionError::Tls { .. }
            | SessionError::Cut { .. }
            | SessionError::Reset { .. } => None,
        }
    }

    /// The `<text/>` of the stream error: what the rule or the control API asked for, else the error itself.
    fn text(&self) -> String {
        match self {
            SessionError::Rule {
                text: Some(text), ..
            }
            | SessionError::ControlClose {
                text: Some(text), ..
            } => text.clone(),
            _ => self.to_string(),
        }
    }
}

/// `host-unknown` when the domain cannot be routed at all, `remote-connection-failed` when it can but no
/// address answered.
fn connect_condition(error: &ConnectError) -> &'static str {
    use crate::upstream::route::RouteError as R;
    match error {
        ConnectError::Route(
            R::InvalidDomain { .. }
            | R::NoService { .. }
            | R::NoRoute { .. }
            | R::SrvTargetsEmpty { .. },
        ) => "host-unknown",
        _ => "remote-connection-failed",
    }
}

/// How a session ended, for the `closed` event.
#[derive(Debug)]
pub struct Ended {
    /// Who ended it.
    pub by: ClosedBy,
    /// Why, in words.
    pub reason: String,
}

/// Serves one accepted connection to the end. Never panics on peer input; every outcome is logged and
/// transcribed.
pub async fn serve(ctx: Arc<Context>, accepted: Accepted, shutdown: CancellationToken) {
    let started = Instant::now();
    let conn = accepted.conn;
    ctx.tap.emit(Event::now(
        conn,
        None,
        EventKind::Accepted {
            listener: accepted.listener.name(),
            peer: accepted.peer,
            local: accepted.local,
        },
    ));
    let kind = match accepted.listener.kind {
        ListenerKind::S2s => "s2s",
        ListenerKind::C2s => "c2s",
    };
    ctx.steering.shared.metrics.connection_opened(kind);
    let mut session = Session {
        ctx: &ctx,
        entry: ctx.steering.registry.open(conn, kind, accepted.peer),
        rule_state: Default::default(),
        listener: accepted.listener,
        rewriter: Rewriter::new(&ctx.config, accepted.listener.kind),
        conn,
        shutdown: &shutdown,
        up: Observer::new(conn, Direction::Up, ctx.tap.clone(), ctx.sm_index.clone()),
        down: Observer::new(conn, Direction::Down, ctx.tap.clone(), ctx.sm_index.clone()),
        bytes: [0, 0],
    };
    // The place in the global count is held until the session is over, and given back before `closed`.
    let ended = match ctx.admission.connection() {
        Ok(_permit) => session.run(accepted.stream).await,
        Err(over) => session.refuse_unread(accepted.stream, over).await,
    };
    match ended.by {
        ClosedBy::Xmpptap => tracing::info!(reason = %ended.reason, "closed"),
        _ => tracing::info!(by = ?ended.by, reason = %ended.reason, "closed"),
    }
    ctx.tap.emit(Event::now(
        conn,
        None,
        EventKind::Closed {
            by: ended.by,
            reason: ended.reason,
            bytes_up: session.bytes[0],
            bytes_down: session.bytes[1],
            stanzas_up: session.up.stanzas,
            stanzas_down: session.down.stanzas,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
    ));
}

/// Logs a session error at the level it deserves: peers that go away at debug, protocol violations at warn.
fn log_error(error: &SessionError) {
    match error {
        SessionError::Io { .. } | SessionError::Closed { .. } | SessionError::Shutdown => {
            tracing::debug!(error = %error, "session ended")
        }
        SessionError::Idle { .. } => tracing::info!(error = %error, "session ended"),
        _ => tracing::warn!(error = %error, "session failed"),
    }
}

/// The `protocol_error` event for `error`, blamed on `side`.
fn protocol_error_event(side: Side, condition: &'static str, error: &SessionError) -> EventKind {
    EventKind::ProtocolError {
        side,
        condition,
        error: error.to_string(),
    }
}

/// What xmpptap tells (initiator, receiver) when `error` ends a session on which both have a stream: the
/// culprit gets a stream error, the other side a clean `</stream:stream>`; with no culprit (shutdown, upstream
/// failure) both get the error; a culprit whose connection broke gets nothing new, the other side the close.
fn last_words(error: &SessionError) -> (Vec<u8>, Vec<u8>) {
    let close = b"</stream:stream>".to_vec();
    let Some(condition) = error.condition() else {
        return (close.clone(), close);
    };
    let words = element::stream_error(condition, Some(&error.text()));
    match error.culprit() {
        Some(Side::Initiator) => (words, close),
        Some(Side::Receiver) => (close, words),
        None => (words.clone(), words),
    }
}

/// Records a `protocol_error` event in the direction toward the culprit (the direction its error goes).
fn record_protocol_error(up: &Observer, down: &Observer, error: &SessionError) {
    if let (Some(side), Some(condition)) = (error.culprit(), error.condition()) {
        let toward = match side {
            Side::Initiator => down,
            Side::Receiver => up,
        };
        toward.own(protocol_error_event(side, condition, error));
    }
}

/// The state of one session while it negotiates.
struct Session<'a> {
    ctx: &'a Context,
    /// This connection in the control API's registry (leaves it when the session ends).
    entry: ConnHandle,
    /// What the rules counted during negotiation, [up, down]; the relay goes on from there.
    rule_state: [crate::rules::RuleState; 2],
    /// The listener the initiator came in on.
    listener: Listener,
    /// What the initiator may not see of the receiver's features.
    rewriter: Rewriter,
    conn: u64,
    shutdown: &'a CancellationToken,
    /// Transcript state for initiator -> receiver.
    up: Observer,
    /// Transcript state for receiver -> initiator.
    down: Observer,
    /// Bytes read from [initiator, receiver].
    bytes: [u64; 2],
}

/// Where negotiation left the two legs.
struct Negotiated {
    ini: Leg<Transport>,
    rec: Leg<Transport>,
}

impl Session<'_> {
    async fn run(&mut self, tcp: TcpStream) -> Ended {
        let limits = self.ctx.config.limits.framer;
        let header_timeout = self.ctx.config.limits.header_timeout;
        // One deadline for the sniff and the header: an initiator that sends nothing, or one byte, is answered
        // after --header-timeout, not twice that.
        let header_deadline = tokio::time::Instant::now() + header_timeout;
        // Direct TLS (XEP-0368): on a TLS listener, or a ClientHello arriving on a plaintext one.
        let direct_tls = self.listener.direct_tls || sniff_client_hello(&tcp, header_timeout).await;
        let tcp = Tcp::new(
            tcp,
            RawRecorder::new(&self.ctx.tap, self.conn, Side::Initiator),
        );
        let mut ini = Leg::new(Side::Initiator, Transport::Plain(tcp), limits);
        // What the transcript writer would otherwise read again (see `Framer::record_head_spans`).
        ini.framer.record_head_spans(self.ctx.tap.enabled());
        if direct_tls {
            ini = match self.tls_accept_direct(ini).await {
                Ok(ini) => ini,
                Err(e) => return self.ended_by_tls(e),
            };
        }

        // ExpectInitiatorHeader: after a TLS handshake (bounded by its own timeout) the header gets the whole
        // --header-timeout; else what the sniff left of it.
        let left = if direct_tls {
            header_timeout
        } else {
            header_deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let first = self
            .read(&mut ini, left, "the initiator's stream header")
            .await;
        let (frame, header_bytes) = match first {
            Ok(frame) => frame,
            Err(SessionError::Timeout { side, expected, .. }) => {
                let error = SessionError::Timeout {
                    side,
                    expected,
                    after: header_timeout,
                };
                return self.refuse(&mut ini, None, error).await;
            }
            Err(error) => return self.refuse(&mut ini, None, error).await,
        };
        self.up.frame(&frame, &header_bytes);
        let header = self.up.header.clone().unwrap_or_default();
        let Some(domain) = header.to.clone().filter(|to| !to.is_empty()) else {
            return self
                .refuse(&mut ini, Some(&header), SessionError::NoDomain)
                .await;
        };
        tracing::Span::current().record("to", domain.as_str());
        // Held until the session is over, including while xmpptap connects upstream.
        let ctx = self.ctx;
        let _domain_permit = match ctx.admission.domain(self.listener.kind, &domain) {
            Ok(permit) => permit,
            Err(over) => return self.refuse(&mut ini, Some(&header), over.into()).await,
        };
        self.entry.update(|s| {
            s.initiator = header.from.clone();
            s.receiver = Some(domain.clone());
        });
        let shared = &ctx.steering.shared;
        shared
            .metrics
            .domain_connected(self.entry.listener, &domain);
        if let Err(refusal) =
            shared
                .policy
                .admit(header.from.as_deref(), &domain, std::time::Instant::now())
        {
            shared
                .metrics
                .policy_refused(refusal.domain(), refusal.reason());
            self.down.own(EventKind::Policy {
                domain: refusal.domain().to_owned(),
                reason: refusal.reason(),
                action: "refused",
                detail: refusal.to_string(),
            });
            let error = SessionError::Policy {
                reason: refusal.to_string(),
            };
            return self.refuse(&mut ini, Some(&header), error).await;
        }

        // Connect upstream.
        let router = match self.listener.kind {
            ListenerKind::S2s => &self.ctx.router,
            ListenerKind::C2s => &self.ctx.c2s_router,
        };
        let connecting = connect::connect(router, &domain, &self.ctx.config.connect);
        let connected = tokio::select! {
            connected = connecting => connected,
            _ = self.shutdown.cancelled() => {
                let header = header.clone();
                return self.refuse(&mut ini, Some(&header), SessionError::Shutdown).await;
            }
        };
        let connected = match connected {
            Ok(connected) => connected,
            Err(error) => {
                self.ctx.tap.emit(Event::now(
                    self.conn,
                    None,
                    EventKind::UpstreamFailed {
                        domain: domain.clone(),
                        error: error.to_string(),
                    },
                ));
                return self
                    .refuse(&mut ini, Some(&header), SessionError::Connect(error))
                    .await;
            }
        };
        self.ctx.tap.emit(Event::now(
            self.conn,
            None,
            EventKind::UpstreamConnected {
                domain: domain.clone(),
                addr: connected.candidate.addr,
                host: connected.candidate.host.clone(),
                route: connected.candidate.source.clone(),
                failed: connected
                    .failed
                    .iter()
                    .map(|a| format!("{}: {}", a.addr, a.error))
                    .collect(),
                local: connected.stream.local_addr().ok(),
            },
        ));
        let upstream = connected.candidate.addr;
        self.entry.update(|s| s.upstream = Some(upstream));
        let mut rec = Leg::new(
            Side::Receiver,
            Transport::Plain(Tcp::new(
                connected.stream,
                RawRecorder::new(&self.ctx.tap, self.conn, Side::Receiver),
            )),
            limits,
        );
        rec.framer.record_head_spans(self.ctx.tap.enabled());
        if connected.candidate.direct_tls {
            rec = match self.tls_upstream(rec, &domain).await {
                Ok(rec) => rec,
                Err(e) => {
                    self.ended_by_tls_event(&e);
                    return self.refuse(&mut ini, Some(&header), e).await;
                }
            };
        }

        let negotiated = self.negotiate(ini, rec, &domain, header_bytes).await;
        match negotiated {
            Ok(Negotiated { ini, rec }) => {
                let steering = self.steering();
                let (ended, bytes) = relay::relay(
                    ini,
                    rec,
                    &mut self.up,
                    &mut self.down,
                    &self.rewriter,
                    self.ctx.config.limits.idle_timeout,
                    self.shutdown,
                    steering,
                )
                .await;
                self.bytes = bytes;
                ended
            }
            Err(ended) => ended,
        }
    }

    /// The relay's steering: a [`steer::Steer`] per direction and the injection queues, which the connection's
    /// registry entry gets the senders of.
    fn steering(&mut self) -> relay::Steering {
        let (up_tx, up_rx) = tokio::sync::mpsc::channel(relay::INJECTION_QUEUE);
        let (down_tx, down_rx) = tokio::sync::mpsc::channel(relay::INJECTION_QUEUE);
        self.entry
            .set_injectors(Some([up_tx.clone(), down_tx.clone()]));
        self.entry
            .update(|s| s.phase = crate::control::registry::Phase::Relaying);
        let sm = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let established = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ping = self.ctx.config.ping;
        let steer = |dir| {
            steer::Steer::new(
                dir,
                self.listener.kind,
                self.ctx.steering.shared.clone(),
                self.entry.entry().clone(),
                self.up.header.as_ref(),
                sm.clone(),
                established.clone(),
                ping.is_some(),
            )
        };
        let [up_state, down_state] = std::mem::take(&mut self.rule_state);
        relay::Steering {
            conn: self.conn,
            entry: self.entry.entry().clone(),
            up: steer(Direction::Up).with_state(up_state),
            down: steer(Direction::Down).with_state(down_state),
            queues: [up_rx, down_rx],
            senders: [up_tx, down_tx],
            ping,
        }
    }

    /// The rules applied to a stream-level element xmpptap forwards during negotiation (features, `<starttls/>`,
    /// `<proceed/>`): what to send instead (the element itself, rewritten, with injections around it, or
    /// nothing), after any delay or stall; `Err` for `close`. What an action does to the element is planned by
    /// [`steer::element_ops`], as in the relay. The actions that shape a whole direction (`throttle`, `slice`,
    /// `cut_after`, `reset`) and `inject` with `at = "reply"` only work in the relay: here they are refused
    /// with a `rule` event; `stall` without an end lasts one `--negotiation-timeout`.
    async fn negotiation_rules(
        &mut self,
        dir: Direction,
        frame: &Frame,
        bytes: Bytes,
    ) -> Result<Bytes, SessionError> {
        use crate::rules::{Action, InjectAt, Subject};
        let rules = self.ctx.steering.shared.rules.current();
        if rules.is_empty() {
            return Ok(bytes);
        }
        let obs = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let stream = obs.header.clone().unwrap_or_default();
        let tag = &bytes[frame.head.clone()];
        let Ok(head) = ElementHead::parse(tag, &stream) else {
            return Ok(bytes);
        };
        let initiator = self.up.header.as_ref().and_then(|h| h.from.clone());
        let receiver = self.up.header.as_ref().and_then(|h| h.to.clone());
        let subject = Subject {
            listener: self.listener.kind,
            dir,
            initiator: initiator.as_deref(),
            receiver: receiver.as_deref(),
            head: &head,
            tag,
            bytes: &bytes,
        };
        let state = &mut self.rule_state[usize::from(dir == Direction::Down)];
        let Some(decision) = rules.decide(&subject, state, &mut || rand::random::<f64>()) else {
            return Ok(bytes);
        };
        let rule = decision.rule.name.clone();
        let action = decision.action.clone();
        let obs = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let mut ops = Vec::new();
        let acted = match &action {
            // Nowhere to reply to before the relay's queues exist.
            Action::Inject {
                at: InjectAt::Reply,
                ..
            } => steer::Acted::Stream,
            _ => steer::element_ops(&rule, &action, dir.sender(), &stream, &bytes, obs, &mut ops),
        };
        let detail = match acted {
            steer::Acted::Ops(detail) => detail,
            steer::Acted::Stream if matches!(action, Action::Stall { ms: None }) => {
                // Before the relay a stall lasts as long as a negotiation step may.
                let step = self.ctx.config.limits.negotiation_timeout;
                ops.push(steer::Op::Pause(step));
                ops.push(steer::Op::Write(bytes.clone()));
                Some(format!("{} s (--negotiation-timeout)", step.as_secs_f32()))
            }
            steer::Acted::Stream => {
                let refused =
                    "this action only applies once the streams are negotiated (in the relay)";
                self.record_rule(dir, &rule, &action, None, Some(refused), &bytes);
                return Ok(bytes);
            }
        };
        self.ctx
            .steering
            .shared
            .metrics
            .rule_action(&rule, action.name());
        self.record_rule(dir, &rule, &action, detail, None, &bytes);
        let mut out = Vec::new();
        for op in ops {
            match op {
                steer::Op::Write(written) => out.extend_from_slice(&written),
                steer::Op::Pause(wait) => tokio::time::sleep(wait).await,
                steer::Op::End(error) => return Err(error),
                steer::Op::Reply(..) | steer::Op::StallForever => {}
            }
        }
        Ok(Bytes::from(out))
    }

    /// A `rule` event in direction `dir`.
    fn record_rule(
        &self,
        dir: Direction,
        rule: &str,
        action: &crate::rules::Action,
        detail: Option<String>,
        refused: Option<&str>,
        bytes: &Bytes,
    ) {
        let obs = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        obs.own(steer::rule_event(rule, action, detail, refused, bytes));
    }

    /// Counts a TLS handshake on `side` and notes it in the registry.
    fn tls_done(&self, side: Side, ok: bool) {
        self.ctx.steering.shared.metrics.tls_handshake(side, ok);
        if ok {
            self.entry
                .update(|s| s.tls[usize::from(side == Side::Receiver)] = true);
        }
    }

    /// Refuses a connection over `--max-connections` without reading from it: on a plaintext listener xmpptap
    /// opens a stream of its own and sends `<policy-violation/>` on it; a Direct TLS initiator is closed at once
    /// (it could only read the error after a TLS handshake, and handshakes are what the limit saves).
    async fn refuse_unread(&mut self, tcp: TcpStream, over: OverLimit) -> Ended {
        let error = SessionError::OverLimit(over);
        if self.listener.direct_tls {
            log_error(&error);
            self.down.own(protocol_error_event(
                Side::Initiator,
                "policy-violation",
                &error,
            ));
            drop(tcp);
            return self.ended_after(error);
        }
        let tcp = Tcp::new(
            tcp,
            RawRecorder::new(&self.ctx.tap, self.conn, Side::Initiator),
        );
        let mut ini = Leg::new(
            Side::Initiator,
            Transport::Plain(tcp),
            self.ctx.config.limits.framer,
        );
        self.refuse(&mut ini, None, error).await
    }

    /// Steps 2 and 3 of the module doc: streams and STARTTLS, until the legs are ready for the relay.
    async fn negotiate(
        &mut self,
        mut ini: Leg<Transport>,
        mut rec: Leg<Transport>,
        domain: &str,
        mut ini_header: Bytes,
    ) -> Result<Negotiated, Ended> {
        let step = self.ctx.config.limits.negotiation_timeout;
        loop {
            // The initiator's header goes up unchanged. Until the receiver's comes down, the initiator has no
            // header on its current stream: errors up to there are `abort(.., true)`.
            if let Err(e) = self.send(&mut rec, &ini_header).await {
                return Err(self.abort(&mut ini, &mut rec, e, true).await);
            }

            // ExpectReceiverHeader: its header (and stream id) comes down unchanged, unless xmpptap first
            // upgrades the upstream leg on its own, in which case the initiator only ever sees the post-TLS one.
            let (frame, rec_header) = match self
                .read(&mut rec, step, "the receiver's stream header")
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, true).await),
            };
            self.down.frame(&frame, &rec_header);
            // Hold the receiver's header back when xmpptap will upgrade the upstream leg on its own first:
            // because the initiator came with Direct TLS, or --upstream-tls always.
            let hold = !rec.io.is_tls()
                && (ini.io.is_tls()
                    || self.ctx.config.upstream_tls == crate::cli::UpstreamTls::Always);
            if !hold {
                if let Err(e) = self.send(&mut ini, &rec_header).await {
                    return Err(self.abort(&mut ini, &mut rec, e, false).await);
                }
            }
            let version_1 =
                self.down.header.as_ref().and_then(|h| h.version.as_deref()) == Some("1.0");
            if !version_1 {
                // A pre-1.0 stream has no features: straight to the relay (dialback without STARTTLS).
                if hold {
                    if let Err(e) = self.send(&mut ini, &rec_header).await {
                        return Err(self.abort(&mut ini, &mut rec, e, false).await);
                    }
                }
                if self.ctx.config.require_tls && !ini.io.is_tls() {
                    let e = SessionError::TlsRequired {
                        reason:
                            "the receiver's stream has no version='1.0', so it offers no STARTTLS",
                    };
                    return Err(self.abort(&mut ini, &mut rec, e, false).await);
                }
                return Ok(Negotiated { ini, rec });
            }

            // ExpectReceiverFeatures
            let (frame, features_bytes) = match self
                .read_element(
                    &mut rec,
                    (!hold).then_some(&mut ini),
                    step,
                    "stream features",
                )
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, hold).await),
            };
            self.down.frame(&frame, &features_bytes);
            let features = self.features(&frame, &features_bytes);
            let offers_tls = features.as_ref().is_some_and(|f| f.starttls.is_some());

            if hold {
                if offers_tls {
                    tracing::info!(
                        "upgrading the upstream leg on xmpptap's own (--upstream-tls always)"
                    );
                    rec = match self.upgrade_upstream_alone(&mut ini, rec, domain).await {
                        Ok(rec) => rec,
                        Err(ended) => return Err(ended),
                    };
                    continue;
                }
                tracing::warn!(
                    "the receiver does not offer STARTTLS: the upstream leg stays plaintext \
                     although {}",
                    if ini.io.is_tls() {
                        "the initiator uses TLS"
                    } else {
                        "--upstream-tls always asks for TLS"
                    }
                );
                if let Err(e) = self.send(&mut ini, &rec_header).await {
                    return Err(self.abort(&mut ini, &mut rec, e, false).await);
                }
            }
            // What the initiator is offered: the receiver's features minus what interception would break.
            let offered = self.rewrite_features(&frame, features_bytes);
            let offered = match self
                .negotiation_rules(Direction::Down, &frame, offered)
                .await
            {
                Ok(offered) => offered,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, false).await),
            };
            if let Err(e) = self.send(&mut ini, &offered).await {
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }
            let tls_offered = offers_tls && !self.ctx.config.strip_starttls;
            if !ini.io.is_tls() && !tls_offered && self.ctx.config.require_tls {
                let e = SessionError::TlsRequired {
                    reason: "the receiver does not offer STARTTLS",
                };
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }
            if features.is_none() || !tls_offered || ini.io.is_tls() {
                return Ok(Negotiated { ini, rec });
            }

            // ExpectStarttls: the initiator may take the offer or go on in plaintext.
            let (frame, bytes) = match self
                .read_element(&mut ini, Some(&mut rec), step, "<starttls/> or a stanza")
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, false).await),
            };
            self.up.frame(&frame, &bytes);
            let starttls = self.is_tls_element(&frame, &bytes, Direction::Up, "starttls");
            if !starttls && self.ctx.config.require_tls {
                let e = SessionError::TlsRequired {
                    reason: "the initiator went on without STARTTLS",
                };
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }
            let bytes = match self.negotiation_rules(Direction::Up, &frame, bytes).await {
                Ok(bytes) => bytes,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, false).await),
            };
            if let Err(e) = self.send(&mut rec, &bytes).await {
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }
            if !starttls {
                return Ok(Negotiated { ini, rec });
            }

            // ExpectProceed
            let (frame, proceed) = match self
                .read_element(&mut rec, Some(&mut ini), step, "<proceed/>")
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, false).await),
            };
            self.down.frame(&frame, &proceed);
            if !self.is_tls_element(&frame, &proceed, Direction::Down, "proceed") {
                // <failure/> or anything else: let the initiator see it and the peers end it themselves.
                if let Err(e) = self.send(&mut ini, &proceed).await {
                    return Err(self.abort(&mut ini, &mut rec, e, false).await);
                }
                return Ok(Negotiated { ini, rec });
            }
            if let Err(e) =
                nothing_after(&rec, "proceed").and_then(|()| tolerate_after(&mut ini, "starttls"))
            {
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }

            // TLS upstream first: if it fails, the initiator can still be told so in XML.
            rec = match self.tls_upstream(rec, domain).await {
                Ok(rec) => rec,
                Err(e) => {
                    let _ = ini.io.write_all(TLS_FAILURE).await;
                    self.down.own_words(b"</stream:stream>");
                    return Err(self.ended_by_tls(e));
                }
            };
            // Whatever the initiator sent after <starttls/> while xmpptap waited for <proceed/> and did the
            // upstream handshake has arrived by now: refuse it before TLS rather than take it for a ClientHello.
            if let Err(e) = stray_before_proceed(&mut ini).await {
                return Err(self.abort(&mut ini, &mut rec, e, false).await);
            }
            let proceed = match self
                .negotiation_rules(Direction::Down, &frame, proceed)
                .await
            {
                Ok(proceed) => proceed,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, false).await),
            };
            if let Err(e) = self.send(&mut ini, &proceed).await {
                return Err(self.ended_after(e));
            }
            ini = match self.tls_downstream(ini, domain).await {
                Ok(ini) => ini,
                Err(e) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), rec.io.shutdown()).await;
                    return Err(self.ended_by_tls(e));
                }
            };

            // Both legs restart their streams: the initiator speaks first.
            let (frame, header) = match self
                .read(&mut ini, step, "the initiator's stream header after TLS")
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Err(self.abort(&mut ini, &mut rec, e, true).await),
            };
            self.up.frame(&frame, &header);
            ini_header = header;
        }
    }

    /// `--upstream-tls always`: STARTTLS with the receiver while the initiator waits, then restart upstream.
    async fn upgrade_upstream_alone(
        &mut self,
        ini: &mut Leg<Transport>,
        mut rec: Leg<Transport>,
        domain: &str,
    ) -> Result<Leg<Transport>, Ended> {
        let step = self.ctx.config.limits.negotiation_timeout;
        if let Err(e) = self.send(&mut rec, &Bytes::from_static(STARTTLS)).await {
            return Err(self.abort(ini, &mut rec, e, true).await);
        }
        self.up.own(EventKind::Starttls {
            xml: Xml(Bytes::from_static(STARTTLS)),
        });
        let (frame, proceed) = match self.read_element(&mut rec, None, step, "<proceed/>").await {
            Ok(frame) => frame,
            Err(e) => return Err(self.abort(ini, &mut rec, e, true).await),
        };
        self.down.frame(&frame, &proceed);
        if !self.is_tls_element(&frame, &proceed, Direction::Down, "proceed") {
            let e = SessionError::Unexpected {
                side: Side::Receiver,
                expected: "<proceed/>",
                found: describe(&frame, &proceed),
            };
            return Err(self.abort(ini, &mut rec, e, true).await);
        }
        if let Err(e) = nothing_after(&rec, "proceed") {
            return Err(self.abort(ini, &mut rec, e, true).await);
        }
        match self.tls_upstream(rec, domain).await {
            Ok(rec) => Ok(rec),
            Err(e) => {
                let header = self.up.header.clone().unwrap_or_default();
                let reason = e.to_string();
                self.tls_done(Side::Receiver, false);
                self.down.own(EventKind::TlsFailed {
                    side: Side::Receiver,
                    error: reason.clone(),
                });
                let error = SessionError::Tls {
                    side: Side::Receiver,
                    reason,
                };
                Err(self.refuse(ini, Some(&header), error).await)
            }
        }
    }

    /// TLS with the receiver, xmpptap as client, verifying the receiver's certificate for `domain`.
    async fn tls_upstream(
        &mut self,
        rec: Leg<Transport>,
        domain: &str,
    ) -> Result<Leg<Transport>, SessionError> {
        let tls_error = |reason: String| SessionError::Tls {
            side: Side::Receiver,
            reason,
        };
        let (io, rec) = rec.into_io();
        let Transport::Plain(tcp) = io else {
            return Err(tls_error(String::from("the upstream leg already uses TLS")));
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| tls_error(format!("{domain:?} is not a valid TLS server name: {e}")))?;
        let from = self
            .up
            .header
            .as_ref()
            .and_then(|h| h.from.clone())
            .filter(|from| !from.is_empty());
        let connector = match (self.listener.kind, self.ctx.config.client_cert, from) {
            (ListenerKind::S2s, crate::cli::ClientCert::Mint, Some(from)) => {
                // SASL EXTERNAL through xmpptap: a client certificate for the initiating domain.
                self.ctx
                    .tls
                    .connector_with_client_cert(self.alpn(), &from)
                    .map_err(|e| {
                        tls_error(format!(
                            "cannot mint a client certificate for {from:?}: {e}"
                        ))
                    })?
            }
            (ListenerKind::S2s, crate::cli::ClientCert::Mint, None) => {
                tracing::warn!(
                    "the initiator's stream header has no 'from': no domain to mint a client certificate \
                     for, so none is presented upstream"
                );
                self.ctx.tls.connector(self.alpn())
            }
            _ => self.ctx.tls.connector(self.alpn()),
        };
        let handshake = tokio::time::timeout(
            self.ctx.config.limits.tls_timeout,
            connector.connect(name, tcp),
        );
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(tls_error(e.to_string())),
            Err(_) => return Err(tls_error(String::from("timed out"))),
        };
        let mut info = crate::tls::client_info(tls.get_ref().1);
        // rustls does not report the SNI it sent; it is the name xmpptap passed to connect().
        info.sni = Some(domain.to_owned());
        tracing::info!(side = "receiver", version = %info.version, cipher = %info.cipher, "TLS established");
        self.tls_done(Side::Receiver, true);
        self.down.own(EventKind::TlsEstablished {
            side: Side::Receiver,
            info,
        });
        let mut rec = rec.with_io(Transport::Client(Box::new(tls)));
        rec.framer.reset();
        Ok(rec)
    }

    /// The features the initiator is offered: the receiver's `bytes` minus what interception would break.
    fn rewrite_features(&self, frame: &Frame, bytes: Bytes) -> Bytes {
        self.rewriter
            .features(frame, &bytes, &self.down)
            .unwrap_or(bytes)
    }

    /// The ALPN protocol of this session's kind (XEP-0368).
    fn alpn(&self) -> &'static [u8] {
        match self.listener.kind {
            ListenerKind::S2s => b"xmpp-server",
            ListenerKind::C2s => b"xmpp-client",
        }
    }

    /// Direct TLS with the initiator before any XML: the certificate is minted for the SNI name, or for
    /// `--default-domain` when the initiator sends none.
    async fn tls_accept_direct(
        &mut self,
        ini: Leg<Transport>,
    ) -> Result<Leg<Transport>, SessionError> {
        let tls_error = |reason: String| SessionError::Tls {
            side: Side::Initiator,
            reason,
        };
        let (io, ini) = ini.into_io();
        let Transport::Plain(tcp) = io else {
            return Err(tls_error(String::from(
                "the initiator leg already uses TLS",
            )));
        };
        let acceptor = match self.listener.kind {
            ListenerKind::S2s => &self.ctx.direct_tls[0],
            ListenerKind::C2s => &self.ctx.direct_tls[1],
        };
        let handshake =
            tokio::time::timeout(self.ctx.config.limits.tls_timeout, acceptor.accept(tcp));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(tls_error(e.to_string())),
            Err(_) => return Err(tls_error(String::from("timed out"))),
        };
        let info = crate::tls::server_info(tls.get_ref().1);
        tracing::info!(side = "initiator", sni = ?info.sni, version = %info.version, "Direct TLS established");
        self.tls_done(Side::Initiator, true);
        self.up.own(EventKind::TlsEstablished {
            side: Side::Initiator,
            info,
        });
        Ok(ini.with_io(Transport::Server(Box::new(tls))))
    }

    /// TLS with the initiator, xmpptap as server, presenting a certificate minted for `domain`.
    async fn tls_downstream(
        &mut self,
        ini: Leg<Transport>,
        domain: &str,
    ) -> Result<Leg<Transport>, SessionError> {
        let tls_error = |reason: String| SessionError::Tls {
            side: Side::Initiator,
            reason,
        };
        let (io, ini) = ini.into_io();
        let Transport::Plain(tcp) = io else {
            return Err(tls_error(String::from(
                "the initiator leg already uses TLS",
            )));
        };
        let acceptor = self
            .ctx
            .tls
            .acceptor_for(domain)
            .map_err(|e| tls_error(format!("cannot mint a certificate for {domain}: {e}")))?;
        let handshake =
            tokio::time::timeout(self.ctx.config.limits.tls_timeout, acceptor.accept(tcp));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(tls_error(e.to_string())),
            Err(_) => return Err(tls_error(String::from("timed out"))),
        };
        let info = crate::tls::server_info(tls.get_ref().1);
        tracing::info!(side = "initiator", version = %info.version, cipher = %info.cipher, "TLS established");
        self.tls_done(Side::Initiator, true);
        self.up.own(EventKind::TlsEstablished {
            side: Side::Initiator,
            info,
        });
        let mut ini = ini.with_io(Transport::Server(Box::new(tls)));
        ini.framer.reset();
        Ok(ini)
    }

    /// Writes `bytes` to a leg, flushing TLS records, and records them for captures.
    async fn send(&self, leg: &mut Leg<Transport>, bytes: &Bytes) -> Result<(), SessionError> {
        let side = leg.side;
        let io = |source| SessionError::Io { side, source };
        leg.io.write_all(bytes).await.map_err(io)?;
        leg.io.flush().await.map_err(io)?;
        self.toward(side).data(side, true, bytes);
        Ok(())
    }

    /// The observer of the direction toward `side` (what xmpptap writes to it).
    fn toward(&self, side: Side) -> &Observer {
        match side {
            Side::Initiator => &self.down,
            Side::Receiver => &self.up,
        }
    }

    /// The next frame from `leg`, bounded by `timeout` and shutdown.
    async fn read(
        &self,
        leg: &mut Leg<Transport>,
        timeout: Duration,
        expected: &'static str,
    ) -> Result<(Frame, Bytes), SessionError> {
        let side = leg.side;
        tokio::select! {
            result = tokio::time::timeout(timeout, leg.next_frame()) => match result {
                Ok(Ok(Some(frame))) => {
                    let from = match side {
                        Side::Initiator => &self.up,
                        Side::Receiver => &self.down,
                    };
                    from.data(side, false, &frame.1);
                    Ok(frame)
                }
                Ok(Ok(None)) => Err(SessionError::Closed { side, expected }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(SessionError::Timeout { side, expected, after: timeout }),
            },
            _ = self.shutdown.cancelled() => Err(SessionError::Shutdown),
        }
    }

    /// The next top-level element from `from`; whitespace keepalives before it are passed on to `to`, or
    /// dropped when `to` is `None` because xmpptap holds back that side's stream header (`--upstream-tls
    /// always`): whitespace ahead of the header's XML declaration would make the stream ill-formed.
    async fn read_element(
        &mut self,
        from: &mut Leg<Transport>,
        mut to: Option<&mut Leg<Transport>>,
        timeout: Duration,
        expected: &'static str,
    ) -> Result<(Frame, Bytes), SessionError> {
        loop {
            let (frame, bytes) = self.read(from, timeout, expected).await?;
            match frame.kind {
                FrameKind::Stanza => return Ok((frame, bytes)),
                FrameKind::Whitespace => match to.as_deref_mut() {
                    Some(to) => self.send(to, &bytes).await?,
                    None => tracing::trace!(
                        len = bytes.len(),
                        "keepalive dropped: no stream to pass it on"
                    ),
                },
                FrameKind::StreamOpen | FrameKind::StreamClose => {
                    return Err(SessionError::Unexpected {
                        side: from.side,
                        expected,
                        found: describe(&frame, &bytes),
                    })
                }
            }
        }
    }

    /// Parses a features element, or `None` if the frame is something else.
    fn features(&self, frame: &Frame, bytes: &Bytes) -> Option<Features> {
        let head = self.head(frame, bytes, Direction::Down)?;
        if head.ns.as_deref() != Some(NS_STREAM) || head.local != "features" {
            return None;
        }
        Features::parse(bytes).ok()
    }

    /// Whether a frame is the TLS-namespace element `local` (`starttls`, `proceed`).
    fn is_tls_element(&self, frame: &Frame, bytes: &Bytes, dir: Direction, local: &str) -> bool {
        self.head(frame, bytes, dir)
            .is_some_and(|head| head.ns.as_deref() == Some(NS_TLS) && head.local == local)
    }

    fn head(&self, frame: &Frame, bytes: &Bytes, dir: Direction) -> Option<ElementHead> {
        let obs = match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let stream = obs.header.clone().unwrap_or_default();
        ElementHead::parse(&bytes[frame.head.clone()], &stream).ok()
    }

    /// Ends a session before any upstream stream reached the initiator: xmpptap opens a stream of its own
    /// toward the initiator (RFC 6120 4.9.1.2) and sends the error on it. When the receiver is at fault, the
    /// initiator is told `remote-connection-failed`, as when the receiver cannot be reached at all; the
    /// receiver's own error is the caller's business.
    async fn refuse(
        &mut self,
        ini: &mut Leg<Transport>,
        header: Option<&StreamHeader>,
        error: SessionError,
    ) -> Ended {
        log_error(&error);
        let condition = match error.culprit() {
            Some(Side::Receiver) => Some("remote-connection-failed"),
            _ => error.condition(),
        };
        if let Some(condition) = condition {
            self.ctx.steering.shared.metrics.error(condition);
            if error.culprit() == Some(Side::Initiator) {
                self.down
                    .own(protocol_error_event(Side::Initiator, condition, &error));
            }
            let empty = StreamHeader::default();
            let id = format!("xmpptap-{}", self.conn);
            let reply = element::reply_header(header.unwrap_or(&empty), &id);
            let words = element::stream_error(condition, Some(&error.text()));
            let written = tokio::time::timeout(Duration::from_secs(5), async {
                ini.io.write_all(&reply).await?;
                ini.io.write_all(&words).await?;
                ini.io.shutdown().await
            })
            .await;
            if let Ok(Ok(())) = written {
                let reply = Bytes::from(reply);
                self.down.data(Side::Initiator, true, &reply);
                self.down.own(observe::stream_opened(
                    self.down.streams,
                    None,
                    Origin::Xmpptap,
                    reply,
                ));
                self.down.own_words(&words);
            }
        }
        self.bytes = [ini.bytes_read, 0];
        Ended {
            by: error.culprit().map_or(ClosedBy::Xmpptap, ClosedBy::from),
            reason: format!("{error}"),
        }
    }

    /// Ends a negotiating session: the culprit gets a stream error, the other side a clean close.
    /// `initiator_unopened` says the initiator has not yet received a stream header on its current stream: it
    /// then gets one of xmpptap's own first (see [`Self::refuse`]), so that what it reads is a well-formed stream.
    async fn abort(
        &mut self,
        ini: &mut Leg<Transport>,
        rec: &mut Leg<Transport>,
        error: SessionError,
        initiator_unopened: bool,
    ) -> Ended {
        if initiator_unopened {
            // xmpptap has opened a stream toward the receiver: it can be told what it did wrong.
            let rec_words = match (error.culprit(), error.condition()) {
                (Some(Side::Receiver), Some(condition)) => {
                    self.up
                        .own(protocol_error_event(Side::Receiver, condition, &error));
                    element::stream_error(condition, Some(&error.to_string()))
                }
                (None, Some(condition)) => {
                    element::stream_error(condition, Some(&error.to_string()))
                }
                _ => b"</stream:stream>".to_vec(),
            };
            let header = self.up.header.clone().unwrap_or_default();
            let ended = self.refuse(ini, Some(&header), error).await;
            let written = tokio::time::timeout(Duration::from_secs(2), async {
                rec.io.write_all(&rec_words).await?;
                rec.io.shutdown().await
            })
            .await;
            if let Ok(Ok(())) = written {
                self.up.own_words(&rec_words);
            }
            self.bytes = [ini.bytes_read, rec.bytes_read];
            return ended;
        }
        log_error(&error);
        let (ini_words, rec_words) = last_words(&error);
        record_protocol_error(&self.up, &self.down, &error);
        if let Some(condition) = error.condition() {
            self.ctx.steering.shared.metrics.error(condition);
        }
        for (leg, words, obs) in [
            (&mut *ini, &ini_words[..], &self.down),
            (&mut *rec, &rec_words[..], &self.up),
        ] {
            let written = tokio::time::timeout(Duration::from_secs(5), async {
                leg.io.write_all(words).await?;
                leg.io.shutdown().await
            })
            .await;
            if let Ok(Ok(())) = written {
                obs.own_words(words);
            }
        }
        self.bytes = [ini.bytes_read, rec.bytes_read];
        Ended {
            by: error.culprit().map_or(ClosedBy::Xmpptap, ClosedBy::from),
            reason: error.to_string(),
        }
    }

    /// A TLS failure: both legs are closed (by dropping them) and the transcript says why.
    fn ended_by_tls(&mut self, error: SessionError) -> Ended {
        log_error(&error);
        self.ended_by_tls_event(&error);
        self.ended_after(error)
    }

    /// Records a `tls_failed` event for a TLS error.
    fn ended_by_tls_event(&self, error: &SessionError) {
        if let SessionError::Tls { side, reason } = error {
            self.tls_done(*side, false);
            let obs = if *side == Side::Initiator {
                &self.up
            } else {
                &self.down
            };
            obs.own(EventKind::TlsFailed {
                side: *side,
                error: reason.clone(),
            });
        }
    }

    /// A failure after which nothing more can be said to either side.
    fn ended_after(&mut self, error: SessionError) -> Ended {
        Ended {
            by: error.culprit().map_or(ClosedBy::Xmpptap, ClosedBy::from),
            reason: error.to_string(),
        }
    }
}

/// Whether the initiator's first bytes are a TLS ClientHello (0x16 0x03: a handshake record of TLS 1.x), peeked
/// without consuming them, within `timeout`. Anything else, a timeout or an error answers `false` and leaves the
/// normal path to deal with it.
async fn sniff_client_hello(tcp: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 2];
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(_)) if first[0] != 0x16 => return false,
            Ok(Ok(n)) if n >= 2 => return first[1] == 0x03,
            // One byte so far: peek returns at once until the second arrives, so wait a little. The timeout
            // above never fires for a ready peek: without this check, a lone 0x16 would hold the session forever.
            Ok(Ok(_)) if tokio::time::Instant::now() >= deadline => return false,
            // Nor does peek ever see the end of a stream behind a byte not yet read; the read side's readiness
            // does (EPOLLRDHUP): a peer that sent its one byte and closed gets its answer now.
            Ok(Ok(_))
                if tcp
                    .ready(Interest::READABLE)
                    .await
                    .is_ok_and(|r| r.is_read_closed()) =>
            {
                return false
            }
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// TLS starts right after `<proceed/>`: the receiver must not have sent anything after it.
fn nothing_after(rec: &Leg<Transport>, element: &'static str) -> Result<(), SessionError> {
    if rec.buf.is_empty() {
        Ok(())
    } else {
        Err(SessionError::BytesBeforeTls {
            side: rec.side,
            element,
            len: rec.buf.len(),
        })
    }
}

/// Some initiators send stray whitespace after `<starttls/>`: drop it with a warning; anything else is an error.
fn tolerate_after(ini: &mut Leg<Transport>, element: &'static str) -> Result<(), SessionError> {
    if ini.buf.is_empty() {
        return Ok(());
    }
    if ini.buf.iter().all(u8::is_ascii_whitespace) {
        tracing::warn!(
            len = ini.buf.len(),
            "initiator sent whitespace after <starttls/>; dropped"
        );
        ini.buf.clear();
        ini.framer.reset();
        return Ok(());
    }
    Err(SessionError::BytesBeforeTls {
        side: ini.side,
        element,
        len: ini.buf.len(),
    })
}

/// Reads what the initiator has already sent, without waiting, and applies [`tolerate_after`] to it. An honest
/// initiator sends nothing between `<starttls/>` and the `<proceed/>` it has not received yet.
async fn stray_before_proceed(ini: &mut Leg<Transport>) -> Result<(), SessionError> {
    // A zero timeout polls the read once: it takes what is there and never waits. `fill` is cancel-safe.
    if let Ok(read) = tokio::time::timeout(Duration::ZERO, ini.fill()).await {
        read?;
    }
    tolerate_after(ini, "starttls")
}

/// A short description of a frame for error messages: its start tag, cut to a readable length.
fn describe(frame: &Frame, bytes: &Bytes) -> String {
    let tag = &bytes[frame.head.clone()];
    let text = String::from_utf8_lossy(&tag[..tag.len().min(80)]);
    if tag.len() > 80 {
        format!("{text}...")
    } else {
        text.into_owned()
    }
}
