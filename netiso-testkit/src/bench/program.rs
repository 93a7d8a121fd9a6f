//! Program cost through BPF_PROG_TEST_RUN, beside an empty TC program
//! measured in the same run.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::maps::HashMap as BpfHashMap;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use netiso_common::{
    family, maps, peer_flags, programs, tc, CtKey, Endpoint, IdentityInfo, IpKey,
    DEFAULT_CROSS_VETH_MARK,
};
use netiso_daemon::datapath::{Datapath, Desired};

use super::report::{fmt_num, Figure, Section};
use super::stats::{median, ratios, summary, Summary};
use super::workload::{v4, v6, Workload, TCP, UDP};
use super::{rawbpf, Options};
use crate::frames::{self, eth, ipv4, ipv6, tcp, udp, ACK, MAC_A, SYN};
use crate::{NetNs, PinDir};

const OUT: &str = programs::FROM_CONTAINER;
const IN: &str = programs::TO_CONTAINER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    name: &'static str,
    v6: bool,
    proto: u8,
    /// Allowed destination port (rule 1).
    port: u16,
    /// A port no rule names: A's egress default denies it.
    denied_port: u16,
}

const FLOWS: [Flow; 4] = [
    Flow {
        name: "tcp4",
        v6: false,
        proto: TCP,
        port: 80,
        denied_port: 8081,
    },
    Flow {
        name: "udp4",
        v6: false,
        proto: UDP,
        port: 53,
        denied_port: 5353,
    },
    Flow {
        name: "tcp6",
        v6: true,
        proto: TCP,
        port: 80,
        denied_port: 8081,
    },
    Flow {
        name: "udp6",
        v6: true,
        proto: UDP,
        port: 53,
        denied_port: 5353,
    },
];

/// Source ports: one flow for established packets, one re-created for
/// every first-packet sample, one for denied packets.
const SPORT_EST: u16 = 40_000;
const SPORT_FIRST: u16 = 40_001;
const SPORT_DENY: u16 = 40_002;

fn a4() -> Ipv4Addr {
    v4(Ipv4Addr::new(10, 128, 0, 1), 0)
}
fn b4() -> Ipv4Addr {
    v4(Ipv4Addr::new(10, 128, 0, 1), 1)
}
fn a6() -> Ipv6Addr {
    v6(1)
}
fn b6() -> Ipv6Addr {
    v6(2)
}

/// A frame from A to B. `flags` only matter for TCP.
fn frame(f: Flow, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let l4 = if f.proto == TCP {
        tcp(sport, dport, flags)
    } else {
        udp(sport, dport, &[0u8; 18])
    };
    if f.v6 {
        eth(
            MAC_A,
            frames::MAC_B,
            0x86dd,
            &ipv6(a6(), b6(), f.proto, &l4),
        )
    } else {
        eth(
            MAC_A,
            frames::MAC_B,
            0x0800,
            &ipv4(a4(), b4(), f.proto, 1, 0, &l4),
        )
    }
}

/// The conntrack entry endpoint A (ifindex 1 under BPF_PROG_TEST_RUN)
/// keeps for a connection it opened: one entry per connection.
fn ct_key(f: Flow, sport: u16, dport: u16) -> CtKey {
    let (mut local, mut remote) = ([0u8; 16], [0u8; 16]);
    if f.v6 {
        local = a6().octets();
        remote = b6().octets();
    } else {
        local[..4].copy_from_slice(&a4().octets());
        remote[..4].copy_from_slice(&b4().octets());
    }
    CtKey {
        ifindex: 1,
        local,
        remote,
        lport: sport,
        rport: dport,
        proto: f.proto,
        family: if f.v6 { family::V6 } else { family::V4 },
        ..Default::default()
    }
}

/// One loaded datapath with a policy of one size.
struct Scenario {
    rules: usize,
    endpoints: usize,
    entries: usize,
    workload: Workload,
    dp: Datapath,
    _pins: PinDir,
}

impl Scenario {
    fn prog(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self
            .dp
            .ebpf()
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }
}

/// Whose veth the namespace's loopback stands for: A's (the sender, for
/// `netiso_from_container`) or B's (the receiver, for
/// `netiso_to_container`). BPF_PROG_TEST_RUN reports ifindex 1, so one
/// datapath has one local endpoint; the two-program figure pairs a
/// sender's datapath with a receiver's of the same size and policy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Local {
    A,
    B,
}

