//! What interception has to change or watch, process level: the real `xmpptap` binary between fake peers that
//! write literal bytes (see `support::fake`). Feature rewriting (channel binding, compression, EXTERNAL,
//! `--strip-starttls`), `--require-tls`, `--client-cert mint`, Direct TLS (SNI minting, ALPN, ClientHello
//! sniffing) and stream management. Each test checks what the peers see on the wire and what the transcript
//! says.
//!
//! Domains: S2S from `a.test` to `b.test`; C2S clients of `a.test`. Addresses: file id 70 (see
//! `tests/support/mod.rs`); host 10 is the proxy, 3 the fake receiver.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use support::fake::{self, Peer, Receiver};
use support::wire::{
    assert_stream_error, ini_header, rec_header, CLOSE, FEATURES_PLAIN, FEATURES_TLS, PROCEED,
    STARTTLS, STREAM_NS,
};
use support::xmpptap::{finished, named, one, wait_transcript, Xmpptap};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const FILE_ID: u8 = 70;

const C2S_FEATURES_TLS: &str =
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
    <required/></starttls></stream:features>";
const DB_RESULT: &str = "<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>";
const DB_VALID: &str = "<db:result type='valid' from='b.test' to='a.test'/>";
const XMPP_CLIENT: &[u8] = b"xmpp-client";
const XMPP_SERVER: &[u8] = b"xmpp-server";

/// A client's stream header toward its server a.test.
fn client_header() -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' {STREAM_NS} to='a.test' \
         version='1.0' xml:lang='en'>"
    )
}

/// The C2S server's (a.test) stream header with stream id `id`.
fn server_header(id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' {STREAM_NS} id='{id}' \
         from='a.test' version='1.0' xml:lang='en'>"
    )
}

fn ip(test: u8, host: u8) -> IpAddr {
    support::addr(FILE_ID, test, host).into()
}

/// A fake receiver for `domain` and a proxy trusting its certificate, started with `args` (listeners
/// included; `{ip}` in an argument stands for the proxy's address and `{rec}` for the receiver's).
async fn setup(test: u8, domain: &str, args: &[&str]) -> (Xmpptap, Receiver) {
    let receiver = Receiver::bind(ip(test, 3), domain).await;
    let mut all = vec![format!("--upstream-ca={}", receiver.cert_path().display())];
    all.extend(args.iter().map(|a| {
        a.replace("{ip}", &ip(test, 10).to_string())
            .replace("{rec}", &receiver.addr().to_string())
    }));
    (Xmpptap::start(&all).await, receiver)
}

/// S2S: a proxy on an s2s listener routing b.test to a fake receiver, with extra `args`.
async fn s2s(test: u8, args: &[&str]) -> (Xmpptap, Receiver) {
    let mut all = vec!["--s2s-listen={ip}:0", "--route=b.test={rec}"];
    all.extend_from_slice(args);
    setup(test, "b.test", &all).await
}

/// C2S: a proxy on a c2s listener routing a.test to a fake server, with extra `args`.
async fn c2s(test: u8, args: &[&str]) -> (Xmpptap, Receiver) {
    let mut all = vec!["--c2s-listen={ip}:0", "--c2s-route=a.test={rec}"];
    all.extend_from_slice(args);
    setup(test, "a.test", &all).await
}

/// The initiator connects to `listener` and sends `header`; the receiver gets the proxy's connection and the
/// header, unchanged.
async fn open(
    tap: &Xmpptap,
    listener: &str,
    receiver: &Receiver,
    header: &str,
) -> (Peer<TcpStream>, Peer<TcpStream>) {
    let mut ini = Peer::connect("initiator", tap.listener(listener)).await;
    ini.send(header).await;
    let mut rec = receiver.accept().await;
    rec.expect(header).await;
    (ini, rec)
}

