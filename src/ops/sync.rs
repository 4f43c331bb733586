//! `backupctl sync`: bring every target of a policy up to date without a new
//! backup. Each snapshot that a reachable target lacks, or holds incomplete
//! (an extent list or pack missing), is copied from a target where it is
//! complete, in the policy's order: each missing pack and list is
//! downloaded once, checked against its name, and written to every target
//! that lacks it ([`crate::repo::transfer`]); the manifest is written last,
//! as `run` does. Packs `verify` found damaged on a target (recorded in the
//! policy's state) are replaced there by an intact copy from another.
//!
//! Before copying, what interrupted writes left on each reachable target and
//! older than `abort_uploads_older_than` is removed
//! ([`crate::storage::Backend::cleanup_incomplete`]: S3 multipart uploads and
//! staging files, fs temporaries).
//!
//! Which snapshots each target lacks comes from the catalog; downloads go
//! through [`crate::repo::fetch`], the commit through [`crate::repo::Commit`].

use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::ops::Verdict;
use crate::repo::catalog::read_authentic;
use crate::repo::transfer::{self, Object};
use crate::repo::{Catalog, Commit, Entry, Hash};
use crate::storage::DynBackend;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub dry_run: bool,
    /// Abort incomplete uploads started longer ago than this.
    pub abort_uploads_older_than: Duration,
    /// Only bring these targets up to date (`run --due` catching up the
    /// targets a partial run missed); None: every target.
    pub only_targets: Option<Vec<String>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            dry_run: false,
            abort_uploads_older_than: Duration::from_secs(24 * 3600),
            only_targets: None,
        }
    }
}

/// One snapshot's copy to one target (JSON: `copied`, `would copy` for a
/// dry run, `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CopyStatus {
    #[serde(rename = "copied")]
    Copied,
    #[serde(rename = "would copy")]
    WouldCopy,
    #[serde(rename = "failed")]
    Failed,
}

status_names!(CopyStatus {
    Copied => "copied",
    WouldCopy => "would copy",
    Failed => "failed",
});

