//! `--pcap FILE`: the decrypted conversations as a classic pcap file that Wireshark and tshark open directly.
//!
//! Each leg of an intercepted connection becomes a TCP conversation with synthetic but consistent Ethernet,
//! IPv4 (or IPv6) and TCP headers ([`super::tcp`]): the real addresses and ports of that leg (initiator <->
//! xmpptap's listening address; xmpptap's local address <-> the receiving server), a SYN / SYN-ACK / ACK
//! opening, the application bytes of the leg ([`EventKind::Data`], decrypted when the leg uses TLS) cut into
//! segments of at most 1460 bytes (1440 over IPv6) with contiguous sequence numbers and acknowledgements, the
//! real timestamps, and FIN / FIN-ACK / ACK when the connection closes (the side that closed first sends the
//! first FIN).
//!
//! # STARTTLS
//!
//! When Wireshark's XMPP dissector sees `<proceed/>` it hands the TCP conversation to its TLS dissector
//! (`ssl_starttls_ack`): from the next frame on, every payload of that conversation goes to TLS first. The TLS
//! dissector declines a payload whose first four bytes are printable ASCII ("extremely unlikely that real TLS
//! traffic starts with four printable ascii characters"), and the XMPP dissector gets it back; anything else
//! it keeps. So decrypted XML after `<proceed/>` in the same conversation mostly decodes, but a payload of
//! four bytes or less (a whitespace keepalive, a short element) or one starting with a non-printable byte (a
//! newline keepalive) is swallowed by TLS. Checked
//! with tshark 4.0.17: its TLS debug log shows `ssl_starttls: current frame 23, app_handle=... (xmpp)` for each
//! `<proceed/>`, and a 4-byte `<a/>` sent after it in the same conversation comes out as
//! `eth:ethertype:ip:tcp:tls [TCP segment of a reassembled PDU]` instead of XMPP.
//!
//! So when TLS comes up on a leg that already carried bytes, the leg's conversation ends there with a FIN
//! exchange, and the rest of the leg (decrypted) is a **new TCP conversation between the same addresses and
//! the same server port, from the next free client port** (the real client port + 1, or the first port after
//! it that this file has not used with that server). A fresh conversation has no STARTTLS history, so the
//! XMPP dissector decodes the post-TLS stream header, features and every stanza. In Wireshark a connection
//! with STARTTLS is therefore two consecutive TCP streams (`tcp.stream`), the second from port+1; the
//! transcript's `accepted` / `upstream_connected` events give the real ports. A leg that is TLS from its first
//! byte (Direct TLS) stays one conversation.
//!
//! Every conversation in a file has its own address/port pair: one that would repeat an earlier pair (a
//! port the operating system reused) is moved to the next free client port as well, because Wireshark flags a
//! reused pair (`tcp.analysis.reused_ports`).
//!
//! XMPP's dissector only claims port 5222; tell it about the others: `tshark -r FILE -d tcp.port==5269,xmpp`.
//!
//! # Robustness
//!
//! The file is flushed whenever the tap writer runs out of events ([`Sink::flush`]), so a killed xmpptap
//! leaves a valid capture of everything up to the last batch. Connections still open then simply have no FIN.
//!
//! [`pcap_from_transcript`] builds the same kind of capture from a JSON Lines transcript after the fact.

use super::event::ClosedBy;
use super::tcp::{Conversation, Peer};
use super::{Event, EventKind, Sink};
use crate::side::Side;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;

/// Snap length written in the file header: every synthetic frame fits (at most 1514 bytes).
const SNAPLEN: u32 = 65535;

/// Bytes held for a leg whose addresses are not known yet (the receiver leg before `upstream_connected`).
/// Normally nothing waits; the bound only matters when events were dropped.
const MAX_PENDING: usize = 1 << 20;

/// Address/port pairs remembered to keep conversations apart (about 80 bytes each). Past this many the memory
/// starts over, so a very long capture may repeat a pair (Wireshark then notes a reused port).
const MAX_USED: usize = 1 << 18;

/// One frame and when it was seen (since the Unix epoch).
pub(crate) type Packet = (Duration, Vec<u8>);

/// Time since the Unix epoch of an event timestamp (zero for times before 1970).
pub(crate) fn since_epoch(ts: OffsetDateTime) -> Duration {
    Duration::try_from(ts - OffsetDateTime::UNIX_EPOCH).unwrap_or_default()
}

/// Which end of a leg's conversation sent bytes that crossed `leg`: on the initiator leg the initiator is the
/// TCP client and xmpptap the server; on the receiver leg xmpptap is the client.
pub(crate) fn sender(leg: Side, outbound: bool) -> Peer {
    match (leg, outbound) {
        (Side::Initiator, false) | (Side::Receiver, true) => Peer::Client,
        (Side::Initiator, true) | (Side::Receiver, false) => Peer::Server,
    }
}

