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

/// Redaction with real dialback keys: the default transcript shows them (only SASL is redacted by default),
/// `xmpptap export` (redacting by default) must leave none of them in its JSONL or its pcap, and a live
/// `--redact` run must mask every key in the transcript and the decrypted pcap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_keys_never_reach_redacted_outputs() {
    // Keys in the clear, by default.
    let s = setup(4, true).await;
    converse(&s).await;
    s.tap
        .wait_event("valid db:result", |e| {
            is(e, "dialback") && e["result"] == "valid"
        })
        .await;
    let keys: Vec<String> = s
        .tap
        .transcript()
        .iter()
        .filter(|e| is(e, "dialback") && e["result"] == "request")
        .filter_map(|e| dialback_text(e["xml"].as_str().unwrap_or("")))
        .collect();
    assert!(
        !keys.is_empty(),
        "the transcript shows the dialback keys when not asked to redact"
    );
    assert!(keys
        .iter()
        .all(|k| k.len() >= 32 && k.chars().all(|c| c.is_ascii_hexdigit())));

    // `xmpptap export` makes a shareable copy: no key in it, nor in the pcap rebuilt from it.
    let transcript = s.tap.dir().join("transcript.jsonl");
    let shared = s.tap.dir().join("shared.jsonl");
    let pcap = s.tap.dir().join("shared.pcap");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .arg("export")
        .arg(&transcript)
        .arg("-o")
        .arg(&shared)
        .arg("--pcap")
        .arg(&pcap)
        .status()
        .expect("run xmpptap export");
    assert!(status.success(), "xmpptap export failed: {status}");
    for output in [&shared, &pcap] {
        let bytes = std::fs::read(output).unwrap_or_else(|e| panic!("{}: {e}", output.display()));
        let text = String::from_utf8_lossy(&bytes);
        for key in &keys {
            assert!(
                !text.contains(key.as_str()),
                "a dialback key leaked into {}",
                output.display()
            );
        }
        assert!(
            text.contains("[redacted:"),
            "{} shows where it redacted",
            output.display()
        );
    }
    drop(s);

    // Live: --redact masks the keys in the transcript and in the decrypted capture as they are written.
    let live_pcap =
        std::env::temp_dir().join(format!("xmpptap-redact-{}.pcap", std::process::id()));
    let options = Options {
        xmpptap_args: vec![
            String::from("--redact"),
            format!("--pcap={}", live_pcap.display()),
        ],
        ..Options::default()
    };
    let s = Federation::start(FILE_ID, 5, options).await;
    converse(&s).await;
    s.tap
        .wait_event("valid db:result", |e| {
            is(e, "dialback") && e["result"] == "valid"
        })
        .await;
    let requests: Vec<Value> = s
        .tap
        .transcript()
        .into_iter()
        .filter(|e| is(e, "dialback") && e["result"] == "request")
        .collect();
    assert!(!requests.is_empty());
    for request in &requests {
        let text = dialback_text(request["xml"].as_str().unwrap_or("")).unwrap_or_default();
        assert!(is_masked(&text), "the key must be masked: {request}");
        assert_eq!(request["redacted"], true);
    }
    drop(s);
    // The decrypted pcap carries the same masked bytes (MSS 1460: these small elements are never split).
    // Prosody writes attributes in no fixed order, so look at every dialback element with text.
    let capture = std::fs::read(&live_pcap).expect("live pcap");
    let capture = String::from_utf8_lossy(&capture);
    let masked_requests = ["<db:result ", "<db:verify "]
        .iter()
        .flat_map(|tag| capture.match_indices(tag))
        .filter_map(|(at, _)| dialback_text(&capture[at..]))
        .inspect(|text| assert!(is_masked(text), "an unmasked key in the live pcap: {text}"))
        .count();
    assert!(
        masked_requests > 0,
        "the decrypted pcap holds the dialback requests"
    );
    let _ = std::fs::remove_file(&live_pcap);
}

/// Whether `text` is a redaction marker: `[redacted:N]` padded with `*`, or all `*` when short.
fn is_masked(text: &str) -> bool {
    let padded = |rest: &str| rest.chars().all(|c| c == '*');
    match text
        .strip_prefix("[redacted:")
        .and_then(|t| t.split_once(']'))
    {
        Some((n, rest)) => n.parse::<usize>() == Ok(text.len()) && padded(rest),
        None => !text.is_empty() && padded(text),
    }
}

/// The text content of a `<db:result>`/`<db:verify>` element, if it has any.
fn dialback_text(xml: &str) -> Option<String> {
    let (_, rest) = xml.split_once('>')?;
    let (text, _) = rest.split_once('<')?;
    (!text.is_empty()).then(|| text.to_owned())
}
