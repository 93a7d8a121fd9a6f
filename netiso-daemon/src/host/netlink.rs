//! Host-side veth discovery over NETLINK_ROUTE.
//!
//! A container's `eth0` is one end of a veth pair; the other end lives in the
//! host namespace, and that is where the TC programs attach. `/sys/class/net`
//! cannot be used for this: after `setns` it still shows the namespace sysfs
//! was mounted in. So we open a netlink socket *inside* the container's
//! namespace and read `IFLA_LINK` of the veth, which the kernel reports as the
//! peer's ifindex in the peer's (host) namespace.
//!
//! Everything here is blocking and short; call it from `spawn_blocking` when
//! on an async runtime.
use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    parse_string, parse_u32, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkHeader, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::model::Container;

use crate::host::rtnl::{
    IFLA_ADDRESS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO,
    IFLA_LINK_NETNSID, IFLA_VXLAN_PORT, RTM_NEWLINK,
};

/// One network interface as seen from some network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex in the peer's namespace;
    /// for macvlan/ipvlan/vlan, the parent device. Absent for most others.
    pub peer_ifindex: Option<u32>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `macvlan`, …); `None` for devices
    /// without one (loopback, physical NICs).
    pub kind: Option<String>,
    /// A vxlan link's UDP port (`IFLA_VXLAN_PORT`): its socket listens
    /// there in the namespace the link was made in.
    pub vxlan_port: Option<u16>,
    /// `IFLA_LINK_NETNSID`: the peer (or parent) is in another namespace.
    pub link_netnsid: Option<i32>,
}

