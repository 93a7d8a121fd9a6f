//! The validated policy: groups, rules and settings, each with the place it
//! was written so that later messages (warnings, `explain`) can point at it.
use std::collections::BTreeMap;

use netiso_common::{defaults, Action};

use super::diagnostic::{Diagnostic, Location};
use super::ports::PortSpec;
use crate::model::Container;

/// Peers rules may name that are not groups.
pub const WORLD: &str = "world";
pub const HOST: &str = "host";
pub const RESERVED: [&str; 2] = [WORLD, HOST];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// What happens to containers in no group; only `Allow` exists for now.
    pub unmanaged: Action,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            unmanaged: Action::Allow,
        }
    }
}

/// A named set of containers, and its defaults for traffic no rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Docker network the container must be attached to.
    pub network: Option<String>,
    /// Labels the container must carry, every one with this exact value.
    pub labels: BTreeMap<String, String>,
    /// Container name patterns (exact, or with `*` wildcards); one must match.
    pub names: Vec<String>,
    pub ingress: Action,
    pub egress: Action,
    /// Where the group's name is written (`[groups.NAME]`).
    pub location: Location,
}

impl Group {
    /// Whether every criterion the group gives matches the container.
    pub fn selects(&self, c: &Container) -> bool {
        self.network
            .as_ref()
            .is_none_or(|n| c.networks.iter().any(|a| &a.network == n))
            && self.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v))
            && (self.names.is_empty() || self.names.iter().any(|p| glob_match(p, &c.name)))
    }

    /// `netiso_common::defaults` bits of this group alone.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.egress == Action::Deny {
            flags |= defaults::DENY_EGRESS;
        }
        if self.ingress == Action::Deny {
            flags |= defaults::DENY_INGRESS;
        }
        flags
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based, in file order (files sorted by name).
    pub id: u32,
    /// A group name or a reserved peer (`world`, `host`).
    pub from: String,
    pub to: String,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<PortSpec>>,
    /// The ports as written, joined with ", " (or "any" when omitted).
    pub ports_text: String,
    pub action: Action,
    pub description: Option<String>,
    /// Where the rule starts (`[[rules]]`).
    pub location: Location,
}

impl Rule {
    /// Whether the rule's ports cover a packet of protocol `proto` to `port`.
    pub fn covers(&self, proto: u8, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|specs| specs.iter().any(|s| s.covers(proto, port)))
    }

    /// A one-line summary, e.g. `rule 3 (web -> db, 5432/tcp)`.
    pub fn summary(&self) -> String {
        format!(
            "rule {} ({} -> {}, {})",
            self.id, self.from, self.to, self.ports_text
        )
    }
}

/// A parsed and validated policy (possibly merged from several files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub settings: Settings,
    /// In file order.
    pub groups: Vec<Group>,
    /// `rules[i].id == i + 1`.
    pub rules: Vec<Rule>,
    /// Problems that do not stop the policy from loading.
    pub warnings: Vec<Diagnostic>,
    /// The files (or origins) the policy was read from, in order.
    pub sources: Vec<String>,
}

impl Policy {
    /// Names of the groups that select this container (sorted, deduplicated).
    pub fn groups_of(&self, c: &Container) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .iter()
            .filter(|g| g.selects(c))
            .map(|g| g.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get((id as usize).checked_sub(1)?)
    }
}

/// Shell-style matching where `*` stands for any run of characters; every
/// other character matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position after the last `*` and the text position it was tried at:
    // on a mismatch, let that star swallow one more character.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("web", "web"));
        assert!(!glob_match("web", "web-2"));
        assert!(glob_match("web*", "web-2"));
        assert!(glob_match("web*", "web"));
        assert!(glob_match("*-db-*", "shop-db-1"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "x"));
    }
}
