//! The relay: once negotiation is over, each direction copies whole frames from one side to the other, in
//! batches, recording each frame on the way. What [`super::steer`] plans for a batch is carried out here:
//! usually one write of the original bytes; only an element a rule rewrites is re-serialized (by the rule).
//! Between batches a direction also writes what the control API or a rule injects, and xmpptap's pings.
//!
//! # Backpressure and idleness
//!
//! A direction reads from its sender only while it is not writing: while the other peer is not taking what
//! was read, xmpptap reads nothing more from the sender, whose own writes then block once the TCP buffers in
//! between are full. What xmpptap holds per direction is therefore at most one unfinished frame (no more than
//! `--max-stanza-size`, or the framer refuses it) plus one read (64 KiB at most) into the same buffer, which
//! grows only when less than a read's room is free: under 2 x (`--max-stanza-size` + 64 KiB) in all.
//!
//! With `--idle-timeout`, the connection ends when no frame has been relayed in either direction for that
//! long (whitespace keepalives are frames). Bytes of an unfinished element do not count as activity, so that a
//! peer trickling an element byte by byte cannot hold the connection forever. When the time is up, the side
//! to blame is the one not taking what xmpptap writes to it, else the one in the middle of an element; with
//! neither, both sides are idle and both get `<connection-timeout/>`.

use super::leg::Leg;
use super::observe::Observer;
use super::rewrite::Rewriter;
use super::steer::{self, Op, Shaping, Steer};
use super::transport::Transport;
use super::{Ended, SessionError};
use crate::control::registry::{ConnEntry, InjectOrigin, Injection};
use crate::side::Side;
use crate::tap::ClosedBy;
use crate::xml::framer::Frame;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
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

/// How many injections (control API, `inject` rules with `at = "reply"`) may wait per direction.
pub const INJECTION_QUEUE: usize = 64;

