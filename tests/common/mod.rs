//! Shared test harness: temporary configurations, running the real binary
//! (always through [`bin`], one environment policy), and independent checks
//! (walking trees, hashing with system tools).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod v2;
pub use v2::*;

/// The backupctl binary under test (to name it; spawn it with [`bin`]):
/// Cargo's, or `BACKUPCTL_TEST_BIN` when set (a copy of this build, when
/// the target directory is shared with other checkouts that may replace
/// Cargo's while the suite runs).
pub fn bin_path() -> PathBuf {
    std::env::var_os("BACKUPCTL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_backupctl")))
}

/// All a spawned backupctl inherits from the test process (when set).
/// Everything else it sees (`BACKUPCTL_*`, `AWS_*`, `TZ`, credentials,
/// passwords) is what the test sets on the command.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "TMPDIR"];

/// The one way tests spawn backupctl: the binary with an empty environment
/// but [`INHERITED_ENV`].
pub fn bin() -> Command {
    with_env_policy(Command::new(bin_path()))
}

/// backupctl run by `wrapper` (`sh -c`, `setpriv`, `/usr/bin/time`...):
/// `wrapper wrapper_args... <backupctl>` under [`bin`]'s environment
/// policy; backupctl's own arguments follow.
pub fn bin_via(wrapper: &str, wrapper_args: &[&str]) -> Command {
    let mut c = with_env_policy(Command::new(wrapper));
    c.args(wrapper_args).arg(bin_path());
    c
}

/// `c` with its environment cleared but for [`INHERITED_ENV`].
fn with_env_policy(mut c: Command) -> Command {
    c.env_clear();
    for k in INHERITED_ENV {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}

/// A temporary backupctl setup: config dir, policies dir, targets, a source tree.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("backupctl-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        Setup { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("backupctl.toml")
    }

    /// Write backupctl.toml with fs targets `names` at `<dir>/targets/<name>`.
    pub fn fs_config(&self, names: &[&str]) {
        let mut s = String::from("state_dir = \"state\"\n");
        for (i, n) in names.iter().enumerate() {
            s.push_str(&format!(
                "\n[targets.{n}]\ntype = \"fs\"\ncreate = true\npath = \"targets/{n}\"\nlocation = \"site-{i}\"\n"
            ));
        }
        self.write("backupctl.toml", &s);
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// A files policy named `name` backing up `src` to `targets`.
    pub fn files_policy(&self, name: &str, src: &Path, targets: &[&str], extra: &str) {
        let t: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        self.write(
            &format!("policies/{name}.toml"),
            &format!(
                "targets = [{}]\n{extra}\n[retention]\ndaily = 7\n\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n",
                t.join(", "),
                src.display()
            ),
        );
    }

    /// backupctl with this setup's config.
    pub fn cmd(&self) -> Command {
        let mut c = bin();
        c.arg("--config").arg(self.config_path());
        c
    }

    /// Run with args; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn backupctl")
    }

    pub fn target_dir(&self, name: &str) -> PathBuf {
        self.path(&format!("targets/{name}"))
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert the exit code, printing both streams on mismatch.
#[track_caller]
pub fn expect_code(o: &Output, want: i32) {
    assert_eq!(
        code(o),
        want,
        "exit code\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{}", stdout(o), stderr(o)))
}

/// What a test observes of one tree entry, read independently of backupctl.
#[derive(Debug, PartialEq)]
pub struct Observed {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: (i64, i64),
    /// File content or link target.
    pub data: Vec<u8>,
    pub owner: (u32, u32),
}

/// Everything observable about a tree: relative path -> entry.
pub fn snapshot_tree(root: &Path) -> BTreeMap<String, Observed> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let (kind, data) = if m.file_type().is_symlink() {
            (
                "link",
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if m.is_dir() {
            ("dir", Vec::new())
        } else {
            ("file", std::fs::read(e.path()).unwrap())
        };
        let mode = if kind == "link" {
            0
        } else {
            m.permissions().mode() & 0o7777
        };
        out.insert(
            rel,
            Observed {
                kind,
                mode,
                mtime: (m.mtime(), m.mtime_nsec()),
                data,
                owner: (m.uid(), m.gid()),
            },
        );
    }
    out
}