/// Which end of `leg` sends the first FIN when the connection ends the way `by` says.
fn first_fin(leg: Side, by: ClosedBy) -> Peer {
    match (leg, by) {
        // The initiator closed: it ends the initiator leg, and xmpptap passes the close on upstream.
        (Side::Initiator, ClosedBy::Initiator) | (Side::Receiver, ClosedBy::Initiator) => {
            Peer::Client
        }
        // The receiver closed: it ends its leg, and xmpptap (the initiator leg's server) passes it on.
        (Side::Receiver, ClosedBy::Receiver) | (Side::Initiator, ClosedBy::Receiver) => {
            Peer::Server
        }
        // xmpptap ended both: it is the server of the initiator leg and the client of the receiver leg.
        (Side::Initiator, ClosedBy::Xmpptap) => Peer::Server,
        (Side::Receiver, ClosedBy::Xmpptap) => Peer::Client,
    }
}

fn leg_index(leg: Side) -> usize {
    match leg {
        Side::Initiator => 0,
        Side::Receiver => 1,
    }
}

/// A stand-in for xmpptap's address on a receiver leg whose local address is unknown: the unspecified address
/// of the server's family, port 0 (moved to a free port like any other).
pub(crate) fn unknown_local(server: SocketAddr) -> SocketAddr {
    let ip = match server.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// One leg: its conversation once its addresses are known, bytes waiting for them before.
#[derive(Debug, Default)]
struct LegState {
    conv: Option<Conversation>,
    pending: Vec<(Duration, Peer, Vec<u8>)>,
    pending_bytes: usize,
}

/// The TCP conversations of every connection of one capture file, fed with what happened on the legs and
/// producing frames. Shared by [`PcapSink`], [`super::pcapng::PcapngTlsSink`] and [`pcap_from_transcript`].
#[derive(Debug)]
pub(crate) struct Capture {
    /// Start a new conversation when TLS comes up on a leg that carried bytes (decrypted captures).
    split_at_tls: bool,
    conns: HashMap<u64, [LegState; 2]>,
    /// Every (client, server) pair used in this file.
    used: HashSet<(SocketAddr, SocketAddr)>,
    /// Conversations started so far (varies the initial sequence numbers).
    started: u64,
}

impl Capture {
    /// `split_at_tls`: see the module docs (decrypted captures split, raw captures do not).
    pub(crate) fn new(split_at_tls: bool) -> Self {
        Capture {
            split_at_tls,
            conns: HashMap::new(),
            used: HashSet::new(),
            started: 0,
        }
    }

    /// The addresses of `leg` are known: the handshake, then whatever waited for it.
    pub(crate) fn open(
        &mut self,
        conn: u64,
        leg: Side,
        client: SocketAddr,
        server: SocketAddr,
        ts: Duration,
        out: &mut Vec<Packet>,
    ) {
        let mut conv = self.conversation(conn, client, server);
        out.extend(conv.open().into_iter().map(|f| (ts, f)));
        let state = &mut self.conns.entry(conn).or_default()[leg_index(leg)];
        for (at, from, bytes) in state.pending.drain(..) {
            out.extend(conv.send(from, &bytes).into_iter().map(|f| (at, f)));
        }
        state.pending_bytes = 0;
        if let Some(mut old) = state.conv.replace(conv) {
            // Opened twice (should not happen): end the first properly.
            out.extend(old.close(Peer::Client).into_iter().map(|f| (ts, f)));
        }
    }

    /// Bytes from `from` crossed `leg`.
    pub(crate) fn data(
        &mut self,
        conn: u64,
        leg: Side,
        from: Peer,
        bytes: &[u8],
        ts: Duration,
        out: &mut Vec<Packet>,
    ) {
        let state = &mut self.conns.entry(conn).or_default()[leg_index(leg)];
        match &mut state.conv {
            Some(conv) => out.extend(conv.send(from, bytes).into_iter().map(|f| (ts, f))),
            None => {
                if state.pending_bytes + bytes.len() <= MAX_PENDING {
                    state.pending_bytes += bytes.len();
                    state.pending.push((ts, from, bytes.to_vec()));
                }
            }
        }
    }

    /// TLS is up on `leg`: in a decrypted capture, the conversation that carried the plaintext part ends and a
    /// new one (next free client port) carries the rest.
    pub(crate) fn tls(&mut self, conn: u64, leg: Side, ts: Duration, out: &mut Vec<Packet>) {
        if !self.split_at_tls {
            return;
        }
        let Some(states) = self.conns.get_mut(&conn) else {
            return;
        };
        let state = &mut states[leg_index(leg)];
        let Some(old) = state.conv.as_mut().filter(|c| c.carried() > 0) else {
            return;
        };
        // The client sent <starttls/> and starts the handshake: it is the one moving on.
        out.extend(old.close(Peer::Client).into_iter().map(|f| (ts, f)));
        let (client, server) = (old.client(), old.server());
        let mut conv = self.conversation(conn, client, server);
        out.extend(conv.open().into_iter().map(|f| (ts, f)));
        if let Some(states) = self.conns.get_mut(&conn) {
            states[leg_index(leg)].conv = Some(conv);
        }
    }

    /// The connection is over: both legs end with FINs, the first from the side that closed.
    pub(crate) fn close(&mut self, conn: u64, by: ClosedBy, ts: Duration, out: &mut Vec<Packet>) {
        let Some(states) = self.conns.remove(&conn) else {
            return;
        };
        for (leg, state) in [Side::Initiator, Side::Receiver].into_iter().zip(states) {
            if let Some(mut conv) = state.conv {
                out.extend(conv.close(first_fin(leg, by)).into_iter().map(|f| (ts, f)));
            }
        }
    }

    /// A new conversation whose address/port pair is new to this file, with initial sequence numbers derived
    /// from the connection (reproducible, varied).
    fn conversation(&mut self, conn: u64, client: SocketAddr, server: SocketAddr) -> Conversation {
        self.started += 1;
        let probe = Conversation::new(client, server, [0, 0]);
        let (mut client, server) = (probe.client(), probe.server());
        let mut tries = 0u32;
        while (client.port() == 0 || self.used.contains(&(client, server))) && tries < 65536 {
            let next = client.port().wrapping_add(1);
            client.set_port(if next < 1024 { 1024 } else { next });
            tries += 1;
        }
        if self.used.len() >= MAX_USED {
            self.used.clear();
        }
        self.used.insert((client, server));
        let seed = mix(conn ^ mix(self.started));
        // Two 32-bit halves of one 64-bit hash.
        let isn = [(seed >> 32) as u32, seed as u32];
        Conversation::new(client, server, isn)
    }
}

/// splitmix64's finalizer: a cheap, well-spread hash of a counter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A buffered output shared between the pcap writer (which offers no access to its inner writer) and the sink
/// (which flushes it). Only the tap writer thread ever locks it.
#[derive(Clone)]
struct SharedOut(Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>);

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()
    }
}

