//! Sending a frame out of a host interface as it is (an `AF_PACKET` raw
//! socket), with a mark: how the daemon sends on a DNS answer it held for
//! learning. The frame then passes the interface's TC egress hook again.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{bail, Result};

/// A send-only packet socket.
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// Needs CAP_NET_RAW (the socket) and CAP_NET_ADMIN (the mark).
    pub fn new(mark: u32) -> Result<Self> {
        // Protocol 0: the socket receives nothing, it only sends.
        // SAFETY: plain socket(2) call with constant arguments; the result
        // is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!(
                "cannot open a packet socket (CAP_NET_RAW?): {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: setsockopt reads exactly size_of::<u32>() bytes from a
        // live local; the descriptor is open.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                std::ptr::addr_of!(mark).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!(
                "cannot mark the packet socket (CAP_NET_ADMIN?): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { fd })
    }

    /// Sends `frame` (Ethernet header included) out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> Result<()> {
        if frame.len() < 14 {
            bail!("a frame of {} bytes", frame.len());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `to` are live for the call and their lengths
        // are passed with them; the descriptor is open.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            bail!(
                "sending a frame out of interface {ifindex}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}
