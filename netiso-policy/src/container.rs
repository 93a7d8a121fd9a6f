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
    pub host_ifindex: Option<u32>,
    pub host_ifname: Option<String>,
}

impl Container {
    /// Every address of the container, over all its networks.
    pub fn ipv4s(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.networks.iter().filter_map(|a| a.ipv4)
    }
}
