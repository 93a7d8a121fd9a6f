//! What the daemon shows: published state, events, stats, status, metrics, loop telemetry and the filters they share; may use `datapath`, `host`, `policy`, `model`.
pub mod clock;
pub mod defaults;
pub mod events;
pub mod filter;
pub mod flow;
pub mod learned;
pub mod metrics;
pub mod names;
pub mod state;
pub mod stats;
pub mod status;
pub mod telemetry;
