//! Privileges of the running daemon (real engine, real daemon):
//!
//! - once started it keeps only CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and
//!   CAP_SYS_PTRACE, on every thread (read from /proc/<pid>/task/*/status),
//!   with no_new_privs, and still does its whole job with them: enforces a
//!   container started afterwards, reloads on SIGHUP;
//! - a policy that a non-root user could change is refused at start and on
//!   reload (the running policy stays), unless
//!   `--allow-insecure-policy-permissions` or the configuration key
//!   `allow_insecure_policy_permissions` makes it a warning.
//!
//! (That the control socket refuses unprivileged users is tested in
//! `observability.rs`.)

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use netiso_daemon::daemon::privileges::{mask, names, threads_of, RUNTIME};
use netiso_testkit::docker::{tcp_servers, DockerEnv};
use netiso_testkit::ops::{eventually, tcp_from, write_policy, Netiso};

const POLICY: &str = r#"
[groups.client]
labels = { "netiso.test" = "@TAG@", role = "client" }

[groups.server]
labels = { "netiso.test" = "@TAG@", role = "server" }
ingress = "deny"

[[rules]]
from = "client"
to = "server"
ports = ["8080/tcp"]
action = "allow"
"#;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated CString that lives across the call;
    // chown only reads the path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
}

/// Waits (bounded) until the daemon process exits; its status.
fn exits_within(d: &mut Netiso, secs: u64) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            d.child = None;
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn running_daemon_keeps_only_the_capabilities_it_needs() {
    let mut env = DockerEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &env.tag, POLICY);
    let tag = env.tag.clone();
    let labels = |role: &'static str| [("netiso.test", tag.as_str()), ("role", role)];
    let client = env.run("client", &labels("client"), "exec sleep 3600");
    let other = env.run("other", &[("netiso.test", tag.as_str())], "exec sleep 3600");
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]);
    let pid = d.start();
    d.wait_enforced(&[&client]);

    let keep = mask(&RUNTIME);
    let threads = threads_of(pid).unwrap();
    assert!(threads.len() > 1, "a tokio daemon has several threads");
    for t in &threads {
        assert_eq!(
            (t.effective, t.permitted, t.bounding),
            (keep, keep, keep),
            "thread {} keeps {} / {} / bounding {} instead of {}",
            t.tid,
            names(t.effective),
            names(t.permitted),
            names(t.bounding),
            names(keep)
        );
        assert_eq!((t.inheritable, t.ambient), (0, 0), "thread {}", t.tid);
        assert!(t.no_new_privs, "thread {} lacks no_new_privs", t.tid);
    }
    assert!(
        d.log().contains("capabilities dropped after start"),
        "{}",
        d.log()
    );

    // Everything the daemon does after start works with what it kept: a
    // container started now is found (setns, /proc/<pid>/ns/net), its veth
    // gets the programs (TCX), and the policy is enforced on it.
    let server = env.run("server", &labels("server"), &tcp_servers(&[8080]));
    d.wait_enforced(&[&client, &server]);
    let to = SocketAddr::from((env.ip(&server), 8080));
    let (client_pid, other_pid) = (env.pid(&client), env.pid(&other));
    assert!(
        eventually(client_pid, to, true, 20),
        "client -> server:8080 must pass; log:\n{}",
        d.log()
    );
    assert!(!tcp_from(other_pid, to), "other -> server:8080 is denied");
    // Threads started since (the blocking pool) inherited the reduced sets.
    for t in threads_of(pid).unwrap() {
        assert!(t.within(keep), "thread {}: {t:?}", t.tid);
    }
    // And a reload reads and applies the policy again.
    let before = d.state().last_reload.unwrap().time;
    d.signal(libc::SIGHUP);
    let s = d.wait_for("the SIGHUP reload", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "sighup" && r.time >= before)
    });
    assert!(s.last_reload.unwrap().ok, "{}", d.log());
}

#[test]
fn policy_writable_by_others_is_refused_at_start() {
    netiso_testkit::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), "x", POLICY);
    chmod(&policy, 0o666);
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap()]);
    d.start();
    let st = exits_within(&mut d, 20).expect("the daemon must refuse to start");
    assert!(!st.success());
    let log = d.log();
    assert!(log.contains("refusing the policy"), "{log}");
    assert!(
        log.contains("is writable by every user (mode 666)"),
        "{log}"
    );
    assert!(
        log.contains("--allow-insecure-policy-permissions"),
        "the message says how to override: {log}"
    );

    // A directory on the way that another user owns counts too.
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let inner = write_policy(&dir, "x", POLICY);
    chown(&dir, 1000, 1000);
    let mut d = Netiso::new(&["--policy", inner.to_str().unwrap()]);
    d.start();
    let st = exits_within(&mut d, 20).expect("the daemon must refuse to start");
    assert!(!st.success());
    assert!(
        d.log().contains("is owned by uid 1000, not root"),
        "{}",
        d.log()
    );
}

#[test]
fn insecure_policy_permissions_can_be_allowed_with_a_warning() {
    let _docker = DockerEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), "x", POLICY);
    chown(&policy, 0, 100);
    chmod(&policy, 0o664);
    // By flag, then by configuration key.
    let config = tmp.path().join("netiso.toml");
    std::fs::write(&config, "allow_insecure_policy_permissions = true\n").unwrap();
    for extra in [
        vec!["--allow-insecure-policy-permissions"],
        vec!["--config", config.to_str().unwrap()],
    ] {
        let mut args = vec!["--policy", policy.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let mut d = Netiso::new(&args);
        let pid = d.start();
        d.wait_for("the daemon running", |s| s.pid == pid);
        let log = d.log();
        assert!(
            log.contains("insecure policy permissions (allowed by configuration)")
                && log.contains("is writable by group 100"),
            "{extra:?}: {log}"
        );
    }
}

#[test]
fn reload_refuses_a_policy_that_became_writable_and_keeps_the_running_one() {
    let env = DockerEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), &env.tag, POLICY);
    let mut d = Netiso::new(&["--policy", policy.to_str().unwrap(), "--no-watch-policy"]);
    let pid = d.start();
    let s = d.wait_for("the daemon running", |s| s.pid == pid);
    let generation = s.generation;
    let started = s.last_reload.unwrap().time;

    chown(&policy, 0, 100);
    chmod(&policy, 0o664);
    d.signal(libc::SIGHUP);
    let s = d.wait_for("the refused reload", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.trigger == "sighup" && r.time >= started)
    });
    let r = s.last_reload.unwrap();
    assert!(!r.ok, "{r:?}");
    let err = r.error.unwrap_or_default();
    assert!(err.contains("is writable by group 100"), "{err}");
    assert_eq!(r.generation, generation, "the running policy stays");

    chmod(&policy, 0o644);
    d.signal(libc::SIGHUP);
    d.wait_for("the accepted reload", |s| {
        s.last_reload
            .as_ref()
            .is_some_and(|r| r.ok && r.trigger == "sighup")
    });
}
