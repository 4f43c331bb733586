//! Issue 2: hostile archives (absolute paths, `..`, symlink and hard-link
//! escapes, device nodes) are refused by restore and verify, and nothing is
//! written outside the destination. Archives are crafted with Python's
//! tarfile and the zstd CLI, independently of backupctl.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Build `<target>/<policy>/archives/<hash>.tar.zst` from a Python tarfile
/// script and a manifest pointing at it.
fn plant(s: &Setup, target: &str, py_entries: &str) {
    let root = s.target_dir(target);
    let dir = root.join("evil/archives");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(root.join("evil/snapshots")).unwrap();
    // An initialised target (what `backupctl init` writes).
    std::fs::write(root.join("backupctl-target.json"), "{}\n").unwrap();
    let tar = s.path("evil.tar");
    let script = format!(
        "import tarfile, io\nt = tarfile.open({tar:?}, 'w', format=tarfile.GNU_FORMAT)\ndef f(name, data=b'pwned'):\n    i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))\ndef l(name, target, kind=tarfile.SYMTYPE):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; t.addfile(i)\ndef d(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\ndef dev(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)\n{py_entries}\nt.close()\n",
        tar = tar.to_str().unwrap()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let zst = s.path("evil.tar.zst");
    let st = Command::new("zstd")
        .arg("-q")
        .arg("-f")
        .arg(&tar)
        .arg("-o")
        .arg(&zst)
        .status()
        .unwrap();
    assert!(st.success());
    let hash = b3sum(&zst);
    let size = std::fs::metadata(&zst).unwrap().len();
    std::fs::copy(&zst, dir.join(format!("{hash}.tar.zst"))).unwrap();
    let manifest = serde_json::json!({
        "format": "backupctl-snapshot", "schema_version": 1, "policy": "evil",
        "id": "20260101T000000Z-deadbeef", "time": "2026-01-01T00:00:00Z", "host": "attacker",
        "tool_version": "0", "sources": [{
            "name": "site", "type": "files", "origin": "/", "archive_hash": hash,
            "archive_size": size, "tar_size": 0, "content_size": 5, "entries": 1, "files": []
        }]
    });
    // Signed with the host's own key: these archives test extraction
    // safety behind authentication (defence in depth).
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let key = host_key(s);
    std::fs::write(
        root.join("evil/snapshots/20260101T000000Z-deadbeef.sig"),
        key.sign_manifest("evil", "20260101T000000Z-deadbeef", &bytes),
    )
    .unwrap();
    std::fs::write(
        root.join("evil/snapshots/20260101T000000Z-deadbeef.json"),
        bytes,
    )
    .unwrap();
}

fn setup() -> Setup {
    let s = Setup::new();
    s.fs_config(&["t"]);
    std::fs::create_dir_all(s.path("src")).unwrap();
    s.write("policies/evil.toml", &format!("targets = [\"t\"]\n[retention]\nlast = 1\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n", s.path("src").display()));
    s
}

/// Files anywhere under `root` except inside `inside`.
fn files_outside(root: &Path, inside: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !e.path().starts_with(inside))
        .filter(|e| e.file_name().to_string_lossy().contains("pwned"))
        .map(|e| e.path().display().to_string())
        .collect()
}

fn assert_refused(entries: &str, expect: &str) {
    let s = setup();
    plant(&s, "t", entries);
    let out = s.path("restore/dest");
    let o = s.run(&["restore", "evil", "--to", out.to_str().unwrap()]);
    assert_eq!(
        code(&o),
        1,
        "restore must fail: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(expect),
        "error should mention {expect:?}: {}",
        stderr(&o)
    );
    assert!(
        files_outside(s.dir.path(), &out).is_empty(),
        "nothing written outside: {:?}",
        files_outside(s.dir.path(), &out)
    );
    assert!(!Path::new("/tmp/pwned-backupctl").exists());
    assert!(
        !out.join("site").exists(),
        "a refused archive is not put in place"
    );
    let o = s.run(&["verify"]);
    assert_eq!(code(&o), 1, "verify must fail: {}", stdout(&o));
    assert!(files_outside(s.dir.path(), &out).is_empty());
}

#[test]
fn parent_dir_components_are_refused() {
    assert_refused(
        "f('ok.txt', b'fine')\nf('../pwned-parent')\nf('a/../../pwned-parent2')",
        "..",
    );
}

#[test]
fn absolute_paths_are_refused() {
    assert_refused("f('/tmp/pwned-backupctl')", "absolute");
}

#[test]
fn symlink_escape_is_refused() {
    assert_refused(
        "l('link', '../..')\nf('link/pwned-through-link')",
        "outside the destination",
    );
}

#[test]
fn absolute_symlink_then_write_through_it_is_refused() {
    assert_refused(
        "l('etc', '/tmp')\nf('etc/pwned-backupctl')",
        "outside the destination",
    );
}

#[test]
fn inner_symlink_cannot_be_written_through() {
    // The link itself stays inside, but writing through it is still refused.
    assert_refused(
        "d('real')\nl('alias', 'real')\nf('alias/pwned-via-alias')",
        "symbolic link",
    );
}

#[test]
fn hardlink_escape_is_refused() {
    assert_refused("l('hl', '../../etc/passwd', tarfile.LNKTYPE)", "hard link");
}

#[test]
fn hardlink_to_unknown_target_is_refused() {
    assert_refused("l('hl', 'etc/passwd', tarfile.LNKTYPE)", "hard link");
}

#[test]
fn device_nodes_are_refused() {
    assert_refused("dev('null')", "device");
}