/// The classic pcap header xmpptap writes: Ethernet, microsecond timestamps.
fn pcap_header() -> PcapHeader {
    PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    }
}

fn pcap_error(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other),
    }
}

/// Writes the decrypted conversations of every intercepted connection as a classic pcap (see the module docs).
pub struct PcapSink {
    writer: PcapWriter<SharedOut>,
    out: SharedOut,
    capture: Capture,
    packets: Vec<Packet>,
    name: String,
}

impl std::fmt::Debug for PcapSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PcapSink {
    /// A sink writing to `out` (a new file: the pcap header is written at once); `name` says where, for error
    /// messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> io::Result<Self> {
        let out = SharedOut(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            out,
        ))));
        let writer = PcapWriter::with_header(out.clone(), pcap_header()).map_err(pcap_error)?;
        let mut sink = PcapSink {
            writer,
            out,
            capture: Capture::new(true),
            packets: Vec::new(),
            name,
        };
        // A file with only its header is already a valid (empty) capture.
        sink.out.flush()?;
        Ok(sink)
    }
}

impl Sink for PcapSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        let ts = since_epoch(event.ts);
        let out = &mut self.packets;
        match &event.kind {
            EventKind::Accepted { peer, local, .. } => {
                self.capture
                    .open(event.conn, Side::Initiator, *peer, *local, ts, out)
            }
            EventKind::UpstreamConnected { addr, local, .. } => {
                let client = local.unwrap_or_else(|| unknown_local(*addr));
                self.capture
                    .open(event.conn, Side::Receiver, client, *addr, ts, out)
            }
            EventKind::Data {
                leg,
                outbound,
                bytes,
            } => self
                .capture
                .data(event.conn, *leg, sender(*leg, *outbound), &bytes.0, ts, out),
            EventKind::TlsEstablished { side, .. } => self.capture.tls(event.conn, *side, ts, out),
            EventKind::Closed { by, .. } => self.capture.close(event.conn, *by, ts, out),
            _ => {}
        }
        for (ts, frame) in self.packets.drain(..) {
            self.writer
                .write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))
                .map_err(pcap_error)?;
        }
        Ok(())
    }

    fn stanza(&mut self, _: &super::event::StanzaView<'_>) -> io::Result<()> {
        // Captures are built from the bytes of each leg (`data` events), not from stanza records.
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn name(&self) -> String {
        format!("pcap {}", self.name)
    }
}

/// Rebuilds both legs of every connection in a JSON Lines transcript as a pcap written to `out` (the same
/// layout as `--pcap`, see the module docs), and returns the number of packets written.
///
/// Uses `accepted` and `upstream_connected` for the addresses, every record with an `xml` string and a `dir`
/// for the bytes (`stream_closed` stands for `</stream:stream>`), `tls_established` for the TLS boundary and
/// `closed` for the end. Bytes going `up` were read from the initiator and written to the receiver, `down` the
/// reverse; records whose `origin` is `xmpptap` were only written (toward the receiver for `up`, toward the
/// initiator for `down`), and a `rewrite` record replaces what the forwarding leg carried of the record before
/// it. Whitespace keepalives are not in transcripts and so not in the capture; with `--upstream-tls always`,
/// the receiver's pre-TLS stream that the initiator never saw appears on both legs. Records that are not JSON
/// objects or lack what they need are skipped.
pub fn pcap_from_transcript(records: &[Value], out: impl Write) -> io::Result<usize> {
    let mut writer = PcapWriter::with_header(out, pcap_header()).map_err(pcap_error)?;
    let mut capture = Capture::new(true);
    let mut packets = Vec::new();
    let mut written = 0;
    let rewrites = rewrites(records);
    for (i, record) in records.iter().enumerate() {
        let rewritten = rewrites.get(&i).copied();
        transcript_record(&mut capture, record, rewritten, &mut packets);
        for (ts, frame) in packets.drain(..) {
            writer
                .write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))
                .map_err(pcap_error)?;
            written += 1;
        }
    }
    writer.into_writer().flush()?;
    Ok(written)
}

