//! The catalog: what every target of a policy holds, authenticated and
//! merged, and the questions commands ask of it (which targets hold a
//! snapshot, which are reachable, which snapshot "latest" or a prefix means).
//!
//! A snapshot is *complete* on a target when its authenticated manifest (see
//! [`crate::trust`]), the extent lists it names and every pack those lists
//! reference are there. Lists are named by their BLAKE3 (which the signed
//! manifest records), so each distinct list is read once, from any target,
//! and checked against its name. Each target is judged by its own copies: a manifest one target
//! serves never vouches for another target's. Nothing a target serves is
//! parsed before its signature verifies against a trusted key.
//!
//! Not here: key names ([`super::layout`]), downloading ([`super::fetch`]),
//! writing snapshots ([`super::commit`]).

use super::fetch;
use super::layout::{self, Hash, Key, PolicyName, SnapshotId};
use crate::archive::Manifest;
use crate::storage::{DynBackend, ObjectInfo, StorageError};
use crate::trust::{AuthError, PublicKey, Trust};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap};

/// What one target holds for one policy (one listing call), by kind.
#[derive(Debug, Default, Clone)]
pub struct TargetView {
    /// Snapshot id -> manifest size (names that are not snapshot ids are
    /// never used to build a key or printed raw: they land in `others`).
    pub snapshots: BTreeMap<SnapshotId, u64>,
    /// pack name -> size
    pub packs: HashMap<Hash, u64>,
    /// extent list hash -> size
    pub lists: HashMap<Hash, u64>,
    /// signatures by snapshot id -> size
    pub signatures: HashMap<SnapshotId, u64>,
    /// Anything else under the policy's prefix (never deleted).
    pub others: Vec<ObjectInfo>,
}

impl TargetView {
    /// Sort what `t` listed under `policy`'s prefix.
    pub fn from_listing(policy: &PolicyName, listed: Vec<ObjectInfo>) -> TargetView {
        let mut v = TargetView::default();
        for o in listed {
            match Key::parse(&o.key) {
                Some(Key::Manifest { policy: p, id }) if &p == policy => {
                    v.snapshots.insert(id, o.size);
                }
                Some(Key::Signature { policy: p, id }) if &p == policy => {
                    v.signatures.insert(id, o.size);
                }
                Some(Key::Pack { policy: p, name }) if &p == policy => {
                    v.packs.insert(name, o.size);
                }
                Some(Key::List { policy: p, hash }) if &p == policy => {
                    v.lists.insert(hash, o.size);
                }
                _ => v.others.push(o),
            }
        }
        v
    }

    /// Does this target hold a manifest for `id` (authentic or not)?
    pub fn has_manifest(&self, id: &str) -> bool {
        SnapshotId::new(id).is_ok_and(|id| self.snapshots.contains_key(&id))
    }

    /// What of snapshot `e` is missing here (lists, packs), for messages.
    pub fn missing(&self, e: &Entry) -> Vec<String> {
        self.missing_parts(&e.lists, &e.packs)
    }

    /// Which of `lists` and `packs` are missing here, counted, for messages.
    fn missing_parts(
        &self,
        lists: &[Hash],
        packs: &std::collections::BTreeSet<Hash>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let lists = lists
            .iter()
            .filter(|l| !self.lists.contains_key(*l))
            .count();
        if lists > 0 {
            out.push(format!("{lists} extent list(s)"));
        }
        let packs = packs
            .iter()
            .filter(|p| !self.packs.contains_key(*p))
            .count();
        if packs > 0 {
            out.push(format!("{packs} pack(s)"));
        }
        out
    }
}

/// List what `t` holds for `policy`.
pub async fn view(t: &DynBackend, policy: &PolicyName) -> Result<TargetView, StorageError> {
    let listed = t.list(&layout::policy_prefix(policy)).await?;
    Ok(TargetView::from_listing(policy, listed))
}

