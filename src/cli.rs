//! Command-line interface. The doc comments on these types are what `xmpptap --help` prints.
//!
//! This module only describes flags; [`crate::config`] merges them with the config file and validates.

use crate::upstream::route::HostPort;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A transparent, intercepting XMPP proxy and debugger.
///
/// Put xmpptap between two XMPP servers to see every stanza that crosses the wire: it terminates TLS with
/// certificates minted from its own CA, lets Server Dialback pass end to end, and writes a JSON Lines
/// transcript.
#[derive(Debug, Parser)]
#[command(
    name = "xmpptap",
    version,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    /// More detail on stderr: -v for debug (every stanza), -vv for trace. RUST_LOG overrides this.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Intercept server-to-server streams (port 5269) and transcribe them.
    ///
    /// Each initiating server's stream goes to the domain in its stream header's `to`: a --route for that
    /// domain wins, else --upstream, else DNS SRV `_xmpp-server._tcp.DOMAIN` (then A/AAAA on 5269).
    /// Point the initiating servers at xmpptap (DNS/SRV, or their own static routes) and make them trust the
    /// CA printed by `xmpptap ca export`, or disable certificate checks for S2S on them.
    ///
    /// Example: xmpptap proxy --s2s-listen 127.0.0.1:5269 --route b.test=10.0.0.3:5269 --log -
    Proxy(Box<ProxyArgs>),
    /// Manage xmpptap's certificate authority (the CA that signs the certificates xmpptap presents).
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
}

/// `xmpptap ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (certificate + key) in the CA directory.
    Init {
        #[command(flatten)]
        dir: CaDir,
        /// Replace an existing CA. Servers trusting the old one must be given the new certificate.
        #[arg(long)]
        force: bool,
    },
    /// Describe the CA: subject, validity, SHA-256 fingerprint, file paths.
    Show {
        #[command(flatten)]
        dir: CaDir,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the CA certificate (PEM) to stdout, to add to a server's trust store.
    Export {
        #[command(flatten)]
        dir: CaDir,
    },
}

/// Where the CA lives.
#[derive(Debug, Args)]
pub struct CaDir {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub ca_dir: PathBuf,
}

/// When to use TLS on the leg from xmpptap to the receiving server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Mirror the initiator: STARTTLS upstream exactly when the initiator asks for it.
    #[default]
    Auto,
    /// Upgrade the upstream leg whenever the receiver offers STARTTLS, even if the initiator stays plaintext.
    /// The initiator then sees the receiver's post-TLS stream (use it to read a server that insists on TLS).
    Always,
}

/// `xmpptap proxy` flags. Every flag can also be set in the --config file; a flag given here wins.
#[derive(Debug, Default, Args)]
pub struct ProxyArgs {
    /// TOML config file with any of these settings (keys as the flags, with underscores: s2s_listen,
    /// routes = { "b.test" = "10.0.0.3:5269" }, upstream, ...). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate flags, config file, CA and upstream trust, print the effective settings, and exit.
    #[arg(long)]
    pub check: bool,

    /// Address to accept S2S connections on (repeatable). Default 0.0.0.0:5269.
    #[arg(long, value_name = "ADDR")]
    pub s2s_listen: Vec<SocketAddr>,

    /// Send streams for DOMAIN to HOST:PORT instead of asking DNS (repeatable; wins over everything).
    #[arg(long, value_name = "DOMAIN=HOST:PORT", value_parser = parse_route)]
    pub route: Vec<(String, HostPort)>,

    /// Send every stream without a --route to HOST:PORT (reverse-proxy mode), instead of asking DNS.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<HostPort>,

    /// Ask this DNS server (UDP/TCP) for SRV and A/AAAA records instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,

    /// Verify receiving servers' certificates against the CA certificates in this PEM file instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Accept any certificate from receiving servers (no chain or name check). For test setups only: anyone
    /// on the path could then read the upstream leg.
    #[arg(long)]
    pub dangerous_accept_any_upstream_cert: bool,

    /// When to use TLS toward the receiving server.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub upstream_tls: Option<UpstreamTls>,

    /// Directory of xmpptap's CA (created on first use). Default: certs
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Write the JSON Lines transcript to FILE ("-" for stdout). Appends to an existing file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Seconds to wait for one TCP connection attempt to the receiver. Default 10.
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<f64>,

    /// Extra rounds over all upstream addresses after the first fails. Default 3.
    #[arg(long, value_name = "N")]
    pub connect_retries: Option<u32>,

    /// Seconds to wait before the first retry; each later wait is multiplied by --connect-backoff-factor.
    /// Default 1.
    #[arg(long, value_name = "SECS")]
    pub connect_backoff: Option<f64>,

    /// Multiplier between retry waits. Default 2.
    #[arg(long, value_name = "N")]
    pub connect_backoff_factor: Option<u32>,

    /// Longest wait between retries, in seconds. Default 30.
    #[arg(long, value_name = "SECS")]
    pub connect_backoff_max: Option<f64>,

    /// Largest stanza accepted, in bytes; a bigger one gets <policy-violation/>. Default 262144.
    #[arg(long, value_name = "BYTES")]
    pub max_stanza_size: Option<usize>,

    /// Deepest element nesting accepted inside a stanza. Default 64.
    #[arg(long, value_name = "N")]
    pub max_depth: Option<usize>,

    /// Seconds an initiator has to send its stream header after connecting. Default 30.
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<f64>,

    /// Seconds a TLS handshake may take on either leg. Default 10.
    #[arg(long, value_name = "SECS")]
    pub tls_timeout: Option<f64>,

    /// Seconds to wait for each step of stream negotiation (headers, features, proceed). Default 60.
    #[arg(long, value_name = "SECS")]
    pub negotiation_timeout: Option<f64>,
}

/// Parses `DOMAIN=HOST:PORT`.
pub fn parse_route(s: &str) -> Result<(String, HostPort), String> {
    let (domain, target) = s
        .split_once('=')
        .ok_or_else(|| format!("expected DOMAIN=HOST:PORT, got {s:?}"))?;
    let target = target
        .parse::<HostPort>()
        .map_err(|e| format!("route for {domain}: {e}"))?;
    Ok((domain.trim().to_ascii_lowercase(), target))
}
