//! [`TlsContext`]: the rustls configurations for both legs, built from the CA and the upstream trust setting.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WantsServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ConfigBuilder, KeyLog, RootCertStore, ServerConfig, WantsVerifier};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::Ca;
use super::verify::{AcceptAnyServerCert, RecordClientCert};
use super::TlsError;

/// Both TLS versions are offered: some XMPP servers still run TLS 1.2 only.
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN protocols the initiator leg answers (XEP-0368). Order is preference when a client offers both.
const ACCEPTED_ALPN: [&[u8]; 2] = [b"xmpp-server", b"xmpp-client"];

/// How xmpptap checks the receiver's certificate on the upstream leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTrust {
    /// The operating system's root certificates (via rustls-native-certs).
    SystemRoots,
    /// The certificates in this PEM file, and nothing else.
    CaFile(PathBuf),
    /// `--dangerous-accept-any-upstream-cert`: accept any certificate for any name. Handshake signatures are still
    /// checked, but anyone on the path to the receiver can impersonate it.
    DangerousAcceptAny,
}

/// The TLS configurations for both legs. Built once at startup; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct TlsContext {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<Ca>,
    /// Kept for the Debug output: which trust the upstream verifier implements.
    trust: UpstreamTrust,
    /// Server configs up to the certificate choice; the provider and versions are already checked.
    server_builder: ConfigBuilder<ServerConfig, WantsServerCert>,
    /// Client configs up to the verifier; the provider and versions are already checked.
    client_builder: ConfigBuilder<ClientConfig, WantsVerifier>,
    upstream_verifier: Arc<dyn ServerCertVerifier>,
    key_log: Option<Arc<dyn KeyLog>>,
    /// One client config per ALPN value, so sessions to the same receiver can resume.
    connectors: Mutex<HashMap<Vec<u8>, Arc<ClientConfig>>>,
    /// One server config per intercepted domain (at most [`MAX_CACHED_ACCEPTORS`]): a config per connection
    /// would cost memory and CPU per handshake and could never resume a session.
    acceptors: Mutex<HashMap<String, TlsAcceptor>>,
}

