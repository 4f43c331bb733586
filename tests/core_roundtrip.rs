//! Issue 2: round trips, the archive format by hand, determinism, failover,
//! verify finding damage, and the restore destination rules.

use crate::common;
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

/// The README's shell line for rebuilding a stream from its extent list
/// (step 2), run with `sh -c` from inside `<target>/<policy>/`, piped into
/// `rest` (e.g. `zstd -dc > out.tar`).
const README_SLICE: &str =
    r#"while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done < lists/"#;

fn readme_pipe(policy_dir: &Path, list: &str, rest: &str) -> std::process::Output {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{README_SLICE}{list}.extents | {rest}"))
        .current_dir(policy_dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sh -c ...{list}.extents | {rest}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// The jq filter README step 5 gives (turning index records into
/// `b3sum --check` lines).
fn readme_jq(readme: &str) -> String {
    readme
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("jq -r '")?;
            Some(rest.split_once('\'')?.0.to_string())
        })
        .expect("the README gives a jq filter")
}

/// BLAKE3 of a pack's index payload (what names a pack), read from the
/// pack's tail by the test: `... payload | u32 LE payload length | BCPKEND2`.
fn pack_index_hash(pack: &Path) -> String {
    let b = std::fs::read(pack).unwrap();
    assert!(
        b.len() >= 12 && &b[b.len() - 8..] == b"BCPKEND2",
        "{pack:?}"
    );
    let plen = u32::from_le_bytes(b[b.len() - 12..b.len() - 8].try_into().unwrap()) as usize;
    let payload = &b[b.len() - 12 - plen..b.len() - 12];
    assert_eq!(&payload[..8], b"BCPKIDX2", "{pack:?}");
    blake3::hash(payload).to_hex().to_string()
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
    for tool in ["zstd", "tar", "b3sum", "tail", "head"] {
        assert!(text.contains(tool), "instructions mention {tool}");
    }
    for line in [
        r#"while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done"#,
        "< lists/<list>.extents | zstd -dc",
        "| zstd -dc | tar -xpf - -C /restore/<source>",
        "b3sum /restore/<source>.tar",
    ] {
        assert!(text.contains(line), "instructions give {line:?}:\n{text}");
    }
    let ms = manifests(&target, "shop");
    assert_eq!(ms.len(), 1);
    let m = manifest(&ms[0]);
    assert_eq!(m["schema_version"], 2);
    let rec = source_record(&m, "site");
    let list = rec["stream"]["list"].as_str().unwrap().to_string();
    let blake = rec["stream"]["blake3"].as_str().unwrap().to_string();
    // The extent list is named by the BLAKE3 of its text, its packs by the
    // BLAKE3 of their index; both are where the README says.
    assert_eq!(b3sum(&list_path(&target, "shop", &list)), list);
    assert_eq!(
        rec["stream"]["list_size"],
        std::fs::metadata(list_path(&target, "shop", &list))
            .unwrap()
            .len()
    );
    let packs = packs_of_list(&target, "shop", &list);
    assert!(!packs.is_empty());
    for p in &packs {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(pack_index_hash(p), name, "pack named by its index");
        assert_eq!(
            p.parent().unwrap().file_name().unwrap().to_string_lossy(),
            &name[..2]
        );
    }

    // Step 2 and 3: rebuild the tar stream, check it with b3sum.
    let policy_dir = target.join("shop");
    let tar = s.path("manual.tar");
    readme_pipe(
        &policy_dir,
        &list,
        &format!("zstd -dc > '{}'", tar.display()),
    );
    assert_eq!(
        b3sum(&tar),
        blake,
        "b3sum of the rebuilt tar is the manifest's"
    );
    assert_eq!(
        std::fs::metadata(&tar).unwrap().len(),
        rec["stream"]["size"].as_u64().unwrap()
    );
    // Step 4, as one pipe.
    let out = s.path("manual");
    std::fs::create_dir_all(&out).unwrap();
    readme_pipe(
        &policy_dir,
        &list,
        &format!("zstd -dc | tar -xpf - -C '{}'", out.display()),
    );
    assert_same_tree(&src, &out);
    assert_hash_list(&hash_list(&src, |_| false), &out, "manual restore");

    // Step 5: every file checked against the index stream, with jq and b3sum.
    let index_list = rec["index"]["list"].as_str().unwrap();
    let sums = s.path("manual.b3sums");
    readme_pipe(
        &policy_dir,
        index_list,
        &format!(
            "zstd -dc | jq -r '{}' > '{}'",
            readme_jq(&text),
            sums.display()
        ),
    );
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
    // The other target holds the same snapshot, equally restorable.
    let beta = s.target_dir("beta");
    assert_eq!(
        latest_tar(&beta, "shop", "site"),
        std::fs::read(&tar).unwrap()
    );
}

