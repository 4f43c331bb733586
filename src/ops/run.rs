//! `backupctl run`: read each source once into a content-hashed archive, push
//! it to every target concurrently, then write the manifest last on each
//! target that received everything.
//!
//! A target that fails stops receiving this snapshot but never blocks or
//! corrupts the others (exit 3: partial). A source that fails fails the run for
//! its policy: no manifest is written anywhere, so nothing half-done counts as
//! a snapshot.

use crate::archive::{ArchiveSummary, ArchiveWriter, Manifest, Progress, SourceRecord};
use crate::config::{Config, Policy, SourceSpec};
use crate::error::ExitCode;
use crate::ops::{open_targets, state, warn_locations};
use crate::repo;
use crate::report::Bar;
use crate::source;
use crate::target::{DynTarget, LocalWrite};
use anyhow::Context;
use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Record the snapshot as taken at this instant (keeps its offset).
    pub time: Option<DateTime<FixedOffset>>,
    pub dry_run: bool,
    /// Cancelled (by a signal): abort at the next safe point. Nothing is
    /// recorded unless the manifests were already being written.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

fn cancelled(opts: &RunOptions) -> bool {
    opts.cancel.as_ref().is_some_and(|c| c.is_cancelled())
}

#[derive(Debug, Serialize)]
pub struct SourceResult {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub archive_hash: Option<String>,
    pub archive_size: u64,
    pub content_size: u64,
    pub files: u64,
    pub entries: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub location: String,
    /// "complete", "failed" or "skipped" (dry run)
    pub status: String,
    pub uploaded_bytes: u64,
    pub archives_uploaded: usize,
    pub archives_already_present: usize,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub policy: String,
    pub snapshot: Option<String>,
    pub time: DateTime<FixedOffset>,
    /// "complete", "partial", "failed", "aborted" (interrupted before any
    /// manifest was written) or "dry-run"
    pub status: String,
    pub dry_run: bool,
    pub sources: Vec<SourceResult>,
    pub targets: Vec<TargetResult>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    pub duration_seconds: f64,
}

impl RunResult {
    pub fn exit_code(&self) -> ExitCode {
        match self.status.as_str() {
            "complete" | "dry-run" => ExitCode::Success,
            "partial" => ExitCode::Partial,
            _ => ExitCode::Failure,
        }
    }
}

/// A new snapshot id: the UTC time, then random hex (unique for equal times).
pub fn new_snapshot_id(time: &DateTime<FixedOffset>) -> String {
    format!(
        "{}-{}",
        time.with_timezone(&Utc).format("%Y%m%dT%H%M%SZ"),
        crate::util::random_hex(8)
    )
}

fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
        .max(1)
}

/// Where one target gets this archive from.
enum Delivery {
    /// Written directly into a temporary file on the (local) target.
    Local(LocalWrite),
    /// Uploaded from the staging file afterwards.
    Staged,
    /// The target already failed in this run.
    Skip,
}

/// What one target ended up with for one archive.
struct Pushed {
    uploaded: bool,
    bytes: u64,
}

