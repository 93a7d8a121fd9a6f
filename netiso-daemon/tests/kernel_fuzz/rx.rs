//! The victim's receivers and the attacker's raw sender.
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::gen::{find, has_flow_word, read_tag, short_mark, GROUP4, GROUP6, PORTS};

/// A frame or datagram that carried the marker into the victim.
#[derive(Clone, Debug)]
pub struct Catch {
    /// Which receiver saw it (`packet`, `udp4:5555`, `raw6:58`, ...).
    pub via: String,
    /// The sequence number in its tag (which frame of the run it is).
    pub seq: Option<u32>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Received {
    /// Marker catches per receiver.
    pub counts: BTreeMap<String, u64>,
    /// The first catches (bounded).
    pub catches: Vec<Catch>,
    /// The first frames the AF_PACKET receiver saw that carried nothing
    /// of the marker (for the report).
    pub others: Vec<Vec<u8>>,
    /// Frames the AF_PACKET receiver saw in all (any content).
    pub frames_seen: u64,
    /// How often each watched frame (see [`Victim::start`]) arrived.
    pub watched: Vec<u64>,
    /// Frames the AF_PACKET socket dropped (its queue overflowed).
    pub packet_drops: u64,
}

impl Received {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

fn check(rc: i32, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

fn socket(domain: i32, ty: i32, proto: i32) -> OwnedFd {
    // SAFETY: socket() takes integers only; it returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    check(fd, "socket");
    // SAFETY: `check` panicked unless fd >= 0: a fresh socket, open and
    // owned by nothing else, so OwnedFd may close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T) {
    // SAFETY: `v` is a live reference, so size_of::<T>() bytes are readable
    // at it for the call, and setsockopt only reads that many (it rejects a
    // length wrong for the option). The fd is owned by `fd`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    check(rc, "setsockopt");
}

fn big_buffer(fd: &OwnedFd) {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(32i32 << 20));
}

fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a NUL-terminated CString that lives across the call;
    // if_nametoindex only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
    assert!(i > 0, "no interface {name} here");
    i
}

fn bind4(fd: &OwnedFd, port: u16) {
    // SAFETY: sockaddr_in is a C struct of integers; all-zero is valid (the
    // unspecified address).
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    // SAFETY: `sa` is a live sockaddr_in and the length passed is its size;
    // bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    check(rc, "bind udp4");
}

fn bind6(fd: &OwnedFd, port: u16) {
    // SAFETY: sockaddr_in6 is a C struct of integers and byte arrays;
    // all-zero is valid (the unspecified address).
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    // SAFETY: `sa` is a live sockaddr_in6 and the length passed is its
    // size; bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    check(rc, "bind udp6");
}

/// An AF_PACKET socket for every protocol, bound to `ifname`.
fn packet_socket(ifname: &str, proto: u16) -> (OwnedFd, i32) {
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be()));
    let idx = ifindex(ifname);
    // SAFETY: sockaddr_ll is a C struct of integers and a byte array;
    // all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = idx;
    // SAFETY: `sll` is a live sockaddr_ll and the length passed is its
    // size; bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    check(rc, "bind AF_PACKET");
    (fd, idx)
}

/// Catches kept (each is counted regardless).
pub const MAX_CATCHES: usize = 20_000;

/// Raw IPv4 protocols and raw IPv6 next headers the victim listens to.
pub const RAW4: [i32; 7] = [1, 2, 6, 17, 58, 253, 4];
pub const RAW6: [i32; 5] = [58, 17, 6, 253, 2];

/// Receivers in the victim's namespace, from [`Victim::start`] until
/// [`Victim::stop`].
pub struct Victim {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Received>>,
    snapshot: Arc<std::sync::Mutex<(u64, std::collections::BTreeSet<u32>)>>,
}

