//! `backupctl run`: read each source once into a content-hashed archive,
//! deliver it to every target concurrently, then write the manifest last on
//! each target that received everything.
//!
//! Delivery: every target receives the compressed stream while it is written,
//! through its [`Upload`] (an fs target into a temporary file beside the
//! archives, an S3 target into a local staging file), committed under the
//! archive's name once its hash is known. Each target has its own worker and
//! queue, so a slow or failing target never holds back the others nor the
//! archiving of the next source, and each gets its manifest as soon as it has
//! every archive.
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
use crate::repo::{layout, Commit, Hash, Key, PolicyName, SnapshotId};
use crate::source;
use crate::storage::{DynBackend, Upload};
use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
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
    /// Where progress is shown (hidden by default).
    pub display: crate::progress::Handle,
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

fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
        .max(1)
}

/// One target's copy of the archive being written: its upload, or why it
/// cannot take it.
type Delivery = Result<Box<dyn Upload>, String>;

enum Job {
    Archive {
        hash: Hash,
        size: u64,
        upload: Delivery,
    },
    /// Every archive was sent: write the b3sums, the restore instructions,
    /// then the manifest last.
    Commit(Arc<Commit>),
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

/// Deliver everything queued for one target, in order; after the first
/// failure the target receives nothing more (and never a manifest), and
/// `failed` tells the archiver to stop writing for it.
async fn target_worker(
    t: DynBackend,
    policy: PolicyName,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    failed: Arc<AtomicBool>,
    cancel: Option<tokio_util::sync::CancellationToken>,
) -> Outcome {
    let mut o = Outcome::default();
    while let Some(job) = rx.recv().await {
        let stop = o.error.is_some() || cancel.as_ref().is_some_and(|c| c.is_cancelled());
        match job {
            // Dropping an upload throws it away.
            _ if stop => {}
            Job::Archive { hash, size, upload } => {
                let key = Key::Archive {
                    policy: policy.clone(),
                    hash,
                };
                let stored = match upload {
                    Ok(u) => u.commit(&key.object()).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(true) => {
                        o.archives_uploaded += 1;
                        o.uploaded_bytes += size;
                    }
                    Ok(false) => o.archives_already_present += 1,
                    Err(msg) => {
                        tracing::error!("target {} failed: {msg}", t.name());
                        failed.store(true, Ordering::SeqCst);
                        o.error = Some(msg);
                    }
                }
            }
            Job::Commit(commit) => match commit.apply(&t).await {
                Ok(()) => o.committed = true,
                Err(e) => {
                    tracing::error!("target {} failed writing the manifest: {e}", t.name());
                    failed.store(true, Ordering::SeqCst);
                    o.error = Some(e.to_string());
                }
            },
        }
    }
    o
}

/// The compressed stream, written to every target's upload at once. An
/// upload that fails is dropped (and its temporary removed) without
/// disturbing the others; only when every upload has failed does writing
/// fail. None: the target is not receiving this snapshot.
struct Fanout(Vec<Option<Delivery>>);

/// The archiver's handle on the [`Fanout`] (shared, so the uploads come back
/// once the archive is finished).
struct FanoutWriter(Arc<std::sync::Mutex<Fanout>>);

impl std::io::Write for FanoutWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut fanout = self.0.lock().expect("fanout lock");
        let mut any = false;
        let mut error = None;
        for slot in fanout.0.iter_mut().flatten() {
            let Ok(upload) = slot else { continue };
            match upload.write_all(buf) {
                Ok(()) => any = true,
                Err(e) => {
                    *slot = Err(format!("writing the archive: {e}"));
                    error = Some(e);
                }
            }
        }
        if any {
            Ok(buf.len())
        } else {
            Err(error.unwrap_or_else(|| std::io::Error::other("no destination for the archive")))
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Archive one source, writing the compressed stream at once into an upload
/// on every target still healthy. Returns the summary, the source's facts,
/// and per target how it receives the archive (None: the target already
/// failed).
async fn build_archive(
    spec: &SourceSpec,
    policy: &Policy,
    staging: &Path,
    state_dir: &Path,
    targets: &[DynBackend],
    failed: &[Arc<AtomicBool>],
    opts: &RunOptions,
) -> anyhow::Result<(ArchiveSummary, source::SourceOutput, Vec<Option<Delivery>>)> {
    let (cancel, display) = (opts.cancel.as_ref(), &opts.display);
    let dir = layout::archives_dir(&PolicyName::of(policy));
    let mut slots = Vec::new();
    for (t, f) in targets.iter().zip(failed) {
        slots.push(if f.load(Ordering::SeqCst) {
            None
        } else {
            Some(t.upload(&dir).await.map_err(|e| e.to_string()))
        });
    }
    if !slots.iter().flatten().any(|s| s.is_ok()) {
        let why: Vec<&str> = slots
            .iter()
            .flatten()
            .filter_map(|s| s.as_ref().err().map(String::as_str))
            .collect();
        anyhow::bail!("no target can take the archive ({})", why.join("; "));
    }
    let fanout = Arc::new(std::sync::Mutex::new(Fanout(slots)));
    let spec = spec.clone();
    let staging_dir = staging.to_path_buf();
    let state_dir = state_dir.to_path_buf();
    let level = policy.compression_level;
    let progress = Arc::new(Progress::default());
    let total = if display.visible() {
        spec.source().estimate().ok().flatten().map(|s| s.bytes)
    } else {
        None
    };
    let bar = display.task(spec.name(), total, progress.clone());
    let flag = progress.clone();
    let task = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let sink = Box::new(FanoutWriter(fanout.clone()));
        let mut w = ArchiveWriter::create(sink, level, zstd_workers(), Some(progress))
            .context("starting the archive")?;
        let ctx = source::ArchiveContext {
            staging: &staging_dir,
            state_dir: &state_dir,
        };
        let out = spec.source().archive(&mut w, &ctx)?;
        let summary = w
            .finish()
            .with_context(|| format!("finishing archive for source {}", spec.name()))?;
        let Ok(fanout) = Arc::try_unwrap(fanout) else {
            unreachable!("the archive writer is gone")
        };
        Ok((summary, out, fanout))
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
    // On failure the uploads are dropped with the task: thrown away.
    let (summary, out, fanout) = result?;
    let fanout = fanout.into_inner().expect("fanout lock");
    Ok((summary, out, fanout.0))
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

    let id = SnapshotId::generate(&time).to_string();
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
            PolicyName::of(policy),
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
            opts,
        )
        .await;
        if cancelled(opts) {
            // Dropping the uploads throws them away.
            drop(built);
            aborted = true;
            break;
        }
        let (summary, out, uploads) = match built {
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
        let hash = match Hash::new(&summary.hash) {
            Ok(h) => h,
            Err(e) => {
                failed_source = Some(format!("source {}: {e}", spec.name()));
                break;
            }
        };
        for (q, upload) in queues.iter().zip(uploads) {
            if let Some(upload) = upload {
                let job = Job::Archive {
                    hash: hash.clone(),
                    size: summary.archive_size,
                    upload,
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
        let json = manifest.to_json();
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
            let sig = key.sign_manifest(&policy.name, &id, &json);
            match Commit::new(&manifest, json, sig) {
                Ok(commit) => {
                    let commit = Arc::new(commit);
                    for q in &queues {
                        let _ = q.send(Job::Commit(commit.clone()));
                    }
                }
                Err(e) => failed_source = Some(format!("the snapshot's manifest: {e}")),
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
    targets: &[DynBackend],
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

impl crate::ops::Coded for RunStep {
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

impl crate::ops::Coded for RunResult {
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
