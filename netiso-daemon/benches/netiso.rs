//! `cargo xtask bench` (or `cargo bench -p netiso-daemon --bench netiso`):
//! program cost, traffic and control-plane figures, written to
//! `bench/results/<timestamp>.{md,json}` and `bench/results/latest.md`.
//! Needs root (eBPF, namespaces, Docker). `--help` lists the options. The
//! harness itself is `netiso_testkit::bench` (the `bench_smoke` test runs
//! it with tiny counts); this is its command line.
use std::process::ExitCode;

use netiso_testkit::bench;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{}", bench::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match bench::Options::from_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(case) = &opts.profile {
        // For `perf record -e cpu-clock -a -g -- <this binary> --profile CASE`.
        return match bench::program::profile(case, 10.0) {
            Ok(ns) => {
                println!("bench: profiled {case}: {ns:.1} ns per run");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bench::run(&opts) {
        Ok((report, path)) => {
            println!("\nbench: report written to {}", path.display());
            for (f, t) in report.targets() {
                println!(
                    "  {:<7} {} ({})",
                    if t.met { "met" } else { "MISSED" },
                    f.label,
                    t.text
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
