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
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use netiso_common::{
    ct_flags, ct_timeouts, defaults, endpoint_flags, errors, family, identity, limits, proto,
    settings_flags, tc, Action, CidrKey, Counter, CtKey, CtValue, Direction, DropReason, Endpoint,
    Event, FlowKey, FlowValue, FragKey, IdentityInfo, IpKey, PolicyKey, PolicyValue, RateState,
    Settings, CIDR_KEY_PREFIX_BITS, DROP_REASONS, LAYOUT_VERSION,
};
use parse::{Packet, Parsed, TCP_FIN, TCP_RST};

#[map(name = "NETISO_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(limits::ENDPOINTS, 0);

#[map(name = "NETISO_IDENTITIES")]
static IDENTITIES: HashMap<IpKey, IdentityInfo> = HashMap::pinned(limits::IDENTITIES, 0);

#[map(name = "NETISO_CIDRS")]
static CIDRS: LpmTrie<CidrKey, IdentityInfo> = LpmTrie::pinned(limits::CIDRS, 0);

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

#[map(name = "NETISO_ERRORS")]
static ERRORS: PerCpuArray<Counter> = PerCpuArray::pinned(errors::COUNT, 0);

#[map(name = "NETISO_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map(name = "NETISO_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(limits::EVENTS_BYTES, 0);

#[map(name = "NETISO_EVENT_RATE")]
static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// Per-CPU scratch space: the parsed packet is too big for the 512-byte
/// BPF stack next to everything else (no two TC programs nest on one CPU).
#[map(name = "NETISO_SCRATCH")]
static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn netiso_from_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Egress)
}

#[classifier]
pub fn netiso_to_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Ingress)
}

/// The baseline for benchmarks: what a TC program costs at all.
#[classifier]
pub fn netiso_bench_empty(_ctx: TcContext) -> i32 {
    tc::ACT_OK
}

/// What is known about a packet for recording its drop, kept small so the
/// hot path does not build (and zero) a full flow key per packet.
struct Verdict {
    ifindex: u32,
    direction: u8,
    /// The scratch packet holds this packet's parsed headers.
    parsed: bool,
    src: u32,
    dst: u32,
}

/// The identities and verdict of one policy evaluation.
struct Decision {
    action: u8,
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

    // What a drop record needs; the full flow key is only built when a
    // packet is dropped (in `record`), not on every packet.
    let mut v = Verdict {
        ifindex,
        direction: dir as u8,
        parsed: false,
        src: 0,
        dst: 0,
    };
    if dir == Direction::Egress {
        v.src = ep_id;
    } else {
        v.dst = ep_id;
    }

    if ep_flags & endpoint_flags::FAIL_CLOSED != 0 {
        return drop(ctx, settings, &mut v, DropReason::FailClosed, 0);
    }

