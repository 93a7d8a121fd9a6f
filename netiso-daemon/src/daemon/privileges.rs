//! Dropping capabilities once the daemon has started.
//!
//! Start-up does the most privileged work: load the programs (CAP_BPF,
//! CAP_PERFMON, CAP_NET_ADMIN), mount bpffs and pin (CAP_SYS_ADMIN), bind
//! and chown the control socket (CAP_CHOWN). After that the daemon keeps
//! only what a running daemon needs, found by experiment (running it with
//! `setpriv --bounding-set` and watching what fails):
//!
//! - `CAP_BPF`: every bpf() call (unprivileged BPF is off on most hosts):
//!   map reads and writes, links for new veths;
//! - `CAP_NET_ADMIN`: attaching to new veths (TCX links, clsact filters);
//! - `CAP_SYS_ADMIN`: `setns` into a container's network namespace to find
//!   its host-side veth (and listing loaded programs);
//! - `CAP_SYS_PTRACE`: opening `/proc/<pid>/ns/net` of container processes,
//!   whose capabilities are not a subset of the daemon's.
//!
//! Everything else leaves the effective, permitted, inheritable, ambient
//! and bounding sets, and `no_new_privs` is set, so nothing the daemon
//! could be tricked into running gets more.
//!
//! Capabilities belong to threads, and the tokio runtime's threads exist by
//! then: each thread is asked to drop its own with a real-time signal (the
//! way libc makes `setuid` reach every thread); threads created later
//! inherit the reduced sets. The result is checked in `/proc/self/task`.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability};
use thiserror::Error;
use tracing::info;

/// What the running daemon keeps (see the module documentation).
pub const RUNTIME: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
];

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("dropping capabilities on thread {tid}: {error}")]
    Drop { tid: i32, error: std::io::Error },
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("threads {0:?} still hold capabilities beyond {1}")]
    Stragglers(Vec<i32>, String),
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
}

/// The bit mask of a set of capabilities.
pub fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// Names of the capabilities in a mask, e.g. `CAP_BPF,CAP_NET_ADMIN`.
pub fn names(mask: u64) -> String {
    let set: BTreeSet<String> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| c.to_string())
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// The capability sets of one thread, from `/proc/<pid>/task/<tid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCaps {
    pub tid: i32,
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ThreadCaps {
    /// Whether the thread can use nothing beyond `keep`, now or after an
    /// execve: effective and permitted within `keep`, nothing inheritable
    /// or ambient, and no_new_privs set. (The bounding set is dropped too
    /// where CAP_SETPCAP allows; see [`ThreadCaps::bounding`].)
    pub fn within(&self, keep: u64) -> bool {
        (self.permitted | self.effective) & !keep == 0
            && self.inheritable == 0
            && self.ambient == 0
            && self.no_new_privs
    }
}

/// Parses the `Cap*:` and `NoNewPrivs:` lines of a status file.
pub fn parse_status(tid: i32, text: &str) -> ThreadCaps {
    let mut t = ThreadCaps {
        tid,
        ..ThreadCaps::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).unwrap_or(u64::MAX);
        match key {
            "CapInh" => t.inheritable = hex(),
            "CapPrm" => t.permitted = hex(),
            "CapEff" => t.effective = hex(),
            "CapBnd" => t.bounding = hex(),
            "CapAmb" => t.ambient = hex(),
            "NoNewPrivs" => t.no_new_privs = value == "1",
            _ => {}
        }
    }
    t
}

/// The capability sets of every thread of process `pid`.
pub fn threads_of(pid: u32) -> Result<Vec<ThreadCaps>, PrivilegeError> {
    let dir = format!("/proc/{pid}/task");
    let read_err = |path: &str, error| PrivilegeError::Read {
        path: path.to_string(),
        error,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
        let entry = entry.map_err(|e| read_err(&dir, e))?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = format!("{dir}/{tid}/status");
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(parse_status(tid, &text)),
            // The thread ended meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_err(&path, e)),
        }
    }
    Ok(out)
}

