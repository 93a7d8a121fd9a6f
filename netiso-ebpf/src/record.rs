//! Drops and their records: every drop updates exactly one flow-table row
//! and the per-reason counter, and sends a rate-limited event.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use aya_log_ebpf::debug;
use netiso_common::{
    errors, settings_flags, tc, Counter, Direction, DropReason, Event, FlowKey, FlowValue,
    LearnKey, LearnValue, Settings,
};

use crate::maps::{ERRORS, EVENTS, EVENT_RATE, FLOWS, FLOW_KEY, LEARN, REASON_STATS, SCRATCH};
use crate::parse::Packet;
use aya_ebpf::maps::PerCpuArray;

/// What is known about a packet for recording its drop, kept small so the
/// hot path does not build (and zero) a full flow key per packet.
pub struct Verdict {
    pub ifindex: u32,
    pub direction: u8,
    /// The scratch packet holds this packet's parsed headers.
    pub parsed: bool,
    pub src: u32,
    pub dst: u32,
}

#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer, no atomics needed.
        // SAFETY: a non-null pointer to this CPU's slot of a per-CPU array,
        // aligned and valid for the run; exclusively ours while the program
        // runs (TC programs do not nest on a CPU; user space only reads),
        // and Counter is Pod (maps.rs).
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes as u64;
    }
}

/// Drops the packet, recording it once.
#[inline(always)]
pub fn drop(
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
pub fn record(
    ctx: &TcContext,
    settings: &Settings,
    v: &mut Verdict,
    reason: DropReason,
    rule_id: u32,
) {
    let Some(key) = FLOW_KEY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a non-null pointer to this CPU's slot of the per-CPU
    // FLOW_KEY array, aligned and valid for the run, and exclusively ours:
    // TC programs do not nest on a CPU and user space never touches it
    // (maps.rs). Every field is written below before the key is used.
    let key = unsafe { &mut *key };
    // Addresses and ports only once the packet was parsed (the scratch
    // space may hold an earlier packet's).
    let parsed = if v.parsed {
        // SAFETY: this CPU's scratch slot, which `parse` filled with this
        // packet's headers in this run (`v.parsed`); the caller holds it
        // only as a shared `&Packet` by now, so a second shared reference,
        // only read, aliases nothing mutable (maps.rs).
        SCRATCH.get_ptr(0).map(|p| unsafe { &*p })
    } else {
        None
    };
    // Each branch writes the addresses itself: an array value chosen
    // between two would be built on the stack with `memset` calls.
    match parsed {
        Some(p) => {
            set_addrs(key, p.addr_words());
            key.dport = p.policy_port;
            key.proto = p.proto;
            key.family = p.family;
        }
        None => {
            set_addrs(key, ([0; 4], [0; 4]));
            key.dport = 0;
            key.proto = 0;
            key.family = 0;
        }
    }
    key.ifindex = v.ifindex;
    key.reason = reason as u8;
    key.direction = v.direction;
    key._pad = [0; 2];
    key.src_identity = v.src;
    key.dst_identity = v.dst;
    let flow: &FlowKey = key;
    let bytes = ctx.len() as u64;
    // SAFETY: a BPF helper without arguments; it only reads the kernel's
    // coarse monotonic clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    count(&REASON_STATS, reason as u32, ctx.len());
    if let Some(row) = FLOWS.get_ptr_mut(flow) {
        // SAFETY: a non-null pointer to a live LRU element, aligned and valid
        // for the run; FlowValue is Pod. Another CPU may update the same row
        // at once (maps.rs): the counters use atomic adds, and the other two
        // fields are single aligned stores, so a race loses one of two
        // timestamps or rule ids at worst.
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
                    // SAFETY: as above: a live LRU element, valid for the
                    // run, and only its counters are touched, with atomic
                    // adds, so a racing CPU's update is not lost.
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
    // SAFETY: a non-null pointer to this CPU's slot of the per-CPU
    // EVENT_RATE array, aligned and valid for the run; exclusively ours while
    // the program runs (TC programs do not nest on a CPU; user space only
    // reads it), and RateState is Pod (maps.rs).
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

/// Learn mode: notes a new flow the endpoint let through, one row per
/// endpoint, direction, peer, protocol and port (the daemon drains the
/// table every few seconds). Only a flow's first packet gets here, and only
/// on endpoints in learn mode; a full table is counted, never a reason to
/// change the verdict. Not inlined: the hot path does not carry it.
#[inline(never)]
pub fn learn(p: &Packet, ifindex: u32, dir: u8, judged_identity: u32, judged_port: u16) {
    let key = LearnKey {
        ifindex,
        peer: if dir == Direction::Egress as u8 {
            p.daddr
        } else {
            p.saddr
        },
        port: p.policy_port,
        proto: p.proto,
        family: p.family,
        direction: dir,
        _pad: [0; 3],
    };
    // SAFETY: a BPF helper without arguments; it only reads the kernel's
    // coarse monotonic clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(row) = LEARN.get_ptr_mut(&key) {
        // SAFETY: a non-null pointer to a live hash element, aligned and
        // valid for the run; LearnValue is Pod. Another CPU may update the
        // same row at once (maps.rs): the count is an atomic add, the rest
        // single aligned stores.
        let row = unsafe { &mut *row };
        add(&mut row.flows, 1);
        row.last_seen_ns = now;
        row.judged_identity = judged_identity;
        row.judged_port = judged_port;
        return;
    }
    let row = LearnValue {
        flows: 1,
        first_seen_ns: now,
        last_seen_ns: now,
        judged_identity,
        judged_port,
        _pad: 0,
    };
    if LEARN.insert(&key, &row, BPF_NOEXIST as u64).is_err() {
        match LEARN.get_ptr_mut(&key) {
            // SAFETY: as above; another CPU created the row first.
            Some(row) => add(unsafe { &mut (*row).flows }, 1),
            None => count(&ERRORS, errors::LEARN_FULL, 0),
        }
    }
}

/// The key's addresses as eight aligned 32-bit stores (volatile, so the
/// compiler cannot merge them into a `memset` or `memcpy` call).
#[inline(always)]
fn set_addrs(key: &mut FlowKey, (s, d): ([u32; 4], [u32; 4])) {
    let sp = core::ptr::addr_of_mut!(key.saddr).cast::<u32>();
    let dp = core::ptr::addr_of_mut!(key.daddr).cast::<u32>();
    for i in 0..4 {
        // SAFETY: `saddr` and `daddr` lie at offsets 0 and 16 of the
        // align-4 FlowKey (checked at compile time below) and are 16 bytes
        // long: word `i` < 4 of each is aligned and inside its field; any
        // bits are valid bytes; `key` is an exclusive reference.
        unsafe {
            core::ptr::write_volatile(sp.add(i), s[i]);
            core::ptr::write_volatile(dp.add(i), d[i]);
        }
    }
}

const _: () = assert!(
    core::mem::offset_of!(FlowKey, saddr) % 4 == 0
        && core::mem::offset_of!(FlowKey, daddr) % 4 == 0
        && align_of::<FlowKey>() >= 4
);

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: `counter` comes from a reference, so the pointer is non-null,
    // 8-byte aligned and valid for reads and writes; the atomic add is what
    // keeps concurrent adds from other CPUs to the same shared value intact.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}