#[derive(Debug, Serialize)]
pub struct SnapshotCopy {
    pub snapshot: String,
    pub target: String,
    /// Where the packs and lists came from (targets, in order of use).
    pub from: Vec<String>,
    /// Packs and extent lists copied (or to copy, in a dry run), by name.
    pub archives: Vec<String>,
    pub packs: usize,
    pub lists: usize,
    pub bytes: u64,
    pub status: CopyStatus,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SyncResult {
    pub policy: String,
    pub result: Verdict,
    pub dry_run: bool,
    pub copies: Vec<SnapshotCopy>,
    /// Snapshots some target lacks that retention no longer keeps: not
    /// copied (the next prune removes them where they remain).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_retained: Vec<String>,
    /// Targets that could not be listed (not synced): (target, error).
    pub unreachable: Vec<(String, String)>,
    /// Stale multipart uploads aborted, per target.
    pub aborted_uploads: Vec<(String, usize)>,
    /// Damaged packs (found by `verify`) replaced: (target, pack).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<(String, String)>,
    pub problems: Vec<String>,
}

impl SyncResult {
    pub fn exit_code(&self) -> ExitCode {
        self.result.exit_code()
    }
}

/// The exact signed manifest and signature of `entry`, from the first
/// source that still serves them authentic and unchanged (never
/// re-serialised: the signature covers the bytes).
async fn authentic_copy(
    cfg: &Config,
    sources: &[&DynBackend],
    catalog: &Catalog,
    entry: &Entry,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut why = Vec::new();
    for s in sources {
        match read_authentic(s, &catalog.policy, &entry.id, 0, &cfg.trust()).await {
            Ok(a) if a.digest == entry.digest => return Ok((a.bytes, a.signature)),
            Ok(_) => why.push(format!(
                "{}: manifest changed since it was listed",
                s.name()
            )),
            Err((e, _)) => why.push(format!("{}: {e}", s.name())),
        }
    }
    Err(format!(
        "no authentic copy of the manifest ({})",
        why.join("; ")
    ))
}

/// Per target name, the objects it holds.
type Holdings = HashMap<String, HashSet<Object>>;

/// Per reachable target, the packs and lists it holds.
fn holdings(catalog: &Catalog) -> Holdings {
    let mut have: Holdings = HashMap::new();
    for s in catalog.reachable() {
        if let Ok(v) = &s.view {
            let objs = v
                .packs
                .keys()
                .map(|h| Object::Pack(h.clone()))
                .chain(v.lists.keys().map(|h| Object::List {
                    hash: h.clone(),
                    size: 0,
                }))
                .collect();
            have.insert(s.name().to_string(), objs);
        }
    }
    have
}

/// Copy snapshot `entry` onto `needers` from `sources` (targets where it is
/// complete): lists, then packs, each to the targets lacking it, then the
/// authentic manifest through the one commit sequence. One record per
/// target; `have` learns what was copied.
async fn copy_snapshot(
    cfg: &Config,
    catalog: &Catalog,
    entry: &Entry,
    needers: &[&DynBackend],
    sources: &[&DynBackend],
    have: &mut Holdings,
    o: &SyncOptions,
) -> Vec<SnapshotCopy> {
    let m = &entry.manifest;
    let mut copies: Vec<SnapshotCopy> = needers
        .iter()
        .map(|t| SnapshotCopy {
            snapshot: m.id.clone(),
            target: t.name().to_string(),
            from: Vec::new(),
            archives: Vec::new(),
            packs: 0,
            lists: 0,
            bytes: 0,
            status: if o.dry_run {
                CopyStatus::WouldCopy
            } else {
                CopyStatus::Copied
            },
            error: None,
        })
        .collect();
    // Lists first (small), then packs, each to the targets lacking it.
    let mut objects: Vec<Object> = Vec::new();
    for st in m.sources.iter().flat_map(|r| r.streams()) {
        if let Ok(hash) = Hash::new(&st.list) {
            let obj = Object::List {
                hash,
                size: st.list_size,
            };
            if !objects.contains(&obj) {
                objects.push(obj);
            }
        }
    }
    objects.extend(entry.packs.iter().cloned().map(Object::Pack));
    for obj in &objects {
        let lacking: Vec<usize> = needers
            .iter()
            .enumerate()
            .filter(|(i, t)| copies[*i].error.is_none() && !have[t.name()].contains(&held(obj)))
            .map(|(i, _)| i)
            .collect();
        if lacking.is_empty() {
            continue;
        }
        if o.dry_run {
            for i in lacking {
                note(&mut copies[i], obj, 0, None);
            }
            continue;
        }
        let to: Vec<&DynBackend> = lacking.iter().map(|&i| needers[i]).collect();
        match transfer::copy(&catalog.policy, obj, sources, &to).await {
            Ok(c) => {
                for (&i, r) in lacking.iter().zip(c.puts) {
                    match r {
                        Ok(()) => {
                            note(&mut copies[i], obj, c.bytes, Some(&c.from));
                            have.get_mut(needers[i].name())
                                .expect("reachable")
                                .insert(held(obj));
                        }
                        Err(e) => {
                            copies[i].status = CopyStatus::Failed;
                            copies[i].error = Some(e);
                        }
                    }
                }
            }
            Err(why) => {
                for i in lacking {
                    copies[i].status = CopyStatus::Failed;
                    copies[i].error = Some(why.clone());
                }
            }
        }
    }
    if !o.dry_run {
        let commit = authentic_copy(cfg, sources, catalog, entry)
            .await
            .and_then(|(json, sig)| {
                Commit::new(m, json, sig.clone(), Vec::new())
                    .map(|c| (c, sig))
                    .map_err(|e| e.to_string())
            });
        for (i, t) in needers.iter().enumerate() {
            if copies[i].error.is_some() {
                continue;
            }
            let r = match (&commit, older_signature(catalog, entry, t).await) {
                (Ok((c, sig)), Some(old)) => c
                    .replace(t, crate::trust::bridge(sig, &old))
                    .await
                    .map_err(|e| e.to_string()),
                (Ok((c, _)), None) => c.apply(t).await.map_err(|e| e.to_string()),
                (Err(e), _) => Err(e.clone()),
            };
            if let Err(e) = r {
                copies[i].status = CopyStatus::Failed;
                copies[i].error = Some(e);
            }
        }
    }
    copies
}

/// The signature file of the older authentic copy of `entry` that `t`
/// holds, if it holds one: the copy is then replaced with a bridging
/// signature ([`crate::trust::bridge`]), so a crash leaves one of the two
/// authentic.
async fn older_signature(catalog: &Catalog, entry: &Entry, t: &DynBackend) -> Option<Vec<u8>> {
    let st = catalog.targets.iter().find(|s| s.name() == t.name())?;
    if !st.holds_older(entry) {
        return None;
    }
    crate::repo::fetch::signature(t, &catalog.policy, &entry.id)
        .await
        .ok()
        .flatten()
}

/// Bring every reachable target that holds an older revision of a snapshot
/// (repacked while it was away) up to the current one, copying what it
/// lacks from a target where the snapshot is complete: what `prune` does
/// first, so that it judges each target by current copies.
pub async fn copy_newer_revisions(cfg: &Config, catalog: &Catalog) -> Vec<SnapshotCopy> {
    let mut have = holdings(catalog);
    let o = SyncOptions::default();
    let mut out = Vec::new();
    for entry in &catalog.entries {
        let needers: Vec<&DynBackend> = catalog
            .reachable()
            .filter(|s| s.holds_older(entry))
            .map(|s| &s.target)
            .collect();
        let sources = catalog.complete_sources(entry);
        if needers.is_empty() || sources.is_empty() {
            continue;
        }
        out.extend(copy_snapshot(cfg, catalog, entry, &needers, &sources, &mut have, &o).await);
    }
    out
}

pub async fn sync_policy(
    cfg: &Config,
    policy: &Policy,
    o: &SyncOptions,
) -> crate::error::Result<SyncResult> {
    let catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    let mut res = SyncResult {
        policy: policy.name.clone(),
        result: Verdict::Ok,
        dry_run: o.dry_run,
        copies: Vec::new(),
        not_retained: Vec::new(),
        unreachable: catalog.unreachable(),
        aborted_uploads: Vec::new(),
        repaired: Vec::new(),
        problems: Vec::new(),
    };
    for (t, e) in &res.unreachable {
        tracing::warn!("target {t} unreachable, not synced: {e}");
    }
    let reachable: Vec<&DynBackend> = catalog.reachable().map(|s| &s.target).collect();
    let mut progress = Progress::default();
    if !o.dry_run {
        res.aborted_uploads = abort_stale_uploads(&reachable, o).await;
        let (repaired, problems) = repair_damaged(cfg, &catalog, &wanted_fn(o)).await;
        progress.copied |= !repaired.is_empty();
        progress.failed |= !problems.is_empty();
        res.repaired = repaired;
        res.problems.extend(problems);
    }
    copy_missing(cfg, policy, &catalog, o, &mut res, &mut progress).await;
    if !o.dry_run {
        caught_up(cfg, policy, &reachable, &res);
    }
    progress.failed |= unrepaired_manifests(&catalog, &mut res);
    res.result = if o.dry_run {
        Verdict::DryRun
    } else if progress.failed {
        if progress.copied {
            Verdict::Partial
        } else {
            Verdict::Failed
        }
    } else if !res.unreachable.is_empty() {
        Verdict::Partial
    } else {
        Verdict::Ok
    };
    Ok(res)
}

/// Whether a sync copied anything and whether anything failed.
#[derive(Default)]
struct Progress {
    copied: bool,
    failed: bool,
}

/// Abort incomplete uploads older than the option on every reachable
/// target; per target, how many.
async fn abort_stale_uploads(reachable: &[&DynBackend], o: &SyncOptions) -> Vec<(String, usize)> {
    let mut aborted = Vec::new();
    for t in reachable {
        match t.cleanup_incomplete(o.abort_uploads_older_than).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("target {}: aborted {n} stale incomplete uploads", t.name());
                aborted.push((t.name().to_string(), n));
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    aborted
}

/// Copy every retained snapshot to the wanted targets lacking it, from a
/// target holding it complete. What retention no longer keeps is never
/// copied back (a target that was away while prune ran elsewhere still
/// holds it; prune removes it there).
async fn copy_missing(
    cfg: &Config,
    policy: &Policy,
    catalog: &Catalog,
    o: &SyncOptions,
    res: &mut SyncResult,
    progress: &mut Progress,
) {
    let mut have = holdings(catalog);
    let times: Vec<_> = catalog.entries.iter().map(|e| e.manifest.time).collect();
    let dropped: HashSet<usize> =
        crate::retention::apply(&times, &policy.retention, crate::clock::now().to_utc())
            .remove
            .into_iter()
            .collect();
    let wanted = wanted_fn(o);
    for (ei, entry) in catalog.entries.iter().enumerate() {
        let m = &entry.manifest;
        let needers: Vec<&DynBackend> = catalog
            .lacking(entry)
            .into_iter()
            .filter(|t| wanted(t))
            .collect();
        if needers.is_empty() {
            continue;
        }
        if dropped.contains(&ei) {
            tracing::info!(
                "sync snapshot={}: not copied: retention no longer keeps it",
                m.id
            );
            res.not_retained.push(m.id.clone());
            continue;
        }
        let sources = catalog.complete_sources(entry);
        if sources.is_empty() {
            let msg = format!(
                "snapshot {}: complete on no reachable target; nothing to copy it from",
                m.id
            );
            tracing::error!("{msg}");
            res.problems.push(msg);
            progress.failed = true;
            continue;
        }
        let copies = copy_snapshot(cfg, catalog, entry, &needers, &sources, &mut have, o).await;
        for c in copies {
            match &c.error {
                Some(e) => {
                    progress.failed = true;
                    tracing::error!(
                        "sync snapshot={} target={}: FAILED: {e}",
                        c.snapshot,
                        c.target
                    );
                }
                None => {
                    progress.copied |= !o.dry_run;
                    tracing::info!(
                        "sync snapshot={} target={} {} packs={} lists={} bytes={}",
                        c.snapshot,
                        c.target,
                        c.status,
                        c.packs,
                        c.lists,
                        c.bytes
                    );
                }
            }
            res.copies.push(c);
        }
    }
}

/// Targets now holding everything are caught up: they no longer keep the
/// policy due (see `ops::due`).
fn caught_up(cfg: &Config, policy: &Policy, reachable: &[&DynBackend], res: &SyncResult) {
    let failed: HashSet<&str> = res
        .copies
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.target.as_str())
        .collect();
    let done: Vec<String> = reachable
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| !failed.contains(n.as_str()))
        .collect();
    if !done.is_empty() {
        crate::ops::state::update(&cfg.state_dir, &policy.name, |st| {
            st.run.missed_targets.retain(|t| !done.contains(t));
        });
    }
}

