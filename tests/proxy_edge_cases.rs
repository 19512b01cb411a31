//! The proxy's edge cases, process level: the real `xmpptap` binary between fake peers that write literal
//! bytes (see `support::fake`). Each test checks what the peers see on the wire and what the transcript says.
//!
//! Domains: the initiator is `a.test`, the receiver `b.test`. Addresses: file id 30 (see
//! `tests/support/mod.rs`); host 10 is the proxy, 3 the fake receiver, 53 the test DNS server.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use support::fake::{self, Peer, Receiver};
use support::wire::{
    assert_own_header_then_error, assert_stream_error, ini_header, rec_header, CLOSE,
    FEATURES_PLAIN, FEATURES_TLS, PROCEED, STARTTLS, STREAM_NS,
};
use support::xmpptap::{assert_blamed, closed, finished, named, one, wait_transcript, Xmpptap};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FILE_ID: u8 = 30;

/// A fake peer on plain TCP.
type Tcp = Peer<TcpStream>;

fn ip(test: u8, host: u8) -> IpAddr {
    support::addr(FILE_ID, test, host).into()
}

/// The proxy for test `test`, started with `args`.
async fn proxy(test: u8, args: &[String]) -> Xmpptap {
    let mut all = vec![format!("--s2s-listen={}:0", ip(test, 10))];
    all.extend_from_slice(args);
    Xmpptap::start(&all).await
}

