//! The trust boundary, attacked from a target: snapshots planted on one
//! target (unsigned, signed by a stranger's key, altered after signing,
//! future-dated, or a real id rewritten) are never restored, copied or
//! counted by prune, and each is reported naming its target; a machine that
//! trusts no key refuses with the line to add.

use crate::common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

struct Site {
    s: Setup,
    src: PathBuf,
}

fn site() -> Site {
    let s = Setup::new();
    s.fs_config(&["a", "b"]);
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "genuine").unwrap();
    s.files_policy("shop", &src, &["a", "b"], "");
    Site { s, src }
}

/// An attacker's own backupctl (its own key) makes a snapshot of `content`
/// for policy `shop`, dated `time`; returns its files (relative key, bytes).
fn forge(time: &str, content: &str) -> Vec<(String, Vec<u8>)> {
    let evil = Setup::new();
    evil.fs_config(&["x"]);
    let src = evil.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), content).unwrap();
    std::fs::write(src.join("backdoor.php"), "<?php system($_GET['c']);").unwrap();
    evil.files_policy("shop", &src, &["x"], "");
    expect_code(&evil.run(&["run", "--time", time]), 0);
    let root = evil.target_dir("x");
    walkdir::WalkDir::new(root.join("shop"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(&root).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn plant(root: &Path, files: &[(String, Vec<u8>)]) {
    for (k, b) in files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
}

fn ids(root: &Path) -> Vec<String> {
    manifests(root, "shop")
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The extent lists the manifests on `root` name (stream and index of
/// every source), and the packs those lists reference.
fn referenced(root: &Path) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    let mut lists = BTreeSet::new();
    let mut packs = BTreeSet::new();
    for m in manifests(root, "shop") {
        for src in manifest(&m)["sources"].as_array().unwrap() {
            for st in ["stream", "index"] {
                let l = src[st]["list"].as_str().unwrap();
                lists.insert(list_path(root, "shop", l));
                packs.extend(packs_of_list(root, "shop", l));
            }
        }
    }
    (lists, packs)
}

/// What is on `root` now: (lists, packs).
fn stored(root: &Path) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    (
        lists(root, "shop").into_iter().collect(),
        packs(root, "shop").into_iter().collect(),
    )
}

fn restored(s: &Setup, args: &[&str]) -> (std::process::Output, PathBuf) {
    let out = s.path(&format!("out-{}", backupctl::util::random_hex(6)));
    let mut a = vec!["restore", "shop", "--to", out.to_str().unwrap()];
    a.extend_from_slice(args);
    (s.run(&a), out)
}

#[test]
fn planted_snapshots_are_never_restored_copied_or_counted() {
    let Site { s, src } = site();
    expect_code(&s.run(&["run", "--time", "2026-03-01T03:00:00Z"]), 0);
    let genuine = ids(&s.target_dir("a"));
    let forged = forge("2026-03-05T03:00:00Z", "owned");
    let forged_id = forged
        .iter()
        .find(|(k, _)| k.ends_with(".json"))
        .map(|(k, _)| {
            Path::new(k)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap();
    // Three plantings on b: foreign-signed, unsigned, and a genuine
    // manifest altered after signing.
    plant(&s.target_dir("b"), &forged);
    let unsigned: Vec<_> = forge("2026-03-06T03:00:00Z", "owned too")
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".sig"))
        .collect();
    plant(&s.target_dir("b"), &unsigned);
    let m = s
        .target_dir("b")
        .join(format!("shop/snapshots/{}.json", genuine[0]));
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("\"host\": \"", "\"host\": \"x", 1)).unwrap();

    // list: only the genuine snapshot, the three named as damage on b.
    let o = s.run(&["list", "--json"]);
    expect_code(&o, 1);
    let j = json(&o);
    let snaps = j[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{j}");
    assert_eq!(snaps[0]["id"], genuine[0].as_str());
    assert_eq!(snaps[0]["targets"], serde_json::json!(["a"]));
    let damaged = j[0]["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 3, "{j}");
    assert!(damaged.iter().all(|d| d["target"] == "b"));
    let reasons: Vec<&str> = damaged
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("not a trusted key")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not signed")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("altered")), "{reasons:?}");

    // restore latest: the genuine one, from a (b's copy is altered).
    let (o, out) = restored(&s, &[]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    assert!(!out.join("site/backdoor.php").exists());
    // Asking for the planted id by name: not found anywhere, exit 1.
    let (o, out) = restored(&s, &[&forged_id]);
    expect_code(&o, 1);
    assert!(!out.exists());
    // Only b: nothing authentic there; the error names it.
    let (o, _) = restored(&s, &["--target", "b"]);
    expect_code(&o, 1);

    // sync copies nothing planted to a, and verify reports b.
    let o = s.run(&["sync", "--json"]);
    assert_ne!(code(&o), 0, "the planted manifests remain a problem");
    assert_eq!(
        ids(&s.target_dir("a")),
        genuine,
        "nothing planted reaches a"
    );
    assert_eq!(
        stored(&s.target_dir("a")),
        referenced(&s.target_dir("a")),
        "no planted list or pack reaches a"
    );
    let j = json(&o);
    let problems = j[0]["problems"].to_string();
    assert!(problems.contains(&forged_id), "{problems}");
    // The altered genuine manifest on b was replaced by the authentic copy.
    let o = s.run(&["list", "--json"]);
    let j = json(&o);
    assert_eq!(
        j[0]["snapshots"][0]["targets"],
        serde_json::json!(["a", "b"]),
        "{j}"
    );
    let o = s.run(&["verify", "--all", "--json"]);
    expect_code(&o, 1);
    let v = stdout(&o);
    assert!(v.contains("\"b\""), "{v}");

    // prune: the planted snapshots count for nothing; nothing genuine goes.
    let o = s.run(&["prune", "--json"]);
    let out = stdout(&o);
    assert_ne!(code(&o), 0, "{out}");
    assert_eq!(ids(&s.target_dir("a")), genuine);
    // The genuine snapshot's lists and packs are all still on a (and only
    // they), and it still restores from a alone, byte for byte.
    let a = s.target_dir("a");
    let (want_lists, want_packs) = referenced(&a);
    assert_eq!(want_lists.len(), 2, "a stream and an index list");
    assert!(!want_packs.is_empty());
    assert_eq!(stored(&a), (want_lists, want_packs), "{out}");
    assert_eq!(
        latest_tar(&a, "shop", "site"),
        source_tar(&a, "shop", &manifests(&a, "shop")[0], "site")
    );
    let (o, out) = restored(&s, &["--target", "a"]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
}

/// Twelve manifest-only snapshots dated 2099 on one target, and a real id
/// rewritten there to reference nothing: prune deletes nothing genuine on
/// either target.
#[test]
fn a_future_flood_and_a_hijacked_id_delete_nothing_genuine() {
    let Site { s, src } = site();
    s.files_policy("shop", &src, &["a", "b"], "");
    s.write(
        "policies/shop.toml",
        &format!(
            "targets = [\"a\", \"b\"]\n[retention]\nlast = 2\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = {:?}\n",
            src.display().to_string()
        ),
    );
    for (day, c) in [(1, "one"), (2, "two"), (3, "three")] {
        std::fs::write(src.join("index.html"), c).unwrap();
        expect_code(
            &s.run(&["run", "--time", &format!("2026-03-0{day}T03:00:00Z")]),
            0,
        );
    }
    let before_a = ids(&s.target_dir("a"));
    let before_b = ids(&s.target_dir("b"));
    let a = s.target_dir("a");
    let m0 = std::fs::read_to_string(&manifests(&a, "shop")[0]).unwrap();
    for i in 0..12 {
        let id = format!("209901{:02}T000000Z-0000000{}", i + 1, i % 10);
        let fake = m0.replace(&before_a[0], &id).replace(
            "2026-03-01T03:00:00",
            &format!("2099-01-{:02}T00:00:00", i + 1),
        );
        std::fs::write(a.join(format!("shop/snapshots/{id}.json")), fake).unwrap();
    }
    // Hijack: the newest real id on a now references another extent list.
    let newest = a.join(format!("shop/snapshots/{}.json", before_a[2]));
    let text = std::fs::read_to_string(&newest).unwrap();
    let h: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hash = h["sources"][0]["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();
    let hijacked = text.replace(&hash, &"0".repeat(64));
    assert_ne!(hijacked, text);
    std::fs::write(&newest, hijacked).unwrap();
    let a_before = stored(&a);
    let b = s.target_dir("b");
    let oldest_b = manifests(&b, "shop")[0].clone();
    let oldest_stream = source_record(&manifest(&oldest_b), "site")["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();

    let o = s.run(&["prune", "--json"]);
    let j = json(&o);
    // b: decided from b's own manifests only, as if nothing was planted.
    let b_ids = ids(&s.target_dir("b"));
    assert_eq!(b_ids, before_b[1..].to_vec(), "{j}");
    // b holds exactly the lists and packs its remaining snapshots use: the
    // pruned snapshot's own stream list went, nothing they need did.
    assert_eq!(stored(&b), referenced(&b), "{j}");
    assert!(!list_path(&b, "shop", &oldest_stream).exists(), "{j}");
    // a: the planted and hijacked manifests block every list and pack
    // deletion.
    assert_eq!(stored(&a), a_before, "{j}");
    assert!(stderr(&o).contains("target a"), "{}", stderr(&o));
    // Every genuine snapshot left still restores from b, byte for byte.
    for (id, want) in b_ids.iter().zip(["two", "three"]) {
        let out = s.path(&format!("r-{id}"));
        expect_code(
            &s.run(&[
                "restore",
                "shop",
                id,
                "--target",
                "b",
                "--to",
                out.to_str().unwrap(),
            ]),
            0,
        );
        assert_eq!(
            std::fs::read_to_string(out.join("site/index.html")).unwrap(),
            want
        );
        let m = b.join(format!("shop/snapshots/{id}.json"));
        let dir = s.path(&format!("t-{id}"));
        untar(&source_tar(&b, "shop", &m, "site"), &dir);
        assert_eq!(
            std::fs::read_to_string(dir.join("index.html")).unwrap(),
            want
        );
    }
}

/// A genuine snapshot dated in the future (a host clock set wrong) never
/// counts: prune keeps everything, says so, exits 1.
#[test]
fn future_dated_snapshots_never_count_for_retention() {
    let Site { s, src } = site();
    s.write(
        "policies/shop.toml",
        &format!(
            "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = {:?}\n",
            src.display().to_string()
        ),
    );
    expect_code(&s.run(&["run", "--time", "2026-03-01T03:00:00Z"]), 0);
    std::fs::write(src.join("index.html"), "later").unwrap();
    expect_code(&s.run(&["run", "--time", "2026-03-02T03:00:00Z"]), 0);
    std::fs::write(src.join("index.html"), "wrong clock").unwrap();
    expect_code(&s.run(&["run", "--time", "2099-01-01T00:00:00Z"]), 0);
    let o = s
        .cmd()
        .env("BACKUPCTL_NOW", "2026-03-02T04:00:00Z")
        .args(["prune", "--json"])
        .output()
        .unwrap();
    expect_code(&o, 1);
    let j = json(&o);
    assert_eq!(j[0]["future"].as_array().unwrap().len(), 1, "{j}");
    // last = 1 keeps the 2026-03-02 snapshot (the 2099 one does not count)
    // and the future one is kept too: only 2026-03-01 goes.
    assert_eq!(ids(&s.target_dir("a")).len(), 2, "{j}");
    assert!(ids(&s.target_dir("a"))[0].starts_with("20260302"));
}

/// A fresh machine that pins no key refuses with exit 2, naming the key on
/// each target and the line to add; `--trust` or the line then restores.
#[test]
fn a_machine_that_trusts_no_key_says_which_to_pin() {
    let Site { s, src } = site();
    expect_code(&s.run(&["run"]), 0);
    let fp = stdout(&s.run(&["key", "fingerprint"])).trim().to_string();
    assert!(fp.starts_with("ed25519:"), "{fp}");
    // The key file is never overwritten.
    let o = s.run(&["key", "init"]);
    expect_code(&o, 2);
    assert_eq!(stdout(&s.run(&["key", "fingerprint"])).trim(), fp);

    std::fs::remove_dir_all(s.path("state")).unwrap();
    let (o, out) = restored(&s, &[]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains(&format!("trusted_keys = [\"{fp}\"]")), "{err}");
    assert!(
        err.contains("target a") && err.contains("target b"),
        "{err}"
    );
    assert!(!out.exists());
    expect_code(&s.run(&["list"]), 2);

    let (o, out) = restored(&s, &["--trust", &fp]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // A wrong key given with --trust: still nothing authentic (exit 1).
    let stranger = backupctl::trust::HostKey::generate(Path::new("x")).unwrap();
    let (o, _) = restored(&s, &["--trust", &stranger.public().to_string()]);
    expect_code(&o, 1);

    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    s.write("backupctl.toml", &format!("trusted_keys = [{fp:?}]\n{cfg}"));
    let (o, out) = restored(&s, &[]);
    expect_code(&o, 0);
    assert_same_tree(&src, &out.join("site"));
    // A malformed pin is a configuration error naming the key.
    s.write(
        "backupctl.toml",
        &format!("trusted_keys = [\"ed25519:nope\"]\n{cfg}"),
    );
    let o = s.run(&["list"]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("trusted_keys[0]"), "{}", stderr(&o));
}

/// `key init --key-file` makes a key before any config exists; a config's
/// `key_file` that does not exist stops `run` with exit 2 and the command.
#[test]
fn explicit_key_files() {
    let Site { s, .. } = site();
    let key = s.path("keys/backup.key");
    let o = bin()
        .args(["key", "init", "--key-file", key.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    expect_code(&o, 0);
    let j = json(&o);
    assert!(j["public_key"].as_str().unwrap().starts_with("ed25519:"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    s.write(
        "backupctl.toml",
        &format!("key_file = \"keys/other.key\"\n{cfg}"),
    );
    let o = s.run(&["run"]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("key init --key-file"), "{}", stderr(&o));
    assert!(manifests(&s.target_dir("a"), "shop").is_empty());
    s.write(
        "backupctl.toml",
        &format!("key_file = \"keys/backup.key\"\n{cfg}"),
    );
    expect_code(&s.run(&["run"]), 0);
    let sig =
        std::fs::read_to_string(manifests(&s.target_dir("a"), "shop")[0].with_extension("sig"))
            .unwrap();
    assert!(sig.contains(j["public_key"].as_str().unwrap()), "{sig}");
}

/// Even signed by the host's own key, a manifest whose source names would
/// leave `--to` (`/abs/victim`, `../outside/x`) is refused before any path
/// is built: nothing outside the destination is moved or written.
#[test]
fn source_names_from_a_manifest_never_leave_the_destination() {
    let Site { s, .. } = site();
    expect_code(&s.run(&["run"]), 0);
    let a = s.target_dir("a");
    let mpath = manifests(&a, "shop")[0].clone();
    let id = mpath.file_stem().unwrap().to_string_lossy().into_owned();
    let genuine = std::fs::read_to_string(&mpath).unwrap();
    let victim = s.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), "precious").unwrap();
    let key = host_key(&s);
    for bad in [victim.display().to_string(), "../outside/x".to_string()] {
        let text = genuine.replacen("\"name\": \"site\"", &format!("\"name\": {bad:?}"), 1);
        assert_ne!(text, genuine);
        for t in ["a", "b"] {
            let root = s.target_dir(t);
            std::fs::write(root.join(format!("shop/snapshots/{id}.json")), &text).unwrap();
            std::fs::write(
                root.join(format!("shop/snapshots/{id}.sig")),
                key.sign_manifest("shop", &id, text.as_bytes()),
            )
            .unwrap();
        }
        let dest = s.path("dest");
        let o = s.run(&["restore", "shop", "--to", dest.to_str().unwrap(), "--force"]);
        expect_code(&o, 1);
        assert!(
            stderr(&o).contains("invalid or duplicate source name"),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("keep.txt")).unwrap(),
            "precious"
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
        assert!(!s.path("outside").exists());
    }
}
