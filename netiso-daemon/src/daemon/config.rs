//! The daemon's configuration: `/etc/netiso/netiso.toml`, overridden by
//! command-line flags, with built-in defaults for everything.
//!
//! A bad file is reported as `file:line:column: message` (like the policy
//! module does), and an unknown key is an error, not a silent no-op: a typo
//! in a firewall's configuration must not go unnoticed.
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Where `netiso daemon` looks for its configuration when `--config` is not
/// given (a missing default file is fine; a missing `--config` file is not).
pub use crate::observe::defaults::{
    CONFIG as DEFAULT_CONFIG, PIN_DIR as DEFAULT_PIN_DIR, POLICY as DEFAULT_POLICY,
    STATE_DIR as DEFAULT_STATE_DIR,
};
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `netiso daemon` flags. Every one overrides the same key of the
/// configuration file.
#[derive(Args, Clone, Debug, Default)]
pub struct DaemonArgs {
    /// Configuration file [default: /etc/netiso/netiso.toml, if present].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Policy file, or directory of *.toml files [default: /etc/netiso/policy.toml].
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Where programs, links and maps are pinned (bpffs) [default: /sys/fs/bpf/netiso].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Where the daemon publishes its state for the CLI [default: /run/netiso].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds between full resyncs with Docker (drift repair); 0 disables [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub resync_interval: Option<u64>,
    /// Let ethertypes other than IPv4, IPv6 and ARP pass managed endpoints
    /// (they are dropped by default: a channel no IP policy sees).
    #[arg(long)]
    pub allow_non_ip: bool,
    /// Accepted for old configurations: dropping non-IP is now the default.
    #[arg(long, hide = true)]
    pub drop_non_ip: bool,
    /// Do not reload the policy when its file changes (SIGHUP still works).
    #[arg(long)]
    pub no_watch_policy: bool,
    /// The Docker engine's exec-root as this daemon can open it: Swarm
    /// overlays keep their namespaces under `<DIR>/netns` [default:
    /// /var/run/docker].
    #[arg(long, value_name = "DIR")]
    pub docker_exec_root: Option<PathBuf>,
    /// The packet mark with which a container's veth passes its verdict on
    /// a live connection to the receiving container's veth on this host
    /// (hex or decimal), or `off` [default: 0x1e000000].
    #[arg(long, value_name = "MARK", value_parser = parse_mark)]
    pub cross_veth_mark: Option<u32>,
    /// Take the policy from Swarm: from the config this node's task of the
    /// global service SERVICE carries (`deploy/netiso-policy.yml` makes
    /// `netiso_policy`); the local policy file until one arrives.
    #[arg(long, value_name = "SERVICE")]
    pub swarm_policy_service: Option<String>,
    /// A UDP port of the Swarm's overlay data path (`docker swarm init
    /// --data-path-port`): on a Swarm node no container may send to it
    /// beyond the containers, nor to the port of any overlay's VXLAN link
    /// found on the node [default: 4789].
    #[arg(long, value_name = "PORT")]
    pub swarm_data_path_port: Option<u16>,
    /// Only warn (instead of refusing the policy) when a non-root user could
    /// change the policy file or a directory on its path.
    #[arg(long)]
    pub allow_insecure_policy_permissions: bool,
}

/// The keys of `netiso.toml`; all optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    policy: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    /// `off` switches metrics off.
    metrics_address: Option<String>,
    log_format: Option<LogFormat>,
    /// Seconds.
    resync_interval: Option<u64>,
    allow_non_ip: Option<bool>,
    /// Accepted for old configurations (now the default).
    drop_non_ip: Option<bool>,
    watch_policy: Option<bool>,
    allow_insecure_policy_permissions: Option<bool>,
    docker_exec_root: Option<PathBuf>,
    /// 0 switches cross-veth verdicts off.
    cross_veth_mark: Option<u32>,
    swarm_policy_service: Option<String>,
    swarm_data_path_port: Option<u16>,
}

