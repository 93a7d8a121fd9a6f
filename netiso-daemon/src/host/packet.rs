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
    /// Its UDP or TCP checksum is computed afresh first: a frame copied on
    /// its way may carry a partial one (checksum offload), which the
    /// receiver would take for corruption once sent as plain bytes.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> Result<()> {
        let mut frame = frame.to_vec();
        fix_l4_checksum(&mut frame);
        let frame = &frame[..];
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

/// Recomputes the UDP or TCP checksum of an IPv4 or IPv6 frame (without
/// extension headers) in place; other frames are left as they are.
pub fn fix_l4_checksum(frame: &mut [u8]) {
    let (Some(&a), Some(&b)) = (frame.get(12), frame.get(13)) else {
        return;
    };
    let (proto, l4, pseudo) = match u16::from_be_bytes([a, b]) {
        0x0800 => {
            let Some(ihl) = frame.get(14).map(|v| usize::from(v & 0x0f) * 4) else {
                return;
            };
            let Some(total) = frame
                .get(16..18)
                .map(|t| usize::from(u16::from_be_bytes([t[0], t[1]])))
            else {
                return;
            };
            // Fragments carry a part of the datagram: leave them.
            if frame.len() < 14 + total || ihl < 20 || frame[20] & 0x3f != 0 || frame[21] != 0 {
                return;
            }
            let mut pseudo = frame[26..34].to_vec();
            pseudo.extend_from_slice(&[0, frame[23]]);
            pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (frame[23], 14 + ihl..14 + total, pseudo)
        }
        0x86dd => {
            let Some(plen) = frame
                .get(18..20)
                .map(|t| usize::from(u16::from_be_bytes([t[0], t[1]])))
            else {
                return;
            };
            if frame.len() < 54 + plen {
                return;
            }
            let mut pseudo = frame[22..54].to_vec();
            pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, frame[20]]);
            (frame[20], 54..54 + plen, pseudo)
        }
        _ => return,
    };
    let at = match proto {
        17 => 6,
        6 => 16,
        _ => return,
    };
    let seg = &mut frame[l4];
    if seg.len() < at + 2 {
        return;
    }
    seg[at] = 0;
    seg[at + 1] = 0;
    let mut sum: u32 = 0;
    for chunk in [pseudo.as_slice(), &*seg] {
        let mut i = 0;
        while i + 1 < chunk.len() {
            sum += u32::from(u16::from_be_bytes([chunk[i], chunk[i + 1]]));
            i += 2;
        }
        if i < chunk.len() {
            sum += u32::from(chunk[i]) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    // UDP sends a computed 0 as all ones (0 means "no checksum").
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP frame whose checksum is recomputed equals the one built
    /// with the right checksum; a wrong one is corrected.
    #[test]
    fn checksums_are_recomputed() {
        // 10.0.0.1:53 -> 10.0.0.2:4000, payload "abc".
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let ip = [
            0x45, 0, 0, 31, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0, 53, 0x0f, 0xa0, 0, 11, 0, 0, b'a', b'b', b'c']);
        fix_l4_checksum(&mut f);
        let good = [f[40], f[41]];
        // Verify: the sum over pseudo header and segment with the checksum
        // in place is all ones.
        let mut sum: u32 = 0;
        let mut words: Vec<u8> = f[26..34].to_vec();
        words.extend_from_slice(&[0, 17, 0, 11]);
        words.extend_from_slice(&f[34..45]);
        words.push(0);
        for w in words.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        f[40] ^= 0x55;
        fix_l4_checksum(&mut f);
        assert_eq!([f[40], f[41]], good);
    }
}
