//! Streaming archive writer: entries -> one deterministic tar stream into a
//! sink (format v2's packer, [`crate::pack::packer`]), and one file index
//! record per entry (a JSON line, [`FileRecord`]) into a second sink.
//! Memory stays bounded whatever the source size.
//!
//! Output is deterministic: the same entries with the same metadata produce
//! the same bytes, so an unchanged source gives the same chunks. Generated
//! entries (database dumps) get fixed metadata for the same reason (see
//! [`EntryMeta::generated`]).

use super::manifest::FileRecord;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Size of each part when an unknown-length stream (a database dump) is
/// split into tar entries; each part is buffered once in memory.
pub const STREAM_PART_SIZE: usize = 32 << 20;

/// Counters shared with a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
    /// Set to abort the archive: the next read of source data fails.
    pub cancel: std::sync::atomic::AtomicBool,
}

/// Counts bytes written (the uncompressed tar size).
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// tar writes 512-byte headers and whole read buffers: the headers are
/// gathered in a small buffer, content (256 KiB reads) passes straight
/// through (the sink buffers for itself).
type Sink = CountingWriter<BufWriter<Box<dyn Write + Send>>>;

/// What a finished archive is.
#[derive(Debug)]
pub struct ArchiveSummary {
    pub tar_size: u64,
    pub content_size: u64,
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    pub warnings: Vec<String>,
    /// Source entries that could not be read (relative paths, directories
    /// ending in `/`): the snapshot lacks them.
    pub unreadable: Vec<String>,
}

/// The tar mtime of generated entries (see [`EntryMeta::generated`]): the
/// Unix epoch.
pub const GENERATED_MTIME: i64 = 0;

/// Basic metadata of an entry, independent of where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl EntryMeta {
    pub fn from_metadata(m: &Metadata) -> EntryMeta {
        EntryMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid() as u64,
            gid: m.gid() as u64,
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
        }
    }

    /// Metadata for generated content (database dumps and copies): mode
    /// 0600, owned by the process's effective user and group, and the mtime
    /// [`GENERATED_MTIME`] (the Unix epoch, 1970-01-01T00:00:00Z) whatever
    /// the snapshot time. Nothing here depends on when the snapshot is taken,
    /// so a dump whose bytes do not change gives byte-identical tar entries
    /// and therefore the same archive (the snapshot time is in the
    /// manifest). Restored dump files carry that mtime.
    pub fn generated() -> EntryMeta {
        EntryMeta {
            mode: 0o600,
            uid: unsafe { libc::geteuid() } as u64,
            gid: unsafe { libc::getegid() } as u64,
            mtime: GENERATED_MTIME,
            mtime_nsec: 0,
        }
    }
}

pub struct ArchiveWriter {
    builder: tar::Builder<Sink>,
    index: BufWriter<Box<dyn Write + Send>>,
    files: u64,
    entries: u64,
    content_size: u64,
    warnings: Vec<String>,
    unreadable: Vec<String>,
    buf: Vec<u8>,
    progress: Option<Arc<Progress>>,
}

impl ArchiveWriter {
    /// Start an archive: the tar stream goes to `tar`, the file index (one
    /// JSON line per entry) to `index`; both are flushed by
    /// [`ArchiveWriter::finish`], then dropped.
    pub fn create(
        tar: Box<dyn Write + Send>,
        index: Box<dyn Write + Send>,
        progress: Option<Arc<Progress>>,
    ) -> io::Result<ArchiveWriter> {
        let mut builder = tar::Builder::new(CountingWriter {
            inner: BufWriter::with_capacity(64 << 10, tar),
            count: 0,
        });
        builder.mode(tar::HeaderMode::Complete);
        Ok(ArchiveWriter {
            builder,
            index: BufWriter::with_capacity(256 << 10, index),
            files: 0,
            entries: 0,
            content_size: 0,
            warnings: Vec::new(),
            unreadable: Vec::new(),
            buf: vec![0; 256 << 10],
            progress,
        })
    }