/// One snapshot, merged across targets.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: SnapshotId,
    pub manifest: Manifest,
    /// BLAKE3 of the authenticated manifest bytes.
    pub digest: [u8; 32],
    /// Who signed it.
    pub signer: PublicKey,
    /// The extent lists its sources name (stream and index of each).
    pub lists: Vec<Hash>,
    /// Every pack those lists reference.
    pub packs: std::sync::Arc<std::collections::BTreeSet<Hash>>,
    /// Every list could be read from some target: `packs` is all of them
    /// (prune deletes no pack while this is false for a live snapshot).
    pub packs_known: bool,
    /// Targets (policy order) where the snapshot is complete.
    pub complete_on: Vec<String>,
    /// Targets holding the manifest but missing lists or packs, with what.
    pub incomplete_on: Vec<(String, String)>,
}

impl Entry {
    pub fn is_complete_on(&self, target: &str) -> bool {
        self.complete_on.iter().any(|c| c == target)
    }
}

/// Per target: its view, or why it could not be listed, and which of its
/// manifests authenticated.
pub struct TargetState {
    pub target: DynBackend,
    pub view: Result<TargetView, String>,
    /// Snapshot id -> BLAKE3 of this target's own authenticated manifest.
    pub authentic: BTreeMap<SnapshotId, [u8; 32]>,
}

impl TargetState {
    pub fn name(&self) -> &str {
        self.target.name()
    }

    /// Could it be listed completely?
    pub fn is_reachable(&self) -> bool {
        self.view.is_ok()
    }

    /// Does this target hold `e`'s own authenticated manifest?
    pub fn holds(&self, e: &Entry) -> bool {
        self.authentic.get(&e.id) == Some(&e.digest)
    }

    /// Does this target hold another authentic copy of `e` (an older
    /// revision: repacked while this target was away)?
    pub fn holds_older(&self, e: &Entry) -> bool {
        self.authentic.get(&e.id).is_some_and(|d| d != &e.digest)
    }
}

/// How a target stands toward one snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Holding<'a> {
    /// Its own manifest authenticated and is the snapshot's.
    Holds,
    /// It could not be listed (the error).
    Unreachable(&'a str),
    /// It has no manifest for the snapshot.
    Absent,
    /// Its manifest is not used: damaged (why), or another authentic
    /// manifest under the same id (None).
    NotUsed(Option<&'a Damaged>),
}

/// A manifest a target serves that is not used: unsigned, signed by an
/// untrusted key, altered, unreadable or invalid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damaged {
    pub target: String,
    pub snapshot: String,
    pub reason: String,
    /// The key that signed it, when the signature names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<PublicKey>,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target {}: snapshot {}: {}",
            self.target, self.snapshot, self.reason
        )
    }
}

/// All snapshots of a policy on the given targets.
pub struct Catalog {
    pub policy: PolicyName,
    /// Authenticated snapshots, oldest first (by instant, then id).
    pub entries: Vec<Entry>,
    /// Every target asked, in the policy's order.
    pub targets: Vec<TargetState>,
    /// Manifests that are not used, per target (never restored, copied or
    /// counted by prune; they block archive deletion on their target).
    pub bad_manifests: Vec<Damaged>,
    /// Whether any trusted key was configured for this load.
    pub trust_empty: bool,
}

/// An authenticated manifest as a target serves it: the exact bytes and
/// signature (never re-serialised: the signature covers the bytes).
pub struct Authentic {
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub digest: [u8; 32],
    pub signer: PublicKey,
}

/// Read one manifest and its signature from `t`, bounded, and authenticate
/// it. `size` is the listed size (0: not listed; the read is bounded anyway).
/// Err: why it is not used, and who signed it when the signature says.
pub async fn read_authentic(
    t: &DynBackend,
    policy: &PolicyName,
    id: &SnapshotId,
    size: u64,
    trust: &Trust,
) -> Result<Authentic, (String, Option<PublicKey>)> {
    fetch::check_manifest_size(size).map_err(|e| (e, None))?;
    let signature = fetch::signature(t, policy, id)
        .await
        .map_err(|e| (e, None))?
        .ok_or_else(|| (AuthError::Unsigned.to_string(), None))?;
    let bytes = fetch::manifest(t, policy, id)
        .await
        .map_err(|e| (e, None))?;
    let signer = trust
        .verify(policy, id, &bytes, Some(&signature))
        .map_err(|e| (e.to_string(), e.signer()))?;
    let digest = *blake3::hash(&bytes).as_bytes();
    Ok(Authentic {
        bytes,
        signature,
        digest,
        signer,
    })
}

