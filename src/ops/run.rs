//! `backupctl run`: read each source once into a content-hashed archive,
//! deliver it to every target concurrently, then write the manifest last on
//! each target that received everything.
//!
//! Delivery: local (fs) targets receive the compressed stream directly into a
//! temporary file while it is written, committed under the archive's name once
//! its hash is known; network (S3) targets upload from one shared staging file.
//! Each target has its own worker and queue, so a slow or failing target never
//! holds back the others nor the archiving of the next source, and each gets its
//! manifest as soon as it has every archive.
//!
//! A target that fails stops receiving this snapshot (exit 3: partial). A source
//! that fails fails the run for its policy: no manifest is written anywhere, so
//! nothing half-done counts as a snapshot. Source files or directories that
//! cannot be read (permission denied, I/O errors) are listed in the manifest
//! as `unreadable`, and the run is `incomplete` (exit 3) but done: it counts
//! as the schedule's run, and is pruned after as a complete one.
//!
//! Everything a run writes locally (staging files, the SQLite copy, state) is
//! private to the user backupctl runs as: 0600 files in 0700 directories.

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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Entries that could not be read (relative paths; directories end in
    /// `/`): not in the snapshot.
    pub unreadable: Vec<String>,
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
    /// "complete", "incomplete" (stored on every target, but some source
    /// files could not be read: see the sources' `unreadable`), "partial"
    /// (stored on some targets only), "failed", "aborted" (interrupted
    /// before any manifest was written) or "dry-run"
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
            "partial" | "incomplete" => ExitCode::Partial,
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

/// An archive in the staging directory, shared by the network targets'
/// workers; the file is removed when the last of them drops it.
struct Staged {
    path: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How one target receives one archive.
enum Via {
    /// The temporary file the archive was written into on the (local) target.
    Local(LocalWrite, File),
    /// Upload from the shared staging file.
    Staged(Arc<Staged>),
    /// Writing this target's copy failed.
    Failed(String),
}

enum Job {
    Archive {
        hash: String,
        size: u64,
        b3sums: Arc<Vec<u8>>,
        via: Via,
    },
    /// Every archive was sent: write the restore instructions, then the
    /// manifest (snapshot id, JSON) last.
    Commit(String, Arc<Vec<u8>>, Arc<Vec<u8>>),
}

#[derive(Default)]
struct Outcome {
    uploaded_bytes: u64,
    archives_uploaded: usize,
    archives_already_present: usize,
    error: Option<String>,
    /// The manifest was written: the snapshot is complete on this target.
    committed: bool,
}

/// Deliver one archive and its b3sums; returns whether the archive was stored
/// (false: it was already there).
async fn deliver(
    t: &DynTarget,
    policy: &str,
    hash: &str,
    size: u64,
    b3sums: &[u8],
    via: Via,
) -> anyhow::Result<bool> {
    let sums_key = repo::b3sums_key(policy, hash);
    if t.stat(&sums_key).await? != Some(b3sums.len() as u64) {
        t.put_bytes(&sums_key, b3sums.to_vec()).await?;
    }
    match via {
        Via::Failed(e) => Err(anyhow::anyhow!(e)),
        Via::Local(lw, file) => {
            let name = format!("{hash}.tar.zst");
            Ok(tokio::task::spawn_blocking(move || lw.commit(file, &name))
                .await
                .expect("commit task")?)
        }
        Via::Staged(st) => {
            let key = repo::archive_key(policy, hash);
            if t.stat(&key).await? == Some(size) {
                return Ok(false);
            }
            t.put_file(&key, &st.path).await?;
            Ok(true)
        }
    }
}

/// Deliver everything queued for one target, in order; after the first
/// failure the target receives nothing more (and never a manifest), and
/// `failed` tells the archiver to stop writing for it.
async fn target_worker(
    t: DynTarget,
    policy: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    failed: Arc<AtomicBool>,
    cancel: Option<tokio_util::sync::CancellationToken>,
) -> Outcome {
    let mut o = Outcome::default();
    while let Some(job) = rx.recv().await {
        let stop = o.error.is_some() || cancel.as_ref().is_some_and(|c| c.is_cancelled());
        match job {
            Job::Archive {
                via: Via::Local(lw, _),
                ..
            } if stop => lw.abort(),
            _ if stop => {}
            Job::Archive {
                hash,
                size,
                b3sums,
                via,
            } => match deliver(&t, &policy, &hash, size, &b3sums, via).await {
                Ok(true) => {
                    o.archives_uploaded += 1;
                    o.uploaded_bytes += size;
                }
                Ok(false) => o.archives_already_present += 1,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::error!("target {} failed: {msg}", t.name());
                    failed.store(true, Ordering::SeqCst);
                    o.error = Some(msg);
                }
            },
            Job::Commit(id, json, sig) => {
                let r = repo::commit_snapshot(&t, &policy, &id, &json, &sig).await;
                match r {
                    Ok(()) => o.committed = true,
                    Err(e) => {
                        tracing::error!("target {} failed writing the manifest: {e}", t.name());
                        failed.store(true, Ordering::SeqCst);
                        o.error = Some(e.to_string());
                    }
                }
            }
        }
    }
    o
}

/// Archive one source, writing the compressed stream at once into a temporary
/// file on every local target still healthy (and a staging file when network
/// targets need one). Returns the summary, the source's facts, and per target
/// how it receives the archive (None: the target already failed).
async fn build_archive(
    spec: &SourceSpec,
    policy: &Policy,
    staging: &Path,
    state_dir: &Path,
    targets: &[DynTarget],
    failed: &[Arc<AtomicBool>],
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> anyhow::Result<(ArchiveSummary, source::SourceOutput, Vec<Option<Via>>)> {
    enum Plan {
        Skip,
        Local(LocalWrite),
        Staged,
        Failed(String),
    }
    let mut plans = Vec::new();
    let mut files = Vec::new();
    let dir_key = format!("{}/archives", policy.name);
    for (i, t) in targets.iter().enumerate() {
        if failed[i].load(Ordering::SeqCst) {
            plans.push(Plan::Skip);
            continue;
        }
        plans.push(match t.local_writer(&dir_key) {
            Some(Ok((file, lw))) => {
                files.push((file, true));
                Plan::Local(lw)
            }
            Some(Err(e)) => Plan::Failed(e.to_string()),
            None => Plan::Staged,
        });
    }
    let need_staging = plans.iter().any(|p| matches!(p, Plan::Staged));
    let staged_path = staging.join(format!("{}.tar.zst", spec.name()));
    if need_staging {
        let f = crate::util::create_private_file(&staged_path)
            .with_context(|| format!("creating staging file {}", staged_path.display()))?;
        files.push((f, false));
    }
    let abort_all = |plans: Vec<Plan>| {
        for p in plans {
            if let Plan::Local(lw) = p {
                lw.abort();
            }
        }
    };
    if files.is_empty() {
        let why: Vec<String> = plans
            .into_iter()
            .filter_map(|p| {
                if let Plan::Failed(e) = p {
                    Some(e)
                } else {
                    None
                }
            })
            .collect();
        anyhow::bail!("no target can take the archive ({})", why.join("; "));
    }
    let spec = spec.clone();
    let staging_dir = staging.to_path_buf();
    let state_dir = state_dir.to_path_buf();
    let level = policy.compression_level;
    let progress = Arc::new(Progress::default());
    let total = if crate::report::is_tty() {
        spec.source().estimate().ok().flatten().map(|s| s.bytes)
    } else {
        None
    };
    let bar = Bar::new(spec.name(), total, progress.clone());
    let flag = progress.clone();
    let task = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut w = ArchiveWriter::create(files, level, zstd_workers(), Some(progress))
            .context("starting the archive")?;
        let ctx = source::ArchiveContext {
            staging: &staging_dir,
            state_dir: &state_dir,
        };
        let out = spec.source().archive(&mut w, &ctx)?;
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
                flag.cancel.store(true, Ordering::Relaxed);
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
            abort_all(plans);
            let _ = std::fs::remove_file(&staged_path);
            return Err(e);
        }
    };
    // Outputs come in the order the files were pushed: locals, then staging.
    let mut outputs = std::mem::take(&mut summary.outputs);
    // The staging file, when there is one, is the last output.
    let staged: Option<Result<Arc<Staged>, String>> =
        need_staging.then(|| match outputs.pop().expect("the staging output") {
            Ok(_) => Ok(Arc::new(Staged { path: staged_path })),
            Err(e) => Err(format!("staging the archive: {e}")),
        });
    let mut outputs = outputs.into_iter();
    let vias = plans
        .into_iter()
        .map(|p| match p {
            Plan::Skip => None,
            Plan::Failed(e) => Some(Via::Failed(e)),
            Plan::Local(lw) => match outputs.next().expect("one output per local target") {
                Ok(f) => Some(Via::Local(lw, f)),
                Err(e) => {
                    lw.abort();
                    Some(Via::Failed(format!("writing the archive: {e}")))
                }
            },
            Plan::Staged => Some(match staged.as_ref().expect("staging planned") {
                Ok(st) => Via::Staged(st.clone()),
                Err(msg) => Via::Failed(msg.clone()),
            }),
        })
        .collect();
    Ok((summary, out, vias))
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
    let ready = async {
        for s in &policy.sources {
            s.source().preflight()?;
        }
        let key = if opts.dry_run {
            None
        } else {
            Some(cfg.signing_key()?)
        };
        Ok::<_, anyhow::Error>((open_targets(cfg, policy, None).await?, key))
    };
    let (targets, key) = match ready.await {
        Ok(t) => t,
        Err(e) => {
            if !opts.dry_run {
                let msg = format!("{e:#}");
                state::update(&cfg.state_dir, &policy.name, |st| {
                    st.run.last_attempt = Some(now_local);
                    st.run.last_result = Some("failed".into());
                    st.run.last_message = Some(msg);
                });
            }
            return Err(e);
        }
    };

    let Some(key) = key else {
        return Ok(dry_run(policy, &targets, time, warnings, started));
    };

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
    crate::util::private_dir(&cfg.state_dir)
        .and_then(|_| crate::util::private_dir(&cfg.state_dir.join("staging")))
        .and_then(|_| crate::util::private_dir(&policy_staging))
        .and_then(|_| crate::util::create_private_dir_all(&staging))
        .with_context(|| format!("creating staging directory {}", staging.display()))?;
    let _cleanup = RemoveOnDrop(staging.clone());

    let failed: Vec<Arc<AtomicBool>> = targets
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for (t, f) in targets.iter().zip(&failed) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        queues.push(tx);
        workers.push(tokio::spawn(target_worker(
            t.clone(),
            policy.name.clone(),
            rx,
            f.clone(),
            opts.cancel.clone(),
        )));
    }
    let mut sources = Vec::new();
    let mut records = Vec::new();
    let mut failed_source = None;
    let mut aborted = false;

    for spec in &policy.sources {
        if cancelled(opts) {
            aborted = true;
            break;
        }
        let built = build_archive(
            spec,
            policy,
            &staging,
            &cfg.state_dir,
            &targets,
            &failed,
            opts.cancel.as_ref(),
        )
        .await;
        if cancelled(opts) {
            if let Ok((_, _, vias)) = built {
                for via in vias.into_iter().flatten() {
                    if let Via::Local(lw, _) = via {
                        lw.abort();
                    }
                }
            }
            aborted = true;
            break;
        }
        let (summary, out, vias) = match built {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("source {}: {e:#}", spec.name());
                tracing::error!("{msg}");
                sources.push(SourceResult {
                    name: spec.name().into(),
                    kind: spec.source().kind().into(),
                    archive_hash: None,
                    archive_size: 0,
                    content_size: 0,
                    files: 0,
                    entries: 0,
                    warnings: Vec::new(),
                    unreadable: Vec::new(),
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
        let b3sums = Arc::new(crate::archive::manifest::b3sums(&summary.files).into_bytes());
        for (q, via) in queues.iter().zip(vias) {
            if let Some(via) = via {
                let job = Job::Archive {
                    hash: summary.hash.clone(),
                    size: summary.archive_size,
                    b3sums: b3sums.clone(),
                    via,
                };
                let _ = q.send(job);
            }
        }
        sources.push(SourceResult {
            name: spec.name().into(),
            kind: spec.source().kind().into(),
            archive_hash: Some(summary.hash.clone()),
            archive_size: summary.archive_size,
            content_size: summary.content_size,
            files: summary.files.len() as u64,
            entries: summary.entries,
            warnings: summary.warnings.clone(),
            unreadable: summary.unreadable.clone(),
            error: None,
        });
        records.push(SourceRecord {
            name: spec.name().into(),
            kind: spec.source().kind().into(),
            origin: out.origin,
            archive_hash: summary.hash,
            archive_size: summary.archive_size,
            tar_size: summary.tar_size,
            content_size: summary.content_size,
            entries: summary.entries,
            files: summary.files,
            warnings: summary.warnings,
            unreadable: summary.unreadable,
            database: out.database,
        });
    }
    if failed_source.is_none() && !aborted {
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
        // A manifest every reader would refuse would record a snapshot that
        // cannot be restored: fail the run instead.
        if let Err(e) = crate::archive::manifest::check_size(json.len()) {
            let msg = format!(
                "the snapshot's manifest is {} bytes: {e} (too many files for one snapshot; \
                 split the source or exclude paths)",
                json.len()
            );
            tracing::error!("{msg}");
            failed_source = Some(msg);
        } else {
            let sig = Arc::new(key.sign_manifest(&policy.name, &id, &json));
            for q in &queues {
                let _ = q.send(Job::Commit(id.clone(), json.clone(), sig.clone()));
            }
        }
    }
    drop(queues);
    let outcomes = futures::future::join_all(workers).await;
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|e| Outcome {
                error: Some(format!("delivery task failed: {e}")),
                ..Default::default()
            })
        })
        .collect();
    let committed = outcomes.iter().filter(|o| o.committed).count();
    let tresults: Vec<TargetResult> = targets
        .iter()
        .zip(outcomes)
        .map(|(t, o)| TargetResult {
            name: t.name().to_string(),
            location: t.location().to_string(),
            status: if o.committed {
                "complete"
            } else if o.error.is_some() {
                "failed"
            } else {
                "aborted"
            }
            .into(),
            uploaded_bytes: o.uploaded_bytes,
            archives_uploaded: o.archives_uploaded,
            archives_already_present: o.archives_already_present,
            error: o.error,
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

    if aborted || (failed_source.is_none() && committed == 0 && cancelled(opts)) {
        tracing::warn!(
            "run policy={} snapshot={id}: interrupted before the manifest was written; \
             no snapshot is recorded (uploaded archives are removed by the next prune)",
            policy.name
        );
        result.status = "aborted".into();
        result.error = Some(
            "interrupted by a signal before the snapshot was recorded; nothing was recorded".into(),
        );
    } else if let Some(msg) = failed_source {
        result.error = Some(format!("{msg}; no snapshot was recorded"));
        for t in &mut result.targets {
            if t.error.is_none() {
                t.status = "failed".into();
                t.error = Some("not recorded: a source failed".into());
            }
        }
    } else {
        let ok = committed;
        let unreadable = result.sources.iter().any(|s| !s.unreadable.is_empty());
        result.status = if ok == result.targets.len() && unreadable {
            "incomplete"
        } else if ok == result.targets.len() {
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
    let missed: Vec<String> = if status == "partial" {
        result
            .targets
            .iter()
            .filter(|t| t.status != "complete")
            .map(|t| t.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    state::update(&cfg.state_dir, &policy.name, |st| {
        st.run.missed_targets.extend(missed);
        st.run.last_attempt = Some(now_local);
        st.run.last_result = Some(if status == "complete" {
            "success".into()
        } else {
            status.clone()
        });
        st.run.last_message = err;
        // An incomplete snapshot is done as far as the schedule goes:
        // retrying does not make unreadable files readable.
        if matches!(status.as_str(), "complete" | "partial" | "incomplete") {
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
            let (size, error) = match s.source().estimate() {
                Ok(size) => (size.unwrap_or_default(), None),
                Err(e) => (source::Size::default(), Some(format!("{e:#}"))),
            };
            SourceResult {
                name: s.name().into(),
                kind: s.source().kind().into(),
                archive_hash: None,
                archive_size: 0,
                content_size: size.bytes,
                files: size.files,
                entries: 0,
                warnings: Vec::new(),
                unreadable: Vec::new(),
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

/// One scheduled or manual run of a policy as `run` and the daemon perform
/// it: the run itself (unless only targets are to be caught up), copying
/// what targets missed by earlier partial runs, then (with `prune`) a prune
/// after a run that completed on every target.
#[derive(Debug, Serialize)]
pub struct RunStep {
    #[serde(flatten)]
    pub run: Option<RunResult>,
    /// Targets a partial run missed, brought up to date (as `sync` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<crate::ops::sync::SyncResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::ops::prune::PruneResult>,
    /// The prune after the run could not be done at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<String>,
}

impl RunStep {
    pub fn policy(&self) -> &str {
        self.run
            .as_ref()
            .map(|r| r.policy.as_str())
            .or(self.catch_up.as_ref().map(|c| c.policy.as_str()))
            .unwrap_or_default()
    }
}

impl crate::ops::each::Coded for RunStep {
    fn exit_code(&self) -> ExitCode {
        crate::ops::combine(
            self.run
                .iter()
                .map(|r| r.exit_code())
                .chain(self.catch_up.iter().map(|c| c.exit_code()))
                .chain(self.prune.iter().map(|p| p.exit_code()))
                .chain(self.prune_error.iter().map(|_| ExitCode::Failure)),
        )
    }
}

impl crate::ops::each::Coded for RunResult {
    fn exit_code(&self) -> ExitCode {
        RunResult::exit_code(self)
    }
}

/// Run `policy` (when `decision` is None or says the schedule is due), catch
/// up the targets the decision names, and prune after a complete run when
/// `prune` is set. The caller holds the policy lock (unless a dry run).
pub async fn run_step(
    cfg: &Config,
    policy: &Policy,
    decision: Option<&crate::ops::due::Decision>,
    opts: &RunOptions,
    prune: bool,
) -> anyhow::Result<RunStep> {
    let mut step = RunStep {
        run: None,
        catch_up: None,
        prune: None,
        prune_error: None,
    };
    if decision.is_none_or(|d| d.due) {
        if !opts.dry_run {
            crate::notify::emit(cfg, Some(policy), crate::notify::start_event(policy));
        }
        step.run = Some(run_policy(cfg, policy, opts).await?);
    }
    if let Some(d) = decision.filter(|d| !d.catch_up.is_empty()) {
        if !cancelled(opts) {
            let so = crate::ops::sync::SyncOptions {
                dry_run: opts.dry_run,
                only_targets: Some(d.catch_up.clone()),
                ..Default::default()
            };
            step.catch_up = Some(crate::ops::sync::sync_policy(cfg, policy, &so).await?);
        }
    }
    // Stored on every target (an incomplete snapshot lacks unreadable files,
    // which waiting would not change; never pruning would fill the targets).
    let complete = step
        .run
        .as_ref()
        .is_some_and(|r| matches!(r.status.as_str(), "complete" | "incomplete"));
    if prune && !opts.dry_run && step.run.is_some() {
        if complete && !cancelled(opts) {
            match crate::ops::prune::prune_policy(cfg, policy, &Default::default()).await {
                Ok(p) => step.prune = Some(p),
                Err(e) => {
                    tracing::error!("policy {}: prune: {e:#}", policy.name);
                    step.prune_error = Some(format!("{e:#}"));
                }
            }
        } else {
            tracing::warn!(
                "policy {}: not pruned: the run did not complete on every target",
                policy.name
            );
        }
    }
    Ok(step)
}
