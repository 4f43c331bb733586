//! `type = "fs"`: a local or mounted directory. Owns the file-system
//! mechanics and nothing else: writes go to a temporary name in the same
//! directory, are fsynced, then renamed (and the directory fsynced);
//! temporaries (`*.tmp-*`) are never listed, and those a killed process left
//! are removed; the root and its marker say whether the target is there.
//!
//! A target is only *there* when its root exists and holds the marker
//! [`super::MARKER_NAME`], written by `backupctl init` (or by the first write
//! when the target sets `create = true`). A missing root or marker is an
//! unplugged disk or an unmounted share: the target is unavailable, and is
//! never silently recreated on the local disk.

use super::{
    Backend, Capabilities, ObjectInfo, ObjectKey, ObjectReader, Prefix, Readiness, StorageError,
    StorageResult, TempFile, Upload,
};
use crate::config::FsTargetSpec;
use async_trait::async_trait;
use std::collections::HashSet;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Suffix marker of in-flight temporary files; never listed.
const TMP_MARK: &str = ".tmp-";

/// Start kernel writeback of an upload every this many bytes, so the final
/// fsync is short and disk writes overlap compression.
const WRITEBACK_STEP: u64 = 8 << 20;

#[derive(Clone)]
pub struct FsBackend {
    name: String,
    location: String,
    root: PathBuf,
    create: bool,
    /// Directories whose leftover temporaries this instance already removed
    /// (once per directory per run: later temporaries are this run's own).
    cleaned: Arc<Mutex<HashSet<PathBuf>>>,
}

/// What is at the root.
enum Presence {
    Ready,
    NoRoot,
    NoMarker,
}

