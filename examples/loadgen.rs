//! Load generator and benchmark: how much xmpptap costs between two S2S peers, measured side by side with a
//! direct connection and a plain `tokio::io::copy_bidirectional` relay, in one run.
//!
//! ```text
//! cargo run --release --example loadgen                      # everything, defaults below
//! cargo run --release --example loadgen -- --repeat 3        # three interleaved rounds, median and spread
//! cargo run --release --example loadgen -- --only relay,xmpptap --duration 10 --idle 0
//! ```
//!
//! # What runs where
//!
//! - This process holds both peers on one tokio runtime: the **initiating peer** opens `--streams` S2S streams
//!   (plaintext, or STARTTLS), authenticates each with a dialback request (`<db:result>`), then sends
//!   `<message>` stanzas of `--size` bytes; the **receiving peer** answers the dialback request `valid` and
//!   echoes every message back as a reply stanza of the same size **on the same stream**. Real S2S streams
//!   are one-way (the reply would travel on the receiver's own connection); for a benchmark, a bidirectional
//!   echo on one connection is what "echoed stanzas" means here. The receiver answers the dialback request
//!   itself instead of verifying the key with the initiator's authoritative server.
//! - What sits between them runs as its own process, so its CPU time is its own (`/proc/PID/stat`
//!   utime+stime): the real release binary `target/release/xmpptap proxy` (built first with
//!   `cargo build --release --bin xmpptap` unless `--xmpptap PATH`), and the plain relay, which is this
//!   binary re-executed as `loadgen relay` (a tokio multi-thread runtime with the same number of workers as
//!   xmpptap's, `TCP_NODELAY` on both legs as xmpptap sets, and `copy_bidirectional` per connection).
//!
//! # Scenarios (`--only` takes the keys)
//!
//! | key | what |
//! |---|---|
//! | `direct` | (a) initiator connects to the receiver directly |
//! | `relay` | (b) through the plain relay |
//! | `xmpptap` | (c) through xmpptap, no transcript |
//! | `jsonl` | (d) through xmpptap with `--log FILE` (JSON Lines) |
//! | `direct-tls` | end-to-end STARTTLS, direct (reference) |
//! | `relay-tls` | (b') end-to-end STARTTLS between the peers, carried by the plain relay |
//! | `xmpptap-tls` | (e) STARTTLS terminated by xmpptap on both legs (the initiator trusts xmpptap's CA) |
//!
//! Each scenario runs two phases on the same streams: **full speed** (every stream keeps `--window` stanzas in
//! flight, for `--duration` seconds or `--stanzas` in total) gives echoed stanzas/s, MB/s (request and reply
//! bytes, both directions) and the middle process's CPU time per echoed stanza (one stanza each way); **fixed
//! rate** (`--rate` stanzas/s in total, spread evenly over the streams, for `--rate-duration` seconds) gives
//! round-trip percentiles, from the write of a request to the read of its reply.
//!
//! Then the memory of idle connections: `--idle` plaintext S2S streams are opened through xmpptap and left
//! idle once the stream headers and features are exchanged (the connection is then in xmpptap's relay), and
//! `(VmRSS after - VmRSS before) / count` is reported from `/proc/PID/status`; `--idle-tls` the same with
//! STARTTLS on both legs. "Before" is measured after one warm-up connection, so one-time costs (the
//! certificate minted for the receiving domain) are not spread over the connections. The plain relay gets the
//! same test for reference. The count is capped by the file descriptor limit (each proxied connection takes two
//! descriptors in the proxy and two in this process); the report says when it was.
//!
//! Addresses: everything is on loopback `127.80.x.y`, with the initiator's connections spread over 16 source
//! addresses, so 10,000 connections never run out of ephemeral ports.

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::{Buf as _, BytesMut};
use clap::{Args, Parser, Subcommand};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use xmpptap::xml::framer::{FrameKind, Framer, Limits};

/// The initiating and receiving domains.
const FROM_DOMAIN: &str = "a.bench";
const TO_DOMAIN: &str = "b.bench";
/// Where xmpptap and the plain relay listen, the receiver listens, and the initiator connects from.
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 80, 0, 10);
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(127, 80, 0, 20);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(127, 80, 2, 1);
/// Initiator source addresses `127.80.1.1` to `127.80.1.16`.
const SOURCE_IPS: u8 = 16;
/// Most stanzas written at once by one stream at full speed.
const WRITE_BATCH: usize = 16;
/// The fixed-width id of every stanza: `SSSS-TTTTTTTTTTTTTTT`, stream number and send time in ns.
const ID_LEN: usize = 20;
/// How many connections are being opened at once in the idle test.
const OPEN_CONCURRENCY: usize = 256;
/// File descriptors this process and each proxy keep for themselves besides the connections.
const FD_RESERVE: u64 = 200;

