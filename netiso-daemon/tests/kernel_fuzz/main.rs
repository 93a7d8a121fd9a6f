//! Differential fuzzer through the kernel (issue 11): random and mutated
//! frames from an attacker namespace, through a real bridge, into a victim
//! namespace whose policy denies everything. The oracle is the policy:
//! nothing the attacker sends may reach the victim.
//!
//! Topology (namespaces the test owns, removed on drop): a "host"
//! namespace with a bridge, the attacker and the victim each behind a veth
//! whose host side is on the bridge, IPv4 and IPv6 (link-local included);
//! the real programs on both host-side veths (`Datapath`, as the daemon
//! attaches them), compiled from a policy where the attacker may send
//! anywhere and the victim denies all ingress and egress.
//!
//! The victim listens with an AF_PACKET socket on its interface (every
//! frame), wildcard UDP sockets (IPv4 and IPv6, with multicast groups
//! joined) and raw IP sockets for a few protocols. Every frame the
//! attacker sends carries a per-run random marker (in a 16-byte tag with
//! the frame's sequence number, built so that it never changes a
//! checksum); strict link control, which has no room for a tag, carries
//! six bytes of it in its Ethernet destination or 28 bits in its IPv6
//! traffic class and flow label. Some frames go out with a
//! `virtio_net_hdr` (GSO, checksum offload). Checked:
//!
//! - no receiver of the victim sees the marker (or those parts of it);
//! - every frame that must meet netiso (it leaves the attacker, and the
//!   bridge would take it anywhere but to the host alone) is counted
//!   under a drop reason, on the attacker's veth or the victim's;
//! - the reason counters grew.
//!
//! Before netiso is attached, a calibration shows each kind of receiver
//! receiving (so a deaf receiver cannot pass the test).
//!
//! Afterwards, strict ARP/NS/NA from the attacker must still arrive (the
//! link works). Every `fuzz/regressions/kernel/*.hex` (comment lines `#`,
//! then one frame per line in hex, optionally `vnet=<hdr> ` first; the
//! placeholder marker `kfuzzMRK` is replaced by the run's) is replayed
//! before the random frames. A crossing is written there as a new file,
//! and printed with the seed (docs/fuzzing.md).
//!
//! Environment: `NETISO_KFUZZ_SEED` (decimal or 0x-hex),
//! `NETISO_KFUZZ_FRAMES` (inputs; default 10000, unbounded when only
//! the time is given), `NETISO_KFUZZ_SECONDS` (default 45),
//! `NETISO_KFUZZ_SUMMARY` (a file to write the summary to),
//! `NETISO_KFUZZ_NO_WRITE` (do not write regression files),
//! `NETISO_KFUZZ_GEN_CHECK` (inputs the generator self-test builds).
mod gen;
mod rx;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gen::{fix, generate, hex, placeholder, remark, retag, Input, Net};
use netiso_common::{limits, maps, DropReason};
use netiso_daemon::datapath::counters;
use netiso_daemon::datapath::Datapath;
use netiso_daemon::{daemon, policy};
use netiso_testkit::frames::link_local;
use netiso_testkit::topology::{Guest, Topology};
use netiso_testkit::{NetNs, PinDir};
use rx::{Received, Sender, Victim};

const POLICY: &str = r#"
[groups.attacker]
labels = { "netiso.group" = "attacker" }

[groups.victim]
labels = { "netiso.group" = "victim" }
ingress = "deny"
egress = "deny"
"#;

const DEFAULT_SEED: u64 = 0x6b66_757a_7a5f_0011;
const DEFAULT_FRAMES: u64 = 10_000;
const DEFAULT_SECONDS: u64 = 45;
/// Sequence numbers of replayed regression files.
const REPLAY_SEQ: u32 = 0x8000_0000;
/// Sequence numbers of calibration frames.
const CALIBRATION_SEQ: u32 = 0xc000_0000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/kernel")
}

/// A frame as sent: after a `virtio_net_hdr` or not.
type Frame = (Option<[u8; 10]>, Vec<u8>);

/// A regression file: its name and frames (placeholder tags inside).
struct Regression {
    name: String,
    frames: Vec<Frame>,
}

/// One frame line of a regression file: `[vnet=<20 hex digits> ]<frame hex>`.
fn parse_frame_line(l: &str) -> Option<Frame> {
    match l.strip_prefix("vnet=") {
        Some(rest) => {
            let (h, f) = rest.split_once(char::is_whitespace)?;
            let h: [u8; 10] = gen::parse_hex(h)?.try_into().ok()?;
            Some((Some(h), gen::parse_hex(f)?))
        }
        None => Some((None, gen::parse_hex(l)?)),
    }
}

fn frame_line(f: &Frame) -> String {
    match &f.0 {
        Some(h) => format!("vnet={} {}", hex(h), hex(&f.1)),
        None => hex(&f.1),
    }
}

fn load_regressions() -> Vec<Regression> {
    let dir = regressions_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "hex"));
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let frames: Vec<Frame> = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    parse_frame_line(l)
                        .unwrap_or_else(|| panic!("{}: not a frame line: {l}", p.display()))
                })
                .collect();
            assert!(!frames.is_empty(), "{}: no frame", p.display());
            Regression {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                frames,
            }
        })
        .collect()
}

