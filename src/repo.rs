//! The layout of snapshots on one target, and a catalog merging what all
//! targets hold.
//!
//! ```text
//! <root>/RESTORE-README.txt                   how to restore by hand
//! <root>/<policy>/archives/<blake3>.tar.zst   one per source version
//! <root>/<policy>/archives/<blake3>.b3sums    per-file hashes, b3sum --check format
//! <root>/<policy>/snapshots/<id>.json         the manifest, written last
//! ```
//! A snapshot is *complete* on a target when its manifest and every archive it
//! names (with the recorded size) are there.

use crate::archive::Manifest;
use crate::target::{DynTarget, TargetError};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap};

pub const RESTORE_FILE: &str = "RESTORE-README.txt";

pub fn manifest_key(policy: &str, id: &str) -> String {
    format!("{policy}/snapshots/{id}.json")
}

pub fn archive_key(policy: &str, hash: &str) -> String {
    format!("{policy}/archives/{hash}.tar.zst")
}

pub fn b3sums_key(policy: &str, hash: &str) -> String {
    format!("{policy}/archives/{hash}.b3sums")
}

/// Read the manifest at `key`, refusing (without reading further) one larger
/// than [`crate::archive::manifest::MAX_MANIFEST_BYTES`].
pub async fn read_manifest(t: &DynTarget, key: &str) -> Result<Vec<u8>, String> {
    use crate::archive::manifest::{check_size, MAX_MANIFEST_BYTES};
    use crate::target::ByteStream;
    let limit = MAX_MANIFEST_BYTES as u64 + 1;
    let stream = t.get(key).await.map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    let read = match stream {
        ByteStream::File(f) => tokio::task::spawn_blocking(move || {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut data).map(|_| data)
        })
        .await
        .expect("manifest read task panicked"),
        ByteStream::Async(r) => {
            use tokio::io::AsyncReadExt;
            r.take(limit).read_to_end(&mut data).await.map(|_| data)
        }
    };
    let data = read.map_err(|e| format!("target {}: reading {key}: {e}", t.name()))?;
    check_size(data.len())?;
    Ok(data)
}

/// What one target holds for one policy (one listing call).
#[derive(Debug, Default, Clone)]
pub struct TargetView {
    pub snapshots: Vec<String>,
    /// archive hash -> size
    pub archives: HashMap<String, u64>,
    /// other keys (b3sums, stray files) -> size
    pub others: HashMap<String, u64>,
}

impl TargetView {
    /// Is every archive of `m` present with its recorded size?
    pub fn missing_archives(&self, m: &Manifest) -> Vec<String> {
        m.sources
            .iter()
            .filter(|s| self.archives.get(&s.archive_hash) != Some(&s.archive_size))
            .map(|s| format!("{} ({})", s.name, &s.archive_hash[..12]))
            .collect()
    }
}

pub async fn view(t: &DynTarget, policy: &str) -> Result<TargetView, TargetError> {
    let prefix = format!("{policy}/");
    let mut v = TargetView::default();
    for o in t.list(&prefix).await? {
        let rest = &o.key[prefix.len()..];
        if let Some(id) = rest
            .strip_prefix("snapshots/")
            .and_then(|r| r.strip_suffix(".json"))
        {
            if !id.contains('/') {
                v.snapshots.push(id.to_string());
                continue;
            }
        }
        if let Some(h) = rest
            .strip_prefix("archives/")
            .and_then(|r| r.strip_suffix(".tar.zst"))
        {
            if crate::archive::manifest::is_hash(h) {
                v.archives.insert(h.to_string(), o.size);
                continue;
            }
        }
        v.others.insert(o.key.clone(), o.size);
    }
    v.snapshots.sort();
    Ok(v)
}

/// One snapshot, merged across targets.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest: Manifest,
    /// Targets (policy order) where the snapshot is complete.
    pub complete_on: Vec<String>,
    /// Targets holding the manifest but missing archives, with what is missing.
    pub incomplete_on: Vec<(String, String)>,
}

/// Per target: its view, or why it could not be listed.
pub struct TargetState {
    pub target: DynTarget,
    pub view: Result<TargetView, String>,
}

/// All snapshots of a policy on the given targets.
pub struct Catalog {
    pub policy: String,
    /// Oldest first (by instant, then id).
    pub entries: Vec<Entry>,
    pub targets: Vec<TargetState>,
    /// Manifests that could not be read or parsed: (target, id, error).
    pub bad_manifests: Vec<(String, String, String)>,
}

