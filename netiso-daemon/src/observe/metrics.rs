//! Prometheus metrics (`prometheus-client`), served over plain HTTP at
//! `/metrics` on a configurable address (loopback by default).
//!
//! Kernel counters are read from the pinned maps at each scrape (a
//! [`Collector`]), so they are exact at that moment and survive daemon
//! restarts; the daemon loop's own counters come from [`crate::observe::telemetry`].
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use netiso_common::{errors, maps, DropReason, Settings};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::datapath::counters::{self, open_pinned};
use crate::observe::events::EventHub;
use crate::observe::state::State;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The registry served at `/metrics`.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(pin_dir: PathBuf, state: watch::Receiver<Arc<State>>, hub: Arc<EventHub>) -> Self {
        let mut registry = Registry::with_prefix("netiso");
        crate::observe::telemetry::global().register(&mut registry);
        hub.metrics.register(&mut registry);
        registry.register_collector(Box::new(KernelCollector { pin_dir, state }));
        Self { registry }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the kernel's counters and map fill levels at scrape time.
#[derive(Debug)]
struct KernelCollector {
    pin_dir: PathBuf,
    state: watch::Receiver<Arc<State>>,
}

/// One scrape's worth of kernel numbers.
#[derive(Debug, Default)]
pub struct KernelSnapshot {
    /// (reason) -> packets, bytes; `audit` is not a drop and goes apart.
    pub reasons: BTreeMap<String, (u64, u64)>,
    /// (reason, direction, src_group, dst_group) -> packets, bytes.
    pub flows: BTreeMap<(String, String, String, String), (u64, u64)>,
    /// (rule, action, from, to) -> new flows decided, bytes of their first packets.
    pub rules: BTreeMap<(String, String, String, String), (u64, u64)>,
    /// map -> (entries, capacity).
    pub fill: BTreeMap<String, (u64, u64)>,
    pub errors: BTreeMap<String, u64>,
    pub suppressed: u64,
    pub settings: Option<Settings>,
}

/// Counts the keys of any map with BPF_MAP_GET_NEXT_KEY (aya 0.14 has no
/// batch lookups). Bounded: a map that changes under us cannot loop forever.
pub fn count_entries(map: &MapData) -> std::io::Result<(u64, u64)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let info = map.info().map_err(std::io::Error::other)?;
    let (key_size, max) = (info.key_size() as usize, u64::from(info.max_entries()));
    let owned = info.fd().map_err(std::io::Error::other)?;
    let fd = owned.as_fd().as_raw_fd();
    let mut cur = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u64;
    let mut first = true;
    while n <= max * 2 {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { cur.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points at buffers of the map's key size that live
        // across the call; BPF_MAP_GET_NEXT_KEY only writes `next`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                4, // BPF_MAP_GET_NEXT_KEY
                &attr as *const Attr,
                size_of::<Attr>(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(e);
        }
        n += 1;
        first = false;
        std::mem::swap(&mut cur, &mut next);
    }
    Ok((n.min(max), max))
}

fn sum_rate(map: &Map) -> anyhow::Result<u64> {
    Ok(crate::observe::events::read_suppressed(map)?
        .into_iter()
        .map(u64::from)
        .sum())
}

impl KernelSnapshot {
    /// Reads everything once. Parts that cannot be read are left out (and
    /// logged at debug level): a missing map must not break the scrape.
    pub fn read(pin_dir: &Path, state: &State) -> Self {
        let mut s = Self::default();
        let note = |what: &str, e: anyhow::Error| debug!(what, error = format!("{e:#}"), "metrics");
        match open_pinned(pin_dir, maps::REASON_STATS).and_then(|m| counters::reasons(&m)) {
            Ok(r) => {
                for (reason, c) in r {
                    s.reasons
                        .insert(reason.as_str().to_string(), (c.packets, c.bytes));
                }
            }
            Err(e) => note("reasons", e),
        }
        match open_pinned(pin_dir, maps::FLOWS).and_then(|m| counters::flows(&m)) {
            Ok(rows) => {
                for (k, v) in rows {
                    let key = (
                        DropReason::from_u8(k.reason)
                            .map_or("unknown", DropReason::as_str)
                            .to_string(),
                        netiso_common::Direction::from_u8(k.direction)
                            .map_or("?", netiso_common::Direction::as_str)
                            .to_string(),
                        state.groups_of_identity(k.src_identity),
                        state.groups_of_identity(k.dst_identity),
                    );
                    let e = s.flows.entry(key).or_default();
                    e.0 += v.packets;
                    e.1 += v.bytes;
                }
            }
            Err(e) => note("flows", e),
        }
        match open_pinned(pin_dir, maps::RULE_STATS).and_then(|m| counters::per_cpu_totals(&m)) {
            Ok(rules) => {
                for (id, c) in rules {
                    let rule = state.rules.iter().find(|r| r.id == id);
                    let key = if id == 0 {
                        ("0".into(), "default".into(), String::new(), String::new())
                    } else {
                        (
                            id.to_string(),
                            rule.map_or("?".into(), |r| r.action.clone()),
                            rule.map_or(String::new(), |r| r.from.clone()),
                            rule.map_or(String::new(), |r| r.to.clone()),
                        )
                    };
                    s.rules.insert(key, (c.packets, c.bytes));
                }
            }
            Err(e) => note("rules", e),
        }
        for name in [
            maps::ENDPOINTS,
            maps::IDENTITIES,
            maps::POLICY,
            maps::PAIRS,
            maps::CONNTRACK,
            maps::FLOWS,
            maps::FRAGS,
            maps::CIDRS,
            maps::LEARN,
        ] {
            let r = open_pinned(pin_dir, name).and_then(|m| {
                let data = match &m {
                    Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) => d,
                    _ => anyhow::bail!("{name} is not a hash map"),
                };
                Ok(count_entries(data)?)
            });
            match r {
                Ok(v) => {
                    // NETISO_CONNTRACK -> conntrack
                    let short = name.trim_start_matches("NETISO_").to_lowercase();
                    s.fill.insert(short, v);
                }
                Err(e) => note(name, e),
            }
        }
        match open_pinned(pin_dir, maps::ERRORS).and_then(|m| counters::per_cpu_totals(&m)) {
            Ok(errs) => {
                for (i, c) in errs {
                    let name = errors::NAMES
                        .get(i as usize)
                        .map_or_else(|| format!("error-{i}"), |n| n.to_string());
                    s.errors.insert(name, c.packets);
                }
            }
            Err(e) => note("errors", e),
        }
        match open_pinned(pin_dir, maps::EVENT_RATE).and_then(|m| sum_rate(&m)) {
            Ok(n) => s.suppressed = n,
            Err(e) => note("event rate", e),
        }
        let settings = open_pinned(pin_dir, maps::SETTINGS).and_then(|m| {
            let a: Array<&MapData, Settings> = Array::try_from(&m)?;
            Ok(a.get(&0, 0)?)
        });
        match settings {
            Ok(v) => s.settings = Some(v),
            Err(e) => note("settings", e),
        }
        s
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, MetricType::Counter, rows, |v, m| {
        ConstCounter::new(v).encode(m)
    })
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, MetricType::Gauge, rows, |v, m| {
        ConstGauge::new(v).encode(m)
    })
}

