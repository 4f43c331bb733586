//! Archive reader: checks an archive against its BLAKE3 name while unpacking
//! it, path-safely, into a destination directory.
//!
//! Safety rules: entries with absolute paths or `..` components, hard links to
//! anything but an earlier entry, device nodes and FIFOs, and paths that would
//! pass through a symbolic link are refused; symbolic links that point outside
//! the destination are refused unless explicitly allowed (and are then created
//! but never followed). Nothing is written outside the destination.
//!
//! Decompression runs on its own thread and feeds the unpacker through a
//! bounded channel, so reading, decompressing and writing overlap.

use super::writer::Progress;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Why an extraction failed; decides whether another copy is worth trying.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The bytes are damaged, unreadable or don't match their hash: try another copy.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A hostile or unsupported entry was refused.
    #[error("refused: {0}")]
    Unsafe(String),
    /// A local problem writing the destination.
    #[error("writing {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn local(path: &Path, source: io::Error) -> ExtractError {
    ExtractError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Only entries whose path (relative to the archive root) matches are written.
    pub include: Option<super::Include>,
    /// Restore numeric ownership (only meaningful as root).
    pub preserve_owner: bool,
    /// Create symlinks whose target lies outside the destination.
    pub allow_external_links: bool,
    pub progress: Option<Arc<Progress>>,
    /// Hash every file's content (verify). Restore leaves it off: the archive
    /// hash already covers every byte, and nothing is moved into place until
    /// it has been checked.
    pub hash_files: bool,
}

/// What was unpacked.
#[derive(Debug, Default)]
pub struct ExtractReport {
    /// path -> (size, BLAKE3) of every regular file written (the hash is
    /// empty unless `hash_files`).
    pub files: HashMap<String, (u64, String)>,
    pub entries: u64,
    pub archive_hash: String,
    pub archive_size: u64,
    /// Entries not written (filtered out by include).
    pub skipped: u64,
}

/// Reader that hashes and counts what passes, and remembers whether an error
/// came from the underlying source (as opposed to the decoder).
struct SourceReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// A Read over chunks arriving on a channel; used chunks go back for reuse
/// (fresh 1 MiB allocations would each cost a round of page faults).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.cur, chunk);
                    if used.capacity() > 0 {
                        let _ = self.recycle.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpack the `.tar.zst` read from `src` into `dest`, checking the archive's
/// BLAKE3 against `expected_hash` (when given) once the stream is consumed.
pub fn extract<R: Read + Send>(
    src: R,
    expected_hash: Option<&str>,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ExtractError> {
    fs::create_dir_all(dest).map_err(|e| local(dest, e))?;
    let source_failed = Arc::new(AtomicBool::new(false));
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let failed = source_failed.clone();
        let decoder = scope.spawn(move || -> Result<(String, u64), ExtractError> {
            let mut sr = SourceReader {
                inner: src,
                hasher: blake3::Hasher::new(),
                count: 0,
                failed: failed.clone(),
            };
            let classify = |e: io::Error, failed: &AtomicBool| {
                if failed.load(Ordering::SeqCst) {
                    ExtractError::Integrity(format!("reading the archive failed: {e}"))
                } else {
                    ExtractError::Integrity(format!("archive is not valid zstd data: {e}"))
                }
            };
            {
                let mut dec =
                    zstd::stream::read::Decoder::new(&mut sr).map_err(|e| classify(e, &failed))?;
                loop {
                    let mut chunk = recycle_rx.try_recv().unwrap_or_default();
                    chunk.resize(CHUNK, 0);
                    let mut filled = 0;
                    while filled < chunk.len() {
                        match dec.read(&mut chunk[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let err = classify(e, &failed);
                                let _ = tx.send(Err(io::Error::other(err.to_string())));
                                return Err(err);
                            }
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    chunk.truncate(filled);
                    if tx.send(Ok(chunk)).is_err() {
                        break; // the unpacker stopped; keep reading to finish the hash
                    }
                }
                drop(tx);
                // Consume anything left (trailing frames after the tar end, or
                // what the unpacker did not need) so the hash covers every byte.
                io::copy(&mut dec, &mut io::sink()).map_err(|e| classify(e, &failed))?;
            }
            io::copy(&mut sr, &mut io::sink()).map_err(|e| classify(e, &failed))?;
            Ok((sr.hasher.finalize().to_hex().to_string(), sr.count))
        });

        let reader = ChannelReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
            pos: 0,
        };
        let unpacked = Unpacker::new(dest, opts).run(reader);
        let decoded = decoder.join().expect("decoder thread panicked");
        // A decode failure explains an unpack failure; report the cause.
        let (hash, size) = decoded?;
        if let Some(expected) = expected_hash {
            if hash != expected {
                return Err(ExtractError::Integrity(format!(
                    "archive bytes hash to {hash}, expected {expected}: the copy is damaged"
                )));
            }
        }
        let mut report = unpacked?;
        report.archive_hash = hash;
        report.archive_size = size;
        Ok(report)
    })
}

/// Validate an archive path: relative, no `..`, no root; returns it normalised.
pub fn safe_relative(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{}: path contains '..'", raw.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{}: absolute path", raw.display()));
            }
        }
    }
    Ok(out)
}

