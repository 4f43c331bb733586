//! `type = "fs"`: a local or mounted directory. Writes go to a temporary name
//! in the same directory, are fsynced, then renamed (and the directory fsynced).

use super::{ByteStream, ObjectInfo, Target, TargetError, TargetResult};
use crate::config::FsTargetSpec;
use async_trait::async_trait;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix marker of in-flight temporary files; never listed.
const TMP_MARK: &str = ".tmp-";

pub struct FsTarget {
    name: String,
    location: String,
    root: PathBuf,
}

impl FsTarget {
    pub fn new(name: &str, spec: &FsTargetSpec) -> FsTarget {
        FsTarget {
            name: name.to_string(),
            location: spec.location.clone(),
            root: spec.path.clone(),
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
        if source.kind() == io::ErrorKind::NotFound {
            // A missing root means the target (a NAS mount, say) is not there.
            if !self.root.is_dir() && self.root.exists() {
                return TargetError::Unavailable {
                    target: self.name.clone(),
                    message: format!(
                        "{} is missing or not a directory ({source})",
                        self.root.display()
                    ),
                };
            }
        }
        TargetError::Io {
            target: self.name.clone(),
            context: context.into(),
            source,
        }
    }

    /// The root must be a directory, or not exist yet below an existing parent
    /// (a target never written to: empty). Anything else is unavailable.
    fn check_root(&self) -> TargetResult<()> {
        if self.root.is_dir()
            || (!self.root.exists() && self.root.parent().is_some_and(Path::is_dir))
        {
            Ok(())
        } else {
            Err(TargetError::Unavailable {
                target: self.name.clone(),
                message: format!("{} is missing or not a directory", self.root.display()),
            })
        }
    }

    /// For writes: create the root when its parent exists (first use), else
    /// report the target unavailable (an unmounted NAS, say).
    fn ensure_root(&self) -> TargetResult<()> {
        if !self.root.is_dir() && self.root.parent().is_some_and(Path::is_dir) {
            let _ = std::fs::create_dir(&self.root);
        }
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(TargetError::Unavailable {
                target: self.name.clone(),
                message: format!("{} is missing or not a directory", self.root.display()),
            })
        }
    }

    /// Write via temp + fsync + rename; `fill` writes the content.
    fn atomic_write(
        &self,
        key: &str,
        fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
    ) -> TargetResult<()> {
        let dest = self.path(key)?;
        let dir = dest.parent().expect("key has a parent").to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(
            "{}{TMP_MARK}{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            crate::util::random_hex(8)
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            fill(&mut f)?;
            f.flush()?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.io(format!("writing {key}"), e));
        }
        Ok(())
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
        self.ensure_root()?;
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
        self.ensure_root()?;
        let (t, key) = (handle(self), key.to_string());
        blocking(move || t.atomic_write(&key, |f| f.write_all(&data))).await
    }

    async fn get(&self, key: &str) -> TargetResult<ByteStream> {
        self.check_root()?;
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
        self.check_root()?;
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
        self.check_root()?;
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(format!("stat {key}"), e)),
        }
    }

    async fn list(&self, prefix: &str) -> TargetResult<Vec<ObjectInfo>> {
        self.check_root()?;
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

    async fn delete(&self, key: &str) -> TargetResult<()> {
        self.check_root()?;
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(format!("deleting {key}"), e)),
        }
    }
}
