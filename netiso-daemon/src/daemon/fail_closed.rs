//! Holding new veths of fail-closed networks closed until their container
//! is classified.
//!
//! A group with `fail_closed = true` names a network. When a veth appears
//! enslaved to that network's bridge (netlink announcement, or a scan at
//! each resync) and no known container owns it yet, the daemon attaches
//! the programs with an endpoint that carries
//! [`endpoint_flags::FAIL_CLOSED`]: every packet is dropped (`fail-closed`).
//! Once Docker's inspect names the veth's container, the container's own
//! endpoint replaces the hold (its groups' policy, or, for a container in
//! no group, the `unmanaged` identity's). No datapath API of its own: a hold is one
//! more entry of the desired endpoints.
use std::collections::{BTreeMap, BTreeSet};

use netiso_common::{endpoint_flags, identity};
use tracing::{info, warn};

use crate::datapath::{Desired, EndpointSpec};
use crate::host::link_watch::LinkEvent;
use crate::model::Container;
use crate::observe::state::HeldEndpoint;

#[derive(Debug, Default)]
pub struct Holds {
    /// ifindex -> (ifname, network, unix seconds since).
    held: BTreeMap<u32, HeldEndpoint>,
}

/// Bridge device name -> network name, for every fail-closed network that
/// is a bridge network.
pub fn bridges(
    fail_closed_networks: &BTreeSet<String>,
    bridge_of: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    fail_closed_networks
        .iter()
        .filter_map(|n| Some((bridge_of.get(n)?.clone(), n.clone())))
        .collect()
}

/// Host-side veths that belong to a known container.
pub fn claimed(containers: &[Container]) -> BTreeSet<u32> {
    containers
        .iter()
        .flat_map(|c| c.networks.iter().filter_map(|a| a.host_ifindex))
        .collect()
}

