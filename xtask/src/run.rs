//! `cargo xtask run`: set up, build the daemon, and run it in the
//! foreground as this very process (exec), so that signals reach it and its
//! exit code is ours.
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cmd, root, setup};

/// The policy the daemon runs with unless `--policy` says otherwise.
pub const DEFAULT_POLICY: &str = "policies/default.toml";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file for the daemon [default: policies/default.toml]
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Build and run the release profile
    #[arg(long)]
    pub release: bool,
    /// Extra arguments for `netiso daemon` (after `--`)
    #[arg(last = true, value_name = "EXTRA")]
    pub extra: Vec<String>,
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` (or
/// `$CARGO_BUILD_TARGET_DIR`), relative to the workspace root, else `target/`.
pub fn target_dir(root: &Path, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .into_iter()
        .find_map(|k| env(k).filter(|v| !v.is_empty()))
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// `invoked_from` is the directory `cargo xtask` was started in: a relative
/// `--policy` is relative to it, the default policy to the workspace root.
pub fn run(root: &Path, invoked_from: &Path, args: RunArgs) -> Result<()> {
    root::require_root(
        "cargo xtask run",
        "the daemon loads eBPF programs, attaches them to container veths and talks to dockerd",
    )?;
    let policy = match &args.policy {
        Some(p) => invoked_from.join(p),
        None => root.join(DEFAULT_POLICY),
    };
    if !policy.is_file() {
        bail!(
            "policy file {} does not exist; pass one with `cargo xtask run --policy PATH`",
            policy.display()
        );
    }
    setup::setup(setup::Options {
        verify_image: false,
    })?;

    println!("==> build: netiso-daemon");
    let mut build = Command::new("cargo");
    build.args(["build", "-p", "netiso-daemon"]);
    if args.release {
        build.arg("--release");
    }
    cmd::run(&mut build, "fix the build errors above")?;

    let profile = if args.release { "release" } else { "debug" };
    let bin = target_dir(root, |k| std::env::var(k).ok())
        .join(profile)
        .join("netiso");
    if !bin.is_file() {
        bail!(
            "the build succeeded but {} is missing (a target dir set in a cargo config file?)",
            bin.display()
        );
    }
    let mut daemon = Command::new(&bin);
    daemon
        .arg("daemon")
        .arg("--policy")
        .arg(&policy)
        .args(&args.extra);
    println!("==> run: {}", cmd::display(&daemon));
    // exec only returns on failure.
    let err = daemon.exec();
    Err(err).with_context(|| format!("could not start {}", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_follows_cargo() {
        let root = Path::new("/w");
        assert_eq!(target_dir(root, |_| None), Path::new("/w/target"));
        assert_eq!(
            target_dir(root, |k| (k == "CARGO_TARGET_DIR").then(|| "/t".into())),
            Path::new("/t")
        );
        assert_eq!(
            target_dir(root, |k| (k == "CARGO_BUILD_TARGET_DIR")
                .then(|| "out".into())),
            Path::new("/w/out")
        );
        assert_eq!(
            target_dir(root, |_| Some(String::new())),
            Path::new("/w/target")
        );
    }
}
