//! Routing: which addresses an initiator's stream for a domain should be relayed to.
//!
//! [`Router::candidates`] turns the `to` domain of an initiator's stream header into an ordered list of
//! [`Candidate`] addresses, each saying how it was chosen ([`RouteSource`]) so the transcript can show it:
//!
//! 1. a static route for the domain (`--route DOMAIN=HOST:PORT`) wins;
//! 2. else the reverse-proxy `upstream`, if one is configured;
//! 3. else DNS SRV (`_xmpp-server._tcp.DOMAIN.`), ordered per RFC 2782 ([`order_srv`]), each target
//!    resolved to its A then AAAA addresses;
//! 4. if the domain has no SRV records at all, its own A/AAAA records on the default port.
//!
//! A DNS failure other than "no such records" (SERVFAIL, timeout, refused) is an error, never a reason to
//! fall back: falling back on a transient failure would silently send a stream somewhere else. Candidates that
//! point back at one of xmpptap's own listeners are dropped, and if nothing is left that is a
//! [`RouteError::RoutingLoop`].
//!
//! This module owns name resolution (one [`TokioResolver`] built in [`Router::new`]); it does not dial:
//! that is [`super::connect`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use serde::Serialize;
use tracing::{debug, warn};

/// Port used for A/AAAA fallback of server-to-server streams (RFC 6120 3.2.2).
pub const XMPP_SERVER_PORT: u16 = 5269;
/// Port used for A/AAAA fallback of client-to-server streams (RFC 6120 3.2.2).
pub const XMPP_CLIENT_PORT: u16 = 5222;

/// Which XMPP service a [`Router`] finds servers for: it decides the SRV names asked, the fallback port and
/// the flag named in hints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Server-to-server: SRV `_xmpps-server._tcp` and `_xmpp-server._tcp`, fallback port 5269.
    #[default]
    Server,
    /// Client-to-server: SRV `_xmpps-client._tcp` and `_xmpp-client._tcp`, fallback port 5222.
    Client,
}

impl Service {
    /// The SRV service label for plaintext/STARTTLS connections (RFC 6120 3.2.1): `_xmpp-server` or
    /// `_xmpp-client`.
    pub fn srv_label(self) -> &'static str {
        match self {
            Service::Server => "_xmpp-server",
            Service::Client => "_xmpp-client",
        }
    }

    /// The SRV service label for Direct TLS connections (XEP-0368): `_xmpps-server` or `_xmpps-client`.
    pub fn direct_tls_srv_label(self) -> &'static str {
        match self {
            Service::Server => "_xmpps-server",
            Service::Client => "_xmpps-client",
        }
    }

    /// [`Service::direct_tls_srv_label`] if `direct_tls`, else [`Service::srv_label`].
    pub fn label(self, direct_tls: bool) -> &'static str {
        if direct_tls {
            self.direct_tls_srv_label()
        } else {
            self.srv_label()
        }
    }

    /// The port for the A/AAAA fallback when a domain has no SRV records (RFC 6120 3.2.2): 5269 or 5222.
    pub fn default_port(self) -> u16 {
        match self {
            Service::Server => XMPP_SERVER_PORT,
            Service::Client => XMPP_CLIENT_PORT,
        }
    }

    /// The flag that adds a static route for this service, for hints in error messages: `--route` or
    /// `--c2s-route`.
    pub fn route_flag(self) -> &'static str {
        match self {
            Service::Server => "--route",
            Service::Client => "--c2s-route",
        }
    }

    /// The fully qualified SRV name asked for `domain`, e.g. `_xmpps-server._tcp.b.test.`.
    fn srv_name(self, direct_tls: bool, domain: &str) -> String {
        format!("{}._tcp.{domain}.", self.label(direct_tls))
    }
}

/// Longest domain name DNS can carry, in bytes, without the trailing dot (RFC 1035 2.3.4).
const MAX_DOMAIN_LEN: usize = 253;
/// Longest DNS label, in bytes (RFC 1035 2.3.4).
const MAX_LABEL_LEN: usize = 63;

// ---------------------------------------------------------------------------------------------------------
// HostPort

/// `host:port` as given by the user; the host may be a DNS name or an IP literal.
///
/// Parses from `host:port`, `1.2.3.4:port` and `[v6]:port`; [`fmt::Display`] prints the same form back (IPv6
/// hosts in brackets). The port is required and must not be 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// DNS name or IP literal, without brackets.
    pub host: String,
    /// TCP port, 1-65535.
    pub port: u16,
}

impl HostPort {
    /// The host as an IP address, if it is an IP literal (no DNS lookup needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Why a `host:port` string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// There is no `:port` at the end.
    #[error(
        "{input:?} has no port; write HOST:PORT, e.g. xmpp.example.org:5269 or [2001:db8::1]:5269"
    )]
    MissingPort {
        /// What was given.
        input: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("{input:?} has an invalid port {port:?}; the port must be a number from 1 to 65535")]
    InvalidPort {
        /// What was given.
        input: String,
        /// The text after the last colon.
        port: String,
    },
    /// An IPv6 address was given without brackets, so the port cannot be told apart.
    #[error("{input:?} looks like an IPv6 address without brackets; write [ADDRESS]:PORT, e.g. [::1]:5269")]
    UnbracketedIpv6 {
        /// What was given.
        input: String,
    },
    /// The host is empty or contains characters no host name or IP literal has.
    #[error(
        "{input:?} has an invalid host; write HOST:PORT with a DNS name or an IP address as HOST"
    )]
    InvalidHost {
        /// What was given.
        input: String,
    },
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err(HostPortError::InvalidHost {
                    input: input.to_owned(),
                });
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(HostPortError::InvalidHost {
                    input: input.to_owned(),
                });
            }
            if after.is_empty() {
                return Err(HostPortError::MissingPort {
                    input: input.to_owned(),
                });
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(HostPortError::InvalidHost {
                    input: input.to_owned(),
                });
            };
            (v6, port)
        } else {
            let Some((host, port)) = input.rsplit_once(':') else {
                return Err(HostPortError::MissingPort {
                    input: input.to_owned(),
                });
            };
            if host.contains(':') {
                return Err(HostPortError::UnbracketedIpv6 {
                    input: input.to_owned(),
                });
            }
            let bad_char = |c: char| {
                c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '@' | '[' | ']')
            };
            if host.is_empty() || host.contains(bad_char) {
                return Err(HostPortError::InvalidHost {
                    input: input.to_owned(),
                });
            }
            (host, port)
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(HostPort {
                host: host.to_owned(),
                port,
            }),
            _ => Err(HostPortError::InvalidPort {
                input: input.to_owned(),
                port: port.to_owned(),
            }),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------------------
// RouteTarget

/// The scheme that marks a [`RouteTarget`] as Direct TLS (XEP-0368): `tls://HOST:PORT`.
const DIRECT_TLS_SCHEME: &str = "tls";

/// Where a static route or the reverse-proxy upstream sends streams: `host:port`, optionally Direct TLS.
///
/// Parses from `HOST:PORT` (a plaintext stream, upgraded with STARTTLS as negotiated) and `tls://HOST:PORT`
/// (Direct TLS, XEP-0368: the TLS handshake comes first); [`fmt::Display`] prints the same form back. The
/// scheme is matched case-insensitively and printed in lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteTarget {
    /// Where to connect.
    pub host_port: HostPort,
    /// Start TLS right after connecting instead of opening a plaintext stream.
    pub direct_tls: bool,
}

impl From<HostPort> for RouteTarget {
    /// A plaintext (STARTTLS) target.
    fn from(host_port: HostPort) -> Self {
        RouteTarget {
            host_port,
            direct_tls: false,
        }
    }
}

/// Why a `[tls://]host:port` string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTargetError {
    /// A scheme other than `tls://` was given.
    #[error(
        "{input:?} has an unknown scheme {scheme:?}; write HOST:PORT, or tls://HOST:PORT for Direct TLS"
    )]
    UnknownScheme {
        /// What was given.
        input: String,
        /// The scheme, with its `://`.
        scheme: String,
    },
    /// The `host:port` part is invalid.
    #[error(transparent)]
    HostPort(#[from] HostPortError),
}

impl FromStr for RouteTarget {
    type Err = RouteTargetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((scheme, rest)) = input.split_once("://") else {
            return Ok(RouteTarget::from(input.parse::<HostPort>()?));
        };
        if !scheme.eq_ignore_ascii_case(DIRECT_TLS_SCHEME) {
            return Err(RouteTargetError::UnknownScheme {
                input: input.to_owned(),
                scheme: format!("{scheme}://"),
            });
        }
        Ok(RouteTarget {
            host_port: rest.parse()?,
            direct_tls: true,
        })
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.direct_tls {
            write!(f, "{DIRECT_TLS_SCHEME}://")?;
        }
        self.host_port.fmt(f)
    }
}

impl Serialize for RouteTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RouteTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Candidates

/// How a candidate address was chosen; recorded in the transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteSource {
    /// A static route configured for the domain.
    Static,
    /// The reverse-proxy upstream that takes every domain without a static route.
    Upstream,
    /// A DNS SRV record of the domain.
    Srv {
        /// The SRV service the record was found under: `_xmpp-server`, `_xmpps-server` (Direct TLS),
        /// `_xmpp-client` or `_xmpps-client` (Direct TLS).
        service: &'static str,
        /// The record's priority (lower is tried first).
        priority: u16,
        /// The record's weight among records of the same priority.
        weight: u16,
        /// The record's target host, without the trailing dot.
        target: String,
    },
    /// The domain's own A/AAAA records on the default port, because it has no SRV records. Never Direct TLS.
    Fallback,
}

