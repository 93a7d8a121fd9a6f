//! Every map the programs use, in one place. Names and layouts are shared
//! with user space through `netiso-common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netiso_common::{
    errors, limits, CidrKey, Counter, CtKey, CtValue, Endpoint, EndpointSlot, FlowKey, FlowValue,
    FqdnKey, FqdnValue, FragKey, IdentityInfo, IpKey, LearnKey, LearnValue, PairKey, PairValue,
    PolicyKey, PolicyValue, PublishedKey, PublishedValue, RateState, Settings, DROP_REASONS,
};

use crate::parse::Packet;

// What makes touching map values in place sound; each `unsafe` block that
// does so names its case:
// - Pod values: every key and value type of the pinned maps is
//   `#[repr(C)]` with integer fields only (netiso-common), so whatever bytes
//   a reader sees form a valid value.
// - Lifetime: an element a lookup returned stays allocated and readable
//   while the program runs (RCU; the hash and array maps here are
//   preallocated, flags 0). What the kernel does not promise (aya's caveat
//   on `HashMap::get`) is that an element the daemon or another CPU
//   replaces or removes meanwhile keeps its contents: a reader may then
//   see another entry's bytes, a wrong but valid value for one packet,
//   never memory outside the element.
// - Per-CPU values (`PerCpuArray`): TC programs run with bottom halves
//   disabled and never nest on a CPU, so a `&mut` to this CPU's slot is
//   exclusive for the run; user space only reads the counters, and never
//   touches `SCRATCH`.
// - Shared values the programs write (`CONNTRACK`, `FLOWS`, `LEARN`): another CPU
//   may write the same element at the same time (one flow on two CPUs), so
//   a `&mut` to it is not exclusive across CPUs, as in any BPF program that
//   updates shared map values in place. Counters there use atomic adds; the
//   other fields are single aligned stores, so a race loses an update at
//   worst.

#[map(name = "NETISO_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(limits::ENDPOINTS, 0);

/// Endpoints by ifindex below `limits::ENDPOINT_ARRAY`: read first, an
/// inlined lookup (netiso-common's `EndpointSlot`).
#[map(name = "NETISO_EP_ARRAY")]
pub static ENDPOINT_ARRAY: Array<EndpointSlot> = Array::pinned(limits::ENDPOINT_ARRAY, 0);

#[map(name = "NETISO_IDENTITIES")]
pub static IDENTITIES: HashMap<IpKey, IdentityInfo> = HashMap::pinned(limits::IDENTITIES, 0);

#[map(name = "NETISO_CIDRS")]
pub static CIDRS: LpmTrie<CidrKey, IdentityInfo> = LpmTrie::pinned(limits::CIDRS, 0);

#[map(name = "NETISO_POLICY")]
pub static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(limits::POLICY, 0);

#[map(name = "NETISO_PAIRS")]
pub static PAIRS: HashMap<PairKey, PairValue> = HashMap::pinned(limits::PAIRS, 0);

#[map(name = "NETISO_PUBLISHED")]
pub static PUBLISHED: HashMap<PublishedKey, PublishedValue> = HashMap::pinned(limits::PUBLISHED, 0);

#[map(name = "NETISO_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(limits::CONNTRACK, 0);

#[map(name = "NETISO_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(limits::FLOWS, 0);

#[map(name = "NETISO_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::pinned(limits::FRAGS, 0);

/// Learn mode's new flows; a plain hash (not LRU): a full table refuses
/// and counts, it never evicts what the daemon has not read yet.
#[map(name = "NETISO_LEARN")]
pub static LEARN: HashMap<LearnKey, LearnValue> = HashMap::pinned(limits::LEARN, 0);

/// Addresses containers learned for peers by name (written by the daemon
/// from the DNS answers they received).
#[map(name = "NETISO_FQDN")]
pub static FQDN: HashMap<FqdnKey, FqdnValue> = HashMap::pinned(limits::FQDN, 0);

/// DNS messages of endpoints that resolve names, for the daemon.
#[map(name = "NETISO_DNS")]
pub static DNS: RingBuf = RingBuf::pinned(limits::DNS_BYTES, 0);

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

/// Per-CPU scratch space for a drop's flow-table key: built there with
/// word stores (on the stack, the compiler zeroes it with `memset` and
/// copies the addresses with `memmove`, both subprogram calls).
#[map(name = "NETISO_FLOW_KEY")]
pub static FLOW_KEY: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);
