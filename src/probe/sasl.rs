//! SASL clients for the probe, sans-IO: what to send for SCRAM (RFC 5802, RFC 7677; `-PLUS` with channel binding,
//! RFC 5929 and RFC 9266), PLAIN (RFC 4616) and EXTERNAL (RFC 4422 appendix A), and how to judge the server's
//! answers. The XMPP wrapping (`<auth>`, `<challenge>`, `<response>`, `<success>`) and the I/O are the flows' job
//! ([`super::c2s`], [`super::s2s`]).
//!
//! Passwords are used as given, as UTF-8, without SASLprep (RFC 4013): identical for ASCII passwords and for most
//! others, but a password with characters SASLprep maps or removes (non-ASCII spaces, soft hyphens) would fail.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// Most PBKDF2 iterations accepted from a server: a hostile server could otherwise make the probe spin for
/// minutes. Prosody uses 10 000 (4 096 in older versions); RFC 7677 recommends at least 4 096.
const MAX_ITERATIONS: u32 = 10_000_000;

/// A secret that never prints: `Debug` and `Display` show `[hidden]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the computation that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[hidden]")
    }
}

/// The mechanisms the probe can use, in its order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
pub enum Mechanism {
    /// SCRAM-SHA-256 with channel binding.
    #[value(name = "SCRAM-SHA-256-PLUS")]
    #[serde(rename = "SCRAM-SHA-256-PLUS")]
    ScramSha256Plus,
    /// SCRAM-SHA-1 with channel binding.
    #[value(name = "SCRAM-SHA-1-PLUS")]
    #[serde(rename = "SCRAM-SHA-1-PLUS")]
    ScramSha1Plus,
    /// SCRAM-SHA-256 (RFC 7677).
    #[value(name = "SCRAM-SHA-256")]
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-1 (RFC 5802).
    #[value(name = "SCRAM-SHA-1")]
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    /// PLAIN (RFC 4616): the password itself, so only over TLS unless the dangerous flag says otherwise.
    #[value(name = "PLAIN")]
    #[serde(rename = "PLAIN")]
    Plain,
    /// EXTERNAL: the TLS client certificate authenticates (S2S, XEP-0178).
    #[value(skip)]
    #[serde(rename = "EXTERNAL")]
    External,
}

impl Mechanism {
    /// Password mechanisms in the probe's order of preference (strongest first).
    pub const PREFERENCE: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA name, as in `<mechanism>`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }

    /// The SCRAM hash, for SCRAM mechanisms.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain | Mechanism::External => None,
        }
    }

    /// Whether this is a `-PLUS` (channel binding) mechanism.
    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    /// SHA-1 (SCRAM-SHA-1).
    Sha1,
    /// SHA-256 (SCRAM-SHA-256).
    Sha256,
}

impl ScramHash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => &digest::SHA256,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// Channel binding data for a `-PLUS` mechanism: the type name and the bytes from the TLS session.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding {
    /// `tls-exporter` (RFC 9266) or `tls-server-end-point` (RFC 5929).
    pub kind: String,
    /// The binding data.
    pub data: Vec<u8>,
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChannelBinding({}, {} bytes)",
            self.kind,
            self.data.len()
        )
    }
}

/// The GS2 channel-binding flag a non-PLUS SCRAM exchange sends (RFC 5802 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gs2Flag {
    /// `n`: the client does not do channel binding here (plaintext, or a non-PLUS mechanism chosen while the
    /// server offers -PLUS).
    No,
    /// `y`: the client could bind but the server offered no -PLUS mechanism. A server that does support channel
    /// binding then fails the exchange: that is how SCRAM detects that something stripped -PLUS on the way.
    ClientOnly,
}

/// Why a SASL exchange failed on the client side (the server's `<failure>` is reported separately).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// A challenge or success payload is not base64.
    #[error("the server's payload is not base64")]
    Base64,
    /// The server-first-message is malformed or lacks `r`, `s` or `i`.
    #[error("malformed SCRAM server-first-message: {0}")]
    ServerFirst(String),
    /// The server's nonce does not start with the client's (RFC 5802 5.1).
    #[error("the server's SCRAM nonce does not extend the client's nonce")]
    Nonce,
    /// The iteration count is 0 or larger than the probe accepts.
    #[error("SCRAM iteration count {0} out of range (1..={MAX_ITERATIONS})")]
    Iterations(u64),
    /// The server-first-message has a mandatory extension (`m=`) the probe does not know.
    #[error("the server requires an unknown SCRAM extension")]
    MandatoryExtension,
    /// The server-final-message carries `e=`.
    #[error("the server rejected the SCRAM exchange: {0}")]
    ServerError(String),
    /// The server's signature is wrong: the server does not know the password (or something in the middle
    /// changed the exchange).
    #[error(
        "the server's SCRAM signature does not verify: the server does not know the password, or something \
         altered the exchange"
    )]
    ServerSignature,
    /// The server-final-message is malformed.
    #[error("malformed SCRAM server-final-message: {0}")]
    ServerFinal(String),
    /// A message came out of order.
    #[error("unexpected {0} in the SCRAM exchange")]
    OutOfOrder(&'static str),
}