/// A fake b.test and a proxy routing b.test to it (trusting its certificate), with extra `args`.
async fn proxy_and_receiver(test: u8, args: &[&str]) -> (Xmpptap, Receiver) {
    let receiver = Receiver::bind(ip(test, 3), "b.test").await;
    let mut all = vec![
        format!("--route=b.test={}", receiver.addr()),
        format!("--upstream-ca={}", receiver.cert_path().display()),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    (proxy(test, &all).await, receiver)
}

/// The initiator connects and opens its stream; the receiver gets the proxy's connection and the header.
async fn open(tap: &Xmpptap, receiver: &Receiver) -> (Tcp, Tcp) {
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(ini_header()).await;
    let mut rec = receiver.accept().await;
    rec.expect(ini_header()).await;
    (ini, rec)
}

/// [`open`], then a plaintext negotiation: the receiver offers no STARTTLS, so the proxy goes to the relay.
async fn open_plain(tap: &Xmpptap, receiver: &Receiver) -> (Tcp, Tcp) {
    let (mut ini, mut rec) = open(tap, receiver).await;
    let answer = rec_header("plain-id") + FEATURES_PLAIN;
    rec.send(&answer).await;
    ini.expect(&answer).await;
    (ini, rec)
}

// ---------------------------------------------------------------------------------------------------------
// Transcript helpers

// ---------------------------------------------------------------------------------------------------------
// 1. Byte-exact passthrough

#[tokio::test]
async fn headers_ids_stanzas_and_keepalives_pass_byte_exact() {
    let (tap, receiver) = proxy_and_receiver(1, &[]).await;

    // Odd attribute order, single and double quotes, a language and the dialback declaration.
    let ini_header =
        "<?xml version='1.0'?>\n<stream:stream version='1.0' xmlns:db='jabber:server:dialback' \
        to=\"b.test\" xml:lang='en' xmlns='jabber:server' from='a.test' \
        xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(ini_header).await;
    let mut rec = receiver.accept().await;
    rec.expect(ini_header).await;

    let rec_header =
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns='jabber:server' xmlns:db='jabber:server:dialback' id='Rcv-ID_1&amp;2' \
        from='b.test' to='a.test' version='1.0' xml:lang='en'>";
    rec.send(rec_header).await;
    rec.send(FEATURES_PLAIN).await;
    ini.expect(rec_header).await;
    ini.expect(FEATURES_PLAIN).await;

    // Up: dialback request, a keepalive, a message full of entities and references, another keepalive.
    let db_result = "<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>";
    let message = "<message from='alice@a.test/r' to='bob@b.test' id='m&amp;1' type=\"chat\">\
        <body>&lt;tag&gt; &amp; &quot;q&quot; &apos;a&apos; &#x263A; &#9731; caf\u{e9}</body></message>";
    let up = format!("{db_result} {message}\n");
    ini.send(&up).await;
    rec.expect(&up).await;

    // Down: the dialback answer, a lone keepalive, a message.
    let db_valid = "<db:result type='valid' from='b.test' to='a.test'/>";
    let reply = "<message from='bob@b.test/r' to='alice@a.test'><body>&amp;&#60;</body></message>";
    rec.send(db_valid).await;
    ini.expect(db_valid).await;
    rec.send("\n").await;
    ini.expect("\n").await;
    rec.send(reply).await;
    ini.expect(reply).await;

    // A clean close passes through both ways.
    ini.send(CLOSE).await;
    ini.shutdown().await;
    rec.expect(CLOSE).await;
    assert_eq!(rec.read_to_end().await, "");
    rec.send(CLOSE).await;
    rec.shutdown().await;
    assert_eq!(ini.read_to_end().await, CLOSE);

    let events = finished(&tap, 1).await;
    let up_header = one(&events, "stream_opened", |e| e["dir"] == "up");
    assert_eq!(up_header["xml"], ini_header);
    assert_eq!(up_header["to"], "b.test");
    let down_header = one(&events, "stream_opened", |e| e["dir"] == "down");
    assert_eq!(down_header["xml"], rec_header);
    assert_eq!(
        down_header["id"], "Rcv-ID_1&2",
        "the id is recorded unescaped"
    );
    let request = one(&events, "dialback", |e| e["dir"] == "up");
    assert_eq!(
        (&request["element"], &request["result"], &request["xml"]),
        (&"result".into(), &"request".into(), &db_result.into())
    );
    let answer = one(&events, "dialback", |e| e["dir"] == "down");
    assert_eq!(answer["result"], "valid");
    let up_message = one(&events, "stanza", |e| e["dir"] == "up");
    assert_eq!(up_message["xml"], message);
    assert_eq!(up_message["id"], "m&1");
    assert_eq!(one(&events, "stanza", |e| e["dir"] == "down")["xml"], reply);
    assert_eq!(named(&events, "stream_closed").len(), 2, "{events:#?}");
    let end = closed(&events);
    assert_eq!(end["by"], "initiator");
    assert_eq!(
        end["bytes_up"],
        (ini_header.len() + up.len() + CLOSE.len()) as u64
    );
    assert_eq!(
        end["bytes_down"],
        (rec_header.len() + FEATURES_PLAIN.len() + db_valid.len() + 1 + reply.len() + CLOSE.len())
            as u64
    );
}

// ---------------------------------------------------------------------------------------------------------
// 2-4. STARTTLS

#[tokio::test]
async fn starttls_on_both_legs_with_ids_passed_through() {
    let (tap, receiver) = proxy_and_receiver(2, &[]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    let first = rec_header("before-tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;

    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    let sni = rec.io().get_ref().1.server_name().map(str::to_owned);
    assert_eq!(sni.as_deref(), Some("b.test"), "SNI toward the receiver");
    ini.expect(PROCEED).await;
    // The certificate must chain to xmpptap's CA and name b.test.
    let mut ini = fake::tls_connect(ini, &tap.dir().join("ca/ca.pem"), "b.test").await;
    let alpn = ini.io().get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(&b"xmpp-server"[..]));

    // The restarted streams: the initiator speaks first, the receiver's new id comes down unchanged.
    ini.send(ini_header()).await;
    rec.expect(ini_header()).await;
    let second = rec_header("after-tls") + FEATURES_PLAIN;
    rec.send(&second).await;
    ini.expect(&second).await;

    let db = "<db:result from='a.test' to='b.test'>key</db:result>";
    ini.send(db).await;
    rec.expect(db).await;
    let message = "<message to='alice@a.test' from='bob@b.test'><body>over TLS</body></message>";
    rec.send(message).await;
    ini.expect(message).await;
    ini.send(CLOSE).await;
    rec.expect(CLOSE).await;
    rec.send(CLOSE).await;
    ini.expect(CLOSE).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    for side in ["initiator", "receiver"] {
        one(&events, "tls_established", |e| {
            e["side"] == side && e["version"].is_string()
        });
    }
    let ids: Vec<&Value> = named(&events, "stream_opened")
        .into_iter()
        .filter(|e| e["dir"] == "down")
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, ["before-tls", "after-tls"], "{events:#?}");
    let streams: Vec<&Value> = named(&events, "stream_opened")
        .into_iter()
        .filter(|e| e["dir"] == "up")
        .map(|e| &e["stream"])
        .collect();
    assert_eq!(streams, [0, 1], "the restart is marked");
    one(&events, "starttls", |e| e["dir"] == "up");
    one(&events, "proceed", |e| e["dir"] == "down");
    one(&events, "stanza", |e| {
        e["dir"] == "down" && e["xml"].as_str().is_some_and(|x| x.contains("over TLS"))
    });
}

#[tokio::test]
async fn features_without_starttls_pass_through_and_no_tls_happens() {
    let (tap, receiver) = proxy_and_receiver(3, &[]).await;
    let (mut ini, mut rec) = open_plain(&tap, &receiver).await;
    let message = "<message to='bob@b.test'><body>plain</body></message>";
    ini.send(message).await;
    rec.expect(message).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    let features = one(&events, "features", |e| e["dir"] == "down");
    assert_eq!(features["xml"], FEATURES_PLAIN);
    assert!(named(&events, "tls_established").is_empty(), "{events:#?}");
    assert!(named(&events, "starttls").is_empty(), "{events:#?}");
}

#[tokio::test]
async fn upstream_tls_always_hides_the_plaintext_stream_from_the_initiator() {
    let (tap, receiver) = proxy_and_receiver(4, &["--upstream-tls=always"]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    // A keepalive in the plaintext stream must not reach the initiator ahead of any header.
    rec.send(rec_header("plain-only") + "\n" + FEATURES_TLS)
        .await;

    // xmpptap upgrades the receiver leg on its own...
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    rec.expect(ini_header()).await;
    let after = rec_header("tls-only") + FEATURES_PLAIN;
    rec.send(&after).await;

    // ...and the plaintext initiator sees only the post-TLS header and features.
    ini.expect(&after).await;
    let db = "<db:result from='a.test' to='b.test'>k</db:result>";
    ini.send(db).await;
    rec.expect(db).await;
    let answer = "<db:result type='valid' from='b.test' to='a.test'/>";
    rec.send(answer).await;
    ini.expect(answer).await;
    drop((ini, rec));

    let events = finished(&tap, 1).await;
    one(&events, "tls_established", |e| e["side"] == "receiver");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "tls_established" && e["side"] == "initiator"),
        "{events:#?}"
    );
    one(&events, "starttls", |e| e["dir"] == "up");
    let ids: Vec<&Value> = named(&events, "stream_opened")
        .into_iter()
        .filter(|e| e["dir"] == "down")
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, ["plain-only", "tls-only"], "both are transcribed");
}

