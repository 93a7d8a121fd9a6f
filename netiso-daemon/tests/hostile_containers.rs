//! Hostile containers against a real engine and the real daemon (issue 11,
//! "Seal the datapath"): no frame a container with Docker's default
//! capabilities (CAP_NET_RAW, no NET_ADMIN) can send reaches a peer whose
//! policy denies it.
//!
//! One user-defined bridge network with IPv6, four containers with IPv6
//! enabled:
//! - `attacker` (group `attacker`: may send anywhere),
//! - `victim` (group `victim`: `ingress = "deny"`, `egress = "deny"`),
//! - `friend` (group `friend`: allowed to the victim on 8080/tcp, 9999/udp),
//! - `outsider` (in no group: unmanaged).
//!
//! The victim's namespace holds real receivers, opened by this test through
//! setns: UDP sockets on the IPv4 and IPv6 wildcards of the probe ports
//! (joined to 224.0.0.251 and ff02::fb), TCP listeners likewise, and an
//! AF_PACKET socket for ETH_P_ALL on eth0 that keeps every frame arriving.
//! Every probe carries its own tag: a 16-byte random marker of the run and
//! the probe's number (or, where a frame has no room for it, 6 random bytes
//! of the probe's own, or the probe's distinctive header fields).
//!
//! Each probe runs twice: first with no netiso at all (which probes reach
//! the victim by themselves: the bridge and the kernels drop some), then
//! with the daemon enforcing. With the daemon, a probe passes when no frame
//! carrying its tag reached the victim's eth0, no socket got a datagram or
//! a connection from it, and `netiso stats` counted at least as many drops
//! as the probe had frames that reach the victim without netiso (with the
//! reason the sealed datapath gives it, where that reason is certain).
//! Every probe is tried and the test fails once, with the whole table and
//! the bytes of the first frame of each probe that got through.
//!
//! The probes go beyond what the policy names: tags in the fields that
//! link control (ARP, neighbour discovery) leaves free (options, reserved
//! bits, flow label, checksum, destination group, Ethernet destination),
//! VLAN and QinQ, other ethertypes, fragments, extension headers, spoofed
//! and unspecified sources, forged ICMP errors, and the same from a
//! container in no group.
//! Allowed paths are checked in the same run: friend -> victim on the
//! allowed ports over IPv4 and IPv6 (the victim answers although its
//! egress is denied), IPv6 ping between allowed containers (neighbour
//! discovery keeps working).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use aya::programs::tc::TcAttachType;

use netiso_testkit::docker::DockerEnv;
use netiso_testkit::frames::{
    eth as eth_src_dst, ext8, hex, icmpv4_checksummed, icmpv6_checksummed, inet_checksum,
    ipv4_header, ipv4_packet, ipv6_packet, link_local, multicast_mac, set_l4_checksum,
    solicited_node, udp_checksummed,
};
use netiso_testkit::hostile::{
    grown, mac_of, raw_send, reason_counts, tcp_connect_from, tcx_programs, udp_send_bytes, Extra,
    FrameRecorder, Listeners,
};
use netiso_testkit::ops::{empty_config, tcp_try, write_policy};
use netiso_testkit::{run_in, sh, DaemonProc};

const POLICY: &str = r#"
[groups.victim]
labels = { "netiso.test" = "@TAG@", role = "victim" }
ingress = "deny"
egress = "deny"

[groups.friend]
labels = { "netiso.test" = "@TAG@", role = "friend" }

[groups.attacker]
labels = { "netiso.test" = "@TAG@", role = "attacker" }

[[rules]]
from = "friend"
to = "victim"
ports = ["8080/tcp", "9999/udp"]
action = "allow"
"#;

/// Ports the victim listens on: denied to everyone but the friend (9999,
/// 8080) and denied to everyone (7001, 7002).
const UDP_DENIED: u16 = 7001;
const UDP_FRIEND: u16 = 9999;
const TCP_DENIED: u16 = 7002;
const TCP_FRIEND: u16 = 8080;
/// The friend's source port of its live flow to the victim.
const FRIEND_PORT: u16 = 45454;
/// Each frame (and datagram) of a probe is sent this many times.
const COPIES: u32 = 2;
const BCAST: [u8; 6] = [0xff; 6];
/// Counting drops: time for a probe's frames to cross the bridge.
const SETTLE: Duration = Duration::from_millis(40);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const UNKNOWN_ETHERTYPE: u16 = 0x88b5;

/// One container of the test network.
#[derive(Clone, Debug)]
struct Host {
    name: String,
    pid: u32,
    mac: [u8; 6],
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ll: Ipv6Addr,
    /// eth0's ifindex inside the container (the scope of link-local
    /// addresses).
    ifindex: u32,
}

/// Everything a probe needs to know about the network.
struct Net {
    att: Host,
    vic: Host,
    fri: Host,
    out: Host,
    gw_mac: [u8; 6],
    bcast4: Ipv4Addr,
    /// Addresses in the subnets that no container has.
    spare4: Ipv4Addr,
    spare6: Ipv6Addr,
}

/// A probe's tags: `long` (the run's 16-byte marker, the pass and the
/// probe's number) wherever a payload fits, `short` (6 random bytes of
/// this probe) in small fields; `port`, a source port of its own.
struct Tag {
    long: Vec<u8>,
    short: [u8; 6],
    port: u16,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Who {
    Attacker,
    Outsider,
}

enum Via {
    /// Frames from an AF_PACKET socket on eth0, each sent COPIES times.
    Raw(Vec<Vec<u8>>),
    /// Datagrams (payload: the long tag) from an ordinary socket.
    Udp { from: SocketAddr, to: SocketAddr },
    /// One connection attempt from an ordinary socket.
    Tcp { from: SocketAddr, to: SocketAddr },
}

struct Shot {
    who: Who,
    via: Via,
    /// Bytes that identify the probe's frames at the victim's eth0.
    sig: Vec<u8>,
    /// A connection the victim's listeners would accept from it.
    peer: Option<SocketAddr>,
    /// The friend sends to the victim first (a live flow of the victim's).
    live_flow: bool,
}

struct Case {
    name: &'static str,
    /// The drop reason the sealed datapath (issue 11) gives the probe,
    /// where it is certain; `None`: any reason.
    reason: Option<&'static str>,
    build: fn(&Net, &Tag) -> Shot,
}

fn case(name: &'static str, reason: Option<&'static str>, build: fn(&Net, &Tag) -> Shot) -> Case {
    Case {
        name,
        reason,
        build,
    }
}

/// What one probe did in one pass.
#[derive(Default, Clone)]
struct Outcome {
    sent: u32,
    frames: u32,
    sockets: u32,
    drops: BTreeMap<String, u64>,
    /// The first frame that reached the victim, for the report.
    sample: Option<Vec<u8>>,
}

// ---------------------------------------------------------------- frames

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    eth_src_dst(src, dst, ethertype, payload)
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = udp_checksummed(src.into(), dst.into(), sport, dport, payload);
    ipv4_packet(src, dst, 17, 64, &l4)
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = udp_checksummed(src.into(), dst.into(), sport, dport, payload);
    ipv6_packet(src, dst, 17, 64, 0, &l4)
}

fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, ty: u8, body: &[u8]) -> Vec<u8> {
    ipv6_packet(
        src,
        dst,
        58,
        hop,
        0,
        &icmpv6_checksummed(src, dst, ty, 0, body),
    )
}

const TCP_SEQ: u32 = 0x1000_0001;

fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&TCP_SEQ.to_be_bytes());
    h.extend_from_slice(&0x2000_0001u32.to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(data);
    let (s, d) = (
        netiso_testkit::frames::ip_bytes(src),
        netiso_testkit::frames::ip_bytes(dst),
    );
    set_l4_checksum(&s, &d, 6, &mut h, 16);
    h
}

/// A neighbour-discovery option: type, length in 8-byte units, `data`
/// padded to the next 8 bytes.
fn nd_opt(ty: u8, data: &[u8]) -> Vec<u8> {
    let mut o = vec![ty, 0];
    o.extend_from_slice(data);
    o.resize(o.len().div_ceil(8) * 8, 0);
    o[1] = (o.len() / 8) as u8;
    o
}

/// The body of a neighbour solicitation (after type, code, checksum).
fn ns_body(reserved: [u8; 4], target: Ipv6Addr, opts: &[Vec<u8>]) -> Vec<u8> {
    let mut b = reserved.to_vec();
    b.extend_from_slice(&target.octets());
    b.extend(opts.concat());
    b
}

/// The body of a neighbour advertisement; `flags` holds R, S, O and the
/// 29 reserved bits.
fn na_body(flags: [u8; 4], target: Ipv6Addr, opts: &[Vec<u8>]) -> Vec<u8> {
    ns_body(flags, target, opts)
}

const NA_OVERRIDE: [u8; 4] = [0x20, 0, 0, 0];

/// An ARP message (28 bytes) for Ethernet and IPv4.
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

/// The long tag padded to at least 46 bytes (a minimum Ethernet payload).
fn padded(t: &Tag) -> Vec<u8> {
    let mut p = t.long.clone();
    p.resize(46, 0);
    p
}

