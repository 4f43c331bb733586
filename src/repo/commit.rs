//! Making a snapshot visible on a target, once every archive it names is
//! there: the one commit sequence `run` and `sync` both use.
//!
//! Order: each archive's `.b3sums` (unless already there with the same
//! size), the restore instructions, the signature, and the manifest last,
//! so a crash at any point leaves no snapshot (and every earlier one
//! intact). Not here: delivering the archives themselves (`run` writes them
//! through [`crate::storage::Upload`], `sync` copies them).

use super::layout::{Hash, InvalidName, Key, PolicyName, SnapshotId};
use crate::archive::Manifest;
use crate::storage::{DynBackend, ObjectKey, StorageResult};

/// Everything written to commit one snapshot, prepared once for all targets.
pub struct Commit {
    pub id: SnapshotId,
    b3sums: Vec<(ObjectKey, Vec<u8>)>,
    signature: (ObjectKey, Vec<u8>),
    manifest: (ObjectKey, Vec<u8>),
}

impl Commit {
    /// `json`: the manifest's exact bytes (as signed); `signature`: its
    /// signature file.
    pub fn new(m: &Manifest, json: Vec<u8>, signature: Vec<u8>) -> Result<Commit, InvalidName> {
        let policy = PolicyName::new(&m.policy)?;
        let id = SnapshotId::new(&m.id)?;
        let mut b3sums = Vec::new();
        for rec in &m.sources {
            let key = Key::B3sums {
                policy: policy.clone(),
                hash: Hash::new(&rec.archive_hash)?,
            };
            b3sums.push((
                key.object(),
                crate::archive::manifest::b3sums(&rec.files).into_bytes(),
            ));
        }
        let signature_key = Key::Signature {
            policy: policy.clone(),
            id: id.clone(),
        };
        let manifest_key = Key::Manifest {
            policy,
            id: id.clone(),
        };
        Ok(Commit {
            id,
            b3sums,
            signature: (signature_key.object(), signature),
            manifest: (manifest_key.object(), json),
        })
    }

    /// Write the snapshot's small objects to `t`, manifest last.
    pub async fn apply(&self, t: &DynBackend) -> StorageResult<()> {
        for (key, sums) in &self.b3sums {
            if t.stat(key).await? != Some(sums.len() as u64) {
                t.put_bytes(key, sums.clone()).await?;
            }
        }
        t.put_bytes(
            &Key::RestoreReadme.object(),
            super::readme::restore_instructions().into_bytes(),
        )
        .await?;
        t.put_bytes(&self.signature.0, self.signature.1.clone())
            .await?;
        t.put_bytes(&self.manifest.0, self.manifest.1.clone()).await
    }
}
