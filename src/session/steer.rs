//! What one direction of the relay does besides copying: it asks the rules what to do with each element
//! ([`crate::rules`]), answers and swallows xmpptap's own pings ([`super::ping`]), applies the federation
//! policy's rates ([`crate::policy`]), and keeps the connection's entry in the control registry current.
//!
//! Deciding is separate from doing: [`Steer::plan`] turns a batch of frames into a list of [`Op`]s with no I/O,
//! and the relay carries them out in order. A batch nothing applies to stays one `Write` of the original
//! bytes, so that with no rules, no outstanding ping and an open policy the data path is what it was: one
//! look at the first bytes of each start tag.
//!
//! Shaping that outlives one element (`throttle`, `slice`, `cut_after`) is state of the direction, set by the
//! rule that matched and applied to every later write by [`Shaping`].

use super::ping::{self, Pinger};
use super::SessionError;
use crate::config::ListenerKind;
use crate::control::metrics::Metrics;
use crate::control::registry::{ConnEntry, InjectOrigin, Injection};
use crate::policy::Policy;
use crate::rules::{Action, Decision, InjectAt, RuleState, SharedRules, Subject};
use crate::side::Direction;
use crate::tap::event::Xml;
use crate::tap::EventKind;
use crate::xml::element::{is_ordinary_stanza, ElementHead, StreamHeader, NS_DIALBACK, NS_SM};
use crate::xml::framer::{Frame, FrameKind};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::observe::Observer;
use super::rewrite::Rewriter;

/// One step of carrying out a batch, in order.
#[derive(Debug)]
pub enum Op {
    /// Write these bytes to the receiving side (through [`Shaping`]).
    Write(Bytes),
    /// Write these bytes back to the sending side (an `inject` rule with `at = "reply"`, named).
    Reply(Bytes, String),
    /// Wait before going on (`delay`, a policy rate with `delay`, a `stall` with a duration).
    Pause(Duration),
    /// Forward nothing more in this direction (`stall` without a duration).
    StallForever,
    /// End the connection.
    End(SessionError),
}

/// Per-direction shaping set by connection-level rule actions.
#[derive(Debug, Default)]
pub struct Shaping {
    /// `throttle`: at most this many bytes per second.
    pub throttle: Option<u64>,
    /// `slice`: writes cut into chunks of this size with this pause between them.
    pub slice: Option<(usize, Duration)>,
    /// `cut_after`: what may still pass before the connection is cut, and the rule that said so.
    pub cut: Option<Cut>,
}

/// What `cut_after` still lets through.
#[derive(Debug)]
pub struct Cut {
    pub rule: String,
    pub bytes: Option<u64>,
    pub stanzas: Option<u64>,
}

impl Shaping {
    /// Whether writes go out as they are.
    pub fn is_plain(&self) -> bool {
        self.throttle.is_none() && self.slice.is_none() && self.cut.is_none()
    }
}

/// Everything shared by the sessions that a direction consults.
#[derive(Clone, Debug)]
pub struct Shared {
    pub rules: Arc<SharedRules>,
    pub pinger: Arc<Pinger>,
    pub policy: Arc<Policy>,
    pub metrics: Arc<Metrics>,
}

/// The steering of one direction of one connection.
#[derive(Debug)]
pub struct Steer {
    pub dir: Direction,
    listener: ListenerKind,
    shared: Shared,
    entry: Arc<ConnEntry>,
    /// The domains of the initiator's stream header.
    initiator: Option<String>,
    receiver: String,
    /// The domain whose traffic this direction carries, for the policy's rates (up only).
    rate_domain: Option<String>,
    state: RuleState,
    /// XEP-0198 is on for this connection (either direction saw `<enabled/>` or `<resumed/>`).
    sm: Arc<AtomicBool>,
    /// The stream can carry stanzas (dialback valid, a stanza seen, resource bound): pings may go.
    established: Arc<AtomicBool>,
    pub shaping: Shaping,
    /// A `stall` without end is in force.
    pub stalled: bool,
    /// Pings are on: ordinary stanzas are looked at until one shows the stream established.
    watch_established: bool,
}

