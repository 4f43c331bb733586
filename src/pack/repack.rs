//! Repacking, the pure half: which packs are worth rewriting once prune has
//! forgotten snapshots, where their live chunks go, and the extent lists
//! after the move. The I/O (reading packs, writing new ones, replacing
//! manifests) is [`crate::ops::repack`]'s.
//!
//! A pack is *live* where an extent of a retained snapshot's list covers it
//! (frame by frame, through the pack's index). A pack is a candidate when
//! at least [`DEAD_SHARE_PERCENT`] of its frames' bytes are dead, or when it
//! is one of several small packs (under [`SMALL_PACK`]) that merge into
//! fewer objects; never when a snapshot that cannot be rewritten here
//! (signed by another host's key) references it. Candidates' live frames
//! are copied verbatim (same chunk ids, same compressed bytes) into new
//! packs, so every rewritten list decompresses to exactly the same stream.

use super::extents::ExtentList;
use super::format::PackIndex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Repack a pack once this share (percent) of its bytes is dead: stored
/// bytes stay within about 1.11x of live data.
pub const DEAD_SHARE_PERCENT: u64 = 10;
/// Packs smaller than this (a night's last, partly filled pack) are merged
/// when there are at least two of them.
pub const SMALL_PACK: u64 = 4 << 20;

/// One pack's use by the retained snapshots.
struct PackUse {
    index: Arc<PackIndex>,
    live: Vec<bool>,
    /// Referenced by a snapshot that is not rewritten: never a candidate.
    pinned: bool,
}

impl PackUse {
    fn live_bytes(&self) -> u64 {
        self.index
            .entries
            .iter()
            .zip(&self.live)
            .filter(|(_, l)| **l)
            .map(|(e, _)| e.clen as u64)
            .sum()
    }
}

/// Which frames of which packs the retained snapshots' lists use.
#[derive(Default)]
pub struct Liveness {
    packs: HashMap<String, PackUse>,
}

/// A candidate pack and what moving it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pack: String,
    /// Bytes of its live frames (copied).
    pub live: u64,
    /// Bytes of its frames no retained snapshot uses (freed).
    pub dead: u64,
}

impl Liveness {
    /// Mark what `list` covers as live; `pinned`: the list's snapshot will
    /// not be rewritten, so none of its packs may be moved. `index_of`
    /// gives a pack's (checked) index.
    pub fn add(
        &mut self,
        list: &ExtentList,
        pinned: bool,
        index_of: &mut dyn FnMut(&str) -> Result<Arc<PackIndex>, String>,
    ) -> Result<(), String> {
        for x in &list.extents {
            if !self.packs.contains_key(&x.pack) {
                let index = index_of(&x.pack)?;
                let n = index.entries.len();
                self.packs.insert(
                    x.pack.clone(),
                    PackUse {
                        index,
                        live: vec![false; n],
                        pinned: false,
                    },
                );
            }
            let u = self.packs.get_mut(&x.pack).expect("inserted above");
            let r = u
                .index
                .covering_range(x.offset, x.len)
                .map_err(|e| format!("pack {}: {e}", x.pack))?;
            u.live[r].iter_mut().for_each(|l| *l = true);
            u.pinned |= pinned;
        }
        Ok(())
    }

    /// The packs to repack, sorted by name.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        let mut small = Vec::new();
        for (name, u) in &self.packs {
            if u.pinned {
                continue;
            }
            let total = u.index.frames_len;
            let live = u.live_bytes();
            let c = Candidate {
                pack: name.clone(),
                live,
                dead: total - live,
            };
            if c.dead * 100 >= total * DEAD_SHARE_PERCENT {
                out.push(c);
            } else if total < SMALL_PACK {
                small.push(c);
            }
        }
        if small.len() >= 2 {
            out.extend(small);
        }
        out.sort_by(|a, b| a.pack.cmp(&b.pack));
        out
    }

    /// The live frames of `pack` (positions in its index), in pack order.
    pub fn live_frames(&self, pack: &str) -> Vec<usize> {
        self.packs.get(pack).map_or_else(Vec::new, |u| {
            (0..u.live.len()).filter(|&i| u.live[i]).collect()
        })
    }

    /// The (checked) index of a pack a list named.
    pub fn index(&self, pack: &str) -> Option<&Arc<PackIndex>> {
        self.packs.get(pack).map(|u| &u.index)
    }
}

