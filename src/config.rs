//! The settings `xmpptap proxy` runs with: the TOML config file merged with command-line flags (flags win),
//! then validated into a [`ProxyConfig`]. Nothing here opens sockets or touches the CA.

use crate::cli::{ClientCert, ProxyArgs, UpstreamTls};
use crate::tap::redact::Redaction;
use crate::tls::UpstreamTrust;
use crate::upstream::connect::ConnectPolicy;
use crate::upstream::route::{RouteTarget, RouterConfig, Service};
use crate::xml::framer::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default S2S listening address.
pub const DEFAULT_S2S_LISTEN: &str = "0.0.0.0:5269";

/// A setting that cannot be used. The message says which setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for xmpptap (unknown keys are errors too).
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(String),
}

/// The config file. Keys are the flag names with underscores; unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub s2s_listen: Option<Vec<SocketAddr>>,
    pub c2s_listen: Option<Vec<SocketAddr>>,
    pub s2s_tls_listen: Option<Vec<SocketAddr>>,
    pub c2s_tls_listen: Option<Vec<SocketAddr>>,
    pub default_domain: Option<String>,
    pub strip_starttls: Option<bool>,
    pub require_tls: Option<bool>,
    pub client_cert: Option<ClientCert>,
    /// `routes = { "b.test" = "10.0.0.3:5269", "d.test" = "tls://10.0.0.4:5270" }`
    pub routes: Option<BTreeMap<String, String>>,
    pub upstream: Option<String>,
    /// `c2s_routes = { "b.test" = "10.0.0.3:5222" }`: as `routes`, for client-to-server streams.
    pub c2s_routes: Option<BTreeMap<String, String>>,
    pub c2s_upstream: Option<String>,
    pub resolver: Option<SocketAddr>,
    pub upstream_ca: Option<PathBuf>,
    pub dangerous_accept_any_upstream_cert: Option<bool>,
    pub upstream_tls: Option<UpstreamTls>,
    pub ca_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub redact: Option<bool>,
    pub redact_bodies: Option<bool>,
    pub log_secrets: Option<bool>,
    pub keylog: Option<PathBuf>,
    pub pcap: Option<PathBuf>,
    pub pcapng_tls: Option<PathBuf>,
    pub connect_timeout: Option<f64>,
    pub connect_retries: Option<u32>,
    pub connect_backoff: Option<f64>,
    pub connect_backoff_factor: Option<u32>,
    pub connect_backoff_max: Option<f64>,
    pub max_stanza_size: Option<usize>,
    pub max_depth: Option<usize>,
    pub header_timeout: Option<f64>,
    pub tls_timeout: Option<f64>,
    pub negotiation_timeout: Option<f64>,
    pub idle_timeout: Option<f64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_domain: Option<usize>,
    pub rules: Option<PathBuf>,
    pub ping_interval: Option<f64>,
    pub ping_timeout: Option<f64>,
    pub control: Option<SocketAddr>,
    pub control_token: Option<String>,
    /// `[policy]`: mode, allow, block, rate_connections, rate_stanzas, rate_bytes, rate_exceeded.
    pub policy: Option<crate::policy::FilePolicy>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// Timeouts, size limits and connection counts that protect xmpptap from its peers.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Framer limits (stanza size, depth). The stanza size also bounds what xmpptap buffers per side.
    pub framer: Limits,
    /// Time for the initiator's first stream header.
    pub header_timeout: Duration,
    /// Time for each TLS handshake.
    pub tls_timeout: Duration,
    /// Time for each negotiation step.
    pub negotiation_timeout: Duration,
    /// Time a relayed connection may go without a complete frame in either direction; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// Connections served at once, all listeners together.
    pub max_connections: usize,
    /// Connections served at once toward one receiving domain (per kind: S2S, C2S).
    pub max_connections_per_domain: usize,
}

