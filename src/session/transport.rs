//! The byte pipe under one leg: plain TCP until STARTTLS, then TLS over that same TCP connection.

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
    Plain(TcpStream),
    /// TLS where xmpptap is the server (the initiator's leg).
    Server(Box<server::TlsStream<TcpStream>>),
    /// TLS where xmpptap is the client (the receiver's leg).
    Client(Box<client::TlsStream<TcpStream>>),
}

impl Transport {
    /// Whether TLS is up on this leg.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
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
