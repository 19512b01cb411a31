//! A test's own files: a scratch directory ([`Scratch`]) and a throwaway certificate authority
//! ([`TestCa`]) whose certificates the test writes there for the servers and clients it starts.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A directory of this test's files (CA certificates, keys, config snippets); removed on drop
/// unless the test failed, so a failure can be looked into.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new directory `<prefix>-<pid>-<test_id>-<nanos>` in the system's temporary directory.
    pub fn new(prefix: &str, test_id: u8) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("{prefix}-{}-{test_id}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        Scratch(dir)
    }

    /// Writes `contents` to the file `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kept {:?} for debugging", self.0);
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A test CA: its certificate as PEM, and leaf certificates signed by it.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh self-signed CA whose subject is `CN=<common_name>`.
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `dns_name`, usable by TLS servers only.
    pub fn leaf(&self, dns_name: &str) -> (String, String) {
        self.signed_leaf(dns_name, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// (certificate PEM, key PEM) for `dns_name`, usable by TLS servers and clients (an S2S
    /// initiator, or a client offering SASL EXTERNAL).
    pub fn leaf_with_client_auth(&self, dns_name: &str) -> (String, String) {
        self.signed_leaf(
            dns_name,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn signed_leaf(
        &self,
        dns_name: &str,
        extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("leaf key: {e}"));
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])
            .unwrap_or_else(|e| panic!("leaf params for {dns_name}: {e}"));
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = extended_key_usages;
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("leaf certificate for {dns_name}: {e}"));
        (cert.pem(), key.serialize_pem())
    }
}
