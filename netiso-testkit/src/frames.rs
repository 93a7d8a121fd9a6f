//! Hand-built Ethernet frames. Those for BPF_PROG_TEST_RUN leave checksums
//! zero (the programs never look at them); the `*_checksummed`, `ipv4_header`
//! and `ipv4_packet` builders fill them in, for frames sent through a real
//! kernel (bridge and receiver check them).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// Bytes as lowercase hex digits, no separators (reports, regression files).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn eth(src: [u8; 6], dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (no options) followed by `l4`. `frag` is the raw
/// flags+offset field (0x2000 = more fragments).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(l4);
    h
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0; 8]); // seq, ack
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// ICMP echo request (type 8) or reply (type 0).
pub fn icmp_echo(ty: u8, id: u16) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h
}

/// A TCP/IPv4 frame from `src` to `dst`.
pub fn tcp4(
    mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    eth(
        mac,
        MAC_B,
        0x0800,
        &ipv4(src, dst, 6, 1, 0, &tcp(sport, dport, flags)),
    )
}

pub fn udp4(mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    eth(
        mac,
        MAC_B,
        0x0800,
        &ipv4(src, dst, 17, 1, 0, &udp(sport, dport, b"hello")),
    )
}

/// An IPv6 header followed by `payload`, whose first header is `next`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte extension header (hop-by-hop, destination options) whose next
/// header is `next`, followed by `rest`.
pub fn ext8(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0]; // PadN option
    h.extend_from_slice(rest);
    h
}

pub fn icmpv6(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0, 0, 0, 0, 0]
}

// Checksummed packets, for frames that must survive a real kernel (the
// bridge and the receiver's IP stack check what BPF_PROG_TEST_RUN does not).

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header with `options` (padded to 4 bytes) and a valid header
/// checksum, for a payload of `payload_len` bytes; `frag` is the raw
/// flags+offset field.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    (id, frag): (u16, u16),
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let mut opts = options.to_vec();
    opts.resize(options.len().div_ceil(4) * 4, 0);
    let hlen = 20 + opts.len();
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let c = inet_checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A complete IPv4 packet (no options, not fragmented).
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, proto, ttl, (0x4e49, 0), &[], l4.len());
    p.extend_from_slice(l4);
    p
}

/// Fills in the checksum of a TCP/UDP/ICMPv6 header at `at` inside `l4`,
/// with the pseudo-header of the given addresses.
pub fn set_l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &mut [u8], at: usize) {
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let len = l4.len() as u32;
    let pseudo: Vec<u8> = if src.len() == 4 {
        [src, dst, &[0, proto], &(len as u16).to_be_bytes()].concat()
    } else {
        [src, dst, &len.to_be_bytes()[..], &[0, 0, 0, proto]].concat()
    };
    let mut c = inet_checksum(&[&pseudo, l4]);
    if c == 0 && proto == 17 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A UDP header and payload with a valid checksum for `src` -> `dst`
/// (both IPv4 or both IPv6).
pub fn udp_checksummed(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = udp(sport, dport, payload);
    set_l4_checksum(&ip_bytes(src), &ip_bytes(dst), 17, &mut u, 6);
    u
}

/// An ICMPv6 message (`ty`, `code`, then `body` after the checksum) with
/// a valid checksum for `src` -> `dst`.
pub fn icmpv6_checksummed(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    set_l4_checksum(&src.octets(), &dst.octets(), 58, &mut m, 2);
    m
}

/// An ICMP (v4) or IGMP message with its checksum filled in.
pub fn icmpv4_checksummed(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    let c = inet_checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv6 header (flow label and hop limit given) followed by `payload`.
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop_limit: u8,
    flow: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = (0x6000_0000u32 | (flow & 0x0fff_ffff))
        .to_be_bytes()
        .to_vec();
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop_limit]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

pub fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The MAC an IPv4 or IPv6 multicast address maps to.
pub fn multicast_mac(a: IpAddr) -> [u8; 6] {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [0x33, 0x33, o[12], o[13], o[14], o[15]]
        }
    }
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    let mut s = [0u8; 16];
    s[0] = 0xff;
    s[1] = 0x02;
    s[11] = 0x01;
    s[12] = 0xff;
    s[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(s)
}

/// The EUI-64 link-local address the kernel gives an interface with `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..].copy_from_slice(&mac[3..]);
    Ipv6Addr::from(a)
}

/// An ARP message for IPv4 over Ethernet (the payload after the Ethernet
/// header).
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}
