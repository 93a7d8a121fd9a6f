//! Scenario tests: one example policy from `policies/`, the real daemon,
//! real containers, and the full reachability matrix between them.
//!
//! The policy file is narrowed to this test's containers before the daemon
//! reads it: every group gets an extra `netiso.test = <tag>` label, the
//! policy's network names map to the test's Docker network, and name
//! patterns get the test's suffix. Parallel tests (and other test binaries'
//! containers) are then never selected by another test's daemon.
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use toml_edit::{DocumentMut, Item, Value};

use crate::docker::{tcp_servers, DockerEnv};
use crate::{netiso_bin, run_in, sh, unique, DaemonProc, NetNs};

/// Label added to every group and container of one test run.
pub const TEST_LABEL: &str = "netiso.test";

/// One container of a scenario.
pub struct Member {
    /// Short name; the container is `<name>-<tag>`.
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    /// Whether the test expects some group of the policy to select it (then
    /// the daemon must attach programs to its veth).
    pub managed: bool,
}

pub fn member(
    name: &'static str,
    labels: &[(&'static str, &'static str)],
    managed: bool,
) -> Member {
    Member {
        name,
        labels: labels.to_vec(),
        managed,
    }
}

pub struct Running {
    pub full: String,
    pub ip: Ipv4Addr,
    pub pid: u32,
}

pub struct Scenario {
    /// Dropped first: containers go before the daemon and the network.
    pub members: BTreeMap<&'static str, Running>,
    pub daemon: DaemonProc,
    /// Held for its `Drop`: removes the containers and the network.
    pub env: DockerEnv,
    _dir: tempfile::TempDir,
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Rewrites `text` for one test run (see the module comment). Every
/// network the policy names must be in `networks`, so that a policy change
/// the test does not know about fails loudly instead of selecting nothing.
pub fn narrow(text: &str, tag: &str, networks: &BTreeMap<&str, String>) -> String {
    let mut doc: DocumentMut = text.parse().expect("the example policy is valid TOML");
    let groups = doc
        .get_mut("groups")
        .and_then(Item::as_table_like_mut)
        .expect("the example policy has groups");
    for (_, group) in groups.iter_mut() {
        let group = group.as_table_like_mut().expect("a group is a table");
        match group.get_mut("labels").and_then(Item::as_table_like_mut) {
            Some(labels) => {
                labels.insert(TEST_LABEL, toml_edit::value(tag));
            }
            None => {
                let mut labels = toml_edit::InlineTable::new();
                labels.insert(TEST_LABEL, tag.into());
                group.insert("labels", Item::Value(Value::InlineTable(labels)));
            }
        }
        rewrite_selector(group, tag, networks);
    }
    doc.to_string()
}

fn rewrite_selector(
    sel: &mut dyn toml_edit::TableLike,
    tag: &str,
    networks: &BTreeMap<&str, String>,
) {
    let map_value = |v: &mut Value, f: &dyn Fn(&str) -> String| match v {
        Value::String(s) => *v = Value::from(f(s.value())),
        Value::Array(a) => {
            for e in a.iter_mut() {
                let new = f(e.as_str().expect("a string"));
                *e = Value::from(new);
            }
        }
        _ => panic!("unexpected value {v}"),
    };
    if let Some(v) = sel.get_mut("network").and_then(Item::as_value_mut) {
        map_value(v, &|n| {
            networks
                .get(n)
                .unwrap_or_else(|| {
                    panic!("the test maps no Docker network to policy network {n:?}")
                })
                .clone()
        });
    }
    if let Some(v) = sel.get_mut("names").and_then(Item::as_value_mut) {
        map_value(v, &|n| format!("{n}-{tag}"));
    }
    for key in ["all", "any"] {
        match sel.get_mut(key) {
            Some(Item::Value(Value::Array(a))) => {
                for e in a.iter_mut() {
                    if let Value::InlineTable(t) = e {
                        rewrite_selector(t, tag, networks);
                    }
                }
            }
            Some(Item::ArrayOfTables(a)) => {
                for t in a.iter_mut() {
                    rewrite_selector(t, tag, networks);
                }
            }
            _ => {}
        }
    }
}

impl Scenario {
    /// Starts the daemon with `policies/<file>` (narrowed), then one
    /// container per member on one Docker network (every policy network
    /// in `policy_networks` maps to it), each serving `netiso-ok` on every
    /// port of `ports`; waits until the daemon enforces the managed ones
    /// and every server answers locally.
    pub fn start(
        file: &str,
        policy_networks: &[&str],
        members: Vec<Member>,
        ports: &[u16],
    ) -> Self {
        let mut env = DockerEnv::new();
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(policies_dir().join(file)).unwrap();
        let networks: BTreeMap<&str, String> = policy_networks
            .iter()
            .map(|n| (*n, env.network.clone()))
            .collect();
        let policy = dir.path().join(file);
        std::fs::write(&policy, narrow(&text, &env.tag, &networks)).unwrap();
        let mut daemon = DaemonProc::start(policy);

        let tag = env.tag.clone();
        let script = tcp_servers(ports);
        let mut started = Vec::new();
        for m in &members {
            let mut labels = m.labels.clone();
            labels.push((TEST_LABEL, tag.as_str()));
            let full = env.run(m.name, &labels, &script);
            started.push((m.name, full, m.managed));
        }
        daemon.wait_for("every container seen, the managed ones enforced", |s| {
            started.iter().all(|(_, full, managed)| {
                s.endpoints
                    .iter()
                    .any(|e| &e.container == full && e.enforced == *managed)
            })
        });
        let members: BTreeMap<&'static str, Running> = started
            .into_iter()
            .map(|(name, full, _)| {
                let running = Running {
                    ip: env.ip(&full),
                    pid: env.pid(&full),
                    full,
                };
                (name, running)
            })
            .collect();
        // Loopback never crosses the veth, so this sees the servers
        // themselves, whatever the policy says.
        for (name, r) in &members {
            for &port in ports {
                let up = (0..40).any(|_| {
                    probe(r.pid, Ipv4Addr::LOCALHOST, port) || {
                        std::thread::sleep(Duration::from_millis(100));
                        false
                    }
                });
                assert!(up, "{name}: no server on port {port}");
            }
        }
        Self {
            members,
            daemon,
            env,
            _dir: dir,
        }
    }

