//! `netiso explain --from X --to Y [--port P]`: would X reach Y, and which
//! rule (or default) decides.
//!
//! X and Y are containers (known from the running daemon's published
//! state), groups, addresses, or `world` / `host` / `unmanaged`. The answer
//! comes from the compiled tables the kernel gets ([`Compiled::lookup`],
//! after resolving addresses the way the kernel does: exact container and
//! host addresses, then the CIDR trie, then world), and is cross-checked
//! against the reference evaluation ([`policy::evaluate`]): a disagreement
//! is reported as an error rather than papered over.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netiso_common::{identity, proto, Action};
use serde::Serialize;

use crate::observe::defaults;
use crate::observe::flow::proto_name;
use crate::observe::state::{PublishedState, State};
use crate::policy::{self, Compiled, IdentityAllocator, Policy, PortSpec};

/// `netiso explain` arguments.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The sender: a running container (name or id; a Swarm task on
    /// another node too), a Swarm service (`service:NAME`), a group
    /// (`group:NAME` when a container has the same name), an IP address,
    /// `world`, `host` or `unmanaged`.
    #[arg(long)]
    pub from: String,
    /// The receiver, named like --from.
    #[arg(long)]
    pub to: String,
    /// Destination port: 5432/tcp, 53/udp, 443 (tcp), icmp or icmpv6.
    /// Without it: every port the rules between the two name, other
    /// ports, and ICMP.
    #[arg(long)]
    pub port: Option<String>,
    /// Policy file or directory [default: the running daemon's, else
    /// /etc/netiso/policy.toml].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Where the daemon publishes its state (to name running containers).
    #[arg(long, default_value = defaults::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `netiso explain`.
pub fn command(args: &ExplainArgs) -> anyhow::Result<std::process::ExitCode> {
    let x = run(&Request {
        from: args.from.clone(),
        to: args.to.clone(),
        port: args.port.clone(),
        policy: args.policy.clone(),
        state_dir: args.state_dir.clone(),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&x)?);
    } else {
        print!("{}", render(&x));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    Policy(String),
    #[error("cannot read the daemon's state in {dir}: {error}")]
    State { dir: PathBuf, error: String },
    #[error("{what} {text:?} is not a container, group or address{hint}")]
    Unknown {
        what: &'static str,
        text: String,
        hint: String,
    },
    #[error("bad --port {0:?}: write N/tcp, N/udp, N (tcp), icmp, icmpv4 or icmpv6, for example 5432/tcp")]
    Port(String),
    #[error(
        "internal error: the compiled tables and the reference evaluation disagree for {packet}:\n  \
         kernel tables: {kernel}\n  reference:     {reference}\nplease report this with the policy"
    )]
    Disagree {
        packet: String,
        kernel: String,
        reference: String,
    },
}

/// One side of the question, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// As given on the command line.
    pub text: String,
    /// `container`, `group`, `address`, `host`, `world` or `unmanaged`.
    pub kind: &'static str,
    /// The names rules match it by: its groups, `host`, or `world` plus
    /// the address blocks it is in. Empty: a container in no group.
    pub names: Vec<String>,
    pub identity: u32,
    /// A sentence for people.
    pub description: String,
    /// Things worth knowing (not enforced, group sets, …).
    pub notes: Vec<String>,
}

/// The verdict for one packet kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `5432/tcp`, `icmp`, `other tcp ports`, …
    pub packet: String,
    pub proto: u8,
    pub port: u16,
    /// `allow`, `deny` or `audit`.
    pub action: &'static str,
    /// 0: a default decided.
    pub rule_id: u32,
    /// `file:line:col` of the deciding rule.
    pub location: Option<String>,
    pub description: Option<String>,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub policy: String,
    pub from: Endpoint,
    pub to: Endpoint,
    pub verdicts: Vec<Verdict>,
}

/// The command's inputs.
#[derive(Clone, Debug)]
pub struct Request {
    pub from: String,
    pub to: String,
    pub port: Option<String>,
    /// `--policy`; else the daemon's policy; else [`defaults::POLICY`].
    pub policy: Option<PathBuf>,
    pub state_dir: PathBuf,
}

/// Reads the state file and the policy, then answers.
pub fn run(req: &Request) -> Result<Explanation, ExplainError> {
    let state = State::read(&req.state_dir).map_err(|e| ExplainError::State {
        dir: req.state_dir.clone(),
        error: format!("{e:#}"),
    })?;
    let path = match (&req.policy, state.policy_path.as_os_str().is_empty()) {
        (Some(p), _) => p.clone(),
        (None, false) => state.policy_path.clone(),
        (None, true) => PathBuf::from(defaults::POLICY),
    };
    let policy = policy::load_path(&path).map_err(|e| {
        ExplainError::Policy(format!("the policy {} is not valid:\n{e}", path.display()))
    })?;
    // The host's addresses get the host identity in the kernel; without
    // them an address of the host would read as world.
    let host = crate::host::netlink::host_addresses().unwrap_or_default();
    explain(&policy, &path, &state, &host, req)
}

