//! `--keylog`: a raw capture of a real STARTTLS federation through xmpptap, taken on loopback with tshark,
//! is decrypted by tshark with the key log xmpptap wrote, and the `<message>` is found on both legs.
//!
//! Without the key log the same capture shows no message at all: every S2S byte is inside TLS. The capture
//! filter leaves out the clients' own plaintext C2S streams, so the body can only come from decrypted S2S.
//!
//! Needs tshark (Debian `tshark`) and the right to capture on `lo` (root, or dumpcap's capabilities); skipped
//! with a message when tshark is missing.
//!
//! Addresses: file id 50 (see `tests/support/mod.rs`).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::client::Client;
use support::federation::{Federation, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

const FILE_ID: u8 = 50;

/// The message alice sends; only its encrypted form crosses the captured connections.
const BODY: &str = "decrypt me with the key log";

/// `tshark` on PATH, or `None` (the test is skipped).
fn tshark() -> Option<PathBuf> {
    let found = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(status) if status.success() => Some(PathBuf::from("tshark")),
        _ => None,
    }
}

/// A running `tshark -i lo -w FILE -f FILTER`, stopped (SIGINT, so the file is complete) by [`Capture::stop`]
/// and killed on Drop.
///
/// tshark's "Capturing on 'lo'" does not mean packets are being captured yet (libpcap may still be setting the
/// filter, and drops what it buffered meanwhile), nor are captured packets in the file at once. So the filter also
/// takes UDP datagrams to an otherwise unused `canary` address: [`Capture::sync`] sends one and waits until it is
/// in the file, which proves that everything sent before it is there too.
struct Capture {
    child: tokio::process::Child,
    file: PathBuf,
    tshark: PathBuf,
    canary: SocketAddr,
    syncs: u32,
    stderr: Arc<Mutex<String>>,
}

impl Capture {
    /// Starts capturing the packets `filter` matches, plus canaries, and returns once the capture is live.
    async fn start(tshark: &Path, file: &Path, filter: &str, canary: Ipv4Addr) -> Capture {
        let filter = format!("({filter}) or (udp and host {canary})");
        eprintln!("tshark -i lo -f '{filter}' -w {}", file.display());
        let mut child = tokio::process::Command::new(tshark)
            .args(["-i", "lo", "-f", &filter, "-w"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start tshark: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let kept = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().expect("stderr lock");
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut capture = Capture {
            child,
            file: file.to_owned(),
            tshark: tshark.to_owned(),
            canary: SocketAddr::from((canary, 9)),
            syncs: 0,
            stderr,
        };
        capture.sync().await;
        capture
    }

    /// Sends a canary datagram (again every 200 ms) until tshark finds it in the capture file.
    async fn sync(&mut self) {
        self.syncs += 1;
        let marker = format!("xmpptap-canary-{}", self.syncs);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("canary socket");
        let filter = format!("frame contains \"{marker}\"");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Nobody listens on the canary port: the datagram only exists for the capture.
            let _ = socket.send_to(marker.as_bytes(), self.canary);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let found = Command::new(&self.tshark)
                .arg("-r")
                .arg(&self.file)
                .args(["-Y", &filter])
                .stderr(Stdio::null())
                .output();
            if let Ok(output) = found {
                if !output.stdout.is_empty() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tshark exited ({status}); capturing on lo needs root or dumpcap's capabilities:\n{}",
                    self.stderr.lock().expect("stderr lock")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the capture did not see the canary packet {marker} within 20s:\n{}",
                    self.stderr.lock().expect("stderr lock")
                );
            }
        }
    }

    /// Waits until every packet sent so far is in the file, then stops tshark cleanly.
    async fn stop(mut self) {
        self.sync().await;
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await,
            Ok(Ok(_))
        ) {
            panic!(
                "tshark did not stop:\n{}",
                self.stderr.lock().expect("stderr lock")
            );
        }
    }
}