    if dir == Direction::Egress {
        match parse::src_mac(ctx) {
            Some(mac) if ep.mac != [0; 6] && mac != ep.mac => {
                return drop(ctx, settings, &mut v, DropReason::SpoofedMac, 0);
            }
            Some(_) => {}
            None => return drop(ctx, settings, &mut v, DropReason::MalformedL3, 0),
        }
    }

    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return tc::ACT_OK;
    };
    let pkt = unsafe { &mut *pkt };
    match parse::parse(ctx, pkt) {
        Ok(Parsed::Ip) => {}
        Ok(Parsed::Arp) => return tc::ACT_OK,
        Ok(Parsed::Other) => {
            if settings.flags & settings_flags::DROP_NON_IP != 0 {
                return drop(ctx, settings, &mut v, DropReason::NonIp, 0);
            }
            return tc::ACT_OK;
        }
        Err(reason) => return drop(ctx, settings, &mut v, reason, 0),
    }
    let pkt: &Packet = pkt;
    v.parsed = true;

    if dir == Direction::Egress && spoofed_source(ep, pkt) {
        return drop(ctx, settings, &mut v, DropReason::SpoofedIp, 0);
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
        cidrs: settings.flags
            & if slot == 0 {
                settings_flags::CIDRS_SLOT0
            } else {
                settings_flags::CIDRS_SLOT1
            }
            != 0,
    };

    if pkt.later_fragment {
        // Later fragments carry no ports: they follow the verdict the first
        // fragment got, and are dropped when no first fragment passed.
        let fk = frag_key(pkt);
        if unsafe { FRAGS.get(&fk) }.is_some() {
            return tc::ACT_OK;
        }
        return drop(ctx, settings, &mut v, DropReason::Fragment, 0);
    }

    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // An ICMP error about a flow we let through passes with it.
    if let Some(r) = &pkt.related {
        let key = CtKey {
            saddr: r.saddr,
            daddr: r.daddr,
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            family: pkt.family,
            _pad: [0; 2],
        };
        if let Some(ct) = unsafe { CONNTRACK.get(&key) } {
            if ct.generation == settings.generation {
                return tc::ACT_OK;
            }
        }
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

    // Fast path: a live connection admitted under the current policy.
    if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
        let ct = unsafe { &mut *ct };
        if !expired(ct, &key, pkt.proto, now) {
            if ct.generation == settings.generation {
                track(ct, &key, pkt, now);
                return pass(pkt, settings, ctx);
            }
            // The policy changed since the flow was admitted: judge it again
            // in its original direction, and cut it if it is no longer
            // allowed. On a reply, the original destination port is this
            // packet's source port.
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
            if d.action != Action::Deny as u8 {
                ct.generation = settings.generation;
                track(ct, &key, pkt, now);
                return pass(pkt, settings, ctx);
            }
            let _ = CONNTRACK.remove(&key);
            let _ = CONNTRACK.remove(&reverse(&key));
            v.src = d.src;
            v.dst = d.dst;
            return drop(ctx, settings, &mut v, DropReason::Revoked, d.rule_id);
        }
        // Idle past its lifetime: forget it and judge the packet afresh.
        let _ = CONNTRACK.remove(&key);
        let _ = CONNTRACK.remove(&reverse(&key));
        count(&ERRORS, errors::CT_EXPIRED, 0);
    }

    let d = eval.run(dir, peer, pkt.policy_port);
    v.src = d.src;
    v.dst = d.dst;
    count(&RULE_STATS, d.rule_id, ctx.len());
    if d.action == Action::Deny as u8 {
        return drop(ctx, settings, &mut v, d.reason, d.rule_id);
    }
    let audit = d.action == Action::Audit as u8;
    if audit {
        // Passes, but is recorded exactly like a drop would be.
        record(ctx, settings, &mut v, DropReason::Audit, d.rule_id);
    }
    if pkt.stateful {
        let mut v = CtValue {
            last_seen_ns: now,
            generation: settings.generation,
            flags: if audit { ct_flags::AUDIT } else { 0 },
            rule_id: d.rule_id,
            _pad: 0,
        };
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            v.flags |= ct_flags::CLOSING;
        }
        let ok = CONNTRACK.insert(&key, &v, 0).is_ok();
        v.flags |= ct_flags::REPLY;
        if !ok || CONNTRACK.insert(&reverse(&key), &v, 0).is_err() {
            count(&ERRORS, errors::CT_INSERT, ctx.len());
        }
    }
    pass(pkt, settings, ctx)
}

/// Lets a packet through. A first fragment leaves a note so that the
/// datagram's later fragments (which carry no ports) follow it.
#[inline(always)]
fn pass(pkt: &Packet, settings: &Settings, ctx: &TcContext) -> i32 {
    if pkt.first_fragment
        && FRAGS
            .insert(&frag_key(pkt), &settings.generation, 0)
            .is_err()
    {
        count(&ERRORS, errors::FRAG_INSERT, ctx.len());
    }
    tc::ACT_OK
}

