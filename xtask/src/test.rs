//! `cargo xtask test`: setup, rustfmt, clippy, then the whole test suite
//! (privileged tests included: they are never skipped).
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::{cmd, disk, docker, root, setup};

/// `CI` is set (to anything but empty or `false`), as CI systems do.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The eBPF crate only builds for bpfel-unknown-none (netiso-daemon's
/// build.rs builds it); host-side lint and test runs leave it out.
const EBPF_CRATE: &str = "netiso-ebpf";

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Passed to `cargo test` (after `--`): a test-name filter, and after
    /// another `--` the test binaries' own flags, e.g. `-- policy -- --nocapture`
    #[arg(last = true, value_name = "FILTER/ARGS")]
    pub args: Vec<String>,
}

fn cargo() -> Command {
    Command::new("cargo")
}

/// The stages after setup, as (name, command, hint).
pub fn stages(extra: &[String]) -> Vec<(&'static str, Command, &'static str)> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--no-fail-fast",
    ])
    .args(extra)
    .env(docker::TEST_IMAGE_ENV, docker::TEST_IMAGE)
    .env("RUST_BACKTRACE", "1");
    // The Docker tests again, against the newer engines (after the main
    // tests: the same test binaries, not rebuilt).
    let mut engines = cargo();
    engines.args(["xtask", "engines"]);
    if !extra.is_empty() {
        engines.arg("--").args(extra);
    }
    // The .deb from the binary the tests just built (a release build would
    // cost minutes): the packaging is checked, not the optimiser.
    let mut package = cargo();
    package.args(["xtask", "package", "--dev"]);
    // A short, bounded run of every fuzz target (docs/fuzzing.md for long ones).
    let mut fuzz = cargo();
    fuzz.args(["xtask", "fuzz", "--seconds", "12"]);
    vec![
        (
            "rustfmt",
            fmt,
            "run `cargo fmt --all` to fix the formatting",
        ),
        ("clippy", clippy, "fix the lints above"),
        ("tests", test, "see the failing tests above"),
        (
            "engines",
            engines,
            "see the failing engine above; `cargo xtask engines --suite NAME` runs one",
        ),
        (
            "package",
            package,
            "see above; the .deb is described in netiso-daemon/Cargo.toml [package.metadata.deb]",
        ),
        (
            "fuzz",
            fuzz,
            "a fuzz target found a failing input: see above and docs/fuzzing.md",
        ),
    ]
}

/// The Debian roots a stage debootstraps into the target directory, kept
/// there as caches for the next local run.
fn caches_of(stage: &str) -> &'static [&'static str] {
    match stage {
        "tests" => &["systemd-root"],
        "engines" => &["engines"],
        _ => &[],
    }
}

/// In CI (a clean clone that never runs again) a stage's Debian roots go
/// once it is done, for the disk of the later stages; never one with
/// anything still mounted below it (that would reach into the mount).
fn drop_caches_of(stage: &str) {
    let target = crate::run::target_dir(Path::new("."), |k| std::env::var(k).ok());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for name in caches_of(stage) {
        let dir = match target.join(name).canonicalize() {
            Ok(d) => d,
            Err(_) => continue,
        };
        let busy = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|m| Path::new(m).starts_with(&dir));
        if busy {
            println!("  kept {} (something is mounted below it)", dir.display());
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("  removed {} (CI: not used again)", dir.display()),
            Err(e) => println!("  could not remove {}: {e}", dir.display()),
        }
    }
}

pub fn test(args: TestArgs) -> Result<()> {
    root::require_root(
        "cargo xtask test",
        "the suite includes privileged tests (eBPF, network namespaces, Docker) that must not be skipped",
    )?;
    let mut stages = stages(&args.args);
    let total = stages.len() + 1;
    println!("==> [1/{total}] setup");
    setup::setup(setup::Options {
        verify_image: false,
    })?;

    let mut results = Vec::new();
    for (i, (name, command, hint)) in stages.iter_mut().enumerate() {
        // Free disk space in every header: a full disk shows up as odd
        // build errors far from the cause.
        println!("==> [{}/{total}] {name} ({})", i + 2, disk::free_line());
        if ci() {
            // CI builds each crate once: incremental caches only cost disk.
            command.env("CARGO_INCREMENTAL", "0");
        }
        let result = cmd::run(command, hint);
        if let Err(e) = &result {
            println!("error: {e:#}");
        }
        if ci() {
            drop_caches_of(name);
        }
        results.push((*name, result.is_ok()));
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    let summary: Vec<String> = results
        .iter()
        .map(|(n, ok)| format!("{n} {}", if *ok { "ok" } else { "FAILED" }))
        .collect();
    println!(
        "==> summary: setup ok, {} ({})",
        summary.join(", "),
        disk::free_line()
    );
    if !failed.is_empty() {
        bail!("cargo xtask test failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_drops_the_roots_of_real_stages_only() {
        let names: Vec<_> = stages(&[]).into_iter().map(|s| s.0).collect();
        for stage in ["tests", "engines"] {
            assert!(names.contains(&stage), "{stage}");
            assert!(!caches_of(stage).is_empty());
        }
        // The paths tests/systemd_boot.rs and engines.rs debootstrap into.
        assert_eq!(caches_of("tests"), ["systemd-root"]);
        assert_eq!(caches_of("engines"), ["engines"]);
        assert!(caches_of("fuzz").is_empty() && caches_of("package").is_empty());
    }

    #[test]
    fn test_stage_gets_the_image_and_extra_args() {
        let extra = vec!["policy".to_string(), "--".into(), "--nocapture".into()];
        let stages = stages(&extra);
        let names: Vec<_> = stages.iter().map(|s| s.0).collect();
        assert_eq!(
            names,
            ["rustfmt", "clippy", "tests", "engines", "package", "fuzz"]
        );
        let test = &stages[2].1;
        let shown = cmd::display(test);
        assert!(
            shown.contains("NETISO_TEST_IMAGE=netiso-busybox:test"),
            "{shown}"
        );
        assert!(shown.contains("RUST_BACKTRACE=1"), "{shown}");
        assert!(
            shown.ends_with(
                "cargo test --workspace --exclude netiso-ebpf --no-fail-fast policy -- --nocapture"
            ),
            "{shown}"
        );
        assert!(cmd::display(&stages[1].1).ends_with("-- -D warnings"));
        assert!(
            cmd::display(&stages[3].1).ends_with("cargo xtask engines -- policy -- --nocapture")
        );
    }
}
