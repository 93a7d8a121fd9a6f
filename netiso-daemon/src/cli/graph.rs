//! `netiso policy graph`: the policy as a picture. Groups (and the host,
//! world and address-block peers rules name) are nodes; each rule is an
//! edge labelled with its id and ports: allowed edges solid, audited edges
//! thick, denied edges dashed. Rendered as Mermaid or Graphviz DOT.
use std::fmt::Write as _;
use std::path::PathBuf;

use netiso_common::Action;

use crate::policy::{self, Peer, Policy};

/// `netiso policy graph` arguments.
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: Format,
    /// Policy file or directory.
    pub path: PathBuf,
}

/// Runs `netiso policy graph`: the graph on stdout, or the policy's
/// errors and exit status 1.
pub fn command(args: &GraphArgs) -> anyhow::Result<std::process::ExitCode> {
    match policy::load_path(&args.path) {
        Ok(p) => {
            print!("{}", render(&p, args.format));
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

struct Node {
    name: String,
    label: String,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Group,
    /// host, world, address blocks.
    Outside,
}

/// Nodes in a fixed order: groups as defined, then other peers in the
/// order rules first name them.
fn nodes(policy: &Policy) -> Vec<Node> {
    let mut nodes: Vec<Node> = policy
        .groups
        .iter()
        .map(|g| {
            let mut notes = Vec::new();
            if g.ingress == Action::Deny {
                notes.push("ingress deny");
            }
            if g.egress == Action::Deny {
                notes.push("egress deny");
            }
            if g.fail_closed {
                notes.push("fail-closed");
            }
            let label = if notes.is_empty() {
                g.name.clone()
            } else {
                format!("{}\n({})", g.name, notes.join(", "))
            };
            Node {
                name: g.name.clone(),
                label,
                kind: Kind::Group,
            }
        })
        .collect();
    for rule in &policy.rules {
        for peer in [&rule.from, &rule.to] {
            if matches!(peer, Peer::Group(_)) || nodes.iter().any(|n| n.name == peer.name()) {
                continue;
            }
            nodes.push(Node {
                name: peer.name().to_string(),
                label: peer.name().to_string(),
                kind: Kind::Outside,
            });
        }
    }
    nodes
}

fn edge_label(action: Action, id: u32, ports: &str) -> String {
    match action {
        Action::Allow => format!("#{id} {ports}"),
        Action::Audit => format!("#{id} audit {ports}"),
        Action::Deny => format!("#{id} deny {ports}"),
    }
}

pub fn render(policy: &Policy, format: Format) -> String {
    match format {
        Format::Mermaid => mermaid(policy),
        Format::Dot => dot(policy),
    }
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', "<br/>")
}

fn mermaid(policy: &Policy) -> String {
    let nodes = nodes(policy);
    let id = |name: &str| nodes.iter().position(|n| n.name == name).unwrap_or(0);
    let mut s = String::from("flowchart LR\n");
    for (i, n) in nodes.iter().enumerate() {
        let label = mermaid_text(&n.label);
        match n.kind {
            Kind::Group => writeln!(s, "    n{i}[\"{label}\"]"),
            Kind::Outside => writeln!(s, "    n{i}([\"{label}\"])"),
        }
        .expect("writing to a String");
    }
    let mut styles = Vec::new();
    for (i, r) in policy.rules.iter().enumerate() {
        let (a, b) = (id(r.from.name()), id(r.to.name()));
        let label = mermaid_text(&edge_label(r.action, r.id, &r.ports_text));
        let arrow = match r.action {
            Action::Allow => "-->",
            Action::Audit => "==>",
            Action::Deny => "-.->",
        };
        writeln!(s, "    n{a} {arrow}|\"{label}\"| n{b}").expect("writing to a String");
        match r.action {
            Action::Deny => styles.push(format!("    linkStyle {i} stroke:#c0392b")),
            Action::Audit => styles.push(format!("    linkStyle {i} stroke:#e67e22")),
            Action::Allow => {}
        }
    }
    for st in styles {
        s.push_str(&st);
        s.push('\n');
    }
    s
}

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn dot(policy: &Policy) -> String {
    let nodes = nodes(policy);
    let mut s = String::from("digraph netiso {\n    rankdir=LR;\n    node [fontname=\"sans-serif\"];\n    edge [fontname=\"sans-serif\"];\n");
    for n in &nodes {
        let shape = match n.kind {
            Kind::Group => "box",
            Kind::Outside => "ellipse",
        };
        writeln!(
            s,
            "    \"{}\" [label=\"{}\", shape={shape}];",
            dot_text(&n.name),
            dot_text(&n.label)
        )
        .expect("writing to a String");
    }
    for r in &policy.rules {
        let style = match r.action {
            Action::Allow => "style=solid",
            Action::Audit => "style=bold, color=\"#e67e22\"",
            Action::Deny => "style=dashed, color=\"#c0392b\"",
        };
        writeln!(
            s,
            "    \"{}\" -> \"{}\" [label=\"{}\", {style}];",
            dot_text(r.from.name()),
            dot_text(r.to.name()),
            dot_text(&edge_label(r.action, r.id, &r.ports_text))
        )
        .expect("writing to a String");
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    const P: &str = r#"
[groups.web]
labels = { app = "web" }
[groups.db]
labels = { app = "db" }
ingress = "deny"
[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp"]
action = "allow"
[[rules]]
from = "db"
to = "198.18.0.0/15"
action = "deny"
[[rules]]
from = "web"
to = "world"
ports = ["80/tcp", "443/tcp"]
action = "audit"
"#;

    #[test]
    fn mermaid_has_nodes_and_styled_edges() {
        let p = parse_str(P, "p.toml").unwrap();
        assert_eq!(
            render(&p, Format::Mermaid),
            "flowchart LR\n    n0[\"web\"]\n    n1[\"db<br/>(ingress deny)\"]\n    \
             n2([\"198.18.0.0/15\"])\n    n3([\"world\"])\n    \
             n0 -->|\"#1 5432/tcp\"| n1\n    n1 -.->|\"#2 deny any\"| n2\n    \
             n0 ==>|\"#3 audit 80/tcp, 443/tcp\"| n3\n    \
             linkStyle 1 stroke:#c0392b\n    linkStyle 2 stroke:#e67e22\n"
        );
    }

    #[test]
    fn dot_has_nodes_and_styled_edges() {
        let p = parse_str(P, "p.toml").unwrap();
        let dot = render(&p, Format::Dot);
        for line in [
            "digraph netiso {",
            "\"db\" [label=\"db\\n(ingress deny)\", shape=box];",
            "\"198.18.0.0/15\" [label=\"198.18.0.0/15\", shape=ellipse];",
            "\"web\" -> \"db\" [label=\"#1 5432/tcp\", style=solid];",
            "\"db\" -> \"198.18.0.0/15\" [label=\"#2 deny any\", style=dashed, color=\"#c0392b\"];",
            "\"web\" -> \"world\" [label=\"#3 audit 80/tcp, 443/tcp\", style=bold, color=\"#e67e22\"];",
        ] {
            assert!(dot.contains(line), "missing {line} in\n{dot}");
        }
        assert!(dot.ends_with("}\n"));
    }
}
