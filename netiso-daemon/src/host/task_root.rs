//! Files inside a running container's root, reached from the host through
//! `/proc/<pid>/root` without letting the container steer the daemon out
//! of it. Path lookups are resolved *in* that root (`openat2` with
//! `RESOLVE_IN_ROOT`: an absolute symlink or `..` the container planted
//! stays inside it, no `/proc` magic link is followed), a file read must
//! be a regular file (a FIFO would hang the daemon) and is bounded, and a
//! file written is created anew (`O_EXCL`, never through a link) and
//! renamed into place. The root is taken only while the pid is still that
//! container's (its cgroup names the container's id), so a pid reused by
//! a host process is refused.
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;

use anyhow::{bail, Context as _, Result};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// The root directory of one container.
#[derive(Debug)]
pub struct TaskRoot {
    root: OwnedFd,
    what: String,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl TaskRoot {
    /// The root of container `container_id`, whose process is `pid`.
    pub fn open(pid: u32, container_id: &str) -> Result<Self> {
        let what = format!("the root of container {}", short(container_id));
        let root = rustix::fs::open(
            format!("/proc/{pid}/root"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {what} (pid {pid})"))?;
        // After the open: if the pid is that container's now, it was
        // when the root was opened (a container's pid is not handed to it
        // later).
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading the cgroup of pid {pid}"))?;
        if container_id.len() < 12 || !cgroup.contains(container_id) {
            bail!("pid {pid} is no longer container {}", short(container_id));
        }
        Ok(Self { root, what })
    }

    /// The regular file at `path` (relative to the root), at most `max`
    /// bytes.
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let fd = rustix::fs::openat2(
            &self.root,
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .with_context(|| format!("opening /{path} in {}", self.what))?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            bail!("/{path} in {} is not a regular file", self.what);
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading /{path} in {}", self.what))?;
        if bytes.len() as u64 > max {
            bail!("/{path} in {} is larger than {max} bytes", self.what);
        }
        Ok(bytes)
    }

    /// Puts `bytes` at `dir/name` (relative to the root): written to a new
    /// file beside it, then renamed over the old one, so a reader never
    /// sees half of it and a link planted there is replaced, not followed.
    pub fn replace(&self, dir: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let d = rustix::fs::openat2(
            &self.root,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .with_context(|| format!("opening /{dir} in {}", self.what))?;
        let tmp = format!(".{name}.netiso-tmp");
        let _ = rustix::fs::unlinkat(&d, tmp.as_str(), rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            &d,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .with_context(|| format!("creating /{dir}/{tmp} in {}", self.what))?;
        std::fs::File::from(fd)
            .write_all(bytes)
            .with_context(|| format!("writing /{dir}/{tmp} in {}", self.what))?;
        rustix::fs::renameat(&d, tmp.as_str(), &d, name)
            .with_context(|| format!("renaming /{dir}/{tmp} in {}", self.what))?;
        Ok(())
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a container's root: opened like one
    /// (the open's cgroup check is the part only a real container has).
    fn root_at(dir: &std::path::Path) -> TaskRoot {
        TaskRoot {
            root: rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap(),
            what: "a test root".into(),
        }
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();

        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("netiso")).unwrap();
        std::fs::write(r.join("netiso/policy.toml"), "[groups]").unwrap();
        let t = root_at(r);
        assert_eq!(t.read("netiso/policy.toml", 100).unwrap(), b"[groups]");
        assert!(t.read("netiso/policy.toml", 3).is_err(), "bounded");

        // An absolute link to a host file resolves inside the root (where
        // there is no such file), a relative one cannot climb out.
        std::os::unix::fs::symlink(&secret, r.join("netiso/abs")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../..".to_string() + secret.to_str().unwrap(),
            r.join("netiso/rel"),
        )
        .unwrap();
        for p in ["netiso/abs", "netiso/rel"] {
            let got = t.read(p, 100);
            assert!(
                got.is_err(),
                "{p} read {:?}",
                got.map(|b| String::from_utf8_lossy(&b).to_string())
            );
        }
        // A FIFO is refused at once, not waited on.
        let fifo = r.join("netiso/fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(t.read("netiso/fifo", 100).is_err());

        // Writing through planted links: the link is replaced, the host
        // file untouched; a directory link is not entered.
        std::os::unix::fs::symlink(&victim, r.join("netiso/applied")).unwrap();
        std::os::unix::fs::symlink(&victim, r.join("netiso/.applied.netiso-tmp")).unwrap();
        t.replace("netiso", "applied", b"ok 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(
            std::fs::read_to_string(r.join("netiso/applied")).unwrap(),
            "ok 1\n"
        );
        std::os::unix::fs::symlink(outside.path(), r.join("out")).unwrap();
        assert!(t.replace("out", "applied", b"x").is_err());
        assert!(!outside.path().join("applied").exists());
    }

    #[test]
    fn a_pid_that_is_not_the_container_is_refused() {
        let me = std::process::id();
        let e = TaskRoot::open(me, "0123456789abcdef0123456789abcdef").unwrap_err();
        assert!(format!("{e:#}").contains("no longer container"), "{e:#}");
    }
}