/// The capabilities to keep, set before any thread is signalled.
static KEEP: AtomicU64 = AtomicU64::new(u64::MAX);
/// Threads that handled the signal, and those that failed to drop.
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
/// The highest capability number the kernel knows.
static LAST_CAP: AtomicU64 = AtomicU64::new(40);

const CAPS_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops everything outside `keep` from the calling thread. Only raw
/// system calls: it also runs in a signal handler.
fn drop_on_this_thread(keep: u64) -> Result<(), i32> {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: the prctl calls take integers only. capget writes one
    // CapHeader and, for _LINUX_CAPABILITY_VERSION_3 (`CAPS_V3`), two
    // CapData: `header` and `now` are live, writable locals of exactly those
    // repr(C) layouts. capset only reads `header` and the two-element
    // `data`. Nothing here allocates or takes locks, so it may also run in
    // the signal handler.
    unsafe {
        for cap in 0..=LAST_CAP.load(Ordering::Relaxed) {
            // The bounding set first: dropping from it needs CAP_SETPCAP,
            // which the capset below removes. Without CAP_SETPCAP (systemd's
            // CapabilityBoundingSet= leaves it out) the bounding set stays:
            // with no_new_privs and a reduced permitted set, an execve could
            // not regain anything from it anyway.
            if keep & (1 << cap) != 0
                || libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) != 1
            {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                match errno() {
                    libc::EPERM => break,
                    libc::EINVAL => continue,
                    e => return Err(e),
                }
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(errno());
        }
        let mut header = CapHeader {
            version: CAPS_V3,
            pid: 0,
        };
        // Only ever less: capset refuses to add to the permitted set.
        let mut now = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            now.as_mut_ptr(),
        ) != 0
        {
            return Err(errno());
        }
        let keep = keep & (u64::from(now[1].permitted) << 32 | u64::from(now[0].permitted));
        let data = [
            CapData {
                effective: keep as u32,
                permitted: keep as u32,
                inheritable: 0,
            },
            CapData {
                effective: (keep >> 32) as u32,
                permitted: (keep >> 32) as u32,
                inheritable: 0,
            },
        ];
        if libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) != 0
        {
            return Err(errno());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    // Keep errno as the interrupted code left it.
    // SAFETY: __errno_location returns a valid, aligned pointer to the
    // calling thread's errno, which only this thread (and so, while the
    // handler runs, only the handler) touches.
    let saved = unsafe { *libc::__errno_location() };
    match drop_on_this_thread(KEEP.load(Ordering::SeqCst)) {
        Ok(()) => DONE.fetch_add(1, Ordering::SeqCst),
        Err(_) => FAILED.fetch_add(1, Ordering::SeqCst),
    };
    // SAFETY: as above: this thread's own errno, restored to the value the
    // interrupted code left there.
    unsafe { *libc::__errno_location() = saved };
}

fn signal_number() -> libc::c_int {
    // A real-time signal nothing else in the daemon uses.
    libc::SIGRTMIN() + 6
}

