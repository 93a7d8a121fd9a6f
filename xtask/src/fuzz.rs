//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` (their own
//! workspace, nightly) and runs each for a bounded time, keeping the
//! corpus in `fuzz/corpus/<target>` and replaying `fuzz/regressions/<target>`
//! as seeds. The `kernel` target is the kernel fuzzer
//! (`netiso-daemon/tests/kernel_fuzz/`, a privileged test that replays
//! `fuzz/regressions/kernel` itself). `cargo xtask test` runs it for a few
//! seconds per target; docs/fuzzing.md says how to run for longer.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cmd, root, setup};

/// Every target, in the order they run. The packet and kernel targets
/// load eBPF programs (root).
pub const TARGETS: [&str; 6] = ["policy", "packet", "events", "control", "dns", "kernel"];

/// Not a cargo-fuzz target: frames through a real bridge between network
/// namespaces (`cargo test -p netiso-daemon --test kernel_fuzz`).
pub const KERNEL: &str = "kernel";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all of policy, packet, events, control,
    /// dns, kernel)
    #[arg(long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Parallel fuzzing processes per target (libFuzzer -fork)
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Optimised build with AddressSanitizer (slower to build; for long
    /// runs). The default is a quick unsanitised debug build, enough for
    /// short runs in CI.
    #[arg(long)]
    pub thorough: bool,
}

/// How one run went: seconds and executions, from libFuzzer's final stats.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub execs: u64,
    pub seconds: u64,
    pub corpus: u64,
}

/// Parses `stat::number_of_executed_units: N` (and the "Done N runs in S
/// second(s)" line) of a libFuzzer run's output.
pub fn parse_stats(output: &str) -> RunStats {
    let mut s = RunStats::default();
    for line in output.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = v.trim().parse().unwrap_or(s.execs);
        }
        if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 1234 runs in 10 second(s)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(n), Some(t)) = (words.first(), words.get(3)) {
                s.execs = s.execs.max(n.parse().unwrap_or(0));
                s.seconds = t.parse().unwrap_or(0);
            }
        }
        // "#1234\tDONE   cov: 567 ft: 890 corp: 12/345b ..."
        if let Some(i) = line.find("corp: ") {
            let n = line[i + 6..].split('/').next().unwrap_or("");
            s.corpus = n.trim().parse().unwrap_or(s.corpus);
        }
    }
    s
}

/// Reads the kernel fuzzer's first report line: "kernel fuzz: seed ...,
/// N inputs (M frames, ...) in S s: ..." (frames count as executions).
pub fn parse_kernel_stats(output: &str) -> RunStats {
    let mut s = RunStats::default();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("kernel fuzz: ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w == "(" || w.starts_with('(') {
                let n = w.trim_start_matches('(');
                if words.get(i + 1) == Some(&"frames,") {
                    s.execs = n.parse().unwrap_or(0);
                }
            }
            if *w == "in" {
                if let Some(t) = words.get(i + 1) {
                    if words.get(i + 2).is_some_and(|u| u.starts_with("s:")) {
                        s.seconds = t.parse::<f64>().map(|t| t as u64).unwrap_or(0);
                    }
                }
            }
        }
    }
    s
}

/// Runs the kernel fuzzer for `seconds` (it replays fuzz/regressions/kernel
/// first).
fn run_kernel(root: &Path, seconds: u64) -> Result<RunStats> {
    let mut c = Command::new("cargo");
    c.current_dir(root)
        .args([
            "test",
            "-p",
            "netiso-daemon",
            "--test",
            "kernel_fuzz",
            "--",
            "--nocapture",
        ])
        .env("NETISO_KFUZZ_SECONDS", seconds.to_string())
        .env("RUST_BACKTRACE", "1");
    let text = cmd::combined(
        &mut c,
        "the kernel fuzzer found a crossing or failed: see the report above; \
         new regression files are under fuzz/regressions/kernel/",
    )?;
    Ok(parse_kernel_stats(&text))
}

/// Installs cargo-fuzz from crates.io when it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    if let Some(p) = setup::find_program("cargo-fuzz") {
        setup::report("cargo-fuzz", format!("ok ({})", p.display()));
        return Ok(());
    }
    cmd::run(
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "cargo-fuzz comes from crates.io; check the network and the compiler output",
    )?;
    setup::report("cargo-fuzz", "installed");
    Ok(())
}

