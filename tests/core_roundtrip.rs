//! Issue 2: round trips, the archive format by hand, determinism, failover,
//! verify finding damage, and the restore destination rules.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn count_files(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .count()
}

fn setup_two_targets() -> (Setup, std::path::PathBuf) {
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.fs_config(&["alpha", "beta"]);
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    (s, src)
}

#[test]
fn round_trip_is_byte_for_byte() {
    let (s, src) = setup_two_targets();
    let o = s.run(&["run"]);
    expect_code(&o, 0);
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // Nothing else was created in the destination (no leftover staging).
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["site".to_string()]);
}

#[test]
fn manual_restore_with_zstd_tar_b3sum_agrees() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    let target = s.target_dir("alpha");
    assert!(
        target.join("RESTORE-README.txt").is_file(),
        "restore instructions at the target root"
    );
    let text = std::fs::read_to_string(target.join("RESTORE-README.txt")).unwrap();
    for tool in ["zstd", "tar", "b3sum"] {
        assert!(text.contains(tool), "instructions mention {tool}");
    }
    let arch = archives(&target, "shop");
    assert_eq!(arch.len(), 1);
    let name = arch[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.zst")
        .to_string();
    assert_eq!(
        b3sum(&arch[0]),
        name,
        "archive is named by the BLAKE3 of its bytes"
    );
    // The manifest names the same archive.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests(&target, "shop")[0]).unwrap()).unwrap();
    assert_eq!(m["sources"][0]["archive_hash"], name);
    assert_eq!(m["schema_version"], 1);

    let out = s.path("manual");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -d -c '{}' | tar -xpf - -C '{}'",
            arch[0].display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    assert_same_tree(&src, &out);
    let sums = arch[0].with_file_name(format!("{name}.b3sums"));
    let o = Command::new("b3sum")
        .arg("--check")
        .arg(&sums)
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "b3sum --check: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let checked = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.ends_with(": OK"))
        .count();
    assert_eq!(
        checked,
        count_files(&src),
        "every regular file checked: {}",
        stdout(&o)
    );
}

#[test]
fn unchanged_tree_gives_the_same_archive() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    expect_code(&s.run(&["run", "--json"]), 0);
    let t = s.target_dir("beta");
    assert_eq!(manifests(&t, "shop").len(), 2, "two snapshots");
    assert_eq!(archives(&t, "shop").len(), 1, "one archive shared by both");
    // A change gives a new archive.
    std::fs::write(src.join("public/index.html"), "<h1>changed</h1>\n").unwrap();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    assert_eq!(archives(&t, "shop").len(), 2);
    let j = json(&o);
    assert_eq!(j[0]["targets"][0]["archives_uploaded"], 1);
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_target() {
    let (s, _src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    expect_code(&s.run(&["verify"]), 0);
    flip_byte(&archives(&s.target_dir("alpha"), "shop")[0]);
    let o = s.run(&["verify", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let targets = j[0]["snapshots"][0]["targets"].as_array().unwrap();
    let by_name = |n: &str| targets.iter().find(|t| t["target"] == n).unwrap().clone();
    assert_eq!(by_name("alpha")["result"], "failed");
    assert_eq!(by_name("beta")["result"], "ok");
    assert!(by_name("alpha")["archives"][0]["archive"]
        .as_str()
        .unwrap()
        .ends_with(".tar.zst"));
    // The text report names the damaged target too.
    let o = s.run(&["verify"]);
    expect_code(&o, 1);
    assert!(
        stdout(&o).contains("target alpha: failed"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("target beta: ok"), "{}", stdout(&o));
    // Only the good target: clean.
    expect_code(&s.run(&["verify", "--target", "beta"]), 0);
    // Scratch area cleaned.
    let scratch = s.path("state/scratch");
    assert!(!scratch.exists() || std::fs::read_dir(&scratch).unwrap().next().is_none());
}

#[test]
fn restore_fails_over_from_a_corrupted_first_target() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    flip_byte(&archives(&s.target_dir("alpha"), "shop")[0]);
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("alpha"),
        "warning names the skipped target: {}",
        stderr(&o)
    );
    assert_eq!(json(&o)["sources"][0]["target"], "beta");
    assert_same_tree(&src, &out.join("site"));
    // Restoring only from the damaged target fails with exit 1 and writes nothing.
    let out2 = s.path("out2");
    let o = s.run(&[
        "restore",
        "shop",
        "--to",
        out2.to_str().unwrap(),
        "--target",
        "alpha",
    ]);
    expect_code(&o, 1);
    assert!(!out2.join("site").exists());
}

#[test]
fn restore_fails_over_from_a_deleted_first_target() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    std::fs::remove_dir_all(s.target_dir("alpha")).unwrap();
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
}

#[test]
fn restore_fails_over_when_an_archive_is_missing() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    std::fs::remove_file(&archives(&s.target_dir("alpha"), "shop")[0]).unwrap();
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // list shows the snapshot complete only on beta.
    let j = json(&s.run(&["list", "--json"]));
    assert_eq!(j[0]["snapshots"][0]["targets"], serde_json::json!(["beta"]));
}

