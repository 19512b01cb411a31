//! TLS for the probe: the client handshake that records what the server showed, the judgement of its certificate
//! for the XMPP domain, the channel binding data for SCRAM `-PLUS`, and the self-signed server side of the
//! dialback listener.
//!
//! The probe's verifier ([`RecordingVerifier`]) always keeps the chain and decides itself: WebPKI against the
//! chosen roots (system roots, or `--ca`), then, when WebPKI finds no matching DNS name, the XMPP names
//! (`xmppAddr`, RFC 6120 13.7.1.4; `SRVName`, RFC 7590 / RFC 4985) that WebPKI does not read. A chain that does
//! not verify stops the handshake, unless `--dangerous-accept-any-cert`; either way the report says why.
//!
//! Reuses [`crate::tls`]: [`UpstreamTrust`] for the trust choice, its root loaders, its accept-any verifier for the
//! handshake signatures, [`crate::tls::client_info`] for the session parameters and its subjectAltName notation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{client_info, subject_alt_names, UpstreamTrust};
use crate::upstream::route::Service;

use super::conn::BoxIo;
use super::sasl::ChannelBinding;

/// Both versions, as the proxy offers: some servers still speak TLS 1.2 only.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What the probe was told about TLS, checked once before anything connects.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The `--ca` file could not be used.
    #[error("--ca: {0}")]
    Roots(#[source] crate::tls::TlsError),
    /// The client certificate or key could not be read.
    #[error("reading {path}: {reason}")]
    ClientCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration (for instance a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The listener's certificate could not be generated.
    #[error("generating the dialback listener's certificate: {0}")]
    Generate(String),
}

/// One certificate of the chain the server showed.
#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    /// Subject distinguished name, e.g. `CN=example.net`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names: `DNS:`, `xmppAddr:`, `SRVName:`, `IP:`...
    pub sans: Vec<String>,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Whether now is within the validity period.
    pub valid_now: bool,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex with colons.
    pub sha256: String,
    /// Issuer equals subject.
    pub self_signed: bool,
}

/// What the TLS phase found.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// `starttls` or `direct_tls`.
    pub mode: &'static str,
    /// The SNI sent (the domain).
    pub sni: String,
    /// Negotiated version, e.g. `TLSv1.3`; null if the handshake failed.
    pub version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// The chain as sent, end-entity certificate first.
    pub chain: Vec<CertReport>,
    /// Whether the certificate verifies for the domain; null if none was seen.
    pub verified: Option<bool>,
    /// Why (or why not).
    pub verification: String,
    /// What the chain was checked against.
    pub trust: String,
    /// The probe went on with a certificate that does not verify (`--dangerous-accept-any-cert`).
    pub accepted_unverified: bool,
    /// Subject of the client certificate the probe presented, if any.
    pub client_certificate: Option<String>,
    /// Channel binding types this session can provide for SCRAM -PLUS.
    pub channel_binding: Vec<String>,
    /// Why the handshake failed.
    pub error: Option<String>,
}

/// What the flows keep of an established session.
#[derive(Debug, Clone, Default)]
pub struct TlsSession {
    /// Channel binding data the session can provide, preferred first.
    pub channel_bindings: Vec<ChannelBinding>,
}

/// The probe's TLS client settings, built once.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<rustls::RootCertStore>>,
    trust_label: String,
    accept_any: bool,
    client_cert: Option<(
        Vec<CertificateDer<'static>>,
        Arc<PrivateKeyDer<'static>>,
        String,
    )>,
}

impl ProbeTls {
    /// Loads the roots (`--ca` file, or the system's) and the client certificate. With
    /// `--dangerous-accept-any-cert` the system roots are still loaded, if there are any, so the report can say
    /// whether the certificate would have verified.
    pub fn new(
        trust: &UpstreamTrust,
        client_cert: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (roots, trust_label, accept_any) = match trust {
            // No usable system roots is not a setup error: a plaintext probe needs none, and a TLS one says why
            // the certificate cannot be checked.
            UpstreamTrust::SystemRoots => match crate::tls::system_roots() {
                Ok(roots) => (
                    Some(roots),
                    "the system's root certificates".to_owned(),
                    false,
                ),
                Err(e) => (None, format!("the system's root certificates ({e})"), false),
            },
            UpstreamTrust::CaFile(path) => (
                Some(crate::tls::file_roots(path).map_err(TlsSetupError::Roots)?),
                format!("the CA certificates in {}", path.display()),
                false,
            ),
            UpstreamTrust::DangerousAcceptAny => match crate::tls::system_roots() {
                Ok(roots) => (
                    Some(roots),
                    "the system's root certificates (not enforced: --dangerous-accept-any-cert)"
                        .to_owned(),
                    true,
                ),
                Err(_) => (
                    None,
                    "nothing (--dangerous-accept-any-cert, and no usable system roots)".to_owned(),
                    true,
                ),
            },
        };
        let client_cert = match client_cert {
            Some((cert, key)) => Some(load_client_cert(cert, key)?),
            None => None,
        };
        let tls = ProbeTls {
            provider,
            roots: roots.map(Arc::new),
            trust_label,
            accept_any,
            client_cert,
        };
        // Build one configuration now so that a bad key or certificate is a setup error, not a TLS failure.
        tls.config(&RecordingVerifier::new(&tls, "localhost"), None)?;
        Ok(tls)
    }

