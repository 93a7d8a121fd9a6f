//! netiso: network isolation between Docker containers, enforced by eBPF
//! TC programs on each container's host-side veth.
pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod datapath;
pub mod docker;
pub mod events;
pub mod explain;
pub mod filter;
pub mod graph;
pub mod kernel_log;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod policy;
pub mod policy_watch;
pub mod sd_notify;
pub mod services;
pub mod state;
pub mod stats;
pub mod status;
pub mod telemetry;
pub mod verify;
