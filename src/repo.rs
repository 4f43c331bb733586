//! The layout of snapshots on one target, and a catalog merging what all
//! targets hold.
//!
//! ```text
//! <root>/RESTORE-README.txt                   how to restore by hand
//! <root>/<policy>/archives/<blake3>.tar.zst   one per source version
//! <root>/<policy>/archives/<blake3>.b3sums    per-file hashes, b3sum --check format
//! <root>/<policy>/snapshots/<id>.sig          its signature (written just before)
//! <root>/<policy>/snapshots/<id>.json         the manifest, written last
//! ```
//! A snapshot is *complete* on a target when its authenticated manifest (see
//! [`crate::trust`]) and every archive it names (with the recorded size) are
//! there. Each target is judged by its own copies: a manifest one target
//! serves never vouches for another target's.

use crate::archive::Manifest;
use crate::target::{DynTarget, TargetError};
use crate::trust::{AuthError, PublicKey, Trust};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap};

pub const RESTORE_FILE: &str = "RESTORE-README.txt";

pub fn manifest_key(policy: &str, id: &str) -> String {
    format!("{policy}/snapshots/{id}.json")
}

pub fn archive_key(policy: &str, hash: &str) -> String {
    format!("{policy}/archives/{hash}.tar.zst")
}

pub fn b3sums_key(policy: &str, hash: &str) -> String {
    format!("{policy}/archives/{hash}.b3sums")
}

pub fn signature_key(policy: &str, id: &str) -> String {
    format!("{policy}/snapshots/{id}.sig")
}

/// Manifests above this size are refused unread (see
/// [`crate::archive::manifest::MAX_MANIFEST_BYTES`]).
pub const MAX_MANIFEST_BYTES: u64 = crate::archive::manifest::MAX_MANIFEST_BYTES as u64;

/// Is `s` a snapshot id as `run` makes them (`YYYYMMDDTHHMMSSZ-xxxxxxxx`)?
pub fn is_snapshot_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// What one target holds for one policy (one listing call).
#[derive(Debug, Default, Clone)]
pub struct TargetView {
    /// Snapshot ids with a manifest (names that are not snapshot ids are
    /// ignored: they are never used to build a key or printed raw).
    pub snapshots: Vec<String>,
    /// archive hash -> size
    pub archives: HashMap<String, u64>,
    /// other keys (b3sums, signatures, stray files) -> size
    pub others: HashMap<String, u64>,
    /// manifest sizes by id
    pub manifest_sizes: HashMap<String, u64>,
}

impl TargetView {
    /// Is every archive of `m` present with its recorded size?
    pub fn missing_archives(&self, m: &Manifest) -> Vec<String> {
        m.sources
            .iter()
            .filter(|s| self.archives.get(&s.archive_hash) != Some(&s.archive_size))
            .map(|s| format!("{} ({})", s.name, &s.archive_hash[..12]))
            .collect()
    }
}

pub async fn view(t: &DynTarget, policy: &str) -> Result<TargetView, TargetError> {
    let prefix = format!("{policy}/");
    let mut v = TargetView::default();
    for o in t.list(&prefix).await? {
        let rest = &o.key[prefix.len()..];
        if let Some(id) = rest
            .strip_prefix("snapshots/")
            .and_then(|r| r.strip_suffix(".json"))
        {
            if is_snapshot_id(id) {
                v.snapshots.push(id.to_string());
                v.manifest_sizes.insert(id.to_string(), o.size);
                continue;
            }
        }
        if let Some(h) = rest
            .strip_prefix("archives/")
            .and_then(|r| r.strip_suffix(".tar.zst"))
        {
            if crate::archive::manifest::is_hash(h) {
                v.archives.insert(h.to_string(), o.size);
                continue;
            }
        }
        v.others.insert(o.key.clone(), o.size);
    }
    v.snapshots.sort();
    Ok(v)
}

/// One snapshot, merged across targets.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest: Manifest,
    /// BLAKE3 of the authenticated manifest bytes.
    pub digest: [u8; 32],
    /// Who signed it.
    pub signer: PublicKey,
    /// Targets (policy order) where the snapshot is complete.
    pub complete_on: Vec<String>,
    /// Targets holding the manifest but missing archives, with what is missing.
    pub incomplete_on: Vec<(String, String)>,
}

