//! Storage: where the bytes of a target live, behind one trait, [`Backend`].
//!
//! This room owns how objects are stored, read, listed and removed on a
//! target (an fs directory in [`fs`], an S3 bucket + prefix in [`s3`]), the
//! validated object key ([`ObjectKey`]), the classified error
//! ([`StorageError`]) and what a backend can do ([`Capabilities`]). It does
//! not know what the objects mean: the names of backupctl's data come from
//! [`crate::repo::layout`], and what is kept or read from where is decided in
//! [`crate::repo`] and [`crate::ops`]. "Target" stays the user's word (config
//! `[targets.NAME]`, messages "target nas: ..."); here a target is a backend.
//!
//! Every backend guarantees, and `tests/storage_suite.rs` checks: writes are
//! atomic (a reader never sees a partial object; a failed write leaves
//! nothing), `list` is complete or fails, reads stream, and a range read
//! returns exactly the bytes asked for.

pub mod fs;
pub mod s3;

use crate::config::{Config, TargetSpec};
use async_trait::async_trait;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A target failure, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
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

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A key that cannot name an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {key:?}: {why}")]
pub struct InvalidKey {
    pub key: String,
    pub why: &'static str,
}

/// The name of an object relative to a target's root: `/`-separated
/// components, none empty, `.` or `..`, no leading `/`, no NUL or other
/// control character. The same key is a path below an fs root and an object
/// name below an S3 prefix, and can never leave either.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<ObjectKey, InvalidKey> {
        let key = key.into();
        match key_problem(&key) {
            None => Ok(ObjectKey(key)),
            Some(why) => Err(InvalidKey { key, why }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<ObjectKey, InvalidKey> {
        ObjectKey::new(format!("{}/{name}", self.0))
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Everything before the last component (None at the root).
    pub fn parent(&self) -> Option<ObjectKey> {
        self.0
            .rfind('/')
            .map(|i| ObjectKey(self.0[..i].to_string()))
    }
}

fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("empty");
    }
    if key.starts_with('/') {
        return Some("starts with '/'");
    }
    if key.chars().any(char::is_control) {
        return Some("contains a NUL or control character");
    }
    for c in key.split('/') {
        match c {
            "" => return Some("has an empty component"),
            "." | ".." => return Some("has a '.' or '..' component"),
            _ => {}
        }
    }
    None
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What `list` matches: keys starting with this string. Empty (everything),
/// a directory (`key/`), or a key-like start (`l` matches `l/x` and `lx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(p: impl Into<String>) -> Result<Prefix, InvalidKey> {
        let p = p.into();
        let head = p.strip_suffix('/').unwrap_or(&p);
        if !head.is_empty() {
            if let Some(why) = key_problem(head) {
                return Err(InvalidKey { key: p, why });
            }
        } else if !p.is_empty() {
            return Err(InvalidKey {
                key: p,
                why: "starts with '/'",
            });
        }
        Ok(Prefix(p))
    }

    /// Every key.
    pub fn all() -> Prefix {
        Prefix(String::new())
    }

    /// Every key below `dir` (`dir/...`).
    pub fn under(dir: &ObjectKey) -> Prefix {
        Prefix(format!("{dir}/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, key: &ObjectKey) -> bool {
        key.as_str().starts_with(&self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The marker at a target's root that says "this is a backupctl target".
/// Written by `backupctl init`; an fs target without it is not there.
pub const MARKER_NAME: &str = "backupctl-target.json";

/// The restore instructions at a target's root (written by the repository,
/// [`crate::repo::layout::Key::RestoreReadme`]): a directory holding them
/// holds backupctl data, which an fs `init` may adopt.
pub const RESTORE_FILE: &str = "RESTORE-README.txt";

/// [`MARKER_NAME`] as a key.
pub fn marker_key() -> ObjectKey {
    ObjectKey(MARKER_NAME.to_string())
}

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
    pub key: ObjectKey,
    pub size: u64,
}

/// What a backend can do, for the code that would otherwise ask which
/// backend it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Objects are local files: a write is durable once fsynced and renamed.
    pub local_files: bool,
    /// Large objects are uploaded in parts (which a crash can leave behind:
    /// [`Backend::cleanup_incomplete`]).
    pub multipart: bool,
    /// [`Backend::get_range`] reads only the range (not the object up to it).
    pub ranged_reads: bool,
    /// Objects can be made immutable for a retention period (not yet).
    pub object_lock: bool,
}

/// A byte stream read from a target. Which backend served it stays hidden.
pub struct ObjectReader(Inner);

enum Inner {
    /// A local file (possibly a range of it).
    File(std::io::Take<std::fs::File>),
    /// A network body.
    Async(Pin<Box<dyn AsyncRead + Send>>),
}

impl ObjectReader {
    pub(crate) fn file(f: std::fs::File, len: u64) -> ObjectReader {
        ObjectReader(Inner::File(f.take(len)))
    }

    pub(crate) fn stream(r: impl AsyncRead + Send + 'static) -> ObjectReader {
        ObjectReader(Inner::Async(Box::pin(r)))
    }

    /// A blocking reader, for a blocking thread (`spawn_blocking`). Must be
    /// called within a tokio runtime context (a network body is bridged to
    /// the runtime that serves it).
    pub fn into_blocking_read(self) -> Box<dyn Read + Send> {
        match self.0 {
            Inner::File(f) => Box::new(f),
            Inner::Async(r) => Box::new(tokio_util::io::SyncIoBridge::new(r)),
        }
    }

    /// An async reader.
    pub fn into_async_read(self) -> Pin<Box<dyn AsyncRead + Send>> {
        match self.0 {
            Inner::File(f) => {
                let limit = f.limit();
                Box::pin(tokio::fs::File::from_std(f.into_inner()).take(limit))
            }
            Inner::Async(r) => r,
        }
    }

    /// Read the rest, but at most `max + 1` bytes (so that "more than `max`"
    /// is known without reading it all).
    pub async fn read_to_end_bounded(self, max: u64) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_into_bounded(max, &mut v).await?;
        Ok(v)
    }

    /// [`ObjectReader::read_to_end_bounded`] into `buf` (cleared first), so a
    /// reader of many ranges reuses one buffer.
    pub async fn read_into_bounded(self, max: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        match self.0 {
            // Straight into `buf` on a blocking thread: tokio's file reads
            // go through a fresh buffer of their own per file.
            Inner::File(f) => {
                let mut v = std::mem::take(buf);
                let (v, read) = tokio::task::spawn_blocking(move || {
                    let read = f.take(max.saturating_add(1)).read_to_end(&mut v);
                    (v, read)
                })
                .await
                .map_err(std::io::Error::other)?;
                *buf = v;
                read.map(|_| ())
            }
            Inner::Async(r) => r
                .take(max.saturating_add(1))
                .read_to_end(buf)
                .await
                .map(|_| ()),
        }
    }
}

/// A private local file being written for an [`Upload`] (an fs target's
/// temporary, an S3 target's staging file): removed when dropped unless
/// [`TempFile::keep`] took it.
pub(crate) struct TempFile {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl TempFile {
    /// Create `path` (0600).
    pub(crate) fn create(path: std::path::PathBuf) -> std::io::Result<TempFile> {
        let file = crate::util::create_private_file(&path)?;
        Ok(TempFile {
            file: Some(file),
            path,
        })
    }

    /// The open file (None once kept).
    pub(crate) fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished"))
    }

    /// The file and its path, no longer removed on drop: the caller stores
    /// it or removes it.
    pub(crate) fn keep(mut self) -> (std::fs::File, std::path::PathBuf) {
        let file = self.file.take().expect("kept once");
        (file, std::mem::take(&mut self.path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An object being written by a blocking thread (the archiver) while its
/// name is not known yet: committed under its final key later, or thrown
/// away. Dropping it uncommitted throws it away too.
#[async_trait]
pub trait Upload: std::io::Write + Send {
    /// Store what was written as `key` (atomically, durably). When `key`
    /// already holds an object of the same size, the upload is discarded
    /// instead. Returns whether it was stored.
    async fn commit(self: Box<Self>, key: &ObjectKey) -> StorageResult<bool>;
    /// Throw what was written away.
    fn abort(self: Box<Self>);
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The configured name (`[targets.NAME]`).
    fn name(&self) -> &str;
    /// The configured `location`.
    fn location(&self) -> &str;
    /// A human description ("fs /mnt/nas/backupctl", "s3 bucket/prefix at endpoint").
    fn describe(&self) -> String;
    fn capabilities(&self) -> Capabilities;

    /// Store `data` under `key`, atomically.
    async fn put_bytes(&self, key: &ObjectKey, data: Vec<u8>) -> StorageResult<()>;
    /// Store the local file at `path` under `key`, atomically.
    async fn put_file(&self, key: &ObjectKey, path: &Path) -> StorageResult<()>;
    /// Open `key` for streaming.
    async fn get(&self, key: &ObjectKey) -> StorageResult<ObjectReader>;
    /// Open `len` bytes of `key` from `offset` on. A range that does not lie
    /// within the object is refused (Permanent).
    async fn get_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> StorageResult<ObjectReader>;
    /// The size of `key`, or None when absent.
    async fn stat(&self, key: &ObjectKey) -> StorageResult<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key; complete
    /// or an error. Names that are not valid keys are left out.
    async fn list(&self, prefix: &Prefix) -> StorageResult<Vec<ObjectInfo>>;
    /// Remove `key`; removing an absent key is not an error.
    async fn delete(&self, key: &ObjectKey) -> StorageResult<()>;
    /// Make this a backupctl target: create what is missing and write the
    /// marker. Returns false when it already was one.
    async fn init(&self) -> StorageResult<bool>;
    /// Is the target there (without writing anything)? Unavailable when not.
    async fn readiness(&self) -> StorageResult<Readiness>;
    /// Remove what interrupted writes left behind that is older than
    /// `older_than` (S3: multipart uploads and local staging files; fs:
    /// temporaries); returns how many.
    async fn cleanup_incomplete(&self, older_than: Duration) -> StorageResult<usize>;
    /// Start an object in the directory `dir` whose final key is known only
    /// once it is written ([`Upload::commit`]). The caller holds the lock of
    /// `dir`'s policy, so temporaries already in `dir` were left by a killed
    /// process and are removed (once per directory per backend instance).
    async fn upload(&self, dir: &ObjectKey) -> StorageResult<Box<dyn Upload>>;

    /// Read `key` completely.
    async fn get_bytes(&self, key: &ObjectKey) -> StorageResult<Vec<u8>> {
        self.get_limited(key, u64::MAX - 1).await
    }

    /// Read `key` completely, but never more than `max` bytes: a larger
    /// object is an error without reading it all (what a hostile target
    /// serves is bounded before it is held in memory).
    async fn get_limited(&self, key: &ObjectKey, max: u64) -> StorageResult<Vec<u8>> {
        let data = self
            .get(key)
            .await?
            .read_to_end_bounded(max)
            .await
            .map_err(|source| StorageError::Io {
                target: self.name().to_string(),
                context: format!("reading {key}"),
                source,
            })?;
        if data.len() as u64 > max {
            return Err(StorageError::Permanent {
                target: self.name().to_string(),
                message: format!("{key} is larger than {max} bytes; not read"),
            });
        }
        Ok(data)
    }
}

pub type DynBackend = Arc<dyn Backend>;

/// The error for a range outside an object of `size` bytes.
pub(crate) fn bad_range(
    target: &str,
    key: &ObjectKey,
    offset: u64,
    len: u64,
    size: u64,
) -> StorageError {
    StorageError::Permanent {
        target: target.to_string(),
        message: format!(
            "{key}: range of {len} bytes at {offset} is outside the object ({size} bytes)"
        ),
    }
}

/// Build the target named `name` from the configuration. S3 targets stage
/// uploads in `<state_dir>/staging/.targets/<name>/` (policy and target names
/// never start with `.`).
pub async fn open(cfg: &Config, name: &str) -> crate::error::Result<DynBackend> {
    let spec = cfg
        .targets
        .get(name)
        .ok_or_else(|| crate::err!("target {name:?} is not defined"))?;
    Ok(match spec {
        TargetSpec::Fs(s) => Arc::new(fs::FsBackend::new(name, s)),
        TargetSpec::S3(s) => {
            let staging = cfg.state_dir.join("staging").join(".targets").join(name);
            Arc::new(s3::S3Backend::new(&cfg.path, name, s, &staging).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_refuse_what_could_leave_the_root_or_confuse_a_listing() {
        for ok in ["a", "p/archives/x.tar.zst", ".hidden", "a b/c", "ä/ö"] {
            assert!(ObjectKey::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a/.", "a\0b", "a\nb", "a\tb",
            "\u{7f}", "a\u{85}",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        let k = ObjectKey::new("p/archives/h.tar.zst").unwrap();
        assert_eq!(k.file_name(), "h.tar.zst");
        assert_eq!(k.parent().unwrap().as_str(), "p/archives");
        assert_eq!(ObjectKey::new("x").unwrap().parent(), None);
        assert!(k.join("..").is_err());
    }

    #[test]
    fn prefixes_are_key_starts() {
        for ok in ["", "l", "l/", "p/archives/", "p/snap"] {
            assert!(Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in ["/", "/a", "a//", "../", "a\0"] {
            assert!(Prefix::new(bad).is_err(), "{bad:?}");
        }
        let p = Prefix::new("l").unwrap();
        assert!(p.matches(&ObjectKey::new("lx/1").unwrap()));
        assert!(!Prefix::new("l/")
            .unwrap()
            .matches(&ObjectKey::new("lx/1").unwrap()));
    }
}