#[test]
fn restore_works_without_local_state() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    // The config pins the host key (what a restoring machine carries).
    let fp = s.run(&["key", "fingerprint"]);
    expect_code(&fp, 0);
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    s.write(
        "backupctl.toml",
        &format!("trusted_keys = [{:?}]\n{cfg}", stdout(&fp).trim()),
    );
    std::fs::remove_dir_all(s.path("state")).unwrap();
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    assert_same_tree(&src, &out.join("site"));
}

#[test]
fn restore_of_an_older_snapshot_by_id_and_include() {
    let (s, src) = setup_two_targets();
    let o = s.run(&["run", "--json", "--time", "2026-01-01T02:30:00+01:00"]);
    expect_code(&o, 0);
    let first = json(&o)[0]["snapshot"].as_str().unwrap().to_string();
    assert!(
        first.starts_with("20260101T013000Z-"),
        "id starts with the UTC time: {first}"
    );
    let before = s.path("before");
    std::fs::create_dir_all(&before).unwrap();
    std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&before)
        .status()
        .unwrap();
    std::fs::write(src.join("public/index.html"), "<h1>v2</h1>\n").unwrap();
    expect_code(&s.run(&["run", "--time", "2026-01-02T02:30:00+01:00"]), 0);
    // Latest has v2; the first id (and a unique prefix of it) has v1.
    let out = s.path("out-latest");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    assert_eq!(
        std::fs::read_to_string(out.join("site/public/index.html")).unwrap(),
        "<h1>v2</h1>\n"
    );
    let out = s.path("out-first");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            &first[..20],
            "--to",
            out.to_str().unwrap(),
        ]),
        0,
    );
    assert_same_tree(&before, &out.join("site"));
    // --include restores only matching paths.
    let out = s.path("out-inc");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            &first,
            "--to",
            out.to_str().unwrap(),
            "--include",
            "public",
        ]),
        0,
    );
    assert!(out.join("site/public/css/site.css").is_file());
    assert!(!out.join("site/data").exists());
    // The recorded time keeps its offset.
    let j = json(&s.run(&["list", "shop", "--json"]));
    assert_eq!(j[0]["snapshots"][0]["time"], "2026-01-01T02:30:00+01:00");
}

#[test]
fn non_empty_destination_needs_force_and_nothing_is_lost() {
    let (s, src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    let out = s.path("out");
    std::fs::create_dir_all(out.join("site")).unwrap();
    std::fs::write(out.join("site/precious.txt"), "keep me").unwrap();
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap(), "--force"]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // The previous directory was moved aside, not deleted.
    let aside: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("site.before-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(aside[0].join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn a_failing_target_gives_partial_and_the_other_copy_is_good() {
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.fs_config(&["alpha", "beta"]);
    // alpha's root is a regular file: every write there fails.
    std::fs::create_dir_all(s.path("targets")).unwrap();
    std::fs::write(s.target_dir("alpha"), "not a directory").unwrap();
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 3);
    let j = json(&o);
    assert_eq!(j[0]["status"], "partial");
    assert_eq!(j[0]["targets"][0]["status"], "failed");
    assert!(j[0]["targets"][0]["error"]
        .as_str()
        .unwrap()
        .contains("alpha"));
    assert_eq!(j[0]["targets"][1]["status"], "complete");
    assert_eq!(manifests(&s.target_dir("beta"), "shop").len(), 1);
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    assert_same_tree(&src, &out.join("site"));
}