/// Domains whose acceptor is kept; past this, acceptors are built per connection (nothing is evicted, so that
/// a flood of new names cannot churn the cache of the domains in use).
const MAX_CACHED_ACCEPTORS: usize = 10_000;

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("ca", &self.inner.ca)
            .field("upstream_trust", &self.inner.trust)
            .field("key_log", &self.inner.key_log.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Builds the context: loads the upstream roots once (system roots or the CA file) and checks that rustls
    /// accepts the provider and protocol versions.
    pub fn new(ca: Arc<Ca>, trust: &UpstreamTrust) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let upstream_verifier: Arc<dyn ServerCertVerifier> = match trust {
            UpstreamTrust::SystemRoots => webpki_verifier(system_roots()?, &provider)?,
            UpstreamTrust::CaFile(path) => webpki_verifier(file_roots(path)?, &provider)?,
            UpstreamTrust::DangerousAcceptAny => {
                tracing::warn!(
                    "upstream certificates are not verified (--dangerous-accept-any-upstream-cert)"
                );
                Arc::new(AcceptAnyServerCert::new(algorithms))
            }
        };
        let initiator_verifier: Arc<dyn ClientCertVerifier> =
            Arc::new(RecordClientCert::new(algorithms));
        let server_builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|source| TlsError::Config {
                leg: "initiator",
                source,
            })?
            .with_client_cert_verifier(initiator_verifier);
        let client_builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|source| TlsError::Config {
                leg: "receiver",
                source,
            })?;
        Ok(TlsContext {
            inner: Arc::new(Inner {
                ca,
                trust: trust.clone(),
                server_builder,
                client_builder,
                upstream_verifier,
                key_log: None,
                connectors: Mutex::new(HashMap::new()),
                acceptors: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The same context, with every configuration built from now on logging session secrets to `key_log` (for
    /// `SSLKEYLOGFILE`-style tap sinks). Call it before handing out acceptors or connectors.
    pub fn with_key_log(self, key_log: Arc<dyn KeyLog>) -> Self {
        let inner = &self.inner;
        TlsContext {
            inner: Arc::new(Inner {
                ca: inner.ca.clone(),
                trust: inner.trust.clone(),
                server_builder: inner.server_builder.clone(),
                client_builder: inner.client_builder.clone(),
                upstream_verifier: inner.upstream_verifier.clone(),
                key_log: Some(key_log),
                connectors: Mutex::new(HashMap::new()),
                acceptors: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Acceptor for the initiator leg: presents a certificate for `domain` whatever the SNI (Prosody sends none on
    /// S2S), answers ALPN `xmpp-server` or `xmpp-client` if offered, speaks TLS 1.2 and 1.3, and asks for (but
    /// does not require or check) a client certificate so [`super::server_info`] can report it.
    ///
    /// A client offering ALPN protocols but neither of those is refused by rustls (`no_application_protocol`).
    pub fn acceptor_for(&self, domain: &str) -> Result<TlsAcceptor, TlsError> {
        // Mints (or finds) the leaf now, so that a name the CA refuses is an error here, not a failed handshake.
        self.inner.ca.leaf(domain)?;
        let key = domain.to_ascii_lowercase();
        // The map holds no invariant a panicking holder could have broken, so a poisoned lock is still usable.
        let mut acceptors = self
            .inner
            .acceptors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(acceptor) = acceptors.get(&key) {
            return Ok(acceptor.clone());
        }
        // The resolver asks the CA at each handshake, so a leaf re-minted before it expires is picked up.
        let resolver = Arc::new(DomainResolver {
            ca: self.inner.ca.clone(),
            domain: key.clone(),
        });
        let alpn = ACCEPTED_ALPN.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(self.server_config(resolver, alpn)));
        if acceptors.len() < MAX_CACHED_ACCEPTORS {
            acceptors.insert(key, acceptor.clone());
        }
        Ok(acceptor)
    }

    /// An acceptor that mints a certificate for the SNI name, or for `default_domain` when there is none (for
    /// Direct TLS, XEP-0368), offering the ALPN protocols `alpn`. With no usable name the handshake fails (the
    /// reason is logged at warn).
    pub fn sni_acceptor(&self, default_domain: Option<String>, alpn: &[&[u8]]) -> TlsAcceptor {
        let resolver = Arc::new(SniResolver {
            ca: self.inner.ca.clone(),
            default_domain,
        });
        let alpn = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(self.server_config(resolver, alpn)))
    }

    /// Connector for the receiver leg, offering ALPN `alpn` (e.g. `b"xmpp-server"`; empty for none) and verifying
    /// the receiver per [`UpstreamTrust`]. The caller passes the XMPP domain as the server name to `connect()`
    /// (`ServerName::try_from(domain.to_owned())`); it is both the SNI and the name checked.
    pub fn connector(&self, alpn: &[u8]) -> TlsConnector {
        let inner = &self.inner;
        // The map holds no invariant a panicking holder could have broken, so a poisoned lock is still usable.
        let mut connectors = inner
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let config = connectors
            .entry(alpn.to_vec())
            .or_insert_with(|| {
                let mut config = inner
                    .client_builder
                    .clone()
                    .dangerous()
                    .with_custom_certificate_verifier(inner.upstream_verifier.clone())
                    .with_no_client_auth();
                if !alpn.is_empty() {
                    config.alpn_protocols = vec![alpn.to_vec()];
                }
                if let Some(key_log) = &inner.key_log {
                    config.key_log = key_log.clone();
                }
                Arc::new(config)
            })
            .clone();
        TlsConnector::from(config)
    }

    /// Like [`Self::connector`], but presenting a client certificate for `domain` minted from xmpptap's CA, so
    /// that S2S SASL EXTERNAL can succeed where the receiver trusts that CA (`--client-cert mint`). Built per
    /// call: the certificate differs per initiating domain (the leaf itself is cached by the CA).
    pub fn connector_with_client_cert(
        &self,
        alpn: &[u8],
        domain: &str,
    ) -> Result<TlsConnector, TlsError> {
        let inner = &self.inner;
        let leaf = inner.ca.leaf(domain)?;
        let mut config = inner
            .client_builder
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(inner.upstream_verifier.clone())
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(leaf)));
        if !alpn.is_empty() {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        if let Some(key_log) = &inner.key_log {
            config.key_log = key_log.clone();
        }
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// xmpptap's CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.inner.ca
    }

    fn server_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
        alpn_protocols: Vec<Vec<u8>>,
    ) -> ServerConfig {
        let mut config = self
            .inner
            .server_builder
            .clone()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn_protocols;
        if let Some(key_log) = &self.inner.key_log {
            config.key_log = key_log.clone();
        }
        config
    }
}

/// The certificate of one domain, from the CA's cache (re-minted there when it gets old).
#[derive(Debug)]
struct DomainResolver {
    ca: Arc<Ca>,
    domain: String,
}

impl ResolvesServerCert for DomainResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.ca.leaf(&self.domain) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), domain = %self.domain, "no certificate");
                None
            }
        }
    }
}

