//! Link control traffic (ARP, IPv6 neighbour discovery, MLD, IGMP) is
//! checked, not trusted: it passes only in the exact form the link needs,
//! carrying the endpoint's own addresses, with nothing after the message.
//! Anything else would be a channel around IP policy (the receiver's raw
//! sockets see it). Policy is not asked: the link needs these between
//! every pair, and their form leaves no room for a payload.
use aya_ebpf::programs::TcContext;
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
            Some(b) if unsafe { (*b)[1] } == 0 => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

const ARP_LEN: usize = 28;

/// ARP for IPv4 over Ethernet, requests and replies only. Leaving a
/// container it must speak for the container's own MAC and address;
/// entering one it must be about the container's own address.
#[inline(always)]
pub fn arp_ok(ctx: &TcContext, ep: &Endpoint, dir: Direction) -> bool {
    let Some(a) = ptr_at::<[u8; ARP_LEN]>(ctx, ETH_HLEN) else {
        return false;
    };
    let a = unsafe { *a };
    let op = u16::from_be_bytes([a[6], a[7]]);
    if a[0..6] != [0, 1, 8, 0, 6, 4] || !(op == 1 || op == 2) {
        return false;
    }
    if !tail_ok(ctx, ETH_HLEN + ARP_LEN) || ep.ipv4 == [0; 4] {
        return false;
    }
    let (sha, spa, tha, tpa) = (&a[8..14], &a[14..18], &a[18..24], &a[24..28]);
    if dir == Direction::Egress {
        // A probe (RFC 5227) asks from 0.0.0.0.
        sha == ep.mac && (spa == ep.ipv4 || (op == 1 && spa == [0; 4]))
    } else {
        tpa == ep.ipv4 && (tha == ep.mac || (op == 1 && tha == [0; 6]))
    }
}

/// IPv6 link-local unicast (fe80::/10).
#[inline(always)]
pub fn link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn own_v6(ep: &Endpoint, a: &[u8; 16]) -> bool {
    (ep.ipv6 != [0; 16] && *a == ep.ipv6) || (ep.ipv6_ll != [0; 16] && *a == ep.ipv6_ll)
}

/// Checks a packet the parser marked as link control.
#[inline(always)]
pub fn control_ok(ctx: &TcContext, p: &Packet, ep: &Endpoint, dir: Direction) -> bool {
    match p.control {
        Control::Nd => nd_ok(ctx, p, ep, dir),
        Control::Mld => mld_ok(ctx, p, dir),
        Control::Igmp => igmp_ok(ctx, p, dir),
        Control::None => true,
    }
}

/// Neighbour discovery: solicitations and advertisements (and router
/// solicitations leaving a container), hop limit 255, no extension
/// headers, link-layer address options that name the sender, a nonce for
/// duplicate address detection. Router advertisements and redirects are
/// dropped both ways: no container is a router on its bridge.
#[inline(always)]
fn nd_ok(ctx: &TcContext, p: &Packet, ep: &Endpoint, dir: Direction) -> bool {
    if p.family != family::V6 || p.hop_limit != 255 || p.ext_headers {
        return false;
    }
    let l4 = p.l4_off;
    let Some(h) = ptr_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
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
        133 if dir == Direction::Egress => 8,
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
            return false;
        }
    }
    let Some(src) = ptr_at::<[u8; 6]>(ctx, 6) else {
        return false;
    };
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
fn mld_ok(ctx: &TcContext, p: &Packet, dir: Direction) -> bool {
    if p.hop_limit != 1 || p.daddr[0] != 0xff {
        return false;
    }
    if !(link_local(&p.saddr) || (p.icmp_type == 143 && p.saddr == [0; 16])) {
        return false;
    }
    let len = p.l3_end.saturating_sub(p.l4_off);
    let shape = match (p.icmp_type, dir) {
        (131 | 132, Direction::Egress) => len == 24,
        (143, Direction::Egress) => len >= 8,
        (130, Direction::Ingress) => len == 24 || (len == 28 && sources_zero(ctx, p, 26)),
        _ => false,
    };
    shape && tail_ok(ctx, p.l3_end)
}

/// IGMP: reports leave containers, queries enter them.
#[inline(always)]
fn igmp_ok(ctx: &TcContext, p: &Packet, dir: Direction) -> bool {
    if p.family != family::V4 || p.hop_limit != 1 || p.daddr[0] & 0xf0 != 0xe0 {
        return false;
    }
    let l4 = p.l4_off;
    // Every IGMP message has at least 8 bytes.
    let Some(h) = ptr_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
    let ty = unsafe { (*h)[0] };
    let len = p.l3_end.saturating_sub(p.l4_off);
    let shape = match (ty, dir) {
        (0x12 | 0x16 | 0x17, Direction::Egress) => len == 8,
        (0x22, Direction::Egress) => len >= 8,
        (0x11, Direction::Ingress) => len == 8 || (len == 12 && sources_zero(ctx, p, 10)),
        _ => false,
    };
    shape && tail_ok(ctx, p.l3_end)
}

/// The two-byte source count at `at` (from the L4 header) is zero.
#[inline(always)]
fn sources_zero(ctx: &TcContext, p: &Packet, at: usize) -> bool {
    match ptr_at::<[u8; 2]>(ctx, p.l4_off + at) {
        Some(n) => (unsafe { *n }) == [0, 0],
        None => false,
    }
}
