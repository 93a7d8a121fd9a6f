//! The TC programs through BPF_PROG_TEST_RUN: crafted frames in, verdicts
//! and counters out. Each test gets its own network namespace (the
//! programs are attached to its loopback, whose ifindex 1 is what
//! PROG_TEST_RUN reports) and its own pin directory.
mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::frames::{
    self, eth, ext8, icmp_echo, icmpv6, ipv4, ipv6, tcp, tcp4, udp, udp4, ACK, MAC_A, SYN,
};
use common::{NetNs, PinDir};
use netiso_common::{
    defaults, endpoint_flags, maps, programs, proto, tc, Action, CtKey, DropReason, FlowKey,
    IdentityInfo, IpKey, PolicyKey, PolicyValue,
};
use netiso_daemon::counters;
use netiso_daemon::datapath::{Datapath, Desired, EndpointSpec};

const A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const WORLD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 9);
const ID_A: u32 = 256;
const ID_B: u32 = 257;
const ID_C: u32 = 258;
const OUT: &str = programs::FROM_CONTAINER;
const IN: &str = programs::TO_CONTAINER;

/// Endpoint A is the local container (on the namespace's loopback); B and C
/// are peers. A may open 80/tcp and 53/udp and ping B; 81/tcp to B is
/// explicitly denied; A denies by default in both directions; C has no
/// rules and allow defaults.
fn desired(a_flags: u32) -> Desired {
    let mut d = Desired::default();
    d.endpoints.insert(
        1,
        EndpointSpec {
            ifname: "lo".into(),
            identity: ID_A,
            flags: a_flags,
            ipv4: Some(A),
            ipv6: Some(A6),
            mac: Some(MAC_A),
        },
    );
    for (ip, id) in [(A, ID_A), (B, ID_B), (C, ID_C)] {
        let flags = if id == ID_A {
            a_flags & (defaults::DENY_EGRESS | defaults::DENY_INGRESS)
        } else {
            0
        };
        d.identities.insert(
            IpKey::v4(ip.octets(), 0),
            IdentityInfo {
                identity: id,
                flags,
            },
        );
    }
    let b6 = IpKey {
        addr: B6.octets(),
        family: 6,
        ..Default::default()
    };
    d.identities.insert(
        b6,
        IdentityInfo {
            identity: ID_B,
            flags: 0,
        },
    );
    let rule = |src, dst, proto, dport, action: Action, rule_id| {
        (
            PolicyKey {
                src,
                dst,
                dport,
                proto,
                slot: 0,
            },
            PolicyValue {
                action: action as u8,
                _pad: [0; 3],
                rule_id,
            },
        )
    };
    d.policy = BTreeMap::from([
        rule(ID_A, ID_B, proto::TCP, 80, Action::Allow, 1),
        rule(ID_A, ID_B, proto::UDP, 53, Action::Allow, 2),
        rule(ID_A, ID_B, proto::ICMP, 0, Action::Allow, 3),
        rule(ID_A, ID_B, proto::TCP, 81, Action::Deny, 4),
    ]);
    d
}

const DENY_BOTH: u32 = defaults::DENY_EGRESS | defaults::DENY_INGRESS;

struct Fixture {
    _pins: PinDir,
    ns: NetNs,
    dp: Option<Datapath>,
}

impl Fixture {
    fn new(a_flags: u32) -> Self {
        Self::with(desired(a_flags))
    }

