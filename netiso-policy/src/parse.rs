//! From TOML text to a validated [`Policy`].
//!
//! The files are walked as a span-carrying TOML tree (`toml_edit`) rather
//! than deserialized with serde: serde stops at the first unknown key or
//! wrong type, and we want to report every problem in one go, each with its
//! exact place.
use std::collections::BTreeMap;
use std::ops::Range;

use netiso_common::Action;
use toml_edit::{ImDocument, Item, Key, Value};

use crate::cidr::{Cidr, CidrPeer};
use crate::diagnostic::{did_you_mean, Diagnostic, Kind, Location, PolicyError, SourceFile};
use crate::fqdn::{self, FqdnPeer};
use crate::lint;
use crate::model::{Defaults, Group, Peer, Policy, Rule, Settings, HOST, RESERVED, WORLD};
use crate::ports::{parse_port, PortSpec};
use crate::selector::{LabelMatch, LabelTest, Selector, COMPOSE_PROJECT, COMPOSE_SERVICE};

const ROOT_KEYS: &[&str] = &["settings", "groups", "rules"];
const SETTINGS_KEYS: &[&str] = &["unmanaged", "learn"];
const UNMANAGED_KEYS: &[&str] = &["ingress", "egress"];
/// Criteria a selector (a group, or an entry of `all` / `any`) may give.
const SELECTOR_KEYS: &[&str] = &[
    "network", "labels", "compose", "swarm", "names", "image", "all", "any",
];
const GROUP_KEYS: &[&str] = &[
    "network",
    "labels",
    "compose",
    "swarm",
    "names",
    "image",
    "all",
    "any",
    "ingress",
    "egress",
    "fail_closed",
    "learn",
];
const COMPOSE_KEYS: &[&str] = &["project", "service"];
const SWARM_KEYS: &[&str] = &["service", "stack"];
const RULE_KEYS: &[&str] = &["from", "to", "ports", "action", "description"];
const CIDR_PEER_KEYS: &[&str] = &["cidr", "except", "fqdn"];

/// A value and where it was written.
struct Sp<T> {
    value: T,
    loc: Location,
}

/// A rule peer as written, before group names are checked.
enum RawPeer {
    /// A group name, `world` or `host`.
    Named(String),
    Cidr(CidrPeer),
    Fqdn(FqdnPeer),
}

/// A rule as read from one file, before group names are checked.
struct RawRule {
    id: u32,
    from: Option<Sp<RawPeer>>,
    to: Option<Sp<RawPeer>>,
    ports: Option<Vec<PortSpec>>,
    ports_text: String,
    action: Option<Action>,
    description: Option<String>,
    location: Location,
    /// Keys written in the rule, right or wrong: a key that is present but
    /// wrong already has its error, so it is not also reported missing.
    present: Vec<&'static str>,
    /// Some key had an error; the rule is checked but never built.
    broken: bool,
}

#[derive(Default)]
struct FileModel {
    settings: Option<Settings>,
    groups: Vec<Group>,
    rules: Vec<RawRule>,
}

/// Parses one policy text. `origin` names it in messages (usually its path).
pub fn parse_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    parse_sources(&[SourceFile::new(origin, text)], Vec::new())
}

