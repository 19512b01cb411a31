//! Taps observe the data path and never steer it.
//!
//! Sessions describe what they see as [`Event`]s and hand them to a [`Tap`], which pushes them into a bounded
//! channel without waiting. One writer thread drains the channel and hands every event to each [`Sink`]
//! ([`jsonl`] for the JSON Lines transcript; [`pcap`] and [`pcapng`] for captures, whose TCP/IP framing is
//! [`tcp`]; a sink that writes to a file writes through a [`file::TapFile`]). This module owns the event
//! vocabulary, the overflow policy and the writer; it does not know about sockets, TLS or framing.
//!
//! Before the sinks, the writer runs every event through [`stage`]: secrets are masked with the same length
//! ([`redact`]) and records are linked to each other ([`correlate`]: domain pair, dialback verification, iq
//! request and response), so every sink sees the same redacted, annotated events.

pub mod correlate;
pub mod event;
pub mod file;
pub mod jsonl;
pub mod keylog;
pub mod pcap;
pub mod pcapng;
pub mod redact;
pub mod stage;
pub mod tcp;

pub use event::{ClosedBy, Event, EventKind};

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How many events may wait for the writer. At ~1 KiB per stanza event this bounds the transcript's memory to
/// a few MiB ([`CHANNEL_BYTES`] bounds it for big stanzas). When the writer falls behind (a slow disk, a
/// stalled `--log -` pipe), new events are dropped and counted rather than slowing the relay: a debugger that
/// changes the timing of what it observes is worse than one that says "I missed 12 events here". The writer
/// reports the count in a `tap_dropped` event.
pub const CHANNEL_CAPACITY: usize = 8192;

/// How many bytes of wire data (the `xml` of stanza events, the bytes of capture events) may wait for the
/// writer, whatever the number of events: 8192 events of 256 KiB stanzas would otherwise hold 2 GiB. Events
/// over the budget are dropped and counted like those over [`CHANNEL_CAPACITY`]. Events share the buffers the
/// relay read into, so the memory they hold is about this budget, at most a small multiple of it.
pub const CHANNEL_BYTES: usize = 32 * 1024 * 1024;

/// A cheap, cloneable handle sessions emit events through.
#[derive(Clone, Debug)]
pub struct Tap {
    inner: Option<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    /// Payload bytes of the events in the channel, against [`CHANNEL_BYTES`].
    queued_bytes: Arc<AtomicUsize>,
    wants_data: bool,
    wants_raw: bool,
}

/// Which costly events the sinks of a [`Tap`] need. Both cost a channel slot and a copy per read or write, so
/// sessions build them only when asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// [`EventKind::Data`]: the bytes of every leg as the application sees them (decrypted).
    pub data: bool,
    /// [`EventKind::RawData`]: the real TCP payload of every leg (encrypted once TLS is up), and
    /// [`EventKind::TlsSecrets`] to decrypt it.
    pub raw: bool,
}

/// The receiving end of a [`Tap`], handed to exactly one writer.
#[derive(Debug)]
pub struct TapReceiver {
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Tap {
    /// A tap that discards everything without building events (no `--log`).
    pub fn disabled() -> Self {
        Tap { inner: None }
    }

    /// A tap whose events go to the returned receiver; `options` says which costly events some sink needs.
    pub fn channel(options: TapOptions) -> (Self, TapReceiver) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let inner = Inner {
            tx,
            dropped: dropped.clone(),
            queued_bytes: queued_bytes.clone(),
            wants_data: options.data,
            wants_raw: options.raw,
        };
        (
            Tap { inner: Some(inner) },
            TapReceiver {
                rx,
                dropped,
                queued_bytes,
            },
        )
    }

    /// Whether events are wanted at all. Callers check this before building costly events.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether [`EventKind::Data`] events are wanted.
    pub fn wants_data(&self) -> bool {
        self.inner.as_ref().is_some_and(|inner| inner.wants_data)
    }

    /// Whether [`EventKind::RawData`] and [`EventKind::TlsSecrets`] events are wanted.
    pub fn wants_raw(&self) -> bool {
        self.inner.as_ref().is_some_and(|inner| inner.wants_raw)
    }

