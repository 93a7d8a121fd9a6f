//! The user side of the kernel's debug log (aya-log): records from the TC
//! programs go to the daemon's log under the target `netiso::kernel`.
//!
//! The programs only log when the `DEBUG_LOG` settings flag is on
//! (`netiso debug-log on`), so this reader costs nothing otherwise. aya-log
//! 0.3 does not poll by itself: the logger's ring buffer is polled here with
//! `AsyncFd`.
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::maps::MapData;
use aya::programs::loaded_programs;
use aya_log::EbpfLogger;
use netiso_common::{maps, LAYOUT_VERSION};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

/// Name of aya-log's ring buffer in the eBPF object.
const LOG_MAP: &str = "AYA_LOGS";

/// Forwards kernel records to tracing, at info level so that they show
/// with the default filter once an operator turned the switch on.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        info!(target: "netiso::kernel", level = %record.level(), "{}", record.args());
    }
    fn flush(&self) {}
}

/// The id of a netiso program loaded by this daemon: the newest program
/// that uses this pin directory's settings map and has a log ring buffer.
/// (Programs of other daemons use other pinned maps.)
fn our_program_id(pin_dir: &Path) -> Result<u32> {
    let settings = pin_dir
        .join(format!("maps-v{LAYOUT_VERSION}"))
        .join(maps::SETTINGS);
    let settings_id = MapData::from_pin(&settings)
        .with_context(|| format!("opening {}", settings.display()))?
        .info()?
        .id();
    let mut best = None;
    for prog in loaded_programs().flatten() {
        let Ok(Some(ids)) = prog.map_ids() else {
            continue;
        };
        if !ids.contains(&settings_id) {
            continue;
        }
        let has_log = ids.iter().any(|id| {
            aya::maps::MapInfo::from_id(*id)
                .ok()
                .is_some_and(|m| m.name_as_str() == Some(LOG_MAP))
        });
        if has_log && best.is_none_or(|b| prog.id() > b) {
            best = Some(prog.id());
        }
    }
    best.ok_or_else(|| {
        anyhow!(
            "no loaded netiso program with a log buffer uses {}",
            settings.display()
        )
    })
}

/// Starts reading kernel log records; a failure only costs the debug log.
pub fn spawn(pin_dir: &Path) {
    let logger = our_program_id(pin_dir).and_then(|id| {
        EbpfLogger::init_from_id_with_logger(id, KernelLog)
            .map_err(|e| anyhow!("attaching to the kernel log of program {id}: {e}"))
    });
    let logger = match logger {
        Ok(l) => l,
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "kernel debug log unavailable (netiso debug-log will have no output)"
            );
            return;
        }
    };
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd, which stays open and
        // the same for as long as the AsyncFd (its owner) lives.
        let mut fd = match unsafe { AsyncFd::register(logger) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot poll the kernel log");
                return;
            }
        };
        debug!("reading the kernel debug log");
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
