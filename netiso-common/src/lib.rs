//! Types shared by the netiso TC programs and user space.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so that the
//! kernel and user space agree on the bytes, and so that hash keys never carry
//! uninitialised padding. Addresses are stored as 16 bytes in network byte
//! order; IPv4 addresses use the first four bytes and leave the rest zero.
#![no_std]

/// Directory under bpffs where netiso pins its maps and links.
pub const PIN_DIR: &str = "/sys/fs/bpf/netiso";

/// Bumped whenever a pinned map's key or value layout changes, so that an
/// upgraded daemon replaces old pins instead of misreading them.
pub const LAYOUT_VERSION: u32 = 7;

/// Map names, as declared in the eBPF object.
pub mod maps {
    pub const ENDPOINTS: &str = "NETISO_ENDPOINTS";
    pub const IDENTITIES: &str = "NETISO_IDENTITIES";
    pub const POLICY: &str = "NETISO_POLICY";
    pub const CONNTRACK: &str = "NETISO_CONNTRACK";
    pub const FLOWS: &str = "NETISO_FLOWS";
    pub const RULE_STATS: &str = "NETISO_RULE_STATS";
    pub const REASON_STATS: &str = "NETISO_REASON_STATS";
    pub const SETTINGS: &str = "NETISO_SETTINGS";
    pub const FRAGS: &str = "NETISO_FRAGS";
    pub const CIDRS: &str = "NETISO_CIDRS";
    pub const EVENTS: &str = "NETISO_EVENTS";
    pub const EVENT_RATE: &str = "NETISO_EVENT_RATE";
    pub const ERRORS: &str = "NETISO_ERRORS";
    pub const PUBLISHED: &str = "NETISO_PUBLISHED";
    pub const LEARN: &str = "NETISO_LEARN";
    pub const FQDN: &str = "NETISO_FQDN";
    pub const DNS: &str = "NETISO_DNS";
    /// Endpoints by ifindex, for small ifindexes (see [`super::EndpointSlot`]).
    pub const ENDPOINT_ARRAY: &str = "NETISO_EP_ARRAY";
    /// The policy entries of each identity pair in one value (see
    /// [`super::PairValue`]).
    pub const PAIRS: &str = "NETISO_PAIRS";

    /// Every map, in a fixed order (used for pinning and cleanup).
    pub const ALL: [&str; 19] = [
        ENDPOINTS,
        IDENTITIES,
        POLICY,
        CONNTRACK,
        FLOWS,
        RULE_STATS,
        REASON_STATS,
        SETTINGS,
        FRAGS,
        CIDRS,
        EVENTS,
        EVENT_RATE,
        ERRORS,
        PUBLISHED,
        LEARN,
        FQDN,
        DNS,
        ENDPOINT_ARRAY,
        PAIRS,
    ];
}

/// Program names, as declared in the eBPF object.
pub mod programs {
    /// TC ingress on the host-side veth: traffic leaving the container.
    pub const FROM_CONTAINER: &str = "netiso_from_container";
    /// TC egress on the host-side veth: traffic entering the container.
    pub const TO_CONTAINER: &str = "netiso_to_container";
    /// An empty classifier, the baseline of `cargo xtask bench`.
    pub const BENCH_EMPTY: &str = "netiso_bench_empty";
}

/// Map sizes. The policy and identity maps hold two slots (see [`Settings`]).
pub mod limits {
    /// Endpoint ids: `ifindex` in the daemon's own network namespace,
    /// `(k << NS_SHIFT) + ifindex` in the k-th other one (a Swarm overlay's
    /// namespace, k ≥ `FIRST_NS_SLOT`), whose loaded programs add `k << NS_SHIFT`
    /// (`NS_BASE`) to every ifindex. Ifindexes must stay below
    /// `1 << NS_SHIFT`.
    pub const NS_SHIFT: u32 = 20;
    /// The first slot k of another namespace: its endpoint ids start at
    /// 2^31, above every ifindex the kernel gives (a positive `int`), so no
    /// host veth, whatever its ifindex, shares an id with an overlay's.
    /// Slots run from here to `1 << (32 - NS_SHIFT)` (2,048 of them).
    pub const FIRST_NS_SLOT: u32 = 1 << (31 - NS_SHIFT);
    pub const ENDPOINTS: u32 = 8192;
    /// Slots of the endpoints array: veths with an ifindex below this are
    /// found there (an inlined array lookup); larger ifindexes only in the
    /// endpoints hash. 72 bytes each.
    pub const ENDPOINT_ARRAY: u32 = 32768;
    pub const IDENTITIES: u32 = 65536;
    pub const POLICY: u32 = 262144;
    /// Identity pairs that rules name, both slots.
    pub const PAIRS: u32 = 65536;
    pub const CONNTRACK: u32 = 262144;
    pub const FLOWS: u32 = 65536;
    pub const FRAGS: u32 = 16384;
    /// CIDR peers, both slots.
    pub const CIDRS: u32 = 16384;
    /// Ring buffer for drop and audit events, in bytes.
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Default events per second per CPU before events are suppressed.
    pub const DEFAULT_EVENT_RATE: u32 = 1000;
    /// Ports the host publishes for containers (`docker run -p`), both slots.
    pub const PUBLISHED: u32 = 8192;
    /// Distinct new flows learn mode remembers between two drains by the
    /// daemon (every 2 s); a full table counts `errors::LEARN_FULL`.
    pub const LEARN: u32 = 65536;
    /// Addresses learned for peers by name, over all endpoints.
    pub const FQDN: u32 = 65536;
    /// The DNS copies ring buffer (queries leaving, answers entering
    /// endpoints that resolve names some rule allows).
    pub const DNS_BYTES: u32 = 1 << 22;
    /// Rule ids run from 1 to `RULES - 1`; 0 stands for "a group default".
    pub const RULES: u32 = 16384;
}

