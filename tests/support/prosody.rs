//! Real Prosody instances for interop tests.
//!
//! [`Prosody::start`] writes a config into a fresh directory under the system temp dir (config,
//! pidfile, data, certificate, logs) and runs `prosody --config FILE` in the foreground as a child
//! process, listening on one loopback address with ephemeral C2S/S2S ports. The child is killed
//! when the handle drops; the directory is removed then, unless the thread is panicking, in which
//! case its path and the tail of Prosody's log are printed and the directory is kept (set
//! `XMPPTAP_KEEP_PROSODY=1` to keep it always).
//!
//! Name resolution: Prosody asks libunbound, which this config points at a test DNS server
//! (`unbound = { forward = "ip@port", ... }`, see `dns.rs`); `/etc/hosts` is not read.
//!
//! It does not own the DNS records (the test sets them) nor XMPP clients (`client.rs`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long [`Prosody::wait_ready`] and [`Prosody::register`] wait.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Set this environment variable to keep every instance's directory, not only failed ones.
pub const KEEP_ENV: &str = "XMPPTAP_KEEP_PROSODY";

/// Lines of Prosody's log shown in failure messages.
const LOG_TAIL_LINES: usize = 40;

/// What a test chooses about one Prosody instance; everything else is fixed by the harness.
#[derive(Debug, Clone)]
pub struct ProsodyConfig {
    /// The one virtual host, e.g. `"a.test"`.
    pub domain: String,
    /// The loopback address it listens on (see `super::addr`).
    pub addr: Ipv4Addr,
    /// libunbound's forwarder, `"ip@port"`: usually `DnsServer::unbound_forward()`.
    pub dns_forward: String,
    /// `true`: S2S requires STARTTLS (`s2s_require_encryption`); `false`: S2S is plaintext
    /// (encryption neither required nor offered). Either way `s2s_secure_auth = false`, so
    /// dialback authenticates (inside TLS when there is TLS).
    pub s2s_tls: bool,
    /// Also listen for Direct TLS S2S (`s2s_direct_tls_ports`) on an ephemeral port.
    pub s2s_direct_tls: bool,
    /// Also listen for Direct TLS C2S (XEP-0368, `c2s_direct_tls_ports`) on an ephemeral port.
    pub c2s_direct_tls: bool,
    /// Certificate and key (PEM) for the domain; `None` generates a self-signed one.
    pub certificate: Option<(String, String)>,
    /// Lua lines appended to the global section, for settings a test needs beyond these.
    pub extra_global_config: String,
}

impl ProsodyConfig {
    /// A config with the harness defaults: STARTTLS-required S2S, no Direct TLS, generated
    /// certificate, nothing extra.
    pub fn new(domain: &str, addr: Ipv4Addr, dns_forward: &str) -> ProsodyConfig {
        ProsodyConfig {
            domain: domain.to_owned(),
            addr,
            dns_forward: dns_forward.to_owned(),
            s2s_tls: true,
            s2s_direct_tls: false,
            c2s_direct_tls: false,
            certificate: None,
            extra_global_config: String::new(),
        }
    }
}

/// A running Prosody child process and its directory.
#[derive(Debug)]
pub struct Prosody {
    config: ProsodyConfig,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    c2s_port: u16,
    s2s_port: u16,
    s2s_direct_tls_port: Option<u16>,
    c2s_direct_tls_port: Option<u16>,
    child: Mutex<Child>,
}

