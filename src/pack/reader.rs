//! The read side of format v2: an extent list in, the stream out, every
//! chunk checked, each extent fetched from the first source (target) that
//! serves it intact.
//!
//! For each extent (in order) the frames it covers are taken from the pack's
//! index (checked against the pack's name by the [`PackSource`]), fetched
//! with one ranged read, and each decompressed and checked against its chunk
//! id; only an extent that checks out completely is passed on. A fetch or
//! check failure tries the same extent on the next source (packs are the same
//! on every target), so a damaged pack on one target is read from another.
//! The stream's length and BLAKE3 are checked at the end against the signed
//! manifest by the caller ([`StreamReader::finish`]).
//!
//! Reading and decompressing run on their own thread, ahead of the consumer
//! (the tar unpacker) by a bounded number of chunks.

use super::extents::ExtentList;
use super::format::{decode_frame, PackError, PackIndex};
use std::io::{self, Read};
use std::sync::mpsc;
use std::sync::Arc;

/// A target seen from a blocking reader thread.
pub trait PackSource: Send + Sync {
    /// For messages ("target nas").
    fn name(&self) -> &str;
    /// The pack's index, checked against its name.
    fn index(&self, pack: &str) -> Result<Arc<PackIndex>, String>;
    /// `len` bytes of the pack from `offset` into `buf` (replacing what it
    /// held): exactly `len` bytes, or an error.
    fn read(&self, pack: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), String>;
}

/// Why a stream could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No source served this extent intact (each source's reason).
    #[error("extent {pack} {offset}+{len}: no target serves it intact ({why})")]
    Extent {
        pack: String,
        offset: u64,
        len: u64,
        why: String,
    },
    #[error("stream is longer than recorded ({0} bytes)")]
    TooLong(u64),
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

/// One ranged read: consecutive frames of an extent, at most
/// [`READ_MAX`] compressed and [`DECODED_MAX`] decompressed bytes (a frame
/// larger than that is read alone), so memory stays bounded whatever the
/// extent's length.
const READ_MAX: u64 = 4 << 20;
const DECODED_MAX: u64 = 4 << 20;