/// Feeds one transcript record to `capture`; `rewritten`: what the forwarding leg carried instead of this
/// record's `xml` (see [`rewrites`]).
fn transcript_record(
    capture: &mut Capture,
    record: &Value,
    rewritten: Option<&[u8]>,
    out: &mut Vec<Packet>,
) {
    let (Some(conn), Some(event)) = (record["conn"].as_u64(), record["event"].as_str()) else {
        return;
    };
    let Some(ts) = record["ts"].as_str().and_then(parse_ts) else {
        return;
    };
    let addr = |field: &str| {
        record[field]
            .as_str()
            .and_then(|s| s.parse::<SocketAddr>().ok())
    };
    let side = |field: &str| match record[field].as_str() {
        Some("initiator") => Some(Side::Initiator),
        Some("receiver") => Some(Side::Receiver),
        _ => None,
    };
    match event {
        "accepted" => {
            if let (Some(peer), Some(local)) = (addr("peer"), addr("local")) {
                capture.open(conn, Side::Initiator, peer, local, ts, out);
            }
        }
        "upstream_connected" => {
            if let Some(server) = addr("addr") {
                let client = addr("local").unwrap_or_else(|| unknown_local(server));
                capture.open(conn, Side::Receiver, client, server, ts, out);
            }
        }
        "tls_established" => {
            if let Some(leg) = side("side") {
                capture.tls(conn, leg, ts, out);
            }
        }
        "closed" => {
            let by = match record["by"].as_str() {
                Some("initiator") => ClosedBy::Initiator,
                Some("receiver") => ClosedBy::Receiver,
                _ => ClosedBy::Xmpptap,
            };
            capture.close(conn, by, ts, out);
        }
        // Already applied with the record it rewrites.
        "rewrite" => {}
        _ => {
            let up = match record["dir"].as_str() {
                Some("up") => true,
                Some("down") => false,
                _ => return,
            };
            let bytes: &[u8] = match (event, record["xml"].as_str()) {
                (_, Some(xml)) => xml.as_bytes(),
                ("stream_closed", None) => b"</stream:stream>",
                _ => return,
            };
            // Up: the initiator leg's client wrote it and xmpptap the receiver leg's client; down: the other
            // ends. What xmpptap wrote on its own only crossed the leg it was written to.
            let (read_leg, written_leg) = if up {
                (Side::Initiator, Side::Receiver)
            } else {
                (Side::Receiver, Side::Initiator)
            };
            let from = if up { Peer::Client } else { Peer::Server };
            let own = record["origin"].as_str() == Some("xmpptap");
            if !own {
                capture.data(conn, read_leg, from, bytes, ts, out);
            }
            let forwarded = rewritten.unwrap_or(bytes);
            capture.data(conn, written_leg, from, forwarded, ts, out);
        }
    }
}

/// For each record directly followed (on its connection, in its direction) by a `rewrite` record: the index of
/// the record and the rewritten `xml`, which is what xmpptap forwarded instead. One pass over the transcript.
fn rewrites(records: &[Value]) -> HashMap<usize, &[u8]> {
    let mut last: HashMap<u64, usize> = HashMap::new();
    let mut found = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let Some(conn) = record["conn"].as_u64() else {
            continue;
        };
        if record["event"] == "rewrite" {
            if let (Some(&j), Some(xml)) = (last.get(&conn), record["xml"].as_str()) {
                if records[j]["dir"] == record["dir"] {
                    found.insert(j, xml.as_bytes());
                }
            }
        }
        last.insert(conn, i);
    }
    found
}

