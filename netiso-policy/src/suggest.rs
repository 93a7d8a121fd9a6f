//! A policy written from observed flows (learn mode, `netiso policy
//! suggest`): groups from Compose services, a label or names; one allow
//! rule per observed (group, peer, port); deny by default for the groups
//! whose traffic was all observed. And [`against`]: the observed flows a
//! policy would drop, as the rules (and groups) to add. Pure: facts in,
//! text out; the same input always gives the same text.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use netiso_common::{proto, Action};

use crate::container::{Attachment, Container};
use crate::eval::evaluate;
use crate::model::{Policy, RESERVED};
use crate::parse::looks_like_cidr;
use crate::selector::{COMPOSE_PROJECT, COMPOSE_SERVICE};

/// At most this many distinct addresses of one peer side become exact
/// address rules; more are collapsed to blocks, and more blocks than this
/// to `world` (never thousands of /32 rules).
pub const MAX_ADDRESSES: usize = 4;

/// What is known about a container seen in learn mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Docker networks it was attached to.
    pub networks: Vec<String>,
    /// Its veth was in learn mode: every flow it opened or accepted was
    /// recorded, so deny-by-default defaults are safe for it.
    pub learned: bool,
}

/// One end of an observed flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// A container, by name.
    Container(String),
    Host,
    /// Any other address (the world, or a block a policy names).
    Address(IpAddr),
}

/// New flows from one side to the other on one protocol and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub from: Side,
    pub to: Side,
    pub proto: u8,
    /// Destination port (0 for ICMP).
    pub port: u16,
    /// New flows (connections) seen.
    pub flows: u64,
    /// Unix seconds of the first and the last.
    pub first: u64,
    pub last: u64,
}

/// How containers are put into groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// Compose project and service (containers without them: by name).
    Compose,
    /// The value of this label (containers without it: by name).
    Label(String),
    /// Each container name its own group.
    Name,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "compose" => Ok(Self::Compose),
            "name" => Ok(Self::Name),
            _ => match s.strip_prefix("label:") {
                Some(k) if !k.is_empty() => Ok(Self::Label(k.to_string())),
                _ => Err(format!(
                    "unknown grouping {s:?}: use compose, name or label:KEY (label:app)"
                )),
            },
        }
    }
}

/// Which observations count.
#[derive(Clone, Debug)]
pub struct Options {
    pub group_by: GroupBy,
    /// Only flows seen at or after this unix time.
    pub since: Option<u64>,
    /// Only (group, peer, port) seen at least this many times.
    pub min_count: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            group_by: GroupBy::Compose,
            since: None,
            min_count: 1,
        }
    }
}

/// Why containers are in a group: the selector the group is written with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Basis {
    Compose { project: String, service: String },
    Label { key: String, value: String },
    Name(String),
}

impl Basis {
    fn of(name: &str, f: &Facts, by: &GroupBy) -> Self {
        let compose = || {
            Some(Basis::Compose {
                project: f.labels.get(COMPOSE_PROJECT)?.clone(),
                service: f.labels.get(COMPOSE_SERVICE)?.clone(),
            })
        };
        let chosen = match by {
            GroupBy::Compose => compose(),
            GroupBy::Label(key) => f.labels.get(key).map(|v| Basis::Label {
                key: key.clone(),
                value: v.clone(),
            }),
            GroupBy::Name => None,
        };
        chosen.unwrap_or_else(|| Basis::Name(name.to_string()))
    }

    fn natural_name(&self) -> String {
        match self {
            Basis::Compose { service, .. } => service.clone(),
            Basis::Label { value, .. } => value.clone(),
            Basis::Name(n) => n.clone(),
        }
    }

    fn long_name(&self) -> String {
        match self {
            Basis::Compose { project, service } => format!("{project}-{service}"),
            Basis::Label { key, value } => format!("{key}-{value}"),
            Basis::Name(n) => format!("name-{n}"),
        }
    }

    fn selector(&self) -> String {
        match self {
            Basis::Compose { project, service } => format!(
                "compose = {{ project = {}, service = {} }}",
                quote(project),
                quote(service)
            ),
            Basis::Label { key, value } => {
                format!("labels = {{ {} = {} }}", key_repr(key), quote(value))
            }
            Basis::Name(n) => format!("names = [{}]", quote(n)),
        }
    }
}

/// One group the output defines.
struct GroupDef {
    name: String,
    basis: Basis,
    members: BTreeSet<String>,
    /// Every member was in learn mode.
    learned: bool,
}

