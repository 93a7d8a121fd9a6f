//! From a [`Policy`] and the running containers to the contents of the
//! kernel's identity and policy maps.
//!
//! The kernel looks up (src, dst, proto, port), then (src, dst, proto, 0),
//! then (src, dst, ANY, 0), and falls back to the identities' default flags.
//! Each key is therefore resolved against every rule that covers it at its
//! own level *and* at the levels below (a port key also sees protocol-wide
//! and any-protocol rules), so that the first hit is always the answer
//! [`evaluate`](crate::eval::evaluate) gives.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netiso_common::{defaults, identity, limits, proto, Action, PolicyKey, PolicyValue};

use crate::cidr::{self, CidrEntry};
use crate::container::Container;
use crate::diagnostic::{Diagnostic, Kind, PolicyError};
use crate::eval::Decision;
use crate::fqdn::FqdnPeer;
use crate::model::{Policy, Rule, HOST, WORLD};
use crate::ports::{PortSpec, NAMED_NUMBERS};

/// Identities of address-block peers start here, far from group-set
/// identities, so that the two ranges never meet.
pub const FIRST_CIDR_IDENTITY: u32 = identity::FIRST_ADDRESS_PEER;

/// Whether `id` stands for containers (a group set, or the containers in
/// no group), not the host, the world, an address block or a peer by name.
pub fn is_container_identity(id: u32) -> bool {
    identity::is_container(id)
}

/// Keeps group-set → identity numbers stable across compiles, so that a
/// reload does not renumber (and so re-judge) every container; likewise
/// for the identities of address blocks.
#[derive(Clone, Debug, Default)]
pub struct IdentityAllocator {
    by_groups: BTreeMap<Vec<String>, u32>,
    /// Sorted address-block peer names -> identity.
    by_cidrs: BTreeMap<Vec<String>, u32>,
}

impl IdentityAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity of a sorted group set, allocating one the first time.
    /// The empty set is [`identity::UNMANAGED`].
    pub fn identity_of(&mut self, groups: &[String]) -> u32 {
        if groups.is_empty() {
            return identity::UNMANAGED;
        }
        if let Some(&id) = self.by_groups.get(groups) {
            return id;
        }
        // Never reused: an identity that comes back keeps its number.
        let id = self
            .by_groups
            .values()
            .max()
            .map_or(identity::FIRST_GROUP_IDENTITY, |m| m + 1);
        self.by_groups.insert(groups.to_vec(), id);
        id
    }

    /// The identity of a sorted set of address-block peers (an address
    /// that lands on a CIDR entry belongs to exactly these), allocating
    /// one the first time.
    pub fn cidr_identity_of(&mut self, peers: &[String]) -> u32 {
        if let Some(&id) = self.by_cidrs.get(peers) {
            return id;
        }
        let id = self
            .by_cidrs
            .values()
            .max()
            .map_or(FIRST_CIDR_IDENTITY, |m| m + 1);
        self.by_cidrs.insert(peers.to_vec(), id);
        id
    }

    /// Takes back a number given out by an earlier run (from the daemon's
    /// state file), so identities in pinned maps keep their meaning.
    pub fn restore(&mut self, id: u32, groups: Vec<String>) {
        if groups.is_empty() {
            return;
        }
        if id >= FIRST_CIDR_IDENTITY {
            self.by_cidrs.insert(groups, id);
        } else if id >= identity::FIRST_GROUP_IDENTITY {
            self.by_groups.insert(groups, id);
        }
    }

    /// Every group set and address-block set given a number so far.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.by_groups
            .iter()
            .chain(&self.by_cidrs)
            .map(|(g, id)| (*id, g.as_slice()))
    }

    /// The identity already given to a group set, if any.
    pub fn get(&self, groups: &[String]) -> Option<u32> {
        if groups.is_empty() {
            return Some(identity::UNMANAGED);
        }
        self.by_groups.get(groups).copied()
    }
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityDef {
    /// Sorted group names; for an address-block identity, the sorted names
    /// of its address-block peers; empty for the reserved identities.
    pub groups: Vec<String>,
    /// `netiso_common::defaults` bits.
    pub flags: u32,
}

/// A rule as the datapath's statistics and `explain` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: u32,
    pub from: String,
    pub to: String,
    /// As written (or "any").
    pub ports: String,
    pub action: Action,
    pub description: Option<String>,
    /// `file:line:col`.
    pub location: String,
}

impl RuleInfo {
    fn summary(&self) -> String {
        format!(
            "rule {} ({} -> {}, {})",
            self.id, self.from, self.to, self.ports
        )
    }
}

/// Everything the datapath needs from a policy, for one set of containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// identity -> its groups and default flags. Includes HOST and WORLD
    /// (flags 0), UNMANAGED (flags from `[settings] unmanaged`) and one
    /// identity per distinct set of address-block peers (flags 0).
    pub identities: BTreeMap<u32, IdentityDef>,
    /// container id -> identity (UNMANAGED for containers in no group).
    pub container_identity: BTreeMap<String, u32>,
    /// Policy map contents with slot = 0 (the datapath rewrites the slot).
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
    /// CIDR trie contents: addresses that are not containers resolve by
    /// longest prefix here, then fall back to WORLD. Exceptions are longer
    /// prefixes mapping to what encloses them (or WORLD).
    pub cidrs: Vec<CidrEntry>,
    /// `rules[rule_id - 1]`; rule_id 0 means "a default decided".
    pub rules: Vec<RuleInfo>,
    /// One identity per peer by name (`world` and the name, flags 0): an
    /// address a container learned for the name is judged with it too.
    pub fqdns: Vec<FqdnEntry>,
    /// Identities that some rule lets reach a peer by name: their
    /// containers' DNS traffic is watched to learn addresses.
    pub fqdn_senders: BTreeSet<u32>,
}

/// A peer by name and its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnEntry {
    pub identity: u32,
    pub peer: FqdnPeer,
}

