//! Running probes from inside the source container's network namespace:
//! TCP connect, UDP with a temporary listener, ICMP echo.
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::{Observed, Plan, ProbeProto};

fn enter(netns: &Option<PathBuf>, home: &File) -> Result<()> {
    let rc = match netns {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: setns only reads the fd of `f`, a file we just opened
            // and hold across the call; CLONE_NEWNET moves only the calling
            // thread, a probe thread of ours that ends with the probe.
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }
        }
        // SAFETY: as above, with the fd of `home`, a file the caller keeps
        // open: back to the namespace this thread started in.
        None => unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) },
    };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn probe_tcp(to: SocketAddr, timeout: Duration) -> Observed {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Observed::Open,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Observed::NoAnswer,
        Err(e) => Observed::Error(e.to_string()),
    }
}

static NONCE: AtomicU16 = AtomicU16::new(1);

/// UDP with a temporary listener in the destination's namespace when the
/// port is free there; else by reply or ICMP error.
fn probe_udp(p: &Plan, timeout: Duration, listen: bool, home: &File) -> Observed {
    let to = SocketAddr::V4(SocketAddrV4::new(p.to.ip, p.port));
    let nonce = format!(
        "netiso-verify-{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    );
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<bool>>();
        let listener = listen.then(|| {
            let dst_ns = p.to.netns.clone();
            let nonce = nonce.clone();
            // A new thread starts in its creator's namespace (the
            // source's): `home` is the host's, for a host destination.
            s.spawn(move || -> Option<bool> {
                if let Err(e) = enter(&dst_ns, home) {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
                let sock = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p.port)) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        let _ = ready_tx.send(Ok(false));
                        return None;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok(true));
                let end = Instant::now() + timeout;
                let mut buf = [0u8; 256];
                while let Some(left) = end.checked_duration_since(Instant::now()) {
                    let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    match sock.recv_from(&mut buf) {
                        Ok((n, _)) if &buf[..n] == nonce.as_bytes() => return Some(true),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                Some(false)
            })
        });
        let listening = match &listener {
            Some(_) => match ready_rx.recv() {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Observed::Error(format!("{e:#}")),
                Err(_) => false,
            },
            None => false,
        };
        let sent = (|| -> std::io::Result<Option<Observed>> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(to)?;
            for _ in 0..2 {
                sock.send(nonce.as_bytes())?;
                std::thread::sleep(Duration::from_millis(50));
            }
            if listening {
                return Ok(None);
            }
            sock.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 64];
            Ok(Some(match sock.recv(&mut buf) {
                Ok(_) => Observed::Replied,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Observed::Refused,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Observed::Silent
                }
                Err(e) => Observed::Error(e.to_string()),
            }))
        })();
        match (sent, listener) {
            (Err(e), _) => Observed::Error(e.to_string()),
            (Ok(Some(o)), _) => o,
            (Ok(None), Some(h)) => match h.join() {
                Ok(Some(true)) => Observed::Delivered,
                Ok(Some(false)) => Observed::NoAnswer,
                _ => Observed::Error("the listener failed".into()),
            },
            (Ok(None), None) => Observed::Error("no listener".into()),
        }
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn probe_icmp(to: Ipv4Addr, timeout: Duration) -> Observed {
    let id = NONCE.fetch_add(1, Ordering::Relaxed);
    // SAFETY: socket() takes no pointers; it returns a new fd (owned by
    // nothing else yet) or -1, which is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Observed::Error(format!(
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is non-negative (checked above) and was just returned by
    // socket(): open, and owned by nothing else, so OwnedFd may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut pkt = [0u8; 16];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&1u16.to_be_bytes());
    pkt[8..16].copy_from_slice(b"netisovf");
    let ck = checksum(&pkt);
    pkt[2..4].copy_from_slice(&ck.to_be_bytes());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `pkt` and `sa` are live locals and the lengths passed are
    // their sizes; sendto only reads them. The fd is owned by `fd`.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Observed::Error(format!("sending echo: {}", std::io::Error::last_os_error()));
    }
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1000) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a live timeval and the length is its size;
        // setsockopt only reads it. The fd is owned by `fd`.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: `buf` is a live, writable local of `buf.len()` bytes, and
        // recv writes at most that many. The fd is owned by `fd`.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        let b = &buf[..n as usize];
        // Raw sockets deliver the IP header: skip it.
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if b.len() < ihl + 8 || b[12..16] != to.octets() {
            continue;
        }
        let icmp = &b[ihl..];
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return Observed::Echo;
        }
    }
    Observed::NoAnswer
}

fn run_probe(p: &Plan, timeout: Duration, listen: bool, home: &File) -> Observed {
    if let Err(e) = enter(&p.from.netns, home) {
        return Observed::Error(format!("{e:#}"));
    }
    match p.proto {
        ProbeProto::Tcp => probe_tcp(SocketAddr::V4(SocketAddrV4::new(p.to.ip, p.port)), timeout),
        ProbeProto::Udp => probe_udp(p, timeout, listen, home),
        ProbeProto::Icmp => probe_icmp(p.to.ip, timeout),
    }
}

/// Runs the probes on `parallel` threads. Two UDP probes that would listen
/// on the same port in the same namespace never run at once.
pub fn run_probes(
    plans: &[Plan],
    timeout: Duration,
    parallel: usize,
    listen: bool,
    mut progress: impl FnMut(usize, usize) + Send,
) -> Vec<Observed> {
    type Key = (Option<PathBuf>, u16);
    struct Queue {
        todo: VecDeque<usize>,
        busy: HashSet<Key>,
        done: usize,
    }
    let key = |p: &Plan| -> Option<Key> {
        (p.proto == ProbeProto::Udp).then(|| (p.to.netns.clone(), p.port))
    };
    let q = Mutex::new(Queue {
        todo: (0..plans.len()).collect(),
        busy: HashSet::new(),
        done: 0,
    });
    let cv = Condvar::new();
    let results: Mutex<Vec<Option<Observed>>> = Mutex::new(vec![None; plans.len()]);
    let progress = Mutex::new(&mut progress);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, 64) {
            s.spawn(|| {
                // Every worker returns home before it takes a job for the
                // host (setns only affects this thread).
                let home = match File::open("/proc/thread-self/ns/net") {
                    Ok(f) => f,
                    Err(_) => return,
                };
                loop {
                    let i = {
                        let mut g = q.lock().unwrap();
                        loop {
                            if g.todo.is_empty() {
                                return;
                            }
                            let pos = g
                                .todo
                                .iter()
                                .position(|&i| key(&plans[i]).is_none_or(|k| !g.busy.contains(&k)));
                            match pos {
                                Some(pos) => {
                                    let i = g.todo.remove(pos).unwrap();
                                    if let Some(k) = key(&plans[i]) {
                                        g.busy.insert(k);
                                    }
                                    break i;
                                }
                                None => g = cv.wait(g).unwrap(),
                            }
                        }
                    };
                    let obs = run_probe(&plans[i], timeout, listen, &home);
                    results.lock().unwrap()[i] = Some(obs);
                    let done = {
                        let mut g = q.lock().unwrap();
                        if let Some(k) = key(&plans[i]) {
                            g.busy.remove(&k);
                        }
                        g.done += 1;
                        g.done
                    };
                    cv.notify_all();
                    (progress.lock().unwrap())(done, plans.len());
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Observed::Error("not run".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum() {
        // Echo request, id 1 seq 1, no payload: checksum 0xf7fd.
        let mut p = [8u8, 0, 0, 0, 0, 1, 0, 1];
        let c = checksum(&p);
        assert_eq!(c, 0xf7fd);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
