//! The reconciler against fakes of the seam: no root, no Docker, no
//! kernel. Each test drives `Daemon` the way the run loop does.
use std::cell::Cell;
use std::net::Ipv4Addr;

use anyhow::bail;
use netiso_common::{endpoint_flags, identity, IpKey, LearnKey, LearnValue};
use tempfile::TempDir;

use super::*;
use crate::datapath::{ApplyReport, Desired};
use crate::model::Attachment;

/// Docker with a fixed set of running containers.
#[derive(Default)]
struct FakeEngine {
    containers: BTreeMap<String, Container>,
    networks: Vec<NetworkInfo>,
    inspects: Cell<u32>,
    /// What the overlays' gossip says.
    overlays: std::cell::RefCell<Vec<OverlayInfo>>,
    /// The engine is a Swarm node.
    swarm_member: bool,
}

impl Engine for FakeEngine {
    async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        Ok(self.networks.clone())
    }

    async fn running_containers(&self) -> Result<Vec<Container>> {
        Ok(self.containers.values().cloned().collect())
    }

    async fn inspect(&self, id: &str) -> Result<Option<Container>> {
        self.inspects.set(self.inspects.get() + 1);
        Ok(self.containers.get(id).cloned())
    }

    async fn swarm_member(&self) -> Result<bool> {
        Ok(self.swarm_member)
    }

    async fn overlays(&self, nets: &[NetworkInfo]) -> Result<Vec<OverlayInfo>> {
        let ids: BTreeSet<&str> = nets.iter().map(|n| n.id.as_str()).collect();
        Ok(self
            .overlays
            .borrow()
            .iter()
            .filter(|o| ids.contains(o.id.as_str()))
            .cloned()
            .collect())
    }
}

/// Links that exist only when a test says so.
#[derive(Default)]
struct FakeLinks {
    /// (container id, network) -> host-side veth, once it exists.
    veths: BTreeMap<(String, String), u32>,
    addrs: Vec<IpAddr>,
    names: BTreeMap<u32, String>,
    all: Vec<LinkEvent>,
    name_lookups: Cell<u32>,
    /// The overlays' VXLAN ports.
    vxlan_ports: std::cell::RefCell<BTreeSet<u16>>,
}

impl HostLinks for FakeLinks {
    async fn with_veths(&self, mut c: Container) -> Container {
        for a in &mut c.networks {
            if let Some(&i) = self.veths.get(&(c.id.clone(), a.network.clone())) {
                a.host_ifindex = Some(i);
                a.host_ifname = Some(format!("veth{i}"));
            }
        }
        c
    }

    fn host_addresses(&self) -> Result<Vec<IpAddr>> {
        Ok(self.addrs.clone())
    }

    fn link_name(&self, ifindex: u32) -> Result<Option<String>> {
        self.name_lookups.set(self.name_lookups.get() + 1);
        Ok(self.names.get(&ifindex).cloned())
    }

    fn links(&self) -> Result<Vec<LinkEvent>> {
        Ok(self.all.clone())
    }

    async fn data_path_ports(&self) -> BTreeSet<u16> {
        self.vxlan_ports.borrow().clone()
    }
}

/// A datapath that records every successful apply and can be told to
/// refuse the next ones. Like the real one, a changed desired state is a
/// new generation; the same state again is not.
#[derive(Default)]
struct FakeDatapath {
    applied: Vec<Desired>,
    attempts: u32,
    fail: u32,
    generation: u32,
    /// Rows the next `drain_learned` returns.
    learned: Vec<(LearnKey, LearnValue)>,
}

impl FakeDatapath {
    fn last(&self) -> &Desired {
        self.applied.last().expect("nothing applied yet")
    }
}

impl Dataplane for FakeDatapath {
    fn generation(&self) -> u32 {
        self.generation
    }

    fn drain_learned(&mut self) -> Result<Vec<(LearnKey, LearnValue)>> {
        Ok(std::mem::take(&mut self.learned))
    }

    fn endpoint_capacity(&self) -> Result<u32> {
        Ok(1024)
    }

    fn applied_endpoints(&self) -> BTreeSet<u32> {
        self.applied
            .last()
            .map(|d| d.endpoints.keys().copied().collect())
            .unwrap_or_default()
    }

