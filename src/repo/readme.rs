//! The plain-text restore instructions at every target's root
//! ([`super::layout::RESTORE_FILE`]): how an operator restores with stock
//! tools (zstd, tar, b3sum) and no backupctl. A CI test follows them
//! (`tests/deployment.rs`). When they are written is [`super::commit`]'s
//! and `init`'s business.

/// The plain-text restore instructions stored at each target's root.
pub fn restore_instructions() -> String {
    format!(
        r#"HOW TO RESTORE THESE BACKUPS BY HAND (without backupctl)
==========================================================

Written by backupctl {version}. Everything needed to restore is in this
directory (or bucket prefix); no local state from the backed-up machine is needed.

Layout
------
  <policy>/snapshots/<snapshot-id>.json    one manifest per snapshot (JSON):
                                           time, host, and per source its archive
                                           hash and the BLAKE3 of every file
  <policy>/snapshots/<snapshot-id>.sig     its Ed25519 signature by the backup
                                           host's key (backupctl refuses manifests
                                           that are unsigned or signed by a key it
                                           does not trust; a manual restore can
                                           skip it)
  <policy>/archives/<hash>.tar.zst         one plain tar archive, zstd-compressed,
                                           per source and version; <hash> is the
                                           BLAKE3 of the .tar.zst file itself
  <policy>/archives/<hash>.b3sums          BLAKE3 of every file in that archive,
                                           in `b3sum --check` format

Snapshot ids start with the UTC time they were taken (YYYYMMDDTHHMMSSZ), so the
newest manifest sorts last.

Steps (tools: zstd, tar, b3sum; Debian/Ubuntu: apt-get install zstd tar b3sum)
-----
1. Pick a snapshot and find the archive of the source you need:
     ls <policy>/snapshots/
     grep -E '"name"|"archive_hash"' <policy>/snapshots/<snapshot-id>.json
   (each source block lists "name" and then its "archive_hash").

2. Check the archive is intact; the printed hash must equal the file name:
     b3sum <policy>/archives/<hash>.tar.zst

3. Unpack it into an empty directory:
     mkdir -p /restore/<source>
     zstd -d -c <policy>/archives/<hash>.tar.zst | tar -xpf - -C /restore/<source>
   (add --numeric-owner when running as root to restore ownership).

4. Check every file against its recorded BLAKE3:
     cd /restore/<source> && b3sum --check /path/to/<policy>/archives/<hash>.b3sums
   (b3sum cannot check names that are not valid UTF-8: they are left out of
   .b3sums; the manifest lists them with "path_b64", their exact bytes in base64.)

Database sources hold dump files: PostgreSQL custom-format dumps (*.pgdump) load
with pg_restore, plain dumps (*.sql) with psql or mysql, SQLite files (*.db)
open directly. A large dump may be split into parts NAME.part-000001,
NAME.part-000002, ...: concatenate them in order (cat NAME.part-* > NAME).

Snapshot manifests are written last: a snapshot whose manifest exists here is
complete on this target. backupctl-target.json at the root only marks this as a
backupctl target.
"#,
        version = env!("CARGO_PKG_VERSION")
    )
}
