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
    // AAAA, over IPv6: learned with the IPv6 family and address.
    let app6: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
    let res6: std::net::Ipv6Addr = "2001:db8::53".parse().unwrap();
    let w6: std::net::Ipv6Addr = "2001:db8::443".parse().unwrap();
    use netiso_testkit::frames::ipv6;
    let q6 = eth(
        MAC_A,
        MAC_B,
        0x86dd,
        &ipv6(
            app6,
            res6,
            17,
            &udp(5004, 53, &query_bytes(12, "v6.allowed.test", 28)),
        ),
    );
    l.on_copy(&st, OUT, 10, &q6, now);
    let a6 = eth(
        MAC_B,
        MAC_A,
        0x86dd,
        &ipv6(
            res6,
            app6,
            17,
            &udp(
                53,
                5004,
                &answer_bytes(12, "v6.allowed.test", 28, &[Rr::Aaaa(w6, 60)]),
            ),
        ),
    );
    let out = l.on_copy(&st, IN, 10, &a6, now);
    assert_eq!(
        out.writes.len(),
        0,
        "the container's per-container limit is full: {out:?}"
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
    // With room again (w1 expired), the IPv6 answer teaches.
    l.on_copy(&st, OUT, 10, &q6, now + 8 * S);
    let out = l.on_copy(&st, IN, 10, &a6, now + 8 * S);
    assert_eq!(out.writes.len(), 2, "{out:?}");
    assert_eq!(out.writes[0].0.family, 6);
    assert_eq!(out.writes[0].0.addr, w6.octets());
}

mod end_to_end {
    use std::collections::BTreeMap;
    use std::io::{Read as _, Write as _};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use netiso_testkit::dns::{answer_bytes, query_bytes, resolve, DnsServer, Rr};
    use netiso_testkit::docker::{exec, image, require_docker};
    use netiso_testkit::scenario::{greet, World, TEST_LABEL};
    use netiso_testkit::{run_in, sh, unique, DaemonProc};

    const GREET: u16 = 9443;
    const ECHO: u16 = 9444;

