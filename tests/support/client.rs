//! A minimal XMPP C2S client for interop tests: plaintext TCP, SASL PLAIN, resource binding,
//! initial presence, chat messages. Nothing more; it is test support, not a product.
//!
//! Every wait has a timeout and panics with a message naming the account, what it waited for
//! and the bytes that arrived but did not complete a stanza.
//!
//! Incoming bytes are split into top-level elements with quick-xml (see [`next_frame`]); each
//! element becomes a small [`Element`] tree.

use std::net::SocketAddr;
use std::time::Duration;

use quick_xml::events::Event;
use quick_xml::XmlVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Limit for each step of [`Client::login`] (connect, each stream restart, auth, bind).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A logged-in, available client session.
#[derive(Debug)]
pub struct Client {
    jid: String,
    stream: TcpStream,
    /// Bytes read but not yet consumed as a frame.
    buf: Vec<u8>,
    next_id: u32,
}

/// A parsed XML element: qualified name, attributes, text (concatenated) and children.
#[derive(Debug, Clone, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Name without a namespace prefix (`"stream:features"` -> `"features"`).
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child with this local name.
    pub fn child(&self, local_name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local_name() == local_name)
    }
}

/// One unit of the incoming stream.
#[derive(Debug)]
pub enum Frame {
    /// `<stream:stream ...>` (attributes only).
    StreamOpen(Element),
    /// A complete top-level element (stanza, features, SASL, ...).
    Element(Element),
    /// `</stream:stream>`.
    StreamClose,
}

