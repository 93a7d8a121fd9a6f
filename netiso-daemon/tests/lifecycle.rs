//! The daemon's life with the real Docker engine: killed and restarted
//! under traffic, containers that come and go while it is down, restarts,
//! network changes, reloads, drift, readiness, and containers it cannot
//! enforce. (The engine restart lives alone in `engine_restart.rs`.)

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netiso_testkit::docker::{image, require_docker, tcp_servers};
use netiso_testkit::ops::*;
use netiso_testkit::{sh, unique};

/// Containers and networks of one test on the system engine, removed on drop.
struct Scene {
    tag: String,
    network: String,
    networks: Vec<String>,
    containers: Vec<String>,
    links: Vec<String>,
}

impl Scene {
    fn new() -> Self {
        require_docker();
        let tag = unique("lc");
        let network = format!("netiso-{tag}");
        docker_at(None, &["network", "create", &network]);
        Self {
            tag,
            networks: vec![network.clone()],
            network,
            containers: Vec::new(),
            links: Vec::new(),
        }
    }

    fn name(&self, n: &str) -> String {
        format!("{n}-{}", self.tag)
    }

    /// `docker run -d` with the test label and a role; `extra` go before the
    /// image (e.g. `--network host`). Returns the container name.
    fn run(&mut self, n: &str, role: &str, extra: &[&str], script: &str) -> String {
        let name = self.name(n);
        self.containers.push(name.clone());
        let test_label = format!("netiso.test={}", self.tag);
        let role_label = format!("role={role}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &test_label,
            "--label",
            &role_label,
        ];
        if !extra.iter().any(|a| a.starts_with("--network")) {
            args.extend(["--network", &self.network]);
        }
        args.extend(extra);
        let img = image();
        args.extend([img.as_str(), "sh", "-c", script]);
        docker_at(None, &args);
        name
    }

    fn create_network(&mut self, suffix: &str, extra: &[&str]) -> String {
        let name = format!("netiso-{}{suffix}", self.tag);
        self.networks.push(name.clone());
        let mut args = vec!["network", "create"];
        args.extend(extra);
        args.push(&name);
        docker_at(None, &args);
        name
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker_try(None, &["rm", "-f", c]);
        }
        for n in self.networks.iter().rev() {
            let _ = docker_try(None, &["network", "rm", n]);
        }
        for l in &self.links {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", l])
                .output();
        }
    }
}

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// kill -9 under traffic: the denied connection never gets through, the
/// allowed one never breaks for longer than the restart (in fact not at
/// all: the pinned programs keep running), and a container started while
/// the daemon was down is enforced once it is back.
#[test]
fn kill9_and_restart_under_traffic() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &sc.tag, CLIENT_SERVER);
    let server = sc.run("server", "server", &[], &tcp_servers(&[8080, 9090]));
    let client = sc.run("client", "client", &[], "exec sleep 3600");
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]);
    d.start();
    d.wait_enforced(&[&server, &client]);
    let server_ip = container_ip(None, &server, &sc.network);
    let client_pid = container_pid(None, &client);
    assert!(
        eventually(client_pid, addr(server_ip, 8080), true, 10),
        "allowed path never worked:\n{}",
        d.log()
    );
    assert!(
        !tcp_from(client_pid, addr(server_ip, 9090)),
        "9090 is denied"
    );

    let ns = PathBuf::from(format!("/proc/{client_pid}/ns/net"));
    let every = Duration::from_millis(50);
    let allowed = Prober::spawn(&ns, addr(server_ip, 8080), every, true);
    let denied = Prober::spawn(&ns, addr(server_ip, 9090), every, false);
    std::thread::sleep(Duration::from_millis(700));

    let killed_at = allowed.start.elapsed();
    let t_kill = Instant::now();
    d.kill9();
    // While it is down: a new container in the server group appears.
    let late = sc.run("late", "server", &[], &tcp_servers(&[8080, 9090]));
    let late_ip = container_ip(None, &late, &sc.network);
    // Nobody enforces it yet: proof that what follows is the restart's doing.
    assert!(
        eventually(client_pid, addr(late_ip, 9090), true, 10),
        "a container started while the daemon is down is not enforced yet"
    );
    std::thread::sleep(Duration::from_millis(500));
    d.start();
    d.wait_enforced(&[&server, &client, &late]);
    let restart = t_kill.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let allowed = allowed.finish();
    let denied = denied.finish();

    let leaks: Vec<_> = denied.iter().filter(|(_, ok)| *ok).collect();
    assert!(
        leaks.is_empty(),
        "denied connection succeeded at {leaks:?} (kill at {killed_at:?})"
    );
    let denied_while_down = denied
        .iter()
        .filter(|(t, _)| *t > killed_at && *t < killed_at + restart)
        .count();
    assert!(
        denied_while_down >= 3,
        "too few denied attempts while the daemon was down: {denied_while_down}"
    );
    let outage = longest_outage(&allowed);
    let during: Vec<_> = allowed
        .iter()
        .filter(|(t, _)| *t > killed_at && *t < killed_at + restart)
        .collect();
    println!(
        "restart took {restart:?}; allowed path: {} attempts, longest outage {outage:?}; \
         {} attempts while the daemon was down, {} ok; denied: {} attempts, 0 ok",
        allowed.len(),
        during.len(),
        during.iter().filter(|(_, ok)| *ok).count(),
        denied.len()
    );
    assert!(
        outage <= restart,
        "the allowed path broke for {outage:?}, longer than the restart ({restart:?})"
    );
    assert!(
        during.iter().filter(|(_, ok)| *ok).count() >= during.len() / 2 && !during.is_empty(),
        "the allowed path must keep working while the daemon is down: {during:?}"
    );
    // The late container is enforced now.
    assert!(
        eventually(client_pid, addr(late_ip, 9090), false, 5),
        "late:9090 must be denied after the restart"
    );
    assert!(
        tcp_from(client_pid, addr(late_ip, 8080)),
        "late:8080 allowed"
    );
}

