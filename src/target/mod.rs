//! Storage targets behind one trait: [`Target`]. Keys are `/`-separated paths
//! relative to the target's root (an fs directory, or an S3 bucket + prefix).
//!
//! Every backend guarantees: `put_*` is atomic (a reader never sees a partial
//! object), `list` is complete or fails, and `get` streams.

pub mod fs;
pub mod s3;

use crate::config::{Config, TargetSpec};
use async_trait::async_trait;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncRead;

/// A target failure, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {target}: {key} not found")]
    NotFound { target: String, key: String },
    /// Permanent: bad credentials, missing bucket, access denied, bad path.
    #[error("target {target}: {message}")]
    Permanent { target: String, message: String },
    /// The target could not be reached or kept failing (after retries).
    #[error("target {target}: unavailable: {message}")]
    Unavailable { target: String, message: String },
    #[error("target {target}: {context}: {source}")]
    Io {
        target: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TargetError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::NotFound { .. })
    }
}

pub type TargetResult<T> = Result<T, TargetError>;

/// The marker at a target's root that says "this is a backupctl target".
/// Written by `backupctl init`; an fs target without it is not there.
pub const MARKER_KEY: &str = "backupctl-target.json";

/// The restore instructions at every target's root.
pub use crate::repo::RESTORE_FILE;

/// The marker's content: what it is, which target, since when.
pub fn marker_bytes(target: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "format": "backupctl-target",
        "version": 1,
        "target": target,
        "created": crate::clock::now().to_rfc3339(),
        "note": "This directory (or bucket prefix) holds backupctl backups; see RESTORE-README.txt.",
    });
    let mut b = serde_json::to_vec_pretty(&v).expect("marker serialises");
    b.push(b'\n');
    b
}

/// Whether a target can be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not there yet, and the first run creates it (fs `create = true`).
    CreatedOnFirstRun(String),
}

/// An object's key and size, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// A byte stream read from a target.
pub enum ByteStream {
    /// A local file: read synchronously.
    File(std::fs::File),
    /// A network body.
    Async(Pin<Box<dyn AsyncRead + Send>>),
}