/// Parses and validates several files as one policy.
pub(crate) fn parse_sources(
    sources: &[SourceFile],
    mut diags: Vec<Diagnostic>,
) -> Result<Policy, PolicyError> {
    let mut next_rule_id = 1;
    let mut syntax_failed = false;
    let mut files = Vec::new();
    for src in sources {
        match ImDocument::parse(src.text.as_str()) {
            Ok(doc) => {
                let mut walker = Walker {
                    src,
                    diags: &mut diags,
                    next_rule_id,
                };
                let model = walker.file(doc.as_item());
                next_rule_id = walker.next_rule_id;
                files.push(model);
            }
            Err(e) => {
                syntax_failed = true;
                diags.push(syntax_error(src, &e));
            }
        }
    }

    let mut policy = Policy {
        sources: sources.iter().map(|s| s.name.clone()).collect(),
        ..Policy::default()
    };
    let mut raw_rules = Vec::new();
    let mut seen: BTreeMap<String, Location> = BTreeMap::new();
    for file in files {
        if let Some(settings) = file.settings {
            let twice = |name: &str, first: &Location, again: &Location| {
                Diagnostic::error(
                    Kind::DuplicateSetting,
                    format!("\"{name}\" is set in two places"),
                )
                .at(again.clone())
                .label("set again here")
                .note("first set here", Some(first.clone()))
                .help("settings are shared by all policy files: keep one of them")
            };
            let merged = &mut policy.settings;
            match (&merged.unmanaged_location, &settings.unmanaged_location) {
                (Some(first), Some(again)) => diags.push(twice("unmanaged", first, again)),
                (_, Some(_)) => {
                    merged.unmanaged = settings.unmanaged;
                    merged.unmanaged_location = settings.unmanaged_location.clone();
                }
                _ => {}
            }
            match (&merged.learn_location, &settings.learn_location) {
                (Some(first), Some(again)) => diags.push(twice("learn", first, again)),
                (_, Some(_)) => {
                    merged.learn = settings.learn;
                    merged.learn_location = settings.learn_location;
                }
                _ => {}
            }
        }
        for group in file.groups {
            if let Some(first) = seen.get(&group.name) {
                diags.push(
                    Diagnostic::error(
                        Kind::DuplicateGroup,
                        format!("group \"{}\" is defined twice", group.name),
                    )
                    .at(group.location.clone())
                    .label("defined again here")
                    .note("first defined here", Some(first.clone()))
                    .help(
                        "group names are shared by all policy files: \
                         rename one of them or merge the two definitions",
                    ),
                );
                continue;
            }
            seen.insert(group.name.clone(), group.location.clone());
            policy.groups.push(group);
        }
        raw_rules.extend(file.rules);
    }

    let group_names: Vec<&str> = policy.groups.iter().map(|g| g.name.as_str()).collect();
    let mut rules = Vec::new();
    for raw in raw_rules {
        let mut complete = !raw.broken;
        let mut peers = Vec::new();
        for (peer, key) in [(raw.from, "from"), (raw.to, "to")] {
            let Some(peer) = peer else {
                complete = false;
                if raw.present.contains(&key) {
                    continue;
                }
                diags.push(
                    Diagnostic::error(
                        Kind::MissingKey,
                        format!("rule {} has no \"{key}\"", raw.id),
                    )
                    .at(raw.location.clone())
                    .label(format!("\"{key}\" is missing"))
                    .help(format!(
                        "add `{key} = \"GROUP\"`, naming a group, \"world\", \"host\" or an address block"
                    )),
                );
                continue;
            };
            let name = match peer.value {
                RawPeer::Cidr(c) => {
                    peers.push(Peer::Cidr(c));
                    continue;
                }
                RawPeer::Fqdn(_) if key == "from" => {
                    complete = false;
                    diags.push(
                        Diagnostic::error(
                            Kind::BadFqdn,
                            format!("rule {}: a name can only be a destination", raw.id),
                        )
                        .at(peer.loc)
                        .label("`fqdn` in \"from\"")
                        .help(
                            "netiso learns a name's addresses from the DNS answers a container \
                             receives, so names work in \"to\"; for traffic coming in, name \
                             address blocks",
                        ),
                    );
                    continue;
                }
                RawPeer::Fqdn(f) => {
                    peers.push(Peer::Fqdn(f));
                    continue;
                }
                RawPeer::Named(name) => name,
            };
            match name.as_str() {
                WORLD => peers.push(Peer::World),
                HOST => peers.push(Peer::Host),
                n if group_names.contains(&n) => peers.push(Peer::Group(name)),
                // After a syntax error some groups are unknown to us:
                // reporting their names as unknown would only add noise.
                _ if syntax_failed => complete = false,
                _ => {
                    complete = false;
                    diags.push(unknown_group(&name, &group_names, raw.id, key, peer.loc));
                }
            }
        }
        if raw.action.is_none() && !raw.present.contains(&"action") {
            complete = false;
            diags.push(
                Diagnostic::error(
                    Kind::MissingKey,
                    format!("rule {} has no \"action\"", raw.id),
                )
                .at(raw.location.clone())
                .label("\"action\" is missing")
                .help("add `action = \"allow\"`, `action = \"deny\"` or `action = \"audit\"`"),
            );
        }
        if let (true, [from, Peer::Fqdn(_)], Some(action)) = (complete, &peers[..], raw.action) {
            let problem = if !matches!(from, Peer::Group(_)) {
                Some((
                    format!("rule {}: a name needs a group on the \"from\" side", raw.id),
                    "the addresses behind a name are learned per container, from the answers \
                     it receives: name the group whose containers resolve it",
                ))
            } else if action == Action::Deny {
                Some((
                    format!("rule {}: a name cannot be denied", raw.id),
                    "a container can reach an address without asking DNS, and then the name \
                     is unknown: deny by default (`egress = \"deny\"`) and allow names",
                ))
            } else {
                None
            };
            if let Some((message, help)) = problem {
                complete = false;
                diags.push(
                    Diagnostic::error(Kind::BadFqdn, message)
                        .at(raw.location.clone())
                        .label("this rule")
                        .help(help),
                );
            }
        }
        if let (true, [from, to], Some(action)) = (complete, &peers[..], raw.action) {
            debug_assert!(!raw.broken);
            rules.push(Rule {
                id: raw.id,
                from: from.clone(),
                to: to.clone(),
                ports: raw.ports,
                ports_text: raw.ports_text,
                action,
                description: raw.description,
                location: raw.location,
            });
        }
    }
    policy.rules = rules;

    if diags.iter().any(Diagnostic::is_error) {
        // Report in reading order, whichever check found the problem.
        let order = |d: &Diagnostic| {
            d.location.as_ref().map(|l| {
                let file = sources.iter().position(|s| s.name == l.file);
                (file, l.line, l.column)
            })
        };
        diags.sort_by_key(order);
        return Err(PolicyError::new(diags));
    }
    policy.warnings = diags;
    policy.warnings.extend(lint::warnings(&policy));
    Ok(policy)
}

fn syntax_error(src: &SourceFile, e: &toml_edit::TomlError) -> Diagnostic {
    let mut lines = e.message().lines();
    let first = lines.next().unwrap_or("invalid TOML");
    let rest: Vec<&str> = lines.collect();
    let mut d = Diagnostic::error(Kind::Syntax, format!("invalid TOML: {first}"));
    if let Some(span) = e.span() {
        d = d.at(src.location(span));
    }
    if !rest.is_empty() {
        d = d.label(rest.join("; "));
    }
    if e.message().contains("duplicate key") {
        d = d.help("each table and key may appear only once in a file");
    }
    d
}

fn unknown_group(name: &str, groups: &[&str], rule: u32, key: &str, at: Location) -> Diagnostic {
    let candidates = groups.iter().copied().chain(RESERVED);
    let help = match did_you_mean(name, candidates) {
        Some(s) => format!("did you mean \"{s}\"?"),
        None if groups.is_empty() => "no group is defined; add a [groups.NAME] table, \
                                      or use \"world\", \"host\" or an address block"
            .to_string(),
        None => format!(
            "defined groups: {}; reserved peers: \"world\", \"host\"",
            quoted_list(groups)
        ),
    };
    Diagnostic::error(
        Kind::UnknownGroup,
        format!("unknown group \"{name}\" in rule {rule} \"{key}\""),
    )
    .at(at)
    .label("no group has this name")
    .help(help)
}