/// The configuration in force: file, then flags, then defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file that was read, if any.
    pub source: Option<PathBuf>,
    pub policy: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Control socket and metrics keys of the file; the services' own flags
    /// (`--socket`, `--socket-group`, `--metrics-addr`) override them.
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    /// An address with a port, or `off`.
    pub metrics_address: Option<String>,
    pub log_format: LogFormat,
    /// `None`: no periodic resync.
    pub resync_interval: Option<Duration>,
    pub allow_non_ip: bool,
    pub watch_policy: bool,
    /// Warn about, instead of refusing, a policy non-root users could change.
    pub allow_insecure_policy_permissions: bool,
    /// Where the engine keeps Swarm overlays' namespaces (`<dir>/netns`).
    pub docker_exec_root: PathBuf,
    /// The mark of cross-veth verdicts; 0: off.
    pub cross_veth_mark: u32,
    /// The global service whose tasks carry the policy (Swarm config).
    pub swarm_policy_service: Option<String>,
    /// The Swarm's overlay data path port (VXLAN).
    pub swarm_data_path_port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {error}")]
    Read { path: PathBuf, error: String },
    /// `file:line:column: message`.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl Config {
    /// Reads the configuration file named by `--config` (which must exist),
    /// else [`DEFAULT_CONFIG`] if it exists, and applies the flags on top.
    pub fn load(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let (source, file) = match &args.config {
            Some(p) => (Some(p.clone()), read_file(p)?),
            None => {
                let p = Path::new(DEFAULT_CONFIG);
                match std::fs::read_to_string(p) {
                    Ok(text) => (Some(p.to_path_buf()), parse(&text, p)?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (None, FileConfig::default())
                    }
                    Err(e) => {
                        return Err(ConfigError::Read {
                            path: p.into(),
                            error: e.to_string(),
                        })
                    }
                }
            }
        };
        Ok(merge(source, file, args))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.into(),
        error: e.to_string(),
    })?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let cfg: FileConfig = toml::from_str(text).map_err(|e| {
        invalid(
            path,
            text,
            e.span(),
            e.message().trim_end().replace('\n', " "),
        )
    })?;
    // Checked here, not at use, so that the error can point at the value.
    if let Some(addr) = cfg.metrics_address.as_deref() {
        if addr != "off" && addr.parse::<SocketAddr>().is_err() {
            let span = value_span(text, "metrics_address");
            return Err(invalid(
                path,
                text,
                span,
                format!(
                    "metrics_address {addr:?} is not an address with a port, \
                     e.g. \"127.0.0.1:9469\" or \"[::1]:9469\" (\"off\" switches metrics off)"
                ),
            ));
        }
    }
    Ok(cfg)
}

/// The span of `key`'s value in a top-level table, for errors found after
/// deserialising.
fn value_span(text: &str, key: &str) -> Option<Range<usize>> {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    doc.get(key)?.span()
}