/// STARTTLS on both legs after the receiver's first features went down: the initiator asks, the receiver
/// proceeds (with `acceptor`), the initiator verifies xmpptap's certificate for `domain` offering `alpn`.
#[allow(clippy::too_many_arguments)]
async fn starttls(
    tap: &Xmpptap,
    receiver: &Receiver,
    acceptor: &tokio_rustls::TlsAcceptor,
    mut ini: Peer<TcpStream>,
    mut rec: Peer<TcpStream>,
    domain: &str,
    alpn: &[u8],
) -> (
    Peer<tokio_rustls::client::TlsStream<TcpStream>>,
    Peer<tokio_rustls::server::TlsStream<TcpStream>>,
) {
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let rec = receiver.tls_accept_with(rec, acceptor).await;
    ini.expect(PROCEED).await;
    let ini = fake::tls_connect_with(ini, &tap.ca_file(), domain, &[alpn], true).await;
    (ini, rec)
}

/// Both directions pass one element each, byte for byte.
async fn exchange<A, B>(ini: &mut Peer<A>, rec: &mut Peer<B>, up: &str, down: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    ini.send(up).await;
    rec.expect(up).await;
    rec.send(down).await;
    ini.expect(down).await;
}

// ---------------------------------------------------------------------------------------------------------
// Transcript helpers

/// The `what` of each removal in a `rewrite` event, checking that each says why.
fn removals(rewrite: &Value) -> Vec<String> {
    let removed = rewrite["removed"]
        .as_array()
        .unwrap_or_else(|| panic!("rewrite without a removed list: {rewrite:#}"));
    removed
        .iter()
        .map(|r| {
            let why = r["why"].as_str().unwrap_or_default();
            assert!(why.len() > 10, "a removal without a reason: {r:#}");
            r["what"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// The `why` of the removal whose `what` is `what`.
fn why<'a>(rewrite: &'a Value, what: &str) -> &'a str {
    rewrite["removed"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["what"] == what))
        .and_then(|r| r["why"].as_str())
        .unwrap_or_else(|| panic!("no removal of {what:?} in {rewrite:#}"))
}

/// The subject alternative names of a DER certificate, as `DNS:name`.
fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .unwrap_or_else(|e| panic!("unreadable certificate: {e}"));
    let san = cert
        .subject_alternative_name()
        .unwrap_or_else(|e| panic!("bad subjectAltName: {e}"))
        .unwrap_or_else(|| panic!("certificate without subjectAltName"));
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
            _ => None,
        })
        .collect()
}

/// The certificate the proxy presented to a fake client.
fn server_cert<S: AsyncRead + AsyncWrite + Unpin>(
    ini: &mut Peer<tokio_rustls::client::TlsStream<S>>,
) -> Vec<u8> {
    ini.io()
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_else(|| panic!("the proxy presented no certificate"))
}

/// A client-certificate verifier trusting xmpptap's CA; `optional` lets a client without one through.
fn ca_verifier(
    tap: &Xmpptap,
    optional: bool,
) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(fake::roots(&tap.ca_file())),
        fake::provider(),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .unwrap_or_else(|e| panic!("client certificate verifier: {e}"))
}

// ---------------------------------------------------------------------------------------------------------
// 1. C2S: channel binding and compression

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