/// Containers into groups, with names that are valid, unique and not in
/// `taken` (the names of an existing policy's groups).
fn plan_groups(
    containers: &BTreeMap<String, Facts>,
    wanted: &BTreeSet<String>,
    by: &GroupBy,
    taken: &BTreeSet<String>,
) -> (BTreeMap<String, String>, Vec<GroupDef>) {
    let mut by_basis: BTreeMap<Basis, Vec<&String>> = BTreeMap::new();
    for name in wanted {
        let facts = containers.get(name).cloned().unwrap_or_default();
        by_basis
            .entry(Basis::of(name, &facts, by))
            .or_default()
            .push(name);
    }
    // A natural name shared by two bases (one service in two projects)
    // gets the long form for both.
    let mut natural: BTreeMap<String, usize> = BTreeMap::new();
    for b in by_basis.keys() {
        *natural.entry(b.natural_name()).or_default() += 1;
    }
    let mut used: BTreeSet<String> = taken.clone();
    let mut of = BTreeMap::new();
    let mut defs = Vec::new();
    for (basis, members) in by_basis {
        let first = if natural[&basis.natural_name()] == 1 {
            basis.natural_name()
        } else {
            basis.long_name()
        };
        // Characters a group name cannot have become `-`; a name that still
        // reads as an address or a reserved peer gets a prefix.
        let clean: String = first
            .trim()
            .chars()
            .map(|c| if c == ':' || c.is_control() { '-' } else { c })
            .collect();
        let first = if valid_group_name(&clean) {
            clean
        } else {
            format!("group-{clean}")
        };
        let mut name = first.clone();
        let mut n = 2;
        while !valid_group_name(&name) || used.contains(&name) {
            name = format!("{first}-{n}");
            n += 1;
            assert!(n < 1_000_000, "no group name found for {first:?}");
        }
        used.insert(name.clone());
        let learned = members
            .iter()
            .all(|m| containers.get(*m).is_some_and(|f| f.learned));
        for m in &members {
            of.insert((*m).clone(), name.clone());
        }
        defs.push(GroupDef {
            name,
            basis,
            members: members.into_iter().cloned().collect(),
            learned,
        });
    }
    (of, defs)
}

fn valid_group_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name == name.trim()
        && !name.contains(':')
        && !name.chars().any(char::is_control)
        && !RESERVED.contains(&name)
        && !looks_like_cidr(name)
}

/// A side of a rule before addresses are collapsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Group(String),
    Host,
    Address(IpAddr),
}

/// A side of a rule as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Written {
    Group(String),
    Host,
    World,
    Blocks(Vec<String>),
}

