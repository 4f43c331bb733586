//! The chunk index of a run: which chunks a target set already holds, and
//! where. Built from the indexes of the packs on the targets (each checked
//! against its pack's name), held compactly: sorted 16-byte ids with a pack
//! number, offset and length each (28 bytes per chunk: a 100 GB source in
//! ~96 KiB chunks is ~30 MB), plus the chunks this run adds. Ids are
//! uniformly random, so a table of where each 16-bit prefix starts (256 KiB)
//! narrows a lookup to a handful of neighbours: a plain binary search over
//! hundreds of thousands of chunks (a tree of tiny files) missed the cache
//! at every step and was the largest cost of an unchanged night.

use super::format::{ChunkId, PackIndex};
use std::collections::HashMap;

/// Where a chunk's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Number of the pack in [`ChunkIndex::pack_name`].
    pub pack: u32,
    pub offset: u32,
    pub clen: u32,
}

#[derive(Debug, Default)]
pub struct ChunkIndex {
    packs: Vec<String>,
    pack_numbers: HashMap<String, u32>,
    sorted: Vec<(ChunkId, Location)>,
    /// `prefix_start[p]`: the first entry of `sorted` whose id's first two
    /// bytes are `p` or more (one more slot at the end); empty until sealed.
    prefix_start: Vec<u32>,
    added: HashMap<ChunkId, Location>,
}

/// The 16-bit prefix an id is bucketed by.
fn prefix(id: &ChunkId) -> usize {
    u16::from_be_bytes([id.0[0], id.0[1]]) as usize
}

impl ChunkIndex {
    pub fn new() -> ChunkIndex {
        ChunkIndex::default()
    }

    fn number(&mut self, name: &str) -> u32 {
        if let Some(n) = self.pack_numbers.get(name) {
            return *n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(name.to_string());
        self.pack_numbers.insert(name.to_string(), n);
        n
    }

    /// Add every chunk of an existing pack (call [`ChunkIndex::seal`] after
    /// the last one). A chunk already known keeps its first location.
    pub fn add_existing(&mut self, name: &str, idx: &PackIndex) {
        let n = self.number(name);
        self.prefix_start.clear(); // stale until sealed again
        self.sorted.extend(idx.entries.iter().map(|e| {
            (
                e.id,
                Location {
                    pack: n,
                    offset: e.offset,
                    clen: e.clen,
                },
            )
        }));
    }

    /// Sort what [`ChunkIndex::add_existing`] collected.
    pub fn seal(&mut self) {
        // Stable: among duplicates the first added (policy order) stays first.
        self.sorted.sort_by_key(|(id, _)| *id);
        self.sorted.dedup_by_key(|(id, _)| *id);
        self.sorted.shrink_to_fit();
        let mut start = vec![0u32; (1 << 16) + 1];
        let mut at = 0usize;
        for (p, slot) in start.iter_mut().enumerate() {
            while at < self.sorted.len() && prefix(&self.sorted[at].0) < p {
                at += 1;
            }
            *slot = at as u32;
        }
        self.prefix_start = start;
    }

    /// Record a chunk this run stored.
    pub fn add_new(&mut self, id: ChunkId, pack: &str, offset: u32, clen: u32) {
        let n = self.number(pack);
        self.added.entry(id).or_insert(Location {
            pack: n,
            offset,
            clen,
        });
    }

    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        let bucket = match self.prefix_start.get(prefix(id)..prefix(id) + 2) {
            Some(&[a, b]) => &self.sorted[a as usize..b as usize],
            _ => &self.sorted[..], // not sealed yet
        };
        if let Ok(i) = bucket.binary_search_by_key(id, |(k, _)| *k) {
            return Some(bucket[i].1);
        }
        self.added.get(id).copied()
    }

    pub fn pack_name(&self, n: u32) -> &str {
        &self.packs[n as usize]
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{Entry, Kind};
    use super::*;

    #[test]
    fn lookups_existing_and_new() {
        let id = |b: u8| ChunkId([b; 16]);
        let idx = PackIndex {
            entries: vec![
                Entry {
                    id: id(3),
                    offset: 0,
                    clen: 10,
                    len: 20,
                    kind: Kind::Content,
                },
                Entry {
                    id: id(1),
                    offset: 10,
                    clen: 5,
                    len: 5,
                    kind: Kind::Header,
                },
            ],
            frames_len: 15,
        };
        let mut ci = ChunkIndex::new();
        ci.add_existing("p1", &idx);
        ci.add_existing("p2", &idx);
        ci.seal();
        assert_eq!(ci.len(), 2);
        let l = ci.get(&id(1)).unwrap();
        assert_eq!((ci.pack_name(l.pack), l.offset, l.clen), ("p1", 10, 5));
        assert!(ci.get(&id(9)).is_none());
        ci.add_new(id(9), "p3", 0, 7);
        let l = ci.get(&id(9)).unwrap();
        assert_eq!(ci.pack_name(l.pack), "p3");
    }

    #[test]
    fn every_id_is_found_through_its_prefix_bucket() {
        let ids: Vec<ChunkId> = (0u32..20_000)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .chain([ChunkId([0; 16]), ChunkId([0xff; 16])])
            .collect();
        let idx = PackIndex {
            entries: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Entry {
                    id: *id,
                    offset: i as u32,
                    clen: 1,
                    len: 1,
                    kind: Kind::Content,
                })
                .collect(),
            frames_len: ids.len() as u64,
        };
        let mut ci = ChunkIndex::new();
        ci.add_existing("p", &idx);
        ci.seal();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(ci.get(id).map(|l| l.offset), Some(i as u32));
        }
        for i in 20_000u32..21_000 {
            assert!(ci.get(&ChunkId::of(&i.to_le_bytes())).is_none());
        }
    }
}
