//! The daemon loop's inbox: the messages its other tasks (control socket,
//! policy file watcher, timers) send it, and the [`Handles`] they get.
//! Plain types, so that the socket server and the loop both depend on
//! this file and not on each other.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::observe::state::State;

/// Requests to the running daemon from its other tasks (control socket,
/// policy file watcher, timers).
#[derive(Debug)]
pub enum Control {
    /// Reload the policy; the reply says whether it was applied.
    Reload {
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// List every container again and reconcile.
    Resync,
    /// The policy file changed on disk (from `policy_watch`): reload.
    PolicyFileChanged,
    /// Kernel debug logging on or off.
    DebugLog {
        on: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Learn mode: drain the learn table into the record file now.
    Learned {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Events per second per CPU sent to user space.
    EventRate {
        per_second: u32,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What services running beside the daemon loop get: a way to ask it for
/// things, and the state it publishes after every reconcile.
#[derive(Clone, Debug)]
pub struct Handles {
    pub control: mpsc::Sender<Control>,
    pub state: watch::Receiver<Arc<State>>,
}