/// A member of the compile: a container from the state, or a stand-in for
/// "a container in exactly this group".
struct Resolved {
    endpoint: Endpoint,
    /// Key in `compile_members`, for containers and group stand-ins.
    member: Option<(String, Vec<String>)>,
    addr: Option<IpAddr>,
    /// A DNS name (`api.example.com`): an address a container learned for it.
    dns_name: Option<String>,
}

/// The pure part: answers from a loaded policy and state.
pub fn explain(
    policy: &Policy,
    policy_path: &Path,
    state: &State,
    host_addrs: &[IpAddr],
    req: &Request,
) -> Result<Explanation, ExplainError> {
    let from = resolve("--from", &req.from, policy, state, host_addrs)?;
    let to = resolve("--to", &req.to, policy, state, host_addrs)?;

    // Identity numbers as the daemon gave them, so that they match its
    // statistics and pinned maps.
    let mut ids = IdentityAllocator::new();
    for (id, names) in &state.identities {
        ids.restore(*id, names.clone());
    }
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &state.endpoints {
        members.insert(e.container_id.clone(), e.groups.clone());
    }
    for r in [&from, &to] {
        if let Some((k, g)) = &r.member {
            members.insert(k.clone(), g.clone());
        }
    }
    let members: Vec<(String, Vec<String>)> = members.into_iter().collect();
    let compiled = policy::compile_members(policy, &members, &mut ids)
        .map_err(|e| ExplainError::Policy(e.to_string()))?;

    let from = finish(from, &compiled, policy)?;
    let to = finish(to, &compiled, policy)?;
    let probes = match &req.port {
        Some(p) => vec![parse_probe(p)?],
        None => default_probes(policy, &from.names, &to.names),
    };
    let mut verdicts = Vec::new();
    for (packet, proto, port) in probes {
        // A container reaching a port the host publishes is judged, in the
        // kernel, as reaching the container behind it on its own port.
        let via = published_behind(state, &compiled, &from, &to, proto, port);
        if let Some((p, identity::AMBIGUOUS_PUBLISHED, _)) = &via {
            // As the daemon programs it (daemon/desired.rs): a port published
            // for two containers cannot be told apart, and is denied.
            verdicts.push(Verdict {
                packet,
                proto,
                port,
                action: Action::Deny.as_str(),
                rule_id: 0,
                location: None,
                description: None,
                why: format!(
                    "the host publishes {}/{} for more than one container (on different \
                     host addresses): netiso tells published ports apart by port only, so \
                     reaching it through the host is denied",
                    p.host_port, p.proto
                ),
            });
            continue;
        }
        let (dst_identity, dst_names, dst_port) = match &via {
            Some((p, identity, names)) => (*identity, names.clone(), p.container_port),
            None => (to.identity, to.names.clone(), port),
        };
        // As the daemon compiles it on a Swarm node: a built-in deny after
        // the policy's rules (the reference evaluation knows policies only).
        let container = policy::is_container_identity;
        if state.swarm_data_path_ports.contains(&dst_port)
            && proto == proto::UDP
            && container(from.identity)
            && !container(dst_identity)
        {
            verdicts.push(Verdict {
                packet,
                proto,
                port,
                action: Action::Deny.as_str(),
                rule_id: 0,
                location: Some("built-in".to_string()),
                description: Some(crate::daemon::desired::SWARM_DATA_PATH_DENY.to_string()),
                why: format!(
                    "on a Swarm node no container sends to the overlay data path \
                     ({dst_port}/udp) beyond the containers: a forged VXLAN frame would put any \
                     packet, claiming any task's address, on an overlay"
                ),
            });
            continue;
        }
        let got = compiled.lookup(from.identity, dst_identity, proto, dst_port);
        let want = policy::evaluate(policy, &from.names, &dst_names, proto, dst_port);
        if (got.action, got.rule_id) != (want.action, want.rule_id) {
            return Err(ExplainError::Disagree {
                packet,
                kernel: got.why,
                reference: want.why,
            });
        }
        let rule = compiled.rule(got.rule_id);
        verdicts.push(Verdict {
            packet,
            proto,
            port,
            action: got.action.as_str(),
            rule_id: got.rule_id,
            location: rule.map(|r| r.location.clone()),
            description: rule.and_then(|r| r.description.clone()),
            // The reference names the group whose default decided; the
            // kernel's sentence only knows identities.
            why: {
                let why = if got.rule_id == 0 { want.why } else { got.why };
                match &via {
                    Some((p, _, _)) => format!(
                        "the host publishes {}/{} for container {} (its port {}): \
                         judged as reaching it there: {why}",
                        p.host_port, p.proto, p.container, p.container_port
                    ),
                    None => why,
                }
            },
        });
    }
    Ok(Explanation {
        policy: policy_path.display().to_string(),
        from,
        to,
        verdicts,
    })
}

