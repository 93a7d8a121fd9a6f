//! Docker Swarm overlays as the host shows them: where an overlay's
//! namespace is (under the engine's exec-root), which endpoint-id slot
//! each such namespace gets (`NsSlots`), and what `docker network inspect
//! --verbose` gossip says of the tasks on other nodes (`parse_gossip`,
//! pure). Uses `model` only.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use netiso_common::limits::{FIRST_NS_SLOT, NS_SHIFT};

use crate::model::RemoteTask;

/// Docker's exec-root when the daemon is not told otherwise.
pub const DEFAULT_EXEC_ROOT: &str = "/var/run/docker";

/// The namespace of overlay `network_id` on this node, as the engine
/// creates it with the network's first local endpoint:
/// `<exec-root>/netns/1-<first 10 characters of the id>`.
pub fn netns_path(exec_root: &Path, network_id: &str) -> Option<PathBuf> {
    let short = network_id.get(..10)?;
    Some(exec_root.join("netns").join(format!("1-{short}")))
}

/// Every namespace of overlay `network_id` on this node, the newest
/// first. The engine names it `<epoch>-<network id>` cut to 12
/// characters (libnetwork's `initSandbox` and `GenerateKey`): `1-<10
/// characters>` with the network's first local endpoint, then `2-…` when
/// its last endpoint left and another came while the engine kept the
/// network (a task replaced on its node: `service update --force`, a
/// crashed task restarted), `10-<9 characters>` from the tenth.
pub fn netns_paths(exec_root: &Path, network_id: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(exec_root.join("netns"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let epoch = namespace_epoch(&name, network_id)?;
            Some((epoch, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Whether `name` (under `<exec-root>/netns`) is an overlay's namespace,
/// `<epoch>-<start of the network id>`, not a container's sandbox.
pub fn is_overlay_netns_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(epoch, id)| {
        epoch.parse::<u64>().is_ok_and(|n| n > 0)
            && !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The epoch of namespace `name` if it is one of `network_id`'s.
fn namespace_epoch(name: &str, network_id: &str) -> Option<u64> {
    let (epoch, id) = name.split_once('-')?;
    let n: u64 = epoch.parse().ok().filter(|n| *n > 0)?;
    let want = 12usize.checked_sub(epoch.len() + 1)?.min(network_id.len());
    (want > 0 && id.len() == want && network_id.get(..want) == Some(id)).then_some(n)
}

/// Namespace slots: the k of endpoint ids `(k << NS_SHIFT) + ifindex` for
/// each overlay namespace the daemon found a veth in (k ≥ 1; 0 is the
/// daemon's own namespace), keyed by the namespace's name (`1-<id>`: the
/// same across engine restarts). Slots are never reused, and with a file
/// (`<state-dir>/netns-slots.json`) they outlive the daemon: after a
/// restart an endpoint keeps its id, so its pinned links are re-adopted in
/// place (no moment without enforcement) and its conntrack entries stay
/// its own.
#[derive(Clone, Debug, Default)]
pub struct NsSlots {
    inner: Arc<Mutex<BTreeMap<String, u32>>>,
    file: Option<PathBuf>,
}

impl NsSlots {
    /// Slots kept in `file` (read now; an unreadable file starts afresh,
    /// logged).
    pub fn persistent(file: PathBuf) -> Self {
        let map = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "ignoring the namespace slots file");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        // Slots below FIRST_NS_SLOT (an earlier layout) would share ids
        // with host veths: renumbered.
        let map: BTreeMap<String, u32> = map
            .into_iter()
            .filter(|(_, k)| *k >= FIRST_NS_SLOT)
            .collect();
        Self {
            inner: Arc::new(Mutex::new(map)),
            file: Some(file),
        }
    }

    /// The slot the next namespace seen for the first time will get (the
    /// datapath loads its programs ahead: see `Datapath::preload_ns_instance`).
    pub fn next(&self) -> Option<u32> {
        next_free(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The slot of the namespace at `path`, given out now if it has none;
    /// `None` once every slot is taken.
    pub fn slot(&self, path: &Path) -> Option<u32> {
        let name = path.file_name()?.to_string_lossy().into_owned();
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = m.get(&name) {
            return Some(*k);
        }
        let k = next_free(&m)?;
        m.insert(name, k);
        if let Some(file) = &self.file {
            let tmp = file.with_extension("tmp");
            let written = serde_json::to_vec_pretty(&*m)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                tracing::warn!(file = %file.display(), error = %e,
                    "cannot save the namespace slots: a restart may renumber overlay endpoints");
            }
        }
        Some(k)
    }
}

/// The endpoint id of `ifindex` in namespace slot `k`; `None` for an
/// ifindex too large to share the id space.
pub fn endpoint_id(k: u32, ifindex: u32) -> Option<u32> {
    (ifindex < 1 << NS_SHIFT).then_some((k << NS_SHIFT) | ifindex)
}

/// The slot a namespace seen for the first time would get (`None`: none
/// left).
fn next_free(m: &BTreeMap<String, u32>) -> Option<u32> {
    let k = m
        .values()
        .max()
        .copied()
        .unwrap_or(FIRST_NS_SLOT - 1)
        .max(FIRST_NS_SLOT - 1)
        + 1;
    (k < 1 << (32 - NS_SHIFT)).then_some(k)
}

/// What one node knows of an overlay network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayInfo {
    pub name: String,
    pub id: String,
    /// The network's IPv4 subnets (`IPAM.Config[].Subnet`).
    pub subnets: Vec<(IpAddr, u8)>,
    /// Every endpoint the gossip lists (local ones too: the caller drops
    /// the addresses of its own containers).
    pub tasks: Vec<RemoteTask>,
}

/// `.Services` of `docker network inspect --verbose`: `{ "<service>": {
/// "Tasks": [ { "Name", "EndpointIP", "Info": { "Host IP" } } ] } }`
/// (a plain attached container under the service `""`). Entries without a
/// usable address are skipped.
pub fn parse_gossip(services: &HashMap<String, serde_json::Value>) -> Vec<RemoteTask> {
    let mut out = Vec::new();
    for (service, v) in services {
        for t in v
            .get("Tasks")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let ip = t
                .get("EndpointIP")
                .and_then(|i| i.as_str())
                .and_then(|s| s.split('/').next())
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let Some(ip) = ip else { continue };
            out.push(RemoteTask {
                name: t
                    .get("Name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
                    .to_string(),
                service: service.clone(),
                ip,
                node: t
                    .pointer("/Info/Host IP")
                    .and_then(|h| h.as_str())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    out.sort();
    out
}

/// Whether gossip entry `t` of overlay `network` is one of the engines'
/// own load-balancing endpoints, not a container: the routing mesh's
/// `ingress-endpoint` (in each node's `ingress_sbox`, the source of what
/// a published port brings in, the client's address masqueraded away) and
/// an overlay's `<network>-endpoint` (its `lb_` sandbox). Both are listed
/// as plain attached containers (service `""`); named as containers, a
/// group selecting `names = ["ingress-endpoint"]` would take them. Left
/// out, their addresses are unknown overlay peers: the groups' defaults
/// decide, as for anything whose sender netiso cannot know.
pub fn is_load_balancer(network: &str, t: &RemoteTask) -> bool {
    t.service.is_empty()
        && t.name
            .strip_suffix("-endpoint")
            .is_some_and(|n| n == network)
}

/// `10.0.1.0/24` → (address, 24); anything else → `None`.
pub fn parse_subnet(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_names_remote_tasks_and_plain_containers() {
        let v: HashMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "web": {"VIP": "", "Tasks": [
                {"Name": "web.1.abc", "EndpointID": "e1", "EndpointIP": "10.0.1.5",
                 "Info": {"Host IP": "198.18.0.2"}},
                {"Name": "web.2.def", "EndpointIP": "garbage"}
            ]},
            "": {"Tasks": [{"Name": "plain", "EndpointIP": "10.0.1.9/24",
                            "Info": {"Host IP": "198.18.0.3"}}]},
            "empty": {"Tasks": null}
        }))
        .unwrap();
        let t = parse_gossip(&v);
        assert_eq!(
            t,
            vec![
                RemoteTask {
                    name: "plain".into(),
                    service: "".into(),
                    ip: Ipv4Addr::new(10, 0, 1, 9),
                    node: "198.18.0.3".into()
                },
                RemoteTask {
                    name: "web.1.abc".into(),
                    service: "web".into(),
                    ip: Ipv4Addr::new(10, 0, 1, 5),
                    node: "198.18.0.2".into()
                },
            ]
        );
    }

    #[test]
    fn a_networks_namespaces_by_epoch() {
        let id = "0123456789abcdef";
        assert_eq!(namespace_epoch("1-0123456789", id), Some(1));
        assert_eq!(namespace_epoch("2-0123456789", id), Some(2));
        assert_eq!(namespace_epoch("10-012345678", id), Some(10));
        assert_eq!(namespace_epoch("10-0123456789", id), None);
        assert_eq!(namespace_epoch("1-0123456780", id), None);
        assert_eq!(namespace_epoch("x-0123456789", id), None);
        assert_eq!(namespace_epoch("ingress_sbox", id), None);
        assert_eq!(namespace_epoch("0-0123456789", id), None);

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("netns")).unwrap();
        for n in [
            "1-0123456789",
            "3-0123456789",
            "2-9999999999",
            "ingress_sbox",
        ] {
            std::fs::write(root.path().join("netns").join(n), "").unwrap();
        }
        let names: Vec<String> = netns_paths(root.path(), id)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["3-0123456789", "1-0123456789"]);
        assert!(netns_paths(Path::new("/nonexistent"), id).is_empty());

        // Any overlay's namespace, never a container's sandbox (a bare id).
        for n in ["1-0123456789", "10-012345678", "2-abc"] {
            assert!(is_overlay_netns_name(n), "{n}");
        }
        for n in [
            "0123456789ab",
            "ingress_sbox",
            "0-0123456789",
            "1-",
            "x-1",
            "1-../x",
        ] {
            assert!(!is_overlay_netns_name(n), "{n}");
        }
    }

    #[test]
    fn load_balancer_endpoints_are_not_containers() {
        let t = |name: &str, service: &str| RemoteTask {
            name: name.into(),
            service: service.into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            node: "198.18.0.1".into(),
        };
        assert!(is_load_balancer("ingress", &t("ingress-endpoint", "")));
        assert!(is_load_balancer("ovx", &t("ovx-endpoint", "")));
        assert!(!is_load_balancer("ovx", &t("ingress-endpoint", "")));
        assert!(!is_load_balancer("ovx", &t("ovx-endpoint", "web")));
        assert!(!is_load_balancer("ovx", &t("web.1.abc", "web")));
        assert!(!is_load_balancer("ovx", &t("plain", "")));
    }

    #[test]
    fn slots_and_ids() {
        const F: u32 = FIRST_NS_SLOT;
        let s = NsSlots::default();
        assert_eq!(s.next(), Some(F));
        assert_eq!(s.slot(Path::new("/x/1-a")), Some(F));
        assert_eq!(s.next(), Some(F + 1));
        assert_eq!(s.slot(Path::new("/x/1-b")), Some(F + 1));
        assert_eq!(s.next(), Some(F + 2));
        // Keyed by the namespace's name: another engine pid, same slot.
        assert_eq!(s.slot(Path::new("/y/1-a")), Some(F));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netns-slots.json");
        let p = NsSlots::persistent(file.clone());
        assert_eq!(p.slot(Path::new("/x/1-b")), Some(F));
        assert_eq!(p.slot(Path::new("/x/1-c")), Some(F + 1));
        // A restart keeps them, and new ones come after.
        let again = NsSlots::persistent(file.clone());
        assert_eq!(again.slot(Path::new("/x/1-d")), Some(F + 2));
        assert_eq!(again.slot(Path::new("/x/1-c")), Some(F + 1));
        // Every overlay id lies above every ifindex the kernel gives
        // (a positive int), so no host veth ever shares one.
        assert!(endpoint_id(F, 1).unwrap() > i32::MAX as u32);
        // A file of an earlier layout (slots from 1) is renumbered.
        std::fs::write(&file, r#"{"1-old": 1}"#).unwrap();
        let old = NsSlots::persistent(file);
        assert_eq!(old.slot(Path::new("/x/1-old")), Some(F));
        assert_eq!(endpoint_id(2, 7), Some((2 << 20) | 7));
        assert_eq!(endpoint_id(1, 1 << 20), None);
        assert_eq!(
            netns_path(Path::new("/run/d"), "0123456789abcdef"),
            Some(PathBuf::from("/run/d/netns/1-0123456789"))
        );
        assert_eq!(
            parse_subnet("10.1.2.0/24"),
            Some(("10.1.2.0".parse().unwrap(), 24))
        );
        assert_eq!(parse_subnet("10.1.2.0/33"), None);
    }
}
