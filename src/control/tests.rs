//! In-process tests of the control API: a server on `127.0.0.1:0` and hand-written HTTP/1.1 requests.

use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A control API serving on a loopback port for one test.
struct Api {
    addr: SocketAddr,
    control: Arc<Control>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON answer")
    }
}

impl Api {
    async fn start(token: Option<&str>, rules: Arc<crate::rules::SharedRules>) -> Api {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let control = Arc::new(Control {
            registry: Arc::new(Registry::new()),
            metrics: Arc::new(Metrics::new()),
            rules,
            tap_dropped: Arc::new(|| 42),
            token: token.map(str::to_owned),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(Arc::clone(&control), listener, shutdown.clone()));
        Api {
            addr,
            control,
            shutdown,
            task,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        request(self.addr, method, path, headers, body).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], "").await
    }

    async fn post_json(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, &[("Content-Type", "application/json")], body)
            .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops");
        ended.expect("no panic").expect("no error");
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40000))
}

/// A rules file in a fresh temporary directory, removed on drop.
struct TempRules {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl TempRules {
    fn new(text: &str) -> TempRules {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xmpptap-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("rules.toml");
        std::fs::write(&path, text).expect("write rules");
        TempRules { dir, path }
    }
}

impl Drop for TempRules {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn no_rules() -> Arc<crate::rules::SharedRules> {
    Arc::new(crate::rules::SharedRules::new(None).expect("no rules file"))
}

#[tokio::test]
async fn index_and_unknown_routes() {
    let api = Api::start(None, no_rules()).await;
    let index = api.get("/").await;
    assert_eq!(index.status, 200);
    let routes = index.json()["routes"].as_array().map(Vec::len);
    assert!(routes.is_some_and(|n| n >= 10), "{}", index.body);

    let missing = api.get("/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());

    let wrong = api.send("PUT", "/metrics", &[], "").await;
    assert_eq!(wrong.status, 405);
    assert!(wrong.json()["error"].is_string());
    api.stop().await;
}

#[tokio::test]
async fn metrics_text() {
    let api = Api::start(None, no_rules()).await;
    api.control.metrics.connection_opened("s2s");
    api.control.metrics.error("host-unknown");
    let answer = api.get("/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")));
    let text = &answer.body;
    assert!(text.contains("# HELP xmpptap_connections_total "));
    assert!(text.contains("# TYPE xmpptap_connections_total counter\n"));
    assert!(text.contains("\nxmpptap_connections_total{listener=\"s2s\"} 1\n"));
    assert!(text.contains("\nxmpptap_errors_total{condition=\"host-unknown\"} 1\n"));
    assert!(text.contains("\nxmpptap_tap_dropped_events_total 42\n"));
    api.stop().await;
}

#[tokio::test]
async fn connections_come_and_go() {
    let api = Api::start(None, no_rules()).await;
    let registry = &api.control.registry;
    let handle = registry.open(11, "s2s", peer());
    handle.update(|state| {
        state.initiator = Some("a.example".into());
        state.receiver = Some("b.example".into());
        state.phase = Phase::Relaying;
    });
    handle.counters[0].add(2, 120);
    handle.counters[1].add(1, 30);

    let list = api.get("/connections").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["conn"], 11);
    assert_eq!(list[0]["listener"], "s2s");
    assert_eq!(list[0]["initiator"], "a.example");
    assert_eq!(list[0]["phase"], "relaying");
    assert_eq!(list[0]["counters"]["bytes_up"], 120);

    let one = api.get("/connections/11").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["peer"], "192.0.2.7:40000");
    assert_eq!(api.get("/connections/12").await.status, 404);
    assert_eq!(api.get("/connections/x").await.status, 400);

    drop(handle);
    let list = api.get("/connections").await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(api.get("/connections/11").await.status, 404);

    let metrics = api.get("/metrics").await.body;
    for line in [
        "xmpptap_bytes_total{direction=\"up\",pair=\"a.example->b.example\"} 120",
        "xmpptap_bytes_total{direction=\"down\",pair=\"a.example->b.example\"} 30",
        "xmpptap_stanzas_total{direction=\"up\",pair=\"a.example->b.example\"} 2",
        "xmpptap_connections_active{listener=\"s2s\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn inject_reaches_the_relay() {
    let api = Api::start(None, no_rules()).await;
    let handle = api.control.registry.open(3, "s2s", peer());
    let body = r#"{"direction": "down", "xml": "<message to='a@a.example'><body>hi &amp; bye</body></message>"}"#;

    let early = api.post_json("/connections/3/inject", body).await;
    assert_eq!(early.status, 409, "{}", early.body);

    let (up, mut up_rx) = mpsc::channel(4);
    let (down, mut down_rx) = mpsc::channel(4);
    handle.set_injectors(Some([up, down]));
    let answer = api.post_json("/connections/3/inject", body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["direction"], "down");
    let injection = down_rx.try_recv().expect("queued downstream");
    assert_eq!(
        &injection.xml[..],
        b"<message to='a@a.example'><body>hi &amp; bye</body></message>"
    );
    assert_eq!(injection.origin, InjectOrigin::Control);
    assert!(up_rx.try_recv().is_err());

    assert_eq!(
        api.post_json("/connections/4/inject", body).await.status,
        404
    );
    api.stop().await;
}

