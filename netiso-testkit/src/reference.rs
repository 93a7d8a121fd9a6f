//! The reference for frames judged on an endpoint that may talk to nobody
//! (both group defaults deny, no rule names it): which frames the sealed
//! datapath (issue 11) still lets through, and frame templates to mutate.
//! Shared by the random frame test (`tests/random_frames.rs`) and the
//! packet fuzzer (`fuzz/fuzz_targets/packet.rs`), with the endpoint as the
//! datapath gets it ([`sealed_endpoint`]) and one program run
//! ([`run_frame`]); uses `frames`, netiso-common and the daemon's datapath.
//!
//! It is a plain reading of the semantics, not a copy of the eBPF code:
//!
//! - frames shorter than an Ethernet header, VLAN tags (0x8100, 0x88a8,
//!   0x9100) and, unless re-opened by the setting, every ethertype but
//!   IPv4, IPv6 and ARP are dropped;
//! - leaving the endpoint, the source MAC must be its own, and so must the
//!   IP source (its IPv4; its global IPv6 or link-local, or `::` for
//!   duplicate address detection and MLDv2 reports); entering it, the
//!   destination must be one of its addresses, broadcast or multicast;
//! - the IP length must fit the frame;
//! - ARP, ND, MLD and IGMP pass only in their strict form (below): they are
//!   not judged by policy;
//! - everything else is judged by policy, which denies it here: ICMP
//!   errors find no live flow of this endpoint (it has none), ICMPv6 types
//!   over IPv4 are just IPv4 protocol 58;
//! - a later fragment passes only if this endpoint passed its first
//!   fragment: the reference is told which frames passed
//!   ([`Reference::passed`]) and keeps the same notes, keyed like the
//!   datapath's (addresses, protocol, low 16 bits of the identification).
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use netiso_common::{defaults, IdentityInfo, IpKey};
use netiso_daemon::datapath::{Datapath, Desired, EndpointSpec};

use crate::frames::{
    arp, eth, ext8, icmp_echo, icmpv6, ipv4, ipv6, link_local, solicited_node, tcp, udp, MAC_A,
    MAC_B, SYN,
};

/// The endpoint's own addresses (A) and a peer's (B).
pub const A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// The endpoint this reference describes, on lo (ifindex 1, which
/// BPF_PROG_TEST_RUN reports): identity 256, addresses A, A6 and MAC_A,
/// both group defaults deny and no rule names it.
pub fn sealed_endpoint() -> Desired {
    let mut desired = Desired::default();
    let deny = defaults::DENY_EGRESS | defaults::DENY_INGRESS;
    desired.endpoints.insert(
        1,
        EndpointSpec {
            netns: None,
            ifname: "lo".into(),
            identity: 256,
            flags: deny,
            ipv4: Some(A),
            ipv6: Some(A6),
            mac: Some(MAC_A),
            ipv4_prefix_len: None,
        },
    );
    desired.identities.insert(
        IpKey::v4(A.octets(), 0),
        IdentityInfo {
            identity: 256,
            flags: deny,
        },
    );
    desired
}

/// Runs `frame` once through the program `prog` of `dp`
/// (BPF_PROG_TEST_RUN); the TC verdict.
pub fn run_frame(dp: &mut Datapath, prog: &str, frame: &[u8]) -> Result<i32, ProgramError> {
    let p: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(prog)
        .expect("the program is loaded")
        .try_into()
        .expect("a TC program");
    p.test_run(TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    })
    .map(|r| r.return_value as i32)
}

/// Link control as sent: `f` with its IPv4 TTL / IPv6 hop limit set (the
/// builders use 64) and its IGMP / ICMPv6 checksum filled in.
fn hops(mut f: Vec<u8>, n: u8) -> Vec<u8> {
    if u16::from_be_bytes([f[12], f[13]]) == 0x0800 {
        f[22] = n;
        let l4 = 14 + (f[14] & 0x0f) as usize * 4;
        summed(f, l4, false)
    } else {
        f[21] = n;
        // No extension header, or one hop-by-hop header of 8 bytes.
        let l4 = if f[20] == 0 { 62 } else { 54 };
        summed(f, l4, true)
    }
}

/// An ND message: type, the 4 bytes after the checksum, a target, options.
fn nd(ty: u8, flags: u8, target: Ipv6Addr, opts: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(opts);
    m
}

fn lladdr(ty: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![ty, 1];
    o.extend_from_slice(&mac);
    o
}

