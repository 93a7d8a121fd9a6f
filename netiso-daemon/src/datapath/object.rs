//! Owns the loaded eBPF object: pins, attachments and map contents.
//!
//! Maps are pinned under `<pin_dir>/maps-v<LAYOUT_VERSION>` so that a layout
//! change gets fresh maps instead of misread old ones; links are pinned under
//! `<pin_dir>/links` so enforcement outlives the daemon. A policy change is
//! written into the inactive slot and switched on with one write to the
//! settings map (see `netiso_common::Settings`).
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use netiso_common::{
    limits, maps, programs, settings_flags, CidrKey, Endpoint, EndpointSlot, IdentityInfo, IpKey,
    PairKey, PairValue, PolicyKey, PolicyValue, PublishedKey, PublishedValue, Settings,
    CIDR_KEY_PREFIX_BITS, LAYOUT_VERSION,
};
use tracing::{debug, info, warn};

/// The compiled TC programs (built by build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netiso"));

/// What one managed veth should look like in the endpoints map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Interface name in the namespace the daemon runs in (for attaching).
    pub ifname: String,
    pub identity: u32,
    /// `defaults::*` and `endpoint_flags::*`.
    pub flags: u32,
    pub ipv4: Option<Ipv4Addr>,
    /// The container's global IPv6 address on this veth, if any.
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
    /// Prefix length of `ipv4` on its network: its directed broadcast
    /// address reaches the endpoint too.
    pub ipv4_prefix_len: Option<u8>,
    /// The network namespace the veth is in when it is not the daemon's
    /// own (a Swarm overlay's); the endpoint id is then `(k << NS_SHIFT) +
    /// ifindex` and the veth gets the programs loaded with `NS_BASE = k <<
    /// NS_SHIFT`.
    pub netns: Option<PathBuf>,
}

impl EndpointSpec {
    /// The network's directed broadcast address, when the prefix is known
    /// and leaves room for one.
    pub fn ipv4_broadcast(&self) -> Option<Ipv4Addr> {
        let ip = u32::from(self.ipv4?);
        let len = self.ipv4_prefix_len?;
        if len == 0 || len >= 31 {
            return None;
        }
        Some(Ipv4Addr::from(ip | (u32::MAX >> len)))
    }

    /// The endpoint's IPv6 link-local address: the kernel's default
    /// (EUI-64 of the MAC) for a veth in a new network namespace. None for
    /// an endpoint in another namespace (a Swarm overlay's): IPv6 is not
    /// judged there, so such an endpoint has no IPv6 address at all and
    /// its IPv6 is dropped (`spoofed-ip` leaving, `not-for-endpoint`
    /// entering).
    pub fn ipv6_link_local(&self) -> Option<Ipv6Addr> {
        if self.netns.is_some() {
            return None;
        }
        self.mac.map(link_local_of)
    }
}

/// fe80::/64 with the EUI-64 interface identifier of `mac`.
pub fn link_local_of(mac: [u8; 6]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

/// The complete desired contents of the datapath maps. Keys carry slot 0;
/// the datapath writes them into whichever slot it is filling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub endpoints: BTreeMap<u32, EndpointSpec>,
    pub identities: BTreeMap<IpKey, IdentityInfo>,
    /// CIDR peers: (network address, prefix length) -> identity. Exact
    /// addresses in `identities` win over these.
    pub cidrs: BTreeMap<(IpAddr, u8), IdentityInfo>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Ports the host publishes for containers: who is behind each.
    pub published: BTreeMap<PublishedKey, PublishedValue>,
    /// On a Swarm node: the data path's UDP ports (at most 4, 0 for none)
    /// and the built-in rule that denies them (`Settings::data_path_ports`).
    pub data_path_ports: [u16; 4],
    pub data_path_rule: u32,
}

/// What an `apply` did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The policy slot was switched (a full, atomic change).
    pub switched: bool,
    pub generation: u32,
    pub attached: usize,
    pub detached: usize,
}

/// How programs are attached to veths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), else clsact.
    #[default]
    Auto,
    Tcx,
    /// clsact qdisc + netlink filters (kernels before 6.6).
    Netlink,
}

/// What the links directory remembers of a netlink (clsact) filter. bpffs
/// holds no regular files and no names with dots, so the record is the
/// name of an empty directory: `<ifindex>-<dir>_nl_<priority>_<handle>`.
#[derive(Debug, PartialEq, Eq)]
struct NlRecord {
    priority: u16,
    handle: u32,
}

impl NlRecord {
    fn prefix(base: &Path) -> String {
        format!(
            "{}_nl_",
            base.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// The record for the link whose TCX pin would be `base`, if any.
    fn find(base: &Path) -> Option<(PathBuf, Self)> {
        let prefix = Self::prefix(base);
        let dir = base.parent()?;
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (priority, handle) = name.strip_prefix(&prefix)?.split_once('_')?;
            let rec = Self {
                priority: priority.parse().ok()?,
                handle: handle.parse().ok()?,
            };
            Some((e.path(), rec))
        })
    }