impl LinkInfo {
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// Fills `host_ifindex` and `host_ifname` of each attachment of a running
/// container (and clears them where nothing matches, so calling it again after
/// a change is safe).
///
/// Containers without a veth of their own (network mode `host`, `none`,
/// `container:…`) return `Ok` with nothing filled; so do attachments whose
/// interface is not a veth (macvlan, ipvlan): the caller reports those as not
/// enforceable.
pub fn resolve_host_veths(c: &mut Container) -> Result<()> {
    resolve_host_veths_with(c, None)
}

/// Where Swarm overlays keep their endpoints' veths: the engine's
/// exec-root (as this process can open it) and the namespace slots.
#[derive(Clone, Debug)]
pub struct Overlays {
    pub exec_root: PathBuf,
    pub slots: crate::host::overlay::NsSlots,
    /// Ids of the networks known to be overlays: an attachment of one of
    /// them whose namespace is not found is left unresolved, never looked
    /// up in this namespace (where the same ifindex is another veth).
    pub networks: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
}

/// [`resolve_host_veths`], also finding veths in Swarm overlay namespaces:
/// an attachment whose network has a namespace under `<exec-root>/netns`
/// (`1-<id>`: only overlays do) is looked up there and only there, and its
/// `host_ifindex` is the endpoint id `(k << NS_SHIFT) + ifindex` of that
/// namespace's slot, `host_netns` its path.
pub fn resolve_host_veths_with(c: &mut Container, overlays: Option<&Overlays>) -> Result<()> {
    for a in &mut c.networks {
        a.host_ifindex = None;
        a.host_ifname = None;
        a.host_netns = None;
    }
    if !has_own_netns(&c.network_mode) || c.networks.iter().all(|a| a.mac.is_none()) {
        return Ok(());
    }
    if c.pid == 0 {
        bail!("container {} ({}) has no PID: not running", c.name, c.id);
    }
    let ns = PathBuf::from(format!("/proc/{}/ns/net", c.pid));
    let links = links_in_netns(&ns)
        .with_context(|| format!("listing interfaces of container {} ({})", c.name, c.id))?;

    let chosen = container_ends(&c.networks, &links);
    for (a, inner) in c.networks.iter_mut().zip(chosen) {
        let Some(inner) = inner else {
            let kind = a
                .mac
                .and_then(|m| links.iter().find(|l| l.mac == Some(m)))
                .map(|l| l.kind.clone());
            tracing::debug!(container = %c.name, network = %a.network, ?kind,
                "no veth to another namespace with the attachment's MAC");
            continue;
        };
        let Some(peer) = inner.peer_ifindex else {
            continue;
        };
        // The overlay's namespaces (a new one each time the network's
        // last local endpoint left and another came), the newest first:
        // the one that holds the veth's peer.
        let candidates = overlays
            .map(|o| crate::host::overlay::netns_paths(&o.exec_root, &a.network_id))
            .unwrap_or_default();
        let mut overlay_ns = None;
        for path in candidates {
            let o = overlays.expect("candidates come from overlays");
            // A namespace that cannot be entered (gone meanwhile, a stale
            // file) is skipped, not the container's other attachments.
            let host = match in_netns(&path, || link_by_index(peer)) {
                Ok(host) => host,
                Err(e) => {
                    tracing::debug!(container = %c.name, network = %a.network,
                        netns = %path.display(), error = format!("{e:#}"), "skipped");
                    continue;
                }
            };
            let found = host
                .as_ref()
                .is_some_and(|h| h.is_veth() && h.peer_ifindex == Some(inner.ifindex));
            if found || overlay_ns.is_none() {
                overlay_ns = Some((o, path, host));
            }
            if found {
                break;
            }
        }
        if let Some((o, path, host)) = overlay_ns {
            match host {
                Some(host) if host.is_veth() && host.peer_ifindex == Some(inner.ifindex) => {
                    let id = o
                        .slots
                        .slot(&path)
                        .and_then(|k| crate::host::overlay::endpoint_id(k, host.ifindex));
                    let Some(id) = id else {
                        tracing::error!(container = %c.name, network = %a.network,
                            "no endpoint id left for the overlay's veth: not enforced");
                        continue;
                    };
                    a.host_ifindex = Some(id);
                    a.host_ifname = Some(host.ifname);
                    a.host_netns = Some(path.display().to_string());
                }
                other => {
                    tracing::debug!(container = %c.name, network = %a.network, peer, host = ?other,
                        netns = %path.display(), "overlay peer of the container veth not found");
                }
            }
            continue;
        }
        if let Some(o) = overlays {
            let known = o.networks.lock().unwrap_or_else(|e| e.into_inner());
            if known.contains(&a.network_id) {
                tracing::debug!(container = %c.name, network = %a.network,
                    exec_root = %o.exec_root.display(), "no namespace found for the overlay");
                continue;
            }
        }
        // Check the host link really is this veth's peer: the container may be
        // going away and its ifindex already reused by another device.
        match link_by_index(peer)? {
            Some(host) if host.is_veth() && host.peer_ifindex == Some(inner.ifindex) => {
                a.host_ifindex = Some(host.ifindex);
                a.host_ifname = Some(host.ifname);
            }
            other => {
                tracing::debug!(container = %c.name, network = %a.network, peer, host = ?other,
                    "host peer of the container veth not found");
            }
        }
    }
    Ok(())
}

/// The container's end of each attachment's veth, among `links` (its
/// namespace's): only a veth whose peer is in another namespace
/// (`IFLA_LINK_NETNSID`) can be one — a container with CAP_NET_ADMIN makes
/// links of any kind with any MAC, veth pairs too, but only inside its own
/// namespace. By the attachment's MAC; a container that changed its MAC
/// keeps its veth when that is the only one left to the only attachment
/// left (it must not lose its programs by changing it).
fn container_ends<'l>(
    attachments: &[crate::model::Attachment],
    links: &'l [LinkInfo],
) -> Vec<Option<&'l LinkInfo>> {
    let outer: Vec<&LinkInfo> = links
        .iter()
        .filter(|l| l.is_veth() && l.link_netnsid.is_some())
        .collect();
    let mut chosen: Vec<Option<&LinkInfo>> = attachments
        .iter()
        .map(|a| {
            let mac = a.mac?;
            outer.iter().copied().find(|l| l.mac == Some(mac))
        })
        .collect();
    let unmatched: Vec<usize> = (0..attachments.len())
        .filter(|&i| attachments[i].mac.is_some() && chosen[i].is_none())
        .collect();
    let unclaimed: Vec<&LinkInfo> = outer
        .iter()
        .copied()
        .filter(|l| !chosen.iter().flatten().any(|c| c.ifindex == l.ifindex))
        .collect();
    if let ([i], [l]) = (unmatched.as_slice(), unclaimed.as_slice()) {
        chosen[*i] = Some(l);
    }
    chosen
}

