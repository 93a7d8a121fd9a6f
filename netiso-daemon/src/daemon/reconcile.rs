//! The reconciler: the daemon's view of the running containers and the
//! policy, kept in step with the datapath through the seam of
//! [`ports`](super::ports) (resync, Docker events, link announcements,
//! veth retries, reload with rollback). Uses `observe`, `datapath`,
//! `host`, `policy` and `model`; the real host only through the seam.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::clock::unix_now;

use anyhow::{anyhow, Result};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::daemon::desired::{
    add_host_addresses, add_overlay_subnets, build_desired, fit_endpoints, has_own_netns,
    no_veth_driver,
};
use crate::daemon::options::Options;
use crate::daemon::ports::{Dataplane, Engine, HostLinks};
use crate::daemon::swarm_policy;
use crate::host::docker::{DockerEvent, NetworkInfo};
use crate::host::link_watch::LinkEvent;
use crate::host::overlay::OverlayInfo;
use crate::model::Container;
use crate::observe::learned::Recorder;
use crate::observe::state::{ReloadStatus, State, Unenforceable};
use crate::policy::{self, IdentityAllocator, Policy};

/// Lookups of a missing veth before leaving it to the periodic resync.
pub(super) const VETH_RETRIES: u32 = 20;
pub(super) const VETH_RETRY_EVERY: Duration = Duration::from_millis(250);
/// How often learn mode's table is drained into the record: the table
/// holds `limits::LEARN` distinct rows between two drains.
pub(super) const LEARN_DRAIN_EVERY: Duration = Duration::from_secs(2);
/// How often Swarm overlays' gossip is read again (remote tasks).
pub(super) const GOSSIP_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Daemon<D, L> {
    pub(super) opts: Options,
    state_tx: watch::Sender<Arc<State>>,
    policy: Policy,
    ids: IdentityAllocator,
    pub(super) dp: D,
    links: L,
    /// Running containers by id, with their host-side veths resolved.
    pub(super) containers: BTreeMap<String, Container>,
    /// The host's own addresses (the `host` peer), read at each resync.
    host_addrs: Vec<IpAddr>,
    /// Docker network name -> driver, to explain attachments without a veth.
    drivers: BTreeMap<String, String>,
    /// Docker network name -> its bridge device (bridge networks).
    bridges: BTreeMap<String, String>,
    /// The Swarm overlays among the networks.
    overlay_nets: Vec<NetworkInfo>,
    /// What the gossip says of them (subnets, endpoints on every node).
    overlays: Vec<OverlayInfo>,
    /// The UDP ports of the overlays' VXLAN links found on this node.
    vxlan_ports: BTreeSet<u16>,
    /// The engine said it is a Swarm node (at the last resync).
    swarm_member: bool,
    /// Veths of fail-closed networks held closed until classified.
    holds: crate::daemon::fail_closed::Holds,
    /// Containers whose veth should exist but was not found yet (Docker
    /// reports some attachments a moment before the veth is in place), with
    /// the number of lookups left.
    pub(super) pending: BTreeMap<String, u32>,
    /// Unenforceable (container, network, reason) already logged.
    reported: BTreeSet<(String, String, String)>,
    last_reload: Option<ReloadStatus>,
    last_resync: u64,
    /// Learn mode's record of new flows (`learned.json`).
    pub(super) learned: Recorder,
    /// The policy from Swarm, when a carrier service is configured.
    pub(super) swarm: Option<swarm_policy::Delivery>,
}

/// The UDP port of Swarm's overlay data path (VXLAN; Docker's default,
/// `docker swarm init --data-path-port` changes it: the daemon reads the
/// port of every overlay's VXLAN link too, and `swarm_data_path_port`
/// names one more). A VXLAN socket takes
/// a frame from any sender and puts its inner packet on the overlay, so
/// a container that reaches a node's port (its own node's, or another's
/// through its node's masquerading: from a swarm node) could claim any
/// task's address to any task. No container sends to it beyond the
/// containers on a Swarm node, whatever the policy says.
pub(crate) const VXLAN_PORT: u16 = 4789;

