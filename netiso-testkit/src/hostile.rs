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

use crate::docker::{image, DockerEnv};
use crate::{sh, DaemonProc};

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
    enter_path(&netns_of(pid));
}

/// Enters the network namespace at `netns` on the calling thread.
fn enter_path(netns: &std::path::Path) {
    let f = std::fs::File::open(netns).expect("open netns");
    // SAFETY: setns only reads the fd of `f`, opened just above and held
    // across the call; CLONE_NEWNET moves only the calling thread, and every
    // caller is a thread spawned to work inside that namespace.
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
    crate::run_in(&netns_of(pid), move || {
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
    // SAFETY: socket() takes integers only; it returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ethertype.to_be()),
        )
    };
    assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: fd >= 0 (asserted above): a fresh socket, open and owned by
    // nothing else, so OwnedFd may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `name` is a NUL-terminated CString that lives across the call;
    // if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no {ifname} here");
    // SAFETY: sockaddr_ll is a C struct of integers and a byte array;
    // all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a live sockaddr_ll and the length passed is its size;
    // bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
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
        // SAFETY: `tv` is a live timeval and the length passed is its size;
        // setsockopt only reads it. The fd is owned by `fd`.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        ready_tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: `buf` is a live, writable local of `buf.len()` bytes and
            // recv writes at most that many. The fd is owned by `fd`.
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
    raw_send_in(&netns_of(pid), ifname, frame, n);
}