    fn apply(&mut self, desired: &Desired) -> Result<ApplyReport> {
        self.attempts += 1;
        if self.fail > 0 {
            self.fail -= 1;
            bail!("fake datapath: the policy map is full");
        }
        let switched = self.applied.last() != Some(desired);
        if switched {
            self.generation += 1;
        }
        self.applied.push(desired.clone());
        Ok(ApplyReport {
            switched,
            generation: self.generation,
            ..ApplyReport::default()
        })
    }
}

struct Fixture {
    d: Daemon<FakeDatapath, FakeLinks>,
    state: watch::Receiver<Arc<State>>,
    dir: TempDir,
}

impl Fixture {
    fn new(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let opts = Options {
            policy: path.clone(),
            pin_dir: dir.path().join("pins"),
            state_dir: dir.path().to_path_buf(),
            allow_non_ip: false,
            cross_veth_mark: netiso_common::DEFAULT_CROSS_VETH_MARK,
            services: Default::default(),
            resync_interval: None,
            watch_policy: false,
            docker_exec_root: dir.path().join("no-docker"),
            swarm_policy_service: None,
            swarm_data_path_port: VXLAN_PORT,
        };
        let policy = load_policy(&path).unwrap();
        let (tx, state) = watch::channel(Arc::new(State::default()));
        let d = Daemon::new(
            opts,
            tx,
            policy,
            IdentityAllocator::default(),
            FakeDatapath::default(),
            FakeLinks::default(),
        );
        Fixture { d, state, dir }
    }

    fn write_policy(&self, text: &str) {
        std::fs::write(self.dir.path().join("policy.toml"), text).unwrap();
    }

    fn state(&self) -> State {
        (**self.state.borrow()).clone()
    }
}

fn bridge(name: &str) -> NetworkInfo {
    NetworkInfo {
        name: name.into(),
        id: format!("{name}-id"),
        driver: "bridge".into(),
        bridge: Some(format!("br-{name}")),
    }
}

/// A container with its own namespace on `network`, address 10.0.0.`n`.
fn container(id: &str, app: &str, network: &str, n: u8) -> Container {
    Container {
        id: id.into(),
        name: id.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        pid: 100 + u32::from(n),
        network_mode: "bridge".into(),
        networks: vec![Attachment {
            network: network.into(),
            network_id: format!("{network}-id"),
            ipv4: Some(Ipv4Addr::new(10, 0, 0, n)),
            mac: Some([2, 0, 0, 0, 0, n]),
            ipv4_prefix_len: Some(24),
            ..Attachment::default()
        }],
        ..Container::default()
    }
}

fn veth_announced(ifindex: u32, master: u32) -> LinkEvent {
    LinkEvent {
        present: true,
        ifindex,
        ifname: format!("veth{ifindex}"),
        master: Some(master),
        kind: Some("veth".into()),
        addresses: false,
    }
}

const WEB: &str = r#"
[groups.web]
network = "shop"
labels = { app = "web" }
ingress = "deny"
"#;

/// WEB plus a rule: a different desired state.
const WEB_OPEN: &str = r#"
[groups.web]
network = "shop"
labels = { app = "web" }
ingress = "deny"

[[rules]]
from = "world"
to = "web"
ports = ["80/tcp"]
action = "allow"
"#;

/// Does `dp` enforce endpoint `ifindex` as a group member (not a hold)?
fn enforced(dp: &FakeDatapath, ifindex: u32) -> bool {
    dp.applied
        .last()
        .and_then(|d| d.endpoints.get(&ifindex))
        .is_some_and(|e| {
            e.identity >= identity::FIRST_GROUP_IDENTITY
                && e.flags & endpoint_flags::FAIL_CLOSED == 0
        })
}

async fn web_enforced_at_7() -> (Fixture, FakeEngine) {
    let mut f = Fixture::new(WEB);
    let engine = FakeEngine {
        containers: BTreeMap::from([("web1".into(), container("web1", "web", "shop", 2))]),
        networks: vec![bridge("shop")],
        ..FakeEngine::default()
    };
    f.d.links.veths.insert(("web1".into(), "shop".into()), 7);
    f.d.resync(&engine).await.unwrap();
    assert!(enforced(&f.d.dp, 7));
    (f, engine)
}

