//! A DNS server and client for the egress-by-name tests: `DnsServer`, an
//! authoritative server on UDP and TCP port 53 inside a test namespace
//! (zone data changed at runtime, CNAMEs followed within it, every query
//! logged), `resolve` and `exchange` from any namespace, and the bytes of
//! queries and answers (`query_bytes`, `answer_bytes`) for forged or
//! replayed messages. Uses hickory-proto for the wire format, netiso-daemon's
//! `host::dns` (the parser and TCP framer under test) to read answers,
//! `ns::run_in` to bind and connect inside a namespace, and std threads.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hickory_proto::op::{Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use netiso_daemon::host::dns::{name_of, parse_answer, TcpFramer};

use crate::ns::run_in;

/// Query types by number, as the logs and helpers take them.
pub const A_TYPE: u16 = 1;
pub const CNAME_TYPE: u16 = 5;
pub const AAAA_TYPE: u16 = 28;
pub const ANY_TYPE: u16 = 255;
/// NXDOMAIN, the response code for a name the zone does not have.
pub const NXDOMAIN: u16 = 3;

/// How long a client waits for an answer, and a server for a TCP client.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// A server's CNAME hops within its own zone before it stops.
const MAX_HOPS: usize = 16;

/// One resource record of a name (the owner is the name it is `set` on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rr {
    A(Ipv4Addr, u32),
    Aaaa(Ipv6Addr, u32),
    /// An alias: target name (with or without the trailing dot), TTL.
    Cname(String, u32),
}

/// A query the server saw: name (lowercase, no trailing dot; a name
/// that is no hostname in its escaped form, e.g. `a\.b.example`, and
/// answered REFUSED), type, client, over TCP.
pub type Logged = (String, u16, SocketAddr, bool);

type Zone = HashMap<String, Vec<Rr>>;

/// An authoritative DNS server on `addr:53`, UDP and TCP, serving from
/// threads whose sockets were bound inside a namespace. Unknown names are
/// NXDOMAIN; an alias is followed within the zone and the whole chain
/// answered (like a real server); a UDP answer larger than 512 bytes (or
/// the query's EDNS size) goes out truncated (TC, no records), so clients
/// retry over TCP. Stops and joins its threads on drop.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl DnsServer {
    /// Serves on `addr`, port 53, inside the namespace at `netns_path`.
    /// The address must be configured there (an IPv6 one without DAD
    /// pending: add it with `nodad`).
    pub fn start_in(netns_path: &Path, addr: IpAddr) -> Self {
        Self::start_at(netns_path, SocketAddr::new(addr, 53))
    }

    /// Serves on `addr` (a fixed port: UDP and TCP use the same).
    pub fn start_at(netns_path: &Path, addr: SocketAddr) -> Self {
        assert_ne!(addr.port(), 0, "UDP and TCP need the same, fixed port");
        let (udp, tcp) = run_in(netns_path, move || {
            (
                UdpSocket::bind(addr).expect("bind DNS server UDP"),
                TcpListener::bind(addr).expect("bind DNS server TCP"),
            )
        });
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let server = Self {
            addr,
            zone: Arc::default(),
            log: Arc::default(),
            stop: Arc::default(),
            threads: Arc::default(),
        };
        let shared = server.shared();
        let udp_thread = std::thread::spawn(move || shared.serve_udp(udp));
        let shared = server.shared();
        let tcp_thread = std::thread::spawn(move || shared.serve_tcp(tcp));
        server
            .threads
            .lock()
            .unwrap()
            .extend([udp_thread, tcp_thread]);
        server
    }

    fn shared(&self) -> Shared {
        Shared {
            zone: self.zone.clone(),
            log: self.log.clone(),
            stop: self.stop.clone(),
            threads: self.threads.clone(),
        }
    }

    /// Replaces the records of `name` (any case, trailing dot or not); an
    /// empty list keeps the name (NOERROR, no data).
    pub fn set(&self, name: &str, records: Vec<Rr>) {
        self.zone.lock().unwrap().insert(key(name), records);
    }

    /// Forgets `name`: it is NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.zone.lock().unwrap().remove(&key(name));
    }

    /// Every query so far, in order of arrival.
    pub fn queries(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Connection threads may be added until the listener has stopped:
        // join until none is left.
        loop {
            let Some(h) = self.threads.lock().unwrap().pop() else {
                break;
            };
            let _ = h.join();
        }
    }
}

/// What the serving threads share with the server.
#[derive(Clone)]
struct Shared {
    zone: Arc<Mutex<Zone>>,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Shared {
    fn serve_udp(&self, sock: UdpSocket) {
        let mut buf = vec![0u8; 65_535];
        while !self.stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Some(reply) = self.reply(&buf[..n], peer, false) {
                let _ = sock.send_to(&reply, peer);
            }
        }
    }

