//! The real session state machine (negotiation, STARTTLS decisions, feature rewriting, the relay, the
//! transcript) driven through real sockets by a fuzzed initiator and a fuzzed receiver.
//!
//! Once per process, four proxies are started in-process with `xmpptap::listen::run` (plaintext S2S, plaintext
//! C2S and Direct TLS S2S listeners each, on loopback ports), all routed with `--upstream`/`--c2s-upstream` to
//! one fake receiver, with a JSONL transcript and a pcap written to `/dev/null` under `--redact
//! --redact-bodies`, so that every event is built, redacted and serialized. The four differ in configuration:
//! the defaults, `--strip-starttls`, `--require-tls --upstream-tls always`, and `--client-cert mint`.
//!
//! An input is one byte choosing the proxy and listener, then the initiator's bytes, then (after the first NUL
//! byte, which XML never contains) the receiver's bytes; without a NUL the receiver sends a Prosody S2S header
//! and features offering STARTTLS and dialback. The initiator connects, writes its bytes and half-closes; the
//! fake receiver, when the proxy connects to it, writes its bytes and half-closes; both read until the proxy
//! closes. The target checks that the session ends by itself within 20 seconds (both peers have finished, so
//! anything longer is a hang) and that nothing panics anywhere in the process: libfuzzer-sys aborts on a
//! panic in any thread, so a panic inside a session task or the transcript writer is a crash too.
//!
//! Not covered: TLS past the handshake. The fake receiver does not speak TLS, so an upgrade fails at the
//! upstream handshake; a Direct TLS initiator's ClientHello reaches rustls, but no handshake completes.
//! Which side's bytes the relay reads first depends on scheduling, so a run is not exactly reproducible:
//! replaying a crash may need a few tries.

#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use xmpptap::cli::{Cli, Command};
use xmpptap::config::ProxyConfig;

/// What the receiver sends when the input has no NUL: a Prosody S2S receiver before TLS.
const DEFAULT_RECEIVER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' id='1716fc78-40ac-4e25-9bbd-2bd2201b4dab' xml:lang='en' \
    xmlns:db='jabber:server:dialback' from='b.test' to='a.test' version='1.0'><stream:features>\
    <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
    <dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";

/// How long a session may take once both peers have said everything.
const HANG: Duration = Duration::from_secs(20);

struct Harness {
    rt: Runtime,
    /// Per proxy: its S2S, C2S and Direct TLS S2S listening addresses.
    proxies: Vec<[SocketAddr; 3]>,
    /// What the fake receiver sends on the next connection it accepts.
    script: Arc<Mutex<Vec<u8>>>,
}

/// Addresses on loopback that were free a moment ago (`listen::run` reports the ports it binds only in its
/// log, so the harness chooses them).
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("a bound socket has an address"))
        .collect()
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let script = Arc::new(Mutex::new(Vec::new()));
        let receiver = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fake receiver");
        let receiver_addr = receiver.local_addr().expect("bound");
        rt.spawn(fake_receiver(receiver, script.clone()));

        let dir = std::env::temp_dir().join(format!("xmpptap-fuzz-session-{}", std::process::id()));
        let variants: [&[&str]; 4] = [
            &[],
            &["--strip-starttls"],
            &["--require-tls", "--upstream-tls", "always"],
            &["--client-cert", "mint"],
        ];
        let mut proxies = Vec::new();
        let addrs = free_addrs(3 * variants.len());
        for (i, extra) in variants.iter().enumerate() {
            let [s2s, c2s, s2s_tls] = [addrs[3 * i], addrs[3 * i + 1], addrs[3 * i + 2]];
            let upstream = receiver_addr.to_string();
            let ca = dir.join("ca").display().to_string();
            let mut args = vec![
                "xmpptap".to_owned(),
                "proxy".to_owned(),
                "--s2s-listen".to_owned(),
                s2s.to_string(),
                "--c2s-listen".to_owned(),
                c2s.to_string(),
                "--s2s-tls-listen".to_owned(),
                s2s_tls.to_string(),
                "--upstream".to_owned(),
                upstream.clone(),
                "--c2s-upstream".to_owned(),
                upstream,
                "--ca-dir".to_owned(),
                ca,
                "--log".to_owned(),
                "/dev/null".to_owned(),
                "--pcap".to_owned(),
                "/dev/null".to_owned(),
                "--redact".to_owned(),
                "--redact-bodies".to_owned(),
                "--header-timeout".to_owned(),
                "5".to_owned(),
                "--negotiation-timeout".to_owned(),
                "5".to_owned(),
                "--tls-timeout".to_owned(),
                "5".to_owned(),
                "--connect-timeout".to_owned(),
                "5".to_owned(),
                "--connect-retries".to_owned(),
                "0".to_owned(),
            ];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Proxy(proxy) = cli.command else {
                unreachable!("parsed as proxy")
            };
            let config = ProxyConfig::from_args(&proxy).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            rt.spawn(async move {
                if let Err(e) = xmpptap::listen::run(config, CancellationToken::new()).await {
                    panic!("proxy {i} did not start: {e}");
                }
            });
            proxies.push([s2s, c2s, s2s_tls]);
        }
        // Wait until every listener answers.
        rt.block_on(async {
            for addr in proxies.iter().flatten() {
                let mut tries = 0;
                while TcpStream::connect(addr).await.is_err() {
                    tries += 1;
                    assert!(tries < 500, "proxy at {addr} never listened");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Harness {
            rt,
            proxies,
            script,
        }
    })
}

/// Answers each connection from the proxy with the current script, then reads until the proxy closes.
async fn fake_receiver(listener: TcpListener, script: Arc<Mutex<Vec<u8>>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let bytes = script.lock().map(|s| s.clone()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(HANG, stream.read_to_end(&mut sink)).await;
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let proxy = &h.proxies[usize::from(choice >> 2) % h.proxies.len()];
    let addr = proxy[usize::from(choice & 3) % 3];
    let (initiator, receiver) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, DEFAULT_RECEIVER),
    };
    if let Ok(mut script) = h.script.lock() {
        *script = receiver.to_vec();
    }
    let started = std::time::Instant::now();
    h.rt.block_on(async {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            panic!("proxy at {addr} refused a connection");
        };
        let talk = async {
            let _ = stream.write_all(initiator).await;
            let _ = stream.shutdown().await;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
        };
        if tokio::time::timeout(HANG, talk).await.is_err() {
            panic!(
                "the session did not end within {HANG:?} after both peers finished: initiator {:?}, receiver {:?}",
                String::from_utf8_lossy(initiator),
                String::from_utf8_lossy(receiver)
            );
        }
    });
    if std::env::var_os("XMPPTAP_FUZZ_TIMING").is_some() {
        eprintln!("session input took {:?}", started.elapsed());
    }
});
