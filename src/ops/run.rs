//! `backupctl run`: read each source once into deduplicated packs, send the
//! packs to every target as they fill, then commit the snapshot (extent
//! lists, signature, manifest last) on each target that has everything.
//!
//! 1. The catalog says which packs the targets hold for authentic
//!    snapshots; their indexes (cached by name in the state directory) make
//!    the run's chunk index. A pack no authentic snapshot references (a
//!    killed run's, or one planted) is never deduplicated against.
//! 2. Each source is one tar stream plus one file index stream, cut into
//!    chunks; only chunks no target holds are compressed and packed
//!    ([`crate::pack::packer`]), on every core.
//! 3. Each closed pack is queued for every healthy target at once: in
//!    memory up to [`QUEUE_MEMORY`] per target, beyond that in one private
//!    staging file shared by the slow targets. A slow or failing target
//!    never holds back the others nor the reading of the sources.
//! 4. When every source is read, each target first receives the packs the
//!    snapshot references that it lacks (a target that missed nights gets
//!    them from one that holds them: every target is complete after a run),
//!    then the commit ([`crate::repo::Commit`]).
//!
//! A target that fails stops receiving this snapshot (exit 3: partial). A
//! source that fails fails the run for its policy: no manifest is written
//! anywhere, so nothing half-done counts as a snapshot (the packs already
//! sent are unreferenced, and the next prune removes them). Source files or
//! directories that cannot be read (permission denied, I/O errors) are
//! listed in the manifest as `unreadable`, and the run is `incomplete`
//! (exit 3) but done: it counts as the schedule's run, and is pruned after
//! as a complete one.
//!
//! Everything a run writes locally (staging files, the SQLite copy, the pack
//! index cache, state) is private to the user backupctl runs as: 0600 files
//! in 0700 directories.

use crate::archive::manifest::StreamRef;
use crate::archive::{ArchiveSummary, ArchiveWriter, Manifest, Progress, SourceRecord};
use crate::config::{Config, Policy, SourceSpec};
use crate::error::Context;
use crate::error::ExitCode;
use crate::ops::{open_targets, state, warn_locations};
use crate::pack::index::ChunkIndex;
use crate::pack::packer::{Ended, PackSink, Packed, Packer, Shared};
use crate::pack::pipe::Piped;
use crate::repo::transfer::{self, Object};
use crate::repo::{fetch, Catalog, Commit, Hash, Key, PolicyName, SnapshotId};
use crate::source;
use crate::storage::DynBackend;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// BLAKE3 of the source's uncompressed tar stream (what `b3sum` of the
    /// manual restore's `zstd -dc` output gives).
    pub archive_hash: Option<String>,
    /// Compressed bytes of the source's tar stream (its extents), stored
    /// now or by earlier snapshots.
    pub archive_size: u64,
    pub content_size: u64,
    pub files: u64,
    pub entries: u64,
    /// Uncompressed bytes of the chunks no target held (tar stream and file
    /// index).
    pub new_bytes: u64,
    /// What this source added to the targets: compressed bytes of its new
    /// chunks.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub warnings: Vec<String>,
    /// Entries that could not be read (relative paths; directories end in
    /// `/`): not in the snapshot.
    pub unreadable: Vec<String>,
    pub error: Option<String>,
}

impl SourceResult {
    fn failed(spec: &SourceSpec, msg: String) -> SourceResult {
        SourceResult {
            name: spec.name().into(),
            kind: spec.source().kind().into(),
            archive_hash: None,
            archive_size: 0,
            content_size: 0,
            files: 0,
            entries: 0,
            new_bytes: 0,
            stored_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            warnings: Vec::new(),
            unreadable: Vec::new(),
            error: Some(msg),
        }
    }
}

/// How a run went (JSON: `complete`, `incomplete`, `partial`, `failed`,
/// `aborted`, `dry-run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Stored on every target.
    Complete,
    /// Stored on every target, but some source files could not be read
    /// (see the sources' `unreadable`).
    Incomplete,
    /// Stored on some targets only.
    Partial,
    Failed,
    /// Interrupted before any manifest was written.
    Aborted,
    DryRun,
}

/// How a run went on one target (JSON: `complete`, `failed`, `aborted`,
/// `skipped` for a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStatus {
    Complete,
    Failed,
    Aborted,
    Skipped,
}

status_names!(RunStatus {
    Complete => "complete",
    Incomplete => "incomplete",
    Partial => "partial",
    Failed => "failed",
    Aborted => "aborted",
    DryRun => "dry-run",
});

status_names!(TargetStatus {
    Complete => "complete",
    Failed => "failed",
    Aborted => "aborted",
    Skipped => "skipped",
});