    /// One line of the file index.
    fn index_line(&mut self, rec: &FileRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.index, rec).map_err(io::Error::other)?;
        self.index.write_all(b"\n")
    }

    /// Record a problem with the source; it ends up in the manifest and the report.
    pub fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.push(msg);
    }

    fn header(
        &mut self,
        kind: tar::EntryType,
        meta: &EntryMeta,
        size: u64,
    ) -> io::Result<tar::Header> {
        if meta.mtime_nsec != 0 || meta.mtime < 0 {
            // The header field holds whole seconds from the epoch on; pax
            // "mtime" carries the rest (a decimal number of seconds).
            self.builder.append_pax_extensions([(
                "mtime",
                pax_time(meta.mtime, meta.mtime_nsec).as_bytes(),
            )])?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime.max(0) as u64);
        h.set_size(size);
        Ok(h)
    }

    /// The source root itself, as the entry "./" (its mode, owner and mtime
    /// are restored onto the restored directory).
    pub fn add_root(&mut self, meta: &EntryMeta) -> io::Result<()> {
        self.add_dir(Path::new("."), meta)
    }

    /// Warn about a name the reader would refuse (it could not be restored
    /// as is); the entry is still written.
    fn check_name(&mut self, rel: &Path) {
        if let Some(p) = super::reader::name_problem(rel) {
            self.warn(format!("{p}; it cannot be restored as is"));
        }
    }

    pub fn add_dir(&mut self, rel: &Path, meta: &EntryMeta) -> io::Result<()> {
        self.check_name(rel);
        let mut h = self.header(tar::EntryType::Directory, meta, 0)?;
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        self.builder
            .append_data(&mut h, Path::new(&name), io::empty())?;
        self.entries += 1;
        self.index_line(&FileRecord::dir(rel, meta))
    }

    pub fn add_symlink(&mut self, rel: &Path, target: &Path, meta: &EntryMeta) -> io::Result<()> {
        self.check_name(rel);
        let mut h = self.header(tar::EntryType::Symlink, meta, 0)?;
        self.builder.append_link(&mut h, rel, target)?;
        self.entries += 1;
        self.index_line(&FileRecord::symlink(rel, target, meta))
    }

    /// Add a regular file opened (and checked) by the source's walk, reading
    /// exactly `meta.len()` bytes (`meta`: `fstat` of `file`). A file that
    /// shrinks is padded with zeros and one that grows is cut, each with a
    /// warning, so the archive stays valid (as GNU tar does). A read error
    /// ends the content there (the rest is zeros) and records the file as
    /// unreadable. `src` names the file in messages.
    pub fn add_file(
        &mut self,
        rel: &Path,
        src: &Path,
        mut file: File,
        meta: &Metadata,
    ) -> io::Result<()> {
        let size = meta.len();
        let em = EntryMeta::from_metadata(meta);
        let mut h = self.header(tar::EntryType::Regular, &em, size)?;
        let mut source = ErrorsEndRead {
            inner: &mut file,
            error: None,
        };
        let mut reader = ExactReader::new(
            &mut source,
            size,
            std::mem::take(&mut self.buf),
            self.progress.clone(),
        );
        append_exact(&mut self.builder, &mut h, rel, &mut reader)?;
        let hash = reader.hasher.finalize().to_hex().to_string();
        let short_by = reader.short_by;
        self.buf = std::mem::take(&mut reader.buf);
        if let Some(e) = source.error {
            self.unreadable(
                rel.to_string_lossy().into_owned(),
                format!(
                    "{}: read error after {} bytes ({e}); the rest is zeros in this snapshot",
                    src.display(),
                    size - short_by
                ),
            );
        } else if short_by > 0 {
            self.warn(format!(
                "{}: file shrank by {short_by} bytes while being read; padded with zeros",
                src.display()
            ));
        } else {
            let mut probe = [0u8; 1];
            let grew = matches!(file.read(&mut probe), Ok(n) if n > 0);
            let after = file.metadata().ok();
            let changed = after
                .is_some_and(|a| a.mtime() != meta.mtime() || a.mtime_nsec() != meta.mtime_nsec());
            if grew {
                self.warn(format!(
                    "{}: file grew while being read; stored the first {size} bytes",
                    src.display()
                ));
            } else if changed {
                self.warn(format!(
                    "{}: file changed while being read; stored copy may be inconsistent",
                    src.display()
                ));
            }
        }
        self.record_file(rel, size, hash, &em)
    }

    /// Record a source entry that could not be read (permission denied, an
    /// I/O error) under `rel` (a directory ends in `/`): a warning, and the
    /// snapshot is incomplete (see [`ArchiveSummary::unreadable`]).
    pub fn unreadable(&mut self, rel: String, msg: String) {
        self.warn(msg);
        self.unreadable.push(rel);
    }

    fn record_file(
        &mut self,
        rel: &Path,
        size: u64,
        hash: String,
        meta: &EntryMeta,
    ) -> io::Result<()> {
        self.check_name(rel);
        self.entries += 1;
        self.files += 1;
        self.content_size += size;
        if let Some(p) = &self.progress {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        self.index_line(&FileRecord::new(rel, size, hash).with_meta(meta))
    }

    /// Add a regular file whose content comes from a reader of known size.
    pub fn add_reader(
        &mut self,
        rel: &Path,
        size: u64,
        meta: &EntryMeta,
        reader: &mut dyn Read,
    ) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, meta, size)?;
        let mut exact = ExactReader::new(
            reader,
            size,
            std::mem::take(&mut self.buf),
            self.progress.clone(),
        );
        append_exact(&mut self.builder, &mut h, rel, &mut exact)?;
        let hash = exact.hasher.finalize().to_hex().to_string();
        let short = exact.short_by;
        self.buf = std::mem::take(&mut exact.buf);
        if short > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: stream ended {short} bytes early", rel.display()),
            ));
        }
        self.record_file(rel, size, hash, meta)
    }

    /// Add a stream of unknown length (a dump) without a temporary copy. It is
    /// stored as `rel` when it fits in one part of [`STREAM_PART_SIZE`], else
    /// as `rel.part-000001`, `rel.part-000002`, ... to be concatenated in order.
    /// Returns the entry names and the BLAKE3 of the whole stream.
    pub fn add_stream(
        &mut self,
        rel: &Path,
        meta: &EntryMeta,
        reader: &mut dyn Read,
    ) -> io::Result<(Vec<String>, String, u64)> {
        let mut whole = blake3::Hasher::new();
        let mut names = Vec::new();
        let mut total = 0u64;
        let mut part = Vec::with_capacity(1 << 20);
        let mut index = 0;
        loop {
            part.clear();
            let n = (&mut *reader)
                .take(STREAM_PART_SIZE as u64)
                .read_to_end(&mut part)?;
            let last = n < STREAM_PART_SIZE;
            if index == 0 && last {
                whole.update(&part);
                total += n as u64;
                self.add_reader(rel, n as u64, meta, &mut part.as_slice())?;
                names.push(rel.to_string_lossy().into_owned());
                break;
            }
            if n == 0 && index > 0 {
                break;
            }
            index += 1;
            whole.update(&part);
            total += n as u64;
            let mut name = rel.as_os_str().to_owned();
            name.push(format!(".part-{index:06}"));
            let name = PathBuf::from(name);
            self.add_reader(&name, n as u64, meta, &mut part.as_slice())?;
            names.push(name.to_string_lossy().into_owned());
            if last {
                break;
            }
        }
        Ok((names, whole.finalize().to_hex().to_string(), total))
    }

    /// Finish the tar stream and the zstd frame and flush the sink.
    /// Durability (fsync) is the sink's business.
    pub fn finish(self) -> io::Result<ArchiveSummary> {
        let mut counting = self.builder.into_inner()?;
        counting.flush()?;
        let tar_size = counting.count;
        drop(counting.inner.into_inner().map_err(|e| e.into_error())?);
        let mut index = self.index;
        index.flush()?;
        drop(index.into_inner().map_err(|e| e.into_error())?);
        Ok(ArchiveSummary {
            tar_size,
            content_size: self.content_size,
            entries: self.entries,
            files: self.files,
            warnings: self.warnings,
            unreadable: self.unreadable,
        })
    }
}

