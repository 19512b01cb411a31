//! A tiny authoritative DNS server for interop tests.
//!
//! Prosody resolves through libunbound, which this harness points at a [`DnsServer`] with
//! `forward = "ip@port"` (libunbound accepts the `@port` suffix, so the server listens on an
//! ephemeral port rather than 53). The server answers from an in-memory zone that a test can
//! change while it runs: "b.test's S2S service is at 127.0.9.3:40123", later "...is at the proxy".
//!
//! Behaviour, kept close to what a real authoritative server does so libunbound is happy:
//! - every answer has AA and RA set, echoes the query id, opcode, RD bit and question;
//! - a name with records (or with records below it) but none of the asked type: NOERROR, empty
//!   answer, SOA in the authority section; a name unknown altogether: NXDOMAIN, SOA in authority;
//! - all records and the SOA have TTL 0, so libunbound does not cache and zone changes take
//!   effect on the next lookup;
//! - a query carrying EDNS (OPT) gets an OPT back; over UDP an answer that does not fit the
//!   client's payload size is truncated (TC) so the client retries over TCP, which is served too.
//!
//! It does not own what Prosody does with the answers (see `prosody.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Largest UDP answer sent to a client that did not use EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;

/// A running DNS server; the tasks stop when it is dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Records by lower-case, fully-qualified name (`"_xmpp-server._tcp.b.test."`), plus a log of
/// the questions asked, for failure messages.
#[derive(Debug, Default)]
struct Zone {
    records: HashMap<String, Vec<Record>>,
    queries: Vec<String>,
}

impl DnsServer {
    /// Starts a server on `bind`, UDP and TCP on the same ephemeral port.
    ///
    /// Panics if no such port pair can be bound (the test cannot go on without DNS).
    pub async fn start(bind: IpAddr) -> DnsServer {
        let (udp, tcp) = bind_pair(bind).await;
        let addr = udp.local_addr().expect("local_addr of a bound UDP socket");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zone.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone())),
        ];
        DnsServer { addr, zone, tasks }
    }

    /// The address the server answers on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server in libunbound's `forward` syntax: `"127.0.9.53@41234"`.
    pub fn unbound_forward(&self) -> String {
        format!("{}@{}", self.addr.ip(), self.addr.port())
    }

    /// Adds an SRV record, e.g. `add_srv("_xmpp-server._tcp.b.test", 0, 5, 40123, "b-host.test")`.
    /// Names may be given with or without the trailing dot.
    pub fn add_srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        let rdata = RData::SRV(SRV::new(priority, weight, port, fqdn(target)));
        self.insert(name, rdata);
    }

    /// Adds an A record.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.insert(name, RData::A(A(ip)));
    }

    /// Removes every record of `name` (of all types).
    pub fn remove(&self, name: &str) {
        self.zone().records.remove(&key(name));
    }

    /// Removes all records; the query log is kept.
    pub fn clear(&self) {
        self.zone().records.clear();
    }

    /// The questions asked so far, as `"name TYPE -> RCODE/answers"` lines, oldest first.
    pub fn query_log(&self) -> Vec<String> {
        self.zone().queries.clone()
    }

    fn insert(&self, name: &str, rdata: RData) {
        let record = Record::from_rdata(fqdn(name), 0, rdata);
        self.zone()
            .records
            .entry(key(name))
            .or_default()
            .push(record);
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        // A poisoned lock only means another test thread panicked; the data is still usable.
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name)
        .unwrap_or_else(|e| panic!("test DNS: bad domain name {name:?}: {e}"));
    name.set_fqdn(true);
    name
}