impl SessionLimits {
    /// Default for [`SessionLimits::header_timeout`].
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default for [`SessionLimits::tls_timeout`].
    pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`SessionLimits::negotiation_timeout`].
    pub const DEFAULT_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default for [`SessionLimits::idle_timeout`]: longer than the 840 s after which Prosody sends a whitespace
    /// keepalive on a quiet connection, so that xmpptap never ends a healthy idle federation link first.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
    /// Default for [`SessionLimits::max_connections`]. Each connection takes two file descriptors.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// Default for [`SessionLimits::max_connections_per_domain`].
    pub const DEFAULT_MAX_CONNECTIONS_PER_DOMAIN: usize = 1_000;
}

/// Validated settings for `xmpptap proxy`.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Every listening address with what it accepts.
    pub listeners: Vec<Listener>,
    /// The S2S plaintext listening addresses (also in `listeners`).
    pub s2s_listen: Vec<SocketAddr>,
    pub default_domain: Option<String>,
    pub strip_starttls: bool,
    pub require_tls: bool,
    pub client_cert: ClientCert,
    /// Static S2S routes, sorted by domain.
    pub routes: Vec<(String, RouteTarget)>,
    /// The S2S reverse-proxy upstream.
    pub upstream: Option<RouteTarget>,
    /// Static C2S routes, sorted by domain.
    pub c2s_routes: Vec<(String, RouteTarget)>,
    /// The C2S reverse-proxy upstream.
    pub c2s_upstream: Option<RouteTarget>,
    pub resolver: Option<SocketAddr>,
    pub upstream_trust: UpstreamTrust,
    pub upstream_tls: UpstreamTls,
    pub ca_dir: PathBuf,
    pub log: Option<PathBuf>,
    /// What the transcript and captures hide (`--redact`, `--redact-bodies`, `--log-secrets`).
    pub redaction: Redaction,
    /// The TLS key log file (`--keylog`).
    pub keylog: Option<PathBuf>,
    /// The decrypted capture (`--pcap`, "-" for stdout).
    pub pcap: Option<PathBuf>,
    /// The encrypted capture with TLS secrets (`--pcapng-tls`, "-" for stdout).
    pub pcapng_tls: Option<PathBuf>,
    pub connect: ConnectPolicy,
    pub limits: SessionLimits,
    /// The rules file (`--rules`).
    pub rules: Option<PathBuf>,
    /// `--ping-interval` and `--ping-timeout`.
    pub ping: Option<(Duration, Duration)>,
    /// The control API's address and token.
    pub control: Option<SocketAddr>,
    pub control_token: Option<String>,
    /// The federation policy.
    pub policy: crate::policy::PolicyConfig,
}

