//! Reference evaluation, straight from the policy model: the definition the
//! compiled tables must agree with.
use netiso_common::Action;

use super::model::{Policy, Rule};

/// A verdict and what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule (1-based), or 0 when a default decided.
    pub rule_id: u32,
    /// A sentence for people (`explain`, logs).
    pub why: String,
}

/// The verdict for a packet from a peer in `src_groups` to a peer in
/// `dst_groups`. Reserved peers are passed as their names: `&["world".into()]`
/// is the world, `&["host".into()]` the host, `&[]` an unmanaged container.
///
/// Deny beats allow; among rules of the same action the lowest id decides;
/// when no rule matches, any `egress = "deny"` of a source group or
/// `ingress = "deny"` of a destination group denies.
pub fn evaluate(
    policy: &Policy,
    src_groups: &[String],
    dst_groups: &[String],
    proto: u8,
    port: u16,
) -> Decision {
    let matching = || {
        policy.rules.iter().filter(|r| {
            src_groups.contains(&r.from) && dst_groups.contains(&r.to) && r.covers(proto, port)
        })
    };
    if let Some(rule) = matching().find(|r| r.action == Action::Deny) {
        return by_rule(rule);
    }
    if let Some(rule) = matching().find(|r| r.action == Action::Allow) {
        return by_rule(rule);
    }
    let egress = src_groups
        .iter()
        .filter_map(|g| policy.group(g))
        .find(|g| g.egress == Action::Deny);
    let ingress = dst_groups
        .iter()
        .filter_map(|g| policy.group(g))
        .find(|g| g.ingress == Action::Deny);
    let why = match (egress, ingress) {
        (Some(g), _) => format!(
            "no rule matches; denied by default: source group \"{}\" has egress = \"deny\"",
            g.name
        ),
        (None, Some(g)) => format!(
            "no rule matches; denied by default: destination group \"{}\" has ingress = \"deny\"",
            g.name
        ),
        (None, None) => "no rule matches; allowed by default: no source group denies egress \
                         and no destination group denies ingress"
            .to_string(),
    };
    Decision {
        action: if egress.is_some() || ingress.is_some() {
            Action::Deny
        } else {
            Action::Allow
        },
        rule_id: 0,
        why,
    }
}

fn by_rule(rule: &Rule) -> Decision {
    let verb = match rule.action {
        Action::Allow => "allowed",
        Action::Deny => "denied",
        Action::Audit => "allowed and audited",
    };
    let mut why = format!("{verb} by {} at {}", rule.summary(), rule.location);
    if let Some(d) = &rule.description {
        why.push_str(&format!(": {d}"));
    }
    Decision {
        action: rule.action,
        rule_id: rule.id,
        why,
    }
}
