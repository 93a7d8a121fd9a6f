//! Helpers for the hardening tests: containers started with extra Docker
//! flags (capabilities), traffic sent and received from inside container
//! network namespaces (UDP from any local address, raw Ethernet frames),
//! the TCX programs on a host-side veth, and the daemon's drop counters.
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::programs::tc::TcAttachType;
use aya::programs::SchedClassifier;

use super::docker::{image, DockerEnv};
use super::{sh, DaemonProc};

/// Containers started with extra `docker run` flags on a [`DockerEnv`]'s
/// network, removed on drop.
pub struct Extra {
    network: String,
    tag: String,
    names: Vec<String>,
}

impl Extra {
    pub fn new(env: &DockerEnv) -> Self {
        Self {
            network: env.network.clone(),
            tag: env.tag.clone(),
            names: Vec::new(),
        }
    }

    /// `docker run -d` of `<name>-<tag>` with `flags` (e.g.
    /// `--cap-add=NET_ADMIN`) and labels, running `script` under sh.
    pub fn run(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        flags: &[&str],
        script: &str,
    ) -> String {
        let full = format!("{name}-{}", self.tag);
        let mut cmd = format!("docker run -d --name {full} --network {}", self.network);
        for (k, v) in labels {
            cmd.push_str(&format!(" --label {k}={v}"));
        }
        for f in flags {
            cmd.push_str(&format!(" {f}"));
        }
        cmd.push_str(&format!(" {} sh -c '{script}'", image()));
        self.names.push(full.clone());
        sh(&cmd);
        full
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        for c in &self.names {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
    }
}

/// `docker exec <container> sh -c <script>`, panicking with its output on
/// failure: what the container itself can do.
pub fn exec(container: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "`{script}` inside {container} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn netns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Enters the network namespace of `pid` on the calling thread.
fn enter(pid: u32) {
    let f = std::fs::File::open(netns_of(pid)).expect("open netns");
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A receiver running inside a container's namespace for `window`;
/// `join` gives what it counted.
pub struct Receiver(Option<JoinHandle<u32>>);

impl Receiver {
    pub fn join(mut self) -> u32 {
        self.0.take().unwrap().join().expect("receiver panicked")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Counts UDP datagrams arriving at `bind` inside the namespace of `pid`
/// during `window`. Returns once the socket is bound.
pub fn udp_receiver(pid: u32, bind: SocketAddr, window: Duration) -> Receiver {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        enter(pid);
        let s = UdpSocket::bind(bind).expect("bind the receiver");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready_tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if s.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    Receiver(Some(h))
}

/// Sends `n` UDP datagrams from `from` (an address local to the namespace
/// of `pid`, port 0 for any) to `to`, 2 ms apart.
pub fn udp_send(pid: u32, from: SocketAddr, to: SocketAddr, n: u32) {
    super::run_in(&netns_of(pid), move || {
        let s = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        for i in 0..n {
            s.send_to(format!("x{i}").as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// An AF_PACKET socket for `ethertype` bound to `ifname` in the current
/// namespace.
fn packet_socket(ifname: &str, ethertype: u16) -> (OwnedFd, i32) {
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ethertype.to_be()),
        )
    };
    assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no {ifname} here");
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex;
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    (fd, ifindex)
}

/// Counts frames of `ethertype` arriving on `ifname` inside the namespace
/// of `pid` during `window`.
pub fn raw_receiver(pid: u32, ifname: &'static str, ethertype: u16, window: Duration) -> Receiver {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        enter(pid);
        let (fd, _) = packet_socket(ifname, ethertype);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        ready_tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            // Only frames that arrived, not our own outgoing copies.
            if r > 0 {
                n += 1;
            }
        }
        n
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    Receiver(Some(h))
}

/// Sends `frame` `n` times on `ifname` inside the namespace of `pid`
/// (what any container with Docker's default CAP_NET_RAW can do).
pub fn raw_send(pid: u32, ifname: &'static str, frame: Vec<u8>, n: u32) {
    super::run_in(&netns_of(pid), move || {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let (fd, _) = packet_socket(ifname, ethertype);
        for _ in 0..n {
            let r = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(
                r,
                frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// `(program id, name)` of the TCX programs on a host interface, in one
/// direction (ingress: leaving the container; egress: entering it).
pub fn tcx_programs(ifname: &str, dir: TcAttachType) -> Vec<(u32, String)> {
    let (_, progs) = SchedClassifier::query_tcx(ifname, dir)
        .unwrap_or_else(|e| panic!("query TCX on {ifname}: {e}"));
    progs
        .iter()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect()
}

/// The TCX programs of one daemon (the links pinned under `pins`) on the
/// host interface `ifname` with index `ifindex`, per direction: other
/// daemons (parallel tests) may have programs of their own there.
pub fn own_tcx_programs(
    pins: &std::path::Path,
    ifname: &str,
    ifindex: u32,
) -> (Vec<(u32, String)>, Vec<(u32, String)>) {
    let prog = |dir: &str| {
        let pin = pins.join("links").join(format!("{ifindex}-{dir}"));
        let link = aya::programs::links::PinnedLink::from_pin(&pin)
            .unwrap_or_else(|e| panic!("link pin {}: {e}", pin.display()));
        let link = aya::programs::links::FdLink::from(link);
        link.info().expect("link info").program_id()
    };
    let (from, to) = (prog("from"), prog("to"));
    (
        tcx_programs(ifname, TcAttachType::Ingress)
            .into_iter()
            .filter(|(id, _)| *id == from)
            .collect(),
        tcx_programs(ifname, TcAttachType::Egress)
            .into_iter()
            .filter(|(id, _)| *id == to)
            .collect(),
    )
}

/// The MAC address of a container on its network (from `docker inspect`).
pub fn mac_of(container: &str, network: &str) -> [u8; 6] {
    let out = sh(&format!(
        "docker inspect -f '{{{{(index .NetworkSettings.Networks \"{network}\").MacAddress}}}}' {container}"
    ));
    parse_mac(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    v.try_into().expect("6 bytes")
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Packets per drop reason, from `netiso stats --json` of this daemon.
pub fn reason_counts(d: &DaemonProc) -> std::collections::BTreeMap<String, u64> {
    let out = d.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    v["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_string(),
                r["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// How much each reason grew between two [`reason_counts`].
pub fn grown(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(r, n)| (r.clone(), n - before.get(r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
