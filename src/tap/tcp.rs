//! Synthetic TCP/IP packets for captures: the bytes of one leg become Ethernet frames of a TCP conversation that
//! Wireshark reads as if it had been captured on the wire.
//!
//! A [`Conversation`] is one TCP connection between a client and a server address: [`Conversation::open`]
//! writes the SYN / SYN-ACK / ACK opening, [`Conversation::send`] cuts a payload into segments of at most
//! [`Conversation::mss`] bytes with consecutive sequence numbers, each run of segments acknowledged by a pure
//! ACK from the other end, and [`Conversation::close`] the FIN / FIN-ACK / ACK ending. IPv4 headers (or IPv6 when
//! an address needs it) and TCP headers carry correct checksums; MAC addresses are made up from the IP
//! addresses (locally administered, one per address).
//!
//! Pure: no clock, no I/O; the caller stamps and writes the frames. The capture sinks ([`super::pcap`],
//! [`super::pcapng`]) decide which conversations exist.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Largest TCP payload per segment over IPv4 on a 1500-byte Ethernet MTU.
pub const MSS_V4: usize = 1460;
/// Largest TCP payload per segment over IPv6 on a 1500-byte Ethernet MTU (the IPv6 header is 20 bytes longer).
pub const MSS_V6: usize = 1440;
/// The receive window both ends advertise (no window scaling).
pub const WINDOW: u16 = 65535;
/// Segments in flight before the receiving end acknowledges: 8 x 1460 bytes stays well inside [`WINDOW`], so
/// Wireshark never sees a full window.
pub const ACK_EVERY: usize = 8;

/// TCP flag bits.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Push: hand the data to the application.
    pub const PSH: u8 = 0x08;
    /// The acknowledgement number is valid.
    pub const ACK: u8 = 0x10;
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const TTL: u8 = 64;

/// One end of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The end that sent the SYN.
    Client,
    /// The end that answered it.
    Server,
}

impl Peer {
    /// The other end.
    pub fn other(self) -> Peer {
        match self {
            Peer::Client => Peer::Server,
            Peer::Server => Peer::Client,
        }
    }

    fn index(self) -> usize {
        match self {
            Peer::Client => 0,
            Peer::Server => 1,
        }
    }
}

/// Everything about one TCP segment that goes into its frame.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Sender address and port.
    pub src: SocketAddr,
    /// Receiver address and port.
    pub dst: SocketAddr,
    /// Sequence number of the first payload byte (of the SYN or FIN when there is none).
    pub seq: u32,
    /// Acknowledgement number (meaningful with [`flags::ACK`]).
    pub ack: u32,
    /// TCP flags ([`flags`]).
    pub flags: u8,
    /// Advertised window.
    pub window: u16,
    /// A maximum segment size option (SYN segments).
    pub mss: Option<u16>,
    /// IPv4 identification (ignored for IPv6).
    pub ip_id: u16,
    /// The TCP payload.
    pub payload: &'a [u8],
}

/// The RFC 1071 Internet checksum over the concatenation of `chunks` (which may have odd lengths).
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        let mut bytes = chunk.iter();
        if let Some(high) = odd.take() {
            match bytes.next() {
                Some(&low) => sum += u64::from(u16::from_be_bytes([high, low])),
                None => {
                    odd = Some(high);
                    continue;
                }
            }
        }
        let rest = bytes.as_slice();
        let mut pairs = rest.chunks_exact(2);
        for pair in &mut pairs {
            sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        odd = pairs.remainder().first().copied();
    }
    if let Some(high) = odd {
        sum += u64::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves at most 16 bits.
    !(sum as u16)
}

/// A made-up, locally administered MAC address for an IP address: `02:00:a:b:c:d` for IPv4 a.b.c.d,
/// `02:06:` and the last four bytes for IPv6.
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            [0x02, 0x00, a, b, c, d]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [0x02, 0x06, o[12], o[13], o[14], o[15]]
        }
    }
}

/// Puts two addresses in the same IP family: IPv4 when both are IPv4 (or IPv4-mapped IPv6, as a dual-stack
/// listener reports them), else IPv6 with IPv4 addresses mapped.
pub fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    match (v4(a), v4(b)) {
        (Some(ia), Some(ib)) => (
            SocketAddr::new(IpAddr::V4(ia), a.port()),
            SocketAddr::new(IpAddr::V4(ib), b.port()),
        ),
        _ => {
            let v6 = |s: SocketAddr| -> SocketAddr {
                let ip: Ipv6Addr = match s.ip() {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    IpAddr::V6(ip) => ip,
                };
                SocketAddr::new(IpAddr::V6(ip), s.port())
            };
            (v6(a), v6(b))
        }
    }
}

