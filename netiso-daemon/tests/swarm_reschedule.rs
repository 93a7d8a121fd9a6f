//! A task moved to another node (issue 14), on a real two-node swarm with
//! one netiso daemon per node (`netiso_testkit::swarm`, as
//! `tests/swarm.rs`): `api` starts on node 0, is moved to node 1 by a
//! placement constraint, and then (1) node 1 enforces the new task, for
//! clients and intruders on both nodes; (2) neither daemon still names
//! api's old address or task, in its state or in `netiso status`; (3) the
//! old address, taken by another container, is that container's and not
//! api's on either node. Judged by what the receivers got (markers).
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netiso_daemon::observe::state::State;
use netiso_testkit::daemon::DaemonProc;
use netiso_testkit::swarm::{Node, Swarm, RECEIVER, RECEIVER_PORT as PORT};

const OVERLAY: &str = "ovr";
const SUBNET: &str = "10.231.49.0/24";
/// Every wait of this test: a task to run, a daemon to see it, a marker
/// to arrive.
const WAIT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.client]
swarm = { service = ["client", "client0"] }

[groups.intruder]
swarm = { service = ["intruder", "intruder0"] }
ingress = "deny"

# Takes api only: what would let a stale "api" address in.
[groups.backend]
swarm = { service = "backend" }
ingress = "deny"

# A plain container that takes api's old address.
[groups.squat]
names = ["squatter"]
ingress = "deny"

[[rules]]
from = "client"
to = "api"
ports = ["8080/tcp"]
action = "allow"

[[rules]]
from = "api"
to = "backend"
ports = ["8080/tcp"]
action = "allow"
"#;