fn load(ns: &NetNs, rules: usize, endpoints: usize, local: Local) -> Result<Scenario> {
    let mut workload = Workload::program(rules, endpoints);
    // The local container (0: A, 1: B) is the endpoint on the namespace's
    // loopback, whose ifindex 1 is what BPF_PROG_TEST_RUN reports.
    let (idx, mac) = match local {
        Local::A => (0, MAC_A),
        Local::B => (1, frames::MAC_B),
    };
    let a = &mut workload.containers[idx].networks[0];
    a.host_ifindex = Some(1);
    a.host_ifname = Some("lo".into());
    a.mac = Some(mac);
    let desired: Desired = workload.desired()?;
    ensure!(
        desired.endpoints.len() == 1,
        "expected exactly the local endpoint in the compiled datapath"
    );
    let entries = desired.policy.len();
    let pins = PinDir::new();
    let path = pins.path.clone();
    let mut dp = ns.run(move || -> Result<Datapath> {
        let mut dp = Datapath::load(&path)?;
        dp.apply(&desired)?;
        Ok(dp)
    })?;
    // The other endpoints: entries in the endpoints map (their veths do not
    // exist here; only the map's size matters to a lookup).
    let ep_proto = {
        let m: BpfHashMap<_, u32, Endpoint> =
            BpfHashMap::try_from(dp.ebpf().map(maps::ENDPOINTS).context("endpoints map")?)?;
        m.get(&1, 0).context("the local endpoint is in the map")?
    };
    let others: Vec<(u32, Endpoint)> = workload
        .containers
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != idx)
        .map(|(i, c)| {
            let mut ep = ep_proto;
            ep.ipv4 = c.networks[0].ipv4.map(|a| a.octets()).unwrap_or_default();
            ep.mac = c.networks[0].mac.unwrap_or_default();
            (1000 + i as u32, ep)
        })
        .collect();
    // Written as the daemon writes endpoints (hash, and the array for
    // small ifindexes).
    dp.write_endpoints(&others)
        .context("adding endpoints (map full?)")?;
    if local == Local::A {
        // B stands for a container behind a managed veth on this host (as
        // the daemon notes it when B's veth is there): A's connections to
        // it are marked for B's program.
        let mut ids: BpfHashMap<_, IpKey, IdentityInfo> = BpfHashMap::try_from(
            dp.ebpf_mut()
                .map_mut(maps::IDENTITIES)
                .context("identities map")?,
        )?;
        for slot in 0..2 {
            for key in [
                IpKey::v4(b4().octets(), slot),
                IpKey::v6(b6().octets(), slot),
            ] {
                if let Ok(mut info) = ids.get(&key, 0) {
                    info.flags |= peer_flags::LOCAL_ENDPOINT;
                    ids.insert(key, info, 0)?;
                }
            }
        }
    }
    Ok(Scenario {
        rules,
        endpoints,
        entries,
        workload,
        dp,
        _pins: pins,
    })
}

fn run_once(p: &SchedClassifier, data: &[u8], repeat: u32) -> Result<(i32, f64)> {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(data),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value as i32, r.duration.as_nanos() as f64))
}

/// A's endpoint in a receiver's datapath (`load` numbers the endpoints
/// other than the local one 1000 + their index).
const A_IFINDEX_AT_B: u32 = 1000;

/// Runs `p` on a packet as B's veth gets it from A's: the mark A's
/// program left, and A's veth as the interface the host received it on
/// (`struct __sk_buff`: mark at offset 8, ingress_ifindex at 36).
fn run_received(p: &SchedClassifier, data: &[u8], repeat: u32) -> Result<(i32, f64)> {
    let mut ctx = [0u8; 44];
    ctx[8..12].copy_from_slice(&DEFAULT_CROSS_VETH_MARK.to_ne_bytes());
    ctx[36..40].copy_from_slice(&A_IFINDEX_AT_B.to_ne_bytes());
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(data),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value as i32, r.duration.as_nanos() as f64))
}

/// The mark `netiso_from_container` leaves on `data` (one run).
fn mark_after(p: &SchedClassifier, data: &[u8]) -> Result<u32> {
    let mut out = [0u8; 192];
    let mut data_out = vec![0u8; 2048];
    p.test_run(TestRunOptions {
        data_in: Some(data),
        data_out: Some(&mut data_out),
        ctx_in: Some(&[0u8; 44]),
        ctx_out: Some(&mut out),
        ..Default::default()
    })
    .context("BPF_PROG_TEST_RUN")?;
    Ok(u32::from_ne_bytes(out[8..12].try_into().unwrap()))
}

