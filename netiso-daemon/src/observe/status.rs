//! `netiso status`: daemon health, engine connection, policy, and every
//! endpoint with its real attach state, checked against the kernel (the
//! pinned link's program must be among the TCX programs of the veth).
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use aya::maps::{Array, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType};
use netiso_common::{identity, maps, settings_flags, Settings, LAYOUT_VERSION};
use serde::{Deserialize, Serialize};
use tabled::{settings::Style, Table, Tabled};

use crate::datapath::counters::open_pinned;
use crate::observe::clock::ago;
use crate::observe::state::{EndpointState, State, Unenforceable};
use crate::observe::telemetry::Health;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// `daemon` when the running daemon answered, `files` when the report
    /// was put together from the state file and the pins.
    pub source: String,
    pub daemon: Option<Health>,
    /// Why the daemon could not be asked (when `source` is `files`).
    pub daemon_error: Option<String>,
    pub socket: PathBuf,
    /// `http://ADDR/metrics`, or why metrics are not served.
    pub metrics: Option<String>,
    /// Why drop events cannot be streamed, if they cannot.
    pub events_error: Option<String>,
    pub kernel: KernelStatus,
    pub policy: PolicyStatus,
    pub endpoints: Vec<EndpointStatus>,
    pub unenforceable: Vec<Unenforceable>,
    /// Where the policy comes from when Swarm delivers it.
    #[serde(default)]
    pub swarm_policy: Option<crate::observe::state::SwarmPolicyState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KernelStatus {
    /// Whether the pinned settings could be read, and if not why.
    pub error: Option<String>,
    pub layout_version: u32,
    pub generation: u32,
    pub active_slot: u32,
    pub event_rate: u32,
    pub debug_log: bool,
    pub allow_non_ip: bool,
    /// The mark of cross-veth verdicts; 0: off.
    #[serde(default)]
    pub cross_mark: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PolicyStatus {
    pub path: PathBuf,
    pub generation: u32,
    /// Unix seconds of the last successful reconcile.
    pub updated: u64,
    pub rules: usize,
}

/// Whether the programs are on an endpoint's veth.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// Both directions carry netiso's programs.
    Attached,
    /// One direction only.
    Partial,
    /// Neither direction: the endpoint is not enforced.
    Detached,
    /// In no group: netiso leaves it alone by design.
    NotManaged,
    /// In a group, but there is no veth to attach to (see `unenforceable`).
    NoVeth,
    /// A Swarm task on another node: enforced by that node's netiso.
    Remote,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Partial => "partial",
            Self::Detached => "detached",
            Self::NotManaged => "not managed",
            Self::NoVeth => "no veth",
            Self::Remote => "on another node",
        }
    }

    /// Whether this state is a problem for an endpoint that should be enforced.
    pub fn is_problem(self) -> bool {
        matches!(self, Self::Partial | Self::Detached)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointStatus {
    pub container: String,
    pub container_id: String,
    pub groups: Vec<String>,
    pub network: String,
    pub ifname: Option<String>,
    pub ifindex: Option<u32>,
    pub ip: Option<IpAddr>,
    pub attach: Option<Attach>,
    /// Per direction, when not simply attached.
    pub detail: Option<String>,
    /// Learn mode records its new flows.
    #[serde(default)]
    pub learning: bool,
}

/// One direction of one veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    Attached,
    NoPin,
    /// The pin exists but its program is not on the interface (or cannot
    /// be checked), with why.
    NotAttached(String),
}

