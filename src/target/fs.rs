//! `type = "fs"`: a local or mounted directory. Writes go to a temporary name
//! in the same directory, are fsynced, then renamed (and the directory fsynced).
//!
//! A target is only *there* when its root exists and holds the marker
//! [`super::MARKER_KEY`], written by `backupctl init` (or by the first write
//! when the target sets `create = true`). A missing root or marker is an
//! unplugged disk or an unmounted share: the target is unavailable, and is
//! never silently recreated on the local disk.

use super::{ByteStream, ObjectInfo, Readiness, Target, TargetError, TargetResult};
use crate::config::FsTargetSpec;
use async_trait::async_trait;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Suffix marker of in-flight temporary files; never listed.
const TMP_MARK: &str = ".tmp-";

pub struct FsTarget {
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

impl FsTarget {
    pub fn new(name: &str, spec: &FsTargetSpec) -> FsTarget {
        FsTarget {
            name: name.to_string(),
            location: spec.location.clone(),
            root: spec.path.clone(),
            create: spec.create,
            cleaned: Arc::default(),
        }
    }

    fn path(&self, key: &str) -> TargetResult<PathBuf> {
        let rel = crate::archive::reader::safe_relative(Path::new(key)).map_err(|e| {
            TargetError::Permanent {
                target: self.name.clone(),
                message: format!("invalid key: {e}"),
            }
        })?;
        Ok(self.root.join(rel))
    }

    fn io(&self, context: impl Into<String>, source: io::Error) -> TargetError {
        if source.kind() == io::ErrorKind::NotFound && !matches!(self.presence(), Presence::Ready) {
            // The root went away under us (a disk unplugged mid-run).
            return self.missing();
        }
        TargetError::Io {
            target: self.name.clone(),
            context: context.into(),
            source,
        }
    }

    fn presence(&self) -> Presence {
        if !self.root.is_dir() {
            Presence::NoRoot
        } else if !self.root.join(super::MARKER_KEY).is_file() {
            Presence::NoMarker
        } else {
            Presence::Ready
        }
    }

