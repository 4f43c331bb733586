//! Packs: many chunks, each one zstd frame, in one object, with an index.
//!
//! ```text
//! pack   = frame* index
//! frame  = one zstd frame (no checksum; content size recorded) holding one chunk
//! index  = a zstd *skippable* frame: magic 0x184D2A5B, u32 LE length, then
//!          "BCPKIDX2" | u32 LE count | count x entry | u32 LE payload length | "BCPKEND2"
//! entry  = chunk id (16 bytes) | u32 LE compressed length | u32 LE length | u8 kind
//! ```
//!
//! Frames follow each other from offset 0; entry *i* describes frame *i*
//! (its offset is the sum of the earlier compressed lengths). The whole pack
//! is a valid zstd stream (the index is skippable), so `zstd -dc` of a pack,
//! or of any run of its frames, gives the chunks' bytes.
//!
//! **Names and trust.** A pack is named by the BLAKE3 of its index payload
//! (64 hex). The index commits to every chunk's id (the BLAKE3 of its
//! uncompressed bytes, first 16 bytes) and lengths, so a reader holding an
//! authenticated pack name (from a signed manifest's extent list) checks the
//! index against the name, then every frame it reads — whole or by range —
//! against its id. Nothing a target serves is used before that check.

use std::fmt;

/// A chunk's identity: the first 16 bytes of the BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        let h = blake3::hash(data);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.as_bytes()[..16]);
        ChunkId(id)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What a chunk is, for statistics and restore planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Header = 1,
    Content = 2,
    End = 3,
    /// A chunk of a file index stream.
    Index = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::Content,
            3 => Kind::End,
            4 => Kind::Index,
            _ => return None,
        })
    }
}

impl From<super::chunker::ChunkKind> for Kind {
    fn from(k: super::chunker::ChunkKind) -> Kind {
        match k {
            super::chunker::ChunkKind::Header => Kind::Header,
            super::chunker::ChunkKind::Content => Kind::Content,
            super::chunker::ChunkKind::End => Kind::End,
        }
    }
}

/// One chunk in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub offset: u32,
    pub clen: u32,
    pub len: u32,
    pub kind: Kind,
}

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5B;
const IDX_MAGIC: &[u8; 8] = b"BCPKIDX2";
const END_MAGIC: &[u8; 8] = b"BCPKEND2";
const ENTRY_LEN: usize = 16 + 4 + 4 + 1;
/// The tail every pack ends with: payload length and end magic.
pub const TAIL_LEN: usize = 4 + 8;
/// Packs are closed at about this size.
pub const PACK_TARGET: usize = 16 << 20;
/// A pack larger than this is refused unread (frames of at most 256 KiB
/// chunks, closed at ~16 MiB).
pub const PACK_MAX: u64 = 64 << 20;

/// Why pack bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("pack index: {0}")]
    Index(String),
    #[error("pack {pack}: its index does not hash to its name (damaged or altered)")]
    Name { pack: String },
    #[error("chunk at offset {offset}: {what}")]
    Chunk { offset: u64, what: String },
}

/// The parsed index of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIndex {
    pub entries: Vec<Entry>,
    /// Where the index frame starts (= total length of the frames).
    pub frames_len: u64,
}

