//! Issues 2 and 9: hostile archives (absolute paths, `..`, writes through
//! symbolic links however chained, hard-link escapes, device nodes,
//! decompression bombs, oversized manifests) are refused by restore and
//! verify, nothing is written outside the destination, and a refused copy
//! fails over to the next target; verify's scratch area cannot be taken
//! over. Format v2: tar streams are crafted with Python's tarfile and
//! planted as packs and extent lists; bombs and swapped frames are raw zstd
//! frames written into packs with backupctl's `PackBuilder` under the same
//! index (so the pack's name, the list and the signed manifest all still
//! agree and only the frames lie); hostile extent lists are written by hand.

use crate::common;
use backupctl::pack::format::{Entry, FrameEncoder, Kind, PackBuilder, PackIndex};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Python helpers shared by the hostile-archive builders: `f` (file), `l`
/// (link), `d` (directory), `dev` (device node); every regular file is
/// remembered in `files` (name, data) for the file index.
const PY_HELPERS: &str = "import tarfile, io, json, sys\nfiles = []\ndef f(name, data=b'pwned'):\n    i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data)); files.append((name, data.hex()))\ndef l(name, target, kind=tarfile.SYMTYPE):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; t.addfile(i)\ndef d(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\ndef dev(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)\n";

/// Build a tar stream from Python tarfile entries; returns the tar bytes
/// and the regular files as (name, content).
fn build_tar(s: &Setup, py_entries: &str) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let tar = s.path(&format!("evil-{}.tar", backupctl::util::random_hex(4)));
    let list = tar.with_extension("files.json");
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
    let bytes = std::fs::read(&tar).unwrap();
    std::fs::remove_file(&tar).unwrap();
    std::fs::remove_file(&list).unwrap();
    (bytes, files)
}

const EVIL_ID: &str = "20260101T000000Z-deadbeef";

/// Plant snapshot EVIL_ID of policy `evil` on `target`: the tar stream the
/// Python tarfile script makes, packed into a pack with its extent list, a
/// file index recording every regular file with its true size and hash
/// (so what is refused is refused for its paths, not for disagreeing with
/// the index), and a manifest signed with the host's own key: these
/// streams test extraction safety behind authentication (defence in depth).
fn plant(s: &Setup, target: &str, py_entries: &str) {
    let (tar, files) = build_tar(s, py_entries);
    plant_snapshot(
        &s.target_dir(target),
        "evil",
        EVIL_ID,
        "2026-01-01T00:00:00Z",
        Some(&host_key(s)),
        &[Planted::files("site", tar, &files)],
    );
}

fn setup() -> Setup {
    let s = Setup::new();
    s.fs_config(&["t"]);
    std::fs::create_dir_all(s.path("src")).unwrap();
    s.write("policies/evil.toml", &format!("targets = [\"t\"]\n[retention]\nlast = 1\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n", s.path("src").display()));
    s
}

/// Files anywhere under `root` except inside `inside` whose name says
/// "pwned".
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
// Copies whose frames or lists lie, and extraction failures: fail over.

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

const HONEST_TIME: &str = "2026-03-01T03:00:00Z";

/// A real backup of a small tree to targets alpha and beta; returns the
/// setup and the source.
fn two_target_backup() -> (Setup, PathBuf) {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("data.txt"), "hello\n").unwrap();
    // 2 MiB in two files (a file write limit of 4 MiB still lets them restore).
    std::fs::write(src.join("sub/noise.bin"), noise(1 << 20, 7)).unwrap();
    std::fs::write(src.join("sub/noise2.bin"), noise(1 << 20, 8)).unwrap();
    s.fs_config(&["alpha", "beta"]);
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    expect_code(&s.run(&["run", "--time", HONEST_TIME]), 0);
    (s, src)
}

/// The newest manifest's stream reference of source `site` on `target`.
fn stream_ref(target: &Path) -> serde_json::Value {
    let m = manifest(manifests(target, "shop").last().unwrap());
    source_record(&m, "site")["stream"].clone()
}

