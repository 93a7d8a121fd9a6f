//! New and removed links of the host namespace, as the kernel announces
//! them (RTM_NEWLINK / RTM_DELLINK on the RTNLGRP_LINK multicast group),
//! and changes of its addresses (RTM_NEWADDR / RTM_DELADDR).
//!
//! Docker enslaves a new container's host-side veth to the network's bridge
//! before the container's process runs and well before the engine's
//! `start` event reaches us; acting on the netlink announcement lets the
//! daemon hold the veth of a fail-closed network closed from that moment.
use anyhow::{Context as _, Result};
use netlink_packet_core::{parse_string, parse_u32, NetlinkBuffer, NlasIterator};
use netlink_packet_core::{NLMSG_DONE, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::host::rtnl::{
    IFINFO_LEN, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MASTER, RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR, RTMGRP_LINK, RTM_DELADDR, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR,
    RTM_NEWLINK,
};

/// One link as announced: its bridge (`master`) and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    /// false: the link is gone.
    pub present: bool,
    pub ifindex: u32,
    pub ifname: String,
    pub master: Option<u32>,
    pub kind: Option<String>,
    /// An address of `ifindex` came or went (RTM_NEWADDR / RTM_DELADDR):
    /// the `host` peer follows the host's addresses.
    pub addresses: bool,
}

impl LinkEvent {
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// Decodes one RTM_NEWLINK / RTM_DELLINK payload (`ifinfomsg` + attributes).
pub fn parse(msg_type: u16, payload: &[u8]) -> Option<LinkEvent> {
    if msg_type == RTM_NEWADDR || msg_type == RTM_DELADDR {
        // `struct ifaddrmsg`: family, prefixlen, flags, scope, index.
        let ifindex = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
        return Some(LinkEvent {
            present: msg_type == RTM_NEWADDR,
            ifindex,
            ifname: String::new(),
            master: None,
            kind: None,
            addresses: true,
        });
    }
    if payload.len() < IFINFO_LEN || !(msg_type == RTM_NEWLINK || msg_type == RTM_DELLINK) {
        return None;
    }
    let ifindex = i32::from_ne_bytes(payload[4..8].try_into().ok()?) as u32;
    let mut ev = LinkEvent {
        present: msg_type == RTM_NEWLINK,
        ifindex,
        ifname: String::new(),
        master: None,
        kind: None,
        addresses: false,
    };
    for nla in NlasIterator::new(&payload[IFINFO_LEN..]).flatten() {
        match nla.kind() {
            IFLA_IFNAME => ev.ifname = parse_string(nla.value()).ok()?,
            IFLA_MASTER => ev.master = parse_u32(nla.value()).ok().filter(|m| *m != 0),
            IFLA_LINKINFO => {
                for info in NlasIterator::new(nla.value()).flatten() {
                    if info.kind() == IFLA_INFO_KIND {
                        ev.kind = parse_string(info.value()).ok();
                    }
                }
            }
            _ => {}
        }
    }
    Some(ev)
}

/// Every netlink message in `buf`, as (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let Ok(nl) = NetlinkBuffer::new_checked(&buf[off..]) else {
            break;
        };
        let len = nl.length() as usize;
        if len == 0 {
            break;
        }
        out.push((
            nl.message_type(),
            &buf[off + 16..(off + len).min(buf.len())],
        ));
        off += (len + 3) & !3;
    }
    out
}

/// Every link of the host namespace, with its bridge.
pub fn dump() -> Result<Vec<LinkEvent>> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // nlmsghdr + ifinfomsg (AF_UNSPEC, everything zero).
    let mut req = vec![0u8; 16 + IFINFO_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    sock.send(&req, 0).context("RTM_GETLINK dump")?;
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for (ty, payload) in messages(&buf[..n]) {
            if ty == NLMSG_DONE {
                return Ok(links);
            }
            if ty == 2 {
                // NLMSG_ERROR
                anyhow::bail!("RTM_GETLINK dump failed");
            }
            links.extend(parse(ty, payload));
        }
    }
}

/// Follows link announcements on a thread of its own until `tx` closes.
/// A full queue drops announcements (the periodic resync catches up).
pub fn spawn(tx: tokio::sync::mpsc::Sender<LinkEvent>) -> Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
    sock.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
    ))
    .context("joining the netlink link and address groups")?;
    std::thread::Builder::new()
        .name("netiso-links".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    // ENOBUFS: the kernel dropped announcements; go on.
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink link announcements lost");
                        continue;
                    }
                };
                for (ty, payload) in messages(&buf[..n]) {
                    if let Some(ev) = parse(ty, payload) {
                        use tokio::sync::mpsc::error::TrySendError;
                        match tx.try_send(ev) {
                            Ok(()) | Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
                }
            }
        })
        .context("spawning the link watcher")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn ip(args: &str) {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("ip {args}"))
            .status()
            .unwrap();
        assert!(st.success(), "ip {args}");
    }

    /// A real bridge and veth in the host namespace (no addresses, no
    /// traffic): the announcement of the enslaved veth names its bridge,
    /// and the dump agrees.
    #[test]
    fn announces_a_veth_enslaved_to_a_bridge() {
        let n = std::process::id() % 100_000;
        let (br, veth) = (format!("ntlwb{n}"), format!("ntlwv{n}"));
        struct Cleanup(String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["link", "del", &self.0]).status();
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        spawn(tx).unwrap();
        ip(&format!("link add {br} type bridge"));
        let _b = Cleanup(br.clone());
        ip(&format!("link add {veth} type veth peer name {veth}p"));
        let _v = Cleanup(veth.clone());
        ip(&format!("link set {veth} master {br}"));
        let br_index: u32 = std::fs::read_to_string(format!("/sys/class/net/{br}/ifindex"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match rx.try_recv() {
                Ok(ev) if ev.ifname == veth && ev.master == Some(br_index) => break ev,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            assert!(Instant::now() < end, "no announcement of {veth} in {br}");
        };
        assert!(found.present && found.is_veth(), "{found:?}");
        let listed = dump().unwrap();
        let l = listed.iter().find(|l| l.ifname == veth).unwrap();
        assert_eq!((l.master, l.ifindex), (Some(br_index), found.ifindex));
        assert!(listed
            .iter()
            .any(|l| l.ifname == br && l.kind.as_deref() == Some("bridge")));
    }
}