    fn with(d: Desired) -> Self {
        let pins = PinDir::new();
        let ns = NetNs::new("dp");
        let dp = ns.run(|| {
            let mut dp = Datapath::load(&pins.path).expect("load datapath");
            dp.apply(&d).expect("apply");
            dp
        });
        Self {
            _pins: pins,
            ns,
            dp: Some(dp),
        }
    }

    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().unwrap()
    }

    fn run(&mut self, prog: &str, frame: &[u8]) -> i32 {
        let p: &mut SchedClassifier = self
            .dp()
            .ebpf_mut()
            .program_mut(prog)
            .unwrap()
            .try_into()
            .unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        r.return_value as i32
    }

    fn flows(&self) -> Vec<(FlowKey, netiso_common::FlowValue)> {
        let map = self.dp.as_ref().unwrap().ebpf().map(maps::FLOWS).unwrap();
        counters::flows(map).unwrap()
    }

    /// Packets dropped with `reason`, per the flow table.
    fn dropped(&self, reason: DropReason) -> u64 {
        self.flows()
            .iter()
            .filter(|(k, _)| k.reason == reason as u8)
            .map(|(_, v)| v.packets)
            .sum()
    }

    fn reason_counter(&self, reason: DropReason) -> u64 {
        let map = self
            .dp
            .as_ref()
            .unwrap()
            .ebpf()
            .map(maps::REASON_STATS)
            .unwrap();
        counters::reasons(map)
            .unwrap()
            .get(&reason)
            .map_or(0, |c| c.packets)
    }

    fn apply(&mut self, d: Desired) {
        let dp = self.dp.take().unwrap();
        let dp = self.ns.run(move || {
            let mut dp = dp;
            dp.apply(&d).expect("apply");
            dp
        });
        self.dp = Some(dp);
    }

    fn ct(&self) -> aya::maps::HashMap<&aya::maps::MapData, CtKey, netiso_common::CtValue> {
        let map = self
            .dp
            .as_ref()
            .unwrap()
            .ebpf()
            .map(maps::CONNTRACK)
            .unwrap();
        aya::maps::HashMap::try_from(map).unwrap()
    }

    fn error_counter(&self, index: u32) -> u64 {
        let map = self.dp.as_ref().unwrap().ebpf().map(maps::ERRORS).unwrap();
        counters::per_cpu_totals(map)
            .unwrap()
            .get(&index)
            .map_or(0, |c| c.packets)
    }

    fn ct_has(&self, key: &CtKey) -> bool {
        let map = self
            .dp
            .as_ref()
            .unwrap()
            .ebpf()
            .map(maps::CONNTRACK)
            .unwrap();
        let ct: aya::maps::HashMap<_, CtKey, netiso_common::CtValue> =
            aya::maps::HashMap::try_from(map).unwrap();
        ct.get(key, 0).is_ok()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Release links and maps before the pin directory goes.
        self.dp.take();
    }
}

fn ct_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
    let mut k = CtKey {
        sport,
        dport,
        proto,
        family: 4,
        ..Default::default()
    };
    k.saddr[..4].copy_from_slice(&src.octets());
    k.daddr[..4].copy_from_slice(&dst.octets());
    k
}

#[test]
fn allowed_flow_creates_state_and_replies_pass() {
    let mut f = Fixture::new(DENY_BOTH);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 40000, 80, SYN)), tc::ACT_OK);
    assert!(f.ct_has(&ct_key(A, B, 40000, 80, 6)));
    assert!(f.ct_has(&ct_key(B, A, 80, 40000, 6)), "reply entry");
    // The reply enters A: allowed by conntrack although A denies ingress.
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 80, 40000, SYN | ACK)),
        tc::ACT_OK
    );
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 40000, 80, ACK)), tc::ACT_OK);
    // UDP and ICMP echo the same way.
    assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 5353, 53)), tc::ACT_OK);
    assert_eq!(f.run(IN, &udp4(frames::MAC_B, B, A, 53, 5353)), tc::ACT_OK);
    let ping = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 1, 7, 0, &icmp_echo(8, 99)),
    );
    assert_eq!(f.run(OUT, &ping), tc::ACT_OK);
    let pong = eth(
        frames::MAC_B,
        MAC_A,
        0x0800,
        &ipv4(B, A, 1, 8, 0, &icmp_echo(0, 99)),
    );
    assert_eq!(f.run(IN, &pong), tc::ACT_OK);
    assert!(f.flows().is_empty(), "no drops expected: {:?}", f.flows());
}