impl ProxyConfig {
    /// Merges flags over the config file (if `--config` names one) and validates the result.
    pub fn from_args(args: &ProxyArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Flags win over the file; repeatable flags (`--s2s-listen`) replace the file's list, `--route` entries
    /// replace the file's route for the same domain.
    pub fn merge(args: &ProxyArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let redaction = redaction(args, &file)?;
        let listeners = listeners(args, &file)?;
        let s2s_listen = listeners
            .iter()
            .filter(|l| l.kind == ListenerKind::S2s && !l.direct_tls)
            .map(|l| l.addr)
            .collect();
        let strip_starttls = args.strip_starttls || file.strip_starttls.unwrap_or(false);
        let require_tls = args.require_tls || file.require_tls.unwrap_or(false);
        if strip_starttls && require_tls {
            return Err(invalid(
                "--strip-starttls and --require-tls exclude each other: one hides TLS from the initiator, \
                 the other demands it",
            ));
        }

        let routes = merge_routes("routes", file.routes, &args.route)?;
        let upstream = merge_upstream("upstream", file.upstream, &args.upstream)?;
        let c2s_routes = merge_routes("c2s_routes", file.c2s_routes, &args.c2s_route)?;
        let c2s_upstream = merge_upstream("c2s_upstream", file.c2s_upstream, &args.c2s_upstream)?;

        let dangerous = args.dangerous_accept_any_upstream_cert
            || file.dangerous_accept_any_upstream_cert.unwrap_or(false);
        let upstream_ca = args.upstream_ca.clone().or(file.upstream_ca);
        let upstream_trust = match (dangerous, upstream_ca) {
            (true, Some(_)) => {
                return Err(invalid(
                    "--upstream-ca and --dangerous-accept-any-upstream-cert exclude each other: choose one",
                ))
            }
            (true, None) => UpstreamTrust::DangerousAcceptAny,
            (false, Some(path)) => {
                if !path.is_file() {
                    return Err(invalid(format!(
                        "--upstream-ca {}: no such file (give a PEM file of CA certificates)",
                        path.display()
                    )));
                }
                UpstreamTrust::CaFile(path)
            }
            (false, None) => UpstreamTrust::SystemRoots,
        };

        let defaults = ConnectPolicy::default();
        let connect = ConnectPolicy {
            timeout: secs(
                "connect_timeout",
                args.connect_timeout.or(file.connect_timeout),
            )?
            .unwrap_or(defaults.timeout),
            retries: args
                .connect_retries
                .or(file.connect_retries)
                .unwrap_or(defaults.retries),
            initial_backoff: secs(
                "connect_backoff",
                args.connect_backoff.or(file.connect_backoff),
            )?
            .unwrap_or(defaults.initial_backoff),
            factor: args
                .connect_backoff_factor
                .or(file.connect_backoff_factor)
                .unwrap_or(defaults.factor),
            max_backoff: secs(
                "connect_backoff_max",
                args.connect_backoff_max.or(file.connect_backoff_max),
            )?
            .unwrap_or(defaults.max_backoff),
        };
        if connect.timeout.is_zero() {
            return Err(invalid("connect_timeout must be greater than 0"));
        }
        if connect.factor == 0 {
            return Err(invalid("connect_backoff_factor must be at least 1"));
        }

        let framer_defaults = Limits::default();
        let framer = Limits {
            max_stanza_bytes: args
                .max_stanza_size
                .or(file.max_stanza_size)
                .unwrap_or(framer_defaults.max_stanza_bytes),
            max_depth: args
                .max_depth
                .or(file.max_depth)
                .unwrap_or(framer_defaults.max_depth),
        };
        if framer.max_stanza_bytes < 1024 {
            return Err(invalid(
                "max_stanza_size below 1024 bytes would refuse ordinary stream features",
            ));
        }
        if framer.max_depth < 4 {
            return Err(invalid("max_depth below 4 would refuse ordinary stanzas"));
        }
        let idle_timeout = secs("idle_timeout", args.idle_timeout.or(file.idle_timeout))?
            .unwrap_or(SessionLimits::DEFAULT_IDLE_TIMEOUT);
        let limits = SessionLimits {
            framer,
            header_timeout: secs(
                "header_timeout",
                args.header_timeout.or(file.header_timeout),
            )?
            .unwrap_or(SessionLimits::DEFAULT_HEADER_TIMEOUT),
            tls_timeout: secs("tls_timeout", args.tls_timeout.or(file.tls_timeout))?
                .unwrap_or(SessionLimits::DEFAULT_TLS_TIMEOUT),
            negotiation_timeout: secs(
                "negotiation_timeout",
                args.negotiation_timeout.or(file.negotiation_timeout),
            )?
            .unwrap_or(SessionLimits::DEFAULT_NEGOTIATION_TIMEOUT),
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(SessionLimits::DEFAULT_MAX_CONNECTIONS),
            max_connections_per_domain: args
                .max_connections_per_domain
                .or(file.max_connections_per_domain)
                .unwrap_or(SessionLimits::DEFAULT_MAX_CONNECTIONS_PER_DOMAIN),
        };
        if limits.max_connections == 0 || limits.max_connections_per_domain == 0 {
            return Err(invalid(
                "max_connections and max_connections_per_domain must be at least 1",
            ));
        }

        let pcap = args.pcap.clone().or(file.pcap);
        let pcapng_tls = args.pcapng_tls.clone().or(file.pcapng_tls);
        let stdout = Some(Path::new("-"));
        let log_stdout = args.log.as_deref().or(file.log.as_deref()) == stdout;
        if [
            log_stdout,
            pcap.as_deref() == stdout,
            pcapng_tls.as_deref() == stdout,
        ]
        .iter()
        .filter(|on| **on)
        .count()
            > 1
        {
            return Err(invalid(
                "only one of log, pcap and pcapng_tls can be \"-\" (stdout)",
            ));
        }
        let ping = match secs("ping_interval", args.ping_interval.or(file.ping_interval))? {
            Some(interval) if !interval.is_zero() => {
                let timeout = secs("ping_timeout", args.ping_timeout.or(file.ping_timeout))?
                    .unwrap_or(Duration::from_secs(10));
                Some((interval, timeout))
            }
            _ => None,
        };
        let control_token = args.control_token.clone().or(file.control_token);
        let control = args.control.or(file.control);
        if let Some(addr) = control {
            crate::control::check_bind(addr, control_token.as_deref()).map_err(invalid)?;
        }
        let policy =
            crate::policy::PolicyConfig::merge(&args.policy, file.policy).map_err(invalid)?;
        let rules = args.rules.clone().or(file.rules);
        if let Some(path) = &rules {
            crate::rules::SharedRules::new(Some(path.clone()))
                .map_err(|e| invalid(format!("{e:#}")))?;
        }
        Ok(ProxyConfig {
            rules,
            ping,
            control,
            control_token,
            policy,
            listeners,
            s2s_listen,
            default_domain: args.default_domain.clone().or(file.default_domain),
            strip_starttls,
            require_tls,
            client_cert: args.client_cert.or(file.client_cert).unwrap_or_default(),
            routes,
            upstream,
            c2s_routes,
            c2s_upstream,
            resolver: args.resolver.or(file.resolver),
            upstream_trust,
            upstream_tls: args.upstream_tls.or(file.upstream_tls).unwrap_or_default(),
            ca_dir: args
                .ca_dir
                .clone()
                .or(file.ca_dir)
                .unwrap_or_else(|| PathBuf::from("certs")),
            log: args.log.clone().or(file.log),
            redaction,
            keylog: args.keylog.clone().or(file.keylog),
            pcap,
            pcapng_tls,
            connect,
            limits,
        })
    }

    /// What the [`crate::upstream::route::Router`] for `service` is built from: the S2S or the C2S routes and
    /// upstream, the resolver, and our own listening addresses (as bound) to refuse routing loops.
    pub fn router_config(&self, service: Service, own_listeners: &[SocketAddr]) -> RouterConfig {
        let (routes, upstream) = match service {
            Service::Server => (&self.routes, &self.upstream),
            Service::Client => (&self.c2s_routes, &self.c2s_upstream),
        };
        RouterConfig {
            routes: routes.clone(),
            upstream: upstream.clone(),
            resolver: self.resolver,
            srv_service: service,
            own_listeners: own_listeners.to_vec(),
        }
    }
}

/// The file's `key` table of routes with the flags' routes over it (a flag replaces the file's route for the
/// same domain), checked, sorted by domain.
fn merge_routes(
    key: &str,
    file: Option<BTreeMap<String, String>>,
    flags: &[(String, RouteTarget)],
) -> Result<Vec<(String, RouteTarget)>, ConfigError> {
    let mut routes: BTreeMap<String, RouteTarget> = BTreeMap::new();
    for (domain, target) in file.unwrap_or_default() {
        let (domain, target) = crate::cli::parse_route(&format!("{domain}={target}"))
            .map_err(|e| invalid(format!("config file {key}: {e}")))?;
        routes.insert(domain, target);
    }
    for (domain, target) in flags {
        routes.insert(domain.clone(), target.clone());
    }
    for domain in routes.keys() {
        if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(invalid(format!(
                "{key}: route domain {domain:?} is not a domain name"
            )));
        }
    }
    Ok(routes.into_iter().collect())
}

