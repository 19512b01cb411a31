//! TLS for both legs: xmpptap's CA, the certificates it mints, and the rustls configurations built from them.
//!
//! On the initiator leg xmpptap is the TLS server and presents a certificate for the domain the initiator asked
//! for, minted by [`Ca::leaf`]; on the receiver leg it is the TLS client and checks the receiver per
//! [`UpstreamTrust`]. [`TlsContext`] hands out `tokio-rustls` acceptors and connectors for both, and
//! [`client_info`] / [`server_info`] describe an established session for the transcript.
//!
//! This module does not decide when TLS starts (the session does, after `<proceed/>` or on a Direct TLS peek) and
//! does not own the key log file (taps do; see [`TlsContext::with_key_log`]).
//!
//! # Layout
//!
//! - [`ca`]: the CA on disk (`ca.pem`, `ca-key.pem`) and minting of leaf certificates.
//! - `config`: [`TlsContext`] and [`UpstreamTrust`]: rustls server and client configurations.
//! - `verify`: the certificate verifiers rustls lacks (dangerous accept-any; record-only client certificates).
//! - `info`: [`TlsInfo`], what the transcript records about a session.
//! - `der`: the few DER helpers the XMPP subjectAltNames need.

pub mod ca;
mod config;
mod der;
mod info;
#[cfg(test)]
mod testutil;
mod verify;

use std::path::PathBuf;

pub use ca::{Ca, CaError, CaInfo};
/// For `xmpptap probe`, which builds its own client configuration (it records the chain and judges it itself).
pub(crate) use config::{file_roots, system_roots};
pub use config::{TlsContext, UpstreamTrust};
/// For `xmpptap probe`'s certificate chain description.
pub(crate) use info::subject_alt_names;
pub use info::{client_info, server_info, TlsInfo};
pub(crate) use verify::AcceptAnyServerCert;

/// What can go wrong building TLS configurations. Handshake failures are not here: they surface as I/O errors from
/// the acceptor or connector, on the leg that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate for a domain: it is not a valid name, or minting failed.
    #[error("no certificate for the initiator leg")]
    Ca(#[from] CaError),
    /// The upstream CA file (`UpstreamTrust::CaFile`) could not be read or is not PEM.
    #[error("reading upstream CA file {path}")]
    CaFileRead {
        /// The CA file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream CA file holds no certificate rustls can use.
    #[error("upstream CA file {path} contains no usable certificates")]
    NoCertsInCaFile {
        /// The CA file.
        path: PathBuf,
    },
    /// `UpstreamTrust::SystemRoots` was chosen but the system has no usable root certificates.
    #[error(
        "no usable system root certificates found; install the ca-certificates package, \
         or pass an upstream CA file"
    )]
    NoSystemRoots,
    /// rustls refused to build a verifier from the roots.
    #[error("building the upstream certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// rustls refused the provider or protocol versions for one leg's configuration.
    #[error("building the TLS configuration for the {leg} leg")]
    Config {
        /// `initiator` or `receiver`.
        leg: &'static str,
        /// The underlying rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// SHA-256 of `data`, computed with the ring provider's hash (the crate has no direct SHA-256 dependency).
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    // A TLS 1.3 suite named ..._SHA256 always carries SHA-256 as its hash.
    let hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
        rustls::SupportedCipherSuite::Tls12(suite) => suite.common.hash_provider,
    };
    hash.hash(data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_matches_a_known_vector() {
        let digest = super::sha256(b"abc");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
