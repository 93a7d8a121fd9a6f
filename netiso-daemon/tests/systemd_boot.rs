//! The .deb on a booted Debian 12 whose PID 1 is systemd: installed with
//! apt as a user does, then readiness (sd_notify), enforcement, reload,
//! a rejected reload, restart, upgrade, remove and purge, each checked
//! through systemctl, the journal and real container traffic.
//!
//! The machine is a debootstrapped root (cached in `target/systemd-root`,
//! made once, about a minute) booted with `systemd-nspawn -b` on an
//! overlay, so every run starts from the same clean root. It has its own
//! network namespace and its own Docker engine (Debian's `docker.io`):
//! the host's engine cannot be shared, because nspawn always makes a PID
//! namespace and the daemon finds a container's network namespace through
//! `/proc/<pid>/ns/net` of the engine's (host) PID. Two things nspawn does
//! not give a guest are set up by a oneshot unit baked into the root (see
//! [`FIXUPS`]): writable cgroup v1 controllers for runc, and a bpffs at
//! `/sys/fs/bpf` (systemd mounts it on a real host, not in a container).
//! The host's PID 1 need not be systemd: the machine is not registered with
//! machined, and commands run inside it through `nsenter` into its PID 1.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use netiso_testkit::{require_root, unique};

/// What the cached root is made of; a change makes a new root.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const INCLUDE: &str = "systemd,systemd-sysv,dbus,docker.io,iproute2,busybox-static";
/// Bump when the recipe below changes: a root with another mark is rebuilt.
const RECIPE: &str = "netiso systemd-boot root v1";

/// Oneshot run before Docker and netiso in the machine: what a real host
/// has and an nspawn guest lacks. nspawn mounts the cgroup v1 controllers
/// read-only (runc must create cgroups in them) and gives no bpffs; `/sys`
/// is a read-only tmpfs there, so the mount point is made first.
const FIXUPS: &str = r#"#!/bin/sh
# Test machine only (netiso-daemon/tests/systemd_boot.rs): under
# systemd-nspawn, make the cgroup v1 controllers writable for Docker and
# mount a bpffs at /sys/fs/bpf, as systemd does at boot on a real host.
set -e
for c in /sys/fs/cgroup/*/; do
    case "$c" in */unified/|*/systemd/) continue ;; esac
    mount -o remount,bind,rw "$c"
done
if [ ! -d /sys/fs/bpf ]; then
    mount -o remount,rw /sys
    mkdir /sys/fs/bpf
    mount -o remount,ro /sys
fi
mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=700 bpf /sys/fs/bpf
"#;

const FIXUPS_UNIT: &str = "\
[Unit]
Description=Test machine: writable cgroup controllers and bpffs under systemd-nspawn
DefaultDependencies=no
Before=sysinit.target containerd.service docker.service netiso.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/netiso-nspawn-fixups

