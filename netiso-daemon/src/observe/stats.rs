//! `netiso stats`: the per-flow drop table joined with container names and
//! groups, as a table or JSON. Reads the pinned maps directly, so it works
//! whether or not the daemon runs.
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use netiso_common::{FlowKey, FlowValue};
use serde::{Deserialize, Serialize};
use tabled::{settings::Style, Table, Tabled};

use crate::datapath::counters::{self, PinnedCounters};
use crate::observe::clock::{ago, mono_to_unix, unix_now};
use crate::observe::filter::Filter;
use crate::observe::flow::Flow;
use crate::observe::state::State;

/// One dropped flow, as shown to operators: the named flow and its counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRow {
    #[serde(flatten)]
    pub flow: Flow,
    pub packets: u64,
    pub bytes: u64,
    /// Unix seconds of the first and last drop.
    pub first_seen: u64,
    pub last_seen: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReasonRow {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleRow {
    /// Rule id (1-based); 0 counts decisions made by group defaults.
    pub rule: u32,
    /// `allow`, `deny`, `audit`, or `default`.
    pub action: String,
    pub description: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// `daemon` (asked over the control socket) or `pins` (read from the
    /// pinned maps and the state file: the daemon was not reachable).
    #[serde(default)]
    pub source: String,
    pub flows: Vec<FlowRow>,
    pub reasons: Vec<ReasonRow>,
    pub rules: Vec<RuleRow>,
}

pub fn flow_row(state: &State, k: &FlowKey, v: &FlowValue) -> FlowRow {
    FlowRow {
        flow: Flow::named(state, k, v.rule_id),
        packets: v.packets,
        bytes: v.bytes,
        first_seen: mono_to_unix(v.first_seen_ns),
        last_seen: mono_to_unix(v.last_seen_ns),
    }
}

/// Collects everything `netiso stats` shows, naming what it can from the
/// state file.
pub fn collect(pin_dir: &Path, state_dir: &Path) -> Result<Stats> {
    let state = State::read(state_dir)?;
    collect_with(pin_dir, &state)
}

/// Collects everything `netiso stats` shows, naming what it can from `state`.
pub fn collect_with(pin_dir: &Path, state: &State) -> Result<Stats> {
    let pinned = PinnedCounters::open(pin_dir)?;
    let mut flows: Vec<FlowRow> = counters::flows(&pinned.flows)?
        .iter()
        .map(|(k, v)| flow_row(state, k, v))
        .collect();
    sort_flows(&mut flows, SortKey::Packets);
    let reasons = counters::reasons(&pinned.reasons)?
        .into_iter()
        .map(|(r, c)| ReasonRow {
            reason: r.as_str().into(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    let rules = counters::per_cpu_totals(&pinned.rules)?
        .into_iter()
        .map(|(id, c)| rule_row(state, id, c.packets, c.bytes))
        .collect();
    Ok(Stats {
        source: "pins".into(),
        flows,
        reasons,
        rules,
    })
}

fn rule_row(state: &State, id: u32, packets: u64, bytes: u64) -> RuleRow {
    let rule = state.rules.iter().find(|r| r.id == id);
    RuleRow {
        rule: id,
        action: if id == 0 {
            "default".into()
        } else {
            rule.map_or_else(|| "?".into(), |r| r.action.clone())
        },
        description: if id == 0 {
            "group defaults".into()
        } else {
            rule.map_or_else(String::new, |r| {
                let d = r.description.as_deref().unwrap_or("");
                format!("{} -> {} {} {}", r.from, r.to, r.ports, d)
                    .trim()
                    .to_string()
            })
        },
        packets,
        bytes,
    }
}

/// How `--sort` orders the flow rows (largest or newest first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    Packets,
    Bytes,
    LastSeen,
}

pub fn sort_flows(flows: &mut [FlowRow], key: SortKey) {
    flows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Packets => b.packets.cmp(&a.packets),
            SortKey::Bytes => b.bytes.cmp(&a.bytes),
            SortKey::LastSeen => b.last_seen.cmp(&a.last_seen),
        };
        primary
            .then(b.last_seen.cmp(&a.last_seen))
            .then(b.packets.cmp(&a.packets))
    });
}

/// What to keep and how to order it.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub filter: Filter,
    /// Only flows with a drop within this long.
    pub since: Option<Duration>,
    pub sort: SortKey,
    pub top: Option<usize>,
}

/// Applies filters, order and limit to the flow rows. Reason and rule
/// totals stay whole (they are kernel-wide counters), except that a
/// `--reason` filter keeps only that reason.
pub fn apply_view(mut stats: Stats, view: &View) -> Stats {
    let now = unix_now();
    let oldest = view.since.map(|d| now.saturating_sub(d.as_secs()));
    stats.flows.retain(|f| {
        view.filter.matches(&f.flow.subject()) && oldest.is_none_or(|t| f.last_seen >= t)
    });
    sort_flows(&mut stats.flows, view.sort);
    if let Some(n) = view.top {
        stats.flows.truncate(n);
    }
    if let Some(r) = &view.filter.reason {
        stats.reasons.retain(|x| &x.reason == r);
    }
    stats
}

#[derive(Tabled)]
struct FlowLine {
    #[tabled(rename = "SOURCE")]
    src: String,
    #[tabled(rename = "SRC GROUP")]
    src_group: String,
    #[tabled(rename = "DESTINATION")]
    dst: String,
    #[tabled(rename = "DST GROUP")]
    dst_group: String,
    #[tabled(rename = "PROTO")]
    proto: String,
    #[tabled(rename = "PORT")]
    port: String,
    #[tabled(rename = "DIR")]
    direction: String,
    #[tabled(rename = "REASON")]
    reason: String,
    #[tabled(rename = "RULE")]
    rule: String,
    #[tabled(rename = "PACKETS")]
    packets: u64,
    #[tabled(rename = "BYTES")]
    bytes: u64,
    #[tabled(rename = "LAST SEEN")]
    last_seen: String,
}

