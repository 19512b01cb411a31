//! A small element tree for the stanzas the probe reads answers from (bind results, rosters, ping results,
//! SASL challenges, message errors, the extra features of a client stream).
//!
//! The proxy never builds trees: it forwards bytes and reads facts with [`crate::xml::element`]. The probe is an
//! endpoint and needs whole answers, so it parses each complete frame the [`crate::xml::framer::Framer`] cut into
//! an [`Element`]: local names, resolved namespaces (through the frame's own declarations, then the stream
//! header's), attributes unescaped, text concatenated.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::xml::element::{StreamHeader, NS_XML};

/// Why a frame did not parse into a tree.
#[derive(Debug, thiserror::Error)]
pub enum DomError {
    /// quick-xml could not read the bytes.
    #[error("malformed XML: {0}")]
    Xml(#[from] quick_xml::Error),
    /// A malformed attribute.
    #[error("malformed attribute: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    /// An entity other than the five predefined ones.
    #[error("unknown entity &{0};")]
    Entity(String),
    /// The bytes hold no element, or end inside one.
    #[error("no complete element")]
    Incomplete,
}

/// One element with its children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name, e.g. `iq`.
    pub name: String,
    /// Resolved namespace, e.g. `jabber:client`.
    pub ns: Option<String>,
    /// Attributes as written (`xmlns` declarations included), values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// The text directly inside this element, concatenated.
    pub text: String,
}

impl Element {
    /// Parses the first element of `bytes` (a whole frame). Unprefixed names without an `xmlns` in scope take the
    /// stream header's default namespace; prefixes resolve through the header's declarations too.
    pub fn parse(bytes: &[u8], stream: Option<&StreamHeader>) -> Result<Element, DomError> {
        let mut reader = Reader::from_reader(bytes);
        // Scopes of namespace bindings: (prefix or "" for the default, uri), innermost last.
        let mut scopes: Vec<Vec<(String, String)>> = Vec::new();
        let mut base = Vec::new();
        if let Some(stream) = stream {
            if let Some(ns) = &stream.default_ns {
                base.push((String::new(), ns.clone()));
            }
            base.extend(stream.namespaces.iter().cloned());
        }
        scopes.push(base);
        let mut stack: Vec<Element> = Vec::new();
        loop {
            match reader.read_event()? {
                Event::Start(tag) => {
                    let element = open(&tag, &mut scopes)?;
                    stack.push(element);
                }
                Event::Empty(tag) => {
                    let element = open(&tag, &mut scopes)?;
                    scopes.pop();
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => return Ok(element),
                    }
                }
                Event::End(_) => {
                    scopes.pop();
                    let element = stack.pop().ok_or(DomError::Incomplete)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => return Ok(element),
                    }
                }
                Event::Text(text) => {
                    if let Some(current) = stack.last_mut() {
                        current.text.push_str(&text.xml10_content());
                    }
                }
                Event::CData(cdata) => {
                    if let Some(current) = stack.last_mut() {
                        current.text.push_str(&cdata.xml10_content());
                    }
                }
                Event::GeneralRef(reference) => {
                    if let Some(current) = stack.last_mut() {
                        if let Some(c) = reference.resolve_char_ref()? {
                            current.text.push(c);
                        } else if let Some(s) = resolve_predefined_entity(&reference) {
                            current.text.push_str(s);
                        } else {
                            return Err(DomError::Entity(reference.to_string()));
                        }
                    }
                }
                Event::Eof => return Err(DomError::Incomplete),
                _ => {}
            }
        }
    }

    /// The value of attribute `name` (as written, e.g. `type` or `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this element is `name` in namespace `ns`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.name == name && self.ns.as_deref() == Some(ns)
    }

    /// The first child named `name` in namespace `ns`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Every child named `name` in namespace `ns`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// The text of the first child `name` in `ns`, if there is one.
    pub fn child_text(&self, ns: &str, name: &str) -> Option<&str> {
        self.child(ns, name).map(|c| c.text.as_str())
    }
}

/// Reads a start tag: pushes its namespace scope and returns the element (without children yet).
fn open(
    tag: &BytesStart<'_>,
    scopes: &mut Vec<Vec<(String, String)>>,
) -> Result<Element, DomError> {
    let mut attrs = Vec::new();
    let mut scope = Vec::new();
    for attribute in tag.attributes() {
        let attribute = attribute?;
        let key = attribute.key.as_ref().to_owned();
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)?
            .into_owned();
        if key == "xmlns" {
            scope.push((String::new(), value.clone()));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            scope.push((prefix.to_owned(), value.clone()));
        }
        attrs.push((key, value));
    }
    scopes.push(scope);
    let qname = tag.name();
    let name = qname.local_name().into_inner().to_owned();
    let prefix = qname
        .prefix()
        .map(|p| p.into_inner().to_owned())
        .unwrap_or_default();
    let ns = if prefix == "xml" {
        Some(NS_XML.to_owned())
    } else {
        scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|(p, _)| *p == prefix)
            .map(|(_, uri)| uri.clone())
            .filter(|uri| !uri.is_empty())
    };
    Ok(Element {
        name,
        ns,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_roster_result_with_stream_namespaces() {
        let header = StreamHeader::parse(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
              version='1.0' id='x'>",
        )
        .expect("header");
        let frame = b"<iq type='result' id='r1'><query xmlns='jabber:iq:roster' ver='1'>\
            <item jid='bob@a.test' name='Bob &amp; co' subscription='both'>\
            <group>Friends</group><group>Work &#x2713;</group></item></query></iq>";
        let iq = Element::parse(frame, Some(&header)).expect("parse");
        assert!(iq.is("jabber:client", "iq"));
        assert_eq!(iq.attr("type"), Some("result"));
        let query = iq.child("jabber:iq:roster", "query").expect("query");
        let item = query.child("jabber:iq:roster", "item").expect("item");
        assert_eq!(item.attr("name"), Some("Bob & co"));
        let groups: Vec<&str> = item
            .children_named("jabber:iq:roster", "group")
            .map(|g| g.text.as_str())
            .collect();
        assert_eq!(groups, ["Friends", "Work ✓"]);
    }

    #[test]
    fn resolves_prefixes_and_rejects_incomplete_frames() {
        let el = Element::parse(
            b"<x:a xmlns:x='urn:x'><b/><x:c xml:lang='en'>t<![CDATA[<d>]]></x:c></x:a>",
            None,
        )
        .expect("parse");
        assert!(el.is("urn:x", "a"));
        assert_eq!(el.children[0].ns, None);
        assert_eq!(el.children[1].text, "t<d>");
        assert_eq!(el.children[1].attr("xml:lang"), Some("en"));
        assert!(matches!(
            Element::parse(b"<a><b>", None),
            Err(DomError::Incomplete)
        ));
    }
}