/// Parses a transcript timestamp, `2026-11-22T02:55:37.424607Z` (any number of fraction digits; `Z` or a
/// numeric offset), as time since the Unix epoch.
pub(crate) fn parse_ts(text: &str) -> Option<Duration> {
    let num = |s: &str| -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (clock, offset_secs) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (clock, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        (clock, sign * (num(h)? * 3600 + num(m)? * 60))
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (hour, minute, second) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        num(&digits)? * 10i64.pow(9 - digits.len() as u32)
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(Duration::new(secs, u32::try_from(nanos).ok()?))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::side::Direction;
    use crate::tap::event::Xml;
    use crate::tap::tcp::flags;
    use bytes::Bytes;
    use pcap_file::pcap::PcapReader;

    /// One TCP segment read back from a capture.
    #[derive(Clone, Debug)]
    pub(crate) struct Seen {
        pub ts: Duration,
        pub src: SocketAddr,
        pub dst: SocketAddr,
        pub seq: u32,
        pub ack: u32,
        pub flags: u8,
        pub payload: Vec<u8>,
    }

    /// Parses an Ethernet/IPv4|IPv6/TCP frame as written by `tcp::frame`.
    pub(crate) fn parse_frame(ts: Duration, frame: &[u8]) -> Seen {
        let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match [frame[12], frame[13]] {
            [0x08, 0x00] => {
                let s: [u8; 4] = frame[26..30].try_into().expect("ip");
                let d: [u8; 4] = frame[30..34].try_into().expect("ip");
                (s.into(), d.into(), &frame[34..])
            }
            [0x86, 0xdd] => {
                let s: [u8; 16] = frame[22..38].try_into().expect("ip");
                let d: [u8; 16] = frame[38..54].try_into().expect("ip");
                (s.into(), d.into(), &frame[54..])
            }
            other => panic!("ethertype {other:?}"),
        };
        let offset = usize::from(tcp[12] >> 4) * 4;
        Seen {
            ts,
            src: SocketAddr::new(src, u16::from_be_bytes([tcp[0], tcp[1]])),
            dst: SocketAddr::new(dst, u16::from_be_bytes([tcp[2], tcp[3]])),
            seq: u32::from_be_bytes(tcp[4..8].try_into().expect("seq")),
            ack: u32::from_be_bytes(tcp[8..12].try_into().expect("ack")),
            flags: tcp[13],
            payload: tcp[offset..].to_vec(),
        }
    }

    /// Every segment of a classic pcap file.
    fn read_pcap(bytes: &[u8]) -> Vec<Seen> {
        let mut reader = PcapReader::new(bytes).expect("pcap header");
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut seen = Vec::new();
        while let Some(packet) = reader.next_packet() {
            let packet = packet.expect("packet");
            assert_eq!(packet.orig_len as usize, packet.data.len());
            seen.push(parse_frame(packet.timestamp, &packet.data));
        }
        seen
    }

    /// A TCP conversation as read back: its segments in file order.
    pub(crate) type Conversations = Vec<((SocketAddr, SocketAddr), Vec<Seen>)>;

    /// Groups segments into conversations (client, server) in order of their SYN, checking on the way that
    /// each starts with a handshake, that sequence numbers run on without gap or overlap in each direction,
    /// that every ACK acknowledges exactly what the other end sent so far, and that it ends with FINs (when
    /// `closed`).
    pub(crate) fn conversations(segments: &[Seen], closed: bool) -> Conversations {
        let mut convs: Conversations = Vec::new();
        for seg in segments {
            let found = convs.iter_mut().find(|((c, s), _)| {
                (seg.src, seg.dst) == (*c, *s) || (seg.dst, seg.src) == (*c, *s)
            });
            match found {
                Some((_, segs)) if seg.flags & flags::SYN == 0 || seg.flags & flags::ACK != 0 => {
                    segs.push(seg.clone())
                }
                Some(_) => panic!("a second SYN for {} -> {}", seg.src, seg.dst),
                None => {
                    assert_eq!(
                        seg.flags,
                        flags::SYN,
                        "conversations start with a SYN: {seg:?}"
                    );
                    convs.push(((seg.src, seg.dst), vec![seg.clone()]));
                }
            }
        }
        for ((client, _), segs) in &convs {
            let mut next: HashMap<SocketAddr, u32> = HashMap::new();
            let mut fins = 0;
            for (i, seg) in segs.iter().enumerate() {
                if i == 1 {
                    assert_eq!(seg.flags, flags::SYN | flags::ACK);
                }
                if let Some(expected) = next.get(&seg.src) {
                    assert_eq!(seg.seq, *expected, "contiguous sequence numbers: {seg:?}");
                }
                if seg.flags & flags::ACK != 0 {
                    assert_eq!(
                        Some(&seg.ack),
                        next.get(&seg.dst),
                        "acknowledges what the other end sent: {seg:?}"
                    );
                }
                let phantom = u32::from(seg.flags & (flags::SYN | flags::FIN) != 0);
                next.insert(
                    seg.src,
                    seg.seq
                        .wrapping_add(seg.payload.len() as u32)
                        .wrapping_add(phantom),
                );
                if seg.flags & flags::FIN != 0 {
                    fins += 1;
                }
                assert!(seg.payload.len() <= crate::tap::tcp::MSS_V4);
            }
            if closed {
                assert_eq!(fins, 2, "FIN both ways on {client}");
            }
        }
        convs
    }

    /// The payload one end sent in a conversation, joined.
    pub(crate) fn sent_by(segs: &[Seen], src: SocketAddr) -> Vec<u8> {
        segs.iter()
            .filter(|s| s.src == src)
            .flat_map(|s| s.payload.clone())
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// An event `micros` after a fixed instant (1_700_000_000 s after the epoch).
    pub(crate) fn at(micros: i64, conn: u64, dir: Option<Direction>, kind: EventKind) -> Event {
        let mut event = Event::now(conn, dir, kind);
        event.ts = OffsetDateTime::UNIX_EPOCH
            + time::Duration::microseconds(1_700_000_000_000_000 + micros);
        event
    }

    fn data(micros: i64, leg: Side, outbound: bool, bytes: &str) -> Event {
        let sender = if outbound { leg.peer() } else { leg };
        at(
            micros,
            1,
            Some(sender.sends()),
            EventKind::Data {
                leg,
                outbound,
                bytes: Xml(Bytes::copy_from_slice(bytes.as_bytes())),
            },
        )
    }

    fn tls(micros: i64, side: Side) -> Event {
        at(
            micros,
            1,
            None,
            EventKind::TlsEstablished {
                side,
                info: crate::tls::TlsInfo {
                    version: String::from("TLSv1.3"),
                    cipher: String::from("TLS13_AES_128_GCM_SHA256"),
                    alpn: None,
                    sni: None,
                    peer_subject: None,
                    peer_sans: Vec::new(),
                },
            },
        )
    }

    const INITIATOR: &str = "127.0.0.1:50598";
    const LISTEN: &str = "127.90.1.10:5269";
    const LOCAL: &str = "127.0.0.1:48420";
    const UPSTREAM: &str = "127.90.1.3:5269";

    /// A STARTTLS connection as the session reports it, with a stanza bigger than one segment.
    pub(crate) fn starttls_events(big: &str) -> Vec<Event> {
        use Side::{Initiator as I, Receiver as R};
        vec![
            at(
                0,
                1,
                None,
                EventKind::Accepted {
                    listener: "s2s",
                    peer: addr(INITIATOR),
                    local: addr(LISTEN),
                },
            ),
            data(10, I, false, "<stream:stream to='b.test'>"),
            at(
                20,
                1,
                None,
                EventKind::UpstreamConnected {
                    domain: String::from("b.test"),
                    addr: addr(UPSTREAM),
                    host: String::from("127.90.1.3"),
                    route: crate::upstream::route::RouteSource::Static,
                    failed: Vec::new(),
                    local: Some(addr(LOCAL)),
                },
            ),
            data(30, R, true, "<stream:stream to='b.test'>"),
            data(
                40,
                R,
                false,
                "<stream:stream id='1'><stream:features><starttls/></stream:features>",
            ),
            data(
                50,
                I,
                true,
                "<stream:stream id='1'><stream:features><starttls/></stream:features>",
            ),
            data(60, I, false, "<starttls/>"),
            data(70, R, true, "<starttls/>"),
            data(80, R, false, "<proceed/>"),
            tls(90, R),
            data(100, I, true, "<proceed/>"),
            tls(110, I),
            data(120, I, false, "<stream:stream to='b.test'>"),
            data(130, R, true, "<stream:stream to='b.test'>"),
            data(140, R, false, "<stream:stream id='2'>"),
            data(150, I, true, "<stream:stream id='2'>"),
            data(160, I, false, big),
            data(170, R, true, big),
            at(
                200,
                1,
                None,
                EventKind::Closed {
                    by: ClosedBy::Initiator,
                    reason: String::new(),
                    bytes_up: 0,
                    bytes_down: 0,
                    stanzas_up: 0,
                    stanzas_down: 0,
                    duration_ms: 0,
                },
            ),
        ]
    }

    pub(crate) fn big_message() -> String {
        format!(
            "<message to='bob@b.test'><body>{}</body></message>",
            "x".repeat(5000)
        )
    }

    /// Runs events through a sink writing into memory and returns the bytes.
    pub(crate) fn run_sink(
        make: impl FnOnce(Box<dyn Write + Send>) -> Box<dyn Sink>,
        events: &[Event],
    ) -> Vec<u8> {
        #[derive(Clone, Default)]
        struct Mem(Arc<Mutex<Vec<u8>>>);
        impl Write for Mem {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mem = Mem::default();
        let mut sink = make(Box::new(mem.clone()));
        for event in events {
            sink.event(event).expect("event");
        }
        sink.flush().expect("flush");
        let bytes = mem.0.lock().expect("lock").clone();
        bytes
    }

    #[test]
    fn starttls_legs_become_two_conversations_each() {
        let big = big_message();
        let bytes = run_sink(
            |out| Box::new(PcapSink::new(out, String::from("test")).expect("sink")),
            &starttls_events(&big),
        );
        let segments = read_pcap(&bytes);
        let convs = conversations(&segments, true);
        let pairs: Vec<(SocketAddr, SocketAddr)> = convs.iter().map(|(pair, _)| *pair).collect();
        assert_eq!(
            pairs,
            vec![
                (addr(INITIATOR), addr(LISTEN)),
                (addr(LOCAL), addr(UPSTREAM)),
                // After TLS: same addresses and server port, the next client port.
                (addr("127.0.0.1:48421"), addr(UPSTREAM)),
                (addr("127.0.0.1:50599"), addr(LISTEN)),
            ]
        );
        let [ini_plain, rec_plain, rec_tls, ini_tls] = &convs[..] else {
            panic!("four conversations");
        };
        assert_eq!(
            sent_by(&ini_plain.1, addr(INITIATOR)),
            b"<stream:stream to='b.test'><starttls/>"
        );
        assert!(sent_by(&ini_plain.1, addr(LISTEN)).ends_with(b"<proceed/>"));
        assert!(sent_by(&rec_plain.1, addr(UPSTREAM)).ends_with(b"<proceed/>"));
        let expected = format!("<stream:stream to='b.test'>{big}");
        assert_eq!(
            sent_by(&ini_tls.1, addr("127.0.0.1:50599")),
            expected.as_bytes()
        );
        assert_eq!(
            sent_by(&rec_tls.1, addr("127.0.0.1:48421")),
            expected.as_bytes()
        );
        assert_eq!(
            sent_by(&rec_tls.1, addr(UPSTREAM)),
            b"<stream:stream id='2'>"
        );
        // The big stanza went in MSS-sized segments.
        let sizes: Vec<usize> = ini_tls
            .1
            .iter()
            .filter(|s| s.src.port() == 50599 && !s.payload.is_empty())
            .map(|s| s.payload.len())
            .collect();
        assert_eq!(sizes, vec![27, 1460, 1460, 1460, 668]);
        // The pre-TLS conversations end at the TLS boundary, the client first.
        let last = ini_plain.1.len() - 3;
        assert_eq!(ini_plain.1[last].flags, flags::FIN | flags::ACK);
        assert_eq!(ini_plain.1[last].src, addr(INITIATOR));
        assert_eq!(
            ini_plain.1[last].ts,
            Duration::from_micros(1_700_000_000_000_110)
        );
        // Real timestamps, in order.
        assert_eq!(segments[0].ts, Duration::from_micros(1_700_000_000_000_000));
        assert!(segments.windows(2).all(|w| w[0].ts <= w[1].ts));
        // The initiator closed: it sends the first FIN of its leg.
        let fin = ini_tls
            .1
            .iter()
            .find(|s| s.flags & flags::FIN != 0)
            .expect("FIN");
        assert_eq!(fin.src.port(), 50599);
    }

    #[test]
    fn direct_tls_and_plaintext_legs_stay_one_conversation() {
        let events: Vec<Event> = starttls_events("<a/>")
            .into_iter()
            .filter(|e| {
                !matches!(&e.kind, EventKind::Data { bytes, .. } if bytes.0.starts_with(b"<starttls")
                    || bytes.0.starts_with(b"<proceed"))
            })
            .collect();
        // TLS events on legs that carried bytes still split; without them nothing splits.
        let plain: Vec<Event> = events
            .into_iter()
            .filter(|e| !matches!(e.kind, EventKind::TlsEstablished { .. }))
            .collect();
        let bytes = run_sink(
            |out| Box::new(PcapSink::new(out, String::from("test")).expect("sink")),
            &plain,
        );
        assert_eq!(conversations(&read_pcap(&bytes), true).len(), 2);

        // TLS first on the initiator leg (Direct TLS): nothing to split.
        let mut direct = vec![
            at(
                0,
                1,
                None,
                EventKind::Accepted {
                    listener: "s2s",
                    peer: addr(INITIATOR),
                    local: addr(LISTEN),
                },
            ),
            tls(5, Side::Initiator),
        ];
        direct.push(data(
            10,
            Side::Initiator,
            false,
            "<stream:stream to='b.test'>",
        ));
        let bytes = run_sink(
            |out| Box::new(PcapSink::new(out, String::from("test")).expect("sink")),
            &direct,
        );
        let convs = conversations(&read_pcap(&bytes), false);
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0].0 .0, addr(INITIATOR));
    }

    #[test]
    fn reused_ports_get_the_next_free_one_and_unknown_local_addresses_a_port() {
        let mut capture = Capture::new(true);
        let mut out = Vec::new();
        for conn in 1..=3 {
            capture.open(
                conn,
                Side::Initiator,
                addr(INITIATOR),
                addr(LISTEN),
                Duration::ZERO,
                &mut out,
            );
            capture.data(
                conn,
                Side::Initiator,
                Peer::Client,
                b"<x/>",
                Duration::ZERO,
                &mut out,
            );
            capture.close(conn, ClosedBy::Initiator, Duration::ZERO, &mut out);
        }
        capture.open(
            4,
            Side::Receiver,
            unknown_local(addr(UPSTREAM)),
            addr(UPSTREAM),
            Duration::ZERO,
            &mut out,
        );
        let segments: Vec<Seen> = out.iter().map(|(ts, f)| parse_frame(*ts, f)).collect();
        let clients: Vec<SocketAddr> = conversations(&segments, false)
            .iter()
            .map(|(p, _)| p.0)
            .collect();
        assert_eq!(
            clients,
            vec![
                addr("127.0.0.1:50598"),
                addr("127.0.0.1:50599"),
                addr("127.0.0.1:50600"),
                addr("0.0.0.0:1024")
            ]
        );
    }

    #[test]
    fn data_before_the_receiver_leg_is_known_waits_for_it() {
        let mut capture = Capture::new(true);
        let mut out = Vec::new();
        capture.data(
            1,
            Side::Receiver,
            Peer::Client,
            b"<early/>",
            Duration::from_secs(1),
            &mut out,
        );
        assert!(out.is_empty());
        capture.open(
            1,
            Side::Receiver,
            addr(LOCAL),
            addr(UPSTREAM),
            Duration::from_secs(2),
            &mut out,
        );
        let segments: Vec<Seen> = out.iter().map(|(ts, f)| parse_frame(*ts, f)).collect();
        let convs = conversations(&segments, false);
        assert_eq!(sent_by(&convs[0].1, addr(LOCAL)), b"<early/>");
        // A closed connection is forgotten; nothing for an unknown one.
        capture.close(1, ClosedBy::Xmpptap, Duration::from_secs(3), &mut out);
        let before = out.len();
        capture.close(1, ClosedBy::Xmpptap, Duration::from_secs(3), &mut out);
        capture.tls(9, Side::Initiator, Duration::ZERO, &mut out);
        assert_eq!(out.len(), before);
    }

    #[test]
    fn timestamps_parse_like_the_transcript_writes_them() {
        assert_eq!(
            parse_ts("2026-11-22T02:55:37.424607Z"),
            Some(Duration::new(1_795_316_137, 424_607_000))
        );
        assert_eq!(parse_ts("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            parse_ts("1970-01-01T01:00:00.5+01:00"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_ts("2000-02-29T12:00:00Z"),
            Some(Duration::from_secs(951_825_600))
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "x026-11-22T02:55:37Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
    }

    /// The transcript of a STARTTLS connection, as the JSON Lines sink writes it.
    fn transcript(big: &str) -> Vec<Value> {
        let lines = [
            r#"{"ts":"2026-11-22T02:55:37.000000Z","conn":1,"dir":null,"event":"accepted","listener":"s2s","peer":"127.0.0.1:50598","local":"127.90.1.10:5269"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000010Z","conn":1,"dir":"up","event":"stream_opened","stream":0,"origin":"peer","xml":"<stream:stream to='b.test'>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000020Z","conn":1,"dir":null,"event":"upstream_connected","domain":"b.test","addr":"127.90.1.3:5269","local":"127.0.0.1:48420"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000030Z","conn":1,"dir":"down","event":"stream_opened","stream":0,"origin":"peer","xml":"<stream:stream id='1'>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000040Z","conn":1,"dir":"down","event":"features","xml":"<stream:features><starttls/><x/></stream:features>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000041Z","conn":1,"dir":"down","event":"rewrite","removed":[],"xml":"<stream:features><starttls/></stream:features>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000050Z","conn":1,"dir":"up","event":"starttls","xml":"<starttls/>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000060Z","conn":1,"dir":"down","event":"proceed","xml":"<proceed/>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000070Z","conn":1,"dir":"down","event":"tls_established","side":"receiver"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000080Z","conn":1,"dir":"up","event":"tls_established","side":"initiator"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000090Z","conn":1,"dir":"up","event":"stream_opened","stream":1,"origin":"peer","xml":"<stream:stream to='b.test'>"}"#.to_owned(),
            serde_json::json!({"ts":"2026-11-22T02:55:37.000100Z","conn":1,"dir":"up","event":"stanza","name":"message","xml":big}).to_string(),
            r#"{"ts":"2026-11-22T02:55:37.000110Z","conn":1,"dir":"down","event":"stream_error","condition":"x","origin":"xmpptap","xml":"<stream:error/>"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000120Z","conn":1,"dir":"up","event":"stream_closed","origin":"peer"}"#.to_owned(),
            r#"{"ts":"2026-11-22T02:55:37.000130Z","conn":1,"dir":null,"event":"closed","by":"initiator"}"#.to_owned(),
            String::from("[\"not an object\"]"),
        ];
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("test line"))
            .collect()
    }

    #[test]
    fn transcripts_export_to_the_same_layout() {
        let big = big_message();
        let mut bytes = Vec::new();
        let written = pcap_from_transcript(&transcript(&big), &mut bytes).expect("export");
        let segments = read_pcap(&bytes);
        assert_eq!(written, segments.len());
        let convs = conversations(&segments, true);
        assert_eq!(convs.len(), 4);
        let find = |client: &str| {
            &convs
                .iter()
                .find(|(pair, _)| pair.0 == addr(client))
                .unwrap_or_else(|| panic!("conversation from {client}"))
                .1
        };
        let ini_plain = find(INITIATOR);
        assert_eq!(
            sent_by(ini_plain, addr(LISTEN)),
            b"<stream:stream id='1'><stream:features><starttls/></stream:features><proceed/>",
            "the initiator saw the rewritten features"
        );
        let rec_plain = find(LOCAL);
        assert_eq!(
            sent_by(rec_plain, addr(LOCAL)),
            b"<stream:stream to='b.test'><starttls/>",
            "the header waited for the receiver leg"
        );
        assert_eq!(
            sent_by(rec_plain, addr(UPSTREAM)),
            b"<stream:stream id='1'><stream:features><starttls/><x/></stream:features><proceed/>"
        );
        let ini_tls = find("127.0.0.1:50599");
        let expected = format!("<stream:stream to='b.test'>{big}</stream:stream>");
        assert_eq!(
            sent_by(ini_tls, addr("127.0.0.1:50599")),
            expected.as_bytes()
        );
        assert_eq!(
            sent_by(ini_tls, addr(LISTEN)),
            b"<stream:error/>",
            "xmpptap's own words"
        );
        let rec_tls = find("127.0.0.1:48421");
        assert_eq!(
            sent_by(rec_tls, addr("127.0.0.1:48421")),
            expected.as_bytes()
        );
        assert!(sent_by(rec_tls, addr(UPSTREAM)).is_empty());
        assert_eq!(segments[0].ts, Duration::new(1_795_316_137, 0));
    }
}
