//! Hostile and broken peers, process level: the real `xmpptap` binary attacked by fake peers that write literal
//! bytes (see `support::fake`), while a healthy pair keeps talking through the same xmpptap.
//!
//! Each attack checks what the attacker and the other side get on the wire (the right stream error, or a close
//! within a bound), what the transcript records, and, where memory is at stake, xmpptap's resident memory from
//! `/proc/PID/status`. Every test also runs [`Healthy`]: a fake initiator and receiver exchanging messages and
//! keepalives through the same xmpptap for the whole test; [`Healthy::check`] then requires that it never
//! waited long for a round trip, kept going after the attack, lost nothing, and closed normally. The last test
//! runs the attacks beside a real two-Prosody federation instead.
//!
//! Domains: attacks go from `a.test` to [`TARGET`] (a fake receiver, host 3; `c.test` is routed there too), the
//! healthy pair from `h1.test` to `h2.test` (a fake receiver, host 4). Addresses: file id 100 (see
//! `tests/support/mod.rs`); host 10 is xmpptap.
//!
//! Memory: figures are in KiB; the slack allowed over the baseline is stated beside each constant, and every
//! test prints what it measured (`cargo test --test hostile -- --nocapture`). xmpptap runs with
//! [`MALLOC_TUNABLES`] so that its resident memory shows what it holds rather than what glibc keeps for reuse.

mod support;

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::{Client, Delivery};
use support::fake::{self, Peer, Receiver};
use support::federation::{Federation, Options};
use support::wire::{
    answer, assert_own_header_then_error, assert_stream_error, header, CLOSE, DECL, FEATURES_PLAIN,
    FEATURES_TLS, PROCEED, STARTTLS, STREAM_NS,
};
use support::xmpptap::{assert_blamed, closed, finished, named, one, Xmpptap};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const FILE_ID: u8 = 100;

/// A fake peer on plain TCP.
type Tcp = Peer<TcpStream>;

/// The domain attacks are routed to in the fake-peer tests.
const TARGET: &str = "b.test";

/// xmpptap's default `--max-stanza-size`.
const MAX_STANZA: u64 = 262_144;

/// The most xmpptap reads from a side before it refuses an element over [`MAX_STANZA`]: the unfinished
/// element and one read (64 KiB at most) into the same buffer, which grows (doubling) only when less than a
/// read's room is free; plus 1 KiB for the stream header read before.
const MAX_READ_BEFORE_REFUSAL: u64 = 2 * (MAX_STANZA + 64 * 1024) + 1024;

/// The longest round trip the healthy pair may see while an attack runs. Loopback round trips take well under
/// a millisecond; this leaves room for a loaded 2-core CI machine running tests in parallel.
const HEALTHY_MAX_RTT: Duration = Duration::from_millis(1000);

/// glibc's malloc keeps freed memory in the process for reuse, so with its defaults an xmpptap that has freed
/// everything 1,000 sessions used still shows it in `VmRSS` (measured: +15 MiB after a first flood, flat after
/// the third). With every allocation of 4 KiB or more in its own mapping, freed buffers and session tasks go
/// back to the system at once and `VmRSS` follows what xmpptap really holds.
const MALLOC_TUNABLES: (&str, &str) = ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096");

/// Slack over the baseline for xmpptap's resident memory once an attack is over: 4 MiB. The allocator keeps
/// some freed memory (per-thread arenas); what an attack could leave behind would be far more (10 MB for the big
/// stanza, 1,000 sessions for the connection flood).
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// Slack over the baseline for xmpptap's peak resident memory during an attack that must not make it buffer:
/// 4 MiB, while the attacks send 10 MB or more (or would expand to gigabytes).
const PEAK_SLACK_KIB: u64 = 4 * 1024;

fn ip(test: u8, host: u8) -> IpAddr {
    support::addr(FILE_ID, test, host).into()
}

// ---------------------------------------------------------------------------------------------------------
// The bench: xmpptap, the attacked receiver and the healthy pair

/// Where attacks go: an xmpptap, and the fake receiving server behind it for `domain`.
struct Target<'a> {
    tap: &'a Xmpptap,
    receiver: &'a Receiver,
    domain: &'a str,
}

/// xmpptap with a fake receiver for [`TARGET`] (and `c.test`) and the healthy pair running through it.
struct Bench {
    tap: Xmpptap,
    target: Receiver,
    healthy: Healthy,
    /// xmpptap's `VmRSS` once the healthy pair runs.
    baseline_rss: u64,
    /// xmpptap's `VmHWM` at the same time.
    baseline_peak: u64,
}

