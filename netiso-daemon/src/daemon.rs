//! `netiso daemon`: follow Docker, compile the policy against the running
//! containers and keep the datapath in step.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt as _;
use netiso_common::{identity, IdentityInfo, IpKey};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::datapath::{Datapath, Desired, EndpointSpec};
use crate::docker::{DockerClient, DockerEvent};
use crate::model::Container;
use crate::policy::{self, Compiled, IdentityAllocator, Policy};
use crate::state::{EndpointState, RuleState, State, Unenforceable};

#[derive(Clone, Debug)]
pub struct Options {
    pub policy: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Drop non-IP ethertypes (other than ARP) on policed endpoints.
    pub drop_non_ip: bool,
    /// Control socket, metrics, events.
    pub services: crate::services::ServiceOptions,
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
}

/// Loads and renders a policy for logs and errors.
fn load_policy(path: &std::path::Path) -> Result<Policy> {
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
    dp.set_drop_non_ip(opts.drop_non_ip)?;
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
    let (state_tx, state_rx) = watch::channel(Arc::new(State::default()));
    crate::services::spawn(
        &opts,
        Handles {
            control: control_tx,
            state: state_rx,
        },
    )?;
    let mut d = Daemon {
        opts,
        state_tx,
        policy,
        ids,
        dp,
        containers: BTreeMap::new(),
        host_addrs: Vec::new(),
    };

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut backoff = Duration::from_millis(500);
    loop {
        let session = async {
            let docker = DockerClient::connect().await?;
            // Subscribe from just before the listing so that nothing that
            // happens while we list is missed.
            let since = unix_now() - 1;
            let mut events = docker.events(Some(since));
            d.resync(&docker).await?;
            crate::telemetry::global().engine_connected(docker.version().await.ok());
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            let mut batch = vec![ev];
                            // Take whatever else is ready, then reconcile once.
                            while let Some(Some(Ok(more))) = futures_util::FutureExt::now_or_never(events.next()) {
                                batch.push(more);
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
                        let _ = d.reload();
                    }
                    Some(cmd) = control_rx.recv() => match cmd {
                        Control::Reload { reply } => {
                            let r = d.reload();
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
                info!("stopping; the pinned programs keep enforcing the last policy");
                return Ok(());
            }
            Err(e) => {
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
            let listed = docker.running_containers().await?;
            let mut containers = BTreeMap::new();
            for c in listed {
                let c = with_veths(c).await;
                containers.insert(c.id.clone(), c);
            }
            info!(containers = containers.len(), "listed running containers");
            self.containers = containers;
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
                return;
            }
            DockerEvent::NetworkCreated { .. } | DockerEvent::NetworkRemoved { .. } => return,
        };
        match docker.inspect(&id).await {
            Ok(Some(c)) => {
                let c = with_veths(c).await;
                self.containers.insert(c.id.clone(), c);
            }
            Ok(None) => {
                self.containers.remove(&id);
            }
            Err(e) => warn!(container = %id, error = format!("{e:#}"), "inspect failed"),
        }
    }

    /// Loads the policy file again and applies it; on any error the running
    /// policy stays and the error is returned (and logged).
    fn reload(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let r = self.reload_once();
        crate::telemetry::global().reloaded(started.elapsed(), r.clone().err());
        r
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
        let (mut desired, mut state) = build_desired(&compiled, &containers, &self.policy);
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
        state.write(&self.opts.state_dir)?;
        self.state_tx.send_replace(Arc::new(state));
        Ok(())
    }
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
        let groups = policy.groups_of(c);
        if managed && c.networks.is_empty() {
            state.unenforceable.push(Unenforceable {
                container: c.name.clone(),
                reason: format!(
                    "network mode {:?} has no veth of its own to enforce at",
                    c.network_mode
                ),
            });
        }
        for a in &c.networks {
            let ips = a
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(a.ipv6.map(IpAddr::V6));
            for ip in ips {
                d.identities.insert(
                    IpKey::from_ip(ip, 0),
                    IdentityInfo {
                        identity: id,
                        flags,
                    },
                );
            }
            let mut enforced = false;
            if managed {
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
                            },
                        );
                        enforced = true;
                    }
                    _ => state.unenforceable.push(Unenforceable {
                        container: c.name.clone(),
                        reason: format!(
                            "no host-side veth found on network {:?} (macvlan, ipvlan or host networking?)",
                            a.network
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
