//! Egress by name. `the_learner_*`: the daemon's name learner on copied
//! frames (no root): only an answer to a query the container sent, for
//! the name it asked, teaches its addresses, for every veth of the
//! container, with the TTL at least the minimum plus grace; forged,
//! replayed and unnamed answers teach nothing; entries expire. The
//! end-to-end test (real containers, a DNS server and a routed "world" in
//! test namespaces) is `names_allow_what_was_resolved`.
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use netiso_common::{identity, Direction};
use netiso_daemon::daemon::fqdn::{FqdnOptions, Learner};
use netiso_daemon::observe::state::{EndpointState, FqdnState, State};
use netiso_testkit::dns::{answer_bytes, query_bytes, Rr};
use netiso_testkit::frames::{eth, ipv4, udp, MAC_A, MAC_B};

const APP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const F: u32 = identity::FIRST_ADDRESS_PEER + 1;
const S: u64 = 1_000_000_000;

fn state() -> State {
    let ep = |container: &str, ifindex, names| EndpointState {
        container: container.into(),
        ifindex: Some(ifindex),
        resolves_names: names,
        ..EndpointState::default()
    };
    State {
        endpoints: vec![
            ep("app", 10, true),
            ep("app", 11, true),
            ep("other", 12, false),
        ],
        fqdns: vec![FqdnState {
            identity: F,
            name: "fqdn:*.allowed.test".into(),
            patterns: vec!["*.allowed.test".into()],
        }],
        ..State::default()
    }
}

fn query(id: u16, name: &str, sport: u16) -> Vec<u8> {
    eth(
        MAC_A,
        MAC_B,
        0x0800,
        &ipv4(
            APP,
            RESOLVER,
            17,
            1,
            0,
            &udp(sport, 53, &query_bytes(id, name, 1)),
        ),
    )
}

fn answer(from: Ipv4Addr, id: u16, name: &str, dport: u16, records: &[Rr]) -> Vec<u8> {
    eth(
        MAC_B,
        MAC_A,
        0x0800,
        &ipv4(
            from,
            APP,
            17,
            1,
            0,
            &udp(53, dport, &answer_bytes(id, name, 1, records)),
        ),
    )
}

const OUT: u8 = Direction::Egress as u8;
const IN: u8 = Direction::Ingress as u8;

#[test]
fn the_learner_learns_only_what_the_container_asked() {
    let st = state();
    let opts = FqdnOptions {
        min_ttl: Duration::from_secs(5),
        grace: Duration::from_secs(2),
        per_container: 3,
    };
    let mut l = Learner::new(opts);
    let now = 100 * S;
    let w1 = Ipv4Addr::new(198, 19, 1, 1);
    // An answer nobody asked for (forged) teaches nothing.
    let forged = answer(RESOLVER, 7, "a.allowed.test", 5000, &[Rr::A(w1, 60)]);
    assert!(l.on_copy(&st, IN, 10, &forged, now).writes.is_empty());
    // Asked, answered with the wrong id (replayed): nothing.
    assert!(l
        .on_copy(&st, OUT, 10, &query(8, "a.allowed.test", 5000), now)
        .writes
        .is_empty());
    let wrong_id = answer(RESOLVER, 9, "a.allowed.test", 5000, &[Rr::A(w1, 60)]);
    assert!(l.on_copy(&st, IN, 10, &wrong_id, now).writes.is_empty());
    // From another address than the resolver asked: nothing.
    let elsewhere = answer(OTHER, 8, "a.allowed.test", 5000, &[Rr::A(w1, 60)]);
    assert!(l.on_copy(&st, IN, 10, &elsewhere, now).writes.is_empty());
    // The real answer: on both veths of the container, TTL 1 s lifted to
    // the minimum, plus grace.
    let real = answer(RESOLVER, 8, "a.allowed.test", 5000, &[Rr::A(w1, 1)]);
    let out = l.on_copy(&st, IN, 10, &real, now);
    assert_eq!(out.writes.len(), 2, "{out:?}");
    let ifs: Vec<u32> = out.writes.iter().map(|(k, _)| k.ifindex).collect();
    assert_eq!(ifs, vec![10, 11]);
    for (k, v) in &out.writes {
        assert_eq!(&k.addr[..4], &w1.octets());
        assert_eq!(v.identities, [F, 0, 0, 0]);
        assert_eq!(v.expires_ns, now + 7 * S);
    }
    // Used up: the same answer again teaches nothing.
    assert!(l.on_copy(&st, IN, 10, &real, now).writes.is_empty());
    // A name no rule names: nothing; a CNAME chain: the final address.
    assert!(l
        .on_copy(&st, OUT, 10, &query(9, "b.other.test", 5001), now)
        .writes
        .is_empty());
    let unnamed = answer(RESOLVER, 9, "b.other.test", 5001, &[Rr::A(w1, 60)]);
    assert!(l.on_copy(&st, IN, 10, &unnamed, now).writes.is_empty());
    let w2 = Ipv4Addr::new(198, 19, 1, 2);
    l.on_copy(&st, OUT, 10, &query(10, "c.allowed.test", 5002), now);
    let chain = answer(
        RESOLVER,
        10,
        "c.allowed.test",
        5002,
        &[Rr::Cname("edge.cdn.test".into(), 300), Rr::A(w2, 300)],
    );
    let out = l.on_copy(&st, IN, 10, &chain, now);
    assert_eq!(out.writes.len(), 2);
    assert_eq!(out.writes[0].1.expires_ns, now + 302 * S);
    // The per-container limit (3 addresses here) refuses more.
    l.on_copy(&st, OUT, 10, &query(11, "d.allowed.test", 5003), now);
    let many: Vec<Rr> = (3..7)
        .map(|i| Rr::A(Ipv4Addr::new(198, 19, 1, i), 60))
        .collect();
    let out = l.on_copy(
        &st,
        IN,
        10,
        &answer(RESOLVER, 11, "d.allowed.test", 5003, &many),
        now,
    );
    assert_eq!(
        out.writes.len(),
        2,
        "one more address fits, on two veths: {out:?}"
    );
    // Expiry: w1 goes after 7 s, w2 after 302 s.
    let gone = l.expire(now + 8 * S);
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|k| k.addr[..4] == w1.octets()));
    let names = l.names();
    let app = &names.containers["app"];
    assert!(app
        .iter()
        .any(|n| n.name == "c.allowed.test" && n.addresses == vec![IpAddr::V4(w2)]));
    assert!(!app.iter().any(|n| n.name == "a.allowed.test"));
}