/// [`raw_send`] inside the network namespace at `netns`.
pub fn raw_send_in(netns: &std::path::Path, ifname: &'static str, frame: Vec<u8>, n: u32) {
    crate::run_in(netns, move || {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let (fd, _) = packet_socket(ifname, ethertype);
        for _ in 0..n {
            // SAFETY: `frame` is a live Vec and the length passed is its own;
            // send only reads it. The fd is owned by `fd`.
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
#[expect(
    clippy::type_complexity,
    reason = "one (id, name) list per direction; a named type would be used here only"
)]
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

/// Every frame arriving on `ifname` inside the namespace of `pid`, kept
/// until the recorder is dropped: an AF_PACKET socket for ETH_P_ALL, so it
/// sees frames before the receiver's IP stack (or no stack at all) looks at
/// them. The namespace's own outgoing frames are left out.
pub struct FrameRecorder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frames: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    handle: Option<JoinHandle<()>>,
}

impl FrameRecorder {
    /// Returns once the socket is bound.
    pub fn start(pid: u32, ifname: &'static str) -> Self {
        Self::start_in(netns_of(pid), ifname)
    }

    /// [`start`](Self::start) inside the network namespace at `netns`.
    pub fn start_in(netns: PathBuf, ifname: &'static str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (flag, out) = (stop.clone(), frames.clone());
        let handle = std::thread::spawn(move || {
            enter_path(&netns);
            let (fd, _) = packet_socket(ifname, libc::ETH_P_ALL as u16);
            set_timeout(&fd, Duration::from_millis(50));
            let big: i32 = 16 << 20;
            // SAFETY: `big` is a live i32 and 4 is its size; setsockopt only
            // reads it. The fd is owned by `fd`.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const i32).cast(),
                    4,
                )
            };
            ready_tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            // Bounded even if nobody stops it.
            let end = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                // SAFETY: sockaddr_ll is a C struct of integers and a byte
                // array; all-zero is valid.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: `buf` is writable for `buf.len()` bytes and `sll`
                // for `len`, both live; recvfrom writes at most that. The fd
                // is owned by `fd`.
                let r = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if r > 0 && sll.sll_pkttype != libc::PACKET_OUTGOING {
                    out.lock().unwrap().push(buf[..r as usize].to_vec());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("frame recorder ready");
        Self {
            stop,
            frames,
            handle: Some(handle),
        }
    }

    /// Where the frames seen from now on start (for [`containing_since`](Self::containing_since)).
    pub fn mark(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// The frames seen since `mark` that contain `needle`.
    pub fn containing_since(&self, mark: usize, needle: &[u8]) -> Vec<Vec<u8>> {
        let frames = self.frames.lock().unwrap();
        frames[mark.min(frames.len())..]
            .iter()
            .filter(|f| contains(f, needle))
            .cloned()
            .collect()
    }
}

impl Drop for FrameRecorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn set_timeout(fd: &OwnedFd, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as i64,
        tv_usec: t.subsec_micros() as i64,
    };
    // SAFETY: `tv` is a live timeval and the length passed is its size;
    // setsockopt only reads it. The fd is borrowed from `fd`, open.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
}

/// A socket address as the kernel wants it (IPv6 scope ids included).
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: sockaddr_storage is a C struct of integers and padding
    // bytes; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large (128 bytes) and aligned
            // enough for any sockaddr, sockaddr_in included: `ss` is valid
            // for this write, and both types are plain integer data.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6 (28 bytes, align 4).
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

/// A socket of `ty` (SOCK_DGRAM, SOCK_STREAM) bound to `bind` in the
/// current namespace; an IPv6 one takes IPv6 only, so that a wildcard
/// IPv4 socket can share the port.
fn bound_socket(ty: i32, bind: SocketAddr) -> OwnedFd {
    let fam = if bind.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() takes integers only; it returns a new fd or -1.
    let fd = unsafe { libc::socket(fam, ty | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd >= 0 (asserted above): a fresh socket, open and owned by
    // nothing else, so OwnedFd may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: i32 = 1;
    // SAFETY: `one` is a live i32 (captured by reference) and 4 is its
    // size; setsockopt only reads it. The fd is owned by `fd`.
    let opt = |level, name| unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&one as *const i32).cast(), 4)
    };
    opt(libc::SOL_SOCKET, libc::SO_REUSEADDR);
    if bind.is_ipv6() {
        opt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    }
    let (ss, len) = sockaddr(bind);
    // SAFETY: `ss` is a live sockaddr_storage holding an address of `len`
    // bytes (at most its size); bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "bind {bind}: {}", std::io::Error::last_os_error());
    fd
}

/// One TCP connection attempt from `local` to `to` (a link-local `to`
/// carries its scope id) in the current namespace: whether the handshake
/// completed within `timeout`.
pub fn tcp_connect_from(local: SocketAddr, to: SocketAddr, timeout: Duration) -> bool {
    let fd = bound_socket(libc::SOCK_STREAM | libc::SOCK_NONBLOCK, local);
    let (ss, len) = sockaddr(to);
    // SAFETY: `ss` is a live sockaddr_storage holding an address of `len`
    // bytes (at most its size); connect only reads it. The fd is owned by
    // `fd`.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return false;
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is one live, writable pollfd (count 1); poll writes
    // only its `revents`. Its fd is owned by `fd`.
    if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) } <= 0 {
        return false;
    }
    let mut err: i32 = 0;
    let mut elen = 4u32;
    // SAFETY: `err` is a live, writable i32 and `elen` (4) its size;
    // SO_ERROR writes at most that. The fd is owned by `fd`.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut i32).cast(),
            &mut elen,
        )
    };
    err == 0
}