/// A restarted container (same name, new veth), a second network, a
/// disconnect and reconnect, and a rename: each one enforced or cleaned
/// up as it happens.
#[test]
fn restarts_networks_and_renames_follow_docker() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &sc.tag, CLIENT_SERVER);
    let second = sc.create_network("-b", &[]);
    let server = sc.run("server", "server", &[], &tcp_servers(&[8080, 9090]));
    let client = sc.run("client", "client", &[], "exec sleep 3600");
    docker_at(None, &["network", "connect", &second, &server]);
    docker_at(None, &["network", "connect", &second, &client]);
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]);
    d.start();
    let s = d.wait_for("both networks of both containers enforced", |s| {
        [&server, &client].iter().all(|c| {
            s.endpoints
                .iter()
                .filter(|e| &e.container == *c && e.enforced)
                .count()
                == 2
        })
    });
    let before = ifindexes(&s, &server);
    let client_pid = container_pid(None, &client);
    for net in [&sc.network, &second] {
        let ip = container_ip(None, &server, net);
        assert!(
            eventually(client_pid, addr(ip, 8080), true, 10),
            "{net}: 8080"
        );
        assert!(!tcp_from(client_pid, addr(ip, 9090)), "{net}: 9090 denied");
    }

    // Restart: new veths, same name.
    docker_at(None, &["restart", "-t", "0", &server]);
    let s = d.wait_for("the restarted server enforced on new veths", |s| {
        let now = ifindexes(s, &server);
        now.len() == 2
            && now.iter().all(|i| !before.contains(i))
            && s.endpoints
                .iter()
                .filter(|e| e.container == server)
                .all(|e| e.enforced)
    });
    let pins = d.pins.path.join("links");
    for old in &before {
        assert!(
            !pins.join(format!("{old}-from")).exists(),
            "the old veth's link pin is gone"
        );
    }
    let after = ifindexes(&s, &server);
    for net in [&sc.network, &second] {
        let ip = container_ip(None, &server, net);
        assert!(
            eventually(client_pid, addr(ip, 8080), true, 10),
            "{net}: 8080 after restart"
        );
        assert!(
            !tcp_from(client_pid, addr(ip, 9090)),
            "{net}: 9090 denied after restart"
        );
    }

    // Disconnect from the second network: that endpoint goes away.
    let second_ip = container_ip(None, &server, &second);
    docker_at(None, &["network", "disconnect", &second, &server]);
    d.wait_for("the disconnected endpoint removed", |s| {
        let eps: Vec<_> = s
            .endpoints
            .iter()
            .filter(|e| e.container == server)
            .collect();
        eps.len() == 1 && eps[0].network == sc.network
    });
    let gone: Vec<u32> = after
        .iter()
        .copied()
        .filter(|i| !ifindexes(&d.state(), &server).contains(i))
        .collect();
    assert_eq!(gone.len(), 1);
    assert!(!pins.join(format!("{}-from", gone[0])).exists());
    assert!(
        !tcp_from(client_pid, addr(second_ip, 8080)),
        "no longer on that network"
    );

    // Reconnect: enforced again.
    docker_at(None, &["network", "connect", &second, &server]);
    d.wait_for("the reconnected endpoint enforced", |s| {
        s.endpoints
            .iter()
            .filter(|e| e.container == server && e.enforced)
            .count()
            == 2
    });
    let ip = container_ip(None, &server, &second);
    assert!(
        eventually(client_pid, addr(ip, 8080), true, 10),
        "8080 after reconnect"
    );
    assert!(
        !tcp_from(client_pid, addr(ip, 9090)),
        "9090 denied after reconnect"
    );

    // Rename: the state follows, enforcement stays.
    let renamed = format!("{server}-renamed");
    sc.containers.push(renamed.clone());
    docker_at(None, &["rename", &server, &renamed]);
    d.wait_for("the renamed container listed under its new name", |s| {
        s.endpoints
            .iter()
            .any(|e| e.container == renamed && e.enforced)
            && !s.endpoints.iter().any(|e| e.container == server)
    });
    assert!(
        !tcp_from(client_pid, addr(ip, 9090)),
        "still denied after rename"
    );
}