#[derive(Parser, Debug)]
#[command(about = "Benchmark xmpptap against a direct connection and a plain relay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The plain relay the benchmark compares xmpptap with (started by the benchmark itself).
    Relay {
        /// Address to listen on (port 0: any; the bound address is printed as "listening on ADDR").
        #[arg(long)]
        listen: SocketAddr,
        /// Where every connection is relayed to.
        #[arg(long)]
        to: SocketAddr,
    },
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Streams (TCP connections) the initiator opens for the throughput and latency phases.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Stanzas to echo in total at full speed (split over the streams); instead of --duration.
    #[arg(long)]
    stanzas: Option<u64>,
    /// Seconds of the full-speed phase.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Bytes of each stanza (request and reply alike).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Stanzas per second, in total, of the fixed-rate (latency) phase.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of the fixed-rate phase (0 to skip it).
    #[arg(long, default_value_t = 10.0)]
    rate_duration: f64,
    /// Stanzas each stream keeps in flight at full speed.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Scenarios to run, comma-separated: direct,relay,xmpptap,jsonl,direct-tls,relay-tls,xmpptap-tls (empty:
    /// none, only the idle tests).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay,xmpptap,jsonl,direct-tls,relay-tls,xmpptap-tls"
    )]
    only: Vec<String>,
    /// Rounds over all scenarios (interleaved); the table shows the median and the spread.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Idle plaintext connections for the memory test (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Idle connections with STARTTLS on both legs for the memory test (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    idle_tls: usize,
    /// The xmpptap binary (default: build and use target/release/xmpptap).
    #[arg(long)]
    xmpptap: Option<PathBuf>,
    /// Extra arguments for `xmpptap proxy`, e.g. `--xmpptap-arg=--max-connections=20000` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    xmpptap_arg: Vec<String>,
    /// A command to run xmpptap under, for profiling: e.g. "valgrind --tool=callgrind". The CPU time reported is
    /// then that process's.
    #[arg(long)]
    wrap: Option<String>,
    /// Where the CA, transcripts and the proxies' stderr go.
    #[arg(long, default_value = "target/loadgen")]
    workdir: PathBuf,
    /// Keep the JSON Lines transcripts (they are large) instead of deleting them after counting.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Sub::Relay { listen, to }) => runtime.block_on(relay_main(listen, to)),
        None => runtime.block_on(bench_main(cli.bench)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The plain relay (`loadgen relay`)

/// Accepts connections and relays each to `to` with `copy_bidirectional`, until killed.
async fn relay_main(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (mut down, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = down.set_nodelay(true);
            let Ok(mut up) = TcpStream::connect(to).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stanzas

/// The bytes the peers exchange, all of exactly `size` bytes so that the data phase needs no parser: the id
/// sits at a fixed offset in both the request and the reply.
#[derive(Debug)]
struct Stanzas {
    size: usize,
    request: Vec<u8>,
    request_id: usize,
    reply: Vec<u8>,
    reply_id: usize,
}

impl Stanzas {
    fn new(size: usize) -> anyhow::Result<Self> {
        let (request, request_id) = Self::build(
            size,
            &format!(
                "<message from='load@{FROM_DOMAIN}/bench' to='echo@{TO_DOMAIN}' type='chat' id='"
            ),
        )?;
        let (reply, reply_id) = Self::build(
            size,
            &format!(
                "<message from='echo@{TO_DOMAIN}' to='load@{FROM_DOMAIN}/bench' type='chat' id='"
            ),
        )?;
        Ok(Stanzas {
            size,
            request,
            request_id,
            reply,
            reply_id,
        })
    }

    /// A stanza of `size` bytes starting with `head`, the id (zeroes) right after it, a padded body.
    fn build(size: usize, head: &str) -> anyhow::Result<(Vec<u8>, usize)> {
        let mut out = head.as_bytes().to_vec();
        let id_at = out.len();
        out.extend_from_slice(&[b'0'; ID_LEN]);
        out.extend_from_slice(b"'><body>");
        let tail = b"</body></message>";
        let fixed = out.len() + tail.len();
        ensure!(size >= fixed, "--size must be at least {fixed} bytes");
        let text = b"The quick brown fox jumps over the lazy dog. ";
        out.extend((0..size - fixed).map(|i| text[i % text.len()]));
        out.extend_from_slice(tail);
        Ok((out, id_at))
    }

    /// Appends a request from stream `stream`, stamped with `ns`.
    fn push_request(&self, out: &mut Vec<u8>, stream: usize, ns: u64) {
        let at = out.len() + self.request_id;
        out.extend_from_slice(&self.request);
        write_id(&mut out[at..at + ID_LEN], stream, ns);
    }

    /// Appends the reply to `request` (its id copied).
    fn push_reply(&self, out: &mut Vec<u8>, request: &[u8]) {
        let at = out.len() + self.reply_id;
        out.extend_from_slice(&self.reply);
        out[at..at + ID_LEN].copy_from_slice(&request[self.request_id..self.request_id + ID_LEN]);
    }

    /// The send time stamped in a reply.
    fn reply_stamp(&self, reply: &[u8]) -> u64 {
        let digits = &reply[self.reply_id + 5..self.reply_id + ID_LEN];
        digits
            .iter()
            .fold(0, |n, &d| n * 10 + u64::from(d.wrapping_sub(b'0')))
    }
}

/// `SSSS-TTTTTTTTTTTTTTT`: stream number (mod 10^4) and a time in ns (mod 10^15, about 11 days).
fn write_id(out: &mut [u8], stream: usize, ns: u64) {
    let mut s = stream % 10_000;
    for d in out[..4].iter_mut().rev() {
        *d = b'0' + (s % 10) as u8;
        s /= 10;
    }
    out[4] = b'-';
    let mut t = ns % 1_000_000_000_000_000;
    for d in out[5..ID_LEN].iter_mut().rev() {
        *d = b'0' + (t % 10) as u8;
        t /= 10;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Peers: negotiation

/// Any byte stream a peer talks over (TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// A stream's reader: the bytes read but not consumed, and a framer for the negotiation.
struct Reader {
    buf: BytesMut,
    framer: Framer,
}

impl Reader {
    fn new() -> Self {
        Reader {
            buf: BytesMut::with_capacity(4096),
            framer: Framer::new(Limits::default()),
        }
    }

    /// The next whole frame (whitespace skipped): its kind and bytes.
    async fn frame<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
    ) -> anyhow::Result<(FrameKind, Vec<u8>)> {
        loop {
            if let Some(frame) = self.framer.next_frame(&self.buf)? {
                let bytes = self.buf.split_to(frame.len).to_vec();
                if frame.kind != FrameKind::Whitespace {
                    return Ok((frame.kind, bytes));
                }
                continue;
            }
            self.buf.reserve(4096);
            if io.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed during negotiation");
            }
        }
    }

    /// Expects a frame starting with `prefix`.
    async fn expect<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        prefix: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let (_, bytes) = self.frame(io).await?;
        ensure!(
            find(&bytes, prefix.as_bytes()).is_some(),
            "expected {prefix}, got {}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(bytes)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn stream_header(from: &str, to: &str, id: Option<&str>) -> Vec<u8> {
    let id = id.map_or(String::new(), |id| format!(" id='{id}'"));
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='{from}' to='{to}'{id} version='1.0'>"
    )
    .into_bytes()
}

/// How far the initiator takes a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Through dialback: ready for stanzas.
    Ready,
    /// Stream headers and features exchanged (after STARTTLS when TLS): an idle connection.
    Features,
}

/// One initiator stream, negotiated.
struct Conn {
    r: ReadHalf<BoxIo>,
    w: WriteHalf<BoxIo>,
    /// Bytes read past the negotiation.
    buf: BytesMut,
    index: usize,
}

/// Opens stream `index` to `addr`: stream header, STARTTLS when `tls` is given and offered, dialback.
async fn initiate(
    addr: SocketAddr,
    index: usize,
    tls: Option<&TlsConnector>,
    until: Until,
) -> anyhow::Result<(BoxIo, BytesMut)> {
    let source = Ipv4Addr::new(127, 80, 1, 1 + (index % usize::from(SOURCE_IPS)) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let mut tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut reader = Reader::new();
    let features = open_stream(&mut tcp, &mut reader).await?;
    let Some(connector) = tls else {
        ensure!(
            find(&features, b"<starttls").is_none(),
            "the receiver requires STARTTLS"
        );
        return finish(Box::new(tcp), reader, until).await;
    };
    ensure!(
        find(&features, b"<starttls").is_some(),
        "STARTTLS not offered"
    );
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    reader.expect(&mut tcp, "<proceed").await?;
    ensure!(reader.buf.is_empty(), "bytes after <proceed/>");
    let name = ServerName::try_from(TO_DOMAIN)?;
    let mut tls = connector.connect(name, tcp).await.context("TLS")?;
    reader.framer.reset();
    let features = open_stream(&mut tls, &mut reader).await?;
    ensure!(
        find(&features, b"<starttls").is_none(),
        "STARTTLS offered again"
    );
    finish(Box::new(tls), reader, until).await
}

/// Sends the initiator's header, reads the receiver's header and features; returns the features.
async fn open_stream<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    reader: &mut Reader,
) -> anyhow::Result<Vec<u8>> {
    io.write_all(&stream_header(FROM_DOMAIN, TO_DOMAIN, None))
        .await?;
    io.flush().await?;
    let (kind, _) = reader.frame(io).await?;
    ensure!(
        kind == FrameKind::StreamOpen,
        "expected the receiver's stream header"
    );
    reader.expect(io, "features").await
}

/// Dialback (unless only features were wanted).
async fn finish(
    mut io: BoxIo,
    mut reader: Reader,
    until: Until,
) -> anyhow::Result<(BoxIo, BytesMut)> {
    if until == Until::Ready {
        let key = "3b5c8f1a9e7d4c2b6a0f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39";
        io.write_all(
            format!("<db:result from='{FROM_DOMAIN}' to='{TO_DOMAIN}'>{key}</db:result>")
                .as_bytes(),
        )
        .await?;
        io.flush().await?;
        reader.expect(&mut io, "type='valid'").await?;
    }
    Ok((io, reader.buf))
}

/// The receiving peer: accepts streams until `stop`, negotiates each (offering STARTTLS when `tls` is given),
/// answers dialback and echoes stanzas.
async fn receiver(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stanzas: Arc<Stanzas>,
    stop: CancellationToken,
) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        next_id += 1;
        let (tls, stanzas, stop) = (tls.clone(), stanzas.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                result = receive(tcp, tls, stanzas, next_id) => if let Err(e) = result {
                    eprintln!("receiver: stream {next_id}: {e:#}");
                },
            }
        });
    }
}

