//! Turning frames into transcript events. The relay calls [`Observer::frame`] for every frame it forwards; the
//! observer parses only the start tag (and, for the few stream-level elements that have their own event, the
//! element), and only when someone is listening.

use crate::side::{Direction, Side};
use crate::tap::event::{Origin, StanzaAt, Xml};
use crate::tap::{Event, EventKind, Tap};
use crate::xml::element::{
    self, Dialback, ElementHead, Features, StreamError, StreamHeader, NS_DIALBACK, NS_SASL, NS_SM,
    NS_STREAM, NS_TLS,
};
use crate::xml::framer::{Frame, FrameKind};
use bytes::Bytes;

/// Per-direction transcript state: the current stream header (its namespace declarations resolve element
/// prefixes) and counters for the closing summary.
#[derive(Debug)]
pub struct Observer {
    conn: u64,
    dir: Direction,
    tap: Tap,
    /// The header of the stream currently open in this direction.
    pub header: Option<StreamHeader>,
    /// Whether the sender closed its current stream (`</stream:stream>`).
    pub stream_closed: bool,
    /// Stream headers seen in this direction (restarts included).
    pub streams: u32,
    /// Top-level elements seen (stream-level elements included, whitespace not).
    pub stanzas: u64,
    sm_index: std::sync::Arc<SmIndex>,
    /// Whether every stanza is logged at debug level, asked once: the filter does not change while a
    /// connection lives, and asking per stanza costs more than relaying it.
    debug: bool,
}

impl Observer {
    /// An observer for one direction of connection `conn`.
    pub fn new(conn: u64, dir: Direction, tap: Tap, sm_index: std::sync::Arc<SmIndex>) -> Self {
        Observer {
            conn,
            dir,
            tap,
            header: None,
            stream_closed: false,
            streams: 0,
            stanzas: 0,
            sm_index,
            debug: tracing::enabled!(tracing::Level::DEBUG),
        }
    }

    /// Records one frame relayed in this direction. `bytes` are exactly the frame's bytes.
    pub fn frame(&mut self, frame: &Frame, bytes: &Bytes) {
        match frame.kind {
            FrameKind::Whitespace => {}
            FrameKind::StreamOpen => {
                let header = StreamHeader::parse(&bytes[frame.head.clone()]).ok();
                if let Some(header) = &header {
                    tracing::info!(dir = %self.dir, from = ?header.from, to = ?header.to, id = ?header.id,
                        "stream opened");
                }
                if self.tap.enabled() {
                    let kind =
                        stream_opened(self.streams, header.as_ref(), Origin::Peer, bytes.clone());
                    self.emit(kind);
                }
                self.header = header;
                self.stream_closed = false;
                self.streams += 1;
            }
            FrameKind::StreamClose => {
                self.stream_closed = true;
                tracing::debug!(dir = %self.dir, "stream closed");
                self.emit(EventKind::StreamClosed {
                    origin: Origin::Peer,
                });
            }
            FrameKind::Stanza => {
                self.stanzas += 1;
                if self.debug || self.tap.enabled() {
                    let kind = self.classify(frame, bytes);
                    self.emit(kind);
                }
            }
        }
    }

    /// [`Self::frame`] for the frame at `offset` in `chunk`, which the relay is about to forward: an ordinary
    /// stanza nobody listens to is only counted, without taking a reference to its bytes (an atomic increment
    /// and decrement per stanza otherwise).
    pub fn frame_in(&mut self, frame: &Frame, chunk: &Bytes, offset: usize) {
        match frame.kind {
            FrameKind::Whitespace => {}
            FrameKind::Stanza if !self.debug && !self.tap.enabled() => self.stanzas += 1,
            _ => self.frame(frame, &chunk.slice(offset..offset + frame.len)),
        }
    }