/// A per-run marker: 8 bytes from the clock and the process id (not from
/// the seed: a marker left over from an earlier run never counts).
fn fresh_marker() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let r = gen::Rng::for_frame(t ^ ((std::process::id() as u64) << 32), 0x6d61726b);
    let mut m = [0u8; 8];
    for b in &mut m {
        *b = r.byte();
    }
    m
}

/// Waits (bounded) until no IPv6 address of eth0 in `ns` is tentative.
fn wait_dad(ns: &NetNs) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let out = ns.sh("ip -6 addr show dev eth0");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("fe80::") && !text.contains("tentative") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("IPv6 addresses of eth0 in {} still tentative", ns.name);
}

/// Whether netiso must have met and counted `f`: it left the attacker
/// with someone else's MAC (spoofed, counted on the attacker's veth), or
/// with the attacker's own towards anything but the host alone (the bridge
/// takes it to the victim's veth unless the attacker's veth dropped it).
/// Frames the kernel drops before TC (a VLAN header cut short) and frames
/// the bridge keeps (IEEE reserved group addresses) are left out.
fn must_be_counted(f: &[u8], n: &Net) -> bool {
    if f.len() < 14 {
        return false;
    }
    let outer = u16::from_be_bytes([f[12], f[13]]);
    if matches!(outer, 0x8100 | 0x88a8) && f.len() < 24 {
        return false;
    }
    if f[6..12] != n.a_mac {
        return true;
    }
    let dst = &f[..6];
    let reserved = dst[..5] == [0x01, 0x80, 0xc2, 0, 0] && dst[5] < 0x10;
    !(dst == n.h_mac || dst == n.a_mac || reserved)
}

/// Drop-reason totals (all reasons, including ones this test does not
/// know by name).
fn reason_totals(dp: &Datapath) -> BTreeMap<u32, u64> {
    counters::per_cpu_totals(dp.ebpf().map(maps::REASON_STATS).unwrap())
        .unwrap()
        .into_iter()
        .map(|(i, c)| (i, c.packets))
        .collect()
}

fn reason_name(i: u32) -> String {
    DropReason::from_u8(i as u8)
        .map(|r| r.as_str().to_string())
        .unwrap_or_else(|| format!("reason-{i}"))
}

/// Drops counted on the attacker's veth leaving it, and on the victim's
/// veth entering it; and the number of flow rows.
fn veth_drops(dp: &Datapath, attacker_if: u32, victim_if: u32) -> (u64, u64, usize) {
    let rows = counters::flows(dp.ebpf().map(maps::FLOWS).unwrap()).unwrap();
    let mut a = 0;
    let mut v = 0;
    for (k, val) in &rows {
        if k.ifindex == attacker_if && k.direction == 0 {
            a += val.packets;
        }
        if k.ifindex == victim_if && k.direction == 1 {
            v += val.packets;
        }
    }
    (a, v, rows.len())
}

/// The address plan of `Topology::new` for ("attacker", "victim"), on
/// which the regression files are written; checked against the real
/// topology at the start of each run.
fn plan(marker: [u8; 8]) -> Net {
    let (a_mac, v_mac, h_mac) = (
        [0x02, 0x77, 0, 0, 0, 0x02],
        [0x02, 0x77, 0, 0, 0, 0x03],
        [0x02, 0x77, 0, 0, 0, 0x01],
    );
    Net {
        a_mac,
        v_mac,
        h_mac,
        a4: Ipv4Addr::new(10, 77, 0, 2),
        v4: Ipv4Addr::new(10, 77, 0, 3),
        h4: Ipv4Addr::new(10, 77, 0, 1),
        bcast4: Ipv4Addr::new(10, 77, 0, 255),
        a6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
        v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3),
        a_ll: link_local(a_mac),
        v_ll: link_local(v_mac),
        h_ll: link_local(h_mac),
        marker,
    }
}

fn check_plan(n: &Net, attacker: &Guest, victim: &Guest) {
    assert_eq!(
        (attacker.mac, attacker.ip, attacker.ip6),
        (n.a_mac, n.a4, n.a6),
        "the test topology's attacker moved: update plan() and the regression files"
    );
    assert_eq!(
        (victim.mac, victim.ip, victim.ip6),
        (n.v_mac, n.v4, n.v6),
        "the test topology's victim moved: update plan() and the regression files"
    );
}

