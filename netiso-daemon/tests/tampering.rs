//! Tampering, end to end (real engine, real daemon): containers started
//! with `--cap-add=NET_ADMIN` (and Docker's default CAP_NET_RAW) try to
//! remove or get around enforcement from inside their own namespace.
//!
//! - The programs sit on the host side of the veth: nothing a container
//!   does to its own interfaces (down/up, new addresses, a new MAC, new
//!   interfaces) touches them; checked from the host with TCX queries.
//! - Sending from another container's address (one the policy allows) is
//!   dropped as `spoofed-ip`; from a changed MAC or a macvlan as
//!   `spoofed-mac`; nothing reaches the receiver, and the drops are counted.
//! - New interfaces inside (a veth pair, a macvlan) gain nothing: the
//!   daemon's view and the verdicts stay as they were.
//! - Non-IP frames between two colluding containers (a covert channel
//!   around IP policy) are dropped as `non-ip` (the default).
//! - ARP cannot be spoofed: while the attacker holds the friend's address,
//!   the victim never learns it at the attacker's MAC.
//!
//! Privileged containers are out of scope (SECURITY.md): they can reach
//! the host's namespace and detach anything.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::hostile::{
    exec, grown, mac_of, mac_text, own_tcx_programs, raw_receiver, raw_send, reason_counts,
    udp_receiver, udp_send, Extra,
};
use netiso_testkit::ops::{empty_config, eventually, tcp_from, write_policy};
use netiso_testkit::DaemonProc;

const POLICY: &str = r#"
[groups.victim]
labels = { "netiso.test" = "@TAG@", role = "victim" }
ingress = "deny"

[groups.friend]
labels = { "netiso.test" = "@TAG@", role = "friend" }

[groups.attacker]
labels = { "netiso.test" = "@TAG@", role = "attacker" }

[[rules]]
from = "friend"
to = "victim"
ports = ["8080/tcp", "9999/udp"]
action = "allow"
"#;

const WINDOW: Duration = Duration::from_millis(1200);

fn any_port(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, 0))
}

/// A /24 neighbour of `ip` that Docker has not handed out (the network
/// holds a handful of containers).
fn spare(ip: Ipv4Addr, last: u8) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

