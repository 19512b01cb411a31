//! Rules, pings, the control API, metrics and the federation policy, tried on two real Prosody servers
//! federating through xmpptap (see `support::federation`).
//!
//! Rule files are the documented examples in `examples/rules/` where one fits, so that the examples are known
//! to do what their comments say.
//!
//! Addresses: file id 130 (see `tests/support/mod.rs`).

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::client::{Client, Delivery};
use support::control;
use support::federation::{Federation, Options};

const FILE_ID: u8 = 130;

/// How long a message through an established federation may take before a test gives up on it (they
/// usually take a few milliseconds; the first one, with TLS and dialback, up to a few hundred).
const DELIVERY: Duration = Duration::from_secs(10);

/// How long a test waits to be sure that a message is not delivered.
const SILENCE: Duration = Duration::from_secs(2);

/// An example rule file from `examples/rules/`.
fn example(name: &str) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/rules/{name}.toml"));
    assert!(path.is_file(), "no example {}", path.display());
    path.display().to_string()
}

/// Starts the federation with these extra `xmpptap proxy` flags.
async fn setup(test_id: u8, xmpptap_args: Vec<String>) -> Federation {
    let started = Instant::now();
    let options = Options {
        xmpptap_args,
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

/// `--control` on the test's proxy address, port chosen by the system.
fn control_flag(test_id: u8) -> String {
    format!("--control={}:0", support::addr(FILE_ID, test_id, 10))
}

/// bob@b.test and alice@a.test, logged in (bob first, so that he is online when alice writes).
async fn login(s: &Federation) -> (Client, Client) {
    let bob = Client::login(s.b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let alice = Client::login(s.a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    (alice, bob)
}

/// Waits for the next delivery to `client` and asserts that it is a message with `body`.
async fn expect_body(client: &mut Client, body: &str, s: &Federation) -> String {
    match client.next_delivery(DELIVERY).await {
        Some(Delivery::Message { from, body: got }) if got == body => from,
        other => panic!(
            "{}: expected a message {body:?}, got {other:?}\n{}",
            client.jid(),
            context(s)
        ),
    }
}

/// What to print when a test fails: the transcript's events without raw data, and the servers' log tails.
fn context(s: &Federation) -> String {
    let events: Vec<String> = s
        .tap
        .transcript()
        .iter()
        .filter(|e| e["event"] != "data" && e["event"] != "raw_data")
        .map(Value::to_string)
        .collect();
    format!(
        "--- transcript ({} events):\n{}\n{}\n{}",
        events.len(),
        events.join("\n"),
        s.a.failure_context(),
        s.b.failure_context()
    )
}

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

fn xml_contains(event: &Value, text: &str) -> bool {
    event["xml"].as_str().is_some_and(|xml| xml.contains(text))
}

/// The `stanza` event of the message whose XML contains `text`.
async fn message_event(s: &Federation, text: &str) -> Value {
    s.tap
        .wait_event(&format!("stanza event of message {text:?}"), |e| {
            is(e, "stanza") && e["name"] == "message" && xml_contains(e, text)
        })
        .await
}

/// Polls `check` every 50 ms until it gives a value or `timeout` passes.
async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of connection `conn`, in order.
fn conn_events(events: &[Value], conn: &Value) -> Vec<Value> {
    events
        .iter()
        .filter(|e| &e["conn"] == conn)
        .cloned()
        .collect()
}

/// The domain that opened connection `conn` (`from` of its first stream header going up).
fn initiator_of(events: &[Value], conn: &Value) -> String {
    events
        .iter()
        .find(|e| is(e, "stream_opened") && &e["conn"] == conn && e["dir"] == "up")
        .and_then(|e| e["from"].as_str())
        .unwrap_or_else(|| panic!("no stream header up on conn {conn}: {events:#?}"))
        .to_owned()
}

/// A value of the Prometheus text `metrics`: the sample whose name and labels are exactly `series`
/// (e.g. `xmpptap_dialback_total{result="valid"}`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// examples/rules/dialback_invalid.toml reverses the first positive dialback verdict. What Prosody 0.12 does
/// with that, as seen while writing this test:
///
/// 1. a.test connects to b.test and sends its key (`<db:result>`). To verify it, b.test wants to send
///    `<db:verify>` on its own stream to a.test, which does not exist yet: b.test opens one (through
///    xmpptap) and queues the `<db:verify>` until that stream has authenticated with dialback.
/// 2. a.test's `valid` verdict on b.test's stream is the first one going down; the rule makes it `invalid`,
///    and b.test closes that stream with `<not-authorized/>` ("dialback authentication failed"), dropping
///    the queued `<db:verify>` (Prosody bounces only message, presence and iq).
/// 3. a.test's stream to b.test therefore never gets a verdict, and alice's message waits inside a.test: it
///    never crosses xmpptap. Prosody bounces it only when `s2s_timeout` expires, 30 s in the harness config
///    (a `remote-server-timeout` error after 30.0 s). This test looks at the first 10 s, in which neither
///    bob nor alice gets anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_invalid_makes_federation_fail_and_the_transcript_says_why() {
    let s = setup(1, vec![format!("--rules={}", example("dialback_invalid"))]).await;
    let (mut alice, mut bob) = login(&s).await;
    let body = "you will not get this";
    let sent = Instant::now();
    alice.send_message("bob@b.test", body).await;

    let rule = s
        .tap
        .wait_event("a dialback_invalid rule event", |e| {
            is(e, "rule") && e["action"] == "dialback_invalid"
        })
        .await;
    assert_eq!(rule["rule"], "refuse-dialback");
    assert_eq!(rule["dir"], "down");
    assert!(rule["refused"].is_null(), "the rule acted: {rule}");
    let detail = rule["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("<db:result") && detail.contains("type='invalid'"),
        "the detail shows the element as forwarded: {rule}"
    );
    assert!(
        xml_contains(&rule, "type='valid'"),
        "xml is the element as it arrived: {rule}"
    );

    // The initiator of the stream whose verdict was reversed gives up on it.
    let conn = rule["conn"].clone();
    let error = s
        .tap
        .wait_event("the refused initiator's stream error", |e| {
            is(e, "stream_error") && e["conn"] == conn && e["dir"] == "up"
        })
        .await;
    assert_eq!(error["condition"], "not-authorized", "{error}");
    assert_eq!(error["origin"], "peer", "Prosody, not xmpptap, wrote it");
    // Both servers then close the connection; which TCP close xmpptap reads first varies, so `by` is not
    // checked.
    s.tap
        .wait_event("the refused connection closed", |e| {
            is(e, "closed") && e["conn"] == conn
        })
        .await;
    let events = s.tap.transcript();
    assert_eq!(
        initiator_of(&events, &conn),
        "b.test",
        "b.test's stream, opened to verify a.test's key, is the one refused\n{}",
        context(&s)
    );

    // Nothing reaches bob, and alice hears nothing either, for 10 s after sending.
    let window = Duration::from_secs(10).saturating_sub(sent.elapsed());
    let (to_bob, to_alice) = tokio::join!(bob.next_delivery(window), alice.next_delivery(window));
    assert_eq!(to_bob, None, "bob must get nothing\n{}", context(&s));
    assert_eq!(
        to_alice,
        None,
        "Prosody bounces only at s2s_timeout (30 s)\n{}",
        context(&s)
    );

    // alice's message never left a.test: its stream to b.test never got a verdict.
    let events = s.tap.transcript();
    assert!(
        !events
            .iter()
            .any(|e| is(e, "stanza") && xml_contains(e, body)),
        "the message must not cross xmpptap\n{}",
        context(&s)
    );
    let a_to_b: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "accepted"))
        .map(|e| &e["conn"])
        .filter(|c| initiator_of(&events, c) == "a.test")
        .collect();
    assert!(!a_to_b.is_empty(), "a.test connected\n{}", context(&s));
    for c in a_to_b {
        let verdicts: Vec<Value> = conn_events(&events, c)
            .into_iter()
            .filter(|e| is(e, "dialback") && e["element"] == "result" && e["dir"] == "down")
            .collect();
        assert!(
            verdicts.is_empty(),
            "a.test's stream {c} got no verdict: {verdicts:#?}"
        );
    }
}

/// examples/rules/delay.toml holds every message going up for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_still_arrive() {
    let s = setup(2, vec![format!("--rules={}", example("delay"))]).await;
    let (mut alice, mut bob) = login(&s).await;

    // The first message also waits for TLS and dialback; the second one goes over established streams, so
    // the delay is most of what it takes.
    for body in ["first, slowly", "second, slowly"] {
        let sent = Instant::now();
        alice.send_message("bob@b.test", body).await;
        let from = expect_body(&mut bob, body, &s).await;
        let took = sent.elapsed();
        eprintln!("{body:?} arrived after {took:?}");
        assert_eq!(from, alice.jid());
        assert!(
            took >= Duration::from_millis(2000),
            "{body:?} arrived after {took:?}, before the 2 s delay\n{}",
            context(&s)
        );
        assert!(took < Duration::from_secs(15), "{body:?} took {took:?}");

        let stanza = message_event(&s, body).await;
        let rule = s
            .tap
            .wait_event(&format!("the delay of {body:?}"), |e| {
                is(e, "rule") && e["action"] == "delay" && xml_contains(e, body)
            })
            .await;
        assert_eq!(rule["rule"], "slow-messages");
        assert_eq!(rule["detail"], "2000 ms");
        assert_eq!(rule["dir"], "up");
        assert_eq!(rule["conn"], stanza["conn"]);
    }
}

