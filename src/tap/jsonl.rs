//! The JSON Lines transcript: one object per event and line. [`EventKind::Data`] and [`EventKind::RawData`]
//! events (leg bytes for captures) are not written: every byte they carry is already in the frame events, or
//! is the encrypted form of it. [`EventKind::TlsSecrets`] are not written either: the transcript is meant to be
//! shared, the secrets only with `--keylog`.

use super::event::{lies_within, rfc3339_micros_bytes, StanzaView};
use super::{Event, EventKind, Sink};
use crate::side::Direction;
use std::io::{self, Write};
use time::OffsetDateTime;
use wide::u8x16;

/// Writes events as JSON Lines to a file or stdout.
pub struct JsonlSink {
    out: Box<dyn Write + Send>,
    name: String,
    /// Records not yet written out. Records are written straight into it, and it goes out whenever it holds
    /// [`Self::BLOCK`] bytes, and on [`Sink::flush`].
    buf: Vec<u8>,
    /// The opening of the last stanza record written by hand, shared by the stanzas of one read.
    opening: Opening,
}

/// `{"ts":"…","conn":…,"dir":…,"event":"stanza"` for a time, connection and direction.
#[derive(Debug, Default)]
struct Opening {
    of: Option<(OffsetDateTime, u64, Option<Direction>)>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("name", &self.name)
            .finish()
    }
}

impl JsonlSink {
    /// How many bytes of records are written out at once.
    const BLOCK: usize = 64 * 1024;

    /// A sink writing to `out`; `name` says where, for error messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        JsonlSink {
            out,
            name,
            buf: Vec::with_capacity(Self::BLOCK + 4096),
            opening: Opening::default(),
        }
    }

    /// Ends the record just written into `buf`, and writes out a full block.
    fn end_record(&mut self) -> io::Result<()> {
        self.buf.push(b'\n');
        if self.buf.len() < Self::BLOCK {
            return Ok(());
        }
        let written = self.out.write_all(&self.buf);
        self.buf.clear();
        written
    }

    /// Writes `event` with serde_json.
    fn serialize(&mut self, event: &Event) -> io::Result<()> {
        let start = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, event) {
            self.buf.truncate(start);
            return Err(io::Error::other(e));
        }
        self.end_record()
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
            None => self.serialize(event),
        }
    }

    fn stanza(&mut self, stanza: &StanzaView<'_>) -> io::Result<()> {
        let of = Some((stanza.ts, stanza.conn, stanza.dir));
        if self.opening.of != of {
            let Some(ts) = rfc3339_micros_bytes(&stanza.ts) else {
                // A time serde_json writes differently (years past 9999).
                return self.serialize(&stanza.to_event());
            };
            self.opening.bytes.clear();
            write_opening(&mut self.opening.bytes, &ts, stanza.conn, stanza.dir);
            self.opening.of = of;
        }
        self.buf.extend_from_slice(&self.opening.bytes);
        write_fields(&mut self.buf, stanza);
        self.end_record()
    }

    fn flush(&mut self) -> io::Result<()> {
        let written = self.out.write_all(&self.buf);
        self.buf.clear();
        written?;
        self.out.flush()
    }

    fn name(&self) -> String {
        format!("transcript {}", self.name)
    }
}

