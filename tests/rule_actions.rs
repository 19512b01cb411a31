//! Rule actions end to end: the real `xmpptap` binary, started with `--rules FILE`, between a fake initiator
//! and a fake receiver that write literal bytes (see `support::fake`). One test per action checks what each
//! peer reads, when, and the `rule` event the transcript records for it.
//!
//! Most tests negotiate a plaintext version='1.0' stream whose features offer no STARTTLS, so that the proxy
//! goes straight to the relay; the tests of `<proceed/>` and of the features go through negotiation.
//! Timing is real (the proxy is another process): delays are short and checked with a lower bound, upper
//! bounds are generous for a loaded machine.
//!
//! Domains: the initiator is `a.test`, the receiver `b.test`. Addresses: file id 140 (see
//! `tests/support/mod.rs`); host 10 is the proxy, 3 the fake receiver.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::fake::{Peer, Receiver, WAIT};
use support::wire::{
    ini_header, rec_header, CLOSE, FEATURES_PLAIN, FEATURES_TLS, PROCEED, STARTTLS, STREAM_NS,
};
use support::xmpptap::{finished, named, one, wait_transcript, Xmpptap};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const FILE_ID: u8 = 140;

/// A fake peer on plain TCP.
type Tcp = Peer<TcpStream>;

const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// Slack for timing assertions on a loaded machine, added to upper bounds.
const SLACK: Duration = Duration::from_secs(4);

/// A message from a.test to b.test (travels up).
fn up_message(id: &str, body: &str) -> String {
    format!(
        "<message from='alice@a.test/r' to='bob@b.test' id='{id}'><body>{body}</body></message>"
    )
}

/// A message from b.test to a.test (travels down).
fn down_message(id: &str, body: &str) -> String {
    format!(
        "<message from='bob@b.test/r' to='alice@a.test' id='{id}'><body>{body}</body></message>"
    )
}

fn ip(test: u8, host: u8) -> IpAddr {
    support::addr(FILE_ID, test, host).into()
}

/// A rules file for one test, removed on drop.
struct RulesFile {
    path: PathBuf,
}

