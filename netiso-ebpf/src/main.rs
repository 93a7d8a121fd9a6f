//! netiso TC programs: one on each direction of a container's host-side
//! veth. They parse, look up tables the daemon fills, and allow or drop.
//! No policy logic lives here beyond table lookups.
//!
//! One file per concern: `parse` (headers), `control` (ARP, ND, MLD, IGMP
//! in their exact form), `conntrack` (per-endpoint state), `policy`
//! (identities and rules), `dns` (copies and holds for names), `record`
//! (drops, counters, events), `maps`.
#![no_std]
#![no_main]
// Atomic adds on shared map values: core's AtomicU64 has no fetch_add on
// the BPF target, the intrinsic lowers to BPF_ATOMIC_ADD.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics for atomic_xadd: the only atomic add that lowers to BPF_ATOMIC_ADD"
)]

mod conntrack;
mod control;
mod dns;
mod fast;
mod maps;
mod parse;
mod policy;
mod record;

use aya_ebpf::{macros::classifier, programs::TcContext};
use netiso_common::{
    ct_flags, endpoint_flags, errors, family, identity, limits, peer_flags, proto, settings_flags,
    tc, Action, Direction, DropReason, Endpoint, FragKey, Settings, LAYOUT_VERSION,
};

use control::Check;
use maps::{CONNTRACK, ENDPOINTS, ENDPOINT_ARRAY, ERRORS, FRAGS, RULE_STATS, SCRATCH, SETTINGS};
use parse::{Control, Packet, Parsed, ECHO_REPLY};
use policy::{Decision, Eval};
use record::{count, drop, record, Verdict};

#[classifier]
// The macro wraps this in the program's entry: inlined there, the whole
// program is one BPF function (no call and return per packet).
#[inline(always)]
pub fn netiso_from_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Egress)
}

#[classifier]
// The macro wraps this in the program's entry: inlined there, the whole
// program is one BPF function (no call and return per packet).
#[inline(always)]
pub fn netiso_to_container(ctx: TcContext) -> i32 {
    judge(&ctx, Direction::Ingress)
}

/// The baseline for benchmarks: what a TC program costs at all.
#[classifier]
pub fn netiso_bench_empty(_ctx: TcContext) -> i32 {
    tc::ACT_OK
}

