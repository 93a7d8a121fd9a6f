//! Tests of the language as a whole: constructs, every error's place and
//! hint, several files, and the shipped documentation and examples.
use std::collections::BTreeMap;
use std::path::Path;

use netiso_common::{proto, Action};

use super::*;
use crate::container::{Container, RemoteTask, STACK_NAMESPACE, SWARM_SERVICE};
use crate::diagnostic::Location;
use crate::ports::{overlap, PortSet};
use crate::testing::container;

fn errors(text: &str) -> String {
    match parse_str(text, "p.toml") {
        Ok(p) => panic!("expected an error, got {p:#?}"),
        Err(e) => e.to_string(),
    }
}

fn kinds(text: &str) -> Vec<Kind> {
    parse_str(text, "p.toml")
        .unwrap_err()
        .diagnostics
        .iter()
        .map(|d| d.kind)
        .collect()
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "missing {n:?} in:\n{haystack}");
    }
}

const FULL: &str = r#"
[settings]
unmanaged = "allow"

[groups.web]
network = "shop"
labels = { app = "web", tier = "front" }
names = ["web", "web-*"]
ingress = "deny"
egress = "allow"

[groups.db]
labels.app = "db"

[groups.db-admin]
names = ["pgadmin"]
egress = "deny"

[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp", "53/udp", "8000-8100/tcp", "icmp", "udp"]
action = "allow"
description = "web talks to its database"

[[rules]]
from = "world"
to = "web"
action = "allow"

[[rules]]
from = "db-admin"
to = "host"
ports = ["tcp"]
action = "deny"
"#;

#[test]
fn parses_every_construct() {
    let p = parse_str(FULL, "full.toml").unwrap();
    assert_eq!(p.settings.unmanaged, Defaults::ALLOW);
    assert_eq!(p.sources, ["full.toml"]);
    assert_eq!(p.groups.len(), 3);
    let web = &p.groups[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.selector.networks, ["shop"]);
    let labels: BTreeMap<&str, &LabelTest> = web
        .selector
        .labels
        .iter()
        .map(|l| (l.key.as_str(), &l.test))
        .collect();
    assert_eq!(
        labels,
        BTreeMap::from([
            ("app", &LabelTest::Equals("web".to_string())),
            ("tier", &LabelTest::Equals("front".to_string()))
        ])
    );
    assert_eq!(web.selector.names, ["web", "web-*"]);
    assert_eq!((web.ingress, web.egress), (Action::Deny, Action::Allow));
    assert_eq!(web.location.to_string(), "full.toml:5:9");
    let db = p.group("db").unwrap();
    assert_eq!(db.selector.labels[0].key, "app");
    assert_eq!(db.selector.labels[0].test, LabelTest::Equals("db".into()));
    assert_eq!((db.ingress, db.egress), (Action::Allow, Action::Allow));
    assert_eq!(p.group("db-admin").unwrap().egress, Action::Deny);

    assert_eq!(p.rules.len(), 3);
    let r = &p.rules[0];
    assert_eq!((r.id, r.from.name(), r.to.name()), (1, "web", "db"));
    assert_eq!(
        r.ports.as_deref(),
        Some(
            &[
                PortSpec::Range {
                    proto: Proto::Tcp,
                    lo: 5432,
                    hi: 5432
                },
                PortSpec::Range {
                    proto: Proto::Udp,
                    lo: 53,
                    hi: 53
                },
                PortSpec::Range {
                    proto: Proto::Tcp,
                    lo: 8000,
                    hi: 8100
                },
                PortSpec::Proto(Proto::Icmp),
                PortSpec::Proto(Proto::Udp),
            ][..]
        )
    );
    assert_eq!(r.ports_text, "5432/tcp, 53/udp, 8000-8100/tcp, icmp, udp");
    assert_eq!(r.action, Action::Allow);
    assert_eq!(r.description.as_deref(), Some("web talks to its database"));
    assert_eq!(r.location.to_string(), "full.toml:19:1");
    assert_eq!(p.rules[1].ports, None);
    assert_eq!(p.rules[1].ports_text, "any");
    assert_eq!((p.rules[2].id, p.rules[2].action), (3, Action::Deny));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.rule(2).unwrap().from, Peer::World);
    assert!(p.rule(0).is_none());
}

#[test]
fn inline_forms_and_empty_files_parse() {
    let p = parse_str(
        r#"
groups = { a = { names = ["a"] }, b = { network = "n", ingress = "deny" } }
rules = [ { from = "a", to = "b", action = "allow" } ]
"#,
        "inline.toml",
    )
    .unwrap();
    assert_eq!(p.groups.len(), 2);
    assert_eq!(p.rules[0].location.to_string(), "inline.toml:3:11");
    let empty = parse_str("# nothing yet\n", "empty.toml").unwrap();
    assert!(empty.groups.is_empty() && empty.rules.is_empty());
}

#[test]
fn selection_needs_every_criterion() {
    let p = parse_str(FULL, "full.toml").unwrap();
    let web = container("web-3", &[("app", "web"), ("tier", "front")], &["shop"]);
    assert_eq!(p.groups_of(&web), ["web"]);
    // Wrong network, missing label, name not listed: each one is enough.
    let c = container("web-3", &[("app", "web"), ("tier", "front")], &["other"]);
    assert!(p.groups_of(&c).is_empty());
    let c = container("web-3", &[("app", "web")], &["shop"]);
    assert!(p.groups_of(&c).is_empty());
    let c = container("api", &[("app", "web"), ("tier", "front")], &["shop"]);
    assert!(p.groups_of(&c).is_empty());
    // Several groups at once, sorted.
    let c = container("pgadmin", &[("app", "db")], &[]);
    assert_eq!(p.groups_of(&c), ["db", "db-admin"]);
}

#[test]
fn evaluation_follows_the_rules() {
    let p = parse_str(FULL, "full.toml").unwrap();
    let g = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let d = evaluate(&p, &g(&["web"]), &g(&["db"]), proto::TCP, 8100);
    assert_eq!((d.action, d.rule_id), (Action::Allow, 1));
    assert!(
        d.why.contains("full.toml:19:1: web talks to its database"),
        "{}",
        d.why
    );
    // web's ingress deny, but the world is allowed in by rule 2.
    let d = evaluate(&p, &g(&["world"]), &g(&["web"]), proto::UDP, 9);
    assert_eq!((d.action, d.rule_id), (Action::Allow, 2));
    let d = evaluate(&p, &g(&["db"]), &g(&["web"]), proto::TCP, 80);
    assert_eq!((d.action, d.rule_id), (Action::Deny, 0));
    assert!(
        d.why.contains("\"web\" has ingress = \"deny\""),
        "{}",
        d.why
    );
    let d = evaluate(&p, &g(&["db-admin"]), &g(&["host"]), proto::TCP, 22);
    assert_eq!((d.action, d.rule_id), (Action::Deny, 3));
    let d = evaluate(&p, &g(&["db-admin"]), &g(&[]), proto::UDP, 53);
    assert_eq!((d.action, d.rule_id), (Action::Deny, 0));
    let d = evaluate(&p, &g(&[]), &g(&["db"]), proto::UDP, 53);
    assert_eq!((d.action, d.rule_id), (Action::Allow, 0));
}

