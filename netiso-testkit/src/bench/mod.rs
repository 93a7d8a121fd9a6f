//! netiso's benchmark harness: program cost through BPF_PROG_TEST_RUN,
//! traffic between namespaces against no filter / iptables / nftables, and
//! the control plane against a real Docker engine.
//!
//! Shared by the `netiso` bench target (`cargo xtask bench`, full counts) and
//! the `bench_smoke` test (tiny counts, so that the harness cannot rot).
//! Benchmarks never assert on timings: a missed target is reported, not
//! failed. They do fail when a measurement would be meaningless (a filter
//! that does not filter, a verdict that is not the expected one).

pub mod conditions;
pub mod control;
pub mod program;
pub mod rawbpf;
pub mod report;
pub mod stats;
pub mod swarm;
pub mod tools;
pub mod traffic;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

pub use report::Report;

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub program: bool,
    pub traffic: bool,
    pub control: bool,
    /// Task start → enforced across the nodes of a Docker Swarm.
    pub swarm: bool,
}

/// Every count the bench uses; [`Options::full`] is what `cargo xtask bench`
/// runs, [`Options::smoke`] what the smoke test runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub out_dir: PathBuf,
    pub parts: Parts,
    pub smoke: bool,
    /// Interleaved repetitions of every program-cost figure.
    pub reps: usize,
    /// BPF_PROG_TEST_RUN repeat count per repetition.
    pub repeat: u32,
    /// Single-run samples per first-packet (allowed) figure, over all reps.
    pub first_samples: usize,
    /// (rules, endpoints) pairs for the program cost.
    pub sizes: Vec<(usize, usize)>,
    /// Rules in the traffic policy.
    pub traffic_rules: usize,
    pub traffic_reps: usize,
    /// Seconds per traffic measurement.
    pub traffic_secs: f64,
    /// Containers started one by one for start-to-enforced latencies.
    pub starts: usize,
    /// Containers to reach for the RSS/CPU figure (the starts included).
    pub endpoints: usize,
    /// Time allowed to start containers up to `endpoints`.
    pub ramp_budget: Duration,
    pub reload_rules: usize,
    pub reloads: usize,
    /// Seconds of idle CPU/RSS observation.
    pub idle_secs: f64,
    /// Swarm tasks started one by one on another node.
    pub swarm_starts: usize,
    /// Instead of the report: loop one program case for a profiler.
    pub profile: Option<String>,
}

pub const RULE_SIZES: [usize; 3] = [1, 100, 10_000];
pub const ENDPOINT_SIZES: [usize; 3] = [2, 100, 4_000];

impl Options {
    pub fn full(out_dir: PathBuf) -> Self {
        let mut sizes = Vec::new();
        for r in RULE_SIZES {
            for e in ENDPOINT_SIZES {
                sizes.push((r, e));
            }
        }
        Self {
            out_dir,
            parts: Parts {
                program: true,
                traffic: true,
                control: true,
                swarm: true,
            },
            smoke: false,
            reps: 5,
            repeat: 100_000,
            first_samples: 100_000,
            sizes,
            traffic_rules: 10_000,
            traffic_reps: 7,
            traffic_secs: 1.0,
            starts: 50,
            endpoints: 500,
            ramp_budget: Duration::from_secs(300),
            reload_rules: 10_000,
            reloads: 6,
            idle_secs: 10.0,
            swarm_starts: 20,
            profile: None,
        }
    }

    /// Tiny counts: every code path runs, in well under a minute.
    pub fn smoke(out_dir: PathBuf) -> Self {
        Self {
            smoke: true,
            reps: 2,
            repeat: 1_000,
            first_samples: 200,
            sizes: vec![(1, 2), (100, 100)],
            traffic_rules: 100,
            traffic_reps: 1,
            traffic_secs: 0.3,
            starts: 2,
            endpoints: 3,
            ramp_budget: Duration::from_secs(60),
            reload_rules: 100,
            reloads: 2,
            idle_secs: 0.5,
            swarm_starts: 2,
            ..Self::full(out_dir)
        }
    }

