//! The layers of `netiso-daemon/src` (ARCHITECTURE.md, "Layers"): every
//! `crate::<layer>` path in a layer's files names a layer below it, so the
//! arrows only point down. The bottom two layers are the `netiso-policy`
//! crate: checked to stay pure (its manifest) and free of module cycles
//! (its files against the module list in its `lib.rs`). Reads the source;
//! needs neither root nor Docker.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom first: a layer may use only those before it.
const LAYERS: &[&str] = &[
    "model", "policy", "host", "datapath", "observe", "api", "daemon", "cli",
];

/// Layers that `lib.rs` re-exports from the `netiso-policy` crate (`model`
/// is its `container` module) instead of declaring them in `src`.
const FROM_POLICY_CRATE: &[&str] = &["model", "policy"];

/// Crates the policy compiler must not depend on, even for its tests:
/// Cargo then keeps it pure.
const IMPURE: &[&str] = &["aya", "tokio", "bollard", "netlink"];

fn policy_crate() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("netiso-policy")
}

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
        if FROM_POLICY_CRATE.contains(layer) {
            assert!(
                !src.join(layer).exists() && !src.join(format!("{layer}.rs")).exists(),
                "layer {layer} is the netiso-policy crate, yet has sources in netiso-daemon/src"
            );
            continue;
        }
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
    // `pub mod x;` in src; `pub mod x {` or `pub use netiso_policy... as x;`
    // for the layers of the policy crate.
    let mut mods: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim_end_matches(" {"))
        .collect();
    let reexported: Vec<&str> = lib
        .lines()
        .filter(|l| {
            l.starts_with("pub use netiso_policy") || l.starts_with("    pub use netiso_policy::*;")
        })
        .filter_map(|l| {
            l.trim_end_matches(';')
                .rsplit_once(" as ")
                .map(|(_, name)| name)
        })
        .collect();
    mods.extend(&reexported);
    mods.sort_unstable();
    let mut layers = LAYERS.to_vec();
    layers.sort_unstable();
    assert_eq!(mods, layers);
    for layer in FROM_POLICY_CRATE {
        let from_crate = reexported.contains(layer)
            || lib.contains(&format!(
                "pub mod {layer} {{\n    pub use netiso_policy::*;"
            ));
        assert!(
            from_crate,
            "lib.rs must take layer {layer} from netiso-policy"
        );
    }
}

/// The policy compiler's manifest names none of the impure crates, and
/// takes netiso-common without its `user` feature (which brings aya).
#[test]
fn the_policy_crate_is_pure() {
    let path = policy_crate().join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let mut tables = Vec::new();
    for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
        tables.extend(manifest.get(key).and_then(|t| t.as_table()));
    }
    // `[target.'cfg(...)'.dependencies]` too.
    for target in manifest
        .get("target")
        .and_then(|t| t.as_table())
        .into_iter()
        .flat_map(|t| t.values())
    {
        for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
            tables.extend(target.get(key).and_then(|t| t.as_table()));
        }
    }
    assert!(
        !tables.is_empty(),
        "{}: no dependencies read",
        path.display()
    );
    let mut bad = Vec::new();
    for (name, spec) in tables.iter().flat_map(|t| t.iter()) {
        // A renamed dependency names its crate in `package`.
        let krate = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
        if IMPURE.iter().any(|i| krate.contains(i)) {
            bad.push(format!("depends on {krate}"));
        }
        let features = spec.get("features").and_then(|f| f.as_array());
        if krate == "netiso-common"
            && features.is_some_and(|f| f.iter().any(|x| x.as_str() == Some("user")))
        {
            bad.push("netiso-common with feature `user` (aya)".to_string());
        }
    }
    assert!(bad.is_empty(), "{}:\n{}", path.display(), bad.join("\n"));
}