/// `--ping-interval 0.5`: xmpptap pings on both S2S connections and swallows the answers.
///
/// Evidence that no answer reaches the server that did not send the ping: Prosody logs every stanza it
/// receives at debug level (`Received[s2sin]: <iq id='...' ...>`, the start tag with its id). So for each
/// answered ping the receiving server's log must show its id (which proves the log is a fair witness), and
/// the initiating server's log must never show it: had the answer been forwarded, that server would have
/// logged it on arrival. The initiating server never saw the ping itself either, since xmpptap wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_through_a_live_federation_report_rtts() {
    let s = setup(3, vec![String::from("--ping-interval=0.5")]).await;
    let (mut alice, mut bob) = login(&s).await;
    alice.send_message("bob@b.test", "ping me").await;
    expect_body(&mut bob, "ping me", &s).await;
    bob.send_message("alice@a.test", "and me").await;
    expect_body(&mut alice, "and me", &s).await;

    let pairs = ["a.test->b.test", "b.test->a.test"];
    let answered = poll(Duration::from_secs(15), || async {
        let events = s.tap.transcript();
        let answered: Vec<Value> = events
            .into_iter()
            .filter(|e| is(e, "ping") && e["result"] == "answered")
            .collect();
        pairs
            .iter()
            .all(|pair| answered.iter().any(|e| e["pair"] == *pair))
            .then_some(answered)
    })
    .await
    .unwrap_or_else(|| panic!("no answered ping in both directions\n{}", context(&s)));

    for ping in &answered {
        eprintln!(
            "ping {} {} answered in {} ms",
            ping["id"], ping["pair"], ping["rtt_ms"]
        );
    }
    let events = s.tap.transcript();
    for ping in &answered {
        let rtt = ping["rtt_ms"].as_f64().unwrap_or_default();
        assert!(rtt > 0.0 && rtt < 10_000.0, "round trip: {ping}");
        // The answer comes back on the reverse connection.
        let sent_on = &ping["sent_on"];
        assert!(sent_on.is_u64(), "{ping}");
        assert_ne!(&ping["conn"], sent_on, "{ping}");
        let sent = events
            .iter()
            .find(|e| is(e, "ping") && e["result"] == "sent" && e["id"] == ping["id"])
            .unwrap_or_else(|| panic!("no sent event for {ping}"));
        assert_eq!(&sent["conn"], sent_on, "{sent}");
    }
    assert!(
        !events
            .iter()
            .any(|e| is(e, "ping") && e["result"] == "error"),
        "Prosody answers pings: {events:#?}"
    );

    // Give a leaked answer time to show in a log, then look at both logs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ping in &answered {
        let id = ping["id"].as_str().unwrap_or_else(|| panic!("id: {ping}"));
        let (pinger, pinged) = match ping["pair"].as_str() {
            Some("a.test->b.test") => (&s.a, &s.b),
            Some("b.test->a.test") => (&s.b, &s.a),
            other => panic!("pair {other:?}"),
        };
        let logged = poll(Duration::from_secs(5), || async {
            pinged.log().contains(id).then_some(())
        })
        .await;
        assert!(
            logged.is_some(),
            "{} never logged ping {id}, so its log cannot witness anything\n{}",
            pinged.domain(),
            pinged.failure_context()
        );
        let log = pinger.log();
        let leaked: Vec<&str> = log.lines().filter(|line| line.contains(id)).collect();
        assert!(
            leaked.is_empty(),
            "{} saw the answer to xmpptap's ping {id}: {leaked:#?}",
            pinger.domain()
        );
    }
}

