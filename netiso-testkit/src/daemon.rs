//! A `netiso daemon` process started by a test (its own pin and state
//! directories, killed on drop) and the path of the `netiso` binary cargo
//! built for the test. Uses `ns` and the daemon's published state.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::ns::PinDir;

/// The `netiso` binary cargo built for the running integration test or
/// bench. `CARGO_BIN_EXE_netiso` only exists when compiling a test or bench
/// of netiso-daemon, not this library, so the path is derived from the
/// running executable instead: `target/<profile>/deps/<test>-<hash>` sits
/// next to `target/<profile>/netiso`. `tests/layers.rs` checks that both agree.
pub fn netiso_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test");
    let mut dir = exe.parent().expect("the test's directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("netiso");
    assert!(
        bin.is_file(),
        "{} not found: run the tests of netiso-daemon through cargo (`cargo test -p netiso-daemon`), which builds the binary first",
        bin.display()
    );
    bin
}

/// `netiso daemon` on a test's own pin and state directories, output to
/// `log`: the flags every daemon a test or bench starts shares. `program`
/// is `netiso` or a wrapper that execs it. The machine's configuration,
/// socket and metrics port are never used: unless `args` name `--config`
/// (a test that brings its own file sets them there), an empty
/// configuration and, unless `args` name them, the socket in the state
/// directory and no metrics endpoint.
pub fn daemon_command(
    mut program: Command,
    pins: &Path,
    state_dir: &Path,
    args: &[String],
    log: &File,
) -> Command {
    program
        .arg("daemon")
        .arg("--pin-dir")
        .arg(pins)
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env("NETISO_LOG", "netiso_daemon=debug,info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log file"))
        .stderr(log.try_clone().expect("dup the log file"));
    let named = |flag: &str| args.iter().any(|a| a == flag);
    if !named("--config") {
        program.arg("--config").arg(empty_config());
        if !named("--socket") {
            program.arg("--socket").arg(state_dir.join("netiso.sock"));
        }
        if !named("--metrics-addr") {
            program.args(["--metrics-addr", "off"]);
        }
    }
    program
}

/// An empty configuration file, so that tests never read the machine's
/// /etc/netiso/netiso.toml.
pub fn empty_config() -> PathBuf {
    let p = std::env::temp_dir().join("netiso-test-empty-config.toml");
    if !p.exists() {
        std::fs::write(&p, "# every key at its default\n").unwrap();
    }
    p
}

/// A `netiso daemon` process started by the test, with its own pin and
/// state directories; killed (by its own pid) on drop.
pub struct DaemonProc {
    pub child: std::process::Child,
    pub pins: PinDir,
    pub state_dir: tempfile::TempDir,
    pub policy_path: PathBuf,
}

impl DaemonProc {
    pub fn start(policy_path: PathBuf) -> Self {
        Self::start_with(policy_path, &[])
    }

    /// Like [`start`](Self::start), with extra `netiso daemon` flags. The
    /// metrics endpoint gets a free port unless `extra` names one, so that
    /// parallel daemons never compete for the default.
    pub fn start_with(policy_path: PathBuf, extra: &[&str]) -> Self {
        Self::start_program(Command::new(netiso_bin()), policy_path, extra)
    }

    /// Like [`start_with`](Self::start_with), with `program` (`netiso` or
    /// a wrapper that execs it: `nsenter --net=… netiso`, with the
    /// environment it needs) in place of the plain binary. `program`'s pid
    /// must be the daemon's: drop kills that pid.
    pub fn start_program(program: Command, policy_path: PathBuf, extra: &[&str]) -> Self {
        let pins = PinDir::new();
        let state_dir = tempfile::tempdir().unwrap();
        let log = File::create(state_dir.path().join("daemon.log")).unwrap();
        let mut args: Vec<String> = vec!["--policy".into(), policy_path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr".into(), "127.0.0.1:0".into()]);
        }
        let child = daemon_command(program, &pins.path, state_dir.path(), &args, &log)
            .spawn()
            .expect("start netiso daemon");
        Self {
            child,
            pins,
            state_dir,
            policy_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn state(&self) -> netiso_daemon::observe::state::State {
        netiso_daemon::observe::state::State::read(self.state_dir.path()).unwrap()
    }

    /// Waits (bounded) until `pred` holds for the published state.
    pub fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&netiso_daemon::observe::state::State) -> bool,
    ) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Ok(s) = netiso_daemon::observe::state::State::read(self.state_dir.path()) {
                if pred(&s) {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; daemon log:\n{}", self.log());
    }

    /// Runs `netiso <args>` against this daemon's directories.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(netiso_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .output()
            .expect("run netiso")
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