fn key(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

async fn bind_pair(ip: IpAddr) -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("test DNS: cannot bind UDP on {ip}: {e}"));
        let port = udp
            .local_addr()
            .expect("local_addr of a bound UDP socket")
            .port();
        match TcpListener::bind((ip, port)).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("test DNS: no port on {ip} free for both UDP and TCP: {last_err:?}");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("test DNS: UDP receive error: {e}");
                continue;
            }
        };
        let Some(query) = parse_query(&buf[..len]) else {
            continue;
        };
        let limit = match &query.edns {
            Some(edns) => usize::from(edns.max_payload()).max(PLAIN_UDP_LIMIT),
            None => PLAIN_UDP_LIMIT,
        };
        let response = answer(&query, &zone);
        let Some(mut bytes) = encode(&response) else {
            continue;
        };
        if bytes.len() > limit {
            match encode(&response.truncate()) {
                Some(b) => bytes = b,
                None => continue,
            }
        }
        if let Err(e) = socket.send_to(&bytes, peer).await {
            eprintln!("test DNS: UDP send to {peer} failed: {e}");
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp_conn(stream, zone.clone()));
            }
            Err(e) => {
                eprintln!("test DNS: TCP accept error: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves length-prefixed queries until the client closes or sends garbage.
async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Some(query) = parse_query(&buf) else {
            return;
        };
        let Some(bytes) = encode(&answer(&query, &zone)) else {
            return;
        };
        let Ok(prefix) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut out = prefix.to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn parse_query(bytes: &[u8]) -> Option<Message> {
    match Message::from_vec(bytes) {
        Ok(m) if m.metadata.message_type == MessageType::Query => Some(m),
        Ok(_) => None,
        Err(e) => {
            eprintln!("test DNS: undecodable query ({} bytes): {e}", bytes.len());
            None
        }
    }
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("test DNS: cannot encode response: {e}");
            None
        }
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.checking_disabled = query.metadata.checking_disabled;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }

    let mut zone = zone.lock().unwrap_or_else(|e| e.into_inner());
    let [question] = query.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    if query.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }

    let qname = key(&question.name().to_ascii());
    let qtype = question.query_type();
    let records = zone.records.get(&qname);
    let exists = records.is_some()
        || zone
            .records
            .keys()
            .any(|k| k.ends_with(&format!(".{qname}")));
    if let Some(records) = records {
        response.add_answers(
            records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .cloned(),
        );
    }
    if !exists {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    if response.answers.is_empty() {
        response.add_authority(soa());
    }
    let outcome = if exists {
        format!("NOERROR/{}", response.answers.len())
    } else {
        "NXDOMAIN".to_owned()
    };
    zone.queries.push(format!("{qname} {qtype} -> {outcome}"));
    response
}

/// The SOA of the `test.` zone, sent with negative answers; minimum TTL 0 so libunbound does not
/// cache the negative answer.
fn soa() -> Record {
    let soa = SOA::new(fqdn("ns.test"), fqdn("hostmaster.test"), 1, 60, 60, 60, 0);
    Record::from_rdata(fqdn("test"), 0, RData::SOA(soa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::time::Duration;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(fqdn(name), qtype));
        message.set_edns(Edns::new());
        message.to_vec().expect("encode query")
    }

    async fn ask_udp(server: &DnsServer, name: &str, qtype: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let q = query(name, qtype);
        socket.send_to(&q, server.addr()).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("UDP answer within 5 s")
            .expect("recv");
        let answer = Message::from_vec(&buf[..len]).expect("decode answer");
        assert_eq!(
            answer.metadata.id,
            Message::from_vec(&q).expect("decode").metadata.id
        );
        answer
    }

    #[tokio::test]
    async fn answers_records_nodata_and_nxdomain_over_udp_and_tcp() {
        let server = DnsServer::start(Ipv4Addr::LOCALHOST.into()).await;
        server.add_srv("_xmpp-server._tcp.b.test", 0, 5, 40123, "b-host.test");
        server.add_a("b-host.test.", Ipv4Addr::new(127, 0, 0, 3));

        let srv = ask_udp(&server, "_xmpp-server._tcp.B.test", RecordType::SRV).await;
        assert!(srv.metadata.authoritative && srv.metadata.recursion_available);
        assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
        assert_eq!(srv.answers.len(), 1);
        assert!(srv.edns.is_some(), "EDNS query gets an OPT back");
        assert_eq!(srv.queries.len(), 1);

        let nodata = ask_udp(&server, "b-host.test", RecordType::AAAA).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1, "SOA with a negative answer");

        let empty_non_terminal = ask_udp(&server, "_tcp.b.test", RecordType::A).await;
        assert_eq!(
            empty_non_terminal.metadata.response_code,
            ResponseCode::NoError
        );

        let nx = ask_udp(&server, "c.test", RecordType::A).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

        server.clear();
        let gone = ask_udp(&server, "b-host.test", RecordType::A).await;
        assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

        server.add_a("b-host.test", Ipv4Addr::new(127, 0, 0, 4));
        let mut tcp = TcpStream::connect(server.addr())
            .await
            .expect("TCP connect");
        for _ in 0..2 {
            let q = query("b-host.test", RecordType::A);
            let mut framed = u16::try_from(q.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(&q);
            tcp.write_all(&framed).await.expect("TCP write");
            let mut len = [0u8; 2];
            tcp.read_exact(&mut len).await.expect("TCP length");
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            tcp.read_exact(&mut buf).await.expect("TCP body");
            let answer = Message::from_vec(&buf).expect("decode TCP answer");
            assert_eq!(answer.answers.len(), 1);
        }
        assert_eq!(server.query_log().len(), 7, "{:#?}", server.query_log());
    }
}
