//! The established fast path: a plain unicast TCP or UDP packet of a live
//! connection this endpoint admitted under the current policy, refreshed
//! moments ago, passes after the endpoint's own checks and one conntrack
//! lookup, without the general parser. "Plain": IPv4 without options and
//! not a fragment, or IPv6 whose next header is TCP/UDP itself, with every
//! length consistent. Anything else, or any doubt, takes the full path in
//! `main.rs`, which judges the packet from scratch; the fast path only
//! ever passes a packet the full path would pass (the same checks, made
//! on the same bytes), and drops nothing.
use aya_ebpf::programs::TcContext;
use netiso_common::{ct_flags, family, proto, Direction, Endpoint};

use crate::conntrack;
use crate::maps::CONNTRACK;
use crate::parse::{ptr_at, Packet, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

pub enum Fast {
    /// A fresh live connection: pass.
    Pass,
    /// The packet's conntrack key (in `pkt.ct_key`, exactly as the full
    /// path builds it) has no entry: the full path need not look again.
    Miss,
    /// Take the full path.
    Other,
}

/// `trusted`: entering, the packet may take its sender's verdict (main.rs
/// decided). `mark`: leaving, the mark of cross-veth verdicts to put on a
/// packet of a connection to a container on this host (0: none).
#[inline(always)]
pub fn established(
    ctx: &TcContext,
    ep: &Endpoint,
    pkt: &mut Packet,
    ifindex: u32,
    dir: Direction,
    generation: u32,
    trusted: bool,
    mark: u32,
) -> Fast {
    let len = ctx.len() as usize;
    let Some(eth) = ptr_at::<[u8; ETH_HLEN]>(ctx, 0) else {
        return Fast::Other;
    };
    // SAFETY: ptr_at checked that the Ethernet header lies inside the
    // linear packet data; a byte array, only read, and nothing here pulls
    // or changes the packet.
    let eth = unsafe { &*eth };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let (fam, l4, l4_proto, src, dst) = if ethertype == ETH_P_IP {
        let Some(h) = ptr_at::<[u8; 20]>(ctx, ETH_HLEN) else {
            return Fast::Other;
        };
        // SAFETY: as above, for the 20-byte IPv4 header.
        let h = unsafe { &*h };
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        // Version 4, no options, the packet inside the frame, not a
        // fragment (no MF, offset 0).
        if h[0] != 0x45 || ETH_HLEN + total > len || h[6] & 0x3f != 0 || h[7] != 0 {
            return Fast::Other;
        }
        let l4_proto = h[9];
        let need = if l4_proto == proto::TCP {
            20
        } else if l4_proto == proto::UDP {
            8
        } else {
            return Fast::Other;
        };
        if 20 + need > total {
            return Fast::Other;
        }
        let s4 = [h[12], h[13], h[14], h[15]];
        let d4 = [h[16], h[17], h[18], h[19]];
        // Unicast only: not multicast, not a broadcast.
        if d4[0] & 0xf0 == 0xe0
            || d4 == [255; 4]
            || (ep.ipv4_bcast != [0; 4] && d4 == ep.ipv4_bcast)
        {
            return Fast::Other;
        }
        let local = if dir == Direction::Egress { s4 } else { d4 };
        if ep.ipv4 == [0; 4] || local != ep.ipv4 {
            return Fast::Other;
        }
        let src = [u32::from_ne_bytes(s4), 0, 0, 0];
        let dst = [u32::from_ne_bytes(d4), 0, 0, 0];
        (family::V4, ETH_HLEN + 20, l4_proto, src, dst)
    } else if ethertype == ETH_P_IPV6 {
        let Some(h) = ptr_at::<[u8; 40]>(ctx, ETH_HLEN) else {
            return Fast::Other;
        };
        // SAFETY: as above, for the 40-byte IPv6 header.
        let h = unsafe { &*h };
        let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
        if h[0] >> 4 != 6 || payload == 0 || ETH_HLEN + 40 + payload > len {
            return Fast::Other;
        }
        let l4_proto = h[6];
        let need = if l4_proto == proto::TCP {
            20
        } else if l4_proto == proto::UDP {
            8
        } else {
            return Fast::Other;
        };
        if need > payload {
            return Fast::Other;
        }
        // Multicast destination: not for the fast path.
        if h[24] == 0xff {
            return Fast::Other;
        }
        let s6: &[u8; 16] = h[8..24].try_into().unwrap_or(&[0; 16]);
        let d6: &[u8; 16] = h[24..40].try_into().unwrap_or(&[0xff; 16]);
        let (src, dst) = (words(s6), words(d6));
        // The endpoint's own address (control.rs' `own_v6`, compared as
        // 32-bit words): its global or its link-local one, never `::`.
        let local = if dir == Direction::Egress { src } else { dst };
        let (global, link_local) = own_words(ep);
        let own =
            (global != [0; 4] && local == global) || (link_local != [0; 4] && local == link_local);
        if !own {
            return Fast::Other;
        }
        (family::V6, ETH_HLEN + 40, l4_proto, src, dst)
    } else {
        return Fast::Other;
    };
    // Entering: the frame is addressed to the endpoint's own MAC (leaving,
    // the source MAC was checked before).
    if dir == Direction::Ingress && [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]] != ep.mac {
        return Fast::Other;
    }
    let (sport, dport, tcp_flags) = if l4_proto == proto::TCP {
        let Some(t) = ptr_at::<[u8; 20]>(ctx, l4) else {
            return Fast::Other;
        };
        // SAFETY: as above, for the 20-byte TCP header.
        let t = unsafe { &*t };
        if t[12] >> 4 < 5 {
            return Fast::Other;
        }
        (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
            t[13],
        )
    } else {
        let Some(u) = ptr_at::<[u8; 8]>(ctx, l4) else {
            return Fast::Other;
        };
        // SAFETY: as above, for the 8-byte UDP header.
        let u = unsafe { &*u };
        (
            u16::from_be_bytes([u[0], u[1]]),
            u16::from_be_bytes([u[2], u[3]]),
            0,
        )
    };
    // Entering from a managed veth whose program passed it as a live
    // connection to this container (main.rs' `from_managed_sender`): its
    // own checks above are all this endpoint adds.
    if trusted {
        return Fast::Pass;
    }
    let k = &mut pkt.ct_key;
    k.ifindex = ifindex;
    if dir == Direction::Egress {
        k.local = bytes(src);
        k.remote = bytes(dst);
        k.lport = sport;
        k.rport = dport;
    } else {
        k.local = bytes(dst);
        k.remote = bytes(src);
        k.lport = dport;
        k.rport = sport;
    }
    k.proto = l4_proto;
    k.family = fam;
    k._pad = [0; 2];
    // Read before the lookup, so that the load overlaps the lookup's work
    // instead of following it (the profile shows it slow to arrive).
    let jiffies = conntrack::jiffies();
    let Some(ct) = CONNTRACK.get_ptr(&pkt.ct_key) else {
        return Fast::Miss;
    };
    // SAFETY: a non-null pointer to a live LRU element, aligned and valid
    // for the run; CtValue is Pod and only read here (maps.rs).
    let ct = unsafe { &*ct };
    let reply = conntrack::is_reply(ct, dir);
    if ct.generation == generation && conntrack::fresh_with(ct, reply, tcp_flags, jiffies) {
        // To a container on this host: its veth's program may take this
        // verdict instead of looking the connection up again. Only packets
        // that change no state are marked, so the receiver's own entry
        // still sees every state change and a refresh per window.
        if dir == Direction::Egress && mark != 0 && ct.flags & ct_flags::LOCAL_PEER != 0 {
            ctx.set_mark(mark);
        }
        return Fast::Pass;
    }
    Fast::Other
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

// `own_words` reads the endpoint's IPv6 addresses as u32 words.
const _: () = assert!(
    core::mem::offset_of!(Endpoint, ipv6) % 4 == 0
        && core::mem::offset_of!(Endpoint, ipv6_ll) % 4 == 0
        && align_of::<Endpoint>() >= 4
);

/// The endpoint's global and link-local IPv6 addresses as 32-bit words.
#[inline(always)]
fn own_words(ep: &Endpoint) -> ([u32; 4], [u32; 4]) {
    // SAFETY: both fields lie at 4-aligned offsets of the align-4 Endpoint
    // (checked at compile time above), so they are aligned for `[u32; 4]`,
    // which has their size; any bits are valid u32s; only read.
    unsafe {
        (
            *core::ptr::addr_of!(ep.ipv6).cast::<[u32; 4]>(),
            *core::ptr::addr_of!(ep.ipv6_ll).cast::<[u32; 4]>(),
        )
    }
}
