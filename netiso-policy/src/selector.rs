//! Which containers a group selects: Docker network, labels, compose
//! project and service, name, image, and `all` / `any` combinations.
use std::collections::{BTreeMap, BTreeSet};

use crate::container::Container;
use crate::diagnostic::Location;
use crate::glob::glob_match;

/// Docker Compose sets these labels on every container it creates.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// Docker Swarm's (the model's own: it names tasks on other nodes by them).
pub use crate::container::{STACK_NAMESPACE, SWARM_SERVICE};

/// What a label criterion asks of the label's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelTest {
    /// `key = "value"`.
    Equals(String),
    /// `key = ["a", "b"]`: one of these values.
    OneOf(Vec<String>),
    /// `key = true`: present, with any value.
    Exists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMatch {
    pub key: String,
    pub test: LabelTest,
    /// Where the criterion is written (for warnings).
    pub location: Location,
}

impl LabelMatch {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (&self.test, labels.get(&self.key)) {
            (_, None) => false,
            (LabelTest::Exists, Some(_)) => true,
            (LabelTest::Equals(want), Some(v)) => v == want,
            (LabelTest::OneOf(set), Some(v)) => set.contains(v),
        }
    }

    /// The values the label may take; `None` = any value.
    fn allowed(&self) -> Option<BTreeSet<&str>> {
        match &self.test {
            LabelTest::Exists => None,
            LabelTest::Equals(v) => Some(BTreeSet::from([v.as_str()])),
            LabelTest::OneOf(set) => Some(set.iter().map(String::as_str).collect()),
        }
    }
}

/// A set of criteria, every one of which must hold (an empty list means
/// "no constraint" for that criterion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// Attached to one of these Docker networks.
    pub networks: Vec<String>,
    /// Every label criterion holds (`compose` is sugar for labels).
    pub labels: Vec<LabelMatch>,
    /// The container name matches one of these patterns (`*` wildcards).
    pub names: Vec<String>,
    /// The image (as given to `docker run`) matches one of these patterns.
    pub images: Vec<String>,
    /// Where `names` and `image` are written (for warnings).
    pub names_location: Option<Location>,
    pub images_location: Option<Location>,
    /// Every one of these selectors matches.
    pub all: Vec<Selector>,
    /// At least one of these selectors matches (when not empty).
    pub any: Vec<Selector>,
    /// Where the selector's table starts (or the group's name).
    pub location: Location,
}

impl Selector {
    pub fn new(location: Location) -> Self {
        Self {
            networks: Vec::new(),
            labels: Vec::new(),
            names: Vec::new(),
            images: Vec::new(),
            names_location: None,
            images_location: None,
            all: Vec::new(),
            any: Vec::new(),
            location,
        }
    }

    /// No criterion at all: would select every container.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
            && self.labels.is_empty()
            && self.names.is_empty()
            && self.images.is_empty()
            && self.all.is_empty()
            && self.any.is_empty()
    }

    pub fn selects(&self, c: &Container) -> bool {
        (self.networks.is_empty()
            || c.networks
                .iter()
                .any(|a| self.networks.contains(&a.network)))
            && self.labels.iter().all(|l| l.matches(&c.labels))
            && (self.names.is_empty() || self.names.iter().any(|p| glob_match(p, &c.name)))
            && (self.images.is_empty() || self.images.iter().any(|p| glob_match(p, &c.image)))
            && self.all.iter().all(|s| s.selects(c))
            && (self.any.is_empty() || self.any.iter().any(|s| s.selects(c)))
    }

    /// Networks one of which every selected container is attached to, if
    /// the selector implies any: its own `network`, narrowed by `all`
    /// members, or the union over `any` branches when each implies some.
    pub fn required_networks(&self) -> Option<BTreeSet<String>> {
        let mut req: Option<BTreeSet<String>> =
            (!self.networks.is_empty()).then(|| self.networks.iter().cloned().collect());
        let mut narrow = |set: BTreeSet<String>| {
            req = Some(match req.take() {
                // A container may be on several networks: requiring both
                // "a" and "b" still means it is on "a", so either set is a
                // valid answer; keep the smaller one.
                Some(old) if old.len() <= set.len() => old,
                _ => set,
            });
        };
        for s in &self.all {
            if let Some(set) = s.required_networks() {
                narrow(set);
            }
        }
        if !self.any.is_empty() {
            let branches: Option<Vec<BTreeSet<String>>> =
                self.any.iter().map(Selector::required_networks).collect();
            if let Some(branches) = branches {
                narrow(branches.into_iter().flatten().collect());
            }
        }
        req
    }

    /// Why no container can ever match, if that can be seen from the text
    /// alone: a label that must take two different values, or a name or
    /// image that must equal two different strings.
    pub fn contradiction(&self) -> Option<Contradiction> {
        let mut budget = 4096usize;
        let mut facts = Facts::default();
        facts.absorb(self);
        facts.solve(&mut budget)
    }
}

