//! The clocks user space reads: unix seconds for what operators see, and
//! CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) to date what the kernel
//! stamped. The only home of these conversions; uses nothing of the crate.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time now, whole seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix time now, seconds with fraction.
pub fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; clock_gettime writes only
    // it (and CLOCK_MONOTONIC is always supported on Linux).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unix seconds of a `bpf_ktime_get_ns` timestamp. A stamp from the
/// future (a corrupt row) dates to now.
pub fn mono_to_unix(ns: u64) -> u64 {
    let age = Duration::from_nanos(monotonic_ns().saturating_sub(ns));
    SystemTime::now()
        .checked_sub(age)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds of a CLOCK_MONOTONIC deadline, which may lie ahead (an
/// expiry).
pub fn deadline_to_unix(ns: u64) -> u64 {
    let now = monotonic_ns();
    unix_now() + ns.saturating_sub(now) / 1_000_000_000
}

/// Unix time (seconds, fractional) of a `bpf_ktime_get_ns` timestamp.
pub fn mono_to_unix_f64(ns: u64) -> f64 {
    unix_now_f64() - monotonic_ns().saturating_sub(ns) as f64 / 1e9
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
pub fn ago(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let s = unix_now().saturating_sub(unix);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_stamps_date_back_by_their_age() {
        let stamp = monotonic_ns() - 90 * 1_000_000_000;
        let unix = mono_to_unix(stamp);
        let now = unix_now();
        assert!((now - 91..=now - 89).contains(&unix), "{unix} vs {now}");
        let f = mono_to_unix_f64(stamp);
        assert!((f - (unix_now_f64() - 90.0)).abs() < 1.0, "{f}");
        // A stamp from the future (a corrupt row) dates to now, not later.
        assert!(mono_to_unix(u64::MAX) <= unix_now());
        let later = deadline_to_unix(monotonic_ns() + 60 * 1_000_000_000);
        assert!((now + 59..=now + 61).contains(&later), "{later} vs {now}");
    }
}
