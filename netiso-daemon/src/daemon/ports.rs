//! The seam between the reconciler and the host: what it asks of the
//! container engine, of the host's links and of the datapath, with the
//! real implementations (Docker, netlink, the loaded object); unit tests
//! put fakes behind it. Uses `host`, `datapath` and `model`.
use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;
use netiso_common::{LearnKey, LearnValue};
use tracing::warn;

use crate::datapath::{ApplyReport, Datapath, Desired};
use crate::host::docker::{DockerClient, NetworkInfo};
use crate::host::link_watch::LinkEvent;
use crate::host::netlink::Overlays;
use crate::host::overlay::OverlayInfo;
use crate::model::Container;

/// The container engine, as the reconciler reads it.
pub(crate) trait Engine {
    async fn networks(&self) -> Result<Vec<NetworkInfo>>;
    async fn running_containers(&self) -> Result<Vec<Container>>;
    /// `None`: the container is gone.
    async fn inspect(&self, id: &str) -> Result<Option<Container>>;
    /// Whether the engine is a Swarm node.
    async fn swarm_member(&self) -> Result<bool> {
        Ok(false)
    }
    /// What this node knows of the Swarm overlays among `nets` (subnets,
    /// gossip). Engines without Swarm have none.
    async fn overlays(&self, nets: &[NetworkInfo]) -> Result<Vec<OverlayInfo>> {
        let _ = nets;
        Ok(Vec::new())
    }
}

/// The host's links: container veths, the host's own addresses and the
/// links fail-closed holds are decided on.
pub(crate) trait HostLinks {
    /// `c` with the host-side veth of each attachment filled in where it
    /// is found (a failure is logged; the attachment stays unresolved).
    async fn with_veths(&self, c: Container) -> Container;
    fn host_addresses(&self) -> Result<Vec<IpAddr>>;
    /// The name of link `ifindex` (`None`: no such link).
    fn link_name(&self, ifindex: u32) -> Result<Option<String>>;
    /// Every link now, as announcements would describe them.
    fn links(&self) -> Result<Vec<LinkEvent>>;
    /// The ids of the Swarm overlays among the networks: their
    /// attachments' veths are only ever looked for in their namespaces.
    fn set_overlay_networks(&self, ids: BTreeSet<String>) {
        let _ = ids;
    }
    /// The namespace slot the next new Swarm overlay namespace will get.
    fn next_ns_slot(&self) -> Option<u32> {
        None
    }
    /// The UDP ports of the Swarm overlays' VXLAN links on this node (the
    /// swarm's data path port, whatever it was made with).
    async fn data_path_ports(&self) -> BTreeSet<u16> {
        BTreeSet::new()
    }
}

/// The datapath as the reconciler drives it: the desired contents in,
/// what is applied out. (The loop's own switches, debug log and event
/// rate, stay on the concrete `Datapath`.)
pub(crate) trait Dataplane {
    /// The policy generation now active.
    fn generation(&self) -> u32;
    fn endpoint_capacity(&self) -> Result<u32>;
    fn applied_endpoints(&self) -> BTreeSet<u32>;
    fn apply(&mut self, desired: &Desired) -> Result<ApplyReport>;
    /// Learn mode: the new flows noted since the last call.
    fn drain_learned(&mut self) -> Result<Vec<(LearnKey, LearnValue)>>;
    /// Loads the programs for namespace slot `k` ahead of its first
    /// endpoint (in the background).
    fn preload_ns_instance(&mut self, k: u32) {
        let _ = k;
    }
}

impl Engine for DockerClient {
    async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        DockerClient::networks(self).await
    }

    async fn running_containers(&self) -> Result<Vec<Container>> {
        DockerClient::running_containers(self).await
    }

    async fn inspect(&self, id: &str) -> Result<Option<Container>> {
        DockerClient::inspect(self, id).await
    }

    async fn overlays(&self, nets: &[NetworkInfo]) -> Result<Vec<OverlayInfo>> {
        DockerClient::overlays(self, nets).await
    }

    async fn swarm_member(&self) -> Result<bool> {
        DockerClient::swarm_member(self).await
    }
}

/// The host's links through netlink; Swarm overlays' veths in their
/// namespaces under the engine's exec-root.
#[derive(Clone, Debug)]
pub(crate) struct Netlink {
    pub(crate) overlays: Overlays,
}

impl HostLinks for Netlink {
    /// Resolves off the async runtime (it enters namespaces).
    async fn with_veths(&self, mut c: Container) -> Container {
        let name = c.name.clone();
        let overlays = self.overlays.clone();
        match tokio::task::spawn_blocking(move || {
            let r = crate::host::netlink::resolve_host_veths_with(&mut c, Some(&overlays));
            (c, r)
        })
        .await
        {
            Ok((c, Ok(()))) => c,
            Ok((c, Err(e))) => {
                warn!(container = %name, error = format!("{e:#}"), "cannot resolve the host-side veth");
                c
            }
            Err(e) => panic!("veth resolver panicked: {e}"),
        }
    }

    fn host_addresses(&self) -> Result<Vec<IpAddr>> {
        crate::host::netlink::host_addresses()
    }

    fn link_name(&self, ifindex: u32) -> Result<Option<String>> {
        crate::host::netlink::link_name(ifindex)
    }

    fn links(&self) -> Result<Vec<LinkEvent>> {
        crate::host::link_watch::dump()
    }

    fn next_ns_slot(&self) -> Option<u32> {
        self.overlays.slots.next()
    }

    /// Read off the async runtime (it enters namespaces).
    async fn data_path_ports(&self) -> BTreeSet<u16> {
        let root = self.overlays.exec_root.clone();
        tokio::task::spawn_blocking(move || crate::host::netlink::overlay_vxlan_ports(&root))
            .await
            .unwrap_or_default()
    }

    fn set_overlay_networks(&self, ids: BTreeSet<String>) {
        *self
            .overlays
            .networks
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ids;
    }
}

impl Dataplane for Datapath {
    fn generation(&self) -> u32 {
        self.settings().generation
    }

    fn endpoint_capacity(&self) -> Result<u32> {
        Datapath::endpoint_capacity(self)
    }

    fn applied_endpoints(&self) -> BTreeSet<u32> {
        Datapath::applied_endpoints(self)
    }

    fn apply(&mut self, desired: &Desired) -> Result<ApplyReport> {
        Datapath::apply(self, desired)
    }

    fn drain_learned(&mut self) -> Result<Vec<(LearnKey, LearnValue)>> {
        Datapath::drain_learned(self)
    }

    fn preload_ns_instance(&mut self, k: u32) {
        Datapath::preload_ns_instance(self, k);
    }
}