    fn save(&self, base: &Path) -> Result<()> {
        if let Some((old, _)) = Self::find(base) {
            let _ = std::fs::remove_dir(old);
        }
        let path = base.with_file_name(format!(
            "{}{}_{}",
            Self::prefix(base),
            self.priority,
            self.handle
        ));
        std::fs::create_dir(&path).with_context(|| format!("recording {}", path.display()))
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    mode: AttachMode,
    pin_dir: PathBuf,
    /// What the maps hold now, once known (None right after adopting pins
    /// left by an earlier run).
    current: Option<Desired>,
    settings: Settings,
    /// ifindex -> interface name we attached to.
    attached: BTreeMap<u32, String>,
    /// Map sizes the object was loaded with (the instances below too).
    sizes: Vec<(String, u32)>,
    /// The programs loaded once more for each other network namespace k
    /// (a Swarm overlay's) with `NS_BASE = k << NS_SHIFT`, on the same
    /// pinned maps.
    ns_instances: BTreeMap<u32, Ebpf>,
    /// The programs for the next namespace slot, loading in the background
    /// ahead of its first endpoint.
    spare: Option<(u32, std::thread::JoinHandle<Result<Ebpf>>)>,
}

/// The object with its maps at `map_dir` (made or re-adopted) and both TC
/// programs loaded, with the `NS_BASE` global set to `ns_base` (0 for the
/// daemon's own namespace: the object's default, left as built).
fn load_object(map_dir: &Path, sizes: &[(String, u32)], ns_base: u32) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(map_dir);
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    if ns_base != 0 {
        loader.override_global("NS_BASE", &ns_base, true);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the netiso eBPF object")?;
    for name in [programs::FROM_CONTAINER, programs::TO_CONTAINER] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        if let Err(e) = prog.load() {
            // The verifier's last words say which instruction and why.
            let log = match &e {
                aya::programs::ProgramError::LoadError { verifier_log, .. } => {
                    let text = verifier_log.to_string();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                }
                _ => String::new(),
            };
            return Err(e).with_context(|| {
                format!("the kernel rejected program {name}; verifier log tail:\n{log}")
            });
        }
    }
    Ok(ebpf)
}

