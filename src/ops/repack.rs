//! Repacking, prune's last step: packs that are mostly dead once snapshots
//! are forgotten (see [`crate::pack::repack`] for which) are rewritten, and
//! the retained snapshots that used them get new extent lists and manifests,
//! so stored bytes stay within a bounded factor of live data.
//!
//! Order, safe to interrupt at every step:
//! 1. Read the retained snapshots' extent lists and the indexes of the packs
//!    they name; decide the candidates.
//! 2. Copy the candidates' live frames verbatim (each pack read whole from a
//!    target that serves it intact) into new packs, uploaded to every target
//!    that retains a snapshot using them.
//! 3. Per rewritten snapshot and target ([`crate::repo::Commit::replace`]):
//!    the new lists, a signature file covering both the manifest in place and
//!    the new one, the new manifest, its own signature. The snapshot keeps its
//!    id, time and every stream hash; only where its bytes are changes.
//! 4. Per target where every replacement landed and prune saw every
//!    manifest: delete the old lists and the candidate packs that nothing
//!    there references any more.
//!
//! A crash leaves each target with the old manifest or the new one, both
//! authentic and complete; new packs no manifest names are orphans the next
//! prune deletes. A target left holding the old copy (it failed or was
//! away) counts as lacking the snapshot until `sync` copies the new one, and
//! prune deletes no pack there meanwhile. Only snapshots this host's key
//! signed are rewritten (machines that restore trust the key that signed a
//! snapshot); a pack another key's snapshot uses is never moved. The caller
//! holds the policy lock: no `run` of the policy on this host is writing.

use crate::archive::Manifest;
use crate::config::Config;
use crate::ops::prune::{PruneStatus, TargetPrune};
use crate::pack::extents::ExtentList;
use crate::pack::format::{PackBuilder, PackIndex};
use crate::pack::reader::PackSource;
use crate::pack::repack::{self as plan, Candidate, Liveness, Moves};
use crate::repo::fetch::{self, Packs};
use crate::repo::{Catalog, Commit, Entry, Hash, Key};
use crate::storage::DynBackend;
use crate::trust::HostKey;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What repacking did (dry run: would do) for one policy.
#[derive(Debug, Default, Serialize)]
pub struct RepackReport {
    /// Packs whose live chunks were moved (then deleted where nothing
    /// references them any more).
    pub packs: Vec<String>,
    /// The new packs they were copied into.
    pub packs_written: Vec<String>,
    /// Snapshots whose extent lists and manifests were rewritten.
    pub snapshots: Vec<String>,
    /// Bytes of live frames copied.
    pub live_bytes: u64,
    /// Bytes of dead frames in the moved packs (freed on each target).
    pub dead_bytes: u64,
    /// Why nothing, or not everything, was repacked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// A snapshot prune keeps, and the targets (indices into the catalog's)
/// that hold it and keep it.
struct Survivor<'c> {
    entry: &'c Entry,
    targets: Vec<usize>,
    /// Signed by another key: its packs stay where they are.
    pinned: bool,
}

/// The extent lists of a snapshot's streams: (list, its size).
fn lists_of(m: &Manifest) -> Vec<(Hash, u64)> {
    m.sources
        .iter()
        .flat_map(|s| s.streams())
        .filter_map(|st| Hash::new(&st.list).ok().map(|h| (h, st.list_size)))
        .collect()
}