#[test]
fn denied_flows_are_dropped_counted_once_and_leave_no_state() {
    let mut f = Fixture::new(DENY_BOTH);
    // No rule for 8080: A's default egress denies.
    for _ in 0..3 {
        assert_eq!(
            f.run(OUT, &tcp4(MAC_A, A, B, 40001, 8080, SYN)),
            tc::ACT_SHOT
        );
    }
    assert!(!f.ct_has(&ct_key(A, B, 40001, 8080, 6)));
    // An explicit deny rule.
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 40002, 81, SYN)), tc::ACT_SHOT);
    // A new connection into A: A's default ingress denies.
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, C, A, 40003, 22, SYN)),
        tc::ACT_SHOT
    );
    // An unanswered reply-looking packet into A is not a reply.
    assert_eq!(
        f.run(IN, &udp4(frames::MAC_B, B, A, 53, 9999)),
        tc::ACT_SHOT
    );
    assert_eq!(f.dropped(DropReason::DefaultDeny), 5);
    assert_eq!(f.dropped(DropReason::PolicyDeny), 1);
    assert_eq!(f.reason_counter(DropReason::DefaultDeny), 5);
    assert_eq!(f.reason_counter(DropReason::PolicyDeny), 1);
    let rows = f.flows();
    let (k, v) = rows
        .iter()
        .find(|(k, _)| k.reason == DropReason::PolicyDeny as u8)
        .unwrap();
    assert_eq!(
        (k.src_identity, k.dst_identity, k.dport, k.proto),
        (ID_A, ID_B, 81, 6)
    );
    assert_eq!(v.rule_id, 4);
    assert_eq!(k.direction, netiso_common::Direction::Egress as u8);
    let (k, v) = rows.iter().find(|(k, _)| k.dport == 8080).unwrap();
    assert_eq!(
        v.packets, 3,
        "one row per flow and reason, counting every packet"
    );
    assert_eq!(k.ifindex, 1);
    // Traffic to the world is judged by A's egress default too.
    assert_eq!(
        f.run(OUT, &tcp4(MAC_A, A, WORLD, 1, 443, SYN)),
        tc::ACT_SHOT
    );
    let world_row = f.flows().into_iter().find(|(k, _)| k.dport == 443).unwrap();
    assert_eq!(world_row.0.dst_identity, netiso_common::identity::WORLD);
}

#[test]
fn allow_defaults_pass_unknown_peers() {
    let mut f = Fixture::new(0);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, C, 1000, 8080, SYN)), tc::ACT_OK);
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, WORLD, A, 1000, 22, SYN)),
        tc::ACT_OK
    );
    // Explicit deny still wins over allow defaults.
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 1000, 81, SYN)), tc::ACT_SHOT);
}

#[test]
fn spoofed_source_ip_and_mac_are_dropped_before_policy() {
    let mut f = Fixture::new(0);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, C, B, 1, 80, SYN)), tc::ACT_SHOT);
    let forged_mac = [0x02, 0, 0, 0, 0, 0x66];
    assert_eq!(
        f.run(OUT, &tcp4(forged_mac, A, B, 1, 80, SYN)),
        tc::ACT_SHOT
    );
    assert_eq!(f.dropped(DropReason::SpoofedIp), 1);
    assert_eq!(f.dropped(DropReason::SpoofedMac), 1);
    // Packets entering the container are not subject to the check.
    assert_eq!(f.run(IN, &tcp4(forged_mac, C, A, 1, 80, SYN)), tc::ACT_OK);
}

#[test]
fn malformed_headers_are_dropped_with_a_reason() {
    let mut f = Fixture::new(0);
    // IPv4 header cut short (the kernel's test runner refuses IPv4
    // frames shorter than an IP header, so cut the header's own length).
    let mut short_total = ipv4(A, B, 6, 1, 0, &tcp(1, 80, SYN));
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(
        f.run(OUT, &eth(MAC_A, frames::MAC_B, 0x0800, &short_total)),
        tc::ACT_SHOT
    );
    // IHL below 5.
    let mut bad_ihl = ipv4(A, B, 6, 1, 0, &tcp(1, 80, SYN));
    bad_ihl[0] = 0x44;
    assert_eq!(
        f.run(OUT, &eth(MAC_A, frames::MAC_B, 0x0800, &bad_ihl)),
        tc::ACT_SHOT
    );
    // TCP header cut short.
    let short_tcp = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 6, 1, 0, &[0, 1, 0, 80]),
    );
    assert_eq!(f.run(OUT, &short_tcp), tc::ACT_SHOT);
    let short_udp = eth(MAC_A, frames::MAC_B, 0x0800, &ipv4(A, B, 17, 1, 0, &[0, 1]));
    assert_eq!(f.run(OUT, &short_udp), tc::ACT_SHOT);
    assert_eq!(f.dropped(DropReason::MalformedL3), 2);
    assert_eq!(f.dropped(DropReason::MalformedL4), 2);
}