/// Does a symlink at `link` (relative to the root) with target `target` stay inside the root?
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&OsStr> = link
        .parent()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(p) => depth.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: filetime::FileTime,
    owner: Option<(u32, u32)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    opts: &'a ExtractOptions,
    known_dirs: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
    report: ExtractReport,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, opts: &'a ExtractOptions) -> Self {
        Unpacker {
            dest,
            opts,
            known_dirs: HashSet::new(),
            dirs: Vec::new(),
            report: ExtractReport::default(),
            buf: vec![0; 256 << 10],
        }
    }

    fn run<R: Read>(mut self, reader: R) -> Result<ExtractReport, ExtractError> {
        let bad = |e: io::Error| {
            ExtractError::Integrity(format!("archive is not a valid tar stream: {e}"))
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            self.entry(&mut entry)?;
        }
        // Directories last, deepest first, so their mtimes and modes stick.
        self.dirs.sort_by(|a, b| {
            b.path
                .components()
                .count()
                .cmp(&a.path.components().count())
        });
        for d in std::mem::take(&mut self.dirs) {
            if let Some((uid, gid)) = d.owner {
                let _ = std::os::unix::fs::lchown(&d.path, Some(uid), Some(gid));
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(|e| local(&d.path, e))?;
            filetime::set_file_mtime(&d.path, d.mtime).map_err(|e| local(&d.path, e))?;
        }
        Ok(self.report)
    }

    fn included(&self, rel: &Path, is_dir: bool) -> bool {
        self.opts
            .include
            .as_ref()
            .is_none_or(|i| i.matches(rel, is_dir))
    }

    /// Make sure `rel`'s directory exists inside dest without passing through a symlink.
    fn ensure_dir(&mut self, rel: &Path) -> Result<PathBuf, ExtractError> {
        let mut cur = self.dest.to_path_buf();
        let mut relp = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            relp.push(c);
            if self.known_dirs.contains(&relp) {
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ExtractError::Unsafe(format!(
                        "{}: path passes through a symbolic link; refusing to write through it",
                        relp.display()
                    )))
                }
                Ok(_) => {
                    return Err(ExtractError::Unsafe(format!(
                        "{}: expected a directory but a file is in the way",
                        relp.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| local(&cur, e))?;
                }
                Err(e) => return Err(local(&cur, e)),
            }
            self.known_dirs.insert(relp.clone());
        }
        Ok(cur)
    }

    /// Remove a non-directory at `path` (never following links).
    fn clear(&self, path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Err(ExtractError::Unsafe(format!(
                "{}: a directory is in the way of a file entry",
                path.display()
            ))),
            Ok(_) => fs::remove_file(path).map_err(|e| local(path, e)),
            Err(_) => Ok(()),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), ExtractError> {
        let raw = entry
            .path()
            .map_err(|e| ExtractError::Integrity(format!("bad entry path: {e}")))?
            .into_owned();
        let rel = safe_relative(&raw).map_err(ExtractError::Unsafe)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        self.report.entries += 1;
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root itself ("./")
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mut mtime = filetime::FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0);
        let owner = if self.opts.preserve_owner {
            Some((
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            ))
        } else {
            None
        };
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                if ext.key() == Ok("mtime") {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                }
            }
        }
        let included = self.included(&rel, kind == tar::EntryType::Directory);
        let parent = rel.parent().unwrap_or(Path::new(""));
        match kind {
            tar::EntryType::Directory => {
                if !included {
                    self.report.skipped += 1;
                    return Ok(());
                }
                let path = self.ensure_dir(&rel)?;
                // Keep the directory writable until all its entries are in.
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
                self.dirs.push(DirMeta { path, mode, mtime, owner });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if !included {
                    self.report.skipped += 1;
                    io::copy(entry, &mut io::sink()).map_err(|e| ExtractError::Integrity(format!("reading {}: {e}", rel.display())))?;
                    return Ok(());
                }
                let dir = self.ensure_dir(parent)?;
                let path = dir.join(rel.file_name().unwrap_or_default());
                let create = || {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                };
                let mut file = match create() {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.clear(&path)?;
                        create().map_err(|e| local(&path, e))?
                    }
                    Err(e) => return Err(local(&path, e)),
                };
                let mut hasher = blake3::Hasher::new();
                let mut written = 0u64;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(ExtractError::Integrity(format!("reading {}: {e}", rel.display()))),
                    };
                    if self.opts.hash_files {
                        hasher.update(&self.buf[..n]);
                    }
                    file.write_all(&self.buf[..n]).map_err(|e| local(&path, e))?;
                    written += n as u64;
                    if let Some(p) = &self.opts.progress {
                        p.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                if written != size {
                    return Err(ExtractError::Integrity(format!("{}: truncated entry", rel.display())));
                }
                if let Some((uid, gid)) = owner {
                    let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
                }
                file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| local(&path, e))?;
                filetime::set_file_handle_times(&file, None, Some(mtime)).map_err(|e| local(&path, e))?;
                drop(file);
                if let Some(p) = &self.opts.progress {
                    p.files.fetch_add(1, Ordering::Relaxed);
                }
                // Empty when not hashed (see ExtractOptions::hash_files).
                let hash = if self.opts.hash_files {
                    hasher.finalize().to_hex().to_string()
                } else {
                    String::new()
                };
                self.report.files.insert(rel.to_string_lossy().into_owned(), (written, hash));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| ExtractError::Integrity(format!("bad link target: {e}")))?
                    .ok_or_else(|| ExtractError::Integrity(format!("{}: symlink without target", rel.display())))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) && !self.opts.allow_external_links {
                    return Err(ExtractError::Unsafe(format!(
                        "{}: symbolic link to {} points outside the destination",
                        rel.display(),
                        target.display()
                    )));
                }
                if !included {
                    self.report.skipped += 1;
                    return Ok(());
                }
                let dir = self.ensure_dir(parent)?;
                let path = dir.join(rel.file_name().unwrap_or_default());
                self.clear(&path)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| local(&path, e))?;
                if let Some((uid, gid)) = owner {
                    let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(gid));
                }
                filetime::set_symlink_file_times(&path, mtime, mtime).map_err(|e| local(&path, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ExtractError::Integrity(format!("bad link target: {e}")))?
                    .ok_or_else(|| ExtractError::Integrity(format!("{}: hard link without target", rel.display())))?
                    .into_owned();
                let target_rel = safe_relative(&target)
                    .map_err(|e| ExtractError::Unsafe(format!("{}: hard link target {e}", rel.display())))?;
                let key = target_rel.to_string_lossy().into_owned();
                let Some(info) = self.report.files.get(&key).cloned() else {
                    return Err(ExtractError::Unsafe(format!(
                        "{}: hard link to {} which is not a file earlier in this archive",
                        rel.display(),
                        target.display()
                    )));
                };
                if !included {
                    self.report.skipped += 1;
                    return Ok(());
                }
                let dir = self.ensure_dir(parent)?;
                let path = dir.join(rel.file_name().unwrap_or_default());
                self.clear(&path)?;
                let src = self.ensure_dir(target_rel.parent().unwrap_or(Path::new("")))?.join(target_rel.file_name().unwrap_or_default());
                fs::hard_link(&src, &path).map_err(|e| local(&path, e))?;
                self.report.files.insert(rel.to_string_lossy().into_owned(), info);
            }
            other => {
                return Err(ExtractError::Unsafe(format!(
                    "{}: refusing entry of type {:?} (device nodes, FIFOs and other special files are not restored)",
                    rel.display(),
                    other
                )))
            }
        }
        Ok(())
    }
}