#[test]
fn syntax_errors_point_into_the_file() {
    let text = errors("[groups.web]\nnetwork = \n");
    assert_eq!(
        text,
        "error[syntax]: invalid TOML: invalid string\n\
         \x20--> p.toml:2:11\n\
         \x20 |\n\
         2 | network = \n\
         \x20 |           ^ expected `\"`, `'`\n\
         \n\
         error: the policy was rejected because of the error above"
    );
    let text = errors("[groups.a]\nnames = [\"a\"]\n[groups.a]\nnames = [\"b\"]\n");
    assert_contains(
        &text,
        &[
            "error[syntax]: invalid TOML: invalid table header",
            "--> p.toml:3:1",
            "duplicate key `a`",
            "= help: each table and key may appear only once in a file",
        ],
    );
}

#[test]
fn unknown_keys_suggest_the_right_one() {
    let text = errors("[groups.web]\nnetwork = \"shop\"\ningres = \"deny\"\n");
    assert_eq!(
        text,
        "error[unknown-key]: unknown key \"ingres\" in group \"web\"\n\
         \x20--> p.toml:3:1\n\
         \x20 |\n\
         3 | ingres = \"deny\"\n\
         \x20 | ^^^^^^ not recognised\n\
         \x20 |\n\
         \x20 = help: did you mean \"ingress\"?\n\
         \n\
         error: the policy was rejected because of the error above"
    );
    let text = errors("[group.web]\nnetwork = \"shop\"\n");
    assert_contains(
        &text,
        &[
            "unknown key \"group\" at the top level",
            "--> p.toml:1:2",
            "did you mean \"groups\"?",
        ],
    );
    let text =
        errors("[[rules]]\nfrom = \"world\"\nto = \"host\"\naction = \"allow\"\nwhy = \"x\"\n");
    assert_contains(
        &text,
        &[
            "unknown key \"why\" in rule 1",
            "--> p.toml:5:1",
            "valid keys here: from, to, ports, action, description",
        ],
    );
    let text = errors("[settings]\nunmanged = \"allow\"\n");
    assert_contains(&text, &["in [settings]", "did you mean \"unmanaged\"?"]);
}

#[test]
fn unknown_groups_suggest_by_edit_distance() {
    let text = errors(
        r#"[groups.web]
network = "shop"
[groups.database]
network = "shop"

[[rules]]
from = "web"
to = "databse"
action = "allow"
"#,
    );
    assert_eq!(
        text,
        "error[unknown-group]: unknown group \"databse\" in rule 1 \"to\"\n\
         \x20--> p.toml:8:6\n\
         \x20 |\n\
         8 | to = \"databse\"\n\
         \x20 |      ^^^^^^^^^ no group has this name\n\
         \x20 |\n\
         \x20 = help: did you mean \"database\"?\n\
         \n\
         error: the policy was rejected because of the error above"
    );
    let text = errors(
        "[groups.web]\nnetwork = \"n\"\n[[rules]]\nfrom = \"wrld\"\nto = \"xyz\"\naction = \"allow\"\n",
    );
    assert_contains(
        &text,
        &[
            "unknown group \"wrld\" in rule 1 \"from\"",
            "did you mean \"world\"?",
            "unknown group \"xyz\" in rule 1 \"to\"",
            "defined groups: \"web\"; reserved peers: \"world\", \"host\"",
            "because of the 2 errors above",
        ],
    );
}

#[test]
fn empty_selectors_are_errors() {
    let text = errors("[groups.web]\ningress = \"deny\"\n");
    assert_eq!(
        text,
        "error[empty-selector]: group \"web\" selects nothing\n\
         \x20--> p.toml:1:9\n\
         \x20 |\n\
         1 | [groups.web]\n\
         \x20 |         ^^^ no network, labels, compose, names, image, all or any\n\
         \x20 |\n\
         \x20 = help: add at least one of `network = \"NET\"`, `labels = { KEY = \"VALUE\" }`, \
         `compose = { project = \"P\" }`, `names = [\"NAME\"]`, `image = \"IMAGE\"`\n\
         \n\
         error: the policy was rejected because of the error above"
    );
    assert_eq!(kinds("[groups.web]\nlabels = {}\n"), [Kind::EmptySelector]);
    assert_eq!(kinds("[groups.web]\nnames = []\n"), [Kind::BadValue]);
}

#[test]
fn bad_ports_are_errors() {
    let text = errors(
        "[groups.a]\nnames = [\"a\"]\n[[rules]]\nfrom = \"a\"\nto = \"a\"\nports = [\"53/udp\", \"80/tcpp\"]\naction = \"allow\"\n",
    );
    assert_eq!(
        text,
        "error[bad-port]: bad port \"80/tcpp\"\n\
         \x20--> p.toml:6:20\n\
         \x20 |\n\
         6 | ports = [\"53/udp\", \"80/tcpp\"]\n\
         \x20 |                    ^^^^^^^^^ unknown protocol \"tcpp\"\n\
         \x20 |\n\
         \x20 = help: did you mean \"80/tcp\"? expected N/tcp, N/udp, A-B/tcp, A-B/udp, \
         tcp, udp, icmp, icmpv4, icmpv6 or any (for example \"443/tcp\")\n\
         \n\
         error: the policy was rejected because of the error above"
    );
    let rule = |ports: &str| {
        format!("[groups.a]\nnames = [\"a\"]\n[[rules]]\nfrom = \"a\"\nto = \"a\"\nports = {ports}\naction = \"allow\"\n")
    };
    let text = errors(&rule("[\"8100-8000/tcp\"]"));
    assert_contains(
        &text,
        &[
            "error[port-range]: port range \"8100-8000/tcp\" is reversed",
            "--> p.toml:6:10",
            "= help: write \"8000-8100/tcp\"",
        ],
    );
    let text = errors(&rule("[\"70000/udp\", \"0/tcp\"]"));
    assert_contains(
        &text,
        &[
            "error[port-range]: port 70000 is out of range in \"70000/udp\"",
            "--> p.toml:6:10",
            "error[port-range]: port 0 is out of range in \"0/tcp\"",
            "--> p.toml:6:23",
            "ports run from 1 to 65535",
            "the 2 errors above",
        ],
    );
    assert_eq!(kinds(&rule("[\"80\"]")), [Kind::BadPort]);
    assert_eq!(kinds(&rule("[]")), [Kind::BadValue]);
    assert_eq!(kinds(&rule("\"80/tcp\"")), [Kind::BadValue]);
    assert_eq!(kinds(&rule("[80]")), [Kind::BadValue]);
}

#[test]
fn reserved_names_cannot_be_groups() {
    let text = errors("[groups.world]\nnetwork = \"n\"\n");
    assert_contains(
        &text,
        &[
            "error[reserved-name]: \"world\" is reserved and cannot be a group name",
            "--> p.toml:1:9",
            "rules can name \"world\" directly as a peer",
        ],
    );
    assert_eq!(
        kinds("[groups.host]\nnames = [\"h\"]\n"),
        [Kind::ReservedName]
    );
}

#[test]
fn wrong_values_and_missing_keys() {
    let text = errors("[groups.a]\nnetwork = 5\negress = \"dney\"\n");
    assert_contains(
        &text,
        &[
            "error[bad-value]: \"network\" must be a string",
            "--> p.toml:2:11",
            "found an integer",
            "error[bad-value]: \"egress\" must be \"allow\" or \"deny\"",
            "--> p.toml:3:10",
            "did you mean \"deny\"?",
        ],
    );
    let text = errors("[[rules]]\nfrom = \"world\"\n");
    assert_contains(
        &text,
        &[
            "error[missing-key]: rule 1 has no \"to\"",
            "error[missing-key]: rule 1 has no \"action\"",
            "--> p.toml:1:1",
            "[[rules]]\n  | ^^^^^^^^^ \"to\" is missing",
        ],
    );
    // A wrong action is reported once, not also as missing.
    assert_eq!(
        kinds("[[rules]]\nfrom = \"world\"\nto = \"host\"\naction = \"permit\"\n"),
        [Kind::BadValue]
    );
    assert_eq!(kinds("[rules]\nfrom = \"world\"\n"), [Kind::BadValue]);
    assert_eq!(
        kinds("[settings]\nunmanaged = \"audit\"\n"),
        [Kind::BadValue]
    );
    assert_eq!(kinds("groups = 3\n"), [Kind::BadValue]);
    assert_eq!(kinds("[groups]\nweb = \"x\"\n"), [Kind::BadValue]);
    assert_eq!(
        kinds("[groups.a]\nlabels = { app = 1 }\n"),
        [Kind::BadValue]
    );
}

