//! `netiso verify`: probe real connectivity between representative
//! containers of every pair of groups and compare it with what the compiled
//! policy says. The tool an auditor runs after a deploy.
//!
//! Probes run from inside the source container's network namespace (setns
//! on a worker thread), so they take exactly the path the container's own
//! traffic takes, through both containers' veths.
//!
//! How a probe decides "reachable":
//! - TCP: a completed handshake or a RST (connection refused) both prove the
//!   SYN got through; silence until the timeout means blocked.
//! - UDP: verify opens a temporary listener on the port inside the
//!   destination's namespace and checks that the datagram arrives:
//!   conclusive both ways. If the port is taken (a real service listens),
//!   a reply or an ICMP port-unreachable proves reachability, but silence
//!   proves nothing: the probe is reported as inconclusive.
//! - ICMP: an echo reply proves reachability; silence means blocked.
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use netiso_common::{identity, proto, Action};
use serde::Serialize;

use crate::commands::Conn;
use crate::model::Container;
use crate::policy::{self, Compiled, IdentityAllocator, Policy, PortSpec, Proto};

#[derive(clap::Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Policy to check against [default: the one the daemon runs].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Only pairs involving these groups (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Time to wait for each probe's answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Probes run at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Never open temporary UDP listeners in destination containers
    /// (UDP probes then often end inconclusive).
    #[arg(long)]
    pub no_listen: bool,
    /// Print every probe, not only mismatches and inconclusive ones.
    #[arg(long, short)]
    pub verbose: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// A class of peers: a group, `unmanaged` containers, or the `host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Class(pub String);

const UNMANAGED: &str = "unmanaged";
const HOST: &str = "host";

/// Who a probe runs as, or goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Container name, or `host`.
    pub name: String,
    /// Network namespace to enter (`None`: the host's, where verify runs).
    #[serde(skip)]
    pub netns: Option<PathBuf>,
    pub ip: Ipv4Addr,
    pub identity: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    Udp,
    Icmp,
}

