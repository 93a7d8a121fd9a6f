//! What `netiso daemon` is started with: the loop's options and those of
//! the services beside it (flattened into the command line).
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    pub policy: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Let ethertypes other than IPv4, IPv6 and ARP pass managed endpoints.
    pub allow_non_ip: bool,
    /// The mark of cross-veth verdicts; 0: off.
    pub cross_veth_mark: u32,
    /// Control socket, metrics, events.
    pub services: ServiceOptions,
    /// Full resync with Docker this often (repairs drift); `None`: never.
    pub resync_interval: Option<Duration>,
    /// Reload the policy when its file changes.
    pub watch_policy: bool,
    /// The engine's exec-root (Swarm overlays' namespaces are under
    /// `<dir>/netns`).
    pub docker_exec_root: PathBuf,
    /// Take the policy from this global service's tasks (Swarm config).
    pub swarm_policy_service: Option<String>,
    /// The Swarm's overlay data path port (VXLAN): no container sends to
    /// it beyond the containers on a Swarm node.
    pub swarm_data_path_port: u16,
}

/// Daemon options of the services (flattened into `netiso daemon`).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Control socket path [default: <state-dir>/netiso.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group (name or number) whose members may use the control socket,
    /// besides root.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Address of the Prometheus metrics endpoint; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:9469")]
    pub metrics_addr: String,
    /// Drop and audit events sent to user space per second per CPU; more
    /// are counted as suppressed. 0 turns events off [default: 1000].
    #[arg(long)]
    pub event_rate: Option<u32>,
    /// Peers by name: an answer's addresses count at least this long,
    /// whatever its TTL [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub fqdn_min_ttl: Option<u64>,
    /// Peers by name: and this much longer than the TTL [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub fqdn_grace: Option<u64>,
    /// Peers by name: addresses one container may have learned at once;
    /// more are refused and counted [default: 1024].
    #[arg(long, value_name = "N")]
    pub fqdn_max_per_container: Option<usize>,
}

impl ServiceOptions {
    /// The name learner's settings, defaults filled in.
    pub fn fqdn(&self) -> crate::daemon::fqdn::FqdnOptions {
        let d = crate::daemon::fqdn::FqdnOptions::default();
        crate::daemon::fqdn::FqdnOptions {
            min_ttl: self.fqdn_min_ttl.map_or(d.min_ttl, Duration::from_secs),
            grace: self.fqdn_grace.map_or(d.grace, Duration::from_secs),
            per_container: self.fqdn_max_per_container.unwrap_or(d.per_container),
        }
    }
}
