//! The TLS key log: the secrets of every TLS session on both legs, in the NSS key log format that
//! `SSLKEYLOGFILE` uses, so that Wireshark or tshark can decrypt a raw capture of the real encrypted traffic.
//!
//! [`TlsKeyLog`] is the [`rustls::KeyLog`] that [`crate::tls::TlsContext::with_key_log`] puts into every server
//! configuration (initiator leg) and client configuration (receiver leg). rustls calls it during each
//! handshake with one secret at a time; each becomes one line,
//!
//! ```text
//! CLIENT_HANDSHAKE_TRAFFIC_SECRET <client random, hex> <secret, hex>
//! ```
//!
//! appended to the `--keylog` file (created with mode 0600: whoever reads it can read every intercepted
//! stream) and handed to the tap as [`EventKind::TlsSecrets`] when a capture sink records raw bytes
//! ([`Tap::wants_raw`]), so that it can embed the secrets in its own file.
//!
//! This module does not decide which configurations log (the TLS context does) and does not write captures.

use super::{Event, EventKind, Tap};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Mode of a key log file xmpptap creates, or tightens an existing one to: owner read/write only.
pub const KEY_LOG_MODE: u32 = 0o600;

/// Writes TLS session secrets to the key log file and/or the tap.
pub struct TlsKeyLog {
    /// The `--keylog` file and its path (for messages).
    file: Option<(PathBuf, Mutex<File>)>,
    /// The tap, when a capture sink wants the secrets.
    tap: Option<Tap>,
    /// Set after the first failed write, so the error is reported once rather than per secret.
    failed: AtomicBool,
}

impl fmt::Debug for TlsKeyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsKeyLog")
            .field("file", &self.file.as_ref().map(|(path, _)| path))
            .field("tap", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsKeyLog {
    /// A key log writing to `path` (if given; created with mode 0600, appended to if it exists) and to `tap`
    /// if it [wants raw bytes](Tap::wants_raw). `None` when neither wants the secrets: then TLS sessions keep
    /// rustls's default of logging nothing.
    pub fn open(path: Option<&Path>, tap: &Tap) -> io::Result<Option<Self>> {
        let file = match path {
            Some(path) => Some((path.to_owned(), Mutex::new(open_private(path)?))),
            None => None,
        };
        let tap = tap.wants_raw().then(|| tap.clone());
        if file.is_none() && tap.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsKeyLog {
            file,
            tap,
            failed: AtomicBool::new(false),
        }))
    }

    /// The path of the key log file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }
}

impl rustls::KeyLog for TlsKeyLog {
    /// Called by rustls on the connection's task. The file write is a small blocking write (one line, no
    /// buffering, so every line is on disk as soon as its handshake step is done); a failure is reported once
    /// and never affects the TLS session.
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let line = nss_line(label, client_random, secret);
        if let Some((path, file)) = &self.file {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            // A writer that panicked cannot have left a half-written line behind a later one: every line is
            // one write_all call. The file handle itself stays usable.
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = file.write_all(&bytes) {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, path = %path.display(), "cannot write the TLS key log");
                }
            }
        }
        if let Some(tap) = &self.tap {
            tap.emit(Event::now(0, None, EventKind::TlsSecrets { line }));
        }
    }
}

/// One NSS key log line, without its newline: `LABEL <client_random hex> <secret hex>`.
pub fn nss_line(label: &str, client_random: &[u8], secret: &[u8]) -> String {
    let mut line =
        String::with_capacity(label.len() + 2 + 2 * (client_random.len() + secret.len()));
    line.push_str(label);
    for part in [client_random, secret] {
        line.push(' ');
        for byte in part {
            // Writing to a String cannot fail.
            let _ = write!(line, "{byte:02x}");
        }
    }
    line
}

