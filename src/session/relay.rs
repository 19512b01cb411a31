//! The relay: once negotiation is over, each direction copies whole frames from one side to the other, in
//! batches, recording each frame on the way. Nothing is re-serialized.
//!
//! # Backpressure and idleness
//!
//! A direction reads from its sender only while it is not writing: while the other peer is not taking what
//! was read, xmpptap reads nothing more from the sender, whose own writes then block once the TCP buffers in
//! between are full. What xmpptap holds per direction is therefore at most one unfinished frame (no more than
//! `--max-stanza-size`, or the framer refuses it) plus one read into the same buffer, which grows only when
//! less than a read chunk is free: under 2 x (`--max-stanza-size` + 8 KiB) in all.
//!
//! With `--idle-timeout`, the connection ends when no frame has been relayed in either direction for that
//! long (whitespace keepalives are frames). Bytes of an unfinished element do not count as activity, so that a
//! peer trickling an element byte by byte cannot hold the connection forever. When the time is up, the side
//! to blame is the one not taking what xmpptap writes to it, else the one in the middle of an element; with
//! neither, both sides are idle and both get `<connection-timeout/>`.

use super::leg::Leg;
use super::observe::Observer;
use super::rewrite::Rewriter;
use super::transport::Transport;
use super::{Ended, SessionError};
use crate::side::Side;
use crate::tap::ClosedBy;
use crate::xml::framer::Frame;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the other direction may keep going after one side closed its connection: long enough for a peer
/// to answer `</stream:stream>` with its own, short enough not to keep half-dead connections.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long xmpptap waits to deliver its own last words (a stream error, `</stream:stream>`) to a peer.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(5);

/// How a direction ended.
#[derive(Debug)]
enum PumpEnd {
    /// The sending side closed its connection (after `</stream:stream>` or not).
    Eof,
}

/// Progress of the whole relay, shared by both directions and the idle watch. Atomics rather than cells:
/// the futures that share it are polled by one task, but that task must be `Send`.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// When a frame was last relayed or a write finished, in milliseconds after `started`.
    last: AtomicU64,
    /// Initiator -> receiver.
    up: Progress,
    /// Receiver -> initiator.
    down: Progress,
}

/// What one direction is doing, for the idle watch to blame the right side.
#[derive(Debug, Default)]
struct Progress {
    /// xmpptap is waiting for the receiving peer to take bytes.
    writing: AtomicBool,
    /// The sender's buffer holds part of an element.
    partial: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            up: Progress::default(),
            down: Progress::default(),
        }
    }

    /// Something was relayed just now.
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// The direction whose sender is `side`.
    fn from(&self, side: Side) -> &Progress {
        match side {
            Side::Initiator => &self.up,
            Side::Receiver => &self.down,
        }
    }

    /// Why nothing moved for `after`: a peer not taking what xmpptap writes, a peer stuck in the middle of an
    /// element, or both idle.
    fn blame(&self, after: Duration) -> SessionError {
        let flag = |side: Side, pick: fn(&Progress) -> &AtomicBool| {
            pick(self.from(side)).load(Ordering::Relaxed)
        };
        for side in [Side::Initiator, Side::Receiver] {
            // xmpptap is writing toward `side`: the direction sent by its peer.
            if flag(side.peer(), |p| &p.writing) {
                return SessionError::Stalled { side, after };
            }
        }
        for side in [Side::Initiator, Side::Receiver] {
            if flag(side, |p| &p.partial) {
                return SessionError::Slow { side, after };
            }
        }
        SessionError::Idle { after }
    }
}

