//! The `netiso` command line: argument parsing and dispatch here, one file per command family beside it; may use every layer (`daemon` and down).
pub mod cluster;
pub mod commands;
pub mod explain;
pub mod graph;
pub mod suggest;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::daemon::config::{Config, DaemonArgs, LogFormat};
use crate::{daemon, datapath, policy};

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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: follow Docker and enforce the policy. Settings come
    /// from /etc/netiso/netiso.toml (or --config), overridden by flags.
    Daemon {
        #[command(flatten)]
        args: DaemonArgs,
        #[command(flatten)]
        services: daemon::ServiceOptions,
    },
    /// Per-flow drop counters with names, groups and reasons; per-rule
    /// counters (works from the pinned maps when the daemon is down).
    Stats(commands::StatsArgs),
    /// Daemon health, engine connection, policy, and every endpoint with
    /// its attach state. Exit status 1 when something is wrong.
    Status(commands::StatusArgs),
    /// Live stream of drop and audit events.
    Monitor(commands::MonitorArgs),
    /// Reload the daemon's policy file.
    Reload(commands::ReloadArgs),
    /// Turn the kernel's debug log on or off.
    DebugLog(commands::DebugLogArgs),
    /// Probe real connectivity between groups and compare it with the
    /// policy; exit status 1 on any mismatch.
    Verify(verify::VerifyArgs),
    /// Would X reach Y, and which rule decides (containers, groups,
    /// addresses; reads the same compiled tables the kernel gets).
    Explain(explain::ExplainArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or
    /// powershell (the .deb installs bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (netiso.1, netiso-stats.1, ...) into a
    /// directory.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Remove every pinned program, link and map: enforcement stops.
    Cleanup {
        #[arg(long, default_value = crate::observe::defaults::PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Draw groups and rules as Mermaid or Graphviz DOT.
    Graph(graph::GraphArgs),
    /// Write a policy from what learn mode recorded, or show what a
    /// policy would drop of it (`--against`).
    Suggest(suggest::SuggestArgs),
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The configuration file's metrics address counts unless the flag
    // was given (the flag has a default, so its value alone cannot tell).
    let metrics_flag = matches.subcommand_matches("daemon").is_some_and(|m| {
        m.value_source("metrics_addr") == Some(clap::parser::ValueSource::CommandLine)
    });
    match run(cli, metrics_flag) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, metrics_flag: bool) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon { args, mut services } => {
            let cfg = Config::load(&args)?;
            init_logging(cfg.log_format);
            daemon::policy_perms::set_allow_insecure(cfg.allow_insecure_policy_permissions);
            if let Some(source) = &cfg.source {
                tracing::info!(config = %source.display(), "configuration read");
            }
            services.socket = services.socket.or(cfg.socket.clone());
            services.socket_group = services.socket_group.or(cfg.socket_group.clone());
            if let (false, Some(addr)) = (metrics_flag, &cfg.metrics_address) {
                services.metrics_addr = addr.clone();
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(daemon::Options {
                policy: cfg.policy,
                pin_dir: cfg.pin_dir,
                state_dir: cfg.state_dir,
                allow_non_ip: cfg.allow_non_ip,
                cross_veth_mark: cfg.cross_veth_mark,
                services,
                resync_interval: cfg.resync_interval,
                watch_policy: cfg.watch_policy,
                docker_exec_root: cfg.docker_exec_root,
                swarm_policy_service: cfg.swarm_policy_service,
                swarm_data_path_port: cfg.swarm_data_path_port,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats(a) => commands::run_stats(a),
        Command::Status(a) => commands::run_status(a),
        Command::Monitor(a) => commands::run_monitor(a),
        Command::Reload(a) => commands::run_reload(a),
        Command::DebugLog(a) => commands::run_debug_log(a),
        Command::Verify(a) => verify::run(a),
        Command::Explain(args) => explain::command(&args),
        Command::Policy {
            command: PolicyCommand::Graph(args),
        } => graph::command(&args),
        Command::Policy {
            command: PolicyCommand::Suggest(args),
        } => suggest::run(args),
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "netiso", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup { pin_dir } => {
            datapath::require_root("netiso cleanup")?;
            datapath::Datapath::remove_pins(&pin_dir).map_err(|e| anyhow!("{e:#}"))?;
            println!("removed {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