/// A reload whose policy the datapath refuses leaves the old one in force:
/// it is applied again at once and by every later reconcile, the state
/// keeps its rules and generation, and `last_reload` reports the failure.
#[tokio::test]
async fn a_reload_that_cannot_be_applied_rolls_back() {
    let (mut f, _engine) = web_enforced_at_7().await;
    let old_policy = f.d.policy.clone();
    let before = f.d.dp.last().clone();
    let generation = f.d.dp.generation;
    let state_before = f.state();
    assert!(f.state().last_reload.unwrap().ok);

    f.write_policy(WEB_OPEN);
    f.d.dp.fail = 1;
    let attempts = f.d.dp.attempts;
    let err = f.d.reload("control").unwrap_err();
    assert!(err.contains("the policy map is full"), "{err}");
    // The new policy was tried once, then the old one applied again.
    assert_eq!(f.d.dp.attempts, attempts + 2);
    assert_eq!(f.d.dp.last(), &before);
    assert_eq!(f.d.dp.generation, generation);
    assert_eq!(f.d.policy, old_policy);

    let state = f.state();
    let reload = state.last_reload.clone().unwrap();
    assert!(!reload.ok);
    assert_eq!(reload.trigger, "control");
    assert!(reload.error.unwrap().contains("the policy map is full"));
    assert_eq!(reload.generation, generation);
    assert_eq!(state.generation, generation);
    assert_eq!(state.rules, state_before.rules);
    assert_eq!(state.endpoints, state_before.endpoints);
    // The file the CLI reads says the same.
    let on_disk = State::read(f.dir.path()).unwrap();
    assert_eq!(on_disk.last_reload, state.last_reload);

    // The next reconcile (any Docker event) still applies the old policy.
    f.d.reconcile_logged();
    assert_eq!(f.d.dp.last(), &before);

    // Once the datapath takes it, the same file is a new generation: the
    // refused policy was a real change, not a no-op.
    f.d.reload("sighup").unwrap();
    assert_ne!(f.d.dp.last(), &before);
    assert_eq!(f.d.dp.generation, generation + 1);
    let reload = f.state().last_reload.unwrap();
    assert!(reload.ok && reload.error.is_none());
    assert_eq!(reload.generation, generation + 1);
}

/// A policy that does not compile is refused before the datapath is
/// touched.
#[tokio::test]
async fn a_reload_of_an_invalid_policy_applies_nothing() {
    let (mut f, _engine) = web_enforced_at_7().await;
    let before = f.d.dp.last().clone();
    let attempts = f.d.dp.attempts;
    f.write_policy("[groups.web]\nnetwork = 3\n");
    let err = f.d.reload("file-change").unwrap_err();
    assert!(err.contains("network"), "{err}");
    assert_eq!(f.d.dp.attempts, attempts);
    assert_eq!(f.d.dp.last(), &before);
    let reload = f.state().last_reload.unwrap();
    assert!(!reload.ok);
    assert_eq!(reload.trigger, "file-change");
}

/// A container whose veth is not there yet is looked up again exactly
/// `VETH_RETRIES` times, then left to the periodic resync; the fruitless
/// lookups do not touch the datapath.
#[tokio::test]
async fn a_missing_veth_is_retried_a_fixed_number_of_times() {
    let mut f = Fixture::new(WEB);
    let engine = FakeEngine {
        containers: BTreeMap::from([("web1".into(), container("web1", "web", "shop", 2))]),
        networks: vec![bridge("shop")],
        ..FakeEngine::default()
    };
    f.d.resync(&engine).await.unwrap();
    assert_eq!(f.d.pending, BTreeMap::from([("web1".into(), VETH_RETRIES)]));
    let attempts = f.d.dp.attempts;
    for i in 0..VETH_RETRIES {
        assert!(!f.d.pending.is_empty(), "given up after {i} retries");
        f.d.retry_pending(&engine).await;
    }
    assert!(f.d.pending.is_empty());
    assert_eq!(engine.inspects.get(), VETH_RETRIES);
    assert_eq!(f.d.dp.attempts, attempts);
    // The next resync looks again and starts a new countdown.
    f.d.resync(&engine).await.unwrap();
    assert_eq!(f.d.pending["web1"], VETH_RETRIES);
}