/// The Ethernet frame carrying `seg`. Both addresses must be of the same family (see [`same_family`]); a mixed
/// pair is mapped to IPv6.
pub fn frame(seg: &Segment<'_>) -> Vec<u8> {
    let (src, dst) = same_family(seg.src, seg.dst);
    let tcp = tcp_header(seg);
    let tcp_len = tcp.len() + seg.payload.len();
    let mut out = Vec::with_capacity(14 + 40 + tcp_len);
    out.extend_from_slice(&mac_for(dst.ip()));
    out.extend_from_slice(&mac_for(src.ip()));
    let tcp_sum;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            // Segments are at most MSS_V4 + headers; a caller passing more gets a truncated length field.
            let total = (20 + tcp_len) as u16;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[4..6].copy_from_slice(&seg.ip_id.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = TTL;
            ip[9] = PROTO_TCP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&ip);
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&s.octets());
            pseudo[4..8].copy_from_slice(&d.octets());
            pseudo[9] = PROTO_TCP;
            pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            tcp_sum = checksum(&[&pseudo, &tcp, seg.payload]);
        }
        (s, d) => {
            let to_v6 = |ip: IpAddr| match ip {
                IpAddr::V6(ip) => ip,
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            };
            let (s, d) = (to_v6(s), to_v6(d));
            out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = PROTO_TCP;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            out.extend_from_slice(&ip);
            let mut pseudo = [0u8; 40];
            pseudo[0..16].copy_from_slice(&s.octets());
            pseudo[16..32].copy_from_slice(&d.octets());
            pseudo[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
            pseudo[39] = PROTO_TCP;
            tcp_sum = checksum(&[&pseudo, &tcp, seg.payload]);
        }
    }
    let tcp_at = out.len();
    out.extend_from_slice(&tcp);
    out[tcp_at + 16..tcp_at + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    out.extend_from_slice(seg.payload);
    out
}

