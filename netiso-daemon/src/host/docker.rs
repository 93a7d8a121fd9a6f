//! Docker engine access: running containers as [`model::Container`](crate::model::Container)s and the
//! event stream that says when to look again.
//!
//! Everything the engine may leave out (old API versions, network modes
//! without addresses, containers vanishing mid-listing) maps to empty or
//! `None` fields or to a skipped container, never to a panic.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::Docker;
use futures::{future, Stream, StreamExt, TryStreamExt};

use crate::model::{Attachment, Container};

/// How long `connect` waits for the engine's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Parallel inspects while listing: enough to hide latency, few enough not to
/// load a busy engine.
const INSPECT_CONCURRENCY: usize = 8;

/// A change the daemon reacts to. Ids are full container ids; network names
/// are Docker network names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEvent {
    ContainerStarted {
        id: String,
    },
    ContainerStopped {
        id: String,
    },
    ContainerRemoved {
        id: String,
    },
    ContainerRenamed {
        id: String,
    },
    NetworkConnected {
        container_id: String,
        network: String,
    },
    NetworkDisconnected {
        container_id: String,
        network: String,
    },
    NetworkCreated {
        name: String,
    },
    NetworkRemoved {
        name: String,
    },
}

/// A Docker network as the daemon needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// The bridge device of a `bridge` network (`br-<id>` unless named).
    pub bridge: Option<String>,
}

/// A connection to the Docker engine (cheap to clone).
#[derive(Clone, Debug)]
pub struct DockerClient {
    docker: Docker,
    host: String,
}

