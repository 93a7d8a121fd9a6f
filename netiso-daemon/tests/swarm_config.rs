//! The policy delivered by Swarm, on a real two-node swarm (engines in
//! namespaces, `netiso_testkit::swarm`), with the project's own stack file
//! `deploy/netiso-policy.yml`: one netiso daemon per node, each started
//! with an empty local policy and `--swarm-policy-service netiso_policy`.
//! A policy deployed as a Swarm config is enforced on every node (each
//! daemon's state names its sha256; the carrier tasks turn healthy, which
//! `netiso status --cluster` reads from Swarm; the receivers get what it
//! allows and nothing else); a new version replaces it everywhere; a
//! version a node cannot load is refused there (the running policy stays,
//! `status` says why) and Swarm rolls the service back; a restarted daemon
//! starts with the last policy delivered.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netiso_testkit::daemon::DaemonProc;
use netiso_testkit::swarm::{Node, Swarm, RECEIVER, RECEIVER_PORT};

const TASK_TIMEOUT: Duration = Duration::from_secs(30);

const V1: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.client]
swarm = { service = "client" }

[groups.intruder]
swarm = { service = "intruder" }

[[rules]]
from = "client"
to = "api"
ports = ["8080/tcp"]
action = "allow"
"#;

// V2 lets intruder in too.
const V2_EXTRA: &str = r#"
[[rules]]
from = "intruder"
to = "api"
ports = ["8080/tcp"]
action = "allow"
"#;

const BAD: &str = "[groups.api]\nswarm = { service = \"api\" }\ningress = \"maybe\"\n";

