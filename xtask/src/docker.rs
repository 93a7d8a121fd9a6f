//! The Docker engine (found, or started so that it outlives xtask) and the
//! local test image (made from busybox-static; there is no registry).
use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, root};

/// The image the Docker tests run their containers from.
pub const TEST_IMAGE: &str = "netiso-busybox:test";
/// Tests read the image name from this variable (`cargo xtask test` sets it).
pub const TEST_IMAGE_ENV: &str = "NETISO_TEST_IMAGE";
/// Bumped whenever the image's content changes, so old images get rebuilt.
const IMAGE_VERSION: &str = "1";
const IMAGE_VERSION_LABEL: &str = "org.netiso.test-image.version";
/// The static busybox from Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";

pub const SOCKET: &str = "/var/run/docker.sock";
pub const DOCKERD_LOG: &str = "/var/log/netiso-dockerd.log";
/// Present when systemd is PID 1 (sd_booted(3)).
const SYSTEMD_MARKER: &str = "/run/systemd/system";
const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- engine

/// What `GET /_ping` told us.
#[derive(Debug, PartialEq, Eq)]
pub struct Ping {
    pub api_version: Option<String>,
}

/// Parses the HTTP answer to `GET /_ping`.
pub fn parse_ping_response(resp: &str) -> Result<Ping> {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("the engine answered `{status}`");
    }
    if !body.trim().is_empty() && body.trim() != "OK" {
        bail!("unexpected /_ping body `{}`", body.trim());
    }
    let api_version = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("api-version")
            .then(|| v.trim().to_string())
    });
    Ok(Ping { api_version })
}

/// `GET /_ping` over the engine's Unix socket.
pub fn ping(socket: &Path) -> Result<Ping> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut resp)
        .with_context(|| format!("reading the /_ping answer from {}", socket.display()))?;
    parse_ping_response(&String::from_utf8_lossy(&resp))
}

/// Pids of live (non-zombie) processes named `name` under a procfs root.
pub fn find_processes(proc_root: &Path, name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            // Field 3 of /proc/PID/stat is the state; skip zombies.
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            (state != Some("Z")).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// How to get an engine answering when none does.
#[derive(Debug, PartialEq, Eq)]
pub enum StartPlan {
    /// A dockerd runs already (still starting, or stuck): wait for it
    /// instead of starting a second one.
    WaitFor(u32),
    /// systemd is PID 1: `systemctl start docker`.
    Systemctl,
    /// No init system to ask: start dockerd ourselves, detached.
    Spawn,
}

pub fn plan_start(systemd_is_init: bool, running_dockerd: &[u32]) -> StartPlan {
    match running_dockerd.first() {
        Some(&pid) => StartPlan::WaitFor(pid),
        None if systemd_is_init => StartPlan::Systemctl,
        None => StartPlan::Spawn,
    }
}

pub fn systemd_is_init(marker: &Path) -> bool {
    marker.is_dir()
}

/// Where the engine is expected, and how to start one. [`Engine::system`]
/// is the real one; tests point it at a throw-away engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub socket: PathBuf,
    /// Extra `dockerd` arguments (none for the system engine).
    pub dockerd_args: Vec<String>,
    pub log: PathBuf,
    pub systemd_marker: PathBuf,
    /// Where to look for an already running dockerd.
    pub proc_root: PathBuf,
    pub timeout: Duration,
}

impl Engine {
    pub fn system() -> Self {
        Self {
            socket: SOCKET.into(),
            dockerd_args: Vec::new(),
            log: DOCKERD_LOG.into(),
            systemd_marker: SYSTEMD_MARKER.into(),
            proc_root: "/proc".into(),
            timeout: ENGINE_TIMEOUT,
        }
    }