impl Drop for JsonlSink {
    /// Writes out what is left, as a `BufWriter` would (the writer thread flushes before it ends anyway).
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The opening of a `stanza` record, as serde_json writes it: `{"ts":"…","conn":…,"dir":…,"event":"stanza"`.
/// Stanzas are nearly every record of a busy transcript; [`write_fields`] writes the rest of them.
/// `stanza_records_match_serde_json` holds the two to serde_json's bytes.
fn write_opening(out: &mut Vec<u8>, ts: &[u8], conn: u64, dir: Option<Direction>) {
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(ts);
    out.extend_from_slice(b"\",\"conn\":");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{conn}");
    out.extend_from_slice(match dir {
        None => b",\"dir\":null",
        Some(Direction::Up) => b",\"dir\":\"up\"",
        Some(Direction::Down) => b",\"dir\":\"down\"",
    });
    out.extend_from_slice(b",\"event\":\"stanza\"");
}

/// The rest of a `stanza` record after its [`write_opening`], up to its closing brace.
///
/// The XML is tested once for bytes to escape. Servers rarely write quotes, backslashes or line breaks into
/// stanzas, so it usually has none, and then neither have the values read from its start tag (they are slices
/// of it): those are copied as they are.
fn write_fields<'a>(out: &mut Vec<u8>, stanza: &StanzaView<'a>) {
    let xml = stanza.xml.as_bytes();
    let plain_xml = !needs_escape(xml);
    let plain = |value: &str| plain_xml && lies_within(value.as_bytes(), xml);
    let with_plain = |value: Option<&'a str>| value.map(|value| (value, plain(value)));
    field(out, b",\"name\":\"", with_plain(Some(stanza.name)));
    field(out, b",\"ns\":\"", with_plain(stanza.ns));
    field(out, b",\"type\":\"", with_plain(stanza.kind));
    field(out, b",\"id\":\"", with_plain(stanza.id));
    field(out, b",\"from\":\"", with_plain(stanza.from));
    field(out, b",\"to\":\"", with_plain(stanza.to));
    field(out, b",\"xml\":\"", Some((stanza.xml, plain_xml)));
    field(out, b",\"pair\":\"", with_plain(stanza.pair));
    if stanza.redacted {
        out.extend_from_slice(b",\"redacted\":true");
    }
    out.push(b'}');
}

/// `opening` (`,"name":"`), the value as in a JSON string and its closing quote (nothing for `None`). A value
/// known to need no escape (`true`) is copied as it is.
#[inline(always)]
fn field(out: &mut Vec<u8>, opening: &[u8], value: Option<(&str, bool)>) {
    if let Some((value, plain)) = value {
        out.extend_from_slice(opening);
        if plain || !needs_escape(value.as_bytes()) {
            out.extend_from_slice(value.as_bytes());
        } else {
            escape_bytewise(out, value.as_bytes());
        }
        out.push(b'"');
    }
}

/// Whether any of `bytes` is a quote, a backslash or a control character: something a JSON string escapes.
/// Tested sixteen bytes at a time without an early exit (a few SSE2 instructions per chunk), the last chunk
/// overlapping the one before it. Fewer than sixteen bytes (most head values) are read as two overlapping
/// words, or byte by byte under eight: copying them into a padded chunk would make the CPU wait for the
/// copy's stores before it could load the chunk.
fn needs_escape(bytes: &[u8]) -> bool {
    let quote = u8x16::splat(b'"');
    let backslash = u8x16::splat(b'\\');
    let last_control = u8x16::splat(0x1f);
    let escapes =
        |v: u8x16| v.simd_eq(quote) | v.simd_eq(backslash) | v.min(last_control).simd_eq(v);
    let Some(&last) = bytes.last_chunk::<16>() else {
        return match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
            (Some(&first), Some(&last)) => word_escapes(first) || word_escapes(last),
            _ => bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\'),
        };
    };
    let (chunks, _) = bytes.as_chunks::<16>();
    let any = chunks
        .iter()
        .fold(escapes(u8x16::new(last)), |any, &chunk| {
            any | escapes(u8x16::new(chunk))
        });
    any.to_bitmask() != 0
}

/// [`needs_escape`] for eight bytes in a word: whether one is below 0x20, or a quote or a backslash (the
/// classic tests for a zero byte and a byte below n, which are exact about whether there is one).
fn word_escapes(bytes: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let word = u64::from_ne_bytes(bytes);
    let below = |n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    below(0x20) | zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
        != 0
}

