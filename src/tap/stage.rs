//! The tap writer's stage before the sinks: every event is redacted, then correlated, on the writer thread (never
//! on the relay's data path), so that every sink (transcript, live view, captures) gets the same bytes.
//!
//! Redaction ([`super::redact`]) covers the `xml` of every element event, the `bytes` of [`EventKind::Data`]
//! and the plaintext part of [`EventKind::RawData`] (chunked streams, see [`StreamRedactor`]; once a leg carries
//! TLS records its raw bytes are ciphertext and pass untouched), and the resumption ids that stream management
//! events also record as a field. A record with something masked says `"redacted": true`. Stream headers carry
//! no secret; they are read here for the namespace prefixes they declare.
//!
//! Correlation ([`super::correlate`]) adds `pair`, `verifies`, `reply_to` and `rtt_ms`.
//!
//! [`RecordRedactor`] applies the same redaction to records read back from a transcript (`xmpptap export`).

use super::correlate::{Correlator, Record, Seen};
use super::event::{Event, EventKind, StanzaAt, StanzaView, Xml};
use super::redact::{mask_str, Redaction, StreamRedactor, Watch};
use crate::side::{Direction, Side};
use crate::xml::element::{ElementHead, PlainHead, StreamHeader};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::HashMap;
use time::OffsetDateTime;

/// Redaction and correlation for the writer thread.
#[derive(Debug)]
pub struct Stage {
    redaction: Redaction,
    context: Context,
    correlator: Correlator,
}

impl Stage {
    /// A stage hiding what `redaction` says.
    pub fn new(redaction: Redaction) -> Self {
        Stage {
            redaction,
            context: Context::default(),
            correlator: Correlator::new(),
        }
    }

    /// What the stanzas of an [`EventKind::Stanzas`] run share (their stream header, pair and what redaction
    /// looks for), looked up once for the run; `None` for any other event. [`RunView::view`] then gives each
    /// usual stanza as a finished record.
    pub fn run<'a>(&'a self, run: &'a Event) -> Option<RunView<'a>> {
        let EventKind::Stanzas { bytes, .. } = &run.kind else {
            return None;
        };
        let header = self.context.header(run.conn, run.dir);
        Some(RunView {
            run,
            bytes: &bytes.0,
            ns: header.and_then(|header| header.default_ns.as_deref()),
            pair: self.correlator.pair_text(run.conn),
            redaction: self.redaction,
            watch: self.redaction.watch(header),
        })
    }

    /// One stanza of an [`EventKind::Stanzas`] run as an event, its start tag parsed against the stream header
    /// of its direction, stamped with the run's time.
    pub fn stanza(&self, run: &Event, frame: &StanzaAt) -> Event {
        let xml = match &run.kind {
            EventKind::Stanzas { bytes, .. } => bytes.0.slice(frame.at..frame.at + frame.len),
            _ => Bytes::new(),
        };
        let empty = StreamHeader::default();
        let header = self.context.header(run.conn, run.dir).unwrap_or(&empty);
        let head = xml
            .get(..frame.head_end)
            .and_then(|tag| ElementHead::parse(tag, header).ok());
        Event {
            ts: run.ts,
            conn: run.conn,
            dir: run.dir,
            kind: EventKind::stanza(head, Xml(xml)),
            notes: Default::default(),
        }
    }

    /// Redacts and annotates one event in place.
    pub fn process(&mut self, event: &mut Event) {
        let (conn, dir) = (event.conn, event.dir);
        if let EventKind::StreamOpened { xml, .. } = &event.kind {
            self.context.opened(conn, dir, &xml.0);
        }
        let redaction = self.redaction;
        let mut redacted = false;
        match &mut event.kind {
            EventKind::StreamOpened { .. } => {}
            EventKind::Data {
                leg,
                outbound,
                bytes,
            } => {
                let header = self.context.header(conn, dir).cloned();
                let stream = self.context.stream(conn, *leg, *outbound, false);
                redacted |= replace(bytes, stream.chunk(&redaction, &bytes.0, header.as_ref()));
            }
            EventKind::RawData {
                leg,
                outbound,
                bytes,
            } => {
                let header = self.context.header(conn, dir).cloned();
                let stream = self.context.stream(conn, *leg, *outbound, true);
                redacted |= replace(bytes, stream.chunk(&redaction, &bytes.0, header.as_ref()));
            }
            EventKind::Stanza { name, ns, id, .. } => {
                if let Some(id) = id
                    .as_mut()
                    .filter(|_| redaction.hides_id_of(ns.as_deref(), name))
                {
                    *id = mask_str(id);
                    redacted = true;
                }
            }
            EventKind::Sm { element, id, .. } => {
                if let Some(id) = id.as_mut().filter(|_| hides_sm_id(&redaction, element)) {
                    *id = mask_str(id);
                    redacted = true;
                }
            }
            _ => {}
        }
        if let Some(xml) = element_xml(&mut event.kind) {
            let header = self.context.header(conn, dir);
            // Most stanzas cannot hold a secret: they are not even read then.
            if redaction.may_hide(&xml.0, header) {
                redacted |= replace(xml, redaction.apply_in(&xml.0, header));
            }
        }
        let mut notes = self.correlator.note(&record(event));
        notes.redacted = redacted || event.notes.redacted;
        event.notes = notes;
        if matches!(event.kind, EventKind::Closed { .. }) {
            self.context.closed(conn);
        }
    }
}

