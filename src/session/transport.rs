//! The byte pipe under one leg: plain TCP until STARTTLS, then TLS over that same TCP connection.
//!
//! Under both sits [`Tcp`], the leg's socket, which records what really crossed it (encrypted once TLS is up)
//! as [`EventKind::RawData`] when a capture sink wants that ([`Tap::wants_raw`]).

use crate::side::Side;
use crate::tap::event::Xml;
use crate::tap::{Event, EventKind, Tap};
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// One leg's connection. An enum rather than a boxed trait object: the relay's hot path calls through it for
/// every read and write.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP (before STARTTLS, or for plaintext S2S).
    Plain(Tcp),
    /// TLS where xmpptap is the server (the initiator's leg).
    Server(Box<server::TlsStream<Tcp>>),
    /// TLS where xmpptap is the client (the receiver's leg).
    Client(Box<client::TlsStream<Tcp>>),
}

impl Transport {
    /// Whether TLS is up on this leg.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
    }

    /// Drops the connection with a TCP RST instead of a FIN (SO_LINGER 0), for the `reset` rule action.
    pub fn reset(self) {
        let tcp = match &self {
            Transport::Plain(tcp) => &tcp.stream,
            Transport::Server(tls) => &tls.get_ref().0.stream,
            Transport::Client(tls) => &tls.get_ref().0.stream,
        };
        if let Err(e) = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO)) {
            tracing::debug!(error = %e, "SO_LINGER 0 failed: the connection ends with a FIN");
        }
    }
}

macro_rules! delegate {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Transport::Server($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
            Transport::Client($inner) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Server(io) => io.is_write_vectored(),
            Transport::Client(io) => io.is_write_vectored(),
        }
    }
}

/// A leg's TCP socket, recording every read and write for raw captures when it has a [`RawRecorder`]. Without
/// one it is the bare socket plus one `Option` check per call.
#[derive(Debug)]
pub struct Tcp {
    stream: TcpStream,
    rec: Option<RawRecorder>,
}

impl Tcp {
    /// Wraps a leg's socket; `rec` from [`RawRecorder::new`] (`None` when nothing records raw bytes).
    pub fn new(stream: TcpStream, rec: Option<RawRecorder>) -> Self {
        Tcp { stream, rec }
    }
}

/// Turns what crossed one leg's socket into [`EventKind::RawData`] events.
#[derive(Debug)]
pub struct RawRecorder {
    tap: Tap,
    conn: u64,
    leg: Side,
}

impl RawRecorder {
    /// A recorder for connection `conn`'s `leg`, or `None` when no sink wants raw bytes.
    pub fn new(tap: &Tap, conn: u64, leg: Side) -> Option<Self> {
        tap.wants_raw().then(|| RawRecorder {
            tap: tap.clone(),
            conn,
            leg,
        })
    }

