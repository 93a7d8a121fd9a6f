//! Plain data describing containers as netiso sees them. Produced by the
//! daemon's `host` adapters (Docker, netlink), consumed by the policy
//! compiler and by the daemon's `datapath`. Uses only std.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A running container and its network attachments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// Full Docker container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// PID of the container's init process (0 if not running).
    pub pid: u32,
    /// `HostConfig.NetworkMode` (`bridge`, `host`, `none`, `container:…`, or a network name).
    pub network_mode: String,
    pub networks: Vec<Attachment>,
    /// Ports the host publishes for the container (`docker run -p`).
    pub published: Vec<Published>,
    /// `Some(node address)`: a Swarm task (or attached container) on
    /// another node, known from the overlay's gossip: addresses, name and
    /// service only (as labels), no veth here. `None`: a local container.
    pub remote_node: Option<String>,
}

/// One published port: the host's port and the container's behind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    /// `netiso_common::proto::TCP` or `UDP`.
    pub proto: u8,
    pub host_port: u16,
    pub container_port: u16,
}

/// One network the container is attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// Docker network name.
    pub network: String,
    pub network_id: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
    /// Prefix length of `ipv4` on its network (for its broadcast address).
    pub ipv4_prefix_len: Option<u8>,
    /// Host-side veth, once resolved by the `netlink` module.
    /// For a veth in the daemon's own namespace its ifindex; for one in a
    /// Swarm overlay's namespace the endpoint id (`(k << NS_SHIFT) +
    /// ifindex`, see `netiso_common::limits::NS_SHIFT`).
    pub host_ifindex: Option<u32>,
    pub host_ifname: Option<String>,
    /// The network namespace the host-side veth is in, when it is not the
    /// daemon's own (a Swarm overlay's, under the engine's exec-root).
    pub host_netns: Option<String>,
}

impl Container {
    /// Every address of the container, over all its networks.
    pub fn ipv4s(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.networks.iter().filter_map(|a| a.ipv4)
    }
}

/// Labels Docker Swarm puts on the containers of services and stacks.
pub const SWARM_SERVICE: &str = "com.docker.swarm.service.name";
pub const SWARM_TASK: &str = "com.docker.swarm.task.name";
pub const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

/// What one node's gossip says of an endpoint of an overlay network on
/// another node (`docker network inspect --verbose`: `.Services[service]
/// .Tasks[]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteTask {
    /// The task's name (`web.1.<task id>`), or the container's name for a
    /// plain container attached to the network.
    pub name: String,
    /// The service's name; empty for a plain attached container.
    pub service: String,
    pub ip: Ipv4Addr,
    /// The address of the node it runs on (`Info["Host IP"]`).
    pub node: String,
}

impl Container {
    /// A task on another node as a container netiso can select and name:
    /// its name, its service as the `com.docker.swarm.service.name` label
    /// and, when the service's name has the form `<stack>_<name>`, `<stack>`
    /// as the `com.docker.stack.namespace` label. That is an inference:
    /// gossip carries no labels, and `docker stack deploy` names services
    /// this way, but so could anyone (`policy check` warns where `stack`
    /// is selected). No veth here (`remote_node` set).
    pub fn remote_task(network: &str, network_id: &str, t: &RemoteTask) -> Container {
        let mut labels = BTreeMap::new();
        if !t.service.is_empty() {
            labels.insert(SWARM_SERVICE.to_string(), t.service.clone());
            labels.insert(SWARM_TASK.to_string(), t.name.clone());
            if let Some((stack, _)) = t
                .service
                .split_once('_')
                .filter(|(s, r)| !s.is_empty() && !r.is_empty())
            {
                labels.insert(STACK_NAMESPACE.to_string(), stack.to_string());
            }
        }
        Container {
            id: format!("remote:{network_id}:{}", t.ip),
            name: t.name.clone(),
            image: String::new(),
            labels,
            pid: 0,
            network_mode: network.to_string(),
            networks: vec![Attachment {
                network: network.to_string(),
                network_id: network_id.to_string(),
                ipv4: Some(t.ip),
                ..Attachment::default()
            }],
            published: Vec::new(),
            remote_node: Some(t.node.clone()),
        }
    }
}
