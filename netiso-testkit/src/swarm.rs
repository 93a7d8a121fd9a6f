//! A Docker Swarm of 2 or 3 engine "nodes" on this one machine, for tests
//! of netiso across nodes (`Swarm`, `Node`). Each node is a network
//! namespace plus a `dockerd` of its own (own data-root, exec-root, socket,
//! engine ID, hostname = node name) in a private mount namespace; the nodes
//! reach each other through a bridge in a private hub namespace, on
//! addresses from 198.18.0.0/15, with no route anywhere else. The test image
//! is copied in from the main engine (`docker save`, `docker load`: there is
//! no registry). `Drop` removes everything, also after a panic. A node
//! also runs the tests' netiso daemon and their probes (`Node::daemon`,
//! `Node::send_tcp`, `Node::received` with the [`RECEIVER`] script), one
//! copy for every swarm test. Uses ns (unique names, `sh`, root check),
//! docker (the test image, `tcp_servers` scripts of the tests), daemon and
//! serde_json.
//!
//! How a node is started (see `shared/swarm.md`): `setsid unshare -m
//! --propagation slave --uts sh -c "mount --rbind /sys/fs/cgroup STASH &&
//! exec nsenter --net=NETNS sh -c 'mount -t sysfs … && mount --rbind STASH
//! /sys/fs/cgroup && umount -l STASH && hostname NODE && exec dockerd …'"`.
//! Every shell and tool in that chain `exec`s the next, so the pid of the
//! spawned child *is* dockerd's (checked against its `--pidfile`).
//!
//! What was learned building it (not in `swarm.md`):
//! - The overlay namespace is reachable only as
//!   `/proc/<dockerd pid>/root/<exec-root>/netns/1-<10 chars of the network
//!   id>`: the same path seen from the host's mount namespace is the plain
//!   empty file the bind mount sits on (`setns` fails with `EINVAL`),
//!   because the node's mounts do not propagate back (`--propagation
//!   slave`). It is not in `/run/netns`, so `ip -n` cannot name it:
//!   `nsenter --net=<path>` or netlink after `setns` (as
//!   `host::netlink::links_in_netns` does).
//! - The overlay namespace appears on a node with the network's first
//!   local endpoint (a task or a plain `docker run --network`), not when
//!   the network is created, not even on the manager; it stayed after that
//!   endpoint was removed (the node's `lb_<id>` endpoint keeps it).
//! - It holds `br0`, `vxlan0` and one veth per local endpoint: that of
//!   each container *and* that of the node's `lb_<id>` load-balancer
//!   sandbox (there even when every service is `dnsrr`, and for plain
//!   containers); the lb's is `veth0`, the first container's `veth1`.
//! - `network inspect --verbose` answers the gossip only on a node with a
//!   local endpoint of the network: elsewhere (the manager included)
//!   `.Services` is `null`. A plain attached container is listed under the
//!   service `""` with its container name.
//! - A task's overlay interface is `eth0` and its `docker_gwbridge` one
//!   `eth1`; `docker inspect` lists only the overlay under
//!   `.NetworkSettings.Networks` (keyed by the network's name: for a stack,
//!   `<stack>_<network>`).
//! - Without address pools of its own, `docker_gwbridge` takes 172.17.0.0/16
//!   (there is no docker0) and the swarm's `ingress` 10.0.0.0/24. Here the
//!   engines' local pools are `198.19.X.0/25` and the swarm's
//!   `198.19.X.128/25` (X = [`Swarm::octet`]), so a test may pick any 10.x
//!   subnet for its overlays.
//! - `swarm leave --force` removes the node's task containers and overlay
//!   networks (0.5–1.3 s); dockerd then stops on SIGTERM in 0.1–1.2 s.
//!   `--cgroup-parent` directories (one per cgroup controller) stay behind
//!   and are removed here.
//! - When dockerd dies by SIGKILL, its containerd, the shims and the
//!   containers' processes live on (orphans, in the node's namespace and
//!   cgroups), and the shims' sockets are in the host-wide
//!   `/run/containerd/s/`; `Drop` kills them by pid, waits until init has
//!   reaped them (a killed orphan leaves `cgroup.procs` before `/proc`), and
//!   removes those sockets (found in the node namespace's
//!   `/proc/<pid>/net/unix`).
//! - The whole 3-node swarm (namespaces, engines, image, init, joins) comes
//!   up in about 2–3 s and goes away in about 3 s on a 2-core machine
//!   (with 2 managers: 3 s and 4 s); a `dnsrr` task is Running about 2 s
//!   after `service create`.
//! - The docker CLI here is newer (28.x) than the engines (20.10, API 1.41);
//!   `stack deploy` warns that `--detach=false` will become the default.
//! - While a swarm runs, `cargo xtask setup` sees its dockerd processes and
//!   waits for "the" engine instead of starting the main one.
//!
//! Host-visible state of a swarm: the namespaces' `/run/netns/<name>`
//! mounts (made by `ip netns add`), the processes, the temp dir, and the
//! cgroups under `--cgroup-parent=/netiso-<node>`; every other mount lives
//! in the nodes' private mount namespaces and goes with their processes.
//! If the test process is killed (SIGKILL, Ctrl-C), `Drop` does not run:
//! `ip netns list`, `ps aux | grep netiso-swarm-` show what is left.
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{daemon_command, netiso_bin, DaemonProc};
use crate::docker::image;
use crate::{require_root, sh, unique};

