//! Format v2 on an fs target, as tests see it: packs, extent lists and
//! manifests read independently of backupctl's reader (extents sliced from
//! the pack files, decompressed by the `zstd` CLI, hashed by `b3sum`), and
//! snapshots planted the way a hostile target would serve them.

use super::b3sum;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn files_with(dir: &Path, ext: &str, depth: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .min_depth(depth)
        .max_depth(depth)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Every pack of a policy on an fs target.
pub fn packs(target: &Path, policy: &str) -> Vec<PathBuf> {
    files_with(&target.join(policy).join("packs"), "pack", 2)
}

/// Every extent list of a policy on an fs target.
pub fn lists(target: &Path, policy: &str) -> Vec<PathBuf> {
    files_with(&target.join(policy).join("lists"), "extents", 1)
}

/// Bytes of every pack of a policy on an fs target.
pub fn pack_bytes(target: &Path, policy: &str) -> u64 {
    packs(target, policy)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// A manifest file, parsed.
pub fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The packs an extent list names (paths relative to the policy directory).
pub fn packs_of_list(target: &Path, policy: &str, list: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(list_path(target, policy, list)).unwrap();
    let mut v: Vec<PathBuf> = text
        .lines()
        .map(|l| target.join(policy).join(l.split(' ').next().unwrap()))
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn list_path(target: &Path, policy: &str, list: &str) -> PathBuf {
    target
        .join(policy)
        .join("lists")
        .join(format!("{list}.extents"))
}

/// The uncompressed stream an extent list describes, rebuilt as
/// RESTORE-README says: slice each extent out of its pack, concatenate,
/// `zstd -dc`. The list's own name is checked with `b3sum` first.
/// The largest extent of an extent list's text: (pack, offset, length).
pub fn largest_extent(list_text: &str) -> (String, usize, usize) {
    list_text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse::<usize>().unwrap(),
                f[2].parse::<usize>().unwrap(),
            )
        })
        .max_by_key(|e| e.2)
        .expect("a non-empty extent list")
}

pub fn stream_from_list(target: &Path, policy: &str, list: &str) -> Vec<u8> {
    let path = list_path(target, policy, list);
    assert_eq!(
        b3sum(&path),
        list,
        "extent list {list} is not what its name says"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut compressed = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "extent line {line:?}");
        let bytes = std::fs::read(target.join(policy).join(f[0])).unwrap();
        let (o, l): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        compressed.extend_from_slice(&bytes[o..o + l]);
    }
    let mut child = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd installed");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&compressed);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "zstd -dc of list {list} failed");
    out.stdout
}

/// A source's record in a manifest.
pub fn source_record<'a>(m: &'a serde_json::Value, source: &str) -> &'a serde_json::Value {
    m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == source)
        .unwrap_or_else(|| panic!("no source {source} in {m}"))
}

/// The tar stream of `source` in the snapshot at `manifest_path` (on the
/// fs target `target`), checked against the manifest's BLAKE3 with `b3sum`.
pub fn source_tar(target: &Path, policy: &str, manifest_path: &Path, source: &str) -> Vec<u8> {
    let m = manifest(manifest_path);
    let rec = source_record(&m, source);
    let tar = stream_from_list(target, policy, rec["stream"]["list"].as_str().unwrap());
    assert_eq!(
        blake3::hash(&tar).to_hex().to_string(),
        rec["stream"]["blake3"].as_str().unwrap(),
        "the rebuilt tar stream of {source} is not what the manifest says"
    );
    tar
}

/// The tar stream of `source` in the newest snapshot on the fs target.
pub fn latest_tar(target: &Path, policy: &str, source: &str) -> Vec<u8> {
    let ms = super::manifests(target, policy);
    let newest = ms.last().expect("a snapshot on the target");
    source_tar(target, policy, newest, source)
}