/// A retry that finds the veth enforces the container at once and ends
/// the countdown.
#[tokio::test]
async fn a_retry_that_finds_the_veth_enforces_at_once() {
    let mut f = Fixture::new(WEB);
    let engine = FakeEngine {
        containers: BTreeMap::from([("web1".into(), container("web1", "web", "shop", 2))]),
        networks: vec![bridge("shop")],
        ..FakeEngine::default()
    };
    f.d.resync(&engine).await.unwrap();
    for _ in 0..3 {
        f.d.retry_pending(&engine).await;
    }
    assert_eq!(f.d.pending["web1"], VETH_RETRIES - 3);
    assert!(!enforced(&f.d.dp, 7));
    f.d.links.veths.insert(("web1".into(), "shop".into()), 7);
    f.d.retry_pending(&engine).await;
    assert!(f.d.pending.is_empty());
    assert!(enforced(&f.d.dp, 7));
    assert_eq!(engine.inspects.get(), 4);
    let state = f.state();
    assert!(state
        .endpoints
        .iter()
        .any(|e| e.ifindex == Some(7) && e.enforced));
}

/// Only attachments that should have a veth wait for one: not those of a
/// driver without veths, nor containers in another's namespace.
#[tokio::test]
async fn attachments_without_a_veth_of_their_own_are_not_retried() {
    let mut f = Fixture::new(WEB);
    let mut joined = container("side", "web", "shop", 3);
    joined.network_mode = "container:web1".into();
    let engine = FakeEngine {
        containers: BTreeMap::from([
            ("mv".into(), container("mv", "web", "lan", 2)),
            ("side".into(), joined),
        ]),
        networks: vec![
            bridge("shop"),
            NetworkInfo {
                driver: "macvlan".into(),
                bridge: None,
                ..bridge("lan")
            },
        ],
        ..FakeEngine::default()
    };
    f.d.resync(&engine).await.unwrap();
    assert!(f.d.pending.is_empty(), "{:?}", f.d.pending);
}

const VAULT: &str = r#"
[groups.vault]
network = "vault"
labels = { app = "vault" }
fail_closed = true
"#;

/// A fixture for fail-closed holds: the `vault` network's bridge is link 3,
/// no container runs yet; `v1` (veth 9) is about to start.
async fn vault() -> (Fixture, FakeEngine) {
    let mut f = Fixture::new(VAULT);
    f.d.links.names.insert(3, "br-vault".into());
    let mut engine = FakeEngine {
        networks: vec![bridge("vault"), bridge("other")],
        ..FakeEngine::default()
    };
    f.d.resync(&engine).await.unwrap();
    engine
        .containers
        .insert("v1".into(), container("v1", "vault", "vault", 5));
    f.d.links.veths.insert(("v1".into(), "vault".into()), 9);
    (f, engine)
}

fn held(dp: &FakeDatapath, ifindex: u32) -> bool {
    dp.applied
        .last()
        .and_then(|d| d.endpoints.get(&ifindex))
        .is_some_and(|e| {
            e.identity == identity::UNMANAGED && e.flags & endpoint_flags::FAIL_CLOSED != 0
        })
}

/// The veth of a fail-closed network is announced (RTM_NEWLINK) before
/// Docker's start event: it is held closed at once, and released to its
/// container's own endpoint when the event classifies the container.
#[tokio::test]
async fn a_link_announced_before_the_start_event_is_held_until_classified() {
    let (mut f, engine) = vault().await;
    // The loop's link branch: a hold began, so it reconciles.
    assert!(f.d.on_link(&veth_announced(9, 3)));
    f.d.reconcile_logged();
    assert!(held(&f.d.dp, 9));
    let state = f.state();
    assert_eq!(state.held.len(), 1);
    assert_eq!(
        (state.held[0].ifindex, state.held[0].network.as_str()),
        (9, "vault")
    );
    // Announced again (a flag change): nothing new.
    assert!(!f.d.on_link(&veth_announced(9, 3)));

    let start = DockerEvent::ContainerStarted { id: "v1".into() };
    f.d.on_docker_events(&engine, [], vec![start]).await;
    assert!(enforced(&f.d.dp, 9));
    assert!(f.state().held.is_empty());
}

