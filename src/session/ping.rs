//! xmpptap's own XEP-0199 pings: building them, recognising their answers, and the set still waiting for one.
//!
//! This module does no I/O. The relay decides when to ping, writes the [`Ping`] this module builds, offers
//! every top-level element it reads to [`Pinger::answer`] and reports what comes back (an [`Answer`], or a
//! timeout from [`Pinger::expire`]). One [`Pinger`] serves the whole process (`Arc<Pinger>` in the session
//! context), because an answer need not come back on the connection its ping left on.
//!
//! # Ids
//!
//! A ping's id is `xmpptap-ping-{token}-{n}`: `token` is a random 64-bit number drawn once per process (hex),
//! `n` a process-wide counter. Ids therefore never repeat within a process, do not collide with the ids the
//! peers choose, and differ from those of another xmpptap in the same path (proxies in a chain each swallow
//! only the answers to their own pings). The id is made of `[0-9a-z-]` only, so it appears verbatim in the
//! answer's start tag: [`Pinger::answer`] first searches the tag's bytes for this process's prefix and parses
//! nothing when it is absent, and the relay skips even that while [`Pinger::any_outstanding`] (one atomic
//! load) says no ping waits.
//!
//! # One-way S2S streams
//!
//! Without XEP-0288 an S2S stream carries stanzas one way only: a ping xmpptap writes on A->B (from A to B)
//! is answered by B on B's own connection B->A, a different intercepted connection with a different relay. So
//! the outstanding set is keyed by id alone, across connections, and an answer matches when its id is one
//! this process issued and still waits for and its `from`/`to` domains are the ping's `to`/`from` domains
//! (the domain pair, PROTOCOL.md 10 and 11). An element with a matching id but another pair is not ours and
//! is forwarded. On C2S the answer comes back on the same connection, from the server domain (or with no
//! `from`) to the client's full JID, which xmpptap does not know: the server stamped it on the ping, whose
//! `from` xmpptap left out.
//!
//! # Answers are swallowed
//!
//! The peer an answer is addressed to never sent the ping, so the relay does not forward it: an `iq` result
//! for an id a server never issued is at best ignored and at worst answered with an error or logged as a
//! protocol oddity on a production server. The transcript records the answer as xmpptap's, with its round
//! trip time; an error answer (`service-unavailable` from a server without XEP-0199, say) still shows the
//! peer alive, and its condition is reported.
//!
//! # Not on stream management streams
//!
//! The relay sends no ping on a stream where XEP-0198 stream management is enabled. Both ends count the
//! stanzas they handle: the injected `iq` would count at the receiving peer but not at the sender, and the
//! swallowed answer would count at its sender but never reach the peer it was addressed to. The `h` values
//! in `<a/>`, `<resume/>` and `<resumed/>` would then be off by one per ping, and a peer would resend stanzas
//! or close the stream with `handled-count-too-high` (PROTOCOL.md 8). xmpptap does not rewrite `h`.
//!
//! # When a connection ends
//!
//! An S2S answer may still be on its way on the reverse connection after the ping's own connection closed.
//! [`Pinger::closed`] therefore keeps that connection's pings until they are `timeout` old, so a late answer
//! is still recognised and swallowed (and reported under the closed connection's id); they are then dropped
//! silently by the next call that looks at the set, since no relay is left to report them as timed out.
//! [`Pinger::forget`] drops a connection's pings at once (for C2S, whose answers cannot arrive elsewhere).
//!
//! It does not own the ping schedule, the writing or the reporting: those are the relay's.

use crate::config::ListenerKind;
use crate::side::Direction;
use crate::xml::element::{
    ElementHead, StreamHeader, NS_CLIENT, NS_DIALBACK, NS_SERVER, NS_STANZA_ERRORS,
};
use bytes::Bytes;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The namespace of the XEP-0199 `<ping/>` child.
pub const NS_PING: &str = "urn:xmpp:ping";

/// Resource binding (RFC 6120 7): its `<bind/>` in an `iq` result marks a C2S session as ready for stanzas.
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// What every id this module issues starts with; the process token and the counter follow.
const ID_PREFIX: &str = "xmpptap-ping-";

/// The condition reported for an error answer that names none (RFC 6120 8.3.3.21's catch-all).
const NO_CONDITION: &str = "undefined-condition";

