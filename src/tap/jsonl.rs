//! The JSON Lines transcript: one object per event and line. [`EventKind::Data`] and [`EventKind::RawData`]
//! events (leg bytes for captures) are not written: every byte they carry is already in the frame events, or
//! is the encrypted form of it. [`EventKind::TlsSecrets`] are not written either: the transcript is meant to be
//! shared, the secrets only with `--keylog`.

use super::{Event, EventKind, Sink};
use std::io::{self, BufWriter, Write};

/// Writes events as JSON Lines to a file or stdout.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("name", &self.name)
            .finish()
    }
}

impl JsonlSink {
    /// A sink writing to `out`; `name` says where, for error messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> Self {
        JsonlSink {
            out: BufWriter::with_capacity(64 * 1024, out),
            name,
        }
    }
}

impl Sink for JsonlSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        if matches!(
            event.kind,
            EventKind::Data { .. } | EventKind::RawData { .. } | EventKind::TlsSecrets { .. }
        ) {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, event).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn name(&self) -> String {
        format!("transcript {}", self.name)
    }
}
