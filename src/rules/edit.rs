//! The edits rules make to an element's bytes, as pure functions, and the small readers rule matching needs.
//!
//! [`rewrite`] carries out an [`Action::Rewrite`](super::Action::Rewrite) and [`dialback_invalid`] an
//! [`Action::DialbackInvalid`](super::Action::DialbackInvalid). Both splice the original bytes: only the
//! attribute, child or text node that changes is written anew, everything else is copied byte for byte, so
//! prefixes, quotes and layout reach the peer as the sender wrote them. [`injected`] fills in the XML an
//! `inject` sends ([`expand_placeholders`]).
//!
//! Nothing here decides whether a rule applies ([`super::decide`]) or does I/O.

use std::borrow::Cow;
use std::ops::Range;

use quick_xml::escape::{escape, partial_escape, resolve_predefined_entity, unescape};
use quick_xml::events::{BytesRef, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use regex::Regex;

use super::spec::RewriteSpec;
use crate::xml::element::{ns_reader_in, Dialback, ElementError, ElementHead, StreamHeader};

/// Why an element could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The element could not be read.
    #[error("cannot read the element: {0}")]
    Element(#[from] ElementError),
    /// The element is not UTF-8 (the framer lets only UTF-8 through, so this is not a framed element).
    #[error("the element is not UTF-8")]
    NotUtf8,
    /// The spec cannot be carried out (a bad regex or child name; [`super::RuleSet`] checks for these).
    #[error("invalid rewrite: {0}")]
    Spec(String),
}

/// The element re-serialized with `spec` applied: attributes of the top-level start tag set or removed,
/// direct children removed, a regex replacement in text nodes, or the whole element replaced. Prefixes resolve
/// through the element's own declarations, then `stream`'s.
///
/// Untouched bytes are copied unchanged. A removed child takes the whitespace-only text before it (its
/// indentation) along. Returns `Ok(None)` when nothing changes.
pub fn rewrite(
    bytes: &[u8],
    stream: &StreamHeader,
    spec: &RewriteSpec,
) -> Result<Option<Vec<u8>>, EditError> {
    if let Some(xml) = &spec.replace_with {
        let head = ElementHead::parse(bytes, stream)?;
        let replacement = expand_placeholders(xml, &head).into_bytes();
        return Ok((replacement != bytes).then_some(replacement));
    }
    let children = spec
        .remove_children
        .iter()
        .map(|name| ElementName::parse(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(EditError::Spec)?;
    let replace = match &spec.replace_text {
        Some(replace) => Some((
            Regex::new(&replace.pattern).map_err(|e| EditError::Spec(e.to_string()))?,
            replace.with.as_str(),
        )),
        None => None,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| EditError::NotUtf8)?;

    let mut reader = ns_reader_in(bytes, stream.default_ns.as_deref(), &stream.namespaces)?;
    let mut splices = Vec::new();
    // Open elements: 1 inside the top-level element, 2 inside one of its children.
    let mut depth = 0usize;
    // A child being removed: where its cut starts.
    let mut removing: Option<usize> = None;
    // Consecutive text, references and CDATA: one text node for `replace_text`.
    let mut run: Option<TextRun> = None;
    loop {
        let start = position(&reader, bytes.len());
        let (ns, event) = reader.read_resolved_event().map_err(ElementError::from)?;
        let removes_child = match &event {
            Event::Start(tag) | Event::Empty(tag) if depth == 1 && removing.is_none() => {
                let local = tag.local_name().into_inner();
                children.iter().any(|name| name.matches(bound(&ns), local))
            }
            _ => false,
        };
        let end = position(&reader, bytes.len());

        let in_text = depth >= 1 && removing.is_none() && replace.is_some();
        let piece = match &event {
            Event::Text(t) if in_text => Some(t.xml10_content()),
            Event::CData(t) if in_text => Some(t.xml10_content()),
            Event::GeneralRef(r) if in_text => Some(resolve_reference(r)?),
            _ => None,
        };
        match piece {
            Some(piece) => run.get_or_insert(TextRun::at(start)).push(end, &piece),
            None => {
                if let (Some(run), Some((regex, with))) = (run.take(), &replace) {
                    splices.extend(run.replace(regex, with));
                }
            }
        }

        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                let empty = matches!(event, Event::Empty(_));
                if depth == 0 {
                    // quick-xml checks attribute syntax only when asked; the splicing below relies on it.
                    for attribute in tag.attributes() {
                        attribute.map_err(ElementError::from)?;
                    }
                    let tag_text = text.get(start..end).ok_or(ElementError::NoElement)?;
                    splices.extend(attribute_splices(tag_text, start, spec)?);
                } else if removes_child {
                    let from = with_indentation(bytes, start);
                    if empty {
                        splices.push(Splice::cut(from..end));
                    } else {
                        removing = Some(from);
                    }
                }
                if empty && depth == 0 {
                    break;
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                // quick-xml's end-name check keeps ends balanced; saturate regardless.
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    if let Some(from) = removing.take() {
                        splices.push(Splice::cut(from..end));
                    }
                }
                if depth == 0 {
                    break;
                }
            }
            Event::Eof => return Err(ElementError::Unclosed.into()),
            _ => {}
        }
    }
    Ok((!splices.is_empty()).then(|| apply(bytes, &splices)))
}

/// For a dialback answer (`<db:result>` or `<db:verify>` in `jabber:server:dialback`, whatever its prefix, with
/// `type='valid'`): the same element with `type='invalid'`. `None` for anything else.
pub fn dialback_invalid(bytes: &[u8], stream: &StreamHeader) -> Option<Vec<u8>> {
    let dialback = Dialback::parse(bytes, stream).ok()?;
    if dialback.kind.as_deref() != Some("valid") {
        return None;
    }
    let spec = RewriteSpec {
        set: [("type".to_owned(), "invalid".to_owned())].into(),
        ..RewriteSpec::default()
    };
    rewrite(bytes, stream, &spec).ok().flatten()
}

/// What an [`Action::Inject`](super::Action::Inject) sends for the element in `bytes`: `xml` with its
/// placeholders filled in from the element's start tag (see [`expand_placeholders`]; empty if the tag cannot
/// be read).
pub fn injected(xml: &str, bytes: &[u8], stream: &StreamHeader) -> Vec<u8> {
    match ElementHead::parse(bytes, stream) {
        Ok(head) => expand_placeholders(xml, &head),
        Err(_) => fill(xml, None, None, None),
    }
    .into_bytes()
}

/// `xml` with `{from}`, `{to}` and `{id}` replaced by those attributes of `head` (escaped, empty when absent).
/// Other braces are left alone.
pub fn expand_placeholders(xml: &str, head: &ElementHead) -> String {
    fill(
        xml,
        head.from.as_deref(),
        head.to.as_deref(),
        head.id.as_deref(),
    )
}

fn fill(xml: &str, from: Option<&str>, to: Option<&str>, id: Option<&str>) -> String {
    if !xml.contains('{') {
        return xml.to_owned();
    }
    // One pass over the template: a value that itself contains `{to}` (a JID may) is not filled again.
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let (value, len) = if tail.starts_with("{from}") {
            (Some(from), 6)
        } else if tail.starts_with("{to}") {
            (Some(to), 4)
        } else if tail.starts_with("{id}") {
            (Some(id), 4)
        } else {
            (None, 1)
        };
        match value {
            Some(value) => out.push_str(&escape(value.unwrap_or_default())),
            None => out.push('{'),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// An element name in a rule: `local`, or `{namespace}local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ElementName {
    /// The namespace, if one is required.
    ns: Option<String>,
    /// The local name.
    local: String,
}

impl ElementName {
    /// Parses `local` or `{namespace}local`; the error says what is wrong.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let (ns, local) = match text.strip_prefix('{') {
            Some(rest) => {
                let (ns, local) = rest
                    .split_once('}')
                    .ok_or_else(|| format!("{text:?}: `{{` without `}}`"))?;
                if ns.is_empty() {
                    return Err(format!("{text:?}: empty namespace"));
                }
                (Some(ns.to_owned()), local)
            }
            None => (None, text),
        };
        if local.is_empty()
            || local.contains(|c: char| c.is_whitespace() || "{}:<>&'\"/=".contains(c))
        {
            return Err(format!(
                "{text:?} is not an element name: use a local name (`ping`) or `{{namespace}}local`"
            ));
        }
        Ok(ElementName {
            ns,
            local: local.to_owned(),
        })
    }

    /// Whether an element `local` in namespace `ns` is meant.
    pub(super) fn matches(&self, ns: Option<&str>, local: &str) -> bool {
        self.local == local
            && self
                .ns
                .as_ref()
                .is_none_or(|want| Some(want.as_str()) == ns)
    }
}

