//! Running external commands: echo them, run them, and fail with a message
//! that names the command and says how to fix it.
use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Renders a command the way a person would type it into a shell.
/// Environment variables set on the command come first; a `PATH` that
/// extends the current one is shown as `PATH=prefix:$PATH`.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    let current_path = std::env::var_os("PATH").unwrap_or_default();
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        let value = value.to_string_lossy();
        let shown = match key.to_str() {
            Some("PATH") => {
                let current = current_path.to_string_lossy();
                match value.strip_suffix(&*current) {
                    Some(prefix) if !current.is_empty() => format!("{prefix}$PATH"),
                    _ => quote(value.as_ref()),
                }
            }
            _ => quote(value.as_ref()),
        };
        parts.push(format!("{}={shown}", key.to_string_lossy()));
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: impl AsRef<OsStr>) -> String {
    let s = s.as_ref().to_string_lossy();
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@')
        });
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints `+ command` so that logs show what ran.
pub fn echo(cmd: &Command) {
    println!("+ {}", display(cmd));
    let _ = std::io::stdout().flush();
}

fn spawn_error(cmd: &Command) -> String {
    format!(
        "could not start `{}` (is `{}` installed and on PATH?)",
        display(cmd),
        cmd.get_program().to_string_lossy()
    )
}

/// Echoes and runs `cmd` with inherited stdout/stderr; fails unless it exits 0.
/// `hint` says how to fix a failure.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    echo(cmd);
    let status = cmd.status().with_context(|| spawn_error(cmd))?;
    if !status.success() {
        bail!("`{}` failed ({status}); {hint}", display(cmd));
    }
    Ok(())
}

/// Echoes and runs `cmd` with stdout and stderr captured together; returns
/// that text, or prints it and fails with `hint` unless it exits 0 (for
/// tools whose report we parse).
pub fn combined(cmd: &mut Command, hint: &str) -> Result<String> {
    echo(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| spawn_error(cmd))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        println!("{text}");
        bail!("`{}` failed ({}); {hint}", display(cmd), out.status);
    }
    Ok(text)
}

/// Runs `cmd` quietly and returns its stdout; fails (with its stderr) unless
/// it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| spawn_error(cmd))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` quietly: `Some(stdout)` when it exits 0, `None` when it exits
/// non-zero, an error only when it cannot be started.
pub fn probe(cmd: &mut Command) -> Result<Option<String>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| spawn_error(cmd))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Echoes and runs `producer | consumer`; fails unless both exit 0.
pub fn pipe(producer: &mut Command, consumer: &mut Command, hint: &str) -> Result<()> {
    println!("+ {} | {}", display(producer), display(consumer));
    let mut first = producer
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| spawn_error(producer))?;
    let stdout = first.stdout.take().expect("stdout is piped");
    let second = consumer.stdin(stdout).status();
    let first_status = first.wait().with_context(|| spawn_error(producer))?;
    let second_status = second.with_context(|| spawn_error(consumer))?;
    if !first_status.success() {
        bail!("`{}` failed ({first_status}); {hint}", display(producer));
    }
    if !second_status.success() {
        bail!("`{}` failed ({second_status}); {hint}", display(consumer));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        let mut cmd = Command::new("docker");
        cmd.args(["import", "-c", r#"CMD ["sh"]"#, "-", "netiso-busybox:test"]);
        assert_eq!(
            display(&cmd),
            r#"docker import -c 'CMD ["sh"]' - netiso-busybox:test"#
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'hi'"]).env("A", "b c");
        assert_eq!(display(&cmd), r#"A='b c' sh -c 'echo '\''hi'\'''"#);
    }

    #[test]
    fn display_abbreviates_extended_path() {
        let current = std::env::var("PATH").unwrap_or_default();
        if current.is_empty() {
            return;
        }
        let mut cmd = Command::new("cargo");
        cmd.env("PATH", format!("/usr/lib/llvm-22/bin:{current}"));
        assert_eq!(display(&cmd), "PATH=/usr/lib/llvm-22/bin:$PATH cargo");
    }

    #[test]
    fn run_reports_failure_with_hint() {
        let err = run(Command::new("false").arg("x"), "try again").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`false x` failed"), "{msg}");
        assert!(msg.contains("try again"), "{msg}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = output(&mut Command::new("netiso-no-such-program")).unwrap_err();
        assert!(format!("{err:#}").contains("is `netiso-no-such-program` installed"));
    }

    #[test]
    fn probe_and_pipe() {
        assert_eq!(
            probe(Command::new("true").arg("x")).unwrap(),
            Some(String::new())
        );
        assert_eq!(probe(&mut Command::new("false")).unwrap(), None);
        pipe(
            Command::new("echo").arg("hello"),
            Command::new("grep").arg("-q").arg("hello"),
            "",
        )
        .unwrap();
        assert!(pipe(
            Command::new("echo").arg("hello"),
            Command::new("grep").arg("-q").arg("bye"),
            ""
        )
        .is_err());
    }
}