/// Manifests that are not authentic stay a problem unless this sync just
/// replaced them with the authentic copy; sync never deletes them (what
/// cannot be authenticated is left for a person to look at). Whether any
/// remains.
fn unrepaired_manifests(catalog: &Catalog, res: &mut SyncResult) -> bool {
    let mut any = false;
    for d in &catalog.bad_manifests {
        let repaired = res
            .copies
            .iter()
            .any(|c| c.target == d.target && c.snapshot == d.snapshot && c.error.is_none());
        if !repaired {
            any = true;
            res.problems.push(format!(
                "{d}: not copied anywhere; delete it from that target if it is not yours"
            ));
        }
    }
    any
}

/// Whether `sync` is to bring target `t` up to date.
fn wanted_fn(o: &SyncOptions) -> impl Fn(&DynBackend) -> bool + '_ {
    move |t: &DynBackend| {
        o.only_targets
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == t.name()))
    }
}

/// How an object is recorded in `have` (lists by hash alone).
fn held(obj: &Object) -> Object {
    match obj {
        Object::List { hash, .. } => Object::List {
            hash: hash.clone(),
            size: 0,
        },
        o => o.clone(),
    }
}

/// Count an object copied (or to copy) in `c`.
fn note(c: &mut SnapshotCopy, obj: &Object, bytes: u64, from: Option<&str>) {
    match obj {
        Object::Pack(h) => {
            c.packs += 1;
            c.archives.push(h.to_string());
        }
        Object::List { hash, .. } => {
            c.lists += 1;
            c.archives.push(hash.to_string());
        }
    }
    c.bytes = c.bytes.saturating_add(bytes);
    if let Some(f) = from {
        if !c.from.iter().any(|x| x == f) {
            c.from.push(f.to_string());
        }
    }
}

