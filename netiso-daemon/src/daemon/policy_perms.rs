//! Who could change the policy? Anyone who can write the policy file, the
//! policy directory, or any directory on the way to them, decides what
//! every container may reach. The daemon runs as root, so it refuses a
//! policy that a non-root user could change (like sshd's `StrictModes`),
//! unless `--allow-insecure-policy-permissions` (or the configuration key
//! `allow_insecure_policy_permissions = true`) turns the refusal into a
//! warning.
//!
//! Trusted: owned by root (or by the daemon's own user), not writable by
//! others, writable by the group only when the group is root's. Ancestor
//! directories may also be world-writable with the sticky bit (like
//! `/tmp`): nobody else can replace what lies in them. The policy
//! directory itself may not: anyone could add a file to it.
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

/// Set once from the configuration at start.
static ALLOW_INSECURE: AtomicBool = AtomicBool::new(false);

pub fn set_allow_insecure(on: bool) {
    ALLOW_INSECURE.store(on, Ordering::Relaxed);
}

pub fn allow_insecure() -> bool {
    ALLOW_INSECURE.load(Ordering::Relaxed)
}

#[derive(Debug, Error)]
pub enum PermsError {
    #[error("cannot check the permissions of {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "refusing the policy {path}: {}\n  fix: `chown root: PATH && chmod go-w PATH` for each, \
         or start the daemon with --allow-insecure-policy-permissions \
         (configuration key allow_insecure_policy_permissions = true) to only warn",
        problems.join("; ")
    )]
    Insecure {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// What is wrong with one file or directory, if anything. `sticky_ok`: a
/// sticky, world-writable directory owned by root is fine (an ancestor).
fn problem(path: &Path, meta: &std::fs::Metadata, sticky_ok: bool) -> Option<String> {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode();
    let kind = if meta.is_dir() { "directory" } else { "file" };
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "{kind} {} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    let sticky = mode & libc::S_ISVTX != 0 && meta.is_dir();
    if mode & libc::S_IWOTH != 0 && !(sticky_ok && sticky) {
        return Some(format!(
            "{kind} {} is writable by every user (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    if mode & libc::S_IWGRP != 0 && meta.gid() != 0 && !(sticky_ok && sticky) {
        return Some(format!(
            "{kind} {} is writable by group {} (mode {:o})",
            path.display(),
            meta.gid(),
            mode & 0o7777
        ));
    }
    None
}

/// Every reason a non-root user could change the policy at `path` (a file
/// or a directory of `*.toml` files), following symbolic links to what
/// they name.
pub fn problems(path: &Path) -> Result<Vec<String>, PermsError> {
    let io = |p: &Path, error| PermsError::Io {
        path: p.to_path_buf(),
        error,
    };
    let real = std::fs::canonicalize(path).map_err(|e| io(path, e))?;
    let mut out = Vec::new();
    let check = |p: &Path, sticky_ok: bool, out: &mut Vec<String>| -> Result<(), PermsError> {
        let meta = std::fs::metadata(p).map_err(|e| io(p, e))?;
        out.extend(problem(p, &meta, sticky_ok));
        Ok(())
    };
    let mut targets = vec![real.clone()];
    if real.is_dir() {
        for entry in std::fs::read_dir(&real).map_err(|e| io(&real, e))? {
            let p = entry.map_err(|e| io(&real, e))?.path();
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                // A link may lead out of the directory: check where it goes.
                targets.push(std::fs::canonicalize(&p).map_err(|e| io(&p, e))?);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &targets {
        check(t, false, &mut out)?;
        for dir in t.ancestors().skip(1) {
            if seen.insert(dir.to_path_buf()) {
                check(dir, true, &mut out)?;
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// Refuses the policy at `path` when a non-root user could change it, or
/// only returns the problems as warnings when insecure permissions are
/// allowed.
pub fn check(path: &Path) -> Result<Vec<String>, PermsError> {
    let found = problems(path)?;
    if found.is_empty() || allow_insecure() {
        return Ok(found);
    }
    Err(PermsError::Insecure {
        path: path.to_path_buf(),
        problems: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated CString that lives across the
        // call; chown only reads the path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
    }

    #[test]
    fn only_root_may_be_able_to_write_the_policy() {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (chown)");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, "").unwrap();
        chmod(&file, 0o644);
        assert_eq!(problems(&file).unwrap(), Vec::<String>::new());
        assert_eq!(problems(dir.path()).unwrap(), Vec::<String>::new());

        chmod(&file, 0o664);
        chown(&file, 0, 0);
        assert!(
            problems(&file).unwrap().is_empty(),
            "root's group may write"
        );
        chown(&file, 0, 100);
        let p = problems(&file).unwrap();
        assert!(p[0].contains("writable by group 100"), "{p:?}");
        chmod(&file, 0o646);
        let p = problems(&file).unwrap();
        assert!(p[0].contains("writable by every user"), "{p:?}");
        chmod(&file, 0o644);
        chown(&file, 1000, 0);
        let p = problems(&file).unwrap();
        assert!(p[0].contains("owned by uid 1000"), "{p:?}");
        // A directory of policies: its files count too.
        assert_eq!(problems(dir.path()).unwrap().len(), 1);
        chown(&file, 0, 0);

        // A directory on the way that others may write.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let inner = sub.join("p.toml");
        std::fs::write(&inner, "").unwrap();
        chmod(&sub, 0o777);
        let p = problems(&inner).unwrap();
        assert!(
            p.iter()
                .any(|m| m.contains("sub is writable by every user")),
            "{p:?}"
        );
        // Sticky like /tmp: fine on the way, not as the policy directory.
        chmod(&sub, 0o1777);
        assert!(problems(&inner).unwrap().is_empty());
        assert_eq!(problems(&sub).unwrap().len(), 1);
        chmod(&sub, 0o755);

        // A link is judged by what it names.
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        chmod(&file, 0o666);
        assert_eq!(problems(&link).unwrap().len(), 1);

        // Refused, or only warned about when allowed.
        let err = check(&link).unwrap_err().to_string();
        assert!(err.contains("refusing the policy"), "{err}");
        assert!(err.contains("--allow-insecure-policy-permissions"), "{err}");
        set_allow_insecure(true);
        assert_eq!(check(&link).unwrap().len(), 1);
        set_allow_insecure(false);
    }
}