/// Whether a Docker network mode gives the container a network namespace with
/// its own interfaces.
fn has_own_netns(network_mode: &str) -> bool {
    !(network_mode == "host" || network_mode == "none" || network_mode.starts_with("container:"))
}

/// ifindex → name in the current (host) namespace; `None` if the link is gone.
pub fn link_name(ifindex: u32) -> Result<Option<String>> {
    Ok(link_by_index(ifindex)?.map(|l| l.ifname))
}

/// One link of the current (host) namespace by ifindex; `None` if it is gone.
pub fn link_by_index(ifindex: u32) -> Result<Option<LinkInfo>> {
    let sock = RouteSocket::open()?;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    match sock.request(msg, NLM_F_REQUEST) {
        Ok(mut links) => Ok(links.pop()),
        Err(NlError::Kernel(e)) if e == libc::ENODEV => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("RTM_GETLINK ifindex {ifindex}"))),
    }
}

/// Every link of the current namespace.
pub fn links() -> Result<Vec<LinkInfo>> {
    let sock = RouteSocket::open()?;
    sock.request(LinkMessage::default(), NLM_F_REQUEST | NLM_F_DUMP)
        .context("RTM_GETLINK dump")
}

/// Every link of the network namespace at `netns_path` (`/var/run/netns/X`,
/// `/proc/PID/ns/net`).
pub fn links_in_netns(netns_path: &Path) -> Result<Vec<LinkInfo>> {
    in_netns(netns_path, links).with_context(|| {
        format!(
            "listing links in network namespace {}",
            netns_path.display()
        )
    })
}