#[tokio::test]
async fn c2s_loses_channel_binding_and_compression_after_tls_and_after_sasl() {
    let (tap, receiver) = c2s(1, &[]).await;
    let (mut ini, mut rec) = open(&tap, "c2s", &receiver, &client_header()).await;
    let first = server_header("pre-tls") + C2S_FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    let acceptor = receiver.acceptor_with(&[XMPP_CLIENT, XMPP_SERVER], None);
    let (mut ini, mut rec) =
        starttls(&tap, &receiver, &acceptor, ini, rec, "a.test", XMPP_CLIENT).await;
    let upstream_alpn = rec.io().get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(upstream_alpn.as_deref(), Some(XMPP_CLIENT), "ALPN upstream");

    // After TLS: pretty-printed features with everything interception breaks, and a few things it does not.
    ini.send(client_header()).await;
    rec.expect(client_header()).await;
    let features = format!(
        "<stream:features>\n  <mechanisms xmlns=\"{SASL_NS}\">\n    \
         <mechanism>SCRAM-SHA-1-PLUS</mechanism>\n    <mechanism>SCRAM-SHA-1</mechanism>\n    \
         <mechanism>PLAIN</mechanism>\n  </mechanisms>\n  \
         <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>\
         <channel-binding type='tls-server-end-point'/></sasl-channel-binding>\n  \
         <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\n  \
         <register xmlns='http://jabber.org/features/iq-register'/>\n</stream:features>"
    );
    let offered = format!(
        "<stream:features>\n  <mechanisms xmlns=\"{SASL_NS}\">\n    \
         <mechanism>SCRAM-SHA-1</mechanism>\n    \
         <mechanism>PLAIN</mechanism>\n  </mechanisms>\n  \
         <register xmlns='http://jabber.org/features/iq-register'/>\n</stream:features>"
    );
    rec.send(server_header("tls") + &features).await;
    ini.expect(server_header("tls") + &offered).await;

    // SASL passes end to end; after success both restart, and the new features come through the relay.
    let auth = format!("<auth xmlns='{SASL_NS}' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>");
    let success = format!("<success xmlns='{SASL_NS}'/>");
    exchange(&mut ini, &mut rec, &auth, &success).await;
    ini.send(client_header()).await;
    rec.expect(client_header()).await;
    let bind = "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>";
    let sm = "<sm xmlns='urn:xmpp:sm:3'/>";
    let compression =
        "<compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>";
    let authed = format!("<stream:features>{bind}{compression}{sm}</stream:features>");
    // A keepalive in the same write: the rewritten frame is spliced into the chunk around it.
    rec.send(server_header("authed") + &authed + "\n").await;
    ini.expect(
        server_header("authed") + &format!("<stream:features>{bind}{sm}</stream:features>\n"),
    )
    .await;
    let iq = "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
              <resource>r</resource></bind></iq>";
    let result = "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                  <jid>alice@a.test/r</jid></bind></iq>";
    exchange(&mut ini, &mut rec, iq, result).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let rewrites: Vec<&Value> = named(&events, "rewrite");
    assert_eq!(
        rewrites.len(),
        2,
        "one rewrite after TLS, one after SASL: {events:#?}"
    );
    let after_tls = rewrites[0];
    assert_eq!(after_tls["dir"], "down");
    assert_eq!(
        removals(after_tls),
        [
            "SASL mechanism SCRAM-SHA-1-PLUS",
            "channel-binding types <sasl-channel-binding> (XEP-0440)",
            "stream compression <compression> (XEP-0138)",
        ]
    );
    assert!(
        why(after_tls, "SASL mechanism SCRAM-SHA-1-PLUS").contains("channel binding"),
        "{after_tls:#}"
    );
    assert!(
        why(after_tls, "stream compression <compression> (XEP-0138)").contains("compress"),
        "{after_tls:#}"
    );
    assert_eq!(after_tls["xml"], offered.as_str());
    // The original is in the `features` event, as the receiver sent it.
    let original = one(&events, "features", |e| {
        e["dir"] == "down" && e["xml"] == features.as_str()
    });
    assert_eq!(
        original["mechanisms"],
        serde_json::json!(["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"])
    );
    assert_eq!(original["compression"], serde_json::json!(["zlib"]));

    let after_sasl = rewrites[1];
    assert_eq!(
        removals(after_sasl),
        ["stream compression <compression> (XEP-0138)"]
    );
    assert_eq!(
        after_sasl["xml"],
        format!("<stream:features>{bind}{sm}</stream:features>")
    );
    one(&events, "features", |e| e["xml"] == authed.as_str());

    // SASL in the transcript: mechanism and outcome, the credentials redacted.
    let auth_event = one(&events, "sasl", |e| e["step"] == "auth");
    assert_eq!(auth_event["mechanism"], "PLAIN");
    assert!(
        !auth_event["xml"]
            .as_str()
            .unwrap_or_default()
            .contains("AGFsaWNl"),
        "credentials in the transcript: {auth_event:#}"
    );
    one(&events, "sasl", |e| {
        e["step"] == "success" && e["dir"] == "down"
    });
    for side in ["initiator", "receiver"] {
        one(&events, "tls_established", |e| {
            e["side"] == side && e["alpn"] == "xmpp-client"
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. S2S SASL EXTERNAL

/// S2S up to the receiver's post-TLS header and `features`, which the initiator must see as `offered`. The
/// receiver accepts TLS with `acceptor` (a function of the running proxy).
async fn s2s_after_tls(
    tap: &Xmpptap,
    receiver: &Receiver,
    acceptor: &tokio_rustls::TlsAcceptor,
    features: &str,
    offered: &str,
) -> (
    Peer<tokio_rustls::client::TlsStream<TcpStream>>,
    Peer<tokio_rustls::server::TlsStream<TcpStream>>,
) {
    let (mut ini, mut rec) = open(tap, "s2s", receiver, &ini_header()).await;
    let first = rec_header("before-tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    let (mut ini, mut rec) =
        starttls(tap, receiver, acceptor, ini, rec, "b.test", XMPP_SERVER).await;
    ini.send(ini_header()).await;
    rec.expect(ini_header()).await;
    rec.send(rec_header("after-tls") + features).await;
    ini.expect(rec_header("after-tls") + offered).await;
    (ini, rec)
}

const FEATURES_EXTERNAL: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
    <mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/>\
    </dialback></stream:features>";

#[tokio::test]
async fn s2s_external_is_removed_by_default_and_dialback_follows() {
    let (tap, receiver) = s2s(2, &[]).await;
    let acceptor = receiver.acceptor_with(&[XMPP_SERVER], Some(ca_verifier(&tap, true)));
    let offered = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>\
                   </dialback></stream:features>";
    let (mut ini, mut rec) =
        s2s_after_tls(&tap, &receiver, &acceptor, FEATURES_EXTERNAL, offered).await;
    assert!(
        rec.io().get_ref().1.peer_certificates().is_none(),
        "without --client-cert mint xmpptap presents no client certificate"
    );
    exchange(&mut ini, &mut rec, DB_RESULT, DB_VALID).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let rewrite = one(&events, "rewrite", |e| e["dir"] == "down");
    assert_eq!(
        removals(rewrite),
        ["SASL mechanism EXTERNAL", "SASL <mechanisms>"]
    );
    assert!(
        why(rewrite, "SASL mechanism EXTERNAL").contains("private key"),
        "{rewrite:#}"
    );
    assert_eq!(rewrite["xml"], offered);
    one(&events, "features", |e| e["xml"] == FEATURES_EXTERNAL);
}

#[tokio::test]
async fn s2s_client_cert_mint_keeps_external_and_presents_the_initiating_domain() {
    let (tap, receiver) = s2s(3, &["--client-cert=mint"]).await;
    // The receiver requires a client certificate chaining to xmpptap's CA.
    let acceptor = receiver.acceptor_with(&[XMPP_SERVER], Some(ca_verifier(&tap, false)));
    let (mut ini, mut rec) = s2s_after_tls(
        &tap,
        &receiver,
        &acceptor,
        FEATURES_EXTERNAL,
        FEATURES_EXTERNAL,
    )
    .await;
    let client_cert = rec
        .io()
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_else(|| panic!("no client certificate"));
    assert_eq!(
        dns_names(&client_cert),
        ["DNS:a.test"],
        "the certificate names the initiating domain"
    );

    let auth = format!("<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>YS50ZXN0</auth>");
    exchange(
        &mut ini,
        &mut rec,
        &auth,
        &format!("<success xmlns='{SASL_NS}'/>"),
    )
    .await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    assert!(named(&events, "rewrite").is_empty(), "{events:#?}");
    let auth_event = one(&events, "sasl", |e| e["step"] == "auth");
    assert_eq!(auth_event["mechanism"], "EXTERNAL");
    one(&events, "sasl", |e| e["step"] == "success");
}

#[tokio::test]
async fn s2s_client_cert_mint_without_a_from_goes_on_without_a_certificate() {
    let (tap, receiver) = s2s(13, &["--client-cert=mint"]).await;
    // An initiator that does not say who it is (older servers omit `from`): there is no domain to mint a
    // certificate for, which must not cost the connection its TLS.
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' {STREAM_NS} \
         xmlns:db='jabber:server:dialback' to='b.test' version='1.0'>"
    );
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &header).await;
    let first = rec_header("before-tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    let acceptor = receiver.acceptor_with(&[XMPP_SERVER], Some(ca_verifier(&tap, true)));
    let (mut ini, mut rec) =
        starttls(&tap, &receiver, &acceptor, ini, rec, "b.test", XMPP_SERVER).await;
    assert!(
        rec.io().get_ref().1.peer_certificates().is_none(),
        "no client certificate without a domain"
    );
    ini.send(&header).await;
    rec.expect(&header).await;
    rec.send(rec_header("after-tls") + FEATURES_PLAIN).await;
    ini.expect(rec_header("after-tls") + FEATURES_PLAIN).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    one(&events, "tls_established", |e| e["side"] == "receiver");
    one(&events, "tls_established", |e| e["side"] == "initiator");
}

// ---------------------------------------------------------------------------------------------------------
// 3. --strip-starttls

#[tokio::test]
async fn strip_starttls_keeps_the_stream_plaintext() {
    let (tap, receiver) = s2s(4, &["--strip-starttls"]).await;
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &ini_header()).await;
    rec.send(rec_header("plain") + FEATURES_TLS).await;
    ini.expect(rec_header("plain") + FEATURES_PLAIN).await;
    // The initiator goes on in plaintext, and so does the receiver leg.
    exchange(&mut ini, &mut rec, DB_RESULT, DB_VALID).await;
    let message =
        "<message from='bob@b.test' to='alice@a.test'><body>in the clear</body></message>";
    rec.send(message).await;
    ini.expect(message).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let rewrite = one(&events, "rewrite", |e| e["dir"] == "down");
    assert_eq!(removals(rewrite), ["STARTTLS <starttls> (required)"]);
    assert!(
        why(rewrite, "STARTTLS <starttls> (required)").contains("downgrade"),
        "{rewrite:#}"
    );
    assert_eq!(rewrite["xml"], FEATURES_PLAIN);
    one(&events, "features", |e| e["xml"] == FEATURES_TLS);
    assert!(named(&events, "tls_established").is_empty(), "{events:#?}");
    assert!(named(&events, "starttls").is_empty(), "{events:#?}");
}

#[tokio::test]
async fn strip_starttls_with_upstream_tls_always_still_encrypts_the_receiver_leg() {
    let (tap, receiver) = s2s(5, &["--strip-starttls", "--upstream-tls=always"]).await;
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &ini_header()).await;
    rec.send(rec_header("plain") + FEATURES_TLS).await;
    // xmpptap upgrades the receiver leg on its own...
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    rec.expect(ini_header()).await;
    // ...and the plaintext initiator sees the post-TLS stream only, STARTTLS gone if offered again.
    rec.send(rec_header("tls") + FEATURES_TLS).await;
    ini.expect(rec_header("tls") + FEATURES_PLAIN).await;
    exchange(&mut ini, &mut rec, DB_RESULT, DB_VALID).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    one(&events, "tls_established", |e| e["side"] == "receiver");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "tls_established" && e["side"] == "initiator"),
        "{events:#?}"
    );
    let rewrite = one(&events, "rewrite", |e| e["dir"] == "down");
    assert_eq!(removals(rewrite), ["STARTTLS <starttls> (required)"]);
}