/// Runs `tshark -r FILE ARGS...` and returns its stdout; panics with stderr on failure.
fn read_capture(tshark: &Path, file: &Path, args: &[String]) -> String {
    let output = Command::new(tshark)
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run tshark: {e}"));
    assert!(
        output.status.success(),
        "tshark -r {} {args:?} failed:\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_capture_of_starttls_federation_is_decrypted_with_the_key_log() {
    let Some(tshark) = tshark() else {
        eprintln!("skipped: tshark is not installed (Debian/Ubuntu: apt-get install tshark)");
        return;
    };
    let test_id = 1;
    let work = std::env::temp_dir().join(format!("xmpptap-keylog-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let keylog = work.join("keys.log");
    let pcap = work.join("raw.pcapng");
    let options = Options {
        xmpptap_args: vec![format!("--keylog={}", keylog.display())],
        ..Options::default()
    };
    let Federation {
        a,
        b,
        tap,
        dns: _dns,
        proxy_ip,
    } = Federation::start(FILE_ID, test_id, options).await;

    // The S2S connections only: the servers talk to xmpptap (initiator legs), xmpptap to their S2S ports
    // (receiver legs, from 127.0.0.1). The clients' plaintext C2S streams stay out of the capture.
    let ports = [tap.addr().port(), a.s2s_port(), b.s2s_port()];
    let filter = format!(
        "tcp and (host {proxy_ip} or (host {} and port {}) or (host {} and port {}))",
        a.ip(),
        a.s2s_port(),
        b.ip(),
        b.s2s_port()
    );
    let canary = support::addr(FILE_ID, test_id, 99);
    let capture = Capture::start(&tshark, &pcap, &filter, canary).await;

    let mut bob = Client::login(b.c2s_addr(), "b.test", "bob", "bob-pw").await;
    let mut alice = Client::login(a.c2s_addr(), "a.test", "alice", "alice-pw").await;
    let sent = Instant::now();
    alice.send_message("bob@b.test", BODY).await;
    let (from, body) = bob.wait_message(Duration::from_secs(15)).await;
    assert_eq!((from.as_str(), body.as_str()), (alice.jid(), BODY));
    eprintln!("message through xmpptap in {:?}", sent.elapsed());
    capture.stop().await;

    // The key log: NSS format, private, secrets from both legs.
    let keys = std::fs::read_to_string(&keylog).expect("key log written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keylog)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "key log mode");
    }
    for line in keys.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "key log line {line:?}");
        assert!(
            fields[1..]
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_hexdigit())),
            "key log line {line:?}"
        );
    }
    assert!(
        keys.lines()
            .any(|l| l.starts_with("CLIENT_TRAFFIC_SECRET_0 ") || l.starts_with("CLIENT_RANDOM ")),
        "no traffic secret in the key log:\n{keys}"
    );

    let decode: Vec<String> = ports
        .iter()
        .flat_map(|port| [String::from("-d"), format!("tcp.port=={port},xmpp")])
        .collect();
    let fields = [
        "-Y",
        "xmpp.message",
        "-T",
        "fields",
        "-e",
        "tcp.dstport",
        // The XMPP dissector hands element contents to the XML dissector: the body text is xml.cdata.
        "-e",
        "xml.cdata",
    ]
    .map(String::from);

    // Without the key log: TLS on every S2S connection, no message in sight.
    let mut args = decode.clone();
    args.extend(fields.iter().cloned());
    let opaque = read_capture(&tshark, &pcap, &args);
    assert!(
        !opaque.contains(BODY),
        "the message is readable without the key log:\n{opaque}"
    );
    let raw = std::fs::read(&pcap).expect("capture file");
    assert!(
        !raw.windows(BODY.len()).any(|w| w == BODY.as_bytes()),
        "the message body is in the capture in clear text"
    );

    // With it: the message, once on each leg (alice's server -> xmpptap, xmpptap -> bob's server).
    let mut args = vec![
        String::from("-o"),
        format!("tls.keylog_file:{}", keylog.display()),
    ];
    args.extend(decode.iter().cloned());
    args.extend(fields.iter().cloned());
    let decrypted = read_capture(&tshark, &pcap, &args);
    eprintln!(
        "tshark -r {} {}\n{decrypted}",
        pcap.display(),
        args.join(" ")
    );
    let legs: Vec<&str> = decrypted
        .lines()
        .filter(|l| l.contains(BODY))
        .filter_map(|l| l.split('\t').next())
        .collect();
    let initiator_leg = tap.addr().port().to_string();
    let receiver_leg = b.s2s_port().to_string();
    assert!(
        legs.contains(&initiator_leg.as_str()) && legs.contains(&receiver_leg.as_str()),
        "the message must be decrypted on both legs (to xmpptap port {initiator_leg} and to b.test's S2S port \
         {receiver_leg}); found on {legs:?}:\n{decrypted}\nkey log:\n{keys}"
    );

    let _ = std::fs::remove_dir_all(&work);
}