impl PackIndex {
    /// Serialize the payload (what the name hashes).
    fn payload(entries: &[Entry]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + entries.len() * ENTRY_LEN);
        p.extend_from_slice(IDX_MAGIC);
        p.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            p.extend_from_slice(&e.id.0);
            p.extend_from_slice(&e.clen.to_le_bytes());
            p.extend_from_slice(&e.len.to_le_bytes());
            p.push(e.kind as u8);
        }
        p
    }

    /// Parse an index payload (from `IDX_MAGIC` up to, not including, the
    /// tail), checking offsets add up.
    fn parse_payload(p: &[u8]) -> Result<PackIndex, PackError> {
        let bad = |w: &str| PackError::Index(w.to_string());
        if p.len() < 12 || &p[..8] != IDX_MAGIC {
            return Err(bad("not a backupctl pack index"));
        }
        let count = u32::from_le_bytes(p[8..12].try_into().unwrap()) as usize;
        if p.len() != 12 + count * ENTRY_LEN {
            return Err(bad("length does not match its entry count"));
        }
        let mut entries = Vec::with_capacity(count);
        let mut offset: u64 = 0;
        for raw in p[12..].chunks_exact(ENTRY_LEN) {
            let mut id = [0u8; 16];
            id.copy_from_slice(&raw[..16]);
            let clen = u32::from_le_bytes(raw[16..20].try_into().unwrap());
            let len = u32::from_le_bytes(raw[20..24].try_into().unwrap());
            let kind = Kind::from_u8(raw[24]).ok_or_else(|| bad("unknown chunk kind"))?;
            if clen == 0 || len > super::chunker::Params::V2.max.max(1 << 20) as u32 {
                return Err(bad("impossible chunk length"));
            }
            if offset + clen as u64 > PACK_MAX {
                return Err(bad("frames beyond the largest pack"));
            }
            entries.push(Entry {
                id: ChunkId(id),
                offset: offset as u32,
                clen,
                len,
                kind,
            });
            offset += clen as u64;
        }
        Ok(PackIndex {
            entries,
            frames_len: offset,
        })
    }

    /// Parse the index from the end of a pack (`tail` = the pack's last
    /// bytes, at least the whole index frame) whose total size is
    /// `pack_len`, and check it against the pack's `name`. Returns the index
    /// and how many bytes from the end it needs when `tail` was too short.
    pub fn from_tail(
        tail: &[u8],
        pack_len: u64,
        name: &str,
    ) -> Result<Result<PackIndex, usize>, PackError> {
        let bad = |w: &str| PackError::Index(w.to_string());
        if tail.len() < TAIL_LEN || pack_len < (TAIL_LEN + 8) as u64 || pack_len > PACK_MAX {
            return Err(bad("pack too short or too long"));
        }
        let t = &tail[tail.len() - TAIL_LEN..];
        if &t[4..] != END_MAGIC {
            return Err(bad("missing end marker"));
        }
        let plen = u32::from_le_bytes(t[..4].try_into().unwrap()) as usize;
        // skippable header (8) + payload + tail
        let need = 8 + plen + TAIL_LEN;
        if need as u64 > pack_len {
            return Err(bad("index longer than the pack"));
        }
        if tail.len() < need {
            return Ok(Err(need));
        }
        let frame = &tail[tail.len() - need..];
        let magic = u32::from_le_bytes(frame[..4].try_into().unwrap());
        let flen = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
        if magic != SKIPPABLE_MAGIC || flen != plen + TAIL_LEN {
            return Err(bad("malformed index frame"));
        }
        let payload = &frame[8..8 + plen];
        if blake3::hash(payload).to_hex().as_str() != name {
            return Err(PackError::Name {
                pack: name.to_string(),
            });
        }
        let idx = PackIndex::parse_payload(payload)?;
        if idx.frames_len + need as u64 != pack_len {
            return Err(bad("frames and index do not add up to the pack's size"));
        }
        Ok(Ok(idx))
    }

    /// The entries whose frames exactly cover `[offset, offset + len)`.
    pub fn covering(&self, offset: u64, len: u64) -> Result<&[Entry], PackError> {
        Ok(&self.entries[self.covering_range(offset, len)?])
    }

    /// The positions in `entries` of the frames that exactly cover
    /// `[offset, offset + len)`.
    pub fn covering_range(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<std::ops::Range<usize>, PackError> {
        let bad = |w: &str| PackError::Index(w.to_string());
        let start = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset as u64)
            .map_err(|_| bad("extent does not start at a chunk"))?;
        let mut end = start;
        let mut covered = 0u64;
        while covered < len {
            let e = self
                .entries
                .get(end)
                .ok_or_else(|| bad("extent runs past the last chunk"))?;
            covered += e.clen as u64;
            end += 1;
        }
        if covered != len {
            return Err(bad("extent does not end at a chunk"));
        }
        Ok(start..end)
    }
}

/// Compress one chunk into one zstd frame (content size recorded, no
/// checksum: the chunk id checks the content).
pub struct FrameEncoder {
    cctx: zstd::bulk::Compressor<'static>,
}

impl FrameEncoder {
    pub fn new(level: i32) -> std::io::Result<FrameEncoder> {
        let mut cctx = zstd::bulk::Compressor::new(level)?;
        cctx.include_checksum(false)?;
        cctx.include_contentsize(true)?;
        Ok(FrameEncoder { cctx })
    }

    pub fn encode(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.cctx.compress(data)
    }
}

/// Decompress one frame that must hold exactly the chunk `e` describes.
pub fn decode_frame(frame: &[u8], e: &Entry, base: u64) -> Result<Vec<u8>, PackError> {
    let err = |what: String| PackError::Chunk {
        offset: base + e.offset as u64,
        what,
    };
    if frame.len() != e.clen as usize {
        return Err(err("truncated".into()));
    }
    // The frame must be one frame of exactly clen bytes: no trailing data.
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        _ => return Err(err("not exactly one zstd frame".into())),
    }
    let data =
        decompress(frame, e.len as usize).map_err(|x| err(format!("does not decompress: {x}")))?;
    if data.len() != e.len as usize {
        return Err(err(
            "decompresses to another length than its index says".into()
        ));
    }
    if ChunkId::of(&data) != e.id {
        return Err(err("bytes do not match the chunk id".into()));
    }
    Ok(data)
}

