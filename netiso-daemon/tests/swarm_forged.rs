//! Hostile review: packets that claim a task's address without coming from it.
//!
//! 1. An unencrypted overlay's VXLAN socket (UDP 4789, or the swarm's
//!    `--data-path-port`, on every node) takes a
//!    frame from whoever sends one; the engine decapsulates it into the
//!    overlay's namespace, and the inner frame reaches the task's veth as if
//!    it had come over the overlay from the task whose address it claims. A
//!    node judges what arrives over an overlay by its source address. So a
//!    task whose own traffic is denied, with a plain UDP socket (no
//!    capability at all), sends a VXLAN datagram through its
//!    `docker_gwbridge` interface to a node's address (its node masquerades
//!    it: to the other node it comes from a swarm node) whose inner packet
//!    claims the address of a task the victim lets in.
//!
//! 2. A task's overlay address (a remote one, from the gossip, or a local
//!    one) is no address of its node's own namespace: nothing of its node
//!    routes to it, so strict reverse-path filtering on the node's outside
//!    interface (SECURITY.md's advice against forged sources) lets a packet
//!    from the world claiming it through (the default route answers). Such a
//!    packet to a port a task publishes in `host` mode was judged, on the
//!    task's `docker_gwbridge` veth, as coming from that task.
//!
//! 3. The built-in deny of the data path judged new flows only. A task
//!    that the world may reach (a port published in `host` mode) is sent a
//!    datagram by a colluding task of another node from that task's own UDP
//!    port 4789 (free in its namespace; its node masquerades it keeping the
//!    port): a flow from the world's node:4789. Once the nodes' own
//!    conntrack forgot the NAT, the first task answers with a forged VXLAN
//!    datagram: a reply for netiso, a new flow for the nodes, which the
//!    other node's VXLAN socket took. Now no flow enters a container from
//!    a data path port of anything that is not a container.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use netiso_testkit::daemon::DaemonProc;
use netiso_testkit::frames::{eth, inet_checksum, ipv4, udp_checksummed};
use netiso_testkit::hostile::udp_receiver;
use netiso_testkit::swarm::{Node, Swarm};

const TASK_TIMEOUT: Duration = Duration::from_secs(30);
const PORT: u16 = 9000;

const POLICY: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.web]
swarm = { service = "web" }

[groups.evil]
swarm = { service = "evil" }

[groups.evil0]
swarm = { service = "evil0" }

[[rules]]
from = "web"
to = "api"
ports = ["9000/udp"]
action = "allow"
"#;