/// Reserved identities. Identities of group sets start at [`FIRST_GROUP_IDENTITY`].
pub mod identity {
    /// Used in policy keys as "any identity"; never assigned to a peer.
    pub const ANY: u32 = 0;
    /// The host's own addresses.
    pub const HOST: u32 = 1;
    /// Any address netiso does not know.
    pub const WORLD: u32 = 2;
    /// A container that is in no group.
    pub const UNMANAGED: u32 = 3;
    /// What a host port published for two different containers (or two
    /// container ports) stands for: published ports are keyed by port, not
    /// by host address, so netiso cannot tell which container a packet to
    /// that port reaches. No rule names it and it denies ingress, so
    /// reaching that port through the host is denied to everyone.
    pub const AMBIGUOUS_PUBLISHED: u32 = 4;
    /// An address in a Swarm overlay's subnet that no known endpoint has
    /// (a task another node started that gossip has not named yet): its
    /// own identity, never `world`. No rule names it, so the groups'
    /// defaults decide (a group that denies ingress keeps it out).
    pub const UNKNOWN_OVERLAY_PEER: u32 = 5;
    /// Identities of address-block peers and of peers by name start here
    /// (an address's identity from the CIDR trie is at least this, or
    /// WORLD).
    pub const FIRST_ADDRESS_PEER: u32 = 1 << 24;
    pub const FIRST_GROUP_IDENTITY: u32 = 256;

    /// Whether `id` is a container's (in a group, or unmanaged): not the
    /// host, the world, an address peer or an unknown overlay peer.
    #[inline(always)]
    pub fn is_container(id: u32) -> bool {
        id == UNMANAGED || (FIRST_GROUP_IDENTITY..FIRST_ADDRESS_PEER).contains(&id)
    }
}

/// Protocol numbers as used in policy keys. `ANY` matches every protocol.
pub mod proto {
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Address families in keys.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// Bits of [`IdentityInfo::flags`] and [`Endpoint::flags`]: what happens to
/// traffic that no rule matches.
pub mod defaults {
    /// Outgoing traffic from this identity is denied unless a rule allows it.
    pub const DENY_EGRESS: u32 = 1 << 0;
    /// Incoming traffic to this identity is denied unless a rule allows it.
    pub const DENY_INGRESS: u32 = 1 << 1;
}

/// Bits of [`IdentityInfo::flags`] beyond the defaults.
pub mod peer_flags {
    /// The address belongs to a container whose veth on this host carries
    /// the programs: a connection to it is marked `ct_flags::LOCAL_PEER`.
    /// Never set in `PublishedValue::flags` (a published port is reached
    /// through the host, not over the bridge).
    pub const LOCAL_ENDPOINT: u32 = 1 << 4;
    /// The address is a container's on a Swarm overlay (a local task's or
    /// a remote one's): it names that container only in an overlay
    /// namespace's instance. Nothing of the host's own namespace routes
    /// to it, so there a packet claiming it came from elsewhere (the world
    /// forging it: reverse-path filtering lets it through, the default
    /// route answers for it); it is judged as the CIDR trie says (an
    /// overlay subnet's unknown overlay peer).
    pub const OVERLAY_ONLY: u32 = 1 << 5;
    /// The address is a container's on a network of the host's own
    /// namespace (a bridge, `docker_gwbridge`): in an overlay namespace's
    /// instance it names nobody (an unknown overlay peer).
    pub const HOST_NS_ONLY: u32 = 1 << 6;
}

/// Bits of [`Endpoint::flags`] beyond the defaults.
pub mod endpoint_flags {
    /// Not yet classified: every packet is dropped (fail-closed groups).
    pub const FAIL_CLOSED: u32 = 1 << 8;
    /// Learn mode: every new flow this endpoint lets through is recorded
    /// in `maps::LEARN` (its first packet only).
    pub const LEARN: u32 = 1 << 9;
    /// The endpoint's container may reach peers by name: its DNS queries
    /// are copied to the daemon, and the answers held until the daemon
    /// has learned their addresses (`maps::DNS`).
    pub const FQDN: u32 = 1 << 10;
}

/// The verdict a policy entry gives.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow = 1,
    Deny = 2,
    /// Would deny: passes, but is counted and reported as `audit`.
    Audit = 3,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::Audit),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