/// `f` with the checksum of its ICMPv6 (`v6`, with the pseudo-header) or
/// IGMP message at `l4` filled in (the frame builders leave it zero; link
/// control is checked with its checksum).
fn summed(mut f: Vec<u8>, l4: usize, v6: bool) -> Vec<u8> {
    fn add(acc: u32, b: &[u8]) -> u32 {
        let mut acc = acc;
        for c in b.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }
    let mut acc = add(0, &f[l4..]);
    if v6 {
        acc = add(acc, &f[22..54]);
        acc = add(acc, &((f.len() - l4) as u32).to_be_bytes());
        acc += 58;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let sum = !(acc as u16);
    f[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// One frame of every kind the parser distinguishes: from A to B (through
/// `netiso_from_container`), and from B to A (through
/// `netiso_to_container`), link control in its strict form included.
pub fn templates() -> Vec<Vec<u8>> {
    let v4 = |proto, l4: &[u8]| eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, proto, 7, 0, l4));
    let v6 = |next, l4: &[u8]| eth(MAC_A, MAC_B, 0x86dd, &ipv6(A6, B6, next, l4));
    let ll_a = link_local(MAC_A);
    let ll_b = link_local(MAC_B);
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mld_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    let mut mld_report = vec![143u8, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
    mld_report.extend_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb).octets());
    let mut mld_query = vec![130u8, 0, 0, 0, 0x27, 0x10, 0, 0];
    mld_query.extend_from_slice(&[0; 16]);
    let mut hbh_ra = vec![58u8, 0, 5, 2, 0, 0, 1, 0];
    hbh_ra.extend_from_slice(&mld_report);
    vec![
        v4(6, &tcp(1000, 80, SYN)),
        v4(17, &udp(1000, 53, b"payload")),
        v4(1, &icmp_echo(8, 1)),
        v4(2, &[0x16, 0, 0, 0, 224, 0, 0, 22]),
        eth(
            MAC_A,
            MAC_B,
            0x0800,
            &ipv4(A, B, 17, 9, 0x2000, &udp(1, 2, &[0; 24])),
        ),
        eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, 17, 9, 3, &[0; 24])),
        v6(6, &tcp(1000, 80, SYN)),
        v6(17, &udp(1000, 53, b"payload")),
        v6(58, &icmpv6(135)),
        v6(0, &ext8(58, &icmpv6(143))),
        v6(0, &ext8(60, &ext8(6, &tcp(1, 2, SYN)))),
        v6(44, &[6, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2]),
        eth(MAC_A, [0xff; 6], 0x0806, &[0; 28]),
        eth(MAC_A, MAC_B, 0x8100, &[0, 1, 0x08, 0, 0x45, 0, 0, 20]),
        // An ICMP error quoting a TCP packet (follows a flow, if one passed).
        v4(
            1,
            &[
                &[3u8, 3, 0, 0, 0, 0, 0, 0][..],
                &ipv4(B, A, 6, 1, 0, &tcp(80, 1000, SYN))[..28],
            ]
            .concat(),
        ),
        // ICMPv6 neighbour solicitation carried by IPv4: plain protocol 58.
        v4(58, &nd(135, 0, B6, &[])),
        eth(MAC_A, MAC_B, 0x88b5, b"not IP at all"),
        // Link control in its strict form, leaving A ...
        eth(MAC_A, [0xff; 6], 0x0806, &arp(1, MAC_A, A, [0; 6], B)),
        hops(
            eth(
                MAC_A,
                [0x33, 0x33, 0xff, 0, 0, 2],
                0x86dd,
                &ipv6(
                    ll_a,
                    solicited_node(B6),
                    58,
                    &nd(135, 0, B6, &lladdr(1, MAC_A)),
                ),
            ),
            255,
        ),
        hops(
            eth(
                MAC_A,
                [0x33, 0x33, 0xff, 0, 0, 1],
                0x86dd,
                &ipv6(
                    Ipv6Addr::UNSPECIFIED,
                    solicited_node(A6),
                    58,
                    &nd(135, 0, A6, &[14, 1, 1, 2, 3, 4, 5, 6]),
                ),
            ),
            255,
        ),
        hops(
            eth(
                MAC_A,
                MAC_B,
                0x86dd,
                &ipv6(A6, B6, 58, &nd(136, 0x60, A6, &lladdr(2, MAC_A))),
            ),
            255,
        ),
        hops(
            eth(
                MAC_A,
                [0x33, 0x33, 0, 0, 0, 0x16],
                0x86dd,
                &ipv6(ll_a, mld_routers, 0, &hbh_ra),
            ),
            1,
        ),
        hops(
            eth(
                MAC_A,
                [1, 0, 0x5e, 0, 0, 22],
                0x0800,
                &ipv4(
                    A,
                    Ipv4Addr::new(224, 0, 0, 22),
                    2,
                    8,
                    0,
                    &[0x16, 0, 0, 0, 224, 0, 0, 251],
                ),
            ),
            1,
        ),
        // ... and entering A.
        eth(MAC_B, [0xff; 6], 0x0806, &arp(1, MAC_B, B, [0; 6], A)),
        eth(MAC_B, MAC_A, 0x0806, &arp(2, MAC_B, B, MAC_A, A)),
        hops(
            eth(
                MAC_B,
                MAC_A,
                0x86dd,
                &ipv6(B6, A6, 58, &nd(135, 0, A6, &lladdr(1, MAC_B))),
            ),
            255,
        ),
        hops(
            eth(
                MAC_B,
                [0x33, 0x33, 0, 0, 0, 1],
                0x86dd,
                &ipv6(ll_b, all_nodes, 58, &mld_query),
            ),
            1,
        ),
        hops(
            eth(
                MAC_B,
                [1, 0, 0x5e, 0, 0, 1],
                0x0800,
                &ipv4(
                    B,
                    Ipv4Addr::new(224, 0, 0, 1),
                    2,
                    9,
                    0,
                    &[0x11, 100, 0, 0, 0, 0, 0, 0],
                ),
            ),
            1,
        ),
        eth(
            MAC_B,
            MAC_A,
            0x0800,
            &ipv4(B, A, 17, 10, 0, &udp(53, 1000, b"reply?")),
        ),
        eth(MAC_B, MAC_A, 0x86dd, &ipv6(B6, A6, 6, &tcp(80, 1000, 0x12))),
    ]
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn v4_at(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

fn v6_at(f: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&f[at..at + 16]);
    Ipv6Addr::from(a)
}

