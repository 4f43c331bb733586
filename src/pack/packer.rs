//! The write side of format v2: a stream in, packs and an extent list out.
//!
//! [`Packer`] is a `Write` sink for one stream (a source's tar stream, or a
//! file index stream). Bytes are cut into chunks ([`super::chunker`]); each
//! chunk's id is looked up *before* it is compressed: a chunk the targets
//! already hold (the run's [`ChunkIndex`]) or one seen earlier in this run
//! costs nothing but an extent. New chunks are compressed on a pool of
//! threads (one zstd frame each) and appended, in stream order, to the open
//! pack; a full pack is handed to [`PackSink`] at once, so uploads start while
//! the source is still being read. Extents are resolved as their packs close
//! and coalesced, so memory stays bounded by the open pack.
//!
//! One [`Packer`] per stream; the [`Shared`] state (index, open pack, workers)
//! is shared by the streams of one run, so a chunk repeated across sources of
//! a policy is stored once.

use super::chunker::{ChunkKind, ChunkSink, Params, TarChunker};
use super::extents::ExtentList;
use super::format::{ChunkId, FrameEncoder, Kind, PackBuilder, PackIndex};
use super::index::ChunkIndex;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Receives every closed pack (name, bytes, index), in order.
pub trait PackSink: Send {
    fn pack(&mut self, name: &str, bytes: Arc<Vec<u8>>, index: &PackIndex) -> io::Result<()>;
}

/// The sink after [`Shared::stop`]: packs can no longer be handed over.
struct Closed;

impl PackSink for Closed {
    fn pack(&mut self, name: &str, _: Arc<Vec<u8>>, _: &PackIndex) -> io::Result<()> {
        Err(io::Error::other(format!(
            "pack {name} closed after the packer stopped"
        )))
    }
}

/// Statistics of one stream (or a whole run).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub chunks: u64,
    pub new_chunks: u64,
    /// Uncompressed bytes of the stream.
    pub bytes: u64,
    /// Uncompressed bytes of the new chunks.
    pub new_bytes: u64,
    /// Compressed bytes of the new chunks (what this stream adds to packs).
    pub stored_bytes: u64,
}

struct Job {
    seq: u64,
    id: ChunkId,
    kind: Kind,
    data: Vec<u8>,
}

struct Done {
    seq: u64,
    id: ChunkId,
    kind: Kind,
    len: u32,
    frame: io::Result<Vec<u8>>,
}

/// State shared by the streams of one run.
pub struct Shared {
    index: Mutex<ChunkIndex>,
    /// New chunks submitted but not yet in a closed pack (once closed, the
    /// chunk index knows them).
    pending_ids: Mutex<HashSet<ChunkId>>,
    next_seq: Mutex<u64>,
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    assembler: Mutex<Assembler>,
    assembler_cv: std::sync::Condvar,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    collector: Mutex<Option<std::thread::JoinHandle<io::Result<()>>>>,
}

/// Puts frames into packs in sequence order and records where they went.
struct Assembler {
    builder: PackBuilder,
    /// Sequence numbers of the frames in the open pack.
    open: Vec<u64>,
    /// Frames that arrived ahead of their turn.
    early: BTreeMap<u64, Done>,
    next: u64,
    sink: Box<dyn PackSink>,
    error: Option<String>,
}

impl Assembler {
    fn take(
        &mut self,
        d: Done,
        index: &Mutex<ChunkIndex>,
        pending: &Mutex<HashSet<ChunkId>>,
    ) -> io::Result<()> {
        self.early.insert(d.seq, d);
        while let Some(d) = self.early.remove(&self.next) {
            let frame = d.frame?;
            self.builder.push(d.id, d.kind, d.len, &frame);
            self.open.push(d.seq);
            self.next += 1;
            if self.builder.is_full() {
                self.close(index, pending)?;
            }
        }
        Ok(())
    }

    fn close(
        &mut self,
        index: &Mutex<ChunkIndex>,
        pending: &Mutex<HashSet<ChunkId>>,
    ) -> io::Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.builder);
        let (name, bytes, idx) = b.finish();
        let name: Arc<str> = Arc::from(name.as_str());
        {
            let mut ci = index.lock().expect("index");
            for e in &idx.entries {
                ci.add_new(e.id, &name, e.offset, e.clen);
            }
        }
        self.open.clear();
        {
            let mut p = pending.lock().expect("pending");
            for e in &idx.entries {
                p.remove(&e.id);
            }
        }
        self.sink.pack(&name, Arc::new(bytes), &idx)
    }
}

