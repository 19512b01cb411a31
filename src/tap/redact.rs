//! Redaction: secrets in transcribed XML replaced by a marker of exactly the same byte length.
//!
//! [`Redaction::apply`] is a pure function over an XML fragment (one or more whole top-level elements, as in the
//! `xml` field of an event or a relayed chunk, possibly with a stream header's start tag and `</stream:stream>`).
//! It tokenizes with quick-xml, decides from each element's namespace and name whether its text (or one of its
//! attributes) is a secret, and overwrites only those bytes. Element names, attributes, namespaces and the text
//! of everything else stay as they were, and the length does not change, so byte counts, pcap sequence numbers
//! and segment lengths computed from the original stay consistent.
//!
//! The marker for `n` bytes is `[redacted:n]` padded with `*` to `n` bytes, or `n` stars when that label is
//! longer than `n` ([`mask`]).
//!
//! What counts as a secret ([`Redaction`]):
//! - SASL payloads: the text of `<auth>`, `<response>`, `<challenge>`, `<success>` (RFC 6120,
//!   `urn:ietf:params:xml:ns:xmpp-sasl`) and of `<initial-response>`, `<response>`, `<challenge>`,
//!   `<additional-data>` (XEP-0388, `urn:xmpp:sasl:2`);
//! - dialback keys: the text of `<db:result>` and `<db:verify>` (`jabber:server:dialback`);
//! - passwords: `<password>` (and `<digest>`) in `jabber:iq:register` and `jabber:iq:auth`, and the `<value>`s
//!   of data-form fields of type `text-private` or whose `var` names a password or secret;
//! - stream management resumption ids (XEP-0198, `urn:xmpp:sm:3`): the `id` attribute of `<enabled>` and the
//!   `previd` of `<resume>` and `<resumed>`;
//! - message bodies: the text (at any depth) of a `<body>` inside a `<message>`, XHTML-IM bodies included.
//!
//! Prefixes resolve through the fragment's own declarations, then through the stream header's (when the caller
//! has it), then by convention (`db` for dialback, `stream` for the stream namespace), so a `<db:result>` cut out
//! of a stream whose header declared `xmlns:db` is still recognized.
//!
//! If the fragment cannot be tokenized, the redactor fails closed: everything from the point where it lost track
//! to the end is masked, markup included. For frames the framer cut this happens only when quick-xml refuses a
//! namespace declaration (`xmlns:xml='…'`, a prefix bound to the reserved `xml` or `xmlns` namespace).

use crate::xml::element::{
    StreamHeader, NS_CLIENT, NS_DIALBACK, NS_SASL, NS_SERVER, NS_SM, NS_STREAM,
};
use memchr::memmem;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, PrefixDeclaration, ResolveResult};
use quick_xml::NsReader;
use std::ops::Range;
use std::sync::LazyLock;

/// SASL 2 (XEP-0388).
const NS_SASL2: &str = "urn:xmpp:sasl:2";
/// In-band registration (XEP-0077).
const NS_REGISTER: &str = "jabber:iq:register";
/// Non-SASL authentication (XEP-0078).
const NS_IQ_AUTH: &str = "jabber:iq:auth";
/// Data forms (XEP-0004).
const NS_DATA_FORMS: &str = "jabber:x:data";
/// The XHTML namespace of XHTML-IM bodies (XEP-0071).
const NS_XHTML: &str = "http://www.w3.org/1999/xhtml";

/// Which secrets to hide. `Default` is what `xmpptap proxy` does without flags: SASL payloads only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redaction {
    /// SASL payloads (credentials, SCRAM proofs, server signatures).
    pub sasl: bool,
    /// Server Dialback keys.
    pub dialback_keys: bool,
    /// Passwords in registration and legacy-auth queries, private data-form fields.
    pub passwords: bool,
    /// XEP-0198 resumption ids (whoever has one can take over the session).
    pub sm_ids: bool,
    /// Message bodies.
    pub bodies: bool,
}

impl Default for Redaction {
    /// SASL payloads are hidden, everything else is kept (the proxy without `--redact` or `--log-secrets`).
    fn default() -> Self {
        Redaction {
            sasl: true,
            ..Redaction::log_secrets()
        }
    }
}

impl Redaction {
    /// Nothing hidden (`--log-secrets`).
    pub const fn log_secrets() -> Self {
        Redaction {
            sasl: false,
            dialback_keys: false,
            passwords: false,
            sm_ids: false,
            bodies: false,
        }
    }

    /// Every secret hidden, message bodies kept (`--redact`; the default of `xmpptap export`).
    pub const fn redact() -> Self {
        Redaction {
            sasl: true,
            dialback_keys: true,
            passwords: true,
            sm_ids: true,
            bodies: false,
        }
    }

    /// The same, with message bodies hidden too (`--redact-bodies`).
    pub const fn with_bodies(self) -> Self {
        Redaction {
            bodies: true,
            ..self
        }
    }

    /// Whether nothing is hidden (so fragments need not even be read).
    pub fn is_none(&self) -> bool {
        *self == Redaction::log_secrets()
    }

