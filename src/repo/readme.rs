//! The plain-text restore instructions at every target's root
//! ([`super::layout::RESTORE_FILE`]): how an operator restores with stock
//! tools (sh, tail, head, zstd, tar, b3sum) and no backupctl. A CI test follows them
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
                                           time, host, and per source its
                                           "stream" (the tar stream) and "index"
                                           (one JSON line per file), each with
                                           "blake3" (of the uncompressed stream)
                                           and "list" (its extent list)
  <policy>/snapshots/<snapshot-id>.sig     its Ed25519 signature by the backup
                                           host's key (backupctl refuses manifests
                                           that are unsigned or signed by a key it
                                           does not trust; a manual restore can
                                           skip it)
  <policy>/lists/<list>.extents            where a stream's compressed bytes are,
                                           in order: one line "PACK OFFSET LENGTH"
                                           per extent, PACK relative to <policy>/;
                                           <list> is the BLAKE3 of the file
  <policy>/packs/<hh>/<name>.pack          chunks shared by all snapshots: zstd
                                           frames back to back, then the pack's
                                           own index (a skippable frame); <name>
                                           is the BLAKE3 of that index's payload

The bytes an extent list names, concatenated in order, are whole zstd frames;
decompressed, they are a plain tar stream.

Snapshot ids start with the UTC time they were taken (YYYYMMDDTHHMMSSZ), so the
newest manifest sorts last.

Steps (tools: sh, tail, head, zstd, tar, b3sum; apt-get install zstd b3sum)
-----
0. On an S3-compatible target, first copy the policy's prefix to a local disk
   with any S3 client, for example:
     aws s3 sync s3://<bucket>/<prefix>/<policy>/ ./<policy>/ --endpoint-url <url>
     (or: rclone copy remote:<bucket>/<prefix>/<policy> ./<policy>)

1. Pick a snapshot and find the list of the source you need:
     ls <policy>/snapshots/
     grep -E '"name"|"blake3"|"list"' <policy>/snapshots/<snapshot-id>.json
   (each source block lists "name", then its "stream" with "blake3" and
   "list", then its "index").

2. Rebuild the tar stream, from inside <policy>/:
     cd <policy>
     while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done \
       < lists/<list>.extents | zstd -dc > /restore/<source>.tar

3. Check it: the printed hash must equal the stream's "blake3":
     b3sum /restore/<source>.tar

4. Unpack it into an empty directory:
     mkdir -p /restore/<source>
     tar -xpf /restore/<source>.tar -C /restore/<source>
   (add --numeric-owner when running as root to restore ownership). Steps 2
   and 4 also work as one pipe: ... | zstd -dc | tar -xpf - -C /restore/<source>

5. Optionally check every file: rebuild the source's "index" stream the same
   way (its own list); each line is a JSON record with "path" and "blake3"
   (a name that is not UTF-8 is also given exactly, as base64, in "path_b64";
   b3sum cannot name such a file, so this filter leaves it out):
     ... | zstd -dc \
       | jq -r 'select(.type=="file" and .path_b64 == null) | "\(.blake3)  \(.path)"' \
       > /restore/<source>.b3sums
     cd /restore/<source> && b3sum --check /restore/<source>.b3sums

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

/// The one-line stock-tools restore of a tar stream, run from inside the
/// policy's directory (`<policy>/`): the extents of `extents` (a path
/// relative to it, `lists/<list>.extents`) concatenated, decompressed and
/// unpacked into `dest` (already quoted for sh). Step 2 and 4 of
/// [`restore_instructions`] as one pipe.
pub fn stock_restore_pipe(extents: &str, dest: &str) -> String {
    format!(
        "while read p o l; do tail -c +$((o+1)) \"$p\" | head -c \"$l\"; done < {extents} \
         | zstd -dc | tar -xpf - -C {dest}"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pipe_is_the_readmes_recipe() {
        let pipe = super::stock_restore_pipe("lists/x.extents", "/restore/src");
        let readme = super::restore_instructions();
        assert!(
            readme.contains("while read p o l; do tail -c +$((o+1)) \"$p\" | head -c \"$l\"; done")
        );
        assert!(pipe.starts_with("while read p o l; do tail -c +$((o+1)) \"$p\" | head -c \"$l\"; done < lists/x.extents"));
        assert!(pipe.ends_with("| zstd -dc | tar -xpf - -C /restore/src"));
        assert!(readme.contains("| zstd -dc | tar -xpf - -C /restore/<source>"));
    }
}