impl DockerClient {
    /// Connects to `DOCKER_HOST` (unix:// or tcp://) or the local unix socket,
    /// and negotiates the API version down to what the engine speaks
    /// (Debian's Engine 20.10 speaks 1.41).
    pub async fn connect() -> Result<Self> {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let docker = Docker::connect_with_defaults()
            .with_context(|| format!("creating a Docker client for {host}"))?;
        let docker =
            match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => Err(anyhow!("no answer within {CONNECT_TIMEOUT:?}")),
            }
            .with_context(|| {
                format!("cannot reach the Docker engine at {host}; is dockerd running?")
            })?;
        Ok(Self { docker, host })
    }

    /// Every running (or paused: its veth still carries traffic once resumed)
    /// container. Containers that disappear between the listing and their
    /// inspection are skipped.
    pub async fn running_containers(&self) -> Result<Vec<Container>> {
        let opts = ListContainersOptionsBuilder::default().all(false).build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .with_context(|| format!("listing containers at {}", self.host))?;
        let ids: Vec<String> = list.into_iter().filter_map(|s| s.id).collect();
        let found: Vec<Option<Container>> = futures::stream::iter(ids)
            .map(|id| async move { self.inspect_one(&id).await })
            .buffered(INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        // Read after the containers: a task listed above has its gateway
        // endpoint already (the engine makes it before the start).
        let gw = self.gwbridge_attachments().await?;
        Ok(found
            .into_iter()
            .flatten()
            .map(|c| with_gwbridge(c, &gw))
            .collect())
    }

    /// One container by id or name; `Ok(None)` if it does not exist or is not
    /// running. A Swarm task's `docker_gwbridge` interface is one of its
    /// attachments (see [`GWBRIDGE`]).
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>> {
        let Some(c) = self.inspect_one(id).await? else {
            return Ok(None);
        };
        let gw = self.gwbridge_attachments().await?;
        Ok(Some(with_gwbridge(c, &gw)))
    }

    /// The endpoints of [`GWBRIDGE`] by container id (none when the
    /// network does not exist: no Swarm here).
    async fn gwbridge_attachments(&self) -> Result<HashMap<String, Attachment>> {
        let r = match self.docker.inspect_network(GWBRIDGE, None).await {
            Ok(r) => r,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(HashMap::new()),
            Err(e) => return Err(e).with_context(|| format!("inspecting network {GWBRIDGE}")),
        };
        let network_id = r.id.unwrap_or_default();
        Ok(r.containers
            .unwrap_or_default()
            .into_iter()
            .map(|(id, ep)| (id, gwbridge_attachment(&network_id, &ep)))
            .collect())
    }

    /// [`Self::inspect`] without the `docker_gwbridge` attachment.
    async fn inspect_one(&self, id: &str) -> Result<Option<Container>> {
        match self.docker.inspect_container(id, None).await {
            Ok(r) => Ok(container_from_inspect(id, r)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("inspecting container {id}")),
        }
    }

    /// Whether the engine is a Swarm node (joined, or joining; not
    /// `inactive`): then it may have VXLAN sockets, and its address is a
    /// node's to the other nodes', whatever overlays it has now.
    pub async fn swarm_member(&self) -> Result<bool> {
        use bollard::models::LocalNodeState;
        let info = self
            .docker
            .info()
            .await
            .context("asking the engine for its info")?;
        Ok(!matches!(
            info.swarm.and_then(|s| s.local_node_state),
            None | Some(LocalNodeState::INACTIVE | LocalNodeState::EMPTY)
        ))
    }

    /// Every network: name, driver (`bridge`, `macvlan`, `ipvlan`, `host`,
    /// `null`, `overlay`, …: whether an attachment can have a host-side veth
    /// at all) and, for bridge networks, the bridge device's name.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        let nets = self
            .docker
            .list_networks(None)
            .await
            .with_context(|| format!("listing networks at {}", self.host))?;
        Ok(nets
            .into_iter()
            .filter_map(|n| {
                let id = n.id.unwrap_or_default();
                let driver = n.driver.unwrap_or_default();
                let bridge = (driver == "bridge").then(|| {
                    n.options
                        .as_ref()
                        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
                        .filter(|b| !b.is_empty())
                        .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)))
                });
                Some(NetworkInfo {
                    name: n.name?,
                    id,
                    driver,
                    bridge,
                })
            })
            .collect())
    }

    /// What this node knows of each Swarm overlay in `nets` (`driver =
    /// overlay`, the routing mesh's `ingress` too): its subnets and
    /// the endpoints its gossip lists (`network inspect --verbose`; only
    /// on a node with a local endpoint of the network is it filled). An
    /// overlay that vanished meanwhile is skipped.
    pub async fn overlays(
        &self,
        nets: &[NetworkInfo],
    ) -> Result<Vec<crate::host::overlay::OverlayInfo>> {
        use crate::host::overlay::{is_load_balancer, parse_gossip, parse_subnet, OverlayInfo};
        let mut out = Vec::new();
        for n in nets.iter().filter(|n| n.driver == "overlay") {
            let opts = bollard::query_parameters::InspectNetworkOptionsBuilder::new()
                .verbose(true)
                .build();
            let r = match self.docker.inspect_network(&n.id, Some(opts)).await {
                Ok(r) => r,
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(e).with_context(|| format!("inspecting overlay {}", n.name)),
            };
            let subnets = r
                .ipam
                .and_then(|i| i.config)
                .into_iter()
                .flatten()
                .filter_map(|c| parse_subnet(c.subnet.as_deref()?))
                .collect();
            out.push(OverlayInfo {
                name: n.name.clone(),
                id: n.id.clone(),
                subnets,
                tasks: r
                    .services
                    .as_ref()
                    .map(parse_gossip)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| !is_load_balancer(&n.name, t))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Every node of the Swarm (a manager's `/nodes`): `Err` on a worker
    /// or outside a swarm, with what to do.
    pub async fn swarm_nodes(&self) -> Result<Vec<SwarmNode>> {
        let nodes = self.docker.list_nodes(None).await.map_err(manager_only)?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let spec = n.spec.unwrap_or_default();
                let status = n.status.unwrap_or_default();
                SwarmNode {
                    id: n.id.unwrap_or_default(),
                    hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                    role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
                    availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    addr: status.addr.unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The tasks of `service` Swarm wants running (a manager's `/tasks`).
    pub async fn service_tasks(&self, service: &str) -> Result<Vec<SwarmTask>> {
        let filters = HashMap::from([
            ("service".to_string(), vec![service.to_string()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ]);
        let opts = bollard::query_parameters::ListTasksOptions {
            filters: Some(filters),
        };
        let tasks = self
            .docker
            .list_tasks(Some(opts))
            .await
            .map_err(manager_only)?;
        Ok(tasks
            .into_iter()
            .map(|t| {
                let status = t.status.unwrap_or_default();
                SwarmTask {
                    node_id: t.node_id.unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    since: status.timestamp.unwrap_or_default(),
                    error: status.err.filter(|e| !e.is_empty()),
                    message: status.message.unwrap_or_default(),
                    configs: t
                        .spec
                        .and_then(|s| s.container_spec)
                        .and_then(|c| c.configs)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.config_name)
                        .collect(),
                }
            })
            .collect())
    }

    /// Engine and API versions, e.g. `Docker Engine 20.10.24 (API 1.41, client uses 1.41)`.
    pub async fn version(&self) -> Result<String> {
        let v = self
            .docker
            .version()
            .await
            .with_context(|| format!("asking {} for its version", self.host))?;
        Ok(format!(
            "Docker Engine {} (API {}, client uses {})",
            v.version.as_deref().unwrap_or("unknown"),
            v.api_version.as_deref().unwrap_or("unknown"),
            self.docker.client_version()
        ))
    }

    /// The engine's events since `since` (unix seconds; pass the time of the
    /// last resync so nothing is missed across reconnects), reduced to the
    /// [`DockerEvent`]s netiso cares about.
    ///
    /// The request is only sent when the stream is first polled: events
    /// between this call and that poll are only seen if `since` covers them.
    /// The stream ends when the engine closes the connection; errors are
    /// reported as items, after which the caller should reconnect and resync.
    pub fn events(
        &self,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<DockerEvent>> + Send + Unpin + 'static {
        let filters = HashMap::from([
            ("type", vec!["container", "network"]),
            (
                "event",
                vec![
                    "start",
                    "die",
                    "destroy",
                    "rename",
                    "connect",
                    "disconnect",
                    "create",
                ],
            ),
        ]);
        let mut opts = EventsOptionsBuilder::default().filters(&filters);
        if let Some(s) = since {
            opts = opts.since(&s.to_string());
        }
        let host = self.host.clone();
        self.docker
            .events(Some(opts.build()))
            .map(move |r| r.with_context(|| format!("Docker event stream from {host}")))
            .try_filter_map(|m| future::ready(Ok(event_from_message(m))))
    }
}

/// A node of the Swarm, as a manager lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready`, `down`, …
    pub state: String,
    pub addr: String,
}

/// A task of a service, as a manager lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmTask {
    pub node_id: String,
    /// `running`, `starting` (not healthy yet), `failed`, …
    pub state: String,
    /// RFC 3339 time of the last state change.
    pub since: String,
    pub error: Option<String>,
    pub message: String,
    /// Names of the Swarm configs the task carries.
    pub configs: Vec<String>,
}

/// A worker's (or a lone engine's) refusal, with what to do.
fn manager_only(e: BollardError) -> anyhow::Error {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 503,
            message,
        } => {
            anyhow!("{message}: run this on a manager node (only managers see every node's tasks)")
        }
        e => anyhow::Error::from(e).context("asking the Swarm manager"),
    }
}

/// The bridge Swarm gives every task (and every container on an
/// attachable overlay) for its traffic out of the cluster and for ports
/// published in `host` mode. The container has an interface on it, but
/// the network is not in the container's `NetworkSettings`: only the
/// network's own inspection names the endpoint (`Containers[<container
/// id>]`). Left out, that veth would be a way in and out nobody judges.
pub const GWBRIDGE: &str = "docker_gwbridge";

/// A `docker_gwbridge` endpoint as an attachment like any other.
fn gwbridge_attachment(network_id: &str, ep: &bollard::models::EndpointResource) -> Attachment {
    let (ipv4, ipv4_prefix_len) = match ep.ipv4_address.as_deref().map(|a| a.split_once('/')) {
        Some(Some((ip, len))) => (ip.parse().ok(), len.parse().ok().filter(|l| *l <= 32)),
        Some(None) => (parse_opt(ep.ipv4_address.as_deref()), None),
        None => (None, None),
    };
    let ipv6 = ep
        .ipv6_address
        .as_deref()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv6Addr>().ok());
    Attachment {
        network: GWBRIDGE.to_string(),
        network_id: network_id.to_string(),
        ipv4,
        ipv6,
        mac: ep.mac_address.as_deref().and_then(parse_mac),
        ipv4_prefix_len,
        host_ifindex: None,
        host_ifname: None,
        host_netns: None,
    }
}

/// `c` with its `docker_gwbridge` endpoint from `gw` (by container id), if
/// it has one and does not list the network already.
fn with_gwbridge(mut c: Container, gw: &HashMap<String, Attachment>) -> Container {
    if let Some(a) = gw.get(&c.id) {
        if !c.networks.iter().any(|n| n.network == GWBRIDGE) {
            c.networks.push(a.clone());
            c.networks.sort_by(|a, b| a.network.cmp(&b.network));
        }
    }
    c
}

/// `Some` only for a running container. `fallback_id` (what the caller asked
/// for) stands in for a missing `Id`.
fn container_from_inspect(fallback_id: &str, r: ContainerInspectResponse) -> Option<Container> {
    let state = r.state.unwrap_or_default();
    if state.running != Some(true) {
        return None;
    }
    // Running without a PID happens briefly during start/stop; nothing to
    // enforce on yet.
    let pid = state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)?;
    let config = r.config.unwrap_or_default();
    let settings = r.network_settings.unwrap_or_default();
    let published = published_ports(settings.ports.as_ref());
    let mut networks: Vec<Attachment> = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| Attachment {
            network: name,
            network_id: ep.network_id.unwrap_or_default(),
            ipv4: parse_opt(ep.ip_address.as_deref()),
            ipv6: parse_opt::<Ipv6Addr>(ep.global_ipv6_address.as_deref()),
            mac: ep.mac_address.as_deref().and_then(parse_mac),
            ipv4_prefix_len: ep
                .ip_prefix_len
                .and_then(|l| u8::try_from(l).ok())
                .filter(|l| *l <= 32),
            host_ifindex: None,
            host_ifname: None,
            host_netns: None,
        })
        .collect();
    networks.sort_by(|a, b| a.network.cmp(&b.network));
    Some(Container {
        id: r.id.unwrap_or_else(|| fallback_id.to_string()),
        name: r
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        // The name the user ran (`busybox:1.36`), which is what policies
        // select on; the image id only when the config lacks it.
        image: config.image.or(r.image).unwrap_or_default(),
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        pid,
        network_mode: r
            .host_config
            .and_then(|h| h.network_mode)
            .unwrap_or_default(),
        networks,
        published,
        remote_node: None,
    })
}