/// Picks the certificate from the SNI, falling back to a default domain.
#[derive(Debug)]
struct SniResolver {
    ca: Arc<Ca>,
    default_domain: Option<String>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(domain) = client_hello
            .server_name()
            .or(self.default_domain.as_deref())
        else {
            tracing::warn!(
                "TLS client sent no SNI and there is no default domain; refusing the handshake"
            );
            return None;
        };
        match self.ca.leaf(domain) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no certificate for the TLS client's SNI");
                None
            }
        }
    }
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    Ok(verifier)
}

/// The operating system's root certificates (rustls-native-certs); an error if none is usable.
pub(crate) fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "while loading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system root certificates rustls cannot use");
    }
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    tracing::debug!(count = added, "loaded system root certificates");
    Ok(roots)
}

/// The CA certificates in a PEM file; an error if it cannot be read or holds none rustls can use.
pub(crate) fn file_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::CaFileRead {
        path: path.to_owned(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        match item {
            Ok(cert) => certs.push(cert),
            Err(source) => {
                return Err(TlsError::CaFileRead {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        tracing::warn!(path = %path.display(), ignored, "certificates in the CA file rustls cannot use");
    }
    if added == 0 {
        return Err(TlsError::NoCertsInCaFile {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::TempDir;
    use crate::tls::{client_info, server_info};
    use rustls::pki_types::ServerName;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    fn context(dir: &TempDir, trust: impl FnOnce(&Ca) -> UpstreamTrust) -> TlsContext {
        let ca = Arc::new(Ca::load_or_create(dir.path()).expect("CA"));
        let trust = trust(&ca);
        TlsContext::new(ca, &trust).expect("context")
    }

    /// Runs a handshake between `acceptor` and `connector` over an in-memory pipe, then sends a byte each way.
    async fn handshake(
        acceptor: TlsAcceptor,
        connector: TlsConnector,
        name: &str,
    ) -> Result<(crate::tls::TlsInfo, crate::tls::TlsInfo), String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        let server = async move {
            let mut tls = acceptor.accept(server_io).await?;
            tls.write_all(b"s").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, std::io::Error>(server_info(tls.get_ref().1))
        };
        let client = async move {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"c").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, std::io::Error>(client_info(tls.get_ref().1))
        };
        let both = async { tokio::join!(server, client) };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, both).await {
            Ok((Ok(server), Ok(client))) => Ok((server, client)),
            Ok((server, client)) => Err(format!("server: {server:?}, client: {client:?}")),
            Err(_) => Err("timed out".into()),
        }
    }

    #[tokio::test]
    async fn handshake_with_ca_file_trust() {
        let dir = TempDir::new("hs-cafile");
        let ctx = context(&dir, |ca| UpstreamTrust::CaFile(ca.cert_path().to_owned()));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let (server, client) = handshake(acceptor, ctx.connector(b"xmpp-server"), "b.test")
            .await
            .expect("handshake");
        assert_eq!(client.version, "TLSv1.3");
        assert_eq!(client.alpn.as_deref(), Some("xmpp-server"));
        assert!(client.cipher.starts_with("TLS13_"), "{}", client.cipher);
        assert_eq!(client.sni, None);
        assert_eq!(client.peer_subject.as_deref(), Some("CN=b.test, O=xmpptap"));
        assert!(client.peer_sans.contains(&"DNS:b.test".to_owned()));
        assert!(client.peer_sans.contains(&"xmppAddr:b.test".to_owned()));
        assert!(client
            .peer_sans
            .contains(&"SRVName:_xmpp-server.b.test".to_owned()));
        assert_eq!(server.sni.as_deref(), Some("b.test"));
        assert_eq!(server.alpn.as_deref(), Some("xmpp-server"));
        assert_eq!(
            server.peer_subject, None,
            "the connector sends no client cert"
        );
        let json = serde_json::to_value(&client).expect("json");
        assert_eq!(json["version"], "TLSv1.3");
    }

    #[tokio::test]
    async fn acceptor_answers_xmpp_client_alpn() {
        let dir = TempDir::new("hs-c2s");
        let ctx = context(&dir, |ca| UpstreamTrust::CaFile(ca.cert_path().to_owned()));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let (server, _) = handshake(acceptor, ctx.connector(b"xmpp-client"), "b.test")
            .await
            .expect("handshake");
        assert_eq!(server.alpn.as_deref(), Some("xmpp-client"));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let (server, client) = handshake(acceptor, ctx.connector(b""), "b.test")
            .await
            .expect("handshake without ALPN");
        assert_eq!((server.alpn, client.alpn), (None, None));
    }

    #[tokio::test]
    async fn acceptor_speaks_tls12() {
        let dir = TempDir::new("hs-tls12");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("versions")
                .with_root_certificates(ctx.ca().root_store())
                .with_no_client_auth();
        config.alpn_protocols = vec![b"xmpp-server".to_vec()];
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let (server, client) = handshake(acceptor, TlsConnector::from(Arc::new(config)), "b.test")
            .await
            .expect("handshake");
        assert_eq!(client.version, "TLSv1.2");
        assert_eq!(server.version, "TLSv1.2");
    }

    #[tokio::test]
    async fn system_roots_reject_the_minted_cert() {
        let dir = TempDir::new("hs-system");
        let ca = Arc::new(Ca::load_or_create(dir.path()).expect("CA"));
        let ctx = match TlsContext::new(ca, &UpstreamTrust::SystemRoots) {
            Ok(ctx) => ctx,
            Err(TlsError::NoSystemRoots) => {
                eprintln!("skipped: this machine has no system root certificates");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let err = handshake(acceptor, ctx.connector(b"xmpp-server"), "b.test")
            .await
            .expect_err("untrusted CA");
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn ca_file_trust_checks_the_name() {
        let dir = TempDir::new("hs-name");
        let ctx = context(&dir, |ca| UpstreamTrust::CaFile(ca.cert_path().to_owned()));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let err = handshake(acceptor, ctx.connector(b"xmpp-server"), "other.test")
            .await
            .expect_err("wrong name");
        assert!(err.contains("NotValidForName"), "{err}");
    }

    #[tokio::test]
    async fn dangerous_accept_any_accepts_untrusted_and_misnamed_certs() {
        let dir = TempDir::new("hs-any");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        // A second, unrelated CA: the connector has never heard of it.
        let other_dir = TempDir::new("hs-any-other");
        let other = Arc::new(Ca::load_or_create(other_dir.path()).expect("other CA"));
        let other_ctx = TlsContext::new(other, &UpstreamTrust::DangerousAcceptAny).expect("ctx");
        let acceptor = other_ctx.acceptor_for("b.test").expect("acceptor");
        let (_, client) = handshake(acceptor, ctx.connector(b"xmpp-server"), "other.test")
            .await
            .expect("handshake");
        assert_eq!(client.peer_subject.as_deref(), Some("CN=b.test, O=xmpptap"));
    }

    #[tokio::test]
    async fn sni_acceptor_mints_for_the_sni_name() {
        let dir = TempDir::new("hs-sni");
        let ctx = context(&dir, |ca| UpstreamTrust::CaFile(ca.cert_path().to_owned()));
        let acceptor = ctx.sni_acceptor(Some("default.test".into()), &[b"xmpp-server"]);
        let (server, client) = handshake(acceptor, ctx.connector(b"xmpp-server"), "c.test")
            .await
            .expect("handshake");
        assert_eq!(server.sni.as_deref(), Some("c.test"));
        assert_eq!(client.peer_subject.as_deref(), Some("CN=c.test, O=xmpptap"));
    }

    #[tokio::test]
    async fn sni_acceptor_falls_back_to_the_default_domain() {
        let dir = TempDir::new("hs-sni-default");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        let acceptor = ctx.sni_acceptor(Some("default.test".into()), &[b"xmpp-server"]);
        let (server, client) = handshake(
            acceptor,
            TlsConnector::from(config_without_sni(&ctx)),
            "default.test",
        )
        .await
        .expect("handshake");
        assert_eq!(server.sni, None);
        assert_eq!(
            client.peer_subject.as_deref(),
            Some("CN=default.test, O=xmpptap")
        );
        // Without SNI and without a default there is no certificate to present.
        let acceptor = ctx.sni_acceptor(None, &[]);
        assert!(handshake(
            acceptor,
            TlsConnector::from(config_without_sni(&ctx)),
            "default.test"
        )
        .await
        .is_err());
    }

    fn config_without_sni(ctx: &TlsContext) -> Arc<ClientConfig> {
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .expect("versions")
                .with_root_certificates(ctx.ca().root_store())
                .with_no_client_auth();
        config.enable_sni = false;
        Arc::new(config)
    }

    #[tokio::test]
    async fn initiator_client_certificate_is_reported() {
        let dir = TempDir::new("hs-clientcert");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        let client_leaf = ctx.ca().leaf("a.test").expect("leaf");
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .expect("versions")
                .with_root_certificates(ctx.ca().root_store())
                .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(client_leaf)));
        let acceptor = ctx.acceptor_for("b.test").expect("acceptor");
        let (server, _) = handshake(acceptor, TlsConnector::from(Arc::new(config)), "b.test")
            .await
            .expect("handshake");
        assert_eq!(server.peer_subject.as_deref(), Some("CN=a.test, O=xmpptap"));
        assert!(server.peer_sans.contains(&"xmppAddr:a.test".to_owned()));
    }

    #[test]
    fn acceptors_are_kept_per_domain() {
        let dir = TempDir::new("acceptor-cache");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        let first = ctx.acceptor_for("b.example").expect("acceptor");
        let again = ctx.acceptor_for("B.example").expect("acceptor");
        let other = ctx.acceptor_for("c.example").expect("acceptor");
        assert!(Arc::ptr_eq(first.config(), again.config()));
        assert!(!Arc::ptr_eq(first.config(), other.config()));
    }

    #[test]
    fn acceptor_for_an_invalid_domain_is_an_error() {
        let dir = TempDir::new("bad-acceptor");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        for bad in ["", "a b", "../x"] {
            assert!(
                matches!(ctx.acceptor_for(bad), Err(TlsError::Ca(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ca_file_without_certificates_is_an_error_naming_it() {
        let dir = TempDir::new("empty-cafile");
        let ca = Arc::new(Ca::load_or_create(dir.path()).expect("CA"));
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = TlsContext::new(ca.clone(), &UpstreamTrust::CaFile(path.clone()))
            .expect_err("no certs");
        assert!(matches!(err, TlsError::NoCertsInCaFile { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err =
            TlsContext::new(ca, &UpstreamTrust::CaFile(missing.clone())).expect_err("missing file");
        assert!(matches!(err, TlsError::CaFileRead { .. }), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn connector_configs_are_cached_per_alpn() {
        let dir = TempDir::new("connector-cache");
        let ctx = context(&dir, |_| UpstreamTrust::DangerousAcceptAny);
        let a = ctx.connector(b"xmpp-server");
        let b = ctx.clone().connector(b"xmpp-server");
        let c = ctx.connector(b"xmpp-client");
        assert!(Arc::ptr_eq(a.config(), b.config()));
        assert!(!Arc::ptr_eq(a.config(), c.config()));
        assert_eq!(c.config().alpn_protocols, [b"xmpp-client".to_vec()]);
    }
}
