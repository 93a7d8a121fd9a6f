//! The control socket: a Unix socket (default `/run/netiso/netiso.sock`)
//! speaking a small versioned protocol of JSON lines.
//!
//! A client sends one request line, `{"version":1,"request":"status"}`, and
//! gets one response line, `{"version":1,"ok":true,"result":...}` or
//! `{"version":1,"ok":false,"error":"..."}`. After a successful
//! `monitor-subscribe` the daemon keeps sending one line per
//! [`MonitorMessage`] (`{"version":1,"type":"event",...}`) until the client
//! hangs up.
//!
//! Access: the socket file is `root:<group> 0660`, and every connection's
//! peer credentials (SO_PEERCRED, SO_PEERGROUPS) are checked as well: root,
//! or a member of the configured group; anyone else is refused.
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot, Semaphore};
use tracing::{debug, info, warn};

use crate::daemon::{Control, Handles};
use crate::events::{wanted, EventHub, MonitorMessage};
use crate::filter::Filter;

/// The protocol version this build speaks.
pub const API_VERSION: u32 = 1;
/// File name of the socket in the state directory.
pub const SOCKET_FILE: &str = "netiso.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more wait.
const MAX_CLIENTS: usize = 64;

/// The socket path: `explicit`, or `<state_dir>/netiso.sock`.
pub fn socket_path(explicit: Option<&Path>, state_dir: &Path) -> PathBuf {
    explicit.map_or_else(|| state_dir.join(SOCKET_FILE), Path::to_path_buf)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Daemon health, engine, policy, endpoints and their attach state.
    Status,
    /// Flow, reason and rule counters, named with the daemon's state.
    Stats,
    /// Stream drop and audit events matching the filter.
    MonitorSubscribe {
        #[serde(default)]
        filter: Filter,
    },
    /// Reload the policy file; fails (and keeps the running policy) if it
    /// is not valid.
    Reload,
    /// Turn kernel debug logging on or off.
    DebugLog { on: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestLine {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: Value) -> Self {
        Self {
            version: API_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(e: impl Into<String>) -> Self {
        Self {
            version: API_VERSION,
            ok: false,
            result: None,
            error: Some(e.into()),
        }
    }
}

/// A line of the monitor stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StreamLine {
    pub version: u32,
    #[serde(flatten)]
    pub message: MonitorMessage,
}

/// Parses a request line, with a message for people when it is not one.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("the request is not JSON: {e}"))?;
    match v.get("version").and_then(Value::as_u64) {
        Some(n) if n == u64::from(API_VERSION) => {}
        Some(n) => {
            return Err(format!(
                "unsupported API version {n}: this daemon speaks version {API_VERSION}"
            ))
        }
        None => {
            return Err(format!(
                "the request has no \"version\" (use {API_VERSION})"
            ))
        }
    }
    serde_json::from_value::<RequestLine>(v)
        .map(|r| r.request)
        .map_err(|e| {
            format!(
                "bad request: {e}; requests are status, stats, monitor-subscribe, reload, debug-log"
            )
        })
}

// ---------------------------------------------------------------- access

/// Who may use the socket besides root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub group: Option<u32>,
}

/// The connecting process, from the kernel (not from anything it says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Access {
    pub fn check(&self, p: &Peer) -> Result<(), String> {
        if p.uid == 0 {
            return Ok(());
        }
        if let Some(g) = self.group {
            if p.gid == g || p.groups.contains(&g) {
                return Ok(());
            }
        }
        Err(match self.group {
            Some(g) => format!(
                "permission denied: uid {} is neither root nor in group {} ({g})",
                p.uid,
                group_name(g).unwrap_or_else(|| "?".into())
            ),
            None => format!(
                "permission denied: only root may use this socket (uid {}); the daemon's --socket-group can admit a group",
                p.uid
            ),
        })
    }
}

/// Peer credentials of a connected Unix socket.
pub fn peer_of(fd: &impl AsRawFd) -> std::io::Result<Peer> {
    let fd = fd.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid buffer and length for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Supplementary groups as they were at connect time (Linux >= 4.13).
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut glen = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: valid buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut glen,
        )
    };
    if rc == 0 {
        groups.truncate(glen as usize / std::mem::size_of::<libc::gid_t>());
    } else {
        // Too many groups or an old kernel: admit by the primary group only.
        groups.clear();
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
    })
}

/// Looks a group up by name (or accepts a number).
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).context("group name contains NUL")?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers and buffer length; getgrnam_r is thread-safe.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        bail!("no group named {name:?} (see /etc/group)");
    }
    Ok(grp.gr_gid)
}

fn group_name(gid: u32) -> Option<String> {
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers and buffer length.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getgrgid_r filled gr_name with a NUL-terminated string in buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

// ---------------------------------------------------------------- server

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
        // SAFETY: valid C string.
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
    let r =
        tokio::task::spawn_blocking(move || crate::status::report(&pin_dir, &socket, &state)).await;
    match r {
        Ok(mut report) => {
            report.source = "daemon".into();
            report.daemon = Some(crate::telemetry::global().health());
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
    let r = tokio::task::spawn_blocking(move || crate::stats::collect_with(&pin_dir, &state)).await;
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
    let event_rate = crate::status::kernel_status(&ctx.pin_dir).event_rate;
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

// ---------------------------------------------------------------- client

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the daemon is not running.
    #[error("the netiso daemon is not running (no socket at {path}: {source})")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The socket exists but we may not use it.
    #[error("{0}")]
    Denied(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
}

fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ClientError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: path.to_owned(),
                source: e,
            }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(format!(
            "permission denied on {}: use root or a member of the daemon's --socket-group",
            path.display()
        )),
        _ => ClientError::Io {
            path: path.to_owned(),
            source: e,
        },
    })
}

