//! Frames through the real TC programs with BPF_PROG_TEST_RUN.
//!
//! The datapath is loaded once per process, in a private network and mount
//! namespace (with its own bpffs, so nothing is pinned where the host can
//! see it and nothing is left behind), with one endpoint that may talk to
//! nobody. Each input is a short sequence of frames (mutated templates or
//! raw bytes) sent through either program, with the non-IP setting either
//! way. Checked for every frame:
//!
//! - a frame passes only if the reference says the sealed design lets it
//!   through (`Reference::may_pass`: ARP, ND, MLD and IGMP in their strict
//!   form, other ethertypes only when re-opened, later fragments of a
//!   first fragment that passed): a denied identity pair is never allowed,
//!   whatever the earlier frames left in conntrack or the fragment table;
//! - every drop is counted once, under exactly one reason; a pass counts
//!   none.
//!
//! libFuzzer sees coverage of user space only, not of the eBPF code, so
//! the verdict and the drop reason are turned into distinct branches here
//! (see `feedback`): an input that reaches a new reason in a new direction
//! is kept in the corpus.
#![no_main]

use std::cell::RefCell;
use std::path::Path;

use aya::maps::PerCpuArray;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use netiso_common::{maps, programs, tc, Counter, DropReason};
use netiso_daemon::datapath::Datapath;
use netiso_testkit::mutate::{self, Edit as TemplateEdit};
use netiso_testkit::reference::{run_frame, sealed_endpoint, templates, Reference};

/// libFuzzer's input for one [`mutate::Edit`] (whose offsets it takes
/// modulo what the frame has, so every value is valid).
#[derive(Arbitrary, Debug)]
enum Edit {
    Byte { at: u16, value: u8 },
    Hot { which: u8, value: u8 },
    Truncate { keep: u16 },
    Append { bytes: Vec<u8> },
}

