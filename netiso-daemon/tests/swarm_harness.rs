//! The multi-node Swarm harness (`netiso_testkit::swarm`) and the facts of
//! `shared/swarm.md` it rests on, checked for real on a 3-node swarm of
//! engines in namespaces: hostnames pin tasks, workers refuse manager
//! calls, `dnsrr` tasks and a plain attached container reach each other
//! across nodes over an attachable overlay, each node's overlay namespace
//! (through dockerd's root) holds `br0`, a VXLAN device and the host-side
//! veth of each local container, `network inspect --verbose` on one node
//! lists another node's task, a stack's containers carry their labels;
//! and nothing of the swarm is left once it is dropped, also when the test
//! panics after an engine was SIGKILLed under running containers. No
//! netiso daemon runs here: this is the ground later cross-node tests
//! stand on. The two tests take turns (5 engines at once on 2 cores would
//! only slow both).
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netiso_daemon::host::netlink::{links_in_netns, LinkInfo};
use netiso_testkit::docker::tcp_servers;
use netiso_testkit::swarm::{leftovers, Node, Swarm};

const PORT: u16 = 8080;
const OVERLAY: &str = "ov";
const SUBNET: &str = "10.231.7.0/24";
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// One swarm at a time.
static TURN: Mutex<()> = Mutex::new(());

fn in_subnet(ip: Ipv4Addr, base: [u8; 3]) -> bool {
    ip.octets()[..3] == base
}

/// A busybox `nc` from `container` on `node` to `ip:PORT` gets the
/// greeting of `tcp_servers` (the greeting is checked, not nc's exit code).
fn tcp_ok(node: &Node, container: &str, ip: Ipv4Addr) -> bool {
    node.exec(
        container,
        &format!("nc -w 2 {ip} {PORT} </dev/null | grep -q netiso-ok"),
    )
    .0
}