/// Split the frames covering an extent into ranged reads.
fn groups(entries: &[super::format::Entry]) -> Vec<&[super::format::Entry]> {
    let mut out = Vec::new();
    let (mut start, mut c, mut d) = (0, 0u64, 0u64);
    for (i, e) in entries.iter().enumerate() {
        if i > start && (c + e.clen as u64 > READ_MAX || d + e.len as u64 > DECODED_MAX) {
            out.push(&entries[start..i]);
            (start, c, d) = (i, 0, 0);
        }
        c += e.clen as u64;
        d += e.len as u64;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Read and check one group of frames of `pack` from `src`, decoded into
/// `out` (cleared first).
fn fetch_group(
    src: &dyn PackSource,
    pack: &str,
    group: &[super::format::Entry],
    (bytes, out): (&mut Vec<u8>, &mut Vec<u8>),
) -> Result<(), String> {
    let first = group.first().ok_or("empty read")?;
    let offset = first.offset as u64;
    let len: u64 = group.iter().map(|c| c.clen as u64).sum();
    src.read(pack, offset, len, bytes)?;
    if bytes.len() as u64 != len {
        return Err(format!("read {} bytes, expected {len}", bytes.len()));
    }
    out.clear();
    out.reserve(group.iter().map(|c| c.len as usize).sum());
    for c in group {
        let at = (c.offset as u64 - offset) as usize;
        let frame = &bytes[at..at + c.clen as usize];
        out.extend_from_slice(&decode_frame(frame, c, 0).map_err(|x| x.to_string())?);
    }
    Ok(())
}

/// Which sources served a stream, and which packs failed on which source
/// (damaged, missing or unreadable there), for the report and for `sync`.
#[derive(Debug, Default, Clone)]
pub struct ReadReport {
    /// Sources that served extents, in first-use order.
    pub served: Vec<String>,
    /// (source, pack) pairs that failed, in order.
    pub failed: Vec<(String, String)>,
}

impl ReadReport {
    fn served_by(&mut self, name: &str) {
        if !self.served.iter().any(|n| n == name) {
            self.served.push(name.to_string());
        }
    }
    fn failed_on(&mut self, name: &str, pack: &str) {
        let p = (name.to_string(), pack.to_string());
        if !self.failed.contains(&p) {
            self.failed.push(p);
        }
    }
}

/// The extents of `list`, each from the first source that serves it
/// intact, sent downstream in bounded pieces.
fn read_extents(
    list: &ExtentList,
    sources: &[Arc<dyn PackSource>],
    report: &std::sync::Mutex<ReadReport>,
    tx: &mpsc::SyncSender<Result<Vec<u8>, ReadError>>,
    digest: &std::sync::Mutex<Option<blake3::Hash>>,
    free: &mpsc::Receiver<Vec<u8>>,
) {
    // The whole stream's BLAKE3, here rather than in the consumer (which
    // unpacks and hashes every file): the two threads share the work.
    let mut hasher = blake3::Hasher::new();
    // The compressed bytes of each read, in one buffer for the whole stream.
    let mut compressed = Vec::new();
    for e in &list.extents {
        let fail = |why: Vec<String>| ReadError::Extent {
            pack: e.pack.clone(),
            offset: e.offset,
            len: e.len,
            why: why.join("; "),
        };
        let mut why = Vec::new();
        // The index is the same on every source (checked against the
        // pack's name): take the first that serves it.
        let mut idx = None;
        for s in sources {
            match s.index(&e.pack).and_then(|i| {
                i.covering(e.offset, e.len)
                    .map(|_| ())
                    .map_err(|x: PackError| x.to_string())
                    .map(|_| i)
            }) {
                Ok(i) => {
                    idx = Some(i);
                    break;
                }
                Err(x) => {
                    report.lock().expect("report").failed_on(s.name(), &e.pack);
                    why.push(format!("{}: {x}", s.name()));
                }
            }
        }
        let Some(idx) = idx else {
            let _ = tx.send(Err(fail(why)));
            return;
        };
        let entries = idx.covering(e.offset, e.len).expect("checked above");
        for g in groups(entries) {
            let mut got = None;
            let mut why = why.clone();
            // A buffer the consumer is done with (no fresh pages per read).
            let mut buf = free.try_recv().unwrap_or_default();
            for s in sources {
                match fetch_group(s.as_ref(), &e.pack, g, (&mut compressed, &mut buf)) {
                    Ok(()) => {
                        report.lock().expect("report").served_by(s.name());
                        got = Some(std::mem::take(&mut buf));
                        break;
                    }
                    Err(x) => {
                        tracing::warn!(
                            "target {}: {} {}+{}: {x}; trying the next target",
                            s.name(),
                            super::extents::pack_path(&e.pack),
                            g[0].offset,
                            g.iter().map(|c| c.clen as u64).sum::<u64>()
                        );
                        report.lock().expect("report").failed_on(s.name(), &e.pack);
                        why.push(format!("{}: {x}", s.name()));
                    }
                }
            }
            let msg = got.ok_or_else(|| fail(why));
            if let Ok(b) = &msg {
                hasher.update(b);
            }
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                return;
            }
        }
    }
    *digest.lock().expect("digest") = Some(hasher.finalize());
}

/// Reads a stream back from its extents.
pub struct StreamReader {
    rx: mpsc::Receiver<Result<Vec<u8>, ReadError>>,
    /// Buffers read to their end go back to the reading thread.
    free: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// Set by the reading thread once every extent was read.
    digest: Arc<std::sync::Mutex<Option<blake3::Hash>>>,
    total: u64,
    limit: u64,
    failed: Option<ReadError>,
    report: Arc<std::sync::Mutex<ReadReport>>,
}

impl StreamReader {
    /// Read `list` from `sources` (tried in order per read); the stream
    /// must not exceed `limit` bytes (the recorded size).
    pub fn new(list: ExtentList, sources: Vec<Arc<dyn PackSource>>, limit: u64) -> StreamReader {
        let (tx, rx) = mpsc::sync_channel(2);
        let report = Arc::new(std::sync::Mutex::new(ReadReport::default()));
        let r = report.clone();
        let digest = Arc::new(std::sync::Mutex::new(None));
        let d = digest.clone();
        let (free, free_rx) = mpsc::channel();
        std::thread::spawn(move || read_extents(&list, &sources, &r, &tx, &d, &free_rx));
        StreamReader {
            rx,
            free,
            cur: Vec::new(),
            pos: 0,
            digest,
            total: 0,
            limit,
            failed: None,
            report,
        }
    }

    /// Read what is left (nothing, for a consumer that read to the end) and
    /// return the stream's BLAKE3 and length.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        // Read to the end: the reading thread has finished every extent.
        let h = self
            .digest
            .lock()
            .expect("digest")
            .ok_or_else(|| io::Error::other("the stream was not read to its end"))?;
        Ok((h.to_hex().to_string(), self.total))
    }

    /// The targets that served extents, in first-use order.
    pub fn served(&self) -> Vec<String> {
        self.report.lock().expect("report").served.clone()
    }

    /// A handle on what was served and what failed, that outlives the
    /// reader.
    pub fn report_handle(&self) -> Arc<std::sync::Mutex<ReadReport>> {
        self.report.clone()
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        let e = ReadError::TooLong(self.limit);
                        self.failed = Some(e.clone());
                        return Err(e.into());
                    }
                    let done = std::mem::replace(&mut self.cur, chunk);
                    // The reader may have finished: then the buffer is dropped.
                    let _ = self.free.send(done);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(e.into());
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

#[cfg(test)]
mod tests {
    use super::super::format::{ChunkId, FrameEncoder, Kind, PackBuilder};
    use super::*;
    use std::collections::HashMap;

    struct Mem {
        name: String,
        packs: HashMap<String, Vec<u8>>,
    }

    impl PackSource for Mem {
        fn name(&self) -> &str {
            &self.name
        }
        fn index(&self, pack: &str) -> Result<Arc<PackIndex>, String> {
            let b = self.packs.get(pack).ok_or("missing pack")?;
            PackIndex::from_tail(b, b.len() as u64, pack)
                .map_err(|e| e.to_string())?
                .map(Arc::new)
                .map_err(|_| "short".to_string())
        }
        fn read(&self, pack: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), String> {
            let b = self.packs.get(pack).ok_or("missing pack")?;
            let range = b
                .get(offset as usize..(offset + len) as usize)
                .ok_or("range beyond the pack")?;
            buf.clear();
            buf.extend_from_slice(range);
            Ok(())
        }
    }

    #[test]
    fn reads_back_and_fails_over_per_extent() {
        let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 5000 + i as usize]).collect();
        let mut enc = FrameEncoder::new(3).unwrap();
        let mut b = PackBuilder::new();
        for c in &chunks {
            b.push(
                ChunkId::of(c),
                Kind::Content,
                c.len() as u32,
                &enc.encode(c).unwrap(),
            );
        }
        let (name, bytes, idx) = b.finish();
        let mut list = ExtentList::default();
        list.push(&name, 0, idx.frames_len);
        let good = Arc::new(Mem {
            name: "good".into(),
            packs: HashMap::from([(name.clone(), bytes.clone())]),
        });
        let mut damaged = bytes.clone();
        damaged[idx.entries[4].offset as usize + 3] ^= 0x55;
        let bad = Arc::new(Mem {
            name: "bad".into(),
            packs: HashMap::from([(name.clone(), damaged)]),
        });
        let want = chunks.concat();
        let r = StreamReader::new(
            list.clone(),
            vec![bad.clone(), good.clone()],
            want.len() as u64,
        );
        let (hash, len) = r.finish().unwrap();
        assert_eq!(
            (hash, len),
            (blake3::hash(&want).to_hex().to_string(), want.len() as u64)
        );
        // Only the damaged copy: a clear error, no wrong bytes.
        let mut r = StreamReader::new(list.clone(), vec![bad], want.len() as u64);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        // A stream longer than recorded is cut off.
        let mut r = StreamReader::new(list, vec![good], 100);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }
}