impl Written {
    fn toml(&self) -> String {
        match self {
            Written::Group(g) => quote(g),
            Written::Host => "\"host\"".into(),
            Written::World => "\"world\"".into(),
            Written::Blocks(b) if b.len() == 1 => quote(&b[0]),
            Written::Blocks(b) => format!(
                "{{ cidr = [{}] }}",
                b.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    flows: u64,
    first: u64,
    last: u64,
    /// Distinct observed flows behind it.
    rows: u64,
}

impl Stat {
    fn add(&mut self, o: &Observed) {
        self.merge(&Stat {
            flows: o.flows,
            first: o.first,
            last: o.last,
            rows: 1,
        });
    }

    fn merge(&mut self, s: &Stat) {
        self.first = if self.rows == 0 {
            s.first
        } else {
            self.first.min(s.first)
        };
        self.last = self.last.max(s.last);
        self.flows += s.flows;
        self.rows += s.rows;
    }
}

/// Rule keys: (from, to, proto, port).
type RuleKey<P> = (P, P, u8, u16);

/// Collapses address peers: per (other side, direction, proto, port), at
/// most [`MAX_ADDRESSES`] exact addresses, else /24 (IPv4) or /48 (IPv6)
/// blocks, else `world`.
fn collapse(rules: BTreeMap<RuleKey<Peer>, Stat>) -> BTreeMap<RuleKey<Written>, Stat> {
    let mut out: BTreeMap<RuleKey<Written>, Stat> = BTreeMap::new();
    // (group side, address on the `to` side?, proto, port) -> addresses
    let mut addrs: BTreeMap<(Peer, bool, u8, u16), BTreeMap<IpAddr, Stat>> = BTreeMap::new();
    for ((from, to, p, port), s) in rules {
        let written = |x: &Peer| match x {
            Peer::Group(g) => Written::Group(g.clone()),
            Peer::Host => Written::Host,
            Peer::Address(_) => unreachable!("addresses are collapsed below"),
        };
        match (&from, &to) {
            (_, Peer::Address(a)) => {
                addrs
                    .entry((from.clone(), true, p, port))
                    .or_default()
                    .entry(*a)
                    .or_default()
                    .merge(&s);
            }
            (Peer::Address(a), _) => {
                addrs
                    .entry((to.clone(), false, p, port))
                    .or_default()
                    .entry(*a)
                    .or_default()
                    .merge(&s);
            }
            _ => {
                out.entry((written(&from), written(&to), p, port))
                    .or_default()
                    .merge(&s);
            }
        }
    }
    for ((side, addr_is_to, p, port), set) in addrs {
        let side = match side {
            Peer::Group(g) => Written::Group(g),
            Peer::Host => Written::Host,
            Peer::Address(_) => continue,
        };
        let mut total = Stat::default();
        for s in set.values() {
            total.merge(s);
        }
        let exact: Vec<String> = set
            .keys()
            .map(|a| match a {
                IpAddr::V4(v) => format!("{v}/32"),
                IpAddr::V6(v) => format!("{v}/128"),
            })
            .collect();
        let blocks: BTreeSet<String> = set
            .keys()
            .map(|a| match a {
                IpAddr::V4(v) => {
                    let o = v.octets();
                    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
                }
                IpAddr::V6(v) => {
                    let s = v.segments();
                    let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
                    format!("{net}/48")
                }
            })
            .collect();
        let peer = if exact.len() <= MAX_ADDRESSES {
            Written::Blocks(exact)
        } else if blocks.len() <= MAX_ADDRESSES {
            Written::Blocks(blocks.into_iter().collect())
        } else {
            Written::World
        };
        let key = if addr_is_to {
            (side, peer, p, port)
        } else {
            (peer, side, p, port)
        };
        out.entry(key).or_default().merge(&total);
    }
    out
}

/// `80/tcp`, `icmpv4`…, or None for a protocol the policy cannot name.
fn port_text(p: u8, port: u16) -> Option<String> {
    match p {
        proto::TCP => Some(format!("{port}/tcp")),
        proto::UDP => Some(format!("{port}/udp")),
        proto::ICMP => Some("icmpv4".into()),
        proto::ICMPV6 => Some("icmpv6".into()),
        _ => None,
    }
}

fn side_of(s: &Side, group_of: &BTreeMap<String, String>) -> Peer {
    match s {
        Side::Container(n) => Peer::Group(group_of[n].clone()),
        Side::Host => Peer::Host,
        Side::Address(a) => Peer::Address(*a),
    }
}

fn counted<'a>(observed: &'a [Observed], opts: &Options) -> Vec<&'a Observed> {
    observed
        .iter()
        .filter(|o| opts.since.is_none_or(|t| o.last >= t))
        .collect()
}

fn containers_in(observed: &[&Observed]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for o in observed {
        for s in [&o.from, &o.to] {
            if let Side::Container(n) = s {
                out.insert(n.clone());
            }
        }
    }
    out
}

/// Writes a whole policy from what was observed: every container in learn
/// mode and every container it talked to gets a group; one allow rule per
/// (group, peer, port) with its counts as a comment.
pub fn suggest(
    containers: &BTreeMap<String, Facts>,
    observed: &[Observed],
    opts: &Options,
) -> String {
    let chosen = counted(observed, opts);
    let mut wanted = containers_in(&chosen);
    // Learned containers that made no flow at all get a group too: their
    // deny defaults keep them as quiet as they were.
    wanted.extend(
        containers
            .iter()
            .filter(|(_, f)| f.learned)
            .map(|(n, _)| n.clone()),
    );
    let (group_of, defs) = plan_groups(containers, &wanted, &opts.group_by, &BTreeSet::new());
    let mut rules: BTreeMap<RuleKey<Peer>, Stat> = BTreeMap::new();
    for o in &chosen {
        rules
            .entry((
                side_of(&o.from, &group_of),
                side_of(&o.to, &group_of),
                o.proto,
                o.port,
            ))
            .or_default()
            .add(o);
    }
    let rules = collapse(rules);
    let rules: BTreeMap<_, _> = rules
        .into_iter()
        .filter(|(_, s)| s.flows >= opts.min_count)
        .collect();
    let mut out = String::new();
    let total: u64 = chosen.iter().map(|o| o.flows).sum();
    let _ = writeln!(
        out,
        "# Written by `netiso policy suggest` from {} recorded flow rows ({} new flows){}.",
        chosen.len(),
        total,
        span_text(chosen.iter().map(|o| (o.first, o.last)))
    );
    let _ = writeln!(
        out,
        "# Groups by {}; one rule per observed (group, peer, port). Review before enforcing.",
        match &opts.group_by {
            GroupBy::Compose => "Compose project and service (else name)".to_string(),
            GroupBy::Label(k) => format!("label {k:?} (else name)"),
            GroupBy::Name => "container name".to_string(),
        }
    );
    for g in &defs {
        out.push('\n');
        write_group(&mut out, g, true);
    }
    write_rules(&mut out, &rules);
    out
}

fn write_group(out: &mut String, g: &GroupDef, defaults: bool) {
    let members: Vec<&str> = g.members.iter().map(String::as_str).collect();
    let _ = writeln!(out, "# containers: {}", one_line(&members.join(", ")));
    let _ = writeln!(out, "[groups.{}]", key_repr(&g.name));
    let _ = writeln!(out, "{}", g.basis.selector());
    if !defaults {
        return;
    }
    if g.learned {
        out.push_str("ingress = \"deny\"\negress = \"deny\"\n");
    } else {
        out.push_str(
            "# Not every member was in learn mode, so its other traffic is unknown:\n\
             # its defaults stay \"allow\".\n",
        );
    }
}

fn write_rules(out: &mut String, rules: &BTreeMap<RuleKey<Written>, Stat>) {
    for ((from, to, p, port), s) in rules {
        out.push('\n');
        let span = span_text([(s.first, s.last)].into_iter());
        let Some(ports) = port_text(*p, *port) else {
            let _ = writeln!(
                out,
                "# Not written: {} new flows of IP protocol {p} from {} to {}{span}; \
                 policies name tcp, udp and icmp only.",
                s.flows,
                one_line(&from.toml()),
                one_line(&to.toml())
            );
            continue;
        };
        let _ = writeln!(out, "[[rules]]");
        let _ = writeln!(
            out,
            "# {} new flow{}{span}",
            s.flows,
            if s.flows == 1 { "" } else { "s" }
        );
        let _ = writeln!(out, "from = {}", from.toml());
        let _ = writeln!(out, "to = {}", to.toml());
        let _ = writeln!(out, "ports = [{}]", quote(&ports));
        let _ = writeln!(out, "action = \"allow\"");
    }
}

/// One observed flow a policy drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub flow: Observed,
    /// The explicit deny rule that drops it, if one does (no rule can be
    /// added for it: deny beats allow).
    pub deny_rule: Option<u32>,
}

