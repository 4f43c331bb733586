//! Local state under `state_dir`: run history per policy (a cache: when lost,
//! the newest snapshot on the targets stands in). Never the only copy of
//! anything a restore needs. Private to the user backupctl runs as: the
//! state and history directories are 0700, history files 0600.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpRecord {
    /// When the last attempt started (wall clock).
    pub last_attempt: Option<DateTime<FixedOffset>>,
    /// "success", "incomplete" (runs: some source files could not be read;
    /// still a success for the schedule), "partial", "failed" or "aborted".
    pub last_result: Option<String>,
    pub last_message: Option<String>,
    /// When the last successful (or partial) attempt started.
    pub last_success: Option<DateTime<FixedOffset>>,
    pub last_snapshot: Option<String>,
    /// Runs only: targets that missed a snapshot (unreachable or failed
    /// during a partial run) and have not been caught up since. They keep the
    /// policy due: the next `run --due` copies what they lack (as `sync`
    /// does) once they answer again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub missed_targets: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyState {
    #[serde(default)]
    pub run: OpRecord,
    #[serde(default)]
    pub verify: OpRecord,
    /// Targets on which the last verification passed every check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_on: Vec<String>,
    /// snapshot id -> when it was last verified.
    #[serde(default)]
    pub verified: std::collections::BTreeMap<String, DateTime<FixedOffset>>,
    /// What `--metrics-file` reports (counters, last success, per target).
    #[serde(default)]
    pub metrics: crate::metrics::PolicyMetrics,
    /// Notification bookkeeping (`stale` sent once per stale spell).
    #[serde(default)]
    pub notify: crate::notify::NotifyState,
    /// Packs `verify` found damaged, per target: `sync` replaces them with
    /// an intact copy from another target.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub damaged: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The last test restores (`drill`), per target.
    #[serde(default)]
    pub drill: crate::ops::drill::DrillRecord,
}

fn path(state_dir: &Path, policy: &str) -> PathBuf {
    state_dir.join("history").join(format!("{policy}.json"))
}

pub fn load(state_dir: &Path, policy: &str) -> PolicyState {
    std::fs::read(path(state_dir, policy))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Save atomically (temp + rename).
pub fn save(state_dir: &Path, policy: &str, st: &PolicyState) -> std::io::Result<()> {
    use std::io::Write;
    let p = path(state_dir, policy);
    crate::util::private_dir(state_dir)?;
    crate::util::private_dir(p.parent().expect("has parent"))?;
    let tmp = p.with_extension(format!("json.tmp-{}", crate::util::random_hex(6)));
    let written = crate::util::create_private_file(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec_pretty(st).expect("serialises")));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &p)
}

/// Load, change, save; errors are logged, not fatal (state is a cache).
pub fn update(state_dir: &Path, policy: &str, f: impl FnOnce(&mut PolicyState)) {
    let mut st = load(state_dir, policy);
    f(&mut st);
    if let Err(e) = save(state_dir, policy, &st) {
        tracing::warn!(
            "could not save state for policy {policy} in {}: {e}",
            state_dir.display()
        );
    }
}
