//! Fake XMPP peers that speak literal bytes, for process-level tests of the proxy.
//!
//! A [`Peer`] is one connection (plain TCP or TLS) with a read buffer: a test writes the exact bytes a server
//! would write and checks the exact bytes that arrive. Every wait is bounded by [`WAIT`] and panics with what
//! did arrive, so a stuck proxy fails the test with a readable message instead of hanging it.
//!
//! TLS: [`Receiver`] accepts with a self-signed certificate for its domain (the proxy is pointed at
//! [`Receiver::cert_path`] with `--upstream-ca`); [`tls_connect`] is an initiator that verifies the proxy's
//! certificate against the proxy's CA.
//!
//! It does not own starting the proxy or reading its transcript (see `xmpptap`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// The longest any fake waits for the proxy to do something.
pub const WAIT: Duration = Duration::from_secs(5);

/// One connection, with bytes read but not yet consumed by an `expect`/`read_until`.
pub struct Peer<S> {
    /// For panic messages: "initiator", "receiver", ...
    pub name: &'static str,
    io: S,
    pending: Vec<u8>,
}

impl Peer<TcpStream> {
    /// Connects to `addr` (the proxy, usually).
    pub async fn connect(name: &'static str, addr: SocketAddr) -> Self {
        let io = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("{name}: connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("{name}: cannot connect to {addr}: {e}"));
        Peer::new(name, io)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// Wraps a connection.
    pub fn new(name: &'static str, io: S) -> Self {
        Peer {
            name,
            io,
            pending: Vec::new(),
        }
    }

    /// Writes `bytes` and flushes.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let name = self.name;
        let write = async {
            self.io.write_all(bytes.as_ref()).await?;
            self.io.flush().await
        };
        tokio::time::timeout(WAIT, write)
            .await
            .unwrap_or_else(|_| panic!("{name}: write timed out"))
            .unwrap_or_else(|e| panic!("{name}: write failed: {e}"));
    }

    /// Reads more bytes into the buffer; 0 at end of stream. Panics after [`WAIT`] without data.
    async fn fill(&mut self, waiting_for: &str) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!(
                "{}: read failed while waiting for {waiting_for}: {e}; got so far: {:?}",
                self.name,
                String::from_utf8_lossy(&self.pending)
            ),
            Err(_) => panic!(
                "{}: nothing more within {WAIT:?} while waiting for {waiting_for}; got so far: {:?}",
                self.name,
                String::from_utf8_lossy(&self.pending)
            ),
        };
        self.pending.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next `expected.len()` bytes must be exactly `expected`.
    pub async fn expect(&mut self, expected: impl AsRef<[u8]>) {
        let expected = expected.as_ref();
        let text = String::from_utf8_lossy(expected).into_owned();
        while self.pending.len() < expected.len() {
            if self.fill(&text).await == 0 {
                panic!(
                    "{}: connection closed while waiting for {text:?}; got {:?}",
                    self.name,
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
        let got: Vec<u8> = self.pending.drain(..expected.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            text,
            "{}: bytes differ from what was sent",
            self.name
        );
        assert_eq!(got, expected, "{}: bytes differ", self.name);
    }

    /// Everything up to and including the first `needle`.
    pub async fn read_until(&mut self, needle: &str) -> String {
        loop {
            if let Some(at) = find(&self.pending, needle.as_bytes()) {
                let got: Vec<u8> = self.pending.drain(..at + needle.len()).collect();
                return String::from_utf8_lossy(&got).into_owned();
            }
            if self.fill(needle).await == 0 {
                panic!(
                    "{}: connection closed before {needle:?}; got {:?}",
                    self.name,
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Everything until the other end closes the connection (a TLS stream closed without close_notify counts
    /// as closed too).
    pub async fn read_to_end(&mut self) -> String {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => self.pending.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Ok(Err(e)) => panic!(
                    "{}: read failed while waiting for the close: {e}",
                    self.name
                ),
                Err(_) => panic!(
                    "{}: connection still open after {WAIT:?}; got {:?}",
                    self.name,
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
        let all = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Nothing arrives for `quiet` (and the connection stays open).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let mut chunk = [0u8; 1024];
        if let Ok(result) = tokio::time::timeout(quiet, self.io.read(&mut chunk)).await {
            let got = match result {
                Ok(n) => String::from_utf8_lossy(&chunk[..n]).into_owned(),
                Err(e) => format!("error {e}"),
            };
            panic!("{}: expected silence, got {got:?}", self.name);
        }
    }

    /// Shuts down the write side.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(WAIT, self.io.shutdown()).await;
    }

    /// The connection, for a TLS upgrade. Nothing may be left unread: TLS starts right after `<proceed/>`.
    pub fn into_io(self) -> S {
        assert!(
            self.pending.is_empty(),
            "{}: bytes after the last expected element: {:?}",
            self.name,
            String::from_utf8_lossy(&self.pending)
        );
        self.io
    }

    /// The raw connection, to write bytes that are not XML (garbage, half a TLS record).
    pub fn io(&mut self) -> &mut S {
        &mut self.io
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A fake receiving server: a listener on an ephemeral port and a self-signed certificate for its domain.
pub struct Receiver {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    /// A file holding the certificate (PEM), for the proxy's `--upstream-ca`; removed on drop.
    cert_path: PathBuf,
    /// The certificate and its key, for acceptors with other settings ([`Receiver::acceptor_with`]).
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Receiver {
    /// Listens on `ip:0` as `domain`.
    pub async fn bind(ip: IpAddr, domain: &str) -> Receiver {
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("fake receiver: bind {ip}:0: {e}"));
        let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()])
            .unwrap_or_else(|e| panic!("fake receiver: self-signed certificate for {domain}: {e}"));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("fake receiver: TLS versions: {e}"))
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.clone_key())
            .unwrap_or_else(|e| panic!("fake receiver: TLS config: {e}"));
        let port = listener.local_addr().map_or(0, |a| a.port());
        let cert_path = std::env::temp_dir().join(format!(
            "xmpptap-fake-receiver-{}-{ip}-{port}.pem",
            std::process::id()
        ));
        std::fs::write(&cert_path, certified.cert.pem())
            .unwrap_or_else(|e| panic!("fake receiver: write {}: {e}", cert_path.display()));
        Receiver {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_path,
            cert: certified.cert.der().clone(),
            key,
        }
    }

    /// An acceptor with the receiver's certificate that answers the ALPN protocols `alpn` (so that the one the
    /// proxy offered shows as negotiated) and, with `client_auth`, asks the proxy for a client certificate.
    pub fn acceptor_with(
        &self,
        alpn: &[&[u8]],
        client_auth: Option<Arc<dyn ClientCertVerifier>>,
    ) -> TlsAcceptor {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("fake receiver: TLS versions: {e}"));
        let builder = match client_auth {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .unwrap_or_else(|e| panic!("fake receiver: TLS config: {e}"));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }

    /// [`Receiver::tls_accept`] with an acceptor from [`Receiver::acceptor_with`].
    pub async fn tls_accept_with(
        &self,
        peer: Peer<TcpStream>,
        acceptor: &TlsAcceptor,
    ) -> Peer<server::TlsStream<TcpStream>> {
        let name = peer.name;
        let tls = tokio::time::timeout(WAIT, acceptor.accept(peer.into_io()))
            .await
            .unwrap_or_else(|_| panic!("{name}: TLS handshake timed out"))
            .unwrap_or_else(|e| panic!("{name}: TLS handshake failed: {e}"));
        Peer::new(name, tls)
    }

    /// The receiver's certificate (PEM file): the proxy trusts it with `--upstream-ca`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Where the proxy should send the domain's streams.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake receiver: local_addr: {e}"))
    }

    /// The proxy's next connection.
    pub async fn accept(&self) -> Peer<TcpStream> {
        let (io, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .unwrap_or_else(|_| panic!("receiver: no connection from the proxy within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("receiver: accept failed: {e}"));
        Peer::new("receiver", io)
    }

    /// Server side of the TLS handshake, right after the receiver sent `<proceed/>`.
    pub async fn tls_accept(&self, peer: Peer<TcpStream>) -> Peer<server::TlsStream<TcpStream>> {
        let name = peer.name;
        let tls = tokio::time::timeout(WAIT, self.acceptor.accept(peer.into_io()))
            .await
            .unwrap_or_else(|_| panic!("{name}: TLS handshake timed out"))
            .unwrap_or_else(|e| panic!("{name}: TLS handshake failed: {e}"));
        Peer::new(name, tls)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert_path);
    }
}

/// Client side of the TLS handshake, as an initiator after `<proceed/>`: the proxy's certificate must chain to
/// the CA in `ca_pem` and be valid for `domain`.
pub async fn tls_connect(
    peer: Peer<TcpStream>,
    ca_pem: &Path,
    domain: &str,
) -> Peer<client::TlsStream<TcpStream>> {
    tls_connect_with(peer, ca_pem, domain, &[b"xmpp-server"], true).await
}

/// [`tls_connect`] offering the ALPN protocols `alpn`, and sending `domain` as SNI only if `sni` (the
/// certificate is checked against `domain` either way).
pub async fn tls_connect_with<S: AsyncRead + AsyncWrite + Unpin>(
    peer: Peer<S>,
    ca_pem: &Path,
    domain: &str,
    alpn: &[&[u8]],
    sni: bool,
) -> Peer<client::TlsStream<S>> {
    let name = peer.name;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{name}: TLS versions: {e}"))
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni;
    let server_name = ServerName::try_from(domain.to_owned())
        .unwrap_or_else(|e| panic!("{name}: {domain:?} as a TLS name: {e}"));
    let connect = TlsConnector::from(Arc::new(config)).connect(server_name, peer.into_io());
    let tls = tokio::time::timeout(WAIT, connect)
        .await
        .unwrap_or_else(|_| panic!("{name}: TLS handshake timed out"))
        .unwrap_or_else(|e| panic!("{name}: TLS handshake with the proxy failed: {e}"));
    Peer::new(name, tls)
}

/// The certificates of a PEM file as a trust store (e.g. xmpptap's CA, `<dir>/ca/ca.pem`).
pub fn roots(ca_pem: &Path) -> rustls::RootCertStore {
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert: CertificateDer<'static> =
            cert.unwrap_or_else(|e| panic!("{}: {e}", ca_pem.display()));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("trust {}: {e}", ca_pem.display()));
    }
    roots
}

/// The crypto provider the fakes use (ring, as xmpptap).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