fn gettid() -> i32 {
    // SAFETY: the gettid system call takes no arguments, touches no memory
    // and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Keeps only `keep` (plus nothing else) on every thread of this process.
pub fn restrict_process(keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep = mask(keep);
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap") {
        if let Ok(n) = text.trim().parse() {
            LAST_CAP.store(n, Ordering::Relaxed);
        }
    }
    KEEP.store(keep, Ordering::SeqCst);
    // SAFETY: `sigaction` is a C struct for which all-zero is valid (no
    // flags, empty mask, no restorer); `sa` is a live local that
    // sigemptyset and sigaction only access for the call. The handler,
    // `on_signal`, is an `extern "C" fn(c_int)` as SA_SIGINFO-less
    // sigaction expects, and is async-signal-safe: raw system calls and
    // atomics only, with errno saved and restored.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal_number(), &sa, std::ptr::null_mut()) != 0 {
            return Err(PrivilegeError::Signal(std::io::Error::last_os_error()));
        }
    }
    let me = gettid();
    drop_on_this_thread(keep).map_err(|e| PrivilegeError::Drop {
        tid: me,
        error: std::io::Error::from_raw_os_error(e),
    })?;
    let pid = std::process::id();
    // Threads started meanwhile by a thread that had not dropped yet get a
    // signal in the next round.
    let mut stragglers = Vec::new();
    for _round in 0..5 {
        stragglers = threads_of(pid)?
            .into_iter()
            .filter(|t| !t.within(keep))
            .map(|t| t.tid)
            .collect();
        if stragglers.is_empty() {
            break;
        }
        let before = DONE.load(Ordering::SeqCst) + FAILED.load(Ordering::SeqCst);
        let mut sent = 0;
        for &tid in &stragglers {
            // SAFETY: tgkill takes integers only. It targets our own pid, so
            // the signal (whose handler was installed above) can only reach a
            // thread of this process, even if `tid` exited meanwhile.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, signal_number()) } == 0 {
                sent += 1;
            }
        }
        let end = Instant::now() + Duration::from_secs(2);
        while DONE.load(Ordering::SeqCst) + FAILED.load(Ordering::SeqCst) < before + sent
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !stragglers.is_empty() {
        return Err(PrivilegeError::Stragglers(stragglers, names(keep)));
    }
    Ok(())
}

/// What `netiso daemon` calls once started: keep [`RUNTIME`] only.
pub fn drop_after_start() -> Result<(), PrivilegeError> {
    let before = caps::read(None, CapSet::Permitted)
        .map_or(0, |s| s.iter().fold(0u64, |m, c| m | c.bitmask()));
    restrict_process(&RUNTIME)?;
    info!(
        kept = %names(mask(&RUNTIME)),
        dropped = %names(before & !mask(&RUNTIME)),
        "capabilities dropped after start"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        let text = "Name:\tnetiso\nCapInh:\t0000000000000000\nCapPrm:\t0000008000281000\n\
                    CapEff:\t0000008000281000\nCapBnd:\t0000008000281000\nCapAmb:\t0000000000000000\n\
                    NoNewPrivs:\t1\n";
        let t = parse_status(7, text);
        assert_eq!(t.effective, mask(&RUNTIME));
        assert!(t.within(mask(&RUNTIME)));
        assert!(!t.within(mask(&RUNTIME[..2])));
        assert_eq!(
            names(mask(&RUNTIME)),
            "CAP_BPF,CAP_NET_ADMIN,CAP_SYS_ADMIN,CAP_SYS_PTRACE"
        );
    }

    /// In a child process (so the test runner keeps its capabilities):
    /// every thread, including one started before, ends up with the set.
    #[test]
    fn every_thread_drops() {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("needs root: run `cargo xtask test` as root");
        }
        // SAFETY: fork takes no arguments. The child is a copy of this
        // multi-threaded test runner with only this thread: it runs just
        // this test's code (glibc resets malloc's locks in a forked child, so
        // it may allocate) and leaves with `_exit`, never returning into the
        // harness or touching state another thread was changing.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let _parked = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(3)));
            let code = match restrict_process(&RUNTIME) {
                Ok(()) => {
                    let all = threads_of(std::process::id()).unwrap();
                    let ok = all.len() >= 2
                        && all.iter().all(|t| {
                            t.within(mask(&RUNTIME))
                                && t.effective == mask(&RUNTIME)
                                && t.bounding == mask(&RUNTIME)
                        });
                    // A thread started afterwards inherits the reduced sets.
                    let later =
                        std::thread::spawn(|| caps::read(None, CapSet::Bounding).unwrap().len())
                            .join()
                            .unwrap();
                    if ok && later == RUNTIME.len() {
                        0
                    } else {
                        1
                    }
                }
                Err(_) => 2,
            };
            // SAFETY: _exit takes an integer and never returns: the forked
            // child ends here without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `status` is a live, writable c_int; waitpid writes only it,
        // for `pid`, the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child crashed: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: a thread kept more, 2: error"
        );
    }
}
