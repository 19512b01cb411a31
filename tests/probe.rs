//! `xmpptap probe` against real Prosody servers: the real binary, `--json`, exit codes.
//!
//! S2S: plaintext, STARTTLS (with a trusted CA, with system roots that do not know it, and with
//! `--dangerous-accept-any-cert`), Direct TLS, dialback `valid` through `--dialback-listen` (the test's DNS tells
//! Prosody that the probe's `--from` domain is at the listener) with a ping answered through it, dialback
//! against a second real Prosody as the authoritative server (its `dialback_secret` known: `valid` with it,
//! `invalid` with a wrong one), and `<host-unknown/>` for a domain Prosody does not serve.
//!
//! C2S: login with SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN over STARTTLS and Direct TLS, the roster with groups
//! (`mod_groups`, as in `c2s.rs`), a message delivered to a second logged-in user (the minimal Rust client of
//! `support::client`), a ping, a bounce, a wrong password, PLAIN refused over plaintext.
//!
//! DNS: SRV records for both services (`_xmpps-server` and `_xmpp-server`) ordered and tried in order, with a
//! dead first candidate; the A/AAAA fallback; no records at all; a `.` target.
//!
//! Addresses: file id 110 (see `tests/support/mod.rs`).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::Client;
use support::dns::DnsServer;
use support::prosody::{Prosody, ProsodyConfig};
use support::scratch::{Scratch, TestCa};

const FILE_ID: u8 = 110;

/// Longest a probe may run before the test gives up on it.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// The environment variable the C2S probes read passwords from.
const PASSWORD_ENV: &str = "XMPPTAP_PROBE_TEST_PASSWORD";

/// The roster file for `mod_groups`: alice and bob in two groups, named.
const GROUPS: &str =
    "[Friends]\nalice@a.test=Alice\nbob@a.test=Bob\n[Work]\nalice@a.test=Alice\nbob@a.test=Bob\n";

/// What a probe run gave back.
#[derive(Debug)]
struct Probe {
    code: i32,
    report: Value,
    stderr: String,
}

impl Probe {
    /// Runs `xmpptap probe ARGS --json` with `env`, and parses the report.
    async fn run(args: &[String], env: &[(&str, &str)]) -> Probe {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"));
        command
            .arg("probe")
            .args(args)
            .arg("--json")
            .env("RUST_LOG", "xmpptap=debug")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let started = Instant::now();
        let output = tokio::time::timeout(PROBE_LIMIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("probe {args:?} still running after {PROBE_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("run xmpptap probe: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("probe {args:?}: stdout is not a JSON report ({e}):\n{stdout}\n--- stderr:\n{stderr}")
        });
        let probe = Probe {
            code: output.status.code().unwrap_or(-1),
            report,
            stderr,
        };
        eprintln!(
            "probe {args:?}: exit {} in {:?}",
            probe.code,
            started.elapsed()
        );
        probe
    }

    /// The report and the probe's debug log, for assertion messages.
    fn context(&self) -> String {
        format!(
            "exit {}\n{}\n--- stderr (debug log):\n{}",
            self.code,
            serde_json::to_string_pretty(&self.report).unwrap_or_default(),
            self.stderr
        )
    }

    fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "{}", self.context());
        assert_eq!(self.report["exit_code"], code, "{}", self.context());
        assert_eq!(self.report["ok"], code == 0, "{}", self.context());
        self
    }

    fn phase(&self, name: &str) -> &Value {
        self.report["phases"]
            .as_array()
            .and_then(|phases| phases.iter().rev().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no phase {name}\n{}", self.context()))
    }

    fn phase_names(&self) -> Vec<String> {
        self.report["phases"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn lua_str(path: &Path) -> String {
    format!("[==[{}]==]", path.display())
}

/// A started Prosody with its DNS, CA and files. Field order is drop order: servers first.
struct Setup {
    servers: Vec<Prosody>,
    dns: DnsServer,
    test_ca: TestCa,
    ca_file: PathBuf,
    scratch: Scratch,
    test_id: u8,
}

impl Setup {
    /// A DNS server and the CA; servers are added with [`Setup::server`].
    async fn new(test_id: u8) -> Setup {
        let scratch = Scratch::new("xmpptap-probe", test_id);
        let test_ca = TestCa::new(&format!("xmpptap probe test CA {FILE_ID}.{test_id}"));
        let ca_file = scratch.write("ca.pem", &test_ca.pem);
        let dns = DnsServer::start(support::addr(FILE_ID, test_id, 53).into()).await;
        Setup {
            servers: Vec::new(),
            dns,
            test_ca,
            ca_file,
            scratch,
            test_id,
        }
    }

    /// The CA file, for `--ca`.
    fn ca(&self) -> String {
        self.ca_file.display().to_string()
    }

    /// Starts Prosody for `domain` on host `host` of this test's slice, with a certificate from the test CA.
    async fn server(
        &mut self,
        domain: &str,
        host: u8,
        edit: impl FnOnce(&mut ProsodyConfig),
    ) -> usize {
        let mut config = ProsodyConfig::new(
            domain,
            support::addr(FILE_ID, self.test_id, host),
            &self.dns.unbound_forward(),
        );
        config.certificate = Some(self.test_ca.leaf_with_client_auth(domain));
        edit(&mut config);
        let prosody = Prosody::start(config);
        prosody.wait_ready().await;
        self.servers.push(prosody);
        self.servers.len() - 1
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        support::addr(FILE_ID, self.test_id, host)
    }
}

// ---------------------------------------------------------------------------------------------------------
// S2S

#[tokio::test(flavor = "current_thread")]
async fn s2s_plaintext_stream_and_features() {
    let mut s = Setup::new(1).await;
    let b = s.server("b.test", 3, |c| c.s2s_tls = false).await;
    let addr = s.servers[b].s2s_addr();
    let probe = Probe::run(
        &args(&[
            "s2s",
            "b.test",
            "--from",
            "probe.test",
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    assert_eq!(r["probe"], "s2s", "{}", probe.context());
    assert_eq!(
        probe.phase_names(),
        ["dns", "connect", "stream"],
        "{}",
        probe.context()
    );
    assert_eq!(r["dns"]["overridden"], true);
    assert_eq!(r["dns"]["candidates"][0]["source"]["kind"], "static");
    assert_eq!(r["connect"]["connected"], addr.to_string());
    let stream = &r["streams"][0];
    assert_eq!(stream["stage"], "initial");
    assert_eq!(stream["from"], "b.test");
    assert_eq!(stream["version"], "1.0");
    assert_eq!(stream["dialback_ns"], true);
    assert!(stream["id"].as_str().is_some_and(|id| !id.is_empty()));
    let features = &stream["features"];
    assert_eq!(features["starttls"], Value::Null, "{}", probe.context());
    assert_eq!(features["dialback"], true);
    assert!(features["xml"]
        .as_str()
        .unwrap_or("")
        .contains("urn:xmpp:features:dialback"));
    assert_eq!(r["tls"], Value::Null);
    assert!(
        r["notes"].to_string().contains("offers no STARTTLS"),
        "{}",
        probe.context()
    );
    for phase in r["phases"].as_array().into_iter().flatten() {
        assert!(phase["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{phase}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_starttls_certificate_judged_three_ways() {
    let mut s = Setup::new(2).await;
    let b = s.server("b.test", 3, |_| {}).await;
    let addr = s.servers[b].s2s_addr();
    let base = args(&[
        "s2s",
        "b.test",
        "--from",
        "probe.test",
        "--host",
        &addr.ip().to_string(),
        "--port",
        &addr.port().to_string(),
    ]);

    // Trusted through --ca.
    let mut trusted = base.clone();
    trusted.extend(args(&["--ca", &s.ca(), "--starttls", "require"]));
    let probe = Probe::run(&trusted, &[]).await;
    probe.assert_exit(0);
    let r = &probe.report;
    assert_eq!(
        probe.phase_names(),
        [
            "dns",
            "connect",
            "stream",
            "starttls",
            "tls",
            "stream_after_tls"
        ],
        "{}",
        probe.context()
    );
    assert_eq!(
        r["streams"][0]["features"]["starttls"], true,
        "required before TLS"
    );
    assert_eq!(r["streams"][1]["stage"], "after_tls");
    assert_eq!(r["streams"][1]["features"]["starttls"], Value::Null);
    assert_eq!(r["streams"][1]["features"]["dialback"], true);
    assert_ne!(
        r["streams"][0]["id"], r["streams"][1]["id"],
        "a new stream id after TLS"
    );
    let tls = &r["tls"];
    assert_eq!(tls["mode"], "starttls");
    assert_eq!(tls["sni"], "b.test");
    assert!(
        tls["version"].as_str().unwrap_or("").starts_with("TLSv1."),
        "{}",
        probe.context()
    );
    assert!(tls["cipher"].is_string());
    assert_eq!(tls["verified"], true, "{}", probe.context());
    assert!(tls["verification"]
        .as_str()
        .unwrap_or("")
        .contains("names b.test as a DNS name"));
    let leaf = &tls["chain"][0];
    assert_eq!(leaf["subject"], "CN=b.test");
    assert_eq!(leaf["sans"], json!(["DNS:b.test"]));
    assert_eq!(leaf["issuer"], "CN=xmpptap probe test CA 110.2");
    assert_eq!(leaf["valid_now"], true);
    assert!(leaf["not_after"].as_str().unwrap_or("").ends_with('Z'));

    // The system roots do not know the test CA: the TLS exit code, with the chain and the reason.
    let probe = Probe::run(&base, &[]).await;
    probe.assert_exit(4);
    let r = &probe.report;
    assert_eq!(r["failure"]["phase"], "tls", "{}", probe.context());
    assert_eq!(r["tls"]["verified"], false);
    assert!(
        r["tls"]["verification"]
            .as_str()
            .unwrap_or("")
            .contains("unknown issuer")
            || r["tls"]["verification"]
                .as_str()
                .unwrap_or("")
                .contains("nothing to check against"),
        "{}",
        probe.context()
    );

    // --dangerous-accept-any-cert goes on, and says the certificate does not verify.
    let mut any = base.clone();
    any.push("--dangerous-accept-any-cert".into());
    let probe = Probe::run(&any, &[]).await;
    probe.assert_exit(0);
    assert_eq!(
        probe.report["tls"]["verified"],
        false,
        "{}",
        probe.context()
    );
    assert_eq!(probe.report["tls"]["accepted_unverified"], true);
    assert_eq!(probe.report["tls"]["chain"][0]["subject"], "CN=b.test");
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_direct_tls() {
    let mut s = Setup::new(3).await;
    let b = s.server("b.test", 3, |c| c.s2s_direct_tls = true).await;
    let port = s.servers[b]
        .s2s_direct_tls_port()
        .unwrap_or_else(|| panic!("no Direct TLS port"));
    let probe = Probe::run(
        &args(&[
            "s2s",
            "b.test",
            "--from",
            "probe.test",
            "--host",
            &s.ip(3).to_string(),
            "--port",
            &port.to_string(),
            "--direct-tls",
            "--ca",
            &s.ca(),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    assert_eq!(
        probe.phase_names(),
        ["dns", "connect", "tls", "stream"],
        "{}",
        probe.context()
    );
    assert_eq!(r["connect"]["direct_tls"], true);
    assert_eq!(r["tls"]["mode"], "direct_tls");
    assert_eq!(r["tls"]["verified"], true, "{}", probe.context());
    assert_eq!(
        r["streams"][0]["features"]["starttls"],
        Value::Null,
        "no STARTTLS inside TLS"
    );
    assert_eq!(r["streams"][0]["features"]["dialback"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_dialback_valid_through_the_listener_and_ping() {
    let mut s = Setup::new(4).await;
    let b = s.server("b.test", 3, |_| {}).await;
    let addr = s.servers[b].s2s_addr();
    // Prosody resolves probe.test (the probe's --from) to the probe's listener.
    let listener_ip = s.ip(10);
    let [listener_port] = support::free_ports::<1>(listener_ip.into());
    s.dns.add_srv(
        "_xmpp-server._tcp.probe.test",
        0,
        0,
        listener_port,
        "listener.test",
    );
    s.dns.add_a("listener.test", listener_ip);
    let listen = SocketAddr::from((listener_ip, listener_port)).to_string();
    let probe = Probe::run(
        &args(&[
            "s2s",
            "b.test",
            "--from",
            "probe.test",
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--ca",
            &s.ca(),
            "--dialback",
            "--dialback-secret",
            "probe-secret",
            "--dialback-listen",
            &listen,
            "--ping",
        ]),
        &[],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    let db = &r["dialback"];
    assert_eq!(db["result"], "valid", "{}", probe.context());
    assert_eq!(db["secret"], "given");
    assert_eq!(db["listener"], listen);
    assert_eq!(
        db["stream_id"], r["streams"][1]["id"],
        "the key covers the stream after TLS"
    );
    let verify = &db["verify_requests"][0];
    assert_eq!(verify["from"], "b.test", "{}", probe.context());
    assert_eq!(verify["to"], "probe.test");
    assert_eq!(verify["id"], db["stream_id"]);
    assert_eq!(verify["answer"], "valid");
    let ping = &r["ping"];
    assert_eq!(ping["result"], "pong", "{}", probe.context());
    assert_eq!(ping["via"], "dialback_listener");
    assert!(ping["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(probe.phase("dialback")["ok"] == true && probe.phase("ping")["ok"] == true);
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_dialback_judged_by_a_real_authoritative_server() {
    let mut s = Setup::new(5).await;
    // a.test is the authoritative server for the probe's --from; its secret is known to the test.
    let a = s
        .server("a.test", 2, |c| {
            c.extra_global_config = "dialback_secret = \"a-test-secret\"\n".into()
        })
        .await;
    let b = s.server("b.test", 3, |_| {}).await;
    let a_addr = s.servers[a].s2s_addr();
    s.dns.add_srv(
        "_xmpp-server._tcp.a.test",
        0,
        0,
        a_addr.port(),
        "a-host.test",
    );
    s.dns.add_a("a-host.test", s.ip(2));
    // a.test checks b.test's own dialback key (for b.test's connection to a.test) the same way.
    let b_addr = s.servers[b].s2s_addr();
    s.dns.add_srv(
        "_xmpp-server._tcp.b.test",
        0,
        0,
        b_addr.port(),
        "b-host.test",
    );
    s.dns.add_a("b-host.test", s.ip(3));
    let probe_args = args(&[
        "s2s",
        "b.test",
        "--from",
        "a.test",
        "--host",
        &b_addr.ip().to_string(),
        "--port",
        &b_addr.port().to_string(),
        "--ca",
        &s.ca(),
        "--dialback",
        "--dialback-secret-env",
        "PROBE_DIALBACK_SECRET",
        "--timeout",
        "15",
    ]);

    let wrong = Probe::run(&probe_args, &[("PROBE_DIALBACK_SECRET", "not-the-secret")]).await;
    wrong.assert_exit(6);
    assert_eq!(
        wrong.report["dialback"]["result"],
        "invalid",
        "{}",
        wrong.context()
    );
    assert_eq!(wrong.report["failure"]["kind"], "dialback");

    // The same key function as Prosody's mod_dialback: with a.test's real secret, b.test accepts it.
    let right = Probe::run(&probe_args, &[("PROBE_DIALBACK_SECRET", "a-test-secret")]).await;
    right.assert_exit(0);
    assert_eq!(
        right.report["dialback"]["result"],
        "valid",
        "{}",
        right.context()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_sasl_external_with_a_client_certificate() {
    let mut s = Setup::new(14).await;
    let ca = s.ca();
    // b.test trusts the test CA for the client certificates of S2S connections (s2s_ssl adds to ssl).
    let b = s
        .server("b.test", 3, |c| {
            c.extra_global_config = format!("s2s_ssl = {{ cafile = [==[{ca}]==] }}\n");
        })
        .await;
    let (cert, key) = s.test_ca.leaf_with_client_auth("probe.test");
    let cert_file = s.scratch.write("probe.test.crt", &cert);
    let key_file = s.scratch.write("probe.test.key", &key);
    let addr = s.servers[b].s2s_addr();
    let probe = Probe::run(
        &args(&[
            "s2s",
            "b.test",
            "--from",
            "probe.test",
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--ca",
            &ca,
            "--sasl-external",
            "--client-cert",
            cert_file.to_str().unwrap_or(""),
            "--client-key",
            key_file.to_str().unwrap_or(""),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    assert_eq!(
        r["tls"]["client_certificate"],
        "CN=probe.test",
        "{}",
        probe.context()
    );
    assert_eq!(
        r["streams"][1]["features"]["mechanisms"],
        json!(["EXTERNAL"]),
        "{}",
        probe.context()
    );
    assert_eq!(r["sasl"]["mechanism"], "EXTERNAL");
    assert_eq!(r["sasl"]["result"], "success");
    assert_eq!(r["streams"][2]["stage"], "after_sasl");
}

#[tokio::test(flavor = "current_thread")]
async fn s2s_host_unknown_for_a_domain_the_server_does_not_serve() {
    let mut s = Setup::new(6).await;
    let b = s.server("b.test", 3, |_| {}).await;
    let addr = s.servers[b].s2s_addr();
    let probe = Probe::run(
        &args(&[
            "s2s",
            "c.test",
            "--from",
            "probe.test",
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(7);
    let r = &probe.report;
    assert_eq!(
        r["stream_error"]["condition"],
        "host-unknown",
        "{}",
        probe.context()
    );
    assert_eq!(r["failure"]["kind"], "stream");
    assert_eq!(r["failure"]["phase"], "stream");
}

// ---------------------------------------------------------------------------------------------------------
// C2S

/// Prosody for a.test offering SCRAM-SHA-1, SCRAM-SHA-256 and PLAIN, with C2S Direct TLS, alice and bob, and
/// the groups roster.
async fn c2s_setup(test_id: u8) -> (Setup, usize) {
    let mut s = Setup::new(test_id).await;
    let groups_file = s.scratch.write("groups.txt", GROUPS);
    let a = s
        .server("a.test", 2, |c| {
            c.c2s_direct_tls = true;
            c.extra_global_config = format!(
                "authentication = \"internal_plain\"\n\
                 VirtualHost \"a.test\" {{ modules_enabled = {{ \"groups\" }}; groups_file = {} }}\n",
                lua_str(&groups_file)
            );
        })
        .await;
    s.servers[a].register("alice", "alice-pw").await;
    s.servers[a].register("bob", "bob-pw").await;
    (s, a)
}

fn c2s_args(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut out = args(&[
        "c2s",
        "alice@a.test",
        "--password-env",
        PASSWORD_ENV,
        "--host",
        &addr.ip().to_string(),
        "--port",
        &addr.port().to_string(),
    ]);
    out.extend(args(extra));
    out
}

#[tokio::test(flavor = "current_thread")]
async fn c2s_login_with_each_mechanism_over_starttls_and_direct_tls() {
    let (s, a) = c2s_setup(7).await;
    let server = &s.servers[a];
    let direct = server
        .c2s_direct_tls_addr()
        .unwrap_or_else(|| panic!("no Direct TLS C2S port"));
    for (addr, direct_tls) in [(server.c2s_addr(), false), (direct, true)] {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
            let ca = s.ca();
            let mut extra = vec!["--ca", ca.as_str(), "--mechanism", mechanism];
            if direct_tls {
                extra.push("--direct-tls");
            }
            let probe = Probe::run(&c2s_args(addr, &extra), &[(PASSWORD_ENV, "alice-pw")]).await;
            probe.assert_exit(0);
            let r = &probe.report;
            assert_eq!(r["sasl"]["mechanism"], mechanism, "{}", probe.context());
            assert_eq!(r["sasl"]["result"], "success");
            let offered = r["sasl"]["offered"].to_string();
            for wanted in ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"] {
                assert!(
                    offered.contains(&format!("\"{wanted}\"")),
                    "{}",
                    probe.context()
                );
            }
            if mechanism.starts_with("SCRAM") {
                assert_eq!(
                    r["sasl"]["server_signature_verified"],
                    true,
                    "{}",
                    probe.context()
                );
            }
            assert_eq!(r["tls"]["verified"], true);
            assert_eq!(
                r["tls"]["mode"],
                if direct_tls { "direct_tls" } else { "starttls" }
            );
            assert!(
                r["bind"]["jid"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("alice@a.test/xmpptap-probe-"),
                "{}",
                probe.context()
            );
            let last = r["streams"]
                .as_array()
                .and_then(|s| s.last())
                .cloned()
                .unwrap_or_default();
            assert_eq!(last["stage"], "after_sasl");
            assert_eq!(last["features"]["bind"], true);
            assert!(
                !probe.stderr.contains("alice-pw"),
                "the password must never be printed, not even in the debug log"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn c2s_roster_with_groups_message_delivered_and_ping() {
    let (s, a) = c2s_setup(8).await;
    let server = &s.servers[a];
    // bob is online (the minimal client logs in over plaintext PLAIN, which this Prosody allows).
    let mut bob = Client::login(server.c2s_addr(), "a.test", "bob", "bob-pw").await;
    let body = "hello bob <&> from the probe ✓";
    let probe = Probe::run(
        &c2s_args(
            server.c2s_addr(),
            &[
                "--ca",
                &s.ca(),
                "--resource",
                "probe",
                "--roster",
                "--message",
                "bob@a.test",
                body,
                "--message-wait",
                "1",
                "--ping",
            ],
        ),
        &[(PASSWORD_ENV, "alice-pw")],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    assert_eq!(
        r["bind"]["jid"],
        "alice@a.test/probe",
        "{}",
        probe.context()
    );
    // The probe reports groups in the server's order; Prosody's mod_groups has none (a Lua table), so compare
    // them as a set.
    let mut contacts = r["roster"]["contacts"].clone();
    if let Some(groups) = contacts[0]["groups"].as_array_mut() {
        groups.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    assert_eq!(
        contacts,
        json!([{
            "jid": "bob@a.test",
            "name": "Bob",
            "subscription": "both",
            "ask": null,
            "groups": ["Friends", "Work"],
        }]),
        "{}",
        probe.context()
    );
    assert_eq!(r["message"]["result"], "no_error");
    assert_eq!(r["ping"]["result"], "pong");
    assert_eq!(r["ping"]["via"], "stream");
    let (from, received) = bob.wait_message(Duration::from_secs(10)).await;
    assert_eq!(from, "alice@a.test/probe");
    assert_eq!(received, body);
    bob.close().await;

    // Nobody is online for carol (offline storage is disabled): the bounce is detected.
    let probe = Probe::run(
        &c2s_args(
            server.c2s_addr(),
            &[
                "--dangerous-accept-any-cert",
                "--message",
                "carol@a.test",
                "hi",
                "--message-wait",
                "3",
            ],
        ),
        &[(PASSWORD_ENV, "alice-pw")],
    )
    .await;
    probe.assert_exit(8);
    assert_eq!(
        probe.report["message"]["result"],
        "error",
        "{}",
        probe.context()
    );
    assert_eq!(
        probe.report["message"]["error_condition"],
        "service-unavailable"
    );
    assert_eq!(probe.report["failure"]["phase"], "message");
}

#[tokio::test(flavor = "current_thread")]
async fn c2s_wrong_password_is_an_authentication_failure() {
    let (s, a) = c2s_setup(9).await;
    let addr = s.servers[a].c2s_addr();
    let password_file = s.scratch.write("password", "not-alices-password\n");
    let probe = Probe::run(
        &args(&[
            "c2s",
            "alice@a.test",
            "--password-file",
            password_file.to_str().unwrap_or(""),
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--ca",
            &s.ca(),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(5);
    let r = &probe.report;
    assert_eq!(r["sasl"]["result"], "failure", "{}", probe.context());
    assert_eq!(r["sasl"]["condition"], "not-authorized");
    assert_eq!(
        r["sasl"]["mechanism"], "SCRAM-SHA-256",
        "the strongest offered"
    );
    assert_eq!(r["failure"]["kind"], "auth");
    assert!(!probe.stderr.contains("not-alices-password"));
    assert!(!r.to_string().contains("not-alices-password"));
}

#[tokio::test(flavor = "current_thread")]
async fn c2s_plain_is_refused_over_plaintext_unless_dangerous() {
    let (s, a) = c2s_setup(10).await;
    let addr = s.servers[a].c2s_addr();
    let refused = Probe::run(
        &c2s_args(addr, &["--starttls", "off", "--mechanism", "PLAIN"]),
        &[(PASSWORD_ENV, "alice-pw")],
    )
    .await;
    refused.assert_exit(5);
    assert!(
        refused.report["failure"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("--dangerous-plain-over-plaintext"),
        "{}",
        refused.context()
    );
    let allowed = Probe::run(
        &c2s_args(
            addr,
            &[
                "--starttls",
                "off",
                "--mechanism",
                "PLAIN",
                "--dangerous-plain-over-plaintext",
            ],
        ),
        &[(PASSWORD_ENV, "alice-pw")],
    )
    .await;
    allowed.assert_exit(0);
    assert_eq!(allowed.report["tls"], Value::Null, "{}", allowed.context());
    // SCRAM over plaintext is fine: the password itself does not cross the wire.
    let scram = Probe::run(
        &c2s_args(addr, &["--starttls", "off"]),
        &[(PASSWORD_ENV, "alice-pw")],
    )
    .await;
    scram.assert_exit(0);
    assert_eq!(
        scram.report["sasl"]["mechanism"],
        "SCRAM-SHA-256",
        "{}",
        scram.context()
    );
}

// ---------------------------------------------------------------------------------------------------------
// DNS

#[tokio::test(flavor = "current_thread")]
async fn dns_srv_of_both_services_ordered_tried_in_order_with_fallback() {
    let mut s = Setup::new(11).await;
    let b = s.server("b.test", 3, |c| c.s2s_direct_tls = true).await;
    let server = &s.servers[b];
    let direct_port = server
        .s2s_direct_tls_port()
        .unwrap_or_else(|| panic!("no Direct TLS port"));
    let starttls_port = server.s2s_port();
    // Nothing listens on dead-host.test's port: the first candidate fails.
    let dead_ip = s.ip(9);
    let [dead_port] = support::free_ports::<1>(dead_ip.into());
    s.dns.add_srv(
        "_xmpps-server._tcp.b.test",
        0,
        0,
        dead_port,
        "dead-host.test",
    );
    s.dns.add_srv(
        "_xmpps-server._tcp.b.test",
        5,
        0,
        direct_port,
        "b-host.test",
    );
    s.dns.add_srv(
        "_xmpp-server._tcp.b.test",
        10,
        0,
        starttls_port,
        "b-host.test",
    );
    s.dns.add_a("dead-host.test", dead_ip);
    s.dns.add_a("b-host.test", s.ip(3));
    let resolver = s.dns.addr().to_string();

    let probe = Probe::run(
        &args(&[
            "s2s",
            "b.test",
            "--from",
            "probe.test",
            "--resolver",
            &resolver,
            "--ca",
            &s.ca(),
        ]),
        &[],
    )
    .await;
    probe.assert_exit(0);
    let r = &probe.report;
    let dns = &r["dns"];
    assert_eq!(dns["overridden"], false);
    assert_eq!(
        dns["srv"][0]["name"],
        "_xmpps-server._tcp.b.test.",
        "{}",
        probe.context()
    );
    assert_eq!(dns["srv"][0]["result"], "records");
    assert_eq!(dns["srv"][0]["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(dns["srv"][1]["name"], "_xmpp-server._tcp.b.test.");
    assert_eq!(dns["srv"][1]["records"][0]["port"], starttls_port);
    let order: Vec<(String, bool, Value)> = dns["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["addr"].as_str().unwrap_or("").to_owned(),
                c["direct_tls"].as_bool().unwrap_or(false),
                c["source"]["priority"].clone(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (format!("{dead_ip}:{dead_port}"), true, json!(0)),
            (format!("{}:{direct_port}", s.ip(3)), true, json!(5)),
            (format!("{}:{starttls_port}", s.ip(3)), false, json!(10)),
        ],
        "{}",
        probe.context()
    );
    assert_eq!(dns["candidates"][0]["source"]["service"], "_xmpps-server");
    assert_eq!(dns["candidates"][2]["source"]["service"], "_xmpp-server");
    let attempts = &r["connect"]["attempts"];
    assert_eq!(
        attempts.as_array().map(Vec::len),
        Some(2),
        "{}",
        probe.context()
    );
    assert_eq!(attempts[0]["ok"], false);
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "{}",
        probe.context()
    );
    assert_eq!(attempts[1]["ok"], true);
    assert_eq!(r["tls"]["mode"], "direct_tls");
    assert_eq!(r["tls"]["verified"], true);

    // Only an A record: the fallback on 5269, where nothing listens on that address.
    s.dns.add_a("fallback.test", s.ip(8));
    assert!(
        std::net::TcpStream::connect((s.ip(8), 5269)).is_err(),
        "something listens on {}:5269 (a system Prosody on *:5269? `service prosody stop`)",
        s.ip(8)
    );
    let probe = Probe::run(
        &args(&[
            "s2s",
            "fallback.test",
            "--from",
            "probe.test",
            "--resolver",
            &resolver,
            "--timeout",
            "3",
        ]),
        &[],
    )
    .await;
    probe.assert_exit(3);
    let dns = &probe.report["dns"];
    assert_eq!(dns["srv"][0]["result"], "none", "{}", probe.context());
    assert_eq!(dns["srv"][1]["result"], "none");
    assert_eq!(dns["candidates"][0]["source"]["kind"], "fallback");
    assert_eq!(dns["candidates"][0]["addr"], format!("{}:5269", s.ip(8)));
    assert_eq!(probe.report["failure"]["kind"], "connect");

    // Nothing at all: DNS.
    let probe = Probe::run(
        &args(&[
            "s2s",
            "nowhere.test",
            "--from",
            "probe.test",
            "--resolver",
            &resolver,
        ]),
        &[],
    )
    .await;
    probe.assert_exit(2);
    assert_eq!(
        probe.report["failure"]["kind"],
        "dns",
        "{}",
        probe.context()
    );

    // A "." target says there is no service.
    s.dns.add_srv("_xmpp-server._tcp.none.test", 0, 0, 0, ".");
    let probe = Probe::run(
        &args(&[
            "s2s",
            "none.test",
            "--from",
            "probe.test",
            "--resolver",
            &resolver,
        ]),
        &[],
    )
    .await;
    probe.assert_exit(2);
    assert_eq!(
        probe.report["dns"]["srv"][1]["result"],
        "not_offered",
        "{}",
        probe.context()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn usage_errors_exit_64_and_text_output_is_readable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .args(["probe", "s2s", "b.test", "--from", "a.test", "--ping"])
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap: {e}"));
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dialback"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .args(["probe", "c2s", "alice@a.test", "--roster"])
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap: {e}"));
    assert_eq!(output.status.code(), Some(64));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .args(["probe", "s2s", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap: {e}"));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Exit codes: 0"), "{help}");

    // Text output of a probe that fails at DNS (nothing answers on this address).
    let dead = support::addr(FILE_ID, 12, 53);
    let [port] = support::free_ports::<1>(dead.into());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_xmpptap"))
        .args([
            "probe",
            "s2s",
            "b.test",
            "--from",
            "a.test",
            "--host",
            &dead.to_string(),
            "--port",
            &port.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("run xmpptap: {e}"));
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("xmpptap probe s2s b.test from a.test: FAILED in connect (exit 3)"),
        "{text}"
    );
    assert!(text.contains("phases\n  dns "), "{text}");
}