/// The process-wide record of the pings xmpptap sent and has not yet matched with an answer; shared by all
/// sessions (`Arc<Pinger>`). See the [module documentation](self) for the design.
#[derive(Debug)]
pub struct Pinger {
    /// `xmpptap-ping-{token:x}-`: the prefix of this process's ids, searched for in start tags.
    prefix: String,
    /// The `n` of the next id.
    next: AtomicU64,
    /// The outstanding pings.
    state: Mutex<State>,
    /// How many pings are outstanding: a copy of `state.pending.len()`, stored under the lock after every
    /// change, so that [`Pinger::any_outstanding`] needs no lock.
    count: AtomicUsize,
}

/// The outstanding set behind [`Pinger`]'s lock.
#[derive(Debug, Default)]
struct State {
    /// By id.
    pending: HashMap<String, Entry>,
    /// The earliest [`Entry::until`] of any entry, if any has one: when there is something to drop.
    next_drop: Option<Instant>,
}

/// One outstanding ping.
#[derive(Debug)]
struct Entry {
    ping: Outstanding,
    /// Set once its connection ended ([`Pinger::closed`]): when to drop it, answered or not.
    until: Option<Instant>,
}

/// A ping waiting for its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// The connection it was written on.
    pub conn: u64,
    /// Its `from`; empty for a C2S ping, which has none.
    pub from: String,
    /// Its `to`.
    pub to: String,
    /// When it was built (just before the relay wrote it).
    pub sent: Instant,
}

impl Outstanding {
    /// `from->to`, the domain pair the transcript keys it by (`->to` for a C2S ping).
    pub fn pair(&self) -> String {
        format!("{}->{}", self.from, self.to)
    }
}

/// A ping for the relay to write.
#[derive(Debug)]
pub struct Ping {
    /// Its id, as registered with the [`Pinger`].
    pub id: String,
    /// The whole `<iq>` element.
    pub xml: Bytes,
}

/// An element recognised as the answer to one of xmpptap's pings.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The ping's id.
    pub id: String,
    /// The connection the ping was written on (an S2S answer arrives on another one).
    pub conn: u64,
    /// `from->to` of the ping. For a C2S ping, whose `from` the server stamped, the `from` is the answer's
    /// `to` (the client's full JID), or empty if the answer has none.
    pub pair: String,
    /// From building the ping to recognising the answer.
    pub rtt: Duration,
    /// For an `iq` of type `error`: its condition (e.g. `service-unavailable`; `undefined-condition` if it
    /// names none). `None` for a result.
    pub error: Option<String>,
}

impl Default for Pinger {
    fn default() -> Self {
        Self::new()
    }
}

impl Pinger {
    /// A pinger with a fresh random process token and nothing outstanding.
    pub fn new() -> Self {
        Self::with_token(rand::random::<u64>())
    }

    /// A pinger whose ids carry `token`.
    fn with_token(token: u64) -> Self {
        Self {
            prefix: format!("{ID_PREFIX}{token:x}-"),
            next: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            count: AtomicUsize::new(0),
        }
    }

    /// A ping from `from` to `to`, to be written now on connection `conn`; registered as outstanding.
    ///
    /// S2S: `<iq type='get' from='{from}' to='{to}' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>`. C2S
    /// (`from` is `None`): no `from` attribute; the server stamps the client's full JID. Attribute values are
    /// XML-escaped.
    pub fn ping(&self, conn: u64, from: Option<&str>, to: &str) -> Ping {
        self.ping_at(conn, from, to, Instant::now())
    }

    /// [`Pinger::ping`] at `now`.
    fn ping_at(&self, conn: u64, from: Option<&str>, to: &str, now: Instant) -> Ping {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", self.prefix);
        let mut xml = String::with_capacity(128 + id.len());
        xml.push_str("<iq type='get'");
        if let Some(from) = from {
            xml.push_str(" from='");
            xml.push_str(&escape(from));
            xml.push('\'');
        }
        xml.push_str(" to='");
        xml.push_str(&escape(to));
        xml.push_str("' id='");
        // Made of [0-9a-z-] only: nothing to escape.
        xml.push_str(&id);
        xml.push_str("'><ping xmlns='");
        xml.push_str(NS_PING);
        xml.push_str("'/></iq>");

        let entry = Entry {
            ping: Outstanding {
                conn,
                from: from.unwrap_or_default().to_owned(),
                to: to.to_owned(),
                sent: now,
            },
            until: None,
        };
        let mut state = self.lock();
        state.drop_due(now);
        state.pending.insert(id.clone(), entry);
        self.publish(&state);
        drop(state);
        Ping {
            id,
            xml: Bytes::from(xml),
        }
    }

