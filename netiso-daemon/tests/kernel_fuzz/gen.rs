//! Frame generation for the kernel fuzzer: a deterministic generator,
//! the marker tag every frame carries, templates of every kind of frame a
//! hostile container can send, mutations, and length/checksum fix-ups.
use std::net::{Ipv4Addr, Ipv6Addr};

pub use netiso_testkit::frames::hex;
pub use netiso_testkit::mutate::Rng;

// ---------------------------------------------------------------------------
// The marker tag.

/// Replaces the run's marker in regression files (`kfuzzMRK`; sequence
/// number 0, then the check and the checksum fix).
pub const PLACEHOLDER_MARK: [u8; 8] = *b"kfuzzMRK";
/// Marker (8), sequence number (4), check (2), checksum fix (2).
pub const TAG_LEN: usize = 16;

/// The one's-complement sum every tag has (that of the marker
/// placeholder), so that swapping one tag for another, at any offset,
/// keeps every IP/L4 checksum of the frame valid.
fn tag_sum() -> u32 {
    sum16(&PLACEHOLDER_MARK, 0)
}

/// Binds the sequence number to the marker, so that a tag a mutation
/// damaged is not read as another frame's.
fn tag_check(marker: &[u8; 8], seq: u32) -> [u8; 2] {
    let mut z = u64::from_be_bytes(*marker) ^ (seq as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 29;
    (z as u16).to_be_bytes()
}

/// A tag: the run's 8-byte marker, the frame's sequence number, a check
/// and two bytes that bring the tag's one's-complement sum to a constant.
pub fn tag(marker: &[u8; 8], seq: u32) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t[..8].copy_from_slice(marker);
    t[8..12].copy_from_slice(&seq.to_be_bytes());
    t[12..14].copy_from_slice(&tag_check(marker, seq));
    let s = fold(sum16(&t[..14], 0)) as u32;
    let fix = fold(tag_sum() + (0xffff - s));
    t[14..].copy_from_slice(&fix.to_be_bytes());
    t
}

/// The placeholder tag written to regression files.
pub fn placeholder() -> [u8; TAG_LEN] {
    tag(&PLACEHOLDER_MARK, 0)
}

/// The marker's first six bytes: what a tagless frame carries in a
/// six-byte field (a destination MAC).
pub fn short_mark(marker: &[u8; 8]) -> [u8; 6] {
    marker[..6].try_into().unwrap()
}

/// The first word of an IPv6 header whose traffic class and flow label
/// (28 bits the sender chooses freely) come from the marker.
pub fn flow_word(marker: &[u8; 8]) -> [u8; 4] {
    [
        0x60 | (marker[6] >> 4),
        (marker[6] << 4) | (marker[7] & 0x0f),
        marker[4],
        marker[5],
    ]
}

/// Whether `data` is an IPv6 frame whose first header word is the
/// marker's [`flow_word`].
pub fn has_flow_word(data: &[u8], marker: &[u8; 8]) -> bool {
    data.len() >= 18 && data[12..14] == [0x86, 0xdd] && data[14..18] == flow_word(marker)
}