/// Starts the bench for test `test`, xmpptap with extra `args`.
async fn bench(test: u8, args: &[&str]) -> Bench {
    let target = Receiver::bind(ip(test, 3), TARGET).await;
    let healthy_receiver = Receiver::bind(ip(test, 4), "h2.test").await;
    let mut all = vec![
        format!("--s2s-listen={}:0", ip(test, 10)),
        format!("--route={TARGET}={}", target.addr()),
        format!("--route=c.test={}", target.addr()),
        format!("--route=h2.test={}", healthy_receiver.addr()),
        format!("--upstream-ca={}", target.cert_path().display()),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let tap = Xmpptap::start_with_env(&all, &[MALLOC_TUNABLES]).await;
    let healthy = Healthy::start(&tap, healthy_receiver).await;
    // Let xmpptap warm up (threads, allocator arenas) before the baseline.
    healthy.wait_for(20).await;
    let baseline_rss = tap.memory_kib("VmRSS");
    let baseline_peak = tap.memory_kib("VmHWM");
    eprintln!("baseline: VmRSS {baseline_rss} KiB, VmHWM {baseline_peak} KiB");
    Bench {
        tap,
        target,
        healthy,
        baseline_rss,
        baseline_peak,
    }
}

impl Bench {
    fn target(&self) -> Target<'_> {
        Target {
            tap: &self.tap,
            receiver: &self.target,
            domain: TARGET,
        }
    }

    /// Resident memory must come back within [`RSS_SLACK_KIB`] of the baseline (the allocator may give memory
    /// back a little later than the sessions end).
    async fn memory_back_near_baseline(&self, what: &str) {
        let limit = self.baseline_rss + RSS_SLACK_KIB;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rss = self.tap.memory_kib("VmRSS");
            if rss <= limit {
                eprintln!(
                    "{what}: VmRSS {rss} KiB after, baseline {} KiB ({:+} KiB)",
                    self.baseline_rss,
                    rss as i64 - self.baseline_rss as i64
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: xmpptap's VmRSS stays at {rss} KiB, more than {RSS_SLACK_KIB} KiB over its baseline of \
                 {} KiB",
                self.baseline_rss
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// xmpptap's peak resident memory never went more than [`PEAK_SLACK_KIB`] over the baseline.
    fn peak_stayed_bounded(&self, what: &str) {
        self.peak_stayed_bounded_by(PEAK_SLACK_KIB, what);
    }

    /// xmpptap's peak resident memory never went more than `slack` KiB over the baseline.
    fn peak_stayed_bounded_by(&self, slack: u64, what: &str) {
        let peak = self.tap.memory_kib("VmHWM");
        eprintln!(
            "{what}: VmHWM {peak} KiB, baseline {} KiB (+{} KiB)",
            self.baseline_peak,
            peak.saturating_sub(self.baseline_peak)
        );
        assert!(
            peak <= self.baseline_peak + slack,
            "{what}: xmpptap's peak memory grew from {} to {peak} KiB",
            self.baseline_peak
        );
    }

    /// The end of every test: the healthy pair was not disturbed.
    async fn done(self) {
        self.healthy.check(&self.tap).await;
    }
}

/// A healthy S2S pair (`h1.test` -> `h2.test`) exchanging a message and its answer through xmpptap every few
/// milliseconds, with a whitespace keepalive every tenth round, until stopped.
struct Healthy {
    stop: CancellationToken,
    /// Round trips completed.
    done: Arc<AtomicU64>,
    /// The longest round trip so far, in microseconds.
    max_rtt_us: Arc<AtomicU64>,
    /// The healthy initiator's address, to find its connection in the transcript.
    peer: SocketAddr,
    task: tokio::task::JoinHandle<u64>,
}

impl Healthy {
    async fn start(tap: &Xmpptap, receiver: Receiver) -> Healthy {
        let mut ini = Peer::connect("healthy initiator", tap.addr()).await;
        let peer = local_addr(&mut ini);
        let open = header("h1.test", "h2.test");
        ini.send(&open).await;
        let mut rec = receiver.accept().await;
        rec.name = "healthy receiver";
        // Round trips measure xmpptap, not Nagle's algorithm meeting delayed ACKs.
        for peer in [&mut ini, &mut rec] {
            peer.io().set_nodelay(true).expect("TCP_NODELAY");
        }
        rec.expect(&open).await;
        let reply = answer("h2.test", "h1.test", "healthy") + FEATURES_PLAIN;
        rec.send(&reply).await;
        ini.expect(&reply).await;

        let stop = CancellationToken::new();
        let done = Arc::new(AtomicU64::new(0));
        let max_rtt_us = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, done, max_rtt_us) = (stop.clone(), done.clone(), max_rtt_us.clone());
            async move {
                let _receiver = receiver;
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let started = Instant::now();
                    if n % 10 == 0 {
                        ini.send(" ").await;
                        rec.expect(" ").await;
                    }
                    let up = format!(
                        "<message from='alice@h1.test' to='bob@h2.test' id='h{n}'><body>ping {n}</body></message>"
                    );
                    ini.send(&up).await;
                    rec.expect(&up).await;
                    let down = format!(
                        "<message from='bob@h2.test' to='alice@h1.test' id='h{n}'><body>pong {n}</body></message>"
                    );
                    rec.send(&down).await;
                    ini.expect(&down).await;
                    let rtt = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    max_rtt_us.fetch_max(rtt, Ordering::Relaxed);
                    done.store(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ini.send(CLOSE).await;
                ini.shutdown().await;
                rec.expect(CLOSE).await;
                rec.send(CLOSE).await;
                rec.shutdown().await;
                assert_eq!(ini.read_to_end().await, CLOSE, "healthy pair: clean close");
                n
            }
        });
        Healthy {
            stop,
            done,
            max_rtt_us,
            peer,
            task,
        }
    }

    /// Waits until `n` more round trips are done (panics if the pair stalls).
    async fn wait_for(&self, n: u64) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + fake::WAIT;
        while self.done.load(Ordering::Relaxed) < target {
            assert!(
                !self.task.is_finished(),
                "the healthy pair stopped (see its panic below)"
            );
            assert!(
                Instant::now() < deadline,
                "the healthy pair stalled at {} round trips",
                self.done.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The shared check: the pair still makes progress, never waited longer than [`HEALTHY_MAX_RTT`], lost
    /// nothing (the transcript counts every message both ways), and its connection ended normally.
    async fn check(self, tap: &Xmpptap) {
        self.wait_for(5).await;
        self.stop.cancel();
        let rounds = match self.task.await {
            Ok(rounds) => rounds,
            Err(e) => panic!("the healthy pair failed: {e}"),
        };
        let max_rtt = Duration::from_micros(self.max_rtt_us.load(Ordering::Relaxed));
        eprintln!("healthy pair: {rounds} round trips, longest {max_rtt:?}");
        assert!(
            max_rtt < HEALTHY_MAX_RTT,
            "the healthy pair waited {max_rtt:?} for a round trip"
        );
        let conn = conn_at(tap, self.peer).await;
        let events = finished(tap, conn).await;
        assert!(
            named(&events, "protocol_error").is_empty()
                && named(&events, "stream_error").is_empty(),
            "healthy pair: {events:#?}"
        );
        // Both close their streams and connections; which FIN xmpptap sees first is up to the scheduler.
        let closed = closed(&events);
        assert!(
            closed["by"] == "initiator" || closed["by"] == "receiver",
            "{closed}"
        );
        assert!(
            closed["reason"]
                .as_str()
                .is_some_and(|r| r.contains("after closing its stream")),
            "{closed}"
        );
        // Down: the answers, and the receiver's features before them.
        assert_eq!(
            (&closed["stanzas_up"], &closed["stanzas_down"]),
            (&rounds.into(), &(rounds + 1).into()),
            "every healthy message crossed both ways: {closed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Peers and transcript helpers

fn local_addr(peer: &mut Tcp) -> SocketAddr {
    peer.io()
        .local_addr()
        .unwrap_or_else(|e| panic!("{}: local address: {e}", peer.name))
}

/// The connection id xmpptap gave the initiator at `peer`.
async fn conn_at(tap: &Xmpptap, peer: SocketAddr) -> u64 {
    conn_at_after(tap, peer, 0).await
}

/// [`conn_at`] for a connection newer than connection `after`: thousands of connections in one test reuse
/// ephemeral ports, so an older connection may have come from the same address.
async fn conn_at_after(tap: &Xmpptap, peer: SocketAddr, after: u64) -> u64 {
    let peer = peer.to_string();
    let accepted = tap
        .wait_event(&format!("accepted from {peer}"), |e| {
            e["event"] == "accepted"
                && e["peer"] == peer.as_str()
                && e["conn"].as_u64().is_some_and(|conn| conn > after)
        })
        .await;
    accepted["conn"]
        .as_u64()
        .unwrap_or_else(|| panic!("no conn in {accepted}"))
}

/// The newest connection the transcript has recorded so far (0 for none).
fn last_conn(tap: &Xmpptap) -> u64 {
    tap.transcript()
        .iter()
        .filter_map(|e| e["conn"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Connects an attacker to xmpptap's S2S listener; returns it and its connection id.
async fn connect(t: &Target<'_>) -> (Tcp, u64) {
    let after = last_conn(t.tap);
    let mut ini = Peer::connect("attacker", t.tap.addr()).await;
    let conn = conn_at_after(t.tap, local_addr(&mut ini), after).await;
    (ini, conn)
}

/// The attacker opens its stream; the receiver gets xmpptap's connection and the header.
async fn open(t: &Target<'_>) -> (Tcp, Tcp, u64) {
    let (mut ini, conn) = connect(t).await;
    let open = header("a.test", t.domain);
    ini.send(&open).await;
    let mut rec = t.receiver.accept().await;
    rec.expect(&open).await;
    (ini, rec, conn)
}

/// [`open`], then a plaintext negotiation: the receiver offers no STARTTLS, so xmpptap goes to the relay.
async fn open_plain(t: &Target<'_>) -> (Tcp, Tcp, u64) {
    let (mut ini, mut rec, conn) = open(t).await;
    let reply = answer(t.domain, "a.test", "plain") + FEATURES_PLAIN;
    rec.send(&reply).await;
    ini.expect(&reply).await;
    (ini, rec, conn)
}

/// A normal exchange on a new connection: xmpptap still serves `t.domain`.
async fn exchange(t: &Target<'_>) {
    let (mut ini, mut rec, conn) = open_plain(t).await;
    let up = format!(
        "<message to='bob@{}'><body>still there?</body></message>",
        t.domain
    );
    ini.send(&up).await;
    rec.expect(&up).await;
    let down = "<message to='alice@a.test'><body>yes</body></message>";
    rec.send(down).await;
    ini.expect(down).await;
    ini.send(CLOSE).await;
    ini.shutdown().await;
    rec.expect(CLOSE).await;
    // xmpptap passes the initiator's half-close on: once the receiver sees it, xmpptap has seen the initiator
    // go first, whatever the scheduler does with the receiver's own close.
    assert_eq!(rec.read_to_end().await, "", "the initiator's half-close");
    rec.send(CLOSE).await;
    rec.shutdown().await;
    assert_eq!(ini.read_to_end().await, CLOSE);
    let events = finished(t.tap, conn).await;
    assert_eq!(closed(&events)["by"], "initiator", "{events:#?}");
}

/// Reads a raw connection to its end (a reset counts as the end), for at most `limit`.
async fn read_all<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(Err(e)) => panic!("read failed: {e}; got {:?}", String::from_utf8_lossy(&got)),
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// After a plaintext negotiation, `culprit` ("initiator" or "receiver") sends `bad`: it must get `condition`,
/// the other side a clean `</stream:stream>`, nothing of it may be relayed, and the transcript must say so.
/// Returns what the culprit got and the connection's transcript.
async fn bad_after_negotiation(
    t: &Target<'_>,
    culprit: &str,
    bad: &[u8],
    condition: &str,
) -> (String, Vec<Value>) {
    let (mut ini, mut rec, conn) = open_plain(t).await;
    let (bad_peer, other) = if culprit == "initiator" {
        (&mut ini, &mut rec)
    } else {
        (&mut rec, &mut ini)
    };
    // The write may fail once xmpptap has refused the first bytes.
    let _ = bad_peer.io().write_all(bad).await;
    let got = bad_peer.read_to_end().await;
    assert_stream_error(&got, condition);
    assert_eq!(
        other.read_to_end().await,
        CLOSE,
        "the other side is closed cleanly"
    );
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, culprit, condition);
    assert!(
        named(&events, "stanza").is_empty(),
        "nothing of the bad input was relayed: {events:#?}"
    );
    (got, events)
}

/// The ClientHello a TLS client sends first, for `domain` (real bytes, from rustls).
fn client_hello(domain: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(fake::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(domain.to_owned()).expect("server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("ClientHello");
    hello
}

/// Writes `bytes` one at a time, `every` apart, until the connection fails or `stop`; once all are written,
/// keeps the connection open (silent) until `stop`.
fn trickle(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sent = 0;
        for byte in bytes {
            if stop.load(Ordering::Relaxed) || w.write_all(&[byte]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(every).await;
        }
        // Silence, not a close, until stopped.
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(w);
        sent
    })
}

// ---------------------------------------------------------------------------------------------------------
// The attacks. Each takes a [`Target`], so that the fake-peer tests and the Prosody test share them.

/// A billion-laughs DTD: nine levels of entities, each ten of the one below (3 GB once expanded).
fn billion_laughs() -> String {
    let mut dtd = String::from("<!DOCTYPE lolz [<!ENTITY lol 'lol'>");
    let mut below = String::from("lol");
    for level in 1..=9 {
        let name = format!("lol{level}");
        dtd.push_str(&format!(
            "<!ENTITY {name} '{}'>",
            format!("&{below};").repeat(10)
        ));
        below = name;
    }
    dtd.push_str("]>");
    dtd
}

/// Nothing was expanded: the answer is short and holds neither laughs nor a file.
fn assert_unexpanded(got: &str) {
    assert!(
        got.len() < 2048,
        "a long answer ({} bytes): {got:?}",
        got.len()
    );
    assert!(!got.contains("lollol") && !got.contains("root:"), "{got:?}");
}

/// DTDs (billion laughs, an external entity), undeclared entity references, before the header and in the
/// relay, from either side: `<restricted-xml/>`, never expanded, never relayed.
async fn dtd_and_entities(t: &Target<'_>) {
    let laughs = billion_laughs();
    let xxe = "<!DOCTYPE message [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>";

    // Before the stream header: xmpptap answers on a stream of its own and connects nowhere.
    let (mut ini, conn) = connect(t).await;
    let open = header("a.test", t.domain);
    ini.send(format!(
        "{DECL}{laughs}{}<message>&lol9;</message>",
        &open[DECL.len()..]
    ))
    .await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "restricted-xml");
    assert_unexpanded(&got);
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "restricted-xml");
    assert!(
        named(&events, "upstream_connected").is_empty(),
        "{events:#?}"
    );

    let d = t.domain;
    let attacks = [
        (
            "initiator",
            format!("{xxe}<message to='bob@{d}'><body>&xxe;</body></message>"),
        ),
        (
            "initiator",
            format!("<message to='bob@{d}'><body>&xxe;</body></message>"),
        ),
        (
            "initiator",
            format!("<message to='bob@{d}'><body>&lol9;</body></message>"),
        ),
        ("receiver", format!("{laughs}<message>&lol9;</message>")),
    ];
    for (culprit, bad) in attacks {
        let (got, events) =
            bad_after_negotiation(t, culprit, bad.as_bytes(), "restricted-xml").await;
        assert_unexpanded(&got);
        let error = one(&events, "protocol_error", |_| true);
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("restricted XML")),
            "{error}"
        );
    }
}

/// A 10 MB stanza written at once: `<policy-violation/>` once the stanza passes `--max-stanza-size`; xmpptap
/// reads little more than that. Returns the bytes xmpptap read from the attacker.
async fn ten_megabyte_stanza(t: &Target<'_>) -> u64 {
    let (ini, mut rec, conn) = open_plain(t).await;
    let (mut r, mut w) = ini.into_io().into_split();
    let mut stanza = format!("<message to='bob@{}'><body>", t.domain).into_bytes();
    stanza.resize(stanza.len() + 10 * 1024 * 1024, b'x');
    stanza.extend_from_slice(b"</body></message>");
    // It fails part way once xmpptap has refused it and closed.
    let writer = tokio::spawn(async move { w.write_all(&stanza).await.is_ok() });
    let got = read_all(&mut r, fake::WAIT).await;
    assert_stream_error(&got, "policy-violation");
    assert!(
        got.contains(&format!("frame larger than {MAX_STANZA} bytes")),
        "{got}"
    );
    assert_eq!(
        rec.read_to_end().await,
        CLOSE,
        "the receiver is closed cleanly"
    );
    let wrote_all = writer.await.expect("writer");
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "policy-violation");
    assert!(named(&events, "stanza").is_empty(), "{events:#?}");
    let read = closed(&events)["bytes_up"].as_u64().expect("bytes_up");
    eprintln!("10 MB stanza: xmpptap read {read} bytes of it (writer finished: {wrote_all})");
    assert!(
        read <= MAX_READ_BEFORE_REFUSAL,
        "xmpptap read {read} bytes of a stanza it must refuse at {MAX_STANZA}"
    );
    read
}

/// A stanza that never ends, streamed: `<policy-violation/>` when it reaches `--max-stanza-size`, not before.
async fn never_ending_stanza(t: &Target<'_>) {
    let (ini, mut rec, conn) = open_plain(t).await;
    let (mut r, mut w) = ini.into_io().into_split();
    let head = format!("<message to='bob@{}'><body>", t.domain);
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let chunk = [b'y'; 4096];
        if w.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && w.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    });
    let got = read_all(&mut r, Duration::from_secs(10)).await;
    assert_stream_error(&got, "policy-violation");
    assert_eq!(rec.read_to_end().await, CLOSE);
    let sent = writer.await.expect("writer");
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "policy-violation");
    let read = closed(&events)["bytes_up"].as_u64().expect("bytes_up");
    eprintln!("never-ending stanza: cut after {read} bytes read ({sent} sent)");
    assert!(
        (MAX_STANZA..=MAX_READ_BEFORE_REFUSAL).contains(&read),
        "cut after {read} bytes, the limit is {MAX_STANZA}"
    );
}

/// The stream header one byte every 50 ms, or nothing at all: `<connection-timeout/>` after `--header-timeout`
/// in all, not per byte and not twice (once for the TLS sniff, once for the header). A lone first byte of a TLS
/// record, which xmpptap waits to tell from XML, is answered at the same time: `<bad-format/>`, as 0x16 is not
/// XML.
async fn slowloris_header(t: &Target<'_>, header_timeout: Duration) {
    let trickled = header("a.test", t.domain).repeat(10).into_bytes();
    for (what, bytes, every, condition) in [
        (
            "one byte every 50 ms",
            trickled,
            Duration::from_millis(50),
            "connection-timeout",
        ),
        ("a lone 0x16", vec![0x16], Duration::ZERO, "bad-format"),
        ("nothing", Vec::new(), Duration::ZERO, "connection-timeout"),
    ] {
        // xmpptap's clock starts when it accepts, after this one.
        let started = Instant::now();
        let (ini, conn) = connect(t).await;
        let (mut r, w) = ini.into_io().into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = trickle(w, bytes, every, stop.clone());
        let got = read_all(&mut r, header_timeout + fake::WAIT).await;
        let waited = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let sent = writer.await.expect("writer");
        eprintln!("slowloris header ({what}): answered after {waited:?}, {sent} bytes sent");
        assert_own_header_then_error(&got, condition);
        assert!(
            waited >= header_timeout && waited < header_timeout * 19 / 10,
            "{what}: answered after {waited:?} with --header-timeout {header_timeout:?}"
        );
        let events = finished(t.tap, conn).await;
        assert_blamed(&events, "initiator", condition);
        assert!(
            named(&events, "upstream_connected").is_empty(),
            "{events:#?}"
        );
    }
}

/// A lone first byte of a TLS record, then the end of the initiator's stream: answered at once with
/// `<bad-format/>`, not after `--header-timeout` (a peeked byte hides the end of the stream behind it).
async fn lone_tls_byte_then_close(t: &Target<'_>, header_timeout: Duration) {
    let started = Instant::now();
    let (ini, conn) = connect(t).await;
    let (mut r, mut w) = ini.into_io().into_split();
    w.write_all(&[0x16]).await.expect("write");
    w.shutdown().await.expect("shutdown");
    let got = read_all(&mut r, header_timeout + fake::WAIT).await;
    let waited = started.elapsed();
    eprintln!("a lone 0x16, then the end of the stream: answered after {waited:?}");
    assert_own_header_then_error(&got, "bad-format");
    assert!(
        waited < header_timeout / 2,
        "answered after {waited:?}, as if waiting for --header-timeout {header_timeout:?}"
    );
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "bad-format");
}

