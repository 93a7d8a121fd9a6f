//! Where netiso keeps its files unless told otherwise: the one home of the
//! default paths the daemon and the CLI share. Uses nothing of the crate.

/// The daemon's configuration file (read if present).
pub const CONFIG: &str = "/etc/netiso/netiso.toml";
/// The policy file, or a directory of `*.toml` policy files.
pub const POLICY: &str = "/etc/netiso/policy.toml";
/// Where the daemon publishes `state.json` and its control socket.
pub const STATE_DIR: &str = "/run/netiso";
/// Where programs, links and maps are pinned (bpffs).
pub const PIN_DIR: &str = netiso_common::PIN_DIR;
