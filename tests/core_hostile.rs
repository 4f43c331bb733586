//! Issues 2 and 9: hostile archives (absolute paths, `..`, writes through
//! symbolic links however chained, hard-link escapes, device nodes,
//! decompression bombs, oversized manifests) are refused by restore and
//! verify, nothing is written outside the destination, and a refused copy
//! fails over to the next target; verify's scratch area cannot be taken
//! over. Archives are crafted with Python's tarfile, the zstd CLI and raw
//! zstd frames, independently of backupctl.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Python helpers shared by the hostile-archive builders: `f` (file), `l`
/// (link), `d` (directory), `dev` (device node); every regular file is
/// remembered in `files` (name, data) for the manifest.
const PY_HELPERS: &str = "import tarfile, io, json, sys\nfiles = []\ndef f(name, data=b'pwned'):\n    i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data)); files.append((name, data.hex()))\ndef l(name, target, kind=tarfile.SYMTYPE):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; t.addfile(i)\ndef d(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\ndef dev(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)\n";

/// Build a `.tar.zst` from Python tarfile entries; returns (path of the
/// .tar.zst, tar size, the regular files as (name, content)).
fn build_archive(s: &Setup, py_entries: &str) -> (std::path::PathBuf, u64, Vec<(String, Vec<u8>)>) {
    let tar = s.path("evil.tar");
    let list = s.path("evil.files.json");
    let script = format!(
        "{PY_HELPERS}t = tarfile.open({tar:?}, 'w', format=tarfile.GNU_FORMAT)\n{py_entries}\nt.close()\njson.dump(files, open({list:?}, 'w'))\n",
        tar = tar.to_str().unwrap(),
        list = list.to_str().unwrap()
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
    let files: Vec<(String, String)> =
        serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    let files = files
        .into_iter()
        .map(|(n, hex)| {
            let data = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (n, data)
        })
        .collect();
    (zst, std::fs::metadata(&tar).unwrap().len(), files)
}

/// Build `<target>/<policy>/archives/<hash>.tar.zst` from a Python tarfile
/// script and a manifest pointing at it, recording the true sizes and every
/// regular file (so what is refused is refused for its paths, not for
/// disagreeing with the manifest).
fn plant(s: &Setup, target: &str, py_entries: &str) {
    let root = s.target_dir(target);
    let dir = root.join("evil/archives");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(root.join("evil/snapshots")).unwrap();
    // An initialised target (what `backupctl init` writes).
    std::fs::write(root.join("backupctl-target.json"), "{}\n").unwrap();
    let (zst, tar_size, files) = build_archive(s, py_entries);
    let hash = b3sum(&zst);
    let size = std::fs::metadata(&zst).unwrap().len();
    std::fs::copy(&zst, dir.join(format!("{hash}.tar.zst"))).unwrap();
    let records: Vec<serde_json::Value> = files
        .iter()
        .map(|(n, data)| {
            serde_json::json!({"path": n.trim_start_matches("./"), "size": data.len(),
                "blake3": blake3::hash(data).to_hex().to_string()})
        })
        .collect();
    let manifest = serde_json::json!({
        "format": "backupctl-snapshot", "schema_version": 1, "policy": "evil",
        "id": "20260101T000000Z-deadbeef", "time": "2026-01-01T00:00:00Z", "host": "attacker",
        "tool_version": "0", "sources": [{
            "name": "site", "type": "files", "origin": "/", "archive_hash": hash,
            "archive_size": size, "tar_size": tar_size,
            "content_size": files.iter().map(|f| f.1.len()).sum::<usize>(),
            "entries": 1, "files": records
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
        "symbolic link",
    );
}

#[test]
fn absolute_symlink_then_write_through_it_is_refused() {
    assert_refused(
        "l('etc', '/tmp')\nf('etc/pwned-backupctl')",
        "symbolic link",
    );
}

#[test]
fn relative_link_chain_to_outside_then_write_through_it_is_refused() {
    // Each link stays inside by its text (d1/up -> .., up2 -> d1/up/..), but
    // together up2 resolves to the destination's parent.
    assert_refused(
        "d('d1')\nl('d1/up', '..')\nl('up2', 'd1/up/..')\nl('shadow', 'up2/../../../../etc/shadow')\nf('up2/pwned-chain')",
        "symbolic link",
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

// ---------------------------------------------------------------------------
// Copies that lie about their size, and extraction failures: fail over.

/// Pseudo-random (incompressible) bytes.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

/// A real backup of a small tree to targets alpha and beta; returns the
/// setup, the source and alpha's archive.
fn two_target_backup() -> (Setup, std::path::PathBuf, std::path::PathBuf) {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("data.txt"), "hello\n").unwrap();
    // 2 MiB in two files (a file write limit of 4 MiB still lets them restore).
    std::fs::write(src.join("sub/noise.bin"), noise(1 << 20, 7)).unwrap();
    std::fs::write(src.join("sub/noise2.bin"), noise(1 << 20, 8)).unwrap();
    s.fs_config(&["alpha", "beta"]);
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    expect_code(&s.run(&["run"]), 0);
    let a = archives(&s.target_dir("alpha"), "shop").remove(0);
    (s, src, a)
}

enum Part {
    Raw(Vec<u8>),
    Zeros(u64),
}

/// One zstd frame of raw and RLE blocks (no compression needed: an RLE
/// block of 4 bytes stands for 128 KiB), padded with a skippable frame to
/// exactly `size` bytes.
fn zstd_frames(parts: &[Part], size: u64) -> Vec<u8> {
    const MAX: u64 = 128 << 10;
    let mut blocks: Vec<(u8, u64, Vec<u8>)> = Vec::new();
    for p in parts {
        match p {
            Part::Raw(d) => {
                for c in d.chunks(MAX as usize) {
                    blocks.push((0, c.len() as u64, c.to_vec()));
                }
            }
            Part::Zeros(mut n) => {
                while n > 0 {
                    let k = n.min(MAX);
                    blocks.push((1, k, vec![0]));
                    n -= k;
                }
            }
        }
    }
    // magic, frame header descriptor (no content size, no checksum), window 128 KiB
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let last = blocks.len() - 1;
    for (i, (kind, n, data)) in blocks.into_iter().enumerate() {
        let h = (i == last) as u64 | (kind as u64) << 1 | n << 3;
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(&data);
    }
    assert!(
        out.len() as u64 + 8 <= size,
        "bomb of {} bytes does not fit in {size}",
        out.len()
    );
    let pad = size - out.len() as u64 - 8;
    out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    out.extend_from_slice(&(pad as u32).to_le_bytes());
    out.extend(std::iter::repeat_n(0u8, pad as usize));
    out
}

/// Run backupctl with file writes limited to a few MiB (`ulimit -f`): a
/// write beyond that kills it (SIGXFSZ), so passing proves the bound.
fn run_limited(s: &Setup, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 8192 && exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .arg("--config")
        .arg(s.config_path())
        .args(args)
        .env_remove("BACKUPCTL_CONFIG")
        .output()
        .unwrap()
}

fn assert_restored_from_beta(s: &Setup, src: &Path, expect: &str) {
    let out = s.path("out");
    let t = std::time::Instant::now();
    let o = run_limited(
        s,
        &["restore", "shop", "--to", out.to_str().unwrap(), "--json"],
    );
    expect_code(&o, 0);
    assert!(
        t.elapsed().as_secs() < 60,
        "stopped early: {:?}",
        t.elapsed()
    );
    assert_eq!(json(&o)["sources"][0]["target"], "beta", "{}", stderr(&o));
    assert!(
        stderr(&o).contains("target alpha") && stderr(&o).contains(expect),
        "the warning names alpha and says {expect:?}: {}",
        stderr(&o)
    );
    assert_same_tree(src, &out.join("site"));
    let o = run_limited(s, &["verify", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let targets = j[0]["snapshots"][0]["targets"].as_array().unwrap();
    let by = |n: &str| targets.iter().find(|t| t["target"] == n).unwrap().clone();
    assert_eq!(by("beta")["result"], "ok");
    assert_eq!(by("alpha")["result"], "failed");
    let problems = by("alpha")["archives"][0]["problems"].to_string();
    assert!(problems.contains(expect), "{problems}");
}

#[test]
fn zstd_bomb_announcing_more_than_recorded_stops_at_the_header_and_fails_over() {
    let (s, src, alpha) = two_target_backup();
    let size = std::fs::metadata(&alpha).unwrap().len();
    // A 1 GiB "data.txt" (recorded: 6 bytes) in ~33 KB, the exact size of
    // the real archive under its real name: the listing cannot tell.
    let mut h = tar::Header::new_gnu();
    h.set_path("data.txt").unwrap();
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let bomb = zstd_frames(
        &[
            Part::Raw(h.as_bytes().to_vec()),
            Part::Zeros((1 << 30) + 1024),
        ],
        size,
    );
    std::fs::write(&alpha, bomb).unwrap();
    assert_restored_from_beta(
        &s,
        &src,
        "announces 1073741824 bytes, the manifest records 6",
    );
}

#[test]
fn zstd_bomb_longer_than_the_recorded_tar_stream_stops_early_and_fails_over() {
    let (s, src, alpha) = two_target_backup();
    let size = std::fs::metadata(&alpha).unwrap().len();
    // 4 GiB of zeros: a tar stream that ends at once, then goes on and on.
    let bomb = zstd_frames(&[Part::Zeros(4 << 30)], size);
    std::fs::write(&alpha, bomb).unwrap();
    assert_restored_from_beta(&s, &src, "decompresses to more than its recorded tar size");
}

#[test]
fn a_copy_larger_than_recorded_is_not_read_to_its_end() {
    let (s, src, alpha) = two_target_backup();
    // The real archive followed by 64 MiB: refused once past the recorded size.
    let mut data = std::fs::read(&alpha).unwrap();
    data.extend(std::iter::repeat_n(0u8, 64 << 20));
    std::fs::write(&alpha, data).unwrap();
    assert_restored_from_beta(&s, &src, "more than the recorded");
}

#[test]
fn an_extraction_failure_on_the_first_target_fails_over_to_the_second() {
    let (s, src, alpha) = two_target_backup();
    // A directory name no file system accepts (300 bytes): before, a fatal
    // "local" error that stopped the restore.
    let (zst, _, _) = build_archive(
        &s,
        &format!("d('{}')\nf('data.txt', b'hello\\n')", "x".repeat(300)),
    );
    std::fs::copy(&zst, &alpha).unwrap();
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["sources"][0]["target"], "beta");
    assert!(
        stderr(&o).contains("target alpha") && stderr(&o).contains("cannot be restored"),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&src, &out.join("site"));
}

#[test]
fn an_oversized_manifest_is_refused() {
    let (s, _src, _alpha) = two_target_backup();
    let big = format!(
        "{{\"format\":\"backupctl-snapshot\",\"schema_version\":1,\"policy\":\"shop\",\"id\":\"20990101T000000Z-0badf00d\",\"host\":\"{}\"}}",
        "x".repeat(65 << 20)
    );
    std::fs::write(
        s.target_dir("alpha")
            .join("shop/snapshots/20990101T000000Z-0badf00d.json"),
        big,
    )
    .unwrap();
    let o = s.run(&["verify", "--json"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("64 MiB limit"), "{}", stdout(&o));
    let out = s.path("out");
    let o = s.run(&[
        "restore",
        "shop",
        "20990101T000000Z-0badf00d",
        "--to",
        out.to_str().unwrap(),
    ]);
    expect_code(&o, 1);
    // The good snapshot still restores.
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
}

// ---------------------------------------------------------------------------
// verify's scratch area.

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_scratch_dir_others_can_write_or_swap_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    s.fs_config(&["t"]);
    let scratch = s.path("var-tmp/backupctl");
    s.files_policy(
        "shop",
        &src,
        &["t"],
        &format!("[verify]\nscratch_dir = \"{}\"\n", scratch.display()),
    );
    expect_code(&s.run(&["run"]), 0);
    let refused = |why: &str| {
        let o = s.run(&["verify"]);
        expect_code(&o, 2);
        let e = stderr(&o) + &stdout(&o);
        assert!(e.contains("[verify] scratch_dir"), "names the key: {e}");
        assert!(e.contains("policies/shop.toml"), "names the file: {e}");
        assert!(e.contains(why), "says why ({why}): {e}");
    };
    // Pre-created world-writable (the /var/tmp attack).
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("world-writable");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "nothing unpacked there"
    );
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o770)).unwrap();
    refused("group- or world-writable");
    // A symbolic link to a private directory.
    std::fs::remove_dir(&scratch).unwrap();
    std::fs::create_dir_all(s.path("elsewhere")).unwrap();
    std::fs::set_permissions(s.path("elsewhere"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(s.path("elsewhere"), &scratch).unwrap();
    refused("symbolic link");
    std::fs::remove_file(&scratch).unwrap();
    if running_as_root() {
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&scratch, Some(65534), Some(65534)).unwrap();
        refused("owned by uid 65534");
        std::fs::remove_dir(&scratch).unwrap();
    }
    // Not there yet: created 0700 and used.
    let o = s.run(&["verify"]);
    expect_code(&o, 0);
    assert_eq!(mode_of(&scratch), 0o700);
    // The default (<state_dir>/scratch) is created 0700 too.
    s.files_policy("shop", &src, &["t"], "");
    expect_code(&s.run(&["verify"]), 0);
    assert_eq!(mode_of(&s.path("state/scratch")), 0o700);
}

/// Verify reads the archive from a FIFO the test feeds, so the scratch tree
/// can be inspected (and attacked) while verify is half-way through it.
#[test]
fn verify_unpacks_into_a_fresh_private_directory_never_setuid_and_never_through_a_swap() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("b-shared")).unwrap();
    std::fs::write(src.join("a-suid"), "#!/bin/sh\necho root\n").unwrap();
    std::fs::write(src.join("z-big.bin"), noise(4 << 20, 3)).unwrap();
    std::fs::set_permissions(src.join("a-suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(
        src.join("b-shared"),
        std::fs::Permissions::from_mode(0o2775),
    )
    .unwrap();
    if running_as_root() {
        std::os::unix::fs::chown(src.join("a-suid"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(src.join("b-shared"), Some(65534), Some(65534)).unwrap();
        // chown clears the bits: set them again.
        std::fs::set_permissions(src.join("a-suid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::set_permissions(
            src.join("b-shared"),
            std::fs::Permissions::from_mode(0o2775),
        )
        .unwrap();
    }
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    expect_code(&s.run(&["run"]), 0);
    let scratch = s.path("state/scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
    let before: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Serve the archive through a FIFO.
    let arch = archives(&s.target_dir("t"), "shop").remove(0);
    let bytes = std::fs::read(&arch).unwrap();
    std::fs::remove_file(&arch).unwrap();
    let st = Command::new("mkfifo").arg(&arch).status().unwrap();
    assert!(st.success());
    let child = s
        .cmd()
        .args(["verify", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let feeder = {
        let arch = arch.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&arch).unwrap();
            let half = bytes.len() / 2;
            f.write_all(&bytes[..half]).unwrap();
            f.flush().unwrap();
            go_rx.recv().unwrap();
            f.write_all(&bytes[half..]).unwrap();
        })
    };
    // Wait until verify has written a-suid and started on z-big.bin.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let work = loop {
        let found = std::fs::read_dir(&scratch)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("z-big.bin").exists());
        if let Some(w) = found {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verify never got to z-big.bin"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // A fresh directory of its own: new, 0700, owned by the user running verify.
    assert!(!before.contains(&work), "an existing path is never reused");
    assert!(
        work.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("verify-"),
        "{}",
        work.display()
    );
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let m = std::fs::symlink_metadata(&work).unwrap();
    assert!(m.is_dir() && !m.file_type().is_symlink());
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!(m.uid(), me);
    // No ownership and no setuid/setgid in the scratch tree.
    let suid = std::fs::symlink_metadata(work.join("a-suid")).unwrap();
    assert_eq!(
        suid.permissions().mode() & 0o6000,
        0,
        "setuid never applied by verify"
    );
    assert_eq!(suid.uid(), me, "ownership never applied by verify");
    assert_eq!(mode_of(&work.join("b-shared")) & 0o6000, 0);
    // Even if the directory is swapped for a link (which the 0700 scratch
    // root forbids other users), verify keeps writing through its descriptor.
    let moved = s.path("moved-away");
    let attacker = s.path("attacker-dir");
    std::fs::create_dir_all(&attacker).unwrap();
    std::fs::rename(&work, &moved).unwrap();
    std::os::unix::fs::symlink(&attacker, &work).unwrap();
    go_tx.send(()).unwrap();
    feeder.join().unwrap();
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 0);
    assert_eq!(
        std::fs::read_dir(&attacker).unwrap().count(),
        0,
        "nothing written through the swapped path"
    );
    assert_eq!(
        std::fs::metadata(moved.join("z-big.bin")).unwrap().len(),
        4 << 20
    );
    assert!(
        !work.exists()
            || std::fs::symlink_metadata(&work)
                .unwrap()
                .file_type()
                .is_symlink()
    );
}
