//! Header parsing with direct packet access (bounds-checked pointers into
//! the linear skb data): about 1 ns per access against ~30 ns for
//! `bpf_skb_load_bytes`.
use aya_ebpf::programs::TcContext;
use netiso_common::{family, proto, DropReason};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

/// What the verdict logic needs to know about a packet.
pub struct Packet {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in host order; for ICMP echo the identifier stands in as a
    /// port so that request and reply map onto one connection.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Port as judged by policy (0 for ICMP).
    pub policy_port: u16,
    /// Whether this packet may open a connection-tracking entry.
    pub stateful: bool,
    /// Always passes (IPv6 neighbour discovery and MLD).
    pub control: bool,
    /// IPv4 fragment with a non-zero offset: no L4 header of its own.
    pub later_fragment: bool,
    /// First fragment of a fragmented datagram (MF set, offset 0).
    pub first_fragment: bool,
    pub frag_id: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP error (unreachable, time exceeded, parameter problem, packet
    /// too big): the quoted packet's tuple, to find the flow it belongs to.
    pub related: Option<Related>,
}

/// The tuple of the packet quoted inside an ICMP error.
pub struct Related {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

pub enum Parsed {
    /// IPv4 or IPv6: the packet was filled in.
    Ip,
    Arp,
    /// Another ethertype.
    Other,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn u16_at(ctx: &TcContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    Some(u16::from_be_bytes(unsafe { *p }))
}

/// Source MAC of the frame, or None if the frame is shorter than an
/// Ethernet header.
#[inline(always)]
pub fn src_mac(ctx: &TcContext) -> Option<[u8; 6]> {
    let p = ptr_at::<[u8; 6]>(ctx, 6)?;
    Some(unsafe { *p })
}

/// Headers we may need in the linear part: Ethernet, the longest IPv4
/// header and a TCP header.
const WANT_LINEAR: u32 = (ETH_HLEN + 60 + 20) as u32;

#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> Result<Parsed, DropReason> {
    // Headers of non-linear skbs may sit outside the direct-access window;
    // pull them in (a no-op cost for the common, already linear, case).
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let want = if ctx.len() < WANT_LINEAR {
        ctx.len()
    } else {
        WANT_LINEAR
    };
    if linear < want {
        let _ = ctx.pull_data(want);
    }
    let ethertype = u16_at(ctx, 12).ok_or(DropReason::MalformedL3)?;
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, p).map(|()| Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(ctx, p).map(|()| Parsed::Ip),
        ETH_P_ARP => Ok(Parsed::Arp),
        _ => Ok(Parsed::Other),
    }
}

/// Clears the fields a parse may leave untouched (the packet lives in a
/// per-CPU scratch map, not on the 512-byte stack).
#[inline(always)]
fn reset(p: &mut Packet, family: u8, proto: u8) {
    p.family = family;
    p.proto = proto;
    p.sport = 0;
    p.dport = 0;
    p.policy_port = 0;
    p.stateful = false;
    p.control = false;
    p.later_fragment = false;
    p.first_fragment = false;
    p.frag_id = 0;
    p.tcp_flags = 0;
    p.related = None;
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, p: &mut Packet) -> Result<(), DropReason> {
    let l3 = ETH_HLEN;
    let hdr = ptr_at::<[u8; 20]>(ctx, l3).ok_or(DropReason::MalformedL3)?;
    let hdr = unsafe { *hdr };
    let version = hdr[0] >> 4;
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if version != 4 || ihl < 20 || total_len < ihl {
        return Err(DropReason::MalformedL3);
    }
    if ctx.data() + l3 + ihl > ctx.data_end() {
        return Err(DropReason::MalformedL3);
    }
    reset(p, family::V4, hdr[9]);
    p.saddr = [0; 16];
    p.daddr = [0; 16];
    p.saddr[..4].copy_from_slice(&hdr[12..16]);
    p.daddr[..4].copy_from_slice(&hdr[16..20]);
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    p.frag_id = u16::from_be_bytes([hdr[4], hdr[5]]);
    if offset != 0 {
        p.later_fragment = true;
        return Ok(());
    }
    p.first_fragment = more;
    parse_l4(ctx, l3 + ihl, p)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, p: &mut Packet) -> Result<(), DropReason> {
    let l3 = ETH_HLEN;
    let hdr = ptr_at::<[u8; 40]>(ctx, l3).ok_or(DropReason::MalformedL3)?;
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 6 {
        return Err(DropReason::MalformedL3);
    }
    reset(p, family::V6, hdr[6]);
    p.saddr.copy_from_slice(&hdr[8..24]);
    p.daddr.copy_from_slice(&hdr[24..40]);
    // Walk extension headers to find the real L4 protocol (MLD reports,
    // for one, sit behind a hop-by-hop header). Bounded for the verifier; a
    // chain longer than that is not something containers legitimately send.
    let mut off = l3 + 40;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        i += 1;
        let len = match p.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h = ptr_at::<[u8; 2]>(ctx, off).ok_or(DropReason::MalformedL3)?;
                let h = unsafe { *h };
                p.proto = h[0];
                (h[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let h = ptr_at::<[u8; 2]>(ctx, off).ok_or(DropReason::MalformedL3)?;
                let h = unsafe { *h };
                p.proto = h[0];
                (h[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let h = ptr_at::<[u8; 8]>(ctx, off).ok_or(DropReason::MalformedL3)?;
                let h = unsafe { *h };
                p.proto = h[0];
                let frag = u16::from_be_bytes([h[2], h[3]]);
                // The low 16 bits of the 32-bit identification key the
                // fragment table, as for IPv4.
                p.frag_id = u16::from_be_bytes([h[6], h[7]]);
                if frag >> 3 != 0 {
                    p.later_fragment = true;
                    return Ok(());
                }
                p.first_fragment = frag & 1 != 0;
                8
            }
            _ => return parse_l4(ctx, off, p),
        };
        // The whole extension header must be there, not just its first bytes.
        if ctx.data() + off + len > ctx.data_end() {
            return Err(DropReason::MalformedL3);
        }
        off += len;
    }
    Err(DropReason::MalformedL3)
}

const MAX_EXT_HEADERS: u32 = 6;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_IGMP: u8 = 2;

#[inline(always)]
fn parse_l4(ctx: &TcContext, l4: usize, p: &mut Packet) -> Result<(), DropReason> {
    match p.proto {
        proto::TCP => {
            let h = ptr_at::<[u8; 20]>(ctx, l4).ok_or(DropReason::MalformedL4)?;
            let h = unsafe { *h };
            if ((h[12] >> 4) as usize) < 5 {
                return Err(DropReason::MalformedL4);
            }
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.policy_port = p.dport;
            p.stateful = true;
            p.tcp_flags = h[13];
        }
        proto::UDP => {
            let h = ptr_at::<[u8; 8]>(ctx, l4).ok_or(DropReason::MalformedL4)?;
            let h = unsafe { *h };
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.policy_port = p.dport;
            p.stateful = true;
        }
        proto::ICMP | proto::ICMPV6 => {
            let h = ptr_at::<[u8; 8]>(ctx, l4).ok_or(DropReason::MalformedL4)?;
            let h = unsafe { *h };
            let id = u16::from_be_bytes([h[4], h[5]]);
            let ty = h[0];
            let (request, reply) = if p.proto == proto::ICMP {
                (8, 0)
            } else {
                (128, 129)
            };
            if ty == request {
                p.sport = id;
                p.stateful = true;
            } else if ty == reply {
                p.dport = id;
            } else if p.proto == proto::ICMPV6 && matches!(ty, 130..=137 | 143) {
                // Neighbour discovery and MLD keep the link working.
                p.control = true;
            } else if (p.proto == proto::ICMP && matches!(ty, 3 | 11 | 12))
                || (p.proto == proto::ICMPV6 && matches!(ty, 1..=4))
            {
                parse_quoted(ctx, l4 + 8, p);
            }
        }
        // IGMP is link-local multicast control, like ARP and ND. Only over
        // IPv4: IPv6 has no IGMP (MLD is ICMPv6), so next header 2 there is
        // just an unknown protocol, judged by policy.
        IPPROTO_IGMP if p.family == family::V4 => p.control = true,
        // Other protocols carry no ports: judged by protocol alone.
        _ => {}
    }
    Ok(())
}

/// The tuple of the packet an ICMP error quotes (its IP header and the
/// first 8 bytes of its L4 header), into `p.related`; left None when it is
/// cut short: the error is then judged like any other ICMP packet.
#[inline(always)]
fn parse_quoted(ctx: &TcContext, off: usize, p: &mut Packet) {
    let fam = p.family;
    let r = p.related.insert(Related {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
    });
    if quoted(ctx, off, fam, r).is_none() {
        p.related = None;
    }
}

#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, fam: u8, r: &mut Related) -> Option<()> {
    let l4 = if fam == family::V4 {
        let h = unsafe { *ptr_at::<[u8; 20]>(ctx, off)? };
        r.proto = h[9];
        r.saddr[..4].copy_from_slice(&h[12..16]);
        r.daddr[..4].copy_from_slice(&h[16..20]);
        off + (h[0] & 0x0f) as usize * 4
    } else {
        let h = unsafe { &*ptr_at::<[u8; 40]>(ctx, off)? };
        r.proto = h[6];
        r.saddr.copy_from_slice(&h[8..24]);
        r.daddr.copy_from_slice(&h[24..40]);
        off + 40
    };
    if r.proto == proto::TCP || r.proto == proto::UDP {
        let h = unsafe { *ptr_at::<[u8; 4]>(ctx, l4)? };
        r.sport = u16::from_be_bytes([h[0], h[1]]);
        r.dport = u16::from_be_bytes([h[2], h[3]]);
    } else if r.proto == proto::ICMP || r.proto == proto::ICMPV6 {
        // A quoted echo request: its identifier is the flow's "source port".
        let h = unsafe { *ptr_at::<[u8; 8]>(ctx, l4)? };
        r.sport = u16::from_be_bytes([h[4], h[5]]);
    }
    Some(())
}
