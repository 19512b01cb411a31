//! The sans-IO framer: cuts the bytes of one direction of an XMPP stream into frames.
//!
//! A [`Framer`] is handed the unconsumed front of a buffer and answers with the next complete [`Frame`]: the
//! stream header ([`FrameKind::StreamOpen`], including any XML declaration and whitespace before it), one
//! top-level element ([`FrameKind::Stanza`], which covers `<starttls/>`, `<stream:features>`, `<db:result>` and
//! everything else at depth 1), a run of whitespace between elements ([`FrameKind::Whitespace`], the keepalives
//! of RFC 6120 4.6.1) or the stream's end tag ([`FrameKind::StreamClose`]). A frame is only a length: the
//! caller forwards exactly `buf[..frame.len]`, so passthrough is byte-exact.
//!
//! It owns tokenizing (with quick-xml), well-formedness of what it tokenizes, the restrictions of RFC 6120 11.1
//! (no comments, processing instructions, DTDs or entities beyond the five predefined ones) and the size and
//! depth limits. It does not own I/O, buffering (the caller keeps the bytes), namespaces (see
//! [`super::element`]) or what a frame means to the session.
//!
//! # Incremental scanning
//!
//! When the buffer ends inside a frame, [`Framer::next_frame`] returns `Ok(None)` and remembers how far it
//! tokenized; the next call resumes there rather than rescanning the partial frame. Only a tag (or CDATA
//! section) that is itself split is rescanned, and not before a `>` has arrived. The names of open elements are
//! kept as byte ranges into the caller's buffer, which is why the caller must not move the partial frame's
//! bytes except by consuming whole frames.
//!
//! # Whitespace
//!
//! Whitespace between top-level elements is yielded eagerly: a run that reaches the end of the buffer is a
//! frame on its own, and bytes arriving later make another. A lone keepalive therefore goes out at once instead
//! of waiting for the next stanza. Whitespace before the first stream header belongs to the StreamOpen frame.
//!
//! # End of input
//!
//! The framer never sees end of input. Once `next_frame` has returned `Ok(None)`, any byte left in the buffer
//! belongs to a frame that has not ended: at EOF that is a truncated stream ([`Framer::has_partial`]).

use std::fmt;
use std::ops::Range;

use quick_xml::encoding::EncodingError;
use quick_xml::errors::{Error as XmlError, IllFormedError};
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesDecl, BytesStart, Event};
use quick_xml::Reader;

/// The UTF-8 byte order mark. quick-xml drops it silently at the start of its input, so the framer handles it
/// before handing bytes to quick-xml (a reader is started at every resume point, where U+FEFF may be text).
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const CDATA_OPEN: &[u8] = b"<![CDATA[";
/// Attributes compared pairwise for duplicates without allocating; tags with more use quick-xml's check.
const INLINE_ATTRIBUTES: usize = 8;

/// Limits that protect the proxy from peers that never finish a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes, including a frame still being received. ejabberd's default is 262 144.
    pub max_stanza_bytes: usize,
    /// Deepest nesting inside a top-level element; the top-level element itself is at depth 1 and the stream
    /// element is not counted.
    pub max_depth: usize,
}

impl Limits {
    /// Default for [`Limits::max_stanza_bytes`].
    pub const DEFAULT_MAX_STANZA_BYTES: usize = 262_144;
    /// Default for [`Limits::max_depth`].
    pub const DEFAULT_MAX_DEPTH: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: Self::DEFAULT_MAX_STANZA_BYTES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A stream header `<stream:stream ...>`, with the XML declaration and whitespace before it; also a restart.
    StreamOpen,
    /// One complete top-level element.
    Stanza,
    /// Whitespace between top-level elements.
    Whitespace,
    /// The stream's end tag `</stream:stream>`.
    StreamClose,
}

/// One frame at the front of the buffer passed to [`Framer::next_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: FrameKind,
    /// Number of bytes of this frame at the front of the buffer.
    pub len: usize,
    /// Byte range, within the frame, of the top-level start tag: the stream header for StreamOpen, the opening
    /// (or empty-element) tag for Stanza, the whole frame for Whitespace and StreamClose.
    pub head: Range<usize>,
}

impl Frame {
    /// This frame's bytes, given the buffer it was found at the front of.
    pub fn bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[..self.len]
    }

    /// The bytes of this frame's top-level start tag (see [`Frame::head`]).
    pub fn head_bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.head.clone()]
    }
}

/// The constructs RFC 6120 11.1 forbids in an XMPP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    /// `<!-- ... -->`.
    Comment,
    /// `<?target ...?>`, or an XML declaration anywhere but before a stream header.
    ProcessingInstruction,
    /// `<!DOCTYPE ...>`, with or without an internal subset.
    Doctype,
    /// `&name;` other than `&lt;`, `&gt;`, `&amp;`, `&quot;` and `&apos;`.
    EntityReference,
}

impl fmt::Display for Restricted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Comment => "comment",
            Self::ProcessingInstruction => "processing instruction",
            Self::Doctype => "document type declaration",
            Self::EntityReference => "entity reference",
        })
    }
}

/// Why the bytes of a stream cannot be framed. All of them are fatal to the stream: answer with the stream
/// error [`FrameError::condition`] and close. After an error the framer's state is unspecified until
/// [`Framer::reset`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with a stream header: the first element's local name is not `stream`, text
    /// came first, the header is an empty element, or an XML declaration inside the stream is not followed by
    /// a header. Condition `invalid-namespace`, as Prosody answers a missing or wrong stream element.
    #[error("expected a stream header, found {found}")]
    NotAStream {
        /// What came instead, for the log: `<html>`, `text`, ...
        found: String,
    },
    /// A comment, processing instruction, DTD or undeclared entity (RFC 6120 11.1). Condition `restricted-xml`.
    #[error("restricted XML: {0} not allowed in an XMPP stream")]
    Restricted(Restricted),
    /// Text other than whitespace (or CDATA, or a reference) between top-level elements. Condition `bad-format`.
    #[error("text other than whitespace between top-level elements")]
    TextAtTopLevel,
    /// An end tag that does not close the innermost open element. Condition `bad-format`.
    #[error("end tag </{found}> does not match open element <{expected}>")]
    MismatchedEndTag {
        /// The name of the open element (the stream's name at top level).
        expected: String,
        /// The name in the end tag.
        found: String,
    },
    /// Something other than whitespace after the stream's end tag. Condition `bad-format`.
    #[error("data after the end of the stream")]
    AfterClose,
    /// A frame larger than [`Limits::max_stanza_bytes`], complete or not. Condition `policy-violation`.
    #[error("frame larger than {limit} bytes")]
    TooLarge {
        /// The limit exceeded.
        limit: usize,
    },
    /// Elements nested deeper than [`Limits::max_depth`]. Condition `policy-violation`.
    #[error("elements nested deeper than {limit}")]
    TooDeep {
        /// The limit exceeded.
        limit: usize,
    },
    /// Bytes that are not UTF-8. Condition `unsupported-encoding` (RFC 6120 4.9.3.22 names "violating the rules
    /// of the UTF-8 encoding" as its example).
    #[error("stream is not valid UTF-8")]
    InvalidUtf8,
    /// An XML declaration naming an encoding other than UTF-8. Condition `unsupported-encoding`.
    #[error("XML declaration names encoding {0:?}; XMPP requires UTF-8")]
    UnsupportedEncoding(String),
    /// A control character, or a character reference to one, that XML 1.0 does not allow. Condition
    /// `bad-format`.
    #[error("character not allowed in XML 1.0")]
    InvalidChar,
    /// A malformed attribute list in a tag (missing quotes or `=`, duplicate names). Condition `bad-format`.
    #[error("malformed attribute: {0}")]
    Attribute(#[from] AttrError),
    /// Malformed XML the framer found itself. Condition `bad-format`.
    #[error("malformed XML: {0}")]
    Malformed(&'static str),
    /// Malformed XML reported by quick-xml. Condition `bad-format`.
    #[error("malformed XML")]
    Xml(#[source] XmlError),
}

impl FrameError {
    /// The RFC 6120 4.9.3 stream error condition to answer this error with.
    pub fn condition(&self) -> &'static str {
        match self {
            Self::NotAStream { .. } => "invalid-namespace",
            Self::Restricted(_) => "restricted-xml",
            Self::TooLarge { .. } | Self::TooDeep { .. } => "policy-violation",
            Self::InvalidUtf8 | Self::UnsupportedEncoding(_) => "unsupported-encoding",
            Self::TextAtTopLevel
            | Self::MismatchedEndTag { .. }
            | Self::AfterClose
            | Self::InvalidChar
            | Self::Attribute(_)
            | Self::Malformed(_)
            | Self::Xml(_) => "bad-format",
        }
    }
}

/// What ends the tag or reference the buffer ended inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    /// Bytes of the buffer already searched.
    seen: usize,
    /// A reference (ended by `;`, or wrongly by `&` or `<`) rather than markup (ended by `>`).
    reference: bool,
}

