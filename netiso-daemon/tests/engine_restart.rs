//! The Docker engine restarted under a running daemon (its own test
//! binary: it stops and starts an engine).
//!
//! The engine is a second dockerd that this test starts the way
//! `cargo xtask setup` starts the system one (detached, in its own process
//! group, logging to a file), with its own socket, data and exec roots and
//! containerd namespace: restarting the system engine would stop every
//! other test's containers, and a test only ends processes it started. The
//! daemon under test talks to it through `DOCKER_HOST`, the engine
//! setting every Docker client honours.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netiso_testkit::docker::{image, require_docker, tcp_servers};
use netiso_testkit::ops::*;
use netiso_testkit::{sh, unique};

/// A throw-away dockerd; everything it made is removed on drop, and the
/// engine is stopped, even when the test fails.
struct Engine {
    tag: String,
    data_root: PathBuf,
    exec_root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// iptables rules to delete on drop (as `-D` arguments).
    rules: Vec<Vec<String>>,
    /// The engine's default bridge, made by this test (see `start`).
    default_bridge: String,
}

impl Engine {
    fn new() -> Self {
        require_docker();
        let tag = unique("nte");
        let data_root = PathBuf::from(format!("/var/lib/netiso-test-{tag}"));
        // Unix socket paths are limited to 108 bytes: keep the exec root short.
        let exec_root = PathBuf::from(format!("/run/{tag}"));
        std::fs::create_dir_all(&data_root).unwrap();
        Self {
            socket: PathBuf::from(format!("/run/{tag}.sock")),
            log: data_root.join("dockerd.log"),
            tag,
            data_root,
            exec_root,
            child: None,
            rules: Vec::new(),
            default_bridge: String::new(),
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Starts dockerd detached (own process group, stdin from /dev/null,
    /// output appended to the log) and waits until it answers.
    fn start(&mut self) -> Duration {
        let t = Instant::now();
        if self.default_bridge.is_empty() {
            // A default bridge of our own: `--bridge=none` would make this
            // engine delete the system engine's docker0 at start-up, and a
            // bridge named by `--bridge` must exist with its address.
            let bridge = format!("{}d", self.tag);
            let octet = 100 + std::process::id() % 100;
            sh(&format!(
                "ip link add {bridge} type bridge && ip addr add 10.253.{octet}.1/24 dev {bridge} && ip link set {bridge} up"
            ));
            self.default_bridge = bridge;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("dockerd")
            .arg(format!("--host={}", self.host()))
            .arg(format!(
                "--data-root={}",
                self.data_root.join("data").display()
            ))
            .arg(format!("--exec-root={}", self.exec_root.display()))
            .arg(format!(
                "--pidfile={}",
                self.data_root.join("d.pid").display()
            ))
            .arg(format!("--containerd-namespace={}", self.tag))
            .arg(format!("--containerd-plugins-namespace={}p", self.tag))
            // The system engine owns docker0 and the iptables chains.
            .arg(format!("--bridge={}", self.default_bridge))
            .args(["--iptables=false", "--ip6tables=false"])
            .arg("--shutdown-timeout=5")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start dockerd (docker.io installed?)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("docker")
                .args([
                    "-H",
                    &self.host(),
                    "version",
                    "-f",
                    "{{.Server.APIVersion}}",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return t.elapsed();
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({st}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < end,
                "dockerd did not answer within 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (what `systemctl restart docker` sends) and wait for the exit.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill takes integers only; `c` is our child and not yet
        // waited for, so its pid still names it (it cannot be reused).
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn docker(&self, args: &[&str]) -> String {
        docker_at(Some(&self.host()), args)
    }

    /// A bridge network with a fixed bridge name and a subnet of its own,
    /// and the FORWARD rule the engine (running without iptables) does not
    /// add: the host's FORWARD policy is DROP once the system engine runs.
    fn bridge_network(&mut self) -> String {
        let name = format!("{}-net", self.tag);
        let bridge = format!("{}b", self.tag);
        let octet = 100 + std::process::id() % 100;
        self.docker(&[
            "network",
            "create",
            "--subnet",
            &format!("10.252.{octet}.0/24"),
            "-o",
            &format!("com.docker.network.bridge.name={bridge}"),
            &name,
        ]);
        let rule: Vec<String> = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sh(&format!("iptables -w -I {}", rule.join(" ")));
        self.rules.push(rule);
        name
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.is_none() {
            // Bring it back to remove what it made (stopped containers).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start()));
        }
        if self.child.is_some() {
            let ids = docker_try(Some(&self.host()), &["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = docker_try(Some(&self.host()), &["rm", "-f", id]);
            }
            let _ = docker_try(Some(&self.host()), &["network", "prune", "-f"]);
        }
        self.stop();
        for r in &self.rules {
            let _ = Command::new("iptables")
                .arg("-w")
                .arg("-D")
                .args(r)
                .output();
        }
        // Anything still mounted below our roots (an engine that had to be
        // killed) goes first, lazily.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| {
                Path::new(m).starts_with(&self.data_root)
                    || Path::new(m).starts_with(&self.exec_root)
            })
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = std::fs::remove_file(&self.socket);
        if !self.default_bridge.is_empty() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.default_bridge])
                .output();
        }
    }
}

#[test]
fn engine_restart_reconnects_and_enforces_the_restarted_containers() {
    let docker0 = || {
        Command::new("ip")
            .args(["link", "show", "docker0"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let had_docker0 = docker0();
    let mut engine = Engine::new();
    let took = engine.start();
    println!("private engine answered after {took:?}");
    // A second engine must leave the system engine's bridge alone.
    assert_eq!(docker0(), had_docker0, "the private engine touched docker0");
    // The test image, from the system engine (nothing can be pulled).
    let img = image();
    sh(&format!(
        "docker save {img} | docker -H {} load -q",
        engine.host()
    ));
    let net = engine.bridge_network();
    let tag = engine.tag.clone();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &tag, CLIENT_SERVER);
    let run = |engine: &Engine, name: &str, role: &str, script: &str| {
        engine.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &net,
            "--restart",
            "always",
            "--stop-timeout",
            "1",
            "--label",
            &format!("netiso.test={tag}"),
            "--label",
            &format!("role={role}"),
            &img,
            "sh",
            "-c",
            script,
        ]);
    };
    let server = format!("server-{tag}");
    let client = format!("client-{tag}");
    run(&engine, &server, "server", &tcp_servers(&[8080, 9090]));
    run(&engine, &client, "client", "exec sleep 3600");

    let host = engine.host();
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]).env("DOCKER_HOST", &host);
    d.start();
    let s = d.wait_enforced(&[&server, &client]);
    let before = [ifindexes(&s, &server), ifindexes(&s, &client)];
    let check = |what: &str| {
        let ip = container_ip(Some(&host), &server, &net);
        let pid = container_pid(Some(&host), &client);
        assert!(
            eventually(pid, SocketAddr::from((ip, 8080)), true, 10),
            "{what}: client -> server:8080 must pass"
        );
        assert!(
            !tcp_from(pid, SocketAddr::from((ip, 9090))),
            "{what}: client -> server:9090 must be dropped"
        );
    };
    check("before the engine restart");

    // Stop the engine: the event stream breaks, the containers stop.
    engine.stop();
    let end = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("lost Docker") {
        assert!(
            Instant::now() < end,
            "the daemon never noticed:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon must keep running without an engine:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(2));

    // Start it again: the containers come back on new veths.
    let t = Instant::now();
    engine.start();
    let s = d.wait_for_secs(60, "both containers enforced on new veths", |s| {
        let now = [ifindexes(s, &server), ifindexes(s, &client)];
        now.iter()
            .zip(&before)
            .all(|(n, b)| !n.is_empty() && n.iter().all(|i| !b.contains(i)))
            && s.endpoints
                .iter()
                .filter(|e| e.container == server || e.container == client)
                .all(|e| e.enforced)
    });
    println!(
        "enforced again {:?} after the engine was started; endpoints {:?} -> {:?}",
        t.elapsed(),
        before,
        [ifindexes(&s, &server), ifindexes(&s, &client)]
    );
    check("after the engine restart");

    // The event stream works again: a new container is picked up.
    let late = format!("late-{tag}");
    run(&engine, &late, "server", &tcp_servers(&[8080, 9090]));
    d.wait_enforced(&[&late]);
    let ip = container_ip(Some(&host), &late, &net);
    let pid = container_pid(Some(&host), &client);
    assert!(eventually(pid, SocketAddr::from((ip, 8080)), true, 10));
    assert!(!tcp_from(pid, SocketAddr::from((ip, 9090))));
    let log = d.log();
    assert!(
        log.matches("listed running containers").count() >= 2,
        "a full resync after reconnecting:\n{log}"
    );
}