/// Per target: its view, or why it could not be listed, and which of its
/// manifests authenticated.
pub struct TargetState {
    pub target: DynTarget,
    pub view: Result<TargetView, String>,
    /// Snapshot id -> BLAKE3 of this target's own authenticated manifest.
    pub authentic: BTreeMap<String, [u8; 32]>,
}

impl TargetState {
    /// Does this target hold `e`'s own authenticated manifest?
    pub fn holds(&self, e: &Entry) -> bool {
        self.authentic.get(&e.manifest.id) == Some(&e.digest)
    }
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
    pub policy: String,
    /// Authenticated snapshots, oldest first (by instant, then id).
    pub entries: Vec<Entry>,
    pub targets: Vec<TargetState>,
    /// Manifests that are not used, per target (never restored, copied or
    /// counted by prune; they block archive deletion on their target).
    pub bad_manifests: Vec<Damaged>,
    /// Whether any trusted key was configured for this load.
    pub trust_empty: bool,
}

/// Read one manifest and its signature from `t`, bounded, and authenticate
/// it; Ok carries the bytes, their digest and the signer.
pub async fn read_authentic(
    t: &DynTarget,
    policy: &str,
    id: &str,
    size: u64,
    trust: &Trust,
) -> Result<(Vec<u8>, [u8; 32], PublicKey), (String, Option<PublicKey>)> {
    // `size` is the listed size (0: not listed; the read is bounded anyway).
    if size > MAX_MANIFEST_BYTES {
        let e = crate::archive::manifest::check_size(size as usize).unwrap_err();
        return Err((e, None));
    }
    let sig = match crate::target::get_limited(
        t,
        &signature_key(policy, id),
        crate::trust::MAX_SIGNATURE_BYTES as u64,
    )
    .await
    {
        Ok(b) => Some(b),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err((format!("reading the signature: {e}"), None)),
    };
    if sig.is_none() {
        return Err((AuthError::Unsigned.to_string(), None));
    }
    let bytes = crate::target::get_limited(t, &manifest_key(policy, id), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| (e.to_string(), None))?;
    let signer = trust
        .verify(policy, id, &bytes, sig.as_deref())
        .map_err(|e| (e.to_string(), e.signer()))?;
    let digest = *blake3::hash(&bytes).as_bytes();
    Ok((bytes, digest, signer))
}

impl Catalog {
    /// List every target, read and authenticate every manifest on each (each
    /// target is judged by its own copies), and merge what authenticated.
    pub async fn load(policy: &str, targets: &[DynTarget], trust: &Trust) -> Catalog {
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
        let jobs: Vec<(usize, String, u64)> = states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.view.as_ref().ok().map(|v| (i, v)))
            .flat_map(|(i, v)| {
                v.snapshots.iter().map(move |id| {
                    (
                        i,
                        id.clone(),
                        v.manifest_sizes.get(id).copied().unwrap_or(0),
                    )
                })
            })
            .collect();
        let handles: Vec<DynTarget> = states.iter().map(|s| s.target.clone()).collect();
        let mut reads = stream::iter(jobs.into_iter().map(|(i, id, size)| {
            let t = handles[i].clone();
            async move {
                let r = read_authentic(&t, policy, &id, size, trust).await;
                (i, id, r)
            }
        }))
        .buffer_unordered(16);
        // Per id: the copy of the first target (policy order) that
        // authenticated; per target: which digest it holds.
        let mut first: BTreeMap<String, (usize, Vec<u8>, [u8; 32], PublicKey)> = BTreeMap::new();
        let mut bad = Vec::new();
        while let Some((i, id, r)) = reads.next().await {
            let tname = states[i].target.name().to_string();
            match r {
                Ok((bytes, digest, signer)) => {
                    states[i].authentic.insert(id.clone(), digest);
                    let better = first.get(&id).is_none_or(|(j, ..)| i < *j);
                    if better {
                        first.insert(id, (i, bytes, digest, signer));
                    }
                }
                Err((reason, signer)) => {
                    tracing::warn!("target {tname}: snapshot {id}: {reason}; not used");
                    bad.push(Damaged {
                        target: tname,
                        snapshot: id,
                        reason,
                        signer,
                    });
                }
            }
        }
        drop(reads);

