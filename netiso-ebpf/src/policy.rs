//! Policy evaluation: peer identity (exact address, then CIDR peers, else
//! the world) and the policy lookups from the most to the least specific
//! key. The compiler resolved deny-beats-allow into every entry, so the
//! first hit decides; no hit falls back to the group defaults.
use aya_ebpf::maps::lpm_trie::Key;
use netiso_common::{
    defaults, family, identity, peer_flags, proto, Action, CidrKey, Direction, DropReason, FqdnKey,
    IpKey, PairKey, PolicyKey, PublishedKey, CIDR_KEY_PREFIX_BITS, FQDN_PEERS,
};

use crate::maps::{CIDRS, FQDN, IDENTITIES, PAIRS, POLICY, PUBLISHED};

/// The identities and verdict of one policy evaluation.
#[derive(Clone, Copy)]
pub struct Decision {
    pub action: u8,
    pub reason: DropReason,
    pub rule_id: u32,
    pub src: u32,
    pub dst: u32,
}

/// What a policy evaluation needs to know about the local endpoint and
/// the packet, besides the direction and the peer.
pub struct Eval {
    /// The endpoint's host-side veth.
    pub ifindex: u32,
    pub ep_id: u32,
    pub ep_flags: u32,
    pub slot: u8,
    pub family: u8,
    pub proto: u8,
    /// The active slot has CIDR peers (otherwise skip the LPM lookup).
    pub cidrs: bool,
}

impl Eval {
    /// The identity of an exact address netiso knows (a container's, the
    /// host's), if it is one.
    #[inline(always)]
    pub fn known(&self, addr: &[u8; 16]) -> Option<u32> {
        let ip_key = IpKey {
            addr: *addr,
            family: self.family,
            slot: self.slot,
            _pad: [0; 2],
        };
        // SAFETY: IdentityInfo is Pod and only its `identity` is copied out
        // at once; an entry the daemon replaces meanwhile can at worst read
        // as another entry's bytes (maps.rs).
        unsafe { IDENTITIES.get(&ip_key) }.map(|i| i.identity)
    }

    /// The identity and default flags of a peer address.
    #[inline(always)]
    pub fn peer_identity(&self, peer: &[u8; 16]) -> (u32, u32) {
        let ip_key = IpKey {
            addr: *peer,
            family: self.family,
            slot: self.slot,
            _pad: [0; 2],
        };
        // SAFETY: IdentityInfo is Pod and both fields are copied out at once;
        // an entry the daemon replaces meanwhile can at worst read as another
        // entry's bytes (maps.rs).
        if let Some(info) = unsafe { IDENTITIES.get(&ip_key) } {
            let (id, flags) = (info.identity, info.flags);
            // An address names its container only in the namespace its
            // network lives in (peer_flags): elsewhere it was forged.
            let elsewhere = if crate::ns_base() == 0 {
                peer_flags::OVERLAY_ONLY
            } else {
                peer_flags::HOST_NS_ONLY
            };
            if flags & elsewhere == 0 {
                return (id, flags);
            }
        }
        if self.cidrs {
            let bits = if self.family == family::V4 { 32 } else { 128 };
            let key = Key::new(
                CIDR_KEY_PREFIX_BITS + bits,
                CidrKey {
                    slot: self.slot,
                    family: self.family,
                    _pad: [0; 2],
                    addr: *peer,
                },
            );
            if let Some(info) = CIDRS.get(&key) {
                return Self::on_overlay(info.identity, info.flags);
            }
        }
        Self::on_overlay(identity::WORLD, 0)
    }

    /// In a Swarm overlay's namespace (`NS_BASE` not 0) nothing is beyond
    /// the host: the overlay routes nowhere, so a peer no endpoint or
    /// remote task has is an unknown overlay peer, never the world or an
    /// address block (a remote task's IPv6 link-local address, an address
    /// outside the overlay's subnets from a node without netiso). Free in
    /// the host's instance (`NS_BASE` is known to the verifier).
    #[inline(always)]
    fn on_overlay(peer: u32, flags: u32) -> (u32, u32) {
        if crate::ns_base() != 0 && Self::beyond_host(peer) {
            (identity::UNKNOWN_OVERLAY_PEER, 0)
        } else {
            (peer, flags)
        }
    }

    /// The peer and port a packet leaving the endpoint for `addr:port` is
    /// judged against. A port the host publishes for a container
    /// (`docker run -p`, served by docker-proxy from the host) stands for
    /// that container: reaching it through the host is reaching it.
    #[inline(always)]
    pub fn destination(&self, addr: &[u8; 16], port: u16) -> ((u32, u32), u16) {
        let peer = self.peer_identity(addr);
        if peer.0 == identity::HOST {
            if let Some(behind) = self.published(port) {
                return behind;
            }
        }
        (peer, port)
    }

    /// The container behind a TCP or UDP port the host publishes, with its
    /// own port, if `port` is one.
    #[inline(always)]
    pub fn published(&self, port: u16) -> Option<((u32, u32), u16)> {
        if !(self.proto == proto::TCP || self.proto == proto::UDP) {
            return None;
        }
        let key = PublishedKey {
            port,
            proto: self.proto,
            slot: self.slot,
        };
        // SAFETY: PublishedValue is Pod and its fields are copied out at
        // once; an entry the daemon replaces meanwhile can at worst read as
        // another entry's bytes (maps.rs).
        unsafe { PUBLISHED.get(&key) }.map(|p| ((p.identity, p.flags), p.port))
    }