    /// A short description for `--check` and logs: `sasl, dialback keys, ...` or `nothing`.
    pub fn describe(&self) -> String {
        let names = [
            (self.sasl, "SASL payloads"),
            (self.dialback_keys, "dialback keys"),
            (self.passwords, "passwords"),
            (self.sm_ids, "stream management ids"),
            (self.bodies, "message bodies"),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        if on.is_empty() {
            String::from("nothing (secrets are logged)")
        } else {
            on.join(", ")
        }
    }

    /// Whether [`Self::apply_in`] could find anything to hide in `xml`, a fragment the framer cut (well-formed),
    /// sent under `stream`: [`Watch::may_hide`] of [`Self::watch`].
    pub fn may_hide(&self, xml: &[u8], stream: Option<&StreamHeader>) -> bool {
        self.watch(stream).may_hide(xml)
    }

    /// What to look for in the fragments sent under `stream` to tell whether they may hold a secret: worked out
    /// once per stream header, used for each of its stanzas.
    pub fn watch<'a>(&self, stream: Option<&'a StreamHeader>) -> Watch<'a> {
        let mut watch = Watch {
            redaction: *self,
            always: self.bodies,
            prefixes: [""; Watch::MAX_PREFIXES],
            len: 0,
        };
        if self.is_none() || watch.always {
            return watch;
        }
        // `db` is dialback by convention even where no header declares it (see `reader`).
        if self.dialback_keys {
            watch.prefixes[0] = "db";
            watch.len = 1;
        }
        let Some(stream) = stream else {
            return watch;
        };
        watch.always = stream
            .default_ns
            .as_deref()
            .is_some_and(|ns| self.watched().any(|uri| uri == ns));
        for (prefix, uri) in &stream.namespaces {
            if self.watched().any(|watched| watched == uri) {
                match watch.prefixes.get_mut(watch.len) {
                    Some(slot) => {
                        *slot = prefix;
                        watch.len += 1;
                    }
                    None => watch.always = true,
                }
            }
        }
        watch
    }

    /// The namespaces whose elements may hold a secret hidden here (message bodies aside).
    fn watched(&self) -> impl Iterator<Item = &'static str> + Clone {
        let rules: [(bool, &'static [&'static str]); 4] = [
            (self.sasl, &[NS_SASL, NS_SASL2]),
            (self.dialback_keys, &[NS_DIALBACK]),
            (self.passwords, &[NS_REGISTER, NS_IQ_AUTH, NS_DATA_FORMS]),
            (self.sm_ids, &[NS_SM]),
        ];
        rules
            .into_iter()
            .filter(|(on, _)| *on)
            .flat_map(|(_, uris)| uris.iter().copied())
    }

    /// The fragment with its secrets masked, or `None` when it holds none (or nothing is to be hidden). The
    /// result has exactly the length of `xml`.
    pub fn apply(&self, xml: &[u8]) -> Option<Vec<u8>> {
        self.apply_in(xml, None)
    }

    /// As [`Self::apply`], with the namespace declarations of the stream header the fragment was sent under.
    pub fn apply_in(&self, xml: &[u8], stream: Option<&StreamHeader>) -> Option<Vec<u8>> {
        if self.is_none() {
            return None;
        }
        let scan = self.scan(xml, stream);
        if scan.spans.is_empty() {
            return None;
        }
        let mut out = xml.to_vec();
        for span in scan.spans {
            mask(&mut out[span]);
        }
        Some(out)
    }

    /// Whether the `id` of a top-level element (as the transcript's `stanza` events record it) is a secret:
    /// the resumption id of a stream management `<enabled>`.
    pub fn hides_id_of(&self, ns: Option<&str>, name: &str) -> bool {
        self.sm_ids && ns == Some(NS_SM) && name.rsplit(':').next() == Some("enabled")
    }

    /// The byte ranges of `xml` to mask, and whether `xml` ends between elements.
    fn scan(&self, xml: &[u8], stream: Option<&StreamHeader>) -> Scan {
        let mut spans: Vec<Range<usize>> = Vec::new();
        // quick-xml skips a UTF-8 byte order mark at the start of its input without counting it in
        // `buffer_position`: add its length back to every position. The reader gets all of `xml`, so that it
        // skips exactly the one counted here (given what follows, it would skip a second one too).
        let bom = if xml.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        let mut reader = match reader(xml, stream) {
            Some(reader) => reader,
            None => {
                let mut spans = Vec::new();
                push(0..xml.len(), &mut spans);
                return Scan {
                    spans,
                    clean: false,
                };
            }
        };
        let mut clean = false;
        let mut open: Vec<Open> = Vec::new();
        loop {
            let before = bom + to_usize(reader.buffer_position());
            let (ns, event) = match reader.read_resolved_event() {
                Ok((ns, event)) => (namespace(&ns), event),
                Err(_) => {
                    // Lost track: mask everything not yet known to be safe (fail closed).
                    let from = open
                        .iter()
                        .rev()
                        .find_map(|o| o.masked_from)
                        .unwrap_or(before);
                    spans.retain(|span| span.start < from);
                    if let Some(last) = spans.last_mut() {
                        last.end = last.end.min(from);
                    }
                    push(from..xml.len(), &mut spans);
                    break;
                }
            };
            let after = bom + to_usize(reader.buffer_position());
            match event {
                Event::Start(ref tag) | Event::Empty(ref tag) => {
                    let parent = open.last();
                    let element = self.classify(ns.as_deref(), tag, parent);
                    let (attributes_ok, attributes) =
                        self.secret_attributes(ns.as_deref(), tag, before);
                    for span in attributes {
                        push(span, &mut spans);
                    }
                    if !attributes_ok {
                        push(before..xml.len(), &mut spans);
                        break;
                    }
                    if matches!(event, Event::Start(_)) {
                        open.push(Open {
                            masked_from: element.mask_text.then_some(after),
                            ..element
                        });
                    }
                }
                Event::End(_) => {
                    open.pop();
                }
                Event::Text(ref text) => {
                    if open.last().is_some_and(|o| o.mask_text)
                        && !text.chars().all(|c| c.is_ascii_whitespace())
                    {
                        push(before..after, &mut spans);
                    }
                }
                Event::GeneralRef(_) => {
                    if open.last().is_some_and(|o| o.mask_text) {
                        push(before..after, &mut spans);
                    }
                }
                Event::CData(_) => {
                    // Only the content: `<![CDATA[` and `]]>` stay, so the markup stays the same.
                    if open.last().is_some_and(|o| o.mask_text) && after >= before + 12 {
                        push(before + 9..after - 3, &mut spans);
                    }
                }
                Event::Eof => {
                    clean = open.iter().all(|o| o.stream);
                    break;
                }
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        Scan { spans, clean }
    }

    /// What an element is, from its namespace, name, attributes and parent.
    fn classify(&self, ns: Option<&str>, tag: &BytesStart, parent: Option<&Open>) -> Open {
        let local = tag.local_name().into_inner();
        let content_ns = matches!(ns, None | Some(NS_CLIENT) | Some(NS_SERVER));
        let in_message = parent.is_some_and(|p| p.in_message) || (content_ns && local == "message");
        let in_body = parent.is_some_and(|p| p.in_body)
            || (parent.is_some_and(|p| p.in_message)
                && local == "body"
                && (content_ns || ns == Some(NS_XHTML)));
        let private_field =
            self.passwords && ns == Some(NS_DATA_FORMS) && local == "field" && private_field(tag);
        let mask_text = match (ns, local) {
            (Some(NS_SASL), "auth" | "response" | "challenge" | "success") => self.sasl,
            (Some(NS_SASL2), "initial-response" | "response" | "challenge" | "additional-data") => {
                self.sasl
            }
            (Some(NS_DIALBACK), "result" | "verify") => self.dialback_keys,
            (Some(NS_REGISTER), "password") | (Some(NS_IQ_AUTH), "password" | "digest") => {
                self.passwords
            }
            (Some(NS_DATA_FORMS), "value") => parent.is_some_and(|p| p.private_field),
            _ => false,
        } || (self.bodies && in_body);
        Open {
            mask_text,
            masked_from: None,
            stream: ns == Some(NS_STREAM) && local == "stream",
            in_message,
            in_body,
            private_field,
        }
    }

    /// The value ranges (absolute in the fragment) of the secret attributes of a start tag beginning at `start`.
    /// `false` when an attribute could not be located (the caller then fails closed).
    fn secret_attributes(
        &self,
        ns: Option<&str>,
        tag: &BytesStart,
        start: usize,
    ) -> (bool, Vec<Range<usize>>) {
        let secret: &[&str] = match (ns, tag.local_name().into_inner()) {
            (Some(NS_SM), "enabled") if self.sm_ids => &["id"],
            (Some(NS_SM), "resume" | "resumed") if self.sm_ids => &["previd"],
            _ => return (true, Vec::new()),
        };
        let content: &str = tag;
        let mut spans = Vec::new();
        for attribute in tag.attributes().with_checks(false) {
            let Ok(attribute) = attribute else {
                return (false, spans);
            };
            if !secret.contains(&attribute.key.0) {
                continue;
            }
            // The value borrows from the tag's text (between `<` and `>`), which starts one byte after `start`.
            let offset =
                (attribute.value.as_ptr() as usize).wrapping_sub(content.as_ptr() as usize);
            let len = attribute.value.len();
            if offset
                .checked_add(len)
                .is_none_or(|end| end > content.len())
                || content.get(offset..offset + len) != Some(&*attribute.value)
            {
                return (false, spans);
            }
            spans.push(start + 1 + offset..start + 1 + offset + len);
        }
        (true, spans)
    }
}

/// A quick, conservative look at fragments sent under one stream header ([`Redaction::watch`]) that spares
/// reading every stanza with the namespace reader. Each secret lives in an element of a known namespace
/// (message bodies excepted), and an element is in a namespace only if its name has a prefix the stream header
/// bound to it (or `db`, by convention), the fragment declares the namespace itself, or it is the stream's
/// default namespace.
#[derive(Clone, Copy, Debug)]
pub struct Watch<'a> {
    redaction: Redaction,
    /// Every fragment is to be read: bodies are hidden, a watched namespace is the stream's default one, or the
    /// header binds more prefixes to watched namespaces than are kept.
    always: bool,
    /// The prefixes bound to a watched namespace: the first `len`.
    prefixes: [&'a str; Watch::MAX_PREFIXES],
    len: usize,
}

impl Watch<'_> {
    const MAX_PREFIXES: usize = 4;

    /// Whether [`Redaction::apply_in`] could find anything to hide in `xml`; `true` whenever in doubt
    /// (XML that is not UTF-8 included).
    pub fn may_hide(&self, xml: &[u8]) -> bool {
        if self.redaction.is_none() {
            return false;
        }
        match std::str::from_utf8(xml) {
            Ok(text) => self.may_hide_text(text),
            Err(_) => true,
        }
    }

    /// [`Self::may_hide`] for a fragment in which no element has a prefix or declares a namespace, so that every
    /// element is in the stream's default namespace: the framer tells (`HeadSpans::one_namespace`), and then
    /// the fragment need not be read.
    pub fn may_hide_unqualified(&self) -> bool {
        !self.redaction.is_none() && self.always
    }

    /// [`Self::may_hide`] for a fragment known to be UTF-8.
    pub fn may_hide_text(&self, xml: &str) -> bool {
        if self.redaction.is_none() {
            return false;
        }
        if self.always {
            return true;
        }
        static XMLNS: LazyLock<memmem::Finder> = LazyLock::new(|| memmem::Finder::new("xmlns"));
        let bytes = xml.as_bytes();
        let prefixes = &self.prefixes[..self.len];
        // `<prefix:`, looked for from its colon (colons are rare outside names in a stanza).
        let prefixed = memchr::memchr_iter(b':', bytes).any(|colon| {
            prefixes.iter().any(|prefix| {
                colon.checked_sub(prefix.len() + 1).is_some_and(|lt| {
                    bytes[lt] == b'<' && &bytes[lt + 1..colon] == prefix.as_bytes()
                })
            })
        });
        let found = |needle: &str| memmem::find(bytes, needle.as_bytes()).is_some();
        // A namespace value could also be spelled with character references; and a prefixed declaration
        // quick-xml refuses (`xmlns:xml`, a prefix bound to the reserved `xml` namespace) makes `apply_in`
        // fail closed (with the default depth limit, default declarations are too few to be refused).
        prefixed
            || (XMLNS.find(bytes).is_some()
                && (found("&#") || found("xmlns:") || self.redaction.watched().any(found)))
    }
}