// ---------------------------------------------------------------------------------------------------------
// 5-7. Routing failures

#[tokio::test]
async fn header_without_to_gets_host_unknown() {
    let tap = proxy(5, &[]).await;
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' {STREAM_NS} from='a.test' version='1.0'>"
    ))
    .await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "host-unknown");
    assert!(
        got.contains("to='a.test'"),
        "the reply is addressed to the initiator: {got}"
    );

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "initiator", "host-unknown");
    assert!(named(&events, "upstream_connected").is_empty());
    assert!(named(&events, "upstream_failed").is_empty());
}

#[tokio::test]
async fn domain_without_route_or_dns_gets_host_unknown() {
    let dns = support::dns::DnsServer::start(ip(6, 53)).await;
    let tap = proxy(
        6,
        &[
            format!("--resolver={}", dns.addr()),
            String::from("--connect-retries=0"),
        ],
    )
    .await;
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(ini_header().replace("b.test", "nowhere.test"))
        .await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "host-unknown");
    assert!(got.contains("from='nowhere.test'"), "{got}");

    let events = finished(&tap, 1).await;
    let failed = one(&events, "upstream_failed", |_| true);
    assert_eq!(failed["domain"], "nowhere.test");
    let stream_error = one(&events, "stream_error", |e| e["origin"] == "xmpptap");
    assert_eq!(stream_error["condition"], "host-unknown");
    assert_eq!(closed(&events)["by"], "xmpptap");
    assert!(
        dns.query_log().iter().any(|q| q.contains("nowhere.test")),
        "xmpptap asked the test DNS: {:?}",
        dns.query_log()
    );
}