impl Datapath {
    /// Loads the programs, creating or re-adopting the pinned maps under
    /// `pin_dir`. Enforcement already pinned there keeps running untouched
    /// until the first `apply`.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        Self::load_with_sizes(pin_dir, &[])
    }

    /// [`Datapath::load`] with some maps sized differently (tests shrink
    /// tables to see them overflow). Only applies to maps not pinned yet.
    pub fn load_with_sizes(pin_dir: &Path, sizes: &[(&str, u32)]) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        let map_dir = pin_dir.join(format!("maps-v{LAYOUT_VERSION}"));
        std::fs::create_dir_all(&map_dir).with_context(|| {
            format!(
                "cannot create {}; is bpffs mounted at /sys/fs/bpf and are we root?",
                map_dir.display()
            )
        })?;
        std::fs::create_dir_all(pin_dir.join("links"))?;
        let sizes: Vec<(String, u32)> = sizes.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        let ebpf = load_object(&map_dir, &sizes, 0)?;
        let mut settings = read_settings(&ebpf)?;
        let fresh = settings.layout_version != LAYOUT_VERSION;
        if fresh {
            // Fresh maps: events on from the start (a later
            // `set_event_rate` overrides it).
            settings.event_rate = limits::DEFAULT_EVENT_RATE;
            settings.cross_mark = netiso_common::DEFAULT_CROSS_VETH_MARK;
        }
        let mut dp = Self {
            ebpf,
            mode: AttachMode::Auto,
            pin_dir: pin_dir.to_owned(),
            current: None,
            settings,
            attached: BTreeMap::new(),
            sizes,
            ns_instances: BTreeMap::new(),
            spare: None,
        };
        if fresh {
            dp.write_settings()?;
        }
        dp.clear_inactive_slot()?;
        dp.remove_old_layouts();
        Ok(dp)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether ethertypes other than IPv4, IPv6 and ARP pass managed
    /// endpoints (dropped by default: a channel around IP policy).
    pub fn set_allow_non_ip(&mut self, on: bool) -> Result<()> {
        if on {
            self.settings.flags |= settings_flags::ALLOW_NON_IP;
        } else {
            self.settings.flags &= !settings_flags::ALLOW_NON_IP;
        }
        self.write_settings()
    }

    /// How later attachments are made (existing ones stay as they are).
    pub fn set_attach_mode(&mut self, mode: AttachMode) {
        self.mode = mode;
    }

    /// Events per second per CPU sent to user space (0 turns them off).
    pub fn set_event_rate(&mut self, per_second: u32) -> Result<()> {
        self.settings.event_rate = per_second;
        self.write_settings()
    }

    /// The mark of cross-veth verdicts (`Settings::cross_mark`); 0 turns
    /// them off.
    pub fn set_cross_mark(&mut self, mark: u32) -> Result<()> {
        self.settings.cross_mark = mark;
        self.write_settings()
    }

    /// Kernel debug logging (aya-log) of every drop.
    pub fn set_debug_log(&mut self, on: bool) -> Result<()> {
        if on {
            self.settings.flags |= settings_flags::DEBUG_LOG;
        } else {
            self.settings.flags &= !settings_flags::DEBUG_LOG;
        }
        self.write_settings()
    }

    /// How many entries the endpoints map holds.
    /// Learn mode: takes the new flows the programs noted since the last
    /// call.
    pub fn drain_learned(
        &mut self,
    ) -> Result<Vec<(netiso_common::LearnKey, netiso_common::LearnValue)>> {
        let map = self
            .ebpf
            .map_mut(maps::LEARN)
            .context("the eBPF object has no learn map")?;
        crate::datapath::counters::drain_learn(map)
    }

    pub fn endpoint_capacity(&self) -> Result<u32> {
        let map = self
            .ebpf
            .map(maps::ENDPOINTS)
            .context("endpoints map missing")?;
        let data = match map {
            aya::maps::Map::HashMap(m) => m,
            _ => anyhow::bail!("the endpoints map is not a hash map"),
        };
        Ok(data.info()?.max_entries())
    }

    /// The endpoints written by the last successful apply.
    pub fn applied_endpoints(&self) -> BTreeSet<u32> {
        self.current
            .as_ref()
            .map(|c| c.endpoints.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Interfaces with programs attached by this process.
    pub fn attached(&self) -> &BTreeMap<u32, String> {
        &self.attached
    }

    // Added by `ops` (issue 5) for the daemon's periodic resync; lead: keep
    // or replace with your own way to repair drift.
    /// Forgets what this process believes the maps and attachments hold, so
    /// that the next [`apply`](Self::apply) rewrites every entry (slot
    /// switch) and re-attaches every endpoint (re-adopting pinned links in
    /// place): repairs anything changed behind the daemon's back.
    pub fn forget_applied(&mut self) {
        self.current = None;
        self.attached.clear();
    }

    /// Brings maps and attachments to `desired`. A change that alters the
    /// verdict of any identity pair is written to the inactive slot and
    /// switched on at once; additions that cannot change a verdict go into
    /// the active slot directly.
    #[tracing::instrument(skip_all, fields(endpoints = desired.endpoints.len(), policy = desired.policy.len()))]
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        // Programs before endpoints: a veth whose endpoint is in the map is
        // a trusted sender for `CROSS_VETH_MARK` (its program judged every
        // packet it carries), so its programs are attached first (until
        // its endpoint is written they pass everything, as on any veth
        // netiso does not manage). A veth that cannot be attached, and has
        // no programs from before, stays out of the maps; the error is
        // returned once the rest is applied.
        let (attached, failed) = self.attach_endpoints(desired)?;
        let kept;
        let desired = if failed.is_empty() {
            desired
        } else {
            let mut d = desired.clone();
            for (ifindex, _) in &failed {
                d.endpoints.remove(ifindex);
            }
            kept = d;
            &kept
        };
        let incremental = self
            .current
            .as_ref()
            .is_some_and(|cur| only_additions_and_removals(cur, desired));
        if incremental {
            let cur = self.current.clone().unwrap_or_default();
            let removed = self.apply_incremental(&cur, desired)?;
            if removed {
                self.settings.generation = self.settings.generation.wrapping_add(1);
                self.write_settings()?;
            }
        } else {
            self.apply_switch(desired)?;
            report.switched = true;
        }
        let detached = self.detach_others(desired)?;
        report.attached = attached;
        report.detached = detached;
        report.generation = self.settings.generation;
        self.current = Some(desired.clone());
        debug!(?report, "datapath applied");
        match failed.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(report),
        }
    }

    fn apply_switch(&mut self, desired: &Desired) -> Result<()> {
        let active = self.settings.active_slot as u8 & 1;
        let next = active ^ 1;
        {
            let mut ids = self.identities_map()?;
            for (k, v) in &desired.identities {
                ids.insert(IpKey { slot: next, ..*k }, *v, 0)
                    .context("writing the identities map (full?)")?;
            }
        }
        {
            let mut cidrs = self.cidrs_map()?;
            for ((addr, len), v) in &desired.cidrs {
                cidrs
                    .insert(&cidr_key(*addr, *len, next), *v, 0)
                    .with_context(|| format!("writing CIDR {addr}/{len} (trie full?)"))?;
            }
        }
        {
            let mut pol = self.policy_map()?;
            for (k, v) in &desired.policy {
                pol.insert(PolicyKey { slot: next, ..*k }, *v, 0)
                    .context("writing the policy map (full?)")?;
            }
        }
        {
            let pairs = super::pairs::pairs_of(&desired.policy);
            let mut map = self.pairs_map()?;
            for (k, v) in &pairs {
                map.insert(
                    PairKey {
                        slot: u32::from(next),
                        ..*k
                    },
                    *v,
                    0,
                )
                .context("writing the pairs map (full?)")?;
            }
        }
        {
            let mut published = self.published_map()?;
            for (k, v) in &desired.published {
                published
                    .insert(PublishedKey { slot: next, ..*k }, *v, 0)
                    .context("writing the published-ports map (full?)")?;
            }
        }
        {
            let mut writes = Vec::with_capacity(desired.endpoints.len());
            let eps = self.endpoints_map()?;
            for (ifindex, spec) in &desired.endpoints {
                // Addresses from the spec; the active slot keeps what
                // packets use now, the next slot gets the new view.
                let fresh = endpoint_value(spec, spec.identity, spec.flags);
                let mut ep = match eps.get(ifindex, 0) {
                    Ok(old) => Endpoint {
                        identity: old.identity,
                        flags: old.flags,
                        ..fresh
                    },
                    Err(_) => fresh,
                };
                ep.identity[next as usize] = spec.identity;
                ep.flags[next as usize] = spec.flags;
                writes.push((*ifindex, ep));
            }
            self.write_endpoints(&writes)
                .context("writing the endpoints map (full?)")?;
        }
        // The switch: one write, after which every packet uses `next`.
        let cidr_flag = |slot: u8| {
            if slot == 0 {
                settings_flags::CIDRS_SLOT0
            } else {
                settings_flags::CIDRS_SLOT1
            }
        };
        // The next slot's CIDR flag first (that slot is not in use yet),
        // so no packet pairs the new slot with its old flag.
        if !desired.cidrs.is_empty() {
            self.settings.flags |= cidr_flag(next);
            self.write_settings()?;
        }
        if desired.cidrs.is_empty() {
            self.settings.flags &= !cidr_flag(next);
        }
        self.settings.active_slot = next as u32;
        self.settings.generation = self.settings.generation.wrapping_add(1);
        self.settings.layout_version = LAYOUT_VERSION;
        // With the switch: the ports and the rule id are the new policy's.
        self.settings.data_path_ports = desired.data_path_ports;
        self.settings.data_path_rule = desired.data_path_rule;
        self.write_settings()?;
        info!(
            slot = next,
            generation = self.settings.generation,
            "policy switched"
        );

        // Tidy up: endpoints get both slots equal, the old slot is emptied.
        {
            let keys: Vec<u32> = self
                .endpoints_map()?
                .keys()
                .filter_map(|k| k.ok())
                .collect();
            let mut writes = Vec::new();
            let mut gone = Vec::new();
            for ifindex in keys {
                match desired.endpoints.get(&ifindex) {
                    Some(spec) => {
                        writes.push((ifindex, endpoint_value(spec, spec.identity, spec.flags)));
                    }
                    None => gone.push(ifindex),
                }
            }
            self.write_endpoints(&writes)?;
            self.remove_endpoints(&gone)?;
        }
        self.clear_inactive_slot()
    }

    /// Returns whether anything was removed (which may change verdicts of
    /// live flows, so the caller bumps the generation).
    fn apply_incremental(&mut self, cur: &Desired, desired: &Desired) -> Result<bool> {
        let slot = self.settings.active_slot as u8 & 1;
        let mut removed = false;
        {
            let mut ids = self.identities_map()?;
            for (k, v) in &desired.identities {
                if !cur.identities.contains_key(k) {
                    ids.insert(IpKey { slot, ..*k }, *v, 0)?;
                }
            }
            for k in cur.identities.keys() {
                if !desired.identities.contains_key(k) {
                    remove_ok(ids.remove(&IpKey { slot, ..*k }))?;
                    removed = true;
                }
            }
        }
        let writes: Vec<(u32, Endpoint)> = desired
            .endpoints
            .iter()
            .filter(|(ifindex, spec)| cur.endpoints.get(ifindex) != Some(spec))
            .map(|(ifindex, spec)| (*ifindex, endpoint_value(spec, spec.identity, spec.flags)))
            .collect();
        self.write_endpoints(&writes)?;
        let gone: Vec<u32> = cur
            .endpoints
            .keys()
            .filter(|ifindex| !desired.endpoints.contains_key(ifindex))
            .copied()
            .collect();
        removed |= !gone.is_empty();
        self.remove_endpoints(&gone)?;
        Ok(removed)
    }

    /// Attaches both programs to every desired endpoint. Links are pinned
    /// so they outlive the daemon. Returns how many were attached, and the
    /// endpoints that could not be and carry no programs from before.
    fn attach_endpoints(
        &mut self,
        desired: &Desired,
    ) -> Result<(usize, Vec<(u32, anyhow::Error)>)> {
        let mut attached = 0;
        let mut failed = Vec::new();
        for (ifindex, spec) in &desired.endpoints {
            // In another namespace the same name and index may be another
            // veth once the namespace is made anew (an engine restart
            // recreates an overlay's, and its ifindexes and `vethN` names
            // start over): the namespace's inode is part of what was
            // attached.
            let key = match &spec.netns {
                None => spec.ifname.clone(),
                Some(ns) => {
                    use std::os::unix::fs::MetadataExt as _;
                    let ino = std::fs::metadata(ns).map(|m| m.ino()).unwrap_or(0);
                    format!("{}@{ino}", spec.ifname)
                }
            };
            if self.attached.get(ifindex) == Some(&key) {
                continue;
            }
            // A namespace can go between the lookup and here (its network's
            // last endpoint left): that endpoint stays out, tried again at
            // the next apply, the others go on.
            let r = match &spec.netns {
                None => self.attach(*ifindex, &spec.ifname),
                Some(ns) => self.attach_in_netns(*ifindex, &spec.ifname, ns),
            };
            match r {
                Ok(()) => {
                    self.attached.insert(*ifindex, key);
                    attached += 1;
                }
                Err(e) => failed.push((
                    *ifindex,
                    e.context(format!("attaching to {} (endpoint {ifindex})", spec.ifname)),
                )),
            }
        }
        if !failed.is_empty() {
            let pinned = self.pinned_link_ifindexes()?;
            failed.retain(|(ifindex, _)| !pinned.contains(ifindex));
        }
        Ok((attached, failed))
    }

    /// Detaches the endpoints no longer desired.
    fn detach_others(&mut self, desired: &Desired) -> Result<usize> {
        let mut detached = 0;
        let want: BTreeSet<u32> = desired.endpoints.keys().copied().collect();
        for ifindex in self.pinned_link_ifindexes()? {
            if !want.contains(&ifindex) {
                self.detach(ifindex)?;
                detached += 1;
            }
        }
        self.attached.retain(|k, _| want.contains(k));
        // Instances of namespaces no endpoint is in any more go (their
        // links, if any, were removed above).
        // Idle ones are kept (a namespace comes back with its network's next
        // local task, with the same slot), the oldest dropped beyond a few.
        let used: BTreeSet<u32> = want.iter().map(|id| id >> limits::NS_SHIFT).collect();
        let idle: Vec<u32> = self
            .ns_instances
            .keys()
            .copied()
            .filter(|k| !used.contains(k))
            .collect();
        for k in idle
            .iter()
            .take(idle.len().saturating_sub(IDLE_NS_INSTANCES))
        {
            self.ns_instances.remove(k);
        }
        Ok(detached)
    }

    /// The programs for namespace slot `k` (≥ 1): loaded on first use with
    /// `NS_BASE = k << NS_SHIFT` on the same pinned maps, so that their
    /// endpoint ids are `(k << NS_SHIFT) + ifindex`.
    pub fn ns_instance(&mut self, k: u32) -> Result<&mut Ebpf> {
        if !(limits::FIRST_NS_SLOT..1 << (32 - limits::NS_SHIFT)).contains(&k) {
            bail!("namespace slot {k} out of range");
        }
        if !self.ns_instances.contains_key(&k) && self.spare.as_ref().is_some_and(|s| s.0 == k) {
            if let Some((_, h)) = self.spare.take() {
                match h.join() {
                    Ok(Ok(ebpf)) => {
                        info!(
                            slot = k,
                            "programs loaded ahead for a new network namespace taken"
                        );
                        self.ns_instances.insert(k, ebpf);
                    }
                    Ok(Err(e)) => warn!(
                        slot = k,
                        error = format!("{e:#}"),
                        "loading ahead failed; loading again"
                    ),
                    Err(_) => warn!(slot = k, "loading ahead panicked; loading again"),
                }
            }
        }
        if !self.ns_instances.contains_key(&k) {
            let map_dir = self.pin_dir.join(format!("maps-v{LAYOUT_VERSION}"));
            let ebpf = load_object(&map_dir, &self.sizes, k << limits::NS_SHIFT)
                .with_context(|| format!("loading the programs for namespace slot {k}"))?;
            info!(slot = k, "programs loaded for another network namespace");
            self.ns_instances.insert(k, ebpf);
        }
        self.ns_instances
            .get_mut(&k)
            .context("namespace instance just loaded")
    }

    /// Starts loading the programs for namespace slot `k` on a thread of
    /// their own, so that the first endpoint of the next new namespace (a
    /// Swarm overlay's first local task) does not wait for the verifier
    /// with its veth unenforced. Nothing is attached until
    /// [`ns_instance`](Self::ns_instance) takes them.
    pub fn preload_ns_instance(&mut self, k: u32) {
        let in_range = (limits::FIRST_NS_SLOT..1 << (32 - limits::NS_SHIFT)).contains(&k);
        if !in_range
            || self.ns_instances.contains_key(&k)
            || self.spare.as_ref().is_some_and(|s| s.0 == k)
        {
            return;
        }
        let map_dir = self.pin_dir.join(format!("maps-v{LAYOUT_VERSION}"));
        let sizes = self.sizes.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("netiso-preload-{k}"))
            .spawn(move || {
                load_object(&map_dir, &sizes, k << limits::NS_SHIFT)
                    .with_context(|| format!("loading the programs for namespace slot {k}"))
            });
        match spawned {
            Ok(h) => {
                debug!(
                    slot = k,
                    "loading the programs for the next network namespace ahead"
                );
                self.spare = Some((k, h));
            }
            Err(e) => warn!(slot = k, error = %e, "cannot load ahead"),
        }
    }

    /// Attaches to the veth `ifname` of the network namespace at `netns`
    /// (endpoint id `(k << NS_SHIFT) + ifindex`, k ≥ 1): the programs are
    /// loaded once per k with `NS_BASE = k << NS_SHIFT` on the same pinned
    /// maps, and attached (TCX, pinned like the others) from a thread that
    /// joined that namespace, where the ifname means that veth.
    fn attach_in_netns(&mut self, id: u32, ifname: &str, netns: &Path) -> Result<()> {
        let k = id >> limits::NS_SHIFT;
        if k < limits::FIRST_NS_SLOT {
            bail!("endpoint {id} in {} has no namespace slot", netns.display());
        }
        if self.mode == AttachMode::Netlink {
            bail!("endpoints in other network namespaces need TCX (kernel 6.6 or later)");
        }
        let pins = [
            self.link_pin(id, TcAttachType::Ingress),
            self.link_pin(id, TcAttachType::Egress),
        ];
        let ebpf = self.ns_instance(k)?;
        let ifname = ifname.to_string();
        crate::host::netlink::in_netns(netns, move || attach_tcx_with(ebpf, &pins, &ifname))?;
        debug!(id, netns = %netns.display(), "attached in another namespace");
        Ok(())
    }

    fn link_pin(&self, ifindex: u32, attach: TcAttachType) -> PathBuf {
        let dir = match attach {
            TcAttachType::Ingress => "from",
            _ => "to",
        };
        self.pin_dir.join("links").join(format!("{ifindex}-{dir}"))
    }

    fn attach(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        let tcx = match self.mode {
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
            AttachMode::Auto => {
                use aya::util::KernelVersion;
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
        };
        if tcx {
            self.attach_tcx(ifindex, ifname)
        } else {
            self.attach_netlink(ifindex, ifname)
        }
    }

    /// Legacy attachment for kernels without TCX: a clsact qdisc and a
    /// direct-action filter per direction. Netlink filters cannot be
    /// pinned; they stay until removed, and a record of each (ifname,
    /// priority, handle) in the links directory lets a later run replace
    /// the program in place or remove it.
    fn attach_netlink(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        match aya::programs::tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            // Already there (ours from an earlier run, or someone else's).
            Err(aya::programs::tc::TcError::NetlinkError(e))
                if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).context(format!("adding a clsact qdisc to {ifname}")),
        }
        for (prog_name, attach) in [
            (programs::FROM_CONTAINER, TcAttachType::Ingress),
            (programs::TO_CONTAINER, TcAttachType::Egress),
        ] {
            let base = self.link_pin(ifindex, attach);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .context("program missing")?
                .try_into()?;
            let old = NlRecord::find(&base).map(|(_, r)| r);
            let replaced = old.and_then(|r| {
                let link = SchedClassifierLink::attached(
                    ifname,
                    attach,
                    r.priority,
                    r.handle.into(),
                    None,
                )
                .ok()?;
                prog.attach_to_link(link).ok()
            });
            let link_id = match replaced {
                Some(id) => id,
                None => prog.attach_with_options(
                    ifname,
                    attach,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )?,
            };
            let link = prog.take_link(link_id)?;
            let rec = NlRecord {
                priority: link.priority()?,
                handle: link.handle()?.into(),
            };
            rec.save(&base)?;
            // Dropping the link would detach the filter: enforcement must
            // outlive this process, and the record above finds it again.
            std::mem::forget(link);
        }
        debug!(ifindex, ifname, "attached (clsact)");
        Ok(())
    }

    fn attach_tcx(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        let pins = [
            self.link_pin(ifindex, TcAttachType::Ingress),
            self.link_pin(ifindex, TcAttachType::Egress),
        ];
        attach_tcx_with(&mut self.ebpf, &pins, ifname)?;
        debug!(ifindex, ifname, "attached");
        Ok(())
    }

    /// Removes the pinned links of `ifindex`, which detaches the programs.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for (prog_name, attach) in [
            (programs::FROM_CONTAINER, TcAttachType::Ingress),
            (programs::TO_CONTAINER, TcAttachType::Egress),
        ] {
            if let Some((path, _)) = NlRecord::find(&self.link_pin(ifindex, attach)) {
                // The interface may be gone already (and the filter with it);
                // only filters carrying our program's name are removed.
                if let Ok(Some(name)) = crate::host::netlink::link_name(ifindex) {
                    let _ = aya::programs::tc::qdisc_detach_program(&name, attach, prog_name);
                }
                let _ = std::fs::remove_dir(path);
            }
            let pin = self.link_pin(ifindex, attach);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(format!("removing {}", pin.display())),
            }
        }
        self.attached.remove(&ifindex);
        debug!(ifindex, "detached");
        Ok(())
    }

    fn pinned_link_ifindexes(&self) -> Result<BTreeSet<u32>> {
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(self.pin_dir.join("links"))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(idx) = name.split('-').next().and_then(|s| s.parse().ok()) {
                out.insert(idx);
            }
        }
        Ok(out)
    }

    /// Removes every pin (links and maps) under the pin directory: all
    /// enforcement stops. Used by `netiso cleanup` and by tests.
    pub fn remove_pins(pin_dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(pin_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context(format!("removing {}", pin_dir.display())),
        }
    }

    fn remove_old_layouts(&self) {
        let Ok(dir) = std::fs::read_dir(&self.pin_dir) else {
            return;
        };
        let keep = format!("maps-v{LAYOUT_VERSION}");
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("maps-v") && name != keep {
                warn!(dir = %entry.path().display(), "removing maps of an older layout");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Deletes identities, CIDR peers and policy entries of the slot not in use.
    fn clear_inactive_slot(&mut self) -> Result<()> {
        let inactive = (self.settings.active_slot as u8 & 1) ^ 1;
        {
            let mut cidrs = self.cidrs_map()?;
            let stale: Vec<LpmKey<CidrKey>> = cidrs
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.data().slot == inactive)
                .collect();
            for k in stale {
                remove_ok(cidrs.remove(&k))?;
            }
        }
        {
            let mut ids = self.identities_map()?;
            let stale: Vec<IpKey> = ids
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.slot == inactive)
                .collect();
            for k in stale {
                remove_ok(ids.remove(&k))?;
            }
        }
        {
            let mut published = self.published_map()?;
            let stale: Vec<PublishedKey> = published
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.slot == inactive)
                .collect();
            for k in stale {
                remove_ok(published.remove(&k))?;
            }
        }
        {
            let mut pairs = self.pairs_map()?;
            let stale: Vec<PairKey> = pairs
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.slot == u32::from(inactive))
                .collect();
            for k in stale {
                remove_ok(pairs.remove(&k))?;
            }
        }
        let mut pol = self.policy_map()?;
        let stale: Vec<PolicyKey> = pol
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.slot == inactive)
            .collect();
        for k in stale {
            remove_ok(pol.remove(&k))?;
        }
        Ok(())
    }

    fn write_settings(&mut self) -> Result<()> {
        let mut arr: Array<&mut MapData, Settings> = Array::try_from(
            self.ebpf
                .map_mut(maps::SETTINGS)
                .context("settings map missing")?,
        )?;
        arr.set(0, self.settings, 0).context("writing settings")?;
        Ok(())
    }

    /// Writes endpoints. The hash holds every endpoint and is what the
    /// programs fall back to; ifindexes below `limits::ENDPOINT_ARRAY` are
    /// mirrored in the array, which the programs read first
    /// (`netiso_common::EndpointSlot`). A slot about to change is marked
    /// absent first (packets then read the hash), the hash is written, and
    /// after a pause for packets that read the slot just before, the slot
    /// gets its new bytes and only then `present` again (a write that
    /// changes one word): no packet trusts a half-written slot.
    pub fn write_endpoints(&mut self, writes: &[(u32, Endpoint)]) -> Result<()> {
        let mut slots = self.endpoint_array()?;
        let mut changed = Vec::new();
        let mut cleared = false;
        for (ifindex, ep) in writes {
            if *ifindex >= limits::ENDPOINT_ARRAY {
                continue;
            }
            let mut slot = slots.get(ifindex, 0)?;
            if slot.present == 1 && slot.endpoint == *ep {
                continue;
            }
            if slot.present != 0 {
                slot.present = 0;
                slots.set(*ifindex, slot, 0)?;
                cleared = true;
            }
            changed.push((*ifindex, *ep));
        }
        let mut eps = self.endpoints_map()?;
        for (ifindex, ep) in writes {
            eps.insert(ifindex, ep, 0)?;
        }
        if cleared {
            std::thread::sleep(SLOT_GRACE);
        }
        let mut slots = self.endpoint_array()?;
        for (ifindex, ep) in &changed {
            let mut slot = EndpointSlot {
                present: 0,
                _pad: 0,
                endpoint: *ep,
            };
            slots.set(*ifindex, slot, 0)?;
            slot.present = 1;
            slots.set(*ifindex, slot, 0)?;
        }
        Ok(())
    }

    /// Removes endpoints: the array slot is marked absent before the hash
    /// entry goes, so a present slot always has its hash entry.
    pub fn remove_endpoints(&mut self, gone: &[u32]) -> Result<()> {
        let mut slots = self.endpoint_array()?;
        for ifindex in gone {
            if *ifindex < limits::ENDPOINT_ARRAY {
                let mut slot = slots.get(ifindex, 0)?;
                if slot.present != 0 {
                    slot.present = 0;
                    slots.set(*ifindex, slot, 0)?;
                }
            }
        }
        let mut eps = self.endpoints_map()?;
        for ifindex in gone {
            remove_ok(eps.remove(ifindex))?;
        }
        Ok(())
    }

    fn endpoint_array(&mut self) -> Result<Array<&mut MapData, EndpointSlot>> {
        Ok(Array::try_from(
            self.ebpf
                .map_mut(maps::ENDPOINT_ARRAY)
                .context("endpoints array missing")?,
        )?)
    }

    fn endpoints_map(&mut self) -> Result<BpfHashMap<&mut MapData, u32, Endpoint>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::ENDPOINTS)
                .context("endpoints map missing")?,
        )?)
    }

    fn identities_map(&mut self) -> Result<BpfHashMap<&mut MapData, IpKey, IdentityInfo>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::IDENTITIES)
                .context("identities map missing")?,
        )?)
    }

    fn cidrs_map(&mut self) -> Result<LpmTrie<&mut MapData, CidrKey, IdentityInfo>> {
        Ok(LpmTrie::try_from(
            self.ebpf.map_mut(maps::CIDRS).context("CIDR map missing")?,
        )?)
    }

    fn published_map(&mut self) -> Result<BpfHashMap<&mut MapData, PublishedKey, PublishedValue>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::PUBLISHED)
                .context("published-ports map missing")?,
        )?)
    }

    fn pairs_map(&mut self) -> Result<BpfHashMap<&mut MapData, PairKey, PairValue>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::PAIRS)
                .context("pairs map missing")?,
        )?)
    }

    fn policy_map(&mut self) -> Result<BpfHashMap<&mut MapData, PolicyKey, PolicyValue>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::POLICY)
                .context("policy map missing")?,
        )?)
    }
}