impl Prosody {
    /// Writes the config and spawns Prosody. Returns at once: call [`Prosody::wait_ready`]
    /// before connecting. Panics (with the directory path) if the files or the process cannot be
    /// created.
    pub fn start(config: ProsodyConfig) -> Prosody {
        let dir = unique_dir(&config.domain);
        let ip = config.addr;
        let [c2s_port, s2s_port, direct_tls_port, c2s_direct_tls_port] =
            super::free_ports::<4>(ip.into());
        let s2s_direct_tls_port = config.s2s_direct_tls.then_some(direct_tls_port);
        let c2s_direct_tls_port = config.c2s_direct_tls.then_some(c2s_direct_tls_port);

        let (cert_pem, key_pem) = match &config.certificate {
            Some(pair) => pair.clone(),
            None => self_signed(&config.domain),
        };
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap_or_else(|e| panic!("create {certs:?}: {e}"));
        std::fs::create_dir_all(dir.join("data")).unwrap_or_else(|e| panic!("create data: {e}"));
        let cert_path = certs.join(format!("{}.crt", config.domain));
        let key_path = certs.join(format!("{}.key", config.domain));
        write(&cert_path, &cert_pem);
        write(&key_path, &key_pem);

        let log_path = dir.join("prosody.log");
        let config_path = dir.join("prosody.cfg.lua");
        let text = render_config(&RenderArgs {
            config: &config,
            dir: &dir,
            log_path: &log_path,
            cert_path: &cert_path,
            key_path: &key_path,
            c2s_port,
            s2s_port,
            s2s_direct_tls_port,
            c2s_direct_tls_port,
        });
        write(&config_path, &text);

        let stdout = std::fs::File::create(dir.join("stdout.log"))
            .unwrap_or_else(|e| panic!("create stdout.log in {dir:?}: {e}"));
        let stderr = stdout
            .try_clone()
            .unwrap_or_else(|e| panic!("clone stdout.log handle: {e}"));
        let child = Command::new("prosody")
            .arg("-F") // foreground; the `daemonize` option is deprecated in 0.12
            .arg("--config")
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn prosody (config {config_path:?}): {e}"));

        Prosody {
            config,
            dir,
            config_path,
            log_path,
            c2s_port,
            s2s_port,
            s2s_direct_tls_port,
            c2s_direct_tls_port,
            child: Mutex::new(child),
        }
    }

    /// Waits until the C2S and S2S ports (and the Direct TLS C2S port, when there is one)
    /// accept TCP. Panics after 10 s, or as soon as the process exits, with the tail of its log.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addrs = [self.c2s_addr(), self.s2s_addr()]
            .into_iter()
            .chain(self.c2s_direct_tls_addr());
        for addr in addrs {
            loop {
                if let Some(status) = self.exited() {
                    panic!(
                        "prosody {} exited early ({status}) while waiting for {addr}\n{}",
                        self.config.domain,
                        self.failure_context()
                    );
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "prosody {} not accepting on {addr} after {READY_TIMEOUT:?}\n{}",
                        self.config.domain,
                        self.failure_context()
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// Creates the account `user@domain` with `prosodyctl register`. Works before or after
    /// start (the internal storage is read per login). Panics with prosodyctl's output on error.
    pub async fn register(&self, user: &str, password: &str) {
        let mut command = tokio::process::Command::new("prosodyctl");
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(["register", user, &self.config.domain, password])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(READY_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("prosodyctl register {user}@{} hung", self.config.domain))
            .unwrap_or_else(|e| panic!("run prosodyctl: {e}"));
        if !output.status.success() {
            panic!(
                "prosodyctl register {user}@{} failed ({}):\n{}{}",
                self.config.domain,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// The virtual host, e.g. `"a.test"`.
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// The loopback address it listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.config.addr
    }

    /// Where clients connect.
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.config.addr, self.c2s_port))
    }

    /// Where other servers connect (STARTTLS or plaintext).
    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::from((self.config.addr, self.s2s_port))
    }

    /// The C2S port.
    pub fn c2s_port(&self) -> u16 {
        self.c2s_port
    }

    /// The S2S port.
    pub fn s2s_port(&self) -> u16 {
        self.s2s_port
    }

    /// The Direct TLS S2S port, when `s2s_direct_tls` was asked for.
    pub fn s2s_direct_tls_port(&self) -> Option<u16> {
        self.s2s_direct_tls_port
    }

    /// Where clients connect with Direct TLS, when `c2s_direct_tls` was asked for.
    pub fn c2s_direct_tls_addr(&self) -> Option<SocketAddr> {
        self.c2s_direct_tls_port
            .map(|port| SocketAddr::from((self.config.addr, port)))
    }

    /// The instance's directory (config, log, data, certs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Prosody's whole log so far (debug level), or a note saying why it cannot be read.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read {:?}: {e})", self.log_path))
    }

