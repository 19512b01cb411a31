//! Dialing: connect to the first candidate of a domain that answers, with a per-attempt timeout and bounded,
//! backed-off retries.
//!
//! One *round* asks the [`Router`] for fresh candidates and tries each once, in order. If every attempt of a
//! round fails, [`connect`] waits [`ConnectPolicy::backoff`] and runs another round, at most
//! [`ConnectPolicy::retries`] times. Every failed attempt is kept ([`Attempt`]) for the transcript and for the
//! final [`ConnectError::Exhausted`] message.
//!
//! This module does not choose addresses (that is [`super::route`]) and does not speak XMPP or TLS.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::route::{Candidate, RouteError, Router};

/// How hard [`connect`] tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectPolicy {
    /// Limit for one TCP connection attempt to one address.
    pub timeout: Duration,
    /// Extra rounds after the first one fails; 0 means a single round.
    pub retries: u32,
    /// Delay after the first failed round.
    pub initial_backoff: Duration,
    /// Each further delay is the previous one times this.
    pub factor: u32,
    /// No delay is longer than this.
    pub max_backoff: Duration,
}

impl Default for ConnectPolicy {
    /// 10 s per attempt, 3 retries, backoff 1 s, 2 s, 4 s, ... capped at 30 s.
    fn default() -> Self {
        ConnectPolicy {
            timeout: Duration::from_secs(10),
            retries: 3,
            initial_backoff: Duration::from_secs(1),
            factor: 2,
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl ConnectPolicy {
    /// The delay after failed round `retry` (0-based): `initial_backoff * factor^retry`, capped at
    /// `max_backoff`. Never overflows.
    pub fn backoff(&self, retry: u32) -> Duration {
        let mut delay = self.initial_backoff;
        for _ in 0..retry {
            if delay >= self.max_backoff {
                break;
            }
            delay = delay.saturating_mul(self.factor);
        }
        delay.min(self.max_backoff)
    }
}

/// One failed connection attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The address that was tried.
    pub addr: SocketAddr,
    /// What went wrong, e.g. `Connection refused (os error 111)` or `timed out after 10s`.
    pub error: String,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.addr, self.error)
    }
}

/// A connected upstream stream and how it was reached.
#[derive(Debug)]
pub struct Connected {
    /// The TCP stream to the receiver, with `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// The candidate that answered. If its `direct_tls` is set, the session must start TLS on `stream` before
    /// anything else (XEP-0368); this module has not.
    pub candidate: Candidate,
    /// Attempts that failed before this one (in all rounds), oldest first.
    pub failed: Vec<Attempt>,
}

/// Why [`connect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No candidates could be found. Returned at once if retrying cannot help (see
    /// [`RouteError::is_retryable`], e.g. an invalid domain or a routing loop); otherwise after the last round,
    /// if no round got as far as an address.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Every candidate failed in every round.
    #[error("cannot connect to {domain}: every address failed ({})", list(.attempts))]
    Exhausted {
        /// The domain being connected to.
        domain: String,
        /// Every failed attempt, oldest first.
        attempts: Vec<Attempt>,
    },
}

