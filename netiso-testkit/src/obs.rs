//! Helpers for the observability tests: the daemon's control socket,
//! metrics endpoint, and clients running as an unprivileged user.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{netiso_bin, run_in, DaemonProc};

/// Sends `n` UDP datagrams from inside the container with `pid`, without
/// pausing (as fast as the socket takes them) unless `gap` is given.
pub fn udp_burst(pid: u32, to: SocketAddr, n: u32, gap: Option<Duration>) {
    run_in(&PathBuf::from(format!("/proc/{pid}/ns/net")), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..n {
            s.send_to(format!("x{i}").as_bytes(), to).unwrap();
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
        }
    });
}

/// `netiso status --json` of this daemon, whatever its exit status.
pub fn status_json(d: &DaemonProc) -> serde_json::Value {
    let out = d.cli(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits (bounded) until the daemon serves metrics; returns their address.
pub fn metrics_addr(d: &DaemonProc) -> String {
    for _ in 0..50 {
        let s = status_json(d);
        if let Some(url) = s["metrics"].as_str() {
            if let Some(addr) = url
                .strip_prefix("http://")
                .and_then(|u| u.strip_suffix("/metrics"))
            {
                return addr.to_string();
            }
            panic!("metrics not served: {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the daemon never reported a metrics address:\n{}", d.log());
}

/// `GET /metrics`, body only.
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of one sample line (`name{labels}`) in a scrape, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A copy of the netiso binary that any user can run (the build directory
/// may sit below a directory only root can enter).
pub struct PublicBinary {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl PublicBinary {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("netiso");
        std::fs::copy(netiso_bin(), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, path }
    }

    /// Runs it as `uid:gid` with no supplementary groups.
    pub fn run_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        Command::new(&self.path)
            .args(args)
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .output()
            .expect("run netiso as another user")
    }
}

/// A directory everyone may enter, for a socket others should find.
pub fn public_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

pub fn wait_for_file(p: &Path) {
    for _ in 0..100 {
        if p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never appeared", p.display());
}
