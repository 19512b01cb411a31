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
use crate::rules::{Action, Decision, InjectAt, RuleSet, RuleState, SharedRules, Subject};
use crate::side::Direction;
use crate::tap::event::Xml;
use crate::tap::EventKind;
use crate::xml::element::{ElementHead, StreamHeader, NS_DIALBACK, NS_SM};
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
                return self.cut(ops);
            }
            stanzas += 1;
            if let Some(cut) = &mut self.shaping.cut {
                if let Some(left) = &mut cut.stanzas {
                    *left = left.saturating_sub(1);
                }
            }
            let tag = &chunk[offset + frame.head.start..offset + frame.head.end];
            let ordinary = is_ordinary(tag);
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
            if !ordinary {
                self.learn(&head, &bytes);
            } else if !self.established.load(Ordering::Relaxed)
                && ping::shows_established(self.dir, &head, &bytes, self.listener)
            {
                self.established.store(true, Ordering::Relaxed);
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
            let Some(decision) = decision else { continue };
            flush(&mut ops, chunk, &mut copied, offset);
            copied = end;
            self.act(&decision, &rules, &stream, bytes, obs, &mut ops);
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
        _rules: &RuleSet,
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
        let mut detail = None;
        match action {
            Action::Drop => {}
            Action::Delay { ms, jitter_ms } => {
                let wait = delay(*ms, *jitter_ms);
                detail = Some(format!("{} ms", wait.as_millis()));
                ops.push(Op::Pause(wait));
                ops.push(Op::Write(bytes.clone()));
            }
            Action::Rewrite(spec) => match crate::rules::edit::rewrite(&bytes, stream, spec) {
                Ok(Some(rewritten)) => {
                    let rewritten = Bytes::from(rewritten);
                    detail = Some(String::from_utf8_lossy(&rewritten).into_owned());
                    ops.push(Op::Write(rewritten));
                }
                Ok(None) => {
                    detail = Some(String::from("nothing to change"));
                    ops.push(Op::Write(bytes.clone()));
                }
                Err(e) => {
                    detail = Some(format!("not rewritten: {e}"));
                    ops.push(Op::Write(bytes.clone()));
                }
            },
            Action::DialbackInvalid => match crate::rules::edit::dialback_invalid(&bytes, stream) {
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
                let injected = Bytes::from(crate::rules::edit::injected(xml, &bytes, stream));
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
                let condition = crate::xml::element::stream_condition(condition)
                    .unwrap_or("undefined-condition");
                ops.push(Op::End(SessionError::Rule {
                    rule: rule.to_owned(),
                    side: self.dir.sender(),
                    condition,
                    text: text.clone(),
                }));
            }
            Action::Stall { ms: Some(ms) } => {
                ops.push(Op::Pause(Duration::from_millis(*ms)));
                ops.push(Op::Write(bytes.clone()));
            }
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
        }
        obs.own(rule_event(rule, action, detail, None, &bytes));
    }

    /// What a stream-level element tells the connection's entry and the metrics.
    fn learn(&self, head: &ElementHead, bytes: &Bytes) {
        match (head.ns.as_deref(), head.local.as_str()) {
            (Some(NS_DIALBACK), "result") if self.dir == Direction::Down => {
                if let Some(result) = head.kind.as_deref() {
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
        if !self.established.load(Ordering::Relaxed)
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

fn rule_event(
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

/// Whether a start tag is an ordinary stanza (`message`, `presence`, `iq`, unprefixed), by its first bytes:
/// those need no look on the way unless a rule or a ping asks for one.
fn is_ordinary(tag: &[u8]) -> bool {
    let name_end = |len: usize| {
        tag.get(len)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
    };
    (tag.starts_with(b"<message") && name_end(8))
        || (tag.starts_with(b"<presence") && name_end(9))
        || (tag.starts_with(b"<iq") && name_end(3))
}

/// Whether an ordinary stanza may be the answer to a ping: an iq.
fn ordinary_iq(tag: &[u8]) -> bool {
    tag.starts_with(b"<iq")
}

#[cfg(test)]
mod tests {
    use super::*;

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
                is_ordinary(tag),
                ordinary,
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
    }
}