/// The seed regressions: the classes issue 11 saw crossing, each as
/// (file name, description, frames). Written to `fuzz/regressions/kernel`
/// by `seed_regressions_on_disk_match_their_generator` (see there).
fn seed_regressions() -> Vec<(&'static str, &'static str, Vec<Vec<u8>>)> {
    use gen::{eth, ip4, ip6};
    let n = plan(gen::PLACEHOLDER_MARK);
    let tg = placeholder();
    let udp = |dport: u16| {
        let mut u = vec![0x30, 0x39];
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 0, 0, 0]);
        u.extend_from_slice(&tg);
        u
    };
    let udp4 = |dst: Ipv4Addr| ip4(n.a4, dst, 17, 64, 0x1111, 0, &[], &udp(5555));
    let vlan = |tags: &[(u16, u16)], et: u16, body: &[u8]| {
        let mut f = eth(n.v_mac, n.a_mac, tags[0].0, &[]);
        f.truncate(12);
        for (i, (tpid, vid)) in tags.iter().enumerate() {
            if i > 0 {
                f.extend_from_slice(&tpid.to_be_bytes());
            }
            if i == 0 {
                f.extend_from_slice(&tpid.to_be_bytes());
            }
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(body);
        f
    };
    let igmp = |dst: Ipv4Addr| {
        let mut m = vec![0x16, 0, 0, 0];
        m.extend_from_slice(&[224, 0, 0, 1]);
        m.extend_from_slice(&tg);
        ip4(n.a4, dst, 2, 1, 0x2222, 0, &[0x94, 4, 0, 0], &m)
    };
    let mut nd = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    nd.extend_from_slice(&n.v6.octets());
    nd.extend_from_slice(&tg);
    let mut tcp_syn = vec![
        0x30, 0x39, 0x15, 0xb3, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    tcp_syn.extend_from_slice(&tg);
    let all6 = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut out = vec![
        (
            "stacked-vlan-udp",
            "IPv4/UDP to the victim inside two VLAN tags (0x88a8+0x8100, 0x8100+0x8100): the kernel untags one before TC, the victim's the other",
            vec![
                vlan(&[(0x88a8, 5), (0x8100, 7)], 0x0800, &udp4(n.v4)),
                vlan(&[(0x8100, 5), (0x8100, 7)], 0x0800, &udp4(n.v4)),
                vlan(&[(0x8100, 0)], 0x0800, &udp4(n.v4)),
            ],
        ),
        (
            "igmp-with-payload",
            "an IGMPv2 report carrying bytes after its 8-byte message, to 224.0.0.1 and to the victim",
            vec![
                eth([0x01, 0, 0x5e, 0, 0, 1], n.a_mac, 0x0800, &igmp(Ipv4Addr::new(224, 0, 0, 1))),
                eth(n.v_mac, n.a_mac, 0x0800, &igmp(n.v4)),
            ],
        ),
        (
            "ipv4-proto58-nd",
            "IPv4 protocol 58 whose body looks like a neighbour solicitation (plain IPv4, judged by policy)",
            vec![eth(n.v_mac, n.a_mac, 0x0800, &ip4(n.a4, n.v4, 58, 64, 0x3333, 0, &[], &nd))],
        ),
        (
            "unknown-ethertype",
            "an unknown ethertype (0x88b5, local experimental) to the victim and to broadcast",
            vec![
                eth(n.v_mac, n.a_mac, 0x88b5, &tg),
                eth([0xff; 6], n.a_mac, 0x88b5, &tg),
            ],
        ),
        (
            "udp-broadcast",
            "IPv4/UDP to 255.255.255.255 and to the subnet broadcast, IPv6/UDP to ff02::1",
            vec![
                eth([0xff; 6], n.a_mac, 0x0800, &udp4(Ipv4Addr::BROADCAST)),
                eth([0xff; 6], n.a_mac, 0x0800, &udp4(n.bcast4)),
                eth([0x33, 0x33, 0, 0, 0, 1], n.a_mac, 0x86dd, &ip6(n.a_ll, all6, 17, 64, &udp(5555))),
            ],
        ),
        (
            "link-local-tcp-syn",
            "a TCP SYN with data to the victim's IPv6 link-local address",
            vec![eth(n.v_mac, n.a_mac, 0x86dd, &ip6(n.a_ll, n.v_ll, 6, 64, &tcp_syn))],
        ),
    ];
    for (_, _, frames) in &mut out {
        for f in frames {
            fix(f, true, true);
        }
    }
    out.extend(covert_regressions());
    out
}

/// Found by this fuzzer on the sealed datapath (main at 89bd688; seed
/// 0x6b66757a7a5f0011, inputs 56 and 1317 among others): link control in
/// its strict form, which passes both veths by design, with
/// attacker-chosen bits in fields nobody checks. The victim's AF_PACKET
/// socket reads six bytes from the Ethernet destination (the bridge floods
/// an unknown unicast address to every port) and 28 bits from the IPv6
/// traffic class and flow label.
fn covert_regressions() -> Vec<(&'static str, &'static str, Vec<Vec<u8>>)> {
    use gen::{eth, flow_word, ip6, short_mark};
    let n = plan(gen::PLACEHOLDER_MARK);
    let m6 = short_mark(&n.marker);
    let arp = |op: u16, tha: [u8; 6]| {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&n.a_mac);
        a.extend_from_slice(&n.a4.octets());
        a.extend_from_slice(&tha);
        a.extend_from_slice(&n.v4.octets());
        a
    };
    let nd = |ty: u8, flags: u8, target: Ipv6Addr, opt: u8| {
        let mut m = vec![ty, 0, 0, 0, flags, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&[opt, 1]);
        m.extend_from_slice(&n.a_mac);
        m
    };
    let solicited_v6 = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 3);
    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let flow = |mut f: Vec<u8>| {
        f[14..18].copy_from_slice(&flow_word(&n.marker));
        f
    };
    let mut out = vec![
        (
            "covert-dst-mac-arp",
            "strict ARP (a request for the victim's address, a reply to it) whose Ethernet destination is six attacker-chosen bytes",
            vec![
                eth(m6, n.a_mac, 0x0806, &arp(1, [0; 6])),
                eth(m6, n.a_mac, 0x0806, &arp(2, n.v_mac)),
            ],
        ),
        (
            "covert-dst-mac-nd",
            "strict neighbour solicitation (for the victim's link-local address) and advertisement (of the attacker's) whose Ethernet destination is six attacker-chosen bytes",
            vec![
                eth(m6, n.a_mac, 0x86dd, &ip6(n.a_ll, n.v_ll, 58, 255, &nd(135, 0, n.v_ll, 1))),
                eth(m6, n.a_mac, 0x86dd, &ip6(n.a6, n.v6, 58, 255, &nd(136, 0x60, n.a6, 2))),
            ],
        ),
        (
            "covert-flow-label-nd",
            "strict neighbour solicitation (for the victim's address) and advertisement (to all nodes) whose IPv6 traffic class and flow label are 28 attacker-chosen bits",
            vec![
                flow(eth([0x33, 0x33, 0xff, 0, 0, 3], n.a_mac, 0x86dd, &ip6(n.a_ll, solicited_v6, 58, 255, &nd(135, 0, n.v6, 1)))),
                flow(eth([0x33, 0x33, 0, 0, 0, 1], n.a_mac, 0x86dd, &ip6(n.a6, all, 58, 255, &nd(136, 0x20, n.a6, 2)))),
            ],
        ),
    ];
    for (_, _, frames) in &mut out {
        for f in frames {
            fix(f, true, true);
        }
    }
    out
}