/// Checks the pinned link `<pin_dir>/links/<ifindex>-<dir>` against the
/// TCX programs the kernel runs on `ifname`.
pub fn link_state(
    pin_dir: &Path,
    ifindex: u32,
    ifname: &str,
    dir: &str,
    netns: Option<&Path>,
) -> LinkState {
    let pin = pin_dir.join("links").join(format!("{ifindex}-{dir}"));
    if !pin.exists() {
        return LinkState::NoPin;
    }
    let prog_id = match PinnedLink::from_pin(&pin)
        .map(FdLink::from)
        .and_then(|l| l.info())
    {
        Ok(info) => info.program_id(),
        Err(e) => return LinkState::NotAttached(format!("cannot open {}: {e}", pin.display())),
    };
    let attach = if dir == "from" {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    // The interface name means the veth in its own namespace.
    let query = || SchedClassifier::query_tcx(ifname, attach).map_err(anyhow::Error::from);
    let queried = match netns {
        None => query(),
        Some(ns) => crate::host::netlink::in_netns(ns, query),
    };
    match queried {
        Ok((_, progs)) if progs.iter().any(|p| p.id() == prog_id) => LinkState::Attached,
        Ok(_) => LinkState::NotAttached(format!("program {prog_id} is not on {ifname}")),
        Err(e) => LinkState::NotAttached(format!("cannot query {ifname}: {e}")),
    }
}

/// Attach state of one endpoint, with detail when it is not plainly attached.
pub fn endpoint_attach(pin_dir: &Path, e: &EndpointState) -> (Attach, Option<String>) {
    let managed = e.identity >= identity::FIRST_GROUP_IDENTITY;
    if let Some(node) = &e.remote_node {
        return (Attach::Remote, Some(format!("on node {node}")));
    }
    let netns = e.netns.as_deref().map(Path::new);
    let (Some(ifindex), Some(ifname)) = (e.ifindex, e.ifname.as_deref()) else {
        return if managed {
            (Attach::NoVeth, None)
        } else {
            (Attach::NotManaged, None)
        };
    };
    let from = link_state(pin_dir, ifindex, ifname, "from", netns);
    let to = link_state(pin_dir, ifindex, ifname, "to", netns);
    if !managed {
        return match (&from, &to) {
            (LinkState::NoPin, LinkState::NoPin) => (Attach::NotManaged, None),
            _ => (
                Attach::NotManaged,
                Some("in no group, yet links are pinned for its veth".into()),
            ),
        };
    }
    let describe = |s: &LinkState| match s {
        LinkState::Attached => "attached".to_string(),
        LinkState::NoPin => "no pinned link".to_string(),
        LinkState::NotAttached(why) => why.clone(),
    };
    let up = |s: &LinkState| *s == LinkState::Attached;
    let state = match (up(&from), up(&to)) {
        (true, true) => Attach::Attached,
        (false, false) => Attach::Detached,
        _ => Attach::Partial,
    };
    let detail = (state != Attach::Attached).then(|| {
        format!(
            "from container: {}; to container: {}",
            describe(&from),
            describe(&to)
        )
    });
    (state, detail)
}

/// Reads the pinned settings entry.
pub fn kernel_status(pin_dir: &Path) -> KernelStatus {
    let read = || -> Result<Settings> {
        let map = open_pinned(pin_dir, maps::SETTINGS)?;
        let arr: Array<&MapData, Settings> = Array::try_from(&map)?;
        Ok(arr.get(&0, 0)?)
    };
    match read() {
        Ok(s) => KernelStatus {
            error: (s.layout_version != LAYOUT_VERSION).then(|| {
                "the datapath is not configured yet: its programs pass everything".to_string()
            }),
            layout_version: s.layout_version,
            generation: s.generation,
            active_slot: s.active_slot,
            event_rate: s.event_rate,
            debug_log: s.flags & settings_flags::DEBUG_LOG != 0,
            allow_non_ip: s.flags & settings_flags::ALLOW_NON_IP != 0,
            cross_mark: s.cross_mark,
        },
        Err(e) => KernelStatus {
            error: Some(format!("{e:#}")),
            ..KernelStatus::default()
        },
    }
}

/// Everything `status` reports that comes from the state and the kernel.
/// The caller fills in the daemon's own parts.
pub fn report(pin_dir: &Path, socket: &Path, state: &State) -> StatusReport {
    let endpoints = state
        .endpoints
        .iter()
        .map(|e| {
            let (attach, detail) = endpoint_attach(pin_dir, e);
            EndpointStatus {
                container: e.container.clone(),
                container_id: e.container_id.clone(),
                groups: e.groups.clone(),
                learning: e.learning,
                network: e.network.clone(),
                ifname: e.ifname.clone(),
                ifindex: e.ifindex,
                ip: e.ip,
                attach: Some(attach),
                detail,
            }
        })
        .collect();
    StatusReport {
        socket: socket.to_owned(),
        kernel: kernel_status(pin_dir),
        policy: PolicyStatus {
            path: state.policy_path.clone(),
            generation: state.generation,
            updated: state.updated,
            rules: state.rules.len(),
        },
        endpoints,
        unenforceable: state.unenforceable.clone(),
        swarm_policy: state.swarm_policy.clone(),
        ..StatusReport::default()
    }
}

impl StatusReport {
    /// Problems worth a non-zero exit status, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.daemon {
            None => out.push(format!(
                "the daemon is not reachable: {}",
                self.daemon_error.as_deref().unwrap_or("unknown")
            )),
            Some(h) if !h.engine.connected => out.push(format!(
                "not connected to the Docker engine: {}",
                h.engine.last_error.as_deref().unwrap_or("connecting")
            )),
            Some(_) => {}
        }
        if let Some(e) = &self.kernel.error {
            out.push(format!("datapath: {e}"));
        }
        for t in self.swarm_policy.iter().flat_map(|s| &s.tasks) {
            if let Some(e) = &t.error {
                out.push(format!(
                    "the policy from Swarm task {} is refused: {}",
                    t.task,
                    first_line(e)
                ));
            }
        }
        for e in &self.endpoints {
            if e.attach.is_some_and(Attach::is_problem) {
                out.push(format!(
                    "{} on {}: {}",
                    e.container,
                    e.ifname.as_deref().unwrap_or("?"),
                    e.detail.as_deref().unwrap_or("not attached")
                ));
            }
        }
        out
    }
}

