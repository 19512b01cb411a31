//! `--pcapng-tls FILE`: what really crossed the wire, encrypted, with the TLS secrets to decrypt it embedded, as
//! a pcapng file that Wireshark and tshark decrypt by themselves.
//!
//! Each leg is one TCP conversation ([`super::tcp`], the same layout as [`super::pcap`]: real addresses and
//! ports, handshake, MSS-sized segments, FINs) carrying the leg's real TCP payload ([`EventKind::RawData`]): the
//! plaintext stream up to `<proceed/>`, then the TLS records. Nothing is split at the TLS boundary: Wireshark's
//! XMPP dissector sees `<proceed/>` and hands the rest of the conversation to its TLS dissector, exactly as on
//! a real capture.
//!
//! The TLS secrets of both legs ([`EventKind::TlsSecrets`], NSS key log lines) go into pcapng Decryption
//! Secrets Blocks (block type `0x0000000A`, secrets type `TLSK`), each written before the next packet after new
//! secrets arrive. A reader must meet the keys before the records they decrypt (tshark reads the file once,
//! in order, and does not go back even with `-2`). On the receiver leg xmpptap is the TLS client and learns the
//! secrets only after reading the server's first flight (ServerHello and the encrypted handshake messages in
//! the same segment), so from a leg's ClientHello on, its packets are held back until the secrets for that
//! ClientHello's random have arrived (both traffic secrets for TLS 1.3, `CLIENT_RANDOM` for TLS 1.2), then
//! written right after them; see `Held`. Packets keep their real timestamps; only the block order moves, by
//! the time a handshake takes. Whoever has the file can read every intercepted stream: it is created with
//! mode 0600.
//!
//! `tshark -r FILE -d tcp.port==5269,xmpp -Y 'tls and xmpp'` shows the decrypted stanzas (decode-as for each
//! server port in use; 5222 needs none).
//!
//! The file is flushed whenever the tap writer runs out of events, so it stays readable if xmpptap is killed.

use super::pcap::{sender, since_epoch, unknown_local, Capture, Packet};
use super::tcp::Peer;
use super::{Event, EventKind, Sink};
use crate::side::Side;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{PcapNgWriter, RawBlock};
use pcap_file::DataLink;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

/// Creates (or empties) a capture file that only its owner may read: mode 0600 for a new file, and an
/// existing one is tightened to 0600 before anything is written to it.
pub fn create_private(path: &std::path::Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// pcapng Decryption Secrets Block type.
pub const DECRYPTION_SECRETS_BLOCK: u32 = 0x0000_000A;
/// Secrets type of a TLS key log (`TLSK`).
pub const SECRETS_TYPE_TLS_KEY_LOG: u32 = 0x544c_534b;

/// The body of a Decryption Secrets Block holding `key_log` (NSS key log text): secrets type, length, the
/// secrets padded with zeros to a multiple of 4 bytes, no options. `to_bytes` writes integers in the section's
/// byte order.
pub fn dsb_body(key_log: &[u8], to_bytes: fn(u32) -> [u8; 4]) -> Vec<u8> {
    let padded = key_log.len().div_ceil(4) * 4;
    let mut body = Vec::with_capacity(8 + padded);
    body.extend_from_slice(&to_bytes(SECRETS_TYPE_TLS_KEY_LOG));
    // Key logs are a few hundred bytes per TLS session; a batch never comes near 4 GiB.
    body.extend_from_slice(&to_bytes(key_log.len() as u32));
    body.extend_from_slice(key_log);
    body.resize(8 + padded, 0);
    body
}

/// Writes the encrypted conversations of every leg and the secrets to decrypt them as pcapng (see the module
/// docs).
pub struct PcapngTlsSink {
    writer: PcapNgWriter<BufWriter<Box<dyn Write + Send>>>,
    capture: Capture,
    /// Legs waiting for the secrets of their TLS handshake (see [`Held`]).
    held: HashMap<(u64, Side), Held>,
    /// Key log lines not yet written in a Decryption Secrets Block, each ending in a newline.
    secrets: String,
    name: String,
}

impl std::fmt::Debug for PcapngTlsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapngTlsSink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn pcap_error(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other),
    }
}