fn expect(ret: i32, want: i32, what: &str) -> Result<()> {
    if ret != want {
        bail!("{what}: the program returned {ret}, expected {want}: the bench's policy or frames no longer match the datapath");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Established,
    Denied,
    /// The established packet on the receiver's veth (B's datapath).
    Received,
}

/// Per scenario: per-repetition results.
#[derive(Default, Clone)]
struct Samples {
    empty: Vec<f64>,
    /// [kind][flow] -> per rep
    repeat: [[Vec<f64>; 4]; 3],
    /// single-run: per rep, medians
    single_empty: Vec<f64>,
    single_first: [Vec<f64>; 4],
    single_est_tcp4: Vec<f64>,
}

pub fn run(opts: &Options) -> Result<Section> {
    let ns = NetNs::new("bp");
    println!(
        "bench: program cost: loading {} datapaths",
        opts.sizes.len()
    );
    let mut scenarios = Vec::new();
    for &(r, e) in &opts.sizes {
        scenarios
            .push(load(&ns, r, e, Local::A).with_context(|| format!("{r} rules, {e} endpoints"))?);
    }
    // The receivers: the same sizes with B on the loopback.
    let mut receivers = Vec::new();
    for &(r, e) in &opts.sizes {
        receivers.push(
            load(&ns, r, e, Local::B)
                .with_context(|| format!("{r} rules, {e} endpoints, receiver"))?,
        );
    }
    let empty_pins = PinDir::new();
    let empty = rawbpf::load_empty_classifier(&empty_pins.path.join("empty"))?;

    // Prime the established flows and check every verdict once.
    for s in &scenarios {
        let out = s.prog(OUT)?;
        for f in FLOWS {
            let syn = frame(f, SPORT_EST, f.port, SYN);
            expect(
                run_once(out, &syn, 1)?.0,
                tc::PASS,
                "first packet of an allowed flow",
            )?;
            let est = frame(f, SPORT_EST, f.port, ACK);
            expect(run_once(out, &est, 1)?.0, tc::PASS, "established packet")?;
            ensure!(
                mark_after(out, &est)? == DEFAULT_CROSS_VETH_MARK,
                "{}: A's established packet to B left unmarked: the two-program figure would not measure what the host does",
                f.name
            );
            let deny = frame(f, SPORT_DENY, f.denied_port, SYN);
            expect(run_once(out, &deny, 1)?.0, tc::ACT_SHOT, "denied packet")?;
        }
    }
    for s in &receivers {
        let inp = s.prog(IN)?;
        for f in FLOWS {
            let syn = frame(f, SPORT_EST, f.port, SYN);
            expect(
                run_once(inp, &syn, 1)?.0,
                tc::PASS,
                "first packet of an allowed flow, received",
            )?;
            let est = frame(f, SPORT_EST, f.port, ACK);
            expect(
                run_received(inp, &est, 1)?.0,
                tc::PASS,
                "established packet, received",
            )?;
        }
    }
    expect(
        run_once(&empty, &frame(FLOWS[0], 1, 2, SYN), 1)?.0,
        tc::ACT_OK,
        "empty program",
    )?;

    let mut samples = vec![Samples::default(); scenarios.len()];
    // Repeat mode: every (scenario, case) once per rep, the order rotated
    // from rep to rep so that no case always runs first or last.
    let mut cases: Vec<(usize, Option<(Kind, usize)>)> = Vec::new();
    for si in 0..scenarios.len() {
        cases.push((si, None));
        for k in [Kind::Established, Kind::Denied, Kind::Received] {
            for fi in 0..FLOWS.len() {
                cases.push((si, Some((k, fi))));
            }
        }
    }
    println!(
        "bench: program cost: {} cases x {} reps x repeat {}",
        cases.len(),
        opts.reps,
        opts.repeat
    );
    for rep in 0..opts.reps {
        let n = cases.len();
        for j in 0..n {
            let (si, case) = cases[(j + rep * 7) % n];
            let s = &scenarios[si];
            match case {
                None => {
                    let (ret, ns) =
                        run_once(&empty, &frame(FLOWS[0], SPORT_EST, 80, ACK), opts.repeat)?;
                    expect(ret, tc::ACT_OK, "empty program")?;
                    samples[si].empty.push(ns);
                }
                Some((k, fi)) => {
                    let f = FLOWS[fi];
                    let (data, want) = match k {
                        Kind::Established | Kind::Received => {
                            (frame(f, SPORT_EST, f.port, ACK), tc::PASS)
                        }
                        Kind::Denied => (frame(f, SPORT_DENY, f.denied_port, SYN), tc::ACT_SHOT),
                    };
                    let (ret, ns) = match k {
                        Kind::Received => {
                            run_received(receivers[si].prog(IN)?, &data, opts.repeat)?
                        }
                        _ => run_once(s.prog(OUT)?, &data, opts.repeat)?,
                    };
                    expect(ret, want, f.name)?;
                    samples[si].repeat[k as usize][fi].push(ns);
                }
            }
        }
    }

    // Single-run mode for first packets of allowed flows: each run creates
    // conntrack state, which is deleted before the next, so every sample is
    // a new flow.
    let per_rep = (opts.first_samples / opts.reps).max(1);
    println!(
        "bench: program cost: first packets, {} single runs per flow and size",
        per_rep * opts.reps
    );
    let empty_frame = frame(FLOWS[0], SPORT_EST, 80, ACK);
    for _ in 0..opts.reps {
        // Per scenario: (empty, first packet per flow, established tcp4).
        type Raw = (Vec<f64>, [Vec<f64>; 4], Vec<f64>);
        let mut raw: Vec<Raw> = vec![Raw::default(); scenarios.len()];
        let firsts: Vec<Vec<u8>> = FLOWS
            .iter()
            .map(|&f| frame(f, SPORT_FIRST, f.port, SYN))
            .collect();
        let est_tcp4 = frame(FLOWS[0], SPORT_EST, 80, ACK);
        for _ in 0..per_rep {
            for (si, s) in scenarios.iter_mut().enumerate() {
                let (ret, ns) = run_once(&empty, &empty_frame, 1)?;
                expect(ret, tc::ACT_OK, "empty program")?;
                raw[si].0.push(ns);
                let (ret, ns) = run_once(s.prog(OUT)?, &est_tcp4, 1)?;
                expect(ret, tc::PASS, "established packet")?;
                raw[si].2.push(ns);
                for (fi, f) in FLOWS.iter().enumerate() {
                    let (ret, ns) = run_once(s.prog(OUT)?, &firsts[fi], 1)?;
                    expect(ret, tc::PASS, "first packet of an allowed flow")?;
                    raw[si].1[fi].push(ns);
                    delete_ct(&mut s.dp, *f)?;
                }
            }
        }
        for (si, (e, firsts, est)) in raw.into_iter().enumerate() {
            let sm = &mut samples[si];
            sm.single_empty.push(median(&e));
            for (fi, first) in firsts.iter().enumerate() {
                sm.single_first[fi].push(median(first));
            }
            sm.single_est_tcp4.push(median(&est));
        }
    }

    let mut section = section_for(opts, &scenarios, &samples)?;
    instruction_counts(&scenarios[0], &mut section)?;
    if let Some(big) = scenarios.iter_mut().max_by_key(|s| (s.rules, s.endpoints)) {
        reload_in_process(opts, &ns, big, &mut section)?;
    }
    Ok(section)
}

/// Per repetition: a single-run first packet, less a single-run established
/// TCP/IPv4 packet of the same repetition, plus that packet's repeat-mode
/// cost. Both single runs pay the same timer overhead and the same colder
/// caches after a syscall, so the difference is the first packet's extra
/// work at the warm repeat-mode level.
fn first_allowed_estimate(sm: &Samples, fi: usize) -> Vec<f64> {
    (0..sm.single_first[fi].len())
        .map(|r| sm.single_first[fi][r] - sm.single_est_tcp4[r] + sm.repeat[0][0][r])
        .collect()
}

/// Runs one case in a loop for `secs` seconds (repeat 10^6 per call; an
/// allowed first packet: single runs, its entry deleted after each), for
/// an outside profiler: `perf record -e cpu-clock -a -g -- <bench> --profile
/// established`. Returns the mean ns per run.
pub fn profile(case: &str, secs: f64) -> Result<f64> {
    let ns = NetNs::new("bq");
    let mut s = load(&ns, 10_000, 4_000, Local::A)?;
    let f = FLOWS[0];
    if case == "allowed" {
        // One new connection per run: the first packet, then its entry
        // deleted from user space (the syscalls show in the profile apart,
        // outside `bpf_test_run`).
        let first = frame(f, SPORT_FIRST, f.port, SYN);
        let t = Instant::now();
        let mut runs = Vec::new();
        while t.elapsed().as_secs_f64() < secs {
            let (ret, ns) = run_once(s.prog(OUT)?, &first, 1)?;
            expect(ret, tc::PASS, case)?;
            delete_ct(&mut s.dp, f)?;
            runs.push(ns);
        }
        return Ok(median(&runs));
    }
    let (data, want) = match case {
        "established" => {
            let syn = frame(f, SPORT_EST, f.port, SYN);
            expect(run_once(s.prog(OUT)?, &syn, 1)?.0, tc::PASS, "first packet")?;
            (frame(f, SPORT_EST, f.port, ACK), tc::PASS)
        }
        "denied" => (frame(f, SPORT_DENY, f.denied_port, SYN), tc::ACT_SHOT),
        "empty" => (frame(f, SPORT_EST, f.port, ACK), tc::ACT_OK),
        _ => bail!("--profile takes established, denied, allowed or empty, not {case:?}"),
    };
    let pins = PinDir::new();
    let empty = rawbpf::load_empty_classifier(&pins.path.join("empty"))?;
    let prog = if case == "empty" {
        &empty
    } else {
        s.prog(OUT)?
    };
    let t = Instant::now();
    let mut runs = Vec::new();
    while t.elapsed().as_secs_f64() < secs {
        let (ret, ns) = run_once(prog, &data, 1_000_000)?;
        expect(ret, want, case)?;
        runs.push(ns);
    }
    Ok(median(&runs))
}

fn delete_ct(dp: &mut Datapath, f: Flow) -> Result<()> {
    let mut ct: BpfHashMap<_, CtKey, netiso_common::CtValue> = BpfHashMap::try_from(
        dp.ebpf_mut()
            .map_mut(maps::CONNTRACK)
            .context("conntrack map")?,
    )?;
    ct.remove(&ct_key(f, SPORT_FIRST, f.port)).map_err(|e| {
        anyhow!("deleting the conntrack entry of a first packet ({}): {e}; did the conntrack key layout change?", f.name)
    })?;
    Ok(())
}

fn section_for(opts: &Options, scenarios: &[Scenario], samples: &[Samples]) -> Result<Section> {
    let mut sec = Section::new(
        "Program cost (BPF_PROG_TEST_RUN)",
        format!(
            "Each policy size is a freshly loaded datapath (`Datapath::load` + `apply`) in a private network namespace, filled through the real policy compiler: `R` rules over up to 50 groups and `E` containers (IPv4 and IPv6 identities; the local endpoint A is the namespace's loopback, the other `E-1` endpoints are extra entries in the endpoints map). A may open 80/tcp and 53/udp to B (rule 1); A's group denies egress by default. All datapaths stay loaded and every repetition runs every (size, case) once, in an order rotated between repetitions, with an empty TC program (`r0 = 0; exit`, loaded through the raw bpf() syscall) run in the same rotation. Figures are medians of {reps} repetitions (min – max over repetitions); ratios pair each repetition with the empty program of the same repetition and size.\n\n\
- **established**: a TCP ACK / UDP datagram of a flow already in conntrack, `repeat` = {repeat} per repetition.\n\
- **first, denied**: a TCP SYN / UDP datagram to a port no rule names, dropped by A's default (`default-deny`): a denied flow creates no state, so every run is a first packet (the conntrack miss, the identity lookup, the pair's one policy lookup finding no entry for the port, the drop counted in the flow table); `repeat` = {repeat}.\n\
- **first, allowed**: a first packet of an allowed flow creates conntrack state, so the same frame cannot be repeated in one call. Instead it runs with `repeat` = 1, {first} times per size and flow, and its conntrack entry (one per connection and endpoint) is deleted from user space after each run, so that every sample is a new flow. A single run's duration includes the kernel's timer overhead and runs with colder caches than a repeat loop (the syscall ran in between), so an established TCP/IPv4 packet is measured the same single-run way, interleaved, and the figure is `median(single first packet) − median(single established packet) + established packet (repeat mode)`, per repetition: the extra work of a first packet, at the warm repeat-mode level. The JSON also has the estimate calibrated by the empty program instead (`median(single) − median(single empty) + empty (repeat mode)`), which keeps the cold-cache penalty; the notes compare both calibrations on the established packet.\n\
- **container → container, both programs**: a packet between two containers on one host is judged twice, leaving A (`netiso_from_container` on A's veth) and entering B (`netiso_to_container` on B's veth). Each size is loaded a second time with B as the local endpoint; the established packet of the same flow runs there in the same rotation (`repeat` = {repeat}) as it arrives from A's veth: with the mark A's program puts on it (checked) and A's veth as the interface the host received it on, so B takes A's verdict after its own checks. The figure is the sum of both programs against the sender's alone, per repetition.",
            reps = opts.reps,
            repeat = opts.repeat,
            first = (opts.first_samples / opts.reps).max(1) * opts.reps,
        ),
    );
    sec.cond("repeat (repeat mode)", opts.repeat);
    sec.cond("repetitions", opts.reps);
    sec.cond(
        "single-run samples per first-packet figure",
        (opts.first_samples / opts.reps).max(1) * opts.reps,
    );
    sec.cond(
        "frame sizes",
        "TCP/IPv4 54 B, UDP/IPv4 60 B, TCP/IPv6 74 B, UDP/IPv6 80 B",
    );
    sec.cond(
        "program",
        format!("{OUT} (TC ingress on the host veth); {IN} (TC egress) for the receiving side"),
    );

    let all_empty: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.empty.iter().copied())
        .collect();
    sec.figures.push(
        Figure::new(
            "program.empty",
            "empty TC program",
            "ns",
            summary(&all_empty),
        )
        .cond("repeat", opts.repeat),
    );
    let mut worst: [(f64, String); 3] = Default::default();
    let kinds = ["established", "first, denied", "first, allowed"];
    let ids = ["established", "first_denied", "first_allowed"];
    for (si, s) in scenarios.iter().enumerate() {
        let sm = &samples[si];
        for (fi, f) in FLOWS.iter().enumerate() {
            for kind in 0..3 {
                let (value, ratio): (Summary, Summary) = match kind {
                    0 | 1 => {
                        let k = if kind == 0 { 0 } else { 1 };
                        let v = &sm.repeat[k][fi];
                        (summary(v), summary(&ratios(v, &sm.empty)))
                    }
                    _ => {
                        let est = first_allowed_estimate(sm, fi);
                        (summary(&est), summary(&ratios(&est, &sm.empty)))
                    }
                };
                let id = format!(
                    "program.{}.{}.r{}.e{}",
                    ids[kind], f.name, s.rules, s.endpoints
                );
                let label = format!(
                    "{}, {}, {} rules, {} endpoints",
                    kinds[kind], f.name, s.rules, s.endpoints
                );
                if ratio.median > worst[kind].0 {
                    worst[kind] = (ratio.median, label.clone());
                }
                let mut fig = Figure::new(id, label, "ns", value)
                    .ratio("empty", ratio)
                    .cond("rules", s.rules)
                    .cond("endpoints", s.endpoints)
                    .cond("policy map entries", s.entries);
                if kind == 2 {
                    let by_empty: Vec<f64> = (0..sm.single_first[fi].len())
                        .map(|r| sm.single_first[fi][r] - sm.single_empty[r] + sm.empty[r])
                        .collect();
                    fig = fig
                        .extra("single_run_median_ns", median(&sm.single_first[fi]))
                        .extra("single_run_empty_median_ns", median(&sm.single_empty))
                        .extra(
                            "single_run_established_tcp4_median_ns",
                            median(&sm.single_est_tcp4),
                        )
                        .extra("estimate_calibrated_by_empty_ns", median(&by_empty));
                }
                sec.figures.push(fig);
            }
        }
    }

    // Targets: every (size, flow) case, and growth with size. The target
    // figure gives the spread over the cases (median of the cases' median
    // ns and ratios, min – max over cases); it is met only if every case
    // meets it.
    // Issue 12: established ≤ 3×, a first packet denied ≤ 5×, allowed ≤ 6×.
    let limits = [3.0, 5.0, 6.0];
    for kind in 0..3 {
        let prefix = format!("program.{}.", ids[kind]);
        let cases: Vec<&Figure> = sec
            .figures
            .iter()
            .filter(|f| f.id.starts_with(&prefix))
            .collect();
        let ns: Vec<f64> = cases.iter().map(|f| f.value.median).collect();
        let rs: Vec<f64> = cases
            .iter()
            .map(|f| f.ratio.map_or(f64::NAN, |r| r.median))
            .collect();
        let r = summary(&rs);
        let fig = Figure::new(
            format!("program.{}.all", ids[kind]),
            format!(
                "{} packet, all {} cases (worst: {})",
                kinds[kind],
                cases.len(),
                worst[kind].1
            ),
            "ns",
            summary(&ns),
        )
        .ratio("empty", r)
        .target(format!("≤ {}× empty", limits[kind]), r.max <= limits[kind]);
        sec.figures.push(fig);
    }
    let smallest = scenarios.iter().min_by_key(|s| (s.rules, s.endpoints));
    let largest = scenarios.iter().max_by_key(|s| (s.rules, s.endpoints));
    if let (Some(lo), Some(hi)) = (smallest, largest) {
        if (lo.rules, lo.endpoints) != (hi.rules, hi.endpoints) {
            for kind in 0..3 {
                let mut growth = Vec::new();
                for f in FLOWS {
                    let get = |s: &Scenario| {
                        sec.figure(&format!(
                            "program.{}.{}.r{}.e{}",
                            ids[kind], f.name, s.rules, s.endpoints
                        ))
                        .and_then(|f| f.ratio)
                        .map_or(f64::NAN, |r| r.median)
                    };
                    growth.push(get(hi) / get(lo));
                }
                let g = summary(&growth);
                let fig = Figure::new(
                    format!("program.{}.scaling", ids[kind]),
                    format!(
                        "{}: {} rules / {} endpoints against {} / {} (over the 4 flows)",
                        kinds[kind], hi.rules, hi.endpoints, lo.rules, lo.endpoints
                    ),
                    "×",
                    g,
                )
                .target("worst flow ≤ 1.2× the smallest", g.max <= 1.2);
                sec.figures.push(fig);
            }
        }
    }

    two_programs(scenarios, samples, &mut sec);

    // Matrices: one per kind, sizes down, flows across.
    for kind in 0..3 {
        let mut t = format!(
            "**{}** — median ns per packet (× empty program)\n\n| rules | endpoints | policy entries | {} |\n|---|---|---|{}\n",
            kinds[kind],
            FLOWS.map(|f| f.name).join(" | "),
            "---|".repeat(FLOWS.len())
        );
        for s in scenarios {
            let mut row = format!("| {} | {} | {} |", s.rules, s.endpoints, s.entries);
            for f in FLOWS {
                let fig = sec.figure(&format!(
                    "program.{}.{}.r{}.e{}",
                    ids[kind], f.name, s.rules, s.endpoints
                ));
                match fig {
                    Some(fig) => row.push_str(&format!(
                        " {} ({}×) |",
                        fmt_num(fig.value.median),
                        fmt_num(fig.ratio.map_or(f64::NAN, |r| r.median))
                    )),
                    None => row.push_str(" |"),
                }
            }
            t.push_str(&row);
            t.push('\n');
        }
        sec.notes.push(t);
    }
    let e = summary(&all_empty);
    sec.notes.push(format!(
        "Empty TC program: {} ns median ({} – {}) over {} repetitions × {} sizes.",
        fmt_num(e.median),
        fmt_num(e.min),
        fmt_num(e.max),
        opts.reps,
        scenarios.len()
    ));
    // Method check: established TCP/IPv4 both ways.
    let mut check = String::from("Method check — established TCP/IPv4, repeat mode vs. single runs calibrated by the empty program (the difference is the single-run cold-cache penalty that the first-packet figures remove): ");
    let parts: Vec<String> = scenarios
        .iter()
        .zip(samples)
        .map(|(s, sm)| {
            let single: Vec<f64> = (0..sm.single_est_tcp4.len())
                .map(|r| sm.single_est_tcp4[r] - sm.single_empty[r] + sm.empty[r])
                .collect();
            format!(
                "{}/{}: {} vs {} ns",
                s.rules,
                s.endpoints,
                fmt_num(median(&sm.repeat[0][0])),
                fmt_num(median(&single))
            )
        })
        .collect();
    check.push_str(&parts.join("; "));
    check.push('.');
    sec.notes.push(check);
    Ok(sec)
}

