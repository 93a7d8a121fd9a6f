//! `cargo xtask setup`: check every prerequisite, install what is missing,
//! and say one line per item what was found or done. Safe to run again.
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::root::is_root;
use crate::{cmd, docker};

/// A Debian package the project needs, and why.
pub struct Package {
    pub name: &'static str,
    /// Optional packages are installed when possible; failing to install
    /// them only warns.
    pub required: bool,
    pub why: &'static str,
}

/// Debian packages, in install order. README.md's
/// "What `cargo xtask setup` installs" section mirrors this list.
pub const PACKAGES: &[Package] = &[
    Package {
        name: "llvm-22-dev",
        required: true,
        why: "bpf-linker links against LLVM 22, the LLVM of rustc 1.95 and the nightly",
    },
    Package {
        name: "zlib1g-dev",
        required: true,
        why: "named by LLVM's link line (llvm-config --system-libs)",
    },
    Package {
        name: "libzstd-dev",
        required: true,
        why: "named by LLVM's link line (llvm-config --system-libs)",
    },
    Package {
        name: "docker.io",
        required: true,
        why: "the Docker engine (dockerd, containerd, runc, iptables) and CLI",
    },
    Package {
        name: "busybox-static",
        required: true,
        why: "the static busybox the local test image is made of",
    },
    Package {
        name: "iproute2",
        required: true,
        why: "`ip` for the network-namespace tests",
    },
    Package {
        name: "iputils-ping",
        required: true,
        why: "`ping` for connectivity checks",
    },
    Package {
        name: "netcat-openbsd",
        required: true,
        why: "`nc` for TCP/UDP connectivity checks",
    },
    Package {
        name: "systemd",
        required: true,
        why: "`systemd-analyze verify` checks the unit file offline (systemd need not be PID 1)",
    },
    Package {
        name: "debootstrap",
        required: true,
        why: "makes the Debian roots: the Debian 12 that tests/systemd_boot.rs boots (target/systemd-root) and the newer Docker engines `cargo xtask engines` tests against (target/engines)",
    },
    Package {
        name: "systemd-container",
        required: true,
        why: "`systemd-nspawn -b` boots that root with systemd as PID 1 (tests/systemd_boot.rs)",
    },
    Package {
        name: "bpftool",
        required: false,
        why: "inspecting loaded programs, maps and links (nice to have)",
    },
];

/// The LLVM that bpf-linker is built against (matches rustc's LLVM major).
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_FEATURE: &str = "llvm-22";

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Also run a container from the test image when it already existed
    /// (a freshly built image is always checked).
    pub verify_image: bool,
}

/// Prints one line per item: `  item .......... status`.
pub fn report(item: &str, status: impl Display) {
    println!("  {item:<34} {status}");
}

pub fn setup(opts: Options) -> Result<()> {
    println!("==> setup: checking prerequisites");
    packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    let engine = docker::Engine::system().ensure()?;
    report("docker engine", engine);
    let image = docker::ensure_test_image(opts.verify_image)?;
    report(&format!("image {}", docker::TEST_IMAGE), image);
    println!("==> setup: everything is ready");
    Ok(())
}

// ---------------------------------------------------------------- paths

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// `PATH` with `dir` in front, unless it is already one of its entries.
pub fn path_with(dir: &Path, path: &std::ffi::OsStr) -> std::ffi::OsString {
    if std::env::split_paths(path).any(|p| p == dir) {
        return path.to_os_string();
    }
    let mut all = vec![dir.to_path_buf()];
    all.extend(std::env::split_paths(path));
    std::env::join_paths(all).unwrap_or_else(|_| path.to_os_string())
}

/// Looks a program up on `PATH`, then in the cargo bin dir.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin_dir())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

// ---------------------------------------------------------------- Debian packages

/// Parses `dpkg-query -W -f='${Package} ${Status}\n'` output into
/// package → installed.
pub fn parse_dpkg_status(text: &str) -> BTreeMap<String, bool> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            // "install ok installed", "deinstall ok config-files", ...
            let state = words.last()?;
            Some((name.to_string(), state == "installed"))
        })
        .collect()
}

fn installed_packages(names: &[&str]) -> Result<BTreeMap<String, bool>> {
    // dpkg-query exits 1 when a package is unknown, but still reports the
    // others on stdout: read stdout whatever the exit status.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\\n")
        .args(names)
        .output()
        .context("could not run dpkg-query: `cargo xtask setup` needs a Debian-based system")?;
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&out.stdout)))
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    // -q and no pty: readable logs without progress bars.
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-o", "Dpkg::Use-Pty=0"]);
    c
}

fn apt_install(names: &[&str]) -> Result<()> {
    let mut c = apt_get();
    c.args(["install", "-y", "--no-install-recommends"])
        .args(names);
    cmd::run(
        &mut c,
        "check the apt sources (`apt-cache policy PACKAGE`) and the network",
    )
}

