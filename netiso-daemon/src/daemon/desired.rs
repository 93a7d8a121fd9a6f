//! The desired datapath contents: the compiled policy mapped onto the
//! containers' endpoints, fitted to the endpoints map, and why an
//! attachment cannot be enforced. Pure functions of their inputs.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netiso_common::{identity, peer_flags, IdentityInfo, IpKey, PublishedKey, PublishedValue};
use tracing::{error, warn};

use crate::datapath::{Desired, EndpointSpec};
use crate::model::Container;
use crate::observe::state::{EndpointState, PublishedState, RuleState, State, Unenforceable};
use crate::policy::{Compiled, Policy};

/// Whether a Docker network mode gives the container a network namespace of
/// its own (and so, on a bridge-like network, a veth).
pub(crate) fn has_own_netns(network_mode: &str) -> bool {
    !(network_mode == "host" || network_mode == "none" || network_mode.starts_with("container:"))
}

/// Drivers whose attachments never have a host-side veth.
pub(crate) fn no_veth_driver(driver: Option<&str>) -> bool {
    matches!(driver, Some("macvlan" | "ipvlan" | "host" | "null"))
}

/// Why an attachment of a container in some group has no veth to enforce
/// at, in words an operator can act on.
pub fn unenforceable_reason(c: &Container, network: &str, driver: Option<&str>) -> String {
    let mode = c.network_mode.as_str();
    if mode == "host" {
        return "runs with --network host: it shares the host's network stack, there is no \
                veth of its own; its traffic is judged as the host's"
            .into();
    }
    if mode == "none" {
        return "runs with --network none: no interface but loopback, nothing to enforce \
                (and no way in or out)"
            .into();
    }
    if let Some(other) = mode.strip_prefix("container:") {
        return format!(
            "runs with --network container:{other}: it shares that container's interfaces, \
             which are enforced with that container's groups"
        );
    }
    match driver {
        Some(d @ ("macvlan" | "ipvlan")) => format!(
            "network {network:?} uses the {d} driver: its traffic leaves through the parent \
             interface without a veth, so netiso cannot attach to it"
        ),
        Some("overlay") => format!(
            "no host-side veth found for network {network:?} (a Swarm overlay) in its \
             namespace under the engine's exec-root (`--docker-exec-root`, default \
             /var/run/docker: is it the engine's `--exec-root`, reachable from here?); \
             looked up again shortly and at every resync"
        ),
        Some(d) if d != "bridge" => format!(
            "network {network:?} uses the {d} driver, which gives the container no host-side veth"
        ),
        _ => format!(
            "no host-side veth found on network {network:?} yet (container starting or \
             stopping?); looked up again shortly and at every resync"
        ),
    }
}

/// Keeps the endpoints that fit the endpoints map when there are more than
/// it holds, loudly: held (fail-closed) endpoints first, so that they stay
/// closed; then those already in the map, so that nothing enforced now
/// stops being enforced; then containers in groups; then the rest. Those
/// left out are reported as unenforceable with the reason.
pub fn fit_endpoints(d: &mut Desired, state: &mut State, capacity: usize, applied: &BTreeSet<u32>) {
    if d.endpoints.len() <= capacity {
        return;
    }
    let rank = |ifindex: &u32, spec: &EndpointSpec| {
        if spec.flags & netiso_common::endpoint_flags::FAIL_CLOSED != 0 {
            0
        } else if applied.contains(ifindex) {
            1
        } else if spec.identity >= identity::FIRST_GROUP_IDENTITY || spec.flags != 0 {
            2
        } else {
            3
        }
    };
    let mut order: Vec<(u8, u32)> = d.endpoints.iter().map(|(i, s)| (rank(i, s), *i)).collect();
    order.sort();
    let total = order.len();
    for (_, ifindex) in order.into_iter().skip(capacity) {
        d.endpoints.remove(&ifindex);
        for e in state
            .endpoints
            .iter_mut()
            .filter(|e| e.ifindex == Some(ifindex))
        {
            e.enforced = false;
            e.guarded = false;
            state.unenforceable.push(Unenforceable {
                container: e.container.clone(),
                network: e.network.clone(),
                reason: format!(
                    "the endpoints map is full ({total} container veths, room for \
                     {capacity}): this one is not enforced"
                ),
            });
        }
    }
    error!(
        endpoints = total,
        capacity,
        "the endpoints map is full: {} container veths are not enforced",
        total - capacity
    );
}

