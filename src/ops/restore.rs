//! `backupctl restore`: unpack a snapshot's sources into a directory, from
//! the first target (in the policy's order) that serves intact bytes.
//!
//! Each source is unpacked into a hidden staging directory inside `--to` and
//! renamed into place only after its archive hash and every file hash check
//! out; a damaged or unreachable copy is skipped with a warning and the next
//! target is tried. With `--force`, an existing `<to>/<source>` is moved aside
//! (never deleted) before the restored tree takes its place.

use crate::archive::{self, ExtractError, ExtractOptions, Progress, SourceRecord};
use crate::config::{Config, Policy};
use crate::error::{CodedError, ExitCode};
use crate::ops::load_catalog;
use crate::repo::{self, Catalog};
use crate::report::Bar;
use crate::target::DynTarget;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub snapshot: Option<String>,
    pub to: PathBuf,
    pub source: Option<String>,
    pub target: Option<String>,
    pub include: Vec<String>,
    pub force: bool,
    pub allow_external_links: bool,
}

#[derive(Debug, Serialize)]
pub struct RestoredSource {
    pub name: String,
    pub target: String,
    pub path: String,
    pub files: usize,
    pub bytes: u64,
    /// Earlier targets skipped, with why.
    pub skipped_targets: Vec<(String, String)>,
    /// Where an existing directory was moved (with --force).
    pub moved_aside: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RestoreResult {
    pub policy: String,
    pub snapshot: String,
    pub time: String,
    pub sources: Vec<RestoredSource>,
}

/// Why a copy was not used.
pub enum FetchError {
    /// Try the next target.
    Skip(String),
    /// Stop: a local problem.
    Fatal(anyhow::Error),
}

/// Fetch one archive from `t` and unpack it into `dest`, checking the archive
/// hash and (when `record` has file hashes) every file against the manifest.
pub async fn fetch_and_extract(
    t: &DynTarget,
    policy: &str,
    record: &SourceRecord,
    dest: &Path,
    opts: &ExtractOptions,
    label: &str,
) -> Result<archive::ExtractReport, FetchError> {
    let key = repo::archive_key(policy, &record.archive_hash);
    let stream = match t.get(&key).await {
        Ok(s) => s,
        Err(e) => return Err(FetchError::Skip(e.to_string())),
    };
    let progress = Arc::new(Progress::default());
    let mut opts = opts.clone();
    opts.progress = Some(progress.clone());
    let bar = Bar::new(label, Some(record.content_size), progress);
    let reader = stream.into_blocking_read();
    let (hash, dest2) = (record.archive_hash.clone(), dest.to_path_buf());
    let res =
        tokio::task::spawn_blocking(move || archive::extract(reader, Some(&hash), &dest2, &opts))
            .await
            .expect("extract task panicked");
    drop(bar);
    match res {
        Ok(report) => Ok(report),
        Err(ExtractError::Io { path, source }) => Err(FetchError::Fatal(anyhow::anyhow!(
            "writing {path}: {source}"
        ))),
        Err(e) => Err(FetchError::Skip(e.to_string())),
    }
}

/// Fetch and unpack one source's archive from the first target (in order)
/// that holds the snapshot and serves intact bytes, into a fresh hidden
/// directory under `parent`. Returns the target used, the directory, the
/// extraction report and the targets skipped (with why).
#[allow(clippy::too_many_arguments)]
pub async fn fetch_with_failover(
    targets: &[DynTarget],
    catalog: &Catalog,
    policy: &str,
    m: &archive::Manifest,
    rec: &SourceRecord,
    parent: &Path,
    opts: &ExtractOptions,
    include: Option<&crate::archive::Include>,
) -> anyhow::Result<(
    String,
    PathBuf,
    archive::ExtractReport,
    Vec<(String, String)>,
)> {
    let mut skipped = Vec::new();
    for t in targets {
        let entry = catalog.entries.iter().find(|e| e.manifest.id == m.id);
        let state = catalog.targets.iter().find(|s| s.target.name() == t.name());
        match (state, entry) {
            (Some(st), _) if st.view.is_err() => {
                skipped.push((t.name().to_string(), "unreachable".to_string()));
                continue;
            }
            (Some(st), Some(e)) if st.holds(e) => {}
            _ => {
                let why = catalog
                    .bad_manifests
                    .iter()
                    .find(|d| d.target == t.name() && d.snapshot == m.id)
                    .map(|d| format!("its copy is not used: {}", d.reason))
                    .unwrap_or_else(|| "does not hold this snapshot".to_string());
                skipped.push((t.name().to_string(), why));
                continue;
            }
        }
        let staging = parent.join(format!(".backupctl-restore-{}", crate::util::random_hex(8)));
        let r = fetch_and_extract(t, policy, rec, &staging, opts, &rec.name).await;
        let problems = match &r {
            Ok(rep) => archive::reader::compare_files(&rec.files, &rep.files, include),
            Err(_) => Vec::new(),
        };
        let msg = match r {
            Ok(rep) if problems.is_empty() => {
                return Ok((t.name().to_string(), staging, rep, skipped));
            }
            Ok(_) => format!("files do not match the manifest: {}", problems.join("; ")),
            Err(FetchError::Skip(msg)) => msg,
            Err(FetchError::Fatal(e)) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        tracing::warn!(
            "target {}: source {}: {msg}; trying the next target",
            t.name(),
            rec.name
        );
        skipped.push((t.name().to_string(), msg));
        let _ = std::fs::remove_dir_all(&staging);
    }
    let why = skipped
        .iter()
        .map(|(t, e)| format!("{t}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(CodedError::failure(format!(
        "source {}: no target could provide an intact copy ({why})",
        rec.name
    ))
    .into())
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

pub async fn restore(
    cfg: &Config,
    policy: &Policy,
    o: &RestoreOptions,
) -> anyhow::Result<(RestoreResult, ExitCode)> {
    if o.to.exists() && !o.to.is_dir() {
        return Err(CodedError::usage(format!(
            "--to {}: exists and is not a directory",
            o.to.display()
        ))
        .into());
    }
    if o.to.exists() && !dir_is_empty(&o.to) && !o.force {
        return Err(CodedError::usage(format!(
            "--to {}: directory is not empty; choose an empty directory or pass --force (existing source directories are moved aside, not deleted)",
            o.to.display()
        ))
        .into());
    }
    let include = crate::archive::Include::new(&o.include).map_err(CodedError::usage)?;
    let (targets, catalog) = load_catalog(cfg, policy, o.target.as_deref()).await?;
    let entry = catalog.resolve(o.snapshot.as_deref())?;
    let m = &entry.manifest;
    let chosen: Vec<&SourceRecord> = match &o.source {
        Some(name) => vec![m.source(name).ok_or_else(|| {
            CodedError::usage(format!(
                "snapshot {} has no source {name:?} (sources: {})",
                m.id,
                m.sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?],
        None => m.sources.iter().collect(),
    };
    if let Some(inc) = &include {
        check_include(inc, m, &chosen)?;
    }
    tracing::info!(
        "restore policy={} snapshot={} time={} to={}",
        policy.name,
        m.id,
        m.time.to_rfc3339(),
        o.to.display()
    );
    // A restore that fails removes the destination it created (and only that).
    let created = !o.to.exists();
    std::fs::create_dir_all(&o.to)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", o.to.display()))?;
    let res = restore_into(&targets, &catalog, policy, m, &chosen, o, include).await;
    if res.is_err() && created {
        let _ = std::fs::remove_dir_all(&o.to);
    }
    res
}

/// Before downloading anything: does `--include` select any file of the
/// chosen sources? Patterns that select nothing are named; when none selects
/// anything the restore stops (exit 1).
fn check_include(
    inc: &crate::archive::Include,
    m: &archive::Manifest,
    chosen: &[&SourceRecord],
) -> anyhow::Result<()> {
    let probe = inc.fresh();
    let mut any = false;
    for rec in chosen {
        for f in &rec.files {
            any |= probe.matches(Path::new(&f.path), false);
        }
    }
    let unmatched = probe.unmatched();
    if !any {
        return Err(CodedError::failure(format!(
            "--include {}: matches no file of snapshot {} (patterns are gitignore-style and \
             relative to the source root, e.g. `uploads/` or `*.php`); nothing restored",
            o_list(&unmatched),
            m.id
        ))
        .into());
    }
    for p in unmatched {
        tracing::warn!("--include {p:?} matches no file of snapshot {}", m.id);
    }
    Ok(())
}

fn o_list(v: &[String]) -> String {
    v.iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn restore_into(
    targets: &[DynTarget],
    catalog: &Catalog,
    policy: &Policy,
    m: &archive::Manifest,
    chosen: &[&SourceRecord],
    o: &RestoreOptions,
    include: Option<crate::archive::Include>,
) -> anyhow::Result<(RestoreResult, ExitCode)> {
    let to = std::path::absolute(&o.to)?;
    let opts = ExtractOptions {
        include: include.clone(),
        preserve_owner: crate::util::is_root(),
        allow_external_links: o.allow_external_links,
        progress: None,
        hash_files: false,
    };

    let mut result = RestoreResult {
        policy: policy.name.clone(),
        snapshot: m.id.clone(),
        time: m.time.to_rfc3339(),
        sources: Vec::new(),
    };
    for &rec in chosen {
        let final_dir = to.join(&rec.name);
        let (tname, staging, rep, skipped) = fetch_with_failover(
            targets,
            catalog,
            &policy.name,
            m,
            rec,
            &to,
            &opts,
            include.as_ref(),
        )
        .await?;
        let mut moved_aside = None;
        if std::fs::symlink_metadata(&final_dir).is_ok() {
            let aside = to.join(format!(
                "{}.before-restore-{}",
                rec.name,
                chrono::Local::now().format("%Y%m%dT%H%M%S")
            ));
            std::fs::rename(&final_dir, &aside)?;
            tracing::warn!(
                "moved existing {} aside to {}",
                final_dir.display(),
                aside.display()
            );
            moved_aside = Some(aside.display().to_string());
        }
        std::fs::rename(&staging, &final_dir)?;
        tracing::info!(
            "restored source={} from target={} files={} to={}",
            rec.name,
            tname,
            rep.files.len(),
            final_dir.display()
        );
        result.sources.push(RestoredSource {
            name: rec.name.clone(),
            target: tname,
            path: final_dir.display().to_string(),
            files: rep.files.len(),
            bytes: rep.files.values().map(|(s, _)| *s).sum(),
            skipped_targets: skipped,
            moved_aside,
        });
    }
    Ok((result, ExitCode::Success))
}
