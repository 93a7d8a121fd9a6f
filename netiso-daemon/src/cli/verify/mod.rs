//! `netiso verify`: probe real connectivity between representative
//! containers of every pair of groups and compare it with what the compiled
//! policy says. The tool an auditor runs after a deploy.
//!
//! Probes run from inside the source container's network namespace (setns
//! on a worker thread), so they take exactly the path the container's own
//! traffic takes, through both containers' veths.
//!
//! How a probe decides "reachable":
//! - TCP: a completed handshake or a RST (connection refused) both prove the
//!   SYN got through; silence until the timeout means blocked.
//! - UDP: verify opens a temporary listener on the port inside the
//!   destination's namespace and checks that the datagram arrives:
//!   conclusive both ways. If the port is taken (a real service listens),
//!   a reply or an ICMP port-unreachable proves reachability, but silence
//!   proves nothing: the probe is reported as inconclusive.
//! - ICMP: an echo reply proves reachability; silence means blocked.
//!
//! `plan` chooses the probes and what the compiled policy expects of them,
//! `probe` runs them from the containers' namespaces, `report` draws the
//! matrix; this file holds the types they share and the command.
mod plan;
mod probe;
mod report;

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use netiso_common::{proto, Action};
use serde::Serialize;

use crate::cli::commands::Conn;
use crate::policy::{self, IdentityAllocator};

pub use plan::{expect, judge, plan};
pub use probe::run_probes;
pub use report::render;

#[derive(clap::Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Policy to check against [default: the one the daemon runs].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Only pairs involving these groups (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Time to wait for each probe's answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Probes run at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Never open temporary UDP listeners in destination containers
    /// (UDP probes then often end inconclusive).
    #[arg(long)]
    pub no_listen: bool,
    /// Print every probe, not only mismatches and inconclusive ones.
    #[arg(long, short)]
    pub verbose: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// A class of peers: a group, `unmanaged` containers, or the `host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Class(pub String);

const UNMANAGED: &str = "unmanaged";
const HOST: &str = "host";

/// Who a probe runs as, or goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Container name, or `host`.
    pub name: String,
    /// Network namespace to enter (`None`: the host's, where verify runs).
    #[serde(skip)]
    pub netns: Option<PathBuf>,
    pub ip: Ipv4Addr,
    pub identity: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    Udp,
    Icmp,
}