#[test]
fn every_error_is_reported_in_reading_order() {
    let text = r#"[groups.web]
netwrk = "shop"

[groups.db]

[[rules]]
from = "web"
to = "dbb"
ports = ["80/tcpp"]
action = "allow"
"#;
    let err = parse_str(text, "p.toml").unwrap_err();
    let got: Vec<(Kind, usize)> = err
        .diagnostics
        .iter()
        .map(|d| (d.kind, d.location.as_ref().unwrap().line))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::UnknownKey, 2),
            (Kind::EmptySelector, 4),
            (Kind::UnknownGroup, 8),
            (Kind::BadPort, 9),
        ]
    );
}

#[test]
fn warnings_for_rules_that_never_decide_and_idle_groups() {
    let text = r#"[groups.a]
names = ["a"]
[groups.b]
names = ["b"]
[groups.idle]
names = ["i"]

[[rules]]
from = "a"
to = "b"
ports = ["80/tcp", "443/tcp"]
action = "allow"

[[rules]]
from = "a"
to = "b"
ports = ["1-1000/tcp"]
action = "deny"

[[rules]]
from = "a"
to = "b"
ports = ["53/udp"]
action = "deny"

[[rules]]
from = "a"
to = "b"
ports = ["udp"]
action = "deny"

[[rules]]
from = "a"
to = "b"
ports = ["53/udp"]
action = "deny"
"#;
    let p = parse_str(text, "w.toml").unwrap();
    let rendered: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(rendered.len(), 3, "{rendered:#?}");
    assert_contains(
        &rendered[0],
        &[
            "warning[shadowed-rule]: rule 1 (a -> b, 80/tcp, 443/tcp) never decides anything",
            "--> w.toml:8:1",
            "rule 2 already denies everything it allows, and deny beats allow",
            "note: it is hidden by rule 2 (a -> b, 1-1000/tcp)",
            "--> w.toml:14:1",
        ],
    );
    assert_contains(
        &rendered[1],
        &[
            "rule 5 (a -> b, 53/udp) never decides anything",
            "earlier rules 3, 4 already decide every packet it matches",
        ],
    );
    assert_contains(
        &rendered[2],
        &[
            "warning[unused-group]: group \"idle\" has no effect",
            "--> w.toml:5:9",
        ],
    );
    assert!(p.warnings.iter().all(|w| w.severity == Severity::Warning));
}

#[test]
fn files_in_a_directory_merge_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20-rules.toml"),
        "[[rules]]\nfrom = \"web\"\nto = \"db\"\naction = \"allow\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-groups.toml"),
        "[groups.web]\nnames = [\"web\"]\n[groups.db]\nnames = [\"db\"]\ningress = \"deny\"\n\
         [[rules]]\nfrom = \"world\"\nto = \"web\"\naction = \"allow\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    let p = load_path(dir.path()).unwrap();
    assert_eq!(p.groups.len(), 2);
    assert_eq!(p.sources.len(), 2);
    assert!(p.sources[0].ends_with("10-groups.toml"));
    // Rule ids follow file order: the first file's rule is rule 1.
    assert_eq!((p.rules[0].id, p.rules[0].from.name()), (1, "world"));
    assert_eq!((p.rules[1].id, p.rules[1].from.name()), (2, "web"));
    assert!(p.rules[1].location.file.ends_with("20-rules.toml"));

    // The same file also loads on its own.
    let single = load_path(&dir.path().join("10-groups.toml")).unwrap();
    assert_eq!(single.rules.len(), 1);
}

#[test]
fn a_group_defined_in_two_files_names_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "# shop\n[groups.web]\nnames = [\"web\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[groups.web]\nnetwork = \"other\"\n",
    )
    .unwrap();
    let err = load_path(dir.path()).unwrap_err();
    let text = err.to_string();
    let a = dir.path().join("a.toml").display().to_string();
    let b = dir.path().join("b.toml").display().to_string();
    assert_eq!(err.diagnostics.len(), 1);
    assert_eq!(err.diagnostics[0].kind, Kind::DuplicateGroup);
    assert_contains(
        &text,
        &[
            "error[duplicate-group]: group \"web\" is defined twice",
            &format!("--> {b}:1:9"),
            "^^^ defined again here",
            "note: first defined here",
            &format!("--> {a}:2:9"),
            "2 | [groups.web]",
            "---",
            "rename one of them or merge the two definitions",
        ],
    );
}

