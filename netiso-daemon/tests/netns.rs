//! Real TCP, UDP and ICMP between namespaces joined by a bridge, with the
//! programs attached to the host-side veths exactly as the daemon does,
//! and the policy compiled from `policies/default.toml`.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::topology::{pings, tcp_echo_server, tcp_talks, udp_echo_server, udp_echoes, Topology};
use common::PinDir;
use netiso_common::{maps, DropReason};
use netiso_daemon::datapath::Datapath;
use netiso_daemon::{counters, daemon, policy};

const DEFAULT_POLICY: &str = include_str!("../../policies/default.toml");

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn default_policy_is_enforced_between_namespaces() {
    let topo = Topology::new(&[
        ("front", "frontend"),
        ("back", "backend"),
        ("guest", "untrusted"),
        ("other", ""),
    ]);
    let pins = PinDir::new();
    let policy = policy::parse_str(DEFAULT_POLICY, "policies/default.toml").expect("policy");
    let containers = topo.containers();
    let compiled = policy::compile(&policy, &containers, &mut Default::default()).expect("compile");
    let (desired, _) = daemon::build_desired(&compiled, &containers, &policy);
    assert_eq!(
        desired.endpoints.len(),
        3,
        "the unlabelled container is not managed"
    );
    let dp = topo.host.run(|| {
        let mut dp = Datapath::load(&pins.path).expect("load");
        dp.apply(&desired).expect("apply");
        dp
    });

    let (front, back, guest, other) = (
        topo.guest("front"),
        topo.guest("back"),
        topo.guest("guest"),
        topo.guest("other"),
    );
    let life = Duration::from_secs(60);
    let _s1 = tcp_echo_server(&back.ns, 8080, life);
    let _s2 = tcp_echo_server(&back.ns, 9090, life);
    let _s3 = udp_echo_server(&back.ns, 7777, life);
    let _s4 = tcp_echo_server(&front.ns, 8080, life);
    let _s5 = tcp_echo_server(&guest.ns, 8080, life);

    // The one rule: frontend -> backend on 8080/tcp.
    assert!(
        tcp_talks(&front.ns, addr(back.ip, 8080)),
        "frontend -> backend:8080 must pass"
    );
    // Backend denies every other way in.
    assert!(
        !tcp_talks(&front.ns, addr(back.ip, 9090)),
        "backend:9090 is not allowed"
    );
    assert!(
        !tcp_talks(&other.ns, addr(back.ip, 8080)),
        "unmanaged -> backend is not allowed"
    );
    assert!(
        !pings(&front.ns, back.ip),
        "ICMP to the backend is not allowed"
    );
    // Untrusted may not start connections, but may be reached.
    assert!(
        !tcp_talks(&guest.ns, addr(back.ip, 8080)),
        "untrusted may not start connections"
    );
    assert!(
        !tcp_talks(&guest.ns, addr(front.ip, 8080)),
        "untrusted may not start connections"
    );
    assert!(
        tcp_talks(&front.ns, addr(guest.ip, 8080)),
        "untrusted is reachable"
    );
    // Allow defaults elsewhere; replies of allowed flows pass conntrack.
    assert!(
        tcp_talks(&back.ns, addr(front.ip, 8080)),
        "backend may call the frontend"
    );
    assert!(pings(&back.ns, front.ip), "backend may ping the frontend");
    assert!(
        tcp_talks(&other.ns, addr(front.ip, 8080)),
        "unmanaged -> frontend"
    );

    // Counters equal the drops caused: 5 UDP datagrams, each dropped once
    // at the untrusted container's veth, with its own reason.
    assert_eq!(udp_echoes(&guest.ns, addr(back.ip, 7777), 5), 0);
    let flows = counters::flows(dp.ebpf().map(maps::FLOWS).unwrap()).unwrap();
    let udp: Vec<_> = flows
        .iter()
        .filter(|(k, _)| k.proto == 17 && k.dport == 7777)
        .collect();
    assert_eq!(udp.len(), 1, "one row for the flow: {udp:?}");
    let (k, v) = udp[0];
    assert_eq!(v.packets, 5);
    assert_eq!(k.reason, DropReason::DefaultDeny as u8);
    assert_eq!(k.ifindex, guest.host_ifindex);
    assert_eq!(&k.saddr[..4], &guest.ip.octets());
    assert_eq!(&k.daddr[..4], &back.ip.octets());
    // The denied TCP attempts are there too (SYN retransmits make their
    // packet counts inexact, so only their presence is checked).
    assert!(flows.iter().any(|(k, _)| k.proto == 6 && k.dport == 9090));

    // Enforcement outlives the process that set it up: drop our handle,
    // the pinned links and maps go on.
    drop(dp);
    assert!(
        !tcp_talks(&front.ns, addr(back.ip, 9090)),
        "still enforced without the daemon"
    );
    assert!(
        tcp_talks(&front.ns, addr(back.ip, 8080)),
        "still allowed without the daemon"
    );
}
