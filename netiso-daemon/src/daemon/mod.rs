//! The `netiso daemon` process: run loop, reconciler and its seam (ports), desired state, options and config, services beside the loop, policy watch, fail-closed holds, hardening; may use every layer below (`api` and down).
pub mod config;
pub mod desired;
pub mod fail_closed;
pub mod fqdn;
pub mod options;
pub mod policy_perms;
pub mod policy_watch;
mod ports;
pub mod privileges;
mod reconcile;
mod run;
pub mod sd_notify;
pub mod services;
pub mod swarm_policy;

pub use desired::{add_host_addresses, build_desired, fit_endpoints, unenforceable_reason};
pub use options::{Options, ServiceOptions};
pub use run::run;