/// The packs an extent list references, read once from the first reachable
/// target listing it and checked against its name.
async fn list_packs(
    states: &[TargetState],
    policy: &PolicyName,
    list: &Hash,
    size: u64,
    cache: &mut HashMap<Hash, PackSet>,
) -> Result<PackSet, String> {
    if let Some(p) = cache.get(list) {
        return Ok(p.clone());
    }
    let mut why = Vec::new();
    for st in states {
        let Ok(v) = &st.view else { continue };
        if !v.lists.contains_key(list) {
            continue;
        }
        match fetch::list(&st.target, policy, list, size).await {
            Ok(l) => {
                let packs: std::collections::BTreeSet<Hash> = l
                    .packs()
                    .into_iter()
                    .filter_map(|p| Hash::new(p).ok())
                    .collect();
                let packs = std::sync::Arc::new(packs);
                cache.insert(list.clone(), packs.clone());
                return Ok(packs);
            }
            Err(e) => why.push(format!("{}: {e}", st.name())),
        }
    }
    if why.is_empty() {
        why.push("on no reachable target".into());
    }
    Err(why.join("; "))
}

/// The packs an extent list references, shared between entries.
type PackSet = std::sync::Arc<std::collections::BTreeSet<Hash>>;

/// List every target (concurrently); one that cannot be listed keeps the
/// error (and it is logged).
async fn list_targets(policy: &PolicyName, targets: &[DynBackend]) -> Vec<TargetState> {
    let views = futures::future::join_all(targets.iter().map(|t| view(t, policy))).await;
    let mut states = Vec::new();
    for (t, v) in targets.iter().zip(views) {
        if let Err(e) = &v {
            tracing::warn!("{e}");
        }
        states.push(TargetState {
            target: t.clone(),
            view: v.map_err(|e| e.to_string()),
            authentic: BTreeMap::new(),
        });
    }
    states
}

/// Read and authenticate every manifest every reachable target lists (16
/// at a time), recording each target's authentic digests. Returns, per id,
/// the copy of highest revision (a repacked snapshot's latest lists; see
/// `ops::repack`), from the first target in policy order that holds it, and
/// the copies that did not authenticate.
async fn authenticate(
    states: &mut [TargetState],
    policy: &PolicyName,
    trust: &Trust,
) -> (BTreeMap<SnapshotId, (usize, Authentic)>, Vec<Damaged>) {
    let jobs: Vec<(usize, SnapshotId, u64)> = states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.view.as_ref().ok().map(|v| (i, v)))
        .flat_map(|(i, v)| {
            v.snapshots
                .iter()
                .map(move |(id, size)| (i, id.clone(), *size))
        })
        .collect();
    let handles: Vec<DynBackend> = states.iter().map(|s| s.target.clone()).collect();
    let mut reads = stream::iter(jobs.into_iter().map(|(i, id, size)| {
        let t = handles[i].clone();
        async move {
            let r = read_authentic(&t, policy, &id, size, trust).await;
            (i, id, r)
        }
    }))
    .buffer_unordered(16);
    let mut first: BTreeMap<SnapshotId, (usize, Authentic)> = BTreeMap::new();
    let mut revisions: BTreeMap<SnapshotId, u32> = BTreeMap::new();
    let mut bad = Vec::new();
    while let Some((i, id, r)) = reads.next().await {
        let tname = states[i].name().to_string();
        match r {
            Ok(a) => {
                states[i].authentic.insert(id.clone(), a.digest);
                let rev = revision(&a.bytes);
                let better = match (first.get(&id), revisions.get(&id)) {
                    (Some((j, _)), Some(&r)) => rev > r || (rev == r && i < *j),
                    _ => true,
                };
                if better {
                    revisions.insert(id.clone(), rev);
                    first.insert(id, (i, a));
                }
            }
            Err((reason, signer)) => {
                tracing::warn!("target {tname}: snapshot {id}: {reason}; not used");
                bad.push(Damaged {
                    target: tname,
                    snapshot: id.to_string(),
                    reason,
                    signer,
                });
            }
        }
    }
    (first, bad)
}

