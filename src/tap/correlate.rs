//! Correlation: what links one transcript record to others, computed after the fact from the records alone.
//!
//! - **Domain pair.** Each connection carries one S2S direction: the initiator's stream header says
//!   `from='a.test' to='b.test'`, so every element on that connection gets `"pair": "a.test->b.test"`, both ways
//!   (the `dir` says which way it went). On a client connection the left side is the user's bare JID
//!   (`alice@a.test->a.test`) when the client's header names it.
//! - **Dialback verification.** A receiving server checks a `<db:result>` by opening its own connection to the
//!   authoritative server and sending `<db:verify id='...'>`, where the id is the stream id it sent on the
//!   connection the `<db:result>` arrived on. The verify (request and answer) gets `"verifies": {"conn": N}`.
//! - **iq request and response.** A `get`/`set` is answered by a `result`/`error` with the same id and swapped
//!   domains; on S2S the answer usually comes back on the other one-way connection. The answer gets
//!   `"reply_to": {"conn": N, "ts": ...}` and `"rtt_ms"`. Where the domains are not written (a client's iq to its
//!   own server), the answer on the same connection in the other direction matches.
//!
//! [`Correlator`] is a pure state machine over a [`Record`] view, so it serves the tap writer (over events, see
//! [`super::stage`]) and `xmpptap show` (over records read back) alike. Its memory is bounded: at most
//! [`MAX_PENDING_IQS`] unanswered requests and [`MAX_CONNECTIONS`] connections and stream ids are remembered,
//! the oldest forgotten first.

use super::event::{ConnRef, Notes, ReplyTo};
use crate::side::Direction;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use time::OffsetDateTime;

/// Unanswered iq requests remembered; beyond this the oldest is forgotten.
pub const MAX_PENDING_IQS: usize = 10_000;
/// Connections (domain pairs) and stream ids remembered; beyond this the oldest is forgotten.
pub const MAX_CONNECTIONS: usize = 10_000;

/// One record, as far as correlation cares.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// When xmpptap saw it.
    pub ts: OffsetDateTime,
    pub conn: u64,
    pub dir: Option<Direction>,
    pub what: Seen<'a>,
}

/// What a record is.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// A stream header.
    StreamOpened {
        from: Option<&'a str>,
        to: Option<&'a str>,
        id: Option<&'a str>,
    },
    /// A top-level `<iq>`.
    Iq {
        /// `get`, `set`, `result`, `error`.
        kind: Option<&'a str>,
        id: Option<&'a str>,
        from: Option<&'a str>,
        to: Option<&'a str>,
    },
    /// `<db:result>` or `<db:verify>`.
    Dialback {
        verify: bool,
        from: Option<&'a str>,
        id: Option<&'a str>,
        /// `request`, `valid`, `invalid`, `error`.
        result: &'a str,
    },
    /// Any other element crossing the connection (it gets the pair).
    Element,
    /// The connection is over.
    Closed,
    /// Anything else.
    Other,
}

/// A connection's domains, from its initiator's stream header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    /// The initiating domain (`from` of the initiator's header, else of its first `<db:result>`).
    pub from: Option<String>,
    /// The receiving domain.
    pub to: Option<String>,
}

impl Pair {
    /// The `from->to` text, or `None` when neither is known.
    pub fn text(&self) -> Option<String> {
        if self.from.is_none() && self.to.is_none() {
            return None;
        }
        // Built by hand rather than through `Display`: this runs for every stanza of the transcript.
        let from = self.from.as_deref().unwrap_or("?");
        let to = self.to.as_deref().unwrap_or("?");
        let mut text = String::with_capacity(from.len() + 2 + to.len());
        text.push_str(from);
        text.push_str("->");
        text.push_str(to);
        Some(text)
    }

    /// Parses `a.test->b.test`.
    pub fn parse(text: &str) -> Option<Pair> {
        let (from, to) = text.split_once("->")?;
        let known = |d: &str| (d != "?" && !d.is_empty()).then(|| d.to_owned());
        Some(Pair {
            from: known(from),
            to: known(to),
        })
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.from.as_deref().unwrap_or("?");
        let to = self.to.as_deref().unwrap_or("?");
        write!(f, "{from}->{to}")
    }
}

