//! Process-wide health and counters of the daemon loop (reconciles, reloads,
//! Docker connection). The loop records here with one call per event; the
//! control socket (`status`) and the Prometheus endpoint read from here.
//!
//! A process-wide handle keeps the edits to the daemon loop to single lines
//! and needs no plumbing through its structs.
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::observe::clock::unix_now;

/// What `netiso status` shows about the daemon itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub pid: u32,
    pub version: String,
    /// Unix seconds.
    pub started: u64,
    pub engine: EngineHealth,
    pub reconciles: u64,
    pub reconcile_failures: u64,
    /// Unix seconds of the last reconcile attempt, and its error if it failed.
    pub last_reconcile: u64,
    pub last_reconcile_error: Option<String>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<String>,
    pub docker_reconnects: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineHealth {
    pub connected: bool,
    /// e.g. `Docker Engine 20.10.24 (API 1.41, client uses 1.41)`.
    pub version: Option<String>,
    /// Unix seconds of the last change of `connected`.
    pub since: u64,
    pub last_error: Option<String>,
}

/// The daemon loop's metrics and health.
#[derive(Debug)]
pub struct Telemetry {
    health: Mutex<Health>,
    pub reconcile_seconds: Histogram,
    pub reconcile_failures: Counter,
    pub reload_seconds: Histogram,
    /// Reload outcomes by `result` (`applied`, `rejected`).
    pub reloads: Family<Vec<(String, String)>, Counter>,
    pub docker_reconnects: Counter,
    pub docker_connected: Gauge,
    /// DNS answers of containers that resolve names, by `result`.
    pub fqdn_answers: Family<Vec<(String, String)>, Counter>,
    pub fqdn_learned: Counter,
    pub fqdn_expired: Counter,
    pub fqdn_refused: Counter,
    /// From an answer's copy to it being sent on (learned first).
    pub fqdn_hold_seconds: Histogram,
}

/// The process-wide instance.
pub fn global() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(Telemetry::new)
}

impl Telemetry {
    fn new() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 14));
        // Every result from the start at 0, so rates work before the first.
        let reloads: Family<Vec<(String, String)>, Counter> = Family::default();
        for result in ["applied", "rejected"] {
            let _ = reloads.get_or_create(&vec![("result".into(), result.into())]);
        }
        Self {
            health: Mutex::new(Health {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                started: unix_now(),
                ..Health::default()
            }),
            reconcile_seconds: buckets(),
            reconcile_failures: Counter::default(),
            reload_seconds: buckets(),
            reloads,
            docker_reconnects: Counter::default(),
            docker_connected: Gauge::default(),
            fqdn_answers: {
                let f: Family<Vec<(String, String)>, Counter> = Family::default();
                for result in ["learned", "unnamed", "unmatched", "unparsed"] {
                    let _ = f.get_or_create(&vec![("result".into(), result.into())]);
                }
                f
            },
            fqdn_learned: Counter::default(),
            fqdn_expired: Counter::default(),
            fqdn_refused: Counter::default(),
            fqdn_hold_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Health) -> R) -> R {
        // A panic while holding the lock leaves plain data: keep using it.
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut h)
    }

    pub fn health(&self) -> Health {
        self.with(|h| h.clone())
    }

    /// One reconcile finished (successfully or not) after `took`.
    pub fn reconciled(&self, took: Duration, error: Option<String>) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        if error.is_some() {
            self.reconcile_failures.inc();
        }
        self.with(|h| {
            h.reconciles += 1;
            h.last_reconcile = unix_now();
            if error.is_some() {
                h.reconcile_failures += 1;
            }
            h.last_reconcile_error = error;
        });
    }

    /// One policy reload finished; `error` when the new policy was rejected.
    pub fn reloaded(&self, took: Duration, error: Option<String>) {
        self.reload_seconds.observe(took.as_secs_f64());
        let result = if error.is_some() {
            "rejected"
        } else {
            "applied"
        };
        self.reloads
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        self.with(|h| {
            h.reloads += 1;
            if error.is_some() {
                h.reload_failures += 1;
            }
            h.last_reload_error = error;
        });
    }

    /// Connected to the engine (and listed its containers).
    pub fn engine_connected(&self, version: Option<String>) {
        self.docker_connected.set(1);
        self.with(|h| {
            if !h.engine.connected {
                h.engine.since = unix_now();
            }
            h.engine.connected = true;
            if version.is_some() {
                h.engine.version = version;
            }
            h.engine.last_error = None;
        });
    }

    /// The engine connection or its event stream broke; the loop reconnects.
    pub fn engine_lost(&self, error: String) {
        self.docker_connected.set(0);
        self.docker_reconnects.inc();
        self.with(|h| {
            if h.engine.connected {
                h.engine.since = unix_now();
            }
            h.engine.connected = false;
            h.engine.last_error = Some(error);
            h.docker_reconnects += 1;
        });
    }

    /// Adds the loop's metrics to `registry` (names get the `netiso_` prefix
    /// from the registry).
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconcile of maps and attachments",
            self.reconcile_seconds.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed",
            self.reconcile_failures.clone(),
        );
        registry.register(
            "reload_duration_seconds",
            "Time taken by one policy reload",
            self.reload_seconds.clone(),
        );
        registry.register(
            "reloads",
            "Policy reloads by result (applied, rejected)",
            self.reloads.clone(),
        );
        registry.register(
            "docker_event_stream_reconnects",
            "Times the Docker connection or event stream broke and was re-established",
            self.docker_reconnects.clone(),
        );
        registry.register(
            "docker_connected",
            "1 while the daemon is connected to the Docker engine",
            self.docker_connected.clone(),
        );
        registry.register(
            "fqdn_answers",
            "DNS answers of containers that resolve names, by result (learned, unnamed: \
             no rule names it, unmatched: no query of the container's asked it, unparsed)",
            self.fqdn_answers.clone(),
        );
        registry.register(
            "fqdn_addresses_learned",
            "Addresses learned for peers by name (per container and answer)",
            self.fqdn_learned.clone(),
        );
        registry.register(
            "fqdn_addresses_expired",
            "Learned addresses whose TTL and grace period ran out",
            self.fqdn_expired.clone(),
        );
        registry.register(
            "fqdn_addresses_refused",
            "Addresses not learned: the container's or the map's limit was reached",
            self.fqdn_refused.clone(),
        );
        registry.register(
            "fqdn_answer_hold_seconds",
            "Time a DNS answer was held for learning before it was sent on",
            self.fqdn_hold_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reconciles_reloads_and_engine_changes() {
        let t = Telemetry::new();
        t.reconciled(Duration::from_millis(3), None);
        t.reconciled(Duration::from_millis(3), Some("boom".into()));
        t.reloaded(Duration::from_millis(1), Some("bad policy".into()));
        t.engine_connected(Some("Docker Engine x".into()));
        t.engine_lost("stream closed".into());
        let h = t.health();
        assert_eq!((h.reconciles, h.reconcile_failures), (2, 1));
        assert_eq!(h.last_reconcile_error.as_deref(), Some("boom"));
        assert_eq!((h.reloads, h.reload_failures), (1, 1));
        assert!(!h.engine.connected);
        assert_eq!(h.engine.version.as_deref(), Some("Docker Engine x"));
        assert_eq!(h.engine.last_error.as_deref(), Some("stream closed"));
        assert_eq!(h.docker_reconnects, 1);
    }
}
