//! The reference for frames judged on an endpoint that may talk to nobody
//! (both group defaults deny, no rule names it): which frames the design
//! still lets through, and frame templates to mutate. Shared by the random
//! frame test (`tests/random_frames.rs`) and the packet fuzzer
//! (`fuzz/fuzz_targets/packet.rs`, which includes this file by path, so it
//! only uses `super::frames` and std).
use std::net::{Ipv4Addr, Ipv6Addr};

use super::frames::{eth, ext8, icmp_echo, icmpv6, ipv4, ipv6, tcp, udp, MAC_A, MAC_B, SYN};

/// The endpoint's own addresses (A) and a peer's (B).
pub const A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// One frame of every kind the parser distinguishes, from A to B.
pub fn templates() -> Vec<Vec<u8>> {
    let v4 = |proto, l4: &[u8]| eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, proto, 7, 0, l4));
    let v6 = |next, l4: &[u8]| eth(MAC_A, MAC_B, 0x86dd, &ipv6(A6, B6, next, l4));
    vec![
        v4(6, &tcp(1000, 80, SYN)),
        v4(17, &udp(1000, 53, b"payload")),
        v4(1, &icmp_echo(8, 1)),
        v4(2, &[0x16, 0, 0, 0, 224, 0, 0, 22]),
        eth(
            MAC_A,
            MAC_B,
            0x0800,
            &ipv4(A, B, 17, 9, 0x2000, &udp(1, 2, &[0; 24])),
        ),
        eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, 17, 9, 3, &[0; 24])),
        v6(6, &tcp(1000, 80, SYN)),
        v6(17, &udp(1000, 53, b"payload")),
        v6(58, &icmpv6(135)),
        v6(0, &ext8(58, &icmpv6(143))),
        v6(0, &ext8(60, &ext8(6, &tcp(1, 2, SYN)))),
        v6(44, &[6, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2]),
        eth(MAC_A, [0xff; 6], 0x0806, &[0; 28]),
        eth(MAC_A, MAC_B, 0x8100, &[0, 1, 0x08, 0, 0x45, 0, 0, 20]),
        // An ICMP error quoting a TCP packet (follows a flow, if one passed).
        v4(
            1,
            &[
                &[3u8, 3, 0, 0, 0, 0, 0, 0][..],
                &ipv4(B, A, 6, 1, 0, &tcp(80, 1000, SYN))[..28],
            ]
            .concat(),
        ),
    ]
}

/// What the design lets through on an endpoint that may talk to nobody:
/// ARP, other non-IP ethertypes unless `drop_non_ip`, IGMP (over IPv4),
/// and IPv6 neighbour discovery / MLD (behind up to six extension
/// headers). Everything else must be dropped. Frames shorter than an
/// Ethernet header never pass.
pub fn may_pass(f: &[u8], drop_non_ip: bool) -> bool {
    if f.len() < 14 {
        return false;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    match ethertype {
        0x0806 => true,
        0x0800 => f.len() >= 34 && f[14] >> 4 == 4 && f[14] & 0x0f >= 5 && f[23] == 2,
        0x86dd => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return false;
            }
            let (mut next, mut off) = (f[20], 54usize);
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 if f.len() >= off + 2 => {
                        next = f[off];
                        off += (f[off + 1] as usize + 1) * 8;
                    }
                    51 if f.len() >= off + 2 => {
                        next = f[off];
                        off += (f[off + 1] as usize + 2) * 4;
                    }
                    44 if f.len() >= off + 8 => {
                        next = f[off];
                        off += 8;
                    }
                    _ => break,
                }
            }
            next == 58 && f.len() >= off + 8 && matches!(f[off], 130..=137 | 143)
        }
        _ => !drop_non_ip,
    }
}
