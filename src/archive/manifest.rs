//! The snapshot manifest: a JSON document written last on each target, so a
//! snapshot is visible only once everything it references is stored.
//!
//! Schema 2 (format v2): per source, the uncompressed tar stream's size and
//! BLAKE3, and the extent list that says where its chunks are (named by the
//! BLAKE3 of the list's text, so the signed manifest authenticates the list,
//! the list the packs, the packs' indexes every chunk); the same for the
//! source's file index stream (one JSON record per entry). The manifest
//! itself stays a few KiB whatever the number of files.
//!
//! File paths are recorded byte-exact: `path` is the name as UTF-8, and a
//! name that is not valid UTF-8 also gets `path_b64` (standard base64 of its
//! raw bytes; `path` is then only a lossy rendering for people). A manifest
//! is at most [`MAX_MANIFEST_BYTES`]; a larger one is refused by every reader.

use base64::Engine;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bumped on incompatible changes; readers refuse other versions.
pub const SCHEMA_VERSION: u32 = 2;
pub const FORMAT_NAME: &str = "backupctl-snapshot";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub schema_version: u32,
    pub policy: String,
    pub id: String,
    /// When the snapshot was taken, with the UTC offset it was recorded in.
    pub time: DateTime<FixedOffset>,
    pub host: String,
    pub tool_version: String,
    pub sources: Vec<SourceRecord>,
    /// How many times repacking rewrote this snapshot's extent lists (its
    /// streams unchanged). Of two authentic copies of one snapshot, the
    /// higher revision is the one targets converge on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u32,
}

/// A stream (a tar stream or a file index) and the list that finds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamRef {
    /// Uncompressed bytes.
    pub size: u64,
    /// BLAKE3 (hex) of the uncompressed stream.
    pub blake3: String,
    /// Compressed bytes of its chunks (what the extents cover).
    pub stored: u64,
    /// The extent list: `<policy>/lists/<list>.extents`, `list` being the
    /// BLAKE3 of its text.
    pub list: String,
    /// Bytes of the extent list.
    pub list_size: u64,
}

/// One source of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRecord {
    pub name: String,
    /// "files", "postgres", "mysql" or "sqlite".
    #[serde(rename = "type")]
    pub kind: String,
    /// What was backed up (a path, or a database description).
    pub origin: String,
    /// The source's tar stream.
    pub stream: StreamRef,
    /// Its file index: one JSON record per entry, in stream order.
    pub index: StreamRef,
    /// Sum of regular file sizes.
    pub content_size: u64,
    /// Tar entries (files, directories, links).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Problems met while reading the source (changed or vanished files...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source entries that could not be read (permission denied, an I/O
    /// error), relative to the source, directories ending in `/`: the
    /// snapshot is incomplete without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// Database sources: dump tool and server versions, per-table row counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<serde_json::Value>,
}

impl SourceRecord {
    /// Both streams, for what reads every list of a snapshot.
    pub fn streams(&self) -> [&StreamRef; 2] {
        [&self.stream, &self.index]
    }
}

/// Largest manifest accepted (and written). Per-file records live in the
/// file index stream, not in the manifest, which holds a few hundred bytes
/// per source.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// One entry of a file index stream (a JSON line): its path, kind and
/// metadata, and for a regular file its size and BLAKE3.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Relative to the source root; lossy (U+FFFD) when `path_b64` is set.
    pub path: String,
    /// The exact bytes of a name that is not valid UTF-8 (standard base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// "file", "dir" or "symlink".
    #[serde(rename = "type", default = "file_kind")]
    pub kind: String,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default)]
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtime_nsec: u32,
    #[serde(default)]
    pub size: u64,
    /// BLAKE3 of a regular file's content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// A symbolic link's target (lossy when `target_b64` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_b64: Option<String>,
}

