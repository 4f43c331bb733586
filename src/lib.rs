//! backupctl: backup orchestration and integrity verification.
//!
//! The library holds everything; `main.rs` is a thin CLI over [`ops`].
//! Rooms depend downward: `ops` uses everything; `repo` uses `storage`;
//! `archive`, `storage`, `retention` and `schedule` know nothing of each
//! other or of the CLI.

pub mod archive;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod ops;
pub mod pack;
pub mod progress;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod source;
pub mod storage;
pub mod trust;
pub mod util;