impl From<&Edit> for TemplateEdit {
    fn from(e: &Edit) -> Self {
        match e {
            Edit::Byte { at, value } => TemplateEdit::Byte {
                at: *at as usize,
                value: *value,
            },
            Edit::Hot { which, value } => TemplateEdit::Hot {
                which: *which as usize,
                value: *value,
            },
            Edit::Truncate { keep } => TemplateEdit::Truncate {
                keep: *keep as usize,
            },
            Edit::Append { bytes } => TemplateEdit::Append {
                bytes: bytes.clone(),
            },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Template { index: u8, edits: Vec<Edit> },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Step {
    /// Through `netiso_to_container` (else `netiso_from_container`).
    to_container: bool,
    drop_non_ip: bool,
    frame: Frame,
}

const MAX_STEPS: usize = 8;

fn build(frame: &Frame, templates: &[Vec<u8>]) -> Vec<u8> {
    match frame {
        Frame::Raw(bytes) => bytes.iter().copied().take(1600).collect(),
        Frame::Template { index, edits } => {
            let edits: Vec<TemplateEdit> = edits
                .iter()
                .take(mutate::MAX_EDITS)
                .map(TemplateEdit::from)
                .collect();
            mutate::apply(&templates[*index as usize % templates.len()], &edits)
        }
    }
}

struct Harness {
    dp: Datapath,
    templates: Vec<Vec<u8>>,
    drop_non_ip: bool,
    /// Packets per drop reason after the last frame.
    reasons: [u64; 16],
    /// The reference, with the fragment notes of the frames that passed.
    reference: Reference,
}

/// Enters a private network and mount namespace with its own bpffs at
/// /sys/fs/bpf, then loads the datapath with one deny-all endpoint on lo
/// (ifindex 1, which BPF_PROG_TEST_RUN reports).
fn setup() -> Harness {
    assert_eq!(
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "the packet fuzzer loads eBPF programs: run it as root"
    );
    // Namespaces are per thread: libFuzzer runs every input on this one.
    // SAFETY: unshare takes integer flags only and touches no memory of
    // ours; it changes the namespaces of this thread, the one that runs
    // every input.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let root = c"/";
    // SAFETY: `root` is a NUL-terminated 'static C string; source, type and
    // data may be null for a propagation change (MS_PRIVATE), and mount
    // only reads what it is given.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "making mounts private: {}",
        std::io::Error::last_os_error()
    );
    let (bpf, at) = (c"bpf", c"/sys/fs/bpf");
    // SAFETY: source, target and type are NUL-terminated 'static C strings,
    // bpffs takes no data (null is allowed), and mount only reads them.
    let rc = unsafe { libc::mount(bpf.as_ptr(), at.as_ptr(), bpf.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(
        rc,
        0,
        "mounting a private bpffs: {}",
        std::io::Error::last_os_error()
    );

    let desired = sealed_endpoint();
    let mut dp = Datapath::load(Path::new("/sys/fs/bpf/netiso-fuzz")).expect("load the datapath");
    dp.apply(&desired).expect("apply the endpoint");
    dp.set_allow_non_ip(true).unwrap();
    let mut h = Harness {
        dp,
        templates: templates(),
        drop_non_ip: false,
        reasons: [0; 16],
        reference: Reference::new(),
    };
    h.reasons = h.read_reasons();
    h
}

impl Harness {
    fn read_reasons(&self) -> [u64; 16] {
        let map = self.dp.ebpf().map(maps::REASON_STATS).expect("reason map");
        let arr: PerCpuArray<_, Counter> = PerCpuArray::try_from(map).expect("per-CPU array");
        let mut out = [0u64; 16];
        for r in DropReason::ALL {
            let v = arr.get(&(r as u32), 0).expect("read a reason counter");
            out[r as usize] = v.iter().map(|c| c.packets).sum();
        }
        out
    }
}

/// Distinct branches per (direction, verdict, reason), so that libFuzzer
/// keeps inputs that reach a new one.
#[inline(never)]
fn feedback(to_container: bool, reason: Option<DropReason>) {
    use std::hint::black_box;
    let r = match reason {
        None => black_box(0),
        Some(DropReason::PolicyDeny) => black_box(1),
        Some(DropReason::DefaultDeny) => black_box(2),
        Some(DropReason::SpoofedIp) => black_box(3),
        Some(DropReason::SpoofedMac) => black_box(4),
        Some(DropReason::MalformedL3) => black_box(5),
        Some(DropReason::MalformedL4) => black_box(6),
        Some(DropReason::NonIp) => black_box(7),
        Some(DropReason::FailClosed) => black_box(8),
        Some(DropReason::Fragment) => black_box(9),
        Some(DropReason::Revoked) => black_box(10),
        Some(DropReason::Audit) => black_box(11),
        Some(DropReason::Vlan) => black_box(12),
        Some(DropReason::NotForEndpoint) => black_box(13),
        Some(DropReason::Control) => black_box(14),
        Some(DropReason::IcmpUnrelated) => black_box(15),
    };
    if to_container {
        match r {
            0 => black_box(100),
            2 => black_box(102),
            5 => black_box(105),
            6 => black_box(106),
            7 => black_box(107),
            9 => black_box(109),
            12 => black_box(112),
            13 => black_box(113),
            14 => black_box(114),
            15 => black_box(115),
            _ => black_box(199),
        };
    } else {
        match r {
            0 => black_box(200),
            2 => black_box(202),
            3 => black_box(203),
            4 => black_box(204),
            5 => black_box(205),
            6 => black_box(206),
            7 => black_box(207),
            9 => black_box(209),
            12 => black_box(212),
            14 => black_box(214),
            15 => black_box(215),
            _ => black_box(299),
        };
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|steps: Vec<Step>| {
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let h = slot.get_or_insert_with(setup);
        for (i, step) in steps.iter().take(MAX_STEPS).enumerate() {
            if step.drop_non_ip != h.drop_non_ip {
                h.dp.set_allow_non_ip(!step.drop_non_ip).unwrap();
                h.drop_non_ip = step.drop_non_ip;
            }
            let frame = build(&step.frame, &h.templates);
            if frame.len() < 14 {
                continue;
            }
            let prog = if step.to_container {
                programs::TO_CONTAINER
            } else {
                programs::FROM_CONTAINER
            };
            let verdict = match run_frame(&mut h.dp, prog, &frame) {
                Ok(v) => v,
                // The kernel's harness refuses frames shorter than the L3
                // header their ethertype announces.
                Err(e) => {
                    assert!(frame.len() < 14 + 40, "frame {i} refused: {e}: {frame:02x?}");
                    continue;
                }
            };
            let leaving = !step.to_container;
            assert!(
                verdict == tc::ACT_SHOT
                    || (verdict == tc::PASS
                        && h.reference.may_pass(&frame, leaving, !h.drop_non_ip)),
                "frame {i} through {prog} (drop_non_ip {}) got verdict {verdict}: {frame:02x?}",
                h.drop_non_ip
            );
            if verdict == tc::PASS {
                h.reference.passed(&frame);
            }
            let now = h.read_reasons();
            let moved: Vec<(usize, u64)> = (0..16)
                .filter(|&r| now[r] != h.reasons[r])
                .map(|r| (r, now[r] - h.reasons[r]))
                .collect();
            h.reasons = now;
            let reason = if verdict == tc::ACT_SHOT {
                assert!(
                    moved.len() == 1 && moved[0].1 == 1,
                    "frame {i} through {prog} dropped, reason counters moved by {moved:?}: {frame:02x?}"
                );
                let r = DropReason::from_u8(moved[0].0 as u8);
                assert!(
                    r.is_some() && r != Some(DropReason::Audit),
                    "frame {i}: a drop counted as {r:?}"
                );
                r
            } else {
                assert!(
                    moved.is_empty(),
                    "frame {i} through {prog} passed, yet reason counters moved by {moved:?}: {frame:02x?}"
                );
                None
            };
            feedback(step.to_container, reason);
        }
    });
});
