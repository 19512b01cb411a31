//! Listeners and the accept loop: `xmpptap proxy` from its validated config to serving connections.
//!
//! [`run`] builds the shared handles once (CA, TLS configurations, router, transcript tap, connection counts),
//! binds every listener, and spawns one task per accepted connection inside a span carrying its id and peer. A
//! failed accept backs off and continues; a failed session never touches the listener. Connections over
//! `--max-connections` are still accepted, to be refused by their session without being read. On shutdown it
//! stops accepting, lets sessions say `<system-shutdown/>`, and waits for them briefly.

use crate::config::{Listener, ProxyConfig};
use crate::session::admission::Admission;
use crate::session::{self, Accepted, Context};
use crate::tap::keylog::TlsKeyLog;
use crate::tap::{self, Tap, TapOptions};
use crate::tls::{ca::Ca, TlsContext};
use crate::upstream::route::{Router, Service};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long sessions get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why `xmpptap proxy` could not start. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another XMPP server or xmpptap using it? choose another --s2s-listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The CA could not be loaded or created.
    #[error("CA: {0}")]
    Ca(#[from] crate::tls::ca::CaError),
    /// TLS configuration failed (e.g. an unreadable --upstream-ca).
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The DNS resolver could not be set up.
    #[error("routing: {0}")]
    Route(#[from] crate::upstream::route::RouteError),
    /// The transcript file could not be opened.
    #[error("cannot open transcript {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS key log file (`--keylog`) could not be opened or made private.
    #[error("cannot open key log {path}: {source}")]
    KeyLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The rules file could not be read or parsed.
    #[error("rules: {0}")]
    Rules(String),
    /// The control API's address could not be bound.
    #[error("cannot serve the control API on {addr}: {source} (choose another --control address)")]
    Control {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A capture file (`--pcap`, `--pcapng-tls`) could not be created or written.
    #[error("cannot write capture {path}: {source}")]
    Capture {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Listeners bound and ready, before serving (tests and `--check` use the pieces).
#[derive(Debug)]
pub struct Bound {
    sockets: Vec<TcpListener>,
    /// The listeners, with the addresses actually bound (port 0 resolved).
    pub listeners: Vec<Listener>,
}

/// How many connections the kernel may hold for a listener before xmpptap accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). Tokio's `TcpListener::bind` asks for 128, as the standard library
/// does: a burst of reconnecting servers (after a network blip) would overflow it, and the kernel would then
/// drop the handshakes it cannot queue.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds every listening address.
pub async fn bind(config: &ProxyConfig) -> Result<Bound, RunError> {
    let mut sockets = Vec::new();
    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let addr = listener.addr;
        let socket = listen_on(addr).map_err(|source| RunError::Bind { addr, source })?;
        let local = socket
            .local_addr()
            .map_err(|source| RunError::Bind { addr, source })?;
        listeners.push(Listener {
            addr: local,
            ..*listener
        });
        sockets.push(socket);
    }
    Ok(Bound { sockets, listeners })
}

/// A listening socket on `addr` with [`LISTEN_BACKLOG`], reusing the address as `TcpListener::bind` does.
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The router for `service` (S2S or C2S), told about our own listeners so it can refuse routing loops.
pub fn router(
    config: &ProxyConfig,
    service: Service,
    own: &[SocketAddr],
) -> Result<Router, RunError> {
    Ok(Router::new(config.router_config(service, own))?)
}

/// The TLS context: loads (or creates) the CA and the upstream trust roots, and logs TLS secrets when
/// `--keylog` is set or a capture sink embeds them.
pub fn tls_context(config: &ProxyConfig, tap: &Tap) -> Result<TlsContext, RunError> {
    let ca = Ca::load_or_create(&config.ca_dir)?;
    let tls = TlsContext::new(Arc::new(ca), &config.upstream_trust)?;
    let key_log =
        TlsKeyLog::open(config.keylog.as_deref(), tap).map_err(|source| RunError::KeyLog {
            path: config
                .keylog
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            source,
        })?;
    Ok(match key_log {
        Some(key_log) => tls.with_key_log(Arc::new(key_log)),
        None => tls,
    })
}

/// Runs the proxy until `shutdown` is cancelled.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let (tap, writer) = start_tap(&config)?;
    let tls = tls_context(&config, &tap)?;
    let bound = bind(&config).await?;
    let own: Vec<SocketAddr> = bound.listeners.iter().map(|l| l.addr).collect();
    let s2s_router = router(&config, Service::Server, &own)?;
    let c2s_router = router(&config, Service::Client, &own)?;
    let default_domain = config.default_domain.clone();
    warn_if_few_file_descriptors(config.limits.max_connections);
    let admission = Admission::new(
        config.limits.max_connections,
        config.limits.max_connections_per_domain,
    );
    let rules = Arc::new(
        crate::rules::SharedRules::new(config.rules.clone())
            .map_err(|e| RunError::Rules(format!("{e:#}")))?,
    );
    let control = crate::control::Control {
        registry: Arc::default(),
        metrics: Arc::default(),
        rules: rules.clone(),
        tap_dropped: {
            let tap = tap.clone();
            Arc::new(move || tap.dropped())
        },
        token: config.control_token.clone(),
    };
    let control_listener = match config.control {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Control { addr, source })?,
        ),
        None => None,
    };
    let steering = session::SteeringHandles {
        registry: control.registry.clone(),
        shared: session::SteerShared {
            rules: rules.clone(),
            pinger: Arc::default(),
            policy: Arc::new(crate::policy::Policy::new(config.policy.clone())),
            metrics: control.metrics.clone(),
        },
    };
    let ctx = Arc::new(Context {
        steering,
        config,
        router: s2s_router,
        c2s_router,
        direct_tls: [
            tls.sni_acceptor(default_domain.clone(), &[b"xmpp-server"]),
            tls.sni_acceptor(default_domain, &[b"xmpp-client"]),
        ],
        tls,
        tap,
        sm_index: Arc::default(),
        admission,
    });

    let sessions = TaskTracker::new();
    let next_id = Arc::new(AtomicU64::new(1));
    let mut accept_loops = Vec::new();
    for (socket, listener) in bound.sockets.into_iter().zip(bound.listeners) {
        tracing::info!("listening on {} ({})", listener.addr, listener.name());
        accept_loops.push(tokio::spawn(accept_loop(
            socket,
            listener,
            ctx.clone(),
            sessions.clone(),
            next_id.clone(),
            shutdown.clone(),
        )));
    }
    // After the XMPP listeners, whose "listening on" lines come first.
    if let Some(listener) = control_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on {addr} (control)");
            tracing::info!("control API: curl http://{addr}/ (metrics at /metrics)");
        }
        let control = Arc::new(control);
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            if let Err(e) = crate::control::serve(control, listener, shutdown).await {
                tracing::error!(error = %e, "the control API stopped");
            }
        });
    }
    sessions.spawn(reload_on_sighup(rules, shutdown.clone()));
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    for task in accept_loops {
        let _ = task.await;
    }
    sessions.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within {SHUTDOWN_GRACE:?}");
    }
    drop(ctx);
    if let Some(writer) = writer {
        // The writer ends once the last Tap is gone; sessions that did not finish still hold theirs.
        let joined = tokio::task::spawn_blocking(move || writer.join());
        let _ = tokio::time::timeout(Duration::from_secs(2), joined).await;
    }
    Ok(())
}

