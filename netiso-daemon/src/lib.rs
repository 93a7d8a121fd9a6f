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
//! - [`policy`]: the pure policy compiler (the `netiso-policy` crate).
//! - [`model`]: containers as plain data (`netiso_policy::container`).
pub mod api;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod host;
pub mod observe;

// The two bottom layers live in the `netiso-policy` crate, where Cargo
// keeps them pure; re-exported so that `crate::policy` / `crate::model`
// paths stay as they were.
pub use netiso_policy::container as model;

/// The pure policy compiler: the `netiso-policy` crate.
pub mod policy {
    pub use netiso_policy::*;

    /// Fixtures of the policy tests, for the daemon's own unit tests.
    #[cfg(test)]
    pub(crate) mod tests {
        pub(crate) use netiso_policy::testing::container;
    }
}