/// The overlay namespace of `network_id` on `node` holds `br0`, a VXLAN
/// device and the host-side veth of `container`'s interface on the
/// overlay: the container's interface names its peer's ifindex
/// (IFLA_LINK), and that veth names the container's back.
fn check_overlay_netns(node: &Node, network_id: &str, container: &str) -> LinkInfo {
    let path = node.overlay_netns_path(network_id);
    let overlay = links_in_netns(&path).unwrap_or_else(|e| {
        panic!(
            "overlay namespace of {network_id} on {} at {}: {e:#}",
            node.name,
            path.display()
        )
    });
    let kinds: Vec<_> = overlay
        .iter()
        .map(|l| (l.ifname.as_str(), l.kind.as_deref()))
        .collect();
    assert!(
        overlay
            .iter()
            .any(|l| l.ifname == "br0" && l.kind.as_deref() == Some("bridge")),
        "no br0 in the overlay namespace on {}: {kinds:?}",
        node.name
    );
    assert!(
        overlay.iter().any(|l| l.kind.as_deref() == Some("vxlan")),
        "no vxlan device in the overlay namespace on {}: {kinds:?}",
        node.name
    );
    // The same path seen from the host's mount namespace is only the empty
    // file the bind mount sits on.
    let plain = node
        .exec_root()
        .join("netns")
        .join(format!("1-{}", &network_id[..10]));
    assert!(plain.is_file(), "{} is not there", plain.display());
    assert!(
        links_in_netns(&plain).is_err(),
        "{} works as a namespace from the host's mount namespace",
        plain.display()
    );

    let mac = node.container_mac(container, OVERLAY);
    let pid = node.container_pid(container);
    let inside = links_in_netns(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap();
    let eth = inside
        .iter()
        .find(|l| l.mac == Some(mac))
        .unwrap_or_else(|| panic!("no interface with the overlay MAC in {container}: {inside:?}"));
    assert!(eth.is_veth(), "{container}'s overlay interface: {eth:?}");
    let peer = eth.peer_ifindex.expect("IFLA_LINK of the container's veth");
    let host = overlay
        .iter()
        .find(|l| l.ifindex == peer)
        .unwrap_or_else(|| {
            panic!(
                "ifindex {peer} (peer of {container}'s {}) not in the overlay namespace on {}: {kinds:?}",
                eth.ifname, node.name
            )
        });
    assert!(host.is_veth(), "{host:?}");
    assert_eq!(
        host.peer_ifindex,
        Some(eth.ifindex),
        "the overlay veth {} does not name {container}'s {} back",
        host.ifname,
        eth.ifname
    );
    host.clone()
}

#[test]
fn a_three_node_swarm_carries_an_overlay_and_leaves_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let swarm = Swarm::new(3);
    let up = t0.elapsed();

    // Nodes: hostnames are node names (what constraints pin to), each
    // engine has its own identity and address, workers are not managers.
    for node in &swarm.nodes {
        let info = node
            .docker_ok("info --format '{{.Name}} {{.Swarm.NodeAddr}} {{.Swarm.ControlAvailable}}'");
        assert_eq!(
            info,
            format!("{} {} {}", node.name, node.addr, node.manager),
            "docker info of {}",
            node.name
        );
    }
    let ids: std::collections::BTreeSet<_> = swarm
        .nodes
        .iter()
        .map(|n| n.docker_ok("info --format '{{.Swarm.NodeID}}'"))
        .collect();
    assert_eq!(ids.len(), 3, "node ids {ids:?}");
    let refused = swarm.nodes[1].docker("service ls");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("not a swarm manager"),
        "a worker answered `service ls`: {refused:?}"
    );

    // An attachable overlay; a dnsrr task pinned to nodes 0 and 1, a plain
    // container on node 2.
    let net = swarm.overlay(OVERLAY, SUBNET);
    assert!(net.len() >= 25, "network id {net:?}");
    let script = tcp_servers(&[PORT]);
    swarm.service_on("s0", 0, OVERLAY, &script);
    swarm.service_on("s1", 1, OVERLAY, &script);
    let t = Instant::now();
    swarm.wait_tasks_running("s0", 1, TASK_TIMEOUT);
    swarm.wait_tasks_running("s1", 1, TASK_TIMEOUT);
    let tasks_up = t.elapsed();
    let c0 = swarm.task_container(0, "s0");
    let c1 = swarm.task_container(1, "s1");
    let c2 = swarm.nodes[2].run("plain", OVERLAY, &script);
    let ip0 = swarm.container_ip(0, &c0, OVERLAY);
    let ip1 = swarm.container_ip(1, &c1, OVERLAY);
    let ip2 = swarm.container_ip(2, &c2, OVERLAY);
    for ip in [ip0, ip1, ip2] {
        assert!(in_subnet(ip, [10, 231, 7]), "{ip} not in {SUBNET}");
    }
    // Pinned where asked: the other nodes have no container of the service.
    assert_eq!(
        swarm.nodes[1].docker_ok("ps -q --filter label=com.docker.swarm.service.name=s0"),
        ""
    );
    let labels = swarm.nodes[0].docker_ok(&format!(
        "inspect -f '{{{{index .Config.Labels \"com.docker.swarm.service.name\"}}}} {{{{index .Config.Labels \"com.docker.swarm.node.id\"}}}}' {c0}"
    ));
    assert_eq!(
        labels,
        format!(
            "s0 {}",
            swarm.nodes[0].docker_ok("info --format '{{.Swarm.NodeID}}'")
        )
    );

    // Across nodes over the overlay: TCP both ways between the tasks, ICMP,
    // and the plain container to a task.
    assert!(
        tcp_ok(&swarm.nodes[0], &c0, ip1),
        "s0 (node 0) → s1 {ip1} (node 1)"
    );
    assert!(
        tcp_ok(&swarm.nodes[1], &c1, ip0),
        "s1 (node 1) → s0 {ip0} (node 0)"
    );
    assert!(
        tcp_ok(&swarm.nodes[2], &c2, ip0),
        "plain (node 2) → s0 {ip0} (node 0)"
    );
    let (ok, out) = swarm.nodes[0].exec(&c0, &format!("ping -c1 -W2 {ip2}"));
    assert!(ok, "ping s0 → plain {ip2}: {out}");
    // A port nobody listens on is refused: the greeting check can fail.
    assert!(
        !swarm.nodes[0]
            .exec(
                &c0,
                &format!("nc -w 2 {ip1} {} </dev/null | grep -q netiso-ok", PORT + 1)
            )
            .0
    );

    // Each node's overlay namespace, through dockerd's root, holds the
    // host-side veth of its local container.
    let mut veths = Vec::new();
    for (i, c) in [(0, &c0), (1, &c1), (2, &c2)] {
        veths.push(check_overlay_netns(&swarm.nodes[i], &net, c).ifname);
    }

    // Gossip: node 1 knows node 0's task (name, address, node) and node 0
    // knows node 1's; a worker knows what the manager runs.
    let task0 = swarm.manager().docker_ok(&format!(
        "inspect -f '{{{{index .Config.Labels \"com.docker.swarm.task.name\"}}}}' {c0}"
    ));
    let seen = swarm.nodes[1].overlay_endpoints(OVERLAY);
    assert!(
        seen.iter().any(|e| e.service == "s0"
            && e.name == task0
            && e.ip == ip0
            && e.host_ip == swarm.nodes[0].addr),
        "node 1 does not list s0's task {task0} {ip0} on {}: {seen:?}",
        swarm.nodes[0].addr
    );
    let seen = swarm.nodes[2].overlay_endpoints(OVERLAY);
    assert!(
        seen.iter()
            .any(|e| e.service == "s1" && e.ip == ip1 && e.host_ip == swarm.nodes[1].addr),
        "node 2 does not list s1's task {ip1} on {}: {seen:?}",
        swarm.nodes[1].addr
    );

    // A stack: its own overlay, a task pinned to node 2, the stack's label
    // on the container.
    let compose = format!(
        r#"version: "3.8"
services:
  api:
    image: {image}
    command: ["sh", "-c", "{script}"]
    deploy:
      endpoint_mode: dnsrr
      placement:
        constraints: ["node.hostname == {node}"]
    networks: [back]
networks:
  back:
    driver: overlay
    attachable: true
    ipam:
      config:
        - subnet: 10.231.8.0/24
"#,
        image = netiso_testkit::docker::image(),
        node = swarm.nodes[2].name,
    );
    swarm.deploy_stack("shop", &compose);
    swarm.wait_tasks_running("shop_api", 1, TASK_TIMEOUT);
    let api = swarm.task_container(2, "shop_api");
    let ns = swarm.nodes[2].docker_ok(&format!(
        "inspect -f '{{{{index .Config.Labels \"com.docker.stack.namespace\"}}}}' {api}"
    ));
    assert_eq!(ns, "shop");
    let api_ip = swarm.container_ip(2, &api, "shop_back");
    assert!(in_subnet(api_ip, [10, 231, 8]), "{api_ip}");

    let checks = t0.elapsed() - up;
    // Everything goes on drop: processes (reaped), namespaces, mounts,
    // cgroups, the directory.
    let tag = swarm.tag.clone();
    let dir = swarm.dir().to_path_buf();
    let names: Vec<String> = swarm.nodes.iter().map(|n| n.name.clone()).collect();
    let pids: Vec<u32> = swarm.nodes.iter().map(|n| n.dockerd_pid()).collect();
    let t = Instant::now();
    drop(swarm);
    let down = t.elapsed();
    let left = leftovers(&tag, &dir, &names);
    assert!(
        left.is_empty(),
        "left after the swarm was dropped: {left:#?}"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dockerd pid {pid} still exists"
        );
    }
    println!(
        "swarm: up {:.1} s (3 nodes), tasks Running {:.1} s after create, checks {:.1} s, \
         down {:.1} s; overlay veths {veths:?}",
        up.as_secs_f64(),
        tasks_up.as_secs_f64(),
        checks.as_secs_f64(),
        down.as_secs_f64()
    );
}