/// Archive one source, writing the compressed stream at once into a temporary
/// file on every local target (and a staging file when network targets need
/// one). Returns the summary and per target how it receives the archive.
async fn build_archive(
    spec: &SourceSpec,
    policy: &Policy,
    staging: &Path,
    time: i64,
    targets: &[DynTarget],
    failed: &[bool],
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> anyhow::Result<(
    ArchiveSummary,
    source::SourceOutput,
    Vec<(Delivery, Option<File>)>,
    Vec<Option<String>>,
)> {
    let mut deliveries = Vec::new();
    let mut files = Vec::new();
    let mut open_errors = vec![None; targets.len()];
    let dir_key = format!("{}/archives", policy.name);
    let mut need_staging = false;
    for (i, t) in targets.iter().enumerate() {
        if failed[i] {
            deliveries.push(Delivery::Skip);
            continue;
        }
        match t.local_writer(&dir_key) {
            Some(Ok((file, lw))) => {
                files.push((file, true));
                deliveries.push(Delivery::Local(lw));
            }
            Some(Err(e)) => {
                open_errors[i] = Some(e.to_string());
                deliveries.push(Delivery::Skip);
            }
            None => {
                need_staging = true;
                deliveries.push(Delivery::Staged);
            }
        }
    }
    let staged = staging.join(format!("{}.tar.zst", spec.name()));
    if need_staging {
        let f = File::create(&staged)
            .with_context(|| format!("creating staging file {}", staged.display()))?;
        files.push((f, false));
    }
    if files.is_empty() {
        anyhow::bail!("no target can take the archive");
    }
    let spec = spec.clone();
    let staging_dir = staging.to_path_buf();
    let level = policy.compression_level;
    let progress = Arc::new(Progress::default());
    let total = match &spec {
        SourceSpec::Files(f) if crate::report::is_tty() => {
            source::files::scan(f).ok().map(|(b, _)| b)
        }
        _ => None,
    };
    let bar = Bar::new(spec.name(), total, progress.clone());
    let flag = progress.clone();
    let task = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut w = ArchiveWriter::create(files, level, zstd_workers(), Some(progress))
            .context("starting the archive")?;
        let out = source::archive_source(&spec, &mut w, time, &staging_dir)?;
        let summary = w
            .finish()
            .with_context(|| format!("finishing archive for source {}", spec.name()))?;
        Ok((summary, out))
    });
    tokio::pin!(task);
    let joined = match cancel {
        Some(token) => tokio::select! {
            r = &mut task => r,
            _ = token.cancelled() => {
                // Stop reading the source; wait for the thread so nothing
                // writes into the staging directory after it is removed.
                flag.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                (&mut task).await
            }
        },
        None => task.await,
    };
    let result = joined.expect("archive task panicked");
    drop(bar);
    let (mut summary, out) = match result {
        Ok(x) => x,
        Err(e) => {
            for d in deliveries {
                if let Delivery::Local(lw) = d {
                    lw.abort();
                }
            }
            return Err(e);
        }
    };
    // Pair each delivery with its output file (outputs follow the order above).
    let mut outputs = std::mem::take(&mut summary.outputs).into_iter();
    let mut paired = Vec::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        match d {
            Delivery::Local(lw) => match outputs.next().expect("one output per local target") {
                Ok(f) => paired.push((Delivery::Local(lw), Some(f))),
                Err(e) => {
                    open_errors[i] = Some(format!("writing the archive: {e}"));
                    lw.abort();
                    paired.push((Delivery::Skip, None));
                }
            },
            other => paired.push((other, None)),
        }
    }
    if need_staging {
        if let Some(Err(e)) = outputs.next() {
            for (i, (d, _)) in paired.iter_mut().enumerate() {
                if matches!(d, Delivery::Staged) {
                    open_errors[i] = Some(format!("staging the archive: {e}"));
                    *d = Delivery::Skip;
                }
            }
        }
    }
    Ok((summary, out, paired, open_errors))
}

/// Deliver one finished archive (and its b3sums) to one target.
async fn deliver(
    t: &DynTarget,
    policy: &str,
    summary: &ArchiveSummary,
    b3sums: &[u8],
    delivery: Delivery,
    file: Option<File>,
    staged: &Path,
) -> Option<anyhow::Result<Pushed>> {
    let key = repo::archive_key(policy, &summary.hash);
    let name = format!("{}.tar.zst", summary.hash);
    if matches!(delivery, Delivery::Skip) {
        return None;
    }
    let result = async {
        let sums_key = repo::b3sums_key(policy, &summary.hash);
        if t.stat(&sums_key).await? != Some(b3sums.len() as u64) {
            t.put_bytes(&sums_key, b3sums.to_vec()).await?;
        }
        let uploaded = match delivery {
            Delivery::Skip => unreachable!(),
            Delivery::Local(lw) => {
                let file = file.expect("local delivery has its file");
                tokio::task::spawn_blocking(move || lw.commit(file, &name))
                    .await
                    .expect("commit task")?
            }
            Delivery::Staged => {
                if t.stat(&key).await? == Some(summary.archive_size) {
                    false
                } else {
                    t.put_file(&key, staged).await?;
                    true
                }
            }
        };
        Ok(Pushed {
            uploaded,
            bytes: if uploaded { summary.archive_size } else { 0 },
        })
    };
    Some(result.await)
}