async fn receive(
    mut tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    stanzas: Arc<Stanzas>,
    id: u64,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut reader = Reader::new();
    let id = format!("bench-{id}");
    let mut io: BoxIo = match tls {
        Some(acceptor) => {
            answer_stream(&mut tcp, &mut reader, &id, true).await?;
            reader.expect(&mut tcp, "<starttls").await?;
            tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            let mut tls = acceptor.accept(tcp).await.context("TLS")?;
            reader.framer.reset();
            answer_stream(&mut tls, &mut reader, &id, false).await?;
            Box::new(tls)
        }
        None => {
            answer_stream(&mut tcp, &mut reader, &id, false).await?;
            Box::new(tcp)
        }
    };
    reader.expect(&mut io, "<db:result").await?;
    io.write_all(
        format!("<db:result from='{TO_DOMAIN}' to='{FROM_DOMAIN}' type='valid' id='{id}'/>")
            .as_bytes(),
    )
    .await?;
    io.flush().await?;
    echo(io, reader.buf, &stanzas).await
}

/// Reads the initiator's header and answers with the receiver's header and features.
async fn answer_stream<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    reader: &mut Reader,
    id: &str,
    offer_tls: bool,
) -> anyhow::Result<()> {
    let (kind, _) = reader.frame(io).await?;
    ensure!(
        kind == FrameKind::StreamOpen,
        "expected the initiator's stream header"
    );
    let mut out = stream_header(TO_DOMAIN, FROM_DOMAIN, Some(id));
    out.extend_from_slice(b"<stream:features>");
    if offer_tls {
        out.extend_from_slice(
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
        );
    }
    out.extend_from_slice(
        b"<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
    );
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// The receiver's data phase: every request gets its reply; `</stream:stream>` is answered and closes.
async fn echo(mut io: BoxIo, mut buf: BytesMut, stanzas: &Stanzas) -> anyhow::Result<()> {
    let size = stanzas.size;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        while buf.len() >= size || buf.starts_with(b"</") {
            if buf.starts_with(b"</stream:stream>") {
                io.write_all(b"</stream:stream>").await?;
                io.shutdown().await?;
                return Ok(());
            }
            ensure!(
                buf.starts_with(b"<message "),
                "unexpected bytes: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(60)])
            );
            stanzas.push_reply(&mut out, &buf[..size]);
            buf.advance(size);
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
        buf.reserve(64 * 1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Peers: load

/// What one phase asks of every stream.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// As fast as the window allows: until `deadline`, or `count` stanzas per stream.
    Full {
        deadline: Option<Instant>,
        count: Option<u64>,
        window: usize,
    },
    /// One stanza every `1/rate` seconds overall, streams taking turns, `count` per stream.
    Rate {
        start: Instant,
        rate: f64,
        streams: usize,
        count: u64,
    },
}

/// What one stream measured in a phase.
#[derive(Debug, Default)]
struct StreamResult {
    echoed: u64,
    /// Round trips in ns (fixed-rate phase only).
    rtts: Vec<u64>,
    /// When the last reply arrived.
    last: Option<Instant>,
}

/// Runs one phase on one stream: writes requests per `load` while reading replies, until every request
/// written has been answered.
async fn drive(
    mut conn: Conn,
    load: Load,
    stanzas: Arc<Stanzas>,
    epoch: Instant,
) -> anyhow::Result<(Conn, StreamResult)> {
    let size = stanzas.size;
    let window_size = match load {
        Load::Full { window, .. } => window,
        Load::Rate { .. } => 1 << 20,
    };
    let window = Semaphore::new(window_size);
    // Requests written in total, once the writer is done (u64::MAX until then).
    let total = AtomicU64::new(u64::MAX);
    let done = Notify::new();
    let stamp = || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let index = conn.index;
    let Conn { r, w, buf, .. } = &mut conn;

    let write = async {
        let mut sent = 0u64;
        let mut out = Vec::with_capacity(size * WRITE_BATCH);
        let result: anyhow::Result<()> = async {
            match load {
                Load::Full {
                    deadline, count, ..
                } => loop {
                    if count.is_some_and(|c| sent >= c)
                        || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    window.acquire().await?.forget();
                    let mut n = 1;
                    let room = count.map_or(WRITE_BATCH as u64, |c| c - sent);
                    while (n as u64) < room.min(WRITE_BATCH as u64) {
                        match window.try_acquire() {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    out.clear();
                    let ns = stamp();
                    for _ in 0..n {
                        stanzas.push_request(&mut out, index, ns);
                    }
                    w.write_all(&out).await?;
                    w.flush().await?;
                    sent += n as u64;
                },
                Load::Rate {
                    start,
                    rate,
                    streams,
                    count,
                } => {
                    for j in 0..count {
                        let slot = (j * streams as u64 + index as u64) as f64 / rate;
                        tokio::time::sleep_until((start + Duration::from_secs_f64(slot)).into())
                            .await;
                        out.clear();
                        stanzas.push_request(&mut out, index, stamp());
                        w.write_all(&out).await?;
                        w.flush().await?;
                        sent += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        total.store(sent, Ordering::Release);
        done.notify_one();
        result
    };

    let read = async {
        let mut result = StreamResult::default();
        let record = matches!(load, Load::Rate { .. });
        loop {
            if total.load(Ordering::Acquire) == result.echoed {
                return Ok::<_, anyhow::Error>(result);
            }
            buf.reserve(64 * 1024);
            tokio::select! {
                n = r.read_buf(buf) => {
                    ensure!(n? > 0, "the peer closed the stream during the load");
                    let now = Instant::now();
                    let mut got = 0;
                    while buf.len() >= size {
                        ensure!(buf.starts_with(b"<message "), "unexpected bytes in the echo: {}",
                            String::from_utf8_lossy(&buf[..buf.len().min(60)]));
                        if record {
                            let sent = stanzas.reply_stamp(&buf[..size]);
                            let at = u64::try_from((now - epoch).as_nanos()).unwrap_or(u64::MAX);
                            result.rtts.push(at.saturating_sub(sent));
                        }
                        buf.advance(size);
                        got += 1;
                    }
                    if got > 0 {
                        result.echoed += got as u64;
                        result.last = Some(now);
                        window.add_permits(got);
                    }
                }
                _ = done.notified(), if total.load(Ordering::Acquire) == u64::MAX => {}
            }
        }
    };

    let (written, read) = tokio::join!(write, read);
    written?;
    let result = read?;
    Ok((conn, result))
}

/// Closes a stream politely: `</stream:stream>`, then the receiver's close and end of stream.
async fn close(mut conn: Conn) -> anyhow::Result<()> {
    conn.w.write_all(b"</stream:stream>").await?;
    conn.w.flush().await?;
    let mut buf = std::mem::take(&mut conn.buf);
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            buf.reserve(1024);
            if conn.r.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await;
    ensure!(waited.is_ok(), "the stream did not close within 5 s");
    ensure!(
        find(&buf, b"</stream:stream>").is_some(),
        "closed without </stream:stream>"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Processes

/// A middle process (xmpptap or the plain relay), killed on Drop.
struct Middle {
    child: Child,
    addr: SocketAddr,
    name: String,
    stderr: PathBuf,
}

impl Middle {
    /// Starts `program args`, stderr to `stderr`, and waits for "listening on ADDR" there.
    fn start(
        name: &str,
        program: &[String],
        args: &[String],
        stderr: PathBuf,
    ) -> anyhow::Result<Middle> {
        let file = std::fs::File::create(&stderr)
            .with_context(|| format!("create {}", stderr.display()))?;
        let child = Command::new(&program[0])
            .args(&program[1..])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {}", program.join(" ")))?;
        let mut middle = Middle {
            child,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            name: name.to_owned(),
            stderr,
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&middle.stderr).unwrap_or_default();
            let addr = text.lines().find_map(|line| {
                let rest = line.split("listening on ").nth(1)?;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = addr {
                middle.addr = addr;
                return Ok(middle);
            }
            if let Ok(Some(status)) = middle.child.try_wait() {
                bail!("{name} exited ({status}) before listening:\n{text}");
            }
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "{name} did not start listening within 120 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then up to 10 s for it to exit (xmpptap flushes its transcript), then SIGKILL.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not exit within 10 s of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Middle {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in seconds (`/proc/PID/stat`, all threads).
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parentheses: state is field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises this process's soft limit on open files to the hard limit (children inherit it), with `prlimit`
/// (the crate forbids unsafe code, so no setrlimit here). Returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut numbers = line
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok());
        Some((numbers.next()?, numbers.next().unwrap_or(u64::MAX)))
    };
    let Some((soft, hard)) = read() else {
        return 1024;
    };
    if soft < hard {
        let _ = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    read().map_or(soft, |(soft, _)| soft)
}

// ---------------------------------------------------------------------------------------------------------------
// The benchmark

/// What sits between the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Relay,
    Xmpptap { jsonl: bool },
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    key: &'static str,
    label: &'static str,
    via: Via,
    tls: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "direct",
        label: "(a) direct",
        via: Via::Direct,
        tls: false,
    },
    Scenario {
        key: "relay",
        label: "(b) plain relay",
        via: Via::Relay,
        tls: false,
    },
    Scenario {
        key: "xmpptap",
        label: "(c) xmpptap, no transcript",
        via: Via::Xmpptap { jsonl: false },
        tls: false,
    },
    Scenario {
        key: "jsonl",
        label: "(d) xmpptap --log JSONL",
        via: Via::Xmpptap { jsonl: true },
        tls: false,
    },
    Scenario {
        key: "direct-tls",
        label: "direct, e2e TLS",
        via: Via::Direct,
        tls: true,
    },
    Scenario {
        key: "relay-tls",
        label: "(b') plain relay, e2e TLS",
        via: Via::Relay,
        tls: true,
    },
    Scenario {
        key: "xmpptap-tls",
        label: "(e) xmpptap, TLS both legs",
        via: Via::Xmpptap { jsonl: false },
        tls: true,
    },
];

/// The result of one scenario run.
#[derive(Debug, Clone, Default)]
struct Measured {
    stanzas_per_s: f64,
    mb_per_s: f64,
    /// Middle process CPU per echoed stanza at full speed, µs.
    cpu_us: Option<f64>,
    /// Middle process CPU use during the fixed-rate phase, % of one core.
    rate_cpu_pct: Option<f64>,
    /// This process (both peers) CPU per echoed stanza at full speed, µs.
    peers_cpu_us: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Notes about the transcript (records, bytes, dropped events).
    note: String,
}

/// Everything that stays the same across scenarios.
struct Bench {
    args: BenchArgs,
    stanzas: Arc<Stanzas>,
    epoch: Instant,
    ticks: f64,
    xmpptap: Vec<String>,
    relay: Vec<String>,
    workdir: PathBuf,
    ca_dir: PathBuf,
    receiver_tls: TlsAcceptor,
    /// Whether this xmpptap has connection limits (`--max-connections`, `--max-connections-per-domain`), which
    /// the idle test raises to its connection count.
    connection_limits: bool,
    /// Trusts the receiver's own certificate (end-to-end TLS).
    e2e_tls: TlsConnector,
    /// Trusts xmpptap's CA (TLS terminated by xmpptap).
    xmpptap_tls: TlsConnector,
    fd_limit: u64,
}

async fn bench_main(mut args: BenchArgs) -> anyhow::Result<()> {
    // `--only=` runs no load scenario (the idle tests only).
    args.only.retain(|key| !key.is_empty());
    for key in &args.only {
        ensure!(
            SCENARIOS.iter().any(|s| s.key == key),
            "unknown scenario {key:?}; known: {}",
            SCENARIOS
                .iter()
                .map(|s| s.key)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    ensure!(
        args.streams > 0 && args.window > 0 && args.rate > 0.0,
        "--streams, --window and --rate must be positive"
    );
    let fd_limit = raise_fd_limit();
    let workdir = args.workdir.clone();
    std::fs::create_dir_all(&workdir)?;
    let workdir = workdir.canonicalize()?;
    let xmpptap = xmpptap_binary(&args)?;
    let mut xmpptap_cmd: Vec<String> = args
        .wrap
        .as_deref()
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    xmpptap_cmd.push(xmpptap.display().to_string());
    let relay = vec![
        std::env::current_exe()?.display().to_string(),
        String::from("relay"),
    ];

    // xmpptap's CA, created now so that the initiator can trust it before xmpptap runs.
    let ca_dir = workdir.join("ca");
    if !ca_dir.join("ca.pem").exists() {
        let status = Command::new(&xmpptap)
            .args(["ca", "init", "--ca-dir"])
            .arg(&ca_dir)
            .stderr(Stdio::null())
            .status()?;
        ensure!(status.success(), "xmpptap ca init failed");
    }
    let (receiver_tls, e2e_tls) = receiver_tls()?;
    let xmpptap_tls = client_tls(&pem_certs(&ca_dir.join("ca.pem"))?)?;

    let help = Command::new(&xmpptap).args(["proxy", "--help"]).output()?;
    let connection_limits =
        String::from_utf8_lossy(&help.stdout).contains("--max-connections-per-domain");
    let bench = Bench {
        connection_limits,
        stanzas: Arc::new(Stanzas::new(args.size)?),
        epoch: Instant::now(),
        ticks: clock_ticks(),
        xmpptap: xmpptap_cmd,
        relay,
        workdir,
        ca_dir,
        receiver_tls,
        e2e_tls,
        xmpptap_tls,
        fd_limit,
        args,
    };
    let args = &bench.args;
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| args.only.iter().any(|k| k == s.key))
        .copied()
        .collect();

    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!(
        "loadgen: {} streams, {}-byte stanzas, full speed {} (window {}), fixed rate {}/s for {} s; {} CPUs; \
         xmpptap {} ({})",
        args.streams,
        args.size,
        args.stanzas.map_or_else(
            || format!("{} s", args.duration),
            |n| format!("{n} stanzas")
        ),
        args.window,
        args.rate,
        args.rate_duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.xmpptap.join(" "),
        git.trim(),
    );

    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); scenarios.len()];
    for round in 0..args.repeat {
        for (i, scenario) in scenarios.iter().enumerate() {
            let measured = bench
                .run(scenario)
                .await
                .with_context(|| format!("scenario {}", scenario.key))?;
            println!(
                "  round {}: {:<28} {:>9.0} stanzas/s {:>7.2} MB/s  p50 {:.3} p90 {:.3} p99 {:.3} ms  \
                 CPU {}  peers {:.2} µs/stanza {}",
                round + 1,
                scenario.label,
                measured.stanzas_per_s,
                measured.mb_per_s,
                measured.p50_ms,
                measured.p90_ms,
                measured.p99_ms,
                measured
                    .cpu_us
                    .map_or_else(|| String::from("-"), |c| format!("{c:.2} µs/stanza")),
                measured.peers_cpu_us,
                measured.note,
            );
            results[i].push(measured);
        }
    }
    println!();
    print!("{}", table(&bench, &scenarios, &results));

    let mut idle_rows = Vec::new();
    for (tls, count) in [(false, args.idle), (true, args.idle_tls)] {
        if count == 0 {
            continue;
        }
        for via in [Via::Xmpptap { jsonl: false }, Via::Relay] {
            let row = bench
                .idle(via, tls, count)
                .await
                .with_context(|| format!("idle test {via:?} tls={tls}"))?;
            println!("  {row}");
            idle_rows.push(row);
        }
    }
    if !idle_rows.is_empty() {
        println!();
        println!("| idle connections | count | RSS before | RSS after | per connection |");
        println!("|---|---:|---:|---:|---:|");
        for row in &idle_rows {
            println!("{}", row.markdown());
        }
    }
    println!();
    print!("{}", targets(&scenarios, &results, &idle_rows));
    Ok(())
}

/// The xmpptap binary: `--xmpptap`, or target/release/xmpptap built now (cheap when up to date).
fn xmpptap_binary(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.xmpptap {
        return Ok(path.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));
    eprintln!("loadgen: cargo build --release --bin xmpptap");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "xmpptap"])
        .status()
        .context("run cargo build")?;
    ensure!(
        status.success(),
        "cargo build --release --bin xmpptap failed"
    );
    // target/release/examples/loadgen -> target/release/xmpptap
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory")?;
    let path = release.join("xmpptap");
    ensure!(path.exists(), "{} not found", path.display());
    Ok(path)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The receiver's TLS server config (a self-signed certificate for the receiving domain) and a client config
/// that trusts exactly that certificate.
fn receiver_tls() -> anyhow::Result<(TlsAcceptor, TlsConnector)> {
    let certified = rcgen::generate_simple_self_signed(vec![TO_DOMAIN.to_owned()])?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| anyhow!("receiver key: {e}"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    Ok((TlsAcceptor::from(Arc::new(server)), client_tls(&[cert])?))
}

/// A client config trusting `roots`.
fn client_tls(roots: &[CertificateDer<'static>]) -> anyhow::Result<TlsConnector> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

impl Bench {
    /// Starts what sits between the peers; returns the address the initiator connects to.
    fn start_middle(
        &self,
        via: Via,
        receiver: SocketAddr,
        tag: &str,
        connections: usize,
    ) -> anyhow::Result<(Option<Middle>, Option<PathBuf>)> {
        match via {
            Via::Direct => Ok((None, None)),
            Via::Relay => {
                let args = vec![
                    String::from("--listen"),
                    SocketAddr::new(IpAddr::V4(RELAY_IP), 0).to_string(),
                    String::from("--to"),
                    receiver.to_string(),
                ];
                let stderr = self.workdir.join(format!("relay-{tag}.stderr"));
                Ok((
                    Some(Middle::start("plain relay", &self.relay, &args, stderr)?),
                    None,
                ))
            }
            Via::Xmpptap { jsonl } => {
                let mut args: Vec<String> = [
                    "proxy",
                    "--s2s-listen",
                    &SocketAddr::new(IpAddr::V4(PROXY_IP), 0).to_string(),
                    "--route",
                    &format!("{TO_DOMAIN}={receiver}"),
                    "--dangerous-accept-any-upstream-cert",
                    "--ca-dir",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.push(self.ca_dir.display().to_string());
                let log = jsonl.then(|| self.workdir.join(format!("transcript-{tag}.jsonl")));
                if let Some(log) = &log {
                    let _ = std::fs::remove_file(log);
                    args.push(String::from("--log"));
                    args.push(log.display().to_string());
                }
                if self.connection_limits {
                    let limit = (connections + 100).to_string();
                    for flag in ["--max-connections", "--max-connections-per-domain"] {
                        args.push(flag.to_owned());
                        args.push(limit.clone());
                    }
                }
                args.extend(self.args.xmpptap_arg.iter().cloned());
                let stderr = self.workdir.join(format!("xmpptap-{tag}.stderr"));
                Ok((
                    Some(Middle::start("xmpptap", &self.xmpptap, &args, stderr)?),
                    log,
                ))
            }
        }
    }

    fn connector(&self, via: Via, tls: bool) -> Option<&TlsConnector> {
        match (tls, via) {
            (false, _) => None,
            (true, Via::Xmpptap { .. }) => Some(&self.xmpptap_tls),
            (true, _) => Some(&self.e2e_tls),
        }
    }

    async fn run(&self, scenario: &Scenario) -> anyhow::Result<Measured> {
        let args = &self.args;
        let listener = TcpListener::bind((RECEIVER_IP, 0)).await?;
        let receiver_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let _stop_receiver = stop.clone().drop_guard();
        tokio::spawn(receiver(
            listener,
            scenario.tls.then(|| self.receiver_tls.clone()),
            self.stanzas.clone(),
            stop.clone(),
        ));
        let (mut middle, log) =
            self.start_middle(scenario.via, receiver_addr, scenario.key, args.streams)?;
        let target = middle.as_ref().map_or(receiver_addr, |m| m.addr);
        let connector = self.connector(scenario.via, scenario.tls).cloned();

        let mut opening = tokio::task::JoinSet::new();
        for index in 0..args.streams {
            let connector = connector.clone();
            opening.spawn(async move {
                let (io, buf) = initiate(target, index, connector.as_ref(), Until::Ready).await?;
                let (r, w) = tokio::io::split(io);
                Ok::<_, anyhow::Error>(Conn { r, w, buf, index })
            });
        }
        let mut conns = Vec::new();
        while let Some(opened) = opening.join_next().await {
            conns.push(opened??);
        }

        let pid = middle.as_ref().map(Middle::pid);
        let own = std::process::id();
        let cpu = |pid: Option<u32>| pid.map(|p| cpu_seconds(p, self.ticks)).transpose();

        // Full speed.
        let per_stream = args.stanzas.map(|n| n.div_ceil(args.streams as u64));
        let start = Instant::now();
        let load = Load::Full {
            deadline: per_stream
                .is_none()
                .then(|| start + Duration::from_secs_f64(args.duration)),
            count: per_stream,
            window: args.window,
        };
        let (cpu0, own0) = (cpu(pid)?, cpu_seconds(own, self.ticks)?);
        let (conns_back, full) = self.phase(conns, load).await?;
        let (cpu1, own1) = (cpu(pid)?, cpu_seconds(own, self.ticks)?);
        let echoed: u64 = full.iter().map(|r| r.echoed).sum();
        let last = full.iter().filter_map(|r| r.last).max().unwrap_or(start);
        let secs = (last - start).as_secs_f64().max(1e-9);
        let mut measured = Measured {
            stanzas_per_s: echoed as f64 / secs,
            mb_per_s: (echoed * 2 * self.stanzas.size as u64) as f64 / secs / 1e6,
            cpu_us: cpu0
                .zip(cpu1)
                .map(|(a, b)| (b - a) / echoed.max(1) as f64 * 1e6),
            peers_cpu_us: (own1 - own0) / echoed.max(1) as f64 * 1e6,
            ..Measured::default()
        };

        // Fixed rate.
        let mut echoed_in_all = echoed;
        let mut conns = conns_back;
        if args.rate_duration > 0.0 {
            let count = ((args.rate * args.rate_duration) / args.streams as f64).ceil() as u64;
            let start = Instant::now() + Duration::from_millis(50);
            let load = Load::Rate {
                start,
                rate: args.rate,
                streams: args.streams,
                count,
            };
            let cpu0 = cpu(pid)?;
            let (back, rated) = self.phase(conns, load).await?;
            let cpu1 = cpu(pid)?;
            conns = back;
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            measured.rate_cpu_pct = cpu0.zip(cpu1).map(|(a, b)| (b - a) / elapsed * 100.0);
            echoed_in_all += rated.iter().map(|r| r.echoed).sum::<u64>();
            let mut rtts: Vec<u64> = rated.into_iter().flat_map(|r| r.rtts).collect();
            rtts.sort_unstable();
            let pct = |p: f64| {
                rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
                    .map_or(0.0, |&ns| ns as f64 / 1e6)
            };
            measured.p50_ms = pct(0.50);
            measured.p90_ms = pct(0.90);
            measured.p99_ms = pct(0.99);
            measured.p999_ms = pct(0.999);
        }

        let mut closing = tokio::task::JoinSet::new();
        for conn in conns {
            closing.spawn(close(conn));
        }
        while let Some(closed) = closing.join_next().await {
            closed??;
        }
        if let Some(middle) = &mut middle {
            middle.stop();
        }
        if let Some(log) = log {
            // Each echo is a request and a reply, both relayed by the middle process.
            measured.note = transcript_note(&log, 2 * echoed_in_all)?;
            if !args.keep {
                let _ = std::fs::remove_file(&log);
            }
        }
        Ok(measured)
    }

    /// Runs `load` on every stream at once; returns the streams (in order) and what each measured.
    async fn phase(
        &self,
        conns: Vec<Conn>,
        load: Load,
    ) -> anyhow::Result<(Vec<Conn>, Vec<StreamResult>)> {
        let mut running = tokio::task::JoinSet::new();
        for conn in conns {
            running.spawn(drive(conn, load, self.stanzas.clone(), self.epoch));
        }
        let mut done = Vec::new();
        while let Some(finished) = running.join_next().await {
            done.push(finished??);
        }
        done.sort_by_key(|(conn, _)| conn.index);
        Ok(done.into_iter().unzip())
    }

    /// Opens `count` idle streams through `via` and reports the middle process's RSS per connection.
    async fn idle(&self, via: Via, tls: bool, count: usize) -> anyhow::Result<IdleRow> {
        // Two descriptors per connection here (initiator and receiver ends) and in the proxy.
        let cap = (self.fd_limit.saturating_sub(FD_RESERVE) / 2) as usize;
        let capped = cap / 100 * 100;
        let count_used = count.min(capped);
        let listener = TcpListener::bind((RECEIVER_IP, 0)).await?;
        let receiver_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let _stop_receiver = stop.clone().drop_guard();
        tokio::spawn(receiver(
            listener,
            tls.then(|| self.receiver_tls.clone()),
            self.stanzas.clone(),
            stop.clone(),
        ));
        let tag = format!("idle{}", if tls { "-tls" } else { "" });
        let (middle, _) = self.start_middle(via, receiver_addr, &tag, count_used)?;
        let middle = middle.context("the idle test needs a middle process")?;
        let connector = self.connector(via, tls).cloned();

        // Warm-up: one connection opened and closed.
        let (warm, _) = initiate(middle.addr, 0, connector.as_ref(), Until::Features).await?;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(middle.pid())?;

        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
        let mut opening = tokio::task::JoinSet::new();
        for index in 0..count_used {
            let (connector, gate) = (connector.clone(), gate.clone());
            let addr = middle.addr;
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let (io, _) = initiate(addr, index, connector.as_ref(), Until::Features).await?;
                Ok::<_, anyhow::Error>(io)
            });
        }
        let mut open = Vec::with_capacity(count_used);
        while let Some(opened) = opening.join_next().await {
            open.push(opened??);
        }
        let took = started.elapsed();
        // Let the proxy settle into its relay for every connection.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(middle.pid())?;
        stop.cancel();
        drop(open);
        drop(middle);
        Ok(IdleRow {
            what: String::from(match (via, tls) {
                (Via::Xmpptap { .. }, false) => "xmpptap, plaintext",
                (Via::Xmpptap { .. }, true) => "xmpptap, STARTTLS on both legs",
                (_, false) => "plain relay, plaintext",
                (_, true) => "plain relay, end-to-end TLS",
            }),
            xmpptap: matches!(via, Via::Xmpptap { .. }),
            tls,
            requested: count,
            count: count_used,
            before,
            after,
            took,
        })
    }
}

/// Counts the records of a JSON Lines transcript, its stanza records against the `relayed` stanzas they
/// should record, and the events it says were dropped (each one a read's run of stanzas, or one other event).
fn transcript_note(path: &Path, relayed: u64) -> anyhow::Result<String> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let bytes = file.metadata()?.len();
    let (mut records, mut stanzas, mut dropped) = (0u64, 0u64, 0u64);
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        records += 1;
        if line.contains("\"event\":\"stanza\"") {
            stanzas += 1;
        } else if line.contains("\"event\":\"tap_dropped\"") {
            let count = line
                .split("\"count\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            dropped += count;
        }
    }
    Ok(format!(
        "[transcript: {records} records, {stanzas} stanza records of {relayed} stanzas relayed, {:.0} MB, \
         {dropped} events dropped]",
        bytes as f64 / 1e6
    ))
}

#[derive(Debug)]
struct IdleRow {
    what: String,
    xmpptap: bool,
    tls: bool,
    requested: usize,
    count: usize,
    before: u64,
    after: u64,
    took: Duration,
}

impl IdleRow {
    fn per_conn_kib(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.count.max(1) as f64
    }

    fn markdown(&self) -> String {
        let count = if self.count < self.requested {
            format!("{} (of {}: fd limit)", self.count, self.requested)
        } else {
            self.count.to_string()
        };
        format!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | **{:.1} KiB** |",
            self.what,
            count,
            self.before as f64 / 1024.0,
            self.after as f64 / 1024.0,
            self.per_conn_kib()
        )
    }
}

impl std::fmt::Display for IdleRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idle: {:<32} {:>6} connections in {:.1} s: RSS {} -> {} KiB, {:.1} KiB per connection",
            self.what,
            self.count,
            self.took.as_secs_f64(),
            self.before,
            self.after,
            self.per_conn_kib()
        )
    }
}

/// Median and, with several rounds, the spread.
fn summary(values: &[f64], precision: usize) -> String {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let Some(median) = median(&sorted) else {
        return String::from("-");
    };
    if sorted.len() == 1 {
        format!("{median:.precision$}")
    } else {
        format!(
            "{median:.precision$} ({:.precision$}–{:.precision$})",
            sorted[0],
            sorted[sorted.len() - 1]
        )
    }
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The reference a scenario's ratios are taken to: the plain relay, with or without TLS.
fn reference(scenario: &Scenario) -> &'static str {
    if scenario.tls {
        "relay-tls"
    } else {
        "relay"
    }
}

/// The results table, in Markdown.
fn table(bench: &Bench, scenarios: &[Scenario], results: &[Vec<Measured>]) -> String {
    let column = |key: &str, f: &dyn Fn(&Measured) -> Option<f64>| -> Option<Vec<f64>> {
        let i = scenarios.iter().position(|s| s.key == key)?;
        Some(results[i].iter().filter_map(f).collect())
    };
    let mut out = String::new();
    let args = &bench.args;
    let _ = writeln!(
        out,
        "{} streams, {}-byte stanzas; throughput at full speed, latency at {} stanzas/s; median of {} round(s) \
         (min–max); ratios are to the plain relay (TLS rows: to the relay carrying end-to-end TLS)\n",
        args.streams, args.size, args.rate, args.repeat
    );
    let _ = writeln!(
        out,
        "| scenario | echoed stanzas/s | MB/s | × relay | RTT p50 ms | p90 ms | p99 ms | p99 × relay | \
         proxy CPU µs/stanza | × relay | proxy CPU at {}/s |",
        args.rate
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (scenario, rows) in scenarios.iter().zip(results) {
        let get =
            |f: &dyn Fn(&Measured) -> Option<f64>| rows.iter().filter_map(f).collect::<Vec<_>>();
        let ratio = |f: &dyn Fn(&Measured) -> Option<f64>| -> String {
            let mine = median(&get(f));
            let theirs = column(reference(scenario), f).and_then(|v| median(&v));
            match (mine, theirs) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => String::from("-"),
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.label,
            summary(&get(&|m| Some(m.stanzas_per_s)), 0),
            summary(&get(&|m| Some(m.mb_per_s)), 1),
            ratio(&|m| Some(m.stanzas_per_s)),
            summary(&get(&|m| Some(m.p50_ms)), 3),
            summary(&get(&|m| Some(m.p90_ms)), 3),
            summary(&get(&|m| Some(m.p99_ms)), 3),
            ratio(&|m| Some(m.p99_ms)),
            summary(&get(&|m| m.cpu_us), 2),
            ratio(&|m| m.cpu_us),
            if get(&|m| m.rate_cpu_pct).is_empty() {
                String::from("-")
            } else {
                format!("{}%", summary(&get(&|m| m.rate_cpu_pct), 1))
            },
        );
    }
    let notes: Vec<String> = scenarios
        .iter()
        .zip(results)
        .flat_map(|(s, rows)| {
            rows.iter()
                .filter(|m| !m.note.is_empty())
                .map(move |m| format!("{}: {}", s.key, m.note))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// The targets of issue 7, checked against the medians.
fn targets(scenarios: &[Scenario], results: &[Vec<Measured>], idle: &[IdleRow]) -> String {
    let med = |key: &str, f: fn(&Measured) -> f64| -> Option<f64> {
        let i = scenarios.iter().position(|s| s.key == key)?;
        median(&results[i].iter().map(f).collect::<Vec<_>>())
    };
    let mut out = String::from("Targets (issue 7):\n");
    let mut check = |what: &str, value: Option<f64>, ok: &dyn Fn(f64) -> bool, unit: &str| {
        let line = match value {
            Some(v) => format!(
                "  [{}] {what}: {v:.2}{unit}",
                if ok(v) { "met" } else { "NOT met" }
            ),
            None => format!("  [not measured] {what}"),
        };
        let _ = writeln!(out, "{line}");
    };
    // No ratio to a zero (a latency phase that was skipped measures 0 ms).
    let ratio =
        |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|&(_, b)| b > 0.0).map(|(a, b)| a / b);
    let tput = |m: &Measured| m.stanzas_per_s;
    let p99 = |m: &Measured| m.p99_ms;
    check(
        "plaintext, transcript off >= 0.6 x relay",
        ratio(med("xmpptap", tput), med("relay", tput)),
        &|v| v >= 0.6,
        "x",
    );
    check(
        "plaintext, JSONL transcript >= 0.4 x relay",
        ratio(med("jsonl", tput), med("relay", tput)),
        &|v| v >= 0.4,
        "x",
    );
    check(
        "STARTTLS both legs >= 0.3 x relay carrying e2e TLS",
        ratio(med("xmpptap-tls", tput), med("relay-tls", tput)),
        &|v| v >= 0.3,
        "x",
    );
    check(
        "p99 at the fixed rate <= 1.3 x relay p99 (plaintext)",
        ratio(med("xmpptap", p99), med("relay", p99)),
        &|v| v <= 1.3,
        "x",
    );
    let idle_kib = |tls: bool| {
        idle.iter()
            .find(|r| r.xmpptap && r.tls == tls)
            .map(IdleRow::per_conn_kib)
    };
    check(
        "RSS per idle plaintext connection <= 32 KiB",
        idle_kib(false),
        &|v| v <= 32.0,
        " KiB",
    );
    check(
        "RSS per idle connection with TLS on both legs <= 64 KiB",
        idle_kib(true),
        &|v| v <= 64.0,
        " KiB",
    );
    out
}
