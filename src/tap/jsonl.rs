//! The JSON Lines transcript: one object per event and line. [`EventKind::Data`] and [`EventKind::RawData`]
//! events (leg bytes for captures) are not written: every byte they carry is already in the frame events, or
//! is the encrypted form of it. [`EventKind::TlsSecrets`] are not written either: the transcript is meant to be
//! shared, the secrets only with `--keylog`.

use super::event::{rfc3339_micros_bytes, StanzaView};
use super::{Event, EventKind, Sink};
use crate::side::Direction;
use std::io::{self, BufWriter, Write};
use time::OffsetDateTime;

/// Writes events as JSON Lines to a file or stdout.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    /// The record being written, reused from one record to the next.
    line: Vec<u8>,
    /// The last stanza's time and its RFC 3339 form (`None` if it has none).
    ts: (OffsetDateTime, Option<[u8; 27]>),
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("name", &self.name)
            .finish()
    }
}

impl JsonlSink {
    /// Ends the record in `line` and writes it out.
    fn end_line(&mut self) -> io::Result<()> {
        self.line.push(b'\n');
        let written = self.out.write_all(&self.line);
        self.line.clear();
        written
    }

    /// A sink writing to `out`; `name` says where, for error messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        JsonlSink {
            out: BufWriter::with_capacity(64 * 1024, out),
            name,
            line: Vec::with_capacity(1024),
            ts: (OffsetDateTime::UNIX_EPOCH, None),
        }
    }
}

impl Sink for JsonlSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        if matches!(
            event.kind,
            EventKind::Data { .. } | EventKind::RawData { .. } | EventKind::TlsSecrets { .. }
        ) {
            return Ok(());
        }
        match event.stanza_view() {
            Some(stanza) => self.stanza(&stanza),
            None => {
                serde_json::to_writer(&mut self.line, event).map_err(io::Error::other)?;
                self.end_line()
            }
        }
    }

    fn stanza(&mut self, stanza: &StanzaView<'_>) -> io::Result<()> {
        if self.ts.0 != stanza.ts {
            // The stanzas of one read share their time: formatted once.
            let formatted = rfc3339_micros_bytes(&stanza.ts);
            self.ts = (stanza.ts, formatted);
        }
        let written = match &self.ts.1 {
            Some(ts) => write_stanza(&mut self.line, stanza, ts),
            None => false,
        };
        if !written {
            self.line.clear();
            serde_json::to_writer(&mut self.line, &stanza.to_event()).map_err(io::Error::other)?;
        }
        self.end_line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn name(&self) -> String {
        format!("transcript {}", self.name)
    }
}

/// Writes a `stanza` record into `out` by hand, exactly as serde_json would, and returns `true`; `false` (with
/// `out` untouched) for XML that is not UTF-8, which then goes through serde_json. Stanzas are nearly every
/// record of a busy transcript, and serde_json's string escaping, byte by byte, was most of their cost.
/// `stanza_records_match_serde_json` holds the two to the same bytes.
fn write_stanza(out: &mut Vec<u8>, stanza: &StanzaView<'_>, ts: &[u8]) -> bool {
    let Ok(xml) = std::str::from_utf8(&stanza.xml) else {
        return false;
    };
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(ts);
    out.extend_from_slice(b"\",\"conn\":");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", stanza.conn);
    out.extend_from_slice(match stanza.dir {
        None => b",\"dir\":null",
        Some(Direction::Up) => b",\"dir\":\"up\"",
        Some(Direction::Down) => b",\"dir\":\"down\"",
    });
    out.extend_from_slice(b",\"event\":\"stanza\"");
    field(out, "name", Some(stanza.name));
    field(out, "ns", stanza.ns);
    field(out, "type", stanza.kind);
    field(out, "id", stanza.id);
    field(out, "from", stanza.from);
    field(out, "to", stanza.to);
    field(out, "xml", Some(xml));
    field(out, "pair", stanza.pair);
    if stanza.redacted {
        out.extend_from_slice(b",\"redacted\":true");
    }
    out.push(b'}');
    true
}

/// `,"key":"value"` (nothing for `None`).
fn field(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json_string(out, value);
    }
}

/// A JSON string with serde_json's escapes: `\"`, `\\`, the short forms of backspace, tab, line feed, form
/// feed and carriage return, `\u00xx` for the other control characters; everything else as it is. A value
/// without control characters (most: servers rarely write line breaks into stanzas) takes two vectorized
/// passes, one for control characters and one for quotes and backslashes; any other byte by byte.
fn json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.push(b'"');
    // Without an early exit inside a chunk the compiler vectorizes the test.
    let control = |chunk: &[u8]| chunk.iter().fold(false, |any, &b| any | (b < 0x20));
    if bytes.chunks(64).any(control) {
        escape_bytewise(out, bytes);
    } else {
        let mut run = 0;
        for at in memchr::memchr2_iter(b'"', b'\\', bytes) {
            out.extend_from_slice(&bytes[run..at]);
            out.push(b'\\');
            out.push(bytes[at]);
            run = at + 1;
        }
        out.extend_from_slice(&bytes[run..]);
    }
    out.push(b'"');
}

