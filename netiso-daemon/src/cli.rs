//! Command-line interface of the `netiso` binary.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{daemon, datapath, policy};

const DEFAULT_PIN_DIR: &str = netiso_common::PIN_DIR;
const DEFAULT_STATE_DIR: &str = "/run/netiso";

#[derive(Parser, Debug)]
#[command(
    name = "netiso",
    version,
    about = "Network isolation between Docker containers, enforced by eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: follow Docker and enforce the policy.
    Daemon {
        /// Policy file, or directory of *.toml files.
        #[arg(long, default_value = "/etc/netiso/policy.toml")]
        policy: PathBuf,
        /// Where programs, links and maps are pinned (bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Where the daemon publishes its state for the CLI.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Drop non-IP ethertypes (other than ARP) on policed endpoints.
        #[arg(long)]
        drop_non_ip: bool,
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
        #[command(flatten)]
        services: crate::services::ServiceOptions,
    },
    /// Per-flow drop counters with names, groups and reasons; per-rule
    /// counters (works from the pinned maps when the daemon is down).
    Stats(crate::commands::StatsArgs),
    /// Daemon health, engine connection, policy, and every endpoint with
    /// its attach state. Exit status 1 when something is wrong.
    Status(crate::commands::StatusArgs),
    /// Live stream of drop and audit events.
    Monitor(crate::commands::MonitorArgs),
    /// Reload the daemon's policy file.
    Reload(crate::commands::ReloadArgs),
    /// Turn the kernel's debug log on or off.
    DebugLog(crate::commands::DebugLogArgs),
    /// Probe real connectivity between groups and compare it with the
    /// policy; exit status 1 on any mismatch.
    Verify(crate::verify::VerifyArgs),
    /// Would X reach Y, and which rule decides (containers, groups,
    /// addresses; reads the same compiled tables the kernel gets).
    Explain(crate::explain::ExplainArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Remove every pinned program, link and map: enforcement stops.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Draw groups and rules as Mermaid or Graphviz DOT.
    Graph(crate::graph::GraphArgs),
    /// Validate policy files or directories; no daemon needed.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETISO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for people: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            policy,
            pin_dir,
            state_dir,
            drop_non_ip,
            log_format,
            services,
        } => {
            init_logging(log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(daemon::Options {
                policy,
                pin_dir,
                state_dir,
                drop_non_ip,
                services,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats(a) => crate::commands::run_stats(a),
        Command::Status(a) => crate::commands::run_status(a),
        Command::Monitor(a) => crate::commands::run_monitor(a),
        Command::Reload(a) => crate::commands::run_reload(a),
        Command::DebugLog(a) => crate::commands::run_debug_log(a),
        Command::Verify(a) => crate::verify::run(a),
        Command::Explain(args) => crate::explain::command(&args),
        Command::Policy {
            command: PolicyCommand::Graph(args),
        } => crate::graph::command(&args),
        Command::Policy {
            command: PolicyCommand::Check { paths },
        } => {
            let mut ok = true;
            for path in &paths {
                match policy::load_path(path) {
                    Ok(p) => {
                        if !p.warnings.is_empty() {
                            eprint!("{}", policy::render(&p.warnings));
                        }
                        println!(
                            "{}: ok ({} groups, {} rules, {} warnings)",
                            path.display(),
                            p.groups.len(),
                            p.rules.len(),
                            p.warnings.len()
                        );
                    }
                    Err(e) => {
                        eprint!("{e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Cleanup { pin_dir } => {
            datapath::require_root("netiso cleanup")?;
            datapath::Datapath::remove_pins(&pin_dir).map_err(|e| anyhow!("{e:#}"))?;
            println!("removed {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
