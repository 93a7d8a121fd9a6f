//! Support for privileged tests: network namespaces, pin directories and
//! crafted frames. Every resource gets a unique name and is removed in
//! `Drop`, so a failing test cleans up and parallel runs never collide.
#![allow(dead_code)]

pub mod docker;
pub mod fleet;
pub mod frames;
pub mod hostile;
pub mod obs;
pub mod ops;
pub mod reference;
pub mod topology;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are
/// limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

/// Fails the test with a clear message unless we run as root.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged tests need root (BPF, netns, Docker): run `cargo xtask test` as root"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns whether it succeeded (for probes).
pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (setns only affects the calling thread, so the test's own thread stays put).
pub fn run_in<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            let ns = File::open(path).expect("open netns");
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = unique(&format!("nt{tag}"));
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace (setns only
    /// affects the calling thread, so the test's own thread stays put).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.path(), f)
    }

    /// `sh -c cmd` inside the namespace; panics on failure.
    pub fn sh(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmd))
    }

    /// `sh -c cmd` inside the namespace; true on success.
    pub fn sh_ok(&self, cmd: &str) -> bool {
        sh_ok(&format!("ip netns exec {} sh -c '{}'", self.name, cmd))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A private pin directory under bpffs, removed (with everything pinned
/// in it) on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        require_root();
        // Mount bpffs once, before tests race to do it in parallel.
        static MOUNT: std::sync::Once = std::sync::Once::new();
        MOUNT.call_once(|| {
            sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf");
        });
        let path = PathBuf::from(format!("/sys/fs/bpf/{}", unique("netiso-test-")));
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A `netiso daemon` process started by the test, with its own pin and
/// state directories; killed (by its own pid) on drop.
pub struct DaemonProc {
    pub child: std::process::Child,
    pub pins: PinDir,
    pub state_dir: tempfile::TempDir,
    pub policy_path: PathBuf,
}

impl DaemonProc {
    pub fn start(policy_path: PathBuf) -> Self {
        Self::start_with(policy_path, &[])
    }

    /// Like [`start`](Self::start), with extra `netiso daemon` flags. The
    /// metrics endpoint gets a free port unless `extra` names one, so that
    /// parallel daemons never compete for the default.
    pub fn start_with(policy_path: PathBuf, extra: &[&str]) -> Self {
        let pins = PinDir::new();
        let state_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(state_dir.path().join("daemon.log")).unwrap();
        let mut extra: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--metrics-addr") {
            extra.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_netiso"))
            .args(["daemon", "--policy"])
            .arg(&policy_path)
            .arg("--pin-dir")
            .arg(&pins.path)
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(&extra)
            .env("NETISO_LOG", "netiso_daemon=debug,info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start netiso daemon");
        Self {
            child,
            pins,
            state_dir,
            policy_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn state(&self) -> netiso_daemon::observe::state::State {
        netiso_daemon::observe::state::State::read(self.state_dir.path()).unwrap()
    }

    /// Waits (bounded) until `pred` holds for the published state.
    pub fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&netiso_daemon::observe::state::State) -> bool,
    ) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Ok(s) = netiso_daemon::observe::state::State::read(self.state_dir.path()) {
                if pred(&s) {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; daemon log:\n{}", self.log());
    }

    /// Runs `netiso <args>` against this daemon's directories.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_netiso"))
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .output()
            .expect("run netiso")
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