impl Compiled {
    /// The identities of the peers by name that `name` is one of.
    pub fn fqdn_identities_of(&self, name: &str) -> Vec<u32> {
        self.fqdns
            .iter()
            .filter(|e| e.peer.matches(name))
            .map(|e| e.identity)
            .collect()
    }
}

impl Compiled {
    /// Adds a built-in rule, after the policy's own: no container (no
    /// group, nor an unmanaged one) sends `proto`/`port` to anything that
    /// is not a container (the host, the world, an address block, an
    /// unknown overlay peer), whatever the policy says. Its id is the
    /// next after the policy's rules, so `stats` and `explain` name it.
    /// For a Swarm node: an overlay's VXLAN socket takes a frame from
    /// anyone, so a container able to send `udp/<data path port>` to a
    /// node could put any packet, from any address it claims, on an
    /// overlay (see `netiso-daemon/tests/swarm_forged.rs`).
    pub fn deny_beyond_containers(&mut self, l4: u8, port: u16, what: &str) {
        let rule_id = self.rules.len() as u32 + 1;
        self.rules.push(RuleInfo {
            id: rule_id,
            from: "every container".to_string(),
            to: "the host, the world and unknown overlay peers".to_string(),
            ports: format!("{port}/{}", if l4 == proto::UDP { "udp" } else { "tcp" }),
            action: Action::Deny,
            description: Some(what.to_string()),
            location: "built-in".to_string(),
        });
        let srcs: Vec<u32> = self
            .identities
            .keys()
            .copied()
            .filter(|&id| is_container_identity(id))
            .collect();
        let dsts: Vec<u32> = [
            identity::HOST,
            identity::WORLD,
            identity::UNKNOWN_OVERLAY_PEER,
        ]
        .into_iter()
        .chain(
            self.identities
                .keys()
                .copied()
                .filter(|&id| id >= FIRST_CIDR_IDENTITY),
        )
        .collect();
        for &src in &srcs {
            for &dst in &dsts {
                self.entries.insert(
                    PolicyKey {
                        src,
                        dst,
                        dport: port,
                        proto: l4,
                        slot: 0,
                    },
                    PolicyValue {
                        action: Action::Deny as u8,
                        _pad: [0; 3],
                        rule_id,
                    },
                );
            }
        }
    }

    pub fn rule(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.get((id as usize).checked_sub(1)?)
    }

    /// A name for an identity in messages: `world`, `host`, `unmanaged`,
    /// `256 (backend, web)` or `16777216 (198.18.0.0/15)`.
    pub fn describe_identity(&self, id: u32) -> String {
        match id {
            identity::HOST => HOST.to_string(),
            identity::WORLD => WORLD.to_string(),
            identity::UNMANAGED => "unmanaged".to_string(),
            identity::AMBIGUOUS_PUBLISHED => "a host port published for two containers".to_string(),
            identity::UNKNOWN_OVERLAY_PEER => "an unknown overlay peer".to_string(),
            _ => match self.identities.get(&id) {
                Some(def) => format!("{id} ({})", def.groups.join(", ")),
                None => format!("{id} (unknown)"),
            },
        }
    }

    /// The identity the kernel gives an address that is not a container:
    /// the CIDR trie's longest match, else WORLD.
    pub fn address_identity(&self, ip: IpAddr) -> u32 {
        cidr::longest_match(&self.cidrs, ip).map_or(identity::WORLD, |e| e.identity)
    }

    /// The peer names (see [`evaluate`](crate::eval::evaluate)) of an identity: its groups,
    /// `host`, `world`, or `world` and its address-block peers.
    pub fn names_of_identity(&self, id: u32) -> Vec<String> {
        match id {
            identity::HOST => vec![HOST.to_string()],
            identity::WORLD => vec![WORLD.to_string()],
            identity::UNMANAGED => Vec::new(),
            id if id >= FIRST_CIDR_IDENTITY => std::iter::once(WORLD.to_string())
                .chain(
                    self.identities
                        .get(&id)
                        .into_iter()
                        .flat_map(|d| d.groups.clone()),
                )
                .collect(),
            id => self
                .identities
                .get(&id)
                .map(|d| d.groups.clone())
                .unwrap_or_default(),
        }
    }

    /// Exactly what the kernel does: try (src, dst, proto, port), then
    /// (src, dst, proto, 0), then (src, dst, ANY, 0); if none is there,
    /// DENY_EGRESS of src or DENY_INGRESS of dst denies, else allow (rule 0).
    pub fn lookup(&self, src: u32, dst: u32, proto: u8, port: u16) -> Decision {
        for (p, dport) in [(proto, port), (proto, 0), (proto::ANY, 0)] {
            let key = PolicyKey {
                src,
                dst,
                dport,
                proto: p,
                slot: 0,
            };
            let Some(value) = self.entries.get(&key) else {
                continue;
            };
            // An unknown action byte is treated as the kernel should: drop.
            let action = Action::from_u8(value.action).unwrap_or(Action::Deny);
            let verb = match action {
                Action::Allow => "allowed",
                Action::Deny => "denied",
                Action::Audit => "audited (passes, reported as audit)",
            };
            let why = match self.rule(value.rule_id) {
                Some(r) => {
                    let mut why = format!("{verb} by {} at {}", r.summary(), r.location);
                    if let Some(d) = &r.description {
                        why.push_str(&format!(": {d}"));
                    }
                    why
                }
                None => format!("{verb} by policy entry with rule id {}", value.rule_id),
            };
            return Decision {
                action,
                rule_id: value.rule_id,
                why,
            };
        }
        let flags = |id| self.identities.get(&id).map_or(0, |d| d.flags);
        let (action, why) = if flags(src) & defaults::DENY_EGRESS != 0 {
            let who = self.describe_identity(src);
            (
                Action::Deny,
                format!("no rule matches; denied by default: source {who} denies egress"),
            )
        } else if flags(dst) & defaults::DENY_INGRESS != 0 {
            let who = self.describe_identity(dst);
            (
                Action::Deny,
                format!("no rule matches; denied by default: destination {who} denies ingress"),
            )
        } else {
            (
                Action::Allow,
                "no rule matches; allowed by default: neither side denies".to_string(),
            )
        };
        Decision {
            action,
            rule_id: 0,
            why,
        }
    }
}