/// Fragment notes: (source, destination, protocol, identification).
type Note = (Vec<u8>, Vec<u8>, u8, u16);

/// What the network layer of an IP frame says, as far as the reference
/// needs it.
struct Ip {
    src: Vec<u8>,
    dst: Vec<u8>,
    /// The packet's protocol (IPv4) or last next header (IPv6).
    proto: u8,
    /// Hop limit / TTL.
    hops: u8,
    /// Offset of the L4 header.
    l4: usize,
    /// Just past the IP packet, by its own length field.
    end: usize,
    /// `Some(id)` for a fragment: first (`later` false) or later.
    frag: Option<(u16, bool)>,
    /// Only for the first fragment: more fragments follow.
    more: bool,
}

/// Parses the IP header (and IPv6 extension headers, at most six);
/// `None` when it is malformed (too short, or a length past the frame).
fn ip(f: &[u8]) -> Option<Ip> {
    match be16(f, 12) {
        0x0800 => {
            if f.len() < 34 || f[14] >> 4 != 4 {
                return None;
            }
            let ihl = (f[14] & 0x0f) as usize * 4;
            let total = be16(f, 16) as usize;
            if ihl < 20 || total < ihl || 14 + ihl > f.len() || 14 + total > f.len() {
                return None;
            }
            let fragw = be16(f, 20);
            let (offset, more) = (fragw & 0x1fff, fragw & 0x2000 != 0);
            Some(Ip {
                src: f[26..30].to_vec(),
                dst: f[30..34].to_vec(),
                proto: f[23],
                hops: f[22],
                l4: 14 + ihl,
                end: 14 + total,
                frag: (offset != 0 || more).then_some((be16(f, 18), offset != 0)),
                more,
            })
        }
        _ => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return None;
            }
            let end = 54 + be16(f, 18) as usize;
            if end > f.len() {
                return None;
            }
            let mut p = Ip {
                src: f[22..38].to_vec(),
                dst: f[38..54].to_vec(),
                proto: f[20],
                hops: f[21],
                l4: 54,
                end,
                frag: None,
                more: false,
            };
            for _ in 0..6 {
                let off = p.l4;
                let len = match p.proto {
                    0 | 43 | 60 if off + 2 <= end => (f[off + 1] as usize + 1) * 8,
                    51 if off + 2 <= end => (f[off + 1] as usize + 2) * 4,
                    44 if off + 8 <= end => {
                        let w = be16(f, off + 2);
                        p.more = w & 1 != 0;
                        p.frag = Some((be16(f, off + 6), w >> 3 != 0));
                        8
                    }
                    0 | 43 | 60 | 51 | 44 => return None,
                    _ => return Some(p),
                };
                if off + len > end {
                    return None;
                }
                p.proto = f[off];
                p.l4 = off + len;
                if matches!(p.frag, Some((_, true))) {
                    return Some(p); // a later fragment: no L4 header of its own
                }
            }
            // More than six extension headers: nothing a container needs.
            match p.proto {
                0 | 43 | 60 | 51 | 44 => None,
                _ => Some(p),
            }
        }
    }
}