fn read_response(reader: &mut impl std::io::BufRead, path: &Path) -> Result<Response, ClientError> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| ClientError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    if line.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection".into(),
        ));
    }
    let resp: Response =
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if !resp.ok {
        let msg = resp.error.unwrap_or_else(|| "unknown error".into());
        return Err(if msg.starts_with("permission denied") {
            ClientError::Denied(msg)
        } else {
            ClientError::Daemon(msg)
        });
    }
    Ok(resp)
}

fn send(
    stream: &mut std::os::unix::net::UnixStream,
    req: Request,
    path: &Path,
) -> Result<(), ClientError> {
    let mut line = serde_json::to_vec(&RequestLine {
        version: API_VERSION,
        request: req,
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| ClientError::Io {
        path: path.to_owned(),
        source: e,
    })
}

/// Sends one request and returns the result of a successful answer.
pub fn call(path: &Path, req: Request, timeout: Duration) -> Result<Value, ClientError> {
    let mut stream = connect(path)?;
    let io = |e| ClientError::Io {
        path: path.to_owned(),
        source: e,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let sent = send(&mut stream, req, path);
    // A refused client may find the socket closed before its request is
    // written: the refusal is still there to read.
    let resp = read_response(&mut BufReader::new(stream), path);
    match (sent, resp) {
        (_, Err(e @ (ClientError::Denied(_) | ClientError::Daemon(_)))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), r) => Ok(r?.result.unwrap_or(Value::Null)),
    }
}

/// A live monitor subscription: iterate to get messages.
pub struct Subscription {
    reader: BufReader<std::os::unix::net::UnixStream>,
    path: PathBuf,
    pending: String,
    /// What the daemon said when subscribing (event rate, errors).
    pub hello: Value,
}

pub fn subscribe(path: &Path, filter: Filter) -> Result<Subscription, ClientError> {
    let mut stream = connect(path)?;
    let sent = send(&mut stream, Request::MonitorSubscribe { filter }, path);
    let mut reader = BufReader::new(stream);
    let hello = match (sent, read_response(&mut reader, path)) {
        (_, Err(e @ (ClientError::Denied(_) | ClientError::Daemon(_)))) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(()), r) => r?.result.unwrap_or(Value::Null),
    };
    Ok(Subscription {
        reader,
        path: path.to_owned(),
        pending: String::new(),
        hello,
    })
}

impl Subscription {
    /// Waits at most `timeout` for the next message (`Ok(None)` on timeout).
    pub fn next_within(&mut self, timeout: Duration) -> Result<Option<MonitorMessage>> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        // `pending` keeps a line cut by the timeout for the next call.
        match self.reader.read_line(&mut self.pending) {
            Ok(0) => Err(anyhow!(
                "the daemon at {} ended the stream",
                self.path.display()
            )),
            Ok(_) if self.pending.ends_with('\n') => {
                let line = std::mem::take(&mut self.pending);
                let l: StreamLine = serde_json::from_str(&line)
                    .with_context(|| format!("bad stream line {line:?}"))?;
                Ok(Some(l.message))
            }
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_versioned_json_lines() {
        let line = serde_json::to_string(&RequestLine {
            version: API_VERSION,
            request: Request::DebugLog { on: true },
        })
        .unwrap();
        assert_eq!(line, r#"{"version":1,"request":"debug-log","on":true}"#);
        assert_eq!(parse_request(&line), Ok(Request::DebugLog { on: true }));
        assert_eq!(
            parse_request(r#"{"version":1,"request":"status"}"#),
            Ok(Request::Status)
        );
        let sub =
            parse_request(r#"{"version":1,"request":"monitor-subscribe","filter":{"group":"db"}}"#)
                .unwrap();
        assert_eq!(
            sub,
            Request::MonitorSubscribe {
                filter: Filter {
                    group: Some("db".into()),
                    ..Filter::default()
                }
            }
        );
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let e = parse_request(r#"{"version":2,"request":"status"}"#).unwrap_err();
        assert!(e.contains("unsupported API version 2"), "{e}");
        let e = parse_request(r#"{"request":"status"}"#).unwrap_err();
        assert!(e.contains("no \"version\""), "{e}");
        let e = parse_request(r#"{"version":1,"request":"shutdown"}"#).unwrap_err();
        assert!(e.contains("requests are status"), "{e}");
        assert!(parse_request("status").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn access_admits_root_and_the_group_only() {
        let peer = |uid, gid, groups: &[u32]| Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let root_only = Access { group: None };
        assert!(root_only.check(&peer(0, 0, &[])).is_ok());
        assert!(root_only.check(&peer(1000, 1000, &[])).is_err());
        let ops = Access { group: Some(4242) };
        assert!(ops.check(&peer(1000, 4242, &[])).is_ok());
        assert!(ops.check(&peer(1000, 1000, &[27, 4242])).is_ok());
        let e = ops.check(&peer(65534, 65534, &[])).unwrap_err();
        assert!(e.starts_with("permission denied"), "{e}");
    }

    #[test]
    fn stream_lines_carry_the_version() {
        let l = StreamLine {
            version: API_VERSION,
            message: MonitorMessage::Lost { count: 3 },
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(s, r#"{"version":1,"type":"lost","count":3}"#);
        assert_eq!(serde_json::from_str::<StreamLine>(&s).unwrap(), l);
    }

    #[test]
    fn numeric_and_named_groups_resolve() {
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-netiso").is_err());
    }
}
