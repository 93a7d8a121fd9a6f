//! netiso across a real two-node Docker Swarm (engines in namespaces,
//! `netiso_testkit::swarm`): one netiso daemon per node, in the node's
//! network namespace, on the node's engine (`DOCKER_HOST`) and exec-root
//! (`--docker-exec-root`, through dockerd's root). Tasks of `dnsrr`
//! services on an attachable overlay are put in groups with `swarm = {
//! service = … }`; each daemon enforces its own node's overlay endpoints
//! (veths in the overlay's namespace) and names the other node's tasks
//! from the overlay's gossip. The reachability matrix is judged by what
//! each receiver got: every sender writes its own marker to the
//! receiver's port, and the receiver's record holds the markers that
//! arrived. Then: an unknown overlay address (not the world), `status`,
//! a restart of one daemon (same endpoint ids), a task started later, and
//! everything removed (no overlay endpoint, link or remote peer left).
use std::process::Command;
use std::time::{Duration, Instant};

use netiso_testkit::daemon::DaemonProc;
use netiso_testkit::swarm::{Node, Swarm, RECEIVER};

const PORT: u16 = netiso_testkit::swarm::RECEIVER_PORT;
const OVERLAY: &str = "ov";
const SUBNET: &str = "10.231.9.0/24";
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.client]
swarm = { service = "client" }

[groups.intruder]
swarm = { service = ["intruder", "neighbor", "late"] }
ingress = "deny"

[[rules]]
from = "client"
to = "api"
ports = ["8080/tcp"]
action = "allow"

# The world may reach api: an address of the overlay nobody knows is not
# the world.
[[rules]]
from = "world"
to = "api"
ports = ["8080/tcp"]
action = "allow"
"#;