/// Make a fully written temporary file durable under its final name: fsync it,
/// rename it over `dest`, fsync `dest`'s directory. On failure the temporary
/// is removed and `dest` is untouched.
fn persist(file: std::fs::File, tmp: &Path, dest: &Path) -> io::Result<()> {
    let result = file.sync_all().and_then(|_| {
        drop(file);
        std::fs::rename(tmp, dest)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    });
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

fn not_found(target: &str, key: &ObjectKey) -> StorageError {
    StorageError::NotFound {
        target: target.to_string(),
        key: key.to_string(),
    }
}

impl FsBackend {
    pub fn new(name: &str, spec: &FsTargetSpec) -> FsBackend {
        FsBackend {
            name: name.to_string(),
            location: spec.location.clone(),
            root: spec.path.clone(),
            create: spec.create,
            cleaned: Arc::default(),
        }
    }

    /// A key is a relative path that never leaves the root (see [`ObjectKey`]).
    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io(&self, context: impl Into<String>, source: io::Error) -> StorageError {
        if source.kind() == io::ErrorKind::NotFound && !matches!(self.presence(), Presence::Ready) {
            // The root went away under us (a disk unplugged mid-run).
            return self.missing();
        }
        StorageError::Io {
            target: self.name.clone(),
            context: context.into(),
            source,
        }
    }

    fn walk_error(&self, context: &str, e: walkdir::Error) -> StorageError {
        let msg = e.to_string();
        self.io(
            context,
            e.into_io_error().unwrap_or_else(|| io::Error::other(msg)),
        )
    }

    fn presence(&self) -> Presence {
        if !self.root.is_dir() {
            Presence::NoRoot
        } else if !self.root.join(super::MARKER_NAME).is_file() {
            Presence::NoMarker
        } else {
            Presence::Ready
        }
    }

    /// The error for a target that is not there.
    fn missing(&self) -> StorageError {
        let message = match self.presence() {
            Presence::NoRoot => format!(
                "{} does not exist: the disk or share holding this target is not mounted, \
                 or the target was never initialised (`backupctl init {}`; or set \
                 create = true for a directory on an always-present local disk)",
                self.root.display(),
                self.name
            ),
            _ => format!(
                "{} is not an initialised backupctl target (no {}): if a disk or share \
                 is meant to be mounted there, mount it; for a new target run `backupctl init {}`",
                self.root.display(),
                super::MARKER_NAME,
                self.name
            ),
        };
        StorageError::Unavailable {
            target: self.name.clone(),
            message,
        }
    }

    /// Reads need the target to be there. A `create = true` target that was
    /// never written to reads as empty (`Ok(false)`).
    fn ready_for_read(&self) -> StorageResult<bool> {
        match self.presence() {
            Presence::Ready => Ok(true),
            Presence::NoRoot if self.create => Ok(false),
            _ => Err(self.missing()),
        }
    }

    /// Writes need the target to be there; `create = true` creates it.
    fn ready_for_write(&self) -> StorageResult<()> {
        match self.presence() {
            Presence::Ready => Ok(()),
            _ if self.create => self.initialise().map(|_| ()),
            _ => Err(self.missing()),
        }
    }

    /// Create the root when missing and write the marker. An existing
    /// directory is adopted only when it is empty or already holds backupctl
    /// data (its RESTORE-README.txt). Returns whether anything was written.
    fn initialise(&self) -> StorageResult<bool> {
        let unavailable = |message: String| StorageError::Unavailable {
            target: self.name.clone(),
            message,
        };
        match self.presence() {
            Presence::Ready => return Ok(false),
            Presence::NoRoot => {
                // The root appears with its marker already inside (built under
                // a temporary name, then renamed), so a concurrent reader never
                // takes a half-created target for an unmounted one.
                let cannot = |e: io::Error| {
                    unavailable(format!("cannot create {}: {e}", self.root.display()))
                };
                let parent = match self.root.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                crate::util::create_private_dir_all(&parent).map_err(cannot)?;
                let tmp = parent.join(format!(
                    "{}{TMP_MARK}{}",
                    self.root.file_name().unwrap_or_default().to_string_lossy(),
                    crate::util::random_hex(8)
                ));
                let built = crate::util::create_private_dir_all(&tmp).and_then(|_| {
                    let marker = tmp.join(super::MARKER_NAME);
                    let part = tmp.join(format!("{}{TMP_MARK}0", super::MARKER_NAME));
                    let mut f = crate::util::create_private_file(&part)?;
                    f.write_all(&super::marker_bytes(&self.name))?;
                    persist(f, &part, &marker)?;
                    std::fs::rename(&tmp, &self.root)?;
                    std::fs::File::open(&parent)?.sync_all()
                });
                if let Err(e) = built {
                    let _ = std::fs::remove_dir_all(&tmp);
                    // Another process may have created it meanwhile.
                    return match self.presence() {
                        Presence::Ready => Ok(false),
                        _ => Err(cannot(e)),
                    };
                }
                return Ok(true);
            }
            Presence::NoMarker => {
                let empty = std::fs::read_dir(&self.root)
                    .map_err(|e| unavailable(format!("cannot read {}: {e}", self.root.display())))?
                    .next()
                    .is_none();
                if !empty && !self.root.join(super::RESTORE_FILE).is_file() {
                    return Err(StorageError::Permanent {
                        target: self.name.clone(),
                        message: format!(
                            "{} is not empty and holds no backupctl data; refusing to make it a \
                             target: choose an empty or new directory",
                            self.root.display()
                        ),
                    });
                }
            }
        }
        self.atomic_write(&super::marker_key(), |f| {
            f.write_all(&super::marker_bytes(&self.name))
        })?;
        Ok(true)
    }

    /// Create `dir` (a directory below the root); inside a policy's
    /// directories, remove the temporaries a killed process left there.
    fn prepare_dir(&self, dir: &Path, in_policy: bool) -> StorageResult<()> {
        crate::util::create_private_dir_all(dir)
            .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
        if in_policy {
            // Inside a policy's directories writes happen only under the
            // policy lock (run, sync, prune): temporaries found there were
            // left by a killed process. (The root is also written without
            // the lock, by `check` and `init`, so it is left alone.)
            self.clean_leftovers_once(dir);
        }
        Ok(())
    }

    /// Write via temp + fsync + rename; `fill` writes the content.
    fn atomic_write(
        &self,
        key: &ObjectKey,
        fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
    ) -> StorageResult<()> {
        let dest = self.path(key);
        let dir = dest.parent().expect("key has a parent").to_path_buf();
        self.prepare_dir(&dir, key.parent().is_some())?;
        let tmp = dir.join(format!(
            "{}{TMP_MARK}{}",
            key.file_name(),
            crate::util::random_hex(8)
        ));
        let result = crate::util::create_private_file(&tmp).and_then(|mut f| {
            let filled = fill(&mut f).and_then(|_| f.flush());
            match filled {
                Ok(()) => persist(f, &tmp, &dest),
                Err(e) => {
                    drop(f);
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        });
        result.map_err(|e| self.io(format!("writing {key}"), e))
    }

    /// Remove temporaries left in `dir` by a killed run or sync, once per
    /// directory for this instance. The caller holds the policy lock, so no
    /// other process is writing there; this run's own temporaries are all
    /// created after the first call.
    fn clean_leftovers_once(&self, dir: &Path) {
        let first = self
            .cleaned
            .lock()
            .expect("cleaned set")
            .insert(dir.to_path_buf());
        if !first {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(TMP_MARK) {
                tracing::warn!(
                    "removing {}, left by an interrupted run",
                    e.path().display()
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Open `key` for reading, with its size.
    fn open(&self, key: &ObjectKey) -> StorageResult<(std::fs::File, u64)> {
        if !self.ready_for_read()? {
            return Err(not_found(&self.name, key));
        }
        let f = match std::fs::File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(&self.name, key))
            }
            Err(e) => return Err(self.io(format!("reading {key}"), e)),
        };
        let size = f
            .metadata()
            .map_err(|e| self.io(format!("stat {key}"), e))?
            .len();
        Ok((f, size))
    }

    /// Temporaries below the root older than `older_than`, removed.
    fn remove_old_temporaries(&self, older_than: Duration) -> StorageResult<usize> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut removed = 0;
        for entry in walkdir::WalkDir::new(&self.root) {
            let entry = entry.map_err(|e| self.walk_error("looking for temporaries", e))?;
            if !entry.file_type().is_file()
                || !entry.file_name().to_string_lossy().contains(TMP_MARK)
            {
                continue;
            }
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| t <= cutoff);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(
                    "target {}: removed {}, left by an interrupted write",
                    self.name,
                    entry.path().display()
                );
                removed += 1;
            }
        }
        Ok(removed)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// An archive written straight into a temporary file inside its target
/// directory, with kernel writeback started as it grows.
struct FsUpload {
    target: String,
    root: PathBuf,
    tmp: TempFile,
    written: u64,
    flushed_to: u64,
}

impl Write for FsUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self.tmp.file()?;
        let n = f.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed_to >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            // Best effort: ask the kernel to start writing this range out now.
            unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    self.flushed_to as libc::off64_t,
                    (self.written - self.flushed_to) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.flushed_to = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Upload for FsUpload {
    async fn commit(self: Box<Self>, key: &ObjectKey) -> StorageResult<bool> {
        let dest = self.root.join(key.as_str());
        let (file, tmp) = self.tmp.keep();
        let target = self.target;
        blocking(move || {
            let io = |context: &str, source: io::Error| StorageError::Io {
                target,
                context: format!("{context} {}", dest.display()),
                source,
            };
            let len = match file.metadata() {
                Ok(m) => m.len(),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io("stat", e));
                }
            };
            if std::fs::metadata(&dest).is_ok_and(|m| m.len() == len) {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
                return Ok(false);
            }
            if let Some(dir) = dest.parent() {
                if let Err(e) = crate::util::create_private_dir_all(dir) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io("storing", e));
                }
            }
            persist(file, &tmp, &dest).map_err(|e| io("storing", e))?;
            Ok(true)
        })
        .await
    }

    fn abort(self: Box<Self>) {}
}