impl ProbeProto {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Icmp => proto::ICMP,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum Observed {
    /// TCP handshake completed.
    Open,
    /// TCP RST or ICMP port unreachable: the packet reached the peer.
    Refused,
    /// The UDP datagram arrived at verify's temporary listener.
    Delivered,
    /// A UDP reply from the service on the port.
    Replied,
    /// ICMP echo reply.
    Echo,
    /// Nothing came back within the timeout (a listener was waiting).
    NoAnswer,
    /// UDP to a port a real service holds: no reply, which proves nothing.
    Silent,
    /// The probe itself failed.
    Error(String),
}

impl Observed {
    /// `Some(true)` reachable, `Some(false)` blocked, `None` unknown.
    pub fn reachable(&self) -> Option<bool> {
        match self {
            Self::Open | Self::Refused | Self::Delivered | Self::Replied | Self::Echo => Some(true),
            Self::NoAnswer => Some(false),
            Self::Silent | Self::Error(_) => None,
        }
    }
    fn describe(&self) -> String {
        match self {
            Self::Open => "connected".into(),
            Self::Refused => "refused (reached, nothing listens)".into(),
            Self::Delivered => "datagram delivered".into(),
            Self::Replied => "reply received".into(),
            Self::Echo => "echo reply".into(),
            Self::NoAnswer => "no answer (blocked)".into(),
            Self::Silent => "no reply from the service (inconclusive)".into(),
            Self::Error(e) => format!("probe failed: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Mismatch,
    Inconclusive,
}

/// One probe and its verdicts.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub from_class: Class,
    pub to_class: Class,
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: ProbeProto,
    /// 0 for ICMP.
    pub port: u16,
    /// Why this port: `rule #N` or `no rule`.
    pub port_source: String,
    /// `allow` (audit counts as allow: it passes) or `deny`.
    pub expected: String,
    pub expected_rule: u32,
    pub expected_why: String,
    pub observed: Observed,
    pub outcome: Outcome,
}

/// Pairs that could not be probed, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub from_class: Class,
    pub to_class: Class,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub policy: PathBuf,
    pub probes: Vec<Probe>,
    pub skipped: Vec<Skipped>,
    pub ok: usize,
    pub mismatches: usize,
    pub inconclusive: usize,
}

/// A probe to run, before it ran.
#[derive(Clone, Debug)]
pub struct Plan {
    pub from_class: Class,
    pub to_class: Class,
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: ProbeProto,
    pub port: u16,
    pub port_source: String,
}

struct Member<'a> {
    c: &'a Container,
    identity: u32,
}

/// The lowest port from 47000 up that no rule covers for `proto`.
fn unlisted_port(policy: &Policy, proto: u8) -> u16 {
    (47000..=u16::MAX)
        .find(|p| !policy.rules.iter().any(|r| r.covers(proto, *p)))
        .unwrap_or(47000)
}

/// The default gateway of a process's network namespace (the host's
/// address on the container's network, for Docker bridges).
fn gateway_of(pid: u32) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000")
            .then(|| u32::from_str_radix(f[2], 16).ok())
            .flatten()
            .map(|g| Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// Decides which probes to run: for every ordered pair of classes, one
/// representative source and destination sharing a network; the ports of
/// the rules between them, one port no rule names (TCP and UDP), and ICMP.
pub fn plan(
    policy: &Policy,
    compiled: &Compiled,
    containers: &[Container],
    only: &[String],
) -> (Vec<Plan>, Vec<Skipped>) {
    let mut classes: BTreeMap<Class, Vec<Member<'_>>> = BTreeMap::new();
    for g in &policy.groups {
        classes.entry(Class(g.name.clone())).or_default();
    }
    let mut sorted: Vec<&Container> = containers
        .iter()
        .filter(|c| c.pid > 0 && c.networks.iter().any(|a| a.ipv4.is_some()))
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for c in sorted {
        let identity = compiled
            .container_identity
            .get(&c.id)
            .copied()
            .unwrap_or(identity::UNMANAGED);
        let groups = policy.groups_of(c);
        if groups.is_empty() {
            classes
                .entry(Class(UNMANAGED.into()))
                .or_default()
                .push(Member { c, identity });
        }
        for g in groups {
            classes
                .entry(Class(g))
                .or_default()
                .push(Member { c, identity });
        }
    }
    // Unmanaged containers that share a network with a managed one are the
    // peers that matter: try them first.
    let managed_nets: BTreeSet<&str> = classes
        .iter()
        .filter(|(c, _)| c.0 != UNMANAGED)
        .flat_map(|(_, ms)| ms.iter())
        .flat_map(|m| m.c.networks.iter().map(|a| a.network.as_str()))
        .collect();
    if let Some(ms) = classes.get_mut(&Class(UNMANAGED.into())) {
        ms.sort_by_key(|m| {
            let near =
                m.c.networks
                    .iter()
                    .any(|a| managed_nets.contains(a.network.as_str()));
            (!near, m.c.name.clone())
        });
    }
    let uses_host = policy
        .rules
        .iter()
        .any(|r| r.from.name() == HOST || r.to.name() == HOST);
    let mut names: Vec<Class> = classes.keys().cloned().collect();
    if uses_host {
        names.push(Class(HOST.into()));
    }
    let wanted = |c: &Class| only.is_empty() || only.contains(&c.0);
    let tcp_free = unlisted_port(policy, proto::TCP);
    let udp_free = unlisted_port(policy, proto::UDP);
    let ns = |c: &Container| Some(PathBuf::from(format!("/proc/{}/ns/net", c.pid)));

    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    for sc in &names {
        for dc in &names {
            // Nothing of netiso's lies between two unmanaged containers
            // (or the host and itself).
            let same_reserved = sc == dc && (sc.0 == HOST || sc.0 == UNMANAGED);
            if !(wanted(sc) || wanted(dc)) || same_reserved {
                continue;
            }
            let skip = |reason: &str| Skipped {
                from_class: sc.clone(),
                to_class: dc.clone(),
                reason: reason.into(),
            };
            let empty = Vec::new();
            let src_members = classes.get(sc).unwrap_or(&empty);
            let dst_members = classes.get(dc).unwrap_or(&empty);
            let pair = if sc.0 == HOST {
                dst_members.first().and_then(|d| {
                    let ip = d.c.networks.iter().find_map(|a| a.ipv4)?;
                    Some((
                        Endpoint {
                            name: HOST.into(),
                            netns: None,
                            ip: Ipv4Addr::UNSPECIFIED,
                            identity: identity::HOST,
                        },
                        Endpoint {
                            name: d.c.name.clone(),
                            netns: ns(d.c),
                            ip,
                            identity: d.identity,
                        },
                    ))
                })
            } else if dc.0 == HOST {
                src_members.first().and_then(|s| {
                    let gw = gateway_of(s.c.pid)?;
                    Some((
                        Endpoint {
                            name: s.c.name.clone(),
                            netns: ns(s.c),
                            ip: s.c.networks.iter().find_map(|a| a.ipv4)?,
                            identity: s.identity,
                        },
                        Endpoint {
                            name: HOST.into(),
                            netns: None,
                            ip: gw,
                            identity: identity::HOST,
                        },
                    ))
                })
            } else {
                // First (source, destination) by name that share a network.
                src_members.iter().find_map(|s| {
                    dst_members.iter().find_map(|d| {
                        if s.c.id == d.c.id {
                            return None;
                        }
                        s.c.networks.iter().find_map(|sa| {
                            let da = d.c.networks.iter().find(|da| da.network == sa.network)?;
                            Some((
                                Endpoint {
                                    name: s.c.name.clone(),
                                    netns: ns(s.c),
                                    ip: sa.ipv4?,
                                    identity: s.identity,
                                },
                                Endpoint {
                                    name: d.c.name.clone(),
                                    netns: ns(d.c),
                                    ip: da.ipv4?,
                                    identity: d.identity,
                                },
                            ))
                        })
                    })
                })
            };
            let Some((from, to)) = pair else {
                skipped.push(skip(if src_members.is_empty() && sc.0 != HOST {
                    "no running container in the source group"
                } else if dst_members.is_empty() && dc.0 != HOST {
                    "no running container in the destination group"
                } else if sc == dc {
                    "needs two containers of the group on one network"
                } else {
                    "no two containers of these groups share a network"
                }));
                continue;
            };
            // Rule ports between these two peers, then the unlisted ones.
            let src_names = compiled_names(compiled, from.identity);
            let dst_names = compiled_names(compiled, to.identity);
            let mut ports: BTreeSet<(ProbeProto, u16, String)> = BTreeSet::new();
            for r in &policy.rules {
                if !(src_names.iter().any(|n| n == r.from.name())
                    && dst_names.iter().any(|n| n == r.to.name()))
                {
                    continue;
                }
                for spec in r.ports.iter().flatten() {
                    let (p, port) = match *spec {
                        PortSpec::Range { proto: p, lo, .. } => (p, lo),
                        PortSpec::Proto(p) => (p, 0),
                    };
                    let pp = match p {
                        Proto::Tcp => ProbeProto::Tcp,
                        Proto::Udp => ProbeProto::Udp,
                        _ => continue,
                    };
                    let port = match (port, pp) {
                        (0, ProbeProto::Tcp) => tcp_free,
                        (0, _) => udp_free,
                        (p, _) => p,
                    };
                    ports.insert((pp, port, format!("rule #{}", r.id)));
                }
            }
            let listed =
                |ports: &BTreeSet<(ProbeProto, u16, String)>, pp: ProbeProto, port: u16| {
                    ports.iter().any(|(p, q, _)| *p == pp && *q == port)
                };
            if !listed(&ports, ProbeProto::Tcp, tcp_free) {
                ports.insert((ProbeProto::Tcp, tcp_free, "no rule".into()));
            }
            if !listed(&ports, ProbeProto::Udp, udp_free) {
                ports.insert((ProbeProto::Udp, udp_free, "no rule".into()));
            }
            ports.insert((ProbeProto::Icmp, 0, "echo".into()));
            for (pp, port, why) in ports {
                plans.push(Plan {
                    from_class: sc.clone(),
                    to_class: dc.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    proto: pp,
                    port,
                    port_source: why,
                });
            }
        }
    }
    (plans, skipped)
}

/// The peer names an identity stands for (its groups, or a reserved name).
fn compiled_names(compiled: &Compiled, id: u32) -> Vec<String> {
    match id {
        identity::HOST => vec![HOST.into()],
        identity::WORLD => vec!["world".into()],
        identity::UNMANAGED => vec![UNMANAGED.into()],
        _ => compiled
            .identities
            .get(&id)
            .map(|d| d.groups.clone())
            .unwrap_or_default(),
    }
}

/// What the compiled tables (exactly what the kernel gets) say.
pub fn expect(compiled: &Compiled, p: &Plan) -> (Action, u32, String) {
    let d = compiled.lookup(p.from.identity, p.to.identity, p.proto.number(), p.port);
    (d.action, d.rule_id, d.why)
}

pub fn judge(expected: Action, observed: &Observed) -> Outcome {
    let allow = expected != Action::Deny;
    match observed.reachable() {
        Some(r) if r == allow => Outcome::Ok,
        Some(_) => Outcome::Mismatch,
        None => Outcome::Inconclusive,
    }
}

// ------------------------------------------------------------------ probes

fn enter(netns: &Option<PathBuf>, home: &File) -> Result<()> {
    let rc = match netns {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: plain syscall on a valid fd; affects this thread only.
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }
        }
        None => unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) },
    };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn probe_tcp(to: SocketAddr, timeout: Duration) -> Observed {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Observed::Open,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Observed::NoAnswer,
        Err(e) => Observed::Error(e.to_string()),
    }
}