    /// The last `lines` lines of Prosody's log (debug level).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Directory, log tail and console output, for panic messages.
    pub fn failure_context(&self) -> String {
        let console = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        let mut out = format!(
            "--- prosody {} (dir {:?}) last {LOG_TAIL_LINES} log lines:\n{}",
            self.config.domain,
            self.dir,
            self.log_tail(LOG_TAIL_LINES)
        );
        if !console.trim().is_empty() {
            let _ = write!(out, "\n--- console output:\n{console}");
        }
        out
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // Errors here mean the process is already gone, which is what we want.
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!(
                "{}\n--- kept {:?} for debugging",
                self.failure_context(),
                self.dir
            );
        } else if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("--- {KEEP_ENV} set: kept {:?}", self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct RenderArgs<'a> {
    config: &'a ProsodyConfig,
    dir: &'a Path,
    log_path: &'a Path,
    cert_path: &'a Path,
    key_path: &'a Path,
    c2s_port: u16,
    s2s_port: u16,
    s2s_direct_tls_port: Option<u16>,
    c2s_direct_tls_port: Option<u16>,
}

fn render_config(args: &RenderArgs<'_>) -> String {
    let c = args.config;
    let direct_tls = args
        .s2s_direct_tls_port
        .map(|p| p.to_string())
        .unwrap_or_default();
    let c2s_direct_tls = args
        .c2s_direct_tls_port
        .map(|p| p.to_string())
        .unwrap_or_default();
    format!(
        r#"-- Written by xmpptap's test harness (tests/support/prosody.rs).
run_as_root = true
pidfile = {pidfile}
data_path = {data}
log = {{ debug = {log} }}

interfaces = {{ {ip} }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
c2s_direct_tls_ports = {{ {c2s_direct_tls} }}
s2s_direct_tls_ports = {{ {direct_tls} }}
use_ipv6 = false
network_settings = {{ nagle = false }}

-- libunbound: only the test's DNS server; ".test" is an RFC 6761 zone it would answer
-- NXDOMAIN itself unless made transparent.
unbound = {{
  resolvconf = false;
  hoststxt = false;
  forward = {forward};
  options = {{ ["local-zone:"] = "test. transparent" }};
}}

modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping" }}
modules_disabled = {{ "offline" }}

c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = {s2s_tls}
s2s_allow_encryption = {s2s_tls}
s2s_secure_auth = false
s2s_timeout = 30

certificates = {certs}
ssl = {{ certificate = {cert}; key = {key} }}

{extra}

VirtualHost {domain}
"#,
        pidfile = lua_str(args.dir.join("prosody.pid")),
        data = lua_str(args.dir.join("data")),
        log = lua_str(args.log_path),
        ip = lua_str(c.addr.to_string()),
        c2s = args.c2s_port,
        s2s = args.s2s_port,
        forward = lua_str(&c.dns_forward),
        s2s_tls = c.s2s_tls,
        certs = lua_str(args.dir.join("certs")),
        cert = lua_str(args.cert_path),
        key = lua_str(args.key_path),
        extra = c.extra_global_config,
        domain = lua_str(&c.domain),
    )
}

/// A Lua string literal (long-bracket form, so paths need no escaping).
fn lua_str(value: impl AsRef<std::ffi::OsStr>) -> String {
    let value = value.as_ref().to_string_lossy();
    assert!(
        !value.contains("]==]"),
        "unexpected text in config value {value:?}"
    );
    format!("[==[{value}]==]")
}

fn self_signed(domain: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()])
        .unwrap_or_else(|e| panic!("generate a certificate for {domain}: {e}"));
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn unique_dir(domain: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "xmpptap-prosody-{domain}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
    dir
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}
