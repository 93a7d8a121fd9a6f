//! Random and mutated frames through both programs (BPF_PROG_TEST_RUN).
//! The endpoint may reach nothing and be reached by nothing, so the only
//! frames allowed to pass are the ones the sealed design lets through
//! (`netiso_testkit::reference`): ARP, ND, MLD and IGMP in their strict form,
//! other ethertypes once re-opened by the setting, and later fragments of
//! a first fragment that passed. Anything else that passes is a hole.

use std::time::{Duration, Instant};

use netiso_common::{programs, tc};
use netiso_daemon::datapath::Datapath;
use netiso_testkit::mutate::{mutate, Rng};
use netiso_testkit::reference::{run_frame, sealed_endpoint, templates, Reference};
use netiso_testkit::{NetNs, PinDir};

#[test]
fn random_frames_never_open_a_hole() {
    let pins = PinDir::new();
    let ns = NetNs::new("rf");
    let desired = sealed_endpoint();
    let mut dp = ns.run(|| {
        let mut dp = Datapath::load(&pins.path).unwrap();
        dp.apply(&desired).unwrap();
        dp
    });
    let seed = std::env::var("NETISO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e65_7469_736f_u64);
    let rng = Rng::new(seed);
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
            mutate(&rng, t)
        };
        for (prog, leaving) in [
            (programs::FROM_CONTAINER, true),
            (programs::TO_CONTAINER, false),
        ] {
            match run_frame(&mut dp, prog, &frame) {
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