const PLANNED: &str = "the test fails with the swarm up";

/// What a dropped swarm must not leave, recorded while it ran.
struct Traces {
    tag: String,
    dir: PathBuf,
    names: Vec<String>,
    pids: Vec<u32>,
    sockets: Vec<String>,
}

#[test]
fn a_swarm_whose_engine_was_killed_is_removed_after_a_panic() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let traces = Mutex::new(None);
    // The planned panic without its backtrace; any other is reported.
    let default_hook = std::sync::Arc::new(std::panic::take_hook());
    let hook = default_hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&PLANNED) {
            hook(info);
        }
    }));
    let result = catch_unwind(AssertUnwindSafe(|| {
        let swarm = Swarm::new(2);
        swarm.overlay(OVERLAY, "10.231.9.0/24");
        swarm.service_on("a", 1, OVERLAY, "exec sleep 3600");
        swarm.wait_tasks_running("a", 1, TASK_TIMEOUT);
        let node = &swarm.nodes[1];
        let task = swarm.task_container(1, "a");
        let plain = node.run("plain", OVERLAY, "exec sleep 3600");
        let mut pids = vec![node.dockerd_pid()];
        pids.push(node.container_pid(&task));
        pids.push(node.container_pid(&plain));
        // The shims' sockets, bound in the node's namespace outside its
        // directory.
        let unix = node.sh("cat /proc/net/unix");
        let sockets: Vec<String> = String::from_utf8_lossy(&unix.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .filter(|p| p.starts_with("/run/containerd/s/"))
            .map(str::to_string)
            .collect();
        assert!(
            sockets.len() >= 2,
            "no shim sockets in node 1's namespace: {sockets:?}"
        );
        *traces.lock().unwrap() = Some(Traces {
            tag: swarm.tag.clone(),
            dir: swarm.dir().to_path_buf(),
            names: swarm.nodes.iter().map(|n| n.name.clone()).collect(),
            pids,
            sockets,
        });
        // The engine dies under its containers: containerd, the shims and
        // the containers' processes live on, orphaned.
        // SAFETY: kill only sends a signal, to the swarm's own child.
        unsafe { libc::kill(node.dockerd_pid() as libc::pid_t, libc::SIGKILL) };
        std::panic::panic_any(PLANNED);
    }));
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| default_hook(info)));
    assert!(result.is_err(), "the closure did not panic");
    let t = traces.into_inner().unwrap().expect("the swarm came up");
    let left = leftovers(&t.tag, &t.dir, &t.names);
    assert!(left.is_empty(), "left after the panic: {left:#?}");
    for pid in &t.pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} (dockerd or a container of node 1) still exists"
        );
    }
    for s in &t.sockets {
        assert!(!Path::new(s).exists(), "shim socket {s} left");
    }
}
