//! Egress by name: the service that learns, per container, the addresses
//! behind the names some rule allows, from the DNS answers the container
//! really receives, and writes them into the datapath's `FQDN` map.
//!
//! The programs copy the DNS queries leaving such a container and the
//! answers entering it (`NETISO_DNS`), holding the answers. Here each
//! query is remembered (endpoint, resolver, client port, id, name); an
//! answer counts only when it matches one (so a forged or replayed answer
//! teaches nothing); its addresses become the names' for the container, on
//! every veth it has, until the TTL (at least `min_ttl`) plus `grace` runs
//! out; then the answer is sent on (marked, so the programs let it pass).
//! A container that connects right after its answer never races the map.
//!
//! [`Learner`] is the pure part (copies in, map writes out); [`run`] the
//! I/O around it. Uses `host` (DNS messages, the packet socket),
//! `datapath` (pins), `observe` (state, telemetry, names file).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use netiso_common::{
    family, limits, maps, proto, Direction, DnsCopy, FqdnKey, FqdnValue, FQDN_PEERS,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info_span, warn};

use crate::datapath::counters::open_pinned;
use crate::host::dns::{self, TcpFramer};
use crate::host::packet::Injector;
use crate::observe::clock::{deadline_to_unix, monotonic_ns};
use crate::observe::names::{LearnedName, Names};
use crate::observe::state::State;
use crate::observe::telemetry;

/// Settings of the name learner (`netiso daemon --fqdn-…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqdnOptions {
    /// An answer's addresses count at least this long, whatever its TTL.
    pub min_ttl: Duration,
    /// And this much longer than the TTL (a client may connect a moment
    /// after its cache's TTL ran out).
    pub grace: Duration,
    /// Addresses one container may have learned at once.
    pub per_container: usize,
}

impl Default for FqdnOptions {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            per_container: 1024,
        }
    }
}

/// An answer's TTL counts at most this long (a resolver cannot make an
/// address a name's for years).
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Names one learned address keeps (a container asking a thousand names
/// of one wildcard that all resolve to one address keeps the first ones).
const NAMES_PER_ADDRESS: usize = 16;
/// Queries one veth may have waiting; a flood pushes out its own oldest.
const PENDING_PER_VETH: usize = 256;
/// How long a query waits for its answer.
const QUERY_TIMEOUT_NS: u64 = 10_000_000_000;
/// Queries remembered at once (over all containers): a container that
/// floods queries pushes out only its own oldest when full.
const MAX_PENDING: usize = 16_384;
/// TCP streams followed at once.
const MAX_STREAMS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueryKey {
    ifindex: u32,
    resolver: IpAddr,
    client_port: u16,
    id: u16,
    tcp: bool,
}

#[derive(Clone, Debug)]
struct Pending {
    name: String,
    qtype: u16,
    at_ns: u64,
}

/// One direction of a TCP connection to a resolver, as seen on a veth.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StreamKey {
    ifindex: u32,
    resolver: IpAddr,
    client_port: u16,
    from_client: bool,
}

struct Stream {
    framer: TcpFramer,
    /// The next sequence number expected (a retransmission is skipped, a
    /// gap resets the stream).
    next_seq: Option<u32>,
}

/// A learned address of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Learned {
    names: BTreeSet<String>,
    identities: Vec<u32>,
    expires_ns: u64,
    ifindexes: Vec<u32>,
}

/// What to do after a copy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries to write into `FQDN`.
    pub writes: Vec<(FqdnKey, FqdnValue)>,
    /// Entries to delete (veths the container no longer has).
    pub deletes: Vec<FqdnKey>,
    /// The copy was held: send the frame on.
    pub reinject: bool,
}

/// The pure part: copies in, map contents out.
pub struct Learner {
    opts: FqdnOptions,
    pending: HashMap<QueryKey, Pending>,
    streams: HashMap<StreamKey, Stream>,
    /// container name -> address -> what it learned.
    learned: BTreeMap<String, BTreeMap<IpAddr, Learned>>,
    /// FQDN map entries written (for the global limit).
    entries: usize,
}

/// The L3/L4 of a copied frame.
#[derive(Debug)]
struct Segment<'a> {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tcp: Option<u32>,
    payload: &'a [u8],
}