#[test]
fn arp_passes_and_other_ethertypes_follow_the_setting() {
    let mut f = Fixture::new(DENY_BOTH);
    let arp = eth(MAC_A, [0xff; 6], 0x0806, &[0; 28]);
    assert_eq!(f.run(OUT, &arp), tc::ACT_OK);
    let lldp = eth(MAC_A, [0x01, 0x80, 0xc2, 0, 0, 0x0e], 0x88cc, &[0; 32]);
    assert_eq!(f.run(OUT, &lldp), tc::ACT_OK);
    f.dp().set_drop_non_ip(true).unwrap();
    assert_eq!(f.run(OUT, &lldp), tc::ACT_SHOT);
    assert_eq!(f.run(OUT, &arp), tc::ACT_OK);
    assert_eq!(f.dropped(DropReason::NonIp), 1);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut f = Fixture::new(DENY_BOTH);
    // First fragment of an allowed UDP datagram, then a later one.
    let first = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 17, 77, 0x2000, &udp(5000, 53, &[0; 16])),
    );
    let later = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 17, 77, 3, &[0; 16]),
    );
    assert_eq!(f.run(OUT, &first), tc::ACT_OK);
    assert_eq!(f.run(OUT, &later), tc::ACT_OK);
    // A later fragment of a datagram whose first fragment was denied.
    let first_denied = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 17, 78, 0x2000, &udp(5000, 9, &[0; 16])),
    );
    let later_denied = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 17, 78, 3, &[0; 16]),
    );
    assert_eq!(f.run(OUT, &first_denied), tc::ACT_SHOT);
    assert_eq!(f.run(OUT, &later_denied), tc::ACT_SHOT);
    // An orphan later fragment.
    let orphan = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, B, 17, 79, 3, &[0; 16]),
    );
    assert_eq!(f.run(OUT, &orphan), tc::ACT_SHOT);
    assert_eq!(f.dropped(DropReason::Fragment), 2);
}

#[test]
fn fail_closed_endpoint_drops_everything() {
    let mut f = Fixture::new(endpoint_flags::FAIL_CLOSED);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 1, 80, SYN)), tc::ACT_SHOT);
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 1, 80, SYN)),
        tc::ACT_SHOT
    );
    assert_eq!(f.dropped(DropReason::FailClosed), 2);
}

#[test]
fn policy_change_cuts_revoked_flows_and_keeps_allowed_ones() {
    let mut f = Fixture::new(DENY_BOTH);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 50000, 80, SYN)), tc::ACT_OK);
    assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 50001, 53)), tc::ACT_OK);
    let gen_before = f.dp().settings().generation;
    // New policy: 80/tcp is no longer allowed, 53/udp still is.
    let mut d = desired(DENY_BOTH);
    d.policy
        .retain(|k, _| !(k.proto == proto::TCP && k.dport == 80));
    let ns_dp = f.dp.take().unwrap();
    let dp = f.ns.run(move || {
        let mut dp = ns_dp;
        let report = dp.apply(&d).expect("apply");
        assert!(report.switched, "a policy change switches slots");
        dp
    });
    f.dp = Some(dp);
    assert_ne!(f.dp().settings().generation, gen_before);
    // The reply of the revoked flow is cut, and so is its next packet.
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 80, 50000, ACK)),
        tc::ACT_SHOT
    );
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 50000, 80, ACK)), tc::ACT_SHOT);
    assert!(!f.ct_has(&ct_key(A, B, 50000, 80, 6)));
    // The still-allowed flow keeps running, in both directions.
    assert_eq!(f.run(IN, &udp4(frames::MAC_B, B, A, 53, 50001)), tc::ACT_OK);
    assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 50001, 53)), tc::ACT_OK);
    assert_eq!(f.dropped(DropReason::Revoked), 1);
    assert_eq!(f.dropped(DropReason::DefaultDeny), 1);
}

