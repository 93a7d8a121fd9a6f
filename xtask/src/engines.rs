//! `cargo xtask engines`: the Docker tests against newer engines (Debian
//! 13's and Debian testing's docker.io). Each is a private dockerd from a
//! debootstrapped root (cached in target/engines/), in a network namespace
//! of its own where it keeps every default of a real install (docker0,
//! iptables, embedded resolver); the tests and their netiso daemons run in
//! that namespace too. Uses cmd, docker (engine probes, test image), setup
//! and run (target dir).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cmd, docker, root, run, setup};

/// A Debian release whose docker.io is tested.
#[derive(Debug)]
pub struct Suite {
    /// The codename debootstrap is given.
    pub name: &'static str,
    pub release: &'static str,
}

/// Every engine of the matrix besides the system one (Debian 12's 20.10).
pub const SUITES: &[Suite] = &[
    Suite {
        name: "trixie",
        release: "Debian 13",
    },
    Suite {
        name: "forky",
        release: "Debian testing",
    },
];

pub const MIRROR: &str = "http://deb.debian.org/debian";
/// What the root holds beyond minbase: the engine (with containerd, runc
/// and tini) and the iptables it links to.
const INCLUDE: &str = "docker.io,iptables,ca-certificates";
/// bookworm's debootstrap has no script for newer codenames; sid's fits
/// every current suite.
const DEBOOTSTRAP_SCRIPT: &str = "/usr/share/debootstrap/scripts/sid";
/// In a finished root; its content names how the root was made, so a root
/// made another way (or half made) is made again.
const MARKER: &str = ".netiso-engine-root";
/// Bumped when the way roots are made changes.
const ROOT_VERSION: &str = "1";
/// The test binaries that run against each engine: end to end, the
/// scenarios, hostile containers; and what most depends on the engine's
/// behaviour: its events and MACs across restarts, reconnects and renames
/// (lifecycle), its firewall's port publishing (published_ports); learn
/// mode's naming of what containers do (learn).
pub const TESTS: &[&str] = &[
    "docker_e2e",
    "scenarios",
    "hostile_containers",
    "lifecycle",
    "published_ports",
    "learn",
];
const ENGINE_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct EnginesArgs {
    /// Only this engine (default: every one)
    #[arg(long, value_parser = ["trixie", "forky"])]
    pub suite: Vec<String>,
    /// Debian mirror for debootstrap
    #[arg(long, default_value = MIRROR)]
    pub mirror: String,
    /// Passed to `cargo test` (after `--`): a test-name filter, and after
    /// another `--` the test binaries' own flags
    #[arg(last = true, value_name = "FILTER/ARGS")]
    pub args: Vec<String>,
}