/// The generator itself (no kernel): every input is well-formed enough to
/// send (carries an intact tag, or the marker in a header field, and fits
/// the MTU), and is the same when built
/// again from its seed and index.
#[test]
fn generated_inputs_carry_their_tag() {
    let n = plan([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let count = env_u64("NETISO_KFUZZ_GEN_CHECK").unwrap_or(20_000);
    for i in 0..count {
        let input = generate(DEFAULT_SEED ^ 0x77, i, &n, i as u32);
        let last = input.frames.last().unwrap();
        assert!((last.len() <= gen::MAX_FRAME || input.vnet.is_some()) && last.len() >= 14);
        if input.tagless {
            assert!(
                gen::find(last, &gen::short_mark(&n.marker)).is_some()
                    || gen::has_flow_word(last, &n.marker),
                "input {i}: {}",
                hex(last)
            );
        } else {
            assert_eq!(
                gen::read_tag(last, &n.marker),
                Some(i as u32),
                "input {i}: {}",
                hex(last)
            );
        }
        for f in &input.frames {
            let _ = gen::describe(f);
            assert!(must_be_counted(f, &n) || f.len() >= 14);
        }
        if i.is_multiple_of(1000) {
            assert_eq!(
                generate(DEFAULT_SEED ^ 0x77, i, &n, i as u32).frames,
                input.frames
            );
        }
    }
}

/// The seed regressions on disk are exactly what `seed_regressions` makes,
/// so the two never drift apart. With `NETISO_WRITE_REGRESSIONS=1` the
/// files are written instead (after changing the generator).
#[test]
fn seed_regressions_on_disk_match_their_generator() {
    let dir = regressions_dir();
    let write = std::env::var("NETISO_WRITE_REGRESSIONS").as_deref() == Ok("1");
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, what, frames) in seed_regressions() {
        let mut text = format!(
            "# {what}.\n# {}. Address plan: tests/kernel_fuzz.rs plan(); one frame per line;\n# the placeholder marker (6b66757a7a4d524b...: a 16-byte tag, the first six bytes\n# alone, or the IPv6 flow word 652b7a4d) is replaced by the run's.\n",
            if name.starts_with("covert") {
                "Found by the kernel fuzzer on the sealed datapath (see covert_regressions)"
            } else {
                "Seed from issue 11"
            }
        );
        for f in &frames {
            let _ = writeln!(text, "{}", hex(f));
        }
        let path = dir.join(format!("{name}.hex"));
        if write {
            std::fs::write(&path, text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                on_disk,
                text,
                "{} differs from its generator; rewrite it with NETISO_WRITE_REGRESSIONS=1 \
                 cargo test -p netiso-daemon --test kernel_fuzz seed_regressions",
                path.display()
            );
        }
    }
}

/// Frames for the calibration: each kind of receiver must see one.
fn calibration_frames(n: &Net) -> Vec<(&'static str, Vec<u8>)> {
    use gen::{eth, ip4, ip6};
    let udp = |seq: u32| {
        let mut u = vec![0x30, 0x39, 0x15, 0xb3, 0, 0, 0, 0];
        u.extend_from_slice(&n.tag(CALIBRATION_SEQ + seq));
        u
    };
    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut out = vec![
        (
            "udp4:5555",
            eth(
                n.v_mac,
                n.a_mac,
                0x0800,
                &ip4(n.a4, n.v4, 17, 64, 1, 0, &[], &udp(0)),
            ),
        ),
        (
            "udp4:5555",
            eth(
                [0xff; 6],
                n.a_mac,
                0x0800,
                &ip4(n.a4, Ipv4Addr::BROADCAST, 17, 64, 2, 0, &[], &udp(1)),
            ),
        ),
        (
            "udp6:5555",
            eth(n.v_mac, n.a_mac, 0x86dd, &ip6(n.a6, n.v6, 17, 64, &udp(2))),
        ),
        (
            "udp6:5555",
            eth(
                n.v_mac,
                n.a_mac,
                0x86dd,
                &ip6(n.a_ll, n.v_ll, 17, 64, &udp(3)),
            ),
        ),
        (
            "udp6:5555",
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                n.a_mac,
                0x86dd,
                &ip6(n.a_ll, all, 17, 64, &udp(4)),
            ),
        ),
        (
            "raw4:253",
            eth(
                n.v_mac,
                n.a_mac,
                0x0800,
                &ip4(n.a4, n.v4, 253, 64, 3, 0, &[], &n.tag(CALIBRATION_SEQ + 5)),
            ),
        ),
        (
            "raw6:58",
            eth(
                n.v_mac,
                n.a_mac,
                0x86dd,
                &ip6(
                    n.a6,
                    n.v6,
                    58,
                    64,
                    &[
                        &[128u8, 0, 0, 0, 0, 1, 0, 1][..],
                        &n.tag(CALIBRATION_SEQ + 6),
                    ]
                    .concat(),
                ),
            ),
        ),
        (
            "packet",
            eth(n.v_mac, n.a_mac, 0x88b5, &n.tag(CALIBRATION_SEQ + 7)),
        ),
    ];
    for (_, f) in &mut out {
        fix(f, true, true);
    }
    out
}