/// The revision an authentic manifest records (0 when it does not parse:
/// it is rejected later anyway).
fn revision(bytes: &[u8]) -> u32 {
    Manifest::parse(bytes).map_or(0, |m| m.revision)
}

/// The extent lists a manifest's sources name (stream and index of each).
fn manifest_lists(m: &Manifest) -> Vec<Hash> {
    m.sources
        .iter()
        .flat_map(|s| s.streams())
        .filter_map(|st| Hash::new(&st.list).ok())
        .collect()
}

/// Every pack the manifest's extent lists reference, and why a list could
/// not be read (the last such error), if one could not.
async fn referenced_packs(
    states: &[TargetState],
    policy: &PolicyName,
    m: &Manifest,
    cache: &mut HashMap<Hash, PackSet>,
) -> (std::collections::BTreeSet<Hash>, Option<String>) {
    let mut packs = std::collections::BTreeSet::new();
    let mut unreadable_list = None;
    for (l, size) in m
        .sources
        .iter()
        .flat_map(|s| s.streams())
        .filter_map(|st| Hash::new(&st.list).ok().map(|h| (h, st.list_size)))
    {
        match list_packs(states, policy, &l, size, cache).await {
            Ok(ps) => packs.extend(ps.iter().cloned()),
            Err(e) => unreadable_list = Some(e),
        }
    }
    (packs, unreadable_list)
}

/// What one snapshot needs on a target to be complete there.
struct Needs<'a> {
    id: &'a SnapshotId,
    /// BLAKE3 of its authenticated manifest.
    digest: &'a [u8; 32],
    lists: &'a [Hash],
    packs: &'a std::collections::BTreeSet<Hash>,
    /// Why an extent list could not be read (its packs are then unknown).
    unreadable: Option<&'a str>,
}

impl Needs<'_> {
    /// How a target listing `v`, whose own authentic manifest for the id has
    /// digest `own`, stands: None without a manifest for the id, else
    /// complete (Ok) or why not (Err).
    fn judge(&self, v: &TargetView, own: Option<&[u8; 32]>) -> Option<Result<(), String>> {
        if !v.snapshots.contains_key(self.id) {
            return None;
        }
        Some(match own {
            None => Err("manifest not authentic (see the warnings)".to_string()),
            Some(d) if d != self.digest => {
                Err("holds a different signed manifest for this id".to_string())
            }
            Some(_) => {
                let missing = v.missing_parts(self.lists, self.packs);
                if let Some(why) = self.unreadable {
                    Err(format!("extent list unreadable: {why}"))
                } else if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {}", missing.join(", ")))
                }
            }
        })
    }
}

/// The reachable targets (policy order) on which a snapshot is complete, and
/// those holding its id without being complete, with why.
fn placement(states: &[TargetState], needs: &Needs) -> (Vec<String>, Vec<(String, String)>) {
    let mut complete_on = Vec::new();
    let mut incomplete_on = Vec::new();
    for st in states {
        let Ok(v) = &st.view else { continue };
        match needs.judge(v, st.authentic.get(needs.id)) {
            None => {}
            Some(Ok(())) => complete_on.push(st.name().to_string()),
            Some(Err(why)) => incomplete_on.push((st.name().to_string(), why)),
        }
    }
    (complete_on, incomplete_on)
}