/// Where a [`Scram`] exchange is.
#[derive(Debug, Clone)]
enum ScramState {
    /// client-first sent, waiting for server-first.
    ClientFirstSent,
    /// client-final sent, waiting for server-final: the ServerKey and the AuthMessage its signature covers.
    ClientFinalSent {
        server_key: hmac::Key,
        auth_message: String,
    },
    /// Server signature verified.
    Verified,
}

/// A SCRAM client exchange (RFC 5802 5). Feed it the server's messages in order.
#[derive(Debug)]
pub struct Scram {
    hash: ScramHash,
    password: Secret,
    gs2_header: String,
    channel_binding: Option<ChannelBinding>,
    client_nonce: String,
    client_first_bare: String,
    state: ScramState,
}

impl Scram {
    /// Starts an exchange for `username` (a JID's localpart). `channel_binding` makes it a `-PLUS` exchange
    /// (`p=<type>`); without it `flag` says whether the client could have bound. `nonce` must be fresh and random
    /// (printable, no comma).
    pub fn new(
        hash: ScramHash,
        username: &str,
        password: Secret,
        nonce: String,
        channel_binding: Option<ChannelBinding>,
        flag: Gs2Flag,
    ) -> Self {
        let gs2_header = match (&channel_binding, flag) {
            (Some(cb), _) => format!("p={},,", cb.kind),
            (None, Gs2Flag::ClientOnly) => "y,,".to_owned(),
            (None, Gs2Flag::No) => "n,,".to_owned(),
        };
        let client_first_bare = format!("n={},r={nonce}", saslname(username));
        Scram {
            hash,
            password,
            gs2_header,
            channel_binding,
            client_nonce: nonce,
            client_first_bare,
            state: ScramState::ClientFirstSent,
        }
    }

    /// The client-first-message (the `<auth>` payload, before base64).
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    /// Takes the server-first-message (decoded challenge) and returns the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        if !matches!(self.state, ScramState::ClientFirstSent) {
            return Err(SaslError::OutOfOrder("challenge"));
        }
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| SaslError::ServerFirst("not UTF-8".into()))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for (i, part) in server_first.split(',').enumerate() {
            let Some((key, value)) = part.split_once('=') else {
                return Err(SaslError::ServerFirst(format!("attribute {part:?}")));
            };
            match key {
                "m" if i == 0 => return Err(SaslError::MandatoryExtension),
                "r" => nonce = Some(value),
                "s" => {
                    salt = Some(
                        BASE64
                            .decode(value)
                            .map_err(|_| SaslError::ServerFirst("salt is not base64".into()))?,
                    )
                }
                "i" => {
                    let count: u64 = value.parse().map_err(|_| {
                        SaslError::ServerFirst(format!("iteration count {value:?}"))
                    })?;
                    iterations = Some(count);
                }
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(SaslError::ServerFirst("missing r, s or i".into()));
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(SaslError::Nonce);
        }
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .and_then(std::num::NonZeroU32::new)
            .ok_or(SaslError::Iterations(iterations))?;

        let mut cbind_input = self.gs2_header.as_bytes().to_vec();
        if let Some(cb) = &self.channel_binding {
            cbind_input.extend_from_slice(&cb.data);
        }
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&cbind_input));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);

        let mut salted = vec![0u8; self.hash.len()];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            iterations,
            &salt,
            self.password.expose().as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        self.state = ScramState::ClientFinalSent {
            server_key: hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message,
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (`v=` with the server signature, or `e=` with an error).
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), SaslError> {
        let ScramState::ClientFinalSent {
            server_key,
            auth_message,
        } = &self.state
        else {
            return Err(SaslError::OutOfOrder("server-final-message"));
        };
        let text = std::str::from_utf8(server_final)
            .map_err(|_| SaslError::ServerFinal("not UTF-8".into()))?;
        let first = text.split(',').next().unwrap_or("");
        if let Some(error) = first.strip_prefix("e=") {
            return Err(SaslError::ServerError(error.to_owned()));
        }
        let Some(signature) = first.strip_prefix("v=") else {
            return Err(SaslError::ServerFinal(format!("{first:?}")));
        };
        let signature = BASE64
            .decode(signature)
            .map_err(|_| SaslError::ServerFinal("signature is not base64".into()))?;
        // ServerSignature = HMAC(ServerKey, AuthMessage), compared in constant time.
        if hmac::verify(server_key, auth_message.as_bytes(), &signature).is_err() {
            return Err(SaslError::ServerSignature);
        }
        self.state = ScramState::Verified;
        Ok(())
    }

    /// Whether the server's signature has been verified.
    pub fn is_verified(&self) -> bool {
        matches!(self.state, ScramState::Verified)
    }

    /// Whether the client-final-message has been sent (so the next challenge is the server-final-message).
    pub fn awaits_server_final(&self) -> bool {
        matches!(self.state, ScramState::ClientFinalSent { .. })
    }
}