/// Gives the host's own addresses the `host` identity (container
/// addresses, should one coincide, keep theirs). Only in the host's own
/// namespace: over a Swarm overlay nothing of the node's namespace sends
/// (such a source was forged: an unknown overlay peer there).
pub fn add_host_addresses(d: &mut Desired, addrs: &[IpAddr]) {
    for ip in addrs {
        d.identities
            .entry(IpKey::from_ip(*ip, 0))
            .or_insert(IdentityInfo {
                identity: identity::HOST,
                flags: peer_flags::HOST_NS_ONLY,
            });
    }
}

/// What the built-in deny of a Swarm node's data path says (`stats`,
/// `explain`).
pub const SWARM_DATA_PATH_DENY: &str =
    "built-in: Swarm overlay VXLAN (a forged frame would claim any task's address)";

/// On a Swarm node: no container sends to the overlay data path's UDP
/// `port` beyond the containers (see `reconcile::VXLAN_PORT`). One home
/// for the daemon, `explain` and `verify`.
pub fn deny_swarm_data_path(compiled: &mut Compiled, port: u16) {
    compiled.deny_beyond_containers(netiso_common::proto::UDP, port, SWARM_DATA_PATH_DENY);
}

/// Every address of a Swarm overlay's subnets that no known endpoint has
/// is an "unknown overlay peer" (a task another node started that the
/// gossip has not named yet): its own identity, never `world`, so that a
/// group's defaults decide (one that denies ingress keeps it out) and no
/// rule for the world or an address block lets it in. Known endpoints'
/// exact addresses win over the subnet (exact before the trie).
pub fn add_overlay_subnets(d: &mut Desired, overlays: &[crate::host::overlay::OverlayInfo]) {
    for o in overlays {
        for (addr, len) in &o.subnets {
            d.cidrs.insert(
                (*addr, *len),
                IdentityInfo {
                    identity: identity::UNKNOWN_OVERLAY_PEER,
                    flags: 0,
                },
            );
        }
    }
}