/// A pax "mtime" value: the decimal number of seconds `secs + nsec / 1e9`
/// ("-1.250000000" for 1.25 s before the epoch, which stat gives as
/// secs = -2, nsec = 750000000).
fn pax_time(secs: i64, nsec: u32) -> String {
    if secs < 0 && nsec > 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        format!("{secs}.{nsec:09}")
    }
}

/// One regular file's entry: its header (and any long-name records) through
/// the builder, then its content straight from the reader's blocks into the
/// sink (tar's own copy goes through an 8 KiB buffer), then the padding.
fn append_exact<R: Read + ?Sized>(
    builder: &mut tar::Builder<Sink>,
    header: &mut tar::Header,
    rel: &Path,
    content: &mut ExactReader<'_, R>,
) -> io::Result<()> {
    // With no data, tar writes the header alone and pads nothing.
    builder.append_data(header, rel, io::empty())?;
    let out = builder.get_mut();
    let mut len = 0u64;
    while let Some(block) = content.next_block()? {
        out.write_all(block)?;
        len += block.len() as u64;
    }
    let pad = ((512 - len % 512) % 512) as usize;
    out.write_all(&[0u8; 512][..pad])
}

/// Reads a source file, turning a read error into the end of the data (kept
/// in `error`), so the entry can still be completed.
struct ErrorsEndRead<'a> {
    inner: &'a mut File,
    error: Option<io::Error>,
}

