//! `cargo xtask package`: the .deb, built with cargo-deb from the metadata
//! in `netiso-daemon/Cargo.toml`, then checked: binary, unit, configuration
//! and policy inside, /etc files marked as conffiles, the unit enabled by
//! the maintainer scripts, and the pins removed on package removal.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cmd, run, setup};

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Package the dev-profile binary (target/debug/netiso, built if needed):
    /// a quick check of the packaging, as `cargo xtask test` does. The
    /// default is a release build.
    #[arg(long)]
    pub dev: bool,
}

/// What the .deb must hold (paths as `dpkg-deb -c` prints them).
pub const REQUIRED: &[&str] = &[
    "./usr/bin/netiso",
    "./etc/netiso/netiso.toml",
    "./etc/netiso/policy.toml",
];
/// Completions and the main manual page, where Debian's shells and man look.
pub const DOCS: &[&str] = &[
    "./usr/share/bash-completion/completions/netiso",
    "./usr/share/zsh/vendor-completions/_netiso",
    "./usr/share/fish/vendor_completions.d/netiso.fish",
    "./usr/share/man/man1/netiso.1.gz",
    "./usr/share/man/man1/netiso-stats.1.gz",
];
pub const UNIT_PATHS: &[&str] = &[
    "./lib/systemd/system/netiso.service",
    "./usr/lib/systemd/system/netiso.service",
];
pub const CONFFILES: &[&str] = &["/etc/netiso/netiso.toml", "/etc/netiso/policy.toml"];

/// Installs cargo-deb from crates.io when it is missing.
fn ensure_cargo_deb() -> Result<()> {
    if let Some(p) = setup::find_program("cargo-deb") {
        setup::report("cargo-deb", format!("ok ({})", p.display()));
        return Ok(());
    }
    cmd::run(
        Command::new("cargo").args(["install", "cargo-deb", "--locked"]),
        "cargo-deb comes from crates.io; check the network and the compiler output",
    )?;
    setup::report("cargo-deb", "installed");
    Ok(())
}

/// Writes the shell completions and manual pages the .deb ships into
/// `<profile dir>/assets` (cargo-deb maps the `target/release/` of the
/// asset paths in netiso-daemon/Cargo.toml to the profile packaged).
fn generate_assets(profile_dir: &Path) -> Result<()> {
    let netiso = profile_dir.join("netiso");
    let assets = profile_dir.join("assets");
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = cmd::output(Command::new(&netiso).args(["completions", shell]))?;
        std::fs::write(completions.join(file), script)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    let man = assets.join("man");
    let _ = std::fs::remove_dir_all(&man);
    cmd::run(
        Command::new(&netiso).arg("man").arg("--dir").arg(&man),
        "the binary could not write its manual pages",
    )?;
    // Debian ships manual pages compressed (gzip -n: no name or time, so
    // the same page gives the same bytes).
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    cmd::run(
        Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages),
        "gzip compresses the manual pages; install it (apt-get install gzip)",
    )?;
    Ok(())
}

/// Shell, file name under `assets/completions`.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "netiso"),
    ("zsh", "_netiso"),
    ("fish", "netiso.fish"),
];

/// Checks a package's file list, conffiles and maintainer scripts.
pub fn check(listing: &str, conffiles: &str, postinst: &str, prerm: &str) -> Result<()> {
    // `-rwxr-xr-x root/root 123 2024-01-01 00:00 ./usr/bin/netiso`
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in REQUIRED.iter().chain(DOCS) {
        if !paths.contains(want) {
            bail!("the .deb lacks {want}; it holds:\n{listing}");
        }
    }
    if !UNIT_PATHS.iter().any(|u| paths.contains(u)) {
        bail!("the .deb lacks the systemd unit; it holds:\n{listing}");
    }
    if let Some(l) = listing.lines().find(|l| l.ends_with(" ./usr/bin/netiso")) {
        if !l.starts_with("-rwxr-xr-x") {
            bail!("/usr/bin/netiso is not executable: {l}");
        }
    }
    for c in CONFFILES {
        if !conffiles.lines().any(|l| l.trim() == *c) {
            bail!(
                "{c} is not a conffile (dpkg would overwrite the operator's edits):\n{conffiles}"
            );
        }
    }
    if !postinst.contains("netiso.service") {
        bail!("postinst does not enable netiso.service:\n{postinst}");
    }
    if !prerm.contains("netiso cleanup") {
        bail!("prerm does not remove the pins on removal:\n{prerm}");
    }
    Ok(())
}