/// The `xml` of an event that carries an element (stream headers, which hold no secrets, excepted). A new
/// event kind carrying XML must be added here to be redacted.
fn element_xml(kind: &mut EventKind) -> Option<&mut Xml> {
    match kind {
        EventKind::Features { xml, .. }
        | EventKind::Rewrite { xml, .. }
        | EventKind::Sasl { xml, .. }
        | EventKind::Sm { xml, .. }
        | EventKind::Starttls { xml }
        | EventKind::Proceed { xml }
        | EventKind::Stanza { xml, .. }
        | EventKind::Dialback { xml, .. }
        | EventKind::StreamError { xml, .. } => Some(xml),
        _ => None,
    }
}

/// Whether a stream management event's `id` field is a resumption id to hide.
fn hides_sm_id(redaction: &Redaction, element: &str) -> bool {
    redaction.sm_ids && matches!(element, "enabled" | "resume" | "resumed")
}

fn replace(xml: &mut Xml, redacted: Option<Vec<u8>>) -> bool {
    match redacted {
        Some(bytes) => {
            xml.0 = Bytes::from(bytes);
            true
        }
        None => false,
    }
}

/// The correlation view of an event.
fn record(event: &Event) -> Record<'_> {
    let what = match &event.kind {
        EventKind::StreamOpened { from, to, id, .. } => Seen::StreamOpened {
            from: from.as_deref(),
            to: to.as_deref(),
            id: id.as_deref(),
        },
        EventKind::Stanza {
            name,
            ns,
            kind,
            id,
            from,
            to,
            ..
        } if is_iq(name, ns.as_deref()) => Seen::Iq {
            kind: kind.as_deref(),
            id: id.as_deref(),
            from: from.as_deref(),
            to: to.as_deref(),
        },
        EventKind::Dialback {
            element,
            from,
            id,
            result,
            ..
        } => Seen::Dialback {
            verify: *element == "verify",
            from: from.as_deref(),
            id: id.as_deref(),
            result,
        },
        EventKind::Closed { .. } => Seen::Closed,
        kind if is_element(kind) => Seen::Element,
        _ => Seen::Other,
    };
    Record {
        ts: event.ts,
        conn: event.conn,
        dir: event.dir,
        what,
    }
}

fn is_element(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Features { .. }
            | EventKind::Rewrite { .. }
            | EventKind::Sasl { .. }
            | EventKind::Sm { .. }
            | EventKind::Starttls { .. }
            | EventKind::Proceed { .. }
            | EventKind::Stanza { .. }
            | EventKind::StreamError { .. }
    )
}

/// Whether a top-level element is an iq stanza (`jabber:server`, `jabber:client`, or a namespace not known).
pub fn is_iq(name: &str, ns: Option<&str>) -> bool {
    name == "iq"
        && matches!(
            ns,
            None | Some(crate::xml::element::NS_SERVER) | Some(crate::xml::element::NS_CLIENT)
        )
}

/// A run of stanzas as [`Stage::run`] prepared it.
#[derive(Debug)]
pub struct RunView<'a> {
    run: &'a Event,
    bytes: &'a Bytes,
    /// The default namespace of the run's stream.
    ns: Option<&'a str>,
    pair: Option<&'a str>,
    redaction: Redaction,
    watch: Watch<'a>,
}