fn parse_pax_time(s: &str) -> Option<filetime::FileTime> {
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    Some(filetime::FileTime::from_unix_time(secs, nanos))
}

/// Compare unpacked files with the manifest's records; returns the problems.
/// With `include`, only matching manifest files are expected.
pub fn compare_files(
    expected: &[super::manifest::FileRecord],
    got: &HashMap<String, (u64, String)>,
    include: Option<&super::Include>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = 0usize;
    for f in expected {
        if include.is_some_and(|i| !i.matches(Path::new(&f.path), false)) {
            continue;
        }
        seen += 1;
        match got.get(&f.path) {
            None => problems.push(format!("{}: missing from the archive", f.path)),
            Some((size, hash)) if *size != f.size || (!hash.is_empty() && *hash != f.blake3) => {
                problems.push(format!(
                    "{}: content does not match its BLAKE3 in the manifest",
                    f.path
                ))
            }
            Some(_) => {}
        }
    }
    if include.is_none() && got.len() > seen {
        let names: HashSet<&str> = expected.iter().map(|f| f.path.as_str()).collect();
        for p in got.keys().filter(|p| !names.contains(p.as_str())).take(10) {
            problems.push(format!("{p}: in the archive but not in the manifest"));
        }
    }
    problems
}

/// Open a file inside `root`; used by checks that read restored content.
pub fn open_inside(root: &Path, rel: &str) -> io::Result<File> {
    let rel = safe_relative(Path::new(rel)).map_err(io::Error::other)?;
    File::open(root.join(rel))
}
