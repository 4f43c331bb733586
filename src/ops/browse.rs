//! Browsing snapshots without restoring them: `backupctl ls`, `find`,
//! `diff` and `dump`.
//!
//! **Paths.** A snapshot holds one tree per source; every path shown or
//! accepted here is `SOURCE/relative/path` (the source root itself is
//! `SOURCE`). Text output ends directory paths in `/`; `--json` gives the
//! path without it and the entry's `type`. Names that are not valid UTF-8
//! are shown lossily (U+FFFD) and, in JSON, also as `path_b64` (the exact
//! bytes, standard base64).
//!
//! **What is read.** `ls`, `find` and `diff` read only the sources' file
//! indexes ([`fetch::index_of`], failing over across the targets holding the
//! snapshot complete), never the tar streams. `find` reads each distinct
//! index once (an unchanged source shares its index with earlier
//! snapshots).
//!
//! **`dump`.** Neither the file index nor the extent list records where an
//! entry starts in the tar stream (the index has paths, sizes and hashes;
//! extents are compressed ranges of chunks), and deriving the offset would
//! mean re-deriving the tar crate's header layout (pax records, GNU long
//! names) from the index. So `dump` streams the source's tar through the
//! ordinary pack reader (every chunk checked against its id, each extent
//! from the first target that serves it intact) and emits only the one
//! entry, stopping as soon as that entry has been read: what comes before it
//! is read, what comes after is not. The entry must be a regular file of
//! the size the index records, and its bytes must hash to the index's
//! BLAKE3. A file up to [`DUMP_BUFFER`] is checked whole before the first
//! byte is written, so a damaged copy writes nothing; a larger one is
//! streamed, and a mismatch found at its end still fails (exit 1, saying the
//! output must be discarded): stdout cannot be taken back.
//!
//! Paths from the index are only displayed (escaped for the terminal) or
//! compared, never used to create files.
//!
//! **Exit codes.** Unknown policy, snapshot, source or path: 2. No
//! reachable target, no target serving the data intact, or bytes that do
//! not match the index: 1. `find` with snapshots whose index could not be
//! read: 3 (the others were searched).

use crate::archive::manifest::FileRecord;
use crate::archive::SourceRecord;
use crate::config::{Config, Policy};
use crate::error::{Error, ExitCode};
use crate::pack::reader::{PackSource, StreamReader};
use crate::repo::{fetch, Catalog, Entry, Hash};
use base64::Engine;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;

/// Files up to this size are verified whole before `dump` writes a byte.
pub const DUMP_BUFFER: u64 = 16 << 20;

