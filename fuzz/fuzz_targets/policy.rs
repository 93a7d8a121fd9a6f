//! Policy text -> parse -> compile, with the kernel's lookup checked
//! against the reference evaluation.
//!
//! Any text must give a policy or diagnostics, never a panic, and the
//! diagnostics must render. A policy that parses is compiled for a few
//! containers made from the strings the text itself mentions (so that its
//! selectors match something), and for every pair of peers (those
//! containers, the host, addresses named in the text and a few others) and
//! a set of protocol/port probes, `Compiled::lookup` (what the kernel
//! does) must give the action and rule `evaluate` (the definition) gives.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use netiso_common::{identity, proto};
use netiso_policy::container::{Attachment, Container};
use netiso_policy::{compile, evaluate, parse_str, render, IdentityAllocator, HOST};

/// Quoted strings of the text (no escapes), the first few, short ones.
fn literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find(['"', '\n']) else {
            break;
        };
        let lit = &after[..end];
        if !lit.is_empty() && lit.len() <= 40 && !out.iter().any(|l: &String| l == lit) {
            out.push(lit.to_string());
        }
        if out.len() >= 16 {
            break;
        }
        rest = &after[end + 1..];
    }
    out
}

/// Up to four containers whose names, images, labels and networks come
/// from `lits`, each a different mix.
fn containers(lits: &[String]) -> Vec<Container> {
    let fallback = ["a".to_string()];
    let lits = if lits.is_empty() { &fallback[..] } else { lits };
    let at = |i: usize| lits[i % lits.len()].clone();
    (0..lits.len().clamp(1, 4))
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert(at(i + 2), at(i + 3));
            labels.insert("netiso.group".to_string(), at(i));
            labels.insert("com.docker.compose.project".to_string(), at(i + 1));
            labels.insert("com.docker.compose.service".to_string(), at(i + 5));
            Container {
                published: Vec::new(),
                id: format!("c{i}"),
                name: at(i),
                image: at(i + 1),
                labels,
                pid: 0,
                network_mode: at(i + 4),
                networks: vec![Attachment {
                    network: at(i + 4),
                    network_id: format!("n{i}"),
                    ..Attachment::default()
                }],
                remote_node: None,
            }
        })
        .collect()
}

/// Addresses the text names (CIDR blocks by their first address and the
/// one after), and a few fixed ones.
fn addresses(lits: &[String]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for l in lits {
        let Ok(ip) = l.split('/').next().unwrap_or("").parse::<IpAddr>() else {
            continue;
        };
        let next = match ip {
            IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
            IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
        };
        out.extend([ip, next]);
        if out.len() >= 6 {
            break;
        }
    }
    for fixed in ["198.18.0.1", "10.1.2.3", "fd00::1", "2001:db8::1"] {
        out.push(fixed.parse().unwrap());
    }
    out
}

/// Protocol/port probes: fixed ones, and the edges of the ports the text
/// names (`N/tcp`, `N-M/udp`).
fn probes(lits: &[String]) -> Vec<(u8, u16)> {
    let mut out = vec![
        (proto::TCP, 1),
        (proto::TCP, 80),
        (proto::TCP, 65535),
        (proto::UDP, 53),
        (proto::ICMP, 0),
        (proto::ICMPV6, 0),
        (132, 0),
    ];
    for l in lits {
        let (ports, p) = match l.split_once('/') {
            Some((ports, "tcp")) => (ports, proto::TCP),
            Some((ports, "udp")) => (ports, proto::UDP),
            _ => continue,
        };
        let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
        for edge in [lo.parse::<u16>().ok(), hi.parse::<u16>().ok()]
            .into_iter()
            .flatten()
        {
            out.extend([
                (p, edge),
                (p, edge.saturating_sub(1)),
                (p, edge.saturating_add(1)),
            ]);
        }
        if out.len() >= 20 {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match parse_str(text, "fuzz.toml") {
        Ok(p) => p,
        Err(e) => {
            // Diagnostics must render (spans inside the text, no panic).
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = render(&policy.warnings);
    let lits = literals(text);
    let containers = containers(&lits);
    let Ok(compiled) = compile(&policy, &containers, &mut IdentityAllocator::new()) else {
        // Only "does not fit in the kernel maps" may fail here.
        return;
    };

    let mut peers: Vec<(String, u32, Vec<String>)> = containers
        .iter()
        .map(|c| {
            let id = compiled.container_identity[&c.id];
            let groups = policy.groups_of(c);
            if groups.is_empty() {
                assert_eq!(id, identity::UNMANAGED, "{} is in no group", c.name);
            } else {
                assert!(id >= identity::FIRST_GROUP_IDENTITY, "{}: {id}", c.name);
            }
            (c.name.clone(), id, groups)
        })
        .collect();
    peers.push(("host".into(), identity::HOST, vec![HOST.to_string()]));
    for ip in addresses(&lits) {
        let id = compiled.address_identity(ip);
        let names = policy.names_of_address(ip);
        // The trie's identity stands for exactly the peers the address is in.
        let mut got = compiled.names_of_identity(id);
        got.sort();
        let mut want = names.clone();
        want.sort();
        assert_eq!(got, want, "address {ip} -> identity {id}\n{text}");
        peers.push((ip.to_string(), id, names));
    }
    let probes = probes(&lits);
    for (src_name, src, src_groups) in &peers {
        for (dst_name, dst, dst_groups) in &peers {
            for &(p, port) in &probes {
                let want = evaluate(&policy, src_groups, dst_groups, p, port);
                let got = compiled.lookup(*src, *dst, p, port);
                assert_eq!(
                    (got.action, got.rule_id),
                    (want.action, want.rule_id),
                    "{src_name} {src_groups:?} -> {dst_name} {dst_groups:?} proto {p} port {port}\n\
                     kernel: {}\nreference: {}\n{text}",
                    got.why,
                    want.why
                );
            }
        }
    }
});
