//! The TC programs live in `main.rs` (built for bpfel-unknown-none by
//! netiso-daemon's build script). This library target only exists so the
//! daemon can name this crate as a build dependency.
#![no_std]