impl Victim {
    /// Opens every receiver inside the namespace at `netns` (returns once
    /// they are all open).
    /// `watch`: frames to count when they arrive exactly as sent.
    pub fn start(
        netns: PathBuf,
        ifname: &'static str,
        marker: [u8; 8],
        watch: Vec<Vec<u8>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(std::sync::Mutex::new((0, Default::default())));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop2, snap2) = (stop.clone(), snapshot.clone());
        let handle = std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns).expect("open netns");
            // SAFETY: setns only reads the fd of `ns`, a file we just opened
            // and hold across the call; CLONE_NEWNET moves only this thread,
            // which we spawned for the receivers and which ends with them.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            check(rc, "setns");
            let rx = Sockets::open(ifname);
            ready_tx.send(()).unwrap();
            rx.run(&marker, &watch, &stop2, &snap2)
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("victim receivers ready");
        Self {
            stop,
            handle: Some(handle),
            snapshot,
        }
    }

    /// Marker catches so far, and their sequence numbers.
    pub fn so_far(&self) -> (u64, std::collections::BTreeSet<u32>) {
        self.snapshot.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> Received {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("victim receiver panicked")
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Sockets {
    packet: OwnedFd,
    /// (name, socket)
    others: Vec<(String, OwnedFd)>,
}

impl Sockets {
    fn open(ifname: &str) -> Self {
        let (packet, idx) = packet_socket(ifname, libc::ETH_P_ALL as u16);
        big_buffer(&packet);
        let mut others = Vec::new();
        for port in PORTS {
            let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            setsockopt(&s, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32);
            big_buffer(&s);
            bind4(&s, port);
            let m = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(GROUP4.octets()),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: idx,
            };
            setsockopt(&s, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &m);
            others.push((format!("udp4:{port}"), s));
            let s = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0);
            setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1i32);
            big_buffer(&s);
            bind6(&s, port);
            let m = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: GROUP6.octets(),
                },
                ipv6mr_interface: idx as u32,
            };
            setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &m);
            others.push((format!("udp6:{port}"), s));
        }
        for p in RAW4 {
            let s = socket(libc::AF_INET, libc::SOCK_RAW, p);
            big_buffer(&s);
            others.push((format!("raw4:{p}"), s));
        }
        for p in RAW6 {
            let s = socket(libc::AF_INET6, libc::SOCK_RAW, p);
            big_buffer(&s);
            others.push((format!("raw6:{p}"), s));
        }
        Self { packet, others }
    }

    fn run(
        self,
        marker: &[u8; 8],
        watch: &[Vec<u8>],
        stop: &AtomicBool,
        snapshot: &std::sync::Mutex<(u64, std::collections::BTreeSet<u32>)>,
    ) -> Received {
        let mut out = Received {
            watched: vec![0; watch.len()],
            ..Received::default()
        };
        let mut fds: Vec<libc::pollfd> = std::iter::once(&self.packet)
            .chain(self.others.iter().map(|(_, s)| s))
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut buf = vec![0u8; 70_000];
        let short = short_mark(marker);
        let record = |out: &mut Received, via: &str, data: &[u8]| {
            // The full marker (a tag), or, in a frame, the marker's first
            // six bytes or its IPv6 flow word (tagless control frames).
            let via = if find(data, marker).is_some() {
                via.to_string()
            } else if via == "packet" && find(data, &short).is_some() {
                "packet:short-marker".to_string()
            } else if via == "packet" && has_flow_word(data, marker) {
                "packet:flow-label".to_string()
            } else {
                if via == "packet" && out.others.len() < 20 {
                    out.others.push(data.to_vec());
                }
                return;
            };
            let via = via.as_str();
            {
                *out.counts.entry(via.to_string()).or_default() += 1;
                let seq = read_tag(data, marker);
                if out.catches.len() < MAX_CATCHES {
                    out.catches.push(Catch {
                        via: via.to_string(),
                        seq,
                        bytes: data.to_vec(),
                    });
                }
                let mut s = snapshot.lock().unwrap();
                s.0 += 1;
                if let Some(seq) = seq {
                    s.1.insert(seq);
                }
            }
        };
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            // SAFETY: `fds` is a live Vec of `fds.len()` pollfds; poll
            // writes only their `revents`. Every fd in it is owned by `self`,
            // open until `self` is dropped after this loop.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as u64, 20) };
            if n <= 0 {
                if stopping {
                    break;
                }
                continue;
            }
            for (i, p) in fds.iter_mut().enumerate() {
                if p.revents == 0 {
                    continue;
                }
                p.revents = 0;
                loop {
                    // SAFETY: sockaddr_ll is a C struct of integers and a
                    // byte array; all-zero is valid.
                    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = size_of::<libc::sockaddr_ll>() as u32;
                    // SAFETY: `buf` is writable for `buf.len()` bytes and
                    // `sll` for `len`, both live locals; recvfrom writes at
                    // most that (truncating a longer address). `p.fd` is
                    // owned by `self`, still open.
                    let r = unsafe {
                        libc::recvfrom(
                            p.fd,
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut sll as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        )
                    };
                    if r < 0 {
                        break;
                    }
                    let data = &buf[..r as usize];
                    if i == 0 {
                        // Only frames arriving, not the victim's own.
                        if sll.sll_pkttype == libc::PACKET_OUTGOING {
                            continue;
                        }
                        out.frames_seen += 1;
                        if let Some(w) = watch.iter().position(|w| w.as_slice() == data) {
                            out.watched[w] += 1;
                        }
                        record(&mut out, "packet", data);
                    } else {
                        let via = self.others[i - 1].0.clone();
                        record(&mut out, &via, data);
                    }
                }
            }
        }
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: `st` is a live, writable tpacket_stats and `len` its size;
        // PACKET_STATISTICS writes at most `len` bytes. The fd is owned by
        // `self.packet`.
        let rc = unsafe {
            libc::getsockopt(
                self.packet.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        check(rc, "PACKET_STATISTICS");
        out.packet_drops = st.tp_drops as u64;
        out
    }
}