fn file_kind() -> String {
    "file".into()
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// (text, base64 of the bytes when they are not UTF-8)
fn text_and_b64(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

impl FileRecord {
    /// A record for the regular file at `rel` (relative to the source root).
    pub fn new(rel: &Path, size: u64, blake3: String) -> FileRecord {
        let (path, path_b64) = text_and_b64(rel.as_os_str().as_bytes());
        FileRecord {
            path,
            path_b64,
            kind: file_kind(),
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size,
            blake3,
            target: None,
            target_b64: None,
        }
    }

    /// A directory's record.
    pub fn dir(rel: &Path, meta: &super::writer::EntryMeta) -> FileRecord {
        let mut r = FileRecord::new(rel, 0, String::new()).with_meta(meta);
        r.kind = "dir".into();
        r
    }

    /// A symbolic link's record.
    pub fn symlink(rel: &Path, target: &Path, meta: &super::writer::EntryMeta) -> FileRecord {
        let mut r = FileRecord::new(rel, 0, String::new()).with_meta(meta);
        r.kind = "symlink".into();
        let (t, tb) = text_and_b64(target.as_os_str().as_bytes());
        r.target = Some(t);
        r.target_b64 = tb;
        r
    }

    pub fn with_meta(mut self, m: &super::writer::EntryMeta) -> FileRecord {
        self.mode = m.mode;
        self.uid = m.uid;
        self.gid = m.gid;
        self.mtime = m.mtime;
        self.mtime_nsec = m.mtime_nsec;
        self
    }

    pub fn is_file(&self) -> bool {
        self.kind == "file"
    }

    /// The path's exact bytes.
    pub fn path_bytes(&self) -> Result<Cow<'_, [u8]>, String> {
        match &self.path_b64 {
            None => Ok(Cow::Borrowed(self.path.as_bytes())),
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Cow::Owned)
                .map_err(|e| format!("{}: path_b64 is not valid base64: {e}", self.path)),
        }
    }
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        check_size(bytes.len())?;
        let mut m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest JSON: {e}"))?;
        if m.format != FORMAT_NAME {
            return Err(format!("not a backupctl manifest (format {:?})", m.format));
        }
        if m.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "manifest schema version {} is not the one this backupctl reads ({SCHEMA_VERSION})",
                m.schema_version
            ));
        }
        m.validate()?;
        Ok(m)
    }

    /// Everything later used to build a path or key, or printed, is checked
    /// here, before anything acts on it: names follow the config's rules,
    /// ids and hashes their formats, free text has no control characters.
    fn validate(&mut self) -> Result<(), String> {
        let p = crate::util::printable;
        if !crate::config::is_valid_name(&self.policy) {
            return Err(format!("invalid policy name {:?}", p(&self.policy)));
        }
        if !crate::repo::is_snapshot_id(&self.id) {
            return Err(format!("invalid snapshot id {:?}", p(&self.id)));
        }
        for (what, v, max) in [
            ("host", &self.host, 255),
            ("tool_version", &self.tool_version, 64),
        ] {
            if v.len() > max || v.chars().any(char::is_control) {
                return Err(format!("invalid {what} {:?}", p(v)));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &mut self.sources {
            if !crate::config::is_valid_name(&s.name) || !names.insert(s.name.clone()) {
                return Err(format!("invalid or duplicate source name {:?}", p(&s.name)));
            }
            if !matches!(s.kind.as_str(), "files" | "postgres" | "mysql" | "sqlite") {
                return Err(format!("source {}: unknown type {:?}", s.name, p(&s.kind)));
            }
            for st in s.streams() {
                if !is_hash(&st.blake3) || !is_hash(&st.list) {
                    return Err(format!(
                        "source {:?}: stream hash {:?} or list {:?} is not a BLAKE3 hex digest",
                        s.name,
                        p(&st.blake3),
                        p(&st.list)
                    ));
                }
                if st.list_size > crate::pack::extents::MAX_LIST_BYTES {
                    return Err(format!("source {}: extent list too large", s.name));
                }
            }
            if s.origin.len() > 4096 || s.origin.chars().any(char::is_control) {
                return Err(format!(
                    "source {}: invalid origin {:?}",
                    s.name,
                    p(&s.origin)
                ));
            }
            for w in &mut s.warnings {
                *w = p(w);
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    pub fn source(&self, name: &str) -> Option<&SourceRecord> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Compressed bytes the snapshot's streams reference.
    pub fn total_stored(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.stream.stored.saturating_add(s.index.stored))
            .fold(0, u64::saturating_add)
    }

    /// Recorded sizes are the manifest's word: sums saturate (an
    /// overflowing sum panicked in checked builds, wrapped otherwise).
    pub fn total_content_size(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.content_size)
            .fold(0, u64::saturating_add)
    }
}

/// True for a 64-character lowercase hex string.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Refuse a manifest of `len` bytes above [`MAX_MANIFEST_BYTES`].
pub fn check_size(len: usize) -> Result<(), String> {
    if len > MAX_MANIFEST_BYTES {
        return Err(format!(
            "manifest is larger than the {} MiB limit ({len} bytes or more); refused",
            MAX_MANIFEST_BYTES >> 20
        ));
    }
    Ok(())
}

/// Render per-file hashes in `b3sum` check format (`b3sum --check` reads it),
/// with b3sum's escaping: a path containing `\` or a newline has them
/// escaped and its line starts with a backslash. Names b3sum cannot check
/// (not valid UTF-8, or containing U+FFFD, which `b3sum --check` always
/// fails) are left out: the manifest lists them (`path_b64`).
pub fn b3sums(files: &[FileRecord]) -> String {
    let mut out = String::new();
    for f in files {
        if f.path_b64.is_some() || f.path.contains('\u{FFFD}') {
            continue;
        }
        if f.path.contains('\\') || f.path.contains('\n') {
            // b3sum's escaping: a leading backslash marks an escaped line.
            let esc = f.path.replace('\\', "\\\\").replace('\n', "\\n");
            out.push_str(&format!("\\{}  {}\n", f.blake3, esc));
        } else {
            out.push_str(&format!("{}  {}\n", f.blake3, f.path));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn non_utf8_paths_round_trip_and_stay_distinct() {
        let a = FileRecord::new(Path::new(OsStr::from_bytes(b"d/caf\xe9")), 1, "h".into());
        let b = FileRecord::new(Path::new(OsStr::from_bytes(b"d/caf\xe8")), 1, "h".into());
        assert_eq!(a.path, b.path, "the lossy renderings collide");
        assert_ne!(a.path_b64, b.path_b64);
        assert_eq!(&*a.path_bytes().unwrap(), b"d/caf\xe9");
        assert_eq!(&*b.path_bytes().unwrap(), b"d/caf\xe8");
        let json = serde_json::to_string(&a).unwrap();
        let back: FileRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        // UTF-8 names serialise as before (no path_b64).
        let u = FileRecord::new(Path::new("grüße/x"), 1, "h".into());
        assert!(!serde_json::to_string(&u).unwrap().contains("path_b64"));
        assert_eq!(&*u.path_bytes().unwrap(), "grüße/x".as_bytes());
        // b3sum cannot check the non-UTF-8 ones: left out of .b3sums.
        let sums = b3sums(&[a, u.clone()]);
        assert_eq!(sums, format!("h  {}\n", u.path));
    }

    /// Two sources whose recorded sizes add up past u64::MAX made `list`'s
    /// totals overflow (a panic in checked builds); found with the manifest
    /// fuzz target.
    #[test]
    fn totals_of_huge_recorded_sizes_saturate() {
        let stream = serde_json::json!({"size": 1, "blake3": "", "stored": u64::MAX,
            "list": "", "list_size": 0});
        let src = |n: &str| {
            serde_json::json!({"name": n, "type": "files", "origin": "/",
            "stream": stream, "index": stream, "content_size": u64::MAX, "entries": 1,
            "files": 1})
        };
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "policy": "p",
            "id": "20260101T000000Z-00000000", "time": "2026-01-01T00:00:00Z", "host": "h",
            "tool_version": "0", "sources": [src("a"), src("b")]}))
        .unwrap();
        assert_eq!(m.total_stored(), u64::MAX);
        assert_eq!(m.total_content_size(), u64::MAX);
    }

    #[test]
    fn oversized_manifests_are_refused_before_parsing() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        let e = Manifest::parse(&big).unwrap_err();
        assert!(e.contains("1 MiB limit"), "{e}");
    }
}
