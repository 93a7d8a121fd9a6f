//! Docker Swarm: a task started on node B → enforced for traffic from
//! node A (issue 14). A two-node swarm of engines in namespaces
//! ([`crate::swarm`]), one netiso daemon per node; `swarm_starts` one-task
//! services started on node B one after the other. Start = the task
//! container's `State.StartedAt` (node B's engine, wall clock). Enforced
//! from A = the later of: node B's state shows the task's overlay veth
//! enforced (B judges what reaches the task) and node A's shows the task
//! as a remote peer in its group (A judges what its own tasks send to it,
//! from the gossip). Both state files are polled every 2 ms, so each
//! figure is an upper bound by that much.
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::conditions::parse_rfc3339_utc_ns;
use super::report::{Figure, Section};
use super::stats::{percentile, summary};
use super::{real_ns, Options};
use crate::swarm::Swarm;

const OVERLAY: &str = "ovbench";
const POLICY: &str = r#"
[groups.bench]
names = ["bench*"]
ingress = "deny"

[groups.watcher]
names = ["watcher*"]

[[rules]]
from = "watcher"
to = "bench"
ports = ["8080/tcp"]
action = "allow"
"#;

/// The last lines of a daemon's log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub fn run(opts: &Options) -> Result<Section> {
    let swarm = Swarm::new(2);
    swarm.overlay(OVERLAY, "10.231.250.0/24");
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    // Node A needs a task of the overlay: its namespace and gossip.
    swarm.service_on("watcher", 0, OVERLAY, "exec sleep 3600");
    swarm.wait_tasks_running("watcher", 1, Duration::from_secs(60));
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let mut da = a.daemon(policy.clone());
    let mut db = b.daemon(policy);
    for (d, n) in [(&mut da, "A"), (&mut db, "B")] {
        d.wait_for(&format!("node {n}'s first reconcile"), |s| s.generation > 0);
    }

    let mut start_to_b = Vec::new();
    let mut start_to_a = Vec::new();
    let mut start_to_both = Vec::new();
    for i in 0..opts.swarm_starts {
        let svc = format!("bench{i}");
        let prefix = format!("{svc}.");
        swarm.service(&format!(
            "--name {svc} --network {OVERLAY} --constraint node.hostname=={} \
             {} sh -c 'exec sleep 3600'",
            b.name,
            crate::docker::image()
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut t_b, mut t_a, mut container) = (None, None, None::<String>);
        let mut next_ps = Instant::now();
        while t_b.is_none() || t_a.is_none() || container.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "task {svc} not enforced from both nodes within 60 s (B: {t_b:?}, A: {t_a:?}, container {container:?})\nA:\n{}\nB:\n{}",
                    tail(&da.log()),
                    tail(&db.log())
                );
            }
            let now = real_ns();
            if t_b.is_none()
                && db
                    .state()
                    .endpoints
                    .iter()
                    .any(|e| e.container.starts_with(&prefix) && e.network == OVERLAY && e.enforced)
            {
                t_b = Some(now);
            }
            if t_a.is_none()
                && da.state().endpoints.iter().any(|e| {
                    e.container.starts_with(&prefix)
                        && e.remote_node.is_some()
                        && e.groups.iter().any(|g| g == "bench")
                })
            {
                t_a = Some(now);
            }
            if container.is_none() && Instant::now() >= next_ps {
                next_ps = Instant::now() + Duration::from_millis(100);
                let id = b.docker_ok(&format!(
                    "ps -q --filter label=com.docker.swarm.service.name={svc}"
                ));
                container = (!id.is_empty()).then_some(id);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let id = container.unwrap_or_default();
        let started = b.docker_ok(&format!("inspect -f '{{{{.State.StartedAt}}}}' {id}"));
        let started = parse_rfc3339_utc_ns(&started)
            .with_context(|| format!("StartedAt {started:?} of {svc}"))?;
        let ms = |t: Option<u64>| (t.unwrap_or(0) as f64 - started as f64) / 1e6;
        start_to_b.push(ms(t_b));
        start_to_a.push(ms(t_a));
        start_to_both.push(ms(t_a.max(t_b)));
    }

    let mut sec = Section::new(
        "Docker Swarm: task start → enforced across nodes",
        format!(
            "A two-node swarm of Docker engines in network namespaces on this machine, one netiso \
             daemon per node. {n} one-task `dnsrr` services started one after the other on node B \
             (`docker service create` on the manager, node A). Start = the task container's \
             `State.StartedAt`. **Enforced from A** = the later of: node B's state file shows the \
             task's overlay veth enforced, and node A's shows the task as a remote peer in its \
             group (named from the overlay's gossip, read every second). State files polled every \
             2 ms.",
            n = opts.swarm_starts
        ),
    );
    for (id, label, v, target) in [
        (
            "swarm.start_to_enforced_from_a",
            "task start on node B → enforced for traffic from node A",
            &start_to_both,
            true,
        ),
        (
            "swarm.start_to_local",
            "task start on node B → its veth enforced by node B",
            &start_to_b,
            false,
        ),
        (
            "swarm.start_to_remote_named",
            "task start on node B → named on node A (gossip)",
            &start_to_a,
            false,
        ),
    ] {
        let p99 = percentile(v, 99.0);
        let mut f = Figure::new(id, label, "ms", summary(v))
            .extra("p50", percentile(v, 50.0))
            .extra("p99", p99)
            .cond("starts", v.len());
        if target {
            // The gossip is read every second: a task is named within
            // about that.
            f = f.target("p99 ≤ 1500 ms", p99 <= 1500.0);
        }
        sec.figures.push(f);
    }
    Ok(sec)
}
