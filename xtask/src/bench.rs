//! `cargo xtask bench`: setup, then the benchmark harness
//! (`netiso-daemon/benches/netiso.rs`, built with the release profile),
//! which writes `bench/results/<timestamp>.{md,json}` and
//! `bench/results/latest.md`.
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{cmd, docker, root, setup};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tiny counts (under a minute): shows that the harness works, figures mean nothing
    #[arg(long)]
    pub smoke: bool,
    /// Only these parts, comma-separated: program, traffic, control
    #[arg(long, value_name = "PARTS")]
    pub only: Option<String>,
    /// Passed to the harness (after `--`), e.g. `--set reps=3 --set endpoints=200`
    #[arg(last = true, value_name = "ARGS")]
    pub extra: Vec<String>,
}

/// `cargo bench` of the harness, writing under `<root>/bench/results`.
pub fn command(root: &Path, args: &BenchArgs) -> Command {
    let mut c = Command::new("cargo");
    c.args(["bench", "-p", "netiso-daemon", "--bench", "netiso", "--"])
        .arg("--out-dir")
        .arg(root.join("bench").join("results"));
    if args.smoke {
        c.arg("--smoke");
    }
    if let Some(only) = &args.only {
        c.args(["--only", only]);
    }
    c.args(&args.extra)
        .env(docker::TEST_IMAGE_ENV, docker::TEST_IMAGE);
    c
}

pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    root::require_root(
        "cargo xtask bench",
        "it loads eBPF programs, makes network namespaces, installs iptables/nftables rules in them and starts containers",
    )?;
    setup::setup(setup::Options {
        verify_image: false,
    })?;
    println!("==> bench (about 12 minutes; `--smoke` for a quick check)");
    cmd::run(
        &mut command(root, &args),
        "see the harness's message above; `cargo xtask bench -- --help` lists its options",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_command_passes_options_through() {
        let args = BenchArgs {
            smoke: true,
            only: Some("program,traffic".into()),
            extra: vec!["--set".into(), "reps=3".into()],
        };
        let shown = cmd::display(&command(Path::new("/w"), &args));
        assert!(
            shown.ends_with(
                "cargo bench -p netiso-daemon --bench netiso -- --out-dir /w/bench/results --smoke --only program,traffic --set reps=3"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("NETISO_TEST_IMAGE=netiso-busybox:test"),
            "{shown}"
        );
    }
}