/// One address to try for a domain, in the order [`Router::candidates`] returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The host name (or IP literal) `addr` was resolved from, without a trailing dot.
    pub host: String,
    /// Start TLS right after connecting (XEP-0368 Direct TLS: a `tls://` route or upstream, or an `_xmpps-`
    /// SRV record) instead of opening a plaintext stream.
    pub direct_tls: bool,
    /// How this candidate was chosen.
    pub source: RouteSource,
}

/// One SRV record, as [`order_srv`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among records of the same priority.
    pub weight: u16,
    /// Port on the target.
    pub port: u16,
    /// Target host name, as in the record (with its trailing dot if it had one).
    pub target: String,
    /// Whether the record came from the Direct TLS service (`_xmpps-`, XEP-0368).
    pub direct_tls: bool,
}

// ---------------------------------------------------------------------------------------------------------
// Errors

/// Why no candidate addresses could be found for a domain.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The domain (from an initiator's stream header, or in a route) is not a usable DNS name. Caused by
    /// the initiator when it comes from a stream header; never retried.
    #[error("invalid domain {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as given (truncated if very long).
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The system resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error(
        "cannot read the system DNS configuration (/etc/resolv.conf): {source}; \
         configure a resolver address explicitly (--resolver IP:PORT)"
    )]
    SystemResolver {
        /// The underlying error (boxed: it is large).
        source: Box<NetError>,
    },
    /// The DNS resolver could not be set up.
    #[error("cannot set up the DNS resolver: {source}")]
    Resolver {
        /// The underlying error (boxed: it is large).
        source: Box<NetError>,
    },
    /// A DNS query failed for a reason other than "no such records" (SERVFAIL, REFUSED, timeout, network).
    /// Not a reason to fall back to other records: the answer is unknown, not empty.
    #[error(
        "DNS query {query} failed: {source}; check that the resolver is reachable, \
         or add {flag} {domain}=HOST:PORT"
    )]
    Dns {
        /// The domain being routed.
        domain: String,
        /// The flag that adds a static route for this service: `--route` or `--c2s-route`.
        flag: &'static str,
        /// The query that failed, e.g. `SRV _xmpp-server._tcp.b.test.`.
        query: String,
        /// The underlying error (boxed: it is large).
        source: Box<NetError>,
    },
    /// The domain's STARTTLS service publishes a single SRV record with target `.` (RFC 2782: the service is
    /// decidedly not available), and its Direct TLS service has no usable records either.
    #[error(
        "{domain} says it offers no XMPP service: SRV {srv_name} has target \".\"; \
         add {flag} {domain}=HOST:PORT to send it somewhere anyway"
    )]
    NoService {
        /// The domain being routed.
        domain: String,
        /// The SRV name that said so, e.g. `_xmpp-server._tcp.b.test.`.
        srv_name: String,
        /// The flag that adds a static route for this service: `--route` or `--c2s-route`.
        flag: &'static str,
    },
    /// The domain has neither usable SRV records (Direct TLS or not) nor A/AAAA records.
    #[error(
        "no route to {domain}: SRV {srv_names} are empty, and so is A/AAAA {domain}.; \
         add {flag} {domain}=HOST:PORT"
    )]
    NoRoute {
        /// The domain being routed.
        domain: String,
        /// The SRV names queried, e.g. `_xmpps-server._tcp.b.test. and _xmpp-server._tcp.b.test.`.
        srv_names: String,
        /// The flag that adds a static route for this service: `--route` or `--c2s-route`.
        flag: &'static str,
    },
    /// The domain has SRV records, but none of their targets has an address.
    #[error(
        "no route to {domain}: SRV {srv_names} targets {targets} have no A/AAAA records; \
         add {flag} {domain}=HOST:PORT"
    )]
    SrvTargetsEmpty {
        /// The domain being routed.
        domain: String,
        /// The SRV names that had records, joined with `and`.
        srv_names: String,
        /// The flag that adds a static route for this service: `--route` or `--c2s-route`.
        flag: &'static str,
        /// The targets, comma-separated.
        targets: String,
    },
    /// A host named in a static route or as the upstream has no A/AAAA records.
    #[error("{what} host {host} for {domain} has no A/AAAA records; fix the host name or use an IP address")]
    HostNotFound {
        /// The domain being routed.
        domain: String,
        /// `"static route"` or `"upstream"`.
        what: &'static str,
        /// The host that did not resolve.
        host: String,
    },
    /// Every candidate for the domain points back at one of xmpptap's own listeners: connecting would relay
    /// the stream to ourselves. Never retried.
    #[error(
        "routing loop: {domain} resolves to {addr}, which is xmpptap's own listener; \
         add {flag} {domain}=HOST:PORT naming the real server"
    )]
    RoutingLoop {
        /// The domain being routed.
        domain: String,
        /// The flag that adds a static route for this service: `--route` or `--c2s-route`.
        flag: &'static str,
        /// The first of our own addresses the domain resolved to.
        addr: SocketAddr,
    },
}

impl RouteError {
    /// Whether asking again later could give a different answer (DNS trouble or empty records), as opposed
    /// to an error in the domain, the configuration or the routing itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            RouteError::Dns { .. }
            | RouteError::NoRoute { .. }
            | RouteError::SrvTargetsEmpty { .. }
            | RouteError::HostNotFound { .. } => true,
            RouteError::InvalidDomain { .. }
            | RouteError::SystemResolver { .. }
            | RouteError::Resolver { .. }
            | RouteError::NoService { .. }
            | RouteError::RoutingLoop { .. } => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Domain validation

/// Checks a domain (typically the untrusted `to` of a stream header) before it goes near DNS, and returns it
/// in the form routes are matched on: lower case, without a trailing dot. IP literals (`192.0.2.1`, `[::1]`)
/// are accepted.
pub fn normalize_domain(domain: &str) -> Result<String, RouteError> {
    let invalid = |reason| RouteError::InvalidDomain {
        domain: shorten(domain),
        reason,
    };
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if let Some(inner) = trimmed.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(format!("[{ip}]")),
            Err(_) => Err(invalid("bracketed, but not an IPv6 address")),
        };
    }
    if trimmed.len() > MAX_DOMAIN_LEN {
        return Err(invalid("longer than 253 bytes"));
    }
    if trimmed.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains spaces or control characters"));
    }
    if trimmed.contains(['/', '\\', '@', ':', '[', ']']) {
        return Err(invalid("contains '/', '\\', '@', ':' or brackets"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid("has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid("has a label longer than 63 bytes"));
        }
    }
    Ok(trimmed.to_lowercase())
}

/// Keeps error messages bounded when an untrusted domain is very long.
fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The IP address a normalized domain is a literal of, if it is one.
fn domain_ip(domain: &str) -> Option<IpAddr> {
    match domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        Some(v6) => v6.parse().ok(),
        None => domain.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pure decisions

/// Orders SRV records per RFC 2782: ascending priority; within a priority, repeatedly pick one at random
/// with probability proportional to its weight, weight-0 records placed first so that they are only likely
/// to be picked when they are the only ones left or the random number is 0.
///
/// `rand_below(n)` must return a uniformly distributed number in `0..n` (`n` is at least 1); a value out of
/// range is clamped.
pub fn order_srv<R: FnMut(u32) -> u32>(
    mut records: Vec<SrvRecord>,
    mut rand_below: R,
) -> Vec<SrvRecord> {
    // Stable: records of equal priority keep the order DNS gave them.
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let priority = first.priority;
        let mut group = vec![first];
        while let Some(r) = rest.next_if(|r| r.priority == priority) {
            group.push(r);
        }
        // RFC 2782: "arrange all SRV RRs (that have not been ordered yet) in any order, except that all those
        // with weight 0 are placed at the beginning of the list."
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total = group
                .iter()
                .fold(0u32, |sum, r| sum.saturating_add(u32::from(r.weight)));
            // "choose a uniform random number between 0 and the sum computed (inclusive)"
            let pick = rand_below(total.saturating_add(1)).min(total);
            // "select the RR whose running sum value is the first in the selected order which is greater than
            // or equal to the random number selected"
            let mut running = 0u32;
            let index = group
                .iter()
                .position(|r| {
                    running = running.saturating_add(u32::from(r.weight));
                    running >= pick
                })
                // Cannot be None: the last running sum is `total` and `pick <= total`.
                .unwrap_or(0);
            ordered.push(group.remove(index));
        }
    }
    ordered
}

/// What one SRV query answered.
#[derive(Debug)]
enum SrvAnswer {
    /// The records found; empty for NXDOMAIN or no SRV data at the name.
    Records(Vec<SrvRecord>),
    /// The query failed otherwise (usually [`RouteError::Dns`]): the answer is unknown, not empty.
    Failed(RouteError),
}

/// What DNS says about a domain once both SRV answers are in.
#[derive(Debug, PartialEq, Eq)]
enum SrvPlan {
    /// Records of either service or both, to be ordered together by [`order_srv`].
    Records(Vec<SrvRecord>),
    /// Neither service has usable records: the domain's A/AAAA records on the default port (RFC 6120 3.2.2).
    Fallback,
    /// The STARTTLS service says it is not offered (target `.`), and Direct TLS has no usable records.
    NoService,
}

