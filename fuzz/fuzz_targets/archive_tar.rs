//! Fuzzes the tar unpacker behind [`backupctl::archive::extract`], as restore
//! and verify drive it in format v2: the input (after a first byte choosing
//! the caller and the bounds) is the source's *uncompressed* tar stream, as
//! [`backupctl::pack::reader::StreamReader`] hands it over once every chunk
//! checked against its id (the chunks themselves are the `pack` target's),
//! so every input reaches the tar parser, the long-name and pax handling and
//! the tree writer.
//!
//! The first byte chooses the caller (restore as root, restore, restore with
//! `--include`, verify, database restore) and the bounds that the source
//! record and its file index give (honest, or a stream size, file sizes or
//! stream hash that disagree). The bounds are derived from the bytes
//! themselves (the regular files a plain tar reader finds, the true size and
//! hash), so the fuzzer gets past the bounds checks into writing files.
//!
//! Proves: extraction never panics; nothing is created outside the
//! destination (the work directory holds only `dest`), and nothing but
//! directories, regular files and symbolic links inside it; no setuid or
//! setgid bit survives unless owners are restored; no more bytes are written
//! than the recorded stream size (bounded here at 8 MiB, so memory, disk and
//! time stay bounded too); a stream that disagrees with the recorded size or
//! hash is never accepted, and until the hash is checked every directory
//! stays 0700; no stream causes an error blamed on the destination
//! (`ExtractError::Io`, which stops a restore instead of trying another copy).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, tar)) = data.split_first() else {
        return;
    };
    common::extract::run(ctl, tar);
});
