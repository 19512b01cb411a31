//! Taps observe the data path and never steer it.
//!
//! Sessions describe what they see as [`Event`]s and hand them to a [`Tap`], which pushes them into a bounded
//! channel without waiting. One writer thread drains the channel and hands every event to each [`Sink`]
//! ([`jsonl`] for the JSON Lines transcript; capture sinks for pcap). This module owns the event vocabulary,
//! the overflow policy and the writer; it does not know about sockets, TLS or framing.

pub mod event;
pub mod jsonl;

pub use event::{ClosedBy, Event, EventKind};

use std::io;
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
    wants_data: bool,
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

    /// A tap whose events go to the returned receiver. `wants_data`: whether some sink needs
    /// [`EventKind::Data`] events (the bytes of every leg), which cost a channel slot per relayed batch.
    pub fn channel(wants_data: bool) -> (Self, TapReceiver) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let inner = Inner {
            tx,
            dropped: dropped.clone(),
            wants_data,
        };
        (Tap { inner: Some(inner) }, TapReceiver { rx, dropped })
    }

    /// Whether events are wanted at all. Callers check this before building costly events.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether [`EventKind::Data`] events are wanted.
    pub fn wants_data(&self) -> bool {
        self.inner.as_ref().is_some_and(|inner| inner.wants_data)
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

/// One destination for events (a transcript file, a capture). Sinks run on the writer thread, so they may do
/// blocking I/O; they must not panic on any event.
pub trait Sink: Send {
    /// Records one event. Sinks ignore the kinds they do not care about.
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// Makes everything recorded so far visible (called whenever the channel runs empty).
    fn flush(&mut self) -> io::Result<()>;
    /// A name for error messages (`transcript transcript.jsonl`).
    fn name(&self) -> String;
}

/// Starts the writer thread: it drains `rx` into every sink until every [`Tap`] is dropped, flushing whenever
/// the channel runs empty (so `tail -f` sees events as they happen while a busy proxy writes in batches), and
/// reports dropped events as `tap_dropped` records. A sink that fails is reported once and then left out.
pub fn spawn_writer(
    mut rx: TapReceiver,
    mut sinks: Vec<Box<dyn Sink>>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(String::from("xmpptap-tap"))
        .spawn(move || {
            let mut reported_drops = 0;
            while let Some(first) = rx.rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(event) = next {
                    deliver(&mut sinks, &event);
                    next = rx.rx.try_recv().ok();
                }
                let dropped = rx.dropped.load(Ordering::Relaxed);
                if dropped > reported_drops {
                    let count = dropped - reported_drops;
                    reported_drops = dropped;
                    tracing::warn!(count, "transcript writer fell behind; events dropped");
                    deliver(&mut sinks, &Event::now(0, None, EventKind::TapDropped { count }));
                }
                sinks.retain_mut(|sink| match sink.flush() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, sink = %sink.name(), "cannot write; this output stops here");
                        false
                    }
                });
            }
        })
}

fn deliver(sinks: &mut Vec<Box<dyn Sink>>, event: &Event) {
    sinks.retain_mut(|sink| match sink.event(event) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, sink = %sink.name(), "cannot write; this output stops here");
            false
        }
    });
}
