//! Archive reader: unpacks a `.tar.zst` into a directory it is given as an
//! open descriptor, checking the bytes against their BLAKE3 name and the
//! manifest's records on the way. Owns what an archive may do to the
//! destination.
//!
//! - **Nothing outside the destination, nothing through a link.** Entries
//!   with absolute paths or `..` are refused. Every path is created beneath
//!   the destination descriptor, one `openat(O_NOFOLLOW)` per component (see
//!   [`super::beneath`]), so a symbolic link in the tree, wherever it points
//!   and however it is chained, stops any later entry that would pass through
//!   it; leaves are created with `O_EXCL` (an entry never replaces another).
//!   Symbolic links are therefore created as they were, absolute or pointing
//!   outside included, as GNU tar and restic do (links are checked by
//!   resolution, not by text, and need no delayed creation). Hard links only
//!   to a regular file written earlier by this archive; device nodes, FIFOs
//!   and sparse entries are refused.
//! - **No privilege is created.** Ownership is restored only when asked
//!   (root, without `--no-same-owner`); setuid and setgid bits are applied
//!   only together with the owner and group they came with, and dropped
//!   whenever ownership is not restored (verify never restores it). The
//!   sticky bit is kept: it grants nothing. Directory modes, owners and times,
//!   the root's ("./") included, are applied only once the archive's hash has
//!   been checked, so until then the tree stays in 0700 directories.
//! - **Bounded by the manifest.** With [`Expected`], the compressed stream
//!   may not exceed the recorded archive size, the tar stream the recorded
//!   tar size, and every regular file must be listed with the size its header
//!   announces; metadata entries (long names, pax headers) are limited to
//!   [`MAX_META_ENTRY`]. Any violation stops at once as an integrity failure
//!   of that copy, never after writing what was announced.
//! - **Errors say whose fault they are** ([`ExtractError`]): only a local
//!   problem writing the destination (disk full, permissions, read-only file
//!   system) is [`ExtractError::Io`]; anything the archive causes is
//!   integrity or unsafe, and callers try another copy.
//!
//! Decompression runs on its own thread and feeds the unpacker through a
//! bounded channel, so reading, decompressing and writing overlap.

use super::beneath::{self, Cursor, WalkError};
use super::manifest::{FileRecord, SourceRecord};
use super::writer::Progress;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Largest GNU long-name / long-link or pax header entry accepted (they are
/// held in memory whole).
pub const MAX_META_ENTRY: u64 = 1 << 20;

/// The setuid and setgid bits: applied only with the owner they came with.
const SETID: u32 = 0o6000;

/// Why an extraction failed; decides whether another copy is worth trying.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The bytes are damaged, unreadable, oversized or don't match their
    /// hash or the manifest: try another copy.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A hostile, unsupported or unrestorable entry was refused: try another copy.
    #[error("refused: {0}")]
    Unsafe(String),
    /// A local problem writing the destination (disk full, permissions...): stop.
    #[error("writing {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Is this error the destination's fault (rather than the archive's)?
fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::EIO
                | libc::EACCES
                | libc::EPERM
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EFBIG
        )
    )
}

/// Classify an error creating or writing `rel`.
fn write_error(dest: &Path, rel: &Path, e: io::Error) -> ExtractError {
    if is_local(&e) {
        ExtractError::Io {
            path: dest.join(rel).display().to_string(),
            source: e,
        }
    } else if e.kind() == io::ErrorKind::AlreadyExists {
        ExtractError::Unsafe(format!(
            "{}: appears twice in the archive (or a directory is in its way)",
            rel.display()
        ))
    } else {
        ExtractError::Unsafe(format!("{}: cannot be restored: {e}", rel.display()))
    }
}

fn walk_error(dest: &Path, rel: &Path, comps: &[&OsStr], e: WalkError) -> ExtractError {
    let at = |d: usize| {
        comps[..=d.min(comps.len().saturating_sub(1))]
            .iter()
            .collect::<PathBuf>()
    };
    match e {
        WalkError::Symlink(d) => ExtractError::Unsafe(format!(
            "{}: {} is a symbolic link; refusing to write through it",
            rel.display(),
            at(d).display()
        )),
        WalkError::NotDir(d) => ExtractError::Unsafe(format!(
            "{}: {} is not a directory (a file is in the way)",
            rel.display(),
            at(d).display()
        )),
        WalkError::Missing(d) => ExtractError::Unsafe(format!(
            "{}: {} does not exist",
            rel.display(),
            at(d).display()
        )),
        WalkError::Io(_, e) => write_error(dest, rel, e),
    }
}

/// What the manifest says an archive holds; extraction stops as soon as the
/// archive disagrees.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Bytes of the tar stream.
    pub tar_size: u64,
    /// Every regular file (raw path bytes) with its size.
    pub files: HashMap<Vec<u8>, u64>,
}

impl Expected {
    /// The recorded size of the file `key` (raw bytes). A manifest written
    /// before `path_b64` existed holds a lossy rendering of a name that is
    /// not UTF-8; such a name is found by that rendering.
    pub fn size_of(&self, key: &[u8]) -> Option<u64> {
        self.files.get(key).copied().or_else(|| {
            std::str::from_utf8(key)
                .is_err()
                .then(|| {
                    self.files
                        .get(String::from_utf8_lossy(key).as_bytes())
                        .copied()
                })
                .flatten()
        })
    }