/// `POST /rules` changes what happens on connections that are already open, `DELETE /rules/NAME` takes it
/// back; `GET /connections` shows both S2S connections and `POST /connections/{id}/inject` writes on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_through_the_control_api_acts_on_an_open_connection() {
    let s = setup(4, vec![control_flag(4)]).await;
    let api: SocketAddr = s.tap.listener("control");
    let (mut alice, mut bob) = login(&s).await;

    alice.send_message("bob@b.test", "before the rule").await;
    expect_body(&mut bob, "before the rule", &s).await;
    let conn = message_event(&s, "before the rule").await["conn"].clone();

    let rule = r#"{"name": "drop-marked", "match": {"element": "message", "text": "drop me"},
                   "action": {"kind": "drop"}}"#;
    let (status, body) = control::post(api, "/rules", rule).await;
    assert_eq!(status, 201, "POST /rules: {body}");
    let rules = control::get_json(api, "/rules").await;
    assert_eq!(rules["rules"][0]["name"], "drop-marked", "{rules}");

    // Same streams: a stream keeps its order, so once the next message arrives the dropped one never will.
    alice.send_message("bob@b.test", "please drop me").await;
    alice.send_message("bob@b.test", "but not me").await;
    expect_body(&mut bob, "but not me", &s).await;
    let dropped = s
        .tap
        .wait_event("the drop", |e| {
            is(e, "rule") && xml_contains(e, "please drop me")
        })
        .await;
    assert_eq!(dropped["rule"], "drop-marked");
    assert_eq!(dropped["action"], "drop");
    assert_eq!(
        dropped["conn"], conn,
        "the rule acted on the connection opened before it"
    );
    assert_eq!(
        message_event(&s, "but not me").await["conn"],
        conn,
        "no new connection was opened"
    );

    let (status, body) = control::delete(api, "/rules/drop-marked").await;
    assert_eq!(status, 200, "DELETE /rules/drop-marked: {body}");
    let (status, _) = control::delete(api, "/rules/drop-marked").await;
    assert_eq!(status, 404, "it is gone");
    alice.send_message("bob@b.test", "drop me no more").await;
    expect_body(&mut bob, "drop me no more", &s).await;
    assert_eq!(message_event(&s, "drop me no more").await["conn"], conn);

    // Both directions, each on its own connection.
    bob.send_message("alice@a.test", "the other way").await;
    expect_body(&mut alice, "the other way", &s).await;
    let list = control::get_json(api, "/connections").await;
    let entries = list.as_array().unwrap_or_else(|| panic!("a list: {list}"));
    let find = |initiator: &str, receiver: &str| {
        entries
            .iter()
            .find(|c| {
                c["listener"] == "s2s"
                    && c["initiator"] == initiator
                    && c["receiver"] == receiver
                    && c["phase"] == "relaying"
            })
            .unwrap_or_else(|| panic!("no {initiator}->{receiver} connection in {list:#}"))
    };
    let up = find("a.test", "b.test");
    assert_eq!(up["conn"], conn, "{up}");
    assert_eq!(up["dialback"], "valid", "{up}");
    assert_eq!(up["tls"]["initiator"], true, "{up}");
    assert!(
        up["counters"]["stanzas_up"].as_u64().unwrap_or(0) >= 3,
        "{up}"
    );
    find("b.test", "a.test");
    let one = control::get_json(api, &format!("/connections/{conn}")).await;
    assert_eq!(one["conn"], conn, "{one}");

    // An injected message reaches bob as if a.test had sent it.
    let inject = serde_json::json!({
        "direction": "up",
        "xml": "<message from='a.test' to='bob@b.test' type='chat'><body>injected</body></message>",
    });
    let (status, body) = control::post(
        api,
        &format!("/connections/{conn}/inject"),
        &inject.to_string(),
    )
    .await;
    assert_eq!(status, 202, "inject: {body}");
    let from = expect_body(&mut bob, "injected", &s).await;
    assert_eq!(from, "a.test");
    let injected = s
        .tap
        .wait_event("the injection", |e| {
            is(e, "injected") && xml_contains(e, "injected")
        })
        .await;
    assert_eq!(injected["origin"], "control");
    assert_eq!(injected["conn"], conn);
    assert_eq!(injected["dir"], "up");
}