    fn serve_tcp(&self, listener: TcpListener) {
        while !self.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    let shared = self.clone();
                    let h = std::thread::spawn(move || shared.serve_conn(conn, peer));
                    self.threads.lock().unwrap().push(h);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Answers every message of one connection until the client closes,
    /// stays idle for `TIMEOUT`, or the server stops.
    fn serve_conn(&self, mut conn: TcpStream, peer: SocketAddr) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
        let mut framer = TcpFramer::new();
        let mut buf = [0u8; 4096];
        let mut idle_since = Instant::now();
        while !self.stop.load(Ordering::Relaxed) && idle_since.elapsed() < TIMEOUT {
            let n = match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            };
            idle_since = Instant::now();
            for msg in framer.push(&buf[..n]) {
                if let Some(reply) = self.reply(&msg, peer, true) {
                    if conn.write_all(&frame(&reply)).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The answer to one message, logged; `None` for what is no query.
    fn reply(&self, msg: &[u8], peer: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let query = Message::from_vec(msg).ok()?;
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut out = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        out.metadata = Metadata::response_from_request(&query.metadata);
        out.metadata.authoritative = true;
        let [q] = query.queries.as_slice() else {
            out.metadata.response_code = ResponseCode::FormErr;
            return out.to_vec().ok();
        };
        out.add_query(q.clone());
        let qtype = u16::from(q.query_type);
        let qname = name_of(&q.name);
        // A name that is no hostname is logged in its escaped form.
        let logged = qname.clone().unwrap_or_else(|| key(&q.name.to_ascii()));
        self.log.lock().unwrap().push((logged, qtype, peer, tcp));
        let Some(qname) = qname else {
            out.metadata.response_code = ResponseCode::Refused;
            return out.to_vec().ok();
        };
        if query.metadata.op_code != OpCode::Query || q.query_class != DNSClass::IN {
            out.metadata.response_code = ResponseCode::NotImp;
            return out.to_vec().ok();
        }
        let (rcode, records) = lookup(&self.zone.lock().unwrap(), &qname, qtype);
        out.metadata.response_code = rcode;
        out.add_answers(records);
        let bytes = out.to_vec().ok()?;
        let limit = query
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()).max(512));
        if !tcp && bytes.len() > limit {
            return out.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// The zone's key of a name: lowercase, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What an authoritative server answers for `qname`/`qtype` from `zone`:
/// the CNAME chain within the zone, then the records of the type asked
/// for (A and AAAA for ANY); NXDOMAIN when the chain ends at a name the
/// zone does not have.
fn lookup(zone: &Zone, qname: &str, qtype: u16) -> (ResponseCode, Vec<Record>) {
    let mut out = Vec::new();
    let mut current = qname.to_string();
    for _ in 0..MAX_HOPS {
        let Some(rrs) = zone.get(&current) else {
            return (ResponseCode::NXDomain, out);
        };
        let alias = rrs.iter().find_map(|rr| match rr {
            Rr::Cname(target, ttl) => Some((key(target), *ttl)),
            _ => None,
        });
        if let Some((target, ttl)) = alias {
            out.push(record(&current, &Rr::Cname(target.clone(), ttl)));
            if qtype == CNAME_TYPE {
                break;
            }
            current = target;
            continue;
        }
        out.extend(
            rrs.iter()
                .filter(|rr| match rr {
                    Rr::A(..) => qtype == A_TYPE || qtype == ANY_TYPE,
                    Rr::Aaaa(..) => qtype == AAAA_TYPE || qtype == ANY_TYPE,
                    Rr::Cname(..) => false,
                })
                .map(|rr| record(&current, rr)),
        );
        break;
    }
    (ResponseCode::NoError, out)
}

fn dns_name(name: &str) -> Name {
    let mut n = Name::from_ascii(name).unwrap_or_else(|e| panic!("DNS name {name:?}: {e}"));
    n.set_fqdn(true);
    n
}

fn record(owner: &str, rr: &Rr) -> Record {
    let (ttl, data) = match rr {
        Rr::A(ip, ttl) => (*ttl, RData::A(A(*ip))),
        Rr::Aaaa(ip, ttl) => (*ttl, RData::AAAA(AAAA(*ip))),
        Rr::Cname(target, ttl) => (*ttl, RData::CNAME(CNAME(dns_name(target)))),
    };
    Record::from_rdata(dns_name(owner), ttl, data)
}

/// A query (RD set) for `name` of type `qtype` with the given id.
pub fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(dns_name(name), RecordType::from(qtype)));
    m.to_vec().expect("encode a query")
}

/// An answer (NOERROR, AA) to `name`/`qtype` with id `id` whose answer
/// section holds `records` in order, owned like a server's chain: the
/// first by `name`, each one after a `Cname` by that alias's target. To
/// forge records of any owner, see [`answer_bytes_owned`].
pub fn answer_bytes(id: u16, name: &str, qtype: u16, records: &[Rr]) -> Vec<u8> {
    let mut owner = name.to_string();
    let owned: Vec<(String, Rr)> = records
        .iter()
        .map(|rr| {
            let this = owner.clone();
            if let Rr::Cname(target, _) = rr {
                owner = target.clone();
            }
            (this, rr.clone())
        })
        .collect();
    answer_bytes_owned(id, name, qtype, ResponseCode::NoError.into(), &owned)
}

/// An answer to `name`/`qtype` with id `id` and response code `rcode`
/// whose answer section holds each record under the owner given with it.
pub fn answer_bytes_owned(
    id: u16,
    name: &str,
    qtype: u16,
    rcode: u16,
    records: &[(String, Rr)],
) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = true;
    m.metadata.response_code = <ResponseCode as From<u16>>::from(rcode);
    m.add_query(Query::query(dns_name(name), RecordType::from(qtype)));
    m.add_answers(records.iter().map(|(owner, rr)| record(owner, rr)));
    m.to_vec().expect("encode an answer")
}

/// A message as DNS over TCP sends it: its length, two bytes big-endian,
/// then the message.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("a DNS message fits 65535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// Sends `msg` to `server` from the namespace at `netns_path` (UDP, or TCP
/// with framing) and returns the first reply and the time it took; an
/// error if none comes within [`TIMEOUT`].
pub fn exchange(
    netns_path: &Path,
    server: SocketAddr,
    msg: &[u8],
    tcp: bool,
) -> Result<(Vec<u8>, Duration)> {
    let msg = msg.to_vec();
    run_in(netns_path, move || {
        let start = Instant::now();
        let reply = if tcp {
            let mut conn = TcpStream::connect_timeout(&server, TIMEOUT)
                .with_context(|| format!("connect to {server}"))?;
            conn.set_read_timeout(Some(TIMEOUT))?;
            conn.write_all(&frame(&msg))?;
            let mut framer = TcpFramer::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = conn
                    .read(&mut buf)
                    .with_context(|| format!("no answer from {server} over TCP"))?;
                ensure!(n > 0, "{server} closed the connection without an answer");
                if let Some(reply) = framer.push(&buf[..n]).into_iter().next() {
                    break reply;
                }
            }
        } else {
            let local: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local)?;
            sock.connect(server)?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.send(&msg)?;
            let mut buf = vec![0u8; 65_535];
            let n = sock
                .recv(&mut buf)
                .with_context(|| format!("no answer from {server} over UDP"))?;
            buf.truncate(n);
            buf
        };
        Ok((reply, start.elapsed()))
    })
}

