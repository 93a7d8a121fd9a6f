//! The control socket's server: binds the socket (final owner and mode
//! before it is visible), checks every peer, answers requests and streams
//! monitor events.
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::api::access::{peer_of, Access};
use crate::api::control::{Control, Handles};
use crate::api::protocol::{
    parse_request, Request, Response, StreamLine, API_VERSION, MAX_REQUEST,
};
use crate::observe::events::{wanted, EventHub, MonitorMessage};
use crate::observe::filter::Filter;

/// Connections served at once; more wait.
const MAX_CLIENTS: usize = 64;

/// What request handlers need from the daemon.
pub struct ServerContext {
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub handles: Handles,
    pub hub: Arc<EventHub>,
    /// `http://ADDR/metrics`, or why metrics are not served.
    pub metrics: std::sync::Mutex<Option<String>>,
}

/// Creates the socket with its final owner and mode before it becomes
/// visible under its name, so there is no moment when anyone could connect.
pub fn bind(path: &Path, access: Access) -> Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".netiso.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    let set_up = || -> Result<()> {
        let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes())?;
        let gid = access.group.unwrap_or(0);
        // SAFETY: `c` is a NUL-terminated CString that lives across the call;
        // chown only reads the path.
        if unsafe { libc::chown(c.as_ptr(), 0, gid) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("chown root:{gid} {}", tmp.display()));
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(())
    };
    if let Err(e) = set_up() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Serves the control socket until the runtime ends.
pub async fn serve(listener: UnixListener, access: Access, ctx: Arc<ServerContext>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    info!(socket = %ctx.socket.display(), group = ?access.group, "control socket ready");
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept on the control socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, access, &ctx).await {
                debug!(error = format!("{e:#}"), "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn write_line(stream: &mut UnixStream, v: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(())
}

async fn handle(mut stream: UnixStream, access: Access, ctx: &ServerContext) -> Result<()> {
    let peer = peer_of(&stream).context("reading peer credentials")?;
    if let Err(msg) = access.check(&peer) {
        warn!(
            uid = peer.uid,
            pid = peer.pid,
            "refused a control connection"
        );
        write_line(&mut stream, &Response::err(msg)).await?;
        return Ok(());
    }
    let mut line = String::new();
    {
        let mut reader = tokio::io::BufReader::new((&mut stream).take(MAX_REQUEST as u64));
        match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => bail!("no request within 10 s"),
        }
    }
    let req = match parse_request(line.trim()) {
        Ok(r) => r,
        Err(msg) => {
            write_line(&mut stream, &Response::err(msg)).await?;
            return Ok(());
        }
    };
    debug!(?req, uid = peer.uid, "control request");
    let resp = match req {
        Request::MonitorSubscribe { filter } => return monitor(stream, filter, ctx).await,
        Request::Status => status(ctx).await,
        Request::Stats => stats(ctx).await,
        Request::Reload => ask(ctx, |reply| Control::Reload { reply: Some(reply) }).await,
        Request::DebugLog { on } => ask(ctx, |reply| Control::DebugLog { on, reply }).await,
        Request::Learned => ask(ctx, |reply| Control::Learned { reply }).await,
    };
    write_line(&mut stream, &resp).await
}

async fn ask(
    ctx: &ServerContext,
    make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Control,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx.handles.control.send(make(tx)).await.is_err() {
        return Response::err("the daemon is shutting down");
    }
    // The loop serves requests while it is connected to Docker.
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(()))) => Response::ok(Value::Bool(true)),
        Ok(Ok(Err(e))) => Response::err(e),
        Ok(Err(_)) => Response::err("the daemon dropped the request"),
        Err(_) => Response::err(
            "the daemon did not answer within 30 s (is it reconnecting to Docker? see netiso status)",
        ),
    }
}

async fn status(ctx: &ServerContext) -> Response {
    let state = ctx.handles.state.borrow().clone();
    let pin_dir = ctx.pin_dir.clone();
    let socket = ctx.socket.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::observe::status::report(&pin_dir, &socket, &state)
    })
    .await;
    match r {
        Ok(mut report) => {
            report.source = "daemon".into();
            report.daemon = Some(crate::observe::telemetry::global().health());
            report.metrics = ctx
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            report.events_error = ctx.hub.error();
            match serde_json::to_value(report) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Err(e) => Response::err(format!("status failed: {e}")),
    }
}

async fn stats(ctx: &ServerContext) -> Response {
    let state = ctx.handles.state.borrow().clone();
    let pin_dir = ctx.pin_dir.clone();
    let r =
        tokio::task::spawn_blocking(move || crate::observe::stats::collect_with(&pin_dir, &state))
            .await;
    match r {
        Ok(Ok(mut s)) => {
            s.source = "daemon".into();
            match serde_json::to_value(s) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Ok(Err(e)) => Response::err(format!("{e:#}")),
        Err(e) => Response::err(format!("stats failed: {e}")),
    }
}

/// Streams events to one subscriber. Its queue is the broadcast channel's
/// bounded buffer: when it falls behind, it is told how much it missed.
async fn monitor(mut stream: UnixStream, filter: Filter, ctx: &ServerContext) -> Result<()> {
    if let Err(e) = filter.validate() {
        return write_line(&mut stream, &Response::err(format!("{e:#}"))).await;
    }
    // Subscribe before answering, so nothing after the answer is missed.
    let mut rx = ctx.hub.tx.subscribe();
    let event_rate = crate::observe::status::kernel_status(&ctx.pin_dir).event_rate;
    write_line(
        &mut stream,
        &Response::ok(serde_json::json!({
            "subscribed": true,
            "event_rate": event_rate,
            "events_error": ctx.hub.error(),
        })),
    )
    .await?;
    let metrics = &ctx.hub.metrics;
    metrics.subscribers.inc();
    let _gone = scopeguard(|| {
        metrics.subscribers.dec();
    });
    let (mut rd, mut wr) = stream.split();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics.subscriber_lost.inc_by(n);
                        Arc::new(MonitorMessage::Lost { count: n })
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                if !wanted(&filter, &msg) {
                    continue;
                }
                let mut line = serde_json::to_vec(&StreamLine { version: API_VERSION, message: (*msg).clone() })?;
                line.push(b'\n');
                wr.write_all(&line).await?;
            }
            // The client sends nothing after subscribing: a read returning
            // means it hung up.
            r = rd.read(&mut scratch) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
