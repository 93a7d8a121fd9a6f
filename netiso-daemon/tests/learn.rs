//! Learn mode end to end, with real containers, the real daemon and real
//! traffic: a compose-like shop (web → api over TCP, api → db over TCP,
//! api → cache over UDP, web → a port on the host, api → a routed "world"
//! namespace) runs under learn mode; `netiso policy suggest` writes the
//! policy; the daemon enforces it; the same workload runs again with no
//! drop, and flows the workload never made are blocked. `--against` a
//! policy that misses one flow proposes exactly that rule, as a diff that
//! `patch` applies.
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::scenario::{greet, probe, World, TEST_LABEL};
use netiso_testkit::{netiso_bin, run_in, sh, DaemonProc};

const WORLD_PORT: u16 = 443;
const CACHE_PORT: u16 = 11211;

struct Shop {
    env: DockerEnv,
    pids: std::collections::BTreeMap<&'static str, u32>,
    ips: std::collections::BTreeMap<&'static str, Ipv4Addr>,
    gateway: Ipv4Addr,
    host_port: u16,
    world: World,
    stop: Arc<AtomicBool>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn netns(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// A UDP echo ("pong") in the network namespace of `pid`, until `stop`.
fn udp_echo(pid: u32, port: u16, stop: Arc<AtomicBool>) {
    let sock = run_in(&netns(pid), move || {
        UdpSocket::bind(("0.0.0.0", port)).unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if &buf[..n] == b"ping" {
                    let _ = sock.send_to(b"pong", from);
                }
            }
        }
    });
}

