//! The JSON Lines transcript: one object per event and line. [`EventKind::Data`] and [`EventKind::RawData`]
//! events (leg bytes for captures) are not written: every byte they carry is already in the frame events, or
//! is the encrypted form of it. [`EventKind::TlsSecrets`] are not written either: the transcript is meant to be
//! shared, the secrets only with `--keylog`.

use super::event::{rfc3339_micros_bytes, Xml};
use super::{Event, EventKind, Sink};
use crate::side::Direction;
use std::io::{self, BufWriter, Write};

/// Writes events as JSON Lines to a file or stdout.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    /// The record being written, reused from one record to the next.
    line: Vec<u8>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("name", &self.name)
            .finish()
    }
}

impl JsonlSink {
    /// A sink writing to `out`; `name` says where, for error messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        JsonlSink {
            out: BufWriter::with_capacity(64 * 1024, out),
            name,
            line: Vec::with_capacity(1024),
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
        if !write_stanza(&mut self.line, event) {
            self.line.clear();
            serde_json::to_writer(&mut self.line, event).map_err(io::Error::other)?;
        }
        self.line.push(b'\n');
        let written = self.out.write_all(&self.line);
        self.line.clear();
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn name(&self) -> String {
        format!("transcript {}", self.name)
    }
}

/// Writes a `stanza` record into `out` by hand, exactly as serde_json would, and returns `true`; `false` (with
/// `out` untouched) for anything this does not cover, which then goes through serde_json. Stanzas are nearly
/// every record of a busy transcript, and serde_json's string escaping, byte by byte, was most of their cost.
/// `stanza_records_match_serde_json` holds the two to the same bytes.
fn write_stanza(out: &mut Vec<u8>, event: &Event) -> bool {
    let EventKind::Stanza {
        name,
        ns,
        kind,
        id,
        from,
        to,
        xml: Xml(xml),
    } = &event.kind
    else {
        return false;
    };
    let notes = &event.notes;
    if notes.verifies.is_some() || notes.reply_to.is_some() || notes.rtt_ms.is_some() {
        return false;
    }
    let (Some(ts), Ok(xml)) = (rfc3339_micros_bytes(&event.ts), std::str::from_utf8(xml)) else {
        return false;
    };
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(&ts);
    out.extend_from_slice(b"\",\"conn\":");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", event.conn);
    out.extend_from_slice(match event.dir {
        None => b",\"dir\":null",
        Some(Direction::Up) => b",\"dir\":\"up\"",
        Some(Direction::Down) => b",\"dir\":\"down\"",
    });
    out.extend_from_slice(b",\"event\":\"stanza\"");
    field(out, "name", Some(name));
    field(out, "ns", ns.as_deref());
    field(out, "type", kind.as_deref());
    field(out, "id", id.as_deref());
    field(out, "from", from.as_deref());
    field(out, "to", to.as_deref());
    field(out, "xml", Some(xml));
    field(out, "pair", notes.pair.as_deref());
    if notes.redacted {
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
/// feed and carriage return, `\u00xx` for the other control characters; everything else as it is. Runs of bytes
/// that need no escape are found eight at a time.
fn json_string(out: &mut Vec<u8>, value: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let bytes = value.as_bytes();
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            if below(x ^ (ONES * u64::from(b'"')), 1)
                | below(x ^ (ONES * u64::from(b'\\')), 1)
                | below(x, 0x20)
                == 0
            {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
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
                i += 1;
                run = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escape);
        i += 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::event::{ConnRef, Notes};
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
                    assert!(write_stanza(&mut fast, &event));
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
        assert!(!write_stanza(&mut Vec::new(), &event));
        let event = Event::now(1, None, EventKind::TapDropped { count: 1 });
        assert!(!write_stanza(&mut Vec::new(), &event));
    }
}
