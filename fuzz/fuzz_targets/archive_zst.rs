//! Fuzzes the archive reader ([`backupctl::archive::extract`]) with
//! arbitrary bytes as a `.tar.zst` stream: the first byte chooses the caller
//! (restore as root, restore, restore with `--include`, verify, database
//! restore) and the manifest's bounds (honest, or a tar size, archive size,
//! file sizes or hash that disagree), the rest is the archive as a target
//! serves it. The manifest is derived from the bytes themselves (the regular
//! files a plain tar reader finds, the true sizes and hash), so the fuzzer
//! gets past the bounds checks into writing files.
//!
//! Proves: extraction never panics; nothing is created outside the
//! destination (the work directory holds only `dest`), and nothing but
//! directories, regular files and symbolic links inside it; no setuid or
//! setgid bit survives unless owners are restored; no more bytes are written
//! than the manifest's tar size (bounded here at 8 MiB, so memory, disk and
//! time stay bounded too); a stream that disagrees with the manifest's sizes
//! or hash is never accepted, and until the hash is checked every directory
//! stays 0700; no archive causes an error blamed on the destination
//! (`ExtractError::Io`, which stops a restore instead of trying another copy).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, archive)) = data.split_first() else {
        return;
    };
    common::extract::run(ctl, archive, None);
});