/// `lib.rs` of netiso-policy lists its modules as `//! - `name`: role.
/// Uses `a`, `b`.` (or `Uses nothing.`), bottom first. Every `crate::<m>`
/// path of a module's file is in its list, every module is listed after
/// those it uses (so there is no cycle), and every listed module exists.
#[test]
fn the_policy_crate_has_no_module_cycles() {
    let src = policy_crate().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let header: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ");
    // Each entry: "- `name` ...: role. Uses `a`, `b`.", until the next.
    let mut listed: Vec<(String, BTreeSet<String>)> = Vec::new();
    for entry in header.split(" - `").skip(1) {
        let (name, rest) = entry.split_once('`').unwrap();
        let uses = match rest.split_once("Uses ") {
            // Up to the sentence's end: module names have no dots.
            Some((_, uses)) => uses[..uses.find('.').unwrap_or(uses.len())]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect(),
            None => panic!("lib.rs: module {name} does not say what it uses"),
        };
        listed.push((name.to_string(), uses));
    }
    assert!(
        listed.len() >= 10,
        "lib.rs lists only {} modules",
        listed.len()
    );

    let mut files = Vec::new();
    sources(&src, &mut files);
    let on_disk: BTreeMap<String, &String> = files
        .iter()
        .map(|(file, text)| {
            let stem = Path::new(file)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string();
            (stem, text)
        })
        .collect();
    let mut bad = Vec::new();
    for (rank, (name, uses)) in listed.iter().enumerate() {
        let Some(text) = on_disk.get(name) else {
            bad.push(format!("{name}: listed, but there is no {name}.rs"));
            continue;
        };
        for used in uses {
            match listed.iter().position(|(n, _)| n == used) {
                Some(r) if r < rank => {}
                _ => bad.push(format!("{name} uses {used}, which is not listed before it")),
            }
        }
        for used in self::uses(text) {
            if !uses.contains(&used) {
                bad.push(format!("{name}.rs uses crate::{used}, not in its list"));
            }
        }
    }
    // Every module but the root and the crate's own tests is listed.
    for stem in on_disk.keys() {
        if !matches!(stem.as_str(), "lib" | "tests") && !listed.iter().any(|(n, _)| n == stem) {
            bad.push(format!("{stem}.rs is not listed in lib.rs"));
        }
    }
    assert!(bad.is_empty(), "netiso-policy modules:\n{}", bad.join("\n"));
}

/// Every crate holds the workspace lints, and the fuzz workspace (its own
/// workspace, so it carries a copy) holds the same ones.
#[test]
fn every_crate_holds_the_workspace_lints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let read = |p: &Path| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let workspace = read(&root.join("Cargo.toml"));
    let lints = &workspace["workspace"]["lints"];
    for member in workspace["workspace"]["members"].as_array().unwrap() {
        let manifest = read(&root.join(member.as_str().unwrap()).join("Cargo.toml"));
        assert_eq!(
            manifest.get("lints").and_then(|l| l.get("workspace")),
            Some(&toml::Value::Boolean(true)),
            "{member}/Cargo.toml needs `[lints] workspace = true`"
        );
    }
    let fuzz = read(&root.join("fuzz/Cargo.toml"));
    assert_eq!(
        fuzz.get("lints"),
        Some(lints),
        "fuzz/Cargo.toml's [lints] must equal [workspace.lints]"
    );
}

/// ARCHITECTURE.md names every module of every crate (by its file name,
/// or its folder for a folder of one concern such as the bench harness):
/// a new file without a line there fails here.
#[test]
fn architecture_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let crates = [
        "netiso-common",
        "netiso-ebpf",
        "netiso-policy",
        "netiso-daemon",
        "netiso-testkit",
        "xtask",
    ];
    let mut missing = Vec::new();
    for krate in crates {
        let src = root.join(krate).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        for (full, _) in files {
            let rel = Path::new(&full)
                .strip_prefix(&src)
                .unwrap()
                .display()
                .to_string();
            let path = Path::new(&rel);
            let name = path.file_name().unwrap().to_str().unwrap();
            if ["lib.rs", "main.rs", "mod.rs"].contains(&name) {
                continue;
            }
            let folder = path
                .parent()
                .and_then(|p| p.file_name())
                .map(|f| format!("`{}/`", f.to_str().unwrap()));
            let named = doc.contains(&format!("`{name}`"))
                || doc.contains(&format!("`{rel}`"))
                || folder.is_some_and(|f| doc.contains(&f));
            if !named {
                missing.push(format!("{krate}/src/{rel}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules: {missing:?}"
    );
}
