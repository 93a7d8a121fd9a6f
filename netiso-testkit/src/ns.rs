//! Namespaces, pin directories and shell commands for privileged tests:
//! unique names, `ip netns` namespaces, bpffs pin directories, each removed
//! in `Drop` so that a failing test cleans up and parallel runs never
//! collide. Uses std and libc only.
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
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
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
            // SAFETY: setns only reads the fd of `ns`, a file we just opened
            // and hold across the call; CLONE_NEWNET moves only this thread,
            // a scoped thread of ours that ends with `f`.
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