/// Direction as seen from the container that owns the veth.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Leaving the container (TC ingress on the host-side veth).
    Egress = 0,
    /// Entering the container (TC egress on the host-side veth).
    Ingress = 1,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Egress),
            1 => Some(Self::Ingress),
            _ => None,
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

/// Why a packet was dropped. Index into the reason counters; part of each
/// flow-table key. Keep the numbers stable: they are stored in pinned maps.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// An explicit `deny` rule matched.
    PolicyDeny = 1,
    /// No rule matched and a group default denies.
    DefaultDeny = 2,
    /// Source IP is not the endpoint's own.
    SpoofedIp = 3,
    /// Source MAC is not the endpoint's own.
    SpoofedMac = 4,
    /// An IP header too short or inconsistent to judge.
    MalformedL3 = 5,
    /// A TCP/UDP/ICMP header cut short.
    MalformedL4 = 6,
    /// An ethertype other than IPv4, IPv6 and ARP (unless re-opened by
    /// the `allow_non_ip` setting).
    NonIp = 7,
    /// The endpoint is held fail-closed until it is classified.
    FailClosed = 8,
    /// A later IPv4/IPv6 fragment whose first fragment this endpoint did
    /// not pass.
    Fragment = 9,
    /// A live connection the current policy no longer allows.
    Revoked = 10,
    /// Not a drop: an `audit` rule matched; the packet passed and was
    /// recorded like a drop would be.
    Audit = 11,
    /// A VLAN tag (in the frame or in the skb metadata): netiso judges
    /// untagged IP only, and the receiving kernel would untag it.
    Vlan = 12,
    /// Unicast to an address that is not the receiving endpoint's own.
    NotForEndpoint = 13,
    /// ARP, neighbour discovery, MLD or IGMP not in the form the link needs.
    Control = 14,
    /// An ICMP error that quotes no live connection of this endpoint.
    IcmpUnrelated = 15,
}

/// Number of reason counters (index 0 unused).
pub const DROP_REASONS: u32 = 16;

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        Self::PolicyDeny,
        Self::DefaultDeny,
        Self::SpoofedIp,
        Self::SpoofedMac,
        Self::MalformedL3,
        Self::MalformedL4,
        Self::NonIp,
        Self::FailClosed,
        Self::Fragment,
        Self::Revoked,
        Self::Audit,
        Self::Vlan,
        Self::NotForEndpoint,
        Self::Control,
        Self::IcmpUnrelated,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::PolicyDeny),
            2 => Some(Self::DefaultDeny),
            3 => Some(Self::SpoofedIp),
            4 => Some(Self::SpoofedMac),
            5 => Some(Self::MalformedL3),
            6 => Some(Self::MalformedL4),
            7 => Some(Self::NonIp),
            8 => Some(Self::FailClosed),
            9 => Some(Self::Fragment),
            10 => Some(Self::Revoked),
            11 => Some(Self::Audit),
            12 => Some(Self::Vlan),
            13 => Some(Self::NotForEndpoint),
            14 => Some(Self::Control),
            15 => Some(Self::IcmpUnrelated),
            _ => None,
        }
    }

    /// Stable, machine-friendly name (used in CLI filters, JSON and metrics).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PolicyDeny => "policy-deny",
            Self::DefaultDeny => "default-deny",
            Self::SpoofedIp => "spoofed-ip",
            Self::SpoofedMac => "spoofed-mac",
            Self::MalformedL3 => "malformed-l3",
            Self::MalformedL4 => "malformed-l4",
            Self::NonIp => "non-ip",
            Self::FailClosed => "fail-closed",
            Self::Fragment => "fragment",
            Self::Revoked => "revoked",
            Self::Audit => "audit",
            Self::Vlan => "vlan",
            Self::NotForEndpoint => "not-for-endpoint",
            Self::Control => "control",
            Self::IcmpUnrelated => "icmp-unrelated",
        }
    }
}