/// `--network host`, `none`, `container:` and macvlan containers in a group
/// are listed as unenforceable with the reason, and logged once each.
#[test]
fn unenforceable_containers_are_reported_with_reasons() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &sc.tag, CLIENT_SERVER);
    // A veth as the macvlan network's parent: nothing leaves through it.
    let parent = unique("ntmv");
    sh(&format!(
        "ip link add {parent} type veth peer name {parent}p"
    ));
    sc.links.push(parent.clone());
    let octet = 100 + (std::process::id() % 100);
    let mv = sc.create_network(
        "-mv",
        &[
            "-d",
            "macvlan",
            "-o",
            &format!("parent={parent}"),
            "--subnet",
            &format!("10.251.{octet}.0/24"),
        ],
    );
    let sleep = "exec sleep 3600";
    let host = sc.run("host", "server", &["--network", "host"], sleep);
    let none = sc.run("none", "server", &["--network", "none"], sleep);
    let server = sc.run("server", "server", &[], sleep);
    let shared = sc.run(
        "shared",
        "server",
        &["--network", &format!("container:{server}")],
        sleep,
    );
    let macvlan = sc.run("mv", "server", &["--network", &mv], sleep);
    let mut d = Netiso::new(&[
        "--policy",
        policy.to_str().unwrap(),
        "--resync-interval",
        "1",
    ]);
    d.start();
    let names = [&host, &none, &shared, &macvlan];
    let s = d.wait_for("four unenforceable containers", |s| {
        names
            .iter()
            .all(|n| s.unenforceable.iter().any(|u| &u.container == *n))
    });
    let reason = |c: &str| {
        s.unenforceable
            .iter()
            .find(|u| u.container == c)
            .map(|u| u.reason.clone())
            .unwrap_or_else(|| panic!("{c} not reported: {:#?}", s.unenforceable))
    };
    assert!(
        reason(&host).contains("--network host"),
        "{}",
        reason(&host)
    );
    assert!(
        reason(&none).contains("--network none"),
        "{}",
        reason(&none)
    );
    assert!(
        reason(&shared).contains("container:"),
        "{}",
        reason(&shared)
    );
    assert!(reason(&macvlan).contains("macvlan"), "{}", reason(&macvlan));
    assert!(
        s.endpoints
            .iter()
            .any(|e| e.container == server && e.enforced),
        "the ordinary container is enforced"
    );
    assert_eq!(s.unenforceable.len(), 4, "{:#?}", s.unenforceable);
    // Several resyncs later, each was still logged only once.
    let t = s.last_resync;
    d.wait_for_secs(15, "two more resyncs", |s| s.last_resync >= t + 2);
    let log = d.log();
    for c in names {
        let n = log
            .lines()
            .filter(|l| l.contains("cannot be enforced") && l.contains(c.as_str()))
            .count();
        assert_eq!(n, 1, "{c} logged {n} times:\n{log}");
    }
}