/// Replaces the short marks and flow words of `from` by those of `to`
/// (regression files hold the placeholder's).
pub fn remark(f: &mut [u8], from: &[u8; 8], to: &[u8; 8]) {
    let (sf, st) = (short_mark(from), short_mark(to));
    let mut at = 0;
    while let Some(i) = find(&f[at..], &sf) {
        let j = at + i;
        // Not the start of a full marker (tags are handled by `retag`).
        if f.get(j..j + 8) != Some(&from[..]) {
            f[j..j + 6].copy_from_slice(&st);
        }
        at = j + 6;
    }
    if has_flow_word(f, from) {
        f[14..18].copy_from_slice(&flow_word(to));
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The sequence number of the first intact tag in `data` (a mutation may
/// have damaged an earlier one, then a fresh tag was appended).
pub fn read_tag(data: &[u8], marker: &[u8; 8]) -> Option<u32> {
    let mut from = 0;
    while let Some(i) = find(&data[from..], marker) {
        let at = from + i;
        if at + TAG_LEN > data.len() {
            return None;
        }
        let t = &data[at..at + TAG_LEN];
        let seq = u32::from_be_bytes(t[8..12].try_into().unwrap());
        if t[12..14] == tag_check(marker, seq) && fold(sum16(t, 0)) == fold(tag_sum()) {
            return Some(seq);
        }
        from = at + 1;
    }
    None
}

/// Every tag (marker at the start) in `f` replaced by `with(seq)`.
pub fn retag(f: &mut [u8], marker: &[u8; 8], with: impl Fn(u32) -> [u8; TAG_LEN]) {
    let mut from = 0;
    while let Some(i) = find(&f[from..], marker) {
        let at = from + i;
        if at + TAG_LEN > f.len() {
            break;
        }
        let seq = u32::from_be_bytes(f[at + 8..at + 12].try_into().unwrap());
        f[at..at + TAG_LEN].copy_from_slice(&with(seq));
        from = at + TAG_LEN;
    }
}

// ---------------------------------------------------------------------------
// Checksums and fix-ups.

pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u32) << 8;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// Offset of the (innermost) ethertype after up to four VLAN tags.
pub fn ethertype_at(f: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..5 {
        if f.len() < at + 2 {
            return None;
        }
        if VLAN_TPIDS.contains(&be16(f, at)) {
            at += 4;
        } else {
            return Some(at);
        }
    }
    (f.len() >= at + 2).then_some(at)
}

/// Sets the IP length fields (`lengths`) and the IPv4 header and L4
/// checksums (`sums`) to match the frame. Leaves what it cannot parse.
pub fn fix(f: &mut [u8], lengths: bool, sums: bool) {
    let Some(et) = ethertype_at(f) else { return };
    let l3 = et + 2;
    match be16(f, et) {
        0x0800 => fix4(f, l3, lengths, sums),
        0x86dd => fix6(f, l3, lengths, sums),
        _ => {}
    }
}

fn fix4(f: &mut [u8], l3: usize, lengths: bool, sums: bool) {
    if f.len() < l3 + 20 || f[l3] >> 4 != 4 {
        return;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    if ihl < 20 || f.len() < l3 + ihl {
        return;
    }
    if lengths {
        put16(f, l3 + 2, (f.len() - l3).min(0xffff) as u16);
    }
    if sums {
        put16(f, l3 + 10, 0);
        let c = !fold(sum16(&f[l3..l3 + ihl], 0));
        put16(f, l3 + 10, c);
    }
    let end = (l3 + be16(f, l3 + 2) as usize).min(f.len());
    let frag = be16(f, l3 + 6);
    if frag & 0x3fff != 0 || end < l3 + ihl {
        return; // a fragment: its L4 checksum covers bytes it does not hold
    }
    let proto = f[l3 + 9];
    let mut pseudo = sum16(&f[l3 + 12..l3 + 20], 0);
    pseudo = sum16(&[0, proto], pseudo);
    pseudo = sum16(&((end - l3 - ihl) as u16).to_be_bytes(), pseudo);
    let with_pseudo = matches!(proto, 6 | 17);
    fix_l4(
        f,
        l3 + ihl,
        end,
        proto,
        with_pseudo.then_some(pseudo),
        lengths,
        sums,
    );
}

fn fix6(f: &mut [u8], l3: usize, lengths: bool, sums: bool) {
    if f.len() < l3 + 40 || f[l3] >> 4 != 6 {
        return;
    }
    if lengths {
        put16(f, l3 + 4, (f.len() - l3 - 40).min(0xffff) as u16);
    }
    let end = (l3 + 40 + be16(f, l3 + 4) as usize).min(f.len());
    let (mut next, mut off) = (f[l3 + 6], l3 + 40);
    for _ in 0..8 {
        let len = match next {
            0 | 43 | 60 if off + 2 <= end => (f[off + 1] as usize + 1) * 8,
            51 if off + 2 <= end => (f[off + 1] as usize + 2) * 4,
            44 if off + 8 <= end => {
                if be16(f, off + 2) != 0 {
                    return; // a real fragment
                }
                8
            }
            _ => break,
        };
        next = f[off];
        off += len;
    }
    if off > end {
        return;
    }
    let mut pseudo = sum16(&f[l3 + 8..l3 + 40], 0);
    pseudo = sum16(&((end - off) as u32).to_be_bytes(), pseudo);
    pseudo = sum16(&[0, 0, 0, next], pseudo);
    fix_l4(f, off, end, next, Some(pseudo), lengths, sums);
}

fn fix_l4(
    f: &mut [u8],
    l4: usize,
    end: usize,
    proto: u8,
    pseudo: Option<u32>,
    lengths: bool,
    sums: bool,
) {
    let at = match proto {
        6 => 16,
        17 => 6,
        1 | 2 | 58 => 2,
        _ => return,
    };
    if end < l4 + at + 2 {
        return;
    }
    if proto == 17 && lengths {
        put16(f, l4 + 4, (end - l4) as u16);
    }
    if !sums {
        return;
    }
    put16(f, l4 + at, 0);
    let mut c = !fold(sum16(&f[l4..end], pseudo.unwrap_or(0)));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    put16(f, l4 + at, c);
}

// ---------------------------------------------------------------------------
// Addresses.

/// The address plan of the test topology and the run's marker.
#[derive(Clone, Debug)]
pub struct Net {
    pub a_mac: [u8; 6],
    pub v_mac: [u8; 6],
    pub h_mac: [u8; 6],
    pub a4: Ipv4Addr,
    pub v4: Ipv4Addr,
    pub h4: Ipv4Addr,
    pub bcast4: Ipv4Addr,
    pub a6: Ipv6Addr,
    pub v6: Ipv6Addr,
    pub a_ll: Ipv6Addr,
    pub v_ll: Ipv6Addr,
    pub h_ll: Ipv6Addr,
    pub marker: [u8; 8],
}

fn mcast_mac4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

fn mcast_mac6(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn solicited(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// UDP ports the victim listens on (wildcard sockets).
pub const PORTS: [u16; 3] = [5555, 9, 7777];
/// Groups the victim joins.
pub const GROUP4: Ipv4Addr = Ipv4Addr::new(239, 7, 7, 7);
pub const GROUP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x7777);
/// "The world": an address of the reserved benchmarking block, which
/// lives nowhere (the test's namespaces have no route out).
pub const WORLD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
pub const WORLD6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x99);
const UNKNOWN_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x42];

impl Net {
    pub fn tag(&self, seq: u32) -> [u8; TAG_LEN] {
        tag(&self.marker, seq)
    }

    /// Source MAC: the attacker's own, now and then someone else's.
    fn src_mac(&self, r: &Rng) -> [u8; 6] {
        if r.chance(1, 25) {
            r.pick(&[self.v_mac, self.h_mac, UNKNOWN_MAC, [0; 6], [0xff; 6]])
        } else {
            self.a_mac
        }
    }

    fn src4(&self, r: &Rng) -> Ipv4Addr {
        if r.chance(1, 20) {
            r.pick(&[self.v4, self.h4, Ipv4Addr::UNSPECIFIED, WORLD4, self.bcast4])
        } else {
            self.a4
        }
    }

    fn src6(&self, r: &Rng) -> Ipv6Addr {
        match r.below(20) {
            0 => r.pick(&[self.v6, self.v_ll, self.h_ll, WORLD6]),
            1 => Ipv6Addr::UNSPECIFIED,
            2..=7 => self.a_ll,
            _ => self.a6,
        }
    }

    /// Where an IPv4 packet goes: (destination MAC, destination address).
    fn dst4(&self, r: &Rng) -> ([u8; 6], Ipv4Addr) {
        match r.below(20) {
            0..=6 => (self.v_mac, self.v4),
            7 => ([0xff; 6], Ipv4Addr::BROADCAST),
            8 => ([0xff; 6], self.bcast4),
            9 => {
                let g = Ipv4Addr::new(224, 0, 0, 1);
                (mcast_mac4(g), g)
            }
            10 => (mcast_mac4(GROUP4), GROUP4),
            11 => (self.v_mac, self.h4),
            12 => (self.v_mac, WORLD4),
            13 => (UNKNOWN_MAC, self.v4),
            14 => ([0xff; 6], self.v4),
            15 => (mcast_mac4(GROUP4), self.v4),
            16 => (self.h_mac, self.h4),
            17 => (self.v_mac, Ipv4Addr::BROADCAST),
            18 => (self.v_mac, GROUP4),
            _ => (self.v_mac, self.a4),
        }
    }

    fn dst6(&self, r: &Rng) -> ([u8; 6], Ipv6Addr) {
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        match r.below(20) {
            0..=4 => (self.v_mac, self.v6),
            5..=7 => (self.v_mac, self.v_ll),
            8 => (mcast_mac6(all), all),
            9 => (mcast_mac6(GROUP6), GROUP6),
            10 => {
                let s = solicited(self.v6);
                (mcast_mac6(s), s)
            }
            11 => (self.v_mac, self.h_ll),
            12 => (self.v_mac, WORLD6),
            13 => (UNKNOWN_MAC, self.v6),
            14 => ([0xff; 6], self.v_ll),
            15 => (mcast_mac6(all), self.v6),
            16 => (self.h_mac, self.h_ll),
            17 => (self.v_mac, all),
            _ => (UNKNOWN_MAC, self.v_ll),
        }
    }
}

// ---------------------------------------------------------------------------
// Header builders.

/// [`frames::eth`](netiso_testkit::frames::eth) with the destination first,
/// as on the wire.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    netiso_testkit::frames::eth(src, dst, ethertype, payload)
}

/// IPv4 with `opts` (padded to a multiple of 4); lengths and checksums are
/// set by [`fix`].
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per IPv4 header field the generator varies"
)]
pub fn ip4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    id: u16,
    frag: u16,
    opts: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    let mut o = opts.to_vec();
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let ihl = (20 + o.len()) / 4;
    let mut h = vec![0x40 | ihl as u8, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&o);
    h.extend_from_slice(l4);
    h
}