        let mut entries = Vec::new();
        for (id, (_, bytes, digest, signer)) in first {
            let m = match Manifest::parse(&bytes) {
                Ok(m) if m.id == id && m.policy == policy => m,
                Ok(_) => {
                    Self::reject(
                        &mut states,
                        &mut bad,
                        &id,
                        &digest,
                        "signed manifest names another snapshot or policy",
                    );
                    continue;
                }
                Err(e) => {
                    Self::reject(
                        &mut states,
                        &mut bad,
                        &id,
                        &digest,
                        &format!("signed but invalid: {e}"),
                    );
                    continue;
                }
            };
            let mut complete_on = Vec::new();
            let mut incomplete_on = Vec::new();
            for st in &states {
                let Ok(v) = &st.view else { continue };
                if !v.snapshots.contains(&id) {
                    continue;
                }
                let name = st.target.name().to_string();
                match st.authentic.get(&id) {
                    None => incomplete_on.push((
                        name,
                        "manifest not authentic (see the warnings)".to_string(),
                    )),
                    Some(d) if *d != digest => incomplete_on.push((
                        name,
                        "holds a different signed manifest for this id".to_string(),
                    )),
                    Some(_) => {
                        let missing = v.missing_archives(&m);
                        if missing.is_empty() {
                            complete_on.push(name);
                        } else {
                            incomplete_on
                                .push((name, format!("missing archives: {}", missing.join(", "))));
                        }
                    }
                }
            }
            entries.push(Entry {
                manifest: m,
                digest,
                signer,
                complete_on,
                incomplete_on,
            });
        }
        entries.sort_by(|a, b| {
            a.manifest
                .time
                .cmp(&b.manifest.time)
                .then_with(|| a.manifest.id.cmp(&b.manifest.id))
        });
        bad.sort_by(|a, b| (&a.target, &a.snapshot).cmp(&(&b.target, &b.snapshot)));
        Catalog {
            policy: policy.to_string(),
            entries,
            targets: states,
            bad_manifests: bad,
            trust_empty: trust.is_empty(),
        }
    }

    /// A signed manifest that is nevertheless unusable: no target holds it.
    fn reject(
        states: &mut [TargetState],
        bad: &mut Vec<Damaged>,
        id: &str,
        digest: &[u8; 32],
        reason: &str,
    ) {
        for st in states.iter_mut() {
            if st.authentic.get(id) == Some(digest) {
                st.authentic.remove(id);
                tracing::warn!(
                    "target {}: snapshot {id}: {reason}; not used",
                    st.target.name()
                );
                bad.push(Damaged {
                    target: st.target.name().to_string(),
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
    pub fn require_trust(&self) -> Result<(), crate::error::CodedError> {
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
        Err(crate::error::CodedError::usage(format!(
            "policy {}: this machine trusts no signing key, so no snapshot can be authenticated ({found}). \
             If these are your backup host's keys (compare with `backupctl key fingerprint` there), \
             add to backupctl.toml: {line}  — or pass --trust {} for this run",
            self.policy,
            keys.iter().next().expect("a key")
        )))
    }

    /// "latest"/None, an exact id, or a unique id prefix. Not found is a
    /// failure (exit 1); an ambiguous prefix a usage error (exit 2).
    pub fn resolve(&self, spec: Option<&str>) -> Result<&Entry, crate::error::CodedError> {
        use crate::error::CodedError;
        match spec {
            None | Some("latest") => self
                .entries
                .iter()
                .rev()
                .find(|e| !e.complete_on.is_empty())
                .ok_or_else(|| {
                    CodedError::failure(format!(
                        "policy {}: no complete snapshot on any reachable target",
                        self.policy
                    ))
                }),
            Some(s) => {
                if let Some(e) = self.entries.iter().find(|e| e.manifest.id == s) {
                    return Ok(e);
                }
                let matches: Vec<&Entry> = self
                    .entries
                    .iter()
                    .filter(|e| e.manifest.id.starts_with(s))
                    .collect();
                match matches.len() {
                    1 => Ok(matches[0]),
                    0 => Err(CodedError::failure(format!(
                        "policy {}: no snapshot {s:?} on any reachable target",
                        self.policy
                    ))),
                    n => Err(CodedError::usage(format!(
                        "policy {}: {s:?} matches {n} snapshots ({}); give more of the id",
                        self.policy,
                        matches
                            .iter()
                            .take(5)
                            .map(|e| e.manifest.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    pub fn unreachable(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|s| {
                s.view
                    .as_ref()
                    .err()
                    .map(|e| (s.target.name().to_string(), e.clone()))
            })
            .collect()
    }
}

/// Make snapshot `id` visible on `t`, once every archive it names is there:
/// the restore instructions, then the signature, then the manifest last (a
/// crash before the manifest leaves no snapshot). `run` and `sync` both
/// commit through here.
pub async fn commit_snapshot(
    t: &DynTarget,
    policy: &str,
    id: &str,
    manifest: &[u8],
    signature: &[u8],
) -> Result<(), TargetError> {
    t.put_bytes(RESTORE_FILE, restore_instructions().into_bytes())
        .await?;
    t.put_bytes(&signature_key(policy, id), signature.to_vec())
        .await?;
    t.put_bytes(&manifest_key(policy, id), manifest.to_vec())
        .await
}

/// The plain-text restore instructions stored at each target's root.
pub fn restore_instructions() -> String {
    format!(
        r#"HOW TO RESTORE THESE BACKUPS BY HAND (without backupctl)
==========================================================

Written by backupctl {version}. Everything needed to restore is in this
directory (or bucket prefix); no local state from the backed-up machine is needed.

Layout
------
  <policy>/snapshots/<snapshot-id>.json    one manifest per snapshot (JSON):
                                           time, host, and per source its archive
                                           hash and the BLAKE3 of every file
  <policy>/snapshots/<snapshot-id>.sig     its Ed25519 signature by the backup
                                           host's key (backupctl refuses manifests
                                           that are unsigned or signed by a key it
                                           does not trust; a manual restore can
                                           skip it)
  <policy>/archives/<hash>.tar.zst         one plain tar archive, zstd-compressed,
                                           per source and version; <hash> is the
                                           BLAKE3 of the .tar.zst file itself
  <policy>/archives/<hash>.b3sums          BLAKE3 of every file in that archive,
                                           in `b3sum --check` format

Snapshot ids start with the UTC time they were taken (YYYYMMDDTHHMMSSZ), so the
newest manifest sorts last.

Steps (tools: zstd, tar, b3sum; Debian/Ubuntu: apt-get install zstd tar b3sum)
-----
1. Pick a snapshot and find the archive of the source you need:
     ls <policy>/snapshots/
     grep -E '"name"|"archive_hash"' <policy>/snapshots/<snapshot-id>.json
   (each source block lists "name" and then its "archive_hash").

2. Check the archive is intact; the printed hash must equal the file name:
     b3sum <policy>/archives/<hash>.tar.zst

3. Unpack it into an empty directory:
     mkdir -p /restore/<source>
     zstd -d -c <policy>/archives/<hash>.tar.zst | tar -xpf - -C /restore/<source>
   (add --numeric-owner when running as root to restore ownership).

4. Check every file against its recorded BLAKE3:
     cd /restore/<source> && b3sum --check /path/to/<policy>/archives/<hash>.b3sums
   (b3sum cannot check names that are not valid UTF-8: they are left out of
   .b3sums; the manifest lists them with "path_b64", their exact bytes in base64.)

Database sources hold dump files: PostgreSQL custom-format dumps (*.pgdump) load
with pg_restore, plain dumps (*.sql) with psql or mysql, SQLite files (*.db)
open directly. A large dump may be split into parts NAME.part-000001,
NAME.part-000002, ...: concatenate them in order (cat NAME.part-* > NAME).

Snapshot manifests are written last: a snapshot whose manifest exists here is
complete on this target. backupctl-target.json at the root only marks this as a
backupctl target.
"#,
        version = env!("CARGO_PKG_VERSION")
    )
}