impl Catalog {
    pub async fn load(policy: &str, targets: &[DynTarget]) -> Catalog {
        let views = futures::future::join_all(targets.iter().map(|t| view(t, policy))).await;
        let mut states = Vec::new();
        // id -> targets holding a manifest, in order
        let mut holders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (t, v)) in targets.iter().zip(views).enumerate() {
            match v {
                Ok(v) => {
                    for id in &v.snapshots {
                        holders.entry(id.clone()).or_default().push(i);
                    }
                    states.push(TargetState {
                        target: t.clone(),
                        view: Ok(v),
                    });
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    states.push(TargetState {
                        target: t.clone(),
                        view: Err(e.to_string()),
                    });
                }
            }
        }
        // Read each manifest from the first target that serves a valid one.
        let reads = stream::iter(holders.into_iter().map(|(id, idx)| {
            let states = &states;
            async move {
                let mut errors = Vec::new();
                let mut manifest = None;
                for &i in &idx {
                    let t = &states[i].target;
                    match read_manifest(t, &manifest_key(policy, &id))
                        .await
                        .and_then(|b| Manifest::parse(&b))
                    {
                        Ok(m) if m.id == id && m.policy == policy => {
                            manifest = Some(m);
                            break;
                        }
                        Ok(_) => errors.push((
                            t.name().to_string(),
                            id.clone(),
                            "manifest names another snapshot".to_string(),
                        )),
                        Err(e) => errors.push((t.name().to_string(), id.clone(), e)),
                    }
                }
                (id, idx, manifest, errors)
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for (_id, idx, manifest, errors) in reads {
            bad.extend(errors.iter().cloned());
            let Some(m) = manifest else { continue };
            let mut complete_on = Vec::new();
            let mut incomplete_on = Vec::new();
            for &i in &idx {
                let name = states[i].target.name().to_string();
                if errors.iter().any(|(t, _, _)| *t == name) {
                    incomplete_on.push((name, "manifest unreadable".to_string()));
                    continue;
                }
                let Ok(v) = &states[i].view else { continue };
                let missing = v.missing_archives(&m);
                if missing.is_empty() {
                    complete_on.push(name);
                } else {
                    incomplete_on.push((name, format!("missing archives: {}", missing.join(", "))));
                }
            }
            entries.push(Entry {
                manifest: m,
                complete_on,
                incomplete_on,
            });
        }
        entries.sort_by(|a, b| {
            a.manifest
                .time
                .cmp(&b.manifest.time)
                .then_with(|| a.manifest.id.cmp(&b.manifest.id))
        });
        Catalog {
            policy: policy.to_string(),
            entries,
            targets: states,
            bad_manifests: bad,
        }
    }

    /// "latest"/None, an exact id, or a unique id prefix. Not found is a
    /// failure (exit 1); an ambiguous prefix a usage error (exit 2).
    pub fn resolve(&self, spec: Option<&str>) -> Result<&Entry, crate::error::CodedError> {
        use crate::error::CodedError;
        match spec {
            None | Some("latest") => self
                .entries
                .iter()
                .rev()
                .find(|e| !e.complete_on.is_empty())
                .ok_or_else(|| {
                    CodedError::failure(format!(
                        "policy {}: no complete snapshot on any reachable target",
                        self.policy
                    ))
                }),
            Some(s) => {
                if let Some(e) = self.entries.iter().find(|e| e.manifest.id == s) {
                    return Ok(e);
                }
                let matches: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| e.manifest.id.starts_with(s))
                    .collect();
                match matches.len() {
                    1 => Ok(matches[0]),
                    0 => Err(CodedError::failure(format!(
                        "policy {}: no snapshot {s:?} on any reachable target",
                        self.policy
                    ))),
                    n => Err(CodedError::usage(format!(
                        "policy {}: {s:?} matches {n} snapshots ({}); give more of the id",
                        self.policy,
                        matches
                            .iter()
                            .take(5)
                            .map(|e| e.manifest.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    pub fn unreachable(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|s| {
                s.view
                    .as_ref()
                    .err()
                    .map(|e| (s.target.name().to_string(), e.clone()))
            })
            .collect()
    }
}

/// The plain-text restore instructions stored at each target's root.
pub fn restore_instructions() -> String {
    format!(
        r#"HOW TO RESTORE THESE BACKUPS BY HAND (without backupctl)
==========================================================

Written by backupctl {version}. Everything needed to restore is in this
directory (or bucket prefix); no local state from the backed-up machine is needed.

Layout
------
  <policy>/snapshots/<snapshot-id>.json    one manifest per snapshot (JSON):
                                           time, host, and per source its archive
                                           hash and the BLAKE3 of every file
  <policy>/archives/<hash>.tar.zst         one plain tar archive, zstd-compressed,
                                           per source and version; <hash> is the
                                           BLAKE3 of the .tar.zst file itself
  <policy>/archives/<hash>.b3sums          BLAKE3 of every file in that archive,
                                           in `b3sum --check` format

Snapshot ids start with the UTC time they were taken (YYYYMMDDTHHMMSSZ), so the
newest manifest sorts last.

Steps (tools: zstd, tar, b3sum; Debian/Ubuntu: apt-get install zstd tar b3sum)
-----
1. Pick a snapshot and find the archive of the source you need:
     ls <policy>/snapshots/
     grep -E '"name"|"archive_hash"' <policy>/snapshots/<snapshot-id>.json
   (each source block lists "name" and then its "archive_hash").

2. Check the archive is intact; the printed hash must equal the file name:
     b3sum <policy>/archives/<hash>.tar.zst

3. Unpack it into an empty directory:
     mkdir -p /restore/<source>
     zstd -d -c <policy>/archives/<hash>.tar.zst | tar -xpf - -C /restore/<source>
   (add --numeric-owner when running as root to restore ownership).

4. Check every file against its recorded BLAKE3:
     cd /restore/<source> && b3sum --check /path/to/<policy>/archives/<hash>.b3sums
   (b3sum cannot check names that are not valid UTF-8: they are left out of
   .b3sums; the manifest lists them with "path_b64", their exact bytes in base64.)

Database sources hold dump files: PostgreSQL custom-format dumps (*.pgdump) load
with pg_restore, plain dumps (*.sql) with psql or mysql, SQLite files (*.db)
open directly. A large dump may be split into parts NAME.part-000001,
NAME.part-000002, ...: concatenate them in order (cat NAME.part-* > NAME).

Snapshot manifests are written last: a snapshot whose manifest exists here is
complete on this target.
"#,
        version = env!("CARGO_PKG_VERSION")
    )
}