pub fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0, 0, 0, next, hop];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 extension header of `8 * units` bytes (hop-by-hop, routing,
/// destination options) with padding options.
fn ext(next: u8, units: usize, rest: &[u8]) -> Vec<u8> {
    let len = 8 * units.max(1);
    let mut h = vec![next, (len / 8 - 1) as u8, 1, (len - 4) as u8];
    h.resize(len, 0);
    h.extend_from_slice(rest);
    h
}

/// Hop-by-hop with the router-alert option (as MLD needs).
fn hbh_router_alert(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 5, 2, 0, 0, 1, 0];
    h.extend_from_slice(rest);
    h
}

// ---------------------------------------------------------------------------
// Templates.

/// Every template, by name (the name classifies crossings in reports).
pub const TEMPLATES: &[&str] = &[
    "udp4",
    "tcp4",
    "icmp4-echo",
    "icmp4-error",
    "igmp",
    "ipv4-proto58",
    "ipv4-other-proto",
    "ipv4-options",
    "frag4",
    "udp6",
    "tcp6",
    "icmp6-echo",
    "icmp6-error",
    "nd",
    "mld",
    "ext6",
    "frag6",
    "arp",
    "vlan",
    "unknown-ethertype",
    "llc",
    "l3-mismatch",
    "state-pair",
    "raw",
];

/// A generated input: one or more frames sent back to back (only the last
/// is mutated), the template's name and what was done to it.
pub struct Input {
    pub template: &'static str,
    pub notes: Vec<String>,
    pub frames: Vec<Vec<u8>>,
    /// Strict link control with no room for a tag: it carries the marker
    /// in a header field instead (see [`covert`]).
    pub tagless: bool,
    /// A `virtio_net_hdr` to send the last frame with (GSO, checksum
    /// offload): see [`vnet_header`].
    pub vnet: Option<[u8; 10]>,
}

/// Payload holding the tag, with some random bytes around it.
fn payload(r: &Rng, tag: &[u8; TAG_LEN]) -> Vec<u8> {
    let mut p = r.bytes(r.below(3) * r.below(9));
    p.extend_from_slice(tag);
    let n = r.below(24);
    p.extend(r.bytes(n));
    p
}

fn l4_v4(r: &Rng, n: &Net, tag: &[u8; TAG_LEN], proto: u8, dport: u16) -> Vec<u8> {
    let pl = payload(r, tag);
    match proto {
        6 => tcp(
            r.u16() | 1024,
            dport,
            r.pick(&[0x02, 0x12, 0x10, 0x18, 0x04, 0x11, 0x00, 0x29]),
            &pl,
        ),
        1 => {
            let mut h = vec![r.pick(&[8, 0, 13, 17]), 0, 0, 0];
            h.extend_from_slice(&r.u16().to_be_bytes());
            h.extend_from_slice(&[0, 1]);
            h.extend_from_slice(&pl);
            h
        }
        _ => {
            let _ = n;
            udp(r.u16() | 1024, dport, &pl)
        }
    }
}

fn dport(r: &Rng) -> u16 {
    if r.chance(1, 8) {
        r.u16()
    } else {
        r.pick(&PORTS)
    }
}

fn v4_frame(r: &Rng, n: &Net, proto: u8, l4: &[u8]) -> Vec<u8> {
    let (dmac, dst) = n.dst4(r);
    let ttl = r.pick(&[64, 64, 1, 255]);
    eth(
        dmac,
        n.src_mac(r),
        0x0800,
        &ip4(n.src4(r), dst, proto, ttl, r.u16(), 0, &[], l4),
    )
}

fn v6_frame(r: &Rng, n: &Net, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let (dmac, dst) = n.dst6(r);
    eth(
        dmac,
        n.src_mac(r),
        0x86dd,
        &ip6(n.src6(r), dst, next, hop, payload),
    )
}

fn icmp6(r: &Rng, ty: u8, body: &[u8], tag: &[u8; TAG_LEN]) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(body);
    h.extend_from_slice(&payload(r, tag));
    h
}

/// A quoted packet for an ICMP error: as if the victim had sent it to the
/// attacker (or the other way round).
fn quoted4(r: &Rng, n: &Net) -> Vec<u8> {
    let (s, d) = if r.chance(1, 2) {
        (n.v4, n.a4)
    } else {
        (n.a4, n.v4)
    };
    let proto = r.pick(&[17, 6, 1]);
    let l4 = match proto {
        1 => vec![8, 0, 0, 0, 0, 7, 0, 1],
        _ => {
            let mut v = r.pick(&PORTS).to_be_bytes().to_vec();
            v.extend_from_slice(&r.u16().to_be_bytes());
            v.extend_from_slice(&[0, 8, 0, 0]);
            v
        }
    };
    let mut q = ip4(s, d, proto, 64, r.u16(), 0, &[], &l4);
    let len = q.len() as u16;
    q[2..4].copy_from_slice(&len.to_be_bytes());
    q
}

fn quoted6(r: &Rng, n: &Net) -> Vec<u8> {
    let (s, d) = if r.chance(1, 2) {
        (n.v6, n.a6)
    } else {
        (n.a6, n.v6)
    };
    let mut l4 = r.pick(&PORTS).to_be_bytes().to_vec();
    l4.extend_from_slice(&r.u16().to_be_bytes());
    l4.extend_from_slice(&[0, 8, 0, 0]);
    let mut q = ip6(s, d, 17, 64, &l4);
    q[4..6].copy_from_slice(&8u16.to_be_bytes());
    q
}

fn nd_options(r: &Rng, n: &Net, ty: u8) -> Vec<u8> {
    let mut o = Vec::new();
    if r.chance(2, 3) {
        o.push(if ty == 136 { 2 } else { 1 });
        o.push(1);
        o.extend_from_slice(&n.a_mac);
    }
    if r.chance(1, 3) {
        o.extend_from_slice(&[14, 1]);
        o.extend(r.bytes(6));
    }
    if r.chance(1, 6) {
        // A prefix information / MTU / unknown option.
        let t = r.pick(&[3, 5, 25, 31, 0xfe]);
        let units = 1 + r.below(3);
        o.push(t);
        o.push(units as u8);
        o.extend(r.bytes(units * 8 - 2));
    }
    o
}

/// Where the tag goes in a control message: inside (an option or the
/// body, counted in the IP length), or as bytes after the IP packet.
enum TagAt {
    Inside,
    Trailer,
}

