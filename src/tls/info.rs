//! What the transcript records about an established TLS session: [`TlsInfo`].
//!
//! Read-only: nothing here affects a handshake.

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use rustls::{CommonState, ProtocolVersion};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::der::{self, read_tlv, tag};

/// What the transcript says about an established TLS session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// Negotiated protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Negotiated cipher suite in IANA style, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Negotiated ALPN protocol, e.g. `xmpp-server`.
    pub alpn: Option<String>,
    /// The SNI the client sent. Filled in by [`server_info`]; rustls does not report it on the client side, so
    /// [`client_info`] leaves it `None` for the caller, who knows what it passed to `connect()`.
    pub sni: Option<String>,
    /// Subject of the peer's end-entity certificate, e.g. `CN=example.net`.
    pub peer_subject: Option<String>,
    /// Subject alternative names of the peer's end-entity certificate, as `DNS:example.net`, `IP:192.0.2.1`,
    /// `xmppAddr:example.net`, `SRVName:_xmpp-server.example.net`, `URI:...`, `email:...` or `otherName:<oid>`.
    pub peer_sans: Vec<String>,
}

/// Describes the receiver leg's session, where xmpptap is the client. `sni` is `None` (see [`TlsInfo::sni`]).
pub fn client_info(conn: &rustls::ClientConnection) -> TlsInfo {
    common_info(conn, None)
}

/// Describes the initiator leg's session, where xmpptap is the server. The peer certificate is the one the
/// initiator offered, if any (xmpptap asks for one but does not require it).
pub fn server_info(conn: &rustls::ServerConnection) -> TlsInfo {
    common_info(conn, conn.server_name().map(str::to_owned))
}

fn common_info(state: &CommonState, sni: Option<String>) -> TlsInfo {
    let version = match state.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "none".to_owned(),
    };
    let cipher = match state.negotiated_cipher_suite() {
        Some(suite) => match suite.suite().as_str() {
            Some(name) => name.to_owned(),
            None => format!("{:?}", suite.suite()),
        },
        None => "none".to_owned(),
    };
    let alpn = state
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let (peer_subject, peer_sans) = match state.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => describe_cert(cert),
        None => (None, Vec::new()),
    };
    TlsInfo {
        version,
        cipher,
        alpn,
        sni,
        peer_subject,
        peer_sans,
    }
}

/// Subject and SANs of a certificate; a certificate x509-parser cannot read is reported as such, not as an error,
/// since the handshake already accepted it.
fn describe_cert(cert: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x509)) => (Some(x509.subject().to_string()), subject_alt_names(&x509)),
        Err(e) => (Some(format!("<unparsable certificate: {e}>")), Vec::new()),
    }
}

/// The subject alternative names of `cert`, in certificate order, in the notation of [`TlsInfo::peer_sans`].
pub(crate) fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(s) => format!("DNS:{s}"),
            GeneralName::RFC822Name(s) => format!("email:{s}"),
            GeneralName::URI(s) => format!("URI:{s}"),
            GeneralName::IPAddress(octets) => match ip_from_octets(octets) {
                Some(ip) => format!("IP:{ip}"),
                None => format!("IP:<{} bytes>", octets.len()),
            },
            GeneralName::OtherName(oid, value) => {
                let oid = oid.to_id_string();
                let label = match oid.as_str() {
                    der::OID_XMPP_ADDR => "xmppAddr",
                    der::OID_SRV_NAME => "SRVName",
                    _ => return format!("otherName:{oid}"),
                };
                match other_name_string(value) {
                    Some(s) => format!("{label}:{s}"),
                    None => format!("{label}:<unparsable>"),
                }
            }
            GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
            other => other.to_string(),
        })
        .collect()
}

/// The string inside an otherName value (`[0] EXPLICIT` around a UTF8String or IA5String).
fn other_name_string(value: &[u8]) -> Option<String> {
    let (outer, content, _) = read_tlv(value)?;
    if outer != tag::CONTEXT_0 {
        return None;
    }
    let (inner, bytes, _) = read_tlv(content)?;
    match inner {
        tag::UTF8_STRING | tag::IA5_STRING => std::str::from_utf8(bytes).ok().map(str::to_owned),
        _ => None,
    }
}

fn ip_from_octets(octets: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(octets).ok().map(IpAddr::from)
}