/// Value of the endpoints map, keyed by the host-side veth's ifindex (u32).
///
/// `identity` and `flags` exist once per policy slot so that a reload can
/// switch every endpoint's identity at the same instant as the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub identity: [u32; 2],
    /// `defaults::*` and `endpoint_flags::*`, per slot.
    pub flags: [u32; 2],
    /// The container's own IPv4 address on this veth (network order), or 0.
    pub ipv4: [u8; 4],
    /// The directed broadcast address of the network, or 0.
    pub ipv4_bcast: [u8; 4],
    /// The container's own MAC address on this veth.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The container's own global IPv6 address on this veth, or all zero.
    pub ipv6: [u8; 16],
    /// The container's IPv6 link-local address (EUI-64 of its MAC), or
    /// all zero.
    pub ipv6_ll: [u8; 16],
}

/// Value of the endpoints array (`maps::ENDPOINT_ARRAY`), indexed by
/// ifindex, for ifindexes below `limits::ENDPOINT_ARRAY`.
///
/// The endpoints hash holds every endpoint and is the authority; the array
/// mirrors it for small ifindexes because an array lookup is inlined by the
/// verifier (no helper call, no hashing), the largest single cost of an
/// established packet otherwise. A slot counts only while `present` is 1;
/// the daemon clears `present` before it rewrites or removes an endpoint
/// and sets it again once hash and slot are whole, so a packet never
/// trusts a half-written slot (it reads the hash instead). Invariant: a
/// present slot has its hash entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlot {
    pub present: u32,
    pub _pad: u32,
    pub endpoint: Endpoint,
}

/// Key of the identities map: an exact address in one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub slot: u8,
    pub _pad: [u8; 2],
}

impl IpKey {
    pub const fn v4(addr: [u8; 4], slot: u8) -> Self {
        Self {
            addr: [
                addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            family: family::V4,
            slot,
            _pad: [0; 2],
        }
    }

    pub const fn v6(addr: [u8; 16], slot: u8) -> Self {
        Self {
            addr,
            family: family::V6,
            slot,
            _pad: [0; 2],
        }
    }

    pub const fn from_ip(ip: core::net::IpAddr, slot: u8) -> Self {
        match ip {
            core::net::IpAddr::V4(a) => Self::v4(a.octets(), slot),
            core::net::IpAddr::V6(a) => Self::v6(a.octets(), slot),
        }
    }
}

/// Data part of the CIDR LPM trie key (`aya`'s `Key<CidrKey>`): the
/// prefix length counts 32 bits of slot/family/padding plus the CIDR's own
/// bits, so one trie serves both slots and families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    pub slot: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of [`CidrKey`] in front of the address.
pub const CIDR_KEY_PREFIX_BITS: u32 = 32;

/// Value of the identities map (and of the CIDR trie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityInfo {
    pub identity: u32,
    /// `defaults::*` bits of this identity, and `peer_flags::*` of the
    /// address.
    pub flags: u32,
}

/// Key of the policy map. Lookups go from the most to the least specific:
/// (proto, port), (proto, any port), (any proto, any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub src: u32,
    pub dst: u32,
    /// Destination port in host order; 0 = any.
    pub dport: u16,
    pub proto: u8,
    pub slot: u8,
}

/// Value of the policy map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// [`Action`] as u8.
    pub action: u8,
    pub _pad: [u8; 3],
    /// The deciding rule (1-based); 0 = a default.
    pub rule_id: u32,
}

/// Key of the pairs map: one identity pair (sender, receiver) in one
/// policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub src: u32,
    pub dst: u32,
    /// The policy slot, 0 or 1. A whole word: three padding bytes would
    /// cost the programs a `memset` call per lookup to zero them.
    pub slot: u32,
}

/// One policy entry inside a [`PairValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairEntry {
    /// Destination port; 0 in `protos` and `all`.
    pub port: u16,
    pub proto: u8,
    /// [`Action`] as u8; 0 = no entry.
    pub action: u8,
    pub rule_id: u32,
}

/// Entries of the exact-port and the per-protocol kind a pair value holds
/// inline; a pair with more has `more_ports` / `more_protos` set and the
/// rest is found in the policy map.
pub const PAIR_ENTRIES: usize = 4;

/// Everything the policy map says about one identity pair, found with one
/// lookup: a first packet between two identities no rule names misses once
/// (instead of three times), and a pair with a few ports finds its verdict
/// here. The order is the policy map's: the exact (proto, port) entry,
/// then (proto, any port), then (any proto, any port); the first that
/// exists decides. Written by the daemon from the policy map's entries of
/// the pair (`netiso_daemon::datapath::pairs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairValue {
    /// Exact entries beyond `ports` exist: look them up in the policy map.
    pub more_ports: u8,
    /// Per-protocol entries beyond `protos` exist: likewise.
    pub more_protos: u8,
    pub _pad: [u8; 6],
    /// (any proto, any port), if `action` is not 0.
    pub all: PairEntry,
    /// (proto, port) entries: those with `action` 0 are unused.
    pub ports: [PairEntry; PAIR_ENTRIES],
    /// (proto, any port) entries: those with `action` 0 are unused.
    pub protos: [PairEntry; PAIR_ENTRIES],
}

