//! Downloads: the only way backupctl's data comes down from a target, always
//! bounded by what the manifest (or the format) allows and checked against
//! the hash that names it, and failover across targets in policy order.
//!
//! - [`signature`], [`manifest`]: the small objects, read bounded (what a
//!   hostile target serves never reaches memory unbounded); authenticating
//!   them is the catalog's job.
//! - [`list`]: an extent list, bounded and checked against its name.
//! - [`Packs`]: a target's packs as a [`crate::pack::reader::PackSource`]:
//!   pack indexes checked against the pack's name (and cached locally by
//!   name), ranged reads of frames.
//! - [`unpack`]: a source's tar stream reassembled from its extents (every
//!   chunk checked, each extent from the first target that serves it intact)
//!   into an unpacker (restore, verify), which checks the stream's hash and
//!   the file index's sizes as it goes.
//! - [`pack`], [`list_bytes`]: whole objects for copying (sync, catch-up),
//!   checked against their names.
//! - [`first_intact`]: try targets in order until one serves intact bytes;
//!   [`unpack_first_intact`] is restore's use of it.
//!
//! Not here: what to fetch (the commands decide), where keys are
//! ([`super::layout`]).

use super::catalog::{Catalog, Entry, Holding};
use super::layout::{Hash, Key, PolicyName, SnapshotId};
use crate::archive::beneath::Dir;
use crate::archive::manifest::{FileRecord, StreamRef};
use crate::archive::{self, Expected, ExtractError, ExtractOptions, Progress, SourceRecord};
use crate::pack::extents::ExtentList;
use crate::pack::format::{decode_frame, PackIndex};
use crate::pack::reader::{PackSource, ReadReport, StreamReader};
use crate::storage::DynBackend;
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Manifests above this size are refused unread (see
/// [`crate::archive::manifest::MAX_MANIFEST_BYTES`]).
pub const MAX_MANIFEST_BYTES: u64 = crate::archive::manifest::MAX_MANIFEST_BYTES as u64;

/// Why one target's copy was not used.
pub enum FetchError {
    /// Try the next target.
    Skip(String),
    /// The data read was refused (with which packs failed where): try the
    /// next target.
    Damaged(String, ReadReport),
    /// Stop: a local problem.
    Fatal(crate::error::Error),
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

/// The extent list `hash` of `policy` from `t`: at most `size` bytes (what
/// the signed manifest records), hashing to its name, parsed.
pub async fn list(
    t: &DynBackend,
    policy: &PolicyName,
    hash: &Hash,
    size: u64,
) -> Result<ExtentList, String> {
    let bytes = list_bytes(t, policy, hash, size).await?;
    ExtentList::parse(&bytes)
}

/// The bytes of extent list `hash`, bounded and checked against its name.
pub async fn list_bytes(
    t: &DynBackend,
    policy: &PolicyName,
    hash: &Hash,
    size: u64,
) -> Result<Vec<u8>, String> {
    let key = Key::List {
        policy: policy.clone(),
        hash: hash.clone(),
    };
    let limit = size.min(crate::pack::extents::MAX_LIST_BYTES);
    let bytes = t
        .get_limited(&key.object(), limit)
        .await
        .map_err(|e| e.to_string())?;
    if Hash::of(&blake3::hash(&bytes)) != *hash {
        return Err(format!(
            "extent list {hash} does not hash to its name (damaged or altered)"
        ));
    }
    Ok(bytes)
}

/// A whole pack from `t`, checked: its index hashes to its name, and every
/// frame decompresses to its chunk id (what `sync` copies and `verify
/// --read-all` re-hashes).
pub async fn pack(t: &DynBackend, policy: &PolicyName, name: &Hash) -> Result<Vec<u8>, String> {
    let key = Key::Pack {
        policy: policy.clone(),
        name: name.clone(),
    };
    let bytes = t
        .get_limited(&key.object(), crate::pack::format::PACK_MAX)
        .await
        .map_err(|e| e.to_string())?;
    let name = name.clone();
    tokio::task::spawn_blocking(move || {
        check_pack(&bytes, &name)?;
        Ok(bytes)
    })
    .await
    .expect("pack check panicked")
}

/// Every byte of a pack checked against its name.
pub fn check_pack(bytes: &[u8], name: &Hash) -> Result<(), String> {
    let idx = PackIndex::from_tail(bytes, bytes.len() as u64, name)
        .map_err(|e| e.to_string())?
        .map_err(|_| "pack shorter than its index".to_string())?;
    for e in &idx.entries {
        let f = &bytes[e.offset as usize..(e.offset + e.clen) as usize];
        decode_frame(f, e, 0).map_err(|x| x.to_string())?;
    }
    Ok(())
}

/// Pack indexes are kept here, by name (they are checked against the name
/// each time they are read, so the cache needs no trust).
fn cache_path(cache: &Path, name: &str) -> PathBuf {
    cache.join(&name[..2]).join(format!("{name}.idx"))
}

/// Drop pack `name`'s index from the local cache (its pack is gone).
pub fn forget_cached_index(cache: &Path, name: &Hash) {
    let _ = std::fs::remove_file(cache_path(cache, name));
}

/// One target's packs, read from a blocking thread.
pub struct Packs {
    target: DynBackend,
    policy: PolicyName,
    runtime: tokio::runtime::Handle,
    cache: Option<PathBuf>,
    indexes: std::sync::Mutex<HashMap<String, Arc<PackIndex>>>,
}

impl Packs {
    /// `cache`: a local directory for pack indexes (the state dir's cache).
    pub fn new(target: &DynBackend, policy: &PolicyName, cache: Option<&Path>) -> Arc<Packs> {
        Arc::new(Packs {
            target: target.clone(),
            policy: policy.clone(),
            runtime: tokio::runtime::Handle::current(),
            cache: cache.map(Path::to_path_buf),
            indexes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, name: &str) -> Result<crate::storage::ObjectKey, String> {
        Ok(Key::Pack {
            policy: self.policy.clone(),
            name: Hash::new(name).map_err(|e| e.to_string())?,
        }
        .object())
    }

    /// The index of pack `name` (blocking; from the cache or the target).
    pub fn index_blocking(&self, name: &str) -> Result<Arc<PackIndex>, String> {
        if let Some(i) = self.indexes.lock().expect("indexes").get(name) {
            return Ok(i.clone());
        }
        let idx = Arc::new(self.load_index(name)?);
        self.indexes
            .lock()
            .expect("indexes")
            .insert(name.to_string(), idx.clone());
        Ok(idx)
    }

    /// The index of pack `name` from the local cache or the target (checked
    /// against the name), not kept in memory (blocking).
    pub fn load_index(&self, name: &str) -> Result<PackIndex, String> {
        // The name is validated before it names a cache file or a key.
        let hash = Hash::new(name).map_err(|e| e.to_string())?;
        if let Some(c) = &self.cache {
            if let Ok(b) = std::fs::read(cache_path(c, &hash)) {
                if b.len() >= 8 {
                    let len = u64::from_le_bytes(b[..8].try_into().unwrap());
                    if let Ok(Ok(idx)) = PackIndex::from_tail(&b[8..], len, &hash) {
                        return Ok(idx);
                    }
                }
            }
        }
        let key = Key::Pack {
            policy: self.policy.clone(),
            name: hash.clone(),
        }
        .object();
        let t = self.target.clone();
        let (len, tail, idx) = self.runtime.block_on(async move {
            let len = t
                .stat(&key)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "pack missing".to_string())?;
            if len > crate::pack::format::PACK_MAX {
                return Err("pack larger than any pack".to_string());
            }
            let mut want = len.min(64 << 10);
            loop {
                let tail = t
                    .get_range(&key, len - want, want)
                    .await
                    .map_err(|e| e.to_string())?
                    .read_to_end_bounded(want)
                    .await
                    .map_err(|e| e.to_string())?;
                match PackIndex::from_tail(&tail, len, &hash).map_err(|e| e.to_string())? {
                    Ok(idx) => return Ok((len, tail, idx)),
                    Err(need) if (need as u64) > want && (need as u64) <= len => want = need as u64,
                    Err(_) => return Err("malformed pack index".to_string()),
                }
            }
        })?;
        if let Some(c) = &self.cache {
            let p = cache_path(c, name);
            if let Some(dir) = p.parent() {
                let _ = crate::util::create_private_dir_all(dir);
            }
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(&tail);
            // Private like everything in the state directory (0600).
            let _ = crate::util::create_private_file(&p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &b));
        }
        Ok(idx)
    }
}

impl PackSource for Packs {
    fn name(&self) -> &str {
        self.target.name()
    }
    fn index(&self, pack: &str) -> Result<Arc<PackIndex>, String> {
        self.index_blocking(pack)
    }
    fn read(&self, pack: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), String> {
        let key = self.key(pack)?;
        let t = self.target.clone();
        self.runtime.block_on(async move {
            let r = t
                .get_range(&key, offset, len)
                .await
                .map_err(|e| e.to_string())?;
            r.read_into_bounded(len, buf)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A source's file index (its records, in stream order), reassembled from
/// `sources` (tried in order per extent), bounded by the recorded size.
pub async fn read_index(
    sources: &[Arc<Packs>],
    policy: &PolicyName,
    rec: &SourceRecord,
) -> Result<Vec<FileRecord>, String> {
    let list = list_from(sources, policy, &rec.index).await?;
    let srcs: Vec<Arc<dyn PackSource>> = sources
        .iter()
        .map(|p| p.clone() as Arc<dyn PackSource>)
        .collect();
    let (size, want) = (rec.index.size, rec.index.blake3.clone());
    tokio::task::spawn_blocking(move || {
        let mut r = StreamReader::new(list, srcs, size);
        let mut text = Vec::new();
        r.read_to_end(&mut text).map_err(|e| e.to_string())?;
        let (hash, len) = r.finish().map_err(|e| e.to_string())?;
        if hash != want || len != size {
            return Err("the file index does not match its hash in the manifest".to_string());
        }
        let mut out = Vec::new();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let rec: FileRecord = serde_json::from_slice(line)
                .map_err(|e| format!("file index: invalid record: {e}"))?;
            rec.path_bytes()?;
            out.push(rec);
        }
        Ok(out)
    })
    .await
    .expect("index task panicked")
}

/// A stream's extent list from the first of `sources` that serves it.
async fn list_from(
    sources: &[Arc<Packs>],
    policy: &PolicyName,
    st: &StreamRef,
) -> Result<ExtentList, String> {
    let hash = Hash::new(&st.list).map_err(|e| e.to_string())?;
    let mut why = Vec::new();
    for s in sources {
        match list(&s.target, policy, &hash, st.list_size).await {
            Ok(l) => return Ok(l),
            Err(e) => why.push(format!("{}: {e}", s.target.name())),
        }
    }
    Err(format!("extent list {hash}: {}", why.join("; ")))
}

/// Reassemble one source's tar stream from `sources` (tried in order for
/// each extent) and unpack it into the directory `dest`, checking the
/// stream's hash and the file index's sizes as it goes. Returns the report,
/// the file index and the targets that served it. The caller compares files.
pub async fn unpack(
    sources: &[Arc<Packs>],
    policy: &PolicyName,
    record: &SourceRecord,
    dest: &Dir,
    opts: &ExtractOptions,
    label: &str,
) -> Result<Unpack, FetchError> {
    let index = read_index(sources, policy, record)
        .await
        .map_err(FetchError::Skip)?;
    let mut opts = opts.clone();
    opts.expect = Some(Arc::new(
        Expected::from_index(record, &index).map_err(FetchError::Skip)?,
    ));
    let list = list_from(sources, policy, &record.stream)
        .await
        .map_err(FetchError::Skip)?;
    let progress = Arc::new(Progress::default());
    opts.progress = Some(progress.clone());
    let bar = opts
        .display
        .task(label, Some(record.content_size), progress);
    let fd = dest
        .fd
        .try_clone()
        .map_err(|e| FetchError::Fatal(crate::err!("{}: {e}", dest.path.display())))?;
    let srcs: Vec<Arc<dyn PackSource>> = sources
        .iter()
        .map(|p| p.clone() as Arc<dyn PackSource>)
        .collect();
    let (hash, path, size) = (
        record.stream.blake3.clone(),
        dest.path.clone(),
        record.stream.size,
    );
    let res = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsFd;
        let reader = StreamReader::new(list, srcs, size);
        let read = reader.report_handle();
        let r = archive::extract(reader, Some(&hash), fd.as_fd(), &path, &opts);
        let read = read.lock().expect("report").clone();
        (r, read)
    })
    .await
    .expect("extract task panicked");
    drop(bar);
    match res {
        (Ok(report), read) => Ok(Unpack {
            report,
            index,
            read,
        }),
        (Err(ExtractError::Io { path, source }), _) => {
            Err(FetchError::Fatal(crate::err!("writing {path}: {source}")))
        }
        (Err(e), read) => Err(FetchError::Damaged(e.to_string(), read)),
    }
}

/// One source unpacked by [`unpack`].
pub struct Unpack {
    pub report: archive::ExtractReport,
    /// The file index the files were checked against.
    pub index: Vec<FileRecord>,
    /// Which targets served it, and which packs failed where.
    pub read: ReadReport,
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
    Fatal(crate::error::Error),
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
            Err(FetchError::Skip(msg) | FetchError::Damaged(msg, _)) => {
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
    /// (target, pack) pairs that failed and were read elsewhere.
    pub damaged: Vec<(String, String)>,
    /// Every target that served part of the stream, in first-use order
    /// (extents fail over one by one; the first is [`Fetched::target`]).
    pub served: Vec<String>,
}

/// The targets holding `entry` complete, as pack sources (policy order),
/// and the others with why they are not used.
pub fn sources_for(
    catalog: &Catalog,
    entry: &Entry,
    cache: Option<&Path>,
) -> (Vec<Arc<Packs>>, Vec<(String, String)>) {
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    for st in &catalog.targets {
        let name = st.name().to_string();
        match catalog.holding(st, entry) {
            Holding::Holds if entry.is_complete_on(&name) => {
                sources.push(Packs::new(&st.target, &catalog.policy, cache))
            }
            Holding::Holds => skipped.push((
                name,
                "holds the snapshot incompletely (see `list`)".to_string(),
            )),
            Holding::Unreachable(_) => skipped.push((name, "unreachable".to_string())),
            Holding::NotUsed(Some(d)) => {
                skipped.push((name, format!("its copy is not used: {}", d.reason)))
            }
            Holding::Absent | Holding::NotUsed(None) => {
                skipped.push((name, "does not hold this snapshot".to_string()))
            }
        }
    }
    (sources, skipped)
}

/// The file index of source `rec` of `entry`, from the targets holding it
/// complete (failing over per extent).
pub async fn index_of(
    catalog: &Catalog,
    entry: &Entry,
    rec: &SourceRecord,
) -> crate::error::Result<Vec<FileRecord>> {
    let (sources, skipped) = sources_for(catalog, entry, None);
    if sources.is_empty() {
        return Err(crate::error::Error::failure(format!(
            "source {}: no target holds the snapshot complete ({})",
            rec.name,
            Failover::why(&skipped)
        )));
    }
    read_index(&sources, &catalog.policy, rec)
        .await
        .map_err(|e| crate::error::Error::failure(format!("source {}: file index: {e}", rec.name)))
}

/// Unpack one source of snapshot `entry` into a fresh hidden directory (mode
/// 0700) in `parent`, each extent from the first target (policy order) that
/// holds the snapshot and serves it intact, and check the files against the
/// file index (with `include`, only the selected ones). `target` is the
/// first target that served it; `skipped` the targets not used, with why.
pub async fn unpack_first_intact(
    catalog: &Catalog,
    entry: &Entry,
    rec: &SourceRecord,
    parent: &Dir,
    opts: &ExtractOptions,
    include: Option<&crate::archive::Include>,
    cache: Option<&Path>,
) -> crate::error::Result<Fetched<Unpacked>> {
    let (sources, mut skipped) = sources_for(catalog, entry, cache);
    if sources.is_empty() {
        return Err(crate::error::Error::failure(format!(
            "source {}: no target could provide an intact copy ({})",
            rec.name,
            Failover::why(&skipped)
        )));
    }
    let staging_dir = parent.create_fresh(".backupctl-restore-").map_err(|e| {
        crate::err!(
            "creating a staging directory in {}: {e}",
            parent.path.display()
        )
    })?;
    let dir = staging_dir.path.clone();
    let r = unpack(
        &sources,
        &catalog.policy,
        rec,
        &staging_dir,
        opts,
        &rec.name,
    )
    .await;
    drop(staging_dir);
    let r = match r {
        Ok(u) => {
            let problems = archive::reader::compare_files(&u.index, &u.report.files, include);
            if problems.is_empty() {
                Ok((u.report, u.read))
            } else {
                Err(FetchError::Skip(format!(
                    "files do not match the file index: {}",
                    problems.join("; ")
                )))
            }
        }
        Err(e) => Err(e),
    };
    match r {
        Ok((report, read)) => {
            let target = read.served.first().cloned().unwrap_or_default();
            for s in &sources {
                if !read.served.iter().any(|n| n == s.target.name()) {
                    skipped.push((s.target.name().to_string(), "not needed".to_string()));
                }
            }
            Ok(Fetched {
                value: Unpacked {
                    dir,
                    report,
                    damaged: read.failed,
                    served: read.served.clone(),
                },
                target,
                skipped,
            })
        }
        Err(FetchError::Fatal(e)) => {
            let _ = crate::archive::beneath::remove_tree(&dir);
            Err(e)
        }
        Err(FetchError::Skip(msg) | FetchError::Damaged(msg, _)) => {
            let _ = crate::archive::beneath::remove_tree(&dir);
            Err(crate::error::Error::failure(format!(
                "source {}: no target could provide an intact copy ({msg}{})",
                rec.name,
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; {}", Failover::why(&skipped))
                }
            )))
        }
    }
}
