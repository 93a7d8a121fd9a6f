//! Services that run beside the daemon loop (control socket, metrics, …).
//! Each gets the [`Handles`] to ask the daemon for things and to read the
//! state it publishes.
use anyhow::Result;

use crate::daemon::{Handles, Options};

/// Starts every service on the current tokio runtime.
pub fn spawn(_opts: &Options, _handles: Handles) -> Result<()> {
    Ok(())
}