fn invalid(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
    let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
    ConfigError::Invalid {
        file: path.display().to_string(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn merge(source: Option<PathBuf>, f: FileConfig, a: &DaemonArgs) -> Config {
    let resync = a.resync_interval.or(f.resync_interval);
    Config {
        source,
        policy: a
            .policy
            .clone()
            .or(f.policy)
            .unwrap_or_else(|| DEFAULT_POLICY.into()),
        pin_dir: a
            .pin_dir
            .clone()
            .or(f.pin_dir)
            .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        state_dir: a
            .state_dir
            .clone()
            .or(f.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        socket: f.socket,
        socket_group: f.socket_group,
        metrics_address: f.metrics_address,
        log_format: a.log_format.or(f.log_format).unwrap_or_default(),
        resync_interval: match resync {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => Some(DEFAULT_RESYNC),
        },
        // A flag can only switch these on (or the watcher off).
        allow_non_ip: a.allow_non_ip || f.allow_non_ip.unwrap_or(false),
        watch_policy: !a.no_watch_policy && f.watch_policy.unwrap_or(true),
        allow_insecure_policy_permissions: a.allow_insecure_policy_permissions
            || f.allow_insecure_policy_permissions.unwrap_or(false),
        docker_exec_root: a
            .docker_exec_root
            .clone()
            .or(f.docker_exec_root)
            .unwrap_or_else(|| crate::host::overlay::DEFAULT_EXEC_ROOT.into()),
        cross_veth_mark: a
            .cross_veth_mark
            .or(f.cross_veth_mark)
            .unwrap_or(netiso_common::DEFAULT_CROSS_VETH_MARK),
        swarm_policy_service: a
            .swarm_policy_service
            .clone()
            .or(f.swarm_policy_service)
            .filter(|s| !s.is_empty()),
        swarm_data_path_port: a
            .swarm_data_path_port
            .or(f.swarm_data_path_port)
            .unwrap_or(crate::daemon::reconcile::VXLAN_PORT),
    }
}

/// `--cross-veth-mark`: `off`, or a 32-bit mark in hex (`0x…`) or decimal.
fn parse_mark(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t == "off" {
        return Ok(0);
    }
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| {
        format!("{s:?} is not a 32-bit mark: write it as 0x1e000000, 503316480 or off")
    })
}

/// The configuration file `cargo xtask install` and the .deb put in
/// /etc/netiso: every key, commented out, at its default.
pub const EXAMPLE: &str = include_str!("../../../packaging/netiso.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ConfigError {
        parse(text, Path::new("/etc/netiso/netiso.toml")).unwrap_err()
    }

    #[test]
    fn defaults_without_file_or_flags() {
        let c = merge(None, FileConfig::default(), &DaemonArgs::default());
        assert_eq!(c.policy, Path::new(DEFAULT_POLICY));
        assert_eq!(c.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.socket, None);
        assert_eq!(c.resync_interval, Some(Duration::from_secs(60)));
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.metrics_address, None);
        assert!(c.watch_policy && !c.allow_non_ip);
    }

    #[test]
    fn file_values_and_flags_override_them() {
        let text = r#"
policy = "/srv/policies"
pin_dir = "/sys/fs/bpf/other"
state_dir = "/run/other"
socket = "/run/other/s.sock"
socket_group = "netiso"
metrics_address = "127.0.0.1:9617"
log_format = "json"
resync_interval = 5
allow_non_ip = true
drop_non_ip = true
watch_policy = false
"#;
        let f = parse(text, Path::new("x.toml")).unwrap();
        let c = merge(Some("x.toml".into()), f, &DaemonArgs::default());
        assert_eq!(c.policy, Path::new("/srv/policies"));
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/other"));
        assert_eq!(c.socket_group.as_deref(), Some("netiso"));
        assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9617"));
        assert_eq!(c.socket.as_deref(), Some(Path::new("/run/other/s.sock")));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.resync_interval, Some(Duration::from_secs(5)));
        assert!(c.allow_non_ip && !c.watch_policy);

        let f = parse(text, Path::new("x.toml")).unwrap();
        let flags = DaemonArgs {
            policy: Some("/cli/p.toml".into()),
            log_format: Some(LogFormat::Human),
            resync_interval: Some(0),
            ..DaemonArgs::default()
        };
        let c = merge(None, f, &flags);
        assert_eq!(c.policy, Path::new("/cli/p.toml"));
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.resync_interval, None, "0 switches the resync off");
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/other"), "file value kept");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse_err("policy = \"/p\"\nresync_intervall = 5\n");
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/netiso/netiso.toml:2:1: unknown field `resync_intervall`"),
            "{msg}"
        );
        assert!(
            msg.contains("resync_interval"),
            "lists the known keys: {msg}"
        );

        let msg = parse_err("log_format = \"xml\"\n").to_string();
        assert!(msg.starts_with("/etc/netiso/netiso.toml:1:14: "), "{msg}");
        assert!(msg.contains("human") && msg.contains("json"), "{msg}");

        let msg = parse_err("drop_non_ip = true\nresync_interval = \"soon\"\n").to_string();
        assert!(msg.starts_with("/etc/netiso/netiso.toml:2:19: "), "{msg}");

        let msg = parse_err("metrics_address = \"localhost\"\n").to_string();
        assert!(msg.starts_with("/etc/netiso/netiso.toml:1:19: "), "{msg}");
        assert!(msg.contains("127.0.0.1:9469"), "{msg}");

        let msg = parse_err("policy = [\n").to_string();
        assert!(msg.starts_with("/etc/netiso/netiso.toml:"), "{msg}");
    }

    #[test]
    fn metrics_can_be_switched_off() {
        let f = parse("metrics_address = \"off\"\n", Path::new("x")).unwrap();
        assert_eq!(f.metrics_address.as_deref(), Some("off"));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let args = DaemonArgs {
            config: Some("/nonexistent/netiso.toml".into()),
            ..DaemonArgs::default()
        };
        let e = Config::load(&args).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the configuration file /nonexistent/netiso.toml"),
            "{e}"
        );
    }

    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let f = parse(EXAMPLE, Path::new("packaging/netiso.toml")).unwrap();
        let mut c = merge(None, f, &DaemonArgs::default());
        // The services' defaults, spelled out in the example.
        assert_eq!(
            c.socket.take().as_deref(),
            Some(Path::new("/run/netiso/netiso.sock"))
        );
        assert_eq!(c.metrics_address.take().as_deref(), Some("127.0.0.1:9469"));
        assert_eq!(
            c,
            merge(None, FileConfig::default(), &DaemonArgs::default())
        );
    }

    #[test]
    fn the_data_path_port_comes_from_the_flag_the_file_or_the_default() {
        let none = merge(None, FileConfig::default(), &DaemonArgs::default());
        assert_eq!(none.swarm_data_path_port, 4789);
        let f = parse("swarm_data_path_port = 7789\n", Path::new("n.toml")).unwrap();
        assert_eq!(
            merge(None, f, &DaemonArgs::default()).swarm_data_path_port,
            7789
        );
        let f = parse("swarm_data_path_port = 7789\n", Path::new("n.toml")).unwrap();
        let args = DaemonArgs {
            swarm_data_path_port: Some(5789),
            ..DaemonArgs::default()
        };
        assert_eq!(merge(None, f, &args).swarm_data_path_port, 5789);
    }

    #[test]
    fn the_cross_veth_mark_comes_from_the_flag_the_file_or_the_default() {
        let none = merge(None, FileConfig::default(), &DaemonArgs::default());
        assert_eq!(none.cross_veth_mark, netiso_common::DEFAULT_CROSS_VETH_MARK);
        let f = parse("cross_veth_mark = 0x100\n", Path::new("n.toml")).unwrap();
        assert_eq!(
            merge(None, f, &DaemonArgs::default()).cross_veth_mark,
            0x100
        );
        let f = parse("cross_veth_mark = 0\n", Path::new("n.toml")).unwrap();
        let args = DaemonArgs {
            cross_veth_mark: Some(parse_mark("0x2000").unwrap()),
            ..DaemonArgs::default()
        };
        assert_eq!(merge(None, f, &args).cross_veth_mark, 0x2000);
        assert_eq!(parse_mark("off"), Ok(0));
        assert_eq!(parse_mark("503316480"), Ok(0x1e00_0000));
        let e = parse_mark("0x1_0000_0000").unwrap_err();
        assert!(e.contains("not a 32-bit mark"), "{e}");
        assert!(matches!(
            parse_err("cross_veth_mark = -1\n"),
            ConfigError::Invalid { line: 1, .. }
        ));
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1", 2), (1, 2));
        assert_eq!(line_col("é = 1", 3), (1, 3));
    }
}
