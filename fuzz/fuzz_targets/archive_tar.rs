//! Fuzzes the tar unpacker behind [`backupctl::archive::extract`]: the input
//! (after a first byte choosing the caller and the manifest's bounds, as in
//! `archive_zst`) is an *uncompressed* tar stream, which the harness
//! compresses with zstd before extracting it, so every input reaches the tar
//! parser, the long-name and pax handling and the tree writer.
//!
//! Proves the same invariants as `archive_zst`: no panic, nothing outside
//! the destination and no special files inside it, no setuid/setgid bit
//! without owners, never more bytes written than the manifest's tar size, no
//! stream accepted against wrong sizes or a wrong hash (directories stay 0700
//! until the hash is checked), and no archive blamed on the destination.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, tar)) = data.split_first() else {
        return;
    };
    let compressed = zstd::bulk::compress(tar, 1).expect("zstd compresses");
    common::extract::run(ctl, &compressed, Some(tar));
});
