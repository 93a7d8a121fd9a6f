//! Learn mode's record: the new flows the datapath noted in its learn
//! table, named with the containers of the moment (sender and receiver,
//! host, or an address) and kept, bounded, in `learned.json` in the state
//! directory. `netiso policy suggest` turns it into a policy.
//!
//! A flow between two containers in learn mode is seen twice, leaving the
//! sender and entering the receiver: one row counts both, and its number
//! of flows is the larger of the two sightings.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use netiso_common::{family, identity, Direction, LearnKey, LearnValue};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::model::Container;
use crate::observe::clock::mono_to_unix;
use crate::policy::suggest::{Facts, Observed, Side};

pub const LEARNED_FILE: &str = "learned.json";
/// Rows (distinct sender, receiver, protocol, port) the record keeps; more
/// are refused and counted.
pub const MAX_ROWS: usize = 50_000;
/// Containers the record describes; flows of more are refused and counted.
pub const MAX_CONTAINERS: usize = 10_000;
const VERSION: u32 = 1;

/// What `learned.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub version: u32,
    /// Containers seen, by name (the latest facts of a reused name).
    pub containers: BTreeMap<String, ContainerFacts>,
    pub flows: Vec<FlowRow>,
    /// Kernel rows not kept because the record was full.
    #[serde(default)]
    pub refused: u64,
    /// Kernel rows whose veth no longer named a container.
    #[serde(default)]
    pub unnamed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerFacts {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub networks: Vec<String>,
    /// Its veth was in learn mode (at some point).
    pub learned: bool,
}

/// One end of a recorded flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SideRow {
    Container(String),
    Host,
    Address(IpAddr),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRow {
    pub from: SideRow,
    pub to: SideRow,
    pub proto: u8,
    pub port: u16,
    /// New flows seen leaving the sender / entering the receiver.
    pub sent: u64,
    pub received: u64,
    /// Unix seconds.
    pub first: u64,
    pub last: u64,
}

impl FlowRow {
    pub fn flows(&self) -> u64 {
        self.sent.max(self.received)
    }
}

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(LEARNED_FILE)
    }

    /// Reads the record; a missing file is an empty record.
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: VERSION,
                ..Self::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The record as the policy crate's suggester reads it.
    pub fn observed(&self) -> (BTreeMap<String, Facts>, Vec<Observed>) {
        let facts = self
            .containers
            .iter()
            .map(|(n, c)| {
                let f = Facts {
                    image: c.image.clone(),
                    labels: c.labels.clone(),
                    networks: c.networks.clone(),
                    learned: c.learned,
                };
                (n.clone(), f)
            })
            .collect();
        let side = |s: &SideRow| match s {
            SideRow::Container(n) => Side::Container(n.clone()),
            SideRow::Host => Side::Host,
            SideRow::Address(a) => Side::Address(*a),
        };
        let flows = self
            .flows
            .iter()
            .map(|r| Observed {
                from: side(&r.from),
                to: side(&r.to),
                proto: r.proto,
                port: r.port,
                flows: r.flows(),
                first: r.first,
                last: r.last,
            })
            .collect();
        (facts, flows)
    }
}

/// The daemon's side: names kernel rows and keeps the record.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    record: Record,
    index: HashMap<(SideRow, SideRow, u8, u16), usize>,
    /// Facts of the running containers, by name.
    known: HashMap<String, ContainerFacts>,
    /// Veth ifindex -> container name, as of the last `note`.
    endpoints: HashMap<u32, String>,
    /// Container address -> name.
    addresses: HashMap<IpAddr, String>,
    /// (proto, host port) -> the container the host publishes it for.
    published: HashMap<(u8, u16), String>,
    host: Vec<IpAddr>,
    dirty: bool,
    /// Drains still due although no veth learns now: rows noted before
    /// learn mode went off (or before a restart) are read while their
    /// veths still name the same containers.
    tail: u8,
}

