//! `netiso status --cluster`: every node of the Swarm and whether its
//! netiso enforces the policy Swarm delivers, read from Swarm itself (a
//! manager's nodes and the tasks of the policy's carrier service; see
//! `daemon::swarm_policy`). A carrier task is `running` only once its
//! node's netiso answered its healthcheck with that task's policy, so the
//! task's state is the node's state; nothing of netiso's own is stored.
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::host::docker::{DockerClient, SwarmNode, SwarmTask};

/// One node's line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub role: String,
    /// The node's own state and availability (`ready`, `active`).
    pub node_state: String,
    pub availability: String,
    /// The carrier task's state there (`running` = enforcing its policy),
    /// `none` when the node has no task.
    pub netiso: String,
    /// The Swarm config (policy version) that task carries.
    pub policy: String,
    pub since: String,
    /// Why not, when Swarm says.
    pub error: Option<String>,
}

impl NodeRow {
    /// Enforcing the policy of its task (an unavailable node is not
    /// counted against the cluster).
    pub fn enforcing(&self) -> bool {
        self.netiso == "running"
    }

    fn expected(&self) -> bool {
        self.node_state == "ready" && self.availability == "active"
    }
}

/// Nodes joined with their carrier tasks (the newest per node), by name.
pub fn rows(nodes: &[SwarmNode], tasks: &[SwarmTask]) -> Vec<NodeRow> {
    let mut out: Vec<NodeRow> = nodes
        .iter()
        .map(|n| {
            let task = tasks
                .iter()
                .filter(|t| t.node_id == n.id)
                .max_by(|a, b| a.since.cmp(&b.since));
            NodeRow {
                node: n.hostname.clone(),
                role: n.role.clone(),
                node_state: n.state.clone(),
                availability: n.availability.clone(),
                netiso: task.map_or_else(|| "none".to_string(), |t| t.state.clone()),
                policy: task.map(|t| t.configs.join(",")).unwrap_or_default(),
                since: task.map(|t| to_seconds(&t.since)).unwrap_or_default(),
                error: task.and_then(|t| {
                    t.error.clone().or_else(|| {
                        (t.state != "running" && !t.message.is_empty()).then(|| t.message.clone())
                    })
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// `2026-12-07T11:37:12.735847131Z` → `2026-12-07T11:37:12Z`.
fn to_seconds(rfc3339: &str) -> String {
    match rfc3339.split_once('.') {
        Some((s, _)) if rfc3339.ends_with('Z') => format!("{s}Z"),
        _ => rfc3339.to_string(),
    }
}

/// The table and a summary line.
pub fn render(service: &str, rows: &[NodeRow]) -> String {
    let mut out = String::new();
    let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    let pw = rows
        .iter()
        .map(|r| r.policy.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:w$}  {:7}  {:13}  {:9}  {:pw$}  {}\n",
        "NODE", "ROLE", "NODE STATE", "NETISO", "POLICY", "SINCE / WHY"
    ));
    for r in rows {
        let why = r.error.clone().unwrap_or_else(|| r.since.clone());
        out.push_str(&format!(
            "{:w$}  {:7}  {:13}  {:9}  {:pw$}  {}\n",
            r.node,
            r.role,
            format!("{}/{}", r.node_state, r.availability),
            r.netiso,
            r.policy,
            why
        ));
    }
    let expected: Vec<&NodeRow> = rows.iter().filter(|r| r.expected()).collect();
    let enforcing = expected.iter().filter(|r| r.enforcing()).count();
    let mut policies: Vec<&str> = expected
        .iter()
        .filter(|r| r.enforcing())
        .map(|r| r.policy.as_str())
        .collect();
    policies.sort();
    policies.dedup();
    out.push_str(&format!(
        "{enforcing} of {} available nodes enforce the policy of service {service}{}\n",
        expected.len(),
        match policies.as_slice() {
            [] => String::new(),
            [one] => format!(" ({one})"),
            many => format!(" (DIFFERENT policies: {})", many.join(", ")),
        }
    ));
    out
}

/// Whether every available node enforces one and the same policy.
pub fn healthy(rows: &[NodeRow]) -> bool {
    let expected: Vec<&NodeRow> = rows.iter().filter(|r| r.expected()).collect();
    let mut policies: Vec<&str> = expected.iter().map(|r| r.policy.as_str()).collect();
    policies.sort();
    policies.dedup();
    !expected.is_empty() && expected.iter().all(|r| r.enforcing()) && policies.len() == 1
}

/// `netiso status --cluster`.
pub fn run(service: &str, json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (nodes, tasks) = rt.block_on(async {
        let docker = DockerClient::connect().await?;
        let nodes = docker.swarm_nodes().await?;
        let tasks = docker.service_tasks(service).await?;
        anyhow::Ok((nodes, tasks))
    })?;
    let rows = rows(&nodes, &tasks);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(service, &rows));
    }
    Ok(if healthy(&rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, state: &str) -> SwarmNode {
        SwarmNode {
            id: id.into(),
            hostname: host.into(),
            role: "worker".into(),
            availability: "active".into(),
            state: state.into(),
            addr: String::new(),
        }
    }

    fn task(node: &str, state: &str, config: &str, since: &str) -> SwarmTask {
        SwarmTask {
            node_id: node.into(),
            state: state.into(),
            since: since.into(),
            error: None,
            message: String::new(),
            configs: vec![config.into()],
        }
    }

    #[test]
    fn a_node_is_enforcing_when_its_carrier_task_runs() {
        let nodes = [node("1", "b", "ready"), node("2", "a", "ready")];
        let tasks = [
            task("1", "running", "netiso_policy_2", "t2"),
            task("1", "shutdown", "netiso_policy_1", "t1"),
            task("2", "running", "netiso_policy_2", "t3"),
        ];
        let r = rows(&nodes, &tasks);
        assert_eq!(r[0].node, "a");
        assert_eq!(
            to_seconds("2026-12-07T11:37:12.735847131Z"),
            "2026-12-07T11:37:12Z"
        );
        assert!(healthy(&r));
        let text = render("netiso_policy", &r);
        assert!(
            text.ends_with(
                "2 of 2 available nodes enforce the policy of service netiso_policy (netiso_policy_2)\n"
            ),
            "{text}"
        );

        // A node still starting (not answered), one without a task, one down.
        let nodes = [
            node("1", "a", "ready"),
            node("2", "b", "ready"),
            node("3", "c", "down"),
        ];
        let mut starting = task("1", "starting", "netiso_policy_3", "t4");
        starting.message = "starting".into();
        let r = rows(&nodes, &[starting]);
        assert!(!healthy(&r));
        assert_eq!(r[1].netiso, "none");
        assert_eq!(r[0].error.as_deref(), Some("starting"));
        let text = render("netiso_policy", &r);
        assert!(text.contains("0 of 2 available nodes"), "{text}");

        // Two policies at once (an update half done) is not healthy.
        let nodes = [node("1", "a", "ready"), node("2", "b", "ready")];
        let tasks = [
            task("1", "running", "netiso_policy_1", "t1"),
            task("2", "running", "netiso_policy_2", "t2"),
        ];
        let r = rows(&nodes, &tasks);
        assert!(!healthy(&r));
        assert!(render("x", &r).contains("DIFFERENT policies"));
    }
}
