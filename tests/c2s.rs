//! C2S interop with a real client (slixmpp, `tests/support/xmpp_client.py`) and a real Prosody: first the
//! baseline, the client logging in to Prosody directly, then the same through xmpptap (the `through_xmpptap_*`
//! tests at the end), trusting xmpptap's CA.
//!
//! The baseline: the client logs in to a real Prosody directly, no proxy in between, over STARTTLS and over Direct TLS (XEP-0368), with
//! SCRAM-SHA-1, SCRAM-SHA-256 and PLAIN; it verifies the server certificate against a test CA and
//! the JID's domain, fetches a roster with a named, grouped item, and messages a second user who
//! receives it. The proxy's C2S tests are this plus xmpptap in the path.
//!
//! Prosody setup (0.12):
//! - `authentication = "internal_plain"`: the one auth backend that offers SCRAM-SHA-1,
//!   SCRAM-SHA-256 and PLAIN together (the default `internal_hashed` stores one SCRAM hash, SHA-1
//!   unless `password_hash = "SHA-256"`, and offers only that SCRAM).
//! - Roster: `mod_groups` with a `groups_file` puts bob in alice's roster (and alice in bob's) with a
//!   name, both groups and subscription `both`, with no client action and no storage format. It is
//!   enabled for the host only, with `VirtualHost "a.test" { ... }` (the table form returns to the
//!   global section, so the harness's own `VirtualHost` line that follows is unaffected).
//! - Direct TLS: `c2s_direct_tls_ports` (`ProsodyConfig::c2s_direct_tls`); the global `ssl`
//!   certificate serves it. Prosody 0.12 answers no ALPN.
//!
//! Addresses: file id 60 (see `tests/support/mod.rs`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyConfig};
use support::pyclient::{ClientArgs, Mode, Outcome, PyClient};
use support::scratch::{Scratch, TestCa};
use support::xmpptap::Xmpptap;

const FILE_ID: u8 = 60;
const DOMAIN: &str = "a.test";
const BODY: &str = "hello bob <&> 'quotes' \"and\" ünïcödé ✓";

/// The roster file for `mod_groups`: alice and bob in two groups, named.
const GROUPS: &str =
    "[Friends]\nalice@a.test=Alice\nbob@a.test=Bob\n[Work]\nalice@a.test=Alice\nbob@a.test=Bob\n";

struct Setup {
    // Field order is drop order: the server stops before its DNS and files go.
    prosody: Prosody,
    _dns: DnsServer,
    /// The CA that signed Prosody's certificate, as a PEM file for `--ca`.
    ca_file: PathBuf,
    scratch: Scratch,
}

impl Setup {
    fn addr(&self, mode: Mode) -> SocketAddr {
        match mode {
            Mode::DirectTls => self
                .prosody
                .c2s_direct_tls_addr()
                .unwrap_or_else(|| panic!("no Direct TLS C2S port")),
            Mode::StartTls | Mode::Plaintext => self.prosody.c2s_addr(),
        }
    }

    fn client(&self, user: &str, mode: Mode) -> ClientArgs {
        ClientArgs::new(
            &format!("{user}@{DOMAIN}"),
            &format!("{user}-pw"),
            self.addr(mode),
        )
        .mode(mode)
        .ca(&self.ca_file)
    }
}

/// Prosody for a.test with C2S STARTTLS and Direct TLS, a certificate for `cert_name` signed by a
/// fresh test CA, alice and bob registered, the groups roster.
async fn setup(test_id: u8, cert_name: &str) -> Setup {
    let started = Instant::now();
    let scratch = Scratch::new("xmpptap-c2s-direct", test_id);
    let ca = TestCa::new(&format!("xmpptap test CA {FILE_ID}.{test_id}"));
    let ca_file = scratch.write("ca.pem", &ca.pem);
    let groups_file = scratch.write("groups.txt", GROUPS);

    let dns = DnsServer::start(support::addr(FILE_ID, test_id, 53).into()).await;
    let mut config = ProsodyConfig::new(
        DOMAIN,
        support::addr(FILE_ID, test_id, 2),
        &dns.unbound_forward(),
    );
    config.c2s_direct_tls = true;
    config.certificate = Some(ca.leaf(cert_name));
    config.extra_global_config = format!(
        "authentication = \"internal_plain\"\n\
         VirtualHost \"{DOMAIN}\" {{ modules_enabled = {{ \"groups\" }}; groups_file = {} }}\n",
        lua_str(&groups_file)
    );
    let prosody = Prosody::start(config);
    prosody.register("alice", "alice-pw").await;
    prosody.register("bob", "bob-pw").await;
    prosody.wait_ready().await;
    eprintln!(
        "prosody ready in {:?} (c2s {}, direct TLS {:?})",
        started.elapsed(),
        prosody.c2s_addr(),
        prosody.c2s_direct_tls_addr()
    );
    Setup {
        prosody,
        _dns: dns,
        ca_file,
        scratch,
    }
}

