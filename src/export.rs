//! `xmpptap export`: a transcript made shareable, and captures built from it after the fact.
//!
//! Redaction is on by default here (every secret [`Redaction::redact`] covers; `--redact-bodies` adds message
//! bodies; `--keep-secrets` copies the records as they are). The same rules as the proxy's `--redact` apply
//! ([`crate::tap::stage::RecordRedactor`]): `xml` and `bytes` keep their length, records with something masked
//! get `"redacted": true`, and everything else (field order included) is kept. A line that is not a JSON object
//! cannot be checked for secrets, so it is left out (and counted on stderr). `--pcap` writes the capture from
//! the redacted records, so a shared capture holds no more than the shared transcript.

use crate::cli::ExportArgs;
use crate::tap::redact::Redaction;
use crate::tap::stage::RecordRedactor;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why `xmpptap export` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The transcript could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What an export did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Records written.
    pub records: usize,
    /// Records with something masked.
    pub redacted: usize,
    /// Lines left out because they are not JSON objects.
    pub skipped: usize,
    /// Packets written to the pcap, if one was asked for.
    pub packets: Option<usize>,
}

/// The redaction `xmpptap export` applies for its flags.
pub fn redaction(args: &ExportArgs) -> Redaction {
    if args.keep_secrets {
        Redaction::log_secrets()
    } else if args.redact_bodies {
        Redaction::redact().with_bodies()
    } else {
        Redaction::redact()
    }
}

/// Runs `xmpptap export`.
pub fn run(args: &ExportArgs) -> Result<Exported, ExportError> {
    let read_error = |source| ExportError::Read {
        path: args.file.clone(),
        source,
    };
    let input: Box<dyn BufRead> = if args.file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(File::open(&args.file).map_err(read_error)?))
    };
    let mut redactor = RecordRedactor::new(redaction(args));
    let mut records: Vec<Value> = Vec::new();
    let mut report = Exported::default();
    for line in input.lines() {
        let line = line.map_err(read_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(mut record) = serde_json::from_str::<Map<String, Value>>(&line) else {
            report.skipped += 1;
            continue;
        };
        if redactor.record(&mut record) {
            report.redacted += 1;
        }
        records.push(Value::Object(record));
    }
    report.records = records.len();

    // The transcript goes to -o, or to stdout when nothing else was asked for.
    let transcript = match (&args.output, &args.pcap) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(PathBuf::from("-")),
        (None, Some(_)) => None,
    };
    if let Some(path) = transcript {
        write_to(&path, |out| {
            for record in &records {
                serde_json::to_writer(&mut *out, record).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
    }
    if let Some(path) = &args.pcap {
        let mut packets = 0;
        write_to(path, |out| {
            packets = crate::tap::pcap::pcap_from_transcript(&records, out)?;
            Ok(())
        })?;
        report.packets = Some(packets);
    }
    Ok(report)
}

/// Writes to a file (created or truncated) or, for `-`, stdout.
fn write_to(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), ExportError> {
    let error = |source| ExportError::Write {
        path: path.to_owned(),
        source,
    };
    let out: Box<dyn Write> = if path == Path::new("-") {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(path).map_err(error)?)
    };
    let mut out = BufWriter::new(out);
    write(&mut out).map_err(error)?;
    out.flush().map_err(error)
}
