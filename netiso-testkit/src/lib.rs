//! netiso's test kit: everything the integration tests, the benches and the
//! fuzz targets of netiso share, one copy each. Crafted frames and the
//! reference evaluator for the sealed datapath (pure, std only), the frame
//! mutator, network namespaces / pins / veth topologies, Docker resources,
//! a daemon process, a DNS server and client, helpers of the hostile,
//! observability and lifecycle tests, the example-policy scenarios, a
//! multi-node Docker Swarm in namespaces, and the bench harness. It may
//! use netiso-daemon's library and netiso-common; nothing in netiso's
//! production code may use it (netiso-daemon takes it as a
//! dev-dependency).

#![expect(
    clippy::new_without_default,
    reason = "`new` of these types creates a resource (a Docker network, a pin \
              directory, containers) that `Drop` removes: a `Default` would hide that"
)]

pub mod bench;
pub mod daemon;
pub mod dns;
pub mod docker;
pub mod fleet;
pub mod frames;
pub mod hostile;
pub mod mutate;
pub mod ns;
pub mod obs;
pub mod ops;
pub mod reference;
pub mod scenario;
pub mod swarm;
pub mod topology;

pub use daemon::{netiso_bin, DaemonProc};
pub use ns::{require_root, run_in, sh, sh_ok, unique, NetNs, PinDir};