/// Attaches both programs of `ebpf` to `ifname` (in the calling thread's
/// network namespace) with TCX and pins the links at `pins` (from, to).
/// A link pinned by an earlier run is re-adopted by swapping the program
/// in place, which leaves no moment without enforcement.
fn attach_tcx_with(ebpf: &mut Ebpf, pins: &[PathBuf; 2], ifname: &str) -> Result<()> {
    for ((prog_name, attach), pin) in [
        (programs::FROM_CONTAINER, TcAttachType::Ingress),
        (programs::TO_CONTAINER, TcAttachType::Egress),
    ]
    .into_iter()
    .zip(pins)
    {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(prog_name)
            .context("program missing")?
            .try_into()?;
        let link_id = match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let fd_link = FdLink::from(old);
                let link = SchedClassifierLink::try_from(fd_link)?;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    Err(e) => {
                        // The interface the link was made for is gone
                        // (ifindex reused): start afresh.
                        debug!(error = %e, pin = %pin.display(), "stale link pin");
                        let _ = std::fs::remove_file(pin);
                        prog.attach_with_options(
                            ifname,
                            attach,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )?
                    }
                }
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                prog.attach_with_options(
                    ifname,
                    attach,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )?
            }
            Err(e) => return Err(e).context(format!("opening {}", pin.display())),
        };
        let link = prog.take_link(link_id)?;
        let fd_link: FdLink = link.try_into()?;
        let _ = std::fs::remove_file(pin);
        fd_link
            .pin(pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(())
}