/// Reloads the rules file on SIGHUP; a file that does not parse leaves the old rules in force.
async fn reload_on_sighup(rules: Arc<crate::rules::SharedRules>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: rules reload only through the control API");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = hangups.recv() => match rules.reload() {
                Ok(count) => tracing::info!(rules = count, "SIGHUP: rules reloaded"),
                Err(e) => tracing::error!("SIGHUP: rules not reloaded, the old ones stay: {e:#}"),
            },
        }
    }
}

/// File descriptors a connection takes: the initiator's socket and the upstream one.
const FDS_PER_CONNECTION: u64 = 2;

/// Warns when the process may run out of file descriptors before reaching `--max-connections`: accepts would
/// then fail (and back off) instead of refusing with `<policy-violation/>`. Linux only (`/proc/self/limits`);
/// elsewhere, or when the limit cannot be read, says nothing.
fn warn_if_few_file_descriptors(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    // "Max open files            1024                 1048576              files"
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok());
    let needed = (max_connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(64);
    if let Some(soft) = soft.filter(|soft| *soft < needed) {
        tracing::warn!(
            "--max-connections {max_connections} needs about {needed} file descriptors but the limit is {soft}: \
             raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// Opens every configured output and starts the tap writer thread; a disabled tap when there is none.
fn start_tap(config: &ProxyConfig) -> Result<(Tap, Option<std::thread::JoinHandle<()>>), RunError> {
    let mut sinks: Vec<Box<dyn tap::Sink>> = Vec::new();
    if let Some(path) = &config.log {
        let stdout = path == Path::new("-");
        if stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            // A person is watching: the readable view of `xmpptap show` rather than JSON.
            sinks.push(Box::new(crate::show::ShowSink::stdout()));
        } else {
            let out: Box<dyn std::io::Write + Send> = if stdout {
                Box::new(std::io::stdout())
            } else {
                Box::new(tap::file::TapFile::new(open_append(path)?))
            };
            sinks.push(Box::new(tap::jsonl::JsonlSink::new(
                out,
                path.display().to_string(),
            )));
        }
    }
    if let Some(path) = &config.pcap {
        let (out, name) = capture_out(path, false)?;
        let sink = tap::pcap::PcapSink::new(out, name.clone())
            .map_err(|source| RunError::Capture { path: name, source })?;
        sinks.push(Box::new(sink));
    }
    if let Some(path) = &config.pcapng_tls {
        let (out, name) = capture_out(path, true)?;
        let sink = tap::pcapng::PcapngTlsSink::new(out, name.clone())
            .map_err(|source| RunError::Capture { path: name, source })?;
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() {
        return Ok((Tap::disabled(), None));
    }
    let (tap, rx) = Tap::channel(TapOptions {
        data: config.pcap.is_some(),
        raw: config.pcapng_tls.is_some(),
    });
    let writer =
        tap::spawn_writer_with(rx, sinks, config.redaction).map_err(|source| RunError::Log {
            path: String::from("(tap writer thread)"),
            source,
        })?;
    Ok((tap, Some(writer)))
}

/// A capture's output: stdout for "-", else the file, created or emptied (`private`: with mode 0600), and its
/// name for messages.
fn capture_out(
    path: &Path,
    private: bool,
) -> Result<(Box<dyn std::io::Write + Send>, String), RunError> {
    let name = path.display().to_string();
    if path == Path::new("-") {
        return Ok((Box::new(std::io::stdout()), name));
    }
    let file = if private {
        tap::pcapng::create_private(path)
    } else {
        std::fs::File::create(path)
    };
    match file {
        Ok(file) => Ok((Box::new(tap::file::TapFile::new(file)), name)),
        Err(source) => Err(RunError::Capture { path: name, source }),
    }
}

/// Opens an output file for appending, creating it if needed.
fn open_append(path: &Path) -> Result<std::fs::File, RunError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| RunError::Log {
            path: path.display().to_string(),
            source,
        })
}

/// Accepts connections until shutdown. Accept errors (e.g. out of file descriptors) back off and retry.
async fn accept_loop(
    socket: TcpListener,
    listener: Listener,
    ctx: Arc<Context>,
    sessions: TaskTracker,
    next_id: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        // Both branches are cancel-safe: `accept` loses no connection when the other branch wins.
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "connection gone before it could be served");
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let conn = next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("conn", id = conn, %peer, to = tracing::field::Empty);
        let accepted = Accepted {
            listener,
            conn,
            stream,
            peer,
            local,
        };
        sessions.spawn(session::serve(ctx.clone(), accepted, shutdown.clone()).instrument(span));
    }
}