/// The manifest of snapshot `id` on an fs target.
fn snap_manifest(target: &Path, policy: &str, id: &str) -> serde_json::Value {
    manifest(
        &target
            .join(policy)
            .join("snapshots")
            .join(format!("{id}.json")),
    )
}

/// The snapshot id a `run --json` reports (one policy).
fn run_id(o: &std::process::Output) -> String {
    json(o)[0]["snapshot"].as_str().unwrap().to_string()
}

#[test]
fn unchanged_tree_gives_the_same_archive() {
    let (s, src) = setup_two_targets();
    let first = s.run(&["run", "--json"]);
    expect_code(&first, 0);
    let id1 = run_id(&first);
    let t = s.target_dir("beta");
    let packs_first = packs(&t, "shop");
    assert!(!packs_first.is_empty());
    let lists_first = lists(&t, "shop");
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id2 = run_id(&o);
    assert_eq!(manifests(&t, "shop").len(), 2, "two snapshots");
    let stream = |target: &Path, id: &str| {
        source_record(&snap_manifest(target, "shop", id), "site")["stream"].clone()
    };
    assert_eq!(
        stream(&t, &id1),
        stream(&t, &id2),
        "the same tar stream and list"
    );
    assert_eq!(
        packs(&t, "shop"),
        packs_first,
        "no new pack for an unchanged tree"
    );
    assert_eq!(lists(&t, "shop"), lists_first, "no new extent list");
    let j = json(&o);
    for tj in j[0]["targets"].as_array().unwrap() {
        assert_eq!(tj["packs_uploaded"], 0, "{tj}");
        assert_eq!(tj["archives_uploaded"], 0, "{tj}");
    }
    assert_eq!(j[0]["sources"][0]["new_chunks"], 0);
    assert_eq!(
        j[0]["sources"][0]["archive_hash"],
        stream(&t, &id1)["blake3"]
    );
    // A change gives a new stream, stored as one new pack on each target
    // that shares the unchanged chunks with the first.
    std::fs::write(src.join("public/index.html"), "<h1>changed</h1>\n").unwrap();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id3 = run_id(&o);
    let j = json(&o);
    for tj in j[0]["targets"].as_array().unwrap() {
        assert_eq!(tj["packs_uploaded"], 1, "{tj}");
        assert_eq!(tj["archives_uploaded"], 1, "{tj}");
    }
    for name in ["alpha", "beta"] {
        let tt = s.target_dir(name);
        let now = packs(&tt, "shop");
        assert_eq!(now.len(), packs_first.len() + 1, "{name}");
        assert_ne!(stream(&tt, &id3)["blake3"], stream(&tt, &id1)["blake3"]);
        let list = stream(&tt, &id3)["list"].as_str().unwrap().to_string();
        let used = packs_of_list(&tt, "shop", &list);
        assert!(
            used.iter()
                .any(|p| packs_first.iter().any(|f| f.file_name() == p.file_name())),
            "{name}: the changed stream reuses the first pack's chunks"
        );
        let tar = source_tar(
            &tt,
            "shop",
            &tt.join("shop/snapshots").join(format!("{id3}.json")),
            "site",
        );
        let dest = s.path(&format!("untar-{name}"));
        untar(&tar, &dest);
        assert_same_tree(&src, &dest);
    }
}

/// Flip a byte in the middle of the first extent of `list` (inside one of
/// the zstd frames the list names) on an fs target.
fn flip_in_list(target: &Path, policy: &str, list: &str) {
    let text = std::fs::read_to_string(list_path(target, policy, list)).unwrap();
    let first: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    let pack = target.join(policy).join(first[0]);
    let (o, l): (usize, usize) = (first[1].parse().unwrap(), first[2].parse().unwrap());
    let mut b = std::fs::read(&pack).unwrap();
    b[o + l / 2] ^= 0xff;
    std::fs::write(&pack, b).unwrap();
}

