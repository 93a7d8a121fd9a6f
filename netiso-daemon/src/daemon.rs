//! `netiso daemon`: follow Docker, compile the policy against the running
//! containers and keep the datapath in step.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt as _;
use netiso_common::{identity, IdentityInfo, IpKey, PublishedKey, PublishedValue};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::datapath::{Datapath, Desired, EndpointSpec};
use crate::docker::{DockerClient, DockerEvent};
use crate::model::Container;
use crate::policy::{self, Compiled, IdentityAllocator, Policy};
use crate::sd_notify::notify_logged;
use crate::state::{EndpointState, ReloadStatus, RuleState, State, Unenforceable};

#[derive(Clone, Debug)]
pub struct Options {
    pub policy: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Let ethertypes other than IPv4, IPv6 and ARP pass managed endpoints.
    pub allow_non_ip: bool,
    /// Control socket, metrics, events.
    pub services: crate::services::ServiceOptions,
    /// Full resync with Docker this often (repairs drift); `None`: never.
    pub resync_interval: Option<Duration>,
    /// Reload the policy when its file changes.
    pub watch_policy: bool,
}

/// Requests to the running daemon from its other tasks (control socket,
/// policy file watcher, timers).
#[derive(Debug)]
pub enum Control {
    /// Reload the policy; the reply says whether it was applied.
    Reload {
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// List every container again and reconcile.
    Resync,
    /// The policy file changed on disk (from `policy_watch`): reload.
    PolicyFileChanged,
    /// Kernel debug logging on or off.
    DebugLog {
        on: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Events per second per CPU sent to user space.
    EventRate {
        per_second: u32,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What services running beside the daemon loop get: a way to ask it for
/// things, and the state it publishes after every reconcile.
#[derive(Clone, Debug)]
pub struct Handles {
    pub control: mpsc::Sender<Control>,
    pub state: watch::Receiver<Arc<State>>,
}

struct Daemon {
    opts: Options,
    state_tx: watch::Sender<Arc<State>>,
    policy: Policy,
    ids: IdentityAllocator,
    dp: Datapath,
    /// Running containers by id, with their host-side veths resolved.
    containers: BTreeMap<String, Container>,
    /// The host's own addresses (the `host` peer), read at each resync.
    host_addrs: Vec<IpAddr>,
    /// Docker network name -> driver, to explain attachments without a veth.
    drivers: BTreeMap<String, String>,
    /// Docker network name -> its bridge device (bridge networks).
    bridges: BTreeMap<String, String>,
    /// Veths of fail-closed networks held closed until classified.
    holds: crate::fail_closed::Holds,
    /// Containers whose veth should exist but was not found yet (Docker
    /// reports some attachments a moment before the veth is in place), with
    /// the number of lookups left.
    pending: BTreeMap<String, u32>,
    /// Unenforceable (container, network, reason) already logged.
    reported: BTreeSet<(String, String, String)>,
    last_reload: Option<ReloadStatus>,
    last_resync: u64,
}

/// Lookups of a missing veth before leaving it to the periodic resync.
const VETH_RETRIES: u32 = 20;
const VETH_RETRY_EVERY: Duration = Duration::from_millis(250);

/// Loads and renders a policy for logs and errors.
fn load_policy(path: &std::path::Path) -> Result<Policy> {
    // A policy a non-root user could change is refused (or only warned
    // about, when the configuration allows it).
    for p in crate::policy_perms::check(path)? {
        warn!("insecure policy permissions (allowed by configuration): {p}");
    }
    let policy = policy::load_path(path).map_err(|e| anyhow!("{e}"))?;
    for w in &policy.warnings {
        warn!("{}", policy::render(std::slice::from_ref(w)).trim_end());
    }
    Ok(policy)
}

pub async fn run(opts: Options) -> Result<()> {
    crate::datapath::require_root("netiso daemon")?;
    let policy = load_policy(&opts.policy)
        .with_context(|| format!("the policy {} is not valid", opts.policy.display()))?;
    let mut dp = Datapath::load(&opts.pin_dir)?;
    dp.set_allow_non_ip(opts.allow_non_ip)?;
    if opts.allow_non_ip {
        warn!("allow_non_ip is on: frames other than IPv4, IPv6 and ARP cross every policy");
    }
    info!(pin_dir = %opts.pin_dir.display(), policy = %opts.policy.display(), "netiso starting");
    // Identity numbers live on in pinned maps (flow rows, conntrack):
    // keep giving each group set the number an earlier run gave it.
    let mut ids = IdentityAllocator::default();
    match State::read(&opts.state_dir) {
        Ok(old) => {
            for (id, groups) in old.identities {
                ids.restore(id, groups);
            }
        }
        Err(e) => warn!(error = format!("{e:#}"), "ignoring the previous state file"),
    }
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    // New links (fail-closed networks); dropped announcements are caught
    // up by the scan at each resync.
    let (link_tx, mut link_rx) = mpsc::channel(256);
    if let Err(e) = crate::link_watch::spawn(link_tx) {
        warn!(
            error = format!("{e:#}"),
            "not watching new links; fail-closed holds start at resyncs only"
        );
    }
    if opts.watch_policy {
        crate::policy_watch::spawn(opts.policy.clone(), control_tx.clone());
    }
    let (state_tx, state_rx) = watch::channel(Arc::new(State::default()));
    crate::services::spawn(
        &opts,
        Handles {
            control: control_tx,
            state: state_rx,
        },
    )?;
    // Start-up's privileged work is done (programs loaded, pins made,
    // control socket bound): keep only what the running daemon needs.
    if let Err(e) = crate::privileges::drop_after_start() {
        warn!(error = %e, "cannot drop capabilities; running with those it started with");
    }
    let mut d = Daemon {
        opts,
        state_tx,
        policy,
        ids,
        dp,
        containers: BTreeMap::new(),
        host_addrs: Vec::new(),
        drivers: BTreeMap::new(),
        bridges: BTreeMap::new(),
        holds: Default::default(),
        pending: BTreeMap::new(),
        reported: BTreeSet::new(),
        last_reload: None,
        last_resync: 0,
    };
    d.last_reload = Some(ReloadStatus {
        time: unix_now() as u64,
        trigger: "start".into(),
        ok: true,
        error: None,
        generation: d.dp.settings().generation,
    });
    let mut ready = false;

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut synced = false;
        let session = async {
            let docker = DockerClient::connect().await?;
            // Subscribe from just before the listing so that nothing that
            // happens while we list is missed.
            let since = unix_now() - 1;
            let mut events = docker.events(Some(since));
            d.resync(&docker).await?;
            synced = true;
            crate::telemetry::global().engine_connected(docker.version().await.ok());
            let status = format!("STATUS=enforcing; {} containers", d.containers.len());
            if !ready {
                ready = true;
                notify_logged(&format!("READY=1\n{status}"));
            } else {
                notify_logged(&status);
            }
            // Periodic full resync: catches events the engine never sent and
            // repairs maps or links changed behind our back.
            let every = d
                .opts
                .resync_interval
                .unwrap_or(Duration::from_secs(86_400));
            let mut resync_tick =
                tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut retry_tick = tokio::time::interval(VETH_RETRY_EVERY);
            retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            let mut batch = vec![ev];
                            // Take whatever else is ready, then reconcile once.
                            while let Some(Some(Ok(more))) = futures_util::FutureExt::now_or_never(events.next()) {
                                batch.push(more);
                            }
                            // Links announced before these events first: a new
                            // veth of a fail-closed network is held before its
                            // container can be classified.
                            let mut held = false;
                            while let Ok(l) = link_rx.try_recv() {
                                held |= d.on_link(&l);
                            }
                            if held {
                                d.reconcile_logged();
                            }
                            for ev in batch {
                                d.handle(&docker, ev).await;
                            }
                            d.reconcile_logged();
                        }
                        Some(Err(e)) => return Err(e.context("Docker event stream failed")),
                        None => return Err(anyhow!("Docker closed the event stream")),
                    },
                    _ = hup.recv() => {
                        let _ = d.reload("sighup");
                    }
                    _ = resync_tick.tick(), if d.opts.resync_interval.is_some() => {
                        debug!("periodic resync");
                        d.dp.forget_applied();
                        d.resync(&docker).await?;
                    }
                    Some(ev) = link_rx.recv() => {
                        if d.on_link(&ev) {
                            d.reconcile_logged();
                        }
                    }
                    _ = retry_tick.tick(), if !d.pending.is_empty() => {
                        d.retry_pending(&docker).await;
                    }
                    Some(cmd) = control_rx.recv() => match cmd {
                        Control::PolicyFileChanged => {
                            let _ = d.reload("file-change");
                        }
                        Control::Reload { reply } => {
                            let r = d.reload("control");
                            if let Some(reply) = reply {
                                let _ = reply.send(r);
                            }
                        }
                        Control::Resync => d.resync(&docker).await?,
                        Control::DebugLog { on, reply } => {
                            let _ = reply.send(d.dp.set_debug_log(on).map_err(|e| format!("{e:#}")));
                        }
                        Control::EventRate { per_second, reply } => {
                            let _ = reply.send(d.dp.set_event_rate(per_second).map_err(|e| format!("{e:#}")));
                        }
                    },
                    _ = term.recv() => return Ok::<bool, anyhow::Error>(true),
                    _ = int.recv() => return Ok(true),
                }
            }
        };
        match session.await {
            Ok(_) => {
                notify_logged("STOPPING=1");
                info!("stopping; the pinned programs keep enforcing the last policy");
                return Ok(());
            }
            Err(e) => {
                if synced {
                    // It worked for a while: try again soon.
                    backoff = FIRST_BACKOFF;
                }
                notify_logged("STATUS=lost Docker; the last state stays enforced; reconnecting");
                crate::telemetry::global().engine_lost(format!("{e:#}"));
                warn!(error = format!("{e:#}"), retry_in = ?backoff, "lost Docker, will resync");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Resolves host-side veths off the async runtime (it enters namespaces).
async fn with_veths(mut c: Container) -> Container {
    let name = c.name.clone();
    match tokio::task::spawn_blocking(move || {
        let r = crate::netlink::resolve_host_veths(&mut c);
        (c, r)
    })
    .await
    {
        Ok((c, Ok(()))) => c,
        Ok((c, Err(e))) => {
            warn!(container = %name, error = format!("{e:#}"), "cannot resolve the host-side veth");
            c
        }
        Err(e) => panic!("veth resolver panicked: {e}"),
    }
}

impl Daemon {
    async fn resync(&mut self, docker: &DockerClient) -> Result<()> {
        let span = info_span!("resync");
        async {
            // Networks only explain and hold; failing to list them must not
            // stop the containers from being enforced.
            match docker.networks().await {
                Ok(n) => self.set_networks(n),
                Err(e) => warn!(error = format!("{e:#}"), "listing networks failed"),
            }
            let listed = docker.running_containers().await?;
            let mut containers = BTreeMap::new();
            self.pending.clear();
            for c in listed {
                let c = with_veths(c).await;
                self.track_missing_veth(&c);
                containers.insert(c.id.clone(), c);
            }
            info!(containers = containers.len(), "listed running containers");
            self.containers = containers;
            self.last_resync = unix_now() as u64;
            self.scan_holds();
            match crate::netlink::host_addresses() {
                Ok(addrs) => self.host_addrs = addrs,
                Err(e) => warn!(error = format!("{e:#}"), "cannot read the host's addresses"),
            }
            self.reconcile()
        }
        .instrument(span)
        .await
    }

    async fn handle(&mut self, docker: &DockerClient, ev: DockerEvent) {
        debug!(?ev, "docker event");
        let id = match &ev {
            DockerEvent::ContainerStarted { id }
            | DockerEvent::ContainerRenamed { id }
            | DockerEvent::NetworkConnected {
                container_id: id, ..
            }
            | DockerEvent::NetworkDisconnected {
                container_id: id, ..
            } => id.clone(),
            DockerEvent::ContainerStopped { id } | DockerEvent::ContainerRemoved { id } => {
                self.containers.remove(id);
                self.pending.remove(id);
                return;
            }
            DockerEvent::NetworkCreated { name } => {
                match docker.networks().await {
                    Ok(n) => self.set_networks(n),
                    Err(e) => {
                        warn!(network = %name, error = format!("{e:#}"), "listing networks failed")
                    }
                }
                return;
            }
            DockerEvent::NetworkRemoved { name } => {
                // Its containers were disconnected first (their own events).
                self.drivers.remove(name);
                self.bridges.remove(name);
                return;
            }
        };
        self.refresh(docker, &id).await;
    }

    fn set_networks(&mut self, nets: Vec<crate::docker::NetworkInfo>) {
        self.drivers = nets
            .iter()
            .map(|n| (n.name.clone(), n.driver.clone()))
            .collect();
        self.bridges = nets
            .into_iter()
            .filter_map(|n| Some((n.name, n.bridge?)))
            .collect();
    }

    fn fail_closed_bridges(&self) -> BTreeMap<String, String> {
        crate::fail_closed::bridges(&self.policy.fail_closed_networks(), &self.bridges)
    }

    fn claimed_veths(&self) -> BTreeSet<u32> {
        self.containers
            .values()
            .flat_map(|c| c.networks.iter().filter_map(|a| a.host_ifindex))
            .collect()
    }

    /// A link was announced; true when a hold began or ended.
    fn on_link(&mut self, ev: &crate::link_watch::LinkEvent) -> bool {
        if ev.addresses {
            return self.refresh_host_addresses();
        }
        let fc = self.fail_closed_bridges();
        if fc.is_empty() && self.holds.is_empty() {
            return false;
        }
        let claimed = self.claimed_veths();
        self.holds.on_link(ev, &fc, &claimed)
    }

    /// Reads the host's addresses again; true when they changed (the
    /// `host` peer must follow at once, not at the next resync).
    fn refresh_host_addresses(&mut self) -> bool {
        match crate::netlink::host_addresses() {
            Ok(addrs) if addrs != self.host_addrs => {
                info!(addresses = addrs.len(), "host addresses changed");
                self.host_addrs = addrs;
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = format!("{e:#}"), "cannot read the host's addresses");
                false
            }
        }
    }

    /// Holds what the announcements missed (called at each resync).
    fn scan_holds(&mut self) {
        let fc = self.fail_closed_bridges();
        if fc.is_empty() && self.holds.is_empty() {
            return;
        }
        let claimed = self.claimed_veths();
        if let Err(e) = self.holds.scan(&fc, &claimed) {
            warn!(
                error = format!("{e:#}"),
                "cannot list links for fail-closed holds"
            );
        }
    }

    /// Inspects one container again and records what it looks like now.
    async fn refresh(&mut self, docker: &DockerClient, id: &str) {
        match docker.inspect(id).await {
            Ok(Some(c)) => {
                let c = with_veths(c).await;
                self.pending.remove(id);
                self.track_missing_veth(&c);
                self.containers.insert(c.id.clone(), c);
            }
            Ok(None) => {
                self.containers.remove(id);
                self.pending.remove(id);
            }
            Err(e) => warn!(container = %id, error = format!("{e:#}"), "inspect failed"),
        }
    }

    /// Remembers `c` for another look shortly when one of its attachments
    /// should have a veth (bridge-like driver, a MAC, own namespace) that
    /// was not found.
    fn track_missing_veth(&mut self, c: &Container) {
        let missing = has_own_netns(&c.network_mode)
            && c.networks.iter().any(|a| {
                a.mac.is_some()
                    && a.host_ifindex.is_none()
                    && !no_veth_driver(self.drivers.get(&a.network).map(String::as_str))
            });
        if missing {
            self.pending.entry(c.id.clone()).or_insert(VETH_RETRIES);
        }
    }

    /// Looks again at containers whose veth was missing; reconciles if any
    /// was found.
    async fn retry_pending(&mut self, docker: &DockerClient) {
        let ids: Vec<(String, u32)> = std::mem::take(&mut self.pending).into_iter().collect();
        let mut changed = false;
        for (id, left) in ids {
            let before = self.containers.get(&id).cloned();
            self.refresh(docker, &id).await;
            changed |= self.containers.get(&id) != before.as_ref();
            match self.pending.get_mut(&id) {
                Some(n) if left > 1 => *n = left - 1,
                Some(_) => {
                    debug!(container = %id, "veth still missing; the periodic resync will look again");
                    self.pending.remove(&id);
                }
                None => {}
            }
        }
        if changed {
            self.reconcile_logged();
        }
    }

    /// Loads the policy file again and applies it; on any error the running
    /// policy stays and the error is returned (and logged). The outcome is
    /// published in the state (`last_reload`); `trigger` says what asked.
    fn reload(&mut self, trigger: &str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let r = self.reload_once();
        crate::telemetry::global().reloaded(started.elapsed(), r.clone().err());
        let generation = self.dp.settings().generation;
        info!(trigger, ok = r.is_ok(), generation, "reload finished");
        self.last_reload = Some(ReloadStatus {
            time: unix_now() as u64,
            trigger: trigger.into(),
            ok: r.is_ok(),
            error: r.as_ref().err().cloned(),
            generation,
        });
        self.publish_reload();
        r
    }

    /// Rewrites the published state with the current `last_reload`.
    fn publish_reload(&mut self) {
        let mut state = (**self.state_tx.borrow()).clone();
        state.last_reload = self.last_reload.clone();
        if let Err(e) = state.write(&self.opts.state_dir) {
            error!(error = format!("{e:#}"), "cannot write the state file");
        }
        self.state_tx.send_replace(Arc::new(state));
    }

    fn reload_once(&mut self) -> Result<(), String> {
        let _span = info_span!("reload").entered();
        match load_policy(&self.opts.policy) {
            Ok(p) => {
                let old = std::mem::replace(&mut self.policy, p);
                if let Err(e) = self.reconcile() {
                    let msg = format!("{e:#}");
                    error!(error = %msg, "new policy could not be applied; keeping the old one");
                    self.policy = old;
                    self.reconcile_logged();
                    Err(msg)
                } else {
                    info!("policy reloaded");
                    Ok(())
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                error!("policy rejected, the running policy stays:\n{msg}");
                Err(msg)
            }
        }
    }

    fn reconcile_logged(&mut self) {
        if let Err(e) = self.reconcile() {
            error!(error = format!("{e:#}"), "reconcile failed");
        }
    }

    fn reconcile(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.reconcile_once();
        let error = r.as_ref().err().map(|e| format!("{e:#}"));
        crate::telemetry::global().reconciled(started.elapsed(), error);
        r
    }

    fn reconcile_once(&mut self) -> Result<()> {
        let _span = info_span!("reconcile", containers = self.containers.len()).entered();
        let containers: Vec<Container> = self.containers.values().cloned().collect();
        let compiled = policy::compile(&self.policy, &containers, &mut self.ids)
            .map_err(|e| anyhow!("{e}"))?;
        let (mut desired, mut state) =
            build_desired(&compiled, &containers, &self.policy, &self.drivers);
        self.report_unenforceable(&state.unenforceable);
        self.holds.apply(
            &mut desired,
            &crate::fail_closed::claimed(&containers),
            &self.policy.fail_closed_networks(),
        );
        state.held = self.holds.state();
        match self.dp.endpoint_capacity() {
            Ok(capacity) => fit_endpoints(
                &mut desired,
                &mut state,
                capacity as usize,
                &self.dp.applied_endpoints(),
            ),
            Err(e) => warn!(
                error = format!("{e:#}"),
                "cannot read the endpoints map's size"
            ),
        }
        add_host_addresses(&mut desired, &self.host_addrs);
        // Name every identity ever given out, not only those in use, so
        // that older flow rows still read right.
        for (id, groups) in self.ids.iter() {
            state
                .identities
                .entry(id)
                .or_insert_with(|| groups.to_vec());
        }
        let report = self.dp.apply(&desired)?;
        info!(
            endpoints = desired.endpoints.len(),
            generation = report.generation,
            switched = report.switched,
            attached = report.attached,
            detached = report.detached,
            "datapath in step"
        );
        state.policy_path = self.opts.policy.clone();
        state.generation = report.generation;
        state.updated = unix_now() as u64;
        state.pid = std::process::id();
        // Start-up's "reload" is complete with the first apply.
        if let Some(r) = self.last_reload.as_mut().filter(|r| r.trigger == "start") {
            r.generation = report.generation;
        }
        state.last_resync = self.last_resync;
        state.last_reload = self.last_reload.clone();
        state.write(&self.opts.state_dir)?;
        self.state_tx.send_replace(Arc::new(state));
        Ok(())
    }

    /// Logs each unenforceable container once (and again only after it went
    /// away and came back); the state file lists them all the time.
    fn report_unenforceable(&mut self, now: &[Unenforceable]) {
        let keys: BTreeSet<(String, String, String)> = now
            .iter()
            .map(|u| (u.container.clone(), u.network.clone(), u.reason.clone()))
            .collect();
        for (container, network, reason) in keys.difference(&self.reported) {
            warn!(%container, %network, %reason, "container cannot be enforced");
        }
        self.reported = keys;
    }
}

/// Whether a Docker network mode gives the container a network namespace of
/// its own (and so, on a bridge-like network, a veth).
fn has_own_netns(network_mode: &str) -> bool {
    !(network_mode == "host" || network_mode == "none" || network_mode.starts_with("container:"))
}

/// Drivers whose attachments never have a host-side veth.
fn no_veth_driver(driver: Option<&str>) -> bool {
    matches!(driver, Some("macvlan" | "ipvlan" | "host" | "null"))
}

/// Why an attachment of a container in some group has no veth to enforce
/// at, in words an operator can act on.
pub fn unenforceable_reason(c: &Container, network: &str, driver: Option<&str>) -> String {
    let mode = c.network_mode.as_str();
    if mode == "host" {
        return "runs with --network host: it shares the host's network stack, there is no \
                veth of its own; its traffic is judged as the host's"
            .into();
    }
    if mode == "none" {
        return "runs with --network none: no interface but loopback, nothing to enforce \
                (and no way in or out)"
            .into();
    }
    if let Some(other) = mode.strip_prefix("container:") {
        return format!(
            "runs with --network container:{other}: it shares that container's interfaces, \
             which are enforced with that container's groups"
        );
    }
    match driver {
        Some(d @ ("macvlan" | "ipvlan")) => format!(
            "network {network:?} uses the {d} driver: its traffic leaves through the parent \
             interface without a veth, so netiso cannot attach to it"
        ),
        Some(d) if d != "bridge" => format!(
            "network {network:?} uses the {d} driver, which gives the container no host-side veth"
        ),
        _ => format!(
            "no host-side veth found on network {network:?} yet (container starting or \
             stopping?); looked up again shortly and at every resync"
        ),
    }
}

/// Keeps the endpoints that fit the endpoints map when there are more than
/// it holds, loudly: held (fail-closed) endpoints first, so that they stay
/// closed; then those already in the map, so that nothing enforced now
/// stops being enforced; then containers in groups; then the rest. Those
/// left out are reported as unenforceable with the reason.
pub fn fit_endpoints(d: &mut Desired, state: &mut State, capacity: usize, applied: &BTreeSet<u32>) {
    if d.endpoints.len() <= capacity {
        return;
    }
    let rank = |ifindex: &u32, spec: &crate::datapath::EndpointSpec| {
        if spec.flags & netiso_common::endpoint_flags::FAIL_CLOSED != 0 {
            0
        } else if applied.contains(ifindex) {
            1
        } else if spec.identity >= identity::FIRST_GROUP_IDENTITY || spec.flags != 0 {
            2
        } else {
            3
        }
    };
    let mut order: Vec<(u8, u32)> = d.endpoints.iter().map(|(i, s)| (rank(i, s), *i)).collect();
    order.sort();
    let total = order.len();
    for (_, ifindex) in order.into_iter().skip(capacity) {
        d.endpoints.remove(&ifindex);
        for e in state
            .endpoints
            .iter_mut()
            .filter(|e| e.ifindex == Some(ifindex))
        {
            e.enforced = false;
            state.unenforceable.push(Unenforceable {
                container: e.container.clone(),
                network: e.network.clone(),
                reason: format!(
                    "the endpoints map is full ({total} container veths, room for \
                     {capacity}): this one is not enforced"
                ),
            });
        }
    }
    error!(
        endpoints = total,
        capacity,
        "the endpoints map is full: {} container veths are not enforced",
        total - capacity
    );
}

/// Gives the host's own addresses the `host` identity (container
/// addresses, should one coincide, keep theirs).
pub fn add_host_addresses(d: &mut Desired, addrs: &[IpAddr]) {
    for ip in addrs {
        d.identities
            .entry(IpKey::from_ip(*ip, 0))
            .or_insert(IdentityInfo {
                identity: identity::HOST,
                flags: 0,
            });
    }
}

/// Maps the compiled policy onto endpoints: every container address gets
/// its identity; every veth of a container in some group gets the programs.
pub fn build_desired(
    compiled: &Compiled,
    containers: &[Container],
    policy: &Policy,
    drivers: &BTreeMap<String, String>,
) -> (Desired, State) {
    let mut d = Desired {
        policy: compiled.entries.clone(),
        cidrs: compiled
            .cidrs
            .iter()
            .map(|e| {
                let info = IdentityInfo {
                    identity: e.identity,
                    flags: e.flags,
                };
                ((e.addr, e.prefix_len), info)
            })
            .collect(),
        ..Desired::default()
    };
    let mut state = State::default();
    for (id, def) in &compiled.identities {
        let names = match *id {
            identity::HOST => vec!["host".to_string()],
            identity::WORLD => vec!["world".to_string()],
            identity::UNMANAGED => vec!["unmanaged".to_string()],
            _ => def.groups.clone(),
        };
        state.identities.insert(*id, names);
    }
    for c in containers {
        let id = compiled
            .container_identity
            .get(&c.id)
            .copied()
            .unwrap_or(identity::UNMANAGED);
        let flags = compiled.identities.get(&id).map_or(0, |def| def.flags);
        // A container in no group is policed too when `[settings]
        // unmanaged` denies a direction (its identity then has flags).
        let managed = id >= identity::FIRST_GROUP_IDENTITY || flags != 0;
        // A port the host publishes for this container stands for it: a
        // container reaching it through the host (docker-proxy) is judged
        // as reaching this container on the container's port.
        for p in &c.published {
            let key = PublishedKey {
                port: p.host_port,
                proto: p.proto,
                slot: 0,
            };
            if let Some(other) = d.published.get(&key) {
                if other.identity != id {
                    warn!(
                        port = p.host_port,
                        container = %c.name,
                        "a host port is published for two containers; the last one listed wins"
                    );
                }
            }
            d.published.insert(
                key,
                PublishedValue {
                    identity: id,
                    flags,
                    port: p.container_port,
                    _pad: [0; 2],
                },
            );
        }
        let groups = policy.groups_of(c);
        // Host, none and container: modes have no veth of their own: one
        // entry for the container, not one per pseudo-network.
        let own_netns = has_own_netns(&c.network_mode);
        if managed && (!own_netns || c.networks.is_empty()) {
            state.unenforceable.push(Unenforceable {
                container: c.name.clone(),
                network: c.network_mode.clone(),
                reason: unenforceable_reason(c, &c.network_mode, None),
            });
        }
        for a in &c.networks {
            let ips = a
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(a.ipv6.map(IpAddr::V6));
            // The link-local address (EUI-64 of the MAC) speaks for the
            // container too: without it, a link-local sender would be "world".
            let link_local = a.mac.map(|m| IpAddr::V6(crate::datapath::link_local_of(m)));
            for ip in ips.chain(link_local) {
                d.identities.insert(
                    IpKey::from_ip(ip, 0),
                    IdentityInfo {
                        identity: id,
                        flags,
                    },
                );
            }
            let mut enforced = false;
            // Every container veth gets the programs: containers in no
            // group too, so that none can send from another's address or
            // send what netiso does not understand. Policy verdicts for
            // them stay those of the `unmanaged` identity.
            {
                match (a.host_ifindex, &a.host_ifname) {
                    (Some(ifindex), Some(ifname)) => {
                        d.endpoints.insert(
                            ifindex,
                            EndpointSpec {
                                ifname: ifname.clone(),
                                identity: id,
                                flags,
                                ipv4: a.ipv4,
                                ipv6: a.ipv6,
                                mac: a.mac,
                                ipv4_prefix_len: a.ipv4_prefix_len,
                            },
                        );
                        enforced = managed;
                    }
                    _ if !own_netns || !managed => {}
                    _ => state.unenforceable.push(Unenforceable {
                        container: c.name.clone(),
                        network: a.network.clone(),
                        reason: unenforceable_reason(
                            c,
                            &a.network,
                            drivers.get(&a.network).map(String::as_str),
                        ),
                    }),
                }
            }
            state.endpoints.push(EndpointState {
                container_id: c.id.clone(),
                container: c.name.clone(),
                groups: groups.clone(),
                identity: id,
                network: a.network.clone(),
                ifindex: a.host_ifindex,
                ifname: a.host_ifname.clone(),
                ip: a.ipv4.map(Into::into),
                enforced,
            });
        }
    }
    state.rules = compiled
        .rules
        .iter()
        .map(|r| RuleState {
            id: r.id,
            from: r.from.clone(),
            to: r.to.clone(),
            ports: r.ports.clone(),
            action: r.action.as_str().into(),
            description: r.description.clone(),
            location: r.location.clone(),
        })
        .collect();
    (d, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::EndpointSpec;
    use crate::state::EndpointState;

    /// Over capacity: held endpoints stay closed, enforced ones stay
    /// enforced, group members come before containers in no group, and
    /// every one left out is reported.
    #[test]
    fn a_full_endpoints_map_keeps_holds_and_enforced_endpoints_first() {
        let spec = |identity, flags| EndpointSpec {
            ifname: "v".into(),
            identity,
            flags,
            ..EndpointSpec::default()
        };
        let mut d = Desired::default();
        let held = netiso_common::endpoint_flags::FAIL_CLOSED;
        d.endpoints.insert(1, spec(identity::UNMANAGED, 0));
        d.endpoints.insert(2, spec(300, 0));
        d.endpoints.insert(3, spec(identity::UNMANAGED, held));
        d.endpoints.insert(4, spec(301, 0));
        d.endpoints.insert(5, spec(identity::UNMANAGED, 0));
        let mut state = State::default();
        for i in 1..=5u32 {
            state.endpoints.push(EndpointState {
                container: format!("c{i}"),
                ifindex: Some(i),
                enforced: true,
                ..EndpointState::default()
            });
        }
        let applied = BTreeSet::from([5]);
        fit_endpoints(&mut d, &mut state, 3, &applied);
        let kept: Vec<u32> = d.endpoints.keys().copied().collect();
        assert_eq!(kept, [2, 3, 5], "held 3, applied 5, then group member 2");
        let out: Vec<&str> = state
            .unenforceable
            .iter()
            .map(|u| u.container.as_str())
            .collect();
        assert_eq!(out, ["c4", "c1"]);
        assert!(state.unenforceable[0]
            .reason
            .contains("endpoints map is full"));
        assert!(!state.endpoints[0].enforced && state.endpoints[1].enforced);
        // Within capacity nothing changes.
        let before = d.clone();
        fit_endpoints(&mut d, &mut state, 8, &applied);
        assert_eq!(d, before);
    }
}
