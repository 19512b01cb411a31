//! Listeners and the accept loop: `xmpptap proxy` from its validated config to serving connections.
//!
//! [`run`] builds the shared handles once (CA, TLS configurations, router, transcript tap), binds every
//! listener, and spawns one task per accepted connection inside a span carrying its id and peer. A failed
//! accept backs off and continues; a failed session never touches the listener. On shutdown it stops accepting,
//! lets sessions say `<system-shutdown/>`, and waits for them briefly.

use crate::config::ProxyConfig;
use crate::session::{self, Accepted, Context};
use crate::tap::{self, Tap};
use crate::tls::{ca::Ca, TlsContext};
use crate::upstream::route::{Router, RouterConfig};
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
}

/// Listeners bound and ready, before serving (tests and `--check` use the pieces).
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<TcpListener>,
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
}

/// Binds every S2S listening address.
pub async fn bind(config: &ProxyConfig) -> Result<Bound, RunError> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for &addr in &config.s2s_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| RunError::Bind { addr, source })?;
        addrs.push(local);
        listeners.push(listener);
    }
    Ok(Bound { listeners, addrs })
}

/// The router for `config`, told about our own listeners so it can refuse routing loops.
pub fn router(config: &ProxyConfig, own: &[SocketAddr]) -> Result<Router, RunError> {
    Ok(Router::new(RouterConfig {
        routes: config.routes.clone(),
        upstream: config.upstream.clone(),
        resolver: config.resolver,
        srv_service: "_xmpp-server._tcp",
        default_port: 5269,
        own_listeners: own.to_vec(),
    })?)
}

/// The TLS context: loads (or creates) the CA and the upstream trust roots.
pub fn tls_context(config: &ProxyConfig) -> Result<TlsContext, RunError> {
    let ca = Ca::load_or_create(&config.ca_dir)?;
    Ok(TlsContext::new(Arc::new(ca), &config.upstream_trust)?)
}

/// Runs the proxy until `shutdown` is cancelled.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let tls = tls_context(&config)?;
    let bound = bind(&config).await?;
    let router = router(&config, &bound.addrs)?;
    let (tap, writer) = start_tap(&config)?;
    let ctx = Arc::new(Context {
        config,
        router,
        tls,
        tap,
    });

    let sessions = TaskTracker::new();
    let next_id = Arc::new(AtomicU64::new(1));
    let mut accept_loops = Vec::new();
    for (listener, addr) in bound.listeners.into_iter().zip(bound.addrs) {
        tracing::info!("listening on {addr} (s2s)");
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            ctx.clone(),
            sessions.clone(),
            next_id.clone(),
            shutdown.clone(),
        )));
    }
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

/// Opens every configured output and starts the tap writer thread; a disabled tap when there is none.
fn start_tap(config: &ProxyConfig) -> Result<(Tap, Option<std::thread::JoinHandle<()>>), RunError> {
    let mut sinks: Vec<Box<dyn tap::Sink>> = Vec::new();
    if let Some(path) = &config.log {
        let out: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(open_append(path)?)
        };
        sinks.push(Box::new(tap::jsonl::JsonlSink::new(
            out,
            path.display().to_string(),
        )));
    }
    if sinks.is_empty() {
        return Ok((Tap::disabled(), None));
    }
    let wants_data = false;
    let (tap, rx) = Tap::channel(wants_data);
    let writer = tap::spawn_writer(rx, sinks).map_err(|source| RunError::Log {
        path: String::from("(tap writer thread)"),
        source,
    })?;
    Ok((tap, Some(writer)))
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
    listener: TcpListener,
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
            accepted = listener.accept() => accepted,
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
            conn,
            stream,
            peer,
            local,
        };
        sessions.spawn(session::serve(ctx.clone(), accepted, shutdown.clone()).instrument(span));
    }
}
