//! The test kit's DNS server and client (`netiso_testkit::dns`) between two
//! namespaces of this test joined by a veth pair: A, AAAA, a CNAME chain,
//! NXDOMAIN, over UDP and TCP, over IPv4 and IPv6; records changed at
//! runtime; the query log; a large answer truncated over UDP and whole
//! over TCP; the answers' bytes read with `host::dns::parse_answer`, the
//! parser egress by name uses. Needs root (namespaces), not Docker.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netiso_daemon::host::dns::{parse_answer, Learned};
use netiso_testkit::dns::{
    answer_bytes, exchange, query_bytes, resolve, DnsServer, Rcode, Rr, AAAA_TYPE, A_TYPE,
};
use netiso_testkit::{sh, unique, NetNs};

const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 53, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 53, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x53, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x53, 0, 0, 0, 0, 0, 2);

/// A server namespace and a client namespace, one veth between them.
fn pair() -> (NetNs, NetNs) {
    let (server, client) = (NetNs::new("ds"), NetNs::new("dc"));
    let (s_if, c_if) = (unique("nds"), unique("ndc"));
    sh(&format!(
        "ip link add {s_if} netns {} type veth peer name {c_if} netns {}",
        server.name, client.name
    ));
    for (ns, dev, v4, v6) in [
        (&server, &s_if, SERVER4, SERVER6),
        (&client, &c_if, CLIENT4, CLIENT6),
    ] {
        ns.sh(&format!(
            "ip addr add {v4}/24 dev {dev} && ip -6 addr add {v6}/64 dev {dev} nodad && ip link set {dev} up"
        ));
    }
    (server, client)
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

#[test]
fn the_test_dns_server_answers_over_udp_and_tcp() {
    let (server_ns, client_ns) = pair();
    let dns = DnsServer::start_in(&server_ns.path(), IpAddr::V4(SERVER4));
    let at = SocketAddr::new(IpAddr::V4(SERVER4), 53);
    let client = client_ns.path();
    let v6_addr: Ipv6Addr = "2001:db8::10".parse().unwrap();
    dns.set(
        "api.example.com",
        vec![
            Rr::A(Ipv4Addr::new(198, 18, 10, 1), 300),
            Rr::A(Ipv4Addr::new(198, 18, 10, 2), 300),
            Rr::Aaaa(v6_addr, 120),
        ],
    );
    dns.set(
        "WWW.Example.com.",
        vec![Rr::Cname("edge.cdn.example".into(), 60)],
    );
    dns.set(
        "edge.cdn.example",
        vec![Rr::Cname("host.cdn.example.".into(), 600)],
    );
    dns.set(
        "host.cdn.example",
        vec![Rr::A(Ipv4Addr::new(198, 18, 10, 3), 3600)],
    );

    for tcp in [false, true] {
        let (addrs, rtt) = resolve(&client, at, "api.example.com", A_TYPE, tcp).unwrap();
        assert_eq!(
            addrs,
            [v4([198, 18, 10, 1]), v4([198, 18, 10, 2])],
            "tcp {tcp}"
        );
        assert!(rtt.as_secs() < 2);
        let (addrs, _) = resolve(&client, at, "API.example.COM", AAAA_TYPE, tcp).unwrap();
        assert_eq!(addrs, [IpAddr::V6(v6_addr)], "tcp {tcp}");
        let (addrs, _) = resolve(&client, at, "www.example.com", A_TYPE, tcp).unwrap();
        assert_eq!(addrs, [v4([198, 18, 10, 3])], "tcp {tcp}");
        // The chain as the server sent it, read by netiso's parser.
        let (reply, _) = exchange(&client, at, &query_bytes(7, "www.example.com", 1), tcp).unwrap();
        let answer = parse_answer(&reply).unwrap();
        assert_eq!((answer.id, answer.rcode), (7, 0));
        assert_eq!(
            answer.addresses,
            [Learned {
                addr: v4([198, 18, 10, 3]),
                ttl: 60,
                chain: ["www.example.com", "edge.cdn.example", "host.cdn.example"]
                    .map(String::from)
                    .to_vec(),
            }]
        );
        // A name the zone has, of a type it has not: NOERROR, no data.
        let (addrs, _) = resolve(&client, at, "host.cdn.example", AAAA_TYPE, tcp).unwrap();
        assert!(addrs.is_empty(), "{addrs:?}");
        // Unknown names.
        let err = resolve(&client, at, "nope.example.com", A_TYPE, tcp).unwrap_err();
        assert_eq!(err.downcast_ref::<Rcode>(), Some(&Rcode(3)), "{err:#}");
        let (reply, _) =
            exchange(&client, at, &query_bytes(8, "nope.example.com", 1), tcp).unwrap();
        let answer = parse_answer(&reply).unwrap();
        assert_eq!((answer.id, answer.rcode, answer.addresses.len()), (8, 3, 0));
    }

    // Records change at runtime.
    dns.set(
        "api.example.com",
        vec![Rr::A(Ipv4Addr::new(198, 18, 10, 9), 5)],
    );
    let (addrs, _) = resolve(&client, at, "api.example.com", A_TYPE, false).unwrap();
    assert_eq!(addrs, [v4([198, 18, 10, 9])]);
    dns.remove("api.example.com");
    let err = resolve(&client, at, "api.example.com", A_TYPE, true).unwrap_err();
    assert_eq!(err.downcast_ref::<Rcode>(), Some(&Rcode(3)), "{err:#}");

    // The log: every query, its client and transport.
    let log = dns.queries();
    assert!(log
        .iter()
        .all(|(_, _, from, _)| from.ip() == IpAddr::V4(CLIENT4)));
    assert!(log.contains(&("api.example.com".into(), AAAA_TYPE, log[1].2, false)));
    let over_tcp = log.iter().filter(|q| q.3).count();
    assert_eq!(over_tcp, 8, "{log:?}");
    assert_eq!(log.len(), 16, "{log:?}");
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let (server_ns, client_ns) = pair();
    let dns = DnsServer::start_in(&server_ns.path(), IpAddr::V4(SERVER4));
    let at = SocketAddr::new(IpAddr::V4(SERVER4), 53);
    let many: Vec<Rr> = (0..60)
        .map(|i| Rr::A(Ipv4Addr::new(198, 18, 20, i), 30))
        .collect();
    dns.set("many.example", many);
    let (reply, _) = exchange(
        &client_ns.path(),
        at,
        &query_bytes(1, "many.example", A_TYPE),
        false,
    )
    .unwrap();
    assert!(reply.len() <= 512);
    assert_eq!(reply[2] & 0x02, 0x02, "TC set");
    assert!(
        parse_answer(&reply).is_none(),
        "a truncated answer teaches nothing"
    );
    assert!(resolve(&client_ns.path(), at, "many.example", A_TYPE, false).is_err());
    let (addrs, _) = resolve(&client_ns.path(), at, "many.example", A_TYPE, true).unwrap();
    assert_eq!(addrs.len(), 60);
}

#[test]
fn the_test_dns_server_serves_ipv6_and_stops_on_drop() {
    let (server_ns, client_ns) = pair();
    let at = SocketAddr::new(IpAddr::V6(SERVER6), 53);
    let dns = DnsServer::start_in(&server_ns.path(), at.ip());
    dns.set(
        "v6.example",
        vec![Rr::Aaaa("2001:db8::1".parse().unwrap(), 60)],
    );
    for tcp in [false, true] {
        let (addrs, _) = resolve(&client_ns.path(), at, "v6.example", AAAA_TYPE, tcp).unwrap();
        assert_eq!(addrs, ["2001:db8::1".parse::<IpAddr>().unwrap()]);
    }
    assert!(dns
        .queries()
        .iter()
        .all(|q| q.2.ip() == IpAddr::V6(CLIENT6)));
    // A name that is no hostname (one label "v6.example"): refused, logged.
    let mut odd = vec![0, 42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10];
    odd.extend(b"v6.example\0\0\x1c\0\x01");
    let (reply, _) = exchange(&client_ns.path(), at, &odd, false).unwrap();
    assert_eq!((reply[0], reply[1], reply[3] & 0x0f), (0, 42, 5), "REFUSED");
    let last = dns.queries().pop().unwrap();
    assert_eq!((last.0.as_str(), last.1), ("v6\\.example", AAAA_TYPE));
    drop(dns);
    for tcp in [false, true] {
        assert!(resolve(&client_ns.path(), at, "v6.example", AAAA_TYPE, tcp).is_err());
    }
}

#[test]
fn forged_answers_read_as_built() {
    // No namespace: the bytes the hostile tests will send.
    let msg = answer_bytes(
        9,
        "api.example.com",
        A_TYPE,
        &[
            Rr::Cname("edge.example".into(), 10),
            Rr::A(Ipv4Addr::new(198, 18, 0, 1), 20),
        ],
    );
    let answer = parse_answer(&msg).unwrap();
    assert_eq!((answer.id, answer.name.as_str()), (9, "api.example.com"));
    assert_eq!(answer.addresses.len(), 1);
    assert_eq!(answer.addresses[0].ttl, 10);
    assert_eq!(
        answer.addresses[0].chain,
        ["api.example.com", "edge.example"]
    );
    let q = netiso_daemon::host::dns::parse_query(&query_bytes(4, "Api.Example.com.", 28)).unwrap();
    assert_eq!((q.id, q.name.as_str(), q.qtype), (4, "api.example.com", 28));
}
