//! What user space decodes from the kernel and from its own files: event
//! records from the ring buffer, flow-table rows, and `state.json`.
//!
//! A pinned map or the state file can hold anything a root process wrote
//! (or an older layout): decoding and naming must never panic, whatever
//! the bytes. A state file that parses must write back to the same state;
//! rows must be named consistently (an audit event is reported as such,
//! unknown reasons and directions as unknown).
#![no_main]

use std::collections::BTreeMap;
use std::mem::size_of;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use netiso_common::{DropReason, Event, FlowKey, FlowValue};
use netiso_daemon::observe::events::{self, MonitorMessage};
use netiso_daemon::observe::filter::Filter;
use netiso_daemon::observe::state::{EndpointState, State};
use netiso_daemon::observe::stats::{self, Stats, View};

#[derive(Arbitrary, Debug)]
struct Input {
    /// `state.json` as the daemon might find it (or garbage).
    state_json: Vec<u8>,
    /// Ring-buffer records (any length).
    records: Vec<Vec<u8>>,
    /// Flow-table rows: key and value bytes.
    flows: Vec<([u8; size_of::<FlowKey>()], [u8; size_of::<FlowValue>()])>,
    /// A `netiso stats` / `monitor` filter.
    container: Option<String>,
    group: Option<String>,
    reason: Option<String>,
}

/// A state naming a few addresses and identities, for when the fuzzed one
/// does not parse.
fn fallback_state() -> State {
    let mut identities = BTreeMap::new();
    identities.insert(256, vec!["web".to_string()]);
    identities.insert(257, vec!["db".to_string(), "web".to_string()]);
    State {
        endpoints: vec![EndpointState {
            container: "web-1".into(),
            identity: 256,
            ip: Some("10.9.0.1".parse().unwrap()),
            enforced: true,
            ..EndpointState::default()
        }],
        identities,
        ..State::default()
    }
}

/// Plain-old-data from bytes (the layouts are integers and byte arrays only).
fn pod<T: aya::Pod>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), size_of::<T>());
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes (asserted above),
    // and `T: aya::Pod` promises any bytes are a valid T (netiso-common's
    // repr(C), integer-only map types); read_unaligned because a byte slice
    // has no alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fuzz_target!(|input: Input| {
    let state = match serde_json::from_slice::<State>(&input.state_json) {
        Ok(s) => {
            // What parses must write back to the same state.
            let again: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap())
                .expect("a state written by serde reads back");
            assert_eq!(again, s);
            s
        }
        Err(_) => fallback_state(),
    };
    let filter = Filter {
        container: input.container,
        group: input.group,
        reason: input.reason,
    };
    let filter_ok = filter.validate().is_ok();

    for rec in input.records.iter().take(16) {
        let Some(ev) = events::decode(rec) else {
            assert!(rec.len() < size_of::<Event>(), "a full record must decode");
            continue;
        };
        let row = events::row(&state, &ev);
        let reason = DropReason::from_u8(ev.flow.reason);
        assert_eq!(row.verdict == "audit", reason == Some(DropReason::Audit));
        assert_eq!(row.flow.reason == "unknown", reason.is_none());
        assert_eq!(row.flow.rule.is_some(), ev.rule_id != 0);
        let msg = MonitorMessage::Event(Box::new(row));
        let _ = events::wanted(&filter, &msg);
        // The monitor stream is JSON lines: every row must serialise.
        let line = serde_json::to_string(&msg).expect("an event row serialises");
        assert!(!line.contains('\n'));
    }

    let flows: Vec<_> = input
        .flows
        .iter()
        .take(16)
        .map(|(k, v)| stats::flow_row(&state, &pod::<FlowKey>(k), &pod::<FlowValue>(v)))
        .collect();
    let s = Stats {
        source: "pins".into(),
        flows,
        reasons: Vec::new(),
        rules: Vec::new(),
    };
    serde_json::to_string(&s).expect("stats serialise");
    let _ = stats::render(&s);
    if filter_ok {
        let view = View {
            filter,
            ..View::default()
        };
        let _ = stats::render(&stats::apply_view(s, &view));
    }
});