/// Announcement and start event in the same wake-up: the links are taken
/// first, so the datapath sees the hold before the container's endpoint
/// (never the veth open and unclassified).
#[tokio::test]
async fn links_in_the_same_batch_are_held_before_the_events_are_handled() {
    let (mut f, engine) = vault().await;
    let applies = f.d.dp.applied.len();
    let start = DockerEvent::ContainerStarted { id: "v1".into() };
    f.d.on_docker_events(&engine, [veth_announced(9, 3)], vec![start])
        .await;
    let seen = &f.d.dp.applied[applies..];
    assert_eq!(
        seen.len(),
        2,
        "one reconcile for the hold, one for the batch"
    );
    assert_eq!(
        seen[0].endpoints[&9].flags & endpoint_flags::FAIL_CLOSED,
        endpoint_flags::FAIL_CLOSED
    );
    assert!(enforced(&f.d.dp, 9));
    assert!(f.state().held.is_empty());
}

/// A container in no group on the fail-closed network: its hold ends and
/// its veth becomes an ordinary `unmanaged` endpoint.
#[tokio::test]
async fn a_hold_of_a_container_in_no_group_is_released() {
    let (mut f, mut engine) = vault().await;
    engine
        .containers
        .insert("v1".into(), container("v1", "cache", "vault", 5));
    assert!(f.d.on_link(&veth_announced(9, 3)));
    f.d.reconcile_logged();
    assert!(held(&f.d.dp, 9));
    let start = DockerEvent::ContainerStarted { id: "v1".into() };
    f.d.on_docker_events(&engine, [], vec![start]).await;
    // Its veth keeps the programs as the `unmanaged` identity (no sending
    // from another's address), no longer closed.
    let ep = &f.d.dp.last().endpoints[&9];
    assert_eq!((ep.identity, ep.flags), (identity::UNMANAGED, 0));
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert!(f.state().held.is_empty());
}

/// Veths that are not new members of a fail-closed network are not held:
/// another bridge, a veth a container already owns, a link that is not a
/// veth. Without fail-closed groups no link is even looked up.
#[tokio::test]
async fn only_unclaimed_veths_of_fail_closed_bridges_are_held() {
    let (mut f, engine) = vault().await;
    f.d.links.names.insert(4, "br-other".into());
    assert!(!f.d.on_link(&veth_announced(10, 4)));
    let mut dummy = veth_announced(11, 3);
    dummy.kind = Some("dummy".into());
    assert!(!f.d.on_link(&dummy));
    f.d.on_docker_events(
        &engine,
        [],
        vec![DockerEvent::ContainerStarted { id: "v1".into() }],
    )
    .await;
    assert!(!f.d.on_link(&veth_announced(9, 3)), "9 belongs to v1");
    assert!(f.state().held.is_empty());

    let mut plain = Fixture::new(WEB);
    plain.d.resync(&FakeEngine::default()).await.unwrap();
    assert!(!plain.d.on_link(&veth_announced(9, 3)));
    assert_eq!(plain.d.links.name_lookups.get(), 0);
}

/// What announcements missed (a full queue, a restart), the scan at each
/// resync holds; a held veth that is gone is forgotten.
#[tokio::test]
async fn the_resync_scan_holds_what_announcements_missed() {
    let (mut f, _engine) = vault().await;
    let bridge_link = LinkEvent {
        kind: Some("bridge".into()),
        master: None,
        ifname: "br-vault".into(),
        ..veth_announced(3, 0)
    };
    f.d.links.all = vec![bridge_link.clone(), veth_announced(9, 3)];
    f.d.resync(&FakeEngine {
        networks: vec![bridge("vault")],
        ..FakeEngine::default()
    })
    .await
    .unwrap();
    assert!(held(&f.d.dp, 9));
    f.d.links.all = vec![bridge_link];
    f.d.resync(&FakeEngine {
        networks: vec![bridge("vault")],
        ..FakeEngine::default()
    })
    .await
    .unwrap();
    assert!(!f.d.dp.last().endpoints.contains_key(&9));
    assert!(f.state().held.is_empty());
}

