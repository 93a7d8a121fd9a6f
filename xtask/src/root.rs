//! Who we run as: the effective uid, and a clear error for commands that
//! need root. Uses nothing of the crate (setup, docker and the commands
//! all ask it).
use anyhow::{bail, Context as _, Result};

/// The effective uid from a `/proc/<pid>/status` text.
pub fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status to find the effective uid")?;
    parse_effective_uid(&status).context("no Uid: line in /proc/self/status")
}

pub fn is_root() -> bool {
    effective_uid().map(|uid| uid == 0).unwrap_or(false)
}

/// Fails with a message saying what needs root and why.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`{what}` must run as root: {why}. Run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask {}`",
            what.trim_start_matches("cargo xtask ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid() {
        let status = "Name:\tcat\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
        let real = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_effective_uid(&real).is_some());
    }
}
