//! Builds the eBPF object (netiso-ebpf) with aya-build so that
//! `cargo build -p netiso-daemon` is all a contributor needs once the
//! toolchain is present (`cargo xtask setup`).
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace above {}", manifest.display()))?
        .join("netiso-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netiso-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install \
         the nightly rust-src component, llvm-22-dev and bpf-linker",
    )?;
    // With AYA_BUILD_SKIP=1 (metadata-only tools), embed an empty object.
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("netiso");
    if !out.exists() {
        std::fs::write(&out, [])?;
    }
    Ok(())
}