pub fn package(root: &Path, args: PackageArgs) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    let mut deb = Command::new("cargo");
    deb.args(["deb", "-p", "netiso-daemon", "--no-build"]);
    let target = run::target_dir(root, |k| std::env::var(k).ok());
    // The binary first: the completions and manual pages come from it.
    let profile_dir = if args.dev {
        // After `cargo test` the binary is there; building it again with
        // another feature set would only cost minutes.
        if !target.join("debug/netiso").is_file() {
            cmd::run(
                Command::new("cargo").args(["build", "-p", "netiso-daemon"]),
                "fix the build errors above",
            )?;
        }
        deb.args(["--profile", "dev"]);
        target.join("debug")
    } else {
        cmd::run(
            Command::new("cargo").args(["build", "--release", "-p", "netiso-daemon"]),
            "fix the build errors above",
        )?;
        target.join("release")
    };
    generate_assets(&profile_dir)?;
    let out_dir = target.join("debian");
    deb.arg("--output").arg(&out_dir);
    // The build's progress shows as it happens; stdout names the package.
    deb.stderr(std::process::Stdio::inherit());
    cmd::echo(&deb);
    let printed = cmd::output(&mut deb).context("cargo deb failed")?;
    // cargo-deb prints the package's path last.
    let path = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path:\n{printed}"))?;
    let listing = cmd::output(Command::new("dpkg-deb").arg("-c").arg(&path))?;
    let control = std::env::temp_dir().join(format!("netiso-deb-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&control);
    cmd::output(Command::new("dpkg-deb").arg("-e").arg(&path).arg(&control))?;
    let read = |f: &str| std::fs::read_to_string(control.join(f)).unwrap_or_default();
    let checked = check(
        &listing,
        &read("conffiles"),
        &read("postinst"),
        &read("prerm"),
    );
    let _ = std::fs::remove_dir_all(&control);
    checked.with_context(|| format!("checking {}", path.display()))?;
    print!("{listing}");
    setup::report(
        "package",
        format!("{} (binary, unit, config, policy; checked)", path.display()),
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
drwxr-xr-x 0/0               0 2024-01-01 00:00 ./
-rwxr-xr-x 0/0         1234567 2024-01-01 00:00 ./usr/bin/netiso
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./etc/netiso/netiso.toml
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./etc/netiso/policy.toml
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./lib/systemd/system/netiso.service
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./usr/share/bash-completion/completions/netiso
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./usr/share/zsh/vendor-completions/_netiso
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./usr/share/fish/vendor_completions.d/netiso.fish
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./usr/share/man/man1/netiso.1.gz
-rw-r--r-- 0/0            1000 2024-01-01 00:00 ./usr/share/man/man1/netiso-stats.1.gz
";
    const CONF: &str = "/etc/netiso/netiso.toml\n/etc/netiso/policy.toml\n";
    const POSTINST: &str = "deb-systemd-helper enable 'netiso.service'";
    const PRERM: &str = "/usr/bin/netiso cleanup || true";

    #[test]
    fn a_complete_package_passes() {
        check(LISTING, CONF, POSTINST, PRERM).unwrap();
    }

    #[test]
    fn anything_missing_fails() {
        let no_unit = LISTING.replace("./lib/systemd/system/netiso.service", "./x");
        assert!(check(&no_unit, CONF, POSTINST, PRERM).is_err());
        let no_bin = LISTING.replace("./usr/bin/netiso", "./usr/bin/other");
        assert!(check(&no_bin, CONF, POSTINST, PRERM).is_err());
        let not_exec = LISTING.replace(
            "-rwxr-xr-x 0/0         1234567",
            "-rw-r--r-- 0/0         1234567",
        );
        assert!(check(&not_exec, CONF, POSTINST, PRERM).is_err());
        let no_completions = LISTING.replace("_netiso", "x");
        assert!(check(&no_completions, CONF, POSTINST, PRERM).is_err());
        let no_man = LISTING.replace("./usr/share/man/man1/netiso.1.gz", "./x");
        assert!(check(&no_man, CONF, POSTINST, PRERM).is_err());
        assert!(check(LISTING, "/etc/netiso/netiso.toml\n", POSTINST, PRERM).is_err());
        assert!(check(LISTING, CONF, "", PRERM).is_err());
        assert!(check(LISTING, CONF, POSTINST, "").is_err());
    }
}
