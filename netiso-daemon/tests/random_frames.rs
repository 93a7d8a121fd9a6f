//! Random and mutated frames through both programs (BPF_PROG_TEST_RUN).
//! The endpoint may reach nothing and be reached by nothing, so the only
//! frames allowed to pass are the ones the sealed design lets through
//! (`common::reference`): ARP, ND, MLD and IGMP in their strict form,
//! other ethertypes once re-opened by the setting, and later fragments of
//! a first fragment that passed. Anything else that passes is a hole.
mod common;

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use common::frames::MAC_A;
use common::reference::{templates, Reference, A, A6};
use common::{NetNs, PinDir};
use netiso_common::{defaults, programs, tc, IdentityInfo, IpKey};
use netiso_daemon::datapath::{Datapath, Desired, EndpointSpec};

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
            ipv4_prefix_len: None,
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
    let mut reference = Reference::new();
    let (mut ran, mut refused) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..20_000u32 {
        if Instant::now() > deadline {
            break;
        }
        if i == 10_000 {
            dp.set_allow_non_ip(true).unwrap();
        }
        let allow_non_ip = i >= 10_000;
        let t = templates[rng.below(templates.len())].clone();
        let frame = if rng.below(8) == 0 {
            t
        } else {
            mutate(&mut rng, t)
        };
        for (prog, leaving) in [
            (programs::FROM_CONTAINER, true),
            (programs::TO_CONTAINER, false),
        ] {
            match run(&mut dp, prog, &frame) {
                Ok(verdict) => {
                    ran += 1;
                    assert!(
                        verdict == tc::ACT_SHOT
                            || (verdict == tc::PASS
                                && reference.may_pass(&frame, leaving, allow_non_ip)),
                        "seed {seed:#x}, frame {i} through {prog} got verdict {verdict}: {frame:02x?}"
                    );
                    if verdict == tc::PASS {
                        reference.passed(&frame);
                    }
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
