//! A flow as operators see it: a kernel `FlowKey` named with the daemon's
//! published state. The one naming shared by `stats` rows and `monitor`
//! events; uses `observe::state` and `observe::filter`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netiso_common::{family, proto, Direction, DropReason, FlowKey};
use serde::{Deserialize, Serialize};

use crate::observe::filter::Subject;
use crate::observe::state::State;

/// Who talked to whom, how, and why it was dropped (or audited).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub reason: String,
    pub direction: String,
    /// Container name, else the address, else `-` (ARP has none).
    pub src: String,
    pub src_ip: Option<IpAddr>,
    pub src_group: String,
    pub dst: String,
    pub dst_ip: Option<IpAddr>,
    pub dst_group: String,
    pub proto: String,
    pub port: u16,
    /// Deciding rule (1-based), if a rule rather than a default decided.
    pub rule: Option<u32>,
}

impl Flow {
    /// Names `k` (decided by `rule_id`, 0 for a default) with `state`.
    pub fn named(state: &State, k: &FlowKey, rule_id: u32) -> Flow {
        let name = |ip: Option<IpAddr>| match ip {
            Some(ip) => state
                .container_by_ip(ip)
                .map_or_else(|| ip.to_string(), |e| e.container.clone()),
            None => "-".into(),
        };
        let src_ip = addr(k.family, &k.saddr);
        let dst_ip = addr(k.family, &k.daddr);
        Flow {
            reason: DropReason::from_u8(k.reason)
                .map_or("unknown", DropReason::as_str)
                .into(),
            direction: Direction::from_u8(k.direction)
                .map_or("?", Direction::as_str)
                .into(),
            src: name(src_ip),
            src_ip,
            src_group: state.groups_of_identity(k.src_identity),
            dst: name(dst_ip),
            dst_ip,
            dst_group: state.groups_of_identity(k.dst_identity),
            proto: proto_name(k.proto),
            port: k.dport,
            rule: (rule_id != 0).then_some(rule_id),
        }
    }

    /// What `--container`, `--group` and `--reason` filters look at.
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            names: [&self.src, &self.dst],
            ips: [self.src_ip, self.dst_ip],
            groups: [&self.src_group, &self.dst_group],
            reason: &self.reason,
        }
    }

    /// `tcp/443`, or the protocol alone when it has no port.
    pub fn service(&self) -> String {
        if self.port == 0 {
            self.proto.clone()
        } else {
            format!("{}/{}", self.proto, self.port)
        }
    }

    /// `#4`, or `default` when a group default decided.
    pub fn rule_label(&self) -> String {
        self.rule
            .map_or_else(|| "default".into(), |r| format!("#{r}"))
    }
}

/// The address of a key's family (`None` for ARP and unknown families).
pub fn addr(family_: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family_ {
        family::V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        family::V6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        0 => "-".into(),
        n => format!("ip-proto-{n}"),
    }
}
