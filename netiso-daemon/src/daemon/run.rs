//! `netiso daemon`: start-up (policy, datapath, services, privileges) and
//! the event loop that feeds the reconciler (`reconcile.rs`) with Docker
//! events, link announcements, signals, timers and control requests.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::api::control::{Control, Handles};
use crate::daemon::options::Options;
use crate::daemon::ports::Netlink;
use crate::daemon::reconcile::{
    load_policy, Daemon, GOSSIP_EVERY, LEARN_DRAIN_EVERY, VETH_RETRY_EVERY,
};
use crate::daemon::sd_notify::notify_logged;
use crate::daemon::swarm_policy::ANSWER_EVERY;
use crate::datapath::Datapath;
use crate::host::docker::DockerClient;
use crate::observe::clock::unix_now;
use crate::observe::state::State;
use crate::policy::IdentityAllocator;

pub async fn run(opts: Options) -> Result<()> {
    crate::datapath::require_root("netiso daemon")?;
    // With Swarm delivering the policy, the last one it delivered, at once.
    let policy_path = crate::daemon::reconcile::policy_path(&opts);
    let policy = load_policy(&policy_path)
        .with_context(|| format!("the policy {} is not valid", policy_path.display()))?;
    let mut dp = Datapath::load(&opts.pin_dir)?;
    dp.set_allow_non_ip(opts.allow_non_ip)?;
    dp.set_cross_mark(opts.cross_veth_mark)?;
    if opts.allow_non_ip {
        warn!("allow_non_ip is on: frames other than IPv4, IPv6 and ARP cross every policy");
    }
    info!(pin_dir = %opts.pin_dir.display(), policy = %policy_path.display(), "netiso starting");
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
    if let Err(e) = crate::host::link_watch::spawn(link_tx) {
        warn!(
            error = format!("{e:#}"),
            "not watching new links; fail-closed holds start at resyncs only"
        );
    }
    if opts.watch_policy {
        crate::daemon::policy_watch::spawn(opts.policy.clone(), control_tx.clone());
    }
    let (state_tx, state_rx) = watch::channel(Arc::new(State::default()));
    crate::daemon::services::spawn(
        &opts,
        Handles {
            control: control_tx,
            state: state_rx,
        },
    )?;
    // Start-up's privileged work is done (programs loaded, pins made,
    // control socket bound): keep only what the running daemon needs.
    if let Err(e) = crate::daemon::privileges::drop_after_start() {
        warn!(error = %e, "cannot drop capabilities; running with those it started with");
    }
    let links = Netlink {
        overlays: crate::host::netlink::Overlays {
            exec_root: opts.docker_exec_root.clone(),
            networks: Default::default(),
            slots: crate::host::overlay::NsSlots::persistent(
                opts.state_dir.join("netns-slots.json"),
            ),
        },
    };
    let mut d = Daemon::new(opts, state_tx, policy, ids, dp, links);
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
            let since = unix_now() as i64 - 1;
            let mut events = docker.events(Some(since));
            d.resync(&docker).await?;
            synced = true;
            crate::observe::telemetry::global().engine_connected(docker.version().await.ok());
            let status = format!("STATUS=enforcing; {} containers", d.containers.len());
            if !ready {
                ready = true;
                super::reconcile::trim_heap();
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
            let mut learn_tick = tokio::time::interval(LEARN_DRAIN_EVERY);
            learn_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut gossip_tick = tokio::time::interval(GOSSIP_EVERY);
            gossip_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut answer_tick = tokio::time::interval(ANSWER_EVERY);
            answer_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            let mut batch = vec![ev];
                            // Take whatever else is ready, then reconcile once.
                            while let Some(Some(Ok(more))) = futures_util::FutureExt::now_or_never(events.next()) {
                                batch.push(more);
                            }
                            // With the links announced before these events.
                            let mut links = Vec::new();
                            while let Ok(l) = link_rx.try_recv() {
                                links.push(l);
                            }
                            d.on_docker_events(&docker, links, batch).await;
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
                    _ = learn_tick.tick(), if d.learned.active() => {
                        d.drain_learned();
                    }
                    // Tasks on other nodes come and go without an event
                    // here (workers see no swarm events): ask the gossip.
                    _ = gossip_tick.tick(), if d.has_overlays() => {
                        if d.refresh_overlays(&docker).await {
                            d.reconcile_logged();
                        }
                    }
                    // The carrier tasks' healthcheck wants a fresh answer.
                    _ = answer_tick.tick(), if d.swarm.is_some() => {
                        if let Some(s) = &d.swarm {
                            s.answer_all();
                        }
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
                        Control::Learned { reply } => {
                            d.drain_learned();
                            let _ = reply.send(Ok(()));
                        }
                        Control::EventRate { per_second, reply } => {
                            let _ = reply.send(d.dp.set_event_rate(per_second).map_err(|e| format!("{e:#}")));
                        }
                    },
                    _ = term.recv() => {
                        d.drain_learned();
                        return Ok::<bool, anyhow::Error>(true);
                    }
                    _ = int.recv() => {
                        d.drain_learned();
                        return Ok(true);
                    }
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
                crate::observe::telemetry::global().engine_lost(format!("{e:#}"));
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
