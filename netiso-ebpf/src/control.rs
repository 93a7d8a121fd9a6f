//! Link control traffic (ARP, IPv6 neighbour discovery, MLD, IGMP) is
//! checked, not trusted: it passes only in the exact form the link needs,
//! carrying the endpoint's own addresses, with nothing after the message.
//! Anything else would be a channel around IP policy (the receiver's raw
//! sockets see it). Policy is not asked: the link needs these between
//! every pair, and their form leaves no room for a payload.
use aya_ebpf::{helpers::bpf_csum_diff, programs::TcContext};
use netiso_common::{family, Direction, Endpoint};

use crate::parse::{ptr_at, Control, Packet, ETH_HLEN};

/// Shortest Ethernet frame on a wire: anything up to it may be zero
/// padding added by a sender.
const ETH_ZLEN: usize = 60;

/// Whether the frame ends at `end`, or only zero padding follows it up to
/// the minimum frame size.
#[inline(always)]
fn tail_ok(ctx: &TcContext, end: usize) -> bool {
    let len = ctx.len() as usize;
    if len == end {
        return true;
    }
    if len > ETH_ZLEN || end > len {
        return false;
    }
    let mut i = 0usize;
    while i < ETH_ZLEN {
        let off = end + i;
        if off >= len {
            return true;
        }
        // Two bytes ending at `off`: the verifier tracks a one-byte
        // window badly once the compiler turns `+ 1 >` into `>=`.
        match ptr_at::<[u8; 2]>(ctx, off - 1) {
            // SAFETY: ptr_at checked that these 2 bytes lie inside the linear
            // packet data; a byte array (align 1, any value), read at once.
            Some(b) if unsafe { (*b)[1] } == 0 => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The outcome of a link-control check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Pass,
    /// Well formed, but about or for another node of the link (an ARP or
    /// neighbour solicitation for someone else's address, a multicast
    /// report meant for the router): the link's ordinary chatter, dropped
    /// as `not-for-endpoint`.
    Foreign,
    /// Not in the form the link needs: `control`.
    Bad,
}

#[inline(always)]
fn verdict(ok: bool, foreign: bool) -> Check {
    match (ok, foreign) {
        (false, _) => Check::Bad,
        (true, true) => Check::Foreign,
        (true, false) => Check::Pass,
    }
}

const ARP_LEN: usize = 28;

/// ARP for IPv4 over Ethernet, requests and replies only. Leaving a
/// container it must speak for the container's own MAC and address;
/// entering one it must be about the container's own address, or be an
/// announcement (RFC 5227) of the sender's own address.
#[inline(always)]
pub fn arp_check(ctx: &TcContext, ep: &Endpoint, dir: Direction) -> Check {
    let Some(a) = ptr_at::<[u8; ARP_LEN]>(ctx, ETH_HLEN) else {
        return Check::Bad;
    };
    // SAFETY: ptr_at checked that the 28-byte ARP message lies inside the
    // linear packet data; a byte array (align 1, any value), copied out at once.
    let a = unsafe { *a };
    let op = u16::from_be_bytes([a[6], a[7]]);
    if a[0..6] != [0, 1, 8, 0, 6, 4] || !(op == 1 || op == 2) {
        return Check::Bad;
    }
    if !tail_ok(ctx, ETH_HLEN + ARP_LEN) || ep.ipv4 == [0; 4] {
        return Check::Bad;
    }
    let (sha, spa, tha, tpa) = (&a[8..14], &a[14..18], &a[18..24], &a[24..28]);
    if dir == Direction::Egress {
        // A probe (RFC 5227) asks from 0.0.0.0.
        verdict(
            sha == ep.mac && (spa == ep.ipv4 || (op == 1 && spa == [0; 4])),
            false,
        )
    } else if op == 1 && spa == tpa && spa != [0; 4] && tha == [0; 6] {
        // Docker Engine 28 gives an endpoint a new random MAC each time it
        // joins a network and announces it so that peers update their
        // neighbour entry; without it a peer keeps sending to the old MAC
        // of a restarted container for seconds. Leaving its sender, an
        // announcement was checked like any request (own MAC, own address).
        Check::Pass
    } else if tpa != ep.ipv4 {
        Check::Foreign
    } else {
        verdict(tha == ep.mac || (op == 1 && tha == [0; 6]), false)
    }
}

/// IPv6 link-local unicast (fe80::/10).
#[inline(always)]
pub fn link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// One of the endpoint's own IPv6 addresses (global or link-local).
#[inline(always)]
pub fn own_v6(ep: &Endpoint, a: &[u8; 16]) -> bool {
    (ep.ipv6 != [0; 16] && *a == ep.ipv6) || (ep.ipv6_ll != [0; 16] && *a == ep.ipv6_ll)
}

/// Sums `N` bytes of the frame at `off` into a ones'-complement partial
/// sum (`bpf_csum_diff` with a constant size, which the verifier checks
/// against the packet bounds).
#[inline(always)]
fn sum<const N: usize>(ctx: &TcContext, off: usize, seed: u32) -> Option<u32> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bpf_csum_diff with an empty `from` (null, size 0, which the
    // helper allows) only reads the N bytes at `to`, which ptr_at checked lie
    // inside the linear packet data (the `*mut` is the helper's signature;
    // nothing is written). The helper has no alignment needs and fails with
    // a negative value, checked below, for an N that is not a multiple of 4.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, seed) };
    if s < 0 {
        None
    } else {
        Some(s as u32)
    }
}

/// Folds a partial sum to 16 bits.
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// `p.l4_off` bounded for the verifier: it comes back from the scratch
/// map unbounded, and pointer arithmetic needs a bound. Every control
/// message starts within the first 128 bytes (a plain IPv6 header ends at
/// 54, one hop-by-hop header later at 62, an IPv4 one by 74).
#[inline(always)]
fn l4_of(p: &Packet) -> Option<usize> {
    if p.l4_off > 120 {
        None
    } else {
        Some(p.l4_off & 0x7f)
    }
}

/// Whether the ICMPv6 message of `len` bytes at `p.l4_off` has a correct
/// checksum (over the pseudo header and the message): a wrong one would be
/// bits of the sender's choosing that the receiver's raw sockets still see.
/// Only the sizes link control messages have here.
#[inline(always)]
fn icmpv6_csum_ok(ctx: &TcContext, p: &Packet, len: usize) -> bool {
    // Source and destination addresses, then the message.
    let Some(addrs) = sum::<32>(ctx, ETH_HLEN + 8, 0) else {
        return false;
    };
    // Bounded for the verifier (the offset comes back from the scratch
    // map unbounded); control messages sit well inside the first 128 bytes.
    if p.l4_off > 120 {
        return false;
    }
    let l4 = p.l4_off & 0x7f;
    let msg = match len {
        8 => sum::<8>(ctx, l4, addrs),
        16 => sum::<16>(ctx, l4, addrs),
        24 => sum::<24>(ctx, l4, addrs),
        28 => sum::<28>(ctx, l4, addrs),
        32 => sum::<32>(ctx, l4, addrs),
        40 => sum::<40>(ctx, l4, addrs),
        48 => sum::<48>(ctx, l4, addrs),
        68 => sum::<68>(ctx, l4, addrs),
        88 => sum::<88>(ctx, l4, addrs),
        _ => None,
    };
    let Some(msg) = msg else {
        return false;
    };
    // Pseudo header: upper-layer length and next header, in network order
    // as the sum's words are.
    let pseudo = u64::from((len as u32).to_be()) + u64::from(58u32.to_be());
    fold(u64::from(msg) + pseudo) == 0xffff
}

/// Whether the IGMP message of `len` bytes has a correct checksum.
#[inline(always)]
fn igmp_csum_ok(ctx: &TcContext, p: &Packet, len: usize) -> bool {
    if p.l4_off > 120 {
        return false;
    }
    let l4 = p.l4_off & 0x7f;
    let s = match len {
        8 => sum::<8>(ctx, l4, 0),
        12 => sum::<12>(ctx, l4, 0),
        _ => None,
    };
    s.is_some_and(|s| fold(u64::from(s)) == 0xffff)
}

/// The first word of the IPv6 header is `6` and nothing else: traffic
/// class and flow label are the sender's bits to choose, not the link's.
#[inline(always)]
fn plain_v6_header(ctx: &TcContext) -> bool {
    // SAFETY: ptr_at checked that the first 4 bytes of the IPv6 header lie
    // inside the linear packet data; a byte array, read at once.
    matches!(ptr_at::<[u8; 4]>(ctx, ETH_HLEN), Some(h) if (unsafe { *h }) == [0x60, 0, 0, 0])
}

/// ff02::1:ffXX:XXXX of `a`.
#[inline(always)]
fn is_solicited_node_of(d: &[u8; 16], a: &[u8; 16]) -> bool {
    d[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff] && d[13..] == a[13..]
}

const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Checks a packet the parser marked as link control.
#[inline(always)]
pub fn control_check(ctx: &TcContext, p: &Packet, ep: &Endpoint, dir: Direction) -> Check {
    let mut foreign = false;
    let ok = match p.control {
        Control::Nd => nd_ok(ctx, p, ep, dir, &mut foreign),
        Control::Mld => mld_ok(ctx, p, dir, &mut foreign),
        Control::Igmp => igmp_ok(ctx, p, dir, &mut foreign),
        Control::None => true,
    };
    verdict(ok, foreign)
}

/// Neighbour discovery: solicitations and advertisements (and router
/// solicitations leaving a container), hop limit 255, no extension
/// headers, link-layer address options that name the sender, a nonce for
/// duplicate address detection. Router advertisements and redirects are
/// dropped both ways: no container is a router on its bridge.
#[inline(always)]
fn nd_ok(ctx: &TcContext, p: &Packet, ep: &Endpoint, dir: Direction, foreign: &mut bool) -> bool {
    if p.family != family::V6 || p.hop_limit != 255 || p.ext_headers || !plain_v6_header(ctx) {
        return false;
    }
    let Some(l4) = l4_of(p) else {
        return false;
    };
    let Some(h) = ptr_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
    // SAFETY: ptr_at checked that the 8-byte ICMPv6 header lies inside the
    // linear packet data; a byte array, copied out at once.
    let h = unsafe { *h };
    // Code 0, and reserved bits zero: the only free bits left are the
    // advertisement's three flags.
    let reserved_ok = match p.icmp_type {
        136 => h[4] & 0x1f == 0 && h[5..8] == [0, 0, 0],
        _ => h[4..8] == [0, 0, 0, 0],
    };
    if h[1] != 0 || !reserved_ok {
        return false;
    }
    let fixed: usize = match p.icmp_type {
        // A router solicitation is for the routers, never a container.
        133 => {
            *foreign = dir == Direction::Ingress;
            8
        }
        135 | 136 => 24,
        _ => return false,
    };
    let len = p.l3_end.saturating_sub(p.l4_off);
    if len < fixed || (len - fixed) % 8 != 0 || len - fixed > 16 || !tail_ok(ctx, p.l3_end) {
        return false;
    }
    let unspecified = p.saddr == [0; 16];
    if p.icmp_type != 133 {
        let Some(t) = ptr_at::<[u8; 16]>(ctx, l4 + 8) else {
            return false;
        };
        // SAFETY: ptr_at checked that the 16-byte target address lies inside
        // the linear packet data; a byte array (align 1, any value). The
        // reference is only read, and nothing in this function pulls or
        // changes the packet.
        let target = unsafe { &*t };
        let must_be_own = match (p.icmp_type, dir) {
            // Asking for someone else is fine; checking its own address
            // (DAD, from ::) is about its own address only.
            (135, Direction::Egress) => unspecified,
            (135, Direction::Ingress) => true,
            (_, Direction::Egress) => true,
            // An advertisement names its sender's address.
            _ => false,
        };
        if must_be_own && !own_v6(ep, target) {
            // Entering: a solicitation about another node's address.
            if dir == Direction::Egress {
                return false;
            }
            *foreign = true;
        }
        // A solicitation goes to the target or its solicited-node group;
        // an advertisement to all nodes or to one node (unicast, which the
        // receiving side checks is its own).
        let dest_ok = if p.icmp_type == 135 {
            p.daddr == *target || is_solicited_node_of(&p.daddr, target)
        } else {
            p.daddr == ALL_NODES || p.daddr[0] != 0xff
        };
        if !dest_ok {
            return false;
        }
    } else if p.daddr != ALL_ROUTERS {
        return false;
    }
    if !icmpv6_csum_ok(ctx, p, len) {
        return false;
    }
    let Some(src) = ptr_at::<[u8; 6]>(ctx, 6) else {
        return false;
    };
    // SAFETY: ptr_at checked that the source MAC (bytes 6..12) lies inside
    // the linear packet data; a byte array, copied out at once.
    let src = unsafe { *src };
    let mut off = l4 + fixed;
    let mut i = 0;
    while i < 2 {
        i += 1;
        if off >= p.l3_end {
            break;
        }
        let Some(o) = ptr_at::<[u8; 8]>(ctx, off) else {
            return false;
        };
        // SAFETY: ptr_at checked that this 8-byte option lies inside the
        // linear packet data; a byte array, copied out at once.
        let o = unsafe { *o };
        if o[1] != 1 {
            return false;
        }
        let ok = match o[0] {
            // Source link-layer address (not in advertisements, never from
            // ::): the sender's own MAC.
            1 => p.icmp_type != 136 && !unspecified && o[2..8] == src,
            // Target link-layer address: in advertisements only.
            2 => p.icmp_type == 136 && o[2..8] == src,
            // Nonce: duplicate address detection only.
            14 => p.icmp_type == 135 && unspecified,
            _ => false,
        };
        if !ok {
            return false;
        }
        off += 8;
    }
    true
}

/// Multicast listener discovery: reports leave containers (the bridge
/// learns from them), queries enter them; never the other way round.
#[inline(always)]
fn mld_ok(ctx: &TcContext, p: &Packet, dir: Direction, foreign: &mut bool) -> bool {
    if p.hop_limit != 1 || p.daddr[0] != 0xff || !plain_v6_header(ctx) {
        return false;
    }
    if !(link_local(&p.saddr) || (p.icmp_type == 143 && p.saddr == [0; 16])) {
        return false;
    }
    // MLD goes with exactly one hop-by-hop header: a router alert and two
    // bytes of padding, as Linux sends it; nothing else may ride along.
    if p.l4_off != ETH_HLEN + 40 + 8
        || !matches!(ptr_at::<[u8; 8]>(ctx, ETH_HLEN + 40),
            // SAFETY: ptr_at checked that the 8-byte hop-by-hop header lies
            // inside the linear packet data; a byte array, read at once.
            Some(h) if (unsafe { *h }) == [58, 0, 5, 2, 0, 0, 1, 0])
    {
        return false;
    }
    let len = p.l3_end.saturating_sub(p.l4_off);
    // Reports entering a container are meant for the router: well formed,
    // they are the link's chatter, dropped as not for this endpoint.
    *foreign = dir == Direction::Ingress;
    let shape = match (p.icmp_type, dir) {
        (131 | 132, _) => len == 24,
        (143, _) => mldv2_report_ok(ctx, p, len),
        (130, Direction::Ingress) => {
            *foreign = false;
            (len == 24 || (len == 28 && sources_zero(ctx, p, 26)))
                && mld_query_destination_ok(ctx, p)
                && icmpv6_csum_ok(ctx, p, len)
        }
        _ => false,
    };
    shape && tail_ok(ctx, p.l3_end)
}

/// Group records an MLDv2 report may carry here.
const MLDV2_MAX_RECORDS: usize = 4;

/// An MLDv2 report in its exact form: 1 to `MLDV2_MAX_RECORDS` records,
/// each a multicast group with no sources and no auxiliary data, nothing
/// after them, a correct checksum.
#[inline(always)]
fn mldv2_report_ok(ctx: &TcContext, p: &Packet, len: usize) -> bool {
    let Some(l4) = l4_of(p) else {
        return false;
    };
    let Some(h) = ptr_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
    // SAFETY: ptr_at checked that the 8-byte report header lies inside the
    // linear packet data; a byte array, copied out at once.
    let h = unsafe { *h };
    if !source_less_records::<MLDV2_MAX_RECORDS, 20>(ctx, l4, &h, len, 0xff, 0xff) {
        return false;
    }
    icmpv6_csum_ok(ctx, p, len)
}

/// An MLD query goes to all nodes (a general query) or to the group it
/// asks about (the group field, 8 bytes into the message).
#[inline(always)]
fn mld_query_destination_ok(ctx: &TcContext, p: &Packet) -> bool {
    let Some(g) = ptr_at::<[u8; 16]>(ctx, p.l4_off + 8) else {
        return false;
    };
    // SAFETY: ptr_at checked that the 16-byte group address lies inside the
    // linear packet data; a byte array (align 1, any value), only read in
    // the next line.
    let g = unsafe { &*g };
    (p.daddr == ALL_NODES && *g == [0; 16]) || p.daddr == *g
}

/// IGMP: reports leave containers, queries enter them.
#[inline(always)]
fn igmp_ok(ctx: &TcContext, p: &Packet, dir: Direction, foreign: &mut bool) -> bool {
    if p.family != family::V4 || p.hop_limit != 1 || p.daddr[0] & 0xf0 != 0xe0 {
        return false;
    }
    let Some(l4) = l4_of(p) else {
        return false;
    };
    // Every IGMP message has at least 8 bytes.
    let Some(h) = ptr_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
    // SAFETY: ptr_at checked that the 8-byte IGMP header lies inside the
    // linear packet data; a byte array, copied out at once (every field
    // below is read from this copy, not from the packet again).
    let h = unsafe { *h };
    let len = p.l3_end.saturating_sub(p.l4_off);
    *foreign = dir == Direction::Ingress;
    let shape = match (h[0], dir) {
        (0x12 | 0x16 | 0x17, _) => len == 8,
        (0x22, _) => igmpv3_report_ok(ctx, l4, &h, len),
        (0x11, Direction::Ingress) => {
            *foreign = false;
            let group = [h[4], h[5], h[6], h[7]];
            // A general query goes to all hosts, a group query to its group.
            let dest_ok =
                (p.daddr[..4] == [224, 0, 0, 1] && group == [0; 4]) || p.daddr[..4] == group;
            let sources_ok = len == 8
                || (len == 12
                    && ptr_at::<[u8; 12]>(ctx, l4)
                        // SAFETY: ptr_at checked that the 12-byte IGMPv3
                        // query lies inside the linear packet data; a byte
                        // array, its source count read at once.
                        .is_some_and(|q| unsafe { (*q)[10] == 0 && (*q)[11] == 0 }));
            dest_ok && sources_ok && igmp_csum_ok(ctx, p, len)
        }
        _ => false,
    };
    shape && tail_ok(ctx, p.l3_end)
}

/// Group records an IGMPv3 report may carry here (a container joins few
/// groups; a report of more is dropped as malformed control).
const IGMPV3_MAX_RECORDS: usize = 8;

/// The records of an IGMPv3 or MLDv2 report whose header is `h` (at `l4`,
/// the message `len` bytes): 1 to `MAX` records of `SIZE` bytes, nothing
/// after them, each of record type 1..=6 with no auxiliary data and no
/// sources, about a multicast group (its first byte masked by `mask` is
/// `group`); the header's reserved bytes zero.
#[inline(always)]
fn source_less_records<const MAX: usize, const SIZE: usize>(
    ctx: &TcContext,
    l4: usize,
    h: &[u8; 8],
    len: usize,
    mask: u8,
    group: u8,
) -> bool {
    if h[1] != 0 || h[4] != 0 || h[5] != 0 {
        return false;
    }
    let records = usize::from(u16::from_be_bytes([h[6], h[7]]));
    if records == 0 || records > MAX || len != 8 + SIZE * records {
        return false;
    }
    for i in 0..MAX {
        if i >= records {
            break;
        }
        let Some(r) = ptr_at::<[u8; 5]>(ctx, l4 + 8 + SIZE * i) else {
            return false;
        };
        // SAFETY: ptr_at checked that the record's first 5 bytes lie inside
        // the linear packet data; a byte array, copied out at once.
        let r = unsafe { *r };
        if !(1..=6).contains(&r[0]) || r[1] != 0 || r[2] != 0 || r[3] != 0 || r[4] & mask != group {
            return false;
        }
    }
    true
}

/// An IGMPv3 membership report in its exact form: 1 to
/// `IGMPV3_MAX_RECORDS` group records, each a multicast group with no
/// sources and no auxiliary data (what a container's kernel sends when it
/// joins or leaves a group), nothing after them, a correct checksum. So a
/// report carries no bytes of the sender's choosing beyond group addresses.
#[inline(always)]
fn igmpv3_report_ok(ctx: &TcContext, l4: usize, h: &[u8; 8], len: usize) -> bool {
    if !source_less_records::<IGMPV3_MAX_RECORDS, 8>(ctx, l4, h, len, 0xf0, 0xe0) {
        return false;
    }
    let records = usize::from(u16::from_be_bytes([h[6], h[7]]));
    let s = match records {
        1 => sum::<16>(ctx, l4, 0),
        2 => sum::<24>(ctx, l4, 0),
        3 => sum::<32>(ctx, l4, 0),
        4 => sum::<40>(ctx, l4, 0),
        5 => sum::<48>(ctx, l4, 0),
        6 => sum::<56>(ctx, l4, 0),
        7 => sum::<64>(ctx, l4, 0),
        8 => sum::<72>(ctx, l4, 0),
        _ => None,
    };
    s.is_some_and(|s| fold(u64::from(s)) == 0xffff)
}

/// The two-byte source count at `at` (from the L4 header) is zero.
#[inline(always)]
fn sources_zero(ctx: &TcContext, p: &Packet, at: usize) -> bool {
    match ptr_at::<[u8; 2]>(ctx, p.l4_off + at) {
        // SAFETY: ptr_at checked that the 2-byte count lies inside the linear
        // packet data; a byte array, read at once.
        Some(n) => (unsafe { *n }) == [0, 0],
        None => false,
    }
}
