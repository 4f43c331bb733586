//! `backupctl prune`: apply the policy's retention rules to the snapshots on
//! its targets, then delete what is no longer needed, on each target on its
//! own.
//!
//! 1. The keep/remove decision is [`crate::retention::apply`] over every
//!    snapshot with a readable manifest on any reachable target (each with its
//!    recorded time and UTC offset), so every target converges on one set.
//! 2. On each target that could be listed completely: delete the manifests of
//!    the forgotten snapshots first (a snapshot disappears atomically), then
//!    the archives (and their `.b3sums`) that no remaining snapshot on that
//!    target references. Orphans left by an interrupted run go the same way.
//!
//! Safety: a target that cannot be listed is left untouched (reported, exit 3);
//! the newest snapshot is never removed; a snapshot whose manifest is readable
//! nowhere may reference any archive, so no archive is deleted on a target
//! that holds one. The caller holds the policy lock, so no `run` of the same
//! policy can be uploading archives that no manifest names yet.

use crate::config::{Config, Policy};
use crate::error::{CodedError, ExitCode};
use crate::ops::open_targets;
use crate::repo::{self, Catalog, TargetState};
use crate::retention;
use crate::util::human_bytes;
use chrono::Utc;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Decide and report, delete nothing.
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct KeepItem {
    pub id: String,
    /// RFC 3339 with the offset the snapshot was recorded with.
    pub time: String,
    /// Every rule that keeps it, e.g. "daily snapshot", "oldest monthly snapshot", "within 14d".
    pub reasons: Vec<String>,
    /// Targets on which the snapshot is complete.
    pub targets: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RemoveItem {
    pub id: String,
    pub time: String,
}

#[derive(Debug, Serialize)]
pub struct TargetPrune {
    pub name: String,
    /// "pruned", "dry-run" (nothing deleted), "unreachable" (nothing deleted),
    /// "incomplete" (manifests removed, archives kept: unreadable manifests),
    /// or "failed" (some deletions failed).
    pub status: String,
    /// Snapshot ids whose manifests were (dry run: would be) deleted.
    pub manifests_deleted: Vec<String>,
    /// Archive hashes deleted (dry run: would be), with their `.b3sums`.
    pub archives_deleted: Vec<String>,
    /// Other files deleted: `.b3sums` whose archive is gone.
    pub others_deleted: Vec<String>,
    pub bytes_freed: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PruneResult {
    pub policy: String,
    pub dry_run: bool,
    /// Newest first.
    pub keep: Vec<KeepItem>,
    /// Newest first.
    pub remove: Vec<RemoveItem>,
    pub targets: Vec<TargetPrune>,
    pub warnings: Vec<String>,
    /// "ok", "partial" or "failed".
    pub result: String,
}

impl PruneResult {
    pub fn exit_code(&self) -> ExitCode {
        match self.result.as_str() {
            "ok" => ExitCode::Success,
            "partial" => ExitCode::Partial,
            _ => ExitCode::Failure,
        }
    }
}

/// Prune one policy. The caller holds the policy lock (unless `dry_run`).
pub async fn prune_policy(
    cfg: &Config,
    policy: &Policy,
    opts: &PruneOptions,
) -> anyhow::Result<PruneResult> {
    if policy.retention.is_empty() {
        // Config loading refuses this already; never delete everything.
        return Err(CodedError::usage(format!(
            "policy {}: no retention rule set; refusing to prune",
            policy.name
        ))
        .into());
    }
    let targets = open_targets(cfg, policy, None).await?;
    let catalog = Catalog::load(&policy.name, &targets).await;
    let now = crate::clock::now();

    let times: Vec<_> = catalog.entries.iter().map(|e| e.manifest.time).collect();
    let decision = retention::apply(&times, &policy.retention, now.with_timezone(&Utc));

    // The newest snapshot (first in retention's stable newest-first order).
    if let Some(newest) = (0..times.len())
        .rev()
        .max_by(|&a, &b| times[a].cmp(&times[b]))
    {
        if decision.remove.contains(&newest) {
            return Err(CodedError::failure(format!(
                "policy {}: retention would remove the newest snapshot {}; refusing to prune",
                policy.name, catalog.entries[newest].manifest.id
            ))
            .into());
        }
    }

    let keep: Vec<KeepItem> = decision
        .keep
        .iter()
        .map(|k| {
            let e = &catalog.entries[k.index];
            KeepItem {
                id: e.manifest.id.clone(),
                time: e.manifest.time.to_rfc3339(),
                reasons: k.reasons.clone(),
                targets: e.complete_on.clone(),
            }
        })
        .collect();
    let remove: Vec<RemoveItem> = decision
        .remove
        .iter()
        .map(|&i| {
            let m = &catalog.entries[i].manifest;
            RemoveItem {
                id: m.id.clone(),
                time: m.time.to_rfc3339(),
            }
        })
        .collect();

    let mut warnings: Vec<String> = catalog
        .bad_manifests
        .iter()
        .map(|(t, id, e)| format!("target {t}: snapshot {id}: manifest unreadable: {e}"))
        .collect();
    // Snapshots whose manifest no reachable target serves: unknown references.
    let known: HashMap<&str, &crate::archive::Manifest> = catalog
        .entries
        .iter()
        .map(|e| (e.manifest.id.as_str(), &e.manifest))
        .collect();
    let unknown: BTreeSet<String> = catalog
        .targets
        .iter()
        .filter_map(|s| s.view.as_ref().ok())
        .flat_map(|v| v.snapshots.iter())
        .filter(|id| !known.contains_key(id.as_str()))
        .cloned()
        .collect();
    for id in &unknown {
        warnings.push(format!(
            "snapshot {id}: no readable manifest on any reachable target; it is neither kept \
             nor removed, and archives on the targets holding it are left alone"
        ));
    }
    let remove_ids: HashSet<&str> = remove.iter().map(|r| r.id.as_str()).collect();

    tracing::info!(
        "prune policy={} snapshots={} keep={} remove={}{}",
        policy.name,
        catalog.entries.len(),
        keep.len(),
        remove.len(),
        if opts.dry_run { " (dry run)" } else { "" }
    );

    let plan = Plan {
        policy: &policy.name,
        known: &known,
        unknown: &unknown,
        remove: &remove_ids,
        dry_run: opts.dry_run,
    };
    let tresults =
        futures::future::join_all(catalog.targets.iter().map(|st| plan.on_target(st))).await;

    let done = tresults
        .iter()
        .filter(|t| t.status == "pruned" || t.status == "dry-run")
        .count();
    let result = if done == tresults.len() {
        "ok"
    } else if done > 0 || tresults.iter().any(|t| t.status == "incomplete") {
        "partial"
    } else {
        "failed"
    };
    Ok(PruneResult {
        policy: policy.name.clone(),
        dry_run: opts.dry_run,
        keep,
        remove,
        targets: tresults,
        warnings,
        result: result.into(),
    })
}

/// What to delete, shared by all targets.
struct Plan<'a> {
    policy: &'a str,
    known: &'a HashMap<&'a str, &'a crate::archive::Manifest>,
    unknown: &'a BTreeSet<String>,
    remove: &'a HashSet<&'a str>,
    dry_run: bool,
}

impl Plan<'_> {
    async fn on_target(&self, st: &TargetState) -> TargetPrune {
        let t = &st.target;
        let mut r = TargetPrune {
            name: t.name().to_string(),
            status: if self.dry_run { "dry-run" } else { "pruned" }.into(),
            manifests_deleted: Vec::new(),
            archives_deleted: Vec::new(),
            others_deleted: Vec::new(),
            bytes_freed: 0,
            warnings: Vec::new(),
            error: None,
        };
        let view = match &st.view {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    "prune policy={} target={}: not listed completely, nothing deleted: {e}",
                    self.policy,
                    t.name()
                );
                r.status = "unreachable".into();
                r.error = Some(format!(
                    "{e}; nothing deleted here, left for the next prune"
                ));
                return r;
            }
        };
        let mut errors = Vec::new();

        // 1. Manifests of forgotten snapshots: each snapshot vanishes at once.
        let mut remaining: Vec<&str> = Vec::new();
        for id in &view.snapshots {
            if !self.remove.contains(id.as_str()) {
                remaining.push(id);
                continue;
            }
            if !self.dry_run {
                if let Err(e) = t.delete(&repo::manifest_key(self.policy, id)).await {
                    errors.push(format!("deleting snapshot {id}: {e}"));
                    remaining.push(id);
                    continue;
                }
                tracing::info!(
                    "prune policy={} target={}: forgot snapshot {id}",
                    self.policy,
                    t.name()
                );
            }
            r.manifests_deleted.push(id.clone());
        }

        // 2. Archives no remaining snapshot on this target references.
        let blind: Vec<&str> = remaining
            .iter()
            .copied()
            .filter(|id| self.unknown.contains(*id))
            .collect();
        if !blind.is_empty() {
            let w = format!(
                "snapshot(s) {} have no readable manifest: no archive is deleted on this target \
                 until they are repaired or removed",
                blind.join(", ")
            );
            tracing::warn!("prune policy={} target={}: {w}", self.policy, t.name());
            r.warnings.push(w);
            if r.status == "pruned" {
                r.status = "incomplete".into();
            }
        } else {
            let referenced: HashSet<&str> = remaining
                .iter()
                .filter_map(|id| self.known.get(id))
                .flat_map(|m| m.sources.iter().map(|s| s.archive_hash.as_str()))
                .collect();
            let mut orphans: Vec<(&String, u64)> = view
                .archives
                .iter()
                .filter(|(h, _)| !referenced.contains(h.as_str()))
                .map(|(h, &size)| (h, size))
                .collect();
            orphans.sort();
            for (hash, size) in orphans {
                let sums = repo::b3sums_key(self.policy, hash);
                if !self.dry_run {
                    let res = match t.delete(&repo::archive_key(self.policy, hash)).await {
                        Ok(()) => t.delete(&sums).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = res {
                        errors.push(format!("deleting archive {hash}: {e}"));
                        continue;
                    }
                }
                r.bytes_freed += size + view.others.get(&sums).copied().unwrap_or(0);
                r.archives_deleted.push(hash.clone());
            }
            // `.b3sums` whose archive is already gone (an interrupted run or prune).
            let prefix = format!("{}/archives/", self.policy);
            let mut stray: Vec<(&String, u64)> = view
                .others
                .iter()
                .filter(|(k, _)| {
                    k.strip_prefix(&prefix)
                        .and_then(|r| r.strip_suffix(".b3sums"))
                        .is_some_and(|h| {
                            crate::archive::manifest::is_hash(h)
                                && !referenced.contains(h)
                                && !view.archives.contains_key(h)
                        })
                })
                .map(|(k, &s)| (k, s))
                .collect();
            stray.sort();
            for (key, size) in stray {
                if !self.dry_run {
                    if let Err(e) = t.delete(key).await {
                        errors.push(format!("deleting {key}: {e}"));
                        continue;
                    }
                }
                r.bytes_freed += size;
                r.others_deleted.push(key.clone());
            }
        }
        if !errors.is_empty() {
            for e in &errors {
                tracing::error!("prune policy={} target={}: {e}", self.policy, t.name());
            }
            r.status = "failed".into();
            r.error = Some(errors.join("; "));
        }
        tracing::info!(
            "prune policy={} target={} status={} manifests={} archives={} freed={}",
            self.policy,
            t.name(),
            r.status,
            r.manifests_deleted.len(),
            r.archives_deleted.len(),
            r.bytes_freed
        );
        r
    }
}