/// Where moved frames went: (old pack, old offset) -> (new pack, offset).
#[derive(Default)]
pub struct Moves {
    to: HashMap<(String, u32), (usize, u32)>,
    names: Vec<Option<String>>,
}

impl Moves {
    /// A new pack was started; frames recorded from now go into it.
    pub fn start_pack(&mut self) {
        self.names.push(None);
    }

    /// The frame of `pack` at `offset` is now at `new_offset` of the pack
    /// last started.
    pub fn moved(&mut self, pack: &str, offset: u32, new_offset: u32) {
        let n = self.names.len().checked_sub(1).expect("a pack was started");
        self.to.insert((pack.to_string(), offset), (n, new_offset));
    }

    /// The pack last started is closed under `name`.
    pub fn named(&mut self, name: String) {
        if let Some(last) = self.names.last_mut() {
            *last = Some(name);
        }
    }

    /// The new packs, in the order they were written.
    pub fn new_packs(&self) -> Vec<&str> {
        self.names.iter().filter_map(|n| n.as_deref()).collect()
    }
}

/// `list` with every extent in a moved pack replaced by the frames' new
/// places (adjacent ones coalesced again). Err when a frame of a moved pack
/// was not moved (the plan and the lists disagree: nothing is rewritten).
pub fn rewrite(
    list: &ExtentList,
    moved: &HashSet<String>,
    live: &Liveness,
    moves: &Moves,
) -> Result<ExtentList, String> {
    let mut out = ExtentList::default();
    for x in &list.extents {
        if !moved.contains(&x.pack) {
            out.push(&x.pack, x.offset, x.len);
            continue;
        }
        let index = live
            .index(&x.pack)
            .ok_or_else(|| format!("pack {}: no index", x.pack))?;
        for e in index
            .covering(x.offset, x.len)
            .map_err(|e| format!("pack {}: {e}", x.pack))?
        {
            let &(n, off) = moves
                .to
                .get(&(x.pack.clone(), e.offset))
                .ok_or_else(|| format!("pack {}: chunk at {} not moved", x.pack, e.offset))?;
            let name = moves.names[n]
                .as_deref()
                .ok_or_else(|| "a new pack was never closed".to_string())?;
            out.push(name, off as u64, e.clen as u64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::format::{ChunkId, Kind, PackBuilder};

    /// A pack of `n` chunks of distinct bytes; its name, bytes and index.
    fn pack(seed: u8, n: usize, size: usize) -> (String, Vec<u8>, Arc<PackIndex>) {
        let mut b = PackBuilder::new();
        let mut enc = crate::pack::format::FrameEncoder::new(1).unwrap();
        for i in 0..n {
            let data: Vec<u8> = (0..size).map(|j| (j * 31 + i * 7) as u8 ^ seed).collect();
            let f = enc.encode(&data).unwrap();
            b.push(ChunkId::of(&data), Kind::Content, data.len() as u32, &f);
        }
        let (name, bytes, idx) = b.finish();
        (name, bytes, Arc::new(idx))
    }

    fn list_of(name: &str, idx: &PackIndex, frames: &[usize]) -> ExtentList {
        let mut l = ExtentList::default();
        for &i in frames {
            let e = &idx.entries[i];
            l.push(name, e.offset as u64, e.clen as u64);
        }
        l
    }

    /// The stream a list gives, read from in-memory packs.
    fn stream(list: &ExtentList, packs: &HashMap<String, Vec<u8>>) -> Vec<u8> {
        let mut z = Vec::new();
        for x in &list.extents {
            let p = &packs[&x.pack];
            z.extend_from_slice(&p[x.offset as usize..(x.offset + x.len) as usize]);
        }
        zstd::decode_all(&z[..]).unwrap()
    }

    #[test]
    fn dead_share_small_packs_and_pins_decide_candidates() {
        let (a, _, ia) = pack(1, 10, 5000);
        let (b, _, ib) = pack(2, 10, 5000);
        let (c, _, ic) = pack(3, 10, 5000);
        let idx: HashMap<String, Arc<PackIndex>> = [
            (a.clone(), ia.clone()),
            (b.clone(), ib.clone()),
            (c.clone(), ic.clone()),
        ]
        .into();
        let mut get = |p: &str| Ok(idx[p].clone());
        let mut live = Liveness::default();
        // a: 9 of 10 live (10% dead: a candidate); b: all live (small, but
        // alone once c is pinned); c: half dead but pinned.
        live.add(
            &list_of(&a, &ia, &[0, 1, 2, 3, 4, 5, 6, 7, 8]),
            false,
            &mut get,
        )
        .unwrap();
        live.add(
            &list_of(&b, &ib, &(0..10).collect::<Vec<_>>()),
            false,
            &mut get,
        )
        .unwrap();
        live.add(&list_of(&c, &ic, &[0, 2, 4, 6, 8]), true, &mut get)
            .unwrap();
        let cands = live.candidates();
        assert_eq!(cands.len(), 1, "{cands:?}");
        assert_eq!(cands[0].pack, a);
        let ninth = ia.entries[9].clen as u64;
        assert_eq!(cands[0].dead, ninth);
        assert_eq!(cands[0].live + cands[0].dead, ia.frames_len);
        assert_eq!(live.live_frames(&a), (0..9).collect::<Vec<_>>());
        // A second small, fully live pack: the two small ones merge.
        let (d, _, id) = pack(4, 3, 5000);
        let mut get = |p: &str| Ok(if p == d { id.clone() } else { idx[p].clone() });
        live.add(&list_of(&d, &id, &[0, 1, 2]), false, &mut get)
            .unwrap();
        let names: Vec<String> = live.candidates().into_iter().map(|c| c.pack).collect();
        let mut want = vec![a.clone(), b.clone(), d.clone()];
        want.sort();
        assert_eq!(names, want);
        // An extent that does not fall on frames is refused.
        let mut bad = ExtentList::default();
        bad.push(&a, 1, 10);
        assert!(live.add(&bad, false, &mut get).is_err());
    }

    #[test]
    fn rewritten_lists_give_the_same_stream_from_the_new_pack() {
        let (a, pa, ia) = pack(1, 8, 3000);
        let (b, pb, ib) = pack(2, 4, 3000);
        let idx: HashMap<String, Arc<PackIndex>> =
            [(a.clone(), ia.clone()), (b.clone(), ib.clone())].into();
        let mut get = |p: &str| Ok(idx[p].clone());
        // Two snapshots' lists, interleaving a (half dead) and b (kept).
        let mut l1 = list_of(&a, &ia, &[0, 1]);
        for x in list_of(&b, &ib, &[0, 1, 2, 3]).extents {
            l1.push(&x.pack, x.offset, x.len);
        }
        for x in list_of(&a, &ia, &[5]).extents {
            l1.push(&x.pack, x.offset, x.len);
        }
        let l2 = list_of(&a, &ia, &[1, 5, 6]);
        let mut live = Liveness::default();
        live.add(&l1, false, &mut get).unwrap();
        live.add(&l2, false, &mut get).unwrap();
        let cands = live.candidates();
        assert_eq!(cands.iter().map(|c| &c.pack).collect::<Vec<_>>(), [&a]);
        // Copy a's live frames verbatim into one new pack.
        let mut moves = Moves::default();
        moves.start_pack();
        let mut nb = PackBuilder::new();
        for i in live.live_frames(&a) {
            let e = ia.entries[i];
            let f = &pa[e.offset as usize..(e.offset + e.clen) as usize];
            let off = nb.push(e.id, e.kind, e.len, f);
            moves.moved(&a, e.offset, off);
        }
        let (n, pn, _) = nb.finish();
        moves.named(n.clone());
        assert_eq!(moves.new_packs(), [n.as_str()]);
        let moved: HashSet<String> = [a.clone()].into();
        let packs: HashMap<String, Vec<u8>> =
            [(a.clone(), pa.clone()), (b.clone(), pb), (n.clone(), pn)].into();
        for l in [&l1, &l2] {
            let r = rewrite(l, &moved, &live, &moves).unwrap();
            assert!(r.extents.iter().all(|x| x.pack != a), "{r:?}");
            assert_eq!(stream(&r, &packs), stream(l, &packs));
        }
        // Frames 1 and 5, 6 (two extents in a) sit next to each other in
        // the new pack: one extent.
        assert_eq!(l2.extents.len(), 2);
        let r2 = rewrite(&l2, &moved, &live, &moves).unwrap();
        assert_eq!(r2.extents.len(), 1);
        // A plan that did not move a frame a list uses rewrites nothing.
        let mut partial = Moves::default();
        partial.start_pack();
        partial.named(n);
        assert!(rewrite(&l1, &moved, &live, &moves).is_ok());
        assert!(rewrite(&l1, &moved, &live, &partial).is_err());
    }
}