/// Renders the human form of `netiso stats`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    if stats.flows.is_empty() {
        out.push_str("No drops recorded.\n");
    } else {
        let lines = stats.flows.iter().map(|row| {
            let f = &row.flow;
            FlowLine {
                src: f.src.clone(),
                src_group: f.src_group.clone(),
                dst: f.dst.clone(),
                dst_group: f.dst_group.clone(),
                proto: f.proto.clone(),
                port: if f.port == 0 {
                    "-".into()
                } else {
                    f.port.to_string()
                },
                direction: f.direction.clone(),
                reason: f.reason.clone(),
                rule: f.rule_label(),
                packets: row.packets,
                bytes: row.bytes,
                last_seen: ago(row.last_seen),
            }
        });
        out.push_str(&Table::new(lines).with(Style::blank()).to_string());
        out.push('\n');
    }
    if !stats.reasons.is_empty() {
        out.push_str("\nDrops by reason:");
        for r in &stats.reasons {
            out.push_str(&format!("  {} {} pkts", r.reason, r.packets));
        }
        out.push('\n');
    }
    out
}

#[derive(Tabled)]
struct RuleLine {
    #[tabled(rename = "RULE")]
    rule: String,
    #[tabled(rename = "ACTION")]
    action: String,
    #[tabled(rename = "RULE TEXT")]
    description: String,
    #[tabled(rename = "PACKETS")]
    packets: u64,
    #[tabled(rename = "BYTES")]
    bytes: u64,
}

/// Renders the per-rule decision counters (`netiso stats --rules`). Each
/// row counts the new flows the rule decided (the first packet of each
/// flow; later packets take the conntrack fast path).
pub fn render_rules(stats: &Stats) -> String {
    if stats.rules.is_empty() {
        return "No rule decisions recorded.\n".into();
    }
    let lines = stats.rules.iter().map(|r| RuleLine {
        rule: if r.rule == 0 {
            "default".into()
        } else {
            format!("#{}", r.rule)
        },
        action: r.action.clone(),
        description: r.description.clone(),
        packets: r.packets,
        bytes: r.bytes,
    });
    let mut out = Table::new(lines).with(Style::blank()).to_string();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, group: &str, reason: &str, packets: u64, bytes: u64, age: u64) -> FlowRow {
        let now = unix_now();
        FlowRow {
            flow: Flow {
                src: src.into(),
                src_ip: None,
                src_group: group.into(),
                dst: "db".into(),
                dst_ip: None,
                dst_group: "database".into(),
                proto: "tcp".into(),
                port: 5432,
                direction: "egress".into(),
                reason: reason.into(),
                rule: None,
            },
            packets,
            bytes,
            first_seen: now - age,
            last_seen: now - age,
        }
    }

    fn stats() -> Stats {
        Stats {
            source: "pins".into(),
            flows: vec![
                flow("a", "web", "default-deny", 10, 100, 5),
                flow("b", "web", "policy-deny", 3, 900, 1),
                flow("c", "batch", "default-deny", 7, 70, 7200),
            ],
            reasons: vec![
                ReasonRow {
                    reason: "default-deny".into(),
                    packets: 17,
                    bytes: 170,
                },
                ReasonRow {
                    reason: "policy-deny".into(),
                    packets: 3,
                    bytes: 900,
                },
            ],
            rules: vec![],
        }
    }

    fn srcs(s: &Stats) -> Vec<&str> {
        s.flows.iter().map(|f| f.flow.src.as_str()).collect()
    }

    #[test]
    fn views_filter_sort_and_cut() {
        let all = apply_view(stats(), &View::default());
        assert_eq!(srcs(&all), ["a", "c", "b"], "by packets");
        let v = View {
            sort: SortKey::Bytes,
            top: Some(2),
            ..View::default()
        };
        assert_eq!(srcs(&apply_view(stats(), &v)), ["b", "a"]);
        let v = View {
            sort: SortKey::LastSeen,
            ..View::default()
        };
        assert_eq!(srcs(&apply_view(stats(), &v)), ["b", "a", "c"]);
        let v = View {
            since: Some(Duration::from_secs(600)),
            ..View::default()
        };
        assert_eq!(srcs(&apply_view(stats(), &v)), ["a", "b"]);
        let v = View {
            filter: Filter {
                group: Some("web".into()),
                reason: Some("policy-deny".into()),
                ..Filter::default()
            },
            ..View::default()
        };
        let s = apply_view(stats(), &v);
        assert_eq!(srcs(&s), ["b"]);
        assert_eq!(s.reasons.len(), 1, "a reason filter narrows the totals");
    }

    #[test]
    fn rules_render_with_their_text() {
        let mut state = State::default();
        state.rules.push(crate::observe::state::RuleState {
            id: 1,
            from: "web".into(),
            to: "db".into(),
            ports: "5432/tcp".into(),
            action: "allow".into(),
            description: Some("app to database".into()),
            location: "p.toml:3:1".into(),
        });
        let s = Stats {
            source: "pins".into(),
            flows: vec![],
            reasons: vec![],
            rules: vec![rule_row(&state, 0, 4, 40), rule_row(&state, 1, 2, 20)],
        };
        let text = render_rules(&s);
        assert!(text.contains("group defaults"), "{text}");
        assert!(
            text.contains("allow") && text.contains("web -> db 5432/tcp app to database"),
            "{text}"
        );
    }
}