    /// Command-line arguments of the bench binary. Unknown flags are
    /// errors, except `--bench`, which `cargo bench` always passes.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let args: Vec<String> = args.into_iter().collect();
        let mut out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results"));
        let mut smoke = false;
        let mut only: Option<String> = None;
        let mut profile: Option<String> = None;
        let mut sets: Vec<(String, String)> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--bench" => {}
                "--smoke" => smoke = true,
                "--out-dir" => out_dir = PathBuf::from(value("--out-dir")?),
                "--only" => only = Some(value("--only")?),
                "--profile" => profile = Some(value("--profile")?),
                "--set" => {
                    let kv = value("--set")?;
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--set wants KEY=VALUE, got {kv:?}"))?;
                    sets.push((k.to_string(), v.to_string()));
                }
                "-h" | "--help" => bail!("{}", USAGE),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let mut o = if smoke {
            Self::smoke(out_dir)
        } else {
            Self::full(out_dir)
        };
        if let Some(only) = only {
            o.parts = Parts {
                program: false,
                traffic: false,
                control: false,
                swarm: false,
            };
            for p in only.split(',') {
                match p {
                    "program" => o.parts.program = true,
                    "traffic" => o.parts.traffic = true,
                    "control" => o.parts.control = true,
                    "swarm" => o.parts.swarm = true,
                    _ => {
                        bail!("--only takes program, traffic, control, swarm (comma-separated), not {p:?}")
                    }
                }
            }
        }
        o.profile = profile;
        for (k, v) in sets {
            o.set(&k, &v)?;
        }
        Ok(o)
    }

    fn set(&mut self, key: &str, v: &str) -> Result<()> {
        let num = |v: &str| -> Result<usize> {
            v.replace('_', "")
                .parse()
                .with_context(|| format!("--set {key}: {v:?} is not a number"))
        };
        match key {
            "reps" => self.reps = num(v)?,
            "repeat" => self.repeat = num(v)? as u32,
            "first_samples" => self.first_samples = num(v)?,
            "traffic_rules" => self.traffic_rules = num(v)?,
            "traffic_reps" => self.traffic_reps = num(v)?,
            "traffic_secs" => self.traffic_secs = v.parse().context("traffic_secs")?,
            "starts" => self.starts = num(v)?,
            "endpoints" => self.endpoints = num(v)?,
            "ramp_budget" => self.ramp_budget = Duration::from_secs(num(v)? as u64),
            "reload_rules" => self.reload_rules = num(v)?,
            "reloads" => self.reloads = num(v)?,
            "idle_secs" => self.idle_secs = v.parse().context("idle_secs")?,
            "swarm_starts" => self.swarm_starts = num(v)?,
            "sizes" => {
                // "1x2,100x100"
                self.sizes = v
                    .split(',')
                    .map(|p| {
                        let (r, e) = p.split_once('x').context("sizes: RULESxENDPOINTS,...")?;
                        Ok((num(r)?, num(e)?))
                    })
                    .collect::<Result<_>>()?;
            }
            _ => bail!("unknown --set key {key:?}\n{USAGE}"),
        }
        Ok(())
    }
}

pub const USAGE: &str = "\
usage: cargo bench -p netiso-daemon --bench netiso -- [--smoke] [--only program,traffic,control,swarm]
                   [--out-dir DIR] [--set KEY=VALUE]... | --profile established|denied|allowed|empty
  keys: reps repeat first_samples sizes (e.g. 1x2,10000x4000) traffic_rules traffic_reps
        traffic_secs starts endpoints ramp_budget reload_rules reloads idle_secs swarm_starts";

/// Runs the selected parts and writes `<out_dir>/<timestamp>.{md,json}`
/// and `<out_dir>/latest.md`. Needs root.
pub fn run(opts: &Options) -> Result<(Report, PathBuf)> {
    crate::require_root();
    let t0 = Instant::now();
    let mut report = Report::new(opts, conditions::Conditions::collect());
    if opts.parts.traffic {
        tools::ensure()?;
        report.conditions.add_tool_versions();
    }
    if opts.parts.program {
        let s = program::run(opts).context("program cost")?;
        report.sections.push(s);
    }
    if opts.parts.traffic {
        let s = traffic::run(opts).context("traffic")?;
        report.sections.push(s);
    }
    if opts.parts.control {
        let s = control::run(opts).context("control plane")?;
        report.sections.push(s);
    }
    if opts.parts.swarm {
        let s = swarm::run(opts).context("swarm")?;
        report.sections.push(s);
    }
    report.conditions.finish(t0.elapsed());
    let path = report.write(&opts.out_dir)?;
    Ok((report, path))
}

/// Monotonic clock in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; clock_gettime writes only
    // it (and CLOCK_MONOTONIC is always supported on Linux).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock in nanoseconds since the Unix epoch.
pub fn real_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
