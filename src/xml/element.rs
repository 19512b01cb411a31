//! Small parsers over the bytes of one frame, and the few snippets xmpptap writes itself.
//!
//! The session uses these to learn what it must know about a frame the [`super::framer`] has cut: who a stream
//! header is from and to and which namespaces it declares ([`StreamHeader`]), what a top-level element is
//! ([`ElementHead`]), what a `<stream:features>` offers ([`Features`]), what a dialback element says
//! ([`Dialback`]) and why a peer ended a stream ([`StreamError`]). Attribute values and text come back
//! unescaped. Prefixes inside a frame resolve through the frame's own `xmlns` declarations, then through those
//! of the stream header.
//!
//! It does not own framing, well-formedness limits (the framer has checked those before a frame gets here) or
//! forwarding: these parsers read copies of facts out of the original bytes, which are forwarded untouched.
//! Writing stanzas back is for rules that change them. The only bytes made here are a stream error
//! ([`stream_error`]) and a stream header to send before it ([`reply_header`]).

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::attributes::{AttrError, Attribute};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, NamespaceError, PrefixDeclaration, ResolveResult};
use quick_xml::{NsReader, XmlVersion};

use super::framer::HeadSpans;

/// The stream namespace (RFC 6120 4.8.1), of `<stream:stream>`, `<stream:features>`, `<stream:error>`.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Content namespace of server-to-server streams.
pub const NS_SERVER: &str = "jabber:server";
/// Content namespace of client-to-server streams.
pub const NS_CLIENT: &str = "jabber:client";
/// STARTTLS (RFC 6120 5): `<starttls>`, `<proceed>`, `<failure>`.
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL (RFC 6120 6): `<mechanisms>`, `<auth>`, `<success>`, ...
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Server Dialback elements (XEP-0220): `<db:result>`, `<db:verify>`; declared on a stream header, it
/// announces dialback support.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// The dialback stream feature (XEP-0220 2.4), `<dialback><errors/></dialback>`.
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// Stream error conditions (RFC 6120 4.9.3).
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions (RFC 6120 8.3.3), also used inside dialback errors.
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Bidirectional server-to-server connections (XEP-0288) feature.
pub const NS_BIDI: &str = "urn:xmpp:features:bidi";
/// Stream management (XEP-0198) version 3.
pub const NS_SM: &str = "urn:xmpp:sm:3";
/// Stream compression (XEP-0138) feature.
pub const NS_COMPRESSION_FEATURE: &str = "http://jabber.org/features/compress";
/// The namespace bound to the `xml` prefix (`xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Why a frame could not be read. The framer has already checked well-formedness, so for framed bytes these
/// mean "not the element expected" or "not namespace-well-formed".
#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// quick-xml could not read the bytes.
    #[error("malformed XML")]
    Xml(#[from] quick_xml::Error),
    /// A malformed attribute list.
    #[error("malformed attribute")]
    Attribute(#[from] AttrError),
    /// A namespace declaration quick-xml refused (e.g. rebinding `xml`).
    #[error("invalid namespace declaration")]
    Namespace(#[from] NamespaceError),
    /// The bytes hold no start tag.
    #[error("no element found")]
    NoElement,
    /// The element ends before its end tag.
    #[error("element not closed")]
    Unclosed,
    /// A prefix bound neither in the element nor on the stream header.
    #[error("namespace prefix {0:?} is not declared")]
    UndeclaredPrefix(String),
    /// Not the element this parser reads.
    #[error("expected {expected}, found <{found}>")]
    Unexpected {
        /// What the parser reads, e.g. `<stream:features>`.
        expected: &'static str,
        /// The element's name as written.
        found: String,
    },
    /// A stream header whose element is not in [`NS_STREAM`]; answer with `invalid-namespace`.
    #[error("stream element in namespace {found:?}, expected {NS_STREAM}")]
    StreamNamespace {
        /// The namespace found, if any.
        found: Option<String>,
    },
    /// A reference to an entity other than the five predefined ones.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
    /// A required child is missing.
    #[error("missing {0}")]
    Missing(&'static str),
}

/// What a stream header says.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct StreamHeader {
    /// The element's name as written, e.g. `stream:stream`.
    pub qname: String,
    /// Its prefix, e.g. `stream`.
    pub prefix: Option<String>,
    /// The default (content) namespace: `jabber:server` or `jabber:client`.
    pub default_ns: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id`: the stream id, which dialback keys depend on.
    pub id: Option<String>,
    /// `version`, `1.0` for RFC 6120 streams.
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// Whether [`NS_DIALBACK`] is declared (usually `xmlns:db`): support for dialback (XEP-0220 2.4).
    pub dialback_ns: bool,
    /// Every prefixed namespace declaration, in order: (prefix, URI).
    pub namespaces: Vec<(String, String)>,
}

impl StreamHeader {
    /// Parses a stream header start tag (a StreamOpen frame's `head` bytes; an XML declaration before it is
    /// skipped). Fails unless the element is `stream` in [`NS_STREAM`].
    pub fn parse(tag: &[u8]) -> Result<Self, ElementError> {
        let mut reader = NsReader::from_reader(tag);
        let start = first_element(&mut reader)?.tag;
        let name = start.name();
        let mut header = StreamHeader {
            qname: name.0.to_owned(),
            prefix: name.prefix().map(|p| p.into_inner().to_owned()),
            ..StreamHeader::default()
        };
        for attribute in start.attributes() {
            let attribute = attribute?;
            let value = value(&attribute)?;
            match attribute.key.0 {
                "xmlns" => header.default_ns = Some(value),
                "from" => header.from = Some(value),
                "to" => header.to = Some(value),
                "id" => header.id = Some(value),
                "version" => header.version = Some(value),
                "xml:lang" => header.lang = Some(value),
                key => {
                    if let Some(prefix) = key.strip_prefix("xmlns:") {
                        header.namespaces.push((prefix.to_owned(), value));
                    }
                }
            }
        }
        header.dialback_ns = header.namespaces.iter().any(|(_, uri)| uri == NS_DIALBACK);
        if name.local_name().into_inner() != "stream" {
            return Err(ElementError::Unexpected {
                expected: "<stream:stream>",
                found: header.qname,
            });
        }
        let ns = header.resolve(header.prefix.as_deref());
        if ns != Some(NS_STREAM) {
            return Err(ElementError::StreamNamespace {
                found: ns.map(str::to_owned),
            });
        }
        Ok(header)
    }

    /// The namespace a prefix (or, for `None`, the default namespace) has on this stream.
    pub fn resolve(&self, prefix: Option<&str>) -> Option<&str> {
        match prefix {
            None => self.default_ns.as_deref(),
            Some("xml") => Some(NS_XML),
            Some(prefix) => self
                .namespaces
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, uri)| uri.as_str()),
        }
    }

    /// The prefix this stream binds to `uri`, if any (e.g. `db` for [`NS_DIALBACK`]).
    pub fn prefix_for(&self, uri: &str) -> Option<&str> {
        self.namespaces
            .iter()
            .rev()
            .find(|(_, u)| u == uri)
            .map(|(p, _)| p.as_str())
    }
}

/// The start tag of a top-level element: enough to log it and route it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ElementHead {
    /// The name as written, e.g. `db:result`.
    pub name: String,
    /// The local name, e.g. `result`.
    pub local: String,
    /// The namespace, resolved through the element's own declarations, then the stream header's.
    pub ns: Option<String>,
    /// The `type` attribute.
    pub kind: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
}

impl ElementHead {
    /// The fields a [`PlainHead`] has, borrowed (to compare the two readers).
    pub fn as_plain(&self) -> PlainHead<'_> {
        PlainHead {
            name: &self.name,
            kind: self.kind.as_deref(),
            id: self.id.as_deref(),
            from: self.from.as_deref(),
            to: self.to.as_deref(),
        }
    }

    /// Parses the start tag at the front of `tag` (a Stanza frame's `head` bytes, or the whole frame).
    pub fn parse(tag: &[u8], stream: &StreamHeader) -> Result<Self, ElementError> {
        match Self::parse_plain(tag, stream) {
            Some(head) => Ok(head),
            None => Self::parse_with_reader(tag, stream),
        }
    }

    /// [`Self::parse`] through a namespace reader, for any start tag (public for the fuzz targets, which hold
    /// [`PlainHead`] to it).
    pub fn parse_with_reader(tag: &[u8], stream: &StreamHeader) -> Result<Self, ElementError> {
        let mut reader = ns_reader(tag, Some(stream))?;
        let Root { tag: start, ns, .. } = first_element(&mut reader)?;
        let name = start.name();
        let mut head = ElementHead {
            name: name.0.to_owned(),
            local: name.local_name().into_inner().to_owned(),
            ns,
            kind: None,
            id: None,
            from: None,
            to: None,
        };
        for attribute in start.attributes() {
            let attribute = attribute?;
            match attribute.key.0 {
                "type" => head.kind = Some(value(&attribute)?),
                "id" => head.id = Some(value(&attribute)?),
                "from" => head.from = Some(value(&attribute)?),
                "to" => head.to = Some(value(&attribute)?),
                _ => {}
            }
        }
        Ok(head)
    }

    /// [`Self::parse`] for the usual stanza, without a namespace reader: an unprefixed element whose start tag
    /// declares no namespace is in the stream's default namespace. `None` for anything [`PlainHead`] leaves
    /// out, which the namespace reader then reads.
    fn parse_plain(tag: &[u8], stream: &StreamHeader) -> Option<Self> {
        let head = PlainHead::parse(tag)?;
        let owned = |value: Option<&str>| value.map(str::to_owned);
        Some(ElementHead {
            name: head.name.to_owned(),
            local: head.name.to_owned(),
            ns: stream.default_ns.clone(),
            kind: owned(head.kind),
            id: owned(head.id),
            from: owned(head.from),
            to: owned(head.to),
        })
    }

    /// Whether this element is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }
}

/// The start tag of a usual stanza, borrowed from its bytes: an unprefixed name, at most eight attributes
/// written `name='value'` (or with double quotes), none of them a namespace declaration, and no value that
/// needs unescaping or normalizing (no `&`, tab, line feed or carriage return). The element is then in the
/// stream's default namespace and each value is its bytes as written. `None` for anything else, or anything
/// malformed: [`ElementHead::parse`] reads those.
///
/// The transcript writer reads every relayed stanza's start tag this way, allocating nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainHead<'a> {
    /// The element's name (its local name: there is no prefix).
    pub name: &'a str,
    /// The `type` attribute.
    pub kind: Option<&'a str>,
    /// `id`.
    pub id: Option<&'a str>,
    /// `from`.
    pub from: Option<&'a str>,
    /// `to`.
    pub to: Option<&'a str>,
}

impl<'a> PlainHead<'a> {
    /// Reads the start tag at the front of `tag` (see the type's docs for what it covers), in one pass over its
    /// bytes.
    pub fn parse(tag: &'a [u8]) -> Option<Self> {
        match std::str::from_utf8(tag) {
            Ok(text) => Self::parse_str(text),
            // Only the start tag need be UTF-8 (`tag` may go on into a frame cut short).
            Err(e) => Self::parse_str(std::str::from_utf8(&tag[..e.valid_up_to()]).ok()?),
        }
    }

    /// The head the framer's fast path found in `frame` (a Stanza frame's text, from its first byte), as
    /// [`Self::parse`] reads it; `None` if the spans do not lie within `frame`.
    pub fn from_spans(frame: &'a str, spans: &HeadSpans) -> Option<Self> {
        let value = |(start, end): (u16, u16)| match start {
            0 => Some(None),
            _ => frame.get(usize::from(start)..usize::from(end)).map(Some),
        };
        let [kind, id, from, to] = spans.values;
        Some(PlainHead {
            name: frame.get(1..usize::from(spans.name_end))?,
            kind: value(kind)?,
            id: value(id)?,
            from: value(from)?,
            to: value(to)?,
        })
    }

    /// [`Self::parse`] for text already known to be UTF-8.
    pub fn parse_str(text: &'a str) -> Option<Self> {
        const MAX_ATTRIBUTES: usize = 8;
        // Every delimiter looked for is ASCII, so each slice taken of `text` is on a character boundary.
        let bytes = text.as_bytes();
        // Past the bytes from `from` on that are all of the class `flag`.
        let span = |from: usize, flag: u8| {
            let rest = bytes.get(from..).unwrap_or_default();
            let len = rest
                .iter()
                .position(|&b| HEAD_CLASS[usize::from(b)] & flag == 0)
                .unwrap_or(rest.len());
            from + len
        };
        // `span(from, VALUE)`, eight bytes at a time while there are eight: attribute values are most of a tag.
        let value_span = |from: usize| {
            const ONES: u64 = u64::from_le_bytes([1; 8]);
            const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
            // The high bit of each byte below `n` (n <= 0x80) is set, and maybe of bytes above the first such:
            // the lowest set bit is exact.
            let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
            let mut at = from;
            while let Some(chunk) = bytes.get(at..at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                let stops = [b'\'', b'"', b'&', b'<']
                    .iter()
                    .fold(below(word, 0x20), |stops, &b| {
                        stops | below(word ^ (ONES * u64::from(b)), 1)
                    });
                if stops != 0 {
                    return at + (stops.trailing_zeros() / 8) as usize;
                }
                at += 8;
            }
            span(at, VALUE)
        };
        let name_start = |at: usize| {
            bytes
                .get(at)
                .is_some_and(|&b| HEAD_CLASS[usize::from(b)] & NAME_START != 0)
        };
        if bytes.first() != Some(&b'<') || !name_start(1) {
            return None;
        }
        let mut at = span(2, NAME);
        let mut head = PlainHead {
            name: &text[1..at],
            kind: None,
            id: None,
            from: None,
            to: None,
        };
        // The attributes read so far: `count`, of which those other than the usual four are kept.
        let mut others = [""; MAX_ATTRIBUTES];
        let mut count = 0;
        loop {
            let spaced = at;
            at = span(at, SPACE);
            match bytes.get(at) {
                Some(b'>') => return Some(head),
                Some(b'/') if bytes.get(at + 1) == Some(&b'>') => return Some(head),
                // Attributes are separated by whitespace.
                _ if at == spaced || count == MAX_ATTRIBUTES => return None,
                _ => {}
            }
            // `name` or `prefix:name`, `=`, a quote.
            let key_start = at;
            if !name_start(at) {
                return None;
            }
            at = span(at + 1, NAME);
            if bytes.get(at) == Some(&b':') {
                if !name_start(at + 1) {
                    return None;
                }
                at = span(at + 2, NAME);
            }
            let key = &text[key_start..at];
            let quote = *bytes.get(at + 1).filter(|&&q| q == b'\'' || q == b'"')?;
            if bytes.get(at) != Some(&b'=') {
                return None;
            }
            at += 2;
            let value_start = at;
            loop {
                at = value_span(at);
                match bytes.get(at) {
                    Some(&b) if b == quote => break,
                    // The other quote.
                    Some(b'\'' | b'"') => at += 1,
                    // A reference, a control character (whitespace to normalize), a `<`, or the end.
                    _ => return None,
                }
            }
            let slot = match key {
                "type" => Some(&mut head.kind),
                "id" => Some(&mut head.id),
                "from" => Some(&mut head.from),
                "to" => Some(&mut head.to),
                _ => None,
            };
            match slot {
                // Twice the same attribute (the usual ones are told apart without comparing strings).
                Some(Some(_)) => return None,
                Some(slot) => *slot = Some(&text[value_start..at]),
                None => {
                    if key == "xmlns" || key.starts_with("xmlns:") || others[..count].contains(&key)
                    {
                        return None;
                    }
                    others[count] = key;
                }
            }
            count += 1;
            at += 1;
        }
    }
}

/// What a byte can be in a start tag, for [`PlainHead::parse`]: a set of the flags below. Non-ASCII bytes are
/// name bytes (names are accepted, not validated: the framer has judged the element).
const HEAD_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
        let name = start || c.is_ascii_digit() || c == b'-' || c == b'.';
        let space = matches!(c, b' ' | b'\t' | b'\r' | b'\n');
        let value = c >= 0x20 && !matches!(c, b'\'' | b'"' | b'&' | b'<');
        table[b] = (if start { NAME_START } else { 0 })
            | (if name { NAME } else { 0 })
            | (if space { SPACE } else { 0 })
            | (if value { VALUE } else { 0 });
        b += 1;
    }
    table
};
const NAME_START: u8 = 1;
const NAME: u8 = 2;
const SPACE: u8 = 4;
/// A byte an attribute value may hold as it is: not a quote, `&` or `<`, nor a control character (whitespace
/// to normalize, or not XML at all).
const VALUE: u8 = 8;

/// What a `<stream:features>` element offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Features {
    /// `<starttls>`: `Some(required)`.
    pub starttls: Option<bool>,
    /// SASL mechanisms, in order.
    pub mechanisms: Vec<String>,
    /// `<dialback xmlns='urn:xmpp:features:dialback'>`.
    pub dialback: bool,
    /// `<errors/>` inside it: dialback errors are supported.
    pub dialback_errors: bool,
    /// `<bidi xmlns='urn:xmpp:features:bidi'/>` (XEP-0288).
    pub bidi: bool,
    /// `<sm xmlns='urn:xmpp:sm:3'/>` (XEP-0198).
    pub sm: bool,
    /// Stream compression methods (XEP-0138).
    pub compression: Vec<String>,
    /// Every other feature, as `{namespace}local`.
    pub other: Vec<String>,
}

/// The feature child being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeatureChild {
    StartTls,
    Mechanisms,
    Dialback,
    Compression,
    Ignored,
}

impl Features {
    /// Parses a whole `<stream:features>` element.
    pub fn parse(frame: &[u8]) -> Result<Self, ElementError> {
        let mut reader = ns_reader(frame, None)?;
        let Root {
            tag: root, empty, ..
        } = first_element(&mut reader)?;
        if root.local_name().into_inner() != "features" {
            return Err(ElementError::Unexpected {
                expected: "<stream:features>",
                found: root.name().0.to_owned(),
            });
        }
        let mut features = Features::default();
        if empty {
            return Ok(features);
        }
        // Depth of open elements: the features element is 1, features are 2, their children 3.
        let mut depth = 1usize;
        let mut child = FeatureChild::Ignored;
        let mut collecting: Option<String> = None;
        loop {
            let (ns, event) = reader.read_resolved_event()?;
            let ns = bound(&ns);
            match event {
                Event::Start(ref tag) | Event::Empty(ref tag) => {
                    let local = tag.local_name().into_inner();
                    if depth == 1 {
                        child = match (ns.unwrap_or(""), local) {
                            (NS_TLS, "starttls") => {
                                features.starttls = Some(false);
                                FeatureChild::StartTls
                            }
                            (NS_SASL, "mechanisms") => FeatureChild::Mechanisms,
                            (NS_DIALBACK_FEATURE, "dialback") => {
                                features.dialback = true;
                                FeatureChild::Dialback
                            }
                            (NS_COMPRESSION_FEATURE, "compression") => FeatureChild::Compression,
                            (NS_BIDI, "bidi") => {
                                features.bidi = true;
                                FeatureChild::Ignored
                            }
                            (NS_SM, "sm") => {
                                features.sm = true;
                                FeatureChild::Ignored
                            }
                            (ns, local) => {
                                features.other.push(format!("{{{ns}}}{local}"));
                                FeatureChild::Ignored
                            }
                        };
                    } else if depth == 2 {
                        match (child, local) {
                            (FeatureChild::StartTls, "required") => features.starttls = Some(true),
                            (FeatureChild::Dialback, "errors") => features.dialback_errors = true,
                            (FeatureChild::Mechanisms, "mechanism")
                            | (FeatureChild::Compression, "method")
                                if matches!(event, Event::Start(_)) =>
                            {
                                collecting = Some(String::new());
                            }
                            _ => {}
                        }
                    }
                    if matches!(event, Event::Start(_)) {
                        depth += 1;
                    }
                }
                Event::Text(ref text) if depth == 3 => {
                    if let Some(buf) = collecting.as_mut() {
                        buf.push_str(&text.xml10_content());
                    }
                }
                Event::GeneralRef(ref reference) if depth == 3 => {
                    if let Some(buf) = collecting.as_mut() {
                        push_reference(buf, reference)?;
                    }
                }
                Event::CData(ref cdata) if depth == 3 => {
                    if let Some(buf) = collecting.as_mut() {
                        buf.push_str(&cdata.xml10_content());
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    match depth {
                        0 => return Ok(features),
                        2 => {
                            if let Some(value) = collecting.take() {
                                let value = value.trim().to_owned();
                                match child {
                                    FeatureChild::Mechanisms => features.mechanisms.push(value),
                                    FeatureChild::Compression => features.compression.push(value),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Event::Eof => return Err(ElementError::Unclosed),
                _ => {}
            }
        }
    }
}

/// A Server Dialback element (XEP-0220): `<db:result>` or `<db:verify>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dialback {
    /// `<db:verify>` rather than `<db:result>`.
    pub verify: bool,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id`: on `<db:verify>`, the stream id the key was computed over.
    pub id: Option<String>,
    /// `type`: `valid`, `invalid` or `error`; `None` for a request.
    pub kind: Option<String>,
    /// Whether the element carries a key (non-blank text).
    pub has_key: bool,
    /// For `type='error'`: the condition inside `<error>`, e.g. `item-not-found`.
    pub error_condition: Option<String>,
}

impl Dialback {
    /// Parses a whole `<db:result>` or `<db:verify>` element; its prefix resolves through `stream`'s
    /// declarations.
    pub fn parse(frame: &[u8], stream: &StreamHeader) -> Result<Self, ElementError> {
        let mut reader = ns_reader(frame, Some(stream))?;
        let Root {
            tag: root,
            ns,
            empty,
        } = first_element(&mut reader)?;
        let verify = match (ns.as_deref(), root.local_name().into_inner()) {
            (Some(NS_DIALBACK), "result") => false,
            (Some(NS_DIALBACK), "verify") => true,
            _ => {
                return Err(ElementError::Unexpected {
                    expected: "<db:result> or <db:verify>",
                    found: root.name().0.to_owned(),
                })
            }
        };
        let mut dialback = Dialback {
            verify,
            from: None,
            to: None,
            id: None,
            kind: None,
            has_key: false,
            error_condition: None,
        };
        for attribute in root.attributes() {
            let attribute = attribute?;
            match attribute.key.0 {
                "type" => dialback.kind = Some(value(&attribute)?),
                "id" => dialback.id = Some(value(&attribute)?),
                "from" => dialback.from = Some(value(&attribute)?),
                "to" => dialback.to = Some(value(&attribute)?),
                _ => {}
            }
        }
        if empty {
            return Ok(dialback);
        }
        // The dialback element is depth 1, `<error>` depth 2, its condition depth 3.
        let mut depth = 1usize;
        let mut in_error = false;
        loop {
            let (_, event) = reader.read_resolved_event()?;
            match event {
                Event::Text(ref text) if depth == 1 => {
                    dialback.has_key |= !text.xml10_content().trim().is_empty();
                }
                Event::GeneralRef(_) | Event::CData(_) if depth == 1 => dialback.has_key = true,
                Event::Start(ref tag) | Event::Empty(ref tag) => {
                    let local = tag.local_name().into_inner();
                    if depth == 1 && local == "error" {
                        in_error = matches!(event, Event::Start(_));
                    } else if depth == 2
                        && in_error
                        && local != "text"
                        && dialback.error_condition.is_none()
                    {
                        dialback.error_condition = Some(local.to_owned());
                    }
                    if matches!(event, Event::Start(_)) {
                        depth += 1;
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 1 {
                        in_error = false;
                    }
                    if depth == 0 {
                        return Ok(dialback);
                    }
                }
                Event::Eof => return Err(ElementError::Unclosed),
                _ => {}
            }
        }
    }

    /// Whether this is a request (no `type`), as opposed to an answer.
    pub fn is_request(&self) -> bool {
        self.kind.is_none()
    }
}

/// A `<stream:error>` (RFC 6120 4.9).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamError {
    /// The defined condition, e.g. `host-unknown`.
    pub condition: String,
    /// The human-readable `<text>`, if any.
    pub text: Option<String>,
}

impl StreamError {
    /// Parses a whole `<stream:error>` element.
    pub fn parse(frame: &[u8]) -> Result<Self, ElementError> {
        let mut reader = ns_reader(frame, None)?;
        let Root {
            tag: root, empty, ..
        } = first_element(&mut reader)?;
        if root.local_name().into_inner() != "error" {
            return Err(ElementError::Unexpected {
                expected: "<stream:error>",
                found: root.name().0.to_owned(),
            });
        }
        if empty {
            return Err(ElementError::Missing("stream error condition"));
        }
        let mut condition = None;
        let mut text: Option<String> = None;
        let mut in_text = false;
        let mut depth = 1usize;
        loop {
            let (ns, event) = reader.read_resolved_event()?;
            let in_streams_ns = bound(&ns) == Some(NS_STREAM_ERRORS);
            match event {
                Event::Start(ref tag) | Event::Empty(ref tag) => {
                    let local = tag.local_name().into_inner();
                    if depth == 1 && in_streams_ns {
                        if local == "text" {
                            text.get_or_insert_with(String::new);
                            in_text = matches!(event, Event::Start(_));
                        } else if condition.is_none() {
                            condition = Some(local.to_owned());
                        }
                    }
                    if matches!(event, Event::Start(_)) {
                        depth += 1;
                    }
                }
                Event::Text(ref t) if in_text && depth == 2 => {
                    if let Some(buf) = text.as_mut() {
                        buf.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(ref reference) if in_text && depth == 2 => {
                    if let Some(buf) = text.as_mut() {
                        push_reference(buf, reference)?;
                    }
                }
                Event::CData(ref cdata) if in_text && depth == 2 => {
                    if let Some(buf) = text.as_mut() {
                        buf.push_str(&cdata.xml10_content());
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    in_text = false;
                    if depth == 0 {
                        break;
                    }
                }
                Event::Eof => return Err(ElementError::Unclosed),
                _ => {}
            }
        }
        let condition = condition.ok_or(ElementError::Missing("stream error condition"))?;
        Ok(StreamError { condition, text })
    }
}

/// Whether a start tag is an ordinary stanza (`message`, `presence`, `iq`, unprefixed), told by its first
/// bytes: the data path looks no further at those unless someone asks.
pub fn is_ordinary_stanza(tag: &[u8]) -> bool {
    let name_end = |len: usize| {
        tag.get(len)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
    };
    (tag.starts_with(b"<message") && name_end(8))
        || (tag.starts_with(b"<presence") && name_end(9))
        || (tag.starts_with(b"<iq") && name_end(3))
}

/// The stream error conditions of RFC 6120 4.9.3.
pub const STREAM_CONDITIONS: &[&str] = &[
    "bad-format",
    "bad-namespace-prefix",
    "conflict",
    "connection-timeout",
    "host-gone",
    "host-unknown",
    "improper-addressing",
    "internal-server-error",
    "invalid-from",
    "invalid-namespace",
    "invalid-xml",
    "not-authorized",
    "not-well-formed",
    "policy-violation",
    "remote-connection-failed",
    "reset",
    "resource-constraint",
    "restricted-xml",
    "see-other-host",
    "system-shutdown",
    "undefined-condition",
    "unsupported-encoding",
    "unsupported-feature",
    "unsupported-stanza-type",
    "unsupported-version",
];

/// `name` as one of the [`STREAM_CONDITIONS`], if it is one.
pub fn stream_condition(name: &str) -> Option<&'static str> {
    STREAM_CONDITIONS.iter().copied().find(|c| *c == name)
}

/// The bytes xmpptap sends when it must end a stream on its own: `<stream:error>` with `condition` (an RFC 6120
/// 4.9.3 condition name; anything that is not a plain name becomes `undefined-condition`) and the optional
/// `text`, escaped, followed by `</stream:stream>`.
pub fn stream_error(condition: &str, text: Option<&str>) -> Vec<u8> {
    let plain = !condition.is_empty()
        && condition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-');
    debug_assert!(plain, "not a stream error condition: {condition:?}");
    let condition = if plain {
        condition
    } else {
        "undefined-condition"
    };
    let mut out = String::with_capacity(160);
    out.push_str("<stream:error><");
    out.push_str(condition);
    out.push_str(" xmlns='");
    out.push_str(NS_STREAM_ERRORS);
    out.push_str("'/>");
    if let Some(text) = text {
        out.push_str("<text xmlns='");
        out.push_str(NS_STREAM_ERRORS);
        out.push_str("'>");
        out.push_str(&escape(text));
        out.push_str("</text>");
    }
    out.push_str("</stream:error></stream:stream>");
    out.into_bytes()
}

/// A stream header xmpptap sends itself before a stream error when it could not get one from upstream
/// (RFC 6120 4.9.1.2: the receiving entity must open a stream before sending an error): an XML declaration,
/// then `<stream:stream>` with `from`/`to` swapped from the initiator's header, its default namespace and
/// `xml:lang` copied, `version='1.0'`, the given `id`, `xmlns:stream`, and `xmlns:db` if the initiator
/// declared dialback.
pub fn reply_header(initiator: &StreamHeader, id: &str) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version='1.0'?><stream:stream");
    let mut attribute = |name: &str, value: &str| {
        out.push(' ');
        out.push_str(name);
        out.push_str("='");
        out.push_str(&escape(value));
        out.push('\'');
    };
    if let Some(ns) = &initiator.default_ns {
        attribute("xmlns", ns);
    }
    attribute("xmlns:stream", NS_STREAM);
    if initiator.dialback_ns {
        attribute("xmlns:db", NS_DIALBACK);
    }
    if let Some(from) = &initiator.to {
        attribute("from", from);
    }
    if let Some(to) = &initiator.from {
        attribute("to", to);
    }
    attribute("id", id);
    attribute("version", "1.0");
    if let Some(lang) = &initiator.lang {
        attribute("xml:lang", lang);
    }
    out.push('>');
    out.into_bytes()
}

/// A namespace-aware reader over `bytes`, with the stream header's bindings in scope.
pub(super) fn ns_reader<'a>(
    bytes: &'a [u8],
    stream: Option<&StreamHeader>,
) -> Result<NsReader<&'a [u8]>, ElementError> {
    match stream {
        Some(stream) => ns_reader_in(bytes, stream.default_ns.as_deref(), &stream.namespaces),
        None => ns_reader_in(bytes, None, &[]),
    }
}

/// A namespace-aware reader over `bytes` with `default_ns` and the `(prefix, uri)` bindings in scope.
pub(crate) fn ns_reader_in<'a>(
    bytes: &'a [u8],
    default_ns: Option<&str>,
    namespaces: &[(String, String)],
) -> Result<NsReader<&'a [u8]>, ElementError> {
    let mut reader = NsReader::from_reader(bytes);
    let resolver = reader.resolver_mut();
    if let Some(ns) = default_ns {
        resolver.add(PrefixDeclaration::Default, Namespace(ns))?;
    }
    for (prefix, uri) in namespaces {
        resolver.add(PrefixDeclaration::Named(prefix), Namespace(uri))?;
    }
    Ok(reader)
}

/// The first element of a frame.
struct Root<'a> {
    tag: BytesStart<'a>,
    /// Its resolved namespace.
    ns: Option<String>,
    /// Whether it is an empty-element tag, with no content to read.
    empty: bool,
}

/// Reads up to the first start (or empty-element) tag, skipping an XML declaration and whitespace.
fn first_element<'a>(reader: &mut NsReader<&'a [u8]>) -> Result<Root<'a>, ElementError> {
    loop {
        let (ns, event) = reader.read_resolved_event()?;
        let ns = match &ns {
            ResolveResult::Bound(ns) => Some(ns.0.to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => {
                // `stream:` on a features or error element need not be declared inside the frame.
                if prefix == "stream" {
                    None
                } else {
                    return Err(ElementError::UndeclaredPrefix(prefix.clone()));
                }
            }
        };
        match event {
            Event::Start(tag) => {
                return Ok(Root {
                    tag,
                    ns,
                    empty: false,
                })
            }
            Event::Empty(tag) => {
                return Ok(Root {
                    tag,
                    ns,
                    empty: true,
                })
            }
            Event::Eof => return Err(ElementError::NoElement),
            _ => {}
        }
    }
}

fn bound<'n>(ns: &'n ResolveResult<'_>) -> Option<&'n str> {
    match ns {
        ResolveResult::Bound(ns) => Some(ns.0),
        _ => None,
    }
}

/// Every attribute of a start tag (`tag` = the frame's head bytes), names as written, values unescaped. For
/// the attributes [`ElementHead`] does not keep (`h`, `previd`, `mechanism`, ...).
pub fn attributes(tag: &[u8]) -> Result<Vec<(String, String)>, ElementError> {
    let mut reader = quick_xml::Reader::from_reader(tag);
    let start = match reader.read_event()? {
        quick_xml::events::Event::Start(start) | quick_xml::events::Event::Empty(start) => start,
        _ => return Err(ElementError::NoElement),
    };
    let mut out = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute?;
        let name = attribute.key.as_ref().to_owned();
        out.push((name, value(&attribute)?));
    }
    Ok(out)
}

/// The local name of the first child element of `frame` (e.g. the condition inside a SASL `<failure>`).
pub fn first_child(frame: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(frame);
    let mut depth = 0;
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)
                if depth == 1 =>
            {
                return Some(e.local_name().as_ref().to_owned());
            }
            quick_xml::events::Event::Start(_) => depth += 1,
            quick_xml::events::Event::End(_) => depth -= 1,
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

/// An attribute's value, unescaped and normalized (XML 1.0 3.3.3).
fn value(attribute: &Attribute<'_>) -> Result<String, ElementError> {
    Ok(attribute
        .normalized_value(XmlVersion::Implicit1_0)?
        .into_owned())
}

/// Appends the character a reference in text stands for.
pub(super) fn push_reference(
    buf: &mut String,
    reference: &BytesRef<'_>,
) -> Result<(), ElementError> {
    if let Some(c) = reference.resolve_char_ref()? {
        buf.push(c);
    } else if let Some(s) = resolve_predefined_entity(reference) {
        buf.push_str(s);
    } else {
        return Err(ElementError::UnknownEntity(reference.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSODY_HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='b.example' to='a.example' \
        id='3a5e0c79-44e1-4b59-8e39-1c6e0f1d3d5f' xml:lang='en'>";

    fn header() -> StreamHeader {
        StreamHeader::parse(PROSODY_HEADER).expect("header")
    }

    #[test]
    fn stream_header() {
        let h = header();
        assert_eq!(h.qname, "stream:stream");
        assert_eq!(h.prefix.as_deref(), Some("stream"));
        assert_eq!(h.default_ns.as_deref(), Some(NS_SERVER));
        assert_eq!(h.from.as_deref(), Some("b.example"));
        assert_eq!(h.to.as_deref(), Some("a.example"));
        assert_eq!(
            h.id.as_deref(),
            Some("3a5e0c79-44e1-4b59-8e39-1c6e0f1d3d5f")
        );
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        assert!(h.dialback_ns);
        assert_eq!(
            h.namespaces,
            [
                ("db".to_owned(), NS_DIALBACK.to_owned()),
                ("stream".to_owned(), NS_STREAM.to_owned())
            ]
        );
        assert_eq!(h.resolve(Some("db")), Some(NS_DIALBACK));
        assert_eq!(h.prefix_for(NS_DIALBACK), Some("db"));
    }

    #[test]
    fn stream_header_variants() {
        // With an XML declaration, double quotes, escapes, another prefix, no dialback.
        let h = StreamHeader::parse(
            b"<?xml version='1.0'?><s:stream xmlns:s=\"http://etherx.jabber.org/streams\" \
              xmlns=\"jabber:client\" to=\"a&amp;b.example\">",
        )
        .expect("header");
        assert_eq!(
            (h.qname.as_str(), h.prefix.as_deref()),
            ("s:stream", Some("s"))
        );
        assert_eq!(h.default_ns.as_deref(), Some(NS_CLIENT));
        assert_eq!(h.to.as_deref(), Some("a&b.example"));
        assert!(!h.dialback_ns);
        assert!(matches!(
            StreamHeader::parse(b"<stream:stream xmlns:stream='urn:wrong'>"),
            Err(ElementError::StreamNamespace { found: Some(ns) }) if ns == "urn:wrong"
        ));
        assert!(matches!(
            StreamHeader::parse(
                b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
            ),
            Err(ElementError::Unexpected { .. })
        ));
        assert!(matches!(
            StreamHeader::parse(b""),
            Err(ElementError::NoElement)
        ));
    }

    #[test]
    fn element_head() {
        let stream = header();
        let head = ElementHead::parse(b"<db:result from='a.example' to='b.example'>", &stream)
            .expect("head");
        assert_eq!(
            (head.name.as_str(), head.local.as_str()),
            ("db:result", "result")
        );
        assert_eq!(head.ns.as_deref(), Some(NS_DIALBACK));
        assert!(head.is(NS_DIALBACK, "result"));
        assert_eq!(
            (head.from.as_deref(), head.to.as_deref()),
            (Some("a.example"), Some("b.example"))
        );

        let head = ElementHead::parse(
            b"<message type='chat' id='m&amp;1' from='alice@a.example/x' to='bob@b.example'>",
            &stream,
        )
        .expect("head");
        assert_eq!(head.ns.as_deref(), Some(NS_SERVER));
        assert_eq!(
            (head.kind.as_deref(), head.id.as_deref()),
            (Some("chat"), Some("m&1"))
        );

        let head = ElementHead::parse(b"<stream:features>", &stream).expect("head");
        assert!(head.is(NS_STREAM, "features"));
        let head = ElementHead::parse(
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            &stream,
        )
        .expect("head");
        assert!(head.is(NS_TLS, "starttls"));
        // Own declarations win over the stream's.
        let head = ElementHead::parse(b"<db:result xmlns:db='urn:other'>", &stream).expect("head");
        assert_eq!(head.ns.as_deref(), Some("urn:other"));
        assert!(
            matches!(ElementHead::parse(b"<x:y/>", &stream), Err(ElementError::UndeclaredPrefix(p)) if p == "x")
        );
    }

    #[test]
    fn plain_head_agrees_with_the_namespace_reader() {
        let stream = header();
        let plain = [
            &b"<message type='chat' id='m1' from='alice@a.example/x' to='bob@b.example'>"[..],
            b"<iq type=\"get\" id=\"p\"/>",
            b"<presence/>",
            b"<presence >",
            b"<message xml:lang='en' id='caf\xc3\xa9' to='\xc3\xa9@b.example'>",
            b"<iq\nid='1'\ttype='result'\r\n/>",
            b"<message id='a\"b' from=\"a'b\">",
            b"<m\xc3\xa9ssage to='x'>",
            b"<message id='a>b' to='c/>'/>",
        ];
        for tag in plain {
            let head = PlainHead::parse(tag).expect("plain");
            let full = ElementHead::parse_with_reader(tag, &stream).expect("parses");
            assert_eq!(head, full.as_plain(), "{}", String::from_utf8_lossy(tag));
            assert_eq!(ElementHead::parse(tag, &stream).expect("parses"), full);
        }
        // Left to the namespace reader: what needs unescaping or normalizing, namespaces, and anything odd.
        let other = [
            &b"<message id='m&amp;1'>"[..],
            b"<message id='a\tb'>",
            b"<message id='a\nb'>",
            b"<message xmlns='jabber:client'>",
            b"<db:result from='a'>",
            b"<message id='1' id='2'>",
            b"<message to='b' type='chat' to='c'>",
            b"<message xml:lang='en' to='b' xml:lang='de'>",
            b"<message id = '1'>",
            b"<message id='1'to='b'>",
            b"<message id=1>",
            b"<message a='1' b='1' c='1' d='1' e='1' f='1' g='1' h='1' i='1'>",
            b"<1message>",
            b"message>",
            b"<message id='\xff'>",
            b"<message from='a@b.example/long resource' id='control\x01'>",
            b"<message id='c\x01'>",
        ];
        for tag in other {
            assert_eq!(
                PlainHead::parse(tag),
                None,
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
    }

    #[test]
    fn features_before_tls() {
        let f = Features::parse(
            b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
              <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
              <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
        )
        .expect("features");
        assert_eq!(f.starttls, Some(true));
        assert!(f.dialback && f.dialback_errors && f.bidi && !f.sm);
        assert!(f.mechanisms.is_empty() && f.other.is_empty());
    }

    #[test]
    fn features_after_tls() {
        let f = Features::parse(
            b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
              <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
              <mechanism>EXTERNAL</mechanism><mechanism> SCRAM-SHA-1-PLUS </mechanism></mechanisms>\
              <dialback xmlns='urn:xmpp:features:dialback'/>\
              <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
              <sm xmlns='urn:xmpp:sm:3'/><ver xmlns='urn:xmpp:features:rosterver'/>\
              <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
        )
        .expect("features");
        assert_eq!(f.mechanisms, ["EXTERNAL", "SCRAM-SHA-1-PLUS"]);
        assert_eq!(f.compression, ["zlib"]);
        assert_eq!(f.starttls, Some(false));
        assert!(f.dialback && !f.dialback_errors && f.sm && !f.bidi);
        assert_eq!(f.other, ["{urn:xmpp:features:rosterver}ver"]);
        assert_eq!(
            Features::parse(b"<stream:features/>").expect("empty"),
            Features::default()
        );
        assert!(matches!(
            Features::parse(b"<stream:error/>"),
            Err(ElementError::Unexpected { .. })
        ));
        assert!(matches!(
            Features::parse(b"<stream:features><bidi/>"),
            Err(ElementError::Unclosed)
        ));
    }

    #[test]
    fn dialback() {
        let stream = header();
        let db = Dialback::parse(
            b"<db:result from='a.example' to='b.example'>\n  b4835385f37fe2895af6c196b59097b16862406d\n</db:result>",
            &stream,
        )
        .expect("request");
        assert!(!db.verify && db.has_key && db.is_request());
        assert_eq!(
            (db.from.as_deref(), db.to.as_deref()),
            (Some("a.example"), Some("b.example"))
        );

        let db = Dialback::parse(
            b"<db:verify from='b.example' to='a.example' id='417GAF25' type='valid'/>",
            &stream,
        )
        .expect("answer");
        assert!(db.verify && !db.has_key);
        assert_eq!(
            (db.id.as_deref(), db.kind.as_deref()),
            (Some("417GAF25"), Some("valid"))
        );

        let db = Dialback::parse(
            b"<db:result from='b.example' to='a.example' type='error'><error type='cancel'>\
              <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
            &stream,
        )
        .expect("error");
        assert_eq!(db.kind.as_deref(), Some("error"));
        assert_eq!(db.error_condition.as_deref(), Some("item-not-found"));
        assert!(!db.has_key);

        // Declared on the element itself, with another prefix.
        let db = Dialback::parse(
            b"<x:verify xmlns:x='jabber:server:dialback' id='1'>key</x:verify>",
            &stream,
        )
        .expect("own prefix");
        assert!(db.verify && db.has_key);
        assert!(matches!(
            Dialback::parse(b"<message><body/></message>", &stream),
            Err(ElementError::Unexpected { .. })
        ));
    }

    #[test]
    fn stream_errors() {
        let e = StreamError::parse(
            b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
              <text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>No such host &apos;c&apos; &amp; co</text>\
              <escape-your-data xmlns='urn:example:app'/></stream:error>",
        )
        .expect("stream error");
        assert_eq!(e.condition, "host-unknown");
        assert_eq!(e.text.as_deref(), Some("No such host 'c' & co"));
        let e = StreamError::parse(b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
            .expect("no text");
        assert_eq!((e.condition.as_str(), e.text), ("policy-violation", None));
        assert!(matches!(
            StreamError::parse(b"<stream:error></stream:error>"),
            Err(ElementError::Missing(_))
        ));
    }

    #[test]
    fn writes_stream_error() {
        let bytes = stream_error(
            "remote-connection-failed",
            Some("upstream <b.example> & co unreachable"),
        );
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.ends_with("</stream:error></stream:stream>"));
        let error_end = text.find("</stream:error>").expect("end") + "</stream:error>".len();
        let e = StreamError::parse(&bytes[..error_end]).expect("parses back");
        assert_eq!(e.condition, "remote-connection-failed");
        assert_eq!(
            e.text.as_deref(),
            Some("upstream <b.example> & co unreachable")
        );
        assert_eq!(
            stream_error("bad-format", None),
            b"<stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
    }

    #[test]
    fn writes_reply_header_that_frames_and_parses() {
        use crate::xml::framer::{FrameKind, Framer, Limits};
        let initiator = StreamHeader::parse(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns:db='jabber:server:dialback' from='a.example' to='b&apos;s.example' version='1.0'>",
        )
        .expect("initiator");
        let mut bytes = reply_header(&initiator, "c2f1");
        let reply = StreamHeader::parse(&bytes).expect("reply parses");
        assert_eq!(reply.from.as_deref(), Some("b's.example"));
        assert_eq!(reply.to.as_deref(), Some("a.example"));
        assert_eq!(reply.id.as_deref(), Some("c2f1"));
        assert_eq!(reply.version.as_deref(), Some("1.0"));
        assert_eq!(reply.default_ns.as_deref(), Some(NS_SERVER));
        assert!(reply.dialback_ns);
        // What xmpptap writes goes through its own framer.
        bytes.extend_from_slice(&stream_error("host-unknown", Some("no")));
        let mut framer = Framer::new(Limits::default());
        let mut kinds = Vec::new();
        let mut buf = bytes.as_slice();
        while let Some(frame) = framer.next_frame(buf).expect("frames") {
            kinds.push(frame.kind);
            buf = &buf[frame.len..];
        }
        assert!(buf.is_empty());
        assert_eq!(
            kinds,
            [
                FrameKind::StreamOpen,
                FrameKind::Stanza,
                FrameKind::StreamClose
            ]
        );
        // Without dialback or a default namespace, none is declared.
        let bare = reply_header(&StreamHeader::default(), "x");
        let text = String::from_utf8(bare).expect("utf-8");
        assert!(!text.contains("xmlns:db") && !text.contains(" xmlns='"));
    }
}
