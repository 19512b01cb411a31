//! Server Dialback for the probe: the key (XEP-0185) and a small S2S listener that plays the originating domain's
//! authoritative server (`--dialback-listen`).
//!
//! # How a probe gets `valid`
//!
//! The probe sends `<db:result from=FROM to=DOMAIN>KEY</db:result>`. DOMAIN's server then asks FROM's
//! authoritative server whether KEY is right: it looks up FROM in DNS (SRV `_xmpps-server._tcp.FROM`,
//! `_xmpp-server._tcp.FROM`, then A/AAAA on 5269), connects there and sends `<db:verify>`. When that address is
//! the probe's listener, the listener recomputes the key with the same secret and answers `valid` (or `invalid`),
//! and DOMAIN's server tells the probe. So: publish `_xmpp-server._tcp.FROM. SRV 0 0 PORT host` pointing at the
//! listener (or give FROM an A record there and listen on 5269), as DOMAIN's server resolves it.
//!
//! What the listener does on each connection: it answers the stream header (with `xmlns:db` and its own id),
//! offers STARTTLS with a self-signed certificate for FROM generated in memory (Direct TLS is detected by its
//! first byte) and the dialback feature; it answers every `<db:result>` addressed to FROM with `valid` without
//! checking it, because Prosody, for one, sends its queued `<db:verify>` only once its own connection is
//! authenticated; and it answers `<db:verify>` by recomputing the key. It delivers nothing: other stanzas (the
//! answer to the probe's ping comes this way, S2S streams being one-way) are reported to the probe and dropped.
//! It accepts connections only while the probe runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::{digest, hmac};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::xml::element::{Dialback, NS_DIALBACK, NS_TLS};

use super::conn::{BoxIo, Conn, ConnError, Incoming, Received};
use super::sasl::Secret;
use super::xml_escape;

/// How long the listener waits for the first byte, to tell Direct TLS from plaintext.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// The dialback key XEP-0185 recommends and Prosody computes: HMAC-SHA256 keyed with the hex SHA-256 of the
/// secret, over `receiving ' ' originating ' ' stream-id`, as lower-case hex.
pub fn key(secret: &Secret, receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = hex(digest::digest(&digest::SHA256, secret.expose().as_bytes()).as_ref());
    let key = hmac::Key::new(hmac::HMAC_SHA256, hashed.as_bytes());
    let text = format!("{receiving} {originating} {stream_id}");
    hex(hmac::sign(&key, text.as_bytes()).as_ref())
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `<db:verify>` the listener answered.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRequest {
    /// Who connected.
    pub peer: SocketAddr,
    /// `from` (the receiving server asking).
    pub from: String,
    /// `to` (the domain whose key it is: the probe's `--from`).
    pub to: String,
    /// `id`: the stream id the receiving server sent the probe.
    pub id: String,
    /// The answer given: `valid` or `invalid`.
    pub answer: &'static str,
}

/// What happens on the listener, reported to the probe as it happens.
#[derive(Debug)]
pub enum ListenerEvent {
    /// A `<db:verify>` was answered.
    Verify(VerifyRequest),
    /// Some other element arrived on an authenticated connection (e.g. the answer to the probe's ping).
    Stanza(Box<Received>),
    /// Something went wrong on one connection (the listener goes on).
    Trouble {
        /// Who.
        peer: SocketAddr,
        /// What.
        error: String,
    },
}

/// The running listener. Dropping it stops accepting and ends its connections.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<ListenerEvent>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// What a connection needs to answer.
struct Answerer {
    /// The domain the listener speaks for (`--from`).
    domain: String,
    secret: Secret,
    acceptor: TlsAcceptor,
    timeout: Duration,
    events: mpsc::UnboundedSender<ListenerEvent>,
}

impl Listener {
    /// Binds `addr` and starts answering for `domain` with `secret`.
    pub async fn start(
        addr: SocketAddr,
        domain: &str,
        secret: Secret,
        acceptor: TlsAcceptor,
        timeout: Duration,
    ) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr).await?;
        let addr = socket.local_addr()?;
        let (sender, events) = mpsc::unbounded_channel();
        let answerer = Arc::new(Answerer {
            domain: domain.to_owned(),
            secret,
            acceptor,
            timeout,
            events: sender,
        });
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(socket, answerer, shutdown.clone()));
        tracing::info!(%addr, domain, "dialback listener ready");
        Ok(Listener {
            addr,
            events,
            shutdown,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next event. Cancel-safe (a channel receive). Never resolves once the listener has nothing more to
    /// say, so it can sit in a `select!` beside the probe's own stream.
    pub async fn next_event(&mut self) -> ListenerEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// Events that have already arrived, without waiting.
    pub fn drain(&mut self) -> Vec<ListenerEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
    }
}