/// The TCP header of `seg` with a zero checksum.
fn tcp_header(seg: &Segment<'_>) -> Vec<u8> {
    let words = if seg.mss.is_some() { 6 } else { 5 };
    let mut h = vec![0u8; words * 4];
    h[0..2].copy_from_slice(&seg.src.port().to_be_bytes());
    h[2..4].copy_from_slice(&seg.dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    h[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    h[12] = (words as u8) << 4;
    h[13] = seg.flags;
    h[14..16].copy_from_slice(&seg.window.to_be_bytes());
    if let Some(mss) = seg.mss {
        h[20] = 2; // kind: maximum segment size
        h[21] = 4;
        h[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    h
}

/// One end's state: its address, the next sequence number it sends, its next IPv4 identification.
#[derive(Clone, Debug)]
struct End {
    addr: SocketAddr,
    next_seq: u32,
    ip_id: u16,
}

/// Where a conversation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    Open,
    Closed,
}

/// One synthetic TCP connection. Every method returns the frames to write, in order.
#[derive(Clone, Debug)]
pub struct Conversation {
    ends: [End; 2],
    mss: usize,
    state: State,
    /// Payload bytes sent so far, both ways.
    carried: u64,
}

impl Conversation {
    /// A conversation from `client` to `server` (put in one IP family, see [`same_family`]) whose ends start
    /// their sequence numbers at `isn` (client, server).
    pub fn new(client: SocketAddr, server: SocketAddr, isn: [u32; 2]) -> Self {
        let (client, server) = same_family(client, server);
        let mss = if client.is_ipv4() { MSS_V4 } else { MSS_V6 };
        let end = |addr, isn| End {
            addr,
            next_seq: isn,
            ip_id: 1,
        };
        Conversation {
            ends: [end(client, isn[0]), end(server, isn[1])],
            mss,
            state: State::New,
            carried: 0,
        }
    }

    /// The client's address and port, as written in the frames.
    pub fn client(&self) -> SocketAddr {
        self.ends[0].addr
    }

    /// The server's address and port, as written in the frames.
    pub fn server(&self) -> SocketAddr {
        self.ends[1].addr
    }

    /// Largest payload per segment: [`MSS_V4`] or [`MSS_V6`].
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// The sequence number `peer` sends next.
    pub fn next_seq(&self, peer: Peer) -> u32 {
        self.ends[peer.index()].next_seq
    }

    /// Payload bytes sent so far in both directions.
    pub fn carried(&self) -> u64 {
        self.carried
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The three-way handshake: SYN, SYN-ACK, ACK (both SYNs announce the MSS). Nothing if already open.
    pub fn open(&mut self) -> Vec<Vec<u8>> {
        if self.state != State::New {
            return Vec::new();
        }
        self.state = State::Open;
        let mss = u16::try_from(self.mss).ok();
        vec![
            self.segment(Peer::Client, flags::SYN, mss, &[]),
            self.segment(Peer::Server, flags::SYN | flags::ACK, mss, &[]),
            self.segment(Peer::Client, flags::ACK, None, &[]),
        ]
    }

    /// `payload` from `from` to the other end: segments of at most [`Self::mss`] bytes (PSH on the last), and a
    /// pure ACK from the other end after every [`ACK_EVERY`] segments and after the last. Opens the conversation
    /// first if needed; nothing once it is closed or when `payload` is empty.
    pub fn send(&mut self, from: Peer, payload: &[u8]) -> Vec<Vec<u8>> {
        if payload.is_empty() || self.state == State::Closed {
            return Vec::new();
        }
        let mut out = self.open();
        let count = payload.len().div_ceil(self.mss);
        for (i, chunk) in payload.chunks(self.mss).enumerate() {
            let last = i + 1 == count;
            let push = if last { flags::PSH } else { 0 };
            out.push(self.segment(from, flags::ACK | push, None, chunk));
            if last || (i + 1) % ACK_EVERY == 0 {
                out.push(self.segment(from.other(), flags::ACK, None, &[]));
            }
        }
        self.carried += payload.len() as u64;
        out
    }

    /// The end of the connection: FIN-ACK from `first`, FIN-ACK from the other end, ACK from `first`. Nothing
    /// if it was never opened or is already closed.
    pub fn close(&mut self, first: Peer) -> Vec<Vec<u8>> {
        if self.state != State::Open {
            self.state = State::Closed;
            return Vec::new();
        }
        let out = vec![
            self.segment(first, flags::FIN | flags::ACK, None, &[]),
            self.segment(first.other(), flags::FIN | flags::ACK, None, &[]),
            self.segment(first, flags::ACK, None, &[]),
        ];
        self.state = State::Closed;
        out
    }

    /// One segment from `from`, advancing its sequence number by the payload (plus one for SYN and FIN).
    fn segment(&mut self, from: Peer, flags: u8, mss: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let to = from.other();
        let ack = if flags & flags::ACK != 0 {
            self.ends[to.index()].next_seq
        } else {
            0
        };
        let end = &self.ends[from.index()];
        let seg = Segment {
            src: end.addr,
            dst: self.ends[to.index()].addr,
            seq: end.next_seq,
            ack,
            flags,
            window: WINDOW,
            mss,
            ip_id: end.ip_id,
            payload,
        };
        let frame = frame(&seg);
        let end = &mut self.ends[from.index()];
        let phantom = u32::from(flags & (flags::SYN | flags::FIN) != 0);
        // Sequence numbers wrap modulo 2^32 (RFC 9293 3.4); a payload is at most one MSS.
        end.next_seq = end
            .next_seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(phantom);
        end.ip_id = end.ip_id.wrapping_add(1);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed frame: enough of it to check what the builder wrote.
    #[derive(Debug)]
    struct Parsed {
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    }

    fn parse(frame: &[u8]) -> Parsed {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let (src_ip, dst_ip, tcp): (IpAddr, IpAddr, &[u8]) = match ethertype {
            ETHERTYPE_IPV4 => {
                let ip = &frame[14..34];
                assert_eq!(checksum(&[ip]), 0, "IPv4 header checksum");
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                assert_eq!(total, frame.len() - 14, "IPv4 total length");
                let s: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
                let d: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
                let tcp = &frame[34..];
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&s);
                pseudo.extend_from_slice(&d);
                pseudo.extend_from_slice(&[0, PROTO_TCP]);
                pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                assert_eq!(checksum(&[&pseudo, tcp]), 0, "TCP checksum (IPv4)");
                (s.into(), d.into(), tcp)
            }
            ETHERTYPE_IPV6 => {
                let ip = &frame[14..54];
                let s: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
                let d: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
                let tcp = &frame[54..];
                assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), tcp.len());
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&s);
                pseudo.extend_from_slice(&d);
                pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
                assert_eq!(checksum(&[&pseudo, tcp]), 0, "TCP checksum (IPv6)");
                (s.into(), d.into(), tcp)
            }
            other => panic!("ethertype {other:#x}"),
        };
        assert_eq!(frame[0..6], mac_for(dst_ip));
        assert_eq!(frame[6..12], mac_for(src_ip));
        let offset = usize::from(tcp[12] >> 4) * 4;
        Parsed {
            src: SocketAddr::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
            dst: SocketAddr::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
            seq: u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes")),
            ack: u32::from_be_bytes(tcp[8..12].try_into().expect("4 bytes")),
            flags: tcp[13],
            payload: tcp[offset..].to_vec(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn checksum_matches_rfc_1071_example_and_splits_anywhere() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (before complement).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(checksum(&[a, b]), !0xddf2, "split at {split}");
            assert_eq!(
                checksum(&[a, &[], b]),
                !0xddf2,
                "split at {split} with an empty chunk"
            );
        }
        // Odd length: padded with a zero byte.
        assert_eq!(checksum(&[&[0xab]]), !0xab00);
        assert_eq!(
            checksum(&[&[0x12], &[0x34], &[0x56]]),
            checksum(&[&[0x12, 0x34, 0x56]])
        );
    }

    #[test]
    fn ipv4_header_matches_a_known_packet() {
        // A header checked by hand: 10.0.0.1 -> 10.0.0.2, id 1, DF, TTL 64, TCP, 40 bytes.
        let seg = Segment {
            src: addr("10.0.0.1:1000"),
            dst: addr("10.0.0.2:2000"),
            seq: 1,
            ack: 0,
            flags: flags::SYN,
            window: WINDOW,
            mss: None,
            ip_id: 1,
            payload: &[],
        };
        let frame = frame(&seg);
        assert_eq!(
            frame[14..34],
            [0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0x26, 0xcd, 10, 0, 0, 1, 10, 0, 0, 2]
        );
        assert_eq!(frame[12..14], [0x08, 0x00]);
        parse(&frame);
    }

    #[test]
    fn handshake_data_and_close_have_consistent_numbers() {
        let client = addr("127.0.0.1:50598");
        let server = addr("127.90.1.10:5269");
        let mut conv = Conversation::new(client, server, [1000, u32::MAX - 2]);
        let mut frames = conv.open();
        frames.extend(conv.send(Peer::Client, b"<stream:stream>"));
        frames.extend(conv.send(Peer::Server, b"<stream:stream id='x'>"));
        frames.extend(conv.close(Peer::Client));
        let p: Vec<Parsed> = frames.iter().map(|f| parse(f)).collect();
        use flags::*;
        let summary: Vec<(u8, u32, u32, usize)> = p
            .iter()
            .map(|s| (s.flags, s.seq, s.ack, s.payload.len()))
            .collect();
        let s0 = u32::MAX - 2;
        assert_eq!(
            summary,
            vec![
                (SYN, 1000, 0, 0),
                (SYN | ACK, s0, 1001, 0),
                (ACK, 1001, s0.wrapping_add(1), 0),
                (ACK | PSH, 1001, s0.wrapping_add(1), 15),
                (ACK, s0.wrapping_add(1), 1016, 0),
                // The server's sequence numbers wrap past 2^32.
                (ACK | PSH, s0.wrapping_add(1), 1016, 22),
                (ACK, 1016, s0.wrapping_add(23), 0),
                (FIN | ACK, 1016, s0.wrapping_add(23), 0),
                (FIN | ACK, s0.wrapping_add(23), 1017, 0),
                (ACK, 1017, s0.wrapping_add(24), 0),
            ]
        );
        assert_eq!((p[0].src, p[0].dst), (client, server));
        assert_eq!((p[1].src, p[1].dst), (server, client));
        assert_eq!(p[3].payload, b"<stream:stream>");
        assert!(conv.is_closed());
        assert!(conv.send(Peer::Client, b"late").is_empty());
        assert!(conv.close(Peer::Server).is_empty());
    }

    #[test]
    fn syn_segments_announce_the_mss() {
        let mut conv = Conversation::new(addr("10.0.0.1:1"), addr("10.0.0.2:2"), [0, 0]);
        let frames = conv.open();
        for frame in &frames[..2] {
            let tcp = &frame[34..];
            assert_eq!(tcp[12] >> 4, 6, "data offset with the MSS option");
            assert_eq!(tcp[20..24], [2, 4, 0x05, 0xb4], "MSS 1460");
        }
        assert_eq!(frames[2][34 + 12] >> 4, 5);
    }

    #[test]
    fn large_payloads_are_segmented_and_acknowledged_in_runs() {
        let mut conv = Conversation::new(addr("10.0.0.1:1"), addr("10.0.0.2:2"), [7, 9]);
        conv.open();
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let frames = conv.send(Peer::Server, &payload);
        let p: Vec<Parsed> = frames.iter().map(|f| parse(f)).collect();
        let data: Vec<&Parsed> = p.iter().filter(|s| !s.payload.is_empty()).collect();
        assert_eq!(data.len(), 20_000usize.div_ceil(MSS_V4));
        assert!(data.iter().all(|s| s.payload.len() <= MSS_V4));
        assert!(
            frames.iter().all(|f| f.len() <= 1514),
            "fits a 1500-byte MTU"
        );
        let mut expected = 10u32;
        let mut joined = Vec::new();
        for s in &data {
            assert_eq!(s.seq, expected, "segments are contiguous");
            expected += s.payload.len() as u32;
            joined.extend_from_slice(&s.payload);
        }
        assert_eq!(joined, payload);
        assert_eq!(
            data.iter().filter(|s| s.flags & flags::PSH != 0).count(),
            1,
            "PSH only on the last segment"
        );
        // ACKs from the client: one per ACK_EVERY segments, one after the last, each acknowledging everything
        // sent so far and never the same number twice (Wireshark would call that a duplicate ACK).
        let acks: Vec<u32> = p
            .iter()
            .filter(|s| s.payload.is_empty())
            .map(|s| s.ack)
            .collect();
        assert_eq!(acks.len(), data.len().div_ceil(ACK_EVERY));
        assert!(acks.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(acks.last(), Some(&(10 + 20_000)));
        let mut in_flight = 0;
        for s in &p {
            if s.payload.is_empty() {
                in_flight = 0;
            } else {
                in_flight += s.payload.len();
                assert!(in_flight < usize::from(WINDOW), "never a full window");
            }
        }
        assert_eq!(conv.next_seq(Peer::Server), 10 + 20_000);
        assert_eq!(conv.carried(), 20_000);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let mut conv = Conversation::new(
            addr("[2001:db8::1]:40000"),
            addr("[2001:db8::2]:5269"),
            [1, 2],
        );
        assert_eq!(conv.mss(), MSS_V6);
        let frames = conv.send(Peer::Client, &[b'x'; 3000]);
        for frame in &frames {
            assert_eq!(frame[12..14], [0x86, 0xdd]);
            assert!(frame.len() <= 1514);
            parse(frame);
        }
        // A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6: written as IPv4.
        let conv = Conversation::new(addr("[::ffff:10.0.0.1]:1"), addr("10.0.0.2:2"), [0, 0]);
        assert_eq!(conv.client(), addr("10.0.0.1:1"));
        // A real mix is written as IPv6, the IPv4 address mapped.
        let conv = Conversation::new(addr("10.0.0.1:1"), addr("[2001:db8::2]:2"), [0, 0]);
        assert_eq!(conv.client(), addr("[::ffff:10.0.0.1]:1"));
        assert_eq!(conv.mss(), MSS_V6);
    }

    #[test]
    fn sending_opens_and_empty_payloads_send_nothing() {
        let mut conv = Conversation::new(addr("10.0.0.1:1"), addr("10.0.0.2:2"), [0, 0]);
        assert!(conv.send(Peer::Client, b"").is_empty());
        let frames = conv.send(Peer::Client, b"<a/>");
        assert_eq!(frames.len(), 5, "handshake, data, ACK");
        assert!(conv.open().is_empty(), "opened once");
        let mut never = Conversation::new(addr("10.0.0.1:1"), addr("10.0.0.2:2"), [0, 0]);
        assert!(never.close(Peer::Client).is_empty(), "no FIN without a SYN");
    }
}
