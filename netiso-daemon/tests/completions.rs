//! `netiso completions` and `netiso man`: what the .deb installs works in
//! the shell and in man. No root, no Docker.
use std::process::Command;

fn netiso(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_netiso"))
        .args(args)
        .output()
        .expect("running netiso");
    assert!(
        out.status.success(),
        "netiso {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What bash offers after `words` (the last one being completed).
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("netiso.bash");
    std::fs::write(&file, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _netiso netiso '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &line])
        .output()
        .expect("bash is needed to check the bash completions");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags() {
    let script = String::from_utf8(netiso(&["completions", "bash"]).stdout).unwrap();
    let mut st = bash_complete(&script, &["netiso", "st"]);
    st.sort();
    assert_eq!(st, ["stats", "status"]);
    let mut flags = bash_complete(&script, &["netiso", "stats", "--so"]);
    flags.sort();
    assert_eq!(flags, ["--socket", "--sort"]);
    let policy = bash_complete(&script, &["netiso", "policy", ""]);
    for sub in ["check", "graph"] {
        assert!(policy.iter().any(|w| w == sub), "{policy:?}");
    }
}

#[test]
fn every_shell_gets_a_script_and_a_bad_one_is_refused() {
    for (shell, marker) in [
        ("bash", "complete -F _netiso"),
        ("zsh", "#compdef netiso"),
        ("fish", "complete -c netiso"),
    ] {
        let script = String::from_utf8(netiso(&["completions", shell]).stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(
            script.contains("verify"),
            "{shell} lacks the verify command"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_netiso"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values: bash"));
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    netiso(&["man", "--dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "netiso.1",
        "netiso-daemon.1",
        "netiso-stats.1",
        "netiso-status.1",
        "netiso-monitor.1",
        "netiso-verify.1",
        "netiso-explain.1",
        "netiso-policy-check.1",
        "netiso-policy-graph.1",
        "netiso-cleanup.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    let stats = std::fs::read_to_string(dir.path().join("netiso-stats.1")).unwrap();
    assert!(
        stats.starts_with(".ie") || stats.contains(".TH netiso-stats 1"),
        "{stats}"
    );
    assert!(
        stats.contains("\\-\\-container"),
        "the flags are documented"
    );
}
