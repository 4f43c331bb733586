//! The repository: backupctl's data on its targets, one room per job.
//!
//! - [`layout`]: which key holds what (typed [`layout::Key`]s, validated
//!   names), and reading listed keys back.
//! - [`catalog`]: what every target of a policy holds, authenticated and
//!   merged, and the queries commands ask of it.
//! - [`fetch`]: the bounded, hash-checked downloads, with failover.
//! - [`commit`]: the write sequence that makes a snapshot visible.
//! - [`readme`]: the restore-by-hand instructions at every target's root.
//! - [`transfer`]: copying packs and lists a target lacks from another.
//!
//! Storage mechanics (fs temporaries, S3 multipart) are [`crate::storage`]'s;
//! the archive format is [`crate::archive`]'s; what a command does with all
//! this is [`crate::ops`]'.

pub mod catalog;
pub mod commit;
pub mod fetch;
pub mod layout;
pub mod readme;
pub mod transfer;

pub use catalog::{Catalog, Damaged, Entry, Holding, TargetState, TargetView};
pub use commit::Commit;
pub use layout::{is_snapshot_id, Hash, Key, PolicyName, SnapshotId, RESTORE_FILE};
