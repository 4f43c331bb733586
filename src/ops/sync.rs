//! `backupctl sync`: bring every target of a policy up to date without a new
//! backup. Each snapshot that a reachable target lacks, or holds incomplete
//! (an archive missing or of the wrong size), is copied from a target where it
//! is complete, in the policy's order: every archive is downloaded once into
//! the staging area, its BLAKE3 checked against its name, then uploaded to
//! each target that needs it; the manifest is written last, as `run` does.
//!
//! Before copying, incomplete multipart uploads older than
//! `abort_uploads_older_than` (left behind by a crash or an outage) are aborted.

use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::repo;
use crate::target::DynTarget;
use anyhow::Context;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
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

/// Download `policy`'s archive `hash` from `t` into `dest`, checking its size
/// and BLAKE3 on the way; a download that exceeds the recorded size stops at
/// once.
async fn fetch_verified(
    t: &DynTarget,
    policy: &str,
    hash: &str,
    size: u64,
    dest: &Path,
) -> Result<(), String> {
    let stream = t
        .get(&repo::archive_key(policy, hash))
        .await
        .map_err(|e| e.to_string())?;
    // One byte past the recorded size is enough to know it is exceeded.
    let mut reader = stream.into_blocking_read().take(size.saturating_add(1));
    let (dest, hash) = (dest.to_path_buf(), hash.to_string());
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut f = crate::util::create_private_file(&dest)
            .map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the archive failed: {e}")),
            };
            h.update(&buf[..k]);
            n += k as u64;
            if n > size {
                return Err(format!(
                    "damaged copy: the target serves more than the recorded {size} bytes"
                ));
            }
            f.write_all(&buf[..k])
                .map_err(|e| format!("writing {}: {e}", dest.display()))?;
        }
        let got = h.finalize().to_hex().to_string();
        if n != size || got != hash {
            return Err(format!(
                "damaged copy: {n} bytes hashing to {got}, expected {size} bytes hashing to {hash}"
            ));
        }
        Ok(())
    })
    .await
    .expect("download task panicked")
}

