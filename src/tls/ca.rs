//! xmpptap's certificate authority: the CA files on disk and the leaf certificates minted from them.
//!
//! The CA lives in a directory as `ca.pem` (certificate) and `ca-key.pem` (PKCS#8 key, mode 0600). Operators add
//! `ca.pem` to the trust store of the servers whose traffic they intercept; xmpptap then presents, for each domain,
//! a leaf certificate signed by it ([`Ca::leaf`]). This module does not build rustls configurations (see
//! [`super::TlsContext`]) and does not decide which domain a certificate is for (the session does).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use super::der::{self, tag, tlv};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// The CA is valid for ten years: it is installed by hand into trust stores, so it should rarely need replacing.
const CA_VALIDITY: Duration = Duration::days(3653);
/// Leaf certificates start an hour in the past so that peers with a slightly slow clock accept them.
const LEAF_BACKDATE: Duration = Duration::hours(1);
/// Leaf certificates last 90 days, like public CAs' certificates: long enough for any debugging session, short
/// enough that a leaked leaf key (they are never written to disk) is not useful for long.
const LEAF_VALIDITY: Duration = Duration::days(90);
/// A cached leaf is minted again once it is this old, so a long-running proxy never serves an expired one.
const LEAF_REMINT_AFTER: std::time::Duration = std::time::Duration::from_secs(60 * 24 * 60 * 60);
/// Bound on the leaf cache. Domains come from untrusted stream headers, so without a bound a peer could make the
/// cache grow without limit; past it, an arbitrary entry is evicted (re-minting it later costs about a millisecond).
const LEAF_CACHE_CAPACITY: usize = 1024;
/// Longest domain name accepted (RFC 1035 2.3.4, without the trailing dot).
const MAX_DOMAIN_LEN: usize = 253;
/// Longest DNS label accepted (RFC 1035 2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// X.520 caps a common name at 64 characters; `xmpptap CA (` + `)` leaves this much for the host name.
const MAX_HOSTNAME_IN_CN: usize = 50;

/// What can go wrong loading, creating or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a CA file or directory failed.
    #[error("{action} {path}")]
    Io {
        /// What xmpptap was doing, e.g. "reading".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// [`Ca::load`] found no CA in the directory.
    #[error("no CA in {dir} (missing {missing}); run `xmpptap ca init` to create one")]
    NotFound {
        /// The CA directory.
        dir: PathBuf,
        /// The first missing file.
        missing: PathBuf,
    },
    /// Only one of the two CA files exists; xmpptap will not guess which one is wrong.
    #[error(
        "incomplete CA in {dir}: {present} exists but {missing} does not; \
         restore it, or run `xmpptap ca init --force` to replace the CA"
    )]
    Incomplete {
        /// The CA directory.
        dir: PathBuf,
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// [`Ca::init`] found a CA already and was not told to replace it.
    #[error("a CA already exists in {dir}; pass --force to replace it (peers trusting the old one will stop trusting xmpptap)")]
    AlreadyExists {
        /// The CA directory.
        dir: PathBuf,
    },
    /// A CA file exists but does not hold what it should.
    #[error("invalid CA file {path}: {reason}")]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("{key} is not the key of the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A domain (typically from a peer's stream header) cannot be put into a certificate.
    #[error("cannot mint a certificate for {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as received (escaped when printed).
        domain: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("generating {what}")]
    Generate {
        /// What was being generated, e.g. "the CA certificate".
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a freshly minted key or certificate.
    #[error("loading the minted certificate for {domain} into rustls")]
    Rustls {
        /// The domain of the leaf certificate.
        domain: String,
        /// The underlying rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// What `xmpptap ca show` prints about the CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaInfo {
    /// The subject distinguished name, e.g. `CN=xmpptap CA (host), O=xmpptap`.
    pub subject: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// SHA-256 over the DER certificate, as colon-separated upper-case hex.
    pub sha256_fingerprint: String,
    /// Path of the certificate file.
    pub cert_path: PathBuf,
    /// Path of the private key file.
    pub key_path: PathBuf,
}

impl fmt::Display for CaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "valid:       {} to {}", self.not_before, self.not_after)?;
        writeln!(f, "SHA-256:     {}", self.sha256_fingerprint)?;
        writeln!(f, "certificate: {}", self.cert_path.display())?;
        write!(f, "key:         {}", self.key_path.display())
    }
}

/// A leaf in the cache, with the time it was minted.
struct CachedLeaf {
    key: Arc<CertifiedKey>,
    minted: Instant,
}