fn template(r: &Rng, n: &Net, seq: u32) -> Input {
    let tg = n.tag(seq);
    let name = TEMPLATES[r.below(TEMPLATES.len())];
    let mut notes = Vec::new();
    let mut frames = Vec::new();
    let mut trailer = false;
    let f = match name {
        "udp4" => {
            let l4 = l4_v4(r, n, &tg, 17, dport(r));
            v4_frame(r, n, 17, &l4)
        }
        "tcp4" => {
            let l4 = l4_v4(r, n, &tg, 6, r.pick(&[80, 5555, 22]));
            v4_frame(r, n, 6, &l4)
        }
        "icmp4-echo" => {
            let l4 = l4_v4(r, n, &tg, 1, 0);
            v4_frame(r, n, 1, &l4)
        }
        "icmp4-error" => {
            let (ty, code) = r.pick(&[(3, 3), (3, 1), (3, 4), (11, 0), (12, 0), (5, 1), (4, 0)]);
            let mut l4 = vec![ty, code, 0, 0, 0, 0, 0, 0];
            if ty == 3 && code == 4 {
                l4[6..8].copy_from_slice(&1280u16.to_be_bytes());
            }
            l4.extend(quoted4(r, n));
            l4.extend(payload(r, &tg));
            v4_frame(r, n, 1, &l4)
        }
        "igmp" => {
            let ty = r.pick(&[0x11, 0x12, 0x16, 0x17, 0x22, r.byte()]);
            let group = r.pick(&[GROUP4, Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::UNSPECIFIED]);
            let mut l4 = vec![ty, r.pick(&[0, 100]), 0, 0];
            l4.extend_from_slice(&group.octets());
            if ty == 0x11 && r.chance(1, 2) {
                l4.extend_from_slice(&[0, 125, 0, 0]); // IGMPv3 query, no sources
            }
            let at = if r.chance(1, 2) {
                TagAt::Trailer
            } else {
                TagAt::Inside
            };
            if let TagAt::Inside = at {
                l4.extend(payload(r, &tg));
            } else {
                trailer = true;
            }
            let dst = r.pick(&[
                Ipv4Addr::new(224, 0, 0, 1),
                Ipv4Addr::new(224, 0, 0, 22),
                GROUP4,
                n.v4,
            ]);
            let dmac = if dst == n.v4 {
                n.v_mac
            } else {
                mcast_mac4(dst)
            };
            let opts: &[u8] = if r.chance(1, 2) {
                &[0x94, 4, 0, 0]
            } else {
                &[]
            };
            let ttl = if r.chance(4, 5) { 1 } else { 64 };
            eth(
                dmac,
                n.src_mac(r),
                0x0800,
                &ip4(n.src4(r), dst, 2, ttl, r.u16(), 0, opts, &l4),
            )
        }
        "ipv4-proto58" => {
            let ty = r.pick(&[135, 136, 134, 133, 137, 130, 131, 143, 128, 1]);
            let mut l4 = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            l4.extend_from_slice(&n.v6.octets());
            l4.extend(payload(r, &tg));
            v4_frame(r, n, 58, &l4)
        }
        "ipv4-other-proto" => {
            let proto = r.pick(&[253, 254, 4, 41, 47, 50, 51, 132, 136, 0, 255, 103, 115]);
            let l4 = match proto {
                // IP in IP, IPv6 in IPv4: an inner packet to the victim.
                4 => ip4(
                    n.a4,
                    n.v4,
                    17,
                    64,
                    1,
                    0,
                    &[],
                    &udp(1234, 5555, &payload(r, &tg)),
                ),
                41 => ip6(n.a6, n.v6, 17, 64, &udp(1234, 5555, &payload(r, &tg))),
                // GRE carrying IPv4.
                47 => {
                    let mut g = vec![0, 0, 0x08, 0x00];
                    g.extend(ip4(
                        n.a4,
                        n.v4,
                        17,
                        64,
                        1,
                        0,
                        &[],
                        &udp(1234, 5555, &payload(r, &tg)),
                    ));
                    g
                }
                _ => payload(r, &tg),
            };
            notes.push(format!("proto {proto}"));
            v4_frame(r, n, proto, &l4)
        }
        "ipv4-options" => {
            let mut opts = Vec::new();
            for _ in 0..1 + r.below(4) {
                match r.below(5) {
                    0 => opts.extend_from_slice(&[0x94, 4, 0, 0]),
                    1 => opts.push(1),
                    2 => opts.push(0),
                    3 => opts.extend_from_slice(&[0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                    _ => {
                        let len = 2 + r.below(8);
                        opts.push(r.byte());
                        opts.push(len as u8);
                        opts.extend(r.bytes(len - 2));
                    }
                }
            }
            opts.truncate(40);
            let (dmac, dst) = n.dst4(r);
            let proto = r.pick(&[17, 1, 2, 6]);
            let l4 = l4_v4(r, n, &tg, proto, dport(r));
            eth(
                dmac,
                n.src_mac(r),
                0x0800,
                &ip4(n.src4(r), dst, proto, 64, r.u16(), 0, &opts, &l4),
            )
        }
        "frag4" => {
            let (dmac, dst) = n.dst4(r);
            let id = r.u16();
            let proto = r.pick(&[17, 1, 2, 6, 58]);
            let src = n.src4(r);
            let first = ip4(
                src,
                dst,
                proto,
                64,
                id,
                0x2000,
                &[],
                &l4_v4(r, n, &tg, proto, dport(r)),
            );
            let later = ip4(
                src,
                dst,
                proto,
                64,
                id,
                1 + r.below(200) as u16,
                &[],
                &payload(r, &tg),
            );
            match r.below(3) {
                0 => eth(dmac, n.src_mac(r), 0x0800, &first),
                1 => eth(dmac, n.src_mac(r), 0x0800, &later),
                _ => {
                    // The first fragment somewhere allowed, the later one
                    // to the victim.
                    let mut to_host = first.clone();
                    to_host[16..20].copy_from_slice(&n.h4.octets());
                    let mut f1 = eth(n.h_mac, n.a_mac, 0x0800, &to_host);
                    fix(&mut f1, true, true);
                    notes.push("first fragment to the host first".into());
                    frames.push(f1);
                    let mut l = later.clone();
                    l[16..20].copy_from_slice(&n.h4.octets());
                    eth(n.v_mac, n.a_mac, 0x0800, &l)
                }
            }
        }
        "udp6" => {
            let pl = udp(r.u16() | 1024, dport(r), &payload(r, &tg));
            v6_frame(r, n, 17, r.pick(&[64, 255, 1]), &pl)
        }
        "tcp6" => {
            let pl = tcp(
                r.u16() | 1024,
                r.pick(&[80, 5555]),
                r.pick(&[0x02, 0x10, 0x18, 0x04]),
                &payload(r, &tg),
            );
            v6_frame(r, n, 6, 64, &pl)
        }
        "icmp6-echo" => {
            let mut body = r.u16().to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 1]);
            let pl = icmp6(r, r.pick(&[128, 129, 139, 140, 200]), &body, &tg);
            v6_frame(r, n, 58, 64, &pl)
        }
        "icmp6-error" => {
            let ty = r.pick(&[1, 2, 3, 4]);
            let mut body = vec![0, 0, 0, 0];
            if ty == 2 {
                body = 1280u32.to_be_bytes().to_vec();
            }
            body.extend(quoted6(r, n));
            let pl = icmp6(r, ty, &body, &tg);
            v6_frame(r, n, 58, 64, &pl)
        }
        "nd" => {
            let ty = r.pick(&[135, 135, 136, 136, 133, 134, 137]);
            let mut body = match ty {
                133 => vec![0; 4],
                134 => vec![64, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0],
                135 => {
                    let mut b = vec![0; 4];
                    b.extend_from_slice(&r.pick(&[n.v6, n.v_ll, n.a6, n.h_ll]).octets());
                    b
                }
                136 => {
                    let mut b = vec![r.pick(&[0x60, 0x20, 0xe0, 0]), 0, 0, 0];
                    b.extend_from_slice(&r.pick(&[n.a6, n.a_ll, n.v6, n.v_ll]).octets());
                    b
                }
                _ => {
                    let mut b = vec![0; 4];
                    b.extend_from_slice(&n.h_ll.octets());
                    b.extend_from_slice(&n.v6.octets());
                    b
                }
            };
            body.extend(nd_options(r, n, ty));
            // The tag: an option of its own, or bytes after the packet.
            let mut msg = vec![ty, 0, 0, 0];
            msg.extend(body);
            if r.chance(1, 2) {
                let mut opt = vec![r.pick(&[0xfe, 1, 14, 31]), 3];
                opt.extend_from_slice(&tg);
                opt.resize(24, 0);
                msg.extend(opt);
            } else {
                trailer = true;
            }
            let (dmac, dst) = match ty {
                133 => {
                    let g = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
                    (mcast_mac6(g), g)
                }
                135 if r.chance(1, 2) => {
                    let s = solicited(n.v6);
                    (mcast_mac6(s), s)
                }
                _ => n.dst6(r),
            };
            let src = if ty == 135 && r.chance(1, 6) {
                Ipv6Addr::UNSPECIFIED
            } else {
                n.src6(r)
            };
            let hop = if r.chance(5, 6) { 255 } else { 64 };
            eth(dmac, n.src_mac(r), 0x86dd, &ip6(src, dst, 58, hop, &msg))
        }
        "mld" => {
            let ty = r.pick(&[130, 131, 132, 143]);
            let mut msg = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            match ty {
                143 => {
                    msg[6..8].copy_from_slice(&[0, 1]);
                    msg.extend_from_slice(&[4, 0, 0, 0]);
                    msg.extend_from_slice(&GROUP6.octets());
                }
                _ => msg.extend_from_slice(&r.pick(&[GROUP6, Ipv6Addr::UNSPECIFIED]).octets()),
            }
            if ty == 130 && r.chance(1, 2) {
                msg.extend_from_slice(&[0, 125, 0, 0]);
            }
            if r.chance(1, 2) {
                msg.extend(payload(r, &tg));
            } else {
                trailer = true;
            }
            let g = r.pick(&[
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
                GROUP6,
            ]);
            let src = r.pick(&[n.a_ll, n.a_ll, Ipv6Addr::UNSPECIFIED, n.a6]);
            let (next, pl) = if r.chance(3, 4) {
                (0, hbh_router_alert(58, &msg))
            } else {
                (58, msg)
            };
            let hop = if r.chance(5, 6) { 1 } else { 255 };
            eth(
                mcast_mac6(g),
                n.src_mac(r),
                0x86dd,
                &ip6(src, g, next, hop, &pl),
            )
        }
        "ext6" => {
            let last = r.pick(&[17, 58, 6, 59, 253]);
            let mut inner = match last {
                17 => udp(r.u16() | 1024, dport(r), &payload(r, &tg)),
                6 => tcp(r.u16() | 1024, 80, 0x02, &payload(r, &tg)),
                58 => {
                    let ty = r.pick(&[128, 135, 143, 130, 1]);
                    icmp6(r, ty, &[0, 0, 0, 0], &tg)
                }
                _ => payload(r, &tg),
            };
            let mut next = last;
            let chain = 1 + r.below(7);
            notes.push(format!("{chain} extension headers"));
            for _ in 0..chain {
                let kind = r.pick(&[0, 60, 43, 51, 44]);
                inner = match kind {
                    43 => {
                        let mut h = vec![next, 2, r.pick(&[0, 2, 4]), 1, 0, 0, 0, 0];
                        h.extend_from_slice(&n.v6.octets());
                        h.extend(inner);
                        h
                    }
                    51 => {
                        let mut h = vec![next, 4, 0, 0];
                        h.extend(r.bytes(20));
                        h.extend(inner);
                        h
                    }
                    44 => {
                        let mut h = vec![next, 0, 0, 0];
                        h.extend(r.bytes(4));
                        h.extend(inner);
                        h
                    }
                    _ => ext(next, 1 + r.below(2), &inner),
                };
                next = kind;
            }
            v6_frame(r, n, next, 64, &inner)
        }
        "frag6" => {
            let id = r.next() as u32;
            let proto = r.pick(&[17, 58, 6]);
            let inner = match proto {
                58 => icmp6(r, r.pick(&[128, 135, 143]), &[0, 0, 0, 0], &tg),
                6 => tcp(1234, 80, 0x02, &payload(r, &tg)),
                _ => udp(1234, dport(r), &payload(r, &tg)),
            };
            let later = r.chance(1, 2);
            let off: u16 = if later {
                (1 + r.below(100) as u16) << 3
            } else {
                1
            };
            let mut h = vec![proto, 0];
            h.extend_from_slice(&off.to_be_bytes());
            h.extend_from_slice(&id.to_be_bytes());
            h.extend(if later { payload(r, &tg) } else { inner });
            notes.push(
                if later {
                    "later fragment"
                } else {
                    "first fragment"
                }
                .into(),
            );
            v6_frame(r, n, 44, 64, &h)
        }
        "arp" => {
            let op = r.pick(&[1, 1, 2, 2, 3, 0]);
            let mut a = vec![0, 1, 8, 0, 6, 4, 0, op];
            a.extend_from_slice(&n.a_mac);
            a.extend_from_slice(&n.src4(r).octets());
            a.extend_from_slice(&r.pick(&[[0; 6], n.v_mac, [0xff; 6]]));
            a.extend_from_slice(&r.pick(&[n.v4, n.h4, n.a4]).octets());
            if r.chance(1, 4) {
                // Odd sizes or protocol types.
                let at = r.pick(&[1, 2, 3, 4, 5]);
                a[at] = r.byte();
            }
            trailer = true;
            let dmac = r.pick(&[[0xff; 6], n.v_mac, UNKNOWN_MAC]);
            eth(dmac, n.src_mac(r), 0x0806, &a)
        }
        "vlan" => {
            // One to three tags around an inner frame of another template.
            let mut inner = template_inner(r, n, &tg);
            let tags = 1 + r.below(3);
            for _ in 0..tags {
                let tpid = r.pick(&VLAN_TPIDS);
                let vid = r.pick(&[0u16, 1, 5, 100, 4095, r.u16() & 0xfff]);
                let tci = vid | ((r.below(8) as u16) << 13);
                let mut t = tpid.to_be_bytes().to_vec();
                t.extend_from_slice(&tci.to_be_bytes());
                inner.splice(12..12, t);
                notes.push(format!("tag {tpid:#06x} vid {vid}"));
            }
            inner
        }
        "unknown-ethertype" => {
            let et = r.pick(&[
                0x88b5, 0x88b6, 0x9000, 0x0842, 0x88cc, 0x8863, 0x8864, 0x22f0, 0x88e5, 0x8847,
                0x8848, 0x894f, 0x6558, 0x88f7, 0x8906, 0x0801, 0x0600, 0xffff, 0x88e7, 0x8035,
            ]);
            notes.push(format!("ethertype {et:#06x}"));
            let body = match et {
                // MPLS / transparent Ethernet bridging carrying a packet to the victim.
                0x8847 | 0x8848 => {
                    let mut b = vec![0, 0, 0x11, 64];
                    b.extend(ip4(
                        n.a4,
                        n.v4,
                        17,
                        64,
                        1,
                        0,
                        &[],
                        &udp(1234, 5555, &payload(r, &tg)),
                    ));
                    b
                }
                0x6558 => eth(
                    n.v_mac,
                    n.a_mac,
                    0x0800,
                    &ip4(
                        n.a4,
                        n.v4,
                        17,
                        64,
                        1,
                        0,
                        &[],
                        &udp(1234, 5555, &payload(r, &tg)),
                    ),
                ),
                _ => payload(r, &tg),
            };
            let (dmac, _) = n.dst4(r);
            eth(dmac, n.src_mac(r), et, &body)
        }
        "llc" => {
            // 802.3 length field with LLC/SNAP (carrying IPv4) or raw LLC.
            let mut body = if r.chance(1, 2) {
                vec![0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00]
            } else {
                vec![
                    r.pick(&[0x42, 0xe0, 0xf0, 0xff]),
                    r.pick(&[0x42, 0xe0, 0xf0, 0xff]),
                    0x03,
                ]
            };
            body.extend(ip4(
                n.a4,
                n.v4,
                17,
                64,
                1,
                0,
                &[],
                &udp(1234, 5555, &payload(r, &tg)),
            ));
            let len = if r.chance(3, 4) {
                body.len() as u16
            } else {
                r.u16() % 0x600
            };
            let (dmac, _) = n.dst4(r);
            eth(dmac, n.src_mac(r), len, &body)
        }
        "l3-mismatch" => {
            // IPv6 under 0x0800, IPv4 under 0x86dd or ARP.
            let (dmac, _) = n.dst4(r);
            let et = r.pick(&[0x0800, 0x86dd, 0x0806]);
            let body = if et == 0x0800 {
                ip6(n.a6, n.v6, 17, 64, &udp(1, 5555, &payload(r, &tg)))
            } else {
                ip4(
                    n.a4,
                    n.v4,
                    17,
                    64,
                    1,
                    0,
                    &[],
                    &udp(1, 5555, &payload(r, &tg)),
                )
            };
            eth(dmac, n.src_mac(r), et, &body)
        }
        "state-pair" => {
            // An allowed packet (attacker -> host or world) that leaves
            // state behind, then the same flow, or its reverse, towards
            // the victim.
            let v6 = r.chance(1, 2);
            let proto = r.pick(&[17, 6, 1]);
            let (sp, dp) = (r.u16() | 1024, r.pick(&PORTS));
            let pl = payload(r, &tg);
            let l4 = match (proto, v6) {
                (6, _) => tcp(sp, dp, 0x02, &pl),
                (1, false) => [&[8u8, 0, 0, 0, 0, 9, 0, 1][..], &pl].concat(),
                (1, true) => [&[128u8, 0, 0, 0, 0, 9, 0, 1][..], &pl].concat(),
                _ => udp(sp, dp, &pl),
            };
            let proto = if proto == 1 && v6 { 58 } else { proto };
            let peer_is_world = r.chance(1, 2);
            let mk = |dmac, l4: &[u8]| {
                if v6 {
                    let d = if peer_is_world { WORLD6 } else { n.h_ll };
                    let s = if peer_is_world { n.a6 } else { n.a_ll };
                    eth(dmac, n.a_mac, 0x86dd, &ip6(s, d, proto, 64, l4))
                } else {
                    let d = if peer_is_world { WORLD4 } else { n.h4 };
                    eth(
                        dmac,
                        n.a_mac,
                        0x0800,
                        &ip4(n.a4, d, proto, 64, 7, 0, &[], l4),
                    )
                }
            };
            let mut f1 = mk(n.h_mac, &l4);
            fix(&mut f1, true, true);
            frames.push(f1);
            notes.push(format!(
                "first to {}",
                if peer_is_world {
                    "the world"
                } else {
                    "the host"
                }
            ));
            let dmac = r.pick(&[n.v_mac, [0xff; 6], UNKNOWN_MAC]);
            mk(dmac, &l4)
        }
        _ => {
            // Random bytes after a valid header start.
            let (dmac, _) = n.dst4(r);
            let et = r.pick(&[0x0800, 0x86dd, 0x0806, 0x8100, r.u16()]);
            let mut body = r.bytes(r.below(80));
            body.extend_from_slice(&tg);
            body.extend(r.bytes(r.below(40)));
            eth(dmac, n.src_mac(r), et, &body)
        }
    };
    let mut f = f;
    fix(&mut f, true, true);
    if trailer {
        f.extend_from_slice(&tg);
        notes.push("tag after the IP packet".into());
    }
    frames.push(f);
    Input {
        template: name,
        notes,
        frames,
        tagless: false,
        vnet: None,
    }
}