impl RunStatus {
    /// A snapshot was recorded on every target (unreadable files aside).
    pub fn everywhere(self) -> bool {
        matches!(self, RunStatus::Complete | RunStatus::Incomplete)
    }
}

#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub location: String,
    pub status: TargetStatus,
    /// Pack bytes written to this target (uploaded and copied).
    pub uploaded_bytes: u64,
    /// Packs written to this target: `packs_uploaded + packs_copied`.
    pub archives_uploaded: usize,
    /// Packs the snapshot references that the target already held.
    pub archives_already_present: usize,
    /// Packs this run created, written here as they filled.
    pub packs_uploaded: usize,
    /// Packs of earlier snapshots this target lacked (it missed a run),
    /// copied from a target that holds them.
    pub packs_copied: usize,
    pub error: Option<String>,
}

impl TargetResult {
    fn new(t: &DynBackend, status: TargetStatus) -> TargetResult {
        TargetResult {
            name: t.name().into(),
            location: t.location().into(),
            status,
            uploaded_bytes: 0,
            archives_uploaded: 0,
            archives_already_present: 0,
            packs_uploaded: 0,
            packs_copied: 0,
            error: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub policy: String,
    pub snapshot: Option<String>,
    pub time: DateTime<FixedOffset>,
    pub status: RunStatus,
    pub dry_run: bool,
    pub sources: Vec<SourceResult>,
    pub targets: Vec<TargetResult>,
    /// What the snapshot added to each target: compressed bytes of new
    /// chunks (the sum of the sources' `stored_bytes`).
    pub stored_bytes: u64,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    pub duration_seconds: f64,
}

impl RunResult {
    pub fn exit_code(&self) -> ExitCode {
        match self.status {
            RunStatus::Complete | RunStatus::DryRun => ExitCode::Success,
            RunStatus::Partial | RunStatus::Incomplete => ExitCode::Partial,
            RunStatus::Failed | RunStatus::Aborted => ExitCode::Failure,
        }
    }
}

/// Packs queued in memory for one target before further packs wait for it
/// in a staging file instead.
pub const QUEUE_MEMORY: u64 = 32 << 20;

/// A closed pack on its way to a target.
enum Payload {
    Memory(Arc<Vec<u8>>),
    Spilled(Arc<Spilled>),
}

/// A pack waiting in the staging area for the slow targets; removed once
/// the last of them has it.
struct Spilled(PathBuf);

impl Drop for Spilled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Job {
    Pack {
        name: Hash,
        payload: Payload,
        len: u64,
    },
    /// Every source was read: copy the packs the target lacks (`copy`, from
    /// `holders`), then write the lists, the restore instructions, the
    /// signature and the manifest last.
    Commit {
        commit: Arc<Commit>,
        copy: Vec<Hash>,
        holders: Arc<Holders>,
    },
}

/// Per pack of authentic snapshots: the targets it can be copied from.
type Holders = HashMap<Hash, Vec<DynBackend>>;

/// One target's queue, shared by the pack fan-out and the target's worker.
#[derive(Clone)]
struct Lane {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    /// Bytes of [`Payload::Memory`] packs queued.
    queued: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Outcome {
    uploaded_bytes: u64,
    packs_uploaded: usize,
    packs_copied: usize,
    error: Option<String>,
    /// The manifest was written: the snapshot is complete on this target.
    committed: bool,
}

/// Deliver everything queued for one target, in order; after the first
/// failure the target receives nothing more (and never a manifest).
async fn target_worker(
    t: DynBackend,
    policy: PolicyName,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    // The lane's counters only: holding its sender would keep `rx` open.
    (queued, failed): (Arc<AtomicU64>, Arc<AtomicBool>),
    cancel: Option<tokio_util::sync::CancellationToken>,
    mut o: Outcome,
) -> Outcome {
    let fail = |o: &mut Outcome, msg: String| {
        tracing::error!("target {} failed: {msg}", t.name());
        failed.store(true, Ordering::SeqCst);
        o.error = Some(msg);
    };
    while let Some(job) = rx.recv().await {
        let stop = o.error.is_some() || cancel.as_ref().is_some_and(|c| c.is_cancelled());
        match job {
            Job::Pack { payload, len, .. } if stop => {
                if let Payload::Memory(_) = payload {
                    queued.fetch_sub(len, Ordering::SeqCst);
                }
            }
            Job::Commit { .. } if stop => {}
            Job::Pack { name, payload, len } => {
                let key = Key::Pack {
                    policy: policy.clone(),
                    name: name.clone(),
                }
                .object();
                let r = match payload {
                    Payload::Memory(b) => {
                        let data = Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone());
                        let r = t.put_bytes(&key, data).await;
                        queued.fetch_sub(len, Ordering::SeqCst);
                        r
                    }
                    Payload::Spilled(f) => t.put_file(&key, &f.0).await,
                };
                match r {
                    Ok(()) => {
                        o.packs_uploaded += 1;
                        o.uploaded_bytes += len;
                    }
                    Err(e) => fail(&mut o, format!("uploading pack {}: {e}", name.short())),
                }
            }
            Job::Commit {
                commit,
                copy,
                holders,
            } => {
                for name in copy {
                    let from: Vec<&DynBackend> = holders.get(&name).into_iter().flatten().collect();
                    match transfer::copy_to(&policy, &Object::Pack(name), &from, &t).await {
                        Ok(bytes) => {
                            o.packs_copied += 1;
                            o.uploaded_bytes += bytes;
                        }
                        Err(e) => fail(&mut o, e),
                    }
                    if o.error.is_some() {
                        break;
                    }
                }
                if o.error.is_none() {
                    match commit.apply(&t).await {
                        Ok(()) => o.committed = true,
                        Err(e) => fail(&mut o, format!("writing the manifest: {e}")),
                    }
                }
            }
        }
    }
    o
}

/// Hands every closed pack to each healthy target's queue.
struct Fanout {
    lanes: Vec<Lane>,
    staging: PathBuf,
    /// Every pack this run created.
    created: Arc<Mutex<Vec<Hash>>>,
}

impl PackSink for Fanout {
    fn pack(
        &mut self,
        name: &str,
        bytes: Arc<Vec<u8>>,
        _index: &crate::pack::format::PackIndex,
    ) -> std::io::Result<()> {
        let name = Hash::new(name).map_err(std::io::Error::other)?;
        let len = bytes.len() as u64;
        let mut spilled: Option<Arc<Spilled>> = None;
        let mut any = false;
        for lane in &self.lanes {
            if lane.failed.load(Ordering::SeqCst) {
                continue;
            }
            let payload = if lane.queued.load(Ordering::SeqCst) + len <= QUEUE_MEMORY {
                lane.queued.fetch_add(len, Ordering::SeqCst);
                Payload::Memory(bytes.clone())
            } else {
                if spilled.is_none() {
                    let path = self.staging.join(format!("{name}.pack"));
                    use std::io::Write;
                    crate::util::create_private_file(&path)?.write_all(&bytes)?;
                    spilled = Some(Arc::new(Spilled(path)));
                }
                Payload::Spilled(spilled.clone().expect("spilled"))
            };
            let job = Job::Pack {
                name: name.clone(),
                payload,
                len,
            };
            any |= lane.tx.send(job).is_ok();
        }
        self.created.lock().expect("created").push(name);
        if any {
            Ok(())
        } else {
            Err(std::io::Error::other("every target has failed"))
        }
    }
}

/// The run's chunk index: every chunk of the packs that authentic snapshots
/// reference on a target where they are complete, and per such pack the
/// targets holding it. A pack whose index no holder serves intact is left
/// out (its chunks are stored again).
async fn known_chunks(catalog: &Catalog, cache: &Path) -> (ChunkIndex, Holders) {
    let mut holders: Holders = catalog.pack_holders();
    let sources: HashMap<String, Arc<fetch::Packs>> = catalog
        .targets
        .iter()
        .map(|st| {
            (
                st.name().to_string(),
                fetch::Packs::new(&st.target, &catalog.policy, Some(cache)),
            )
        })
        .collect();
    // Owned work items: the futures below must not borrow the map.
    let work: Vec<(String, Vec<Arc<fetch::Packs>>)> = holders
        .iter()
        .map(|(name, ts)| {
            let srcs = ts.iter().map(|t| sources[t.name()].clone()).collect();
            (name.to_string(), srcs)
        })
        .collect();
    let jobs = work.into_iter().map(|(name, srcs)| async move {
        tokio::task::spawn_blocking(move || {
            let mut why = Vec::new();
            for s in &srcs {
                match s.load_index(&name) {
                    Ok(i) => return Ok((name, i)),
                    Err(e) => {
                        use crate::pack::reader::PackSource;
                        why.push(format!("{}: {e}", s.name()))
                    }
                }
            }
            Err((name, why.join("; ")))
        })
        .await
        .expect("index task panicked")
    });
    use futures::stream::StreamExt;
    let mut loaded: Vec<_> = futures::stream::iter(jobs)
        .buffer_unordered(8)
        .collect()
        .await;
    loaded.sort_by(|a, b| {
        let n = |r: &Result<(String, _), (String, String)>| match r {
            Ok((n, _)) | Err((n, _)) => n.clone(),
        };
        n(a).cmp(&n(b))
    });
    let mut index = ChunkIndex::new();
    for r in loaded {
        match r {
            Ok((name, idx)) => index.add_existing(&name, &idx),
            Err((name, why)) => {
                tracing::warn!("pack {name}: index unreadable on every holder ({why}); its chunks are stored again");
                if let Ok(h) = Hash::new(&name) {
                    holders.remove(&h);
                }
            }
        }
    }
    index.seal();
    (index, holders)
}

/// A [`Packer`] the archive writer owns a handle to, taken back when the
/// writer is finished. The packer runs on its own thread ([`Piped`]), beside
/// the source's reading and hashing.
#[derive(Clone)]
struct StreamSlot(Arc<Mutex<Option<Piped<Packer>>>>);

impl StreamSlot {
    fn new(name: &str, p: Packer) -> std::io::Result<StreamSlot> {
        Ok(StreamSlot(Arc::new(Mutex::new(Some(Piped::new(name, p)?)))))
    }
    fn take(&self) -> std::io::Result<Packer> {
        self.0
            .lock()
            .expect("stream slot")
            .take()
            .expect("taken once")
            .finish()
    }
}

impl std::io::Write for StreamSlot {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().expect("stream slot").as_mut() {
            Some(p) => p.write(buf),
            None => Err(std::io::Error::other("stream already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops the packer's threads however the run ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

/// One source read: what the archive writer saw, what the source says, and
/// its two streams (resolved once the last pack is closed).
struct Read {
    summary: ArchiveSummary,
    out: source::SourceOutput,
    tar: Ended,
    index: Ended,
}

/// Archive one source into the run's packs.
async fn read_source(
    spec: &SourceSpec,
    shared: &Arc<Shared>,
    staging: &Path,
    state_dir: &Path,
    opts: &RunOptions,
) -> crate::error::Result<Read> {
    let (cancel, display) = (opts.cancel.as_ref(), &opts.display);
    let spec = spec.clone();
    let staging_dir = staging.to_path_buf();
    let state_dir = state_dir.to_path_buf();
    let progress = Arc::new(Progress::default());
    let total = if display.visible() {
        spec.source().estimate().ok().flatten().map(|s| s.bytes)
    } else {
        None
    };
    let bar = display.task(spec.name(), total, progress.clone());
    let flag = progress.clone();
    let shared = shared.clone();
    let task = tokio::task::spawn_blocking(move || -> crate::error::Result<Read> {
        let tar =
            StreamSlot::new("pack-tar", Packer::tar(&shared)).context("starting the packer")?;
        let index =
            StreamSlot::new("pack-index", Packer::index(&shared)).context("starting the packer")?;
        let mut w = ArchiveWriter::create(
            Box::new(tar.clone()),
            Box::new(index.clone()),
            Some(progress),
        )
        .context("starting the archive")?;
        let ctx = source::ArchiveContext {
            staging: &staging_dir,
            state_dir: &state_dir,
        };
        let out = spec.source().archive(&mut w, &ctx)?;
        let summary = w
            .finish()
            .with_context(|| format!("finishing archive for source {}", spec.name()))?;
        let tar = tar
            .take()
            .and_then(Packer::end)
            .context("packing the tar stream")?;
        let index = index
            .take()
            .and_then(Packer::end)
            .context("packing the file index")?;
        Ok(Read {
            summary,
            out,
            tar,
            index,
        })
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
    drop(bar);
    joined.expect("archive task panicked")
}

/// A stream's reference for the manifest and its extent list's text.
fn stream_ref(p: &Packed) -> (StreamRef, Hash, Vec<u8>) {
    let text = p.extents.render().into_bytes();
    let hash = Hash::of(&blake3::hash(&text));
    let r = StreamRef {
        size: p.stats.bytes,
        blake3: p.blake3.clone(),
        stored: p.extents.compressed_len(),
        list: hash.to_string(),
        list_size: text.len() as u64,
    };
    (r, hash, text)
}

/// Run one policy.
pub async fn run_policy(
    cfg: &Config,
    policy: &Policy,
    opts: &RunOptions,
) -> crate::error::Result<RunResult> {
    let started = std::time::Instant::now();
    let now_local: DateTime<FixedOffset> = crate::clock::now();
    let time = opts.time.unwrap_or(now_local);
    let mut warnings = Vec::new();
    if let Some(w) = warn_locations(cfg, policy) {
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let (targets, key) = ready(cfg, policy, opts, now_local).await?;

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
    let (staging, cache) = prepare_staging(cfg, policy, &id)?;
    let _cleanup = RemoveOnDrop(staging.clone());

    // What the targets hold.
    let pname = PolicyName::of(policy);
    let catalog = Catalog::load(&pname, &targets, &cfg.trust()).await;
    let (index, holders) = known_chunks(&catalog, &cache).await;
    let holders = Arc::new(holders);
    tracing::debug!(
        "run policy={}: {} chunks known in {} packs",
        policy.name,
        index.len(),
        holders.len()
    );

    let (lanes, workers) = start_lanes(&catalog, &pname, opts);
    let created = Arc::new(Mutex::new(Vec::new()));
    let fanout = Fanout {
        lanes: lanes.clone(),
        staging: staging.clone(),
        created: created.clone(),
    };
    let shared = Shared::start(index, policy.compression_level, Box::new(fanout));
    let stopper = StopOnDrop(shared.clone());

    let mut read = read_sources(cfg, policy, &shared, &staging, opts).await;
    read.finish_packing(&shared).await;
    drop(stopper);
    let Recorded {
        records,
        lists,
        referenced,
    } = read.records();
    let Sources {
        results: sources,
        mut failed_source,
        aborted,
        ..
    } = read;
    let stored_bytes = sources.iter().map(|s| s.stored_bytes).sum();
    let mut present = vec![0usize; catalog.targets.len()];
    if failed_source.is_none() && !aborted {
        let commit = Pending {
            policy,
            id: &id,
            time,
            key: &key,
            records,
            lists,
        };
        let created: HashSet<Hash> = created.lock().expect("created").iter().cloned().collect();
        match commit.send(&catalog, &lanes, &referenced, &created, &holders) {
            Ok(p) => present = p,
            Err(e) => {
                tracing::error!("{e}");
                failed_source = Some(e);
            }
        }
    }
    drop(lanes);
    let outcomes = delivered(workers).await;
    let committed = outcomes.iter().filter(|o| o.committed).count();
    let tresults = target_results(&targets, outcomes, present);

    let mut result = RunResult {
        policy: policy.name.clone(),
        snapshot: None,
        time,
        status: RunStatus::Failed,
        dry_run: false,
        sources,
        targets: tresults,
        stored_bytes,
        warnings,
        error: None,
        duration_seconds: 0.0,
    };

    let interrupted = aborted || (failed_source.is_none() && committed == 0 && cancelled(opts));
    conclude(&mut result, &id, interrupted, failed_source, committed);
    result.duration_seconds = started.elapsed().as_secs_f64();
    record_state(cfg, policy, &result, now_local);
    tracing::info!(
        "run policy={} status={} stored={} seconds={:.1}",
        policy.name,
        result.status,
        result.stored_bytes,
        result.duration_seconds
    );
    Ok(result)
}

/// Before anything is read: every source passes its preflight, the host
/// key loads (not for a dry run) and the targets open. A failure is
/// recorded in the policy's state as the last attempt.
async fn ready(
    cfg: &Config,
    policy: &Policy,
    opts: &RunOptions,
    now_local: DateTime<FixedOffset>,
) -> crate::error::Result<(Vec<DynBackend>, Option<crate::trust::HostKey>)> {
    let ready = async {
        for s in &policy.sources {
            s.source().preflight()?;
        }
        let key = if opts.dry_run {
            None
        } else {
            Some(cfg.signing_key()?)
        };
        Ok::<_, crate::error::Error>((open_targets(cfg, policy, None).await?, key))
    };
    let r = ready.await;
    if let (Err(e), false) = (&r, opts.dry_run) {
        let msg = format!("{e:#}");
        state::update(&cfg.state_dir, &policy.name, |st| {
            st.run.last_attempt = Some(now_local);
            st.run.last_result = Some("failed".into());
            st.run.last_message = Some(msg);
        });
    }
    r
}

/// Every target worker's outcome (a worker that panicked is a failed one).
async fn delivered(workers: Vec<tokio::task::JoinHandle<Outcome>>) -> Vec<Outcome> {
    futures::future::join_all(workers)
        .await
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|e| Outcome {
                error: Some(format!("delivery task failed: {e}")),
                ..Default::default()
            })
        })
        .collect()
}

/// The run's private staging directory (and the pack-index cache), after
/// removing what a killed run left: under the policy lock, anything in the
/// policy's staging directory is a leftover.
fn prepare_staging(
    cfg: &Config,
    policy: &Policy,
    id: &str,
) -> crate::error::Result<(PathBuf, PathBuf)> {
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
    let staging = policy_staging.join(id);
    let cache = pack_cache(&cfg.state_dir, &policy.name);
    crate::util::private_dir(&cfg.state_dir)
        .and_then(|_| crate::util::private_dir(&cfg.state_dir.join("staging")))
        .and_then(|_| crate::util::private_dir(&policy_staging))
        .and_then(|_| crate::util::create_private_dir_all(&staging))
        .and_then(|_| crate::util::create_private_dir_all(&cache))
        .with_context(|| format!("creating staging directory {}", staging.display()))?;
    Ok((staging, cache))
}

/// One lane and one delivery worker per target; a target whose listing
/// failed starts failed (it receives nothing).
fn start_lanes(
    catalog: &Catalog,
    pname: &PolicyName,
    opts: &RunOptions,
) -> (Vec<Lane>, Vec<tokio::task::JoinHandle<Outcome>>) {
    let mut lanes = Vec::new();
    let mut workers = Vec::new();
    for st in &catalog.targets {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let lane = Lane {
            tx,
            queued: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicBool::new(false)),
        };
        let mut start = Outcome::default();
        if let Err(e) = &st.view {
            tracing::error!("target {} failed: {e}", st.name());
            lane.failed.store(true, Ordering::SeqCst);
            start.error = Some(e.clone());
        }
        workers.push(tokio::spawn(target_worker(
            st.target.clone(),
            pname.clone(),
            rx,
            (lane.queued.clone(), lane.failed.clone()),
            opts.cancel.clone(),
            start,
        )));
        lanes.push(lane);
    }
    (lanes, workers)
}

/// What reading a policy's sources gave: the sources read, the results of
/// those that failed, the first failure, and whether a signal stopped it.
struct Sources<'a> {
    results: Vec<SourceResult>,
    read: Vec<(&'a SourceSpec, Read)>,
    failed_source: Option<String>,
    aborted: bool,
}

impl Sources<'_> {
    /// Close the last pack so every stream's extents resolve (only when
    /// every source was read); a packing error fails the run.
    async fn finish_packing(&mut self, shared: &Arc<Shared>) {
        if self.failed_source.is_some() || self.aborted {
            return;
        }
        let s = shared.clone();
        let finished = tokio::task::spawn_blocking(move || s.finish())
            .await
            .expect("packer task panicked");
        if let Err(e) = finished {
            let e = format!("packing: {e}");
            tracing::error!("{e}");
            self.failed_source = Some(e);
        }
    }

    /// The manifest's source records, the extent lists to store and the
    /// packs they reference, from the sources read (nothing after a
    /// failure); each source's result joins `results`.
    fn records(&mut self) -> Recorded {
        let mut records = Vec::new();
        let mut lists = Vec::new();
        let mut referenced = BTreeSet::new();
        if self.failed_source.is_some() || self.aborted {
            return Recorded {
                records,
                lists,
                referenced,
            };
        }
        for (spec, r) in std::mem::take(&mut self.read) {
            match source_record(spec, r, &mut lists, &mut referenced) {
                Ok((rec, res)) => {
                    records.push(rec);
                    self.results.push(res);
                }
                Err(e) => {
                    let msg = format!("source {}: {e:#}", spec.name());
                    tracing::error!("{msg}");
                    self.results.push(SourceResult::failed(spec, msg.clone()));
                    self.failed_source = Some(msg);
                    break;
                }
            }
        }
        Recorded {
            records,
            lists,
            referenced,
        }
    }
}

/// What the manifest records of the sources read: their records, the
/// extent lists to store and the packs those reference.
struct Recorded {
    records: Vec<SourceRecord>,
    lists: Vec<(Hash, Vec<u8>)>,
    referenced: BTreeSet<Hash>,
}

/// Read every source once, in order, into the run's packs; stop at the
/// first failure or signal.
async fn read_sources<'a>(
    cfg: &Config,
    policy: &'a Policy,
    shared: &Arc<Shared>,
    staging: &Path,
    opts: &RunOptions,
) -> Sources<'a> {
    let mut sources = Vec::new();
    let mut read = Vec::new();
    let mut failed_source = None;
    let mut aborted = false;
    for spec in &policy.sources {
        if cancelled(opts) {
            aborted = true;
            break;
        }
        let r = read_source(spec, shared, staging, &cfg.state_dir, opts).await;
        if cancelled(opts) {
            aborted = true;
            break;
        }
        match r {
            Ok(r) => read.push((spec, r)),
            Err(e) => {
                let msg = format!("source {}: {e:#}", spec.name());
                tracing::error!("{msg}");
                sources.push(SourceResult::failed(spec, msg.clone()));
                failed_source = Some(msg);
                break;
            }
        }
    }
    Sources {
        results: sources,
        read,
        failed_source,
        aborted,
    }
}

/// Each target's result from its worker's outcome; `present` is how many
/// referenced packs it already held.
fn target_results(
    targets: &[DynBackend],
    outcomes: Vec<Outcome>,
    present: Vec<usize>,
) -> Vec<TargetResult> {
    targets
        .iter()
        .zip(outcomes)
        .zip(present)
        .map(|((t, o), present)| {
            let status = if o.committed {
                TargetStatus::Complete
            } else if o.error.is_some() {
                TargetStatus::Failed
            } else {
                TargetStatus::Aborted
            };
            TargetResult {
                uploaded_bytes: o.uploaded_bytes,
                archives_uploaded: o.packs_uploaded + o.packs_copied,
                archives_already_present: present,
                packs_uploaded: o.packs_uploaded,
                packs_copied: o.packs_copied,
                error: o.error,
                ..TargetResult::new(t, status)
            }
        })
        .collect()
}

/// A snapshot whose sources are all read: the manifest is built, checked and
/// signed, and each healthy target's lane gets its commit (with the packs to
/// copy from other targets first).
struct Pending<'a> {
    policy: &'a Policy,
    id: &'a str,
    time: DateTime<FixedOffset>,
    key: &'a crate::trust::HostKey,
    records: Vec<SourceRecord>,
    lists: Vec<(Hash, Vec<u8>)>,
}

impl Pending<'_> {
    /// Queue the commit on every listed target; per target, how many of
    /// the referenced packs it already held.
    fn send(
        self,
        catalog: &Catalog,
        lanes: &[Lane],
        referenced: &BTreeSet<Hash>,
        created: &HashSet<Hash>,
        holders: &Arc<Holders>,
    ) -> Result<Vec<usize>, String> {
        let manifest = Manifest {
            format: crate::archive::manifest::FORMAT_NAME.into(),
            schema_version: crate::archive::manifest::SCHEMA_VERSION,
            policy: self.policy.name.clone(),
            id: self.id.to_string(),
            time: self.time,
            host: crate::util::hostname(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            sources: self.records,
            revision: 0,
        };
        let json = manifest.to_json();
        // A manifest every reader would refuse would record a snapshot that
        // cannot be restored: fail the run instead.
        crate::archive::manifest::check_size(json.len())
            .map_err(|e| format!("the snapshot's manifest is {} bytes: {e}", json.len()))?;
        let sig = self.key.sign_manifest(&self.policy.name, self.id, &json);
        let commit = Commit::new(&manifest, json, sig, self.lists)
            .map_err(|e| format!("the snapshot's manifest: {e}"))?;
        let commit = Arc::new(commit);
        let mut present = vec![0usize; catalog.targets.len()];
        for (i, (st, lane)) in catalog.targets.iter().zip(lanes).enumerate() {
            let Ok(v) = &st.view else { continue };
            let (held, copy): (Vec<&Hash>, Vec<&Hash>) = referenced
                .iter()
                .filter(|p| !created.contains(*p))
                .partition(|p| v.packs.contains_key(*p));
            present[i] = held.len();
            let _ = lane.tx.send(Job::Commit {
                commit: commit.clone(),
                copy: copy.into_iter().cloned().collect(),
                holders: holders.clone(),
            });
        }
        Ok(present)
    }
}

/// The run's status from what happened: interrupted before any manifest,
/// a source failed (nothing recorded), or the snapshot is on `committed`
/// of the targets.
fn conclude(
    result: &mut RunResult,
    id: &str,
    interrupted: bool,
    failed_source: Option<String>,
    committed: usize,
) {
    if interrupted {
        tracing::warn!(
            "run policy={} snapshot={id}: interrupted before the manifest was written; \
             no snapshot is recorded (packs already sent are removed by the next prune)",
            result.policy
        );
        result.status = RunStatus::Aborted;
        result.error = Some(
            "interrupted by a signal before the snapshot was recorded; nothing was recorded".into(),
        );
    } else if let Some(msg) = failed_source {
        result.error = Some(format!("{msg}; no snapshot was recorded"));
        for t in &mut result.targets {
            if t.error.is_none() {
                t.status = TargetStatus::Failed;
                t.error = Some("not recorded: a source failed".into());
            }
        }
    } else {
        let ok = committed;
        let unreadable = result.sources.iter().any(|s| !s.unreadable.is_empty());
        result.status = if ok == result.targets.len() && unreadable {
            RunStatus::Incomplete
        } else if ok == result.targets.len() {
            RunStatus::Complete
        } else if ok > 0 {
            RunStatus::Partial
        } else {
            RunStatus::Failed
        };
        if ok > 0 {
            result.snapshot = Some(id.to_string());
        } else {
            result.error = Some("the snapshot could not be stored on any target".into());
        }
    }
}

/// Where a policy's pack indexes are cached (by pack name; each is checked
/// against its name when read, so the cache needs no trust).
pub fn pack_cache(state_dir: &Path, policy: &str) -> PathBuf {
    state_dir.join("cache").join("packs").join(policy)
}

/// A source's manifest record and result, once its streams resolved; its
/// extent lists join `lists` and the packs they reference `referenced`.
fn source_record(
    spec: &SourceSpec,
    r: Read,
    lists: &mut Vec<(Hash, Vec<u8>)>,
    referenced: &mut BTreeSet<Hash>,
) -> crate::error::Result<(SourceRecord, SourceResult)> {
    let tar = r.tar.resolve().context("placing the tar stream")?;
    let index = r.index.resolve().context("placing the file index")?;
    crate::ensure!(
        tar.stats.bytes == r.summary.tar_size,
        "the tar stream is {} bytes but {} were packed",
        r.summary.tar_size,
        tar.stats.bytes
    );
    for p in tar.extents.packs().into_iter().chain(index.extents.packs()) {
        referenced.insert(Hash::new(p)?);
    }
    let (stream, tar_hash, tar_text) = stream_ref(&tar);
    let (index_ref, index_hash, index_text) = stream_ref(&index);
    for (h, t) in [(tar_hash, tar_text), (index_hash, index_text)] {
        if !lists.iter().any(|(x, _)| *x == h) {
            lists.push((h, t));
        }
    }
    let s = r.summary;
    let new_bytes = tar.stats.new_bytes + index.stats.new_bytes;
    let stored_bytes = tar.stats.stored_bytes + index.stats.stored_bytes;
    tracing::info!(
        "archived source={} files={} bytes={} stream={} new={} stored={}",
        spec.name(),
        s.files,
        s.content_size,
        &tar.blake3[..16],
        new_bytes,
        stored_bytes
    );
    let res = SourceResult {
        name: spec.name().into(),
        kind: spec.source().kind().into(),
        archive_hash: Some(tar.blake3.clone()),
        archive_size: stream.stored,
        content_size: s.content_size,
        files: s.files,
        entries: s.entries,
        new_bytes,
        stored_bytes,
        chunks: tar.stats.chunks + index.stats.chunks,
        new_chunks: tar.stats.new_chunks + index.stats.new_chunks,
        warnings: s.warnings.clone(),
        unreadable: s.unreadable.clone(),
        error: None,
    };
    let rec = SourceRecord {
        name: spec.name().into(),
        kind: spec.source().kind().into(),
        origin: r.out.origin,
        stream,
        index: index_ref,
        content_size: s.content_size,
        entries: s.entries,
        files: s.files,
        warnings: s.warnings,
        unreadable: s.unreadable,
        database: r.out.database,
    };
    Ok((rec, res))
}

/// The run's outcome in the policy's state (what `run --due` and `status`
/// read).
fn record_state(cfg: &Config, policy: &Policy, result: &RunResult, now: DateTime<FixedOffset>) {
    let status = result.status;
    let snap = result.snapshot.clone();
    let err = result.error.clone();
    let missed: Vec<String> = if status == RunStatus::Partial {
        result
            .targets
            .iter()
            .filter(|t| t.status != TargetStatus::Complete)
            .map(|t| t.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    state::update(&cfg.state_dir, &policy.name, |st| {
        st.run.missed_targets.extend(missed);
        st.run.last_attempt = Some(now);
        st.run.last_result = Some(if status == RunStatus::Complete {
            "success".into()
        } else {
            status.to_string()
        });
        st.run.last_message = err;
        // An incomplete snapshot is done as far as the schedule goes:
        // retrying does not make unreadable files readable.
        if status.everywhere() || status == RunStatus::Partial {
            st.run.last_success = Some(now);
            st.run.last_snapshot = snap;
        }
    });
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
                content_size: size.bytes,
                files: size.files,
                error,
                ..SourceResult::failed(s, String::new())
            }
        })
        .collect();
    RunResult {
        policy: policy.name.clone(),
        snapshot: None,
        time,
        status: RunStatus::DryRun,
        dry_run: true,
        sources,
        targets: targets
            .iter()
            .map(|t| TargetResult::new(t, TargetStatus::Skipped))
            .collect(),
        stored_bytes: 0,
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
) -> crate::error::Result<RunStep> {
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
    let complete = step.run.as_ref().is_some_and(|r| r.status.everywhere());
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