/// Why a selector can never match, with the criteria that clash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contradiction {
    pub reason: String,
    pub locations: Vec<Location>,
}

/// Criteria that must all hold, plus `any` lists of which one branch each
/// must hold.
#[derive(Clone, Default)]
struct Facts<'a> {
    labels: Vec<&'a LabelMatch>,
    names: Vec<(&'a [String], &'a Location)>,
    images: Vec<(&'a [String], &'a Location)>,
    anys: Vec<&'a [Selector]>,
}

impl<'a> Facts<'a> {
    fn absorb(&mut self, s: &'a Selector) {
        self.labels.extend(&s.labels);
        if !s.names.is_empty() {
            let at = s.names_location.as_ref().unwrap_or(&s.location);
            self.names.push((&s.names, at));
        }
        if !s.images.is_empty() {
            let at = s.images_location.as_ref().unwrap_or(&s.location);
            self.images.push((&s.images, at));
        }
        for a in &s.all {
            self.absorb(a);
        }
        if !s.any.is_empty() {
            self.anys.push(&s.any);
        }
    }

    /// The first contradiction of the criteria themselves, then a search
    /// through the `any` branches (bounded: past the budget, assume the
    /// selector can match).
    fn solve(&self, budget: &mut usize) -> Option<Contradiction> {
        if let Some(c) = self.direct() {
            return Some(c);
        }
        let (first, rest) = self.anys.split_first()?;
        let mut first_reason = None;
        for branch in first.iter() {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            let mut f = self.clone();
            f.anys = rest.to_vec();
            f.absorb(branch);
            match f.solve(budget) {
                None => return None,
                Some(c) => {
                    first_reason.get_or_insert(c);
                }
            }
        }
        let c = first_reason?;
        Some(Contradiction {
            reason: format!("no branch of `any` can match ({})", c.reason),
            locations: c.locations,
        })
    }

    fn direct(&self) -> Option<Contradiction> {
        let mut by_key: BTreeMap<&str, Vec<&LabelMatch>> = BTreeMap::new();
        for l in &self.labels {
            by_key.entry(l.key.as_str()).or_default().push(l);
        }
        for (key, tests) in by_key {
            let mut allowed: Option<BTreeSet<&str>> = None;
            for t in &tests {
                if let Some(set) = t.allowed() {
                    allowed = Some(match allowed {
                        None => set,
                        Some(old) => old.intersection(&set).copied().collect(),
                    });
                }
            }
            if allowed.is_some_and(|a| a.is_empty()) {
                let values: Vec<String> = tests
                    .iter()
                    .filter_map(|t| match &t.test {
                        LabelTest::Equals(v) => Some(format!("\"{v}\"")),
                        LabelTest::OneOf(vs) => Some(format!("one of {vs:?}")),
                        LabelTest::Exists => None,
                    })
                    .collect();
                return Some(Contradiction {
                    reason: format!(
                        "label \"{key}\" would have to be {} at once",
                        values.join(" and ")
                    ),
                    locations: tests.iter().map(|t| t.location.clone()).collect(),
                });
            }
        }
        for (what, lists) in [("name", &self.names), ("image", &self.images)] {
            if let Some(c) = clash(what, lists) {
                return Some(c);
            }
        }
        None
    }
}

/// A container has one name and one image: lists of exact strings (no
/// `*`) that share nothing, or whose strings no other list's patterns
/// match, cannot all hold.
fn clash(what: &str, lists: &[(&[String], &Location)]) -> Option<Contradiction> {
    let exact: Vec<&(&[String], &Location)> = lists
        .iter()
        .filter(|(l, _)| l.iter().all(|p| !p.contains('*')))
        .collect();
    let (first, _) = exact.first()?;
    let possible = first.iter().any(|candidate| {
        lists
            .iter()
            .all(|(l, _)| l.iter().any(|p| glob_match(p, candidate)))
    });
    if possible {
        return None;
    }
    Some(Contradiction {
        reason: format!("no {what} matches every one of the {what} lists that apply"),
        locations: lists.iter().map(|(_, loc)| (*loc).clone()).collect(),
    })
}