/// Opens `path` for appending, creating it with mode 0600; an existing file readable by others is tightened
/// to 0600 (and refused if that is not possible).
fn open_private(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(KEY_LOG_MODE);
        let file = options.open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(KEY_LOG_MODE))?;
            tracing::warn!(
                path = %path.display(),
                "the key log file was readable by others; its mode is now 0600"
            );
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::TapOptions;
    use crate::tls::{Ca, TlsContext, UpstreamTrust};
    use rustls::KeyLog as _;
    use std::sync::Arc;

    /// A fresh directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("xmpptap-keylog-{}-{label}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn lines_are_in_nss_key_log_format() {
        assert_eq!(
            nss_line("CLIENT_RANDOM", &[0x00, 0xab, 0x10], &[0xff, 0x01]),
            "CLIENT_RANDOM 00ab10 ff01"
        );
        let line = nss_line("CLIENT_TRAFFIC_SECRET_0", &[7; 32], &[0xc3; 48]);
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[0], "CLIENT_TRAFFIC_SECRET_0");
        assert_eq!(fields[1], "07".repeat(32));
        assert_eq!(fields[2], "c3".repeat(48));
    }

    #[test]
    fn nothing_is_built_without_a_file_or_a_raw_capture() {
        assert!(TlsKeyLog::open(None, &Tap::disabled())
            .expect("open")
            .is_none());
        let (tap, _rx) = Tap::channel(TapOptions {
            data: true,
            raw: false,
        });
        assert!(TlsKeyLog::open(None, &tap).expect("open").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_appended_and_flushed_per_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Dir::new("mode");
        let path = dir.0.join("keys.log");
        std::fs::write(&path, "# earlier run\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let log = TlsKeyLog::open(Some(&path), &Tap::disabled())
            .expect("open")
            .expect("a file was asked for");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "an existing file is tightened");
        log.log("CLIENT_RANDOM", &[1, 2], &[3, 4]);
        // No drop, no flush call: the line is on disk already.
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "# earlier run\nCLIENT_RANDOM 0102 0304\n"
        );

        let fresh = dir.0.join("fresh.log");
        let _log = TlsKeyLog::open(Some(&fresh), &Tap::disabled()).expect("open");
        assert_eq!(mode(&fresh), 0o600, "a new file is created 0600");
    }

    #[test]
    fn secrets_go_to_the_tap_when_raw_bytes_are_captured() {
        let (tap, mut rx) = Tap::channel(TapOptions {
            data: false,
            raw: true,
        });
        let log = TlsKeyLog::open(None, &tap)
            .expect("open")
            .expect("a raw capture wants secrets");
        log.log("EXPORTER_SECRET", &[0xaa], &[0xbb]);
        let event = rx.rx.try_recv().expect("an event");
        match event.kind {
            EventKind::TlsSecrets { line } => assert_eq!(line, "EXPORTER_SECRET aa bb"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Both legs log: a handshake between an acceptor (initiator leg) and a connector (receiver leg) of the same
    /// context writes every TLS 1.3 secret twice, once from each end, for the same client random.
    #[tokio::test]
    async fn both_legs_log_their_secrets() {
        let dir = Dir::new("legs");
        let ca = Arc::new(Ca::load_or_create(&dir.0.join("ca")).expect("CA"));
        let path = dir.0.join("keys.log");
        let log = TlsKeyLog::open(Some(&path), &Tap::disabled())
            .expect("open")
            .expect("file");
        let ctx = TlsContext::new(ca, &UpstreamTrust::DangerousAcceptAny)
            .expect("context")
            .with_key_log(Arc::new(log));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let connector = ctx.connector(b"xmpp-server");
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("b.test").expect("name");
        let (server, client) = tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        );
        server.expect("server handshake");
        client.expect("client handshake");

        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        for label in [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET",
        ] {
            let found: Vec<&Vec<&str>> = lines.iter().filter(|l| l[0] == label).collect();
            assert_eq!(found.len(), 2, "{label} from client and server:\n{text}");
            assert_eq!(
                found[0][1..],
                found[1][1..],
                "both ends derive the same secret"
            );
            assert_eq!(found[0][1].len(), 64, "32-byte client random");
        }
    }
}