/// The exact signed manifest and signature of `entry`, from the first
/// source that still serves them authentic and unchanged (never
/// re-serialised: the signature covers the bytes).
async fn authentic_copy(
    cfg: &Config,
    sources: &[&DynTarget],
    policy: &str,
    entry: &repo::Entry,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut why = Vec::new();
    for s in sources {
        match repo::read_authentic(s, policy, &entry.manifest.id, 0, &cfg.trust()).await {
            Ok((bytes, digest, _)) if digest == entry.digest => {
                let key = repo::signature_key(policy, &entry.manifest.id);
                let limit = crate::trust::MAX_SIGNATURE_BYTES as u64;
                match crate::target::get_limited(s, &key, limit).await {
                    Ok(sig) => return Ok((bytes, sig)),
                    Err(e) => why.push(format!("{}: {e}", s.name())),
                }
            }
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
    let (_targets, catalog) = crate::ops::load_catalog(cfg, policy, None).await?;
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
    let reachable: Vec<&DynTarget> = catalog
        .targets
        .iter()
        .filter(|s| s.view.is_ok())
        .map(|s| &s.target)
        .collect();
    if !o.dry_run {
        for t in &reachable {
            match t.abort_stale_uploads(o.abort_uploads_older_than).await {
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
    let mut have: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut others: HashMap<String, HashSet<String>> = HashMap::new();
    for s in &catalog.targets {
        if let Ok(v) = &s.view {
            have.insert(s.target.name().to_string(), v.archives.clone());
            others.insert(
                s.target.name().to_string(),
                v.others.keys().cloned().collect(),
            );
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
    let wanted = |t: &DynTarget| {
        o.only_targets
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == t.name()))
    };
    for (ei, entry) in catalog.entries.iter().enumerate() {
        let m = &entry.manifest;
        let needers: Vec<&DynTarget> = reachable
            .iter()
            .copied()
            .filter(|t| wanted(t) && !entry.complete_on.iter().any(|c| c == t.name()))
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
        let sources: Vec<&DynTarget> = reachable
            .iter()
            .copied()
            .filter(|t| entry.complete_on.iter().any(|c| c == t.name()))
            .collect();
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
            let lacking: Vec<usize> = needers
                .iter()
                .enumerate()
                .filter(|(i, t)| {
                    copies[*i].error.is_none()
                        && have[t.name()].get(&rec.archive_hash) != Some(&rec.archive_size)
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
            let file = staging.join(format!("{}.tar.zst", rec.archive_hash));
            let mut from = None;
            let mut why = Vec::new();
            for s in &sources {
                match fetch_verified(s, &policy.name, &rec.archive_hash, rec.archive_size, &file)
                    .await
                {
                    Ok(()) => {
                        from = Some(s.name().to_string());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "target {}: archive {} of snapshot {}: {e}; trying the next target",
                            s.name(),
                            &rec.archive_hash[..16],
                            m.id
                        );
                        why.push(format!("{}: {e}", s.name()));
                    }
                }
            }
            let Some(from) = from else {
                let _ = std::fs::remove_file(&file);
                for i in lacking {
                    copies[i].status = "failed".into();
                    copies[i].error = Some(format!(
                        "no intact copy of archive {} ({})",
                        rec.archive_hash,
                        why.join("; ")
                    ));
                }
                continue;
            };
            let key = repo::archive_key(&policy.name, &rec.archive_hash);
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
                            .insert(rec.archive_hash.clone(), rec.archive_size);
                    }
                    Err(e) => {
                        copies[i].status = "failed".into();
                        copies[i].error = Some(e.to_string());
                    }
                }
            }
        }
        if !o.dry_run {
            let copy = authentic_copy(cfg, &sources, &policy.name, entry).await;
            for (i, t) in needers.iter().enumerate() {
                if copies[i].error.is_some() {
                    continue;
                }
                let (json, sig) = match &copy {
                    Ok(c) => c,
                    Err(e) => {
                        copies[i].status = "failed".into();
                        copies[i].error = Some(e.clone());
                        continue;
                    }
                };
                let r = async {
                    for rec in &m.sources {
                        let k = repo::b3sums_key(&policy.name, &rec.archive_hash);
                        if !others[t.name()].contains(&k) {
                            let sums = crate::archive::manifest::b3sums(&rec.files);
                            t.put_bytes(&k, sums.into_bytes()).await?;
                        }
                    }
                    repo::commit_snapshot(t, &policy.name, &m.id, json, sig).await
                }
                .await;
                if let Err(e) = r {
                    copies[i].status = "failed".into();
                    copies[i].error = Some(e.to_string());
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

/// The human summary.
pub fn render(r: &SyncResult) -> String {
    use crate::util::human_bytes;
    let mut s = format!("policy {}: sync {}\n", r.policy, r.result);
    for (t, e) in &r.unreachable {
        s.push_str(&format!("  target {t}: UNREACHABLE, not synced: {e}\n"));
    }
    for (t, n) in &r.aborted_uploads {
        s.push_str(&format!(
            "  target {t}: aborted {n} stale incomplete uploads\n"
        ));
    }
    if r.copies.is_empty() && r.unreachable.is_empty() {
        s.push_str("  every reachable target holds every snapshot\n");
    }
    for c in &r.copies {
        match &c.error {
            Some(e) => s.push_str(&format!(
                "  snapshot {} -> target {}: FAILED: {e}\n",
                c.snapshot, c.target
            )),
            None => s.push_str(&format!(
                "  snapshot {} -> target {}: {} ({} archives, {}{})\n",
                c.snapshot,
                c.target,
                c.status,
                c.archives.len(),
                human_bytes(c.bytes),
                if c.from.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", c.from.join(","))
                }
            )),
        }
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    s.trim_end().to_string()
}

/// `--abort-uploads-older-than`: an elapsed time ([`crate::duration`]).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    crate::duration::parse_elapsed(s).map_err(|e| e.to_string())
}
