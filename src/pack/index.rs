//! The chunk index of a run: which chunks a target set already holds, and
//! where. Built from the indexes of the packs on the targets (each checked
//! against its pack's name), held compactly: sorted 16-byte ids with a pack
//! number, offset and length each (28 bytes per chunk: a 100 GB source in
//! ~96 KiB chunks is ~30 MB), plus the chunks this run adds.

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
    added: HashMap<ChunkId, Location>,
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
        if let Ok(i) = self.sorted.binary_search_by_key(id, |(k, _)| *k) {
            return Some(self.sorted[i].1);
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
}