#[test]
fn unmanaged_interface_passes_everything() {
    let pins = PinDir::new();
    let ns = NetNs::new("um");
    let mut dp = ns.run(|| {
        let mut dp = Datapath::load(&pins.path).unwrap();
        let mut d = desired(DENY_BOTH);
        d.endpoints.clear();
        dp.apply(&d).unwrap();
        dp
    });
    let p: &mut SchedClassifier = dp.ebpf_mut().program_mut(OUT).unwrap().try_into().unwrap();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(&tcp4(MAC_A, A, B, 1, 8080, SYN)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value as i32, tc::ACT_OK);
    drop(dp);
}

#[test]
fn ipv6_control_passes_and_l4_is_found_behind_extension_headers() {
    let mut f = Fixture::new(DENY_BOTH);
    let v6 = |payload: Vec<u8>| eth(MAC_A, frames::MAC_B, 0x86dd, &payload);
    let ll: Ipv6Addr = "fe80::1".parse().unwrap();
    let mld_group: Ipv6Addr = "ff02::16".parse().unwrap();
    // Neighbour solicitation, and an MLDv2 report behind hop-by-hop.
    assert_eq!(f.run(OUT, &v6(ipv6(ll, B6, 58, &icmpv6(135)))), tc::ACT_OK);
    assert_eq!(f.run(IN, &v6(ipv6(ll, A6, 58, &icmpv6(136)))), tc::ACT_OK);
    assert_eq!(
        f.run(
            IN,
            &v6(ipv6(
                Ipv6Addr::UNSPECIFIED,
                mld_group,
                0,
                &ext8(58, &icmpv6(143))
            ))
        ),
        tc::ACT_OK
    );
    // TCP behind hop-by-hop and destination options is judged as TCP:
    // 80/tcp to B is allowed, 8080 is not (A denies by default).
    let tcp80 = ipv6(A6, B6, 0, &ext8(60, &ext8(6, &tcp(40000, 80, SYN))));
    assert_eq!(f.run(OUT, &v6(tcp80)), tc::ACT_OK);
    let tcp8080 = ipv6(A6, B6, 0, &ext8(6, &tcp(40000, 8080, SYN)));
    assert_eq!(f.run(OUT, &v6(tcp8080)), tc::ACT_SHOT);
    let to_world = ipv6(A6, WORLD6, 6, &tcp(1, 443, SYN));
    assert_eq!(f.run(OUT, &v6(to_world)), tc::ACT_SHOT);
    let rows = f.flows();
    let row = rows
        .iter()
        .find(|(k, _)| k.dport == 8080)
        .expect("row for 8080");
    assert_eq!(
        (row.0.proto, row.0.family, row.0.dst_identity),
        (6, 6, ID_B)
    );
    let row = rows
        .iter()
        .find(|(k, _)| k.dport == 443)
        .expect("row for 443");
    assert_eq!(row.0.dst_identity, netiso_common::identity::WORLD);
    // A truncated extension header chain.
    let cut = ipv6(A6, B6, 0, &[6, 0]);
    assert_eq!(f.run(OUT, &v6(cut)), tc::ACT_SHOT);
    assert_eq!(f.dropped(DropReason::MalformedL3), 1);
    // IGMP is link-local control, like ARP.
    let igmp = eth(
        MAC_A,
        frames::MAC_B,
        0x0800,
        &ipv4(A, Ipv4Addr::new(224, 0, 0, 22), 2, 1, 0, &[0x22; 8]),
    );
    assert_eq!(f.run(OUT, &igmp), tc::ACT_OK);
}

fn rule(
    src: u32,
    dst: u32,
    proto: u8,
    dport: u16,
    action: Action,
    rule_id: u32,
) -> (PolicyKey, PolicyValue) {
    (
        PolicyKey {
            src,
            dst,
            dport,
            proto,
            slot: 0,
        },
        PolicyValue {
            action: action as u8,
            _pad: [0; 3],
            rule_id,
        },
    )
}