    /// Whether a peer identity is an address beyond the host (the world or
    /// an address block): one a container may have learned for a name.
    #[inline(always)]
    pub fn beyond_host(peer: u32) -> bool {
        peer == identity::WORLD || peer >= identity::FIRST_ADDRESS_PEER
    }

    /// A flow leaving the endpoint for an address its container learned
    /// for peers by name (`FQDN[(veth, addr)]`): judged as each of those peers too,
    /// and the strongest decision stands in `d` (a rule's deny, then audit,
    /// then allow, then the defaults), as if the address had all these
    /// names. `now`: entries that expired before it do not count (0: they
    /// do, for a live connection judged again after a reload).
    #[inline(never)]
    pub fn by_name(&self, addr: &[u8; 16], port: u16, d: &mut Decision, now: u64) {
        let key = FqdnKey {
            ifindex: self.ifindex,
            family: self.family,
            _pad: [0; 3],
            addr: *addr,
        };
        // SAFETY: FqdnValue is Pod and copied out at once; an entry the
        // daemon replaces meanwhile can at worst read as another entry's
        // bytes (maps.rs).
        let Some(v) = (unsafe { FQDN.get(&key) }).copied() else {
            return;
        };
        if now != 0 && now > v.expires_ns {
            return;
        }
        for i in 0..FQDN_PEERS {
            let id = v.identities[i];
            if id == 0 {
                break;
            }
            let by = self.run(Direction::Egress, (id, 0), port);
            if rank(&by) > rank(d) {
                *d = by;
            }
        }
    }

    /// Judges a flow between the local endpoint and a peer of the given
    /// identity; `dir` says who sends: `Egress` means the endpoint sends.
    #[inline(always)]
    pub fn run(&self, dir: Direction, peer: (u32, u32), port: u16) -> Decision {
        let (peer_id, peer_flags) = peer;
        let (src, src_flags, dst, dst_flags) = if dir == Direction::Egress {
            (self.ep_id, self.ep_flags, peer_id, peer_flags)
        } else {
            (peer_id, peer_flags, self.ep_id, self.ep_flags)
        };
        let hit = lookup(src, dst, self.slot, self.proto, port);
        if let Some((action, rule_id)) = hit {
            return Decision {
                // Unknown action bytes deny: never an accidental allow.
                action: match action {
                    1 | 3 => action,
                    _ => Action::Deny as u8,
                },
                reason: DropReason::PolicyDeny,
                rule_id,
                src,
                dst,
            };
        }
        let denied =
            src_flags & defaults::DENY_EGRESS != 0 || dst_flags & defaults::DENY_INGRESS != 0;
        Decision {
            action: if denied {
                Action::Deny as u8
            } else {
                Action::Allow as u8
            },
            reason: DropReason::DefaultDeny,
            rule_id: 0,
            src,
            dst,
        }
    }
}

/// The policy entry that decides a flow of `proto` to `port` between two
/// identities, as (action, rule): the exact (proto, port) entry, then
/// (proto, any port), then (any proto, any port). One lookup of the pair
/// answers, unless it has more entries than its value holds; a pair no
/// rule names is one miss.
#[inline(always)]
fn lookup(src: u32, dst: u32, slot: u8, l4: u8, port: u16) -> Option<(u8, u32)> {
    let pair = PairKey {
        src,
        dst,
        slot: slot as u32,
    };
    // SAFETY: PairValue is Pod and only read, in this run; an entry the
    // daemon replaces meanwhile can at worst read as another entry's bytes
    // (maps.rs), and an unknown action byte denies.
    let v = unsafe { PAIRS.get(&pair) }?;
    let mut key = PolicyKey {
        src,
        dst,
        dport: port,
        proto: l4,
        slot,
    };
    if port != 0 {
        for e in &v.ports {
            if e.action != 0 && e.port == port && e.proto == l4 {
                return Some((e.action, e.rule_id));
            }
        }
        if v.more_ports != 0 {
            // SAFETY: as above, for PolicyValue.
            if let Some(p) = unsafe { POLICY.get(&key) } {
                return Some((p.action, p.rule_id));
            }
        }
    }
    for e in &v.protos {
        if e.action != 0 && e.proto == l4 {
            return Some((e.action, e.rule_id));
        }
    }
    if v.more_protos != 0 {
        key.dport = 0;
        // SAFETY: as above, for PolicyValue.
        if let Some(p) = unsafe { POLICY.get(&key) } {
            return Some((p.action, p.rule_id));
        }
    }
    if v.all.action != 0 {
        return Some((v.all.action, v.all.rule_id));
    }
    None
}

/// How strongly a decision decides: a rule's deny, audit, allow, then a
/// default (the order `evaluate` gives them).
#[inline(always)]
fn rank(d: &Decision) -> u8 {
    if d.rule_id == 0 {
        return 0;
    }
    match d.action {
        a if a == Action::Deny as u8 => 3,
        a if a == Action::Audit as u8 => 2,
        _ => 1,
    }
}
