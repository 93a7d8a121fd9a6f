//! Drop and audit events from the kernel: decoding, naming, and the daemon
//! task that reads the events ring buffer and fans the events out to
//! `netiso monitor` subscribers.
//!
//! The kernel rate-limits events per CPU (`Settings::event_rate`) and counts
//! what it held back in `NETISO_EVENT_RATE`; a flood therefore costs the
//! daemon at most `event_rate × CPUs` events per second. Subscribers hang
//! off a bounded broadcast channel: a slow client loses events (and is told
//! how many), it never slows the reader.
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use netiso_common::{maps, DropReason, Event, RateState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use crate::datapath::counters::open_pinned;
use crate::observe::clock::mono_to_unix_f64;
use crate::observe::filter::Filter;
use crate::observe::flow::Flow;
use crate::observe::state::State;

/// Events kept for subscribers that have not read them yet.
pub const FANOUT_CAPACITY: usize = 4096;

/// One drop or audit event, named with the daemon's current state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRow {
    /// Unix time in seconds (with fraction) of the packet.
    pub time: f64,
    /// `drop`, or `audit` for a packet an audit rule let through.
    pub verdict: String,
    #[serde(flatten)]
    pub flow: Flow,
    /// Packet length in bytes.
    pub len: u32,
    /// Host-side veth that saw the packet.
    pub ifindex: u32,
}

/// What a monitor subscriber receives, one JSON line each.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MonitorMessage {
    Event(Box<EventRow>),
    /// The kernel held back this many events (rate limit) since the last
    /// such message.
    Suppressed {
        count: u64,
    },
    /// The kernel could not queue this many events (ring buffer full).
    RingFull {
        count: u64,
    },
    /// This subscriber read too slowly and missed this many messages.
    Lost {
        count: u64,
    },
}

/// Decodes one ring-buffer record; `None` if it is not an [`Event`].
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<Event>() bytes (checked
    // above), and Event is repr(C) with integer fields only, so any bytes are
    // a valid Event; read_unaligned because the record may not be aligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Names an event with the state the daemon published.
pub fn row(state: &State, ev: &Event) -> EventRow {
    let flow = Flow::named(state, &ev.flow, ev.rule_id);
    EventRow {
        time: mono_to_unix_f64(ev.ts_ns),
        verdict: if ev.flow.reason == DropReason::Audit as u8 {
            "audit"
        } else {
            "drop"
        }
        .into(),
        flow,
        len: ev.len,
        ifindex: ev.flow.ifindex,
    }
}

/// Whether a message goes to a subscriber with this filter. Counts of
/// suppressed or lost events always do: they may hide matching events.
pub fn wanted(filter: &Filter, msg: &MonitorMessage) -> bool {
    match msg {
        MonitorMessage::Event(e) => filter.matches(&e.flow.subject()),
        _ => true,
    }
}

/// Metrics of the event stream.
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Events read from the ring buffer, by verdict.
    pub read: Family<Vec<(String, String)>, Counter>,
    pub suppressed: Counter,
    pub subscribers: Gauge,
    /// Messages slow subscribers missed.
    pub subscriber_lost: Counter,
}

impl EventMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for verdict in ["drop", "audit"] {
            let _ = self
                .read
                .get_or_create(&vec![("verdict".into(), verdict.into())]);
        }
        registry.register(
            "events",
            "Drop and audit events read from the kernel, by verdict",
            self.read.clone(),
        );
        registry.register(
            "events_suppressed",
            "Events the kernel held back because of its per-CPU rate limit",
            self.suppressed.clone(),
        );
        registry.register(
            "monitor_subscribers",
            "Connected netiso monitor clients",
            self.subscribers.clone(),
        );
        registry.register(
            "monitor_lost",
            "Messages monitor clients missed because they read too slowly",
            self.subscriber_lost.clone(),
        );
    }
}

/// The event fan-out: the reader publishes, subscribers listen.
#[derive(Debug)]
pub struct EventHub {
    pub tx: broadcast::Sender<Arc<MonitorMessage>>,
    pub metrics: EventMetrics,
    /// Why the ring buffer could not be read, if it could not.
    pub error: std::sync::Mutex<Option<String>>,
}

