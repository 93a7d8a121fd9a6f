//! Who may use the control socket: root, or a member of the configured
//! group.
//!
//! Access: the socket file is `root:<group> 0660`, and every connection's
//! peer credentials (SO_PEERCRED, SO_PEERGROUPS) are checked as well: root,
//! or a member of the configured group; anyone else is refused.
use std::os::fd::AsRawFd;

use anyhow::{bail, Context as _, Result};

/// Who may use the socket besides root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub group: Option<u32>,
}

/// The connecting process, from the kernel (not from anything it says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Access {
    pub fn check(&self, p: &Peer) -> Result<(), String> {
        if p.uid == 0 {
            return Ok(());
        }
        if let Some(g) = self.group {
            if p.gid == g || p.groups.contains(&g) {
                return Ok(());
            }
        }
        Err(match self.group {
            Some(g) => format!(
                "permission denied: uid {} is neither root nor in group {} ({g})",
                p.uid,
                group_name(g).unwrap_or_else(|| "?".into())
            ),
            None => format!(
                "permission denied: only root may use this socket (uid {}); the daemon's --socket-group can admit a group",
                p.uid
            ),
        })
    }
}

/// Peer credentials of a connected Unix socket.
pub fn peer_of(fd: &impl AsRawFd) -> std::io::Result<Peer> {
    let fd = fd.as_raw_fd();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable `ucred` and `len` holds its size:
    // SO_PEERCRED writes at most `len` bytes into it and updates `len`. The
    // fd is borrowed from a socket the caller keeps open across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Supplementary groups as they were at connect time (Linux >= 4.13).
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut glen = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: `groups` owns `glen` bytes of writable gid_t storage (its
    // length times the element size); SO_PEERGROUPS writes at most `glen`
    // bytes and fails with ERANGE rather than overrun it. Same fd as above.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut glen,
        )
    };
    if rc == 0 {
        groups.truncate(glen as usize / size_of::<libc::gid_t>());
    } else {
        // Too many groups or an old kernel: admit by the primary group only.
        groups.clear();
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
    })
}

/// Looks a group up by name (or accepts a number).
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).context("group name contains NUL")?;
    // SAFETY: `libc::group` is a C struct of integers and raw pointers, for
    // which all-zero (null pointers) is a valid value; getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated and outlives the call; `grp`, `out` and
    // `buf` (with its true length) are live and writable, and the strings
    // getgrnam_r stores point into `buf`. The reentrant variant keeps no
    // static state, so concurrent calls from other threads are fine.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        bail!("no group named {name:?} (see /etc/group)");
    }
    Ok(grp.gr_gid)
}

fn group_name(gid: u32) -> Option<String> {
    // SAFETY: `libc::group` is a C struct of integers and raw pointers, for
    // which all-zero (null pointers) is a valid value; getgrgid_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: `grp`, `out` and `buf` (with its true length) are live and
    // writable for the call; getgrgid_r is the reentrant variant (no static
    // state) and stores its strings in `buf`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success (rc 0, `out` non-null) getgrgid_r set gr_name to a
    // NUL-terminated string inside `buf`, which is still alive here; the
    // borrow ends with `into_owned` before `buf` is dropped.
    Some(
        unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn access_admits_root_and_the_group_only() {
        let peer = |uid, gid, groups: &[u32]| Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let root_only = Access { group: None };
        assert!(root_only.check(&peer(0, 0, &[])).is_ok());
        assert!(root_only.check(&peer(1000, 1000, &[])).is_err());
        let ops = Access { group: Some(4242) };
        assert!(ops.check(&peer(1000, 4242, &[])).is_ok());
        assert!(ops.check(&peer(1000, 1000, &[27, 4242])).is_ok());
        let e = ops.check(&peer(65534, 65534, &[])).unwrap_err();
        assert!(e.starts_with("permission denied"), "{e}");
    }

    #[test]
    fn numeric_and_named_groups_resolve() {
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-netiso").is_err());
    }
}