impl ByteStream {
    /// A blocking reader. For `Async` streams this must be called within a tokio
    /// runtime context and the reader used only from a blocking thread
    /// (`spawn_blocking`).
    pub fn into_blocking_read(self) -> Box<dyn Read + Send> {
        match self {
            ByteStream::File(f) => Box::new(f),
            ByteStream::Async(r) => Box::new(tokio_util::io::SyncIoBridge::new(r)),
        }
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// The configured name (`[targets.NAME]`).
    fn name(&self) -> &str;
    /// The configured `location`.
    fn location(&self) -> &str;
    /// A human description ("fs /mnt/nas/backupctl", "s3 bucket/prefix at endpoint").
    fn describe(&self) -> String;
    /// Store the local file at `path` under `key`, atomically.
    async fn put_file(&self, key: &str, path: &Path) -> TargetResult<()>;
    /// Store `data` under `key`, atomically.
    async fn put_bytes(&self, key: &str, data: Vec<u8>) -> TargetResult<()>;
    /// Open `key` for streaming.
    async fn get(&self, key: &str) -> TargetResult<ByteStream>;
    /// Read a small object completely.
    async fn get_bytes(&self, key: &str) -> TargetResult<Vec<u8>>;
    /// The size of `key`, or None when absent.
    async fn stat(&self, key: &str) -> TargetResult<Option<u64>>;
    /// Every object whose key starts with `prefix`; complete or an error.
    async fn list(&self, prefix: &str) -> TargetResult<Vec<ObjectInfo>>;
    /// Remove `key`; removing an absent key is not an error.
    async fn delete(&self, key: &str) -> TargetResult<()>;
    /// Remove incomplete uploads (S3 multipart uploads) started more than
    /// `older_than` ago; returns how many. Backends without such leftovers: 0.
    async fn abort_stale_uploads(&self, _older_than: std::time::Duration) -> TargetResult<usize> {
        Ok(0)
    }
    /// Make this a backupctl target: create what is missing and write the
    /// marker. Returns false when it already was one.
    async fn init(&self) -> TargetResult<bool> {
        if self.stat(MARKER_KEY).await?.is_some() {
            return Ok(false);
        }
        self.put_bytes(MARKER_KEY, marker_bytes(self.name()))
            .await?;
        Ok(true)
    }
    /// Is the target there (without writing anything)? Unavailable when not.
    async fn readiness(&self) -> TargetResult<Readiness> {
        Ok(Readiness::Ready)
    }
    /// Targets on a local file system can take an archive while it is being
    /// written: a temporary file inside `dir_key`, committed later under its
    /// final name with [`LocalWrite::commit`]. Others return None and get the
    /// finished archive through `put_file`. Called under the policy lock, so
    /// temporaries already in `dir_key` are leftovers of a killed run and are
    /// removed.
    fn local_writer(&self, dir_key: &str) -> Option<TargetResult<(std::fs::File, LocalWrite)>> {
        let _ = dir_key;
        None
    }
}

/// Make a fully written temporary file durable under its final name: fsync it,
/// rename it over `dest` (same directory), fsync the directory. On failure the
/// temporary is removed and `dest` is untouched.
pub(crate) fn persist(
    file: std::fs::File,
    tmp: &std::path::Path,
    dest: &std::path::Path,
) -> std::io::Result<()> {
    let result = file.sync_all().and_then(|_| {
        drop(file);
        std::fs::rename(tmp, dest)?;
        let dir = dest.parent().unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    });
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// A temporary file inside a local target, waiting for its final name.
pub struct LocalWrite {
    pub(crate) target: String,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) tmp: std::path::PathBuf,
}

impl LocalWrite {
    /// Store `file` (this temporary) as `name` in its directory: fsync, rename,
    /// fsync the directory. When `name` already exists with the same size the
    /// temporary is dropped instead. Returns whether the file was stored.
    pub fn commit(self, file: std::fs::File, name: &str) -> TargetResult<bool> {
        let dest = self.dir.join(name);
        let io = |context: &str, source: std::io::Error| TargetError::Io {
            target: self.target.clone(),
            context: format!("{context} {}", dest.display()),
            source,
        };
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == len) {
            drop(file);
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(false);
        }
        persist(file, &self.tmp, &dest).map_err(|e| io("storing", e))?;
        Ok(true)
    }

    /// Throw the temporary away.
    pub fn abort(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub type DynTarget = Arc<dyn Target>;

/// Read `key` completely, but never more than `max` bytes: a larger object
/// is an error without reading it all (what a hostile target serves is
/// bounded before it is held in memory).
pub async fn get_limited(t: &DynTarget, key: &str, max: u64) -> TargetResult<Vec<u8>> {
    let too_large = || TargetError::Permanent {
        target: t.name().to_string(),
        message: format!("{key} is larger than {max} bytes; not read"),
    };
    let io = |source: std::io::Error| TargetError::Io {
        target: t.name().to_string(),
        context: format!("reading {key}"),
        source,
    };
    let data = match t.get(key).await? {
        ByteStream::File(f) => tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            f.take(max + 1).read_to_end(&mut v).map(|_| v)
        })
        .await
        .expect("read task panicked")
        .map_err(io)?,
        ByteStream::Async(r) => {
            use tokio::io::AsyncReadExt;
            let mut v = Vec::new();
            r.take(max + 1).read_to_end(&mut v).await.map_err(io)?;
            v
        }
    };
    if data.len() as u64 > max {
        return Err(too_large());
    }
    Ok(data)
}

/// Build the target named `name` from the configuration.
pub async fn open(cfg: &Config, name: &str) -> anyhow::Result<DynTarget> {
    let spec = cfg
        .targets
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("target {name:?} is not defined"))?;
    Ok(match spec {
        TargetSpec::Fs(s) => Arc::new(fs::FsTarget::new(name, s)),
        TargetSpec::S3(s) => Arc::new(s3::S3Target::new(&cfg.path, name, s).await?),
    })
}