/// Maps the compiled policy onto endpoints: every container address gets
/// its identity; every veth of a container in some group gets the programs.
pub fn build_desired(
    compiled: &Compiled,
    containers: &[Container],
    policy: &Policy,
    drivers: &BTreeMap<String, String>,
) -> (Desired, State) {
    let mut d = Desired {
        policy: compiled.entries.clone(),
        cidrs: compiled
            .cidrs
            .iter()
            .map(|e| {
                let info = IdentityInfo {
                    identity: e.identity,
                    flags: e.flags,
                };
                ((e.addr, e.prefix_len), info)
            })
            .collect(),
        ..Desired::default()
    };
    let mut state = State::default();
    for (id, def) in &compiled.identities {
        let names = match *id {
            identity::HOST => vec!["host".to_string()],
            identity::WORLD => vec!["world".to_string()],
            identity::UNMANAGED => vec!["unmanaged".to_string()],
            _ => def.groups.clone(),
        };
        state.identities.insert(*id, names);
    }
    for c in containers {
        let id = compiled
            .container_identity
            .get(&c.id)
            .copied()
            .unwrap_or(identity::UNMANAGED);
        let flags = compiled.identities.get(&id).map_or(0, |def| def.flags);
        // A container in no group is policed too when `[settings]
        // unmanaged` denies a direction (its identity then has flags).
        let managed = id >= identity::FIRST_GROUP_IDENTITY || flags != 0;
        // A port the host publishes for this container stands for it: a
        // container reaching it through the host (docker-proxy) is judged
        // as reaching this container on the container's port.
        for p in &c.published {
            let key = PublishedKey {
                port: p.host_port,
                proto: p.proto,
                slot: 0,
            };
            let value = match d.published.get(&key) {
                // The same container port of the same identity (IPv4 and
                // IPv6 bindings of one port, replicas of one group): one
                // meaning.
                Some(other)
                    if other.identity == identity::AMBIGUOUS_PUBLISHED
                        || (other.identity, other.port) != (id, p.container_port) =>
                {
                    if other.identity != identity::AMBIGUOUS_PUBLISHED {
                        warn!(
                            port = p.host_port,
                            proto = crate::observe::flow::proto_name(p.proto),
                            container = %c.name,
                            "a host port is published for two containers (on different host \
                             addresses): netiso tells published ports apart by port only, so \
                             reaching this port through the host is denied to every container"
                        );
                    }
                    PublishedValue {
                        identity: identity::AMBIGUOUS_PUBLISHED,
                        flags: netiso_common::defaults::DENY_INGRESS,
                        port: p.host_port,
                        _pad: [0; 2],
                    }
                }
                _ => PublishedValue {
                    identity: id,
                    flags,
                    port: p.container_port,
                    _pad: [0; 2],
                },
            };
            state.published.push(PublishedState {
                proto: crate::observe::flow::proto_name(p.proto),
                host_port: p.host_port,
                container: c.name.clone(),
                container_id: c.id.clone(),
                container_port: p.container_port,
            });
            d.published.insert(key, value);
        }
        let groups = policy.groups_of(c);
        // Learn mode records this container's new flows; verdicts stay.
        let learn = if policy.learns(c) {
            netiso_common::endpoint_flags::LEARN
        } else {
            0
        };
        // A container some rule lets reach names: its DNS is watched.
        let names = if compiled.fqdn_senders.contains(&id) {
            netiso_common::endpoint_flags::FQDN
        } else {
            0
        };
        // Host, none and container: modes have no veth of their own: one
        // entry for the container, not one per pseudo-network.
        let own_netns = has_own_netns(&c.network_mode);
        // A task on another node: its addresses get its identity (above
        // and below); its own node enforces for it.
        let remote = c.remote_node.is_some();
        if managed && !remote && (!own_netns || c.networks.is_empty()) {
            state.unenforceable.push(Unenforceable {
                container: c.name.clone(),
                network: c.network_mode.clone(),
                reason: unenforceable_reason(c, &c.network_mode, None),
            });
        }
        for a in &c.networks {
            let ips = a
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(a.ipv6.map(IpAddr::V6));
            // The link-local address (EUI-64 of the MAC) speaks for the
            // container too: without it, a link-local sender would be "world".
            let link_local = a.mac.map(|m| IpAddr::V6(crate::datapath::link_local_of(m)));
            // Behind a veth that gets the programs (below): the receiver's
            // program may take the sender's verdict on a live connection.
            let local = if a.host_ifindex.is_some() && a.host_ifname.is_some() {
                peer_flags::LOCAL_ENDPOINT
            } else {
                0
            };
            // The namespace the address lives in: a Swarm overlay's, or
            // the host's (bridges, docker_gwbridge). Claimed in the other,
            // it was forged (peer_flags::OVERLAY_ONLY).
            let on_overlay = remote
                || a.host_netns.is_some()
                || drivers.get(&a.network).map(String::as_str) == Some("overlay");
            let ns = if on_overlay {
                peer_flags::OVERLAY_ONLY
            } else {
                peer_flags::HOST_NS_ONLY
            };
            for ip in ips.chain(link_local) {
                d.identities.insert(
                    IpKey::from_ip(ip, 0),
                    IdentityInfo {
                        identity: id,
                        flags: flags | local | ns,
                    },
                );
            }
            let mut enforced = false;
            let mut guarded = false;
            // Every container veth gets the programs: containers in no
            // group too, so that none can send from another's address or
            // send what netiso does not understand. Policy verdicts for
            // them stay those of the `unmanaged` identity.
            {
                match (a.host_ifindex, &a.host_ifname) {
                    (Some(ifindex), Some(ifname)) => {
                        d.endpoints.insert(
                            ifindex,
                            EndpointSpec {
                                ifname: ifname.clone(),
                                identity: id,
                                flags: flags | learn | names,
                                ipv4: a.ipv4,
                                // IPv6 over a Swarm overlay is not judged:
                                // gossip names remote tasks by IPv4 only,
                                // and engines hand out overlay IPv6 per
                                // node (a remote task can hold a local
                                // one's address). With no IPv6 address
                                // (nor link-local: see EndpointSpec), the
                                // endpoint's IPv6 is dropped both ways.
                                ipv6: if a.host_netns.is_some() { None } else { a.ipv6 },
                                mac: a.mac,
                                ipv4_prefix_len: a.ipv4_prefix_len,
                                netns: a.host_netns.as_ref().map(Into::into),
                            },
                        );
                        enforced = managed;
                        guarded = true;
                    }
                    _ if !own_netns || !managed || remote => {}
                    _ => state.unenforceable.push(Unenforceable {
                        container: c.name.clone(),
                        network: a.network.clone(),
                        reason: unenforceable_reason(
                            c,
                            &a.network,
                            drivers.get(&a.network).map(String::as_str),
                        ),
                    }),
                }
            }
            state.endpoints.push(EndpointState {
                container_id: c.id.clone(),
                container: c.name.clone(),
                groups: groups.clone(),
                identity: id,
                network: a.network.clone(),
                ifindex: a.host_ifindex,
                ifname: a.host_ifname.clone(),
                ip: a.ipv4.map(Into::into),
                enforced,
                guarded,
                learning: guarded && learn != 0,
                resolves_names: guarded && names != 0,
                netns: a.host_netns.clone(),
                remote_node: c.remote_node.clone(),
            });
        }
    }
    state.fqdns = compiled
        .fqdns
        .iter()
        .map(|e| crate::observe::state::FqdnState {
            identity: e.identity,
            name: e.peer.name.clone(),
            patterns: e.peer.patterns.clone(),
        })
        .collect();
    state.rules = compiled
        .rules
        .iter()
        .map(|r| RuleState {
            id: r.id,
            from: r.from.clone(),
            to: r.to.clone(),
            ports: r.ports.clone(),
            action: r.action.as_str().into(),
            description: r.description.clone(),
            location: r.location.clone(),
        })
        .collect();
    (d, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::EndpointSpec;
    use crate::observe::state::EndpointState;
    use crate::policy::tests::container;
    use crate::policy::{compile, parse_str, IdentityAllocator, FIRST_CIDR_IDENTITY};

    /// Over capacity: held endpoints stay closed, enforced ones stay
    /// enforced, group members come before containers in no group, and
    /// every one left out is reported.
    #[test]
    fn a_full_endpoints_map_keeps_holds_and_enforced_endpoints_first() {
        let spec = |identity, flags| EndpointSpec {
            netns: None,
            ifname: "v".into(),
            identity,
            flags,
            ..EndpointSpec::default()
        };
        let mut d = Desired::default();
        let held = netiso_common::endpoint_flags::FAIL_CLOSED;
        d.endpoints.insert(1, spec(identity::UNMANAGED, 0));
        d.endpoints.insert(2, spec(300, 0));
        d.endpoints.insert(3, spec(identity::UNMANAGED, held));
        d.endpoints.insert(4, spec(301, 0));
        d.endpoints.insert(5, spec(identity::UNMANAGED, 0));
        let mut state = State::default();
        for i in 1..=5u32 {
            state.endpoints.push(EndpointState {
                container: format!("c{i}"),
                ifindex: Some(i),
                enforced: true,
                ..EndpointState::default()
            });
        }
        let applied = BTreeSet::from([5]);
        fit_endpoints(&mut d, &mut state, 3, &applied);
        let kept: Vec<u32> = d.endpoints.keys().copied().collect();
        assert_eq!(kept, [2, 3, 5], "held 3, applied 5, then group member 2");
        let out: Vec<&str> = state
            .unenforceable
            .iter()
            .map(|u| u.container.as_str())
            .collect();
        assert_eq!(out, ["c4", "c1"]);
        assert!(state.unenforceable[0]
            .reason
            .contains("endpoints map is full"));
        assert!(!state.endpoints[0].enforced && state.endpoints[1].enforced);
        // Within capacity nothing changes.
        let before = d.clone();
        fit_endpoints(&mut d, &mut state, 8, &applied);
        assert_eq!(d, before);
    }

    /// The daemon side of unmanaged defaults and address blocks: containers in
    /// no group get programs exactly when `[settings] unmanaged` denies
    /// something, and the CIDR entries reach the datapath.
    /// A host port published for two containers (on two host addresses)
    /// cannot be told apart by port: reaching it through the host is
    /// denied to everyone instead of standing for the last one listed
    /// (found by review: a container allowed to reach one reached the
    /// other through docker-proxy). One container publishing one port on
    /// IPv4 and IPv6 keeps its meaning.
    #[test]
    fn a_host_port_published_for_two_containers_is_denied() {
        use crate::model::Published;
        use netiso_common::{defaults, proto, PublishedKey};
        let publishing = |name: &str, app: &str, ports: &[(u16, u16)]| {
            let mut c = container(name, &[("app", app)], &["n"]);
            c.published = ports
                .iter()
                .map(|&(host_port, container_port)| Published {
                    proto: proto::TCP,
                    host_port,
                    container_port,
                })
                .collect();
            c
        };
        let cs = [
            // 8080 twice for `a` (0.0.0.0 and ::), 9090 for `a` and for `b`,
            // 7070 for `a` on two container ports.
            publishing(
                "a",
                "a",
                &[(8080, 80), (8080, 80), (9090, 90), (7070, 70), (7070, 71)],
            ),
            publishing("b", "b", &[(9090, 90)]),
        ];
        let text = "[groups.a]\nlabels = { app = \"a\" }\n[groups.b]\nlabels = { app = \"b\" }\n";
        let p = parse_str(text, "d.toml").unwrap();
        let compiled = compile(&p, &cs, &mut IdentityAllocator::new()).unwrap();
        let (d, _) = build_desired(&compiled, &cs, &p, &BTreeMap::new());
        let at = |port| {
            let v = d.published[&PublishedKey {
                port,
                proto: proto::TCP,
                slot: 0,
            }];
            (v.identity, v.flags, v.port)
        };
        let a = compiled.container_identity["id-a"];
        assert_eq!(at(8080).0, a);
        assert_eq!(at(8080).2, 80);
        for port in [9090, 7070] {
            assert_eq!(
                at(port),
                (identity::AMBIGUOUS_PUBLISHED, defaults::DENY_INGRESS, port),
                "{port}"
            );
        }
    }

    #[test]
    fn unmanaged_defaults_and_blocks_reach_the_datapath() {
        use netiso_common::{defaults, identity};
        let with_veth = |name: &str, labels: &[(&str, &str)], ifindex: u32, ip: [u8; 4]| {
            let mut c = container(name, labels, &["n"]);
            let a = &mut c.networks[0];
            a.host_ifindex = Some(ifindex);
            a.host_ifname = Some(format!("veth{ifindex}"));
            a.ipv4 = Some(ip.into());
            c.network_mode = "n".into();
            c
        };
        let cs = [
            with_veth("web", &[("app", "web")], 10, [172, 20, 0, 2]),
            with_veth("plain", &[], 11, [172, 20, 0, 3]),
        ];
        let rules = "[groups.web]\nlabels = { app = \"web\" }\n\
                     [[rules]]\nfrom = \"web\"\nto = { cidr = \"198.18.0.0/15\", except = [\"198.18.1.0/24\"] }\naction = \"deny\"\n";
        let build = |text: &str| {
            let p = parse_str(text, "d.toml").unwrap();
            let compiled = compile(&p, &cs, &mut IdentityAllocator::new()).unwrap();
            build_desired(&compiled, &cs, &p, &BTreeMap::new()).0
        };

        let d = build(rules);
        assert!(d.endpoints.contains_key(&10));
        // A container in no group gets the programs too (anti-spoofing and the
        // checks of what netiso does not understand), with the unmanaged
        // identity's allow defaults: Docker's behaviour for its traffic.
        let plain = &d.endpoints[&11];
        assert_eq!((plain.identity, plain.flags), (identity::UNMANAGED, 0));
        let cidr = |a: [u8; 4], len| d.cidrs[&(IpAddr::from(a), len)].identity;
        assert_eq!(cidr([198, 18, 0, 0], 15), FIRST_CIDR_IDENTITY);
        assert_eq!(cidr([198, 18, 1, 0], 24), identity::WORLD);
        assert_eq!(d.cidrs.len(), 2);

        let d = build(&format!(
            "[settings]\nunmanaged = {{ ingress = \"deny\" }}\n{rules}"
        ));
        let plain = &d.endpoints[&11];
        assert_eq!(
            (plain.identity, plain.flags),
            (identity::UNMANAGED, defaults::DENY_INGRESS)
        );
        let ip = IpKey::v4([172, 20, 0, 3], 0);
        // Its defaults, and the mark of an address behind a managed veth.
        assert_eq!(
            d.identities[&ip].flags,
            defaults::DENY_INGRESS | peer_flags::LOCAL_ENDPOINT | peer_flags::HOST_NS_ONLY
        );
    }

    #[test]
    fn only_addresses_behind_a_managed_veth_are_local_endpoints() {
        use peer_flags::LOCAL_ENDPOINT;
        let mut here = container("here", &[("app", "web")], &["n"]);
        here.networks[0].host_ifindex = Some(10);
        here.networks[0].host_ifname = Some("veth10".into());
        here.networks[0].ipv4 = Some([172, 20, 0, 2].into());
        here.network_mode = "n".into();
        // No veth found (another host's address, a macvlan): not local.
        let mut away = container("away", &[("app", "web")], &["n"]);
        away.networks[0].ipv4 = Some([172, 20, 0, 3].into());
        away.network_mode = "n".into();
        let cs = [here, away];
        let p = parse_str("[groups.web]\nlabels = { app = \"web\" }\n", "d.toml").unwrap();
        let compiled = compile(&p, &cs, &mut IdentityAllocator::new()).unwrap();
        let d = build_desired(&compiled, &cs, &p, &BTreeMap::new()).0;
        let flags = |ip: [u8; 4]| d.identities[&IpKey::v4(ip, 0)].flags;
        assert_ne!(flags([172, 20, 0, 2]) & LOCAL_ENDPOINT, 0);
        assert_eq!(flags([172, 20, 0, 3]) & LOCAL_ENDPOINT, 0);
        // Never on a published port's value.
        assert!(d.published.values().all(|v| v.flags & LOCAL_ENDPOINT == 0));
    }

    #[test]
    fn overlay_addresses_name_their_container_in_overlay_namespaces_only() {
        use peer_flags::{HOST_NS_ONLY, OVERLAY_ONLY};
        // A local task on an overlay (found in its namespace) and on
        // docker_gwbridge; a remote task from the gossip.
        let mut task = container("task", &[("app", "web")], &["ov", "docker_gwbridge"]);
        task.networks[0].ipv4 = Some([10, 0, 1, 2].into());
        task.networks[0].host_netns = Some("/run/docker/netns/1-abc".into());
        task.networks[1].ipv4 = Some([172, 18, 0, 3].into());
        let mut remote = container("remote", &[("app", "web")], &["ov"]);
        remote.networks[0].ipv4 = Some([10, 0, 1, 9].into());
        remote.remote_node = Some("198.18.0.2".into());
        // On an overlay whose veth was not found: the driver says so.
        let mut unresolved = container("unresolved", &[("app", "web")], &["ov2"]);
        unresolved.networks[0].ipv4 = Some([10, 0, 2, 2].into());
        let cs = [task, remote, unresolved];
        let p = parse_str("[groups.web]\nlabels = { app = \"web\" }\n", "d.toml").unwrap();
        let compiled = compile(&p, &cs, &mut IdentityAllocator::new()).unwrap();
        let drivers = BTreeMap::from([
            ("ov".to_string(), "overlay".to_string()),
            ("ov2".to_string(), "overlay".to_string()),
            ("docker_gwbridge".to_string(), "bridge".to_string()),
        ]);
        let d = build_desired(&compiled, &cs, &p, &drivers).0;
        let flags =
            |ip: [u8; 4]| d.identities[&IpKey::v4(ip, 0)].flags & (OVERLAY_ONLY | HOST_NS_ONLY);
        assert_eq!(flags([10, 0, 1, 2]), OVERLAY_ONLY);
        assert_eq!(flags([10, 0, 1, 9]), OVERLAY_ONLY);
        assert_eq!(flags([10, 0, 2, 2]), OVERLAY_ONLY);
        assert_eq!(flags([172, 18, 0, 3]), HOST_NS_ONLY);
    }
}
