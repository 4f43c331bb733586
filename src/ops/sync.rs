//! `backupctl sync`: bring every target of a policy up to date without a new
//! backup. Each snapshot that a reachable target lacks, or holds incomplete
//! (an archive missing or of the wrong size), is copied from a target where it
//! is complete, in the policy's order: every archive is downloaded once into
//! the staging area, its BLAKE3 checked against its name, then uploaded to
//! each target that needs it; the manifest is written last, as `run` does.
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
use crate::repo::catalog::read_authentic;
use crate::repo::fetch::{self, FetchError};
use crate::repo::{Catalog, Commit, Entry, Hash};
use crate::storage::DynBackend;
use anyhow::Context;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
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

#[derive(Debug, Serialize)]
pub struct SnapshotCopy {
    pub snapshot: String,
    pub target: String,
    /// Where the archives came from (targets, in order of use).
    pub from: Vec<String>,
    /// Archive hashes copied (or to copy, in a dry run).
    pub archives: Vec<String>,
    pub bytes: u64,
    /// "copied", "would copy" or "failed"
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SyncResult {
    pub policy: String,
    /// "ok", "partial", "failed" or "dry-run"
    pub result: String,
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
    pub problems: Vec<String>,
}

impl SyncResult {
    pub fn exit_code(&self) -> ExitCode {
        match self.result.as_str() {
            "ok" | "dry-run" => ExitCode::Success,
            "partial" => ExitCode::Partial,
            _ => ExitCode::Failure,
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

pub async fn sync_policy(
    cfg: &Config,
    policy: &Policy,
    o: &SyncOptions,
) -> anyhow::Result<SyncResult> {
    let catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    let mut res = SyncResult {
        policy: policy.name.clone(),
        result: "ok".into(),
        dry_run: o.dry_run,
        copies: Vec::new(),
        not_retained: Vec::new(),
        unreachable: catalog.unreachable(),
        aborted_uploads: Vec::new(),
        problems: Vec::new(),
    };
    for (t, e) in &res.unreachable {
        tracing::warn!("target {t} unreachable, not synced: {e}");
    }
    let reachable: Vec<&DynBackend> = catalog.reachable().map(|s| &s.target).collect();
    if !o.dry_run {
        for t in &reachable {
            match t.cleanup_incomplete(o.abort_uploads_older_than).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!("target {}: aborted {n} stale incomplete uploads", t.name());
                    res.aborted_uploads.push((t.name().to_string(), n));
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
    // What each target holds: archive hash -> size (updated as we copy).
    let mut have: HashMap<String, HashMap<Hash, u64>> = HashMap::new();
    for s in catalog.reachable() {
        if let Ok(v) = &s.view {
            have.insert(s.name().to_string(), v.archives.clone());
        }
    }
    // Under the policy lock anything in this policy's staging area was left
    // by a killed run or sync.
    let policy_staging = cfg.state_dir.join("staging").join(&policy.name);
    if !o.dry_run {
        if let Ok(entries) = std::fs::read_dir(&policy_staging) {
            for e in entries.flatten() {
                tracing::warn!(
                    "removing {}, left by an interrupted run or sync",
                    e.path().display()
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let staging = policy_staging.join(format!("sync-{}", crate::util::random_hex(8)));
    let _cleanup = RemoveOnDrop(staging.clone());
    let mut copied_any = false;
    let mut failed_any = false;

    // What retention no longer keeps is never copied back (a target that was
    // away while prune ran elsewhere still holds it; prune removes it there).
    let times: Vec<_> = catalog.entries.iter().map(|e| e.manifest.time).collect();
    let dropped: HashSet<usize> =
        crate::retention::apply(&times, &policy.retention, crate::clock::now().to_utc())
            .remove
            .into_iter()
            .collect();
    let wanted = |t: &DynBackend| {
        o.only_targets
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == t.name()))
    };
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
            failed_any = true;
            continue;
        }
        let mut copies: Vec<SnapshotCopy> = needers
            .iter()
            .map(|t| SnapshotCopy {
                snapshot: m.id.clone(),
                target: t.name().to_string(),
                from: Vec::new(),
                archives: Vec::new(),
                bytes: 0,
                status: if o.dry_run { "would copy" } else { "copied" }.into(),
                error: None,
            })
            .collect();
        for rec in &m.sources {
            let hash = match Hash::new(&rec.archive_hash) {
                Ok(h) => h,
                Err(e) => {
                    for c in copies.iter_mut().filter(|c| c.error.is_none()) {
                        c.status = "failed".into();
                        c.error = Some(e.to_string());
                    }
                    continue;
                }
            };
            let lacking: Vec<usize> = needers
                .iter()
                .enumerate()
                .filter(|(i, t)| {
                    copies[*i].error.is_none()
                        && have[t.name()].get(&hash) != Some(&rec.archive_size)
                })
                .map(|(i, _)| i)
                .collect();
            if lacking.is_empty() {
                continue;
            }
            if o.dry_run {
                for i in lacking {
                    copies[i].archives.push(rec.archive_hash.clone());
                    copies[i].bytes += rec.archive_size;
                }
                continue;
            }
            crate::util::private_dir(&cfg.state_dir)
                .and_then(|_| crate::util::private_dir(&cfg.state_dir.join("staging")))
                .and_then(|_| crate::util::create_private_dir_all(&staging))
                .with_context(|| format!("creating staging directory {}", staging.display()))?;
            let file = staging.join(format!("{hash}.tar.zst"));
            let what = format!("archive {} of snapshot {}", hash.short(), m.id);
            let candidates: Vec<_> = sources.iter().copied().map(Ok).collect();
            let fetched = fetch::first_intact(candidates, &what, |s| {
                let (hash, file, policy) = (&hash, &file, &catalog.policy);
                async move {
                    fetch::download(s, policy, hash, rec.archive_size, file)
                        .await
                        .map_err(FetchError::Skip)
                }
            })
            .await;
            let from = match fetched {
                Ok(f) => f.target,
                Err(e) => {
                    let why = match e {
                        fetch::Failover::Exhausted(skipped) => fetch::Failover::why(&skipped),
                        fetch::Failover::Fatal(e) => format!("{e:#}"),
                    };
                    let _ = std::fs::remove_file(&file);
                    for i in lacking {
                        copies[i].status = "failed".into();
                        copies[i].error = Some(format!(
                            "no intact copy of archive {} ({why})",
                            rec.archive_hash
                        ));
                    }
                    continue;
                }
            };
            let key = crate::repo::Key::Archive {
                policy: catalog.policy.clone(),
                hash: hash.clone(),
            }
            .object();
            let puts = futures::future::join_all(
                lacking.iter().map(|&i| needers[i].put_file(&key, &file)),
            )
            .await;
            let _ = std::fs::remove_file(&file);
            for (&i, r) in lacking.iter().zip(puts) {
                match r {
                    Ok(()) => {
                        let c = &mut copies[i];
                        c.archives.push(rec.archive_hash.clone());
                        c.bytes += rec.archive_size;
                        if !c.from.contains(&from) {
                            c.from.push(from.clone());
                        }
                        have.get_mut(needers[i].name())
                            .expect("reachable")
                            .insert(hash.clone(), rec.archive_size);
                    }
                    Err(e) => {
                        copies[i].status = "failed".into();
                        copies[i].error = Some(e.to_string());
                    }
                }
            }
        }
        if !o.dry_run {
            let commit = authentic_copy(cfg, &sources, &catalog, entry)
                .await
                .and_then(|(json, sig)| Commit::new(m, json, sig).map_err(|e| e.to_string()));
            for (i, t) in needers.iter().enumerate() {
                if copies[i].error.is_some() {
                    continue;
                }
                let r = match &commit {
                    Ok(c) => c.apply(t).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = r {
                    copies[i].status = "failed".into();
                    copies[i].error = Some(e);
                }
            }
        }
        for c in copies {
            match &c.error {
                Some(e) => {
                    failed_any = true;
                    tracing::error!(
                        "sync snapshot={} target={}: FAILED: {e}",
                        c.snapshot,
                        c.target
                    );
                }
                None => {
                    copied_any |= !o.dry_run;
                    tracing::info!(
                        "sync snapshot={} target={} {} archives={} bytes={}",
                        c.snapshot,
                        c.target,
                        c.status,
                        c.archives.len(),
                        c.bytes
                    );
                }
            }
            res.copies.push(c);
        }
    }
    if !o.dry_run {
        // Targets now holding everything are caught up: they no longer keep
        // the policy due (see `ops::due`).
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
    // Manifests that are not authentic stay a problem unless this sync just
    // replaced them with the authentic copy; sync never deletes them (what
    // cannot be authenticated is left for a person to look at).
    for d in &catalog.bad_manifests {
        let repaired = res
            .copies
            .iter()
            .any(|c| c.target == d.target && c.snapshot == d.snapshot && c.error.is_none());
        if !repaired {
            failed_any = true;
            res.problems.push(format!(
                "{d}: not copied anywhere; delete it from that target if it is not yours"
            ));
        }
    }
    res.result = if o.dry_run {
        "dry-run"
    } else if failed_any {
        if copied_any {
            "partial"
        } else {
            "failed"
        }
    } else if !res.unreachable.is_empty() {
        "partial"
    } else {
        "ok"
    }
    .into();
    Ok(res)
}

/// `--abort-uploads-older-than`: an elapsed time ([`crate::duration`]).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    crate::duration::parse_elapsed(s).map_err(|e| e.to_string())
}
