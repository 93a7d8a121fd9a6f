//! Which probes to run, and what the compiled policy (exactly what the
//! kernel gets) expects of each.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use netiso_common::{identity, proto, Action};

use crate::host::docker::GWBRIDGE;
use crate::model::Container;
use crate::policy::{Compiled, Policy, PortSpec, Proto};

use super::{Class, Endpoint, Observed, Outcome, Plan, ProbeProto, Skipped, HOST, UNMANAGED};

struct Member<'a> {
    c: &'a Container,
    identity: u32,
}

/// The lowest port from 47000 up that no rule covers for `proto`.
fn unlisted_port(policy: &Policy, proto: u8) -> u16 {
    (47000..=u16::MAX)
        .find(|p| !policy.rules.iter().any(|r| r.covers(proto, *p)))
        .unwrap_or(47000)
}

/// The default gateway of a process's network namespace (the host's
/// address on the container's network, for Docker bridges).
fn gateway_of(pid: u32) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000")
            .then(|| u32::from_str_radix(f[2], 16).ok())
            .flatten()
            .map(|g| Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// Decides which probes to run: for every ordered pair of classes, one
/// representative source and destination sharing a network; the ports of
/// the rules between them, one port no rule names (TCP and UDP), and ICMP.
pub fn plan(
    policy: &Policy,
    compiled: &Compiled,
    containers: &[Container],
    only: &[String],
) -> (Vec<Plan>, Vec<Skipped>) {
    let mut classes: BTreeMap<Class, Vec<Member<'_>>> = BTreeMap::new();
    for g in &policy.groups {
        classes.entry(Class(g.name.clone())).or_default();
    }
    // Swarm tasks on other nodes (no pid here) are destinations only: a
    // probe starts in its source's namespace. Local members first.
    let mut sorted: Vec<&Container> = containers
        .iter()
        .filter(|c| (c.pid > 0 || is_remote(c)) && c.networks.iter().any(|a| a.ipv4.is_some()))
        .collect();
    sorted.sort_by(|a, b| (is_remote(a), &a.name).cmp(&(is_remote(b), &b.name)));
    for c in sorted {
        let identity = compiled
            .container_identity
            .get(&c.id)
            .copied()
            .unwrap_or(identity::UNMANAGED);
        let groups = policy.groups_of(c);
        if groups.is_empty() {
            classes
                .entry(Class(UNMANAGED.into()))
                .or_default()
                .push(Member { c, identity });
        }
        for g in groups {
            classes
                .entry(Class(g))
                .or_default()
                .push(Member { c, identity });
        }
    }
    // Unmanaged containers that share a network with a managed one are the
    // peers that matter: try them first.
    let managed_nets: BTreeSet<&str> = classes
        .iter()
        .filter(|(c, _)| c.0 != UNMANAGED)
        .flat_map(|(_, ms)| ms.iter())
        .flat_map(|m| m.c.networks.iter().map(|a| a.network.as_str()))
        .collect();
    if let Some(ms) = classes.get_mut(&Class(UNMANAGED.into())) {
        ms.sort_by_key(|m| {
            let near =
                m.c.networks
                    .iter()
                    .any(|a| managed_nets.contains(a.network.as_str()));
            (!near, m.c.name.clone())
        });
    }
    let uses_host = policy
        .rules
        .iter()
        .any(|r| r.from.name() == HOST || r.to.name() == HOST);
    let mut names: Vec<Class> = classes.keys().cloned().collect();
    if uses_host {
        names.push(Class(HOST.into()));
    }
    let wanted = |c: &Class| only.is_empty() || only.contains(&c.0);
    let tcp_free = unlisted_port(policy, proto::TCP);
    let udp_free = unlisted_port(policy, proto::UDP);
    let ns = |c: &Container| Some(PathBuf::from(format!("/proc/{}/ns/net", c.pid)));
    let remote_names: BTreeSet<String> = containers
        .iter()
        .filter(|c| is_remote(c))
        .map(|c| c.name.clone())
        .collect();

    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    for sc in &names {
        for dc in &names {
            // Nothing of netiso's lies between two unmanaged containers
            // (or the host and itself).
            let same_reserved = sc == dc && (sc.0 == HOST || sc.0 == UNMANAGED);
            if !(wanted(sc) || wanted(dc)) || same_reserved {
                continue;
            }
            let skip = |reason: &str| Skipped {
                from_class: sc.clone(),
                to_class: dc.clone(),
                reason: reason.into(),
            };
            let empty = Vec::new();
            let src_members = classes.get(sc).unwrap_or(&empty);
            let dst_members = classes.get(dc).unwrap_or(&empty);
            let pair = if sc.0 == HOST {
                // The host has no way onto an overlay.
                dst_members.iter().find(|d| !is_remote(d.c)).and_then(|d| {
                    let ip = d.c.networks.iter().find_map(|a| a.ipv4)?;
                    Some((
                        Endpoint {
                            name: HOST.into(),
                            netns: None,
                            ip: Ipv4Addr::UNSPECIFIED,
                            identity: identity::HOST,
                        },
                        Endpoint {
                            name: d.c.name.clone(),
                            netns: ns(d.c),
                            ip,
                            identity: d.identity,
                        },
                    ))
                })
            } else if dc.0 == HOST {
                src_members.iter().find(|s| !is_remote(s.c)).and_then(|s| {
                    let gw = gateway_of(s.c.pid)?;
                    Some((
                        Endpoint {
                            name: s.c.name.clone(),
                            netns: ns(s.c),
                            ip: s.c.networks.iter().find_map(|a| a.ipv4)?,
                            identity: s.identity,
                        },
                        Endpoint {
                            name: HOST.into(),
                            netns: None,
                            ip: gw,
                            identity: identity::HOST,
                        },
                    ))
                })
            } else {
                // First (source, destination) by name that share a network.
                src_members
                    .iter()
                    .filter(|s| !is_remote(s.c))
                    .find_map(|s| {
                        dst_members.iter().find_map(|d| {
                            if s.c.id == d.c.id {
                                return None;
                            }
                            // Not over docker_gwbridge: Docker keeps its
                            // containers apart there (no inter-container
                            // traffic), whatever the policy says.
                            let nets = s.c.networks.iter().filter(|sa| sa.network != GWBRIDGE);
                            nets.into_iter().find_map(|sa| {
                                let da = d.c.networks.iter().find(|da| da.network == sa.network)?;
                                Some((
                                    Endpoint {
                                        name: s.c.name.clone(),
                                        netns: ns(s.c),
                                        ip: sa.ipv4?,
                                        identity: s.identity,
                                    },
                                    Endpoint {
                                        name: d.c.name.clone(),
                                        netns: ns(d.c),
                                        ip: da.ipv4?,
                                        identity: d.identity,
                                    },
                                ))
                            })
                        })
                    })
            };
            let Some((from, to)) = pair else {
                let local_src = src_members.iter().any(|m| !is_remote(m.c));
                skipped.push(skip(if src_members.is_empty() && sc.0 != HOST {
                    "no running container in the source group"
                } else if !local_src && sc.0 != HOST {
                    "the source group runs on other nodes only: run verify there"
                } else if dst_members.is_empty() && dc.0 != HOST {
                    "no running container in the destination group"
                } else if sc == dc {
                    "needs two containers of the group on one network"
                } else {
                    "no two containers of these groups share a network"
                }));
                continue;
            };
            // Rule ports between these two peers, then the unlisted ones.
            let src_names = compiled_names(compiled, from.identity);
            let dst_names = compiled_names(compiled, to.identity);
            let mut ports: BTreeSet<(ProbeProto, u16, String)> = BTreeSet::new();
            for r in &policy.rules {
                if !(src_names.iter().any(|n| n == r.from.name())
                    && dst_names.iter().any(|n| n == r.to.name()))
                {
                    continue;
                }
                for spec in r.ports.iter().flatten() {
                    let (p, port) = match *spec {
                        PortSpec::Range { proto: p, lo, .. } => (p, lo),
                        PortSpec::Proto(p) => (p, 0),
                    };
                    let pp = match p {
                        Proto::Tcp => ProbeProto::Tcp,
                        Proto::Udp => ProbeProto::Udp,
                        _ => continue,
                    };
                    let port = match (port, pp) {
                        (0, ProbeProto::Tcp) => tcp_free,
                        (0, _) => udp_free,
                        (p, _) => p,
                    };
                    ports.insert((pp, port, format!("rule #{}", r.id)));
                }
            }
            let listed =
                |ports: &BTreeSet<(ProbeProto, u16, String)>, pp: ProbeProto, port: u16| {
                    ports.iter().any(|(p, q, _)| *p == pp && *q == port)
                };
            if !listed(&ports, ProbeProto::Tcp, tcp_free) {
                ports.insert((ProbeProto::Tcp, tcp_free, "no rule".into()));
            }
            if !listed(&ports, ProbeProto::Udp, udp_free) {
                ports.insert((ProbeProto::Udp, udp_free, "no rule".into()));
            }
            ports.insert((ProbeProto::Icmp, 0, "echo".into()));
            // UDP needs a listener at the destination, which verify cannot
            // start on another node (TCP: refused counts as reached).
            if remote_names.contains(&to.name) {
                ports.retain(|(p, _, _)| *p != ProbeProto::Udp);
                skipped.push(skip(
                    "UDP to a task on another node (no listener there): run verify on its node",
                ));
            }
            for (pp, port, why) in ports {
                plans.push(Plan {
                    from_class: sc.clone(),
                    to_class: dc.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    proto: pp,
                    port,
                    port_source: why,
                });
            }
        }
    }
    (plans, skipped)
}

/// A Swarm task on another node (from the overlay's gossip).
fn is_remote(c: &Container) -> bool {
    c.remote_node.is_some()
}

/// The peer names an identity stands for (its groups, or a reserved name).
fn compiled_names(compiled: &Compiled, id: u32) -> Vec<String> {
    match id {
        identity::HOST => vec![HOST.into()],
        identity::WORLD => vec!["world".into()],
        identity::UNMANAGED => vec![UNMANAGED.into()],
        _ => compiled
            .identities
            .get(&id)
            .map(|d| d.groups.clone())
            .unwrap_or_default(),
    }
}

/// What the compiled tables (exactly what the kernel gets) say.
pub fn expect(compiled: &Compiled, p: &Plan) -> (Action, u32, String) {
    let d = compiled.lookup(p.from.identity, p.to.identity, p.proto.number(), p.port);
    (d.action, d.rule_id, d.why)
}

pub fn judge(expected: Action, observed: &Observed) -> Outcome {
    let allow = expected != Action::Deny;
    match observed.reachable() {
        Some(r) if r == allow => Outcome::Ok,
        Some(_) => Outcome::Mismatch,
        None => Outcome::Inconclusive,
    }
}
