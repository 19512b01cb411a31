//! One side of a session: its connection, the bytes read from it but not yet framed, and its framer.

use crate::side::Side;
use crate::xml::framer::{Frame, Framer, Limits};
use bytes::{BufMut, Bytes, BytesMut};
use std::mem::MaybeUninit;
use std::pin::Pin;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::SessionError;

/// The least room a read gets, and the scratch buffer on the stack that a connection not busy lately reads
/// into between frames: small enough to keep idle connections cheap.
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
    /// The room the next read gets, [`READ_CHUNK`] to [`MAX_READ`].
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
    /// A read gets `room` bytes, which grow while reads fill them (see [`MAX_READ`]). Between frames (`buf`
    /// empty, the usual state of an idle connection) with the smallest room, the read goes to a scratch buffer
    /// on the stack of the poll and what arrived is copied into `buf`; otherwise it goes straight into `buf`.
    /// Either way, when nothing has arrived between frames, `buf` lets go of its allocation before the leg
    /// waits: an idle connection holds no read buffer, whatever room its last busy spell left.
    pub async fn fill(&mut self) -> Result<usize, SessionError> {
        let (io, buf, room) = (&mut self.io, &mut self.buf, self.room);
        let between_frames = buf.is_empty();
        let read = std::future::poll_fn(|cx| {
            let polled = if between_frames && room == READ_CHUNK {
                let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut scratch);
                Pin::new(&mut *io).poll_read(cx, &mut read).map_ok(|()| {
                    buf.extend_from_slice(read.filled());
                    read.filled().len()
                })
            } else {
                buf.reserve(room);
                poll_read_buf(Pin::new(&mut *io), cx, &mut (&mut *buf).limit(room))
            };
            if polled.is_pending() && between_frames {
                *buf = BytesMut::new();
            }
            polled
        })
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
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Reads get room that doubles while they fill it, up to [`MAX_READ`], and halves after one that fills
    /// less than half; the first read, between frames, takes [`READ_CHUNK`] on the stack.
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
        // 8 + 16 + 32 + 64 + 64 + 64 + 64 KiB = 312 KiB, then the last 9,192 bytes: under half the room.
        assert_eq!(reads, [8, 16, 32, 64, 64, 64, 64, 8]);
        // Halved by the last read and again by the end of stream.
        assert_eq!(leg.room, MAX_READ / 4);
    }

    /// Between frames, a stream that was busy is read straight into `buf` with its grown room, and once
    /// nothing more arrives the leg waits without a read buffer.
    #[tokio::test]
    async fn a_stream_gone_quiet_holds_no_buffer() {
        let (mut peer, io) = tokio::io::duplex(4 * MAX_READ);
        let mut leg = Leg::new(Side::Initiator, io, Limits::default());
        peer.write_all(&[b' '; 3 * READ_CHUNK])
            .await
            .expect("write");
        assert_eq!(leg.fill().await.expect("fill"), READ_CHUNK);
        assert_eq!(leg.room, 2 * READ_CHUNK);
        // What was read is handed out as frames: the buffer is empty again, the room stays grown.
        leg.buf.clear();
        assert_eq!(leg.fill().await.expect("fill"), 2 * READ_CHUNK);
        assert_eq!(leg.room, 4 * READ_CHUNK);
        leg.buf.clear();
        // Nothing more: the read waits, and lets go of the buffer it had made room in.
        let waited = tokio::time::timeout(Duration::from_millis(20), leg.fill()).await;
        assert!(waited.is_err(), "nothing to read");
        assert_eq!(leg.buf.capacity(), 0);
    }
}