/// The pack on `target` holding most of the newest snapshot's tar stream.
fn stream_pack(target: &Path) -> PathBuf {
    let list = stream_ref(target)["list"].as_str().unwrap().to_string();
    packs_of_list(target, "shop", &list)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// A pack's name, bytes and index (checked against the name).
fn read_pack(path: &Path) -> (String, Vec<u8>, PackIndex) {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(path).unwrap();
    let idx = PackIndex::from_tail(&bytes, bytes.len() as u64, &name)
        .unwrap()
        .unwrap();
    (name, bytes, idx)
}

/// Rewrite the pack at `path` frame by frame (`swap` returns a replacement
/// frame or None) with PackBuilder, recording every chunk's id, kind and
/// lengths as before: the index, hence the pack's name, the extent lists
/// and the signed manifest, still agree; only the frames lie. Returns how
/// many frames were swapped.
fn rewrite_pack(
    path: &Path,
    mut swap: impl FnMut(usize, &Entry, &[u8]) -> Option<Vec<u8>>,
) -> usize {
    let (name, bytes, idx) = read_pack(path);
    let mut b = PackBuilder::new();
    let mut swapped = 0;
    for (i, e) in idx.entries.iter().enumerate() {
        let f = &bytes[e.offset as usize..(e.offset + e.clen) as usize];
        let frame = match swap(i, e, f) {
            Some(x) => {
                assert_eq!(x.len(), e.clen as usize, "a swapped frame keeps its length");
                swapped += 1;
                x
            }
            None => f.to_vec(),
        };
        b.push(e.id, e.kind, e.len, &frame);
    }
    let (new_name, new_bytes, _) = b.finish();
    assert_eq!(new_name, name, "the pack's index (and name) is unchanged");
    assert_eq!(new_bytes.len(), bytes.len());
    std::fs::write(path, new_bytes).unwrap();
    swapped
}

/// The largest content frame of the pack (the most room for a bomb).
fn largest_content_frame(path: &Path) -> (usize, Entry) {
    let (_, _, idx) = read_pack(path);
    idx.entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::Content)
        .max_by_key(|(_, e)| e.clen)
        .map(|(i, e)| (i, *e))
        .unwrap()
}

const BLOCK: u64 = 128 << 10;

/// One zstd frame of exactly `size` bytes, made of raw blocks (zeros) and
/// then `rle` RLE blocks (each 4 bytes standing for 128 KiB of zeros):
/// no compression needed. With `announce`, the frame header records the
/// frame's whole content size; without, the size is unknown until the end.
/// Returns the frame and the bytes it decompresses to.
fn zstd_frame(size: usize, mut rle: u64, announce: bool) -> (Vec<u8>, u64) {
    let head = if announce { 4 + 1 + 1 + 8 } else { 4 + 1 + 1 };
    loop {
        assert!(
            head as u64 + 4 * rle <= size as u64,
            "no room for {rle} RLE blocks in {size}"
        );
        let budget = size as u64 - head as u64 - 4 * rle;
        // raw blocks of at most 128 KiB, 3 header bytes each
        let n = budget.div_ceil(BLOCK + 3);
        if budget > 0 && budget < n * 3 + (n - 1) * BLOCK {
            rle -= 1;
            continue;
        }
        let mut blocks: Vec<(u64, u64)> = Vec::new(); // (type, size)
        let mut left = budget;
        for i in 0..n {
            let k = if i + 1 == n { left - 3 } else { BLOCK };
            blocks.push((0, k));
            left -= k + 3;
        }
        blocks.extend(std::iter::repeat_n((1, BLOCK), rle as usize));
        let content: u64 = blocks.iter().map(|b| b.1).sum();
        // magic, frame header descriptor (no checksum), window 128 KiB
        let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
        if announce {
            out.extend_from_slice(&[0xc0, 0x38]);
            out.extend_from_slice(&content.to_le_bytes());
        } else {
            out.extend_from_slice(&[0x00, 0x38]);
        }
        let last = blocks.len() - 1;
        for (i, (kind, n)) in blocks.into_iter().enumerate() {
            let h = (i == last) as u64 | kind << 1 | n << 3;
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            if kind == 0 {
                out.extend(std::iter::repeat_n(0u8, n as usize));
            } else {
                out.push(0);
            }
        }
        assert_eq!(out.len(), size);
        return (out, content);
    }
}

