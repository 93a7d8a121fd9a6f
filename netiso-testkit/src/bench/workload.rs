//! Synthetic policies and containers of a given size, rendered as a netiso
//! policy file, as iptables rules and as an nftables ruleset with a set, so
//! that all three enforce the same thing.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Result};
use netiso_common::{family, IdentityInfo, IpKey};
use netiso_daemon::datapath::Desired;
use netiso_daemon::model::{Attachment, Container};
use netiso_daemon::{daemon, policy};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub ingress_deny: bool,
    pub egress_deny: bool,
}

#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub from: usize,
    pub to: usize,
    /// (protocol number, port)
    pub ports: Vec<(u8, u16)>,
}

/// Groups, rules and the containers in them.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub groups: Vec<GroupSpec>,
    pub rules: Vec<RuleSpec>,
    pub containers: Vec<Container>,
    /// Container indices per group.
    pub members: Vec<Vec<usize>>,
}

pub const GROUP_LABEL: &str = "netiso.group";

/// `n - 1` filler rules (one port each, never 80/53 or the traffic ports)
/// spread over every ordered pair of `groups` groups.
pub fn filler_rules(n: usize, groups: usize) -> Vec<RuleSpec> {
    let pairs: Vec<(usize, usize)> = (0..groups)
        .flat_map(|s| (0..groups).filter(move |&d| d != s).map(move |d| (s, d)))
        .collect();
    (0..n)
        .map(|k| {
            let (from, to) = pairs[k % pairs.len()];
            RuleSpec {
                from,
                to,
                ports: vec![(TCP, 10_000 + (k / pairs.len()) as u16)],
            }
        })
        .collect()
}

fn label_group(name: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        labels: vec![(GROUP_LABEL.into(), name.into())],
        ingress_deny: true,
        egress_deny: false,
    }
}