/// Container to container on one host: an established packet is judged
/// on the sender's veth (`netiso_from_container`, A's datapath) and again
/// on the receiver's (`netiso_to_container`, B's datapath of the same
/// size). Per repetition, the sum of both against the sender's alone.
fn two_programs(scenarios: &[Scenario], samples: &[Samples], sec: &mut Section) {
    let mut worst = (0.0, String::new());
    let mut t = String::from(
        "**container → container, established, both programs** — received on B's veth, ns (× empty); both programs, ns (× one program)\n\n| rules | endpoints |",
    );
    for f in FLOWS {
        t.push_str(&format!(" {} received | {} both |", f.name, f.name));
    }
    t.push_str(&format!("\n|---|---|{}\n", "---|---|".repeat(FLOWS.len())));
    for (si, s) in scenarios.iter().enumerate() {
        let sm = &samples[si];
        let mut row = format!("| {} | {} |", s.rules, s.endpoints);
        for (fi, f) in FLOWS.iter().enumerate() {
            let one = &sm.repeat[Kind::Established as usize][fi];
            let recv = &sm.repeat[Kind::Received as usize][fi];
            let both: Vec<f64> = one.iter().zip(recv).map(|(a, b)| a + b).collect();
            let r_recv = summary(&ratios(recv, &sm.empty));
            let r_both = summary(&ratios(&both, one));
            let label = format!(
                "both programs, established, {}, {} rules, {} endpoints",
                f.name, s.rules, s.endpoints
            );
            if r_both.median > worst.0 {
                worst = (r_both.median, label.clone());
            }
            sec.figures.push(
                Figure::new(
                    format!("program.received.{}.r{}.e{}", f.name, s.rules, s.endpoints),
                    format!(
                        "received (B's veth), established, {}, {} rules, {} endpoints",
                        f.name, s.rules, s.endpoints
                    ),
                    "ns",
                    summary(recv),
                )
                .ratio("empty", r_recv)
                .cond("rules", s.rules)
                .cond("endpoints", s.endpoints),
            );
            sec.figures.push(
                Figure::new(
                    format!("program.two.{}.r{}.e{}", f.name, s.rules, s.endpoints),
                    label,
                    "ns",
                    summary(&both),
                )
                .ratio("one program", r_both)
                .cond("rules", s.rules)
                .cond("endpoints", s.endpoints),
            );
            row.push_str(&format!(
                " {} ({}×) | {} ({}×) |",
                fmt_num(median(recv)),
                fmt_num(r_recv.median),
                fmt_num(median(&both)),
                fmt_num(r_both.median)
            ));
        }
        t.push_str(&row);
        t.push('\n');
    }
    let cases: Vec<&Figure> = sec
        .figures
        .iter()
        .filter(|f| f.id.starts_with("program.two."))
        .collect();
    let ns: Vec<f64> = cases.iter().map(|f| f.value.median).collect();
    let rs: Vec<f64> = cases
        .iter()
        .map(|f| f.ratio.map_or(f64::NAN, |r| r.median))
        .collect();
    let r = summary(&rs);
    let fig = Figure::new(
        "program.two.all",
        format!(
            "container → container, established, both programs, all {} cases (worst: {})",
            cases.len(),
            worst.1
        ),
        "ns",
        summary(&ns),
    )
    .ratio("one program", r)
    .target("≤ 1.3× one program", r.max <= 1.3);
    sec.figures.push(fig);
    sec.notes.push(t);
}

