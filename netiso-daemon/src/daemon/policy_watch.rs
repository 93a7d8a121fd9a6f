//! Reload the policy when its file (or any `*.toml` of its directory)
//! changes.
//!
//! Polling, not inotify: editors replace files by rename, directories get
//! new files, and config management writes through symlinks; comparing the
//! contents once a second sees all of them with no special cases, and
//! costs nothing for files of this size. A change is only reported once the
//! contents have stayed the same for [`SETTLE`], so a file caught half
//! written is not loaded.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::control::Control;

pub const POLL: Duration = Duration::from_secs(1);
pub const SETTLE: Duration = Duration::from_millis(300);

/// A digest of everything a reload would read: the policy file's contents,
/// or the names and contents of the directory's `*.toml` files. Unreadable
/// things hash as such, so that their appearance is a change too.
pub fn fingerprint(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            "dir".hash(&mut h);
            for f in files {
                f.hash(&mut h);
                std::fs::read(&f).ok().hash(&mut h);
            }
        }
        Ok(_) => std::fs::read(path).ok().hash(&mut h),
        Err(_) => "missing".hash(&mut h),
    }
    h.finish()
}

/// Watches `path` until the daemon goes away, sending
/// [`Control::PolicyFileChanged`] after each settled change.
pub fn spawn(path: PathBuf, control: mpsc::Sender<Control>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let fp = |p: PathBuf| async move {
            tokio::task::spawn_blocking(move || fingerprint(&p))
                .await
                .unwrap_or_default()
        };
        let mut last = fp(path.clone()).await;
        loop {
            tokio::time::sleep(POLL).await;
            let mut now = fp(path.clone()).await;
            if now == last {
                continue;
            }
            // Wait until the contents hold still.
            loop {
                tokio::time::sleep(SETTLE).await;
                let again = fp(path.clone()).await;
                if again == now {
                    break;
                }
                now = again;
            }
            last = now;
            tracing::info!(path = %path.display(), "policy changed on disk; reloading");
            if control.send(Control::PolicyFileChanged).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_contents_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        let missing = fingerprint(&f);
        std::fs::write(&f, "a").unwrap();
        let a = fingerprint(&f);
        assert_ne!(a, missing);
        std::fs::write(&f, "a").unwrap();
        assert_eq!(fingerprint(&f), a, "rewriting the same bytes is no change");
        std::fs::write(&f, "b").unwrap();
        assert_ne!(fingerprint(&f), a);
    }

    #[test]
    fn directory_fingerprint_covers_toml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.toml"), "1").unwrap();
        let one = fingerprint(d);
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        assert_eq!(fingerprint(d), one, "other files do not count");
        std::fs::write(d.join("b.toml"), "2").unwrap();
        let two = fingerprint(d);
        assert_ne!(two, one, "a new policy file counts");
        std::fs::write(d.join("b.toml"), "3").unwrap();
        assert_ne!(fingerprint(d), two, "a changed policy file counts");
        std::fs::remove_file(d.join("b.toml")).unwrap();
        assert_eq!(fingerprint(d), one);
    }

    #[tokio::test]
    async fn reports_a_settled_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "a").unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = spawn(f.clone(), tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&f, "b").unwrap();
        let got = tokio::time::timeout(POLL * 3, rx.recv()).await;
        assert!(
            matches!(got, Ok(Some(Control::PolicyFileChanged))),
            "{got:?}"
        );
        // No second report without a second change.
        let again = tokio::time::timeout(POLL * 2, rx.recv()).await;
        assert!(again.is_err(), "{again:?}");
        task.abort();
    }
}
