//! The policy delivered by Swarm. A global service (`deploy/netiso-policy.yml`,
//! service `netiso_policy` by default) carries the policy as a Swarm config
//! mounted at `/netiso/policy.toml` in its task on every node. The daemon
//! of each node reads it from its own node's task (through the task's
//! root, `/proc/<pid>/root`), checks it and applies it like a reload, and
//! answers in the task (`/netiso/applied`: `ok <sha256>` or `error <sha256>`
//! and why, rewritten every few seconds). The task's healthcheck compares
//! that answer with the config it carries, so Swarm itself shows which
//! node enforces which config (a task is `running` only once healthy), and
//! an update whose policy a node refuses fails there (with `failure_action:
//! rollback`, Swarm puts the previous config back). No store of netiso's:
//! the policy, its version and its state on every node are Swarm's.
//!
//! The last policy taken is kept in `<state-dir>/swarm-policy.toml` and is
//! what the daemon starts with, so a restart enforces it at once, before
//! Docker answers.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::Digest as _;

use crate::host::task_root::TaskRoot;
use crate::model::{Container, SWARM_SERVICE, SWARM_TASK};

/// Docker's label of a task's id on its container.
const SWARM_TASK_ID: &str = "com.docker.swarm.task.id";

/// The carrier service's name when `docker stack deploy -c
/// deploy/netiso-policy.yml netiso` made it.
pub const DEFAULT_SERVICE: &str = "netiso_policy";
/// Where the carrier task holds the policy (the config's `target`).
pub const POLICY_IN_TASK: &str = "netiso/policy.toml";
/// Where the daemon answers in the carrier task.
pub const ANSWER_IN_TASK: &str = "netiso/applied";
/// The answer is written again this often; the healthcheck takes an older
/// one for a daemon that is gone.
pub const ANSWER_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A policy larger than this is refused.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The last policy taken from Swarm, in the state directory.
pub fn delivered_path(state_dir: &Path) -> PathBuf {
    state_dir.join("swarm-policy.toml")
}

/// A policy read from a carrier task, before it is checked.
pub fn candidate_path(state_dir: &Path) -> PathBuf {
    state_dir.join("swarm-policy.new.toml")
}

/// `sha256` of `bytes`, lowercase hex (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `c` is a task of Swarm service `service` that Swarm made: its
/// labels say so and its name is the task's (`<service>.<slot or
/// node>.<task id>`). Labels alone could come from an image (`LABEL` is
/// copied onto every container run from it); the name only from whoever
/// runs the container, i.e. Swarm or someone who may run anything anyway.
pub fn is_task_of(c: &Container, service: &str) -> bool {
    let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or_default();
    let task_id = label(SWARM_TASK_ID);
    label(SWARM_SERVICE) == service
        && !task_id.is_empty()
        && label(SWARM_TASK) == c.name
        && c.name.starts_with(&format!("{service}."))
        && c.name.ends_with(&format!(".{task_id}"))
}

/// The running carrier tasks of `service` on this node: (container id,
/// name, pid), by name.
pub fn carriers<'a>(
    containers: impl IntoIterator<Item = &'a Container>,
    service: &str,
) -> Vec<(String, String, u32)> {
    let mut out: Vec<_> = containers
        .into_iter()
        .filter(|c| c.remote_node.is_none() && c.pid > 0 && is_task_of(c, service))
        .map(|c| (c.id.clone(), c.name.clone(), c.pid))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The policy a carrier task holds (at most [`MAX_POLICY_BYTES`]), read
/// inside the task's root (see [`TaskRoot`]).
pub fn read_from_task(pid: u32, container_id: &str) -> Result<Vec<u8>> {
    TaskRoot::open(pid, container_id)?
        .read(POLICY_IN_TASK, MAX_POLICY_BYTES)
        .context(format!("is the config mounted at /{POLICY_IN_TASK}?"))
}

/// Writes `answer` into the carrier task (a new file renamed over the old
/// one, so the healthcheck never reads half of it).
pub fn answer_in_task(pid: u32, container_id: &str, answer: &str) -> Result<()> {
    let (dir, name) = ANSWER_IN_TASK
        .rsplit_once('/')
        .expect("ANSWER_IN_TASK is dir/name");
    TaskRoot::open(pid, container_id)?.replace(dir, name, answer.as_bytes())
}

/// What one carrier task was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub pid: u32,
    pub task: String,
    pub sha256: String,
    /// `None`: enforced; else why not.
    pub error: Option<String>,
}

impl Answer {
    /// The file's text: `ok <sha256>` or `error <sha256>` then the reason.
    pub fn text(&self) -> String {
        match &self.error {
            None => format!("ok {}\n", self.sha256),
            Some(e) => format!("error {}\n{e}\n", self.sha256),
        }
    }
}

/// The daemon's side of the delivery: which carrier tasks it has taken a
/// policy from (each once: the newest task's policy wins, an older task
/// still running during an update is only answered) and what it answered.
#[derive(Debug, Default)]
pub struct Delivery {
    pub service: String,
    /// sha256 of the policy in force from Swarm (`None`: the local file).
    pub applied: Option<String>,
    seen: BTreeSet<String>,
    pub answers: BTreeMap<String, Answer>,
}

impl Delivery {
    pub fn new(service: String, applied: Option<String>) -> Self {
        Self {
            service,
            applied,
            ..Self::default()
        }
    }

