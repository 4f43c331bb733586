//! Downloads: the only way backupctl's data comes down from a target, always
//! bounded by what the manifest (or the format) allows and checked against
//! the hash that names it, and failover across targets in policy order.
//!
//! - [`signature`], [`manifest`]: the small objects, read bounded (what a
//!   hostile target serves never reaches memory unbounded); authenticating
//!   them is the catalog's job.
//! - [`unpack`]: an archive streamed into an unpacker (restore, verify),
//!   which checks the archive hash and the manifest's sizes as it goes.
//! - [`download`]: an archive into a local file (sync), size-bounded and
//!   hash-checked.
//! - [`first_intact`]: try targets in order until one serves intact bytes;
//!   [`unpack_first_intact`] is restore's use of it.
//!
//! Not here: what to fetch (the commands decide), where keys are
//! ([`super::layout`]).

use super::catalog::{Catalog, Entry, Holding};
use super::layout::{Hash, Key, PolicyName, SnapshotId};
use crate::archive::beneath::Dir;
use crate::archive::{self, Expected, ExtractError, ExtractOptions, Progress, SourceRecord};
use crate::error::CodedError;
use crate::storage::DynBackend;
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Manifests above this size are refused unread (see
/// [`crate::archive::manifest::MAX_MANIFEST_BYTES`]).
pub const MAX_MANIFEST_BYTES: u64 = crate::archive::manifest::MAX_MANIFEST_BYTES as u64;

/// Why one target's copy was not used.
pub enum FetchError {
    /// Try the next target.
    Skip(String),
    /// Stop: a local problem.
    Fatal(anyhow::Error),
}

/// A manifest listed at `size` bytes is refused unread when too large.
pub fn check_manifest_size(size: u64) -> Result<(), String> {
    if size > MAX_MANIFEST_BYTES {
        return crate::archive::manifest::check_size(size as usize);
    }
    Ok(())
}

/// The signature of snapshot `id`, bounded; None when there is none.
pub async fn signature(
    t: &DynBackend,
    policy: &PolicyName,
    id: &SnapshotId,
) -> Result<Option<Vec<u8>>, String> {
    let key = Key::Signature {
        policy: policy.clone(),
        id: id.clone(),
    };
    match t
        .get_limited(&key.object(), crate::trust::MAX_SIGNATURE_BYTES as u64)
        .await
    {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("reading the signature: {e}")),
    }
}

/// The manifest bytes of snapshot `id`, bounded.
pub async fn manifest(
    t: &DynBackend,
    policy: &PolicyName,
    id: &SnapshotId,
) -> Result<Vec<u8>, String> {
    let key = Key::Manifest {
        policy: policy.clone(),
        id: id.clone(),
    };
    t.get_limited(&key.object(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| e.to_string())
}

fn archive_key(policy: &PolicyName, hash: &str) -> Result<crate::storage::ObjectKey, String> {
    let hash = Hash::new(hash).map_err(|e| e.to_string())?;
    Ok(Key::Archive {
        policy: policy.clone(),
        hash,
    }
    .object())
}

/// Fetch one archive from `t` and unpack it into the directory `dest`,
/// checking the archive hash and, as it streams, the sizes the manifest
/// records (see [`archive::Expected`]). The caller compares the files.
pub async fn unpack(
    t: &DynBackend,
    policy: &PolicyName,
    record: &SourceRecord,
    dest: &Dir,
    opts: &ExtractOptions,
    label: &str,
) -> Result<archive::ExtractReport, FetchError> {
    let mut opts = opts.clone();
    if opts.expect.is_none() {
        opts.expect = Some(Arc::new(
            Expected::from_record(record).map_err(FetchError::Skip)?,
        ));
    }
    let key = archive_key(policy, &record.archive_hash).map_err(FetchError::Skip)?;
    let stream = match t.get(&key).await {
        Ok(s) => s,
        Err(e) => return Err(FetchError::Skip(e.to_string())),
    };
    let progress = Arc::new(Progress::default());
    opts.progress = Some(progress.clone());
    let bar = opts
        .display
        .task(label, Some(record.content_size), progress);
    let reader = stream.into_blocking_read();
    let fd = dest
        .fd
        .try_clone()
        .map_err(|e| FetchError::Fatal(anyhow::anyhow!("{}: {e}", dest.path.display())))?;
    let (hash, path) = (record.archive_hash.clone(), dest.path.clone());
    let res = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsFd;
        archive::extract(reader, Some(&hash), fd.as_fd(), &path, &opts)
    })
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