    fn config(
        &self,
        verifier: &Arc<RecordingVerifier>,
        alpn: Option<&[u8]>,
    ) -> Result<ClientConfig, TlsSetupError> {
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(TlsSetupError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match &self.client_cert {
            Some((chain, key, _)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(TlsSetupError::Config)?,
            None => builder.with_no_client_auth(),
        };
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(config)
    }

    /// Runs a TLS handshake over `io` for `domain` (SNI, and the name the certificate is judged for). Direct TLS
    /// offers the ALPN of `service` (XEP-0368). Returns the report in every case, and the TLS stream if the
    /// handshake succeeded and the certificate was accepted.
    pub async fn handshake(
        &self,
        io: BoxIo,
        domain: &str,
        service: Service,
        direct_tls: bool,
        timeout: Duration,
    ) -> (TlsReport, Option<(BoxIo, TlsSession)>) {
        let mut report = TlsReport {
            mode: if direct_tls { "direct_tls" } else { "starttls" },
            sni: domain.to_owned(),
            version: None,
            cipher: None,
            alpn: None,
            chain: Vec::new(),
            verified: None,
            verification: "no certificate received".to_owned(),
            trust: self.trust_label.clone(),
            accepted_unverified: false,
            client_certificate: self.client_cert.as_ref().map(|(_, _, s)| s.clone()),
            channel_binding: Vec::new(),
            error: None,
        };
        let alpn: Option<&[u8]> = direct_tls.then_some(match service {
            Service::Server => b"xmpp-server",
            Service::Client => b"xmpp-client",
        });
        let verifier = RecordingVerifier::new(self, domain);
        let config = match self.config(&verifier, alpn) {
            Ok(config) => config,
            Err(e) => {
                report.error = Some(e.to_string());
                return (report, None);
            }
        };
        let name = match ServerName::try_from(domain.to_owned()) {
            Ok(name) => name,
            Err(e) => {
                report.error = Some(format!(
                    "{domain:?} cannot be sent as a TLS server name: {e}"
                ));
                return (report, None);
            }
        };
        let connector = TlsConnector::from(Arc::new(config));
        let result = tokio::time::timeout(timeout, connector.connect(name, io)).await;
        if let Some(seen) = verifier.take() {
            report.chain = seen.chain.iter().map(describe).collect();
            report.verified = Some(seen.verified);
            report.verification = seen.why;
            report.accepted_unverified = !seen.verified && self.accept_any;
        }
        match result {
            Ok(Ok(stream)) => {
                let conn = stream.get_ref().1;
                let info = client_info(conn);
                report.version = Some(info.version);
                report.cipher = Some(info.cipher);
                report.alpn = info.alpn;
                let session = TlsSession {
                    channel_bindings: channel_bindings(conn),
                };
                report.channel_binding = session
                    .channel_bindings
                    .iter()
                    .map(|cb| cb.kind.clone())
                    .collect();
                (report, Some((Box::new(stream) as BoxIo, session)))
            }
            Ok(Err(e)) => {
                report.error = Some(format!("TLS handshake failed: {e}"));
                (report, None)
            }
            Err(_) => {
                report.error = Some(format!("TLS handshake did not finish within {timeout:?}"));
                (report, None)
            }
        }
    }
}

/// What the verifier saw.
#[derive(Debug, Clone)]
struct Seen {
    chain: Vec<CertificateDer<'static>>,
    verified: bool,
    why: String,
}

/// Records the chain and the verdict, and enforces it unless `accept_any`. See the [module docs](self).
#[derive(Debug)]
struct RecordingVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    trust_label: String,
    accept_any: bool,
    domain: String,
    /// Checks the handshake signatures: the proxy's `--dangerous-accept-any-upstream-cert` verifier, whose (absent)
    /// chain check is never asked for, since [`RecordingVerifier::judge`] does that.
    signatures: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl RecordingVerifier {
    fn new(tls: &ProbeTls, domain: &str) -> Arc<Self> {
        let webpki = tls.roots.as_ref().and_then(|roots| {
            WebPkiServerVerifier::builder_with_provider(roots.clone(), tls.provider.clone())
                .build()
                .ok()
        });
        Arc::new(RecordingVerifier {
            webpki,
            trust_label: tls.trust_label.clone(),
            accept_any: tls.accept_any,
            domain: domain.to_owned(),
            signatures: Arc::new(crate::tls::AcceptAnyServerCert::new(
                tls.provider.signature_verification_algorithms,
            )),
            seen: Mutex::new(None),
        })
    }

    fn take(&self) -> Option<Seen> {
        // A poisoned lock only means a panic elsewhere; the recorded value is still what was seen.
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The verdict on a chain: (verified, why, the error to fail the handshake with).
    fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> (bool, String, Option<rustls::Error>) {
        let Some(webpki) = &self.webpki else {
            return (
                false,
                format!(
                    "not checked: there is nothing to check against ({})",
                    self.trust_label
                ),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
            );
        };
        let domain = &self.domain;
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(_) => (
                true,
                format!(
                    "chains to {} and names {domain} as a DNS name",
                    self.trust_label
                ),
                None,
            ),
            Err(
                e @ rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
            ) => {
                let sans = match x509_parser::parse_x509_certificate(end_entity) {
                    Ok((_, cert)) => subject_alt_names(&cert),
                    Err(_) => Vec::new(),
                };
                match xmpp_name_match(&sans, domain) {
                    Some(name) => (
                        true,
                        format!(
                            "chains to {}; names {domain} as {name} (an XMPP identity WebPKI does not read; \
                             RFC 6120 13.7.1.4 / RFC 7590)",
                            self.trust_label
                        ),
                        None,
                    ),
                    None => (
                        false,
                        format!(
                            "chains to {}, but is not for {domain}: it names {}",
                            self.trust_label,
                            if sans.is_empty() { "no subjectAltName".to_owned() } else { sans.join(", ") }
                        ),
                        Some(e),
                    ),
                }
            }
            Err(e) => (
                false,
                format!(
                    "does not verify against {}: {}",
                    self.trust_label,
                    explain(&e)
                ),
                Some(e),
            ),
        }
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (verified, why, error) =
            self.judge(end_entity, intermediates, server_name, ocsp_response, now);
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Seen {
            chain,
            verified,
            why,
        });
        match error {
            Some(e) if !self.accept_any => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// The XMPP identity in `sans` that names `domain`: `xmppAddr:domain`, or `SRVName:_xmpp-server.domain` (or
/// another XMPP service label).
fn xmpp_name_match(sans: &[String], domain: &str) -> Option<String> {
    sans.iter()
        .find(|san| {
            if let Some(addr) = san.strip_prefix("xmppAddr:") {
                return addr.eq_ignore_ascii_case(domain);
            }
            if let Some(srv) = san.strip_prefix("SRVName:") {
                return [
                    "_xmpp-server.",
                    "_xmpps-server.",
                    "_xmpp-client.",
                    "_xmpps-client.",
                ]
                .iter()
                .any(|label| {
                    srv.len() > label.len()
                        && srv[..label.len()].eq_ignore_ascii_case(label)
                        && srv[label.len()..].eq_ignore_ascii_case(domain)
                });
            }
            false
        })
        .cloned()
}

/// A certificate error in words an operator can act on.
fn explain(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer => {
                "unknown issuer (self-signed, or signed by a CA that is not trusted here)"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the certificate is not valid yet".to_owned()
            }
            CertificateError::Revoked => "the certificate is revoked".to_owned(),
            CertificateError::BadSignature => "a signature in the chain is wrong".to_owned(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// Describes one certificate; what x509-parser cannot read is said so.
fn describe(der: &CertificateDer<'_>) -> CertReport {
    let sha256 = crate::tls::sha256(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let validity = cert.validity();
            let subject = cert.subject().to_string();
            let issuer = cert.issuer().to_string();
            CertReport {
                self_signed: subject == issuer,
                subject,
                issuer,
                sans: subject_alt_names(&cert),
                not_before: rfc3339(validity.not_before.timestamp()),
                not_after: rfc3339(validity.not_after.timestamp()),
                valid_now: validity.is_valid(),
                serial: cert.raw_serial_as_string(),
                sha256,
            }
        }
        Err(e) => CertReport {
            subject: format!("<unparsable certificate: {e}>"),
            issuer: String::new(),
            sans: Vec::new(),
            not_before: String::new(),
            not_after: String::new(),
            valid_now: false,
            serial: String::new(),
            sha256,
            self_signed: false,
        },
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The channel bindings an established session can provide, best first: `tls-exporter` (RFC 9266, TLS 1.3 only)
/// and `tls-server-end-point` (RFC 5929, from the server certificate's signature hash). `tls-unique` cannot be
/// had from rustls (and is undefined on TLS 1.3).
fn channel_bindings(conn: &rustls::ClientConnection) -> Vec<ChannelBinding> {
    let mut out = Vec::new();
    if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        let mut data = vec![0u8; 32];
        if conn
            .export_keying_material(&mut data, b"EXPORTER-Channel-Binding", None)
            .is_ok()
        {
            out.push(ChannelBinding {
                kind: "tls-exporter".into(),
                data,
            });
        }
    }
    if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
        if let Some(data) = server_end_point(cert) {
            out.push(ChannelBinding {
                kind: "tls-server-end-point".into(),
                data,
            });
        }
    }
    out
}

/// RFC 5929 4.1: the hash of the certificate with its signature algorithm's hash, SHA-256 for MD5 and SHA-1;
/// undefined (None) for algorithms without exactly one hash (Ed25519, RSA-PSS with parameters).
fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    let algorithm = match oid.as_str() {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => &ring::digest::SHA256,
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &ring::digest::SHA384,
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, cert).as_ref().to_vec())
}

fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        Arc<PrivateKeyDer<'static>>,
        String,
    ),
    TlsSetupError,
> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsSetupError::ClientCert {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::ClientCert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(first) = chain.first() else {
        return Err(TlsSetupError::ClientCert {
            path: cert.to_owned(),
            reason: "no PEM certificate in it".into(),
        });
    };
    let subject = match x509_parser::parse_x509_certificate(first) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(e) => format!("<unparsable certificate: {e}>"),
    };
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsSetupError::ClientCert {
            path: key.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsSetupError::ClientCert {
            path: key.to_owned(),
            reason: "no PEM private key in it".into(),
        })?;
    Ok((chain, Arc::new(key_der), subject))
}

/// The dialback listener's TLS acceptor: a self-signed certificate for `domain`, generated in memory (never
/// written), offering ALPN `xmpp-server`. A receiving server that checks certificates strictly will refuse it and
/// rely on dialback only if it allows that (Prosody: `s2s_secure_auth = false`, the default).
pub fn listener_acceptor(domain: &str) -> Result<TlsAcceptor, TlsSetupError> {
    let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()])
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(PROTOCOL_VERSIONS)
    .map_err(TlsSetupError::Config)?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .map_err(TlsSetupError::Config)?;
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmpp_names_match_the_domain_case_insensitively() {
        let sans = vec![
            "DNS:other.example".to_owned(),
            "SRVName:_xmpp-server.Example.NET".to_owned(),
        ];
        assert_eq!(
            xmpp_name_match(&sans, "example.net").as_deref(),
            Some("SRVName:_xmpp-server.Example.NET")
        );
        assert_eq!(xmpp_name_match(&sans, "other.example"), None);
        let addr = vec!["xmppAddr:example.net".to_owned()];
        assert!(xmpp_name_match(&addr, "EXAMPLE.net").is_some());
        assert_eq!(
            xmpp_name_match(&["SRVName:_xmpp-server.".to_owned()], ""),
            None
        );
    }

    #[test]
    fn server_end_point_hashes_an_ecdsa_sha256_certificate_with_sha256() {
        let certified =
            rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("generate");
        let der = certified.cert.der();
        let hash = server_end_point(der).expect("ecdsa-with-SHA256 is defined");
        assert_eq!(hash, crate::tls::sha256(der));
        let report = describe(der);
        assert_eq!(report.sans, ["DNS:a.test"]);
        assert!(report.self_signed && report.valid_now);
        assert!(report.not_after.ends_with('Z'), "{}", report.not_after);
    }
}