/// One entry of a snapshot, as `ls`, `find` and `diff` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Listed {
    /// `SOURCE/relative/path` (`SOURCE` for the source root); lossy when
    /// `path_b64` is set.
    pub path: String,
    /// The exact bytes of a path that is not valid UTF-8 (standard base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub source: String,
    /// "file", "dir" or "symlink".
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits in octal, e.g. "0644" (setuid, setgid and sticky
    /// included).
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    /// Modification time (RFC 3339, UTC, nanoseconds when recorded).
    pub mtime: String,
    /// Bytes of a regular file (0 otherwise).
    pub size: u64,
    /// BLAKE3 of a regular file's content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// A symbolic link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Listed {
    fn of(source: &str, f: &FileRecord) -> Listed {
        let rel = f.path_bytes().map(|b| b.into_owned()).unwrap_or_default();
        let (path, path_b64) = if is_root(&rel) {
            (source.to_string(), None)
        } else {
            let mut full = source.as_bytes().to_vec();
            full.push(b'/');
            full.extend_from_slice(&rel);
            (
                format!("{source}/{}", f.path),
                f.path_b64
                    .as_ref()
                    .map(|_| base64::engine::general_purpose::STANDARD.encode(&full)),
            )
        };
        let mtime = chrono::DateTime::from_timestamp(f.mtime, f.mtime_nsec)
            .map(|t| {
                if f.mtime_nsec == 0 {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                } else {
                    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
                }
            })
            .unwrap_or_else(|| f.mtime.to_string());
        Listed {
            path,
            path_b64,
            source: source.to_string(),
            kind: f.kind.clone(),
            mode: format!("{:04o}", f.mode & 0o7777),
            uid: f.uid,
            gid: f.gid,
            mtime,
            size: if f.is_file() { f.size } else { 0 },
            blake3: (f.is_file() && !f.blake3.is_empty()).then(|| f.blake3.clone()),
            target: f.target.clone(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == "dir"
    }
}

fn is_root(rel: &[u8]) -> bool {
    rel.is_empty() || rel == b"." || rel == b"./"
}

/// A snapshot named in a result.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRef {
    pub id: String,
    pub time: String,
}

impl SnapshotRef {
    fn of(e: &Entry) -> SnapshotRef {
        SnapshotRef {
            id: e.manifest.id.clone(),
            time: e.manifest.time.to_rfc3339(),
        }
    }
}

/// The policy's catalog; no reachable target is a failure (exit 1).
async fn open(cfg: &Config, policy: &Policy) -> crate::error::Result<Catalog> {
    let catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    if catalog.reachable().next().is_none() {
        return Err(crate::error::Error::failure(format!(
            "policy {}: no target is reachable ({})",
            policy.name,
            fetch::Failover::why(&catalog.unreachable())
        )));
    }
    Ok(catalog)
}

/// `spec` (an id, a unique prefix, or `latest`; None is `latest`). A
/// snapshot that no reachable target holds is a usage error (exit 2).
fn resolve<'a>(catalog: &'a Catalog, spec: Option<&str>) -> crate::error::Result<&'a Entry> {
    match catalog.resolve(spec) {
        Ok(e) => Ok(e),
        Err(e) if e.exit_code() == ExitCode::Failure && !matches!(spec, None | Some("latest")) => {
            let known: Vec<&str> = catalog
                .entries
                .iter()
                .rev()
                .take(5)
                .map(|e| e.manifest.id.as_str())
                .collect();
            Err(crate::error::Error::usage(format!(
                "{e}{}",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (latest: {}; see `backupctl list`)", known.join(", "))
                }
            )))
        }
        Err(e) => Err(e),
    }
}

/// Does `s` name a snapshot of the catalog (`latest`, an id or a unique
/// prefix)?
fn names_snapshot(catalog: &Catalog, s: &str) -> bool {
    s == "latest" || catalog.entries.iter().any(|e| e.manifest.id.starts_with(s))
}

/// `SOURCE[/rel]` split; leading and trailing slashes ignored, `./` and
/// empty components dropped.
fn split_path(p: &str) -> (String, String) {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match parts.split_first() {
        None => (String::new(), String::new()),
        Some((s, rest)) => (s.to_string(), rest.join("/")),
    }
}