/// Key of the published-ports map: a TCP or UDP port the host publishes for
/// a container (`docker run -p`), in one policy slot. A container that
/// connects to it on a host address is judged as reaching that container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedKey {
    /// Host port, host order.
    pub port: u16,
    pub proto: u8,
    pub slot: u8,
}

/// Value of the published-ports map: the container behind the port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishedValue {
    pub identity: u32,
    /// `defaults::*` bits of that identity.
    pub flags: u32,
    /// The container's own port, host order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Conntrack key: one connection as seen by one endpoint. State is scoped
/// per endpoint (the host-side veth's ifindex): what one endpoint admitted
/// never lets a packet skip another endpoint's policy. Addresses and ports
/// are the endpoint's (`local`) and the peer's (`remote`), so both
/// directions of a connection find the same single entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// Host order. For ICMP echo the identifier is the opener's port.
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub last_seen_ns: u64,
    /// Policy generation that admitted (or last re-admitted) the flow.
    pub generation: u32,
    /// `ct_flags::*`.
    pub flags: u32,
    pub rule_id: u32,
    /// Low 32 bits of the kernel's jiffies when `last_seen_ns` was last
    /// written (0: unknown). While fewer than `ct_timeouts::FRESH_JIFFIES`
    /// have passed, the entry can neither have expired nor need a refresh,
    /// so a packet skips the clock (jiffies are read without a helper
    /// call).
    pub refreshed: u32,
}

pub mod ct_flags {
    /// The endpoint opened the connection (its first packet left the
    /// container); otherwise the peer opened it.
    pub const OPENED_OUT: u32 = 1 << 0;
    /// A packet of the reply direction has been seen (TCP: handshake answered).
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// TCP FIN or RST seen: the connection is closing.
    pub const CLOSING: u32 = 1 << 2;
    /// The flow was admitted by an `audit` rule.
    pub const AUDIT: u32 = 1 << 3;
    /// DNS a container sent to learn names from (its endpoint resolves
    /// names some rule allows): every packet takes the full path, where
    /// queries are copied and answers held for the daemon.
    pub const WATCHED: u32 = 1 << 4;
    /// The endpoint opened it to an address of a container whose veth
    /// netiso manages on this host (`peer_flags::LOCAL_ENDPOINT`): a packet
    /// of it the sender's fast path passes is marked `CROSS_VETH_MARK`.
    pub const LOCAL_PEER: u32 = 1 << 5;
}

/// Connection-tracking lifetimes: an entry idle longer than this is gone
/// (its next packet is judged as a new flow).
pub mod ct_timeouts {
    const S: u64 = 1_000_000_000;
    /// TCP before the handshake is answered.
    pub const TCP_OPENING_NS: u64 = 30 * S;
    pub const TCP_ESTABLISHED_NS: u64 = 24 * 3600 * S;
    /// TCP after FIN or RST.
    pub const TCP_CLOSING_NS: u64 = 10 * S;
    pub const UDP_NS: u64 = 120 * S;
    pub const ICMP_NS: u64 = 30 * S;
    /// Idle time refreshed at most this often (saves writes to shared entries).
    pub const REFRESH_NS: u64 = S;
    /// Jiffies after a refresh during which a packet neither checks expiry
    /// nor refreshes: 64 jiffies are at most 0.64 s for any HZ >= 100
    /// (Linux has HZ 100 to 1000), far below the shortest lifetime (10 s).
    pub const FRESH_JIFFIES: u32 = 64;
}

/// Indexes of the per-CPU error counters (`maps::ERRORS`).
pub mod errors {
    /// A conntrack insert failed (the allowed packet still passes).
    pub const CT_INSERT: u32 = 0;
    /// A flow-table insert failed (the drop is still counted per reason).
    pub const FLOW_INSERT: u32 = 1;
    /// The events ring buffer was full.
    pub const EVENT_LOST: u32 = 2;
    /// A fragment-table insert failed.
    pub const FRAG_INSERT: u32 = 3;
    /// A conntrack entry expired and its flow was judged again.
    pub const CT_EXPIRED: u32 = 4;
    /// Learn mode: a new flow found the learn table full (not recorded;
    /// the packet's verdict is unchanged).
    pub const LEARN_FULL: u32 = 5;
    /// A DNS answer held for the daemon (it sends it on once learned).
    pub const DNS_HELD: u32 = 6;
    /// A DNS message not copied (ring buffer full, or bigger than
    /// `DNS_CAPTURE`): it passes, and nothing is learned from it.
    pub const DNS_MISSED: u32 = 7;
    pub const COUNT: u32 = 8;
    pub const NAMES: [&str; 8] = [
        "ct-insert-failed",
        "flow-insert-failed",
        "event-lost",
        "frag-insert-failed",
        "ct-expired",
        "learn-table-full",
        "dns-held",
        "dns-missed",
    ];
}

