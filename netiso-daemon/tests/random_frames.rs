//! Random and mutated frames through both programs (BPF_PROG_TEST_RUN).
//! The endpoint may reach nothing and be reached by nothing, so the only
//! frames allowed to pass are the ones the design always lets through:
//! ARP, other non-IP ethertypes (unless dropped by setting), IGMP, and
//! IPv6 neighbour discovery / MLD. Anything else that passes is a hole.
mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::frames::{eth, ext8, icmp_echo, icmpv6, ipv4, ipv6, tcp, udp, MAC_A, MAC_B, SYN};
use common::{NetNs, PinDir};
use netiso_common::{defaults, programs, tc, IdentityInfo, IpKey};
use netiso_daemon::datapath::{Datapath, Desired, EndpointSpec};

const A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// xorshift64*: deterministic, so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn templates() -> Vec<Vec<u8>> {
    let v4 = |proto, l4: &[u8]| eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, proto, 7, 0, l4));
    let v6 = |next, l4: &[u8]| eth(MAC_A, MAC_B, 0x86dd, &ipv6(A6, B6, next, l4));
    vec![
        v4(6, &tcp(1000, 80, SYN)),
        v4(17, &udp(1000, 53, b"payload")),
        v4(1, &icmp_echo(8, 1)),
        v4(2, &[0x16, 0, 0, 0, 224, 0, 0, 22]),
        eth(
            MAC_A,
            MAC_B,
            0x0800,
            &ipv4(A, B, 17, 9, 0x2000, &udp(1, 2, &[0; 24])),
        ),
        eth(MAC_A, MAC_B, 0x0800, &ipv4(A, B, 17, 9, 3, &[0; 24])),
        v6(6, &tcp(1000, 80, SYN)),
        v6(17, &udp(1000, 53, b"payload")),
        v6(58, &icmpv6(135)),
        v6(0, &ext8(58, &icmpv6(143))),
        v6(0, &ext8(60, &ext8(6, &tcp(1, 2, SYN)))),
        v6(44, &[6, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2]),
        eth(MAC_A, [0xff; 6], 0x0806, &[0; 28]),
        eth(MAC_A, MAC_B, 0x8100, &[0, 1, 0x08, 0, 0x45, 0, 0, 20]),
    ]
}

/// What the design lets through on an endpoint that may talk to nobody.
fn may_pass(f: &[u8], drop_non_ip: bool) -> bool {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    match ethertype {
        0x0806 => true,
        0x0800 => f.len() >= 34 && f[14] >> 4 == 4 && f[14] & 0x0f >= 5 && f[23] == 2,
        0x86dd => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return false;
            }
            let (mut next, mut off) = (f[20], 54usize);
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 if f.len() >= off + 2 => {
                        next = f[off];
                        off += (f[off + 1] as usize + 1) * 8;
                    }
                    51 if f.len() >= off + 2 => {
                        next = f[off];
                        off += (f[off + 1] as usize + 2) * 4;
                    }
                    44 if f.len() >= off + 8 => {
                        next = f[off];
                        off += 8;
                    }
                    _ => break,
                }
            }
            next == 58 && f.len() >= off + 8 && matches!(f[off], 130..=137 | 143)
        }
        _ => !drop_non_ip,
    }
}

fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 | 1 => {
                // Flip a byte past the source MAC (a changed source MAC is
                // simply a spoofed-mac drop).
                if f.len() > 12 {
                    let i = 12 + rng.below(f.len() - 12);
                    f[i] = rng.next() as u8;
                }
            }
            2 => {
                let keep = 14 + rng.below(f.len().saturating_sub(13).max(1));
                f.truncate(keep.min(f.len()));
            }
            3 => {
                for _ in 0..rng.below(32) {
                    f.push(rng.next() as u8);
                }
            }
            _ => {
                // Small header fields matter most: IHL, lengths, next header.
                let hot = [14usize, 16, 17, 20, 21, 22, 23, 54, 55];
                let i = hot[rng.below(hot.len())];
                if i < f.len() {
                    f[i] = rng.next() as u8;
                }
            }
        }
    }
    f
}

fn run(dp: &mut Datapath, prog: &str, frame: &[u8]) -> Result<i32, aya::programs::ProgramError> {
    let p: &mut SchedClassifier = dp.ebpf_mut().program_mut(prog).unwrap().try_into().unwrap();
    p.test_run(TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    })
    .map(|r| r.return_value as i32)
}

#[test]
fn random_frames_never_open_a_hole() {
    let pins = PinDir::new();
    let ns = NetNs::new("rf");
    let mut desired = Desired::default();
    let deny = defaults::DENY_EGRESS | defaults::DENY_INGRESS;
    desired.endpoints.insert(
        1,
        EndpointSpec {
            ifname: "lo".into(),
            identity: 256,
            flags: deny,
            ipv4: Some(A),
            ipv6: Some(A6),
            mac: Some(MAC_A),
        },
    );
    desired.identities.insert(
        IpKey::v4(A.octets(), 0),
        IdentityInfo {
            identity: 256,
            flags: deny,
        },
    );
    let mut dp = ns.run(|| {
        let mut dp = Datapath::load(&pins.path).unwrap();
        dp.apply(&desired).unwrap();
        dp
    });
    let seed = std::env::var("NETISO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e65_7469_736f_u64);
    let mut rng = Rng(seed);
    let templates = templates();
    let (mut ran, mut refused) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..20_000u32 {
        if Instant::now() > deadline {
            break;
        }
        if i == 10_000 {
            dp.set_drop_non_ip(true).unwrap();
        }
        let drop_non_ip = i >= 10_000;
        let t = templates[rng.below(templates.len())].clone();
        let frame = if rng.below(8) == 0 {
            t
        } else {
            mutate(&mut rng, t)
        };
        for prog in [programs::FROM_CONTAINER, programs::TO_CONTAINER] {
            match run(&mut dp, prog, &frame) {
                Ok(verdict) => {
                    ran += 1;
                    assert!(
                        verdict == tc::ACT_SHOT || (verdict == tc::ACT_OK && may_pass(&frame, drop_non_ip)),
                        "seed {seed:#x}, frame {i} through {prog} got verdict {verdict}: {frame:02x?}"
                    );
                }
                // The kernel's test harness itself refuses frames shorter
                // than the L3 header their ethertype announces.
                Err(e) => {
                    assert!(
                        frame.len() < 14 + 40,
                        "frame {i} refused: {e}: {frame:02x?}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert!(
        ran > 20_000,
        "only {ran} runs ({refused} refused by the harness)"
    );
    drop(dp);
}