/// Strict link control the attacker may send the victim (and must, for
/// IPv4 and IPv6 to work between them when policy allows): counted when
/// it arrives, to show that the form the tagless inputs imitate does pass.
fn carrier_frames(n: &Net) -> Vec<(&'static str, Vec<u8>)> {
    use gen::{eth, ip6};
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&n.a_mac);
    arp.extend_from_slice(&n.a4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&n.v4.octets());
    let nd = |ty: u8, flags: u8, target: Ipv6Addr, opt: u8| {
        let mut m = vec![ty, 0, 0, 0, flags, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&[opt, 1]);
        m.extend_from_slice(&n.a_mac);
        m
    };
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 3);
    let mut out = vec![
        ("ARP request", eth([0xff; 6], n.a_mac, 0x0806, &arp)),
        (
            "neighbour solicitation",
            eth(
                [0x33, 0x33, 0xff, 0, 0, 3],
                n.a_mac,
                0x86dd,
                &ip6(n.a_ll, solicited, 58, 255, &nd(135, 0, n.v6, 1)),
            ),
        ),
        (
            "neighbour advertisement",
            eth(
                n.v_mac,
                n.a_mac,
                0x86dd,
                &ip6(n.a6, n.v6, 58, 255, &nd(136, 0x60, n.a6, 2)),
            ),
        ),
    ];
    for (_, f) in &mut out {
        fix(f, true, true);
    }
    out
}