#[async_trait]
impl Backend for FsBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn describe(&self) -> String {
        format!("fs {}", self.root.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            local_files: true,
            multipart: false,
            ranged_reads: true,
            object_lock: false,
        }
    }

    async fn put_file(&self, key: &ObjectKey, path: &Path) -> StorageResult<()> {
        self.ready_for_write()?;
        let (t, key, path) = (self.clone(), key.clone(), path.to_path_buf());
        blocking(move || {
            t.atomic_write(&key, |f| {
                let mut src = std::fs::File::open(&path)?;
                io::copy(&mut src, f).map(|_| ())
            })
        })
        .await
    }

    async fn put_bytes(&self, key: &ObjectKey, data: Vec<u8>) -> StorageResult<()> {
        self.ready_for_write()?;
        let (t, key) = (self.clone(), key.clone());
        blocking(move || t.atomic_write(&key, |f| f.write_all(&data))).await
    }

    async fn get(&self, key: &ObjectKey) -> StorageResult<ObjectReader> {
        // To the end, whatever the size was when opened (a file is never
        // appended to; what a hostile target serves is bounded by the reader).
        let (f, _) = self.open(key)?;
        Ok(ObjectReader::file(f, u64::MAX))
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> StorageResult<ObjectReader> {
        let (mut f, size) = self.open(key)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(super::bad_range(&self.name, key, offset, len, size));
        }
        f.seek(io::SeekFrom::Start(offset))
            .map_err(|e| self.io(format!("reading {key}"), e))?;
        Ok(ObjectReader::file(f, len))
    }

    async fn stat(&self, key: &ObjectKey) -> StorageResult<Option<u64>> {
        if !self.ready_for_read()? {
            return Ok(None); // `create = true`, nothing written yet
        }
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_dir() => Ok(None),
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(format!("stat {key}"), e)),
        }
    }

    async fn list(&self, prefix: &Prefix) -> StorageResult<Vec<ObjectInfo>> {
        if !self.ready_for_read()? {
            return Ok(Vec::new()); // `create = true`, nothing written yet
        }
        // Walk the deepest directory the prefix names, then filter by prefix.
        let start = match prefix.as_str().rfind('/') {
            Some(i) => self.root.join(&prefix.as_str()[..i]),
            None => self.root.clone(),
        };
        let (t, prefix) = (self.clone(), prefix.clone());
        blocking(move || {
            let mut out = Vec::new();
            if !start.exists() {
                return Ok(out);
            }
            for entry in walkdir::WalkDir::new(&start).sort_by_file_name() {
                let entry = entry.map_err(|e| t.walk_error("listing", e))?;
                if !entry.file_type().is_file()
                    || entry.file_name().to_string_lossy().contains(TMP_MARK)
                {
                    continue;
                }
                // Names that are not keys (not UTF-8, control characters)
                // are not backupctl's: left out.
                let Some(key) = entry
                    .path()
                    .strip_prefix(&t.root)
                    .ok()
                    .and_then(|rel| rel.to_str())
                    .and_then(|rel| ObjectKey::new(rel).ok())
                else {
                    continue;
                };
                if !prefix.matches(&key) {
                    continue;
                }
                let size = entry
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| t.io("listing", e.into()))?;
                out.push(ObjectInfo { key, size });
            }
            // Walk order is per directory; keys sort "a/b" < "a.b" differently.
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> StorageResult<()> {
        if !self.ready_for_read()? {
            return Ok(());
        }
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(format!("deleting {key}"), e)),
        }
    }

    async fn init(&self) -> StorageResult<bool> {
        let t = self.clone();
        blocking(move || t.initialise()).await
    }

    async fn readiness(&self) -> StorageResult<Readiness> {
        match self.presence() {
            Presence::Ready => Ok(Readiness::Ready),
            Presence::NoRoot if self.create => Ok(Readiness::CreatedOnFirstRun(format!(
                "{} does not exist yet; the first run creates it (create = true)",
                self.root.display()
            ))),
            _ => Err(self.missing()),
        }
    }

    async fn cleanup_incomplete(&self, older_than: Duration) -> StorageResult<usize> {
        if !self.ready_for_read()? {
            return Ok(0);
        }
        let t = self.clone();
        blocking(move || t.remove_old_temporaries(older_than)).await
    }

    async fn upload(&self, dir: &ObjectKey) -> StorageResult<Box<dyn Upload>> {
        self.ready_for_write()?;
        let path = self.path(dir);
        self.prepare_dir(&path, true)?;
        let tmp = path.join(format!("incoming{TMP_MARK}{}", crate::util::random_hex(8)));
        let tmp = TempFile::create(tmp.clone())
            .map_err(|e| self.io(format!("creating {}", tmp.display()), e))?;
        Ok(Box::new(FsUpload {
            target: self.name.clone(),
            root: self.root.clone(),
            tmp,
            written: 0,
            flushed_to: 0,
        }))
    }
}