/// `addr: error; addr: error` for the [`ConnectError::Exhausted`] message.
fn list(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no addresses tried".to_owned();
    }
    attempts
        .iter()
        .map(Attempt::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Connects to the first candidate for `domain` that answers, in the router's order, and sets `TCP_NODELAY`.
///
/// Candidates are resolved afresh in each round. A round that fails entirely is followed by
/// `policy.backoff(round)` and another round, up to `policy.retries` extra rounds.
///
/// Cancel-safe: dropping the future abandons the pending lookup, connection attempt or sleep; nothing is
/// left half-done.
pub async fn connect(
    router: &Router,
    domain: &str,
    policy: &ConnectPolicy,
) -> Result<Connected, ConnectError> {
    let mut failed = Vec::new();
    let mut last_route_error = None;
    for round in 0..=policy.retries {
        if round > 0 {
            let delay = policy.backoff(round - 1);
            debug!(
                domain,
                round,
                ?delay,
                "waiting before the next connection round"
            );
            tokio::time::sleep(delay).await;
        }
        let candidates = match router.candidates(domain).await {
            Ok(candidates) => candidates,
            Err(e) if !e.is_retryable() => return Err(e.into()),
            Err(e) => {
                warn!(domain, round, error = %e, "no candidates this round");
                last_route_error = Some(e);
                continue;
            }
        };
        for candidate in candidates {
            match attempt(candidate.addr, policy.timeout).await {
                Ok(stream) => {
                    info!(
                        domain,
                        addr = %candidate.addr,
                        direct_tls = candidate.direct_tls,
                        source = ?candidate.source,
                        "connected upstream"
                    );
                    return Ok(Connected {
                        stream,
                        candidate,
                        failed,
                    });
                }
                Err(error) => {
                    debug!(domain, addr = %candidate.addr, %error, "connection attempt failed");
                    failed.push(Attempt {
                        addr: candidate.addr,
                        error,
                    });
                }
            }
        }
    }
    match last_route_error {
        Some(e) if failed.is_empty() => Err(e.into()),
        _ => Err(ConnectError::Exhausted {
            domain: domain.to_owned(),
            attempts: failed,
        }),
    }
}

/// One TCP connection attempt under `timeout`, with `TCP_NODELAY` set; the error as text for [`Attempt`].
async fn attempt(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("timed out after {timeout:?}")),
    };
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connected, but setting TCP_NODELAY failed: {e}"))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::route::{HostPort, RouteSource, RouteTarget, RouterConfig};
    use tokio::net::TcpListener;

    fn router_to(target: SocketAddr, own_listeners: Vec<SocketAddr>) -> Router {
        let cfg = RouterConfig {
            routes: vec![(
                "b.test".into(),
                RouteTarget::from(HostPort {
                    host: target.ip().to_string(),
                    port: target.port(),
                }),
            )],
            // Never asked: the route is an IP literal.
            resolver: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            own_listeners,
            ..RouterConfig::default()
        };
        Router::new(cfg).unwrap_or_else(|e| panic!("router: {e}"))
    }

    fn fast(retries: u32) -> ConnectPolicy {
        ConnectPolicy {
            timeout: Duration::from_secs(5),
            retries,
            initial_backoff: Duration::from_millis(1),
            factor: 2,
            max_backoff: Duration::from_millis(4),
        }
    }

    /// An address on 127.0.0.1 where nothing listens (bound, then released).
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
    }

    #[test]
    fn backoff_table() {
        let policy = ConnectPolicy::default();
        let secs: Vec<u64> = (0..8).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(30));
        let cases: &[(ConnectPolicy, u32, Duration)] = &[
            (
                ConnectPolicy {
                    factor: 1,
                    ..ConnectPolicy::default()
                },
                5,
                Duration::from_secs(1),
            ),
            (
                ConnectPolicy {
                    factor: 3,
                    ..ConnectPolicy::default()
                },
                2,
                Duration::from_secs(9),
            ),
            (
                ConnectPolicy {
                    factor: u32::MAX,
                    ..ConnectPolicy::default()
                },
                3,
                Duration::from_secs(30),
            ),
            (
                ConnectPolicy {
                    initial_backoff: Duration::ZERO,
                    ..ConnectPolicy::default()
                },
                4,
                Duration::ZERO,
            ),
            (
                ConnectPolicy {
                    initial_backoff: Duration::from_secs(60),
                    ..ConnectPolicy::default()
                },
                0,
                Duration::from_secs(30),
            ),
        ];
        for (policy, retry, expected) in cases {
            assert_eq!(
                policy.backoff(*retry),
                *expected,
                "{policy:?} retry {retry}"
            );
        }
    }

    #[tokio::test]
    async fn connects_to_a_listener_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let router = router_to(addr, vec![]);
        let connected = connect(&router, "b.test", &fast(0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connected.candidate.addr, addr);
        assert_eq!(connected.candidate.source, RouteSource::Static);
        assert!(!connected.candidate.direct_tls);
        assert!(connected.failed.is_empty());
        assert!(
            connected.stream.nodelay().unwrap_or(false),
            "TCP_NODELAY not set"
        );
        assert!(listener.accept().await.is_ok());
    }

    #[tokio::test]
    async fn closed_port_is_exhausted_after_retries() {
        let addr = closed_port().await;
        let router = router_to(addr, vec![]);
        let started = std::time::Instant::now();
        let err = connect(&router, "b.test", &fast(2)).await.err();
        let Some(ConnectError::Exhausted { domain, attempts }) = &err else {
            panic!("expected Exhausted, got {err:?}");
        };
        assert_eq!(domain, "b.test");
        assert_eq!(attempts.len(), 3, "one attempt per round: {attempts:?}");
        assert!(attempts
            .iter()
            .all(|a| a.addr == addr && !a.error.is_empty()));
        // Waited 1 ms + 2 ms between the rounds.
        assert!(started.elapsed() >= Duration::from_millis(3));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.starts_with("cannot connect to b.test: every address failed ("),
            "{text}"
        );
        assert_eq!(text.matches(&addr.to_string()).count(), 3, "{text}");
    }

    #[tokio::test]
    async fn connect_attempts_time_out() {
        // 192.0.2.0/24 is TEST-NET-1: nothing answers there (or the network is unreachable at once).
        let router = router_to(SocketAddr::from(([192, 0, 2, 1], 5269)), vec![]);
        let policy = ConnectPolicy {
            timeout: Duration::from_millis(50),
            ..fast(0)
        };
        match connect(&router, "b.test", &policy).await {
            Err(ConnectError::Exhausted { attempts, .. }) => assert_eq!(attempts.len(), 1),
            other => panic!("expected Exhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn routing_loop_and_invalid_domain_are_not_retried() {
        let own = SocketAddr::from(([127, 0, 0, 1], 5999));
        let router = router_to(own, vec![own]);
        // Retrying would sleep for an hour; the outer timeout proves it does not.
        let slow = ConnectPolicy {
            initial_backoff: Duration::from_secs(3600),
            ..fast(3)
        };
        let within = Duration::from_secs(5);
        let looped = tokio::time::timeout(within, connect(&router, "b.test", &slow)).await;
        assert!(
            matches!(
                looped,
                Ok(Err(ConnectError::Route(RouteError::RoutingLoop { .. })))
            ),
            "{looped:?}"
        );
        let invalid = tokio::time::timeout(within, connect(&router, "b test", &slow)).await;
        assert!(
            matches!(
                invalid,
                Ok(Err(ConnectError::Route(RouteError::InvalidDomain { .. })))
            ),
            "{invalid:?}"
        );
    }
}
