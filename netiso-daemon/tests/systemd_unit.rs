//! The systemd unit (`packaging/netiso.service`): it passes
//! `systemd-analyze verify` (offline; systemd need not be PID 1), its
//! sandbox scores as expected, and the daemon enforces with exactly the
//! capabilities the unit grants (and does not without one of them).

use std::path::{Path, PathBuf};
use std::process::Command;

use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::ops::Netiso;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/netiso.service");

fn systemd_analyze() -> PathBuf {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(
        p.exists(),
        "systemd-analyze is missing: run `cargo xtask setup` (it installs Debian's systemd package)"
    );
    p
}

/// The unit with `ExecStart` pointing at the binary under test (verify
/// checks that the program exists), written as `netiso.service` in `dir`.
fn unit_copy(dir: &Path, text: &str) -> PathBuf {
    let text = text.replace("/usr/bin/netiso", env!("CARGO_BIN_EXE_netiso"));
    assert!(
        text.contains(env!("CARGO_BIN_EXE_netiso")),
        "ExecStart moved?"
    );
    let p = dir.join("netiso.service");
    std::fs::write(&p, text).unwrap();
    p
}

/// `systemd-analyze verify`: Ok only with exit status 0 and nothing said
/// (unknown keys are only warnings, with status 0).
fn verify(unit: &Path) -> Result<(), String> {
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(unit)
        .current_dir(unit.parent().unwrap())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {said}", out.status))
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &text);
    verify(&unit).unwrap_or_else(|e| panic!("systemd-analyze verify {UNIT}: {e}"));
    for (line, needed) in [
        ("Type=notify", "readiness after the first reconcile"),
        ("Restart=on-failure", "restart on failure"),
        ("After=docker.service", "ordered after Docker"),
        ("Wants=docker.service", "pulls Docker in"),
        ("NoNewPrivileges=yes", "hardening"),
        ("ProtectSystem=strict", "hardening"),
        (
            "ReadWritePaths=/sys/fs/bpf /run/netiso",
            "pins and state writable",
        ),
        ("RuntimeDirectoryPreserve=yes", "state.json survives a stop"),
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "{line} missing ({needed})"
        );
    }
    // The check itself can fail: a typo in a key is caught.
    let broken = unit_copy(
        dir.path(),
        &text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    );
    assert!(verify(&broken).is_err(), "a misspelt key must not pass");
}

#[test]
fn unit_sandbox_exposure_is_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &std::fs::read_to_string(UNIT).unwrap());
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for netiso.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(score <= 5.0, "exposure {score} > 5.0:\n{text}");
}

/// The unit's `CapabilityBoundingSet=` as setpriv arguments (`+bpf,...`).
fn unit_caps() -> Vec<String> {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("CAP_ name")
                .to_ascii_lowercase()
        })
        .collect()
}

/// Runs the daemon under `setpriv` with only `caps` in its bounding set and
/// no_new_privs, the way systemd runs the unit; returns whether it enforced
/// the container and gave the control socket to the group.
fn runs_with(caps: &[String], env: &DockerEnv, server: &str, secs: u64) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[groups.server]\nlabels = {{ \"netiso.test\" = \"{}\" }}\ningress = \"deny\"\n",
            env.tag
        ),
    )
    .unwrap();
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut d = Netiso::new(&[]);
    // setpriv execs netiso: the pid we wait on is the daemon's.
    d.args = vec![
        "--policy".into(),
        policy.to_str().unwrap().into(),
        "--socket-group".into(),
        "nogroup".into(),
    ];
    let socket = d.state_dir.path().join("netiso.sock");
    let mut cmd_prefix = vec![
        "setpriv".to_string(),
        format!("--bounding-set={bounding}"),
        "--inh-caps=-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ];
    cmd_prefix.push(env!("CARGO_BIN_EXE_netiso").into());
    d.wrapper = cmd_prefix;
    d.start();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut ok = false;
    while std::time::Instant::now() < end {
        if d.child.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        let enforced = netiso_daemon::observe::state::State::read(d.state_dir.path())
            .map(|s| {
                s.endpoints
                    .iter()
                    .any(|e| e.container == server && e.enforced)
            })
            .unwrap_or(false);
        let group_ok = std::fs::metadata(&socket)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m) == 65534)
            .unwrap_or(false);
        if enforced && group_ok {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (ok, d.log())
}

#[test]
fn daemon_works_with_exactly_the_units_capabilities() {
    netiso_testkit::require_root();
    let caps = unit_caps();
    let mut env = DockerEnv::new();
    let tag = env.tag.clone();
    let server = env.run("server", &[("netiso.test", &tag)], &tcp_servers(&[8080]));
    let (ok, log) = runs_with(&caps, &env, &server, 30);
    assert!(
        ok,
        "the daemon did not enforce with {caps:?} and no_new_privs:\n{log}"
    );
    // Each of these is needed; without it the daemon cannot do its job.
    for missing in ["sys_ptrace", "sys_admin", "chown"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        assert_ne!(fewer.len(), caps.len(), "{missing} is in the unit");
        let (ok, _) = runs_with(&fewer, &env, &server, 6);
        assert!(!ok, "works without {missing}: drop it from the unit");
    }
}