#[test]
fn unreadable_inputs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_path(dir.path()).unwrap_err();
    assert_eq!(err.diagnostics[0].kind, Kind::Io);
    assert_contains(&err.to_string(), &["no policy files (*.toml) in"]);
    let err = load_path(&dir.path().join("missing.toml")).unwrap_err();
    assert_contains(
        &err.to_string(),
        &["error[io]: cannot read", "missing.toml"],
    );
    // A syntax error in one file does not turn the other's names "unknown".
    std::fs::write(dir.path().join("a.toml"), "[groups.web\n").unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[[rules]]\nfrom = \"web\"\nto = \"world\"\naction = \"allow\"\n",
    )
    .unwrap();
    let err = load_path(dir.path()).unwrap_err();
    let kinds: Vec<Kind> = err.diagnostics.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [Kind::Syntax]);
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every ```toml block of docs/policy.md is a complete, valid policy.
#[test]
fn documentation_examples_parse() {
    let blocks = doc_examples();
    assert!(blocks.len() >= 5, "only {} examples found", blocks.len());
    for (line, text) in blocks {
        let origin = format!("docs/policy.md (block at line {line})");
        match parse_str(&text, &origin) {
            Ok(p) => assert!(p.warnings.is_empty(), "{}", render(&p.warnings)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Every example policy loads cleanly.
#[test]
fn example_policies_parse() {
    let dir = workspace_root().join("policies");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            count += 1;
            match load_path(&path) {
                Ok(p) => assert!(p.warnings.is_empty(), "{}", render(&p.warnings)),
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(count >= 1, "no policies in {}", dir.display());
}

/// The README walkthrough relies on this behaviour of the default policy.
#[test]
fn default_policy_behaves_as_documented() {
    let p = load_path(&workspace_root().join("policies/default.toml")).unwrap();
    let role = |r: &str| container(r, &[("netiso.group", r)], &["bridge"]);
    let (front, back, bad) = (role("frontend"), role("backend"), role("untrusted"));
    let other = container("other", &[], &["bridge"]);
    let all = [front.clone(), back.clone(), bad.clone(), other.clone()];
    let compiled = compile(&p, &all, &mut IdentityAllocator::new()).unwrap();
    let id = |c: &Container| compiled.container_identity[&c.id];
    let verdict =
        |s: &Container, d: &Container, port| compiled.lookup(id(s), id(d), proto::TCP, port).action;
    assert_eq!(verdict(&front, &back, 8080), Action::Allow);
    assert_eq!(verdict(&front, &back, 22), Action::Deny);
    assert_eq!(verdict(&other, &back, 8080), Action::Deny);
    assert_eq!(verdict(&back, &front, 80), Action::Allow);
    assert_eq!(verdict(&bad, &front, 80), Action::Deny);
    assert_eq!(verdict(&bad, &other, 80), Action::Deny);
    assert_eq!(verdict(&other, &bad, 80), Action::Allow);
    assert_eq!(
        compiled.container_identity[&other.id],
        netiso_common::identity::UNMANAGED
    );
}

#[test]
fn restored_identities_keep_their_numbers_and_new_ones_follow() {
    let mut ids = IdentityAllocator::default();
    ids.restore(300, vec!["backend".to_string()]);
    ids.restore(2, vec!["ignored".to_string()]); // reserved numbers are never restored
    assert_eq!(ids.identity_of(&["backend".to_string()]), 300);
    assert_eq!(ids.identity_of(&["frontend".to_string()]), 301);
    assert_eq!(ids.get(&["ignored".to_string()]), None);
    assert_eq!(ids.iter().count(), 2);
}

const SELECTORS: &str = r#"
[groups.db]
labels = { app = ["postgres", "mysql"], backup = true }
image = ["postgres:*", "mysql:8"]

[groups.shop]
compose = { project = "shop", service = ["web", "api"] }

[groups.edge]
network = ["front", "dmz"]
names = "edge-*"

[groups.mixed]
all = [{ labels = { tier = "a" } }, { network = "front" }]
any = [{ names = ["x-*"] }, { image = "busybox*" }, { compose = { project = "legacy" } }]

[[groups.tables.any]]
labels = { team = "red" }

[[groups.tables.any]]
labels = { team = "blue" }
network = "front"

[[rules]]
from = "shop"
to = "db"
action = "allow"

[[rules]]
from = "edge"
to = "mixed"
action = "allow"

[[rules]]
from = "tables"
to = "edge"
action = "allow"
"#;

fn with_image(mut c: Container, image: &str) -> Container {
    c.image = image.to_string();
    c
}

#[test]
fn selectors_of_every_kind() {
    let p = parse_str(SELECTORS, "sel.toml").unwrap();
    assert!(p.warnings.is_empty(), "{}", render(&p.warnings));
    let db = p.group("db").unwrap();
    assert_eq!(
        db.selector.labels[0].test,
        LabelTest::OneOf(vec!["postgres".into(), "mysql".into()])
    );
    assert_eq!(db.selector.labels[1].test, LabelTest::Exists);
    assert_eq!(db.selector.labels[1].location.to_string(), "sel.toml:3:41");
    let shop = p.group("shop").unwrap();
    assert_eq!(shop.selector.labels[0].key, COMPOSE_PROJECT);
    assert_eq!(shop.selector.labels[1].key, COMPOSE_SERVICE);
    assert_eq!(p.group("edge").unwrap().selector.names, ["edge-*"]);
    let tables = p.group("tables").unwrap();
    assert_eq!(tables.selector.any.len(), 2);
    assert_eq!(tables.selector.any[1].location.to_string(), "sel.toml:20:1");

    // Labels: in-set and existence; image globs.
    let pg = with_image(
        container("pg", &[("app", "postgres"), ("backup", "")], &["n"]),
        "postgres:16",
    );
    assert_eq!(p.groups_of(&pg), ["db"]);
    let no_backup = with_image(
        container("pg", &[("app", "postgres")], &["n"]),
        "postgres:16",
    );
    assert!(p.groups_of(&no_backup).is_empty());
    let other_app = with_image(
        container("pg", &[("app", "redis"), ("backup", "y")], &["n"]),
        "postgres:16",
    );
    assert!(p.groups_of(&other_app).is_empty());
    let wrong_image = with_image(
        container("m", &[("app", "mysql"), ("backup", "y")], &["n"]),
        "mysql:5",
    );
    assert!(p.groups_of(&wrong_image).is_empty());
    // Compose sugar.
    let web = container(
        "shop-web-1",
        &[(COMPOSE_PROJECT, "shop"), (COMPOSE_SERVICE, "web")],
        &["shop_default"],
    );
    assert_eq!(p.groups_of(&web), ["shop"]);
    let worker = container(
        "w",
        &[(COMPOSE_PROJECT, "shop"), (COMPOSE_SERVICE, "worker")],
        &[],
    );
    assert!(p.groups_of(&worker).is_empty());
    // Network lists, name strings.
    assert_eq!(p.groups_of(&container("edge-1", &[], &["dmz"])), ["edge"]);
    assert!(p.groups_of(&container("edge-1", &[], &["back"])).is_empty());
    // all + any.
    let m = container("x-1", &[("tier", "a")], &["front"]);
    assert_eq!(p.groups_of(&m), ["edge", "mixed"].map(String::from)[1..]);
    let m = with_image(container("y", &[("tier", "a")], &["front"]), "busybox:1");
    assert_eq!(p.groups_of(&m), ["mixed"]);
    let m = container(
        "y",
        &[("tier", "a"), (COMPOSE_PROJECT, "legacy")],
        &["front"],
    );
    assert_eq!(p.groups_of(&m), ["mixed"]);
    assert!(p
        .groups_of(&container("y", &[("tier", "a")], &["front"]))
        .is_empty());
    assert!(p
        .groups_of(&container("x-1", &[("tier", "b")], &["front"]))
        .is_empty());
    // [[groups.NAME.any]] tables; several groups at once.
    let red = container("edge-2", &[("team", "red")], &["dmz"]);
    assert_eq!(p.groups_of(&red), ["edge", "tables"]);
    assert!(p
        .groups_of(&container("b", &[("team", "blue")], &["dmz"]))
        .is_empty());
}

#[test]
fn selector_errors_point_at_the_criterion() {
    assert_contains(
        &errors("[groups.a]\nlabels = { app = false }\n"),
        &[
            "error[bad-value]: label \"app\" cannot be false",
            "--> p.toml:2:18",
            "selecting by a missing label is not supported",
        ],
    );
    assert_contains(
        &errors("[groups.a]\nlabels = { app = [] }\n"),
        &[
            "label \"app\" has an empty list of values",
            "--> p.toml:2:18",
        ],
    );
    assert_contains(
        &errors("[groups.a]\nlabels = { app = 3 }\n"),
        &[
            "\"app\" must be a string, an array of strings or true",
            "found an integer",
        ],
    );
    assert_contains(
        &errors("[groups.a]\ncompose = { projet = \"shop\" }\n"),
        &[
            "unknown key \"projet\" in \"compose\"",
            "--> p.toml:2:13",
            "did you mean \"project\"?",
        ],
    );
    assert_contains(
        &errors("[groups.a]\ncompose = {}\n"),
        &[
            "error[empty-selector]: \"compose\" is empty",
            "--> p.toml:2:11",
        ],
    );
    assert_contains(
        &errors("[groups.a]\nimage = []\n"),
        &["error[bad-value]: \"image\" is empty", "--> p.toml:2:9"],
    );
    assert_contains(
        &errors("[groups.a]\nnetwork = \"\"\n"),
        &["an empty string in \"network\"", "--> p.toml:2:11"],
    );
    assert_contains(
        &errors("[groups.a]\nany = [{ network = \"n\" }, {}]\n"),
        &[
            "error[empty-selector]: an entry of \"any\" selects nothing",
            "--> p.toml:2:27",
        ],
    );
    assert_contains(
        &errors("[groups.a]\nall = [{ netwrk = \"n\" }]\n"),
        &[
            "unknown key \"netwrk\" in an entry of \"all\"",
            "--> p.toml:2:10",
            "did you mean \"network\"?",
        ],
    );
    // `ingress` belongs to the group, not to a selector entry.
    assert_contains(
        &errors("[groups.a]\nany = [{ network = \"n\", ingress = \"deny\" }]\n"),
        &[
            "unknown key \"ingress\" in an entry of \"any\"",
            "--> p.toml:2:25",
        ],
    );
    assert_eq!(kinds("[groups.a]\nany = []\n"), [Kind::BadValue]);
    assert_eq!(kinds("[groups.a]\nany = [\"n\"]\n"), [Kind::BadValue]);
    assert_eq!(kinds("[groups.a]\nall = \"n\"\n"), [Kind::BadValue]);
    assert_eq!(
        kinds("[groups.\"10.0.0.0/8\"]\nnetwork = \"n\"\n"),
        [Kind::ReservedName]
    );
}

const CIDRS: &str = r#"
[groups.app]
labels = { app = "x" }
egress = "deny"

[[rules]]
from = "app"
to = { cidr = ["198.18.0.0/15", "2001:db8::/32"], except = ["198.18.5.0/24", "198.18.5.128/25"] }
ports = ["443/tcp"]
action = "allow"

[[rules]]
from = "app"
to = "198.18.5.7"
action = "audit"
description = "watch the old proxy"

[[rules]]
from = "world"
to = "app"
ports = ["icmpv6"]
action = "allow"
"#;

#[test]
fn cidr_peers_with_exceptions() {
    let p = parse_str(CIDRS, "c.toml").unwrap();
    assert!(p.warnings.is_empty(), "{}", render(&p.warnings));
    let Peer::Cidr(block) = &p.rules[0].to else {
        panic!("{:?}", p.rules[0].to)
    };
    assert_eq!(
        block.name,
        "198.18.0.0/15, 2001:db8::/32 except 198.18.5.0/24, 198.18.5.128/25"
    );
    assert_eq!(p.rules[1].to.name(), "198.18.5.7/32");
    assert_eq!(p.rules[1].action, Action::Audit);
    let g = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let addr = |s: &str| p.names_of_address(s.parse().unwrap());
    assert_eq!(addr("198.18.0.5"), g(&["world", &block.name]));
    assert_eq!(addr("198.18.5.1"), g(&["world"]));
    assert_eq!(addr("198.18.5.7"), g(&["world", "198.18.5.7/32"]));
    assert_eq!(addr("2001:db8::1"), g(&["world", &block.name]));
    assert_eq!(addr("192.0.2.1"), g(&["world"]));

    let d = evaluate(&p, &g(&["app"]), &addr("198.19.0.1"), proto::TCP, 443);
    assert_eq!((d.action, d.rule_id), (Action::Allow, 1));
    let d = evaluate(&p, &g(&["app"]), &addr("198.18.5.7"), proto::TCP, 443);
    assert_eq!((d.action, d.rule_id), (Action::Audit, 2));
    assert!(d.why.contains("watch the old proxy"), "{}", d.why);
    let d = evaluate(&p, &g(&["app"]), &addr("198.18.5.8"), proto::TCP, 443);
    assert_eq!((d.action, d.rule_id), (Action::Deny, 0));

    // The kernel's view: the trie, then the policy map.
    let app = container("a", &[("app", "x")], &["n"]);
    let mut ids = IdentityAllocator::new();
    let compiled = compile(&p, std::slice::from_ref(&app), &mut ids).unwrap();
    let a = compiled.container_identity[&app.id];
    let id_of = |s: &str| compiled.address_identity(s.parse().unwrap());
    assert_eq!(id_of("198.18.0.5"), FIRST_CIDR_IDENTITY);
    assert_eq!(id_of("198.18.5.1"), netiso_common::identity::WORLD);
    assert_eq!(id_of("198.18.5.7"), FIRST_CIDR_IDENTITY + 1);
    assert_eq!(id_of("2001:db8::1"), FIRST_CIDR_IDENTITY);
    assert_eq!(id_of("8.8.8.8"), netiso_common::identity::WORLD);
    assert_eq!(compiled.cidrs.len(), 5);
    assert!(compiled.cidrs.iter().all(|e| e.flags == 0));
    let d = compiled.lookup(a, id_of("198.18.5.7"), proto::TCP, 443);
    assert_eq!((d.action, d.rule_id), (Action::Audit, 2));
    let d = compiled.lookup(id_of("198.19.0.1"), a, proto::ICMPV6, 0);
    assert_eq!((d.action, d.rule_id), (Action::Allow, 3));
    let d = compiled.lookup(id_of("198.19.0.1"), a, proto::ICMP, 0);
    assert_eq!(d.rule_id, 0);
    // Identities of address blocks survive a restart like group identities.
    let mut again = IdentityAllocator::new();
    for (id, names) in ids.iter() {
        again.restore(id, names.to_vec());
    }
    let recompiled = compile(&p, &[app], &mut again).unwrap();
    assert_eq!(recompiled.cidrs, compiled.cidrs);
}

#[test]
fn cidr_errors_have_hints() {
    let rule = |to: &str| {
        format!(
            "[groups.a]\nnames = [\"a\"]\n[[rules]]\nfrom = \"a\"\nto = {to}\naction = \"deny\"\n"
        )
    };
    assert_contains(
        &errors(&rule("\"198.18.0.5/15\"")),
        &[
            "error[bad-cidr]: address block \"198.18.0.5/15\" has host bits set",
            "--> p.toml:5:6",
            "did you mean \"198.18.0.0/15\"?",
        ],
    );
    assert_contains(
        &errors(&rule("\"10.0.0.0/40\"")),
        &["bad prefix length", "0 to 32"],
    );
    assert_contains(
        &errors(&rule("\"10.0.0/8\"")),
        &["bad address block \"10.0.0/8\"", "--> p.toml:5:6"],
    );
    assert_contains(
        &errors(&rule(
            "{ cidr = \"10.1.0.0/16\", except = [\"10.2.0.0/24\"] }",
        )),
        &[
            "exception 10.2.0.0/24 is not a part of the block",
            "--> p.toml:5:40",
            "not inside 10.1.0.0/16",
        ],
    );
    assert_contains(
        &errors(&rule(
            "{ cidr = \"10.1.0.0/16\", except = \"10.1.0.0/16\" }",
        )),
        &["this removes the whole block"],
    );
    assert_contains(
        &errors(&rule("{ except = [\"10.1.0.0/24\"] }")),
        &[
            "error[missing-key]: \"to\" has no \"cidr\"",
            "--> p.toml:5:6",
        ],
    );
    assert_contains(
        &errors(&rule("{ cidr = \"10.0.0.0/8\", exept = [] }")),
        &[
            "unknown key \"exept\" in \"to\"",
            "did you mean \"except\"?",
        ],
    );
    assert_eq!(kinds(&rule("3")), [Kind::BadValue]);
}

#[test]
fn audit_sits_between_deny_and_allow() {
    let text = r#"
[groups.a]
names = ["a"]
[groups.b]
names = ["b"]
[[rules]]
from = "a"
to = "b"
ports = ["tcp"]
action = "allow"
[[rules]]
from = "a"
to = "b"
ports = ["1-100/tcp"]
action = "audit"
[[rules]]
from = "a"
to = "b"
ports = ["22/tcp"]
action = "deny"
"#;
    let p = parse_str(text, "a.toml").unwrap();
    let g = |n: &str| vec![n.to_string()];
    let at = |port| {
        let d = evaluate(&p, &g("a"), &g("b"), proto::TCP, port);
        (d.action, d.rule_id)
    };
    assert_eq!(at(22), (Action::Deny, 3));
    assert_eq!(at(80), (Action::Audit, 2));
    assert_eq!(at(443), (Action::Allow, 1));
    // An allow that an audit covers entirely never decides.
    let p = parse_str(
        "[groups.a]\nnames = [\"a\"]\n[[rules]]\nfrom = \"a\"\nto = \"world\"\nports = [\"tcp\"]\naction = \"audit\"\n\
         [[rules]]\nfrom = \"a\"\nto = \"world\"\nports = [\"80/tcp\"]\naction = \"allow\"\n",
        "s.toml",
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert_contains(
        &p.warnings[0].to_string(),
        &[
            "rule 2 (a -> world, 80/tcp) never decides anything",
            "rule 1 already decides everything it allows, and audit beats allow",
        ],
    );
    // Defaults cannot be audit: a hint says what to write instead.
    assert_contains(
        &errors("[groups.a]\nnames = [\"a\"]\ningress = \"audit\"\n"),
        &[
            "\"ingress\" cannot be \"audit\"",
            "--> p.toml:3:11",
            "add a rule with action = \"audit\"",
        ],
    );
    assert_contains(
        &errors("[[rules]]\nfrom = \"world\"\nto = \"host\"\naction = \"adit\"\n"),
        &[
            "\"action\" must be \"allow\", \"deny\" or \"audit\"",
            "did you mean \"audit\"?",
        ],
    );
}

#[test]
fn ports_any_and_icmp_families() {
    let rule = |ports: &str| {
        format!("[groups.a]\nnames = [\"a\"]\n[[rules]]\nfrom = \"a\"\nto = \"world\"\nports = {ports}\naction = \"deny\"\n")
    };
    let p = parse_str(&rule("[\"any\"]"), "p.toml").unwrap();
    assert_eq!(p.rules[0].ports, None);
    assert_eq!(p.rules[0].ports_text, "any");
    assert!(p.rules[0].covers(132, 9));
    let p = parse_str(&rule("[\"any\", \"80/tcp\"]"), "p.toml").unwrap();
    assert_eq!(p.rules[0].ports, None);
    assert_eq!(p.warnings[0].kind, Kind::RedundantPort);
    assert_eq!(p.warnings[0].location.as_ref().unwrap().column, 10);
    let p = parse_str(&rule("[\"icmpv4\", \"icmpv6\"]"), "p.toml").unwrap();
    assert!(p.rules[0].covers(proto::ICMP, 0) && p.rules[0].covers(proto::ICMPV6, 0));
    let p = parse_str(&rule("[\"icmpv6\"]"), "p.toml").unwrap();
    assert!(!p.rules[0].covers(proto::ICMP, 0));
}

#[test]
fn unmanaged_defaults() {
    let text = r#"
[settings]
unmanaged = { ingress = "deny" }

[groups.web]
names = ["web"]
"#;
    let p = parse_str(
        &format!("{text}[[rules]]\nfrom = \"world\"\nto = \"web\"\naction = \"allow\"\n"),
        "u.toml",
    )
    .unwrap();
    assert_eq!(
        p.settings.unmanaged,
        Defaults {
            ingress: Action::Deny,
            egress: Action::Allow
        }
    );
    let none: Vec<String> = Vec::new();
    let d = evaluate(&p, &["web".to_string()], &none, proto::TCP, 80);
    assert_eq!((d.action, d.rule_id), (Action::Deny, 0));
    assert!(
        d.why.contains("[settings] unmanaged denies ingress"),
        "{}",
        d.why
    );
    let d = evaluate(&p, &none, &["web".to_string()], proto::TCP, 80);
    assert_eq!(d.action, Action::Allow);
    let plain = container("plain", &[], &["n"]);
    let compiled = compile(
        &p,
        std::slice::from_ref(&plain),
        &mut IdentityAllocator::new(),
    )
    .unwrap();
    let u = netiso_common::identity::UNMANAGED;
    assert_eq!(compiled.container_identity[&plain.id], u);
    assert_eq!(
        compiled.identities[&u].flags,
        netiso_common::defaults::DENY_INGRESS
    );

    let p = parse_str("[settings]\nunmanaged = \"deny\"\n", "u.toml").unwrap();
    assert_eq!(p.settings.unmanaged.egress, Action::Deny);
    assert_contains(
        &errors("[settings]\nunmanaged = { ingres = \"deny\" }\n"),
        &[
            "unknown key \"ingres\" in \"unmanaged\"",
            "did you mean \"ingress\"?",
        ],
    );

    // Two files setting it is a conflict naming both places.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[settings]\nunmanaged = \"allow\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "# b\n[settings]\nunmanaged = \"deny\"\n",
    )
    .unwrap();
    let err = load_path(dir.path()).unwrap_err();
    assert_eq!(err.diagnostics[0].kind, Kind::DuplicateSetting);
    let text = err.to_string();
    assert_contains(
        &text,
        &[
            "\"unmanaged\" is set in two places",
            "b.toml:3:1",
            "note: first set here",
            "a.toml:2:1",
        ],
    );
}

#[test]
fn fail_closed_groups_need_a_network() {
    let p = parse_str(
        r#"
[groups.vault]
network = "secure"
labels = { app = "vault" }
fail_closed = true

[groups.dual]
any = [{ network = "a", names = ["x"] }, { network = ["b", "c"] }]
fail_closed = true
ingress = "deny"

[groups.open]
network = "other"
egress = "deny"
"#,
        "f.toml",
    )
    .unwrap();
    assert!(p.group("vault").unwrap().fail_closed);
    assert!(!p.group("open").unwrap().fail_closed);
    assert_eq!(
        p.fail_closed_networks().into_iter().collect::<Vec<_>>(),
        ["a", "b", "c", "secure"]
    );
    let text = errors("[groups.vault]\nlabels = { app = \"vault\" }\nfail_closed = true\n");
    assert_contains(
        &text,
        &[
            "error[fail-closed-network]: fail-closed group \"vault\" names no network",
            "--> p.toml:3:15",
            "add `network = \"NET\"`",
        ],
    );
    // A network in only one branch of `any` is not enough.
    assert_eq!(
        kinds("[groups.v]\nany = [{ network = \"a\" }, { names = [\"v\"] }]\nfail_closed = true\n"),
        [Kind::FailClosedNetwork]
    );
    assert_eq!(
        kinds("[groups.v]\nnetwork = \"a\"\nfail_closed = \"yes\"\n"),
        [Kind::BadValue]
    );
}