/// Combines the answers of the Direct TLS (`_xmpps-`) and STARTTLS (`_xmpp-`) services: XEP-0368 3 makes the
/// records of both one set for RFC 2782 ordering.
///
/// - A service whose only record has target `.` is not offered (RFC 2782) and contributes nothing.
/// - Records from either service win. A failed query beside a service with records is logged at debug and
///   otherwise ignored: the records found are a real answer.
/// - Otherwise a failure is the error (the STARTTLS one if both failed): the failed service might have had
///   records, so falling back would be a guess.
/// - Otherwise, if the STARTTLS service said `.`, [`SrvPlan::NoService`]; if it has no records,
///   [`SrvPlan::Fallback`]. The fallback belongs to the STARTTLS service (RFC 6120 3.2.2; XEP-0368 defines
///   none for Direct TLS), so an `_xmpps-` `.` alone does not prevent it.
///
/// The Direct TLS records come first in the merged set: among records of equal priority and weight 0, which
/// [`order_srv`] keeps in the order given, Direct TLS is tried first.
fn merge_srv(domain: &str, direct: SrvAnswer, starttls: SrvAnswer) -> Result<SrvPlan, RouteError> {
    /// One service's answer, with a lone `.` told apart from records.
    enum Offer {
        Records(Vec<SrvRecord>),
        NotOffered,
        Empty,
        Failed(RouteError),
    }
    let offer = |answer| match answer {
        SrvAnswer::Records(records) if records.is_empty() => Offer::Empty,
        SrvAnswer::Records(records) if matches!(records.as_slice(), [only] if only.target == ".") => {
            Offer::NotOffered
        }
        SrvAnswer::Records(records) => Offer::Records(records),
        SrvAnswer::Failed(e) => Offer::Failed(e),
    };
    match (offer(direct), offer(starttls)) {
        (Offer::Records(mut direct), Offer::Records(starttls)) => {
            direct.extend(starttls);
            Ok(SrvPlan::Records(direct))
        }
        (Offer::Records(records), Offer::Failed(e))
        | (Offer::Failed(e), Offer::Records(records)) => {
            debug!(domain, error = %e, "one SRV query failed; using the other service's records");
            Ok(SrvPlan::Records(records))
        }
        (Offer::Records(records), _) | (_, Offer::Records(records)) => {
            Ok(SrvPlan::Records(records))
        }
        (direct, Offer::Failed(e)) => {
            if let Offer::Failed(other) = direct {
                debug!(domain, error = %other, "the Direct TLS SRV query failed too");
            }
            Err(e)
        }
        (Offer::Failed(e), _) => Err(e),
        (_, Offer::NotOffered) => Ok(SrvPlan::NoService),
        (_, Offer::Empty) => Ok(SrvPlan::Fallback),
    }
}

/// Whether connecting to `addr` would reach one of our own `listeners`.
///
/// A listener on a specific address matches exactly that address and port. A listener on `0.0.0.0` or `::`
/// matches, on its port, any loopback address and the unspecified address (`::` also matches IPv4, as
/// dual-stack sockets do). IPv4-mapped IPv6 addresses are compared as IPv4. Whether an address belongs to a
/// local network interface cannot be decided purely; [`Router`] checks that separately.
pub fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr]) -> bool {
    let ip = addr.ip().to_canonical();
    listeners.iter().any(|listener| {
        if listener.port() != addr.port() {
            return false;
        }
        let listener_ip = listener.ip().to_canonical();
        if !listener_ip.is_unspecified() {
            return listener_ip == ip;
        }
        wildcard_covers(listener_ip, ip) && (ip.is_loopback() || ip.is_unspecified())
    })
}

/// Whether a wildcard listener on `listener_ip` accepts connections addressed to `ip`'s family.
fn wildcard_covers(listener_ip: IpAddr, ip: IpAddr) -> bool {
    match listener_ip {
        IpAddr::V4(_) => ip.is_ipv4(),
        IpAddr::V6(_) => true,
    }
}

/// Whether `ip` is assigned to one of this host's interfaces: binding a UDP socket to it succeeds only then.
/// If binding to an address that surely is not local (TEST-NET / documentation prefix) also succeeds
/// (`ip_nonlocal_bind`, `IP_FREEBIND` setups), the test proves nothing and this says `false`.
fn is_local_ip(ip: IpAddr) -> bool {
    if ip.is_multicast() {
        return false;
    }
    let binds = |ip: IpAddr| UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
    let never_local = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    };
    binds(ip) && !binds(never_local)
}

// ---------------------------------------------------------------------------------------------------------
// Router

/// What a [`Router`] is built from. The default: no routes, no upstream, the system resolver,
/// [`Service::Server`].
#[derive(Clone, Debug, Default)]
pub struct RouterConfig {
    /// Static routes: `(domain, where to send it)`. Domains match case-insensitively, trailing dot ignored.
    pub routes: Vec<(String, RouteTarget)>,
    /// Reverse-proxy mode: send every domain without a static route here.
    pub upstream: Option<RouteTarget>,
    /// DNS server to ask (over UDP, and TCP for truncated answers); `None` reads `/etc/resolv.conf`.
    pub resolver: Option<SocketAddr>,
    /// The service whose SRV records are asked (both its `_xmpps-` and `_xmpp-` names) and whose port the
    /// A/AAAA fallback uses.
    pub srv_service: Service,
    /// The addresses xmpptap itself listens on (as bound, with real ports), to detect routing loops.
    pub own_listeners: Vec<SocketAddr>,
}

/// Turns domains into ordered candidate addresses. Built once in `run()` and shared (`&Router` is enough;
/// the resolver inside has its own cache and is cheap to use concurrently).
#[derive(Debug)]
pub struct Router {
    /// Static routes with normalized domains.
    routes: Vec<(String, RouteTarget)>,
    upstream: Option<RouteTarget>,
    resolver: TokioResolver,
    service: Service,
    own_listeners: Vec<SocketAddr>,
}

/// Where [`Router::resolve`] found a host's addresses, for error messages.
#[derive(Clone, Copy)]
enum Configured {
    Static,
    Upstream,
}

impl Router {
    /// Validates the routes and builds the DNS resolver (once; it is reused for every lookup).
    pub fn new(cfg: RouterConfig) -> Result<Self, RouteError> {
        let routes = cfg
            .routes
            .into_iter()
            .map(|(domain, target)| Ok((normalize_domain(&domain)?, target)))
            .collect::<Result<Vec<_>, RouteError>>()?;
        let builder = match cfg.resolver {
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
            None => TokioResolver::builder_tokio().map_err(|e| RouteError::SystemResolver {
                source: Box::new(e),
            })?,
        };
        let resolver = builder.build().map_err(|e| RouteError::Resolver {
            source: Box::new(e),
        })?;
        Ok(Router {
            routes,
            upstream: cfg.upstream,
            resolver,
            service: cfg.srv_service,
            own_listeners: cfg.own_listeners,
        })
    }

    /// The service this router finds servers for.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Ordered candidates for `domain` (the `to` of the initiator's stream header):
    ///
    /// 1. the static route for the domain (case-insensitive, trailing dot ignored);
    /// 2. else the upstream, if set;
    /// 3. else SRV: the Direct TLS service (`_xmpps-server._tcp.{domain}.` for [`Service::Server`]) and the
    ///    STARTTLS one (`_xmpp-server._tcp.{domain}.`) are asked together and their records ordered as one set
    ///    (XEP-0368 3; RFC 2782 order, [`order_srv`]), each target's A then AAAA addresses; `_xmpps-` records
    ///    give Direct TLS candidates. A service whose only record has target `.` is not offered and
    ///    contributes nothing; if that leaves nothing and it was the STARTTLS service that said so,
    ///    [`RouteError::NoService`];
    /// 4. if neither service has SRV records (NXDOMAIN or empty; an `_xmpps-` `.` counts as none), the
    ///    domain's A then AAAA addresses on the default port, plaintext ([`RouteSource::Fallback`]). An
    ///    IP-literal domain goes straight here, without DNS.
    ///
    /// Any other DNS failure is [`RouteError::Dns`], except that a failed SRV query is only logged (at debug)
    /// when the other service has records. Candidates that are our own listeners are removed; if none
    /// remain, [`RouteError::RoutingLoop`].
    ///
    /// Cancel-safe: dropping the future abandons the lookups and leaves the router usable.
    pub async fn candidates(&self, domain: &str) -> Result<Vec<Candidate>, RouteError> {
        let domain = normalize_domain(domain)?;
        let found = if let Some((_, target)) = self.routes.iter().find(|(d, _)| *d == domain) {
            self.configured(&domain, target, Configured::Static).await?
        } else if let Some(upstream) = &self.upstream {
            self.configured(&domain, upstream, Configured::Upstream)
                .await?
        } else if let Some(ip) = domain_ip(&domain) {
            vec![Candidate {
                addr: SocketAddr::new(ip, self.service.default_port()),
                host: domain.clone(),
                direct_tls: false,
                source: RouteSource::Fallback,
            }]
        } else {
            self.dns_candidates(&domain).await?
        };
        self.without_loops(&domain, found)
    }

