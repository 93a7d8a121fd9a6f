//! netiso's developer and operator workflow:
//! `cargo xtask setup | run | test | install | package | bench`.
mod bench;
mod cmd;
mod disk;
mod docker;
mod engines;
mod fuzz;
mod install;
mod package;
mod root;
mod run;
mod setup;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "netiso's workflow: install prerequisites, run the daemon, run the tests",
    after_help = "Run as root: setup installs Debian packages and starts dockerd; run and test need root."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check every prerequisite and install what is missing (idempotent)
    Setup,
    /// Setup, build netiso-daemon and run `netiso daemon` in the foreground
    Run(run::RunArgs),
    /// Setup, then rustfmt, clippy and the whole test suite (privileged tests included)
    Test(test::TestArgs),
    /// Build the release binary and install netiso as a systemd service
    /// (/usr/local/bin, /etc/systemd/system, /etc/netiso; existing config kept)
    Install(install::InstallArgs),
    /// Build the .deb with cargo-deb (installed when missing) and check its contents
    Package(package::PackageArgs),
    /// Setup, then the benchmarks: program cost, traffic, control plane (report in bench/results/)
    Bench(bench::BenchArgs),
    /// Setup, then the Docker end-to-end, scenario, hostile-container,
    /// lifecycle and published-port tests against newer engines (Debian 13's and Debian testing's
    /// docker.io), each a private dockerd from a debootstrapped root
    /// (cached in target/engines/)
    Engines(engines::EnginesArgs),
    /// Build the cargo-fuzz targets (fuzz/) and run each for a bounded time
    /// (corpora in fuzz/corpus/; see docs/fuzzing.md)
    Fuzz(fuzz::FuzzArgs),
}

/// The workspace root (xtask lives in `<root>/xtask`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, without anyhow's backtrace (CI sets
            // RUST_BACKTRACE=1 for the tests, not for xtask's own errors).
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Programs that `cargo install` puts in the cargo bin dir (bpf-linker)
    // must be found by everything we start, also where that dir is not on
    // the caller's PATH (sudo, CI). Set before any thread exists.
    if let Some(bin) = setup::cargo_bin_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::set_var("PATH", setup::path_with(&bin, &path));
    }
    let invoked_from = std::env::current_dir().context("reading the current directory")?;
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("changing to the workspace root {}", root.display()))?;
    match cli.command {
        Cmd::Setup => setup::setup(setup::Options { verify_image: true }),
        Cmd::Run(args) => run::run(&root, &invoked_from, args),
        Cmd::Test(args) => test::test(args),
        Cmd::Install(args) => install::install(&root, args),
        Cmd::Package(args) => package::package(&root, args).map(|_| ()),
        Cmd::Bench(args) => bench::bench(&root, args),
        Cmd::Fuzz(args) => fuzz::fuzz(&root, args),
        Cmd::Engines(args) => engines::engines(&root, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_after_double_dash_pass_through() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "policy", "--", "--nocapture"]).unwrap();
        let Cmd::Test(t) = cli.command else { panic!() };
        assert_eq!(t.args, ["policy", "--", "--nocapture"]);

        let cli = Cli::try_parse_from([
            "xtask",
            "run",
            "--release",
            "--policy",
            "p.toml",
            "--",
            "--log-level",
            "debug",
        ])
        .unwrap();
        let Cmd::Run(r) = cli.command else { panic!() };
        assert!(r.release);
        assert_eq!(r.policy.as_deref(), Some(Path::new("p.toml")));
        assert_eq!(r.extra, ["--log-level", "debug"]);

        let cli = Cli::try_parse_from(["xtask", "run"]).unwrap();
        let Cmd::Run(r) = cli.command else { panic!() };
        assert!(r.policy.is_none() && !r.release && r.extra.is_empty());
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