/// The escapes of [`json_string`], byte by byte.
fn escape_bytewise(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            b if b < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&bytes[run..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                run = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escape);
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::event::{ConnRef, Notes, Xml};
    use crate::tap::SharedBuf;
    use bytes::Bytes;

    fn stanza(xml: &str, dir: Option<Direction>, all: bool) -> Event {
        let some = |s: &str| all.then(|| s.to_owned());
        let mut event = Event::now(
            7,
            dir,
            EventKind::Stanza {
                name: String::from("message"),
                ns: some("jabber:server"),
                kind: some("chat"),
                id: some("id\"1\\"),
                from: some("a@a.example/r\u{e9}"),
                to: some("b@b.example"),
                xml: Xml(Bytes::copy_from_slice(xml.as_bytes())),
            },
        );
        event.notes = Notes {
            pair: some("a.example->b.example"),
            redacted: all,
            ..Notes::default()
        };
        event
    }

    #[test]
    fn stanza_records_match_serde_json() {
        let mut tricky = String::from("<message>");
        for c in (0u8..0x80)
            .map(char::from)
            .chain(['\u{e9}', '\u{263A}', '\u{1F600}', '\u{7f}'])
        {
            tricky.push(c);
            tricky.push_str("abcdefgh");
        }
        tricky.push_str("</message>");
        let xmls = [
            "<message to='b@b.example'><body>plain, long enough for whole words</body></message>",
            "<m a=\"q\">\\ \"quoted\" \\\\</m>",
            "",
            "\"",
            tricky.as_str(),
        ];
        for xml in xmls {
            for dir in [None, Some(Direction::Up), Some(Direction::Down)] {
                for all in [false, true] {
                    let event = stanza(xml, dir, all);
                    let mut fast = Vec::new();
                    let view = event.stanza_view().expect("a plain stanza record");
                    let ts = rfc3339_micros_bytes(&event.ts).expect("formats");
                    assert!(write_stanza(&mut fast, &view, &ts));
                    let serde = serde_json::to_vec(&event).expect("serializes");
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&serde)
                    );
                }
            }
        }
        // What the hand-written path leaves to serde_json.
        let mut event = stanza("<iq/>", None, true);
        event.notes.verifies = Some(ConnRef { conn: 1 });
        assert!(event.stanza_view().is_none());
        let event = Event::now(1, None, EventKind::TapDropped { count: 1 });
        assert!(event.stanza_view().is_none());
        let event = stanza("caf\u{e9}", None, true);
        let mut view = event.stanza_view().expect("a plain stanza record");
        view.xml = Bytes::from_static(b"caf\xe9");
        assert!(!write_stanza(&mut Vec::new(), &view, b"ts"));
    }

    #[test]
    fn views_and_events_give_the_same_lines() {
        let (by_view, by_event) = (SharedBuf::default(), SharedBuf::default());
        let mut views = JsonlSink::new(Box::new(by_view.clone()), String::from("views"));
        let mut events = JsonlSink::new(Box::new(by_event.clone()), String::from("events"));
        let first = stanza(
            "<message><body>one</body></message>",
            Some(Direction::Up),
            true,
        );
        let mut second = stanza("<message/>", Some(Direction::Down), false);
        // The same time as the first (one read), then a later one: the sink reuses its formatted time.
        second.ts = first.ts;
        let mut third = stanza("not UTF-8 \u{e9}", None, true);
        third.ts += time::Duration::seconds(1);
        let mut expected = String::new();
        for (n, event) in [&first, &second, &third].into_iter().enumerate() {
            let mut view = event.stanza_view().expect("a plain stanza record");
            if n == 2 {
                view.xml = Bytes::from_static(b"\xff");
            }
            views.stanza(&view).expect("writes");
            events.event(&view.to_event()).expect("writes");
            let owned = view.to_event();
            expected.push_str(&serde_json::to_string(&owned).expect("serializes"));
            expected.push('\n');
        }
        views.flush().expect("flushes");
        events.flush().expect("flushes");
        let text = |shared: &SharedBuf| {
            String::from_utf8_lossy(&shared.0.lock().expect("not poisoned")).into_owned()
        };
        assert_eq!(text(&by_view), expected);
        assert_eq!(text(&by_event), expected);
    }
}
