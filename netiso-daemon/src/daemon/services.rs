//! Services that run beside the daemon loop: the control socket, the event
//! reader, the Prometheus endpoint and the kernel log reader. Each gets the
//! [`Handles`] to ask the daemon for things and to read the state it
//! publishes.
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::api::control::{Control, Handles};
use crate::api::{self, Access, ServerContext};
use crate::daemon::options::Options;
use crate::observe::events::{self, EventHub};

/// Starts every service on the current tokio runtime.
pub fn spawn(opts: &Options, handles: Handles) -> Result<()> {
    let sopts = &opts.services;
    let access = Access {
        group: sopts
            .socket_group
            .as_deref()
            .map(api::group_id)
            .transpose()
            .context("--socket-group")?,
    };
    let socket = api::socket_path(sopts.socket.as_deref(), &opts.state_dir);
    let listener = api::bind(&socket, access)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;

    // The packet socket that sends held DNS answers on is opened now,
    // while the daemon still has CAP_NET_RAW (dropped after start).
    match crate::host::packet::Injector::new(netiso_common::DNS_REINJECT_MARK) {
        Ok(injector) => {
            tokio::spawn(crate::daemon::fqdn::run(
                opts.pin_dir.clone(),
                opts.state_dir.clone(),
                handles.state.clone(),
                sopts.fqdn(),
                injector,
            ));
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "peers by name cannot work: DNS answers held for learning could not be sent on"
        ),
    }

    let hub = EventHub::new();
    tokio::spawn(events::run_reader(
        opts.pin_dir.clone(),
        handles.state.clone(),
        hub.clone(),
    ));

    let ctx = Arc::new(ServerContext {
        pin_dir: opts.pin_dir.clone(),
        socket,
        handles: handles.clone(),
        hub: hub.clone(),
        metrics: std::sync::Mutex::new(None),
    });

    if sopts.metrics_addr != "off" {
        let addr = sopts.metrics_addr.clone();
        let metrics =
            crate::observe::metrics::Metrics::new(opts.pin_dir.clone(), handles.state.clone(), hub);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let shown = match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => {
                    let bound = l.local_addr().map_or(addr.clone(), |a| a.to_string());
                    info!(address = %bound, "serving Prometheus metrics at /metrics");
                    *ctx.metrics.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("http://{bound}/metrics"));
                    crate::observe::metrics::serve(l, Arc::new(metrics)).await;
                    return;
                }
                Err(e) => {
                    // Not fatal: enforcement matters more than metrics.
                    warn!(address = %addr, error = %e, "cannot serve metrics");
                    format!("NOT served: cannot listen on {addr}: {e}")
                }
            };
            *ctx.metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(shown);
        });
    }

    if let Some(rate) = sopts.event_rate {
        // After the first reconcile: fresh maps get the default rate then.
        let control = handles.control.clone();
        let mut state = handles.state.clone();
        tokio::spawn(async move {
            if state.changed().await.is_ok() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if control
                    .send(Control::EventRate {
                        per_second: rate,
                        reply: tx,
                    })
                    .await
                    .is_ok()
                {
                    if let Ok(Err(e)) = rx.await {
                        warn!(error = %e, "cannot set the event rate");
                    }
                }
            }
        });
    }

    crate::datapath::kernel_log::spawn(&opts.pin_dir);

    tokio::spawn(api::serve(listener, access, ctx));
    Ok(())
}