/// The policy file in force for `opts`: with a Swarm carrier service, the
/// policy Swarm delivered last (kept in the state directory) if there is
/// one; else the configured file.
pub(super) fn policy_path(opts: &Options) -> std::path::PathBuf {
    if opts.swarm_policy_service.is_some() {
        let delivered = swarm_policy::delivered_path(&opts.state_dir);
        if delivered.exists() {
            return delivered;
        }
    }
    opts.policy.clone()
}

/// Loads and renders a policy for logs and errors.
pub(super) fn load_policy(path: &std::path::Path) -> Result<Policy> {
    // A policy a non-root user could change is refused (or only warned
    // about, when the configuration allows it).
    for p in crate::daemon::policy_perms::check(path)? {
        warn!("insecure policy permissions (allowed by configuration): {p}");
    }
    let policy = policy::load_path(path).map_err(|e| anyhow!("{e}"))?;
    for w in &policy.warnings {
        warn!("{}", policy::render(std::slice::from_ref(w)).trim_end());
    }
    Ok(policy)
}

impl<D: Dataplane, L: HostLinks> Daemon<D, L> {
    /// A daemon that knows no container yet; start-up's "reload" is the
    /// policy it starts with.
    pub(super) fn new(
        opts: Options,
        state_tx: watch::Sender<Arc<State>>,
        policy: Policy,
        ids: IdentityAllocator,
        dp: D,
        links: L,
    ) -> Self {
        let generation = dp.generation();
        let learned = Recorder::open(&opts.state_dir);
        let swarm = opts.swarm_policy_service.clone().map(|service| {
            let applied = std::fs::read(swarm_policy::delivered_path(&opts.state_dir))
                .ok()
                .map(|b| swarm_policy::sha256_hex(&b));
            swarm_policy::Delivery::new(service, applied)
        });
        Daemon {
            swarm,
            opts,
            state_tx,
            policy,
            ids,
            dp,
            links,
            containers: BTreeMap::new(),
            host_addrs: Vec::new(),
            drivers: BTreeMap::new(),
            bridges: BTreeMap::new(),
            overlay_nets: Vec::new(),
            overlays: Vec::new(),
            vxlan_ports: BTreeSet::new(),
            swarm_member: false,
            holds: Default::default(),
            pending: BTreeMap::new(),
            reported: BTreeSet::new(),
            last_reload: Some(ReloadStatus {
                time: unix_now(),
                trigger: "start".into(),
                ok: true,
                error: None,
                generation,
            }),
            last_resync: 0,
            learned,
        }
    }

    /// Learn mode: takes the new flows the datapath noted, names them with
    /// the containers they were noted for, and saves the record.
    pub(super) fn drain_learned(&mut self) {
        let _span = info_span!("learn").entered();
        match self.dp.drain_learned() {
            Ok(rows) if !rows.is_empty() => {
                debug!(rows = rows.len(), "learned flows drained");
                self.learned.add(&rows);
            }
            Ok(_) => {}
            Err(e) => warn!(error = format!("{e:#}"), "cannot read the learn table"),
        }
        if let Err(e) = self.learned.save() {
            warn!(error = format!("{e:#}"), "cannot save the learn record");
        }
        self.learned.drained();
    }