/// Resolves once nothing has been relayed for `limit` (never when `limit` is `None`), with the error to end
/// the connection with. Cancel-safe: it only sleeps and reads `activity`.
async fn idle(activity: &Activity, limit: Option<Duration>) -> SessionError {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let deadline = activity.last() + limit;
        if Instant::now() >= deadline {
            return activity.blame(limit);
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Relays between the initiator and the receiver until both are done, an error ends it, nothing was relayed
/// for `idle_timeout`, or shutdown. Returns how it ended and the bytes read from [initiator, receiver].
pub async fn relay(
    ini: Leg<Transport>,
    rec: Leg<Transport>,
    up: &mut Observer,
    down: &mut Observer,
    rewriter: &Rewriter,
    idle_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> (Ended, [u64; 2]) {
    let (ini_r, mut ini_w) = tokio::io::split(ini.io);
    let (rec_r, mut rec_w) = tokio::io::split(rec.io);
    let mut ini = Leg {
        side: ini.side,
        io: ini_r,
        buf: ini.buf,
        framer: ini.framer,
        bytes_read: ini.bytes_read,
    };
    let mut rec = Leg {
        side: rec.side,
        io: rec_r,
        buf: rec.buf,
        framer: rec.framer,
        bytes_read: rec.bytes_read,
    };

    // What happened first, found while both directions run; acted upon once they no longer borrow the halves.
    let activity = Activity::new();
    let outcome: Result<Side, SessionError> = {
        let up_pump = pump(&mut ini, &mut rec_w, up, None, &activity);
        let down_pump = pump(&mut rec, &mut ini_w, down, Some(rewriter), &activity);
        tokio::pin!(up_pump, down_pump);
        // Both pumps are cancel-safe at their await points (reads keep their bytes in the leg's buffer); a write
        // cut short only happens on error, idleness or shutdown, when the connection is being torn down anyway.
        tokio::select! {
            result = &mut up_pump => match result {
                Ok(PumpEnd::Eof) => {
                    // The initiator is gone; let the receiver finish what it was saying.
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut down_pump).await;
                    Ok(Side::Initiator)
                }
                Err(e) => Err(e),
            },
            result = &mut down_pump => match result {
                Ok(PumpEnd::Eof) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut up_pump).await;
                    Ok(Side::Receiver)
                }
                Err(e) => Err(e),
            },
            error = idle(&activity, idle_timeout) => Err(error),
            _ = shutdown.cancelled() => Err(SessionError::Shutdown),
        }
    };

    let ended = match outcome {
        Ok(side) => {
            let obs = match side {
                Side::Initiator => &*up,
                Side::Receiver => &*down,
            };
            let how = if obs.stream_closed {
                "after closing its stream"
            } else {
                "without closing its stream"
            };
            Ended {
                by: ClosedBy::from(side),
                reason: format!("{side} closed the connection {how}"),
            }
        }
        Err(error) => {
            super::log_error(&error);
            let (ini_words, rec_words) = super::last_words(&error);
            super::record_protocol_error(up, down, &error);
            say(&mut ini_w, &ini_words, down).await;
            say(&mut rec_w, &rec_words, up).await;
            Ended {
                by: error.culprit().map_or(ClosedBy::Xmpptap, ClosedBy::from),
                reason: format!("{error:#}"),
            }
        }
    };
    (ended, [ini.bytes_read, rec.bytes_read])
}

/// Writes xmpptap's last words to one side (bounded in time), records them, and closes the write side.
async fn say<W: AsyncWrite + Unpin>(w: &mut WriteHalf<W>, words: &[u8], obs: &Observer) {
    let result = tokio::time::timeout(LAST_WORDS_TIMEOUT, async {
        w.write_all(words).await?;
        w.shutdown().await
    })
    .await;
    if let Ok(Ok(())) = result {
        obs.own_words(words);
    }
}

/// Copies frames from `src` to `dst` until `src` closes. Every frame already buffered is written in one batch;
/// a frame the `rewriter` changes (features, downstream only) is swapped for its rewritten bytes. Nothing more
/// is read from `src` until the batch is written: that is the backpressure of the module docs.
async fn pump<R, W>(
    src: &mut Leg<R>,
    dst: &mut WriteHalf<W>,
    obs: &mut Observer,
    rewriter: Option<&Rewriter>,
    activity: &Activity,
) -> Result<PumpEnd, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let dst_side = src.side.peer();
    let progress = activity.from(src.side);
    let mut frames: Vec<(usize, Frame)> = Vec::new();
    loop {
        let mut batch = 0;
        while let Some(frame) = src.poll_frame(batch)? {
            let len = frame.len;
            frames.push((batch, frame));
            batch += len;
        }
        // Whitespace is framed eagerly, so whatever is left is part of an element.
        progress
            .partial
            .store(src.buf.len() > batch, Ordering::Relaxed);
        if batch > 0 {
            activity.touch();
            progress.writing.store(true, Ordering::Relaxed);
            let chunk = src.buf.split_to(batch).freeze();
            obs.data(src.side, false, &chunk);
            // Usually the chunk goes out as it came; only a rewritten frame splits it into pieces.
            let mut pieces: Vec<Bytes> = Vec::new();
            let mut copied = 0;
            for (offset, frame) in frames.drain(..) {
                obs.frame_in(&frame, &chunk, offset);
                let bytes = &chunk[offset..offset + frame.len];
                if let Some(rewritten) = rewriter.and_then(|r| r.features(&frame, bytes, obs)) {
                    pieces.push(chunk.slice(copied..offset));
                    pieces.push(rewritten);
                    copied = offset + frame.len;
                }
            }
            let io = |source| SessionError::Io {
                side: dst_side,
                source,
            };
            if pieces.is_empty() {
                dst.write_all(&chunk).await.map_err(io)?;
                obs.data(dst_side, true, &chunk);
            } else {
                pieces.push(chunk.slice(copied..));
                for piece in pieces.iter().filter(|p| !p.is_empty()) {
                    dst.write_all(piece).await.map_err(io)?;
                    obs.data(dst_side, true, piece);
                }
            }
            dst.flush().await.map_err(io)?;
            progress.writing.store(false, Ordering::Relaxed);
            activity.touch();
        }
        if src.fill().await? == 0 {
            // Pass the close on: the peer sees the same half-close the sender made.
            let _ = dst.shutdown().await;
            return Ok(PumpEnd::Eof);
        }
    }
}