#[test]
fn contradictions_and_rules_that_never_match_warn() {
    let p = parse_str(
        r#"
[groups.clash]
labels = { app = "web" }
all = [{ labels = { app = ["db", "cache"] } }]
ingress = "deny"

[groups.names]
names = ["a", "b"]
all = [{ names = ["c*"] }]
egress = "deny"

[groups.branches]
labels = { env = "prod" }
any = [{ labels = { env = "dev" } }, { labels = { env = "test" } }]
egress = "deny"

[groups.fine]
labels = { app = true }
all = [{ labels = { app = ["a", "b"] } }, { names = ["x-*"] }]
any = [{ names = ["x-1"] }, { labels = { env = "z" } }]
egress = "deny"

[[rules]]
from = "clash"
to = "world"
action = "allow"

[[rules]]
from = "world"
to = "10.0.0.0/8"
action = "deny"
"#,
        "w.toml",
    )
    .unwrap();
    let rendered: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(rendered.len(), 4, "{rendered:#?}");
    assert_contains(
        &rendered[0],
        &[
            "warning[never-matches]: group \"clash\" can never select a container",
            "--> w.toml:2:9",
            "label \"app\" would have to be \"web\" and one of [\"db\", \"cache\"] at once",
            "w.toml:3:12",
            "w.toml:4:21",
            "so rule 1 can never match",
        ],
    );
    assert_contains(
        &rendered[1],
        &[
            "group \"names\"",
            "no name matches every one of the name lists",
        ],
    );
    assert_contains(
        &rendered[2],
        &["group \"branches\"", "no branch of `any` can match"],
    );
    assert_contains(
        &rendered[3],
        &[
            "rule 2 (world -> 10.0.0.0/8, any) can never match",
            "from the world to an address block: neither side is a container",
        ],
    );
}

