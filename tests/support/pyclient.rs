//! A real XMPP client for interop tests: `tests/support/xmpp_client.py` (slixmpp) run as a child
//! process, reporting what happened as JSON lines.
//!
//! [`ensure_pyenv`] prepares the Python environment once per test binary (`tests/support/pyenv.sh`:
//! a virtualenv at `target/pyenv` with pinned slixmpp from PyPI). [`ClientArgs`] builds the
//! script's flags; [`PyClient::run`] runs it to the end, [`PyClient::spawn`] starts it so a test
//! can wait for an event (e.g. `"ready"` of a receiver) before starting another client.
//!
//! Every wait is bounded (the script's own `--timeout`, plus [`KILL_GRACE`] after which the
//! process is killed) and panics with the client's JSON lines and the tail of its stderr (slixmpp's
//! debug log, every stanza, when [`ClientArgs::debug`] is on, the default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The client script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/xmpp_client.py");

/// The script that prepares the Python environment.
pub const PYENV_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pyenv.sh");

/// The environment variable that carries the password to the script (`--password-env`).
const PASSWORD_ENV: &str = "XMPPTAP_CLIENT_PASSWORD";

/// How long after its own `--timeout` the script may take before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// Lines of the client's stderr shown in panic messages.
const STDERR_TAIL_LINES: usize = 80;

/// The virtualenv's python, after running `pyenv.sh` once per test binary (creates the venv and
/// installs slixmpp on first use, ~10 s; instant afterwards). Panics with the script's output if it
/// fails.
pub fn ensure_pyenv() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let started = Instant::now();
            let output = std::process::Command::new("bash")
                .arg(PYENV_SCRIPT)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("run {PYENV_SCRIPT}: {e}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                panic!(
                    "{PYENV_SCRIPT} failed ({}):\n{stdout}{stderr}",
                    output.status
                );
            }
            let python = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
            if !python.is_file() {
                panic!("{PYENV_SCRIPT} printed no usable python path:\n{stdout}{stderr}");
            }
            if !stderr.trim().is_empty() {
                eprintln!("{}", stderr.trim_end());
            }
            eprintln!(
                "python environment ready in {:?}: {python:?}",
                started.elapsed()
            );
            python
        })
        .clone()
}

/// How the client reaches the server (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain TCP, then STARTTLS (required by the client).
    StartTls,
    /// TLS from the first byte (XEP-0368), ALPN `xmpp-client`, SNI = the JID's domain.
    DirectTls,
    /// No TLS at all.
    Plaintext,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::StartTls => "starttls",
            Mode::DirectTls => "direct-tls",
            Mode::Plaintext => "plaintext",
        }
    }
}

/// Which server certificates the client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only certificates from this CA (PEM file), naming the JID's domain (`--ca`).
    Ca(PathBuf),
    /// Any certificate (`--insecure`).
    Insecure,
    /// The system roots (no flag).
    System,
}

/// One run of the client: who logs in where, and what it does then. Build with [`ClientArgs::new`]
/// and the chained setters.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    /// Bare JID, e.g. `alice@a.test`; also names the client in panic messages.
    pub jid: String,
    pub password: String,
    /// Where to connect (no SRV lookup).
    pub addr: SocketAddr,
    pub mode: Mode,
    pub trust: Trust,
    /// Forced SASL mechanism; `None` lets slixmpp pick the strongest offered.
    pub mechanism: Option<String>,
    pub roster: bool,
    pub presence: bool,
    /// `(to, body)` chat messages, sent after "ready".
    pub send: Vec<(String, String)>,
    /// Bare JIDs each of which must send this client a message before it ends.
    pub expect_message_from: Vec<String>,
    /// The script's `--timeout` for the whole run.
    pub timeout: Duration,
    /// slixmpp's debug log (every stanza) on stderr, shown in panic messages.
    pub debug: bool,
    /// More flags, appended as they are.
    pub extra: Vec<String>,
}