fn lua_str(path: &Path) -> String {
    format!("[==[{}]==]", path.display())
}

/// The login went as asked: TLS verified for the domain, the forced mechanism, a bound resource.
fn assert_login(outcome: &Outcome, user: &str, mode: Mode, mechanism: &str) {
    let ctx = || outcome.context();
    let tls = outcome.event("tls");
    assert!(
        tls["version"].as_str().unwrap_or("").starts_with("TLSv1."),
        "{}",
        ctx()
    );
    assert_eq!(tls["verified"], true, "{}", ctx());
    assert_eq!(tls["sni"], DOMAIN, "{}", ctx());
    assert_eq!(tls["peer_dns_names"], json!([DOMAIN]), "{}", ctx());
    // STARTTLS: TCP first, then TLS; Direct TLS: "connected" only after the handshake.
    let position = |event: &str| outcome.lines.iter().position(|l| l["event"] == event);
    assert!(
        position("connected") < position("tls") || mode == Mode::DirectTls,
        "{}",
        ctx()
    );
    assert!(position("tls") < position("auth"), "{}", ctx());

    let auth = outcome.event("auth");
    assert_eq!(auth["mechanism"], mechanism, "{}", ctx());
    let offered: Vec<&str> = auth["offered"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for wanted in ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"] {
        assert!(offered.contains(&wanted), "{wanted} not offered\n{}", ctx());
    }

    let session = outcome.event("session_started");
    let jid = session["jid"].as_str().unwrap_or("");
    assert!(
        jid.starts_with(&format!("{user}@{DOMAIN}/")),
        "bound {jid:?}\n{}",
        ctx()
    );
    assert_eq!(session["tls"], true, "{}", ctx());
}