#[tokio::test]
async fn inject_refuses_bad_xml() {
    let api = Api::start(None, no_rules()).await;
    let handle = api.control.registry.open(3, "s2s", peer());
    let (up, mut up_rx) = mpsc::channel(4);
    let (down, _down_rx) = mpsc::channel(4);
    handle.set_injectors(Some([up, down]));
    for xml in [
        "<message>",
        "<message></iq>",
        "<a/><b/>",
        "text",
        "",
        "<a/>tail",
        "<!-- c --><a/>",
        "<?xml version='1.0'?><a/>",
        "<!DOCTYPE a><a/>",
        "<a>&nbsp;</a>",
        "<a b='1' b='2'/>",
        "<a>&#0;</a>",
        "<a b='<'/>",
        "<a>\u{1}</a>",
    ] {
        let body = serde_json::json!({ "direction": "up", "xml": xml }).to_string();
        let answer = api.post_json("/connections/3/inject", &body).await;
        assert_eq!(answer.status, 400, "{xml:?}: {}", answer.body);
        assert!(answer.json()["error"].is_string());
    }
    for body in [
        "not json",
        r#"{"direction": "sideways", "xml": "<a/>"}"#,
        r#"{"xml": "<a/>"}"#,
        r#"{"direction": "up", "xml": "<a/>", "extra": 1}"#,
    ] {
        let answer = api.post_json("/connections/3/inject", body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }
    assert!(up_rx.try_recv().is_err(), "nothing bad was queued");
    api.stop().await;
}

#[test]
fn well_formed_elements_pass() {
    for xml in [
        "<a/>",
        "  <message xmlns='jabber:server' to='b' from='a'><body>&lt;3 &#x263A;</body></message>\n",
        "<db:result from='a' to='b'>key</db:result>",
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<a><![CDATA[<raw>]]></a>",
    ] {
        assert_eq!(api::check_element(xml), Ok(()), "{xml}");
    }
}

#[tokio::test]
async fn close_requests() {
    let api = Api::start(None, no_rules()).await;
    let first = api.control.registry.open(5, "s2s", peer());
    let second = api.control.registry.open(6, "c2s", peer());

    let answer = api
        .post_json(
            "/connections/5/close",
            r#"{"condition": "policy-violation", "text": "bye"}"#,
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["closing"], 5);
    assert!(first.close.is_cancelled());
    assert_eq!(
        first.close_request(),
        Some(CloseRequest {
            condition: Some("policy-violation".into()),
            text: Some("bye".into()),
        })
    );

    let answer = api.send("DELETE", "/connections/6", &[], "").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert!(second.close.is_cancelled());
    assert_eq!(second.close_request(), Some(CloseRequest::default()));

    let bad = api
        .post_json("/connections/5/close", r#"{"condition": "<oops/>"}"#)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(api.post_json("/connections/9/close", "").await.status, 404);
    api.stop().await;
}

#[tokio::test]
async fn token_is_required_when_set() {
    let api = Api::start(Some("s3cret"), no_rules()).await;
    for path in ["/", "/metrics", "/connections", "/nope"] {
        let answer = api.get(path).await;
        assert_eq!(answer.status, 401, "{path}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        assert!(answer.json()["error"].is_string());
    }
    let wrong = api
        .send("GET", "/metrics", &[("Authorization", "Bearer s3cre")], "")
        .await;
    assert_eq!(wrong.status, 401);
    let basic = api
        .send("GET", "/metrics", &[("Authorization", "Basic s3cret")], "")
        .await;
    assert_eq!(basic.status, 401);
    let right = api
        .send("GET", "/metrics", &[("Authorization", "Bearer s3cret")], "")
        .await;
    assert_eq!(right.status, 200);
    api.stop().await;
}

#[test]
fn bind_checks() {
    let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
    let error = check_bind(any, None).expect_err("refused");
    assert!(error.contains("--control-token"), "{error}");
    assert!(check_bind(any, Some("")).is_err());
    assert!(check_bind(any, Some("t")).is_ok());
    for addr in [
        "127.0.0.1:8080",
        "[::1]:8080",
        "127.0.0.2:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        let addr: SocketAddr = addr.parse().expect("addr");
        assert_eq!(check_bind(addr, None), Ok(()), "{addr}");
    }
    let public: SocketAddr = "[2001:db8::1]:80".parse().expect("addr");
    assert!(check_bind(public, None).is_err());
}

const FILE_RULES: &str = r#"
[[rule]]
name = "drop-pings"
[rule.match]
child = "{urn:xmpp:ping}ping"
[rule.action]
kind = "drop"
"#;

#[tokio::test]
async fn rules_listed_added_removed() {
    let file = TempRules::new(FILE_RULES);
    let rules = crate::rules::SharedRules::new(Some(file.path.clone())).expect("rules file");
    let api = Api::start(None, Arc::new(rules)).await;

    let listed = api.get("/rules").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed = listed.json();
    assert_eq!(listed["file"], file.path.display().to_string());
    assert_eq!(listed["rules"][0]["name"], "drop-pings");
    assert_eq!(listed["rules"][0]["action"]["kind"], "drop");

    let toml = api.get("/rules?format=toml").await;
    assert_eq!(toml.status, 200);
    assert!(
        toml.body.contains("[[rule]]") && toml.body.contains("drop-pings"),
        "{}",
        toml.body
    );
    assert_eq!(api.get("/rules?format=yaml").await.status, 400);

    let json_rule = r#"{"name": "slow", "match": {"element": "message"}, "action": {"kind": "delay", "ms": 50}}"#;
    let added = api.post_json("/rules", json_rule).await;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.json()["added"], serde_json::json!(["slow"]));
    let again = api.post_json("/rules", json_rule).await;
    assert_eq!(again.status, 409, "{}", again.body);

    let toml_rules = "[[rule]]\nname = \"a\"\naction = { kind = \"drop\" }\n\
                      [[rule]]\nname = \"b\"\naction = { kind = \"reset\" }\n";
    let added = api
        .send(
            "POST",
            "/rules",
            &[("Content-Type", "application/toml")],
            toml_rules,
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.json()["added"], serde_json::json!(["a", "b"]));
    assert_eq!(api.control.rules.current().rules().len(), 4);

    for (content_type, body) in [
        (
            "application/json",
            r#"{"name": "x", "action": {"kind": "explode"}}"#,
        ),
        (
            "application/json",
            r#"{"name": "x", "match": {"text": "("}, "action": {"kind": "drop"}}"#,
        ),
        ("application/json", "[]"),
        ("application/json", "{"),
        ("application/toml", "[[rule]]\nname = "),
    ] {
        let answer = api
            .send("POST", "/rules", &[("Content-Type", content_type)], body)
            .await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert!(answer.json()["error"].is_string());
    }
    assert_eq!(api.control.rules.current().rules().len(), 4);

    let removed = api.send("DELETE", "/rules/slow", &[], "").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(api.send("DELETE", "/rules/slow", &[], "").await.status, 404);
    api.stop().await;
}

#[tokio::test]
async fn rules_reload_and_reset() {
    let file = TempRules::new(FILE_RULES);
    let rules = crate::rules::SharedRules::new(Some(file.path.clone())).expect("rules file");
    let api = Api::start(None, Arc::new(rules)).await;
    let added = api
        .post_json("/rules", r#"{"name": "extra", "action": {"kind": "drop"}}"#)
        .await;
    assert_eq!(added.status, 201, "{}", added.body);

    std::fs::write(&file.path, "this is not toml [").expect("rewrite rules");
    let refused = api.post_json("/rules/reload", "").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.json()["error"].is_string());
    assert_eq!(
        api.control.rules.current().rules().len(),
        2,
        "old rules stay"
    );

    let two = format!("{FILE_RULES}\n[[rule]]\nname = \"more\"\naction = {{ kind = \"drop\" }}\n");
    std::fs::write(&file.path, two).expect("rewrite rules");
    let reloaded = api.post_json("/rules/reload", "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.json()["rules"], 3);

    let reset = api.post_json("/reset", "").await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(reset.json()["rules"], 2);
    api.stop().await;
}
