//! Making a snapshot visible on a target, once every pack it references is
//! there: the one commit sequence `run`, `sync` and repacking use.
//!
//! Order: each extent list (unless already there with the same size), the
//! restore instructions, the signature, and the manifest last, so a crash at
//! any point leaves no snapshot (and every earlier one intact). Not here:
//! the packs themselves (`run` uploads them as they fill, `sync` and the
//! catch-up copy them with [`super::transfer`]).

use super::layout::{Hash, InvalidName, Key, PolicyName, SnapshotId};
use crate::archive::Manifest;
use crate::storage::{DynBackend, ObjectKey, StorageResult};

/// Everything written to commit one snapshot, prepared once for all targets.
pub struct Commit {
    pub id: SnapshotId,
    lists: Vec<(ObjectKey, Vec<u8>)>,
    signature: (ObjectKey, Vec<u8>),
    manifest: (ObjectKey, Vec<u8>),
}

impl Commit {
    /// `json`: the manifest's exact bytes (as signed); `signature`: its
    /// signature file; `lists`: the text of every extent list it names,
    /// by hash (checked here against the hash).
    pub fn new(
        m: &Manifest,
        json: Vec<u8>,
        signature: Vec<u8>,
        lists: Vec<(Hash, Vec<u8>)>,
    ) -> Result<Commit, InvalidName> {
        let policy = PolicyName::new(&m.policy)?;
        let id = SnapshotId::new(&m.id)?;
        let mut objects = Vec::new();
        for (hash, text) in lists {
            debug_assert_eq!(Hash::of(&blake3::hash(&text)), hash);
            let key = Key::List {
                policy: policy.clone(),
                hash,
            };
            objects.push((key.object(), text));
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
            lists: objects,
            signature: (signature_key.object(), signature),
            manifest: (manifest_key.object(), json),
        })
    }

    /// Write the snapshot's small objects to `t`, manifest last.
    pub async fn apply(&self, t: &DynBackend) -> StorageResult<()> {
        self.put_lists(t).await?;
        t.put_bytes(&self.signature.0, self.signature.1.clone())
            .await?;
        t.put_bytes(&self.manifest.0, self.manifest.1.clone()).await
    }

    /// Replace the snapshot's manifest on `t` by this one (repacking: same
    /// snapshot, new extent lists): the lists, then `bridge` (a signature
    /// file covering both the manifest in place and this one, see
    /// [`crate::trust::HostKey::sign_manifest_keeping`]), the manifest, and
    /// its own signature last. Whichever manifest a crash leaves in place
    /// authenticates, and its lists are there.
    pub async fn replace(&self, t: &DynBackend, bridge: Vec<u8>) -> StorageResult<()> {
        self.put_lists(t).await?;
        t.put_bytes(&self.signature.0, bridge).await?;
        t.put_bytes(&self.manifest.0, self.manifest.1.clone())
            .await?;
        t.put_bytes(&self.signature.0, self.signature.1.clone())
            .await
    }

    /// The extent lists (unless already there with the same size) and the
    /// restore instructions.
    async fn put_lists(&self, t: &DynBackend) -> StorageResult<()> {
        for (key, text) in &self.lists {
            if t.stat(key).await? != Some(text.len() as u64) {
                t.put_bytes(key, text.clone()).await?;
            }
        }
        t.put_bytes(
            &Key::RestoreReadme.object(),
            super::readme::restore_instructions().into_bytes(),
        )
        .await
    }
}