/// Human-readable report.
pub fn render(r: &PruneResult) -> String {
    let mut s = format!(
        "policy {}: keep {}, remove {} snapshot(s){}: {}\n",
        r.policy,
        r.keep.len(),
        r.remove.len(),
        if r.dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        },
        r.result.to_uppercase()
    );
    for k in &r.keep {
        s.push_str(&format!(
            "  keep    {}  {}  {}\n",
            k.id,
            k.time,
            k.reasons.join(", ")
        ));
    }
    for k in &r.remove {
        s.push_str(&format!("  remove  {}  {}\n", k.id, k.time));
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for t in &r.targets {
        match t.status.as_str() {
            "unreachable" => s.push_str(&format!(
                "  target {}: UNREACHABLE: {}\n",
                t.name,
                t.error.as_deref().unwrap_or("")
            )),
            _ => {
                s.push_str(&format!(
                    "  target {}: {verb} {} snapshot(s), {} archive(s), {} freed{}\n",
                    t.name,
                    t.manifests_deleted.len(),
                    t.archives_deleted.len() + t.others_deleted.len(),
                    human_bytes(t.bytes_freed),
                    t.error
                        .as_deref()
                        .map(|e| format!("; FAILED: {e}"))
                        .unwrap_or_default()
                ));
                for w in &t.warnings {
                    s.push_str(&format!("    warning: {w}\n"));
                }
            }
        }
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s.trim_end().to_string()
}