/// What [`Redaction::scan`] found.
#[derive(Debug)]
struct Scan {
    /// The byte ranges to mask, in order, not overlapping.
    spans: Vec<Range<usize>>,
    /// The fragment ends between elements (only a stream header may be open): a stream cut here can be read on
    /// from the next byte without what came before.
    clean: bool,
}

/// Redaction over a byte stream that arrives in chunks cut anywhere (the reads and writes of a socket), chunk by
/// chunk, each keeping its length. Bytes since the last point between elements are kept and read again with
/// each new chunk, so a secret split across chunks is still recognized; once the stream turns into TLS records
/// (after `<proceed/>`, or from the start with Direct TLS) it is ciphertext and passes untouched.
#[derive(Debug, Default)]
pub struct StreamRedactor {
    /// The bytes since the last point between elements.
    carry: Vec<u8>,
    state: StreamState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum StreamState {
    /// Plaintext XML.
    #[default]
    Xml,
    /// TLS records: nothing to read.
    Tls,
    /// More than [`StreamRedactor::MAX_CARRY`] bytes without a point between elements: every further byte is
    /// masked (fail closed). The framer's stanza size limit makes this unreachable for real peers.
    Lost,
}

impl StreamRedactor {
    /// Longest run of bytes kept while an element is open.
    const MAX_CARRY: usize = 4 << 20;

