//! Soak: a real two-Prosody federation through xmpptap stays correct while xmpptap's connections are killed
//! and reopened. Ignored by default (it runs for a while); `.ci/run` runs it with a short duration:
//!
//! ```sh
//! XMPPTAP_SOAK_SECS=20 cargo test --test soak -- --ignored --nocapture
//! ```
//!
//! alice@a.test sends numbered messages to bob@b.test (STARTTLS + dialback through xmpptap), one at a time:
//! each must be delivered to bob or bounced back to alice, within a timeout. Every few messages xmpptap is
//! stopped (alternately SIGKILL, which drops every connection without a word, and SIGTERM, which sends
//! `<system-shutdown/>`) and started again on the same address; Prosody must notice and open new connections.
//! At the end: every message was delivered or bounced, none twice, most were delivered, and the transcripts of
//! the xmpptap instances list every delivered message.
//!
//! xmpptap's transcript writer flushes whenever its queue runs empty, so a SIGKILL loses at most the events of
//! the last moment; the test lets the writer catch up before it kills.
//!
//! Kills happen between messages, not under one in flight: without stream management on S2S (Prosody 0.12
//! has none), a stanza written into a connection that dies is lost by the sending server whatever sits in
//! between, and this test is about xmpptap, not about that.
//!
//! Addresses: file id 120 (see `tests/support/mod.rs`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::client::{Client, Delivery};
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyConfig};
use support::xmpptap::Xmpptap;

const FILE_ID: u8 = 120;
/// Messages between two restarts of xmpptap.
const MESSAGES_PER_LIFE: usize = 10;
/// How long a message may take to arrive or bounce (a new connection needs DNS, TCP, TLS, dialback).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Bounced,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: runs for XMPPTAP_SOAK_SECS (default 60); .ci/run runs it with a short duration"]
async fn federation_survives_xmpptap_restarts() {
    let soak = Duration::from_secs(
        std::env::var("XMPPTAP_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let dns = DnsServer::start(support::addr(FILE_ID, 1, 53).into()).await;
    let forward = dns.unbound_forward();
    let a = Prosody::start(ProsodyConfig::new(
        "a.test",
        support::addr(FILE_ID, 1, 2),
        &forward,
    ));
    let b = Prosody::start(ProsodyConfig::new(
        "b.test",
        support::addr(FILE_ID, 1, 3),
        &forward,
    ));
    let proxy_ip = support::addr(FILE_ID, 1, 10);
    let [port] = support::free_ports::<1>(proxy_ip.into());
    let args = [
        format!("--s2s-listen={proxy_ip}:{port}"),
        format!("--route=a.test={}", a.s2s_addr()),
        format!("--route=b.test={}", b.s2s_addr()),
        String::from("--dangerous-accept-any-upstream-cert"),
    ];
    for domain in ["a.test", "b.test"] {
        dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            0,
            0,
            port,
            "proxy-host.test",
        );
    }
    dns.add_a("proxy-host.test", proxy_ip);
    a.register("alice", "alice-pw").await;
    b.register("bob", "bob-pw").await;
    a.wait_ready().await;
    b.wait_ready().await;

    let mut bob = Client::login(b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(a.c2s_addr(), "a.test", "alice", "alice-pw").await;

    let started = Instant::now();
    let mut tap = Some(Xmpptap::start(&args).await);
    let mut transcripts: Vec<serde_json::Value> = Vec::new();
    let mut outcomes: BTreeMap<usize, Outcome> = BTreeMap::new();
    let mut received: Vec<String> = Vec::new();
    let mut restarts = 0;
    let mut n = 0;
    while started.elapsed() < soak {
        let body = format!("soak #{n}");
        let id = alice.send_message("bob@b.test", &body).await;
        let outcome = tokio::select! {
            delivery = bob.next_delivery(DELIVERY_TIMEOUT) => match delivery {
                Some(Delivery::Message { body: got, .. }) => {
                    received.push(got.clone());
                    assert_eq!(got, body, "bob got message {got:?} while waiting for {body:?}");
                    Outcome::Delivered
                }
                other => panic!("message {n}: bob saw {other:?}"),
            },
            bounce = alice.next_delivery(DELIVERY_TIMEOUT) => match bounce {
                Some(Delivery::Bounce { id: bounced, condition }) => {
                    assert_eq!(bounced, id, "a bounce for another message");
                    eprintln!("message {n} bounced: {condition}");
                    Outcome::Bounced
                }
                other => panic!("message {n}: alice saw {other:?}"),
            },
        };
        outcomes.insert(n, outcome);
        n += 1;

        if n % MESSAGES_PER_LIFE == 0 {
            // Kill xmpptap between messages, alternately without a word and politely, and start it again.
            if let Some(old) = tap.take() {
                // The writer flushes as soon as its queue runs empty; give it that moment before a SIGKILL,
                // which loses whatever is still buffered.
                if outcome == Outcome::Delivered {
                    let last = format!("soak #{}<", n - 1);
                    old.wait_event("the last delivered message", |e| {
                        e["event"] == "stanza"
                            && e["xml"].as_str().is_some_and(|x| x.contains(&last))
                    })
                    .await;
                }
                transcripts.extend(old.transcript());
                if restarts % 2 == 0 {
                    drop(old); // SIGKILL: connections vanish.
                } else {
                    let status = old.stop().await; // SIGTERM: <system-shutdown/> to every peer.
                    assert_eq!(status, Some(0), "xmpptap did not exit cleanly on SIGTERM");
                }
            }
            restarts += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            tap = Some(Xmpptap::start(&args).await);
        }
    }
    // Anything that shows up now is a duplicate or a late delivery of an already-counted message.
    if let Some(Delivery::Message { body, .. }) = bob.next_delivery(Duration::from_secs(2)).await {
        received.push(body);
    }
    if let Some(last) = tap.take() {
        transcripts.extend(last.transcript());
    }

    let delivered: BTreeSet<usize> = outcomes
        .iter()
        .filter(|(_, o)| **o == Outcome::Delivered)
        .map(|(n, _)| *n)
        .collect();
    let bounced = outcomes.len() - delivered.len();
    eprintln!(
        "soak: {} messages in {:?}, {} delivered, {bounced} bounced, {restarts} xmpptap restarts",
        outcomes.len(),
        started.elapsed(),
        delivered.len()
    );
    assert!(restarts >= 1, "the soak must outlive at least one xmpptap");
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "a message arrived twice: {received:?}"
    );
    assert!(
        delivered.len() * 10 >= outcomes.len() * 9,
        "most messages must get through: {delivered:?} of {}",
        outcomes.len()
    );
    for n in &delivered {
        let body = format!("soak #{n}<");
        let listed = transcripts.iter().any(|e| {
            e["event"] == "stanza"
                && e["name"] == "message"
                && e["xml"].as_str().is_some_and(|x| x.contains(&body))
        });
        assert!(
            listed,
            "delivered message {n} is missing from the transcripts ({} lives)",
            restarts + 1
        );
    }
}