/// Both nodes with their daemons, for failure messages.
struct Nodes<'a> {
    nodes: [&'a Node; 2],
    daemons: [&'a DaemonProc; 2],
}

impl Nodes<'_> {
    /// Everything a failure needs: each daemon's endpoints and log tail,
    /// each engine's log tail.
    fn dump(&self) -> String {
        let mut out = String::new();
        for (n, d) in self.nodes.iter().zip(self.daemons) {
            let eps = State::read(d.state_dir.path())
                .map(|s| {
                    s.endpoints
                        .iter()
                        .map(|e| {
                            format!(
                                "  {} {:?} {:?} netns={} remote={:?}\n",
                                e.container,
                                e.groups,
                                e.ip,
                                e.netns.is_some(),
                                e.remote_node
                            )
                        })
                        .collect::<String>()
                })
                .unwrap_or_else(|e| format!("  (no state: {e})\n"));
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out += &format!(
                "--- {}: daemon endpoints:\n{eps}--- its daemon log (last 30):\n{}\n--- its engine log (last 15):\n{}\n",
                n.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                n.log_tail(15)
            );
        }
        out
    }

    /// Waits (up to WAIT) until `pred` holds for daemon `i`'s state.
    fn wait_state(&self, i: usize, what: &str, pred: impl Fn(&State) -> bool) {
        let t = Instant::now();
        loop {
            if State::read(self.daemons[i].state_dir.path()).is_ok_and(|s| pred(&s)) {
                return;
            }
            assert!(
                t.elapsed() < WAIT,
                "{}: not {what} after {WAIT:?}\n{}",
                self.nodes[i].name,
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `from` (on node `i`) sends `marker` to `ip` until the receiver
    /// `to` (on node `j`) got it (up to WAIT).
    fn reaches(&self, i: usize, from: &str, ip: Ipv4Addr, j: usize, to: &str, marker: &str) {
        let t = Instant::now();
        loop {
            self.nodes[i].send_tcp(from, ip, PORT, marker);
            if self.nodes[j].received(to).contains(marker) {
                return;
            }
            assert!(
                t.elapsed() < WAIT,
                "{marker}: allowed but never arrived at {ip} (got {:?})\n{}",
                self.nodes[j].received(to),
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `from` (on node `i`) sends `marker` to `ip` (once: a dropped SYN
    /// costs nc's 2 s timeout): the receiver `to` (on node `j`) must not
    /// get it.
    fn denied(&self, i: usize, from: &str, ip: Ipv4Addr, j: usize, to: &str, marker: &str) {
        self.nodes[i].send_tcp(from, ip, PORT, marker);
        let got = self.nodes[j].received(to);
        assert!(
            !got.contains(marker),
            "{marker}: denied but arrived at {ip} ({got:?})\n{}",
            self.dump()
        );
    }
}

fn has_group(e: &netiso_daemon::observe::state::EndpointState, g: &str) -> bool {
    e.groups.iter().any(|x| x == g)
}

/// `name` is this daemon's own enforced overlay endpoint.
fn enforced(s: &State, name: &str) -> bool {
    s.endpoints
        .iter()
        .any(|e| e.container == name && e.enforced && e.netns.is_some())
}

/// `name` is a task on another node, at `ip`, in `group`.
fn remote(s: &State, name: &str, ip: Ipv4Addr, group: &str) -> bool {
    s.endpoints.iter().any(|e| {
        e.container == name
            && e.remote_node.is_some()
            && e.ip == Some(IpAddr::V4(ip))
            && has_group(e, group)
    })
}

/// Whether this state still knows api's old task (by its name), or its
/// old address as api's (unless the new task holds it too).
fn names_old_api(s: &State, old_task: &str, old_ip: Ipv4Addr, new_ip: Ipv4Addr) -> bool {
    s.endpoints.iter().any(|e| {
        e.container == old_task
            || (old_ip != new_ip && e.ip == Some(IpAddr::V4(old_ip)) && has_group(e, "api"))
    })
}

/// The name of the container `id` on `node`, without the `/`.
fn name_of(node: &Node, id: &str) -> String {
    node.docker_ok(&format!("inspect -f '{{{{.Name}}}}' {id}"))
        .trim_start_matches('/')
        .to_string()
}

/// The ids of `service`'s running task containers on `node`.
fn tasks_on(node: &Node, service: &str) -> Vec<String> {
    node.docker_ok(&format!(
        "ps -q --no-trunc --filter label=com.docker.swarm.service.name={service}"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_task_moved_to_another_node_is_enforced_there_and_its_old_address_forgotten() {
    let started = Instant::now();
    let swarm = Swarm::new(2);
    swarm.overlay(OVERLAY, SUBNET);
    // node 0: api (receiver), client0, intruder0;
    // node 1: client, intruder, backend (receiver, takes api only).
    // (`service` gives a 1 s grace period: the move does not wait 10 s
    // for the old task, whose sleep ignores SIGTERM, to stop.)
    swarm.service(&format!(
        "--name api --network {OVERLAY} \
         --constraint node.hostname=={} {} sh -c '{RECEIVER}'",
        swarm.nodes[0].name,
        netiso_testkit::docker::image()
    ));
    swarm.service_on("client0", 0, OVERLAY, "exec sleep 3600");
    swarm.service_on("intruder0", 0, OVERLAY, "exec sleep 3600");
    swarm.service_on("client", 1, OVERLAY, "exec sleep 3600");
    swarm.service_on("intruder", 1, OVERLAY, "exec sleep 3600");
    swarm.service_on("backend", 1, OVERLAY, RECEIVER);
    for s in [
        "api",
        "client0",
        "intruder0",
        "client",
        "intruder",
        "backend",
    ] {
        swarm.wait_tasks_running(s, 1, WAIT);
    }
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    let old_api = swarm.task_container(0, "api");
    let client0 = swarm.task_container(0, "client0");
    let intruder0 = swarm.task_container(0, "intruder0");
    let client = swarm.task_container(1, "client");
    let intruder = swarm.task_container(1, "intruder");
    let backend = swarm.task_container(1, "backend");
    let old_name = name_of(a, &old_api);
    let old_ip = a.container_ip(&old_api, OVERLAY);
    let backend_ip = b.container_ip(&backend, OVERLAY);
    let client_ip = b.container_ip(&client, OVERLAY);
    let names: Vec<String> = [(b, &client), (b, &intruder), (b, &backend)]
        .iter()
        .map(|(n, c)| name_of(n, c))
        .collect();
    let (client_name, intruder_name, backend_name) = (&names[0], &names[1], &names[2]);

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let da = a.daemon(policy.clone());
    let db = b.daemon(policy.clone());
    let n = Nodes {
        nodes: [a, b],
        daemons: [&da, &db],
    };
    let t_up = Instant::now();
    n.wait_state(0, "enforcing api, naming node 1's tasks", |s| {
        enforced(s, &old_name)
            && remote(s, client_name, client_ip, "client")
            && remote(s, backend_name, backend_ip, "backend")
    });
    n.wait_state(1, "enforcing its tasks, naming api on node 0", |s| {
        enforced(s, backend_name)
            && enforced(s, intruder_name)
            && remote(s, &old_name, old_ip, "api")
    });

    // Before the move: api on node 0.
    n.reaches(1, &client, old_ip, 0, &old_api, "before-client");
    n.reaches(0, &client0, old_ip, 0, &old_api, "before-client0");
    n.reaches(0, &old_api, backend_ip, 1, &backend, "before-api-backend");
    n.denied(1, &intruder, old_ip, 0, &old_api, "before-intruder");
    n.denied(0, &intruder0, old_ip, 0, &old_api, "before-intruder0");
    n.denied(
        1,
        &intruder,
        backend_ip,
        1,
        &backend,
        "before-intruder-backend",
    );
    println!("daemons up and checked in {:?}", t_up.elapsed());

    // The move: node 0's task goes, one starts on node 1.
    let t_move = Instant::now();
    swarm.manager().docker_ok(&format!(
        "service update --detach \
         --constraint-rm node.hostname=={} --constraint-add node.hostname=={} api",
        a.name, b.name
    ));
    let new_api = loop {
        let on_a = tasks_on(a, "api");
        let on_b = tasks_on(b, "api");
        if on_a.is_empty() && on_b.len() == 1 {
            break on_b[0].clone();
        }
        assert!(
            t_move.elapsed() < WAIT,
            "api not moved after {WAIT:?}: node 0 runs {on_a:?}, node 1 {on_b:?}\n{}\n{}",
            String::from_utf8_lossy(&swarm.manager().docker("service ps --no-trunc api").stdout),
            n.dump()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let new_name = name_of(b, &new_api);
    let new_ip = b.container_ip(&new_api, OVERLAY);
    if new_ip == old_ip {
        // Swarm's allocator hands out addresses in turn, so this is not
        // expected; the task name then tells old from new.
        println!("note: the new api task got the old address {old_ip}: checked by task name");
    }
    println!(
        "api moved in {:?}: {old_name} {old_ip} (node 0) -> {new_name} {new_ip} (node 1)",
        t_move.elapsed()
    );

    // (1) Node 1 enforces the new task; node 0 names it; (2) neither
    // still names the old one.
    n.wait_state(1, "enforcing the new api, forgetting the old", |s| {
        enforced(s, &new_name) && !names_old_api(s, &old_name, old_ip, new_ip)
    });
    n.wait_state(0, "naming the new api, forgetting the old", |s| {
        remote(s, &new_name, new_ip, "api") && !names_old_api(s, &old_name, old_ip, new_ip)
    });
    println!("both daemons in step {:?} after the move", t_move.elapsed());
    for (i, d) in [&da, &db].into_iter().enumerate() {
        let out = d.cli(&["status", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let report: serde_json::Value = serde_json::from_str(&text).expect("status --json");
        let eps = report["endpoints"].as_array().expect("endpoints");
        let old_ip_text = old_ip.to_string();
        let stale: Vec<&serde_json::Value> = eps
            .iter()
            .filter(|e| {
                e["container"] == old_name.as_str()
                    || (old_ip != new_ip
                        && e["ip"] == old_ip_text.as_str()
                        && e["groups"]
                            .as_array()
                            .is_some_and(|g| g.iter().any(|x| x == "api")))
            })
            .collect();
        assert!(
            stale.is_empty(),
            "{}: status still names api's old task or address: {stale:?}\n{}",
            n.nodes[i].name,
            n.dump()
        );
        let attach = |name: &str| {
            eps.iter()
                .find(|e| e["container"] == name)
                .and_then(|e| e["attach"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let want = if i == 1 { "attached" } else { "remote" };
        assert_eq!(attach(&new_name), want, "{}: {text}", n.nodes[i].name);
        assert!(
            out.status.success(),
            "{}: status reports a problem: {text}",
            n.nodes[i].name
        );
    }

    // (1) The matrix again, api on node 1: same node and across nodes.
    n.reaches(1, &client, new_ip, 1, &new_api, "after-client");
    n.reaches(0, &client0, new_ip, 1, &new_api, "after-client0");
    n.reaches(1, &new_api, backend_ip, 1, &backend, "after-api-backend");
    n.denied(1, &intruder, new_ip, 1, &new_api, "after-intruder");
    n.denied(0, &intruder0, new_ip, 1, &new_api, "after-intruder0");

    // (3) The old address, taken by a plain container on node 0 (in a
    // group of its own): it is that container to both nodes, not api.
    // Backend takes api only, so it must not get the squatter's marker,
    // and clients may not reach the squatter.
    let t = Instant::now();
    let squatter = loop {
        let out = a.docker(&format!(
            "run -d --name squatter --network {OVERLAY} --ip {old_ip} {} sh -c '{RECEIVER}'",
            netiso_testkit::docker::image()
        ));
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        // The manager may not have released the old address yet.
        let _ = a.docker("rm -f squatter");
        assert!(
            t.elapsed() < WAIT,
            "no container takes api's old address {old_ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(a.container_ip(&squatter, OVERLAY), old_ip);
    n.wait_state(0, "enforcing the squatter", |s| enforced(s, "squatter"));
    n.wait_state(1, "naming the squatter", |s| {
        remote(s, "squatter", old_ip, "squat") && !names_old_api(s, &old_name, old_ip, new_ip)
    });
    n.denied(0, &squatter, backend_ip, 1, &backend, "squatter-backend");
    n.denied(1, &client, old_ip, 0, &squatter, "client-old-address");
    n.denied(0, &client0, old_ip, 0, &squatter, "client0-old-address");
    // The controls still pass: api still reaches backend, clients api.
    n.reaches(1, &new_api, backend_ip, 1, &backend, "last-api-backend");
    n.reaches(0, &client0, new_ip, 1, &new_api, "last-client0");
    for (node, d) in [(a, &da), (b, &db)] {
        for l in d
            .log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            println!("{}: {l}", node.name);
        }
    }
    a.docker_ok(&format!("rm -f {squatter}"));
    println!("test body took {:?}", started.elapsed());
}