#[tokio::test]
async fn unreachable_upstream_gets_remote_connection_failed_after_retries() {
    let [port] = support::free_ports::<1>(ip(7, 3));
    let dead = format!("{}:{port}", ip(7, 3));
    let tap = proxy(
        7,
        &[
            format!("--route=b.test={dead}"),
            String::from("--connect-retries=1"),
            String::from("--connect-backoff=0.05"),
        ],
    )
    .await;
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(ini_header()).await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");

    let events = finished(&tap, 1).await;
    let failed = one(&events, "upstream_failed", |_| true);
    assert_eq!(failed["domain"], "b.test");
    let error = failed["error"].as_str().unwrap_or_default();
    assert_eq!(
        error.matches(&dead).count(),
        2,
        "both attempts listed: {error}"
    );
    assert_eq!(closed(&events)["by"], "xmpptap");
}

// ---------------------------------------------------------------------------------------------------------
// 8-10. Bad XML in the relay

/// After a plaintext negotiation, `culprit` ("initiator" or "receiver") sends `bad`: it must get a stream
/// error with `condition`, the other side a clean `</stream:stream>`, and the transcript must say so.
async fn bad_xml_after_negotiation(
    test: u8,
    args: &[&str],
    culprit: &str,
    bad: &str,
    condition: &str,
) {
    let (tap, receiver) = proxy_and_receiver(test, args).await;
    let (mut ini, mut rec) = open_plain(&tap, &receiver).await;
    let (bad_peer, other) = if culprit == "initiator" {
        (&mut ini, &mut rec)
    } else {
        (&mut rec, &mut ini)
    };
    bad_peer.send(bad).await;
    let got = bad_peer.read_to_end().await;
    assert_stream_error(&got, condition);
    assert_eq!(
        other.read_to_end().await,
        CLOSE,
        "the other side is closed cleanly"
    );

    let events = finished(&tap, 1).await;
    assert_blamed(&events, culprit, condition);
    let toward_other = if culprit == "initiator" { "up" } else { "down" };
    one(&events, "stream_closed", |e| {
        e["origin"] == "xmpptap" && e["dir"] == toward_other
    });
    assert!(
        !events.iter().any(|e| e["event"] == "stanza"),
        "nothing of the bad frame was relayed: {events:#?}"
    );
}

#[tokio::test]
async fn malformed_xml_from_the_initiator_gets_bad_format() {
    bad_xml_after_negotiation(
        8,
        &[],
        "initiator",
        "<message><body>x</message>",
        "bad-format",
    )
    .await;
}

#[tokio::test]
async fn malformed_xml_from_the_receiver_gets_bad_format() {
    bad_xml_after_negotiation(
        18,
        &[],
        "receiver",
        "<message><body>x</body></mesage>",
        "bad-format",
    )
    .await;
}

#[tokio::test]
async fn oversized_stanza_gets_policy_violation() {
    let big = format!(
        "<message to='bob@b.test'><body>{}</body></message>",
        "x".repeat(10 * 1024)
    );
    bad_xml_after_negotiation(
        9,
        &["--max-stanza-size=2048"],
        "initiator",
        &big,
        "policy-violation",
    )
    .await;
}