/// What `policy` would have dropped of the observed flows, and the text
/// to append to it so that it drops none of those it can allow: rules
/// between its own groups where the containers are in one, and new groups
/// (without defaults) for containers in none.
pub fn against(
    policy: &Policy,
    containers: &BTreeMap<String, Facts>,
    observed: &[Observed],
    opts: &Options,
) -> (Vec<Dropped>, String) {
    let chosen = counted(observed, opts);
    let names = |s: &Side| -> Vec<String> {
        match s {
            Side::Container(n) => policy.groups_of(&as_container(n, containers.get(n))),
            Side::Host => vec![crate::model::HOST.to_string()],
            Side::Address(a) => policy.names_of_address(*a),
        }
    };
    let mut dropped = Vec::new();
    for o in chosen {
        let d = evaluate(policy, &names(&o.from), &names(&o.to), o.proto, o.port);
        if d.action == Action::Deny {
            dropped.push(Dropped {
                flow: o.clone(),
                deny_rule: (d.rule_id != 0).then_some(d.rule_id),
            });
        }
    }
    // Containers in no group of the policy need one to be named by a rule.
    let fixable: Vec<&Dropped> = dropped.iter().filter(|d| d.deny_rule.is_none()).collect();
    let ungrouped: BTreeSet<String> =
        containers_in(&fixable.iter().map(|d| &d.flow).collect::<Vec<_>>())
            .into_iter()
            .filter(|n| {
                policy
                    .groups_of(&as_container(n, containers.get(n)))
                    .is_empty()
            })
            .collect();
    let taken: BTreeSet<String> = policy.groups.iter().map(|g| g.name.clone()).collect();
    let (new_group_of, defs) = plan_groups(containers, &ungrouped, &opts.group_by, &taken);
    let side = |s: &Side| -> Peer {
        match s {
            Side::Container(n) => match policy
                .groups_of(&as_container(n, containers.get(n)))
                .into_iter()
                .next()
            {
                Some(g) => Peer::Group(g),
                None => Peer::Group(new_group_of[n].clone()),
            },
            Side::Host => Peer::Host,
            Side::Address(a) => Peer::Address(*a),
        }
    };
    let mut rules: BTreeMap<RuleKey<Peer>, Stat> = BTreeMap::new();
    for d in &fixable {
        let o = &d.flow;
        rules
            .entry((side(&o.from), side(&o.to), o.proto, o.port))
            .or_default()
            .add(o);
    }
    let rules: BTreeMap<_, _> = collapse(rules)
        .into_iter()
        .filter(|(_, s)| s.flows >= opts.min_count)
        .collect();
    let mut out = String::new();
    if rules.is_empty() && defs.is_empty() {
        return (dropped, out);
    }
    let _ = writeln!(
        out,
        "\n# Added by `netiso policy suggest --against`: {} recorded flow row{} this policy drops.",
        fixable.len(),
        if fixable.len() == 1 { "" } else { "s" }
    );
    for g in &defs {
        out.push('\n');
        write_group(&mut out, g, false);
    }
    write_rules(&mut out, &rules);
    (dropped, out)
}