/// What the relay does besides copying: one [`Steer`] per direction, the injection queues the control API and
/// rules write to, and xmpptap's pings.
#[derive(Debug)]
pub struct Steering {
    pub conn: u64,
    pub entry: Arc<ConnEntry>,
    pub up: Steer,
    pub down: Steer,
    /// Receivers of the injection queues [up, down]; their senders are in `entry`.
    pub queues: [mpsc::Receiver<Injection>; 2],
    /// Senders of the same queues, for `inject` rules that answer the other way.
    pub senders: [mpsc::Sender<Injection>; 2],
    /// `--ping-interval` and `--ping-timeout`.
    pub ping: Option<(Duration, Duration)>,
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
#[allow(clippy::too_many_arguments)] // Each is a different handle of the session; a struct would only rename them.
pub async fn relay(
    ini: Leg<Transport>,
    rec: Leg<Transport>,
    up: &mut Observer,
    down: &mut Observer,
    rewriter: &Rewriter,
    idle_timeout: Option<Duration>,
    shutdown: &CancellationToken,
    steering: Steering,
) -> (Ended, [u64; 2]) {
    let Steering {
        conn,
        entry,
        up: mut up_steer,
        down: mut down_steer,
        queues: [mut up_queue, mut down_queue],
        senders: [up_sender, down_sender],
        ping,
    } = steering;
    let (ini_io, ini) = ini.into_io();
    let (rec_io, rec) = rec.into_io();
    let (ini_r, mut ini_w) = tokio::io::split(ini_io);
    let (rec_r, mut rec_w) = tokio::io::split(rec_io);
    let mut ini = ini.with_io(ini_r);
    let mut rec = rec.with_io(rec_r);

    // What happened first, found while both directions run; acted upon once they no longer borrow the halves.
    let activity = Activity::new();
    let outcome: Result<Side, SessionError> = {
        let up_pump = pump(
            Lane {
                src: &mut ini,
                dst: &mut rec_w,
                obs: up,
                rewriter: None,
                steer: &mut up_steer,
                queue: &mut up_queue,
                reply: &down_sender,
                ping,
                conn,
            },
            &activity,
        );
        let down_pump = pump(
            Lane {
                src: &mut rec,
                dst: &mut ini_w,
                obs: down,
                rewriter: Some(rewriter),
                steer: &mut down_steer,
                queue: &mut down_queue,
                reply: &up_sender,
                ping: None,
                conn,
            },
            &activity,
        );
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
            _ = entry.close.cancelled() => {
                let request = entry.close_request();
                Err(SessionError::ControlClose {
                    condition: request
                        .as_ref()
                        .and_then(|r| r.condition.as_deref())
                        .map(|c| crate::xml::element::stream_condition(c).unwrap_or("undefined-condition")),
                    text: request.and_then(|r| r.text),
                })
            }
        }
    };
    entry.set_injectors(None);
    if let Some((_, timeout)) = ping {
        up_steer.connection_ended(conn, timeout);
    }

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
        Err(SessionError::Reset { rule }) => {
            // No last words: both legs get a TCP RST.
            tracing::info!(rule, "reset both legs");
            ini.io.unsplit(ini_w).reset();
            rec.io.unsplit(rec_w).reset();
            return (
                Ended {
                    by: ClosedBy::Xmpptap,
                    reason: format!("rule '{rule}' reset both connections (TCP RST)"),
                },
                [ini.bytes_read, rec.bytes_read],
            );
        }
        Err(error @ SessionError::Cut { .. }) => {
            // Cut short: no stream error, no </stream:stream>, just the end of both connections.
            tracing::info!(%error, "cut");
            let _ = ini_w.shutdown().await;
            let _ = rec_w.shutdown().await;
            Ended {
                by: ClosedBy::Xmpptap,
                reason: format!("{error:#}"),
            }
        }
        Err(error) => {
            super::log_error(&error);
            let (ini_words, rec_words) = super::last_words(&error);
            super::record_protocol_error(up, down, &error);
            if let Some(condition) = error.condition() {
                up_steer.metrics().error(condition);
            }
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

/// One direction of the relay: where frames come from and go, and what steers them.
struct Lane<'a, R, W> {
    src: &'a mut Leg<R>,
    dst: &'a mut WriteHalf<W>,
    obs: &'a mut Observer,
    /// The features policy (downstream only).
    rewriter: Option<&'a Rewriter>,
    steer: &'a mut Steer,
    /// Injections for this direction.
    queue: &'a mut mpsc::Receiver<Injection>,
    /// The other direction's queue (an `inject` rule with `at = "reply"`).
    reply: &'a mpsc::Sender<Injection>,
    /// Ping interval and timeout (upstream only).
    ping: Option<(Duration, Duration)>,
    conn: u64,
}

/// What woke a direction between batches.
enum Wake {
    Read(usize),
    Inject(Injection),
    Ping,
}

/// Copies frames from `src` to `dst` until `src` closes. Every frame already buffered is written in one batch,
/// as [`Steer::plan`] says: usually the batch's own bytes in one write, a rewritten, dropped or delayed element
/// splitting it. Nothing more is read from `src` until the batch is written: that is the backpressure of the
/// module docs. Between batches the direction also writes what is injected into it and, upstream, xmpptap's
/// pings: always at a frame boundary, since only this direction writes to `dst`.
async fn pump<R, W>(d: Lane<'_, R, W>, activity: &Activity) -> Result<PumpEnd, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let Lane {
        src,
        dst,
        obs,
        rewriter,
        steer,
        queue,
        reply,
        ping,
        conn,
    } = d;
    let dst_side = src.side.peer();
    let progress = activity.from(src.side);
    let io = move |source| SessionError::Io {
        side: dst_side,
        source,
    };
    let mut ticker = ping.map(|(interval, _)| {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
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
            obs.frames(&frames, &chunk);
            let ops = steer.plan(&frames, &chunk, obs, rewriter);
            frames.clear();
            for op in ops {
                match op {
                    Op::Write(bytes) => {
                        write_shaped(dst, &bytes, &mut steer.shaping, obs, dst_side).await?
                    }
                    Op::Reply(xml, rule) => {
                        let injection = Injection {
                            xml,
                            origin: InjectOrigin::Rule(rule),
                        };
                        if reply.try_send(injection).is_err() {
                            tracing::warn!(
                                "reply injection dropped: the other direction's queue is full"
                            );
                        }
                    }
                    Op::Pause(wait) => {
                        dst.flush().await.map_err(io)?;
                        tokio::time::sleep(wait).await;
                    }
                    Op::StallForever => {
                        dst.flush().await.map_err(io)?;
                        progress.writing.store(false, Ordering::Relaxed);
                        return std::future::pending().await;
                    }
                    Op::End(error) => {
                        dst.flush().await.map_err(io)?;
                        return Err(error);
                    }
                }
            }
            dst.flush().await.map_err(io)?;
            progress.writing.store(false, Ordering::Relaxed);
            activity.touch();
        }
        // Cancel-safe: a read keeps its bytes in the leg, a queue receive and a tick lose nothing.
        let wake = tokio::select! {
            read = src.fill() => Wake::Read(read?),
            Some(injection) = queue.recv() => Wake::Inject(injection),
            _ = async { ticker.as_mut()?.tick().await; Some(()) }, if ticker.is_some() => Wake::Ping,
        };
        match wake {
            Wake::Read(0) => {
                // Pass the close on: the peer sees the same half-close the sender made.
                let _ = dst.shutdown().await;
                return Ok(PumpEnd::Eof);
            }
            Wake::Read(_) => {}
            Wake::Inject(injection) => {
                obs.own(steer::injected_event(&injection));
                write_own(dst, &injection.xml, obs, dst_side).await?;
                steer.count_own(injection.xml.len());
                activity.touch();
            }
            Wake::Ping => {
                let timeout = ping.map_or(Duration::MAX, |(_, timeout)| timeout);
                for (id, outstanding) in steer.pinger().expire(conn, timeout) {
                    let pair = format!("{}->{}", outstanding.from, outstanding.to);
                    steer.metrics().ping_timeout(&pair);
                    obs.own(crate::tap::EventKind::Ping {
                        id,
                        pair,
                        result: "timeout",
                        rtt_ms: None,
                        error: None,
                        sent_on: Some(conn),
                    });
                }
                if let Some(ping) = steer.ping(conn) {
                    obs.own(crate::tap::EventKind::Ping {
                        id: ping.id.clone(),
                        pair: steer.pair(),
                        result: "sent",
                        rtt_ms: None,
                        error: None,
                        sent_on: Some(conn),
                    });
                    write_own(dst, &ping.xml, obs, dst_side).await?;
                    steer.count_own(ping.xml.len());
                }
            }
        }
    }
}