impl<'a> RunView<'a> {
    /// One stanza of the run as a borrowed [`StanzaView`], finished (nothing to redact, correlated), when it is
    /// the usual case: UTF-8, a start tag [`PlainHead`] reads, not an iq (whose requests and answers are
    /// correlated), nothing redaction would hide. `None` otherwise: the caller then builds the event with
    /// [`Stage::stanza`] and runs it through [`Stage::process`]. Both give the same record
    /// (`views_and_events_give_the_same_records`).
    pub fn view(&self, frame: &StanzaAt) -> Option<StanzaView<'a>> {
        let xml = self.bytes.get(frame.at..frame.at + frame.len)?;
        let text = std::str::from_utf8(xml).ok()?;
        // The framer's fast path has usually read the start tag already, and seen whether any element may be in
        // a namespace other than the stream's default one.
        let head = match &frame.spans {
            Some(spans) => PlainHead::from_spans(text, spans)?,
            None => PlainHead::parse_str(text.get(..frame.head_end)?)?,
        };
        let may_hide = || match &frame.spans {
            Some(spans) if spans.one_namespace => self.watch.may_hide_unqualified(),
            _ => self.watch.may_hide_text(text),
        };
        if is_iq(head.name, self.ns)
            || (head.id.is_some() && self.redaction.hides_id_of(self.ns, head.name))
            || may_hide()
        {
            return None;
        }
        Some(StanzaView {
            ts: self.run.ts,
            conn: self.run.conn,
            dir: self.run.dir,
            name: head.name,
            ns: self.ns,
            kind: head.kind,
            id: head.id,
            from: head.from,
            to: head.to,
            xml: text,
            buf: self.bytes,
            pair: self.pair,
            redacted: false,
        })
    }
}

/// What redaction remembers per connection: each direction's stream header (for its namespace prefixes) and
/// the byte streams being redacted chunk by chunk.
#[derive(Debug, Default)]
struct Context {
    headers: HashMap<(u64, Direction), StreamHeader>,
    streams: HashMap<(u64, Side, bool, bool), StreamRedactor>,
}

impl Context {
    /// Connections whose state is kept; a connection that never reports `closed` is forgotten past this.
    const MAX_CONNECTIONS: usize = super::correlate::MAX_CONNECTIONS;

    fn opened(&mut self, conn: u64, dir: Option<Direction>, xml: &[u8]) {
        if let (Some(dir), Ok(header)) = (dir, StreamHeader::parse(xml)) {
            self.bound();
            self.headers.insert((conn, dir), header);
        }
    }

    fn header(&self, conn: u64, dir: Option<Direction>) -> Option<&StreamHeader> {
        self.headers.get(&(conn, dir?))
    }

    fn stream(&mut self, conn: u64, leg: Side, outbound: bool, raw: bool) -> &mut StreamRedactor {
        self.bound();
        self.streams.entry((conn, leg, outbound, raw)).or_default()
    }

    fn closed(&mut self, conn: u64) {
        self.headers.retain(|(c, _), _| *c != conn);
        self.streams.retain(|(c, ..), _| *c != conn);
    }

    /// Keeps memory bounded when connections end without `closed` (events dropped): forgets the oldest
    /// connections (connection ids grow).
    fn bound(&mut self) {
        let limit = 2 * Self::MAX_CONNECTIONS;
        if self.headers.len() > limit || self.streams.len() > 2 * limit {
            let mut conns: Vec<u64> = self
                .headers
                .keys()
                .map(|(c, _)| *c)
                .chain(self.streams.keys().map(|(c, ..)| *c))
                .collect();
            conns.sort_unstable();
            conns.dedup();
            let keep_from = conns
                .len()
                .checked_sub(Self::MAX_CONNECTIONS)
                .and_then(|i| conns.get(i))
                .copied()
                .unwrap_or(0);
            self.headers.retain(|(c, _), _| *c >= keep_from);
            self.streams.retain(|(c, ..), _| *c >= keep_from);
        }
    }
}

/// Redaction over records read back from a JSON Lines transcript, with the same rules as [`Stage`].
#[derive(Debug)]
pub struct RecordRedactor {
    redaction: Redaction,
    context: Context,
}

impl RecordRedactor {
    /// A redactor hiding what `redaction` says.
    pub fn new(redaction: Redaction) -> Self {
        RecordRedactor {
            redaction,
            context: Context::default(),
        }
    }