    /// The error for a target that is not there.
    fn missing(&self) -> TargetError {
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
                super::MARKER_KEY,
                self.name
            ),
        };
        TargetError::Unavailable {
            target: self.name.clone(),
            message,
        }
    }

    /// Reads need the target to be there. A `create = true` target that was
    /// never written to reads as empty (`Ok(false)`).
    fn ready_for_read(&self) -> TargetResult<bool> {
        match self.presence() {
            Presence::Ready => Ok(true),
            Presence::NoRoot if self.create => Ok(false),
            _ => Err(self.missing()),
        }
    }

    /// Writes need the target to be there; `create = true` creates it.
    fn ready_for_write(&self) -> TargetResult<()> {
        match self.presence() {
            Presence::Ready => Ok(()),
            _ if self.create => self.initialise().map(|_| ()),
            _ => Err(self.missing()),
        }
    }

    /// Create the root when missing and write the marker. An existing
    /// directory is adopted only when it is empty or already holds backupctl
    /// data (its RESTORE-README.txt). Returns whether anything was written.
    fn initialise(&self) -> TargetResult<bool> {
        let unavailable = |message: String| TargetError::Unavailable {
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
                    let marker = tmp.join(super::MARKER_KEY);
                    let part = tmp.join(format!("{}{TMP_MARK}0", super::MARKER_KEY));
                    let mut f = crate::util::create_private_file(&part)?;
                    f.write_all(&super::marker_bytes(&self.name))?;
                    super::persist(f, &part, &marker)?;
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
                    return Err(TargetError::Permanent {
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
        self.atomic_write(super::MARKER_KEY, |f| {
            f.write_all(&super::marker_bytes(&self.name))
        })?;
        Ok(true)
    }

    /// Write via temp + fsync + rename; `fill` writes the content.
    fn atomic_write(
        &self,
        key: &str,
        fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
    ) -> TargetResult<()> {
        let dest = self.path(key)?;
        let dir = dest.parent().expect("key has a parent").to_path_buf();
        crate::util::create_private_dir_all(&dir)
            .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
        if key.contains('/') {
            // Inside a policy's directories writes happen only under the
            // policy lock (run, sync, prune): temporaries found there were
            // left by a killed process. (The root is also written without
            // the lock, by `check` and `init`, so it is left alone.)
            self.clean_leftovers_once(&dir);
        }
        let tmp = dir.join(format!(
            "{}{TMP_MARK}{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            crate::util::random_hex(8)
        ));
        let result = crate::util::create_private_file(&tmp).and_then(|mut f| {
            let filled = fill(&mut f).and_then(|_| f.flush());
            match filled {
                Ok(()) => super::persist(f, &tmp, &dest),
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
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Clone the parts a blocking closure needs.
fn handle(t: &FsTarget) -> FsTarget {
    FsTarget {
        name: t.name.clone(),
        location: t.location.clone(),
        root: t.root.clone(),
        create: t.create,
        cleaned: t.cleaned.clone(),
    }
}

#[async_trait]
impl Target for FsTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn describe(&self) -> String {
        format!("fs {}", self.root.display())
    }

    async fn put_file(&self, key: &str, path: &Path) -> TargetResult<()> {
        self.ready_for_write()?;
        let (t, key, path) = (handle(self), key.to_string(), path.to_path_buf());
        blocking(move || {
            t.atomic_write(&key, |f| {
                let mut src = std::fs::File::open(&path)?;
                io::copy(&mut src, f).map(|_| ())
            })
        })
        .await
    }

    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> TargetResult<()> {
        self.ready_for_write()?;
        let (t, key) = (handle(self), key.to_string());
        blocking(move || t.atomic_write(&key, |f| f.write_all(&data))).await
    }

    async fn get(&self, key: &str) -> TargetResult<ByteStream> {
        if !self.ready_for_read()? {
            return Err(TargetError::NotFound {
                target: self.name.clone(),
                key: key.to_string(),
            });
        }
        let path = self.path(key)?;
        match std::fs::File::open(&path) {
            Ok(f) => Ok(ByteStream::File(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TargetError::NotFound {
                target: self.name.clone(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.io(format!("reading {key}"), e)),
        }
    }

    async fn get_bytes(&self, key: &str) -> TargetResult<Vec<u8>> {
        if !self.ready_for_read()? {
            return Err(TargetError::NotFound {
                target: self.name.clone(),
                key: key.to_string(),
            });
        }
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TargetError::NotFound {
                target: self.name.clone(),
                key: key.to_string(),
            }),
            Err(e) => Err(self.io(format!("reading {key}"), e)),
        }
    }

    async fn stat(&self, key: &str) -> TargetResult<Option<u64>> {
        if !self.ready_for_read()? {
            return Ok(None); // `create = true`, nothing written yet
        }
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(format!("stat {key}"), e)),
        }
    }

    async fn list(&self, prefix: &str) -> TargetResult<Vec<ObjectInfo>> {
        if !self.ready_for_read()? {
            return Ok(Vec::new()); // `create = true`, nothing written yet
        }
        // Walk the deepest directory the prefix names, then filter by prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let (t, root, prefix) = (handle(self), self.root.clone(), prefix.to_string());
        blocking(move || {
            let mut out = Vec::new();
            if !start.exists() {
                return Ok(out);
            }
            for entry in walkdir::WalkDir::new(&start).sort_by_file_name() {
                let entry = entry.map_err(|e| {
                    let msg = e.to_string();
                    t.io(
                        "listing",
                        e.into_io_error().unwrap_or_else(|| io::Error::other(msg)),
                    )
                })?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy();
                if name.contains(TMP_MARK) {
                    continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&root) else {
                    continue;
                };
                let key = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                if !key.starts_with(&prefix) {
                    continue;
                }
                let size = entry
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| t.io("listing", e.into()))?;
                out.push(ObjectInfo { key, size });
            }
            Ok(out)
        })
        .await
    }

    fn local_writer(
        &self,
        dir_key: &str,
    ) -> Option<TargetResult<(std::fs::File, super::LocalWrite)>> {
        let open = || -> TargetResult<(std::fs::File, super::LocalWrite)> {
            self.ready_for_write()?;
            let dir = self.path(dir_key)?;
            crate::util::create_private_dir_all(&dir)
                .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
            self.clean_leftovers_once(&dir);
            let tmp = dir.join(format!("incoming{TMP_MARK}{}", crate::util::random_hex(8)));
            let file = crate::util::create_private_file(&tmp)
                .map_err(|e| self.io(format!("creating {}", tmp.display()), e))?;
            Ok((
                file,
                super::LocalWrite {
                    target: self.name.clone(),
                    dir,
                    tmp,
                },
            ))
        };
        Some(open())
    }

    async fn init(&self) -> TargetResult<bool> {
        let t = handle(self);
        blocking(move || t.initialise()).await
    }

    async fn readiness(&self) -> TargetResult<Readiness> {
        match self.presence() {
            Presence::Ready => Ok(Readiness::Ready),
            Presence::NoRoot if self.create => Ok(Readiness::CreatedOnFirstRun(format!(
                "{} does not exist yet; the first run creates it (create = true)",
                self.root.display()
            ))),
            _ => Err(self.missing()),
        }
    }

    async fn delete(&self, key: &str) -> TargetResult<()> {
        if !self.ready_for_read()? {
            return Ok(());
        }
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(format!("deleting {key}"), e)),
        }
    }
}