    /// From a source's record and its file index (regular files).
    pub fn from_index(rec: &SourceRecord, index: &[FileRecord]) -> Result<Expected, String> {
        let mut files = HashMap::with_capacity(index.len());
        for f in index.iter().filter(|f| f.is_file()) {
            files.insert(f.path_bytes()?.into_owned(), f.size);
        }
        Ok(Expected {
            tar_size: rec.stream.size,
            files,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Only entries whose path (relative to the archive root) matches are written.
    pub include: Option<super::Include>,
    /// Restore numeric ownership, and with it setuid/setgid bits (root only).
    pub preserve_owner: bool,
    /// Give the destination directory itself the archive root's ("./")
    /// mode, owner and mtime (restore). Verify leaves its 0700 scratch
    /// directory alone.
    pub apply_root: bool,
    pub progress: Option<Arc<Progress>>,
    /// Where that progress is shown (the caller's display; hidden by default).
    pub display: crate::progress::Handle,
    /// Hash every file's content (verify). Restore leaves it off: the archive
    /// hash already covers every byte, and nothing is moved into place until
    /// it has been checked.
    pub hash_files: bool,
    /// Bounds from the manifest (see [`Expected`]).
    pub expect: Option<Arc<Expected>>,
}

/// What was unpacked.
#[derive(Debug, Default)]
pub struct ExtractReport {
    /// raw path -> (size, BLAKE3) of every regular file written (the hash is
    /// empty unless `hash_files`).
    pub files: HashMap<Vec<u8>, (u64, String)>,
    pub entries: u64,
    pub archive_hash: String,
    pub archive_size: u64,
    /// Entries not written (filtered out by include).
    pub skipped: u64,
    /// Entries whose ownership could not be restored (their setuid/setgid
    /// bits were dropped).
    pub owner_failures: u64,
}

/// Reader that hashes and counts what passes, refuses to pass more than
/// `limit` bytes, and remembers whether an error came from the underlying
/// source (as opposed to the decoder).
struct SourceReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
    limit: Option<u64>,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.limit {
            // One byte past the limit is enough to know it was exceeded.
            Some(l) => buf
                .len()
                .min((l - self.count.min(l)).saturating_add(1) as usize),
            None => buf.len(),
        };
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                if let Some(l) = self.limit.filter(|l| self.count > *l) {
                    self.failed.store(true, Ordering::SeqCst);
                    return Err(io::Error::other(format!(
                        "the target serves more than the recorded {l} bytes"
                    )));
                }
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
    /// A decoder error was handed to the unpacker (it explains what failed).
    forwarded_error: bool,
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
                Ok(Err(e)) => {
                    self.forwarded_error = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The reader thread's result: (BLAKE3, bytes) of the tar stream, or None
/// when it was told to stop (the unpacker failed first).
type Decoded = Result<Option<(String, u64)>, ExtractError>;

/// Unpack the tar stream read from `src` (format v2: already reassembled
/// from its chunks, each checked) into the directory `dest` (an open
/// descriptor; `dest_path` names it in messages), checking the stream's
/// BLAKE3 against `expected_hash` (when given) once it is consumed.
/// Directory metadata is applied only after that check.
pub fn extract<R: Read + Send>(
    src: R,
    expected_hash: Option<&str>,
    dest: BorrowedFd<'_>,
    dest_path: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ExtractError> {
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    let sr = SourceReader {
        inner: src,
        hasher: blake3::Hasher::new(),
        count: 0,
        limit: opts.expect.as_ref().map(|e| e.tar_size),
        failed: Arc::new(AtomicBool::new(false)),
    };
    std::thread::scope(|scope| {
        let stop = &stop;
        let decoder = scope.spawn(move || decode(sr, stop, tx, recycle_rx));
        let mut reader = ChannelReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
            pos: 0,
            forwarded_error: false,
        };
        let mut unpacker = Unpacker::new(dest, dest_path, opts);
        let unpacked = unpacker.run(&mut reader);
        if unpacked.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let forwarded = reader.forwarded_error;
        drop(reader);
        let decoded = decoder.join().expect("reader thread panicked");
        let (hash, size) = first_cause(decoded, unpacked, forwarded)?;
        check_stream(&hash, size, expected_hash, opts)?;
        // The bytes are the ones recorded: now directories get their modes.
        let mut report = unpacker.finish()?;
        report.archive_hash = hash;
        report.archive_size = size;
        Ok(report)
    })
}

/// The reader thread: read `sr` in 1 MiB chunks (reusing those that come
/// back on `recycle`) and send them to the unpacker until the end or
/// `stop`; a read error is forwarded too. Once the unpacker has left, the
/// rest is still read (bounded) so the hash covers every byte.
fn decode<R: Read>(
    mut sr: SourceReader<R>,
    stop: &AtomicBool,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    recycle: mpsc::Receiver<Vec<u8>>,
) -> Decoded {
    const CHUNK: usize = 1 << 20;
    let mut unpacker_done = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut chunk = recycle.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let filled = match fill(&mut sr, &mut chunk) {
            Ok(n) => n,
            Err(e) => {
                let err = ExtractError::Integrity(format!("reading the stream failed: {e}"));
                if !unpacker_done {
                    let _ = tx.send(Err(io::Error::other(err.to_string())));
                }
                return Err(err);
            }
        };
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        if !unpacker_done && tx.send(Ok(chunk)).is_err() {
            unpacker_done = true;
        }
    }
    drop(tx);
    Ok(Some((sr.hasher.finalize().to_hex().to_string(), sr.count)))
}

/// Read into `buf` until it is full or the source ends; returns the bytes read.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The stream's (BLAKE3, size), or the first cause of failure: a read
/// failure the unpacker ran into (`forwarded`), or the unpacker's own refusal.
fn first_cause(
    decoded: Decoded,
    unpacked: Result<(), ExtractError>,
    forwarded: bool,
) -> Result<(String, u64), ExtractError> {
    match (decoded, unpacked) {
        (Err(d), Err(_)) if forwarded => Err(d),
        (_, Err(u)) => Err(u),
        (Err(d), Ok(())) => Err(d),
        (Ok(None), Ok(())) => unreachable!("the reader stops only after an unpack error"),
        (Ok(Some(x)), Ok(())) => Ok(x),
    }
}

/// Refuse a stream whose hash or size is not the one recorded.
fn check_stream(
    hash: &str,
    size: u64,
    expected_hash: Option<&str>,
    opts: &ExtractOptions,
) -> Result<(), ExtractError> {
    if let Some(expected) = expected_hash {
        if hash != expected {
            return Err(ExtractError::Integrity(format!(
                "the stream hashes to {hash}, the manifest records {expected}: the copy is damaged"
            )));
        }
    }
    if let Some(e) = &opts.expect {
        if size != e.tar_size {
            return Err(ExtractError::Integrity(format!(
                "the stream is {size} bytes; the manifest records {}",
                e.tar_size
            )));
        }
    }
    Ok(())
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

/// Why the reader would refuse an entry named `rel` (relative to the source
/// root), if it would; the writer warns about such names at `run` time.
pub fn name_problem(rel: &Path) -> Option<String> {
    let bytes = rel.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Some(format!("{}: name contains a NUL byte", rel.display()));
    }
    if let Err(e) = safe_relative(rel) {
        return Some(e);
    }
    rel.iter().find(|c| c.len() > 255).map(|c| {
        format!(
            "{}: a name component is {} bytes long (file systems allow 255)",
            rel.display(),
            c.len()
        )
    })
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Option<filetime::FileTime>,
    owner: Option<(u32, u32)>,
}

/// The name-related extension entries met before an entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// The directories an extraction walked, as a tree in which each node holds
/// only its own name: memory stays linear in the archive however deep its
/// paths are (a set of full paths holds every prefix of each, quadratic in
/// the depth: a 1 MiB long name of "a/a/a/..." would need 250 GiB).
struct DirTree {
    /// Node 0 is the destination itself.
    nodes: Vec<DirNode>,
}

struct DirNode {
    name: OsString,
    parent: usize,
    children: HashMap<OsString, usize>,
    /// The metadata of its archive entry, if it had one.
    meta: Option<DirMeta>,
    /// Made by this extraction (then it gets the default metadata when the
    /// archive has no entry for it).
    created: bool,
}

impl DirTree {
    fn new() -> DirTree {
        DirTree {
            nodes: vec![DirNode {
                name: OsString::new(),
                parent: 0,
                children: HashMap::new(),
                meta: None,
                created: false,
            }],
        }
    }

    /// The node of the directory `comps`, adding the missing ones; `created`
    /// holds the depths (ascending) this extraction just made.
    fn record(&mut self, comps: &[&OsStr], created: &[usize]) -> usize {
        let mut cur = 0;
        let mut made = created.iter().peekable();
        for (depth, name) in comps.iter().enumerate() {
            cur = match self.nodes[cur].children.get(*name) {
                Some(&i) => i,
                None => {
                    let i = self.nodes.len();
                    self.nodes.push(DirNode {
                        name: name.to_os_string(),
                        parent: cur,
                        children: HashMap::new(),
                        meta: None,
                        created: false,
                    });
                    self.nodes[cur].children.insert(name.to_os_string(), i);
                    i
                }
            };
            if made.next_if_eq(&&depth).is_some() {
                self.nodes[cur].created = true;
            }
        }
        cur
    }

    /// The path of node `i` (for messages).
    fn path(&self, mut i: usize) -> PathBuf {
        let mut names = Vec::new();
        while i != 0 {
            names.push(self.nodes[i].name.as_os_str());
            i = self.nodes[i].parent;
        }
        names.iter().rev().collect()
    }
}

/// A directory's identity, to check one reopened through "..".
fn dev_ino(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    dest: &'a Path,
    cursor: Cursor<'a>,
    opts: &'a ExtractOptions,
    /// Every directory walked, with its entry's metadata when it had one.
    tree: DirTree,
    /// Scratch: the depths the last walk created.
    made: Vec<usize>,
    root_meta: Option<DirMeta>,
    report: ExtractReport,
    buf: Vec<u8>,
    umask: u32,
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn pax_value<'p>(pax: &'p Option<Vec<u8>>, key: &str) -> Option<&'p [u8]> {
    let pax = pax.as_ref()?;
    tar::PaxExtensions::new(pax)
        .filter_map(|e| e.ok())
        .filter(|e| e.key_bytes() == key.as_bytes())
        .last()
        .map(|e| e.value_bytes())
}

/// An entry's mode, mtime and owner (None unless ownership is restored).
struct Attrs {
    mode: u32,
    mtime: filetime::FileTime,
    owner: Option<(u32, u32)>,
}

impl Attrs {
    /// As a directory's deferred metadata.
    fn dir_meta(&self) -> DirMeta {
        DirMeta {
            mode: self.mode,
            mtime: Some(self.mtime),
            owner: self.owner,
        }
    }
}

/// A pax record's decimal value, or `dflt`.
fn pax_num(pax: &Option<Vec<u8>>, key: &str, dflt: u64) -> u64 {
    pax_value(pax, key)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(dflt)
}

/// An entry's path (GNU long name, else pax path, else the header's),
/// checked to be relative, without `..` and without NUL bytes.
fn entry_path(header: &tar::Header, p: &Pending) -> Result<PathBuf, ExtractError> {
    let raw = match &p.long_name {
        Some(n) => trim_nul(n.clone()),
        None => match pax_value(&p.pax, "path") {
            Some(v) => v.to_vec(),
            None => header.path_bytes().into_owned(),
        },
    };
    let rel = safe_relative(Path::new(OsStr::from_bytes(&raw))).map_err(ExtractError::Unsafe)?;
    if raw.contains(&0) {
        return Err(ExtractError::Unsafe(format!(
            "{}: name contains a NUL byte",
            rel.display()
        )));
    }
    Ok(rel)
}

/// Refuse a pax size that disagrees with the header's.
fn check_pax_size(p: &Pending, size: u64, rel: &Path) -> Result<(), ExtractError> {
    let Some(v) = pax_value(&p.pax, "size") else {
        return Ok(());
    };
    if std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        != Some(size)
    {
        return Err(ExtractError::Integrity(format!(
            "{}: a pax size disagrees with the header",
            rel.display()
        )));
    }
    Ok(())
}

/// A link entry's target (GNU long link, else pax linkpath, else the
/// header's); refused when empty or holding a NUL byte.
fn link_target(header: &tar::Header, p: &Pending, rel: &Path) -> Result<Vec<u8>, ExtractError> {
    let t = match &p.long_link {
        Some(n) => trim_nul(n.clone()),
        None => match pax_value(&p.pax, "linkpath") {
            Some(v) => v.to_vec(),
            None => header
                .link_name_bytes()
                .map(|c| c.into_owned())
                .unwrap_or_default(),
        },
    };
    if t.is_empty() || t.contains(&0) {
        return Err(ExtractError::Unsafe(format!(
            "{}: link without a valid target",
            rel.display()
        )));
    }
    Ok(t)
}

/// The process umask (read without changing it).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

impl<'a> Unpacker<'a> {
    fn new(root: BorrowedFd<'a>, dest: &'a Path, opts: &'a ExtractOptions) -> Self {
        Unpacker {
            root,
            dest,
            cursor: Cursor::new(root),
            opts,
            tree: DirTree::new(),
            made: Vec::new(),
            root_meta: None,
            report: ExtractReport::default(),
            buf: vec![0; 256 << 10],
            umask: current_umask(),
        }
    }

    fn run<R: Read>(&mut self, reader: R) -> Result<(), ExtractError> {
        let bad = |e: io::Error| {
            ExtractError::Integrity(format!("archive is not a valid tar stream: {e}"))
        };
        let mut archive = tar::Archive::new(reader);
        // Raw entries: long names and pax headers are bounded and applied here.
        let mut pending = Pending::default();
        for entry in archive.entries().map_err(bad)?.raw(true) {
            let mut entry = entry.map_err(bad)?;
            let kind = entry.header().entry_type();
            let slot = match kind {
                tar::EntryType::GNULongName => Some(&mut pending.long_name),
                tar::EntryType::GNULongLink => Some(&mut pending.long_link),
                tar::EntryType::XHeader => Some(&mut pending.pax),
                tar::EntryType::XGlobalHeader => None,
                _ => {
                    let p = std::mem::take(&mut pending);
                    self.entry(&mut entry, p)?;
                    continue;
                }
            };
            let size = entry.size();
            if size > MAX_META_ENTRY {
                return Err(ExtractError::Integrity(format!(
                    "a {kind:?} header of {size} bytes (the limit is {MAX_META_ENTRY})"
                )));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(bad)?;
            if let Some(slot) = slot {
                if slot.is_some() {
                    return Err(ExtractError::Integrity(format!(
                        "two {kind:?} headers describe the same entry"
                    )));
                }
                *slot = Some(data);
            }
        }
        if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
            return Err(ExtractError::Integrity(
                "the archive ends with a header describing no entry".into(),
            ));
        }
        Ok(())
    }

    fn included(&self, rel: &Path, is_dir: bool) -> bool {
        self.opts
            .include
            .as_ref()
            .is_none_or(|i| i.matches(rel, is_dir))
    }

    fn final_mode(&self, mode: u32, owner_restored: bool) -> u32 {
        if owner_restored {
            mode
        } else {
            mode & !SETID
        }
    }

    /// The descriptor of `rel`'s parent directory (created as needed) and
    /// `rel`'s last component.
    fn parent_of<'r>(
        &mut self,
        rel: &'r Path,
    ) -> Result<(BorrowedFd<'_>, &'r OsStr), ExtractError> {
        let comps: Vec<&OsStr> = rel.iter().collect();
        let (leaf, dirs) = comps.split_last().expect("non-empty path");
        let made = &mut self.made;
        made.clear();
        let fd = self
            .cursor
            .dir(dirs, true, &mut |d| made.push(d))
            .map_err(|e| walk_error(self.dest, rel, dirs, e))?;
        self.tree.record(dirs, made);
        Ok((fd, leaf))
    }

    /// Restore one entry (any extension headers before it in `p`): its name
    /// and attributes are read and checked first, then its kind decides.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        p: Pending,
    ) -> Result<(), ExtractError> {
        let header = entry.header();
        let kind = header.entry_type();
        let rel = entry_path(header, &p)?;
        self.report.entries += 1;
        let size = entry.size();
        check_pax_size(&p, size, &rel)?;
        let attrs = self.attrs(header, &p);
        if rel.as_os_str().is_empty() {
            return self.root_entry(kind, &attrs);
        }
        let included = self.included(&rel, kind == tar::EntryType::Directory);
        match kind {
            tar::EntryType::Directory if !included => self.skip(),
            tar::EntryType::Directory => self.directory(&rel, &attrs),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.regular(entry, &rel, size, included, &attrs)
            }
            tar::EntryType::Symlink => {
                let target = link_target(header, &p, &rel)?;
                if !included {
                    return self.skip();
                }
                self.symlink(&rel, &target, &attrs)
            }
            tar::EntryType::Link => {
                let target = link_target(header, &p, &rel)?;
                if !included {
                    return self.skip();
                }
                self.hard_link(&rel, &target)
            }
            other => Err(ExtractError::Unsafe(format!(
                "{}: refusing entry of type {:?} (device nodes, FIFOs, sparse and other special files are not restored)",
                rel.display(),
                other
            ))),
        }
    }

    /// Count an entry the include filter leaves out.
    fn skip(&mut self) -> Result<(), ExtractError> {
        self.report.skipped += 1;
        Ok(())
    }

    /// An entry's mode, mtime and (when restoring ownership) owner, pax
    /// records overriding the header.
    fn attrs(&self, header: &tar::Header, p: &Pending) -> Attrs {
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mut mtime = filetime::FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0);
        if let Some(t) = pax_value(&p.pax, "mtime")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(parse_pax_time)
        {
            mtime = t;
        }
        let owner = self.opts.preserve_owner.then(|| {
            (
                pax_num(&p.pax, "uid", header.uid().unwrap_or(0)) as u32,
                pax_num(&p.pax, "gid", header.gid().unwrap_or(0)) as u32,
            )
        });
        Attrs { mode, mtime, owner }
    }

    /// The archive root ("./"): only a directory, whose metadata waits for
    /// [`Unpacker::finish`].
    fn root_entry(&mut self, kind: tar::EntryType, a: &Attrs) -> Result<(), ExtractError> {
        if kind != tar::EntryType::Directory {
            return Err(ExtractError::Unsafe(format!(
                "an entry of type {kind:?} for the archive root"
            )));
        }
        self.root_meta = Some(a.dir_meta());
        Ok(())
    }

    /// Create the directory `rel` (and its parents); its metadata waits for
    /// [`Unpacker::finish`].
    fn directory(&mut self, rel: &Path, a: &Attrs) -> Result<(), ExtractError> {
        let comps: Vec<&OsStr> = rel.iter().collect();
        let made = &mut self.made;
        made.clear();
        self.cursor
            .dir(&comps, true, &mut |d| made.push(d))
            .map_err(|e| walk_error(self.dest, rel, &comps, e))?;
        let node = self.tree.record(&comps, made);
        self.tree.nodes[node].meta = Some(a.dir_meta());
        Ok(())
    }

    /// A regular file: checked against the manifest even when filtered out,
    /// then written, its size checked, and its owner, mode and mtime set.
    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        rel: &Path,
        size: u64,
        included: bool,
        a: &Attrs,
    ) -> Result<(), ExtractError> {
        let key = rel.as_os_str().as_bytes().to_vec();
        self.check_listed(&key, rel, size)?;
        if !included {
            return self.skip(); // the tar reader skips the data
        }
        let dest = self.dest;
        let (dir, leaf) = self.parent_of(rel)?;
        let mut file =
            beneath::create_file_at(dir, leaf, 0o600).map_err(|e| write_error(dest, rel, e))?;
        let (written, hash) = self.copy_data(entry, &mut file, rel)?;
        if written != size {
            return Err(ExtractError::Integrity(format!(
                "{}: truncated entry",
                rel.display()
            )));
        }
        self.set_file_attrs(&file, rel, a)?;
        drop(file);
        if let Some(p) = &self.opts.progress {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        self.report.files.insert(key, (written, hash));
        Ok(())
    }

    /// Refuse a regular file the manifest (when given) does not list with
    /// the size its header announces.
    fn check_listed(&self, key: &[u8], rel: &Path, size: u64) -> Result<(), ExtractError> {
        let Some(e) = &self.opts.expect else {
            return Ok(());
        };
        match e.size_of(key) {
            None => Err(ExtractError::Integrity(format!(
                "{}: a file the manifest does not list",
                rel.display()
            ))),
            Some(want) if want != size => Err(ExtractError::Integrity(format!(
                "{}: the archive announces {size} bytes, the manifest records {want}",
                rel.display()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Copy an entry's data into `file`; returns the bytes written and their
    /// BLAKE3 (empty when not hashed, see [`ExtractOptions::hash_files`]).
    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        file: &mut std::fs::File,
        rel: &Path,
    ) -> Result<(u64, String), ExtractError> {
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ExtractError::Integrity(format!(
                        "reading {}: {e}",
                        rel.display()
                    )))
                }
            };
            if self.opts.hash_files {
                hasher.update(&self.buf[..n]);
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| write_error(self.dest, rel, e))?;
            written += n as u64;
            if let Some(p) = &self.opts.progress {
                p.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let hash = if self.opts.hash_files {
            hasher.finalize().to_hex().to_string()
        } else {
            String::new()
        };
        Ok((written, hash))
    }

    /// Give a written file its owner (when asked; setuid/setgid bits only
    /// with it), mode and mtime.
    fn set_file_attrs(
        &mut self,
        file: &std::fs::File,
        rel: &Path,
        a: &Attrs,
    ) -> Result<(), ExtractError> {
        let restored = match a.owner {
            Some((uid, gid)) => {
                let ok = beneath::fchown(file.as_fd(), uid, gid).is_ok();
                if !ok {
                    self.report.owner_failures += 1;
                }
                ok
            }
            None => false,
        };
        beneath::fchmod(file.as_fd(), self.final_mode(a.mode, restored))
            .map_err(|e| write_error(self.dest, rel, e))?;
        beneath::set_fd_mtime(file.as_fd(), a.mtime).map_err(|e| write_error(self.dest, rel, e))
    }

    /// Create the symbolic link `rel` as it was (its target is not followed
    /// by anything later: walks refuse links), with its owner and mtime.
    fn symlink(&mut self, rel: &Path, target: &[u8], a: &Attrs) -> Result<(), ExtractError> {
        let dest = self.dest;
        let (dir, leaf) = self.parent_of(rel)?;
        let target = OsStr::from_bytes(target);
        beneath::symlink_at(target, dir, leaf).map_err(|e| write_error(dest, rel, e))?;
        if let Some((uid, gid)) = a.owner {
            if beneath::lchown_at(dir, leaf, uid, gid).is_err() {
                self.report.owner_failures += 1;
            }
        }
        let (dir, leaf) = self.parent_of(rel)?;
        beneath::set_link_mtime_at(dir, leaf, a.mtime).map_err(|e| write_error(dest, rel, e))
    }

    /// Create the hard link `rel`, only to a regular file this archive wrote
    /// earlier.
    fn hard_link(&mut self, rel: &Path, target: &[u8]) -> Result<(), ExtractError> {
        let target_rel = safe_relative(Path::new(OsStr::from_bytes(target))).map_err(|e| {
            ExtractError::Unsafe(format!("{}: hard link target {e}", rel.display()))
        })?;
        let tkey = target_rel.as_os_str().as_bytes();
        let Some(info) = self.report.files.get(tkey).cloned() else {
            return Err(ExtractError::Unsafe(format!(
                "{}: hard link to {} which is not a file written earlier from this archive",
                rel.display(),
                target_rel.display()
            )));
        };
        let dest = self.dest;
        let (src_dir, src_leaf) = self.parent_of(&target_rel)?;
        let src_dir = src_dir
            .try_clone_to_owned()
            .map_err(|e| write_error(dest, rel, e))?;
        let (dir, leaf) = self.parent_of(rel)?;
        beneath::link_at(src_dir.as_fd(), src_leaf, dir, leaf)
            .map_err(|e| write_error(dest, rel, e))?;
        self.report
            .files
            .insert(rel.as_os_str().as_bytes().to_vec(), info);
        Ok(())
    }

    /// Apply directory metadata (children before parents, the root last)
    /// and return the report. Called once the archive hash has been checked.
    ///
    /// The tree is walked depth first with at most [`KEEP_OPEN`] descriptors
    /// open; a directory whose descriptor was closed is reopened from its
    /// child as ".." (checked to be the same directory), before the child's
    /// own mode can forbid that: each directory costs a constant number of
    /// calls however deep it is.
    fn finish(mut self) -> Result<ExtractReport, ExtractError> {
        let default = DirMeta {
            mode: 0o777 & !self.umask,
            mtime: None,
            owner: None,
        };
        let mut meta = MetaApplier {
            preserve: self.opts.preserve_owner,
            failures: 0,
        };
        let tree = std::mem::replace(&mut self.tree, DirTree::new());
        TreeWalk::new(&tree, self.root, self.dest).run(default, &mut meta)?;
        if self.opts.apply_root {
            let d = self.root_meta.unwrap_or(default);
            meta.apply(self.root, &d)
                .map_err(|e| write_error(self.dest, Path::new(""), e))?;
        }
        self.report.owner_failures += meta.failures;
        if self.report.owner_failures > 0 {
            tracing::warn!(
                "{}: the ownership of {} entries could not be restored; their setuid/setgid bits were dropped",
                self.dest.display(),
                self.report.owner_failures
            );
        }
        Ok(self.report)
    }
}

/// Most directory descriptors [`Unpacker::finish`] keeps open.
const KEEP_OPEN: usize = 64;

/// Gives directories their deferred metadata; counts the ownerships it
/// could not restore.
struct MetaApplier {
    preserve: bool,
    failures: u64,
}

impl MetaApplier {
    /// Give the directory `fd` its owner (when restoring ownership; the
    /// setuid/setgid bits only with it), mode and mtime.
    fn apply(&mut self, fd: BorrowedFd<'_>, d: &DirMeta) -> io::Result<()> {
        let restored = match d.owner {
            Some((uid, gid)) if self.preserve => {
                let ok = beneath::fchown(fd, uid, gid).is_ok();
                if !ok {
                    self.failures += 1;
                }
                ok
            }
            _ => false,
        };
        let mode = if restored { d.mode } else { d.mode & !SETID };
        beneath::fchmod(fd, mode)?;
        if let Some(t) = d.mtime {
            beneath::set_fd_mtime(fd, t)?;
        }
        Ok(())
    }
}

/// A directory on the walk of [`TreeWalk`].
struct Frame {
    node: usize,
    /// None for the root (`TreeWalk::root`) and for ancestors closed to
    /// bound the descriptors in use.
    fd: Option<OwnedFd>,
    id: (u64, u64),
    children: Vec<usize>,
    next: usize,
}

/// The depth-first walk of a [`DirTree`] below the destination, children
/// before parents, with at most [`KEEP_OPEN`] descriptors open.
struct TreeWalk<'t> {
    tree: &'t DirTree,
    root: BorrowedFd<'t>,
    dest: &'t Path,
    stack: Vec<Frame>,
}

impl<'t> TreeWalk<'t> {
    /// A walk starting at the root (node 0).
    fn new(tree: &'t DirTree, root: BorrowedFd<'t>, dest: &'t Path) -> Self {
        let mut walk = TreeWalk {
            tree,
            root,
            dest,
            stack: Vec::new(),
        };
        walk.stack.push(walk.frame(0, None, (0, 0)));
        walk
    }

    /// The frame of node `node`, its children not yet visited.
    fn frame(&self, node: usize, fd: Option<OwnedFd>, id: (u64, u64)) -> Frame {
        Frame {
            node,
            fd,
            id,
            children: self.tree.nodes[node].children.values().copied().collect(),
            next: 0,
        }
    }

    /// An error about node `i`'s directory.
    fn err(&self, i: usize, e: io::Error) -> ExtractError {
        write_error(self.dest, &self.tree.path(i), e)
    }

    /// Apply `meta` to every directory below the root (the root excluded):
    /// its entry's metadata, else `default` for one this extraction made.
    fn run(mut self, default: DirMeta, meta: &mut MetaApplier) -> Result<(), ExtractError> {
        while !self.stack.is_empty() {
            if self.descend()? {
                continue;
            }
            // Every child done: this directory's turn, then its parent's.
            let frame = self.stack.pop().expect("the top frame");
            let Some(fd) = frame.fd else {
                break; // the root: applied by the caller
            };
            self.reopen_parent(fd.as_fd())?;
            let node = &self.tree.nodes[frame.node];
            if let Some(d) = node.meta.or(node.created.then_some(default)) {
                meta.apply(fd.as_fd(), &d)
                    .map_err(|e| self.err(frame.node, e))?;
            }
        }
        Ok(())
    }

    /// Open the top directory's next child and push it (closing the
    /// farthest open ancestor past [`KEEP_OPEN`]); false when none is left.
    fn descend(&mut self) -> Result<bool, ExtractError> {
        let top = self.stack.last_mut().expect("a frame");
        let Some(&child) = top.children.get(top.next) else {
            return Ok(false);
        };
        top.next += 1;
        let parent = top.fd.as_ref().map_or(self.root, |f| f.as_fd());
        let fd = beneath::open_dir_at(parent, &self.tree.nodes[child].name)
            .map_err(|e| self.err(child, e))?;
        let id = dev_ino(fd.as_fd()).map_err(|e| self.err(child, e))?;
        if self.stack.len() > KEEP_OPEN {
            let far = self.stack.len() - KEEP_OPEN;
            self.stack[far].fd = None;
        }
        let frame = self.frame(child, Some(fd), id);
        self.stack.push(frame);
        Ok(true)
    }

    /// Reopen the parent of the directory `fd` (now on top) as "..", if its
    /// descriptor was closed, refusing a different directory.
    fn reopen_parent(&mut self, fd: BorrowedFd<'_>) -> Result<(), ExtractError> {
        let Some(parent) = self.stack.last() else {
            return Ok(());
        };
        if parent.node == 0 || parent.fd.is_some() {
            return Ok(());
        }
        let (node, id) = (parent.node, parent.id);
        let up = beneath::open_dir_at(fd, OsStr::new("..")).map_err(|e| self.err(node, e))?;
        if dev_ino(up.as_fd()).map_err(|e| self.err(node, e))? != id {
            return Err(ExtractError::Unsafe(format!(
                "{}: a directory was moved during extraction",
                self.tree.path(node).display()
            )));
        }
        self.stack.last_mut().expect("the parent frame").fd = Some(up);
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
    if s.starts_with('-') && nanos > 0 {
        // "-1.25" is 1.25 s before the epoch: -2 s + 0.75 s (none before
        // the first representable second).
        return Some(filetime::FileTime::from_unix_time(
            secs.checked_sub(1)?,
            1_000_000_000 - nanos,
        ));
    }
    Some(filetime::FileTime::from_unix_time(secs, nanos))
}

/// Compare unpacked files with the manifest's records; returns the problems.
/// With `include`, only matching manifest files are expected.
pub fn compare_files(
    expected: &[FileRecord],
    got: &HashMap<Vec<u8>, (u64, String)>,
    include: Option<&super::Include>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: HashSet<Vec<u8>> = HashSet::with_capacity(expected.len());
    // Names that are not UTF-8, by their lossy rendering: what a manifest
    // written before `path_b64` recorded for them (usually empty).
    let legacy: HashMap<String, &Vec<u8>> = got
        .keys()
        .filter(|k| std::str::from_utf8(k).is_err())
        .map(|k| (String::from_utf8_lossy(k).into_owned(), k))
        .collect();
    // Directories and links are the tar stream's business (its BLAKE3 is
    // checked); the index vouches for regular files' content.
    for f in expected.iter().filter(|f| f.kind == "file") {
        let mut path = match f.path_bytes() {
            Ok(p) => p.into_owned(),
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if f.path_b64.is_none() && !got.contains_key(&path) {
            if let Some(k) = legacy.get(&f.path) {
                path = (*k).clone();
            }
        }
        if include.is_some_and(|i| !i.matches(Path::new(OsStr::from_bytes(&path)), false)) {
            continue;
        }
        match got.get(&path) {
            None => problems.push(format!("{}: missing from the archive", f.path)),
            Some((size, hash)) if *size != f.size || (!hash.is_empty() && *hash != f.blake3) => {
                problems.push(format!(
                    "{}: content does not match its BLAKE3 in the manifest",
                    f.path
                ))
            }
            Some(_) => {}
        }
        names.insert(path);
    }
    if include.is_none() && got.len() > names.len() {
        for p in got.keys().filter(|p| !names.contains(*p)).take(10) {
            problems.push(format!(
                "{}: in the archive but not in the manifest",
                String::from_utf8_lossy(p)
            ));
        }
    }
    problems
}

/// Open a regular file inside `root` (never through a symbolic link); used
/// by checks that read restored content.
pub fn open_inside(root: &Path, rel: &str) -> io::Result<std::fs::File> {
    let rel = safe_relative(Path::new(rel)).map_err(io::Error::other)?;
    let dir = beneath::Dir::open(root)?;
    beneath::open_beneath(dir.fd.as_fd(), &rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_before_the_epoch() {
        let t = parse_pax_time("-1.25").unwrap();
        assert_eq!((t.unix_seconds(), t.nanoseconds()), (-2, 750_000_000));
        let t = parse_pax_time("5.000000001").unwrap();
        assert_eq!((t.unix_seconds(), t.nanoseconds()), (5, 1));
        let t = parse_pax_time("-7").unwrap();
        assert_eq!((t.unix_seconds(), t.nanoseconds()), (-7, 0));
    }

    /// A pax mtime with a fraction just after the smallest i64 second
    /// overflowed computing the second before it (a panic that ended
    /// restore; fuzz/regressions/archive_tar/pax-mtime-min).
    #[test]
    fn pax_times_at_the_ends_of_the_range() {
        assert!(parse_pax_time("-9223372036854775808.5").is_none());
        let t = parse_pax_time("-9223372036854775808").unwrap();
        assert_eq!(t.unix_seconds(), i64::MIN);
        let t = parse_pax_time("9223372036854775807.999999999").unwrap();
        assert_eq!((t.unix_seconds(), t.nanoseconds()), (i64::MAX, 999_999_999));
    }

    /// Extract the tar stream `tar` with a manifest listing `files`.
    fn extract_tar(
        tar: &[u8],
        files: &[(&[u8], u64)],
        dest: &Path,
    ) -> Result<ExtractReport, ExtractError> {
        let expect = Expected {
            tar_size: tar.len() as u64,
            files: files.iter().map(|(p, s)| (p.to_vec(), *s)).collect(),
        };
        let opts = ExtractOptions {
            apply_root: true,
            expect: Some(Arc::new(expect)),
            ..Default::default()
        };
        let dir = beneath::Dir::open(dest).unwrap();
        let hash = blake3::hash(tar).to_hex().to_string();
        extract(tar, Some(&hash), dir.fd.as_fd(), dest, &opts)
    }

    /// A tar of `(path, is_dir, mode, data)` entries (GNU long names).
    fn tar_of(entries: &[(&str, bool, u32, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, dir, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(if *dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(*mode);
            h.set_mtime(1_000_000_000);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Every directory an entry's path created was remembered by its full
    /// path, and its metadata applied by walking down from the nearest of 64
    /// open ancestors: memory and time quadratic in a path's depth, before
    /// the archive's hash is checked. A 1 MiB long name ("a/a/a/...", 512 Ki
    /// levels) needs 250 GiB (fuzz/regressions/archive_tar/deep-*).
    #[test]
    fn deep_paths_cost_linear_memory_and_time() {
        // std's remove_dir_all (dropping the temporary directory) recurses
        // once per level: give it the stack 20,000 levels need.
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn(deep_paths)
            .unwrap()
            .join()
            .unwrap();
    }

    fn deep_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = format!("{}f", "a/".repeat(20_000));
        let mid = format!("{}/", "a/".repeat(100));
        let tar = tar_of(&[
            (&deep, false, 0o640, b"x"),
            (&mid, true, 0o750, b""),
            ("a/b", true, 0o500, b""),
        ]);
        let start = std::time::Instant::now();
        let rep = extract_tar(&tar, &[(deep.as_bytes(), 1)], tmp.path()).unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(rep.files.len(), 1);
        // Every level got its mode: the listed ones theirs, the others the default.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(mid.trim_end_matches('/')), 0o750);
        assert_eq!(mode("a/b"), 0o500);
        assert_eq!(mode("a"), 0o777 & !current_umask());
        let deepest = deep.trim_end_matches("/f");
        let dir = beneath::Dir::open(tmp.path()).unwrap();
        let f = beneath::open_beneath(dir.fd.as_fd(), Path::new(&deep)).unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o640);
        let comps: Vec<&OsStr> = Path::new(deepest).iter().collect();
        let mut c = Cursor::new(dir.fd.as_fd());
        let fd = c.dir(&comps, false, &mut |_| {}).unwrap();
        let st = rustix::fs::fstat(fd).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o777 & !current_umask());
    }

    #[test]
    fn legacy_lossy_records_still_match_names_that_are_not_utf8() {
        let raw = b"caf\xe9".to_vec();
        let legacy = FileRecord {
            path: String::from_utf8_lossy(&raw).into_owned(),
            path_b64: None,
            ..FileRecord::new(Path::new("x"), 3, "h".into())
        };
        let exp = Expected {
            files: [(legacy.path.as_bytes().to_vec(), 3)].into(),
            ..Default::default()
        };
        assert_eq!(exp.size_of(&raw), Some(3));
        let got: HashMap<Vec<u8>, (u64, String)> = [(raw.clone(), (3, "h".to_string()))].into();
        assert!(compare_files(std::slice::from_ref(&legacy), &got, None).is_empty());
        // A new record (exact bytes) matches exactly, and two such names are distinct.
        let a = FileRecord::new(Path::new(OsStr::from_bytes(&raw)), 3, "h".into());
        let b = FileRecord::new(Path::new(OsStr::from_bytes(b"caf\xe8")), 3, "h".into());
        let problems = compare_files(&[a, b], &got, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn names_the_reader_refuses() {
        assert!(name_problem(Path::new("a/b")).is_none());
        assert!(name_problem(Path::new("a/../b")).is_some());
        assert!(name_problem(Path::new("/etc/passwd")).is_some());
        let long = "x".repeat(256);
        assert!(name_problem(Path::new(&long)).is_some());
        assert!(name_problem(Path::new(OsStr::from_bytes(b"caf\xe9"))).is_none());
    }
}
