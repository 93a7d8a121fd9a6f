//! The control socket: a Unix socket (default `/run/netiso/netiso.sock`)
//! speaking a small versioned protocol of JSON lines.
//!
//! A client sends one request line, `{"version":1,"request":"status"}`, and
//! gets one response line, `{"version":1,"ok":true,"result":...}` or
//! `{"version":1,"ok":false,"error":"..."}`. After a successful
//! `monitor-subscribe` the daemon keeps sending one line per
//! [`MonitorMessage`] (`{"version":1,"type":"event",...}`) until the client
//! hangs up.
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observe::events::MonitorMessage;
use crate::observe::filter::Filter;

/// The protocol version this build speaks.
pub const API_VERSION: u32 = 1;
/// File name of the socket in the state directory.
pub const SOCKET_FILE: &str = "netiso.sock";
/// Longest request line accepted.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;

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
    /// Learn mode: bring the record file up to date (what the kernel
    /// noted so far); `policy suggest` then reads it.
    Learned,
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
    fn stream_lines_carry_the_version() {
        let l = StreamLine {
            version: API_VERSION,
            message: MonitorMessage::Lost { count: 3 },
        };
        let s = serde_json::to_string(&l).unwrap();
        assert_eq!(s, r#"{"version":1,"type":"lost","count":3}"#);
        assert_eq!(serde_json::from_str::<StreamLine>(&s).unwrap(), l);
    }
}
