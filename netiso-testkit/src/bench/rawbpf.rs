//! The empty TC program every program-cost figure is compared with:
//! `r0 = TC_ACT_OK; exit`, loaded with the raw bpf() syscall (the eBPF
//! crate has no such program) and pinned, so that aya can open it and run
//! it through the same `TestRun` path as netiso's programs.
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::SchedClassifier;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel accepts a
/// shorter attr as long as the bytes it does not get would be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `mov64 r0, 0` (TC_ACT_OK), `exit`.
const EMPTY: [u64; 2] = [
    // opcode 0xb7 (ALU64 | MOV | K), dst r0, imm 0
    0x0000_0000_0000_00b7,
    // opcode 0x95 (JMP | EXIT)
    0x0000_0000_0000_0095,
];

/// The bpf() system call.
///
/// # Safety
///
/// `attr` must point at `size` readable bytes laid out as `union bpf_attr`
/// expects for `cmd`, and every pointer inside them must be valid for what
/// the kernel does with it under `cmd`, for the duration of the call.
unsafe fn bpf(cmd: libc::c_long, attr: *const u8, size: usize) -> io::Result<i64> {
    // SAFETY: the caller guarantees `attr`, `size` and the pointers in the
    // attr fit `cmd` (this function's contract).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the empty classifier, pins it at `pin` and opens it with aya.
pub fn load_empty_classifier(pin: &Path) -> Result<SchedClassifier> {
    let license = CString::new("GPL")?;
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"bench_empty\0");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: EMPTY.len() as u32,
        insns: EMPTY.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: `attr` is a live repr(C) head of bpf_attr for BPF_PROG_LOAD,
    // passed with its own size. Its pointers are valid for reading during
    // the call: `insns` at the promoted ('static) EMPTY, `insn_cnt`
    // instructions long; `license` at the NUL-terminated `license`, alive
    // until the end of this function. `log_buf` is 0 with `log_size` 0, so
    // the kernel writes nothing.
    let fd = unsafe {
        bpf(
            BPF_PROG_LOAD,
            &attr as *const _ as *const u8,
            size_of::<ProgLoadAttr>(),
        )
    }
    .context("loading the empty TC program (BPF_PROG_LOAD)")?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new program fd, open and
    // owned by nothing else, so OwnedFd may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if let Some(parent) = pin.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let pin_attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: `pin_attr` is a live repr(C) head of bpf_attr for BPF_OBJ_PIN,
    // passed with its own size; `pathname` points at the NUL-terminated
    // `path`, alive until the end of this function, and `bpf_fd` is the
    // program fd owned by `fd`, open across the call.
    unsafe {
        bpf(
            BPF_OBJ_PIN,
            &pin_attr as *const _ as *const u8,
            size_of::<ObjPinAttr>(),
        )
    }
    .with_context(|| format!("pinning the empty program at {}", pin.display()))?;
    SchedClassifier::from_pin(pin).context("opening the pinned empty program with aya")
}
