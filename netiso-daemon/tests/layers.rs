//! The layers of `netiso-daemon/src` (ARCHITECTURE.md, "Layers"): every
//! `crate::<layer>` path in a layer's files names a layer below it, so the
//! arrows only point down. Reads the source; needs neither root nor Docker.
use std::path::Path;

/// Bottom first: a layer may use only those before it.
const LAYERS: &[&str] = &[
    "model", "policy", "host", "datapath", "observe", "api", "daemon", "cli",
];

fn sources(path: &Path, out: &mut Vec<(String, String)>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push((
            path.display().to_string(),
            std::fs::read_to_string(path).unwrap(),
        ));
    }
}

/// The top-level modules a source text names as `crate::<name>` or
/// `crate::{<name>, ...}`.
fn uses(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, m) in text.match_indices("crate::") {
        let rest = &text[i + m.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
            }
            None => out.push(ident(rest)),
        }
    }
    out
}

#[test]
fn arrows_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        sources(&src.join(format!("{layer}.rs")), &mut files);
        assert!(!files.is_empty(), "no sources for layer {layer}");
        for (file, text) in &files {
            for used in uses(text) {
                match LAYERS.iter().position(|l| *l == used) {
                    Some(r) if r <= rank => {}
                    _ => bad.push(format!("{file}: {layer} uses crate::{used}")),
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "arrows pointing up or sideways:\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_top_level_module_is_a_layer() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let mut mods: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    mods.sort_unstable();
    let mut layers = LAYERS.to_vec();
    layers.sort_unstable();
    assert_eq!(mods, layers);
}