#[test]
fn audit_rules_pass_and_are_recorded_like_drops() {
    let mut d = desired(DENY_BOTH);
    d.policy
        .extend([rule(ID_A, ID_B, proto::TCP, 8443, Action::Audit, 9)]);
    let mut f = Fixture::with(d);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 41000, 8443, SYN)), tc::ACT_OK);
    // Later packets of the audited flow ride conntrack and are not recounted.
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 41000, 8443, ACK)), tc::ACT_OK);
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 8443, 41000, ACK)),
        tc::ACT_OK
    );
    let rows = f.flows();
    let (k, v) = rows
        .iter()
        .find(|(k, _)| k.reason == DropReason::Audit as u8)
        .expect("an audit row");
    assert_eq!((k.dport, v.packets, v.rule_id), (8443, 1, 9));
    assert_eq!(f.reason_counter(DropReason::Audit), 1);
    let ct = f.ct().get(&ct_key(A, B, 41000, 8443, 6), 0).unwrap();
    assert_ne!(ct.flags & netiso_common::ct_flags::AUDIT, 0);
}

#[test]
fn cidr_peers_match_by_longest_prefix_after_exact_addresses() {
    const ID_NET: u32 = 1 << 24;
    let mut d = desired(DENY_BOTH);
    let id = |identity| IdentityInfo { identity, flags: 0 };
    // 198.18.0.0/15 is the peer; 198.18.5.0/24 is carved out (world).
    d.cidrs
        .insert((Ipv4Addr::new(198, 18, 0, 0).into(), 15), id(ID_NET));
    d.cidrs.insert(
        (Ipv4Addr::new(198, 18, 5, 0).into(), 24),
        id(netiso_common::identity::WORLD),
    );
    d.cidrs.insert(
        ("2001:db8::".parse::<Ipv6Addr>().unwrap().into(), 32),
        id(ID_NET),
    );
    d.policy
        .extend([rule(ID_A, ID_NET, proto::TCP, 443, Action::Allow, 5)]);
    let mut f = Fixture::with(d);
    let in_net = Ipv4Addr::new(198, 19, 1, 1);
    let carved = Ipv4Addr::new(198, 18, 5, 7);
    let outside = Ipv4Addr::new(198, 20, 0, 1);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, in_net, 1, 443, SYN)), tc::ACT_OK);
    assert_eq!(
        f.run(OUT, &tcp4(MAC_A, A, carved, 1, 443, SYN)),
        tc::ACT_SHOT
    );
    assert_eq!(
        f.run(OUT, &tcp4(MAC_A, A, outside, 1, 443, SYN)),
        tc::ACT_SHOT
    );
    let v6 = eth(
        MAC_A,
        frames::MAC_B,
        0x86dd,
        &ipv6(A6, "2001:db8::7".parse().unwrap(), 6, &tcp(1, 443, SYN)),
    );
    assert_eq!(f.run(OUT, &v6), tc::ACT_OK);
    let rows = f.flows();
    let ids: Vec<u32> = rows.iter().map(|(k, _)| k.dst_identity).collect();
    assert_eq!(ids.len(), 2, "{rows:?}");
    assert!(ids.iter().all(|i| *i == netiso_common::identity::WORLD));
    // Removing the CIDR peers switches slots; the old slot's trie empties.
    let mut f2 = f;
    f2.apply(desired(DENY_BOTH));
    assert_eq!(
        f2.run(OUT, &tcp4(MAC_A, A, in_net, 2, 443, SYN)),
        tc::ACT_SHOT
    );
}

/// Reads every pending event of the ring buffer.
fn drain_events(f: &mut Fixture) -> Vec<netiso_common::Event> {
    let map = f.dp().ebpf_mut().map_mut(maps::EVENTS).unwrap();
    let mut rb = aya::maps::RingBuf::try_from(map).unwrap();
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), std::mem::size_of::<netiso_common::Event>());
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    out
}

#[test]
fn drops_send_rate_limited_events() {
    // One CPU, so one rate-limit window applies to every run.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(0, &mut set) };
    assert_eq!(
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) },
        0
    );
    let mut f = Fixture::new(DENY_BOTH);
    f.dp().set_event_rate(3).unwrap();
    for i in 0..10 {
        assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 7000 + i, 9999)), tc::ACT_SHOT);
    }
    let events = drain_events(&mut f);
    assert_eq!(events.len(), 3, "the limit holds back all but 3");
    let e = &events[0];
    assert_eq!(
        (e.flow.dport, e.flow.proto, e.flow.reason),
        (9999, 17, DropReason::DefaultDeny as u8)
    );
    assert_eq!(&e.flow.saddr[..4], &A.octets());
    let map = f.dp().ebpf().map(maps::EVENT_RATE).unwrap();
    let rate: aya::maps::PerCpuArray<_, netiso_common::RateState> =
        aya::maps::PerCpuArray::try_from(map).unwrap();
    let suppressed: u32 = rate.get(&0, 0).unwrap().iter().map(|r| r.suppressed).sum();
    assert_eq!(suppressed, 7);
    // Events off: drops are still counted, nothing is sent.
    f.dp().set_event_rate(0).unwrap();
    assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 7100, 9999)), tc::ACT_SHOT);
    assert!(drain_events(&mut f).is_empty());
}