/// Bad policies are rejected and the running one stays; good ones apply.
/// Through the file watcher first, then through SIGHUP. The outcome of the
/// last reload is published in the state. Also: READY=1 reaches systemd
/// only after the first full reconcile, STOPPING=1 on SIGTERM.
#[test]
fn reloads_bad_then_good_by_file_change_and_sighup() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &sc.tag, CLIENT_SERVER);
    let server = sc.run("server", "server", &[], &tcp_servers(&[8080, 9090]));
    let client = sc.run("client", "client", &[], "exec sleep 3600");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()])
        .env("NOTIFY_SOCKET", notify_path.to_str().unwrap());
    d.start();
    let mut buf = [0u8; 512];
    let n = notify
        .recv(&mut buf)
        .expect("no message to NOTIFY_SOCKET within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means the first full reconcile is done: both enforced already.
    let s = d.state();
    for c in [&server, &client] {
        assert!(
            s.endpoints.iter().any(|e| &e.container == c && e.enforced),
            "READY=1 before {c} was enforced: {msg}"
        );
    }
    let start = s.last_reload.clone().expect("last_reload published");
    assert!(start.ok && start.trigger == "start", "{start:?}");

    let server_ip = container_ip(None, &server, &sc.network);
    let client_pid = container_pid(None, &client);
    assert!(eventually(client_pid, addr(server_ip, 8080), true, 10));
    assert!(!tcp_from(client_pid, addr(server_ip, 9090)));

    // 1. A bad file: rejected by the watcher, the old policy stays.
    std::fs::write(
        &policy,
        CLIENT_SERVER
            .replace("@TAG@", &sc.tag)
            .replace("ports = [\"8080/tcp\"]", "ports = [\"80800/tcp\"]"),
    )
    .unwrap();
    let s = d.wait_for("the bad file rejected", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "file-change" && !r.ok)
    });
    let r = s.last_reload.unwrap();
    let err = r.error.unwrap_or_default();
    assert!(
        err.contains("policy.toml:") && err.contains("80800"),
        "{err}"
    );
    assert!(
        tcp_from(client_pid, addr(server_ip, 8080)),
        "old policy still allows 8080"
    );
    assert!(
        !tcp_from(client_pid, addr(server_ip, 9090)),
        "old policy still denies 9090"
    );

    // 2. A good file: applied, 9090 opens.
    std::fs::write(
        &policy,
        CLIENT_SERVER
            .replace("@TAG@", &sc.tag)
            .replace("[\"8080/tcp\"]", "[\"8080/tcp\", \"9090/tcp\"]"),
    )
    .unwrap();
    let s = d.wait_for("the good file applied", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "file-change" && r.ok)
    });
    assert!(s.last_reload.unwrap().generation > start.generation);
    assert!(
        eventually(client_pid, addr(server_ip, 9090), true, 5),
        "9090 allowed now"
    );

    // 3. The same through SIGHUP, with the watcher off.
    let st = d.stop();
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    d.args.push("--no-watch-policy".into());
    d.start();
    d.wait_enforced(&[&server, &client]);
    std::fs::write(&policy, "[groups.broken\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        d.state().last_reload.is_some_and(|r| r.trigger == "start"),
        "no reload without SIGHUP when the watcher is off"
    );
    d.signal(libc::SIGHUP);
    let s = d.wait_for("SIGHUP with a bad file rejected", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "sighup" && !r.ok)
    });
    assert!(s
        .last_reload
        .unwrap()
        .error
        .unwrap()
        .contains("policy.toml:1:"));
    assert!(
        tcp_from(client_pid, addr(server_ip, 9090)),
        "the running policy stays"
    );
    std::fs::write(&policy, CLIENT_SERVER.replace("@TAG@", &sc.tag)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("SIGHUP with a good file applied", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "sighup" && r.ok)
    });
    assert!(
        eventually(client_pid, addr(server_ip, 9090), false, 5),
        "9090 denied again"
    );
    let log = d.log();
    assert!(log.contains("policy rejected"), "the rejection is logged");
}