/// Key of the fragment table: datagrams whose first fragment passed this
/// endpoint (scoped per endpoint, like conntrack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u16,
    pub proto: u8,
    pub family: u8,
}

/// Key of the learn table: one row per endpoint, direction, peer address,
/// protocol and port of the new flows it let through (learn mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnKey {
    /// The host-side veth that saw the flow's first packet.
    pub ifindex: u32,
    /// The other side: the destination leaving the container, the source
    /// entering it (IPv4 in the first four bytes).
    pub peer: [u8; 16],
    /// Destination port as on the wire, host order (0 for ICMP).
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// [`Direction`] as u8.
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Value of the learn table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnValue {
    /// New flows (connections, first packets) seen.
    pub flows: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC) of the first and last.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The peer identity and port the policy judged (a port the host
    /// publishes stands for the container behind it and its own port).
    pub judged_identity: u32,
    pub judged_port: u16,
    pub _pad: u16,
}

/// The mark of a DNS answer the daemon sends on after learning from it:
/// the programs let it through instead of holding it again. A container
/// cannot set it on what reaches another (the mark is cleared when a
/// packet leaves a network namespace), and nothing is gained by it: it
/// only skips the copy.
pub const DNS_REINJECT_MARK: u32 = 0x6e69_5344;
/// The default of `Settings::cross_mark`: the mark the sender's program
/// puts on a packet of a live connection
/// to a container on this host that its fast path passed (fresh, state
/// unchanged, current policy): the receiver's program lets it in after its
/// own endpoint checks (its address, its MAC, unicast) without a second
/// conntrack lookup, but only when the packet entered the host through a
/// veth netiso manages (`skb->ingress_ifindex`, which the kernel sets and
/// nobody can forge). The mark alone proves nothing: the host or a
/// host-network process can set it (SO_MARK), and those packets carry
/// ingress ifindex 0 (or the interface they came in on). A container's own
/// marks are cleared when its packets leave its namespace, and the sender's
/// program clears this one on everything its fast path did not pass.
///
/// Bridged packets pass the host's netfilter hooks with it (Docker turns
/// on bridge netfilter), so it avoids the bits other tools test there:
/// kube-proxy's 0x4000 and 0x8000, the 0xff0000 byte Tailscale and Weave
/// use, WireGuard's 0xca6c; `cross_veth_mark` in netiso.toml changes it.
pub const DEFAULT_CROSS_VETH_MARK: u32 = 0x1e00_0000;
/// Frame bytes a DNS copy carries at most (longer ones are not copied).
pub const DNS_CAPTURE: usize = 2048;
/// Peers by name one learned address can stand for at once.
pub const FQDN_PEERS: usize = 4;

/// Key of the learned-address map: an endpoint and an address its
/// container resolved (through a name some rule names).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FqdnKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Value of the learned-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnValue {
    /// `bpf_ktime_get_coarse_ns()` clock: new flows to the address are
    /// judged as the names' until then (TTL, at least the minimum, plus
    /// the grace period).
    pub expires_ns: u64,
    /// Identities of the peers by name (0: unused).
    pub identities: [u32; FQDN_PEERS],
}

/// A DNS message copied to the daemon: the frame as it passed the veth.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsCopy {
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Bytes of `data` filled (the whole frame).
    pub len: u32,
    /// [`Direction`] as u8.
    pub direction: u8,
    /// The frame was held: the daemon must send it on.
    pub held: u8,
    pub _pad: [u8; 6],
    pub data: [u8; DNS_CAPTURE],
}

/// Key of the flow table: one row per distinct dropped flow and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The host-side veth that saw the drop.
    pub ifindex: u32,
    /// Destination port in host order (0 for ICMP and non-IP).
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// [`DropReason`] as u8.
    pub reason: u8,
    /// [`Direction`] as u8.
    pub direction: u8,
    pub _pad: [u8; 2],
    pub src_identity: u32,
    pub dst_identity: u32,
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last drop.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub rule_id: u32,
    pub _pad: u32,
}

/// A packets/bytes pair, per CPU, for rule and reason counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A drop or audit event, sent to user space through the events ring
/// buffer (rate limited per CPU, see [`RateState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    pub flow: FlowKey,
    /// Packet length.
    pub len: u32,
    pub rule_id: u32,
    pub _pad: u32,
}

/// Per-CPU state of the event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub window_start_ns: u64,
    pub sent: u32,
    /// Events not sent because of the limit (cumulative).
    pub suppressed: u32,
}

