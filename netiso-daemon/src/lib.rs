//! netiso: network isolation between Docker containers, enforced by eBPF
//! TC programs on each container's host-side veth.
//!
//! Layers, top to bottom; a module uses only those below it (see
//! ARCHITECTURE.md, "Layers"):
//!
//! - [`cli`]: the `netiso` command line.
//! - [`daemon`]: the `netiso daemon` process (loop, services, hardening).
//! - [`api`]: how the daemon is talked to (inbox, control socket).
//! - [`observe`]: what the daemon shows (state, events, stats, status, metrics).
//! - [`datapath`]: the loaded eBPF object and what is read from it.
//! - [`host`]: adapters to the host (Docker, netlink).
//! - [`policy`]: the pure policy compiler.
//! - [`model`]: containers as plain data.
pub mod api;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod host;
pub mod model;
pub mod observe;
pub mod policy;