    /// Makes sure an engine answers on the socket; returns the status to
    /// report. A dockerd started here is detached and keeps running.
    pub fn ensure(&self) -> Result<String> {
        let socket = self.socket.as_path();
        let shown = socket.display();
        if let Ok(p) = ping(socket) {
            return Ok(format!("ok ({shown}{})", api(&p)));
        }
        if !root::is_root() {
            bail!(
                "no Docker engine answers on {shown}, and starting one needs root: \
                 run `cargo xtask setup` as root"
            );
        }
        let plan = plan_start(
            systemd_is_init(&self.systemd_marker),
            &find_processes(&self.proc_root, "dockerd"),
        );
        match plan {
            StartPlan::WaitFor(pid) => {
                println!("  dockerd (pid {pid}) runs but does not answer on {shown} yet; waiting");
                let (p, took) =
                    wait_for_engine(socket, self.timeout, None, None).with_context(|| {
                        format!(
                        "dockerd pid {pid} runs but does not answer on {shown}; is it listening \
                         elsewhere (-H)? Stop it or fix its configuration"
                    )
                    })?;
                Ok(format!(
                    "ok (dockerd pid {pid} answered after {:.1} s{})",
                    took.as_secs_f64(),
                    api(&p)
                ))
            }
            StartPlan::Systemctl => {
                cmd::run(
                    Command::new("systemctl").args(["start", "docker"]),
                    "see `systemctl status docker` and `journalctl -u docker`",
                )?;
                let (p, took) = wait_for_engine(socket, self.timeout, None, None).context(
                    "docker.service started but the engine does not answer; see `journalctl -u docker`",
                )?;
                Ok(format!(
                    "started (systemctl start docker, {:.1} s{})",
                    took.as_secs_f64(),
                    api(&p)
                ))
            }
            StartPlan::Spawn => {
                let mut dockerd = Command::new("dockerd");
                dockerd.args(&self.dockerd_args);
                let mut child = spawn_detached(dockerd, &self.log)?;
                let pid = child.id();
                let (p, took) =
                    wait_for_engine(socket, self.timeout, Some(&mut child), Some(&self.log))?;
                Ok(format!(
                    "started (dockerd pid {pid}, log {}, {:.1} s{})",
                    self.log.display(),
                    took.as_secs_f64(),
                    api(&p)
                ))
            }
        }
    }
}

fn api(p: &Ping) -> String {
    p.api_version
        .as_deref()
        .map(|v| format!(", API {v}"))
        .unwrap_or_default()
}

/// Starts `cmd` so that it outlives xtask: its own process group (Ctrl-C in
/// the terminal does not reach it), stdin from /dev/null, stdout and stderr
/// appended to `log`.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {} for the log", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    println!("+ {} >>{} 2>&1 &", cmd::display(&cmd), log.display());
    cmd.spawn().with_context(|| {
        format!(
            "could not start `{}` (is docker.io installed?)",
            cmd::display(&cmd)
        )
    })
}

/// Polls the socket until the engine answers. Fails early when `child`
/// exits, and after `timeout`; both failures show the tail of `log`.
pub fn wait_for_engine(
    socket: &Path,
    timeout: Duration,
    mut child: Option<&mut Child>,
    log: Option<&Path>,
) -> Result<(Ping, Duration)> {
    let start = Instant::now();
    let log_tail = || {
        log.map(|l| {
            let text = fs::read_to_string(l).unwrap_or_default();
            format!("\nlast lines of {}:\n{}", l.display(), tail(&text, 25))
        })
        .unwrap_or_default()
    };
    loop {
        if let Ok(p) = ping(socket) {
            return Ok((p, start.elapsed()));
        }
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "dockerd exited ({status}) before answering on {}{}",
                    socket.display(),
                    log_tail()
                );
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "no Docker engine answered on {} within {} s{}",
                socket.display(),
                timeout.as_secs(),
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------- test image

fn docker() -> Command {
    Command::new("docker")
}

/// Makes sure [`TEST_IMAGE`] exists (at the current [`IMAGE_VERSION`]);
/// returns the status to report.
pub fn ensure_test_image(verify_existing: bool) -> Result<String> {
    let format = format!("{{{{ index .Config.Labels \"{IMAGE_VERSION_LABEL}\" }}}}");
    let found = cmd::probe(docker().args(["image", "inspect", "--format", &format, TEST_IMAGE]))?;
    let status = match found.as_deref().map(str::trim) {
        Some(IMAGE_VERSION) => {
            if verify_existing {
                verify_image()?;
                return Ok("ok (runs)".into());
            }
            return Ok("ok".into());
        }
        Some(old) => {
            build_image()?;
            format!("rebuilt (version {old:?} -> {IMAGE_VERSION})")
        }
        None => {
            build_image()?;
            "built".to_string()
        }
    };
    verify_image()?;
    Ok(format!("{status}, runs"))
}

fn verify_image() -> Result<()> {
    let out = cmd::output(docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        TEST_IMAGE,
        "sh",
        "-c",
        "nc --help 2>&1 | head -1; echo ok",
    ]))
    .with_context(|| format!("a container from {TEST_IMAGE} does not run; remove the image (`docker image rm {TEST_IMAGE}`) and run `cargo xtask setup` again"))?;
    if out.lines().last() != Some("ok") {
        bail!("a container from {TEST_IMAGE} printed {out:?} instead of ending with `ok`");
    }
    Ok(())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Applet names from `busybox --list`.
pub fn parse_applets(list: &str) -> Vec<String> {
    list.lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/') && *a != "." && *a != "..")
        .map(str::to_string)
        .collect()
}