/// From the namespace of `pid`: a datagram to `to` answered within 1 s.
fn udp_ok(pid: u32, to: SocketAddr) -> bool {
    let sock = run_in(&netns(pid), || UdpSocket::bind(("0.0.0.0", 0)).unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    sock.send_to(b"ping", to).unwrap();
    let mut buf = [0u8; 16];
    matches!(sock.recv_from(&mut buf), Ok((4, _)) if &buf[..4] == b"pong")
}

fn start_shop() -> Shop {
    let mut env = DockerEnv::new();
    let project = format!("shop-{}", env.tag);
    let stop = Arc::new(AtomicBool::new(false));
    let mut pids = std::collections::BTreeMap::new();
    let mut ips = std::collections::BTreeMap::new();
    for (service, script) in [
        ("web", tcp_servers(&[80])),
        ("api", tcp_servers(&[8080])),
        ("db", tcp_servers(&[5432])),
        ("cache", "exec sleep 3600".to_string()),
    ] {
        let tag = env.tag.clone();
        let name = env.run(
            service,
            &[
                ("com.docker.compose.project", &project),
                ("com.docker.compose.service", service),
                (TEST_LABEL, &tag),
            ],
            &script,
        );
        pids.insert(service, env.pid(&name));
        ips.insert(service, env.ip(&name));
    }
    udp_echo(pids["cache"], CACHE_PORT, stop.clone());
    // A service on the host, on the network's gateway address.
    let out = sh(&format!(
        "docker network inspect -f '{{{{(index .IPAM.Config 0).Gateway}}}}' {}",
        env.network
    ));
    let gateway: Ipv4Addr = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let listener = TcpListener::bind((gateway, 0)).unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let _ = greet(listener, stop.clone());
    Shop {
        env,
        pids,
        ips,
        gateway,
        host_port,
        world: World::new(WORLD_PORT),
        stop,
    }
}

impl Shop {
    /// The workload: every flow it needs, a few times each. Returns the
    /// flows that failed.
    fn workload(&self) -> Vec<String> {
        let (p, ip) = (&self.pids, &self.ips);
        let mut failed = Vec::new();
        let mut check = |what: &str, ok: bool| {
            if !ok {
                failed.push(what.to_string());
            }
        };
        for i in 0..3 {
            check(
                &format!("web -> api:8080 #{i}"),
                probe(p["web"], ip["api"], 8080),
            );
            check(
                &format!("api -> db:5432 #{i}"),
                probe(p["api"], ip["db"], 5432),
            );
            check(
                &format!("api -> cache:{CACHE_PORT}/udp #{i}"),
                udp_ok(p["api"], SocketAddr::from((ip["cache"], CACHE_PORT))),
            );
        }
        check("web -> host", probe(p["web"], self.gateway, self.host_port));
        check(
            "api -> world:443",
            probe(p["api"], self.world.ip, WORLD_PORT),
        );
        failed
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn netiso(args: &[&str]) -> Output {
    Command::new(netiso_bin()).args(args).output().unwrap()
}

/// Policy drops (not link chatter) involving the shop's containers.
fn policy_drops(daemon: &DaemonProc, names: &[String]) -> Vec<serde_json::Value> {
    let out = daemon.cli(&["stats", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            names
                .iter()
                .any(|n| f["src"] == n.as_str() || f["dst"] == n.as_str())
                && ["default-deny", "policy-deny", "revoked"]
                    .contains(&f["reason"].as_str().unwrap_or(""))
        })
        .cloned()
        .collect()
}

fn suggest(daemon: &DaemonProc, extra: &[&str]) -> Output {
    let mut args = vec!["policy", "suggest"];
    args.extend_from_slice(extra);
    daemon.cli(&args)
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn learn_suggest_enforce_replay() {
    let shop = start_shop();
    let tag = shop.env.tag.clone();
    let names: Vec<String> = ["web", "api", "db", "cache"]
        .iter()
        .map(|s| format!("{s}-{tag}"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "policy.toml",
        &format!(
            "# Learn what this test's containers do; allow everything meanwhile.\n\
             [groups.learning]\nlabels = {{ \"{TEST_LABEL}\" = \"{tag}\" }}\nlearn = true\n"
        ),
    );
    let mut daemon = DaemonProc::start(policy.clone());
    daemon.wait_for("the shop's veths in learn mode", |s| {
        names.iter().all(|n| {
            s.endpoints
                .iter()
                .any(|e| &e.container == n && e.learning && e.enforced)
        })
    });
    let failed = shop.workload();
    assert!(
        failed.is_empty(),
        "under learn mode (allow all): {failed:?}"
    );

    // The suggestion: one group per compose service, one rule per flow.
    let out = suggest(&daemon, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let suggestion = String::from_utf8(out.stdout).unwrap();
    eprintln!("suggested:\n{suggestion}");
    let file = write(dir.path(), "suggested.toml", &suggestion);
    let check = netiso(&["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("(4 groups, 5 rules, 0 warnings)"),
        "{}\n{suggestion}",
        text(&check)
    );
    let rule = |from: &str, to: &str, ports: &str| {
        format!("from = {from}\nto = {to}\nports = [\"{ports}\"]\naction = \"allow\"")
    };
    for expected in [
        rule("\"web\"", "\"api\"", "8080/tcp"),
        rule("\"api\"", "\"db\"", "5432/tcp"),
        rule("\"api\"", "\"cache\"", &format!("{CACHE_PORT}/udp")),
        rule("\"web\"", "\"host\"", &format!("{}/tcp", shop.host_port)),
        rule("\"api\"", &format!("\"{}/32\"", shop.world.ip), "443/tcp"),
    ] {
        assert!(
            suggestion.contains(&expected),
            "missing:\n{expected}\nin:\n{suggestion}"
        );
    }
    assert!(suggestion.contains("# 3 new flows"), "{suggestion}");

    // Enforce it; the same workload sees no drop.
    std::fs::write(&policy, &suggestion).unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = policy_drops(&daemon, &names);
    assert!(before.is_empty(), "{before:#?}");
    let failed = shop.workload();
    assert!(
        failed.is_empty(),
        "under the suggested policy: {failed:?}\n{suggestion}"
    );
    let drops = policy_drops(&daemon, &names);
    assert!(drops.is_empty(), "replay dropped: {drops:#?}");

    // What the workload never did is blocked now.
    let (p, ip) = (&shop.pids, &shop.ips);
    assert!(!probe(p["web"], ip["db"], 5432), "web -> db");
    assert!(!probe(p["db"], ip["api"], 8080), "db -> api");
    assert!(!probe(p["api"], ip["web"], 80), "api -> web");
    assert!(!probe(p["web"], shop.world.ip, WORLD_PORT), "web -> world");
    assert!(
        !udp_ok(p["web"], SocketAddr::from((ip["cache"], CACHE_PORT))),
        "web -> cache"
    );
    assert!(
        !policy_drops(&daemon, &names).is_empty(),
        "the blocked flows are counted"
    );

    // --against a policy without the cache rule: that rule, and only it.
    let cache_rule = format!(
        "from = \"api\"\nto = \"cache\"\nports = [\"{CACHE_PORT}/udp\"]\naction = \"allow\""
    );
    let cut_text = suggestion.replace(&cache_rule, &cache_rule.replace("allow", "deny"));
    assert_ne!(cut_text, suggestion);
    // A deny rule is not "fixed": report it, propose nothing.
    let cut = write(dir.path(), "cut.toml", &cut_text);
    let out = suggest(&daemon, &["--against", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied by rule"),
        "{}",
        text(&out)
    );
    // A missing rule is proposed, as a diff `patch -p0` applies (run
    // where the relative path given to --against is).
    write(
        dir.path(),
        "cut.toml",
        &remove_rule(&suggestion, &cache_rule),
    );
    let out = Command::new(netiso_bin())
        .current_dir(dir.path())
        .args(["policy", "suggest", "--against", "cut.toml", "--state-dir"])
        .arg(daemon.state_dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let diff = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(diff.matches("+[[rules]]").count(), 1, "{diff}");
    assert!(
        diff.contains(&format!("+ports = [\"{CACHE_PORT}/udp\"]")),
        "{diff}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of "),
        "{}",
        text(&out)
    );
    let patched = Command::new("patch")
        .current_dir(dir.path())
        .args(["-p0", "-i", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), diff.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(patched.status.success(), "{}", text(&patched));
    let again = Command::new(netiso_bin())
        .current_dir(dir.path())
        .args(["policy", "suggest", "--against", "cut.toml", "--state-dir"])
        .arg(daemon.state_dir.path())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(again.stdout.is_empty(), "{}", text(&again));
    let check = netiso(&["policy", "check", cut.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("0 warnings"),
        "{}",
        text(&check)
    );
}

/// `text` without the `[[rules]]` block (and its comment) whose body is
/// `body`.
fn remove_rule(text: &str, body: &str) -> String {
    let at = text.find(body).expect("rule present");
    let start = text[..at].rfind("[[rules]]").unwrap();
    let end = at + body.len();
    format!("{}{}", &text[..start], text[end..].trim_start_matches('\n'))
}

/// `policy suggest --record`: an empty record gives an empty valid policy;
/// a record of 20,000 flow rows (200 containers of 20 services, each
/// talking to 100 addresses beyond the host) gives a short one, at once.
#[test]
fn suggest_on_empty_and_big_records() {
    use netiso_daemon::observe::learned::{ContainerFacts, FlowRow, Record, SideRow};
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, serde_json::to_vec(&Record::default()).unwrap()).unwrap();
    let out = netiso(&["policy", "suggest", "--record", empty.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let policy = write(
        dir.path(),
        "empty.toml",
        &String::from_utf8_lossy(&out.stdout),
    );
    let check = netiso(&["policy", "check", policy.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("(0 groups, 0 rules, 0 warnings)"),
        "{}",
        text(&check)
    );

    let mut record = Record::default();
    for c in 0..200u32 {
        let service = format!("svc{}", c % 20);
        record.containers.insert(
            format!("big-{service}-{c}"),
            ContainerFacts {
                labels: [
                    ("com.docker.compose.project".to_string(), "big".to_string()),
                    ("com.docker.compose.service".to_string(), service),
                ]
                .into(),
                learned: true,
                ..ContainerFacts::default()
            },
        );
    }
    let names: Vec<String> = record.containers.keys().cloned().collect();
    for (i, n) in names.iter().enumerate() {
        for a in 0..100u32 {
            let [_, _, b, d] = (i as u32 * 100 + a).to_be_bytes();
            record.flows.push(FlowRow {
                from: SideRow::Container(n.clone()),
                to: SideRow::Address(std::net::IpAddr::from([198, 18, b, d])),
                proto: 6,
                port: 443,
                sent: 1,
                received: 0,
                first: 1_796_000_000,
                last: 1_796_000_000 + a as u64,
            });
        }
        let next = &names[(i + 1) % names.len()];
        record.flows.push(FlowRow {
            from: SideRow::Container(n.clone()),
            to: SideRow::Container(next.clone()),
            proto: 17,
            port: 5000 + (i % 7) as u16,
            sent: 3,
            received: 3,
            first: 1_796_000_000,
            last: 1_796_000_100,
        });
    }
    let big = dir.path().join("big.json");
    std::fs::write(&big, serde_json::to_vec(&record).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let out = netiso(&["policy", "suggest", "--record", big.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let suggestion = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "{} flow rows -> {} bytes, {} rules, in {took:?}",
        record.flows.len(),
        suggestion.len(),
        suggestion.matches("[[rules]]").count()
    );
    let policy = write(dir.path(), "big.toml", &suggestion);
    let check = netiso(&["policy", "check", policy.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("(20 groups, ")
            && String::from_utf8_lossy(&check.stdout).contains(" 0 warnings"),
        "{}",
        text(&check)
    );
    // One rule per service to what lies beyond the host (`world`, or at
    // most four /24 blocks where its 1,000 addresses fall in so few), not
    // 20,000 address rules.
    assert_eq!(
        suggestion.matches("ports = [\"443/tcp\"]").count(),
        20,
        "{suggestion}"
    );
    assert!(
        suggestion.matches("to = \"world\"").count() >= 10,
        "{suggestion}"
    );
    assert!(!suggestion.contains("/32"), "{suggestion}");
    assert!(suggestion.len() < 40_000, "{} bytes", suggestion.len());
}
