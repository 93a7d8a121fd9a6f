//! Free disk space where the build writes, for the stage headers of
//! `cargo xtask test`: a full disk otherwise shows up as build errors far
//! from the cause.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Bytes free to an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st`
    // is a writable statvfs owned by this frame.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// "12.3 GiB free" for the working directory's file system.
pub fn free_line() -> String {
    match free_bytes(Path::new(".")) {
        Some(b) => format!("{:.1} GiB free", b as f64 / (1u64 << 30) as f64),
        None => "free disk space unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_free_space_of_an_existing_path_only() {
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(Path::new("/nonexistent/netiso")), None);
        assert!(free_line().ends_with(" GiB free"), "{}", free_line());
    }
}