/// Compare two trees entry by entry with a readable failure.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ta = snapshot_tree(a);
    let tb = snapshot_tree(b);
    let ka: Vec<&String> = ta.keys().collect();
    let kb: Vec<&String> = tb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "different entries in {} and {}",
        a.display(),
        b.display()
    );
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(va.kind, vb.kind, "{k}: kind");
        assert_eq!(
            va.mode, vb.mode,
            "{k}: permission bits {:o} vs {:o}",
            va.mode, vb.mode
        );
        assert_eq!(va.data, vb.data, "{k}: content or link target");
        if running_as_root() {
            assert_eq!(va.owner, vb.owner, "{k}: owner (uid, gid)");
        }
        if va.kind != "link" {
            assert_eq!(va.mtime, vb.mtime, "{k}: mtime");
        }
    }
}

/// Build a varied tree: nested dirs, modes, empty file and dir, unicode
/// names, a relative symlink, sub-second mtimes, a binary and a larger file.
pub fn make_tree(root: &Path) {
    use std::fs;
    fs::create_dir_all(root.join("public/css")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("data/ünïcödé dir")).unwrap();
    fs::write(root.join("public/index.html"), "<h1>shop</h1>\n").unwrap();
    fs::write(root.join("public/css/site.css"), "body{}\n").unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(
        root.join("data/ünïcödé dir/grüße 日本.txt"),
        "unicode content ✓\n",
    )
    .unwrap();
    let bin: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(root.join("data/blob.bin"), &bin).unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("row {i}: some repeated text\n"))
        .collect();
    fs::write(root.join("data/big.txt"), text).unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("secret.conf"), "x=1\n").unwrap();
    fs::set_permissions(root.join("secret.conf"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("public/index.html", root.join("index-link")).unwrap();
    if running_as_root() {
        // Ownership is recorded and restored when running as root.
        std::os::unix::fs::chown(root.join("secret.conf"), Some(1234), Some(2345)).unwrap();
        std::os::unix::fs::lchown(root.join("index-link"), Some(1234), Some(1234)).unwrap();
    }
    std::os::unix::fs::symlink("../public", root.join("data/up-link")).unwrap();
    // Sub-second and old mtimes, files first, then directories (children change dir mtimes).
    let t = |s: i64, ns: u32| filetime::FileTime::from_unix_time(s, ns);
    filetime::set_file_mtime(
        root.join("public/index.html"),
        t(1_600_000_000, 123_456_789),
    )
    .unwrap();
    filetime::set_file_mtime(root.join("empty.txt"), t(1_500_000_000, 0)).unwrap();
    filetime::set_file_mtime(root.join("data/big.txt"), t(1_700_000_000, 999_999_999)).unwrap();
    filetime::set_symlink_file_times(
        root.join("index-link"),
        t(1_600_000_001, 0),
        t(1_600_000_001, 0),
    )
    .unwrap();
    filetime::set_file_mtime(root.join("empty-dir"), t(1_400_000_000, 500)).unwrap();
    filetime::set_file_mtime(root.join("public/css"), t(1_400_000_100, 0)).unwrap();
}

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `b3sum` of a file, by the system tool.
pub fn b3sum(path: &Path) -> String {
    let o = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .expect("b3sum installed (apt-get install b3sum)");
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The snapshot manifests of a policy on an fs target.
pub fn manifests(target: &Path, policy: &str) -> Vec<PathBuf> {
    let dir = target.join(policy).join("snapshots");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "json"));
    v.sort();
    v
}

/// Flip one byte in the middle of a file.
pub fn flip_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(path, b).unwrap();
}