/// A stanza one byte every 50 ms after negotiation: nothing complete arrives, so `--idle-timeout` ends the
/// connection, blaming the attacker; the receiver gets a clean close.
async fn slowloris_stanza(t: &Target<'_>, idle_timeout: Duration) {
    // The relay's clock starts after negotiation, after this one.
    let started = Instant::now();
    let (ini, mut rec, conn) = open_plain(t).await;
    let (mut r, w) = ini.into_io().into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = format!(
        "<message to='bob@{}'><body>{}",
        t.domain,
        "z".repeat(10_000)
    )
    .into_bytes();
    let writer = trickle(w, bytes, Duration::from_millis(50), stop.clone());
    let got = read_all(&mut r, idle_timeout + fake::WAIT).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = writer.await.expect("writer");
    eprintln!("slowloris stanza: cut after {waited:?}, {sent} bytes sent");
    assert_stream_error(&got, "connection-timeout");
    assert!(
        waited >= idle_timeout && waited < idle_timeout + Duration::from_secs(3),
        "cut after {waited:?} with --idle-timeout {idle_timeout:?}"
    );
    assert_eq!(
        rec.read_to_end().await,
        CLOSE,
        "the receiver is closed cleanly"
    );
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "connection-timeout");
    let error = one(&events, "protocol_error", |_| true);
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("part of an element")),
        "{error}"
    );
}

