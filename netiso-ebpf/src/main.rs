//! netiso TC programs: one on each direction of a container's host-side
//! veth. They parse, look up tables the daemon fills, and allow or drop.
//! No policy logic lives here beyond table lookups.
#![no_std]
#![no_main]
// Atomic adds on shared map values: core's AtomicU64 has no fetch_add on
// the BPF target, the intrinsic lowers to BPF_ATOMIC_ADD.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netiso_common::{
    ct_flags, defaults, endpoint_flags, identity, limits, proto, settings_flags, tc, Action,
    Counter, CtKey, CtValue, Direction, DropReason, Endpoint, FlowKey, FlowValue, FragKey,
    IdentityInfo, IpKey, PolicyKey, PolicyValue, Settings, DROP_REASONS, LAYOUT_VERSION,
};
use parse::{Packet, Parsed};

#[map(name = "NETISO_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(limits::ENDPOINTS, 0);

#[map(name = "NETISO_IDENTITIES")]
static IDENTITIES: HashMap<IpKey, IdentityInfo> = HashMap::pinned(limits::IDENTITIES, 0);

#[map(name = "NETISO_POLICY")]
static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(limits::POLICY, 0);

#[map(name = "NETISO_CONNTRACK")]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(limits::CONNTRACK, 0);

#[map(name = "NETISO_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(limits::FLOWS, 0);

#[map(name = "NETISO_FRAGS")]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::pinned(limits::FRAGS, 0);

#[map(name = "NETISO_RULE_STATS")]
static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(limits::RULES, 0);

#[map(name = "NETISO_REASON_STATS")]
static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(DROP_REASONS, 0);

#[map(name = "NETISO_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[classifier]
pub fn netiso_from_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Egress)
}

#[classifier]
pub fn netiso_to_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Ingress)
}

/// The identities and verdict of one policy evaluation.
struct Decision {
    allow: bool,
    reason: DropReason,
    rule_id: u32,
    src: u32,
    dst: u32,
}

#[inline(always)]
fn judge(ctx: &TcContext, dir: Direction) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Veths netiso does not manage pass untouched.
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }) else {
        return tc::ACT_OK;
    };
    let Some(settings) = SETTINGS.get(0) else {
        return tc::ACT_OK;
    };
    if settings.layout_version != LAYOUT_VERSION {
        return tc::ACT_OK;
    }
    let slot = (settings.active_slot & 1) as usize;
    let ep_flags = ep.flags[slot];
    let ep_id = ep.identity[slot];

    let mut flow = FlowKey {
        ifindex,
        direction: dir as u8,
        ..FlowKey::default()
    };
    if dir == Direction::Egress {
        flow.src_identity = ep_id;
    } else {
        flow.dst_identity = ep_id;
    }

    if ep_flags & endpoint_flags::FAIL_CLOSED != 0 {
        return drop(ctx, &mut flow, DropReason::FailClosed, 0);
    }

    if dir == Direction::Egress {
        match parse::src_mac(ctx) {
            Some(mac) if ep.mac != [0; 6] && mac != ep.mac => {
                return drop(ctx, &mut flow, DropReason::SpoofedMac, 0);
            }
            Some(_) => {}
            None => return drop(ctx, &mut flow, DropReason::MalformedL3, 0),
        }
    }

    let pkt = match parse::parse(ctx) {
        Ok(Parsed::Ip(p)) => p,
        Ok(Parsed::Arp) => return tc::ACT_OK,
        Ok(Parsed::Other) => {
            if settings.flags & settings_flags::DROP_NON_IP != 0 {
                return drop(ctx, &mut flow, DropReason::NonIp, 0);
            }
            return tc::ACT_OK;
        }
        Err(reason) => return drop(ctx, &mut flow, reason, 0),
    };
    flow.family = pkt.family;
    flow.saddr = pkt.saddr;
    flow.daddr = pkt.daddr;
    flow.proto = pkt.proto;
    flow.dport = pkt.policy_port;

    if dir == Direction::Egress
        && pkt.family == netiso_common::family::V4
        && ep.ipv4 != [0; 4]
        && pkt.saddr[..4] != ep.ipv4
    {
        return drop(ctx, &mut flow, DropReason::SpoofedIp, 0);
    }
    if pkt.control {
        return tc::ACT_OK;
    }

    // The remote side of the flow, whichever way the packet goes.
    let peer = if dir == Direction::Egress {
        &pkt.daddr
    } else {
        &pkt.saddr
    };
    let eval = Eval {
        ep_id,
        ep_flags,
        slot: slot as u8,
        family: pkt.family,
        proto: pkt.proto,
    };

    if pkt.later_fragment {
        // Later fragments carry no ports: they follow the verdict the first
        // fragment got, and are dropped when no first fragment passed.
        let fk = frag_key(&pkt);
        if unsafe { FRAGS.get(&fk) }.is_some() {
            return tc::ACT_OK;
        }
        return drop(ctx, &mut flow, DropReason::Fragment, 0);
    }

    let key = CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };

    // Fast path: a known connection admitted under the current policy.
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        let ct = unsafe { &mut *ct };
        if ct.generation == settings.generation {
            return tc::ACT_OK;
        }
        // The policy changed since the flow was admitted: judge it again in
        // its original direction, and cut it if it is no longer allowed. On a
        // reply, the original destination port is this packet's source port.
        let d = if ct.flags & ct_flags::REPLY != 0 {
            let port = if pkt.proto == proto::TCP || pkt.proto == proto::UDP {
                pkt.sport
            } else {
                0
            };
            eval.run(flip(dir), peer, port)
        } else {
            eval.run(dir, peer, pkt.policy_port)
        };
        if d.allow {
            ct.generation = settings.generation;
            return tc::ACT_OK;
        }
        let _ = CONNTRACK.remove(&key);
        let _ = CONNTRACK.remove(&reverse(&key));
        flow.src_identity = d.src;
        flow.dst_identity = d.dst;
        return drop(ctx, &mut flow, DropReason::Revoked, d.rule_id);
    }

    let d = eval.run(dir, peer, pkt.policy_port);
    flow.src_identity = d.src;
    flow.dst_identity = d.dst;
    count(&RULE_STATS, d.rule_id, ctx.len());
    if !d.allow {
        return drop(ctx, &mut flow, d.reason, d.rule_id);
    }
    if pkt.stateful {
        let now = unsafe { bpf_ktime_get_ns() };
        let mut v = CtValue {
            last_seen_ns: now,
            generation: settings.generation,
            flags: 0,
            rule_id: d.rule_id,
            _pad: 0,
        };
        let _ = CONNTRACK.insert(&key, &v, 0);
        v.flags = ct_flags::REPLY;
        let _ = CONNTRACK.insert(&reverse(&key), &v, 0);
    }
    if pkt.first_fragment {
        let _ = FRAGS.insert(&frag_key(&pkt), &settings.generation, 0);
    }
    tc::ACT_OK
}

