//! Command-line side of the operator commands that talk to the daemon:
//! `stats`, `status`, `monitor`, `reload`, `debug-log`. `stats` and
//! `status` fall back to the pinned maps and the state file when the
//! daemon is not running.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::api::{self, ClientError, Request};
use crate::observe::defaults;
use crate::observe::events::{EventRow, MonitorMessage};
use crate::observe::filter::{parse_duration, Filter};
use crate::observe::state::State;
use crate::observe::stats::{self, SortKey, Stats, View};
use crate::observe::status::{self, StatusReport};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where to find the daemon and its files.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// Control socket [default: <state-dir>/netiso.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where the daemon pins programs, links and maps.
    #[arg(long, default_value = defaults::PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Where the daemon publishes its state.
    #[arg(long, default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
}

impl Conn {
    pub fn socket(&self) -> PathBuf {
        api::socket_path(self.socket.as_deref(), &self.state_dir)
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// Only flows with a drop in this last period (`30s`, `15m`, `2h`, `1d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Order of the flow rows (largest or newest first).
    #[arg(long, value_enum, default_value = "packets")]
    pub sort: SortKey,
    /// Show only the first N flow rows.
    #[arg(long)]
    pub top: Option<usize>,
    /// Per-rule decision counters instead of the flow table.
    #[arg(long)]
    pub rules: bool,
    /// Machine-readable output (everything, filtered).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Stats from the daemon, or from the pins when it is not running.
pub fn fetch_stats(conn: &Conn) -> Result<Stats> {
    match api::call(&conn.socket(), Request::Stats, TIMEOUT) {
        Ok(v) => serde_json::from_value(v).context("the daemon's stats are not understood"),
        Err(ClientError::NotRunning { .. }) => {
            eprintln!(
                "note: the daemon is not running; reading the pinned maps under {}",
                conn.pin_dir.display()
            );
            let mut s = stats::collect(&conn.pin_dir, &conn.state_dir)?;
            s.source = "pins".into();
            Ok(s)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn run_stats(a: StatsArgs) -> Result<ExitCode> {
    a.filter.validate()?;
    let view = View {
        filter: a.filter.clone(),
        since: a.since.as_deref().map(parse_duration).transpose()?,
        sort: a.sort,
        top: a.top,
    };
    let s = stats::apply_view(fetch_stats(&a.conn)?, &view);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if a.rules {
        print!("{}", stats::render_rules(&s));
    } else {
        print!("{}", stats::render(&s));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Every node of the Docker Swarm instead: whether its netiso enforces
    /// the policy Swarm delivers (run on a manager).
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the policy's carrier service [default: the one this
    /// node's daemon takes its policy from, else netiso_policy].
    #[arg(long, value_name = "SERVICE", requires = "cluster")]
    pub service: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// The daemon's status, or what the state file and pins say when it is down.
pub fn fetch_status(conn: &Conn) -> Result<StatusReport> {
    let socket = conn.socket();
    match api::call(&socket, Request::Status, TIMEOUT) {
        Ok(v) => serde_json::from_value(v).context("the daemon's status is not understood"),
        Err(e @ (ClientError::NotRunning { .. } | ClientError::Io { .. })) => {
            let state = State::read(&conn.state_dir)?;
            let mut r = status::report(&conn.pin_dir, &socket, &state);
            r.source = "files".into();
            r.daemon_error = Some(e.to_string());
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn run_status(a: StatusArgs) -> Result<ExitCode> {
    if a.cluster {
        let service = a.service.clone().unwrap_or_else(|| {
            State::read(&a.conn.state_dir)
                .ok()
                .and_then(|s| s.swarm_policy)
                .map(|s| s.service)
                .unwrap_or_else(|| crate::daemon::swarm_policy::DEFAULT_SERVICE.to_string())
        });
        return super::cluster::run(&service, a.json);
    }
    let r = fetch_status(&a.conn)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", status::render(&r));
        // Addresses learned for peers by name (the daemon's names.json).
        if let Ok(names) = crate::observe::names::Names::read(&a.conn.state_dir) {
            print!("{}", status::render_names(&names));
        }
    }
    Ok(if r.problems().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(clap::Args, Clone, Debug)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (`30s`, `5m`, ...).
    #[arg(long)]
    pub duration: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Local wall-clock time with milliseconds.
fn clock(unix: f64) -> String {
    let secs = unix.floor() as libc::time_t;
    let ms = ((unix - unix.floor()) * 1000.0) as u32;
    // SAFETY: `libc::tm` is a C struct of integers and one `tm_zone` raw
    // pointer, for all of which zero (null) is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers come from live locals: localtime_r reads `secs`
    // and writes only into `tm` (the reentrant variant: no shared static).
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{ms:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn peer(name: &str, ip: Option<std::net::IpAddr>, group: &str) -> String {
    let ip = ip.map(|i| i.to_string());
    match ip {
        Some(ip) if ip != name => format!("{name} ({group}) {ip}"),
        _ => format!("{name} ({group})"),
    }
}

/// One human line per event.
pub fn render_event(row: &EventRow) -> String {
    let e = &row.flow;
    format!(
        "{}  {:<5} {:<13} {:<7}  {} -> {}  {}  {} B  rule {}",
        clock(row.time),
        row.verdict.to_uppercase(),
        e.reason,
        e.direction,
        peer(&e.src, e.src_ip, &e.src_group),
        peer(&e.dst, e.dst_ip, &e.dst_group),
        e.service(),
        row.len,
        e.rule_label(),
    )
}

pub fn render_message(m: &MonitorMessage) -> String {
    match m {
        MonitorMessage::Event(e) => render_event(e),
        MonitorMessage::Suppressed { count } => {
            format!("-- {count} events suppressed by the kernel's rate limit")
        }
        MonitorMessage::RingFull { count } => {
            format!("-- {count} events lost in the kernel (event buffer full)")
        }
        MonitorMessage::Lost { count } => {
            format!("-- {count} messages lost: this client read too slowly")
        }
    }
}

pub fn run_monitor(a: MonitorArgs) -> Result<ExitCode> {
    a.filter.validate()?;
    let until = a
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .map(|d| Instant::now() + d);
    let mut sub = api::subscribe(&a.conn.socket(), a.filter.clone()).map_err(|e| match e {
        ClientError::NotRunning { .. } => anyhow!("{e}; monitor needs the daemon"),
        e => e.into(),
    })?;
    if let Some(err) = sub.hello.get("events_error").and_then(|v| v.as_str()) {
        eprintln!("warning: the daemon cannot read kernel events right now: {err}");
    }
    if !a.json {
        let rate = sub.hello.get("event_rate").and_then(|v| v.as_u64());
        eprintln!(
            "Watching drops and audits{} (Ctrl-C to stop)...",
            rate.map_or(String::new(), |r| format!(
                "; the kernel sends at most {r} events/s per CPU"
            ))
        );
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        if a.count.is_some_and(|c| seen >= c) {
            break;
        }
        let wait = match until {
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    break;
                }
                (t - now).min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        let Some(msg) = sub.next_within(wait)? else {
            continue;
        };
        if matches!(msg, MonitorMessage::Event(_)) {
            seen += 1;
        }
        let line = if a.json {
            serde_json::to_string(&msg)?
        } else {
            render_message(&msg)
        };
        if writeln!(out, "{line}").is_err() {
            // The reader went away (e.g. `| head`).
            break;
        }
        let _ = out.flush();
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DebugLogArgs {
    /// `on` logs every drop from the kernel to the daemon's log; `off` stops.
    #[arg(value_enum)]
    pub state: OnOff,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run_debug_log(a: DebugLogArgs) -> Result<ExitCode> {
    let on = a.state == OnOff::On;
    api::call(&a.conn.socket(), Request::DebugLog { on }, TIMEOUT)?;
    println!(
        "kernel debug log {}{}",
        if on { "on" } else { "off" },
        if on {
            ": drops appear in the daemon's log (target netiso::kernel)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Clone, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run_reload(a: ReloadArgs) -> Result<ExitCode> {
    match api::call(&a.conn.socket(), Request::Reload, TIMEOUT) {
        Ok(_) => {
            println!("policy reloaded");
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Daemon(msg)) => {
            eprintln!("the policy was rejected; the running policy stays:\n{msg}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => bail!(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::Flow;

    #[test]
    fn event_lines_read_well() {
        let e = EventRow {
            time: 1_700_000_000.25,
            verdict: "drop".into(),
            flow: Flow {
                reason: "default-deny".into(),
                direction: "egress".into(),
                src: "guest".into(),
                src_ip: Some("172.18.0.4".parse().unwrap()),
                src_group: "untrusted".into(),
                dst: "172.18.0.9".into(),
                dst_ip: Some("172.18.0.9".parse().unwrap()),
                dst_group: "world".into(),
                proto: "udp".into(),
                port: 7777,
                rule: None,
            },
            len: 44,
            ifindex: 3,
        };
        let l = render_event(&e);
        assert!(l.contains(".250  DROP"), "{l}");
        assert!(
            l.contains("guest (untrusted) 172.18.0.4 -> 172.18.0.9 (world)  udp/7777  44 B"),
            "{l}"
        );
        assert!(l.ends_with("rule default"), "{l}");
        assert_eq!(
            render_message(&MonitorMessage::Suppressed { count: 5 }),
            "-- 5 events suppressed by the kernel's rate limit"
        );
    }
}