/// Sends frames from the attacker's interface with an AF_PACKET socket
/// (what a container with Docker's default CAP_NET_RAW can do).
pub struct Sender {
    fd: OwnedFd,
    /// The same with PACKET_VNET_HDR: each frame is preceded by a
    /// `virtio_net_hdr` (GSO and checksum offload requests, which
    /// CAP_NET_RAW alone may make).
    vnet: OwnedFd,
    pub errors: BTreeMap<i32, u64>,
}

fn bound_packet_socket(ifname: &str, vnet: bool) -> OwnedFd {
    // SAFETY: socket() takes integers only; it returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    check(fd, "AF_PACKET socket");
    // SAFETY: `check` panicked unless fd >= 0: a fresh socket, open and
    // owned by nothing else, so OwnedFd may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if vnet {
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1i32);
    }
    // SAFETY: sockaddr_ll is a C struct of integers and a byte array;
    // all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = 0;
    sll.sll_ifindex = ifindex(ifname);
    // SAFETY: `sll` is a live sockaddr_ll and the length passed is its
    // size; bind only reads it. The fd is owned by `fd`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    check(rc, "bind the sender");
    fd
}

impl Sender {
    /// Opens the sockets; call on a thread inside the attacker's namespace.
    pub fn open(ifname: &str) -> Self {
        Self {
            fd: bound_packet_socket(ifname, false),
            vnet: bound_packet_socket(ifname, true),
            errors: BTreeMap::new(),
        }
    }

    /// Sends one frame; false (and the errno counted) if the kernel refused it.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_with(None, frame)
    }

    /// Sends one frame, after a `virtio_net_hdr` if `vnet` is given.
    pub fn send_with(&mut self, vnet: Option<&[u8; 10]>, frame: &[u8]) -> bool {
        let (fd, buf) = match vnet {
            Some(h) => (&self.vnet, [&h[..], frame].concat()),
            None => (&self.fd, frame.to_vec()),
        };
        for _ in 0..50 {
            // SAFETY: `buf` is a live Vec and the length passed is its own;
            // send only reads it. The fd is owned by `self`.
            let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
            if r == buf.len() as isize {
                return true;
            }
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::ENOBUFS || e == libc::EAGAIN {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            *self.errors.entry(e).or_default() += 1;
            return false;
        }
        *self.errors.entry(libc::ENOBUFS).or_default() += 1;
        false
    }
}
