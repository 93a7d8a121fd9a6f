//! netiso: network isolation between Docker containers, enforced by eBPF
//! TC programs on each container's host-side veth.
pub mod model;
