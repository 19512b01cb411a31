//! Taps observe the data path and never steer it.
//!
//! Sessions describe what they see as [`Event`]s and hand them to a [`Tap`], which pushes them into a bounded
//! channel without waiting. One writer task per sink drains the channel ([`jsonl`] for the JSON Lines
//! transcript). This module owns the event vocabulary and the overflow policy; it does not know about sockets,
//! TLS or framing.

pub mod event;
pub mod jsonl;

pub use event::{ClosedBy, Event, EventKind};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How many events may wait for the writer. At ~1 KiB per stanza event this bounds the transcript's memory to
/// a few MiB. When the writer falls behind (a slow disk, a stalled `--log -` pipe), new events are dropped and
/// counted rather than slowing the relay: a debugger that changes the timing of what it observes is worse than
/// one that says "I missed 12 events here". The writer reports the count in a `tap_dropped` event.
pub const CHANNEL_CAPACITY: usize = 8192;

/// A cheap, cloneable handle sessions emit events through.
#[derive(Clone, Debug)]
pub struct Tap {
    inner: Option<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// The receiving end of a [`Tap`], handed to exactly one writer.
#[derive(Debug)]
pub struct TapReceiver {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// A tap that discards everything without building events (no `--log`).
    pub fn disabled() -> Self {
        Tap { inner: None }
    }

    /// A tap whose events go to the returned receiver.
    pub fn channel() -> (Self, TapReceiver) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let inner = Inner {
            tx,
            dropped: dropped.clone(),
        };
        (Tap { inner: Some(inner) }, TapReceiver { rx, dropped })
    }

    /// Whether events are wanted at all. Callers check this before building costly events.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Hands an event to the writer without waiting; counts it as dropped if the channel is full.
    pub fn emit(&self, event: Event) {
        if let Some(inner) = &self.inner {
            if inner.tx.try_send(event).is_err() {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.dropped.load(Ordering::Relaxed))
    }
}

impl TapReceiver {
    /// Waits for the next event; `None` once every [`Tap`] is gone and the channel is empty.
    /// Cancel-safe (it is `mpsc::Receiver::recv`).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