    /// Removes what the test added outside its namespaces, even on failure.
    struct Cleanup {
        containers: Vec<String>,
        network: String,
        route: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &self.containers {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
            let _ = Command::new("docker")
                .args(["network", "rm", &self.network])
                .output();
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("ip route del {}", self.route))
                .output();
        }
    }

    /// Echoes what each connection to `listener` sends, until `stop`.
    fn echo(listener: TcpListener, stop: Arc<AtomicBool>) {
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let mut buf = [0u8; 256];
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 || s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }

    fn greeted(container: &str, target: &str) -> bool {
        exec(
            container,
            &format!("nc -w 2 {target} {GREET} </dev/null | grep -q netiso-ok"),
        )
        .0
    }

    fn pid(container: &str) -> u32 {
        let o = sh(&format!(
            "docker inspect -f '{{{{.State.Pid}}}}' {container}"
        ));
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    }

    fn percentile(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    /// Containers resolve through Docker's embedded resolver, which
    /// forwards to a DNS server in the routed "world" namespace from the
    /// container's own namespace: the programs see the query and the
    /// answer, and the daemon learns. Every case of the issue, checked by
    /// what the container can reach.
    #[test]
    fn names_allow_what_was_resolved() {
        require_docker();
        let tag = unique("fq");
        let world = World::new(8080);
        let stop = Arc::new(AtomicBool::new(false));
        let wpath = world.ns.path();
        // Addresses of the world, one per name, in a /24 of their own.
        let n = (std::process::id() % 200 + 20) as u8;
        let net = format!("198.18.{n}.0/24");
        let addr = |i: u8| Ipv4Addr::new(198, 18, n, i);
        let mut batch = String::new();
        for i in 1..=254u8 {
            batch.push_str(&format!("addr add {}/32 dev lo\n", addr(i)));
        }
        std::fs::write(std::env::temp_dir().join(format!("{tag}.batch")), &batch).unwrap();
        world.ns.sh(&format!(
            "ip link set lo up && ip -batch {}",
            std::env::temp_dir().join(format!("{tag}.batch")).display()
        ));
        let mut cleanup = Cleanup {
            containers: Vec::new(),
            network: format!("netiso-{tag}"),
            route: net.clone(),
        };
        sh(&format!(
            "ip route add {net} via {} dev {}",
            world.ip, world.host_if
        ));
        let greeter = run_in(&wpath, || TcpListener::bind(("0.0.0.0", GREET)).unwrap());
        let _ = greet(greeter, stop.clone());
        let echoer = run_in(&wpath, || TcpListener::bind(("0.0.0.0", ECHO)).unwrap());
        echo(echoer, stop.clone());
        let dns = DnsServer::start_in(&wpath, IpAddr::V4(world.ip));
        let resolver = SocketAddr::from((world.ip, 53));

        sh(&format!("docker network create {}", cleanup.network));
        let run = |name: &str, role: &str| -> String {
            let full = format!("{name}-{tag}");
            sh(&format!(
                "docker run -d --name {full} --network {} --dns {} --label {TEST_LABEL}={tag} \
                 --label role={role} {} sleep 3600",
                cleanup.network,
                world.ip,
                image()
            ));
            full
        };
        let app = run("app", "app");
        let attacker = run("attacker", "attacker");
        let control = run("control", "control");
        cleanup.containers = vec![app.clone(), attacker.clone(), control.clone()];
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                r#"
[groups.app]
labels = {{ "{TEST_LABEL}" = "{tag}", role = "app" }}
egress = "deny"

[groups.control]
labels = {{ "{TEST_LABEL}" = "{tag}", role = "control" }}

[[rules]]
from = "app"
to = "{wip}/32"
ports = ["53/udp", "53/tcp"]
action = "allow"

[[rules]]
from = "app"
to = "{alt}/32"
ports = ["53/udp"]
action = "allow"

[[rules]]
from = "app"
to = {{ fqdn = "*.allowed.netiso.test" }}
ports = ["{GREET}/tcp", "{ECHO}/tcp"]
action = "allow"

[[rules]]
from = "app"
to = {{ fqdn = "alias.netiso.test" }}
ports = ["{GREET}/tcp"]
action = "allow"
"#,
                wip = world.ip,
                alt = addr(220)
            ),
        )
        .unwrap();
        let mut daemon =
            DaemonProc::start_with(policy, &["--fqdn-min-ttl", "1", "--fqdn-grace", "1"]);
        daemon.wait_for("app watched for names", |s| {
            s.endpoints
                .iter()
                .any(|e| e.container == app && e.resolves_names && e.enforced)
        });
        let mut report = BTreeMap::new();
        // The world is reachable (a container that may go anywhere).
        assert!(
            greeted(&control, &addr(250).to_string()),
            "the world's routing"
        );

        // 1. Resolve and connect at once, 200 fresh names, each to an
        // address nobody learned before, TTL 1 s: no first-connection
        // failure.
        for i in 1..=200u8 {
            dns.set(
                &format!("n{i}.allowed.netiso.test"),
                vec![Rr::A(addr(i), 1)],
            );
        }
        let started = Instant::now();
        let (_, out) = exec(
            &app,
            &format!(
                "for i in $(seq 1 {count}); do nc -w 2 n$i.allowed.netiso.test {GREET} </dev/null \
                 | grep -q netiso-ok || echo FAIL $i; done; echo DONE",
                count = std::env::var("NETISO_FQDN_NAMES").unwrap_or_else(|_| "200".into())
            ),
        );
        report.insert(
            "200 names, resolve + connect",
            format!("{:?}", started.elapsed()),
        );
        if out.contains("FAIL") {
            dns.set("dbg.allowed.netiso.test", vec![Rr::A(addr(240), 60)]);
            let (_, a) = exec(&app, "nslookup dbg.allowed.netiso.test 2>&1; nc -w 2 dbg.allowed.netiso.test 9443 </dev/null 2>&1; echo rc=$?");
            let (_, b) = exec(
                &app,
                &format!("nc -w 2 {} 9443 </dev/null 2>&1; echo rc=$?", addr(240)),
            );
            eprintln!(
                "DEBUG-A {a}\nDEBUG-B {b}\n{}",
                String::from_utf8_lossy(&daemon.cli(&["stats"]).stdout)
            );
        }
        assert!(
            out.contains("DONE") && !out.contains("FAIL"),
            "failed first connections:\n{out}\n{}\n{}\n{}",
            String::from_utf8_lossy(&daemon.cli(&["stats"]).stdout),
            std::fs::read_to_string(daemon.state_dir.path().join("names.json")).unwrap_or_default(),
            daemon.log()
        );

        // 2. A name no rule names, and an address never resolved: blocked.
        dns.set("x.other.netiso.test", vec![Rr::A(addr(230), 60)]);
        assert!(!greeted(&app, "x.other.netiso.test"), "unlisted name");
        assert!(!greeted(&app, &addr(231).to_string()), "direct address");

        // 3. A forged answer from another container, and one replayed
        // from the resolver's address with an id nobody asked: nothing
        // learned, the addresses stay blocked.
        let app_ip: Ipv4Addr = {
            let o = sh(&format!(
                "docker inspect -f '{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}' {app}",
                cleanup.network
            ));
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let forged = answer_bytes(
            0x4242,
            "evil.allowed.netiso.test",
            1,
            &[Rr::A(addr(232), 300)],
        );
        let apid = pid(&attacker);
        run_in(&PathBuf::from(format!("/proc/{apid}/ns/net")), || {
            let s = UdpSocket::bind(("0.0.0.0", 53)).unwrap();
            for port in [33000u16, 40000, 50000, 60000] {
                s.send_to(&forged, (app_ip, port)).unwrap();
            }
        });
        // An answer on a real query's connection (from a resolver the
        // policy allows, to the query's client port) with an id nobody
        // asked: held, copied, counted as unmatched, teaches nothing.
        let alt = addr(220);
        let fake = run_in(&wpath, move || UdpSocket::bind((alt, 53)).unwrap());
        fake.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let app_ns_early = PathBuf::from(format!("/proc/{}/ns/net", pid(&app)));
        let client = run_in(&app_ns_early, || UdpSocket::bind(("0.0.0.0", 0)).unwrap());
        client
            .send_to(
                &query_bytes(0x1111, "evil2.allowed.netiso.test", 1),
                (alt, 53),
            )
            .unwrap();
        let mut buf = [0u8; 512];
        let (_, asker) = fake
            .recv_from(&mut buf)
            .expect("the query reaches the fake resolver");
        let replayed = answer_bytes(
            0x2222,
            "evil2.allowed.netiso.test",
            1,
            &[Rr::A(addr(233), 300)],
        );
        fake.send_to(&replayed, asker).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !greeted(&app, &addr(232).to_string()),
            "a forged answer taught an address"
        );
        assert!(
            !greeted(&app, &addr(233).to_string()),
            "a replayed answer taught an address"
        );
        // Counted: the answers nobody asked for, and the refused connections.
        let status = String::from_utf8_lossy(&daemon.cli(&["status"]).stdout).to_string();
        let metrics_url = status
            .lines()
            .find_map(|l| l.strip_prefix("Metrics:"))
            .map(|u| {
                u.trim()
                    .trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .to_string()
            })
            .expect("the metrics address in status");
        let mut conn = TcpStream::connect(&metrics_url).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut metrics = String::new();
        conn.read_to_string(&mut metrics).unwrap();
        let unmatched: f64 = metrics
            .lines()
            .find(|l| l.starts_with("netiso_fqdn_answers_total{result=\"unmatched\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no unmatched answers counted:\n{metrics}"));
        assert!(unmatched >= 1.0, "{unmatched}");
        report.insert(
            "answers counted as unmatched (wrong id on a real query)",
            unmatched.to_string(),
        );
        let stats = String::from_utf8_lossy(&daemon.cli(&["stats", "--json"]).stdout).to_string();
        for a in [addr(231), addr(232), addr(233)] {
            assert!(
                stats.contains(&format!("\"{a}\"")),
                "no drop row for {a}:\n{stats}"
            );
        }

        // 4. TTL expiry: a connection opened while the name was fresh
        // lives on past the TTL (1 s, +1 s grace); a new one to the same
        // address without a fresh query is blocked.
        dns.set("ttl.allowed.netiso.test", vec![Rr::A(addr(234), 1)]);
        let (ok, out) = exec(
            &app,
            &format!("(echo one; sleep 4; echo two) | nc -w 6 ttl.allowed.netiso.test {ECHO}"),
        );
        assert!(
            ok && out.contains("one") && out.contains("two"),
            "the live connection was cut: {out}"
        );
        assert!(
            !greeted(&app, &addr(234).to_string()),
            "expired, and not asked again"
        );
        assert!(
            greeted(&app, "ttl.allowed.netiso.test"),
            "asked again: allowed again"
        );

        // 5. A CNAME chain: the alias's rule allows the final address.
        dns.set(
            "alias.netiso.test",
            vec![Rr::Cname("edge.cdn.netiso.test".into(), 60)],
        );
        dns.set("edge.cdn.netiso.test", vec![Rr::A(addr(235), 60)]);
        assert!(greeted(&app, "alias.netiso.test"), "CNAME chain");

        // 6. DNS over TCP, straight to the resolver from the container's
        // namespace: blocked before, allowed after the answer.
        dns.set("tcp.allowed.netiso.test", vec![Rr::A(addr(236), 60)]);
        let app_ns = PathBuf::from(format!("/proc/{}/ns/net", pid(&app)));
        let connect = |to: Ipv4Addr| {
            run_in(&app_ns, move || {
                TcpStream::connect_timeout(&SocketAddr::from((to, GREET)), Duration::from_secs(1))
                    .is_ok()
            })
        };
        assert!(!connect(addr(236)), "before the answer");
        let (got, _) = resolve(&app_ns, resolver, "tcp.allowed.netiso.test", 1, true).unwrap();
        assert_eq!(got, vec![IpAddr::V4(addr(236))]);
        assert!(connect(addr(236)), "after an answer over TCP");

        // Added DNS latency: answers held for learning (app) against
        // answers that are not (control), interleaved.
        let control_ns = PathBuf::from(format!("/proc/{}/ns/net", pid(&control)));
        let (mut held, mut plain) = (Vec::new(), Vec::new());
        for i in 0..100u8 {
            let name = format!("lat{i}.allowed.netiso.test");
            dns.set(&name, vec![Rr::A(addr(237 + i % 10), 60)]);
            held.push(resolve(&app_ns, resolver, &name, 1, false).unwrap().1);
            plain.push(resolve(&control_ns, resolver, &name, 1, false).unwrap().1);
        }
        report.insert(
            "DNS round trip p50/p99, held for learning",
            format!(
                "{:?} / {:?}",
                percentile(&mut held, 0.5),
                percentile(&mut held, 0.99)
            ),
        );
        report.insert(
            "DNS round trip p50/p99, not held",
            format!(
                "{:?} / {:?}",
                percentile(&mut plain, 0.5),
                percentile(&mut plain, 0.99)
            ),
        );

        // Observable: status lists the learned names of the app.
        // (names.json is rewritten once a second.)
        let mut status = String::new();
        for _ in 0..30 {
            status = String::from_utf8_lossy(&daemon.cli(&["status"]).stdout).to_string();
            if status.contains("tcp.allowed.netiso.test") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            status.contains("Learned for peers by name:")
                && status.contains("tcp.allowed.netiso.test"),
            "{status}"
        );
        eprintln!(
            "{report:#?}\n$ netiso status (the names part)\n{}",
            &status[status.find("Learned for").unwrap_or(0)..]
        );
        stop.store(true, Ordering::Relaxed);
        drop(daemon);
        drop(dns);
        drop(cleanup);
    }
}