/// The flag's upstream, else the file's `key`.
fn merge_upstream(
    key: &str,
    file: Option<String>,
    flag: &Option<RouteTarget>,
) -> Result<Option<RouteTarget>, ConfigError> {
    match (flag, file) {
        (Some(flag), _) => Ok(Some(flag.clone())),
        (None, Some(text)) => text
            .parse::<RouteTarget>()
            .map(Some)
            .map_err(|e| invalid(format!("config file {key}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// What a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Server-to-server streams (`jabber:server`).
    S2s,
    /// Client-to-server streams (`jabber:client`).
    C2s,
}

/// One listening address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Where.
    pub addr: SocketAddr,
    /// S2S or C2S.
    pub kind: ListenerKind,
    /// Direct TLS (XEP-0368): TLS before any XML. Plaintext listeners also take a TLS ClientHello.
    pub direct_tls: bool,
}

impl Listener {
    /// `s2s`, `c2s`, `s2s-tls`, `c2s-tls`.
    pub fn name(&self) -> &'static str {
        match (self.kind, self.direct_tls) {
            (ListenerKind::S2s, false) => "s2s",
            (ListenerKind::C2s, false) => "c2s",
            (ListenerKind::S2s, true) => "s2s-tls",
            (ListenerKind::C2s, true) => "c2s-tls",
        }
    }
}

/// The listeners from flags or file (flags replace the file's list per kind). With none given anywhere, all
/// four defaults.
fn listeners(args: &ProxyArgs, file: &FileConfig) -> Result<Vec<Listener>, ConfigError> {
    let kinds = [
        (
            &args.s2s_listen,
            &file.s2s_listen,
            ListenerKind::S2s,
            false,
            DEFAULT_S2S_LISTEN,
        ),
        (
            &args.c2s_listen,
            &file.c2s_listen,
            ListenerKind::C2s,
            false,
            "0.0.0.0:5222",
        ),
        (
            &args.s2s_tls_listen,
            &file.s2s_tls_listen,
            ListenerKind::S2s,
            true,
            "0.0.0.0:5270",
        ),
        (
            &args.c2s_tls_listen,
            &file.c2s_tls_listen,
            ListenerKind::C2s,
            true,
            "0.0.0.0:5223",
        ),
    ];
    let any_given = kinds
        .iter()
        .any(|(flags, from_file, ..)| !flags.is_empty() || from_file.is_some());
    let mut listeners = Vec::new();
    for (flags, from_file, kind, direct_tls, default) in kinds {
        let addrs: Vec<SocketAddr> = match (flags.is_empty(), from_file) {
            (false, _) => flags.clone(),
            (true, Some(from_file)) => from_file.clone(),
            (true, None) if any_given => Vec::new(),
            (true, None) => vec![default
                .parse()
                .map_err(|e| invalid(format!("default listen address {default}: {e}")))?],
        };
        listeners.extend(addrs.into_iter().map(|addr| Listener {
            addr,
            kind,
            direct_tls,
        }));
    }
    if listeners.is_empty() {
        return Err(invalid(
            "no listening address: give at least one --s2s-listen or --c2s-listen ADDR",
        ));
    }
    Ok(listeners)
}

/// The redaction flags, or the file's when no flag is given; `log_secrets` excludes the others.
fn redaction(args: &ProxyArgs, file: &FileConfig) -> Result<Redaction, ConfigError> {
    let (redact, bodies, secrets) = if args.redact || args.redact_bodies || args.log_secrets {
        (args.redact, args.redact_bodies, args.log_secrets)
    } else {
        (
            file.redact.unwrap_or(false),
            file.redact_bodies.unwrap_or(false),
            file.log_secrets.unwrap_or(false),
        )
    };
    Ok(match (redact, bodies, secrets) {
        (_, _, true) if redact || bodies => {
            return Err(invalid(
                "log_secrets excludes redact and redact_bodies: choose one",
            ))
        }
        (_, _, true) => Redaction::log_secrets(),
        (_, true, _) => Redaction::redact().with_bodies(),
        (true, false, _) => Redaction::redact(),
        (false, false, false) => Redaction::default(),
    })
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn secs(name: &str, value: Option<f64>) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| invalid(format!("{name} = {v}: expected a number of seconds >= 0")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("test config parses")
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let config =
            ProxyConfig::merge(&ProxyArgs::default(), FileConfig::default()).expect("valid");
        assert_eq!(
            config.s2s_listen,
            vec!["0.0.0.0:5269".parse().expect("addr")]
        );
        assert_eq!(config.connect.retries, 3);
        assert_eq!(config.connect.initial_backoff, Duration::from_secs(1));
        assert_eq!(config.limits.framer.max_stanza_bytes, 262_144);
        assert_eq!(config.ca_dir, PathBuf::from("certs"));
        assert!(matches!(config.upstream_trust, UpstreamTrust::SystemRoots));
    }

    #[test]
    fn flags_override_file() {
        let file = file(
            r#"
            s2s_listen = ["127.0.0.1:5269"]
            routes = { "b.test" = "127.0.0.3:5269", "c.test" = "127.0.0.4:5269" }
            connect_retries = 7
            max_stanza_size = 100000
            "#,
        );
        let args = ProxyArgs {
            s2s_listen: vec!["127.0.0.9:1".parse().expect("addr")],
            route: vec![crate::cli::parse_route("b.test=10.0.0.1:5270").expect("route")],
            connect_retries: Some(1),
            ..ProxyArgs::default()
        };
        let config = ProxyConfig::merge(&args, file).expect("valid");
        assert_eq!(
            config.s2s_listen,
            vec!["127.0.0.9:1".parse().expect("addr")]
        );
        let routes: Vec<String> = config
            .routes
            .iter()
            .map(|(d, t)| format!("{d}={t}"))
            .collect();
        assert_eq!(routes, ["b.test=10.0.0.1:5270", "c.test=127.0.0.4:5269"]);
        assert_eq!(config.connect.retries, 1);
        assert_eq!(config.limits.framer.max_stanza_bytes, 100_000);
    }

    #[test]
    fn redaction_flags_and_file() {
        let merge = |args: ProxyArgs, text: &str| {
            ProxyConfig::merge(&args, file(text)).map(|config| config.redaction)
        };
        let sasl_only = merge(ProxyArgs::default(), "").expect("valid");
        assert_eq!(sasl_only, Redaction::default());
        assert!(sasl_only.sasl && !sasl_only.dialback_keys);
        let all = ProxyArgs {
            redact: true,
            ..ProxyArgs::default()
        };
        assert_eq!(merge(all, "").expect("valid"), Redaction::redact());
        let bodies = ProxyArgs {
            redact_bodies: true,
            ..ProxyArgs::default()
        };
        assert_eq!(
            merge(bodies, "log_secrets = true").expect("flags win over the file"),
            Redaction::redact().with_bodies()
        );
        assert_eq!(
            merge(ProxyArgs::default(), "log_secrets = true").expect("valid"),
            Redaction::log_secrets()
        );
        let err = merge(ProxyArgs::default(), "log_secrets = true\nredact = true")
            .expect_err("must refuse");
        assert!(err.to_string().contains("choose one"), "{err}");
    }

    #[test]
    fn c2s_routes_are_separate_and_accept_direct_tls() {
        let from_file = file(
            r#"
            routes = { "b.test" = "tls://127.0.0.3:5270" }
            c2s_routes = { "b.test" = "127.0.0.3:5222", "c.test" = "tls://127.0.0.4:5223" }
            c2s_upstream = "tls://127.0.0.9:5223"
            "#,
        );
        let args = ProxyArgs {
            c2s_route: vec![crate::cli::parse_route("C.test=[::1]:5222").expect("route")],
            upstream: Some("tls://127.0.0.8:5270".parse().expect("upstream")),
            ..ProxyArgs::default()
        };
        let config = ProxyConfig::merge(&args, from_file).expect("valid");
        let show = |routes: &[(String, RouteTarget)]| {
            routes
                .iter()
                .map(|(d, t)| format!("{d}={t}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&config.routes), ["b.test=tls://127.0.0.3:5270"]);
        assert_eq!(
            show(&config.c2s_routes),
            ["b.test=127.0.0.3:5222", "c.test=[::1]:5222"]
        );
        assert_eq!(
            config.upstream.as_ref().map(ToString::to_string).as_deref(),
            Some("tls://127.0.0.8:5270")
        );
        assert_eq!(
            config
                .c2s_upstream
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("tls://127.0.0.9:5223")
        );

        let own: Vec<SocketAddr> = vec!["127.0.0.1:5222".parse().expect("addr")];
        let s2s = config.router_config(Service::Server, &[]);
        assert_eq!(
            (s2s.srv_service, s2s.routes, s2s.upstream),
            (
                Service::Server,
                config.routes.clone(),
                config.upstream.clone()
            )
        );
        let c2s = config.router_config(Service::Client, &own);
        assert_eq!(
            (c2s.srv_service, c2s.routes, c2s.upstream, c2s.own_listeners),
            (
                Service::Client,
                config.c2s_routes.clone(),
                config.c2s_upstream.clone(),
                own
            )
        );

        let bad = file(r#"c2s_upstream = "tcp://127.0.0.9:5222""#);
        let err = ProxyConfig::merge(&ProxyArgs::default(), bad).expect_err("must refuse");
        assert!(
            err.to_string().starts_with(
                "config file c2s_upstream: \"tcp://127.0.0.9:5222\" has an unknown scheme"
            ),
            "{err}"
        );
        let bad = file(r#"c2s_routes = { "b.test" = "b-host.test" }"#);
        let err = ProxyConfig::merge(&ProxyArgs::default(), bad).expect_err("must refuse");
        assert!(
            err.to_string()
                .starts_with("config file c2s_routes: route for b.test:"),
            "{err}"
        );
    }

    #[test]
    fn limits_come_from_flags_or_file_with_defaults() {
        let config =
            ProxyConfig::merge(&ProxyArgs::default(), FileConfig::default()).expect("valid");
        assert_eq!(
            (
                config.limits.idle_timeout,
                config.limits.max_connections,
                config.limits.max_connections_per_domain
            ),
            (Some(Duration::from_secs(900)), 10_000, 1_000)
        );
        let from_file =
            file("idle_timeout = 0\nmax_connections = 50\nmax_connections_per_domain = 5");
        let args = ProxyArgs {
            max_connections_per_domain: Some(7),
            ..ProxyArgs::default()
        };
        let config = ProxyConfig::merge(&args, from_file).expect("valid");
        assert_eq!(
            (
                config.limits.idle_timeout,
                config.limits.max_connections,
                config.limits.max_connections_per_domain
            ),
            (None, 50, 7),
            "0 s is never; flags win"
        );
        let err = ProxyConfig::merge(&ProxyArgs::default(), file("max_connections = 0"))
            .expect_err("must refuse");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<FileConfig>("s2s_lisen = []").expect_err("typo must fail");
        assert!(err.to_string().contains("s2s_lisen"), "{err}");
    }

    #[test]
    fn inconsistent_settings_are_explained() {
        let args = ProxyArgs {
            dangerous_accept_any_upstream_cert: true,
            upstream_ca: Some(PathBuf::from("Cargo.toml")),
            ..ProxyArgs::default()
        };
        let err = ProxyConfig::merge(&args, FileConfig::default()).expect_err("must refuse");
        assert!(err.to_string().contains("choose one"), "{err}");

        let args = ProxyArgs {
            upstream_ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..ProxyArgs::default()
        };
        let err = ProxyConfig::merge(&args, FileConfig::default()).expect_err("must refuse");
        assert!(err.to_string().contains("no such file"), "{err}");

        let args = ProxyArgs {
            connect_timeout: Some(-1.0),
            ..ProxyArgs::default()
        };
        assert!(ProxyConfig::merge(&args, FileConfig::default()).is_err());
    }

    #[test]
    fn captures_come_from_flags_or_file_and_share_stdout_with_nothing() {
        let config = ProxyConfig::merge(
            &ProxyArgs {
                pcap: Some(PathBuf::from("flag.pcap")),
                ..ProxyArgs::default()
            },
            file("pcap = \"file.pcap\"\npcapng_tls = \"tls.pcapng\""),
        )
        .expect("valid");
        assert_eq!(config.pcap, Some(PathBuf::from("flag.pcap")));
        assert_eq!(config.pcapng_tls, Some(PathBuf::from("tls.pcapng")));

        let args = ProxyArgs {
            log: Some(PathBuf::from("-")),
            pcap: Some(PathBuf::from("-")),
            ..ProxyArgs::default()
        };
        let err = ProxyConfig::merge(&args, FileConfig::default()).expect_err("two on stdout");
        assert!(err.to_string().contains("stdout"), "{err}");
        let args = ProxyArgs {
            pcap: Some(PathBuf::from("-")),
            ..ProxyArgs::default()
        };
        let err = ProxyConfig::merge(&args, file("pcapng_tls = \"-\"")).expect_err("two on stdout");
        assert!(err.to_string().contains("stdout"), "{err}");
    }
}
