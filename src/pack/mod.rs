//! Format v2's building blocks: deduplicated chunks in packs, restorable by
//! hand with stock tools.
//!
//! - [`chunker`]: cuts a source's tar stream where files begin and end
//!   (headers, whole small files, FastCDC inside large ones).
//! - [`format`]: packs of zstd frames with an index that names them, and the
//!   checks every read goes through.
//! - [`extents`]: the plain-text `PACK OFFSET LENGTH` lists a stream is
//!   restored from, by backupctl or by one line of shell.
//! - [`index`]: the compact in-memory chunk index a run deduplicates against.
//! - [`packer`]: the write pipeline (chunk, look up, compress in parallel,
//!   pack, resolve extents).
//! - [`pipe`]: runs a stream's packer on its own thread, beside the reading.
//! - [`reader`]: the read pipeline (ranged reads, every chunk checked,
//!   failover per extent).
//! - [`repack`]: which packs prune rewrites, and the lists after the move.
pub mod chunker;
pub mod extents;
pub mod format;
pub mod index;
pub mod packer;
pub mod pipe;
pub mod reader;
pub mod repack;