/// An address announcement re-reads the host's addresses; the `host` peer
/// follows at once when they changed, and nothing is due when they did not.
#[tokio::test]
async fn host_addresses_follow_address_announcements() {
    let (mut f, _engine) = web_enforced_at_7().await;
    let addr: IpAddr = "192.0.2.10".parse().unwrap();
    let key = IpKey::from_ip(addr, 0);
    assert!(!f.d.dp.last().identities.contains_key(&key));
    let announced = LinkEvent {
        addresses: true,
        ..veth_announced(1, 0)
    };
    f.d.links.addrs = vec![addr];
    assert!(f.d.on_link(&announced));
    f.d.reconcile_logged();
    assert_eq!(f.d.dp.last().identities[&key].identity, identity::HOST);
    assert!(
        !f.d.on_link(&announced),
        "unchanged addresses: no reconcile"
    );
    f.d.links.addrs.clear();
    assert!(f.d.on_link(&announced));
    f.d.reconcile_logged();
    assert!(!f.d.dp.last().identities.contains_key(&key));
}

/// Each unenforceable attachment is logged once while it lasts, and again
/// after it went away and came back.
#[test]
fn unenforceable_attachments_are_reported_once() {
    let mut f = Fixture::new(WEB);
    let u = |c: &str| Unenforceable {
        container: c.into(),
        network: "host".into(),
        reason: "host network mode".into(),
    };
    assert_eq!(f.d.report_unenforceable(&[u("a")]), 1);
    assert_eq!(f.d.report_unenforceable(&[u("a")]), 0);
    assert_eq!(f.d.report_unenforceable(&[u("a"), u("b")]), 1);
    assert_eq!(f.d.report_unenforceable(&[u("b")]), 0);
    assert_eq!(f.d.report_unenforceable(&[u("a"), u("b")]), 1);
}

/// A container that stops leaves the datapath, and a pending veth lookup
/// for it ends.
#[tokio::test]
async fn a_stopped_container_is_forgotten() {
    let (mut f, mut engine) = web_enforced_at_7().await;
    engine
        .containers
        .insert("web2".into(), container("web2", "web", "shop", 3));
    f.d.on_docker_events(
        &engine,
        [],
        vec![DockerEvent::ContainerStarted { id: "web2".into() }],
    )
    .await;
    assert!(f.d.pending.contains_key("web2"));
    engine.containers.clear();
    f.d.on_docker_events(
        &engine,
        [],
        vec![
            DockerEvent::ContainerStopped { id: "web1".into() },
            DockerEvent::ContainerRemoved { id: "web2".into() },
        ],
    )
    .await;
    assert!(f.d.pending.is_empty());
    assert!(f.d.dp.last().endpoints.is_empty());
}