// ---------------------------------------------------------------------------------------------------------
// 4. --require-tls

/// Checks the record of a `--require-tls` refusal: `policy-violation` toward the initiator, saying `reason`.
fn assert_policy_violation(events: &[Value], reason: &str) {
    let error = one(events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["dir"] == "down"
    });
    assert_eq!(error["condition"], "policy-violation", "{events:#?}");
    assert!(
        error["text"].as_str().is_some_and(|t| t.contains(reason)),
        "{error:#}"
    );
    one(events, "protocol_error", |e| {
        e["condition"] == "policy-violation"
    });
}

#[tokio::test]
async fn require_tls_refuses_an_initiator_that_skips_starttls() {
    let (tap, receiver) = s2s(6, &["--require-tls"]).await;
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &ini_header()).await;
    let first = rec_header("r1") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(DB_RESULT).await;

    let got = ini.read_to_end().await;
    assert_stream_error(&got, "policy-violation");
    assert!(got.contains("without STARTTLS"), "{got}");
    assert!(got.contains("--require-tls"), "{got}");
    // The plaintext stanza never reached the receiver.
    assert_eq!(rec.read_to_end().await, CLOSE);

    let events = finished(&tap, 1).await;
    assert_policy_violation(&events, "without STARTTLS");
    assert_eq!(one(&events, "closed", |_| true)["by"], "initiator");
}

