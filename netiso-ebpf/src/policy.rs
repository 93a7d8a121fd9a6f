//! Policy evaluation: peer identity (exact address, then CIDR peers, else
//! the world) and the policy lookups from the most to the least specific
//! key. The compiler resolved deny-beats-allow into every entry, so the
//! first hit decides; no hit falls back to the group defaults.
use aya_ebpf::maps::lpm_trie::Key;
use netiso_common::{
    defaults, family, identity, proto, Action, CidrKey, Direction, DropReason, IpKey, PolicyKey,
    PublishedKey, CIDR_KEY_PREFIX_BITS,
};

use crate::maps::{CIDRS, IDENTITIES, POLICY, PUBLISHED};

/// The identities and verdict of one policy evaluation.
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
            return (info.identity, info.flags);
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
                return (info.identity, info.flags);
            }
        }
        (identity::WORLD, 0)
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
        let mut key = PolicyKey {
            src,
            dst,
            dport: port,
            proto: self.proto,
            slot: self.slot,
        };
        let mut hit = None;
        if port != 0 {
            // SAFETY: PolicyValue is Pod and `hit` is only read below, in
            // this run; an entry the daemon replaces meanwhile can at worst
            // read as another entry's bytes (maps.rs), and an unknown action
            // byte denies.
            hit = unsafe { POLICY.get(&key) };
        }
        if hit.is_none() {
            key.dport = 0;
            // SAFETY: PolicyValue is Pod and only read below, in this run; a
            // replaced entry reads as valid bytes at worst (maps.rs).
            hit = unsafe { POLICY.get(&key) };
        }
        if hit.is_none() {
            key.proto = proto::ANY;
            // SAFETY: PolicyValue is Pod and only read below, in this run; a
            // replaced entry reads as valid bytes at worst (maps.rs).
            hit = unsafe { POLICY.get(&key) };
        }
        if let Some(v) = hit {
            return Decision {
                // Unknown action bytes deny: never an accidental allow.
                action: match v.action {
                    1 | 3 => v.action,
                    _ => Action::Deny as u8,
                },
                reason: DropReason::PolicyDeny,
                rule_id: v.rule_id,
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