    /// The chunk with its secrets masked, or `None` when it is to pass as it is.
    pub fn chunk(
        &mut self,
        redaction: &Redaction,
        chunk: &[u8],
        stream: Option<&StreamHeader>,
    ) -> Option<Vec<u8>> {
        if redaction.is_none() || chunk.is_empty() {
            return None;
        }
        match self.state {
            StreamState::Tls => return None,
            StreamState::Lost => {
                let mut out = chunk.to_vec();
                mask(&mut out);
                return Some(out);
            }
            StreamState::Xml => {}
        }
        if self.carry.is_empty() && looks_like_tls(chunk) {
            self.state = StreamState::Tls;
            return None;
        }
        self.carry.extend_from_slice(chunk);
        let scan = redaction.scan(&self.carry, stream);
        let offset = self.carry.len() - chunk.len();
        let mut out: Option<Vec<u8>> = None;
        for span in scan.spans {
            let (start, end) = (span.start.max(offset), span.end);
            if start < end {
                let out = out.get_or_insert_with(|| chunk.to_vec());
                mask(&mut out[start - offset..end - offset]);
            }
        }
        if scan.clean {
            self.carry.clear();
        } else if self.carry.len() > Self::MAX_CARRY {
            self.carry = Vec::new();
            self.state = StreamState::Lost;
        }
        out
    }
}

/// Whether a chunk starts with a TLS record header (content type 20-23, version 3.x). Those bytes are control
/// characters XML does not allow, so plaintext XMPP never starts with them.
fn looks_like_tls(chunk: &[u8]) -> bool {
    matches!(chunk.first(), Some(0x14..=0x17)) && chunk.get(1).is_none_or(|&major| major == 3)
}

/// A string of the same byte length as `value`, masked (for secrets the transcript also records as a field).
pub fn mask_str(value: &str) -> String {
    let mut bytes = vec![0; value.len()];
    mask(&mut bytes);
    // The marker is ASCII.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Adds a span to mask, merging it with the previous one when they touch: text and entity references next to
/// each other form one run, hidden behind one marker.
fn push(span: Range<usize>, spans: &mut Vec<Range<usize>>) {
    if span.is_empty() {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.end == span.start => last.end = span.end,
        _ => spans.push(span),
    }
}

/// One open element, as far as redaction cares.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Its direct text is a secret.
    mask_text: bool,
    /// Where its content starts, when it is masked (where to mask from if the rest cannot be read).
    masked_from: Option<usize>,
    /// It is a stream header (`<stream:stream>`): open for the whole stream, not an element in progress.
    stream: bool,
    /// It is, or is inside, a `<message>`.
    in_message: bool,
    /// It is, or is inside, a message `<body>`.
    in_body: bool,
    /// It is a data-form field whose values are secret.
    private_field: bool,
}

/// Whether a data-form `<field>` holds a secret: `type='text-private'`, or a `var` naming a password or secret
/// (submitted forms usually leave the type out).
fn private_field(tag: &BytesStart) -> bool {
    tag.attributes().with_checks(false).flatten().any(|a| {
        let value = a.value.to_ascii_lowercase();
        match a.key.0 {
            "type" => value == "text-private",
            "var" => value.contains("password") || value.contains("secret"),
            _ => false,
        }
    })
}

/// Overwrites `bytes` with the marker for their length: `[redacted:N]` then `*`s, or only `*`s when the label
/// does not fit.
pub fn mask(bytes: &mut [u8]) {
    let label = format!("[redacted:{}]", bytes.len());
    bytes.fill(b'*');
    if label.len() <= bytes.len() {
        bytes[..label.len()].copy_from_slice(label.as_bytes());
    }
}

/// A reader for `xml` that tolerates fragments: `</stream:stream>` without its start, a stream header without
/// its end. Prefixes not declared in the fragment resolve through `stream`, then by convention.
fn reader<'a>(xml: &'a [u8], stream: Option<&StreamHeader>) -> Option<NsReader<&'a [u8]>> {
    let mut reader = NsReader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.trim_text(false);
    let resolver = reader.resolver_mut();
    let declared =
        |prefix: &str| stream.is_some_and(|s| s.namespaces.iter().any(|(p, _)| p == prefix));
    for (prefix, ns) in [("db", NS_DIALBACK), ("stream", NS_STREAM)] {
        if !declared(prefix) {
            resolver
                .add(PrefixDeclaration::Named(prefix), Namespace(ns))
                .ok()?;
        }
    }
    if let Some(stream) = stream {
        if let Some(ns) = &stream.default_ns {
            resolver
                .add(PrefixDeclaration::Default, Namespace(ns))
                .ok()?;
        }
        for (prefix, uri) in &stream.namespaces {
            resolver
                .add(PrefixDeclaration::Named(prefix), Namespace(uri))
                .ok()?;
        }
    }
    Some(reader)
}