fn source_of<'a>(e: &'a Entry, name: &str) -> crate::error::Result<&'a SourceRecord> {
    e.manifest.source(name).ok_or_else(|| {
        crate::error::Error::usage(format!(
            "snapshot {} has no source {:?} (paths are SOURCE/relative/path; sources: {})",
            e.manifest.id,
            crate::util::printable(name),
            e.manifest
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Is `f` the entry `rel` (relative to its source), or beneath it?
fn under(f: &FileRecord, rel: &str) -> (bool, bool) {
    let p = f.path.trim_start_matches("./").trim_end_matches('/');
    if rel.is_empty() {
        return (is_root(p.as_bytes()), true);
    }
    let exact = p == rel;
    (
        exact,
        exact || (p.len() > rel.len() && p.starts_with(rel) && p.as_bytes()[rel.len()] == b'/'),
    )
}

// ---------------------------------------------------------------------------
// ls
// ---------------------------------------------------------------------------

/// What `ls` printed.
#[derive(Debug, Serialize)]
pub struct LsResult {
    pub policy: String,
    pub snapshot: String,
    pub time: String,
    /// The PATH asked for, if any.
    pub path: Option<String>,
    /// Every entry at or beneath PATH (all sources without PATH), in
    /// archive order: each source root, then its tree depth first.
    pub entries: Vec<Listed>,
}

/// `ls POLICY [SNAPSHOT] [PATH]`. With one optional argument it is the
/// SNAPSHOT if it is `latest` or names a snapshot (id or unique prefix),
/// else a PATH in the latest snapshot.
pub async fn ls(
    cfg: &Config,
    policy: &Policy,
    first: Option<&str>,
    second: Option<&str>,
) -> crate::error::Result<LsResult> {
    let catalog = open(cfg, policy).await?;
    let (snap, path) = match (first, second) {
        (Some(a), Some(b)) => (Some(a), Some(b)),
        (Some(a), None) if !names_snapshot(&catalog, a) && !a.is_empty() => (None, Some(a)),
        (a, _) => (a, None),
    };
    let entry = resolve(&catalog, snap)?;
    let m = &entry.manifest;
    let mut entries = Vec::new();
    match path.map(split_path).filter(|(s, _)| !s.is_empty()) {
        None => {
            for rec in &m.sources {
                let index = fetch::index_of(&catalog, entry, rec).await?;
                entries.extend(index.iter().map(|f| Listed::of(&rec.name, f)));
            }
        }
        Some((src, rel)) => {
            if second.is_none() && m.source(&src).is_none() && !src.contains('/') && rel.is_empty()
            {
                return Err(crate::error::Error::usage(format!(
                    "policy {}: {:?} names neither a snapshot (see `backupctl list {}`) nor a \
                     source of the latest snapshot {} (sources: {})",
                    policy.name,
                    crate::util::printable(&src),
                    policy.name,
                    m.id,
                    m.sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let rec = source_of(entry, &src)?;
            let index = fetch::index_of(&catalog, entry, rec).await?;
            let mut found = false;
            for f in &index {
                let (exact, inside) = under(f, &rel);
                found |= exact;
                if inside {
                    entries.push(Listed::of(&rec.name, f));
                }
            }
            if !found {
                return Err(not_found(entry, &src, &rel));
            }
        }
    }
    Ok(LsResult {
        policy: policy.name.clone(),
        snapshot: m.id.clone(),
        time: m.time.to_rfc3339(),
        path: path.map(str::to_string),
        entries,
    })
}

fn not_found(e: &Entry, src: &str, rel: &str) -> Error {
    crate::error::Error::usage(format!(
        "snapshot {} ({}) has no path {:?} (see `backupctl ls {} {} {src}`)",
        e.manifest.id,
        e.manifest.time.to_rfc3339(),
        crate::util::printable(&format!("{src}/{rel}")),
        e.manifest.policy,
        e.manifest.id
    ))
}

// ---------------------------------------------------------------------------
// find
// ---------------------------------------------------------------------------

/// One snapshot in which a found path exists, and what it was there.
#[derive(Debug, Serialize)]
pub struct Seen {
    pub id: String,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: String,
    pub mtime: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// A path matching the pattern, with every snapshot that has it.
#[derive(Debug, Serialize)]
pub struct Found {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub source: String,
    /// Oldest first.
    pub snapshots: Vec<Seen>,
}

#[derive(Debug, Serialize)]
pub struct FindResult {
    pub policy: String,
    pub pattern: String,
    /// Snapshots whose indexes were searched (oldest first).
    pub searched: Vec<SnapshotRef>,
    /// Snapshots whose index could not be read, with why (exit 3).
    pub skipped: Vec<(String, String)>,
    /// Matching paths, sorted.
    pub matches: Vec<Found>,
}

impl FindResult {
    pub fn exit_code(&self) -> ExitCode {
        if self.skipped.is_empty() {
            ExitCode::Success
        } else {
            ExitCode::Partial
        }
    }
}

/// The pattern as a matcher of full `SOURCE/path` strings (a pattern with
/// a `/`) or of the last component (one without).
fn matcher(pattern: &str) -> crate::error::Result<(globset::GlobMatcher, bool)> {
    let pat = pattern.trim_start_matches('/');
    let glob = globset::GlobBuilder::new(pat)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| crate::error::Error::usage(format!("pattern {pattern:?}: {e}")))?;
    Ok((glob.compile_matcher(), pat.contains('/')))
}

/// `find POLICY PATTERN`: every path matching PATTERN in every snapshot.
pub async fn find(
    cfg: &Config,
    policy: &Policy,
    pattern: &str,
) -> crate::error::Result<FindResult> {
    let (m, full) = matcher(pattern)?;
    let catalog = open(cfg, policy).await?;
    let mut cache: HashMap<String, Arc<Vec<FileRecord>>> = HashMap::new();
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut searched = Vec::new();
    let mut skipped = Vec::new();
    'snap: for entry in &catalog.entries {
        let mut indexes = Vec::new();
        for rec in &entry.manifest.sources {
            let index = match cache.get(&rec.index.blake3) {
                Some(i) => i.clone(),
                None => match fetch::index_of(&catalog, entry, rec).await {
                    Ok(i) => {
                        let i = Arc::new(i);
                        cache.insert(rec.index.blake3.clone(), i.clone());
                        i
                    }
                    Err(e) => {
                        tracing::warn!("snapshot {}: not searched: {e:#}", entry.manifest.id);
                        skipped.push((entry.manifest.id.clone(), format!("{e:#}")));
                        continue 'snap;
                    }
                },
            };
            indexes.push((rec.name.clone(), index));
        }
        searched.push(SnapshotRef::of(entry));
        for (src, index) in indexes {
            for f in index.iter() {
                let l = Listed::of(&src, f);
                let hit = if full {
                    m.is_match(&l.path)
                } else {
                    m.is_match(l.path.rsplit('/').next().unwrap_or(&l.path))
                };
                if !hit {
                    continue;
                }
                let key = l.path_b64.clone().unwrap_or_else(|| l.path.clone());
                let slot = found.entry(key).or_insert_with(|| Found {
                    path: l.path.clone(),
                    path_b64: l.path_b64.clone(),
                    source: src.clone(),
                    snapshots: Vec::new(),
                });
                slot.snapshots.push(Seen {
                    id: entry.manifest.id.clone(),
                    time: entry.manifest.time.to_rfc3339(),
                    kind: l.kind,
                    mode: l.mode,
                    mtime: l.mtime,
                    size: l.size,
                    blake3: l.blake3,
                });
            }
        }
    }
    Ok(FindResult {
        policy: policy.name.clone(),
        pattern: pattern.to_string(),
        searched,
        skipped,
        matches: found.into_values().collect(),
    })
}

// ---------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------

/// An entry present in both snapshots that differs.
#[derive(Debug, Serialize)]
pub struct Changed {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub source: String,
    /// What differs, in this order: "type", "content", "size", "mode",
    /// "owner", "target" (a link's), "mtime" (not for directories: theirs
    /// moves whenever an entry is added or removed, which is reported
    /// itself).
    pub changes: Vec<String>,
    pub old: Listed,
    pub new: Listed,
}

#[derive(Debug, Serialize)]
pub struct DiffResult {
    pub policy: String,
    pub from: SnapshotRef,
    pub to: SnapshotRef,
    /// In `to`, not in `from` (sorted by path).
    pub added: Vec<Listed>,
    /// In `from`, not in `to`.
    pub removed: Vec<Listed>,
    pub changed: Vec<Changed>,
    /// Bytes of the regular files added, removed.
    pub added_bytes: u64,
    pub removed_bytes: u64,
}

fn changes(a: &Listed, b: &Listed) -> Vec<String> {
    let mut c = Vec::new();
    if a.kind != b.kind {
        c.push("type");
    } else if a.blake3 != b.blake3 {
        c.push("content");
    }
    if a.size != b.size {
        c.push("size");
    }
    if a.mode != b.mode {
        c.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        c.push("owner");
    }
    if a.target != b.target {
        c.push("target");
    }
    if a.mtime != b.mtime && !(a.is_dir() && b.is_dir()) {
        c.push("mtime");
    }
    c.into_iter().map(str::to_string).collect()
}

/// Every entry of a snapshot by exact path (bytes; base64 when not UTF-8).
async fn entries_of(
    catalog: &Catalog,
    e: &Entry,
) -> crate::error::Result<BTreeMap<String, Listed>> {
    let mut out = BTreeMap::new();
    for rec in &e.manifest.sources {
        for f in fetch::index_of(catalog, e, rec).await? {
            let l = Listed::of(&rec.name, &f);
            out.insert(l.path_b64.clone().unwrap_or_else(|| l.path.clone()), l);
        }
    }
    Ok(out)
}

/// `diff POLICY SNAP1 SNAP2`: what changed from SNAP1 to SNAP2.
pub async fn diff(
    cfg: &Config,
    policy: &Policy,
    from: &str,
    to: &str,
) -> crate::error::Result<DiffResult> {
    let catalog = open(cfg, policy).await?;
    let (a, b) = (resolve(&catalog, Some(from))?, resolve(&catalog, Some(to))?);
    let (ea, eb) = (
        entries_of(&catalog, a).await?,
        entries_of(&catalog, b).await?,
    );
    let mut r = DiffResult {
        policy: policy.name.clone(),
        from: SnapshotRef::of(a),
        to: SnapshotRef::of(b),
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        added_bytes: 0,
        removed_bytes: 0,
    };
    for (k, old) in &ea {
        match eb.get(k) {
            None => {
                r.removed_bytes += old.size;
                r.removed.push(old.clone());
            }
            Some(new) => {
                let c = changes(old, new);
                if !c.is_empty() {
                    r.changed.push(Changed {
                        path: new.path.clone(),
                        path_b64: new.path_b64.clone(),
                        source: new.source.clone(),
                        changes: c,
                        old: old.clone(),
                        new: new.clone(),
                    });
                }
            }
        }
    }
    for (k, new) in &eb {
        if !ea.contains_key(k) {
            r.added_bytes += new.size;
            r.added.push(new.clone());
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// dump
// ---------------------------------------------------------------------------

/// What `dump` wrote (logged; stdout holds the file).
#[derive(Debug, Serialize)]
pub struct DumpResult {
    pub policy: String,
    pub snapshot: String,
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
    /// Targets that served the stream, in first-use order.
    pub targets: Vec<String>,
}

/// `dump POLICY SNAPSHOT PATH`: the regular file PATH of the snapshot,
/// verified, to `out`.
pub async fn dump(
    cfg: &Config,
    policy: &Policy,
    snapshot: &str,
    path: &str,
    out: Box<dyn Write + Send>,
) -> crate::error::Result<DumpResult> {
    let catalog = open(cfg, policy).await?;
    let entry = resolve(&catalog, Some(snapshot))?;
    let (src, rel) = split_path(path);
    if src.is_empty() {
        return Err(crate::error::Error::usage(
            "dump: PATH is SOURCE/relative/path (see `backupctl ls POLICY SNAPSHOT`)",
        ));
    }
    let rec = source_of(entry, &src)?;
    let index = fetch::index_of(&catalog, entry, rec).await?;
    let f = index
        .iter()
        .find(|f| under(f, &rel).0)
        .ok_or_else(|| not_found(entry, &src, &rel))?;
    let shown = crate::util::printable(&Listed::of(&src, f).path);
    if !f.is_file() {
        return Err(crate::error::Error::usage(format!(
            "{shown} in snapshot {} is a {}, not a regular file; dump writes one file's bytes \
             (`backupctl ls` lists a directory)",
            entry.manifest.id, f.kind
        )));
    }
    let want_path = f.path_bytes().map_err(Error::failure)?.into_owned();
    let (size, want_hash) = (f.size, f.blake3.clone());

    let (sources, skipped) = fetch::sources_for(&catalog, entry, None);
    if sources.is_empty() {
        return Err(crate::error::Error::failure(format!(
            "source {}: no target holds snapshot {} complete ({})",
            rec.name,
            entry.manifest.id,
            fetch::Failover::why(&skipped)
        )));
    }
    let list = stream_list(&catalog, &sources, rec).await?;
    let srcs: Vec<Arc<dyn PackSource>> = sources
        .iter()
        .map(|p| p.clone() as Arc<dyn PackSource>)
        .collect();
    let limit = rec.stream.size;
    let what = format!("{shown} of snapshot {}", entry.manifest.id);
    let hash = want_hash.clone();
    let (res, read) = tokio::task::spawn_blocking(move || {
        let reader = StreamReader::new(list, srcs, limit);
        let report = reader.report_handle();
        let r = copy_entry(reader, &want_path, size, &hash, out);
        let read = report.lock().expect("report").clone();
        (r, read)
    })
    .await
    .expect("dump task panicked");
    crate::ops::verify::record_damaged(&cfg.state_dir, &policy.name, &read.failed);
    match res {
        Ok(()) => {
            tracing::debug!(
                "dumped {what}: {size} bytes from {}",
                read.served.join(", ")
            );
            Ok(DumpResult {
                policy: policy.name.clone(),
                snapshot: entry.manifest.id.clone(),
                path: shown,
                bytes: size,
                blake3: want_hash,
                targets: read.served,
            })
        }
        Err(DumpError::Write(e)) => Err(crate::error::Error::failure(format!(
            "dump {what}: writing the output: {e}"
        ))),
        Err(DumpError::Data { msg, written }) => Err(crate::error::Error::failure(format!(
            "dump {what}: {msg}{}",
            if written > 0 {
                format!("; {written} bytes were already written: DISCARD THE OUTPUT")
            } else {
                "; nothing was written".to_string()
            }
        ))),
    }
}

/// The source's tar stream extent list from the first target that serves
/// it (checked against its name).
async fn stream_list(
    catalog: &Catalog,
    sources: &[Arc<fetch::Packs>],
    rec: &SourceRecord,
) -> crate::error::Result<crate::pack::extents::ExtentList> {
    let hash =
        Hash::new(&rec.stream.list).map_err(|e| crate::error::Error::failure(e.to_string()))?;
    let mut why = Vec::new();
    for p in sources {
        let Some(st) = catalog.targets.iter().find(|t| t.name() == p.name()) else {
            continue;
        };
        match fetch::list(&st.target, &catalog.policy, &hash, rec.stream.list_size).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                tracing::warn!(
                    "target {}: extent list {hash}: {e}; trying the next target",
                    st.name()
                );
                why.push((st.name().to_string(), e));
            }
        }
    }
    Err(crate::error::Error::failure(format!(
        "source {}: extent list {hash}: no target serves it intact ({})",
        rec.name,
        fetch::Failover::why(&why)
    )))
}

enum DumpError {
    /// The data (target side): damaged, missing, not what the index says.
    Data { msg: String, written: u64 },
    /// Writing the output (local side).
    Write(std::io::Error),
}

fn data(msg: impl Into<String>, written: u64) -> DumpError {
    DumpError::Data {
        msg: msg.into(),
        written,
    }
}

/// Find the entry `want` in the tar stream and write its `size` bytes to
/// `out`, checking them against `hash` (whole first when small enough).
fn copy_entry(
    reader: StreamReader,
    want: &[u8],
    size: u64,
    hash: &str,
    mut out: Box<dyn Write + Send>,
) -> Result<(), DumpError> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar
        .entries()
        .map_err(|e| data(format!("reading the tar stream: {e}"), 0))?;
    for e in entries {
        let mut e = e.map_err(|e| data(format!("reading the tar stream: {e}"), 0))?;
        let p = e.path_bytes();
        let p: &[u8] = p.strip_prefix(b"./").unwrap_or(&p);
        if p != want {
            continue;
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            return Err(data(
                "the tar entry is not a regular file, though the file index says it is \
                 (damaged or altered snapshot)",
                0,
            ));
        }
        let announced = e.size();
        if announced != size {
            return Err(data(
                format!(
                    "the tar entry holds {announced} bytes, the file index says {size} \
                     (damaged or altered snapshot)"
                ),
                0,
            ));
        }
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        if size <= DUMP_BUFFER {
            let mut buf = Vec::with_capacity(size as usize);
            (&mut e)
                .take(size)
                .read_to_end(&mut buf)
                .map_err(|x| data(format!("reading the file's bytes: {x}"), 0))?;
            if buf.len() as u64 != size {
                return Err(data("the tar stream ends inside the file", 0));
            }
            hasher.update(&buf);
            check_hash(&hasher, hash, 0)?;
            out.write_all(&buf).map_err(DumpError::Write)?;
        } else {
            let mut buf = vec![0u8; 1 << 20];
            while written < size {
                let n = e
                    .read(&mut buf)
                    .map_err(|x| data(format!("reading the file's bytes: {x}"), written))?;
                if n == 0 {
                    return Err(data("the tar stream ends inside the file", written));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(DumpError::Write)?;
                written += n as u64;
            }
            check_hash(&hasher, hash, written)?;
        }
        return out.flush().map_err(DumpError::Write);
    }
    Err(data(
        "the tar stream has no such entry, though the file index lists it \
         (damaged or altered snapshot)",
        0,
    ))
}

fn check_hash(h: &blake3::Hasher, want: &str, written: u64) -> Result<(), DumpError> {
    let got = h.finalize().to_hex().to_string();
    if got != want {
        return Err(data(
            format!(
                "the file's bytes hash to BLAKE3 {got}, the file index says {want} \
                 (damaged or altered snapshot)"
            ),
            written,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_source_and_relative_path() {
        assert_eq!(
            split_path("site/a/b.txt"),
            ("site".into(), "a/b.txt".into())
        );
        assert_eq!(split_path("/site/./a//b/"), ("site".into(), "a/b".into()));
        assert_eq!(split_path("site"), ("site".into(), String::new()));
        assert_eq!(split_path(""), (String::new(), String::new()));
    }

    #[test]
    fn under_matches_the_entry_and_what_is_beneath_it_only() {
        let f = |p: &str| FileRecord::new(std::path::Path::new(p), 0, String::new());
        assert_eq!(under(&f("a/b"), "a/b"), (true, true));
        assert_eq!(under(&f("a/b/c"), "a/b"), (false, true));
        assert_eq!(under(&f("a/bc"), "a/b"), (false, false));
        assert_eq!(under(&f("."), ""), (true, true));
        assert_eq!(under(&f("x"), ""), (false, true));
    }

    #[test]
    fn directory_mtimes_alone_are_no_change() {
        let mut a = Listed::of(
            "s",
            &FileRecord::new(std::path::Path::new("d"), 0, String::new()),
        );
        a.kind = "dir".into();
        let mut b = a.clone();
        b.mtime = "2030-01-01T00:00:00Z".into();
        assert!(changes(&a, &b).is_empty());
        a.kind = "file".into();
        b.kind = "file".into();
        assert_eq!(changes(&a, &b), vec!["mtime".to_string()]);
    }
}