#[tokio::test]
async fn comment_in_the_stream_gets_restricted_xml() {
    bad_xml_after_negotiation(10, &[], "initiator", "<!-- hello -->", "restricted-xml").await;
}

#[tokio::test]
async fn processing_instruction_from_the_receiver_gets_restricted_xml() {
    bad_xml_after_negotiation(
        19,
        &[],
        "receiver",
        "<?xml-stylesheet href='x'?>",
        "restricted-xml",
    )
    .await;
}

#[tokio::test]
async fn doctype_before_the_header_gets_restricted_xml() {
    let tap = proxy(20, &[]).await;
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(format!(
        "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY boom 'boom'>]>{}",
        &ini_header()["<?xml version='1.0'?>".len()..]
    ))
    .await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "restricted-xml");

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "initiator", "restricted-xml");
    assert!(
        named(&events, "upstream_connected").is_empty(),
        "no upstream for a bad header"
    );
}

// ---------------------------------------------------------------------------------------------------------
// 11. TLS failures

#[tokio::test]
async fn receiver_sending_garbage_instead_of_tls_gets_the_initiator_a_tls_failure() {
    let (tap, receiver) = proxy_and_receiver(11, &[]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    let first = rec_header("r1") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    // Wait for xmpptap's ClientHello (a TLS handshake record), then answer with something that is not TLS.
    rec.expect([0x16u8]).await;
    rec.io()
        .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("receiver: write garbage: {e}"));

    let got = ini.read_to_end().await;
    assert_eq!(
        got,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"
    );

    let events = finished(&tap, 1).await;
    let failed = one(&events, "tls_failed", |e| e["side"] == "receiver");
    assert!(failed["error"].is_string());
    assert!(named(&events, "tls_established").is_empty(), "{events:#?}");
    assert_eq!(closed(&events)["by"], "receiver");
}

