//! Every map the programs use, in one place. Names and layouts are shared
//! with user space through `netiso-common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netiso_common::{
    errors, limits, CidrKey, Counter, CtKey, CtValue, Endpoint, FlowKey, FlowValue, FragKey,
    IdentityInfo, IpKey, PolicyKey, PolicyValue, PublishedKey, PublishedValue, RateState, Settings,
    DROP_REASONS,
};

use crate::parse::Packet;

#[map(name = "NETISO_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(limits::ENDPOINTS, 0);

#[map(name = "NETISO_IDENTITIES")]
pub static IDENTITIES: HashMap<IpKey, IdentityInfo> = HashMap::pinned(limits::IDENTITIES, 0);

#[map(name = "NETISO_CIDRS")]
pub static CIDRS: LpmTrie<CidrKey, IdentityInfo> = LpmTrie::pinned(limits::CIDRS, 0);

#[map(name = "NETISO_POLICY")]
pub static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(limits::POLICY, 0);

#[map(name = "NETISO_PUBLISHED")]
pub static PUBLISHED: HashMap<PublishedKey, PublishedValue> = HashMap::pinned(limits::PUBLISHED, 0);

#[map(name = "NETISO_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(limits::CONNTRACK, 0);

#[map(name = "NETISO_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(limits::FLOWS, 0);

#[map(name = "NETISO_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::pinned(limits::FRAGS, 0);

#[map(name = "NETISO_RULE_STATS")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(limits::RULES, 0);

#[map(name = "NETISO_REASON_STATS")]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(DROP_REASONS, 0);

#[map(name = "NETISO_ERRORS")]
pub static ERRORS: PerCpuArray<Counter> = PerCpuArray::pinned(errors::COUNT, 0);

#[map(name = "NETISO_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map(name = "NETISO_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(limits::EVENTS_BYTES, 0);

#[map(name = "NETISO_EVENT_RATE")]
pub static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// Per-CPU scratch space: the parsed packet is too big for the 512-byte
/// BPF stack next to everything else (no two TC programs nest on one CPU).
#[map(name = "NETISO_SCRATCH")]
pub static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);
