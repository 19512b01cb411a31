//! One side of a session: its connection, the bytes read from it but not yet framed, and its framer.

use crate::side::Side;
use crate::xml::framer::{Frame, Framer, Limits};
use bytes::{Bytes, BytesMut};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::SessionError;

/// How much room to make for a read between frames, on the stack, and for the first read that finds part of an
/// element waiting: small enough to keep idle connections cheap.
const READ_CHUNK: usize = 8 * 1024;

/// The most room a busy stream's reads get. Each read that fills its room doubles the next one's, up to this;
/// each that fills less than half halves it. A busy stream is then read, framed, recorded and written on in
/// a few large batches rather than many small ones: fewer syscalls, allocations and tap events per stanza.
const MAX_READ: usize = 64 * 1024;

/// A side's reading state. `IO` is the whole transport during negotiation and its read half in the relay.
#[derive(Debug)]
pub struct Leg<IO> {
    /// Which peer this is.
    pub side: Side,
    /// The connection (or its read half).
    pub io: IO,
    /// Bytes read but not yet handed out as frames.
    pub buf: BytesMut,
    /// Cuts `buf` into frames.
    pub framer: Framer,
    /// Bytes read from this side so far.
    pub bytes_read: u64,
    /// The room the next read into a non-empty `buf` gets, [`READ_CHUNK`] to [`MAX_READ`].
    room: usize,
}

impl<IO> Leg<IO> {
    /// Takes the connection out, leaving what was read and the framer's state for [`Leg::with_io`] (the TLS
    /// stream the connection becomes, or a read half of it).
    pub fn into_io(self) -> (IO, Leg<()>) {
        self.replace_io(())
    }

    /// This leg over `io` instead, and the connection it had.
    fn replace_io<T>(self, io: T) -> (IO, Leg<T>) {
        let leg = Leg {
            side: self.side,
            io,
            buf: self.buf,
            framer: self.framer,
            bytes_read: self.bytes_read,
            room: self.room,
        };
        (self.io, leg)
    }
}

impl Leg<()> {
    /// The leg [`Leg::into_io`] left, over `io`.
    pub fn with_io<IO>(self, io: IO) -> Leg<IO> {
        self.replace_io(io).1
    }
}

impl<IO: AsyncRead + Unpin> Leg<IO> {
    /// A leg with an empty buffer and a fresh framer.
    pub fn new(side: Side, io: IO, limits: Limits) -> Self {
        Leg {
            side,
            io,
            buf: BytesMut::new(),
            framer: Framer::new(limits),
            bytes_read: 0,
            room: READ_CHUNK,
        }
    }

    /// The next complete frame and its original bytes; `Ok(None)` when the peer closed the connection between
    /// frames.
    ///
    /// Cancel-safe: bytes already read stay in `buf`, and the framer only advances when a frame is returned.
    pub async fn next_frame(&mut self) -> Result<Option<(Frame, Bytes)>, SessionError> {
        loop {
            if let Some(frame) = self.poll_frame(0)? {
                let bytes = self.buf.split_to(frame.len).freeze();
                return Ok(Some((frame, bytes)));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next complete frame starting `offset` bytes into `buf`, without consuming anything. The relay uses
    /// this to collect every frame already read before writing them out in one batch.
    pub fn poll_frame(&mut self, offset: usize) -> Result<Option<Frame>, SessionError> {
        self.framer
            .next_frame(&self.buf[offset..])
            .map_err(|source| SessionError::Frame {
                side: self.side,
                source,
            })
    }

    /// Reads more bytes into `buf`. Returns 0 on a clean end of stream (trailing whitespace is fine); an end of
    /// stream in the middle of a frame is [`SessionError::Truncated`]. Cancel-safe (a single read, whose bytes
    /// are in `buf` when it returns).
    ///
    /// Between frames (`buf` empty, the usual state of an idle connection) the read goes to a scratch buffer on
    /// the stack of the poll and what arrived is copied into `buf`; when nothing has arrived, `buf` lets go of
    /// its allocation before the leg waits. An idle connection then holds no read buffer, for one copy of each
    /// read on a busy one. A read into a non-empty `buf` (part of an element waiting: the usual state of a busy
    /// stream) goes straight into it, with room that grows while reads fill it (see [`MAX_READ`]).
    pub async fn fill(&mut self) -> Result<usize, SessionError> {
        let read = if self.buf.is_empty() {
            let (io, buf) = (&mut self.io, &mut self.buf);
            std::future::poll_fn(|cx| {
                let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(read.filled());
                        Poll::Ready(Ok(read.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => {
                        *buf = BytesMut::new();
                        Poll::Pending
                    }
                }
            })
            .await
        } else {
            let room = self.room;
            self.buf.reserve(room);
            let read = (&mut self.io)
                .take(room as u64)
                .read_buf(&mut self.buf)
                .await;
            if let Ok(n) = read {
                self.room = if n == room {
                    (room * 2).min(MAX_READ)
                } else if n < room / 2 {
                    (room / 2).max(READ_CHUNK)
                } else {
                    room
                };
            }
            read
        };
        let n = match read {
            Ok(n) => n,
            // TLS without close_notify: XMPP has its own close (`</stream:stream>`), and servers such
            // as Prosody routinely drop the TCP connection after it. Treat it as an end of stream; a
            // truncated element is still caught below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(source) => {
                return Err(SessionError::Io {
                    side: self.side,
                    source,
                })
            }
        };
        if n == 0 && !self.buf.iter().all(u8::is_ascii_whitespace) {
            return Err(SessionError::Truncated { side: self.side });
        }
        self.bytes_read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads into a non-empty buffer get room that doubles while they fill it, up to [`MAX_READ`], and halves
    /// after one that fills less than half; the first read of an empty buffer takes [`READ_CHUNK`].
    #[tokio::test]
    async fn a_busy_stream_is_read_in_growing_chunks() {
        // Whitespace, so that the end of the input is a clean end of stream.
        let input = vec![b' '; 8 * 1024 * 40 + 1000];
        let mut leg = Leg::new(Side::Initiator, &input[..], Limits::default());
        let mut reads = Vec::new();
        loop {
            let n = leg.fill().await.expect("fill");
            if n == 0 {
                break;
            }
            reads.push(n / 1024);
        }
        assert_eq!(leg.bytes_read, input.len() as u64);
        assert_eq!(leg.buf.len(), input.len());
        // 8 + 8 + 16 + 32 + 64 + 64 + 64 + 64 KiB = 320 KiB, then the last 1000 bytes: under half the room.
        assert_eq!(reads, [8, 8, 16, 32, 64, 64, 64, 64, 0]);
        // Halved by the last 1000 bytes and again by the end of stream.
        assert_eq!(leg.room, MAX_READ / 4);
    }
}