/// A packet leaving a container must carry the container's own address.
/// IPv6 link-local and unspecified sources (neighbour discovery, DAD) are
/// the container's business on its own link.
#[inline(always)]
fn spoofed_source(ep: &Endpoint, pkt: &Packet) -> bool {
    if pkt.family == family::V4 {
        return ep.ipv4 != [0; 4] && pkt.saddr[..4] != ep.ipv4;
    }
    let link_local = pkt.saddr[0] == 0xfe && pkt.saddr[1] & 0xc0 == 0x80;
    let unspecified = pkt.saddr == [0; 16];
    !(link_local || unspecified || pkt.saddr == ep.ipv6)
}

/// Whether a conntrack entry has been idle past its lifetime. An entry
/// whose own direction is quiet is still alive while its twin is not.
#[inline(always)]
fn expired(ct: &CtValue, key: &CtKey, l4: u8, now: u64) -> bool {
    let limit = lifetime(ct.flags, l4);
    if now.saturating_sub(ct.last_seen_ns) <= limit {
        return false;
    }
    match unsafe { CONNTRACK.get(&reverse(key)) } {
        Some(twin) => now.saturating_sub(twin.last_seen_ns) > limit,
        None => true,
    }
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
/// the timestamp at most once a second, the state on state changes.
#[inline(always)]
fn track(ct: &mut CtValue, key: &CtKey, pkt: &Packet, now: u64) {
    let mut flags = ct.flags;
    if flags & ct_flags::REPLY != 0 {
        flags |= ct_flags::SEEN_REPLY;
    }
    if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= ct_flags::CLOSING;
    }
    if flags != ct.flags {
        ct.flags = flags;
        // Both directions share the connection's state.
        if let Some(twin) = CONNTRACK.get_ptr_mut(&reverse(key)) {
            let twin = unsafe { &mut *twin };
            twin.flags |= flags & (ct_flags::SEEN_REPLY | ct_flags::CLOSING);
            twin.last_seen_ns = now;
        }
    }
    if now.saturating_sub(ct.last_seen_ns) > ct_timeouts::REFRESH_NS {
        ct.last_seen_ns = now;
    }
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
    /// The active slot has CIDR peers (otherwise skip the LPM lookup).
    cidrs: bool,
}

impl Eval {
    /// The identity of a peer address: exact addresses first, then CIDR
    /// peers, else the world.
    #[inline(always)]
    fn peer_identity(&self, peer: &[u8; 16]) -> (u32, u32) {
        let ip_key = IpKey {
            addr: *peer,
            family: self.family,
            slot: self.slot,
            _pad: [0; 2],
        };
        if let Some(info) = unsafe { IDENTITIES.get(&ip_key) } {
            return (info.identity, info.flags);
        }
        if self.cidrs {
            let bits = if self.family == family::V4 { 32 } else { 128 };
            let key = Key::new(
                CIDR_KEY_PREFIX_BITS + bits,
                CidrKey {
                    slot: self.slot,
                    family: self.family,
                    _pad: [0; 2],
                    addr: *peer,
                },
            );
            if let Some(info) = CIDRS.get(&key) {
                return (info.identity, info.flags);
            }
        }
        (identity::WORLD, 0)
    }

