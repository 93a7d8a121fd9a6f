//! Helpers for the lifecycle tests: a daemon that can be killed and started
//! again on the same pin and state directories, Docker commands against
//! any engine, and probers that connect from inside a container's network
//! namespace in a loop, recording every outcome with its time.
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netiso_daemon::observe::state::State;

pub use crate::daemon::empty_config;
use crate::{netiso_bin, PinDir};

/// A `netiso daemon` that survives its process: the pin and state
/// directories belong to this value, the process comes and goes. Every run
/// appends to one log file.
pub struct Netiso {
    pub pins: PinDir,
    pub state_dir: tempfile::TempDir,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A program and its arguments that exec the daemon (e.g. setpriv …
    /// /path/to/netiso); empty: run netiso directly.
    pub wrapper: Vec<String>,
    pub child: Option<Child>,
}

impl Netiso {
    /// Not started yet; `args` come after `daemon --pin-dir .. --state-dir ..`.
    pub fn new(args: &[&str]) -> Self {
        Self {
            pins: PinDir::new(),
            state_dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            wrapper: Vec::new(),
            child: None,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir.path().join("daemon.log")
    }

    /// Starts a daemon process; returns its pid.
    pub fn start(&mut self) -> u32 {
        assert!(self.child.is_none(), "already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let program = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args);
                c
            }
            None => Command::new(netiso_bin()),
        };
        let mut cmd = crate::daemon::daemon_command(
            program,
            &self.pins.path,
            self.state_dir.path(),
            &self.args,
            &log,
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start netiso daemon");
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("daemon running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Sends `sig` to the daemon (by its pid).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes integers only. `self.child` is Some only until
        // the daemon is reaped (every wait takes it out or panics), so the
        // pid still names our child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon ignored SIGTERM for 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn state(&self) -> State {
        State::read(self.state_dir.path()).unwrap()
    }

    /// Waits up to `secs` until `pred` holds for the published state;
    /// fails early when the daemon exits.
    pub fn wait_for_secs(&mut self, secs: u64, what: &str, pred: impl Fn(&State) -> bool) -> State {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "daemon exited ({status}) waiting for {what}:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(s) = State::read(self.state_dir.path()) {
                if pred(&s) {
                    return s;
                }
            }
            if Instant::now() > end {
                panic!(
                    "timed out ({secs} s) waiting for {what}; state: {:#?}\ndaemon log:\n{}",
                    State::read(self.state_dir.path()).ok().map(|s| (
                        s.endpoints,
                        s.unenforceable,
                        s.last_reload
                    )),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&State) -> bool) -> State {
        self.wait_for_secs(30, what, pred)
    }

    /// Waits until this very process has published a state in which every
    /// container named has all its attachments enforced.
    pub fn wait_enforced(&mut self, containers: &[&str]) -> State {
        let pid = self.pid();
        self.wait_for(&format!("{containers:?} enforced by pid {pid}"), |s| {
            s.pid == pid
                && containers.iter().all(|c| {
                    let eps: Vec<_> = s.endpoints.iter().filter(|e| e.container == *c).collect();
                    !eps.is_empty() && eps.iter().all(|e| e.enforced)
                })
        })
    }
}

impl Drop for Netiso {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The ifindexes of one container's endpoints in a state.
pub fn ifindexes(s: &State, container: &str) -> Vec<u32> {
    let mut v: Vec<u32> = s
        .endpoints
        .iter()
        .filter(|e| e.container == container)
        .filter_map(|e| e.ifindex)
        .collect();
    v.sort();
    v
}

/// `docker [-H host] args...`, panicking with its output on failure. A
/// `run` the container runtime failed to start (runc's "init-p: connection
/// reset by peer", seen once in CI on Engine 26.1: the engine's fault, not
/// the network's) is tried again, twice at most, its half-made container
/// removed first.
pub fn docker_at(host: Option<&str>, args: &[&str]) -> String {
    let mut out = docker_try(host, args);
    for _ in 0..2 {
        let runtime_failed =
            String::from_utf8_lossy(&out.stderr).contains("OCI runtime create failed");
        if out.status.success() || args.first() != Some(&"run") || !runtime_failed {
            break;
        }
        if let Some(name) = args
            .iter()
            .position(|a| *a == "--name")
            .and_then(|i| args.get(i + 1))
        {
            let _ = docker_try(host, &["rm", "-f", name]);
        }
        std::thread::sleep(Duration::from_secs(1));
        out = docker_try(host, args);
    }
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker_try(host: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new("docker");
    if let Some(h) = host {
        c.args(["-H", h]);
    }
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

pub fn container_pid(host: Option<&str>, name: &str) -> u32 {
    docker_at(host, &["inspect", "-f", "{{.State.Pid}}", name])
        .parse()
        .unwrap()
}

pub fn container_ip(host: Option<&str>, name: &str, network: &str) -> Ipv4Addr {
    docker_at(
        host,
        &[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            name,
        ],
    )
    .parse()
    .unwrap_or_else(|e| panic!("IP of {name} on {network}: {e}"))
}

/// One TCP attempt from the current namespace: connected, and (when
/// `greeting`) read the `netiso-ok` greeting of a `tcp_servers` port.
pub fn tcp_try(to: SocketAddr, timeout: Duration, greeting: bool) -> bool {
    use std::io::Read as _;
    let Ok(mut s) = TcpStream::connect_timeout(&to, timeout) else {
        return false;
    };
    if !greeting {
        return true;
    }
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 32];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(9).any(|w| w == b"netiso-ok") {
            return true;
        }
    }
    false
}

/// Runs `f` once on a thread inside the network namespace of process `pid`.
pub fn once_in(pid: u32, f: impl FnOnce() -> bool + Send) -> bool {
    crate::run_in(&PathBuf::from(format!("/proc/{pid}/ns/net")), f)
}

/// Whether a connection from container process `pid` to `to` gets the
/// greeting (1 s timeout).
pub fn tcp_from(pid: u32, to: SocketAddr) -> bool {
    once_in(pid, move || tcp_try(to, Duration::from_secs(1), true))
}

/// Tries `tcp_from` until it gives `want` (bounded); returns whether it did.
pub fn eventually(pid: u32, to: SocketAddr, want: bool, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if tcp_from(pid, to) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A loop of connection attempts from inside a network namespace, until
/// stopped; every attempt is recorded as (time since start, success).
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(Duration, bool)>>>,
    pub start: Instant,
}

impl Prober {
    /// `greeting`: success means reading the greeting (allowed path); else
    /// success means the TCP handshake completed (a denied path must never).
    pub fn spawn(netns: &Path, to: SocketAddr, every: Duration, greeting: bool) -> Self {
        let ns = File::open(netns).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            // SAFETY: setns only reads the fd of `ns`, a file opened above
            // and moved into this thread, open across the call; CLONE_NEWNET
            // moves only this thread, the prober's own.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut out = Vec::new();
            // Bounded even if nobody stops it.
            let end = Instant::now() + Duration::from_secs(180);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let t = Instant::now();
                let ok = tcp_try(to, Duration::from_millis(300), greeting);
                out.push((t - start, ok));
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
            out
        });
        Self {
            stop,
            handle: Some(handle),
            start,
        }
    }

    pub fn finish(mut self) -> Vec<(Duration, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("prober panicked")
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The longest stretch between two successes (or from the first attempt to
/// the first success, or from the last success to the last attempt).
pub fn longest_outage(samples: &[(Duration, bool)]) -> Duration {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Duration::MAX;
    };
    let mut worst = Duration::ZERO;
    let mut prev_ok = first.0;
    for (t, ok) in samples {
        if *ok {
            worst = worst.max(t.saturating_sub(prev_ok));
            prev_ok = *t;
        }
    }
    worst.max(last.0.saturating_sub(prev_ok))
}

/// A test policy file: groups selected by `netiso.test=<tag>` plus a role
/// label, so that parallel tests never select each other's containers.
pub fn write_policy(dir: &Path, tag: &str, body: &str) -> PathBuf {
    let text = body.replace("@TAG@", tag);
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// client may reach server on 8080/tcp; nothing else reaches server.
pub const CLIENT_SERVER: &str = r#"
[groups.client]
labels = { "netiso.test" = "@TAG@", "role" = "client" }

[groups.server]
labels = { "netiso.test" = "@TAG@", "role" = "server" }
ingress = "deny"

[[rules]]
from = "client"
to = "server"
ports = ["8080/tcp"]
action = "allow"
"#;