/// One metric family: a single unlabelled row is written without labels.
fn family<V: Copy>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
    encode: impl Fn(V, MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<_> = rows.into_iter().collect();
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    if let [(l, v)] = rows.as_slice() {
        if l.is_empty() {
            return encode(*v, m);
        }
    }
    for (l, v) in rows {
        encode(v, m.encode_family(&l)?)?;
    }
    Ok(())
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let state = self.state.borrow().clone();
        let s = KernelSnapshot::read(&self.pin_dir, &state);
        let drops = s.reasons.iter().filter(|(r, _)| *r != "audit");
        counter(
            &mut enc,
            "drop_packets",
            "Packets dropped, by reason",
            drops
                .clone()
                .map(|(r, (p, _))| (labels(&[("reason", r)]), *p)),
        )?;
        counter(
            &mut enc,
            "drop_bytes",
            "Bytes dropped, by reason",
            drops.map(|(r, (_, b))| (labels(&[("reason", r)]), *b)),
        )?;
        counter(
            &mut enc,
            "audit_packets",
            "Packets an audit rule let through (they would have been denied)",
            [(Labels::new(), s.reasons.get("audit").map_or(0, |(p, _)| *p))],
        )?;
        counter(
            &mut enc,
            "flow_drop_packets",
            "Dropped (and audited) packets by reason, direction and group pair, from the flow table (an LRU: rows evicted under pressure disappear)",
            s.flows.iter().map(|((reason, dir, src, dst), (p, _))| {
                (
                    labels(&[
                        ("reason", reason),
                        ("direction", dir),
                        ("src_group", src),
                        ("dst_group", dst),
                    ]),
                    *p,
                )
            }),
        )?;
        counter(
            &mut enc,
            "rule_verdicts",
            "New flows decided, by rule and its action (rule 0: group defaults)",
            s.rules.iter().map(|((rule, action, from, to), (p, _))| {
                (
                    labels(&[
                        ("rule", rule),
                        ("action", action),
                        ("from", from),
                        ("to", to),
                    ]),
                    *p,
                )
            }),
        )?;
        gauge(
            &mut enc,
            "map_entries",
            "Entries in each datapath map",
            s.fill
                .iter()
                .map(|(m, (n, _))| (labels(&[("map", m)]), *n as i64)),
        )?;
        gauge(
            &mut enc,
            "map_capacity",
            "Maximum entries of each datapath map",
            s.fill
                .iter()
                .map(|(m, (_, c))| (labels(&[("map", m)]), *c as i64)),
        )?;
        counter(
            &mut enc,
            "kernel_errors",
            "Datapath errors (failed inserts, full event buffer, ...)",
            s.errors.iter().map(|(e, n)| (labels(&[("error", e)]), *n)),
        )?;
        counter(
            &mut enc,
            "kernel_events_suppressed",
            "Events the kernel's per-CPU rate limit held back (since the maps were created)",
            [(Labels::new(), s.suppressed)],
        )?;
        if let Some(st) = s.settings {
            gauge(
                &mut enc,
                "policy_generation",
                "Policy generation the datapath enforces",
                [(Labels::new(), i64::from(st.generation))],
            )?;
            gauge(
                &mut enc,
                "event_rate_limit",
                "Events per second per CPU sent to user space",
                [(Labels::new(), i64::from(st.event_rate))],
            )?;
        }
        let enforced = state.endpoints.iter().filter(|e| e.enforced).count();
        gauge(
            &mut enc,
            "endpoints",
            "Container endpoints known, by whether netiso enforces at their veth",
            [
                (labels(&[("enforced", "true")]), enforced as i64),
                (
                    labels(&[("enforced", "false")]),
                    (state.endpoints.len() - enforced) as i64,
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "unenforceable_containers",
            "Containers in a group that netiso cannot enforce (no veth)",
            [(Labels::new(), state.unenforceable.len() as i64)],
        )?;
        Ok(())
    }
}

/// Answers `GET /metrics` (and nothing else) on `listener`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, metrics).await {
                        debug!(error = %e, "metrics connection");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: Arc<Metrics>) -> std::io::Result<()> {
    // A request head fits in 8 KiB; give a slow client 5 s.
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
    let read = async {
        while len < buf.len() && !head_done(&buf[..len]) {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let m = metrics.clone();
            match tokio::task::spawn_blocking(move || m.encode()).await {
                Ok(Ok(text)) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                _ => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        ("GET", "/") => (
            "200 OK",
            "text/plain",
            "netiso: metrics at /metrics\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