impl Recorder {
    /// Continues the record in `state_dir` (a damaged file is set aside as
    /// `learned.json.bad` and a new record started).
    pub fn open(state_dir: &Path) -> Self {
        let path = Record::path(state_dir);
        let record = match Record::read(&path) {
            Ok(r) => r,
            Err(e) => {
                let bad = path.with_extension("json.bad");
                warn!(error = format!("{e:#}"), kept_as = %bad.display(), "the learn record cannot be read; starting a new one");
                let _ = std::fs::rename(&path, &bad);
                Record::default()
            }
        };
        let index = record
            .flows
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.from.clone(), r.to.clone(), r.proto, r.port), i))
            .collect();
        Self {
            path,
            record: Record {
                version: VERSION,
                ..record
            },
            index,
            known: HashMap::new(),
            endpoints: HashMap::new(),
            addresses: HashMap::new(),
            published: HashMap::new(),
            host: Vec::new(),
            dirty: false,
            tail: 1,
        }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Whether the learn table should be drained: a veth is in learn mode,
    /// or was until lately, or the record has unsaved rows.
    pub fn active(&self) -> bool {
        self.dirty || self.tail > 0 || self.learning()
    }

    fn learning(&self) -> bool {
        self.known.values().any(|c| c.learned)
    }

    /// A drain happened: when nothing learns any more, the drains due wind
    /// down.
    pub fn drained(&mut self) {
        if self.learning() {
            self.tail = 2;
        } else {
            self.tail = self.tail.saturating_sub(1);
        }
    }

    /// The containers as they are now: rows drained from here on are named
    /// with them. Containers in learn mode enter the record even before
    /// their first flow (a container that talks to nobody is a finding too).
    pub fn note(
        &mut self,
        containers: &[Container],
        learns: impl Fn(&Container) -> bool,
        host: &[IpAddr],
    ) {
        self.known.clear();
        self.endpoints.clear();
        self.addresses.clear();
        self.published.clear();
        self.host = host.to_vec();
        for c in containers {
            let facts = ContainerFacts {
                id: c.id.clone(),
                image: c.image.clone(),
                labels: c.labels.clone(),
                networks: c.networks.iter().map(|a| a.network.clone()).collect(),
                learned: learns(c),
            };
            for a in &c.networks {
                if let Some(i) = a.host_ifindex {
                    self.endpoints.insert(i, c.name.clone());
                }
                let ll = a.mac.map(|m| IpAddr::V6(crate::datapath::link_local_of(m)));
                for ip in a
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(a.ipv6.map(IpAddr::V6))
                    .chain(ll)
                {
                    self.addresses.insert(ip, c.name.clone());
                }
            }
            for p in &c.published {
                self.published
                    .insert((p.proto, p.host_port), c.name.clone());
            }
            if facts.learned {
                self.remember(&c.name, &facts);
            }
            self.known.insert(c.name.clone(), facts);
        }
        if self.learning() {
            self.tail = 2;
        }
    }

    /// Keeps a container's facts in the record; false when it is full.
    fn remember(&mut self, name: &str, facts: &ContainerFacts) -> bool {
        let full = self.record.containers.len() >= MAX_CONTAINERS;
        match self.record.containers.get_mut(name) {
            Some(old) => {
                let learned = old.learned || facts.learned;
                if *old != *facts || learned != old.learned {
                    *old = ContainerFacts {
                        learned,
                        ..facts.clone()
                    };
                    self.dirty = true;
                }
                true
            }
            None if full => false,
            None => {
                self.record
                    .containers
                    .insert(name.to_string(), facts.clone());
                self.dirty = true;
                true
            }
        }
    }

    /// Adds rows drained from the kernel's learn table.
    pub fn add(&mut self, rows: &[(LearnKey, LearnValue)]) {
        for (k, v) in rows {
            let Some(name) = self.endpoints.get(&k.ifindex).cloned() else {
                self.record.unnamed += 1;
                self.dirty = true;
                continue;
            };
            let peer = peer_ip(k);
            let egress = k.direction == Direction::Egress as u8;
            let judged = v.judged_identity;
            // A port the host publishes, reached at a host address (or by
            // broadcast), judged as the container behind it: only then is
            // the row that container's (an address beyond the host on the
            // same port is not).
            let translated = egress
                && !matches!(judged, identity::HOST | identity::WORLD)
                && judged < identity::FIRST_ADDRESS_PEER
                && !self.addresses.contains_key(&peer)
                && (self.host.contains(&peer) || !is_unicast(peer))
                && self.published.contains_key(&(k.proto, k.port));
            let side = if let Some(n) = self.addresses.get(&peer) {
                SideRow::Container(n.clone())
            } else if translated {
                SideRow::Container(self.published[&(k.proto, k.port)].clone())
            } else if judged == identity::HOST || self.host.contains(&peer) {
                SideRow::Host
            } else {
                SideRow::Address(peer)
            };
            let me = SideRow::Container(name);
            let (from, to, port) = if egress {
                (me, side, if translated { v.judged_port } else { k.port })
            } else {
                (side, me, k.port)
            };
            let mut fits = true;
            for s in [&from, &to] {
                if let SideRow::Container(n) = s {
                    let facts = self.known.get(n).cloned().unwrap_or_default();
                    fits &= self.remember(n, &facts);
                }
            }
            let key = (from.clone(), to.clone(), k.proto, port);
            let (first, last) = (mono_to_unix(v.first_seen_ns), mono_to_unix(v.last_seen_ns));
            let i = match self.index.get(&key) {
                Some(i) => *i,
                None if !fits || self.record.flows.len() >= MAX_ROWS => {
                    self.record.refused += 1;
                    self.dirty = true;
                    continue;
                }
                None => {
                    self.record.flows.push(FlowRow {
                        from,
                        to,
                        proto: k.proto,
                        port,
                        sent: 0,
                        received: 0,
                        first,
                        last,
                    });
                    self.index.insert(key, self.record.flows.len() - 1);
                    self.record.flows.len() - 1
                }
            };
            let row = &mut self.record.flows[i];
            if egress {
                row.sent += v.flows;
            } else {
                row.received += v.flows;
            }
            row.first = row.first.min(first);
            row.last = row.last.max(last);
            self.dirty = true;
        }
    }

    /// Writes the record if it changed (atomically: a reader never sees
    /// half a file).
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.record)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