/// Swarm: tasks the overlay's gossip lists on other nodes get their
/// service's group (their address, its identity; no endpoint here); a task
/// whose address is a local container's is that container; the overlay's
/// subnet is the unknown overlay peer; a task that appears later is named
/// at the next gossip read.
#[tokio::test]
async fn remote_tasks_from_gossip_get_identities_and_the_subnet_is_unknown() {
    use crate::model::RemoteTask;
    let mut f = Fixture::new(
        r#"
[groups.api]
swarm = { service = "api" }
ingress = "deny"

[groups.web]
swarm = { service = "web" }

[[rules]]
from = "web"
to = "api"
ports = ["80/tcp"]
action = "allow"
"#,
    );
    let ov = NetworkInfo {
        name: "ov".into(),
        id: "ov-id-0123456789".into(),
        driver: "overlay".into(),
        bridge: None,
    };
    let mut api = container("api1", "x", "ov", 2);
    api.networks[0].network_id = ov.id.clone();
    api.labels
        .insert(crate::model::SWARM_SERVICE.into(), "api".into());
    let task = |name: &str, service: &str, n: u8| RemoteTask {
        name: name.into(),
        service: service.into(),
        ip: Ipv4Addr::new(10, 0, 0, n),
        node: "198.18.0.2".into(),
    };
    let engine = FakeEngine {
        containers: BTreeMap::from([("api1".into(), api)]),
        networks: vec![ov.clone()],
        overlays: std::cell::RefCell::new(vec![OverlayInfo {
            name: "ov".into(),
            id: ov.id.clone(),
            subnets: vec![("10.0.0.0".parse().unwrap(), 24)],
            // The local api task is in the gossip too.
            tasks: vec![task("api.1.a", "api", 2), task("web.1.b", "web", 3)],
        }]),
        ..FakeEngine::default()
    };
    f.d.links.veths.insert(("api1".into(), "ov".into()), 7);
    f.d.resync(&engine).await.unwrap();
    assert!(enforced(&f.d.dp, 7));
    let d = f.d.dp.last().clone();
    let ident = |n: u8| {
        d.identities
            .get(&IpKey::v4([10, 0, 0, n], 0))
            .map(|i| i.identity)
    };
    let state = f.state();
    let groups_of = |id: Option<u32>| state.identities.get(&id.unwrap()).cloned();
    assert_eq!(groups_of(ident(2)), Some(vec!["api".to_string()]));
    assert_eq!(groups_of(ident(3)), Some(vec!["web".to_string()]));
    // Only the local container has an endpoint.
    assert_eq!(d.endpoints.keys().copied().collect::<Vec<_>>(), vec![7]);
    let web = state
        .endpoints
        .iter()
        .find(|e| e.container == "web.1.b")
        .expect("the remote task in the state");
    assert_eq!(web.remote_node.as_deref(), Some("198.18.0.2"));
    assert!(!web.enforced);
    assert!(state.unenforceable.is_empty(), "{:?}", state.unenforceable);
    assert_eq!(
        d.cidrs
            .get(&("10.0.0.0".parse().unwrap(), 24))
            .map(|i| i.identity),
        Some(identity::UNKNOWN_OVERLAY_PEER)
    );
    assert_eq!(ident(4), None);

    // A task started on the other node: named at the next read.
    engine
        .overlays
        .borrow_mut()
        .first_mut()
        .unwrap()
        .tasks
        .push(task("web.2.c", "web", 4));
    assert!(f.d.refresh_overlays(&engine).await);
    f.d.reconcile_logged();
    assert!(!f.d.refresh_overlays(&engine).await, "nothing new");
    let d = f.d.dp.last().clone();
    assert_eq!(
        d.identities
            .get(&IpKey::v4([10, 0, 0, 4], 0))
            .map(|i| i.identity),
        d.identities
            .get(&IpKey::v4([10, 0, 0, 3], 0))
            .map(|i| i.identity)
    );

    // The built-in deny covers the configured data path port and every
    // port an overlay's VXLAN link has (a swarm made with
    // `--data-path-port 7789`, the daemon not told).
    let built_in = |s: &State| -> Vec<String> {
        s.rules
            .iter()
            .filter(|r| r.location == "built-in")
            .map(|r| r.ports.clone())
            .collect()
    };
    assert_eq!(f.state().swarm_data_path_ports, vec![VXLAN_PORT]);
    assert_eq!(built_in(&f.state()), ["4789/udp"]);
    f.d.links.vxlan_ports.borrow_mut().insert(7789);
    assert!(f.d.refresh_overlays(&engine).await, "a new data path port");
    f.d.reconcile_logged();
    assert!(!f.d.refresh_overlays(&engine).await, "nothing new");
    assert_eq!(f.state().swarm_data_path_ports, vec![VXLAN_PORT, 7789]);
    assert_eq!(built_in(&f.state()), ["4789/udp", "7789/udp"]);
    // The datapath gets them too (flows *from* them), with the first
    // built-in rule's id.
    let rule = f
        .state()
        .rules
        .iter()
        .find(|r| r.location == "built-in")
        .unwrap()
        .id;
    let d = f.d.dp.last();
    assert_eq!(d.data_path_ports, [VXLAN_PORT, 7789, 0, 0]);
    assert_eq!(d.data_path_rule, rule);
}

/// A Swarm node with no overlay and no `docker_gwbridge` (a worker with no
/// task, the routing mesh removed) still denies the data path: its
/// address is a node's to the others, whose VXLAN sockets take its frames.
/// A node outside any swarm does not.
#[tokio::test]
async fn a_swarm_node_without_overlays_denies_the_data_path() {
    for member in [true, false] {
        let mut f = Fixture::new("[groups.web]\nlabels = { app = \"web\" }\n");
        let engine = FakeEngine {
            swarm_member: member,
            ..FakeEngine::default()
        };
        f.d.resync(&engine).await.unwrap();
        f.d.reconcile_logged();
        let want: Vec<u16> = if member { vec![VXLAN_PORT] } else { vec![] };
        assert_eq!(f.state().swarm_data_path_ports, want, "member: {member}");
        assert_eq!(
            f.state().rules.iter().any(|r| r.location == "built-in"),
            member
        );
    }
}