/// An answer's response code other than NOERROR, as the error of
/// [`resolve`] (`err.downcast_ref::<Rcode>()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rcode(pub u16);

impl std::fmt::Display for Rcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DNS answer with response code {}", self.0)
    }
}

impl std::error::Error for Rcode {}

/// Resolves `name`/`qtype` at `server` from the namespace at `netns_path`,
/// over UDP or TCP: the addresses the answer teaches (as netiso reads them,
/// `host::dns::parse_answer`: the CNAME chain from the question, in answer
/// order) and the round-trip time. An error when no answer comes, when it
/// does not answer this query (id, name, type) or is truncated, and an
/// [`Rcode`] error for a response code other than NOERROR.
pub fn resolve(
    netns_path: &Path,
    server: SocketAddr,
    name: &str,
    qtype: u16,
    tcp: bool,
) -> Result<(Vec<IpAddr>, Duration)> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(0);
    let id = NEXT_ID
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id() as u16);
    let (reply, rtt) = exchange(netns_path, server, &query_bytes(id, name, qtype), tcp)?;
    let Some(answer) = parse_answer(&reply) else {
        bail!(
            "{server} sent no usable answer for {name} ({} bytes, truncated or malformed)",
            reply.len()
        );
    };
    ensure!(
        answer.id == id && answer.name == key(name) && answer.qtype == qtype,
        "{server} answered another query: {answer:?}"
    );
    if answer.rcode != 0 {
        return Err(anyhow::Error::new(Rcode(answer.rcode)).context(format!("resolving {name}")));
    }
    Ok((answer.addresses.into_iter().map(|l| l.addr).collect(), rtt))
}