    /// Judges a flow between the local endpoint and `peer`; `dir` says who
    /// sends: `Egress` means the endpoint sends to the peer.
    #[inline(always)]
    fn run(&self, dir: Direction, peer: &[u8; 16], port: u16) -> Decision {
        let (peer_id, peer_flags) = self.peer_identity(peer);
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
                // Unknown action bytes deny: never an accidental allow.
                action: match v.action {
                    1 | 3 => v.action,
                    _ => Action::Deny as u8,
                },
                reason: DropReason::PolicyDeny,
                rule_id: v.rule_id,
                src,
                dst,
            };
        }
        let denied =
            src_flags & defaults::DENY_EGRESS != 0 || dst_flags & defaults::DENY_INGRESS != 0;
        Decision {
            action: if denied {
                Action::Deny as u8
            } else {
                Action::Allow as u8
            },
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

/// Drops the packet, recording it once.
#[inline(always)]
fn drop(
    ctx: &TcContext,
    settings: &Settings,
    v: &mut Verdict,
    reason: DropReason,
    rule_id: u32,
) -> i32 {
    record(ctx, settings, v, reason, rule_id);
    tc::ACT_SHOT
}

/// Records a drop (or an audited pass): one row in the flow table per flow
/// and reason, the per-reason counter, and a rate-limited event. Not
/// inlined: it only runs on drop and audit paths, and a frame of its own
/// keeps the hot path's stack small.
#[inline(never)]
fn record(ctx: &TcContext, settings: &Settings, v: &mut Verdict, reason: DropReason, rule_id: u32) {
    let mut key = FlowKey {
        ifindex: v.ifindex,
        direction: v.direction,
        reason: reason as u8,
        src_identity: v.src,
        dst_identity: v.dst,
        ..FlowKey::default()
    };
    // Addresses and ports only once the packet was parsed (the scratch
    // space may hold an earlier packet's).
    if v.parsed {
        if let Some(p) = SCRATCH.get_ptr(0) {
            let p = unsafe { &*p };
            key.family = p.family;
            key.saddr = p.saddr;
            key.daddr = p.daddr;
            key.proto = p.proto;
            key.dport = p.policy_port;
        }
    }
    let flow = &key;
    let bytes = ctx.len() as u64;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    count(&REASON_STATS, reason as u32, ctx.len());
    if let Some(row) = FLOWS.get_ptr_mut(flow) {
        let row = unsafe { &mut *row };
        add(&mut row.packets, 1);
        add(&mut row.bytes, bytes);
        row.last_seen_ns = now;
        row.rule_id = rule_id;
    } else {
        let row = FlowValue {
            packets: 1,
            bytes,
            first_seen_ns: now,
            last_seen_ns: now,
            rule_id,
            _pad: 0,
        };
        if FLOWS.insert(flow, &row, BPF_NOEXIST as u64).is_err() {
            // Another CPU created the row first: add to it.
            match FLOWS.get_ptr_mut(flow) {
                Some(row) => {
                    let row = unsafe { &mut *row };
                    add(&mut row.packets, 1);
                    add(&mut row.bytes, bytes);
                }
                None => count(&ERRORS, errors::FLOW_INSERT, ctx.len()),
            }
        }
    }
    if settings.flags & settings_flags::DEBUG_LOG != 0 {
        debug!(
            ctx,
            "netiso: {} ifindex {} proto {} port {} rule {}",
            reason.as_str(),
            flow.ifindex,
            flow.proto,
            flow.dport,
            rule_id
        );
    }
    emit(settings, flow, ctx.len(), rule_id, now);
}

/// Sends an event unless this CPU already sent `event_rate` in the
/// current second; what is held back is counted, so a flood cannot swamp
/// user space and nobody is misled about what was missed.
#[inline(always)]
fn emit(settings: &Settings, flow: &FlowKey, len: u32, rule_id: u32, now: u64) {
    if settings.event_rate == 0 {
        return;
    }
    let Some(rate) = EVENT_RATE.get_ptr_mut(0) else {
        return;
    };
    let rate = unsafe { &mut *rate };
    if now.saturating_sub(rate.window_start_ns) >= 1_000_000_000 {
        rate.window_start_ns = now;
        rate.sent = 0;
    }
    if rate.sent >= settings.event_rate {
        rate.suppressed = rate.suppressed.wrapping_add(1);
        return;
    }
    rate.sent += 1;
    // Written in place in the ring buffer: no copy on the stack.
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                flow: *flow,
                len,
                rule_id,
                _pad: 0,
            });
            entry.submit(0);
        }
        None => count(&ERRORS, errors::EVENT_LOST, len),
    }
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