/// The reference, with the fragment notes of the frames that passed.
#[derive(Default)]
pub struct Reference {
    notes: HashSet<Note>,
}

impl Reference {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the design lets `f` through on the deny-all endpoint A,
    /// `leaving` it (`netiso_from_container`) or entering it
    /// (`netiso_to_container`), with non-IP re-opened or not.
    pub fn may_pass(&self, f: &[u8], leaving: bool, allow_non_ip: bool) -> bool {
        if f.len() < 14 {
            return false;
        }
        if leaving && f[6..12] != MAC_A {
            return false;
        }
        match be16(f, 12) {
            0x8100 | 0x88a8 | 0x9100 => false,
            0x0806 => arp_ok(f, leaving),
            0x0800 | 0x86dd => self.ip_ok(f, leaving),
            _ => allow_non_ip,
        }
    }

    /// Tells the reference that `f` passed: a first fragment leaves a note
    /// for the later ones.
    pub fn passed(&mut self, f: &[u8]) {
        if f.len() < 14 || !matches!(be16(f, 12), 0x0800 | 0x86dd) {
            return;
        }
        if let Some(p) = ip(f) {
            if let Some((id, false)) = p.frag {
                if p.more {
                    self.notes.insert((p.src, p.dst, p.proto, id));
                }
            }
        }
    }

    fn ip_ok(&self, f: &[u8], leaving: bool) -> bool {
        let v4 = be16(f, 12) == 0x0800;
        let Some(p) = ip(f) else {
            return false;
        };
        // Who may send, who may receive (the ICMPv6 type decides whether
        // `::` may send).
        let later = matches!(p.frag, Some((_, true)));
        let icmp6_type = (!v4 && p.proto == 58 && !later && p.l4 < p.end).then(|| f[p.l4]);
        if leaving {
            let own = if v4 {
                p.src == A.octets()
            } else {
                p.src == A6.octets()
                    || p.src == link_local(MAC_A).octets()
                    || (p.src == [0; 16] && matches!(icmp6_type, Some(135 | 143)))
            };
            if !own {
                return false;
            }
        } else {
            let for_a = if v4 {
                p.dst == A.octets() || p.dst == [255; 4] || p.dst[0] & 0xf0 == 0xe0
            } else {
                p.dst == A6.octets() || p.dst == link_local(MAC_A).octets() || p.dst[0] == 0xff
            };
            if !for_a {
                return false;
            }
        }
        if let Some((id, true)) = p.frag {
            return self
                .notes
                .contains(&(p.src.clone(), p.dst.clone(), p.proto, id));
        }
        if v4 && p.proto == 2 {
            return igmp_ok(f, &p, leaving);
        }
        match icmp6_type {
            Some(133..=137) => nd_ok(f, &p, leaving),
            Some(130..=132 | 143) => mld_ok(f, &p, leaving),
            // Judged by policy: denied.
            _ => false,
        }
    }
}

/// ARP in the form the link needs: Ethernet/IPv4, request or reply, 42
/// bytes or zero padding up to 60; leaving, it speaks for A (or probes
/// from 0.0.0.0); entering, it is about A, or announces its sender's own
/// address (RFC 5227: a request from and for the same address).
fn arp_ok(f: &[u8], leaving: bool) -> bool {
    if f.len() < 42 || f.len() > 60 {
        return false;
    }
    if f[42..].iter().any(|&b| b != 0) {
        return false;
    }
    let op = be16(f, 20);
    if f[14..20] != [0, 1, 8, 0, 6, 4] || !(op == 1 || op == 2) {
        return false;
    }
    let (sha, spa, tha, tpa) = (&f[22..28], v4_at(f, 28), &f[32..38], v4_at(f, 38));
    if leaving {
        sha == MAC_A && (spa == A || (op == 1 && spa == Ipv4Addr::UNSPECIFIED))
    } else {
        let announcement = op == 1 && spa == tpa && !spa.is_unspecified() && tha == [0; 6];
        announcement || (tpa == A && (tha == MAC_A || (op == 1 && tha == [0; 6])))
    }
}