impl Catalog {
    /// List every target, read and authenticate every manifest on each (each
    /// target is judged by its own copies), and merge what authenticated.
    pub async fn load(policy: &PolicyName, targets: &[DynBackend], trust: &Trust) -> Catalog {
        let mut states = list_targets(policy, targets).await;
        let (first, mut bad) = authenticate(&mut states, policy, trust).await;
        let mut entries = Vec::new();
        let mut list_cache = HashMap::new();
        for (id, (_, a)) in first {
            let merged =
                Self::merge_entry(&mut states, &mut bad, policy, id, a, &mut list_cache).await;
            entries.extend(merged);
        }
        entries.sort_by(|a, b| {
            a.manifest
                .time
                .cmp(&b.manifest.time)
                .then_with(|| a.id.cmp(&b.id))
        });
        bad.sort_by(|a, b| (&a.target, &a.snapshot).cmp(&(&b.target, &b.snapshot)));
        Catalog {
            policy: policy.clone(),
            entries,
            targets: states,
            bad_manifests: bad,
            trust_empty: trust.is_empty(),
        }
    }

    /// One snapshot's entry from its first authentic copy `a`: the manifest
    /// parsed (None, and the copy rejected, when it is unusable), its lists
    /// and packs read, and every target judged.
    async fn merge_entry(
        states: &mut [TargetState],
        bad: &mut Vec<Damaged>,
        policy: &PolicyName,
        id: SnapshotId,
        a: Authentic,
        cache: &mut HashMap<Hash, PackSet>,
    ) -> Option<Entry> {
        let digest = a.digest;
        let m = Self::parse_manifest(states, bad, policy, &id, &a)?;
        let lists = manifest_lists(&m);
        let (packs, unreadable_list) = referenced_packs(states, policy, &m, cache).await;
        let needs = Needs {
            id: &id,
            digest: &digest,
            lists: &lists,
            packs: &packs,
            unreadable: unreadable_list.as_deref(),
        };
        let (complete_on, incomplete_on) = placement(states, &needs);
        Some(Entry {
            id,
            manifest: m,
            digest,
            signer: a.signer,
            lists,
            packs: std::sync::Arc::new(packs),
            packs_known: unreadable_list.is_none(),
            complete_on,
            incomplete_on,
        })
    }

    /// Parse an authentic manifest; one that is invalid or names another
    /// snapshot or policy is rejected on every target holding it (None).
    fn parse_manifest(
        states: &mut [TargetState],
        bad: &mut Vec<Damaged>,
        policy: &PolicyName,
        id: &SnapshotId,
        a: &Authentic,
    ) -> Option<Manifest> {
        let why = match Manifest::parse(&a.bytes) {
            Ok(m) if m.id == id.as_str() && m.policy == policy.as_str() => return Some(m),
            Ok(_) => "signed manifest names another snapshot or policy".to_string(),
            Err(e) => format!("signed but invalid: {e}"),
        };
        Self::reject(states, bad, id, &a.digest, &why);
        None
    }

    /// A signed manifest that is nevertheless unusable: no target holds it.
    fn reject(
        states: &mut [TargetState],
        bad: &mut Vec<Damaged>,
        id: &SnapshotId,
        digest: &[u8; 32],
        reason: &str,
    ) {
        for st in states.iter_mut() {
            if st.authentic.get(id) == Some(digest) {
                st.authentic.remove(id);
                tracing::warn!("target {}: snapshot {id}: {reason}; not used", st.name());
                bad.push(Damaged {
                    target: st.name().to_string(),
                    snapshot: id.to_string(),
                    reason: reason.to_string(),
                    signer: None,
                });
            }
        }
    }