#[tokio::test]
async fn require_tls_refuses_when_the_receiver_offers_no_starttls() {
    let (tap, receiver) = s2s(7, &["--require-tls"]).await;
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &ini_header()).await;
    rec.send(rec_header("plain") + FEATURES_PLAIN).await;

    let got = ini.read_to_end().await;
    assert!(got.starts_with(&rec_header("plain")), "{got}");
    assert_stream_error(&got, "policy-violation");
    assert!(
        got.contains("the receiver does not offer STARTTLS"),
        "{got}"
    );
    assert_eq!(rec.read_to_end().await, CLOSE);

    let events = finished(&tap, 1).await;
    assert_policy_violation(&events, "does not offer STARTTLS");
}

#[tokio::test]
async fn require_tls_refuses_a_receiver_without_xmpp_1_0() {
    let (tap, receiver) = s2s(8, &["--require-tls"]).await;
    let (mut ini, mut rec) = open(&tap, "s2s", &receiver, &ini_header()).await;
    // A pre-1.0 stream (no version): no features, so no STARTTLS either.
    let old = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' {STREAM_NS} \
         xmlns:db='jabber:server:dialback' id='old' from='b.test' to='a.test'>"
    );
    rec.send(&old).await;

    let got = ini.read_to_end().await;
    assert!(got.starts_with(&old), "{got}");
    assert_stream_error(&got, "policy-violation");
    assert_eq!(rec.read_to_end().await, CLOSE);

    let events = finished(&tap, 1).await;
    assert_policy_violation(&events, "no version='1.0'");
}