/// A container as the policy's selectors see it, from what was recorded.
pub fn as_container(name: &str, facts: Option<&Facts>) -> Container {
    let f = facts.cloned().unwrap_or_default();
    Container {
        name: name.to_string(),
        image: f.image,
        labels: f.labels,
        networks: f
            .networks
            .into_iter()
            .map(|network| Attachment {
                network,
                ..Attachment::default()
            })
            .collect(),
        ..Container::default()
    }
}

/// A unified diff that appends `addition` to the file `path` whose text is
/// `current` (`patch -p0 < DIFF`, or `patch FILE < DIFF`).
pub fn append_diff(path: &str, current: &str, addition: &str) -> String {
    let mut lines: Vec<&str> = current.lines().collect();
    let no_newline = !current.is_empty() && !current.ends_with('\n');
    let ctx = lines.len().min(3);
    let start = lines.len() - ctx;
    let context: Vec<&str> = lines.split_off(start);
    let added: Vec<&str> = addition.lines().collect();
    let mut out = format!("--- {path}\n+++ {path}\n");
    let old_start = if ctx == 0 { 0 } else { start + 1 };
    let _ = writeln!(
        out,
        "@@ -{old_start},{ctx} +{},{} @@",
        start + 1,
        ctx + added.len()
    );
    for (i, l) in context.iter().enumerate() {
        if no_newline && i + 1 == context.len() {
            let _ = writeln!(out, "-{l}\n\\ No newline at end of file\n+{l}");
        } else {
            let _ = writeln!(out, " {l}");
        }
    }
    for l in added {
        let _ = writeln!(out, "+{l}");
    }
    out
}

/// A unified diff that creates the file `path` with `text`.
pub fn new_file_diff(path: &str, text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = format!("--- /dev/null\n+++ {path}\n@@ -0,0 +1,{} @@\n", lines.len());
    for l in lines {
        let _ = writeln!(out, "+{l}");
    }
    out
}