impl Steer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: Direction,
        listener: ListenerKind,
        shared: Shared,
        entry: Arc<ConnEntry>,
        header: Option<&StreamHeader>,
        sm: Arc<AtomicBool>,
        established: Arc<AtomicBool>,
        watch_established: bool,
    ) -> Self {
        let initiator = header.and_then(|h| h.from.clone());
        let receiver = header.and_then(|h| h.to.clone()).unwrap_or_default();
        let rate_domain = (dir == Direction::Up && !shared.policy.config().is_open())
            .then(|| initiator.clone().unwrap_or_else(|| receiver.clone()));
        Steer {
            dir,
            listener,
            shared,
            entry,
            initiator,
            receiver,
            rate_domain,
            state: RuleState::default(),
            sm,
            established,
            shaping: Shaping::default(),
            stalled: false,
            watch_established,
        }
    }

    /// Goes on from what the rules counted during negotiation.
    pub fn with_state(mut self, state: RuleState) -> Self {
        self.state = state;
        self
    }

    /// The ops for a batch of frames (`frames` are at their offsets in `chunk`), recording what rules and pings
    /// did on `obs`.
    /// `rewriter` (downstream only) cuts what interception would break out of stream features first.
    pub fn plan(
        &mut self,
        frames: &[(usize, Frame)],
        chunk: &Bytes,
        obs: &Observer,
        rewriter: Option<&Rewriter>,
    ) -> Vec<Op> {
        let rules = self.shared.rules.current();
        let pings = self.shared.pinger.any_outstanding();
        let mut ops = Vec::new();
        // Bytes of `chunk` not yet planned: runs of untouched frames go out as one slice.
        let mut copied = 0;
        let mut stanzas = 0u32;
        for (offset, frame) in frames {
            let (offset, end) = (*offset, *offset + frame.len);
            if frame.kind != FrameKind::Stanza {
                continue;
            }
            if self.cut_due() {
                flush(&mut ops, chunk, &mut copied, offset);
                self.count(stanzas, offset as u64, &mut ops, obs);
                return self.cut(ops);
            }
            stanzas += 1;
            if let Some(cut) = &mut self.shaping.cut {
                if let Some(left) = &mut cut.stanzas {
                    *left = left.saturating_sub(1);
                }
            }
            let tag = &chunk[offset + frame.head.start..offset + frame.head.end];
            let ordinary = is_ordinary_stanza(tag);
            let watching = self.watch_established && !self.established.load(Ordering::Relaxed);
            if rules.is_empty() && ordinary && !watching && !(pings && ordinary_iq(tag)) {
                continue;
            }
            let stream = obs.header.clone().unwrap_or_default();
            let Ok(head) = ElementHead::parse(tag, &stream) else {
                continue;
            };
            let bytes = chunk.slice(offset..end);
            if let Some(rewritten) = rewriter.and_then(|r| r.features(frame, &bytes, obs)) {
                flush(&mut ops, chunk, &mut copied, offset);
                copied = end;
                ops.push(Op::Write(rewritten));
                continue;
            }
            if pings {
                if let Some(answer) = self.shared.pinger.answer(tag, &bytes, &stream) {
                    flush(&mut ops, chunk, &mut copied, offset);
                    copied = end;
                    self.shared.metrics.ping_rtt(&answer.pair, answer.rtt);
                    obs.own(EventKind::Ping {
                        id: answer.id,
                        pair: answer.pair,
                        result: if answer.error.is_some() {
                            "error"
                        } else {
                            "answered"
                        },
                        rtt_ms: Some(answer.rtt.as_secs_f64() * 1000.0),
                        error: answer.error,
                        sent_on: Some(answer.conn),
                    });
                    continue;
                }
            }
            if rules.is_empty() {
                self.learn(&head, &bytes, false);
                continue;
            }
            let subject = Subject {
                listener: self.listener,
                dir: self.dir,
                initiator: self.initiator.as_deref(),
                receiver: Some(&self.receiver),
                head: &head,
                tag,
                bytes: &bytes,
            };
            let decision = rules.decide(&subject, &mut self.state, &mut || rand::random::<f64>());
            // What the initiator is told counts: a dialback answer a rule turns invalid is invalid.
            let inverted = decision.is_some_and(|d| matches!(d.action, Action::DialbackInvalid));
            self.learn(&head, &bytes, inverted);
            let Some(decision) = decision else { continue };
            flush(&mut ops, chunk, &mut copied, offset);
            copied = end;
            self.act(&decision, &stream, bytes, obs, &mut ops);
            if matches!(ops.last(), Some(Op::End(_) | Op::StallForever)) {
                // Nothing after this element goes anywhere: it is neither acted upon nor counted.
                self.count(stanzas, end as u64, &mut ops, obs);
                return ops;
            }
        }
        flush(&mut ops, chunk, &mut copied, chunk.len());
        self.count(stanzas, chunk.len() as u64, &mut ops, obs);
        if self.cut_due() {
            return self.cut(ops);
        }
        ops
    }

    /// `cut_after` has let its last stanza through.
    fn cut_due(&self) -> bool {
        self.shaping
            .cut
            .as_ref()
            .is_some_and(|cut| cut.stanzas == Some(0))
    }

    /// `ops` followed by the end of the connection, as `cut_after` says.
    fn cut(&mut self, mut ops: Vec<Op>) -> Vec<Op> {
        let rule = self
            .shaping
            .cut
            .take()
            .map_or_else(String::new, |cut| cut.rule);
        ops.push(Op::End(SessionError::Cut {
            rule,
            after: String::from("its stanza limit"),
        }));
        ops
    }

    /// Carries out a rule's decision on `bytes` (already cut out of the batch), as ops.
    fn act(
        &mut self,
        decision: &Decision<'_>,
        stream: &StreamHeader,
        bytes: Bytes,
        obs: &Observer,
        ops: &mut Vec<Op>,
    ) {
        let rule = decision.rule.name.as_str();
        let action = decision.action;
        if action.changes_stanza_count() && self.sm.load(Ordering::Relaxed) {
            // XEP-0198 counts stanzas: dropping or adding one would desynchronise the h counters, which
            // xmpptap does not rewrite. The element passes untouched.
            obs.own(rule_event(
                rule,
                action,
                None,
                Some("stream management (XEP-0198) is enabled on this stream: dropping or adding stanzas would desynchronise its h counters"),
                &bytes,
            ));
            ops.push(Op::Write(bytes));
            return;
        }
        self.shared.metrics.rule_action(rule, action.name());
        let detail = match element_ops(rule, action, self.dir.sender(), stream, &bytes, obs, ops) {
            Acted::Ops(detail) => detail,
            Acted::Stream => {
                self.shape(rule, action, &bytes, ops);
                None
            }
        };
        obs.own(rule_event(rule, action, detail, None, &bytes));
    }

    /// Carries out an action on the stream as a whole (see [`Acted::Stream`]): the matched element passes,
    /// and what follows is shaped, stalled or ended.
    fn shape(&mut self, rule: &str, action: &Action, bytes: &Bytes, ops: &mut Vec<Op>) {
        match action {
            Action::Stall { ms: None } => {
                self.stalled = true;
                ops.push(Op::StallForever);
            }
            Action::Throttle { bytes_per_sec } => {
                self.shaping.throttle = Some(*bytes_per_sec);
                ops.push(Op::Write(bytes.clone()));
            }
            Action::Slice {
                bytes: size,
                delay_ms,
            } => {
                self.shaping.slice = Some(((*size).max(1), Duration::from_millis(*delay_ms)));
                ops.push(Op::Write(bytes.clone()));
            }
            Action::CutAfter {
                bytes: cut_bytes,
                stanzas,
            } => {
                // Both count from the matched element, which is the first to pass.
                self.shaping.cut = Some(Cut {
                    rule: rule.to_owned(),
                    bytes: *cut_bytes,
                    stanzas: stanzas.map(|n| n.saturating_sub(1)),
                });
                ops.push(Op::Write(bytes.clone()));
            }
            Action::Reset => ops.push(Op::End(SessionError::Reset {
                rule: rule.to_owned(),
            })),
            // Element actions: `element_ops` has carried them out and never hands them here.
            _ => {}
        }
    }

    /// What a stream-level element tells the connection's entry and the metrics.
    /// `inverted`: a `dialback_invalid` rule turns this element's `valid` into `invalid`.
    fn learn(&self, head: &ElementHead, bytes: &Bytes, inverted: bool) {
        if is_ordinary_stanza(bytes) {
            if !self.established.load(Ordering::Relaxed)
                && ping::shows_established(self.dir, head, bytes, self.listener)
            {
                self.established.store(true, Ordering::Relaxed);
            }
            return;
        }
        match (head.ns.as_deref(), head.local.as_str()) {
            (Some(NS_DIALBACK), "result") if self.dir == Direction::Down => {
                let told = match head.kind.as_deref() {
                    Some("valid") if inverted => Some("invalid"),
                    told => told,
                };
                if let Some(result) = told {
                    self.shared.metrics.dialback(result);
                    let result = result.to_owned();
                    self.entry.update(|s| s.dialback = Some(result));
                }
            }
            (Some(NS_SM), "enabled" | "resumed") => {
                self.sm.store(true, Ordering::Relaxed);
                self.entry.update(|s| s.sm = true);
            }
            (Some(crate::xml::element::NS_SASL), step @ ("success" | "failure")) => {
                let step = step.to_owned();
                self.entry.update(|s| s.sasl = Some(step));
            }
            _ => {}
        }
        if !inverted
            && !self.established.load(Ordering::Relaxed)
            && ping::shows_established(self.dir, head, bytes, self.listener)
        {
            self.established.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a batch in the registry and against the policy's rates.
    fn count(&mut self, stanzas: u32, bytes: u64, ops: &mut Vec<Op>, obs: &Observer) {
        let counters = &self.entry.counters[usize::from(self.dir == Direction::Down)];
        counters
            .stanzas
            .fetch_add(u64::from(stanzas), Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        let Some(domain) = &self.rate_domain else {
            return;
        };
        match self
            .shared
            .policy
            .traffic(domain, stanzas, bytes, std::time::Instant::now())
        {
            Ok(None) => {}
            Ok(Some(wait)) => {
                obs.own(EventKind::Policy {
                    domain: domain.clone(),
                    reason: "rate",
                    action: "delayed",
                    detail: format!("{} ms", wait.as_millis()),
                });
                ops.insert(0, Op::Pause(wait));
            }
            Err(refusal) => {
                self.shared
                    .metrics
                    .policy_refused(refusal.domain(), refusal.reason());
                obs.own(EventKind::Policy {
                    domain: domain.clone(),
                    reason: refusal.reason(),
                    action: "refused",
                    detail: refusal.to_string(),
                });
                // Whatever the batch was to do, it ends here (a rule's own end included).
                ops.clear();
                ops.push(Op::End(SessionError::Policy {
                    reason: refusal.to_string(),
                }));
            }
        }
    }

    /// Whether a ping may go on this connection now, and the ping if so.
    pub fn ping(&self, conn: u64) -> Option<super::ping::Ping> {
        if self.dir != Direction::Up
            || self.sm.load(Ordering::Relaxed)
            || !self.established.load(Ordering::Relaxed)
        {
            return None;
        }
        let from = match self.listener {
            ListenerKind::S2s => Some(self.initiator.as_deref()?),
            ListenerKind::C2s => None,
        };
        Some(self.shared.pinger.ping(conn, from, &self.receiver))
    }

    /// The domain pair of this connection (`initiator->receiver`).
    pub fn pair(&self) -> String {
        format!(
            "{}->{}",
            self.initiator.as_deref().unwrap_or("?"),
            self.receiver
        )
    }

    /// The connection's relay is over: its S2S pings may still be answered on the reverse connection for
    /// `timeout`; a C2S connection's can no longer be.
    pub fn connection_ended(&self, conn: u64, timeout: Duration) {
        match self.listener {
            ListenerKind::S2s => self.shared.pinger.closed(conn, timeout),
            ListenerKind::C2s => self.shared.pinger.forget(conn),
        };
    }

    /// The shared pinger.
    pub fn pinger(&self) -> &Pinger {
        &self.shared.pinger
    }

    /// The shared metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Counts what xmpptap itself wrote (injections, pings) as stanzas of this direction.
    pub fn count_own(&self, bytes: usize) {
        let counters = &self.entry.counters[usize::from(self.dir == Direction::Down)];
        counters.stanzas.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// `ms` give or take up to `jitter_ms`, drawn uniformly.
pub fn delay(ms: u64, jitter_ms: u64) -> Duration {
    let low = ms.saturating_sub(jitter_ms);
    let high = ms.saturating_add(jitter_ms);
    Duration::from_millis(low + rand::random::<u64>() % (high - low + 1))
}

/// The transcript origin of an injection.
pub fn origin_name(origin: &InjectOrigin) -> String {
    match origin {
        InjectOrigin::Control => String::from("control"),
        InjectOrigin::Rule(name) => format!("rule:{name}"),
        InjectOrigin::Ping => String::from("ping"),
    }
}

/// An injection's event.
pub fn injected_event(injection: &Injection) -> EventKind {
    EventKind::Injected {
        origin: origin_name(&injection.origin),
        xml: Xml(injection.xml.clone()),
    }
}

/// A `rule` event (and its log line): `rule` took `action` on the element `bytes`, or was `refused`.
/// What [`element_ops`] made of an action.
#[derive(Debug)]
pub(super) enum Acted {
    /// Carried out as ops; the detail for the rule event.
    Ops(Option<String>),
    /// An action on the stream as a whole rather than on the element (`throttle`, `slice`, `cut_after`,
    /// `reset`, `stall` without an end): nothing done, left to the caller. Only the relay carries them out.
    Stream,
}

/// Carries out, as ops, an action on the element `bytes` it matched (sent by `sender` on a stream whose
/// header is `stream`): what `drop`, `delay`, `rewrite`, `dialback_invalid`, `inject`, `close` and `stall` for
/// a while do, the same in the relay ([`Steer`]) and during negotiation (stream-level elements). An element
/// injected before or after the match is recorded as an `injected` event on `obs`; the caller records the
/// `rule` event with the detail returned.
pub(super) fn element_ops(
    rule: &str,
    action: &Action,
    sender: crate::side::Side,
    stream: &StreamHeader,
    bytes: &Bytes,
    obs: &Observer,
    ops: &mut Vec<Op>,
) -> Acted {
    let mut detail = None;
    match action {
        Action::Drop => {}
        Action::Delay { ms, jitter_ms } => {
            let wait = delay(*ms, *jitter_ms);
            detail = Some(format!("{} ms", wait.as_millis()));
            ops.push(Op::Pause(wait));
            ops.push(Op::Write(bytes.clone()));
        }
        Action::Stall { ms: Some(ms) } => {
            ops.push(Op::Pause(Duration::from_millis(*ms)));
            ops.push(Op::Write(bytes.clone()));
        }
        Action::Rewrite(spec) => {
            let (out, said) = match crate::rules::edit::rewrite(bytes, stream, spec) {
                Ok(Some(rewritten)) => {
                    let rewritten = Bytes::from(rewritten);
                    let said = String::from_utf8_lossy(&rewritten).into_owned();
                    (rewritten, said)
                }
                Ok(None) => (bytes.clone(), String::from("nothing to change")),
                Err(e) => (bytes.clone(), format!("not rewritten: {e}")),
            };
            detail = Some(said);
            ops.push(Op::Write(out));
        }
        Action::DialbackInvalid => match crate::rules::edit::dialback_invalid(bytes, stream) {
            Some(invalid) => {
                let invalid = Bytes::from(invalid);
                detail = Some(String::from_utf8_lossy(&invalid).into_owned());
                ops.push(Op::Write(invalid));
            }
            None => {
                detail = Some(String::from("not a valid dialback answer: unchanged"));
                ops.push(Op::Write(bytes.clone()));
            }
        },
        Action::Inject { xml, at } => {
            let injected = Bytes::from(crate::rules::edit::injected(xml, bytes, stream));
            if *at != InjectAt::Reply {
                obs.own(EventKind::Injected {
                    origin: format!("rule:{rule}"),
                    xml: Xml(injected.clone()),
                });
            }
            match at {
                InjectAt::Before => {
                    ops.push(Op::Write(injected));
                    ops.push(Op::Write(bytes.clone()));
                }
                InjectAt::After => {
                    ops.push(Op::Write(bytes.clone()));
                    ops.push(Op::Write(injected));
                }
                InjectAt::Reply => {
                    ops.push(Op::Write(bytes.clone()));
                    ops.push(Op::Reply(injected, rule.to_owned()));
                }
            }
        }
        Action::Close { condition, text } => {
            let condition =
                crate::xml::element::stream_condition(condition).unwrap_or("undefined-condition");
            ops.push(Op::End(SessionError::Rule {
                rule: rule.to_owned(),
                side: sender,
                condition,
                text: text.clone(),
            }));
        }
        Action::Stall { ms: None }
        | Action::Throttle { .. }
        | Action::Slice { .. }
        | Action::CutAfter { .. }
        | Action::Reset => return Acted::Stream,
    }
    Acted::Ops(detail)
}

pub(super) fn rule_event(
    rule: &str,
    action: &Action,
    detail: Option<String>,
    refused: Option<&str>,
    bytes: &Bytes,
) -> EventKind {
    tracing::info!(rule, action = action.name(), ?detail, ?refused, "rule");
    EventKind::Rule {
        rule: rule.to_owned(),
        action: action.name(),
        detail,
        refused: refused.map(str::to_owned),
        xml: Xml(bytes.clone()),
    }
}

/// Pushes the untouched bytes `chunk[*copied..to]` as a write.
fn flush(ops: &mut Vec<Op>, chunk: &Bytes, copied: &mut usize, to: usize) {
    if to > *copied {
        ops.push(Op::Write(chunk.slice(*copied..to)));
    }
    *copied = (*copied).max(to);
}

/// Whether an ordinary stanza may be the answer to a ping: an iq.
fn ordinary_iq(tag: &[u8]) -> bool {
    tag.starts_with(b"<iq")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::{ConnHandle, Registry};
    use crate::policy::{Exceeded, PolicyConfig};
    use crate::rules::RuleSet;
    use crate::session::observe::SmIndex;
    use crate::side::Side;
    use crate::tap::Tap;
    use crate::xml::framer::{Framer, Limits};

    /// The initiator's (a.test) stream header on an S2S connection to b.test.
    const UP_HEADER: &str = "<stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        from='a.test' to='b.test' version='1.0'>";
    /// The receiver's (b.test) answer.
    const DOWN_HEADER: &str = "<stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        id='s1' from='b.test' to='a.test' version='1.0'>";

    /// What the process shares, as `run()` builds it: the rules of `toml`, a pinger, `policy`, metrics.
    fn shared_with(toml: &str, policy: PolicyConfig) -> Shared {
        let rules = SharedRules::default();
        for rule in RuleSet::parse(toml).expect("rules parse").rules() {
            rules.add(rule.clone()).expect("rule added");
        }
        Shared {
            rules: Arc::new(rules),
            pinger: Arc::new(Pinger::new()),
            policy: Arc::new(Policy::new(policy)),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// One direction of a connection: its steering, its observer (which knows the stream header) and a framer.
    struct Lane {
        steer: Steer,
        obs: Observer,
        framer: Framer,
    }

    impl Lane {
        /// Frames `input` (whole frames only) and plans it as one batch, as the relay does.
        fn plan(&mut self, input: &str) -> (Bytes, Vec<Op>) {
            let chunk = Bytes::copy_from_slice(input.as_bytes());
            let mut frames = Vec::new();
            let mut at = 0;
            while let Some(frame) = self.framer.next_frame(&chunk[at..]).expect("well-formed") {
                let len = frame.len;
                self.obs.frame_in(&frame, &chunk, at);
                frames.push((at, frame));
                at += len;
            }
            assert_eq!(at, chunk.len(), "whole frames only: {input}");
            let ops = self.steer.plan(&frames, &chunk, &self.obs, None);
            (chunk, ops)
        }

        /// [`Lane::plan`], with the ops as [`Step`]s.
        fn steps(&mut self, input: &str) -> Vec<Step> {
            steps(self.plan(input).1)
        }
    }

    /// Both directions of one connection, sharing its entry and its XEP-0198 and established flags.
    struct Conn {
        up: Lane,
        down: Lane,
        /// Keeps the entry in the registry.
        handle: ConnHandle,
        registry: Arc<Registry>,
    }

    impl Conn {
        /// Connection `conn` on `listener`: the initiator sent `up_header`, the receiver `down_header`. Both
        /// headers have been framed and observed; the relay starts.
        fn new(
            shared: &Shared,
            conn: u64,
            listener: ListenerKind,
            up_header: &str,
            down_header: &str,
            watch_established: bool,
        ) -> Conn {
            let registry = Arc::new(Registry::new());
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5269));
            let handle = registry.open(conn, "s2s", peer);
            let sm = Arc::new(AtomicBool::new(false));
            let established = Arc::new(AtomicBool::new(false));
            let header = StreamHeader::parse(up_header.as_bytes()).expect("header parses");
            let lane = |dir, stream_header: &str| {
                let mut framer = Framer::new(Limits::default());
                let mut obs =
                    Observer::new(conn, dir, Tap::disabled(), Arc::new(SmIndex::default()));
                let bytes = Bytes::copy_from_slice(stream_header.as_bytes());
                let frame = framer
                    .next_frame(&bytes)
                    .expect("header frames")
                    .expect("a whole header");
                assert_eq!(frame.len, bytes.len());
                obs.frame(&frame, &bytes);
                Lane {
                    steer: Steer::new(
                        dir,
                        listener,
                        shared.clone(),
                        handle.entry().clone(),
                        Some(&header),
                        sm.clone(),
                        established.clone(),
                        watch_established,
                    ),
                    obs,
                    framer,
                }
            };
            Conn {
                up: lane(Direction::Up, up_header),
                down: lane(Direction::Down, down_header),
                handle,
                registry,
            }
        }

        /// An S2S connection a.test -> b.test.
        fn s2s(shared: &Shared) -> Conn {
            Conn::new(shared, 1, ListenerKind::S2s, UP_HEADER, DOWN_HEADER, false)
        }

        /// `[stanzas, bytes]` of the entry's counters in `dir`.
        fn counted(&self, dir: Direction) -> [u64; 2] {
            let counters = &self.handle.counters[usize::from(dir == Direction::Down)];
            [
                counters.stanzas.load(Ordering::Relaxed),
                counters.bytes.load(Ordering::Relaxed),
            ]
        }
    }

    /// An [`Op`] in a form tests compare.
    #[derive(Debug, PartialEq)]
    enum Step {
        Write(String),
        Reply(String, String),
        Pause(Duration),
        StallForever,
        End(String),
    }

    fn steps(ops: Vec<Op>) -> Vec<Step> {
        let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
        ops.into_iter()
            .map(|op| match op {
                Op::Write(bytes) => Step::Write(text(&bytes)),
                Op::Reply(bytes, rule) => Step::Reply(text(&bytes), rule),
                Op::Pause(wait) => Step::Pause(wait),
                Op::StallForever => Step::StallForever,
                Op::End(error) => Step::End(error.to_string()),
            })
            .collect()
    }

    fn write(text: &str) -> Step {
        Step::Write(text.to_owned())
    }

    /// A message from a.test to b.test with `body`.
    fn up(id: &str, body: &str) -> String {
        format!("<message from='alice@a.test/r' to='bob@b.test' id='{id}'><body>{body}</body></message>")
    }

    /// The ops up to and including the first `End` or `StallForever`: what the relay carries out.
    fn carried_out(steps: Vec<Step>) -> Vec<Step> {
        let mut out = Vec::new();
        for step in steps {
            let last = matches!(step, Step::End(_) | Step::StallForever);
            out.push(step);
            if last {
                break;
            }
        }
        out
    }

    #[test]
    fn ordinary_stanzas_are_told_by_their_first_bytes() {
        for (tag, ordinary) in [
            (&b"<message to='a'>"[..], true),
            (b"<presence/>", true),
            (b"<iq type='get'>", true),
            (b"<messages>", false),
            (b"<db:result from='a'>", false),
            (b"<r xmlns='urn:xmpp:sm:3'/>", false),
            (b"<iqx>", false),
        ] {
            assert_eq!(
                is_ordinary_stanza(tag),
                ordinary,
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
    }

    #[test]
    fn with_nothing_to_do_a_batch_is_one_write_of_the_original_bytes() {
        let batch = [
            up("m1", "one"),
            String::from(" "),
            String::from("<db:result from='a.test' to='b.test'>key</db:result>"),
            String::from("\n"),
            String::from("<r xmlns='urn:xmpp:sm:3'/>"),
            String::from("<presence from='alice@a.test/r' to='bob@b.test'/>"),
            String::from("<iq type='result' id='i1' from='b.test' to='a.test'/>"),
            up("m2", "two &amp; more"),
        ]
        .concat();
        // Pings on (the stream is watched until it is established) or off: no rules, no outstanding ping and an
        // open policy leave the batch alone, in both directions.
        for watch_established in [false, true] {
            let shared = shared_with("", PolicyConfig::default());
            let mut conn = Conn::new(
                &shared,
                1,
                ListenerKind::S2s,
                UP_HEADER,
                DOWN_HEADER,
                watch_established,
            );
            for lane in [&mut conn.up, &mut conn.down] {
                let (chunk, ops) = lane.plan(&batch);
                match ops.as_slice() {
                    [Op::Write(bytes)] => {
                        assert_eq!(bytes, &chunk);
                        assert_eq!(
                            bytes.as_ptr(),
                            chunk.as_ptr(),
                            "a slice of the batch, not a copy"
                        );
                    }
                    other => panic!("watch {watch_established}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn rule_actions_split_the_batch_where_they_act() {
        let (m1, m2) = (up("m1", "before"), up("m2", "after"));
        let marked = up("x", "marked");
        let marked_from_nobody = "<message to='bob@b.test' id='x'><body>marked</body></message>";
        let ms = Duration::from_millis;
        let rule = |action: &str| {
            format!("[[rule]]\nname = 'r'\nmatch = {{ element = 'message', text = 'marked' }}\naction = {action}\n")
        };
        let cases: Vec<(&str, String, Vec<Step>)> =
            vec![
            (
                "drop",
                rule("{ kind = 'drop' }"),
                vec![write(&m1), write(&format!(" {m2}"))],
            ),
            (
                "delay",
                rule("{ kind = 'delay', ms = 300 }"),
                vec![write(&m1), Step::Pause(ms(300)), write(&marked), write(&format!(" {m2}"))],
            ),
            (
                "stall with ms",
                rule("{ kind = 'stall', ms = 200 }"),
                vec![write(&m1), Step::Pause(ms(200)), write(&marked), write(&format!(" {m2}"))],
            ),
            (
                "rewrite",
                rule("{ kind = 'rewrite', remove = ['from'] }"),
                vec![write(&m1), write(marked_from_nobody), write(&format!(" {m2}"))],
            ),
            (
                "inject before",
                rule("{ kind = 'inject', xml = \"<message id='inj'/>\" }"),
                vec![
                    write(&m1),
                    write("<message id='inj'/>"),
                    write(&marked),
                    write(&format!(" {m2}")),
                ],
            ),
            (
                "inject after",
                rule("{ kind = 'inject', at = 'after', xml = \"<message id='{id}-inj'/>\" }"),
                vec![
                    write(&m1),
                    write(&marked),
                    write("<message id='x-inj'/>"),
                    write(&format!(" {m2}")),
                ],
            ),
            (
                "inject reply",
                rule("{ kind = 'inject', at = 'reply', xml = \"<iq type='result' id='{id}'/>\" }"),
                vec![
                    write(&m1),
                    write(&marked),
                    Step::Reply(String::from("<iq type='result' id='x'/>"), String::from("r")),
                    write(&format!(" {m2}")),
                ],
            ),
            (
                "dialback_invalid on a message leaves it alone",
                rule("{ kind = 'dialback_invalid' }"),
                vec![write(&m1), write(&marked), write(&format!(" {m2}"))],
            ),
            (
                "throttle passes the element and shapes what follows",
                rule("{ kind = 'throttle', bytes_per_sec = 100 }"),
                vec![write(&m1), write(&marked), write(&format!(" {m2}"))],
            ),
        ];
        for (name, rules, want) in cases {
            let shared = shared_with(&rules, PolicyConfig::default());
            let mut conn = Conn::s2s(&shared);
            let got = conn.up.steps(&format!("{m1}{marked} {m2}"));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn actions_that_end_the_direction_come_after_the_bytes_before_them() {
        let (m1, m2) = (up("m1", "before"), up("m2", "after"));
        let marked = up("x", "marked");
        let rule = |action: &str| {
            format!("[[rule]]\nname = 'r'\nmatch = {{ element = 'message', text = 'marked' }}\naction = {action}\n")
        };
        let cases = [
            (
                "close",
                rule("{ kind = 'close', condition = 'not-authorized', text = 'go away' }"),
                Step::End(String::from(
                    "rule 'r' closed the stream of the initiator with <not-authorized/>",
                )),
            ),
            (
                "close with a condition that is none",
                rule("{ kind = 'close' }"),
                Step::End(String::from(
                    "rule 'r' closed the stream of the initiator with <undefined-condition/>",
                )),
            ),
            (
                "stall for ever",
                rule("{ kind = 'stall' }"),
                Step::StallForever,
            ),
            (
                "reset",
                rule("{ kind = 'reset' }"),
                Step::End(String::from("rule 'r' reset the connection")),
            ),
        ];
        for (name, rules, last) in cases {
            let shared = shared_with(&rules, PolicyConfig::default());
            let mut conn = Conn::s2s(&shared);
            let got = carried_out(conn.up.steps(&format!("{m1}\n{marked}{m2}")));
            assert_eq!(got, [write(&format!("{m1}\n")), last], "{name}");
            assert_eq!(conn.up.steer.stalled, name == "stall for ever", "{name}");
        }
    }

    #[test]
    fn close_blames_the_sender_of_the_element() {
        let rules = "[[rule]]\nname = 'bye'\nmatch = { element = 'message' }\n\
                     action = { kind = 'close', condition = 'policy-violation', text = 'no more' }\n";
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        for (lane, sender) in [
            (&mut conn.up, Side::Initiator),
            (&mut conn.down, Side::Receiver),
        ] {
            let (_, ops) = lane.plan("<message id='m'/>");
            match ops.as_slice() {
                [Op::End(SessionError::Rule {
                    rule,
                    side,
                    condition,
                    text,
                })] => {
                    assert_eq!(rule, "bye");
                    assert_eq!(*side, sender);
                    assert_eq!(*condition, "policy-violation");
                    assert_eq!(text.as_deref(), Some("no more"));
                }
                other => panic!("{sender}: {other:?}"),
            }
        }
    }

    #[test]
    fn cut_after_stanzas_ends_after_the_last_one_it_lets_through() {
        // As examples/rules/cut_after.toml: the first message starts the count, and is the first of the two.
        let rules = "[[rule]]\nname = 'cut'\nmatch = { direction = 'up', element = 'message', every = 1000000 }\n\
                     action = { kind = 'cut_after', stanzas = 2 }\n";
        let end = || {
            Step::End(String::from(
                "rule 'cut' cut the connection after its stanza limit",
            ))
        };
        let (m1, m2, m3) = (up("m1", "one"), up("m2", "two"), up("m3", "three"));

        // All in one batch: the third is not written.
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let got = conn.up.steps(&format!("{m1} {m2}\n{m3}"));
        assert_eq!(got, [write(&m1), write(&format!(" {m2}\n")), end()]);
        assert!(conn.up.steer.shaping.cut.is_none(), "used up");

        // One batch each: the second batch ends the connection after its stanza.
        let mut conn = Conn::s2s(&shared);
        assert_eq!(conn.up.steps(&m1), [write(&m1)]);
        assert!(conn.up.steer.shaping.cut.is_some());
        assert!(
            !conn.up.steer.shaping.is_plain(),
            "later writes go through the shaping"
        );
        // Whitespace is no stanza: it passes and leaves the count alone.
        assert_eq!(conn.up.steps(" "), [write(" ")]);
        assert_eq!(
            conn.up.steps(&format!("{m2} ")),
            [write(&format!("{m2} ")), end()]
        );

        // The other direction counts nothing.
        let mut conn = Conn::s2s(&shared);
        assert_eq!(conn.up.steps(&m1), [write(&m1)]);
        let down = "<message id='d'/><message id='e'/><message id='f'/>";
        assert_eq!(conn.down.steps(down), [write(down)]);
    }

    #[test]
    fn drop_and_inject_are_refused_once_stream_management_is_on() {
        let rules = "[[rule]]\nname = 'drop'\nmatch = { element = 'message', text = 'drop me' }\n\
                     action = { kind = 'drop' }\n\
                     [[rule]]\nname = 'inject'\nmatch = { element = 'message', text = 'add' }\n\
                     action = { kind = 'inject', xml = \"<message id='inj'/>\" }\n\
                     [[rule]]\nname = 'delay'\nmatch = { element = 'message', text = 'wait' }\n\
                     action = { kind = 'delay', ms = 50 }\n";
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let (dropped, added, waited) = (up("d", "drop me"), up("a", "add"), up("w", "wait"));
        // Before XEP-0198 is on, they act.
        assert_eq!(conn.up.steps(&dropped), []);
        assert_eq!(
            conn.up.steps(&added),
            [write("<message id='inj'/>"), write(&added)]
        );

        // The receiver enables it: the other direction shares the flag.
        let enabled = "<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true'/>";
        assert_eq!(conn.down.steps(enabled), [write(enabled)]);
        assert!(conn.handle.state().sm, "the entry says so");

        // Each element is written unchanged, in one write.
        for element in [&dropped, &added] {
            let (chunk, ops) = conn.up.plan(element);
            match ops.as_slice() {
                [Op::Write(bytes)] => assert_eq!(bytes, &chunk),
                other => panic!("{element}: {other:?}"),
            }
        }
        let batch = format!("{dropped}{added}");
        assert_eq!(conn.up.steps(&batch), [write(&dropped), write(&added)]);
        // A delay keeps the count: it still acts.
        assert_eq!(
            conn.up.steps(&waited),
            [Step::Pause(Duration::from_millis(50)), write(&waited)]
        );
        // No pings on such a stream.
        conn.up.steer.established.store(true, Ordering::Relaxed);
        assert!(conn.up.steer.ping(1).is_none());
    }

    #[test]
    fn resumed_turns_stream_management_on_too() {
        let rules = "[[rule]]\nname = 'drop'\nmatch = { element = 'message' }\naction = { kind = 'drop' }\n";
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let resumed = "<resumed xmlns='urn:xmpp:sm:3' previd='sm-1' h='3'/>";
        assert_eq!(conn.down.steps(resumed), [write(resumed)]);
        let message = up("m", "kept");
        assert_eq!(conn.up.steps(&message), [write(&message)]);
    }

    #[test]
    fn the_answer_to_a_ping_is_taken_out_of_the_batch() {
        let shared = shared_with("", PolicyConfig::default());
        // S2S: the ping leaves on a.test -> b.test (connection 1), b.test answers on its own connection 2.
        let ping = shared.pinger.ping(1, Some("a.test"), "b.test");
        let reverse_up = "<stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
            from='b.test' to='a.test' version='1.0'>";
        let reverse_down = "<stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
            id='s2' from='a.test' to='b.test' version='1.0'>";
        let mut reverse = Conn::new(
            &shared,
            2,
            ListenerKind::S2s,
            reverse_up,
            reverse_down,
            true,
        );
        let answer = format!(
            "<iq type='result' from='b.test' to='a.test' id='{}'/>",
            ping.id
        );
        let (m1, m2) = (
            "<message from='bob@b.test/r' to='alice@a.test' id='m1'/>",
            "<message from='bob@b.test/r' to='alice@a.test' id='m2'/>",
        );
        assert!(shared.pinger.any_outstanding());
        assert_eq!(
            reverse.up.steps(&format!("{m1}{answer} {m2}")),
            [write(m1), write(&format!(" {m2}"))]
        );
        assert!(!shared.pinger.any_outstanding(), "answered");
        // Once answered, the same element is someone else's: it passes.
        assert_eq!(reverse.up.steps(&answer), [write(&answer)]);

        // An element with the id of an outstanding ping but from another domain is not the answer.
        let ping = shared.pinger.ping(1, Some("a.test"), "b.test");
        let other = format!(
            "<iq type='result' from='c.test' to='a.test' id='{}'/>",
            ping.id
        );
        assert_eq!(reverse.up.steps(&other), [write(&other)]);
        assert!(shared.pinger.any_outstanding());
        // An error answer is an answer too.
        let error = format!(
            "<iq type='error' from='b.test' to='a.test' id='{}'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            ping.id
        );
        assert_eq!(reverse.up.steps(&format!("{error}{m1}")), [write(m1)]);
        assert!(!shared.pinger.any_outstanding());

        // C2S: the answer comes down the same connection, to the client's full JID, maybe without `from`.
        let c2s_up = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>";
        let c2s_down = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' id='c1' from='a.test' version='1.0'>";
        let mut client = Conn::new(&shared, 3, ListenerKind::C2s, c2s_up, c2s_down, true);
        for from in [" from='a.test'", ""] {
            let ping = shared.pinger.ping(3, None, "a.test");
            let answer = format!(
                "<iq type='result'{from} to='alice@a.test/r' id='{}'/>",
                ping.id
            );
            assert_eq!(client.down.steps(&answer), [], "{answer}");
            assert!(!shared.pinger.any_outstanding());
        }
    }

    #[test]
    fn the_stream_is_established_by_what_shows_it_ready() {
        let shared = shared_with("", PolicyConfig::default());
        // S2S: the receiver's valid dialback verdict.
        let mut conn = Conn::new(&shared, 1, ListenerKind::S2s, UP_HEADER, DOWN_HEADER, true);
        assert!(conn.up.steer.ping(1).is_none(), "not yet");
        conn.up
            .steps("<db:result from='a.test' to='b.test'>key</db:result>");
        assert!(
            conn.up.steer.ping(1).is_none(),
            "a request is not a verdict"
        );
        conn.down
            .steps("<db:result from='b.test' to='a.test' type='valid'/>");
        assert_eq!(conn.handle.state().dialback.as_deref(), Some("valid"));
        let ping = conn.up.steer.ping(1).expect("established");
        let xml = String::from_utf8_lossy(&ping.xml).into_owned();
        assert!(
            xml.starts_with(&format!(
                "<iq type='get' from='a.test' to='b.test' id='{}'",
                ping.id
            )),
            "{xml}"
        );
        // Pings go up only.
        assert!(conn.down.steer.ping(1).is_none());

        // C2S: the result of resource binding.
        let c2s_up = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>";
        let c2s_down = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' id='c1' from='a.test' version='1.0'>";
        let mut client = Conn::new(&shared, 3, ListenerKind::C2s, c2s_up, c2s_down, true);
        client.down.steps("<iq type='result' id='x'/>");
        assert!(client.up.steer.ping(3).is_none(), "an iq without a binding");
        client.down.steps(
            "<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <jid>alice@a.test/r</jid></bind></iq>",
        );
        let ping = client.up.steer.ping(3).expect("established");
        let xml = String::from_utf8_lossy(&ping.xml).into_owned();
        assert!(
            xml.starts_with(&format!("<iq type='get' to='a.test' id='{}'", ping.id)),
            "{xml}"
        );
    }

    #[test]
    fn the_registry_counts_each_batch_in_its_direction() {
        let shared = shared_with("", PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let batch = format!("{} {}\n<presence/>", up("m1", "one"), up("m2", "two"));
        conn.up.plan(&batch);
        assert_eq!(conn.counted(Direction::Up), [3, batch.len() as u64]);
        assert_eq!(conn.counted(Direction::Down), [0, 0]);
        // Whitespace is bytes but no stanza.
        conn.up.plan("\n");
        assert_eq!(conn.counted(Direction::Up), [3, batch.len() as u64 + 1]);
        let down = "<message id='d1'/><iq type='get' id='i1'/>";
        conn.down.plan(down);
        assert_eq!(conn.counted(Direction::Down), [2, down.len() as u64]);
        // What xmpptap writes on its own counts as one stanza.
        conn.down.steer.count_own(10);
        assert_eq!(conn.counted(Direction::Down), [3, down.len() as u64 + 10]);
        // As the control API shows them.
        let info = conn.handle.info();
        assert_eq!(info.counters.stanzas_up, 3);
        assert_eq!(info.counters.bytes_down, down.len() as u64 + 10);
    }

    #[test]
    fn the_policy_rate_delays_or_refuses_the_initiators_batch() {
        let batch = format!(
            "{}{}{}",
            up("m1", "one"),
            up("m2", "two"),
            up("m3", "three")
        );
        let down = "<message id='d1'/><message id='d2'/><message id='d3'/>";

        // Delay: a burst of 2, then one more stanza is half a second's debt.
        let shared = shared_with(
            "",
            PolicyConfig {
                rate_stanzas: Some(2),
                ..PolicyConfig::default()
            },
        );
        let mut conn = Conn::s2s(&shared);
        match steps(conn.up.plan(&batch).1).as_slice() {
            [Step::Pause(wait), Step::Write(all)] => {
                assert!(
                    (Duration::from_millis(400)..=Duration::from_millis(500)).contains(wait),
                    "{wait:?}"
                );
                assert_eq!(all, &batch);
            }
            other => panic!("{other:?}"),
        }
        // The rate is a.test's, the initiator's: the receiver's direction is not rated.
        assert_eq!(conn.down.steps(down), [write(down)]);

        // Refuse: nothing of the batch is written.
        let shared = shared_with(
            "",
            PolicyConfig {
                rate_stanzas: Some(2),
                rate_exceeded: Exceeded::Refuse,
                ..PolicyConfig::default()
            },
        );
        let mut conn = Conn::s2s(&shared);
        let two = format!("{}{}", up("m1", "one"), up("m2", "two"));
        assert_eq!(conn.up.steps(&two), [write(&two)]);
        let (_, ops) = conn.up.plan(&up("m3", "three"));
        match ops.as_slice() {
            [Op::End(SessionError::Policy { reason })] => assert_eq!(
                reason,
                "a.test sent more than 2 stanzas per second through xmpptap (--rate-stanzas)"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.down.steps(down), [write(down)]);
    }

    #[test]
    fn nothing_is_acted_upon_after_the_direction_ended() {
        let rules = "[[rule]]\nname = 'close'\nmatch = { element = 'message', text = 'close' }\n\
                     action = { kind = 'close', condition = 'policy-violation' }\n\
                     [[rule]]\nname = 'later'\nmatch = { element = 'message', text = 'later' }\n\
                     action = { kind = 'drop' }\n";
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let got = conn
            .up
            .steps(&format!("{}{}", up("c", "close"), up("l", "later")));
        let metrics = shared.metrics.render(&conn.registry, 0);
        assert!(
            !metrics.contains("rule=\"later\""),
            "rule 'later' counted an action on an element after the close:\n{metrics}"
        );
        assert!(
            matches!(got.last(), Some(Step::End(_))),
            "ops after the end: {got:?}"
        );
    }

    #[test]
    fn a_batch_cut_short_is_still_counted() {
        let rules = "[[rule]]\nname = 'cut'\nmatch = { direction = 'up', element = 'message', every = 1000000 }\n\
                     action = { kind = 'cut_after', stanzas = 2 }\n";
        let shared = shared_with(rules, PolicyConfig::default());
        let mut conn = Conn::s2s(&shared);
        let (m1, m2, m3) = (up("m1", "one"), up("m2", "two"), up("m3", "three"));
        conn.up.plan(&format!("{m1}{m2}{m3}"));
        assert_eq!(
            conn.counted(Direction::Up),
            [2, (m1.len() + m2.len()) as u64],
            "the two stanzas written before the cut"
        );
    }
}