/// `fuzz/target`, or `$CARGO_TARGET_DIR/fuzz` when a target directory is
/// set (the fuzz build must not mix with the main one's flags).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("fuzz"),
        _ => root.join("fuzz").join("target"),
    }
}

fn cargo_fuzz(root: &Path, sub: &str, thorough: bool) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", sub])
        .arg("--target-dir")
        .arg(target_dir(root));
    if !thorough {
        c.args(["--dev", "--sanitizer", "none"]);
    }
    c
}

pub fn fuzz(root: &Path, args: FuzzArgs) -> Result<()> {
    root::require_root(
        "cargo xtask fuzz",
        "the packet target loads the eBPF programs into a private network namespace",
    )?;
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", "));
        }
    }
    if targets.iter().any(|t| t != KERNEL) {
        ensure_cargo_fuzz()?;
        cmd::run(
            &mut cargo_fuzz(root, "build", args.thorough),
            "the fuzz targets must build (fuzz/fuzz_targets/); nightly is required",
        )?;
    }
    let mut summary = Vec::new();
    for t in &targets {
        if t == KERNEL {
            let stats = run_kernel(root, args.seconds)?;
            println!("fuzz {t}: {} frames in {} s", stats.execs, stats.seconds);
            summary.push((t.clone(), stats));
            continue;
        }
        let corpus = root.join("fuzz").join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut c = cargo_fuzz(root, "run", args.thorough);
        c.arg(t).arg(&corpus);
        // Read-only seeds: the example policies, and every input that once
        // failed (replayed on every run).
        if t == "policy" {
            c.arg(root.join("policies"));
        }
        let regressions = root.join("fuzz").join("regressions").join(t);
        if regressions.is_dir() {
            c.arg(regressions);
        }
        c.arg("--").arg(format!("-max_total_time={}", args.seconds));
        c.args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096"]);
        if t == "policy" {
            c.arg(format!(
                "-dict={}",
                root.join("fuzz").join("policy.dict").display()
            ));
        }
        if args.jobs > 1 {
            c.arg(format!("-fork={}", args.jobs));
        }
        let started = Instant::now();
        let text = cmd::combined(
            &mut c,
            &format!(
                "the input that broke it is under fuzz/artifacts/{t}/ \
                 (replay: cd fuzz && cargo +nightly fuzz run {t} fuzz/artifacts/{t}/<file>)"
            ),
        )?;
        let mut stats = parse_stats(&text);
        if stats.seconds == 0 {
            stats.seconds = started.elapsed().as_secs();
        }
        println!(
            "fuzz {t}: {} executions in {} s, corpus {} inputs",
            stats.execs, stats.seconds, stats.corpus
        );
        summary.push((t.clone(), stats));
    }
    println!("==> fuzzing summary");
    for (t, s) in &summary {
        println!("  {t:8} {:>10} execs  {:>5} s", s.execs, s.seconds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_fuzzer_stats_are_read() {
        let out = "running 2 tests\n\
                   kernel fuzz: seed 0x5eed0001, marker 362ba7f3538b452f, 6 regression files, \
                   6697795 inputs (7069199 frames, 0 refused by the kernel) in 300.0 s: 23564 frames/s\n\
                   test nothing_crosses_a_denied_pair ... ok\n";
        assert_eq!(
            parse_kernel_stats(out),
            RunStats {
                execs: 7069199,
                seconds: 300,
                corpus: 0
            }
        );
    }

    #[test]
    fn libfuzzer_stats_are_read() {
        let out = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 40Mb\n\
                   #20480\tpulse  cov: 300 ft: 900 corp: 57/2345b lim: 200 exec/s: 10240\n\
                   Done 123456 runs in 12 second(s)\n\
                   stat::number_of_executed_units: 123457\n\
                   stat::peak_rss_mb:              80\n";
        assert_eq!(
            parse_stats(out),
            RunStats {
                execs: 123457,
                seconds: 12,
                corpus: 57
            }
        );
    }
}