/// A container in `group` with addresses but no host-side veth (the
/// compiler gives it an identity; no program is attached for it).
pub fn container(i: usize, group: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Container {
    Container {
        published: Vec::new(),
        id: format!("bench-{i}"),
        name: format!("bench-{i}"),
        image: "netiso-busybox:test".into(),
        labels: BTreeMap::from([(GROUP_LABEL.to_string(), group.to_string())]),
        network_mode: "bench".into(),
        networks: vec![Attachment {
            network: "bench".into(),
            network_id: "bench".into(),
            ipv4: Some(ipv4),
            ipv6,
            mac: Some([0x02, 0xbe, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]),
            ipv4_prefix_len: None,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn v4(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i as u32)
}

pub fn v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xbe, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

impl Workload {
    /// The program-cost workload: `endpoints` containers in up to 50
    /// groups, `rules` rules. Container 0 (A, group g0, which denies by
    /// default both ways) is the local endpoint; container 1 (B, g1) the
    /// peer. Rule 1 lets A open 80/tcp and 53/udp to B; everything else
    /// from A is denied by default.
    pub fn program(rules: usize, endpoints: usize) -> Self {
        let ngroups = endpoints.clamp(2, 50);
        let mut w = Workload {
            groups: (0..ngroups)
                .map(|g| label_group(&format!("g{g}")))
                .collect(),
            members: vec![Vec::new(); ngroups],
            ..Default::default()
        };
        w.groups[0].egress_deny = true;
        for i in 0..endpoints {
            let g = i % ngroups;
            let c = container(
                i,
                &w.groups[g].name,
                v4(Ipv4Addr::new(10, 128, 0, 1), i),
                Some(v6(i + 1)),
            );
            w.members[g].push(i);
            w.containers.push(c);
        }
        w.rules.push(RuleSpec {
            from: 0,
            to: 1,
            ports: vec![(TCP, 80), (UDP, 53)],
        });
        w.rules
            .extend(filler_rules(rules.saturating_sub(1), ngroups));
        w
    }

    /// The traffic workload: the two real guests `a` (g0) and `b` (g1) plus
    /// one filler container (no veth) in each other group, and `rules`
    /// rules; the one that allows the measured traffic (g0 -> g1 on
    /// 5201/tcp, 7000/tcp, 7001/udp) sits in the middle of the list, where
    /// a linear rule list (iptables) pays for half of it.
    pub fn traffic(rules: usize, a: Container, b: Container, ngroups: usize) -> Self {
        let mut w = Workload {
            groups: (0..ngroups)
                .map(|g| label_group(&format!("g{g}")))
                .collect(),
            members: (0..ngroups).map(|g| vec![g]).collect(),
            ..Default::default()
        };
        w.containers.push(a);
        w.containers.push(b);
        for g in 2..ngroups {
            w.containers.push(container(
                g,
                &format!("g{g}"),
                v4(Ipv4Addr::new(10, 78, 0, 1), g),
                None,
            ));
        }
        let mut rs = filler_rules(rules.saturating_sub(1), ngroups);
        rs.insert(
            rs.len() / 2,
            RuleSpec {
                from: 0,
                to: 1,
                ports: TRAFFIC_PORTS.to_vec(),
            },
        );
        w.rules = rs;
        w
    }

    /// The policy file.
    pub fn toml(&self) -> String {
        let mut s = String::with_capacity(64 * (self.rules.len() + self.groups.len()));
        for g in &self.groups {
            let labels: Vec<String> = g
                .labels
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}"))
                .collect();
            let _ = writeln!(
                s,
                "[groups.{}]\nlabels = {{ {} }}",
                g.name,
                labels.join(", ")
            );
            if g.ingress_deny {
                s.push_str("ingress = \"deny\"\n");
            }
            if g.egress_deny {
                s.push_str("egress = \"deny\"\n");
            }
            s.push('\n');
        }
        for r in &self.rules {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|(p, port)| format!("\"{port}/{}\"", if *p == TCP { "tcp" } else { "udp" }))
                .collect();
            let _ = writeln!(
                s,
                "[[rules]]\nfrom = \"{}\"\nto = \"{}\"\nports = [{}]\naction = \"allow\"\n",
                self.groups[r.from].name,
                self.groups[r.to].name,
                ports.join(", ")
            );
        }
        s
    }

    /// Parses and compiles the policy file against the containers, the way
    /// the daemon does, and adds the IPv6 identities (for a daemon that does
    /// not do that itself yet). Returns the datapath contents and the
    /// number of policy map entries.
    pub fn desired(&self) -> Result<Desired> {
        let p = policy::parse_str(&self.toml(), "bench-policy.toml")
            .map_err(|e| anyhow!("generated policy rejected: {e}"))?;
        let compiled = policy::compile(&p, &self.containers, &mut Default::default())
            .map_err(|e| anyhow!("generated policy does not compile: {e}"))?;
        let mut d = build_desired(&compiled, &self.containers, &p);
        for c in &self.containers {
            let id = compiled.container_identity[&c.id];
            let flags = compiled.identities.get(&id).map_or(0, |def| def.flags);
            for a in &c.networks {
                if let Some(ip) = a.ipv6 {
                    let key = IpKey {
                        addr: ip.octets(),
                        family: family::V6,
                        ..Default::default()
                    };
                    d.identities.entry(key).or_insert(IdentityInfo {
                        identity: id,
                        flags,
                    });
                }
            }
        }
        Ok(d)
    }

    fn ipv4s(&self, group: usize) -> Vec<Ipv4Addr> {
        self.members[group]
            .iter()
            .flat_map(|&i| self.containers[i].ipv4s().collect::<Vec<_>>())
            .collect()
    }

    /// The same policy for `iptables-restore` (filter table, FORWARD chain,
    /// as seen by bridged traffic through br_netfilter): established
    /// connections first, one ACCEPT per rule, address pair and port, then
    /// the default (every group denies ingress): DROP.
    pub fn iptables_restore(&self) -> String {
        let mut s = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        s.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        for r in &self.rules {
            for src in self.ipv4s(r.from) {
                for dst in self.ipv4s(r.to) {
                    for (p, port) in &r.ports {
                        let proto = if *p == TCP { "tcp" } else { "udp" };
                        let _ = writeln!(
                            s,
                            "-A FORWARD -s {src}/32 -d {dst}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT"
                        );
                    }
                }
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The same policy for `nft -f`: one set of (saddr, daddr, proto, port)
    /// and two rules in a forward chain that drops by default.
    pub fn nft_script(&self, table: &str) -> String {
        let mut elems = Vec::new();
        for r in &self.rules {
            for src in self.ipv4s(r.from) {
                for dst in self.ipv4s(r.to) {
                    for (p, port) in &r.ports {
                        let proto = if *p == TCP { "tcp" } else { "udp" };
                        elems.push(format!("{src} . {dst} . {proto} . {port}"));
                    }
                }
            }
        }
        format!(
            "table inet {table} {{\n  set allowed {{\n    type ipv4_addr . ipv4_addr . inet_proto . inet_service\n    flags constant\n    elements = {{ {} }}\n  }}\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    ip saddr . ip daddr . meta l4proto . th dport @allowed accept\n  }}\n}}\n",
            elems.join(",\n      ")
        )
    }
}

/// The daemon's own mapping from a compiled policy to map contents (every
/// network is a plain bridge here). One place to follow its signature.
pub fn build_desired(
    compiled: &policy::Compiled,
    containers: &[Container],
    p: &policy::Policy,
) -> Desired {
    daemon::build_desired(compiled, containers, p, &BTreeMap::new()).0
}

/// The ports the traffic bench uses: iperf3, TCP connections, UDP packets.
pub const TRAFFIC_PORTS: [(u8, u16); 3] = [(TCP, 5201), (TCP, 7000), (UDP, 7001)];