/// An ICMP error (type 3 = unreachable) from `src` to `dst` quoting `quoted`.
fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut l4 = vec![3, 3, 0, 0, 0, 0, 0, 0];
    l4.extend_from_slice(quoted);
    eth(frames::MAC_B, MAC_A, 0x0800, &ipv4(src, dst, 1, 9, 0, &l4))
}

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let mut f = Fixture::new(DENY_BOTH);
    assert_eq!(f.run(OUT, &udp4(MAC_A, A, B, 5300, 53)), tc::ACT_OK);
    // B answers A's datagram with "port unreachable": related, passes
    // although A denies ingress.
    let quoted = ipv4(A, B, 17, 1, 0, &udp(5300, 53, b""));
    assert_eq!(f.run(IN, &icmp_unreachable(B, A, &quoted)), tc::ACT_OK);
    // The same error about a flow that never was is judged as plain ICMP.
    let unknown = ipv4(A, B, 17, 1, 0, &udp(5399, 53, b""));
    assert_eq!(f.run(IN, &icmp_unreachable(B, A, &unknown)), tc::ACT_SHOT);
    // A cut-short quote is judged as plain ICMP too.
    assert_eq!(
        f.run(IN, &icmp_unreachable(B, A, &quoted[..10])),
        tc::ACT_SHOT
    );
}

#[test]
fn conntrack_entries_expire_and_tcp_state_is_tracked() {
    let mut f = Fixture::new(DENY_BOTH);
    assert_eq!(f.run(OUT, &tcp4(MAC_A, A, B, 42000, 80, SYN)), tc::ACT_OK);
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 80, 42000, SYN | ACK)),
        tc::ACT_OK
    );
    let fwd = ct_key(A, B, 42000, 80, 6);
    let rev = ct_key(B, A, 80, 42000, 6);
    let flags = f.ct().get(&fwd, 0).unwrap().flags;
    assert_ne!(
        flags & netiso_common::ct_flags::SEEN_REPLY,
        0,
        "the handshake was answered"
    );
    // FIN marks both directions closing.
    assert_eq!(
        f.run(OUT, &tcp4(MAC_A, A, B, 42000, 80, ACK | 0x01)),
        tc::ACT_OK
    );
    for k in [fwd, rev] {
        assert_ne!(
            f.ct().get(&k, 0).unwrap().flags & netiso_common::ct_flags::CLOSING,
            0
        );
    }
    // Age both entries past any lifetime: the next reply is a new flow into
    // A, which A's defaults deny.
    {
        let map = f.dp().ebpf_mut().map_mut(maps::CONNTRACK).unwrap();
        let mut ct: aya::maps::HashMap<_, CtKey, netiso_common::CtValue> =
            aya::maps::HashMap::try_from(map).unwrap();
        for k in [fwd, rev] {
            let mut v = ct.get(&k, 0).unwrap();
            v.last_seen_ns = 1;
            ct.insert(k, v, 0).unwrap();
        }
    }
    assert_eq!(
        f.run(IN, &tcp4(frames::MAC_B, B, A, 80, 42000, ACK)),
        tc::ACT_SHOT
    );
    assert_eq!(f.error_counter(netiso_common::errors::CT_EXPIRED), 1);
    assert!(!f.ct_has(&fwd) && !f.ct_has(&rev));
}