/// Where the stream as a whole is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first stream header, or after [`Framer::reset`].
    ExpectHeader,
    /// Between the header and the end tag.
    Open,
    /// After `</stream:stream>`: only whitespace may follow.
    Closed,
}

/// How much of the next frame has been scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Partial {
    /// Nothing (possibly an incomplete tag at the very front, see [`Framer::waiting`]).
    Nothing,
    /// The part of a StreamOpen frame before the header tag: BOM, XML declaration, whitespace.
    Preamble {
        /// Whether the XML declaration has been seen.
        decl: bool,
    },
    /// Inside a top-level element whose start tag is at `head`.
    Element {
        /// The start tag's range in the buffer.
        head: Range<usize>,
    },
}

/// An incremental, byte-exact framer for one direction of an XMPP stream. See the [module docs](self).
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    phase: Phase,
    /// The exact QName of the stream element (`stream:stream`), empty before the first header.
    stream_qname: Vec<u8>,
    partial: Partial,
    /// Offset in the buffer of the first byte not yet tokenized; always at an event boundary.
    scanned: usize,
    /// Names of the open elements of the current frame, as ranges into the buffer.
    open: Vec<Range<usize>>,
    /// When the buffer ended inside a tag or a reference: what ends it, and how many bytes of the buffer have
    /// been searched for that.
    waiting: Option<Waiting>,
    /// Bytes handed to quick-xml, to test that resuming is not quadratic.
    #[cfg(test)]
    work: usize,
}