fn packages() -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    let status = installed_packages(&names)?;
    let missing: Vec<&Package> = PACKAGES
        .iter()
        .filter(|p| !status.get(p.name).copied().unwrap_or(false))
        .collect();
    for p in PACKAGES
        .iter()
        .filter(|p| !missing.iter().any(|m| m.name == p.name))
    {
        report(&format!("apt {}", p.name), "ok");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let missing_names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !is_root() {
        let list: Vec<String> = missing
            .iter()
            .map(|p| format!("  {}: {}", p.name, p.why))
            .collect();
        bail!(
            "missing Debian packages:\n{}\nInstalling them needs root: run `cargo xtask setup` as root \
             (or `apt-get install {}` yourself)",
            list.join("\n"),
            missing_names.join(" ")
        );
    }
    cmd::run(
        apt_get().arg("update"),
        "apt-get cannot reach the Debian mirrors; check /etc/apt/sources.list*",
    )?;
    let required: Vec<&str> = missing
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name)
        .collect();
    if !required.is_empty() {
        apt_install(&required)?;
    }
    let mut failed_optional = Vec::new();
    for p in missing.iter().filter(|p| !p.required) {
        if let Err(e) = apt_install(&[p.name]) {
            println!("warning: optional package {} not installed: {e:#}", p.name);
            failed_optional.push(p.name);
        }
    }
    let after = installed_packages(&missing_names)?;
    for p in &missing {
        let ok = after.get(p.name).copied().unwrap_or(false);
        match (ok, p.required) {
            (true, _) => report(&format!("apt {}", p.name), "installed"),
            (false, false) => report(&format!("apt {}", p.name), "not installed (optional)"),
            (false, true) => bail!(
                "apt-get reported success but {} is still not installed; see the apt output above",
                p.name
            ),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Rust toolchains

fn rustup() -> Command {
    Command::new("rustup")
}

/// Component names from `rustup component list --installed`
/// (`rust-src`, `clippy-x86_64-unknown-linux-gnu`, ...).
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines().map(str::trim).any(|l| {
        l == component
            || l.strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

const RUSTUP_HINT: &str = "rustup needs to reach the Rust distribution server; \
     or install the toolchain/component by hand with rustup";

fn rust_toolchains() -> Result<()> {
    // The nightly toolchain builds the eBPF crate with -Z build-std=core.
    let nightly = cmd::probe(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("rustup is required (the eBPF crate is built with the nightly toolchain); install it from rustup.rs")?;
    let status = match nightly {
        None => {
            cmd::run(
                rustup().args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
                RUSTUP_HINT,
            )?;
            "installed (toolchain nightly with rust-src)"
        }
        Some(list) if has_component(&list, "rust-src") => "ok",
        Some(_) => {
            cmd::run(
                rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]),
                RUSTUP_HINT,
            )?;
            "installed (rust-src)"
        }
    };
    report("rust nightly + rust-src", status);

    // The active toolchain runs `cargo fmt` and `cargo clippy` in `cargo xtask test`.
    let list = cmd::output(rustup().args(["component", "list", "--installed"]))
        .context("listing the active toolchain's components")?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&list, c))
        .collect();
    let status = if missing.is_empty() {
        "ok".to_string()
    } else {
        cmd::run(
            rustup().args(["component", "add"]).args(&missing),
            RUSTUP_HINT,
        )?;
        format!("installed ({})", missing.join(", "))
    };
    report("rust rustfmt + clippy", status);
    Ok(())
}

// ---------------------------------------------------------------- bpf-linker

fn bpf_linker_version(path: &Path) -> Option<String> {
    let out = cmd::probe(Command::new(path).arg("--version")).ok()??;
    Some(out.trim().to_string())
}

fn bpf_linker() -> Result<()> {
    let found = find_program("bpf-linker");
    if let Some(path) = &found {
        if let Some(version) = bpf_linker_version(path) {
            report("bpf-linker", format!("ok ({version}, {})", path.display()));
            return Ok(());
        }
        println!(
            "  {} does not run (built against another LLVM?); reinstalling",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut c = Command::new("cargo");
    c.env("PATH", path_with(Path::new(LLVM_BIN), &path))
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(BPF_LINKER_FEATURE);
    if found.is_some() {
        c.arg("--force");
    }
    cmd::run(
        &mut c,
        "building bpf-linker needs llvm-22-dev (apt) and crates.io; see the compiler output above",
    )?;
    let path = find_program("bpf-linker").context(
        "`cargo install bpf-linker` succeeded but bpf-linker is not in the cargo bin dir",
    )?;
    let version = bpf_linker_version(&path)
        .with_context(|| format!("the freshly installed {} does not run", path.display()))?;
    report(
        "bpf-linker",
        format!("installed ({version}, {})", path.display()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        let text = "llvm-22-dev install ok installed\n\
                    docker.io deinstall ok config-files\n\
                    bpftool install ok half-installed\n\
                    iproute2 hold ok installed\n";
        let s = parse_dpkg_status(text);
        assert_eq!(s.get("llvm-22-dev"), Some(&true));
        assert_eq!(s.get("docker.io"), Some(&false));
        assert_eq!(s.get("bpftool"), Some(&false));
        assert_eq!(s.get("iproute2"), Some(&true));
        assert_eq!(s.get("busybox-static"), None);
    }

    #[test]
    fn components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component(list, "clippy"));
        assert!(!has_component(list, "rustfmt"));
        assert!(!has_component("rust-src-extra\n", "rust-src-e"));
        assert!(!has_component("rustc-x86_64\n", "rust"));
    }

    #[test]
    fn path_prepending() {
        let p = path_with(Path::new("/opt/bin"), "/usr/bin:/bin".as_ref());
        assert_eq!(p, "/opt/bin:/usr/bin:/bin");
        let p = path_with(Path::new("/bin"), "/usr/bin:/bin".as_ref());
        assert_eq!(p, "/usr/bin:/bin");
    }

    #[test]
    fn packages_are_unique_and_explained() {
        let mut names: Vec<_> = PACKAGES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PACKAGES.len());
        assert!(PACKAGES.iter().all(|p| !p.why.is_empty()));
    }

    #[test]
    fn readme_lists_every_package() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        for p in PACKAGES {
            assert!(
                readme.contains(&format!("`{}`", p.name)),
                "README.md does not mention `{}`",
                p.name
            );
        }
    }
}