/// Run one policy.
pub async fn run_policy(
    cfg: &Config,
    policy: &Policy,
    opts: &RunOptions,
) -> anyhow::Result<RunResult> {
    let started = std::time::Instant::now();
    let now_local: DateTime<FixedOffset> = crate::clock::now();
    let time = opts.time.unwrap_or(now_local);
    let mut warnings = Vec::new();
    if let Some(w) = warn_locations(cfg, policy) {
        tracing::warn!("{w}");
        warnings.push(w);
    }
    for s in &policy.sources {
        source::preflight(s)?;
    }
    let targets = open_targets(cfg, policy, None).await?;

    if opts.dry_run {
        return Ok(dry_run(policy, &targets, time, warnings, started));
    }

    let id = new_snapshot_id(&time);
    tracing::info!(
        "run policy={} snapshot={} time={}",
        policy.name,
        id,
        time.to_rfc3339()
    );
    // Per policy: under the policy lock anything already here was left by a
    // run that was killed, and is removed.
    let policy_staging = cfg.state_dir.join("staging").join(&policy.name);
    if let Ok(entries) = std::fs::read_dir(&policy_staging) {
        for e in entries.flatten() {
            tracing::warn!(
                "removing {}, left by an interrupted run",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let staging = policy_staging.join(&id);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("creating staging directory {}", staging.display()))?;
    let _cleanup = RemoveOnDrop(staging.clone());

    let mut tresults: Vec<TargetResult> = targets
        .iter()
        .map(|t| TargetResult {
            name: t.name().to_string(),
            location: t.location().to_string(),
            status: "complete".into(),
            uploaded_bytes: 0,
            archives_uploaded: 0,
            archives_already_present: 0,
            error: None,
        })
        .collect();
    let mut sources = Vec::new();
    let mut records = Vec::new();
    let mut failed_source = None;
    let mut aborted = false;

    for spec in &policy.sources {
        if cancelled(opts) {
            aborted = true;
            break;
        }
        let failed: Vec<bool> = tresults.iter().map(|t| t.error.is_some()).collect();
        let built = build_archive(
            spec,
            policy,
            &staging,
            time.timestamp(),
            &targets,
            &failed,
            opts.cancel.as_ref(),
        )
        .await;
        if cancelled(opts) {
            if let Ok((_, _, deliveries, _)) = built {
                for (d, _) in deliveries {
                    if let Delivery::Local(lw) = d {
                        lw.abort();
                    }
                }
            }
            aborted = true;
            break;
        }
        let (summary, out, deliveries, open_errors) = match built {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("source {}: {e:#}", spec.name());
                tracing::error!("{msg}");
                sources.push(SourceResult {
                    name: spec.name().into(),
                    kind: spec.kind().into(),
                    archive_hash: None,
                    archive_size: 0,
                    content_size: 0,
                    files: 0,
                    entries: 0,
                    warnings: Vec::new(),
                    error: Some(msg.clone()),
                });
                failed_source = Some(msg);
                break;
            }
        };
        for (tr, e) in tresults.iter_mut().zip(open_errors) {
            if let Some(e) = e {
                tracing::error!("target {} failed: {e}", tr.name);
                tr.status = "failed".into();
                tr.error = Some(e);
            }
        }
        tracing::info!(
            "archived source={} files={} bytes={} archive={} compressed={}",
            spec.name(),
            summary.files.len(),
            summary.content_size,
            &summary.hash[..16],
            summary.archive_size
        );
        let b3sums = crate::archive::manifest::b3sums(&summary.files).into_bytes();
        let staged = staging.join(format!("{}.tar.zst", spec.name()));
        // Deliver to every target concurrently; a failing one doesn't stop the others.
        let pushes = futures::future::join_all(
            targets
                .iter()
                .zip(deliveries)
                .map(|(t, (d, f))| deliver(t, &policy.name, &summary, &b3sums, d, f, &staged)),
        )
        .await;
        for (tr, r) in tresults.iter_mut().zip(pushes) {
            match r {
                None => {}
                Some(Ok(p)) => {
                    if p.uploaded {
                        tr.archives_uploaded += 1;
                        tr.uploaded_bytes += p.bytes;
                    } else {
                        tr.archives_already_present += 1;
                    }
                }
                Some(Err(e)) => {
                    let msg = format!("{e:#}");
                    tracing::error!("target {} failed: {msg}", tr.name);
                    tr.status = "failed".into();
                    tr.error = Some(msg);
                }
            }
        }
        let _ = std::fs::remove_file(&staged);
        sources.push(SourceResult {
            name: spec.name().into(),
            kind: spec.kind().into(),
            archive_hash: Some(summary.hash.clone()),
            archive_size: summary.archive_size,
            content_size: summary.content_size,
            files: summary.files.len() as u64,
            entries: summary.entries,
            warnings: summary.warnings.clone(),
            error: None,
        });
        records.push(SourceRecord {
            name: spec.name().into(),
            kind: spec.kind().into(),
            origin: out.origin,
            archive_hash: summary.hash,
            archive_size: summary.archive_size,
            tar_size: summary.tar_size,
            content_size: summary.content_size,
            entries: summary.entries,
            files: summary.files,
            warnings: summary.warnings,
            database: out.database,
        });
    }

    let mut result = RunResult {
        policy: policy.name.clone(),
        snapshot: None,
        time,
        status: "failed".into(),
        dry_run: false,
        sources,
        targets: tresults,
        warnings,
        error: None,
        duration_seconds: 0.0,
    };

    if aborted || (failed_source.is_none() && cancelled(opts)) {
        tracing::warn!(
            "run policy={} snapshot={id}: interrupted before the manifest was written; \
             no snapshot is recorded (uploaded archives are removed by the next prune)",
            policy.name
        );
        result.status = "aborted".into();
        result.error = Some(
            "interrupted by a signal before the snapshot was recorded; nothing was recorded".into(),
        );
        for t in &mut result.targets {
            if t.error.is_none() {
                t.status = "aborted".into();
            }
        }
    } else if let Some(msg) = failed_source {
        result.error = Some(format!("{msg}; no snapshot was recorded"));
        for t in &mut result.targets {
            if t.error.is_none() {
                t.status = "failed".into();
                t.error = Some("not recorded: a source failed".into());
            }
        }
    } else {
        let manifest = Manifest {
            format: crate::archive::manifest::FORMAT_NAME.into(),
            schema_version: crate::archive::manifest::SCHEMA_VERSION,
            policy: policy.name.clone(),
            id: id.clone(),
            time,
            host: crate::util::hostname(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            sources: records,
        };
        let json = manifest.to_json();
        let key = repo::manifest_key(&policy.name, &id);
        let commits =
            futures::future::join_all(targets.iter().zip(result.targets.iter()).map(|(t, tr)| {
                let (json, key) = (&json, &key);
                async move {
                    if tr.error.is_some() {
                        return None;
                    }
                    // Restore instructions first, the manifest last.
                    if let Err(e) = t
                        .put_bytes(
                            repo::RESTORE_FILE,
                            repo::restore_instructions().into_bytes(),
                        )
                        .await
                    {
                        return Some(Err(e));
                    }
                    Some(t.put_bytes(key, json.clone()).await)
                }
            }))
            .await;
        for (tr, r) in result.targets.iter_mut().zip(commits) {
            if let Some(Err(e)) = r {
                tracing::error!("target {} failed writing the manifest: {e}", tr.name);
                tr.status = "failed".into();
                tr.error = Some(e.to_string());
            }
        }
        let ok = result.targets.iter().filter(|t| t.error.is_none()).count();
        result.status = if ok == result.targets.len() {
            "complete"
        } else if ok > 0 {
            "partial"
        } else {
            "failed"
        }
        .into();
        if ok > 0 {
            result.snapshot = Some(id.clone());
        } else {
            result.error = Some("the snapshot could not be stored on any target".into());
        }
    }
    result.duration_seconds = started.elapsed().as_secs_f64();

    let status = result.status.clone();
    let snap = result.snapshot.clone();
    let err = result.error.clone();
    state::update(&cfg.state_dir, &policy.name, |st| {
        st.run.last_attempt = Some(now_local);
        st.run.last_result = Some(if status == "complete" {
            "success".into()
        } else {
            status.clone()
        });
        st.run.last_message = err;
        if status == "complete" || status == "partial" {
            st.run.last_success = Some(now_local);
            st.run.last_snapshot = snap;
        }
    });
    tracing::info!(
        "run policy={} status={} seconds={:.1}",
        policy.name,
        result.status,
        result.duration_seconds
    );
    Ok(result)
}

fn dry_run(
    policy: &Policy,
    targets: &[DynTarget],
    time: DateTime<FixedOffset>,
    warnings: Vec<String>,
    started: std::time::Instant,
) -> RunResult {
    let sources = policy
        .sources
        .iter()
        .map(|s| {
            let (bytes, files, error) = match s {
                SourceSpec::Files(f) => match source::files::scan(f) {
                    Ok((b, n)) => (b, n, None),
                    Err(e) => (0, 0, Some(format!("{e:#}"))),
                },
                _ => (0, 0, None),
            };
            SourceResult {
                name: s.name().into(),
                kind: s.kind().into(),
                archive_hash: None,
                archive_size: 0,
                content_size: bytes,
                files,
                entries: 0,
                warnings: Vec::new(),
                error,
            }
        })
        .collect();
    RunResult {
        policy: policy.name.clone(),
        snapshot: None,
        time,
        status: "dry-run".into(),
        dry_run: true,
        sources,
        targets: targets
            .iter()
            .map(|t| TargetResult {
                name: t.name().into(),
                location: t.location().into(),
                status: "skipped".into(),
                uploaded_bytes: 0,
                archives_uploaded: 0,
                archives_already_present: 0,
                error: None,
            })
            .collect(),
        warnings,
        error: None,
        duration_seconds: started.elapsed().as_secs_f64(),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