thread_local! {
    /// One decompression context per thread, reused for every frame
    /// (creating one per frame was a few percent of a restore).
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompress one frame into at most `capacity` bytes.
fn decompress(frame: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        cell.as_mut()
            .expect("set above")
            .decompress(frame, capacity)
    })
}

/// Builds one pack in memory.
#[derive(Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        PackBuilder {
            bytes: Vec::with_capacity(PACK_TARGET + (1 << 20)),
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET
    }

    /// Append a chunk's frame; returns its offset in the pack.
    pub fn push(&mut self, id: ChunkId, kind: Kind, len: u32, frame: &[u8]) -> u32 {
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(frame);
        self.entries.push(Entry {
            id,
            offset,
            clen: frame.len() as u32,
            len,
            kind,
        });
        offset
    }

    /// Close the pack: its name (BLAKE3 of the index payload), bytes, index.
    pub fn finish(mut self) -> (String, Vec<u8>, PackIndex) {
        let payload = PackIndex::payload(&self.entries);
        let name = blake3::hash(&payload).to_hex().to_string();
        let frames_len = self.bytes.len() as u64;
        self.bytes.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        self.bytes
            .extend_from_slice(&((payload.len() + TAIL_LEN) as u32).to_le_bytes());
        self.bytes.extend_from_slice(&payload);
        self.bytes
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(END_MAGIC);
        (
            name,
            self.bytes,
            PackIndex {
                entries: self.entries,
                frames_len,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(chunks: &[&[u8]]) -> (String, Vec<u8>, PackIndex) {
        let mut enc = FrameEncoder::new(3).unwrap();
        let mut b = PackBuilder::new();
        for c in chunks {
            let f = enc.encode(c).unwrap();
            b.push(ChunkId::of(c), Kind::Content, c.len() as u32, &f);
        }
        b.finish()
    }

    #[test]
    fn a_pack_round_trips_and_is_one_zstd_stream() {
        let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize * 97]).collect();
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let (name, bytes, idx) = build(&refs);
        let parsed = PackIndex::from_tail(&bytes, bytes.len() as u64, &name)
            .unwrap()
            .unwrap();
        assert_eq!(parsed, idx);
        for (e, c) in parsed.entries.iter().zip(&chunks) {
            let f = &bytes[e.offset as usize..(e.offset + e.clen) as usize];
            assert_eq!(&decode_frame(f, e, 0).unwrap(), c);
        }
        // zstd -dc of the whole pack: the chunks concatenated.
        let all = zstd::stream::decode_all(bytes.as_slice()).unwrap();
        assert_eq!(all, chunks.concat());
        // A short tail asks for more.
        let need = PackIndex::from_tail(&bytes[bytes.len() - 20..], bytes.len() as u64, &name)
            .unwrap()
            .unwrap_err();
        assert!(need > 20);
        // covering: whole and partial runs; misaligned refused.
        let e = &parsed.entries;
        let run = parsed
            .covering(e[3].offset as u64, (e[3].clen + e[4].clen) as u64)
            .unwrap();
        assert_eq!(run.len(), 2);
        assert!(parsed.covering(e[3].offset as u64 + 1, 10).is_err());
        assert!(parsed
            .covering(e[19].offset as u64, e[19].clen as u64 + 1)
            .is_err());
    }

    #[test]
    fn altered_packs_are_refused() {
        let (name, bytes, idx) = build(&[b"hello world, hello world", b"second chunk"]);
        // Another name (an index that was altered) is refused.
        let other = blake3::hash(b"x").to_hex().to_string();
        assert!(matches!(
            PackIndex::from_tail(&bytes, bytes.len() as u64, &other),
            Err(PackError::Name { .. })
        ));
        // A flipped frame byte: the chunk check fails.
        let mut b = bytes.clone();
        b[3] ^= 0xff;
        let e = &idx.entries[0];
        assert!(decode_frame(&b[..e.clen as usize], e, 0).is_err());
        // A wrong size for the pack is refused.
        assert!(PackIndex::from_tail(&bytes, bytes.len() as u64 + 1, &name).is_err());
        // Garbage is refused without panicking.
        for junk in [&b""[..], b"BCPKEND2", &[0u8; 64][..]] {
            let _ = PackIndex::from_tail(junk, 1000, &name);
        }
    }
}