static NONCE: AtomicU16 = AtomicU16::new(1);

/// UDP with a temporary listener in the destination's namespace when the
/// port is free there; else by reply or ICMP error.
fn probe_udp(p: &Plan, timeout: Duration, listen: bool, home: &File) -> Observed {
    let to = SocketAddr::V4(SocketAddrV4::new(p.to.ip, p.port));
    let nonce = format!(
        "netiso-verify-{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    );
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<bool>>();
        let listener = listen.then(|| {
            let dst_ns = p.to.netns.clone();
            let nonce = nonce.clone();
            // A new thread starts in its creator's namespace (the
            // source's): `home` is the host's, for a host destination.
            s.spawn(move || -> Option<bool> {
                if let Err(e) = enter(&dst_ns, home) {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
                let sock = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p.port)) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        let _ = ready_tx.send(Ok(false));
                        return None;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok(true));
                let end = Instant::now() + timeout;
                let mut buf = [0u8; 256];
                while let Some(left) = end.checked_duration_since(Instant::now()) {
                    let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    match sock.recv_from(&mut buf) {
                        Ok((n, _)) if &buf[..n] == nonce.as_bytes() => return Some(true),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                Some(false)
            })
        });
        let listening = match &listener {
            Some(_) => match ready_rx.recv() {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Observed::Error(format!("{e:#}")),
                Err(_) => false,
            },
            None => false,
        };
        let sent = (|| -> std::io::Result<Option<Observed>> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(to)?;
            for _ in 0..2 {
                sock.send(nonce.as_bytes())?;
                std::thread::sleep(Duration::from_millis(50));
            }
            if listening {
                return Ok(None);
            }
            sock.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 64];
            Ok(Some(match sock.recv(&mut buf) {
                Ok(_) => Observed::Replied,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Observed::Silent
                }
                Err(e) => Observed::Error(e.to_string()),
            }))
        })();
        match (sent, listener) {
            (Err(e), _) => Observed::Error(e.to_string()),
            (Ok(Some(o)), _) => o,
            (Ok(None), Some(h)) => match h.join() {
                Ok(Some(true)) => Observed::Delivered,
                Ok(Some(false)) => Observed::NoAnswer,
                _ => Observed::Error("the listener failed".into()),
            },
            (Ok(None), None) => Observed::Error("no listener".into()),
        }
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn probe_icmp(to: Ipv4Addr, timeout: Duration) -> Observed {
    let id = NONCE.fetch_add(1, Ordering::Relaxed);
    // SAFETY: socket() returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Observed::Error(format!(
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut pkt = [0u8; 16];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&1u16.to_be_bytes());
    pkt[8..16].copy_from_slice(b"netisovf");
    let ck = checksum(&pkt);
    pkt[2..4].copy_from_slice(&ck.to_be_bytes());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Observed::Error(format!("sending echo: {}", std::io::Error::last_os_error()));
    }
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1000) as libc::suseconds_t,
        };
        // SAFETY: valid option buffer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        let b = &buf[..n as usize];
        // Raw sockets deliver the IP header: skip it.
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if b.len() < ihl + 8 || b[12..16] != to.octets() {
            continue;
        }
        let icmp = &b[ihl..];
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return Observed::Echo;
        }
    }
    Observed::NoAnswer
}