fn segment(frame: &[u8]) -> Option<Segment<'_>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (src, dst, l4proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            // A fragment is not a whole message.
            if ihl < 20 || frag & 0x3fff != 0 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                *ip.get(9)?,
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        0x86dd => {
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            // Extension headers before DNS are not worth following here.
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                *ip.get(6)?,
                ip.get(40..(40 + plen).min(ip.len()))?,
            )
        }
        _ => return None,
    };
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (sport, dport) = (port(0)?, port(2)?);
    match l4proto {
        proto::UDP => Some(Segment {
            src,
            dst,
            sport,
            dport,
            tcp: None,
            payload: l4.get(8..)?,
        }),
        proto::TCP => {
            let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
            let hdr = usize::from(l4.get(12)? >> 4) * 4;
            Some(Segment {
                src,
                dst,
                sport,
                dport,
                tcp: Some(seq),
                payload: l4.get(hdr..)?,
            })
        }
        _ => None,
    }
}

impl Learner {
    pub fn new(opts: FqdnOptions) -> Self {
        Self {
            opts,
            pending: HashMap::new(),
            streams: HashMap::new(),
            learned: BTreeMap::new(),
            entries: 0,
        }
    }

    /// Handles one copy the programs sent, judged against `st`.
    pub fn on_copy(
        &mut self,
        st: &State,
        dir: u8,
        ifindex: u32,
        frame: &[u8],
        now_ns: u64,
    ) -> Outcome {
        let mut out = Outcome::default();
        let Some(seg) = segment(frame) else {
            if dir == Direction::Ingress as u8 {
                answers("unparsed");
            }
            return out;
        };
        let from_client = dir == Direction::Egress as u8;
        let (resolver, client_port) = if from_client {
            (seg.dst, seg.sport)
        } else {
            (seg.src, seg.dport)
        };
        let messages = match seg.tcp {
            None => vec![seg.payload.to_vec()],
            Some(seq) => self.stream(
                StreamKey {
                    ifindex,
                    resolver,
                    client_port,
                    from_client,
                },
                seq,
                seg.payload,
            ),
        };
        let tcp = seg.tcp.is_some();
        for msg in messages {
            if from_client {
                let Some(q) = dns::parse_query(&msg) else {
                    continue;
                };
                self.remember(
                    QueryKey {
                        ifindex,
                        resolver,
                        client_port,
                        id: q.id,
                        tcp,
                    },
                    Pending {
                        name: q.name,
                        qtype: q.qtype,
                        at_ns: now_ns,
                    },
                );
            } else {
                self.answer(
                    st,
                    ifindex,
                    resolver,
                    client_port,
                    tcp,
                    &msg,
                    now_ns,
                    &mut out,
                );
            }
        }
        out
    }