fn resolve(
    what: &'static str,
    text: &str,
    policy: &Policy,
    state: &State,
    host_addrs: &[IpAddr],
) -> Result<Resolved, ExplainError> {
    let plain = |kind, names: Vec<String>, identity, description: String| Resolved {
        endpoint: Endpoint {
            text: text.to_string(),
            kind,
            names,
            identity,
            description,
            notes: Vec::new(),
        },
        member: None,
        addr: None,
        dns_name: None,
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        if let Some(e) = state.container_by_ip(ip) {
            return Ok(container(text, e.container_id.as_str(), state));
        }
        if host_addrs.contains(&ip) {
            return Ok(plain(
                "host",
                vec![policy::HOST.to_string()],
                identity::HOST,
                "an address of this host".to_string(),
            ));
        }
        let mut r = plain("address", Vec::new(), identity::WORLD, String::new());
        r.addr = Some(ip);
        return Ok(r);
    }
    let (prefix, name) = match text.split_once(':') {
        Some((p @ ("group" | "container" | "service"), n)) => (Some(p), n),
        _ => (None, text),
    };
    if prefix.is_none() {
        match name {
            policy::WORLD => {
                return Ok(plain(
                    "world",
                    vec![policy::WORLD.to_string()],
                    identity::WORLD,
                    "any address that is not a container, the host, or in an address block \
                     a rule names"
                        .to_string(),
                ))
            }
            policy::HOST => {
                return Ok(plain(
                    "host",
                    vec![policy::HOST.to_string()],
                    identity::HOST,
                    "the host's own addresses".to_string(),
                ))
            }
            "unmanaged" => {
                return Ok(plain(
                    "unmanaged",
                    Vec::new(),
                    identity::UNMANAGED,
                    "a container in no group".to_string(),
                ))
            }
            _ => {}
        }
    }
    if prefix != Some("group") {
        let by_name = state.endpoints.iter().find(|e| e.container == name);
        // A container id, or a unique prefix of one (as docker accepts).
        let by_id = || {
            let mut hits = state
                .endpoints
                .iter()
                .filter(|e| name.len() >= 4 && e.container_id.starts_with(name));
            let first = hits.next()?;
            hits.all(|e| e.container_id == first.container_id)
                .then_some(first)
        };
        if let Some(e) = by_name.or_else(by_id).filter(|_| prefix != Some("service")) {
            return Ok(container(text, &e.container_id, state));
        }
    }
    // A Swarm service: its tasks here and on other nodes (gossip) are
    // named `<service>.<slot or node>.<task id>`; one of them stands for
    // all (a service's tasks share their groups when the policy selects
    // them by service).
    // (A group of that name wins over a plain name: `service:` to choose.)
    let plain_service = prefix.is_none() && policy.group(name).is_none();
    if plain_service || prefix == Some("service") {
        let mut tasks: Vec<&crate::observe::state::EndpointState> = state
            .endpoints
            .iter()
            .filter(|e| is_task_of_service(&e.container, name))
            .collect();
        tasks.sort_by(|a, b| {
            (a.remote_node.is_some(), &a.container).cmp(&(b.remote_node.is_some(), &b.container))
        });
        tasks.dedup_by(|a, b| a.container_id == b.container_id);
        if let Some(first) = tasks.first() {
            let mut r = container(text, &first.container_id, state);
            let remote = tasks.iter().filter(|t| t.remote_node.is_some()).count();
            r.endpoint.notes.push(format!(
                "service {name}: {} task(s), {remote} on other nodes; explained for {}",
                tasks.len(),
                first.container
            ));
            if tasks.iter().any(|t| t.groups != first.groups) {
                r.endpoint.notes.push(
                    "its tasks are not all in the same groups: explain a task by name".to_string(),
                );
            }
            return Ok(r);
        }
    }
    if prefix != Some("container") && policy.group(name).is_some() {
        let groups = vec![name.to_string()];
        let mut r = plain(
            "group",
            groups.clone(),
            0,
            format!("a container in group \"{name}\" (and in no other group)"),
        );
        r.member = Some((format!("group:{name}"), groups));
        return Ok(r);
    }
    // A DNS name: what an address a container learned for it is judged as.
    if prefix.is_none() && name.contains('.') && !name.starts_with("*.") {
        if let Ok(n) = policy::fqdn::check_pattern(name) {
            let mut r = plain("name", Vec::new(), identity::WORLD, String::new());
            r.dns_name = Some(n);
            return Ok(r);
        }
    }
    let mut candidates: Vec<&str> = policy.groups.iter().map(|g| g.name.as_str()).collect();
    candidates.extend(state.endpoints.iter().map(|e| e.container.as_str()));
    candidates.extend(["world", "host", "unmanaged"]);
    let hint = match policy::did_you_mean(name, candidates) {
        Some(s) => format!("; did you mean {s:?}?"),
        None if state.endpoints.is_empty() => "; no running daemon's state was found, so only \
             groups, addresses, world, host and unmanaged can be named"
            .to_string(),
        None => "; name a running container, a Swarm service, a group of the policy, an IP address, world, \
                 host or unmanaged"
            .to_string(),
    };
    Err(ExplainError::Unknown {
        what,
        text: text.to_string(),
        hint,
    })
}