/// Links records to each other (see the module docs).
#[derive(Debug, Default)]
pub struct Correlator {
    /// Each connection's pair and its `from->to` text (noted on every stanza: built once).
    pairs: Bounded<u64, (Pair, Option<String>)>,
    /// Stream id sent by a receiving server -> the connection it was sent on.
    stream_ids: Bounded<String, u64>,
    iqs: PendingIqs,
}

impl Correlator {
    /// A correlator that remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes note of a record and returns what links it to earlier ones.
    pub fn note(&mut self, record: &Record) -> Notes {
        let mut notes = Notes::default();
        match record.what {
            Seen::StreamOpened { from, to, id } => match record.dir {
                Some(Direction::Up) if from.is_some() || to.is_some() => {
                    let pair = Pair {
                        from: from.map(bare),
                        to: to.map(domain),
                    };
                    let text = pair.text();
                    self.pairs.insert(record.conn, (pair, text));
                }
                Some(Direction::Down) => {
                    if let Some(id) = id.filter(|id| !id.is_empty()) {
                        self.stream_ids.insert(id.to_owned(), record.conn);
                    }
                }
                _ => {}
            },
            Seen::Dialback {
                verify,
                from,
                id,
                result,
            } => {
                if !verify && result == "request" && record.dir == Some(Direction::Up) {
                    // An initiator whose header had no `from` names its domain here (XEP-0220 requires it).
                    if let (Some((pair, text)), Some(from)) =
                        (self.pairs.get_mut(&record.conn), from)
                    {
                        pair.from.get_or_insert_with(|| domain(from));
                        *text = pair.text();
                    }
                }
                if verify {
                    notes.verifies = id
                        .and_then(|id| self.stream_ids.get(id))
                        .map(|&conn| ConnRef { conn });
                }
            }
            Seen::Iq { kind, id, from, to } => {
                if let (Some(kind), Some(id), Some(dir)) = (kind, id, record.dir) {
                    let iq = Iq {
                        conn: record.conn,
                        dir,
                        ts: record.ts,
                        from: from.map(domain),
                        to: to.map(domain),
                    };
                    match kind {
                        "get" | "set" => self.iqs.request(id, iq),
                        "result" | "error" => {
                            if let Some(request) = self.iqs.answer(id, &iq) {
                                notes.reply_to = Some(ReplyTo {
                                    conn: request.conn,
                                    ts: request.ts,
                                });
                                let micros = (record.ts - request.ts).whole_microseconds();
                                notes.rtt_ms = Some(micros as f64 / 1000.0);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Seen::Closed => {
                self.pairs.remove(&record.conn);
            }
            Seen::Element | Seen::Other => {}
        }
        if matches!(
            record.what,
            Seen::Iq { .. } | Seen::Dialback { .. } | Seen::Element
        ) {
            notes.pair = self.pair_text(record.conn).map(str::to_owned);
        }
        notes
    }

    /// The domain pair of a connection, once its initiator's stream header was seen.
    pub fn pair(&self, conn: u64) -> Option<&Pair> {
        self.pairs.get(&conn).map(|(pair, _)| pair)
    }

    /// [`Pair::text`] of a connection's pair: the `pair` note of its records.
    pub fn pair_text(&self, conn: u64) -> Option<&str> {
        self.pairs.get(&conn).and_then(|(_, text)| text.as_deref())
    }
}

/// A JID without its resource (`alice@a.test/res` -> `alice@a.test`), lowercased: the `from` of a client's
/// stream header names the user, of a server's the domain.
fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_ascii_lowercase()
}

/// The domain part of a JID (`alice@a.test/res` -> `a.test`), lowercased.
pub fn domain(jid: &str) -> String {
    let bare = jid.split('/').next().unwrap_or(jid);
    let domain = bare.rsplit('@').next().unwrap_or(bare);
    domain.to_ascii_lowercase()
}

/// An iq as correlation remembers it.
#[derive(Clone, Debug)]
struct Iq {
    conn: u64,
    dir: Direction,
    ts: OffsetDateTime,
    from: Option<String>,
    to: Option<String>,
}

impl Iq {
    /// Whether `answer` answers this request.
    fn answered_by(&self, answer: &Iq) -> bool {
        let agree = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let all_known = self.from.is_some()
            && self.to.is_some()
            && answer.from.is_some()
            && answer.to.is_some();
        let swapped = agree(&self.from, &answer.to) && agree(&self.to, &answer.from);
        // With every domain written, the swap alone decides (any connection); otherwise only the other
        // direction of the same connection can hold the answer.
        swapped && (all_known || (self.conn == answer.conn && self.dir != answer.dir))
    }
}

/// Unanswered requests by id, bounded, oldest forgotten first.
#[derive(Debug, Default)]
struct PendingIqs {
    by_id: HashMap<String, Vec<(u64, Iq)>>,
    /// (id, sequence number) in arrival order; entries already answered are skipped when reached.
    order: VecDeque<(String, u64)>,
    live: usize,
    next: u64,
}

impl PendingIqs {
    fn request(&mut self, id: &str, iq: Iq) {
        let seq = self.next;
        self.next += 1;
        self.by_id.entry(id.to_owned()).or_default().push((seq, iq));
        self.order.push_back((id.to_owned(), seq));
        self.live += 1;
        while self.live > MAX_PENDING_IQS {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            self.take(&id, |(s, _)| *s == seq);
        }
        if self.order.len() > 2 * MAX_PENDING_IQS {
            let by_id = &self.by_id;
            self.order.retain(|(id, seq)| {
                by_id
                    .get(id)
                    .is_some_and(|list| list.iter().any(|(s, _)| s == seq))
            });
        }
    }

    /// The latest request `answer` answers, forgotten from now on.
    fn answer(&mut self, id: &str, answer: &Iq) -> Option<Iq> {
        self.take(id, |(_, request)| request.answered_by(answer))
    }

    fn take(&mut self, id: &str, matches: impl Fn(&(u64, Iq)) -> bool) -> Option<Iq> {
        let list = self.by_id.get_mut(id)?;
        let index = list.iter().rposition(matches)?;
        let (_, iq) = list.remove(index);
        if list.is_empty() {
            self.by_id.remove(id);
        }
        self.live -= 1;
        Some(iq)
    }
}

/// A map that forgets its oldest entries beyond [`MAX_CONNECTIONS`].
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, (u64, V)>,
    order: VecDeque<(K, u64)>,
    next: u64,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V> Bounded<K, V> {
    fn insert(&mut self, key: K, value: V) {
        let seq = self.next;
        self.next += 1;
        self.map.insert(key.clone(), (seq, value));
        self.order.push_back((key, seq));
        while self.map.len() > MAX_CONNECTIONS {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|(s, _)| *s == seq) {
                self.map.remove(&key);
            }
        }
        if self.order.len() > 2 * MAX_CONNECTIONS {
            let map = &self.map;
            self.order
                .retain(|(key, seq)| map.get(key).is_some_and(|(s, _)| s == seq));
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get(key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn t(ms: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(ms)
    }

    fn rec(ms: i64, conn: u64, dir: Option<Direction>, what: Seen<'static>) -> Record<'static> {
        Record {
            ts: t(ms),
            conn,
            dir,
            what,
        }
    }

    const UP: Option<Direction> = Some(Direction::Up);
    const DOWN: Option<Direction> = Some(Direction::Down);

    fn opened(from: &'static str, to: &'static str, id: Option<&'static str>) -> Seen<'static> {
        Seen::StreamOpened {
            from: Some(from),
            to: Some(to),
            id,
        }
    }

    fn iq(
        kind: &'static str,
        id: &'static str,
        from: Option<&'static str>,
        to: Option<&'static str>,
    ) -> Seen<'static> {
        Seen::Iq {
            kind: Some(kind),
            id: Some(id),
            from,
            to,
        }
    }

    /// A dialback federation: conn 1 a->b carries the db:result; b verifies on conn 2 (b->a); a ping from a to b
    /// on conn 1 is answered on conn 3 (b->a, the connection b uses to send).
    #[test]
    fn federation() {
        let mut c = Correlator::new();
        let seq: Vec<(Record, Notes)> = vec![
            (
                rec(0, 1, UP, opened("a.test", "b.test", None)),
                Notes::default(),
            ),
            (
                rec(1, 1, DOWN, opened("b.test", "a.test", Some("s-b1"))),
                Notes::default(),
            ),
            (
                rec(
                    2,
                    1,
                    UP,
                    Seen::Dialback {
                        verify: false,
                        from: Some("a.test"),
                        id: None,
                        result: "request",
                    },
                ),
                Notes {
                    pair: Some("a.test->b.test".into()),
                    ..Notes::default()
                },
            ),
            (
                rec(3, 2, UP, opened("b.test", "a.test", None)),
                Notes::default(),
            ),
            (
                rec(4, 2, DOWN, opened("a.test", "b.test", Some("s-a2"))),
                Notes::default(),
            ),
            (
                rec(
                    5,
                    2,
                    UP,
                    Seen::Dialback {
                        verify: true,
                        from: Some("b.test"),
                        id: Some("s-b1"),
                        result: "request",
                    },
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    verifies: Some(ConnRef { conn: 1 }),
                    ..Notes::default()
                },
            ),
            (
                rec(
                    6,
                    2,
                    DOWN,
                    Seen::Dialback {
                        verify: true,
                        from: Some("a.test"),
                        id: Some("s-b1"),
                        result: "valid",
                    },
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    verifies: Some(ConnRef { conn: 1 }),
                    ..Notes::default()
                },
            ),
            (
                rec(
                    7,
                    2,
                    UP,
                    Seen::Dialback {
                        verify: true,
                        from: Some("b.test"),
                        id: Some("unknown"),
                        result: "request",
                    },
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    ..Notes::default()
                },
            ),
            (rec(8, 2, None, Seen::Closed), Notes::default()),
            (
                rec(10, 3, UP, opened("b.test", "a.test", None)),
                Notes::default(),
            ),
            (
                rec(
                    20,
                    1,
                    UP,
                    iq("get", "ping-1", Some("a.test"), Some("b.test")),
                ),
                Notes {
                    pair: Some("a.test->b.test".into()),
                    ..Notes::default()
                },
            ),
            (
                rec(
                    32,
                    3,
                    UP,
                    iq("result", "ping-1", Some("b.test"), Some("a.test")),
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    reply_to: Some(ReplyTo { conn: 1, ts: t(20) }),
                    rtt_ms: Some(12.0),
                    ..Notes::default()
                },
            ),
            // Answered once only.
            (
                rec(
                    33,
                    3,
                    UP,
                    iq("result", "ping-1", Some("b.test"), Some("a.test")),
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    ..Notes::default()
                },
            ),
            // Same id, domains not swapped: not an answer.
            (
                rec(
                    40,
                    1,
                    UP,
                    iq("set", "x", Some("alice@a.test/r"), Some("bob@b.test")),
                ),
                Notes {
                    pair: Some("a.test->b.test".into()),
                    ..Notes::default()
                },
            ),
            (
                rec(
                    41,
                    3,
                    UP,
                    iq("error", "x", Some("c.test"), Some("alice@a.test/r")),
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    ..Notes::default()
                },
            ),
            (
                rec(
                    42,
                    3,
                    UP,
                    iq(
                        "error",
                        "x",
                        Some("bob@B.test/phone"),
                        Some("alice@a.test/r"),
                    ),
                ),
                Notes {
                    pair: Some("b.test->a.test".into()),
                    reply_to: Some(ReplyTo { conn: 1, ts: t(40) }),
                    rtt_ms: Some(2.0),
                    ..Notes::default()
                },
            ),
        ];
        for (i, (record, expected)) in seq.iter().enumerate() {
            assert_eq!(&c.note(record), expected, "record {i}: {record:?}");
        }
        assert!(c.pair(2).is_none(), "closed connections are forgotten");
    }

    /// A client's iq without from/to is answered on the same connection, the other way.
    #[test]
    fn c2s_iq_without_addresses() {
        let mut c = Correlator::new();
        c.note(&rec(
            0,
            7,
            UP,
            Seen::StreamOpened {
                from: None,
                to: Some("a.test"),
                id: None,
            },
        ));
        let request = c.note(&rec(1, 7, UP, iq("get", "roster-1", None, None)));
        assert_eq!(request.pair.as_deref(), Some("?->a.test"));
        // Another connection with the same id does not take it.
        let other = c.note(&rec(
            2,
            8,
            DOWN,
            iq("result", "roster-1", None, Some("bob@a.test/x")),
        ));
        assert_eq!(other.reply_to, None);
        let answer = c.note(&rec(
            3,
            7,
            DOWN,
            iq("result", "roster-1", None, Some("alice@a.test/r")),
        ));
        assert_eq!(answer.reply_to, Some(ReplyTo { conn: 7, ts: t(1) }));
        assert_eq!(answer.rtt_ms, Some(2.0));
    }

    #[test]
    fn pending_iqs_are_bounded() {
        let mut c = Correlator::new();
        let ids: Vec<String> = (0..MAX_PENDING_IQS + 5).map(|i| format!("q{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            c.note(&Record {
                ts: t(i as i64),
                conn: 1,
                dir: UP,
                what: Seen::Iq {
                    kind: Some("get"),
                    id: Some(id),
                    from: Some("a.test"),
                    to: Some("b.test"),
                },
            });
        }
        assert_eq!(c.iqs.live, MAX_PENDING_IQS);
        let answer = |c: &mut Correlator, id: &str| {
            c.note(&Record {
                ts: t(100_000),
                conn: 2,
                dir: UP,
                what: Seen::Iq {
                    kind: Some("result"),
                    id: Some(id),
                    from: Some("b.test"),
                    to: Some("a.test"),
                },
            })
            .reply_to
        };
        assert_eq!(answer(&mut c, "q0"), None, "the oldest was forgotten");
        assert!(answer(&mut c, "q5").is_some());
        assert!(c.iqs.order.len() <= 2 * MAX_PENDING_IQS);
    }

    #[test]
    fn connections_are_bounded() {
        let mut c = Correlator::new();
        for conn in 0..(MAX_CONNECTIONS as u64 + 10) {
            c.note(&rec(0, conn, UP, opened("a.test", "b.test", None)));
        }
        assert!(c.pair(0).is_none());
        assert!(c.pair(MAX_CONNECTIONS as u64 + 9).is_some());
        assert_eq!(c.pairs.map.len(), MAX_CONNECTIONS);
    }

    #[test]
    fn pair_from_dialback_when_header_has_no_from() {
        let mut c = Correlator::new();
        c.note(&rec(
            0,
            1,
            UP,
            Seen::StreamOpened {
                from: None,
                to: Some("b.test"),
                id: None,
            },
        ));
        let n = c.note(&rec(
            1,
            1,
            UP,
            Seen::Dialback {
                verify: false,
                from: Some("a.test"),
                id: None,
                result: "request",
            },
        ));
        assert_eq!(n.pair.as_deref(), Some("a.test->b.test"));
        assert_eq!(Pair::parse("a.test->b.test"), c.pair(1).cloned());
        assert_eq!(domain("Alice@A.Test/Res/x"), "a.test");
        c.note(&rec(
            2,
            5,
            UP,
            opened("Alice@a.test/laptop", "a.test", None),
        ));
        assert_eq!(
            c.pair(5).and_then(Pair::text).as_deref(),
            Some("alice@a.test->a.test")
        );
    }
}
