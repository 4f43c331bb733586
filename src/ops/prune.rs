//! `backupctl prune`: apply the policy's retention rules to the snapshots on
//! its targets, then delete what is no longer needed, on each target on its
//! own.
//!
//! 1. Each target is decided on its own: [`crate::retention::apply`] over the
//!    snapshots whose manifests *that target* serves authenticated (see
//!    [`crate::trust`]), each with its recorded time and UTC offset. What
//!    another target serves never decides what is deleted here. The report's
//!    `keep`/`remove` is the same rule over every authenticated snapshot.
//! 2. Snapshots dated more than [`FUTURE_SKEW`] ahead of now (a host clock
//!    set wrong) never count toward retention: they are kept, reported, and
//!    prune exits 1 so someone looks.
//! 3. On each target that could be listed completely: delete the manifests of
//!    the forgotten snapshots first (a snapshot disappears atomically), then
//!    their signatures, then the extent lists and packs that no remaining
//!    snapshot on that target references. Orphans left by an interrupted
//!    run go the same way.
//!
//! Safety: a target that cannot be listed is left untouched (reported, exit 3);
//! the newest snapshot is never removed; a manifest that does not
//! authenticate (unsigned, untrusted, altered, unreadable) may reference any
//! pack, so it is never counted and no pack is deleted on the target that
//! holds it; neither while a remaining snapshot's extent lists cannot be
//! read. The caller holds the policy lock, so no `run` of the same policy
//! on this host can be uploading packs that no manifest names yet (one
//! policy is run from one host).

use crate::config::{Config, Policy};
use crate::error::{CodedError, ExitCode};
use crate::ops::Verdict;
use crate::repo::{Catalog, Key, PolicyName, SnapshotId, TargetState};
use crate::retention;
use chrono::Utc;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

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

/// What prune did on one target (JSON: `pruned`, `dry-run` and
/// `unreachable` with nothing deleted, `incomplete` with manifests removed
/// but packs kept because some manifest could not be authenticated or
/// read, `failed` when deletions failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneStatus {
    Pruned,
    DryRun,
    Unreachable,
    Incomplete,
    Failed,
}

status_names!(PruneStatus {
    Pruned => "pruned",
    DryRun => "dry-run",
    Unreachable => "unreachable",
    Incomplete => "incomplete",
    Failed => "failed",
});

#[derive(Debug, Serialize)]
pub struct TargetPrune {
    pub name: String,
    pub status: PruneStatus,
    /// Snapshot ids whose manifests were (dry run: would be) deleted.
    pub manifests_deleted: Vec<String>,
    /// Packs deleted (dry run: would be): no remaining snapshot on this
    /// target references them.
    pub archives_deleted: Vec<String>,
    /// Other objects deleted: extent lists no remaining snapshot names,
    /// signatures without their manifest.
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
    /// Snapshots dated in the future beyond the allowed skew: kept, not
    /// counted (exit 1 so someone looks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub future: Vec<RemoveItem>,
    pub result: Verdict,
}

/// How far ahead of now a snapshot may be dated (clocks of several hosts
/// drift) and still count toward retention.
pub const FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

