//! Many lean containers at once, for the flood tests: `sleep` in the test
//! image, started and removed by parallel workers in batches, all removed
//! on drop (even when the test fails).
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::docker::image;

pub struct Fleet {
    names: Mutex<Vec<String>>,
}

/// Parallel `docker` workers: enough to keep dockerd busy on 2 cores
/// without queueing hundreds of requests at once.
const WORKERS: usize = 8;

impl Fleet {
    pub fn new() -> Self {
        Self {
            names: Mutex::new(Vec::new()),
        }
    }

    /// Starts `names` (`docker run -d --network NET --label k=v ... sleep`),
    /// `WORKERS` at a time; returns how long it took. Panics if any fails.
    pub fn start(&self, names: &[String], network: &str, labels: &[(&str, &str)]) -> Duration {
        let t = Instant::now();
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    self.names.lock().unwrap().push(name.clone());
                    let mut cmd = Command::new("docker");
                    cmd.args(["run", "-d", "--name", name, "--network", network]);
                    // No log files, no restarts: as little engine work as can be.
                    cmd.args(["--log-driver", "none", "--restart", "no"]);
                    for (k, v) in labels {
                        cmd.args(["--label", &format!("{k}={v}")]);
                    }
                    cmd.args([image().as_str(), "sleep", "3600"]);
                    let out = cmd.stdin(Stdio::null()).output().expect("docker run");
                    if !out.status.success() {
                        failures.lock().unwrap().push(format!(
                            "{name}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(failures.is_empty(), "docker run failed: {failures:?}");
        t.elapsed()
    }

    /// Removes every container started, in batches, in parallel.
    pub fn remove_all(&self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        let batches: Vec<&[String]> = names.chunks(25).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    let _ = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(batch.iter())
                        .stdin(Stdio::null())
                        .output();
                });
            }
        });
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// utime + stime of a process, in seconds (from /proc/<pid>/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (1-based),
    // 12 and 13 after the name and state.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}