    /// A machine that trusts no key cannot tell genuine snapshots from
    /// planted ones. When signed snapshots were found, say which keys signed
    /// them on which target and the line that pins them (exit 2).
    pub fn require_trust(&self) -> Result<(), crate::error::Error> {
        if !self.trust_empty {
            return Ok(());
        }
        let mut by_target: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
        for d in &self.bad_manifests {
            if let Some(k) = d.signer {
                by_target
                    .entry(&d.target)
                    .or_default()
                    .insert(k.to_string());
            }
        }
        if by_target.is_empty() {
            return Ok(());
        }
        let keys: std::collections::BTreeSet<&String> = by_target.values().flatten().collect();
        let found = by_target
            .iter()
            .map(|(t, ks)| {
                format!(
                    "target {t}: signed by {}",
                    ks.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let line = format!(
            "trusted_keys = [{}]",
            keys.iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Err(crate::error::Error::usage(format!(
            "policy {}: this machine trusts no signing key, so no snapshot can be authenticated ({found}). \
             If these are your backup host's keys (compare with `backupctl key fingerprint` there), \
             add to backupctl.toml: {line}  — or pass --trust {} for this run",
            self.policy,
            keys.iter().next().expect("a key")
        )))
    }

    /// "latest"/None, an exact id, or a unique id prefix. Not found is a
    /// failure (exit 1); an ambiguous prefix a usage error (exit 2).
    pub fn resolve(&self, spec: Option<&str>) -> Result<&Entry, crate::error::Error> {
        match spec {
            None | Some("latest") => self
                .entries
                .iter()
                .rev()
                .find(|e| !e.complete_on.is_empty())
                .ok_or_else(|| {
                    crate::error::Error::failure(format!(
                        "policy {}: no complete snapshot on any reachable target",
                        self.policy
                    ))
                }),
            Some(s) => {
                if let Some(e) = self.entries.iter().find(|e| e.id == *s) {
                    return Ok(e);
                }
                let matches: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| e.id.starts_with(s))
                    .collect();
                match matches.len() {
                    1 => Ok(matches[0]),
                    0 => Err(crate::error::Error::failure(format!(
                        "policy {}: no snapshot {s:?} on any reachable target",
                        self.policy
                    ))),
                    n => Err(crate::error::Error::usage(format!(
                        "policy {}: {s:?} matches {n} snapshots ({}); give more of the id",
                        self.policy,
                        matches
                            .iter()
                            .take(5)
                            .map(|e| e.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    /// The targets that could not be listed: (target, error).
    pub fn unreachable(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|s| {
                s.view
                    .as_ref()
                    .err()
                    .map(|e| (s.name().to_string(), e.clone()))
            })
            .collect()
    }

    /// The targets that could be listed, in policy order.
    pub fn reachable(&self) -> impl Iterator<Item = &TargetState> {
        self.targets.iter().filter(|s| s.is_reachable())
    }

    /// How `st` stands toward snapshot `e`.
    pub fn holding<'a>(&'a self, st: &'a TargetState, e: &Entry) -> Holding<'a> {
        let view = match &st.view {
            Ok(v) => v,
            Err(err) => return Holding::Unreachable(err),
        };
        if st.holds(e) {
            return Holding::Holds;
        }
        if !view.snapshots.contains_key(&e.id) {
            return Holding::Absent;
        }
        Holding::NotUsed(
            self.bad_manifests
                .iter()
                .find(|d| d.target == st.name() && d.snapshot == e.id.as_str()),
        )
    }

    /// Indices of the entries `st` holds authentically (its own manifests).
    pub fn held_by(&self, st: &TargetState) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| st.holds(&self.entries[i]))
            .collect()
    }

    /// The reachable targets on which `e` is complete, in policy order:
    /// where a copy of it can come from.
    pub fn complete_sources(&self, e: &Entry) -> Vec<&DynBackend> {
        self.reachable()
            .filter(|s| e.is_complete_on(s.name()))
            .map(|s| &s.target)
            .collect()
    }

    /// The reachable targets on which `e` is not complete, in policy order.
    pub fn lacking(&self, e: &Entry) -> Vec<&DynBackend> {
        self.reachable()
            .filter(|s| !e.is_complete_on(s.name()))
            .map(|s| &s.target)
            .collect()
    }

    /// Per pack that an authentic snapshot references, the targets (in
    /// policy order) on which such a snapshot is complete: where the pack
    /// can be copied from.
    pub fn pack_holders(&self) -> HashMap<Hash, Vec<DynBackend>> {
        let mut holders: HashMap<Hash, Vec<DynBackend>> = HashMap::new();
        for st in self.reachable() {
            for e in self.entries.iter().filter(|e| e.is_complete_on(st.name())) {
                for p in e.packs.iter() {
                    let h = holders.entry(p.clone()).or_default();
                    if !h.iter().any(|t| t.name() == st.name()) {
                        h.push(st.target.clone());
                    }
                }
            }
        }
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectKey;

    fn obj(key: &str, size: u64) -> ObjectInfo {
        ObjectInfo {
            key: ObjectKey::new(key).unwrap(),
            size,
        }
    }

    /// A listing is the target's word: keys outside `<policy>/` (shorter
    /// than the prefix, ending inside a multi-byte character where the
    /// prefix would end, or another policy's) are not this policy's. The
    /// v1 reader sliced every key at the prefix length and panicked (found
    /// with the manifest fuzz target).
    #[test]
    fn listing_keys_outside_the_policy_prefix_are_ignored() {
        let id = "20260101T000000Z-0123abcd";
        let hash = "ab".repeat(32);
        let shop = PolicyName::new("shop").unwrap();
        let v = TargetView::from_listing(
            &shop,
            vec![
                obj("x", 1),
                obj("shoéé/snapshots/x.json", 2),
                obj(&format!("blog/snapshots/{id}.json"), 3),
                obj(&format!("shop/snapshots/{id}.json"), 4),
                obj(&format!("shop/packs/ab/{hash}.pack"), 5),
                obj(&format!("shop/packs/cd/{hash}.pack"), 6),
                obj(&format!("shop/lists/{hash}.extents"), 7),
                obj("shop/stray", 8),
            ],
        );
        let ids: Vec<&str> = v.snapshots.keys().map(|i| i.as_str()).collect();
        assert_eq!(ids, [id]);
        assert_eq!(v.packs.len(), 1);
        assert_eq!(v.packs.values().next(), Some(&5));
        assert_eq!(v.lists.values().next(), Some(&7));
        assert_eq!(v.others.len(), 5);
    }

    /// A target is complete for a snapshot only with its own copy of the
    /// same authentic manifest, every list readable and every list and pack
    /// listed; otherwise it says why.
    #[test]
    fn a_target_is_judged_by_its_own_manifest_lists_and_packs() {
        let id = SnapshotId::new("20260101T000000Z-0123abcd").unwrap();
        let (list, pack, gone) = ("ab".repeat(32), "cd".repeat(32), "ef".repeat(32));
        let shop = PolicyName::new("shop").unwrap();
        let v = TargetView::from_listing(
            &shop,
            vec![
                obj(&format!("shop/snapshots/{id}.json"), 4),
                obj(&format!("shop/packs/cd/{pack}.pack"), 5),
                obj(&format!("shop/lists/{list}.extents"), 7),
            ],
        );
        let lists = [Hash::new(&list).unwrap()];
        let packs: std::collections::BTreeSet<Hash> = [Hash::new(&pack).unwrap()].into();
        let mut more = packs.clone();
        more.insert(Hash::new(&gone).unwrap());
        let (digest, other) = ([1u8; 32], [2u8; 32]);
        let needs = |packs, unreadable| Needs {
            id: &id,
            digest: &digest,
            lists: &lists,
            packs,
            unreadable,
        };
        assert_eq!(needs(&packs, None).judge(&v, Some(&digest)), Some(Ok(())));
        assert_eq!(
            needs(&packs, None).judge(&v, None),
            Some(Err("manifest not authentic (see the warnings)".into()))
        );
        assert_eq!(
            needs(&packs, None).judge(&v, Some(&other)),
            Some(Err("holds a different signed manifest for this id".into()))
        );
        assert_eq!(
            needs(&packs, Some("gone")).judge(&v, Some(&digest)),
            Some(Err("extent list unreadable: gone".into()))
        );
        assert_eq!(
            needs(&more, None).judge(&v, Some(&digest)),
            Some(Err("missing 1 pack(s)".into()))
        );
        let empty = TargetView::default();
        assert_eq!(needs(&more, None).judge(&empty, Some(&digest)), None);
        assert_eq!(
            empty.missing_parts(&lists, &more),
            ["1 extent list(s)", "2 pack(s)"]
        );
    }
}