/// Download `policy`'s archive `hash` from `t` into `dest`, checking its size
/// and BLAKE3 on the way; a download that exceeds the recorded size stops at
/// once.
pub async fn download(
    t: &DynBackend,
    policy: &PolicyName,
    hash: &Hash,
    size: u64,
    dest: &Path,
) -> Result<(), String> {
    let key = Key::Archive {
        policy: policy.clone(),
        hash: hash.clone(),
    };
    let stream = t.get(&key.object()).await.map_err(|e| e.to_string())?;
    // One byte past the recorded size is enough to know it is exceeded.
    let mut reader = stream.into_blocking_read().take(size.saturating_add(1));
    let (dest, hash) = (dest.to_path_buf(), hash.clone());
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
        let got = Hash::of(&h.finalize());
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

/// What [`first_intact`] got, from which target, and the targets skipped
/// before it (with why).
pub struct Fetched<T> {
    pub value: T,
    pub target: String,
    pub skipped: Vec<(String, String)>,
}

/// Why [`first_intact`] got nothing.
pub enum Failover {
    /// A local problem stopped it.
    Fatal(anyhow::Error),
    /// Every target was skipped (with why).
    Exhausted(Vec<(String, String)>),
}

impl Failover {
    /// "t1: why; t2: why", for messages.
    pub fn why(skipped: &[(String, String)]) -> String {
        skipped
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Try `attempt` on each candidate in order until one succeeds. A candidate
/// given as Err is skipped with its reason without being tried; a failed
/// attempt is warned about (`what` names what was fetched) and skipped.
pub async fn first_intact<'a, T, F, Fut>(
    candidates: impl IntoIterator<Item = Result<&'a DynBackend, (String, String)>>,
    what: &str,
    mut attempt: F,
) -> Result<Fetched<T>, Failover>
where
    F: FnMut(&'a DynBackend) -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut skipped = Vec::new();
    for c in candidates {
        let t = match c {
            Ok(t) => t,
            Err(why) => {
                skipped.push(why);
                continue;
            }
        };
        match attempt(t).await {
            Ok(value) => {
                return Ok(Fetched {
                    value,
                    target: t.name().to_string(),
                    skipped,
                })
            }
            Err(FetchError::Skip(msg)) => {
                tracing::warn!("target {}: {what}: {msg}; trying the next target", t.name());
                skipped.push((t.name().to_string(), msg));
            }
            Err(FetchError::Fatal(e)) => return Err(Failover::Fatal(e)),
        }
    }
    Err(Failover::Exhausted(skipped))
}

/// A source unpacked by [`unpack_first_intact`].
pub struct Unpacked {
    /// The fresh hidden directory (mode 0700) holding the files.
    pub dir: PathBuf,
    pub report: archive::ExtractReport,
}

/// Fetch and unpack one source's archive of snapshot `entry` from the first
/// target (policy order) that holds the snapshot and serves intact bytes,
/// into a fresh hidden directory (mode 0700) in `parent`, and check the
/// files against the manifest (with `include`, only the selected ones).
pub async fn unpack_first_intact(
    catalog: &Catalog,
    entry: &Entry,
    rec: &SourceRecord,
    parent: &Dir,
    opts: &ExtractOptions,
    include: Option<&crate::archive::Include>,
) -> anyhow::Result<Fetched<Unpacked>> {
    let mut opts = opts.clone();
    opts.expect =
        Some(Arc::new(Expected::from_record(rec).map_err(|e| {
            CodedError::failure(format!("source {}: {e}", rec.name))
        })?));
    let candidates: Vec<_> = catalog
        .targets
        .iter()
        .map(|st| {
            let name = st.name().to_string();
            match catalog.holding(st, entry) {
                Holding::Holds => Ok(&st.target),
                Holding::Unreachable(_) => Err((name, "unreachable".to_string())),
                Holding::NotUsed(Some(d)) => {
                    Err((name, format!("its copy is not used: {}", d.reason)))
                }
                Holding::Absent | Holding::NotUsed(None) => {
                    Err((name, "does not hold this snapshot".to_string()))
                }
            }
        })
        .collect();
    let attempt = |t: &DynBackend| {
        let (t, opts) = (t.clone(), &opts);
        async move {
            let staging_dir = parent.create_fresh(".backupctl-restore-").map_err(|e| {
                FetchError::Fatal(anyhow::anyhow!(
                    "creating a staging directory in {}: {e}",
                    parent.path.display()
                ))
            })?;
            let dir = staging_dir.path.clone();
            let r = unpack(&t, &catalog.policy, rec, &staging_dir, opts, &rec.name).await;
            drop(staging_dir);
            let r = r.and_then(|report| {
                let problems = archive::reader::compare_files(&rec.files, &report.files, include);
                if problems.is_empty() {
                    Ok(report)
                } else {
                    Err(FetchError::Skip(format!(
                        "files do not match the manifest: {}",
                        problems.join("; ")
                    )))
                }
            });
            if r.is_err() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            r.map(|report| Unpacked { dir, report })
        }
    };
    match first_intact(candidates, &format!("source {}", rec.name), attempt).await {
        Ok(f) => Ok(f),
        Err(Failover::Fatal(e)) => Err(e),
        Err(Failover::Exhausted(skipped)) => Err(CodedError::failure(format!(
            "source {}: no target could provide an intact copy ({})",
            rec.name,
            Failover::why(&skipped)
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_larger_than_recorded_stops_at_the_recorded_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("p/archives")).unwrap();
        std::fs::write(root.join(crate::storage::MARKER_NAME), "{}\n").unwrap();
        let hash = "a".repeat(64);
        // 16 MiB served where 1000 bytes are recorded.
        std::fs::write(
            root.join(format!("p/archives/{hash}.tar.zst")),
            vec![7u8; 16 << 20],
        )
        .unwrap();
        let spec = crate::config::FsTargetSpec {
            path: root,
            location: "here".into(),
            create: false,
        };
        let t: DynBackend = std::sync::Arc::new(crate::storage::fs::FsBackend::new("t", &spec));
        let dest = dir.path().join("download");
        let (p, h) = (PolicyName::new("p").unwrap(), Hash::new(&hash).unwrap());
        let e = download(&t, &p, &h, 1000, &dest).await.unwrap_err();
        assert!(e.contains("more than the recorded 1000 bytes"), "{e}");
        assert!(std::fs::metadata(&dest).unwrap().len() <= 1000);
    }
}
