//! systemd's readiness protocol (sd_notify(3)): one datagram to the socket
//! named by `$NOTIFY_SOCKET`. A dozen lines; not worth a dependency.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`)
//! every call is a no-op.
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=value` assignments, e.g.
/// `READY=1\nSTATUS=...`). Returns `Ok(false)` when there is no socket to
/// tell.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_to(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

/// [`notify`] with the socket given (`None`: nobody to tell).
pub fn notify_to(socket: Option<&std::ffi::OsStr>, state: &str) -> io::Result<bool> {
    let Some(path) = socket else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        // Abstract namespace socket.
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Like [`notify`], logging instead of failing: a daemon must not stop
/// enforcing because its supervisor cannot be told something.
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "told systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, state, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn sends_to_path_and_abstract_sockets_and_is_quiet_without_one() {
        assert!(!notify_to(None, "READY=1").unwrap());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(Some(path.as_os_str()), "READY=1\nSTATUS=ok").unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        let name = format!("netiso-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let abstract_name = format!("@{name}");
        assert!(notify_to(Some(OsStr::new(&abstract_name)), "STOPPING=1").unwrap());
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        let gone = dir.path().join("gone.sock");
        assert!(notify_to(Some(gone.as_os_str()), "READY=1").is_err());
    }
}