/// The single entry of the settings array.
///
/// A reload writes the new policy into the inactive slot of the policy and
/// identity maps (and the endpoints' per-slot fields), then flips
/// `active_slot` here with one write: every packet reads the slot once and
/// is judged entirely by one policy.
///
/// `active_slot` and `generation` share one aligned 64-bit word that the
/// programs load once per packet, so a packet never pairs one policy's
/// slot with another's generation.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Must equal [`LAYOUT_VERSION`] once the daemon has configured the maps;
    /// until then the programs pass everything (nothing is managed yet).
    pub layout_version: u32,
    /// `settings_flags::*`.
    pub flags: u32,
    pub active_slot: u32,
    /// Incremented on every policy change; conntrack entries from older
    /// generations are re-judged.
    pub generation: u32,
    /// Events per second per CPU; 0 turns events off.
    pub event_rate: u32,
    /// The mark of cross-veth verdicts (see [`DEFAULT_CROSS_VETH_MARK`]);
    /// 0 turns them off (every receiver looks its connection up itself).
    pub cross_mark: u32,
    /// On a Swarm node, the overlays' data path (VXLAN) UDP ports; 0: none.
    /// The policy denies sending to them beyond the containers; these also
    /// keep a container from opening a connection *from* one of them with
    /// anything that is not a container, whose "replies" would reach a
    /// node's VXLAN socket once the NAT between has forgotten the flow.
    pub data_path_ports: [u16; 4],
    /// The rule `stats` names for those drops (the built-in deny's).
    pub data_path_rule: u32,
}

impl Settings {
    /// Whether `port` is one of the data path ports.
    #[inline(always)]
    pub fn is_data_path_port(&self, port: u16) -> bool {
        let p = self.data_path_ports;
        port != 0 && (p[0] == port || p[1] == port || p[2] == port || p[3] == port)
    }
}

pub mod settings_flags {
    /// Let ethertypes other than IPv4, IPv6 and ARP through (dropped by
    /// default: a covert channel around IP policy).
    pub const ALLOW_NON_IP: u32 = 1 << 0;
    /// The CIDR trie of slot 0 / slot 1 has entries (skip the LPM lookup
    /// otherwise: it costs more than a hash lookup).
    pub const CIDRS_SLOT0: u32 = 1 << 1;
    pub const CIDRS_SLOT1: u32 = 1 << 2;
    /// Kernel debug logging (aya-log) on drop paths.
    pub const DEBUG_LOG: u32 = 1 << 3;
}

/// TC verdicts (from linux/pkt_cls.h).
pub mod tc {
    pub const ACT_UNSPEC: i32 = -1;
    pub const ACT_OK: i32 = 0;
    pub const ACT_SHOT: i32 = 2;
    /// netiso's "allowed": not a final pass but "no objection", so that
    /// programs attached after netiso's on the same hook (TCX `NEXT`, or
    /// the next clsact filter) still get their say; with none, the packet
    /// passes. A final `ACT_OK` would skip them.
    pub const PASS: i32 = ACT_UNSPEC;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // `aya::Pod` lets aya copy these to and from the kernel as raw bytes:
    // sound only for `Copy` types that are valid for every bit pattern and
    // have no implicit padding (uninitialised bytes). Every type below is
    // `#[repr(C)]` with only integer and byte-array fields (any bit pattern
    // is valid) and explicit `_pad` fields where alignment would leave a
    // gap. `tests::layouts_have_no_implicit_padding` (below) pins each size
    // to the sum of its fields, so a layout change that adds padding fails.