/// The ```toml blocks of docs/policy.md: (first line of the block, text).
fn doc_examples() -> Vec<(usize, String)> {
    let path = workspace_root().join("docs/policy.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some((i + 2, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unterminated ```toml block");
    blocks
}

/// Every example policy: the blocks of docs/policy.md and the files of
/// policies/, as (origin, text).
fn all_examples() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = doc_examples()
        .into_iter()
        .map(|(line, text)| (format!("docs/policy.md (block at line {line})"), text))
        .collect();
    let dir = workspace_root().join("policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((
            format!("policies/{}", path.file_name().unwrap().to_string_lossy()),
            text,
        ));
    }
    out
}

/// Deliberate breakages of one example: (what, broken text, 1-based line
/// broken, the error expected there). The first line each applies to.
fn breakages(text: &str) -> Vec<(&'static str, String, usize, Kind)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut breaker = |what: &'static str, kind: Kind, f: &dyn Fn(&str, &str) -> Option<String>| {
        let mut header = "";
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with('[') {
                header = line.trim();
            }
            if let Some(new) = f(header, line) {
                let mut broken: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                broken[i] = new;
                out.push((what, broken.join("\n") + "\n", i + 1, kind));
                return;
            }
        }
    };
    // Keys netiso reads in each kind of table (other tables, such as
    // [groups.NAME.labels], hold free-form label names).
    let key_of = |line: &str| -> Option<String> {
        let (k, _) = line.split_once(" = ")?;
        (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| k.to_string())
    };
    let is_group =
        |h: &str| h.starts_with("[groups.") && h.matches('.').count() == 1 && !h.starts_with("[[");
    breaker("misspelt key", Kind::UnknownKey, &|h, l| {
        let k = key_of(l)?;
        let known = match h {
            "[[rules]]" | "[settings]" => true,
            _ => is_group(h) || (h.starts_with("[[groups.") && h.ends_with(".any]]")),
        };
        known.then(|| l.replacen(&k, &format!("{k}x"), 1))
    });
    breaker("unknown action", Kind::BadValue, &|_, l| {
        l.starts_with("action = ")
            .then(|| "action = \"permit\"".to_string())
    });
    breaker("misspelt default", Kind::BadValue, &|_, l| {
        let at = l.find("ingress = \"").or_else(|| l.find("egress = \""))?;
        let (head, tail) = l.split_at(at);
        Some(format!(
            "{head}{}",
            tail.replacen("\"deny\"", "\"dney\"", 1)
                .replacen("\"allow\"", "\"alow\"", 1)
        ))
    });
    breaker("misspelt group", Kind::UnknownGroup, &|h, l| {
        let rest = l
            .strip_prefix("to = \"")
            .or_else(|| l.strip_prefix("from = \""))?;
        let name = rest.strip_suffix('"')?;
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let ok = h == "[[rules]]" && plain && !RESERVED.contains(&name);
        ok.then(|| l.replacen(name, &format!("{name}z"), 1))
    });
    breaker("bad port", Kind::BadPort, &|_, l| {
        (l.starts_with("ports = ") && l.contains("/tcp\""))
            .then(|| l.replacen("/tcp\"", "/tcpp\"", 1))
    });
    breaker("bad address block", Kind::BadCidr, &|_, l| {
        if !(l.starts_with("to = ") || l.starts_with("from = ")) {
            return None;
        }
        let start = l.find(|c: char| c.is_ascii_digit())?;
        let slash = start + l[start..].find('/')?;
        let end = slash + 1 + l[slash + 1..].find(|c: char| !c.is_ascii_digit())?;
        Some(format!("{}/33{}", &l[..slash], &l[end..]))
    });
    breaker("cut table header", Kind::Syntax, &|_, l| {
        (l.starts_with("[groups.") || l == "[[rules]]" || l == "[settings]")
            .then(|| l[..l.len() - 1].to_string())
    });
    out
}

