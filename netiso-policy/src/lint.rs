//! Warnings: things that are legal but almost certainly not what was meant.
use std::collections::HashMap;

use netiso_common::Action;

use crate::diagnostic::{Diagnostic, Kind};
use crate::model::{Peer, Policy, Rule};
use crate::ports::{overlap, PortSet};

pub(crate) fn warnings(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    never_matching_groups(policy, &mut out);
    rules_between_non_containers(policy, &mut out);
    shadowed_rules(policy, &mut out);
    unused_groups(policy, &mut out);
    local_only_selectors(policy, &mut out);
    out
}

/// Criteria of `s` (and its `all` / `any` members) other nodes of a Swarm
/// cannot see of a task there: labels other than the service's, task's and
/// stack's (gossip carries none), and the image.
fn local_only_criteria(s: &crate::selector::Selector, out: &mut Vec<String>) {
    use crate::container::{STACK_NAMESPACE, SWARM_SERVICE, SWARM_TASK};
    for l in &s.labels {
        if ![SWARM_SERVICE, SWARM_TASK, STACK_NAMESPACE].contains(&l.key.as_str()) {
            out.push(format!("label {}", l.key));
        }
    }
    if !s.images.is_empty() {
        out.push("image".into());
    }
    for m in s.all.iter().chain(&s.any) {
        local_only_criteria(m, out);
    }
}

fn uses_swarm(s: &crate::selector::Selector) -> bool {
    use crate::container::{STACK_NAMESPACE, SWARM_SERVICE};
    s.labels
        .iter()
        .any(|l| l.key == SWARM_SERVICE || l.key == STACK_NAMESPACE)
        || s.all.iter().chain(&s.any).any(uses_swarm)
}

/// In a policy for a Swarm (some group selects by `swarm`), a group a rule
/// names that selects by labels or image is only recognised on the node
/// its task runs on: elsewhere the task is known from gossip (name,
/// service, address) and counts as `unmanaged`, so a rule from or to the
/// group does not apply there (a deny rule from it lets it through).
fn local_only_selectors(policy: &Policy, out: &mut Vec<Diagnostic>) {
    if !policy.groups.iter().any(|g| uses_swarm(&g.selector)) {
        return;
    }
    for group in &policy.groups {
        let named = policy
            .rules
            .iter()
            .any(|r| r.from.name() == group.name || r.to.name() == group.name);
        let mut criteria = Vec::new();
        local_only_criteria(&group.selector, &mut criteria);
        if !named || criteria.is_empty() {
            continue;
        }
        criteria.dedup();
        out.push(
            Diagnostic::warning(
                Kind::LocalOnlySelector,
                format!(
                    "group \"{}\" selects by {}, which other Swarm nodes cannot see",
                    group.name,
                    criteria.join(", ")
                ),
            )
            .at(group.location.clone())
            .label("a task of it on another node counts there as `unmanaged`")
            .help(
                "select Swarm tasks with swarm = { service = \"…\" } (or names): the \
                 overlay's gossip tells every node a task's service and name",
            ),
        );
    }
}

/// The order in which matching rules decide: deny beats audit beats allow;
/// among equal actions the lower id wins (sort by `(rank, id)`).
fn rank(a: Action) -> u8 {
    match a {
        Action::Deny => 0,
        Action::Audit => 1,
        Action::Allow => 2,
    }
}

/// A rule never decides anything when, for the same `from` and `to`, other
/// rules that win over it cover all of its ports.
///
/// Only rules with the very same peers are compared: whether two different
/// groups overlap depends on the containers, which are not known here.
///
/// Linear in the rules (a 10 000-rule policy is checked on every reload):
/// rules are bucketed by their peers, and within a bucket, taken in the
/// order in which they win (`rank`, then id), the ports of the rules
/// before a rule are exactly the ports its winners cover.
fn shadowed_rules(policy: &Policy, out: &mut Vec<Diagnostic>) {
    let mut buckets: HashMap<(&str, &str), Vec<Vec<&Rule>>> = HashMap::new();
    for rule in &policy.rules {
        let same_name = buckets
            .entry((rule.from.name(), rule.to.name()))
            .or_default();
        // Peers with one name are nearly always equal; compare exactly.
        match same_name
            .iter_mut()
            .find(|b| b[0].from == rule.from && b[0].to == rule.to)
        {
            Some(b) => b.push(rule),
            None => same_name.push(vec![rule]),
        }
    }
    let mut found: Vec<(u32, Diagnostic)> = Vec::new();
    for mut bucket in buckets.into_values().flatten() {
        bucket.sort_by_key(|r| (rank(r.action), r.id));
        let mut covered = PortSet::default();
        for (i, rule) in bucket.iter().enumerate() {
            if i > 0 && covered.contains(rule.ports.as_deref()) {
                found.push((rule.id, shadowed(rule, &bucket[..i])));
            }
            covered.add(rule.ports.as_deref());
        }
    }
    // In file order, as before.
    found.sort_by_key(|(id, _)| *id);
    out.extend(found.into_iter().map(|(_, d)| d));
}