#[test]
fn dry_run_writes_nothing() {
    let (s, _src) = setup_two_targets();
    let o = s.run(&["run", "--dry-run", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j[0]["sources"][0]["files"], count_files(&s.path("src")));
    assert!(!s.target_dir("alpha").exists());
    assert!(!s.target_dir("beta").exists());
    assert!(!s.path("state").exists());
}

#[test]
fn excludes_are_gitignore_style() {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("cache/deep")).unwrap();
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("cache/deep/x.html"), "x").unwrap();
    std::fs::write(src.join("a/b/keep.txt"), "k").unwrap();
    std::fs::write(src.join("a/b/skip.tmp"), "t").unwrap();
    std::fs::write(src.join("top.tmp"), "t").unwrap();
    s.fs_config(&["alpha"]);
    s.files_policy("p", &src, &["alpha"], "");
    let pol = std::fs::read_to_string(s.path("policies/p.toml")).unwrap()
        + "exclude = [\"cache/**\", \"**/*.tmp\"]\n";
    s.write("policies/p.toml", &pol);
    expect_code(&s.run(&["run", "-q"]), 0);
    let out = s.path("out");
    expect_code(&s.run(&["restore", "p", "--to", out.to_str().unwrap()]), 0);
    assert!(out.join("site/a/b/keep.txt").is_file());
    assert!(!out.join("site/a/b/skip.tmp").exists());
    assert!(!out.join("site/top.tmp").exists());
    assert!(!out.join("site/cache/deep").exists());
}