    /// Redacts one record in place; adds `"redacted": true` when something was masked. Returns whether it was.
    pub fn record(&mut self, record: &mut Map<String, Value>) -> bool {
        let conn = record.get("conn").and_then(Value::as_u64).unwrap_or(0);
        let dir = match record.get("dir").and_then(Value::as_str) {
            Some("up") => Some(Direction::Up),
            Some("down") => Some(Direction::Down),
            _ => None,
        };
        let event = record
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let redaction = self.redaction;
        let mut redacted = false;
        if event == "stream_opened" {
            if let Some(xml) = record.get("xml").and_then(Value::as_str) {
                self.context.opened(conn, dir, xml.as_bytes());
            }
        }
        let header = self.context.header(conn, dir).cloned();
        match event.as_str() {
            "stream_opened" => {}
            "data" | "raw_data" => {
                let leg = match record.get("leg").and_then(Value::as_str) {
                    Some("initiator") => Side::Initiator,
                    _ => Side::Receiver,
                };
                let outbound = record
                    .get("outbound")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let stream = self
                    .context
                    .stream(conn, leg, outbound, event == "raw_data");
                if let Some(Value::String(bytes)) = record.get_mut("bytes") {
                    if let Some(out) = stream.chunk(&redaction, bytes.as_bytes(), header.as_ref()) {
                        *bytes = String::from_utf8_lossy(&out).into_owned();
                        redacted = true;
                    }
                }
            }
            _ => {
                if let Some(Value::String(xml)) = record.get_mut("xml") {
                    if let Some(out) = redaction.apply_in(xml.as_bytes(), header.as_ref()) {
                        *xml = String::from_utf8_lossy(&out).into_owned();
                        redacted = true;
                    }
                }
            }
        }
        let hides_id = match event.as_str() {
            "stanza" => redaction.hides_id_of(
                record.get("ns").and_then(Value::as_str),
                record
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            "sm" => hides_sm_id(
                &redaction,
                record
                    .get("element")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            _ => false,
        };
        if hides_id {
            if let Some(Value::String(id)) = record.get_mut("id") {
                *id = mask_str(id);
                redacted = true;
            }
        }
        if event == "closed" {
            self.context.closed(conn);
        }
        if redacted {
            record.insert(String::from("redacted"), Value::Bool(true));
        }
        redacted
    }
}

/// The correlation view of a record read back from a transcript; `None` when it has no readable `ts`.
pub fn record_view(record: &Map<String, Value>) -> Option<Record<'_>> {
    let text = |key: &str| record.get(key).and_then(Value::as_str);
    let ts =
        OffsetDateTime::parse(text("ts")?, &time::format_description::well_known::Rfc3339).ok()?;
    let dir = match text("dir") {
        Some("up") => Some(Direction::Up),
        Some("down") => Some(Direction::Down),
        _ => None,
    };
    let what = match text("event").unwrap_or_default() {
        "stream_opened" => Seen::StreamOpened {
            from: text("from"),
            to: text("to"),
            id: text("id"),
        },
        "stanza" if is_iq(text("name").unwrap_or_default(), text("ns")) => Seen::Iq {
            kind: text("type"),
            id: text("id"),
            from: text("from"),
            to: text("to"),
        },
        "dialback" => Seen::Dialback {
            verify: text("element") == Some("verify"),
            from: text("from"),
            id: text("id"),
            result: text("result").unwrap_or("request"),
        },
        "closed" => Seen::Closed,
        "features" | "rewrite" | "sasl" | "sm" | "starttls" | "proceed" | "stanza"
        | "stream_error" => Seen::Element,
        _ => Seen::Other,
    };
    Some(Record {
        ts,
        conn: record.get("conn").and_then(Value::as_u64).unwrap_or(0),
        dir,
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::event::Origin;
    use crate::xml::framer::HeadSpans;

    fn xml(text: &str) -> Xml {
        Xml(Bytes::copy_from_slice(text.as_bytes()))
    }

    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn federation() -> Vec<Event> {
        let header_up = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' to='b.test' version='1.0'>";
        let header_down = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='b.test' to='a.test' id='sid-1' version='1.0'>";
        vec![
            Event::now(
                1,
                Some(Direction::Up),
                EventKind::StreamOpened {
                    stream: 0,
                    from: Some("a.test".into()),
                    to: Some("b.test".into()),
                    id: None,
                    version: Some("1.0".into()),
                    origin: Origin::Peer,
                    xml: xml(header_up),
                },
            ),
            Event::now(
                1,
                Some(Direction::Down),
                EventKind::StreamOpened {
                    stream: 0,
                    from: Some("b.test".into()),
                    to: Some("a.test".into()),
                    id: Some("sid-1".into()),
                    version: Some("1.0".into()),
                    origin: Origin::Peer,
                    xml: xml(header_down),
                },
            ),
            Event::now(
                1,
                Some(Direction::Up),
                EventKind::Dialback {
                    element: "result",
                    from: Some("a.test".into()),
                    to: Some("b.test".into()),
                    id: None,
                    result: "request".into(),
                    xml: xml(&format!(
                        "<db:result from='a.test' to='b.test'>{KEY}</db:result>"
                    )),
                },
            ),
            Event::now(
                1,
                Some(Direction::Up),
                EventKind::Data {
                    leg: Side::Initiator,
                    outbound: false,
                    bytes: xml(&format!(
                        "<db:result from='a.test' to='b.test'>{KEY}</db:result>"
                    )),
                },
            ),
            Event::now(
                2,
                Some(Direction::Up),
                EventKind::Dialback {
                    element: "verify",
                    from: Some("b.test".into()),
                    to: Some("a.test".into()),
                    id: Some("sid-1".into()),
                    result: "request".into(),
                    xml: xml(&format!(
                        "<db:verify from='b.test' to='a.test' id='sid-1'>{KEY}</db:verify>"
                    )),
                },
            ),
            Event::now(
                1,
                Some(Direction::Up),
                EventKind::Sm {
                    element: "enabled".into(),
                    h: None,
                    id: Some("resume-token-123".into()),
                    resume: Some(true),
                    location: None,
                    resumes_conn: None,
                    xml: xml(
                        "<enabled xmlns='urn:xmpp:sm:3' id='resume-token-123' resume='true'/>",
                    ),
                },
            ),
        ]
    }

    #[test]
    fn stage_redacts_every_copy_and_correlates() {
        let mut stage = Stage::new(Redaction::redact());
        let mut lines = Vec::new();
        for mut event in federation() {
            let before = match &event.kind {
                EventKind::Data { bytes, .. } => bytes.0.len(),
                kind => format!("{kind:?}").len(),
            };
            stage.process(&mut event);
            if let EventKind::Data { bytes, .. } = &event.kind {
                assert_eq!(bytes.0.len(), before);
            }
            lines.push(serde_json::to_string(&event).expect("serializes"));
        }
        let all = lines.join("\n");
        assert!(!all.contains(&KEY[..16]), "{all}");
        assert!(!all.contains("resume-token-123"), "{all}");
        assert!(
            lines[2].contains(r#""pair":"a.test->b.test""#),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with(r#""redacted":true}"#), "{}", lines[2]);
        assert!(
            lines[4].contains(r#""verifies":{"conn":1}"#),
            "{}",
            lines[4]
        );
        assert!(!lines[0].contains("redacted"), "{}", lines[0]);
    }

    #[test]
    fn default_stage_keeps_dialback_keys() {
        let mut stage = Stage::new(Redaction::default());
        let mut events = federation();
        for event in &mut events {
            stage.process(event);
        }
        let text = serde_json::to_string(&events[2]).expect("serializes");
        assert!(text.contains(KEY), "{text}");
        assert!(!text.contains("redacted"), "{text}");
    }

    #[test]
    fn raw_data_split_inside_a_secret() {
        let mut stage = Stage::new(Redaction::default());
        let whole = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldHBhc3N3b3Jk</auth>";
        let mut out = String::new();
        for piece in [&whole[..20], &whole[20..75], &whole[75..90], &whole[90..]] {
            let mut event = Event::now(
                3,
                Some(Direction::Up),
                EventKind::RawData {
                    leg: Side::Initiator,
                    outbound: false,
                    bytes: xml(piece),
                },
            );
            stage.process(&mut event);
            if let EventKind::RawData { bytes, .. } = &event.kind {
                assert_eq!(bytes.0.len(), piece.len());
                out.push_str(std::str::from_utf8(&bytes.0).expect("utf-8"));
            }
        }
        assert_eq!(out.len(), whole.len());
        for window in "AGFsaWNlAHNlY3JldHBhc3N3b3Jk".as_bytes().windows(5) {
            let window = std::str::from_utf8(window).expect("ascii");
            assert!(!out.contains(window), "{window} in {out}");
        }
        assert!(out.ends_with("</auth>"), "{out}");
        // TLS records pass untouched.
        let record = [0x17u8, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5];
        let mut event = Event::now(
            3,
            Some(Direction::Up),
            EventKind::RawData {
                leg: Side::Initiator,
                outbound: false,
                bytes: Xml(Bytes::copy_from_slice(&record)),
            },
        );
        stage.process(&mut event);
        assert!(!event.notes.redacted);
    }

    #[test]
    fn record_redactor_matches_stage() {
        let mut stage = Stage::new(Redaction::redact());
        let mut records = RecordRedactor::new(Redaction::redact());
        for event in federation() {
            let mut original: Map<String, Value> =
                serde_json::from_value(serde_json::to_value(&event).expect("value")).expect("map");
            let mut event = event;
            stage.process(&mut event);
            records.record(&mut original);
            let staged = serde_json::to_value(&event).expect("value");
            for key in ["xml", "bytes", "id", "redacted"] {
                assert_eq!(staged.get(key), original.get(key), "{key} of {staged}");
            }
        }
    }

    /// A run of stanzas as the observer sends it: the frames of `stanzas`, back to back, with or without what
    /// the framer's fast path found in their start tags.
    fn run(conn: u64, stanzas: &[&str], spans: bool) -> Event {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for stanza in stanzas {
            let head_end = stanza.find('>').expect("a start tag") + 1;
            frames.push(StanzaAt {
                at: bytes.len(),
                len: stanza.len(),
                head_end,
                spans: HeadSpans::find(stanza.as_bytes()).filter(|_| spans),
            });
            bytes.extend_from_slice(stanza.as_bytes());
        }
        Event::now(
            conn,
            Some(Direction::Up),
            EventKind::Stanzas {
                frames,
                bytes: Xml(Bytes::from(bytes)),
            },
        )
    }

    #[test]
    fn views_and_events_give_the_same_records() {
        let stanzas = [
            "<message from='alice@a.test/r' to='bob@b.test' type='chat' id='m1'><body>hi</body></message>",
            "<presence from='alice@a.test/r' to='bob@b.test'/>",
            "<message xml:lang='en' xmlnsx='1' to=\"bob@b.test\" id=\"it's\" type='chat'/>",
            // Each of these becomes an event: an iq (correlated), a value to unescape, a namespace declaration,
            // a prefixed name, a start tag that does not parse.
            "<iq type='get' id='p1' from='a.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<message id='a&amp;b' to='bob@b.test'/>",
            "<message xmlns='jabber:client' to='bob@b.test'/>",
            "<db:result from='a.test' to='b.test'>key</db:result>",
            "<message id='1' id='2'/>",
            // Secrets: with redaction on, SASL payloads and message bodies make events.
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNl</auth>",
        ];
        let cases = [Redaction::default(), Redaction::redact()]
            .into_iter()
            .flat_map(|redaction| [true, false].map(|with_header| (redaction, with_header)))
            .flat_map(|(redaction, with_header)| {
                [true, false].map(|spans| (redaction, with_header, spans))
            });
        for (redaction, with_header, spans) in cases {
            let mut viewing = Stage::new(redaction);
            let mut processing = Stage::new(redaction);
            if with_header {
                for mut event in federation().into_iter().take(2) {
                    viewing.process(&mut event);
                    processing.process(&mut event);
                }
            }
            let run = run(1, &stanzas, spans);
            let EventKind::Stanzas { frames, .. } = &run.kind else {
                unreachable!("a run");
            };
            // The two messages, the presence and the iq have usual start tags, when the spans are given.
            let with_spans = frames.iter().filter(|f| f.spans.is_some()).count();
            assert_eq!(with_spans, if spans { 4 } else { 0 });
            let mut viewed = 0;
            for frame in frames {
                let mut event = processing.stanza(&run, frame);
                processing.process(&mut event);
                let expected = serde_json::to_string(&event).expect("serializes");
                let view = viewing.run(&run).and_then(|shared| shared.view(frame));
                let got = match view {
                    Some(view) => {
                        viewed += 1;
                        serde_json::to_string(&view.to_event()).expect("serializes")
                    }
                    None => {
                        let mut event = viewing.stanza(&run, frame);
                        viewing.process(&mut event);
                        serde_json::to_string(&event).expect("serializes")
                    }
                };
                assert_eq!(got, expected);
            }
            // The messages and the presence, even when redaction hides dialback keys on a stream whose
            // header declares the dialback namespace (none has an element with its prefix).
            assert_eq!(
                viewed, 3,
                "{redaction:?}, header: {with_header}, spans: {spans}"
            );
        }
    }
}
