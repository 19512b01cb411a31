//! The settings `xmpptap proxy` runs with: the TOML config file merged with command-line flags (flags win),
//! then validated into a [`ProxyConfig`]. Nothing here opens sockets or touches the CA.

use crate::cli::{ProxyArgs, UpstreamTls};
use crate::tls::UpstreamTrust;
use crate::upstream::connect::ConnectPolicy;
use crate::upstream::route::HostPort;
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
    /// `routes = { "b.test" = "10.0.0.3:5269" }`
    pub routes: Option<BTreeMap<String, String>>,
    pub upstream: Option<String>,
    pub resolver: Option<SocketAddr>,
    pub upstream_ca: Option<PathBuf>,
    pub dangerous_accept_any_upstream_cert: Option<bool>,
    pub upstream_tls: Option<UpstreamTls>,
    pub ca_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
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

/// Timeouts and size limits for one intercepted connection.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Framer limits (stanza size, depth).
    pub framer: Limits,
    /// Time for the initiator's first stream header.
    pub header_timeout: Duration,
    /// Time for each TLS handshake.
    pub tls_timeout: Duration,
    /// Time for each negotiation step.
    pub negotiation_timeout: Duration,
}

/// Validated settings for `xmpptap proxy`.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub s2s_listen: Vec<SocketAddr>,
    pub routes: Vec<(String, HostPort)>,
    pub upstream: Option<HostPort>,
    pub resolver: Option<SocketAddr>,
    pub upstream_trust: UpstreamTrust,
    pub upstream_tls: UpstreamTls,
    pub ca_dir: PathBuf,
    pub log: Option<PathBuf>,
    pub connect: ConnectPolicy,
    pub limits: SessionLimits,
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
        let s2s_listen = match (&args.s2s_listen[..], file.s2s_listen) {
            ([], Some(from_file)) => from_file,
            ([], None) => vec![DEFAULT_S2S_LISTEN
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("default listen address: {e}")))?],
            (flags, _) => flags.to_vec(),
        };
        if s2s_listen.is_empty() {
            return Err(invalid(
                "s2s_listen is empty: give at least one --s2s-listen ADDR",
            ));
        }

        let mut routes: BTreeMap<String, HostPort> = BTreeMap::new();
        for (domain, target) in file.routes.unwrap_or_default() {
            let (domain, target) = crate::cli::parse_route(&format!("{domain}={target}"))
                .map_err(|e| invalid(format!("config file routes: {e}")))?;
            routes.insert(domain, target);
        }
        for (domain, target) in &args.route {
            routes.insert(domain.clone(), target.clone());
        }
        for domain in routes.keys() {
            if domain.is_empty()
                || domain.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
            {
                return Err(invalid(format!(
                    "route domain {domain:?} is not a domain name"
                )));
            }
        }

        let upstream = match (&args.upstream, file.upstream) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(text)) => Some(
                text.parse::<HostPort>()
                    .map_err(|e| invalid(format!("config file upstream: {e}")))?,
            ),
            (None, None) => None,
        };

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
        let limits = SessionLimits {
            framer,
            header_timeout: secs(
                "header_timeout",
                args.header_timeout.or(file.header_timeout),
            )?
            .unwrap_or(Duration::from_secs(30)),
            tls_timeout: secs("tls_timeout", args.tls_timeout.or(file.tls_timeout))?
                .unwrap_or(Duration::from_secs(10)),
            negotiation_timeout: secs(
                "negotiation_timeout",
                args.negotiation_timeout.or(file.negotiation_timeout),
            )?
            .unwrap_or(Duration::from_secs(60)),
        };

        Ok(ProxyConfig {
            s2s_listen,
            routes: routes.into_iter().collect(),
            upstream,
            resolver: args.resolver.or(file.resolver),
            upstream_trust,
            upstream_tls: args.upstream_tls.or(file.upstream_tls).unwrap_or_default(),
            ca_dir: args
                .ca_dir
                .clone()
                .or(file.ca_dir)
                .unwrap_or_else(|| PathBuf::from("certs")),
            log: args.log.clone().or(file.log),
            connect,
            limits,
        })
    }
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
}