// ---------------------------------------------------------------------------------------------------------
// 5. Direct TLS

#[tokio::test]
async fn direct_tls_c2s_mints_for_the_sni_and_passes_sni_and_alpn_upstream() {
    let (tap, receiver) = setup(
        9,
        "a.test",
        &[
            "--c2s-tls-listen={ip}:0",
            "--s2s-tls-listen={ip}:0",
            "--default-domain=d.test",
            "--c2s-route=a.test=tls://{rec}",
        ],
    )
    .await;
    let tcp = Peer::connect("initiator", tap.listener("c2s-tls")).await;
    let mut ini = fake::tls_connect_with(tcp, &tap.ca_file(), "a.test", &[XMPP_CLIENT], true).await;
    let alpn = ini.io().get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(XMPP_CLIENT), "ALPN toward the client");
    assert_eq!(dns_names(&server_cert(&mut ini)), ["DNS:a.test"]);

    ini.send(client_header()).await;
    let rec = receiver.accept().await;
    let acceptor = receiver.acceptor_with(&[XMPP_SERVER, XMPP_CLIENT], None);
    let mut rec = receiver.tls_accept_with(rec, &acceptor).await;
    let upstream = rec.io().get_ref().1;
    assert_eq!(upstream.server_name(), Some("a.test"), "SNI upstream");
    assert_eq!(upstream.alpn_protocol(), Some(XMPP_CLIENT), "ALPN upstream");
    rec.expect(client_header()).await;
    // No STARTTLS inside Direct TLS; the rewrite still applies.
    let features = format!(
        "<stream:features><mechanisms xmlns='{SASL_NS}'><mechanism>SCRAM-SHA-1-PLUS</mechanism>\
         <mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
    );
    let offered = format!(
        "<stream:features><mechanisms xmlns='{SASL_NS}'><mechanism>SCRAM-SHA-1</mechanism>\
         </mechanisms></stream:features>"
    );
    rec.send(server_header("direct") + &features).await;
    ini.expect(server_header("direct") + &offered).await;
    let auth =
        format!("<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1'>biwsbj1hbGljZSxyPTEyMw==</auth>");
    exchange(
        &mut ini,
        &mut rec,
        &auth,
        &format!("<success xmlns='{SASL_NS}'/>"),
    )
    .await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let down = one(&events, "tls_established", |e| e["side"] == "initiator");
    assert_eq!(
        (&down["sni"], &down["alpn"]),
        (&"a.test".into(), &"xmpp-client".into())
    );
    let up = one(&events, "tls_established", |e| e["side"] == "receiver");
    assert_eq!(
        (&up["sni"], &up["alpn"]),
        (&"a.test".into(), &"xmpp-client".into())
    );
    assert_eq!(
        removals(one(&events, "rewrite", |_| true)),
        ["SASL mechanism SCRAM-SHA-1-PLUS"]
    );
    assert!(named(&events, "starttls").is_empty(), "{events:#?}");
}

