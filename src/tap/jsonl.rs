//! The JSON Lines transcript writer: one object per line, drained from the tap channel by a single task.
//!
//! It buffers writes and flushes whenever the channel runs empty, so `tail -f` sees events as they happen while
//! a busy proxy still writes in large batches. It never blocks the relay: see [`super::CHANNEL_CAPACITY`].

use super::{Event, EventKind, TapReceiver};
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

/// Drains `rx` into `out` until every [`super::Tap`] is dropped. Reports dropped events as `tap_dropped`
/// records (conn 0) as soon as the writer notices them.
pub async fn write_transcript<W: AsyncWrite + Unpin>(
    mut rx: TapReceiver,
    out: W,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    let mut reported_drops = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(event) = next {
            write_event(&mut out, &mut line, &event).await?;
            next = rx.try_recv();
        }
        let dropped = rx.dropped();
        if dropped > reported_drops {
            let count = dropped - reported_drops;
            reported_drops = dropped;
            tracing::warn!(count, "transcript writer fell behind; events dropped");
            let event = Event::now(0, None, EventKind::TapDropped { count });
            write_event(&mut out, &mut line, &event).await?;
        }
        out.flush().await?;
    }
    out.flush().await
}

async fn write_event<W: AsyncWrite + Unpin>(
    out: &mut W,
    line: &mut Vec<u8>,
    event: &Event,
) -> io::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, event).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(line).await
}
