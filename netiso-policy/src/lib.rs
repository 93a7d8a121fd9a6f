//! Policy files: parse, validate, lint, evaluate and compile.
//!
//! Pure: the only I/O is reading the files given to [`load_path`]. The
//! language is described in `docs/policy.md`.
//!
//! - [`parse_str`] / [`load_path`] give a validated [`Policy`] (with
//!   warnings) or a [`PolicyError`] listing every problem, rendered like
//!   rustc's diagnostics.
//! - [`evaluate`] is the reference semantics, straight from the text model.
//! - [`compile`] produces the identity and policy map contents; its
//!   [`Compiled::lookup`] mimics the kernel and agrees with [`evaluate`]
//!   (checked by a property test).
mod cidr;
mod compile;
mod diagnostic;
mod eval;
mod lint;
mod model;
mod parse;
mod ports;
mod selector;

use std::path::{Path, PathBuf};

pub use cidr::{Cidr, CidrEntry, CidrPeer};
pub use compile::{
    compile, compile_members, Compiled, IdentityAllocator, IdentityDef, RuleInfo,
    FIRST_CIDR_IDENTITY,
};
pub use diagnostic::{
    did_you_mean, render, Diagnostic, Kind, Location, Note, PolicyError, Severity,
};
pub use eval::{evaluate, Decision};
pub use model::{glob_match, Defaults, Group, Peer, Policy, Rule, Settings, HOST, RESERVED, WORLD};
pub use ports::{PortSpec, Proto};
pub use selector::{LabelMatch, LabelTest, Selector, COMPOSE_PROJECT, COMPOSE_SERVICE};

use diagnostic::SourceFile;

/// Parses one policy text. `origin` names it in messages (usually its path).
pub fn parse_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    parse::parse_sources(&[SourceFile::new(origin, text)], Vec::new())
}

/// Loads a policy file, or every `*.toml` file of a directory (sorted by
/// name, not recursive) merged into one policy.
pub fn load_path(path: &Path) -> Result<Policy, PolicyError> {
    let io_error = |p: &Path, what: &str, e: std::io::Error| {
        Diagnostic::error(Kind::Io, format!("cannot {what} {}: {e}", p.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, "read", e))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut files = Vec::new();
        let dir = std::fs::read_dir(path).map_err(|e| io_error(path, "list", e))?;
        for entry in dir {
            let entry = entry.map_err(|e| io_error(path, "list", e))?;
            let p = entry.path();
            // Directories named *.toml and broken links are not policy files.
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Diagnostic::error(
                Kind::Io,
                format!("no policy files (*.toml) in {}", path.display()),
            )
            .help("put the policy in a file ending in .toml, or give the file's path")
            .into());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };

    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push(SourceFile::new(file.display().to_string(), text)),
            Err(e) => diags.push(io_error(&file, "read", e)),
        }
    }
    parse::parse_sources(&sources, diags)
}

#[cfg(test)]
pub(crate) mod tests;