#[test]
fn list_json_shows_sizes_sources_and_targets() {
    let (s, _src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    let j = json(&s.run(&["list", "--json"]));
    let snap = &j[0]["snapshots"][0];
    assert_eq!(snap["policy"], "shop");
    assert_eq!(snap["targets"], serde_json::json!(["alpha", "beta"]));
    assert_eq!(snap["sources"][0]["name"], "site");
    let stored = snap["archive_size"].as_u64().unwrap();
    let on_disk = std::fs::metadata(&archives(&s.target_dir("alpha"), "shop")[0])
        .unwrap()
        .len();
    assert_eq!(stored, on_disk);
    let content: u64 = walkdir::WalkDir::new(s.path("src"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(snap["content_size"].as_u64().unwrap(), content);
}

#[test]
fn check_probes_targets_and_warns_on_one_location() {
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.write(
        "backupctl.toml",
        "[targets.a]\ntype = \"fs\"\npath = \"ta\"\nlocation = \"office\"\n[targets.b]\ntype = \"fs\"\npath = \"tb\"\nlocation = \"office\"\n",
    );
    s.files_policy("shop", &src, &["a", "b"], "");
    expect_code(&s.run(&["init"]), 0);
    let o = s.run(&["check", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j["targets"][0]["ok"], true);
    assert!(j["warnings"][0].as_str().unwrap().contains("3-2-1"));
    // The probe left nothing behind.
    let left: Vec<_> = std::fs::read_dir(s.path("ta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "backupctl-target.json" && n != "RESTORE-README.txt")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn interrupted_run_leaves_no_visible_snapshot() {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // ~300 MB of incompressible data so the run is still busy when killed.
    let mut f = std::fs::File::create(src.join("big.bin")).unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..300 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    drop(f);
    s.fs_config(&["alpha"]);
    s.files_policy("shop", &src, &["alpha"], "");
    let mut child = s.cmd().args(["run", "-q"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        manifests(&s.target_dir("alpha"), "shop").is_empty(),
        "no manifest after an interrupted run"
    );
    let j = json(&s.run(&["list", "--json"]));
    assert_eq!(j[0]["snapshots"].as_array().unwrap().len(), 0);
}

#[test]
fn a_file_growing_during_the_run_is_reported() {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Enough data that reading takes a moment, and a log that keeps growing.
    std::fs::write(src.join("a-big.txt"), "x".repeat(30 << 20)).unwrap();
    let log = src.join("z-app.log");
    std::fs::write(&log, "start\n").unwrap();
    s.fs_config(&["alpha"]);
    s.files_policy("shop", &src, &["alpha"], "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'y'; 65536]).unwrap();
            }
        })
    };
    let o = s.run(&["run", "--json"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    expect_code(&o, 0);
    let j = json(&o);
    let warnings = j[0]["sources"][0]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("z-app.log")
                && w.as_str().unwrap().contains("while being read")),
        "{warnings:?}"
    );
    assert!(
        stderr(&o).contains("z-app.log"),
        "also logged: {}",
        stderr(&o)
    );
    // The manifest records the warning too, and the archive still verifies.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifests(&s.target_dir("alpha"), "shop")[0]).unwrap(),
    )
    .unwrap();
    assert!(!m["sources"][0]["warnings"].as_array().unwrap().is_empty());
    expect_code(&s.run(&["verify"]), 0);
}

#[test]
fn snapshot_ids_are_unique_for_equal_times() {
    let (s, _src) = setup_two_targets();
    let t = "2026-03-01T02:30:00+01:00";
    let a = json(&s.run(&["run", "--json", "--time", t]))[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let b = json(&s.run(&["run", "--json", "--time", t]))[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(a, b);
    assert_eq!(manifests(&s.target_dir("alpha"), "shop").len(), 2);
    let j = json(&s.run(&["list", "--json"]));
    let times: Vec<&str> = j[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["time"].as_str().unwrap())
        .collect();
    assert_eq!(times, vec![t, t]);
}

// ---------------------------------------------------------------------------
// Issue 9: what restores as is, and what never creates a privilege.

fn one_target(src: &Path) -> Setup {
    let s = Setup::new();
    s.fs_config(&["t"]);
    s.files_policy("shop", src, &["t"], "");
    s
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap()
}

#[test]
fn setuid_files_keep_their_bits_only_with_their_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("web");
    std::fs::create_dir_all(src.join("shared")).unwrap();
    std::fs::write(src.join("suid-tool"), "#!/bin/sh\nid\n").unwrap();
    let set = |p: &str, m: u32| {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    if running_as_root() {
        // Owned by an unprivileged user (nobody), as in a web root.
        std::os::unix::fs::chown(src.join("suid-tool"), Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(src.join("shared"), Some(65534), Some(65534)).unwrap();
    }
    set("suid-tool", 0o4755);
    set("shared", 0o2775);
    let s = one_target(&src);
    expect_code(&s.run(&["run"]), 0);
    let me = meta(Path::new("/proc/self")).uid();

    // As root: owner, group and bits come back together (like tar and restic).
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    let f = meta(&out.join("site/suid-tool"));
    let d = meta(&out.join("site/shared"));
    if running_as_root() {
        assert_eq!((f.uid(), f.gid()), (65534, 65534));
        assert_eq!(f.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((d.uid(), d.gid()), (65534, 65534));
        assert_eq!(d.permissions().mode() & 0o7777, 0o2775);
    } else {
        assert_eq!(
            f.permissions().mode() & 0o7777,
            0o755,
            "not root: bits dropped"
        );
        assert_eq!(d.permissions().mode() & 0o7777, 0o775);
    }

    // --no-same-owner: the restoring user's files, never setuid/setgid.
    let out2 = s.path("out2");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            "--to",
            out2.to_str().unwrap(),
            "--no-same-owner",
        ]),
        0,
    );
    let f = meta(&out2.join("site/suid-tool"));
    let d = meta(&out2.join("site/shared"));
    assert_eq!(f.uid(), me);
    assert_eq!(f.permissions().mode() & 0o7777, 0o755);
    assert_eq!(d.uid(), me);
    assert_eq!(d.permissions().mode() & 0o7777, 0o775);
    // (verify's scratch tree is checked while verify runs in
    // core_hostile::verify_unpacks_into_a_fresh_private_directory_never_setuid_and_never_through_a_swap.)
    expect_code(&s.run(&["verify"]), 0);
}

#[test]
fn restored_root_directory_keeps_its_mode_and_mtime() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("web");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "hi").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    filetime::set_file_mtime(&src, filetime::FileTime::from_unix_time(1_500_000_000, 42)).unwrap();
    let s = one_target(&src);
    expect_code(&s.run(&["run"]), 0);
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    let m = meta(&out.join("site"));
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 42));
    // The manual path (tar -x into a directory) gives the same.
    let arch = archives(&s.target_dir("t"), "shop").remove(0);
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -d -c '{}' | tar -tvf - | head -1",
            arch.display()
        ))
        .output()
        .unwrap();
    let first = stdout(&list);
    assert!(
        first.starts_with("drwxr-x---") && first.trim_end().ends_with(" ./"),
        "{first}"
    );
    // Unchanged tree: same archive.
    expect_code(&s.run(&["run"]), 0);
    assert_eq!(archives(&s.target_dir("t"), "shop").len(), 1);
}

