//! Captures a person can open in Wireshark: two real Prosody servers federate through xmpptap with STARTTLS and
//! dialback while xmpptap writes `--pcap` (the decrypted conversations) and `--pcapng-tls` (the real encrypted
//! bytes with the TLS secrets embedded), and tshark reads both.
//!
//! What tshark must find, with decode-as for every port involved (they are ephemeral; XMPP's dissector only
//! watches 5222 by itself): stream headers, stream features and the `<message>` stanza, decoded by the XMPP
//! dissector, in the decrypted pcap (after STARTTLS too), in the pcapng once tshark decrypted it with the
//! embedded secrets, and in a pcap rebuilt from the JSON Lines transcript (`pcap_from_transcript`); and no TCP
//! analysis flag at all (`-Y tcp.analysis.flags` shows nothing: no lost segment, retransmission, duplicate ACK
//! or reused port).
//!
//! The tests are skipped, with a message, when tshark is not installed (Debian: `apt-get install tshark`).
//!
//! Addresses: file id 40 (see `tests/support/mod.rs`).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::client::Client;
use support::federation::{Federation, Options};

const FILE_ID: u8 = 40;

const HELLO: &str = "hello through xmpptap";
const REPLY: &str = "and back";

/// Whether tshark can run here; prints why not.
fn tshark_available() -> bool {
    match Command::new("tshark").arg("-v").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED: tshark is not installed (Debian/Ubuntu: apt-get install -y tshark); \
                 the captures cannot be checked"
            );
            false
        }
    }
}

/// A directory for this test's files: removed when the test passes, kept (and named) when it fails or
/// `XMPPTAP_KEEP_CAPTURES` is set.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("xmpptap-captures-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

/// Set this environment variable to keep the capture files of passing tests too.
const KEEP_ENV: &str = "XMPPTAP_KEEP_CAPTURES";

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("--- capture files kept in {} ---", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs tshark on `file` with decode-as XMPP for every port in `ports`, plus `args`; returns stdout. Panics with
/// tshark's stderr if it fails.
fn tshark(file: &Path, ports: &[u16], args: &[&str]) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file);
    for port in ports {
        cmd.arg("-d").arg(format!("tcp.port=={port},xmpp"));
    }
    cmd.args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run tshark on {}: {e}", file.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tshark {cmd:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The command line, for messages (a person can paste it).
fn command_line(file: &Path, ports: &[u16], args: &[&str]) -> String {
    let mut line = format!("tshark -r {}", file.display());
    for port in ports {
        line.push_str(&format!(" -d tcp.port=={port},xmpp"));
    }
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    line
}

/// Frames matching the display `filter`, as tshark's one-line summaries.
fn matching(file: &Path, ports: &[u16], filter: &str) -> Vec<String> {
    tshark(file, ports, &["-Y", filter])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts what every capture of the federation must show. `what` names the capture in messages.
fn assert_xmpp_decoded(what: &str, file: &Path, ports: &[u16], extra_filter: &str) {
    let summary = || {
        format!(
            "{what}: {}\n{}",
            command_line(file, ports, &[]),
            tshark(file, ports, &[])
        )
    };
    let with = |filter: &str| {
        if extra_filter.is_empty() {
            filter.to_owned()
        } else {
            format!("({filter}) and {extra_filter}")
        }
    };
    for (filter, name) in [
        ("xmpp.stream", "stream headers"),
        ("xmpp.features", "stream features"),
        ("xmpp.message", "<message> stanzas"),
    ] {
        assert!(
            !matching(file, ports, &with(filter)).is_empty(),
            "{what}: no {name} ({filter}) decoded\n{}",
            summary()
        );
    }
    for text in [HELLO, REPLY] {
        let filter = with(&format!("xmpp.message and xmpp contains \"{text}\""));
        assert!(
            !matching(file, ports, &filter).is_empty(),
            "{what}: the message {text:?} is not decoded as XMPP ({filter})\n{}",
            summary()
        );
    }
    // Both legs: each message crossed xmpptap's listener (initiator leg) and a Prosody S2S port (receiver
    // leg), so it is decoded going to two different server ports.
    for text in [HELLO, REPLY] {
        let filter = with(&format!("xmpp.message and xmpp contains \"{text}\""));
        let ports_seen = tshark(
            file,
            ports,
            &["-Y", &filter, "-T", "fields", "-e", "tcp.dstport"],
        );
        let mut legs: Vec<&str> = ports_seen.lines().collect();
        legs.sort_unstable();
        legs.dedup();
        assert_eq!(
            legs.len(),
            2,
            "{what}: the message {text:?} on both legs, found toward ports {legs:?} ({filter})\n{}",
            summary()
        );
    }
    let flagged = matching(file, ports, "tcp.analysis.flags");
    assert!(
        flagged.is_empty(),
        "{what}: TCP analysis flags (lost segments, retransmissions...):\n{}\n{}",
        flagged.join("\n"),
        summary()
    );
}

type Setup = Federation;

async fn setup(test_id: u8, capture_args: Vec<String>) -> Setup {
    let options = Options {
        xmpptap_args: capture_args,
        ..Options::default()
    };
    Federation::start(FILE_ID, test_id, options).await
}

/// alice@a.test and bob@b.test exchange a message each way through xmpptap; returns once both arrived and the
/// transcript shows both.
async fn converse(s: &Setup) {
    let mut bob = Client::login(s.b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(s.a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    alice.send_message("bob@b.test", HELLO).await;
    let (_, body) = bob.wait_message(Duration::from_secs(15)).await;
    assert_eq!(body, HELLO);
    bob.send_message("alice@a.test", REPLY).await;
    let (_, body) = alice.wait_message(Duration::from_secs(15)).await;
    assert_eq!(body, REPLY);
    for text in [HELLO, REPLY] {
        s.tap
            .wait_event(text, |e| {
                e["event"] == "stanza" && e["xml"].as_str().unwrap_or("").contains(text)
            })
            .await;
    }
    let events = s.tap.transcript();
    for side in ["initiator", "receiver"] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "tls_established" && e["side"] == side),
            "the federation must use STARTTLS on the {side} leg for this test to mean anything"
        );
    }
}