/// `GET /metrics` counts what crossed xmpptap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_stanzas() {
    const N: usize = 5;
    let s = setup(5, vec![control_flag(5)]).await;
    let api = s.tap.listener("control");
    let (mut alice, mut bob) = login(&s).await;
    for i in 0..N {
        let body = format!("counted {i}");
        alice.send_message("bob@b.test", &body).await;
        expect_body(&mut bob, &body, &s).await;
    }

    let up = r#"xmpptap_stanzas_total{direction="up",pair="a.test->b.test"}"#;
    let metrics = poll(Duration::from_secs(5), || async {
        let (status, text) = control::get(api, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        (sample(&text, up).unwrap_or(0.0) >= N as f64).then_some(text)
    })
    .await;
    let Some(metrics) = metrics else {
        let (_, text) = control::get(api, "/metrics").await;
        panic!("{up} never reached {N}:\n{text}\n{}", context(&s));
    };
    eprintln!("{metrics}");
    let stanzas = sample(&metrics, up).unwrap_or_default();
    // Each message is one stanza; dialback and presence add a few more, not hundreds.
    assert!(stanzas < (N + 50) as f64, "{up} = {stanzas}");
    assert!(
        sample(
            &metrics,
            r#"xmpptap_bytes_total{direction="up",pair="a.test->b.test"}"#
        )
        .is_some_and(|bytes| bytes > stanzas * 20.0),
        "bytes counted too:\n{metrics}"
    );

    // a.test->b.test, and b.test->a.test which b.test opened to verify a.test's dialback key.
    let active = sample(&metrics, r#"xmpptap_connections_active{listener="s2s"}"#)
        .unwrap_or_else(|| panic!("no active connections gauge:\n{metrics}"));
    let listed = control::get_json(api, "/connections").await;
    assert!(
        (1.0..=4.0).contains(&active),
        "{active} active connections; listed: {listed:#}"
    );
    let valid = sample(&metrics, r#"xmpptap_dialback_total{result="valid"}"#)
        .unwrap_or_else(|| panic!("no valid dialback counted:\n{metrics}"));
    assert!((1.0..=4.0).contains(&valid), "{valid} valid dialbacks");
    assert!(
        sample(&metrics, r#"xmpptap_connections_total{listener="s2s"}"#)
            .is_some_and(|total| total >= active),
        "{metrics}"
    );
}

/// SIGHUP reads the rules file again: rules written after start act on the connections already open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules() {
    let file = std::env::temp_dir().join(format!(
        "xmpptap-rules-test-{}-sighup.toml",
        std::process::id()
    ));
    std::fs::write(&file, "# No rules yet.\n").unwrap_or_else(|e| panic!("write {file:?}: {e}"));
    let s = setup(
        6,
        vec![format!("--rules={}", file.display()), control_flag(6)],
    )
    .await;
    let api = s.tap.listener("control");
    let (mut alice, mut bob) = login(&s).await;
    let rules = control::get_json(api, "/rules").await;
    assert_eq!(rules["rules"], serde_json::json!([]), "{rules}");

    let sent = Instant::now();
    alice.send_message("bob@b.test", "drop me? not yet").await;
    expect_body(&mut bob, "drop me? not yet", &s).await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );

    let drop =
        std::fs::read_to_string(example("drop")).unwrap_or_else(|e| panic!("drop.toml: {e}"));
    std::fs::write(&file, drop).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
    let pid = s
        .tap
        .pid()
        .unwrap_or_else(|| panic!("xmpptap exited:\n{}", s.tap.stderr_text()));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("run kill: {e}"));
    assert!(status.success(), "kill -HUP {pid}: {status}");
    let reloaded = poll(Duration::from_secs(5), || async {
        let rules = control::get_json(api, "/rules").await;
        let logged = s.tap.stderr_text().contains("SIGHUP: rules reloaded");
        (logged && rules["rules"][0]["name"] == "drop-marked-messages").then_some(rules)
    })
    .await;
    assert!(
        reloaded.is_some(),
        "the rules were not reloaded:\n{}",
        s.tap.stderr_text()
    );

    alice.send_message("bob@b.test", "please drop me").await;
    alice.send_message("bob@b.test", "after the reload").await;
    expect_body(&mut bob, "after the reload", &s).await;
    let dropped = s
        .tap
        .wait_event("the drop", |e| {
            is(e, "rule") && xml_contains(e, "please drop me")
        })
        .await;
    assert_eq!(dropped["rule"], "drop-marked-messages");
    assert_eq!(dropped["action"], "drop");
    assert_eq!(
        dropped["conn"],
        message_event(&s, "drop me? not yet").await["conn"],
        "on the connection opened before the reload"
    );
    let _ = std::fs::remove_file(&file);
}