/// `NetworkSettings.Ports` (`"8080/tcp" -> [{HostIp, HostPort}]`) as the
/// ports the host publishes; anything unparsable is skipped.
fn published_ports(
    ports: Option<&HashMap<String, Option<Vec<bollard::models::PortBinding>>>>,
) -> Vec<crate::model::Published> {
    let mut out = Vec::new();
    for (spec, bindings) in ports.into_iter().flatten() {
        let Some((port, proto)) = spec.split_once('/') else {
            continue;
        };
        let proto = match proto {
            "tcp" => netiso_common::proto::TCP,
            "udp" => netiso_common::proto::UDP,
            _ => continue,
        };
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.iter().flatten() {
            if let Some(host_port) = parse_opt::<u16>(b.host_port.as_deref()) {
                out.push(crate::model::Published {
                    proto,
                    host_port,
                    container_port,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Empty strings (Docker's way of saying "none") and garbage both give `None`.
fn parse_opt<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s.filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

/// `02:42:ac:11:00:02` → bytes; anything else → `None`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn event_from_message(m: EventMessage) -> Option<DockerEvent> {
    let actor = m.actor.unwrap_or_default();
    let id = actor.id.filter(|s| !s.is_empty());
    let attrs = actor.attributes.unwrap_or_default();
    let action = m.action.unwrap_or_default();
    let ev = match (m.typ?, action.as_str()) {
        (EventMessageTypeEnum::CONTAINER, "start") => DockerEvent::ContainerStarted { id: id? },
        (EventMessageTypeEnum::CONTAINER, "die") => DockerEvent::ContainerStopped { id: id? },
        (EventMessageTypeEnum::CONTAINER, "destroy") => DockerEvent::ContainerRemoved { id: id? },
        (EventMessageTypeEnum::CONTAINER, "rename") => DockerEvent::ContainerRenamed { id: id? },
        (EventMessageTypeEnum::NETWORK, action @ ("connect" | "disconnect")) => {
            let container_id = attrs.get("container").filter(|s| !s.is_empty())?.clone();
            // Actor.ID is the network id; the name is what policies use.
            let network = attrs.get("name").cloned().or(id)?;
            if action == "connect" {
                DockerEvent::NetworkConnected {
                    container_id,
                    network,
                }
            } else {
                DockerEvent::NetworkDisconnected {
                    container_id,
                    network,
                }
            }
        }
        (EventMessageTypeEnum::NETWORK, "create") => DockerEvent::NetworkCreated {
            name: attrs.get("name").cloned().or(id)?,
        },
        (EventMessageTypeEnum::NETWORK, "destroy") => DockerEvent::NetworkRemoved {
            name: attrs.get("name").cloned().or(id)?,
        },
        _ => return None,
    };
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("02:42:AC:11:00:FF").unwrap()[5], 0xff);
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_tasks_gwbridge_endpoint_becomes_an_attachment() {
        // Trimmed from `docker network inspect docker_gwbridge` (Engine 20.10).
        let net: bollard::models::NetworkInspect = serde_json::from_value(serde_json::json!({
            "Name": "docker_gwbridge", "Id": "gw1d",
            "Containers": {
                "abc123": {"Name": "gateway_0f1e", "EndpointID": "0f1e",
                    "MacAddress": "02:42:ac:12:00:03", "IPv4Address": "172.18.0.3/16",
                    "IPv6Address": ""},
                "ingress-sbox": {"Name": "gateway_ingress-sbox", "EndpointID": "9a",
                    "MacAddress": "02:42:ac:12:00:02", "IPv4Address": "172.18.0.2/16",
                    "IPv6Address": ""}
            }
        }))
        .unwrap();
        let ep = &net.containers.as_ref().unwrap()["abc123"];
        let a = gwbridge_attachment("gw1d", ep);
        assert_eq!(a.network, GWBRIDGE);
        assert_eq!(a.network_id, "gw1d");
        assert_eq!(a.ipv4, Some(Ipv4Addr::new(172, 18, 0, 3)));
        assert_eq!(a.ipv4_prefix_len, Some(16));
        assert_eq!(a.ipv6, None);
        assert_eq!(a.mac, Some([2, 0x42, 0xac, 0x12, 0, 3]));

        let gw = HashMap::from([("abc123".to_string(), a.clone())]);
        let c = Container {
            id: "abc123".into(),
            networks: vec![Attachment {
                network: "ov".into(),
                ..a.clone()
            }],
            ..Default::default()
        };
        let c = with_gwbridge(c, &gw);
        let names: Vec<&str> = c.networks.iter().map(|a| a.network.as_str()).collect();
        assert_eq!(names, ["docker_gwbridge", "ov"]);
        // Once only, and never for a container the network does not name.
        assert_eq!(with_gwbridge(c, &gw).networks.len(), 2);
        let other = Container {
            id: "def456".into(),
            ..Default::default()
        };
        assert!(with_gwbridge(other, &gw).networks.is_empty());
    }

    fn inspect_json(v: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn inspect_of_running_container_maps_every_field() {
        // Trimmed from a real Engine 20.10 (API 1.41) answer.
        let r = inspect_json(serde_json::json!({
            "Id": "abc123",
            "Name": "/web",
            "Image": "sha256:deadbeef",
            "State": {"Status": "running", "Running": true, "Pid": 4242},
            "Config": {"Image": "netiso-busybox:test", "Labels": {"tier": "front"}},
            "HostConfig": {"NetworkMode": "appnet"},
            "NetworkSettings": {"Networks": {
                "zeta": {"NetworkID": "n2", "IPAddress": "", "GlobalIPv6Address": "", "MacAddress": ""},
                "appnet": {"NetworkID": "n1", "IPAddress": "172.18.0.2",
                           "GlobalIPv6Address": "fd00::2", "MacAddress": "02:42:ac:12:00:02"}
            }}
        }));
        let c = container_from_inspect("abc", r).unwrap();
        assert_eq!(c.id, "abc123");
        assert_eq!(c.name, "web");
        assert_eq!(c.image, "netiso-busybox:test");
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(c.pid, 4242);
        assert_eq!(c.network_mode, "appnet");
        assert_eq!(c.networks.len(), 2);
        let a = &c.networks[0];
        assert_eq!(a.network, "appnet");
        assert_eq!(a.network_id, "n1");
        assert_eq!(a.ipv4, Some(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(a.ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(a.mac, Some([2, 0x42, 0xac, 0x12, 0, 2]));
        let z = &c.networks[1];
        assert_eq!((z.ipv4, z.ipv6, z.mac), (None, None, None));
    }

    #[test]
    fn sparse_or_stopped_inspect_never_panics() {
        assert_eq!(
            container_from_inspect("x", inspect_json(serde_json::json!({}))),
            None
        );
        let stopped = serde_json::json!({"State": {"Running": false, "Pid": 0}});
        assert_eq!(container_from_inspect("x", inspect_json(stopped)), None);
        let no_pid = serde_json::json!({"State": {"Running": true, "Pid": 0}});
        assert_eq!(container_from_inspect("x", inspect_json(no_pid)), None);
        let bare = serde_json::json!({"State": {"Running": true, "Pid": 7}});
        let c = container_from_inspect("x", inspect_json(bare)).unwrap();
        assert_eq!(c.id, "x");
        assert!(c.name.is_empty() && c.networks.is_empty() && c.labels.is_empty());
        let garbage = serde_json::json!({"State": {"Running": true, "Pid": 7},
            "NetworkSettings": {"Networks": {"n": {"IPAddress": "not-an-ip", "MacAddress": "??"}}}});
        let c = container_from_inspect("x", inspect_json(garbage)).unwrap();
        assert_eq!((c.networks[0].ipv4, c.networks[0].mac), (None, None));
    }

    fn event(v: serde_json::Value) -> Option<DockerEvent> {
        event_from_message(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn events_map_to_docker_events() {
        let e = event(serde_json::json!({"Type": "container", "Action": "start",
            "Actor": {"ID": "c1", "Attributes": {"name": "web"}}}));
        assert_eq!(e, Some(DockerEvent::ContainerStarted { id: "c1".into() }));
        let e = event(serde_json::json!({"Type": "network", "Action": "connect",
            "Actor": {"ID": "n1", "Attributes": {"container": "c1", "name": "appnet", "type": "bridge"}}}));
        assert_eq!(
            e,
            Some(DockerEvent::NetworkConnected {
                container_id: "c1".into(),
                network: "appnet".into()
            })
        );
        let e = event(serde_json::json!({"Type": "network", "Action": "destroy",
            "Actor": {"ID": "n1", "Attributes": {"name": "appnet"}}}));
        assert_eq!(
            e,
            Some(DockerEvent::NetworkRemoved {
                name: "appnet".into()
            })
        );
        // Passes the engine-side filter (type=container, event=create) but is not ours.
        assert_eq!(
            event(
                serde_json::json!({"Type": "container", "Action": "create", "Actor": {"ID": "c1"}})
            ),
            None
        );
        // Malformed: no actor.
        assert_eq!(
            event(serde_json::json!({"Type": "container", "Action": "die"})),
            None
        );
        assert_eq!(
            event(
                serde_json::json!({"Type": "network", "Action": "connect", "Actor": {"ID": "n1"}})
            ),
            None
        );
    }

    /// Tests against the real engine: containers from the locally imported
    /// `netiso-busybox:test` image on a test-owned bridge network.
    mod engine {
        use super::super::*;
        use crate::host::netlink;
        use std::process::Command;
        use std::sync::atomic::{AtomicU32, Ordering};

        const IMAGE: &str = "netiso-busybox:test";

        async fn client() -> DockerClient {
            match DockerClient::connect().await {
                Ok(c) => c,
                Err(e) => {
                    panic!("Docker engine not reachable: {e:#}\nstart Docker: cargo xtask setup")
                }
            }
        }

        fn docker(args: &[&str]) -> String {
            let out = Command::new("docker")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"));
            assert!(
                out.status.success(),
                "docker {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }

        /// A test-owned network and the containers on it; all removed in Drop,
        /// also when the test panics.
        struct Scene {
            prefix: String,
            /// The network containers are started on.
            network: String,
            networks: std::sync::Mutex<Vec<String>>,
            containers: std::sync::Mutex<Vec<String>>,
        }

        impl Scene {
            fn new() -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let prefix = format!(
                    "netiso-t-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let inspect = Command::new("docker")
                    .args(["image", "inspect", IMAGE])
                    .output()
                    .expect("running docker");
                assert!(
                    inspect.status.success(),
                    "test image {IMAGE} missing; create it with: cargo xtask setup"
                );
                let mut s = Scene {
                    network: String::new(),
                    prefix,
                    networks: Default::default(),
                    containers: Default::default(),
                };
                s.network = s.create_network("");
                s
            }

            /// Creates a bridge network named after the scene.
            fn create_network(&self, suffix: &str) -> String {
                let name = format!("{}{suffix}", self.prefix);
                self.networks.lock().unwrap().push(name.clone());
                docker(&["network", "create", "--driver", "bridge", &name]);
                name
            }

            /// Starts `sleep 600` on the test network; returns the full id.
            fn run(&self, suffix: &str) -> String {
                let name = format!("{}-{suffix}", self.prefix);
                // Registered before `run` so a half-started container is removed too.
                self.containers.lock().unwrap().push(name.clone());
                docker(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    &self.network,
                    "--label",
                    "netiso.test=1",
                    IMAGE,
                    "sleep",
                    "600",
                ])
            }
        }

        impl Drop for Scene {
            fn drop(&mut self) {
                let names = self
                    .containers
                    .lock()
                    .map(|c| c.clone())
                    .unwrap_or_default();
                if !names.is_empty() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&names)
                        .output();
                }
                // Containers first: a network in use cannot be removed.
                let nets = self.networks.lock().map(|n| n.clone()).unwrap_or_default();
                if !nets.is_empty() {
                    let _ = Command::new("docker")
                        .args(["network", "rm"])
                        .args(&nets)
                        .output();
                }
            }
        }

        #[tokio::test]
        async fn version_is_reported() {
            let v = client().await.version().await.unwrap();
            assert!(v.contains("API 1."), "{v}");
        }

        #[tokio::test]
        async fn missing_container_is_none() {
            let c = client().await;
            assert_eq!(c.inspect("netiso-t-no-such-container").await.unwrap(), None);
        }

        #[tokio::test]
        async fn lists_inspects_and_resolves_veths_of_real_containers() {
            let client = client().await;
            let scene = Scene::new();
            let ids = [scene.run("a"), scene.run("b")];

            let all = client.running_containers().await.unwrap();
            for id in &ids {
                let listed = all
                    .iter()
                    .find(|c| &c.id == id)
                    .unwrap_or_else(|| panic!("{id} not listed"));
                let mut c = client.inspect(id).await.unwrap().expect("running");
                assert_eq!(&c, listed);
                assert!(c.name.starts_with(&scene.prefix), "{}", c.name);
                assert_eq!(c.image, IMAGE);
                assert_eq!(c.labels.get("netiso.test").map(String::as_str), Some("1"));
                assert!(c.pid > 0);
                assert_eq!(c.network_mode, scene.network);
                assert_eq!(c.networks.len(), 1, "{:?}", c.networks);

                let a = &c.networks[0];
                assert_eq!(a.network, scene.network);
                let want_ip = docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    id,
                ]);
                let want_mac = docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}",
                    id,
                ]);
                assert_eq!(a.ipv4.map(|i| i.to_string()), Some(want_ip));
                assert_eq!(a.mac, parse_mac(&want_mac));
                assert!(a.mac.is_some());
                assert!(!a.network_id.is_empty());

                netlink::resolve_host_veths(&mut c).unwrap();
                let a = &c.networks[0];
                let idx = a.host_ifindex.expect("host veth resolved");
                let name = a.host_ifname.clone().expect("host veth name");
                assert_eq!(netlink::link_name(idx).unwrap(), Some(name.clone()));
                let sys: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                assert_eq!(sys, idx);
            }

            // Paused containers keep their veth and stay enforced.
            docker(&["pause", &ids[0]]);
            let paused = client.running_containers().await;
            docker(&["unpause", &ids[0]]);
            assert!(
                paused.unwrap().iter().any(|c| c.id == ids[0]),
                "paused container not listed"
            );

            // Stopped containers are not "running".
            docker(&["stop", "-t", "0", &ids[1]]);
            assert_eq!(client.inspect(&ids[1]).await.unwrap(), None);
            assert!(!client
                .running_containers()
                .await
                .unwrap()
                .iter()
                .any(|c| c.id == ids[1]));
        }

        /// Reads events until `want` shows up; fails after 20 s or at stream end.
        async fn wait_for(
            events: &mut (impl Stream<Item = Result<DockerEvent>> + Unpin),
            want: &DockerEvent,
        ) {
            let found = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(ev) = events.next().await {
                    if &ev.unwrap() == want {
                        return true;
                    }
                }
                false
            })
            .await;
            assert_eq!(found, Ok(true), "no {want:?} within 20 s");
        }

        #[tokio::test]
        async fn events_report_a_container_started_after_subscribing() {
            let client = client().await;
            let scene = Scene::new();
            // `since` covers the gap between this call and the first poll.
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let mut events = client.events(Some(since));
            let id = scene.run("ev");
            let want = DockerEvent::ContainerStarted { id: id.clone() };
            wait_for(&mut events, &want).await;

            // And the network side: connect/disconnect carry container and network name.
            let extra = scene.create_network("-x");
            docker(&["network", "connect", &extra, &id]);
            let want = DockerEvent::NetworkConnected {
                container_id: id.clone(),
                network: extra.clone(),
            };
            wait_for(&mut events, &want).await;
        }
    }
}