/// What the hostile review found, kept fixed: a resolver's TTL is capped
/// (MAX_TTL), names per address are bounded, one veth flooding queries
/// never pushes out another's, and rows of veths a container no longer
/// has are deleted when it learns again.
#[test]
fn the_learner_stays_bounded_under_abuse() {
    use netiso_daemon::daemon::fqdn::MAX_TTL;
    let mut st = state();
    let mut l = Learner::new(FqdnOptions::default());
    let now = 100 * S;
    let w = Ipv4Addr::new(198, 19, 2, 1);
    // A huge TTL is capped.
    l.on_copy(&st, OUT, 10, &query(1, "a.allowed.test", 6000), now);
    let out = l.on_copy(
        &st,
        IN,
        10,
        &answer(
            RESOLVER,
            1,
            "a.allowed.test",
            6000,
            &[Rr::A(w, 0x7fff_ffff)],
        ),
        now,
    );
    let grace = FqdnOptions::default().grace;
    assert_eq!(
        out.writes[0].1.expires_ns,
        now + (MAX_TTL + grace).as_nanos() as u64
    );
    // A thousand names of one address: the names kept are bounded.
    for i in 0..1000u16 {
        let name = format!("x{i}.allowed.test");
        l.on_copy(&st, OUT, 10, &query(i, &name, 7000), now);
        l.on_copy(
            &st,
            IN,
            10,
            &answer(RESOLVER, i, &name, 7000, &[Rr::A(w, 60)]),
            now,
        );
    }
    let names = l.names();
    assert!(
        names.containers["app"].len() <= 17,
        "{}",
        names.containers["app"].len()
    );
    // Veth 12 (another container) floods queries; veth 10's query stays.
    l.on_copy(&st, OUT, 10, &query(4242, "b.allowed.test", 6001), now);
    for i in 0..20_000u32 {
        let q = eth(
            MAC_A,
            MAC_B,
            0x0800,
            &ipv4(
                OTHER,
                RESOLVER,
                17,
                1,
                0,
                &udp(
                    (i % 60000) as u16,
                    53,
                    &query_bytes(i as u16, "f.allowed.test", 1),
                ),
            ),
        );
        l.on_copy(&st, OUT, 12, &q, now);
    }
    let out = l.on_copy(
        &st,
        IN,
        10,
        &answer(RESOLVER, 4242, "b.allowed.test", 6001, &[Rr::A(w, 60)]),
        now,
    );
    assert!(
        !out.writes.is_empty(),
        "another veth's flood pushed out this query"
    );
    // The container moved to new veths: the old rows go.
    st.endpoints.retain(|e| e.ifindex != Some(11));
    st.endpoints.push(EndpointState {
        container: "app".into(),
        ifindex: Some(13),
        resolves_names: true,
        ..EndpointState::default()
    });
    l.on_copy(&st, OUT, 10, &query(9, "c.allowed.test", 6002), now);
    let out = l.on_copy(
        &st,
        IN,
        10,
        &answer(RESOLVER, 9, "c.allowed.test", 6002, &[Rr::A(w, 60)]),
        now,
    );
    let deleted: Vec<u32> = out.deletes.iter().map(|k| k.ifindex).collect();
    assert_eq!(deleted, vec![11]);
    let written: Vec<u32> = out.writes.iter().map(|k| k.0.ifindex).collect();
    assert_eq!(written, vec![10, 13]);
}