    pub(super) async fn resync(&mut self, docker: &impl Engine) -> Result<()> {
        let span = info_span!("resync");
        async {
            // Networks only explain and hold; failing to list them must not
            // stop the containers from being enforced.
            match docker.networks().await {
                Ok(n) => self.set_networks(n),
                Err(e) => warn!(error = format!("{e:#}"), "listing networks failed"),
            }
            match docker.swarm_member().await {
                Ok(m) => self.swarm_member = m,
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "asking whether this is a Swarm node failed"
                ),
            }
            self.refresh_overlays(docker).await;
            let listed = docker.running_containers().await?;
            let mut containers = BTreeMap::new();
            self.pending.clear();
            for c in listed {
                let c = self.links.with_veths(c).await;
                self.track_missing_veth(&c);
                containers.insert(c.id.clone(), c);
            }
            info!(containers = containers.len(), "listed running containers");
            self.containers = containers;
            self.last_resync = unix_now();
            self.scan_holds();
            match self.links.host_addresses() {
                Ok(addrs) => self.host_addrs = addrs,
                Err(e) => warn!(error = format!("{e:#}"), "cannot read the host's addresses"),
            }
            let r = self.reconcile();
            self.take_swarm_policy();
            r
        }
        .instrument(span)
        .await
    }

    /// One batch of Docker events, with the link announcements received
    /// before it: the links first (a new veth of a fail-closed network is
    /// held before its container can be classified), then the events, then
    /// one reconcile.
    pub(super) async fn on_docker_events(
        &mut self,
        docker: &impl Engine,
        links: impl IntoIterator<Item = LinkEvent>,
        batch: Vec<DockerEvent>,
    ) {
        let mut held = false;
        for l in links {
            held |= self.on_link(&l);
        }
        if held {
            self.reconcile_logged();
        }
        for ev in batch {
            self.handle(docker, ev).await;
        }
        self.reconcile_logged();
        self.take_swarm_policy();
    }

    async fn handle(&mut self, docker: &impl Engine, ev: DockerEvent) {
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
                        warn!(network = %name, error = format!("{e:#}"), "listing networks failed");
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

    /// Whether this node is in a Swarm (the engine says so, or it has
    /// overlays, or the bridge Swarm makes on every node): then no
    /// container may send to a VXLAN port beyond the containers (see
    /// [`VXLAN_PORT`]), even on a node with no overlay of its own (its
    /// address is a node's to the others).
    fn in_swarm(&self) -> bool {
        self.swarm_member
            || self.has_overlays()
            || self.drivers.contains_key(crate::host::docker::GWBRIDGE)
    }

    /// Whether any Swarm overlay is known (then its gossip is polled).
    pub(super) fn has_overlays(&self) -> bool {
        !self.overlay_nets.is_empty()
    }

    /// The data path's UDP ports no container may send to beyond the
    /// containers on a Swarm node: the configured one (4789 unless told)
    /// and every port an overlay's VXLAN link has here.
    fn data_path_ports(&self) -> BTreeSet<u16> {
        let mut ports = self.vxlan_ports.clone();
        ports.insert(self.opts.swarm_data_path_port);
        ports
    }

    /// Reads the overlays' gossip and their VXLAN ports again; whether
    /// either changed. On an error the last view stays (remote tasks keep
    /// their identities, unknown addresses of the subnets stay unknown
    /// overlay peers).
    pub(super) async fn refresh_overlays(&mut self, docker: &impl Engine) -> bool {
        let ports = self.links.data_path_ports().await;
        let ports_changed = ports != self.vxlan_ports;
        if ports_changed {
            info!(ports = ?ports, "overlay data path ports");
            self.vxlan_ports = ports;
        }
        if self.overlay_nets.is_empty() && self.overlays.is_empty() {
            return ports_changed;
        }
        match docker.overlays(&self.overlay_nets).await {
            Ok(o) if o != self.overlays => {
                debug!(overlays = o.len(), "overlay gossip changed");
                self.overlays = o;
                true
            }
            Ok(_) => ports_changed,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "reading the overlays' gossip failed"
                );
                ports_changed
            }
        }
    }

    /// Tasks on other nodes as containers (name, service, address; no
    /// veth), from the gossip: an address a local container has is its.
    fn remote_tasks(&self, local: &[Container]) -> Vec<Container> {
        let mine: BTreeSet<std::net::Ipv4Addr> = local.iter().flat_map(|c| c.ipv4s()).collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for o in &self.overlays {
            for t in &o.tasks {
                if mine.contains(&t.ip) || !seen.insert((o.id.clone(), t.ip)) {
                    continue;
                }
                out.push(Container::remote_task(&o.name, &o.id, t));
            }
        }
        out
    }

    fn set_networks(&mut self, nets: Vec<NetworkInfo>) {
        self.overlay_nets = nets
            .iter()
            .filter(|n| n.driver == "overlay")
            .cloned()
            .collect();
        self.links
            .set_overlay_networks(self.overlay_nets.iter().map(|n| n.id.clone()).collect());
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
        crate::daemon::fail_closed::bridges(&self.policy.fail_closed_networks(), &self.bridges)
    }

    fn claimed_veths(&self) -> BTreeSet<u32> {
        self.containers
            .values()
            .flat_map(|c| c.networks.iter().filter_map(|a| a.host_ifindex))
            .collect()
    }

    /// A link was announced; true when a hold began or ended, or the
    /// host's addresses changed (a reconcile is due).
    pub(super) fn on_link(&mut self, ev: &LinkEvent) -> bool {
        if ev.addresses {
            return self.refresh_host_addresses();
        }
        let fc = self.fail_closed_bridges();
        if fc.is_empty() && self.holds.is_empty() {
            return false;
        }
        let claimed = self.claimed_veths();
        let links = &self.links;
        self.holds
            .on_link(ev, &fc, &claimed, |ifindex| links.link_name(ifindex))
    }

    /// Reads the host's addresses again; true when they changed (the
    /// `host` peer must follow at once, not at the next resync).
    fn refresh_host_addresses(&mut self) -> bool {
        match self.links.host_addresses() {
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
        match self.links.links() {
            Ok(links) => {
                self.holds.scan(&links, &fc, &claimed);
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "cannot list links for fail-closed holds"
            ),
        }
    }

    /// Inspects one container again and records what it looks like now.
    async fn refresh(&mut self, docker: &impl Engine, id: &str) {
        match docker.inspect(id).await {
            Ok(Some(c)) => {
                let c = self.links.with_veths(c).await;
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
    pub(super) async fn retry_pending(&mut self, docker: &impl Engine) {
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

    /// The policy file in force: the one Swarm delivered last, when the
    /// daemon takes its policy from Swarm and one was delivered; else the
    /// configured one.
    pub(super) fn policy_path(&self) -> std::path::PathBuf {
        policy_path(&self.opts)
    }

    fn swarm_state(&self) -> Option<crate::observe::state::SwarmPolicyState> {
        let s = self.swarm.as_ref()?;
        Some(crate::observe::state::SwarmPolicyState {
            service: s.service.clone(),
            sha256: s.applied.clone(),
            tasks: s
                .answers
                .values()
                .map(|a| crate::observe::state::SwarmTaskState {
                    task: a.task.clone(),
                    sha256: a.sha256.clone(),
                    error: a.error.clone(),
                })
                .collect(),
        })
    }

    /// Takes the policy of every carrier task that arrived on this node
    /// since the last look (see [`swarm_policy`]): checked first (a
    /// policy that does not load is answered as refused, the running one
    /// stays), then kept in the state directory and applied as a reload;
    /// the outcome is answered in the task. True when the state changed.
    pub(super) fn take_swarm_policy(&mut self) -> bool {
        let Some(mut s) = self.swarm.take() else {
            return false;
        };
        let now = swarm_policy::carriers(self.containers.values(), &s.service);
        let arrivals = s.arrivals(&now);
        let changed = !arrivals.is_empty();
        for (id, task, pid) in arrivals {
            let _span = info_span!("swarm_policy", %task).entered();
            let answer = self.take_one(&s, &id, pid, &task);
            if answer.error.is_none() {
                s.applied = Some(answer.sha256.clone());
            }
            if let Err(e) = swarm_policy::answer_in_task(pid, &id, &answer.text()) {
                warn!(error = format!("{e:#}"), "cannot answer the policy carrier");
            }
            s.taken(&id, answer);
        }
        if changed {
            s.settle();
            // The answers the loop wrote may have been withdrawn since.
            s.answer_all();
        }
        self.swarm = Some(s);
        if changed {
            self.publish_reload();
        }
        changed
    }

    fn take_one(
        &mut self,
        s: &swarm_policy::Delivery,
        container_id: &str,
        pid: u32,
        task: &str,
    ) -> swarm_policy::Answer {
        let mut answer = swarm_policy::Answer {
            pid,
            task: task.to_string(),
            sha256: String::new(),
            error: None,
        };
        let bytes = match swarm_policy::read_from_task(pid, container_id) {
            Ok(b) => b,
            Err(e) => {
                answer.error = Some(format!("{e:#}"));
                error!(
                    error = format!("{e:#}"),
                    "cannot read the policy from Swarm"
                );
                return answer;
            }
        };
        answer.sha256 = swarm_policy::sha256_hex(&bytes);
        if s.applied.as_deref() == Some(answer.sha256.as_str()) {
            debug!(sha256 = %answer.sha256, "the policy from Swarm is the one in force");
            return answer;
        }
        let dir = &self.opts.state_dir;
        let candidate = swarm_policy::candidate_path(dir);
        let delivered = swarm_policy::delivered_path(dir);
        let checked = std::fs::write(&candidate, &bytes)
            .map_err(anyhow::Error::from)
            .and_then(|()| load_policy(&candidate));
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&candidate);
            let msg = format!("{e:#}");
            error!(sha256 = %answer.sha256, "policy from Swarm refused, the running policy stays:\n{msg}");
            answer.error = Some(msg);
            return answer;
        }
        let before = std::fs::read(&delivered).ok();
        if let Err(e) = std::fs::rename(&candidate, &delivered) {
            answer.error = Some(format!("keeping it in {}: {e}", delivered.display()));
            return answer;
        }
        if let Err(e) = self.reload("swarm-config") {
            // Not in force: the file goes back to what is.
            match before {
                Some(b) => {
                    // Anew and renamed: a crash halfway must not leave a
                    // torn file that the next start refuses.
                    let tmp = candidate.with_extension("restore");
                    let _ =
                        std::fs::write(&tmp, b).and_then(|()| std::fs::rename(&tmp, &delivered));
                }
                None => {
                    let _ = std::fs::remove_file(&delivered);
                }
            }
            answer.error = Some(e);
            return answer;
        }
        info!(sha256 = %answer.sha256, "policy from Swarm in force");
        answer
    }

    /// Loads the policy file again and applies it; on any error the running
    /// policy stays and the error is returned (and logged). The outcome is
    /// published in the state (`last_reload`); `trigger` says what asked.
    pub(super) fn reload(&mut self, trigger: &str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let r = self.reload_once();
        crate::observe::telemetry::global().reloaded(started.elapsed(), r.clone().err());
        let generation = self.dp.generation();
        info!(trigger, ok = r.is_ok(), generation, "reload finished");
        self.last_reload = Some(ReloadStatus {
            time: unix_now(),
            trigger: trigger.into(),
            ok: r.is_ok(),
            error: r.as_ref().err().cloned(),
            generation,
        });
        self.publish_reload();
        trim_heap();
        r
    }

    /// Rewrites the published state with the current `last_reload` (and
    /// the policy from Swarm).
    fn publish_reload(&mut self) {
        let mut state = (**self.state_tx.borrow()).clone();
        state.last_reload = self.last_reload.clone();
        state.swarm_policy = self.swarm_state();
        if let Err(e) = state.write(&self.opts.state_dir) {
            error!(error = format!("{e:#}"), "cannot write the state file");
        }
        self.state_tx.send_replace(Arc::new(state));
    }

    fn reload_once(&mut self) -> Result<(), String> {
        let _span = info_span!("reload").entered();
        match load_policy(&self.policy_path()) {
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

    pub(super) fn reconcile_logged(&mut self) {
        if let Err(e) = self.reconcile() {
            error!(error = format!("{e:#}"), "reconcile failed");
        }
    }

    fn reconcile(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.reconcile_once();
        let error = r.as_ref().err().map(|e| format!("{e:#}"));
        crate::observe::telemetry::global().reconciled(started.elapsed(), error);
        r
    }

    fn reconcile_once(&mut self) -> Result<()> {
        let _span = info_span!("reconcile", containers = self.containers.len()).entered();
        let mut containers: Vec<Container> = self.containers.values().cloned().collect();
        let remote = self.remote_tasks(&containers);
        containers.extend(remote);
        // Rows noted so far are named with the containers they were noted
        // for, before any veth changes hands.
        if self.learned.active() {
            self.drain_learned();
        }
        let policy = &self.policy;
        self.learned
            .note(&containers, |c| policy.learns(c), &self.host_addrs);
        let mut compiled = policy::compile(&self.policy, &containers, &mut self.ids)
            .map_err(|e| anyhow!("{e}"))?;
        let mut data_path = None;
        if self.in_swarm() {
            // An overlay's VXLAN socket takes frames from anyone: a
            // container reaching it could put any packet, claiming any
            // address, on an overlay (`tests/swarm_forged.rs`).
            data_path = Some(compiled.rules.len() as u32 + 1);
            for port in self.data_path_ports() {
                crate::daemon::desired::deny_swarm_data_path(&mut compiled, port);
            }
        }
        let (mut desired, mut state) =
            build_desired(&compiled, &containers, &self.policy, &self.drivers);
        if let Some(rule) = data_path {
            // Flows into a container from those ports, too (the datapath).
            let ports: Vec<u16> = self.data_path_ports().into_iter().collect();
            if ports.len() > desired.data_path_ports.len() {
                warn!(?ports, "more data path ports than the datapath holds (4): flows from the others are not checked");
            }
            for (slot, port) in desired.data_path_ports.iter_mut().zip(ports) {
                *slot = port;
            }
            desired.data_path_rule = rule;
        }
        self.report_unenforceable(&state.unenforceable);
        self.holds.apply(
            &mut desired,
            &crate::daemon::fail_closed::claimed(&containers),
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
        add_overlay_subnets(&mut desired, &self.overlays);
        // Name every identity ever given out, not only those in use, so
        // that older flow rows still read right.
        for (id, groups) in self.ids.iter() {
            state
                .identities
                .entry(id)
                .or_insert_with(|| groups.to_vec());
        }
        let report = self.dp.apply(&desired)?;
        // The first endpoint of a new overlay namespace waits for its
        // programs to load (the verifier: a second or two, with the veth
        // unenforced meanwhile): load the next slot's ahead.
        if self.has_overlays() {
            if let Some(k) = self.links.next_ns_slot() {
                self.dp.preload_ns_instance(k);
            }
        }
        info!(
            endpoints = desired.endpoints.len(),
            generation = report.generation,
            switched = report.switched,
            attached = report.attached,
            detached = report.detached,
            "datapath in step"
        );
        state.policy_path = self.policy_path();
        state.swarm_policy = self.swarm_state();
        if self.in_swarm() {
            state.swarm_data_path_ports = self.data_path_ports().into_iter().collect();
        }
        state.generation = report.generation;
        state.updated = unix_now();
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
    /// away and came back); the state file lists them all the time. Returns
    /// how many were logged now.
    fn report_unenforceable(&mut self, now: &[Unenforceable]) -> usize {
        let keys: BTreeSet<(String, String, String)> = now
            .iter()
            .map(|u| (u.container.clone(), u.network.clone(), u.reason.clone()))
            .collect();
        let mut logged = 0;
        for (container, network, reason) in keys.difference(&self.reported) {
            warn!(%container, %network, %reason, "container cannot be enforced");
            logged += 1;
        }
        self.reported = keys;
        logged
    }
}

#[cfg(test)]
mod tests;

/// Hands memory freed by a reload or the first resync back to the kernel.
/// glibc keeps freed chunks in its arenas (one per thread that allocated),
/// so the parse tree and compile tables of a big policy stayed resident
/// after they were dropped: 92 MiB with a 10 000-rule policy.
pub(super) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes a plain integer and only walks glibc's own
    // free lists, under its own locks; no pointer of ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}