impl PcapngTlsSink {
    /// A sink writing to `out` (a new file: the section header and the interface are written at once); `name`
    /// says where, for error messages.
    pub fn new(out: Box<dyn Write + Send>, name: String) -> io::Result<Self> {
        let out = BufWriter::with_capacity(64 * 1024, out);
        let mut writer = PcapNgWriter::new(out).map_err(pcap_error)?;
        let interface = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("xmpptap")),
                InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                    "TCP payload of intercepted XMPP legs, synthetic Ethernet/IP/TCP headers",
                )),
                // pcap-file writes enhanced packet timestamps in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        writer.write_pcapng_block(interface).map_err(pcap_error)?;
        writer.get_mut().flush()?;
        Ok(PcapngTlsSink {
            writer,
            capture: Capture::new(false),
            held: HashMap::new(),
            secrets: String::new(),
            name,
        })
    }

    /// Writes the secrets received since the last block, if any.
    fn write_secrets(&mut self) -> io::Result<()> {
        if self.secrets.is_empty() {
            return Ok(());
        }
        let to_bytes: fn(u32) -> [u8; 4] = match self.writer.section().endianness {
            pcap_file::Endianness::Big => u32::to_be_bytes,
            pcap_file::Endianness::Little => u32::to_le_bytes,
        };
        let body = dsb_body(self.secrets.as_bytes(), to_bytes);
        let len = (12 + body.len()) as u32;
        let block = RawBlock {
            type_: DECRYPTION_SECRETS_BLOCK,
            initial_len: len,
            body: Cow::Owned(body),
            trailer_len: len,
        };
        self.writer.write_raw_block(&block).map_err(pcap_error)?;
        self.secrets.clear();
        Ok(())
    }
}

impl PcapngTlsSink {
    /// Writes `packets`, after a Decryption Secrets Block with the secrets received so far.
    fn write_packets(&mut self, packets: Vec<Packet>) -> io::Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        self.write_secrets()?;
        for (ts, frame) in packets {
            let block = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: ts,
                original_len: frame.len() as u32,
                data: Cow::Owned(frame),
                options: Vec::new(),
            };
            self.writer.write_pcapng_block(block).map_err(pcap_error)?;
        }
        Ok(())
    }

    /// Writes what a leg held back (after the secrets, see [`Held`]).
    fn release(&mut self, key: (u64, Side)) -> io::Result<()> {
        match self.held.remove(&key) {
            Some(held) => self.write_packets(held.packets),
            None => Ok(()),
        }
    }

    /// Records a key log line; releases the leg whose handshake it completes.
    fn secret(&mut self, line: &str) -> io::Result<()> {
        let line = line.trim_end();
        self.secrets.push_str(line);
        self.secrets.push('\n');
        let mut words = line.split_ascii_whitespace();
        let (Some(label), Some(random)) = (words.next(), words.next().and_then(parse_random))
        else {
            return Ok(());
        };
        let Some((&key, held)) = self.held.iter_mut().find(|(_, h)| h.random == random) else {
            return Ok(());
        };
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => held.client_traffic = true,
            "SERVER_TRAFFIC_SECRET_0" => held.server_traffic = true,
            _ => {}
        }
        // TLS 1.2 has one line per session; TLS 1.3 is decryptable once both traffic secrets are known (the
        // handshake secrets come before them).
        if label == "CLIENT_RANDOM" || (held.client_traffic && held.server_traffic) {
            self.release(key)?;
        }
        Ok(())
    }
}

/// A leg whose TLS handshake started (its client sent a ClientHello) and whose secrets have not all arrived
/// yet. xmpptap as a TLS *client* learns the secrets only after reading the server's first flight
/// (ServerHello and the encrypted handshake messages after it), so the secrets come after the packets that
/// need them; a reader that meets encrypted records before their keys cannot decrypt the session (tshark
/// cannot, even with `-2`). So the leg's packets wait here, and are written right after the Decryption Secrets
/// Block that makes them readable. Timestamps stay the real ones; only the order of blocks in the file moves
/// (by the time a handshake takes).
#[derive(Debug)]
struct Held {
    random: [u8; 32],
    packets: Vec<Packet>,
    bytes: usize,
    client_traffic: bool,
    server_traffic: bool,
}

