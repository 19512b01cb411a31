//! What the fuzz targets share: a deterministic generator seeded from the input, driving the framer the way a
//! connection does, and checking a frame with quick-xml on its own.
//!
//! Everything here is derived from the input bytes alone, so a crash reproduces from its artifact file.

use quick_xml::events::Event;
use quick_xml::Reader;
use xmpptap::xml::element::{ElementHead, PlainHead, StreamHeader};
use xmpptap::xml::framer::{FrameKind, Framer, HeadSpans, Limits};

/// FNV-1a: a seed that changes whenever the fuzzer changes a byte.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// xorshift64: chunk sizes and other choices that must be the same every time an input is replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// One frame: its kind, bytes and head bytes.
#[derive(Debug, Clone)]
pub struct Framed {
    pub kind: FrameKind,
    pub bytes: Vec<u8>,
    pub head: Vec<u8>,
    /// What the framer's head spans say ([`HeadSpans::one_namespace`]): no element has a prefix or declares a
    /// namespace. `None` when it recorded no spans.
    pub one_namespace: Option<bool>,
}

/// Frames are equal when their kind and bytes are. The spans are a shortcut the framer takes or not depending
/// on how the bytes arrived (a start tag cut between reads is framed without them), so `one_namespace` counts
/// only where both frames have it.
impl PartialEq for Framed {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.bytes == other.bytes
            && self.head == other.head
            && match (self.one_namespace, other.one_namespace) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// How feeding a whole input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte was offered; `rest` is what no frame took (a frame not yet ended).
    NeedMore { rest: Vec<u8> },
    /// The framer refused the stream: the error's condition.
    Error(&'static str),
}

/// Feeds `input` to a fresh framer in chunks of `sizes` (cycled; 0 counts as 1), draining every frame after
/// each chunk, and calling [`Framer::reset`] after a `<proceed` stanza as the session does after STARTTLS.
pub fn frame_in_chunks(input: &[u8], sizes: &[usize], limits: Limits) -> (Vec<Framed>, Outcome) {
    let mut framer = Framer::new(limits);
    // As the relay's framer does when a tap is on.
    framer.record_head_spans(true);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < input.len() {
        let size = sizes.next().copied().unwrap_or(input.len()).max(1);
        let end = input.len().min(at + size);
        buf.extend_from_slice(&input[at..end]);
        at = end;
        loop {
            match framer.next_frame(&buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len > 0, "empty frame {frame:?}");
                    assert!(frame.len <= buf.len(), "frame past the buffer {frame:?}");
                    assert!(
                        frame.head.start < frame.head.end && frame.head.end <= frame.len,
                        "head outside the frame {frame:?}"
                    );
                    assert!(
                        frame.len <= framer.limits().max_stanza_bytes,
                        "frame over the limit {frame:?}"
                    );
                    let framed = Framed {
                        kind: frame.kind,
                        bytes: frame.bytes(&buf).to_vec(),
                        head: frame.head_bytes(&buf).to_vec(),
                        one_namespace: frame.spans.as_ref().map(|spans| spans.one_namespace),
                    };
                    if let Some(spans) = &frame.spans {
                        check_spans(&framed, spans);
                    }
                    buf.drain(..frame.len);
                    if framed.kind == FrameKind::Stanza && framed.head.starts_with(b"<proceed") {
                        framer.reset();
                    }
                    frames.push(framed);
                }
                Ok(None) => break,
                Err(e) => return (frames, Outcome::Error(e.condition())),
            }
        }
    }
    assert_eq!(
        framer.has_partial(&buf),
        !buf.is_empty(),
        "has_partial disagrees with the buffer"
    );
    (frames, Outcome::NeedMore { rest: buf })
}

/// The frames' bytes, concatenated.
pub fn concat(frames: &[Framed]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| f.bytes.iter().copied())
        .collect()
}