/// Whitespace keepalives keep a quiet connection open past `--idle-timeout`; once both sides are silent for
/// that long, both get `<connection-timeout/>`.
async fn idle_connection(t: &Target<'_>, idle_timeout: Duration) {
    let (mut ini, mut rec, conn) = open_plain(t).await;
    let started = Instant::now();
    while started.elapsed() < idle_timeout * 2 {
        tokio::time::sleep(idle_timeout / 3).await;
        ini.send(" ").await;
        rec.expect(" ").await;
    }
    let silent = Instant::now();
    let (to_ini, to_rec) = tokio::join!(ini.read_to_end(), rec.read_to_end());
    let waited = silent.elapsed();
    eprintln!("idle connection: closed {waited:?} after the last keepalive");
    assert!(
        waited >= idle_timeout - Duration::from_millis(50)
            && waited < idle_timeout + Duration::from_secs(2),
        "closed after {waited:?} with --idle-timeout {idle_timeout:?}"
    );
    assert_stream_error(&to_ini, "connection-timeout");
    assert_stream_error(&to_rec, "connection-timeout");
    let events = finished(t.tap, conn).await;
    for dir in ["up", "down"] {
        one(&events, "stream_error", |e| {
            e["origin"] == "xmpptap" && e["condition"] == "connection-timeout" && e["dir"] == dir
        });
    }
    assert!(
        named(&events, "protocol_error").is_empty(),
        "nobody is at fault: {events:#?}"
    );
    let closed = closed(&events);
    assert_eq!(closed["by"], "xmpptap", "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("idle")),
        "{closed}"
    );
}

