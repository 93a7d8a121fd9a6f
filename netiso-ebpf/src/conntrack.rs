//! Connection tracking, scoped per endpoint: one entry per connection per
//! endpoint (key: the veth's ifindex and the tuple from the endpoint's side),
//! with a bit saying who opened it. State made on one veth never lets a
//! packet skip another veth's policy, and both directions of a connection
//! find the same entry with one lookup.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use netiso_common::{ct_flags, ct_timeouts, proto, CtKey, CtValue, Direction};

use crate::maps::CONNTRACK;
use crate::parse::{Packet, Related, TCP_FIN, TCP_RST};

/// Writes the key of `p`'s connection as seen by the endpoint on
/// `ifindex` into `p.ct_key`. The key lives in the per-CPU scratch space,
/// not on the 512-byte stack (a lookup may take its key from map memory),
/// and is written in place, addresses as 32-bit words, each stored once
/// (left to itself the compiler copies them byte by byte or calls
/// `memmove`).
#[inline(always)]
pub fn fill_key(p: &mut Packet, ifindex: u32, dir: Direction) {
    let (s, d) = p.addr_words();
    let (local, remote, lport, rport) = if dir == Direction::Egress {
        (s, d, p.sport, p.dport)
    } else {
        (d, s, p.dport, p.sport)
    };
    let (proto, family) = (p.proto, p.family);
    let k = &mut p.ct_key;
    k.ifindex = ifindex;
    k.local = bytes(local);
    k.remote = bytes(remote);
    k.lport = lport;
    k.rport = rport;
    k.proto = proto;
    k.family = family;
    k._pad = [0; 2];
}

#[inline(always)]
fn bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// The kernel's jiffies (low 32 bits). The verifier inlines this helper
/// into one load: no call, unlike the clock.
#[inline(always)]
pub fn jiffies() -> u32 {
    // SAFETY: a BPF helper without arguments; it only reads `jiffies`.
    unsafe { bpf_jiffies64() as u32 }
}

/// The coarse monotonic clock (a helper call).
#[inline(always)]
pub fn clock() -> u64 {
    // SAFETY: a BPF helper without arguments; it only reads the kernel's
    // coarse monotonic clock.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The key of the connection an ICMP error quotes, or None when the
/// error's addresses do not fit the quoted packet: an error always goes
/// back to the quoted packet's sender, and one a container sends must be
/// about a packet that was addressed to it.
#[inline(always)]
pub fn related_key(ifindex: u32, p: &Packet, r: &Related, dir: Direction) -> Option<CtKey> {
    if p.daddr != r.saddr {
        return None;
    }
    let mut k = CtKey {
        ifindex,
        local: r.saddr,
        remote: r.daddr,
        lport: r.sport,
        rport: r.dport,
        proto: r.proto,
        family: p.family,
        _pad: [0; 2],
    };
    if dir == Direction::Egress {
        // The container reports on a packet it received.
        if p.saddr != r.daddr {
            return None;
        }
        k.local = r.daddr;
        k.remote = r.saddr;
        k.lport = r.dport;
        k.rport = r.sport;
    }
    Some(k)
}

/// Whether `dir` is the reply direction of the connection.
#[inline(always)]
pub fn is_reply(ct: &CtValue, dir: Direction) -> bool {
    (ct.flags & ct_flags::OPENED_OUT != 0) != (dir == Direction::Egress)
}

/// The direction the connection was opened in.
#[inline(always)]
pub fn opener(ct: &CtValue) -> Direction {
    if ct.flags & ct_flags::OPENED_OUT != 0 {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// The destination port of the connection's first packet (0 for ICMP).
#[inline(always)]
pub fn opened_port(ct: &CtValue, k: &CtKey) -> u16 {
    if !(k.proto == proto::TCP || k.proto == proto::UDP) {
        0
    } else if ct.flags & ct_flags::OPENED_OUT != 0 {
        k.rport
    } else {
        k.lport
    }
}

/// Whether an entry has been idle past its lifetime.
#[inline(always)]
pub fn expired(ct: &CtValue, l4: u8, now: u64) -> bool {
    now.saturating_sub(ct.last_seen_ns) > lifetime(ct.flags, l4)
}

#[inline(always)]
fn lifetime(flags: u32, l4: u8) -> u64 {
    match l4 {
        proto::TCP if flags & ct_flags::CLOSING != 0 => ct_timeouts::TCP_CLOSING_NS,
        proto::TCP if flags & ct_flags::SEEN_REPLY == 0 => ct_timeouts::TCP_OPENING_NS,
        proto::TCP => ct_timeouts::TCP_ESTABLISHED_NS,
        proto::UDP => ct_timeouts::UDP_NS,
        _ => ct_timeouts::ICMP_NS,
    }
}

/// The entry's flags once this packet is counted.
#[inline(always)]
fn next_flags(ct: &CtValue, reply: bool, p: &Packet) -> u32 {
    next_flags_of(ct, reply, p.tcp_flags)
}

#[inline(always)]
fn next_flags_of(ct: &CtValue, reply: bool, tcp_flags: u8) -> u32 {
    let mut flags = ct.flags;
    if reply {
        flags |= ct_flags::SEEN_REPLY;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    flags
}

/// Whether the entry was refreshed fewer than `FRESH_JIFFIES` ago and this
/// packet changes no state: then it cannot have expired (the window is far
/// below any lifetime) and needs no write, so the packet passes without
/// reading the clock.
#[inline(always)]
pub fn fresh(ct: &CtValue, reply: bool, p: &Packet, jiffies: u32) -> bool {
    fresh_with(ct, reply, p.tcp_flags, jiffies)
}

/// [`fresh`] for a packet's TCP flags byte (0 for UDP).
#[inline(always)]
pub fn fresh_with(ct: &CtValue, reply: bool, tcp_flags: u8, jiffies: u32) -> bool {
    ct.refreshed != 0
        && ct.flags & ct_flags::WATCHED == 0
        && jiffies.wrapping_sub(ct.refreshed) < ct_timeouts::FRESH_JIFFIES
        && next_flags_of(ct, reply, tcp_flags) == ct.flags
}

/// Keeps a live entry's idle time and TCP state current, for a packet
/// that was not `fresh`: writes are rare, at most once per
/// `FRESH_JIFFIES` and on state changes.
#[inline(always)]
pub fn track(ct: &mut CtValue, reply: bool, p: &Packet, now: u64, jiffies: u32) {
    let flags = next_flags(ct, reply, p);
    if flags != ct.flags {
        ct.flags = flags;
    }
    ct.last_seen_ns = now;
    ct.refreshed = jiffies;
}

/// Records a connection the policy just admitted. Returns false when the
/// table refused it (the packet still passes; the error is counted).
#[inline(always)]
pub fn open(
    k: &CtKey,
    dir: Direction,
    p: &Packet,
    generation: u32,
    rule_id: u32,
    extra: u32,
    now: u64,
    jiffies: u32,
) -> bool {
    // `extra`: AUDIT, WATCHED.
    let mut flags = extra;
    if dir == Direction::Egress {
        flags |= ct_flags::OPENED_OUT;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    let v = CtValue {
        last_seen_ns: now,
        generation,
        flags,
        rule_id,
        refreshed: jiffies,
    };
    CONNTRACK.insert(k, &v, 0).is_ok()
}