impl Read for ErrorsEndRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                self.error = Some(e);
                Ok(0)
            }
            r => r,
        }
    }
}

/// Yields exactly `remaining` bytes, block by block ([`ExactReader::next_block`]):
/// the source's bytes, then zeros if it ends early. Reads the source in large
/// blocks and hashes each block once.
struct ExactReader<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    remaining: u64,
    hasher: blake3::Hasher,
    short_by: u64,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    progress: Option<Arc<Progress>>,
}

impl<'a, R: Read + ?Sized> ExactReader<'a, R> {
    fn new(inner: &'a mut R, size: u64, buf: Vec<u8>, progress: Option<Arc<Progress>>) -> Self {
        ExactReader {
            inner,
            remaining: size,
            hasher: blake3::Hasher::new(),
            short_by: 0,
            buf,
            pos: 0,
            filled: 0,
            progress,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        if let Some(p) = &self.progress {
            if p.cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other("archiving cancelled"));
            }
        }
        let want = (self.buf.len() as u64).min(self.remaining) as usize;
        let mut got = 0;
        while got < want && self.short_by == 0 {
            match self.inner.read(&mut self.buf[got..want]) {
                Ok(0) => self.short_by = self.remaining - got as u64,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = &self.progress {
            p.bytes.fetch_add(got as u64, Ordering::Relaxed);
        }
        // Source ended early: pad with zeros.
        self.buf[got..want].fill(0);
        self.hasher.update(&self.buf[..want]);
        self.remaining -= want as u64;
        self.pos = 0;
        self.filled = want;
        Ok(())
    }

    /// The next block of content (read, hashed), or `None` at the end.
    fn next_block(&mut self) -> io::Result<Option<&[u8]>> {
        if self.pos == self.filled {
            if self.remaining == 0 {
                return Ok(None);
            }
            self.refill()?;
        }
        let block = &self.buf[self.pos..self.filled];
        self.pos = self.filled;
        Ok(Some(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_are_decimal_seconds_before_and_after_the_epoch() {
        assert_eq!(pax_time(1_600_000_000, 123), "1600000000.000000123");
        // stat's (-2 s, 0.75 s) is 1.25 s before the epoch.
        assert_eq!(pax_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(pax_time(-5, 0), "-5.000000000");
    }

    #[test]
    fn the_root_is_recorded_as_dot_slash_and_refused_names_warned() {
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("a.tar")).unwrap();
        let mut w = ArchiveWriter::create(Box::new(out), Box::new(io::sink()), None).unwrap();
        let meta = EntryMeta {
            mode: 0o750,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
        };
        w.add_root(&meta).unwrap();
        w.add_symlink(
            Path::new("x").join("y".repeat(300)).as_path(),
            Path::new("t"),
            &meta,
        )
        .unwrap();
        let s = w.finish().unwrap();
        assert_eq!(s.entries, 2);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("cannot be restored as is")),
            "{:?}",
            s.warnings
        );
        let tar = std::fs::read(dir.path().join("a.tar")).unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let first = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*first.path_bytes(), b"./");
        assert_eq!(first.header().mode().unwrap(), 0o750);
    }
}
