//! The eBPF datapath: the loaded object (pins, attachments, map writes), its counters and its kernel log; may use `host` and `model`.
pub mod counters;
pub mod kernel_log;
mod object;
pub mod pairs;

pub use object::{
    link_local_of, require_root, ApplyReport, AttachMode, Datapath, Desired, EndpointSpec,
    EBPF_OBJECT,
};