    pub fn get(&self, name: &str) -> &Running {
        self.members
            .get(name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Probes every ordered pair of distinct members on every port, in
    /// parallel, and compares with `expected(src, dst, port)`. Every
    /// mismatch is listed before the test fails.
    pub fn check_matrix(&self, ports: &[u16], expected: impl Fn(&str, &str, u16) -> bool + Sync) {
        let mut cases = Vec::new();
        for (src, s) in &self.members {
            for (dst, d) in &self.members {
                if src != dst {
                    for &port in ports {
                        cases.push((*src, s.pid, *dst, d.ip, port, expected(src, dst, port)));
                    }
                }
            }
        }
        let started = Instant::now();
        let results: Vec<(String, bool, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = cases
                .chunks(cases.len().div_ceil(32).max(1))
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&(src, pid, dst, ip, port, want)| {
                                // An allowed path gets a second chance (a
                                // slow fork of the server); a denied one
                                // must fail every time.
                                let tries = if want { 2 } else { 1 };
                                let got = (0..tries).any(|_| probe(pid, ip, port));
                                (format!("{src} -> {dst}:{port}"), want, got)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("probe thread"))
                .collect()
        });
        let wrong: Vec<String> = results
            .iter()
            .filter(|(_, want, got)| want != got)
            .map(|(what, want, _)| {
                format!(
                    "  {what}: expected {}, got {}",
                    if *want { "allowed" } else { "denied" },
                    if *want { "denied" } else { "allowed" }
                )
            })
            .collect();
        let allowed = results.iter().filter(|r| r.2).count();
        eprintln!(
            "{} probes ({allowed} allowed) in {:.1}s",
            results.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            wrong.is_empty(),
            "{} of {} probes disagree with the expected matrix:\n{}\ndaemon log:\n{}",
            wrong.len(),
            results.len(),
            wrong.join("\n"),
            self.daemon.log()
        );
    }

    /// `netiso explain ARGS` against this scenario's daemon state (and so
    /// its narrowed policy).
    pub fn explain(&self, args: &[&str]) -> Output {
        Command::new(netiso_bin())
            .arg("explain")
            .args(args)
            .arg("--state-dir")
            .arg(self.daemon.state_dir.path())
            .output()
            .expect("run netiso explain")
    }
}

/// From inside the network namespace of `pid`: connect to `ip:port` (1 s)
/// and read the `netiso-ok` greeting (1 s). A refused, timed-out or silent
/// connection is `false`.
pub fn probe(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    run_in(&PathBuf::from(format!("/proc/{pid}/ns/net")), move || {
        let addr = SocketAddr::from((ip, port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        greeted(&mut s)
    })
}

fn greeted(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 256 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.windows(9).any(|w| w == b"netiso-ok") {
            return true;
        }
    }
    false
}

/// Greets every connection to `listener` with `netiso-ok` until `stop`.
pub fn greet(listener: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = std::io::Write::write_all(&mut s, b"netiso-ok\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// "The world": a namespace behind a routed /30 from the host, with an
/// address in 198.19.0.0/16 (inside the 198.18.0.0/15 test range) and a
/// TCP server greeting `netiso-ok`. Containers reach it through Docker's
/// usual outbound path (forwarding and masquerading by the host).
pub struct World {
    /// Held for its `Drop`: deletes the namespace.
    pub ns: NetNs,
    pub host_if: String,
    pub ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl World {
    pub fn new(port: u16) -> Self {
        let ns = NetNs::new("w");
        // A /30 of its own per process and call: parallel tests and runs
        // never share a route.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 250;
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % 64;
        let base = Ipv4Addr::new(198, 19, n as u8, (k * 4) as u8);
        let [a, b, c, d] = base.octets();
        let (host_ip, world_ip) = (Ipv4Addr::new(a, b, c, d + 1), Ipv4Addr::new(a, b, c, d + 2));
        let host_if = unique("nwh");
        let peer = unique("nww");
        sh(&format!("ip link add {host_if} type veth peer name {peer}"));
        sh(&format!("ip link set {peer} netns {}", ns.name));
        sh(&format!(
            "ip addr add {host_ip}/30 dev {host_if} && ip link set {host_if} up"
        ));
        ns.sh(&format!(
            "ip addr add {world_ip}/30 dev {peer} && ip link set {peer} up"
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = ns.run(move || TcpListener::bind((world_ip, port)).unwrap());
        let server = greet(listener, stop.clone());
        Self {
            ns,
            host_if,
            ip: world_ip,
            stop,
            server: Some(server),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