/// The stream list of `source` in the only snapshot on an fs target.
fn only_stream_list(target: &Path, policy: &str, source: &str) -> String {
    let ms = manifests(target, policy);
    assert_eq!(ms.len(), 1);
    source_record(&manifest(&ms[0]), source)["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_target() {
    let (s, _src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    expect_code(&s.run(&["verify"]), 0);
    let alpha = s.target_dir("alpha");
    let list = only_stream_list(&alpha, "shop", "site");
    flip_in_list(&alpha, "shop", &list);
    let o = s.run(&["verify", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let targets = j[0]["snapshots"][0]["targets"].as_array().unwrap();
    let by_name = |n: &str| targets.iter().find(|t| t["target"] == n).unwrap().clone();
    assert_eq!(by_name("alpha")["result"], "failed");
    assert_eq!(by_name("beta")["result"], "ok");
    let a = &by_name("alpha")["archives"][0];
    assert_eq!(a["source"], "site");
    assert_eq!(a["result"], "failed");
    assert!(
        a["archive"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{list}.extents")),
        "names the damaged stream's extent list: {a}"
    );
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
    let alpha = s.target_dir("alpha");
    let list = only_stream_list(&alpha, "shop", "site");
    flip_in_list(&alpha, "shop", &list);
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
    let alpha = s.target_dir("alpha");
    let list = only_stream_list(&alpha, "shop", "site");
    let gone = packs_of_list(&alpha, "shop", &list);
    assert!(!gone.is_empty());
    for p in &gone {
        std::fs::remove_file(p).unwrap();
    }
    let out = s.path("out");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["sources"][0]["target"], "beta");
    assert_same_tree(&src, &out.join("site"));
    // list shows the snapshot complete only on beta, and what alpha lacks.
    let j = json(&s.run(&["list", "--json"]));
    let snap = &j[0]["snapshots"][0];
    assert_eq!(snap["targets"], serde_json::json!(["beta"]));
    let inc = snap["incomplete"].as_array().unwrap();
    assert_eq!(inc.len(), 1, "{inc:?}");
    assert_eq!(inc[0][0], "alpha");
    // The same when the extent list is missing instead (alpha's packs put
    // back from beta's copies).
    let beta = s.target_dir("beta");
    for p in &gone {
        std::fs::copy(beta.join(p.strip_prefix(&alpha).unwrap()), p).unwrap();
    }
    let j = json(&s.run(&["list", "--json"]));
    assert_eq!(
        j[0]["snapshots"][0]["targets"],
        serde_json::json!(["alpha", "beta"])
    );
    std::fs::remove_file(list_path(&alpha, "shop", &list)).unwrap();
    let out = s.path("out-list");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap(), "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["sources"][0]["target"], "beta");
    assert_same_tree(&src, &out.join("site"));
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

/// Compressed bytes an extent list covers (the sum of its lengths).
fn list_stored(target: &Path, policy: &str, list: &str) -> u64 {
    std::fs::read_to_string(list_path(target, policy, list))
        .unwrap()
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn list_json_shows_sizes_sources_and_targets() {
    let (s, _src) = setup_two_targets();
    expect_code(&s.run(&["run"]), 0);
    let j = json(&s.run(&["list", "--json"]));
    let snap = &j[0]["snapshots"][0];
    assert_eq!(snap["policy"], "shop");
    assert_eq!(snap["targets"], serde_json::json!(["alpha", "beta"]));
    let src_j = &snap["sources"][0];
    assert_eq!(src_j["name"], "site");
    let alpha = s.target_dir("alpha");
    let m = manifest(&manifests(&alpha, "shop")[0]);
    let rec = source_record(&m, "site");
    let (list, index_list) = (
        rec["stream"]["list"].as_str().unwrap(),
        rec["index"]["list"].as_str().unwrap(),
    );
    assert_eq!(src_j["extents"], format!("{list}.extents"));
    // The tar stream's hash, checked on the rebuilt stream.
    let tar = latest_tar(&alpha, "shop", "site");
    assert_eq!(
        src_j["archive_hash"],
        blake3::hash(&tar).to_hex().to_string()
    );
    // Sizes are what the extent lists cover on the target.
    let stream_stored = list_stored(&alpha, "shop", list);
    let index_stored = list_stored(&alpha, "shop", index_list);
    assert_eq!(src_j["archive_size"].as_u64().unwrap(), stream_stored);
    assert_eq!(
        snap["archive_size"].as_u64().unwrap(),
        stream_stored + index_stored
    );
    // A first snapshot's packs hold exactly its chunks, plus pack indexes.
    let on_disk = pack_bytes(&alpha, "shop");
    assert!(
        on_disk >= stream_stored + index_stored
            && on_disk < stream_stored + index_stored + (64 << 10),
        "{on_disk} bytes of packs for {stream_stored} + {index_stored}"
    );
    let content: u64 = walkdir::WalkDir::new(s.path("src"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(snap["content_size"].as_u64().unwrap(), content);
    assert_eq!(src_j["content_size"].as_u64().unwrap(), content);
    assert_eq!(
        src_j["files"].as_u64().unwrap() as usize,
        count_files(&s.path("src"))
    );
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
    let t = s.target_dir("t");
    let tar = latest_tar(&t, "shop", "site");
    let mut child = Command::new("tar")
        .arg("-tvf")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar).unwrap();
    }
    let list = child.wait_with_output().unwrap();
    let listing = stdout(&list);
    let first = listing.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("drwxr-x---") && first.trim_end().ends_with(" ./"),
        "{first}"
    );
    let manual = s.path("manual");
    untar(&tar, &manual);
    let m = meta(&manual);
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 42));
    // Unchanged tree: same stream, no new pack or list.
    let (p, l) = (packs(&t, "shop"), lists(&t, "shop"));
    expect_code(&s.run(&["run"]), 0);
    assert_eq!(packs(&t, "shop"), p);
    assert_eq!(lists(&t, "shop"), l);
    let h = stream_hashes(&t, "shop", "site");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0], h[1]);
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
    // The file index keeps the exact bytes of each (path_b64).
    let t = s.target_dir("t");
    let m = manifest(&manifests(&t, "shop")[0]);
    let rec = source_record(&m, "site");
    let index = stream_from_list(&t, "shop", rec["index"]["list"].as_str().unwrap());
    assert_eq!(
        blake3::hash(&index).to_hex().to_string(),
        rec["index"]["blake3"].as_str().unwrap()
    );
    let records: Vec<serde_json::Value> = String::from_utf8(index)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut b64: Vec<Vec<u8>> = records
        .iter()
        .filter_map(|f| f["path_b64"].as_str())
        .map(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).unwrap()
        })
        .collect();
    b64.sort();
    assert_eq!(
        b64,
        vec![
            b"caf\xe8.txt".to_vec(),
            b"caf\xe9.txt".to_vec(),
            b"d\xff".to_vec(),
            b"d\xff/inner".to_vec()
        ],
        "{records:?}"
    );
    assert_eq!(m["sources"][0]["files"], 4, "a count of regular files");
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
    // The manual path (README step 5): b3sum --check passes on what b3sum
    // can check.
    let text = std::fs::read_to_string(t.join("RESTORE-README.txt")).unwrap();
    let jq = readme_jq(&text);
    let sums = s.path("site.b3sums");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{README_SLICE}{}.extents | zstd -dc | jq -r '{jq}' > '{}'",
            rec["index"]["list"].as_str().unwrap(),
            sums.display()
        ))
        .current_dir(t.join("shop"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
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

// ---------------------------------------------------------------------------
// Deduplication bounds: what a run adds to the targets.

/// Deterministic incompressible bytes (xorshift64), so zstd cannot shrink
/// them and dedup alone must keep what is stored small.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            v.extend_from_slice(&self.0.to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// The tree of 2000 files (20 directories of 100, 1-7 KiB each).
fn make_many_files(root: &Path, rng: &mut XorShift) {
    for d in 0..20 {
        let dir = root.join(format!("dir-{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let n = 1024 + (d * 100 + f) * 3 % 6144;
            std::fs::write(dir.join(format!("file-{f:03}.bin")), rng.fill(n)).unwrap();
        }
    }
}

/// Restore snapshot `id` into a fresh directory and compare it with `want`.
fn restore_matches(s: &Setup, id: &str, want: &HashList, what: &str) {
    let out = s.path(&format!("restore-{what}"));
    expect_code(
        &s.run(&["restore", "shop", id, "--to", out.to_str().unwrap()]),
        0,
    );
    assert_hash_list(want, &out.join("site"), what);
}

#[test]
fn one_changed_file_in_2000_stores_little_and_an_unchanged_run_nothing() {
    let s = Setup::new();
    let src = s.path("src");
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    make_many_files(&src, &mut rng);
    s.fs_config(&["alpha", "beta"]);
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    let targets = [s.target_dir("alpha"), s.target_dir("beta")];

    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id1 = run_id(&o);
    let tree1 = hash_list(&src, |_| false);
    let first: Vec<u64> = targets.iter().map(|t| pack_bytes(t, "shop")).collect();
    assert!(
        first[0] > 2000 * 1024,
        "the random content is stored: {first:?}"
    );
    assert_eq!(first[0], first[1], "both targets hold the same packs");

    // (a) One file rewritten with a few KiB of new content.
    let changed = src.join("dir-07/file-042.bin");
    std::fs::write(&changed, rng.fill(5000)).unwrap();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id2 = run_id(&o);
    let tree2 = hash_list(&src, |_| false);
    assert_ne!(tree1, tree2);
    let second: Vec<u64> = targets.iter().map(|t| pack_bytes(t, "shop")).collect();
    for (i, t) in targets.iter().enumerate() {
        let new = second[i] - first[i];
        eprintln!(
            "{}: first run {} bytes, second {new}",
            t.display(),
            first[i]
        );
        assert!(
            new > 0 && new * 20 < first[i],
            "{}: the second run stored {new} bytes, the first {}",
            t.display(),
            first[i]
        );
    }

    // (b) Nothing changed: no new pack, not one byte more, the same lists.
    let (packs2, lists2): (Vec<_>, Vec<_>) = targets
        .iter()
        .map(|t| (packs(t, "shop"), lists(t, "shop")))
        .unzip();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id3 = run_id(&o);
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(packs(t, "shop"), packs2[i], "{}: packs", t.display());
        assert_eq!(
            pack_bytes(t, "shop"),
            second[i],
            "{}: pack bytes",
            t.display()
        );
        assert_eq!(lists(t, "shop"), lists2[i], "{}: extent lists", t.display());
        let (m2, m3) = (
            snap_manifest(t, "shop", &id2),
            snap_manifest(t, "shop", &id3),
        );
        assert_eq!(
            source_record(&m2, "site")["stream"],
            source_record(&m3, "site")["stream"]
        );
        assert_eq!(
            source_record(&m2, "site")["index"],
            source_record(&m3, "site")["index"]
        );
        assert_eq!(manifests(t, "shop").len(), 3);
    }
    let j = json(&o);
    for tj in j[0]["targets"].as_array().unwrap() {
        assert_eq!(tj["packs_uploaded"], 0, "{tj}");
        assert_eq!(tj["packs_copied"], 0, "{tj}");
    }

    // Each snapshot restores as the tree was when it was taken.
    assert_hash_list(&tree2, &src, "the source");
    restore_matches(&s, &id1, &tree1, "first");
    restore_matches(&s, &id2, &tree2, "second");
    restore_matches(&s, &id3, &tree2, "third");
    // And independently of backupctl, from the packs on each target.
    for t in &targets {
        for (id, tree) in [(&id1, &tree1), (&id2, &tree2), (&id3, &tree2)] {
            let tar = source_tar(
                t,
                "shop",
                &t.join("shop/snapshots").join(format!("{id}.json")),
                "site",
            );
            let dest = s.path(&format!(
                "untar-{}-{id}",
                t.file_name().unwrap().to_string_lossy()
            ));
            untar(&tar, &dest);
            assert_hash_list(tree, &dest, id);
        }
    }
}

#[test]
fn a_mebibyte_inserted_in_a_large_file_stores_about_a_mebibyte() {
    let s = Setup::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let big = rng.fill(50 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), "small\n").unwrap();
    s.fs_config(&["alpha", "beta"]);
    s.files_policy("shop", &src, &["alpha", "beta"], "");
    let targets = [s.target_dir("alpha"), s.target_dir("beta")];
    expect_code(&s.run(&["run"]), 0);
    let first: Vec<u64> = targets.iter().map(|t| pack_bytes(t, "shop")).collect();
    assert!(first[0] >= 50 << 20, "incompressible: {first:?}");

    let mut grown = big[..25 << 20].to_vec();
    grown.extend_from_slice(&rng.fill(1 << 20));
    grown.extend_from_slice(&big[25 << 20..]);
    drop(big);
    std::fs::write(src.join("big.bin"), &grown).unwrap();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let id = run_id(&o);
    for (i, t) in targets.iter().enumerate() {
        let new = pack_bytes(t, "shop") - first[i];
        eprintln!("{}: {new} bytes stored for 1 MiB inserted", t.display());
        assert!(
            ((1 << 20)..3 << 20).contains(&new),
            "{}: {new} bytes stored for 1 MiB inserted",
            t.display()
        );
    }
    let want = hash_list(&src, |_| false);
    let out = s.path("out");
    expect_code(
        &s.run(&["restore", "shop", &id, "--to", out.to_str().unwrap()]),
        0,
    );
    assert_hash_list(&want, &out.join("site"), "the grown file");
    assert!(std::fs::read(out.join("site/big.bin")).unwrap() == grown);
}