/// xmpptap's CA: its certificate, its signing key, and a cache of the leaf certificates minted so far.
///
/// Shared as `Arc<Ca>`; [`Ca::leaf`] takes `&self`.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    cert_path: PathBuf,
    info: CaInfo,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
}

impl fmt::Debug for Ca {
    // Deliberately leaves out the issuer, which holds the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.info.subject)
            .field("sha256_fingerprint", &self.info.sha256_fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir` (files `ca.pem`, `ca-key.pem`), creating `dir` and both files if absent.
    ///
    /// If only one of the files exists, this is an error rather than a silent replacement.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        match CaFiles::new(dir).state() {
            FilesState::Absent => {
                let ca = Self::create(dir)?;
                tracing::info!(
                    cert = %ca.cert_path.display(),
                    sha256 = %ca.info.sha256_fingerprint,
                    "created a new xmpptap CA; add the certificate to the trust store of the intercepted servers",
                );
                Ok(ca)
            }
            _ => Self::load(dir),
        }
    }

    /// Loads an existing CA; a missing CA is an error whose message tells the user to run `xmpptap ca init`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        match files.state() {
            FilesState::Absent => {
                return Err(CaError::NotFound {
                    dir: dir.to_owned(),
                    missing: files.cert.clone(),
                })
            }
            FilesState::Incomplete { present, missing } => {
                return Err(CaError::Incomplete {
                    dir: dir.to_owned(),
                    present,
                    missing,
                })
            }
            FilesState::Present => {}
        }
        let cert_pem = read_to_string(&files.cert)?;
        let key_pem = read_to_string(&files.key)?;
        Self::from_pem(files, cert_pem, &key_pem)
    }

    /// Creates a new CA in `dir`; refuses to overwrite an existing one (or either of its files) unless `force`.
    pub fn init(dir: &Path, force: bool) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        if files.state() != FilesState::Absent {
            if !force {
                return Err(CaError::AlreadyExists {
                    dir: dir.to_owned(),
                });
            }
            // Removed rather than truncated, so the new key file is created fresh with mode 0600 even if someone
            // loosened the old one's permissions.
            for path in [&files.cert, &files.key] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(CaError::Io {
                            action: "removing the old CA file",
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
        }
        let ca = Self::create(dir)?;
        tracing::info!(
            cert = %ca.cert_path.display(),
            sha256 = %ca.info.sha256_fingerprint,
            "created a new xmpptap CA",
        );
        Ok(ca)
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is stored.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Subject, validity, SHA-256 fingerprint and paths, for `xmpptap ca show`.
    pub fn describe(&self) -> CaInfo {
        self.info.clone()
    }

    /// A leaf certificate and key for `domain`, signed by the CA.
    ///
    /// `domain` is an XMPP domain as it arrived (possibly from an untrusted stream header): it must be an ASCII
    /// host name (IDNs as `xn--` A-labels) or an IP address; a single trailing dot is ignored and case is folded.
    /// Anything else is [`CaError::InvalidDomain`]. Leaves are cached per normalized name.
    pub fn leaf(&self, domain: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = LeafName::parse(domain)?;
        let key = name.as_str().to_owned();
        // The map holds no invariant a panicking holder could have broken, so a poisoned lock is still usable.
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = leaves.get(&key) {
            if cached.minted.elapsed() < LEAF_REMINT_AFTER {
                return Ok(cached.key.clone());
            }
        }
        // Minting under the lock makes it happen once per domain even when connections race; it takes about a
        // millisecond.
        let minted = Arc::new(self.mint(&name)?);
        if leaves.len() >= LEAF_CACHE_CAPACITY && !leaves.contains_key(&key) {
            if let Some(victim) = leaves.keys().next().cloned() {
                leaves.remove(&victim);
            }
        }
        leaves.insert(
            key,
            CachedLeaf {
                key: minted.clone(),
                minted: Instant::now(),
            },
        );
        tracing::debug!(domain = name.as_str(), "minted a leaf certificate");
        Ok(minted)
    }

    /// The CA certificate as a rustls trust anchor store (tests use it to trust minted certificates).
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // The certificate was parsed when the CA was loaded, so webpki accepts it; if it somehow did not, the store
        // stays empty and verification fails closed.
        let (_added, _ignored) = roots.add_parsable_certificates([self.cert_der.clone()]);
        roots
    }

    /// Generates a new CA and writes it to `dir`, which must not hold either file.
    fn create(dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        create_dir(dir)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
                what: "the CA key",
                source,
            })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("xmpptap CA ({})", hostname()));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "xmpptap");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the CA certificate",
                source,
            })?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        // Key first: a directory that has `ca.pem` then always has its key too.
        write_new(&files.key, key_pem.as_bytes(), 0o600)?;
        write_new(&files.cert, cert_pem.as_bytes(), 0o644)?;
        Self::from_pem(files, cert_pem, &key_pem)
    }

    /// Builds a CA from its PEM files' contents, checking that the certificate is a CA and the key is its key.
    fn from_pem(files: CaFiles, cert_pem: String, key_pem: &str) -> Result<Self, CaError> {
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let first_cert = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next();
        let cert_der = match first_cert {
            Some(Ok(der)) => der,
            Some(Err(e)) => return Err(invalid(&files.cert, format!("bad PEM: {e}"))),
            None => return Err(invalid(&files.cert, "no CERTIFICATE block".into())),
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(&files.cert, format!("bad certificate: {e}")))?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(invalid(&files.cert, "not a CA certificate".into()));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(&files.key, format!("bad private key: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch {
                cert: files.cert,
                key: files.key,
            });
        }
        let info = CaInfo {
            subject: x509.subject().to_string(),
            not_before: rfc3339(x509.validity().not_before.to_datetime()),
            not_after: rfc3339(x509.validity().not_after.to_datetime()),
            sha256_fingerprint: colon_hex(&super::sha256(&cert_der)),
            cert_path: files.cert.clone(),
            key_path: files.key.clone(),
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(&files.cert, format!("unusable as an issuer: {e}")))?;
        Ok(Ca {
            cert_pem,
            cert_der,
            cert_path: files.cert,
            info,
            issuer,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Mints a leaf certificate for an already validated name.
    fn mint(&self, name: &LeafName) -> Result<CertifiedKey, CaError> {
        let domain = name.as_str();
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
                what: "a leaf key",
                source,
            })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, domain);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "xmpptap");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        // rcgen's own `subject_alt_names` cannot express the IA5String SRVName, so the whole extension is ours
        // (and `subject_alt_names` stays empty so rcgen does not write a second one).
        params.custom_extensions.push(name.subject_alt_name());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "a leaf certificate",
                source,
            })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![cert.der().clone()], key_der, &self.provider).map_err(
            |source| CaError::Rustls {
                domain: domain.to_owned(),
                source,
            },
        )
    }
}

/// A validated, normalized name to mint a leaf for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeafName {
    /// A lower-case ASCII host name without a trailing dot.
    Dns(String),
    /// An IP literal, kept with its textual form.
    Ip(IpAddr, String),
}

impl LeafName {
    fn parse(domain: &str) -> Result<Self, CaError> {
        let refuse = |reason| CaError::InvalidDomain {
            domain: domain.to_owned(),
            reason,
        };
        if let Ok(ip) = domain.parse::<IpAddr>() {
            return Ok(LeafName::Ip(ip, ip.to_string()));
        }
        let name = domain.strip_suffix('.').unwrap_or(domain);
        if name.is_empty() {
            return Err(refuse("empty domain"));
        }
        if !name.is_ascii() {
            return Err(refuse(
                "not ASCII; internationalized domains must be given as xn-- A-labels",
            ));
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(refuse("longer than 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(refuse("empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(refuse("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(refuse(
                    "labels may contain only letters, digits and hyphens",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(refuse("a label starts or ends with a hyphen"));
            }
        }
        let name = name.to_ascii_lowercase();
        // rustls must accept it as a server name too, or a certificate for it would be useless.
        if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
            return Err(refuse("not a valid DNS name"));
        }
        Ok(LeafName::Dns(name))
    }

    fn as_str(&self) -> &str {
        match self {
            LeafName::Dns(name) | LeafName::Ip(_, name) => name,
        }
    }

    /// The subjectAltName extension (RFC 5280 4.2.1.6) for this name, DER-encoded.
    ///
    /// Besides the dNSName (or iPAddress) that TLS libraries check, it carries the XMPP identities of RFC 6120
    /// 13.7.1.4 and RFC 7590: an id-on-xmppAddr otherName (UTF8String) and id-on-dnsSRV otherNames (IA5String)
    /// for `_xmpp-server.<domain>` and `_xmpp-client.<domain>`, since the same leaf serves both kinds of stream.
    /// Prosody accepts any one of them.
    fn subject_alt_name(&self) -> CustomExtension {
        let other_name = |oid: &[u8], value_tag: u8, value: &[u8]| {
            let mut content = tlv(tag::OID, oid);
            content.extend(tlv(tag::CONTEXT_0, &tlv(value_tag, value)));
            tlv(tag::CONTEXT_0, &content)
        };
        let mut names = Vec::new();
        match self {
            LeafName::Dns(domain) => {
                names.extend(tlv(tag::DNS_NAME, domain.as_bytes()));
                names.extend(other_name(
                    der::OID_XMPP_ADDR_DER,
                    tag::UTF8_STRING,
                    domain.as_bytes(),
                ));
                for service in ["_xmpp-server", "_xmpp-client"] {
                    let srv = format!("{service}.{domain}");
                    names.extend(other_name(
                        der::OID_SRV_NAME_DER,
                        tag::IA5_STRING,
                        srv.as_bytes(),
                    ));
                }
            }
            LeafName::Ip(ip, text) => {
                let octets = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                names.extend(tlv(tag::IP_ADDRESS, &octets));
                names.extend(other_name(
                    der::OID_XMPP_ADDR_DER,
                    tag::UTF8_STRING,
                    text.as_bytes(),
                ));
            }
        }
        // id-ce-subjectAltName; not critical because the subject is not empty.
        CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(tag::SEQUENCE, &names))
    }
}

/// The two file paths of a CA directory.
#[derive(Debug)]
struct CaFiles {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum FilesState {
    Absent,
    Incomplete { present: PathBuf, missing: PathBuf },
    Present,
}

impl CaFiles {
    fn new(dir: &Path) -> Self {
        CaFiles {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }

    fn state(&self) -> FilesState {
        // `exists` treats unreadable as absent; reading the file later reports the real error.
        match (self.cert.exists(), self.key.exists()) {
            (false, false) => FilesState::Absent,
            (true, true) => FilesState::Present,
            (true, false) => FilesState::Incomplete {
                present: self.cert.clone(),
                missing: self.key.clone(),
            },
            (false, true) => FilesState::Incomplete {
                present: self.key.clone(),
                missing: self.cert.clone(),
            },
        }
    }
}

fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Creates the CA directory (and parents), private to the user on Unix.
fn create_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| CaError::Io {
        action: "creating the CA directory",
        path: dir.to_owned(),
        source,
    })
}

/// Writes a file that must not exist yet, created with `mode` (on Unix) so it is never readable by others, even
/// briefly.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io_err = |action, source| CaError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| io_err("creating", e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err("writing", e))
}

/// A random, positive 128-bit serial number (RFC 5280 4.1.2.2 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// This machine's host name for the CA's common name, or `local`.
fn hostname() -> String {
    let name = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    name.chars().take(MAX_HOSTNAME_IN_CN).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::TempDir;

    #[test]
    fn creates_then_reloads_the_same_ca() {
        let dir = TempDir::new("reload");
        let ca_dir = dir.path().join("nested/ca");
        let created = Ca::load_or_create(&ca_dir).expect("create");
        let reloaded = Ca::load_or_create(&ca_dir).expect("reload");
        assert_eq!(created.cert_pem(), reloaded.cert_pem());
        assert_eq!(created.describe(), reloaded.describe());
        let loaded = Ca::load(&ca_dir).expect("load");
        assert_eq!(created.cert_pem(), loaded.cert_pem());
        assert_eq!(loaded.cert_path(), ca_dir.join(CA_CERT_FILE));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        Ca::load_or_create(dir.path()).expect("create");
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ca_certificate_has_the_expected_shape() {
        let dir = TempDir::new("shape");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        let subject = x509.subject().to_string();
        assert!(subject.contains("CN=xmpptap CA ("), "{subject}");
        assert!(subject.contains("O=xmpptap"), "{subject}");
        assert!(x509.basic_constraints().expect("bc").expect("bc").value.ca);
        let usage = x509.key_usage().expect("ku").expect("ku").value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        let years = (x509.validity().not_after.to_datetime()
            - x509.validity().not_before.to_datetime())
        .whole_days()
            / 365;
        assert_eq!(years, 10);
    }

    #[test]
    fn load_of_missing_ca_says_how_to_create_one() {
        let dir = TempDir::new("missing");
        let err = Ca::load(dir.path()).expect_err("no CA yet");
        assert!(matches!(err, CaError::NotFound { .. }));
        assert!(err.to_string().contains("xmpptap ca init"), "{err}");
    }

    #[test]
    fn incomplete_ca_is_an_error_not_a_replacement() {
        let dir = TempDir::new("incomplete");
        Ca::load_or_create(dir.path()).expect("create");
        fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("remove cert");
        let err = Ca::load_or_create(dir.path()).expect_err("key without cert");
        assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
        assert!(dir.path().join(CA_KEY_FILE).exists());
    }

    #[test]
    fn init_refuses_to_overwrite_unless_forced() {
        let dir = TempDir::new("init");
        let first = Ca::init(dir.path(), false).expect("first init");
        let err = Ca::init(dir.path(), false).expect_err("second init");
        assert!(matches!(err, CaError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            Ca::load(dir.path()).expect("load").cert_pem(),
            first.cert_pem()
        );
        let forced = Ca::init(dir.path(), true).expect("forced init");
        assert_ne!(forced.cert_pem(), first.cert_pem());
        assert_eq!(
            Ca::load(dir.path()).expect("load").cert_pem(),
            forced.cert_pem()
        );
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let a = TempDir::new("mismatch-a");
        let b = TempDir::new("mismatch-b");
        Ca::init(a.path(), false).expect("a");
        Ca::init(b.path(), false).expect("b");
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).expect("copy");
        let err = Ca::load(a.path()).expect_err("mismatch");
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn describe_and_debug() {
        let dir = TempDir::new("describe");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let info = ca.describe();
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);
        assert!(info
            .sha256_fingerprint
            .split(':')
            .all(|pair| pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit())));
        let shown = info.to_string();
        assert!(shown.contains(&info.sha256_fingerprint) && shown.contains("xmpptap CA"));
        let json = serde_json::to_value(&info).expect("json");
        assert_eq!(json["sha256_fingerprint"], info.sha256_fingerprint.as_str());
        let debug = format!("{ca:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert!(!debug.contains("issuer"), "{debug}");
    }

    #[test]
    fn leaf_is_cached_per_normalized_name() {
        let dir = TempDir::new("cache");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let first = ca.leaf("b.test").expect("leaf");
        let second = ca.leaf("b.test").expect("leaf");
        assert!(Arc::ptr_eq(&first, &second));
        let third = ca.leaf("B.Test.").expect("leaf");
        assert!(Arc::ptr_eq(&first, &third));
        let other = ca.leaf("c.test").expect("leaf");
        assert!(!Arc::ptr_eq(&first, &other));
    }

    #[test]
    fn leaf_carries_dns_and_xmpp_names() {
        let dir = TempDir::new("sans");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let leaf = ca.leaf("b.test").expect("leaf");
        assert_eq!(leaf.cert.len(), 1);
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).expect("parse");
        let sans = super::super::info::subject_alt_names(&x509);
        assert_eq!(
            sans,
            [
                "DNS:b.test",
                "xmppAddr:b.test",
                "SRVName:_xmpp-server.b.test",
                "SRVName:_xmpp-client.b.test",
            ]
        );
        let eku = x509.extended_key_usage().expect("eku").expect("eku").value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!x509.is_ca());
        let validity = x509.validity();
        let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
        assert_eq!(lifetime, LEAF_VALIDITY + LEAF_BACKDATE);
    }

    #[test]
    fn leaf_for_ip_literal_has_ip_san() {
        let dir = TempDir::new("ip");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let leaf = ca.leaf("127.0.0.1").expect("leaf");
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).expect("parse");
        let sans = super::super::info::subject_alt_names(&x509);
        assert_eq!(sans, ["IP:127.0.0.1", "xmppAddr:127.0.0.1"]);
    }

    #[test]
    fn leaf_verifies_against_the_root_store() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let dir = TempDir::new("verify");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca.root_store()),
            provider,
        )
        .build()
        .expect("verifier");
        let leaf = ca.leaf("b.test").expect("leaf");
        let verify = |name: &'static str| {
            verifier.verify_server_cert(
                &leaf.cert[0],
                &[],
                &ServerName::try_from(name).expect("name"),
                &[],
                UnixTime::now(),
            )
        };
        assert!(verify("b.test").is_ok());
        assert!(verify("c.test").is_err());
    }

    #[test]
    fn invalid_domains_are_refused() {
        let dir = TempDir::new("invalid");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = format!("{}test", "abcdefgh.".repeat(29));
        for bad in [
            "",
            ".",
            "a b",
            "../x",
            "a..b",
            "-a.test",
            "a-.test",
            "a_b.test",
            "b.test/x",
            "b.test\0",
            "\u{fc}ber.test",
            "*.b.test",
            "user@b.test",
            &long_label,
            &long_name,
        ] {
            match ca.leaf(bad) {
                Err(CaError::InvalidDomain { .. }) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(ca.leaf("xn--ber-goa.test").is_ok());
        assert!(ca.leaf("localhost").is_ok());
    }
}
