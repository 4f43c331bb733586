//! `backupctl restore`: unpack a snapshot's sources into a directory, from
//! the first target (in the policy's order) that serves intact bytes.
//!
//! Each source is unpacked into a fresh hidden staging directory (mode 0700)
//! inside `--to`, through its descriptor, and renamed into place only after
//! its archive hash and every file record check out. Any problem with a copy
//! (unreachable, damaged, oversized, refused or unrestorable entries) skips
//! that target with a warning naming it, and the next one is tried; only a
//! local problem writing the destination stops the restore. With `--force`,
//! an existing `<to>/<source>` is moved aside (never deleted) before the
//! restored tree takes its place. As root, ownership (and with it
//! setuid/setgid bits) is restored unless `--no-same-owner`.

use crate::archive::beneath::Dir;
use crate::archive::{self, ExtractOptions, SourceRecord};
use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::ops::load_catalog;
use crate::repo::{fetch, Catalog, Entry};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub snapshot: Option<String>,
    pub to: PathBuf,
    pub source: Option<String>,
    pub target: Option<String>,
    pub include: Vec<String>,
    pub force: bool,
    /// Do not restore ownership even as root (setuid/setgid bits are then
    /// dropped, as they are for any restore that does not restore owners).
    pub no_same_owner: bool,
    /// Where progress is shown (hidden by default).
    pub display: crate::progress::Handle,
}

#[derive(Debug, Serialize)]
pub struct RestoredSource {
    pub name: String,
    /// The target that served the stream (its first range, at least).
    pub target: String,
    /// Other targets that served ranges the first could not serve intact.
    pub also_from: Vec<String>,
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

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

pub async fn restore(
    cfg: &Config,
    policy: &Policy,
    o: &RestoreOptions,
) -> crate::error::Result<(RestoreResult, ExitCode)> {
    if o.to.exists() && !o.to.is_dir() {
        return Err(crate::error::Error::usage(format!(
            "--to {}: exists and is not a directory",
            o.to.display()
        )));
    }
    if o.to.exists() && !dir_is_empty(&o.to) && !o.force {
        return Err(crate::error::Error::usage(format!(
            "--to {}: directory is not empty; choose an empty directory or pass --force (existing source directories are moved aside, not deleted)",
            o.to.display()
        )));
    }
    let include = crate::archive::Include::new(&o.include).map_err(crate::error::Error::usage)?;
    let catalog = load_catalog(cfg, policy, o.target.as_deref()).await?;
    let entry = catalog.resolve(o.snapshot.as_deref())?;
    let m = &entry.manifest;
    let chosen: Vec<&SourceRecord> = match &o.source {
        Some(name) => vec![m.source(name).ok_or_else(|| {
            crate::error::Error::usage(format!(
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
        let mut indexes = Vec::new();
        for rec in &chosen {
            indexes.push(fetch::index_of(&catalog, entry, rec).await?);
        }
        check_include(inc, m, &indexes)?;
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
    std::fs::create_dir_all(&o.to).map_err(|e| crate::err!("creating {}: {e}", o.to.display()))?;
    let res = restore_into(&catalog, entry, policy, &chosen, o, include, &cfg.state_dir).await;
    if res.is_err() && created {
        let _ = crate::archive::beneath::remove_tree(&o.to);
    }
    res
}

/// Before downloading anything: does `--include` select any file of the
/// chosen sources? Patterns that select nothing are named; when none selects
/// anything the restore stops (exit 1).
fn check_include(
    inc: &crate::archive::Include,
    m: &archive::Manifest,
    indexes: &[Vec<archive::manifest::FileRecord>],
) -> crate::error::Result<()> {
    let probe = inc.fresh();
    let mut any = false;
    for index in indexes {
        for f in index.iter().filter(|f| f.is_file()) {
            if let Ok(p) = f.path_bytes().map(|p| p.into_owned()) {
                use std::os::unix::ffi::OsStrExt;
                any |= probe.matches(Path::new(std::ffi::OsStr::from_bytes(&p)), false);
            }
        }
    }
    let unmatched = probe.unmatched();
    if !any {
        return Err(crate::error::Error::failure(format!(
            "--include {}: matches no file of snapshot {} (patterns are gitignore-style and \
             relative to the source root, e.g. `uploads/` or `*.php`); nothing restored",
            o_list(&unmatched),
            m.id
        )));
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
    catalog: &Catalog,
    entry: &Entry,
    policy: &Policy,
    chosen: &[&SourceRecord],
    o: &RestoreOptions,
    include: Option<crate::archive::Include>,
    state_dir: &Path,
) -> crate::error::Result<(RestoreResult, ExitCode)> {
    let m = &entry.manifest;
    let to = std::path::absolute(&o.to)?;
    let to_dir = Dir::open(&to).map_err(|e| crate::err!("opening {}: {e}", to.display()))?;
    let opts = ExtractOptions {
        include: include.clone(),
        preserve_owner: crate::util::is_root() && !o.no_same_owner,
        apply_root: true,
        progress: None,
        display: o.display.clone(),
        hash_files: false,
        expect: None,
    };

    let mut result = RestoreResult {
        policy: policy.name.clone(),
        snapshot: m.id.clone(),
        time: m.time.to_rfc3339(),
        sources: Vec::new(),
    };
    for &rec in chosen {
        let final_dir = to.join(&rec.name);
        let fetch::Fetched {
            value:
                fetch::Unpacked {
                    dir: staging,
                    report: rep,
                    damaged,
                    served,
                },
            target: tname,
            skipped,
        } = fetch::unpack_first_intact(catalog, entry, rec, &to_dir, &opts, include.as_ref(), None)
            .await?;
        crate::ops::verify::record_damaged(state_dir, &policy.name, &damaged);
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
        let also_from = served.into_iter().filter(|t| *t != tname).collect();
        result.sources.push(RestoredSource {
            name: rec.name.clone(),
            also_from,
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