fn namespace(resolved: &ResolveResult) -> Option<String> {
    match resolved {
        ResolveResult::Bound(ns) => Some(ns.0.to_owned()),
        ResolveResult::Unbound | ResolveResult::Unknown(_) => None,
    }
}

fn to_usize(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::framer::HeadSpans;

    /// A real SCRAM-SHA-1 exchange (RFC 5802 section 5's example, base64 as on the wire).
    const SCRAM_SECRETS: [&str; 4] = [
        "biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM",
        "cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkxWlZ2V1ZzN2oscz1RU1hDUitRNnNlazhiZjkyLGk9NDA5Ng==",
        "Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMM3JmY05IWUpZMVpWdldWczdqLHA9djBYOHYzQnoyVDBDSkdiSlF5RjBYK0hJNFRzPQ==",
        "dj1ybUY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9",
    ];

    fn scram_exchange() -> Vec<String> {
        vec![
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
                SCRAM_SECRETS[0]
            ),
            format!(
                "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
                SCRAM_SECRETS[1]
            ),
            format!(
                "<response xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">{}</response>",
                SCRAM_SECRETS[2]
            ),
            format!(
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
                SCRAM_SECRETS[3]
            ),
        ]
    }

    const DIALBACK_KEY: &str = "72f3ede96829f3b7cd7c0ee66cbbca0c1a1d6d8a0e6a2e2a7cd1f1d2b3c4d5e6";

    fn redacted(redaction: Redaction, xml: &str) -> String {
        let out = redaction
            .apply(xml.as_bytes())
            .map(|out| String::from_utf8(out).expect("redaction keeps UTF-8"))
            .unwrap_or_else(|| xml.to_owned());
        assert_eq!(out.len(), xml.len(), "length changed: {xml} -> {out}");
        out
    }

    #[test]
    fn marker_keeps_length() {
        for (len, expected) in [
            (0, ""),
            (3, "***"),
            (12, "************"),
            (13, "[redacted:13]"),
            (20, "[redacted:20]*******"),
        ] {
            let mut bytes = vec![b'x'; len];
            mask(&mut bytes);
            assert_eq!(String::from_utf8(bytes).expect("ascii"), expected);
        }
    }

    /// (what, redaction, input, expected output). Expected `None`: unchanged.
    #[test]
    fn table() {
        let default = Redaction::default();
        let full = Redaction::redact();
        let bodies = Redaction::redact().with_bodies();
        let none = Redaction::log_secrets();
        let key = DIALBACK_KEY;
        let cases: Vec<(&str, Redaction, String, Option<String>)> = vec![
            (
                "sasl auth by default",
                default,
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMA==</auth>".into(),
                Some("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>[redacted:20]*******</auth>".into()),
            ),
            (
                "sasl kept with --log-secrets",
                none,
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMA==</auth>".into(),
                None,
            ),
            (
                "empty auth (EXTERNAL) and '=' response",
                default,
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth><response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
                Some("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>*</auth><response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into()),
            ),
            (
                "sasl failure text is not a secret",
                full,
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>wrong password</text></failure>".into(),
                None,
            ),
            (
                "sasl2 initial response",
                default,
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGFsaWNlAHNlY3JldA==</initial-response><user-agent id='x'><software>t</software></user-agent></authenticate>".into(),
                Some("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>[redacted:20]*******</initial-response><user-agent id='x'><software>t</software></user-agent></authenticate>".into()),
            ),
            (
                "dialback key kept by default",
                default,
                format!("<db:result from='a.test' to='b.test'>{key}</db:result>"),
                None,
            ),
            (
                "dialback key, db prefix undeclared (declared on the stream header)",
                full,
                format!("<db:result from='a.test' to='b.test'>{key}</db:result>"),
                Some(format!("<db:result from='a.test' to='b.test'>[redacted:64]{}</db:result>", "*".repeat(51))),
            ),
            (
                "dialback verify with its namespace declared on the element",
                full,
                format!("<verify xmlns='jabber:server:dialback' from='b.test' to='a.test' id='s1'>{key}</verify>"),
                Some(format!("<verify xmlns='jabber:server:dialback' from='b.test' to='a.test' id='s1'>[redacted:64]{}</verify>", "*".repeat(51))),
            ),
            (
                "dialback answer has no key; its error text stays",
                full,
                "<db:result from='b.test' to='a.test' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>".into(),
                None,
            ),
            (
                "a db prefix bound to something else is not dialback",
                full,
                format!("<db:result xmlns:db='urn:example' from='a.test'>{key}</db:result>"),
                None,
            ),
            (
                "register password",
                full,
                "<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>bill</username><password>Calliope</password></query></iq>".into(),
                Some("<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>bill</username><password>********</password></query></iq>".into()),
            ),
            (
                "iq:auth password and digest",
                full,
                "<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>b</username><password>Calli&amp;ope</password><digest>48fc78be9ec8f86d8ce1c39c320c97c21d62334d</digest><resource>r</resource></query></iq>".into(),
                Some("<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>b</username><password>[redacted:13]</password><digest>[redacted:40]***************************</digest><resource>r</resource></query></iq>".into()),
            ),
            (
                "data form: text-private and a password var without type",
                full,
                "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>jabber:iq:register</value></field><field type='text-private' var='pin'><value>12345678901234</value></field><field var='password'><value>hunter2hunter2</value></field></x>".into(),
                Some("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>jabber:iq:register</value></field><field type='text-private' var='pin'><value>[redacted:14]*</value></field><field var='password'><value>[redacted:14]*</value></field></x>".into()),
            ),
            (
                "sm enabled id",
                full,
                "<enabled xmlns='urn:xmpp:sm:3' id='some-long-sm-id' resume='true' max='300'/>".into(),
                Some("<enabled xmlns='urn:xmpp:sm:3' id='[redacted:15]**' resume='true' max='300'/>".into()),
            ),
            (
                "sm resume and resumed previd",
                full,
                "<resume xmlns='urn:xmpp:sm:3' h='3' previd=\"some-long-sm-id\"/><resumed xmlns='urn:xmpp:sm:3' previd='some-long-sm-id' h='2'/>".into(),
                Some("<resume xmlns='urn:xmpp:sm:3' h='3' previd=\"[redacted:15]**\"/><resumed xmlns='urn:xmpp:sm:3' previd='[redacted:15]**' h='2'/>".into()),
            ),
            (
                "sm ids kept by default",
                default,
                "<enabled xmlns='urn:xmpp:sm:3' id='some-long-sm-id' resume='true'/>".into(),
                None,
            ),
            (
                "bodies kept with --redact",
                full,
                "<message to='bob@b.test' type='chat'><body>meet me at noon</body></message>".into(),
                None,
            ),
            (
                "bodies hidden with --redact-bodies, XHTML-IM included",
                bodies,
                "<message to='bob@b.test' type='chat'><body>meet me at noon</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>meet <b>me</b></p></body></html></message>".into(),
                Some("<message to='bob@b.test' type='chat'><body>[redacted:15]**</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>*****<b>**</b></p></body></html></message>".into()),
            ),
            (
                "a body outside a message is not a message body",
                bodies,
                "<iq type='result' id='1'><body>not a message</body></iq>".into(),
                None,
            ),
            (
                "multi-byte text keeps its byte length",
                bodies,
                "<message><body>héllo wörld ✓</body></message>".into(),
                Some("<message><body>[redacted:17]****</body></message>".into()),
            ),
            (
                "CDATA: only the content",
                default,
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'><![CDATA[AGFsaWNlAHNlY3JldA==]]></auth>".into(),
                Some("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'><![CDATA[[redacted:20]*******]]></auth>".into()),
            ),
            (
                "a relayed chunk: stream header, features, dialback, close",
                full,
                format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' version='1.0'>\n<db:result from='a.test' to='b.test'>{key}</db:result> </stream:stream>"),
                Some(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' version='1.0'>\n<db:result from='a.test' to='b.test'>[redacted:64]{}</db:result> </stream:stream>", "*".repeat(51))),
            ),
            (
                "ordinary stanzas untouched",
                bodies,
                "<iq type='get' id='p1' from='a.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq><presence/>".into(),
                None,
            ),
        ];
        for (what, redaction, input, expected) in cases {
            let out = redacted(redaction, &input);
            assert_eq!(out, expected.unwrap_or(input.clone()), "{what}");
        }
    }

    #[test]
    fn scram_exchange_leaves_no_secret() {
        for xml in scram_exchange() {
            let out = redacted(Redaction::default(), &xml);
            for secret in SCRAM_SECRETS {
                // No run of 8 characters of a secret survives.
                for window in secret.as_bytes().windows(8) {
                    let window = std::str::from_utf8(window).expect("ascii");
                    assert!(!out.contains(window), "{window} survived in {out}");
                }
            }
            assert!(
                out.contains("xmlns='urn:ietf:params:xml:ns:xmpp-sasl'")
                    || out.contains("xmpp-sasl\"")
            );
        }
    }

    #[test]
    fn dialback_key_leaves_no_trace() {
        let xml = format!(
            "<db:verify from='b.test' to='a.test' id='2a8d3309-cab0-4c8e'>{DIALBACK_KEY}</db:verify>"
        );
        let out = redacted(Redaction::redact(), &xml);
        for window in DIALBACK_KEY.as_bytes().windows(6) {
            let window = std::str::from_utf8(window).expect("ascii");
            assert!(!out.contains(window), "{window} survived in {out}");
        }
        assert!(out.contains("id='2a8d3309-cab0-4c8e'"), "{out}");
    }

    #[test]
    fn stream_header_bindings_resolve_prefixes() {
        let header = StreamHeader::parse(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:dbk='jabber:server:dialback' to='b.test'>",
        )
        .expect("header parses");
        let xml = format!("<dbk:result from='a.test' to='b.test'>{DIALBACK_KEY}</dbk:result>");
        let out = Redaction::redact()
            .apply_in(xml.as_bytes(), Some(&header))
            .expect("key redacted");
        assert!(!String::from_utf8_lossy(&out).contains(DIALBACK_KEY));
        assert_eq!(out.len(), xml.len());
    }

    #[test]
    fn unreadable_input_fails_closed() {
        let xml = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>c2VjcmV0c2VjcmV0<![CDATA[c2VjcmV0";
        let out = redacted(Redaction::default(), xml);
        assert!(!out.contains("c2VjcmV0"), "{out}");
        assert!(out.starts_with("<auth xmlns="), "{out}");
    }

    #[test]
    fn sm_enabled_id_field() {
        let r = Redaction::redact();
        assert!(r.hides_id_of(Some(NS_SM), "enabled"));
        assert!(r.hides_id_of(Some(NS_SM), "sm:enabled"));
        assert!(!r.hides_id_of(Some(NS_SM), "a"));
        assert!(!Redaction::default().hides_id_of(Some(NS_SM), "enabled"));
    }

    /// quick-xml does not count a leading byte order mark in its positions; the masks must still land on the
    /// secret (found by the `redact` fuzz target: the mask began 3 bytes early, over the tag's `'>`, and the
    /// last 3 bytes of the key stayed in clear).
    #[test]
    fn byte_order_mark_does_not_shift_the_mask() {
        let xml = format!(
            "\u{feff}<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
             xmlns:stream='http://etherx.jabber.org/streams' to='b.test'>\
             <db:result from='a.test' to='b.test'>{DIALBACK_KEY}</db:result>"
        );
        let out = redacted(Redaction::redact(), &xml);
        let plain = xml.replace(DIALBACK_KEY, &format!("[redacted:64]{}", "*".repeat(51)));
        assert_eq!(out, plain);
        let mut stream = StreamRedactor::default();
        let chunk = stream
            .chunk(&Redaction::redact(), xml.as_bytes(), None)
            .expect("key redacted");
        assert_eq!(String::from_utf8_lossy(&chunk), plain);

        // A second mark is text, and shifts nothing either.
        let twice = format!("\u{feff}{xml}");
        let out = redacted(Redaction::redact(), &twice);
        assert!(
            !out.contains(&DIALBACK_KEY[DIALBACK_KEY.len() - 3..]),
            "{out}"
        );
    }

    /// `may_hide` says `false` only where `apply_in` finds nothing, and `true` for what a secret could be in.
    #[test]
    fn watch_rules_out_only_fragments_without_a_secret() {
        let header = |namespaces: &str| {
            let tag = format!(
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                 {namespaces} to='b.test' version='1.0'>"
            );
            StreamHeader::parse(tag.as_bytes()).expect("a stream header")
        };
        let db = header("xmlns:db='jabber:server:dialback'");
        let k = header("xmlns:k='jabber:server:dialback'");
        let sasl_default = StreamHeader::parse(
            b"<stream:stream xmlns='urn:ietf:params:xml:ns:xmpp-sasl' \
              xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .expect("a stream header");
        let plain = "<message to='b@b.test'><body>db:result xmlns</body></message>";
        let cases: [(Redaction, Option<&StreamHeader>, &str, bool); 13] = [
            (Redaction::redact(), Some(&db), plain, false),
            (Redaction::redact(), None, plain, false),
            (
                Redaction::redact(),
                Some(&db),
                "<db:result>key</db:result>",
                true,
            ),
            (
                Redaction::redact(),
                None,
                "<db:result>key</db:result>",
                true,
            ),
            (
                Redaction::redact(),
                Some(&k),
                "<k:verify>key</k:verify>",
                true,
            ),
            (
                Redaction::redact(),
                Some(&k),
                "<kk:verify>key</kk:verify>",
                false,
            ),
            (
                Redaction::redact(),
                Some(&db),
                "<message><result xmlns='jabber:server:dialback'>key</result></message>",
                true,
            ),
            (
                Redaction::redact(),
                None,
                "<result xmlns='jabber&#x3a;server:dialback'>key</result>",
                true,
            ),
            (
                Redaction::default(),
                Some(&db),
                "<db:result>key</db:result>",
                false,
            ),
            (Redaction::default(), Some(&sasl_default), plain, true),
            (Redaction::default().with_bodies(), None, plain, true),
            (
                Redaction::log_secrets(),
                Some(&sasl_default),
                "<auth>x</auth>",
                false,
            ),
            (
                Redaction::redact(),
                Some(&db),
                "<enabled xmlns='urn:xmpp:sm:3' id='secret'/>",
                true,
            ),
        ];
        for (redaction, stream, xml, may) in cases {
            let watch = redaction.watch(stream);
            assert_eq!(
                watch.may_hide(xml.as_bytes()),
                may,
                "{xml} under {redaction:?}"
            );
            if !may {
                assert_eq!(redaction.apply_in(xml.as_bytes(), stream), None, "{xml}");
            }
        }
        // Where the framer saw no prefix and no namespace declaration in a stanza, `may_hide_unqualified`
        // stands in for `may_hide`: it too says `false` only where `apply_in` finds nothing.
        let unqualified = [
            plain,
            "<auth mechanism='PLAIN'>AGFAYg==</auth>",
            "<result to='b.test' from='a.test'>key</result>",
            "<iq type='set' id='r'><query><username>u</username><password>p</password></query></iq>",
            "<enabled id='secret' resume='true'/>",
        ];
        let redactions = [
            Redaction::default(),
            Redaction::redact(),
            Redaction::default().with_bodies(),
            Redaction::log_secrets(),
        ];
        let mut hidden = 0;
        for xml in unqualified {
            let spans = HeadSpans::find(xml.as_bytes()).expect("the framer's fast path reads it");
            assert!(spans.one_namespace, "{xml}");
            for redaction in redactions {
                for stream in [None, Some(&db), Some(&k), Some(&sasl_default)] {
                    let found = redaction.apply_in(xml.as_bytes(), stream);
                    if !redaction.watch(stream).may_hide_unqualified() {
                        assert_eq!(found, None, "{xml} under {redaction:?}");
                    }
                    hidden += usize::from(found.is_some());
                }
            }
        }
        // Some of them do hold a secret (SASL under a SASL default namespace, bodies).
        assert!(hidden >= 5, "only {hidden} redacted");
        assert!(Redaction::default()
            .watch(None)
            .may_hide(b"<message>\xff</message>"));
        // Found by the `redact` fuzz target: quick-xml refuses the declaration, `apply_in` fails closed.
        let refused = b"<stream:stream xmlns:stream='http://www.w3.org/XML/1998/namespace'>";
        assert!(Redaction::default().apply_in(refused, None).is_some());
        assert!(Redaction::default().watch(None).may_hide(refused));
    }
}