    fn stream(&mut self, key: StreamKey, seq: u32, payload: &[u8]) -> Vec<Vec<u8>> {
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            // Forget the streams of the oldest clients first would need an
            // order; forgetting all is simple and only costs their learning.
            self.streams.clear();
        }
        let s = self.streams.entry(key).or_insert_with(|| Stream {
            framer: TcpFramer::new(),
            next_seq: None,
        });
        match s.next_seq {
            Some(n) if n.wrapping_sub(seq) < 1 << 30 && n != seq => {
                // Already seen (a retransmission), or partly: skip it.
                return Vec::new();
            }
            Some(n) if n != seq => s.framer.reset(),
            _ => {}
        }
        s.next_seq = Some(seq.wrapping_add(payload.len() as u32));
        s.framer.push(payload)
    }

    fn remember(&mut self, key: QueryKey, p: Pending) {
        let ifindex = key.ifindex;
        let mine = self.pending.keys().filter(|k| k.ifindex == ifindex).count();
        if mine >= PENDING_PER_VETH || self.pending.len() >= MAX_PENDING {
            // The asking veth's own oldest query makes room: one container
            // flooding queries never pushes out another's.
            let oldest = self
                .pending
                .iter()
                .filter(|(k, _)| k.ifindex == ifindex)
                .min_by_key(|(_, q)| q.at_ns)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(old) => {
                    self.pending.remove(&old);
                }
                None => return,
            }
        }
        self.pending.insert(key, p);
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        st: &State,
        ifindex: u32,
        resolver: IpAddr,
        client_port: u16,
        tcp: bool,
        msg: &[u8],
        now_ns: u64,
        out: &mut Outcome,
    ) {
        let Some(a) = dns::parse_answer(msg) else {
            answers("unparsed");
            return;
        };
        let key = QueryKey {
            ifindex,
            resolver,
            client_port,
            id: a.id,
            tcp,
        };
        // Only the answer to a query this container sent, for the name it
        // asked, teaches anything; it is used up.
        let asked = self.pending.get(&key).is_some_and(|p| {
            p.name == a.name
                && p.qtype == a.qtype
                && now_ns.saturating_sub(p.at_ns) < QUERY_TIMEOUT_NS
        });
        if !asked {
            answers("unmatched");
            return;
        }
        self.pending.remove(&key);
        let identities: Vec<u32> = st
            .fqdns
            .iter()
            .filter(|f| {
                f.patterns
                    .iter()
                    .any(|p| crate::policy::fqdn::pattern_matches(p, &a.name))
            })
            .map(|f| f.identity)
            .collect();
        let Some(container) = st
            .endpoints
            .iter()
            .find(|e| e.ifindex == Some(ifindex))
            .map(|e| e.container.clone())
        else {
            answers("unmatched");
            return;
        };
        if identities.is_empty() {
            answers("unnamed");
            return;
        }
        answers("learned");
        let ifindexes: Vec<u32> = st
            .endpoints
            .iter()
            .filter(|e| e.container == container && e.resolves_names)
            .filter_map(|e| e.ifindex)
            .collect();
        for l in &a.addresses {
            let ttl = Duration::from_secs(u64::from(l.ttl))
                .max(self.opts.min_ttl)
                .min(MAX_TTL.max(self.opts.min_ttl));
            let expires_ns = now_ns + (ttl + self.opts.grace).as_nanos() as u64;
            let mine = self.learned.entry(container.clone()).or_default();
            let fresh = !mine.contains_key(&l.addr);
            if fresh
                && (mine.len() >= self.opts.per_container
                    || self.entries + ifindexes.len() > limits::FQDN as usize)
            {
                telemetry::global().fqdn_refused.inc();
                continue;
            }
            let entry = mine.entry(l.addr).or_insert_with(|| Learned {
                names: BTreeSet::new(),
                identities: Vec::new(),
                expires_ns: 0,
                ifindexes: Vec::new(),
            });
            if entry.names.len() < NAMES_PER_ADDRESS {
                entry.names.insert(a.name.clone());
            }
            for id in &identities {
                if !entry.identities.contains(id) && entry.identities.len() < FQDN_PEERS {
                    entry.identities.push(*id);
                }
            }
            entry.expires_ns = entry.expires_ns.max(expires_ns);
            // The container's veths now: rows of veths it no longer has go.
            for gone in entry.ifindexes.iter().filter(|i| !ifindexes.contains(i)) {
                out.deletes.push(key_of(*gone, l.addr));
                self.entries = self.entries.saturating_sub(1);
            }
            entry.ifindexes.retain(|i| ifindexes.contains(i));
            for i in &ifindexes {
                if !entry.ifindexes.contains(i) {
                    entry.ifindexes.push(*i);
                    self.entries += 1;
                }
            }
            telemetry::global().fqdn_learned.inc();
            let mut ids = [0u32; FQDN_PEERS];
            for (slot, id) in ids.iter_mut().zip(&entry.identities) {
                *slot = *id;
            }
            for i in &entry.ifindexes {
                out.writes.push((
                    key_of(*i, l.addr),
                    FqdnValue {
                        expires_ns: entry.expires_ns,
                        identities: ids,
                    },
                ));
            }
        }
    }

    /// Drops what expired by `now_ns`: the map keys to delete.
    pub fn expire(&mut self, now_ns: u64) -> Vec<FqdnKey> {
        let mut gone = Vec::new();
        for mine in self.learned.values_mut() {
            mine.retain(|addr, l| {
                if l.expires_ns > now_ns {
                    return true;
                }
                telemetry::global().fqdn_expired.inc();
                gone.extend(l.ifindexes.iter().map(|i| key_of(*i, *addr)));
                false
            });
        }
        self.learned.retain(|_, m| !m.is_empty());
        self.entries = self.entries.saturating_sub(gone.len());
        self.pending
            .retain(|_, q| now_ns.saturating_sub(q.at_ns) < QUERY_TIMEOUT_NS);
        gone
    }

    /// What `netiso status` shows.
    pub fn names(&self) -> Names {
        let mut out = Names::default();
        for (container, mine) in &self.learned {
            let mut by_name: BTreeMap<&String, LearnedName> = BTreeMap::new();
            for (addr, l) in mine {
                for n in &l.names {
                    let row = by_name.entry(n).or_insert_with(|| LearnedName {
                        name: n.clone(),
                        ..LearnedName::default()
                    });
                    row.addresses.push(*addr);
                    row.expires = row.expires.max(deadline_to_unix(l.expires_ns));
                }
            }
            out.containers
                .insert(container.clone(), by_name.into_values().collect());
        }
        out
    }
}

