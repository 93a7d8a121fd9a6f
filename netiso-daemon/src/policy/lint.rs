//! Warnings: things that are legal but almost certainly not what was meant.
use netiso_common::Action;

use super::diagnostic::{Diagnostic, Kind};
use super::model::{Policy, Rule};
use super::ports::PortSet;

pub(crate) fn warnings(policy: &Policy) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    shadowed_rules(policy, &mut out);
    unused_groups(policy, &mut out);
    out
}

/// A rule never decides anything when, for the same `from` and `to`, other
/// rules that win over it cover all of its ports: denies win over allows
/// (whatever their order), and among equal actions the first rule wins.
///
/// Only rules with the very same peers are compared: whether two different
/// groups overlap depends on the containers, which are not known here.
fn shadowed_rules(policy: &Policy, out: &mut Vec<Diagnostic>) {
    for rule in &policy.rules {
        let winners: Vec<&Rule> = policy
            .rules
            .iter()
            .filter(|other| {
                other.id != rule.id
                    && other.from == rule.from
                    && other.to == rule.to
                    && (other.action == Action::Deny && rule.action == Action::Allow
                        || other.action == rule.action && other.id < rule.id)
            })
            .collect();
        let mut covered = PortSet::default();
        for w in &winners {
            covered.add(w.ports.as_deref());
        }
        if winners.is_empty() || !covered.contains(rule.ports.as_deref()) {
            continue;
        }
        // Name only the rules that matter: those whose ports overlap.
        let relevant: Vec<&Rule> = winners.into_iter().filter(|w| overlaps(w, rule)).collect();
        let ids = relevant
            .iter()
            .map(|w| w.id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let (why, help) =
            if relevant.iter().all(|w| w.action == Action::Deny) && rule.action == Action::Allow {
                (
                    format!(
                        "rule{} {ids} already {} everything it allows, and deny beats allow",
                        plural(relevant.len()),
                        if relevant.len() == 1 {
                            "denies"
                        } else {
                            "deny"
                        }
                    ),
                    "remove this rule, or narrow the deny so that it leaves these ports out",
                )
            } else {
                (
                    format!(
                        "earlier rule{} {ids} already decide{} every packet it matches",
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
        out.push(d);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn overlaps(a: &Rule, b: &Rule) -> bool {
    match (&a.ports, &b.ports) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => x.iter().any(|s| {
            y.iter().any(|t| {
                s.proto() == t.proto()
                    && match (*s, *t) {
                        (
                            super::ports::PortSpec::Range { lo, hi, .. },
                            super::ports::PortSpec::Range {
                                lo: lo2, hi: hi2, ..
                            },
                        ) => lo <= hi2 && lo2 <= hi,
                        _ => true,
                    }
            })
        }),
    }
}

/// A group no rule mentions, with allow/allow defaults, changes nothing: its
/// containers are treated exactly as if it did not exist.
fn unused_groups(policy: &Policy, out: &mut Vec<Diagnostic>) {
    for group in &policy.groups {
        let mentioned = policy
            .rules
            .iter()
            .any(|r| r.from == group.name || r.to == group.name);
        if mentioned || group.ingress == Action::Deny || group.egress == Action::Deny {
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