/// Repack `catalog`'s policy after prune decided `pruned` (one per catalog
/// target, in order): deletions and failures are recorded there.
pub async fn repack(
    cfg: &Config,
    catalog: &Catalog,
    pruned: &mut [TargetPrune],
    dry_run: bool,
) -> RepackReport {
    let mut report = RepackReport::default();
    let key = match HostKey::load(&cfg.key_file) {
        Ok(k) => k,
        Err(e) => {
            report.skipped.push(format!(
                "no signing key readable here ({e}): no snapshot is rewritten"
            ));
            return report;
        }
    };
    let survivors = survivors(catalog, pruned, &key);
    let lists = match read_lists(catalog, &survivors).await {
        Ok(l) => l,
        Err(e) => {
            report.skipped.push(e);
            return report;
        }
    };
    let cache = crate::ops::run::pack_cache(&cfg.state_dir, &catalog.policy);
    let (live, lists) = match liveness(catalog, &survivors, lists, cache).await {
        Ok(x) => x,
        Err(e) => {
            report.skipped.push(e);
            return report;
        }
    };
    let candidates = live.candidates();
    if candidates.is_empty() {
        return report;
    }
    let moved: HashSet<String> = candidates.iter().map(|c| c.pack.clone()).collect();
    let affected: Vec<&Survivor> = survivors
        .iter()
        .filter(|s| {
            lists_of(&s.entry.manifest)
                .iter()
                .any(|(l, _)| lists[l].extents.iter().any(|x| moved.contains(&x.pack)))
        })
        .collect();
    report.packs = candidates.iter().map(|c| c.pack.clone()).collect();
    report.live_bytes = candidates.iter().map(|c| c.live).sum();
    report.dead_bytes = candidates.iter().map(|c| c.dead).sum();
    report.snapshots = affected.iter().map(|s| s.entry.id.to_string()).collect();
    tracing::info!(
        "prune policy={}: repacking {} pack(s) ({} live, {} dead bytes) used by {} snapshot(s){}",
        catalog.policy,
        candidates.len(),
        report.live_bytes,
        report.dead_bytes,
        affected.len(),
        if dry_run { " (dry run)" } else { "" }
    );
    if dry_run {
        return report;
    }
    let job = Job {
        catalog,
        live: &live,
        lists: &lists,
        moved: &moved,
        key: &key,
    };
    let mut failed: HashMap<usize, String> = HashMap::new();
    let dests: BTreeSet<usize> = affected.iter().flat_map(|s| s.targets.clone()).collect();
    let moves = match job
        .copy_frames(&candidates, &affected, &dests, &mut failed)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            report.skipped.push(e);
            return report;
        }
    };
    report.packs_written = moves.new_packs().iter().map(|s| s.to_string()).collect();
    let rewritten = match job.rewrite_lists(&affected, &moves) {
        Ok(r) => r,
        Err(e) => {
            report.skipped.push(e);
            return report;
        }
    };
    job.replace_manifests(&affected, &rewritten, &mut failed)
        .await;
    job.delete_moved(&survivors, &rewritten, &failed, pruned)
        .await;
    for (i, e) in failed {
        let r = &mut pruned[i];
        tracing::error!(
            "prune policy={} target={}: repack: {e}",
            catalog.policy,
            r.name
        );
        r.status = PruneStatus::Failed;
        let msg = format!("repacking: {e}; the old packs are kept there");
        r.error = Some(match r.error.take() {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
    }
    report
}

/// Every snapshot some target holds (its own authentic copy) and does not
/// forget in this prune, on the targets prune finished cleanly (one that
/// could not see every manifest, or failed a deletion, is left as it is).
fn survivors<'c>(catalog: &'c Catalog, pruned: &[TargetPrune], key: &HostKey) -> Vec<Survivor<'c>> {
    catalog
        .entries
        .iter()
        .filter_map(|e| {
            let targets: Vec<usize> = catalog
                .targets
                .iter()
                .enumerate()
                .filter(|(i, st)| {
                    matches!(pruned[*i].status, PruneStatus::Pruned | PruneStatus::DryRun)
                        && st.is_reachable()
                        && st.holds(e)
                        && !pruned[*i]
                            .manifests_deleted
                            .iter()
                            .any(|d| d == e.id.as_str())
                })
                .map(|(i, _)| i)
                .collect();
            (!targets.is_empty()).then(|| Survivor {
                entry: e,
                targets,
                pinned: e.signer != key.public(),
            })
        })
        .collect()
}