#[test]
fn the_crafted_zstd_frames_are_what_they_claim() {
    // The bombs below are judged by the real zstd CLI, not by backupctl.
    let s = Setup::new();
    for (size, rle, announce) in [(70_000, 100, true), (300_000, 7, false), (200, 0, false)] {
        let (frame, content) = zstd_frame(size, rle, announce);
        let p = s.path("frame.zst");
        std::fs::write(&p, &frame).unwrap();
        let o = Command::new("zstd")
            .args(["-dc", "-q"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout.len() as u64, content);
        assert!(o.stdout.iter().all(|b| *b == 0));
    }
}

/// Run backupctl with file writes limited to a few MiB (`ulimit -f`; a
/// write beyond that kills it, SIGXFSZ) and its address space to 1 GiB
/// (`ulimit -v`; a decompression into memory of what a bomb says would
/// fail), under a time limit: passing proves the bounds.
fn run_limited(s: &Setup, args: &[&str]) -> std::process::Output {
    bin_via(
        "sh",
        &[
            "-c",
            "ulimit -f 8192 && ulimit -v 1048576 && exec timeout 120 \"$@\"",
            "sh",
        ],
    )
    .arg("--config")
    .arg(s.config_path())
    .args(args)
    .output()
    .unwrap()
}

/// Every file under the setup's directory except `--to` and the state
/// directory (which restore updates): path -> (size, BLAKE3).
fn everything_but(s: &Setup, out: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    walkdir::WalkDir::new(s.dir.path())
        .into_iter()
        .filter_entry(|e| e.path() != out && e.path() != s.path("state"))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            // Sparse giants are compared by size only.
            let h = if m.len() > 256 << 20 {
                String::new()
            } else {
                blake3::hash(&std::fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string()
            };
            (e.path().to_path_buf(), (m.len(), h))
        })
        .collect()
}

/// Restore (under the limits) into a fresh `--to`: the output, the
/// directory, and whether anything outside it changed.
fn restore_limited(s: &Setup, args: &[&str]) -> (std::process::Output, PathBuf) {
    let out = s.path(&format!("out-{}", backupctl::util::random_hex(4)));
    let before = everything_but(s, &out);
    let mut a = vec!["restore", "shop", "--to", out.to_str().unwrap(), "--json"];
    a.extend_from_slice(args);
    let t = std::time::Instant::now();
    let o = run_limited(s, &a);
    assert!(
        t.elapsed().as_secs() < 60,
        "stopped early: {:?}",
        t.elapsed()
    );
    assert_eq!(
        everything_but(s, &out),
        before,
        "nothing outside --to is written or changed"
    );
    assert!(files_outside(s.dir.path(), &out).is_empty());
    (o, out)
}

