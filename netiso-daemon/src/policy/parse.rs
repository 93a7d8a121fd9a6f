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

use super::diagnostic::{did_you_mean, Diagnostic, Kind, Location, PolicyError, SourceFile};
use super::lint;
use super::model::{Group, Policy, Rule, Settings, RESERVED};
use super::ports::{parse_port, PortSpec};

const ROOT_KEYS: &[&str] = &["settings", "groups", "rules"];
const SETTINGS_KEYS: &[&str] = &["unmanaged"];
const GROUP_KEYS: &[&str] = &["network", "labels", "names", "ingress", "egress"];
const RULE_KEYS: &[&str] = &["from", "to", "ports", "action", "description"];

/// A value and where it was written.
struct Sp<T> {
    value: T,
    loc: Location,
}

/// A rule as read from one file, before group names are checked.
struct RawRule {
    id: u32,
    from: Option<Sp<String>>,
    to: Option<Sp<String>>,
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
            policy.settings = settings;
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
    for raw in raw_rules {
        let mut complete = !raw.broken;
        for (peer, key) in [(&raw.from, "from"), (&raw.to, "to")] {
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
                        "add `{key} = \"GROUP\"`, naming a group or one of \"world\", \"host\""
                    )),
                );
                continue;
            };
            let name = peer.value.as_str();
            // After a syntax error some groups are unknown to us: reporting
            // their names as unknown would only add noise.
            if syntax_failed || group_names.contains(&name) || RESERVED.contains(&name) {
                continue;
            }
            complete = false;
            let candidates = group_names.iter().copied().chain(RESERVED);
            let help = match did_you_mean(name, candidates) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None if group_names.is_empty() => {
                    "no group is defined; add a [groups.NAME] table, or use \"world\" or \"host\""
                        .to_string()
                }
                None => format!(
                    "defined groups: {}; reserved peers: \"world\", \"host\"",
                    quoted_list(&group_names)
                ),
            };
            diags.push(
                Diagnostic::error(
                    Kind::UnknownGroup,
                    format!("unknown group \"{name}\" in rule {} \"{key}\"", raw.id),
                )
                .at(peer.loc.clone())
                .label("no group has this name")
                .help(help),
            );
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
                .help("add `action = \"allow\"` or `action = \"deny\"`"),
            );
        }
        if let (true, Some(from), Some(to), Some(action)) = (complete, raw.from, raw.to, raw.action)
        {
            debug_assert!(!raw.broken);
            policy.rules.push(Rule {
                id: raw.id,
                from: from.value,
                to: to.value,
                ports: raw.ports,
                ports_text: raw.ports_text,
                action,
                description: raw.description,
                location: raw.location,
            });
        }
    }

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

    fn action(&mut self, key: &Key, item: &Item) -> Option<Action> {
        let s = self.string(key, item)?;
        match s.value.as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                let help = match did_you_mean(other, ["allow", "deny"]) {
                    Some(g) => format!("did you mean \"{g}\"?"),
                    None => "write \"allow\" or \"deny\"".to_string(),
                };
                self.diags.push(
                    Diagnostic::error(
                        Kind::BadValue,
                        format!("\"{}\" must be \"allow\" or \"deny\"", key.get()),
                    )
                    .at(s.loc)
                    .label(format!("found \"{other}\""))
                    .help(help),
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
                    let Some(s) = self.string(k, v) else {
                        continue;
                    };
                    if s.value != "allow" {
                        self.diags.push(
                            Diagnostic::error(
                                Kind::BadValue,
                                "\"unmanaged\" only accepts \"allow\" for now",
                            )
                            .at(s.loc)
                            .label(format!("found \"{}\"", s.value))
                            .help(
                                "containers in no group keep Docker's behaviour; to police \
                                 a container, put it in a group with ingress/egress = \"deny\"",
                            ),
                        );
                    }
                    settings.unmanaged = Action::Allow;
                }
                _ => self.unknown_key(k, SETTINGS_KEYS, "in [settings]"),
            }
        }
        Some(settings)
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
            network: None,
            labels: BTreeMap::new(),
            names: Vec::new(),
            ingress: Action::Allow,
            egress: Action::Allow,
            location: location.clone(),
        };
        for (k, v) in body {
            match k.get() {
                "network" => match self.string(k, v) {
                    Some(s) => group.network = Some(s.value),
                    None => ok = false,
                },
                "labels" => match self.labels(k, v) {
                    Some(labels) => group.labels = labels,
                    None => ok = false,
                },
                "names" => match self.strings(k, v, "[\"web\", \"web-*\"]") {
                    Some(names) if names.is_empty() => {
                        ok = false;
                        self.diags.push(
                            Diagnostic::error(Kind::BadValue, "\"names\" is empty")
                                .at(self.item_loc(k, v))
                                .label("this would select no container")
                                .help("list at least one container name, or remove `names`"),
                        );
                    }
                    Some(names) => group.names = names.into_iter().map(|s| s.value).collect(),
                    None => ok = false,
                },
                "ingress" => match self.action(k, v) {
                    Some(a) => group.ingress = a,
                    None => ok = false,
                },
                "egress" => match self.action(k, v) {
                    Some(a) => group.egress = a,
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.unknown_key(k, GROUP_KEYS, &context);
                }
            }
        }
        // Only when the body read cleanly: a misspelt `network` should not
        // also produce "empty selector".
        if ok && group.network.is_none() && group.labels.is_empty() && group.names.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    Kind::EmptySelector,
                    format!("group \"{name}\" selects nothing"),
                )
                .at(location)
                .label("no network, labels or names")
                .help(
                    "add at least one of `network = \"NET\"`, `labels = { KEY = \"VALUE\" }`, \
                         `names = [\"NAME\"]`",
                ),
            );
        }
        // A group with errors is still returned so that rules naming it do
        // not also report "unknown group"; the errors stop the load anyway.
        Some(group)
    }

    fn labels(&mut self, key: &Key, item: &Item) -> Option<BTreeMap<String, String>> {
        let Some(body) = entries(item) else {
            self.wrong_type(
                key,
                item,
                "a table of strings",
                Some("write it as labels = { app = \"web\" }".into()),
            );
            return None;
        };
        let mut labels = BTreeMap::new();
        let mut ok = true;
        for (k, v) in body {
            match v {
                Item::Value(Value::String(s)) => {
                    labels.insert(k.get().to_string(), s.value().clone());
                }
                _ => {
                    ok = false;
                    self.wrong_type(
                        k,
                        v,
                        "a string (label values are compared as text)",
                        Some(format!("write it as \"{}\" = \"VALUE\"", k.get())),
                    );
                }
            }
        }
        ok.then_some(labels)
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
                    rule.from = self.string(k, v);
                    rule.broken |= rule.from.is_none();
                }
                "to" => {
                    rule.to = self.string(k, v);
                    rule.broken |= rule.to.is_none();
                }
                "ports" => match self.ports(k, v) {
                    Some((specs, text)) => {
                        rule.ports = Some(specs);
                        rule.ports_text = text;
                    }
                    None => rule.broken = true,
                },
                "action" => {
                    rule.action = self.action(k, v);
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

    fn ports(&mut self, key: &Key, item: &Item) -> Option<(Vec<PortSpec>, String)> {
        let entries = self.strings(key, item, "[\"443/tcp\", \"53/udp\"]")?;
        if entries.is_empty() {
            self.diags.push(
                Diagnostic::error(Kind::BadValue, "\"ports\" is empty")
                    .at(self.item_loc(key, item))
                    .label("this would match no packet")
                    .help(
                        "list at least one port, or omit `ports` to match every protocol and port",
                    ),
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut ok = true;
        for e in &entries {
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
        ok.then_some((specs, text))
    }
}