/// Whether the element in `bytes` has a direct child `name`. `default_ns` is the default namespace in scope
/// at the element (its children inherit it unless they declare their own).
pub(super) fn has_child(
    bytes: &[u8],
    default_ns: Option<&str>,
    name: &ElementName,
) -> Result<bool, ElementError> {
    let mut reader = ns_reader_in(bytes, default_ns, &[])?;
    let mut depth = 0usize;
    loop {
        let (ns, event) = reader.read_resolved_event()?;
        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                if depth == 1 && name.matches(bound(&ns), tag.local_name().into_inner()) {
                    return Ok(true);
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                } else if depth == 0 {
                    return Ok(false);
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(false);
                }
            }
            Event::Eof => return Err(ElementError::Unclosed),
            _ => {}
        }
    }
}

/// The text content of the element in `bytes`: all descendant text and CDATA, references decoded,
/// concatenated.
pub(super) fn text_content(bytes: &[u8]) -> Result<String, ElementError> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut text = String::new();
    let mut depth = 0usize;
    loop {
        match reader.read_event()? {
            Event::Start(_) => depth += 1,
            Event::Empty(_) if depth == 0 => return Ok(text),
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(text);
                }
            }
            Event::Text(t) if depth > 0 => text.push_str(&t.xml10_content()),
            Event::CData(t) if depth > 0 => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if depth > 0 => text.push_str(&resolve_reference(&r)?),
            Event::Eof => return Err(ElementError::Unclosed),
            _ => {}
        }
    }
}