fn answers(result: &str) {
    telemetry::global()
        .fqdn_answers
        .get_or_create(&vec![("result".into(), result.into())])
        .inc();
}

fn key_of(ifindex: u32, addr: IpAddr) -> FqdnKey {
    let (family, addr) = match addr {
        IpAddr::V4(v) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v.octets());
            (family::V4, a)
        }
        IpAddr::V6(v) => (family::V6, v.octets()),
    };
    FqdnKey {
        ifindex,
        family,
        _pad: [0; 3],
        addr,
    }
}

/// The service: reads the copies, learns, writes the map, sends held
/// answers on, expires; restarts itself after errors.
pub async fn run(
    pin_dir: PathBuf,
    state_dir: PathBuf,
    state: watch::Receiver<Arc<State>>,
    opts: FqdnOptions,
    injector: Injector,
) {
    let mut learner = Learner::new(opts);
    loop {
        if let Err(e) = serve(&pin_dir, &state_dir, &state, &mut learner, &injector).await {
            warn!(
                error = format!("{e:#}"),
                "the name learner failed; starting again"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(
    pin_dir: &std::path::Path,
    state_dir: &std::path::Path,
    state: &watch::Receiver<Arc<State>>,
    learner: &mut Learner,
    injector: &Injector,
) -> Result<()> {
    let ring = RingBuf::try_from(open_pinned(pin_dir, maps::DNS)?).context("NETISO_DNS")?;
    // SAFETY: the ring buffer owns its map fd, which stays open for as long
    // as the AsyncFd (its owner) lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut map: BpfHashMap<MapData, FqdnKey, FqdnValue> =
        BpfHashMap::try_from(open_pinned(pin_dir, maps::FQDN)?).context("NETISO_FQDN")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shown = Names::default();
    let mut sweeps: u64 = 0;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let st = state.borrow().clone();
                let rb = guard.get_inner_mut();
                // At most this many at once, then the other tasks get the
                // worker (a flood of copies must not pin it).
                let mut budget = 256;
                while let Some(item) = rb.next() {
                    budget -= 1;
                    if item.len() < size_of::<DnsCopy>() {
                        continue;
                    }
                    // SAFETY: the record holds a whole DnsCopy the programs
                    // wrote (length checked), read unaligned from its bytes.
                    let copy: DnsCopy = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    drop(item);
                    let _span = info_span!("dns", ifindex = copy.ifindex).entered();
                    let len = (copy.len as usize).min(copy.data.len());
                    let frame = &copy.data[..len];
                    let out = learner.on_copy(&st, copy.direction, copy.ifindex, frame, monotonic_ns());
                    for k in &out.deletes {
                        let _ = map.remove(k);
                    }
                    for (k, v) in &out.writes {
                        if let Err(e) = map.insert(k, v, 0) {
                            telemetry::global().fqdn_refused.inc();
                            warn!(error = %e, "cannot write a learned address");
                        }
                    }
                    if copy.held != 0 {
                        if let Err(e) = injector.send(copy.ifindex, frame) {
                            warn!(error = format!("{e:#}"), "cannot send a DNS answer on");
                        }
                        let held = monotonic_ns().saturating_sub(copy.ts_ns);
                        telemetry::global().fqdn_hold_seconds.observe(held as f64 / 1e9);
                        debug!(held_us = held / 1000, learned = out.writes.len(), "DNS answer sent on");
                    }
                    if budget == 0 {
                        break;
                    }
                }
                if budget > 0 {
                    guard.clear_ready();
                } else {
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            _ = tick.tick() => {
                let now = monotonic_ns();
                for k in learner.expire(now) {
                    let _ = map.remove(&k);
                }
                // Rows this learner never wrote (left by a daemon before a
                // restart) go once they expire.
                sweeps += 1;
                if sweeps % 10 == 1 {
                    let old: Vec<FqdnKey> = map
                        .iter()
                        .flatten()
                        .filter(|(_, v)| v.expires_ns < now)
                        .map(|(k, _)| k)
                        .collect();
                    for k in old {
                        let _ = map.remove(&k);
                    }
                }
                let names = learner.names();
                if names != shown {
                    if let Err(e) = names.write(state_dir) {
                        warn!(error = format!("{e:#}"), "cannot write the learned names");
                    }
                    shown = names;
                }
            }
        }
    }
}