/// `--policy blocklist --block a.test`: a.test's servers cannot use xmpptap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_blocklist_refuses_a_domain() {
    let s = setup(
        7,
        vec![
            String::from("--policy=blocklist"),
            String::from("--block=a.test"),
        ],
    )
    .await;
    let (mut alice, mut bob) = login(&s).await;
    let sent = Instant::now();
    let id = alice.send_message("bob@b.test", "blocked").await;

    // Prosody gives up on b.test at once and bounces the message. Its condition is remote-server-timeout
    // because xmpptap opened a stream before refusing it (Prosody's bounce_sendq says remote-server-not-found
    // only when the remote never opened one).
    let bounce = alice.next_delivery(DELIVERY).await;
    eprintln!("alice got {bounce:?} after {:?}", sent.elapsed());
    assert_eq!(
        bounce,
        Some(Delivery::Bounce {
            id,
            condition: String::from("remote-server-timeout")
        }),
        "{}",
        context(&s)
    );
    assert_eq!(
        bob.next_delivery(SILENCE).await,
        None,
        "bob gets nothing\n{}",
        context(&s)
    );

    let policy = s
        .tap
        .wait_event("the policy refusal", |e| is(e, "policy"))
        .await;
    let events = s.tap.transcript();
    assert_eq!(policy["domain"], "a.test", "{policy}");
    assert_eq!(policy["reason"], "blocked", "{policy}");
    assert_eq!(policy["action"], "refused", "{policy}");
    let conn = &policy["conn"];
    let error = support::xmpptap::one(&events, "protocol_error", |e| &e["conn"] == conn);
    assert_eq!(error["side"], "initiator", "{error}");
    assert_eq!(error["condition"], "policy-violation", "{error}");
    let sent_error = support::xmpptap::one(&events, "stream_error", |e| &e["conn"] == conn);
    assert_eq!(sent_error["condition"], "policy-violation", "{sent_error}");
    assert_eq!(sent_error["origin"], "xmpptap", "{sent_error}");
    assert_eq!(sent_error["dir"], "down", "to a.test: {sent_error}");
    assert!(
        !events.iter().any(|e| is(e, "upstream_connected")),
        "xmpptap never connected to b.test: {events:#?}"
    );
    assert!(
        s.a.log()
            .contains("Session closed by remote with error: policy-violation"),
        "a.test read the stream error\n{}",
        s.a.failure_context()
    );
}

