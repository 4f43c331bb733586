//! Fuzzes format v2's pack surfaces, everything a target serves below a
//! signed manifest: extent lists ([`ExtentList::parse`]), pack indexes read
//! from a pack's tail ([`PackIndex::from_tail`], with the "read more" answer
//! `repo::fetch::Packs` follows, and [`PackIndex::covering`]), whole packs as
//! `sync` and `verify --read-all` check them ([`check_pack`]), single frames
//! against an index entry ([`decode_frame`]), and the read pipeline
//! ([`StreamReader`]) over in-memory [`PackSource`]s, one serving the input
//! as a pack and one a copy with a byte flipped.
//!
//! The first byte steers the harness (which name, pack size, entry, extent
//! list, source order and limit); the rest is the bytes a target serves. A
//! pack's name is what authenticates its index, so the harness names the
//! input by the BLAKE3 of the payload its tail points at (or, one time in
//! eight, by another name, which must be refused): the fuzzer gets past the
//! name check to the index parser, and frames stay hostile.
//!
//! Proves, for any bytes: nothing panics, and every refusal is an error;
//! memory stays bounded by the input (the harness's 2 GiB limit catches an
//! allocation sized by a length field); an extent list that parses names
//! only pack paths as backupctl makes them, with extents inside a pack, and
//! renders back to itself; an index that parses under another name never
//! does, its frames are contiguous and add up to the pack's size with the
//! index, the "read more" answer never asks for more than the pack, and a
//! short tail grown to the answer gives the same index as the whole pack;
//! `covering` returns exactly the frames of an extent or an error; a frame
//! that decodes matches its entry's length and chunk id, and one checked
//! against a wrong id, length or frame length is refused; and a stream the
//! reader hands over is never longer than its limit and is, chunk by chunk,
//! exactly the bytes the index's chunk ids name.
#![no_main]

use backupctl::pack::extents::{ExtentList, MAX_EXTENTS};
use backupctl::pack::format::{decode_frame, ChunkId, Entry, Kind, PackError, PackIndex, PACK_MAX};
use backupctl::pack::reader::{PackSource, StreamReader};
use backupctl::repo::fetch::check_pack;
use backupctl::repo::Hash;
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::sync::Arc;

/// Largest chunk an index may describe (`parse_payload`'s bound).
const MAX_CHUNK: u32 = 1 << 20;

/// The name the pack's tail claims: the BLAKE3 of the payload its last 12
/// bytes point at (or of nothing when they point nowhere).
fn claimed_name(pack: &[u8]) -> String {
    let n = pack.len();
    let payload = (n >= 12)
        .then(|| u32::from_le_bytes(pack[n - 12..n - 8].try_into().unwrap()) as usize)
        .and_then(|plen| n.checked_sub(12 + plen).map(|start| &pack[start..n - 12]))
        .unwrap_or_default();
    blake3::hash(payload).to_hex().to_string()
}

/// Read an index as `Packs::load_index` does: a short tail first, then as
/// many bytes from the end as `from_tail` asks for, while that grows.
fn index_by_tail(
    pack: &[u8],
    pack_len: u64,
    name: &str,
    first: usize,
) -> Result<PackIndex, String> {
    let mut want = pack.len().min(first);
    loop {
        let tail = &pack[pack.len() - want..];
        match PackIndex::from_tail(tail, pack_len, name).map_err(|e| e.to_string())? {
            Ok(idx) => return Ok(idx),
            Err(need) => {
                assert!(need > tail.len(), "asked for {need} bytes with {want}");
                assert!(need as u64 <= pack_len, "asked for {need} of {pack_len}");
                if need > pack.len() {
                    return Err("short".into());
                }
                want = need;
            }
        }
    }
}

/// What every index that parses promises.
fn check_index(idx: &PackIndex, pack_len: u64) {
    let mut offset = 0u64;
    for e in &idx.entries {
        assert_eq!(e.offset as u64, offset);
        assert!(e.clen > 0 && e.len <= MAX_CHUNK);
        offset += e.clen as u64;
    }
    assert_eq!(offset, idx.frames_len);
    assert!(idx.frames_len < pack_len && pack_len <= PACK_MAX);
}

/// `covering` gives exactly the frames of `[offset, offset + len)`, or an error.
fn check_covering(idx: &PackIndex, offset: u64, len: u64) {
    if let Ok(run) = idx.covering(offset, len) {
        if len == 0 {
            assert!(run.is_empty());
            return;
        }
        assert_eq!(run[0].offset as u64, offset);
        assert_eq!(run.iter().map(|e| e.clen as u64).sum::<u64>(), len);
    }
}