    /// Candidates for a host named in the configuration (static route or upstream).
    async fn configured(
        &self,
        domain: &str,
        target: &RouteTarget,
        what: Configured,
    ) -> Result<Vec<Candidate>, RouteError> {
        let source = match what {
            Configured::Static => RouteSource::Static,
            Configured::Upstream => RouteSource::Upstream,
        };
        let direct_tls = target.direct_tls;
        let target = &target.host_port;
        let ips = match target.ip() {
            Some(ip) => vec![ip],
            None => self.addresses(domain, &target.host).await?,
        };
        if ips.is_empty() {
            return Err(RouteError::HostNotFound {
                domain: domain.to_owned(),
                what: match what {
                    Configured::Static => "static route",
                    Configured::Upstream => "upstream",
                },
                host: target.host.clone(),
            });
        }
        Ok(ips
            .into_iter()
            .map(|ip| Candidate {
                addr: SocketAddr::new(ip, target.port),
                host: target.host.clone(),
                direct_tls,
                source: source.clone(),
            })
            .collect())
    }

    /// Steps 3 and 4: SRV for both services (XEP-0368), else A/AAAA fallback.
    async fn dns_candidates(&self, domain: &str) -> Result<Vec<Candidate>, RouteError> {
        let direct_name = self.service.srv_name(true, domain);
        let starttls_name = self.service.srv_name(false, domain);
        let (direct, starttls) = tokio::join!(
            self.srv_lookup(domain, &direct_name, true),
            self.srv_lookup(domain, &starttls_name, false),
        );
        let records = match merge_srv(domain, direct, starttls)? {
            SrvPlan::Records(records) => records,
            SrvPlan::NoService => {
                return Err(RouteError::NoService {
                    domain: domain.to_owned(),
                    srv_name: starttls_name,
                    flag: self.service.route_flag(),
                })
            }
            SrvPlan::Fallback => {
                let ips = self.addresses(domain, domain).await?;
                if ips.is_empty() {
                    return Err(RouteError::NoRoute {
                        domain: domain.to_owned(),
                        srv_names: format!("{direct_name} and {starttls_name}"),
                        flag: self.service.route_flag(),
                    });
                }
                return Ok(ips
                    .into_iter()
                    .map(|ip| Candidate {
                        addr: SocketAddr::new(ip, self.service.default_port()),
                        host: domain.to_owned(),
                        direct_tls: false,
                        source: RouteSource::Fallback,
                    })
                    .collect());
            }
        };

        // The thread-local rng is not Send: order in a block so it is gone before the next await.
        let ordered = {
            let mut rng = rand::rng();
            order_srv(records, |n| rand::RngExt::random_range(&mut rng, 0..n))
        };
        let mut candidates = Vec::new();
        let mut first_error = None;
        for record in &ordered {
            if record.target == "." {
                continue;
            }
            let target = record.target.strip_suffix('.').unwrap_or(&record.target);
            match self.addresses(domain, target).await {
                Ok(ips) => candidates.extend(ips.into_iter().map(|ip| Candidate {
                    addr: SocketAddr::new(ip, record.port),
                    host: target.to_owned(),
                    direct_tls: record.direct_tls,
                    source: RouteSource::Srv {
                        service: self.service.label(record.direct_tls),
                        priority: record.priority,
                        weight: record.weight,
                        target: target.to_owned(),
                    },
                })),
                // One unresolvable target does not sink the others (RFC 2782 clients move on to the next
                // target); it only matters if no target resolves at all.
                Err(e) => {
                    warn!(domain, target, error = %e, "SRV target lookup failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if candidates.is_empty() {
            if let Some(e) = first_error {
                return Err(e);
            }
            let targets = ordered
                .iter()
                .map(|r| r.target.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let srv_names = [(true, &direct_name), (false, &starttls_name)]
                .into_iter()
                .filter(|(direct_tls, _)| ordered.iter().any(|r| r.direct_tls == *direct_tls))
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join(" and ");
            return Err(RouteError::SrvTargetsEmpty {
                domain: domain.to_owned(),
                srv_names,
                targets,
                flag: self.service.route_flag(),
            });
        }
        Ok(candidates)
    }

    /// One SRV query, its records marked `direct_tls` as given.
    async fn srv_lookup(&self, domain: &str, srv_name: &str, direct_tls: bool) -> SrvAnswer {
        let name = match dns_name(srv_name) {
            Ok(name) => name,
            Err(e) => return SrvAnswer::Failed(e),
        };
        let answer = match self.resolver.srv_lookup(name).await {
            Ok(lookup) => SrvAnswer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(SrvRecord {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: srv.target.to_ascii(),
                            direct_tls,
                        }),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) if e.is_no_records_found() => SrvAnswer::Records(Vec::new()),
            Err(source) => SrvAnswer::Failed(RouteError::Dns {
                domain: domain.to_owned(),
                query: format!("SRV {srv_name}"),
                source: Box::new(source),
                flag: self.service.route_flag(),
            }),
        };
        match &answer {
            SrvAnswer::Records(records) => {
                debug!(domain, srv = %srv_name, records = records.len(), "SRV lookup")
            }
            SrvAnswer::Failed(e) => {
                debug!(domain, srv = %srv_name, error = %e, "SRV lookup failed")
            }
        }
        answer
    }

    /// A then AAAA addresses of `host` (hosts file first, then DNS). Empty when the name has neither
    /// (NXDOMAIN or no data). If one family fails for another reason but the other has addresses, those are
    /// used; if none were found and a query failed, that failure is the error.
    async fn addresses(&self, domain: &str, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.strip_suffix('.').unwrap_or(host));
        let name = dns_name(&fqdn)?;
        let (v4, v6) = tokio::join!(
            self.resolver.lookup(name.clone(), RecordType::A),
            self.resolver.lookup(name, RecordType::AAAA),
        );
        let mut ips = Vec::new();
        let mut failure: Option<(RecordType, NetError)> = None;
        for (record_type, result) in [(RecordType::A, v4), (RecordType::AAAA, v6)] {
            match result {
                Ok(lookup) => {
                    ips.extend(
                        lookup
                            .answers()
                            .iter()
                            .filter_map(|record| match &record.data {
                                RData::A(a) => Some(IpAddr::V4(a.0)),
                                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                                _ => None,
                            }),
                    )
                }
                Err(e) if e.is_no_records_found() => {}
                Err(e) => {
                    debug!(host = %fqdn, %record_type, error = %e, "address lookup failed");
                    failure.get_or_insert((record_type, e));
                }
            }
        }
        match failure {
            Some((record_type, source)) if ips.is_empty() => Err(RouteError::Dns {
                domain: domain.to_owned(),
                query: format!("{record_type} {fqdn}"),
                source: Box::new(source),
                flag: self.service.route_flag(),
            }),
            _ => Ok(ips),
        }
    }

    /// Removes candidates that would connect back to us; errors if that removes all of them.
    fn without_loops(
        &self,
        domain: &str,
        found: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, RouteError> {
        let (looping, kept): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|c| self.is_loop(c.addr));
        for candidate in &looping {
            warn!(domain, addr = %candidate.addr, "skipping candidate: it is our own listener");
        }
        match (kept.is_empty(), looping.first()) {
            (true, Some(first)) => Err(RouteError::RoutingLoop {
                domain: domain.to_owned(),
                addr: first.addr,
                flag: self.service.route_flag(),
            }),
            _ => Ok(kept),
        }
    }

    /// [`is_own_listener`], plus: a wildcard listener on the same port also matches this host's interface
    /// addresses.
    fn is_loop(&self, addr: SocketAddr) -> bool {
        if is_own_listener(addr, &self.own_listeners) {
            return true;
        }
        let ip = addr.ip().to_canonical();
        let wildcard_on_port = self.own_listeners.iter().any(|l| {
            l.port() == addr.port()
                && l.ip().is_unspecified()
                && wildcard_covers(l.ip().to_canonical(), ip)
        });
        wildcard_on_port && is_local_ip(ip)
    }
}

/// A fully qualified DNS name, or [`RouteError::InvalidDomain`] naming it.
fn dns_name(fqdn: &str) -> Result<Name, RouteError> {
    Name::from_utf8(fqdn).map_err(|_| RouteError::InvalidDomain {
        domain: shorten(fqdn),
        reason: "not a valid DNS name",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5269,
            target: target.to_owned(),
            direct_tls: false,
        }
    }

    fn targets(records: &[SrvRecord]) -> Vec<&str> {
        records.iter().map(|r| r.target.as_str()).collect()
    }

    /// A resolver address that is never asked: tests that use it only route IP literals.
    const UNUSED_RESOLVER: &str = "127.0.0.1:9";

    fn router(cfg: RouterConfig) -> Router {
        Router::new(cfg).unwrap_or_else(|e| panic!("router: {e}"))
    }

    fn static_config(routes: &[(&str, HostPort)]) -> RouterConfig {
        RouterConfig {
            routes: routes
                .iter()
                .map(|(d, t)| ((*d).to_owned(), RouteTarget::from(t.clone())))
                .collect(),
            resolver: Some(sa(UNUSED_RESOLVER)),
            ..RouterConfig::default()
        }
    }

    #[test]
    fn host_port_parse_and_display() {
        let ok: &[(&str, &str, u16, &str)] = &[
            (
                "xmpp.example.org:5269",
                "xmpp.example.org",
                5269,
                "xmpp.example.org:5269",
            ),
            ("127.0.0.1:5222", "127.0.0.1", 5222, "127.0.0.1:5222"),
            ("[::1]:5269", "::1", 5269, "[::1]:5269"),
            (
                "[2001:db8::5]:65535",
                "2001:db8::5",
                65535,
                "[2001:db8::5]:65535",
            ),
            ("localhost:1", "localhost", 1, "localhost:1"),
        ];
        for (input, host, port, shown) in ok {
            let parsed: HostPort = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed, hp(host, *port), "{input}");
            assert_eq!(parsed.to_string(), *shown, "{input}");
            assert_eq!(
                parsed.to_string().parse::<HostPort>().ok(),
                Some(parsed),
                "{input} round trip"
            );
        }
        type Expect = fn(&HostPortError) -> bool;
        let bad: &[(&str, Expect)] = &[
            ("example.org", |e| {
                matches!(e, HostPortError::MissingPort { .. })
            }),
            ("[::1]", |e| matches!(e, HostPortError::MissingPort { .. })),
            ("example.org:", |e| {
                matches!(e, HostPortError::InvalidPort { .. })
            }),
            ("example.org:0", |e| {
                matches!(e, HostPortError::InvalidPort { .. })
            }),
            ("example.org:65536", |e| {
                matches!(e, HostPortError::InvalidPort { .. })
            }),
            ("example.org:http", |e| {
                matches!(e, HostPortError::InvalidPort { .. })
            }),
            ("::1:5269", |e| {
                matches!(e, HostPortError::UnbracketedIpv6 { .. })
            }),
            (":5269", |e| matches!(e, HostPortError::InvalidHost { .. })),
            ("exa mple.org:5269", |e| {
                matches!(e, HostPortError::InvalidHost { .. })
            }),
            ("a/b:5269", |e| {
                matches!(e, HostPortError::InvalidHost { .. })
            }),
            ("[example.org]:5269", |e| {
                matches!(e, HostPortError::InvalidHost { .. })
            }),
            ("[::1]5269", |e| {
                matches!(e, HostPortError::InvalidHost { .. })
            }),
        ];
        for (input, expected) in bad {
            match input.parse::<HostPort>() {
                Ok(parsed) => panic!("{input} parsed as {parsed:?}"),
                Err(e) => assert!(expected(&e), "{input}: unexpected error {e:?}"),
            }
        }
    }

    #[test]
    fn route_target_parse_and_display() {
        let ok: &[(&str, &str, u16, bool, &str)] = &[
            ("b.test:5269", "b.test", 5269, false, "b.test:5269"),
            (
                "tls://b.test:5270",
                "b.test",
                5270,
                true,
                "tls://b.test:5270",
            ),
            (
                "TLS://b.test:5270",
                "b.test",
                5270,
                true,
                "tls://b.test:5270",
            ),
            (
                "tls://192.0.2.1:5223",
                "192.0.2.1",
                5223,
                true,
                "tls://192.0.2.1:5223",
            ),
            (
                "tls://[2001:db8::1]:5223",
                "2001:db8::1",
                5223,
                true,
                "tls://[2001:db8::1]:5223",
            ),
            ("[::1]:5222", "::1", 5222, false, "[::1]:5222"),
        ];
        for (input, host, port, direct_tls, shown) in ok {
            let parsed: RouteTarget = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                parsed,
                RouteTarget {
                    host_port: hp(host, *port),
                    direct_tls: *direct_tls
                },
                "{input}"
            );
            assert_eq!(parsed.to_string(), *shown, "{input}");
            assert_eq!(
                parsed.to_string().parse::<RouteTarget>().ok(),
                Some(parsed.clone()),
                "{input} round trip"
            );
            assert_eq!(
                serde_json::to_string(&parsed).unwrap_or_default(),
                format!("\"{shown}\""),
                "{input} as JSON"
            );
        }
        type Expect = fn(&RouteTargetError) -> bool;
        let bad: &[(&str, Expect)] = &[
            (
                "tcp://b.test:5269",
                |e| matches!(e, RouteTargetError::UnknownScheme { scheme, .. } if scheme == "tcp://"),
            ),
            ("xmpps://b.test:5223", |e| {
                matches!(e, RouteTargetError::UnknownScheme { .. })
            }),
            ("://b.test:5269", |e| {
                matches!(e, RouteTargetError::UnknownScheme { .. })
            }),
            ("tls://b.test", |e| {
                matches!(
                    e,
                    RouteTargetError::HostPort(HostPortError::MissingPort { .. })
                )
            }),
            ("tls://", |e| {
                matches!(
                    e,
                    RouteTargetError::HostPort(HostPortError::MissingPort { .. })
                )
            }),
            ("tls://b.test:0", |e| {
                matches!(
                    e,
                    RouteTargetError::HostPort(HostPortError::InvalidPort { .. })
                )
            }),
            ("tls://tls://b.test:5270", |e| {
                matches!(e, RouteTargetError::HostPort(_))
            }),
            ("tls://::1:5223", |e| {
                matches!(
                    e,
                    RouteTargetError::HostPort(HostPortError::UnbracketedIpv6 { .. })
                )
            }),
            ("b.test", |e| {
                matches!(
                    e,
                    RouteTargetError::HostPort(HostPortError::MissingPort { .. })
                )
            }),
        ];
        for (input, expected) in bad {
            match input.parse::<RouteTarget>() {
                Ok(parsed) => panic!("{input} parsed as {parsed:?}"),
                Err(e) => assert!(expected(&e), "{input}: unexpected error {e:?}"),
            }
        }
        let err = "tcp://b.test:5269"
            .parse::<RouteTarget>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "\"tcp://b.test:5269\" has an unknown scheme \"tcp://\"; write HOST:PORT, \
                 or tls://HOST:PORT for Direct TLS"
            )
        );
    }

    #[test]
    fn service_names_and_ports() {
        assert_eq!(
            (
                Service::Server.srv_name(true, "b.test"),
                Service::Server.srv_name(false, "b.test"),
                Service::Server.default_port(),
                Service::Server.route_flag()
            ),
            (
                "_xmpps-server._tcp.b.test.".to_owned(),
                "_xmpp-server._tcp.b.test.".to_owned(),
                5269,
                "--route"
            )
        );
        assert_eq!(
            (
                Service::Client.srv_name(true, "b.test"),
                Service::Client.srv_name(false, "b.test"),
                Service::Client.default_port(),
                Service::Client.route_flag()
            ),
            (
                "_xmpps-client._tcp.b.test.".to_owned(),
                "_xmpp-client._tcp.b.test.".to_owned(),
                5222,
                "--c2s-route"
            )
        );
        assert_eq!(Service::default(), Service::Server);
    }

    #[test]
    fn merge_srv_table() {
        /// What a test answer is: records (`"t"` plain, `"T"` Direct TLS), a lone ".", or a failure.
        #[derive(Clone, Copy)]
        enum A {
            Recs(&'static [&'static str]),
            Dot,
            Empty,
            Fail(&'static str),
        }
        fn answer(a: A, direct_tls: bool) -> SrvAnswer {
            let record = |target: &str| SrvRecord {
                direct_tls,
                ..srv(0, 0, target)
            };
            match a {
                A::Recs(targets) => SrvAnswer::Records(targets.iter().map(|t| record(t)).collect()),
                A::Dot => SrvAnswer::Records(vec![record(".")]),
                A::Empty => SrvAnswer::Records(vec![]),
                A::Fail(query) => SrvAnswer::Failed(RouteError::Dns {
                    domain: "b.test".into(),
                    query: query.into(),
                    source: Box::new(NetError::Message("SERVFAIL")),
                    flag: "--route",
                }),
            }
        }
        fn outcome(result: Result<SrvPlan, RouteError>) -> String {
            match result {
                Ok(SrvPlan::Records(records)) => records
                    .iter()
                    .map(|r| format!("{}{}", if r.direct_tls { "+" } else { "" }, r.target))
                    .collect::<Vec<_>>()
                    .join(" "),
                Ok(SrvPlan::Fallback) => "fallback".into(),
                Ok(SrvPlan::NoService) => "no service".into(),
                Err(RouteError::Dns { query, .. }) => format!("error {query}"),
                Err(e) => format!("unexpected {e}"),
            }
        }
        use A::*;
        let cases: &[(A, A, &str)] = &[
            // Both services: one set, Direct TLS first.
            (Recs(&["d1", "d2"]), Recs(&["s1"]), "+d1 +d2 s1"),
            (Recs(&["d1"]), Empty, "+d1"),
            (Empty, Recs(&["s1"]), "s1"),
            // A lone "." takes its service out.
            (Dot, Recs(&["s1"]), "s1"),
            (Recs(&["d1"]), Dot, "+d1"),
            (Dot, Dot, "no service"),
            (Empty, Dot, "no service"),
            // The fallback belongs to the STARTTLS service: an _xmpps- "." does not stop it.
            (Dot, Empty, "fallback"),
            (Empty, Empty, "fallback"),
            // "." among other records is not "no service"; the resolver skips it.
            (Recs(&[".", "d1"]), Empty, "+. +d1"),
            // A failure beside records is ignored.
            (Fail("SRV d"), Recs(&["s1"]), "s1"),
            (Recs(&["d1"]), Fail("SRV s"), "+d1"),
            // Otherwise a failure wins: the failed service might have had records.
            (Fail("SRV d"), Empty, "error SRV d"),
            (Fail("SRV d"), Dot, "error SRV d"),
            (Empty, Fail("SRV s"), "error SRV s"),
            (Dot, Fail("SRV s"), "error SRV s"),
            (Fail("SRV d"), Fail("SRV s"), "error SRV s"),
        ];
        for (i, (direct, starttls, expected)) in cases.iter().enumerate() {
            let got = outcome(merge_srv(
                "b.test",
                answer(*direct, true),
                answer(*starttls, false),
            ));
            assert_eq!(got, *expected, "case {i}");
        }
    }

    #[test]
    fn order_srv_mixes_direct_tls_and_starttls_records() {
        let direct = |priority, weight, target: &str| SrvRecord {
            direct_tls: true,
            ..srv(priority, weight, target)
        };
        // Priority decides across services; weight 0 ties keep the merged order (Direct TLS first).
        let ordered = order_srv(
            vec![
                direct(5, 0, "d5"),
                direct(0, 0, "d0"),
                srv(0, 0, "s0"),
                srv(1, 0, "s1"),
            ],
            |_| 0,
        );
        assert_eq!(targets(&ordered), ["d0", "s0", "s1", "d5"]);
        assert_eq!(
            ordered.iter().map(|r| r.direct_tls).collect::<Vec<_>>(),
            [true, false, false, true]
        );
        // Equal priority, weights 10 (Direct TLS) and 90: the random number picks across services.
        let picked = |random| {
            let ordered = order_srv(vec![direct(0, 10, "d"), srv(0, 90, "s")], |_| random);
            targets(&ordered).join(" ")
        };
        assert_eq!(picked(10), "d s");
        assert_eq!(picked(11), "s d");
    }

    #[test]
    fn domains_are_validated_and_normalized() {
        let long_label = "a".repeat(64);
        let long_domain = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_domain.len(), 254);
        let ok: &[(&str, &str)] = &[
            ("B.Test", "b.test"),
            ("b.test.", "b.test"),
            ("localhost", "localhost"),
            ("192.0.2.1", "192.0.2.1"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            (&long_domain[1..], &long_domain[1..]),
        ];
        for (input, normalized) in ok {
            assert_eq!(
                normalize_domain(input).ok().as_deref(),
                Some(*normalized),
                "{input}"
            );
        }
        for input in [
            "",
            ".",
            "b test",
            "b/test",
            "a@b.test",
            "b.test:5269",
            "a..b",
            ".b.test",
            "x\u{0}y",
            "[b.test]",
            &long_label,
            &long_domain,
        ] {
            assert!(
                matches!(
                    normalize_domain(input),
                    Err(RouteError::InvalidDomain { .. })
                ),
                "{input:?} should be invalid"
            );
        }
    }

    #[test]
    fn order_srv_table() {
        // (records, random numbers to return, expected target order, expected bounds asked for)
        type Case = (Vec<SrvRecord>, Vec<u32>, Vec<&'static str>, Vec<u32>);
        let cases: Vec<Case> = vec![
            // Priorities ascend, whatever the answer order.
            (
                vec![srv(20, 5, "c"), srv(0, 5, "a"), srv(10, 5, "b")],
                vec![0, 0, 0],
                vec!["a", "b", "c"],
                vec![6, 6, 6],
            ),
            // Weighted pick, as RFC 2782 computes it: weight-0 first, running sums 0,20,50,60.
            // 25 -> D (50); then A0,C20,B10: sums 0,20,30; 0 -> A; then C20,B10: 20,30; 21 -> B; then C.
            (
                vec![
                    srv(1, 20, "C"),
                    srv(1, 0, "A"),
                    srv(1, 30, "D"),
                    srv(1, 10, "B"),
                ],
                vec![25, 0, 21, 0],
                vec!["D", "A", "B", "C"],
                vec![61, 31, 31, 21],
            ),
            // Weight-0 records come first among equals: a random 0 picks them.
            (
                vec![srv(5, 10, "heavy"), srv(5, 0, "zero")],
                vec![0, 0],
                vec!["zero", "heavy"],
                vec![11, 11],
            ),
            // ... but any other number skips them.
            (
                vec![srv(5, 10, "heavy"), srv(5, 0, "zero")],
                vec![1, 0],
                vec!["heavy", "zero"],
                vec![11, 1],
            ),
            // All weights zero: answer order is kept.
            (
                vec![srv(0, 0, "x"), srv(0, 0, "y")],
                vec![0, 0],
                vec!["x", "y"],
                vec![1, 1],
            ),
            // The running sum boundary is inclusive: 10 still picks the first (weight 10).
            (
                vec![srv(0, 10, "p"), srv(0, 10, "q")],
                vec![10, 0],
                vec!["p", "q"],
                vec![21, 11],
            ),
            (
                vec![srv(0, 10, "p"), srv(0, 10, "q")],
                vec![11, 0],
                vec!["q", "p"],
                vec![21, 11],
            ),
            // An out-of-range random number is clamped, not a panic.
            (
                vec![srv(0, 1, "p"), srv(0, 1, "q")],
                vec![u32::MAX, 0],
                vec!["q", "p"],
                vec![3, 2],
            ),
            (vec![], vec![], vec![], vec![]),
        ];
        for (i, (records, randoms, expected, expected_bounds)) in cases.into_iter().enumerate() {
            let mut randoms = randoms.into_iter();
            let mut bounds = Vec::new();
            let ordered = order_srv(records, |n| {
                bounds.push(n);
                randoms.next().unwrap_or(0)
            });
            assert_eq!(targets(&ordered), expected, "case {i}");
            assert_eq!(bounds, expected_bounds, "case {i}: bounds");
        }
    }

    #[test]
    fn order_srv_weights_hold_statistically() {
        let mut rng = rand::rng();
        let runs = 2000;
        let heavy_first = (0..runs)
            .filter(|_| {
                let ordered = order_srv(vec![srv(0, 10, "light"), srv(0, 90, "heavy")], |n| {
                    rand::RngExt::random_range(&mut rng, 0..n)
                });
                ordered[0].target == "heavy"
            })
            .count();
        let share = heavy_first as f64 / runs as f64;
        // Expected 90/101 (the range is inclusive); 2000 runs give a standard deviation of about 0.7%.
        assert!(
            (0.85..=0.95).contains(&share),
            "heavy first in {share:.3} of runs"
        );
    }

    #[test]
    fn own_listener_table() {
        let cases: &[(&str, &[&str], bool)] = &[
            ("127.0.0.1:5269", &["127.0.0.1:5269"], true),
            ("127.0.0.1:5270", &["127.0.0.1:5269"], false),
            ("127.0.0.2:5269", &["127.0.0.1:5269"], false),
            ("192.0.2.1:5269", &["192.0.2.1:5269"], true),
            ("127.0.0.1:5269", &["0.0.0.0:5269"], true),
            ("127.1.2.3:5269", &["0.0.0.0:5269"], true),
            ("0.0.0.0:5269", &["0.0.0.0:5269"], true),
            ("192.0.2.1:5269", &["0.0.0.0:5269"], false),
            ("127.0.0.1:5222", &["0.0.0.0:5269"], false),
            ("[::1]:5269", &["0.0.0.0:5269"], false),
            ("[::1]:5269", &["[::]:5269"], true),
            ("127.0.0.1:5269", &["[::]:5269"], true),
            ("[::ffff:127.0.0.1]:5269", &["0.0.0.0:5269"], true),
            ("[::ffff:192.0.2.1]:5269", &["192.0.2.1:5269"], true),
            ("[2001:db8::1]:5269", &["[::]:5269"], false),
            ("127.0.0.1:5269", &["192.0.2.7:1", "127.0.0.1:5269"], true),
            ("127.0.0.1:5269", &[], false),
        ];
        for (addr, listeners, expected) in cases {
            let listeners: Vec<SocketAddr> = listeners.iter().map(|l| sa(l)).collect();
            assert_eq!(
                is_own_listener(sa(addr), &listeners),
                *expected,
                "{addr} vs {listeners:?}"
            );
        }
    }

    #[test]
    fn local_interface_addresses_count_for_wildcard_listeners() {
        // Loopback is local, unless this host lets anything be bound (ip_nonlocal_bind), which turns the
        // interface check off; a documentation address is never local.
        assert!(
            is_local_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)) || UdpSocket::bind("192.0.2.1:0").is_ok()
        );
        assert!(!is_local_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))));
        let r = router(RouterConfig {
            own_listeners: vec![sa("0.0.0.0:5269")],
            ..static_config(&[])
        });
        assert!(!r.is_loop(sa("192.0.2.99:5269")));
        assert!(r.is_loop(sa("127.0.0.5:5269")));
    }

    #[tokio::test]
    async fn static_route_wins_then_upstream() {
        let r = router(RouterConfig {
            upstream: Some(hp("192.0.2.9", 5222).into()),
            ..static_config(&[
                ("B.test.", hp("192.0.2.1", 5270)),
                ("v6.test", hp("2001:db8::2", 5269)),
            ])
        });
        let got = r
            .candidates("b.TEST.")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            vec![Candidate {
                addr: sa("192.0.2.1:5270"),
                host: "192.0.2.1".into(),
                direct_tls: false,
                source: RouteSource::Static
            }]
        );
        let got = r
            .candidates("v6.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0].addr, sa("[2001:db8::2]:5269"));
        let got = r
            .candidates("other.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            vec![Candidate {
                addr: sa("192.0.2.9:5222"),
                host: "192.0.2.9".into(),
                direct_tls: false,
                source: RouteSource::Upstream
            }]
        );
    }

    #[tokio::test]
    async fn ip_literal_domain_needs_no_dns() {
        let r = router(static_config(&[]));
        let got = r
            .candidates("192.0.2.4")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0].addr, sa("192.0.2.4:5269"));
        assert_eq!(got[0].source, RouteSource::Fallback);
        let got = r
            .candidates("[2001:db8::4]")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0].addr, sa("[2001:db8::4]:5269"));
    }

    #[tokio::test]
    async fn invalid_domain_is_rejected_before_dns() {
        let r = router(static_config(&[]));
        let err = r.candidates("evil domain/../").await.err();
        assert!(
            matches!(err, Some(RouteError::InvalidDomain { .. })),
            "{err:?}"
        );
        assert!(matches!(
            Router::new(static_config(&[("bad domain", hp("192.0.2.1", 1))])),
            Err(RouteError::InvalidDomain { .. })
        ));
    }

    #[tokio::test]
    async fn route_to_own_listener_is_a_loop() {
        for listener in ["127.0.0.1:5999", "0.0.0.0:5999"] {
            let r = router(RouterConfig {
                own_listeners: vec![sa(listener)],
                ..static_config(&[("b.test", hp("127.0.0.1", 5999))])
            });
            match r.candidates("b.test").await {
                Err(e @ RouteError::RoutingLoop { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("127.0.0.1:5999") && text.contains("--route b.test="),
                        "{text}"
                    );
                }
                other => panic!("{listener}: expected a routing loop, got {other:?}"),
            }
        }
    }

    #[test]
    fn serializes_route_source_for_the_transcript() {
        let srv = RouteSource::Srv {
            service: "_xmpps-server",
            priority: 1,
            weight: 2,
            target: "x.test".into(),
        };
        let json = serde_json::to_string(&srv).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"kind":"srv","service":"_xmpps-server","priority":1,"weight":2,"target":"x.test"}"#
        );
        assert_eq!(
            serde_json::to_string(&RouteSource::Static).unwrap_or_default(),
            r#"{"kind":"static"}"#
        );
    }

    /// A tiny authoritative DNS server on 127.0.0.1:0 with a fixed zone, for real SRV/A lookups.
    mod fake_dns {
        use hickory_resolver::proto::op::{Message, ResponseCode};
        use hickory_resolver::proto::rr::rdata::{A, SRV};
        use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
        use std::net::{Ipv4Addr, SocketAddr};
        use tokio::net::UdpSocket;

        fn name(text: &str) -> Name {
            Name::from_ascii(text).unwrap_or_else(|e| panic!("{text}: {e}"))
        }

        /// The answer for one question: response code and answer records.
        fn answer(qname: &str, qtype: RecordType) -> (ResponseCode, Vec<RData>) {
            let srv = |p, w, port, target: &str| RData::SRV(SRV::new(p, w, port, name(target)));
            let a = |a, b, c, d| RData::A(A(Ipv4Addr::new(a, b, c, d)));
            match (qname, qtype) {
                // b.test: two SRV records, the preferred one listed second.
                ("_xmpp-server._tcp.b.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![
                        srv(20, 0, 5271, "backup.b.test."),
                        srv(10, 0, 5270, "main.b.test."),
                    ],
                ),
                ("main.b.test.", RecordType::A) => (
                    ResponseCode::NoError,
                    vec![a(192, 0, 2, 10), a(192, 0, 2, 11)],
                ),
                ("backup.b.test.", RecordType::A) => {
                    (ResponseCode::NoError, vec![a(192, 0, 2, 20)])
                }
                ("main.b.test." | "backup.b.test.", RecordType::AAAA) => {
                    (ResponseCode::NoError, vec![])
                }
                // a.test: no SRV, but an A record.
                ("a.test.", RecordType::A) => (ResponseCode::NoError, vec![a(192, 0, 2, 30)]),
                ("a.test.", RecordType::AAAA) => (ResponseCode::NoError, vec![]),
                // d.test: SRV lookups fail; it has an A record that must not be used.
                ("_xmpp-server._tcp.d.test.", RecordType::SRV) => (ResponseCode::ServFail, vec![]),
                ("d.test.", RecordType::A) => (ResponseCode::NoError, vec![a(192, 0, 2, 40)]),
                // e.test: decidedly no service.
                ("_xmpp-server._tcp.e.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 0, ".")])
                }
                // loop.test: SRV pointing at localhost.
                ("_xmpp-server._tcp.loop.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(0, 0, 5998, "self.loop.test.")],
                ),
                ("self.loop.test.", RecordType::A) => {
                    (ResponseCode::NoError, vec![a(127, 0, 0, 1)])
                }
                ("self.loop.test.", RecordType::AAAA) => (ResponseCode::NoError, vec![]),
                // XEP-0368: Direct TLS (`_xmpps-`) records mixed with STARTTLS (`_xmpp-`) ones. The targets
                // tls.x.test and plain.x.test serve every zone below.
                ("tls.x.test.", RecordType::A) => (ResponseCode::NoError, vec![a(192, 0, 2, 50)]),
                ("plain.x.test.", RecordType::A) => (ResponseCode::NoError, vec![a(192, 0, 2, 51)]),
                ("tls.x.test." | "plain.x.test.", RecordType::AAAA) => {
                    (ResponseCode::NoError, vec![])
                }
                // x.test: Direct TLS at priority 0 beats STARTTLS at priority 5; also for C2S.
                ("_xmpps-server._tcp.x.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 5270, "tls.x.test.")])
                }
                ("_xmpp-server._tcp.x.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(5, 0, 5269, "plain.x.test.")],
                ),
                ("_xmpps-client._tcp.x.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 5223, "tls.x.test.")])
                }
                ("_xmpp-client._tcp.x.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(5, 0, 5222, "plain.x.test.")],
                ),
                // y.test: the other way round, STARTTLS preferred.
                ("_xmpps-server._tcp.y.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(10, 0, 5270, "tls.x.test.")])
                }
                ("_xmpp-server._tcp.y.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(1, 0, 5269, "plain.x.test.")],
                ),
                // w.test: equal priorities, Direct TLS weighted 90 against 10.
                ("_xmpps-server._tcp.w.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(3, 90, 5270, "tls.x.test.")])
                }
                ("_xmpp-server._tcp.w.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(3, 10, 5269, "plain.x.test.")],
                ),
                // tie.test: equal priorities, both weight 0.
                ("_xmpps-server._tcp.tie.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(3, 0, 5270, "tls.x.test.")])
                }
                ("_xmpp-server._tcp.tie.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(3, 0, 5269, "plain.x.test.")],
                ),
                // nodirect.test: "no Direct TLS here", STARTTLS records.
                ("_xmpps-server._tcp.nodirect.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 0, ".")])
                }
                ("_xmpp-server._tcp.nodirect.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(5, 0, 5269, "plain.x.test.")],
                ),
                // onlydirect.test: Direct TLS records, "no STARTTLS here".
                ("_xmpps-server._tcp.onlydirect.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(5, 0, 5270, "tls.x.test.")])
                }
                ("_xmpp-server._tcp.onlydirect.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 0, ".")])
                }
                // none.test: no service of either kind.
                (
                    "_xmpps-server._tcp.none.test." | "_xmpp-server._tcp.none.test.",
                    RecordType::SRV,
                ) => (ResponseCode::NoError, vec![srv(0, 0, 0, ".")]),
                // dotfb.test: "no Direct TLS", no STARTTLS records at all: A/AAAA fallback.
                ("_xmpps-server._tcp.dotfb.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(0, 0, 0, ".")])
                }
                ("dotfb.test.", RecordType::A) => (ResponseCode::NoError, vec![a(192, 0, 2, 60)]),
                ("dotfb.test.", RecordType::AAAA) => (ResponseCode::NoError, vec![]),
                // fail1.test / fail2.test: one of the two SRV queries fails, the other has records.
                ("_xmpps-server._tcp.fail1.test.", RecordType::SRV)
                | ("_xmpp-server._tcp.fail2.test.", RecordType::SRV) => {
                    (ResponseCode::ServFail, vec![])
                }
                ("_xmpp-server._tcp.fail1.test.", RecordType::SRV) => (
                    ResponseCode::NoError,
                    vec![srv(5, 0, 5269, "plain.x.test.")],
                ),
                ("_xmpps-server._tcp.fail2.test.", RecordType::SRV) => {
                    (ResponseCode::NoError, vec![srv(5, 0, 5270, "tls.x.test.")])
                }
                // failboth.test: both fail; it has an A record that must not be used.
                (
                    "_xmpps-server._tcp.failboth.test." | "_xmpp-server._tcp.failboth.test.",
                    RecordType::SRV,
                ) => (ResponseCode::ServFail, vec![]),
                ("failboth.test.", RecordType::A) => {
                    (ResponseCode::NoError, vec![a(192, 0, 2, 70)])
                }
                // Everything else (a.test SRV, c.test entirely) does not exist.
                _ => (ResponseCode::NXDomain, vec![]),
            }
        }

        fn respond(request: &[u8]) -> Option<Vec<u8>> {
            let request = Message::from_vec(request).ok()?;
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            response.edns = request.edns.clone();
            for query in &request.queries {
                let qname = query.name().to_ascii().to_lowercase();
                let (code, rdatas) = answer(&qname, query.query_type());
                response.metadata.response_code = code;
                for rdata in rdatas {
                    response.add_answer(Record::from_rdata(query.name().clone(), 60, rdata));
                }
                response.add_query(query.clone());
            }
            response.to_vec().ok()
        }

        /// Starts the server; it runs until the test's runtime ends.
        pub(super) async fn start() -> SocketAddr {
            let socket = UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = socket
                .local_addr()
                .unwrap_or_else(|e| panic!("local_addr: {e}"));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                    if let Some(reply) = respond(&buf[..len]) {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                }
            });
            addr
        }
    }

    async fn dns_router(own_listeners: Vec<SocketAddr>) -> Router {
        let server = fake_dns::start().await;
        router(RouterConfig {
            resolver: Some(server),
            own_listeners,
            ..RouterConfig::default()
        })
    }

    #[tokio::test]
    async fn srv_records_in_priority_order_with_all_addresses() {
        let r = dns_router(vec![]).await;
        let got = r
            .candidates("B.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let main = RouteSource::Srv {
            service: "_xmpp-server",
            priority: 10,
            weight: 0,
            target: "main.b.test".into(),
        };
        let backup = RouteSource::Srv {
            service: "_xmpp-server",
            priority: 20,
            weight: 0,
            target: "backup.b.test".into(),
        };
        let expected = vec![
            Candidate {
                addr: sa("192.0.2.10:5270"),
                host: "main.b.test".into(),
                direct_tls: false,
                source: main.clone(),
            },
            Candidate {
                addr: sa("192.0.2.11:5270"),
                host: "main.b.test".into(),
                direct_tls: false,
                source: main,
            },
            Candidate {
                addr: sa("192.0.2.20:5271"),
                host: "backup.b.test".into(),
                direct_tls: false,
                source: backup,
            },
        ];
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn no_srv_falls_back_to_a_records() {
        let r = dns_router(vec![]).await;
        let got = r
            .candidates("a.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            vec![Candidate {
                addr: sa("192.0.2.30:5269"),
                host: "a.test".into(),
                direct_tls: false,
                source: RouteSource::Fallback
            }]
        );
    }

    #[tokio::test]
    async fn dns_outcomes_that_are_errors() {
        let r = dns_router(vec![sa("0.0.0.0:5998")]).await;
        match r.candidates("c.test").await {
            Err(e @ RouteError::NoRoute { .. }) => assert_eq!(
                e.to_string(),
                "no route to c.test: SRV _xmpps-server._tcp.c.test. and _xmpp-server._tcp.c.test. are \
                 empty, and so is A/AAAA c.test.; add --route c.test=HOST:PORT"
            ),
            other => panic!("c.test: {other:?}"),
        }
        match r.candidates("d.test").await {
            Err(e @ RouteError::Dns { .. }) => {
                assert!(
                    e.to_string().contains("SRV _xmpp-server._tcp.d.test."),
                    "{e}"
                )
            }
            other => panic!("d.test must not fall back on SERVFAIL: {other:?}"),
        }
        let got = r.candidates("e.test").await;
        assert!(
            matches!(got, Err(RouteError::NoService { .. })),
            "e.test: {got:?}"
        );
        let got = r.candidates("loop.test").await;
        assert!(
            matches!(got, Err(RouteError::RoutingLoop { .. })),
            "loop.test: {got:?}"
        );
    }

    /// `(address, direct_tls, how chosen)` of each candidate, for compact expectations.
    fn summary(candidates: &[Candidate]) -> Vec<(SocketAddr, bool, &'static str)> {
        candidates
            .iter()
            .map(|c| {
                let how = match &c.source {
                    RouteSource::Srv { service, .. } => *service,
                    RouteSource::Static => "static",
                    RouteSource::Upstream => "upstream",
                    RouteSource::Fallback => "fallback",
                };
                (c.addr, c.direct_tls, how)
            })
            .collect()
    }

    fn expect(list: &[(&str, bool, &'static str)]) -> Vec<(SocketAddr, bool, &'static str)> {
        list.iter().map(|(a, d, s)| (sa(a), *d, *s)).collect()
    }

    #[tokio::test]
    async fn direct_tls_and_starttls_srv_records_are_ordered_together() {
        let r = dns_router(vec![]).await;
        let tls = ("192.0.2.50:5270", true, "_xmpps-server");
        let plain = ("192.0.2.51:5269", false, "_xmpp-server");
        type Row = (&'static str, bool, &'static str);
        let cases: &[(&str, &[Row])] = &[
            // _xmpps- priority 0 beats _xmpp- priority 5, and the other way round.
            ("x.test", &[tls, plain]),
            ("y.test", &[plain, tls]),
            // Equal priority and weight 0: the Direct TLS record, merged first, is tried first.
            ("tie.test", &[tls, plain]),
            // A "." takes its service out.
            ("nodirect.test", &[plain]),
            ("onlydirect.test", &[tls]),
            // No SRV records for STARTTLS and "no Direct TLS": A/AAAA on 5269, plaintext.
            ("dotfb.test", &[("192.0.2.60:5269", false, "fallback")]),
            // NXDOMAIN for both services: A/AAAA on 5269, plaintext.
            ("a.test", &[("192.0.2.30:5269", false, "fallback")]),
            // One query fails, the other has records: those are used.
            ("fail1.test", &[plain]),
            ("fail2.test", &[tls]),
        ];
        for (domain, expected) in cases {
            let got = r
                .candidates(domain)
                .await
                .unwrap_or_else(|e| panic!("{domain}: {e}"));
            assert_eq!(summary(&got), expect(expected), "{domain}");
        }
    }

    #[tokio::test]
    async fn equal_priorities_are_weighted_across_services() {
        let r = dns_router(vec![]).await;
        let runs = 300;
        let mut direct_first = 0;
        for _ in 0..runs {
            let got = r
                .candidates("w.test")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.len(), 2, "{got:?}");
            assert_ne!(got[0].direct_tls, got[1].direct_tls, "{got:?}");
            if got[0].direct_tls {
                direct_first += 1;
            }
        }
        let share = f64::from(direct_first) / f64::from(runs);
        // Direct TLS weighs 90 against 10: first in 91/101 of runs (RFC 2782's range is inclusive); 300 runs
        // give a standard deviation of about 1.7%.
        assert!(
            (0.80..=0.97).contains(&share),
            "Direct TLS first in {share:.3} of runs"
        );
    }

    #[tokio::test]
    async fn srv_answers_that_are_errors() {
        let r = dns_router(vec![]).await;
        match r.candidates("none.test").await {
            Err(e @ RouteError::NoService { .. }) => assert_eq!(
                e.to_string(),
                "none.test says it offers no XMPP service: SRV _xmpp-server._tcp.none.test. has \
                 target \".\"; add --route none.test=HOST:PORT to send it somewhere anyway"
            ),
            other => panic!("none.test: {other:?}"),
        }
        match r.candidates("failboth.test").await {
            Err(e @ RouteError::Dns { .. }) => assert!(
                e.to_string()
                    .starts_with("DNS query SRV _xmpp-server._tcp.failboth.test. failed"),
                "{e}"
            ),
            other => {
                panic!("failboth.test must not fall back when both SRV queries fail: {other:?}")
            }
        }
    }

    #[tokio::test]
    async fn client_router_asks_the_client_services() {
        let server = fake_dns::start().await;
        let r = router(RouterConfig {
            resolver: Some(server),
            srv_service: Service::Client,
            ..RouterConfig::default()
        });
        assert_eq!(r.service(), Service::Client);
        let got = r
            .candidates("x.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary(&got),
            expect(&[
                ("192.0.2.50:5223", true, "_xmpps-client"),
                ("192.0.2.51:5222", false, "_xmpp-client")
            ])
        );
        let got = r
            .candidates("a.test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary(&got),
            expect(&[("192.0.2.30:5222", false, "fallback")])
        );
        let got = r
            .candidates("192.0.2.4")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary(&got),
            expect(&[("192.0.2.4:5222", false, "fallback")])
        );
        match r.candidates("c.test").await {
            Err(e @ RouteError::NoRoute { .. }) => assert_eq!(
                e.to_string(),
                "no route to c.test: SRV _xmpps-client._tcp.c.test. and _xmpp-client._tcp.c.test. are \
                 empty, and so is A/AAAA c.test.; add --c2s-route c.test=HOST:PORT"
            ),
            other => panic!("c.test: {other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_routes_give_direct_tls_candidates() {
        let target = |text: &str| {
            text.parse::<RouteTarget>()
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        let r = router(RouterConfig {
            routes: vec![
                ("d.test".into(), target("tls://192.0.2.1:5270")),
                ("p.test".into(), target("192.0.2.2:5269")),
            ],
            upstream: Some(target("TLS://[2001:db8::9]:5223")),
            resolver: Some(sa(UNUSED_RESOLVER)),
            ..RouterConfig::default()
        });
        let cases: &[(&str, (&str, bool, &str))] = &[
            ("d.test", ("192.0.2.1:5270", true, "static")),
            ("p.test", ("192.0.2.2:5269", false, "static")),
            ("other.test", ("[2001:db8::9]:5223", true, "upstream")),
        ];
        for (domain, expected) in cases {
            let got = r
                .candidates(domain)
                .await
                .unwrap_or_else(|e| panic!("{domain}: {e}"));
            assert_eq!(summary(&got), expect(&[*expected]), "{domain}");
        }
    }
}
