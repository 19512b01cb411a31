//! Baseline interop: two real Prosody servers federating directly, no proxy in between.
//!
//! This proves the harness (DNS, Prosody, client) before xmpptap sits in the path; the proxy
//! tests reuse the same setup with the SRV records pointed at xmpptap instead.
//!
//! Addresses: file id 10 (see `tests/support/mod.rs`).

mod support;

use std::time::{Duration, Instant};

use support::client::Client;
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyConfig};

const FILE_ID: u8 = 10;

/// Two servers that know each other through the test DNS server.
struct Federation {
    // Field order is drop order: servers stop before their DNS goes away.
    a: Prosody,
    b: Prosody,
    dns: DnsServer,
}

/// Starts DNS and two Prosody instances (a.test on .2, b.test on .3 of this test's slice),
/// publishes each server's S2S port as `_xmpp-server._tcp.<domain>` -> `<x>-host.test`, and
/// registers alice@a.test and bob@b.test.
async fn federation(test_id: u8, s2s_tls: bool) -> Federation {
    let started = Instant::now();
    let dns = DnsServer::start(support::addr(FILE_ID, test_id, 53).into()).await;
    let forward = dns.unbound_forward();

    let mut a_config = ProsodyConfig::new("a.test", support::addr(FILE_ID, test_id, 2), &forward);
    a_config.s2s_tls = s2s_tls;
    let mut b_config = ProsodyConfig::new("b.test", support::addr(FILE_ID, test_id, 3), &forward);
    b_config.s2s_tls = s2s_tls;
    let a = Prosody::start(a_config);
    let b = Prosody::start(b_config);

    for (server, host) in [(&a, "a-host.test"), (&b, "b-host.test")] {
        dns.add_srv(
            &format!("_xmpp-server._tcp.{}", server.domain()),
            0,
            0,
            server.s2s_port(),
            host,
        );
        dns.add_a(host, server.ip());
    }

    a.register("alice", "alice-pw").await;
    b.register("bob", "bob-pw").await;
    a.wait_ready().await;
    b.wait_ready().await;
    eprintln!(
        "federation ready in {:?} (a {}, b {})",
        started.elapsed(),
        a.c2s_addr(),
        b.c2s_addr()
    );
    Federation { a, b, dns }
}

async fn alice_messages_bob(f: &Federation) {
    let mut bob = Client::login(f.b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(f.a.c2s_addr(), "a.test", "alice", "alice-pw").await;

    let sent = Instant::now();
    alice.send_message("bob@b.test", "hello over s2s").await;
    let (from, body) = bob.wait_message(Duration::from_secs(10)).await;
    eprintln!("first federated message arrived in {:?}", sent.elapsed());
    assert_eq!(from, alice.jid());
    assert_eq!(body, "hello over s2s");

    // The connections now exist in both directions' setup; a second message and a reply are fast.
    let sent = Instant::now();
    alice.send_message("bob@b.test", "second <&> one").await;
    let (_, body) = bob.wait_message(Duration::from_secs(10)).await;
    eprintln!("second message arrived in {:?}", sent.elapsed());
    assert_eq!(body, "second <&> one");

    bob.send_message("alice@a.test", "hi alice").await;
    let (from, body) = alice.wait_message(Duration::from_secs(10)).await;
    assert_eq!(from, bob.jid());
    assert_eq!(body, "hi alice");
    eprintln!("DNS queries: {:#?}", f.dns.query_log());

    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn s2s_with_starttls_required() {
    let f = federation(1, true).await;
    alice_messages_bob(&f).await;
    for server in [&f.a, &f.b] {
        let log = server.log();
        for direction in ["s2sout", "s2sin"] {
            assert!(
                log.lines()
                    .any(|l| l.contains(direction) && l.contains("Stream encrypted")),
                "{}: no encrypted {direction} stream in the log",
                server.domain()
            );
        }
    }
}

#[tokio::test]
async fn s2s_plaintext() {
    let f = federation(2, false).await;
    alice_messages_bob(&f).await;
    for server in [&f.a, &f.b] {
        assert!(
            !server.log().contains("Stream encrypted"),
            "{}: S2S was encrypted although TLS is off",
            server.domain()
        );
    }
}