/// Compiles the policy for these containers. Fails only when the result does
/// not fit in the kernel maps.
pub fn compile(
    policy: &Policy,
    containers: &[Container],
    ids: &mut IdentityAllocator,
) -> Result<Compiled, PolicyError> {
    let members: Vec<(String, Vec<String>)> = containers
        .iter()
        .map(|c| (c.id.clone(), policy.groups_of(c)))
        .collect();
    compile_members(policy, &members, ids)
}

/// Like [`compile`], for members already sorted into groups: `(key, sorted
/// group names)`, the key standing where a container id would. `explain`
/// uses it for containers known only from the daemon's state file and for
/// a hypothetical member of one group.
pub fn compile_members(
    policy: &Policy,
    members: &[(String, Vec<String>)],
    ids: &mut IdentityAllocator,
) -> Result<Compiled, PolicyError> {
    if policy.rules.len() >= limits::RULES as usize {
        let first_too_many = &policy.rules[limits::RULES as usize - 1];
        return Err(Diagnostic::error(
            Kind::TooLarge,
            format!(
                "the policy has {} rules; at most {} fit",
                policy.rules.len(),
                limits::RULES - 1
            ),
        )
        .at(first_too_many.location.clone())
        .label("this rule is one too many")
        .help("merge rules that share their peers into one rule with several ports")
        .into());
    }

    let mut compiled = Compiled::default();
    for reserved in [identity::HOST, identity::WORLD] {
        compiled.identities.insert(
            reserved,
            IdentityDef {
                groups: Vec::new(),
                flags: 0,
            },
        );
    }
    compiled.identities.insert(
        identity::UNMANAGED,
        IdentityDef {
            groups: Vec::new(),
            flags: policy.settings.unmanaged.flags(),
        },
    );
    for (key, groups) in members {
        let id = ids.identity_of(groups);
        compiled
            .identities
            .entry(id)
            .or_insert_with(|| IdentityDef {
                flags: groups
                    .iter()
                    .filter_map(|g| policy.group(g))
                    .fold(0, |f, g| f | g.flags()),
                groups: groups.clone(),
            });
        compiled.container_identity.insert(key.clone(), id);
    }
    compile_cidrs(policy, ids, &mut compiled)?;
    for peer in policy.fqdn_peers() {
        let id = ids.cidr_identity_of(std::slice::from_ref(&peer.name));
        compiled.identities.entry(id).or_insert(IdentityDef {
            groups: vec![peer.name.clone()],
            flags: 0,
        });
        compiled.fqdns.push(FqdnEntry {
            identity: id,
            peer: peer.clone(),
        });
    }

    // The names a rule can use to mean each identity.
    let peers: Vec<(u32, Vec<String>)> = compiled
        .identities
        .keys()
        .map(|&id| (id, compiled.names_of_identity(id)))
        .collect();
    let with_name = |name: &str| -> Vec<u32> {
        peers
            .iter()
            .filter(|(_, names)| names.iter().any(|n| n == name))
            .map(|(id, _)| *id)
            .collect()
    };
    // Rules per ordered identity pair, in id order.
    let mut pairs: BTreeMap<(u32, u32), Vec<&Rule>> = BTreeMap::new();
    let mut pairs_of_rule = vec![0usize; policy.rules.len()];
    for (i, rule) in policy.rules.iter().enumerate() {
        let (srcs, dsts) = (with_name(rule.from.name()), with_name(rule.to.name()));
        pairs_of_rule[i] = srcs.len() * dsts.len();
        if matches!(rule.to, crate::model::Peer::Fqdn(_)) {
            compiled.fqdn_senders.extend(srcs.iter().copied());
        }
        for &s in &srcs {
            for &d in &dsts {
                pairs.entry((s, d)).or_default().push(rule);
            }
        }
    }

    check_size(policy, &pairs, &pairs_of_rule)?;
    for (&(src, dst), rules) in &pairs {
        emit_pair(src, dst, rules, &mut compiled.entries);
    }

    compiled.rules = policy
        .rules
        .iter()
        .map(|r| RuleInfo {
            id: r.id,
            from: r.from.name().to_string(),
            to: r.to.name().to_string(),
            ports: r.ports_text.clone(),
            action: r.action,
            description: r.description.clone(),
            location: r.location.to_string(),
        })
        .collect();
    Ok(compiled)
}

/// One identity per distinct set of address-block peers an entry's
/// addresses belong to, and the CIDR trie entries.
fn compile_cidrs(
    policy: &Policy,
    ids: &mut IdentityAllocator,
    compiled: &mut Compiled,
) -> Result<(), PolicyError> {
    let peers = policy.cidr_peers();
    let memberships = cidr::memberships(&peers);
    let limit = (limits::CIDRS / 2) as usize;
    if memberships.len() > limit {
        let rule = policy
            .rules
            .iter()
            .rev()
            .find(|r| {
                matches!(r.from, crate::model::Peer::Cidr(_))
                    || matches!(r.to, crate::model::Peer::Cidr(_))
            })
            .expect("address blocks come from rules");
        return Err(Diagnostic::error(
            Kind::TooLarge,
            format!(
                "the policy names {} distinct address blocks; at most {limit} fit",
                memberships.len()
            ),
        )
        .at(rule.location.clone())
        .label("the last rule naming address blocks")
        .help("merge neighbouring blocks into wider ones")
        .into());
    }
    for (block, members) in memberships {
        let members: Vec<String> = members.into_iter().collect();
        let id = if members.is_empty() {
            identity::WORLD
        } else {
            let id = ids.cidr_identity_of(&members);
            compiled.identities.entry(id).or_insert(IdentityDef {
                groups: members,
                flags: 0,
            });
            id
        };
        compiled.cidrs.push(CidrEntry {
            addr: block.addr,
            prefix_len: block.prefix_len,
            identity: id,
            flags: 0,
        });
    }
    Ok(())
}

