//! The archive harness of `archive_tar`: extracts a tar stream (format v2:
//! uncompressed, as [`backupctl::pack::reader::StreamReader`] hands it over
//! once every chunk is checked) into a fresh `work/dest` with options as
//! restore, verify and database restore use them and bounds like a source
//! record and its file index give, then checks what the reader promises.

use backupctl::archive::beneath::Dir;
use backupctl::archive::reader::compare_files;
use backupctl::archive::{extract, Expected, ExtractError, ExtractOptions, FileRecord, Include};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Largest tar stream a harness manifest allows (the extraction's bound on
/// memory, disk and time).
pub const MAX_TAR: u64 = 8 << 20;

/// How the "manifest" the extraction is checked against is made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bounds {
    /// Lists exactly the regular files a plain tar reader finds, with their
    /// sizes, and the true sizes and hash: what an honest manifest says.
    Honest,
    /// As honest, but the recorded tar size is half the real one.
    ShortTar,
    /// As honest, but every recorded file size is one byte more.
    WrongSizes,
    /// As honest, but the stream hash is not the bytes' hash.
    WrongHash,
}

/// The options of the callers of `extract`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    /// `restore` as root: owners restored, the root's metadata applied.
    RestoreRoot,
    /// `restore --no-same-owner` (or not root).
    Restore,
    /// `restore --include 'd/' --include '*.txt'`.
    RestoreInclude,
    /// `verify`: every file hashed, no owner, the scratch root left alone.
    Verify,
    /// `restore --database`: defaults, no owner.
    RestoreDb,
}

fn work_base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("backupctl-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        base
    })
}

/// Normalise an archive path as the reader does ("./a//b" -> "a/b").
fn normal(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out.into_os_string().into_vec())
}

/// The regular files (normalised path -> size) a plain tar reader sees.
fn listing(tar_bytes: &[u8]) -> HashMap<Vec<u8>, u64> {
    let mut files = HashMap::new();
    let mut a = tar::Archive::new(tar_bytes);
    let Ok(entries) = a.entries() else {
        return files;
    };
    for e in entries.take(10_000) {
        let Ok(e) = e else { break };
        if matches!(
            e.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            if let Some(p) = normal(&e.path_bytes()) {
                files.insert(p, e.size());
            }
        }
    }
    files
}

/// Everything under `dir` down to [`CHECK_DEPTH`] levels whose path fits
/// PATH_MAX: (relative path, metadata), links not followed. (Checking
/// deeper trees by path would be quadratic; what lies beside `dest` is
/// checked whatever the depth.)
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    const CHECK_DEPTH: usize = 200;
    let mut out = Vec::new();
    let entries = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(CHECK_DEPTH);
    // An error is a path longer than PATH_MAX: not checked.
    for e in entries.into_iter().flatten() {
        let m = e.metadata().unwrap();
        out.push((e.path().strip_prefix(dir).unwrap().to_path_buf(), m));
    }
    out
}

/// Names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Extract the tar stream `tar_bytes` with the options and bounds `ctl`
/// selects, and check the reader's promises.
pub fn run(ctl: u8, tar_bytes: &[u8]) {
    let caller = match ctl % 5 {
        0 => Caller::RestoreRoot,
        1 => Caller::Restore,
        2 => Caller::RestoreInclude,
        3 => Caller::Verify,
        _ => Caller::RestoreDb,
    };
    let bounds = match (ctl / 5) % 8 {
        0..=3 => Bounds::Honest,
        4 => Bounds::ShortTar,
        5 | 6 => Bounds::WrongSizes,
        _ => Bounds::WrongHash,
    };

    // What an honest manifest and file index of these bytes record (within
    // MAX_TAR).
    let tar_size = (tar_bytes.len() as u64).min(MAX_TAR);
    let mut files = listing(tar_bytes);
    let mut expect = Expected {
        tar_size,
        files: HashMap::new(),
    };
    let hash = blake3::hash(tar_bytes).to_hex().to_string();
    let mut expected_hash = hash.clone();
    match bounds {
        Bounds::Honest => {}
        Bounds::ShortTar => expect.tar_size /= 2,
        Bounds::WrongSizes => files.values_mut().for_each(|s| *s += 1),
        Bounds::WrongHash => expected_hash = "0".repeat(64),
    }
    let records: Vec<FileRecord> = files
        .iter()
        .map(|(p, s)| FileRecord::new(Path::new(OsStr::from_bytes(p)), *s, String::new()))
        .collect();
    expect.files = files;
    let include = match caller {
        Caller::RestoreInclude => Include::new(&["d/".to_string(), "*.txt".to_string()]).unwrap(),
        _ => None,
    };
    let opts = ExtractOptions {
        include,
        preserve_owner: caller == Caller::RestoreRoot,
        apply_root: matches!(
            caller,
            Caller::RestoreRoot | Caller::Restore | Caller::RestoreInclude
        ),
        progress: None,
        hash_files: caller == Caller::Verify,
        expect: Some(Arc::new(expect.clone())),
        ..Default::default()
    };

    let base = work_base();
    let work = base.join("work");
    let dest = work.join("dest");
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(&dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = Dir::open(&dest).unwrap();
    let res = extract(
        tar_bytes,
        Some(&expected_hash),
        dir.fd.as_fd(),
        &dest,
        &opts,
    );
    drop(dir);

    // Nothing appeared outside the destination.
    assert_eq!(names(base), ["work"], "something was written beside work/");
    assert_eq!(names(&work), ["dest"], "something was written beside dest/");
    let tree = walk(&dest);
    let mut inodes = HashSet::new();
    let mut written = 0u64;
    for (rel, m) in &tree {
        let ft = m.file_type();
        assert!(
            ft.is_dir() || ft.is_file() || ft.is_symlink(),
            "{}: a special file was created",
            rel.display()
        );
        if !opts.preserve_owner {
            assert_eq!(m.mode() & 0o6000, 0, "{}: setuid/setgid", rel.display());
        }
        if ft.is_file() && inodes.insert(m.ino()) {
            written += m.len();
        }
    }
    // Never more than the manifest's tar size (which bounds every byte).
    assert!(written <= expect.tar_size, "{written} bytes written");

    match &res {
        Ok(rep) => {
            assert_eq!(rep.archive_hash, hash);
            assert_eq!(rep.archive_size, tar_bytes.len() as u64);
            assert!(
                !matches!(bounds, Bounds::ShortTar | Bounds::WrongHash)
                    || (bounds == Bounds::ShortTar && expect.tar_size == tar_size),
                "{bounds:?} accepted"
            );
            assert!(tar_bytes.len() as u64 <= MAX_TAR);
            for (p, (size, h)) in &rep.files {
                // (Hard links are reported under their own name too.)
                if let Some(want) = expect.size_of(p) {
                    assert_eq!(want, *size, "{p:?}");
                }
                assert_eq!(h.is_empty(), !opts.hash_files);
            }
            if caller == Caller::Verify {
                let _ = compare_files(&records, &rep.files, None);
            }
        }
        Err(ExtractError::Io { path, source }) => {
            // Only the destination's own faults are local: none here.
            panic!("local error writing {path}: {source}");
        }
        Err(e) => {
            let _ = e.to_string();
            if bounds == Bounds::WrongHash {
                // Directory metadata waits for the hash: the tree is still 0700.
                for (rel, m) in &tree {
                    if m.is_dir() {
                        assert_eq!(m.mode() & 0o7777, 0o700, "{}", rel.display());
                    }
                }
            }
        }
    }
    // The remover restore and verify use on what an archive left.
    backupctl::archive::beneath::remove_tree(&work).expect("removing the work directory");
}