/// The setup's host signing key (`<state>/keys/host.key`, created if
/// missing), as `run` uses it: to sign manifests a test plants.
pub fn host_key(s: &Setup) -> backupctl::trust::HostKey {
    let p = s.path("state/keys/host.key");
    backupctl::trust::HostKey::load(&p)
        .unwrap_or_else(|_| backupctl::trust::HostKey::create(&p).unwrap())
}

/// One entry of a tree's hash list, computed by the test itself (BLAKE3 of
/// the content with the `blake3` crate, never through backupctl).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashEntry {
    pub kind: &'static str,
    /// BLAKE3 of a file's content; a link's target; empty for a directory.
    pub hash: String,
    pub mode: u32,
    /// (seconds, nanoseconds); not compared for symbolic links.
    pub mtime: (i64, i64),
}

/// A tree's hash list: relative path -> entry (the root itself excluded).
pub type HashList = BTreeMap<String, HashEntry>;

/// The hash list of `root`, leaving out the paths `skip` says were excluded
/// from the backup (and everything under a skipped directory).
pub fn hash_list(root: &Path, skip: impl Fn(&str) -> bool) -> HashList {
    let mut out = BTreeMap::new();
    let mut walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(e) = walk.next() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip(&rel) {
            if e.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let (kind, hash, mode, mtime) = if m.file_type().is_symlink() {
            let t = std::fs::read_link(e.path()).unwrap();
            ("link", t.to_string_lossy().into_owned(), 0, (0, 0))
        } else if m.is_dir() {
            (
                "dir",
                String::new(),
                m.permissions().mode() & 0o7777,
                (m.mtime(), m.mtime_nsec()),
            )
        } else {
            let data = std::fs::read(e.path()).unwrap();
            (
                "file",
                blake3::hash(&data).to_hex().to_string(),
                m.permissions().mode() & 0o7777,
                (m.mtime(), m.mtime_nsec()),
            )
        };
        out.insert(
            rel,
            HashEntry {
                kind,
                hash,
                mode,
                mtime,
            },
        );
    }
    out
}

/// Assert that the tree at `root` is exactly `want` (paths, kinds, contents,
/// permission bits, mtimes), naming the first differences.
#[track_caller]
pub fn assert_hash_list(want: &HashList, root: &Path, what: &str) {
    let got = hash_list(root, |_| false);
    if &got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(g) if g != w => diffs.push(format!("{k}: want {w:?}, got {g:?}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("unexpected {k}"));
    }
    diffs.truncate(10);
    panic!(
        "{what}: {} differs from the recorded tree:\n  {}",
        root.display(),
        diffs.join("\n  ")
    );
}

/// An fs target on a "mounted" disk: the target's root is
/// `<mount>/backups`; unplugging renames the mount away and leaves an empty
/// mount point, as on a real machine.
pub struct Mount {
    pub mount: PathBuf,
}

impl Mount {
    pub fn new(mount: PathBuf) -> Mount {
        std::fs::create_dir_all(&mount).unwrap();
        Mount { mount }
    }

    /// The target's root on the disk.
    pub fn root(&self) -> PathBuf {
        self.mount.join("backups")
    }

    fn away(&self) -> PathBuf {
        self.mount.with_extension("away")
    }

    pub fn unplug(&self) {
        std::fs::rename(&self.mount, self.away()).unwrap();
        std::fs::create_dir_all(&self.mount).unwrap();
    }

    pub fn plug(&self) {
        std::fs::remove_dir(&self.mount).unwrap();
        std::fs::rename(self.away(), &self.mount).unwrap();
    }
}

/// `b3sum` (the system tool) of several files at once: path -> hash.
pub fn b3sums(paths: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    if paths.is_empty() {
        return BTreeMap::new();
    }
    let o = Command::new("b3sum")
        .args(paths)
        .output()
        .expect("b3sum installed (apt-get install b3sum)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").expect("b3sum line");
            (PathBuf::from(p), h.to_string())
        })
        .collect()
}

/// Every file under `root`, relative (empty when `root` is missing).
pub fn files_under(root: &Path) -> std::collections::BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            e.path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}
