//! `netiso stats`: the per-flow drop table joined with container names and
//! groups, as a table or JSON. Reads the pinned maps directly, so it works
//! whether or not the daemon runs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use netiso_common::{family, proto, Direction, DropReason, FlowKey, FlowValue};
use serde::{Deserialize, Serialize};
use tabled::{settings::Style, Table, Tabled};

use crate::datapath::counters::{self, PinnedCounters};
use crate::observe::filter::{Filter, Subject};
use crate::observe::state::State;

/// One dropped flow, as shown to operators.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRow {
    pub src: String,
    pub src_ip: Option<IpAddr>,
    pub src_group: String,
    pub dst: String,
    pub dst_ip: Option<IpAddr>,
    pub dst_group: String,
    pub proto: String,
    pub port: u16,
    pub direction: String,
    pub reason: String,
    /// Deciding rule (1-based), if a rule rather than a default decided.
    pub rule: Option<u32>,
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

pub fn addr(family_: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family_ {
        family::V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        family::V6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        0 => "-".into(),
        n => format!("ip-proto-{n}"),
    }
}

/// Converts a `bpf_ktime_get_ns` timestamp (CLOCK_MONOTONIC) to unix seconds.
fn mono_to_unix(ns: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let age = Duration::from_nanos(now_mono.saturating_sub(ns));
    SystemTime::now()
        .checked_sub(age)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn flow_row(state: &State, k: &FlowKey, v: &FlowValue) -> FlowRow {
    let name = |ip: Option<IpAddr>| match ip {
        Some(ip) => state
            .container_by_ip(ip)
            .map_or_else(|| ip.to_string(), |e| e.container.clone()),
        None => "-".into(),
    };
    let src_ip = addr(k.family, &k.saddr);
    let dst_ip = addr(k.family, &k.daddr);
    FlowRow {
        src: name(src_ip),
        src_ip,
        src_group: state.groups_of_identity(k.src_identity),
        dst: name(dst_ip),
        dst_ip,
        dst_group: state.groups_of_identity(k.dst_identity),
        proto: proto_name(k.proto),
        port: k.dport,
        direction: Direction::from_u8(k.direction)
            .map_or("?", Direction::as_str)
            .into(),
        reason: DropReason::from_u8(k.reason)
            .map_or("unknown", DropReason::as_str)
            .into(),
        rule: (v.rule_id != 0).then_some(v.rule_id),
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

impl FlowRow {
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            names: [&self.src, &self.dst],
            ips: [self.src_ip, self.dst_ip],
            groups: [&self.src_group, &self.dst_group],
            reason: &self.reason,
        }
    }
}

/// Applies filters, order and limit to the flow rows. Reason and rule
/// totals stay whole (they are kernel-wide counters), except that a
/// `--reason` filter keeps only that reason.
pub fn apply_view(mut stats: Stats, view: &View) -> Stats {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let oldest = view.since.map(|d| now.saturating_sub(d.as_secs()));
    stats
        .flows
        .retain(|f| view.filter.matches(&f.subject()) && oldest.is_none_or(|t| f.last_seen >= t));
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

fn ago(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(unix);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Renders the human form of `netiso stats`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    if stats.flows.is_empty() {
        out.push_str("No drops recorded.\n");
    } else {
        let lines = stats.flows.iter().map(|f| FlowLine {
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
            rule: f.rule.map_or_else(|| "default".into(), |r| format!("#{r}")),
            packets: f.packets,
            bytes: f.bytes,
            last_seen: ago(f.last_seen),
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        FlowRow {
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
        s.flows.iter().map(|f| f.src.as_str()).collect()
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