/// The deciding rule among `rules`: the first deny, else the first audit,
/// else the first allow.
fn resolve<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Option<PolicyValue> {
    let (mut deny, mut audit, mut allow) = (None::<u32>, None::<u32>, None::<u32>);
    for r in rules {
        let slot = match r.action {
            Action::Deny => &mut deny,
            Action::Audit => &mut audit,
            Action::Allow => &mut allow,
        };
        *slot = Some(slot.map_or(r.id, |id| id.min(r.id)));
    }
    let (action, rule_id) = match (deny, audit, allow) {
        (Some(id), _, _) => (Action::Deny, id),
        (None, Some(id), _) => (Action::Audit, id),
        (None, None, Some(id)) => (Action::Allow, id),
        (None, None, None) => return None,
    };
    Some(PolicyValue {
        action: action as u8,
        _pad: [0; 3],
        rule_id,
    })
}

/// Whether the rule names protocol number `n` as a whole (`tcp`, `icmp`, …).
fn has_whole(rule: &Rule, n: u8) -> bool {
    rule.ports.as_ref().is_some_and(|specs| {
        specs
            .iter()
            .any(|s| matches!(s, PortSpec::Proto(p) if p.numbers().contains(&n)))
    })
}

/// The port ranges of protocol number `n` a rule names, with the rule.
fn ranges<'a>(rules: &[&'a Rule], n: u8) -> Vec<(u16, u16, &'a Rule)> {
    let mut out = Vec::new();
    for &rule in rules {
        for spec in rule.ports.iter().flatten() {
            if let PortSpec::Range { proto, lo, hi } = *spec {
                if proto.numbers().contains(&n) {
                    out.push((lo, hi, rule));
                }
            }
        }
    }
    out
}

/// Splits the ports named by `ranges` into intervals within which the same
/// ranges apply, so each interval is resolved once, not once per port.
fn elementary(ranges: &[(u16, u16, &Rule)]) -> Vec<(u32, u32)> {
    let points: BTreeSet<u32> = ranges
        .iter()
        .flat_map(|&(lo, hi, _)| [u32::from(lo), u32::from(hi) + 1])
        .collect();
    let points: Vec<u32> = points.into_iter().collect();
    points
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|&(a, _)| {
            ranges
                .iter()
                .any(|&(lo, hi, _)| (lo..=hi).contains(&(a as u16)))
        })
        .collect()
}

fn emit_pair(src: u32, dst: u32, rules: &[&Rule], out: &mut BTreeMap<PolicyKey, PolicyValue>) {
    let key = |proto, dport| PolicyKey {
        src,
        dst,
        dport,
        proto,
        slot: 0,
    };
    let any: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| r.ports.is_none())
        .collect();
    if let Some(v) = resolve(any.iter().copied()) {
        out.insert(key(proto::ANY, 0), v);
    }
    for n in NAMED_NUMBERS {
        let whole: Vec<&Rule> = rules.iter().copied().filter(|r| has_whole(r, n)).collect();
        // Protocol-level keys only where a protocol-wide rule exists; other
        // packets of the protocol fall through to the (ANY, 0) key, which
        // already gives the right answer for them.
        if !whole.is_empty() {
            let v = resolve(whole.iter().chain(&any).copied()).expect("non-empty");
            out.insert(key(n, 0), v);
        }
        let ranges = ranges(rules, n);
        for (a, b) in elementary(&ranges) {
            let covering = ranges
                .iter()
                .filter(|&&(lo, hi, _)| (lo..=hi).contains(&(a as u16)))
                .map(|&(_, _, r)| r);
            let v = resolve(
                covering
                    .chain(whole.iter().copied())
                    .chain(any.iter().copied()),
            )
            .expect("at least one range covers the interval");
            for port in a..b {
                out.insert(key(n, port as u16), v);
            }
        }
    }
}

