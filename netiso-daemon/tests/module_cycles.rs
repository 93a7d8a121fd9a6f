//! No import cycles between the modules of any crate of the workspace.
//!
//! `tests/layers.rs` checks that the daemon's layers only point down; this
//! checks the finer grain, in every crate: no two files (modules) of one
//! crate reach each other through `crate::…` or `super::…` paths, directly
//! or round a longer loop. A module's own submodules are part of it (a
//! parent may use its children and they it). No root, no Docker.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Module path (`observe::stats`) -> source, for every `.rs` under `src`.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                out.insert(parts.join("::"), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The longest module path `path` starts with.
fn resolve<'a>(mods: &'a BTreeMap<String, String>, path: &[&str]) -> Option<&'a str> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find_map(|p| mods.get_key_value(&p).map(|(k, _)| k.as_str()))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths named after `prefix` (`crate::` or `super::`): `a::b` and each
/// member of a `a::{b, c::d}` group.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let mut base = Vec::new();
        let mut s = rest;
        loop {
            let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
            if end == 0 {
                break;
            }
            base.push(s[..end].to_string());
            s = &s[end..];
            if let Some(t) = s.strip_prefix("::") {
                s = t;
            } else {
                break;
            }
        }
        if let Some(group) = s.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for member in body.split(',') {
                let first: String = member.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !first.is_empty() && first != "self" {
                    let mut p = base.clone();
                    p.push(first);
                    out.push(p);
                }
            }
        }
        if !base.is_empty() {
            out.push(base);
        }
    }
    out
}

/// Who uses whom, between modules (tests excluded: a test module may use
/// anything of its crate).
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut g: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (m, text) in mods {
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let own: Vec<&str> = if m.is_empty() {
            vec![]
        } else {
            m.split("::").collect()
        };
        let mut targets = Vec::new();
        for p in paths_after(code, "crate::") {
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            targets.extend(resolve(mods, &p));
        }
        for p in paths_after(code, "super::") {
            let mut full: Vec<&str> = own[..own.len().saturating_sub(1)].to_vec();
            full.extend(p.iter().map(String::as_str));
            targets.extend(resolve(mods, &full));
        }
        let entry = g.entry(m.as_str()).or_default();
        for t in targets {
            let related = t == m
                || t.is_empty()
                || m.starts_with(&format!("{t}::"))
                || t.starts_with(&format!("{m}::"));
            if !related {
                entry.insert(t);
            }
        }
    }
    g
}

/// A loop of modules, if there is one.
fn find_cycle<'a>(g: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        state.insert(n, 1);
        stack.push(n);
        for &next in g.get(n).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let at = stack.iter().position(|&s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for &n in g.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Every crate of the workspace with a `src/` folder.
fn crates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(workspace())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn no_crate_has_an_import_cycle() {
    let crates = crates();
    for want in ["netiso-common", "netiso-daemon", "netiso-ebpf", "xtask"] {
        assert!(
            crates.iter().any(|c| c.ends_with(want)),
            "crate {want} not found in {crates:?}"
        );
    }
    let mut cycles = Vec::new();
    for krate in &crates {
        let mods = modules(&krate.join("src"));
        if let Some(c) = find_cycle(&edges(&mods)) {
            cycles.push(format!(
                "{}: {}",
                krate.file_name().unwrap().to_string_lossy(),
                c.join(" -> ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_cycles_and_groups() {
    let mods: BTreeMap<String, String> = [
        ("", "mod a; mod b; mod c;"),
        ("a", "use crate::b::{x, y};"),
        ("b", "use crate::{c::z, d};"),
        ("c", "fn f() { super::a::g() }"),
        ("d", "use crate::a; // fine: d is not used by a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let g = edges(&mods);
    assert_eq!(g["b"], BTreeSet::from(["c", "d"]));
    let cycle = find_cycle(&g).expect("a -> b -> c -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    // Test modules are out of scope; parents and children are one.
    let ok: BTreeMap<String, String> = [
        (
            "a",
            "use crate::a::inner::x;\n#[cfg(test)] mod t { use crate::b; }",
        ),
        ("a::inner", "use super::y;"),
        ("b", "use crate::a::inner;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(find_cycle(&edges(&ok)), None);
}
