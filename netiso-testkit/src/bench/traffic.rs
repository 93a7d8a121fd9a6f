//! Traffic between two namespaces over veth and a bridge (inside a
//! bench-owned host namespace): no filter, netiso, iptables and nftables,
//! interleaved.
use std::io::{ErrorKind, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use netiso_daemon::datapath::Datapath;

use super::report::{Figure, Section};
use super::stats::{ratios, summary};
use super::workload::Workload;
use super::Options;
use crate::topology::{spawn_in, Topology};
use crate::{NetNs, PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    None,
    Netiso,
    Iptables,
    Nft,
}

impl Filter {
    const ALL: [Filter; 4] = [Filter::None, Filter::Netiso, Filter::Iptables, Filter::Nft];
    fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Netiso => "netiso",
            Filter::Iptables => "iptables",
            Filter::Nft => "nftables",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Netiso => "netiso (TC eBPF on both veths)",
            Filter::Iptables => "iptables, one rule per allowed pair and port (FORWARD)",
            Filter::Nft => "nftables, one set of allowed tuples (forward hook)",
        }
    }
}

const TESTS: [(&str, &str, &str); 3] = [
    (
        "udp_pps",
        "small-packet UDP (18-byte payload), received",
        "packets/s",
    ),
    (
        "tcp_cps",
        "TCP connections (connect, 1-byte reply, close)",
        "conn/s",
    ),
    ("tcp_bulk", "bulk TCP (iperf3, one stream)", "Gbit/s"),
];

const NFT_TABLE: &str = "netiso_bench";
const UDP_PORT: u16 = 7001;
const CRR_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;
/// No rule names it: the probe that shows a filter is active.
const DENIED_PORT: u16 = 7002;

