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
            if !self.root.is_dir() {
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

    /// Writes create the root (and its parents) on first use.
    fn ensure_root(&self) -> TargetResult<()> {
        if !self.root.is_dir() {
            if let Err(e) = std::fs::create_dir_all(&self.root) {
                return Err(TargetError::Unavailable {
                    target: self.name.clone(),
                    message: format!("cannot create {}: {e}", self.root.display()),
                });
            }
        }
        Ok(())
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
        let result = std::fs::File::create(&tmp).and_then(|mut f| {
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
        if !self.root.exists() {
            return Ok(None); // nothing written yet
        }
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

    fn local_writer(
        &self,
        dir_key: &str,
    ) -> Option<TargetResult<(std::fs::File, super::LocalWrite)>> {
        let open = || -> TargetResult<(std::fs::File, super::LocalWrite)> {
            self.ensure_root()?;
            let dir = self.path(dir_key)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| self.io(format!("creating {}", dir.display()), e))?;
            // The caller holds the policy lock: temporaries already here were
            // left by a run that was killed.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("incoming{TMP_MARK}"))
                    {
                        tracing::warn!(
                            "removing {}, left by an interrupted run",
                            e.path().display()
                        );
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let tmp = dir.join(format!("incoming{TMP_MARK}{}", crate::util::random_hex(8)));
            let file = std::fs::File::create(&tmp)
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