/// Whether a peer written as a string means an address block: it parses
/// as one, or it is digits, dots and a slash (a block with a typo).
pub(crate) fn looks_like_cidr(s: &str) -> bool {
    Cidr::parse(s).is_ok()
        || (s.contains('/') && s.chars().next().is_some_and(|c| c.is_ascii_digit()))
        || (s.contains(':')
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() || ":./".contains(c)))
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entries of a table, standard or inline, with their keys (for spans).
fn entries(item: &Item) -> Option<Vec<(&Key, &Item)>> {
    match item {
        Item::Table(t) => Some(t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect()),
        Item::Value(Value::InlineTable(t)) => {
            Some(t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect())
        }
        _ => None,
    }
}

fn span_of(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        other => other.span(),
    }
}

fn a_or_an(type_name: &str) -> &'static str {
    match type_name.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

/// Walks one file's TOML tree, collecting every problem it finds.
struct Walker<'a> {
    src: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
    next_rule_id: u32,
}

impl Walker<'_> {
    fn loc(&self, span: Option<Range<usize>>) -> Location {
        self.src.location(span.unwrap_or(0..0))
    }

    fn key_loc(&self, key: &Key) -> Location {
        self.loc(key.span())
    }

    /// The value's own place, or its key's when the value has none (tables
    /// that only exist through dotted headers).
    fn item_loc(&self, key: &Key, item: &Item) -> Location {
        self.loc(span_of(item).or_else(|| key.span()))
    }

    fn unknown_key(&mut self, key: &Key, allowed: &[&str], context: &str) {
        let name = key.get();
        let help = match did_you_mean(name, allowed.iter().copied()) {
            Some(s) => format!("did you mean \"{s}\"?"),
            None => format!("valid keys here: {}", allowed.join(", ")),
        };
        self.diags.push(
            Diagnostic::error(
                Kind::UnknownKey,
                format!("unknown key \"{name}\" {context}"),
            )
            .at(self.key_loc(key))
            .label("not recognised")
            .help(help),
        );
    }

    fn wrong_type(&mut self, key: &Key, item: &Item, expected: &str, help: Option<String>) {
        let found = item.type_name();
        let mut d = Diagnostic::error(
            Kind::BadValue,
            format!("\"{}\" must be {expected}", key.get()),
        )
        .at(self.item_loc(key, item))
        .label(format!("found {} {found}", a_or_an(found)));
        if let Some(help) = help {
            d = d.help(help);
        }
        self.diags.push(d);
    }

    fn string(&mut self, key: &Key, item: &Item) -> Option<Sp<String>> {
        match item {
            Item::Value(Value::String(s)) => Some(Sp {
                value: s.value().clone(),
                loc: self.item_loc(key, item),
            }),
            _ => {
                self.wrong_type(key, item, "a string", None);
                None
            }
        }
    }

    /// `allow` / `deny`, or also `audit` where `audit_ok`.
    fn action(&mut self, key: &Key, item: &Item, audit_ok: bool) -> Option<Action> {
        let s = self.string(key, item)?;
        match s.value.as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "audit" if audit_ok => Some(Action::Audit),
            "audit" => {
                self.diags.push(
                    Diagnostic::error(
                        Kind::BadValue,
                        format!("\"{}\" cannot be \"audit\"", key.get()),
                    )
                    .at(s.loc)
                    .label("defaults are \"allow\" or \"deny\"")
                    .help(
                        "audit is a rule action: keep this default at \"allow\" and add a rule \
                         with action = \"audit\" for the traffic to watch",
                    ),
                );
                None
            }
            other => {
                let words: &[&str] = if audit_ok {
                    &["allow", "deny", "audit"]
                } else {
                    &["allow", "deny"]
                };
                let help = match did_you_mean(other, words.iter().copied()) {
                    Some(g) => format!("did you mean \"{g}\"?"),
                    None => format!("write {}", quoted_or(words)),
                };
                self.diags.push(
                    Diagnostic::error(
                        Kind::BadValue,
                        format!("\"{}\" must be {}", key.get(), quoted_or(words)),
                    )
                    .at(s.loc)
                    .label(format!("found \"{other}\""))
                    .help(help),
                );
                None
            }
        }
    }

    fn boolean(&mut self, key: &Key, item: &Item) -> Option<bool> {
        match item {
            Item::Value(Value::Boolean(b)) => Some(*b.value()),
            _ => {
                self.wrong_type(
                    key,
                    item,
                    "true or false",
                    Some(format!("write it as {} = true", key.get())),
                );
                None
            }
        }
    }

    /// An array of strings, each with its place.
    fn strings(&mut self, key: &Key, item: &Item, example: &str) -> Option<Vec<Sp<String>>> {
        let Item::Value(Value::Array(arr)) = item else {
            self.wrong_type(
                key,
                item,
                "an array of strings",
                Some(format!("write it as {} = {example}", key.get())),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in arr.iter() {
            match v {
                Value::String(s) => out.push(Sp {
                    value: s.value().clone(),
                    loc: self.loc(v.span()),
                }),
                other => {
                    ok = false;
                    let found = other.type_name();
                    self.diags.push(
                        Diagnostic::error(
                            Kind::BadValue,
                            format!("every entry of \"{}\" must be a string", key.get()),
                        )
                        .at(self.loc(v.span()))
                        .label(format!("found {} {found}", a_or_an(found)))
                        .help(format!("write it as {} = {example}", key.get())),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A string, or a non-empty array of strings (one of which must match).
    fn one_or_more(&mut self, key: &Key, item: &Item, example: &str) -> Option<Vec<Sp<String>>> {
        let list = match item {
            Item::Value(Value::String(_)) => vec![self.string(key, item)?],
            Item::Value(Value::Array(_)) => self.strings(key, item, example)?,
            _ => {
                self.wrong_type(
                    key,
                    item,
                    "a string or an array of strings",
                    Some(format!("write it as {} = {example}", key.get())),
                );
                return None;
            }
        };
        if list.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::BadValue, format!("\"{}\" is empty", key.get()))
                    .at(self.item_loc(key, item))
                    .label("this would select no container")
                    .help(format!(
                        "list at least one, as in {} = {example}, or remove `{}`",
                        key.get(),
                        key.get()
                    )),
            );
            return None;
        }
        let mut ok = true;
        for s in &list {
            if s.value.is_empty() {
                ok = false;
                self.diags.push(
                    Diagnostic::error(
                        Kind::BadValue,
                        format!("an empty string in \"{}\"", key.get()),
                    )
                    .at(s.loc.clone())
                    .label("matches nothing")
                    .help(format!("write it as {} = {example}", key.get())),
                );
            }
        }
        ok.then_some(list)
    }

    fn file(&mut self, root: &Item) -> FileModel {
        let mut model = FileModel::default();
        for (key, item) in entries(root).unwrap_or_default() {
            match key.get() {
                "settings" => model.settings = self.settings(key, item),
                "groups" => self.groups(key, item, &mut model.groups),
                "rules" => self.rules(key, item, &mut model.rules),
                _ => self.unknown_key(key, ROOT_KEYS, "at the top level"),
            }
        }
        model
    }

    fn settings(&mut self, key: &Key, item: &Item) -> Option<Settings> {
        let Some(body) = entries(item) else {
            self.wrong_type(key, item, "a table", Some("write it as [settings]".into()));
            return None;
        };
        let mut settings = Settings::default();
        for (k, v) in body {
            match k.get() {
                "unmanaged" => {
                    if let Some(d) = self.unmanaged(k, v) {
                        settings.unmanaged = d;
                        settings.unmanaged_location = Some(self.key_loc(k));
                    }
                }
                "learn" => {
                    if let Some(b) = self.boolean(k, v) {
                        settings.learn = b;
                        settings.learn_location = Some(self.key_loc(k));
                    }
                }
                _ => self.unknown_key(k, SETTINGS_KEYS, "in [settings]"),
            }
        }
        Some(settings)
    }

    /// `unmanaged = "allow" | "deny"` (both directions), or
    /// `unmanaged = { ingress = "...", egress = "..." }`.
    fn unmanaged(&mut self, key: &Key, item: &Item) -> Option<Defaults> {
        if let Item::Value(Value::String(_)) = item {
            let a = self.action(key, item, false)?;
            return Some(Defaults {
                ingress: a,
                egress: a,
            });
        }
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "\"allow\", \"deny\" or a table",
                Some("write it as unmanaged = { ingress = \"deny\", egress = \"allow\" }".into()),
            );
            return None;
        };
        let mut d = Defaults::ALLOW;
        let mut ok = true;
        for (k, v) in body {
            match k.get() {
                "ingress" => match self.action(k, v, false) {
                    Some(a) => d.ingress = a,
                    None => ok = false,
                },
                "egress" => match self.action(k, v, false) {
                    Some(a) => d.egress = a,
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.unknown_key(k, UNMANAGED_KEYS, "in \"unmanaged\"");
                }
            }
        }
        ok.then_some(d)
    }

    fn groups(&mut self, key: &Key, item: &Item, out: &mut Vec<Group>) {
        let Some(groups) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a table of groups",
                Some("write each group as [groups.NAME] followed by its keys".into()),
            );
            return;
        };
        for (name_key, body) in groups {
            if let Some(group) = self.group(name_key, body) {
                out.push(group);
            }
        }
    }

    fn group(&mut self, name_key: &Key, item: &Item) -> Option<Group> {
        let name = name_key.get().to_string();
        let location = self.key_loc(name_key);
        let mut ok = true;
        if RESERVED.contains(&name.as_str()) {
            ok = false;
            self.diags.push(
                Diagnostic::error(
                    Kind::ReservedName,
                    format!("\"{name}\" is reserved and cannot be a group name"),
                )
                .at(location.clone())
                .label("reserved peer")
                .help(format!(
                    "rules can name \"{name}\" directly as a peer; pick another name for this group"
                )),
            );
        } else if name.trim().is_empty() {
            ok = false;
            self.diags.push(
                Diagnostic::error(Kind::BadValue, "a group name cannot be empty")
                    .at(location.clone())
                    .label("empty name"),
            );
        } else if name.contains(':') || name.chars().any(char::is_control) || name != name.trim() {
            ok = false;
            self.diags.push(
                Diagnostic::error(
                    Kind::ReservedName,
                    format!("group name {name:?} cannot be used"),
                )
                .at(location.clone())
                .label("`:`, control characters and surrounding spaces are not allowed")
                .help(
                    "rules name peers by name (`fqdn:…`) and addresses with `:`: give the group \
                     a plain name, like \"payments\"",
                ),
            );
        } else if looks_like_cidr(&name) {
            ok = false;
            self.diags.push(
                Diagnostic::error(
                    Kind::ReservedName,
                    format!("group name \"{name}\" looks like an address block"),
                )
                .at(location.clone())
                .label("rules would read this as addresses")
                .help("give the group a name that is not an address, like \"office-net\""),
            );
        }
        let Some(body) = entries(item) else {
            self.wrong_type(
                name_key,
                item,
                "a table",
                Some(format!("write it as [groups.{name}] followed by its keys")),
            );
            return None;
        };
        let context = format!("in group \"{name}\"");
        let mut group = Group {
            name: name.clone(),
            selector: Selector::new(location.clone()),
            ingress: Action::Allow,
            egress: Action::Allow,
            fail_closed: false,
            learn: false,
            location: location.clone(),
        };
        let mut selector_body = Vec::new();
        let mut fail_closed_at = None;
        for (k, v) in body {
            match k.get() {
                "ingress" => match self.action(k, v, false) {
                    Some(a) => group.ingress = a,
                    None => ok = false,
                },
                "egress" => match self.action(k, v, false) {
                    Some(a) => group.egress = a,
                    None => ok = false,
                },
                "learn" => match self.boolean(k, v) {
                    Some(b) => group.learn = b,
                    None => ok = false,
                },
                "fail_closed" => match self.boolean(k, v) {
                    Some(b) => {
                        group.fail_closed = b;
                        fail_closed_at = Some(self.item_loc(k, v));
                    }
                    None => ok = false,
                },
                _ => selector_body.push((k, v)),
            }
        }
        ok &= self.selector_into(&mut group.selector, selector_body, GROUP_KEYS, &context);
        // Only when the body read cleanly: a misspelt `network` should not
        // also produce "empty selector".
        if ok && group.selector.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    Kind::EmptySelector,
                    format!("group \"{name}\" selects nothing"),
                )
                .at(location.clone())
                .label("no network, labels, compose, names, image, all or any")
                .help(
                    "add at least one of `network = \"NET\"`, `labels = { KEY = \"VALUE\" }`, \
                     `compose = { project = \"P\" }`, `names = [\"NAME\"]`, `image = \"IMAGE\"`",
                ),
            );
        }
        if let (true, Some(at)) = (group.fail_closed, fail_closed_at) {
            if group.selector.required_networks().is_none() {
                self.diags.push(
                    Diagnostic::error(
                        Kind::FailClosedNetwork,
                        format!("fail-closed group \"{name}\" names no network"),
                    )
                    .at(at)
                    .label("needs `network` in the group")
                    .help(
                        "when a container starts, netiso sees its veth and the veth's network \
                         before it knows the container's labels or name; add \
                         `network = \"NET\"` so that new containers on that network can be held \
                         closed until they are classified",
                    ),
                );
            }
        }
        // A group with errors is still returned so that rules naming it do
        // not also report "unknown group"; the errors stop the load anyway.
        Some(group)
    }

    /// Reads selector criteria into `sel`. Returns false if any had an error.
    fn selector_into(
        &mut self,
        sel: &mut Selector,
        body: Vec<(&Key, &Item)>,
        allowed: &[&str],
        context: &str,
    ) -> bool {
        let mut ok = true;
        for (k, v) in body {
            match k.get() {
                "network" => match self.one_or_more(k, v, "\"shop\"") {
                    Some(list) => sel.networks = list.into_iter().map(|s| s.value).collect(),
                    None => ok = false,
                },
                "labels" => match self.labels(k, v) {
                    Some(labels) => sel.labels.extend(labels),
                    None => ok = false,
                },
                "compose" => match self.compose(k, v) {
                    Some(labels) => sel.labels.extend(labels),
                    None => ok = false,
                },
                "swarm" => match self.swarm(k, v) {
                    Some(labels) => sel.labels.extend(labels),
                    None => ok = false,
                },
                "names" => match self.one_or_more(k, v, "[\"web\", \"web-*\"]") {
                    Some(list) => {
                        sel.names = list.into_iter().map(|s| s.value).collect();
                        sel.names_location = Some(self.key_loc(k));
                    }
                    None => ok = false,
                },
                "image" => match self.one_or_more(k, v, "\"postgres:*\"") {
                    Some(list) => {
                        sel.images = list.into_iter().map(|s| s.value).collect();
                        sel.images_location = Some(self.key_loc(k));
                    }
                    None => ok = false,
                },
                "all" => match self.selector_list(k, v) {
                    Some(list) => sel.all = list,
                    None => ok = false,
                },
                "any" => match self.selector_list(k, v) {
                    Some(list) => sel.any = list,
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.unknown_key(k, allowed, context);
                }
            }
        }
        ok
    }

    /// `all = [ { ... }, { ... } ]` or `[[groups.NAME.any]]` tables.
    fn selector_list(&mut self, key: &Key, item: &Item) -> Option<Vec<Selector>> {
        let mut tables: Vec<(Vec<(&Key, &Item)>, Location)> = Vec::new();
        let mut ok = true;
        match item {
            Item::ArrayOfTables(arr) => {
                for t in arr.iter() {
                    let body = t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect();
                    tables.push((body, self.loc(t.span().or_else(|| key.span()))));
                }
            }
            Item::Value(Value::Array(arr)) => {
                for v in arr.iter() {
                    let loc = self.loc(v.span());
                    match v {
                        Value::InlineTable(t) => {
                            let body = t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect();
                            tables.push((body, loc));
                        }
                        other => {
                            ok = false;
                            let found = other.type_name();
                            self.diags.push(
                                Diagnostic::error(
                                    Kind::BadValue,
                                    format!("every entry of \"{}\" must be a table", key.get()),
                                )
                                .at(loc)
                                .label(format!("found {} {found}", a_or_an(found)))
                                .help(format!(
                                    "write it as {} = [{{ network = \"a\" }}, {{ labels = {{ app = \"b\" }} }}]",
                                    key.get()
                                )),
                            );
                        }
                    }
                }
            }
            _ => {
                self.wrong_type(
                    key,
                    item,
                    "an array of selector tables",
                    Some(format!(
                        "write it as {} = [{{ network = \"a\" }}, {{ labels = {{ app = \"b\" }} }}]",
                        key.get()
                    )),
                );
                return None;
            }
        }
        if ok && tables.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::BadValue, format!("\"{}\" is empty", key.get()))
                    .at(self.item_loc(key, item))
                    .label("needs at least one selector table")
                    .help(format!(
                        "list at least one selector, or remove `{}`",
                        key.get()
                    )),
            );
            return None;
        }
        let context = format!("in an entry of \"{}\"", key.get());
        let mut out = Vec::new();
        for (body, loc) in tables {
            let mut sel = Selector::new(loc.clone());
            let clean = self.selector_into(&mut sel, body, SELECTOR_KEYS, &context);
            ok &= clean;
            if clean && sel.is_empty() {
                ok = false;
                self.diags.push(
                    Diagnostic::error(
                        Kind::EmptySelector,
                        format!("an entry of \"{}\" selects nothing", key.get()),
                    )
                    .at(loc)
                    .label("empty selector")
                    .help(format!("give it a criterion: {}", SELECTOR_KEYS.join(", "))),
                );
            }
            out.push(sel);
        }
        ok.then_some(out)
    }

    /// `labels = { app = "web", tier = ["a", "b"], monitored = true }`.
    fn labels(&mut self, key: &Key, item: &Item) -> Option<Vec<LabelMatch>> {
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a table",
                Some("write it as labels = { app = \"web\" }".into()),
            );
            return None;
        };
        let mut labels = Vec::new();
        let mut ok = true;
        for (k, v) in body {
            let help = format!(
                "write \"{0}\" = \"VALUE\" (equal), \"{0}\" = [\"A\", \"B\"] (one of) \
                 or \"{0}\" = true (present)",
                k.get()
            );
            let test = match v {
                Item::Value(Value::String(s)) => Some(LabelTest::Equals(s.value().clone())),
                Item::Value(Value::Boolean(b)) if *b.value() => Some(LabelTest::Exists),
                Item::Value(Value::Boolean(_)) => {
                    self.diags.push(
                        Diagnostic::error(
                            Kind::BadValue,
                            format!("label \"{}\" cannot be false", k.get()),
                        )
                        .at(self.item_loc(k, v))
                        .label("selecting by a missing label is not supported")
                        .help(
                            "select the containers you mean by what they have: another label, \
                             a name, an image or a network",
                        ),
                    );
                    None
                }
                Item::Value(Value::Array(_)) => match self.strings(k, v, "[\"a\", \"b\"]") {
                    Some(list) if list.is_empty() => {
                        self.diags.push(
                            Diagnostic::error(
                                Kind::BadValue,
                                format!("label \"{}\" has an empty list of values", k.get()),
                            )
                            .at(self.item_loc(k, v))
                            .label("no value can match")
                            .help(help.clone()),
                        );
                        None
                    }
                    Some(list) => Some(LabelTest::OneOf(
                        list.into_iter().map(|s| s.value).collect(),
                    )),
                    None => None,
                },
                _ => {
                    self.wrong_type(k, v, "a string, an array of strings or true", Some(help));
                    None
                }
            };
            match test {
                Some(test) => labels.push(LabelMatch {
                    key: k.get().to_string(),
                    test,
                    location: self.key_loc(k),
                }),
                None => ok = false,
            }
        }
        if ok && labels.is_empty() {
            // An empty `labels = {}` adds no criterion; if nothing else
            // does, the group reports "selects nothing".
        }
        ok.then_some(labels)
    }

    /// `swarm = { service = "shop_api", stack = "shop" }`: the labels
    /// Docker Swarm puts on the containers of services and stacks. On other
    /// nodes a task is known from the overlay's gossip, which names its
    /// service but not its stack: there the stack is inferred from the
    /// service's name (`<stack>_<service>`, as `docker stack deploy` names
    /// them), which a warning says.
    fn swarm(&mut self, key: &Key, item: &Item) -> Option<Vec<LabelMatch>> {
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a table",
                Some("write it as swarm = { service = \"shop_api\" } or swarm = { stack = \"shop\" }".into()),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in body {
            let label = match k.get() {
                "service" => crate::selector::SWARM_SERVICE,
                "stack" => crate::selector::STACK_NAMESPACE,
                _ => {
                    ok = false;
                    self.unknown_key(k, SWARM_KEYS, "in \"swarm\"");
                    continue;
                }
            };
            match self.one_or_more(k, v, "\"shop\"") {
                Some(list) => {
                    let mut values: Vec<String> = list.into_iter().map(|s| s.value).collect();
                    if k.get() == "stack" {
                        self.diags.push(
                            Diagnostic::warning(
                                Kind::InferredRemotely,
                                "the stack of a task on another node is inferred from its service's name",
                            )
                            .at(self.key_loc(k))
                            .label("other nodes only know the service's name (from the overlay's gossip)")
                            .help(
                                "a service named \"<stack>_<name>\" counts as in stack <stack> on the other \
                                 nodes, whoever created it; select services by name \
                                 (swarm = { service = \"shop_api\" }) to be exact",
                            ),
                        );
                    }
                    let test = if values.len() == 1 {
                        LabelTest::Equals(values.remove(0))
                    } else {
                        LabelTest::OneOf(values)
                    };
                    out.push(LabelMatch {
                        key: label.to_string(),
                        test,
                        location: self.key_loc(k),
                    });
                }
                None => ok = false,
            }
        }
        if ok && out.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::EmptySelector, "\"swarm\" is empty")
                    .at(self.item_loc(key, item))
                    .label("no service or stack")
                    .help("write swarm = { service = \"shop_api\" } and/or stack = \"shop\""),
            );
            return None;
        }
        ok.then_some(out)
    }

    /// `compose = { project = "shop", service = ["db", "cache"] }`: the
    /// labels Docker Compose puts on its containers.
    fn compose(&mut self, key: &Key, item: &Item) -> Option<Vec<LabelMatch>> {
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a table",
                Some("write it as compose = { project = \"shop\", service = \"db\" }".into()),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in body {
            let label = match k.get() {
                "project" => COMPOSE_PROJECT,
                "service" => COMPOSE_SERVICE,
                _ => {
                    ok = false;
                    self.unknown_key(k, COMPOSE_KEYS, "in \"compose\"");
                    continue;
                }
            };
            match self.one_or_more(k, v, "\"shop\"") {
                Some(list) => {
                    let mut values: Vec<String> = list.into_iter().map(|s| s.value).collect();
                    let test = if values.len() == 1 {
                        LabelTest::Equals(values.remove(0))
                    } else {
                        LabelTest::OneOf(values)
                    };
                    out.push(LabelMatch {
                        key: label.to_string(),
                        test,
                        location: self.key_loc(k),
                    });
                }
                None => ok = false,
            }
        }
        if ok && out.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::EmptySelector, "\"compose\" is empty")
                    .at(self.item_loc(key, item))
                    .label("no project or service")
                    .help("write compose = { project = \"shop\" } and/or service = \"db\""),
            );
            return None;
        }
        ok.then_some(out)
    }

    fn rules(&mut self, key: &Key, item: &Item, out: &mut Vec<RawRule>) {
        match item {
            Item::ArrayOfTables(tables) => {
                for t in tables.iter() {
                    let body = t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect();
                    let loc = self.loc(t.span().or_else(|| key.span()));
                    out.push(self.rule(body, loc));
                }
            }
            Item::Value(Value::Array(arr)) => {
                for v in arr.iter() {
                    let loc = self.loc(v.span());
                    match v {
                        Value::InlineTable(t) => {
                            let body = t.iter().filter_map(|(k, _)| t.get_key_value(k)).collect();
                            out.push(self.rule(body, loc));
                        }
                        other => {
                            let found = other.type_name();
                            self.diags.push(
                                Diagnostic::error(Kind::BadValue, "every rule must be a table")
                                    .at(loc)
                                    .label(format!("found {} {found}", a_or_an(found)))
                                    .help("write each rule under its own [[rules]] header"),
                            );
                        }
                    }
                }
            }
            _ => self.wrong_type(
                key,
                item,
                "an array of tables",
                Some("write each rule under its own [[rules]] header (two brackets)".into()),
            ),
        }
    }

    fn rule(&mut self, body: Vec<(&Key, &Item)>, location: Location) -> RawRule {
        let id = self.next_rule_id;
        self.next_rule_id += 1;
        let mut rule = RawRule {
            id,
            from: None,
            to: None,
            ports: None,
            ports_text: "any".to_string(),
            action: None,
            description: None,
            location,
            present: Vec::new(),
            broken: false,
        };
        for (k, v) in body {
            if let Some(known) = RULE_KEYS.iter().find(|n| **n == k.get()) {
                rule.present.push(known);
            }
            match k.get() {
                "from" => {
                    rule.from = self.peer(k, v);
                    rule.broken |= rule.from.is_none();
                }
                "to" => {
                    rule.to = self.peer(k, v);
                    rule.broken |= rule.to.is_none();
                }
                "ports" => match self.ports(k, v) {
                    Some((specs, text)) => {
                        rule.ports = specs;
                        rule.ports_text = text;
                    }
                    None => rule.broken = true,
                },
                "action" => {
                    rule.action = self.action(k, v, true);
                    rule.broken |= rule.action.is_none();
                }
                "description" => {
                    rule.description = self.string(k, v).map(|s| s.value);
                    rule.broken |= rule.description.is_none();
                }
                _ => {
                    rule.broken = true;
                    self.unknown_key(k, RULE_KEYS, &format!("in rule {id}"));
                }
            }
        }
        rule
    }

    /// A group name, `world`, `host`, an address block as a string, or
    /// `{ cidr = "...", except = [...] }`.
    fn peer(&mut self, key: &Key, item: &Item) -> Option<Sp<RawPeer>> {
        if let Item::Value(Value::String(_)) = item {
            let s = self.string(key, item)?;
            if !looks_like_cidr(&s.value) {
                return Some(Sp {
                    value: RawPeer::Named(s.value),
                    loc: s.loc,
                });
            }
            let cidr = self.cidr(&s)?;
            return Some(Sp {
                value: RawPeer::Cidr(CidrPeer::new(vec![cidr], Vec::new())),
                loc: s.loc,
            });
        }
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a string or a table",
                Some(format!(
                    "write it as {0} = \"GROUP\", {0} = \"198.18.0.0/15\" or \
                     {0} = {{ cidr = \"198.18.0.0/15\", except = [\"198.18.5.0/24\"] }}",
                    key.get()
                )),
            );
            return None;
        };
        let loc = self.item_loc(key, item);
        if body.iter().any(|(k, _)| k.get() == "fqdn") {
            return self.fqdn_peer(key, body, loc);
        }
        let (mut cidrs, mut except) = (Vec::new(), Vec::new());
        let mut ok = true;
        let mut except_at = Vec::new();
        for (k, v) in body {
            let out = match k.get() {
                "cidr" => &mut cidrs,
                "except" => &mut except,
                _ => {
                    ok = false;
                    self.unknown_key(k, CIDR_PEER_KEYS, &format!("in \"{}\"", key.get()));
                    continue;
                }
            };
            let is_except = k.get() == "except";
            let list = match (v, is_except) {
                // An empty `except = []` excludes nothing: fine.
                (Item::Value(Value::Array(a)), true) if a.is_empty() => Some(Vec::new()),
                _ => self.one_or_more(k, v, "\"198.18.0.0/15\""),
            };
            let Some(list) = list else {
                ok = false;
                continue;
            };
            for s in list {
                match self.cidr(&s) {
                    Some(c) => {
                        out.push(c);
                        if is_except {
                            except_at.push((c, s.loc));
                        }
                    }
                    None => ok = false,
                }
            }
        }
        if ok && cidrs.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    Kind::MissingKey,
                    format!("\"{}\" has no \"cidr\"", key.get()),
                )
                .at(loc.clone())
                .label("\"cidr\" is missing")
                .help("add cidr = \"198.18.0.0/15\" (or a list of blocks)"),
            );
            return None;
        }
        for (e, at) in &except_at {
            if cidrs
                .iter()
                .any(|c| c.covers(e) && c.prefix_len < e.prefix_len)
            {
                continue;
            }
            ok = false;
            let (label, help) = if cidrs.contains(e) {
                (
                    "this removes the whole block".to_string(),
                    format!("remove {e} from `cidr`, or except a smaller block inside it"),
                )
            } else {
                (
                    format!(
                        "not inside {}",
                        cidrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    "an exception must be a smaller block inside one of the `cidr` blocks"
                        .to_string(),
                )
            };
            self.diags.push(
                Diagnostic::error(
                    Kind::BadCidr,
                    format!("exception {e} is not a part of the block"),
                )
                .at(at.clone())
                .label(label)
                .help(help),
            );
        }
        ok.then(|| Sp {
            value: RawPeer::Cidr(CidrPeer::new(cidrs, except)),
            loc,
        })
    }

    /// `{ fqdn = "api.example.com" }` or `{ fqdn = ["a.example", "*.b.example"] }`.
    fn fqdn_peer(
        &mut self,
        key: &Key,
        body: Vec<(&Key, &Item)>,
        loc: Location,
    ) -> Option<Sp<RawPeer>> {
        let mut ok = true;
        let mut patterns = Vec::new();
        for (k, v) in body {
            if k.get() != "fqdn" {
                ok = false;
                self.diags.push(
                    Diagnostic::error(
                        Kind::UnknownKey,
                        format!(
                            "\"{}\" cannot go with \"fqdn\" in \"{}\"",
                            k.get(),
                            key.get()
                        ),
                    )
                    .at(self.key_loc(k))
                    .label("not a key of a peer by name")
                    .help("a peer is names (`fqdn`) or address blocks (`cidr`): write two rules"),
                );
                continue;
            }
            let Some(list) = self.one_or_more(k, v, "\"api.example.com\"") else {
                ok = false;
                continue;
            };
            for s in list {
                match fqdn::check_pattern(&s.value) {
                    Ok(p) => patterns.push(p),
                    Err((message, help)) => {
                        ok = false;
                        self.diags.push(
                            Diagnostic::error(Kind::BadFqdn, message)
                                .at(s.loc)
                                .label("not a DNS name or pattern")
                                .help(help),
                        );
                    }
                }
            }
        }
        if ok && patterns.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::BadFqdn, format!("\"{}\" names no name", key.get()))
                    .at(loc.clone())
                    .label("empty list")
                    .help("give at least one name: fqdn = \"api.example.com\""),
            );
            return None;
        }
        ok.then(|| Sp {
            value: RawPeer::Fqdn(FqdnPeer::new(patterns)),
            loc,
        })
    }

    fn cidr(&mut self, s: &Sp<String>) -> Option<Cidr> {
        match Cidr::parse(&s.value) {
            Ok(c) => Some(c),
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(Kind::BadCidr, e.message)
                        .at(s.loc.clone())
                        .label(e.label)
                        .help(e.help),
                );
                None
            }
        }
    }

    /// The rule's ports: `None` for every protocol and port (`"any"`).
    fn ports(&mut self, key: &Key, item: &Item) -> Option<(Option<Vec<PortSpec>>, String)> {
        let entries = self.strings(key, item, "[\"443/tcp\", \"53/udp\"]")?;
        if entries.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::BadValue, "\"ports\" is empty")
                    .at(self.item_loc(key, item))
                    .label("this would match no packet")
                    .help(
                        "list at least one port, or write [\"any\"] (or omit `ports`) to match \
                         every protocol and port",
                    ),
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut ok = true;
        let mut any_at = None;
        for e in &entries {
            if e.value.eq_ignore_ascii_case("any") {
                any_at = Some(e.loc.clone());
                continue;
            }
            match parse_port(&e.value) {
                Ok(spec) => specs.push(spec),
                Err(err) => {
                    ok = false;
                    let kind = if err.range {
                        Kind::PortRange
                    } else {
                        Kind::BadPort
                    };
                    self.diags.push(
                        Diagnostic::error(kind, err.message)
                            .at(e.loc.clone())
                            .label(err.label)
                            .help(err.help),
                    );
                }
            }
        }
        let text = entries
            .iter()
            .map(|e| e.value.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if let (Some(at), true) = (any_at.clone(), entries.len() > 1) {
            self.diags.push(
                Diagnostic::warning(
                    Kind::RedundantPort,
                    "\"any\" already covers every protocol and port",
                )
                .at(at)
                .label("the other entries add nothing")
                .help("keep only \"any\", or remove it to cover just the listed ports"),
            );
            return ok.then_some((None, text));
        }
        if any_at.is_some() {
            return ok.then_some((None, text));
        }
        ok.then_some((Some(specs), text))
    }
}

fn quoted_or(words: &[&str]) -> String {
    let q: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => q.join(""),
    }
}