impl Client {
    /// Connects to `addr`, authenticates `user@domain` with SASL PLAIN (no TLS), binds resource
    /// `"test"`, and sends initial presence. Panics with a clear message on any failure or after
    /// 10 s per step.
    pub async fn login(addr: SocketAddr, domain: &str, user: &str, password: &str) -> Client {
        let who = format!("{user}@{domain}");
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{who}: connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("{who}: connect to {addr}: {e}"));
        // Small writes of a test client should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let mut client = Client {
            jid: who,
            stream,
            buf: Vec::new(),
            next_id: 0,
        };

        let features = client.open_stream(domain).await;
        let mechanisms: Vec<&str> = features
            .child("mechanisms")
            .map(|m| m.children.iter().map(|c| c.text.as_str()).collect())
            .unwrap_or_default();
        assert!(
            mechanisms.contains(&"PLAIN"),
            "{}: server offers no SASL PLAIN (mechanisms {mechanisms:?}); features: {features:?}",
            client.jid
        );
        let credentials = base64(format!("\0{user}\0{password}").as_bytes());
        client
            .send_raw(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
            ))
            .await;
        let outcome = client.expect_element("SASL outcome").await;
        assert_eq!(
            outcome.local_name(),
            "success",
            "{}: SASL PLAIN failed: {outcome:?}",
            client.jid
        );

        let features = client.open_stream(domain).await;
        assert!(
            features.child("bind").is_some(),
            "{}: no resource binding offered after SASL: {features:?}",
            client.jid
        );
        client
            .send_raw(
                "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>test</resource></bind></iq>",
            )
            .await;
        let bound = client.expect_element("bind result").await;
        let jid = bound
            .child("bind")
            .and_then(|b| b.child("jid"))
            .map(|j| j.text.clone());
        match (bound.attr("type"), jid) {
            (Some("result"), Some(jid)) => client.jid = jid,
            _ => panic!("{}: resource binding failed: {bound:?}", client.jid),
        }
        client.send_raw("<presence/>").await;
        client
    }

    /// The full JID the server bound, e.g. `"alice@a.test/test"`.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Sends a chat message.
    /// Sends a chat message and returns its id.
    pub async fn send_message(&mut self, to: &str, body: &str) -> String {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let stanza = format!(
            "<message type='chat' to='{}' id='{id}'><body>{}</body></message>",
            escape(to),
            escape(body)
        );
        self.send_raw(&stanza).await;
        id
    }

    /// The next message with a body, or a bounce (`type='error'`), or `None` when `timeout` passes first.
    pub async fn next_delivery(&mut self, timeout: Duration) -> Option<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let element = match self.try_next_frame(deadline).await {
                Ok(Some(Frame::Element(element))) => element,
                Ok(Some(_)) => continue,
                Ok(None) => panic!(
                    "{}: connection closed while waiting for a delivery",
                    self.jid
                ),
                Err(()) => return None,
            };
            if element.local_name() != "message" {
                continue;
            }
            if element.attr("type") == Some("error") {
                let condition = element
                    .child("error")
                    .and_then(|e| e.children.first())
                    .map(|c| c.local_name().to_owned())
                    .unwrap_or_default();
                return Some(Delivery::Bounce {
                    id: element.attr("id").unwrap_or_default().to_owned(),
                    condition,
                });
            }
            if let Some(body) = element.child("body") {
                return Some(Delivery::Message {
                    from: element.attr("from").unwrap_or_default().to_owned(),
                    body: body.text.clone(),
                });
            }
        }
    }

    /// Reads stanzas until a `<message>` with a `<body>` arrives and returns `(from, body)`.
    /// Other stanzas are skipped. Panics on timeout, stream end, or a message of type error.
    pub async fn wait_message(&mut self, timeout: Duration) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let element = self
                .expect_element_until(deadline, "a message with a body")
                .await;
            if element.local_name() != "message" {
                continue;
            }
            if element.attr("type") == Some("error") {
                panic!("{}: received an error message: {element:?}", self.jid);
            }
            if let Some(body) = element.child("body") {
                let from = element.attr("from").unwrap_or_default().to_owned();
                return (from, body.text.clone());
            }
        }
    }

    /// Writes raw XML to the stream.
    pub async fn send_raw(&mut self, xml: &str) {
        let write = self.stream.write_all(xml.as_bytes());
        tokio::time::timeout(STEP_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| panic!("{}: write timed out", self.jid))
            .unwrap_or_else(|e| panic!("{}: write failed: {e}", self.jid));
    }

    /// Closes the stream politely and waits (briefly) for the server's close.
    pub async fn close(mut self) {
        self.send_raw("</stream:stream>").await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(frame)) = self.try_next_frame(deadline).await {
            if matches!(frame, Frame::StreamClose) {
                break;
            }
        }
    }

    /// Sends a stream header and returns the `<stream:features>` that follow the server's.
    async fn open_stream(&mut self, domain: &str) -> Element {
        self.send_raw(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            escape(domain)
        ))
        .await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        match self.next_frame(deadline, "stream header").await {
            Frame::StreamOpen(_) => {}
            other => panic!("{}: expected a stream header, got {other:?}", self.jid),
        }
        let features = self.expect_element_until(deadline, "stream features").await;
        assert_eq!(
            features.local_name(),
            "features",
            "{}: expected stream features, got {features:?}",
            self.jid
        );
        features
    }

    async fn expect_element(&mut self, what: &str) -> Element {
        self.expect_element_until(Instant::now() + STEP_TIMEOUT, what)
            .await
    }

    async fn expect_element_until(&mut self, deadline: Instant, what: &str) -> Element {
        match self.next_frame(deadline, what).await {
            Frame::Element(e) => e,
            other => panic!("{}: waiting for {what}, got {other:?}", self.jid),
        }
    }

    async fn next_frame(&mut self, deadline: Instant, what: &str) -> Frame {
        match self.try_next_frame(deadline).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!(
                "{}: connection closed while waiting for {what}; unparsed: {:?}",
                self.jid,
                String::from_utf8_lossy(&self.buf)
            ),
            Err(()) => panic!(
                "{}: timed out waiting for {what}; unparsed: {:?}",
                self.jid,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// `Ok(None)` on EOF or read error, `Err(())` at the deadline.
    async fn try_next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, ()> {
        loop {
            if let Some((frame, used)) = next_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Splits the first frame off `buf`: `Some((frame, bytes used))`, or `None` when `buf` holds no
/// complete frame yet. Malformed input also gives `None`; the caller's timeout reports it with
/// the unparsed bytes.
/// What [`Client::next_delivery`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message with a body.
    Message { from: String, body: String },
    /// One of our messages came back as an error.
    Bounce { id: String, condition: String },
}

pub fn next_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let mut reader = quick_xml::Reader::from_reader(buf);
    let config = reader.config_mut();
    config.check_end_names = false;
    // `</stream:stream>` arrives without its start tag (consumed as an earlier frame).
    config.allow_unmatched_ends = true;
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let event = reader.read_event().ok()?;
        let used = usize::try_from(reader.buffer_position()).ok()?;
        match event {
            Event::Start(start) => {
                let element = element_from(&start)?;
                if stack.is_empty() && element.local_name() == "stream" {
                    return Some((Frame::StreamOpen(element), used));
                }
                stack.push(element);
            }
            Event::Empty(start) => {
                let element = element_from(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Some((Frame::Element(element), used)),
                }
            }
            Event::End(_) => {
                let Some(element) = stack.pop() else {
                    return Some((Frame::StreamClose, used));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Some((Frame::Element(element), used)),
                }
            }
            Event::Text(text) => {
                if let Some(top) = stack.last_mut() {
                    top.text
                        .push_str(&text.xml_content(XmlVersion::Implicit1_0));
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text
                        .push_str(&data.xml_content(XmlVersion::Implicit1_0));
                }
            }
            Event::GeneralRef(reference) => {
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                if let Ok(Some(c)) = reference.resolve_char_ref() {
                    top.text.push(c);
                } else {
                    let name = reference.xml_content(XmlVersion::Implicit1_0);
                    top.text
                        .push_str(quick_xml::escape::resolve_predefined_entity(&name)?);
                }
            }
            Event::Eof => return None,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

fn element_from(start: &quick_xml::events::BytesStart<'_>) -> Option<Element> {
    let mut element = Element {
        name: start.name().as_ref().to_owned(),
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.ok()?;
        let value = attr.normalized_value(XmlVersion::Implicit1_0).ok()?;
        element
            .attrs
            .push((attr.key.as_ref().to_owned(), value.into_owned()));
    }
    Some(element)
}

/// Escapes text for use in element content or a single- or double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), enough for SASL PLAIN.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(base64(b"\0alice\0pw"), "AGFsaWNlAHB3");
    }

    #[test]
    fn frames_split_at_element_boundaries() {
        let input = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' from='a.test'>\
            <stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms></stream:features>\
            <message from='x@y' type='chat'><body>a &amp; b&#x21;</body></message><presence/></stream:stream>";
        let mut rest: &[u8] = input;
        let mut frames = Vec::new();
        while let Some((frame, used)) = next_frame(rest) {
            frames.push(frame);
            rest = &rest[used..];
        }
        assert!(
            rest.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(rest)
        );
        assert_eq!(frames.len(), 5, "{frames:?}");
        let Frame::Element(message) = &frames[2] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            message.child("body").map(|b| b.text.as_str()),
            Some("a & b!")
        );
        assert!(matches!(frames[4], Frame::StreamClose));
        // Every strict prefix of one element is incomplete.
        let one = b"<message><body>hi</body></message>";
        for end in 0..one.len() {
            assert!(
                next_frame(&one[..end]).is_none(),
                "prefix {end} gave a frame"
            );
        }
    }
}
