//! `xmpptap show` and `xmpptap export`, run as the real binary on a transcript of a federation: a client logs in
//! to a.test with SCRAM-SHA-1 and enables stream management, a.test opens a connection to b.test (STARTTLS,
//! dialback), b.test verifies the dialback key on its own connection back to a.test, a.test pings b.test and
//! the answer comes back on b.test's connection, and messages cross both ways. The transcript is written as
//! `xmpptap proxy --log-secrets` logs (every secret in clear), without the correlation fields, so that the tools
//! must find the links and the secrets themselves. No XMPP server is needed.

use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// SCRAM-SHA-1 payloads of the login (RFC 5802's example exchange, base64 as on the wire).
const SCRAM: [&str; 4] = [
    "biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM",
    "cj1meWtvK2QybGJiRmdPTlJ2OXFreGRhd0wzcmZjTkhZSlkxWlZ2V1ZzN2oscz1RU1hDUitRNnNlazhiZjkyLGk9NDA5Ng==",
    "Yz1iaXdzLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdMM3JmY05IWUpZMVpWdldWczdqLHA9djBYOHYzQnoyVDBDSkdiSlF5RjBYK0hJNFRzPQ==",
    "dj1ybUY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9",
];
/// The dialback key a.test sends and b.test has verified.
const DIALBACK_KEY: &str = "9d4b1e7c53a0f2e86b17c4d9a2e5f0b3c8d1e6a4f7b2c5d8e9f0a1b2c3d4e5f6";
/// The XEP-0198 resumption id a.test gives the client.
const SM_ID: &str = "g2gCZAAEbm9kZW0AAAAIM2UxYmFjZWE";
const BODY: &str = "Hello Bob, lunch at noon?";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_xmpptap")
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "xmpptap-transcript-tools-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Builds records with increasing timestamps.
struct Transcript {
    records: Vec<Value>,
    ms: u64,
}

impl Transcript {
    fn add(&mut self, conn: u64, dir: Option<&str>, event: &str, fields: Value) {
        self.ms += 3;
        let (s, ms) = (self.ms / 1000, self.ms % 1000);
        let mut record = Map::new();
        record.insert(
            "ts".into(),
            json!(format!("2026-11-22T02:55:{:02}.{:03}250Z", 37 + s, ms)),
        );
        record.insert("conn".into(), json!(conn));
        record.insert("dir".into(), json!(dir));
        record.insert("event".into(), json!(event));
        if let Value::Object(fields) = fields {
            record.extend(fields);
        }
        self.records.push(Value::Object(record));
    }

    fn lines(&self) -> String {
        self.records
            .iter()
            .map(|r| serde_json::to_string(r).expect("serializes") + "\n")
            .collect()
    }
}

const UP: Option<&str> = Some("up");
const DOWN: Option<&str> = Some("down");