    /// Hands an event to the writer without waiting; counts it as dropped if the channel is full or holds
    /// [`CHANNEL_BYTES`] already.
    pub fn emit(&self, event: Event) {
        if let Some(inner) = &self.inner {
            let len = event.kind.payload_len();
            let queued = inner.queued_bytes.fetch_add(len, Ordering::Relaxed);
            if (len > 0 && queued + len > CHANNEL_BYTES) || inner.tx.try_send(event).is_err() {
                inner.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Bytes of wire data in events waiting for the writer (0 when the tap is disabled).
    pub fn queued_bytes(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.queued_bytes.load(Ordering::Relaxed))
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
    /// Records one relayed stanza handed over as a borrowed view (the usual stanza of a busy stream, see
    /// [`stage::RunView::view`]). The default makes it the owned event and calls [`Sink::event`]; a sink that
    /// writes stanzas itself, or ignores them, does better without the copy.
    fn stanza(&mut self, stanza: &event::StanzaView<'_>) -> io::Result<()> {
        self.event(&stanza.to_event())
    }
    /// Makes everything recorded so far visible (called whenever the channel runs empty).
    fn flush(&mut self) -> io::Result<()>;
    /// A name for error messages (`transcript transcript.jsonl`).
    fn name(&self) -> String;
}

/// Starts the writer thread: it drains `rx` into every sink until every [`Tap`] is dropped, flushing whenever
/// the channel runs empty (so `tail -f` sees events as they happen while a busy proxy writes in batches), and
/// reports dropped events as `tap_dropped` records. A sink that fails is reported once and then left out.
/// Before the sinks, every event goes through the [`stage`]: the default [`redact::Redaction`] (SASL payloads)
/// hides secrets, correlation links records; [`spawn_writer_with`] chooses the redaction.
pub fn spawn_writer(
    rx: TapReceiver,
    sinks: Vec<Box<dyn Sink>>,
) -> io::Result<std::thread::JoinHandle<()>> {
    spawn_writer_with(rx, sinks, redact::Redaction::default())
}

/// [`spawn_writer`] with the secrets `redaction` says to hide, the same for every sink.
pub fn spawn_writer_with(
    mut rx: TapReceiver,
    mut sinks: Vec<Box<dyn Sink>>,
    redaction: redact::Redaction,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(String::from("xmpptap-tap"))
        .spawn(move || {
            let mut stage = stage::Stage::new(redaction);
            let mut reported_drops = 0;
            while let Some(first) = rx.rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(mut event) = next {
                    let len = event.kind.payload_len();
                    match &event.kind {
                        EventKind::Stanzas { frames, .. } => {
                            deliver_run(&mut stage, &mut sinks, &event, frames);
                        }
                        _ => {
                            stage.process(&mut event);
                            deliver(&mut sinks, &event);
                        }
                    }
                    drop(event);
                    rx.queued_bytes.fetch_sub(len, Ordering::Relaxed);
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

/// Hands the stanzas of a run to every sink: the usual ones as views ([`stage::RunView::view`]), any other as
/// an event through the whole stage (after which what the run shares is looked up again: the event may have
/// changed it).
fn deliver_run(
    stage: &mut stage::Stage,
    sinks: &mut Vec<Box<dyn Sink>>,
    run: &Event,
    frames: &[event::StanzaAt],
) {
    let mut rest = frames;
    while !rest.is_empty() {
        let mut viewed = 0;
        if let Some(shared) = stage.run(run) {
            for view in rest.iter().map_while(|frame| shared.view(frame)) {
                deliver_to(sinks, |sink| sink.stanza(&view));
                viewed += 1;
            }
        }
        rest = &rest[viewed..];
        if let Some((frame, after)) = rest.split_first() {
            let mut stanza = stage.stanza(run, frame);
            stage.process(&mut stanza);
            deliver(sinks, &stanza);
            rest = after;
        }
    }
}

fn deliver(sinks: &mut Vec<Box<dyn Sink>>, event: &Event) {
    deliver_to(sinks, |sink| sink.event(event));
}

/// Hands something to every sink with `write`; a sink that fails is reported and left out.
fn deliver_to(
    sinks: &mut Vec<Box<dyn Sink>>,
    mut write: impl FnMut(&mut dyn Sink) -> io::Result<()>,
) {
    sinks.retain_mut(|sink| match write(sink.as_mut()) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, sink = %sink.name(), "cannot write; this output stops here");
            false
        }
    });
}

/// A `Write` whose bytes a test can read afterwards (the sinks' tests write through it).
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedBuf(pub(crate) Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stanza(len: usize) -> Event {
        Event::now(
            1,
            None,
            EventKind::Stanza {
                name: String::from("message"),
                ns: None,
                kind: None,
                id: None,
                from: None,
                to: None,
                xml: event::Xml(Bytes::from(vec![b'x'; len])),
            },
        )
    }

    #[test]
    fn events_over_the_byte_budget_are_dropped_and_counted() {
        let (tap, mut rx) = Tap::channel(TapOptions::default());
        let big = CHANNEL_BYTES / 4 + 1;
        for _ in 0..4 {
            tap.emit(stanza(big));
        }
        assert_eq!(tap.dropped(), 1, "the fourth would pass the budget");
        // Events without wire data still get through.
        tap.emit(Event::now(
            1,
            None,
            EventKind::StreamClosed {
                origin: event::Origin::Peer,
            },
        ));
        assert_eq!(tap.dropped(), 1);
        // Once the writer has taken some, there is room again.
        let taken = rx.rx.try_recv().expect("an event");
        rx.queued_bytes
            .fetch_sub(taken.kind.payload_len(), Ordering::Relaxed);
        tap.emit(stanza(big));
        assert_eq!(tap.dropped(), 1);
    }
}
