//! The control socket's client side, used by the CLI: one request and
//! its answer, or a monitor subscription.
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;

use crate::api::protocol::{Request, RequestLine, Response, StreamLine, API_VERSION};
use crate::observe::events::MonitorMessage;
use crate::observe::filter::Filter;

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
