//! Filters shared by `netiso stats` and `netiso monitor`: which container,
//! group or drop reason a row must involve.
use std::net::IpAddr;

use anyhow::{bail, Result};
use netiso_common::DropReason;
use serde::{Deserialize, Serialize};

use crate::policy::glob_match;

#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    /// Only rows where the source or the destination is this container
    /// (name, `*` wildcards allowed, or an address).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only rows where the source or the destination is in this group
    /// (or `host`, `world`, `unmanaged`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only this drop reason (`default-deny`, `policy-deny`, `audit`, ...).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The parts of a row (flow or event) a filter looks at.
pub struct Subject<'a> {
    pub names: [&'a str; 2],
    pub ips: [Option<IpAddr>; 2],
    /// Comma-separated group lists, as shown.
    pub groups: [&'a str; 2],
    pub reason: &'a str,
}

impl Filter {
    /// Rejects a reason that does not exist, so that a typo is not taken for
    /// "no drops".
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = &self.reason {
            if !DropReason::ALL.iter().any(|k| k.as_str() == r) {
                let known: Vec<&str> = DropReason::ALL.iter().map(|k| k.as_str()).collect();
                bail!("unknown reason {r:?}; known reasons: {}", known.join(", "));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.container.is_none() && self.group.is_none() && self.reason.is_none()
    }

    pub fn matches(&self, s: &Subject<'_>) -> bool {
        if let Some(r) = &self.reason {
            if s.reason != r {
                return false;
            }
        }
        if let Some(c) = &self.container {
            let hit = (0..2).any(|i| {
                glob_match(c, s.names[i]) || s.ips[i].is_some_and(|ip| ip.to_string() == *c)
            });
            if !hit {
                return false;
            }
        }
        if let Some(g) = &self.group {
            let hit = s
                .groups
                .iter()
                .any(|list| list.split(',').any(|x| x.trim() == g));
            if !hit {
                return false;
            }
        }
        true
    }
}

/// Parses `90s`, `15m`, `2h`, `1d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = match num.parse() {
        Ok(n) => n,
        Err(_) => bail!("{text:?} is not a duration; use e.g. 30s, 15m, 2h or 1d"),
    };
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{text:?}: unknown unit {unit:?}; use s, m, h or d"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject<'static> {
        Subject {
            names: ["web-1", "db"],
            ips: [Some("10.0.0.2".parse().unwrap()), None],
            groups: ["frontend,public", "database"],
            reason: "default-deny",
        }
    }

    #[test]
    fn matches_either_side() {
        let s = subject();
        let f = |c: Option<&str>, g: Option<&str>, r: Option<&str>| Filter {
            container: c.map(Into::into),
            group: g.map(Into::into),
            reason: r.map(Into::into),
        };
        assert!(f(None, None, None).matches(&s));
        assert!(f(Some("web-*"), None, None).matches(&s));
        assert!(f(Some("db"), None, None).matches(&s));
        assert!(f(Some("10.0.0.2"), None, None).matches(&s));
        assert!(!f(Some("web"), None, None).matches(&s));
        assert!(f(None, Some("public"), None).matches(&s));
        assert!(f(None, Some("database"), Some("default-deny")).matches(&s));
        assert!(!f(None, Some("data"), None).matches(&s));
        assert!(!f(None, None, Some("policy-deny")).matches(&s));
    }

    #[test]
    fn rejects_unknown_reason() {
        let f = Filter {
            reason: Some("denied".into()),
            ..Filter::default()
        };
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("default-deny"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        assert!(parse_duration("5 years").is_err());
        assert!(parse_duration("m").is_err());
    }
}