    // SAFETY: repr(C), u32/u8 fields only: 8 + 8 + 4 + 4 + 6 + 2 (`_pad`)
    // + 16 + 16 = 64 bytes at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: repr(C): two u32 fields, then the padding-free 64-byte
    // `Endpoint` (align 4) at offset 8: 72 bytes, no implicit padding (size
    // test below).
    unsafe impl aya::Pod for EndpointSlot {}
    // SAFETY: repr(C), u8 fields only (align 1, so no padding possible):
    // 16 + 1 + 1 + 2 (`_pad`) = 20 bytes.
    unsafe impl aya::Pod for IpKey {}
    // SAFETY: repr(C), two u32 fields: 8 bytes, no padding.
    unsafe impl aya::Pod for IdentityInfo {}
    // SAFETY: repr(C), integer fields only: 4 + 4 + 2 + 1 + 1 = 12 bytes at
    // align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: repr(C), integer fields only: 1 + 3 (`_pad`) + 4 = 8 bytes at
    // align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: repr(C), integer fields only: 4 + 4 + 4 = 12 bytes at
    // align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for PairKey {}
    // SAFETY: repr(C), integers and PairEntry (2 + 1 + 1 + 4 = 8 bytes at
    // align 4, no padding): 1 + 1 + 6 (`_pad`) + 8 + 32 + 32 = 80 bytes at
    // align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for PairValue {}
    // SAFETY: repr(C), integer fields only: 4 + 16 + 16 + 2 + 2 + 1 + 1 + 2
    // (`_pad`) = 44 bytes at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: repr(C), integer fields only: 8 + 4 + 4 + 4 + 4 = 24 bytes at
    // align 8, no implicit padding (size test below).
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: repr(C), integer fields only: 16 + 16 + 4 + 2 + 1 + 1 + 1 + 1
    // + 2 (`_pad`) + 4 + 4 = 52 bytes at align 4, no implicit padding (size
    // test below).
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: repr(C), integer fields only: 4 + 16 + 16 + 2 + 1 + 1 = 40
    // bytes at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: repr(C), integer fields only: 4 * 8 + 4 + 4 (`_pad`) = 40 bytes
    // at align 8, no implicit padding (size test below).
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: repr(C), two u64 fields: 16 bytes, no padding.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: repr(C, align(8)), six u32 fields (the last `_pad`): 24 bytes,
    // a multiple of 8, so no implicit padding (size test below).
    unsafe impl aya::Pod for Settings {}
    // SAFETY: repr(C), u8 fields only (align 1, so no padding possible):
    // 1 + 1 + 2 (`_pad`) + 16 = 20 bytes.
    unsafe impl aya::Pod for CidrKey {}
    // SAFETY: repr(C): a u64, a `FlowKey` (itself padding-free, 52 bytes at
    // offset 8), then u32 fields at offsets 60, 64 and 68 (`_pad`): 72 bytes
    // at align 8, no implicit padding (size test below).
    unsafe impl aya::Pod for Event {}
    // SAFETY: repr(C), integer fields only: 8 + 4 + 4 = 16 bytes at align 8,
    // no padding.
    unsafe impl aya::Pod for RateState {}
    // SAFETY: repr(C), integer fields only: 2 + 1 + 1 = 4 bytes at align 2,
    // no padding.
    unsafe impl aya::Pod for PublishedKey {}
    // SAFETY: repr(C), integer fields only: 4 + 4 + 2 + 2 (`_pad`) = 12 bytes
    // at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for PublishedValue {}
    // SAFETY: repr(C), integer fields only: 4 + 16 + 2 + 1 + 1 + 1 + 3
    // (`_pad`) = 28 bytes at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for LearnKey {}
    // SAFETY: repr(C), integer fields only: 3 * 8 + 4 + 2 + 2 (`_pad`) = 32
    // bytes at align 8, no implicit padding (size test below).
    unsafe impl aya::Pod for LearnValue {}
    // SAFETY: repr(C), integer fields only: 4 + 1 + 3 (`_pad`) + 16 = 24
    // bytes at align 4, no implicit padding (size test below).
    unsafe impl aya::Pod for FqdnKey {}
    // SAFETY: repr(C), integer fields only: 8 + 4 * 4 = 24 bytes at align
    // 8, no implicit padding (size test below).
    unsafe impl aya::Pod for FqdnValue {}

    impl core::fmt::Display for DropReason {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }
    impl core::fmt::Display for Direction {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    // The layouts are part of the pinned-map contract: a change here must
    // bump LAYOUT_VERSION.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 64);
        assert_eq!(size_of::<EndpointSlot>(), 72);
        assert_eq!(size_of::<IpKey>(), 20);
        assert_eq!(size_of::<IdentityInfo>(), 8);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(size_of::<PairKey>(), 12);
        assert_eq!(size_of::<PairEntry>(), 8);
        assert_eq!(size_of::<PairValue>(), 80);
        assert_eq!(size_of::<CtKey>(), 44);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(size_of::<FlowKey>(), 52);
        assert_eq!(size_of::<FlowValue>(), 40);
        assert_eq!(size_of::<Settings>(), 40);
        assert_eq!(size_of::<CidrKey>(), 20);
        assert_eq!(size_of::<Event>(), 72);
        assert_eq!(size_of::<RateState>(), 16);
        assert_eq!(size_of::<PublishedKey>(), 4);
        assert_eq!(size_of::<PublishedValue>(), 12);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<LearnKey>(), 28);
        assert_eq!(size_of::<LearnValue>(), 32);
        assert_eq!(size_of::<FqdnKey>(), 24);
        assert_eq!(size_of::<FqdnValue>(), 24);
        assert_eq!(size_of::<DnsCopy>(), 24 + DNS_CAPTURE);
        assert_eq!(core::mem::offset_of!(Settings, active_slot), 8);
        assert_eq!(core::mem::offset_of!(Settings, generation), 12);
        assert_eq!(LAYOUT_VERSION, 7);
    }

    #[test]
    fn reasons_round_trip() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_u8(r as u8), Some(r));
            assert!((r as u32) < DROP_REASONS);
        }
        assert_eq!(DropReason::from_u8(0), None);
    }
}
