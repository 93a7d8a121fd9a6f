//! `cargo xtask install`: build the release binary and install netiso as a
//! systemd service. Upgrades replace the binary and the unit; the
//! configuration and the policy in /etc/netiso are never overwritten.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cmd, docker, root, run, setup};

/// Where `packaging/netiso.service` expects the binary (the .deb's place);
/// `install` rewrites it to [`BIN`].
pub const UNIT_BIN: &str = "/usr/bin/netiso";
pub const BIN: &str = "/usr/local/bin/netiso";
pub const UNIT: &str = "/etc/systemd/system/netiso.service";
pub const CONFIG: &str = "/etc/netiso/netiso.toml";
pub const POLICY: &str = "/etc/netiso/policy.toml";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Install under this directory instead of / (for packaging and tests;
    /// systemctl is not run)
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// Install target/release/netiso as it is, without building
    #[arg(long)]
    pub no_build: bool,
}

/// One file to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub dest: &'static str,
    pub mode: u32,
    /// Configuration the operator owns: kept when present.
    pub keep_existing: bool,
}

pub const ITEMS: &[Item] = &[
    Item {
        dest: BIN,
        mode: 0o755,
        keep_existing: false,
    },
    Item {
        dest: UNIT,
        mode: 0o644,
        keep_existing: false,
    },
    Item {
        dest: CONFIG,
        mode: 0o644,
        keep_existing: true,
    },
    Item {
        dest: POLICY,
        mode: 0o644,
        keep_existing: true,
    },
];

/// What happened to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Replaced,
    KeptExisting,
}

/// The contents of each [`ITEMS`] entry, from the workspace and the binary.
pub fn contents(root: &Path, binary: &Path) -> Result<Vec<Vec<u8>>> {
    let read = |p: PathBuf| fs::read(&p).with_context(|| format!("reading {}", p.display()));
    let unit = String::from_utf8(read(root.join("packaging/netiso.service"))?)?;
    if !unit.contains(UNIT_BIN) {
        bail!("packaging/netiso.service no longer runs {UNIT_BIN}; update xtask/src/install.rs");
    }
    Ok(vec![
        read(binary.to_path_buf())?,
        unit.replace(UNIT_BIN, BIN).into_bytes(),
        read(root.join("packaging/netiso.toml"))?,
        read(root.join("policies/default.toml"))?,
    ])
}

/// Writes every item under `destdir` ("/" for the real thing). Replaced
/// files are written beside the old one and renamed over it, so a running
/// daemon's binary is never half written.
pub fn install_files(destdir: &Path, data: &[Vec<u8>]) -> Result<Vec<(PathBuf, Outcome)>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut done = Vec::new();
    for (item, bytes) in ITEMS.iter().zip(data) {
        let dest = destdir.join(item.dest.trim_start_matches('/'));
        let exists = dest.exists();
        if exists && item.keep_existing {
            done.push((dest, Outcome::KeptExisting));
            continue;
        }
        let dir = dest.parent().context("destination without a directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.netiso-new",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(item.mode))?;
        fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
        done.push((
            dest,
            if exists {
                Outcome::Replaced
            } else {
                Outcome::Installed
            },
        ));
    }
    Ok(done)
}

pub fn install(root: &Path, args: InstallArgs) -> Result<()> {
    let destdir = args.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    if args.destdir.is_none() {
        root::require_root(
            "cargo xtask install",
            "it writes /usr/local/bin, /etc/systemd/system and /etc/netiso",
        )?;
    }
    let binary = run::target_dir(root, |k| std::env::var(k).ok()).join("release/netiso");
    if !args.no_build {
        println!("==> build: netiso-daemon (release)");
        cmd::run(
            Command::new("cargo").args(["build", "--release", "-p", "netiso-daemon"]),
            "fix the build errors above (`cargo xtask setup` installs the toolchain)",
        )?;
    }
    if !binary.is_file() {
        bail!(
            "{} is missing; build it (drop --no-build)",
            binary.display()
        );
    }
    println!("==> install into {}", destdir.display());
    for (path, outcome) in install_files(&destdir, &contents(root, &binary)?)? {
        let what = match outcome {
            Outcome::Installed => "installed",
            Outcome::Replaced => "replaced",
            Outcome::KeptExisting => "kept (yours; the new default is packaging/ in the source)",
        };
        setup::report(&path.display().to_string(), what);
    }
    if args.destdir.is_some() {
        return Ok(());
    }
    if docker::systemd_is_init(Path::new("/run/systemd/system")) {
        let systemctl = |a: &[&str]| {
            cmd::run(
                Command::new("systemctl").args(a),
                "see `systemctl status netiso` and `journalctl -u netiso`",
            )
        };
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "netiso.service"])?;
        // An upgrade: restart a running daemon on the new binary (the
        // pinned programs keep enforcing meanwhile). Not started otherwise:
        // review /etc/netiso/policy.toml first.
        systemctl(&["try-restart", "netiso.service"])?;
        println!("netiso is enabled. Review {POLICY}, then: systemctl start netiso; netiso status");
    } else {
        println!(
            "systemd is not running here: start the daemon yourself, e.g.\n  {BIN} daemon --config {CONFIG}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn installs_everything_then_keeps_the_operators_files_on_upgrade() {
        let dir = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let fake_bin = dir.join("netiso-build");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&fake_bin, "v1").unwrap();
        let dest = dir.join("root");

        let first = install_files(&dest, &contents(&root(), &fake_bin).unwrap()).unwrap();
        assert!(
            first.iter().all(|(_, o)| *o == Outcome::Installed),
            "{first:?}"
        );
        let unit = fs::read_to_string(dest.join("etc/systemd/system/netiso.service")).unwrap();
        assert!(unit.contains(&format!("ExecStart={BIN} daemon")), "{unit}");
        assert!(!unit.contains(UNIT_BIN));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dest.join("usr/local/bin/netiso"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let cfg = dest.join("etc/netiso/netiso.toml");
        assert_eq!(
            fs::read(&cfg).unwrap(),
            fs::read(root().join("packaging/netiso.toml")).unwrap()
        );
        assert!(dest.join("etc/netiso/policy.toml").is_file());

        // The operator edits the configuration; an upgrade keeps it.
        fs::write(&cfg, "resync_interval = 5\n").unwrap();
        fs::write(&fake_bin, "v2").unwrap();
        let second = install_files(&dest, &contents(&root(), &fake_bin).unwrap()).unwrap();
        let outcome = |p: &str| &second.iter().find(|(d, _)| d.ends_with(p)).unwrap().1;
        assert_eq!(outcome("usr/local/bin/netiso"), &Outcome::Replaced);
        assert_eq!(outcome("etc/netiso/netiso.toml"), &Outcome::KeptExisting);
        assert_eq!(outcome("etc/netiso/policy.toml"), &Outcome::KeptExisting);
        assert_eq!(fs::read_to_string(&cfg).unwrap(), "resync_interval = 5\n");
        assert_eq!(
            fs::read_to_string(dest.join("usr/local/bin/netiso")).unwrap(),
            "v2"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