/// Before netiso is attached: every kind of receiver must see the frames
/// meant for it, so that a deaf receiver cannot make the test pass.
fn calibrate(attacker: &Guest, victim: &Guest, n: &Net) {
    let rx = Victim::start(victim.ns.path(), "eth0", n.marker, vec![]);
    let frames = calibration_frames(n);
    let to_send: Vec<Vec<u8>> = frames.iter().map(|(_, f)| f.clone()).collect();
    attacker.ns.run(move || {
        let mut s = Sender::open("eth0");
        for f in &to_send {
            assert!(s.send(f), "calibration frame refused: {:?}", s.errors);
        }
    });
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && rx.so_far().1.len() < frames.len() {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let got = rx.stop();
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (via, _) in &frames {
        *want.entry(via).or_default() += 1;
    }
    want.insert("packet", frames.len() as u64);
    for (via, n) in want {
        let seen = got.counts.get(via).copied().unwrap_or(0);
        assert!(
            seen >= n,
            "calibration without netiso: receiver {via} saw {seen} of {n} marked frames \
             (receivers: {:?}); the oracle would be blind",
            got.counts
        );
    }
}

/// What the sending loop did.
#[derive(Default)]
struct Sent {
    inputs: u64,
    frames: u64,
    refused: u64,
    must_count: u64,
    per_template: BTreeMap<&'static str, u64>,
    errors: BTreeMap<i32, u64>,
    elapsed: Duration,
    /// Tagless frames sent (strict control carrying the marker in a
    /// header field) -> where they came from (the input's index, or
    /// `REPLAY_ORIGIN` + the regression file's).
    tagless: HashMap<Vec<u8>, u64>,
}

/// Origins of tagless frames from regression files.
const REPLAY_ORIGIN: u64 = 1 << 62;
/// Tagless frames remembered (for naming the input that crossed).
const MAX_TAGLESS: usize = 1 << 20;

/// Sends the regression files, then generated inputs until the budget is
/// spent; runs on a thread inside the attacker's namespace.
fn send_all(
    n: &Net,
    seed: u64,
    regressions: &[Regression],
    max_inputs: u64,
    budget: Duration,
) -> Sent {
    let mut s = Sender::open("eth0");
    let mut out = Sent::default();
    let start = Instant::now();
    // A tagless frame is strict link control that may pass: it is not
    // expected among the counted drops.
    let mut send = |vnet: Option<&[u8; 10]>, f: &[u8], tagless: Option<u64>, out: &mut Sent| {
        out.frames += 1;
        let counted = tagless.is_none() && must_be_counted(f, n);
        if !s.send_with(vnet, f) {
            out.refused += 1;
            return;
        }
        if counted {
            out.must_count += 1;
        }
        if let Some(origin) = tagless {
            // The first sender of identical bytes (a regression file
            // before a generated input) names them.
            if out.tagless.len() < MAX_TAGLESS {
                out.tagless.entry(f.to_vec()).or_insert(origin);
            }
        }
    };
    for (i, reg) in regressions.iter().enumerate() {
        for (vnet, f) in &reg.frames {
            let mut f = f.clone();
            let tagged = gen::find(&f, &gen::PLACEHOLDER_MARK).is_some();
            retag(&mut f, &gen::PLACEHOLDER_MARK, |_| {
                n.tag(REPLAY_SEQ + i as u32)
            });
            remark(&mut f, &gen::PLACEHOLDER_MARK, &n.marker);
            let origin = (!tagged).then_some(REPLAY_ORIGIN + i as u64);
            send(vnet.as_ref(), &f, origin, &mut out);
        }
    }
    let mut index = 0u64;
    while index < max_inputs && start.elapsed() < budget {
        let input = generate(seed, index, n, index as u32);
        *out.per_template.entry(input.template).or_default() += 1;
        let last = input.frames.len() - 1;
        for (k, f) in input.frames.iter().enumerate() {
            let vnet = if k == last { input.vnet.as_ref() } else { None };
            send(vnet, f, input.tagless.then_some(index), &mut out);
        }
        index += 1;
        out.inputs += 1;
        // Let the victim's receivers keep up.
        if index.is_multiple_of(128) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    out.elapsed = start.elapsed();
    out.errors = s.errors.clone();
    out
}

/// A crossing: the input (rebuilt from its seed and index, or the
/// regression file) and what the victim received.
struct Crossing {
    origin: String,
    template: String,
    notes: Vec<String>,
    frames: Vec<Frame>,
    received: Vec<(String, Vec<u8>)>,
}

/// Where a catch came from.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Input(u64),
    Regression(usize),
    Unknown(Option<u32>),
}

fn crossings(
    got: &Received,
    sent: &Sent,
    n: &Net,
    seed: u64,
    regressions: &[Regression],
) -> Vec<Crossing> {
    let mut by_origin: BTreeMap<Origin, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for c in &got.catches {
        let origin = match c.seq {
            Some(s) if s >= REPLAY_SEQ && ((s - REPLAY_SEQ) as usize) < regressions.len() => {
                Origin::Regression((s - REPLAY_SEQ) as usize)
            }
            Some(s) if s < REPLAY_SEQ => Origin::Input(s as u64),
            Some(_) => Origin::Unknown(c.seq),
            None => match sent.tagless.get(&c.bytes) {
                Some(&o) if o >= REPLAY_ORIGIN => Origin::Regression((o - REPLAY_ORIGIN) as usize),
                Some(&o) => Origin::Input(o),
                None => Origin::Unknown(None),
            },
        };
        by_origin
            .entry(origin)
            .or_default()
            .push((c.via.clone(), c.bytes.clone()));
    }
    by_origin
        .into_iter()
        .map(|(origin, received)| match origin {
            Origin::Regression(i) => {
                let reg = &regressions[i];
                Crossing {
                    origin: format!("regression {}", reg.name),
                    template: reg.name.trim_end_matches(".hex").to_string(),
                    notes: vec![],
                    frames: reg.frames.clone(),
                    received,
                }
            }
            Origin::Input(i) => {
                let Input {
                    template,
                    notes,
                    frames,
                    vnet,
                    ..
                } = generate(seed, i, n, i as u32);
                let last = frames.len() - 1;
                let frames = frames
                    .into_iter()
                    .enumerate()
                    .map(|(k, f)| (if k == last { vnet } else { None }, f))
                    .collect();
                Crossing {
                    origin: format!("seed {seed:#x} input {i}"),
                    template: template.to_string(),
                    notes,
                    frames,
                    received,
                }
            }
            Origin::Unknown(seq) => Crossing {
                origin: match seq {
                    None => "a datagram whose tag was cut (the IP length ended inside it; \
                             its frame is listed under the packet receiver), or a tagless \
                             frame not remembered"
                        .into(),
                    Some(s) => format!("unknown tag sequence {s:#x}"),
                },
                template: "(no intact tag)".into(),
                notes: vec![],
                frames: vec![],
                received,
            },
        })
        .collect()
}

/// Writes a crossing as a regression file (tags replaced by the
/// placeholder), unless it came from one. Returns the path.
fn write_regression(c: &Crossing, n: &Net, seed: u64) -> Option<PathBuf> {
    if c.origin.starts_with("regression") || c.frames.is_empty() {
        return None;
    }
    let dir = regressions_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let index = c.origin.rsplit(' ').next().unwrap_or("0");
    let path = dir.join(format!("{}-{seed:x}-{index}.hex", c.template));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Found by tests/kernel_fuzz.rs: {} ({})",
        c.origin, c.template
    );
    let _ = writeln!(text, "# {}", c.notes.join("; "));
    let _ = writeln!(
        text,
        "# Reached the victim via: {}",
        c.received
            .iter()
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        text,
        "# Frames in order, one per line; the tag is the placeholder."
    );
    for (vnet, f) in &c.frames {
        let mut f = f.clone();
        retag(&mut f, &n.marker, |_| placeholder());
        remark(&mut f, &n.marker, &gen::PLACEHOLDER_MARK);
        let _ = writeln!(text, "{}", frame_line(&(*vnet, f)));
    }
    std::fs::write(&path, text).ok()?;
    Some(path)
}