struct Env {
    topo: Topology,
    dp: Datapath,
    _pins: PinDir,
    desired_on: netiso_daemon::datapath::Desired,
    desired_off: netiso_daemon::datapath::Desired,
    ipt_file: std::path::PathBuf,
    nft_file: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn ns_sh(ns: &NetNs, cmd: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", cmd])
        .output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` in {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn br_netfilter(host: &NetNs, on: bool) -> Result<()> {
    ns_sh(
        host,
        &format!(
            "echo {} > /proc/sys/net/bridge/bridge-nf-call-iptables",
            on as u8
        ),
    )
}

impl Env {
    fn enable(&mut self, f: Filter) -> Result<()> {
        let host = &self.topo.host;
        match f {
            Filter::None => br_netfilter(host, false)?,
            Filter::Netiso => {
                br_netfilter(host, false)?;
                let (dp, d) = (&mut self.dp, &self.desired_on);
                host.run(|| dp.apply(d))?;
            }
            Filter::Iptables => {
                ns_sh(
                    host,
                    &format!("iptables-restore < {}", self.ipt_file.display()),
                )?;
                br_netfilter(host, true)?;
            }
            Filter::Nft => {
                ns_sh(host, &format!("nft -f {}", self.nft_file.display()))?;
                br_netfilter(host, true)?;
            }
        }
        Ok(())
    }

    fn disable(&mut self, f: Filter) -> Result<()> {
        let host = &self.topo.host;
        br_netfilter(host, false)?;
        match f {
            Filter::None => {}
            Filter::Netiso => {
                let (dp, d) = (&mut self.dp, &self.desired_off);
                host.run(|| dp.apply(d))?;
            }
            Filter::Iptables => {
                ns_sh(
                    host,
                    "iptables -P FORWARD ACCEPT && iptables -F && iptables -X",
                )?;
                // iptables-nft leaves an empty table behind; remove it.
                let _ = ns_sh(host, "nft delete table ip filter");
            }
            Filter::Nft => ns_sh(host, &format!("nft delete table inet {NFT_TABLE}"))?,
        }
        Ok(())
    }
}

/// What a TCP connect to a port nobody listens on gives: `refused` when
/// packets flow, `timeout` when a filter drops them.
fn denied_probe(ns: &NetNs, to: SocketAddr) -> &'static str {
    ns.run(
        move || match TcpStream::connect_timeout(&to, Duration::from_millis(250)) {
            Ok(_) => "connected",
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused",
            Err(_) => "timeout",
        },
    )
}

/// Servers in `b` for the whole run: a UDP sink counting datagrams and a
/// TCP server answering every connection with one byte and closing.
struct Servers {
    stop: Arc<AtomicBool>,
    udp_rx: Arc<AtomicU64>,
    handles: Vec<JoinHandle<()>>,
}

fn start_servers(b: &NetNs) -> Servers {
    let stop = Arc::new(AtomicBool::new(false));
    let udp_rx = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (stop, count, tx) = (stop.clone(), udp_rx.clone(), tx.clone());
        handles.push(spawn_in(b, move || {
            let s = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind udp");
            let size: libc::c_int = 32 << 20;
            // SAFETY: `size` is a live c_int and the length passed is its
            // size; setsockopt only reads it. The fd is owned by `s`.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size as *const _ as *const libc::c_void,
                    size_of::<libc::c_int>() as u32,
                );
            }
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            const N: usize = 64;
            let mut bufs = vec![[0u8; 64]; N];
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr() as *mut libc::c_void,
                    iov_len: 64,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: mmsghdr is a C struct of integers and raw
                    // pointers; all-zero (null, empty) is a valid value.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `msgs` holds N headers, each naming one iovec of
                // `iovs` that points at 64 writable bytes of `bufs`; all three
                // Vecs live (unmoved) across the call, and recvmmsg writes
                // only into them. Null timeout: none. The fd is owned by `s`.
                let n = unsafe {
                    libc::recvmmsg(
                        s.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        N as u32,
                        0,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    {
        let (stop, tx) = (stop.clone(), tx.clone());
        handles.push(spawn_in(b, move || {
            let l = TcpListener::bind(("0.0.0.0", CRR_PORT)).expect("bind tcp");
            // std listens with a backlog of 128: a server thread that the
            // machine's other load keeps off the CPU for a moment would
            // overflow it and turn the test into one of SYN retransmits.
            // SAFETY: listen takes integers only; the fd is owned by `l`, a
            // bound listener that outlives the call.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = std::io::Write::write_all(&mut s, b"k");
                        // The server closes first: TIME_WAIT stays here, so
                        // the client never runs out of ports.
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // Poll the listener briefly instead of spinning.
                        let mut pfd = libc::pollfd {
                            fd: l.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: `pfd` is one live, writable pollfd (count
                        // 1); poll writes only its `revents`. Its fd is
                        // owned by `l`.
                        unsafe { libc::poll(&mut pfd, 1, 20) };
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    rx.recv().unwrap();
    rx.recv().unwrap();
    Servers {
        stop,
        udp_rx,
        handles,
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Received and sent UDP packets per second over `secs`, after a warm-up.
fn udp_pps(a: &NetNs, to: SocketAddr, rx: &AtomicU64, secs: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let h = {
        let (stop, sent) = (stop.clone(), sent.clone());
        spawn_in(a, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(to).unwrap();
            const N: usize = 32;
            let payload = [0x5au8; 18];
            let mut iovs: Vec<libc::iovec> = (0..N)
                .map(|_| libc::iovec {
                    iov_base: payload.as_ptr() as *mut libc::c_void,
                    iov_len: payload.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: mmsghdr is a C struct of integers and raw
                    // pointers; all-zero (null, empty) is a valid value.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `msgs` holds N headers, each naming one iovec of
                // `iovs` that points at `payload`; all live across the call.
                // sendmmsg only reads the data (the `*mut` is the C type's)
                // and writes the headers' `msg_len`. The fd is owned by `s`.
                let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), N as u32, 0) };
                if n > 0 {
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let (r0, s0, t0) = (
        rx.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (r1, s1, dt) = (
        rx.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = h.join();
    let dt = dt.as_secs_f64();
    ((r1 - r0) as f64 / dt, (s1 - s0) as f64 / dt)
}

/// Completed TCP connections per second, and failed attempts.
fn tcp_cps(a: &NetNs, to: SocketAddr, secs: f64) -> (f64, u64) {
    a.run(move || {
        let one = || -> bool {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 1];
            s.read_exact(&mut b).is_ok()
        };
        let warm = Instant::now() + Duration::from_millis(200);
        while Instant::now() < warm {
            one();
        }
        let (t0, mut ok, mut failed) = (Instant::now(), 0u64, 0u64);
        while t0.elapsed().as_secs_f64() < secs {
            if one() {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        (ok as f64 / t0.elapsed().as_secs_f64(), failed)
    })
}

/// Bulk TCP throughput with iperf3, Gbit/s received.
fn tcp_bulk(a: &NetNs, b: &NetNs, to: Ipv4Addr, secs: f64) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &b.name, "iperf3", "-s", "-1", "-p"])
        .arg(IPERF_PORT.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let secs = secs.round().max(1.0) as u32;
    let mut result = None;
    let mut last_err = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let out = Command::new("ip")
            .args(["netns", "exec", &a.name, "iperf3", "-c"])
            .arg(to.to_string())
            .args(["-p", &IPERF_PORT.to_string(), "-J", "-t", &secs.to_string()])
            .output()
            .context("running iperf3 -c")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            result = Some(bps / 1e9);
            break;
        }
        last_err = v["error"].as_str().unwrap_or("no JSON").to_string();
        if !last_err.contains("unable to connect") {
            break;
        }
    }
    // The one-off server exits after its test; do not wait for ever.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = server.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if server.try_wait().ok().flatten().is_none() {
        let _ = server.kill();
        let _ = server.wait();
    }
    result.with_context(|| format!("iperf3 gave no result: {last_err}"))
}

pub fn run(opts: &Options) -> Result<Section> {
    let topo = Topology::new(&[("a", "g0"), ("b", "g1")]);
    let (ga, gb) = (&topo.guests[0], &topo.guests[1]);
    // Many short connections: the whole port range, no TIME_WAIT limits
    // on the client (the server closes first).
    ns_sh(
        &ga.ns,
        "echo 1024 65535 > /proc/sys/net/ipv4/ip_local_port_range",
    )?;
    // Conntrack (iptables, nftables) keeps closed connections 120 s by
    // default; thousands of connections per second would fill the table
    // and turn the comparison into one of table sizes.
    ns_sh(
        &topo.host,
        "echo 2 > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait 2>/dev/null || true",
    )?;
    let ngroups = 200;
    let w = Workload::traffic(opts.traffic_rules, ga.container(), gb.container(), ngroups);
    let desired_on = w.desired()?;
    anyhow::ensure!(desired_on.endpoints.len() == 2, "both guests are endpoints");
    let mut desired_off = desired_on.clone();
    desired_off.endpoints.clear();
    let tmp = tempfile::tempdir()?;
    let ipt_file = tmp.path().join("iptables.rules");
    let nft_file = tmp.path().join("nftables.nft");
    let ipt = w.iptables_restore();
    let ipt_rules = ipt.lines().filter(|l| l.starts_with("-A")).count();
    std::fs::write(&ipt_file, ipt)?;
    std::fs::write(&nft_file, w.nft_script(NFT_TABLE))?;
    let pins = PinDir::new();
    let path = pins.path.clone();
    let dd = desired_off.clone();
    let dp = topo.host.run(move || -> Result<Datapath> {
        let mut dp = Datapath::load(&path)?;
        dp.apply(&dd)?;
        Ok(dp)
    })?;
    let entries = desired_on.policy.len();
    let mut env = Env {
        topo,
        dp,
        _pins: pins,
        desired_on,
        desired_off,
        ipt_file,
        nft_file,
        _tmp: tmp,
    };
    let b_ip = env.topo.guests[1].ip;
    let a_ns_name = env.topo.guests[0].ns.name.clone();
    let b_ns_name = env.topo.guests[1].ns.name.clone();
    let servers = start_servers(&env.topo.guests[1].ns);

    // results[filter][test] per rep
    let mut results = vec![vec![Vec::<f64>::new(); 3]; 4];
    let mut sent = vec![Vec::<f64>::new(); 4];
    let mut failed_conns = [0u64; 4];
    println!(
        "bench: traffic: {} filters x {} reps x 3 tests x {} s",
        Filter::ALL.len(),
        opts.traffic_reps,
        opts.traffic_secs
    );
    // Each test runs under every filter back to back (order rotated per
    // repetition), so that the runs a ratio pairs are seconds apart: the
    // machine's other load moves less in between.
    let mut netiso_drops: std::collections::BTreeMap<String, u64> = Default::default();
    for rep in 0..opts.traffic_reps {
        for (ti, (tid, _, unit)) in TESTS.iter().enumerate() {
            for j in 0..Filter::ALL.len() {
                let fi = (j + rep) % Filter::ALL.len();
                let f = Filter::ALL[fi];
                env.enable(f)
                    .with_context(|| format!("enabling {}", f.name()))?;
                let (a_ns, b_ns) = (&env.topo.guests[0].ns, &env.topo.guests[1].ns);
                let want = if f == Filter::None {
                    "refused"
                } else {
                    "timeout"
                };
                let mut probe = denied_probe(a_ns, SocketAddr::from((b_ip, DENIED_PORT)));
                // A busy machine can be slow to answer even without a
                // filter; a filter that lets the probe through is not.
                for _ in 0..3 {
                    if probe == want || want != "refused" {
                        break;
                    }
                    probe = denied_probe(a_ns, SocketAddr::from((b_ip, DENIED_PORT)));
                }
                if probe != want {
                    bail!(
                        "{}: a connection to a port no rule allows gave `{probe}`, expected `{want}`: the filter is not doing its job, so its figures would mean nothing",
                        f.name()
                    );
                }
                let value = match ti {
                    0 => {
                        let (rx, tx) = udp_pps(
                            a_ns,
                            SocketAddr::from((b_ip, UDP_PORT)),
                            &servers.udp_rx,
                            opts.traffic_secs,
                        );
                        sent[fi].push(tx);
                        rx
                    }
                    1 => {
                        let (cps, failed) =
                            tcp_cps(a_ns, SocketAddr::from((b_ip, CRR_PORT)), opts.traffic_secs);
                        failed_conns[fi] += failed;
                        cps
                    }
                    _ => tcp_bulk(a_ns, b_ns, b_ip, opts.traffic_secs)?,
                };
                results[fi][ti].push(value);
                if f == Filter::Netiso {
                    // Allowed traffic must not be dropped; anything the
                    // datapath dropped is reported with its reason.
                    let map = env
                        .dp
                        .ebpf()
                        .map(netiso_common::maps::FLOWS)
                        .context("flows map")?;
                    for (k, v) in netiso_daemon::datapath::counters::flows(map)? {
                        if k.dport == DENIED_PORT {
                            continue;
                        }
                        let reason = netiso_common::DropReason::from_u8(k.reason)
                            .map_or_else(|| k.reason.to_string(), |r| r.as_str().to_string());
                        *netiso_drops
                            .entry(format!("{reason} (proto {}, port {})", k.proto, k.dport))
                            .or_default() = v.packets;
                    }
                }
                env.disable(f)
                    .with_context(|| format!("disabling {}", f.name()))?;
                println!(
                    "bench: traffic rep {rep} {tid:>8} {:>8}: {value:.2} {unit}",
                    f.name()
                );
            }
        }
    }
    drop(servers);

    let mut sec = Section::new(
        "Traffic between two namespaces (veth + bridge)",
        format!(
            "A bench-owned host namespace holds a bridge; namespaces `a` and `b` hang off it by veth pairs, as containers do. Each repetition runs each test under every filter back to back (filter order rotated per repetition): the filter is switched on, a connection to a port no rule allows must time out (so the filter is known to work), the test runs, the filter is switched off. Ratios pair each repetition with the no-filter run of the same repetition. The policy has {rules} rules over {ngroups} groups (one container each; only `a` and `b` exist, the other containers are identities without veths); the rule that allows the measured traffic (`a` → `b` on 5201/tcp, 7000/tcp, 7001/udp) is in the middle of the list; every group denies ingress by default.\n\n\
- **netiso**: programs on both host-side veths (TC ingress of `a`'s, TC egress of `b`'s), {entries} policy map entries; bridge netfilter off.\n\
- **iptables**: `bridge-nf-call-iptables=1` and {ipt_rules} rules in FORWARD: `ESTABLISHED,RELATED` first, then one ACCEPT per allowed (source, destination, protocol, port), then the DROP policy. One-way UDP never becomes ESTABLISHED in conntrack, so every UDP packet walks the rules up to its own.\n\
- **nftables**: `bridge-nf-call-iptables=1`, an `inet` table with a forward chain (policy drop): `ct state established,related accept`, then one lookup in a set of (saddr . daddr . l4proto . dport) with every allowed tuple.\n\
- **no filter**: the same topology, bridge netfilter off.\n\n\
UDP: one sender thread (`sendmmsg` of 32 datagrams with 18-byte payloads, 60-byte frames) and one receiver (`recvmmsg`, 32 MiB buffer); the figure is datagrams received per second over {secs} s after 0.2 s of warm-up. TCP connections: one client connecting, reading a 1-byte answer the server sends before closing (listen backlog 4096), {secs} s after warm-up. Bulk: `iperf3 -t {bulk}` (one stream).",
            rules = opts.traffic_rules,
            secs = opts.traffic_secs,
            bulk = opts.traffic_secs.round().max(1.0),
        ),
    );
    sec.cond("repetitions", opts.traffic_reps);
    sec.cond("seconds per test", opts.traffic_secs);
    sec.cond("policy rules", opts.traffic_rules);
    sec.cond("netiso policy map entries", entries);
    sec.cond("iptables rules in FORWARD", ipt_rules);
    sec.cond(
        "conntrack TIME_WAIT timeout in the host namespace",
        "2 s (default 120 s)",
    );
    sec.cond("MTU", "1500");
    sec.cond(
        "packets netiso dropped in its runs (allowed traffic should have none)",
        if netiso_drops.is_empty() {
            "none".to_string()
        } else {
            netiso_drops
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    sec.cond("namespaces", format!("a = {a_ns_name}, b = {b_ns_name}"));
    for (ti, (tid, tlabel, unit)) in TESTS.iter().enumerate() {
        for (fi, f) in Filter::ALL.iter().enumerate() {
            let v = &results[fi][ti];
            let mut fig = Figure::new(
                format!("traffic.{tid}.{}", f.name()),
                format!("{tlabel}: {}", f.label()),
                unit,
                summary(v),
            )
            .cond("filter", f.name());
            if *f != Filter::None {
                let r = summary(&ratios(v, &results[0][ti]));
                fig = fig.ratio("no filter", r);
                if *f == Filter::Netiso && ti < 2 {
                    // Issue 12: ≥ 0.95× no filter, on the median of interleaved runs.
                    fig = fig.target("≥ 0.95× no filter", r.median >= 0.95);
                }
            }
            if ti == 0 {
                fig = fig.extra("sent_per_s_median", super::stats::median(&sent[fi]));
            }
            if ti == 1 {
                fig = fig.extra("failed_connects", failed_conns[fi] as f64);
            }
            sec.figures.push(fig);
        }
    }
    let mut t = String::from(
        "| test | no filter | netiso | iptables | nftables |\n|---|---|---|---|---|\n",
    );
    for (ti, (tid, tlabel, unit)) in TESTS.iter().enumerate() {
        let mut row = format!("| {tlabel} ({unit}) |");
        for f in Filter::ALL {
            let fig = sec.figure(&format!("traffic.{tid}.{}", f.name())).unwrap();
            let _ = ti;
            match fig.ratio {
                Some(r) => row.push_str(&format!(
                    " {} ({}×, {} – {}) |",
                    super::report::fmt_num(fig.value.median),
                    super::report::fmt_num(r.median),
                    super::report::fmt_num(r.min),
                    super::report::fmt_num(r.max)
                )),
                None => row.push_str(&format!(" {} |", super::report::fmt_num(fig.value.median))),
            }
        }
        t.push_str(&row);
        t.push('\n');
    }
    sec.notes.push(format!(
        "Medians over repetitions; in brackets the ratio to no filter (median, min – max of the per-repetition ratios).\n\n{t}"
    ));
    Ok(sec)
}
