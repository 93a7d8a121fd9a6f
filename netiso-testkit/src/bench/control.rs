//! The control plane against the real Docker engine: container start to
//! enforced, policy reload, daemon CPU and memory.
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use netiso_common::maps;
use netiso_daemon::datapath::counters;
use netiso_daemon::observe::state::State;

use super::report::{fmt_num, Figure, Section};
use super::stats::{percentile, summary};
use super::workload::{filler_rules, GroupSpec, Workload};
use super::{mono_ns, real_ns, Options};
use crate::{run_in, unique, PinDir};

const BG_GROUPS: usize = 50;
/// The sink never listens: probes only need their packets dropped.
const PROBE_PORT: u16 = 9;

/// Containers and the network the bench made; removed on drop.
struct DockerRes {
    network: String,
    tag: String,
    containers: Arc<Mutex<Vec<String>>>,
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl DockerRes {
    fn new() -> Result<Self> {
        remove_stale_networks();
        let tag = unique("nb");
        let network = format!("netiso-bench-{tag}");
        docker(&["network", "create", "--driver", "bridge", &network]).context(
            "creating the bench's Docker network (is dockerd running? `cargo xtask setup`)",
        )?;
        Ok(Self {
            network,
            tag,
            containers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn run_args(&self, name: &str, role: &str, bg: usize) -> Vec<String> {
        vec![
            "run".into(),
            "-d".into(),
            "--network".into(),
            self.network.clone(),
            "--name".into(),
            name.into(),
            "--label".into(),
            format!("netiso.bench={}", self.tag),
            "--label".into(),
            format!("netiso.role={role}"),
            "--label".into(),
            format!("netiso.bg=g{bg}"),
            crate::docker::image(),
            "sleep".into(),
            "3600".into(),
        ]
    }

    fn name(&self, i: usize) -> String {
        format!("nbench-{}-{i}", self.tag)
    }

    /// Container's start time (wall clock, ns), pid and address.
    fn inspect(&self, id: &str) -> Result<(u64, u32, Ipv4Addr)> {
        let fmt = format!(
            "{{{{.State.StartedAt}}}} {{{{.State.Pid}}}} {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let out = docker(&["inspect", "-f", &fmt, id])?;
        let mut it = out.split_whitespace();
        let started = it
            .next()
            .and_then(super::conditions::parse_rfc3339_utc_ns)
            .context("StartedAt")?;
        let pid = it.next().and_then(|p| p.parse().ok()).context("Pid")?;
        let ip = it
            .next()
            .and_then(|p| p.parse().ok())
            .context("IPAddress")?;
        Ok((started, pid, ip))
    }
}

/// Docker 20.10 can keep a network "busy" (`has active endpoints`) for a
/// long while after hundreds of its containers were removed at once, so an
/// earlier run's network may still be there: remove bench networks that
/// are empty and older than 15 minutes (never one a running bench uses).
fn remove_stale_networks() {
    let Ok(names) = docker(&[
        "network",
        "ls",
        "--filter",
        "name=netiso-bench-",
        "--format",
        "{{.Name}}",
    ]) else {
        return;
    };
    for name in names.lines().filter(|n| n.starts_with("netiso-bench-")) {
        let Ok(info) = docker(&[
            "network",
            "inspect",
            "-f",
            "{{.Created}} {{len .Containers}}",
            name,
        ]) else {
            continue;
        };
        let mut it = info.split_whitespace();
        let created = it.next().and_then(super::conditions::parse_rfc3339_utc_ns);
        let empty = it.next() == Some("0");
        let old = created.is_some_and(|c| real_ns().saturating_sub(c) > 15 * 60 * 1_000_000_000);
        if empty && old {
            let _ = docker(&["network", "rm", name]);
        }
    }
}

impl Drop for DockerRes {
    fn drop(&mut self) {
        let all = std::mem::take(&mut *self.containers.lock().unwrap());
        // In parallel chunks: removing hundreds one by one takes minutes.
        std::thread::scope(|s| {
            for chunk in all.chunks(all.len().div_ceil(4).max(1)) {
                s.spawn(move || {
                    let mut c = Command::new("docker");
                    c.args(["rm", "-f"]).args(chunk);
                    let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
                });
            }
        });
        // The engine may still be detaching the last endpoints: retry.
        for _ in 0..20 {
            let removed = Command::new("docker")
                .args(["network", "rm", &self.network])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if removed {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The `netiso daemon` under test, killed (by its pid) on drop.
struct Daemon {
    child: Child,
    state_dir: tempfile::TempDir,
    pins: PinDir,
}

impl Daemon {
    fn start(policy: PathBuf) -> Result<Self> {
        let pins = PinDir::new();
        let state_dir = tempfile::tempdir()?;
        let log = std::fs::File::create(state_dir.path().join("daemon.log"))?;
        let args = ["--policy".to_string(), policy.display().to_string()];
        let child = crate::daemon::daemon_command(
            Command::new(crate::netiso_bin()),
            &pins.path,
            state_dir.path(),
            &args,
            &log,
        )
        // Measured: less logging than the tests' debug level.
        .env("NETISO_LOG", "info")
        .spawn()
        .context("starting netiso daemon")?;
        Ok(Self {
            child,
            state_dir,
            pins,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.state_dir.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn alive(&mut self) -> Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("the daemon exited ({st}):\n{}", self.log_tail());
        }
        Ok(())
    }

    fn state(&self) -> Option<State> {
        State::read(self.state_dir.path()).ok()
    }

    /// Modification stamp of the state file, to skip parsing an unchanged file.
    fn state_stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(State::path(self.state_dir.path())).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Waits (bounded) until the state file has not changed for `quiet`.
    fn settle(&mut self, quiet: Duration, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        let mut last = self.state_stamp();
        let mut since = Instant::now();
        while Instant::now() < end {
            self.alive()?;
            std::thread::sleep(Duration::from_millis(50));
            let now = self.state_stamp();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
        }
        Ok(())
    }

    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&State) -> bool,
    ) -> Result<()> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.alive()?;
            if self.state().is_some_and(|s| pred(&s)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "timed out waiting for {what}; daemon log:\n{}",
            self.log_tail()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill takes integers only; the daemon is our child and not
        // yet waited for, so its pid still names it (it cannot be reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (utime + stime in seconds, RSS KiB, peak RSS KiB) of a process.
fn proc_usage(pid: u32) -> Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf takes an integer name and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((cpu, kib("VmRSS:"), kib("VmHWM:")))
}

/// CPU % and RSS over an idle window.
fn idle(d: &mut Daemon, secs: f64) -> Result<(f64, f64, f64)> {
    d.settle(Duration::from_secs(1), Duration::from_secs(30))?;
    let (c0, _, _) = proc_usage(d.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, rss, hwm) = proc_usage(d.pid())?;
    d.alive()?;
    Ok((
        (c1 - c0) / t0.elapsed().as_secs_f64() * 100.0,
        rss / 1024.0,
        hwm / 1024.0,
    ))
}

fn policy_workload(tag: &str, rules: usize) -> Workload {
    let sel = |role: (&str, String)| {
        vec![
            ("netiso.bench".to_string(), tag.to_string()),
            (role.0.to_string(), role.1),
        ]
    };
    let mut groups: Vec<GroupSpec> = (0..BG_GROUPS)
        .map(|g| GroupSpec {
            name: format!("bg{g}"),
            labels: sel(("netiso.bg", format!("g{g}"))),
            ingress_deny: false,
            egress_deny: false,
        })
        .collect();
    groups.push(GroupSpec {
        name: "probe".into(),
        labels: sel(("netiso.role", "probe".into())),
        ingress_deny: false,
        egress_deny: true,
    });
    groups.push(GroupSpec {
        name: "sink".into(),
        labels: sel(("netiso.role", "sink".into())),
        ingress_deny: true,
        egress_deny: false,
    });
    let mut rules_v = vec![super::workload::RuleSpec {
        from: BG_GROUPS,
        to: BG_GROUPS + 1,
        ports: vec![(super::workload::TCP, 8080)],
    }];
    rules_v.extend(filler_rules(rules.saturating_sub(1), BG_GROUPS));
    Workload {
        groups,
        rules: rules_v,
        ..Default::default()
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One container start, timed.
struct Start {
    /// All monotonic ns.
    call: u64,
    returned: u64,
    started: u64,
    state: u64,
    first_drop: Option<u64>,
}

pub fn run(opts: &Options) -> Result<Section> {
    crate::docker::require_docker();
    let res = DockerRes::new()?;
    let tmp = tempfile::tempdir()?;
    let policy_path = tmp.path().join("policy.toml");
    let small = policy_workload(&res.tag, 1);
    write_atomic(&policy_path, &small.toml())?;
    let big: Vec<String> = (0..2)
        .map(|v| {
            let mut w = policy_workload(&res.tag, opts.reload_rules);
            if let Some(r) = w.rules.last_mut() {
                r.ports[0].1 += v as u16;
            }
            w.toml()
        })
        .collect();

    // The sink: its group denies ingress; probes send to it.
    let sink = res.name(0);
    res.containers.lock().unwrap().push(sink.clone());
    let args = res.run_args(&sink, "sink", 0);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (_, _, sink_ip) = res.inspect(&sink)?;

    let mut d = Daemon::start(policy_path.clone())?;
    let sink_c = sink.clone();
    d.wait_for(
        "the sink container to be enforced",
        Duration::from_secs(60),
        move |s| {
            s.endpoints
                .iter()
                .any(|e| e.container == sink_c && e.enforced)
        },
    )?;
    let others = docker(&["ps", "-q"])?.lines().count();
    println!(
        "bench: control plane: daemon up (pid {}), {others} containers on the engine",
        d.pid()
    );
    let mut sec = Section::new(
        "Control plane (real Docker engine)",
        format!(
            "The release `netiso daemon` follows the system's Docker engine with its own pin and state directories. The bench's containers (busybox `sleep`, on a bench-owned bridge network) carry a bench-unique label, so other containers on the engine are seen but never managed. A `sink` container's group denies ingress; `probe` containers' group denies egress.\n\n\
- **start → enforced**: {starts} containers started one after the other with `docker run -d`. Start = Docker's `State.StartedAt`. Right after `docker run` returns, the bench enters the new container's network namespace and sends a UDP datagram to the sink every millisecond; the packet's drop is recorded by the datapath in its flow table (`first_seen`, the kernel's monotonic clock). Enforced = the first dropped probe packet, or the moment the state file showed the endpoint `enforced` (polled every 2 ms), whichever came first. The probe starts only once `docker run` has returned and `docker inspect` answered, so a container enforced before that shows the probe's start time: these figures are upper bounds.\n\
- **reload**: the policy file is replaced (rename) by a policy with {rr} rules over {bg} groups and SIGHUP is sent; reloaded = the state file's generation changes (polled every 2 ms). Reloads alternate between two variants that differ in one rule, the first from the small start-up policy.\n\
- **CPU and RSS**: `/proc/<pid>/stat` and `status` of the daemon, over {idle} s once the state file has been quiet for 1 s.",
            starts = opts.starts,
            rr = opts.reload_rules,
            bg = BG_GROUPS,
            idle = opts.idle_secs
        ),
    );
    sec.cond("other containers on the engine at start", others);
    sec.cond("image", crate::docker::image());
    sec.cond(
        "start-up policy",
        format!("{} groups, 1 rule", small.groups.len()),
    );

    // Idle with one endpoint.
    let (cpu0, rss0, _) = idle(&mut d, opts.idle_secs)?;
    sec.figures.push(
        Figure::new(
            "control.idle.cpu.1",
            "daemon CPU, idle, 1 endpoint",
            "%",
            summary(&[cpu0]),
        )
        .cond("window s", opts.idle_secs),
    );
    sec.figures.push(Figure::new(
        "control.idle.rss.1",
        "daemon RSS, idle, 1 endpoint",
        "MiB",
        summary(&[rss0]),
    ));

    // Starts, one by one.
    let flows = counters::open_pinned(&d.pins.path, maps::FLOWS)?;
    let mut starts = Vec::new();
    for i in 1..=opts.starts {
        let name = res.name(i);
        res.containers.lock().unwrap().push(name.clone());
        let args = res.run_args(&name, "probe", i % BG_GROUPS);
        let call = mono_ns();
        let id = docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let returned = mono_ns();
        let (started_real, pid, ip) = res.inspect(&id)?;
        let offset = real_ns() as i128 - mono_ns() as i128;
        let started = (started_real as i128 - offset) as u64;
        // The probe, from inside the container's namespace.
        let stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let stop = stop.clone();
            let to = SocketAddr::from((sink_ip, PROBE_PORT));
            std::thread::spawn(move || {
                run_in(Path::new(&format!("/proc/{pid}/ns/net")), move || {
                    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                    let end = Instant::now() + Duration::from_secs(5);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let _ = s.send_to(b"netiso-bench-probe", to);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            })
        };
        let mut state_seen = None;
        let mut drop_seen = None;
        let mut stamp = None;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && (state_seen.is_none() || drop_seen.is_none()) {
            if state_seen.is_none() {
                let now = d.state_stamp();
                if now != stamp {
                    stamp = now;
                    if d.state().is_some_and(|s| {
                        s.endpoints
                            .iter()
                            .any(|e| e.container == name && e.enforced)
                    }) {
                        state_seen = Some(mono_ns());
                    }
                }
            }
            if drop_seen.is_none() {
                drop_seen = counters::flows(&flows)?
                    .iter()
                    .filter(|(k, _)| k.saddr[..4] == ip.octets())
                    .map(|(_, v)| v.first_seen_ns)
                    .min();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = probe.join();
        d.alive()?;
        let Some(state) = state_seen else {
            bail!(
                "{name} was not shown enforced within 10 s; daemon log:\n{}",
                d.log_tail()
            );
        };
        if drop_seen.is_none() {
            bail!("{name} is shown enforced but none of its probe packets was dropped: enforcement does not work, so its latency means nothing");
        }
        starts.push(Start {
            call,
            returned,
            started,
            state,
            first_drop: drop_seen,
        });
    }
    let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;
    let enforced = |s: &Start| s.state.min(s.first_drop.unwrap_or(u64::MAX));
    let lat = |f: &dyn Fn(&Start) -> f64| -> Vec<f64> { starts.iter().map(f).collect() };
    let series: Vec<(&str, &str, Vec<f64>, bool)> = vec![
        (
            "control.start_to_enforced",
            "container start (StartedAt) → enforced",
            lat(&|s| ms(enforced(s), s.started)),
            true,
        ),
        (
            "control.start_to_drop",
            "container start → first dropped probe packet",
            lat(&|s| ms(s.first_drop.unwrap_or(0), s.started)),
            false,
        ),
        (
            "control.start_to_state",
            "container start → state file shows it enforced",
            lat(&|s| ms(s.state, s.started)),
            false,
        ),
        (
            "control.run_to_enforced",
            "`docker run` issued → enforced (includes Docker's own work)",
            lat(&|s| ms(enforced(s), s.call)),
            false,
        ),
        (
            "control.returned_to_enforced",
            "`docker run` returned → enforced (negative: enforced before it returned)",
            lat(&|s| ms(enforced(s), s.returned)),
            false,
        ),
    ];
    for (id, label, v, target) in series {
        let p99 = percentile(&v, 99.0);
        let mut f = Figure::new(id, label, "ms", summary(&v))
            .extra("p50", percentile(&v, 50.0))
            .extra("p99", p99)
            .cond("starts", starts.len());
        if target {
            f = f.target("p99 ≤ 100 ms", p99 <= 100.0);
        }
        sec.figures.push(f);
    }

    // Ramp up to `endpoints` containers.
    let have = 1 + opts.starts;
    let want = opts.endpoints.max(have);
    let (cpu_r0, _, _) = proc_usage(d.pid())?;
    let t_ramp = Instant::now();
    let next = AtomicUsize::new(have);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                if t_ramp.elapsed() > opts.ramp_budget {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= want {
                    return;
                }
                let name = res.name(i);
                res.containers.lock().unwrap().push(name.clone());
                let args = res.run_args(&name, "probe", i % BG_GROUPS);
                if docker(&args.iter().map(String::as_str).collect::<Vec<_>>()).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let started_total = next.load(Ordering::Relaxed).min(want) - failed.load(Ordering::Relaxed);
    let prefix = format!("nbench-{}-", res.tag);
    let pfx = prefix.clone();
    d.wait_for(
        &format!("{started_total} bench containers to be enforced"),
        Duration::from_secs(120),
        move |s| {
            s.endpoints
                .iter()
                .filter(|e| e.container.starts_with(&pfx) && e.enforced)
                .count()
                >= started_total
        },
    )?;
    let ramp_s = t_ramp.elapsed().as_secs_f64();
    let (cpu_r1, _, _) = proc_usage(d.pid())?;
    let n = started_total;
    println!("bench: control plane: {n} containers enforced after {ramp_s:.0} s");
    sec.cond(
        "endpoints reached",
        format!(
            "{n} of {} asked for ({} docker run failures; ramp {ramp_s:.0} s, 4 concurrent `docker run`, budget {} s)",
            opts.endpoints,
            failed.load(Ordering::Relaxed),
            opts.ramp_budget.as_secs()
        ),
    );
    let ramp_new = n.saturating_sub(have).max(1);
    sec.figures.push(
        Figure::new(
            "control.ramp.cpu_per_start",
            "daemon CPU time per container start during the ramp",
            "ms",
            summary(&[(cpu_r1 - cpu_r0) * 1000.0 / ramp_new as f64]),
        )
        .cond("containers started in the ramp", ramp_new),
    );
    let (cpu1, rss1, _) = idle(&mut d, opts.idle_secs)?;
    sec.figures.push(
        Figure::new(
            "control.idle.cpu.n",
            format!("daemon CPU, idle, {n} endpoints"),
            "%",
            summary(&[cpu1]),
        )
        .cond("window s", opts.idle_secs),
    );
    sec.figures.push(Figure::new(
        "control.idle.rss.n",
        format!("daemon RSS, idle, {n} endpoints, start-up policy"),
        "MiB",
        summary(&[rss1]),
    ));

    // Reloads of the big policy.
    let mut reload = Vec::new();
    let mut reload_cpu = Vec::new();
    for k in 0..opts.reloads.max(1) {
        let gen0 = d.state().map(|s| s.generation);
        let (c0, _, _) = proc_usage(d.pid())?;
        let t0 = Instant::now();
        write_atomic(&policy_path, &big[k % 2])?;
        // SAFETY: kill takes integers only. `d` owns the daemon, our child,
        // which is reaped only when `d.alive()` bails out or `d` drops: its
        // pid still names it here.
        unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
        let mut stamp = d.state_stamp();
        let end = Instant::now() + Duration::from_secs(60);
        let mut done = None;
        while Instant::now() < end {
            d.alive()?;
            let now = d.state_stamp();
            if now != stamp {
                stamp = now;
                if d.state().map(|s| s.generation) != gen0 {
                    done = Some(t0.elapsed());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let Some(took) = done else {
            bail!(
                "the {}-rule policy was not applied within 60 s; daemon log:\n{}",
                opts.reload_rules,
                d.log_tail()
            );
        };
        d.settle(Duration::from_millis(500), Duration::from_secs(30))?;
        let (c1, _, _) = proc_usage(d.pid())?;
        reload.push(took.as_secs_f64() * 1e3);
        reload_cpu.push((c1 - c0) * 1e3);
    }
    let worst = reload.iter().copied().fold(0.0, f64::max);
    sec.figures.push(
        Figure::new(
            "control.reload",
            format!(
                "reload of a {}-rule policy, {n} endpoints (file replaced + SIGHUP → applied)",
                opts.reload_rules
            ),
            "ms",
            summary(&reload),
        )
        .cond("reloads", reload.len())
        .cond(
            "first reload",
            format!("from the start-up policy: {} ms", fmt_num(reload[0])),
        )
        .target("every reload ≤ 300 ms", worst <= 300.0),
    );
    sec.figures.push(Figure::new(
        "control.reload.cpu",
        "daemon CPU time per reload (incl. settling)",
        "ms",
        summary(&reload_cpu),
    ));
    let (cpu2, rss2, hwm2) = idle(&mut d, opts.idle_secs)?;
    sec.figures.push(
        Figure::new(
            "control.idle.cpu.n_big",
            format!(
                "daemon CPU, idle, {n} endpoints, {}-rule policy",
                opts.reload_rules
            ),
            "%",
            summary(&[cpu2]),
        )
        .cond("window s", opts.idle_secs),
    );
    let rss_target = rss1.max(rss2);
    sec.figures.push(
        Figure::new(
            "control.idle.rss.n_big",
            format!(
                "daemon RSS, idle, {n} endpoints, {}-rule policy",
                opts.reload_rules
            ),
            "MiB",
            summary(&[rss2]),
        )
        .extra("peak_rss_mib", hwm2)
        .target(
            if n >= 500 {
                "≤ 50 MB at 500 endpoints (larger of the two policies)".to_string()
            } else {
                format!("≤ 50 MB at 500 endpoints (only {n} reached)")
            },
            rss_target * 1.048_576 <= 50.0,
        ),
    );
    drop(d);
    drop(res);
    Ok(sec)
}