/// Broadcast and multicast are not one node's.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !(v.is_multicast() || v.is_broadcast() || v.octets()[3] == 255),
        IpAddr::V6(v) => !v.is_multicast(),
    }
}

fn peer_ip(k: &LearnKey) -> IpAddr {
    if k.family == family::V4 {
        IpAddr::V4(Ipv4Addr::new(k.peer[0], k.peer[1], k.peer[2], k.peer[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attachment, Published};

    fn container(name: &str, ip: [u8; 4], ifindex: u32) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            networks: vec![Attachment {
                network: "n".into(),
                ipv4: Some(Ipv4Addr::from(ip)),
                host_ifindex: Some(ifindex),
                ..Attachment::default()
            }],
            ..Container::default()
        }
    }

    fn row(
        ifindex: u32,
        dir: Direction,
        peer: [u8; 4],
        port: u16,
        flows: u64,
    ) -> (LearnKey, LearnValue) {
        let mut p = [0u8; 16];
        p[..4].copy_from_slice(&peer);
        (
            LearnKey {
                ifindex,
                peer: p,
                port,
                proto: netiso_common::proto::TCP,
                family: family::V4,
                direction: dir as u8,
                _pad: [0; 3],
            },
            LearnValue {
                flows,
                judged_identity: 300,
                judged_port: port,
                ..LearnValue::default()
            },
        )
    }

    /// Both sightings of one connection make one row; the host, the world
    /// and a port the host publishes are named; unknown veths are counted.
    #[test]
    fn rows_are_named_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path());
        let mut db = container("db", [10, 0, 0, 3], 13);
        db.published.push(Published {
            proto: netiso_common::proto::TCP,
            host_port: 15432,
            container_port: 5432,
        });
        let host: IpAddr = "10.0.0.1".parse().unwrap();
        r.note(
            &[container("web", [10, 0, 0, 2], 12), db],
            |c| c.name == "web",
            &[host],
        );
        let mut via_host = row(12, Direction::Egress, [10, 0, 0, 1], 15432, 1);
        via_host.1.judged_port = 5432;
        let mut to_host = row(12, Direction::Egress, [10, 0, 0, 1], 22, 1);
        to_host.1.judged_identity = identity::HOST;
        r.add(&[
            row(12, Direction::Egress, [10, 0, 0, 3], 5432, 3),
            row(13, Direction::Ingress, [10, 0, 0, 2], 5432, 2),
            via_host,
            to_host,
            row(12, Direction::Egress, [198, 18, 0, 9], 443, 1),
            row(99, Direction::Egress, [198, 18, 0, 9], 443, 1),
        ]);
        // Beyond the host on the port db publishes, judged as an address
        // block: the address, not db.
        let mut beyond = row(12, Direction::Egress, [198, 18, 0, 7], 15432, 1);
        beyond.1.judged_identity = identity::FIRST_ADDRESS_PEER;
        r.add(&[beyond]);
        let rec = r.record();
        let web = || SideRow::Container("web".into());
        let db = || SideRow::Container("db".into());
        let find = |to: SideRow, port: u16| {
            rec.flows
                .iter()
                .find(|f| f.from == web() && f.to == to && f.port == port)
                .unwrap_or_else(|| panic!("no row to {to:?}:{port} in {:#?}", rec.flows))
        };
        let direct = find(db(), 5432);
        assert_eq!(
            (direct.sent, direct.received, direct.flows()),
            (3 + 1, 2, 4)
        );
        assert_eq!(find(SideRow::Host, 22).flows(), 1);
        assert_eq!(
            find(SideRow::Address("198.18.0.9".parse().unwrap()), 443).flows(),
            1
        );
        assert_eq!(
            find(SideRow::Address("198.18.0.7".parse().unwrap()), 15432).flows(),
            1
        );
        assert_eq!(rec.flows.len(), 4, "{:#?}", rec.flows);
        assert_eq!(rec.unnamed, 1);
        assert!(rec.containers["web"].learned && !rec.containers["db"].learned);
        // Saved and read back the same.
        r.save().unwrap();
        assert_eq!(
            Record::read(&Record::path(dir.path())).unwrap(),
            *r.record()
        );
    }

    /// Drains go on for a while after learn mode goes off (rows noted just
    /// before are still named right), then stop; a new recorder drains
    /// once (rows left from before a restart).
    #[test]
    fn drains_wind_down_after_learn_mode_goes_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path());
        assert!(r.active(), "leftovers from before a restart");
        r.drained();
        assert!(!r.active());
        let web = [container("web", [10, 0, 0, 2], 12)];
        r.note(&web, |_| true, &[]);
        r.save().unwrap();
        r.drained();
        assert!(r.active());
        r.note(&web, |_| false, &[]);
        r.drained();
        assert!(r.active(), "one more after learning stopped");
        r.drained();
        assert!(!r.active());
    }

    /// A full record refuses new rows and counts them; old rows still grow.
    #[test]
    fn a_full_record_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path());
        r.note(&[container("web", [10, 0, 0, 2], 12)], |_| true, &[]);
        let rows: Vec<_> = (0..MAX_ROWS as u32 + 10)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                row(12, Direction::Egress, [198, a, b, c], 443, 1)
            })
            .collect();
        r.add(&rows);
        assert_eq!(r.record().flows.len(), MAX_ROWS);
        assert_eq!(r.record().refused, 10);
        r.add(&rows[..1]);
        assert_eq!(r.record().flows[0].sent, 2);
        assert_eq!(r.record().refused, 10);
    }
}
