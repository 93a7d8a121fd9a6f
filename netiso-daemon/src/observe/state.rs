//! The daemon's view of the world, written to `<state_dir>/state.json` after
//! every reconcile so that `netiso stats` (and operators) can name what the
//! kernel only knows by number, even while the daemon is down.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub policy_path: PathBuf,
    pub generation: u32,
    /// Unix seconds of the last successful reconcile.
    pub updated: u64,
    pub endpoints: Vec<EndpointState>,
    /// identity -> group names ("host", "world", "unmanaged" for reserved ones).
    pub identities: BTreeMap<u32, Vec<String>>,
    pub rules: Vec<RuleState>,
    /// Containers netiso sees but cannot enforce at a veth, and why.
    pub unenforceable: Vec<Unenforceable>,
    /// Pid of the daemon that wrote this file.
    #[serde(default)]
    pub pid: u32,
    /// Unix seconds of the last full resync (list every container again).
    #[serde(default)]
    pub last_resync: u64,
    /// The outcome of the last policy load (start-up, SIGHUP, file change
    /// or control request).
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    /// New veths of fail-closed networks held closed until classified.
    #[serde(default)]
    pub held: Vec<HeldEndpoint>,
    /// Host ports published for containers: a container reaching one is
    /// judged as reaching the container behind it (`explain` needs this).
    #[serde(default)]
    pub published: Vec<PublishedState>,
    /// Peers by name and their identities.
    #[serde(default)]
    pub fqdns: Vec<FqdnState>,
    /// The policy from Swarm (`--swarm-policy-service`).
    #[serde(default)]
    pub swarm_policy: Option<SwarmPolicyState>,
    /// On a Swarm node: the overlay data path's UDP ports (configured and
    /// found on the overlays' VXLAN links), which no container may send to
    /// beyond the containers (a built-in deny, after the policy's rules;
    /// `explain` and `verify` need them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swarm_data_path_ports: Vec<u16>,
}

/// Where the policy comes from when Swarm delivers it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SwarmPolicyState {
    /// The global service whose tasks carry it.
    pub service: String,
    /// sha256 of the policy from Swarm in force; `None`: the local file
    /// (no carrier task seen yet).
    pub sha256: Option<String>,
    /// This node's carrier tasks and what each was answered.
    pub tasks: Vec<SwarmTaskState>,
}

/// One carrier task on this node and the daemon's answer to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SwarmTaskState {
    pub task: String,
    pub sha256: String,
    /// Why its policy is not in force (`None`: it is).
    pub error: Option<String>,
}

/// A peer by name of the policy and its identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FqdnState {
    pub identity: u32,
    pub name: String,
    pub patterns: Vec<String>,
}

/// A port the host publishes (`docker run -p`) and the container behind it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishedState {
    /// `tcp` or `udp`.
    pub proto: String,
    pub host_port: u16,
    pub container: String,
    pub container_id: String,
    pub container_port: u16,
}

/// A veth dropping everything until its container is classified.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldEndpoint {
    pub ifindex: u32,
    pub ifname: String,
    /// The fail-closed network whose bridge it joined.
    pub network: String,
    /// Unix seconds.
    pub since: u64,
}

/// What the last attempt to (re)load the policy gave.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadStatus {
    /// Unix seconds.
    pub time: u64,
    /// What asked for it: `start`, `sighup`, `file-change`, `control`.
    pub trigger: String,
    pub ok: bool,
    /// Why the policy was rejected (the rendered diagnostics), when not ok.
    pub error: Option<String>,
    /// The datapath's policy generation in force after the attempt (an
    /// unchanged generation after a rejected reload: the old policy stays).
    pub generation: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointState {
    pub container_id: String,
    pub container: String,
    pub groups: Vec<String>,
    pub identity: u32,
    pub network: String,
    pub ifindex: Option<u32>,
    pub ifname: Option<String>,
    pub ip: Option<IpAddr>,
    /// The policy's groups apply here: programs attached to the host-side
    /// veth of a container that is in a group (or that `[settings]
    /// unmanaged` polices).
    pub enforced: bool,
    /// Programs attached to the host-side veth at all: also true for a
    /// container in no group, which gets anti-spoofing and the checks of
    /// what netiso does not understand.
    #[serde(default)]
    pub guarded: bool,
    /// Learn mode: its new flows are recorded (`learned.json`).
    #[serde(default)]
    pub learning: bool,
    /// The container may reach peers by name: its DNS is watched.
    #[serde(default)]
    pub resolves_names: bool,
    /// The network namespace of the host-side veth when it is not the
    /// daemon's own (a Swarm overlay's); `ifindex` is then the endpoint id
    /// `(k << 20) + ifindex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// A Swarm task on another node (that node's address), known from the
    /// overlay's gossip: its node enforces for it, here it is a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleState {
    pub id: u32,
    pub from: String,
    pub to: String,
    pub ports: String,
    pub action: String,
    pub description: Option<String>,
    pub location: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Unenforceable {
    pub container: String,
    /// The Docker network (or network mode) concerned.
    #[serde(default)]
    pub network: String,
    pub reason: String,
}

impl State {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Writes atomically (temp file + rename): readers never see half a file.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, Self::path(state_dir))?;
        Ok(())
    }

    /// Reads the state file; a missing file gives an empty state.
    pub fn read(state_dir: &Path) -> Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Container name owning `ip`, if known.
    pub fn container_by_ip(&self, ip: IpAddr) -> Option<&EndpointState> {
        self.endpoints.iter().find(|e| e.ip == Some(ip))
    }

    pub fn groups_of_identity(&self, id: u32) -> String {
        match self.identities.get(&id) {
            Some(g) if !g.is_empty() => g.join(","),
            _ => match id {
                netiso_common::identity::HOST => "host".into(),
                netiso_common::identity::WORLD => "world".into(),
                netiso_common::identity::UNMANAGED => "unmanaged".into(),
                netiso_common::identity::AMBIGUOUS_PUBLISHED => "ambiguous-published-port".into(),
                netiso_common::identity::UNKNOWN_OVERLAY_PEER => "unknown-overlay-peer".into(),
                // Dropped before its peer could be named (a frame netiso
                // could not parse, ARP).
                netiso_common::identity::ANY => "-".into(),
                _ => format!("identity {id}"),
            },
        }
    }
}