/// For each example, deliberately broken copies yield an error of the
/// expected kind at the line that was broken (what docs/policy.md promises
/// in its closing note).
#[test]
fn broken_examples_point_at_the_broken_line() {
    let examples = all_examples();
    assert!(examples.len() >= 15, "only {} examples", examples.len());
    for (origin, text) in examples {
        parse_str(&text, &origin).unwrap_or_else(|e| panic!("{e}"));
        let cases = breakages(&text);
        let kinds: Vec<Kind> = cases.iter().map(|c| c.3).collect();
        assert!(
            kinds.contains(&Kind::UnknownKey) && kinds.contains(&Kind::Syntax) && cases.len() >= 3,
            "{origin}: only {kinds:?} could be applied"
        );
        for (what, broken, line, kind) in cases {
            let err = match parse_str(&broken, &origin) {
                Ok(_) => panic!("{origin}, {what} at line {line}: no error\n{broken}"),
                Err(e) => e,
            };
            let hit = err
                .diagnostics
                .iter()
                .any(|d| d.kind == kind && d.location.as_ref().is_some_and(|l| l.line == line));
            assert!(
                hit,
                "{origin}, {what} at line {line}: no {} error there:\n{err}",
                kind.slug()
            );
        }
    }
}

/// The shadowed-rule warning's definition, quadratic: every rule
/// against every other (deny beats audit beats allow, then the lower id).
fn naive_shadowed(policy: &Policy) -> Vec<(u32, Vec<u32>)> {
    let rank = |a: Action| match a {
        Action::Deny => 0,
        Action::Audit => 1,
        Action::Allow => 2,
    };
    let mut out = Vec::new();
    for rule in &policy.rules {
        let beats = |w: &Rule| {
            (rank(w.action), w.id) < (rank(rule.action), rule.id)
                && w.from == rule.from
                && w.to == rule.to
        };
        let winners: Vec<&Rule> = policy.rules.iter().filter(|w| beats(w)).collect();
        let mut covered = PortSet::default();
        for w in &winners {
            covered.add(w.ports.as_deref());
        }
        if winners.is_empty() || !covered.contains(rule.ports.as_deref()) {
            continue;
        }
        let hidden_by = winners
            .iter()
            .filter(|w| overlap(w.ports.as_deref(), rule.ports.as_deref()))
            .map(|w| w.id)
            .collect();
        out.push((rule.id, hidden_by));
    }
    out
}