impl Shared {
    /// Start a run's shared state: `index` holds what the targets have,
    /// `level` is the zstd level, `sink` receives the packs.
    pub fn start(index: ChunkIndex, level: i32, sink: Box<dyn PackSink>) -> Arc<Shared> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 8);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(threads * 8);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            pending_ids: Mutex::new(HashSet::new()),
            next_seq: Mutex::new(0),
            jobs: Mutex::new(Some(job_tx)),
            assembler: Mutex::new(Assembler {
                builder: PackBuilder::new(),
                open: Vec::new(),
                early: BTreeMap::new(),
                next: 0,
                sink,
                error: None,
            }),
            assembler_cv: std::sync::Condvar::new(),
            workers: Mutex::new(Vec::new()),
            collector: Mutex::new(None),
        });
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            shared
                .workers
                .lock()
                .unwrap()
                .push(std::thread::spawn(move || {
                    let mut enc = match FrameEncoder::new(level) {
                        Ok(e) => e,
                        Err(_) => return,
                    };
                    loop {
                        let job = match rx.lock().expect("jobs").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let frame = enc.encode(&job.data);
                        let done = Done {
                            seq: job.seq,
                            id: job.id,
                            kind: job.kind,
                            len: job.data.len() as u32,
                            frame,
                        };
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                }));
        }
        drop(done_tx);
        let s = shared.clone();
        *shared.collector.lock().unwrap() = Some(std::thread::spawn(move || {
            for d in done_rx {
                let mut a = s.assembler.lock().expect("assembler");
                if a.error.is_some() {
                    continue;
                }
                if let Err(e) = a.take(d, &s.index, &s.pending_ids) {
                    a.error = Some(e.to_string());
                }
                drop(a);
                s.assembler_cv.notify_all();
            }
            Ok(())
        }));
        shared
    }

    /// Close the open pack even if not full (the end of a run, or a
    /// stream whose pending extents must resolve), once every submitted chunk
    /// is in it.
    fn flush_pack(&self) -> io::Result<()> {
        let target = *self.next_seq.lock().expect("seq");
        let mut a = self.assembler.lock().expect("assembler");
        while a.next < target && a.error.is_none() {
            a = self.assembler_cv.wait(a).expect("assembler");
        }
        if let Some(e) = &a.error {
            return Err(io::Error::other(e.clone()));
        }
        a.close(&self.index, &self.pending_ids)
    }

    /// Stop the workers after the last stream; every pack has been handed
    /// to the sink when this returns Ok.
    pub fn finish(self: &Arc<Self>) -> io::Result<()> {
        let flushed = self.flush_pack();
        let stopped = self.stop();
        flushed?;
        stopped?;
        match &self.assembler.lock().expect("assembler").error {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    /// Stop the workers and the collector (what is still queued is thrown
    /// away). [`Shared::finish`] does this after the last pack; a run that
    /// fails calls it itself, or the threads would wait forever.
    pub fn stop(&self) -> io::Result<()> {
        drop(self.jobs.lock().expect("jobs").take());
        for w in std::mem::take(&mut *self.workers.lock().unwrap()) {
            let _ = w.join();
        }
        if let Some(c) = self.collector.lock().unwrap().take() {
            c.join()
                .map_err(|_| io::Error::other("pack collector panicked"))??;
        }
        // Let go of the sink: whoever waits for its last pack (an upload
        // queue, say) sees it end although streams still hold this state.
        let mut a = self.assembler.lock().expect("assembler");
        a.sink = Box::new(Closed);
        Ok(())
    }

    /// Queue a chunk for compression unless the targets or this run already
    /// have it; true when it is new.
    fn submit(&self, id: ChunkId, kind: Kind, data: &[u8]) -> io::Result<bool> {
        if self.index.lock().expect("index").get(&id).is_some() {
            return Ok(false);
        }
        let mut pending = self.pending_ids.lock().expect("pending");
        if !pending.insert(id) {
            return Ok(false);
        }
        let seq = {
            let mut n = self.next_seq.lock().expect("seq");
            let s = *n;
            *n += 1;
            s
        };
        drop(pending);
        let tx = self.jobs.lock().expect("jobs").clone();
        let tx = tx.ok_or_else(|| io::Error::other("packer finished"))?;
        tx.send(Job {
            seq,
            id,
            kind,
            data: data.to_vec(),
        })
        .map_err(|_| io::Error::other("compression workers stopped"))?;
        Ok(true)
    }

    /// Where a chunk is, once its pack is closed.
    fn locate(&self, id: &ChunkId) -> Option<(String, u32, u32)> {
        let ci = self.index.lock().expect("index");
        ci.get(id)
            .map(|l| (ci.pack_name(l.pack).to_string(), l.offset, l.clen))
    }
}

/// Turns the stream's slots into an extent list, in order, as they resolve.
struct Resolver {
    /// Chunks in stream order, and whether this stream added them.
    queue: VecDeque<(ChunkId, bool)>,
    list: ExtentList,
    /// Compressed bytes of the chunks this stream added (known once placed).
    stored: u64,
}

impl Resolver {
    fn drain(&mut self, shared: &Shared, all: bool) -> io::Result<()> {
        while let Some((id, new)) = self.queue.front() {
            match shared.locate(id) {
                Some((pack, offset, clen)) => {
                    self.list.push(&pack, offset as u64, clen as u64);
                    if *new {
                        self.stored += clen as u64;
                    }
                }
                None if all => {
                    return Err(io::Error::other(format!(
                        "chunk {id:?} was never placed in a pack"
                    )))
                }
                None => return Ok(()),
            }
            self.queue.pop_front();
        }
        Ok(())
    }
}

/// Pending extents kept before the open pack is closed early to resolve them.
const MAX_QUEUED: usize = 200_000;

struct StreamSink {
    shared: Arc<Shared>,
    resolver: Resolver,
    stats: Stats,
    hasher: blake3::Hasher,
    index_stream: bool,
}

impl ChunkSink for StreamSink {
    fn chunk(&mut self, kind: ChunkKind, data: &[u8]) -> io::Result<()> {
        let id = ChunkId::of(data);
        let kind = if self.index_stream {
            Kind::Index
        } else {
            kind.into()
        };
        self.hasher.update(data);
        let new = self.shared.submit(id, kind, data)?;
        self.stats.chunks += 1;
        self.stats.bytes += data.len() as u64;
        if new {
            self.stats.new_chunks += 1;
            self.stats.new_bytes += data.len() as u64;
        }
        self.resolver.queue.push_back((id, new));
        if self.resolver.queue.len() > MAX_QUEUED {
            self.resolver.drain(&self.shared, false)?;
            if self.resolver.queue.len() > MAX_QUEUED {
                self.shared.flush_pack()?;
                self.resolver.drain(&self.shared, true)?;
            }
        }
        Ok(())
    }
}

/// What one stream became.
#[derive(Debug, Clone)]
pub struct Packed {
    pub extents: ExtentList,
    /// BLAKE3 of the whole uncompressed stream.
    pub blake3: String,
    pub stats: Stats,
}

/// A `Write` sink for one stream of a run.
pub struct Packer {
    chunker: TarChunker<StreamSink>,
}

impl Packer {
    /// A source's tar stream.
    pub fn tar(shared: &Arc<Shared>) -> Packer {
        Packer::with(shared, Params::V2, false)
    }

    /// A file index stream (cut by FastCDC throughout, smaller chunks).
    pub fn index(shared: &Arc<Shared>) -> Packer {
        Packer::with(shared, Params::INDEX, true)
    }

    fn with(shared: &Arc<Shared>, params: Params, index_stream: bool) -> Packer {
        let sink = StreamSink {
            shared: shared.clone(),
            resolver: Resolver {
                queue: VecDeque::new(),
                list: ExtentList::default(),
                stored: 0,
            },
            stats: Stats::default(),
            hasher: blake3::Hasher::new(),
            index_stream,
        };
        let chunker = if index_stream {
            TarChunker::raw(sink, params)
        } else {
            TarChunker::new(sink, params)
        };
        Packer { chunker }
    }

    /// End of the stream: wait until its chunks are in closed packs (closing
    /// the open one) and return its extent list.
    pub fn finish(self) -> io::Result<Packed> {
        let ended = self.end()?;
        if !ended.sink.resolver.queue.is_empty() {
            ended.sink.shared.flush_pack()?;
        }
        ended.resolve()
    }

    /// End of the stream without closing the open pack: its last chunks are
    /// placed when the run's [`Shared::finish`] closes it, and
    /// [`Ended::resolve`] then gives the extent list. (Several streams end
    /// into one pack instead of one small pack each.)
    pub fn end(self) -> io::Result<Ended> {
        let mut sink = self.chunker.finish()?;
        sink.resolver.drain(&sink.shared, false)?;
        Ok(Ended { sink })
    }
}

/// A stream whose last chunks may still be in the open pack.
pub struct Ended {
    sink: StreamSink,
}

impl Ended {
    /// The extent list, once every chunk is in a closed pack (after
    /// [`Shared::finish`]).
    pub fn resolve(mut self) -> io::Result<Packed> {
        self.sink.resolver.drain(&self.sink.shared, true)?;
        let mut stats = self.sink.stats;
        stats.stored_bytes = self.sink.resolver.stored;
        Ok(Packed {
            extents: self.sink.resolver.list,
            blake3: self.sink.hasher.finalize().to_hex().to_string(),
            stats,
        })
    }

    /// Bytes of the stream so far.
    pub fn stats(&self) -> Stats {
        self.sink.stats
    }
}

impl Write for Packer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.chunker.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::decode_frame;
    use super::*;
    use std::collections::HashMap;

    type Packs = HashMap<String, (Arc<Vec<u8>>, PackIndex)>;
    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<Packs>>);
    impl PackSink for Mem {
        fn pack(&mut self, name: &str, bytes: Arc<Vec<u8>>, index: &PackIndex) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .insert(name.to_string(), (bytes, index.clone()));
            Ok(())
        }
    }

    fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, c.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Read back a stream through its extents, checking every chunk.
    fn read_back(mem: &Mem, l: &ExtentList) -> Vec<u8> {
        let packs = mem.0.lock().unwrap();
        let mut out = Vec::new();
        for e in &l.extents {
            let (bytes, idx) = &packs[&e.pack];
            for c in idx.covering(e.offset, e.len).unwrap() {
                let f = &bytes[c.offset as usize..(c.offset + c.clen) as usize];
                out.extend(decode_frame(f, c, 0).unwrap());
            }
        }
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn streams_round_trip_and_dedup_within_and_across_runs() {
        let mem = Mem::default();
        let big = noise(3 << 20, 5);
        let stream = tar_of(&[
            ("a", b"alpha".to_vec()),
            ("big", big.clone()),
            ("dup", b"alpha".to_vec()),
        ]);
        let shared = Shared::start(ChunkIndex::new(), 3, Box::new(mem.clone()));
        let mut p = Packer::tar(&shared);
        for piece in stream.chunks(70_000) {
            p.write_all(piece).unwrap();
        }
        let first = p.finish().unwrap();
        shared.finish().unwrap();
        assert_eq!(read_back(&mem, &first.extents), stream);
        assert_eq!(first.blake3, blake3::hash(&stream).to_hex().to_string());
        assert!(
            first.stats.new_chunks < first.stats.chunks,
            "dup content stored once"
        );

        // A second run over the same packs: nothing new.
        let mut ci = ChunkIndex::new();
        for (name, (_, idx)) in mem.0.lock().unwrap().iter() {
            ci.add_existing(name, idx);
        }
        ci.seal();
        let packs_before = mem.0.lock().unwrap().len();
        let shared = Shared::start(ci, 3, Box::new(mem.clone()));
        let mut p = Packer::tar(&shared);
        p.write_all(&stream).unwrap();
        let second = p.finish().unwrap();
        shared.finish().unwrap();
        assert_eq!(second.stats.new_chunks, 0);
        assert_eq!(mem.0.lock().unwrap().len(), packs_before);
        assert_eq!(read_back(&mem, &second.extents), stream);
    }

    #[test]
    fn many_streams_share_one_run_and_packs_fill_up() {
        let mem = Mem::default();
        let shared = Shared::start(ChunkIndex::new(), 1, Box::new(mem.clone()));
        let streams: Vec<Vec<u8>> = (0..3)
            .map(|i| tar_of(&[("x", noise(12 << 20, 10 + i))]))
            .collect();
        let mut packed = Vec::new();
        for s in &streams {
            let mut p = Packer::tar(&shared);
            p.write_all(s).unwrap();
            packed.push(p.finish().unwrap());
        }
        shared.finish().unwrap();
        assert!(mem.0.lock().unwrap().len() >= 2, "16 MiB packs");
        for (s, p) in streams.iter().zip(&packed) {
            assert_eq!(&read_back(&mem, &p.extents), s);
        }
    }
}
