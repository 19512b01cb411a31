//! Runs the real `xmpptap` binary as a child process, the way an operator would.
//!
//! [`Xmpptap::start`] passes the given arguments plus `--log <dir>/transcript.jsonl --ca-dir <dir>/ca`, waits
//! for the "listening on ADDR" line on stderr and returns the bound addresses. The child is killed on Drop;
//! its stderr is kept and printed if the test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running xmpptap.
pub struct Xmpptap {
    child: Child,
    dir: PathBuf,
    /// The listening addresses with their kind (`s2s`, `c2s`, `s2s-tls`, `c2s-tls`), as xmpptap reported
    /// them.
    pub listening: Vec<(SocketAddr, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Xmpptap {
    /// Starts `xmpptap proxy ARGS...` with a fresh working directory and waits until it listens.
    pub async fn start(args: &[String]) -> Xmpptap {
        Self::start_with_env(args, &[]).await
    }

    /// [`Xmpptap::start`] with extra environment variables for the child.
    pub async fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Xmpptap {
        let dir = std::env::temp_dir().join(format!(
            "xmpptap-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut child = Command::new(binary())
            .arg("proxy")
            .args(args)
            .arg("--log")
            .arg(dir.join("transcript.jsonl"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .env("RUST_LOG", "xmpptap=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start xmpptap: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let kept = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // "listening on 127.0.0.1:5269 (s2s)"
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let mut words = rest.split_whitespace();
                    let addr = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
                    let kind = words
                        .next()
                        .map(|k| k.trim_matches(|c| c == '(' || c == ')'));
                    if let (Some(addr), Some(kind)) = (addr, kind) {
                        let _ = tx.send((addr, kind.to_owned()));
                    }
                }
                kept.lock().expect("stderr lock").push(line);
            }
        });
        let mut tap = Xmpptap {
            child,
            dir,
            listening: Vec::new(),
            stderr: lines,
        };
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(listener)) => tap.listening.push(listener),
            _ => panic!("xmpptap did not start listening:\n{}", tap.stderr_text()),
        }
        // The other listeners are announced right after the first.
        while let Ok(Some(listener)) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            tap.listening.push(listener);
        }
        tap
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.listening[0].0
    }

    /// The address of the listener of `kind` (`s2s`, `c2s`, `s2s-tls`, `c2s-tls`).
    pub fn listener(&self, kind: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(_, k)| k == kind)
            .map(|(addr, _)| *addr)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.listening))
    }

    /// xmpptap's CA certificate (PEM file), for clients that must trust it.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca").join("ca.pem")
    }

    /// Where this instance's files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The child's process id (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A memory figure of the child from `/proc/PID/status`, in KiB: `VmRSS` (resident now) or `VmHWM` (peak
    /// resident). Linux only; panics if the field cannot be read.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("xmpptap exited:\n{}", self.stderr_text()));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        // "VmRSS:\t    9876 kB"
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
    }

    /// Everything xmpptap wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// The transcript so far, one JSON value per line. A last line still being written is left out.
    pub fn transcript(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("transcript.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("transcript line {line:?}: {e}"))
            })
            .collect()
    }

    /// Waits until some transcript event satisfies `pred` and returns it (the writer flushes shortly after
    /// events stop arriving).
    pub async fn wait_event(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.transcript().into_iter().find(|e| pred(e)) {
                return event;
            }
            if Instant::now() > deadline {
                panic!(
                    "no transcript event {what}; transcript:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(self.dir.join("transcript.jsonl")).unwrap_or_default(),
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit, returning its status code.
    pub async fn stop(mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => None,
        }
    }
}

/// The binary under test: Cargo's `CARGO_BIN_EXE_xmpptap` in integration tests; elsewhere (examples, which
/// Cargo does not give it) the `XMPPTAP_BIN` environment variable at run time.
fn binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_xmpptap") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("XMPPTAP_BIN").map(PathBuf::from).unwrap_or_else(|| {
            panic!("XMPPTAP_BIN is not set: point it at the xmpptap binary (e.g. target/debug/xmpptap)")
        }),
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for Xmpptap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- xmpptap stderr ({}) ---\n{}",
                self.dir.display(),
                self.stderr_text()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for the `closed` event of connection `conn` and returns the whole transcript of that connection.
pub async fn finished(tap: &Xmpptap, conn: u64) -> Vec<serde_json::Value> {
    tap.wait_event(&format!("closed for conn {conn}"), |e| {
        e["event"] == "closed" && e["conn"] == conn
    })
    .await;
    tap.transcript()
        .into_iter()
        .filter(|e| e["conn"] == conn)
        .collect()
}

/// Waits until the whole transcript satisfies `pred`, and returns it.
pub async fn wait_transcript(
    tap: &Xmpptap,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + super::fake::WAIT;
    loop {
        let events = tap.transcript();
        if pred(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "transcript never showed {what}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events named `name`.
pub fn named<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// The first event named `name` that satisfies `pred`; panics with the transcript if there is none.
pub fn one<'a>(
    events: &'a [serde_json::Value],
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == name && pred(e))
        .unwrap_or_else(|| panic!("no matching {name} event in {events:#?}"))
}

/// The `closed` record of a connection's transcript.
pub fn closed(events: &[serde_json::Value]) -> &serde_json::Value {
    one(events, "closed", |_| true)
}

/// The usual record of an error xmpptap answered: `protocol_error` blaming `side` with `condition`,
/// xmpptap's own `stream_error` with that condition toward `side`, and `closed` by `side`.
pub fn assert_blamed(events: &[serde_json::Value], side: &str, condition: &str) {
    one(events, "protocol_error", |e| {
        e["side"] == side && e["condition"] == condition
    });
    let toward = if side == "initiator" { "down" } else { "up" };
    one(events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["condition"] == condition && e["dir"] == toward
    });
    assert_eq!(closed(events)["by"], side, "{events:#?}");
}