#[test]
fn symbolic_links_round_trip_wherever_they_point() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("web");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", src.join("conf/abs-link")).unwrap();
    std::os::unix::fs::symlink("../../outside/file", src.join("conf/up-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", src.join("dangling")).unwrap();
    let s = one_target(&src);
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let warnings = json(&o)[0]["warnings"].to_string();
    assert!(
        !warnings.contains("link"),
        "nothing to warn about: {warnings}"
    );
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    assert_same_tree(&src, &out.join("site"));
    assert_eq!(
        std::fs::read_link(out.join("site/conf/abs-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    // --allow-external-links is still accepted (deprecated, no effect).
    let out2 = s.path("out2");
    let o = s.run(&[
        "restore",
        "shop",
        "--to",
        out2.to_str().unwrap(),
        "--allow-external-links",
    ]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("deprecated"), "{}", stderr(&o));
    assert_same_tree(&src, &out2.join("site"));
    expect_code(&s.run(&["verify"]), 0);
}

#[test]
fn names_that_are_not_utf8_round_trip_byte_exact_without_colliding() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("web");
    let name = |b: &[u8]| src.join(OsStr::from_bytes(b));
    std::fs::create_dir_all(name(b"d\xff")).unwrap();
    // Two names that differ only in their invalid bytes (both "caf\u{FFFD}.txt" when lossy).
    std::fs::write(name(b"caf\xe9.txt"), "latin-1 e-acute").unwrap();
    std::fs::write(name(b"caf\xe8.txt"), "latin-1 e-grave").unwrap();
    std::fs::write(name(b"d\xff/inner"), "inside").unwrap();
    std::fs::write(src.join("plain.txt"), "plain").unwrap();
    let s = one_target(&src);
    expect_code(&s.run(&["run"]), 0);
    // The manifest keeps the exact bytes of each (path_b64).
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests(&s.target_dir("t"), "shop")[0]).unwrap())
            .unwrap();
    let files = m["sources"][0]["files"].as_array().unwrap();
    let b64: Vec<&str> = files
        .iter()
        .filter_map(|f| f["path_b64"].as_str())
        .collect();
    assert_eq!(b64.len(), 3, "{files:?}");
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", "--to", out.to_str().unwrap()]),
        0,
    );
    let site = out.join("site");
    let got = |b: &[u8]| std::fs::read_to_string(site.join(OsStr::from_bytes(b))).unwrap();
    assert_eq!(got(b"caf\xe9.txt"), "latin-1 e-acute");
    assert_eq!(got(b"caf\xe8.txt"), "latin-1 e-grave");
    assert_eq!(got(b"d\xff/inner"), "inside");
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&site)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            b"caf\xe8.txt".to_vec(),
            b"caf\xe9.txt".to_vec(),
            b"d\xff".to_vec(),
            b"plain.txt".to_vec()
        ]
    );
    expect_code(&s.run(&["verify"]), 0);
    // The manual path: b3sum --check passes on what b3sum can check.
    let arch = archives(&s.target_dir("t"), "shop").remove(0);
    let sums = arch.with_file_name(
        arch.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".tar.zst", ".b3sums"),
    );
    let o = Command::new("b3sum")
        .arg("--check")
        .arg(&sums)
        .current_dir(&site)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "b3sum --check: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("plain.txt: OK"), "{}", stdout(&o));
}

/// Read `rel` beneath `root` one component at a time (the path is longer
/// than PATH_MAX, so no absolute path to it can be opened).
fn read_deep(root: &Path, rel: &str) -> Vec<u8> {
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut fd = unsafe {
        libc::open(
            CString::new(root.to_str().unwrap()).unwrap().as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
    };
    assert!(fd >= 0);
    let comps: Vec<&str> = rel.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let flags = if i + 1 == comps.len() {
            libc::O_RDONLY
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY
        };
        let next = unsafe {
            libc::openat(
                fd,
                CString::new(*c).unwrap().as_ptr(),
                flags | libc::O_NOFOLLOW,
            )
        };
        assert!(next >= 0, "{c}: {}", std::io::Error::last_os_error());
        unsafe { libc::close(fd) };
        fd = next;
    }
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_4000_character_path_backs_up_and_restores() {
    let s = Setup::new();
    let src = s.path("src");
    // 19 directories of 200 characters and a 181-character file name.
    let dirs: Vec<String> = (0..19)
        .map(|i| format!("{i:02}{}", "d".repeat(198)))
        .collect();
    let rel = format!("{}/{}", dirs.join("/"), "f".repeat(181));
    assert_eq!(rel.len(), 4000);
    std::fs::create_dir_all(src.join(dirs.join("/"))).unwrap();
    std::fs::write(src.join(&rel), "deep").unwrap();
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)[0]["status"], "complete");
    let out = s.path(&format!("restore-{}", "x".repeat(100)));
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    let site = out.join("site");
    assert!(
        site.join(&rel).as_os_str().len() > libc::PATH_MAX as usize,
        "the restored path is longer than PATH_MAX"
    );
    assert_eq!(read_deep(&site, &rel), b"deep");
    expect_code(&s.run(&["verify"]), 0);
}