/// Most bytes a leg holds back waiting for its secrets; past it (the secrets were lost, or never come) the
/// leg is written as it is.
const MAX_HELD: usize = 1 << 20;

/// The client random of a TLS ClientHello at the start of `bytes` (record header, handshake header, version,
/// then 32 random bytes).
fn client_hello_random(bytes: &[u8]) -> Option<[u8; 32]> {
    const HANDSHAKE: u8 = 0x16;
    const CLIENT_HELLO: u8 = 0x01;
    if bytes.len() < 43 || bytes[0] != HANDSHAKE || bytes[1] != 0x03 || bytes[5] != CLIENT_HELLO {
        return None;
    }
    bytes[11..43].try_into().ok()
}

/// 64 hex digits as 32 bytes.
fn parse_random(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Sink for PcapngTlsSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        let ts = since_epoch(event.ts);
        let conn = event.conn;
        let mut out = Vec::new();
        match &event.kind {
            EventKind::Accepted { peer, local, .. } => {
                self.capture
                    .open(conn, Side::Initiator, *peer, *local, ts, &mut out);
                self.write_packets(out)
            }
            EventKind::UpstreamConnected { addr, local, .. } => {
                let client = local.unwrap_or_else(|| unknown_local(*addr));
                self.capture
                    .open(conn, Side::Receiver, client, *addr, ts, &mut out);
                self.write_packets(out)
            }
            EventKind::RawData {
                leg,
                outbound,
                bytes,
            } => {
                let from = sender(*leg, *outbound);
                self.capture.data(conn, *leg, from, &bytes.0, ts, &mut out);
                let key = (conn, *leg);
                match self.held.get_mut(&key) {
                    Some(held) => {
                        held.bytes += bytes.0.len();
                        held.packets.append(&mut out);
                        if held.bytes > MAX_HELD {
                            self.release(key)?;
                        }
                    }
                    None => self.write_packets(out)?,
                }
                if from == Peer::Client {
                    if let Some(random) = client_hello_random(&bytes.0) {
                        self.release(key)?;
                        self.held.insert(
                            key,
                            Held {
                                random,
                                packets: Vec::new(),
                                bytes: 0,
                                client_traffic: false,
                                server_traffic: false,
                            },
                        );
                    }
                }
                Ok(())
            }
            EventKind::TlsSecrets { line } => self.secret(line),
            EventKind::TlsFailed { side, .. } => self.release((conn, *side)),
            EventKind::Closed { by, .. } => {
                self.release((conn, Side::Initiator))?;
                self.release((conn, Side::Receiver))?;
                self.capture.close(conn, *by, ts, &mut out);
                self.write_packets(out)
            }
            _ => Ok(()),
        }
    }

    fn stanza(&mut self, _: &super::event::StanzaView<'_>) -> io::Result<()> {
        // Captures are built from the bytes of each leg (`data` events), not from stanza records.
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_secrets()?;
        self.writer.get_mut().flush()
    }

    fn name(&self) -> String {
        format!("pcapng {}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::event::{ClosedBy, Xml};
    use crate::tap::pcap::tests::{conversations, parse_frame, run_sink, sent_by, Seen};
    use bytes::Bytes;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn at(micros: i64, conn: u64, kind: EventKind) -> Event {
        crate::tap::pcap::tests::at(micros, conn, None, kind)
    }

    fn raw(micros: i64, leg: Side, outbound: bool, bytes: &[u8]) -> Event {
        at(
            micros,
            1,
            EventKind::RawData {
                leg,
                outbound,
                bytes: Xml(Bytes::copy_from_slice(bytes)),
            },
        )
    }

    fn secret(micros: i64, line: &str) -> Event {
        at(
            micros,
            0,
            EventKind::TlsSecrets {
                line: line.to_owned(),
            },
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// What a pcapng file holds, in order: packets, and the secrets of each Decryption Secrets Block.
    #[derive(Debug)]
    enum Item {
        Packet(Seen),
        Secrets(String),
    }

    fn read_pcapng(bytes: &[u8]) -> Vec<Item> {
        let mut reader = PcapNgReader::new(bytes).expect("section header");
        let mut items = Vec::new();
        let mut interfaces = 0;
        let endianness = reader.section().endianness;
        while let Some(block) = reader.next_block() {
            match block.expect("block") {
                Block::InterfaceDescription(idb) => {
                    assert_eq!(idb.linktype, DataLink::ETHERNET);
                    interfaces += 1;
                }
                Block::EnhancedPacket(epb) => {
                    assert_eq!(epb.original_len as usize, epb.data.len());
                    items.push(Item::Packet(parse_frame(epb.timestamp, &epb.data)));
                }
                Block::Unknown(block) => {
                    assert_eq!(block.type_, DECRYPTION_SECRETS_BLOCK);
                    let body = &block.value;
                    let word = |at: usize| {
                        let b: [u8; 4] = body[at..at + 4].try_into().expect("4 bytes");
                        match endianness {
                            pcap_file::Endianness::Big => u32::from_be_bytes(b),
                            pcap_file::Endianness::Little => u32::from_le_bytes(b),
                        }
                    };
                    assert_eq!(word(0), SECRETS_TYPE_TLS_KEY_LOG);
                    let len = word(4) as usize;
                    assert_eq!(body.len(), 8 + len.div_ceil(4) * 4, "padded to 4 bytes");
                    let text = String::from_utf8(body[8..8 + len].to_vec()).expect("text");
                    items.push(Item::Secrets(text));
                }
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(interfaces, 1);
        items
    }

    /// A ClientHello with client random `random` (just enough of one for the sink to recognize it).
    fn client_hello(random: u8) -> Vec<u8> {
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03,
        ];
        hello.extend_from_slice(&[random; 32]);
        hello.extend_from_slice(&[0u8; 40]);
        hello
    }

    fn opened(conn: u64) -> Vec<Event> {
        vec![
            at(
                0,
                conn,
                EventKind::Accepted {
                    listener: "s2s",
                    peer: addr("127.0.0.1:40000"),
                    local: addr("127.90.1.10:5269"),
                },
            ),
            at(
                1,
                conn,
                EventKind::UpstreamConnected {
                    domain: String::from("b.test"),
                    addr: addr("127.90.1.3:5269"),
                    host: String::from("127.90.1.3"),
                    route: crate::upstream::route::RouteSource::Static,
                    failed: Vec::new(),
                    local: Some(addr("127.0.0.1:40001")),
                },
            ),
        ]
    }

    /// The order of the file: `S` for a secrets block (with its line count), else the first payload byte of
    /// each data packet from `from`.
    fn layout(items: &[Item], from: SocketAddr) -> String {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Secrets(text) => Some(format!("S{}", text.lines().count())),
                Item::Packet(seen) if seen.src == from && !seen.payload.is_empty() => {
                    Some(format!("{:02x}", seen.payload[0]))
                }
                Item::Packet(_) => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// xmpptap as TLS client learns the secrets after reading the server's first flight: that flight must
    /// still come after the secrets in the file.
    #[test]
    fn a_client_legs_handshake_waits_for_its_secrets() {
        use Side::Receiver as R;
        let random = "07".repeat(32);
        let mut events = opened(1);
        events.extend([
            raw(10, R, true, &client_hello(7)),
            // Another leg's packets are not held.
            raw(11, Side::Initiator, false, b"<stream:stream>"),
            // ServerHello + encrypted extensions, certificate... in one read.
            raw(
                20,
                R,
                false,
                &[0x16, 0x03, 0x03, 0x00, 0x02, 0x02, 0x00, 0x17, 0x03, 0x03],
            ),
            secret(21, &format!("CLIENT_HANDSHAKE_TRAFFIC_SECRET {random} 01")),
            secret(22, &format!("SERVER_HANDSHAKE_TRAFFIC_SECRET {random} 02")),
            // A secret of some other session does not release this leg.
            secret(
                23,
                &format!("CLIENT_TRAFFIC_SECRET_0 {} 09", "08".repeat(32)),
            ),
            secret(24, &format!("CLIENT_TRAFFIC_SECRET_0 {random} 03")),
            secret(25, &format!("SERVER_TRAFFIC_SECRET_0 {random} 04")),
            secret(26, &format!("EXPORTER_SECRET {random} 05")),
            // The client's Finished, then application data.
            raw(30, R, true, &[0x17, 0x03, 0x03, 0x00, 0x01, 0xaa]),
            raw(40, R, false, &[0x17, 0x03, 0x03, 0x00, 0x01, 0xbb]),
        ]);
        let bytes = run_sink(
            |out| Box::new(PcapngTlsSink::new(out, String::from("test")).expect("sink")),
            &events,
        );
        let items = read_pcapng(&bytes);
        let upstream = addr("127.90.1.3:5269");
        let local = addr("127.0.0.1:40001");
        assert_eq!(
            layout(&items, upstream),
            "S5 16 S1 17",
            "server flight after the first 5 lines"
        );
        assert_eq!(layout(&items, local), "16 S5 S1 17");
        // The packets kept their order and timestamps within the leg.
        let segments: Vec<Seen> = items
            .into_iter()
            .filter_map(|item| match item {
                Item::Packet(seen) => Some(seen),
                Item::Secrets(_) => None,
            })
            .collect();
        let convs = conversations(&segments, false);
        let leg = &convs
            .iter()
            .find(|(p, _)| p.0 == local)
            .expect("receiver leg")
            .1;
        assert!(leg.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(sent_by(leg, upstream).len(), 16);
    }

    /// TLS 1.2 sessions have a single CLIENT_RANDOM line; a leg whose secrets never come is written when
    /// the connection closes.
    #[test]
    fn tls12_lines_release_and_lost_secrets_do_not_lose_packets() {
        use Side::{Initiator as I, Receiver as R};
        let mut events = opened(1);
        events.extend([
            raw(10, R, true, &client_hello(1)),
            raw(20, R, false, &[0x16, 0x03, 0x03, 0x00, 0x01, 0x02]),
            secret(21, &format!("CLIENT_RANDOM {} 00", "01".repeat(32))),
            raw(30, R, true, &[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]),
            // The initiator's handshake never gets its secrets.
            raw(40, I, false, &client_hello(2)),
            raw(50, I, true, &[0x16, 0x03, 0x03, 0x00, 0x01, 0x02]),
            at(
                60,
                1,
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
        ]);
        let bytes = run_sink(
            |out| Box::new(PcapngTlsSink::new(out, String::from("test")).expect("sink")),
            &events,
        );
        let items = read_pcapng(&bytes);
        assert_eq!(layout(&items, addr("127.90.1.3:5269")), "S1 16");
        assert_eq!(
            layout(&items, addr("127.90.1.10:5269")),
            "S1 16",
            "written at the close"
        );
        let segments: Vec<Seen> = items
            .into_iter()
            .filter_map(|item| match item {
                Item::Packet(seen) => Some(seen),
                Item::Secrets(_) => None,
            })
            .collect();
        assert_eq!(
            conversations(&segments, true).len(),
            2,
            "both legs closed with FINs"
        );
    }

    #[test]
    fn client_hellos_and_randoms_are_recognized() {
        assert_eq!(client_hello_random(&client_hello(9)), Some([9; 32]));
        assert_eq!(
            client_hello_random(b"<stream:stream to='b.test' version='1.0'>...."),
            None
        );
        assert_eq!(client_hello_random(&client_hello(9)[..42]), None);
        assert_eq!(parse_random(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_random("ab"), None);
        assert_eq!(parse_random(&"zz".repeat(32)), None);
    }

    #[cfg(unix)]
    #[test]
    fn private_captures_are_owner_only_even_over_an_open_file() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("xmpptap-pcapng-mode-{}", std::process::id()));
        std::fs::write(&path, b"old secrets").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let file = create_private(&path).expect("create");
        drop(file);
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0, "emptied");
        std::fs::remove_file(&path).expect("remove");
        let file = create_private(&path).expect("create new");
        drop(file);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn dsb_body_is_padded_and_typed() {
        let body = dsb_body(b"CLIENT_RANDOM 01 02\n", u32::to_le_bytes);
        assert_eq!(body[..4], *b"KSLT", "TLSK, little-endian");
        assert_eq!(body[4..8], 20u32.to_le_bytes());
        assert_eq!(body.len(), 28);
        let body = dsb_body(b"abcde", u32::to_be_bytes);
        assert_eq!(body[..4], *b"TLSK");
        assert_eq!(body[4..8], [0, 0, 0, 5]);
        assert_eq!(&body[8..], b"abcde\0\0\0");
    }

    #[test]
    fn raw_legs_with_secrets_before_the_packets_that_need_them() {
        use Side::{Initiator as I, Receiver as R};
        let record = [0x17u8, 0x03, 0x03, 0x00, 0x10]
            .into_iter()
            .chain([0xaa; 3000])
            .collect::<Vec<u8>>();
        let events = vec![
            at(
                0,
                1,
                EventKind::Accepted {
                    listener: "s2s",
                    peer: addr("127.0.0.1:50598"),
                    local: addr("127.90.1.10:5269"),
                },
            ),
            raw(10, I, false, b"<stream:stream to='b.test'>"),
            at(
                20,
                1,
                EventKind::UpstreamConnected {
                    domain: String::from("b.test"),
                    addr: "127.90.1.3:5269".parse().expect("addr"),
                    host: String::from("127.90.1.3"),
                    route: crate::upstream::route::RouteSource::Static,
                    failed: Vec::new(),
                    local: None,
                },
            ),
            raw(30, R, true, b"<stream:stream to='b.test'><starttls/>"),
            raw(40, R, false, b"<proceed/>"),
            secret(50, "CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0304"),
            secret(51, "SERVER_HANDSHAKE_TRAFFIC_SECRET 0102 0506\n"),
            raw(60, R, true, &record),
            secret(70, "CLIENT_TRAFFIC_SECRET_0 0102 0708"),
            raw(80, I, true, &record),
            at(
                90,
                1,
                EventKind::Closed {
                    by: ClosedBy::Receiver,
                    reason: String::new(),
                    bytes_up: 0,
                    bytes_down: 0,
                    stanzas_up: 0,
                    stanzas_down: 0,
                    duration_ms: 0,
                },
            ),
            secret(100, "SERVER_TRAFFIC_SECRET_0 0102 0900"),
        ];
        let bytes = run_sink(
            |out| Box::new(PcapngTlsSink::new(out, String::from("test")).expect("sink")),
            &events,
        );
        let items = read_pcapng(&bytes);
        let blocks: Vec<(usize, String)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Item::Secrets(text) => Some((i, text.clone())),
                Item::Packet(_) => None,
            })
            .collect();
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        assert_eq!(
            blocks[0].1,
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET 0102 0304\nSERVER_HANDSHAKE_TRAFFIC_SECRET 0102 0506\n"
        );
        assert_eq!(blocks[1].1, "CLIENT_TRAFFIC_SECRET_0 0102 0708\n");
        assert_eq!(
            blocks[2].1, "SERVER_TRAFFIC_SECRET_0 0102 0900\n",
            "written on flush"
        );
        let segments: Vec<Seen> = items
            .into_iter()
            .filter_map(|item| match item {
                Item::Packet(seen) => Some(seen),
                Item::Secrets(_) => None,
            })
            .collect();
        // Each block sits right before the first packet written after its secrets arrived.
        let first_record = |from: SocketAddr| {
            segments
                .iter()
                .position(|s| s.src == from && s.payload.first() == Some(&0x17))
                .expect("record")
        };
        let local = addr("0.0.0.0:1024");
        // Item indexes count the packets and the blocks before.
        assert_eq!(blocks[0].0, first_record(local));
        assert_eq!(blocks[1].0, first_record(addr("127.90.1.10:5269")) + 1);

        let convs = conversations(&segments, true);
        assert_eq!(
            convs.len(),
            2,
            "no split at the TLS boundary in a raw capture"
        );
        let rec = &convs
            .iter()
            .find(|(p, _)| p.0 == local)
            .expect("receiver leg")
            .1;
        let mut expected = b"<stream:stream to='b.test'><starttls/>".to_vec();
        expected.extend_from_slice(&record);
        assert_eq!(sent_by(rec, local), expected);
        // The receiver closed first.
        let fin = rec
            .iter()
            .find(|s| s.flags & crate::tap::tcp::flags::FIN != 0)
            .expect("FIN");
        assert_eq!(fin.src, addr("127.90.1.3:5269"));
        assert_eq!(segments[0].ts, Duration::from_micros(1_700_000_000_000_000));
    }
}
