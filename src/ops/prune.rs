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
//! 4. Repack ([`crate::ops::repack`]): packs whose dead share passed the
//!    threshold have their live chunks copied into new packs, the retained
//!    snapshots using them get rewritten extent lists and manifests, and the
//!    old packs go.
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
use crate::error::ExitCode;
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

impl TargetPrune {
    /// Nothing done yet on target `name`.
    fn new(name: &str, dry_run: bool) -> TargetPrune {
        TargetPrune {
            name: name.to_string(),
            status: if dry_run {
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
        }
    }
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
    /// Packs mostly dead after the removals, rewritten (see `ops::repack`).
    pub repack: crate::ops::repack::RepackReport,
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
) -> crate::error::Result<PruneResult> {
    if policy.retention.is_empty() {
        // Config loading refuses this already; never delete everything.
        return Err(crate::error::Error::usage(format!(
            "policy {}: no retention rule set; refusing to prune",
            policy.name
        )));
    }
    let mut catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    let mut caught_up = Vec::new();
    if !opts.dry_run {
        // A target away while an earlier prune repacked still holds older
        // copies; it is judged by current ones.
        caught_up = crate::ops::sync::copy_newer_revisions(cfg, &catalog).await;
        if caught_up.iter().any(|c| c.error.is_none()) {
            catalog = crate::ops::load_catalog(cfg, policy, None).await?;
        }
    }
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
    for c in &caught_up {
        let what = format!("target {}: snapshot {}", c.target, c.snapshot);
        match &c.error {
            None => tracing::info!(
                "prune policy={}: {what}: brought to its repacked copy",
                policy.name
            ),
            Some(e) => warnings.push(format!("{what}: holds an older copy, not replaced: {e}")),
        }
    }
    for &i in &future {
        let w = future_warning(&catalog, i);
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
    let mut tresults =
        futures::future::join_all(catalog.targets.iter().map(|st| plan.on_target(st))).await;
    let repack = crate::ops::repack::repack(cfg, &catalog, &mut tresults, opts.dry_run).await;
    if !opts.dry_run {
        forget_cached_indexes(cfg, &catalog, &tresults);
    }
    warnings.extend(repack.skipped.iter().map(|s| format!("repack: {s}")));

    let result = verdict(&tresults);
    Ok(PruneResult {
        policy: policy.name.clone(),
        dry_run: opts.dry_run,
        keep,
        remove,
        targets: tresults,
        repack,
        warnings,
        future,
        result,
    })
}

/// The local index cache forgets the packs deleted on a target that no
/// other reachable target holds (it only saves downloads: a pack still on
/// an unreachable target has its index fetched again when needed).
fn forget_cached_indexes(cfg: &Config, catalog: &Catalog, targets: &[TargetPrune]) {
    let cache = crate::ops::run::pack_cache(&cfg.state_dir, &catalog.policy);
    let deleted: HashSet<&str> = targets
        .iter()
        .flat_map(|t| t.archives_deleted.iter().map(String::as_str))
        .collect();
    for name in deleted {
        let Ok(h) = crate::repo::Hash::new(name) else {
            continue;
        };
        let kept = catalog.targets.iter().zip(targets).any(|(st, r)| {
            st.view.as_ref().is_ok_and(|v| v.packs.contains_key(&h))
                && !r.archives_deleted.iter().any(|d| d == name)
        });
        if !kept {
            crate::repo::fetch::forget_cached_index(&cache, &h);
        }
    }
}

fn newest_refused(policy: &str, id: &str) -> crate::error::Error {
    crate::error::Error::failure(format!(
        "policy {policy}: retention would remove the newest snapshot {id}; refusing to prune"
    ))
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

/// What to say about snapshot `i`, dated in the future: kept, not counted,
/// and which two files to delete if it is wrong.
fn future_warning(catalog: &Catalog, i: usize) -> String {
    let e = &catalog.entries[i];
    let p = &catalog.policy;
    format!(
        "snapshot {} is dated {}, in the future (a host clock set wrong?): kept and not \
         counted by retention; if it is wrong, delete {} and {} on every target",
        e.manifest.id,
        e.manifest.time.to_rfc3339(),
        Key::Manifest {
            policy: p.clone(),
            id: e.id.clone()
        }
        .object(),
        Key::Signature {
            policy: p.clone(),
            id: e.id.clone()
        }
        .object(),
    )
}

/// The policy's verdict from its targets': every one pruned (or dry run)
/// is ok; some, or one incomplete, partial; none failed.
fn verdict(targets: &[TargetPrune]) -> Verdict {
    let done = targets
        .iter()
        .filter(|t| matches!(t.status, PruneStatus::Pruned | PruneStatus::DryRun))
        .count();
    if done == targets.len() {
        Verdict::Ok
    } else if done > 0 || targets.iter().any(|t| t.status == PruneStatus::Incomplete) {
        Verdict::Partial
    } else {
        Verdict::Failed
    }
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

/// Deletions on one target that failed (the rest go on).
type Errors = Vec<String>;

impl Plan<'_> {
    /// Prune one target: decide from its own snapshots, forget the removed
    /// ones, then delete what nothing remaining references.
    async fn on_target(&self, st: &TargetState) -> TargetPrune {
        let t = &st.target;
        let mut r = TargetPrune::new(t.name(), self.dry_run);
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
        let entries = &self.catalog.entries;
        let own = self.catalog.held_by(st);
        let remove = match self.removals(&own) {
            Ok(remove) => remove,
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
        let mut errors = Errors::new();
        let (remaining, forgotten) = self.forget(st, view, &remove, &mut r, &mut errors).await;
        match self.live(&remaining, &known) {
            Err(w) => {
                tracing::warn!("prune policy={} target={}: {w}", self.policy, t.name());
                r.warnings.push(w);
                if r.status == PruneStatus::Pruned {
                    r.status = PruneStatus::Incomplete;
                }
                // An unreadable extent list still lets stray signatures go;
                // a snapshot without an authentic manifest stops everything.
                if remaining.iter().all(|id| known.contains_key(*id)) {
                    self.delete_stray(st, view, &remaining, &forgotten, &mut r, &mut errors)
                        .await;
                }
            }
            Ok(live) => {
                self.delete_unreferenced(st, view, &live, &mut r, &mut errors)
                    .await;
                self.delete_stray(st, view, &remaining, &forgotten, &mut r, &mut errors)
                    .await;
            }
        }
        self.conclude(t.name(), r, errors)
    }

    /// The snapshots this target's own retention removes (snapshots dated
    /// beyond the clock limit never count); the newest's id if retention
    /// would remove it.
    fn removals(&self, own: &[usize]) -> Result<HashSet<&SnapshotId>, String> {
        let entries = &self.catalog.entries;
        let counted: Vec<usize> = own
            .iter()
            .copied()
            .filter(|&i| entries[i].manifest.time <= self.limit)
            .collect();
        let d = decide(self.catalog, &counted, self.retention, self.now)?;
        Ok(d.remove.iter().map(|&k| &entries[counted[k]].id).collect())
    }

    /// Step 1: delete the manifests of the removed snapshots (each vanishes
    /// at once), then their signatures. Returns the snapshots remaining on
    /// the target and those forgotten.
    async fn forget<'v>(
        &self,
        st: &TargetState,
        view: &'v crate::repo::TargetView,
        remove: &HashSet<&SnapshotId>,
        r: &mut TargetPrune,
        errors: &mut Errors,
    ) -> (Vec<&'v SnapshotId>, HashSet<&'v SnapshotId>) {
        let t = &st.target;
        let mut remaining = Vec::new();
        let mut forgotten = HashSet::new();
        for id in view.snapshots.keys() {
            if !remove.contains(id) {
                remaining.push(id);
                continue;
            }
            if !self.dry_run {
                let manifest = Key::Manifest {
                    policy: self.policy.clone(),
                    id: id.clone(),
                };
                if let Err(e) = t.delete(&manifest.object()).await {
                    errors.push(format!("deleting snapshot {id}: {e}"));
                    remaining.push(id);
                    continue;
                }
                let signature = Key::Signature {
                    policy: self.policy.clone(),
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
        (remaining, forgotten)
    }

    /// The remaining snapshots whose references are known, or why no pack
    /// may be deleted on this target: a snapshot without an authentic
    /// manifest here, or one whose extent lists could not be read.
    fn live<'e>(
        &self,
        remaining: &[&SnapshotId],
        known: &HashMap<&SnapshotId, &'e crate::repo::Entry>,
    ) -> Result<Vec<&'e crate::repo::Entry>, String> {
        let blind: Vec<&str> = remaining
            .iter()
            .filter(|id| !known.contains_key(*id))
            .map(|id| id.as_str())
            .collect();
        if !blind.is_empty() {
            return Err(format!(
                "snapshot(s) {} have no authentic manifest here: no pack is deleted on this \
                 target until they are repaired or removed",
                blind.join(", ")
            ));
        }
        let live: Vec<&crate::repo::Entry> = remaining
            .iter()
            .filter_map(|id| known.get(id))
            .copied()
            .collect();
        if let Some(e) = live.iter().find(|e| !e.packs_known) {
            return Err(format!(
                "the extent lists of snapshot {} could not be read: no pack is deleted on \
                 this target until they can",
                e.id
            ));
        }
        Ok(live)
    }

    /// Step 2: the lists and packs that no snapshot in `live` references.
    async fn delete_unreferenced(
        &self,
        st: &TargetState,
        view: &crate::repo::TargetView,
        live: &[&crate::repo::Entry],
        r: &mut TargetPrune,
        errors: &mut Errors,
    ) {
        for (key, size, is_pack) in unreferenced(view, live, self.policy) {
            if !self.dry_run {
                if let Err(e) = st.target.delete(&key.object()).await {
                    errors.push(format!("deleting {}: {e}", key.object()));
                    continue;
                }
            }
            r.bytes_freed = r.bytes_freed.saturating_add(size);
            match &key {
                Key::Pack { name, .. } if is_pack => r.archives_deleted.push(name.to_string()),
                _ => r.others_deleted.push(key.object().to_string()),
            }
        }
    }

    /// Signatures left without their manifest.
    async fn delete_stray(
        &self,
        st: &TargetState,
        view: &crate::repo::TargetView,
        remaining: &[&SnapshotId],
        forgotten: &HashSet<&SnapshotId>,
        r: &mut TargetPrune,
        errors: &mut Errors,
    ) {
        for (key, size) in stray_signatures(view, remaining, forgotten, self.policy) {
            if !self.dry_run {
                if let Err(e) = st.target.delete(&key).await {
                    errors.push(format!("deleting {key}: {e}"));
                    continue;
                }
            }
            r.bytes_freed = r.bytes_freed.saturating_add(size);
            r.others_deleted.push(key.to_string());
        }
    }

    /// A failed deletion fails the target; the summary line is logged.
    fn conclude(&self, target: &str, mut r: TargetPrune, errors: Errors) -> TargetPrune {
        if !errors.is_empty() {
            for e in &errors {
                tracing::error!("prune policy={} target={target}: {e}", self.policy);
            }
            r.status = PruneStatus::Failed;
            r.error = Some(errors.join("; "));
        }
        tracing::info!(
            "prune policy={} target={target} status={} manifests={} archives={} freed={}",
            self.policy,
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