/// Restore succeeds (served by `served_by` when given) and warns about
/// alpha saying `warn`; alpha alone cannot serve the snapshot (saying
/// `expect`); verify finds alpha's copy failed (saying `expect`) and beta's
/// intact.
fn assert_failed_over(s: &Setup, src: &Path, expect: &str, served_by: Option<&str>, warn: &str) {
    let (o, out) = restore_limited(s, &[]);
    expect_code(&o, 0);
    if let Some(t) = served_by {
        assert_eq!(json(&o)["sources"][0]["target"], t, "{}", stderr(&o));
    }
    assert!(
        stderr(&o).contains("target alpha") && stderr(&o).contains(warn),
        "the warning names alpha and says {warn:?}: {}",
        stderr(&o)
    );
    assert_same_tree(src, &out.join("site"));
    // alpha alone cannot serve it.
    let (o, out) = restore_limited(s, &["--target", "alpha"]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains(expect), "{}", stderr(&o));
    assert!(!out.exists());
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

/// The same, every byte of the snapshot served by beta.
fn assert_restored_from_beta(s: &Setup, src: &Path, expect: &str) {
    assert_failed_over(s, src, expect, Some("beta"), expect)
}

#[test]
fn zstd_bomb_announcing_more_than_recorded_stops_at_the_header_and_fails_over() {
    let (s, src) = two_target_backup();
    let pack = stream_pack(&s.target_dir("alpha"));
    let (at, e) = largest_content_frame(&pack);
    // A frame announcing 2 GiB (its index entry records e.len bytes, at most
    // 256 KiB) in the very bytes of a real chunk's frame, under the real
    // pack's name: the listing, the index and the extent list cannot tell.
    let (bomb, content) = zstd_frame(e.clen as usize, (2u64 << 30) / BLOCK, true);
    assert!(content >= 2 << 30 && content > 1000 * e.len as u64);
    assert_eq!(
        rewrite_pack(&pack, |i, _, _| (i == at).then(|| bomb.clone())),
        1
    );
    assert_restored_from_beta(&s, &src, "does not decompress");
}

#[test]
fn zstd_bomb_longer_than_the_recorded_tar_stream_stops_early_and_fails_over() {
    let (s, src) = two_target_backup();
    let pack = stream_pack(&s.target_dir("alpha"));
    let (at, e) = largest_content_frame(&pack);
    let recorded = stream_ref(&s.target_dir("alpha"))["size"].as_u64().unwrap();
    // Zeros (no size announced) far beyond the whole recorded tar stream,
    // as many as the real frame's bytes can hold.
    let rle = (e.clen as u64 - 12) / 4;
    let (bomb, content) = zstd_frame(e.clen as usize, rle, false);
    assert!(content >= 2 << 30 && content > 1000 * recorded, "{content}");
    assert_eq!(
        rewrite_pack(&pack, |i, _, _| (i == at).then(|| bomb.clone())),
        1
    );
    assert_restored_from_beta(&s, &src, "does not decompress");
}

/// Grow a file to `len` bytes without writing them (a sparse hole).
fn grow_sparse(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_copy_larger_than_recorded_is_not_read_to_its_end() {
    let (s, src) = two_target_backup();
    let alpha = s.target_dir("alpha");
    // The real pack followed by a 1 TiB hole: reading it to its end would
    // take far beyond the time limit.
    let pack = stream_pack(&alpha);
    let honest = std::fs::read(&pack).unwrap();
    grow_sparse(&pack, 1 << 40);
    // (Its index is read from beta; its frames, checked against that
    // index, may still come from alpha.)
    let name = pack.file_stem().unwrap().to_string_lossy().into_owned();
    let damaged = format!("target alpha: pack {name} is damaged");
    assert_failed_over(&s, &src, "pack larger than any pack", None, &damaged);
    std::fs::write(&pack, &honest).unwrap();
    // Below the largest pack: the index is read from the (wrong) tail only.
    let mut padded = honest.clone();
    padded.extend(std::iter::repeat_n(0u8, 32 << 20));
    std::fs::write(&pack, &padded).unwrap();
    assert_failed_over(&s, &src, "missing end marker", None, &damaged);
    std::fs::write(&pack, &honest).unwrap();
    // The extent list served larger than the manifest records (1 TiB):
    // refused after the recorded size, the list read from beta.
    let list = list_path(&alpha, "shop", stream_ref(&alpha)["list"].as_str().unwrap());
    let honest_list = std::fs::read(&list).unwrap();
    grow_sparse(&list, 1 << 40);
    let (o, out) = restore_limited(&s, &[]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // alpha alone holds no readable list for it.
    let (o, out) = restore_limited(&s, &["--target", "alpha"]);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("no complete snapshot"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = run_limited(&s, &["verify", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let targets = j[0]["snapshots"][0]["targets"].as_array().unwrap();
    let by = |n: &str| targets.iter().find(|t| t["target"] == n).unwrap().clone();
    assert_eq!(by("beta")["result"], "ok");
    assert!(
        by("alpha")["archives"][0]["problems"]
            .to_string()
            .contains("larger than"),
        "{j}"
    );
    std::fs::write(&list, &honest_list).unwrap();
    expect_code(&run_limited(&s, &["verify"]), 0);
}

/// A zstd frame of `data` (made by the zstd CLI, no content size, no
/// checksum) padded to exactly `size` bytes with empty blocks (3-byte raw
/// and 4-byte RLE blocks of no content): it still decompresses to `data`.
fn padded_frame(s: &Setup, data: &[u8], size: usize) -> Vec<u8> {
    let p = s.path("padded.bin");
    std::fs::write(&p, data).unwrap();
    let o = Command::new("zstd")
        .args(["-19", "-q", "-c", "--no-check", "--no-content-size"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut f = o.stdout;
    assert_eq!(f[4] & 0xe7, 0, "no content size, dictionary or checksum");
    // Clear the last-block flag of the final block.
    let mut at = 6;
    loop {
        let h = u32::from_le_bytes([f[at], f[at + 1], f[at + 2], 0]);
        let (last, kind, n) = (h & 1, (h >> 1) & 3, (h >> 3) as usize);
        if last == 1 {
            f[at] &= !1;
            break;
        }
        at += 3 + if kind == 1 { 1 } else { n };
    }
    assert!(
        f.len() + 3 <= size,
        "{} bytes do not fit in {size}",
        f.len()
    );
    let mut pad = size - f.len();
    let mut blocks = Vec::new();
    while !pad.is_multiple_of(3) {
        blocks.push(vec![0x02, 0, 0, 0]); // RLE, no content
        pad -= 4;
    }
    blocks.extend(std::iter::repeat_n(vec![0u8, 0, 0], pad / 3)); // raw, no content
    blocks.last_mut().unwrap()[0] |= 1;
    f.extend(blocks.concat());
    assert_eq!(f.len(), size);
    f
}

#[test]
fn an_extraction_failure_on_the_first_target_fails_over_to_the_second() {
    let (s, src) = two_target_backup();
    // A directory name no file system accepts (300 bytes), where the
    // stream's first headers are (same length): before, a fatal "local"
    // error that stopped the restore. Its chunk check refuses it before
    // the unpacker sees it, and beta serves.
    let (evil, _) = build_tar(
        &s,
        &format!("d('{}')\nf('data.txt', b'hello\\n')", "x".repeat(300)),
    );
    let pack = stream_pack(&s.target_dir("alpha"));
    let (_, _, idx) = read_pack(&pack);
    let first = idx.entries[0];
    assert_eq!(first.kind, Kind::Header);
    let frame = padded_frame(&s, &evil[..first.len as usize], first.clen as usize);
    assert_eq!(
        rewrite_pack(&pack, |i, _, _| (i == 0).then(|| frame.clone())),
        1
    );
    let (o, out) = restore_limited(&s, &[]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["sources"][0]["target"], "beta");
    assert!(
        stderr(&o).contains("target alpha") && stderr(&o).contains("do not match the chunk id"),
        "{}",
        stderr(&o)
    );
    assert_same_tree(&src, &out.join("site"));

    // An authentic stream that cannot be unpacked here is refused like a
    // damaged copy (exit 1, "cannot be restored"), not a local error, and
    // leaves nothing behind.
    let id = "20260302T030000Z-0badc0de";
    for t in ["alpha", "beta"] {
        let (tar, files) = build_tar(
            &s,
            &format!("d('{}')\nf('data.txt', b'hello\\n')", "x".repeat(300)),
        );
        plant_snapshot(
            &s.target_dir(t),
            "shop",
            id,
            "2026-03-02T03:00:00Z",
            Some(&host_key(&s)),
            &[Planted::files("site", tar, &files)],
        );
    }
    let (o, out) = restore_limited(&s, &[id]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("cannot be restored"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("writing "), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn an_oversized_manifest_is_refused() {
    let (s, _src) = two_target_backup();
    let big = format!(
        "{{\"format\":\"backupctl-snapshot\",\"schema_version\":2,\"policy\":\"shop\",\"id\":\"20990101T000000Z-0badf00d\",\"host\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    std::fs::write(
        s.target_dir("alpha")
            .join("shop/snapshots/20990101T000000Z-0badf00d.json"),
        big,
    )
    .unwrap();
    let o = s.run(&["verify", "--json"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("1 MiB limit"), "{}", stdout(&o));
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
// Extent lists and packs that lie (format v2).

/// The listing's view of snapshot `id`: (targets complete, incomplete).
fn listed(s: &Setup, id: &str) -> (serde_json::Value, String) {
    let o = s.run(&["list", "--json"]);
    let j = json(&o);
    let snap = j[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {j}"))
        .clone();
    (snap["targets"].clone(), snap["incomplete"].to_string())
}

/// Signed with the host's key, on alpha only: a snapshot whose tar stream
/// (a "pwned" file) sits in a real pack outside `packs/`, named by an extent
/// list line that leaves `packs/` (`..`, another directory, an absolute
/// path). The list hashes to its name and the manifest is authentic: only
/// the line's path is wrong. It is refused (the snapshot is incomplete
/// there, its restore fails, nothing is read from that path) and restore
/// falls back to the honest snapshot beta serves.
#[test]
fn an_extent_list_naming_a_pack_outside_packs_is_refused_and_restore_fails_over() {
    let (s, src) = two_target_backup();
    let alpha = s.target_dir("alpha");
    // alpha holds nothing honest: beta alone serves the honest snapshot.
    let honest_id = manifests(&alpha, "shop")[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for ext in ["json", "sig"] {
        std::fs::remove_file(alpha.join(format!("shop/snapshots/{honest_id}.{ext}"))).unwrap();
    }
    // The hostile stream, packed in a scratch policy directory.
    let (tar, files) = build_tar(&s, "f('pwned-through-list', b'pwned')");
    let scratch = s.path("craft");
    let stream = plant_stream(&scratch, "p", &tar, 2);
    let line = std::fs::read_to_string(list_path(&scratch, "p", stream["list"].as_str().unwrap()))
        .unwrap();
    let (rel, rest) = line.split_once(' ').unwrap();
    let name = Path::new(rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pack_bytes = std::fs::read(scratch.join("p").join(rel)).unwrap();
    let hh = &name[..2];
    let outside = s.path("outside");
    for (n, path) in [
        format!("packs/../evil/{name}"),
        format!("../{name}"),
        format!("evil/{name}"),
        format!("packs/{hh}/../../evil/{name}"),
        format!("packs/{hh}/../../../{name}"),
        format!("{}/{name}", outside.display()),
        format!("packs/{hh}/x/../{name}"),
    ]
    .iter()
    .enumerate()
    {
        // A real pack wherever the path leads (from the policy directory).
        let at = alpha.join("shop").join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, &pack_bytes).unwrap();
        let text = format!("{path} {rest}");
        let list = blake3::hash(text.as_bytes()).to_hex().to_string();
        std::fs::write(list_path(&alpha, "shop", &list), &text).unwrap();
        // Planted with an empty stream, then pointed at the hostile list.
        let rec = Planted::files("site", Vec::new(), &files);
        let id = format!("20260302T03000{n}Z-0000000{n}");
        let mut m = plant_snapshot(
            &alpha,
            "shop",
            &id,
            &format!("2026-03-02T03:00:0{n}Z"),
            None,
            &[rec],
        );
        // The stream names the hostile list (the index stays honest).
        m["sources"][0]["stream"] = serde_json::json!({
            "size": tar.len(), "blake3": blake3::hash(&tar).to_hex().to_string(),
            "stored": stream["stored"], "list": list, "list_size": text.len(),
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        let snaps = alpha.join("shop/snapshots");
        std::fs::write(
            snaps.join(format!("{id}.sig")),
            host_key(&s).sign_manifest("shop", &id, &bytes),
        )
        .unwrap();
        std::fs::write(snaps.join(format!("{id}.json")), bytes).unwrap();

        let (targets, incomplete) = listed(&s, &id);
        assert_eq!(targets, serde_json::json!([]), "{path}: {incomplete}");
        assert!(
            incomplete.contains("alpha") && incomplete.contains("not a pack path"),
            "{path}: {incomplete}"
        );
        // Asked for by id: refused, nothing restored from that path.
        let (o, out) = restore_limited(&s, &[&id]);
        expect_code(&o, 1);
        assert!(!out.exists(), "{path}");
        // latest: the honest snapshot, from beta.
        let (o, out) = restore_limited(&s, &[]);
        expect_code(&o, 0);
        let j = json(&o);
        assert_eq!(j["snapshot"], honest_id.as_str(), "{path}");
        assert_eq!(j["sources"][0]["target"], "beta", "{path}");
        assert_same_tree(&src, &out.join("site"));
        assert!(!out.join("site/pwned-through-list").exists());
        for ext in ["json", "sig"] {
            std::fs::remove_file(snaps.join(format!("{id}.{ext}"))).unwrap();
        }
    }
    assert!(files_outside(s.dir.path(), &s.path("nowhere")).is_empty());
}

/// alpha's pack holds other bytes in its frames (another chunk's content of
/// the same length, compressed to the same length) under the very same
/// index: nothing recomputed, the name still matches. Every chunk is
/// checked against its id: refused, beta serves.
#[test]
fn a_pack_whose_frames_do_not_match_their_chunk_ids_is_refused_and_the_other_target_serves() {
    let (s, src) = two_target_backup();
    let pack = stream_pack(&s.target_dir("alpha"));
    let mut enc = FrameEncoder::new(3).unwrap();
    let swapped = rewrite_pack(&pack, |i, e, _| {
        if e.kind != Kind::Content || e.len < 4096 {
            return None;
        }
        let f = enc.encode(&noise(e.len as usize, 1000 + i as u32)).unwrap();
        (f.len() == e.clen as usize).then_some(f)
    });
    assert!(swapped >= 10, "{swapped} frames swapped");
    // zstd itself finds nothing wrong with the pack: every frame is valid.
    let o = Command::new("zstd")
        .args(["-t", "-q"])
        .arg(&pack)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_restored_from_beta(&s, &src, "do not match the chunk id");
}

/// alpha's copy of the stream's extent list is another valid list (a real
/// pack on alpha holding a "pwned" tar stream), under the honest list's
/// name: refused for not hashing to its name, read from beta instead; the
/// stream restores intact and alpha alone cannot serve it.
#[test]
fn an_extent_list_that_does_not_hash_to_its_name_is_refused() {
    let (s, src) = two_target_backup();
    let alpha = s.target_dir("alpha");
    let (tar, _) = build_tar(&s, "f('sub/pwned-by-list', b'pwned')");
    let evil = plant_stream(&alpha, "shop", &tar, 2);
    let evil_list = list_path(&alpha, "shop", evil["list"].as_str().unwrap());
    let honest = list_path(&alpha, "shop", stream_ref(&alpha)["list"].as_str().unwrap());
    std::fs::rename(&evil_list, &honest).unwrap();
    assert_ne!(b3sum(&honest), stream_ref(&alpha)["list"].as_str().unwrap());
    let (o, out) = restore_limited(&s, &[]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // alpha alone holds no readable list for it.
    let (o, out) = restore_limited(&s, &["--target", "alpha"]);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("no complete snapshot"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = run_limited(&s, &["verify", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let targets = j[0]["snapshots"][0]["targets"].as_array().unwrap();
    let by = |n: &str| targets.iter().find(|t| t["target"] == n).unwrap().clone();
    assert_eq!(by("beta")["result"], "ok", "{j}");
    assert_eq!(by("alpha")["result"], "failed", "{j}");
    assert!(
        by("alpha")["archives"][0]["problems"]
            .to_string()
            .contains("does not hash to its name"),
        "{j}"
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

/// Watches a directory for new entries (inotify, through libc).
struct Watch {
    fd: i32,
}

impl Watch {
    fn new() -> Watch {
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        Watch { fd }
    }

    fn add(&self, dir: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), libc::IN_CREATE) };
        assert!(wd >= 0, "watching {}", dir.display());
    }

    /// Names created since the last call, waiting up to `ms` for one.
    fn created(&self, ms: i32) -> Vec<String> {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
            return Vec::new();
        }
        let mut buf = vec![0u8; 64 << 10];
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0);
        let mut out = Vec::new();
        let mut at = 0;
        let head = std::mem::size_of::<libc::inotify_event>();
        while at + head <= n as usize {
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = &buf[at + head..at + head + len];
            let end = name.iter().position(|b| *b == 0).unwrap_or(len);
            out.push(String::from_utf8_lossy(&name[..end]).into_owned());
            at += head + len;
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

/// Start `verify --json` and stop it (SIGSTOP) as soon as it has created
/// `z-big.bin` in its work directory; None when it got past the file first
/// (the caller tries again).
fn verify_stopped_in_big_file(
    s: &Setup,
    scratch: &Path,
    full: u64,
) -> Option<(std::process::Child, PathBuf)> {
    let w = Watch::new();
    w.add(scratch);
    let mut child = s
        .cmd()
        .args(["verify", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stop = || unsafe {
        libc::kill(pid, libc::SIGSTOP);
        let mut st = 0;
        assert_eq!(libc::waitpid(pid, &mut st, libc::WUNTRACED), pid);
        assert!(libc::WIFSTOPPED(st), "verify ended before it was stopped");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut work: Option<PathBuf> = None;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "verify never got to z-big.bin"
        );
        let names = w.created(100);
        if work.is_none() {
            if let Some(n) = names.iter().find(|n| n.starts_with("verify-")) {
                let d = scratch.join(n);
                w.add(&d);
                work = Some(d);
            }
        }
        let Some(d) = &work else {
            if let Ok(Some(_)) = child.try_wait() {
                panic!("verify ended without a work directory");
            }
            continue;
        };
        if names.iter().any(|n| n == "z-big.bin") || d.join("z-big.bin").exists() {
            stop();
            let len = std::fs::metadata(d.join("z-big.bin")).map(|m| m.len());
            if matches!(len, Ok(n) if n < full) {
                return Some((child, d.clone()));
            }
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let _ = child.wait_with_output();
            return None;
        }
    }
}

/// Verify is stopped half-way through a big file, so the scratch tree can
/// be inspected (and attacked) while verify is still writing into it.
#[test]
fn verify_unpacks_into_a_fresh_private_directory_never_setuid_and_never_through_a_swap() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("b-shared")).unwrap();
    std::fs::write(src.join("a-suid"), "#!/bin/sh\necho root\n").unwrap();
    let full: u64 = 48 << 20;
    std::fs::write(src.join("z-big.bin"), noise(full as usize, 3)).unwrap();
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
    let (child, work) = (0..10)
        .find_map(|_| verify_stopped_in_big_file(&s, &scratch, full))
        .expect("verify stopped half-way through z-big.bin");
    let pid = child.id() as i32;
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
    assert!(std::fs::metadata(moved.join("z-big.bin")).unwrap().len() < full);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 0);
    assert_eq!(
        std::fs::read_dir(&attacker).unwrap().count(),
        0,
        "nothing written through the swapped path"
    );
    assert_eq!(
        std::fs::metadata(moved.join("z-big.bin")).unwrap().len(),
        full
    );
    assert!(
        !work.exists()
            || std::fs::symlink_metadata(&work)
                .unwrap()
                .file_type()
                .is_symlink()
    );
}