/// Sends `payload` `n` times from `from` (port 0 for any) to `to` inside
/// the namespace of `pid`, 2 ms apart; broadcast allowed.
pub fn udp_send_bytes(pid: u32, from: SocketAddr, to: SocketAddr, payload: &[u8], n: u32) {
    let payload = payload.to_vec();
    crate::run_in(&netns_of(pid), move || {
        let s = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        s.set_broadcast(true).unwrap();
        for _ in 0..n {
            s.send_to(&payload, to)
                .unwrap_or_else(|e| panic!("send {from} -> {to}: {e}"));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

/// What [`Listeners`] received: datagrams (local port, peer, payload) and
/// accepted TCP connections (local port, peer).
#[derive(Default)]
pub struct SocketLog {
    pub datagrams: Vec<(u16, SocketAddr, Vec<u8>)>,
    pub accepted: Vec<(u16, SocketAddr)>,
}

/// Ordinary sockets inside a container's namespace, bound to the wildcard
/// addresses (IPv4 and IPv6) of every port given, recording everything
/// until dropped. UDP sockets join `groups` on `ifname`; a datagram that
/// starts with `echo:` is sent back. Every TCP connection is greeted with
/// `netiso-ok` and closed.
pub struct Listeners {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub log: std::sync::Arc<std::sync::Mutex<SocketLog>>,
    handles: Vec<JoinHandle<()>>,
}

impl Listeners {
    pub fn start(
        pid: u32,
        ifname: &'static str,
        udp: &[u16],
        tcp: &[u16],
        groups: &[std::net::IpAddr],
    ) -> Self {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = std::sync::Arc::new(std::sync::Mutex::new(SocketLog::default()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handles = Vec::new();
        let wild = |v6: bool, port: u16| -> SocketAddr {
            if v6 {
                (Ipv6Addr::UNSPECIFIED, port).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, port).into()
            }
        };
        let mut sockets = 0;
        for (v6, port) in udp.iter().flat_map(|p| [(false, *p), (true, *p)]) {
            let (flag, log, ready, groups) =
                (stop.clone(), log.clone(), ready_tx.clone(), groups.to_vec());
            sockets += 1;
            handles.push(std::thread::spawn(move || {
                enter(pid);
                let s = UdpSocket::from(bound_socket(libc::SOCK_DGRAM, wild(v6, port)));
                let name = std::ffi::CString::new(ifname).unwrap();
                // SAFETY: `name` is a NUL-terminated CString that lives
                // across the call; if_nametoindex only reads it.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                for g in groups {
                    match g {
                        IpAddr::V4(g) if !v6 => s.join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED),
                        IpAddr::V6(g) if v6 => s.join_multicast_v6(&g, ifindex),
                        _ => Ok(()),
                    }
                    .unwrap_or_else(|e| panic!("join {g}: {e}"));
                }
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready.send(()).unwrap();
                let mut buf = [0u8; 65536];
                let end = Instant::now() + Duration::from_secs(600);
                while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        if buf[..n].starts_with(b"echo:") {
                            let _ = s.send_to(&buf[..n], peer);
                        }
                        log.lock()
                            .unwrap()
                            .datagrams
                            .push((port, peer, buf[..n].to_vec()));
                    }
                }
            }));
        }
        for (v6, port) in tcp.iter().flat_map(|p| [(false, *p), (true, *p)]) {
            let (flag, log, ready) = (stop.clone(), log.clone(), ready_tx.clone());
            sockets += 1;
            handles.push(std::thread::spawn(move || {
                use std::io::Write as _;
                enter(pid);
                let fd = bound_socket(libc::SOCK_STREAM, wild(v6, port));
                // SAFETY: listen takes integers only; the fd is owned by
                // `fd`, a bound socket that outlives the call.
                assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 64) }, 0);
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                let end = Instant::now() + Duration::from_secs(600);
                while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                    match l.accept() {
                        Ok((mut c, peer)) => {
                            log.lock().unwrap().accepted.push((port, peer));
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(b"netiso-ok\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        for _ in 0..sockets {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("listener ready");
        }
        Self { stop, log, handles }
    }

    /// Datagrams received so far whose payload contains `needle`.
    pub fn datagrams_containing(&self, needle: &[u8]) -> u32 {
        let log = self.log.lock().unwrap();
        log.datagrams
            .iter()
            .filter(|(_, _, p)| contains(p, needle))
            .count() as u32
    }

    /// TCP connections accepted so far from `peer` (address and port).
    pub fn accepted_from(&self, peer: SocketAddr) -> u32 {
        let log = self.log.lock().unwrap();
        log.accepted
            .iter()
            .filter(|(_, p)| p.ip() == peer.ip() && p.port() == peer.port())
            .count() as u32
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