/// `--ping-interval 0.5` on a C2S listener, in front of a real Prosody, with a real client (slixmpp over
/// STARTTLS, trusting xmpptap's CA): once bob's resource is bound, xmpptap pings a.test on his connection
/// (`<iq type='get' to='a.test'>`, no `from`: Prosody stamps bob's full JID on it) and swallows the answer,
/// which Prosody addresses to bob's full JID.
///
/// Evidence that bob never got an answer: slixmpp logs every stanza it reads at debug level
/// (`RECV: <iq ...>`, `tests/support/xmpp_client.py --debug`), and no such line carries a ping id. The log
/// is a fair witness: it shows the bind result bob read and alice's message. Prosody's log
/// (`Sending[c2s]: <iq ... id='xmpptap-ping-...' to='bob@a.test/...'>`) shows that each answer existed and
/// went into bob's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2s_pings_are_answered_and_the_client_never_reads_an_answer() {
    use support::dns::DnsServer;
    use support::prosody::{Prosody, ProsodyConfig};
    use support::pyclient::{ClientArgs, Mode, Outcome, PyClient};
    use support::xmpptap::Xmpptap;

    const TEST_ID: u8 = 8;
    const BODY: &str = "between two pings";
    let started = Instant::now();
    let dns = DnsServer::start(support::addr(FILE_ID, TEST_ID, 53).into()).await;
    let prosody = Prosody::start(ProsodyConfig::new(
        "a.test",
        support::addr(FILE_ID, TEST_ID, 2),
        &dns.unbound_forward(),
    ));
    prosody.register("alice", "alice-pw").await;
    prosody.register("bob", "bob-pw").await;
    prosody.wait_ready().await;
    let proxy_ip = support::addr(FILE_ID, TEST_ID, 10);
    let tap = Xmpptap::start(&[
        format!("--c2s-listen={proxy_ip}:0"),
        format!("--c2s-route=a.test={}", prosody.c2s_addr()),
        // Prosody's generated certificate for a.test is self-signed.
        format!(
            "--upstream-ca={}",
            prosody.dir().join("certs").join("a.test.crt").display()
        ),
        String::from("--ping-interval=0.5"),
    ])
    .await;
    eprintln!("setup ready in {:?}", started.elapsed());
    let client = |user: &str| {
        ClientArgs::new(
            &format!("{user}@a.test"),
            &format!("{user}-pw"),
            tap.listener("c2s"),
        )
        .mode(Mode::StartTls)
        .ca(tap.ca_file())
        .timeout(Duration::from_secs(60))
    };
    let context = |what: &str| {
        let events: Vec<String> = tap
            .transcript()
            .iter()
            .filter(|e| e["event"] != "data" && e["event"] != "raw_data")
            .map(Value::to_string)
            .collect();
        format!(
            "{what}\n--- transcript:\n{}\n{}",
            events.join("\n"),
            prosody.failure_context()
        )
    };

    // bob logs in through xmpptap and waits for alice's message.
    let mut bob = PyClient::spawn(&client("bob").expect_message_from("alice@a.test"));
    let session = bob.wait_event("session_started").await;
    let bob_jid = session["jid"]
        .as_str()
        .unwrap_or_else(|| panic!("jid: {session}"))
        .to_owned();
    assert_eq!(session["tls"], true, "{session}");
    bob.wait_event("ready").await;
    let bind = tap
        .wait_event("bob's bind result", |e| {
            is(e, "stanza")
                && e["dir"] == "down"
                && e["name"] == "iq"
                && xml_contains(e, "urn:ietf:params:xml:ns:xmpp-bind")
                && xml_contains(e, &bob_jid)
        })
        .await;
    let conn = bind["conn"].clone();

    // Pings go every 0.5 s once the resource is bound: wait for two answers on bob's connection.
    let answered = poll(Duration::from_secs(15), || async {
        let answered: Vec<Value> = tap
            .transcript()
            .into_iter()
            .filter(|e| is(e, "ping") && e["result"] == "answered" && e["conn"] == conn)
            .collect();
        (answered.len() >= 2).then_some(answered)
    })
    .await
    .unwrap_or_else(|| panic!("{}", context("no two answered pings on bob's connection")));
    let events = tap.transcript();
    for ping in &answered {
        eprintln!("ping {} answered in {} ms", ping["id"], ping["rtt_ms"]);
        let rtt = ping["rtt_ms"].as_f64().unwrap_or_default();
        assert!(rtt > 0.0 && rtt < 10_000.0, "round trip: {ping}");
        // On C2S the answer comes back on the connection the ping left on, to bob's full JID.
        assert_eq!(ping["sent_on"], conn, "{ping}");
        assert_eq!(ping["pair"], format!("{bob_jid}->a.test"), "{ping}");
        assert!(ping["error"].is_null(), "Prosody answers pings: {ping}");
        let sent = events
            .iter()
            .find(|e| is(e, "ping") && e["result"] == "sent" && e["id"] == ping["id"])
            .unwrap_or_else(|| panic!("no sent event for {ping}"));
        assert_eq!(sent["conn"], conn, "{sent}");
        assert_eq!(sent["dir"], "up", "{sent}");
        let id = ping["id"].as_str().unwrap_or_default();
        assert!(id.starts_with("xmpptap-ping-"), "{ping}");
    }
    assert!(
        !events
            .iter()
            .any(|e| is(e, "ping") && e["conn"] == conn && e["result"] == "timeout"),
        "{}",
        context("a ping timed out")
    );

    // Messages still flow: alice (also through xmpptap) writes to bob.
    let alice = PyClient::run(&client("alice").send("bob@a.test", BODY)).await;
    alice.assert_success();
    let bob = bob.finish().await;
    bob.assert_success();
    let received = bob.event("message_received");
    assert_eq!(received["body"], BODY, "{}", bob.context());
    assert_eq!(
        received["from"],
        alice.event("session_started")["jid"],
        "{}",
        bob.context()
    );

    // What each client read: slixmpp's RECV lines.
    let reads = |outcome: &Outcome| -> Vec<String> {
        outcome
            .stderr
            .lines()
            .filter(|line| line.contains("RECV: "))
            .map(str::to_owned)
            .collect()
    };
    let bob_reads = reads(&bob);
    assert!(
        bob_reads
            .iter()
            .any(|l| l.contains("<iq") && l.contains("urn:ietf:params:xml:ns:xmpp-bind"))
            && bob_reads.iter().any(|l| l.contains(BODY)),
        "bob's log does not show what he read, so it cannot witness anything\n{}",
        bob.context()
    );
    for (who, outcome) in [("bob", &bob), ("alice", &alice)] {
        let leaked: Vec<String> = reads(outcome)
            .into_iter()
            .filter(|line| line.contains("xmpptap-ping-"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{who} read the answer to xmpptap's ping: {leaked:#?}"
        );
    }

    // Prosody logged sending each answer to bob (`Sending[c2s]: <iq from='a.test' id='...' to='BOB' ...>`):
    // there was an answer to hide, and it went into bob's stream.
    for ping in &answered {
        let id = ping["id"].as_str().unwrap_or_default();
        let answer = poll(Duration::from_secs(5), || async {
            prosody
                .log()
                .lines()
                .find(|line| {
                    line.contains("Sending[c2s]")
                        && line.contains(&format!("id='{id}'"))
                        && line.contains(&format!("to='{bob_jid}'"))
                })
                .map(str::to_owned)
        })
        .await;
        assert!(
            answer.is_some(),
            "Prosody never logged its answer to ping {id}\n{}",
            prosody.failure_context()
        );
    }
}