/// Every surviving snapshot's extent lists, each read from a target holding
/// the snapshot and checked against its name. Err: one could not be read
/// (nothing is repacked: its packs' use would be unknown).
async fn read_lists(
    catalog: &Catalog,
    survivors: &[Survivor<'_>],
) -> Result<HashMap<Hash, ExtentList>, String> {
    let mut lists: HashMap<Hash, ExtentList> = HashMap::new();
    for s in survivors {
        for (h, size) in lists_of(&s.entry.manifest) {
            if lists.contains_key(&h) {
                continue;
            }
            let mut why = Vec::new();
            for &i in &s.targets {
                let st = &catalog.targets[i];
                match fetch::list(&st.target, &catalog.policy, &h, size).await {
                    Ok(l) => {
                        lists.insert(h.clone(), l);
                        break;
                    }
                    Err(e) => why.push(format!("{}: {e}", st.name())),
                }
            }
            if !lists.contains_key(&h) {
                return Err(format!(
                    "extent list {} of snapshot {} unreadable ({}): nothing repacked",
                    h.short(),
                    s.entry.id,
                    why.join("; ")
                ));
            }
        }
    }
    Ok(lists)
}

/// Which frames the survivors use, from every pack's index (read from the
/// first reachable target listing the pack, through the local index cache).
async fn liveness(
    catalog: &Catalog,
    survivors: &[Survivor<'_>],
    lists: HashMap<Hash, ExtentList>,
    cache: std::path::PathBuf,
) -> Result<(Liveness, HashMap<Hash, ExtentList>), String> {
    let sources: Vec<(Arc<Packs>, HashSet<String>)> = catalog
        .reachable()
        .filter_map(|st| {
            let v = st.view.as_ref().ok()?;
            let names = v.packs.keys().map(|h| h.to_string()).collect();
            Some((Packs::new(&st.target, &catalog.policy, Some(&cache)), names))
        })
        .collect();
    let uses: Vec<(Hash, bool)> = survivors
        .iter()
        .flat_map(|s| {
            lists_of(&s.entry.manifest)
                .into_iter()
                .map(move |(h, _)| (h, s.pinned))
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut index_of = |pack: &str| -> Result<Arc<PackIndex>, String> {
            let mut why = Vec::new();
            for (p, _) in sources.iter().filter(|(_, n)| n.contains(pack)) {
                match p.load_index(pack) {
                    Ok(i) => return Ok(Arc::new(i)),
                    Err(e) => why.push(format!("{}: {e}", PackSource::name(&**p))),
                }
            }
            Err(format!(
                "the index of pack {pack} is unreadable ({}): nothing repacked",
                if why.is_empty() {
                    "on no reachable target".to_string()
                } else {
                    why.join("; ")
                }
            ))
        };
        let mut live = Liveness::default();
        for (h, pinned) in uses {
            live.add(&lists[&h], pinned, &mut index_of)?;
        }
        Ok((live, lists))
    })
    .await
    .expect("liveness panicked")
}

/// What one repack works from.
struct Job<'a> {
    catalog: &'a Catalog,
    live: &'a Liveness,
    lists: &'a HashMap<Hash, ExtentList>,
    moved: &'a HashSet<String>,
    key: &'a HostKey,
}

impl Job<'_> {
    fn target(&self, i: usize) -> &DynBackend {
        &self.catalog.targets[i].target
    }

    /// The candidates in the order the newest snapshots first use them.
    fn order(&self, candidates: &[Candidate], affected: &[&Survivor]) -> Vec<String> {
        let wanted: HashSet<&str> = candidates.iter().map(|c| c.pack.as_str()).collect();
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        for s in affected.iter().rev() {
            for (h, _) in lists_of(&s.entry.manifest) {
                for x in &self.lists[&h].extents {
                    if wanted.contains(x.pack.as_str()) && seen.insert(x.pack.clone()) {
                        order.push(x.pack.clone());
                    }
                }
            }
        }
        order
    }

    /// Step 2: the candidates' live frames into new packs, each uploaded to
    /// every target in `dests` as it closes (a target whose upload fails is
    /// marked failed and receives nothing more). Err: a candidate could not
    /// be read intact anywhere (no manifest is touched).
    async fn copy_frames(
        &self,
        candidates: &[Candidate],
        affected: &[&Survivor<'_>],
        dests: &BTreeSet<usize>,
        failed: &mut HashMap<usize, String>,
    ) -> Result<Moves, String> {
        let mut moves = Moves::default();
        let mut builder: Option<PackBuilder> = None;
        for pack in self.order(candidates, affected) {
            let bytes = self.read_pack(&pack).await?;
            let index = self.live.index(&pack).expect("a candidate has an index");
            for i in self.live.live_frames(&pack) {
                let e = index.entries[i];
                let b = builder.get_or_insert_with(|| {
                    moves.start_pack();
                    PackBuilder::new()
                });
                let frame = &bytes[e.offset as usize..(e.offset + e.clen) as usize];
                let off = b.push(e.id, e.kind, e.len, frame);
                moves.moved(&pack, e.offset, off);
                if b.is_full() {
                    let full = builder.take().expect("just used");
                    self.upload(full, &mut moves, dests, failed).await;
                }
            }
        }
        if let Some(last) = builder.take() {
            self.upload(last, &mut moves, dests, failed).await;
        }
        Ok(moves)
    }

    /// A whole candidate pack from the first target that serves it intact.
    async fn read_pack(&self, pack: &str) -> Result<Vec<u8>, String> {
        let name = Hash::new(pack).map_err(|e| e.to_string())?;
        let mut why = Vec::new();
        for st in self.catalog.reachable() {
            let Ok(v) = &st.view else { continue };
            if !v.packs.contains_key(&name) {
                continue;
            }
            match fetch::pack(&st.target, &self.catalog.policy, &name).await {
                Ok(b) => return Ok(b),
                Err(e) => why.push(format!("{}: {e}", st.name())),
            }
        }
        Err(format!(
            "pack {} is intact on no reachable target ({}): nothing repacked; `verify` and \
             `sync` find and replace damaged packs",
            name.short(),
            why.join("; ")
        ))
    }

    /// Close `b` and write it to every destination not failed yet.
    async fn upload(
        &self,
        b: PackBuilder,
        moves: &mut Moves,
        dests: &BTreeSet<usize>,
        failed: &mut HashMap<usize, String>,
    ) {
        let (name, bytes, _) = b.finish();
        let key = Key::Pack {
            policy: self.catalog.policy.clone(),
            name: Hash::new(&name).expect("a pack name is a hash"),
        }
        .object();
        let to: Vec<usize> = dests
            .iter()
            .copied()
            .filter(|i| !failed.contains_key(i))
            .collect();
        let puts = futures::future::join_all(to.iter().map(|&i| {
            let (key, data) = (key.clone(), bytes.clone());
            async move { self.target(i).put_bytes(&key, data).await }
        }))
        .await;
        for (i, r) in to.into_iter().zip(puts) {
            if let Err(e) = r {
                failed.insert(i, format!("writing pack {}: {e}", &name[..12]));
            }
        }
        moves.named(name);
    }

    /// Every list of an affected snapshot that names a moved pack, rewritten:
    /// old hash -> (new hash, text).
    fn rewrite_lists(
        &self,
        affected: &[&Survivor<'_>],
        moves: &Moves,
    ) -> Result<HashMap<Hash, (Hash, Vec<u8>)>, String> {
        let mut out = HashMap::new();
        for s in affected {
            for (h, _) in lists_of(&s.entry.manifest) {
                let list = &self.lists[&h];
                if out.contains_key(&h)
                    || !list.extents.iter().any(|x| self.moved.contains(&x.pack))
                {
                    continue;
                }
                let text = plan::rewrite(list, self.moved, self.live, moves)
                    .map_err(|e| {
                        format!("rewriting extent list {}: {e}: nothing repacked", h.short())
                    })?
                    .render()
                    .into_bytes();
                let new = Hash::of(&blake3::hash(&text));
                out.insert(h, (new, text));
            }
        }
        Ok(out)
    }

    /// Step 3: each affected snapshot's new manifest on each target keeping
    /// it (not one already failed).
    async fn replace_manifests(
        &self,
        affected: &[&Survivor<'_>],
        rewritten: &HashMap<Hash, (Hash, Vec<u8>)>,
        failed: &mut HashMap<usize, String>,
    ) {
        for s in affected {
            let (m, lists) = with_lists(&s.entry.manifest, rewritten);
            let json = m.to_json();
            if let Err(e) = crate::archive::manifest::check_size(json.len()) {
                for &i in &s.targets {
                    failed.insert(i, format!("snapshot {}: new manifest: {e}", s.entry.id));
                }
                continue;
            }
            let policy = self.catalog.policy.as_str();
            let sig = self.key.sign_manifest(policy, &m.id, &json);
            let commit = match Commit::new(&m, json.clone(), sig, lists) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("snapshot {}: {e}", s.entry.id);
                    continue;
                }
            };
            for &i in &s.targets {
                if failed.contains_key(&i) {
                    continue;
                }
                let t = self.target(i);
                let old = fetch::signature(t, &self.catalog.policy, &s.entry.id)
                    .await
                    .ok()
                    .flatten();
                let bridge = self
                    .key
                    .sign_manifest_keeping(policy, &m.id, &json, old.as_deref());
                match commit.replace(t, bridge).await {
                    Ok(()) => tracing::info!(
                        "prune policy={policy} target={}: snapshot {} repacked",
                        t.name(),
                        s.entry.id
                    ),
                    Err(e) => {
                        failed.insert(i, format!("replacing snapshot {}: {e}", s.entry.id));
                    }
                }
            }
        }
    }

    /// Step 4: on each target that took every replacement and whose prune
    /// saw every manifest, the old lists and moved packs nothing references.
    async fn delete_moved(
        &self,
        survivors: &[Survivor<'_>],
        rewritten: &HashMap<Hash, (Hash, Vec<u8>)>,
        failed: &HashMap<usize, String>,
        pruned: &mut [TargetPrune],
    ) {
        for (i, st) in self.catalog.targets.iter().enumerate() {
            let Ok(view) = &st.view else { continue };
            if failed.contains_key(&i) || pruned[i].status != PruneStatus::Pruned {
                continue;
            }
            let (lists, packs) = self.referenced_after(survivors, rewritten, i);
            let mut dead: Vec<(Key, u64, bool)> = Vec::new();
            for old in rewritten.keys().filter(|h| !lists.contains(*h)) {
                if let Some(&size) = view.lists.get(old) {
                    let k = Key::List {
                        policy: self.catalog.policy.clone(),
                        hash: old.clone(),
                    };
                    dead.push((k, size, false));
                }
            }
            for p in self.moved.iter().filter(|p| !packs.contains(p.as_str())) {
                let Ok(h) = Hash::new(p) else { continue };
                if let Some(&size) = view.packs.get(&h) {
                    let k = Key::Pack {
                        policy: self.catalog.policy.clone(),
                        name: h,
                    };
                    dead.push((k, size, true));
                }
            }
            let r = &mut pruned[i];
            for (k, size, is_pack) in dead {
                if let Err(e) = st.target.delete(&k.object()).await {
                    r.warnings
                        .push(format!("repack: deleting {}: {e}", k.object()));
                    continue;
                }
                r.bytes_freed = r.bytes_freed.saturating_add(size);
                match &k {
                    Key::Pack { name, .. } if is_pack => r.archives_deleted.push(name.to_string()),
                    _ => r.others_deleted.push(k.object().to_string()),
                }
            }
        }
    }

    /// The lists and packs the snapshots target `i` keeps reference once
    /// the rewritten lists are in place.
    fn referenced_after(
        &self,
        survivors: &[Survivor<'_>],
        rewritten: &HashMap<Hash, (Hash, Vec<u8>)>,
        i: usize,
    ) -> (HashSet<Hash>, HashSet<String>) {
        let mut lists = HashSet::new();
        let mut packs = HashSet::new();
        for s in survivors.iter().filter(|s| s.targets.contains(&i)) {
            for (h, _) in lists_of(&s.entry.manifest) {
                match rewritten.get(&h) {
                    Some((new, text)) => {
                        lists.insert(new.clone());
                        if let Ok(l) = ExtentList::parse(text) {
                            packs.extend(l.packs().into_iter().map(str::to_string));
                        }
                    }
                    None => {
                        packs.extend(self.lists[&h].packs().into_iter().map(str::to_string));
                        lists.insert(h);
                    }
                }
            }
        }
        (lists, packs)
    }
}

/// `m` with its rewritten lists, and the texts of those lists.
fn with_lists(
    m: &Manifest,
    rewritten: &HashMap<Hash, (Hash, Vec<u8>)>,
) -> (Manifest, Vec<(Hash, Vec<u8>)>) {
    let mut m = m.clone();
    m.revision += 1;
    let mut texts = Vec::new();
    for s in &mut m.sources {
        for st in [&mut s.stream, &mut s.index] {
            let Ok(old) = Hash::new(&st.list) else {
                continue;
            };
            if let Some((new, text)) = rewritten.get(&old) {
                st.list = new.to_string();
                st.list_size = text.len() as u64;
                texts.push((new.clone(), text.clone()));
            }
        }
    }
    (m, texts)
}