    /// Whether any ping is outstanding: one atomic load, for the relay to call on every element.
    pub fn any_outstanding(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// If the element `bytes` (one complete top-level element; `tag` its start tag, as the framer's `head`
    /// range gives it, or the whole element) read on a stream with header `stream` answers an outstanding
    /// ping, removes that ping and returns the [`Answer`]; the relay then does not forward the element.
    ///
    /// An answer is an `iq` (in `jabber:server` or `jabber:client`) of type `result` or `error`, with an id
    /// this process issued and still waits for, from the ping's `to` domain to its `from` domain (bare domains,
    /// compared without regard to ASCII case). For a C2S ping, which has no `from`, the answer's `from` is the
    /// ping's `to` domain or absent, and its `to` (the client's full JID) is not checked.
    ///
    /// Anything else is `None`, and cheaply: unless the start tag's bytes contain this process's id prefix,
    /// nothing is parsed or locked.
    pub fn answer(&self, tag: &[u8], bytes: &[u8], stream: &StreamHeader) -> Option<Answer> {
        self.answer_at(tag, bytes, stream, Instant::now())
    }

    /// [`Pinger::answer`] at `now`.
    fn answer_at(
        &self,
        tag: &[u8],
        bytes: &[u8],
        stream: &StreamHeader,
        now: Instant,
    ) -> Option<Answer> {
        if !self.any_outstanding() || !contains(tag, self.prefix.as_bytes()) {
            return None;
        }
        let head = ElementHead::parse(tag, stream).ok()?;
        if head.local != "iq" || !is_content_ns(head.ns.as_deref()) {
            return None;
        }
        let error = match head.kind.as_deref() {
            Some("result") => None,
            Some("error") => {
                Some(error_condition(bytes).unwrap_or_else(|| NO_CONDITION.to_owned()))
            }
            _ => return None,
        };
        let id = head.id.as_deref()?;
        if !id.starts_with(&self.prefix) {
            return None;
        }

        let mut state = self.lock();
        state.drop_due(now);
        let entry = state.pending.get(id)?;
        if !answers(&entry.ping, &head) {
            return None;
        }
        let (id, entry) = state.pending.remove_entry(id)?;
        self.publish(&state);
        drop(state);

        let ping = entry.ping;
        let pair = if ping.from.is_empty() {
            format!("{}->{}", head.to.as_deref().unwrap_or_default(), ping.to)
        } else {
            ping.pair()
        };
        Some(Answer {
            id,
            conn: ping.conn,
            pair,
            rtt: now.saturating_duration_since(ping.sent),
            error,
        })
    }

    /// The outstanding pings of connection `conn` that are at least `timeout` old, removed from the set and
    /// returned with their ids (oldest first) for the relay to report as timed out.
    pub fn expire(&self, conn: u64, timeout: Duration) -> Vec<(String, Outstanding)> {
        self.expire_at(conn, timeout, Instant::now())
    }

    /// [`Pinger::expire`] at `now`.
    fn expire_at(&self, conn: u64, timeout: Duration, now: Instant) -> Vec<(String, Outstanding)> {
        let mut state = self.lock();
        state.drop_due(now);
        let due: Vec<String> = state
            .pending
            .iter()
            .filter(|(_, e)| {
                e.ping.conn == conn && now.saturating_duration_since(e.ping.sent) >= timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut expired: Vec<(String, Outstanding)> = due
            .into_iter()
            .filter_map(|id| state.pending.remove_entry(&id))
            .map(|(id, e)| (id, e.ping))
            .collect();
        self.publish(&state);
        drop(state);
        expired.sort_by_key(|(_, ping)| ping.sent);
        expired
    }

    /// Connection `conn` ended: its outstanding pings stay until they are `timeout` old, so that an answer
    /// arriving on the reverse S2S connection is still recognised and swallowed, and are then dropped
    /// silently (nobody is left to report them). Returns how many it had.
    pub fn closed(&self, conn: u64, timeout: Duration) -> usize {
        self.closed_at(conn, timeout, Instant::now())
    }

    /// [`Pinger::closed`] at `now`.
    fn closed_at(&self, conn: u64, timeout: Duration, now: Instant) -> usize {
        let mut state = self.lock();
        let mut kept = 0;
        let mut next_drop = state.next_drop;
        for entry in state.pending.values_mut() {
            if entry.ping.conn == conn && entry.until.is_none() {
                let until = entry.ping.sent + timeout;
                entry.until = Some(until);
                next_drop = Some(next_drop.map_or(until, |t| t.min(until)));
                kept += 1;
            }
        }
        state.next_drop = next_drop;
        state.drop_due(now);
        self.publish(&state);
        kept
    }

    /// Forgets every outstanding ping of connection `conn` at once; an answer arriving later is forwarded like
    /// any stanza. Returns how many there were.
    pub fn forget(&self, conn: u64) -> usize {
        let mut state = self.lock();
        let before = state.pending.len();
        state.pending.retain(|_, e| e.ping.conn != conn);
        let forgotten = before - state.pending.len();
        state.reschedule();
        self.publish(&state);
        forgotten
    }

    /// The outstanding set. A panic elsewhere while holding the lock cannot leave the map half-changed (every
    /// change is one `HashMap` call), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes [`Pinger::any_outstanding`] reflect `state`.
    fn publish(&self, state: &State) {
        self.count.store(state.pending.len(), Ordering::Release);
    }
}

impl State {
    /// Drops the entries of ended connections whose time is up.
    fn drop_due(&mut self, now: Instant) {
        if self.next_drop.is_some_and(|t| t <= now) {
            self.pending.retain(|_, e| e.until.is_none_or(|t| t > now));
            self.reschedule();
        }
    }

    /// Recomputes [`State::next_drop`].
    fn reschedule(&mut self) {
        self.next_drop = self.pending.values().filter_map(|e| e.until).min();
    }
}

/// Whether `head` (an `iq` with our id) comes from where `ping` went and goes to where it came from.
fn answers(ping: &Outstanding, head: &ElementHead) -> bool {
    let from_ok = match head.from.as_deref() {
        Some(from) => same_domain(from, &ping.to),
        // A C2S server may answer without `from`: it means the server itself.
        None => ping.from.is_empty(),
    };
    let to_ok = match (ping.from.is_empty(), head.to.as_deref()) {
        // C2S: the answer goes to the client's full JID, which only the server knows.
        (true, _) => true,
        (false, Some(to)) => same_domain(to, &ping.from),
        (false, None) => false,
    };
    from_ok && to_ok
}

/// Whether two JIDs have the same domain part.
fn same_domain(a: &str, b: &str) -> bool {
    domain(a).eq_ignore_ascii_case(domain(b))
}

/// The domain part of a JID (RFC 7622 3.2): without the resource (from the first `/`), the localpart (up to
/// the `@`) and a trailing dot.
fn domain(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(bare, _)| bare);
    let domain = bare.split_once('@').map_or(bare, |(_, domain)| domain);
    domain.strip_suffix('.').unwrap_or(domain)
}

/// Whether a namespace is a stanza namespace.
fn is_content_ns(ns: Option<&str>) -> bool {
    matches!(ns, Some(NS_SERVER | NS_CLIENT))
}

/// Whether `needle` occurs in `haystack`. Start tags are short, so a scan for the first byte suffices.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|&b| b == first) {
        let start = at + i + 1;
        if haystack[start..].starts_with(rest) {
            return true;
        }
        at = start;
    }
    false
}