fn refresh_ipv4_checksum(p: &mut [u8]) {
    let hlen = usize::from(p[0] & 0x0f) * 4;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = inet_checksum(&[&p[..hlen]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP datagram of `payload` in two IPv4 fragments (24 bytes of payload
/// each, the long tag in both).
fn fragments4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, t: &Tag) -> [Vec<u8>; 2] {
    let mut payload = t.long.clone();
    payload.resize(24, 0);
    payload.extend_from_slice(&t.long);
    payload.resize(48, 0);
    let l4 = udp_checksummed(src.into(), dst.into(), t.port, UDP_DENIED, &payload);
    let (a, b) = l4.split_at(32);
    let mut f1 = ipv4_header(src, dst, 17, 64, (id, 0x2000), &[], a.len());
    f1.extend_from_slice(a);
    let mut f2 = ipv4_header(src, dst, 17, 64, (id, 4), &[], b.len());
    f2.extend_from_slice(b);
    [f1, f2]
}

/// An IPv6 fragment header (next header UDP) and `data`.
fn frag6_payload(offset_units: u16, more: bool, id: u32, data: &[u8]) -> Vec<u8> {
    let mut h = vec![17, 0];
    h.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(data);
    h
}

fn fragments6(src: Ipv6Addr, dst: Ipv6Addr, id: u32, t: &Tag) -> [Vec<u8>; 2] {
    let mut payload = t.long.clone();
    payload.resize(24, 0);
    payload.extend_from_slice(&t.long);
    payload.resize(48, 0);
    let l4 = udp_checksummed(src.into(), dst.into(), t.port, UDP_DENIED, &payload);
    let (a, b) = l4.split_at(32);
    [
        ipv6_packet(src, dst, 44, 64, 0, &frag6_payload(0, true, id, a)),
        ipv6_packet(src, dst, 44, 64, 0, &frag6_payload(4, false, id, b)),
    ]
}

/// A VLAN tag (TPID, VID) in front of `inner_type`.
fn tagged(
    tags: &[(u16, u16)],
    inner_type: u16,
    payload: &[u8],
    dst: [u8; 6],
    src: [u8; 6],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&inner_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IGMP message (type, max response, group, then `extra`) in an IPv4
/// packet with the router-alert option.
fn igmp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, ty: u8, group: Ipv4Addr, extra: &[u8]) -> Vec<u8> {
    let mut body = group.octets().to_vec();
    body.extend_from_slice(extra);
    let msg = icmpv4_checksummed(ty, if ty == 0x11 { 100 } else { 0 }, &body);
    let mut p = ipv4_header(src, dst, 2, ttl, (0x1d, 0), &[0x94, 4, 0, 0], msg.len());
    p.extend_from_slice(&msg);
    p
}

/// A hop-by-hop header with the router-alert option (MLD), next header
/// ICMPv6.
fn hbh_router_alert(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![58, 0, 5, 2, 0, 0, 1, 0];
    h.extend_from_slice(rest);
    h
}

fn mld(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, body: &[u8]) -> Vec<u8> {
    let msg = icmpv6_checksummed(src, dst, ty, 0, body);
    ipv6_packet(src, dst, 0, 1, 0, &hbh_router_alert(&msg))
}

/// The signature of a TCP segment at the victim: addresses and ports,
/// contiguous in the IP and TCP headers (no options, no extension headers).
/// A segment of [`tcp_segment`] adds its sequence number, so that the
/// friend's answer to a SYN sent in its name (a RST) is not taken for it.
fn tcp_sig(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let mut s = netiso_testkit::frames::ip_bytes(src);
    s.extend(netiso_testkit::frames::ip_bytes(dst));
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s
}

// ------------------------------------------------------------ shot makers

fn raw(who: Who, frames: Vec<Vec<u8>>, sig: &[u8]) -> Shot {
    Shot {
        who,
        via: Via::Raw(frames),
        sig: sig.to_vec(),
        peer: None,
        live_flow: false,
    }
}

/// One frame from the attacker, identified by the long tag.
fn att(frame: Vec<u8>, t: &Tag) -> Shot {
    raw(Who::Attacker, vec![frame], &t.long)
}

fn udp_socket(from: SocketAddr, to: SocketAddr, t: &Tag) -> Shot {
    Shot {
        who: Who::Attacker,
        via: Via::Udp { from, to },
        sig: t.long.clone(),
        peer: None,
        live_flow: false,
    }
}

fn tcp_socket(from: SocketAddr, to: SocketAddr) -> Shot {
    Shot {
        who: Who::Attacker,
        via: Via::Tcp { from, to },
        sig: tcp_sig(from.ip(), to.ip(), from.port(), to.port()),
        peer: Some(from),
        live_flow: false,
    }
}

fn scoped(ip: Ipv6Addr, port: u16, ifindex: u32) -> SocketAddr {
    SocketAddrV6::new(ip, port, 0, ifindex).into()
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

/// UDP to `dst` (MAC and IPv4) from `h` on the raw socket.
fn raw_udp4(h: &Host, dmac: [u8; 6], dst: Ipv4Addr, dport: u16, t: &Tag) -> Vec<u8> {
    eth(
        dmac,
        h.mac,
        ETH_P_IP,
        &udp4(h.v4, dst, t.port, dport, &t.long),
    )
}

fn raw_udp6(h: &Host, dmac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, dport: u16, t: &Tag) -> Vec<u8> {
    eth(
        dmac,
        h.mac,
        ETH_P_IPV6,
        &udp6(src, dst, t.port, dport, &t.long),
    )
}

/// Every probe. Unless named otherwise, the attacker sends with its own
/// MAC and addresses.
fn cases() -> Vec<Case> {
    vec![
        // ---- ordinary sockets
        case("udp4 unicast to victim", Some("default-deny"), |n, t| {
            udp_socket(v4(n.att.v4, t.port), v4(n.vic.v4, UDP_DENIED), t)
        }),
        case("udp6 unicast to victim", Some("default-deny"), |n, t| {
            udp_socket(v6(n.att.v6, t.port), v6(n.vic.v6, UDP_DENIED), t)
        }),
        case(
            "udp4 to victim's friend-only port 9999",
            Some("default-deny"),
            |n, t| udp_socket(v4(n.att.v4, t.port), v4(n.vic.v4, UDP_FRIEND), t),
        ),
        case(
            "udp6 to victim link-local %eth0",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped(n.vic.ll, UDP_DENIED, n.att.ifindex),
                    t,
                )
            },
        ),
        case("udp4 to subnet broadcast", Some("default-deny"), |n, t| {
            udp_socket(v4(n.att.v4, t.port), v4(n.bcast4, UDP_DENIED), t)
        }),
        case("udp4 to 255.255.255.255", Some("default-deny"), |n, t| {
            udp_socket(v4(n.att.v4, t.port), v4(Ipv4Addr::BROADCAST, UDP_DENIED), t)
        }),
        case(
            "udp4 to 224.0.0.1 (all hosts)",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    v4(n.att.v4, t.port),
                    v4(Ipv4Addr::new(224, 0, 0, 1), UDP_DENIED),
                    t,
                )
            },
        ),
        case(
            "udp4 to 224.0.0.251 (victim joined)",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    v4(n.att.v4, t.port),
                    v4(Ipv4Addr::new(224, 0, 0, 251), UDP_DENIED),
                    t,
                )
            },
        ),
        case(
            "udp4 to 239.1.2.3 (not joined)",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    v4(n.att.v4, t.port),
                    v4(Ipv4Addr::new(239, 1, 2, 3), UDP_DENIED),
                    t,
                )
            },
        ),
        case(
            "udp6 to ff02::1 (all nodes)",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped("ff02::1".parse().unwrap(), UDP_DENIED, n.att.ifindex),
                    t,
                )
            },
        ),
        case(
            "udp6 to ff02::fb (victim joined)",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped("ff02::fb".parse().unwrap(), UDP_DENIED, n.att.ifindex),
                    t,
                )
            },
        ),
        case(
            "udp6 to victim's solicited-node group",
            Some("default-deny"),
            |n, t| {
                udp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped(solicited_node(n.vic.v6), UDP_DENIED, n.att.ifindex),
                    t,
                )
            },
        ),
        case(
            "udp4 from source port 9999 (reply-looking)",
            Some("default-deny"),
            |n, t| udp_socket(v4(n.att.v4, UDP_FRIEND), v4(n.vic.v4, UDP_DENIED), t),
        ),
        case(
            "tcp4 connect to victim:7002",
            Some("default-deny"),
            |n, t| tcp_socket(v4(n.att.v4, t.port), v4(n.vic.v4, TCP_DENIED)),
        ),
        case(
            "tcp4 connect to victim's friend-only 8080",
            Some("default-deny"),
            |n, t| tcp_socket(v4(n.att.v4, t.port), v4(n.vic.v4, TCP_FRIEND)),
        ),
        case(
            "tcp6 connect to victim:7002",
            Some("default-deny"),
            |n, t| tcp_socket(v6(n.att.v6, t.port), v6(n.vic.v6, TCP_DENIED)),
        ),
        case(
            "tcp6 connect to victim link-local:7002",
            Some("default-deny"),
            |n, t| {
                tcp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped(n.vic.ll, TCP_DENIED, n.att.ifindex),
                )
            },
        ),
        case(
            "tcp6 connect to victim link-local:8080",
            Some("default-deny"),
            |n, t| {
                tcp_socket(
                    scoped(n.att.ll, t.port, n.att.ifindex),
                    scoped(n.vic.ll, TCP_FRIEND, n.att.ifindex),
                )
            },
        ),
        // ---- VLAN tags (sent from a raw socket, inner IPv4/UDP to the victim)
        case("vlan 0x8100 vid 5, udp4 to victim", Some("vlan"), |n, t| {
            let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
            att(
                tagged(&[(0x8100, 5)], ETH_P_IP, &ip, n.vic.mac, n.att.mac),
                t,
            )
        }),
        case(
            "vlan 0x8100 vid 0 (priority tag), udp4",
            Some("vlan"),
            |n, t| {
                let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                att(
                    tagged(&[(0x8100, 0)], ETH_P_IP, &ip, n.vic.mac, n.att.mac),
                    t,
                )
            },
        ),
        case(
            "qinq 0x8100+0x8100, udp4 to victim",
            Some("vlan"),
            |n, t| {
                let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                let tags = [(0x8100, 0), (0x8100, 0)];
                att(tagged(&tags, ETH_P_IP, &ip, n.vic.mac, n.att.mac), t)
            },
        ),
        case(
            "qinq 0x88a8+0x8100, udp4 to victim",
            Some("vlan"),
            |n, t| {
                let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                let tags = [(0x88a8, 0), (0x8100, 0)];
                att(tagged(&tags, ETH_P_IP, &ip, n.vic.mac, n.att.mac), t)
            },
        ),
        case(
            "qinq 0x8100 vid 7+0x8100, udp4 to victim",
            Some("vlan"),
            |n, t| {
                let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                let tags = [(0x8100, 7), (0x8100, 0)];
                att(tagged(&tags, ETH_P_IP, &ip, n.vic.mac, n.att.mac), t)
            },
        ),
        case("vlan 0x9100, udp4 to victim", Some("vlan"), |n, t| {
            let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
            att(
                tagged(&[(0x9100, 0)], ETH_P_IP, &ip, n.vic.mac, n.att.mac),
                t,
            )
        }),
        case(
            "qinq to broadcast, udp4 to subnet broadcast",
            Some("vlan"),
            |n, t| {
                let ip = udp4(n.att.v4, n.bcast4, t.port, UDP_DENIED, &t.long);
                let tags = [(0x8100, 0), (0x8100, 0)];
                att(tagged(&tags, ETH_P_IP, &ip, BCAST, n.att.mac), t)
            },
        ),
        case(
            "vlan 0x8100 vid 0, udp6 to ff02::1",
            Some("vlan"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let ip = udp6(n.att.ll, all, t.port, UDP_DENIED, &t.long);
                let dst = multicast_mac(all.into());
                att(tagged(&[(0x8100, 0)], ETH_P_IPV6, &ip, dst, n.att.mac), t)
            },
        ),
        // ---- other ethertypes, odd frames
        case("ethertype 0x88b5 to victim MAC", Some("non-ip"), |n, t| {
            att(eth(n.vic.mac, n.att.mac, UNKNOWN_ETHERTYPE, &padded(t)), t)
        }),
        case("ethertype 0x88b5 to broadcast", Some("non-ip"), |n, t| {
            att(eth(BCAST, n.att.mac, UNKNOWN_ETHERTYPE, &padded(t)), t)
        }),
        case("802.3 length field + LLC/SNAP", Some("non-ip"), |n, t| {
            let mut llc = vec![0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00];
            llc.extend_from_slice(&padded(t));
            att(eth(n.vic.mac, n.att.mac, llc.len() as u16, &llc), t)
        }),
        case(
            "tiny frame (20 bytes, ethertype 0x88b5)",
            Some("non-ip"),
            |n, t| {
                let f = eth(n.vic.mac, n.att.mac, UNKNOWN_ETHERTYPE, &t.short);
                raw(Who::Attacker, vec![f], &t.short)
            },
        ),
        case(
            "ethertype 0x86dd carrying IPv4/UDP",
            Some("malformed-l3"),
            |n, t| {
                let ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip), t)
            },
        ),
        case(
            "ethertype 0x0800 carrying IPv6/UDP",
            Some("malformed-l3"),
            |n, t| {
                let ip = udp6(n.att.v6, n.vic.v6, t.port, UDP_DENIED, &t.long);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "ethertype 0x0800, header cut short",
            Some("malformed-l3"),
            |n, t| {
                let f = eth(n.vic.mac, n.att.mac, ETH_P_IP, &t.short);
                raw(Who::Attacker, vec![f], &t.short)
            },
        ),
        case(
            "ipv4 total length beyond the frame",
            Some("malformed-l3"),
            |n, t| {
                let mut ip = udp4(n.att.v4, n.bcast4, t.port, UDP_DENIED, &t.long);
                let len = u16::from_be_bytes([ip[2], ip[3]]) + 200;
                ip[2..4].copy_from_slice(&len.to_be_bytes());
                refresh_ipv4_checksum(&mut ip);
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "ipv6 payload length beyond the frame",
            Some("malformed-l3"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut ip = udp6(n.att.ll, all, t.port, UDP_DENIED, &t.long);
                let len = u16::from_be_bytes([ip[4], ip[5]]) + 200;
                ip[4..6].copy_from_slice(&len.to_be_bytes());
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        // ---- IGMP, IPv4 protocol 58
        case("igmp v2 report + payload", Some("control"), |n, t| {
            let g = Ipv4Addr::new(224, 0, 0, 1);
            let ip = igmp(n.att.v4, g, 1, 0x16, g, &t.long);
            att(eth(multicast_mac(g.into()), n.att.mac, ETH_P_IP, &ip), t)
        }),
        case(
            "igmp v2 report + payload, TTL 64",
            Some("control"),
            |n, t| {
                let g = Ipv4Addr::new(224, 0, 0, 1);
                let ip = igmp(n.att.v4, g, 64, 0x16, g, &t.long);
                att(eth(multicast_mac(g.into()), n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case("igmp query + trailing bytes", Some("control"), |n, t| {
            let g = Ipv4Addr::new(224, 0, 0, 1);
            let ip = igmp(n.att.v4, g, 1, 0x11, Ipv4Addr::UNSPECIFIED, &t.long);
            att(eth(multicast_mac(g.into()), n.att.mac, ETH_P_IP, &ip), t)
        }),
        case(
            "igmp v3 report, marker as aux data",
            // Dropped on leaving the attacker: a report carries no
            // auxiliary data (before: it left, and the victim's side
            // dropped it as the link's chatter).
            Some("control"),
            |n, t| {
                let g = Ipv4Addr::new(224, 0, 0, 22);
                // reserved, one record: type 4, aux len 5 words, no sources.
                let mut rec = vec![0, 0, 0, 1, 4, 5, 0, 0, 239, 1, 2, 3];
                let mut aux = t.long.clone();
                aux.resize(20, 0);
                rec.extend(aux);
                let msg = icmpv4_checksummed(0x22, 0, &rec);
                let mut ip = ipv4_header(n.att.v4, g, 2, 1, (0x1e, 0), &[0x94, 4, 0, 0], msg.len());
                ip.extend(msg);
                att(eth(multicast_mac(g.into()), n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "ipv4 proto 58 with an NS-looking message, to victim",
            Some("default-deny"),
            |n, t| {
                let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&t.long);
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IP,
                        &ipv4_packet(n.att.v4, n.vic.v4, 58, 255, &msg),
                    ),
                    t,
                )
            },
        ),
        case(
            "ipv4 proto 58 with an NS-looking message, to 224.0.0.1",
            Some("default-deny"),
            |n, t| {
                let g = Ipv4Addr::new(224, 0, 0, 1);
                let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
                msg.extend_from_slice(&t.long);
                let ip = ipv4_packet(n.att.v4, g, 58, 1, &msg);
                att(eth(multicast_mac(g.into()), n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        // ---- neighbour discovery, MLD (ICMPv6)
        case(
            "ns + unknown option holding the marker",
            Some("control"),
            |n, t| {
                let body = ns_body(
                    [0; 4],
                    n.vic.ll,
                    &[nd_opt(1, &n.att.mac), nd_opt(99, &t.long)],
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 255, 135, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "ns, hop limit 64, marker option",
            Some("control"),
            |n, t| {
                let body = ns_body(
                    [0; 4],
                    n.vic.ll,
                    &[nd_opt(1, &n.att.mac), nd_opt(99, &t.long)],
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 64, 135, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "ns + marker after the message (in payload length)",
            Some("control"),
            |n, t| {
                let mut body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                body.extend_from_slice(&t.long);
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 255, 135, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "ns + marker after the IPv6 payload (frame trailer)",
            Some("control"),
            |n, t| {
                let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let mut ip = icmp6(n.att.ll, n.vic.ll, 255, 135, &body);
                ip.extend_from_slice(&t.long);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip), t)
            },
        ),
        case("ns, SLLA option = marker bytes", Some("control"), |n, t| {
            let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &t.short)]);
            let f = eth(
                n.vic.mac,
                n.att.mac,
                ETH_P_IPV6,
                &icmp6(n.att.ll, n.vic.ll, 255, 135, &body),
            );
            raw(Who::Attacker, vec![f], &t.short)
        }),
        case(
            "ns, reserved field = marker bytes",
            Some("control"),
            |n, t| {
                let r = [t.short[0], t.short[1], t.short[2], t.short[3]];
                let body = ns_body(r, n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let f = eth(
                    n.vic.mac,
                    n.att.mac,
                    ETH_P_IPV6,
                    &icmp6(n.att.ll, n.vic.ll, 255, 135, &body),
                );
                let mut sig = r.to_vec();
                sig.extend_from_slice(&n.vic.ll.octets());
                raw(Who::Attacker, vec![f], &sig)
            },
        ),
        case(
            "ns, flow label and traffic class = marker bits",
            Some("control"),
            |n, t| {
                let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let msg = icmpv6_checksummed(n.att.ll, n.vic.ll, 135, 0, &body);
                let flow = u32::from_be_bytes([0, t.short[0], t.short[1], t.short[2]]);
                let ip = ipv6_packet(n.att.ll, n.vic.ll, 58, 255, flow, &msg);
                let sig = [&ip[..8], &n.att.ll.octets()[..]].concat();
                let f = eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip);
                raw(Who::Attacker, vec![f], &sig)
            },
        ),
        case(
            "ns to a made-up multicast group (marker in the IPv6 destination)",
            None,
            |n, t| {
                let mut d = [0u8; 16];
                d[0] = 0xff;
                d[1] = 0x02;
                d[10..].copy_from_slice(&t.short);
                let dst = Ipv6Addr::from(d);
                let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let f = eth(
                    n.vic.mac,
                    n.att.mac,
                    ETH_P_IPV6,
                    &icmp6(n.att.ll, dst, 255, 135, &body),
                );
                raw(Who::Attacker, vec![f], &d)
            },
        ),
        case(
            "ns with a wrong checksum (marker in the checksum field)",
            None,
            |n, t| {
                let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let mut ip = icmp6(n.att.ll, n.vic.ll, 255, 135, &body);
                let mut c = [t.short[0], t.short[1]];
                if c == [ip[42], ip[43]] {
                    c[0] ^= 0xff;
                }
                ip[42..44].copy_from_slice(&c);
                let sig = [&ip[8..40], &[135, 0], &c[..]].concat();
                raw(
                    Who::Attacker,
                    vec![eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip)],
                    &sig,
                )
            },
        ),
        case(
            "ns to the victim, Ethernet destination = made-up multicast MAC",
            None,
            |n, t| {
                let dmac = [
                    0x03, t.short[1], t.short[2], t.short[3], t.short[4], t.short[5],
                ];
                let body = ns_body([0; 4], n.vic.ll, &[nd_opt(1, &n.att.mac)]);
                let f = eth(
                    dmac,
                    n.att.mac,
                    ETH_P_IPV6,
                    &icmp6(n.att.ll, n.vic.ll, 255, 135, &body),
                );
                raw(
                    Who::Attacker,
                    vec![f],
                    &[&dmac[..], &n.att.mac[..]].concat(),
                )
            },
        ),
        case(
            "dad ns (from ::), nonce option = marker bytes",
            Some("control"),
            |n, t| {
                let sn = solicited_node(n.vic.v6);
                let body = ns_body([0; 4], n.vic.v6, &[nd_opt(14, &t.short)]);
                let ip = icmp6(Ipv6Addr::UNSPECIFIED, sn, 255, 135, &body);
                let f = eth(multicast_mac(sn.into()), n.att.mac, ETH_P_IPV6, &ip);
                raw(Who::Attacker, vec![f], &t.short)
            },
        ),
        case(
            "na + unknown option holding the marker",
            Some("control"),
            |n, t| {
                let body = na_body(
                    NA_OVERRIDE,
                    n.att.ll,
                    &[nd_opt(2, &n.att.mac), nd_opt(99, &t.long)],
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 255, 136, &body),
                    ),
                    t,
                )
            },
        ),
        case("na, TLLA option = marker bytes", Some("control"), |n, t| {
            let body = na_body(NA_OVERRIDE, n.att.ll, &[nd_opt(2, &t.short)]);
            let f = eth(
                n.vic.mac,
                n.att.mac,
                ETH_P_IPV6,
                &icmp6(n.att.ll, n.vic.ll, 255, 136, &body),
            );
            raw(Who::Attacker, vec![f], &t.short)
        }),
        case(
            "na, reserved bits = marker bytes",
            Some("control"),
            |n, t| {
                let r = [0x20, t.short[0], t.short[1], t.short[2]];
                let body = na_body(r, n.att.ll, &[nd_opt(2, &n.att.mac)]);
                let f = eth(
                    n.vic.mac,
                    n.att.mac,
                    ETH_P_IPV6,
                    &icmp6(n.att.ll, n.vic.ll, 255, 136, &body),
                );
                let mut sig = r.to_vec();
                sig.extend_from_slice(&n.att.ll.octets());
                raw(Who::Attacker, vec![f], &sig)
            },
        ),
        case(
            "na, hop limit 64, marker option",
            Some("control"),
            |n, t| {
                let body = na_body(
                    NA_OVERRIDE,
                    n.att.ll,
                    &[nd_opt(2, &n.att.mac), nd_opt(99, &t.long)],
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 64, 136, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "na to a made-up multicast group (marker in the IPv6 destination)",
            None,
            |n, t| {
                let mut d = [0u8; 16];
                d[0] = 0xff;
                d[1] = 0x02;
                d[10..].copy_from_slice(&t.short);
                let dst = Ipv6Addr::from(d);
                let body = na_body(NA_OVERRIDE, n.att.ll, &[nd_opt(2, &n.att.mac)]);
                let f = eth(
                    n.vic.mac,
                    n.att.mac,
                    ETH_P_IPV6,
                    &icmp6(n.att.ll, dst, 255, 136, &body),
                );
                raw(Who::Attacker, vec![f], &d)
            },
        ),
        case(
            "na for the friend's address (override) + marker",
            Some("control"),
            |n, t| {
                let body = na_body(
                    NA_OVERRIDE,
                    n.fri.v6,
                    &[nd_opt(2, &n.att.mac), nd_opt(99, &t.long)],
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 255, 136, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "ra (lifetime 0) + marker option",
            Some("control"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut body = vec![64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                body.extend(nd_opt(1, &n.att.mac));
                body.extend(nd_opt(99, &t.long));
                let ip = icmp6(n.att.ll, all, 255, 134, &body);
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "redirect + marker in redirected header",
            Some("control"),
            |n, t| {
                let mut body = vec![0; 4];
                body.extend_from_slice(&n.att.ll.octets());
                body.extend_from_slice(&n.fri.v6.octets());
                let mut rh = vec![0; 6];
                rh.extend_from_slice(&t.long);
                body.extend(nd_opt(4, &rh));
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 255, 137, &body),
                    ),
                    t,
                )
            },
        ),
        case("mldv1 report + trailing marker", Some("control"), |n, t| {
            let all: Ipv6Addr = "ff02::1".parse().unwrap();
            let mut body = vec![0; 4];
            body.extend_from_slice(&all.octets());
            body.extend_from_slice(&t.long);
            att(
                eth(
                    multicast_mac(all.into()),
                    n.att.mac,
                    ETH_P_IPV6,
                    &mld(n.att.ll, all, 131, &body),
                ),
                t,
            )
        }),
        case(
            "mldv1 report, hop limit 255, trailing marker",
            Some("control"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut body = vec![0; 4];
                body.extend_from_slice(&all.octets());
                body.extend_from_slice(&t.long);
                let msg = icmpv6_checksummed(n.att.ll, all, 131, 0, &body);
                let ip = ipv6_packet(n.att.ll, all, 0, 255, 0, &hbh_router_alert(&msg));
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "mldv2 report, marker as aux data",
            // Dropped on leaving the attacker: a report carries no
            // auxiliary data (before: it left, and the victim's side
            // dropped it as the link's chatter).
            Some("control"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut body = vec![0, 0, 0, 1, 4, 5, 0, 0];
                body.extend_from_slice(&"ff05::1:3".parse::<Ipv6Addr>().unwrap().octets());
                let mut aux = t.long.clone();
                aux.resize(20, 0);
                body.extend(aux);
                att(
                    eth(
                        multicast_mac(all.into()),
                        n.att.mac,
                        ETH_P_IPV6,
                        &mld(n.att.ll, all, 143, &body),
                    ),
                    t,
                )
            },
        ),
        case("mld query + trailing marker", Some("control"), |n, t| {
            let all: Ipv6Addr = "ff02::1".parse().unwrap();
            let mut body = vec![0, 100, 0, 0];
            body.extend_from_slice(&[0; 16]);
            body.extend_from_slice(&t.long);
            att(
                eth(
                    multicast_mac(all.into()),
                    n.att.mac,
                    ETH_P_IPV6,
                    &mld(n.att.ll, all, 130, &body),
                ),
                t,
            )
        }),
        case(
            "mldv1 query (24 bytes), group field = marker",
            Some("control"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut body = vec![0, 100, 0, 0, 0xff, 0x0e];
                body.extend_from_slice(&t.short);
                body.resize(20, 0);
                let f = eth(
                    multicast_mac(all.into()),
                    n.att.mac,
                    ETH_P_IPV6,
                    &mld(n.att.ll, all, 130, &body),
                );
                raw(Who::Attacker, vec![f], &t.short)
            },
        ),
        // ---- ICMP errors
        case(
            "icmp4 unreachable quoting a made-up flow",
            Some("icmp-unrelated"),
            |n, t| {
                let inner = udp4(n.vic.v4, n.spare4, 40001, 5555, &t.long);
                let mut body = vec![0; 4];
                body.extend(inner);
                let ip = ipv4_packet(n.att.v4, n.vic.v4, 1, 64, &icmpv4_checksummed(3, 3, &body));
                att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "icmp6 packet-too-big quoting a made-up flow",
            Some("icmp-unrelated"),
            |n, t| {
                let inner = udp6(n.vic.v6, n.spare6, 40001, 5555, &t.long);
                let mut body = 1280u32.to_be_bytes().to_vec();
                body.extend(inner);
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.v6, n.vic.v6, 64, 2, &body),
                    ),
                    t,
                )
            },
        ),
        case(
            "icmp4 unreachable quoting the victim's live flow",
            Some("icmp-unrelated"),
            |n, t| {
                let inner = udp4(n.vic.v4, n.fri.v4, UDP_FRIEND, FRIEND_PORT, &t.long);
                let mut body = vec![0; 4];
                body.extend(inner);
                let ip = ipv4_packet(n.att.v4, n.vic.v4, 1, 64, &icmpv4_checksummed(3, 3, &body));
                Shot {
                    live_flow: true,
                    ..att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
                }
            },
        ),
        case(
            "icmp6 packet-too-big quoting the victim's live flow",
            Some("icmp-unrelated"),
            |n, t| {
                let inner = udp6(n.vic.v6, n.fri.v6, UDP_FRIEND, FRIEND_PORT, &t.long);
                let mut body = 1280u32.to_be_bytes().to_vec();
                body.extend(inner);
                Shot {
                    live_flow: true,
                    ..att(
                        eth(
                            n.vic.mac,
                            n.att.mac,
                            ETH_P_IPV6,
                            &icmp6(n.att.v6, n.vic.v6, 64, 2, &body),
                        ),
                        t,
                    )
                }
            },
        ),
        // ---- ARP
        case(
            "arp request, marker in trailing padding",
            Some("control"),
            |n, t| {
                let mut a = arp(1, n.att.mac, n.att.v4.octets(), [0; 6], n.vic.v4.octets());
                a.extend_from_slice(&t.long);
                att(eth(BCAST, n.att.mac, ETH_P_ARP, &a), t)
            },
        ),
        case(
            "arp request, tha = marker bytes",
            Some("control"),
            |n, t| {
                let a = arp(1, n.att.mac, n.att.v4.octets(), t.short, n.vic.v4.octets());
                raw(
                    Who::Attacker,
                    vec![eth(BCAST, n.att.mac, ETH_P_ARP, &a)],
                    &t.short,
                )
            },
        ),
        case(
            "arp reply to victim, tha = marker bytes",
            Some("control"),
            |n, t| {
                let a = arp(2, n.att.mac, n.att.v4.octets(), t.short, n.vic.v4.octets());
                raw(
                    Who::Attacker,
                    vec![eth(n.vic.mac, n.att.mac, ETH_P_ARP, &a)],
                    &t.short,
                )
            },
        ),
        case(
            "arp request, spa = marker bytes",
            Some("control"),
            |n, t| {
                let spa = [t.short[0], t.short[1], t.short[2], t.short[3]];
                let a = arp(1, n.att.mac, spa, [0; 6], n.vic.v4.octets());
                let sig = [&n.att.mac[..], &spa[..]].concat();
                raw(
                    Who::Attacker,
                    vec![eth(BCAST, n.att.mac, ETH_P_ARP, &a)],
                    &sig,
                )
            },
        ),
        case(
            "arp request, tpa = marker bytes",
            Some("not-for-endpoint"),
            |n, t| {
                let tpa = [t.short[0], t.short[1], t.short[2], t.short[3]];
                let a = arp(1, n.att.mac, n.att.v4.octets(), [0; 6], tpa);
                let sig = [&[0u8; 6][..], &tpa[..]].concat();
                raw(
                    Who::Attacker,
                    vec![eth(BCAST, n.att.mac, ETH_P_ARP, &a)],
                    &sig,
                )
            },
        ),
        case(
            "arp reply claiming the friend's IPv4",
            Some("control"),
            |n, _t| {
                let a = arp(
                    2,
                    n.att.mac,
                    n.fri.v4.octets(),
                    n.vic.mac,
                    n.vic.v4.octets(),
                );
                raw(
                    Who::Attacker,
                    vec![eth(n.vic.mac, n.att.mac, ETH_P_ARP, &a)],
                    &a,
                )
            },
        ),
        case(
            "arp request to a made-up multicast MAC (marker in the Ethernet destination)",
            None,
            |n, t| {
                let dmac = [
                    0x03, t.short[1], t.short[2], t.short[3], t.short[4], t.short[5],
                ];
                let a = arp(1, n.att.mac, n.att.v4.octets(), [0; 6], n.vic.v4.octets());
                let f = eth(dmac, n.att.mac, ETH_P_ARP, &a);
                raw(
                    Who::Attacker,
                    vec![f],
                    &[&dmac[..], &n.att.mac[..]].concat(),
                )
            },
        ),
        case(
            "arp request to an unknown unicast MAC, flooded (marker in the destination)",
            None,
            |n, t| {
                let dmac = [
                    0x06, t.short[1], t.short[2], t.short[3], t.short[4], t.short[5],
                ];
                let a = arp(1, n.att.mac, n.att.v4.octets(), [0; 6], n.vic.v4.octets());
                let f = eth(dmac, n.att.mac, ETH_P_ARP, &a);
                raw(
                    Who::Attacker,
                    vec![f],
                    &[&dmac[..], &n.att.mac[..]].concat(),
                )
            },
        ),
        case(
            "arp with ptype 0x86dd, plen 16, marker",
            Some("control"),
            |n, t| {
                let mut a = vec![0, 1, 0x86, 0xdd, 6, 16, 0, 1];
                a.extend_from_slice(&n.att.mac);
                a.extend_from_slice(&n.att.ll.octets());
                a.extend_from_slice(&[0; 6]);
                a.extend_from_slice(&t.long[..16]);
                let sig = [&n.att.ll.octets()[..], &[0; 6], &t.long[..16]].concat();
                raw(
                    Who::Attacker,
                    vec![eth(BCAST, n.att.mac, ETH_P_ARP, &a)],
                    &sig,
                )
            },
        ),
        case("arp op 9, tha = marker bytes", Some("control"), |n, t| {
            let a = arp(9, n.att.mac, n.att.v4.octets(), t.short, n.vic.v4.octets());
            raw(
                Who::Attacker,
                vec![eth(n.vic.mac, n.att.mac, ETH_P_ARP, &a)],
                &t.short,
            )
        }),
        // ---- to the victim's MAC, another destination address (and back)
        case(
            "udp4 to victim MAC, friend's IPv4",
            Some("not-for-endpoint"),
            |n, t| att(raw_udp4(&n.att, n.vic.mac, n.fri.v4, UDP_DENIED, t), t),
        ),
        case(
            "udp6 to victim MAC, friend's IPv6",
            Some("not-for-endpoint"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.att.v6, n.fri.v6, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp4 to victim MAC, unused subnet address",
            Some("not-for-endpoint"),
            |n, t| att(raw_udp4(&n.att, n.vic.mac, n.spare4, UDP_DENIED, t), t),
        ),
        case(
            "udp4 to victim MAC, 127.0.0.1",
            Some("not-for-endpoint"),
            |n, t| {
                att(
                    raw_udp4(&n.att, n.vic.mac, Ipv4Addr::LOCALHOST, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp6 to victim MAC, ::ffff:victim-ipv4",
            Some("not-for-endpoint"),
            |n, t| {
                let mapped = n.vic.v4.to_ipv6_mapped();
                att(
                    raw_udp6(&n.att, n.vic.mac, n.att.v6, mapped, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp6 to victim MAC, unused subnet address",
            Some("not-for-endpoint"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.att.v6, n.spare6, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp4 to victim MAC, 224.0.0.1",
            Some("not-for-endpoint"),
            |n, t| {
                att(
                    raw_udp4(
                        &n.att,
                        n.vic.mac,
                        Ipv4Addr::new(224, 0, 0, 1),
                        UDP_DENIED,
                        t,
                    ),
                    t,
                )
            },
        ),
        case(
            "udp4 to victim MAC, 255.255.255.255",
            Some("not-for-endpoint"),
            |n, t| {
                att(
                    raw_udp4(&n.att, n.vic.mac, Ipv4Addr::BROADCAST, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp6 to victim MAC, ff02::1",
            Some("not-for-endpoint"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                att(raw_udp6(&n.att, n.vic.mac, n.att.ll, all, UDP_DENIED, t), t)
            },
        ),
        case(
            "udp4 to broadcast MAC, friend's IPv4 (allowed for the attacker)",
            Some("not-for-endpoint"),
            |n, t| att(raw_udp4(&n.att, BCAST, n.fri.v4, UDP_DENIED, t), t),
        ),
        case(
            "udp4 to an unknown unicast MAC, friend's IPv4 (flooded)",
            Some("not-for-endpoint"),
            |n, t| {
                let dmac = [
                    0x06, t.short[1], t.short[2], t.short[3], t.short[4], t.short[5],
                ];
                att(raw_udp4(&n.att, dmac, n.fri.v4, UDP_DENIED, t), t)
            },
        ),
        case(
            "udp6 to all-nodes MAC, friend's IPv6 (allowed for the attacker)",
            Some("not-for-endpoint"),
            |n, t| {
                let m = multicast_mac("ff02::1".parse::<Ipv6Addr>().unwrap().into());
                att(raw_udp6(&n.att, m, n.att.v6, n.fri.v6, UDP_DENIED, t), t)
            },
        ),
        case(
            "udp4 to multicast MAC, victim's IPv4",
            Some("default-deny"),
            |n, t| {
                let m = multicast_mac(Ipv4Addr::new(224, 0, 0, 1).into());
                att(raw_udp4(&n.att, m, n.vic.v4, UDP_DENIED, t), t)
            },
        ),
        case(
            "udp4 to broadcast MAC, victim's IPv4",
            Some("default-deny"),
            |n, t| att(raw_udp4(&n.att, BCAST, n.vic.v4, UDP_DENIED, t), t),
        ),
        case(
            "udp6 to all-nodes MAC, victim's IPv6",
            Some("default-deny"),
            |n, t| {
                let m = multicast_mac("ff02::1".parse::<Ipv6Addr>().unwrap().into());
                att(raw_udp6(&n.att, m, n.att.v6, n.vic.v6, UDP_DENIED, t), t)
            },
        ),
        case(
            "udp4 routed through the host (gateway MAC)",
            Some("default-deny"),
            |n, t| {
                let mut ip = udp4(n.att.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
                ip[8] = 2; // TTL: one hop through the host
                refresh_ipv4_checksum(&mut ip);
                att(eth(n.gw_mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        // ---- fragments
        case(
            "ipv4 fragments (first to a denied port + later)",
            None,
            |n, t| {
                let f = fragments4(n.att.v4, n.vic.v4, 0x5101, t);
                let fr = f.map(|p| eth(n.vic.mac, n.att.mac, ETH_P_IP, &p));
                raw(Who::Attacker, fr.to_vec(), &t.long)
            },
        ),
        case("ipv4 later fragment alone", Some("fragment"), |n, t| {
            let [_, f2] = fragments4(n.att.v4, n.vic.v4, 0x5102, t);
            att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &f2), t)
        }),
        case("ipv4 fragments to the subnet broadcast", None, |n, t| {
            let f = fragments4(n.att.v4, n.bcast4, 0x5103, t);
            let fr = f.map(|p| eth(BCAST, n.att.mac, ETH_P_IP, &p));
            raw(Who::Attacker, fr.to_vec(), &t.long)
        }),
        case("ipv6 fragments to victim", None, |n, t| {
            let f = fragments6(n.att.v6, n.vic.v6, 0x6101, t);
            let fr = f.map(|p| eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &p));
            raw(Who::Attacker, fr.to_vec(), &t.long)
        }),
        case("ipv6 later fragment alone", Some("fragment"), |n, t| {
            let [_, f2] = fragments6(n.att.v6, n.vic.v6, 0x6102, t);
            att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &f2), t)
        }),
        case("ipv6 fragments to ff02::1", None, |n, t| {
            let all: Ipv6Addr = "ff02::1".parse().unwrap();
            let f = fragments6(n.att.ll, all, 0x6103, t);
            let m = multicast_mac(all.into());
            let fr = f.map(|p| eth(m, n.att.mac, ETH_P_IPV6, &p));
            raw(Who::Attacker, fr.to_vec(), &t.long)
        }),
        // ---- IPv6 extension headers, other protocols, IPv4 options
        case(
            "ipv6 hop-by-hop + dst-opts + udp to victim",
            Some("default-deny"),
            |n, t| {
                let l4 = udp_checksummed(
                    n.att.v6.into(),
                    n.vic.v6.into(),
                    t.port,
                    UDP_DENIED,
                    &t.long,
                );
                let ip = ipv6_packet(n.att.v6, n.vic.v6, 0, 64, 0, &ext8(60, &ext8(17, &l4)));
                att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip), t)
            },
        ),
        case(
            "ipv6 hop-by-hop + dst-opts + udp to ff02::1",
            Some("default-deny"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let l4 = udp_checksummed(n.att.ll.into(), all.into(), t.port, UDP_DENIED, &t.long);
                let ip = ipv6_packet(n.att.ll, all, 0, 1, 0, &ext8(60, &ext8(17, &l4)));
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "ipv6 routing header (segments left 0) + udp to ff02::1",
            Some("default-deny"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let l4 = udp_checksummed(n.att.ll.into(), all.into(), t.port, UDP_DENIED, &t.long);
                let mut rh = vec![17, 0, 0, 0, 0, 0, 0, 0];
                rh.extend(l4);
                let ip = ipv6_packet(n.att.ll, all, 43, 1, 0, &rh);
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case("ipv6 9 extension headers + udp to ff02::1", None, |n, t| {
            let all: Ipv6Addr = "ff02::1".parse().unwrap();
            let mut chain =
                udp_checksummed(n.att.ll.into(), all.into(), t.port, UDP_DENIED, &t.long);
            chain = ext8(17, &chain);
            for _ in 0..7 {
                chain = ext8(60, &chain);
            }
            chain = ext8(60, &chain); // the hop-by-hop header, first
            let ip = ipv6_packet(n.att.ll, all, 0, 1, 0, &chain);
            att(
                eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                t,
            )
        }),
        case(
            "ipv6 no-next-header (59) + marker, to ff02::1",
            Some("default-deny"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let ip = ipv6_packet(n.att.ll, all, 59, 1, 0, &t.long);
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "ipv6 next header 2 (IGMP's number) to ff02::1",
            Some("default-deny"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut msg = vec![0x16, 0, 0, 0, 224, 0, 0, 1];
                msg.extend_from_slice(&t.long);
                let ip = ipv6_packet(n.att.ll, all, 2, 1, 0, &msg);
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "ipv4 protocol 253 to the subnet broadcast",
            Some("default-deny"),
            |n, t| {
                let ip = ipv4_packet(n.att.v4, n.bcast4, 253, 64, &t.long);
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "ipv4 options (record route = marker) + udp to broadcast",
            Some("default-deny"),
            |n, t| {
                let mut rr = vec![7, 23, 24];
                rr.extend_from_slice(&t.long);
                rr.resize(23, 0);
                let l4 =
                    udp_checksummed(n.att.v4.into(), n.bcast4.into(), t.port, UDP_DENIED, b"opt");
                let mut ip = ipv4_header(n.att.v4, n.bcast4, 17, 64, (0x0b, 0), &rr, l4.len());
                ip.extend(l4);
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "udp4 TTL 0 to the subnet broadcast",
            Some("default-deny"),
            |n, t| {
                let mut ip = udp4(n.att.v4, n.bcast4, t.port, UDP_DENIED, &t.long);
                ip[8] = 0;
                refresh_ipv4_checksum(&mut ip);
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "udp4 full-size frame (1514 bytes) to broadcast, marker at the end",
            Some("default-deny"),
            |n, t| {
                let mut payload = vec![0u8; 1472 - t.long.len()];
                payload.extend_from_slice(&t.long);
                att(
                    eth(
                        BCAST,
                        n.att.mac,
                        ETH_P_IP,
                        &udp4(n.att.v4, n.bcast4, t.port, UDP_DENIED, &payload),
                    ),
                    t,
                )
            },
        ),
        // ---- ICMP
        case(
            "icmp4 echo request to victim",
            Some("default-deny"),
            |n, t| {
                let mut b = vec![0x12, 0x34, 0, 1];
                b.extend_from_slice(&t.long);
                let ip = ipv4_packet(n.att.v4, n.vic.v4, 1, 64, &icmpv4_checksummed(8, 0, &b));
                att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "icmp4 echo reply to victim (unsolicited)",
            Some("default-deny"),
            |n, t| {
                let mut b = vec![0x12, 0x35, 0, 1];
                b.extend_from_slice(&t.long);
                let ip = ipv4_packet(n.att.v4, n.vic.v4, 1, 64, &icmpv4_checksummed(0, 0, &b));
                att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "icmp4 echo request to the subnet broadcast",
            Some("default-deny"),
            |n, t| {
                let mut b = vec![0x12, 0x36, 0, 1];
                b.extend_from_slice(&t.long);
                let ip = ipv4_packet(n.att.v4, n.bcast4, 1, 64, &icmpv4_checksummed(8, 0, &b));
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case("icmp4 redirect to victim", Some("default-deny"), |n, t| {
            let mut b = n.att.v4.octets().to_vec();
            b.extend(udp4(n.vic.v4, n.fri.v4, 40002, 5555, &t.long));
            let ip = ipv4_packet(n.att.v4, n.vic.v4, 1, 64, &icmpv4_checksummed(5, 1, &b));
            att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
        }),
        case(
            "icmp6 echo request to ff02::1",
            Some("default-deny"),
            |n, t| {
                let all: Ipv6Addr = "ff02::1".parse().unwrap();
                let mut b = vec![0x12, 0x37, 0, 1];
                b.extend_from_slice(&t.long);
                let ip = icmp6(n.att.ll, all, 64, 128, &b);
                att(
                    eth(multicast_mac(all.into()), n.att.mac, ETH_P_IPV6, &ip),
                    t,
                )
            },
        ),
        case(
            "icmp6 echo request to victim link-local",
            Some("default-deny"),
            |n, t| {
                let mut b = vec![0x12, 0x38, 0, 1];
                b.extend_from_slice(&t.long);
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IPV6,
                        &icmp6(n.att.ll, n.vic.ll, 64, 128, &b),
                    ),
                    t,
                )
            },
        ),
        // ---- TCP segments without a connection
        case(
            "tcp4 SYN-ACK + data from :8080 (no connection)",
            Some("default-deny"),
            |n, t| {
                let seg = tcp_segment(
                    n.att.v4.into(),
                    n.vic.v4.into(),
                    TCP_FRIEND,
                    40003,
                    0x12,
                    &t.long,
                );
                att(
                    eth(
                        n.vic.mac,
                        n.att.mac,
                        ETH_P_IP,
                        &ipv4_packet(n.att.v4, n.vic.v4, 6, 64, &seg),
                    ),
                    t,
                )
            },
        ),
        case(
            "tcp6 ACK+PSH + data to :8080 (no connection)",
            Some("default-deny"),
            |n, t| {
                let seg = tcp_segment(
                    n.att.v6.into(),
                    n.vic.v6.into(),
                    t.port,
                    TCP_FRIEND,
                    0x18,
                    &t.long,
                );
                let ip = ipv6_packet(n.att.v6, n.vic.v6, 6, 64, 0, &seg);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip), t)
            },
        ),
        case(
            "tcp6 SYN-ACK + data to victim link-local",
            Some("default-deny"),
            |n, t| {
                let seg = tcp_segment(
                    n.att.ll.into(),
                    n.vic.ll.into(),
                    TCP_FRIEND,
                    40004,
                    0x12,
                    &t.long,
                );
                let ip = ipv6_packet(n.att.ll, n.vic.ll, 6, 64, 0, &seg);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IPV6, &ip), t)
            },
        ),
        // ---- spoofed sources from the attacker (a managed container)
        case(
            "udp4 from the friend's IPv4 to victim:9999",
            Some("spoofed-ip"),
            |n, t| {
                let ip = udp4(n.fri.v4, n.vic.v4, t.port, UDP_FRIEND, &t.long);
                att(eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "udp6 from the friend's IPv6 to victim:9999",
            Some("spoofed-ip"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.fri.v6, n.vic.v6, UDP_FRIEND, t),
                    t,
                )
            },
        ),
        case(
            "udp6 from the friend's link-local to victim's",
            Some("spoofed-ip"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.fri.ll, n.vic.ll, UDP_FRIEND, t),
                    t,
                )
            },
        ),
        case(
            "udp6 from the friend's link-local to victim:9999",
            Some("spoofed-ip"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.fri.ll, n.vic.v6, UDP_FRIEND, t),
                    t,
                )
            },
        ),
        case("udp6 from :: to victim:9999", Some("spoofed-ip"), |n, t| {
            att(
                raw_udp6(
                    &n.att,
                    n.vic.mac,
                    Ipv6Addr::UNSPECIFIED,
                    n.vic.v6,
                    UDP_FRIEND,
                    t,
                ),
                t,
            )
        }),
        case(
            "udp6 from attacker's link-local to victim:7001",
            Some("default-deny"),
            |n, t| {
                att(
                    raw_udp6(&n.att, n.vic.mac, n.att.ll, n.vic.v6, UDP_DENIED, t),
                    t,
                )
            },
        ),
        case(
            "udp4 from 0.0.0.0 to the subnet broadcast",
            Some("spoofed-ip"),
            |n, t| {
                let ip = udp4(Ipv4Addr::UNSPECIFIED, n.bcast4, t.port, UDP_DENIED, &t.long);
                att(eth(BCAST, n.att.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "tcp4 SYN from the friend's IPv4 to victim:8080",
            Some("spoofed-ip"),
            |n, t| {
                let seg = tcp_segment(
                    n.fri.v4.into(),
                    n.vic.v4.into(),
                    t.port,
                    TCP_FRIEND,
                    0x02,
                    &[],
                );
                let ip = ipv4_packet(n.fri.v4, n.vic.v4, 6, 64, &seg);
                let mut sig = tcp_sig(n.fri.v4.into(), n.vic.v4.into(), t.port, TCP_FRIEND);
                sig.extend_from_slice(&TCP_SEQ.to_be_bytes());
                Shot {
                    peer: Some(v4(n.fri.v4, t.port)),
                    ..raw(
                        Who::Attacker,
                        vec![eth(n.vic.mac, n.att.mac, ETH_P_IP, &ip)],
                        &sig,
                    )
                }
            },
        ),
        // ---- the outsider: a container in no group (unmanaged)
        case(
            "unmanaged: udp4 own address to victim",
            Some("default-deny"),
            |n, t| {
                raw(
                    Who::Outsider,
                    vec![raw_udp4(&n.out, n.vic.mac, n.vic.v4, UDP_DENIED, t)],
                    &t.long,
                )
            },
        ),
        case(
            "unmanaged: udp4 from the friend's IPv4 to victim:9999",
            Some("spoofed-ip"),
            |n, t| {
                let ip = udp4(n.fri.v4, n.vic.v4, t.port, UDP_FRIEND, &t.long);
                raw(
                    Who::Outsider,
                    vec![eth(n.vic.mac, n.out.mac, ETH_P_IP, &ip)],
                    &t.long,
                )
            },
        ),
        case(
            "unmanaged: udp6 from the friend's IPv6 to victim:9999",
            Some("spoofed-ip"),
            |n, t| {
                let f = raw_udp6(&n.out, n.vic.mac, n.fri.v6, n.vic.v6, UDP_FRIEND, t);
                raw(Who::Outsider, vec![f], &t.long)
            },
        ),
        case(
            "unmanaged: udp6 from the friend's link-local",
            Some("spoofed-ip"),
            |n, t| {
                let f = raw_udp6(&n.out, n.vic.mac, n.fri.ll, n.vic.ll, UDP_FRIEND, t);
                raw(Who::Outsider, vec![f], &t.long)
            },
        ),
        case(
            "unmanaged: tcp4 SYN from the friend's IPv4 to :8080",
            Some("spoofed-ip"),
            |n, t| {
                let seg = tcp_segment(
                    n.fri.v4.into(),
                    n.vic.v4.into(),
                    t.port,
                    TCP_FRIEND,
                    0x02,
                    &[],
                );
                let ip = ipv4_packet(n.fri.v4, n.vic.v4, 6, 64, &seg);
                let mut sig = tcp_sig(n.fri.v4.into(), n.vic.v4.into(), t.port, TCP_FRIEND);
                sig.extend_from_slice(&TCP_SEQ.to_be_bytes());
                Shot {
                    peer: Some(v4(n.fri.v4, t.port)),
                    ..raw(
                        Who::Outsider,
                        vec![eth(n.vic.mac, n.out.mac, ETH_P_IP, &ip)],
                        &sig,
                    )
                }
            },
        ),
        case(
            "unmanaged: udp4 to subnet broadcast",
            Some("default-deny"),
            |n, t| {
                raw(
                    Who::Outsider,
                    vec![raw_udp4(&n.out, BCAST, n.bcast4, UDP_DENIED, t)],
                    &t.long,
                )
            },
        ),
        case(
            "unmanaged: udp6 to victim link-local",
            Some("default-deny"),
            |n, t| {
                let f = raw_udp6(&n.out, n.vic.mac, n.out.ll, n.vic.ll, UDP_DENIED, t);
                raw(Who::Outsider, vec![f], &t.long)
            },
        ),
        case(
            "unmanaged: arp reply claiming the friend's IPv4",
            Some("control"),
            |n, _t| {
                let a = arp(
                    2,
                    n.out.mac,
                    n.fri.v4.octets(),
                    n.vic.mac,
                    n.vic.v4.octets(),
                );
                raw(
                    Who::Outsider,
                    vec![eth(n.vic.mac, n.out.mac, ETH_P_ARP, &a)],
                    &a,
                )
            },
        ),
        case(
            "unmanaged: ethertype 0x88b5 to victim MAC",
            Some("non-ip"),
            |n, t| {
                let f = eth(n.vic.mac, n.out.mac, UNKNOWN_ETHERTYPE, &padded(t));
                raw(Who::Outsider, vec![f], &t.long)
            },
        ),
        case("unmanaged: qinq udp4 to victim", Some("vlan"), |n, t| {
            let ip = udp4(n.out.v4, n.vic.v4, t.port, UDP_DENIED, &t.long);
            let f = tagged(
                &[(0x8100, 0), (0x8100, 0)],
                ETH_P_IP,
                &ip,
                n.vic.mac,
                n.out.mac,
            );
            raw(Who::Outsider, vec![f], &t.long)
        }),
        // ---- a foreign source MAC (last: it teaches the bridge a wrong port)
        case(
            "udp4 from the friend's MAC and IPv4",
            Some("spoofed-mac"),
            |n, t| {
                let ip = udp4(n.fri.v4, n.vic.v4, t.port, UDP_FRIEND, &t.long);
                att(eth(n.vic.mac, n.fri.mac, ETH_P_IP, &ip), t)
            },
        ),
        case(
            "unmanaged: udp4 from the friend's MAC and IPv4",
            Some("spoofed-mac"),
            |n, t| {
                let ip = udp4(n.fri.v4, n.vic.v4, t.port, UDP_FRIEND, &t.long);
                raw(
                    Who::Outsider,
                    vec![eth(n.vic.mac, n.fri.mac, ETH_P_IP, &ip)],
                    &t.long,
                )
            },
        ),
    ]
}

// ------------------------------------------------------------- the test

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b
}

fn inspect(container: &str, format: &str) -> String {
    let out = sh(&format!("docker inspect -f '{format}' {container}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host(env: &DockerEnv, name: &str) -> Host {
    let net = &env.network;
    let pid = env.pid(name);
    let mac = mac_of(name, net);
    let v6: Ipv6Addr = inspect(
        name,
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").GlobalIPv6Address}}}}"),
    )
    .parse()
    .unwrap_or_else(|e| panic!("{name} has no global IPv6 address on {net}: {e}"));
    let ifindex = run_in(&netiso_testkit::hostile::netns_of(pid), || {
        let n = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: `n` is a NUL-terminated CString that lives across the
        // call; if_nametoindex only reads it.
        unsafe { libc::if_nametoindex(n.as_ptr()) }
    });
    assert!(ifindex > 0, "{name}: no eth0");
    Host {
        name: name.to_string(),
        pid,
        mac,
        v4: env.ip(name),
        v6,
        ll: link_local(mac),
        ifindex,
    }
}

/// Waits (bounded) until each container's IPv6 addresses, its link-local
/// included, are past duplicate address detection.
fn wait_ipv6_ready(hosts: &[&Host]) {
    let end = Instant::now() + Duration::from_secs(10);
    for h in hosts {
        loop {
            let out = sh(&format!("nsenter -t {} -n ip -6 addr show dev eth0", h.pid));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains(&h.ll.to_string()) && !text.contains("tentative") {
                break;
            }
            assert!(
                Instant::now() < end,
                "{}: IPv6 not ready (link-local {} expected):\n{text}",
                h.name,
                h.ll
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn flush_neighbours(hosts: &[&Host]) {
    for h in hosts {
        sh(&format!("nsenter -t {} -n ip neigh flush all", h.pid));
    }
}

/// Whether the victim echoes a datagram from the friend (allowed port).
fn udp_echo(from: &Host, to: SocketAddr) -> bool {
    run_in(&netiso_testkit::hostile::netns_of(from.pid), move || {
        let bind: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut buf = [0u8; 64];
        (0..3).any(|i| {
            let msg = format!("echo:{i}");
            s.send_to(msg.as_bytes(), to).is_ok()
                && matches!(s.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == msg.as_bytes())
        })
    })
}

/// The friend's live UDP flow to the victim (an allowed port), IPv4 and
/// IPv6, from a fixed source port.
fn friend_flow(n: &Net) {
    udp_send_bytes(
        n.fri.pid,
        v4(n.fri.v4, FRIEND_PORT),
        v4(n.vic.v4, UDP_FRIEND),
        b"flow",
        1,
    );
    udp_send_bytes(
        n.fri.pid,
        v6(n.fri.v6, FRIEND_PORT),
        v6(n.vic.v6, UDP_FRIEND),
        b"flow",
        1,
    );
}

fn fire(n: &Net, shot: &Shot) -> u32 {
    let pid = match shot.who {
        Who::Attacker => n.att.pid,
        Who::Outsider => n.out.pid,
    };
    match &shot.via {
        Via::Raw(frames) => {
            for f in frames {
                raw_send(pid, "eth0", f.clone(), COPIES);
            }
            frames.len() as u32 * COPIES
        }
        Via::Udp { from, to } => {
            // The payload is the signature: the long tag.
            udp_send_bytes(pid, *from, *to, &shot.sig, COPIES);
            COPIES
        }
        Via::Tcp { from, to } => {
            let (from, to) = (*from, *to);
            run_in(&netiso_testkit::hostile::netns_of(pid), move || {
                tcp_connect_from(from, to, Duration::from_millis(300))
            });
            1
        }
    }
}

/// Runs every probe once; `daemon` given: counts each probe's drops.
fn run_pass(
    n: &Net,
    cases: &[Case],
    pass: u8,
    marker: &[u8; 16],
    daemon: Option<&DaemonProc>,
    frames: &FrameRecorder,
    sockets: &Listeners,
) -> Vec<Outcome> {
    let mut shots = Vec::new();
    let mut outcomes = Vec::new();
    let mark = frames.mark();
    let counts = || daemon.map(reason_counts).unwrap_or_default();
    // One `netiso stats` per probe: what one probe ends with, the next
    // starts from.
    let mut before = counts();
    for (i, c) in cases.iter().enumerate() {
        let mut long = marker.to_vec();
        long.extend_from_slice(&[pass, i as u8]);
        let tag = Tag {
            long,
            short: random_bytes(),
            port: 41000 + u16::from(pass) * 1000 + i as u16,
        };
        let shot = (c.build)(n, &tag);
        if shot.live_flow {
            friend_flow(n);
            std::thread::sleep(SETTLE);
            before = counts();
        }
        let sent = fire(n, &shot);
        std::thread::sleep(SETTLE);
        let after = counts();
        let drops = grown(&before, &after);
        before = after;
        outcomes.push(Outcome {
            sent,
            drops,
            ..Outcome::default()
        });
        shots.push((tag, shot));
    }
    // Late frames (a kernel's retransmission, a slow softirq).
    std::thread::sleep(Duration::from_millis(300));
    for (o, (tag, shot)) in outcomes.iter_mut().zip(&shots) {
        let seen = frames.containing_since(mark, &shot.sig);
        o.frames = seen.len() as u32;
        o.sample = seen.into_iter().next();
        o.sockets = sockets.datagrams_containing(&tag.long)
            + shot.peer.map(|p| sockets.accepted_from(p)).unwrap_or(0);
    }
    outcomes
}

#[test]
fn hostile_containers_cannot_reach_a_denying_peer() {
    let started = Instant::now();
    // A network of our own, IPv4 and IPv6 (retry on a subnet in use).
    let mut env = None;
    let mut errors = Vec::new();
    for _ in 0..8 {
        let [a, b, c, d] = random_bytes::<4>();
        let args = format!(
            "--ipv6 --subnet 10.{}.{b}.0/24 --subnet fd{c:02x}:{d:02x}{a:02x}:{b:02x}{c:02x}::/64",
            200 + a % 50
        );
        match DockerEnv::with_network_args(&args) {
            Ok(e) => {
                env = Some(e);
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let env = env.unwrap_or_else(|| panic!("no IPv6 network could be made: {errors:#?}"));
    let tag = env.tag.clone();
    let labels = |role: &'static str| [("netiso.test", tag.as_str()), ("role", role)];
    let mut extra = Extra::new(&env);
    let ipv6_on = ["--sysctl net.ipv6.conf.all.disable_ipv6=0"];
    let names: Vec<String> = ["victim", "friend", "attacker", "outsider"]
        .iter()
        .map(|r| extra.run(r, &labels(r), &ipv6_on, "exec sleep 3600"))
        .collect();
    let net_id = inspect(&env.network, "{{.Id}}");
    let bridge = format!("br-{}", &net_id[..12]);
    let gw_mac = netiso_testkit::hostile::parse_mac(
        std::fs::read_to_string(format!("/sys/class/net/{bridge}/address"))
            .unwrap_or_else(|e| panic!("{bridge}: {e}"))
            .trim(),
    );
    let [vic, fri, att, out] = [0, 1, 2, 3].map(|i| host(&env, &names[i]));
    let prefix4 = vic.v4.octets();
    let mut spare6 = vic.v6.octets();
    spare6[15] = 0xfa;
    let n = Net {
        bcast4: Ipv4Addr::new(prefix4[0], prefix4[1], prefix4[2], 255),
        spare4: Ipv4Addr::new(prefix4[0], prefix4[1], prefix4[2], 250),
        spare6: spare6.into(),
        gw_mac,
        att,
        vic,
        fri,
        out,
    };
    let all = [&n.att, &n.vic, &n.fri, &n.out];
    wait_ipv6_ready(&all);
    println!(
        "network {} ({bridge}); victim {} {} {} {}, attacker {} {} {}, friend {} {}, outsider {} {}",
        env.network,
        n.vic.v4,
        n.vic.v6,
        n.vic.ll,
        hex(&n.vic.mac),
        n.att.v4,
        n.att.v6,
        n.att.ll,
        n.fri.v4,
        n.fri.v6,
        n.out.v4,
        n.out.v6
    );

    // The victim's receivers, for the whole test.
    let frames = FrameRecorder::start(n.vic.pid, "eth0");
    let groups: [IpAddr; 2] = [
        Ipv4Addr::new(224, 0, 0, 251).into(),
        "ff02::fb".parse::<Ipv6Addr>().unwrap().into(),
    ];
    let sockets = Listeners::start(
        n.vic.pid,
        "eth0",
        &[UDP_DENIED, UDP_FRIEND],
        &[TCP_DENIED, TCP_FRIEND],
        &groups,
    );
    let cases = cases();
    let marker = random_bytes::<16>();

    // 1. Without netiso: which probes reach the victim at all.
    let free = run_pass(&n, &cases, 0, &marker, None, &frames, &sockets);
    flush_neighbours(&all);

    // 2. With the daemon.
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &env.tag, POLICY);
    let config = empty_config();
    let mut daemon = DaemonProc::start_with(policy, &["--config", config.to_str().unwrap()]);
    let managed = [&n.att.name, &n.vic.name, &n.fri.name];
    daemon.wait_for("attacker, victim and friend enforced", |s| {
        managed
            .iter()
            .all(|c| s.endpoints.iter().any(|e| &&e.container == c && e.enforced))
    });
    // The outsider (in no group) is policed too where unmanaged containers
    // get programs (anti-spoofing): give it the same chance, and say so
    // (from the host's view of its veth; `state.json` calls only grouped
    // containers enforced).
    let end = Instant::now() + Duration::from_secs(5);
    let outsider_enforced = loop {
        let s = daemon.state();
        let ifname = s
            .endpoints
            .iter()
            .find(|e| e.container == n.out.name)
            .and_then(|e| e.ifname.clone());
        if let Some(ifname) = ifname {
            let progs = tcx_programs(&ifname, TcAttachType::Ingress);
            if progs
                .iter()
                .any(|(_, name)| name.starts_with("netiso_from"))
            {
                break true;
            }
        }
        if Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("outsider (no group) has programs on its veth: {outsider_enforced}");
    let friend_tcp4 = v4(n.vic.v4, TCP_FRIEND);
    let enforced = netiso_testkit::ops::eventually(n.fri.pid, friend_tcp4, true, 20)
        && !netiso_testkit::ops::tcp_from(n.att.pid, friend_tcp4);
    assert!(
        enforced,
        "the policy is not in force (friend -> victim:8080 must pass, attacker -> victim:8080 not); daemon log:\n{}",
        daemon.log()
    );
    let sealed = run_pass(&n, &cases, 1, &marker, Some(&daemon), &frames, &sockets);

    // 3. Allowed paths, from clean neighbour tables (ARP and ND again).
    flush_neighbours(&all);
    let ping6 = |from: &Host, to: String| env.exec_ok(&from.name, &format!("ping6 -c 2 -w 4 {to}"));
    let positive: Vec<(&str, bool)> = vec![
        (
            "friend -> victim tcp4 :8080 (victim answers, its egress denied)",
            run_in(&netiso_testkit::hostile::netns_of(n.fri.pid), || {
                tcp_try(friend_tcp4, Duration::from_secs(2), true)
            }),
        ),
        (
            "friend -> victim tcp6 :8080 (victim answers, its egress denied)",
            run_in(&netiso_testkit::hostile::netns_of(n.fri.pid), || {
                tcp_try(v6(n.vic.v6, TCP_FRIEND), Duration::from_secs(2), true)
            }),
        ),
        (
            "friend -> victim udp4 :9999, echoed back",
            udp_echo(&n.fri, v4(n.vic.v4, UDP_FRIEND)),
        ),
        (
            "friend -> victim udp6 :9999, echoed back",
            udp_echo(&n.fri, v6(n.vic.v6, UDP_FRIEND)),
        ),
        (
            "attacker -> friend ping6 global (ND)",
            ping6(&n.att, n.fri.v6.to_string()),
        ),
        (
            "attacker -> friend ping6 link-local (ND)",
            ping6(&n.att, format!("{}%eth0", n.fri.ll)),
        ),
        (
            "friend -> attacker ping6 global (ND)",
            ping6(&n.fri, n.att.v6.to_string()),
        ),
        (
            "friend -> attacker ping4 (ARP)",
            env.exec_ok(&n.fri.name, &format!("ping -c 2 -w 4 {}", n.att.v4)),
        ),
    ];

    // The report.
    let mut table = String::new();
    let mut failures = Vec::new();
    let w = cases.iter().map(|c| c.name.len()).max().unwrap_or(5);
    let _ = writeln!(
        table,
        "{:<w$} {:<16} {:>9} {:>7} {:>6} {:>8}  {:<34} result",
        "probe", "expected reason", "no netiso", "frames", "socket", "required", "drops counted"
    );
    for ((c, f), s) in cases.iter().zip(&free).zip(&sealed) {
        let required = s.sent.min(f.frames);
        let total: u64 = s.drops.values().sum();
        let by_reason = c.reason.map(|r| s.drops.get(r).copied().unwrap_or(0));
        let crossed = s.frames > 0 || s.sockets > 0;
        let counted =
            total >= u64::from(required) && by_reason.is_none_or(|n| n >= u64::from(required));
        let result = match (crossed, counted, f.frames) {
            (true, _, _) => "CROSSED",
            (false, false, _) => "NOT COUNTED",
            (false, true, 0) => "ok (no effect without netiso)",
            (false, true, _) => "ok",
        };
        if crossed || !counted {
            failures.push(c.name);
        }
        let drops = if s.drops.is_empty() {
            "-".to_string()
        } else {
            s.drops
                .iter()
                .map(|(r, k)| format!("{r}:{k}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            table,
            "{:<w$} {:<16} {:>9} {:>7} {:>6} {:>8}  {:<34} {result}",
            c.name,
            c.reason.unwrap_or("(any)"),
            format!("{}/{}", f.frames, f.sockets),
            s.frames,
            s.sockets,
            required,
            drops
        );
    }
    let _ = writeln!(
        table,
        "\n(no netiso: frames at the victim's eth0 / datagrams+connections at its sockets, \
         same probe without the daemon; frames, socket: with the daemon, expected 0; \
         required: drops to be counted, with the expected reason where one is given)"
    );
    let mut crossing = String::new();
    for ((c, s), f) in cases.iter().zip(&sealed).zip(&free) {
        if let Some(sample) = &s.sample {
            let _ = writeln!(
                crossing,
                "{} ({} of {} frames; {} without netiso): {}",
                c.name,
                s.frames,
                s.sent,
                f.frames,
                hex(sample)
            );
        }
    }
    if !crossing.is_empty() {
        let _ = writeln!(
            table,
            "\nFrames that reached the victim (first of each probe):\n{crossing}"
        );
    }
    let _ = writeln!(table, "\nAllowed paths:");
    for (name, ok) in &positive {
        let _ = writeln!(
            table,
            "  {:<64} {}",
            name,
            if *ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failures.push(name);
        }
    }
    let _ = writeln!(
        table,
        "\n{} probes, {} failures, {:.1} s",
        cases.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("{table}");
        return;
    }
    let log = daemon.log();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    panic!(
        "{} of {} checks failed: {failures:#?}\n\n{table}\ndaemon log (last lines):\n{}",
        failures.len(),
        cases.len() + positive.len(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
