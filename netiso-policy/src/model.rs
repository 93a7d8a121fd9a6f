//! The validated policy: groups, rules and settings, each with the place it
//! was written so that later messages (warnings, `explain`) can point at it.
use std::collections::BTreeSet;
use std::net::IpAddr;

use netiso_common::{defaults, Action};

use crate::cidr::CidrPeer;
use crate::container::Container;
use crate::diagnostic::{Diagnostic, Location};
use crate::fqdn::FqdnPeer;
use crate::ports::PortSpec;
use crate::selector::Selector;

/// Peers rules may name that are not groups.
pub const WORLD: &str = "world";
pub const HOST: &str = "host";
pub const RESERVED: [&str; 2] = [WORLD, HOST];

/// Defaults for one side of traffic no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub ingress: Action,
    pub egress: Action,
}

impl Defaults {
    pub const ALLOW: Self = Self {
        ingress: Action::Allow,
        egress: Action::Allow,
    };

    /// `netiso_common::defaults` bits.
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
pub struct Settings {
    /// Defaults of containers in no group. Docker's own behaviour (allow
    /// both ways) unless set.
    pub unmanaged: Defaults,
    /// Where `unmanaged` is written, if it is.
    pub unmanaged_location: Option<Location>,
    /// Learn mode for every container veth (see [`Group::learn`]).
    pub learn: bool,
    /// Where `learn` is written, if it is.
    pub learn_location: Option<Location>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            unmanaged: Defaults::ALLOW,
            unmanaged_location: None,
            learn: false,
            learn_location: None,
        }
    }
}

/// A named set of containers, and its defaults for traffic no rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Which containers are in the group.
    pub selector: Selector,
    pub ingress: Action,
    pub egress: Action,
    /// A new container of the group is held with no connectivity until the
    /// daemon has classified it.
    pub fail_closed: bool,
    /// Learn mode: every new flow a container of the group lets through
    /// (either direction) is recorded for `netiso policy suggest`. Verdicts
    /// do not change.
    pub learn: bool,
    /// Where the group's name is written (`[groups.NAME]`).
    pub location: Location,
}

impl Group {
    /// Whether the group's selector matches the container.
    pub fn selects(&self, c: &Container) -> bool {
        self.selector.selects(c)
    }

    pub fn defaults(&self) -> Defaults {
        Defaults {
            ingress: self.ingress,
            egress: self.egress,
        }
    }

    /// `netiso_common::defaults` bits of this group alone.
    pub fn flags(&self) -> u32 {
        self.defaults().flags()
    }
}

/// One side of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Group(String),
    World,
    Host,
    /// Address blocks; part of the world (a rule naming `world` applies to
    /// them too).
    Cidr(CidrPeer),
    /// Names (`fqdn = …`): the addresses a container learned for them from
    /// DNS answers it received, while they last; part of the world too.
    Fqdn(FqdnPeer),
}

impl Peer {
    /// The name peers are matched by (see `eval::evaluate`).
    pub fn name(&self) -> &str {
        match self {
            Self::Group(g) => g,
            Self::World => WORLD,
            Self::Host => HOST,
            Self::Cidr(c) => &c.name,
            Self::Fqdn(f) => &f.name,
        }
    }

    /// Whether the peer can be a container (a group), as opposed to an
    /// address outside every container.
    pub fn is_container(&self) -> bool {
        matches!(self, Self::Group(_))
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based, in file order (files sorted by name).
    pub id: u32,
    pub from: Peer,
    pub to: Peer,
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

    /// Whether the rule applies to a packet between peers known by these
    /// names (see `eval::evaluate`).
    pub fn matches(&self, src: &[String], dst: &[String], proto: u8, port: u16) -> bool {
        let has = |names: &[String], peer: &Peer| names.iter().any(|n| n == peer.name());
        has(src, &self.from) && has(dst, &self.to) && self.covers(proto, port)
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

    /// Whether the container's new flows are recorded (learn mode): `[settings]
    /// learn`, or `learn` in one of its groups.
    pub fn learns(&self, c: &Container) -> bool {
        self.settings.learn || self.groups.iter().any(|g| g.learn && g.selects(c))
    }

    /// Every distinct peer by name the rules use, in rule order.
    pub fn fqdn_peers(&self) -> Vec<&FqdnPeer> {
        let mut out: Vec<&FqdnPeer> = Vec::new();
        for r in &self.rules {
            if let Peer::Fqdn(f) = &r.to {
                if !out.iter().any(|o| o.name == f.name) {
                    out.push(f);
                }
            }
        }
        out
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get((id as usize).checked_sub(1)?)
    }

    /// Every distinct address-block peer the rules name, in rule order.
    pub fn cidr_peers(&self) -> Vec<&CidrPeer> {
        let mut seen = BTreeSet::new();
        self.rules
            .iter()
            .flat_map(|r| [&r.from, &r.to])
            .filter_map(|p| match p {
                Peer::Cidr(c) => seen.insert(c.name.as_str()).then_some(c),
                _ => None,
            })
            .collect()
    }

    /// The peer names of an address that is not a container (nor the
    /// host): `world`, plus every address-block peer it belongs to. This
    /// is the reference the kernel's CIDR trie must agree with.
    pub fn names_of_address(&self, ip: IpAddr) -> Vec<String> {
        let mut names = vec![WORLD.to_string()];
        names.extend(
            self.cidr_peers()
                .into_iter()
                .filter(|p| p.contains(ip))
                .map(|p| p.name.clone()),
        );
        names
    }

    /// Docker networks whose new containers the daemon must hold closed
    /// until classified: the networks of every `fail_closed` group (each
    /// such group is required to name at least one).
    pub fn fail_closed_networks(&self) -> BTreeSet<String> {
        self.groups
            .iter()
            .filter(|g| g.fail_closed)
            .filter_map(|g| g.selector.required_networks())
            .flatten()
            .collect()
    }
}
