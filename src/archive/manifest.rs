//! The snapshot manifest: a JSON document written last on each target, so a
//! snapshot is visible only once all its archives are stored.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// Bumped on incompatible changes; readers refuse newer versions.
pub const SCHEMA_VERSION: u32 = 1;
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
}

/// One source of a snapshot: exactly one archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRecord {
    pub name: String,
    /// "files", "postgres", "mysql" or "sqlite".
    #[serde(rename = "type")]
    pub kind: String,
    /// What was backed up (a path, or a database description).
    pub origin: String,
    /// BLAKE3 (hex) of the compressed archive bytes; the archive's name.
    pub archive_hash: String,
    /// Size of the `.tar.zst` file in bytes.
    pub archive_size: u64,
    /// Size of the uncompressed tar stream in bytes.
    pub tar_size: u64,
    /// Sum of regular file sizes.
    pub content_size: u64,
    /// Tar entries (files, directories, links).
    pub entries: u64,
    /// Every regular file with its content hash, in archive order.
    pub files: Vec<FileRecord>,
    /// Problems met while reading the source (changed or vanished files...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source entries that could not be read (permission denied, an I/O
    /// error), relative to the source, directories ending in `/`: the
    /// snapshot is incomplete without them. (Absent in manifests written
    /// before this field existed, and when everything was read.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// Database sources: dump tool and server versions, per-table row counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest JSON: {e}"))?;
        if m.format != FORMAT_NAME {
            return Err(format!("not a backupctl manifest (format {:?})", m.format));
        }
        if m.schema_version > SCHEMA_VERSION {
            return Err(format!(
                "manifest schema version {} is newer than this backupctl understands ({SCHEMA_VERSION}); upgrade backupctl",
                m.schema_version
            ));
        }
        for s in &m.sources {
            if !is_hash(&s.archive_hash) {
                return Err(format!(
                    "source {:?}: archive hash {:?} is not a BLAKE3 hex digest",
                    s.name, s.archive_hash
                ));
            }
        }
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    pub fn source(&self, name: &str) -> Option<&SourceRecord> {
        self.sources.iter().find(|s| s.name == name)
    }

    pub fn total_archive_size(&self) -> u64 {
        self.sources.iter().map(|s| s.archive_size).sum()
    }

    pub fn total_content_size(&self) -> u64 {
        self.sources.iter().map(|s| s.content_size).sum()
    }
}

/// True for a 64-character lowercase hex string.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Render per-file hashes in `b3sum` check format (`b3sum --check` reads it).
pub fn b3sums(files: &[FileRecord]) -> String {
    let mut out = String::new();
    for f in files {
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