    /// The carriers among `now` not taken yet; forgets those gone.
    pub fn arrivals(&mut self, now: &[(String, String, u32)]) -> Vec<(String, String, u32)> {
        let ids: BTreeSet<&String> = now.iter().map(|c| &c.0).collect();
        self.seen.retain(|id| ids.contains(id));
        self.answers.retain(|id, _| ids.contains(id));
        now.iter()
            .filter(|c| !self.seen.contains(&c.0))
            .cloned()
            .collect()
    }

    /// Notes that carrier `id` was taken (whatever the outcome).
    pub fn taken(&mut self, id: &str, answer: Answer) {
        self.seen.insert(id.to_string());
        self.answers.insert(id.to_string(), answer);
    }

    /// An answer that said `ok` for a policy no longer in force (another
    /// carrier task's was taken after it: two carriers on one node, e.g.
    /// an update with `order: start-first` or one the daemon found both
    /// of at its start) now says so: otherwise its healthcheck would go on
    /// passing, and `status --cluster` showing that policy enforced here,
    /// while another is.
    pub fn settle(&mut self) {
        let Some(applied) = self.applied.clone() else {
            return;
        };
        for a in self.answers.values_mut() {
            if a.error.is_none() && a.sha256 != applied {
                a.error = Some(format!(
                    "not in force: this node enforces the policy with sha256 {applied} \
                     (taken from another carrier task)"
                ));
            }
        }
    }

    /// Writes every answer again (the healthcheck wants a fresh one).
    pub fn answer_all(&self) {
        for (id, a) in &self.answers {
            if let Err(e) = answer_in_task(a.pid, id, &a.text()) {
                tracing::warn!(task = %a.task, error = format!("{e:#}"), "cannot answer the policy carrier");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier(id: &str, name: &str, service: &str) -> Container {
        let task_id = name.rsplit('.').next().unwrap();
        Container {
            id: id.into(),
            name: name.into(),
            pid: 42,
            labels: [
                (SWARM_SERVICE.to_string(), service.to_string()),
                (SWARM_TASK.to_string(), name.to_string()),
                (SWARM_TASK_ID.to_string(), task_id.to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_task_swarm_made_is_a_carrier() {
        let real = carrier("a", "netiso_policy.n1.t1", "netiso_policy");
        assert!(is_task_of(&real, "netiso_policy"));
        assert!(!is_task_of(&real, "other"));
        // An image's labels copied onto any container: not its name.
        let mut forged = real.clone();
        forged.name = "webapp".into();
        assert!(!is_task_of(&forged, "netiso_policy"));
        let mut no_id = real.clone();
        no_id.labels.remove(SWARM_TASK_ID);
        assert!(!is_task_of(&no_id, "netiso_policy"));
        let mut other_task = real;
        other_task
            .labels
            .insert(SWARM_TASK.into(), "netiso_policy.n1.t9".into());
        assert!(!is_task_of(&other_task, "netiso_policy"));
    }

    #[test]
    fn hashes_as_sha256sum_does() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn each_carrier_is_taken_once_and_forgotten_when_gone() {
        let cs = [
            carrier("b", "netiso_policy.n1.t2", "netiso_policy"),
            carrier("a", "netiso_policy.n1.t1", "netiso_policy"),
            carrier("c", "web.1.x", "web"),
        ];
        let now = carriers(&cs, "netiso_policy");
        assert_eq!(
            now.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let mut d = Delivery::new("netiso_policy".into(), None);
        assert_eq!(d.arrivals(&now).len(), 2);
        let ok = |task: &str| Answer {
            pid: 42,
            task: task.into(),
            sha256: "00".into(),
            error: None,
        };
        d.taken("a", ok("t1"));
        // An older task still running during an update is not taken again.
        assert_eq!(d.arrivals(&now).len(), 1);
        d.taken("b", ok("t2"));
        assert!(d.arrivals(&now).is_empty());
        // Gone: forgotten (answers too).
        assert!(d.arrivals(&now[1..]).is_empty());
        assert_eq!(d.answers.len(), 1);
        assert_eq!(d.arrivals(&now).len(), 1, "a is new again");
    }

    #[test]
    fn an_ok_for_a_policy_no_longer_in_force_is_withdrawn() {
        let answer = |sha: &str| Answer {
            pid: 42,
            task: "t".into(),
            sha256: sha.into(),
            error: None,
        };
        let mut d = Delivery::new("netiso_policy".into(), None);
        d.taken("a", answer("11"));
        d.applied = Some("11".into());
        d.settle();
        assert_eq!(d.answers["a"].error, None);
        // Another carrier's policy taken after it.
        d.taken("b", answer("22"));
        d.applied = Some("22".into());
        d.settle();
        assert!(d.answers["a"].text().starts_with("error 11\nnot in force"));
        assert_eq!(d.answers["b"].text(), "ok 22\n");
    }

    #[test]
    fn answers_say_ok_or_why_not() {
        let mut a = Answer {
            pid: 1,
            task: "t".into(),
            sha256: "ab".into(),
            error: None,
        };
        assert_eq!(a.text(), "ok ab\n");
        a.error = Some("line 3: unknown key".into());
        assert_eq!(a.text(), "error ab\nline 3: unknown key\n");
    }
}