/// A receiver that stops reading while the initiator writes: once xmpptap has waited `--idle-timeout` to write
/// to it, the receiver is blamed (`<connection-timeout/>`, which it will not read) and the initiator closed.
async fn stalled_receiver(t: &Target<'_>, idle_timeout: Duration) {
    let (ini, rec, conn) = open_plain(t).await;
    let (mut r, mut w) = ini.into_io().into_split();
    let stanza = format!(
        "<message to='bob@{}'><body>{}</body></message>",
        t.domain,
        "s".repeat(16 * 1024)
    );
    let writer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && w.write_all(stanza.as_bytes()).await.is_ok() {}
    });
    let started = Instant::now();
    // The initiator is closed (or reset: xmpptap had stopped reading it) once the receiver is given up on.
    let got = read_all(&mut r, idle_timeout + fake::WAIT).await;
    let waited = started.elapsed();
    eprintln!("stalled receiver: initiator closed after {waited:?}");
    assert!(got.is_empty() || got == CLOSE, "{got:?}");
    assert!(
        waited >= idle_timeout && waited < idle_timeout + Duration::from_secs(3),
        "closed after {waited:?} with --idle-timeout {idle_timeout:?}"
    );
    writer.abort();
    drop(rec);
    let events = finished(t.tap, conn).await;
    let error = one(&events, "protocol_error", |e| {
        e["side"] == "receiver" && e["condition"] == "connection-timeout"
    });
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("read nothing")),
        "{error}"
    );
    assert_eq!(closed(&events)["by"], "receiver", "{events:#?}");
}

/// Bytes that are not UTF-8, in a stanza and in the stream header: `<unsupported-encoding/>`.
async fn invalid_utf8(t: &Target<'_>) {
    let mut bad = format!("<message to='bob@{}'><body>caf", t.domain).into_bytes();
    bad.extend_from_slice(b"\xC3\x28 \xFF\xFE</body></message>");
    bad_after_negotiation(t, "initiator", &bad, "unsupported-encoding").await;

    let (mut ini, conn) = connect(t).await;
    let mut open = header("a.test", t.domain).into_bytes();
    let at = open.len() - " version='1.0'>".len();
    open.splice(at..at, b" xml:lang='\xE9t\xE9'".iter().copied());
    ini.send(&open).await;
    let got = ini.read_to_end().await;
    assert_own_header_then_error(&got, "unsupported-encoding");
    let events = finished(t.tap, conn).await;
    assert_blamed(&events, "initiator", "unsupported-encoding");
}

/// Unbalanced tags: `<bad-format/>`.
async fn unbalanced_tags(t: &Target<'_>) {
    let d = t.domain;
    for bad in [
        format!("<message to='bob@{d}'><body>x</message>"),
        format!("<iq type='get' id='v1' to='{d}'><query xmlns='jabber:iq:version'></iq></query>"),
        String::from("</message>"),
    ] {
        bad_after_negotiation(t, "initiator", bad.as_bytes(), "bad-format").await;
    }
    bad_after_negotiation(
        t,
        "receiver",
        b"<message><body>x</body></mesage>",
        "bad-format",
    )
    .await;
}

/// TLS on the plaintext listener is taken as Direct TLS: a real ClientHello completes a handshake; garbage in
/// a TLS record fails at once; a ClientHello cut short or sent byte by byte ends after `--tls-timeout`.
async fn client_hello_on_the_plaintext_port(t: &Target<'_>, tls_timeout: Duration) {
    // A real handshake.
    let (tcp, conn) = connect(t).await;
    let tls =
        fake::tls_connect_with(tcp, &t.tap.ca_file(), t.domain, &[b"xmpp-server"], true).await;
    drop(tls);
    let events = finished(t.tap, conn).await;
    one(&events, "tls_established", |e| e["side"] == "initiator");
    assert_eq!(one(&events, "accepted", |_| true)["listener"], "s2s");

    // Garbage in a handshake record: rustls refuses it at once.
    let (mut ini, conn) = connect(t).await;
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    garbage.extend_from_slice(&[0xAB; 32]);
    let started = Instant::now();
    ini.send(&garbage).await;
    let _alert = ini.read_to_end().await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(1), "closed after {waited:?}");
    let events = finished(t.tap, conn).await;
    one(&events, "tls_failed", |e| e["side"] == "initiator");

    // A ClientHello cut short, then silence; and one sent byte by byte.
    let hello = client_hello(t.domain);
    for (trickled, bytes, every) in [
        (false, hello[..hello.len() / 2].to_vec(), Duration::ZERO),
        (true, hello.clone(), Duration::from_millis(50)),
    ] {
        let started = Instant::now();
        let (ini, conn) = connect(t).await;
        let (mut r, w) = ini.into_io().into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = trickle(w, bytes, every, stop.clone());
        let _ = read_all(&mut r, tls_timeout + fake::WAIT).await;
        let waited = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        eprintln!("ClientHello (trickled: {trickled}): closed after {waited:?}");
        assert!(
            waited >= tls_timeout && waited < tls_timeout + Duration::from_secs(3),
            "closed after {waited:?} with --tls-timeout {tls_timeout:?}"
        );
        let events = finished(t.tap, conn).await;
        let failed = one(&events, "tls_failed", |e| e["side"] == "initiator");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out")),
            "{failed}"
        );
    }
}

/// Bytes after `<starttls/>`, in the same packet or a later one: `<bad-format/>` in plaintext, before any TLS
/// with the attacker.
async fn garbage_after_starttls(t: &Target<'_>) {
    for later in [false, true] {
        let (mut ini, mut rec, conn) = open(t).await;
        let first = answer(t.domain, "a.test", "tls") + FEATURES_TLS;
        rec.send(&first).await;
        ini.expect(&first).await;
        let garbage = "GARBAGE\u{1}\u{2}<not-tls/>";
        let rec_got = if later {
            // xmpptap is waiting for <proceed/> when the garbage comes, and then does TLS upstream first.
            ini.send(STARTTLS).await;
            rec.expect(STARTTLS).await;
            ini.send(garbage).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            rec.send(PROCEED).await;
            let mut rec = t.receiver.tls_accept(rec).await;
            rec.read_to_end().await
        } else {
            ini.send(format!("{STARTTLS}{garbage}")).await;
            rec.expect(STARTTLS).await;
            rec.send(PROCEED).await;
            rec.read_to_end().await
        };
        let got = ini.read_to_end().await;
        assert_stream_error(&got, "bad-format");
        assert!(
            !got.contains("<proceed"),
            "no <proceed/> for the attacker: {got}"
        );
        assert_eq!(
            rec_got, CLOSE,
            "the receiver is closed cleanly (later: {later})"
        );
        let events = finished(t.tap, conn).await;
        assert_blamed(&events, "initiator", "bad-format");
        assert!(
            !events
                .iter()
                .any(|e| e["event"] == "tls_established" && e["side"] == "initiator"),
            "no TLS with the attacker: {events:#?}"
        );
    }
}

