//! The pairs map's values, derived from the policy map's entries: what
//! the policy says about each identity pair, in one value the programs
//! find with one lookup (`netiso_common::PairValue`). Pure.
use std::collections::BTreeMap;

use netiso_common::{proto, PairEntry, PairKey, PairValue, PolicyKey, PolicyValue, PAIR_ENTRIES};

/// One value per (src, dst, slot) that has policy entries. Entries beyond
/// what a value holds stay in the policy map only, and the value says so;
/// the programs then look them up there, in the same order.
pub fn pairs_of(policy: &BTreeMap<PolicyKey, PolicyValue>) -> BTreeMap<PairKey, PairValue> {
    let mut pairs: BTreeMap<PairKey, PairValue> = BTreeMap::new();
    let mut counts: BTreeMap<PairKey, (usize, usize)> = BTreeMap::new();
    for (k, v) in policy {
        let pk = PairKey {
            src: k.src,
            dst: k.dst,
            slot: u32::from(k.slot),
        };
        let value = pairs.entry(pk).or_default();
        let (ports, protos) = counts.entry(pk).or_default();
        let entry = PairEntry {
            port: k.dport,
            proto: k.proto,
            action: v.action,
            rule_id: v.rule_id,
        };
        // An entry with action 0 would read as "no entry": the programs
        // deny unknown action bytes, so keep it in the policy map, where
        // they find it and deny.
        let inline = v.action != 0;
        if k.dport != 0 {
            if inline && *ports < PAIR_ENTRIES {
                value.ports[*ports] = entry;
                *ports += 1;
            } else {
                value.more_ports = 1;
            }
        } else if k.proto != proto::ANY {
            if inline && *protos < PAIR_ENTRIES {
                value.protos[*protos] = entry;
                *protos += 1;
            } else {
                value.more_protos = 1;
            }
        } else if inline {
            value.all = entry;
        } else {
            // (any proto, any port) with action 0: the programs would take
            // it for "none" inline; the compiler never writes one.
            value.all = PairEntry {
                action: netiso_common::Action::Deny as u8,
                ..entry
            };
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use netiso_common::Action;

    fn key(src: u32, dst: u32, proto: u8, dport: u16) -> PolicyKey {
        PolicyKey {
            src,
            dst,
            dport,
            proto,
            slot: 0,
        }
    }

    fn val(action: Action, rule_id: u32) -> PolicyValue {
        PolicyValue {
            action: action as u8,
            _pad: [0; 3],
            rule_id,
        }
    }

    /// The programs' lookup (netiso-ebpf/src/policy.rs `lookup`), over the
    /// pairs and the policy map as written.
    fn kernel(
        pairs: &BTreeMap<PairKey, PairValue>,
        policy: &BTreeMap<PolicyKey, PolicyValue>,
        src: u32,
        dst: u32,
        l4: u8,
        port: u16,
    ) -> Option<(u8, u32)> {
        let v = pairs.get(&PairKey { src, dst, slot: 0 })?;
        if port != 0 {
            if let Some(e) = v
                .ports
                .iter()
                .find(|e| e.action != 0 && e.port == port && e.proto == l4)
            {
                return Some((e.action, e.rule_id));
            }
            if v.more_ports != 0 {
                if let Some(p) = policy.get(&key(src, dst, l4, port)) {
                    return Some((p.action, p.rule_id));
                }
            }
        }
        if let Some(e) = v.protos.iter().find(|e| e.action != 0 && e.proto == l4) {
            return Some((e.action, e.rule_id));
        }
        if v.more_protos != 0 {
            if let Some(p) = policy.get(&key(src, dst, l4, 0)) {
                return Some((p.action, p.rule_id));
            }
        }
        (v.all.action != 0).then_some((v.all.action, v.all.rule_id))
    }

    /// The policy map's own order: exact, then per protocol, then any.
    fn by_policy(
        policy: &BTreeMap<PolicyKey, PolicyValue>,
        src: u32,
        dst: u32,
        l4: u8,
        port: u16,
    ) -> Option<(u8, u32)> {
        let hit = |k| policy.get(&k).map(|p: &PolicyValue| (p.action, p.rule_id));
        (if port != 0 {
            hit(key(src, dst, l4, port))
        } else {
            None
        })
        .or_else(|| hit(key(src, dst, l4, 0)))
        .or_else(|| hit(key(src, dst, proto::ANY, 0)))
    }

    #[test]
    fn one_lookup_says_what_the_policy_map_says() {
        // Pairs with none, few and many entries of every kind, against
        // every (proto, port) they name and some they do not.
        let mut policy = BTreeMap::new();
        let mut rule = 0;
        let mut next = |a| {
            rule += 1;
            val(a, rule)
        };
        policy.insert(key(1, 2, proto::TCP, 80), next(Action::Allow));
        policy.insert(key(1, 2, proto::UDP, 53), next(Action::Audit));
        policy.insert(key(1, 2, proto::TCP, 0), next(Action::Deny));
        for port in 1000..1010 {
            policy.insert(key(3, 4, proto::TCP, port), next(Action::Allow));
            policy.insert(key(3, 4, proto::UDP, port), next(Action::Deny));
        }
        for l4 in [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 132, 47] {
            policy.insert(key(3, 4, l4, 0), next(Action::Audit));
        }
        policy.insert(key(3, 4, proto::ANY, 0), next(Action::Deny));
        policy.insert(key(5, 6, proto::ANY, 0), next(Action::Allow));
        let pairs = pairs_of(&policy);
        assert_eq!(pairs.len(), 3);
        assert_eq!(
            pairs[&PairKey {
                src: 1,
                dst: 2,
                slot: 0,
            }]
                .more_ports,
            0
        );
        let many = pairs[&PairKey {
            src: 3,
            dst: 4,
            slot: 0,
        }];
        assert_eq!((many.more_ports, many.more_protos), (1, 1));
        for (src, dst) in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 1)] {
            for l4 in [
                proto::TCP,
                proto::UDP,
                proto::ICMP,
                proto::ICMPV6,
                132,
                47,
                99,
            ] {
                for port in [0, 53, 80, 81, 999, 1000, 1005, 1009, 1010] {
                    let port = if l4 == proto::TCP || l4 == proto::UDP {
                        port
                    } else {
                        0
                    };
                    assert_eq!(
                        kernel(&pairs, &policy, src, dst, l4, port),
                        by_policy(&policy, src, dst, l4, port),
                        "{src}->{dst} proto {l4} port {port}"
                    );
                }
            }
        }
    }
}