fn read_settings(ebpf: &Ebpf) -> Result<Settings> {
    let arr: Array<&MapData, Settings> =
        Array::try_from(ebpf.map(maps::SETTINGS).context("settings map missing")?)?;
    Ok(arr.get(&0, 0)?)
}

fn endpoint_value(spec: &EndpointSpec, identity: u32, flags: u32) -> Endpoint {
    Endpoint {
        identity: [identity; 2],
        flags: [flags; 2],
        ipv4: spec.ipv4.map(|a| a.octets()).unwrap_or_default(),
        ipv4_bcast: spec
            .ipv4_broadcast()
            .map(|a| a.octets())
            .unwrap_or_default(),
        mac: spec.mac.unwrap_or_default(),
        _pad: [0; 2],
        ipv6: spec.ipv6.map(|a| a.octets()).unwrap_or_default(),
        ipv6_ll: spec
            .ipv6_link_local()
            .map(|a| a.octets())
            .unwrap_or_default(),
    }
}

/// The trie key of a CIDR in one slot (the prefix covers slot, family and
/// padding, then the CIDR's own bits).
fn cidr_key(addr: IpAddr, len: u8, slot: u8) -> LpmKey<CidrKey> {
    let (family, bytes) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (netiso_common::family::V4, b)
        }
        IpAddr::V6(a) => (netiso_common::family::V6, a.octets()),
    };
    LpmKey::new(
        CIDR_KEY_PREFIX_BITS + len as u32,
        CidrKey {
            slot,
            family,
            _pad: [0; 2],
            addr: bytes,
        },
    )
}

