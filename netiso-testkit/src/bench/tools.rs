//! External tools the traffic bench drives, installed with apt-get when
//! missing (the same way `cargo xtask setup` installs its packages).
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// (program, Debian package).
pub const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
];

fn on_path(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Result<bool> {
    let st = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-o", "Dpkg::Use-Pty=0"])
        .args(args)
        .status()
        .context("running apt-get (the bench installs iperf3 and nftables on Debian)")?;
    Ok(st.success())
}

/// Installs whatever of [`TOOLS`] is missing.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(p, _)| !on_path(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing {}", missing.join(" "));
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    // Try without `apt-get update` first: it is slow and usually not needed.
    let installed = apt(&install)? || (apt(&["update"])? && apt(&install)?);
    if !installed {
        bail!(
            "could not install {} with apt-get; install them by hand",
            missing.join(" ")
        );
    }
    for (p, pkg) in TOOLS {
        if !on_path(p) {
            bail!("{pkg} was installed but `{p}` is not on PATH");
        }
    }
    Ok(())
}