impl Holds {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Considers one announced link; true when the holds changed.
    /// `fc_bridges`: bridge name -> network, from [`bridges`];
    /// `link_name`: names a link by its index (the host's links).
    pub fn on_link(
        &mut self,
        ev: &LinkEvent,
        fc_bridges: &BTreeMap<String, String>,
        claimed: &BTreeSet<u32>,
        link_name: impl FnOnce(u32) -> anyhow::Result<Option<String>>,
    ) -> bool {
        if !ev.present {
            return self.held.remove(&ev.ifindex).is_some();
        }
        if !ev.is_veth() || claimed.contains(&ev.ifindex) || self.held.contains_key(&ev.ifindex) {
            return false;
        }
        let Some(master) = ev.master else {
            return false;
        };
        // The announcement names the bridge by index only.
        let bridge = match link_name(master) {
            Ok(Some(name)) => name,
            Ok(None) => return false,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    master, "cannot name the bridge of a new veth"
                );
                return false;
            }
        };
        self.hold_if_fail_closed(ev, &bridge, fc_bridges)
    }

    fn hold_if_fail_closed(
        &mut self,
        ev: &LinkEvent,
        bridge: &str,
        fc_bridges: &BTreeMap<String, String>,
    ) -> bool {
        let Some(network) = fc_bridges.get(bridge) else {
            return false;
        };
        info!(ifname = %ev.ifname, ifindex = ev.ifindex, %network,
            "holding a new veth of a fail-closed network closed until its container is classified");
        self.held.insert(
            ev.ifindex,
            HeldEndpoint {
                ifindex: ev.ifindex,
                ifname: ev.ifname.clone(),
                network: network.clone(),
                since: crate::observe::clock::unix_now(),
            },
        );
        true
    }

    /// Holds every unclaimed veth found on a fail-closed bridge among
    /// `links` (every link now: what the announcements may have missed,
    /// queue overflow, daemon restarts), and forgets holds whose veth is
    /// gone. True when the holds changed.
    pub fn scan(
        &mut self,
        links: &[LinkEvent],
        fc_bridges: &BTreeMap<String, String>,
        claimed: &BTreeSet<u32>,
    ) -> bool {
        let names: BTreeMap<u32, &str> = links
            .iter()
            .map(|l| (l.ifindex, l.ifname.as_str()))
            .collect();
        let before = self.held.len();
        self.held
            .retain(|i, h| names.get(i) == Some(&h.ifname.as_str()));
        let mut changed = self.held.len() != before;
        for l in links {
            if !l.is_veth() || claimed.contains(&l.ifindex) || self.held.contains_key(&l.ifindex) {
                continue;
            }
            if let Some(bridge) = l.master.and_then(|m| names.get(&m)) {
                changed |= self.hold_if_fail_closed(l, bridge, fc_bridges);
            }
        }
        changed
    }

    /// Ends the holds of veths now owned by a container (classified) or no
    /// longer on a fail-closed network (policy changed), then adds the
    /// remaining ones to `desired`.
    pub fn apply(
        &mut self,
        desired: &mut Desired,
        claimed: &BTreeSet<u32>,
        fail_closed_networks: &BTreeSet<String>,
    ) {
        self.held.retain(|ifindex, h| {
            let keep = !claimed.contains(ifindex) && fail_closed_networks.contains(&h.network);
            if !keep {
                info!(ifname = %h.ifname, network = %h.network, "hold released: classified");
            }
            keep
        });
        for (ifindex, h) in &self.held {
            desired
                .endpoints
                .entry(*ifindex)
                .or_insert_with(|| EndpointSpec {
                    ifname: h.ifname.clone(),
                    identity: identity::UNMANAGED,
                    flags: endpoint_flags::FAIL_CLOSED,
                    ipv4: None,
                    ipv6: None,
                    mac: None,
                    ipv4_prefix_len: None,
                    netns: None,
                });
        }
    }

    pub fn state(&self) -> Vec<HeldEndpoint> {
        self.held.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(ifindex: u32, present: bool) -> LinkEvent {
        LinkEvent {
            present,
            ifindex,
            ifname: format!("veth{ifindex}"),
            master: Some(1),
            kind: Some("veth".into()),
            addresses: false,
        }
    }

    #[test]
    fn holds_until_claimed_or_gone() {
        let fc = BTreeMap::from([("br-vault".to_string(), "vault".to_string())]);
        let nets = BTreeSet::from(["vault".to_string()]);
        let mut h = Holds::default();
        assert!(!h.hold_if_fail_closed(&veth(7, true), "br-other", &fc));
        assert!(h.hold_if_fail_closed(&veth(7, true), "br-vault", &fc));
        assert!(h.hold_if_fail_closed(&veth(8, true), "br-vault", &fc));
        let mut d = Desired::default();
        h.apply(&mut d, &BTreeSet::new(), &nets);
        let ep = &d.endpoints[&7];
        assert_eq!(ep.flags, endpoint_flags::FAIL_CLOSED);
        assert_eq!(ep.identity, identity::UNMANAGED);
        assert_eq!(d.endpoints.len(), 2);

        // 7 is classified (a container owns it); 8 disappears.
        assert!(h.on_link(&veth(8, false), &fc, &BTreeSet::new(), |_| unreachable!()));
        let mut d = Desired::default();
        h.apply(&mut d, &BTreeSet::from([7]), &nets);
        assert!(d.endpoints.is_empty() && h.is_empty());
    }

    #[test]
    fn a_policy_without_the_network_releases_the_hold() {
        let fc = BTreeMap::from([("br-vault".to_string(), "vault".to_string())]);
        let mut h = Holds::default();
        h.hold_if_fail_closed(&veth(7, true), "br-vault", &fc);
        let mut d = Desired::default();
        h.apply(&mut d, &BTreeSet::new(), &BTreeSet::new());
        assert!(d.endpoints.is_empty() && h.is_empty());
    }

    #[test]
    fn a_container_endpoint_wins_over_a_hold() {
        let fc = BTreeMap::from([("br-vault".to_string(), "vault".to_string())]);
        let mut h = Holds::default();
        h.hold_if_fail_closed(&veth(7, true), "br-vault", &fc);
        let mut d = Desired::default();
        let spec = EndpointSpec {
            netns: None,
            ifname: "veth7".into(),
            identity: 300,
            flags: 0,
            ipv4: None,
            ipv6: None,
            mac: None,
            ipv4_prefix_len: None,
        };
        d.endpoints.insert(7, spec.clone());
        h.apply(
            &mut d,
            &BTreeSet::new(),
            &BTreeSet::from(["vault".to_string()]),
        );
        assert_eq!(d.endpoints[&7], spec);
    }

    #[test]
    fn bridges_of_fail_closed_networks() {
        let nets = BTreeSet::from(["vault".to_string(), "overlay1".to_string()]);
        let of = BTreeMap::from([
            ("vault".to_string(), "br-1234".to_string()),
            ("web".to_string(), "br-5678".to_string()),
        ]);
        assert_eq!(
            bridges(&nets, &of),
            BTreeMap::from([("br-1234".to_string(), "vault".to_string())])
        );
    }
}