#[tokio::test]
async fn direct_tls_without_sni_mints_for_the_default_domain() {
    let (tap, _receiver) = setup(
        10,
        "b.test",
        &[
            "--c2s-tls-listen={ip}:0",
            "--s2s-tls-listen={ip}:0",
            "--default-domain=d.test",
        ],
    )
    .await;
    let tcp = Peer::connect("initiator", tap.listener("s2s-tls")).await;
    // The certificate must be valid for d.test although the client names nothing.
    let mut ini =
        fake::tls_connect_with(tcp, &tap.ca_file(), "d.test", &[XMPP_SERVER], false).await;
    let alpn = ini.io().get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(XMPP_SERVER));
    assert_eq!(dns_names(&server_cert(&mut ini)), ["DNS:d.test"]);
    drop(ini);

    let events = wait_transcript(&tap, "tls_established", |e| {
        !named(e, "tls_established").is_empty()
    })
    .await;
    let tls = one(&events, "tls_established", |e| e["side"] == "initiator");
    assert!(tls["sni"].is_null(), "{tls:#}");
    assert_eq!(tls["alpn"], "xmpp-server");
}

#[tokio::test]
async fn client_hello_on_a_plaintext_listener_is_taken_as_direct_tls() {
    let (tap, receiver) = s2s(11, &[]).await;
    let tcp = Peer::connect("initiator", tap.listener("s2s")).await;
    let mut ini = fake::tls_connect_with(tcp, &tap.ca_file(), "b.test", &[XMPP_SERVER], true).await;
    assert_eq!(dns_names(&server_cert(&mut ini)), ["DNS:b.test"]);
    ini.send(ini_header()).await;

    // The route is plaintext: xmpptap upgrades the receiver leg with STARTTLS before the initiator sees
    // anything, since the initiator already has TLS.
    let mut rec = receiver.accept().await;
    rec.expect(ini_header()).await;
    rec.send(rec_header("plain") + FEATURES_TLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    rec.expect(ini_header()).await;
    rec.send(rec_header("tls") + FEATURES_PLAIN).await;
    ini.expect(rec_header("tls") + FEATURES_PLAIN).await;
    exchange(&mut ini, &mut rec, DB_RESULT, DB_VALID).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let down = one(&events, "tls_established", |e| e["side"] == "initiator");
    assert_eq!(
        (&down["sni"], &down["alpn"]),
        (&"b.test".into(), &"xmpp-server".into())
    );
    one(&events, "tls_established", |e| e["side"] == "receiver");
    assert_eq!(one(&events, "accepted", |_| true)["listener"], "s2s");
}

// ---------------------------------------------------------------------------------------------------------
// 6. Stream management

const SM_NS: &str = "urn:xmpp:sm:3";

#[tokio::test]
async fn stream_management_passes_untouched_and_resume_names_the_first_connection() {
    let (tap, receiver) = c2s(12, &[]).await;
    let features = format!("<stream:features><sm xmlns='{SM_NS}'/></stream:features>");

    // First connection: enable with resumption, a stanza each way, acks both ways.
    let (mut ini, mut rec) = open(&tap, "c2s", &receiver, &client_header()).await;
    rec.send(server_header("s1") + &features).await;
    ini.expect(server_header("s1") + &features).await;
    let enable = format!("<enable xmlns='{SM_NS}' resume='true'/>");
    let enabled = format!("<enabled xmlns='{SM_NS}' id='sm-Id_42' resume='true' max='300'/>");
    exchange(&mut ini, &mut rec, &enable, &enabled).await;
    let message = "<message to='bob@b.test'><body>one</body></message>";
    let r = format!("<r xmlns='{SM_NS}'/>");
    let a1 = format!("<a xmlns='{SM_NS}' h='1'/>");
    exchange(&mut ini, &mut rec, message, &r).await;
    exchange(&mut ini, &mut rec, &a1, " ").await;
    let a0 = format!("<a xmlns='{SM_NS}' h='0'/>");
    exchange(&mut ini, &mut rec, &r, &a0).await;
    // The connection breaks.
    drop((ini, rec));

    // Second connection: resume.
    let (mut ini, mut rec) = open(&tap, "c2s", &receiver, &client_header()).await;
    rec.send(server_header("s2") + &features).await;
    ini.expect(server_header("s2") + &features).await;
    let resume = format!("<resume xmlns='{SM_NS}' previd='sm-Id_42' h='3'/>");
    let resumed = format!("<resumed xmlns='{SM_NS}' previd='sm-Id_42' h='1'/>");
    exchange(&mut ini, &mut rec, &resume, &resumed).await;
    drop((ini, rec));

    let events = wait_transcript(&tap, "both connections closed", |e| {
        named(e, "closed").len() == 2
    })
    .await;
    let sm = |element: &str, dir: &str| -> &Value {
        one(&events, "sm", |e| {
            e["element"] == element && e["dir"] == dir
        })
    };
    let first = sm("enabled", "down")["conn"].as_u64().unwrap_or_default();
    assert_eq!(sm("enable", "up")["resume"], true);
    assert_eq!(sm("enable", "up")["xml"], enable.as_str());
    let enabled_event = sm("enabled", "down");
    assert_eq!(
        (
            &enabled_event["id"],
            &enabled_event["resume"],
            &enabled_event["xml"]
        ),
        (&"sm-Id_42".into(), &true.into(), &enabled.as_str().into())
    );
    assert!(enabled_event["resumes_conn"].is_null(), "{enabled_event:#}");
    assert_eq!(sm("r", "down")["xml"], r.as_str());
    assert_eq!(sm("r", "up")["conn"], first);
    assert_eq!(sm("a", "up")["h"], 1);
    assert_eq!(sm("a", "down")["h"], 0);

    let resume_event = sm("resume", "up");
    assert_ne!(
        resume_event["conn"], first,
        "resumption comes on a new connection"
    );
    assert_eq!(
        (
            &resume_event["id"],
            &resume_event["h"],
            &resume_event["resumes_conn"]
        ),
        (&"sm-Id_42".into(), &3.into(), &first.into())
    );
    let resumed_event = sm("resumed", "down");
    assert_eq!(
        (&resumed_event["h"], &resumed_event["resumes_conn"]),
        (&1.into(), &first.into())
    );
    // Only stanzas count: the SM elements are not transcribed as stanzas.
    let stanzas: Vec<&Value> = named(&events, "stanza");
    assert_eq!(stanzas.len(), 1, "{stanzas:#?}");
}
