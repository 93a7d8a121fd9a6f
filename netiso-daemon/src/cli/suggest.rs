//! `netiso policy suggest`: a policy written from learn mode's record, or
//! (`--against`) what an existing policy would drop of it, as a diff.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::api::{self, ClientError, Request};
use crate::cli::commands::Conn;
use crate::observe::clock::unix_now;
use crate::observe::filter::parse_duration;
use crate::observe::learned::Record;
use crate::policy::{
    self,
    suggest::{self, GroupBy, Options},
};

#[derive(clap::Args, Clone, Debug)]
pub struct SuggestArgs {
    /// Read this record instead of the daemon's (`<state-dir>/learned.json`,
    /// brought up to date by the daemon first when it runs).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// How containers become groups: `compose` (project and service),
    /// `label:KEY` (the label's value) or `name`. Containers without the
    /// compose labels or the label are grouped by name.
    #[arg(long, default_value = "compose", value_name = "compose|label:KEY|name")]
    pub group_by: GroupBy,
    /// Only flows seen in this last period (`30m`, `12h`, `7d`).
    #[arg(long, value_name = "PERIOD")]
    pub since: Option<String>,
    /// Only (group, peer, port) seen at least this many times.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_count: u64,
    /// Compare with this policy (file or directory): list what it would
    /// drop of the recorded flows and print a diff that adds the missing
    /// rules (`patch -p0 < DIFF`). Exit status 1 when it drops any.
    #[arg(long, value_name = "CURRENT")]
    pub against: Option<PathBuf>,
    /// Write the policy (or the diff) here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn run(a: SuggestArgs) -> Result<ExitCode> {
    let path = match &a.record {
        Some(p) => p.clone(),
        None => {
            // The daemon drains what the kernel noted so far into the file.
            match api::call(&a.conn.socket(), Request::Learned, Duration::from_secs(30)) {
                Ok(_) => {}
                Err(e @ ClientError::NotRunning { .. }) => {
                    eprintln!("note: {e}; reading the record as last saved");
                }
                Err(e) => bail!(e),
            }
            Record::path(&a.conn.state_dir)
        }
    };
    if !path.exists() {
        bail!(
            "no learn record at {}: turn learn mode on (`learn = true` in a group or in \
             [settings] of the policy), let the workload run, then ask again",
            path.display()
        );
    }
    let record = Record::read(&path)?;
    let since = match &a.since {
        Some(s) => Some(unix_now().saturating_sub(parse_duration(s)?.as_secs())),
        None => None,
    };
    let opts = Options {
        group_by: a.group_by.clone(),
        since,
        min_count: a.min_count,
    };
    let (facts, observed) = record.observed();
    if record.refused > 0 {
        eprintln!(
            "note: the record was full: {} flow rows were not kept",
            record.refused
        );
    }
    let (text, code) = match &a.against {
        None => (
            suggest::suggest(&facts, &observed, &opts),
            ExitCode::SUCCESS,
        ),
        Some(current) => {
            let p = policy::load_path(current).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (dropped, addition) = suggest::against(&p, &facts, &observed, &opts);
            for d in &dropped {
                let f = &d.flow;
                let what = match d.deny_rule {
                    Some(id) => format!("denied by rule {id}: not proposed (a deny beats an allow; narrow or remove rule {id})"),
                    None => "denied by default: rule proposed".into(),
                };
                eprintln!(
                    "drops: {} -> {} {} ({} new flows): {what}",
                    side(&f.from),
                    side(&f.to),
                    port_name(f.proto, f.port),
                    f.flows
                );
            }
            eprintln!(
                "{} of {} recorded flow rows would be dropped by {}",
                dropped.len(),
                observed.len(),
                current.display()
            );
            let diff = if addition.is_empty() {
                String::new()
            } else if current.is_dir() {
                let file = current.join("90-learned.toml");
                suggest::new_file_diff(&file.display().to_string(), addition.trim_start())
            } else {
                let text = std::fs::read_to_string(current)
                    .with_context(|| format!("reading {}", current.display()))?;
                suggest::append_diff(&current.display().to_string(), &text, &addition)
            };
            let code = if dropped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            (diff, code)
        }
    };
    match &a.output {
        Some(out) => {
            std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        }
        None => print!("{text}"),
    }
    Ok(code)
}

fn side(s: &suggest::Side) -> String {
    match s {
        suggest::Side::Container(n) => n.clone(),
        suggest::Side::Host => "host".into(),
        suggest::Side::Address(a) => a.to_string(),
    }
}

fn port_name(p: u8, port: u16) -> String {
    match p {
        netiso_common::proto::TCP => format!("{port}/tcp"),
        netiso_common::proto::UDP => format!("{port}/udp"),
        netiso_common::proto::ICMP => "icmpv4".into(),
        netiso_common::proto::ICMPV6 => "icmpv6".into(),
        n => format!("protocol {n}"),
    }
}