/// Waits until `check` passes on the file (the tap writer flushes shortly after events stop arriving).
async fn eventually(what: &str, check: impl Fn() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypted_pcap_and_tls_pcapng_of_a_starttls_federation_decode_in_tshark() {
    if !tshark_available() {
        return;
    }
    let scratch = Scratch::new("federation");
    let pcap = scratch.path("decrypted.pcap");
    let pcapng = scratch.path("tls.pcapng");
    let s = setup(
        1,
        vec![
            format!("--pcap={}", pcap.display()),
            format!("--pcapng-tls={}", pcapng.display()),
        ],
    )
    .await;
    converse(&s).await;
    let ports = s.server_ports();

    // While xmpptap still runs (connections open, no FIN yet), both files are already complete up to the
    // message: they are flushed after every batch of events, so a killed xmpptap leaves them readable.
    eventually("the running capture shows the message", || {
        let found = matching(
            &pcap,
            &ports,
            &format!("xmpp.message and xmpp contains \"{REPLY}\""),
        );
        if found.is_empty() {
            Err(format!("not yet:\n{}", tshark(&pcap, &ports, &[])))
        } else {
            Ok(())
        }
    })
    .await;

    // Closing the connections writes the FINs.
    let transcript = s.tap.transcript();
    let Setup {
        a,
        b,
        tap,
        dns: _dns,
        ..
    } = s;
    drop((a, b));
    let _ = tap.stop().await;

    assert_xmpp_decoded("--pcap", &pcap, &ports, "");
    // Each STARTTLS leg ends its plaintext conversation with FINs and goes on in a new one: more TCP streams
    // than connections, and every stream closed.
    let fins = matching(&pcap, &ports, "tcp.flags.fin == 1");
    assert!(!fins.is_empty(), "FINs when connections close");

    assert_xmpp_decoded("--pcapng-tls", &pcapng, &ports, "tls");
    // What was encrypted on the wire is encrypted in the capture: the plaintext only appears through decryption.
    let raw = std::fs::read(&pcapng).expect("read the pcapng");
    assert!(
        !raw.windows(HELLO.len()).any(|w| w == HELLO.as_bytes()),
        "the message must not be in the pcapng in clear text"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pcapng)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the pcapng holds TLS secrets");
    }

    // The same conversations rebuilt from the transcript.
    let exported = scratch.path("export.pcap");
    let file = std::fs::File::create(&exported).expect("create export.pcap");
    let packets = xmpptap::tap::pcap::pcap_from_transcript(&transcript, file).expect("export");
    assert!(packets > 0);
    assert_xmpp_decoded("pcap_from_transcript", &exported, &ports, "");
}

/// Without TLS there is nothing to split: one conversation per leg, and everything decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_federation_pcap_decodes_in_tshark() {
    if !tshark_available() {
        return;
    }
    let scratch = Scratch::new("plaintext");
    let pcap = scratch.path("plain.pcap");
    let options = Options {
        s2s_tls: false,
        xmpptap_args: vec![format!("--pcap={}", pcap.display())],
        ..Options::default()
    };
    let Federation { a, b, tap, dns, .. } = Federation::start(FILE_ID, 2, options).await;
    let mut bob = Client::login(b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    alice.send_message("bob@b.test", HELLO).await;
    bob.wait_message(Duration::from_secs(15)).await;
    bob.send_message("alice@a.test", REPLY).await;
    alice.wait_message(Duration::from_secs(15)).await;
    let ports = vec![tap.addr().port(), a.s2s_addr().port(), b.s2s_addr().port()];
    let events: Vec<Value> = tap.transcript();
    assert!(!events.iter().any(|e| e["event"] == "tls_established"));
    drop((alice, bob, a, b));
    let _ = tap.stop().await;
    drop(dns);

    assert_xmpp_decoded("--pcap (plaintext)", &pcap, &ports, "");
    // One TCP stream per leg: no TLS boundary to split at.
    let streams = tshark(&pcap, &ports, &["-T", "fields", "-e", "tcp.stream"]);
    let mut streams: Vec<&str> = streams.lines().collect();
    streams.sort_unstable();
    streams.dedup();
    let legs = events
        .iter()
        .filter(|e| e["event"] == "accepted" || e["event"] == "upstream_connected")
        .count();
    assert_eq!(streams.len(), legs, "one TCP stream per leg");
}
