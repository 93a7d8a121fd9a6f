//! A hand-made Docker-like host inside namespaces the test owns: a "host"
//! namespace with a bridge, and one namespace per "container" joined to it
//! by a veth pair. No traffic leaves these namespaces.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netiso_daemon::model::{Attachment, Container};

use crate::{sh, NetNs};

pub const NETWORK: &str = "testnet";

pub struct Guest {
    pub ns: NetNs,
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub mac: [u8; 6],
    pub host_if: String,
    pub host_ifindex: u32,
    pub labels: BTreeMap<String, String>,
}

impl Guest {
    /// This guest as the Docker watcher would describe it.
    pub fn container(&self) -> Container {
        Container {
            published: Vec::new(),
            id: format!("id-{}", self.name),
            name: self.name.clone(),
            image: "netiso-busybox:test".into(),
            labels: self.labels.clone(),
            pid: 0,
            network_mode: NETWORK.into(),
            networks: vec![Attachment {
                network: NETWORK.into(),
                network_id: "n1".into(),
                ipv4: Some(self.ip),
                ipv6: Some(self.ip6),
                mac: Some(self.mac),
                ipv4_prefix_len: None,
                host_ifindex: Some(self.host_ifindex),
                host_ifname: Some(self.host_if.clone()),
                host_netns: None,
            }],
            remote_node: None,
        }
    }
}

pub struct Topology {
    /// Guests are dropped before the host namespace.
    pub guests: Vec<Guest>,
    pub host: NetNs,
}

impl Topology {
    /// One guest per `(name, label value)`; the label is `netiso.group`.
    pub fn new(guests: &[(&str, &str)]) -> Self {
        let host = NetNs::new("h");
        host.sh(
            "ip link add br0 type bridge && ip link set br0 up && ip addr add 10.77.0.1/24 dev br0",
        );
        let mut out = Vec::new();
        for (i, (name, group)) in guests.iter().enumerate() {
            let n = i as u8 + 2;
            let ns = NetNs::new("c");
            let host_if = format!("vh{n}");
            let mac = [0x02, 0x77, 0, 0, 0, n];
            sh(&format!(
                "ip link add {host_if} netns {} type veth peer name eth0 netns {}",
                host.name, ns.name
            ));
            host.sh(&format!("ip link set {host_if} master br0 up"));
            ns.sh(&format!(
                "ip link set eth0 address 02:77:00:00:00:{n:02x} && ip addr add 10.77.0.{n}/24 dev eth0 && ip -6 addr add fd77::{n:x}/64 dev eth0 nodad && ip link set eth0 up"
            ));
            let host_ifindex = netiso_daemon::host::netlink::links_in_netns(&host.path())
                .unwrap()
                .into_iter()
                .find(|l| l.ifname == host_if)
                .expect("host veth")
                .ifindex;
            let mut labels = BTreeMap::new();
            if !group.is_empty() {
                labels.insert("netiso.group".to_string(), group.to_string());
            }
            out.push(Guest {
                ns,
                name: name.to_string(),
                ip: Ipv4Addr::new(10, 77, 0, n),
                ip6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, n as u16),
                mac,
                host_if,
                host_ifindex,
                labels,
            });
        }
        Self { guests: out, host }
    }

    pub fn guest(&self, name: &str) -> &Guest {
        self.guests.iter().find(|g| g.name == name).expect("guest")
    }

    pub fn containers(&self) -> Vec<Container> {
        self.guests.iter().map(Guest::container).collect()
    }
}

/// Runs `f` on a new thread inside `ns` (for servers that outlive the call).
pub fn spawn_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns only reads the fd of `file`, which we just opened and
        // hold across the call; CLONE_NEWNET moves only this thread, spawned
        // here to run `f`.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        f()
    })
}

/// A TCP echo server in `ns` on `port` that serves until `deadline`.
pub fn tcp_echo_server(ns: &NetNs, port: u16, lifetime: Duration) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let l = TcpListener::bind(("::", port)).expect("bind");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + lifetime;
        while Instant::now() < end {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 64];
                    if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                        let _ = std::io::Write::write_all(&mut s, &buf[..n]);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// A UDP echo server in `ns` on `port` that serves until `deadline`.
pub fn udp_echo_server(ns: &NetNs, port: u16, lifetime: Duration) -> JoinHandle<u32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + lifetime;
        let mut served = 0;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
                served += 1;
            }
        }
        served
    });
    rx.recv().unwrap();
    h
}

/// Whether a TCP connection from `ns` to `to` completes an echo round trip.
pub fn tcp_talks(ns: &NetNs, to: SocketAddr) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(1500)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        if std::io::Write::write_all(&mut s, b"ping").is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut buf).is_ok() && &buf == b"ping"
    })
}

/// Sends `count` UDP datagrams from `ns` to `to` and returns how many echoes came back.
pub fn udp_echoes(ns: &NetNs, to: SocketAddr, count: u32) -> u32 {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 64];
        for i in 0..count {
            s.send_to(format!("d{i}").as_bytes(), to).unwrap();
            if s.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    })
}

/// Whether one ICMP echo from `ns` to `ip` is answered.
pub fn pings(ns: &NetNs, ip: Ipv4Addr) -> bool {
    ns.sh_ok(&format!("ping -c 1 -W 1 {ip}"))
}

/// A TCP server in `ns` on `port` that echoes every message on every
/// connection until the peer closes (for long-lived connections).
pub fn tcp_stream_echo_server(ns: &NetNs, port: u16, lifetime: Duration) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let l = TcpListener::bind(("::", port)).expect("bind");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + lifetime;
        let mut workers = Vec::new();
        while Instant::now() < end {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(lifetime)).unwrap();
                    workers.push(std::thread::spawn(move || {
                        let mut buf = [0u8; 256];
                        while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                            if n == 0 || std::io::Write::write_all(&mut s, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// Whether a round trip of `msg` on an open connection works within `wait`.
pub fn round_trip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    if std::io::Write::write_all(s, msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    std::io::Read::read_exact(s, &mut buf).is_ok() && buf == msg
}

/// An IPv6 variant of [`tcp_talks`] (the address decides the family).
pub fn tcp6_talks(ns: &NetNs, ip: Ipv6Addr, port: u16) -> bool {
    tcp_talks(ns, SocketAddr::from((ip, port)))
}

/// Sends one UDP datagram of `size` bytes and waits for its echo.
pub fn udp_big_echo(ns: &NetNs, to: SocketAddr, size: usize) -> bool {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let msg = vec![0x5a; size];
        s.send_to(&msg, to).unwrap();
        let mut buf = vec![0u8; size + 16];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if n == size)
    })
}