/// Writes something xmpptap itself sends in this direction, at once.
async fn write_own<W: AsyncWrite>(
    dst: &mut WriteHalf<W>,
    bytes: &Bytes,
    obs: &Observer,
    dst_side: Side,
) -> Result<(), SessionError> {
    write_shaped(dst, bytes, &mut Shaping::default(), obs, dst_side).await?;
    dst.flush().await.map_err(|source| SessionError::Io {
        side: dst_side,
        source,
    })
}

/// Writes `bytes` as the direction's shaping says: at once, at a throttled rate, in slices, or only up to
/// where `cut_after` ends the connection.
async fn write_shaped<W: AsyncWrite>(
    dst: &mut WriteHalf<W>,
    bytes: &Bytes,
    shaping: &mut Shaping,
    obs: &Observer,
    dst_side: Side,
) -> Result<(), SessionError> {
    let io = |source| SessionError::Io {
        side: dst_side,
        source,
    };
    if shaping.is_plain() {
        dst.write_all(bytes).await.map_err(io)?;
        obs.data(dst_side, true, bytes);
        return Ok(());
    }
    let mut bytes = bytes.clone();
    let mut cut_now = None;
    if let Some(cut) = &mut shaping.cut {
        if let Some(left) = &mut cut.bytes {
            if bytes.len() as u64 >= *left {
                bytes.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                cut_now = Some(cut.rule.clone());
            }
            *left -= bytes.len() as u64;
        }
    }
    // Pieces: a slice's size, or a tenth of a second's worth when throttled, else the whole.
    let piece = match (shaping.slice, shaping.throttle) {
        (Some((size, _)), _) => size,
        (None, Some(rate)) => usize::try_from((rate / 10).max(1)).unwrap_or(usize::MAX),
        (None, None) => bytes.len().max(1),
    };
    let mut first = true;
    while !bytes.is_empty() {
        let part = bytes.split_to(piece.min(bytes.len()));
        if let (Some((_, pause)), false) = (shaping.slice, first) {
            dst.flush().await.map_err(io)?;
            tokio::time::sleep(pause).await;
        }
        first = false;
        dst.write_all(&part).await.map_err(io)?;
        obs.data(dst_side, true, &part);
        if let Some(rate) = shaping.throttle {
            dst.flush().await.map_err(io)?;
            tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / rate as f64)).await;
        }
    }
    match cut_now {
        Some(rule) => {
            dst.flush().await.map_err(io)?;
            Err(SessionError::Cut {
                rule,
                after: String::from("its byte limit"),
            })
        }
        None => Ok(()),
    }
}