/// Peers that close in the middle of a handshake: the stream header, the initiator's or the receiver's STARTTLS
/// handshake, a Direct TLS handshake on the plaintext port. Each connection ends at once and is transcribed.
async fn peers_closing_mid_handshake(t: &Target<'_>) {
    // Mid stream header.
    let (mut ini, conn) = connect(t).await;
    ini.send(format!(
        "{DECL}<stream:stream xmlns='jabber:server' {STREAM_NS} to='b.te"
    ))
    .await;
    drop(ini);
    let events = finished(t.tap, conn).await;
    let closed_by = closed(&events);
    assert_eq!(closed_by["by"], "initiator");
    assert!(
        closed_by["reason"]
            .as_str()
            .is_some_and(|r| r.contains("middle of an element")),
        "{closed_by}"
    );
    assert!(named(&events, "upstream_connected").is_empty());

    // Mid STARTTLS handshake, the initiator: half a ClientHello, then gone.
    let (mut ini, mut rec, conn) = open(t).await;
    let first = answer(t.domain, "a.test", "tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    let mut rec = t.receiver.tls_accept(rec).await;
    ini.expect(PROCEED).await;
    let hello = client_hello(t.domain);
    ini.send(&hello[..hello.len() / 2]).await;
    drop(ini);
    assert_eq!(rec.read_to_end().await, "", "the receiver leg is closed");
    let events = finished(t.tap, conn).await;
    one(&events, "tls_failed", |e| e["side"] == "initiator");
    assert_eq!(closed(&events)["by"], "initiator");

    // Mid STARTTLS handshake, the receiver: it closes once xmpptap's ClientHello arrives.
    let (mut ini, mut rec, conn) = open(t).await;
    let first = answer(t.domain, "a.test", "tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;
    rec.send(PROCEED).await;
    rec.expect([0x16u8]).await;
    drop(rec);
    let got = ini.read_to_end().await;
    assert_eq!(
        got,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"
    );
    let events = finished(t.tap, conn).await;
    one(&events, "tls_failed", |e| e["side"] == "receiver");
    assert_eq!(closed(&events)["by"], "receiver");

    // Mid Direct TLS handshake on the plaintext port.
    let (mut ini, conn) = connect(t).await;
    ini.send(&hello[..hello.len() / 2]).await;
    drop(ini);
    let events = finished(t.tap, conn).await;
    one(&events, "tls_failed", |e| e["side"] == "initiator");
    assert_eq!(closed(&events)["by"], "initiator");
}

/// The soft limit on open files of this process (from `/proc/self/limits`), if any.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// 1,000 connections opened at once (half of them send part of a header) and dropped at once: each is
/// transcribed as accepted and closed by the initiator, and xmpptap goes on serving.
async fn thousand_connections(t: &Target<'_>) {
    const N: usize = 1000;
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= 2 * N as u64 + 256,
            "this test opens {N} connections at once: raise the open files limit (ulimit -n {})",
            2 * N + 256
        );
    }
    let addr = t.tap.addr();
    let partial = format!("{DECL}<stream:stream xmlns='jabber:server' {STREAM_NS} to='");
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..N {
        let partial = partial.clone();
        opening.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await?;
            if i % 2 == 0 {
                tcp.write_all(partial.as_bytes()).await?;
            }
            Ok::<_, std::io::Error>(tcp)
        });
    }
    let mut open = Vec::with_capacity(N);
    while let Some(joined) = opening.join_next().await {
        let tcp = joined
            .expect("connect task")
            .unwrap_or_else(|e| panic!("connection {} of {N}: {e}", open.len() + 1));
        open.push(tcp);
    }
    let peers: HashSet<String> = open
        .iter()
        .map(|tcp| tcp.local_addr().expect("local address").to_string())
        .collect();
    drop(open);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = t.tap.transcript();
        let conns: HashMap<u64, &Value> = events
            .iter()
            .filter(|e| {
                e["event"] == "accepted" && e["peer"].as_str().is_some_and(|p| peers.contains(p))
            })
            .filter_map(|e| Some((e["conn"].as_u64()?, e)))
            .collect();
        let closes: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["event"] == "closed" && e["conn"].as_u64().is_some_and(|c| conns.contains_key(&c))
            })
            .collect();
        // Matching by peer address can also catch a later connection that reused one of those ports (the
        // federation's own): count the closes that look like the flood's, and want at least N of each.
        let flood_closes = closes
            .iter()
            .filter(|close| {
                let reason = close["reason"].as_str().unwrap_or_default();
                close["by"] == "initiator"
                    && (reason.contains("stream header") || reason.contains("middle of an element"))
            })
            .count();
        if conns.len() >= N && flood_closes >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s the transcript has {} of {N} accepted and {} closed ({} events dropped)\nstderr:\n{}",
            conns.len(),
            closes.len(),
            named(&events, "tap_dropped")
                .iter()
                .filter_map(|e| e["count"].as_u64())
                .sum::<u64>(),
            t.tap.stderr_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    exchange(t).await;
}