/// The PLAIN message (RFC 4616): no authorization identity, `username`, `password`.
pub fn plain_message(username: &str, password: &Secret) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + username.len() + password.expose().len());
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.expose().as_bytes());
    out
}

/// Base64 of `bytes`, `=` for none (RFC 6120 6.4.2: an empty initial response is sent as `=`).
pub fn encode_payload(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "=".to_owned()
    } else {
        BASE64.encode(bytes)
    }
}

/// The bytes of a challenge or success payload (text of the element; empty or `=` is none).
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    BASE64.decode(text).map_err(|_| SaslError::Base64)
}

/// A fresh client nonce: 24 random bytes, base64 (printable, no comma).
pub fn nonce() -> String {
    let mut bytes = [0u8; 24];
    super::random_bytes(&mut bytes);
    BASE64.encode(bytes)
}

/// The SCRAM `saslname` encoding of a username: `=` as `=3D`, `,` as `=2C`.
fn saslname(username: &str) -> String {
    username.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(
        hash: ScramHash,
        nonce: &str,
        server_first: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let mut scram = Scram::new(
            hash,
            "user",
            Secret::new("pencil".into()),
            nonce.into(),
            None,
            Gs2Flag::No,
        );
        assert_eq!(
            String::from_utf8(scram.client_first()).expect("utf8"),
            format!("n,,n=user,r={nonce}")
        );
        let ours = scram.client_final(server_first.as_bytes()).expect("final");
        assert_eq!(String::from_utf8(ours).expect("utf8"), client_final);
        assert!(scram.awaits_server_final());
        scram
            .verify_server_final(server_final.as_bytes())
            .expect("server signature");
        assert!(scram.is_verified());
    }

    /// RFC 5802 section 5.
    #[test]
    fn scram_sha1_rfc5802_example() {
        exchange(
            ScramHash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    /// RFC 7677 section 3.
    #[test]
    fn scram_sha256_rfc7677_example() {
        exchange(
            ScramHash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    #[test]
    fn scram_rejects_a_wrong_server_signature_and_a_foreign_nonce() {
        let mut scram = Scram::new(
            ScramHash::Sha1,
            "user",
            Secret::new("pencil".into()),
            "fyko+d2lbbFgONRv9qkxdawL".into(),
            None,
            Gs2Flag::No,
        );
        assert_eq!(
            scram.client_final(b"r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096"),
            Err(SaslError::Nonce)
        );
        scram
            .client_final(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .expect("final");
        assert_eq!(
            scram.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(SaslError::ServerSignature)
        );
        assert_eq!(
            scram.verify_server_final(b"e=invalid-proof"),
            Err(SaslError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn scram_checks_iterations_and_extensions() {
        let mut scram = Scram::new(
            ScramHash::Sha256,
            "u",
            Secret::new("p".into()),
            "abc".into(),
            None,
            Gs2Flag::No,
        );
        assert_eq!(
            scram.client_final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=0"),
            Err(SaslError::Iterations(0))
        );
        assert_eq!(
            scram.client_final(b"m=ext,r=abcdef,s=QSXCR+Q6sek8bf92,i=1"),
            Err(SaslError::MandatoryExtension)
        );
        assert!(matches!(
            scram.client_final(b"r=abcdef,i=1"),
            Err(SaslError::ServerFirst(_))
        ));
    }

    #[test]
    fn gs2_headers_and_channel_binding_input() {
        let cb = ChannelBinding {
            kind: "tls-exporter".into(),
            data: vec![1, 2, 3],
        };
        let mut plus = Scram::new(
            ScramHash::Sha256,
            "a=b,c",
            Secret::new("p".into()),
            "xyz".into(),
            Some(cb),
            Gs2Flag::No,
        );
        assert_eq!(
            String::from_utf8(plus.client_first()).expect("utf8"),
            "p=tls-exporter,,n=a=3Db=2Cc,r=xyz"
        );
        let last = String::from_utf8(
            plus.client_final(b"r=xyz123,s=QSXCR+Q6sek8bf92,i=1")
                .expect("final"),
        )
        .expect("utf8");
        let c = last
            .split(',')
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .expect("c=");
        assert_eq!(
            BASE64.decode(c).expect("base64"),
            b"p=tls-exporter,,\x01\x02\x03"
        );
        let y = Scram::new(
            ScramHash::Sha1,
            "u",
            Secret::new("p".into()),
            "n".into(),
            None,
            Gs2Flag::ClientOnly,
        );
        assert!(y.client_first().starts_with(b"y,,"));
    }

    #[test]
    fn plain_and_payload_encoding() {
        let message = plain_message("alice", &Secret::new("pw".into()));
        assert_eq!(message, b"\0alice\0pw");
        assert_eq!(encode_payload(&[]), "=");
        assert_eq!(decode_payload("=").expect("empty"), Vec::<u8>::new());
        assert_eq!(decode_payload(" AAE= ").expect("bytes"), vec![0, 1]);
        assert_eq!(decode_payload("!!"), Err(SaslError::Base64));
        assert_eq!(format!("{:?}", Secret::new("pw".into())), "[hidden]");
        assert!(!nonce().contains(','));
    }
}