/// True when going from `cur` to `desired` only adds or removes entries
/// without changing what any existing one says: then no packet can see a
/// mixture of two policies, and no slot switch is needed.
fn only_additions_and_removals(cur: &Desired, desired: &Desired) -> bool {
    if cur.policy != desired.policy
        || cur.cidrs != desired.cidrs
        || cur.published != desired.published
        || cur.data_path_ports != desired.data_path_ports
        || cur.data_path_rule != desired.data_path_rule
    {
        return false;
    }
    let same_where_both = |a: &BTreeMap<IpKey, IdentityInfo>, b: &BTreeMap<IpKey, IdentityInfo>| {
        a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
    };
    if !same_where_both(&cur.identities, &desired.identities) {
        return false;
    }
    cur.endpoints.iter().all(|(k, v)| {
        desired
            .endpoints
            .get(k)
            .is_none_or(|w| w.identity == v.identity && w.flags == v.flags)
    })
}

/// How long packets that read an endpoints-array slot just before it was
/// marked absent may still be using its bytes: a packet's run takes
/// microseconds.
/// Namespace instances kept with no endpoint (their namespace comes back
/// with the network's next local task, with the same slot).
const IDLE_NS_INSTANCES: usize = 8;
const SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(1);

fn remove_ok(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and
/// nothing is mounted yet (hosts without systemd do not mount it).
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    if !pin_dir.starts_with(BPFFS) {
        return Ok(());
    }
    let path = std::ffi::CString::new(BPFFS)?;
    // SAFETY: `libc::statfs` is a C struct of integers only; all-zero is a
    // valid value (statfs fills it below).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated CString and `st` a live, writable
    // statfs, both outliving the call; statfs reads the one, writes the other.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf")?;
    // SAFETY: source, target and type are NUL-terminated CStrings that live
    // across the call, and bpffs takes no data (null is allowed); mount only
    // reads them.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .context("mounting bpffs at /sys/fs/bpf (try: mount -t bpf bpf /sys/fs/bpf)");
    }
    info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Fails with a clear message when not running as root.
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    Ok(())
}