/// Whether container name `c` is a task name of Swarm service `service`
/// (`<service>.<slot or node id>.<task id>`).
fn is_task_of_service(c: &str, service: &str) -> bool {
    c.strip_prefix(service)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(slot, id)| !slot.is_empty() && !id.is_empty() && !id.contains('.'))
}

fn container(text: &str, id: &str, state: &State) -> Resolved {
    let eps: Vec<_> = state
        .endpoints
        .iter()
        .filter(|e| e.container_id == id)
        .collect();
    let first = eps[0];
    let mut notes = Vec::new();
    let addrs: Vec<String> = eps
        .iter()
        .filter_map(|e| e.ip.map(|ip| format!("{ip} on {}", e.network)))
        .collect();
    if let Some(node) = &first.remote_node {
        notes.push(format!(
            "a Swarm task on another node ({node}), known from the overlay's gossip: \
             that node's netiso judges its side, this node judges it by its overlay address"
        ));
    } else if !first.groups.is_empty() && !eps.iter().any(|e| e.enforced) {
        let why: Vec<&str> = state
            .unenforceable
            .iter()
            .filter(|u| u.container == first.container)
            .map(|u| u.reason.as_str())
            .collect();
        notes.push(format!(
            "not enforced at its own veth{}: only its peers' programs judge its traffic",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        ));
    }
    let groups = if first.groups.is_empty() {
        "in no group".to_string()
    } else {
        format!("groups {}", first.groups.join(", "))
    };
    Resolved {
        endpoint: Endpoint {
            text: text.to_string(),
            kind: "container",
            names: first.groups.clone(),
            identity: first.identity,
            description: format!(
                "container {} ({groups}{})",
                first.container,
                if addrs.is_empty() {
                    String::new()
                } else {
                    format!("; {}", addrs.join(", "))
                }
            ),
            notes,
        },
        member: Some((first.container_id.clone(), first.groups.clone())),
        addr: None,
        dns_name: None,
    }
}

/// The published port behind a packet from containers to the host, with
/// the identity and groups of the container it stands for: the kernel's
/// `PUBLISHED` map (unicast TCP/UDP leaving a container for a host address;
/// when two containers publish one port, the last listed wins, as there).
fn published_behind<'a>(
    state: &'a State,
    compiled: &Compiled,
    from: &Endpoint,
    to: &Endpoint,
    proto: u8,
    port: u16,
) -> Option<(&'a PublishedState, u32, Vec<String>)> {
    let from_containers = matches!(from.kind, "container" | "group" | "unmanaged");
    if !from_containers || to.kind != "host" || !matches!(proto, proto::TCP | proto::UDP) {
        return None;
    }
    let name = proto_name(proto);
    let p = state
        .published
        .iter()
        .rev()
        .find(|p| p.host_port == port && p.proto == name)?;
    let identity = *compiled.container_identity.get(&p.container_id)?;
    let ambiguous = state
        .published
        .iter()
        .filter(|o| o.host_port == port && o.proto == name)
        .any(|o| {
            compiled.container_identity.get(&o.container_id) != Some(&identity)
                || o.container_port != p.container_port
        });
    if ambiguous {
        return Some((p, identity::AMBIGUOUS_PUBLISHED, Vec::new()));
    }
    let groups = state
        .endpoints
        .iter()
        .find(|e| e.container_id == p.container_id)
        .map(|e| e.groups.clone())
        .unwrap_or_default();
    Some((p, identity, groups))
}