/// A simple inner frame for VLAN templates.
fn template_inner(r: &Rng, n: &Net, tg: &[u8; TAG_LEN]) -> Vec<u8> {
    match r.below(5) {
        0 | 1 => {
            let l4 = l4_v4(r, n, tg, 17, dport(r));
            v4_frame(r, n, 17, &l4)
        }
        2 => {
            let pl = udp(r.u16() | 1024, dport(r), &payload(r, tg));
            v6_frame(r, n, 17, 64, &pl)
        }
        3 => {
            let l4 = l4_v4(r, n, tg, 1, 0);
            v4_frame(r, n, 1, &l4)
        }
        _ => {
            let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
            a.extend_from_slice(&n.a_mac);
            a.extend_from_slice(&n.a4.octets());
            a.extend_from_slice(&[0; 6]);
            a.extend_from_slice(&n.v4.octets());
            a.extend_from_slice(tg);
            eth([0xff; 6], n.a_mac, 0x0806, &a)
        }
    }
}

// ---------------------------------------------------------------------------
// Mutations.

pub const MAX_FRAME: usize = 1514;

fn mutate(r: &Rng, n: &Net, f: &mut Vec<u8>, notes: &mut Vec<String>) {
    for _ in 0..1 + r.below(4) {
        let l3 = ethertype_at(f).map(|e| e + 2).unwrap_or(14);
        match r.below(13) {
            0 | 1 => {
                // A byte past the source MAC.
                if f.len() > 12 {
                    let i = 12 + r.below(f.len() - 12);
                    f[i] = r.byte();
                    notes.push(format!("byte {i}"));
                }
            }
            2 | 3 => {
                // Header fields where small changes matter: IP version and
                // header length, lengths, fragment bits, TTL/hop limit,
                // protocol/next header, the first L4 bytes.
                let hot = [
                    0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25, 40, 41, 42, 43,
                ];
                let i = l3 + r.pick(&hot);
                if i < f.len() {
                    let v = r.pick(&[
                        0u8,
                        1,
                        0xff,
                        0x40,
                        0x45,
                        0x46,
                        0x4f,
                        0x60,
                        0x20,
                        0x3f,
                        58,
                        2,
                        17,
                        6,
                        0,
                        44,
                        60,
                        135,
                        136,
                        143,
                        130,
                        r.byte(),
                    ]);
                    f[i] = v;
                    notes.push(format!("l3+{} = {v:#04x}", i - l3));
                }
            }
            4 => {
                let keep = 14 + r.below(f.len().saturating_sub(13).max(1));
                f.truncate(keep.min(f.len()));
                notes.push(format!("cut to {}", f.len()));
            }
            5 => {
                let k = 1 + r.below(64);
                f.extend(r.bytes(k));
                notes.push(format!("{k} bytes appended"));
            }
            6 => {
                // Ethertype swap (outer or inner).
                let at = if r.chance(1, 2) { 12 } else { l3 - 2 };
                let et = r.pick(&[
                    0x0800u16,
                    0x86dd,
                    0x0806,
                    0x8100,
                    0x88a8,
                    0x9100,
                    0x88b5,
                    0x0000,
                    r.u16(),
                ]);
                if f.len() >= at + 2 {
                    f[at..at + 2].copy_from_slice(&et.to_be_bytes());
                    notes.push(format!("ethertype@{at} = {et:#06x}"));
                }
            }
            7 => {
                // A VLAN tag inserted.
                let tpid = r.pick(&VLAN_TPIDS);
                let vid = r.pick(&[0u16, 1, 7, 4095]);
                let at = if r.chance(1, 2) { 12 } else { l3 - 2 };
                let mut t = tpid.to_be_bytes().to_vec();
                t.extend_from_slice(&vid.to_be_bytes());
                if at <= f.len() {
                    f.splice(at..at, t);
                    notes.push(format!("tag {tpid:#06x} vid {vid} at {at}"));
                }
            }
            8 => {
                // Destination MAC.
                let m = r.pick(&[
                    n.v_mac,
                    [0xff; 6],
                    [0x01, 0, 0x5e, 0, 0, 1],
                    [0x33, 0x33, 0, 0, 0, 1],
                    UNKNOWN_MAC,
                    n.h_mac,
                    [0x01, 0x80, 0xc2, 0, 0, 0x0e],
                ]);
                f[..6].copy_from_slice(&m);
                notes.push("destination MAC".into());
            }
            9 => {
                // Bytes inserted in the middle (misaligns what follows).
                if f.len() > 14 {
                    let at = 14 + r.below(f.len() - 14);
                    let k = 1 + r.below(8);
                    let b = r.bytes(k);
                    f.splice(at..at, b);
                    notes.push(format!("{k} bytes inserted at {at}"));
                }
            }
            10 => {
                // Bytes removed from the middle.
                if f.len() > 20 {
                    let at = 14 + r.below(f.len() - 20);
                    let k = (1 + r.below(8)).min(f.len() - at);
                    f.drain(at..at + k);
                    notes.push(format!("{k} bytes removed at {at}"));
                }
            }
            11 => {
                // Destination address bytes (IPv4 at l3+16, IPv6 at l3+24).
                let at = l3 + r.pick(&[16usize, 19, 24, 39]);
                if at < f.len() {
                    f[at] = r.pick(&[0xff, 0, 1, 2, 3, r.byte()]);
                    notes.push(format!("address byte l3+{}", at - l3));
                }
            }
            _ => {
                // The source MAC: spoofing.
                f[6..12].copy_from_slice(&r.pick(&[n.v_mac, UNKNOWN_MAC, [0; 6]]));
                notes.push("source MAC".into());
            }
        }
    }
}

