//! Addresses learned for peers by name, as `netiso status` shows them:
//! `names.json` in the state directory, written by the daemon's name
//! learner when it changes.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

pub const NAMES_FILE: &str = "names.json";

/// Container name -> what it learned.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Names {
    pub containers: BTreeMap<String, Vec<LearnedName>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LearnedName {
    /// The name the container asked for.
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Unix seconds when new connections to these addresses stop being
    /// judged as the name (TTL, at least the minimum, plus grace).
    pub expires: u64,
}

impl Names {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(NAMES_FILE)
    }

    /// A missing file: nothing learned.
    pub fn read(state_dir: &Path) -> Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}