#[derive(Tabled)]
struct EndpointLine {
    #[tabled(rename = "CONTAINER")]
    container: String,
    #[tabled(rename = "GROUPS")]
    groups: String,
    #[tabled(rename = "NETWORK")]
    network: String,
    #[tabled(rename = "VETH")]
    veth: String,
    #[tabled(rename = "ADDRESS")]
    ip: String,
    #[tabled(rename = "ATTACH")]
    attach: String,
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The human form of `netiso status`.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<11} {v}\n"));
    match &r.daemon {
        Some(h) => {
            line(
                "Daemon:",
                format!(
                    "running (pid {}, netiso {}, started {})",
                    h.pid,
                    h.version,
                    ago(h.started)
                ),
            );
            let engine = if h.engine.connected {
                format!(
                    "connected ({}), since {}",
                    h.engine.version.as_deref().unwrap_or("version unknown"),
                    ago(h.engine.since)
                )
            } else {
                format!(
                    "NOT connected: {} (reconnecting; {} reconnects so far)",
                    first_line(h.engine.last_error.as_deref().unwrap_or("connecting")),
                    h.docker_reconnects
                )
            };
            line("Engine:", engine);
            let mut rec = format!(
                "{} done, {} failed, last {}",
                h.reconciles,
                h.reconcile_failures,
                ago(h.last_reconcile)
            );
            if let Some(e) = &h.last_reconcile_error {
                rec.push_str(&format!(": FAILED: {}", first_line(e)));
            }
            line("Reconcile:", rec);
            if h.reloads > 0 {
                let mut rel = format!(
                    "{} applied, {} rejected",
                    h.reloads - h.reload_failures,
                    h.reload_failures
                );
                if let Some(e) = &h.last_reload_error {
                    rel.push_str(&format!("; last rejected: {}", first_line(e)));
                }
                line("Reloads:", rel);
            }
        }
        None => line(
            "Daemon:",
            format!(
                "NOT reachable ({}); showing the last published state",
                r.daemon_error.as_deref().unwrap_or("unknown")
            ),
        ),
    }
    line(
        "Policy:",
        if r.policy.path.as_os_str().is_empty() {
            "none applied yet".into()
        } else {
            format!(
                "{}, generation {}, {} rules, applied {}",
                r.policy.path.display(),
                r.policy.generation,
                r.policy.rules,
                ago(r.policy.updated)
            )
        },
    );
    if let Some(s) = &r.swarm_policy {
        let short = |h: &str| h.get(..12).unwrap_or(h).to_string();
        let mut v = match &s.sha256 {
            Some(h) => format!("from service {}, sha256 {}", s.service, short(h)),
            None => format!(
                "from service {}: no task on this node yet, the local file is in force",
                s.service
            ),
        };
        for t in &s.tasks {
            match &t.error {
                None => v.push_str(&format!("; task {} ok", t.task)),
                Some(e) => v.push_str(&format!(
                    "; task {} REFUSED (sha256 {}): {}",
                    t.task,
                    short(&t.sha256),
                    first_line(e)
                )),
            }
        }
        line("Swarm:", v);
    }
    let k = &r.kernel;
    line(
        "Datapath:",
        match &k.error {
            Some(e) if k.layout_version == 0 => format!("NOT readable: {}", first_line(e)),
            _ => format!(
                "layout v{}, generation {}, slot {}, events {}, debug log {}, cross-veth mark {}{}",
                k.layout_version,
                k.generation,
                k.active_slot,
                if k.event_rate == 0 {
                    "off".to_string()
                } else {
                    format!("{}/s per CPU", k.event_rate)
                },
                if k.debug_log { "on" } else { "off" },
                if k.cross_mark == 0 {
                    "off".to_string()
                } else {
                    format!("{:#x}", k.cross_mark)
                },
                if k.allow_non_ip {
                    ", non-IP allowed"
                } else {
                    ""
                }
            ),
        },
    );
    if r.daemon.is_some() {
        line("Socket:", r.socket.display().to_string());
        if let Some(m) = &r.metrics {
            line("Metrics:", m.clone());
        }
        line(
            "Events:",
            match &r.events_error {
                None => "streaming (netiso monitor)".into(),
                Some(e) => format!("NOT available: {}", first_line(e)),
            },
        );
    }
    let learning = r.endpoints.iter().filter(|e| e.learning).count();
    if learning > 0 {
        line(
            "Learn:",
            format!(
                "{learning} veth{} recording new flows (netiso policy suggest)",
                if learning == 1 { "" } else { "s" }
            ),
        );
    }
    out.push('\n');
    if r.endpoints.is_empty() {
        out.push_str("No endpoints.\n");
    } else {
        let lines = r.endpoints.iter().map(|e| EndpointLine {
            container: e.container.clone(),
            groups: format!(
                "{}{}",
                if e.groups.is_empty() {
                    "-".into()
                } else {
                    e.groups.join(",")
                },
                if e.learning { " (learning)" } else { "" }
            ),
            network: e.network.clone(),
            veth: match (&e.ifname, e.ifindex) {
                (Some(n), Some(i)) => format!("{n} ({i})"),
                _ => "-".into(),
            },
            ip: e.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            attach: e
                .attach
                .map_or("?", Attach::as_str)
                .to_uppercase_if(e.attach.is_some_and(Attach::is_problem)),
        });
        out.push_str(&Table::new(lines).with(Style::blank()).to_string());
        out.push('\n');
        for e in &r.endpoints {
            if let Some(d) = &e.detail {
                out.push_str(&format!("  {}: {d}\n", e.container));
            }
        }
    }
    if !r.unenforceable.is_empty() {
        out.push_str("\nCannot be enforced:\n");
        for u in &r.unenforceable {
            out.push_str(&format!("  {}: {}\n", u.container, u.reason));
        }
    }
    let problems = r.problems();
    if !problems.is_empty() {
        out.push_str("\nProblems:\n");
        for p in problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

trait UpperIf {
    fn to_uppercase_if(&self, cond: bool) -> String;
}

impl UpperIf for str {
    fn to_uppercase_if(&self, cond: bool) -> String {
        if cond {
            self.to_uppercase()
        } else {
            self.to_string()
        }
    }
}

/// The addresses containers learned for peers by name, for people.
pub fn render_names(n: &crate::observe::names::Names) -> String {
    if n.containers.values().all(Vec::is_empty) {
        return String::new();
    }
    let mut out = String::from("\nLearned for peers by name:\n");
    for (container, names) in &n.containers {
        for l in names {
            let addrs: Vec<String> = l.addresses.iter().map(ToString::to_string).collect();
            let left = l.expires.saturating_sub(crate::observe::clock::unix_now());
            out.push_str(&format!(
                "  {container}  {} -> {} (for {left}s more)\n",
                l.name,
                addrs.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(identity_: u32, ifindex: Option<u32>) -> EndpointState {
        EndpointState {
            container: "web".into(),
            identity: identity_,
            ifindex,
            ifname: ifindex.map(|i| format!("veth{i}")),
            ..EndpointState::default()
        }
    }

    #[test]
    fn endpoints_without_pins_are_detached_or_unmanaged() {
        let dir = tempfile::tempdir().unwrap();
        let (a, d) = endpoint_attach(dir.path(), &endpoint(300, Some(7)));
        assert_eq!(a, Attach::Detached);
        assert!(d.unwrap().contains("no pinned link"));
        let (a, d) = endpoint_attach(dir.path(), &endpoint(identity::UNMANAGED, Some(7)));
        assert_eq!((a, d), (Attach::NotManaged, None));
        let (a, _) = endpoint_attach(dir.path(), &endpoint(300, None));
        assert_eq!(a, Attach::NoVeth);
    }

    #[test]
    fn problems_list_unreachable_daemon_and_detached_endpoints() {
        let r = StatusReport {
            daemon_error: Some("connection refused".into()),
            endpoints: vec![EndpointStatus {
                container: "web".into(),
                ifname: Some("veth7".into()),
                attach: Some(Attach::Detached),
                ..EndpointStatus::default()
            }],
            ..StatusReport::default()
        };
        let p = r.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("connection refused"));
        assert!(p[1].starts_with("web on veth7"));
        let text = render(&r);
        assert!(text.contains("DETACHED"), "{text}");
        assert!(text.contains("NOT reachable"), "{text}");
    }
}
