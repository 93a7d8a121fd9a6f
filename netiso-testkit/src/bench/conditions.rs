//! The conditions every figure was measured under: machine, kernel, load,
//! build, tool versions.
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Conditions {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub load_avg_start: String,
    pub load_avg_end: String,
    /// Other processes' CPU use is not under the bench's control: name the
    /// busiest ones at the start, so a noisy run can be recognised.
    pub busiest_at_start: Vec<String>,
    pub git_commit: String,
    pub git_dirty: bool,
    /// `release` (cargo bench) or `debug` (the smoke test).
    pub build_profile: String,
    pub tools: BTreeMap<String, String>,
    pub duration_s: f64,
}

fn cmd_out(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                s = String::from_utf8_lossy(&o.stderr).trim().to_string();
            }
            s
        })
        .unwrap_or_default()
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Conditions {
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let busiest = cmd_out("ps", &["-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"])
            .lines()
            .take(5)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        Self {
            started: utc_timestamp(std::time::SystemTime::now()),
            kernel: cmd_out("uname", &["-r"]),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            load_avg_start: load_avg(),
            busiest_at_start: busiest,
            git_commit: cmd_out("git", &["-C", root, "rev-parse", "--short=12", "HEAD"]),
            git_dirty: !cmd_out(
                "git",
                &["-C", root, "status", "--porcelain", "--untracked-files=no"],
            )
            .is_empty(),
            build_profile: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
            ..Default::default()
        }
    }

    pub fn add_tool_versions(&mut self) {
        let first_line = |s: String| s.lines().next().unwrap_or_default().to_string();
        self.tools.insert(
            "iperf3".into(),
            first_line(cmd_out("iperf3", &["--version"])),
        );
        self.tools
            .insert("nft".into(), first_line(cmd_out("nft", &["--version"])));
        self.tools
            .insert("iptables".into(), first_line(cmd_out("iptables", &["-V"])));
    }

    pub fn finish(&mut self, took: Duration) {
        self.load_avg_end = load_avg();
        self.duration_s = (took.as_secs_f64() * 10.0).round() / 10.0;
        let docker = cmd_out("docker", &["version", "--format", "{{.Server.Version}}"]);
        if !docker.is_empty() {
            self.tools.insert("docker engine".into(), docker);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a wall-clock time.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses Docker's RFC 3339 UTC timestamps (`2026-05-20T01:02:03.123456789Z`)
/// into nanoseconds since the epoch.
pub fn parse_rfc3339_utc_ns(s: &str) -> Option<u64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.split('-');
    let (y, mo, d): (i64, u32, u32) = (
        dp.next()?.parse().ok()?,
        dp.next()?.parse().ok()?,
        dp.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut tp = hms.split(':');
    let (h, mi, sec): (i64, i64, i64) = (
        tp.next()?.parse().ok()?,
        tp.next()?.parse().ok()?,
        tp.next()?.parse().ok()?,
    );
    let digits: String = frac.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().ok()?;
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs as u64 * 1_000_000_000 + nanos)
}
