//! The control plane: the live connections, the metrics, and the HTTP/JSON API that shows and steers them.
//!
//! - [`registry`]: every live connection, with what the session learnt, its traffic counters, and the
//!   handles to close it or inject into it.
//! - [`metrics`]: counters bumped by the data path and `/metrics` in the Prometheus text format.
//! - `api`: the routes (axum, HTTP/1.1), behind an optional bearer token.
//!
//! This module owns the API's routes, its authentication and what it reports. It does not close, inject or
//! decide anything on the wire itself: the API records requests in a connection's [`ConnEntry`] and the
//! session and relay carry them out; rules are changed through [`crate::rules::SharedRules`].
//!
//! # Routes
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /` | an index of the routes |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `GET /connections`, `GET /connections/{id}` | [`ConnectionInfo`]s |
//! | `POST /connections/{id}/close` (body optional [`CloseRequest`]), `DELETE /connections/{id}` | 202 `{"closing": id}` |
//! | `POST /connections/{id}/inject` `{"direction": "up"\|"down", "xml": "..."}` | 202 |
//! | `GET /rules` (`?format=toml`) | `{"file": .., "rules": [..]}` or the TOML |
//! | `POST /rules` (a JSON rule or array, or TOML with a `toml` Content-Type) | 201 `{"added": [names]}` |
//! | `DELETE /rules/{name}` | 200 or 404 |
//! | `POST /rules/reload`, `POST /reset` | `{"rules": count}` |
//!
//! Errors are `{"error": "..."}`: 400 bad input, 401 missing or wrong token, 404 unknown connection or rule,
//! 409 duplicate rule name or connection not relaying, 503 injection queue full.

mod api;
pub mod metrics;
pub mod registry;

pub use metrics::Metrics;
pub use registry::{
    CloseRequest, ConnEntry, ConnHandle, ConnState, ConnectionInfo, CounterInfo, DirCounters,
    InjectError, InjectOrigin, Injection, Phase, Registry,
};

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the control API serves and acts on, built once in `run()`.
pub struct Control {
    /// The live connections.
    pub registry: Arc<Registry>,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The rules in force.
    pub rules: Arc<crate::rules::SharedRules>,
    /// How many transcript events the tap has dropped so far.
    pub tap_dropped: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("registry", &self.registry)
            .field("metrics", &self.metrics)
            .field("rules", &self.rules)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets requests in flight finish. Errors on
/// single connections are handled inside and never end the server.
pub async fn serve(
    control: Arc<Control>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("control API on http://{addr}/");
    }
    axum::serve(listener, api::router(control))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Refuses a control address other than loopback unless a (non-empty) token is set: whoever reaches the API
/// can close connections and inject stanzas.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    match token {
        Some(token) if !token.is_empty() => Ok(()),
        Some(_) => Err(format!(
            "the control API on {addr} needs a non-empty --control-token"
        )),
        None => Err(format!(
            "refusing to serve the control API on {addr}, which is not a loopback address, without a \
             token: anyone who reaches it can close connections and inject stanzas; set --control-token \
             or bind to 127.0.0.1 or [::1]"
        )),
    }
}

#[cfg(test)]
mod tests;