/// Fills in identities from the compiled tables.
fn finish(r: Resolved, compiled: &Compiled, policy: &Policy) -> Result<Endpoint, ExplainError> {
    let mut e = r.endpoint;
    if let Some((key, _)) = &r.member {
        e.identity = compiled.container_identity[key];
    }
    if let Some(n) = &r.dns_name {
        let peers: Vec<_> = compiled
            .fqdns
            .iter()
            .filter(|f| f.peer.matches(n))
            .collect();
        match peers.first() {
            None => {
                e.names = vec![policy::WORLD.to_string()];
                e.description = "a name no rule names: its addresses are judged as the world \
                                 (or the address blocks they are in)"
                    .to_string();
            }
            Some(first) => {
                e.identity = first.identity;
                e.names = compiled.names_of_identity(first.identity);
                e.description = format!(
                    "an address the source container learned for this name from a DNS answer it \
                     received (peer \"{}\"); one it did not resolve is judged as the world",
                    first.peer.name
                );
                for other in &peers[1..] {
                    e.notes.push(format!(
                        "the name is also one of peer \"{}\": the kernel judges the address as \
                         each, and the strongest decision wins",
                        other.peer.name
                    ));
                }
            }
        }
    }
    if let Some(ip) = r.addr {
        // The kernel: the CIDR trie, else world. The reference: the rules'
        // address blocks, read directly. They must name the same peers.
        e.identity = compiled.address_identity(ip);
        let mut kernel = compiled.names_of_identity(e.identity);
        let mut reference = policy.names_of_address(ip);
        e.names = reference.clone();
        kernel.sort();
        reference.sort();
        if kernel != reference {
            return Err(ExplainError::Disagree {
                packet: format!("the address {ip}"),
                kernel: format!("identity {} = {kernel:?}", e.identity),
                reference: format!("{reference:?}"),
            });
        }
        let blocks: Vec<&String> = e.names.iter().skip(1).collect();
        e.description = if blocks.is_empty() {
            "world (no container, not the host, in no address block of the policy)".to_string()
        } else {
            format!(
                "world, in address block{} {}",
                if blocks.len() == 1 { "" } else { "s" },
                blocks
                    .iter()
                    .map(|b| format!("\"{b}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
    }
    Ok(e)
}

/// `5432/tcp`, `53/udp`, `443` (tcp), `icmp`, `icmpv4`, `icmpv6`.
fn parse_probe(text: &str) -> Result<(String, u8, u16), ExplainError> {
    let bad = || ExplainError::Port(text.to_string());
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "icmp" | "icmpv4" => return Ok(("icmp".into(), proto::ICMP, 0)),
        "icmpv6" => return Ok(("icmpv6".into(), proto::ICMPV6, 0)),
        _ => {}
    }
    let (port, p) = t.split_once('/').unwrap_or((t.as_str(), "tcp"));
    let proto = match p {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        _ => return Err(bad()),
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((format!("{port}/{p}"), proto, port))
}

/// Without `--port`: one probe per port entry of the rules that could
/// apply between the two, then "other" TCP and UDP ports and ICMP.
fn default_probes(policy: &Policy, src: &[String], dst: &[String]) -> Vec<(String, u8, u16)> {
    let mut out: Vec<(String, u8, u16)> = Vec::new();
    let mut push = |label: String, proto: u8, port: u16| {
        if !out.iter().any(|(_, p, n)| (*p, *n) == (proto, port)) {
            out.push((label, proto, port));
        }
    };
    let named = |peer: &policy::Peer, names: &[String]| names.iter().any(|n| n == peer.name());
    let relevant: Vec<&policy::Rule> = policy
        .rules
        .iter()
        .filter(|r| named(&r.from, src) && named(&r.to, dst))
        .collect();
    let mut taken: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
    for r in &relevant {
        for spec in r.ports.iter().flatten() {
            if let PortSpec::Range { proto: p, lo, hi } = *spec {
                for &n in p.numbers() {
                    let label = if lo == hi {
                        format!("{lo}/{}", p.as_str())
                    } else {
                        format!("{lo}-{hi}/{}", p.as_str())
                    };
                    push(label, n, lo);
                    taken.entry(n).or_default().push((lo, hi));
                }
            }
        }
    }
    for (name, n) in [("tcp", proto::TCP), ("udp", proto::UDP)] {
        let ranges = taken.remove(&n).unwrap_or_default();
        // A representative of "every port no rule names".
        let free = (1..=u16::MAX).find(|p| !ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&p)));
        if let Some(port) = free {
            let label = if ranges.is_empty() {
                format!("{name} (any port)")
            } else {
                format!("{name} (other ports)")
            };
            push(label, n, port);
        }
    }
    push("icmp".into(), proto::ICMP, 0);
    push("icmpv6".into(), proto::ICMPV6, 0);
    out
}

/// The answer for people.
pub fn render(x: &Explanation) -> String {
    let mut s = String::new();
    let side = |s: &mut String, label: &str, e: &Endpoint| {
        let _ = writeln!(
            s,
            "{label}  {}: {} [identity {}]",
            e.text, e.description, e.identity
        );
        for n in &e.notes {
            let _ = writeln!(s, "        note: {n}");
        }
    };
    side(&mut s, "from", &x.from);
    side(&mut s, "to  ", &x.to);
    let _ = writeln!(s, "policy {}", x.policy);
    let _ = writeln!(s);
    let width = x.verdicts.iter().map(|v| v.packet.len()).max().unwrap_or(0);
    for v in &x.verdicts {
        let action = match v.action {
            "allow" => "ALLOW",
            "deny" => "DENY ",
            _ => "AUDIT",
        };
        let _ = writeln!(s, "{:<width$}  {action}  {}", v.packet, v.why);
    }
    s
}

impl Verdict {
    pub fn is_denied(&self) -> bool {
        self.action == Action::Deny.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::state::EndpointState;

    const POLICY: &str = r#"
[groups.web]
labels = { app = "web" }
egress = "deny"

[groups.db]
labels = { app = "db" }
ingress = "deny"

[[rules]]
from = "web"
to = "db"
ports = ["5432/tcp"]
action = "allow"
description = "web talks to its database"

[[rules]]
from = "web"
to = { cidr = "198.18.0.0/15", except = ["198.18.9.0/24"] }
ports = ["443/tcp"]
action = "allow"

[[rules]]
from = "web"
to = "world"
ports = ["80/tcp"]
action = "audit"

[[rules]]
from = "web"
to = { fqdn = "*.stripe.com" }
ports = ["8443/tcp"]
action = "allow"
"#;

    fn state() -> State {
        let ep = |id: &str, name: &str, groups: &[&str], ident: u32, ip: &str| EndpointState {
            container_id: id.to_string(),
            container: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            identity: ident,
            network: "shop".into(),
            ip: Some(ip.parse().unwrap()),
            enforced: !groups.is_empty(),
            ..EndpointState::default()
        };
        State {
            policy_path: "/somewhere/policy.toml".into(),
            endpoints: vec![
                ep("aaaa1111", "web-1", &["web"], 300, "172.20.0.2"),
                ep("bbbb2222", "db-1", &["db"], 301, "172.20.0.3"),
                ep("cccc3333", "plain", &[], identity::UNMANAGED, "172.20.0.4"),
            ],
            identities: BTreeMap::from([
                (300, vec!["web".to_string()]),
                (301, vec!["db".to_string()]),
            ]),
            published: vec![PublishedState {
                proto: "tcp".into(),
                host_port: 15432,
                container: "db-1".into(),
                container_id: "bbbb2222".into(),
                container_port: 5432,
            }],
            ..State::default()
        }
    }

    fn ask(from: &str, to: &str, port: Option<&str>) -> Result<Explanation, ExplainError> {
        let policy = policy::parse_str(POLICY, "p.toml").unwrap();
        let req = Request {
            from: from.into(),
            to: to.into(),
            port: port.map(Into::into),
            policy: None,
            state_dir: PathBuf::new(),
        };
        let host: [IpAddr; 1] = ["10.9.9.9".parse().unwrap()];
        explain(&policy, Path::new("p.toml"), &state(), &host, &req)
    }

    #[test]
    fn swarm_services_and_remote_tasks_resolve() {
        let mut st = state();
        let task = |id: &str, name: &str, node: Option<&str>, ip: &str| EndpointState {
            container_id: id.to_string(),
            container: name.to_string(),
            groups: vec!["web".into()],
            identity: 300,
            network: "ov".into(),
            ip: Some(ip.parse().unwrap()),
            enforced: node.is_none(),
            remote_node: node.map(Into::into),
            ..EndpointState::default()
        };
        st.endpoints.push(task(
            "remote:x:10.0.9.5",
            "front.2.bbb",
            Some("198.18.0.2"),
            "10.0.9.5",
        ));
        st.endpoints
            .push(task("dddd4444", "front.1.aaa", None, "10.0.9.4"));
        // A service named like a group.
        st.endpoints
            .push(task("eeee5555", "web.1.ccc", None, "10.0.9.7"));
        let policy = policy::parse_str(POLICY, "p.toml").unwrap();
        let req = |from: &str| Request {
            from: from.into(),
            to: "db-1".into(),
            port: Some("5432/tcp".into()),
            policy: None,
            state_dir: PathBuf::new(),
        };
        for from in ["front", "service:front"] {
            let x = explain(&policy, Path::new("p.toml"), &st, &[], &req(from)).unwrap();
            assert_eq!(x.from.identity, 300, "{from}");
            assert_eq!(x.verdicts[0].action, "allow");
            let text = render(&x);
            assert!(
                text.contains(
                    "service front: 2 task(s), 1 on other nodes; explained for front.1.aaa"
                ),
                "{text}"
            );
        }
        // A remote task by name or address: enforced by its own node.
        for from in ["front.2.bbb", "10.0.9.5"] {
            let x = explain(&policy, Path::new("p.toml"), &st, &[], &req(from)).unwrap();
            let text = render(&x);
            assert!(
                text.contains("a Swarm task on another node (198.18.0.2)"),
                "{text}"
            );
            assert!(!text.contains("not enforced at its own veth"), "{text}");
        }
        // On a Swarm node, the built-in deny of the data path beyond
        // containers, as the daemon compiles it.
        st.swarm_data_path_ports = vec![4789, 7789];
        let to_world = |port: &str| Request {
            from: "front".into(),
            to: "198.51.100.7".into(),
            port: Some(port.into()),
            policy: None,
            state_dir: PathBuf::new(),
        };
        let x = explain(
            &policy,
            Path::new("p.toml"),
            &st,
            &[],
            &to_world("4789/udp"),
        )
        .unwrap();
        let v = &x.verdicts[0];
        assert_eq!(
            (v.action, v.location.as_deref()),
            ("deny", Some("built-in"))
        );
        assert!(v.why.contains("overlay data path"), "{}", v.why);
        // Every data path port the daemon found (a swarm made with
        // `--data-path-port 7789`).
        let x = explain(
            &policy,
            Path::new("p.toml"),
            &st,
            &[],
            &to_world("7789/udp"),
        )
        .unwrap();
        assert_eq!(x.verdicts[0].location.as_deref(), Some("built-in"));
        let x = explain(
            &policy,
            Path::new("p.toml"),
            &st,
            &[],
            &to_world("4788/udp"),
        )
        .unwrap();
        assert_ne!(x.verdicts[0].location.as_deref(), Some("built-in"));
        let x = explain(&policy, Path::new("p.toml"), &st, &[], &req("front")).unwrap();
        assert_eq!(
            x.verdicts[0].action, "allow",
            "between containers: the policy's"
        );

        // A group's name wins over a service's; `service:` picks the service.
        let x = explain(&policy, Path::new("p.toml"), &st, &[], &req("web")).unwrap();
        assert_eq!(x.from.kind, "group");
        let x = explain(&policy, Path::new("p.toml"), &st, &[], &req("service:web")).unwrap();
        assert_eq!((x.from.kind, x.from.identity), ("container", 300));
        assert!(is_task_of_service("web.1.abc", "web"));
        assert!(is_task_of_service("web.n0d3.abc", "web"));
        assert!(!is_task_of_service("web.1", "web"));
        assert!(!is_task_of_service("webx.1.abc", "web"));
        assert!(!is_task_of_service("web.1.a.b", "web"));
    }

    #[test]
    fn containers_resolve_from_the_state_and_keep_their_identities() {
        let x = ask("web-1", "db-1", Some("5432/tcp")).unwrap();
        assert_eq!(x.from.identity, 300);
        assert_eq!(x.to.identity, 301);
        assert_eq!(x.from.kind, "container");
        let v = &x.verdicts[0];
        assert_eq!((v.action, v.rule_id), ("allow", 1));
        assert_eq!(v.location.as_deref(), Some("p.toml:10:1"));
        assert_eq!(v.description.as_deref(), Some("web talks to its database"));
        let text = render(&x);
        assert!(text.contains("5432/tcp  ALLOW  allowed by rule 1 (web -> db, 5432/tcp) at p.toml:10:1: web talks to its database"), "{text}");
        assert!(
            text.contains("container web-1 (groups web; 172.20.0.2 on shop)"),
            "{text}"
        );

        // By address and by id prefix, too.
        let x = ask("172.20.0.2", "bbbb", Some("5433")).unwrap();
        assert_eq!((x.from.text.as_str(), x.to.identity), ("172.20.0.2", 301));
        assert_eq!(x.verdicts[0].action, "deny");
        assert!(
            x.verdicts[0]
                .why
                .contains("source group \"web\" has egress = \"deny\""),
            "{:?}",
            x.verdicts[0]
        );
        let x = ask("plain", "db-1", Some("5432/tcp")).unwrap();
        assert_eq!(x.from.identity, identity::UNMANAGED);
        assert!(x.verdicts[0].why.contains("\"db\" has ingress = \"deny\""));
    }

    #[test]
    fn addresses_resolve_to_blocks_world_or_host() {
        let x = ask("web-1", "198.18.0.5", Some("443/tcp")).unwrap();
        assert_eq!(x.to.kind, "address");
        assert_eq!(x.to.identity, policy::FIRST_CIDR_IDENTITY);
        assert!(x
            .to
            .description
            .contains("198.18.0.0/15 except 198.18.9.0/24"));
        assert_eq!((x.verdicts[0].action, x.verdicts[0].rule_id), ("allow", 2));
        // The exception is plain world: the audit rule for the world applies.
        let x = ask("web-1", "198.18.9.1", Some("80/tcp")).unwrap();
        assert_eq!(x.to.identity, identity::WORLD);
        assert_eq!((x.verdicts[0].action, x.verdicts[0].rule_id), ("audit", 3));
        let x = ask("web-1", "198.18.9.1", Some("443/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        let x = ask("web-1", "10.9.9.9", Some("443/tcp")).unwrap();
        assert_eq!((x.to.kind, x.to.identity), ("host", identity::HOST));
        let x = ask("web-1", "2001:db8::1", Some("icmpv6")).unwrap();
        assert_eq!(x.to.identity, identity::WORLD);
    }

    #[test]
    fn published_host_ports_are_judged_as_the_container_behind_them() {
        // web may reach db on 5432/tcp; the host publishes db-1's 5432 as
        // 15432: the kernel judges web -> host:15432 as web -> db-1:5432.
        let x = ask("web-1", "host", Some("15432/tcp")).unwrap();
        let v = &x.verdicts[0];
        assert_eq!((v.action, v.rule_id), ("allow", 1), "{v:?}");
        assert!(
            v.why.starts_with(
                "the host publishes 15432/tcp for container db-1 (its port 5432): \
                 judged as reaching it there: allowed by rule 1"
            ),
            "{}",
            v.why
        );
        // From outside (no container veth): no published-port lookup.
        let x = ask("198.18.0.5", "host", Some("15432/tcp")).unwrap();
        assert!(
            !x.verdicts[0].why.contains("publishes"),
            "{:?}",
            x.verdicts[0]
        );
        // Another port of the host, or UDP on the same number: the host.
        let x = ask("web-1", "10.9.9.9", Some("15433/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        assert!(!x.verdicts[0].why.contains("publishes"));
        let x = ask("web-1", "host", Some("15432/udp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        // A container in no group reaching it meets db's ingress default,
        // exactly as if it had gone to db-1 itself.
        let x = ask("plain", "host", Some("15432/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        assert!(
            x.verdicts[0].why.contains("\"db\" has ingress = \"deny\""),
            "{:?}",
            x.verdicts[0]
        );
    }

    #[test]
    fn groups_and_summaries_without_a_port() {
        let x = ask("group:web", "db", None).unwrap();
        assert_eq!(x.from.identity, 300, "the daemon's number for {{web}}");
        assert_eq!(x.from.kind, "group");
        let packets: Vec<(&str, &str)> = x
            .verdicts
            .iter()
            .map(|v| (v.packet.as_str(), v.action))
            .collect();
        assert_eq!(
            packets,
            [
                ("5432/tcp", "allow"),
                ("tcp (other ports)", "deny"),
                ("udp (any port)", "deny"),
                ("icmp", "deny"),
                ("icmpv6", "deny"),
            ]
        );
        let x = ask("world", "web", Some("icmp")).unwrap();
        assert_eq!(x.verdicts[0].action, "allow");
    }

    #[test]
    fn unknown_names_and_ports_have_hints() {
        let e = ask("web-l", "db", None).unwrap_err().to_string();
        assert!(
            e.contains(
                "--from \"web-l\" is not a container, group or address; did you mean \"web-1\"?"
            ),
            "{e}"
        );
        let e = ask("web", "dbx", None).unwrap_err().to_string();
        assert!(e.contains("did you mean \"db\"?"), "{e}");
        let e = ask("container:web", "db", None).unwrap_err().to_string();
        assert!(e.contains("--from \"container:web\""), "{e}");
        let e = ask("web", "db", Some("5432/sctp")).unwrap_err().to_string();
        assert!(e.contains("bad --port \"5432/sctp\""), "{e}");
        assert_eq!(
            parse_probe("53/UDP").unwrap(),
            ("53/udp".into(), proto::UDP, 53)
        );
        assert_eq!(parse_probe("8080").unwrap().1, proto::TCP);
        assert!(parse_probe("0/tcp").is_err());
    }

    /// A DNS name: judged as an address the container learned for it.
    #[test]
    fn names_are_judged_as_their_peers() {
        let x = ask("web-1", "api.stripe.com", Some("8443/tcp")).unwrap();
        assert_eq!(x.to.kind, "name");
        assert_eq!(x.verdicts[0].action, "allow", "{:?}", x.verdicts);
        assert!(
            x.to.description.contains("fqdn:*.stripe.com"),
            "{}",
            x.to.description
        );
        let x = ask("web-1", "api.stripe.com", Some("9443/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        let x = ask("web-1", "example.com", Some("8443/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "deny");
        assert!(
            x.to.description.contains("no rule names"),
            "{}",
            x.to.description
        );
        // The world's rules apply to a name too.
        let x = ask("web-1", "api.stripe.com", Some("80/tcp")).unwrap();
        assert_eq!(x.verdicts[0].action, "audit");
    }
}