/// How long an engine may take to answer after it was started.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Every docker CLI call is bounded by this (`timeout`).
const CLI_TIMEOUT_SECS: u32 = 120;
/// How long every node may take to show as Ready on the manager.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The port [`RECEIVER`] listens on.
pub const RECEIVER_PORT: u16 = 8080;

/// A task's script (for [`Swarm::service_on`], [`Node::run`]) that records
/// what every connection to [`RECEIVER_PORT`] sends in `/tmp/got`, read
/// back by [`Node::received`]: tests judge reachability by the markers a
/// receiver got ([`Node::send_tcp`]), not by the sender's exit code. No
/// `'`: scripts run in `sh -c '…'`.
pub const RECEIVER: &str =
    "printf \"#!/bin/sh\\ncat >> /tmp/got\\n\" > /tmp/h && chmod +x /tmp/h && \
     (nc -ll -p 8080 -e /tmp/h &) && exec sleep 3600";

/// One engine of the swarm.
pub struct Node {
    /// The node's name: its network namespace's name (`ip netns`), its
    /// hostname (so `--constraint node.hostname==<name>` pins to it) and the
    /// swarm's node name.
    pub name: String,
    /// Its address on the link between the nodes (198.18.X.(index+1)).
    pub addr: Ipv4Addr,
    /// Its place in [`Swarm::nodes`].
    pub index: usize,
    /// Whether it joined as a manager (node 0 always is).
    pub manager: bool,
    dir: PathBuf,
    child: Option<Child>,
    pid: u32,
}

/// A task or container of an overlay network as a node's engine knows it
/// (`docker network inspect --verbose`): local and remote ones (gossip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayEndpoint {
    /// The service name (`""` for a plain container that is not a task).
    pub service: String,
    /// The task's (container's) name.
    pub name: String,
    pub ip: Ipv4Addr,
    /// The address of the node the endpoint is on.
    pub host_ip: Ipv4Addr,
}

impl Node {
    /// The node's Unix socket (its `-H`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The node's own directory (data-root, exec-root, log, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine's `--exec-root`.
    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    /// The engine's log (stdout and stderr of dockerd).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The pid of this node's dockerd (a child of the test process).
    pub fn dockerd_pid(&self) -> u32 {
        self.pid
    }

    /// The node's network namespace (where dockerd, containerd,
    /// `docker_gwbridge` and the VXLAN sockets live).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespace of overlay network `network_id` (full or at least 10
    /// characters) on this node, as the host's mount namespace reaches it:
    /// through dockerd's root, since the bind mount is only in dockerd's
    /// mount namespace. It exists once the network has a local endpoint.
    pub fn overlay_netns_path(&self, network_id: &str) -> PathBuf {
        assert!(
            network_id.len() >= 10,
            "overlay_netns_path wants the network's id, got {network_id:?}"
        );
        let inside = self
            .exec_root()
            .join("netns")
            .join(format!("1-{}", &network_id[..10]));
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(inside.strip_prefix("/").unwrap())
    }

    /// The docker CLI against this node: `docker -H unix://<sock> ARGS`
    /// through `sh -c` (so ARGS may quote), bounded in time.
    pub fn docker(&self, args: &str) -> Output {
        self.try_docker(args).expect("spawn sh")
    }