/// Drift repaired by the periodic resync: the links pinned for a container
/// removed behind the daemon's back come back at the next resync. The
/// interval comes from a configuration file (`--config`).
#[test]
fn periodic_resync_repairs_drift_with_interval_from_config() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &sc.tag, CLIENT_SERVER);
    let server = sc.run("server", "server", &[], &tcp_servers(&[8080, 9090]));
    let client = sc.run("client", "client", &[], "exec sleep 3600");
    let config = tmp.path().join("netiso.toml");
    // The control socket's place comes from the file too.
    let socket = tmp.path().join("ctl.sock");
    std::fs::write(
        &config,
        format!(
            "policy = {:?}\nresync_interval = 5\nlog_format = \"json\"\n\
             socket = {:?}\nmetrics_address = \"off\"\n",
            policy.to_str().unwrap(),
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut d = Netiso::new(&["--config", config.to_str().unwrap()]);
    d.start();
    d.wait_enforced(&[&server, &client]);
    let server_ip = container_ip(None, &server, &sc.network);
    let client_pid = container_pid(None, &client);
    assert!(eventually(client_pid, addr(server_ip, 8080), true, 10));
    assert!(!tcp_from(client_pid, addr(server_ip, 9090)));

    // Just after a resync, so that the next one is seconds away.
    let t = d.state().last_resync;
    let s = d.wait_for("a periodic resync", |s| s.last_resync > t);
    // Drift: detach every program by removing the link pins (both ends
    // judge a flow between two managed containers).
    let links = d.pins.path.join("links");
    let idx = ifindexes(&s, &server)[0];
    for c in [&server, &client] {
        for i in ifindexes(&s, c) {
            for dir in ["from", "to"] {
                std::fs::remove_file(links.join(format!("{i}-{dir}"))).unwrap();
            }
        }
    }
    let drifted = Instant::now();
    // The TCP handshake alone (no greeting): the kernel answers at once
    // even on a loaded machine.
    let to = addr(server_ip, 9090);
    let open = once_in(client_pid, move || {
        tcp_try(to, Duration::from_millis(1500), false)
    });
    assert!(
        open,
        "without its programs the server is open (the drift is real); {:?} after the removal, \
         last resync {} s ago:\n{}",
        drifted.elapsed(),
        unix_secs() - d.state().last_resync,
        d.log()
    );
    assert!(
        eventually(client_pid, addr(server_ip, 9090), false, 12),
        "the periodic resync did not repair the drift:\n{}",
        d.log()
    );
    println!("drift repaired after {:?}", drifted.elapsed());
    let ft = std::fs::metadata(&socket).unwrap().file_type();
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&ft),
        "the control socket is where the configuration file put it"
    );
    // log_format = "json" from the same file: one JSON object per line.
    let log = d.log();
    let mut resyncs = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "listed running containers" {
            resyncs += 1;
        }
    }
    assert!(resyncs >= 2, "JSON log lacks the resyncs:\n{log}");
    assert!(links.join(format!("{idx}-from")).exists());
    assert!(tcp_from(client_pid, addr(server_ip, 8080)));
}