/// A JSON string's content with serde_json's escapes: `\"`, `\\`, the short forms of backspace, tab, line
/// feed, form feed and carriage return, `\u00xx` for the other control characters; everything else as it is.
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

    /// Every length around the word and chunk sizes, every position, every byte, among ASCII letters or among
    /// bytes next to the ones that escape and non-ASCII bytes (which the word test must not mistake for them):
    /// true exactly when one byte escapes.
    #[test]
    fn needs_escape_sees_every_position() {
        let neighbours = [
            b'!', 0x80, b'#', 0xff, b'[', b']', 0xa0, 0xdc, b' ', 0xc3, 0xa2,
        ];
        for len in 0..=50 {
            let letters = vec![b'a'; len];
            let mixed: Vec<u8> = neighbours.iter().copied().cycle().take(len).collect();
            for plain in [letters, mixed] {
                assert!(!needs_escape(&plain), "{plain:?}");
                for at in 0..len {
                    for b in 0..=u8::MAX {
                        let mut bytes = plain.clone();
                        bytes[at] = b;
                        let escapes = b < 0x20 || b == b'"' || b == b'\\';
                        assert_eq!(needs_escape(&bytes), escapes, "{bytes:?}");
                    }
                }
            }
        }
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
                    write_opening(&mut fast, &ts, view.conn, view.dir);
                    write_fields(&mut fast, &view);
                    let serde = serde_json::to_vec(&event).expect("serializes");
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&serde)
                    );
                }
            }
        }
        // Values read from the XML's start tag (slices of it, as `RunView::view` gives them), with and without
        // something to escape in the XML; and a value that is not a slice of it, to escape while the XML needs
        // nothing.
        let bytes = Bytes::new();
        for xml in [
            "<message id='plain' to='b@b.example'><body>x</body></message>",
            "<message id='a\"b' to='b\\@b.example'><body>\n</body></message>",
            "<message id='a\"b' to='b@b.example'/>",
        ] {
            let slice = |from: &str| {
                let at = xml.find(from).expect("in the XML") + from.len();
                let len = xml[at..].find('\'').expect("a closing quote");
                &xml[at..at + len]
            };
            let view = StanzaView {
                ts: OffsetDateTime::UNIX_EPOCH,
                conn: 1,
                dir: None,
                name: &xml[1..8],
                ns: Some("jabber:\"server"),
                kind: None,
                id: Some(slice("id='")),
                from: None,
                to: Some(slice("to='")),
                xml,
                buf: &bytes,
                pair: Some("a->b"),
                redacted: false,
            };
            let mut fast = Vec::new();
            write_opening(
                &mut fast,
                b"1970-01-01T00:00:00.000000Z",
                view.conn,
                view.dir,
            );
            write_fields(&mut fast, &view);
            let serde = serde_json::to_vec(&view.to_event()).expect("serializes");
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&serde)
            );
        }
        // What the hand-written path leaves to serde_json.
        let mut event = stanza("<iq/>", None, true);
        event.notes.verifies = Some(ConnRef { conn: 1 });
        assert!(event.stanza_view().is_none());
        let event = Event::now(1, None, EventKind::TapDropped { count: 1 });
        assert!(event.stanza_view().is_none());
        let mut event = stanza("", None, true);
        if let EventKind::Stanza { xml, .. } = &mut event.kind {
            *xml = Xml(Bytes::from_static(b"caf\xe9"));
        }
        assert!(event.stanza_view().is_none(), "not UTF-8");
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
        // Not UTF-8: no view, so written with serde_json, between two viewed stanzas of the same time.
        let mut third = stanza("", None, true);
        third.ts = first.ts;
        if let EventKind::Stanza { xml, .. } = &mut third.kind {
            *xml = Xml(Bytes::from_static(b"\xff"));
        }
        let mut fourth = stanza("<presence/>", Some(Direction::Down), false);
        fourth.ts = first.ts + time::Duration::seconds(1);
        let mut expected = String::new();
        for event in [&first, &second, &third, &second, &fourth] {
            match event.stanza_view() {
                Some(view) => {
                    views.stanza(&view).expect("writes");
                    events.event(&view.to_event()).expect("writes");
                }
                None => {
                    views.event(event).expect("writes");
                    events.event(event).expect("writes");
                }
            }
            expected.push_str(&serde_json::to_string(event).expect("serializes"));
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