impl ProbeProto {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Icmp => proto::ICMP,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum Observed {
    /// TCP handshake completed.
    Open,
    /// TCP RST or ICMP port unreachable: the packet reached the peer.
    Refused,
    /// The UDP datagram arrived at verify's temporary listener.
    Delivered,
    /// A UDP reply from the service on the port.
    Replied,
    /// ICMP echo reply.
    Echo,
    /// Nothing came back within the timeout (a listener was waiting).
    NoAnswer,
    /// UDP to a port a real service holds: no reply, which proves nothing.
    Silent,
    /// The probe itself failed.
    Error(String),
}

impl Observed {
    /// `Some(true)` reachable, `Some(false)` blocked, `None` unknown.
    pub fn reachable(&self) -> Option<bool> {
        match self {
            Self::Open | Self::Refused | Self::Delivered | Self::Replied | Self::Echo => Some(true),
            Self::NoAnswer => Some(false),
            Self::Silent | Self::Error(_) => None,
        }
    }
    fn describe(&self) -> String {
        match self {
            Self::Open => "connected".into(),
            Self::Refused => "refused (reached, nothing listens)".into(),
            Self::Delivered => "datagram delivered".into(),
            Self::Replied => "reply received".into(),
            Self::Echo => "echo reply".into(),
            Self::NoAnswer => "no answer (blocked)".into(),
            Self::Silent => "no reply from the service (inconclusive)".into(),
            Self::Error(e) => format!("probe failed: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Mismatch,
    Inconclusive,
}

/// One probe and its verdicts.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub from_class: Class,
    pub to_class: Class,
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: ProbeProto,
    /// 0 for ICMP.
    pub port: u16,
    /// Why this port: `rule #N` or `no rule`.
    pub port_source: String,
    /// `allow` (audit counts as allow: it passes) or `deny`.
    pub expected: String,
    pub expected_rule: u32,
    pub expected_why: String,
    pub observed: Observed,
    pub outcome: Outcome,
}

/// Pairs that could not be probed, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub from_class: Class,
    pub to_class: Class,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub policy: PathBuf,
    pub probes: Vec<Probe>,
    pub skipped: Vec<Skipped>,
    pub ok: usize,
    pub mismatches: usize,
    pub inconclusive: usize,
}

/// A probe to run, before it ran.
#[derive(Clone, Debug)]
pub struct Plan {
    pub from_class: Class,
    pub to_class: Class,
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: ProbeProto,
    pub port: u16,
    pub port_source: String,
}

fn policy_path(a: &VerifyArgs) -> Result<PathBuf> {
    if let Some(p) = &a.policy {
        return Ok(p.clone());
    }
    if let Ok(r) = crate::cli::commands::fetch_status(&a.conn) {
        if !r.policy.path.as_os_str().is_empty() {
            return Ok(r.policy.path);
        }
    }
    let state = crate::observe::state::State::read(&a.conn.state_dir)?;
    if state.policy_path.as_os_str().is_empty() {
        bail!("no policy known: start the daemon, or pass --policy PATH");
    }
    Ok(state.policy_path)
}

/// The Swarm tasks on other nodes the daemon knows (its published state,
/// from the overlays' gossip), as peers: probes can reach them over the
/// overlay, but start only in local containers.
fn remote_tasks(
    state_dir: &std::path::Path,
    local: &[crate::model::Container],
) -> Vec<crate::model::Container> {
    let Ok(state) = crate::observe::state::State::read(state_dir) else {
        return Vec::new();
    };
    let mut out: Vec<crate::model::Container> = Vec::new();
    for e in state.endpoints.iter().filter(|e| e.remote_node.is_some()) {
        let Some(std::net::IpAddr::V4(ip)) = e.ip else {
            continue;
        };
        let known = local.iter().any(|c| c.ipv4s().any(|a| a == ip))
            || out.iter().any(|c| c.id == e.container_id);
        if known {
            continue;
        }
        // `<service>.<slot or node>.<task id>`; a plain container has no service.
        let service = match e.container.rsplitn(3, '.').collect::<Vec<_>>()[..] {
            [_, _, s] => s,
            _ => "",
        };
        let t = crate::model::RemoteTask {
            name: e.container.clone(),
            service: service.to_string(),
            ip,
            node: e.remote_node.clone().unwrap_or_default(),
        };
        let mut c = crate::model::Container::remote_task(&e.network, "", &t);
        c.id = e.container_id.clone();
        out.push(c);
    }
    out
}

pub fn verify(a: &VerifyArgs) -> Result<Report> {
    crate::datapath::require_root("netiso verify")?;
    let path = policy_path(a)?;
    let policy = policy::load_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for g in &a.groups {
        if policy.group(g).is_none() && g != UNMANAGED && g != HOST {
            bail!("the policy has no group {g:?}");
        }
    }
    let containers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            crate::host::docker::DockerClient::connect()
                .await?
                .running_containers()
                .await
        })?;
    let mut containers = containers;
    containers.extend(remote_tasks(&a.conn.state_dir, &containers));
    let mut compiled = policy::compile(&policy, &containers, &mut IdentityAllocator::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // As the daemon compiles it on a Swarm node.
    let state = crate::observe::state::State::read(&a.conn.state_dir).unwrap_or_default();
    for &port in &state.swarm_data_path_ports {
        crate::daemon::desired::deny_swarm_data_path(&mut compiled, port);
    }
    let (plans, skipped) = plan(&policy, &compiled, &containers, &a.groups);
    let tty = std::io::stderr().is_terminal();
    if !a.json {
        eprintln!(
            "Probing {} paths between {} pairs ({} ms timeout, {} at once)...",
            plans.len(),
            plans
                .iter()
                .map(|p| (&p.from_class, &p.to_class))
                .collect::<BTreeSet<_>>()
                .len(),
            a.timeout_ms,
            a.parallel
        );
    }
    let step = (plans.len() / 10).max(1);
    let observed = run_probes(
        &plans,
        Duration::from_millis(a.timeout_ms),
        a.parallel,
        !a.no_listen,
        |done, total| {
            if a.json {
                return;
            }
            if tty {
                eprint!("\r  {done}/{total} probes done");
                if done == total {
                    eprintln!();
                }
            } else if done % step == 0 || done == total {
                eprintln!("  {done}/{total} probes done");
            }
        },
    );
    let probes: Vec<Probe> = plans
        .into_iter()
        .zip(observed)
        .map(|(p, o)| {
            let (action, rule, why) = expect(&compiled, &p);
            let outcome = judge(action, &o);
            Probe {
                from_class: p.from_class,
                to_class: p.to_class,
                from: p.from,
                to: p.to,
                proto: p.proto,
                port: p.port,
                port_source: p.port_source,
                expected: if action == Action::Deny {
                    "deny"
                } else {
                    "allow"
                }
                .into(),
                expected_rule: rule,
                expected_why: why,
                observed: o,
                outcome,
            }
        })
        .collect();
    let count = |o: Outcome| probes.iter().filter(|p| p.outcome == o).count();
    Ok(Report {
        policy: path,
        ok: count(Outcome::Ok),
        mismatches: count(Outcome::Mismatch),
        inconclusive: count(Outcome::Inconclusive),
        probes,
        skipped,
    })
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let r = verify(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let color = std::io::stdout().is_terminal();
        print!("{}", render(&r, a.verbose, color));
    }
    Ok(if r.mismatches > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attachment;
    use crate::model::Container;

    fn container(name: &str, label: Option<&str>, net: &str, ip: [u8; 4]) -> Container {
        Container {
            published: Vec::new(),
            id: format!("id-{name}"),
            name: name.into(),
            labels: label
                .map(|l| [("tier".to_string(), l.to_string())].into())
                .unwrap_or_default(),
            pid: 100,
            networks: vec![Attachment {
                network: net.into(),
                ipv4: Some(ip.into()),
                ..Attachment::default()
            }],
            ..Container::default()
        }
    }

    const POLICY: &str = r#"
[groups.web]
labels = { tier = "web" }
[groups.db]
labels = { tier = "db" }
ingress = "deny"
[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp", "53/udp"]
action = "allow"
"#;

    #[test]
    fn plans_rule_ports_an_unlisted_port_and_icmp_per_pair() {
        let policy = policy::parse_str(POLICY, "t.toml").unwrap();
        let cs = vec![
            container("web1", Some("web"), "n", [10, 0, 0, 2]),
            container("db1", Some("db"), "n", [10, 0, 0, 3]),
            container("plain", None, "n", [10, 0, 0, 4]),
            container("far", Some("db"), "other", [10, 9, 0, 5]),
        ];
        let compiled = policy::compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap();
        let (plans, skipped) = plan(&policy, &compiled, &cs, &[]);
        let web_db: Vec<_> = plans
            .iter()
            .filter(|p| p.from_class.0 == "web" && p.to_class.0 == "db")
            .map(|p| (p.proto, p.port, p.port_source.as_str()))
            .collect();
        assert_eq!(
            web_db,
            [
                (ProbeProto::Tcp, 5432, "rule #1"),
                (ProbeProto::Tcp, 47000, "no rule"),
                (ProbeProto::Udp, 53, "rule #1"),
                (ProbeProto::Udp, 47000, "no rule"),
                (ProbeProto::Icmp, 0, "echo"),
            ]
        );
        let p = plans
            .iter()
            .find(|p| p.from_class.0 == "web" && p.to_class.0 == "db")
            .unwrap();
        assert_eq!((p.from.name.as_str(), p.to.name.as_str()), ("web1", "db1"));
        // Expectations come from the compiled tables.
        let exp = |from: &str, to: &str, pr: ProbeProto, port: u16| {
            let p = plans
                .iter()
                .find(|p| {
                    p.from_class.0 == from && p.to_class.0 == to && p.proto == pr && p.port == port
                })
                .unwrap();
            expect(&compiled, p).0
        };
        assert_eq!(exp("web", "db", ProbeProto::Tcp, 5432), Action::Allow);
        assert_eq!(exp("web", "db", ProbeProto::Tcp, 47000), Action::Deny);
        assert_eq!(exp("unmanaged", "db", ProbeProto::Tcp, 47000), Action::Deny);
        assert_eq!(exp("db", "web", ProbeProto::Icmp, 0), Action::Allow);
        // A group with one member has no pair with itself.
        assert!(skipped
            .iter()
            .any(|s| s.from_class.0 == "web" && s.to_class.0 == "web"));
        assert!(!plans
            .iter()
            .any(|p| p.to.name == "far" || p.from.name == "far"));
    }

    #[test]
    fn tasks_on_other_nodes_are_destinations_over_tcp_and_icmp_only() {
        let policy = policy::parse_str(POLICY, "t.toml").unwrap();
        let remote = |name: &str, tier: &str, ip: [u8; 4]| {
            let mut c = container(name, Some(tier), "ov", ip);
            c.pid = 0;
            c.remote_node = Some("198.18.0.2".into());
            c
        };
        // Local tasks share docker_gwbridge too (listed first), where
        // Docker lets no two containers talk: never a probe's path.
        let gw = |name: &str, tier: &str, last: u8| {
            let mut c = container(name, Some(tier), "ov", [10, 0, 9, last]);
            c.networks.insert(
                0,
                Attachment {
                    network: crate::host::docker::GWBRIDGE.into(),
                    ipv4: Some([172, 18, 0, last].into()),
                    ..Attachment::default()
                },
            );
            c
        };
        let cs = vec![
            gw("web1", "web", 2),
            gw("db1", "db", 3),
            remote("db.1.x", "db", [10, 0, 9, 5]),
            remote("web.1.y", "web", [10, 0, 9, 6]),
        ];
        let compiled = policy::compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap();
        let (plans, skipped) = plan(&policy, &compiled, &cs, &[]);
        let web_db: Vec<_> = plans
            .iter()
            .filter(|p| p.from_class.0 == "web" && p.to_class.0 == "db")
            .map(|p| (p.from.name.as_str(), p.to.name.as_str(), p.proto, p.port))
            .collect();
        assert_eq!(
            web_db,
            [
                ("web1", "db1", ProbeProto::Tcp, 5432),
                ("web1", "db1", ProbeProto::Tcp, 47000),
                ("web1", "db1", ProbeProto::Udp, 53),
                ("web1", "db1", ProbeProto::Udp, 47000),
                ("web1", "db1", ProbeProto::Icmp, 0),
            ]
        );
        let p = plans.iter().find(|p| p.to.name == "db1").unwrap();
        assert_eq!(p.to.ip, Ipv4Addr::new(10, 0, 9, 3), "over the overlay");
        let web_remote: Vec<_> = plans
            .iter()
            .filter(|p| p.to.name == "web.1.y")
            .map(|p| (p.from.name.as_str(), p.proto))
            .collect();
        assert_eq!(
            web_remote,
            [("web1", ProbeProto::Tcp), ("web1", ProbeProto::Icmp)]
        );
        assert!(skipped.iter().any(|s| s.from_class.0 == "web"
            && s.to_class.0 == "web"
            && s.reason.contains("UDP to a task on another node")));
        // A group only on other nodes is never a source.
        assert!(!plans.iter().any(|p| p.from.name.contains('.')));
        // A group whose tasks all run elsewhere: said so.
        let cs = vec![gw("web1", "web", 2), remote("db.1.x", "db", [10, 0, 9, 5])];
        let compiled = policy::compile(&policy, &cs, &mut IdentityAllocator::new()).unwrap();
        let (_, skipped) = plan(&policy, &compiled, &cs, &[]);
        assert!(skipped
            .iter()
            .any(|s| s.from_class.0 == "db" && s.reason.contains("other nodes only")));
    }

    #[test]
    fn outcomes() {
        assert_eq!(judge(Action::Allow, &Observed::Refused), Outcome::Ok);
        assert_eq!(judge(Action::Audit, &Observed::Open), Outcome::Ok);
        assert_eq!(judge(Action::Deny, &Observed::NoAnswer), Outcome::Ok);
        assert_eq!(judge(Action::Deny, &Observed::Delivered), Outcome::Mismatch);
        assert_eq!(judge(Action::Allow, &Observed::NoAnswer), Outcome::Mismatch);
        assert_eq!(
            judge(Action::Allow, &Observed::Silent),
            Outcome::Inconclusive
        );
        assert_eq!(
            judge(Action::Deny, &Observed::Error("x".into())),
            Outcome::Inconclusive
        );
    }
}