/// IGMP: TTL 1 to 224/4; reports leave, queries of 8 bytes (or 12 with no
/// sources) enter.
fn igmp_ok(f: &[u8], p: &Ip, leaving: bool) -> bool {
    if p.hops != 1 || p.dst[0] & 0xf0 != 0xe0 || p.l4 >= p.end {
        return false;
    }
    let len = p.end - p.l4;
    match f[p.l4] {
        0x12 | 0x16 | 0x17 => leaving,
        0x22 => leaving && report_ok(&f[p.l4..p.end], 8, 8, 0xe0),
        0x11 => !leaving && (len == 8 || (len == 12 && f[p.l4 + 10..p.l4 + 12] == [0, 0])),
        _ => false,
    }
}

/// An IGMPv3 / MLDv2 report `m` in its exact form: 1 to `max` records of
/// `size` bytes, each of type 1..=6 with no auxiliary data and no sources
/// about a group whose first byte is `group` (masked by 0xf0 for IPv4),
/// nothing after them. (Checksums are the kernel's business here: a
/// reference may let more pass, never less.)
fn report_ok(m: &[u8], max: usize, size: usize, group: u8) -> bool {
    if m.len() < 8 || m[1] != 0 || m[4] != 0 || m[5] != 0 {
        return false;
    }
    let n = usize::from(be16(m, 6));
    if n == 0 || n > max || m.len() != 8 + size * n {
        return false;
    }
    m[8..].chunks(size).all(|r| {
        let g = if group == 0xff { r[4] } else { r[4] & 0xf0 };
        (1..=6).contains(&r[0]) && r[1] == 0 && r[2] == 0 && r[3] == 0 && g == group
    })
}

/// Neighbour discovery: hop limit 255, a fixed part, then only
/// source/target link-layer address and nonce options of one unit each,
/// and nothing after the message (not even in the frame). No router
/// advertisement or redirect leaves A; a solicitation entering A asks for
/// one of A's addresses; an advertisement leaving A names one of them.
fn nd_ok(f: &[u8], p: &Ip, leaving: bool) -> bool {
    let ty = f[p.l4];
    if p.hops != 255 || p.end != f.len() {
        return false;
    }
    if leaving && matches!(ty, 134 | 137) {
        return false;
    }
    let fixed = match ty {
        133 => 8,
        134 => 16,
        135 | 136 => 24,
        _ => 40,
    };
    if p.l4 + fixed > p.end {
        return false;
    }
    let own = |a: Ipv6Addr| a == A6 || a == link_local(MAC_A);
    let checks_target = matches!((ty, leaving), (135, false) | (136, true));
    if checks_target && !own(v6_at(f, p.l4 + 8)) {
        return false;
    }
    let mut off = p.l4 + fixed;
    while off < p.end {
        if off + 8 > p.end || !matches!(f[off], 1 | 2 | 14) || f[off + 1] != 1 {
            return false;
        }
        off += 8;
    }
    true
}

/// MLD: hop limit 1, a link-local source (or `::` for a v2 report);
/// reports leave, queries of 24 bytes (or 28 with no sources) enter.
fn mld_ok(f: &[u8], p: &Ip, leaving: bool) -> bool {
    let ty = f[p.l4];
    let link_local_src = p.src[0] == 0xfe && p.src[1] & 0xc0 == 0x80;
    if p.hops != 1 || !(link_local_src || (ty == 143 && p.src == [0; 16])) {
        return false;
    }
    // One hop-by-hop header: router alert and padding, nothing else.
    if p.l4 != 62 || f[54..62] != [58, 0, 5, 2, 0, 0, 1, 0] {
        return false;
    }
    let len = p.end - p.l4;
    match ty {
        131 | 132 => leaving,
        143 => leaving && report_ok(&f[p.l4..p.end], 4, 20, 0xff),
        130 => !leaving && (len == 24 || (len == 28 && f[p.l4 + 26..p.l4 + 28] == [0, 0])),
        _ => false,
    }
}