fn header(from: &str, to: &str, id: Option<&str>, ns: &str) -> String {
    let id = id.map(|id| format!(" id='{id}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{to}'{id} version='1.0'>"
    )
}

/// A stream header on `(conn, dir)` from `from` to `to`.
fn opened(
    t: &mut Transcript,
    (conn, dir): (u64, Option<&str>),
    stream: u32,
    (from, to): (&str, &str),
    id: Option<&str>,
    ns: &str,
) {
    t.add(
        conn,
        dir,
        "stream_opened",
        json!({"stream": stream, "from": from, "to": to, "id": id, "version": "1.0", "origin": "peer",
               "xml": header(from, to, id, ns)}),
    );
}

/// A stanza on `(conn, dir)` from `from` to `to`.
fn stanza(
    t: &mut Transcript,
    (conn, dir): (u64, Option<&str>),
    name: &str,
    kind: &str,
    id: &str,
    (from, to): (&str, &str),
    xml: String,
) {
    t.add(
        conn,
        dir,
        "stanza",
        json!({"name": name, "ns": "jabber:server", "type": kind, "id": id, "from": from, "to": to, "xml": xml}),
    );
}

/// The federation described in the module docs, as `--log-secrets` writes it.
fn federation() -> Transcript {
    let mut t = Transcript {
        records: Vec::new(),
        ms: 400,
    };
    let sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
    // Connection 3 would be opened last by a real run; numbering here follows a client logging in first.
    t.add(
        3,
        None,
        "accepted",
        json!({"listener": "c2s", "peer": "127.0.0.1:40100", "local": "127.0.0.1:5222"}),
    );
    opened(
        &mut t,
        (3, UP),
        0,
        ("alice@a.test", "a.test"),
        None,
        "jabber:client",
    );
    t.add(
        3,
        None,
        "upstream_connected",
        json!({"domain": "a.test", "addr": "127.0.0.2:5222", "host": "127.0.0.2",
        "route": {"kind": "static"}, "failed": [], "local": "127.0.0.1:41000"}),
    );
    opened(
        &mut t,
        (3, DOWN),
        0,
        ("a.test", "alice@a.test"),
        Some("c2s-stream-1"),
        "jabber:client",
    );
    t.add(3, DOWN, "features", json!({"starttls": null, "mechanisms": ["SCRAM-SHA-1", "PLAIN"], "dialback": false,
        "dialback_errors": false, "bidi": false, "sm": false, "compression": [], "other": [],
        "xml": format!("<stream:features><mechanisms xmlns='{sasl}'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>")}));
    t.add(
        3,
        UP,
        "sasl",
        json!({"step": "auth", "mechanism": "SCRAM-SHA-1",
        "xml": format!("<auth xmlns='{sasl}' mechanism='SCRAM-SHA-1'>{}</auth>", SCRAM[0])}),
    );
    t.add(3, DOWN, "sasl", json!({"step": "challenge", "xml": format!("<challenge xmlns='{sasl}'>{}</challenge>", SCRAM[1])}));
    t.add(3, UP, "sasl", json!({"step": "response", "xml": format!("<response xmlns='{sasl}'>{}</response>", SCRAM[2])}));
    t.add(3, DOWN, "sasl", json!({"step": "success", "xml": format!("<success xmlns='{sasl}'>{}</success>", SCRAM[3])}));
    opened(
        &mut t,
        (3, UP),
        1,
        ("alice@a.test", "a.test"),
        None,
        "jabber:client",
    );
    opened(
        &mut t,
        (3, DOWN),
        1,
        ("a.test", "alice@a.test"),
        Some("c2s-stream-2"),
        "jabber:client",
    );
    t.add(3, UP, "stanza", json!({"name": "iq", "type": "set", "id": "bind-1",
        "xml": "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>laptop</resource></bind></iq>"}));
    t.add(3, DOWN, "stanza", json!({"name": "iq", "type": "result", "id": "bind-1", "to": "alice@a.test/laptop",
        "xml": "<iq type='result' id='bind-1' to='alice@a.test/laptop'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@a.test/laptop</jid></bind></iq>"}));
    t.add(3, UP, "sm", json!({"element": "enable", "resume": true, "xml": "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"}));
    t.add(
        3,
        DOWN,
        "sm",
        json!({"element": "enabled", "id": SM_ID, "resume": true,
        "xml": format!("<enabled xmlns='urn:xmpp:sm:3' id='{SM_ID}' resume='true' max='600'/>")}),
    );
    t.add(3, UP, "stanza", json!({"name": "message", "type": "chat", "id": "m1", "to": "bob@b.test",
        "xml": format!("<message to='bob@b.test' type='chat' id='m1'><body>{BODY}</body></message>")}));

    // a.test -> b.test: STARTTLS, then dialback.
    t.add(
        1,
        None,
        "accepted",
        json!({"listener": "s2s", "peer": "127.0.0.2:50598", "local": "127.0.0.1:5269"}),
    );
    opened(
        &mut t,
        (1, UP),
        0,
        ("a.test", "b.test"),
        None,
        "jabber:server",
    );
    t.add(
        1,
        None,
        "upstream_connected",
        json!({"domain": "b.test", "addr": "127.0.0.3:5269", "host": "127.0.0.3",
        "route": {"kind": "static"}, "failed": [], "local": "127.0.0.1:48420"}),
    );
    opened(
        &mut t,
        (1, DOWN),
        0,
        ("b.test", "a.test"),
        Some("b-stream-1"),
        "jabber:server",
    );
    t.add(1, DOWN, "features", json!({"starttls": true, "mechanisms": [], "dialback": true, "dialback_errors": true,
        "bidi": false, "sm": false, "compression": [], "other": [],
        "xml": "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"}));
    t.add(
        1,
        UP,
        "starttls",
        json!({"xml": "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"}),
    );
    t.add(
        1,
        DOWN,
        "proceed",
        json!({"xml": "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"}),
    );
    t.add(
        1,
        DOWN,
        "tls_established",
        json!({"side": "receiver", "version": "TLSv1.3", "cipher": "TLS13_AES_256_GCM_SHA384",
        "alpn": null, "sni": "b.test", "peer_subject": "CN=b.test", "peer_sans": ["DNS:b.test"]}),
    );
    t.add(
        1,
        UP,
        "tls_established",
        json!({"side": "initiator", "version": "TLSv1.3", "cipher": "TLS13_AES_128_GCM_SHA256",
        "alpn": "xmpp-server", "sni": "b.test", "peer_subject": null, "peer_sans": []}),
    );
    opened(
        &mut t,
        (1, UP),
        1,
        ("a.test", "b.test"),
        None,
        "jabber:server",
    );
    opened(
        &mut t,
        (1, DOWN),
        1,
        ("b.test", "a.test"),
        Some("b-stream-2"),
        "jabber:server",
    );
    t.add(
        1,
        UP,
        "dialback",
        json!({"element": "result", "from": "a.test", "to": "b.test", "result": "request",
        "xml": format!("<db:result from='a.test' to='b.test'>{DIALBACK_KEY}</db:result>")}),
    );

    // b.test checks the key with a.test on its own connection.
    t.add(
        2,
        None,
        "accepted",
        json!({"listener": "s2s", "peer": "127.0.0.3:39733", "local": "127.0.0.1:5269"}),
    );
    opened(
        &mut t,
        (2, UP),
        0,
        ("b.test", "a.test"),
        None,
        "jabber:server",
    );
    t.add(
        2,
        None,
        "upstream_connected",
        json!({"domain": "a.test", "addr": "127.0.0.2:5269", "host": "127.0.0.2",
        "route": {"kind": "static"}, "failed": [], "local": "127.0.0.1:48500"}),
    );
    opened(
        &mut t,
        (2, DOWN),
        0,
        ("a.test", "b.test"),
        Some("a-stream-9"),
        "jabber:server",
    );
    t.add(2, UP, "dialback", json!({"element": "verify", "from": "b.test", "to": "a.test", "id": "b-stream-2", "result": "request",
        "xml": format!("<db:verify from='b.test' to='a.test' id='b-stream-2'>{DIALBACK_KEY}</db:verify>")}));
    t.add(2, DOWN, "dialback", json!({"element": "verify", "from": "a.test", "to": "b.test", "id": "b-stream-2", "result": "valid",
        "xml": "<db:verify from='a.test' to='b.test' id='b-stream-2' type='valid'/>"}));
    t.add(
        1,
        DOWN,
        "dialback",
        json!({"element": "result", "from": "b.test", "to": "a.test", "result": "valid",
        "xml": "<db:result from='b.test' to='a.test' type='valid'/>"}),
    );

    // Stanzas: the message, a ping answered on the other connection, a reply.
    stanza(&mut t, (1, UP), "message", "chat", "m1", ("alice@a.test/laptop", "bob@b.test"),
        format!("<message from='alice@a.test/laptop' to='bob@b.test' type='chat' id='m1'><body>{BODY}</body></message>"));
    stanza(
        &mut t,
        (1, UP),
        "iq",
        "get",
        "ping-7",
        ("a.test", "b.test"),
        "<iq from='a.test' to='b.test' type='get' id='ping-7'><ping xmlns='urn:xmpp:ping'/></iq>"
            .into(),
    );
    stanza(
        &mut t,
        (2, UP),
        "iq",
        "result",
        "ping-7",
        ("b.test", "a.test"),
        "<iq from='b.test' to='a.test' type='result' id='ping-7'/>".into(),
    );
    stanza(&mut t, (2, UP), "message", "chat", "r1", ("bob@b.test/phone", "alice@a.test"),
        "<message from='bob@b.test/phone' to='alice@a.test' type='chat' id='r1'><body>Sure!</body></message>".into());
    t.add(2, None, "closed", json!({"by": "initiator", "reason": "initiator closed the connection after closing its stream",
        "bytes_up": 900, "bytes_down": 700, "stanzas_up": 4, "stanzas_down": 2, "duration_ms": 120}));
    t.add(1, None, "closed", json!({"by": "initiator", "reason": "initiator closed the connection after closing its stream",
        "bytes_up": 1181, "bytes_down": 1092, "stanzas_up": 6, "stanzas_down": 5, "duration_ms": 873}));
    t.add(3, None, "closed", json!({"by": "initiator", "reason": "initiator closed the connection",
        "bytes_up": 800, "bytes_down": 900, "stanzas_up": 6, "stanzas_down": 5, "duration_ms": 300}));
    t
}

/// Writes the federation transcript to `dir/transcript.jsonl`.
fn write_fixture(dir: &Path) -> (PathBuf, Transcript) {
    let t = federation();
    let path = dir.join("transcript.jsonl");
    std::fs::write(&path, t.lines()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    (path, t)
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap {args:?}: {e}"))
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "xmpptap failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// The first line of each block (they start with the time).
fn headers(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("02:55:")).collect()
}

fn show(file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["show", file.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    stdout(&run(&args))
}

#[test]
fn show_prints_readable_blocks_with_links() {
    let dir = scratch("show");
    let (file, t) = write_fixture(&dir);
    let text = show(&file, &["--color", "never"]);
    assert_eq!(headers(&text).len(), t.records.len(), "{text}");
    for expected in [
        "02:55:37.403 conn 3  accepted c2s from 127.0.0.1:40100 on 127.0.0.1:5222",
        "conn 3  alice@a.test -> a.test  SASL auth SCRAM-SHA-1",
        "conn 1  a.test -> b.test  db:result request from=a.test to=b.test",
        "conn 2  b.test -> a.test  db:verify request from=b.test to=a.test id=b-stream-2  verifies conn 1",
        "conn 2  b.test <- a.test  db:verify valid from=a.test to=b.test id=b-stream-2  verifies conn 1",
        "conn 1  a.test <- b.test  db:result valid from=b.test to=a.test",
        "conn 2  b.test -> a.test  iq result id=ping-7  b.test => a.test  reply to conn 1 after 3.0 ms",
        "conn 1  a.test -- b.test  closed by initiator",
        // Pretty-printed XML under the block.
        "    <message from='alice@a.test/laptop' to='bob@b.test' type='chat' id='m1'>\n      <body>Hello Bob, lunch at noon?</body>\n    </message>\n",
        "    <stream:features>\n      <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\n        <required/>\n      </starttls>\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains('\x1b'), "no colour asked for");
    // Not a terminal: no colour by default either; forced with --color always.
    assert!(!show(&file, &[]).contains('\x1b'));
    assert!(show(&file, &["--color", "always"]).contains("\x1b[1;34mmessage\x1b[0m"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_filters() {
    let dir = scratch("filters");
    let (file, _) = write_fixture(&dir);
    let count = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--color", "never"];
        args.extend_from_slice(extra);
        headers(&show(&file, &args))
            .into_iter()
            .map(String::from)
            .collect()
    };
    let conn2 = count(&["--conn", "2"]);
    assert_eq!(conn2.len(), 9, "{conn2:#?}");
    assert!(conn2.iter().all(|l| l.contains(" conn 2 ")), "{conn2:#?}");

    let messages = count(&["--domain", "b.test", "--element", "message"]);
    assert_eq!(messages.len(), 3, "{messages:#?}");

    let answers = count(&["--dir", "down", "--type", "dialback"]);
    assert_eq!(answers.len(), 2, "{answers:#?}");
    assert!(
        answers.iter().all(|l| l.contains(" valid ")),
        "{answers:#?}"
    );

    assert_eq!(count(&["--element", "verify"]).len(), 2);
    assert_eq!(count(&["--element", "db:result"]).len(), 2);
    assert_eq!(count(&["--type", "result"]).len(), 2, "iq results");
    assert_eq!(count(&["--type", "sasl", "--type", "sm"]).len(), 6);
    assert_eq!(count(&["--grep", "ping-7"]).len(), 2);
    assert_eq!(count(&["--grep", "ping-7", "--conn", "1"]).len(), 1);
    assert_eq!(count(&["--domain", "c.test"]).len(), 0);

    // Bad usage is exit code 64; a missing file is 1 with the path in the message.
    assert_eq!(
        run(&["show", "--dir", "sideways", "x"]).status.code(),
        Some(64)
    );
    let missing = run(&["show", dir.join("nope.jsonl").to_str().expect("UTF-8")]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.jsonl"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_reads_stdin() {
    let dir = scratch("stdin");
    let (_, t) = write_fixture(&dir);
    let mut child = Command::new(binary())
        .args(["show", "-", "--type", "dialback"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn show");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(t.lines().as_bytes()).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("show ends");
    assert_eq!(headers(&stdout(&output)).len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the child on drop, so a failing test leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn show_follows_a_growing_file() {
    let dir = scratch("follow");
    let t = federation();
    let file = dir.join("growing.jsonl");
    let lines: Vec<String> = t.lines().lines().map(String::from).collect();
    std::fs::write(&file, lines[..5].join("\n") + "\n").expect("write first lines");
    let mut child = Killed(
        Command::new(binary())
            .args(["show", "--follow", "--color", "never", "--type", "dialback"])
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn show --follow"),
    );
    let out = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("show --follow did not print {needle:?}");
    };
    // The rest arrives later, the last line in two writes.
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open for append");
    let rest = lines[5..].join("\n");
    let (first, second) = rest.split_at(rest.len() - 40);
    std::thread::sleep(Duration::from_millis(300));
    appender.write_all(first.as_bytes()).expect("append");
    appender.flush().expect("flush");
    let line = wait_for("db:result request");
    assert!(line.contains("conn 1  a.test -> b.test"), "{line}");
    wait_for("verifies conn 1");
    std::thread::sleep(Duration::from_millis(300));
    appender.write_all(second.as_bytes()).expect("append");
    appender.write_all(b"\n").expect("append");
    wait_for("db:result valid");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every secret of the fixture, and pieces of it long enough to be recognizable.
fn assert_no_secret(text: &[u8], what: &str) {
    let text = String::from_utf8_lossy(text);
    for secret in SCRAM.iter().chain([&DIALBACK_KEY, &SM_ID]) {
        for piece in secret.as_bytes().chunks(12).filter(|p| p.len() >= 8) {
            let piece = std::str::from_utf8(piece).expect("ASCII");
            assert!(!text.contains(piece), "{piece:?} of a secret is in {what}");
        }
    }
}

fn records(text: &str) -> Vec<Map<String, Value>> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn export_redacts_every_secret_and_keeps_lengths() {
    let dir = scratch("export");
    let (file, t) = write_fixture(&dir);
    let input = t.lines();
    for secret in [SCRAM[0], DIALBACK_KEY, SM_ID] {
        assert!(input.contains(secret), "the fixture holds {secret}");
    }
    let out = dir.join("shared.jsonl");
    let output = run(&[
        "export",
        file.to_str().expect("UTF-8"),
        "-o",
        out.to_str().expect("UTF-8"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exported 42 records, 7 with secrets redacted"),
        "{stderr}"
    );
    let exported = std::fs::read_to_string(&out).expect("export output");
    assert_no_secret(exported.as_bytes(), "the exported transcript");

    let before = records(&input);
    let after = records(&exported);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        // Same keys in the same order, plus `redacted`; every XML the same length.
        let keys_b: Vec<&String> = b.keys().collect();
        let keys_a: Vec<&String> = a.keys().filter(|k| *k != "redacted").collect();
        assert_eq!(keys_b, keys_a);
        if let (Some(Value::String(xb)), Some(Value::String(xa))) = (b.get("xml"), a.get("xml")) {
            assert_eq!(xb.len(), xa.len(), "{xb} vs {xa}");
            if xb != xa {
                assert_eq!(a.get("redacted"), Some(&Value::Bool(true)), "{a:?}");
            }
        }
    }
    assert!(exported.starts_with("{\"ts\":"), "field order kept");
    assert!(exported.contains(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>[redacted:48]"
    ));
    assert!(exported.contains("<db:verify from='b.test' to='a.test' id='b-stream-2'>[redacted:64]"));
    assert!(
        exported.contains(r#""id":"[redacted:31]"#),
        "the sm event's id field"
    );
    assert!(
        exported.contains(BODY),
        "bodies are kept without --redact-bodies"
    );

    // The exported copy still reads well.
    let shown = show(&out, &["--color", "never", "--type", "sasl"]);
    assert!(
        shown.contains("SASL auth SCRAM-SHA-1  [redacted]"),
        "{shown}"
    );

    // --redact-bodies, from stdin to stdout.
    let mut child = Command::new(binary())
        .args(["export", "-", "--redact-bodies"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn export");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    stdin
        .write_all(b"this line is not JSON\n")
        .expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("export ends");
    let no_bodies = stdout(&output);
    assert_no_secret(no_bodies.as_bytes(), "the export without bodies");
    assert!(!no_bodies.contains("lunch"), "body redacted");
    assert!(!no_bodies.contains("Sure!"), "body redacted");
    assert!(
        no_bodies.contains("<body>[redacted:25]************</body>"),
        "{no_bodies}"
    );
    assert_eq!(
        records(&no_bodies).len(),
        before.len(),
        "the bad line is left out"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("left out 1 lines"));

    // --keep-secrets copies.
    let kept = stdout(&run(&[
        "export",
        file.to_str().expect("UTF-8"),
        "--keep-secrets",
    ]));
    assert_eq!(kept, input);
    assert_eq!(
        run(&["export", "x", "--keep-secrets", "--redact"])
            .status
            .code(),
        Some(64)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn export_pcap_from_the_redacted_records() {
    let dir = scratch("pcap");
    let (file, _) = write_fixture(&dir);
    let pcap = dir.join("shared.pcap");
    let out = dir.join("shared.jsonl");
    let output = run(&[
        "export",
        file.to_str().expect("UTF-8"),
        "-o",
        out.to_str().expect("UTF-8"),
        "--pcap",
        pcap.to_str().expect("UTF-8"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("packets to"));
    let bytes = std::fs::read(&pcap).expect("pcap written");
    assert!(
        bytes.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1])
            || bytes.starts_with(&[0x4d, 0x3c, 0xb2, 0xa1]),
        "a pcap file header"
    );
    assert!(bytes.len() > 1000, "packets in it");
    assert!(
        bytes.windows(BODY.len()).any(|w| w == BODY.as_bytes()),
        "the conversation is in the capture"
    );
    assert_no_secret(&bytes, "the pcap");
    assert!(out.is_file(), "-o and --pcap together write both");
    let _ = std::fs::remove_dir_all(&dir);
}
