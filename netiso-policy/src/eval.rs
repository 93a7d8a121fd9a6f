//! Reference evaluation, straight from the policy model: the definition the
//! compiled tables must agree with.
use netiso_common::Action;

use crate::model::{Policy, Rule};

/// A verdict and what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule (1-based), or 0 when a default decided.
    pub rule_id: u32,
    /// A sentence for people (`explain`, logs).
    pub why: String,
}

/// The verdict for a packet from a peer known by the names `src` to a
/// peer known by the names `dst`:
///
/// - a container: the names of its groups (`&[]`: a container in no
///   group, an *unmanaged* one);
/// - the host: `["host"]`;
/// - any other address: `["world"]` plus the address-block peers it is in
///   ([`Policy::names_of_address`]).
///
/// Among the rules that match, a deny decides, else an audit, else an
/// allow (the lowest id among rules of that action). When no rule
/// matches, a source group with `egress = "deny"` or a destination group
/// with `ingress = "deny"` denies, and so do the `[settings] unmanaged`
/// defaults for a container in no group.
pub fn evaluate(policy: &Policy, src: &[String], dst: &[String], proto: u8, port: u16) -> Decision {
    let matching = || {
        policy
            .rules
            .iter()
            .filter(|r| r.matches(src, dst, proto, port))
    };
    for action in [Action::Deny, Action::Audit, Action::Allow] {
        if let Some(rule) = matching().find(|r| r.action == action) {
            return by_rule(rule);
        }
    }
    let unmanaged = policy.settings.unmanaged;
    let egress = if src.is_empty() {
        (unmanaged.egress == Action::Deny)
            .then(|| "source is in no group and [settings] unmanaged denies egress".to_string())
    } else {
        src.iter()
            .filter_map(|g| policy.group(g))
            .find(|g| g.egress == Action::Deny)
            .map(|g| format!("source group \"{}\" has egress = \"deny\"", g.name))
    };
    let ingress = if dst.is_empty() {
        (unmanaged.ingress == Action::Deny).then(|| {
            "destination is in no group and [settings] unmanaged denies ingress".to_string()
        })
    } else {
        dst.iter()
            .filter_map(|g| policy.group(g))
            .find(|g| g.ingress == Action::Deny)
            .map(|g| format!("destination group \"{}\" has ingress = \"deny\"", g.name))
    };
    match egress.or(ingress) {
        Some(reason) => Decision {
            action: Action::Deny,
            rule_id: 0,
            why: format!("no rule matches; denied by default: {reason}"),
        },
        None => Decision {
            action: Action::Allow,
            rule_id: 0,
            why: "no rule matches; allowed by default: no source default denies egress \
                  and no destination default denies ingress"
                .to_string(),
        },
    }
}

fn by_rule(rule: &Rule) -> Decision {
    let verb = match rule.action {
        Action::Allow => "allowed",
        Action::Deny => "denied",
        Action::Audit => "audited (passes, reported as audit)",
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