#[tokio::test]
async fn initiator_closing_mid_handshake_closes_both_legs() {
    let (tap, receiver) = proxy_and_receiver(21, &[]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    let first = rec_header("r1") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    ini.expect(PROCEED).await;
    // Half a ClientHello record header, then gone.
    ini.send([0x16u8, 0x03, 0x01, 0x02]).await;
    drop(ini);

    assert_eq!(rec.read_to_end().await, "", "the receiver leg is closed");
    let events = finished(&tap, 1).await;
    one(&events, "tls_established", |e| e["side"] == "receiver");
    let failed = one(&events, "tls_failed", |e| e["side"] == "initiator");
    assert!(failed["error"].is_string());
    assert_eq!(closed(&events)["by"], "initiator");
}

// ---------------------------------------------------------------------------------------------------------
// 12-14. The proxy protects itself

#[tokio::test]
async fn route_to_own_listener_is_refused_as_a_loop() {
    let listen_ip = ip(12, 10);
    let [port] = support::free_ports::<1>(listen_ip);
    let tap = Xmpptap::start(&[
        format!("--s2s-listen={listen_ip}:{port}"),
        format!("--route=b.test={listen_ip}:{port}"),
    ])
    .await;
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    ini.send(ini_header()).await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");
    assert!(got.contains("routing loop"), "{got}");

    let events = finished(&tap, 1).await;
    let failed = one(&events, "upstream_failed", |_| true);
    assert!(
        failed["error"].as_str().is_some_and(|e| e.contains("loop")),
        "{failed}"
    );
    // xmpptap never connected to itself: this was the only connection.
    assert!(
        tap.transcript().iter().all(|e| e["conn"] == 1),
        "{:#?}",
        tap.transcript()
    );
}

/// A normal plaintext exchange on a new connection.
async fn exchange(tap: &Xmpptap, receiver: &Receiver, text: &str) {
    let (mut ini, mut rec) = open_plain(tap, receiver).await;
    let message = format!("<message to='bob@b.test'><body>{text}</body></message>");
    ini.send(&message).await;
    rec.expect(&message).await;
    let reply = format!("<message to='alice@a.test'><body>re: {text}</body></message>");
    rec.send(&reply).await;
    ini.expect(&reply).await;
    ini.send(CLOSE).await;
    ini.shutdown().await;
    rec.expect(CLOSE).await;
    rec.send(CLOSE).await;
    rec.shutdown().await;
    assert_eq!(ini.read_to_end().await, CLOSE);
}

#[tokio::test]
async fn bad_and_stalled_connections_do_not_disturb_others() {
    let (tap, receiver) = proxy_and_receiver(13, &[]).await;

    // A stream whose receiver never answers.
    let (stalled_up, stalled_rec) = open(&tap, &receiver).await;
    // An initiator that sends garbage.
    let mut garbage = Peer::connect("garbage", tap.addr()).await;
    garbage.send("GET / HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    let got = garbage.read_to_end().await;
    assert!(got.contains("<stream:error>"), "{got}");
    // An initiator that stops in the middle of its header.
    let mut half = Peer::connect("half", tap.addr()).await;
    half.send(format!(
        "<stream:stream xmlns='jabber:server' {STREAM_NS} to='b.te"
    ))
    .await;

    exchange(&tap, &receiver, "one").await;
    half.expect_silence(Duration::from_millis(200)).await;
    drop((stalled_up, stalled_rec, half));
    exchange(&tap, &receiver, "two").await;

    // Both healthy connections end normally. Which peer's close xmpptap sees first after both closed their
    // streams is up to the scheduler, so either may be named.
    let normal_closes = |events: &[Value]| {
        named(events, "closed")
            .into_iter()
            .filter(|e| {
                (e["by"] == "initiator" || e["by"] == "receiver")
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("after closing its stream"))
            })
            .count()
    };
    let events = wait_transcript(&tap, "two normal closes", |e| normal_closes(e) == 2).await;
    one(&events, "protocol_error", |e| e["side"] == "initiator");
}

#[tokio::test]
async fn silent_initiator_gets_connection_timeout() {
    let tap = proxy(14, &[String::from("--header-timeout=0.3")]).await;
    let started = Instant::now();
    let mut ini = Peer::connect("initiator", tap.addr()).await;
    let got = ini.read_to_end().await;
    let waited = started.elapsed();
    assert_own_header_then_error(&got, "connection-timeout");
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "initiator", "connection-timeout");
}

// ---------------------------------------------------------------------------------------------------------
// 15. CLI

fn xmpptap(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap {args:?}: {e}"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 of `data` as colon-separated upper-case hex, with rustls's own hash.
fn sha256_fingerprint(data: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite
        .tls13()
        .map(|s| s.common.hash_provider.hash(data))
        .unwrap_or_else(|| panic!("a TLS 1.3 suite"));
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn ca_init_show_export_and_config_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("xmpptap-edge-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let ca_dir = dir.join("ca");
    let ca = ca_dir
        .to_str()
        .unwrap_or_else(|| panic!("temp dir is not UTF-8"));

    let init = xmpptap(&["ca", "init", "--ca-dir", ca]);
    assert!(init.status.success(), "init: {}", stderr(&init));
    let cert =
        std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap_or_else(|e| panic!("ca.pem: {e}"));
    let key_mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap_or_else(|e| panic!("ca-key.pem: {e}"))
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "key mode {key_mode:o}");

    let export = xmpptap(&["ca", "export", "--ca-dir", ca]);
    assert!(export.status.success(), "export: {}", stderr(&export));
    assert_eq!(stdout(&export), cert);

    let der = rustls_pemfile::certs(&mut cert.as_bytes())
        .next()
        .unwrap_or_else(|| panic!("no certificate in ca.pem"))
        .unwrap_or_else(|e| panic!("ca.pem: {e}"));
    let fingerprint = sha256_fingerprint(&der);
    let show = xmpptap(&["ca", "show", "--ca-dir", ca]);
    assert!(show.status.success(), "show: {}", stderr(&show));
    assert!(
        stdout(&show).contains(&fingerprint),
        "{fingerprint} in {}",
        stdout(&show)
    );
    let json = xmpptap(&["ca", "show", "--json", "--ca-dir", ca]);
    let json: Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("show --json: {e}"));
    assert_eq!(json["sha256_fingerprint"], fingerprint);

    let again = xmpptap(&["ca", "init", "--ca-dir", ca]);
    assert!(!again.status.success(), "a second init must refuse");
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let unchanged = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap_or_default();
    assert_eq!(unchanged, cert, "the refused init left the CA alone");

    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "s2s_listen = [\"127.0.0.1:5269\"]\nlisten_port = 5269\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    let check = xmpptap(&[
        "proxy",
        "--check",
        "--ca-dir",
        ca,
        "--config",
        config.to_str().unwrap_or_default(),
    ]);
    assert_eq!(check.status.code(), Some(64), "{}", stderr(&check));
    assert!(stderr(&check).contains("listen_port"), "{}", stderr(&check));

    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------------------