impl ClientArgs {
    /// STARTTLS, system roots, slixmpp's choice of mechanism, nothing but login, presence and a
    /// clean disconnect; 20 s timeout; debug log on.
    pub fn new(jid: &str, password: &str, addr: SocketAddr) -> ClientArgs {
        ClientArgs {
            jid: jid.to_owned(),
            password: password.to_owned(),
            addr,
            mode: Mode::StartTls,
            trust: Trust::System,
            mechanism: None,
            roster: false,
            presence: true,
            send: Vec::new(),
            expect_message_from: Vec::new(),
            timeout: Duration::from_secs(20),
            debug: true,
            extra: Vec::new(),
        }
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Trust only the CA in this PEM file.
    pub fn ca(mut self, ca_pem_file: impl AsRef<Path>) -> Self {
        self.trust = Trust::Ca(ca_pem_file.as_ref().to_owned());
        self
    }

    pub fn insecure(mut self) -> Self {
        self.trust = Trust::Insecure;
        self
    }

    pub fn mechanism(mut self, mechanism: &str) -> Self {
        self.mechanism = Some(mechanism.to_owned());
        self
    }

    pub fn roster(mut self) -> Self {
        self.roster = true;
        self
    }

    pub fn no_presence(mut self) -> Self {
        self.presence = false;
        self
    }

    pub fn send(mut self, to: &str, body: &str) -> Self {
        self.send.push((to.to_owned(), body.to_owned()));
        self
    }

    pub fn expect_message_from(mut self, jid: &str) -> Self {
        self.expect_message_from.push(jid.to_owned());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// The script's command line (without the interpreter and script path).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--jid={}", self.jid),
            format!("--password-env={PASSWORD_ENV}"),
            format!("--host={}", self.addr.ip()),
            format!("--port={}", self.addr.port()),
            format!("--mode={}", self.mode.flag()),
            format!("--timeout={}", self.timeout.as_secs_f64()),
        ];
        match &self.trust {
            Trust::Ca(path) => args.push(format!("--ca={}", path.display())),
            Trust::Insecure => args.push("--insecure".into()),
            Trust::System => {}
        }
        if let Some(mechanism) = &self.mechanism {
            args.push(format!("--mechanism={mechanism}"));
        }
        if self.roster {
            args.push("--roster".into());
        }
        if !self.presence {
            args.push("--no-presence".into());
        }
        for (to, body) in &self.send {
            args.extend(["--send".into(), to.clone(), body.clone()]);
        }
        for jid in &self.expect_message_from {
            args.push(format!("--expect-message-from={jid}"));
        }
        if self.debug {
            args.push("--debug".into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// A finished client run.
#[derive(Debug)]
pub struct Outcome {
    /// Who ran (the JID) and the command line, for messages.
    pub name: String,
    /// Every stdout line, parsed (a line that is not JSON becomes `{"event": "non_json", "line": ...}`).
    pub lines: Vec<Value>,
    pub status: ExitStatus,
    /// The whole stderr (slixmpp's log).
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (with [`Outcome::context`]) unless the run exited 0 with a `done` line.
    pub fn assert_success(&self) -> &Self {
        if !self.success() || self.events("done").next().is_none() {
            panic!("client {} did not succeed\n{}", self.name, self.context());
        }
        self
    }

    /// Panics unless the run failed with an `error` line; returns that line.
    pub fn assert_failure(&self) -> &Value {
        if self.success() {
            panic!(
                "client {} succeeded but was expected to fail\n{}",
                self.name,
                self.context()
            );
        }
        self.event("error")
    }

    /// The lines with this `event`, in order.
    pub fn events<'a>(&'a self, event: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let event = event.to_owned();
        self.lines
            .iter()
            .filter(move |line| line["event"] == *event)
    }

    /// The first line with this `event`; panics with the context when there is none.
    pub fn event(&self, event: &str) -> &Value {
        self.events(event).next().unwrap_or_else(|| {
            panic!(
                "client {} reported no {event:?} event\n{}",
                self.name,
                self.context()
            )
        })
    }

    /// Exit status, JSON lines and the tail of stderr, for panic messages.
    pub fn context(&self) -> String {
        context(&self.name, Some(self.status), &self.lines, &self.stderr)
    }
}

/// A running client (see [`PyClient::spawn`]). Killed if dropped before [`PyClient::finish`].
#[derive(Debug)]
pub struct PyClient {
    name: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stdout_closed: bool,
    lines: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    deadline: tokio::time::Instant,
}

impl PyClient {
    /// Runs the client to its end. Panics only if it cannot be started or outlives its timeout
    /// plus [`KILL_GRACE`]; check the outcome with [`Outcome::assert_success`] and friends.
    pub async fn run(args: &ClientArgs) -> Outcome {
        PyClient::spawn(args).finish().await
    }

    /// Starts the client (preparing the Python environment first if this binary has not yet).
    pub fn spawn(args: &ClientArgs) -> PyClient {
        let python = ensure_pyenv();
        let argv = args.to_args();
        let name = format!("{} ({})", args.jid, argv.join(" "));
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(SCRIPT)
            .args(&argv)
            .env(PASSWORD_ENV, &args.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {python:?} {SCRIPT} for {name}: {e}"));
        let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        let stdout = stdout.unwrap_or_else(|| panic!("no stdout pipe for {name}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_task = child.stderr.take().map(|mut pipe| {
            let sink = Arc::clone(&stderr);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            })
        });
        PyClient {
            name,
            child,
            stdout,
            stdout_closed: false,
            lines: Vec::new(),
            stderr,
            stderr_task,
            deadline: tokio::time::Instant::now() + args.timeout + KILL_GRACE,
        }
    }

    /// The lines reported so far.
    pub fn lines(&self) -> &[Value] {
        &self.lines
    }

    /// Waits for the first line with this `event` (returning at once if it already came). Panics
    /// if the client reports `error`, ends without it, or outlives its deadline.
    pub async fn wait_event(&mut self, event: &str) -> Value {
        let mut seen = 0;
        loop {
            for line in &self.lines[seen..] {
                if line["event"] == event {
                    return line.clone();
                }
                if line["event"] == "error" {
                    panic!(
                        "client {} failed while a test waited for {event:?}\n{}",
                        self.name,
                        self.context(None)
                    );
                }
            }
            seen = self.lines.len();
            if self.stdout_closed {
                let status = self.child.wait().await.ok();
                self.join_stderr().await;
                panic!(
                    "client {} ended without {event:?}\n{}",
                    self.name,
                    self.context(status)
                );
            }
            match tokio::time::timeout_at(self.deadline, self.stdout.next_line()).await {
                Ok(line) => self.take_line(line),
                Err(_) => {
                    let _ = self.child.start_kill();
                    panic!(
                        "client {} still had not reported {event:?} at its deadline; killed\n{}",
                        self.name,
                        self.context(None)
                    );
                }
            }
        }
    }

    /// Reads the remaining lines and waits for the process to exit.
    pub async fn finish(mut self) -> Outcome {
        while !self.stdout_closed {
            match tokio::time::timeout_at(self.deadline, self.stdout.next_line()).await {
                Ok(line) => self.take_line(line),
                Err(_) => {
                    let _ = self.child.start_kill();
                    panic!(
                        "client {} did not finish by its deadline; killed\n{}",
                        self.name,
                        self.context(None)
                    );
                }
            }
        }
        let status = match tokio::time::timeout_at(self.deadline, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("wait for client {}: {e}", self.name),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "client {} closed stdout but did not exit; killed\n{}",
                    self.name,
                    self.context(None)
                );
            }
        };
        self.join_stderr().await;
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Outcome {
            name: self.name.clone(),
            lines: std::mem::take(&mut self.lines),
            status,
            stderr,
        }
    }

    fn take_line(&mut self, line: std::io::Result<Option<String>>) {
        match line {
            Ok(Some(text)) => {
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| serde_json::json!({"event": "non_json", "line": text}));
                self.lines.push(value);
            }
            Ok(None) => self.stdout_closed = true,
            Err(e) => {
                self.lines.push(
                    serde_json::json!({"event": "non_json", "line": format!("(read error: {e})")}),
                );
                self.stdout_closed = true;
            }
        }
    }

    async fn join_stderr(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            // The pipe closes when the process exits; bounded anyway.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn context(&self, status: Option<ExitStatus>) -> String {
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        context(&self.name, status, &self.lines, &stderr)
    }
}

fn context(name: &str, status: Option<ExitStatus>, lines: &[Value], stderr: &str) -> String {
    let status = status.map_or_else(|| "still running".to_owned(), |s| s.to_string());
    let mut out = format!("--- client {name}: {status}; its lines:\n");
    for line in lines {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let all: Vec<&str> = stderr.lines().collect();
    let tail = &all[all.len().saturating_sub(STDERR_TAIL_LINES)..];
    out.push_str(&format!(
        "--- last {} of {} stderr lines:\n{}",
        tail.len(),
        all.len(),
        tail.join("\n")
    ));
    out
}