fn instruction_counts(s: &Scenario, sec: &mut Section) -> Result<()> {
    for name in [OUT, IN] {
        let info = s.prog(name)?.info()?;
        sec.cond(
            &format!("{name} size"),
            format!(
                "{} xlated instructions, {} B JIT code, {} instructions verified",
                info.size_translated().unwrap_or(0) / 8,
                info.size_jitted(),
                info.verified_instruction_count().unwrap_or(0)
            ),
        );
    }
    Ok(())
}

/// What a daemon reload of the largest policy costs in-process: parse,
/// compile (+ map contents), and the atomic slot switch in the maps.
fn reload_in_process(
    opts: &Options,
    ns: &NetNs,
    s: &mut Scenario,
    sec: &mut Section,
) -> Result<()> {
    let mut parse = Vec::new();
    let mut compile = Vec::new();
    let mut apply = Vec::new();
    for i in 0..opts.reloads.max(2) {
        let mut w = s.workload.clone();
        // Alternate the last rule's port so that every apply is a switch.
        if let Some(r) = w.rules.last_mut() {
            r.ports[0].1 = r.ports[0].1.wrapping_add((i % 2) as u16 + 1);
        }
        let text = w.toml();
        let t = Instant::now();
        let p = netiso_daemon::policy::parse_str(&text, "bench-policy.toml")
            .map_err(|e| anyhow!("{e}"))?;
        parse.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let compiled = netiso_daemon::policy::compile(&p, &w.containers, &mut Default::default())
            .map_err(|e| anyhow!("{e}"))?;
        let desired = super::workload::build_desired(&compiled, &w.containers, &p);
        compile.push(t.elapsed().as_secs_f64() * 1e3);
        let dp = &mut s.dp;
        let t = Instant::now();
        let report = ns.run(|| dp.apply(&desired))?;
        apply.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(report.switched, "a policy change switches slots");
    }
    let total: Vec<f64> = (0..parse.len())
        .map(|i| parse[i] + compile[i] + apply[i])
        .collect();
    let cond = |f: Figure| {
        f.cond("rules", s.rules)
            .cond("containers", s.endpoints)
            .cond("policy map entries", s.entries)
    };
    sec.figures.push(cond(Figure::new(
        "reload.inprocess.parse",
        "in-process reload: parse",
        "ms",
        summary(&parse),
    )));
    sec.figures.push(cond(Figure::new(
        "reload.inprocess.compile",
        "in-process reload: compile + map contents",
        "ms",
        summary(&compile),
    )));
    sec.figures.push(cond(Figure::new(
        "reload.inprocess.apply",
        "in-process reload: map writes + slot switch",
        "ms",
        summary(&apply),
    )));
    sec.figures.push(cond(Figure::new(
        "reload.inprocess.total",
        format!(
            "in-process reload of a {}-rule policy with {} containers (parse + compile + apply)",
            s.rules, s.endpoints
        ),
        "ms",
        summary(&total),
    )));
    Ok(())
}