    /// [`Self::frame_in`] for every frame of a batch (`frames` at their offsets in `chunk`). Runs of ordinary
    /// stanzas (`message`, `presence`, `iq`, told by their first bytes) go to the writer as one
    /// [`EventKind::Stanzas`] event, parsed there: the data path then costs one channel send per run instead of
    /// a parse, a few allocations and a send per stanza. Everything else is recorded as by [`Self::frame`], in
    /// order with the runs.
    pub fn frames(&mut self, frames: &[(usize, Frame)], chunk: &Bytes) {
        if self.debug || !self.tap.enabled() {
            for (offset, frame) in frames {
                self.frame_in(frame, chunk, *offset);
            }
            return;
        }
        let mut run: Vec<StanzaAt> = Vec::new();
        let mut run_start = 0;
        for (offset, frame) in frames {
            let offset = *offset;
            match frame.kind {
                FrameKind::Whitespace => {}
                FrameKind::Stanza
                    if element::is_ordinary_stanza(
                        &chunk[offset + frame.head.start..offset + frame.head.end],
                    ) =>
                {
                    self.stanzas += 1;
                    if run.is_empty() {
                        run_start = offset;
                        // One allocation per run rather than one per doubling.
                        run.reserve(frames.len());
                    }
                    run.push(StanzaAt {
                        at: offset - run_start,
                        len: frame.len,
                        head_end: frame.head.end,
                        spans: frame.spans,
                    });
                }
                _ => {
                    self.emit_run(&mut run, chunk, run_start);
                    self.frame(frame, &chunk.slice(offset..offset + frame.len));
                }
            }
        }
        self.emit_run(&mut run, chunk, run_start);
    }

    /// Emits the pending run of ordinary stanzas, which starts at `start` in `chunk`.
    fn emit_run(&self, run: &mut Vec<StanzaAt>, chunk: &Bytes, start: usize) {
        let Some(last) = run.last() else { return };
        let end = start + last.at + last.len;
        self.emit(EventKind::Stanzas {
            frames: std::mem::take(run),
            bytes: Xml(chunk.slice(start..end)),
        });
    }

    /// Records something xmpptap itself wrote in this direction.
    pub fn own(&self, kind: EventKind) {
        self.emit(kind);
    }

    /// Records bytes that crossed a leg, for capture sinks (see [`EventKind::Data`]). Cheap when no sink wants
    /// them: the bytes are reference-counted, never copied.
    pub fn data(&self, leg: Side, outbound: bool, bytes: &Bytes) {
        if self.tap.wants_data() {
            self.tap.emit(Event::now(
                self.conn,
                Some(self.dir),
                EventKind::Data {
                    leg,
                    outbound,
                    bytes: Xml(bytes.clone()),
                },
            ));
        }
    }

    /// Records the last words xmpptap wrote in this direction on its own: a stream error and/or the close.
    pub fn own_words(&self, words: &[u8]) {
        if !self.tap.enabled() {
            return;
        }
        let to = self.dir.sender().peer();
        self.data(to, true, &Bytes::copy_from_slice(words));
        let close: &[u8] = b"</stream:stream>";
        let error = words.strip_suffix(close).unwrap_or(words);
        if !error.is_empty() {
            if let Ok(parsed) = StreamError::parse(error) {
                self.emit(EventKind::StreamError {
                    condition: parsed.condition,
                    text: parsed.text,
                    origin: Origin::Xmpptap,
                    xml: Xml(Bytes::copy_from_slice(error)),
                });
            }
        }
        self.emit(EventKind::StreamClosed {
            origin: Origin::Xmpptap,
        });
    }

    fn emit(&self, kind: EventKind) {
        if self.tap.enabled() {
            self.tap.emit(Event::now(self.conn, Some(self.dir), kind));
        }
    }

    /// A stream management event; `enabled` ids are remembered so that a later `resume` (on a new connection)
    /// names the connection it resumes.
    fn sm(&self, name: &str, frame: &Frame, bytes: &Bytes, xml: Xml) -> EventKind {
        let attrs = element::attributes(&bytes[frame.head.clone()]).unwrap_or_default();
        let id = match name {
            "enabled" => attr(&attrs, "id"),
            "resume" | "resumed" => attr(&attrs, "previd"),
            _ => None,
        };
        let resumes_conn = match (name, &id) {
            ("enabled", Some(id)) => {
                self.sm_index.remember(id, self.conn);
                None
            }
            ("resume" | "resumed", Some(id)) => self.sm_index.find(id),
            _ => None,
        };
        EventKind::Sm {
            element: name.to_owned(),
            h: attr(&attrs, "h").and_then(|h| h.parse().ok()),
            id,
            resume: attr(&attrs, "resume").map(|r| r == "true" || r == "1"),
            location: attr(&attrs, "location"),
            resumes_conn,
            xml,
        }
    }