// ---------------------------------------------------------------- signals

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and SIGHUP let the running step end (the test run gets
/// the terminal's Ctrl-C itself) and then stop the engine and remove what
/// it made, instead of leaving it running. Children get the default
/// dispositions back at exec.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; replacing a disposition has no other effect.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------- roots

/// The marker text of a root made for `suite` from `mirror`.
pub fn marker_text(suite: &str, mirror: &str) -> String {
    format!("version={ROOT_VERSION} suite={suite} mirror={mirror} include={INCLUDE}\n")
}

/// The `debootstrap` that makes a root for `suite` in `dir`.
pub fn debootstrap(suite: &str, dir: &Path, mirror: &str) -> Command {
    let mut c = Command::new("debootstrap");
    c.args(["--variant=minbase", &format!("--include={INCLUDE}"), suite])
        .arg(dir)
        .args([mirror, DEBOOTSTRAP_SCRIPT]);
    c
}

/// `target/engines/<suite>`, made with debootstrap unless a complete one
/// is there. Returns it and what was done.
fn ensure_root(base: &Path, suite: &str, mirror: &str) -> Result<(PathBuf, String)> {
    let root = base.join(suite);
    let want = marker_text(suite, mirror);
    if fs::read_to_string(root.join(MARKER)).ok().as_deref() == Some(want.as_str()) {
        return Ok((root, "cached".into()));
    }
    let t = Instant::now();
    let partial = base.join(format!("{suite}.partial"));
    for old in [&partial, &root] {
        if old.exists() {
            fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    fs::create_dir_all(&partial)?;
    cmd::run(
        &mut debootstrap(suite, &partial, mirror),
        "debootstrap needs the Debian mirror (try --mirror); its log is in <root>/debootstrap/debootstrap.log",
    )?;
    let version = cmd::output(
        Command::new("chroot")
            .arg(&partial)
            .args(["dockerd", "--version"]),
    )
    .context("the new root has no working dockerd")?;
    fs::write(partial.join(MARKER), want)?;
    // Only a finished root gets the final name.
    fs::rename(&partial, &root)
        .with_context(|| format!("renaming {} to {}", partial.display(), root.display()))?;
    Ok((
        root,
        format!(
            "made in {:.0} s ({})",
            t.elapsed().as_secs_f64(),
            version.trim()
        ),
    ))
}

// ---------------------------------------------------------------- the engine

/// Runs as `nsenter --net=<the engine's netns> unshare --mount ... sh -c`:
/// the root is bound onto itself and made the root of the private mount
/// namespace with pivot_root (a chroot is not enough: `docker exec`
/// enters a container's mount namespace at that namespace's root, which
/// under a chroot is the host's /), with the run's own data directory over
/// its /var/lib/docker (the cached root stays clean), a sysfs of the
/// engine's network namespace, the host's cgroups, /dev, a fresh proc and
/// /run. dockerd then replaces the shell (its pid is the child's), with
/// every default of a real install: its own docker0, iptables rules and
/// embedded resolver, all inside its namespace.
const ENGINE_SCRIPT: &str = r#"set -e
root=$1 data=$2 tag=$3
mount --bind "$root" "$root"
mkdir -p "$root/var/lib/docker"
mount --bind "$data" "$root/var/lib/docker"
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/run"
cd "$root"
pivot_root . mnt
umount -l /mnt
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dockerd --host="unix:///run/$tag.sock" \
  --data-root=/var/lib/docker --exec-root="/run/$tag" --pidfile="/run/$tag.pid" \
  --cgroup-parent="/$tag" --shutdown-timeout=5
"#;

/// Runs the tests in the engine's network namespace, where its bridges and
/// veths are, with a sysfs of that namespace (the tests and the daemon read
/// /sys/class/net) and the host's bpffs and cgroups bound back in.
const TESTS_SCRIPT: &str = r#"set -e
hostsys=$1; shift
mount --rbind /sys "$hostsys"
mount -t sysfs sysfs /sys
for d in fs/bpf fs/cgroup kernel/debug kernel/tracing kernel/security; do
  if mountpoint -q "$hostsys/$d"; then mount --rbind "$hostsys/$d" "/sys/$d"; fi
done
umount -l "$hostsys"
exec "$@"
"#;

/// `nsenter --net=<netns> unshare --mount --propagation private sh -c SCRIPT NAME`
fn in_netns(netns: &str, script: &str, name: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .args(["unshare", "--mount", "--propagation", "private"])
        .args(["sh", "-c", script, name]);
    c
}

/// What a run leaves in its directory so that a later run can tear down an
/// engine whose xtask died (SIGKILL; after a reboot nothing is left but
/// the directory).
#[derive(Debug, PartialEq, Eq)]
pub struct Owner {
    pub xtask: u32,
    pub engine: u32,
    /// `mnt:[…]` of the engine's namespace: identifies every process it
    /// started (containerd, the shims), and guards against a reused pid.
    pub mnt_ns: Option<String>,
}

impl Owner {
    pub fn render(&self) -> String {
        format!(
            "xtask={} engine={} mnt_ns={}\n",
            self.xtask,
            self.engine,
            self.mnt_ns.as_deref().unwrap_or("")
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut xtask = None;
        let mut engine = None;
        let mut mnt_ns = None;
        for word in text.split_whitespace() {
            match word.split_once('=')? {
                ("xtask", v) => xtask = v.parse().ok(),
                ("engine", v) => engine = v.parse().ok(),
                ("mnt_ns", v) => mnt_ns = Some(v.to_string()).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        Some(Self {
            xtask: xtask?,
            engine: engine?,
            mnt_ns,
        })
    }
}

fn mnt_ns(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn parent_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The processes in mount namespace `ns` (the engine, containerd, the
/// shims) and their children (containers' init and exec processes: they
/// have namespaces of their own, their parent is a shim).
fn processes_of(ns: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let inside: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| mnt_ns(*p).as_deref() == Some(ns))
        .collect();
    let mut all: Vec<u32> = pids
        .into_iter()
        .filter(|p| inside.contains(p) || parent_pid(*p).is_some_and(|pp| inside.contains(&pp)))
        .collect();
    all.sort_unstable();
    all
}

/// The engine's container cgroups (`--cgroup-parent=/<tag>`) in every
/// hierarchy (v1 controllers, v2 or both), deepest first.
fn cgroup_dirs(tag: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut tops = vec![base.join(tag)];
    if let Ok(entries) = fs::read_dir(base) {
        tops.extend(entries.flatten().map(|e| e.path().join(tag)));
    }
    let mut all = Vec::new();
    for top in tops.into_iter().filter(|t| t.is_dir()) {
        if let Ok(entries) = fs::read_dir(&top) {
            all.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        all.push(top);
    }
    all
}

fn cgroup_pids(dirs: &[PathBuf]) -> Vec<u32> {
    dirs.iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next())
        .is_some_and(|s| s != "Z")
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// A private dockerd from a root, in a network namespace of its own;
/// stopped, and everything it made removed, on drop.
struct PrivateEngine {
    /// Names the netns, the socket, the exec root and the cgroup parent.
    tag: String,
    dir: PathBuf,
    child: Option<Child>,
    owner: Owner,
}

impl PrivateEngine {
    fn socket(tag: &str, pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/root/run/{tag}.sock"))
    }

    fn host(&self) -> String {
        format!(
            "unix://{}",
            Self::socket(&self.tag, self.owner.engine).display()
        )
    }

    fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.host()]);
        c
    }

    fn start(root: &Path, runs: &Path, suite: &str) -> Result<Self> {
        let tag = format!("netiso-engine-{suite}-{}", std::process::id());
        let dir = runs.join(&tag);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("data"))?;
        if netns_exists(&tag) {
            let _ = cmd::output(Command::new("ip").args(["netns", "del", &tag]));
        }
        // From here on, drop removes whatever was made.
        let mut engine = Self {
            owner: Owner {
                xtask: std::process::id(),
                engine: 0,
                mnt_ns: None,
            },
            child: None,
            tag,
            dir,
        };
        engine.save_owner()?;
        cmd::output(Command::new("ip").args(["netns", "add", &engine.tag]))?;
        cmd::output(Command::new("ip").args(["-n", &engine.tag, "link", "set", "lo", "up"]))?;
        let mut c = in_netns(&engine.tag, ENGINE_SCRIPT, "engine");
        c.arg(root).arg(engine.dir.join("data")).arg(&engine.tag);
        let child = docker::spawn_detached(c, &engine.log())?;
        engine.owner.engine = child.id();
        engine.child = Some(child);
        engine.save_owner()?;
        let log = engine.log();
        let (ping, took) = docker::wait_for_engine(
            &Self::socket(&engine.tag, engine.owner.engine),
            ENGINE_TIMEOUT,
            engine.child.as_mut(),
            Some(&log),
        )?;
        let ns = mnt_ns(engine.owner.engine);
        // Killing "everything in the engine's namespace" must never mean
        // everything in ours.
        if ns.is_none() || ns == mnt_ns(std::process::id()) {
            bail!(
                "the engine (pid {}) is not in a mount namespace of its own",
                engine.owner.engine
            );
        }
        engine.owner.mnt_ns = ns;
        engine.save_owner()?;
        println!(
            "  engine {} answered after {:.1} s (API {})",
            engine.host(),
            took.as_secs_f64(),
            ping.api_version.as_deref().unwrap_or("?")
        );
        Ok(engine)
    }

    fn save_owner(&self) -> Result<()> {
        fs::write(self.dir.join("owner"), self.owner.render())
            .with_context(|| format!("writing {}", self.dir.display()))
    }

    /// `Docker Engine 28.5.2+dfsg4 (API 1.51)`.
    fn version(&self) -> Result<String> {
        let v = cmd::output(self.docker().args([
            "version",
            "-f",
            "{{.Server.Version}} {{.Server.APIVersion}}",
        ]))?;
        let (version, api) = v.trim().split_once(' ').unwrap_or((v.trim(), "?"));
        Ok(format!("Docker Engine {version} (API {api})"))
    }

    /// The test image, from the system engine (there is no registry).
    fn load_image(&self) -> Result<()> {
        let mut save = Command::new("docker");
        save.args(["save", docker::TEST_IMAGE]);
        let mut load = self.docker();
        load.args(["load", "-q"]);
        cmd::pipe(&mut save, &mut load, "could not copy the test image")?;
        // `exec` too: it must land in the container's root, not the host's.
        let id = cmd::output(self.docker().args([
            "run",
            "-d",
            "--network",
            "none",
            docker::TEST_IMAGE,
            "sleep",
            "60",
        ]))
        .context("a container from the test image does not start on the private engine")?;
        let id = id.trim();
        let out = cmd::output(self.docker().args(["exec", id, "ls", "/"]));
        let _ = cmd::output(self.docker().args(["rm", "-f", id]));
        let out = out?;
        if out.contains("usr") || !out.contains("bin") {
            bail!("`docker exec ... ls /` in a test container shows {out:?}, not the image's root");
        }
        Ok(())
    }

    /// Stops the engine and removes what it made: containers through its
    /// API, then SIGTERM, then SIGKILL for whatever of it is left, its
    /// cgroups, its network namespace (bridges, veths, firewall rules go
    /// with it), the run's data. Never fails: each part is tried.
    fn teardown(&mut self) {
        let pid = self.owner.engine;
        // A pid whose namespace is not the recorded one is someone else's.
        let ours = pid != 0
            && match &self.owner.mnt_ns {
                Some(ns) => mnt_ns(pid).as_deref() == Some(ns.as_str()),
                None => self.child.is_some(),
            };
        if ours && alive(pid) {
            let socket = Self::socket(&self.tag, pid);
            if docker::ping(&socket).is_ok() {
                let ids = cmd::output(self.docker().args(["ps", "-aq"])).unwrap_or_default();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = cmd::output(self.docker().args(["rm", "-f"]).args(&ids));
                }
            }
            signal(pid, "TERM");
            let end = Instant::now() + STOP_TIMEOUT;
            while alive(pid) && Instant::now() < end {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.try_wait();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let own_ns = mnt_ns(std::process::id());
        let ns = self
            .owner
            .mnt_ns
            .clone()
            .filter(|ns| Some(ns) != own_ns.as_ref());
        let end = Instant::now() + STOP_TIMEOUT;
        loop {
            let mut left = cgroup_pids(&cgroup_dirs(&self.tag));
            if let Some(ns) = &ns {
                left.extend(processes_of(ns));
            } else if ours && alive(pid) {
                left.push(pid);
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() > end {
                println!("warning: engine processes {left:?} would not die");
                break;
            }
            for p in left {
                signal(p, "KILL");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in cgroup_dirs(&self.tag) {
            let _ = fs::remove_dir(&d);
        }
        if netns_exists(&self.tag) {
            if let Err(e) = cmd::output(Command::new("ip").args(["netns", "del", &self.tag])) {
                println!("warning: {e:#}");
            }
        }
        // The mounts were in the engine's namespace, gone with it.
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            println!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Tears down engines of earlier runs whose xtask is gone.
fn sweep_stale(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let tag = e.file_name().to_string_lossy().into_owned();
        let owner = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|t| Owner::parse(&t));
        let Some(owner) = owner else {
            let _ = fs::remove_dir_all(&dir);
            continue;
        };
        if alive(owner.xtask) {
            continue;
        }
        println!("  tearing down {tag}, left by an earlier run");
        drop(PrivateEngine {
            tag,
            dir,
            child: None,
            owner,
        });
    }
}

// ---------------------------------------------------------------- tests

/// `cargo test` of [`TESTS`]. The package selection is the test stage's
/// (`--workspace --exclude netiso-ebpf`), so that the binaries it built are
/// reused, not rebuilt with other features.
pub fn cargo_test(extra: &[String]) -> Command {
    let mut c = Command::new("cargo");
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "netiso-ebpf",
        "--no-fail-fast",
    ]);
    for t in TESTS {
        c.args(["--test", t]);
    }
    c.args(extra);
    c
}

/// [`cargo_test`] inside the engine's network namespace `netns`, talking to
/// it at `host`; `hostsys` is an empty directory for [`TESTS_SCRIPT`].
pub fn test_command(netns: &str, hostsys: &Path, host: &str, extra: &[String]) -> Command {
    let tests = cargo_test(extra);
    let mut c = in_netns(netns, TESTS_SCRIPT, "tests");
    c.arg(hostsys)
        .arg(tests.get_program())
        .args(tests.get_args())
        .env("DOCKER_HOST", host)
        .env(docker::TEST_IMAGE_ENV, docker::TEST_IMAGE)
        .env("RUST_BACKTRACE", "1");
    c
}

struct Outcome {
    suite: &'static Suite,
    version: String,
    result: Result<()>,
    took: Duration,
}

fn one_engine(
    suite: &'static Suite,
    base: &Path,
    args: &EnginesArgs,
    version: &mut String,
) -> Result<()> {
    println!("==> engine {} ({})", suite.name, suite.release);
    let (root, status) = ensure_root(base, suite.name, &args.mirror)?;
    setup::report(&format!("root {}", root.display()), status);
    check_interrupted()?;
    let engine = PrivateEngine::start(&root, &base.join("run"), suite.name)?;
    *version = engine.version()?;
    setup::report("engine", &*version);
    engine.load_image()?;
    setup::report(&format!("image {}", docker::TEST_IMAGE), "loaded, runs");
    check_interrupted()?;
    let hostsys = engine.dir.join("sys");
    fs::create_dir_all(&hostsys)?;
    let result = cmd::run(
        &mut test_command(&engine.tag, &hostsys, &engine.host(), &args.args),
        "see the failing tests above; the engine's log is printed below",
    );
    if result.is_err() {
        let log = fs::read_to_string(engine.log()).unwrap_or_default();
        println!(
            "last lines of the engine's log:\n{}",
            docker::tail(&log, 40)
        );
    }
    drop(engine);
    check_interrupted()?;
    result
}

pub fn engines(root_dir: &Path, args: EnginesArgs) -> Result<()> {
    root::require_root(
        "cargo xtask engines",
        "it debootstraps roots, starts private Docker engines and runs the privileged Docker tests",
    )?;
    catch_signals();
    setup::setup(setup::Options {
        verify_image: false,
    })?;
    let suites: Vec<&'static Suite> = SUITES
        .iter()
        .filter(|s| args.suite.is_empty() || args.suite.iter().any(|n| n == s.name))
        .collect();
    let base = run::target_dir(root_dir, |k| std::env::var(k).ok()).join("engines");
    fs::create_dir_all(base.join("run"))?;
    sweep_stale(&base.join("run"));
    // Built before any engine runs, so no engine idles through a build.
    let mut build = cargo_test(&[]);
    build.arg("--no-run");
    cmd::run(&mut build, "the tests must build")?;

    let mut outcomes = Vec::new();
    for suite in suites {
        let t = Instant::now();
        let mut version = String::from("(engine not started)");
        let result = one_engine(suite, &base, &args, &mut version);
        if let Err(e) = &result {
            println!("error: {e:#}");
        }
        outcomes.push(Outcome {
            suite,
            version,
            result,
            took: t.elapsed(),
        });
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
    }
    println!("==> engines: summary");
    for o in &outcomes {
        println!(
            "  {:<7} {:<15} {:<34} {} ({:.0} s)",
            o.suite.name,
            o.suite.release,
            o.version,
            if o.result.is_ok() { "ok" } else { "FAILED" },
            o.took.as_secs_f64()
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.suite.name)
        .collect();
    check_interrupted()?;
    if !failed.is_empty() {
        bail!("the Docker tests failed against: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trip() {
        let o = Owner {
            xtask: 10,
            engine: 20,
            mnt_ns: Some("mnt:[4026532999]".into()),
        };
        assert_eq!(Owner::parse(&o.render()), Some(o));
        let early = Owner {
            xtask: 1,
            engine: 2,
            mnt_ns: None,
        };
        assert_eq!(Owner::parse(&early.render()), Some(early));
        assert_eq!(Owner::parse("xtask=1\n"), None);
        assert_eq!(Owner::parse(""), None);
    }

    #[test]
    fn roots_are_made_with_the_engine_and_the_sid_script() {
        let shown = cmd::display(&debootstrap("forky", Path::new("/t/forky.partial"), MIRROR));
        assert_eq!(
            shown,
            "debootstrap --variant=minbase --include=docker.io,iptables,ca-certificates forky \
             /t/forky.partial http://deb.debian.org/debian /usr/share/debootstrap/scripts/sid"
        );
        assert_ne!(marker_text("forky", MIRROR), marker_text("trixie", MIRROR));
    }

    #[test]
    fn tests_run_in_the_engines_namespace_against_it() {
        let c = test_command(
            "netiso-engine-forky-7",
            Path::new("/t/sys"),
            "unix:///proc/7/root/run/x.sock",
            &["policy".into()],
        );
        let shown = cmd::display(&c);
        assert!(
            shown.contains("DOCKER_HOST=unix:///proc/7/root/run/x.sock"),
            "{shown}"
        );
        assert!(
            shown.contains("NETISO_TEST_IMAGE=netiso-busybox:test"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "nsenter --net=/run/netns/netiso-engine-forky-7 unshare --mount --propagation private sh -c"
            ),
            "{shown}"
        );
        assert!(
            shown.ends_with(
                "tests /t/sys cargo test --workspace --exclude netiso-ebpf --no-fail-fast \
                 --test docker_e2e --test scenarios --test hostile_containers --test lifecycle \
                 --test published_ports --test learn policy"
            ),
            "{shown}"
        );
    }

    #[test]
    fn the_engine_is_pivoted_into_its_root_with_default_networking() {
        // chroot would break `docker exec` (see ENGINE_SCRIPT); --bridge=none
        // would delete docker0, --iptables=false would disable the
        // embedded resolver: the namespace makes all three unnecessary.
        assert!(ENGINE_SCRIPT.contains("pivot_root . mnt"));
        assert!(!ENGINE_SCRIPT.contains("chroot"));
        for flag in ["--bridge", "--iptables", "--ip6tables"] {
            assert!(!ENGINE_SCRIPT.contains(flag), "{flag}");
        }
    }
}
