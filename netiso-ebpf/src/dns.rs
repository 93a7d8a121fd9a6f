//! DNS of endpoints whose containers may reach peers by name: queries
//! leaving are copied to the daemon; answers entering are copied and held
//! (dropped here, sent on by the daemon once it has learned their
//! addresses, with `DNS_REINJECT_MARK`), so that a container that connects
//! right after its answer never races the map update.
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use netiso_common::{errors, proto, Direction, DnsCopy, DNS_CAPTURE, DNS_REINJECT_MARK};

use crate::maps::{DNS, ERRORS};
use crate::parse::{ptr_at, Packet};
use crate::record::count;

/// Whether a passing packet is DNS this endpoint's container sends
/// (to port 53) or receives (from port 53), with a payload.
#[inline(always)]
fn is_dns(ctx: &TcContext, p: &Packet, dir: u8) -> bool {
    let port = if dir == Direction::Egress as u8 {
        p.dport
    } else {
        p.sport
    };
    if port != 53 || p.later_fragment {
        return false;
    }
    match p.proto {
        proto::UDP => true,
        // Only segments that carry bytes of a message: the handshake and
        // bare acknowledgements are of no interest.
        proto::TCP => tcp_payload(ctx, p),
        _ => false,
    }
}

#[inline(always)]
fn tcp_payload(ctx: &TcContext, p: &Packet) -> bool {
    let off = p.l4_off & 0x1ff;
    let Some(doff) = ptr_at::<u8>(ctx, off + 12) else {
        return false;
    };
    // SAFETY: ptr_at checked that byte 12 of the TCP header lies inside
    // the linear packet data; a byte, copied out at once.
    let hdr = ((unsafe { *doff } >> 4) as usize) * 4;
    p.l3_end > off + hdr
}

/// Copies the frame to the daemon when it is DNS (see [`is_dns`]).
/// Returns true when the packet is held (an answer entering, not one the
/// daemon sends on): the caller drops it. What cannot be copied passes,
/// counted. Not inlined: the callers' paths stay small for the verifier.
#[inline(never)]
pub fn watch(ctx: &TcContext, p: &Packet, ifindex: u32, dir: u8) -> bool {
    if !is_dns(ctx, p, dir) {
        return false;
    }
    // SAFETY: `ctx.skb.skb` is the context pointer the kernel passed to
    // this program, valid for reads for the run; one field read.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let hold = dir == Direction::Ingress as u8 && mark != DNS_REINJECT_MARK;
    if mark == DNS_REINJECT_MARK {
        return false;
    }
    let len = ctx.len() as usize;
    if len == 0 || len > DNS_CAPTURE {
        count(&ERRORS, errors::DNS_MISSED, ctx.len());
        return false;
    }
    let Some(mut entry) = DNS.reserve::<DnsCopy>(0) else {
        count(&ERRORS, errors::DNS_MISSED, ctx.len());
        return false;
    };
    // SAFETY: a BPF helper without arguments; it only reads the kernel's
    // coarse monotonic clock.
    let ts_ns = unsafe { bpf_ktime_get_coarse_ns() };
    let copy = entry.as_mut_ptr();
    // SAFETY: `copy` points at a reserved, writable ring buffer record of
    // size_of::<DnsCopy>() bytes, ours until submitted or discarded; the
    // fields are written through it without forming a reference to
    // uninitialised memory.
    unsafe {
        (*copy).ts_ns = ts_ns;
        (*copy).ifindex = ifindex;
        (*copy).len = len as u32;
        (*copy).direction = dir;
        (*copy).held = hold as u8;
        (*copy)._pad = [0; 6];
    }
    let n = (len as u32) & (DNS_CAPTURE as u32 * 2 - 1);
    if n == 0 || n as usize > DNS_CAPTURE {
        entry.discard(0);
        return false;
    }
    // SAFETY: the helper writes `n` (1..=DNS_CAPTURE) bytes into `data`,
    // which holds DNS_CAPTURE bytes of the reserved record; it reads from
    // the skb the kernel gave this program.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            0,
            core::ptr::addr_of_mut!((*copy).data) as *mut _,
            n,
        )
    };
    if rc != 0 {
        entry.discard(0);
        count(&ERRORS, errors::DNS_MISSED, ctx.len());
        return false;
    }
    entry.submit(0);
    if hold {
        count(&ERRORS, errors::DNS_HELD, ctx.len());
    }
    hold
}
