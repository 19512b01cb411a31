//! The reason xmpptap exists: two real Prosody servers federate through it, with STARTTLS and Server Dialback,
//! and the transcript shows every stanza.
//!
//! Each server's DNS view (the test's own DNS server) says that the other domain is served at xmpptap's
//! address; xmpptap's static routes send each domain to its real server. Both directions go through xmpptap,
//! so the dialback verification connections cross it too.
//!
//! Addresses: file id 20 (see `tests/support/mod.rs`).

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::client::Client;
use support::federation::{Federation, Options};

const FILE_ID: u8 = 20;

type Setup = Federation;

async fn setup(test_id: u8, s2s_tls: bool) -> Setup {
    let started = Instant::now();
    let options = Options {
        s2s_tls,
        ..Options::default()
    };
    let f = Federation::start(FILE_ID, test_id, options).await;
    eprintln!(
        "setup ready in {:?}, xmpptap on {}",
        started.elapsed(),
        f.tap.addr()
    );
    f
}

/// alice@a.test and bob@b.test exchange messages both ways through xmpptap.
async fn converse(s: &Setup) {
    let mut bob = Client::login(s.b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(s.a.c2s_addr(), "a.test", "alice", "alice-pw").await;

    let sent = Instant::now();
    alice
        .send_message("bob@b.test", "hello through xmpptap")
        .await;
    let (from, body) = bob.wait_message(Duration::from_secs(15)).await;
    eprintln!(
        "first message through xmpptap arrived in {:?}",
        sent.elapsed()
    );
    assert_eq!(from, alice.jid());
    assert_eq!(body, "hello through xmpptap");

    bob.send_message("alice@a.test", "and back <&>").await;
    let (from, body) = alice.wait_message(Duration::from_secs(15)).await;
    assert_eq!(from, bob.jid());
    assert_eq!(body, "and back <&>");
}

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

/// Events of one connection, in order.
fn conn_events(events: &[Value], conn: &Value) -> Vec<Value> {
    events
        .iter()
        .filter(|e| &e["conn"] == conn)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_federates_through_xmpptap_with_starttls_and_dialback() {
    let s = setup(1, true).await;
    converse(&s).await;

    // The message crossed xmpptap in clear text, inside TLS on both legs.
    let message = s
        .tap
        .wait_event("message to bob", |e| {
            is(e, "stanza")
                && e["name"] == "message"
                && e["xml"]
                    .as_str()
                    .unwrap_or("")
                    .contains("hello through xmpptap")
        })
        .await;
    assert_eq!(message["dir"], "up");
    assert_eq!(message["to"], "bob@b.test");
    let conn = &message["conn"];

    let events = s.tap.transcript();
    let this = conn_events(&events, conn);
    for side in ["initiator", "receiver"] {
        assert!(
            this.iter()
                .any(|e| is(e, "tls_established") && e["side"] == side && e["version"].is_string()),
            "no TLS on the {side} leg of conn {conn}: {this:#?}"
        );
    }

    // Stream ids passed through: every header the initiator saw came from the receiver, unchanged.
    let down_headers: Vec<&Value> = this
        .iter()
        .filter(|e| is(e, "stream_opened") && e["dir"] == "down")
        .collect();
    assert!(
        down_headers.len() >= 2,
        "headers before and after TLS: {down_headers:#?}"
    );
    assert!(down_headers
        .iter()
        .all(|h| h["origin"] == "peer" && h["id"].is_string()));

    // Dialback succeeded through xmpptap: b.test answered a.test's db:result with 'valid' on the message's
    // connection, after asking a.test (authoritative) over a stream that also crossed xmpptap. Prosody sends
    // that db:verify on its own outgoing stream to a.test when one exists, else on a new connection.
    let result = s
        .tap
        .wait_event("valid db:result a.test -> b.test", |e| {
            is(e, "dialback")
                && e["element"] == "result"
                && e["result"] == "valid"
                && e["from"] == "b.test"
        })
        .await;
    assert_eq!(
        &result["conn"], conn,
        "the answer comes back on the stream it authorises"
    );
    assert_eq!(result["dir"], "down");
    let verify = s
        .tap
        .wait_event("valid db:verify", |e| {
            is(e, "dialback")
                && e["element"] == "verify"
                && e["result"] == "valid"
                && e["from"] == "a.test"
        })
        .await;
    let verify_request = s
        .tap
        .wait_event("db:verify request", |e| {
            is(e, "dialback")
                && e["element"] == "verify"
                && e["result"] == "request"
                && e["id"] == verify["id"]
        })
        .await;
    assert_eq!(verify_request["conn"], verify["conn"]);

    // The reply went the other way, on a connection of its own.
    let reply = s
        .tap
        .wait_event("reply to alice", |e| {
            is(e, "stanza")
                && e["name"] == "message"
                && e["xml"].as_str().unwrap_or("").contains("and back")
        })
        .await;
    assert_ne!(&reply["conn"], conn);

    // Every record has the fields the transcript format promises.
    for event in s.tap.transcript() {
        for field in ["ts", "conn", "dir", "event"] {
            assert!(event.get(field).is_some(), "{field} missing in {event}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_federates_through_xmpptap_in_plaintext() {
    let s = setup(2, false).await;
    converse(&s).await;

    let message = s
        .tap
        .wait_event("message to bob", |e| {
            is(e, "stanza")
                && e["name"] == "message"
                && e["xml"]
                    .as_str()
                    .unwrap_or("")
                    .contains("hello through xmpptap")
        })
        .await;
    s.tap
        .wait_event("valid db:result", |e| {
            is(e, "dialback") && e["element"] == "result" && e["result"] == "valid"
        })
        .await;
    let events = s.tap.transcript();
    assert!(
        !events.iter().any(|e| is(e, "tls_established")),
        "plaintext federation must not use TLS"
    );
    assert!(conn_events(&events, &message["conn"])
        .iter()
        .any(|e| is(e, "upstream_connected")
            && e["domain"] == "b.test"
            && e["route"]["kind"] == "static"));
}

/// S2S over Direct TLS (XEP-0368) both ways: each Prosody finds `_xmpps-server._tcp` pointing at xmpptap's
/// Direct TLS listener, and xmpptap reaches the other Prosody's Direct TLS port (`tls://` route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_federates_through_xmpptap_over_direct_tls() {
    let options = Options {
        direct_tls: true,
        ..Options::default()
    };
    let s = Federation::start(FILE_ID, 3, options).await;
    converse(&s).await;

    let message = s
        .tap
        .wait_event("message to bob", |e| {
            is(e, "stanza")
                && e["name"] == "message"
                && e["xml"]
                    .as_str()
                    .unwrap_or("")
                    .contains("hello through xmpptap")
        })
        .await;
    let events = s.tap.transcript();
    let this = conn_events(&events, &message["conn"]);
    assert_eq!(this[0]["listener"], "s2s-tls", "{this:#?}");
    let tls: Vec<&Value> = this.iter().filter(|e| is(e, "tls_established")).collect();
    assert_eq!(
        tls.len(),
        2,
        "one handshake per leg, no STARTTLS: {this:#?}"
    );
    assert!(tls
        .iter()
        .all(|e| e["alpn"] == "xmpp-server" || e["side"] == "receiver"));
    assert!(!this.iter().any(|e| is(e, "starttls")));
    assert!(this
        .iter()
        .any(|e| is(e, "upstream_connected") && e["route"]["kind"] == "static"));
}