    fn try_docker(&self, args: &str) -> std::io::Result<Output> {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "timeout -k 5 {CLI_TIMEOUT_SECS} docker -H unix://{} {args}",
                self.socket().display()
            ))
            .stdin(Stdio::null())
            .output()
    }

    /// Like [`docker`](Self::docker); panics unless it succeeds. Returns
    /// its stdout, trimmed.
    pub fn docker_ok(&self, args: &str) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "`docker {args}` on {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `sh -c cmd` inside the node's network namespace (not its mount
    /// namespace: the host's files); panics unless it succeeds.
    pub fn sh(&self, cmd: &str) -> Output {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .args(["sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter");
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `docker exec CONTAINER sh -c SCRIPT` on this node: whether it exited
    /// 0, and its output (stdout, then stderr). SCRIPT has no `'`.
    pub fn exec(&self, container: &str, script: &str) -> (bool, String) {
        assert!(
            !script.contains('\''),
            "script with a single quote: {script}"
        );
        let out = self.docker(&format!("exec {container} sh -c '{script}'"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A container of the test image on this node, attached to `network`
    /// (an attachable overlay, say), running `script` under sh. Returns
    /// its full id; [`Drop`] of the swarm removes it.
    pub fn run(&self, name: &str, network: &str, script: &str) -> String {
        assert!(
            !script.contains('\''),
            "script with a single quote: {script}"
        );
        self.docker_ok(&format!(
            "run -d --name {name} --network {network} {} sh -c '{script}'",
            image()
        ))
    }

    /// The main process of a container on this node, as a host pid (the
    /// nodes share the host's pid namespace).
    pub fn container_pid(&self, container: &str) -> u32 {
        let pid = self.docker_ok(&format!("inspect -f '{{{{.State.Pid}}}}' {container}"));
        pid.parse()
            .unwrap_or_else(|_| panic!("pid of {container} on {}: {pid:?}", self.name))
    }

    /// A container's address on `network` (its name as the container sees
    /// it: `<stack>_<net>` for a stack's network).
    pub fn container_ip(&self, container: &str, network: &str) -> Ipv4Addr {
        let ip = self.docker_ok(&format!(
            "inspect -f '{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}' {container}"
        ));
        ip.parse().unwrap_or_else(|_| {
            panic!(
                "address of {container} on {network} (node {}): {ip:?}",
                self.name
            )
        })
    }

    /// A container's MAC on `network`.
    pub fn container_mac(&self, container: &str, network: &str) -> [u8; 6] {
        let mac = self.docker_ok(&format!(
            "inspect -f '{{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}' {container}"
        ));
        parse_mac(&mac).unwrap_or_else(|| {
            panic!(
                "MAC of {container} on {network} (node {}): {mac:?}",
                self.name
            )
        })
    }

    /// The endpoints of an overlay network this node's engine knows of,
    /// local and remote (`docker network inspect --verbose`: the gossip).
    pub fn overlay_endpoints(&self, network: &str) -> Vec<OverlayEndpoint> {
        let json = self.docker_ok(&format!(
            "network inspect --verbose --format '{{{{json .Services}}}}' {network}"
        ));
        parse_verbose_services(&json).unwrap_or_else(|e| {
            panic!(
                "network inspect --verbose {network} on {}: {e}: {json}",
                self.name
            )
        })
    }

    /// `netiso` in this node's network namespace, on its engine
    /// (`DOCKER_HOST`): a node's daemon sees only its own engine and
    /// links. nsenter execs netiso, so the pid is the daemon's (what
    /// [`DaemonProc`] kills).
    pub fn netiso(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .arg(netiso_bin())
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()));
        cmd
    }

    /// The flags of this node's daemon: the engine's exec-root as the host
    /// reaches it (through dockerd's root: the node's mounts do not
    /// propagate back), no metrics endpoint, no periodic resync (so what a
    /// test sees comes from events and gossip, not a resync's repair).
    pub fn daemon_flags(&self) -> Vec<String> {
        let exec_root = PathBuf::from(format!("/proc/{}/root", self.pid))
            .join(self.exec_root().strip_prefix("/").unwrap());
        [
            "--docker-exec-root",
            &exec_root.display().to_string(),
            "--metrics-addr",
            "off",
            "--resync-interval",
            "0",
        ]
        .map(String::from)
        .to_vec()
    }

    /// A netiso daemon for this node ([`netiso`](Self::netiso),
    /// [`daemon_flags`](Self::daemon_flags)) on `policy`; killed on drop.
    pub fn daemon(&self, policy: PathBuf) -> DaemonProc {
        let flags = self.daemon_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        DaemonProc::start_program(self.netiso(), policy, &flags)
    }

    /// Kills `d`'s process (by its pid) and starts another on the same
    /// pins, state and policy, its log appended to the old one: what a
    /// restart of the service does.
    pub fn restart_daemon(&self, d: &mut DaemonProc) {
        let _ = d.child.kill();
        let _ = d.child.wait();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(d.state_dir.path().join("daemon.log"))
            .expect("the daemon's log");
        let mut args = vec!["--policy".to_string(), d.policy_path.display().to_string()];
        args.extend(self.daemon_flags());
        d.child = daemon_command(self.netiso(), &d.pins.path, d.state_dir.path(), &args, &log)
            .spawn()
            .expect("restart netiso daemon");
    }

    /// `from` (a container on this node) sends `marker` to `ip:port` over
    /// TCP (`nc -w 2`), whatever comes of it: a [`RECEIVER`] there records
    /// it if it arrives.
    pub fn send_tcp(&self, from: &str, ip: impl std::fmt::Display, port: u16, marker: &str) {
        self.exec(
            from,
            &format!("echo {marker} | nc -w 2 {ip} {port} >/dev/null 2>&1; true"),
        );
    }

    /// What the [`RECEIVER`] `container` on this node got so far.
    pub fn received(&self, container: &str) -> String {
        self.exec(container, "cat /tmp/got 2>/dev/null; true").1
    }

    /// The last `n` lines of the engine's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the engine answers `GET /_ping` (bounded); panics with
    /// the log's tail if it does not, or if dockerd exits.
    fn wait_ready(&mut self) {
        let t = Instant::now();
        loop {
            if ping(&self.socket()) {
                let pidfile = fs::read_to_string(self.dir.join("dockerd.pid")).unwrap_or_default();
                assert_eq!(
                    pidfile.trim(),
                    self.pid.to_string(),
                    "dockerd of node {} is not the process spawned (the exec chain forked)",
                    self.name
                );
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "dockerd of node {} exited ({status}) before answering; its log ({}):\n{}",
                        self.name,
                        self.log_path().display(),
                        self.log_tail(40)
                    );
                }
            }
            if t.elapsed() > ENGINE_TIMEOUT {
                panic!(
                    "dockerd of node {} (pid {}) does not answer on {} after {:?}; its log ({}):\n{}",
                    self.name,
                    self.pid,
                    self.socket().display(),
                    ENGINE_TIMEOUT,
                    self.log_path().display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `swarm leave --force` if dockerd still runs (it removes the node's
    /// task containers and overlays). Never panics.
    fn leave(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = self.try_docker("swarm leave --force");
            }
        }
    }

    /// Stops this node: removes its containers, stops dockerd (SIGTERM,
    /// bounded wait, SIGKILL), kills what is left of its processes (by
    /// pid: those in its network namespace and in its cgroups) and removes
    /// its cgroups. Never panics.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            self.sweep();
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            if let Ok(ids) = self.try_docker("ps -aq") {
                let ids = String::from_utf8_lossy(&ids.stdout).replace('\n', " ");
                if !ids.trim().is_empty() {
                    let _ = self.try_docker(&format!("rm -f {ids}"));
                }
            }
            // SAFETY: kill only sends a signal to our own child, whose pid
            // cannot have been reused (it is not reaped yet).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            let t = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "swarm: dockerd of {} (pid {}) still runs {STOP_TIMEOUT:?} after SIGTERM: SIGKILL",
                    self.name, self.pid
                );
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        self.sweep();
    }

    /// Kills (SIGKILL, by pid) what is left of the node's processes —
    /// containerd, shims (in the node's network namespace) and container
    /// processes (in its cgroups) — and removes its cgroups.
    fn sweep(&self) {
        let cgroups = cgroup_dirs(&self.cgroup_parent());
        // Sockets the node's processes bound outside the node's directory
        // (containerd shims: /run/containerd/s/<hash>), read from the
        // node's own netns (a shim left running after dockerd died is the
        // only one to bind them); removed once the processes are gone.
        let mut sockets = Vec::new();
        let mut killed = Vec::new();
        for round in 0..20 {
            let mut pids = pids_in_netns(&self.netns_path());
            if round == 0 {
                if let Some(p) = pids.first() {
                    sockets = unix_sockets_under(*p, "/run/containerd/s/");
                }
            }
            for dir in &cgroups {
                pids.extend(pids_in_cgroup(dir));
            }
            pids.sort_unstable();
            pids.dedup();
            pids.retain(|&p| p != std::process::id());
            if pids.is_empty() {
                break;
            }
            if round == 0 {
                eprintln!(
                    "swarm: killing leftover processes of {}: {pids:?}",
                    self.name
                );
            }
            for p in pids {
                // SAFETY: kill only sends a signal; the pid was just read
                // from this node's own namespace or cgroup.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
                killed.push(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A killed orphan leaves its namespace and cgroup at once but stays
        // a zombie until init reaps it: wait (bounded) until it is gone.
        let t = Instant::now();
        while killed
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for path in sockets {
            let _ = fs::remove_file(path);
        }
        for _ in 0..20 {
            let mut left = false;
            for dir in &cgroups {
                // Deepest first: a cgroup goes only once it has no children.
                let mut all = Vec::new();
                walk_dirs(dir, &mut all);
                all.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                for d in all {
                    let _ = fs::remove_dir(&d);
                }
                left |= dir.exists();
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's `--cgroup-parent`.
    pub fn cgroup_parent(&self) -> String {
        format!("/netiso-{}", self.name)
    }
}

/// Held by a test for as long as its swarm lives: one swarm at a time per
/// test binary. Each swarm runs two or three engines; several at once on a
/// small machine slow each other's gossip and IPAM past the tests' bounds
/// (seen: IPv6 overlay addresses refused for half a minute, cross-node
/// frames not delivered for 20 s).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A swarm of 2 or 3 nodes; everything it made is removed on drop.
pub struct Swarm {
    /// The unique tag its names are made from.
    pub tag: String,
    /// X of 198.18.X.0/24 (the nodes' link) and 198.19.X.0/24 (the
    /// engines' address pools).
    pub octet: u8,
    /// Node 0 is the manager that created the swarm.
    pub nodes: Vec<Node>,
    dir: PathBuf,
    hub: String,
    /// Namespaces made so far (the hub and the nodes'), deleted on drop.
    namespaces: Vec<String>,
}

impl Swarm {
    /// A swarm of `n_nodes` (2 or 3) engines: node 0 the manager, the
    /// others workers.
    pub fn new(n_nodes: usize) -> Self {
        Self::with_managers(n_nodes, 1)
    }

    /// Like [`new`](Self::new) with nodes `0..n_managers` managers.
    /// (Several managers need a quorum: tearing such a swarm down is slower.)
    pub fn with_managers(n_nodes: usize, n_managers: usize) -> Self {
        Self::build(n_nodes, n_managers, None)
    }

    /// Like [`new`](Self::new), the overlays' VXLAN on UDP `port`
    /// (`docker swarm init --data-path-port`).
    pub fn with_data_path_port(n_nodes: usize, port: u16) -> Self {
        Self::build(n_nodes, 1, Some(port))
    }

    fn build(n_nodes: usize, n_managers: usize, data_path_port: Option<u16>) -> Self {
        assert!(
            (2..=3).contains(&n_nodes),
            "a swarm of 2 or 3 nodes, not {n_nodes}"
        );
        assert!((1..=n_nodes).contains(&n_managers));
        require_root();
        crate::docker::require_docker();
        let tag = unique("sw");
        let octet = octet_of(&tag);
        let dir = std::env::temp_dir().join(format!("netiso-swarm-{tag}"));
        fs::create_dir_all(&dir).expect("swarm temp dir");
        let mut swarm = Swarm {
            hub: format!("{tag}h"),
            tag,
            octet,
            nodes: Vec::new(),
            dir,
            namespaces: Vec::new(),
        };
        // From here on a panic drops `swarm`, which removes what exists.
        swarm.make_link(n_nodes);
        for i in 0..n_nodes {
            let node = swarm.start_node(i);
            swarm.nodes.push(node);
        }
        let image_tar = swarm.dir.join("image.tar");
        sh(&format!(
            "timeout -k 5 {CLI_TIMEOUT_SECS} docker save -o {} {}",
            image_tar.display(),
            image()
        ));
        for node in &mut swarm.nodes {
            node.wait_ready();
        }
        for node in &swarm.nodes {
            node.docker_ok(&format!("load -q -i {}", image_tar.display()));
        }
        let _ = fs::remove_file(&image_tar);
        swarm.init_and_join(n_managers, data_path_port);
        swarm
    }

    /// The manager that created the swarm (node 0).
    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// The swarm's temp dir (one subdirectory per node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hub namespace, whose bridge joins the nodes.
    pub fn hub_netns(&self) -> &str {
        &self.hub
    }

    /// "The world" as the nodes see it: an address of the hub namespace,
    /// on the nodes' own link (reached from a task through
    /// `docker_gwbridge` and its node's masquerading, never over an
    /// overlay).
    pub fn world_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet, 254)
    }

    /// The hub namespace with a bridge, and one namespace per node joined
    /// to it by a veth (all made inside the private namespaces).
    fn make_link(&mut self, n_nodes: usize) {
        let hub = self.hub.clone();
        sh(&format!("ip netns add {hub}"));
        self.namespaces.push(hub.clone());
        sh(&format!(
            "ip -n {hub} link set lo up && ip -n {hub} link add br0 type bridge && ip -n {hub} link set br0 up && \
             ip -n {hub} addr add {}/24 dev br0",
            self.world_addr()
        ));
        for i in 0..n_nodes {
            let name = self.node_name(i);
            sh(&format!("ip netns add {name}"));
            self.namespaces.push(name.clone());
            sh(&format!(
                "ip -n {name} link set lo up && \
                 ip -n {hub} link add v{i} type veth peer name eth0 netns {name} && \
                 ip -n {hub} link set v{i} master br0 up && \
                 ip -n {name} addr add {}/24 dev eth0 && ip -n {name} link set eth0 up",
                self.node_addr(i)
            ));
        }
    }

    fn node_name(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn node_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet, i as u8 + 1)
    }

    /// Starts node `i`'s dockerd (without waiting for it to answer).
    fn start_node(&self, i: usize) -> Node {
        let name = self.node_name(i);
        let dir = self.dir.join(format!("n{i}"));
        fs::create_dir_all(dir.join("stash")).expect("node dir");
        let config = serde_json::json!({
            // One engine ID per node: without it, every engine reads
            // /etc/docker/key.json and the second cannot join.
            "deprecated-key-path": dir.join("key.json"),
            "default-address-pools": [
                { "base": format!("198.19.{}.0/25", self.octet), "size": 27 }
            ],
            // Containers are removed before SIGTERM; do not wait for more.
            "shutdown-timeout": 3,
        });
        fs::write(dir.join("daemon.json"), config.to_string()).expect("daemon.json");
        let d = dir.display();
        let netns = format!("/run/netns/{name}");
        let dockerd = format!(
            "dockerd --config-file {d}/daemon.json --data-root {d}/data --exec-root {d}/exec \
             --pidfile {d}/dockerd.pid -H unix://{d}/docker.sock --bridge=none \
             --cgroup-parent=/netiso-{name}"
        );
        let inner = format!(
            "mount -t sysfs sysfs /sys && mount --rbind {d}/stash /sys/fs/cgroup && \
             umount -l {d}/stash && hostname {name} && exec {dockerd}"
        );
        let outer = format!(
            "mount --rbind /sys/fs/cgroup {d}/stash && exec nsenter --net={netns} sh -c \"{inner}\""
        );
        let log = fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("setsid")
            .args([
                "unshare",
                "-m",
                "--propagation",
                "slave",
                "--uts",
                "sh",
                "-c",
            ])
            .arg(&outer)
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn setsid unshare … dockerd");
        Node {
            pid: child.id(),
            name,
            addr: self.node_addr(i),
            index: i,
            manager: i == 0,
            dir,
            child: Some(child),
        }
    }

    fn init_and_join(&mut self, n_managers: usize, data_path_port: Option<u16>) {
        let a = self.nodes[0].addr;
        let port = data_path_port
            .map(|p| format!(" --data-path-port {p}"))
            .unwrap_or_default();
        self.nodes[0].docker_ok(&format!(
            "swarm init --advertise-addr {a} --listen-addr {a}:2377 \
             --default-addr-pool 198.19.{}.128/25 --default-addr-pool-mask-length 27{port}",
            self.octet
        ));
        let worker = self.nodes[0].docker_ok("swarm join-token -q worker");
        let manager = self.nodes[0].docker_ok("swarm join-token -q manager");
        for i in 1..self.nodes.len() {
            let is_manager = i < n_managers;
            let token = if is_manager { &manager } else { &worker };
            let node = &mut self.nodes[i];
            node.docker_ok(&format!(
                "swarm join --token {token} --advertise-addr {} --listen-addr {}:2377 {a}:2377",
                node.addr, node.addr
            ));
            node.manager = is_manager;
        }
        let t = Instant::now();
        loop {
            let ls = self.nodes[0].docker_ok("node ls --format '{{.Hostname}} {{.Status}}'");
            let ready = self
                .nodes
                .iter()
                .all(|n| ls.lines().any(|l| l == format!("{} Ready", n.name)));
            if ready {
                return;
            }
            assert!(
                t.elapsed() < READY_TIMEOUT,
                "swarm nodes not Ready after {READY_TIMEOUT:?}:\n{ls}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An attachable overlay network `name` with `subnet` (pick one in
    /// 10.0.0.0/8: 198.19.X is the swarm's own), created on the manager.
    /// Returns the network's full id.
    pub fn overlay(&self, name: &str, subnet: &str) -> String {
        self.manager().docker_ok(&format!(
            "network create -d overlay --attachable --subnet {subnet} {name}"
        ))
    }

    /// `docker service create --detach --quiet --endpoint-mode dnsrr ARGS`
    /// on the manager (ARGS: name, options, image and command; VIP mode
    /// does not route on this kernel: no IPVS). Returns the service's id.
    /// A task is killed 1 s after SIGTERM (a shell's `exec sleep` ignores
    /// it: Docker's 10 s would be waited out at each move or removal).
    pub fn service(&self, args: &str) -> String {
        self.manager().docker_ok(&format!(
            "service create --detach --quiet --endpoint-mode dnsrr --stop-grace-period 1s {args}"
        ))
    }

    /// A one-task `dnsrr` service `name` of the test image running
    /// `script` (no `'`) on node `node` (`node.hostname` constraint),
    /// attached to `network`. Returns the service's id.
    pub fn service_on(&self, name: &str, node: usize, network: &str, script: &str) -> String {
        assert!(
            !script.contains('\''),
            "script with a single quote: {script}"
        );
        self.service(&format!(
            "--name {name} --network {network} --constraint node.hostname=={} {} sh -c '{script}'",
            self.nodes[node].name,
            image()
        ))
    }

    /// `docker stack deploy -c <file> NAME` on the manager, the file
    /// holding `compose_yaml` (version "3.8" or so; `endpoint_mode: dnsrr`).
    pub fn deploy_stack(&self, name: &str, compose_yaml: &str) {
        let file = self.dir.join(format!("stack-{name}.yml"));
        fs::write(&file, compose_yaml).expect("write compose file");
        self.manager()
            .docker_ok(&format!("stack deploy -c {} {name}", file.display()));
    }

    /// Waits (up to `timeout`) until `service` has `n` tasks Running;
    /// panics with `docker service ps` (errors included) if not.
    pub fn wait_tasks_running(&self, service: &str, n: usize, timeout: Duration) {
        let t = Instant::now();
        loop {
            let states = self.manager().docker_ok(&format!(
                "service ps {service} --filter desired-state=running --format '{{{{.CurrentState}}}}'"
            ));
            let running = states.lines().filter(|l| l.starts_with("Running")).count();
            if running >= n {
                return;
            }
            if t.elapsed() > timeout {
                let ps = self
                    .manager()
                    .docker(&format!("service ps --no-trunc {service}"));
                panic!(
                    "{service}: {running} of {n} tasks Running after {timeout:?}:\n{}{}",
                    String::from_utf8_lossy(&ps.stdout),
                    String::from_utf8_lossy(&ps.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The full id of the (one) container of `service`'s tasks on node
    /// `node` (waits up to 10 s for it to show there).
    pub fn task_container(&self, node: usize, service: &str) -> String {
        let n = &self.nodes[node];
        let t = Instant::now();
        loop {
            let ids = n.docker_ok(&format!(
                "ps -q --no-trunc --filter label=com.docker.swarm.service.name={service}"
            ));
            if let Some(id) = ids.lines().next() {
                return id.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no task container of {service} on node {}",
                n.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A container's address on `network`, asked of node `node`'s engine.
    pub fn container_ip(&self, node: usize, container: &str, network: &str) -> Ipv4Addr {
        self.nodes[node].container_ip(container, network)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Workers first (together), then the managers one by one, the
        // first last: a manager leaving first would leave the others
        // asking. Then every engine stops, in parallel.
        let (managers, workers): (Vec<_>, Vec<_>) = self.nodes.iter_mut().partition(|n| n.manager);
        std::thread::scope(|s| {
            for node in workers {
                s.spawn(move || node.leave());
            }
        });
        for node in managers.into_iter().rev() {
            node.leave();
        }
        std::thread::scope(|s| {
            for node in self.nodes.iter_mut() {
                s.spawn(move || node.stop());
            }
        });
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("swarm: could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// X of 198.18.X.0/24 for a tag: it differs between the swarms of a run
/// most of the time, which only helps reading; the namespaces isolate them.
fn octet_of(tag: &str) -> u8 {
    let h = tag
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    (h % 254 + 1) as u8
}

/// `GET /_ping` over a Unix socket answered with 200.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.take(4096).read_to_end(&mut resp);
    resp.starts_with(b"HTTP/1.0 200") || resp.starts_with(b"HTTP/1.1 200")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The `.Services` of `docker network inspect --verbose`: service name →
/// `{ "Tasks": [{ "Name", "EndpointIP", "Info": { "Host IP" } }] }`.
pub fn parse_verbose_services(json: &str) -> Result<Vec<OverlayEndpoint>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let Some(services) = v.as_object() else {
        return Ok(out);
    };
    for (service, s) in services {
        for task in s["Tasks"].as_array().into_iter().flatten() {
            let field = |v: &serde_json::Value, what: &str| -> Result<String, String> {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("task of {service} without {what}"))
            };
            let ip = field(&task["EndpointIP"], "EndpointIP")?;
            let host_ip = field(&task["Info"]["Host IP"], "Host IP")?;
            out.push(OverlayEndpoint {
                service: service.clone(),
                name: field(&task["Name"], "Name")?,
                ip: ip.parse().map_err(|_| format!("EndpointIP {ip:?}"))?,
                host_ip: host_ip
                    .parse()
                    .map_err(|_| format!("Host IP {host_ip:?}"))?,
            });
        }
    }
    out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    Ok(out)
}

/// Pids of the processes in the network namespace at `netns` (compared by
/// the namespace's inode).
fn pids_in_netns(netns: &Path) -> Vec<u32> {
    let Ok(target) = fs::metadata(netns) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let m = fs::metadata(e.path().join("ns/net")).ok()?;
            (m.dev() == target.dev() && m.ino() == target.ino()).then_some(pid)
        })
        .collect()
}

/// The paths under `prefix` of the Unix sockets bound in the network
/// namespace of process `pid` (`/proc/<pid>/net/unix`, last column).
fn unix_sockets_under(pid: u32, prefix: &str) -> Vec<PathBuf> {
    let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    let mut paths: Vec<PathBuf> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with(prefix) && !p.contains(".."))
        .map(PathBuf::from)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The directories of cgroup `parent` (absolute, as given to
/// `--cgroup-parent`) in every hierarchy under /sys/fs/cgroup (v1
/// controllers and a v2 tree alike).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(rel));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_dirs(&e.path(), out);
            }
        }
    }
}

/// Pids in a cgroup and its descendants.
fn pids_in_cgroup(dir: &Path) -> Vec<u32> {
    let mut dirs = Vec::new();
    walk_dirs(dir, &mut dirs);
    let mut pids = Vec::new();
    for d in dirs {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids
}

/// What is left on the host of a swarm that was dropped: its namespaces,
/// processes whose command line names its directory, its cgroups, its
/// directory. Empty when [`Drop`] did its job (tests check it).
pub fn leftovers(tag: &str, dir: &Path, node_names: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let netns = sh("ip netns list");
    for l in String::from_utf8_lossy(&netns.stdout).lines() {
        if l.contains(tag) {
            left.push(format!("netns {l}"));
        }
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for l in mounts.lines().filter(|l| l.contains(tag)) {
        left.push(format!("mount {l}"));
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        let needle = dir.display().to_string();
        for e in entries.flatten() {
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                left.push(format!(
                    "process {}: {cmd}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    for name in node_names {
        for d in cgroup_dirs(&format!("/netiso-{name}")) {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    if dir.exists() {
        left.push(format!("dir {}", dir.display()));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_services_are_parsed() {
        let json = r#"{"s0":{"VIP":"<nil>","Ports":[],"LocalLBIndex":257,"Tasks":[{"Name":"s0.1.obg0p8npg6k76yw8kpt7g2exs","EndpointID":"b7","EndpointIP":"10.231.7.2","Info":{"Host IP":"198.18.77.1"}}]},"s1":{"VIP":"<nil>","Tasks":[]}}"#;
        assert_eq!(
            parse_verbose_services(json).unwrap(),
            [OverlayEndpoint {
                service: "s0".into(),
                name: "s0.1.obg0p8npg6k76yw8kpt7g2exs".into(),
                ip: Ipv4Addr::new(10, 231, 7, 2),
                host_ip: Ipv4Addr::new(198, 18, 77, 1),
            }]
        );
        assert_eq!(parse_verbose_services("null").unwrap(), []);
        assert!(parse_verbose_services(r#"{"s":{"Tasks":[{"Name":"x"}]}}"#).is_err());
    }

    #[test]
    fn macs_and_octets() {
        assert_eq!(
            parse_mac("02:42:0a:e7:07:03"),
            Some([2, 0x42, 10, 0xe7, 7, 3])
        );
        assert_eq!(parse_mac("02:42:0a:e7:07"), None);
        assert_eq!(parse_mac(""), None);
        let o = octet_of("sw123x0");
        assert!((1..=254).contains(&o));
    }
}