/// Checks one frame on its own with a fresh quick-xml reader (which checks end tag names itself): a Stanza is
/// exactly one balanced element, a StreamOpen is an optional declaration, then one start tag, a Whitespace is
/// whitespace and a StreamClose one end tag. Panics with the reason otherwise.
pub fn check_frame(frame: &Framed) {
    let text = String::from_utf8_lossy(&frame.bytes);
    assert!(
        std::str::from_utf8(&frame.bytes).is_ok(),
        "frame is not UTF-8: {text:?}"
    );
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    match frame.kind {
        FrameKind::Whitespace => {
            assert!(frame.bytes.iter().all(ws), "whitespace frame {text:?}");
            assert_eq!(frame.head, frame.bytes);
        }
        FrameKind::StreamClose => {
            assert_eq!(frame.head, frame.bytes);
            let events = events(&frame.bytes, true).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(
                matches!(events.as_slice(), [Kind::End(_)]),
                "stream close {events:?}: {text:?}"
            );
        }
        FrameKind::StreamOpen => {
            assert!(
                frame.bytes.ends_with(&frame.head) && frame.head.starts_with(b"<"),
                "stream open head {text:?}"
            );
            let events = events(&frame.bytes, false).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let tags: Vec<&Kind> = events.iter().filter(|k| **k != Kind::Space).collect();
            let ok = match tags.as_slice() {
                [Kind::Start(name)] | [Kind::Decl, Kind::Start(name)] => {
                    name == "stream" || name.ends_with(":stream")
                }
                _ => false,
            };
            assert!(ok, "stream open {events:?}: {text:?}");
        }
        FrameKind::Stanza => {
            assert!(
                frame.bytes.starts_with(&frame.head)
                    && frame.head.starts_with(b"<")
                    && frame.head.ends_with(b">"),
                "stanza head {:?} of {text:?}",
                String::from_utf8_lossy(&frame.head)
            );
            let events = events(&frame.bytes, false).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            let mut depth = 0usize;
            for (i, event) in events.iter().enumerate() {
                let last = i + 1 == events.len();
                match event {
                    Kind::Empty(_) if i == 0 => assert!(last, "after the root: {text:?}"),
                    Kind::Start(_) | Kind::Empty(_) => {
                        assert!(i == 0 || depth > 0, "second root: {text:?}");
                        if matches!(event, Kind::Start(_)) {
                            depth += 1;
                        }
                    }
                    Kind::End(_) => {
                        depth = depth
                            .checked_sub(1)
                            .unwrap_or_else(|| panic!("unbalanced end: {text:?}"));
                        assert!(depth > 0 || last, "after the root: {text:?}");
                    }
                    Kind::Text | Kind::Space | Kind::CData | Kind::Ref => {
                        assert!(depth > 0, "text outside the root: {text:?}")
                    }
                    Kind::Decl | Kind::Other => panic!("{event:?} in a stanza: {text:?}"),
                }
            }
            assert_eq!(depth, 0, "unclosed: {text:?}");
            check_plain_head(&frame.head);
        }
    }
}

/// The head spans the framer recorded for a stanza give what [`PlainHead`] reads of its start tag.
fn check_spans(frame: &Framed, spans: &HeadSpans) {
    let text = std::str::from_utf8(&frame.bytes)
        .unwrap_or_else(|e| panic!("{e}: spans {spans:?} of a frame that is not UTF-8"));
    assert_eq!(
        PlainHead::from_spans(text, spans),
        PlainHead::parse(&frame.head),
        "the spans {spans:?} and PlainHead differ on {text:?}"
    );
}

/// Where [`PlainHead`] reads a stanza's start tag (the transcript writer's shortcut), it reads what the
/// namespace reader does.
fn check_plain_head(head: &[u8]) {
    let Some(plain) = PlainHead::parse(head) else {
        return;
    };
    let stream = StreamHeader::default();
    let full = ElementHead::parse_with_reader(head, &stream).unwrap_or_else(|e| {
        panic!(
            "{e}: PlainHead read {plain:?} from {:?}",
            String::from_utf8_lossy(head)
        )
    });
    assert_eq!(
        plain,
        full.as_plain(),
        "PlainHead and the namespace reader differ on {:?}",
        String::from_utf8_lossy(head)
    );
}

/// An event, reduced to what the checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Start(String),
    Empty(String),
    End(String),
    /// Text that is all whitespace.
    Space,
    Text,
    CData,
    Ref,
    Decl,
    /// Comment, PI, DOCTYPE.
    Other,
}

/// Tokenizes `bytes` with quick-xml's defaults (end names checked), or says why it cannot. `unmatched_end`
/// allows an end tag without its start (the stream's end tag on its own).
pub fn events(bytes: &[u8], unmatched_end: bool) -> Result<Vec<Kind>, String> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    reader.config_mut().allow_unmatched_ends = unmatched_end;
    let mut out = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("quick-xml: {e} at {}", reader.buffer_position()))?;
        out.push(match event {
            Event::Eof => return Ok(out),
            Event::Start(t) => Kind::Start(t.name().0.to_owned()),
            Event::Empty(t) => Kind::Empty(t.name().0.to_owned()),
            Event::End(t) => Kind::End(t.name().0.to_owned()),
            Event::Text(t) if t.bytes().all(|b| b.is_ascii_whitespace()) => Kind::Space,
            Event::Text(_) => Kind::Text,
            Event::CData(_) => Kind::CData,
            Event::GeneralRef(_) => Kind::Ref,
            Event::Decl(_) => Kind::Decl,
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) => Kind::Other,
        });
    }
}

/// A stream header for inputs that need one before their own bytes.
pub const S2S_HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    to='b.example' from='a.example' id='4e8e1c7c' version='1.0'>";