#[test]
fn net_admin_container_cannot_remove_or_bypass_enforcement() {
    let mut env = DockerEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &env.tag, POLICY);
    let config = empty_config();
    // Resyncs every 2 s: the daemon looks the containers' veths up again
    // while they tamper with their links (step 7).
    let mut daemon = DaemonProc::start_with(
        policy,
        &[
            "--config",
            config.to_str().unwrap(),
            "--resync-interval",
            "2",
        ],
    );
    let tag = env.tag.clone();
    let labels = |role: &'static str| [("netiso.test", tag.as_str()), ("role", role)];

    let victim = env.run("victim", &labels("victim"), &tcp_servers(&[8080]));
    let friend = env.run("friend", &labels("friend"), "exec sleep 3600");
    let mut extra = Extra::new(&env);
    let net_admin = ["--cap-add=NET_ADMIN"];
    let attacker = extra.run(
        "attacker",
        &labels("attacker"),
        &net_admin,
        "exec sleep 3600",
    );
    // A second container of the victim's group that colludes with the
    // attacker: IP between them is denied (the victim group's ingress).
    let insider = extra.run("insider", &labels("victim"), &net_admin, "exec sleep 3600");
    let all = [&victim, &friend, &attacker, &insider];
    daemon.wait_for("the four containers enforced", |s| {
        all.iter()
            .all(|c| s.endpoints.iter().any(|e| &e.container == *c && e.enforced))
    });
    let state = daemon.state();
    let endpoint = |c: &str| {
        let eps: Vec<_> = state
            .endpoints
            .iter()
            .filter(|e| e.container == c)
            .collect();
        assert_eq!(eps.len(), 1, "{c}: {eps:?}");
        eps[0].clone()
    };
    let att_ep = endpoint(&attacker);
    let att_if = att_ep.ifname.clone().expect("attacker's host veth");
    let (victim_ip, friend_ip, att_ip, insider_ip) = (
        env.ip(&victim),
        env.ip(&friend),
        env.ip(&attacker),
        env.ip(&insider),
    );
    let (victim_pid, friend_pid, att_pid, insider_pid) = (
        env.pid(&victim),
        env.pid(&friend),
        env.pid(&attacker),
        env.pid(&insider),
    );
    let victim_mac = mac_of(&victim, &env.network);
    let friend_mac = mac_of(&friend, &env.network);
    let att_mac = mac_of(&attacker, &env.network);
    let insider_mac = mac_of(&insider, &env.network);

    // This daemon's programs on the attacker's host-side veth, seen from
    // the host (daemons of parallel tests guard every container too).
    let att_index = att_ep.ifindex.expect("attacker's host veth index");
    let pins = daemon.pins.path.clone();
    let host_side = || own_tcx_programs(&pins, &att_if, att_index);
    let before = host_side();
    assert!(
        before.0.iter().any(|(_, n)| n.starts_with("netiso_from")),
        "no netiso program on {att_if} ingress: {before:?}"
    );
    assert!(
        before.1.iter().any(|(_, n)| n.starts_with("netiso_to")),
        "no netiso program on {att_if} egress: {before:?}"
    );

    // Baseline: friend reaches the victim, the attacker does not.
    let victim_tcp = SocketAddr::from((victim_ip, 8080));
    assert!(
        eventually(friend_pid, victim_tcp, true, 20),
        "friend -> victim:8080 must pass; daemon log:\n{}",
        daemon.log()
    );
    assert!(
        !tcp_from(att_pid, victim_tcp),
        "attacker -> victim:8080 is denied"
    );
    let victim_udp = SocketAddr::from((victim_ip, 9999));
    let rx = udp_receiver(victim_pid, SocketAddr::from(([0, 0, 0, 0], 9999)), WINDOW);
    udp_send(friend_pid, any_port(friend_ip), victim_udp, 5);
    assert_eq!(rx.join(), 5, "friend's datagrams reach the victim");
    // Static neighbours: the counts below are then exactly the datagrams
    // sent (no ARP from a spoofed address or a changed MAC mixed in: such
    // ARP is itself dropped as `control`).
    let static_neighbours = format!(
        "arp -s {victim_ip} {} && arp -s {friend_ip} {} && arp -s {insider_ip} {}",
        mac_text(victim_mac),
        mac_text(friend_mac),
        mac_text(insider_mac)
    );
    exec(&attacker, &static_neighbours);

    // 1. Its own interface down and up: the host side does not care.
    exec(&attacker, "ip link set eth0 down && ip link set eth0 up");
    assert_eq!(host_side(), before, "host-side programs changed");
    // The link going down flushed the neighbours.
    exec(&attacker, &static_neighbours);

    // 2. Spoofed source addresses: the friend's (which the victim admits)
    //    and one nobody has.
    let fake = spare(att_ip, 250);
    exec(
        &attacker,
        &format!("ip addr add {friend_ip}/32 dev eth0 && ip addr add {fake}/32 dev eth0"),
    );
    let counts = reason_counts(&daemon);
    let rx = udp_receiver(victim_pid, SocketAddr::from(([0, 0, 0, 0], 9999)), WINDOW);
    udp_send(att_pid, any_port(friend_ip), victim_udp, 7);
    udp_send(att_pid, any_port(fake), victim_udp, 3);
    assert_eq!(rx.join(), 0, "spoofed datagrams reached the victim");
    let g = grown(&counts, &reason_counts(&daemon));
    assert_eq!(g.get("spoofed-ip"), Some(&10), "drops by reason: {g:?}");
    exec(
        &attacker,
        &format!("ip addr del {friend_ip}/32 dev eth0 && ip addr del {fake}/32 dev eth0"),
    );

    // 3. A changed MAC: even traffic the policy allows (attacker -> friend)
    //    is dropped while the MAC is not the endpoint's own.
    let friend_udp = SocketAddr::from((friend_ip, 9998));
    let rx = udp_receiver(friend_pid, SocketAddr::from(([0, 0, 0, 0], 9998)), WINDOW);
    udp_send(att_pid, any_port(att_ip), friend_udp, 4);
    assert_eq!(rx.join(), 4, "attacker -> friend is allowed by the policy");
    let counts = reason_counts(&daemon);
    // Changing the address flushes the neighbour table: set it again.
    exec(
        &attacker,
        &format!(
            "ip link set eth0 address 02:42:de:ad:be:ef && arp -s {friend_ip} {}",
            mac_text(friend_mac)
        ),
    );
    let rx = udp_receiver(friend_pid, SocketAddr::from(([0, 0, 0, 0], 9998)), WINDOW);
    udp_send(att_pid, any_port(att_ip), friend_udp, 5);
    assert_eq!(rx.join(), 0, "frames from a changed MAC reached the friend");
    let g = grown(&counts, &reason_counts(&daemon));
    assert_eq!(g.get("spoofed-mac"), Some(&5), "drops by reason: {g:?}");
    // Its own MAC back, and the neighbours its change flushed.
    let own_mac_back = format!(
        "ip link set eth0 address {} && arp -s {friend_ip} {} && arp -s {victim_ip} {} && arp -s {insider_ip} {}",
        mac_text(att_mac),
        mac_text(friend_mac),
        mac_text(victim_mac),
        mac_text(insider_mac)
    );
    exec(&attacker, &own_mac_back);
    let rx = udp_receiver(friend_pid, SocketAddr::from(([0, 0, 0, 0], 9998)), WINDOW);
    udp_send(att_pid, any_port(att_ip), friend_udp, 4);
    assert_eq!(rx.join(), 4, "with its own MAC back, allowed traffic flows");

    // 4. A macvlan on eth0 (its own random MAC and a spare address), routed
    //    to the friend: dropped as spoofed-mac. (IPv6 on the new interface
    //    may add router solicitations of its own: at least our datagrams.)
    let mv_ip = spare(att_ip, 251);
    exec(
        &attacker,
        &format!(
            "ip link add mv0 link eth0 type macvlan mode bridge && ip addr add {mv_ip}/32 dev mv0 \
             && ip link set mv0 up && ip route add {friend_ip}/32 dev mv0 \
             && arp -i mv0 -s {friend_ip} {}",
            mac_text(friend_mac)
        ),
    );
    let counts = reason_counts(&daemon);
    let rx = udp_receiver(friend_pid, SocketAddr::from(([0, 0, 0, 0], 9998)), WINDOW);
    udp_send(att_pid, any_port(mv_ip), friend_udp, 6);
    assert_eq!(rx.join(), 0, "datagrams from a macvlan reached the friend");
    let g = grown(&counts, &reason_counts(&daemon));
    assert!(
        g.get("spoofed-mac").copied().unwrap_or(0) >= 6,
        "drops by reason: {g:?}"
    );
    assert_eq!(g.get("spoofed-ip"), None, "the MAC is checked first: {g:?}");
    exec(&attacker, "ip link del mv0");

    // 5. A veth pair inside the container: local to its namespace. Nothing
    //    changes on the host side or in the daemon's view.
    exec(
        &attacker,
        // (busybox names the peer veth0 itself)
        "ip link add v0 type veth && ip link set v0 up && ip link set veth0 up",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host_side(), before, "host-side programs changed");
    let now = daemon.state();
    let eps: Vec<_> = now
        .endpoints
        .iter()
        .filter(|e| e.container == attacker)
        .collect();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        (eps[0].ifindex, eps[0].enforced),
        (att_ep.ifindex, true),
        "{eps:?}"
    );

    // 6. Non-IP frames to a colluding container (custom ethertype, own
    //    MAC): dropped as non-ip; IP between the two is denied by policy.
    const ETHERTYPE: u16 = 0x88b5;
    let mut frame = Vec::new();
    frame.extend_from_slice(&insider_mac);
    frame.extend_from_slice(&att_mac);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&[0x5a; 46]);
    let counts = reason_counts(&daemon);
    let rx = raw_receiver(insider_pid, "eth0", ETHERTYPE, WINDOW);
    raw_send(att_pid, "eth0", frame, 6);
    assert_eq!(
        rx.join(),
        0,
        "non-IP frames reached the colluding container"
    );
    let g = grown(&counts, &reason_counts(&daemon));
    assert_eq!(g.get("non-ip"), Some(&6), "drops by reason: {g:?}");
    let rx = udp_receiver(insider_pid, SocketAddr::from(([0, 0, 0, 0], 9997)), WINDOW);
    udp_send(
        att_pid,
        any_port(att_ip),
        SocketAddr::from((insider_ip, 9997)),
        3,
    );
    assert_eq!(rx.join(), 0, "attacker -> insider is denied by policy");

    // 7. A changed MAC, and the veth pair of step 5 holding the old one
    //    (the MAC is how the daemon tells which interface is which
    //    attachment's), across resyncs: the veth keeps its programs and its
    //    endpoint, and frames from the changed MAC are still dropped.
    exec(
        &attacker,
        &format!(
            "ip link set v0 address {} && \
             ip link set eth0 address 02:42:de:ad:be:ee && arp -s {friend_ip} {}",
            mac_text(att_mac),
            mac_text(friend_mac)
        ),
    );
    let t0 = daemon.state().last_resync;
    daemon.wait_for("two resyncs after the change", |s| s.last_resync > t0 + 2);
    assert_eq!(
        host_side(),
        before,
        "host-side programs changed after resyncs"
    );
    let now = daemon.state();
    let eps: Vec<_> = now
        .endpoints
        .iter()
        .filter(|e| e.container == attacker)
        .collect();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        (eps[0].ifindex, eps[0].enforced),
        (att_ep.ifindex, true),
        "{eps:?}"
    );
    let counts = reason_counts(&daemon);
    let rx = udp_receiver(friend_pid, SocketAddr::from(([0, 0, 0, 0], 9998)), WINDOW);
    udp_send(att_pid, any_port(att_ip), friend_udp, 5);
    assert_eq!(rx.join(), 0, "frames from a changed MAC reached the friend");
    let g = grown(&counts, &reason_counts(&daemon));
    assert_eq!(g.get("spoofed-mac"), Some(&5), "drops by reason: {g:?}");
    exec(&attacker, &format!("ip link del v0 && {own_mac_back}"));

    // While it held the friend's address, the attacker could not answer
    // ARP for it (ARP leaving a container must speak for its own address):
    // the victim never learned the friend's address at another MAC.
    let neigh = netiso_testkit::sh(&format!("nsenter -t {victim_pid} -n ip neigh show"));
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    let friend_mac_text = mac_text(friend_mac);
    for line in neigh.lines() {
        if line.starts_with(&format!("{friend_ip} ")) && line.contains("lladdr") {
            assert!(
                line.contains(&friend_mac_text),
                "the victim resolves the friend's address to another MAC: {line}"
            );
        }
    }

    // After all of it: the same programs, the same verdicts.
    assert_eq!(host_side(), before, "host-side programs changed");
    assert!(
        tcp_from(friend_pid, victim_tcp),
        "friend -> victim:8080 still passes"
    );
    assert!(
        !tcp_from(att_pid, victim_tcp),
        "attacker -> victim:8080 still denied"
    );
}