async fn accept_loop(socket: TcpListener, answerer: Arc<Answerer>, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let answerer = answerer.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve(stream, peer, &answerer).await {
                            tracing::debug!(%peer, error = %e, "dialback listener connection ended");
                            let _ = answerer.events.send(ListenerEvent::Trouble { peer, error: e.to_string() });
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dialback listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.abort_all();
}

/// One connection from the receiving server.
async fn serve(stream: TcpStream, peer: SocketAddr, answerer: &Answerer) -> Result<(), ConnError> {
    tracing::info!(%peer, "dialback listener: connection");
    let mut first = [0u8; 1];
    let direct_tls = matches!(
        tokio::time::timeout(SNIFF_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    );
    let io: BoxIo = if direct_tls {
        Box::new(answerer.acceptor.accept(stream).await?)
    } else {
        Box::new(stream)
    };
    let mut conn = Conn::new(io, answerer.timeout, "dialback listener");
    let mut tls = direct_tls;
    let mut authenticated = false;
    loop {
        // The peer's header, then ours and the features.
        let header = match conn.read_incoming().await? {
            Incoming::Header(header) => header,
            Incoming::Close => return Ok(()),
            Incoming::Element(received) => {
                return Err(ConnError::Unexpected {
                    expected: "a stream header".into(),
                    got: format!("<{}>", received.head.name),
                })
            }
        };
        let id = {
            let mut bytes = [0u8; 12];
            super::random_bytes(&mut bytes);
            hex(&bytes)
        };
        let to = header.from.as_deref().map(xml_escape).unwrap_or_default();
        conn.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='{NS_DIALBACK}' \
             from='{}' to='{to}' id='{id}' version='1.0'>",
            xml_escape(&answerer.domain)
        ))
        .await?;
        let starttls = if tls {
            ""
        } else {
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        };
        conn.send(&format!(
            "<stream:features>{starttls}<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
             </stream:features>"
        ))
        .await?;
        // Elements until a restart (STARTTLS) or the end.
        loop {
            let received = match conn.read_incoming().await? {
                Incoming::Element(received) => received,
                Incoming::Close => {
                    let _ = conn.send("</stream:stream>").await;
                    return Ok(());
                }
                Incoming::Header(_) => {
                    return Err(ConnError::Unexpected {
                        expected: "an element".into(),
                        got: "a stream header without a restart".into(),
                    })
                }
            };
            if received.head.is(NS_TLS, "starttls") && !tls {
                conn.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                    .await?;
                let io = conn.into_io()?;
                let io: BoxIo = Box::new(answerer.acceptor.accept(io).await?);
                conn = Conn::new(io, answerer.timeout, "dialback listener");
                tls = true;
                break;
            }
            let stream = conn.header().cloned().unwrap_or_default();
            if received.head.ns.as_deref() == Some(NS_DIALBACK) {
                let dialback = Dialback::parse(&received.raw, &stream)?;
                let from = dialback.from.clone().unwrap_or_default();
                let to = dialback.to.clone().unwrap_or_default();
                if dialback.verify {
                    let id = dialback.id.clone().unwrap_or_default();
                    let expected = key(&answerer.secret, &from, &to, &id);
                    let given = received.tree.text.trim();
                    let valid = to.eq_ignore_ascii_case(&answerer.domain)
                        && same(given.as_bytes(), expected.as_bytes());
                    let answer = if valid { "valid" } else { "invalid" };
                    conn.send(&format!(
                        "<db:verify from='{}' to='{}' id='{}' type='{answer}'/>",
                        xml_escape(&to),
                        xml_escape(&from),
                        xml_escape(&id)
                    ))
                    .await?;
                    let _ = answerer.events.send(ListenerEvent::Verify(VerifyRequest {
                        peer,
                        from,
                        to,
                        id,
                        answer,
                    }));
                } else if dialback.is_request() {
                    // Not checked: see the module docs. Only for the domain the listener speaks for.
                    let answer = if to.eq_ignore_ascii_case(&answerer.domain) {
                        authenticated = true;
                        "valid"
                    } else {
                        "invalid"
                    };
                    conn.send(&format!(
                        "<db:result from='{}' to='{}' type='{answer}'/>",
                        xml_escape(&to),
                        xml_escape(&from)
                    ))
                    .await?;
                }
                continue;
            }
            if authenticated {
                let _ = answerer
                    .events
                    .send(ListenerEvent::Stanza(Box::new(received)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inputs of XEP-0185's example (the script on the XMPP wiki that made it), the expected key computed
    /// independently with Python's hmac module. The interop tests check the same function against Prosody.
    #[test]
    fn key_matches_the_xep_0185_example() {
        let secret = Secret::new("s3cr3tf0rd14lb4ck".into());
        assert_eq!(
            hex(digest::digest(&digest::SHA256, b"s3cr3tf0rd14lb4ck").as_ref()),
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        assert_eq!(
            key(&secret, "domain2.tld", "domain1.tld", "D60000229F"),
            "5e598fae34b90be084fb6a4a8a543ceb33549140bac9d829ef8d734d900616e4"
        );
    }
}