/// `, 2026-12-07T05:00:00Z – 2026-12-07T06:10:00Z` over the spans given.
fn span_text(spans: impl Iterator<Item = (u64, u64)>) -> String {
    let (mut first, mut last) = (u64::MAX, 0);
    for (f, l) in spans {
        first = first.min(f);
        last = last.max(l);
    }
    if first == u64::MAX {
        return String::new();
    }
    if first == last {
        return format!(", at {}", utc(first));
    }
    format!(", {} – {}", utc(first), utc(last))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A TOML basic string on one line: `\` and `"` escaped, control
/// characters as `\uXXXX` (usable for keys and values alike).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a comment: control characters (a newline would end it) as `?`.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key_repr(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_str;

    fn compose(project: &str, service: &str) -> Facts {
        Facts {
            image: format!("{service}:1"),
            labels: [
                (COMPOSE_PROJECT.to_string(), project.to_string()),
                (COMPOSE_SERVICE.to_string(), service.to_string()),
                ("app".to_string(), format!("{service}-app")),
            ]
            .into(),
            networks: vec!["shop_default".into()],
            learned: true,
        }
    }

    fn c(n: &str) -> Side {
        Side::Container(n.into())
    }

    fn flow(from: Side, to: Side, p: u8, port: u16, flows: u64) -> Observed {
        Observed {
            from,
            to,
            proto: p,
            port,
            flows,
            first: 1_796_000_000,
            last: 1_796_000_600,
        }
    }

    /// A shop: two web replicas, an API, a database, a cache over UDP, a
    /// health check from the host, DNS and an API out to the world.
    fn shop() -> (BTreeMap<String, Facts>, Vec<Observed>) {
        let containers: BTreeMap<String, Facts> = [
            ("shop-web-1", compose("shop", "web")),
            ("shop-web-2", compose("shop", "web")),
            ("shop-api-1", compose("shop", "api")),
            ("shop-db-1", compose("shop", "db")),
            ("shop-cache-1", compose("shop", "cache")),
            ("idle-1", compose("shop", "idle")),
        ]
        .into_iter()
        .map(|(n, f)| (n.to_string(), f))
        .collect();
        let world: IpAddr = "198.18.0.5".parse().unwrap();
        let observed = vec![
            flow(c("shop-web-1"), c("shop-api-1"), proto::TCP, 8080, 40),
            flow(c("shop-web-2"), c("shop-api-1"), proto::TCP, 8080, 2),
            flow(c("shop-api-1"), c("shop-db-1"), proto::TCP, 5432, 7),
            flow(c("shop-api-1"), c("shop-cache-1"), proto::UDP, 11211, 3),
            flow(Side::Host, c("shop-web-1"), proto::TCP, 80, 5),
            flow(c("shop-api-1"), Side::Address(world), proto::TCP, 443, 1),
            flow(c("shop-api-1"), Side::Host, proto::UDP, 53, 9),
            flow(c("shop-web-1"), c("shop-web-2"), proto::ICMP, 0, 1),
        ];
        (containers, observed)
    }

    fn names(p: &Policy, s: &Side, facts: &BTreeMap<String, Facts>) -> Vec<String> {
        match s {
            Side::Container(n) => p.groups_of(&as_container(n, facts.get(n))),
            Side::Host => vec!["host".into()],
            Side::Address(a) => p.names_of_address(*a),
        }
    }

    fn verdict(p: &Policy, f: &Observed, facts: &BTreeMap<String, Facts>) -> Action {
        evaluate(
            p,
            &names(p, &f.from, facts),
            &names(p, &f.to, facts),
            f.proto,
            f.port,
        )
        .action
    }

    /// What was observed is allowed by the suggestion, nothing else
    /// between the learned containers is, the file passes `policy check`
    /// with no warning, and the same input gives the same file.
    #[test]
    fn a_suggestion_allows_what_was_seen_and_nothing_else() {
        let (facts, observed) = shop();
        let text = suggest(&facts, &observed, &Options::default());
        let p = parse_str(&text, "suggested.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(p.warnings.is_empty(), "{:?}\n{text}", p.warnings);
        for f in &observed {
            assert_eq!(verdict(&p, f, &facts), Action::Allow, "{f:?}\n{text}");
        }
        let never = [
            flow(c("shop-web-1"), c("shop-db-1"), proto::TCP, 5432, 1),
            flow(c("shop-api-1"), c("shop-db-1"), proto::TCP, 22, 1),
            flow(c("shop-db-1"), c("shop-api-1"), proto::TCP, 8080, 1),
            flow(c("idle-1"), c("shop-api-1"), proto::TCP, 8080, 1),
            flow(
                c("shop-api-1"),
                Side::Address("198.18.0.6".parse().unwrap()),
                proto::TCP,
                443,
                1,
            ),
            flow(Side::Host, c("shop-db-1"), proto::TCP, 5432, 1),
        ];
        for f in &never {
            assert_eq!(verdict(&p, f, &facts), Action::Deny, "{f:?}\n{text}");
        }
        // One rule per (group, peer, port): the two web replicas share one.
        assert_eq!(p.rules.len(), 7, "{text}");
        assert_eq!(p.groups.len(), 5, "{text}");
        assert!(text.contains("# 42 new flows"), "{text}");
        let mut shuffled = observed.clone();
        shuffled.reverse();
        assert_eq!(suggest(&facts, &shuffled, &Options::default()), text);
    }

    #[test]
    fn an_empty_record_is_an_empty_valid_policy() {
        let text = suggest(&BTreeMap::new(), &[], &Options::default());
        let p = parse_str(&text, "empty.toml").unwrap();
        assert!(p.groups.is_empty() && p.rules.is_empty() && p.warnings.is_empty());
    }

    /// Thousands of flows to thousands of addresses: a few rules, not one
    /// per address, in little time.
    #[test]
    fn thousands_of_flows_stay_a_short_policy() {
        let (facts, mut observed) = shop();
        for i in 0..5000u32 {
            let [_, _, b, d] = i.to_be_bytes();
            let addr = IpAddr::from([198, 18, b, d]);
            observed.push(flow(
                c("shop-api-1"),
                Side::Address(addr),
                proto::TCP,
                443,
                1,
            ));
            observed.push(flow(
                c("shop-web-1"),
                Side::Address(addr),
                proto::TCP,
                80 + (i % 3) as u16,
                1,
            ));
        }
        let started = std::time::Instant::now();
        let text = suggest(&facts, &observed, &Options::default());
        let took = started.elapsed();
        let p = parse_str(&text, "big.toml").unwrap();
        assert!(p.warnings.is_empty());
        assert!(p.rules.len() <= 12, "{} rules\n{text}", p.rules.len());
        assert!(text.len() < 8_000, "{} bytes", text.len());
        for f in &observed {
            assert_eq!(verdict(&p, f, &facts), Action::Allow, "{f:?}");
        }
        // Not a timing assertion of the product: a guard against a
        // quadratic blow-up (this takes milliseconds).
        assert!(took.as_secs() < 20, "{took:?}");
    }

    /// Few addresses stay exact; a /24 of many collapses to the block.
    #[test]
    fn addresses_collapse_to_blocks_then_world() {
        let (facts, _) = shop();
        let to = |a: &str, port| {
            flow(
                c("shop-api-1"),
                Side::Address(a.parse().unwrap()),
                proto::TCP,
                port,
                1,
            )
        };
        let few = [to("198.18.0.1", 443), to("198.18.7.1", 443)];
        let text = suggest(&facts, &few, &Options::default());
        assert!(
            text.contains(r#"to = { cidr = ["198.18.0.1/32", "198.18.7.1/32"] }"#),
            "{text}"
        );
        let block: Vec<_> = (1..=20)
            .map(|i| to(&format!("198.18.3.{i}"), 443))
            .collect();
        let text = suggest(&facts, &block, &Options::default());
        assert!(text.contains(r#"to = "198.18.3.0/24""#), "{text}");
    }

    #[test]
    fn group_by_label_since_and_min_count() {
        let (facts, observed) = shop();
        let opts = Options {
            group_by: GroupBy::Label("app".into()),
            ..Options::default()
        };
        let text = suggest(&facts, &observed, &opts);
        assert!(
            text.contains("[groups.api-app]\nlabels = { app = \"api-app\" }"),
            "{text}"
        );
        let p = parse_str(&text, "l.toml").unwrap();
        for f in &observed {
            assert_eq!(verdict(&p, f, &facts), Action::Allow, "{f:?}");
        }
        let opts = Options {
            min_count: 5,
            ..Options::default()
        };
        let p = parse_str(&suggest(&facts, &observed, &opts), "m.toml").unwrap();
        // 42 (web→api), 7 (api→db), 5 (host→web), 9 (dns).
        assert_eq!(p.rules.len(), 4);
        let opts = Options {
            since: Some(1_796_000_601),
            ..Options::default()
        };
        let p = parse_str(&suggest(&facts, &observed, &opts), "s.toml").unwrap();
        assert!(p.rules.is_empty());
        assert_eq!(
            "label:app".parse::<GroupBy>(),
            Ok(GroupBy::Label("app".into()))
        );
        assert!("label:".parse::<GroupBy>().is_err() && "labels".parse::<GroupBy>().is_err());
    }

    /// A policy that misses one observed flow: exactly that rule is
    /// proposed, and with it nothing observed is dropped; a flow an
    /// explicit deny drops is reported, not "fixed".
    #[test]
    fn against_proposes_exactly_the_missing_rule() {
        let (facts, observed) = shop();
        let full = suggest(&facts, &observed, &Options::default());
        // Remove the api → db rule.
        let cut = full.replace(
            "from = \"api\"\nto = \"db\"\nports = [\"5432/tcp\"]\naction = \"allow\"",
            "from = \"api\"\nto = \"db\"\nports = [\"5433/tcp\"]\naction = \"allow\"",
        );
        assert_ne!(cut, full);
        let p = parse_str(&cut, "cut.toml").unwrap();
        let (dropped, addition) = against(&p, &facts, &observed, &Options::default());
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert_eq!(dropped[0].flow.port, 5432);
        assert_eq!(addition.matches("[[rules]]").count(), 1, "{addition}");
        assert!(
            addition.contains("from = \"api\"\nto = \"db\"\nports = [\"5432/tcp\"]"),
            "{addition}"
        );
        let fixed = parse_str(&format!("{cut}{addition}"), "fixed.toml").unwrap();
        assert!(fixed.warnings.is_empty(), "{:?}", fixed.warnings);
        assert!(against(&fixed, &facts, &observed, &Options::default())
            .0
            .is_empty());
        // An explicit deny is not overridden.
        let denied = format!("{full}\n[[rules]]\nfrom = \"api\"\nto = \"db\"\naction = \"deny\"\n");
        let p = parse_str(&denied, "deny.toml").unwrap();
        let (dropped, addition) = against(&p, &facts, &observed, &Options::default());
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].deny_rule.is_some());
        assert!(addition.is_empty(), "{addition}");
        // A container the policy does not group gets a group of its own.
        let none = parse_str("", "none.toml").unwrap();
        let strict = parse_str("[settings]\nunmanaged = \"deny\"\n", "strict.toml").unwrap();
        assert!(against(&none, &facts, &observed, &Options::default())
            .0
            .is_empty());
        let (dropped, addition) = against(&strict, &facts, &observed, &Options::default());
        assert_eq!(dropped.len(), observed.len());
        let fixed = parse_str(
            &format!("[settings]\nunmanaged = \"deny\"\n{addition}"),
            "strict-fixed.toml",
        )
        .unwrap_or_else(|e| panic!("{e}\n{addition}"));
        assert!(
            against(&fixed, &facts, &observed, &Options::default())
                .0
                .is_empty(),
            "{addition}"
        );
    }

    /// Hostile container names, label keys and values make a valid file
    /// that selects exactly them: no injection, no invalid TOML.
    #[test]
    fn hostile_names_and_labels_are_written_safely() {
        let mut f = compose("p", "s");
        let evil = "a\"]\n[groups.x]\nnames = [\"*\"]\n#'\\";
        f.labels = [
            ("app\"\n]".to_string(), evil.to_string()),
            ("a'b\"c".to_string(), "v".into()),
        ]
        .into();
        let containers: BTreeMap<String, Facts> = [(format!("n{evil}"), f.clone())].into();
        let flows = [
            flow(c(&format!("n{evil}")), Side::Host, proto::UDP, 53, 1),
            flow(c(&format!("n{evil}")), Side::Host, 132, 0, 1),
        ];
        for by in [
            GroupBy::Name,
            GroupBy::Label("app\"\n]".into()),
            GroupBy::Label("a'b\"c".into()),
        ] {
            let opts = Options {
                group_by: by,
                ..Options::default()
            };
            let text = suggest(&containers, &flows, &opts);
            let p = parse_str(&text, "evil.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(p.groups.len(), 1, "{text}");
            assert!(
                p.groups[0].selects(&as_container(&format!("n{evil}"), Some(&f))),
                "{text}"
            );
            assert!(!p.groups[0].selects(&as_container("other", None)), "{text}");
        }
    }

    #[test]
    fn diffs_apply_cleanly_in_form() {
        let d = append_diff("p.toml", "a\nb\nc\nd\n", "\n[[rules]]\n");
        assert_eq!(
            d,
            "--- p.toml\n+++ p.toml\n@@ -2,3 +2,5 @@\n b\n c\n d\n+\n+[[rules]]\n"
        );
        let d = append_diff("p.toml", "", "x\n");
        assert_eq!(d, "--- p.toml\n+++ p.toml\n@@ -0,0 +1,1 @@\n+x\n");
        let d = append_diff("p.toml", "a", "x\n");
        assert_eq!(
            d,
            "--- p.toml\n+++ p.toml\n@@ -1,1 +1,2 @@\n-a\n\\ No newline at end of file\n+a\n+x\n"
        );
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_601_600), "2026-12-07T00:00:00Z");
    }
}