#[inline(always)]
fn frag_key(p: &Packet) -> FragKey {
    FragKey {
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.frag_id,
        proto: p.proto,
        family: p.family,
    }
}

#[inline(always)]
fn flip(dir: Direction) -> Direction {
    match dir {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

#[inline(always)]
fn reverse(k: &CtKey) -> CtKey {
    CtKey {
        saddr: k.daddr,
        daddr: k.saddr,
        sport: k.dport,
        dport: k.sport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    }
}

/// What a policy evaluation needs to know about the local endpoint and
/// the packet, besides the direction and the peer.
struct Eval {
    ep_id: u32,
    ep_flags: u32,
    slot: u8,
    family: u8,
    proto: u8,
}

impl Eval {
    /// Judges a flow between the local endpoint and `peer`; `dir` says who
    /// sends: `Egress` means the endpoint sends to the peer.
    #[inline(always)]
    fn run(&self, dir: Direction, peer: &[u8; 16], port: u16) -> Decision {
        let ip_key = IpKey {
            addr: *peer,
            family: self.family,
            slot: self.slot,
            _pad: [0; 2],
        };
        let (peer_id, peer_flags) = match unsafe { IDENTITIES.get(&ip_key) } {
            Some(info) => (info.identity, info.flags),
            None => (identity::WORLD, 0),
        };
        let (src, src_flags, dst, dst_flags) = if dir == Direction::Egress {
            (self.ep_id, self.ep_flags, peer_id, peer_flags)
        } else {
            (peer_id, peer_flags, self.ep_id, self.ep_flags)
        };
        // Most to least specific; the compiler resolved deny-beats-allow
        // into each entry, so the first hit decides.
        let mut key = PolicyKey {
            src,
            dst,
            dport: port,
            proto: self.proto,
            slot: self.slot,
        };
        let mut hit = None;
        if port != 0 {
            hit = unsafe { POLICY.get(&key) };
        }
        if hit.is_none() {
            key.dport = 0;
            hit = unsafe { POLICY.get(&key) };
        }
        if hit.is_none() {
            key.proto = proto::ANY;
            hit = unsafe { POLICY.get(&key) };
        }
        if let Some(v) = hit {
            return Decision {
                allow: v.action == Action::Allow as u8,
                reason: DropReason::PolicyDeny,
                rule_id: v.rule_id,
                src,
                dst,
            };
        }
        let denied =
            src_flags & defaults::DENY_EGRESS != 0 || dst_flags & defaults::DENY_INGRESS != 0;
        Decision {
            allow: !denied,
            reason: DropReason::DefaultDeny,
            rule_id: 0,
            src,
            dst,
        }
    }
}

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, no atomics needed.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes as u64;
    }
}

/// Records a drop once: in the flow table (one row per flow and reason)
/// and in the per-reason counters.
#[inline(always)]
fn drop(ctx: &TcContext, flow: &mut FlowKey, reason: DropReason, rule_id: u32) -> i32 {
    flow.reason = reason as u8;
    let bytes = ctx.len() as u64;
    let now = unsafe { bpf_ktime_get_ns() };
    count(&REASON_STATS, reason as u32, ctx.len());
    if let Some(v) = FLOWS.get_ptr_mut(&*flow) {
        let v = unsafe { &mut *v };
        add(&mut v.packets, 1);
        add(&mut v.bytes, bytes);
        v.last_seen_ns = now;
        v.rule_id = rule_id;
    } else {
        let v = FlowValue {
            packets: 1,
            bytes,
            first_seen_ns: now,
            last_seen_ns: now,
            rule_id,
            _pad: 0,
        };
        if FLOWS.insert(&*flow, &v, BPF_NOEXIST as u64).is_err() {
            // Another CPU created the row first: add to it.
            if let Some(v) = FLOWS.get_ptr_mut(&*flow) {
                let v = unsafe { &mut *v };
                add(&mut v.packets, 1);
                add(&mut v.bytes, bytes);
            }
        }
    }
    tc::ACT_SHOT
}

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
