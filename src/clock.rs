//! The one place backupctl reads the wall clock.
//!
//! `BACKUPCTL_NOW` (an RFC 3339 time, e.g. `2026-03-01T03:00:00+01:00`) pins
//! "now" for every decision that depends on it: `run --due`, `verify --due`,
//! `schedule`, the snapshot time recorded by `run`, run history and the
//! keep-within anchor of `prune`. It exists for tests and is not meant for
//! production use. The daemon sleeps on the real clock but takes its
//! decisions from this one.

use chrono::{DateTime, FixedOffset, Local};

/// The name of the test-only clock override.
pub const NOW_ENV: &str = "BACKUPCTL_NOW";

/// The current time with the local UTC offset (or the pinned test time).
pub fn now() -> DateTime<FixedOffset> {
    match std::env::var(NOW_ENV) {
        Ok(s) if !s.trim().is_empty() => {
            DateTime::parse_from_rfc3339(s.trim()).unwrap_or_else(|e| {
                panic!("{NOW_ENV}={s:?} is not an RFC 3339 time (it is for tests only): {e}")
            })
        }
        _ => Local::now().fixed_offset(),
    }
}

/// Is the clock pinned by [`NOW_ENV`]?
pub fn pinned() -> bool {
    std::env::var(NOW_ENV).is_ok_and(|s| !s.trim().is_empty())
}