/// `node`'s daemon, taking its policy from Swarm.
fn daemon_on(node: &Node, policy: PathBuf) -> DaemonProc {
    let mut flags = node.daemon_flags();
    flags.extend(["--swarm-policy-service".into(), "netiso_policy".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    DaemonProc::start_program(node.netiso(), policy, &flags)
}

fn stack_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/netiso-policy.yml")
}

/// `docker stack deploy -c deploy/netiso-policy.yml netiso` on the
/// manager with policy `text` as version `version`; the sha256 of the text.
fn deploy(swarm: &Swarm, version: u32, text: &str) -> String {
    let file = swarm.dir().join(format!("policy-v{version}.toml"));
    std::fs::write(&file, text).unwrap();
    let m = swarm.manager();
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "docker", "-H"])
        .arg(format!("unix://{}", m.socket().display()))
        .args(["stack", "deploy", "-c"])
        .arg(stack_file())
        .arg("netiso")
        .env("NETISO_POLICY_VERSION", version.to_string())
        .env("NETISO_POLICY", &file)
        .env("NETISO_CARRIER_IMAGE", netiso_testkit::docker::image())
        .output()
        .expect("docker stack deploy");
    assert!(
        out.status.success(),
        "stack deploy v{version}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = Command::new("sha256sum").arg(&file).output().unwrap();
    String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `netiso status --cluster` on the manager: (healthy, output).
fn cluster(swarm: &Swarm) -> (bool, String) {
    let out = swarm
        .manager()
        .netiso()
        .args(["status", "--cluster"])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_cluster(swarm: &Swarm, config: &str, timeout: Duration) -> String {
    let t = Instant::now();
    loop {
        let (ok, out) = cluster(swarm);
        if ok
            && out.contains(&format!(
                "2 of 2 available nodes enforce the policy of service netiso_policy ({config})"
            ))
        {
            return out;
        }
        assert!(
            t.elapsed() < timeout,
            "status --cluster not healthy with {config} after {timeout:?}:\n{out}\n{}",
            swarm
                .manager()
                .docker("service ps --no-trunc netiso_policy")
                .stdout
                .escape_ascii()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn wait_sha(d: &mut DaemonProc, node: usize, sha: &str) {
    d.wait_for(&format!("node {node} enforcing the policy {sha}"), |s| {
        s.swarm_policy
            .as_ref()
            .is_some_and(|p| p.sha256.as_deref() == Some(sha))
    });
}

#[test]
fn the_policy_reaches_every_node_from_a_swarm_config() {
    let swarm = Swarm::new(2);
    swarm.overlay("ovc", "10.231.69.0/24");
    swarm.service_on("api", 0, "ovc", RECEIVER);
    swarm.service_on("client", 1, "ovc", "exec sleep 3600");
    swarm.service_on("intruder", 1, "ovc", "exec sleep 3600");
    for s in ["api", "client", "intruder"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    let api = swarm.task_container(0, "api");
    let client = swarm.task_container(1, "client");
    let intruder = swarm.task_container(1, "intruder");
    let api_ip = a.container_ip(&api, "ovc");

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.toml");
    std::fs::write(&local, "").unwrap();
    let mut da = daemon_on(a, local.clone());
    let mut db = daemon_on(b, local);

    // v1 everywhere.
    let v1 = deploy(&swarm, 1, V1);
    wait_sha(&mut da, 0, &v1);
    wait_sha(&mut db, 1, &v1);
    let table = wait_cluster(&swarm, "netiso_policy_1", Duration::from_secs(90));
    // A worker cannot see the cluster, and says where to look.
    let w = b.netiso().args(["status", "--cluster"]).output().unwrap();
    let werr = String::from_utf8_lossy(&w.stderr);
    assert!(
        !w.status.success() && werr.contains("run this on a manager node"),
        "status --cluster on a worker: {werr}"
    );
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        b.send_tcp(&client, api_ip, RECEIVER_PORT, &format!("c1-{i}"));
        b.send_tcp(&intruder, api_ip, RECEIVER_PORT, &format!("i1-{i}"));
    }
    let g = a.received(&api);
    assert!(
        g.contains("c1-"),
        "v1: client did not reach api: {g:?}\n{table}"
    );
    assert!(!g.contains("i1-"), "v1: intruder reached api: {g:?}");

    // v2 everywhere: intruder allowed.
    let v2 = deploy(&swarm, 2, &format!("{V1}{V2_EXTRA}"));
    wait_sha(&mut da, 0, &v2);
    wait_sha(&mut db, 1, &v2);
    wait_cluster(&swarm, "netiso_policy_2", Duration::from_secs(90));
    for i in 0..3 {
        b.send_tcp(&intruder, api_ip, RECEIVER_PORT, &format!("i2-{i}"));
    }
    let g = a.received(&api);
    assert!(g.contains("i2-"), "v2: intruder did not reach api: {g:?}");

    // verify on node 1 probes api on node 0 (a task on another node) from
    // its local tasks, and finds what v2 says.
    let v = b
        .netiso()
        .args(["verify", "--json", "--timeout-ms", "1500", "--state-dir"])
        .arg(db.state_dir.path())
        .output()
        .unwrap();
    let vout = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    println!("verify on node 1:\n{vout}");
    assert!(v.status.success(), "verify on node 1 failed:\n{vout}");
    let report: serde_json::Value =
        serde_json::from_slice(&v.stdout).unwrap_or_else(|e| panic!("{e}: {vout}"));
    let to_api = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["to"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("api.1.")
        })
        .count();
    assert!(
        to_api >= 4,
        "verify on node 1 did not probe the task on node 0 (TCP and ICMP from client and intruder):\n{vout}"
    );

    // explain on node 0 knows the service and its task on node 1.
    let x = a
        .netiso()
        .args([
            "explain",
            "--from",
            "service:client",
            "--to",
            "api",
            "--port",
            "8080/tcp",
            "--state-dir",
        ])
        .arg(da.state_dir.path())
        .output()
        .unwrap();
    let xout = String::from_utf8_lossy(&x.stdout).to_string();
    println!(
        "explain on node 0:\n{xout}{}",
        String::from_utf8_lossy(&x.stderr)
    );
    assert!(
        x.status.success()
            && xout.contains("service client: 1 task(s), 1 on other nodes")
            && xout.contains("a Swarm task on another node")
            && xout.contains("ALLOW"),
        "explain across nodes:\n{xout}"
    );

    // A container that only looks like a carrier (the labels an image's
    // LABEL would copy onto it, a policy letting everyone in) is not one:
    // its name is not the task's.
    a.docker_ok(&format!(
        "run -d --name forged --network host \
         --label com.docker.swarm.service.name=netiso_policy \
         --label com.docker.swarm.task.id=t0 --label com.docker.swarm.task.name=netiso_policy.n.t0 \
         {} sh -c \"mkdir -p /netiso && : > /netiso/policy.toml && exec sleep 3600\"",
        netiso_testkit::docker::image()
    ));
    std::thread::sleep(Duration::from_secs(3));
    let s = da.state();
    let p = s.swarm_policy.as_ref().expect("swarm policy state");
    assert_eq!(
        p.sha256.as_deref(),
        Some(v2.as_str()),
        "a forged carrier changed the policy"
    );
    assert!(
        p.tasks.iter().all(|t| !t.task.contains("forged")),
        "a forged carrier was taken: {:?}",
        p.tasks
    );
    a.docker_ok("rm -f forged");

    // A version the nodes cannot load: refused on each, v2 stays, and
    // Swarm rolls the service back to v2.
    let bad = deploy(&swarm, 3, BAD);
    for (d, n) in [(&mut da, 0), (&mut db, 1)] {
        d.wait_for(&format!("node {n} refusing {bad}"), |s| {
            s.swarm_policy.as_ref().is_some_and(|p| {
                p.sha256.as_deref() == Some(v2.as_str())
                    && p.tasks.iter().any(|t| t.sha256 == bad && t.error.is_some())
            })
        });
    }
    let status = String::from_utf8_lossy(&da.cli(&["status"]).stdout).to_string();
    println!("node 0 after v3:\n{status}");
    assert!(
        status.contains("REFUSED") && status.contains("ingress"),
        "status does not say why the policy from Swarm was refused:\n{status}"
    );
    for i in 0..3 {
        b.send_tcp(&intruder, api_ip, RECEIVER_PORT, &format!("i3-{i}"));
    }
    let g = a.received(&api);
    assert!(
        g.contains("i3-"),
        "after the refused v3, v2 is not in force: {g:?}"
    );
    let table = wait_cluster(&swarm, "netiso_policy_2", Duration::from_secs(150));
    println!("after the rollback:\n{table}");

    // A restarted daemon starts with the last policy delivered (before
    // Docker answers), here v2.
    let _ = db.child.kill();
    let _ = db.child.wait();
    let state = db.state_dir.path().to_path_buf();
    let delivered = std::fs::read(state.join("swarm-policy.toml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&delivered),
        format!("{V1}{V2_EXTRA}"),
        "the state directory does not keep the policy in force"
    );
}