/// The input as an extent list.
fn extents(data: &[u8]) {
    let Ok(list) = ExtentList::parse(data) else {
        return;
    };
    assert!(list.extents.len() <= MAX_EXTENTS);
    for e in &list.extents {
        assert!(Hash::new(&e.pack).is_ok(), "{:?}", e.pack);
        assert!(e.len > 0 && e.offset + e.len <= PACK_MAX);
    }
    let again = ExtentList::parse(list.render().as_bytes()).expect("a rendered list parses");
    assert_eq!(again.extents, list.extents);
    let _ = (list.packs(), list.compressed_len());
}

/// The input as one frame, checked against an entry derived from `ctl`.
fn frame(ctl: u8, frame: &[u8]) {
    // What the harness decodes (bounded as an index bounds chunks).
    let decoded = zstd::bulk::decompress(frame, MAX_CHUNK as usize).ok();
    let honest = Entry {
        id: ChunkId::of(decoded.as_deref().unwrap_or_default()),
        offset: 0,
        clen: frame.len().min(u32::MAX as usize) as u32,
        len: decoded.as_ref().map_or(0, |d| d.len() as u32),
        kind: Kind::Content,
    };
    let (e, must_fail) = match (ctl >> 2) % 4 {
        0 | 1 => (honest, false),
        2 => {
            let mut id = honest.id;
            id.0[(ctl as usize >> 4) % 16] ^= 1;
            (Entry { id, ..honest }, true)
        }
        _ => match ctl >> 4 {
            0..=7 if honest.len < MAX_CHUNK => (
                Entry {
                    len: honest.len + 1,
                    ..honest
                },
                true,
            ),
            0..=7 => (honest, false),
            _ => (
                Entry {
                    clen: honest.clen.wrapping_add(1),
                    ..honest
                },
                true,
            ),
        },
    };
    match decode_frame(frame, &e, 4096) {
        Ok(data) => {
            assert!(!must_fail, "a frame checked against a wrong entry {e:?}");
            assert_eq!(data.len(), e.len as usize);
            assert_eq!(ChunkId::of(&data), e.id);
        }
        Err(PackError::Chunk { offset, .. }) => assert_eq!(offset, 4096),
        Err(other) => panic!("decode_frame: {other}"),
    }
}

/// A target holding one pack in memory.
struct Mem {
    name: String,
    pack: String,
    bytes: Vec<u8>,
    first_read: usize,
}

impl PackSource for Mem {
    fn name(&self) -> &str {
        &self.name
    }
    fn index(&self, pack: &str) -> Result<Arc<PackIndex>, String> {
        if pack != self.pack {
            return Err("missing pack".into());
        }
        index_by_tail(&self.bytes, self.bytes.len() as u64, pack, self.first_read).map(Arc::new)
    }
    fn read(&self, pack: &str, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if pack != self.pack {
            return Err("missing pack".into());
        }
        let end = offset.checked_add(len).ok_or("range overflows")?;
        self.bytes
            .get(offset as usize..end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "range beyond the pack".into())
    }
}