/// A configuration file with a mistake stops the daemon before it does
/// anything, naming file, line and column.
#[test]
fn bad_config_file_is_reported_with_its_place() {
    netiso_testkit::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("netiso.toml");
    std::fs::write(&config, "policy = \"/x.toml\"\nresync_intervall = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netiso"))
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown field `resync_intervall`",
            config.display()
        )),
        "{err}"
    );
    let missing = tmp.path().join("nope.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netiso"))
        .args(["daemon", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fail-closed group: a new veth on its network drops everything from
/// the moment it joins the bridge until its container is classified. A
/// veth no container owns stays held (counted as `fail-closed` drops); a
/// reload without `fail_closed` releases it; containers are classified
/// into their own policy (held first), and one in no group is released.
#[test]
fn fail_closed_network_holds_new_veths_until_classified() {
    let mut sc = Scene::new();
    let tmp = tempfile::tempdir().unwrap();
    // The fail-closed network is created while the daemon runs (the
    // daemon learns its bridge from Docker's network create event).
    let net = format!("netiso-{}-fc", sc.tag);
    let body = |fail_closed: bool| {
        format!(
            r#"
[groups.vault]
network = "{net}"
labels = {{ "netiso.test" = "@TAG@", "role" = "vault" }}
ingress = "deny"
fail_closed = {fail_closed}

[groups.client]
labels = {{ "netiso.test" = "@TAG@", "role" = "client" }}

[[rules]]
from = "client"
to = "vault"
ports = ["8080/tcp"]
action = "allow"
"#,
            net = net
        )
    };
    let policy = write_policy(tmp.path(), &sc.tag, &body(true));
    let client = sc.run("client", "client", &[], &tcp_servers(&[8080]));
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]);
    d.start();
    d.wait_enforced(&[&client]);
    assert_eq!(sc.create_network("-fc", &[]), net);
    docker_at(None, &["network", "connect", &net, &client]);
    d.wait_for("the client on both networks", |s| {
        s.endpoints
            .iter()
            .filter(|e| e.container == client && e.enforced)
            .count()
            == 2
    });
    let client_ip = container_ip(None, &client, &net);

    // A veth no container owns, joined to the network's bridge, its other
    // end in a namespace of ours with an address of the network.
    let net_id = docker_at(None, &["network", "inspect", "-f", "{{.Id}}", &net]);
    let bridge = format!("br-{}", &net_id[..12]);
    let subnet = docker_at(
        None,
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            &net,
        ],
    );
    let base: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    let o = base.octets();
    let stray_ip = std::net::Ipv4Addr::new(o[0], o[1], o[2], 250);
    let prefix = subnet.split('/').nth(1).unwrap();
    let ns = netiso_testkit::NetNs::new("fc");
    let veth = unique("ntfc");
    sc.links.push(veth.clone());
    sh(&format!("ip link add {veth} type veth peer name {veth}p"));
    sh(&format!("ip link set {veth}p netns {}", ns.name));
    ns.sh(&format!(
        "ip addr add {stray_ip}/{prefix} dev {veth}p && ip link set {veth}p up"
    ));
    sh(&format!("ip link set {veth} master {bridge} up"));
    let s = d.wait_for("the stray veth held", |s| {
        s.held.iter().any(|h| h.ifname == veth)
    });
    let held = s.held.iter().find(|h| h.ifname == veth).unwrap().clone();
    assert_eq!(held.network, net);
    assert!(
        d.pins
            .path
            .join(format!("links/{}-from", held.ifindex))
            .exists(),
        "programs attached to the held veth"
    );
    let to = addr(client_ip, 8080);
    let ns_path = ns.path();
    let reach = || {
        netiso_testkit::run_in(&ns_path, move || {
            tcp_try(to, Duration::from_millis(700), true)
        })
    };
    assert!(!reach(), "a held veth must not reach anything");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netiso"))
        .args(["stats", "--json", "--pin-dir"])
        .arg(&d.pins.path)
        .arg("--state-dir")
        .arg(d.state_dir.path())
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(
        stats.contains("fail-closed"),
        "fail-closed drops counted:\n{stats}"
    );

    // Containers on the network: one in the fail-closed group, one in none.
    let on_net = ["--network", net.as_str()];
    let vault = sc.run("vault", "vault", &on_net, &tcp_servers(&[8080, 9090]));
    let other = sc.run("other", "other", &on_net, &tcp_servers(&[8080]));
    let s = d.wait_for("vault classified, other released", |s| {
        s.endpoints
            .iter()
            .any(|e| e.container == vault && e.enforced)
            && s.endpoints
                .iter()
                .any(|e| e.container == other && !e.enforced)
            && s.held.len() == 1
    });
    let vault_if = s
        .endpoints
        .iter()
        .find(|e| e.container == vault)
        .and_then(|e| e.ifname.clone())
        .unwrap();
    let other_if = s
        .endpoints
        .iter()
        .find(|e| e.container == other)
        .and_then(|e| e.ifname.clone())
        .unwrap();
    let log = d.log();
    for ifname in [&vault_if, &other_if] {
        assert!(
            log.lines()
                .any(|l| l.contains("holding a new veth") && l.contains(ifname.as_str())),
            "{ifname} was not held before classification:\n{log}"
        );
    }
    let client_pid = container_pid(None, &client);
    let vault_ip = container_ip(None, &vault, &net);
    let other_ip = container_ip(None, &other, &net);
    assert!(
        eventually(client_pid, addr(vault_ip, 8080), true, 10),
        "vault's rule applies"
    );
    assert!(
        !tcp_from(client_pid, addr(vault_ip, 9090)),
        "vault's default applies"
    );
    assert!(
        eventually(client_pid, addr(other_ip, 8080), true, 10),
        "other released"
    );
    assert!(!reach(), "the stray veth is still held");

    // The policy no longer asks for fail-closed: the hold ends.
    std::fs::write(&policy, body(false).replace("@TAG@", &sc.tag)).unwrap();
    d.wait_for("the hold released by the reload", |s| {
        s.held.is_empty()
            && s.last_reload
                .as_ref()
                .is_some_and(|r| r.ok && r.trigger != "start")
    });
    let end = Instant::now() + Duration::from_secs(10);
    while !reach() {
        assert!(
            Instant::now() < end,
            "the released veth never reached the client"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