#[test]
fn two_nodes_enforce_overlay_groups_with_remote_tasks_named_from_gossip() {
    let swarm = Swarm::new(2);
    let net = swarm.overlay(OVERLAY, SUBNET);
    // node 0: api (receiver), neighbor (same-node intruder);
    // node 1: client (allowed), intruder, and a plain container (no
    // service, no group).
    swarm.service_on("api", 0, OVERLAY, RECEIVER);
    swarm.service_on("neighbor", 0, OVERLAY, "exec sleep 3600");
    swarm.service_on("client", 1, OVERLAY, "exec sleep 3600");
    swarm.service_on("intruder", 1, OVERLAY, RECEIVER);
    for s in ["api", "neighbor", "client", "intruder"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let api = swarm.task_container(0, "api");
    let neighbor = swarm.task_container(0, "neighbor");
    let client = swarm.task_container(1, "client");
    let intruder = swarm.task_container(1, "intruder");
    let plain = swarm.nodes[1].run("plain", OVERLAY, "exec sleep 3600");
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    let api_ip = a.container_ip(&api, OVERLAY);
    let intruder_ip = b.container_ip(&intruder, OVERLAY);

    // Without netiso everything reaches everything (the test's own check).
    b.send_tcp(&intruder, api_ip, PORT, "before-intruder");
    let t = Instant::now();
    while !a.received(&api).contains("before-intruder") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no marker arrives without netiso"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut da = a.daemon(policy.clone());
    let mut db = b.daemon(policy.clone());
    let task_name = |node: &Node, c: &str| {
        node.docker_ok(&format!(
            "inspect -f '{{{{index .Config.Labels \"com.docker.swarm.task.name\"}}}}' {c}"
        ))
    };
    let (api_task, client_task, intruder_task) = (
        task_name(a, &api),
        task_name(b, &client),
        task_name(b, &intruder),
    );
    // Each daemon enforces its own tasks' overlay veths and knows the
    // other node's tasks by their services.
    let enforced = |s: &netiso_daemon::observe::state::State, name: &str| {
        s.endpoints
            .iter()
            .any(|e| e.container == name && e.enforced && e.ifindex.is_some_and(|i| i >> 20 >= 1))
    };
    let known = |s: &netiso_daemon::observe::state::State, name: &str, group: &str| {
        s.endpoints
            .iter()
            .any(|e| e.container == name && e.groups.iter().any(|g| g == group))
    };
    let a_api = a.docker_ok(&format!("inspect -f '{{{{.Name}}}}' {api}"));
    let a_api = a_api.trim_start_matches('/').to_string();
    let b_intruder = b.docker_ok(&format!("inspect -f '{{{{.Name}}}}' {intruder}"));
    let b_intruder = b_intruder.trim_start_matches('/').to_string();
    da.wait_for("node 0 enforcing api, knowing node 1's tasks", |s| {
        enforced(s, &a_api)
            && known(s, &client_task, "client")
            && known(s, &intruder_task, "intruder")
    });
    db.wait_for("node 1 enforcing intruder, knowing node 0's api", |s| {
        enforced(s, &b_intruder) && known(s, &api_task, "api")
    });

    // The matrix, judged by the receivers.
    b.send_tcp(&client, api_ip, PORT, "from-client");
    b.send_tcp(&intruder, api_ip, PORT, "from-intruder");
    a.send_tcp(&neighbor, api_ip, PORT, "from-neighbor");
    b.send_tcp(&plain, api_ip, PORT, "from-plain");
    a.send_tcp(&api, intruder_ip, PORT, "from-api");
    // Allowed across nodes: arrives (retried: the first try may race
    // the daemons' first apply of the other's view).
    let t = Instant::now();
    while !a.received(&api).contains("from-client") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "client (node 1) → api (node 0) allowed but never arrived; api got {:?}\nnode 0 daemon:\n{}",
            a.received(&api),
            da.log()
        );
        b.send_tcp(&client, api_ip, PORT, "from-client");
        std::thread::sleep(Duration::from_millis(300));
    }
    let api_got = a.received(&api);
    for denied in ["from-intruder", "from-neighbor", "from-plain"] {
        assert!(
            !api_got.contains(denied),
            "api received {denied}: {api_got:?}"
        );
    }
    let intruder_got = b.received(&intruder);
    assert!(
        !intruder_got.contains("from-api"),
        "intruder (ingress deny, node 1) received from api (node 0): {intruder_got:?}"
    );

    // An address of the overlay no endpoint has (here: one added to node
    // 1's overlay bridge, sending from its namespace) is an unknown overlay
    // peer, not the world: the world's rule does not let it in, api's
    // default does not either.
    let ov_b = b.overlay_netns_path(&net);
    let unknown = Command::new("nsenter")
        .arg(format!("--net={}", ov_b.display()))
        .args([
            "bash",
            "-c",
            &format!(
                "ip addr add 10.231.9.250/24 dev br0 && \
                 for i in 1 2 3; do timeout 2 bash -c 'echo from-unknown > /dev/tcp/{api_ip}/{PORT}'; done; true"
            ),
        ])
        .output()
        .unwrap();
    assert!(unknown.status.success(), "{unknown:?}");
    let api_got = a.received(&api);
    assert!(
        !api_got.contains("from-unknown"),
        "api received from an unknown overlay address: {api_got:?}"
    );
    // The drops are counted where the receiver is, the unknown sender
    // named as such.
    let stats = String::from_utf8_lossy(&da.cli(&["stats", "--json"]).stdout).to_string();
    assert!(
        stats.contains("default-deny") && stats.contains("unknown-overlay-peer"),
        "node 0 counted no default-deny drop from an unknown overlay peer: {stats}"
    );
    // `status` checks the overlay veths' links in their namespace: all
    // attached, the other node's tasks shown as such, nothing wrong.
    let status = da.cli(&["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    let report: serde_json::Value = serde_json::from_str(&text).expect("status --json");
    let eps = report["endpoints"].as_array().expect("endpoints");
    let attach = |name: &str| {
        eps.iter()
            .find(|e| e["container"] == name)
            .map(|e| e["attach"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(attach(&a_api).as_deref(), Some("attached"), "{text}");
    assert_eq!(attach(&client_task).as_deref(), Some("remote"), "{text}");
    assert!(
        status.status.success(),
        "status reports a problem: {text}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Node 0's daemon restarts: the pinned programs keep enforcing while
    // it is gone, and the new process gives api's overlay veth the same
    // endpoint id (namespace slots are kept), so its links are re-adopted
    // in place.
    let api_id = |s: &netiso_daemon::observe::state::State| {
        s.endpoints
            .iter()
            .find(|e| e.container == a_api)
            .and_then(|e| e.ifindex)
    };
    let before = api_id(&da.state()).expect("api's endpoint id");
    let old_pid = da.child.id();
    let _ = da.child.kill();
    let _ = da.child.wait();
    b.send_tcp(&intruder, api_ip, PORT, "while-down-intruder");
    a.restart_daemon(&mut da);
    da.wait_for("node 0's new daemon enforcing api", |s| {
        s.pid != old_pid && enforced(s, &a_api) && known(s, &client_task, "client")
    });
    assert_eq!(
        api_id(&da.state()),
        Some(before),
        "api's endpoint id changed"
    );
    b.send_tcp(&intruder, api_ip, PORT, "after-restart-intruder");
    b.send_tcp(&client, api_ip, PORT, "after-restart-client");
    let t = Instant::now();
    while !a.received(&api).contains("after-restart-client") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "client no longer reaches api after the restart"
        );
        b.send_tcp(&client, api_ip, PORT, "after-restart-client");
        std::thread::sleep(Duration::from_millis(300));
    }
    let api_got = a.received(&api);
    assert!(
        !api_got.contains("while-down-intruder") && !api_got.contains("after-restart-intruder"),
        "api received from intruder around node 0's restart: {api_got:?}"
    );

    // A task started while the daemons run: node 1 enforces it as soon as
    // it starts, node 0 names it from the gossip; it is denied both ways.
    swarm.service_on("late", 1, OVERLAY, RECEIVER);
    swarm.wait_tasks_running("late", 1, TASK_TIMEOUT);
    let late = swarm.task_container(1, "late");
    let late_name = b.docker_ok(&format!("inspect -f '{{{{.Name}}}}' {late}"));
    let late_name = late_name.trim_start_matches('/').to_string();
    let late_task = task_name(b, &late);
    let late_ip = b.container_ip(&late, OVERLAY);
    db.wait_for("node 1 enforcing the late task", |s| {
        enforced(s, &late_name)
    });
    da.wait_for("node 0 naming the late task", |s| {
        known(s, &late_task, "intruder")
    });
    b.send_tcp(&late, api_ip, PORT, "from-late");
    a.send_tcp(&api, late_ip, PORT, "from-api-to-late");
    b.send_tcp(&client, api_ip, PORT, "from-client-again");
    let t = Instant::now();
    while !a.received(&api).contains("from-client-again") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "client no longer reaches api"
        );
        b.send_tcp(&client, api_ip, PORT, "from-client-again");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !a.received(&api).contains("from-late"),
        "api received from the late task"
    );
    assert!(
        !b.received(&late).contains("from-api-to-late"),
        "the late task received from api"
    );

    // Tasks and the overlay go: each daemon lets go of their endpoints,
    // links and remote peers.
    for s in ["api", "neighbor", "client", "intruder", "late"] {
        swarm.manager().docker_ok(&format!("service rm {s}"));
    }
    b.docker_ok(&format!("rm -f {plain}"));
    let overlay_links = |d: &DaemonProc| {
        std::fs::read_dir(d.pins.path.join("links"))
            .map(|r| {
                r.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .split('-')
                            .next()
                            .and_then(|i| i.parse::<u32>().ok())
                            .is_some_and(|i| i >> 20 >= 1)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    for (d, node) in [(&mut da, a), (&mut db, b)] {
        d.wait_for("no overlay endpoint left", |s| {
            s.endpoints
                .iter()
                .all(|e| e.netns.is_none() && e.remote_node.is_none())
        });
        let t = Instant::now();
        while overlay_links(d) > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "overlay links left on {}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for (d, node) in [(&da, a), (&db, b)] {
        let log = d.log();
        println!("{}: {} log lines", node.name, log.lines().count());
        for l in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            println!("{}: {l}", node.name);
        }
    }
    drop(db);
    drop(da);
}