#[inline(always)]
fn judge(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` context pointer the kernel
    // passed to this program: non-null, aligned and valid for reads for the
    // whole run (the verifier checks each field access); only read here.
    let skb = unsafe { &*ctx.skb.skb };
    // Endpoints are keyed by `NS_BASE + ifindex`: ifindexes are per
    // network namespace (see `NS_BASE`).
    let base = ns_base();
    let ifindex = base.wrapping_add(skb.ifindex);
    // Veths netiso does not manage pass untouched.
    let Some(ep) = endpoint(ifindex) else {
        return tc::PASS;
    };
    let Some(settings) = SETTINGS.get_ptr(0) else {
        return tc::PASS;
    };
    // SAFETY: a non-null pointer to the only element of an array map:
    // aligned, never freed, valid for the run. Settings is Pod and only read
    // here, so a concurrent update by the daemon leaves a valid value
    // (maps.rs).
    let settings = unsafe { &*settings };
    if settings.layout_version != LAYOUT_VERSION {
        return tc::PASS;
    }
    // Slot and generation in one load: a packet is judged by one policy
    // and stamps state with that policy's generation.
    // SAFETY: `active_slot` sits at offset 8 of the align(8) Settings, with
    // `generation` right after it (offsets pinned by netiso-common's layout
    // test): the u64 at its address lies inside `settings`, is 8-byte
    // aligned, and any bits are a valid u64.
    let word = unsafe {
        core::ptr::read_volatile(core::ptr::addr_of!(settings.active_slot) as *const u64)
    };
    let slot = (word as u32 & 1) as usize;
    let generation = (word >> 32) as u32;
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
    // A tag the kernel already took off (skb metadata) would be judged as
    // untagged traffic here and delivered tagged: drop it.
    if skb.vlan_present != 0 {
        return drop(ctx, settings, &mut v, DropReason::Vlan, 0);
    }

    if dir == Direction::Egress {
        match parse::src_mac(ctx) {
            Some(mac) if mac != ep.mac => {
                return drop(ctx, settings, &mut v, DropReason::SpoofedMac, 0);
            }
            Some(_) => {}
            None => return drop(ctx, settings, &mut v, DropReason::MalformedL3, 0),
        }
    }

    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return tc::ACT_SHOT;
    };
    // SAFETY: a non-null pointer to this CPU's slot of the per-CPU SCRATCH
    // array, aligned and valid for the run, and exclusively ours: TC
    // programs do not nest on a CPU and user space never touches SCRATCH
    // (maps.rs). It holds zeroes (a fresh map: Control::None, false and,
    // with rustc's tag layout, `related: None`) or a Packet an earlier run
    // on this CPU wrote; `parse` writes every field it later reads.
    let pkt = unsafe { &mut *pkt };
    // The established fast path (fast.rs). On a conntrack miss it leaves
    // the key it looked up in `pkt.ct_key`, the same key the full path
    // builds, which then need not look again.
    // The mark of cross-veth verdicts (0: off).
    let cross = settings.cross_mark;
    let trusted = dir == Direction::Ingress
        && cross != 0
        && skb.mark == cross
        && ep_flags & endpoint_flags::FQDN == 0
        && from_managed_sender(base, skb.ingress_ifindex);
    // Only this program marks, and only a packet of a connection it judged
    // against a container on this host: whatever else leaves a container
    // goes unmarked, whatever the fast path then says. A container's own
    // mark is not always cleared on the way here: `bpf_redirect_peer` from
    // a program in its namespace (CAP_NET_ADMIN and CAP_BPF) moves a packet
    // into the host's namespace with its mark.
    if dir == Direction::Egress && cross != 0 && skb.mark == cross {
        ctx.set_mark(0);
    }
    pkt.ct_missed = match fast::established(ctx, ep, pkt, ifindex, dir, generation, trusted, cross)
    {
        fast::Fast::Pass => return tc::PASS,
        fast::Fast::Miss => true,
        fast::Fast::Other => false,
    };
    match parse::parse(ctx, pkt) {
        Ok(Parsed::Ip) => {}
        Ok(Parsed::Arp) => {
            if dir == Direction::Ingress && !dest_mac_ok(ctx, ep, None) {
                return drop(ctx, settings, &mut v, DropReason::NotForEndpoint, 0);
            }
            return match control::arp_check(ctx, ep, dir) {
                Check::Pass => tc::PASS,
                Check::Foreign => drop(ctx, settings, &mut v, DropReason::NotForEndpoint, 0),
                Check::Bad => drop(ctx, settings, &mut v, DropReason::Control, 0),
            };
        }
        Ok(Parsed::Other) => {
            if settings.flags & settings_flags::ALLOW_NON_IP != 0 {
                return tc::PASS;
            }
            return drop(ctx, settings, &mut v, DropReason::NonIp, 0);
        }
        Err(reason) => return drop(ctx, settings, &mut v, reason, 0),
    }
    conntrack::fill_key(pkt, ifindex, dir);
    v.parsed = true;

    let eval = Eval {
        ifindex,
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

    pkt.unicast = !non_unicast(ep, pkt);
    let pkt: &Packet = pkt;
    let unicast = || is_unicast(pkt);
    // Who may send and who may receive: the endpoint's own addresses only.
    if dir == Direction::Egress {
        if spoofed_source(ep, pkt) {
            return drop(ctx, settings, &mut v, DropReason::SpoofedIp, 0);
        }
    } else if !(for_endpoint(ep, pkt, unicast()) && dest_mac_ok(ctx, ep, Some((pkt, unicast())))) {
        name_peer(&eval, pkt, unicast(), dir, &mut v);
        return drop(ctx, settings, &mut v, DropReason::NotForEndpoint, 0);
    }
    if pkt.control != Control::None {
        // Neighbour discovery is for the link: a unicast one leaving a
        // container goes to a link-local address or to a node netiso knows
        // (the host, a container). Addressed to anyone else, the host would
        // route it on: a channel out that no policy judges.
        if dir == Direction::Egress
            && pkt.control == Control::Nd
            && unicast()
            && !control::link_local(&pkt.daddr)
            && eval.known(&pkt.daddr).is_none()
        {
            name_peer(&eval, pkt, unicast(), dir, &mut v);
            return drop(ctx, settings, &mut v, DropReason::Control, 0);
        }
        let reason = match control::control_check(ctx, pkt, ep, dir) {
            Check::Pass => return tc::PASS,
            Check::Foreign => DropReason::NotForEndpoint,
            Check::Bad => DropReason::Control,
        };
        name_peer(&eval, pkt, unicast(), dir, &mut v);
        return drop(ctx, settings, &mut v, reason, 0);
    }

    if pkt.later_fragment {
        // Later fragments carry no ports: they follow the verdict this
        // endpoint gave the first fragment, and are dropped without one.
        // ... and only under the policy that judged it: after a reload the
        // port the verdict was about is unknown, so they are dropped (the
        // datagram is lost, never let through unjudged).
        // SAFETY: FRAGS values are Pod u32 (the policy generation), copied
        // out at once; an entry replaced meanwhile can at worst read as
        // another entry's value (maps.rs).
        if unsafe { FRAGS.get(&frag_key(ifindex, pkt)) }.is_some_and(|g| *g == generation) {
            return tc::PASS;
        }
        name_peer(&eval, pkt, unicast(), dir, &mut v);
        return drop(ctx, settings, &mut v, DropReason::Fragment, 0);
    }

    // An ICMP error passes only with a live connection of this endpoint,
    // and only from someone who may speak about it: the peer itself, the
    // host (the router between), or a router beyond the host; never
    // another container (that would carry its bytes across a denied pair).
    if pkt.error {
        if let Some(r) = &pkt.related {
            let sender_ok = dir == Direction::Egress
                || pkt.saddr == r.daddr
                || match eval.known(&pkt.saddr) {
                    None => true,
                    Some(id) => id == identity::HOST,
                };
            let key = if sender_ok {
                conntrack::related_key(ifindex, pkt, r, dir)
            } else {
                None
            };
            if let Some(k) = key {
                // SAFETY: CtValue is Pod and only read, in this run; an entry
                // evicted or replaced meanwhile can at worst read as another
                // entry's bytes (maps.rs).
                if let Some(ct) = unsafe { CONNTRACK.get(&k) } {
                    if ct.generation == generation
                        && !conntrack::expired(ct, k.proto, conntrack::clock())
                    {
                        return tc::PASS;
                    }
                }
            }
        }
        name_peer(&eval, pkt, unicast(), dir, &mut v);
        return drop(ctx, settings, &mut v, DropReason::IcmpUnrelated, 0);
    }

    // Fast path: a live connection admitted under the current policy.
    // SAFETY: a field of the scratch packet this run owns, written above;
    // the volatile load keeps the flag out of registers (see `ct_missed`).
    let ct_missed = unsafe { core::ptr::read_volatile(&pkt.ct_missed) };
    if pkt.tracked && unicast() && !ct_missed {
        let key = &pkt.ct_key;
        if let Some(ct) = CONNTRACK.get_ptr_mut(key) {
            // SAFETY: a non-null pointer to a live LRU element, aligned and
            // valid for the run (it is not used after the `remove` calls
            // below); CtValue is Pod. Another CPU handling the same flow may
            // update the entry at once (maps.rs): `track` and the generation
            // write are single aligned stores, so a race loses an update at
            // worst.
            let ct = unsafe { &mut *ct };
            let reply = conntrack::is_reply(ct, dir);
            // An echo request never stands in for a reply, nor the reverse.
            let fits = pkt.echo == 0 || reply == (pkt.echo == ECHO_REPLY);
            if fits {
                // Jiffies cost one load; the clock a helper call, made only
                // where a timestamp is needed (not for a fresh entry).
                let jiffies = conntrack::jiffies();
                if ct.generation == generation && conntrack::fresh(ct, reply, pkt, jiffies) {
                    return pass(ctx, ifindex, pkt, generation, false, dir);
                }
                let watched = ct.flags & ct_flags::WATCHED != 0;
                let now = conntrack::clock();
                if !conntrack::expired(ct, pkt.proto, now) {
                    if ct.generation == generation {
                        conntrack::track(ct, reply, pkt, now, jiffies);
                        return pass(ctx, ifindex, pkt, generation, watched, dir);
                    }
                    // The policy changed since the flow was admitted: judge
                    // it again as it was opened, and cut it if it is no
                    // longer allowed.
                    let opener = conntrack::opener(ct);
                    let port = conntrack::opened_port(ct, &key);
                    let (peer, port) = if opener == Direction::Egress {
                        eval.destination(&key.remote, port)
                    } else {
                        (eval.peer_identity(&key.remote), port)
                    };
                    let mut d = eval.run(opener, peer, port);
                    if opener == Direction::Ingress {
                        from_data_path(settings, key.proto, key.rport, peer.0, &mut d);
                    }
                    if opener == Direction::Egress
                        && ep_flags & endpoint_flags::FQDN != 0
                        && Eval::beyond_host(peer.0)
                    {
                        // Learned for a name: judged so again, expired or
                        // not (the connection outlives the answer's TTL).
                        eval.by_name(&key.remote, port, &mut d, 0);
                    }
                    if d.action != Action::Deny as u8 {
                        // Judged again against whoever has the address now:
                        // the mark for a container on this host follows
                        // (an address nobody has now may be a container's
                        // later, added without a new generation, and that
                        // container's program judges it itself).
                        if opener == Direction::Egress {
                            ct.flags = (ct.flags & !ct_flags::LOCAL_PEER)
                                | if peer.1 & peer_flags::LOCAL_ENDPOINT != 0 {
                                    ct_flags::LOCAL_PEER
                                } else {
                                    0
                                };
                        }
                        ct.generation = generation;
                        conntrack::track(ct, reply, pkt, now, jiffies);
                        return pass(ctx, ifindex, pkt, generation, watched, dir);
                    }
                    let _ = CONNTRACK.remove(key);
                    v.src = d.src;
                    v.dst = d.dst;
                    return drop(ctx, settings, &mut v, DropReason::Revoked, d.rule_id);
                }
                // Idle past its lifetime: forget it and judge the packet afresh.
                let _ = CONNTRACK.remove(key);
                count(&ERRORS, errors::CT_EXPIRED, 0);
            }
        }
    }

    // A new flow. Leaving a container, a broadcast or multicast goes to
    // the link (the host, and each receiving endpoint judges its own copy);
    // entering one, the sender is judged, whatever the destination says.
    let (peer, port) = if dir == Direction::Ingress {
        (eval.peer_identity(&pkt.saddr), pkt.policy_port)
    } else if unicast() {
        eval.destination(&pkt.daddr, pkt.policy_port)
    } else {
        // The host receives a broadcast or multicast too, and a port it
        // publishes relays it to the container behind it (docker-proxy
        // listens on the wildcard address): judged as reaching that
        // container, exactly as a unicast to the host's port is.
        eval.published(pkt.policy_port)
            .unwrap_or(((identity::HOST, 0), pkt.policy_port))
    };
    let mut d = eval.run(dir, peer, port);
    if dir == Direction::Ingress {
        from_data_path(settings, pkt.proto, pkt.sport, peer.0, &mut d);
    }
    if dir == Direction::Egress
        && unicast()
        && ep_flags & endpoint_flags::FQDN != 0
        && Eval::beyond_host(peer.0)
    {
        eval.by_name(&pkt.daddr, port, &mut d, conntrack::clock());
    }
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
    if ep_flags & endpoint_flags::LEARN != 0 {
        let judged = if dir == Direction::Egress {
            d.dst
        } else {
            d.src
        };
        record::learn(pkt, ifindex, dir as u8, judged, port);
    }
    if pkt.opens && unicast() {
        let key = &pkt.ct_key;
        let (now, jiffies) = (conntrack::clock(), conntrack::jiffies());
        let mut extra = if audit { ct_flags::AUDIT } else { 0 };
        if dir == Direction::Egress && peer.1 & peer_flags::LOCAL_ENDPOINT != 0 {
            extra |= ct_flags::LOCAL_PEER;
        }
        if watched_query(ep_flags, pkt, dir) {
            extra |= ct_flags::WATCHED;
        }
        if !conntrack::open(key, dir, pkt, generation, d.rule_id, extra, now, jiffies) {
            count(&ERRORS, errors::CT_INSERT, ctx.len());
        }
    }
    let watched = watched_query(ep_flags, pkt, dir);
    pass(ctx, ifindex, pkt, generation, watched, dir)
}

/// A flow into the endpoint from a data path port of something that is
/// not a container is denied (the built-in rule's verdict): its replies
/// would go to that port, and once the NAT between has forgotten the flow
/// a reply reaches a node's VXLAN socket, which puts whatever frame it
/// carries on an overlay (`Settings::data_path_ports`).
#[inline(always)]
fn from_data_path(settings: &Settings, l4: u8, sport: u16, peer: u32, d: &mut Decision) {
    if l4 == proto::UDP && !identity::is_container(peer) && settings.is_data_path_port(sport) {
        d.action = Action::Deny as u8;
        d.reason = DropReason::PolicyDeny;
        d.rule_id = settings.data_path_rule;
    }
}

/// A query of a container that resolves names: its connection's packets
/// take the full path, where they are copied (answers held). Decided where
/// it is used, not carried across the admission's branches (a value live
/// across branches doubles the verifier's states).
#[inline(always)]
fn watched_query(ep_flags: u32, pkt: &Packet, dir: Direction) -> bool {
    dir == Direction::Egress
        && ep_flags & endpoint_flags::FQDN != 0
        && pkt.policy_port == 53
        && (pkt.proto == proto::UDP || pkt.proto == proto::TCP)
}

/// The endpoint on `ifindex`: its slot in the endpoints array (an array
/// lookup the verifier inlines: no helper call, no hashing) when it is
/// there, else the endpoints hash, which holds every endpoint (larger
/// ifindexes, and a slot the daemon is rewriting: netiso-common's
/// `EndpointSlot`).
#[inline(always)]
fn endpoint(ifindex: u32) -> Option<&'static Endpoint> {
    if let Some(slot) = ENDPOINT_ARRAY.get_ptr(ifindex) {
        // SAFETY: a non-null pointer to an element of an array map (the
        // lookup checked the index): aligned, never freed, valid for the
        // run; EndpointSlot is Pod and only read. The daemon clears
        // `present` before it rewrites a slot, so a present slot's bytes
        // are whole (maps.rs).
        let slot = unsafe { &*slot };
        if slot.present == 1 {
            return Some(&slot.endpoint);
        }
    }
    // SAFETY: Endpoint is Pod and the reference is only read, in this run;
    // an entry the daemon replaces meanwhile can at worst read as another
    // entry's bytes (maps.rs).
    unsafe { ENDPOINTS.get(&ifindex) }
}

/// Whether a packet entered the host through a veth netiso manages:
/// `ingress_ifindex` is the interface the kernel received it on (a
/// container's packets: its veth; the host's own: 0; routed ones: the
/// bridge or the NIC), so that sender's program judged it.
#[inline(always)]
fn from_managed_sender(base: u32, ingress_ifindex: u32) -> bool {
    // In another namespace's instance, an ifindex that does not fit below
    // NS_SHIFT would land in another slot's ids (the daemon manages no
    // veth there with such an ifindex, so it is nobody's).
    ingress_ifindex != 0
        && (base == 0 || ingress_ifindex < 1 << limits::NS_SHIFT)
        && endpoint(base.wrapping_add(ingress_ifindex)).is_some()
}

/// What this loaded instance adds to every ifindex to make an endpoint id.
/// Ifindexes are per network namespace: the host's instance has 0, the
/// instance loaded for a Swarm overlay's namespace `k << 20`, with k at
/// least `FIRST_NS_SLOT` so that its ids start at 2^31, above every
/// ifindex (the daemon sets it at load time, `EbpfLoader::set_global`). It lives in `.rodata`,
/// a map the kernel freezes, so the verifier knows its value: with 0 the
/// add costs no branch and no state.
#[no_mangle]
static NS_BASE: u32 = 0;

#[inline(always)]
fn ns_base() -> u32 {
    // SAFETY: a plain read of a `u32` static; volatile so that the
    // compiler keeps the load (the value is set at load time, not here).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(NS_BASE)) }
}

/// Lets a packet through. A first fragment leaves a note so that the
/// datagram's later fragments (which carry no ports) follow it. A packet
/// of a watched connection (DNS a container that resolves names sent) is
/// copied to the daemon, and an answer held until the daemon sends it on;
/// nothing else is (an unsolicited packet from port 53 is not).
#[inline(always)]
fn pass(
    ctx: &TcContext,
    ifindex: u32,
    pkt: &Packet,
    generation: u32,
    watched: bool,
    dir: Direction,
) -> i32 {
    if pkt.first_fragment
        && FRAGS
            .insert(&frag_key(ifindex, pkt), &generation, 0)
            .is_err()
    {
        count(&ERRORS, errors::FRAG_INSERT, ctx.len());
    }
    if watched && dns::watch(ctx, pkt, ifindex, dir as u8) {
        return tc::ACT_SHOT;
    }
    tc::PASS
}

/// Names the other side of a packet dropped before policy, for its flow
/// row (a drop path only: one more lookup there costs nothing that
/// matters).
#[inline(always)]
fn name_peer(eval: &Eval, pkt: &Packet, unicast: bool, dir: Direction, v: &mut Verdict) {
    if dir == Direction::Ingress {
        v.src = eval.peer_identity(&pkt.saddr).0;
    } else if !unicast {
        v.dst = identity::HOST;
    } else {
        v.dst = eval.peer_identity(&pkt.daddr).0;
    }
}

/// A packet leaving a container must carry the container's own address:
/// its IPv4 (an endpoint without one sends no IPv4), its global IPv6 or
/// its link-local address, or `::` while it checks its address (DAD) or
/// reports multicast listening before it has one.
#[inline(always)]
fn spoofed_source(ep: &Endpoint, pkt: &Packet) -> bool {
    if pkt.family == family::V4 {
        return ep.ipv4 == [0; 4] || pkt.saddr[..4] != ep.ipv4;
    }
    let s = &pkt.saddr;
    if *s == [0; 16] {
        return !(pkt.control == Control::Nd && pkt.icmp_type == 135
            || pkt.control == Control::Mld && pkt.icmp_type == 143);
    }
    !control::own_v6(ep, s)
}

/// `pkt.unicast`, read from map memory each time (see parse.rs).
#[inline(always)]
fn is_unicast(pkt: &Packet) -> bool {
    // SAFETY: a field of the scratch packet this run owns, written once
    // the packet was parsed; only read.
    unsafe { core::ptr::read_volatile(&pkt.unicast) }
}

/// Broadcast or multicast: for the link, not for one endpoint.
#[inline(always)]
fn non_unicast(ep: &Endpoint, pkt: &Packet) -> bool {
    let d = &pkt.daddr;
    if pkt.family == family::V4 {
        d[0] & 0xf0 == 0xe0
            || d[..4] == [255; 4]
            || (ep.ipv4_bcast != [0; 4] && d[..4] == ep.ipv4_bcast)
    } else {
        d[0] == 0xff
    }
}

/// A packet entering a container must be addressed to it: one of its own
/// addresses, or broadcast / multicast.
#[inline(always)]
fn for_endpoint(ep: &Endpoint, pkt: &Packet, unicast: bool) -> bool {
    if !unicast {
        return true;
    }
    let d = &pkt.daddr;
    if pkt.family == family::V4 {
        ep.ipv4 != [0; 4] && d[..4] == ep.ipv4
    } else {
        control::own_v6(ep, d)
    }
}

/// The frame entering a container is addressed to it at the link layer
/// too: its own MAC for unicast (and ARP), broadcast for broadcast (and
/// ARP), the multicast MAC of the group for multicast. Anything else (an
/// unknown unicast MAC the bridge floods, a made-up multicast MAC) is not
/// for this endpoint.
#[inline(always)]
fn dest_mac_ok(ctx: &TcContext, ep: &Endpoint, ip: Option<(&Packet, bool)>) -> bool {
    let Some(d) = parse::ptr_at::<[u8; 6]>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked that the destination MAC (bytes 0..6) lies
    // inside the linear packet data; a byte array, copied out at once.
    let d = unsafe { *d };
    const BCAST: [u8; 6] = [0xff; 6];
    let Some((p, unicast)) = ip else {
        return d == ep.mac || d == BCAST;
    };
    let a = &p.daddr;
    if unicast {
        d == ep.mac
    } else if p.family == family::V6 {
        d == [0x33, 0x33, a[12], a[13], a[14], a[15]]
    } else if a[0] & 0xf0 == 0xe0 {
        d == [0x01, 0x00, 0x5e, a[1] & 0x7f, a[2], a[3]]
    } else {
        d == BCAST
    }
}

#[inline(always)]
fn frag_key(ifindex: u32, p: &Packet) -> FragKey {
    FragKey {
        ifindex,
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.frag_id,
        proto: p.proto,
        family: p.family,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