// ---------------------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtds_billion_laughs_and_external_entities_get_restricted_xml_unexpanded() {
    let b = bench(1, &[]).await;
    dtd_and_entities(&b.target()).await;
    b.peak_stayed_bounded("DTDs and entities");
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_stanza_gets_policy_violation_with_memory_bounded() {
    let b = bench(2, &[]).await;
    ten_megabyte_stanza(&b.target()).await;
    b.peak_stayed_bounded("10 MB stanza");
    b.memory_back_near_baseline("10 MB stanza").await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanza_that_never_ends_gets_policy_violation_at_the_limit() {
    let b = bench(3, &[]).await;
    never_ending_stanza(&b.target()).await;
    b.peak_stayed_bounded("never-ending stanza");
    b.memory_back_near_baseline("never-ending stanza").await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_header_gets_connection_timeout_after_the_header_timeout() {
    let b = bench(4, &["--header-timeout=1"]).await;
    slowloris_header(&b.target(), Duration::from_secs(1)).await;
    lone_tls_byte_then_close(&b.target(), Duration::from_secs(1)).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_stanza_gets_connection_timeout_after_the_idle_timeout() {
    let b = bench(5, &["--idle-timeout=1"]).await;
    slowloris_stanza(&b.target(), Duration::from_secs(1)).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_idle_and_stalled_connections_but_not_kept_alive_ones() {
    let b = bench(6, &["--idle-timeout=1"]).await;
    idle_connection(&b.target(), Duration::from_secs(1)).await;
    stalled_receiver(&b.target(), Duration::from_secs(1)).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_gets_unsupported_encoding() {
    let b = bench(7, &[]).await;
    invalid_utf8(&b.target()).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbalanced_tags_get_bad_format() {
    let b = bench(8, &[]).await;
    unbalanced_tags(&b.target()).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_hello_on_the_plaintext_port_completes_or_fails_in_bounded_time() {
    let b = bench(9, &["--tls-timeout=1"]).await;
    client_hello_on_the_plaintext_port(&b.target(), Duration::from_secs(1)).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_starttls_gets_bad_format_before_tls() {
    let b = bench(10, &[]).await;
    garbage_after_starttls(&b.target()).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_closing_mid_handshake_end_their_connection_only() {
    let b = bench(11, &[]).await;
    peers_closing_mid_handshake(&b.target()).await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_opened_and_dropped_at_once() {
    let b = bench(12, &[]).await;
    thousand_connections(&b.target()).await;
    b.memory_back_near_baseline("1,000 connections").await;
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_policy_violation_without_reading() {
    // The healthy pair holds one place, two silent initiators two more.
    let tls_listen = format!("--s2s-tls-listen={}:0", ip(13, 10));
    let b = bench(13, &["--max-connections=4", &tls_listen]).await;
    let t = b.target();
    let (held_1, _) = connect(&t).await;
    let (held_2, conn_2) = connect(&t).await;
    let (ini, _) = connect(&t).await;
    // The fourth place is taken; the fifth connection is refused before it says anything.
    let (mut refused, conn) = connect(&t).await;
    let got = refused.read_to_end().await;
    assert_own_header_then_error(&got, "policy-violation");
    assert!(got.contains("--max-connections"), "{got}");
    let events = finished(&b.tap, conn).await;
    assert_blamed(&events, "initiator", "policy-violation");
    assert!(
        named(&events, "upstream_connected").is_empty(),
        "{events:#?}"
    );

    // A place that comes back is taken again.
    drop((held_2, ini));
    finished(&b.tap, conn_2).await;
    exchange(&t).await;

    // A burst over the limit: each connection is served or refused, and all of them are transcribed.
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.push(Peer::connect("burst", b.tap.addr()).await);
    }
    let mut refusals = 0;
    for peer in &mut burst {
        // A refusal is xmpptap's header and the error, which may come in separate segments: read until the
        // stream ends (a served connection says nothing until the initiator speaks).
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(300), async {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = peer.io().read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
                if got.ends_with(b"</stream:stream>") {
                    break;
                }
            }
        })
        .await;
        if !got.is_empty() {
            let got = String::from_utf8_lossy(&got);
            assert!(read.is_ok(), "the refusal did not end: {got}");
            assert!(got.contains("<policy-violation"), "{got}");
            refusals += 1;
        }
    }
    assert_eq!(refusals, 48, "two places were left for 50 connections");

    // Still full: a Direct TLS listener closes the connection without a word (no handshake for it).
    let after = last_conn(&b.tap);
    let mut tls = Peer::connect("tls", b.tap.listener("s2s-tls")).await;
    let conn = conn_at_after(&b.tap, local_addr(&mut tls), after).await;
    assert_eq!(tls.read_to_end().await, "", "closed without a handshake");
    let events = finished(&b.tap, conn).await;
    one(&events, "protocol_error", |e| {
        e["side"] == "initiator" && e["condition"] == "policy-violation"
    });
    assert_eq!(one(&events, "accepted", |_| true)["listener"], "s2s-tls");
    drop((burst, held_1));
    b.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_domain_refuses_with_policy_violation_before_connecting_upstream() {
    let b = bench(14, &["--max-connections-per-domain=2"]).await;
    let t = b.target();
    let first = open_plain(&t).await;
    let second = open_plain(&t).await;
    let (mut third, conn) = connect(&t).await;
    third.send(header("a.test", TARGET)).await;
    let got = third.read_to_end().await;
    assert_own_header_then_error(&got, "policy-violation");
    assert!(got.contains("--max-connections-per-domain"), "{got}");
    assert!(
        got.contains(&format!("from='{TARGET}'")),
        "answered as {TARGET}: {got}"
    );
    let events = finished(&b.tap, conn).await;
    assert_blamed(&events, "initiator", "policy-violation");
    assert!(
        named(&events, "upstream_connected").is_empty(),
        "{events:#?}"
    );

    // Another domain, on the same receiver, is not affected; the healthy pair's neither.
    let other = Target {
        domain: "c.test",
        ..b.target()
    };
    exchange(&other).await;
    // A place that comes back is taken again.
    let (ini, rec, conn) = first;
    drop((ini, rec));
    finished(&b.tap, conn).await;
    exchange(&t).await;
    drop(second);
    b.done().await;
}

/// What xmpptap may grow by while a receiver does not drain: the relay's buffers (per direction one unfinished
/// frame and one read, about 2 x 264 KiB each at most), the transcript writer's backlog of what was relayed
/// just before (in a debug build it falls a few MiB behind a burst), and allocator slack: 8 MiB, against the
/// 24 MiB and more the test pushes through.
const BACKPRESSURE_SLACK_KIB: u64 = 8 * 1024;

/// The initiator's stanzas in the backpressure test: 16 KiB, numbered.
fn numbered_stanza(domain: &str, n: u64) -> String {
    format!(
        "<message to='bob@{domain}' id='bp{n}'><body>{}</body></message>",
        "w".repeat(16 * 1024)
    )
}

/// One read of at least a byte (panics on a close or after [`fake::WAIT`]).
async fn read_some(rec: &mut TcpStream, chunk: &mut [u8]) -> usize {
    let n = tokio::time::timeout(fake::WAIT, rec.read(chunk))
        .await
        .expect("the receiver gets more")
        .expect("read");
    assert!(n > 0, "xmpptap closed the receiver leg");
    n
}

/// Checks that `received` is exactly stanzas 1, 2, ... `count`, whole and in order.
fn assert_numbered(received: &[u8], domain: &str, count: u64) {
    let mut at = 0;
    for n in 1..=count {
        let stanza = numbered_stanza(domain, n);
        let end = at + stanza.len();
        assert!(
            received.get(at..end) == Some(stanza.as_bytes()),
            "stanza {n} of {count} is not where it should be (byte {at} of {})",
            received.len()
        );
        at = end;
    }
    assert_eq!(at, received.len(), "nothing but the stanzas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_draining_receiver_makes_xmpptap_stop_reading_the_initiator() {
    let b = bench(15, &[]).await;
    let t = b.target();
    let (ini, rec, conn) = open_plain(&t).await;
    let (_r, mut w) = ini.into_io().into_split();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Numbered 16 KiB stanzas as fast as the initiator can write them, until stopped (or 512 MiB).
    let writer = tokio::spawn({
        let (written, stop, domain) = (written.clone(), stop.clone(), t.domain.to_owned());
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < 512 << 20 {
                n += 1;
                let stanza = numbered_stanza(&domain, n);
                w.write_all(stanza.as_bytes()).await.expect("write");
                written.fetch_add(stanza.len() as u64, Ordering::Relaxed);
            }
            (n, w)
        }
    });
    let bound = b.baseline_rss + BACKPRESSURE_SLACK_KIB;

    // 1. The receiver reads nothing: the initiator's writes must block once the buffers in between are full.
    let mut last = 0;
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        assert!(
            !writer.is_finished(),
            "the initiator wrote {now} bytes without ever blocking: xmpptap reads without bound"
        );
    }
    let blocked_at = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        written.load(Ordering::Relaxed),
        blocked_at,
        "still blocked: xmpptap does not read behind the receiver's back"
    );
    let rss = b.tap.memory_kib("VmRSS");
    eprintln!(
        "backpressure: the initiator blocked after {} KiB; xmpptap VmRSS {rss} KiB ({:+} KiB)",
        blocked_at / 1024,
        rss as i64 - b.baseline_rss as i64
    );
    assert!(
        rss <= bound,
        "xmpptap grew to {rss} KiB (baseline {})",
        b.baseline_rss
    );

    // 2. The receiver drains slowly (64 KiB every 15 ms, slower than a debug build writes the transcript):
    // xmpptap reads from the initiator only as fast, with flat memory.
    let mut rec = rec.into_io();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let slowly = blocked_at + (16 << 20);
    while (received.len() as u64) < slowly {
        let n = read_some(&mut rec, &mut chunk[..64 * 1024]).await;
        received.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let rss = b.tap.memory_kib("VmRSS");
    eprintln!(
        "backpressure: {} KiB relayed to a slow receiver; xmpptap VmRSS {rss} KiB ({:+} KiB)",
        received.len() / 1024,
        rss as i64 - b.baseline_rss as i64
    );
    assert!(
        rss <= bound,
        "xmpptap grew to {rss} KiB (baseline {})",
        b.baseline_rss
    );

    // 3. The receiver drains: everything arrives, whole and in order.
    stop.store(true, Ordering::Relaxed);
    let (stanzas, mut w) = loop {
        if writer.is_finished() && received.len() as u64 == written.load(Ordering::Relaxed) {
            break writer.await.expect("writer");
        }
        let n = read_some(&mut rec, &mut chunk).await;
        received.extend_from_slice(&chunk[..n]);
    };
    assert_numbered(&received, t.domain, stanzas);
    w.write_all(CLOSE.as_bytes()).await.expect("close");
    drop(w);
    let mut rec = Peer::new("receiver", rec);
    rec.expect(CLOSE).await;
    rec.send(CLOSE).await;
    drop(rec);
    let events = finished(&b.tap, conn).await;
    assert!(named(&events, "protocol_error").is_empty(), "{events:#?}");
    assert_eq!(closed(&events)["stanzas_up"], stanzas);
    b.peak_stayed_bounded_by(BACKPRESSURE_SLACK_KIB, "backpressure");
    b.done().await;
}

/// The body of the federation's messages in the Prosody test, to count them in the transcript.
const MARK: &str = "federation-beside-attacks";

/// `from` sends `body` to `to`, which must receive it (not a bounce) within 10 s. Returns how long it took.
async fn deliver(from: &mut Client, to: &mut Client, body: &str) -> Duration {
    let to_jid = to.jid().split('/').next().unwrap_or_default().to_owned();
    let sent = Instant::now();
    from.send_message(&to_jid, body).await;
    match to.next_delivery(Duration::from_secs(10)).await {
        Some(Delivery::Message { body: got, .. }) => {
            assert_eq!(got, body, "delivered in order, none lost")
        }
        Some(Delivery::Bounce { id, condition }) => panic!("{body:?} bounced ({id}: {condition})"),
        None => panic!("{body:?} not delivered within 10 s"),
    }
    sent.elapsed()
}

/// The attacks run one after the other against an xmpptap that two real Prosody servers federate through;
/// alice@a.test and bob@b.test keep messaging each other the whole time, and every message must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_federation_keeps_delivering_while_attacks_run() {
    let test = 16;
    let receiver = Receiver::bind(ip(test, 4), "target.test").await;
    let header_timeout = Duration::from_secs(1);
    let idle_timeout = Duration::from_secs(3);
    let tls_timeout = Duration::from_secs(1);
    let fed = Federation::start(
        FILE_ID,
        test,
        Options {
            xmpptap_args: vec![
                format!("--route=target.test={}", receiver.addr()),
                format!("--header-timeout={}", header_timeout.as_secs_f64()),
                format!("--idle-timeout={}", idle_timeout.as_secs_f64()),
                format!("--tls-timeout={}", tls_timeout.as_secs_f64()),
            ],
            ..Options::default()
        },
    )
    .await;
    let mut alice = Client::login(fed.a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    let mut bob = Client::login(fed.b.c2s_addr(), "b.test", "bob", "bob-pw").await;

    // Both ways, one message at a time, until stopped; each must arrive within 10 s.
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let conversation = tokio::spawn({
        let (stop, delivered) = (stop.clone(), delivered.clone());
        async move {
            let mut longest = Duration::ZERO;
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let took = deliver(&mut alice, &mut bob, &format!("{MARK} {n} to bob")).await;
                delivered.fetch_add(1, Ordering::Relaxed);
                longest = longest.max(took);
                let took = deliver(&mut bob, &mut alice, &format!("{MARK} {n} to alice")).await;
                delivered.fetch_add(1, Ordering::Relaxed);
                longest = longest.max(took);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, longest)
        }
    });
    let wait_for_deliveries = |more: u64| {
        let delivered = delivered.clone();
        async move {
            let target = delivered.load(Ordering::Relaxed) + more;
            let deadline = Instant::now() + Duration::from_secs(20);
            while delivered.load(Ordering::Relaxed) < target {
                assert!(
                    Instant::now() < deadline,
                    "the federation stopped delivering"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_deliveries(4).await;

    let t = Target {
        tap: &fed.tap,
        receiver: &receiver,
        domain: "target.test",
    };
    let started = Instant::now();
    dtd_and_entities(&t).await;
    ten_megabyte_stanza(&t).await;
    never_ending_stanza(&t).await;
    slowloris_header(&t, header_timeout).await;
    slowloris_stanza(&t, idle_timeout).await;
    stalled_receiver(&t, idle_timeout).await;
    invalid_utf8(&t).await;
    unbalanced_tags(&t).await;
    client_hello_on_the_plaintext_port(&t, tls_timeout).await;
    garbage_after_starttls(&t).await;
    peers_closing_mid_handshake(&t).await;
    thousand_connections(&t).await;
    eprintln!("attacks took {:?}", started.elapsed());

    wait_for_deliveries(4).await;
    stop.cancel();
    let (rounds, longest) = match conversation.await {
        Ok(result) => result,
        Err(e) => panic!(
            "the federation failed during the attacks: {e}\n{}\n{}",
            fed.a.failure_context(),
            fed.b.failure_context()
        ),
    };
    eprintln!(
        "federation: {} messages delivered during the attacks, longest {longest:?}",
        2 * rounds
    );
    assert!(rounds >= 10, "only {rounds} rounds");
    // Every message crossed xmpptap: the transcript holds them all, and no federation connection was blamed.
    let last = format!("{MARK} {rounds} to alice");
    fed.tap
        .wait_event("the last federation message", |e| {
            e["event"] == "stanza" && e["xml"].as_str().is_some_and(|x| x.contains(&last))
        })
        .await;
    let events = fed.tap.transcript();
    let messages = events
        .iter()
        .filter(|e| {
            e["event"] == "stanza"
                && e["name"] == "message"
                && e["xml"].as_str().is_some_and(|x| x.contains(MARK))
        })
        .count() as u64;
    assert_eq!(
        messages,
        2 * rounds,
        "every federation message is in the transcript"
    );
    let federation_conns: HashSet<u64> = events
        .iter()
        .filter(|e| {
            e["event"] == "stream_opened"
                && e["dir"] == "up"
                && matches!(e["to"].as_str(), Some("a.test" | "b.test"))
        })
        .filter_map(|e| e["conn"].as_u64())
        .collect();
    assert!(!federation_conns.is_empty());
    for e in events.iter().filter(|e| e["event"] == "protocol_error") {
        let conn = e["conn"].as_u64().unwrap_or_default();
        assert!(
            !federation_conns.contains(&conn),
            "a federation connection was blamed: {e}"
        );
    }
}