/// Link control in the exact form the sealed datapath lets through, with
/// attacker-chosen bits where the form leaves room: the Ethernet
/// destination (six bytes of the marker; the bridge floods an unknown
/// unicast or multicast address to every port), or the IPv6 traffic class
/// and flow label ([`flow_word`]). No tag fits; the victim's AF_PACKET
/// receiver looks for these fields instead.
fn covert(r: &Rng, n: &Net) -> Input {
    let m6 = short_mark(&n.marker);
    let kind = r.below(4);
    let in_mac = kind < 2 || r.chance(1, 2);
    let mut notes = vec![if in_mac {
        "marker in the destination MAC".to_string()
    } else {
        "marker in the traffic class and flow label".to_string()
    }];
    let arp = |op: u16, tha: [u8; 6]| {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&n.a_mac);
        a.extend_from_slice(&n.a4.octets());
        a.extend_from_slice(&tha);
        a.extend_from_slice(&n.v4.octets());
        a
    };
    let mut f = match kind {
        0 => eth(m6, n.a_mac, 0x0806, &arp(1, [0; 6])),
        1 => eth(m6, n.a_mac, 0x0806, &arp(2, n.v_mac)),
        2 => {
            let target = r.pick(&[n.v6, n.v_ll]);
            let (dmac, dst) = if r.chance(1, 2) {
                let s = solicited(target);
                (mcast_mac6(s), s)
            } else {
                (n.v_mac, target)
            };
            let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&target.octets());
            m.extend_from_slice(&[1, 1]);
            m.extend_from_slice(&n.a_mac);
            let src = r.pick(&[n.a_ll, n.a6]);
            eth(
                if in_mac { m6 } else { dmac },
                n.a_mac,
                0x86dd,
                &ip6(src, dst, 58, 255, &m),
            )
        }
        _ => {
            let target = r.pick(&[n.a6, n.a_ll]);
            let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            let (dmac, dst) = r.pick(&[(n.v_mac, n.v6), (n.v_mac, n.v_ll), (mcast_mac6(all), all)]);
            let mut m = vec![136, 0, 0, 0, r.pick(&[0x60, 0x20, 0x40, 0]), 0, 0, 0];
            m.extend_from_slice(&target.octets());
            m.extend_from_slice(&[2, 1]);
            m.extend_from_slice(&n.a_mac);
            eth(
                if in_mac { m6 } else { dmac },
                n.a_mac,
                0x86dd,
                &ip6(target, dst, 58, 255, &m),
            )
        }
    };
    if !in_mac {
        f[14..18].copy_from_slice(&flow_word(&n.marker));
    }
    fix(&mut f, true, true);
    notes.push(describe(&f));
    Input {
        template: "covert-control",
        notes,
        frames: vec![f],
        tagless: true,
        vnet: None,
    }
}