/// Lays out the image's root: `/bin/busybox`, one `/bin/APPLET -> busybox`
/// symlink per applet, the usual empty directories, passwd and group.
pub fn build_rootfs(root: &Path, busybox: &Path, applets: &[String]) -> Result<()> {
    let bin = root.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(busybox, bin.join("busybox"))
        .with_context(|| format!("copying {} (from busybox-static)", busybox.display()))?;
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in applets {
        let link = bin.join(applet);
        if link.symlink_metadata().is_err() {
            symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    for dir in ["tmp", "proc", "sys", "dev", "etc", "var/www", "root"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n",
    )?;
    Ok(())
}

fn build_image() -> Result<()> {
    let busybox = Path::new(BUSYBOX);
    let list = cmd::output(Command::new(busybox).arg("--list"))
        .context("running /bin/busybox --list; install busybox-static")?;
    let applets = parse_applets(&list);
    for needed in ["sh", "sleep", "nc", "ping", "wget", "httpd", "ip"] {
        if !applets.iter().any(|a| a == needed) {
            bail!("{BUSYBOX} has no `{needed}` applet; is it busybox-static's?");
        }
    }
    let dir = TempDir::new("netiso-image")?;
    build_rootfs(&dir.0, busybox, &applets)?;
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&dir.0)
        .args(["-c", "."]);
    let mut import = docker();
    import.args([
        "import",
        "-c",
        r#"CMD ["sh"]"#,
        "-c",
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "-c",
        &format!("LABEL {IMAGE_VERSION_LABEL}={IMAGE_VERSION}"),
        "-",
        TEST_IMAGE,
    ]);
    cmd::pipe(
        &mut tar,
        &mut import,
        "could not import the test image into Docker",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn temp() -> TempDir {
        TempDir::new("xtask-test").unwrap()
    }

    #[test]
    fn ping_response() {
        let ok = "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(
            parse_ping_response(ok).unwrap(),
            Ping {
                api_version: Some("1.41".into())
            }
        );
        assert!(parse_ping_response("HTTP/1.1 500 Internal Server Error\r\n\r\n").is_err());
        assert!(parse_ping_response("").is_err());
        assert!(parse_ping_response("HTTP/1.1 200 OK\r\n\r\n<html>").is_err());
    }

    #[test]
    fn ping_over_a_unix_socket() {
        let dir = temp();
        let sock = dir.0.join("docker.sock");
        assert!(ping(&sock).is_err(), "nothing listens yet");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /_ping HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 200 OK\r\nApi-Version: 1.99\r\n\r\nOK")
                .unwrap();
        });
        assert_eq!(ping(&sock).unwrap().api_version.as_deref(), Some("1.99"));
        server.join().unwrap();
    }

    #[test]
    fn process_lookup_in_a_fake_proc() {
        let dir = temp();
        let mk = |pid: &str, comm: &str, state: &str| {
            let d = dir.0.join(pid);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(d.join("stat"), format!("{pid} ({comm}) {state} 1 2 3")).unwrap();
        };
        mk("1", "init", "S");
        mk("42", "dockerd", "S");
        mk("43", "dockerd", "Z");
        mk("7", "containerd", "S");
        fs::create_dir_all(dir.0.join("self")).unwrap();
        assert_eq!(find_processes(&dir.0, "dockerd"), vec![42]);
        assert!(find_processes(&dir.0, "docker").is_empty());
        assert!(find_processes(Path::new("/nonexistent"), "dockerd").is_empty());
        // The real /proc: this test process is there under its own name.
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        assert!(find_processes(Path::new("/proc"), me.trim_end()).contains(&std::process::id()));
    }

    #[test]
    fn start_plan() {
        assert_eq!(plan_start(true, &[]), StartPlan::Systemctl);
        assert_eq!(plan_start(false, &[]), StartPlan::Spawn);
        assert_eq!(plan_start(false, &[10, 20]), StartPlan::WaitFor(10));
        assert_eq!(plan_start(true, &[10]), StartPlan::WaitFor(10));
    }

    #[test]
    fn systemd_detection() {
        let dir = temp();
        assert!(!systemd_is_init(&dir.0.join("systemd/system")));
        fs::create_dir_all(dir.0.join("systemd/system")).unwrap();
        assert!(systemd_is_init(&dir.0.join("systemd/system")));
    }

    #[test]
    fn detached_child_has_its_own_group_and_a_log() {
        let dir = temp();
        let log = dir.0.join("out.log");
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo started; echo oops >&2; read x || echo stdin-closed; exec sleep 30",
        ]);
        let mut child = spawn_detached(c, &log).unwrap();
        let pid = child.id();
        let stat_path = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("stdin-closed") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stat = fs::read_to_string(stat_path).unwrap();
        // Fields after the comm: state ppid pgrp session ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let pgrp: u32 = fields[2].parse().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(pgrp, pid, "the child leads its own process group");
        assert!(
            text.contains("started") && text.contains("oops") && text.contains("stdin-closed"),
            "{text}"
        );
    }

    #[test]
    fn waiting_fails_early_when_the_child_dies_and_shows_the_log() {
        let dir = temp();
        let log = dir.0.join("d.log");
        let mut c = Command::new("sh");
        c.args(["-c", "echo 'failed to start daemon: boom'; exit 3"]);
        let mut child = spawn_detached(c, &log).unwrap();
        let t = Instant::now();
        let err = wait_for_engine(
            &dir.0.join("none.sock"),
            Duration::from_secs(30),
            Some(&mut child),
            Some(&log),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10));
        let msg = format!("{err:#}");
        assert!(msg.contains("exited") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn waiting_times_out() {
        let dir = temp();
        let err = wait_for_engine(
            &dir.0.join("none.sock"),
            Duration::from_millis(300),
            None,
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("within 0 s"));
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn applets() {
        let a = parse_applets("[\n[[\nbusybox\nsh\nnc\n\nping\n");
        assert_eq!(a, ["[", "[[", "sh", "nc", "ping"]);
    }

    #[test]
    fn rootfs_layout() {
        let dir = temp();
        let fake = dir.0.join("fake-busybox");
        fs::write(&fake, "#!/bin/sh\n").unwrap();
        let root = dir.0.join("root");
        build_rootfs(&root, &fake, &["sh".into(), "nc".into(), "[".into()]).unwrap();
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(root.join("bin/[")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::metadata(root.join("bin/busybox"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        for d in ["proc", "sys", "dev", "var/www"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:") && passwd.contains("\nnobody:x:65534:"));
        assert!(fs::read_to_string(root.join("etc/group"))
            .unwrap()
            .contains("nobody:x:65534:"));
    }

    /// The whole start path (no engine → spawn dockerd detached → wait for
    /// /_ping) against a second, throw-away engine with its own socket,
    /// data and exec roots, containerd namespace and default bridge, and no
    /// iptables changes, so the system's engine is left alone. Needs root and docker.io (as
    /// `cargo xtask test` has); takes about 2 s.
    #[test]
    fn starts_a_second_engine_detached() {
        let dir = temp();
        let root = &dir.0;
        let arg = |flag: &str, p: &str| format!("--{flag}={}", root.join(p).display());
        // A default bridge of its own: with `--bridge=none` dockerd deletes
        // the host's docker0 at start-up, the system engine's bridge.
        let tag = format!("xte{}", std::process::id() % 100_000);
        let bridge = Bridge(format!("{tag}d"));
        let octet = 100 + std::process::id() % 100;
        let made = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ip link add {b} type bridge && ip addr add 10.254.{octet}.1/24 dev {b} && ip link set {b} up",
                b = bridge.0
            ))
            .status()
            .unwrap();
        assert!(made.success(), "could not create bridge {}", bridge.0);
        let had_docker0 = Path::new("/sys/class/net/docker0").exists();
        let engine = Engine {
            socket: root.join("d.sock"),
            dockerd_args: vec![
                format!("--host=unix://{}", root.join("d.sock").display()),
                arg("data-root", "data"),
                arg("exec-root", "x"),
                arg("pidfile", "d.pid"),
                format!("--bridge={}", bridge.0),
                format!("--containerd-namespace={tag}"),
                format!("--containerd-plugins-namespace={tag}p"),
                "--iptables=false".into(),
                "--ip6tables=false".into(),
            ],
            log: root.join("d.log"),
            systemd_marker: root.join("no-systemd"),
            // An empty procfs: the system's dockerd is not ours to wait for.
            proc_root: root.join("proc"),
            timeout: Duration::from_secs(60),
        };
        let status = engine.ensure();
        let pid: Option<u32> = fs::read_to_string(root.join("d.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let again = engine.ensure();
        if let Some(pid) = pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            let alive = || {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next());
                // Gone, or a zombie nobody has reaped yet: it has exited.
                state.is_some_and(|s| s != "Z")
            };
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let status = status.unwrap();
        assert!(status.starts_with("started (dockerd pid"), "{status}");
        assert!(pid.is_some(), "dockerd wrote its pid file");
        assert!(again.unwrap().starts_with("ok ("));
        assert_eq!(
            Path::new("/sys/class/net/docker0").exists(),
            had_docker0,
            "the second engine touched the system engine's docker0"
        );
    }

    /// A bridge this test made, deleted on drop.
    struct Bridge(String);

    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
}