/// Counts the keys before emitting them, so that an oversized policy is
/// refused with a reason instead of building a huge map first.
fn check_size(
    policy: &Policy,
    pairs: &BTreeMap<(u32, u32), Vec<&Rule>>,
    pairs_of_rule: &[usize],
) -> Result<(), PolicyError> {
    let limit = (limits::POLICY / 2) as usize;
    let mut total = 0usize;
    for rules in pairs.values() {
        total += usize::from(rules.iter().any(|r| r.ports.is_none()));
        for n in NAMED_NUMBERS {
            total += usize::from(rules.iter().any(|r| has_whole(r, n)));
            let ranges = ranges(rules, n);
            total += elementary(&ranges)
                .iter()
                .map(|(a, b)| (b - a) as usize)
                .sum::<usize>();
        }
    }
    if total <= limit {
        return Ok(());
    }
    let cost = |i: usize, r: &Rule| {
        let ports: usize = r.ports.iter().flatten().map(|s| s.port_count()).sum();
        (ports, pairs_of_rule[i], ports * pairs_of_rule[i])
    };
    let (i, worst) = policy
        .rules
        .iter()
        .enumerate()
        .max_by_key(|&(i, r)| cost(i, r).2)
        .expect("a policy with entries has rules");
    let (ports, pair_count, entries) = cost(i, worst);
    Err(Diagnostic::error(
        Kind::TooLarge,
        format!(
            "the compiled policy needs {total} map entries, more than the {limit} one policy slot holds"
        ),
    )
    .at(worst.location.clone())
    .label(format!(
        "rule {} alone needs {entries}: {ports} ports for each of {pair_count} identity pairs",
        worst.id
    ))
    .help(
        "every port of a range becomes one entry per pair of identities the rule applies to; \
         write \"tcp\" or \"udp\" to cover a whole protocol with one entry, or narrow the range",
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Attachment;
    use crate::eval::evaluate;
    use crate::parse::parse_str;
    use proptest::prelude::*;

    fn container(id: &str, labels: &[(&str, &str)], network: &str) -> Container {
        Container {
            published: Vec::new(),
            id: id.to_string(),
            name: id.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: vec![Attachment {
                network: network.to_string(),
                ..Attachment::default()
            }],
            ..Container::default()
        }
    }

    const SHOP: &str = r#"
[groups.web]
labels = { app = "web" }
[groups.db]
labels = { app = "db" }
ingress = "deny"
[groups.shop]
network = "shop"
egress = "deny"

[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp"]
action = "allow"

[[rules]]
from = "shop"
to = "world"
ports = ["53/udp", "443/tcp"]
action = "allow"

[[rules]]
from = "world"
to = "web"
ports = ["8000-8002/tcp", "icmp"]
action = "allow"

[[rules]]
from = "shop"
to = "shop"
ports = ["8001/tcp"]
action = "deny"
"#;

    #[test]
    fn identities_are_stable_and_never_reserved() {
        let mut ids = IdentityAllocator::new();
        let a = ids.identity_of(&["web".to_string()]);
        let b = ids.identity_of(&["db".to_string(), "web".to_string()]);
        assert_eq!(a, identity::FIRST_GROUP_IDENTITY);
        assert_eq!(b, identity::FIRST_GROUP_IDENTITY + 1);
        assert_eq!(ids.identity_of(&["web".to_string()]), a);
        assert_eq!(ids.identity_of(&[]), identity::UNMANAGED);
        assert_eq!(ids.get(&["db".to_string(), "web".to_string()]), Some(b));
        assert_eq!(ids.get(&["x".to_string()]), None);
    }

    #[test]
    fn a_built_in_deny_beats_every_rule_beyond_containers() {
        let text = format!(
            "{SHOP}\n[[rules]]\nfrom = \"web\"\nto = \"198.18.0.0/15\"\naction = \"allow\"\n"
        );
        let policy = parse_str(&text, "shop.toml").unwrap();
        let containers = [
            container("c-web", &[("app", "web")], "shop"),
            container("c-db", &[("app", "db")], "shop"),
            container("c-other", &[], "elsewhere"),
        ];
        let mut compiled = compile(&policy, &containers, &mut IdentityAllocator::new()).unwrap();
        let web = compiled.container_identity["c-web"];
        let db = compiled.container_identity["c-db"];
        let block = compiled.address_identity("198.18.0.1".parse().unwrap());
        assert!(block >= FIRST_CIDR_IDENTITY);
        assert_eq!(
            compiled.lookup(web, block, proto::UDP, 4789).action,
            Action::Allow
        );
        let before = compiled.lookup(web, db, proto::UDP, 4789);
        let before = (before.action, before.rule_id);
        compiled.deny_beyond_containers(proto::UDP, 4789, "overlay VXLAN");
        let id = compiled.rules.len() as u32;
        assert_eq!(compiled.rule(id).unwrap().location, "built-in");
        for src in [web, db, identity::UNMANAGED] {
            for dst in [
                identity::HOST,
                identity::WORLD,
                identity::UNKNOWN_OVERLAY_PEER,
                block,
            ] {
                let d = compiled.lookup(src, dst, proto::UDP, 4789);
                assert_eq!((d.action, d.rule_id), (Action::Deny, id), "{src} -> {dst}");
            }
        }
        // Other ports and container peers: as before.
        assert_eq!(
            compiled.lookup(web, block, proto::UDP, 4788).action,
            Action::Allow
        );
        let after = compiled.lookup(web, db, proto::UDP, 4789);
        assert_eq!((after.action, after.rule_id), before);
    }

    #[test]
    fn compiles_the_shop() {
        let policy = parse_str(SHOP, "shop.toml").unwrap();
        let containers = [
            container("c-web", &[("app", "web")], "shop"),
            container("c-db", &[("app", "db")], "shop"),
            container("c-other", &[], "elsewhere"),
        ];
        let mut ids = IdentityAllocator::new();
        let compiled = compile(&policy, &containers, &mut ids).unwrap();
        let web = compiled.container_identity["c-web"];
        let db = compiled.container_identity["c-db"];
        assert_eq!(compiled.container_identity["c-other"], identity::UNMANAGED);
        assert_eq!(compiled.identities[&web].groups, ["shop", "web"]);
        assert_eq!(compiled.identities[&web].flags, defaults::DENY_EGRESS);
        assert_eq!(
            compiled.identities[&db].flags,
            defaults::DENY_EGRESS | defaults::DENY_INGRESS
        );
        for reserved in [identity::HOST, identity::WORLD, identity::UNMANAGED] {
            assert_eq!(compiled.identities[&reserved].flags, 0);
        }

        let d = compiled.lookup(web, db, proto::TCP, 5432);
        assert_eq!((d.action, d.rule_id), (Action::Allow, 1));
        assert!(d.why.contains("rule 1 (web -> db, 5432/tcp)"), "{}", d.why);
        let d = compiled.lookup(web, db, proto::TCP, 5433);
        assert_eq!((d.action, d.rule_id), (Action::Deny, 0));
        assert!(d.why.contains("denies egress"), "{}", d.why);
        // The shop-wide deny on 8001 beats nothing else here, but does
        // apply between shop members.
        let d = compiled.lookup(db, web, proto::TCP, 8001);
        assert_eq!((d.action, d.rule_id), (Action::Deny, 4));
        let d = compiled.lookup(identity::WORLD, web, proto::ICMP, 0);
        assert_eq!((d.action, d.rule_id), (Action::Allow, 3));
        let d = compiled.lookup(identity::WORLD, web, proto::ICMPV6, 0);
        assert_eq!((d.action, d.rule_id), (Action::Allow, 3));
        let d = compiled.lookup(web, identity::WORLD, proto::UDP, 53);
        assert_eq!((d.action, d.rule_id), (Action::Allow, 2));
        let d = compiled.lookup(identity::UNMANAGED, db, proto::TCP, 5432);
        assert_eq!((d.action, d.rule_id), (Action::Deny, 0));
        let d = compiled.lookup(identity::UNMANAGED, identity::WORLD, proto::TCP, 1);
        assert_eq!((d.action, d.rule_id), (Action::Allow, 0));

        assert_eq!(compiled.rules.len(), 4);
        assert_eq!(compiled.rules[2].ports, "8000-8002/tcp, icmp");
        assert_eq!(compiled.rules[2].location, "shop.toml:23:1");
        assert!(compiled.entries.keys().all(|k| k.slot == 0));

        // Same group sets keep their identities on the next compile.
        let again = compile(&policy, &containers[..2], &mut ids).unwrap();
        assert_eq!(again.container_identity["c-web"], web);
        assert_eq!(again.container_identity["c-db"], db);
    }

    #[test]
    fn port_keys_see_protocol_and_any_rules() {
        let text = r#"
[groups.a]
names = ["a"]
[groups.b]
names = ["b"]
[[rules]]
from = "a"
to = "b"
ports = ["80-90/tcp"]
action = "allow"
[[rules]]
from = "a"
to = "b"
ports = ["tcp"]
action = "deny"
[[rules]]
from = "a"
to = "b"
action = "allow"
"#;
        let policy = parse_str(text, "t.toml").unwrap();
        let cs = [container("a", &[], "n"), container("b", &[], "n")];
        let compiled = compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap();
        let (a, b) = (
            compiled.container_identity["a"],
            compiled.container_identity["b"],
        );
        for port in [0, 1, 80, 85, 90, 91, 65535] {
            assert_eq!(
                compiled.lookup(a, b, proto::TCP, port).rule_id,
                2,
                "port {port}"
            );
        }
        assert_eq!(compiled.lookup(a, b, proto::UDP, 80).rule_id, 3);
        assert_eq!(compiled.lookup(a, b, 132, 80).rule_id, 3);
        // The allow 80-90 is hidden by the deny: the linter says so.
        assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
        assert_eq!(policy.warnings[0].kind, Kind::ShadowedRule);
    }

    #[test]
    fn too_many_entries_names_the_rule() {
        let text = r#"
[groups.a]
network = "n"
[[rules]]
from = "a"
to = "a"
ports = ["80/tcp"]
action = "allow"
[[rules]]
from = "world"
to = "a"
ports = ["1-65535/tcp", "1-65535/udp", "1000-2000/tcp"]
action = "allow"
[[rules]]
from = "host"
to = "a"
ports = ["1-65535/tcp"]
action = "allow"
"#;
        let policy = parse_str(text, "big.toml").unwrap();
        let cs = [container("a", &[], "n")];
        let err = compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the compiled policy needs 196606 map entries, more than the 131072"),
            "{text}"
        );
        assert!(text.contains("--> big.toml:9:1"), "{text}");
        assert!(text.contains("rule 2 alone needs 132071"), "{text}");
        assert!(text.contains("write \"tcp\" or \"udp\""), "{text}");
    }

    /// A container as the random cases describe it (index-based, so that
    /// the reference matcher below shares no code with `Selector`).
    #[derive(Clone, Debug)]
    struct Box {
        /// label key index (k0..k2) -> value index (v0..v2); absent = missing.
        labels: Vec<Option<usize>>,
        /// compose project p0/p1, or none.
        project: Option<usize>,
        name: usize,
        image: usize,
        networks: Vec<usize>,
    }

    const NAMES: [&str; 4] = ["a-1", "a-2", "b-1", "web"];
    const NAME_PATTERNS: [&str; 5] = ["a-1", "a-*", "*-1", "web", "zzz"];
    const IMAGES: [&str; 3] = ["img:1", "img:2", "other"];
    const IMAGE_PATTERNS: [&str; 4] = ["img:1", "img:*", "other", "*"];

    #[derive(Clone, Debug)]
    enum LabelSpec {
        Eq(usize),
        In(Vec<usize>),
        Exists,
    }

    #[derive(Clone, Debug, Default)]
    struct Sel {
        networks: Option<Vec<usize>>,
        labels: BTreeMap<usize, LabelSpec>,
        project: Option<usize>,
        names: Option<Vec<usize>>,
        images: Option<Vec<usize>>,
        all: Vec<Sel>,
        any: Vec<Sel>,
    }

    fn plain_glob(p: &str, t: &str) -> bool {
        // Enough for the patterns above: a prefix or suffix star, or none.
        match (p.strip_suffix('*'), p.strip_prefix('*')) {
            _ if p == "*" => true,
            (Some(prefix), _) => t.starts_with(prefix),
            (_, Some(suffix)) => t.ends_with(suffix),
            _ => p == t,
        }
    }

    impl Sel {
        fn matches(&self, b: &Box) -> bool {
            let net = self
                .networks
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|n| b.networks.contains(n)));
            let labels = self
                .labels
                .iter()
                .all(|(&k, spec)| match (spec, b.labels[k]) {
                    (_, None) => false,
                    (LabelSpec::Exists, Some(_)) => true,
                    (LabelSpec::Eq(v), Some(x)) => *v == x,
                    (LabelSpec::In(vs), Some(x)) => vs.contains(&x),
                });
            let project = self.project.is_none_or(|p| b.project == Some(p));
            let names = self.names.as_ref().is_none_or(|ps| {
                ps.iter()
                    .any(|&p| plain_glob(NAME_PATTERNS[p], NAMES[b.name]))
            });
            let images = self.images.as_ref().is_none_or(|ps| {
                ps.iter()
                    .any(|&p| plain_glob(IMAGE_PATTERNS[p], IMAGES[b.image]))
            });
            net && labels
                && project
                && names
                && images
                && self.all.iter().all(|s| s.matches(b))
                && (self.any.is_empty() || self.any.iter().any(|s| s.matches(b)))
        }

        /// The selector's keys, as `key = value` items (TOML).
        fn items(&self) -> Vec<String> {
            let list = |xs: &[usize], f: &dyn Fn(usize) -> String| {
                let v: Vec<String> = xs.iter().map(|&x| format!("\"{}\"", f(x))).collect();
                format!("[{}]", v.join(", "))
            };
            let mut out = Vec::new();
            if let Some(ns) = &self.networks {
                out.push(format!("network = {}", list(ns, &|n| format!("n{n}"))));
            }
            if !self.labels.is_empty() {
                let ls: Vec<String> = self
                    .labels
                    .iter()
                    .map(|(k, spec)| match spec {
                        LabelSpec::Eq(v) => format!("k{k} = \"v{v}\""),
                        LabelSpec::In(vs) => format!("k{k} = {}", list(vs, &|v| format!("v{v}"))),
                        LabelSpec::Exists => format!("k{k} = true"),
                    })
                    .collect();
                out.push(format!("labels = {{ {} }}", ls.join(", ")));
            }
            if let Some(p) = self.project {
                out.push(format!("compose = {{ project = \"p{p}\" }}"));
            }
            if let Some(ps) = &self.names {
                out.push(format!(
                    "names = {}",
                    list(ps, &|p| NAME_PATTERNS[p].into())
                ));
            }
            if let Some(ps) = &self.images {
                out.push(format!(
                    "image = {}",
                    list(ps, &|p| IMAGE_PATTERNS[p].into())
                ));
            }
            for (key, sels) in [("all", &self.all), ("any", &self.any)] {
                if !sels.is_empty() {
                    let inner: Vec<String> = sels
                        .iter()
                        .map(|s| format!("{{ {} }}", s.items().join(", ")))
                        .collect();
                    out.push(format!("{key} = [{}]", inner.join(", ")));
                }
            }
            out
        }
    }

    fn small_list(n: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..n, 1..=2)
    }

    fn label_spec() -> impl Strategy<Value = LabelSpec> {
        prop_oneof![
            (0usize..3).prop_map(LabelSpec::Eq),
            small_list(3).prop_map(LabelSpec::In),
            Just(LabelSpec::Exists),
        ]
    }

    fn sel_leaf() -> impl Strategy<Value = Sel> {
        (
            proptest::option::weighted(0.3, small_list(2)),
            proptest::collection::btree_map(0usize..3, label_spec(), 0..=2),
            proptest::option::weighted(0.2, 0usize..2),
            proptest::option::weighted(0.2, small_list(NAME_PATTERNS.len())),
            proptest::option::weighted(0.2, small_list(IMAGE_PATTERNS.len())),
        )
            .prop_map(|(networks, labels, project, names, images)| {
                let mut s = Sel {
                    networks,
                    labels,
                    project,
                    names,
                    images,
                    ..Sel::default()
                };
                if s.items().is_empty() {
                    s.labels.insert(0, LabelSpec::Exists);
                }
                s
            })
    }

    fn sel() -> impl Strategy<Value = Sel> {
        sel_leaf().prop_recursive(2, 8, 2, |inner| {
            (
                sel_leaf(),
                proptest::collection::vec(inner.clone(), 0..=2),
                proptest::collection::vec(inner, 0..=2),
            )
                .prop_map(|(mut s, all, any)| {
                    s.all = all;
                    s.any = any;
                    s
                })
        })
    }

    fn a_box() -> impl Strategy<Value = Box> {
        (
            proptest::collection::vec(proptest::option::of(0usize..3), 3),
            proptest::option::of(0usize..2),
            0..NAMES.len(),
            0..IMAGES.len(),
            proptest::collection::vec(0usize..2, 0..=2),
        )
            .prop_map(|(labels, project, name, image, networks)| Box {
                labels,
                project,
                name,
                image,
                networks,
            })
    }

    impl Box {
        fn container(&self, i: usize) -> Container {
            let mut labels: BTreeMap<String, String> = self
                .labels
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (format!("k{k}"), format!("v{v}"))))
                .collect();
            if let Some(p) = self.project {
                labels.insert("com.docker.compose.project".to_string(), format!("p{p}"));
            }
            Container {
                published: Vec::new(),
                id: format!("c{i}"),
                name: NAMES[self.name].to_string(),
                image: IMAGES[self.image].to_string(),
                labels,
                networks: self
                    .networks
                    .iter()
                    .map(|n| Attachment {
                        network: format!("n{n}"),
                        ..Attachment::default()
                    })
                    .collect(),
                ..Container::default()
            }
        }
    }

    /// Address blocks rules may name, and addresses to probe them with.
    const BLOCKS: [&str; 8] = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "10.2.0.0/16",
        "fd00::/8",
        "fd00:1::/32",
        "fd00:1:2::/48",
    ];
    const PROBE_ADDRS: [&str; 9] = [
        "10.1.2.3",
        "10.1.2.4",
        "10.1.3.1",
        "10.2.0.1",
        "10.9.9.9",
        "11.0.0.1",
        "fd00:1:2::5",
        "fd00:2::1",
        "2001:db8::1",
    ];

    fn cidr_peer() -> impl Strategy<Value = String> {
        (
            small_list(BLOCKS.len()),
            proptest::collection::vec(0..BLOCKS.len(), 0..=2),
        )
            .prop_map(|(cidrs, except)| {
                let parsed = |i: usize| cidr::Cidr::parse(BLOCKS[i]).unwrap();
                // Keep only exceptions strictly inside a chosen block.
                let except: Vec<usize> = except
                    .into_iter()
                    .filter(|&e| {
                        cidrs.iter().any(|&c| {
                            parsed(c).covers(&parsed(e))
                                && parsed(c).prefix_len < parsed(e).prefix_len
                        })
                    })
                    .collect();
                let q = |v: &[usize]| {
                    v.iter()
                        .map(|&i| format!("\"{}\"", BLOCKS[i]))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if except.is_empty() && cidrs.len() == 1 {
                    format!("\"{}\"", BLOCKS[cidrs[0]])
                } else {
                    format!("{{ cidr = [{}], except = [{}] }}", q(&cidrs), q(&except))
                }
            })
    }

    /// A random policy: groups g0..gN with random selectors and defaults,
    /// random rules (allow, deny, audit; groups, host, world, address
    /// blocks with exceptions), random unmanaged defaults; and containers.
    #[derive(Clone, Debug)]
    struct Case {
        text: String,
        selectors: Vec<Sel>,
        boxes: Vec<Box>,
        probes: Vec<(u8, u16)>,
    }

    fn port_spec() -> impl Strategy<Value = String> {
        // Small port numbers so that ranges overlap and edges get probed.
        prop_oneof![
            (1u16..12, prop_oneof![Just("tcp"), Just("udp")]).prop_map(|(p, t)| format!("{p}/{t}")),
            (1u16..12, 0u16..6, prop_oneof![Just("tcp"), Just("udp")])
                .prop_map(|(p, w, t)| format!("{p}-{}/{t}", p + w)),
            Just("tcp".to_string()),
            Just("udp".to_string()),
            Just("icmp".to_string()),
            Just("icmpv4".to_string()),
            Just("icmpv6".to_string()),
            Just("65530-65535/tcp".to_string()),
        ]
    }

    fn action() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("allow"), Just("deny"), Just("audit")]
    }

    fn case() -> impl Strategy<Value = Case> {
        (2usize..=4).prop_flat_map(|n| {
            let peer = prop_oneof![
                6 => (0..n).prop_map(|i| format!("\"g{i}\"")),
                1 => Just("\"world\"".to_string()),
                1 => Just("\"host\"".to_string()),
                2 => cidr_peer(),
            ];
            let rule = (
                peer.clone(),
                peer,
                proptest::option::weighted(
                    0.8,
                    prop_oneof![
                        9 => proptest::collection::vec(port_spec(), 1..4),
                        1 => Just(vec!["any".to_string()]),
                    ],
                ),
                action(),
            );
            let defaults = proptest::collection::vec((any::<bool>(), any::<bool>()), n);
            let selectors = proptest::collection::vec(sel(), n);
            let rules = proptest::collection::vec(rule, 0..8);
            let boxes = proptest::collection::vec(a_box(), 1..6);
            let unmanaged = proptest::option::of((any::<bool>(), any::<bool>()));
            let probe = prop_oneof![
                (Just(proto::TCP), 0u16..20),
                (Just(proto::UDP), 0u16..20),
                (Just(proto::TCP), 65528u16..=65535),
                (Just(proto::ICMP), Just(0u16)),
                (Just(proto::ICMPV6), Just(0u16)),
                (Just(132u8), 0u16..20),
            ];
            let probes = proptest::collection::vec(probe, 1..10);
            (defaults, selectors, rules, boxes, unmanaged, probes).prop_map(
                move |(defs, selectors, rules, boxes, unmanaged, probes)| {
                    let word = |deny: bool| if deny { "deny" } else { "allow" };
                    let mut text = String::new();
                    if let Some((ing, eg)) = unmanaged {
                        text.push_str(&format!(
                            "[settings]\nunmanaged = {{ ingress = \"{}\", egress = \"{}\" }}\n\n",
                            word(ing),
                            word(eg)
                        ));
                    }
                    for (i, ((ing, eg), sel)) in defs.iter().zip(&selectors).enumerate() {
                        text.push_str(&format!("[groups.g{i}]\n"));
                        for item in sel.items() {
                            text.push_str(&item);
                            text.push('\n');
                        }
                        text.push_str(&format!(
                            "ingress = \"{}\"\negress = \"{}\"\n\n",
                            word(*ing),
                            word(*eg)
                        ));
                    }
                    for (from, to, ports, action) in rules {
                        text.push_str(&format!("[[rules]]\nfrom = {from}\nto = {to}\n"));
                        if let Some(ports) = ports {
                            let list: Vec<String> =
                                ports.iter().map(|p| format!("\"{p}\"")).collect();
                            text.push_str(&format!("ports = [{}]\n", list.join(", ")));
                        }
                        text.push_str(&format!("action = \"{action}\"\n\n"));
                    }
                    Case {
                        text,
                        selectors,
                        boxes,
                        probes,
                    }
                },
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn compiled_lookup_matches_evaluate(case in case()) {
            let policy = parse_str(&case.text, "random.toml")
                .map_err(|e| TestCaseError::fail(format!("{e}\n{}", case.text)))?;
            let containers: Vec<Container> =
                case.boxes.iter().enumerate().map(|(i, b)| b.container(i)).collect();

            // Selection agrees with a matcher written independently.
            for (b, c) in case.boxes.iter().zip(&containers) {
                let want: Vec<String> = case
                    .selectors
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.matches(b))
                    .map(|(i, _)| format!("g{i}"))
                    .collect();
                prop_assert_eq!(policy.groups_of(c), want, "{:?}\n{}", b, case.text);
            }

            let compiled = compile(&policy, &containers, &mut IdentityAllocator::new()).unwrap();

            // Every peer: each container, the host, and addresses that are
            // not containers (the world, address blocks, exceptions).
            let mut peers: Vec<(String, u32, Vec<String>)> = containers
                .iter()
                .map(|c| (c.name.clone(), compiled.container_identity[&c.id], policy.groups_of(c)))
                .collect();
            peers.push(("host".into(), identity::HOST, vec![HOST.to_string()]));
            for addr in PROBE_ADDRS {
                let ip: IpAddr = addr.parse().unwrap();
                let id = compiled.address_identity(ip);
                let names = policy.names_of_address(ip);
                // The trie's identity stands for exactly these peers.
                let mut got = compiled.names_of_identity(id);
                got.sort();
                let mut want = names.clone();
                want.sort();
                prop_assert_eq!(&got, &want, "address {} -> identity {}\n{}", addr, id, case.text);
                peers.push((addr.to_string(), id, names));
            }
            for (src_name, src, src_groups) in &peers {
                for (dst_name, dst, dst_groups) in &peers {
                    for &(proto, port) in &case.probes {
                        let want = evaluate(&policy, src_groups, dst_groups, proto, port);
                        let got = compiled.lookup(*src, *dst, proto, port);
                        prop_assert_eq!(
                            (got.action, got.rule_id),
                            (want.action, want.rule_id),
                            "{} {:?} -> {} {:?} proto {} port {}\nkernel: {}\nreference: {}\n{}",
                            src_name, src_groups, dst_name, dst_groups, proto, port,
                            got.why, want.why, case.text
                        );
                    }
                }
            }
        }
    }
}
