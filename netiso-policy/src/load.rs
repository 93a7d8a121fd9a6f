//! Reading policy files and directories: the crate's only I/O. Uses `diagnostic`, `parse`.
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Kind, PolicyError, SourceFile};
use crate::model::Policy;
use crate::parse::parse_sources;

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
    parse_sources(&sources, diags)
}