#[test]
fn ipv6_sources_must_be_the_endpoints_own() {
    let mut f = Fixture::new(0);
    let forged: Ipv6Addr = "fd00::99".parse().unwrap();
    let v6 = |src| {
        eth(
            MAC_A,
            frames::MAC_B,
            0x86dd,
            &ipv6(src, B6, 6, &tcp(1, 80, SYN)),
        )
    };
    assert_eq!(f.run(OUT, &v6(forged)), tc::ACT_SHOT);
    assert_eq!(f.run(OUT, &v6(A6)), tc::ACT_OK);
    assert_eq!(f.dropped(DropReason::SpoofedIp), 1);
}

#[test]
fn full_tables_evict_the_least_recent_and_totals_stay_exact() {
    let pins = PinDir::new();
    let ns = NetNs::new("full");
    let mut dp = ns.run(|| {
        let mut dp =
            Datapath::load_with_sizes(&pins.path, &[(maps::CONNTRACK, 64), (maps::FLOWS, 16)])
                .expect("load");
        dp.apply(&desired(DENY_BOTH)).expect("apply");
        dp
    });
    let mut run = |prog: &str, frame: &[u8]| -> i32 {
        let p: &mut SchedClassifier = dp.ebpf_mut().program_mut(prog).unwrap().try_into().unwrap();
        p.test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .unwrap()
        .return_value as i32
    };
    // 200 allowed connections through a 64-entry conntrack: every one is
    // admitted (the least recently used entries make room).
    for port in 0..200u16 {
        assert_eq!(
            run(OUT, &tcp4(MAC_A, A, B, 10_000 + port, 80, SYN)),
            tc::ACT_OK
        );
    }
    // The newest connection's reply still finds its state; the oldest's is
    // gone, so its reply is a new flow into A, which A's defaults deny.
    assert_eq!(
        run(IN, &tcp4(frames::MAC_B, B, A, 80, 10_199, ACK)),
        tc::ACT_OK
    );
    assert_eq!(
        run(IN, &tcp4(frames::MAC_B, B, A, 80, 10_000, ACK)),
        tc::ACT_SHOT
    );
    // 100 distinct denied flows into a 16-row flow table: rows are
    // recycled, the per-reason totals stay exact.
    for port in 0..100u16 {
        assert_eq!(run(OUT, &udp4(MAC_A, A, B, 20_000 + port, 9)), tc::ACT_SHOT);
    }
    let flows = counters::flows(dp.ebpf().map(maps::FLOWS).unwrap()).unwrap();
    assert!(flows.len() <= 16, "{} rows", flows.len());
    let reasons = counters::reasons(dp.ebpf().map(maps::REASON_STATS).unwrap()).unwrap();
    assert_eq!(reasons[&DropReason::DefaultDeny].packets, 101);
    drop(dp);
}

#[test]
fn a_restarted_datapath_readopts_links_without_duplicates() {
    let pins = PinDir::new();
    let ns = NetNs::new("re");
    ns.sh("ip link add d0 type veth peer name d1 && ip link set d0 up && ip link set d1 up");
    let ifindex = ns.run(|| {
        netiso_daemon::netlink::links()
            .unwrap()
            .into_iter()
            .find(|l| l.ifname == "d0")
            .unwrap()
            .ifindex
    });
    let mut d = desired(DENY_BOTH);
    let spec = d.endpoints.remove(&1).unwrap();
    d.endpoints.insert(
        ifindex,
        EndpointSpec {
            ifname: "d0".into(),
            ..spec
        },
    );
    let count = || {
        ns.run(|| {
            [
                aya::programs::TcAttachType::Ingress,
                aya::programs::TcAttachType::Egress,
            ]
            .map(|t| SchedClassifier::query_tcx("d0", t).unwrap().1.len())
        })
    };
    let pin_path = pins.path.clone();
    for round in 0..3 {
        let dd = d.clone();
        let path = pin_path.clone();
        let dp = ns.run(move || {
            let mut dp = Datapath::load(&path).expect("load");
            dp.apply(&dd).expect("apply");
            dp
        });
        drop(dp);
        assert_eq!(
            count(),
            [1, 1],
            "round {round}: one program per direction, still attached"
        );
    }
    // An older layout's maps are cleared away on load.
    std::fs::create_dir_all(pins.path.join("maps-v0")).unwrap();
    let dp = ns.run(|| Datapath::load(&pins.path).expect("load"));
    assert!(!pins.path.join("maps-v0").exists());
    drop(dp);
}