/// The warning for `rule`, hidden by `winners` (all rules that beat it).
fn shadowed(rule: &Rule, winners: &[&Rule]) -> Diagnostic {
    // Name only the rules that matter: those whose ports overlap.
    let mut relevant: Vec<&Rule> = winners
        .iter()
        .copied()
        .filter(|w| overlap(w.ports.as_deref(), rule.ports.as_deref()))
        .collect();
    relevant.sort_by_key(|w| w.id);
    let ids = relevant
        .iter()
        .map(|w| w.id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let stronger = relevant.iter().all(|w| w.action != rule.action);
    let (why, help) = if stronger {
        let what = if relevant.iter().all(|w| w.action == Action::Deny) {
            "denies"
        } else {
            "decides"
        };
        (
            format!(
                "rule{} {ids} already {what} everything it {}s, and {} beats {}",
                plural(relevant.len()),
                rule.action.as_str(),
                relevant[0].action.as_str(),
                rule.action.as_str()
            ),
            "remove this rule, or narrow the other rule so that it leaves these ports out",
        )
    } else {
        let which = if relevant.iter().all(|w| w.action == rule.action) {
            "earlier"
        } else {
            "earlier or stronger"
        };
        (
            format!(
                "{which} rule{} {ids} already decide{} every packet it matches",
                plural(relevant.len()),
                if relevant.len() == 1 { "s" } else { "" }
            ),
            "remove this rule, or narrow the rules that hide it",
        )
    };
    let mut d = Diagnostic::warning(
        Kind::ShadowedRule,
        format!("{} never decides anything", rule.summary()),
    )
    .at(rule.location.clone())
    .label(why)
    .help(help);
    for w in relevant {
        d = d.note(
            format!("it is hidden by {}", w.summary()),
            Some(w.location.clone()),
        );
    }
    d
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A group whose criteria contradict each other selects no container:
/// neither its defaults nor the rules naming it ever apply.
fn never_matching_groups(policy: &Policy, out: &mut Vec<Diagnostic>) {
    for group in &policy.groups {
        let Some(c) = group.selector.contradiction() else {
            continue;
        };
        let naming: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| r.from.name() == group.name || r.to.name() == group.name)
            .map(|r| r.id.to_string())
            .collect();
        let mut d = Diagnostic::warning(
            Kind::NeverMatches,
            format!("group \"{}\" can never select a container", group.name),
        )
        .at(group.location.clone())
        .label(c.reason)
        .help("fix the criteria that clash, or split the group in two");
        for loc in c.locations {
            d = d.note("this criterion is part of the clash", Some(loc));
        }
        if !naming.is_empty() {
            d = d.note(
                format!(
                    "so rule{} {} can never match",
                    plural(naming.len()),
                    naming.join(", ")
                ),
                None,
            );
        }
        out.push(d);
    }
}

/// netiso judges packets on container veths: traffic between the host,
/// the world and address blocks never passes one.
fn rules_between_non_containers(policy: &Policy, out: &mut Vec<Diagnostic>) {
    for rule in &policy.rules {
        if rule.from.is_container() || rule.to.is_container() {
            continue;
        }
        let what = |p: &Peer| match p {
            Peer::Cidr(_) => "an address block",
            Peer::Host => "the host",
            _ => "the world",
        };
        out.push(
            Diagnostic::warning(
                Kind::NeverMatches,
                format!("{} can never match", rule.summary()),
            )
            .at(rule.location.clone())
            .label(format!(
                "from {} to {}: neither side is a container",
                what(&rule.from),
                what(&rule.to)
            ))
            .help(
                "netiso only sees traffic that enters or leaves a container; \
                 name a group on one side",
            ),
        );
    }
}

/// A group no rule mentions, with allow/allow defaults, changes nothing: its
/// containers are treated exactly as if it did not exist.
fn unused_groups(policy: &Policy, out: &mut Vec<Diagnostic>) {
    for group in &policy.groups {
        let mentioned = policy
            .rules
            .iter()
            .any(|r| r.from.name() == group.name || r.to.name() == group.name);
        if mentioned
            || group.ingress == Action::Deny
            || group.egress == Action::Deny
            || group.fail_closed
            || group.learn
        {
            continue;
        }
        out.push(
            Diagnostic::warning(
                Kind::UnusedGroup,
                format!("group \"{}\" has no effect", group.name),
            )
            .at(group.location.clone())
            .label("no rule mentions it and both its defaults allow")
            .help("add a rule that names it, set `ingress` or `egress` to \"deny\", or remove it"),
        );
    }
}