fn run_probe(p: &Plan, timeout: Duration, listen: bool, home: &File) -> Observed {
    if let Err(e) = enter(&p.from.netns, home) {
        return Observed::Error(format!("{e:#}"));
    }
    match p.proto {
        ProbeProto::Tcp => probe_tcp(SocketAddr::V4(SocketAddrV4::new(p.to.ip, p.port)), timeout),
        ProbeProto::Udp => probe_udp(p, timeout, listen, home),
        ProbeProto::Icmp => probe_icmp(p.to.ip, timeout),
    }
}

/// Runs the probes on `parallel` threads. Two UDP probes that would listen
/// on the same port in the same namespace never run at once.
pub fn run_probes(
    plans: &[Plan],
    timeout: Duration,
    parallel: usize,
    listen: bool,
    mut progress: impl FnMut(usize, usize) + Send,
) -> Vec<Observed> {
    type Key = (Option<PathBuf>, u16);
    struct Queue {
        todo: VecDeque<usize>,
        busy: HashSet<Key>,
        done: usize,
    }
    let key = |p: &Plan| -> Option<Key> {
        (p.proto == ProbeProto::Udp).then(|| (p.to.netns.clone(), p.port))
    };
    let q = Mutex::new(Queue {
        todo: (0..plans.len()).collect(),
        busy: HashSet::new(),
        done: 0,
    });
    let cv = Condvar::new();
    let results: Mutex<Vec<Option<Observed>>> = Mutex::new(vec![None; plans.len()]);
    let progress = Mutex::new(&mut progress);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, 64) {
            s.spawn(|| {
                // Every worker returns home before it takes a job for the
                // host (setns only affects this thread).
                let home = match File::open("/proc/thread-self/ns/net") {
                    Ok(f) => f,
                    Err(_) => return,
                };
                loop {
                    let i = {
                        let mut g = q.lock().unwrap();
                        loop {
                            if g.todo.is_empty() {
                                return;
                            }
                            let pos = g
                                .todo
                                .iter()
                                .position(|&i| key(&plans[i]).is_none_or(|k| !g.busy.contains(&k)));
                            match pos {
                                Some(pos) => {
                                    let i = g.todo.remove(pos).unwrap();
                                    if let Some(k) = key(&plans[i]) {
                                        g.busy.insert(k);
                                    }
                                    break i;
                                }
                                None => g = cv.wait(g).unwrap(),
                            }
                        }
                    };
                    let obs = run_probe(&plans[i], timeout, listen, &home);
                    results.lock().unwrap()[i] = Some(obs);
                    let done = {
                        let mut g = q.lock().unwrap();
                        if let Some(k) = key(&plans[i]) {
                            g.busy.remove(&k);
                        }
                        g.done += 1;
                        g.done
                    };
                    cv.notify_all();
                    (progress.lock().unwrap())(done, plans.len());
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Observed::Error("not run".into())))
        .collect()
}

// ------------------------------------------------------------------ command

fn policy_path(a: &VerifyArgs) -> Result<PathBuf> {
    if let Some(p) = &a.policy {
        return Ok(p.clone());
    }
    if let Ok(r) = crate::commands::fetch_status(&a.conn) {
        if !r.policy.path.as_os_str().is_empty() {
            return Ok(r.policy.path);
        }
    }
    let state = crate::state::State::read(&a.conn.state_dir)?;
    if state.policy_path.as_os_str().is_empty() {
        bail!("no policy known: start the daemon, or pass --policy PATH");
    }
    Ok(state.policy_path)
}

pub fn verify(a: &VerifyArgs) -> Result<Report> {
    crate::datapath::require_root("netiso verify")?;
    let path = policy_path(a)?;
    let policy = policy::load_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for g in &a.groups {
        if policy.group(g).is_none() && g != UNMANAGED && g != HOST {
            bail!("the policy has no group {g:?}");
        }
    }
    let containers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            crate::docker::DockerClient::connect()
                .await?
                .running_containers()
                .await
        })?;
    let compiled = policy::compile(&policy, &containers, &mut IdentityAllocator::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (plans, skipped) = plan(&policy, &compiled, &containers, &a.groups);
    let tty = std::io::stderr().is_terminal();
    if !a.json {
        eprintln!(
            "Probing {} paths between {} pairs ({} ms timeout, {} at once)...",
            plans.len(),
            plans
                .iter()
                .map(|p| (&p.from_class, &p.to_class))
                .collect::<BTreeSet<_>>()
                .len(),
            a.timeout_ms,
            a.parallel
        );
    }
    let step = (plans.len() / 10).max(1);
    let observed = run_probes(
        &plans,
        Duration::from_millis(a.timeout_ms),
        a.parallel,
        !a.no_listen,
        |done, total| {
            if a.json {
                return;
            }
            if tty {
                eprint!("\r  {done}/{total} probes done");
                if done == total {
                    eprintln!();
                }
            } else if done % step == 0 || done == total {
                eprintln!("  {done}/{total} probes done");
            }
        },
    );
    let probes: Vec<Probe> = plans
        .into_iter()
        .zip(observed)
        .map(|(p, o)| {
            let (action, rule, why) = expect(&compiled, &p);
            let outcome = judge(action, &o);
            Probe {
                from_class: p.from_class,
                to_class: p.to_class,
                from: p.from,
                to: p.to,
                proto: p.proto,
                port: p.port,
                port_source: p.port_source,
                expected: if action == Action::Deny {
                    "deny"
                } else {
                    "allow"
                }
                .into(),
                expected_rule: rule,
                expected_why: why,
                observed: o,
                outcome,
            }
        })
        .collect();
    let count = |o: Outcome| probes.iter().filter(|p| p.outcome == o).count();
    Ok(Report {
        policy: path,
        ok: count(Outcome::Ok),
        mismatches: count(Outcome::Mismatch),
        inconclusive: count(Outcome::Inconclusive),
        probes,
        skipped,
    })
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The matrix (sources down, destinations across) and the details.
pub fn render(r: &Report, verbose: bool, color: bool) -> String {
    let mut classes: Vec<&Class> = r
        .probes
        .iter()
        .flat_map(|p| [&p.from_class, &p.to_class])
        .chain(r.skipped.iter().flat_map(|s| [&s.from_class, &s.to_class]))
        .collect();
    classes.sort();
    classes.dedup();
    let width = classes.iter().map(|c| c.0.len()).max().unwrap_or(4).max(13);
    let mut out = format!("Policy: {}\n\n", r.policy.display());
    out.push_str(&format!("{:>width$}", "from \\ to"));
    for c in &classes {
        out.push_str(&format!("  {:<width$}", c.0));
    }
    out.push('\n');
    for src in &classes {
        out.push_str(&format!("{:>width$}", src.0));
        for dst in &classes {
            let cell: Vec<&Probe> = r
                .probes
                .iter()
                .filter(|p| &p.from_class == *src && &p.to_class == *dst)
                .collect();
            let text = if cell.is_empty() {
                ("-".to_string(), "2")
            } else {
                let bad = cell
                    .iter()
                    .filter(|p| p.outcome == Outcome::Mismatch)
                    .count();
                let unk = cell
                    .iter()
                    .filter(|p| p.outcome == Outcome::Inconclusive)
                    .count();
                if bad > 0 {
                    (format!("MISMATCH {bad}/{}", cell.len()), "1;31")
                } else if unk > 0 {
                    (
                        format!("ok {}/{} ?{unk}", cell.len() - unk, cell.len()),
                        "33",
                    )
                } else {
                    (format!("ok {}/{}", cell.len(), cell.len()), "32")
                }
            };
            let padded = format!("{:<width$}", text.0);
            out.push_str(&format!("  {}", paint(&padded, text.1, color)));
        }
        out.push('\n');
    }
    let shown: Vec<&Probe> = r
        .probes
        .iter()
        .filter(|p| verbose || p.outcome != Outcome::Ok)
        .collect();
    if !shown.is_empty() {
        out.push('\n');
    }
    for p in shown {
        let what = if p.proto == ProbeProto::Icmp {
            "icmp echo".to_string()
        } else {
            format!("{}/{} ({})", p.port, p.proto.as_str(), p.port_source)
        };
        let tag = match p.outcome {
            Outcome::Ok => paint("ok          ", "32", color),
            Outcome::Mismatch => paint("MISMATCH    ", "1;31", color),
            Outcome::Inconclusive => paint("inconclusive", "33", color),
        };
        out.push_str(&format!(
            "{tag}  {} -> {} {what}: policy says {} ({}); observed {}\n",
            p.from.name,
            p.to.name,
            p.expected,
            if p.expected_rule == 0 {
                "group defaults".to_string()
            } else {
                format!("rule #{}", p.expected_rule)
            },
            p.observed.describe()
        ));
    }
    if !r.skipped.is_empty() {
        out.push_str("\nNot probed:\n");
        for s in &r.skipped {
            out.push_str(&format!(
                "  {} -> {}: {}\n",
                s.from_class.0, s.to_class.0, s.reason
            ));
        }
    }
    out.push_str(&format!(
        "\n{} probes: {} ok, {} mismatches, {} inconclusive\n",
        r.probes.len(),
        r.ok,
        r.mismatches,
        r.inconclusive
    ));
    out
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let r = verify(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let color = std::io::stdout().is_terminal();
        print!("{}", render(&r, a.verbose, color));
    }
    Ok(if r.mismatches > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attachment;

    fn container(name: &str, label: Option<&str>, net: &str, ip: [u8; 4]) -> Container {
        Container {
            published: Vec::new(),
            id: format!("id-{name}"),
            name: name.into(),
            labels: label
                .map(|l| [("tier".to_string(), l.to_string())].into())
                .unwrap_or_default(),
            pid: 100,
            networks: vec![Attachment {
                network: net.into(),
                ipv4: Some(ip.into()),
                ..Attachment::default()
            }],
            ..Container::default()
        }
    }

    const POLICY: &str = r#"
[groups.web]
labels = { tier = "web" }
[groups.db]
labels = { tier = "db" }
ingress = "deny"
[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp", "53/udp"]
action = "allow"
"#;

    #[test]
    fn plans_rule_ports_an_unlisted_port_and_icmp_per_pair() {
        let policy = policy::parse_str(POLICY, "t.toml").unwrap();
        let cs = vec![
            container("web1", Some("web"), "n", [10, 0, 0, 2]),
            container("db1", Some("db"), "n", [10, 0, 0, 3]),
            container("plain", None, "n", [10, 0, 0, 4]),
            container("far", Some("db"), "other", [10, 9, 0, 5]),
        ];
        let compiled = policy::compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap();
        let (plans, skipped) = plan(&policy, &compiled, &cs, &[]);
        let web_db: Vec<_> = plans
            .iter()
            .filter(|p| p.from_class.0 == "web" && p.to_class.0 == "db")
            .map(|p| (p.proto, p.port, p.port_source.as_str()))
            .collect();
        assert_eq!(
            web_db,
            [
                (ProbeProto::Tcp, 5432, "rule #1"),
                (ProbeProto::Tcp, 47000, "no rule"),
                (ProbeProto::Udp, 53, "rule #1"),
                (ProbeProto::Udp, 47000, "no rule"),
                (ProbeProto::Icmp, 0, "echo"),
            ]
        );
        let p = plans
            .iter()
            .find(|p| p.from_class.0 == "web" && p.to_class.0 == "db")
            .unwrap();
        assert_eq!((p.from.name.as_str(), p.to.name.as_str()), ("web1", "db1"));
        // Expectations come from the compiled tables.
        let exp = |from: &str, to: &str, pr: ProbeProto, port: u16| {
            let p = plans
                .iter()
                .find(|p| {
                    p.from_class.0 == from && p.to_class.0 == to && p.proto == pr && p.port == port
                })
                .unwrap();
            expect(&compiled, p).0
        };
        assert_eq!(exp("web", "db", ProbeProto::Tcp, 5432), Action::Allow);
        assert_eq!(exp("web", "db", ProbeProto::Tcp, 47000), Action::Deny);
        assert_eq!(exp("unmanaged", "db", ProbeProto::Tcp, 47000), Action::Deny);
        assert_eq!(exp("db", "web", ProbeProto::Icmp, 0), Action::Allow);
        // A group with one member has no pair with itself.
        assert!(skipped
            .iter()
            .any(|s| s.from_class.0 == "web" && s.to_class.0 == "web"));
        assert!(!plans
            .iter()
            .any(|p| p.to.name == "far" || p.from.name == "far"));
    }

    #[test]
    fn outcomes() {
        assert_eq!(judge(Action::Allow, &Observed::Refused), Outcome::Ok);
        assert_eq!(judge(Action::Audit, &Observed::Open), Outcome::Ok);
        assert_eq!(judge(Action::Deny, &Observed::NoAnswer), Outcome::Ok);
        assert_eq!(judge(Action::Deny, &Observed::Delivered), Outcome::Mismatch);
        assert_eq!(judge(Action::Allow, &Observed::NoAnswer), Outcome::Mismatch);
        assert_eq!(
            judge(Action::Allow, &Observed::Silent),
            Outcome::Inconclusive
        );
        assert_eq!(
            judge(Action::Deny, &Observed::Error("x".into())),
            Outcome::Inconclusive
        );
    }

    #[test]
    fn icmp_checksum() {
        // Echo request, id 1 seq 1, no payload: checksum 0xf7fd.
        let mut p = [8u8, 0, 0, 0, 0, 1, 0, 1];
        let c = checksum(&p);
        assert_eq!(c, 0xf7fd);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
