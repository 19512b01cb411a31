//! One XMPP stream as an endpoint sees it: bytes out, frames in. [`Conn`] owns the socket (TCP, or TLS over
//! it), the read buffer and a [`Framer`]; it hands back whole frames, parsed as far as the probe needs them
//! ([`Incoming`]), and turns a `<stream:error>` into [`ConnError::StreamError`].
//!
//! It does not decide what to send or when (the flows do), and does not do TLS handshakes ([`super::tls`]): for
//! STARTTLS the flow takes the socket out with [`Conn::into_io`] and puts the TLS stream back with
//! [`Conn::new`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::xml::element::{ElementError, ElementHead, StreamError, StreamHeader, NS_STREAM};
use crate::xml::framer::{FrameError, FrameKind, Framer, Limits};

use super::dom::{DomError, Element};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Anything a stream can run over: a `TcpStream`, or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`]: the probe is not a hot path, and STARTTLS changes the type under a stream.
pub type BoxIo = Box<dyn Io>;

/// What came in.
#[derive(Debug)]
pub enum Incoming {
    /// A stream header (the first one, or one after a restart).
    Header(StreamHeader),
    /// A top-level element: its head (name, namespace, addressing) and the whole element as a tree.
    Element(Received),
    /// `</stream:stream>`.
    Close,
}

/// One top-level element.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its start tag, namespaces resolved through the stream header.
    pub head: ElementHead,
    /// The element as a tree.
    pub tree: Element,
    /// Its original bytes.
    pub raw: Vec<u8>,
}

/// Why a stream could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading or writing the socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the TCP connection (or the TLS session) without closing the stream.
    #[error("the server closed the connection without closing the stream")]
    Eof,
    /// Nothing came in time.
    #[error("no answer within {timeout:?} while waiting for {waiting_for}")]
    Timeout {
        /// What the probe was waiting for.
        waiting_for: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The bytes are not a well-formed XMPP stream.
    #[error("the server sent bytes that are not a well-formed XMPP stream: {0}")]
    Framing(#[from] FrameError),
    /// A frame did not parse.
    #[error("the server sent an element that does not parse: {0}")]
    Element(#[from] ElementError),
    /// A frame did not parse into a tree.
    #[error("the server sent an element that does not parse: {0}")]
    Dom(#[from] DomError),
    /// The server ended the stream with a stream error.
    #[error("stream error <{}/>{}", .0.condition, .0.text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    StreamError(StreamError),
    /// The server closed the stream (`</stream:stream>`) while the probe waited for something else.
    #[error("the server closed the stream while the probe waited for {0}")]
    Closed(String),
    /// Something arrived that makes no sense at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the probe waited for.
        expected: String,
        /// What came, e.g. `<iq>` or `a stream header`.
        got: String,
    },
}

/// One XMPP stream over a socket. See the [module docs](self).
pub struct Conn {
    io: BoxIo,
    buf: Vec<u8>,
    framer: Framer,
    header: Option<StreamHeader>,
    timeout: Duration,
    label: &'static str,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("label", &self.label)
            .field("buffered", &self.buf.len())
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A stream over `io`, waiting at most `timeout` for each answer. `label` names it in debug logs
    /// (`probe`, `dialback listener`).
    pub fn new(io: BoxIo, timeout: Duration, label: &'static str) -> Self {
        Conn {
            io,
            buf: Vec::new(),
            framer: Framer::new(Limits::default()),
            header: None,
            timeout,
            label,
        }
    }

    /// The per-answer timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The peer's current stream header, once it has come.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Sends `xml` and flushes. Logged at debug.
    pub async fn send(&mut self, xml: &str) -> Result<(), ConnError> {
        tracing::debug!(conn = self.label, "sent: {xml}");
        self.write(xml).await
    }

    /// Sends `xml` that carries a secret; the log shows `shown` instead.
    pub async fn send_secret(&mut self, xml: &str, shown: &str) -> Result<(), ConnError> {
        tracing::debug!(conn = self.label, "sent: {shown}");
        self.write(xml).await
    }

    async fn write(&mut self, xml: &str) -> Result<(), ConnError> {
        let write = async {
            self.io.write_all(xml.as_bytes()).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ConnError::Timeout {
                waiting_for: "the server to take the bytes sent".into(),
                timeout: self.timeout,
            }),
        }
    }

    /// The next header, element or stream close, within the timeout. Whitespace is skipped; a `<stream:error>`
    /// is [`ConnError::StreamError`].
    pub async fn next(&mut self, waiting_for: &str) -> Result<Incoming, ConnError> {
        let deadline = Instant::now() + self.timeout;
        self.next_until(deadline, waiting_for).await
    }

    /// [`Conn::next`] with an explicit deadline.
    pub async fn next_until(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<Incoming, ConnError> {
        match tokio::time::timeout_at(deadline, self.read_incoming()).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::Timeout {
                waiting_for: waiting_for.to_owned(),
                timeout: self.timeout,
            }),
        }
    }

    /// The next element; a header or a stream close here is an error naming `waiting_for`.
    pub async fn next_element(&mut self, waiting_for: &str) -> Result<Received, ConnError> {
        match self.next(waiting_for).await? {
            Incoming::Element(received) => Ok(received),
            Incoming::Close => Err(ConnError::Closed(waiting_for.to_owned())),
            Incoming::Header(_) => Err(ConnError::Unexpected {
                expected: waiting_for.to_owned(),
                got: "a second stream header".into(),
            }),
        }
    }

    /// Reads until the next frame that is not whitespace. Cancel-safe: bytes are only added to the buffer by a
    /// completed read, and the framer's partial state refers to those bytes, so a dropped call loses nothing.
    pub async fn read_incoming(&mut self) -> Result<Incoming, ConnError> {
        loop {
            if let Some(frame) = self.framer.next_frame(&self.buf)? {
                let bytes: Vec<u8> = self.buf.drain(..frame.len).collect();
                match frame.kind {
                    FrameKind::Whitespace => continue,
                    FrameKind::StreamOpen => {
                        tracing::debug!(
                            conn = self.label,
                            "received: {}",
                            String::from_utf8_lossy(&bytes)
                        );
                        let header = StreamHeader::parse(&bytes[frame.head.clone()])?;
                        self.header = Some(header.clone());
                        return Ok(Incoming::Header(header));
                    }
                    FrameKind::StreamClose => {
                        tracing::debug!(conn = self.label, "received: </stream:stream>");
                        return Ok(Incoming::Close);
                    }
                    FrameKind::Stanza => {
                        tracing::debug!(
                            conn = self.label,
                            "received: {}",
                            String::from_utf8_lossy(&bytes)
                        );
                        let stream = self.header.clone().unwrap_or_default();
                        let head = ElementHead::parse(&bytes[frame.head.clone()], &stream)?;
                        if head.local == "error"
                            && (head.ns.as_deref() == Some(NS_STREAM)
                                || head.name == "stream:error")
                        {
                            return Err(ConnError::StreamError(StreamError::parse(&bytes)?));
                        }
                        let tree = Element::parse(&bytes, Some(&stream))?;
                        return Ok(Incoming::Element(Received {
                            head,
                            tree,
                            raw: bytes,
                        }));
                    }
                }
            }
            self.buf.reserve(READ_CHUNK);
            // read_buf is cancel-safe: if this future is dropped, no bytes were taken from the socket.
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Eof);
            }
        }
    }

    /// Expects a stream header (waiting for it) and returns it.
    pub async fn expect_header(&mut self) -> Result<StreamHeader, ConnError> {
        match self.next("the server's stream header").await? {
            Incoming::Header(header) => Ok(header),
            Incoming::Close => Err(ConnError::Closed("the server's stream header".into())),
            Incoming::Element(received) => Err(ConnError::Unexpected {
                expected: "the server's stream header".into(),
                got: format!("<{}>", received.head.name),
            }),
        }
    }

    /// Stream restart (after STARTTLS or SASL): the next frame is a new header.
    pub fn restart(&mut self) {
        self.framer.reset();
        self.header = None;
    }

    /// The socket, for a TLS handshake after `<proceed/>`. Fails if the server sent anything after `<proceed/>`
    /// that was already read (RFC 6120 5.4.3.3: TLS starts right after it).
    pub fn into_io(self) -> Result<BoxIo, ConnError> {
        if !self.buf.is_empty() {
            return Err(ConnError::Unexpected {
                expected: "the TLS handshake right after <proceed/>".into(),
                got: format!("{} more bytes of XML", self.buf.len()),
            });
        }
        Ok(self.io)
    }

    /// Sends `</stream:stream>` and waits briefly for the server's, then shuts the socket down. Errors are
    /// ignored: the probe is done with the stream either way.
    pub async fn close(&mut self) {
        if self.send("</stream:stream>").await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        while let Ok(incoming) = self
            .next_until(deadline, "the server's </stream:stream>")
            .await
        {
            if matches!(incoming, Incoming::Close) {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), self.io.shutdown()).await;
    }
}

/// A short description of an element for messages: `<iq type='error'>`.
pub fn describe(received: &Received) -> String {
    match &received.head.kind {
        Some(kind) => format!("<{} type='{kind}'>", received.head.name),
        None => format!("<{}>", received.head.name),
    }
}
