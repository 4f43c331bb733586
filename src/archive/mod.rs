//! The on-target format: one plain `.tar.zst` per source per snapshot, named by
//! the BLAKE3 of its own bytes, plus a JSON manifest per snapshot.
//!
//! - [`writer`]: entries -> tar -> zstd -> BLAKE3, streamed to one sink.
//! - [`reader`]: hash-checked, manifest-bounded, path-safe unpacking.
//! - [`beneath`]: creating paths beneath a directory descriptor, never
//!   through a symbolic link.
//! - [`manifest`]: the snapshot manifest types.
//! - [`include`]: which paths a restore selects (`--include`).

pub mod beneath;
pub mod include;
pub mod manifest;
pub mod reader;
pub mod writer;

pub use include::Include;
pub use manifest::{FileRecord, Manifest, SourceRecord};
pub use reader::{extract, Expected, ExtractError, ExtractOptions, ExtractReport};
pub use writer::{ArchiveSummary, ArchiveWriter, EntryMeta, Progress};