[Install]
WantedBy=sysinit.target
";

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp, wherever the target dir is.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// Fails with a clear message when a host tool is missing.
fn require_tools() {
    require_root();
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
        ("dpkg-deb", "dpkg"),
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing (Debian package {package}): run `cargo xtask setup`"
        );
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The debootstrapped root, made once and reused while its recipe mark
/// matches. A lock keeps two runs from making it at the same time; it is
/// made beside the final path and renamed into place only when complete.
fn systemd_root() -> PathBuf {
    let target = target_dir();
    let root = target.join("systemd-root");
    let mark = root.join("etc/netiso-test-root");
    let lock_path = target.join("systemd-root.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock takes integers only; the fd belongs to `lock`, which
    // stays open (holding the lock) until this function returns.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", lock_path.display());
    if std::fs::read_to_string(&mark).is_ok_and(|m| m.trim() == RECIPE) {
        return root;
    }
    let partial = target.join("systemd-root.partial");
    for stale in [&partial, &root] {
        if stale.exists() {
            let out = Command::new("rm").arg("-rf").arg(stale).output().unwrap();
            assert!(
                out.status.success(),
                "rm -rf {}: {}",
                stale.display(),
                text(&out)
            );
        }
    }
    let t = Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .unwrap();
    let log = text(&out);
    assert!(
        out.status.success(),
        "debootstrap of Debian {SUITE} from {MIRROR} failed (network? mirror?):\n{}",
        log.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("debootstrap took {:?}", t.elapsed());
    let w = |rel: &str, body: &str, mode: u32| {
        let p = partial.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    w("etc/hostname", "netiso-sdboot\n", 0o644);
    w("usr/local/sbin/netiso-nspawn-fixups", FIXUPS, 0o755);
    w(
        "etc/systemd/system/netiso-nspawn-fixups.service",
        FIXUPS_UNIT,
        0o644,
    );
    let wants = partial.join("etc/systemd/system/sysinit.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/netiso-nspawn-fixups.service",
        wants.join("netiso-nspawn-fixups.service"),
    )
    .unwrap();
    w("etc/netiso-test-root", &format!("{RECIPE}\n"), 0o644);
    std::fs::rename(&partial, &root).unwrap();
    root
}

/// The mount points of every cgroup hierarchy (v1 controllers, name=systemd
/// and cgroup2).
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Directories below `dir`, deepest first.
fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs_deepest_first(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// A booted machine. Drop powers it off (or kills it), unmounts its
/// overlay and removes its run directory and cgroups, even on failure.
struct Machine {
    name: String,
    run: PathBuf,
    merged: PathBuf,
    cgroup: String,
    nspawn: Option<Child>,
    leader: u32,
}

impl Machine {
    fn boot(root: &Path) -> Self {
        let name = unique("nsdb");
        let run = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sdboot-{name}"));
        let merged = run.join("merged");
        for d in ["upper", "work", "merged", "docker"] {
            std::fs::create_dir_all(run.join(d)).unwrap();
        }
        let mut m = Self {
            cgroup: format!("netiso-sdboot-{name}"),
            name,
            merged,
            run,
            nspawn: None,
            leader: 0,
        };
        // Writes go to the overlay's upper dir, so the cached root stays
        // clean; Docker's data lives on a plain directory (overlay2 cannot
        // sit on overlayfs).
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                root.display(),
                m.run.join("upper").display(),
                m.run.join("work").display()
            ))
            .arg(&m.merged)
            .output()
            .unwrap();
        assert!(out.status.success(), "overlay mount: {}", text(&out));
        let log = std::fs::File::create(m.run.join("boot.log")).unwrap();
        // nspawn makes its cgroups (payload, supervisor) under its own: give
        // it one of its own in every hierarchy, removed on drop (cpuset
        // needs its cpus and mems before a task may join).
        let wrapper = r#"for h in $(awk '$3=="cgroup"||$3=="cgroup2"{print $2}' /proc/self/mounts); do
    d="$h/$CG"; mkdir -p "$d"
    if [ -f "$d/cpuset.cpus" ]; then cat "$h/cpuset.cpus" >"$d/cpuset.cpus"; cat "$h/cpuset.mems" >"$d/cpuset.mems"; fi
    echo $$ >"$d/cgroup.procs"
done
exec "$@""#;
        let t = Instant::now();
        let child = Command::new("sh")
            .arg("-c")
            .arg(wrapper)
            .arg("sh")
            .arg("systemd-nspawn")
            .arg("--boot")
            .arg("--directory")
            .arg(&m.merged)
            .arg(format!("--machine={}", m.name))
            // No machined on a host whose PID 1 is not systemd.
            .args(["--register=no", "--keep-unit"])
            // Its own network namespace: its Docker's bridges and veths, and
            // the daemon's attachments, stay inside it. It also grants
            // CAP_NET_ADMIN.
            .arg("--private-network")
            // CAP_BPF and the rest; bpf() and keyring calls (runc) allowed.
            .args([
                "--capability=all",
                "--system-call-filter=bpf keyctl add_key",
            ])
            .arg(format!(
                "--bind={}:/var/lib/docker",
                m.run.join("docker").display()
            ))
            .arg("--console=read-only")
            .env("CG", &m.cgroup)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start systemd-nspawn");
        let pid = child.id();
        m.nspawn = Some(child);
        // The machine's PID 1 is nspawn's child.
        let end = Instant::now() + Duration::from_secs(60);
        while m.leader == 0 {
            if let Some(st) = m.nspawn.as_mut().unwrap().try_wait().unwrap() {
                panic!("systemd-nspawn exited ({st}):\n{}", m.boot_log());
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for c in children.split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    m.leader = c.parse().unwrap();
                }
            }
            assert!(
                Instant::now() < end,
                "no systemd in the machine after 60 s:\n{}",
                m.boot_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // systemctl answers once PID 1 listens on its private socket; then
        // --wait blocks until the boot is over.
        let end = Instant::now() + Duration::from_secs(120);
        let state = loop {
            let out = m.sh("timeout 100 systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if matches!(state.as_str(), "running" | "degraded") || Instant::now() > end {
                break format!("{state} {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            state.trim(),
            "running",
            "the machine did not reach `running`; failed units:\n{}\nboot log:\n{}",
            String::from_utf8_lossy(&m.sh("systemctl --failed --no-pager").stdout),
            m.boot_log()
        );
        println!(
            "machine {} booted to `running` in {:?}",
            m.name,
            t.elapsed()
        );
        m
    }

    fn boot_log(&self) -> String {
        let t = std::fs::read_to_string(self.run.join("boot.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `sh -c script` inside the machine (all its namespaces, a clean
    /// environment), whatever its exit status.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "TERM=dumb",
                "SYSTEMD_PAGER=",
                "DEBIAN_FRONTEND=noninteractive",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Like [`sh`](Self::sh), failing the test when the script fails;
    /// returns stdout and stderr together.
    fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        let t = text(&out);
        assert!(
            out.status.success(),
            "in the machine, `{script}` failed ({}):\n{t}",
            out.status
        );
        t
    }

    /// `systemctl show -p P --value netiso`.
    fn prop(&self, p: &str) -> String {
        self.run(&format!("systemctl show -p {p} --value netiso"))
            .trim()
            .to_string()
    }

    fn journal(&self) -> String {
        self.run("journalctl -u netiso --no-pager -o cat")
    }

    /// Path of `rel` in the machine's file system, seen from the host.
    fn path(&self, rel: &str) -> PathBuf {
        self.merged.join(rel.trim_start_matches('/'))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut c) = self.nspawn.take() {
            // SIGTERM asks nspawn for a clean poweroff of the machine.
            // SAFETY: kill takes integers only; `c` is our child and not yet
            // waited for, so its pid still names it.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(45);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > end {
                    if self.leader != 0 {
                        // Its PID namespace dies with its PID 1.
                        // SAFETY: kill takes integers only. `leader` is the
                        // machine's PID 1, a child of nspawn, which has not
                        // exited (try_wait above): that pid is not reused.
                        unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGKILL) };
                    }
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Whatever is still mounted below the run directory, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.run))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
        let _ = Command::new("rm").arg("-rf").arg(&self.run).output();
        for h in cgroup_mounts() {
            let mut dirs = Vec::new();
            let top = h.join(&self.cgroup);
            if top.exists() {
                subdirs_deepest_first(&top, &mut dirs);
            }
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

/// `cargo xtask package --dev`: the .deb of the binary under test, made
/// the way CI and users make it.
fn build_deb() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "package", "--dev"])
        .current_dir(workspace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo xtask package --dev failed:\n{}",
        text(&out)
    );
    let deb = target_dir().join(format!(
        "debian/netiso_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.is_file(), "{} not made:\n{}", deb.display(), text(&out));
    deb
}

/// The same package with Debian revision `-2` and a changed default policy:
/// a newer build, whose conffile differs from the installed one.
fn newer_deb(deb: &Path, dir: &Path) -> (PathBuf, String) {
    let version = format!("{}-2", env!("CARGO_PKG_VERSION"));
    let tree = dir.join("tree");
    let run = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", text(&o));
    };
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let c = std::fs::read_to_string(&control).unwrap();
    let c: String = c
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(&control, c).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(tree.join("etc/netiso/policy.toml"))
        .unwrap();
    writeln!(f, "\n# new default in {version}").unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums",
        tree.display()
    )));
    let out = dir.join(format!("netiso_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "-b"])
        .arg(&tree)
        .arg(&out));
    (out, version)
}

/// The containers' view: whether `from` gets the greeting of `to`'s port.
fn tcp(m: &Machine, from: &str, to_ip: &str, port: u16) -> bool {
    m.sh(&format!(
        "docker exec {from} sh -c 'nc -w 2 {to_ip} {port} </dev/null | grep -q netiso-ok'"
    ))
    .status
    .success()
}

/// Polls `tcp` until it gives `want` (enforcement follows a reload or a
/// start within a reconcile), for at most `secs`.
fn tcp_becomes(m: &Machine, from: &str, to_ip: &str, port: u16, want: bool, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if tcp(m, from, to_ip, port) == want {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

const EDITED_POLICY_RULE: &str = r#"
[[rules]]
from = "frontend"
to = "backend"
ports = ["9090/tcp"]
action = "allow"
description = "added by the operator"
"#;

#[test]
fn deb_on_a_booted_systemd_installs_enforces_reloads_upgrades_and_removes() {
    require_tools();
    let t0 = Instant::now();
    let root = systemd_root();
    println!("root ready after {:?}", t0.elapsed());
    let deb = build_deb();
    let work = tempfile::tempdir().unwrap();
    let (deb2, version2) = newer_deb(&deb, work.path());
    let m = Machine::boot(&root);

    // Docker is up in the machine; the test image is made there from the
    // root's static busybox (nothing can be pulled).
    m.run(
        "mkdir -p /tmp/img/bin /tmp/img/tmp && cp /bin/busybox /tmp/img/bin/ \
         && for a in $(/bin/busybox --list); do [ -e /tmp/img/bin/$a ] || ln -s busybox /tmp/img/bin/$a; done \
         && tar -C /tmp/img -c . | docker import - netiso-busybox:test",
    );
    m.run("docker network create nsdb");
    let servers = "nc -ll -p 8080 -e echo netiso-ok & nc -ll -p 9090 -e echo netiso-ok & nc -ll -p 7070 -e echo netiso-ok & exec sleep 3600";
    for (name, labels, script) in [
        ("be", "--label netiso.group=backend", servers),
        ("fe", "--label netiso.group=frontend", "exec sleep 3600"),
        ("other", "", "exec sleep 3600"),
    ] {
        m.run(&format!(
            "docker run -d --name {name} --network nsdb {labels} netiso-busybox:test sh -c '{script}'"
        ));
    }
    let be = m
        .run("docker inspect -f '{{(index .NetworkSettings.Networks \"nsdb\").IPAddress}}' be")
        .trim()
        .to_string();
    // Without netiso everything is open (so "blocked" below means netiso).
    assert!(
        tcp(&m, "other", &be, 8080) && tcp(&m, "fe", &be, 9090),
        "containers cannot talk before netiso"
    );

    // Install as a user does.
    std::fs::copy(&deb, m.path("/root/netiso.deb")).unwrap();
    let t = Instant::now();
    let install = m.run("cd /root && apt-get install -y ./netiso.deb");
    println!("apt install ({:?}):\n{install}", t.elapsed());
    // Type=notify: `active` only after READY=1, sent after the first reconcile.
    assert_eq!(m.run("systemctl is-enabled netiso").trim(), "enabled");
    assert_eq!(m.run("systemctl is-active netiso").trim(), "active");
    assert_eq!(m.prop("Type"), "notify");
    assert_eq!(m.prop("ActiveState"), "active");
    assert_eq!(m.prop("SubState"), "running");
    let status_text = m.prop("StatusText");
    assert!(
        status_text.starts_with("enforcing; 3 containers"),
        "sd_notify STATUS: {status_text}"
    );
    println!(
        "{}",
        m.run("systemctl show -p ActiveState,SubState,StatusText netiso")
    );

    // Enforcement: the default policy lets frontend reach backend:8080 only.
    assert!(
        tcp_becomes(&m, "fe", &be, 8080, true, 10),
        "frontend -> backend:8080 must pass"
    );
    assert!(
        tcp_becomes(&m, "fe", &be, 9090, false, 10),
        "frontend -> backend:9090 must be blocked"
    );
    assert!(
        tcp_becomes(&m, "other", &be, 8080, false, 10),
        "unlabelled -> backend must be blocked"
    );
    println!("{}", m.run("netiso status"));

    // Operator edits the configuration (reloads only on request) and
    // restarts; enforcement stays through the restart.
    let conf = m.path("/etc/netiso/netiso.toml");
    let c = std::fs::read_to_string(&conf).unwrap();
    assert!(c.contains("watch_policy = true"), "{c}");
    std::fs::write(
        &conf,
        c.replace("watch_policy = true", "watch_policy = false"),
    )
    .unwrap();
    let pid_before = m.prop("MainPID");
    // A prober in `other` tries backend:8080 (denied) during the restart.
    m.run(
        &format!("docker exec -d other sh -c 'i=0; while [ $i -lt 12 ]; do i=$((i+1)); \
         nc -w 1 {be} 8080 </dev/null | grep -q netiso-ok && echo leak >>/tmp/leak; echo $i >/tmp/probes; done'"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    m.run("systemctl restart netiso");
    println!("systemctl restart took {:?}", t.elapsed());
    let pid_after_restart = m.prop("MainPID");
    assert_ne!(
        pid_after_restart, pid_before,
        "restart did not start a new daemon"
    );
    assert_eq!(m.prop("ActiveState"), "active");
    m.run("timeout 60 sh -c 'until [ \"$(docker exec other cat /tmp/probes)\" = 12 ]; do sleep 0.5; done'");
    assert!(
        !m.sh("docker exec other test -e /tmp/leak").status.success(),
        "a denied connection got through during `systemctl restart`"
    );
    assert!(
        tcp(&m, "fe", &be, 8080) && !tcp(&m, "other", &be, 8080),
        "enforcement after restart"
    );

    // `systemctl reload` applies an edited policy (the file watcher is off).
    let policy = m.path("/etc/netiso/policy.toml");
    let original = std::fs::read_to_string(&policy).unwrap();
    let edited = format!("{original}{EDITED_POLICY_RULE}");
    std::fs::write(&policy, &edited).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !tcp(&m, "fe", &be, 9090),
        "policy applied without a reload (watch_policy = false)"
    );
    m.run("systemctl reload netiso");
    assert!(
        tcp_becomes(&m, "fe", &be, 9090, true, 10),
        "reload did not apply the edited policy"
    );
    assert!(m.journal().contains("policy reloaded"), "{}", m.journal());

    // A broken policy on reload: rejected, the running one stays, and it
    // shows in `systemctl status` and the journal.
    std::fs::write(
        &policy,
        format!("{edited}\n[[rules]]\nfrom = \"frontend\"\nto = \n"),
    )
    .unwrap();
    m.run("systemctl reload netiso");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(m.run("systemctl is-active netiso").trim(), "active");
    let status = m.sh("systemctl status netiso --no-pager -l -n 20");
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    println!("{status}");
    assert!(
        status.contains("policy rejected, the running policy stays"),
        "{status}"
    );
    assert!(
        m.journal().contains("/etc/netiso/policy.toml:"),
        "no file:line in the journal"
    );
    assert!(
        tcp(&m, "fe", &be, 9090) && !tcp(&m, "other", &be, 8080),
        "old policy no longer enforced"
    );
    // Neither reload restarted or crashed the daemon.
    assert_eq!(m.prop("NRestarts"), "0");
    assert_eq!(
        m.prop("MainPID"),
        pid_after_restart,
        "a reload replaced the daemon"
    );
    std::fs::write(&policy, &edited).unwrap();
    m.run("systemctl reload netiso");

    // Upgrade to a newer build: the edits stay (the unchanged-upstream
    // netiso.toml silently, the changed-upstream policy.toml kept with the
    // new default beside it, as dpkg does for conffiles), and the daemon is
    // restarted on the new version.
    std::fs::copy(&deb2, m.path("/root/netiso-new.deb")).unwrap();
    let pid_before = m.prop("MainPID");
    let upgrade = m.run(
        "cd /root && apt-get install -y -o Dpkg::Options::=--force-confdef \
         -o Dpkg::Options::=--force-confold ./netiso-new.deb",
    );
    println!("upgrade:\n{upgrade}");
    assert_eq!(
        m.run("dpkg-query -W -f '${Version}' netiso").trim(),
        version2
    );
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains("watch_policy = false"),
        "netiso.toml edit lost"
    );
    assert_eq!(
        std::fs::read_to_string(&policy).unwrap(),
        edited,
        "policy.toml edit lost"
    );
    let dist = std::fs::read_to_string(m.path("/etc/netiso/policy.toml.dpkg-dist"))
        .expect("the new default policy beside the kept one");
    assert!(dist.contains(&format!("new default in {version2}")));
    assert_eq!(m.prop("ActiveState"), "active");
    assert_ne!(
        m.prop("MainPID"),
        pid_before,
        "the upgrade did not restart the daemon"
    );
    assert!(
        tcp_becomes(&m, "fe", &be, 9090, true, 10) && !tcp(&m, "other", &be, 8080),
        "after upgrade"
    );

    // apt remove: the service stops, the prerm removes the pins (README:
    // "apt remove netiso stops the service and runs netiso cleanup"), so
    // enforcement ends; the configuration stays.
    let remove = m.run("apt-get remove -y netiso");
    println!("apt remove:\n{remove}");
    // The prerm's `netiso cleanup` says what it removed.
    assert!(remove.contains("removed /sys/fs/bpf/netiso"), "{remove}");
    assert_ne!(m.sh("systemctl is-active netiso").status.code(), Some(0));
    assert!(!m.path("/usr/bin/netiso").exists());
    let pins = m.run("ls -A /sys/fs/bpf/netiso 2>/dev/null || true");
    assert!(pins.trim().is_empty(), "pins left after remove: {pins}");
    assert!(
        tcp_becomes(&m, "other", &be, 8080, true, 10),
        "still enforced after remove + cleanup"
    );
    assert!(
        m.path("/etc/netiso/policy.toml").exists(),
        "remove must keep /etc/netiso"
    );
    assert!(m.run("dpkg -l netiso").contains("rc  netiso"));

    // apt purge: /etc/netiso goes too.
    let purge = m.run("apt-get purge -y netiso");
    println!("apt purge:\n{purge}");
    assert!(!m.path("/etc/netiso").exists(), "purge left /etc/netiso");
    assert!(!m.sh("dpkg -s netiso").status.success());
    println!("whole test {:?}", t0.elapsed());
}