/// The UDP ports of the VXLAN links in the Swarm overlays' namespaces
/// under `exec_root` (`<exec-root>/netns/<epoch>-<id>`; containers'
/// sandboxes there are named by a bare id and never read): the engine
/// makes each such link in the host's namespace, where its socket stays,
/// on the swarm's data path port (`docker swarm init --data-path-port`).
/// A namespace that vanished meanwhile is skipped.
pub fn overlay_vxlan_ports(exec_root: &Path) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    let entries = std::fs::read_dir(exec_root.join("netns"));
    for e in entries.into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !crate::host::overlay::is_overlay_netns_name(name) {
            continue;
        }
        match links_in_netns(&e.path()) {
            Ok(links) => ports.extend(links.iter().filter_map(|l| l.vxlan_port)),
            Err(err) => tracing::debug!(netns = name, error = format!("{err:#}"), "skipped"),
        }
    }
    ports
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`.
/// `setns(CLONE_NEWNET)` only moves the calling thread, and that thread ends
/// with `f`, so no other code ever runs in the foreign namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netiso-netns".into())
            .spawn_scoped(s, move || {
                // SAFETY: setns only reads the fd of `ns`, opened above and
                // moved into this thread, open across the call; CLONE_NEWNET
                // moves only this thread, which runs `f` and then ends.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
                }
                drop(ns);
                f()
            })
            .context("spawning the netns thread")?
            .join()
            .map_err(|_| anyhow!("netns thread panicked"))?
    })
}

#[derive(Debug, thiserror::Error)]
enum NlError {
    #[error("netlink: kernel returned {}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: malformed reply: {0}")]
    Decode(String),
}

/// A blocking NETLINK_ROUTE socket, opened in the namespace of the calling
/// thread.
struct RouteSocket {
    sock: Socket,
}

impl RouteSocket {
    fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
        sock.bind_auto().context("binding the netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))
            .context("connecting the netlink socket")?;
        Ok(Self { sock })
    }

    /// Sends one RTM_GETLINK and collects the RTM_NEWLINK replies until the
    /// end of the dump (or the single reply without NLM_F_DUMP).
    fn request(&self, msg: LinkMessage, flags: u16) -> Result<Vec<LinkInfo>, NlError> {
        const SEQ: u32 = 1;
        let mut req = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
        );
        req.header.flags = flags;
        req.header.sequence_number = SEQ;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut links = Vec::new();
        // Large enough for any dump chunk the kernel sends (at most 32 KiB).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.sock.recv(&mut &mut buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let nl = NetlinkBuffer::new_checked(&buf[off..n])
                    .map_err(|e| NlError::Decode(e.to_string()))?;
                let len = nl.length() as usize;
                if len == 0 {
                    return Err(NlError::Decode("zero-length message".into()));
                }
                let aligned = (len + 3) & !3;
                let seq = nl.sequence_number();
                let ty = nl.message_type();
                let multipart = nl.flags() & NLM_F_MULTIPART != 0;
                let payload = nl.payload();
                off += aligned;
                if seq != SEQ {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(links),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| NlError::Decode("short NLMSG_ERROR".into()))?;
                        if code != 0 {
                            return Err(NlError::Kernel(-code));
                        }
                        return Ok(links);
                    }
                    RTM_NEWLINK => {
                        links.push(parse_link(payload).map_err(NlError::Decode)?);
                        if !dump && !multipart {
                            return Ok(links);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Reads only the attributes we need, one by one, so that an attribute this
/// crate version cannot decode (new kernels add some) does not make the whole
/// link unreadable.
fn parse_link(payload: &[u8]) -> Result<LinkInfo, String> {
    const HEADER_LEN: usize = 16; // struct ifinfomsg
    let header = LinkHeader::parse(payload).map_err(|e| e.to_string())?;
    let mut link = LinkInfo {
        ifname: String::new(),
        ifindex: header.index,
        mac: None,
        peer_ifindex: None,
        kind: None,
        vxlan_port: None,
        link_netnsid: None,
    };
    for nla in NlasIterator::new(&payload[HEADER_LEN.min(payload.len())..]) {
        let nla = nla.map_err(|e| e.to_string())?;
        let value = nla.value();
        match nla.kind() {
            IFLA_IFNAME => link.ifname = parse_string(value).map_err(|e| e.to_string())?,
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok(),
            IFLA_LINK => link.peer_ifindex = parse_u32(value).ok(),
            IFLA_LINK_NETNSID => {
                link.link_netnsid = <[u8; 4]>::try_from(value).ok().map(i32::from_ne_bytes);
            }
            IFLA_LINKINFO => {
                for info in NlasIterator::new(value).flatten() {
                    match info.kind() {
                        IFLA_INFO_KIND => link.kind = parse_string(info.value()).ok(),
                        IFLA_INFO_DATA => {
                            link.vxlan_port = NlasIterator::new(info.value())
                                .flatten()
                                .find(|d| d.kind() == IFLA_VXLAN_PORT)
                                .and_then(|d| <[u8; 2]>::try_from(d.value()).ok())
                                .map(u16::from_be_bytes);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if link.kind.as_deref() != Some("vxlan") {
        link.vxlan_port = None;
    }
    Ok(link)
}

/// Every IP address configured in the calling thread's network namespace
/// (for the daemon: the host's own addresses, bridge gateways included),
/// with the IPv4 broadcast address of each interface and the limited
/// broadcast: a packet sent to any of them is received by the host's own
/// stack. They make up the `host` peer of the policy.
pub fn host_addresses() -> Result<Vec<std::net::IpAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null, and every sockaddr starts with its family.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                let bcast = ifa.ifa_ifu;
                if ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0 && !bcast.is_null() {
                    // SAFETY: IFF_BROADCAST: ifa_ifu is the broadcast address,
                    // of the same family as ifa_addr.
                    let sa = unsafe { &*(bcast as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: the list getifaddrs gave us, freed once; `ifa` is not used after.
    unsafe { libc::freeifaddrs(head) };
    out.push(IpAddr::V4(Ipv4Addr::BROADCAST));
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn run(args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A network namespace and a veth pair with one end in it; both go away in
    /// Drop, also when the test panics.
    struct VethNs {
        ns: String,
        host_if: String,
        inner_if: String,
    }

    impl VethNs {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id();
            // Interface names are limited to 15 bytes.
            let g = VethNs {
                ns: format!("netiso-t-{pid}-{n}"),
                host_if: format!("nt{pid}h{n}"),
                inner_if: format!("nt{pid}c{n}"),
            };
            run(&["ip", "netns", "add", &g.ns]);
            run(&[
                "ip",
                "link",
                "add",
                &g.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &g.inner_if,
            ]);
            run(&["ip", "link", "set", &g.inner_if, "netns", &g.ns]);
            g
        }
        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/var/run/netns/{}", self.ns))
        }
    }

    impl Drop for VethNs {
        fn drop(&mut self) {
            // Deleting one end removes both; deleting the netns would too.
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if])
                .output();
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
    }

    fn host_ifindex(name: &str) -> u32 {
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The container's end of each attachment: a veth to another
    /// namespace with the attachment's MAC; not a dummy or a veth pair a
    /// container with CAP_NET_ADMIN made with that MAC in its own
    /// namespace; and still its veth after it changed the veth's MAC.
    #[test]
    fn container_ends_are_veths_to_another_namespace() {
        let link = |ifindex: u32, kind: &str, mac: u8, netnsid: Option<i32>| LinkInfo {
            ifname: format!("if{ifindex}"),
            ifindex,
            mac: Some([2, 0, 0, 0, 0, mac]),
            peer_ifindex: Some(100 + ifindex),
            kind: Some(kind.into()),
            vxlan_port: None,
            link_netnsid: netnsid,
        };
        let att = |mac: u8| crate::model::Attachment {
            mac: Some([2, 0, 0, 0, 0, mac]),
            ..Default::default()
        };
        let ends = |atts: &[crate::model::Attachment], links: &[LinkInfo]| -> Vec<Option<u32>> {
            container_ends(atts, links)
                .into_iter()
                .map(|l| l.map(|l| l.ifindex))
                .collect()
        };
        let eth0 = link(5, "veth", 1, Some(0));
        let eth1 = link(7, "veth", 2, Some(0));
        assert_eq!(
            ends(&[att(1), att(2)], &[eth0.clone(), eth1.clone()]),
            [Some(5), Some(7)]
        );
        // A dummy and an inner veth pair with eth0's MAC, made first.
        let dummy = link(2, "dummy", 1, None);
        let inner = link(3, "veth", 1, None);
        assert_eq!(
            ends(&[att(1)], &[dummy.clone(), inner.clone(), eth0.clone()]),
            [Some(5)]
        );
        // eth0's MAC changed: still eth0, the only veth left for the only
        // attachment left; with the dummy holding the old MAC too.
        let changed = link(5, "veth", 9, Some(0));
        assert_eq!(ends(&[att(1)], &[dummy, inner, changed.clone()]), [Some(5)]);
        assert_eq!(
            ends(&[att(1), att(2)], &[changed.clone(), eth1]),
            [Some(5), Some(7)]
        );
        // Two attachments without their MAC: no guessing.
        let changed1 = link(7, "veth", 8, Some(0));
        assert_eq!(ends(&[att(1), att(2)], &[changed, changed1]), [None, None]);
        // A macvlan attachment is no veth.
        assert_eq!(ends(&[att(1)], &[link(4, "macvlan", 1, None)]), [None]);
    }

    /// The data path ports are read from VXLAN links in overlays'
    /// namespaces (`<epoch>-<id>`), never from containers' sandboxes (a
    /// container with CAP_NET_ADMIN makes what links it likes there).
    #[test]
    fn vxlan_ports_come_from_overlay_namespaces_only() {
        let overlay = VethNs::new();
        let sandbox = VethNs::new();
        for (g, port) in [(&overlay, "7789"), (&sandbox, "53")] {
            run(&[
                "ip", "-n", &g.ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport",
                port,
            ]);
        }
        let links = links_in_netns(&overlay.path()).unwrap();
        let vx = links.iter().find(|l| l.ifname == "vx0").expect("vx0");
        assert_eq!(
            (vx.kind.as_deref(), vx.vxlan_port),
            (Some("vxlan"), Some(7789))
        );
        assert!(links
            .iter()
            .filter(|l| l.ifname != "vx0")
            .all(|l| l.vxlan_port.is_none()));

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("netns")).unwrap();
        std::os::unix::fs::symlink(overlay.path(), root.path().join("netns/1-0123456789")).unwrap();
        std::os::unix::fs::symlink(sandbox.path(), root.path().join("netns/0123456789ab")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.path().join("netns/2-0123456789")).unwrap();
        assert_eq!(overlay_vxlan_ports(root.path()), BTreeSet::from([7789]));
        assert!(overlay_vxlan_ports(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn finds_host_peer_of_veth_in_netns() {
        let g = VethNs::new();
        let links = links_in_netns(&g.path()).unwrap();
        let inner = links
            .iter()
            .find(|l| l.ifname == g.inner_if)
            .unwrap_or_else(|| panic!("{} not in {links:?}", g.inner_if));
        assert!(inner.is_veth(), "{inner:?}");
        assert!(inner.mac.is_some());
        assert!(
            links.iter().any(|l| l.ifname == "lo"),
            "lo missing: {links:?}"
        );
        assert!(
            !links.iter().any(|l| l.ifname == g.host_if),
            "host end listed inside the namespace: links were read from the wrong namespace"
        );

        let host_idx = host_ifindex(&g.host_if);
        assert_eq!(inner.peer_ifindex, Some(host_idx));
        assert_eq!(
            link_name(host_idx).unwrap().as_deref(),
            Some(g.host_if.as_str())
        );
        let host = link_by_index(host_idx).unwrap().unwrap();
        assert!(host.is_veth());
        assert_eq!(host.peer_ifindex, Some(inner.ifindex));

        // The calling thread never left the host namespace.
        assert!(super::links()
            .unwrap()
            .iter()
            .any(|l| l.ifname == g.host_if));
    }

    #[test]
    fn link_name_of_missing_link_is_none() {
        // ifindex values are allocated upwards; this one is never in use.
        assert_eq!(link_name(i32::MAX as u32 - 7).unwrap(), None);
    }

    #[test]
    fn missing_netns_is_a_clear_error() {
        let err = links_in_netns(Path::new("/var/run/netns/netiso-t-does-not-exist")).unwrap_err();
        assert!(
            format!("{err:#}").contains("netiso-t-does-not-exist"),
            "{err:#}"
        );
    }

    #[test]
    fn resolves_container_like_namespace_by_pid_path() {
        // resolve_host_veths goes through /proc/PID/ns/net; a process sleeping in
        // the test namespace stands in for a container.
        let g = VethNs::new();
        let mac = links_in_netns(&g.path())
            .unwrap()
            .into_iter()
            .find(|l| l.ifname == g.inner_if)
            .unwrap()
            .mac;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &g.ns, "sleep", "30"])
            .spawn()
            .unwrap();
        struct Kill<'a>(&'a mut std::process::Child);
        impl Drop for Kill<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let pid = child.id();
        let _k = Kill(&mut child);
        // `ip netns exec` joins the namespace and then execs sleep: wait until it has.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == Some(own.clone()) {
            assert!(
                std::time::Instant::now() < deadline,
                "child never entered the netns"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        let mut c = Container {
            published: Vec::new(),
            id: "test".into(),
            name: "test".into(),
            pid,
            network_mode: "bridge".into(),
            networks: vec![
                crate::model::Attachment {
                    network: "n1".into(),
                    mac,
                    ..Default::default()
                },
                crate::model::Attachment {
                    network: "n2".into(),
                    mac: Some([2, 0, 0, 0, 0, 1]),
                    ipv4_prefix_len: None,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        resolve_host_veths(&mut c).unwrap();
        assert_eq!(c.networks[0].host_ifindex, Some(host_ifindex(&g.host_if)));
        assert_eq!(
            c.networks[0].host_ifname.as_deref(),
            Some(g.host_if.as_str())
        );
        assert_eq!(c.networks[1].host_ifindex, None);

        // Modes without a veth of their own resolve to nothing, without error.
        for mode in ["host", "none", "container:abc"] {
            let mut c2 = c.clone();
            c2.network_mode = mode.into();
            resolve_host_veths(&mut c2).unwrap();
            assert!(
                c2.networks.iter().all(|a| a.host_ifindex.is_none()),
                "{mode}"
            );
        }
    }
}