    /// Records bytes read from (`outbound == false`) or written to the leg's peer. The event's direction is the
    /// way the bytes travel: read from the initiator or written to the receiver is `up`.
    fn record(&self, outbound: bool, bytes: Bytes) {
        let sender = if outbound { self.leg.peer() } else { self.leg };
        self.tap.emit(Event::now(
            self.conn,
            Some(sender.sends()),
            EventKind::RawData {
                leg: self.leg,
                outbound,
                bytes: Xml(bytes),
            },
        ));
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Some(rec), Poll::Ready(Ok(()))) = (&this.rec, &result) {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                rec.record(false, Bytes::copy_from_slice(read));
            }
        }
        result
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let (Some(rec), Poll::Ready(Ok(n))) = (&this.rec, &result) {
            if *n > 0 {
                rec.record(true, Bytes::copy_from_slice(&buf[..*n]));
            }
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    /// TLS writes its records through here (rustls writes vectored): the recorded bytes are the first `n` of
    /// the slices, `n` being what the socket took.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let (Some(rec), Poll::Ready(Ok(n))) = (&this.rec, &result) {
            if *n > 0 {
                let mut written = Vec::with_capacity(*n);
                for buf in bufs {
                    let take = buf.len().min(*n - written.len());
                    written.extend_from_slice(&buf[..take]);
                    if written.len() == *n {
                        break;
                    }
                }
                rec.record(true, Bytes::from(written));
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::side::Direction;
    use crate::tap::{spawn_writer, Sink, TapOptions};
    use crate::tls::{Ca, TlsContext, UpstreamTrust};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the tap received: raw chunks as (leg, outbound, dir, bytes), and key log lines.
    #[derive(Debug, Default)]
    struct Seen {
        raw: Vec<(Side, bool, Option<Direction>, Vec<u8>)>,
        secrets: Vec<String>,
    }

    struct Collect(Arc<Mutex<Seen>>);

    impl Sink for Collect {
        fn event(&mut self, event: &Event) -> io::Result<()> {
            let mut seen = self.0.lock().expect("lock");
            match &event.kind {
                EventKind::RawData {
                    leg,
                    outbound,
                    bytes,
                } => seen
                    .raw
                    .push((*leg, *outbound, event.dir, bytes.0.to_vec())),
                EventKind::TlsSecrets { line } => seen.secrets.push(line.clone()),
                _ => {}
            }
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn name(&self) -> String {
            String::from("test")
        }
    }

    /// A tap recording raw bytes, and a function that waits for the writer and returns what it saw (call it once
    /// every clone of the tap is dropped).
    fn raw_tap() -> (Tap, impl FnOnce() -> Seen) {
        let (tap, rx) = Tap::channel(TapOptions {
            data: false,
            raw: true,
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let writer = spawn_writer(rx, vec![Box::new(Collect(seen.clone()))]).expect("writer");
        let done = move || {
            writer.join().expect("writer thread");
            std::mem::take(&mut *seen.lock().expect("lock"))
        };
        (tap, done)
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    fn joined(seen: &Seen, leg: Side, outbound: bool) -> Vec<u8> {
        seen.raw
            .iter()
            .filter(|(l, o, ..)| *l == leg && *o == outbound)
            .flat_map(|(.., bytes)| bytes.clone())
            .collect()
    }

    #[test]
    fn no_recorder_without_a_raw_sink() {
        assert!(RawRecorder::new(&Tap::disabled(), 1, Side::Initiator).is_none());
        let (tap, _rx) = Tap::channel(TapOptions {
            data: true,
            raw: false,
        });
        assert!(RawRecorder::new(&tap, 1, Side::Initiator).is_none());
    }

    #[tokio::test]
    async fn plain_reads_and_writes_are_recorded_with_their_direction() {
        let (tap, done) = raw_tap();
        let (ours, mut peer) = pair().await;
        let mut tcp = Tcp::new(ours, RawRecorder::new(&tap, 7, Side::Receiver));
        drop(tap);
        tcp.write_all(b"<stream:stream>").await.expect("write");
        let slices = [io::IoSlice::new(b"<a/>"), io::IoSlice::new(b"<b/>")];
        let mut sent = 0;
        while sent < 8 {
            // write_vectored may take part of the slices; the rest is written plainly.
            sent += match sent {
                0 => tcp.write_vectored(&slices).await.expect("writev"),
                n => tcp.write(&b"<a/><b/>"[n..]).await.expect("write"),
            };
        }
        peer.write_all(b"<features/>").await.expect("peer write");
        let mut got = vec![0; 11];
        tcp.read_exact(&mut got).await.expect("read");
        let mut on_wire = vec![0; 23];
        peer.read_exact(&mut on_wire).await.expect("peer read");
        assert_eq!(on_wire, b"<stream:stream><a/><b/>");
        drop(tcp);

        let seen = done();
        assert_eq!(
            joined(&seen, Side::Receiver, true),
            b"<stream:stream><a/><b/>"
        );
        assert_eq!(joined(&seen, Side::Receiver, false), b"<features/>");
        for (leg, outbound, dir, _) in &seen.raw {
            assert_eq!(*leg, Side::Receiver);
            // Written to the receiver: up; read from it: down.
            let expected = if *outbound {
                Direction::Up
            } else {
                Direction::Down
            };
            assert_eq!(*dir, Some(expected));
        }
    }

    /// Under TLS the recorded bytes are the TLS records (what a capture of the wire would show), and the
    /// secrets to decrypt them go to the same tap.
    #[tokio::test]
    async fn tls_legs_record_the_encrypted_bytes() {
        let dir = std::env::temp_dir().join(format!("xmpptap-raw-{}", std::process::id()));
        let ca = Arc::new(Ca::load_or_create(&dir).expect("CA"));
        let (tap, done) = raw_tap();
        let key_log = crate::tap::keylog::TlsKeyLog::open(None, &tap)
            .expect("key log")
            .expect("raw capture wants secrets");
        let tls = TlsContext::new(ca, &UpstreamTrust::DangerousAcceptAny)
            .expect("context")
            .with_key_log(Arc::new(key_log));
        let (client, server) = pair().await;
        let client = Tcp::new(client, RawRecorder::new(&tap, 1, Side::Receiver));
        let server = Tcp::new(server, RawRecorder::new(&tap, 1, Side::Initiator));
        let name = rustls::pki_types::ServerName::try_from("b.test").expect("name");
        let acceptor = tls.acceptor_for("b.test").expect("acceptor");
        let (client, server) = tokio::join!(
            tls.connector(b"xmpp-server").connect(name, client),
            acceptor.accept(server)
        );
        let (mut client, mut server) = (client.expect("client"), server.expect("server"));
        client
            .write_all(b"<message>secret</message>")
            .await
            .expect("write");
        client.flush().await.expect("flush");
        let mut got = vec![0; 25];
        server.read_exact(&mut got).await.expect("read");
        // The writer ends once every tap is gone, including the one the key log in the configurations holds.
        drop((client, server, acceptor, tls, tap));
        let _ = std::fs::remove_dir_all(&dir);

        let seen = done();
        let hello = joined(&seen, Side::Receiver, true);
        assert_eq!(
            hello[..2],
            [0x16, 0x03],
            "a TLS handshake record (ClientHello) first"
        );
        assert_eq!(
            joined(&seen, Side::Initiator, false),
            hello,
            "what one end wrote, the other read"
        );
        assert!(
            !hello.windows(6).any(|w| w == b"secret"),
            "the application data is encrypted on the wire"
        );
        let labels: Vec<&str> = seen
            .secrets
            .iter()
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(
            labels
                .iter()
                .filter(|l| **l == "CLIENT_TRAFFIC_SECRET_0")
                .count(),
            2,
            "both ends logged: {labels:?}"
        );
    }
}