/// A VXLAN datagram (VNI `vni`) carrying a UDP packet `src` -> `dst`:PORT
/// in an Ethernet frame to `dst_mac`.
fn vxlan(vni: u32, src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let u = udp_checksummed(IpAddr::V4(src), IpAddr::V4(dst), 4444, PORT, b"forged");
    let mut ip = ipv4(src, dst, 17, 7, 0, &u);
    let sum = inet_checksum(&[&ip[..20]]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let inner = eth(src_mac, dst_mac, 0x0800, &ip);
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(&inner);
    v
}

/// Sends `payload` from inside the namespace of `pid` to `to`, `n` times.
fn send_from(pid: u32, to: SocketAddr, payload: Vec<u8>, n: u32) {
    send_from_port(pid, any(0), to, payload, n);
}

/// Like [`send_from`], from a socket bound to `from`.
fn send_from_port(pid: u32, from: SocketAddr, to: SocketAddr, payload: Vec<u8>, n: u32) {
    let ns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    netiso_testkit::ns::run_in(&ns, move || {
        let s = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        for _ in 0..n {
            let _ = s.send_to(&payload, to);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

fn name(node: &Node, c: &str) -> String {
    node.docker_ok(&format!("inspect -f '{{{{.Name}}}}' {c}"))
        .trim_start_matches('/')
        .to_string()
}

type State = netiso_daemon::observe::state::State;

/// A daemon on each of the first two nodes enforcing `policy` (the file is
/// in the returned directory, which must outlive them).
fn daemons(swarm: &Swarm, policy: &str) -> (tempfile::TempDir, DaemonProc, DaemonProc) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let da = swarm.nodes[0].daemon(path.clone());
    let db = swarm.nodes[1].daemon(path);
    (dir, da, db)
}

/// Whether both of `container`'s veths (overlay, `docker_gwbridge`) are
/// enforced.
fn enforced_both(s: &State, container: &str) -> bool {
    s.endpoints
        .iter()
        .filter(|e| e.container == container && e.enforced)
        .count()
        >= 2
}

/// Whether a task of `group` on another node is known.
fn knows(s: &State, group: &str) -> bool {
    s.endpoints
        .iter()
        .any(|e| e.remote_node.is_some() && e.groups.iter().any(|g| g == group))
}

/// A task (evil, egress allowed like any default group) forges VXLAN
/// frames claiming web's address to api (ingress deny; only web may send
/// it 9000/udp): through its own node to the other node (remote
/// injection) and to its own node's address (local injection). api must
/// receive none of them. Controls: without netiso the forged frames do
/// arrive; with netiso web itself is received and evil's direct packets
/// are not.
#[test]
fn forged_vxlan_frames_do_not_reach_a_task() {
    let _one = netiso_testkit::swarm::one_at_a_time();
    forged_vxlan_frames(Swarm::new(2), 4789, "10.231.61.0/24");
}

/// The same on a swarm made with `docker swarm init --data-path-port
/// 7789`, the daemons not told (`swarm_data_path_port` left at 4789): they
/// find the port on the overlays' VXLAN links.
#[test]
fn forged_vxlan_frames_to_another_data_path_port_do_not_reach_a_task() {
    let _one = netiso_testkit::swarm::one_at_a_time();
    forged_vxlan_frames(Swarm::with_data_path_port(2, 7789), 7789, "10.231.63.0/24");
}

fn forged_vxlan_frames(swarm: Swarm, port: u16, subnet: &str) {
    swarm.overlay("ovx", subnet);
    swarm.service_on("api", 0, "ovx", "exec sleep 3600");
    swarm.service_on("web", 1, "ovx", "exec sleep 3600");
    swarm.service_on("evil", 1, "ovx", "exec sleep 3600");
    swarm.service_on("evil0", 0, "ovx", "exec sleep 3600");
    for s in ["api", "web", "evil", "evil0"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    let api = swarm.task_container(0, "api");
    let web = swarm.task_container(1, "web");
    let evil = swarm.task_container(1, "evil");
    let evil0 = swarm.task_container(0, "evil0");
    let vni: u32 = a
        .docker_ok(
            "network inspect -f '{{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}' ovx",
        )
        .trim()
        .parse()
        .expect("the overlay's VNI");
    let api_ip = a.container_ip(&api, "ovx");
    let api_mac = a.container_mac(&api, "ovx");
    let web_ip = b.container_ip(&web, "ovx");
    let web_mac = b.container_mac(&web, "ovx");
    let forged = vxlan(vni, web_mac, api_mac, web_ip, api_ip);
    // Through its own node, from a MAC the overlay has no static entry for
    // (the engine pins web's MAC to node 1: from another outer address a
    // frame with it is dropped).
    let forged_local = vxlan(vni, [2, 0, 0, 0, 0xee, 2], api_mac, web_ip, api_ip);
    let api_pid = a.container_pid(&api);
    let (evil_pid, evil0_pid, web_pid) = (
        b.container_pid(&evil),
        a.container_pid(&evil0),
        b.container_pid(&web),
    );
    let to_a = SocketAddr::from((a.addr, port));
    let bind: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap();
    let count = |send: &dyn Fn()| {
        let r = udp_receiver(api_pid, bind, Duration::from_secs(2));
        send();
        r.join()
    };
    let remote = || send_from(evil_pid, to_a, forged.clone(), 20);
    let local = || send_from(evil0_pid, to_a, forged_local.clone(), 20);
    let direct = || {
        send_from(
            evil_pid,
            SocketAddr::from((api_ip, PORT)),
            b"e".to_vec(),
            20,
        );
    };
    let legit = || send_from(web_pid, SocketAddr::from((api_ip, PORT)), b"w".to_vec(), 20);

    // Without netiso, forged frames from either node reach api.
    let t = Instant::now();
    while count(&remote) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no forged frame arrives without netiso (remote)"
        );
    }
    assert!(
        count(&local) > 0,
        "no forged frame arrives without netiso (local)"
    );

    let (_dir, mut da, mut db) = daemons(&swarm, POLICY);
    let (n_api, n_evil0) = (name(a, &api), name(a, &evil0));
    let (n_web, n_evil) = (name(b, &web), name(b, &evil));
    da.wait_for(
        "node 0 enforcing api and evil0, knowing web and the port",
        |s| {
            enforced_both(s, &n_api)
                && enforced_both(s, &n_evil0)
                && knows(s, "web")
                && s.swarm_data_path_ports.contains(&port)
        },
    );
    db.wait_for(
        "node 1 enforcing web and evil, knowing api and the port",
        |s| {
            enforced_both(s, &n_web)
                && enforced_both(s, &n_evil)
                && knows(s, "api")
                && s.swarm_data_path_ports.contains(&port)
        },
    );
    std::thread::sleep(Duration::from_secs(2));

    assert!(
        count(&legit) > 0,
        "control: web does not reach api\n{}",
        da.log()
    );
    assert_eq!(count(&direct), 0, "control: evil reaches api directly");
    let n = count(&remote);
    assert_eq!(
        n,
        0,
        "api (node 0) received {n} datagrams claiming web's address that evil (node 1) forged \
         as VXLAN to node 0's {to_a}\nnode 1 stats: {}",
        String::from_utf8_lossy(&db.cli(&["stats"]).stdout)
    );
    let n = count(&local);
    assert_eq!(
        n,
        0,
        "api (node 0) received {n} datagrams claiming web's address that evil0 (node 0) forged \
         as VXLAN to its own node's {to_a}\nnode 0 stats: {}",
        String::from_utf8_lossy(&da.cli(&["stats"]).stdout)
    );
}

const POLICY_PUBLISHED: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.web]
swarm = { service = "web" }

[groups.near]
swarm = { service = "local" }

[[rules]]
from = "web"
to = "api"
ports = ["9000/udp"]
action = "allow"

[[rules]]
from = "near"
to = "api"
ports = ["9000/udp"]
action = "allow"
"#;

/// A UDP datagram from the world (the hub, by the nodes' link) to node
/// `to`'s address and `PORT`, claiming source `src`.
fn from_world(swarm: &Swarm, to: &Node, src: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
    let mac = to.sh("ip -o link show eth0");
    let mac = String::from_utf8_lossy(&mac.stdout).to_string();
    let mac = mac
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(netiso_testkit::hostile::parse_mac)
        .unwrap_or_else(|| panic!("eth0's MAC on {}: {mac}", to.name));
    let _ = swarm;
    let u = udp_checksummed(IpAddr::V4(src), IpAddr::V4(to.addr), 4444, PORT, marker);
    let mut ip = ipv4(src, to.addr, 17, 9, 0, &u);
    let sum = inet_checksum(&[&ip[..20]]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    eth([2, 0, 0, 0, 0xee, 1], mac, 0x0800, &ip)
}

/// The world forges the overlay address of a task (web, remote, on node 1;
/// local, on node 0, group near) to a port api publishes in `host` mode on node
/// 0 (api: ingress deny; web and near may send it 9000/udp). Node 0 is set up as
/// SECURITY.md asks (strict reverse-path filtering on its outside
/// interface, a default route there as any real node has). api must
/// receive none of them. Controls: without netiso the forged datagrams
/// arrive; with netiso the world's own datagrams do not, web's over the
/// overlay do.
#[test]
fn the_world_forging_a_tasks_overlay_address_is_not_that_task() {
    let _one = netiso_testkit::swarm::one_at_a_time();
    let swarm = Swarm::new(2);
    swarm.overlay("ovp", "10.231.62.0/24");
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    swarm.service(&format!(
        "--name api --network ovp --publish mode=host,target={PORT},published={PORT},protocol=udp \
         --constraint node.hostname=={} {} sh -c 'exec sleep 3600'",
        a.name,
        netiso_testkit::docker::image()
    ));
    swarm.service_on("web", 1, "ovp", "exec sleep 3600");
    swarm.service_on("local", 0, "ovp", "exec sleep 3600");
    for s in ["api", "web", "local"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let api = swarm.task_container(0, "api");
    let web = swarm.task_container(1, "web");
    let local = swarm.task_container(0, "local");
    let web_ip = b.container_ip(&web, "ovp");
    let local_ip = a.container_ip(&local, "ovp");
    let api_ip = a.container_ip(&api, "ovp");
    // Node 0 as a real node: a default route out, strict rp_filter there.
    a.sh(&format!(
        "ip route add default via {w} && sysctl -qw net.ipv4.conf.all.rp_filter=1 && \
         sysctl -qw net.ipv4.conf.eth0.rp_filter=1",
        w = swarm.world_addr()
    ));
    let hub = std::path::PathBuf::from(format!("/run/netns/{}", swarm.hub_netns()));
    let api_pid = a.container_pid(&api);
    let bind: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap();
    let count = |send: &dyn Fn()| {
        let r = udp_receiver(api_pid, bind, Duration::from_secs(2));
        send();
        r.join()
    };
    let world_as = |src: Ipv4Addr| {
        let frame = from_world(&swarm, a, src, b"forged");
        let hub = hub.clone();
        move || netiso_testkit::hostile::raw_send_in(&hub, "br0", frame.clone(), 20)
    };
    let as_web = world_as(web_ip);
    let as_local = world_as(local_ip);
    let as_world = world_as(swarm.world_addr());
    let web_pid = b.container_pid(&web);
    let legit = || send_from(web_pid, SocketAddr::from((api_ip, PORT)), b"w".to_vec(), 20);

    let t = Instant::now();
    while count(&as_web) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "without netiso, no forged datagram reaches api through its published port"
        );
    }
    assert!(
        count(&as_local) > 0,
        "without netiso, no datagram claiming local's address"
    );

    let (_dir, mut da, mut db) = daemons(&swarm, POLICY_PUBLISHED);
    let (n_api, n_web) = (name(a, &api), name(b, &web));
    da.wait_for("node 0 enforcing api on both sides, knowing web", |s| {
        enforced_both(s, &n_api) && knows(s, "web")
    });
    db.wait_for("node 1 enforcing web", |s| {
        s.endpoints
            .iter()
            .any(|e| e.container == n_web && e.enforced)
    });
    std::thread::sleep(Duration::from_secs(2));

    assert!(
        count(&legit) > 0,
        "control: web does not reach api over the overlay\n{}",
        da.log()
    );
    assert_eq!(
        count(&as_world),
        0,
        "control: the world reaches api's published port"
    );
    let n = count(&as_web);
    assert_eq!(
        n,
        0,
        "api received {n} datagrams from the world claiming web's overlay address {web_ip}\n\
         node 0 stats: {}",
        String::from_utf8_lossy(&da.cli(&["stats"]).stdout)
    );
    let n = count(&as_local);
    assert_eq!(
        n, 0,
        "api received {n} datagrams from the world claiming local's overlay address {local_ip}"
    );
}

const POLICY_RESTART: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.intruder]
swarm = { service = "intruder" }
"#;

/// A task replaced on the same node (`docker service update --force`, a
/// crashed task restarted, a rolling update) while no other task of the
/// overlay is left there. libnetwork names an overlay's namespace
/// `<epoch>-<id>` and makes it anew with the next epoch (`2-…`) when the
/// network's last local endpoint left while the engine kept the network;
/// netiso looked for `1-…` only. On engine 20.10 the network's own
/// load-balancer endpoint (`lb_…`) keeps the namespace alive, so this
/// stays `1-…` here: a guard, and the lookup now takes any epoch (the
/// one that holds the veth's peer). Intruder (node 1) must not reach api
/// (ingress deny) on node 0 after api was replaced. Control: it does not
/// before.
#[test]
fn a_task_replaced_on_its_node_stays_enforced() {
    let _one = netiso_testkit::swarm::one_at_a_time();
    let swarm = Swarm::new(2);
    swarm.overlay("ovr", "10.231.63.0/24");
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    swarm.service_on("api", 0, "ovr", netiso_testkit::swarm::RECEIVER);
    swarm.service_on("intruder", 1, "ovr", "exec sleep 3600");
    for s in ["api", "intruder"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let (_dir, mut da, mut db) = daemons(&swarm, POLICY_RESTART);
    let intruder = swarm.task_container(1, "intruder");
    let n_intruder = name(b, &intruder);
    db.wait_for("node 1 enforcing intruder", |s| {
        s.endpoints
            .iter()
            .any(|e| e.container == n_intruder && e.enforced)
    });
    let port = netiso_testkit::swarm::RECEIVER_PORT;
    let round = |tag: &str, da: &mut DaemonProc| -> String {
        let api = swarm.task_container(0, "api");
        let n_api = name(a, &api);
        // Known to node 0's daemon (whether it could enforce it is what
        // the receiver says).
        da.wait_for(&format!("node 0 knowing {n_api} on ovr ({tag})"), |s| {
            s.endpoints
                .iter()
                .any(|e| e.container == n_api && e.network == "ovr")
        });
        std::thread::sleep(Duration::from_secs(2));
        let ip = a.container_ip(&api, "ovr");
        for i in 0..3 {
            b.send_tcp(&intruder, ip, port, &format!("{tag}-{i}"));
        }
        std::thread::sleep(Duration::from_millis(500));
        a.received(&api)
    };
    let got = round("first", &mut da);
    assert!(
        !got.contains("first-"),
        "control: intruder reached api before the restart: {got:?}"
    );

    let old = swarm.task_container(0, "api");
    swarm
        .manager()
        .docker_ok("service update --force --detach api");
    let t = Instant::now();
    while swarm.task_container(0, "api") == old || {
        let st = a.docker_ok(&format!(
            "inspect -f '{{{{.State.Running}}}}' {}",
            swarm.task_container(0, "api")
        ));
        st != "true"
    } {
        assert!(t.elapsed() < TASK_TIMEOUT, "api was not replaced");
        std::thread::sleep(Duration::from_millis(300));
    }
    let netns = a.sh(&format!(
        "ls /proc/{}/root{}/netns",
        a.dockerd_pid(),
        a.exec_root().display()
    ));
    let netns = String::from_utf8_lossy(&netns.stdout).to_string();
    let got = round("second", &mut da);
    assert!(
        !got.contains("second-"),
        "intruder (node 1) reached api (ingress deny) after api was replaced on node 0 \
         (overlay namespaces there: {netns:?}): {got:?}\nnode 0 status: {}",
        String::from_utf8_lossy(&da.cli(&["status"]).stdout)
    );
}

/// 0.0.0.0:`port`.
fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// The sources of the UDP datagrams arriving at `bind` inside the
/// namespace `ns` during `window`. Returns once the socket is bound.
fn sources_in(
    ns: std::path::PathBuf,
    bind: SocketAddr,
    window: Duration,
) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        netiso_testkit::ns::run_in(&ns, move || {
            let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            ready_tx.send(()).unwrap();
            let end = Instant::now() + window;
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < end {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    got.push(from);
                }
            }
            got
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    h
}

/// The UDP port relay publishes in `host` mode.
const RELAY_PORT: u16 = 9100;

/// The nodes' own conntrack (NAT) keeps a UDP flow this long (seconds).
const NAT_UDP_TIMEOUT: u32 = 3;

const POLICY_REPLY: &str = r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.web]
swarm = { service = "web" }

[groups.relay]
swarm = { service = "relay" }

[groups.evil]
swarm = { service = "evil" }

[[rules]]
from = "web"
to = "api"
ports = ["9000/udp"]
action = "allow"

[[rules]]
from = "world"
to = "relay"
ports = ["9100/udp"]
action = "allow"
"#;

/// Waits (20 s at most) until no node's own conntrack has an entry for
/// RELAY_PORT any more (the flows through relay's published port expired).
fn wait_nat_forgotten(nodes: &[&Node]) {
    let pat = format!("port={RELAY_PORT} ");
    let t = Instant::now();
    loop {
        let tables: Vec<String> = nodes
            .iter()
            .map(|n| {
                String::from_utf8_lossy(&n.sh("cat /proc/net/nf_conntrack").stdout).to_string()
            })
            .collect();
        if tables.iter().all(|t| !t.contains(&pat)) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the nodes' conntrack still has flows of port {RELAY_PORT}: {tables:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two colluding tasks: relay (node 0) publishes RELAY_PORT/udp in `host`
/// mode (the world may send to it), evil (node 1) sends it a datagram from
/// its own port 4789 (its node masquerades it keeping the port: relay's
/// `docker_gwbridge` veth sees the world's node1:4789 -> relay, allowed, a
/// flow netiso keeps 120 s). Once both nodes' conntrack forgot that flow
/// (UDP timeouts of NAT_UDP_TIMEOUT s here), relay sends from RELAY_PORT a
/// VXLAN datagram to node 1's 4789 whose inner packet claims web's address
/// (web on node 0: node 1's overlay pins web's MAC to node 0's address,
/// where the datagram comes from once node 0 masquerades it) to api (node
/// 1; ingress deny, only web may send it 9000/udp). For netiso a reply;
/// for node 0 a new flow; node 1 has no NAT entry for it and its VXLAN
/// socket decapsulates it onto the overlay. api must receive none of it.
/// Controls: without netiso the frame sent straight to node 1 reaches api;
/// with netiso sent straight (no flow before) it does not; the same dance
/// with port 4790 reaches a listener of node 1's own namespace (the NAT
/// entries expire, the port is kept).
#[test]
fn forged_vxlan_frames_as_a_reply_do_not_reach_a_task() {
    let _one = netiso_testkit::swarm::one_at_a_time();
    let swarm = Swarm::new(2);
    swarm.overlay("ovy", "10.231.65.0/24");
    let (a, b) = (&swarm.nodes[0], &swarm.nodes[1]);
    swarm.service(&format!(
        "--name relay --network ovy \
         --publish mode=host,target={RELAY_PORT},published={RELAY_PORT},protocol=udp \
         --constraint node.hostname=={} {} sh -c 'exec sleep 3600'",
        a.name,
        netiso_testkit::docker::image()
    ));
    swarm.service_on("web", 0, "ovy", "exec sleep 3600");
    swarm.service_on("api", 1, "ovy", "exec sleep 3600");
    swarm.service_on("evil", 1, "ovy", "exec sleep 3600");
    for s in ["relay", "web", "api", "evil"] {
        swarm.wait_tasks_running(s, 1, TASK_TIMEOUT);
    }
    let relay = swarm.task_container(0, "relay");
    let web = swarm.task_container(0, "web");
    let api = swarm.task_container(1, "api");
    let evil = swarm.task_container(1, "evil");
    let vni: u32 = a
        .docker_ok(
            "network inspect -f '{{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}' ovy",
        )
        .trim()
        .parse()
        .expect("the overlay's VNI");
    let api_ip = b.container_ip(&api, "ovy");
    let api_mac = b.container_mac(&api, "ovy");
    let web_ip = a.container_ip(&web, "ovy");
    let web_mac = a.container_mac(&web, "ovy");
    let forged = vxlan(vni, web_mac, api_mac, web_ip, api_ip);
    let (relay_pid, web_pid) = (a.container_pid(&relay), a.container_pid(&web));
    let (api_pid, evil_pid) = (b.container_pid(&api), b.container_pid(&evil));
    let relay_ns = std::path::PathBuf::from(format!("/proc/{relay_pid}/ns/net"));
    let to_relay = SocketAddr::from((a.addr, RELAY_PORT));
    let to_b = SocketAddr::from((b.addr, 4789));
    let count = |send: &dyn Fn()| {
        let r = udp_receiver(api_pid, any(PORT), Duration::from_secs(2));
        send();
        r.join()
    };
    let direct = || send_from(relay_pid, to_b, forged.clone(), 20);
    let legit = || send_from(web_pid, SocketAddr::from((api_ip, PORT)), b"w".to_vec(), 20);

    // (a) Without netiso, the frame straight to node 1 reaches api.
    let t = Instant::now();
    let n = loop {
        let n = count(&direct);
        if n > 0 {
            break n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "control: no forged frame arrives without netiso"
        );
    };
    eprintln!("control (a): without netiso api received {n} of 20 forged frames");

    let (_dir, mut da, mut db) = daemons(&swarm, POLICY_REPLY);
    let (n_relay, n_web) = (name(a, &relay), name(a, &web));
    let (n_api, n_evil) = (name(b, &api), name(b, &evil));
    da.wait_for(
        "node 0 enforcing relay and web, knowing api and the port",
        |s| {
            enforced_both(s, &n_relay)
                && enforced_both(s, &n_web)
                && knows(s, "api")
                && s.swarm_data_path_ports.contains(&4789)
        },
    );
    db.wait_for(
        "node 1 enforcing api and evil, knowing web and the port",
        |s| {
            enforced_both(s, &n_api)
                && enforced_both(s, &n_evil)
                && knows(s, "web")
                && s.swarm_data_path_ports.contains(&4789)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let n = count(&legit);
    assert!(n > 0, "control: web does not reach api\n{}", db.log());
    eprintln!("control: with netiso api received {n} of web's 20 datagrams");
    // (b) With netiso, straight (no flow before): the built-in deny.
    let n = count(&direct);
    assert_eq!(
        n, 0,
        "control: relay's forged frame straight to node 1 reaches api"
    );
    eprintln!("control (b): with netiso api received {n} of 20 forged frames sent straight");

    // The nodes' own conntrack forgets a UDP flow after NAT_UDP_TIMEOUT s
    // (per namespace: the host's stays as it is).
    for n in [a, b] {
        n.sh(&format!(
            "sysctl -qw net.netfilter.nf_conntrack_udp_timeout={NAT_UDP_TIMEOUT} \
             net.netfilter.nf_conntrack_udp_timeout_stream={NAT_UDP_TIMEOUT}"
        ));
        let got = n.sh("sysctl -n net.netfilter.nf_conntrack_udp_timeout");
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            NAT_UDP_TIMEOUT.to_string(),
            "the UDP conntrack timeout in {}",
            n.name
        );
    }
    // evil, from its own `port`, to relay's published port: the sources
    // relay saw; then until the nodes' NAT forgot it.
    let knock = |port: u16| {
        let r = sources_in(relay_ns.clone(), any(RELAY_PORT), Duration::from_secs(2));
        send_from_port(evil_pid, any(port), to_relay, b"knock".to_vec(), 3);
        let seen = r.join().expect("relay's receiver");
        wait_nat_forgotten(&[a, b]);
        seen
    };

    // (c) The dance with a port that is not the data path's: relay's
    // answer reaches node 1 itself (no NAT entry left to take it to evil).
    let seen = knock(4790);
    assert!(
        seen.contains(&SocketAddr::from((b.addr, 4790))),
        "control: relay saw evil's datagrams from port 4790 as {seen:?}, not from {}:4790",
        b.addr
    );
    let r = sources_in(b.netns_path(), any(4790), Duration::from_secs(2));
    send_from_port(
        relay_pid,
        any(RELAY_PORT),
        SocketAddr::from((b.addr, 4790)),
        b"answer".to_vec(),
        20,
    );
    let got = r.join().expect("node 1's receiver");
    assert!(
        !got.is_empty(),
        "control: relay's answer from {RELAY_PORT} to node 1's 4790 did not reach node 1"
    );
    eprintln!(
        "control (c): relay saw {seen:?}; node 1 received {} answers from {:?}",
        got.len(),
        got.first()
    );

    // The attack. Its first step is already refused: no flow enters a
    // container from a data path port of anything not a container (relay
    // would have seen evil's datagrams from node 1's 4789, as in (c)), so
    // no connection stands for the "answer", which is then a new flow to
    // the data path port, denied.
    let seen = knock(4789);
    assert!(
        seen.is_empty(),
        "relay received evil's datagrams from node 1's data path port: {seen:?}"
    );
    let n = count(&|| send_from_port(relay_pid, any(RELAY_PORT), to_b, forged.clone(), 20));
    assert_eq!(
        n,
        0,
        "api (node 1) received {n} datagrams claiming web's address that relay (node 0) forged \
         as VXLAN to node 1's {to_b}, from its published port {RELAY_PORT}, answering evil's \
         datagrams from {seen:?}\nnode 0 stats: {}",
        String::from_utf8_lossy(&da.cli(&["stats"]).stdout)
    );
}