/// The input, a pack whose index parsed, read back through `StreamReader`.
fn stream(ctl: u8, data: &[u8], name: &str, idx: &PackIndex) {
    let e = &idx.entries;
    // The extent list, as text (the reader only ever gets parsed lists).
    let runs: Vec<(u64, u64)> = match ctl >> 5 {
        0..=2 => vec![(0, idx.frames_len)],
        3 | 4 => e.iter().map(|e| (e.offset as u64, e.clen as u64)).rev().collect(),
        5 => e
            .iter()
            .skip(1)
            .step_by(2)
            .map(|e| (e.offset as u64, e.clen as u64))
            .collect(),
        // Arbitrary ranges from the pack's last bytes: mostly misaligned.
        _ => data
            .rchunks_exact(4)
            .take(3)
            .map(|c| {
                let o = u16::from_le_bytes([c[0], c[1]]) as u64 % (idx.frames_len + 1);
                (o, 1 + u16::from_le_bytes([c[2], c[3]]) as u64)
            })
            .collect(),
    };
    let path = backupctl::pack::extents::pack_path(name);
    let text: String = runs
        .iter()
        .filter(|(_, l)| *l > 0)
        .map(|(o, l)| format!("{path} {o} {l}\n"))
        .collect();
    let Ok(list) = ExtentList::parse(text.as_bytes()) else {
        return;
    };
    // What the extents hold by the index (when they are aligned).
    let mut want: Vec<Entry> = Vec::new();
    let mut aligned = true;
    for x in &list.extents {
        match idx.covering(x.offset, x.len) {
            Ok(run) => want.extend_from_slice(run),
            Err(_) => aligned = false,
        }
    }
    let total: u64 = want.iter().map(|e| e.len as u64).sum();
    let limit = if ctl & 0x10 != 0 {
        total.saturating_sub(1)
    } else {
        total
    };

    let mut damaged = data.to_vec();
    if idx.frames_len > 0 {
        let at = (ctl as u64 * 7919) % idx.frames_len;
        damaged[at as usize] ^= 0x20;
    }
    let good: Arc<dyn PackSource> = Arc::new(Mem {
        name: "served".into(),
        pack: name.to_string(),
        bytes: data.to_vec(),
        first_read: 64,
    });
    let bad: Arc<dyn PackSource> = Arc::new(Mem {
        name: "damaged".into(),
        pack: name.to_string(),
        bytes: damaged,
        first_read: 12 + ctl as usize,
    });
    let sources = if ctl & 0x08 != 0 {
        vec![bad, good]
    } else {
        vec![good]
    };
    let mut r = StreamReader::new(list, sources, limit);
    let mut out = Vec::new();
    let res = r.by_ref().take(limit + 1).read_to_end(&mut out);
    assert!(out.len() as u64 <= limit, "{} bytes past a limit of {limit}", out.len());
    if res.is_err() {
        return;
    }
    let (hash, len) = r.finish().expect("the stream was read to its end");
    assert_eq!(len, out.len() as u64);
    assert_eq!(hash, blake3::hash(&out).to_hex().to_string());
    assert!(aligned, "a misaligned extent was read");
    // Chunk by chunk, exactly what the index's ids name.
    assert_eq!(len, total);
    let mut at = 0usize;
    for e in &want {
        let piece = &out[at..at + e.len as usize];
        assert_eq!(ChunkId::of(piece), e.id, "chunk at {} served altered", e.offset);
        at += e.len as usize;
    }
}

/// The input as a pack (or a pack's tail).
fn pack(ctl: u8, data: &[u8]) {
    let mut name = claimed_name(data);
    let wrong_name = ctl & 0xe0 == 0xe0;
    if wrong_name {
        name = blake3::hash(name.as_bytes()).to_hex().to_string();
    }
    let n = data.len() as u64;
    // The pack's size: the input's, or more (the input is its tail).
    let pack_len = match (ctl >> 2) % 8 {
        0..=4 => n,
        5 => n + 32 * (ctl >> 5) as u64 + 1,
        6 => PACK_MAX + 1,
        _ => n.saturating_sub(1),
    };
    let whole = match PackIndex::from_tail(data, pack_len, &name) {
        Ok(Ok(idx)) => Some(idx),
        Ok(Err(need)) => {
            assert!(need > data.len() && need as u64 <= pack_len);
            None
        }
        Err(_) => None,
    };
    if let Some(idx) = &whole {
        assert!(!wrong_name, "an index accepted under another name");
        check_index(idx, pack_len);
    }
    // The same from a short tail, grown as the reader grows it.
    let by_tail = index_by_tail(data, pack_len, &name, 12 + (ctl as usize >> 3));
    assert_eq!(by_tail.as_ref().ok(), whole.as_ref(), "tail and whole disagree");
    let Some(idx) = whole else {
        return;
    };
    check_covering(&idx, 0, idx.frames_len);
    for c in data.chunks_exact(8).take(4) {
        let o = u32::from_le_bytes(c[..4].try_into().unwrap()) as u64 % (idx.frames_len + 1);
        let l = u32::from_le_bytes(c[4..].try_into().unwrap()) as u64 % (PACK_MAX + 1);
        check_covering(&idx, o, l);
        if let Some(e) = idx.entries.get(c[0] as usize % (idx.entries.len() + 1)) {
            check_covering(&idx, e.offset as u64, e.clen as u64);
        }
    }
    if pack_len != n {
        return;
    }
    // A whole pack, as sync and verify --read-all check it.
    let checked = check_pack(data, &Hash::new(&name).unwrap());
    let frames_ok = idx.entries.iter().all(|e| {
        let f = &data[e.offset as usize..(e.offset + e.clen) as usize];
        decode_frame(f, e, 0).is_ok()
    });
    assert_eq!(checked.is_ok(), frames_ok, "{checked:?}");
    stream(ctl, data, &name, &idx);
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    extents(rest);
    frame(ctl, rest);
    pack(ctl, rest);
});