    /// Builds the event for a top-level element.
    fn classify(&self, frame: &Frame, bytes: &Bytes) -> EventKind {
        let xml = Xml(bytes.clone());
        let empty = StreamHeader::default();
        let stream = self.header.as_ref().unwrap_or(&empty);
        let head = match ElementHead::parse(&bytes[frame.head.clone()], stream) {
            Ok(head) => head,
            Err(e) => {
                tracing::debug!(dir = %self.dir, error = %e, "cannot read start tag");
                return EventKind::stanza(None, xml);
            }
        };
        tracing::debug!(dir = %self.dir, name = %head.name, kind = ?head.kind, id = ?head.id,
            from = ?head.from, to = ?head.to, "element");
        match (head.ns.as_deref(), head.local.as_str()) {
            (Some(NS_STREAM), "features") => match Features::parse(bytes) {
                Ok(features) => return EventKind::Features { features, xml },
                Err(e) => tracing::debug!(error = %e, "unreadable stream features"),
            },
            (Some(NS_STREAM), "error") => {
                if let Ok(error) = StreamError::parse(bytes) {
                    tracing::info!(dir = %self.dir, condition = %error.condition, text = ?error.text,
                        "stream error");
                    return EventKind::StreamError {
                        condition: error.condition,
                        text: error.text,
                        origin: Origin::Peer,
                        xml,
                    };
                }
            }
            (Some(NS_SASL), step) => {
                let attrs = element::attributes(&bytes[frame.head.clone()]).unwrap_or_default();
                let condition = (step == "failure")
                    .then(|| element::first_child(bytes))
                    .flatten();
                tracing::info!(dir = %self.dir, step, ?condition, "SASL");
                return EventKind::Sasl {
                    step: step.to_owned(),
                    mechanism: attr(&attrs, "mechanism"),
                    condition,
                    xml,
                };
            }
            (Some(NS_SM), name) => return self.sm(name, frame, bytes, xml),
            (Some(NS_TLS), "starttls") => return EventKind::Starttls { xml },
            (Some(NS_TLS), "proceed") => return EventKind::Proceed { xml },
            (Some(NS_DIALBACK), "result" | "verify") => {
                if let Ok(db) = Dialback::parse(bytes, stream) {
                    let result = db.kind.clone().unwrap_or_else(|| String::from("request"));
                    tracing::info!(dir = %self.dir, element = %head.local, from = ?db.from, to = ?db.to,
                        %result, "dialback");
                    return EventKind::Dialback {
                        element: if db.verify { "verify" } else { "result" },
                        from: db.from,
                        to: db.to,
                        id: db.id,
                        result,
                        xml,
                    };
                }
            }
            _ => {}
        }
        EventKind::stanza(Some(head), xml)
    }
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Which connection enabled which XEP-0198 session, so that a `resume` on a new connection can be linked to
/// the old one. Shared by all sessions; bounded (oldest entries go first).
#[derive(Debug, Default)]
pub struct SmIndex {
    ids: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
}

impl SmIndex {
    /// Most sessions remembered.
    const CAPACITY: usize = 10_000;

    fn remember(&self, id: &str, conn: u64) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() == Self::CAPACITY {
            ids.pop_front();
        }
        ids.push_back((id.to_owned(), conn));
    }

    fn find(&self, id: &str) -> Option<u64> {
        let ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter()
            .rev()
            .find(|(known, _)| known == id)
            .map(|(_, conn)| *conn)
    }
}

/// The `stream_opened` event for a header (parsed or not).
pub fn stream_opened(
    stream: u32,
    header: Option<&StreamHeader>,
    origin: Origin,
    bytes: Bytes,
) -> EventKind {
    EventKind::StreamOpened {
        stream,
        from: header.and_then(|h| h.from.clone()),
        to: header.and_then(|h| h.to.clone()),
        id: header.and_then(|h| h.id.clone()),
        version: header.and_then(|h| h.version.clone()),
        origin,
        xml: Xml(bytes),
    }
}