#[test]
fn nothing_crosses_a_denied_pair() {
    netiso_testkit::require_root();
    let seed = env_u64("NETISO_KFUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let seconds = env_u64("NETISO_KFUZZ_SECONDS");
    let max_inputs = env_u64("NETISO_KFUZZ_FRAMES").unwrap_or(if seconds.is_some() {
        u64::MAX
    } else {
        DEFAULT_FRAMES
    });
    let budget = Duration::from_secs(seconds.unwrap_or(DEFAULT_SECONDS));

    let topo = Topology::new(&[("attacker", "attacker"), ("victim", "victim")]);
    let (attacker, victim) = (topo.guest("attacker"), topo.guest("victim"));
    // A fixed bridge MAC (the host's address in frames), no multicast
    // snooping (every multicast reaches every port), and no br_netfilter
    // in this namespace: the bridge passes malformed IP as it is, so
    // netiso alone stands between the two.
    topo.host.sh(
        "ip link set br0 address 02:77:00:00:00:01 && ip link set br0 type bridge mcast_snooping 0",
    );
    topo.host.sh_ok(
        "sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
    );
    victim
        .ns
        .sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.icmp_echo_ignore_broadcasts=0");
    wait_dad(&victim.ns);
    wait_dad(&attacker.ns);

    let n = plan(fresh_marker());
    check_plan(&n, attacker, victim);
    calibrate(attacker, victim, &n);

    let pins = PinDir::new();
    let policy = policy::parse_str(POLICY, "kernel-fuzz.toml").expect("policy");
    let containers = topo.containers();
    let compiled = policy::compile(&policy, &containers, &mut Default::default()).expect("compile");
    let (desired, _) = daemon::build_desired(&compiled, &containers, &policy, &Default::default());
    let dp = topo.host.run(|| {
        let mut dp = Datapath::load(&pins.path).expect("load");
        dp.apply(&desired).expect("apply");
        dp
    });

    let regressions = load_regressions();
    let carriers = carrier_frames(&n);
    let rx = Victim::start(
        victim.ns.path(),
        "eth0",
        n.marker,
        carriers.iter().map(|(_, f)| f.clone()).collect(),
    );
    let reasons_before = reason_totals(&dp);
    let (a_before, v_before, _) = veth_drops(&dp, attacker.host_ifindex, victim.host_ifindex);

    let sent = {
        let n = n.clone();
        let regs = &regressions;
        attacker
            .ns
            .run(move || send_all(&n, seed, regs, max_inputs, budget))
    };
    // The link still works: strict control from the attacker is delivered.
    {
        let frames: Vec<Vec<u8>> = carriers.iter().map(|(_, f)| f.clone()).collect();
        attacker.ns.run(move || {
            let mut s = Sender::open("eth0");
            for f in &frames {
                s.send(f);
            }
        });
    }
    // Stragglers (softirq work deferred to ksoftirqd).
    std::thread::sleep(Duration::from_millis(500));
    let got = rx.stop();
    let reasons_after = reason_totals(&dp);
    let (a_after, v_after, rows) = veth_drops(&dp, attacker.host_ifindex, victim.host_ifindex);

    // --- Report.
    let mut report = String::new();
    let _ = writeln!(
        report,
        "kernel fuzz: seed {seed:#x}, marker {}, {} regression files, {} inputs ({} frames, {} refused by the kernel) in {:.1} s: {:.0} frames/s",
        hex(&n.marker),
        regressions.len(),
        sent.inputs,
        sent.frames,
        sent.refused,
        sent.elapsed.as_secs_f64(),
        sent.frames as f64 / sent.elapsed.as_secs_f64().max(1e-3)
    );
    let _ = writeln!(report, "inputs per template: {:?}", sent.per_template);
    if !sent.errors.is_empty() {
        let _ = writeln!(report, "send errors (errno: count): {:?}", sent.errors);
    }
    let grown: BTreeMap<String, u64> = reasons_after
        .iter()
        .map(|(i, v)| {
            (
                reason_name(*i),
                v - reasons_before.get(i).copied().unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    let total_grown: u64 = grown.values().sum();
    let counted = (a_after - a_before) + (v_after - v_before);
    let _ = writeln!(report, "drops by reason: {grown:?} (total {total_grown})");
    let _ = writeln!(
        report,
        "counted on the attacker's veth leaving it: {}, on the victim's veth entering it: {}; frames that had to be counted: {}",
        a_after - a_before,
        v_after - v_before,
        sent.must_count
    );
    let _ = writeln!(
        report,
        "victim: {} frames seen on eth0, marker caught {} times {:?}, AF_PACKET queue drops {}",
        got.frames_seen,
        got.total(),
        got.counts,
        got.packet_drops
    );
    let _ = writeln!(
        report,
        "strict link control from the attacker delivered to the victim (the form that must keep working): {}",
        carriers
            .iter()
            .zip(&got.watched)
            .map(|((what, _), k)| format!("{what} {}", if *k > 0 { "yes" } else { "NO" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let found = crossings(&got, &sent, &n, seed, &regressions);
    if !found.is_empty() {
        let mut by_template: BTreeMap<&str, Vec<&Crossing>> = BTreeMap::new();
        for c in &found {
            by_template.entry(&c.template).or_default().push(c);
        }
        let _ = writeln!(
            report,
            "CROSSINGS: {}{} inputs reached the victim (the first three of each template are shown in full)",
            if got.catches.len() >= rx::MAX_CATCHES { "at least " } else { "" },
            found.len()
        );
        for (t, cs) in &by_template {
            let mut vias: Vec<&str> = cs
                .iter()
                .flat_map(|c| c.received.iter().map(|(v, _)| v.as_str()))
                .collect();
            vias.sort();
            vias.dedup();
            let _ = writeln!(
                report,
                "  {t}: {} inputs (receivers {}); e.g. {}",
                cs.len(),
                vias.join(","),
                cs.iter()
                    .take(3)
                    .map(|c| c.origin.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let no_write = std::env::var_os("NETISO_KFUZZ_NO_WRITE").is_some();
        let mut written_per_template: BTreeMap<String, usize> = BTreeMap::new();
        let mut shown_per_template: BTreeMap<String, usize> = BTreeMap::new();
        for c in found.iter() {
            // The first three of each template in full.
            let shown = shown_per_template.entry(c.template.clone()).or_default();
            *shown += 1;
            if *shown > 3 {
                continue;
            }
            let _ = writeln!(
                report,
                "--- {} [{}] {}",
                c.origin,
                c.template,
                c.notes.join("; ")
            );
            for f in &c.frames {
                let _ = writeln!(
                    report,
                    "  sent     {} ({})",
                    frame_line(f),
                    gen::describe(&f.1)
                );
            }
            for (via, b) in c.received.iter().take(3) {
                let _ = writeln!(report, "  received via {via}: {}", hex(b));
            }
            // At most one file per template and run.
            let w = written_per_template.entry(c.template.clone()).or_default();
            if !no_write && *w < 1 {
                if let Some(p) = write_regression(c, &n, seed) {
                    *w += 1;
                    let _ = writeln!(report, "  written to {}", p.display());
                }
            }
        }
    }
    if !got.others.is_empty() {
        let _ = writeln!(
            report,
            "frames the victim received without any marker (first {}):",
            got.others.len()
        );
        for f in &got.others {
            let _ = writeln!(report, "  {} ({})", gen::describe(f), hex(f));
        }
    }
    println!("{report}");
    if let Some(p) = std::env::var_os("NETISO_KFUZZ_SUMMARY") {
        std::fs::write(&p, &report).expect("write the summary");
    }

    assert_eq!(
        got.packet_drops, 0,
        "the victim's AF_PACKET receiver lost frames: the run proves nothing"
    );
    assert!(
        found.is_empty() && got.total() == 0,
        "{} inputs crossed the denied pair (seed {seed:#x}); see above",
        found.len()
    );
    assert!(total_grown > 0, "no drop was counted at all");
    assert!(
        got.watched.iter().all(|&k| k > 0),
        "strict ARP/NS/NA (as Linux sends them) no longer reach a peer: the link is broken; see above"
    );
    if rows < limits::FLOWS as usize / 2 {
        assert!(
            counted >= sent.must_count,
            "{} frames had to meet netiso but only {counted} drops were counted on the two veths",
            sent.must_count
        );
    } else {
        // Evicted flow rows lose their counts; the reason totals do not
        // (they also hold other drops, so this bound is looser).
        println!(
            "flow table too full ({rows} rows) for per-veth counts: checking the reason totals"
        );
        assert!(
            total_grown >= sent.must_count,
            "{} frames had to meet netiso but only {total_grown} drops were counted",
            sent.must_count
        );
    }
    drop(dp);
}