/// Replace the packs `verify` recorded as damaged (in the policy's state)
/// with an intact copy from another target that holds them. Returns what
/// was repaired and what could not be.
async fn repair_damaged(
    cfg: &Config,
    catalog: &Catalog,
    wanted: &impl Fn(&DynBackend) -> bool,
) -> (Vec<(String, String)>, Vec<String>) {
    let damaged = crate::ops::state::load(&cfg.state_dir, catalog.policy.as_str()).damaged;
    let (mut repaired, mut problems) = (Vec::new(), Vec::new());
    let holders = catalog.pack_holders();
    for (target, packs) in &damaged {
        let Some(st) = catalog
            .reachable()
            .find(|s| s.name() == target && wanted(&s.target))
        else {
            continue;
        };
        for p in packs {
            let Ok(name) = Hash::new(p) else { continue };
            // From the other targets on which a snapshot using it is complete.
            let from: Vec<&DynBackend> = holders
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|t| t.name() != target)
                .collect();
            match transfer::copy_to(&catalog.policy, &Object::Pack(name), &from, &st.target).await {
                Ok(_) => {
                    tracing::info!("sync target={target}: replaced damaged pack {p}");
                    repaired.push((target.clone(), p.clone()));
                }
                Err(e) => {
                    let msg = format!("target {target}: damaged pack {p} not replaced: {e}");
                    tracing::error!("{msg}");
                    problems.push(msg);
                }
            }
        }
    }
    if !repaired.is_empty() {
        crate::ops::state::update(&cfg.state_dir, catalog.policy.as_str(), |st| {
            for (t, p) in &repaired {
                if let Some(set) = st.damaged.get_mut(t) {
                    set.remove(p);
                    if set.is_empty() {
                        st.damaged.remove(t);
                    }
                }
            }
        });
    }
    (repaired, problems)
}

/// `--abort-uploads-older-than`: an elapsed time ([`crate::duration`]).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    crate::duration::parse_elapsed(s).map_err(|e| e.to_string())
}