impl EventHub {
    pub fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(FANOUT_CAPACITY);
        Arc::new(Self {
            tx,
            metrics: EventMetrics::default(),
            error: std::sync::Mutex::new(None),
        })
    }

    fn publish(&self, msg: MonitorMessage) {
        // No subscriber is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(msg));
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sums a per-CPU counter that each CPU increments on its own (u32,
/// wrapping) into a running total, given the previous per-CPU values.
pub fn per_cpu_delta(prev: &mut Vec<u32>, now: &[u32]) -> u64 {
    if prev.len() != now.len() {
        // First read: everything so far counts as "before we looked".
        *prev = now.to_vec();
        return 0;
    }
    let mut total = 0u64;
    for (p, n) in prev.iter_mut().zip(now) {
        total += u64::from(n.wrapping_sub(*p));
        *p = *n;
    }
    total
}

/// Per-CPU `suppressed` counters of the rate limiter.
pub fn read_suppressed(map: &Map) -> Result<Vec<u32>> {
    let arr: PerCpuArray<&MapData, RateState> = PerCpuArray::try_from(map)?;
    let v = arr.get(&0, 0)?;
    Ok(v.iter().map(|r| r.suppressed).collect())
}

/// Per-CPU "event lost" (ring buffer full) counts, if the map is there.
fn read_ring_full(map: &Map) -> Result<Vec<u32>> {
    let arr: PerCpuArray<&MapData, netiso_common::Counter> = PerCpuArray::try_from(map)?;
    let v = arr.get(&netiso_common::errors::EVENT_LOST, 0)?;
    // Kept as u32 deltas: a second's worth never nears 2^32.
    Ok(v.iter().map(|c| c.packets as u32).collect())
}

/// Reads events until the process ends. Opening the pinned ring buffer is
/// retried, so that the daemon keeps running (and says why in `status`)
/// if the kernel side is missing.
pub async fn run_reader(pin_dir: PathBuf, state: watch::Receiver<Arc<State>>, hub: Arc<EventHub>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match open_ring(&pin_dir) {
            Ok(ring) => {
                hub.set_error(None);
                let limits = tokio::spawn(poll_limits(pin_dir.clone(), hub.clone()));
                let r = read_ring(ring, &state, &hub).await;
                limits.abort();
                if let Err(e) = r {
                    let msg = format!("{e:#}");
                    warn!(error = %msg, "event stream failed; reopening");
                    hub.set_error(Some(msg));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                debug!(error = %msg, "events ring buffer not available");
                hub.set_error(Some(msg));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn open_ring(pin_dir: &Path) -> Result<AsyncFd<RingBuf<MapData>>> {
    let map = open_pinned(pin_dir, maps::EVENTS)?;
    let ring = RingBuf::try_from(map).context("NETISO_EVENTS is not a ring buffer")?;
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the AsyncFd (its owner) lives.
    unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .context("polling the events ring buffer")
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    state: &watch::Receiver<Arc<State>>,
    hub: &EventHub,
) -> Result<()> {
    loop {
        let mut guard = ring.readable_mut().await?;
        let st = state.borrow().clone();
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            let Some(ev) = decode(&item) else {
                warn!(len = item.len(), "short record in the events ring buffer");
                continue;
            };
            drop(item);
            let r = row(&st, &ev);
            hub.metrics
                .read
                .get_or_create(&vec![("verdict".into(), r.verdict.clone())])
                .inc();
            hub.publish(MonitorMessage::Event(Box::new(r)));
        }
        guard.clear_ready();
    }
}

/// Once a second: tell subscribers how many events the kernel held back or
/// could not queue since the last look.
async fn poll_limits(pin_dir: PathBuf, hub: Arc<EventHub>) {
    let rate = open_pinned(&pin_dir, maps::EVENT_RATE);
    let errors = open_pinned(&pin_dir, maps::ERRORS).ok();
    let rate = match rate {
        Ok(m) => m,
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "cannot watch the event rate limiter"
            );
            return;
        }
    };
    let (mut prev_sup, mut prev_full) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Ok(now) = read_suppressed(&rate) {
            let n = per_cpu_delta(&mut prev_sup, &now);
            if n > 0 {
                hub.metrics.suppressed.inc_by(n);
                hub.publish(MonitorMessage::Suppressed { count: n });
            }
        }
        if let Some(Ok(now)) = errors.as_ref().map(read_ring_full) {
            let n = per_cpu_delta(&mut prev_full, &now);
            if n > 0 {
                hub.publish(MonitorMessage::RingFull { count: n });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::EndpointState;
    use netiso_common::{family, proto, Direction, FlowKey};

    fn bytes_of(ev: &Event) -> Vec<u8> {
        // SAFETY: `ev` is a live Event, so its size_of::<Event>() bytes are
        // readable for the borrow; Event has no implicit padding (its
        // `aya::Pod` impl in netiso-common), so every byte is initialised.
        unsafe {
            std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>())
                .to_vec()
        }
    }

    fn sample() -> (State, Event) {
        let mut state = State::default();
        state.identities.insert(300, vec!["untrusted".into()]);
        state.identities.insert(301, vec!["backend".into()]);
        state.endpoints.push(EndpointState {
            container: "guest".into(),
            ip: Some("172.18.0.4".parse().unwrap()),
            ..EndpointState::default()
        });
        let mut flow = FlowKey {
            ifindex: 42,
            dport: 7777,
            proto: proto::UDP,
            family: family::V4,
            reason: DropReason::DefaultDeny as u8,
            direction: Direction::Egress as u8,
            src_identity: 300,
            dst_identity: 301,
            ..FlowKey::default()
        };
        flow.saddr[..4].copy_from_slice(&[172, 18, 0, 4]);
        flow.daddr[..4].copy_from_slice(&[172, 18, 0, 2]);
        let ev = Event {
            ts_ns: crate::observe::clock::monotonic_ns() - 1_500_000_000,
            flow,
            len: 44,
            rule_id: 0,
            _pad: 0,
        };
        (state, ev)
    }

    #[test]
    fn decodes_and_names_an_event() {
        let (state, ev) = sample();
        let mut buf = bytes_of(&ev);
        // Records are 8-aligned in the ring, but slices we are handed may
        // not be: decode from an odd offset.
        buf.insert(0, 0xff);
        let got = decode(&buf[1..]).expect("decodes");
        assert_eq!(got, ev);
        assert!(decode(&buf[1..40]).is_none(), "short records are refused");
        let r = row(&state, &got);
        assert_eq!(r.flow.src, "guest");
        assert_eq!(r.flow.src_group, "untrusted");
        assert_eq!(r.flow.dst, "172.18.0.2");
        assert_eq!(r.flow.dst_group, "backend");
        assert_eq!(
            (r.flow.proto.as_str(), r.flow.port, r.len),
            ("udp", 7777, 44),
            "{r:?}"
        );
        assert_eq!(r.flow.reason, "default-deny");
        assert_eq!(r.verdict, "drop");
        assert_eq!(r.flow.direction, "egress");
        assert_eq!(r.flow.rule, None);
        let now = crate::observe::clock::unix_now_f64();
        assert!(
            (now - r.time - 1.5).abs() < 0.5,
            "time {} vs now {now}",
            r.time
        );
    }

    #[test]
    fn audit_events_are_not_drops() {
        let (state, mut ev) = sample();
        ev.flow.reason = DropReason::Audit as u8;
        ev.rule_id = 4;
        let r = row(&state, &ev);
        assert_eq!((r.verdict.as_str(), r.flow.rule), ("audit", Some(4)));
    }

    #[test]
    fn event_lines_are_flat_and_round_trip() {
        // The named flow is flattened: monitor's JSON keeps one flat object
        // (docs/observability.md shows it), and reads back to the same row.
        let (state, ev) = sample();
        let msg = MonitorMessage::Event(Box::new(row(&state, &ev)));
        let line = serde_json::to_string(&msg).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "direction",
                "dst",
                "dst_group",
                "dst_ip",
                "ifindex",
                "len",
                "port",
                "proto",
                "reason",
                "rule",
                "src",
                "src_group",
                "src_ip",
                "time",
                "type",
                "verdict"
            ]
        );
        // serde_json parses floats to within an ulp, not exactly: the
        // time is compared with a tolerance, everything else exactly.
        let (MonitorMessage::Event(back), MonitorMessage::Event(sent)) =
            (serde_json::from_str::<MonitorMessage>(&line).unwrap(), &msg)
        else {
            panic!("not an event: {line}");
        };
        assert!((back.time - sent.time).abs() < 1e-6, "{line}");
        assert_eq!(
            EventRow {
                time: sent.time,
                ..*back
            },
            **sent
        );
    }

    #[test]
    fn messages_serialize_as_tagged_json_lines() {
        let (state, ev) = sample();
        let m = MonitorMessage::Event(Box::new(row(&state, &ev)));
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["type"], "event");
        assert_eq!(j["src"], "guest");
        let back: MonitorMessage = serde_json::from_value(j).unwrap();
        assert_eq!(back, m);
        let s = serde_json::to_string(&MonitorMessage::Suppressed { count: 7 }).unwrap();
        assert_eq!(s, r#"{"type":"suppressed","count":7}"#);
    }

    #[test]
    fn filters_events_but_always_passes_counts() {
        let (state, ev) = sample();
        let m = MonitorMessage::Event(Box::new(row(&state, &ev)));
        let f = Filter {
            group: Some("frontend".into()),
            ..Filter::default()
        };
        assert!(!wanted(&f, &m));
        assert!(wanted(&f, &MonitorMessage::Lost { count: 1 }));
        let f = Filter {
            container: Some("guest".into()),
            reason: Some("default-deny".into()),
            ..Filter::default()
        };
        assert!(wanted(&f, &m));
    }

    #[test]
    fn per_cpu_deltas_wrap() {
        let mut prev = Vec::new();
        assert_eq!(per_cpu_delta(&mut prev, &[5, 7]), 0);
        assert_eq!(per_cpu_delta(&mut prev, &[6, 7]), 1);
        assert_eq!(per_cpu_delta(&mut prev, &[6, 10]), 3);
        prev = vec![u32::MAX, 0];
        assert_eq!(per_cpu_delta(&mut prev, &[1, 0]), 2);
    }
}