/// Checks that `xml` is exactly one well-formed element (whitespace around it allowed), as XMPP allows it in a
/// stream: no declaration, comment, processing instruction, DTD or entity other than the predefined ones.
/// Prefixes need not be declared: the stream's declarations apply where it is sent. The error says what is
/// wrong.
pub(super) fn check_one_element(xml: &str) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_reader(xml.as_bytes());
    let mut depth = 0usize;
    let mut elements = 0usize;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {at}: {e}"))?;
        match &event {
            Event::Start(tag) | Event::Empty(tag) => {
                if depth == 0 {
                    elements += 1;
                    if elements > 1 {
                        return Err(format!(
                            "more than one element (a second starts at byte {at})"
                        ));
                    }
                }
                for attribute in tag.attributes() {
                    attribute.map_err(|e| format!("malformed attribute at byte {at}: {e}"))?;
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) if depth == 0 && !t.xml10_content().trim().is_empty() => {
                return Err(format!("text outside the element at byte {at}"));
            }
            Event::CData(_) if depth == 0 => {
                return Err(format!("CDATA outside the element at byte {at}"))
            }
            Event::GeneralRef(r) => {
                if depth == 0 {
                    return Err(format!("a reference outside the element at byte {at}"));
                }
                resolve_reference(r).map_err(|e| format!("at byte {at}: {e}"))?;
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {
                return Err(format!(
                    "XMPP forbids comments, processing instructions, declarations and DTDs (byte {at})"
                ));
            }
            Event::Eof if depth > 0 => return Err("the element is not closed".to_owned()),
            Event::Eof if elements == 0 => return Err("no element".to_owned()),
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// The namespace an element is bound to, if any.
fn bound<'n>(ns: &'n ResolveResult<'_>) -> Option<&'n str> {
    match ns {
        ResolveResult::Bound(ns) => Some(ns.0),
        _ => None,
    }
}

/// Where the reader is, as an index into `len` bytes.
fn position(reader: &NsReader<&[u8]>, len: usize) -> usize {
    usize::try_from(reader.buffer_position()).map_or(len, |p| p.min(len))
}

/// The text a character or predefined entity reference stands for.
fn resolve_reference(reference: &BytesRef<'_>) -> Result<Cow<'static, str>, ElementError> {
    if let Some(c) = reference.resolve_char_ref()? {
        return Ok(Cow::Owned(c.to_string()));
    }
    resolve_predefined_entity(reference)
        .map(Cow::Borrowed)
        .ok_or_else(|| ElementError::UnknownEntity(reference.to_string()))
}

/// `start` moved back over the whitespace-only text before it (an element's indentation). Text that is not
/// only whitespace is left whole.
fn with_indentation(bytes: &[u8], start: usize) -> usize {
    let before = bytes.get(..start).unwrap_or_default();
    let indentation = before
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    let from = start - indentation;
    if from == 0 || before.get(from - 1) == Some(&b'>') {
        from
    } else {
        start
    }
}

/// A byte range of the element and what takes its place.
#[derive(Debug)]
struct Splice {
    range: Range<usize>,
    with: String,
}

impl Splice {
    /// Removes `range`.
    fn cut(range: Range<usize>) -> Self {
        Splice {
            range,
            with: String::new(),
        }
    }
}

/// `bytes` with `splices` (in document order, not overlapping) carried out.
fn apply(bytes: &[u8], splices: &[Splice]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut at = 0;
    for splice in splices {
        // In order and apart by construction; clamping keeps that true regardless.
        let from = splice.range.start.max(at);
        out.extend_from_slice(bytes.get(at..from).unwrap_or_default());
        out.extend_from_slice(splice.with.as_bytes());
        at = splice.range.end.max(from);
    }
    out.extend_from_slice(bytes.get(at..).unwrap_or_default());
    out
}

/// One text node being read: where it is and what it says.
#[derive(Debug)]
struct TextRun {
    range: Range<usize>,
    decoded: String,
}

impl TextRun {
    fn at(start: usize) -> Self {
        TextRun {
            range: start..start,
            decoded: String::new(),
        }
    }

    fn push(&mut self, end: usize, text: &str) {
        self.range.end = end;
        self.decoded.push_str(text);
    }

    /// The splice that writes this node anew with `regex` replaced, if it matches.
    fn replace(self, regex: &Regex, with: &str) -> Option<Splice> {
        match regex.replace_all(&self.decoded, with) {
            Cow::Borrowed(_) => None,
            Cow::Owned(replaced) => Some(Splice {
                range: self.range,
                with: partial_escape(replaced).into_owned(),
            }),
        }
    }
}

/// One attribute located in a start tag.
#[derive(Debug)]
struct AttributeSpan<'a> {
    /// The name as written.
    name: &'a str,
    /// From the whitespace before the name to the closing quote included: what removing it cuts.
    whole: Range<usize>,
    /// The raw value between the quotes.
    value: Range<usize>,
}

/// The splices `spec.set` and `spec.remove` make to `tag`, a start tag found at `offset` in the element.
fn attribute_splices(
    tag: &str,
    offset: usize,
    spec: &RewriteSpec,
) -> Result<Vec<Splice>, EditError> {
    let shift = |range: Range<usize>| range.start + offset..range.end + offset;
    let (spans, attributes_end) = attribute_spans(tag)
        .ok_or_else(|| EditError::Spec(format!("cannot locate the attributes of {tag:?}")))?;
    let mut splices = Vec::new();
    for span in &spans {
        if spec.remove.iter().any(|name| name == span.name) {
            // The span starts with the whitespace before the attribute; when the next attribute follows without
            // any (`id='1'type='chat'`, which the framer lets pass), a space stays, or it would join the name.
            let next = tag.as_bytes().get(span.whole.end).copied();
            let joins =
                next.is_some_and(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'));
            let mut splice = Splice::cut(shift(span.whole.clone()));
            if joins {
                splice.with = String::from(" ");
            }
            splices.push(splice);
        } else if let Some(value) = spec.set.get(span.name) {
            let raw = tag.get(span.value.clone()).unwrap_or_default();
            if unescape(raw).ok().as_deref() != Some(value.as_str()) {
                splices.push(Splice {
                    range: shift(span.value.clone()),
                    with: escape(value).into_owned(),
                });
            }
        }
    }
    let added: String = spec
        .set
        .iter()
        .filter(|(name, _)| !spans.iter().any(|span| span.name == name.as_str()))
        .map(|(name, value)| format!(" {name}='{}'", escape(value)))
        .collect();
    if !added.is_empty() {
        splices.push(Splice {
            range: shift(attributes_end..attributes_end),
            with: added,
        });
    }
    Ok(splices)
}

/// The attributes of a start tag (`<name a='1' b="2">` or `.../>`) whose syntax quick-xml has checked, and
/// where the last one (or the name) ends, which is where new attributes go. `None` if the tag is not what
/// that check lets through.
fn attribute_spans(tag: &str) -> Option<(Vec<AttributeSpan<'_>>, usize)> {
    let bytes = tag.as_bytes();
    let is_space = |at: usize| matches!(bytes.get(at), Some(b' ' | b'\t' | b'\r' | b'\n'));
    let ends_name =
        |at: usize| matches!(bytes.get(at), None | Some(b'=' | b'/' | b'>')) || is_space(at);
    let mut at = 1;
    while !ends_name(at) {
        at += 1;
    }
    let mut spans = Vec::new();
    let mut attributes_end = at;
    loop {
        let lead = at;
        while is_space(at) {
            at += 1;
        }
        let name_start = at;
        while !ends_name(at) {
            at += 1;
        }
        if at == name_start {
            return Some((spans, attributes_end));
        }
        let name = tag.get(name_start..at)?;
        while is_space(at) {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            return None;
        }
        at += 1;
        while is_space(at) {
            at += 1;
        }
        let quote = *bytes.get(at).filter(|q| matches!(q, b'\'' | b'"'))?;
        let value_start = at + 1;
        let value_end = value_start + bytes.get(value_start..)?.iter().position(|&b| b == quote)?;
        at = value_end + 1;
        attributes_end = at;
        spans.push(AttributeSpan {
            name,
            whole: lead..at,
            value: value_start..value_end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::spec::TextReplace;

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='a.example' to='b.example' id='s1'>";

    fn stream() -> StreamHeader {
        StreamHeader::parse(HEADER).expect("header")
    }

    fn spec(toml: &str) -> RewriteSpec {
        toml::from_str(toml).expect("spec")
    }

    fn rewritten(bytes: &str, spec: &RewriteSpec) -> Option<String> {
        rewrite(bytes.as_bytes(), &stream(), spec)
            .expect("rewrite")
            .map(|b| String::from_utf8(b).expect("utf-8"))
    }

    #[test]
    fn sets_and_removes_attributes_keeping_the_rest() {
        let message = "<message  to=\"b@b.example\"\n type='chat' id='m&amp;1'><body a='1'>hi &amp; bye</body></message>";
        let s = spec("set = { type = 'headline', from = \"a&b's\" }\nremove = ['id']");
        assert_eq!(
            rewritten(message, &s).as_deref(),
            Some(
                "<message  to=\"b@b.example\"\n type='headline' from='a&amp;b&apos;s'><body a='1'>hi &amp; bye</body></message>"
            )
        );
        // Into double quotes, and on an empty element with a space before `/>`.
        let s = spec("set = { to = 'c\"d' }");
        assert_eq!(
            rewritten("<presence to=\"x\" />", &s).as_deref(),
            Some("<presence to=\"c&quot;d\" />")
        );
        assert_eq!(
            rewritten("<presence />", &spec("set = { type = 'unavailable' }")).as_deref(),
            Some("<presence type='unavailable' />")
        );
        // Setting a value already there (escaped differently) or removing an absent attribute changes nothing.
        let s = spec("set = { id = 'm&1' }\nremove = ['xml:lang']");
        assert_eq!(rewritten(message, &s), None);
        // A child's attributes are not the top-level element's.
        assert_eq!(rewritten(message, &spec("remove = ['a']")), None);
        // With no space before the next attribute (the framer lets it pass), one stays (found by fuzzing).
        assert_eq!(
            rewritten("<message id='m1'type='chat'/>", &spec("remove = ['id']")).as_deref(),
            Some("<message type='chat'/>")
        );
    }

    #[test]
    fn removes_starttls_from_features() {
        let features = "<stream:features>\n  <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\n  \
            <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\n</stream:features>";
        let s = spec("remove_children = ['{urn:ietf:params:xml:ns:xmpp-tls}starttls']");
        assert_eq!(
            rewritten(features, &s).as_deref(),
            Some(
                "<stream:features>\n  <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\n</stream:features>"
            )
        );
        // By local name alone; an empty child; another namespace is not removed.
        assert_eq!(
            rewritten(
                "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
                &spec("remove_children = ['starttls']"),
            )
            .as_deref(),
            Some("<stream:features><bidi xmlns='urn:xmpp:features:bidi'/></stream:features>")
        );
        assert_eq!(
            rewritten(features, &spec("remove_children = ['{urn:other}starttls']")),
            None
        );
        // Unprefixed children without a declaration are in the stream's default namespace.
        assert_eq!(
            rewritten(
                "<message><body>x</body><ping xmlns='urn:xmpp:ping'/></message>",
                &spec("remove_children = ['{jabber:server}body']"),
            )
            .as_deref(),
            Some("<message><ping xmlns='urn:xmpp:ping'/></message>")
        );
    }

    #[test]
    fn replaces_text() {
        let s = RewriteSpec {
            replace_text: Some(TextReplace {
                pattern: "(\\w+) & (\\w+)".to_owned(),
                with: "$2 <$1>".to_owned(),
            }),
            ..RewriteSpec::default()
        };
        assert_eq!(
            rewritten(
                "<message type='chat'><body>fish &amp; chips</body><subject>no match</subject></message>",
                &s
            )
            .as_deref(),
            Some("<message type='chat'><body>chips &lt;fish&gt;</body><subject>no match</subject></message>")
        );
        assert_eq!(
            rewritten("<message><body>nothing</body></message>", &s),
            None
        );
    }

    #[test]
    fn replaces_the_whole_element() {
        let s = spec("replace_with = \"<message from='{to}' to='{from}' type='headline'><body>replaced</body></message>\"");
        assert_eq!(
            rewritten("<message from='a@a.example' to='b&amp;c@b.example'><body>x</body></message>", &s).as_deref(),
            Some("<message from='b&amp;c@b.example' to='a@a.example' type='headline'><body>replaced</body></message>")
        );
    }

    #[test]
    fn fills_in_injected_xml() {
        let xml = "<message from='{from}' to='{to}' id='x-{id}'><body>{other}</body></message>";
        assert_eq!(
            injected(xml, b"<message from='a@a.example' to='b@b.example' id='1&amp;2'>", &stream()),
            b"<message from='a@a.example' to='b@b.example' id='x-1&amp;2'><body>{other}</body></message>"
        );
        assert_eq!(
            injected(xml, b"<iq/>", &stream()),
            b"<message from='' to='' id='x-'><body>{other}</body></message>"
        );
        // A value holding a placeholder is not filled again (found by fuzzing).
        assert_eq!(
            injected(xml, b"<message from='{to}@a.example' to='b@b.example' id='{from}'>", &stream()),
            b"<message from='{to}@a.example' to='b@b.example' id='x-{from}'><body>{other}</body></message>"
        );
    }

    #[test]
    fn turns_dialback_answers_invalid() {
        let stream = stream();
        let invalid = |bytes: &[u8], stream: &StreamHeader| {
            dialback_invalid(bytes, stream).map(|b| String::from_utf8(b).expect("utf-8"))
        };
        assert_eq!(
            invalid(b"<db:result from='a' to='b' type='valid'/>", &stream).as_deref(),
            Some("<db:result from='a' to='b' type='invalid'/>")
        );
        assert_eq!(
            invalid(
                b"<db:verify from='a' to='b' id='i' type=\"valid\"></db:verify>",
                &stream
            )
            .as_deref(),
            Some("<db:verify from='a' to='b' id='i' type=\"invalid\"></db:verify>")
        );
        // The dialback namespace under another prefix.
        let other = StreamHeader::parse(
            b"<stream:stream xmlns='jabber:server' xmlns:dbk='jabber:server:dialback' \
              xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .expect("header");
        assert_eq!(
            invalid(b"<dbk:result from='a' to='b' type='valid'/>", &other).as_deref(),
            Some("<dbk:result from='a' to='b' type='invalid'/>")
        );
        assert_eq!(
            invalid(b"<db:result from='a' to='b' type='valid'/>", &other),
            None
        );
        assert_eq!(
            invalid(b"<db:result from='a' to='b' type='invalid'/>", &stream),
            None
        );
        assert_eq!(
            invalid(b"<db:result from='a' to='b'>key</db:result>", &stream),
            None
        );
        assert_eq!(invalid(b"<message type='valid'/>", &stream), None);
    }

    #[test]
    fn reads_children_and_text() {
        let ping = b"<iq type='get'><ping xmlns='urn:xmpp:ping'/><query><ping/></query></iq>";
        let name = |s: &str| ElementName::parse(s).expect("name");
        assert!(has_child(ping, Some("jabber:server"), &name("ping")).expect("reads"));
        assert!(has_child(ping, None, &name("{urn:xmpp:ping}ping")).expect("reads"));
        assert!(!has_child(ping, None, &name("{urn:other}ping")).expect("reads"));
        assert!(
            has_child(ping, Some("jabber:server"), &name("{jabber:server}query")).expect("reads")
        );
        assert!(!has_child(b"<iq/>", None, &name("ping")).expect("reads"));
        assert_eq!(
            text_content(
                b"<message><body>a &lt;b&gt; &#x263A;</body><x><![CDATA[<c>]]></x></message>"
            )
            .expect("text"),
            "a <b> \u{263A}<c>"
        );
        assert_eq!(text_content(b"<r/>").expect("text"), "");
    }

    #[test]
    fn checks_one_element() {
        assert_eq!(
            check_one_element(" <message><body>x &amp; y</body></message>\n"),
            Ok(())
        );
        assert_eq!(check_one_element("<db:result type='valid'/>"), Ok(()));
        for (xml, problem) in [
            ("", "no element"),
            ("<a/><b/>", "more than one element"),
            ("<a>", "not closed"),
            ("<a></b>", "malformed XML"),
            ("<a x='1' x='2'/>", "malformed attribute"),
            ("<!-- c --><a/>", "forbids comments"),
            ("<a>&custom;</a>", "unknown entity"),
            ("x<a/>", "text outside"),
        ] {
            let error = check_one_element(xml).expect_err(xml);
            assert!(error.contains(problem), "{xml:?}: {error}");
        }
    }

    #[test]
    fn element_names() {
        assert_eq!(
            ElementName::parse("{urn:xmpp:ping}ping"),
            Ok(ElementName {
                ns: Some("urn:xmpp:ping".to_owned()),
                local: "ping".to_owned()
            })
        );
        for bad in ["", "{urn:x", "{}ping", "db:result", "{urn:x}", "a b"] {
            assert!(ElementName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