/// Per snapshot (oldest first), the BLAKE3 of `source`'s tar stream.
pub fn stream_hashes(target: &Path, policy: &str, source: &str) -> Vec<String> {
    super::manifests(target, policy)
        .iter()
        .map(|p| {
            source_record(&manifest(p), source)["stream"]["blake3"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Extract a tar stream with the system `tar` into `dest` (created).
pub fn untar(tar: &[u8], dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let mut child = Command::new("tar")
        .arg("-xpf")
        .arg("-")
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(tar).unwrap();
    }
    assert!(child.wait().unwrap().success(), "tar -x failed");
}

/// One source of a planted snapshot: a tar stream, and the file records
/// of its index (JSON objects as the manifest's FileRecord serialises).
pub struct Planted {
    pub name: String,
    pub kind: String,
    pub origin: String,
    pub tar: Vec<u8>,
    pub records: Vec<serde_json::Value>,
    pub database: Option<serde_json::Value>,
}

impl Planted {
    /// A files source whose index lists `files` (name, content) as
    /// regular files.
    pub fn files(name: &str, tar: Vec<u8>, files: &[(String, Vec<u8>)]) -> Planted {
        let records = files
            .iter()
            .map(|(n, data)| {
                serde_json::json!({"path": n.trim_start_matches("./"), "type": "file",
                    "mode": 0o644, "size": data.len(),
                    "blake3": blake3::hash(data).to_hex().to_string()})
            })
            .collect();
        Planted {
            name: name.into(),
            kind: "files".into(),
            origin: "/".into(),
            tar,
            records,
            database: None,
        }
    }
}

/// Pack `data` into one pack (1 MiB chunks, one zstd frame each) under
/// `<target>/<policy>/packs/`, write its extent list, and return the
/// stream's manifest reference.
pub fn plant_stream(target: &Path, policy: &str, data: &[u8], kind: u8) -> serde_json::Value {
    use backupctl::pack::format::{ChunkId, FrameEncoder, Kind, PackBuilder};
    let kind = match kind {
        4 => Kind::Index,
        _ => Kind::Content,
    };
    let mut enc = FrameEncoder::new(3).unwrap();
    let mut b = PackBuilder::new();
    let mut spans = Vec::new();
    let mut off = 0u64;
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![]
    } else {
        data.chunks(1 << 20).collect()
    };
    for c in &pieces {
        let frame = enc.encode(c).unwrap();
        b.push(ChunkId::of(c), kind, c.len() as u32, &frame);
        spans.push((off, frame.len() as u64));
        off += frame.len() as u64;
    }
    let mut text = String::new();
    let mut stored = 0;
    if !pieces.is_empty() {
        let (name, bytes, _) = b.finish();
        let dir = target.join(policy).join("packs").join(&name[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.pack")), &bytes).unwrap();
        // One extent for the whole run of frames.
        stored = off;
        text = format!("packs/{}/{name}.pack 0 {off}\n", &name[..2]);
    }
    let list = blake3::hash(text.as_bytes()).to_hex().to_string();
    let ldir = target.join(policy).join("lists");
    std::fs::create_dir_all(&ldir).unwrap();
    std::fs::write(ldir.join(format!("{list}.extents")), &text).unwrap();
    serde_json::json!({
        "size": data.len(), "blake3": blake3::hash(data).to_hex().to_string(),
        "stored": stored, "list": list, "list_size": text.len(),
    })
}

/// Plant a complete snapshot `id` of `policy` on the fs target at `root`
/// (marker included), signed with `key` when given. Returns the manifest.
pub fn plant_snapshot(
    root: &Path,
    policy: &str,
    id: &str,
    time: &str,
    key: Option<&backupctl::trust::HostKey>,
    sources: &[Planted],
) -> serde_json::Value {
    std::fs::create_dir_all(root.join(policy).join("snapshots")).unwrap();
    if !root.join("backupctl-target.json").exists() {
        std::fs::write(root.join("backupctl-target.json"), "{}\n").unwrap();
    }
    let recs: Vec<serde_json::Value> = sources
        .iter()
        .map(|s| {
            let stream = plant_stream(root, policy, &s.tar, 2);
            let mut index = Vec::new();
            for r in &s.records {
                index.extend_from_slice(serde_json::to_string(r).unwrap().as_bytes());
                index.push(b'\n');
            }
            let index = plant_stream(root, policy, &index, 4);
            let files = s.records.iter().filter(|r| r["type"] == "file").count();
            let content: u64 = s.records.iter().filter_map(|r| r["size"].as_u64()).sum();
            let mut v = serde_json::json!({
                "name": s.name, "type": s.kind, "origin": s.origin,
                "stream": stream, "index": index,
                "content_size": content, "entries": s.records.len(), "files": files,
            });
            if let Some(d) = &s.database {
                v["database"] = d.clone();
            }
            v
        })
        .collect();
    let m = serde_json::json!({
        "format": "backupctl-snapshot", "schema_version": 2, "policy": policy,
        "id": id, "time": time, "host": "attacker", "tool_version": "0",
        "sources": recs,
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let snaps = root.join(policy).join("snapshots");
    if let Some(k) = key {
        std::fs::write(
            snaps.join(format!("{id}.sig")),
            k.sign_manifest(policy, id, &bytes),
        )
        .unwrap();
    }
    std::fs::write(snaps.join(format!("{id}.json")), bytes).unwrap();
    m
}
