//! The DNS and connect phases: which addresses a server would try for a domain, in which order, and the TCP
//! attempts in that order.
//!
//! The order is the proxy's own ([`Router::candidates`]): both SRV services, `_xmpps-` (Direct TLS) and `_xmpp-`,
//! merged and ordered by priority and weight (RFC 2782, XEP-0368), each target's A then AAAA addresses, and the
//! domain's own A/AAAA on the default port when neither service has records. Beside that order the report lists
//! both SRV answers as published, asked separately, so a record whose target does not resolve is visible too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

use crate::upstream::route::{Candidate, HostPort, RouteTarget, Router, RouterConfig, Service};

use super::report::{
    ms, AttemptReport, CandidateReport, ConnectReport, DnsReport, FailureKind, Report, SrvQuery,
    SrvRecordReport,
};

/// Where to look.
#[derive(Debug, Clone)]
pub struct Target {
    /// The XMPP domain.
    pub domain: String,
    /// S2S or C2S: the SRV names and the default port.
    pub service: Service,
    /// `--host`: skip SRV, connect here.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--direct-tls` (with `--host`/`--port`).
    pub direct_tls: bool,
    /// `--resolver`.
    pub resolver: Option<SocketAddr>,
}

/// The `dns` phase: fills `report.dns` and returns the candidates, or records the failure and returns `None`.
pub async fn resolve(
    report: &mut Report,
    target: &Target,
    timeout: Duration,
) -> Option<Vec<Candidate>> {
    let phase = report.start("dns");
    let overridden = target.host.is_some() || target.port.is_some();
    let mut dns = DnsReport {
        domain: target.domain.clone(),
        resolver: target
            .resolver
            .map_or_else(|| "system".to_owned(), |r| r.to_string()),
        overridden,
        srv: Vec::new(),
        candidates: Vec::new(),
        error: None,
    };
    let routes = if overridden {
        let port = target
            .port
            .unwrap_or(match (target.service, target.direct_tls) {
                (Service::Server, false) => 5269,
                (Service::Server, true) => 5270,
                (Service::Client, false) => 5222,
                (Service::Client, true) => 5223,
            });
        let host = target.host.clone().unwrap_or_else(|| target.domain.clone());
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map_or(host.clone(), str::to_owned);
        vec![(
            target.domain.clone(),
            RouteTarget {
                host_port: HostPort { host, port },
                direct_tls: target.direct_tls,
            },
        )]
    } else {
        Vec::new()
    };
    let router = Router::new(RouterConfig {
        routes,
        upstream: None,
        resolver: target.resolver,
        srv_service: target.service,
        own_listeners: Vec::new(),
    });
    let router = match router {
        Ok(router) => router,
        Err(e) => {
            dns.error = Some(e.to_string());
            report.dns = Some(dns);
            report.fail(phase, FailureKind::Dns, e.to_string());
            return None;
        }
    };
    if !overridden {
        match resolver(target.resolver) {
            Ok(resolver) => {
                let (direct, starttls) = tokio::join!(
                    srv_query(&resolver, target.service, true, &target.domain, timeout),
                    srv_query(&resolver, target.service, false, &target.domain, timeout),
                );
                dns.srv = vec![direct, starttls];
            }
            Err(e) => dns.error = Some(e),
        }
    }
    let found = match tokio::time::timeout(timeout * 2, router.candidates(&target.domain)).await {
        Ok(found) => found.map_err(|e| e.to_string()),
        Err(_) => Err(format!("DNS did not answer within {:?}", timeout * 2)),
    };
    match found {
        Ok(candidates) => {
            dns.candidates = candidates
                .iter()
                .map(|c| CandidateReport {
                    addr: c.addr,
                    host: c.host.clone(),
                    direct_tls: c.direct_tls,
                    source: c.source.clone(),
                })
                .collect();
            let detail = format!(
                "{} candidate(s), first {}{}",
                candidates.len(),
                candidates
                    .first()
                    .map(|c| c.addr.to_string())
                    .unwrap_or_default(),
                if candidates.first().is_some_and(|c| c.direct_tls) {
                    " (Direct TLS)"
                } else {
                    ""
                }
            );
            report.dns = Some(dns);
            report.pass(phase, detail);
            Some(candidates)
        }
        Err(e) => {
            dns.error = Some(e.clone());
            report.dns = Some(dns);
            report.fail(phase, FailureKind::Dns, e);
            None
        }
    }
}

/// The `connect` phase: tries each candidate once, in order, each attempt under `timeout`.
pub async fn connect(
    report: &mut Report,
    candidates: Vec<Candidate>,
    timeout: Duration,
) -> Option<(TcpStream, Candidate)> {
    let phase = report.start("connect");
    let mut connect = ConnectReport {
        attempts: Vec::new(),
        connected: None,
        local: None,
        direct_tls: false,
    };
    for candidate in candidates {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, TcpStream::connect(candidate.addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        connect.attempts.push(AttemptReport {
            addr: candidate.addr,
            direct_tls: candidate.direct_tls,
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
            ms: ms(started),
        });
        if let Ok(stream) = result {
            let _ = stream.set_nodelay(true);
            connect.connected = Some(candidate.addr);
            connect.local = stream.local_addr().ok();
            connect.direct_tls = candidate.direct_tls;
            let failed = connect.attempts.len() - 1;
            report.connect = Some(connect);
            report.pass(
                phase,
                format!(
                    "{}{}",
                    candidate.addr,
                    if failed > 0 {
                        format!(" after {failed} failed attempt(s)")
                    } else {
                        String::new()
                    }
                ),
            );
            return Some((stream, candidate));
        }
    }
    let summary = connect
        .attempts
        .iter()
        .map(|a| format!("{}: {}", a.addr, a.error.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join("; ");
    report.connect = Some(connect);
    report.fail(
        phase,
        FailureKind::Connect,
        format!("no candidate accepted a connection: {summary}"),
    );
    None
}

/// A resolver like the router's: the given server over UDP and TCP, or the system's configuration.
fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let builder = match server {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let name_server = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![name_server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?,
    };
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// One SRV query, answered as published.
async fn srv_query(
    resolver: &TokioResolver,
    service: Service,
    direct_tls: bool,
    domain: &str,
    timeout: Duration,
) -> SrvQuery {
    let name = format!("{}._tcp.{domain}.", service.label(direct_tls));
    let mut query = SrvQuery {
        name: name.clone(),
        direct_tls,
        result: "none",
        error: None,
        records: Vec::new(),
    };
    let parsed = match Name::from_utf8(&name) {
        Ok(parsed) => parsed,
        Err(e) => {
            query.result = "error";
            query.error = Some(format!("not a DNS name: {e}"));
            return query;
        }
    };
    match tokio::time::timeout(timeout, resolver.srv_lookup(parsed)).await {
        Ok(Ok(lookup)) => {
            let mut records: Vec<SrvRecordReport> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(SrvRecordReport {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect();
            records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
            query.result = match records.as_slice() {
                [] => "none",
                [only] if only.target == "." => "not_offered",
                _ => "records",
            };
            query.records = records;
        }
        Ok(Err(e)) if e.is_no_records_found() => {}
        Ok(Err(e)) => {
            query.result = "error";
            query.error = Some(e.to_string());
        }
        Err(_) => {
            query.result = "error";
            query.error = Some(format!("no answer within {timeout:?}"));
        }
    }
    query
}