// 16. Failures before the initiator has a stream header from xmpptap

#[tokio::test]
async fn silent_receiver_leaves_the_initiator_a_well_formed_stream() {
    let (tap, receiver) = proxy_and_receiver(16, &["--negotiation-timeout=0.3"]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;

    // The receiver, to which xmpptap did open a stream, is told it was too slow.
    assert_stream_error(&rec.read_to_end().await, "connection-timeout");
    // The initiator never got a header from the receiver: xmpptap must open a stream of its own before
    // saying anything, and must not blame the initiator.
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "receiver", "connection-timeout");
    one(&events, "stream_opened", |e| {
        e["dir"] == "down" && e["origin"] == "xmpptap"
    });
}

#[tokio::test]
async fn receiver_closing_before_its_header_leaves_the_initiator_a_well_formed_stream() {
    let (tap, receiver) = proxy_and_receiver(22, &[]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    rec.shutdown().await;
    drop(rec);

    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");
    let events = finished(&tap, 1).await;
    assert_eq!(closed(&events)["by"], "receiver");
}

#[tokio::test]
async fn upstream_tls_always_with_a_refusing_receiver_does_not_blame_the_initiator() {
    let (tap, receiver) = proxy_and_receiver(23, &["--upstream-tls=always"]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    rec.send(rec_header("plain-only") + FEATURES_TLS).await;
    rec.expect(STARTTLS).await;
    rec.send("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;

    assert_stream_error(&rec.read_to_end().await, "bad-format");
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");
    assert!(!got.contains("plain-only"), "{got}");

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "receiver", "bad-format");
}

#[tokio::test]
async fn initiator_silent_after_tls_gets_a_header_before_its_error() {
    let (tap, receiver) = proxy_and_receiver(24, &["--negotiation-timeout=0.3"]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    let first = rec_header("r1") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = receiver.tls_accept(rec).await;
    ini.expect(PROCEED).await;
    let mut ini = fake::tls_connect(ini, &tap.dir().join("ca/ca.pem"), "b.test").await;

    // The initiator must speak first on the restarted stream, and does not.
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "connection-timeout");
    assert_eq!(rec.read_to_end().await, CLOSE);

    let events = finished(&tap, 1).await;
    assert_blamed(&events, "initiator", "connection-timeout");
}

#[tokio::test]
async fn upstream_tls_always_with_a_broken_receiver_handshake_is_transcribed() {
    let (tap, receiver) = proxy_and_receiver(25, &["--upstream-tls=always"]).await;
    let (mut ini, mut rec) = open(&tap, &receiver).await;
    rec.send(rec_header("plain-only") + FEATURES_TLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    rec.expect([0x16u8]).await;
    rec.io()
        .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("receiver: write garbage: {e}"));

    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "remote-connection-failed");
    let events = finished(&tap, 1).await;
    one(&events, "tls_failed", |e| e["side"] == "receiver");
    assert_eq!(closed(&events)["by"], "receiver");
}