/// bob (started first) waits for a message; alice logs in, fetches her roster and sends it.
async fn roster_and_message(test_id: u8, mode: Mode, mechanism: &str) {
    let s = setup(test_id, DOMAIN).await;

    let started = Instant::now();
    let mut bob = PyClient::spawn(
        &s.client("bob", mode)
            .mechanism(mechanism)
            .expect_message_from("alice@a.test"),
    );
    bob.wait_event("ready").await;
    let bob_ready = started.elapsed();

    let alice = PyClient::run(
        &s.client("alice", mode)
            .mechanism(mechanism)
            .roster()
            .send("bob@a.test", BODY),
    )
    .await;
    alice.assert_success();
    let bob = bob.finish().await;
    bob.assert_success();
    eprintln!(
        "{} {mechanism}: bob ready in {bob_ready:?}, all done in {:?}",
        mode.flag(),
        started.elapsed()
    );

    assert_login(&alice, "alice", mode, mechanism);
    assert_login(&bob, "bob", mode, mechanism);

    let roster = alice.event("roster");
    assert_eq!(
        roster["items"],
        json!([{
            "jid": "bob@a.test",
            "name": "Bob",
            "subscription": "both",
            "ask": null,
            "groups": ["Friends", "Work"],
        }]),
        "{}",
        alice.context()
    );

    let sent = alice.event("message_sent");
    let received = bob.event("message_received");
    assert_eq!(received["body"], BODY, "{}", bob.context());
    assert_eq!(received["id"], sent["id"], "{}", bob.context());
    assert_eq!(received["type"], "chat", "{}", bob.context());
    let from = received["from"].as_str().unwrap_or("");
    assert_eq!(
        from,
        alice.event("session_started")["jid"],
        "{}",
        bob.context()
    );
    drop(s.scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_scram_sha1_roster_and_message() {
    roster_and_message(1, Mode::StartTls, "SCRAM-SHA-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_scram_sha256_roster_and_message() {
    roster_and_message(2, Mode::StartTls, "SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_plain_roster_and_message() {
    roster_and_message(3, Mode::StartTls, "PLAIN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_scram_sha1_roster_and_message() {
    roster_and_message(4, Mode::DirectTls, "SCRAM-SHA-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_scram_sha256_roster_and_message() {
    roster_and_message(5, Mode::DirectTls, "SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_plain_roster_and_message() {
    roster_and_message(6, Mode::DirectTls, "PLAIN").await;
}

/// The client really checks the chain: a certificate from another CA is refused on both paths,
/// before any SASL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let s = setup(7, DOMAIN).await;
    let other_ca = s
        .scratch
        .write("other-ca.pem", &TestCa::new("xmpptap test CA other").pem);
    for mode in [Mode::StartTls, Mode::DirectTls] {
        let outcome = PyClient::run(&s.client("alice", mode).ca(&other_ca)).await;
        let error = outcome.assert_failure();
        let reason = error["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("CERTIFICATE_VERIFY_FAILED") && reason.contains("issuer"),
            "{}",
            outcome.context()
        );
        assert!(
            outcome.events("auth").next().is_none(),
            "{}",
            outcome.context()
        );
    }
}

/// The client really checks the name: a certificate from the trusted CA for another domain is
/// refused on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_domain_is_refused() {
    let s = setup(8, "other.test").await;
    for mode in [Mode::StartTls, Mode::DirectTls] {
        let outcome = PyClient::run(&s.client("alice", mode)).await;
        let error = outcome.assert_failure();
        let reason = error["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("CERTIFICATE_VERIFY_FAILED") && reason.contains("mismatch"),
            "{}",
            outcome.context()
        );
        assert!(
            outcome.events("auth").next().is_none(),
            "{}",
            outcome.context()
        );
    }
}

// ---- Through xmpptap ---------------------------------------------------------------------------------------

/// How the client reaches xmpptap and xmpptap reaches Prosody.
#[derive(Clone, Copy, Debug)]
enum Legs {
    /// STARTTLS on both legs.
    BothStartTls,
    /// Direct TLS on both legs (`--c2s-tls-listen`, route `tls://`).
    BothDirect,
    /// Direct TLS from the client, STARTTLS upstream: xmpptap upgrades the upstream leg on its own.
    DirectThenStartTls,
}

/// The same exchange as [`roster_and_message`], with xmpptap between the clients and Prosody; then the
/// transcript must hold the roster result and the message, with the SASL payloads redacted.
async fn through_xmpptap(test_id: u8, path: Legs, mechanism: &str) {
    let s = setup(test_id, DOMAIN).await;
    let proxy_ip = support::addr(FILE_ID, test_id, 10);
    let route = match path {
        Legs::BothStartTls | Legs::DirectThenStartTls => s.prosody.c2s_addr().to_string(),
        Legs::BothDirect => format!("tls://{}", s.addr(Mode::DirectTls)),
    };
    let tap = Xmpptap::start(&[
        format!("--c2s-listen={proxy_ip}:0"),
        format!("--c2s-tls-listen={proxy_ip}:0"),
        format!("--c2s-route={DOMAIN}={route}"),
        format!("--upstream-ca={}", s.ca_file.display()),
    ])
    .await;
    let (mode, listener) = match path {
        Legs::BothStartTls => (Mode::StartTls, tap.listener("c2s")),
        Legs::BothDirect | Legs::DirectThenStartTls => (Mode::DirectTls, tap.listener("c2s-tls")),
    };
    let client = |user: &str| {
        ClientArgs::new(&format!("{user}@{DOMAIN}"), &format!("{user}-pw"), listener)
            .mode(mode)
            .ca(tap.ca_file())
            .mechanism(mechanism)
    };

    let mut bob = PyClient::spawn(&client("bob").expect_message_from("alice@a.test"));
    bob.wait_event("ready").await;
    let alice = PyClient::run(&client("alice").roster().send("bob@a.test", BODY)).await;
    alice.assert_success();
    let bob = bob.finish().await;
    bob.assert_success();

    // The clients saw xmpptap's minted certificate for a.test, trusted through xmpptap's CA.
    assert_login(&alice, "alice", mode, mechanism);
    assert_login(&bob, "bob", mode, mechanism);
    assert_eq!(
        alice.event("roster")["items"][0]["groups"],
        json!(["Friends", "Work"])
    );
    assert_eq!(
        bob.event("message_received")["body"],
        BODY,
        "{}",
        bob.context()
    );

    // The transcript: both legs in TLS, the roster result and the message in clear, SASL payloads redacted.
    let roster = tap
        .wait_event("roster result", |e| {
            e["event"] == "stanza"
                && e["name"] == "iq"
                && e["type"] == "result"
                && e["xml"]
                    .as_str()
                    .is_some_and(|x| x.contains("jabber:iq:roster") && x.contains("bob@a.test"))
        })
        .await;
    assert_eq!(roster["dir"], "down");
    tap.wait_event("message to bob", |e| {
        e["event"] == "stanza"
            && e["name"] == "message"
            && e["dir"] == "up"
            && e["xml"].as_str().is_some_and(|x| x.contains("hello bob"))
    })
    .await;
    let events = tap.transcript();
    let conn = &roster["conn"];
    let this: Vec<&Value> = events.iter().filter(|e| &e["conn"] == conn).collect();
    assert_eq!(this[0]["event"], "accepted");
    for side in ["initiator", "receiver"] {
        assert!(
            this.iter()
                .any(|e| e["event"] == "tls_established" && e["side"] == side),
            "no TLS on the {side} leg: {this:#?}"
        );
    }
    let auth = this
        .iter()
        .find(|e| e["event"] == "sasl" && e["step"] == "auth")
        .unwrap_or_else(|| panic!("no SASL auth in {this:#?}"));
    assert_eq!(auth["mechanism"], mechanism);
    assert!(
        auth["xml"]
            .as_str()
            .is_some_and(|x| x.contains("[redacted:")),
        "the SASL auth payload must be replaced by a redaction marker: {auth}"
    );
    assert!(this
        .iter()
        .any(|e| e["event"] == "sasl" && e["step"] == "success"));
    // After SASL success both sides restart their streams; xmpptap follows (a third header each way).
    let headers_down = this
        .iter()
        .filter(|e| e["event"] == "stream_opened" && e["dir"] == "down")
        .count();
    assert!(headers_down >= 2, "stream restarts: {this:#?}");
    let transcript =
        std::fs::read_to_string(tap.dir().join("transcript.jsonl")).unwrap_or_default();
    for secret in [
        "alice-pw",
        "bob-pw",
        "AGFsaWNlAGFsaWNlLXB3", /* base64 of PLAIN's "\0alice\0alice-pw" */
    ] {
        assert!(
            !transcript.contains(secret),
            "{secret:?} leaked into the transcript"
        );
    }
    for step in events.iter().filter(|e| e["event"] == "sasl") {
        let xml = step["xml"].as_str().unwrap_or("");
        let text = xml
            .split_once('>')
            .map_or("", |(_, rest)| rest.rsplit_once('<').map_or("", |(t, _)| t));
        assert!(
            text.is_empty() || text.chars().all(|c| c == '*') || text.contains("redacted"),
            "SASL payload not redacted: {xml}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_xmpptap_starttls_scram_sha1() {
    through_xmpptap(21, Legs::BothStartTls, "SCRAM-SHA-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_xmpptap_starttls_plain() {
    through_xmpptap(22, Legs::BothStartTls, "PLAIN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_xmpptap_direct_tls_scram_sha256() {
    through_xmpptap(23, Legs::BothDirect, "SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_xmpptap_direct_tls_to_starttls_upstream_scram_sha1() {
    through_xmpptap(24, Legs::DirectThenStartTls, "SCRAM-SHA-1").await;
}