impl PruneResult {
    pub fn exit_code(&self) -> ExitCode {
        if !self.future.is_empty() {
            return ExitCode::Failure;
        }
        match self.result {
            Verdict::Ok | Verdict::DryRun => ExitCode::Success,
            Verdict::Partial => ExitCode::Partial,
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
    let catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    let now = crate::clock::now();
    let limit = now + FUTURE_SKEW;
    let all: Vec<usize> = (0..catalog.entries.len()).collect();
    let (counted, future): (Vec<usize>, Vec<usize>) = all
        .into_iter()
        .partition(|&i| catalog.entries[i].manifest.time <= limit);
    let decision = decide(&catalog, &counted, &policy.retention, now)
        .map_err(|id| newest_refused(&policy.name, &id))?;

    let keep: Vec<KeepItem> = decision
        .keep
        .iter()
        .map(|k| {
            let e = &catalog.entries[counted[k.index]];
            KeepItem {
                id: e.manifest.id.clone(),
                time: e.manifest.time.to_rfc3339(),
                reasons: k.reasons.clone(),
                targets: e.complete_on.clone(),
            }
        })
        .collect();
    let item = |i: usize| {
        let m = &catalog.entries[i].manifest;
        RemoveItem {
            id: m.id.clone(),
            time: m.time.to_rfc3339(),
        }
    };
    let remove: Vec<RemoveItem> = decision.remove.iter().map(|&k| item(counted[k])).collect();

    let mut warnings: Vec<String> = catalog
        .bad_manifests
        .iter()
        .map(|d| format!("{d}; not counted, and no pack is deleted on that target"))
        .collect();
    for &i in &future {
        let (f, id, p) = (item(i), catalog.entries[i].id.clone(), &catalog.policy);
        let w = format!(
            "snapshot {} is dated {}, in the future (a host clock set wrong?): kept and not \
             counted by retention; if it is wrong, delete {} and {} on every target",
            f.id,
            f.time,
            Key::Manifest {
                policy: p.clone(),
                id: id.clone()
            }
            .object(),
            Key::Signature {
                policy: p.clone(),
                id
            }
            .object(),
        );
        tracing::error!("prune policy={}: {w}", policy.name);
        warnings.push(w);
    }

    tracing::info!(
        "prune policy={} snapshots={} keep={} remove={}{}",
        policy.name,
        catalog.entries.len(),
        keep.len(),
        remove.len(),
        if opts.dry_run { " (dry run)" } else { "" }
    );

    let future: Vec<RemoveItem> = future.into_iter().map(item).collect();
    let plan = Plan {
        policy: &catalog.policy,
        catalog: &catalog,
        retention: &policy.retention,
        now,
        limit,
        dry_run: opts.dry_run,
    };
    let tresults =
        futures::future::join_all(catalog.targets.iter().map(|st| plan.on_target(st))).await;

    let done = tresults
        .iter()
        .filter(|t| matches!(t.status, PruneStatus::Pruned | PruneStatus::DryRun))
        .count();
    let result = if done == tresults.len() {
        Verdict::Ok
    } else if done > 0 || tresults.iter().any(|t| t.status == PruneStatus::Incomplete) {
        Verdict::Partial
    } else {
        Verdict::Failed
    };
    Ok(PruneResult {
        policy: policy.name.clone(),
        dry_run: opts.dry_run,
        keep,
        remove,
        targets: tresults,
        warnings,
        future,
        result,
    })
}

fn newest_refused(policy: &str, id: &str) -> anyhow::Error {
    CodedError::failure(format!(
        "policy {policy}: retention would remove the newest snapshot {id}; refusing to prune"
    ))
    .into()
}

/// Retention over the entries `idx` (indices into `catalog.entries`); Err
/// names the newest snapshot when the rules would remove it (never done).
fn decide(
    catalog: &Catalog,
    idx: &[usize],
    rules: &crate::retention::RetentionPolicy,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<retention::Decision, String> {
    let times: Vec<_> = idx
        .iter()
        .map(|&i| catalog.entries[i].manifest.time)
        .collect();
    let d = retention::apply(&times, rules, now.with_timezone(&Utc));
    if let Some(newest) = (0..times.len())
        .rev()
        .max_by(|&a, &b| times[a].cmp(&times[b]))
    {
        if d.remove.contains(&newest) {
            return Err(catalog.entries[idx[newest]].manifest.id.clone());
        }
    }
    Ok(d)
}

/// What to delete: decided on each target from its own manifests.
struct Plan<'a> {
    policy: &'a PolicyName,
    catalog: &'a Catalog,
    retention: &'a crate::retention::RetentionPolicy,
    now: chrono::DateTime<chrono::FixedOffset>,
    limit: chrono::DateTime<chrono::FixedOffset>,
    dry_run: bool,
}

impl Plan<'_> {
    async fn on_target(&self, st: &TargetState) -> TargetPrune {
        let t = &st.target;
        let mut r = TargetPrune {
            name: t.name().to_string(),
            status: if self.dry_run {
                PruneStatus::DryRun
            } else {
                PruneStatus::Pruned
            },
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
                r.status = PruneStatus::Unreachable;
                r.error = Some(format!(
                    "{e}; nothing deleted here, left for the next prune"
                ));
                return r;
            }
        };
        // This target's own authenticated snapshots, and what it decides.
        let entries = &self.catalog.entries;
        let own = self.catalog.held_by(st);
        let counted: Vec<usize> = own
            .iter()
            .copied()
            .filter(|&i| entries[i].manifest.time <= self.limit)
            .collect();
        let remove: HashSet<&SnapshotId> =
            match decide(self.catalog, &counted, self.retention, self.now) {
                Ok(d) => d.remove.iter().map(|&k| &entries[counted[k]].id).collect(),
                Err(id) => {
                    r.status = PruneStatus::Failed;
                    r.error = Some(format!(
                        "retention would remove the newest snapshot {id} here; nothing deleted"
                    ));
                    return r;
                }
            };
        let known: HashMap<&SnapshotId, &crate::repo::Entry> =
            own.iter().map(|&i| (&entries[i].id, &entries[i])).collect();
        let mut errors = Vec::new();
        let policy = || self.policy.clone();

        // 1. Manifests of forgotten snapshots (each snapshot vanishes at
        //    once), then their signatures.
        let mut remaining: Vec<&SnapshotId> = Vec::new();
        let mut forgotten: HashSet<&SnapshotId> = HashSet::new();
        for id in view.snapshots.keys() {
            if !remove.contains(id) {
                remaining.push(id);
                continue;
            }
            if !self.dry_run {
                let manifest = Key::Manifest {
                    policy: policy(),
                    id: id.clone(),
                };
                if let Err(e) = t.delete(&manifest.object()).await {
                    errors.push(format!("deleting snapshot {id}: {e}"));
                    remaining.push(id);
                    continue;
                }
                let signature = Key::Signature {
                    policy: policy(),
                    id: id.clone(),
                };
                let _ = t.delete(&signature.object()).await;
                tracing::info!(
                    "prune policy={} target={}: forgot snapshot {id}",
                    self.policy,
                    t.name()
                );
            }
            forgotten.insert(id);
            r.manifests_deleted.push(id.to_string());
        }

        // 2. Archives no remaining snapshot on this target references.
        let blind: Vec<&str> = remaining
            .iter()
            .filter(|id| !known.contains_key(*id))
            .map(|id| id.as_str())
            .collect();
        if !blind.is_empty() {
            let w = format!(
                "snapshot(s) {} have no authentic manifest here: no pack is deleted on this \
                 target until they are repaired or removed",
                blind.join(", ")
            );
            tracing::warn!("prune policy={} target={}: {w}", self.policy, t.name());
            r.warnings.push(w);
            if r.status == PruneStatus::Pruned {
                r.status = PruneStatus::Incomplete;
            }
        } else {
            let live: Vec<&crate::repo::Entry> = remaining
                .iter()
                .filter_map(|id| known.get(id))
                .copied()
                .collect();
            if let Some(e) = live.iter().find(|e| !e.packs_known) {
                let w = format!(
                    "the extent lists of snapshot {} could not be read: no pack is deleted on \
                     this target until they can",
                    e.id
                );
                tracing::warn!("prune policy={} target={}: {w}", self.policy, t.name());
                r.warnings.push(w);
                if r.status == PruneStatus::Pruned {
                    r.status = PruneStatus::Incomplete;
                }
            } else {
                let dead = unreferenced(view, &live, self.policy);
                for (key, size, is_pack) in dead {
                    if !self.dry_run {
                        if let Err(e) = t.delete(&key.object()).await {
                            errors.push(format!("deleting {}: {e}", key.object()));
                            continue;
                        }
                    }
                    r.bytes_freed = r.bytes_freed.saturating_add(size);
                    match &key {
                        Key::Pack { name, .. } if is_pack => {
                            r.archives_deleted.push(name.to_string())
                        }
                        _ => r.others_deleted.push(key.object().to_string()),
                    }
                }
            }
            // Signatures without their manifest.
            let stray = stray_signatures(view, &remaining, &forgotten, self.policy);
            for (key, size) in stray {
                if !self.dry_run {
                    if let Err(e) = t.delete(&key).await {
                        errors.push(format!("deleting {key}: {e}"));
                        continue;
                    }
                }
                r.bytes_freed = r.bytes_freed.saturating_add(size);
                r.others_deleted.push(key.to_string());
            }
        }
        if !errors.is_empty() {
            for e in &errors {
                tracing::error!("prune policy={} target={}: {e}", self.policy, t.name());
            }
            r.status = PruneStatus::Failed;
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

/// The lists, then the packs, on a target that no snapshot in `live`
/// references (lists first: once a list is gone nothing points into a pack
/// about to go), each with its listed size and whether it is a pack.
fn unreferenced(
    view: &crate::repo::TargetView,
    live: &[&crate::repo::Entry],
    policy: &crate::repo::PolicyName,
) -> Vec<(Key, u64, bool)> {
    let packs: HashSet<&crate::repo::Hash> = live.iter().flat_map(|e| e.packs.iter()).collect();
    let lists: HashSet<&crate::repo::Hash> = live.iter().flat_map(|e| e.lists.iter()).collect();
    // Lists first: a list names packs, so once it is gone
    // nothing points into a pack about to go.
    let mut dead: Vec<(Key, u64, bool)> = view
        .lists
        .iter()
        .filter(|(h, _)| !lists.contains(h))
        .map(|(h, &size)| {
            let k = Key::List {
                policy: policy.clone(),
                hash: h.clone(),
            };
            (k, size, false)
        })
        .collect();
    dead.sort_by_key(|a| a.0.object());
    let mut dead_packs: Vec<(Key, u64, bool)> = view
        .packs
        .iter()
        .filter(|(h, _)| !packs.contains(h))
        .map(|(h, &size)| {
            let k = Key::Pack {
                policy: policy.clone(),
                name: h.clone(),
            };
            (k, size, true)
        })
        .collect();
    dead_packs.sort_by_key(|a| a.0.object());
    dead.extend(dead_packs);
    dead
}

/// Signatures on a target whose manifest is gone (neither remaining nor
/// forgotten by this prune), sorted.
fn stray_signatures(
    view: &crate::repo::TargetView,
    remaining: &[&SnapshotId],
    forgotten: &HashSet<&SnapshotId>,
    policy: &crate::repo::PolicyName,
) -> Vec<(crate::storage::ObjectKey, u64)> {
    let mut stray: Vec<(crate::storage::ObjectKey, u64)> = view
        .signatures
        .iter()
        .filter(|(id, _)| !remaining.contains(id) && !forgotten.contains(id))
        .map(|(id, &s)| {
            let k = Key::Signature {
                policy: policy.clone(),
                id: id.clone(),
            };
            (k.object(), s)
        })
        .collect();
    stray.sort();
    stray
}