impl Framer {
    /// A framer expecting a stream header.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            phase: Phase::ExpectHeader,
            stream_qname: Vec::new(),
            partial: Partial::Nothing,
            scanned: 0,
            open: Vec::new(),
            waiting: None,
            #[cfg(test)]
            work: 0,
        }
    }

    /// The limits this framer enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The exact QName of the current stream element (e.g. `stream:stream`), once a header has been framed.
    pub fn stream_name(&self) -> Option<&[u8]> {
        (!self.stream_qname.is_empty()).then_some(self.stream_qname.as_slice())
    }

    /// Stream restart (after STARTTLS or SASL success): expect a new stream header next, with any QName whose
    /// local name is `stream`.
    pub fn reset(&mut self) {
        self.phase = Phase::ExpectHeader;
        self.stream_qname.clear();
        self.forget_partial();
    }

    /// True when the framer is between frames with nothing partially scanned. This says nothing about bytes
    /// the caller holds but has not passed to [`Framer::next_frame`]: after `<proceed/>`, also check that the
    /// buffer is empty.
    pub fn is_idle(&self) -> bool {
        self.partial == Partial::Nothing && self.scanned == 0 && self.waiting.is_none()
    }

    /// Whether `buf`, the bytes left after `next_frame` returned `Ok(None)`, hold the start of a frame. At end
    /// of input that means the stream was truncated. Whitespace between elements is always framed eagerly, so
    /// this is simply whether any byte is left.
    pub fn has_partial(&self, buf: &[u8]) -> bool {
        !buf.is_empty()
    }

    /// Looks at `buf`, which starts at the first byte not yet consumed, and returns the next complete frame.
    ///
    /// `Ok(None)` means more bytes are needed. After `Ok(Some(frame))` the caller consumes exactly `frame.len`
    /// bytes from the front before calling again; after `Ok(None)` it calls again with the same bytes plus any
    /// new ones.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let limit = self.limits.max_stanza_bytes;
        // A frame that has not ended within limit + 1 bytes is too large: never tokenize further than that.
        let window = &buf[..buf.len().min(limit.saturating_add(1))];
        if window.len() < self.scanned {
            // The caller broke the contract (bytes of a partial frame went away). Rescan from the front rather
            // than index out of bounds.
            debug_assert!(false, "buffer shrank under a partial frame");
            self.forget_partial();
        }
        if let Some(Waiting { seen, reference }) = self.waiting {
            // The buffer ended inside a tag or reference (which starts at `scanned`): until what ends it
            // arrives there is nothing new to tokenize, though the new bytes may already show that a tag is
            // malformed (`<<`).
            let new = window.get(seen..).unwrap_or_default();
            let ended = if reference {
                new.iter().any(|&b| matches!(b, b';' | b'&' | b'<'))
            } else {
                new.contains(&b'>')
            };
            if seen <= window.len() && !ended {
                if !reference {
                    self.classify_partial_markup(&window[self.scanned..])?;
                }
                self.waiting = Some(Waiting {
                    seen: window.len(),
                    reference,
                });
                return self.need_more(buf);
            }
            self.waiting = None;
        }

        let mut pos = self.scanned;
        if pos == 0
            && self.phase == Phase::ExpectHeader
            && window.len() < UTF8_BOM.len()
            && !window.is_empty()
            && UTF8_BOM.starts_with(window)
        {
            // Perhaps the start of a byte order mark.
            return self.need_more(buf);
        }
        while window[pos..].starts_with(UTF8_BOM) {
            let allowed = match self.partial {
                Partial::Element { .. } => true,
                Partial::Nothing => self.phase == Phase::ExpectHeader && pos == 0,
                Partial::Preamble { .. } => false,
            };
            if !allowed {
                return Err(self.top_level_text_error());
            }
            if self.partial == Partial::Nothing {
                self.partial = Partial::Preamble { decl: false };
            }
            pos += UTF8_BOM.len();
            self.scanned = pos;
        }

        let rest = &window[pos..];
        #[cfg(test)]
        {
            self.work += rest.len();
        }
        let mut reader = Reader::from_reader(rest);
        let config = reader.config_mut();
        // Our own stack of names checks end tags, across calls; quick-xml's would start empty at each resume.
        config.check_end_names = false;
        config.allow_unmatched_ends = true;
        config.allow_dangling_amp = false;
        config.expand_empty_elements = false;
        config.trim_text(false);
        let origin = pos;
        loop {
            let event = reader.read_event();
            // The reader's position never exceeds `rest.len()`, so it fits in usize.
            let end = origin + reader.buffer_position() as usize;
            match event {
                Ok(Event::Eof) => break,
                Ok(event) => {
                    check_chars(&window[pos..end])?;
                    if let Some(frame) = self.on_event(event, window, pos, end)? {
                        return Ok(Some(frame));
                    }
                    pos = end;
                    self.scanned = end;
                }
                Err(error) => {
                    self.on_incomplete(error, window, pos)?;
                    break;
                }
            }
        }
        self.need_more(buf)
    }

    /// Handles one complete event spanning `window[start..end]`; returns a frame if it completes one.
    fn on_event(
        &mut self,
        event: Event<'_>,
        window: &[u8],
        start: usize,
        end: usize,
    ) -> Result<Option<Frame>, FrameError> {
        let at_top = self.open.is_empty();
        match event {
            Event::Text(_) if !at_top => Ok(None),
            Event::Text(_) => {
                if !window[start..end].iter().all(|&b| is_xml_space(b)) {
                    return Err(self.top_level_text_error());
                }
                match (&self.partial, self.phase) {
                    (Partial::Nothing, Phase::ExpectHeader) => {
                        self.partial = Partial::Preamble { decl: false };
                        Ok(None)
                    }
                    (Partial::Nothing, _) => {
                        // Whitespace can be cut anywhere: a run longer than the limit is several frames.
                        let len = end.min(self.limits.max_stanza_bytes.max(1));
                        self.complete(FrameKind::Whitespace, len, 0..len)
                    }
                    _ => Ok(None),
                }
            }
            Event::GeneralRef(reference) => {
                check_reference(&reference)?;
                if at_top {
                    Err(self.top_level_text_error())
                } else {
                    Ok(None)
                }
            }
            Event::CData(_) if at_top => Err(self.top_level_text_error()),
            Event::CData(_) => Ok(None),
            Event::Comment(_) => Err(FrameError::Restricted(Restricted::Comment)),
            Event::DocType(_) => Err(FrameError::Restricted(Restricted::Doctype)),
            Event::PI(_) => Err(FrameError::Restricted(Restricted::ProcessingInstruction)),
            Event::Decl(decl) => {
                if !(at_top && self.decl_allowed()) {
                    return Err(FrameError::Restricted(Restricted::ProcessingInstruction));
                }
                check_decl(&decl)?;
                self.partial = Partial::Preamble { decl: true };
                Ok(None)
            }
            Event::Start(tag) => self.on_start(&tag, false, start, end),
            Event::Empty(tag) => self.on_start(&tag, true, start, end),
            Event::End(tag) => self.on_end(tag.name().0, window, end),
            // Handled by the caller; nothing to do if it ever got here.
            Event::Eof => Ok(None),
        }
    }

    fn on_start(
        &mut self,
        tag: &BytesStart<'_>,
        empty: bool,
        start: usize,
        end: usize,
    ) -> Result<Option<Frame>, FrameError> {
        let name = tag.name().0;
        if !is_qname(name.as_bytes()) {
            return Err(FrameError::Malformed("invalid element name"));
        }
        check_attributes(tag)?;
        // The name follows the `<` immediately (checked by is_qname: it cannot be empty).
        let name_range = start + 1..start + 1 + name.len();
        let depth = self.open.len() + 1;
        if depth > 1 {
            if depth > self.limits.max_depth {
                return Err(FrameError::TooDeep {
                    limit: self.limits.max_depth,
                });
            }
            if !empty {
                self.open.push(name_range);
            }
            return Ok(None);
        }
        match (&self.partial, self.phase) {
            (Partial::Preamble { .. }, _) | (Partial::Nothing, Phase::ExpectHeader) => {
                if tag.local_name().into_inner() != "stream" {
                    return Err(FrameError::NotAStream {
                        found: format!("<{name}>"),
                    });
                }
                if empty {
                    return Err(FrameError::NotAStream {
                        found: format!("empty <{name}/>"),
                    });
                }
                self.open_stream(name);
                self.complete(FrameKind::StreamOpen, end, start..end)
            }
            (Partial::Nothing, Phase::Open) if name.as_bytes() == self.stream_qname => {
                if empty {
                    return Err(FrameError::Malformed("stream header is an empty element"));
                }
                self.open_stream(name);
                self.complete(FrameKind::StreamOpen, end, start..end)
            }
            (Partial::Nothing, Phase::Open) => {
                if depth > self.limits.max_depth {
                    return Err(FrameError::TooDeep {
                        limit: self.limits.max_depth,
                    });
                }
                if empty {
                    return self.complete(FrameKind::Stanza, end, start..end);
                }
                self.open.push(name_range);
                self.partial = Partial::Element { head: start..end };
                Ok(None)
            }
            (Partial::Nothing, Phase::Closed) => Err(FrameError::AfterClose),
            // An open element implies a non-empty stack, so depth > 1 above.
            (Partial::Element { .. }, _) => Ok(None),
        }
    }

    fn on_end(
        &mut self,
        name: &str,
        window: &[u8],
        end: usize,
    ) -> Result<Option<Frame>, FrameError> {
        if let Some(open) = self.open.pop() {
            let expected = &window[open];
            if expected != name.as_bytes() {
                return Err(FrameError::MismatchedEndTag {
                    expected: String::from_utf8_lossy(expected).into_owned(),
                    found: name.to_owned(),
                });
            }
            if !self.open.is_empty() {
                return Ok(None);
            }
            let head = match std::mem::replace(&mut self.partial, Partial::Nothing) {
                Partial::Element { head } => head,
                // The element's start tag always records its head; fall back to the whole frame.
                _ => 0..end,
            };
            return self.complete(FrameKind::Stanza, end, head);
        }
        match (&self.partial, self.phase) {
            (Partial::Nothing, Phase::Open) if name.as_bytes() == self.stream_qname => {
                self.phase = Phase::Closed;
                self.complete(FrameKind::StreamClose, end, 0..end)
            }
            (Partial::Nothing, Phase::Open) => Err(FrameError::MismatchedEndTag {
                expected: String::from_utf8_lossy(&self.stream_qname).into_owned(),
                found: name.to_owned(),
            }),
            (Partial::Nothing, Phase::Closed) => Err(FrameError::AfterClose),
            _ => Err(FrameError::NotAStream {
                found: format!("</{name}>"),
            }),
        }
    }

    /// Handles an error from quick-xml: returns `Ok(())` when it only means the buffer ends inside an event
    /// that starts at `window[pos]`, or the error to report.
    fn on_incomplete(
        &mut self,
        error: XmlError,
        window: &[u8],
        pos: usize,
    ) -> Result<(), FrameError> {
        let rest = &window[pos..];
        match error {
            // All syntax errors but one are "input ended inside markup"; classify the markup ourselves.
            XmlError::Syntax(_) => {
                self.classify_partial_markup(rest)?;
                self.waiting = Some(Waiting {
                    seen: window.len(),
                    reference: false,
                });
                Ok(())
            }
            XmlError::IllFormed(IllFormedError::UnclosedReference) => {
                // quick-xml reports this both when the input ends after `&name` and when `&` or `<` follows.
                if self.open.is_empty() {
                    Err(self.top_level_text_error())
                } else if rest
                    .get(1..)
                    .unwrap_or_default()
                    .iter()
                    .any(|&b| matches!(b, b';' | b'&' | b'<'))
                {
                    Err(FrameError::Malformed("'&' does not start a reference"))
                } else {
                    self.waiting = Some(Waiting {
                        seen: window.len(),
                        reference: true,
                    });
                    Ok(())
                }
            }
            XmlError::IllFormed(IllFormedError::MissingDoctypeName) => {
                Err(FrameError::Restricted(Restricted::Doctype))
            }
            XmlError::Encoding(EncodingError::Utf8(utf8)) => {
                let truncated = utf8.error_len().is_none();
                if self.open.is_empty() {
                    // Anything non-ASCII at top level is text, hence an error either way.
                    return Err(if truncated {
                        self.top_level_text_error()
                    } else {
                        FrameError::InvalidUtf8
                    });
                }
                let valid = utf8.valid_up_to();
                // Only text can end in a truncated character at the end of input: markup and references are
                // complete when quick-xml decodes them.
                let in_text = !matches!(rest.first(), Some(b'<' | b'&'));
                if truncated && in_text && rest[valid..].iter().all(|&b| b >= 0x80) {
                    check_chars(&rest[..valid])?;
                    // Text may be resumed anywhere between characters.
                    self.scanned = pos + valid;
                    return Ok(());
                }
                Err(FrameError::InvalidUtf8)
            }
            other => Err(FrameError::Xml(other)),
        }
    }

    /// `rest` starts with `<` and quick-xml found no end to it. Decide whether it can still become something
    /// allowed here (`Ok`) or is already an error.
    fn classify_partial_markup(&self, rest: &[u8]) -> Result<(), FrameError> {
        let at_top = self.open.is_empty();
        if at_top && self.phase == Phase::Closed {
            return Err(FrameError::AfterClose);
        }
        match rest.get(1) {
            None => Ok(()),
            Some(b'!') => match rest.get(2) {
                None => Ok(()),
                Some(b'-') => Err(FrameError::Restricted(Restricted::Comment)),
                Some(b'D' | b'd') => Err(FrameError::Restricted(Restricted::Doctype)),
                Some(b'[') => {
                    let n = rest.len().min(CDATA_OPEN.len());
                    if rest[..n] != CDATA_OPEN[..n] {
                        Err(FrameError::Malformed("invalid '<!' markup"))
                    } else if at_top {
                        Err(self.top_level_text_error())
                    } else {
                        Ok(())
                    }
                }
                Some(_) => Err(FrameError::Malformed("invalid '<!' markup")),
            },
            Some(b'?') => {
                const DECL: &[u8] = b"<?xml";
                let n = rest.len().min(DECL.len());
                let looks_like_decl = rest[..n] == DECL[..n]
                    && rest
                        .get(DECL.len())
                        .is_none_or(|&b| is_xml_space(b) || b == b'?');
                if at_top && self.decl_allowed() && looks_like_decl {
                    Ok(())
                } else {
                    Err(FrameError::Restricted(Restricted::ProcessingInstruction))
                }
            }
            Some(b'/') => match rest.get(2) {
                Some(&b) if !is_name_start(b) => Err(FrameError::Malformed("invalid end tag")),
                _ => Ok(()),
            },
            Some(&b) if is_name_start(b) => Ok(()),
            Some(_) => Err(FrameError::Malformed("'<' not followed by a name")),
        }
    }

    /// Whether an XML declaration may come now (at top level): first thing of a stream, or starting a restart.
    fn decl_allowed(&self) -> bool {
        match self.partial {
            Partial::Nothing => self.phase != Phase::Closed,
            Partial::Preamble { decl } => !decl && self.phase == Phase::ExpectHeader,
            Partial::Element { .. } => false,
        }
    }

    fn top_level_text_error(&self) -> FrameError {
        match (&self.partial, self.phase) {
            (Partial::Preamble { .. }, _) | (_, Phase::ExpectHeader) => FrameError::NotAStream {
                found: "text".to_owned(),
            },
            (_, Phase::Closed) => FrameError::AfterClose,
            _ => FrameError::TextAtTopLevel,
        }
    }

    fn open_stream(&mut self, name: &str) {
        self.phase = Phase::Open;
        self.stream_qname.clear();
        self.stream_qname.extend_from_slice(name.as_bytes());
    }

    fn complete(
        &mut self,
        kind: FrameKind,
        len: usize,
        head: Range<usize>,
    ) -> Result<Option<Frame>, FrameError> {
        if len > self.limits.max_stanza_bytes {
            return Err(FrameError::TooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        self.forget_partial();
        Ok(Some(Frame { kind, len, head }))
    }

    fn need_more(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        // Every byte of the buffer belongs to the unfinished frame.
        if buf.len() > self.limits.max_stanza_bytes {
            return Err(FrameError::TooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        Ok(None)
    }

    fn forget_partial(&mut self) {
        self.partial = Partial::Nothing;
        self.scanned = 0;
        self.open.clear();
        self.waiting = None;
    }
}

/// XML's `S`: space, tab, CR, LF.
fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A byte that can start an XML name (any non-ASCII byte is accepted: names are checked, not validated).
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_name_byte(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// A name with at most one colon, which separates two non-empty names (Namespaces in XML's QName).
fn is_qname(name: &[u8]) -> bool {
    let mut parts = name.splitn(2, |&b| b == b':');
    let is_ncname = |part: &[u8]| {
        part.first().is_some_and(|&b| is_name_start(b)) && part.iter().all(|&b| is_name_byte(b))
    };
    parts.next().is_some_and(is_ncname) && parts.next().is_none_or(is_ncname)
}

/// Rejects the C0 control characters XML 1.0 does not allow (all but tab, CR and LF).
fn check_chars(bytes: &[u8]) -> Result<(), FrameError> {
    if bytes.iter().any(|&b| b < 0x20 && !is_xml_space(b)) {
        return Err(FrameError::InvalidChar);
    }
    Ok(())
}

/// `Char` of XML 1.0.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Checks what is between `&` and `;`: a predefined entity or a character reference. Anything else would
/// refer to a declared entity (or not even that): restricted either way.
fn check_reference(name: &str) -> Result<(), FrameError> {
    let Some(number) = name.strip_prefix('#') else {
        return match name {
            "lt" | "gt" | "amp" | "quot" | "apos" => Ok(()),
            _ => Err(FrameError::Restricted(Restricted::EntityReference)),
        };
    };
    let code = match number.strip_prefix('x') {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16)
        }
        None if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => number.parse(),
        _ => return Err(FrameError::Malformed("invalid character reference")),
    };
    match code.ok().and_then(char::from_u32) {
        Some(c) if is_xml_char(c) => Ok(()),
        _ => Err(FrameError::InvalidChar),
    }
}

/// Checks a raw attribute value: no `<`, every `&` starts an allowed reference.
fn check_attribute_value(value: &str) -> Result<(), FrameError> {
    let bytes = value.as_bytes();
    if bytes.contains(&b'<') {
        return Err(FrameError::Malformed("'<' in an attribute value"));
    }
    let mut from = 0;
    while let Some(amp) = bytes[from..].iter().position(|&b| b == b'&') {
        let name_start = from + amp + 1;
        let Some(semi) = bytes[name_start..].iter().position(|&b| b == b';') else {
            return Err(FrameError::Malformed("'&' does not start a reference"));
        };
        check_reference(&value[name_start..name_start + semi])?;
        from = name_start + semi + 1;
    }
    Ok(())
}

/// Checks a tag's attributes: syntax, names, values, and uniqueness (pairwise for the usual few attributes,
/// which does not allocate, with quick-xml's check beyond that).
fn check_attributes(tag: &BytesStart<'_>) -> Result<(), FrameError> {
    let mut keys = [""; INLINE_ATTRIBUTES];
    let mut count = 0;
    for attribute in tag.attributes().with_checks(false) {
        let attribute = attribute?;
        let key = attribute.key.0;
        if !is_qname(key.as_bytes()) {
            return Err(FrameError::Malformed("invalid attribute name"));
        }
        check_attribute_value(&attribute.value)?;
        if count < INLINE_ATTRIBUTES && keys[..count].contains(&key) {
            return Err(FrameError::Malformed("duplicate attribute"));
        }
        if count < INLINE_ATTRIBUTES {
            keys[count] = key;
        }
        count += 1;
    }
    if count > INLINE_ATTRIBUTES {
        for attribute in tag.attributes() {
            attribute?;
        }
    }
    Ok(())
}

fn check_decl(decl: &BytesDecl<'_>) -> Result<(), FrameError> {
    if decl.version().is_err() {
        return Err(FrameError::Malformed("XML declaration without version"));
    }
    match decl.encoding() {
        Some(Ok(encoding)) if !encoding.eq_ignore_ascii_case("utf-8") => {
            Err(FrameError::UnsupportedEncoding(encoding.into_owned()))
        }
        Some(Err(error)) => Err(FrameError::Attribute(error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        to='b.example' from='a.example' id='4e8e1c7c' version='1.0'>";

    /// One side of a dialback S2S stream, as Prosody writes it (joined into one direction for the test).
    fn s2s_stream() -> (String, Vec<FrameKind>) {
        use FrameKind::*;
        let parts: &[(&str, FrameKind)] = &[
            (HEADER, StreamOpen),
            (
                "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
                 <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
                Stanza,
            ),
            ("\n", Whitespace),
            (
                "<db:result from='a.example' to='b.example'>\
                 b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3</db:result>",
                Stanza,
            ),
            ("<db:verify from='b.example' to='a.example' id='4e8e1c7c' type='valid'/>", Stanza),
            (" ", Whitespace),
            (
                "<message from='alice@a.example/phone' to='bob@b.example' type='chat' id='m&amp;1' \
                 xml:lang='en'><body>Caf\u{e9} &amp; &lt;tea&gt; at 5 &#x263A; &#9731; \"q\" 'a'</body>\
                 <thread>t1</thread><x xmlns='jabber:x:oob'><url>http://x.example/?a=1&amp;b=2</url></x>\
                 </message>",
                Stanza,
            ),
            ("\n\n", Whitespace),
            (
                "<iq type='get' id='ping1' from='a.example' to='b.example'><ping xmlns='urn:xmpp:ping'/></iq>",
                Stanza,
            ),
            (" \t\r\n", Whitespace),
            ("</stream:stream>", StreamClose),
        ];
        (
            parts.iter().map(|(s, _)| *s).collect(),
            parts.iter().map(|(_, k)| *k).collect(),
        )
    }

    /// A framed piece: its kind, bytes and head bytes.
    type Framed = (FrameKind, Vec<u8>, Vec<u8>);

    /// Feeds `chunks` in turn through a framer the way a connection would, draining frames after each.
    fn feed<'a>(
        framer: &mut Framer,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Framed>, FrameError> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = framer.next_frame(&buf)? {
                assert!(frame.len > 0, "empty frame");
                assert!(frame.head.start < frame.head.end && frame.head.end <= frame.len);
                frames.push((
                    frame.kind,
                    frame.bytes(&buf).to_vec(),
                    frame.head_bytes(&buf).to_vec(),
                ));
                buf.drain(..frame.len);
            }
        }
        assert!(
            !framer.has_partial(&buf),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        Ok(frames)
    }

    fn feed_all(input: &[u8]) -> Result<Vec<Framed>, FrameError> {
        feed(&mut Framer::new(Limits::default()), [input])
    }

    /// Kinds with adjacent whitespace frames merged (whitespace is framed eagerly, so a split point inside
    /// a run makes two frames).
    fn kinds(frames: &[Framed]) -> Vec<FrameKind> {
        let mut kinds: Vec<FrameKind> = frames.iter().map(|f| f.0).collect();
        kinds.dedup_by(|a, b| *a == FrameKind::Whitespace && *b == FrameKind::Whitespace);
        kinds
    }

    fn concat(frames: &[Framed]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.1.iter().copied()).collect()
    }

    /// Every stanza parses completely with quick-xml on its own, and every head is a start tag.
    fn check_frames(frames: &[Framed]) {
        for (kind, bytes, head) in frames {
            assert!(std::str::from_utf8(bytes).is_ok());
            match kind {
                FrameKind::Stanza => {
                    assert!(head.starts_with(b"<") && head.ends_with(b">"));
                    let mut reader = Reader::from_reader(bytes.as_slice());
                    loop {
                        match reader.read_event() {
                            Ok(Event::Eof) => break,
                            Ok(_) => {}
                            Err(e) => panic!("stanza does not parse: {e}"),
                        }
                    }
                }
                FrameKind::StreamOpen => assert!(head.starts_with(b"<") && head.ends_with(b">")),
                FrameKind::Whitespace => {
                    assert!(bytes.iter().all(|&b| is_xml_space(b)) && head == bytes)
                }
                FrameKind::StreamClose => assert!(bytes.starts_with(b"</") && head == bytes),
            }
        }
    }

    fn expect_err(input: &[u8]) -> FrameError {
        match feed_all(input) {
            Ok(frames) => panic!(
                "accepted {:?}: {:?}",
                String::from_utf8_lossy(input),
                kinds(&frames)
            ),
            Err(e) => e,
        }
    }

    /// Feeds `input` after a stream header and returns the error.
    fn expect_err_in_stream(input: &str) -> FrameError {
        expect_err(format!("{HEADER}{input}").as_bytes())
    }

    #[test]
    fn whole_stream() {
        let (input, expected) = s2s_stream();
        let frames = feed_all(input.as_bytes()).expect("frames");
        assert_eq!(kinds(&frames), expected);
        assert_eq!(concat(&frames), input.as_bytes());
        check_frames(&frames);
        // Heads are the top-level start tags.
        assert!(frames[0]
            .2
            .starts_with(b"<stream:stream xmlns='jabber:server'"));
        assert!(frames[0].1.starts_with(b"<?xml version='1.0'?>"));
        assert_eq!(frames[1].2, b"<stream:features>");
        assert_eq!(frames[3].2, b"<db:result from='a.example' to='b.example'>");
        assert_eq!(
            frames[4].2, frames[4].1,
            "empty element: head is the whole frame"
        );
    }

    #[test]
    fn every_split_point() {
        let (input, expected) = s2s_stream();
        let input = input.as_bytes();
        for i in 0..=input.len() {
            let mut framer = Framer::new(Limits::default());
            let frames = feed(&mut framer, [&input[..i], &input[i..]])
                .unwrap_or_else(|e| panic!("split at {i}: {e}"));
            assert_eq!(concat(&frames), input, "split at {i}");
            assert_eq!(kinds(&frames), expected, "split at {i}");
            check_frames(&frames);
        }
    }

    #[test]
    fn byte_by_byte() {
        let (input, expected) = s2s_stream();
        let frames = feed(
            &mut Framer::new(Limits::default()),
            input.as_bytes().chunks(1),
        )
        .expect("frames");
        assert_eq!(concat(&frames), input.as_bytes());
        assert_eq!(kinds(&frames), expected);
        check_frames(&frames);
    }

    #[test]
    fn partial_tag_needs_more_then_completes() {
        let mut framer = Framer::new(Limits::default());
        let mut buf = HEADER.as_bytes().to_vec();
        let open = framer.next_frame(&buf).expect("ok").expect("header");
        assert_eq!(open.kind, FrameKind::StreamOpen);
        buf.drain(..open.len);
        assert!(framer.is_idle());
        buf.extend_from_slice(b"<message to='a");
        assert_eq!(
            framer.next_frame(&buf).expect("incomplete, not malformed"),
            None
        );
        assert!(!framer.is_idle());
        buf.extend_from_slice(b"@b' type='chat'><body>hi &am");
        assert_eq!(framer.next_frame(&buf).expect("partial reference"), None);
        buf.extend_from_slice(b"p; there</body></mess");
        assert_eq!(framer.next_frame(&buf).expect("partial end tag"), None);
        buf.extend_from_slice(b"age>");
        let frame = framer.next_frame(&buf).expect("ok").expect("stanza");
        assert_eq!((frame.kind, frame.len), (FrameKind::Stanza, buf.len()));
        assert_eq!(frame.head_bytes(&buf), b"<message to='a@b' type='chat'>");
        assert!(framer.is_idle());
    }

    #[test]
    fn whitespace_is_framed_eagerly() {
        let mut framer = Framer::new(Limits::default());
        let buf = HEADER.as_bytes();
        let open = framer.next_frame(buf).expect("ok").expect("header");
        assert_eq!(open.len, buf.len());
        // A lone keepalive goes out at once, without waiting for what follows.
        let frame = framer.next_frame(b" ").expect("ok").expect("keepalive");
        assert_eq!(
            (frame.kind, frame.len, frame.head),
            (FrameKind::Whitespace, 1, 0..1)
        );
        let frame = framer
            .next_frame(b"\n\n<r")
            .expect("ok")
            .expect("whitespace before a tag");
        assert_eq!((frame.kind, frame.len), (FrameKind::Whitespace, 2));
        assert_eq!(framer.next_frame(b"<r").expect("ok"), None);
        assert_eq!(framer.next_frame(b"").expect("ok"), None);
        // Whitespace before the first header belongs to the header frame.
        let mut framer = Framer::new(Limits::default());
        assert_eq!(framer.next_frame(b"\n ").expect("ok"), None);
        let input = format!("\n {HEADER}");
        let open = framer
            .next_frame(input.as_bytes())
            .expect("ok")
            .expect("header");
        assert_eq!((open.kind, open.len), (FrameKind::StreamOpen, input.len()));
        assert!(input.as_bytes()[open.head].starts_with(b"<stream:stream"));
    }

    #[test]
    fn restart_after_proceed_with_reset() {
        let receiver = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' id='abc' version='1.0'>\
            <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>\
            <proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
        let mut framer = Framer::new(Limits::default());
        let frames = feed(&mut framer, [receiver.as_bytes()]).expect("frames");
        assert_eq!(
            kinds(&frames),
            [FrameKind::StreamOpen, FrameKind::Stanza, FrameKind::Stanza]
        );
        assert_eq!(
            frames[2].1,
            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        );
        assert!(framer.is_idle(), "nothing buffered past <proceed/>");
        framer.reset();
        assert_eq!(framer.stream_name(), None);
        // After TLS: a fresh header, with an XML declaration, then features.
        let after = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' id='def' version='1.0'>\
            <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";
        let frames = feed(&mut framer, after.as_bytes().chunks(7)).expect("frames");
        assert_eq!(kinds(&frames), [FrameKind::StreamOpen, FrameKind::Stanza]);
        assert_eq!(concat(&frames), after.as_bytes());
        assert_eq!(framer.stream_name(), Some(&b"stream:stream"[..]));
    }

    #[test]
    fn restart_inside_stream_without_reset() {
        // After SASL success the initiator simply sends a new header on the same stream.
        let input = format!(
            "{HEADER}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>{HEADER} \
             <stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b'>"
        );
        let frames = feed_all(input.as_bytes()).expect("frames");
        use FrameKind::*;
        assert_eq!(
            kinds(&frames),
            [StreamOpen, Stanza, StreamOpen, Whitespace, StreamOpen]
        );
        assert_eq!(concat(&frames), input.as_bytes());
        assert!(frames[2].1.starts_with(b"<?xml"));
        for i in 0..=input.len() {
            let frames = feed(
                &mut Framer::new(Limits::default()),
                [&input.as_bytes()[..i], &input.as_bytes()[i..]],
            )
            .unwrap_or_else(|e| panic!("split at {i}: {e}"));
            assert_eq!(concat(&frames), input.as_bytes());
        }
    }

    #[test]
    fn cdata_and_tricky_attribute_values() {
        let stanzas = [
            "<message><body><![CDATA[<not a='tag'/> & ]] > ]]></body></message>",
            "<message a='x > y' b=\"/>\" c='/>'><body/></message>",
            "<presence a='a&gt;b' b='&#60;'/>",
            "<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>key</db:result>",
        ];
        for stanza in stanzas {
            let input = format!("{HEADER}{stanza}");
            for i in 0..=input.len() {
                let frames = feed(
                    &mut Framer::new(Limits::default()),
                    [&input.as_bytes()[..i], &input.as_bytes()[i..]],
                )
                .unwrap_or_else(|e| panic!("{stanza} split at {i}: {e}"));
                assert_eq!(
                    kinds(&frames),
                    [FrameKind::StreamOpen, FrameKind::Stanza],
                    "{stanza}"
                );
                assert_eq!(frames[1].1, stanza.as_bytes());
            }
        }
        let frames = feed_all(format!("{HEADER}{}", stanzas[1]).as_bytes()).expect("frames");
        assert_eq!(frames[1].2, b"<message a='x > y' b=\"/>\" c='/>'>");
    }

    #[test]
    fn bom_and_non_ascii_text() {
        // A BOM before the header belongs to it; U+FEFF inside text is text, also at a resume point.
        let input = format!(
            "\u{feff}{HEADER}<message><body>\u{feff}\u{feff}caf\u{e9} \u{1F600}</body></message>"
        );
        for i in 0..=input.len() {
            let frames = feed(
                &mut Framer::new(Limits::default()),
                [&input.as_bytes()[..i], &input.as_bytes()[i..]],
            )
            .unwrap_or_else(|e| panic!("split at {i}: {e}"));
            assert_eq!(concat(&frames), input.as_bytes(), "split at {i}");
        }
        let frames = feed(
            &mut Framer::new(Limits::default()),
            input.as_bytes().chunks(1),
        )
        .expect("frames");
        assert_eq!(concat(&frames), input.as_bytes());
        assert!(matches!(
            expect_err_in_stream("\u{feff}"),
            FrameError::TextAtTopLevel
        ));
    }

    #[test]
    fn rejects_restricted_xml() {
        for (input, what) in [
            ("<message><!-- hi --></message>", Restricted::Comment),
            ("<!-- hi -->", Restricted::Comment),
            ("<message><!-", Restricted::Comment),
            (
                "<message><?php echo 1 ?></message>",
                Restricted::ProcessingInstruction,
            ),
            (
                "<message><?xml version='1.0'?></message>",
                Restricted::ProcessingInstruction,
            ),
            (
                "<?xml-stylesheet href='x'?>",
                Restricted::ProcessingInstruction,
            ),
            (
                "<message><body>&ent;</body></message>",
                Restricted::EntityReference,
            ),
            (
                "<message><body>&nbsp;</body></message>",
                Restricted::EntityReference,
            ),
            ("<message to='&ent;'/>", Restricted::EntityReference),
            ("<!DOCTYPE x>", Restricted::Doctype),
            ("<!DOCTYPE x [<!ENTITY e 'boom'>]>", Restricted::Doctype),
        ] {
            let error = expect_err_in_stream(input);
            assert!(
                matches!(error, FrameError::Restricted(r) if r == what),
                "{input}: {error:?}"
            );
            assert_eq!(error.condition(), "restricted-xml");
        }
        let error = expect_err(format!("<!DOCTYPE stream>{HEADER}").as_bytes());
        assert!(
            matches!(error, FrameError::Restricted(Restricted::Doctype)),
            "{error:?}"
        );
        // An XML declaration after another one, before the header.
        let error = expect_err(format!("<?xml version='1.0'?>{HEADER}").as_bytes());
        assert!(
            matches!(
                error,
                FrameError::Restricted(Restricted::ProcessingInstruction)
            ),
            "{error:?}"
        );
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&str, &str)] = &[
            ("hello", "bad-format"),
            ("<message>hi</message> x", "bad-format"),
            ("&amp;", "bad-format"),
            ("<![CDATA[x]]>", "bad-format"),
            ("<<", "bad-format"),
            ("< message/>", "bad-format"),
            ("<message></body>", "bad-format"),
            ("<message><body></message>", "bad-format"),
            ("</foo>", "bad-format"),
            ("<message a='1' a='2'/>", "bad-format"),
            ("<message a=1/>", "bad-format"),
            ("<message a='1'b/>", "bad-format"),
            ("<message a='<'/>", "bad-format"),
            ("<message a='& b'/>", "bad-format"),
            ("<message>a & b</message>", "bad-format"),
            ("<message>&#0;</message>", "bad-format"),
            ("<message>&#xD800;</message>", "bad-format"),
            ("<message>\u{1}</message>", "bad-format"),
            ("<message a='\u{8}'/>", "bad-format"),
            ("<1message/>", "bad-format"),
            ("<a:b:c/>", "bad-format"),
            ("<message><!x></message>", "bad-format"),
            ("</stream:stream><message/>", "bad-format"),
            ("</stream:stream>x", "bad-format"),
        ];
        for (input, condition) in cases {
            let error = expect_err_in_stream(input);
            assert_eq!(error.condition(), *condition, "{input}: {error:?}");
            // Whatever the split, the error is found (and nothing panics).
            let input = format!("{HEADER}{input}");
            for i in 0..=input.len() {
                let result = feed(
                    &mut Framer::new(Limits::default()),
                    [&input.as_bytes()[..i], &input.as_bytes()[i..]],
                );
                assert!(result.is_err(), "{input} split at {i}");
            }
        }
        // `</message >` is fine: whitespace is allowed before `>` in an end tag.
        let input = format!("{HEADER}<message></message >");
        assert!(feed_all(input.as_bytes()).is_ok());
        // `<<` is malformed at once, without waiting for more bytes.
        let mut framer = Framer::new(Limits::default());
        let open = framer
            .next_frame(HEADER.as_bytes())
            .expect("ok")
            .expect("header");
        assert_eq!(open.len, HEADER.len());
        assert!(matches!(
            framer.next_frame(b"<<"),
            Err(FrameError::Malformed(_))
        ));
        // Many attributes: duplicates past the inline check are still found.
        let many: String = (0..20).map(|i| format!(" a{i}='{i}'")).collect();
        assert!(feed_all(format!("{HEADER}<x{many}/>").as_bytes()).is_ok());
        let error = expect_err_in_stream(&format!("<x{many} a15='again'/>"));
        assert!(
            matches!(error, FrameError::Attribute(AttrError::Duplicated(..))),
            "{error:?}"
        );
    }

    #[test]
    fn rejects_non_stream_and_encoding() {
        for input in [
            "<html>",
            "GET / HTTP/1.1\r\n",
            "<stream:stream/>",
            "<?xml version='1.0'?><iq/>",
        ] {
            let error = expect_err(input.as_bytes());
            assert!(
                matches!(error, FrameError::NotAStream { .. }),
                "{input}: {error:?}"
            );
            assert_eq!(error.condition(), "invalid-namespace");
        }
        let error = expect_err(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>");
        assert!(
            matches!(error, FrameError::UnsupportedEncoding(_)),
            "{error:?}"
        );
        assert_eq!(error.condition(), "unsupported-encoding");
        for bad in [
            &b"<message><body>caf\xe9!</body></message>"[..],
            b"<message a='\xff'/>",
            b"<m\xc3\x28/>",
        ] {
            let mut input = HEADER.as_bytes().to_vec();
            input.extend_from_slice(bad);
            let error = expect_err(&input);
            assert!(matches!(error, FrameError::InvalidUtf8), "{error:?}");
            assert_eq!(error.condition(), "unsupported-encoding");
        }
        // A UTF-8 sequence split by the read boundary is not an error.
        let input = format!("{HEADER}<message><body>\u{263A}</body></message>");
        let cut = input.find('\u{263A}').expect("present") + 1;
        let frames = feed(
            &mut Framer::new(Limits::default()),
            [&input.as_bytes()[..cut], &input.as_bytes()[cut..]],
        )
        .expect("frames");
        assert_eq!(concat(&frames), input.as_bytes());
    }

    #[test]
    fn mismatched_end_tag_across_calls() {
        let mut framer = Framer::new(Limits::default());
        let mut buf = HEADER.as_bytes().to_vec();
        let open = framer.next_frame(&buf).expect("ok").expect("header");
        buf.drain(..open.len);
        buf.extend_from_slice(b"<db:result from='a' to='b'><x>");
        assert_eq!(framer.next_frame(&buf).expect("ok"), None);
        buf.extend_from_slice(b"key</x>");
        assert_eq!(framer.next_frame(&buf).expect("ok"), None);
        buf.extend_from_slice(b"</result>");
        match framer.next_frame(&buf) {
            Err(FrameError::MismatchedEndTag { expected, found }) => {
                assert_eq!((expected.as_str(), found.as_str()), ("db:result", "result"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_stanza_bytes: 1000,
            max_depth: 8,
        };
        let head = "<message><body>";
        let fits = format!("{head}{}</body></message>", "x".repeat(1000 - 32));
        assert_eq!(fits.len(), 1000);
        let mut framer = Framer::new(limits);
        let frames =
            feed(&mut framer, [HEADER.as_bytes(), fits.as_bytes()]).expect("exactly at the limit");
        assert_eq!(frames[1].1.len(), 1000);
        let too_big = format!("{head}{}</body></message>", "x".repeat(1000 - 31));
        let error = feed(
            &mut Framer::new(limits),
            [HEADER.as_bytes(), too_big.as_bytes()],
        )
        .expect_err("too big");
        assert!(matches!(error, FrameError::TooLarge { limit: 1000 }));
        assert_eq!(error.condition(), "policy-violation");
        // A stanza that never ends fails once it passes the limit, not at the end of the stream.
        let mut framer = Framer::new(limits);
        let mut buf = HEADER.as_bytes().to_vec();
        let open = framer.next_frame(&buf).expect("ok").expect("header");
        buf.drain(..open.len);
        buf.extend_from_slice(head.as_bytes());
        let error = loop {
            buf.extend_from_slice(b"0123456789");
            match framer.next_frame(&buf) {
                Ok(None) => assert!(buf.len() <= 1000),
                Ok(Some(frame)) => panic!("{frame:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(error, FrameError::TooLarge { .. }));
        assert!(buf.len() <= 1010);
        // Also inside a tag that never ends, and for a header.
        let error = feed(
            &mut Framer::new(limits),
            [HEADER.as_bytes(), b"<message to='", &[b'a'; 2000][..]],
        )
        .expect_err("too big");
        assert!(matches!(error, FrameError::TooLarge { .. }));
        let error = feed(&mut Framer::new(limits), [&[b' '; 2000][..]]).expect_err("too big");
        assert!(matches!(error, FrameError::TooLarge { .. }));
        // Whitespace between stanzas may be longer than the limit: it is cut into several frames.
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(&[b' '; 2500]);
        let frames = feed(&mut Framer::new(limits), [input.as_slice()]).expect("whitespace");
        assert_eq!(concat(&frames), input);
    }

    #[test]
    fn depth_limit() {
        let limits = Limits {
            max_stanza_bytes: 10_000,
            max_depth: 3,
        };
        let ok = format!("{HEADER}<a><b><c/></b></a><a><b><c></c></b></a>");
        assert!(feed(&mut Framer::new(limits), [ok.as_bytes()]).is_ok());
        for deep in ["<a><b><c><d/></c></b></a>", "<a><b><c><d>"] {
            let input = format!("{HEADER}{deep}");
            let error = feed(&mut Framer::new(limits), [input.as_bytes()]).expect_err("too deep");
            assert!(
                matches!(error, FrameError::TooDeep { limit: 3 }),
                "{error:?}"
            );
            assert_eq!(error.condition(), "policy-violation");
        }
    }

    #[test]
    fn resuming_is_not_quadratic() {
        let text: String = "caf\u{e9} \u{263A} x".repeat(12_000);
        let attr = "a".repeat(200_000);
        for stanza in [
            format!("<message><body>{text}</body></message>"),
            format!("<message><body xml:lang='en'>{text}</body><b/></message>"),
            format!("<message to='{attr}'/>"),
            format!("<message><![CDATA[{attr}]]></message>"),
        ] {
            let mut framer = Framer::new(Limits::default());
            let input = format!("{HEADER}{stanza}");
            let frames = feed(&mut framer, input.as_bytes().chunks(1000)).expect("frames");
            assert_eq!(concat(&frames), input.as_bytes());
            assert!(
                framer.work < 3 * input.len(),
                "rescanned {} bytes for {}",
                framer.work,
                input.len()
            );
        }
    }

    /// Frames `input` in chunks of the given sizes (cycled); returns the frames' bytes, what is left, or the
    /// error's condition.
    fn frame_chunked(
        input: &[u8],
        sizes: &[usize],
    ) -> Result<(Vec<Framed>, Vec<u8>), &'static str> {
        let mut framer = Framer::new(Limits::default());
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut at = 0;
        for &size in sizes.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + size.max(1)).min(input.len());
            buf.extend_from_slice(&input[at..end]);
            at = end;
            loop {
                match framer.next_frame(&buf) {
                    Ok(Some(frame)) => {
                        frames.push((
                            frame.kind,
                            frame.bytes(&buf).to_vec(),
                            frame.head_bytes(&buf).to_vec(),
                        ));
                        buf.drain(..frame.len);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(e.condition()),
                }
            }
        }
        Ok((frames, buf))
    }

    #[test]
    fn mutated_streams_frame_the_same_in_any_chunking() {
        let (base, _) = s2s_stream();
        let base = base.as_bytes();
        let interesting = b"<>/&;'\"!?[]-: \n#x\xc3\xa9\xef";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut input = base.to_vec();
            for _ in 0..1 + next(3) {
                let at = next(input.len());
                match next(3) {
                    0 => input[at] = interesting[next(interesting.len())],
                    1 => {
                        input.remove(at);
                    }
                    _ => {
                        let end = (at + next(20)).min(input.len());
                        let copy = input[at..end].to_vec();
                        let to = next(input.len());
                        input.splice(to..to, copy);
                    }
                }
            }
            let whole = frame_chunked(&input, &[input.len()]);
            let sizes: Vec<usize> = (0..7).map(|_| 1 + next(40)).collect();
            let chunked = frame_chunked(&input, &sizes);
            match (&whole, &chunked) {
                (Ok((frames, rest)), Ok((chunked_frames, chunked_rest))) => {
                    let mut all = concat(frames);
                    all.extend_from_slice(rest);
                    assert_eq!(all, input);
                    assert_eq!(
                        concat(chunked_frames),
                        concat(frames),
                        "{:?}",
                        String::from_utf8_lossy(&input)
                    );
                    assert_eq!(chunked_rest, rest);
                    assert_eq!(kinds(chunked_frames), kinds(frames));
                    check_frames(frames);
                }
                // Where bytes break two rules, which one is seen first may depend on the split.
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "whole {:?} vs chunked {:?} ({sizes:?}) for {:?}",
                    whole.as_ref().map(|f| kinds(&f.0)),
                    chunked.as_ref().map(|f| kinds(&f.0)),
                    String::from_utf8_lossy(&input)
                ),
            }
        }
    }

    #[test]
    fn default_limits() {
        assert_eq!(
            Limits::default(),
            Limits {
                max_stanza_bytes: 262_144,
                max_depth: 64
            }
        );
    }
}
