//! netiso's policy compiler: policy files in, validated [`Policy`] and the
//! kernel's identity and policy map contents out.
//!
//! Pure: no aya, tokio, bollard or netlink (the crate does not depend on
//! them); the only I/O is reading the files given to [`load_path`]. The
//! language is described in `docs/policy.md`.
//!
//! - [`parse_str`] / [`load_path`] give a validated [`Policy`] (with
//!   warnings) or a [`PolicyError`] listing every problem, rendered like
//!   rustc's diagnostics.
//! - [`evaluate`] is the reference semantics, straight from the text model.
//! - [`compile`] produces the identity and policy map contents; its
//!   [`Compiled::lookup`] mimics the kernel and agrees with [`evaluate`]
//!   (checked by a property test).
//!
//! Modules, bottom first; each uses only the ones named after "uses" (all
//! below it), and none uses this root:
//!
//! - `container`: containers, attachments, published ports as plain data. Uses nothing.
//! - `glob`: `*` patterns of names and images. Uses nothing.
//! - `diagnostic`: errors and warnings with their place, rendered. Uses nothing.
//! - `cidr`: address blocks and the peers they make. Uses nothing.
//! - `fqdn`: peers by name, their patterns and matching. Uses nothing.
//! - `ports`: port and protocol specs. Uses `diagnostic`.
//! - `selector`: which containers a group selects. Uses `container`, `diagnostic`, `glob`.
//! - `model`: the validated policy (groups, rules, settings). Uses `cidr`, `container`,
//!   `diagnostic`, `fqdn`, `ports`, `selector`.
//! - `lint`: warnings about a valid policy. Uses `container`, `diagnostic`, `model`, `ports`,
//!   `selector`.
//! - `parse`: TOML text to `model`. Uses `cidr`, `diagnostic`, `fqdn`, `lint`, `model`, `ports`,
//!   `selector`.
//! - `load`: files and directories to `parse` (the only I/O). Uses `diagnostic`, `model`, `parse`.
//! - `eval`: the reference semantics. Uses `model`.
//! - `compile`: map contents and the kernel's lookup. Uses `cidr`, `container`, `diagnostic`,
//!   `eval`, `fqdn`, `model`, `ports` (its tests also `parse`).
//! - `suggest`: a policy from observed flows (learn mode) and what a policy would drop of
//!   them. Uses `container`, `eval`, `model`, `parse`, `selector`.
//! - `testing` (tests, feature `testing`): fixtures. Uses `container`.
//!
//! `netiso-daemon/tests/layers.rs` checks these arrows and this crate's dependencies.
mod cidr;
mod compile;
pub mod container;
mod diagnostic;
mod eval;
pub mod fqdn;
mod glob;
mod lint;
mod load;
mod model;
mod parse;
mod ports;
mod selector;
pub mod suggest;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cidr::{Cidr, CidrEntry, CidrPeer};
pub use compile::{
    compile, compile_members, is_container_identity, Compiled, FqdnEntry, IdentityAllocator,
    IdentityDef, RuleInfo, FIRST_CIDR_IDENTITY,
};
pub use diagnostic::{
    did_you_mean, render, Diagnostic, Kind, Location, Note, PolicyError, Severity,
};
pub use eval::{evaluate, Decision};
pub use glob::glob_match;
pub use load::load_path;
pub use model::{Defaults, Group, Peer, Policy, Rule, Settings, HOST, RESERVED, WORLD};
pub use parse::parse_str;
pub use ports::{PortSpec, Proto};
pub use selector::{LabelMatch, LabelTest, Selector, COMPOSE_PROJECT, COMPOSE_SERVICE};

#[cfg(test)]
mod tests;