/// The stanza error condition inside an `iq`'s `<error>`: the local name of its first child in
/// `urn:ietf:params:xml:ns:xmpp-stanzas` other than `<text>` (RFC 6120 8.3.2). The condition declares its
/// namespace itself, so the stream header's bindings are not needed.
fn error_condition(bytes: &[u8]) -> Option<String> {
    let mut reader = NsReader::from_reader(bytes);
    // The iq is depth 1, `<error>` depth 2, its condition depth 3.
    let mut depth = 0usize;
    let mut in_error = false;
    loop {
        let (ns, event) = reader.read_resolved_event().ok()?;
        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                let local = tag.local_name().into_inner();
                if depth == 1 && local == "error" {
                    in_error = matches!(event, Event::Start(_));
                } else if depth == 2 && in_error && local != "text" {
                    if let ResolveResult::Bound(ns) = ns {
                        if ns.0 == NS_STANZA_ERRORS {
                            return Some(local.to_owned());
                        }
                    }
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    in_error = false;
                }
                if depth == 0 {
                    return None;
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Whether `head`, a top-level element seen travelling `dir` on a stream of kind `listener`, shows that the
/// stream is ready to carry stanzas (and so xmpptap's pings):
///
/// - S2S, down: a `<db:result type='valid'>` (XEP-0220, in `jabber:server:dialback`): the receiver accepted
///   the initiator's domain.
/// - S2S, up: any `message`, `presence` or `iq` in `jabber:server` or `jabber:client`: the initiator only
///   sends stanzas once authenticated (by dialback or SASL).
/// - C2S, down: an `iq` of type `result` carrying a resource binding (`bytes`, the whole element, contains
///   the `urn:ietf:params:xml:ns:xmpp-bind` namespace).
///
/// Everything else is `false`.
pub fn shows_established(
    dir: Direction,
    head: &ElementHead,
    bytes: &[u8],
    listener: ListenerKind,
) -> bool {
    match (listener, dir) {
        (ListenerKind::S2s, Direction::Down) => {
            head.is(NS_DIALBACK, "result") && head.kind.as_deref() == Some("valid")
        }
        (ListenerKind::S2s, Direction::Up) => {
            matches!(head.local.as_str(), "message" | "presence" | "iq")
                && is_content_ns(head.ns.as_deref())
        }
        (ListenerKind::C2s, Direction::Down) => {
            head.local == "iq"
                && is_content_ns(head.ns.as_deref())
                && head.kind.as_deref() == Some("result")
                && contains(bytes, NS_BIND.as_bytes())
        }
        (ListenerKind::C2s, Direction::Up) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::element::first_child;

    const S2S_HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='b.example' to='a.example' id='s1'>";
    const C2S_HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='a.example' id='c1'>";

    fn s2s() -> StreamHeader {
        StreamHeader::parse(S2S_HEADER).expect("s2s header")
    }

    fn c2s() -> StreamHeader {
        StreamHeader::parse(C2S_HEADER).expect("c2s header")
    }

    /// The start tag of a fixture (no `>` inside attribute values: they are escaped).
    fn tag(bytes: &[u8]) -> &[u8] {
        let end = bytes.iter().position(|&b| b == b'>').expect("a start tag");
        &bytes[..=end]
    }

    fn answer(pinger: &Pinger, bytes: &str, stream: &StreamHeader) -> Option<Answer> {
        pinger.answer(tag(bytes.as_bytes()), bytes.as_bytes(), stream)
    }

    /// [`answer`] at `now`. (Tokio's paused clock needs its `test-util` feature, which the crate does not
    /// enable; the clock is passed in instead.)
    fn answer_at(
        pinger: &Pinger,
        bytes: &str,
        stream: &StreamHeader,
        now: Instant,
    ) -> Option<Answer> {
        pinger.answer_at(tag(bytes.as_bytes()), bytes.as_bytes(), stream, now)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn result(from: &str, to: &str, id: &str) -> String {
        format!("<iq type='result' from='{from}' to='{to}' id='{id}'/>")
    }

    #[test]
    fn ping_is_an_iq_get_with_a_ping_child() {
        use crate::xml::framer::{FrameKind, Framer, Limits};
        let pinger = Pinger::new();
        let ping = pinger.ping(7, Some("a.example"), "b.example");
        assert!(ping.id.starts_with(ID_PREFIX));
        let head = ElementHead::parse(&ping.xml, &s2s()).expect("parses");
        assert!(head.is(NS_SERVER, "iq"));
        assert_eq!(head.kind.as_deref(), Some("get"));
        assert_eq!(head.from.as_deref(), Some("a.example"));
        assert_eq!(head.to.as_deref(), Some("b.example"));
        assert_eq!(head.id.as_deref(), Some(ping.id.as_str()));
        assert_eq!(first_child(&ping.xml).as_deref(), Some("ping"));
        assert!(contains(&ping.xml, b"<ping xmlns='urn:xmpp:ping'/>"));

        // It is one whole stanza to xmpptap's own framer.
        let mut bytes = S2S_HEADER.to_vec();
        bytes.extend_from_slice(&ping.xml);
        let mut framer = Framer::new(Limits::default());
        let mut buf = bytes.as_slice();
        let mut kinds = Vec::new();
        while let Some(frame) = framer.next_frame(buf).expect("frames") {
            kinds.push(frame.kind);
            buf = &buf[frame.len..];
        }
        assert!(buf.is_empty());
        assert_eq!(kinds, [FrameKind::StreamOpen, FrameKind::Stanza]);

        // C2S: no from.
        let ping = pinger.ping(8, None, "a.example");
        let head = ElementHead::parse(&ping.xml, &c2s()).expect("parses");
        assert!(head.is(NS_CLIENT, "iq"));
        assert_eq!((head.from, head.to.as_deref()), (None, Some("a.example")));
        assert_eq!(first_child(&ping.xml).as_deref(), Some("ping"));
    }

    #[test]
    fn ids_are_unique_and_carry_the_process_token() {
        let pinger = Pinger::with_token(0xabc);
        let a = pinger.ping(1, Some("a.example"), "b.example");
        let b = pinger.ping(1, Some("a.example"), "b.example");
        assert_eq!(a.id, "xmpptap-ping-abc-1");
        assert_eq!(b.id, "xmpptap-ping-abc-2");
        // Another process (or another xmpptap in the path) never matches ours.
        let other = Pinger::with_token(0xdef);
        assert!(answer(&other, &result("b.example", "a.example", &a.id), &s2s()).is_none());
        assert!(answer(&pinger, &result("b.example", "a.example", &a.id), &s2s()).is_some());
    }

    #[test]
    fn answer_on_the_reverse_connection() {
        let pinger = Pinger::new();
        // Sent on connection 1 (a.example -> b.example) ...
        let t0 = Instant::now();
        let ping = pinger.ping_at(1, Some("a.example"), "b.example", t0);
        // ... answered on b.example's own connection, with a resource-less full domain and other case.
        let reply = format!(
            "<iq from='B.example' type='result' to='a.example' id='{}'/>",
            ping.id
        );
        let got = answer_at(&pinger, &reply, &s2s(), t0 + ms(25)).expect("recognised");
        assert_eq!(
            got,
            Answer {
                id: ping.id.clone(),
                conn: 1,
                pair: "a.example->b.example".to_owned(),
                rtt: ms(25),
                error: None,
            }
        );
        assert!(!pinger.any_outstanding());
    }

    #[test]
    fn error_answer_gives_the_condition() {
        let pinger = Pinger::new();
        let t0 = Instant::now();
        let ping = pinger.ping_at(3, Some("a.example"), "b.example", t0);
        let reply = format!(
            "<iq type='error' from='b.example' to='a.example' id='{}'>\
             <ping xmlns='urn:xmpp:ping'/>\
             <error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            ping.id
        );
        let got = answer_at(&pinger, &reply, &s2s(), t0 + ms(4)).expect("recognised");
        assert_eq!(got.error.as_deref(), Some("service-unavailable"));
        assert_eq!(got.rtt, ms(4));

        // An error without a defined condition still answers the ping.
        let ping = pinger.ping(3, Some("a.example"), "b.example");
        let reply = format!(
            "<iq type='error' from='b.example' to='a.example' id='{}'><error type='cancel'/></iq>",
            ping.id
        );
        let got = answer(&pinger, &reply, &s2s()).expect("recognised");
        assert_eq!(got.error.as_deref(), Some(NO_CONDITION));
    }

    #[test]
    fn other_elements_are_not_answers() {
        let pinger = Pinger::with_token(0x10);
        let ping = pinger.ping(1, Some("a.example"), "b.example");
        let stream = s2s();
        let not = [
            // An id we never issued, with our prefix.
            result("b.example", "a.example", "xmpptap-ping-10-99"),
            // Someone else's id.
            result("b.example", "a.example", "ping1"),
            // Wrong pair: from the wrong domain, to the wrong domain, swapped, or missing.
            result("c.example", "a.example", &ping.id),
            result("b.example", "c.example", &ping.id),
            result("a.example", "b.example", &ping.id),
            format!("<iq type='result' from='b.example' id='{}'/>", ping.id),
            format!("<iq type='result' to='a.example' id='{}'/>", ping.id),
            // Not a result or error.
            format!(
                "<iq type='get' from='b.example' to='a.example' id='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                ping.id
            ),
            format!("<iq from='b.example' to='a.example' id='{}'/>", ping.id),
            // Not an iq, or not in a stanza namespace.
            format!(
                "<message type='result' from='b.example' to='a.example' id='{}'/>",
                ping.id
            ),
            format!(
                "<iq xmlns='urn:example' type='result' from='b.example' to='a.example' id='{}'/>",
                ping.id
            ),
        ];
        for bytes in &not {
            assert_eq!(answer(&pinger, bytes, &stream), None, "{bytes}");
        }
        assert!(pinger.any_outstanding());
        assert!(answer(
            &pinger,
            &result("b.example", "a.example", &ping.id),
            &stream
        )
        .is_some());
    }

    #[test]
    fn an_answer_matches_once() {
        let pinger = Pinger::new();
        let ping = pinger.ping(1, Some("a.example"), "b.example");
        let reply = result("b.example", "a.example", &ping.id);
        assert!(answer(&pinger, &reply, &s2s()).is_some());
        assert!(answer(&pinger, &reply, &s2s()).is_none());
    }

    #[test]
    fn any_outstanding_toggles() {
        let pinger = Pinger::default();
        assert!(!pinger.any_outstanding());
        let a = pinger.ping(1, Some("a.example"), "b.example");
        let b = pinger.ping(2, Some("b.example"), "a.example");
        assert!(pinger.any_outstanding());
        assert!(answer(&pinger, &result("b.example", "a.example", &a.id), &s2s()).is_some());
        assert!(pinger.any_outstanding());
        assert!(answer(&pinger, &result("a.example", "b.example", &b.id), &s2s()).is_some());
        assert!(!pinger.any_outstanding());
    }

    #[test]
    fn expire_after_timeout() {
        let pinger = Pinger::new();
        let timeout = Duration::from_secs(30);
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let old = pinger.ping_at(1, Some("a.example"), "b.example", t0);
        let other_conn = pinger.ping_at(2, Some("a.example"), "c.example", t0);
        let young = pinger.ping_at(1, Some("a.example"), "b.example", secs(10));
        assert!(pinger.expire_at(1, timeout, secs(10)).is_empty());
        assert!(pinger.expire_at(1, timeout, secs(30) - ms(1)).is_empty());

        let expired = pinger.expire_at(1, timeout, secs(30));
        assert_eq!(expired.len(), 1);
        let (id, ping) = &expired[0];
        assert_eq!(id, &old.id);
        assert_eq!(
            (ping.conn, ping.pair()),
            (1, "a.example->b.example".to_owned())
        );
        // Gone: a late answer is forwarded.
        let late = result("b.example", "a.example", &old.id);
        assert!(answer_at(&pinger, &late, &s2s(), secs(31)).is_none());

        let expired = pinger.expire_at(1, timeout, secs(40));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, young.id);
        // Connection 2's ping is its own relay's business.
        assert!(pinger.any_outstanding());
        assert_eq!(pinger.expire_at(2, timeout, secs(40))[0].0, other_conn.id);
        assert!(!pinger.any_outstanding());
    }

    #[test]
    fn c2s_answer_to_the_clients_full_jid() {
        let pinger = Pinger::new();
        let stream = c2s();
        let t0 = Instant::now();
        let ping = pinger.ping_at(5, None, "a.example", t0);
        // From another domain: not ours.
        let wrong = result("b.example", "juliet@a.example/balcony", &ping.id);
        assert!(answer(&pinger, &wrong, &stream).is_none());
        let reply = result("a.example", "juliet@a.example/balcony", &ping.id);
        let got = answer_at(&pinger, &reply, &stream, t0 + ms(3)).expect("recognised");
        assert_eq!(got.pair, "juliet@a.example/balcony->a.example");
        assert_eq!((got.conn, got.rtt), (5, ms(3)));

        // A server answering without `from`.
        let ping = pinger.ping(5, None, "a.example");
        let reply = format!(
            "<iq type='result' to='juliet@a.example/balcony' id='{}'/>",
            ping.id
        );
        assert!(answer(&pinger, &reply, &stream).is_some());
    }

    #[test]
    fn odd_domains_are_escaped() {
        let pinger = Pinger::new();
        let from = "a'<&>\".example";
        let to = "b&apos;.example";
        let ping = pinger.ping(1, Some(from), to);
        let text = std::str::from_utf8(&ping.xml).expect("utf-8");
        assert!(!text.contains("a'<"), "{text}");
        let head = ElementHead::parse(&ping.xml, &s2s()).expect("parses");
        assert_eq!(head.from.as_deref(), Some(from));
        assert_eq!(head.to.as_deref(), Some(to));
        assert_eq!(first_child(&ping.xml).as_deref(), Some("ping"));
        // The answer carries them escaped (perhaps otherwise) and still matches.
        let reply = format!(
            "<iq type='result' from=\"b&amp;apos;.example\" to='a&apos;&lt;&amp;&gt;&quot;.example' id='{}'/>",
            ping.id
        );
        let got = answer(&pinger, &reply, &s2s()).expect("recognised");
        assert_eq!(got.pair, format!("{from}->{to}"));
    }

    #[test]
    fn closed_connections_linger_forgotten_ones_do_not() {
        let pinger = Pinger::new();
        let timeout = Duration::from_secs(30);
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let a = pinger.ping_at(1, Some("a.example"), "b.example", t0);
        let b = pinger.ping_at(1, Some("a.example"), "b.example", t0);
        let c = pinger.ping_at(2, Some("a.example"), "c.example", t0);
        assert_eq!(pinger.closed_at(1, timeout, secs(5)), 2);
        // An answer on the reverse connection after connection 1 closed is still swallowed.
        let reply = result("b.example", "a.example", &a.id);
        let got = answer_at(&pinger, &reply, &s2s(), secs(5));
        assert_eq!(
            got.map(|a| (a.conn, a.rtt)),
            Some((1, Duration::from_secs(5)))
        );
        // Once `timeout` old, the other is dropped by the next look at the set, unreported.
        let reply = result("b.example", "a.example", &b.id);
        assert!(answer_at(&pinger, &reply, &s2s(), secs(30)).is_none());
        assert!(pinger.expire_at(1, timeout, secs(30)).is_empty());
        // Connection 2 is unaffected until forgotten.
        assert!(pinger.any_outstanding());
        assert_eq!(pinger.forget(2), 1);
        assert!(!pinger.any_outstanding());
        assert!(answer(&pinger, &result("c.example", "a.example", &c.id), &s2s()).is_none());
        assert_eq!(pinger.forget(2), 0);
    }

    #[test]
    fn domains() {
        assert_eq!(domain("a.example"), "a.example");
        assert_eq!(domain("a.example."), "a.example");
        assert_eq!(domain("juliet@a.example/bal@cony/x"), "a.example");
        assert_eq!(domain("a.example/res"), "a.example");
        assert!(same_domain("A.Example", "juliet@a.example/r"));
        assert!(!same_domain("a.example", "b.example"));
        assert!(contains(b"abc", b""));
        assert!(contains(b"aab", b"ab"));
        assert!(!contains(b"a", b"ab"));
    }

    #[test]
    fn shows_established_table() {
        use Direction::{Down, Up};
        use ListenerKind::{C2s, S2s};
        let s2s = s2s();
        let c2s = c2s();
        let bind = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                    <jid>juliet@a.example/balcony</jid></bind></iq>";
        let cases: &[(Direction, ListenerKind, &StreamHeader, &str, bool)] = &[
            (
                Down,
                S2s,
                &s2s,
                "<db:result from='b.example' to='a.example' type='valid'/>",
                true,
            ),
            (
                Down,
                S2s,
                &s2s,
                "<db:result from='b.example' to='a.example' type='invalid'/>",
                false,
            ),
            (
                Down,
                S2s,
                &s2s,
                "<db:result from='b.example' to='a.example'>key</db:result>",
                false,
            ),
            (
                Down,
                S2s,
                &s2s,
                "<db:verify from='b.example' to='a.example' id='x' type='valid'/>",
                false,
            ),
            (
                Down,
                S2s,
                &s2s,
                "<x:result xmlns:x='jabber:server:dialback' type='valid'/>",
                true,
            ),
            // `result` in another namespace is not dialback.
            (Down, S2s, &s2s, "<result type='valid'/>", false),
            // Dialback results go down; the initiator's stanzas go up.
            (
                Up,
                S2s,
                &s2s,
                "<db:result from='a.example' to='b.example' type='valid'/>",
                false,
            ),
            (
                Up,
                S2s,
                &s2s,
                "<message from='a.example' to='b.example'><body>hi</body></message>",
                true,
            ),
            (
                Up,
                S2s,
                &s2s,
                "<presence from='a.example' to='b.example'/>",
                true,
            ),
            (
                Up,
                S2s,
                &s2s,
                "<iq type='get' id='1' from='a.example' to='b.example'/>",
                true,
            ),
            (Up, S2s, &c2s, "<iq type='get' id='1'/>", true),
            (
                Up,
                S2s,
                &s2s,
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                false,
            ),
            (
                Up,
                S2s,
                &s2s,
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
                false,
            ),
            (
                Down,
                S2s,
                &s2s,
                "<message from='b.example' to='a.example'/>",
                false,
            ),
            (Down, C2s, &c2s, bind, true),
            (Down, C2s, &c2s, "<iq type='result' id='r1'/>", false),
            (
                Down,
                C2s,
                &c2s,
                "<iq type='error' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
                false,
            ),
            (
                Down,
                C2s,
                &c2s,
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                false,
            ),
            (Up, C2s, &c2s, bind, false),
            (
                Up,
                C2s,
                &c2s,
                "<message to='romeo@b.example'><body>hi</body></message>",
                false,
            ),
            (Down, S2s, &s2s, bind, false),
        ];
        for &(dir, kind, stream, bytes, expected) in cases {
            let head = ElementHead::parse(bytes.as_bytes(), stream).expect("parses");
            assert_eq!(
                shows_established(dir, &head, bytes.as_bytes(), kind),
                expected,
                "{dir} {kind:?} {bytes}"
            );
        }
    }
}
