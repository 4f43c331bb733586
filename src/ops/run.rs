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
use crate::target::DynTarget;
use anyhow::Context;
use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Record the snapshot as taken at this instant (keeps its offset).
    pub time: Option<DateTime<FixedOffset>>,
    pub dry_run: bool,
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
    /// "complete", "partial", "failed" or "dry-run"
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

/// Archive one source into the staging directory (blocking thread).
async fn build_archive(
    spec: &SourceSpec,
    level: i32,
    staging: &Path,
    time: i64,
) -> anyhow::Result<(ArchiveSummary, source::SourceOutput)> {
    let spec = spec.clone();
    let staged = staging.join(format!("{}.tar.zst", spec.name()));
    let progress = Arc::new(Progress::default());
    let total = match &spec {
        SourceSpec::Files(f) if crate::report::is_tty() => {
            source::files::scan(f).ok().map(|(b, _)| b)
        }
        _ => None,
    };
    let bar = Bar::new(spec.name(), total, progress.clone());
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut w = ArchiveWriter::create(&staged, level, zstd_workers(), Some(progress))
            .with_context(|| format!("creating staging file {}", staged.display()))?;
        let out = source::archive_source(&spec, &mut w, time)?;
        let summary = w
            .finish()
            .with_context(|| format!("finishing archive for source {}", spec.name()))?;
        Ok((summary, out))
    })
    .await
    .expect("archive task panicked");
    drop(bar);
    result
}

/// Upload one archive (and its b3sums) to a target unless already there.
async fn push_archive(t: &DynTarget, policy: &str, st: &Staged) -> anyhow::Result<(bool, u64)> {
    let key = repo::archive_key(policy, &st.hash);
    let sums_key = repo::b3sums_key(policy, &st.hash);
    let present = t.stat(&key).await? == Some(st.size);
    let sums_present = t.stat(&sums_key).await? == Some(st.b3sums.len() as u64);
    if !sums_present {
        t.put_bytes(&sums_key, st.b3sums.clone()).await?;
    }
    if present {
        return Ok((false, 0));
    }
    t.put_file(&key, &st.path).await?;
    Ok((true, st.size))
}

/// An archive in the staging directory, shared by the target workers; the
/// file is removed when the last of them drops it.
struct Staged {
    path: PathBuf,
    hash: String,
    size: u64,
    b3sums: Vec<u8>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Job {
    Archive(Arc<Staged>),
    /// Every archive was sent: write the restore instructions, then the
    /// manifest (snapshot id, JSON) last.
    Commit(String, Arc<Vec<u8>>),
}

#[derive(Default)]
struct Outcome {
    uploaded_bytes: u64,
    archives_uploaded: usize,
    archives_already_present: usize,
    error: Option<String>,
}

/// Push everything queued for one target, in order; after the first failure
/// the target receives nothing more (and never a manifest).
async fn target_worker(
    t: DynTarget,
    policy: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
) -> Outcome {
    let mut o = Outcome::default();
    while let Some(job) = rx.recv().await {
        if o.error.is_some() {
            continue;
        }
        match job {
            Job::Archive(st) => match push_archive(&t, &policy, &st).await {
                Ok((true, bytes)) => {
                    o.archives_uploaded += 1;
                    o.uploaded_bytes += bytes;
                }
                Ok((false, _)) => o.archives_already_present += 1,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::error!("target {} failed: {msg}", t.name());
                    o.error = Some(msg);
                }
            },
            Job::Commit(id, json) => {
                let r = async {
                    t.put_bytes(
                        repo::RESTORE_FILE,
                        repo::restore_instructions().into_bytes(),
                    )
                    .await?;
                    t.put_bytes(&repo::manifest_key(&policy, &id), json.to_vec())
                        .await
                }
                .await;
                if let Err(e) = r {
                    tracing::error!("target {} failed writing the manifest: {e}", t.name());
                    o.error = Some(e.to_string());
                }
            }
        }
    }
    o
}

/// Run one policy.
pub async fn run_policy(
    cfg: &Config,
    policy: &Policy,
    opts: &RunOptions,
) -> anyhow::Result<RunResult> {
    let started = std::time::Instant::now();
    let now_local: DateTime<FixedOffset> = chrono::Local::now().fixed_offset();
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
    let staging = cfg.state_dir.join("staging").join(&id);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("creating staging directory {}", staging.display()))?;
    let _cleanup = RemoveOnDrop(staging.clone());

    // One worker per target, each with its own queue: a slow or failing
    // target never holds back the others (nor the archiving of the next
    // source); each target gets its manifest as soon as it has everything.
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for t in &targets {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        queues.push(tx);
        workers.push(tokio::spawn(target_worker(
            t.clone(),
            policy.name.clone(),
            rx,
        )));
    }
    let mut sources = Vec::new();
    let mut records = Vec::new();
    let mut failed_source = None;

    for spec in &policy.sources {
        let built = build_archive(spec, policy.compression_level, &staging, time.timestamp()).await;
        let (summary, out) = match built {
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
        tracing::info!(
            "archived source={} files={} bytes={} archive={} compressed={}",
            spec.name(),
            summary.files.len(),
            summary.content_size,
            &summary.hash[..16],
            summary.archive_size
        );
        let b3sums = crate::archive::manifest::b3sums(&summary.files).into_bytes();
        let staged = Arc::new(Staged {
            path: summary.path.clone(),
            hash: summary.hash.clone(),
            size: summary.archive_size,
            b3sums,
        });
        for q in &queues {
            let _ = q.send(Job::Archive(staged.clone()));
        }
        drop(staged); // the file goes when the last target is done with it
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
    if failed_source.is_none() {
        let manifest = Manifest {
            format: crate::archive::manifest::FORMAT_NAME.into(),
            schema_version: crate::archive::manifest::SCHEMA_VERSION,
            policy: policy.name.clone(),
            id: id.clone(),
            time,
            host: crate::util::hostname(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            sources: std::mem::take(&mut records),
        };
        let json = Arc::new(manifest.to_json());
        for q in &queues {
            let _ = q.send(Job::Commit(id.clone(), json.clone()));
        }
    }
    drop(queues);
    let outcomes = futures::future::join_all(workers).await;
    let tresults: Vec<TargetResult> = targets
        .iter()
        .zip(outcomes)
        .map(|(t, o)| {
            let o = o.unwrap_or_else(|e| Outcome {
                error: Some(format!("upload task failed: {e}")),
                ..Default::default()
            });
            TargetResult {
                name: t.name().to_string(),
                location: t.location().to_string(),
                status: if o.error.is_some() {
                    "failed"
                } else {
                    "complete"
                }
                .into(),
                uploaded_bytes: o.uploaded_bytes,
                archives_uploaded: o.archives_uploaded,
                archives_already_present: o.archives_already_present,
                error: o.error,
            }
        })
        .collect();

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

    if let Some(msg) = failed_source {
        result.error = Some(format!("{msg}; no snapshot was recorded"));
        for t in &mut result.targets {
            if t.error.is_none() {
                t.status = "failed".into();
                t.error = Some("not recorded: a source failed".into());
            }
        }
    } else {
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
        if status != "failed" {
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
