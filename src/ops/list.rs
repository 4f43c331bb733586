//! `backupctl list`: snapshots merged across a policy's targets, with the
//! targets on which each is complete, and which snapshots lack source files
//! that could not be read (marked `[incomplete: N unreadable]`; `--json`
//! names them per source in `unreadable`).

use crate::config::{Config, Policy};
use crate::repo::Catalog;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ListedSource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// BLAKE3 of the uncompressed tar stream.
    pub archive_hash: String,
    /// Compressed bytes of the tar stream's chunks (shared with other
    /// snapshots where unchanged).
    pub archive_size: u64,
    /// The tar stream's extent list (under `<policy>/lists/`).
    pub extents: String,
    pub content_size: u64,
    pub files: usize,
    pub entries: u64,
    /// Entries that could not be read when the snapshot was taken (relative
    /// paths; directories end in `/`): not in the snapshot.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ListedSnapshot {
    pub policy: String,
    pub id: String,
    pub time: String,
    pub host: String,
    pub sources: Vec<ListedSource>,
    /// Compressed bytes the snapshot references (tar streams and file
    /// indexes; chunks shared with other snapshots count in each).
    pub archive_size: u64,
    pub content_size: u64,
    /// Targets where the snapshot is complete (policy order).
    pub targets: Vec<String>,
    /// Targets that hold it only partly, with what is missing.
    pub incomplete: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub name: String,
    pub location: String,
    pub reachable: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyListing {
    pub policy: String,
    pub targets: Vec<TargetStatus>,
    pub snapshots: Vec<ListedSnapshot>,
    /// Manifests a target serves that are not used (unsigned, untrusted,
    /// altered, unreadable): never listed as snapshots.
    pub damaged: Vec<crate::repo::Damaged>,
}

pub async fn list_policy(cfg: &Config, policy: &Policy) -> crate::error::Result<PolicyListing> {
    let catalog = crate::ops::load_catalog(cfg, policy, None).await?;
    Ok(listing(&catalog))
}

pub fn listing(catalog: &Catalog) -> PolicyListing {
    let snapshots = catalog
        .entries
        .iter()
        .map(|e| {
            let m = &e.manifest;
            ListedSnapshot {
                policy: m.policy.clone(),
                id: m.id.clone(),
                time: m.time.to_rfc3339(),
                host: m.host.clone(),
                sources: m
                    .sources
                    .iter()
                    .map(|s| ListedSource {
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        archive_hash: s.stream.blake3.clone(),
                        archive_size: s.stream.stored,
                        extents: format!("{}.extents", s.stream.list),
                        content_size: s.content_size,
                        files: s.files as usize,
                        entries: s.entries,
                        unreadable: s.unreadable.clone(),
                    })
                    .collect(),
                archive_size: m.total_stored(),
                content_size: m.total_content_size(),
                targets: e.complete_on.clone(),
                incomplete: e.incomplete_on.clone(),
            }
        })
        .collect();
    PolicyListing {
        policy: catalog.policy.to_string(),
        targets: catalog
            .targets
            .iter()
            .map(|s| TargetStatus {
                name: s.target.name().to_string(),
                location: s.target.location().to_string(),
                reachable: s.is_reachable(),
                error: s.view.as_ref().err().cloned(),
            })
            .collect(),
        snapshots,
        damaged: catalog.bad_manifests.clone(),
    }
}

impl crate::ops::Coded for PolicyListing {
    /// Failure (1) when a target serves damaged manifests, partial (3) when
    /// a target could not be listed.
    fn exit_code(&self) -> crate::error::ExitCode {
        if !self.damaged.is_empty() {
            crate::error::ExitCode::Failure
        } else if self.targets.iter().any(|t| !t.reachable) {
            crate::error::ExitCode::Partial
        } else {
            crate::error::ExitCode::Success
        }
    }
}