impl RulesFile {
    fn new(test: u8, toml: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "xmpptap-rule-actions-{}-{test}.toml",
            std::process::id()
        ));
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        RulesFile { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The text of `examples/rules/<name>.toml`.
fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/rules")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Everything one test runs against: the proxy with `rules`, a fake b.test it routes to (and whose
/// certificate it trusts), and the rules file, kept while the proxy runs.
struct Setup {
    tap: Xmpptap,
    receiver: Receiver,
    _rules: RulesFile,
}

async fn setup(test: u8, rules: &str) -> Setup {
    let receiver = Receiver::bind(ip(test, 3), "b.test").await;
    let rules = RulesFile::new(test, rules);
    let tap = Xmpptap::start(&[
        format!("--s2s-listen={}:0", ip(test, 10)),
        format!("--route=b.test={}", receiver.addr()),
        format!("--upstream-ca={}", receiver.cert_path().display()),
        format!("--rules={}", rules.path().display()),
    ])
    .await;
    Setup {
        tap,
        receiver,
        _rules: rules,
    }
}

impl Setup {
    /// The initiator connects and opens its stream; the receiver gets the proxy's connection and the header.
    async fn open(&self) -> (Tcp, Tcp) {
        let mut ini = Peer::connect("initiator", self.tap.addr()).await;
        ini.send(ini_header()).await;
        let mut rec = self.receiver.accept().await;
        rec.expect(ini_header()).await;
        (ini, rec)
    }

    /// [`Setup::open`], then a plaintext negotiation: the receiver offers no STARTTLS, so the proxy goes to
    /// the relay.
    async fn open_plain(&self) -> (Tcp, Tcp) {
        let (mut ini, mut rec) = self.open().await;
        let answer = rec_header("plain-id") + FEATURES_PLAIN;
        rec.send(&answer).await;
        ini.expect(&answer).await;
        (ini, rec)
    }

    /// The first `rule` event of rule `name`.
    async fn rule_event(&self, name: &str) -> Value {
        self.tap
            .wait_event(&format!("rule {name}"), |e| {
                e["event"] == "rule" && e["rule"] == name
            })
            .await
    }

    /// All `rule` events of rule `name` so far.
    fn rule_events(&self, name: &str) -> Vec<Value> {
        self.tap
            .transcript()
            .into_iter()
            .filter(|e| e["event"] == "rule" && e["rule"] == name)
            .collect()
    }
}

/// Checks the common fields of a `rule` event: action, direction, the element as it arrived, not refused.
fn assert_rule(event: &Value, action: &str, dir: &str, xml: &str) {
    assert_eq!(event["action"], action, "{event:#}");
    assert_eq!(event["dir"], dir, "{event:#}");
    assert_eq!(event["xml"], xml, "{event:#}");
    assert!(event["refused"].is_null(), "not refused: {event:#}");
}

/// How a connection ended: everything read until a clean end of stream, or the read error. Reads the
/// connection itself: bytes an earlier `expect` read ahead are not seen, so call it only when the peer has
/// consumed everything sent to it so far.
async fn ending(peer: &mut Tcp) -> std::io::Result<String> {
    let name = peer.name;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, peer.io().read(&mut chunk)).await {
            Ok(Ok(0)) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!(
                "{name}: connection still open after {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// The stream error xmpptap writes for `condition` with `text`, and the stream's end.
fn stream_error(condition: &str, text: &str) -> String {
    format!(
        "<stream:error><{condition} xmlns='{NS_STREAM_ERRORS}'/><text xmlns='{NS_STREAM_ERRORS}'>{text}\
         </text></stream:error></stream:stream>"
    )
}

// ---------------------------------------------------------------------------------------------------------
// drop

#[tokio::test]
async fn drop_forwards_nothing_of_the_element_and_the_next_one_passes() {
    let s = setup(1, &example("drop")).await;
    let (mut ini, mut rec) = s.open_plain().await;

    let dropped = up_message("d1", "please drop me");
    let kept = up_message("k1", "keep");
    ini.send(&dropped).await;
    ini.send(&kept).await;
    rec.expect(&kept).await;

    // In one batch, between untouched stanzas: those around it still arrive byte for byte.
    let before = up_message("k2", "before");
    let after = up_message("k3", "after");
    ini.send(format!("{before}{dropped} {after}")).await;
    rec.expect(format!("{before} {after}")).await;

    // Down too (the example names no direction).
    let down_dropped = down_message("d2", "drop me too");
    let down_kept = down_message("k4", "fine");
    rec.send(format!("{down_dropped}{down_kept}")).await;
    ini.expect(&down_kept).await;
    rec.expect_silence(Duration::from_millis(200)).await;

    let events = wait_transcript(&s.tap, "three drops", |events| {
        named(events, "rule").len() >= 3
    })
    .await;
    let drops = named(&events, "rule");
    assert_eq!(drops.len(), 3, "{drops:#?}");
    for (event, (dir, xml)) in
        drops
            .iter()
            .zip([("up", &dropped), ("up", &dropped), ("down", &down_dropped)])
    {
        assert_eq!(event["rule"], "drop-marked-messages");
        assert_rule(event, "drop", dir, xml);
    }
}

// ---------------------------------------------------------------------------------------------------------
// delay

#[tokio::test]
async fn delay_holds_the_element_and_what_follows_it_in_that_direction_only() {
    const DELAY: Duration = Duration::from_millis(800);
    let s = setup(
        2,
        &format!(
            "[[rule]]\nname = 'slow'\n[rule.match]\ndirection = 'up'\nelement = 'message'\n\
             [rule.action]\nkind = 'delay'\nms = {}\n",
            DELAY.as_millis()
        ),
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let message = up_message("m1", "late");
    let iq =
        "<iq type='get' id='i1' from='a.test' to='b.test'><query xmlns='jabber:iq:version'/></iq>";
    let reply = down_message("r1", "not held");
    let sent = Instant::now();
    ini.send(&message).await;
    ini.send(iq).await;
    // The other direction is not held behind the delay.
    rec.send(&reply).await;
    ini.expect(&reply).await;
    let down = sent.elapsed();
    // The delayed message arrives late and first; the iq after it waits behind it.
    rec.expect(&message).await;
    let up = sent.elapsed();
    rec.expect(iq).await;
    assert!(down < DELAY, "the down direction waited {down:?}");
    assert!(
        up >= DELAY,
        "the message arrived after {up:?}, before the delay"
    );
    assert!(up < DELAY + SLACK, "the message arrived after {up:?}");

    let event = s.rule_event("slow").await;
    assert_rule(&event, "delay", "up", &message);
    assert_eq!(event["detail"], "800 ms");
    assert_eq!(s.rule_events("slow").len(), 1, "the iq is not delayed");
}

// ---------------------------------------------------------------------------------------------------------
// rewrite

#[tokio::test]
async fn rewrite_changes_only_what_it_says_and_untouched_stanzas_stay_byte_exact() {
    let s = setup(
        3,
        r#"
[[rule]]
name = "attributes"
match = { element = "message", attributes = { id = "rw-attr" } }
action = { kind = "rewrite", set = { type = "normal", "xml:lang" = "en" }, remove = ["from"] }

[[rule]]
name = "text"
match = { element = "message", text = "secret" }
action = { kind = "rewrite", replace_text = { pattern = "secret (\\w+)", with = "[redacted ${1}]" } }

[[rule]]
name = "whole"
match = { element = "iq", child = "{urn:xmpp:ping}ping" }
action = { kind = "rewrite", replace_with = "<iq type='result' id='{id}' from='{to}' to='{from}'/>" }
"#,
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let plain1 = up_message("u1", "untouched &amp; &#x263A;");
    let attrs = "<message from='alice@a.test/r' to='bob@b.test' id='rw-attr' type=\"chat\"><body>hi</body></message>";
    let attrs_rewritten =
        "<message to='bob@b.test' id='rw-attr' type=\"normal\" xml:lang='en'><body>hi</body></message>";
    let plain2 = "<presence from='alice@a.test/r' to='bob@b.test'/>";
    let text = up_message("t1", "the secret plan &amp; more");
    let text_rewritten = up_message("t1", "the [redacted plan] &amp; more");
    let ping =
        "<iq type='get' id='p1' from='a.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>";
    let ping_rewritten = "<iq type='result' id='p1' from='b.test' to='a.test'/>";
    let plain3 = up_message("u3", "last");

    // One batch: the rewritten elements are spliced in among the untouched bytes.
    ini.send(format!("{plain1}{attrs}\n{plain2}{text}{ping} {plain3}"))
        .await;
    rec.expect(format!(
        "{plain1}{attrs_rewritten}\n{plain2}{text_rewritten}{ping_rewritten} {plain3}"
    ))
    .await;

    for (rule, xml, rewritten) in [
        ("attributes", attrs, attrs_rewritten),
        ("text", text.as_str(), text_rewritten.as_str()),
        ("whole", ping, ping_rewritten),
    ] {
        let event = s.rule_event(rule).await;
        assert_rule(&event, "rewrite", "up", xml);
        assert_eq!(event["detail"], rewritten, "{event:#}");
    }
    // The transcript records the stanzas as they arrived.
    let events = s.tap.transcript();
    one(&events, "stanza", |e| e["xml"] == attrs);
}

// ---------------------------------------------------------------------------------------------------------
// inject

#[tokio::test]
async fn inject_before_after_and_reply() {
    let s = setup(
        4,
        r#"
[[rule]]
name = "before"
match = { direction = "up", element = "message", text = "one" }
action = { kind = "inject", at = "before", xml = "<message from='a.test' to='b.test' id='inj-before'/>" }

[[rule]]
name = "after"
match = { direction = "up", element = "message", text = "two" }
action = { kind = "inject", at = "after", xml = "<message from='a.test' to='b.test' id='inj-after'/>" }

[[rule]]
name = "reply"
match = { direction = "up", element = "iq", type = "get" }
action = { kind = "inject", at = "reply", xml = "<iq type='result' from='b.test' to='a.test' id='inj-reply'/>" }
"#,
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let first = up_message("m1", "one");
    let two = up_message("m2", "two");
    let plain = up_message("m3", "three");
    ini.send(&first).await;
    rec.expect(format!(
        "<message from='a.test' to='b.test' id='inj-before'/>{first}"
    ))
    .await;
    ini.send(format!("{two}{plain}")).await;
    rec.expect(format!(
        "{two}<message from='a.test' to='b.test' id='inj-after'/>{plain}"
    ))
    .await;

    // Reply: the matched iq goes on, the injected answer comes back to its sender.
    let iq =
        "<iq type='get' id='q1' from='a.test' to='b.test'><query xmlns='jabber:iq:version'/></iq>";
    let answer = "<iq type='result' from='b.test' to='a.test' id='inj-reply'/>";
    ini.send(iq).await;
    rec.expect(iq).await;
    ini.expect(answer).await;
    // Nothing else comes down; what the receiver sends still does.
    let down = down_message("d1", "down");
    rec.send(&down).await;
    ini.expect(&down).await;

    assert_rule(&s.rule_event("before").await, "inject", "up", &first);
    assert_rule(&s.rule_event("after").await, "inject", "up", &two);
    assert_rule(&s.rule_event("reply").await, "inject", "up", iq);
    let injected = s
        .tap
        .wait_event("the reply's injected event", |e| {
            e["event"] == "injected" && e["origin"] == "rule:reply"
        })
        .await;
    // Injections before and after an element are recorded too.
    for rule in ["before", "after"] {
        let origin = format!("rule:{rule}");
        s.tap
            .wait_event("an injected event", |e| {
                e["event"] == "injected" && e["origin"] == origin.as_str() && e["dir"] == "up"
            })
            .await;
    }
    assert_eq!(injected["dir"], "down", "{injected:#}");
    assert_eq!(injected["xml"], answer, "{injected:#}");
}

#[tokio::test]
async fn inject_fills_placeholders_from_the_matched_element() {
    let s = setup(5, &example("inject")).await;
    let (mut ini, mut rec) = s.open_plain().await;

    let message =
        "<message from='alice@a.test/r' to='bob@b.test' id='m&amp;1'><body>hello</body></message>";
    ini.send(message).await;
    // {from}, {to} and {id} are the matched message's attributes (escaped again).
    let headline =
        "<message type='headline' from='alice@a.test/r' to='bob@b.test' id='xmpptap-m&amp;1'>\
        <body>xmpptap: a message follows</body></message>";
    let got = rec.read_until("</message>").await;
    assert_eq!(got, headline, "the injected headline comes first");
    rec.expect(message).await;

    let event = s.rule_event("headline-before-message").await;
    assert_rule(&event, "inject", "up", message);
}

// ---------------------------------------------------------------------------------------------------------
// close

#[tokio::test]
async fn close_sends_the_sender_a_stream_error_and_the_other_side_a_clean_close() {
    let s = setup(6, &example("close")).await;
    let words = stream_error("policy-violation", "closed by an xmpptap rule");

    // Up: the initiator sent the element, so it gets the error; the element goes nowhere.
    let (mut ini, mut rec) = s.open_plain().await;
    let kept = up_message("k1", "still fine");
    let marked = up_message("c1", "please close me");
    ini.send(format!("{kept}{marked}")).await;
    // What came before it in the same read still goes on, then the clean close.
    rec.expect(format!("{kept}{CLOSE}")).await;
    assert_eq!(ending(&mut rec).await.expect("a clean end"), "");
    assert_eq!(ending(&mut ini).await.expect("a clean end"), words);

    let events = finished(&s.tap, 1).await;
    let event = one(&events, "rule", |_| true);
    assert_eq!(event["rule"], "close-on-marked-message");
    assert_rule(event, "close", "up", &marked);
    one(&events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["condition"] == "policy-violation" && e["dir"] == "down"
    });
    assert_eq!(one(&events, "closed", |_| true)["by"], "initiator");

    // Down: now the receiver sent it.
    let (mut ini, mut rec) = s.open_plain().await;
    let marked = down_message("c2", "close me now");
    rec.send(&marked).await;
    assert_eq!(ending(&mut rec).await.expect("a clean end"), words);
    assert_eq!(ending(&mut ini).await.expect("a clean end"), CLOSE);

    let events = finished(&s.tap, 2).await;
    assert_rule(one(&events, "rule", |_| true), "close", "down", &marked);
    one(&events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["condition"] == "policy-violation" && e["dir"] == "up"
    });
    assert_eq!(one(&events, "closed", |_| true)["by"], "receiver");
}

// ---------------------------------------------------------------------------------------------------------
// stall

#[tokio::test]
async fn stall_with_ms_holds_then_forwards() {
    const STALL: Duration = Duration::from_millis(600);
    let s = setup(
        7,
        "[[rule]]\nname = 'pause'\nmatch = { element = 'message', text = 'pause' }\n\
         action = { kind = 'stall', ms = 600 }\n",
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let message = up_message("s1", "pause here");
    let next = up_message("s2", "next");
    let sent = Instant::now();
    ini.send(format!("{message}{next}")).await;
    rec.expect(&message).await;
    let held = sent.elapsed();
    rec.expect(&next).await;
    assert!(held >= STALL, "forwarded after {held:?}");
    assert!(held < STALL + SLACK, "forwarded after {held:?}");

    // Afterwards the direction flows again.
    let later = up_message("s3", "no wait");
    ini.send(&later).await;
    rec.expect(&later).await;

    assert_rule(&s.rule_event("pause").await, "stall", "up", &message);
}

#[tokio::test]
async fn stall_without_ms_stops_one_direction_and_the_other_goes_on() {
    let s = setup(
        8,
        "[[rule]]\nname = 'freeze'\nmatch = { direction = 'up', element = 'message', text = 'freeze' }\n\
         action = { kind = 'stall' }\n",
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let before = up_message("f0", "before");
    let frozen = up_message("f1", "freeze");
    ini.send(format!("{before}{frozen}")).await;
    rec.expect(&before).await;
    ini.send(up_message("f2", "after")).await;
    rec.expect_silence(Duration::from_millis(800)).await;

    // The receiver's direction still works, both ways of the connection stay open.
    for i in 0..3 {
        let down = down_message(&format!("d{i}"), "down still flows");
        rec.send(&down).await;
        ini.expect(&down).await;
    }
    rec.expect_silence(Duration::from_millis(200)).await;

    assert_rule(&s.rule_event("freeze").await, "stall", "up", &frozen);
    assert!(
        named(&s.tap.transcript(), "closed").is_empty(),
        "the connection stays open"
    );
}

// ---------------------------------------------------------------------------------------------------------
// dialback_invalid

#[tokio::test]
async fn dialback_invalid_turns_a_valid_answer_into_invalid() {
    let s = setup(9, &example("dialback_invalid")).await;
    let (mut ini, mut rec) = s.open_plain().await;

    let request = "<db:result from='a.test' to='b.test'>0123456789abcdef</db:result>";
    ini.send(request).await;
    rec.expect(request).await;

    let valid = "<db:result from='b.test' to='a.test' type='valid'/>";
    rec.send(valid).await;
    ini.expect("<db:result from='b.test' to='a.test' type='invalid'/>")
        .await;
    // Only the result is matched: a verify answer passes as it is.
    let verify = "<db:verify from='b.test' to='a.test' id='s1' type=\"valid\"/>";
    rec.send(verify).await;
    ini.expect(verify).await;

    let event = s.rule_event("refuse-dialback").await;
    assert_rule(&event, "dialback_invalid", "down", valid);
    assert_eq!(
        event["detail"],
        "<db:result from='b.test' to='a.test' type='invalid'/>"
    );
    // The transcript keeps what the receiver said.
    let events = s.tap.transcript();
    one(&events, "dialback", |e| {
        e["dir"] == "down" && e["result"] == "valid"
    });
}

// ---------------------------------------------------------------------------------------------------------
// throttle

#[tokio::test]
async fn throttle_limits_the_rate_from_the_matched_element_on() {
    const RATE: u64 = 2000;
    let s = setup(
        10,
        &format!(
            "[[rule]]\nname = 'slow-link'\nmatch = {{ direction = 'up', element = 'message' }}\n\
             action = {{ kind = 'throttle', bytes_per_sec = {RATE} }}\n"
        ),
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    // 3000 bytes at 2000 bytes/s: 1.5 s. Written in tenths of a second's worth (200 bytes), the last of
    // them leaves after 1.4 s.
    let empty = up_message("big", "").len();
    let big = up_message("big", &"x".repeat(3000 - empty));
    assert_eq!(big.len(), 3000);
    let sent = Instant::now();
    ini.send(&big).await;
    rec.expect(&big).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1300),
        "3000 bytes at {RATE} bytes/s took {took:?}"
    );
    assert!(took < Duration::from_millis(1500) + SLACK, "took {took:?}");

    // The other direction is not throttled: 4000 bytes would take 1.9 s at that rate.
    let down = down_message("d1", &"y".repeat(4000));
    let sent = Instant::now();
    rec.send(&down).await;
    ini.expect(&down).await;
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "the down direction took {:?}",
        sent.elapsed()
    );

    assert_rule(&s.rule_event("slow-link").await, "throttle", "up", &big);
}

// ---------------------------------------------------------------------------------------------------------
// slice

#[tokio::test]
async fn slice_writes_in_small_pieces_with_pauses() {
    const SIZE: usize = 16;
    const PAUSE: Duration = Duration::from_millis(40);
    let s = setup(
        11,
        "[[rule]]\nname = 'trickle'\nmatch = { direction = 'down', element = 'message' }\n\
         action = { kind = 'slice', bytes = 16, delay_ms = 40 }\n",
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    // 160 bytes: 10 pieces, 9 pauses.
    let empty = down_message("sl", "").len();
    let message = down_message("sl", &"z".repeat(10 * SIZE - empty));
    assert_eq!(message.len(), 10 * SIZE);
    let sent = Instant::now();
    rec.send(&message).await;
    let mut got = Vec::new();
    let mut reads = Vec::new();
    while got.len() < message.len() {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, ini.io().read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!("initiator: stuck after {:?}", String::from_utf8_lossy(&got))
            })
            .unwrap_or_else(|e| panic!("initiator: read failed: {e}"));
        assert_ne!(
            n,
            0,
            "initiator: closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
        reads.push(n);
    }
    let took = sent.elapsed();
    assert_eq!(String::from_utf8_lossy(&got), message);
    assert!(took >= PAUSE * 9, "10 slices arrived within {took:?}");
    assert!(took < PAUSE * 9 + SLACK, "took {took:?}");
    // The reader may be late and take two pieces at once now and then, but not all of them.
    let small = reads.iter().filter(|&&n| n <= SIZE).count();
    assert!(small * 2 >= 10, "reads: {reads:?}");

    assert_rule(&s.rule_event("trickle").await, "slice", "down", &message);
}

// ---------------------------------------------------------------------------------------------------------
// cut_after

#[tokio::test]
async fn cut_after_stanzas_forwards_that_many_then_closes_both_without_a_word() {
    // The first message going up starts the count: `stanzas = 2`.
    let s = setup(12, &example("cut_after")).await;
    let (mut ini, mut rec) = s.open_plain().await;

    // Stanzas are counted from the matched element, as bytes are (see the next test): it is the first of the
    // two.
    let first = up_message("c1", "first, matched");
    let second = up_message("c2", "second");
    ini.send(&first).await;
    rec.expect(&first).await;
    ini.send(&second).await;
    rec.expect(&second).await;
    // Two stanzas have gone: both connections end, with neither a stream error nor </stream:stream>.
    let end = tokio::time::timeout(Duration::from_secs(3), ending(&mut rec))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "stanzas = 2: the connection is still open after the matched stanza and one more"
            )
        });
    assert_eq!(end.expect("a clean end"), "");
    assert_eq!(ending(&mut ini).await.expect("a clean end"), "");

    let events = finished(&s.tap, 1).await;
    let event = one(&events, "rule", |_| true);
    assert_eq!(event["rule"], "cut-mid-conversation");
    assert_rule(event, "cut_after", "up", &first);
    assert!(
        named(&events, "stream_error").is_empty(),
        "no stream error: {events:#?}"
    );
    let closed = one(&events, "closed", |_| true);
    assert_eq!(closed["by"], "xmpptap");
}

#[tokio::test]
async fn cut_after_bytes_forwards_that_many_bytes_then_closes_both() {
    let s = setup(
        13,
        "[[rule]]\nname = 'cut-bytes'\nmatch = { direction = 'up', element = 'message', text = 'longer' }\n\
         action = { kind = 'cut_after', bytes = 40 }\n",
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let before = up_message("b0", "before the rule");
    let message = up_message("c1", "a message longer than forty bytes");
    ini.send(&before).await;
    rec.expect(&before).await;
    ini.send(&message).await;
    // Counted from the start of the matched element.
    assert_eq!(ending(&mut rec).await.expect("a clean end"), &message[..40]);
    assert_eq!(ending(&mut ini).await.expect("a clean end"), "");

    let events = finished(&s.tap, 1).await;
    assert_rule(one(&events, "rule", |_| true), "cut_after", "up", &message);
    assert!(named(&events, "stream_error").is_empty(), "{events:#?}");
    assert_eq!(one(&events, "closed", |_| true)["by"], "xmpptap");
}

// ---------------------------------------------------------------------------------------------------------
// reset

#[tokio::test]
async fn reset_gives_both_peers_a_connection_reset() {
    let s = setup(14, &example("reset")).await;
    let (mut ini, mut rec) = s.open_plain().await;

    let kept = up_message("k1", "fine");
    ini.send(&kept).await;
    rec.expect(&kept).await;
    let marked = up_message("r1", "please reset me");
    ini.send(&marked).await;

    for peer in [&mut ini, &mut rec] {
        let name = peer.name;
        match ending(peer).await {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{name}: {e}"),
            Ok(got) => panic!("{name}: a clean end of stream instead of a reset, after {got:?}"),
        }
    }

    let events = finished(&s.tap, 1).await;
    let event = one(&events, "rule", |_| true);
    assert_eq!(event["rule"], "reset-on-marked-message");
    assert_rule(event, "reset", "up", &marked);
    assert!(named(&events, "stream_error").is_empty(), "{events:#?}");
    assert_eq!(one(&events, "closed", |_| true)["by"], "xmpptap");
}

// ---------------------------------------------------------------------------------------------------------
// Stream-level rules during negotiation

#[tokio::test]
async fn stall_of_proceed_delays_it_at_the_initiator() {
    const STALL: Duration = Duration::from_secs(1);
    let s = setup(15, &example("stall").replace("ms = 5000", "ms = 1000")).await;
    let (mut ini, mut rec) = s.open().await;
    let first = rec_header("before-tls") + FEATURES_TLS;
    rec.send(&first).await;
    ini.expect(&first).await;
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;

    rec.send(PROCEED).await;
    let sent = Instant::now();
    // xmpptap does its TLS with the receiver first, then holds <proceed/> back.
    let _rec = s.receiver.tls_accept(rec).await;
    ini.expect(PROCEED).await;
    let held = sent.elapsed();
    assert!(held >= STALL, "<proceed/> arrived after {held:?}");
    assert!(held < STALL + SLACK, "<proceed/> arrived after {held:?}");

    assert_rule(
        &s.rule_event("slow-proceed").await,
        "stall",
        "down",
        PROCEED,
    );
}

#[tokio::test]
async fn rewrite_removes_starttls_from_the_features_the_initiator_sees() {
    let s = setup(16, &example("rewrite")).await;
    let (mut ini, mut rec) = s.open().await;
    let header = rec_header("offers-tls");
    rec.send(format!("{header}{FEATURES_TLS}")).await;
    ini.expect(format!("{header}{FEATURES_PLAIN}")).await;

    // The initiator goes on without TLS, as offered.
    let request = "<db:result from='a.test' to='b.test'>key</db:result>";
    ini.send(request).await;
    rec.expect(request).await;
    let answer = "<db:result from='b.test' to='a.test' type='valid'/>";
    rec.send(answer).await;
    ini.expect(answer).await;

    assert_rule(
        &s.rule_event("no-starttls-offered").await,
        "rewrite",
        "down",
        FEATURES_TLS,
    );
    let events = s.tap.transcript();
    assert!(named(&events, "starttls").is_empty(), "{events:#?}");
    assert!(named(&events, "tls_established").is_empty(), "{events:#?}");
}

#[tokio::test]
async fn inject_after_the_features_and_a_relay_only_action_refused_before_tls() {
    let s = setup(
        22,
        r#"
[[rule]]
name = "note-after-features"
match = { direction = "down", element = "features" }
action = { kind = "inject", at = "after", xml = "<message from='b.test' to='a.test'><body>hi</body></message>" }

[[rule]]
name = "throttle-starttls"
match = { direction = "up", element = "starttls" }
action = { kind = "throttle", bytes_per_sec = 10 }
"#,
    )
    .await;
    let (mut ini, mut rec) = s.open().await;
    let header = rec_header("before-tls");
    let note = "<message from='b.test' to='a.test'><body>hi</body></message>";
    rec.send(format!("{header}{FEATURES_TLS}")).await;
    ini.expect(format!("{header}{FEATURES_TLS}{note}")).await;
    // Throttling is for the relay: <starttls/> passes at once, and the rule event says why nothing was done.
    ini.send(STARTTLS).await;
    rec.expect(STARTTLS).await;

    assert_rule(
        &s.rule_event("note-after-features").await,
        "inject",
        "down",
        FEATURES_TLS,
    );
    let injected = s
        .tap
        .wait_event("injected", |e| e["event"] == "injected")
        .await;
    assert_eq!(
        injected["origin"], "rule:note-after-features",
        "{injected:#}"
    );
    assert_eq!(injected["xml"], note, "{injected:#}");
    let refused = s.rule_event("throttle-starttls").await;
    assert_eq!(refused["action"], "throttle", "{refused:#}");
    assert!(
        refused["refused"]
            .as_str()
            .is_some_and(|why| why.contains("once the streams are negotiated")),
        "{refused:#}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Counters

#[tokio::test]
async fn after_stanzas_every_and_probability_together() {
    let s = setup(
        17,
        r#"
# Matches every message but never acts: its matches count for nothing.
[[rule]]
name = "never"
match = { element = "message", probability = 0.0 }
action = { kind = "drop" }

# Lets two up-going messages pass, then drops the next and every second one after it.
[[rule]]
name = "third-then-every-second"
match = { direction = "up", element = "message", after_stanzas = 2, every = 2 }
action = { kind = "drop" }
"#,
    )
    .await;
    let (mut ini, mut rec) = s.open_plain().await;

    let m: Vec<String> = (1..=6)
        .map(|i| up_message(&format!("m{i}"), &format!("number {i}")))
        .collect();
    // An iq in between does not match, so it is not counted.
    let iq =
        "<iq type='get' id='i1' from='a.test' to='b.test'><query xmlns='jabber:iq:version'/></iq>";
    ini.send(format!(
        "{}{}{iq}{}{}{}{}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    ))
    .await;
    rec.expect(format!("{}{}{iq}{}{}", m[0], m[1], m[3], m[5]))
        .await;

    // Down, only "never" matches: everything passes.
    let down: Vec<String> = (1..=3)
        .map(|i| down_message(&format!("d{i}"), "down"))
        .collect();
    rec.send(down.concat()).await;
    ini.expect(down.concat()).await;

    let acted = wait_transcript(&s.tap, "two drops", |events| {
        named(events, "rule").len() >= 2
    })
    .await;
    let acted = named(&acted, "rule");
    let dropped: Vec<&Value> = acted.iter().map(|e| &e["xml"]).collect();
    assert_eq!(dropped, [&m[2], &m[4]], "{acted:#?}");
    assert!(acted.iter().all(|e| e["rule"] == "third-then-every-second"));

    // Counts are per connection: a new one starts again.
    let (mut ini2, mut rec2) = s.open_plain().await;
    ini2.send(format!("{}{}{}", m[0], m[1], m[2])).await;
    ini2.send(&m[3]).await;
    rec2.expect(format!("{}{}{}", m[0], m[1], m[3])).await;
    drop((ini, rec));
}

// ---------------------------------------------------------------------------------------------------------
// Bad rule files

/// Runs `xmpptap proxy ARGS... --ca-dir <scratch>` to its end (bounded in time).
fn run_proxy(test: u8, args: &[String]) -> std::process::Output {
    let ca_dir = std::env::temp_dir().join(format!(
        "xmpptap-rule-actions-ca-{}-{test}",
        std::process::id()
    ));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .arg("proxy")
        .args(args)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run xmpptap proxy {args:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child
        .try_wait()
        .unwrap_or_else(|e| panic!("wait for xmpptap: {e}"))
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output();
            panic!("xmpptap proxy {args:?} is still running: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("xmpptap output: {e}"));
    let _ = std::fs::remove_dir_all(&ca_dir);
    out
}

#[test]
fn a_rules_file_that_does_not_parse_is_refused_with_exit_64() {
    let listen = format!("--s2s-listen={}:0", ip(18, 10));
    let cases: &[(&str, &[&str])] = &[
        (
            "[[rule]]\nname = 'ok'\naction = { kind = 'drop' }\n\
             [[rule]]\nname = 'typo'\n[rule.match]\nelemnt = 'message'\n[rule.action]\nkind = 'drop'\n",
            &["rule \"typo\"", "unknown field `elemnt`"],
        ),
        (
            "[[rule]]\nname = 'bad-regex'\nmatch = { text = 'a(b' }\naction = { kind = 'drop' }\n",
            &["rule \"bad-regex\"", "bad regex"],
        ),
        (
            "[[rule]]\nname = 'no-limit'\naction = { kind = 'cut_after' }\n",
            &["rule \"no-limit\"", "give bytes, stanzas or both"],
        ),
        (
            "[[rule]]\nname = 'typo-condition'\naction = { kind = 'close', condition = 'policy-violaton' }\n",
            &["rule \"typo-condition\"", "\"policy-violaton\" is not a stream error condition"],
        ),
    ];
    for (text, expected) in cases {
        let rules = RulesFile::new(18, text);
        let rules_arg = format!("--rules={}", rules.path().display());
        for check in [true, false] {
            let mut args = vec![listen.clone(), rules_arg.clone()];
            if check {
                args.push(String::from("--check"));
            }
            let out = run_proxy(18, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
            for part in *expected {
                assert!(stderr.contains(part), "{args:?}: {stderr:?} lacks {part:?}");
            }
            assert!(
                stderr.contains(&rules.path().display().to_string()),
                "the file is named: {stderr}"
            );
        }
    }

    // A good file passes the check.
    let rules = RulesFile::new(18, &example("drop"));
    let out = run_proxy(
        18,
        &[
            listen.clone(),
            format!("--rules={}", rules.path().display()),
            String::from("--check"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

// ---------------------------------------------------------------------------------------------------------
// Federation policy: rates and lists, with no rules

/// [`setup`] with the policy flags `policy` and an empty rules file.
async fn policy_setup(test: u8, policy: &[&str]) -> Setup {
    let receiver = Receiver::bind(ip(test, 3), "b.test").await;
    let rules = RulesFile::new(test, "# No rules: only the policy acts.\n");
    let mut args = vec![
        format!("--s2s-listen={}:0", ip(test, 10)),
        format!("--route=b.test={}", receiver.addr()),
        format!("--upstream-ca={}", receiver.cert_path().display()),
        format!("--rules={}", rules.path().display()),
    ];
    args.extend(policy.iter().map(|flag| (*flag).to_owned()));
    let tap = Xmpptap::start(&args).await;
    Setup {
        tap,
        receiver,
        _rules: rules,
    }
}

/// An S2S stream header from `from` to `to`.
fn header_from(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' {STREAM_NS} \
         xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    )
}

/// `n` messages up from a.test, numbered from `first`, each with an id and body that say its number.
fn numbered(first: usize, n: usize) -> Vec<String> {
    (first..first + n)
        .map(|i| up_message(&format!("n{i}"), &format!("number {i}")))
        .collect()
}

/// The initiator `from` opens a stream to `to` and is refused right after its header: it reads xmpptap's own
/// stream header (from and to swapped, id `xmpptap-CONN`), a policy-violation stream error with `text`
/// (escaped), and the end of the connection. Returns the `policy` event of the refusal, which must name
/// `domain` and `reason`; nothing was connected upstream for it.
async fn refused_after_header(
    s: &Setup,
    (from, to): (&str, &str),
    (domain, reason): (&str, &str),
    text: &str,
) -> Value {
    let mut ini = Peer::connect("refused initiator", s.tap.addr()).await;
    ini.send(header_from(from, to)).await;
    let got = ending(&mut ini).await.expect("a clean end");
    let policy = s
        .tap
        .wait_event(&format!("the refusal of {from}->{to}"), |e| {
            e["event"] == "policy"
                && e["domain"] == domain
                && e["reason"] == reason
                && e["action"] == "refused"
        })
        .await;
    let conn = policy["conn"]
        .as_u64()
        .unwrap_or_else(|| panic!("conn: {policy}"));
    let expected = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' {STREAM_NS} \
         xmlns:db='jabber:server:dialback' from='{to}' to='{from}' id='xmpptap-{conn}' version='1.0'>{}",
        stream_error("policy-violation", text)
    );
    assert_eq!(got, expected, "{from}->{to}");

    let events = finished(&s.tap, conn).await;
    assert!(
        named(&events, "upstream_connected").is_empty(),
        "refused before connecting upstream: {events:#?}"
    );
    let error = one(&events, "protocol_error", |_| true);
    assert_eq!(error["side"], "initiator", "{error}");
    assert_eq!(error["condition"], "policy-violation", "{error}");
    one(&events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["condition"] == "policy-violation" && e["dir"] == "down"
    });
    policy
}

/// `--rate-stanzas 5 --rate-exceeded refuse`: a burst of 5 passes; the 15 that follow at once are over the
/// rate, and a.test's stream ends with `<policy-violation/>` before any of them reaches the receiver.
#[tokio::test]
async fn stanza_rate_refuse_ends_the_stream_with_policy_violation() {
    let s = policy_setup(19, &["--rate-stanzas=5", "--rate-exceeded=refuse"]).await;
    let (mut ini, mut rec) = s.open_plain().await;
    let messages = numbered(1, 20);

    // One write of exactly the burst: one batch the full bucket has room for.
    let burst = messages[..5].concat();
    let sent = Instant::now();
    ini.send(&burst).await;
    rec.expect(&burst).await;
    // The other 15 in one write, so that xmpptap reads them in one batch (and nothing is left unread when it
    // closes). A second's refill would make the bucket full again, and a full bucket lets any batch through.
    let rest = messages[5..].concat();
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "the burst took {waited:?} to arrive: the bucket has refilled, the test proves nothing"
    );
    ini.send(&rest).await;

    let refused = "a.test sent more than 5 stanzas per second through xmpptap (--rate-stanzas)";
    assert_eq!(
        ending(&mut ini).await.expect("a clean end"),
        stream_error("policy-violation", refused)
    );
    // None of the 15: only the end of the stream.
    assert_eq!(ending(&mut rec).await.expect("a clean end"), CLOSE);

    let events = finished(&s.tap, 1).await;
    let policy = one(&events, "policy", |_| true);
    assert_eq!(policy["reason"], "stanza_rate", "{policy}");
    assert_eq!(policy["action"], "refused", "{policy}");
    assert_eq!(policy["domain"], "a.test", "{policy}");
    assert_eq!(policy["detail"], refused, "{policy}");
    assert_eq!(policy["dir"], "up", "{policy}");
    let error = one(&events, "protocol_error", |_| true);
    assert_eq!(error["side"], "initiator", "{error}");
    assert_eq!(error["condition"], "policy-violation", "{error}");
    one(&events, "stream_error", |e| {
        e["origin"] == "xmpptap" && e["condition"] == "policy-violation" && e["dir"] == "down"
    });
    assert_eq!(one(&events, "closed", |_| true)["by"], "initiator");
}

/// `--rate-stanzas 10` (over the rate: delay, the default): 30 stanzas sent at once arrive whole and in order,
/// a burst of 10 and then 10 a second, so the last one no earlier than 2 s after the first batch was read.
/// The receiver's direction carries b.test's traffic on a.test's connection, which is not rated.
#[tokio::test]
async fn stanza_rate_delay_spreads_stanzas_out_in_order() {
    const N: usize = 30;
    const RATE: usize = 10;
    let s = policy_setup(20, &["--rate-stanzas=10"]).await;
    let (mut ini, mut rec) = s.open_plain().await;
    // Small writes go out at once, so that xmpptap reads them in several batches.
    ini.io()
        .set_nodelay(true)
        .unwrap_or_else(|e| panic!("TCP_NODELAY: {e}"));
    let messages = numbered(1, N);

    let sent = Instant::now();
    for message in &messages {
        ini.send(message).await;
    }
    // In order and byte for byte, however xmpptap batched them.
    rec.expect(messages.concat()).await;
    let took = sent.elapsed();
    eprintln!("{N} stanzas at {RATE}/s took {took:?}");
    // 10 at once, the other 20 at 10 a second: the debt is repaid 2 s after the first batch was counted,
    // which is after `sent`.
    let repaid = Duration::from_secs(((N - RATE) / RATE) as u64);
    assert!(
        took >= repaid - Duration::from_millis(100),
        "{N} stanzas at {RATE}/s arrived within {took:?}"
    );
    assert!(took < repaid + SLACK, "took {took:?}");
    rec.expect_silence(Duration::from_millis(100)).await;

    // Down: not held back.
    let down: Vec<String> = (1..=N)
        .map(|i| down_message(&format!("d{i}"), "down"))
        .collect();
    let sent = Instant::now();
    rec.send(down.concat()).await;
    ini.expect(down.concat()).await;
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "the down direction took {:?}",
        sent.elapsed()
    );

    let delayed: Vec<Value> = s
        .tap
        .transcript()
        .into_iter()
        .filter(|e| e["event"] == "policy")
        .collect();
    assert!(!delayed.is_empty(), "no policy event");
    for event in &delayed {
        assert_eq!(event["action"], "delayed", "{event}");
        assert_eq!(event["reason"], "rate", "{event}");
        assert_eq!(event["domain"], "a.test", "{event}");
        assert_eq!(event["dir"], "up", "{event}");
        let detail = event["detail"].as_str().unwrap_or_default();
        assert!(detail.ends_with(" ms"), "{event}");
    }
    // The connection goes on.
    let later = up_message("later", "after the rush");
    ini.send(&later).await;
    rec.expect(&later).await;
    assert!(named(&s.tap.transcript(), "closed").is_empty());
}

/// `--rate-connections 2`: a.test's third connection within the minute is refused right after its header,
/// before xmpptap connects upstream; the first two stay up, and another domain has its own budget.
#[tokio::test]
async fn connection_rate_refuses_the_third_connection_of_a_domain() {
    let s = policy_setup(21, &["--rate-connections=2"]).await;
    let (mut ini1, mut rec1) = s.open_plain().await;
    let (mut ini2, mut rec2) = s.open_plain().await;

    let policy = refused_after_header(
        &s,
        ("a.test", "b.test"),
        ("a.test", "connection_rate"),
        "a.test opened more than 2 connections per minute through xmpptap (--rate-connections)",
    )
    .await;
    assert_eq!(policy["conn"], 3, "{policy}");

    // The two admitted connections still carry stanzas.
    for (i, (ini, rec)) in [(&mut ini1, &mut rec1), (&mut ini2, &mut rec2)]
        .into_iter()
        .enumerate()
    {
        let message = up_message(&format!("still{i}"), "still here");
        ini.send(&message).await;
        rec.expect(&message).await;
    }

    // c.test's first connection is admitted: the budget is a.test's.
    let mut ini = Peer::connect("c.test initiator", s.tap.addr()).await;
    ini.send(header_from("c.test", "b.test")).await;
    let mut rec = s.receiver.accept().await;
    rec.expect(header_from("c.test", "b.test")).await;
    let answer = rec_header("c-id") + FEATURES_PLAIN;
    rec.send(&answer).await;
    ini.expect(&answer).await;
}

/// `--policy allowlist --allow a.test --allow b.test`: a stream naming any other domain, as `from` or as `to`,
/// is refused right after its header; a.test's stream to b.test passes.
#[tokio::test]
async fn allowlist_admits_listed_domains_only() {
    let s = policy_setup(
        22,
        &["--policy=allowlist", "--allow=a.test", "--allow=b.test"],
    )
    .await;

    refused_after_header(
        &s,
        ("c.test", "b.test"),
        ("c.test", "not_allowed"),
        "c.test is not on xmpptap&apos;s allowlist (--policy allowlist)",
    )
    .await;
    // A subdomain is another domain.
    refused_after_header(
        &s,
        ("x.a.test", "b.test"),
        ("x.a.test", "not_allowed"),
        "x.a.test is not on xmpptap&apos;s allowlist (--policy allowlist)",
    )
    .await;
    // The receiving domain is checked too.
    refused_after_header(
        &s,
        ("a.test", "d.test"),
        ("d.test", "not_allowed"),
        "d.test is not on xmpptap&apos;s allowlist (--policy allowlist)",
    )
    .await;

    // On the list: the stream reaches b.test and stanzas flow both ways.
    let (mut ini, mut rec) = s.open_plain().await;
    let message = up_message("ok", "allowed");
    ini.send(&message).await;
    rec.expect(&message).await;
    let reply = down_message("ok2", "welcome");
    rec.send(&reply).await;
    ini.expect(&reply).await;
    let events = s.tap.transcript();
    assert_eq!(
        named(&events, "policy").len(),
        3,
        "only the three refusals: {events:#?}"
    );
}
