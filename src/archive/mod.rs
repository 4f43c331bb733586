//! What a source becomes and how it comes back: a plain tar stream and a
//! file index stream per source per snapshot (chunked into packs by
//! [`crate::pack`]), described by a JSON manifest per snapshot.
//!
//! - [`writer`]: entries -> the tar stream and the file index, streamed to
//!   two sinks (the packers).
//! - [`reader`]: hash-checked, manifest-bounded, path-safe unpacking of a tar
//!   stream.
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