/// A `virtio_net_hdr` (little-endian, as PACKET_VNET_HDR takes it on this
/// host): flags (1 = needs checksum, 2 = data valid), GSO type (TCPv4,
/// UDP, TCPv6, UDP L4, ECN), header length, GSO size, checksum start and
/// offset. The kernel checks it and segments or checksums the packet
/// later, after netiso has judged it.
fn vnet_header(r: &Rng, f: &[u8]) -> [u8; 10] {
    if r.chance(2, 3) {
        if let Some(h) = vnet_consistent(r, f) {
            return h;
        }
    }
    let frame_len = f.len();
    let flags = r.pick(&[0u8, 1, 1, 2]);
    let gso = r.pick(&[0u8, 1, 3, 4, 5, 0x81, 1, 4]);
    let hdr_len = r.pick(&[0u16, 34, 54, 74, 42, r.u16() % 128]);
    let gso_size = r.pick(&[0u16, 8, 100, 536, 1400, 1448, r.u16() % 2000]);
    let csum_start = r.pick(&[34u16, 54, 14, 38, 58, r.u16() % frame_len.max(1) as u16]);
    let csum_offset = r.pick(&[6u16, 16, 2, 10, r.u16() % 64]);
    let mut h = [0u8; 10];
    h[0] = flags;
    h[1] = gso;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// A header the kernel accepts for this frame: checksum offload at its
/// real L4 checksum, and GSO of the matching kind when it is TCP or UDP.
fn vnet_consistent(r: &Rng, f: &[u8]) -> Option<[u8; 10]> {
    let et = ethertype_at(f)?;
    let l3 = et + 2;
    let (v4, l4, proto) = match be16(f, et) {
        0x0800 if f.len() >= l3 + 20 => (true, l3 + (f[l3] & 0x0f) as usize * 4, f[l3 + 9]),
        0x86dd if f.len() >= l3 + 40 => (false, l3 + 40, f[l3 + 6]),
        _ => return None,
    };
    let (csum_offset, hlen, gso) = match proto {
        6 if f.len() >= l4 + 20 => (
            16u16,
            (f[l4 + 12] >> 4) as usize * 4,
            if v4 { 1 } else { 4 },
        ),
        17 => (6, 8, r.pick(&[5u8, 3])),
        1 | 58 => (2, 8, 0),
        _ => return None,
    };
    let gso = if r.chance(1, 3) { 0 } else { gso };
    let gso_size: u16 = if gso == 0 {
        0
    } else {
        r.pick(&[536, 1400, 1448, 100])
    };
    let mut h = [0u8; 10];
    h[0] = 1; // needs checksum
    h[1] = gso;
    h[2..4].copy_from_slice(&((l4 + hlen) as u16).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    Some(h)
}

/// Frame `index` of the run: a template, mutated most of the time, always
/// carrying the tag with `seq`.
pub fn generate(seed: u64, index: u64, n: &Net, seq: u32) -> Input {
    let r = Rng::for_frame(seed, index);
    if r.chance(1, 25) {
        return covert(&r, n);
    }
    let mut input = template(&r, n, seq);
    let tg = n.tag(seq);
    let last = input.frames.last_mut().unwrap();
    if r.chance(4, 5) {
        mutate(&r, n, last, &mut input.notes);
        if r.chance(1, 2) {
            let sums = r.chance(3, 4);
            let lengths = r.chance(1, 2);
            fix(last, lengths, sums);
            input
                .notes
                .push(format!("fixed (lengths {lengths}, sums {sums})"));
        }
    }
    if find(last, &tg).is_none() {
        last.extend_from_slice(&tg);
        input.notes.push("tag appended".into());
    }
    if last.len() > MAX_FRAME {
        // Keep the tag: cut before it if need be.
        let at = find(last, &tg).unwrap();
        if at + TAG_LEN > MAX_FRAME {
            last.truncate(MAX_FRAME - TAG_LEN);
            last.extend_from_slice(&tg);
        } else {
            last.truncate(MAX_FRAME);
        }
        input.notes.push("cut to the MTU".into());
    }
    if r.chance(1, 16) {
        // Offloads: sometimes a packet above the MTU, to be segmented.
        if r.chance(1, 2) {
            let k = r.below(8000);
            last.extend(r.bytes(k));
            if r.chance(3, 4) {
                fix(last, true, true);
            }
        }
        if find(last, &tg).is_none() {
            last.extend_from_slice(&tg);
        }
        let h = vnet_header(&r, last);
        input.notes.push(format!("virtio_net_hdr {}", hex(&h)));
        input.vnet = Some(h);
    }
    input
}

pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

/// A short description of a frame: ethertypes, protocol, types.
pub fn describe(f: &[u8]) -> String {
    let mut out = Vec::new();
    let mut at = 12;
    while f.len() >= at + 2 && VLAN_TPIDS.contains(&be16(f, at)) {
        out.push(format!(
            "vlan {:#06x}/{}",
            be16(f, at),
            f.get(at + 2..at + 4)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) & 0xfff)
                .unwrap_or(0)
        ));
        at += 4;
    }
    if f.len() < at + 2 {
        out.push("short".into());
        return out.join(" ");
    }
    let et = be16(f, at);
    let l3 = at + 2;
    match et {
        0x0800 if f.len() >= l3 + 20 => {
            let ihl = (f[l3] & 0xf) as usize * 4;
            let proto = f[l3 + 9];
            let frag = be16(f, l3 + 6);
            out.push(format!(
                "ipv4 {} -> {} proto {proto}{}",
                Ipv4Addr::from(<[u8; 4]>::try_from(&f[l3 + 12..l3 + 16]).unwrap()),
                Ipv4Addr::from(<[u8; 4]>::try_from(&f[l3 + 16..l3 + 20]).unwrap()),
                if frag & 0x3fff != 0 {
                    " (fragment)"
                } else {
                    ""
                }
            ));
            if let Some(&t) = f.get(l3 + ihl) {
                if matches!(proto, 1 | 2 | 58) {
                    out.push(format!("type {t}"));
                }
            }
        }
        0x86dd if f.len() >= l3 + 40 => out.push(format!(
            "ipv6 {} -> {} next {}",
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 8..l3 + 24]).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap()),
            f[l3 + 6]
        )),
        0x0806 => out.push("arp".into()),
        e => out.push(format!("ethertype {e:#06x}")),
    }
    out.join(" ")
}