/// Random small policies (a fixed-seed generator): the bucketed lint
/// warns about exactly the rules the definition names, hidden by
/// exactly the same rules, in file order.
#[test]
fn the_linear_shadow_lint_matches_the_definition() {
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let peers = ["\"a\"", "\"b\"", "\"world\"", "\"10.0.0.0/8\""];
    let ports = [
        "\"80/tcp\"",
        "\"443/tcp\"",
        "\"80-90/tcp\"",
        "\"85-100/tcp\"",
        "\"53/udp\"",
        "\"tcp\"",
    ];
    let actions = ["allow", "deny", "audit"];
    let mut warned = 0;
    for _ in 0..300 {
        let mut text = String::from(
            "[groups.a]\nlabels = { app = \"a\" }\n[groups.b]\nlabels = { app = \"b\" }\n",
        );
        for _ in 0..(2 + next(10)) {
            let from = ["\"a\"", "\"b\""][next(2) as usize];
            let to = peers[next(4) as usize];
            text += &format!("[[rules]]\nfrom = {from}\nto = {to}\n");
            if next(4) != 0 {
                let n = 1 + next(2) as usize;
                let list: Vec<&str> = (0..n).map(|_| ports[next(6) as usize]).collect();
                text += &format!("ports = [{}]\n", list.join(", "));
            }
            text += &format!("action = \"{}\"\n", actions[next(3) as usize]);
        }
        let policy = parse_str(&text, "p.toml").unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let got: Vec<(u32, Vec<u32>)> = policy
            .warnings
            .iter()
            .filter(|d| d.kind == Kind::ShadowedRule)
            .map(|d| {
                let id = |loc: &Option<Location>| {
                    policy
                        .rules
                        .iter()
                        .find(|r| Some(&r.location) == loc.as_ref())
                        .map(|r| r.id)
                        .unwrap()
                };
                (
                    id(&d.location),
                    d.notes.iter().map(|n| id(&n.location)).collect(),
                )
            })
            .collect();
        assert_eq!(got, naive_shadowed(&policy), "{text}");
        warned += got.len();
    }
    assert!(
        warned > 50,
        "the generator must make shadowed rules: {warned}"
    );
}

/// Peers by name: parsed and normalized, one identity per peer (with the
/// world's rules), senders known; misuse is an error at its place.
#[test]
fn peers_by_name() {
    let text = r#"
[groups.pay]
labels = { app = "pay" }
egress = "deny"

[[rules]]
from = "pay"
to = { fqdn = ["API.Stripe.com.", "*.stripe.network"] }
ports = ["443/tcp"]
action = "allow"

[[rules]]
from = "pay"
to = "world"
ports = ["53/udp"]
action = "allow"
"#;
    let p = parse_str(text, "p.toml").unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.rules[0].to.name(), "fqdn:*.stripe.network,api.stripe.com");
    let mut ids = IdentityAllocator::new();
    let c = compile(
        &p,
        &[container("pay-1", &[("app", "pay")], &["n"])],
        &mut ids,
    )
    .unwrap();
    assert_eq!(c.fqdns.len(), 1);
    let fq = c.fqdns[0].identity;
    assert!(fq >= FIRST_CIDR_IDENTITY);
    let pay = c.container_identity["id-pay-1"];
    assert_eq!(c.fqdn_senders, [pay].into());
    assert_eq!(c.fqdn_identities_of("api.stripe.com"), vec![fq]);
    assert_eq!(c.fqdn_identities_of("m.stripe.network"), vec![fq]);
    assert!(c.fqdn_identities_of("stripe.network").is_empty());
    // The name's rule, and the world's rules too.
    assert_eq!(c.lookup(pay, fq, proto::TCP, 443).action, Action::Allow);
    assert_eq!(c.lookup(pay, fq, proto::UDP, 53).action, Action::Allow);
    assert_eq!(c.lookup(pay, fq, proto::TCP, 80).action, Action::Deny);
    assert_eq!(
        c.lookup(pay, netiso_common::identity::WORLD, proto::TCP, 443)
            .action,
        Action::Deny
    );

    let rule = |from: &str, to: &str, action: &str| {
        format!(
            "[groups.pay]\nlabels = {{ app = \"pay\" }}\n\n[[rules]]\nfrom = {from}\nto = {to}\naction = \"{action}\"\n"
        )
    };
    for (text, needle) in [
        (
            rule("{ fqdn = \"a.example\" }", "\"pay\"", "allow"),
            "a name can only be a destination",
        ),
        (
            rule("\"world\"", "{ fqdn = \"a.example\" }", "allow"),
            "a name needs a group",
        ),
        (
            rule("\"pay\"", "{ fqdn = \"a.example\" }", "deny"),
            "a name cannot be denied",
        ),
        (
            rule("\"pay\"", "{ fqdn = \"*.com\" }", "allow"),
            "every name under a top-level domain",
        ),
        (
            rule(
                "\"pay\"",
                "{ fqdn = \"a.example\", cidr = \"10.0.0.0/8\" }",
                "allow",
            ),
            "cannot go with \"fqdn\"",
        ),
        (
            rule("\"pay\"", "{ fqdn = [] }", "allow"),
            "\"fqdn\" is empty",
        ),
    ] {
        let e = errors(&text);
        assert!(e.contains(needle), "{needle:?} not in:\n{e}");
    }
    assert_eq!(
        kinds(&rule("\"pay\"", "{ fqdn = \"a*.example.com\" }", "allow")),
        vec![Kind::BadFqdn]
    );
    // A group cannot take a peer's name (it would receive its rules).
    let e = errors("[groups.\"fqdn:api.stripe.com\"]\nlabels = { a = \"b\" }\n");
    assert!(e.contains("cannot be used"), "{e}");
    // The error points at the pattern.
    let e = errors(&rule(
        "\"pay\"",
        "{ fqdn = [\"ok.example\", \"bad..example\"] }",
        "allow",
    ));
    assert!(e.contains("p.toml:6:"), "{e}");
}

#[test]
fn swarm_selects_services_and_stacks_of_local_and_remote_tasks() {
    let p = parse_str(
        r#"
[groups.api]
swarm = { service = "shop_api" }
ingress = "deny"

[groups.shop]
swarm = { stack = "shop" }
egress = "deny"
"#,
        "p.toml",
    )
    .unwrap();
    // A stack is inferred on other nodes: said once, where it is written.
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert_eq!(p.warnings[0].kind, Kind::InferredRemotely);
    let local = container(
        "shop_api.1.x",
        &[(SWARM_SERVICE, "shop_api"), (STACK_NAMESPACE, "shop")],
        &["shop_back"],
    );
    let remote = Container::remote_task(
        "shop_back",
        "0123456789abcdef",
        &RemoteTask {
            name: "shop_api.2.y".into(),
            service: "shop_api".into(),
            ip: "10.0.1.7".parse().unwrap(),
            node: "198.18.0.2".into(),
        },
    );
    let plain = Container::remote_task(
        "shop_back",
        "0123456789abcdef",
        &RemoteTask {
            name: "plain".into(),
            service: String::new(),
            ip: "10.0.1.8".parse().unwrap(),
            node: "198.18.0.2".into(),
        },
    );
    for c in [&local, &remote] {
        assert_eq!(p.groups_of(c), vec!["api", "shop"], "{}", c.name);
    }
    assert!(p.groups_of(&plain).is_empty());
    assert_eq!(remote.remote_node.as_deref(), Some("198.18.0.2"));
    assert_contains(&errors("[groups.a]\nswarm = {}\n"), &["\"swarm\" is empty"]);
    // Beside swarm selectors, a group a rule names that selects by labels
    // is only recognised on its own node: said.
    let p = parse_str(
        r#"
[groups.api]
swarm = { service = "shop_api" }
ingress = "deny"

[groups.admin]
labels = { role = "admin" }

[[rules]]
from = "admin"
to = "api"
ports = ["22/tcp"]
action = "allow"
"#,
        "p.toml",
    )
    .unwrap();
    let kinds: Vec<Kind> = p.warnings.iter().map(|w| w.kind).collect();
    assert_eq!(kinds, vec![Kind::LocalOnlySelector], "{:?}", p.warnings);
    assert!(p.warnings[0].message.contains("label role"));
    assert_contains(
        &errors("[groups.a]\nswarm = { task = \"x\" }\n"),
        &["unknown key"],
    );
}
