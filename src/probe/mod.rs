//! `xmpptap probe`: check a server from outside, in one command, the way another server (S2S) or a client (C2S)
//! would reach it, and report every phase, timed.
//!
//! The proxy sits between two peers; the probe *is* one of them. It reuses the proxy's knowledge: the router's
//! SRV order ([`crate::upstream::route`]), the sans-IO framer and the small parsers ([`crate::xml`]), the trust
//! settings, session description and certificate names of [`crate::tls`]. What it adds is the endpoint's side:
//! sending its own stream headers, STARTTLS as a client, SASL (SCRAM, PLAIN, EXTERNAL), dialback keys and a
//! listener that answers dialback verification, resource binding, roster, message and ping requests.
//!
//! # Data path
//!
//! ```text
//!  dns (SRV both services, A/AAAA) -> connect (each candidate in order) -> [Direct TLS] -> stream -> [STARTTLS
//!  -> tls -> stream_after_tls] -> s2s: [SASL EXTERNAL] [dialback (+ listener)] [ping]
//!                                  c2s: SASL -> stream_after_sasl -> bind -> [roster] [message] [ping]
//! ```
//!
//! Each arrow is a phase in [`Report::phases`]; the first failure stops the probe (the checks at the end run
//! independently) and sets the exit code ([`report::FailureKind`]).
//!
//! # Layout
//!
//! - [`report`]: the one report shape (JSON and text) and the exit codes.
//! - `dns`: the DNS and connect phases.
//! - `establish`: the phases every probe shares, up to an open stream with TLS.
//! - `conn`: one stream over a socket: frames in, bytes out, stream errors parsed.
//! - `dom`: a small element tree for the answers the probe reads.
//! - `tls`: the client handshake that records and judges the certificate chain; the listener's certificate.
//! - [`sasl`]: SCRAM, PLAIN and EXTERNAL, sans-IO.
//! - `dialback`: the XEP-0185 key and the `--dialback-listen` listener.
//! - `s2s`, `c2s`: the two probes.
//!
//! Passwords come from an environment variable or a file, never from the command line, and are never printed
//! (SASL payloads are hidden from the debug log too).

mod c2s;
mod conn;
mod dialback;
mod dns;
mod dom;
mod establish;
pub mod report;
mod s2s;
pub mod sasl;
mod tls;

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{ProbeCommand, ProbeConnectArgs};
use crate::tls::UpstreamTrust;
use crate::upstream::route::Service;

pub use dialback::key as dialback_key;
pub use report::Report;

/// When to use STARTTLS (`--starttls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StartTls {
    /// Use it when the server offers it.
    #[default]
    Auto,
    /// Fail (TLS exit code) when the server does not offer it.
    Require,
    /// Never; stay in plaintext even if the server requires TLS (to see what it does then).
    Off,
}

/// What stops a probe before it starts: bad flags, unreadable files, a listener address in use. `xmpptap`
/// exits 64 on these.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A combination of flags that cannot work.
    #[error("{0}")]
    Usage(String),
    /// The TLS settings (`--ca`, `--client-cert`, `--client-key`) cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// The password could not be read.
    #[error("password: {0}")]
    Password(String),
    /// `--dialback-listen` could not be bound.
    #[error("--dialback-listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the probe the command asks for. A probe that fails against the server still returns `Ok`: the report
/// says where it stopped, and [`Report::exit_code`] is the process exit code.
pub async fn run(command: &ProbeCommand) -> Result<Report, SetupError> {
    match command {
        ProbeCommand::S2s(args) => s2s::run(args).await,
        ProbeCommand::C2s(args) => c2s::run(args).await,
    }
}

/// The settings both probes share, checked.
#[derive(Debug)]
struct Common {
    target: dns::Target,
    tls: tls::ProbeTls,
    starttls: StartTls,
    timeout: Duration,
}

impl Common {
    fn new(
        args: &ProbeConnectArgs,
        domain: &str,
        service: Service,
        client_cert: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, SetupError> {
        if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
            return Err(SetupError::Usage(format!(
                "--timeout {} must be a number of seconds between 0 and 3600",
                args.timeout
            )));
        }
        let trust = match (&args.ca, args.dangerous_accept_any_cert) {
            (Some(path), _) => UpstreamTrust::CaFile(path.clone()),
            (None, true) => UpstreamTrust::DangerousAcceptAny,
            (None, false) => UpstreamTrust::SystemRoots,
        };
        let tls = tls::ProbeTls::new(
            &trust,
            client_cert
                .as_ref()
                .map(|(cert, key)| (cert.as_path(), key.as_path())),
        )?;
        Ok(Common {
            target: dns::Target {
                domain: domain.to_owned(),
                service,
                host: args.host.clone(),
                port: args.port,
                direct_tls: args.direct_tls,
                resolver: args.resolver,
            },
            tls,
            starttls: args.starttls,
            timeout: Duration::from_secs_f64(args.timeout),
        })
    }
}

/// Checks a domain given on the command line: lower case, no trailing dot.
fn domain_arg(flag: &str, domain: &str) -> Result<String, SetupError> {
    crate::upstream::route::normalize_domain(domain)
        .map_err(|e| SetupError::Usage(format!("{flag}: {e}")))
}

/// Fills `buf` from the thread's CSPRNG (ChaCha, seeded by the OS).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    rand::RngExt::fill(&mut rand::rng(), buf);
}

/// A fresh id for a stanza: `prefix-` and 8 random hex digits.
pub(crate) fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 4];
    random_bytes(&mut bytes);
    format!("{prefix}-{}", dialback::hex(&bytes))
}

/// Escapes text for an attribute value or element content.
pub(crate) fn xml_escape(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}
