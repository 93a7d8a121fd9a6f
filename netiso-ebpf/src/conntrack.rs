//! Connection tracking, scoped per endpoint: one entry per connection per
//! endpoint (key: the veth's ifindex and the tuple from the endpoint's side),
//! with a bit saying who opened it. State made on one veth never lets a
//! packet skip another veth's policy, and both directions of a connection
//! find the same entry with one lookup.
use netiso_common::{ct_flags, ct_timeouts, proto, CtKey, CtValue, Direction};

use crate::maps::CONNTRACK;
use crate::parse::{Packet, Related, TCP_FIN, TCP_RST};

/// The key of `p`'s connection as seen by the endpoint on `ifindex`.
#[inline(always)]
pub fn key(ifindex: u32, p: &Packet, dir: Direction) -> CtKey {
    if dir == Direction::Egress {
        CtKey {
            ifindex,
            local: p.saddr,
            remote: p.daddr,
            lport: p.sport,
            rport: p.dport,
            proto: p.proto,
            family: p.family,
            _pad: [0; 2],
        }
    } else {
        CtKey {
            ifindex,
            local: p.daddr,
            remote: p.saddr,
            lport: p.dport,
            rport: p.sport,
            proto: p.proto,
            family: p.family,
            _pad: [0; 2],
        }
    }
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

/// Keeps a live entry's idle time and TCP state current. Writes are rare:
/// the timestamp at most once a second, the flags on state changes.
#[inline(always)]
pub fn track(ct: &mut CtValue, reply: bool, p: &Packet, now: u64) {
    let mut flags = ct.flags;
    if reply {
        flags |= ct_flags::SEEN_REPLY;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    if flags != ct.flags {
        ct.flags = flags;
        ct.last_seen_ns = now;
    } else if now.saturating_sub(ct.last_seen_ns) > ct_timeouts::REFRESH_NS {
        ct.last_seen_ns = now;
    }
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
    audit: bool,
    now: u64,
) -> bool {
    let mut flags = if dir == Direction::Egress {
        ct_flags::OPENED_OUT
    } else {
        0
    };
    if audit {
        flags |= ct_flags::AUDIT;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    let v = CtValue {
        last_seen_ns: now,
        generation,
        flags,
        rule_id,
        _pad: 0,
    };
    CONNTRACK.insert(k, &v, 0).is_ok()
}
