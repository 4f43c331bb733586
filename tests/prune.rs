//! `backupctl prune` end to end, driving the binary. The scenarios take
//! targets through the `TestTarget` trait so the same checks run against any
//! backend: fs, and S3 (Garage on loopback, listed with an independent client).

use crate::common;
use crate::s3_common;
use crate::sched_common;

use sched_common::*;
use serde_json::Value;
use std::collections::BTreeSet;

pub(crate) const POLICY: &str = "shop";

/// A target whose objects the test can also read back (independently of
/// backupctl: the file system, or its own S3 client).
pub(crate) trait Target: TestTarget {
    fn get(&self, key: &str) -> Vec<u8>;
}

impl Target for FsTestTarget {
    fn get(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.root.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"))
    }
}

/// Pack names (`<name>` of `<policy>/packs/<hh>/<name>.pack`) in a listing.
pub(crate) fn packs_in(keys: &BTreeSet<String>) -> BTreeSet<String> {
    let prefix = format!("{POLICY}/packs/");
    keys.iter()
        .filter_map(|k| {
            let (hh, file) = k.strip_prefix(&prefix)?.split_once('/')?;
            let name = file.strip_suffix(".pack")?;
            assert_eq!(&name[..2], hh, "{k}: pack outside its fan-out directory");
            Some(name.to_string())
        })
        .collect()
}

/// Extent list hashes (`<policy>/lists/<hash>.extents`) in a listing.
pub(crate) fn lists_in(keys: &BTreeSet<String>) -> BTreeSet<String> {
    let prefix = format!("{POLICY}/lists/");
    keys.iter()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".extents"))
        .map(str::to_string)
        .collect()
}

/// The manifest of snapshot `id` on `t`.
pub(crate) fn manifest_of(t: &dyn Target, id: &str) -> Value {
    serde_json::from_slice(&t.get(&format!("{POLICY}/snapshots/{id}.json"))).unwrap()
}

/// The extent list of the "site" source's tar stream in snapshot `id`.
fn stream_list(t: &dyn Target, id: &str) -> String {
    manifest_of(t, id)["sources"][0]["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What snapshot `id` on `t` references, read from its manifest and its
/// extent lists (each checked against its name with BLAKE3): (lists, packs).
pub(crate) fn references(t: &dyn Target, id: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let m = manifest_of(t, id);
    let (mut lists, mut packs) = (BTreeSet::new(), BTreeSet::new());
    for src in m["sources"].as_array().unwrap() {
        for stream in ["stream", "index"] {
            let list = src[stream]["list"].as_str().unwrap().to_string();
            let text = t.get(&format!("{POLICY}/lists/{list}.extents"));
            assert_eq!(blake3::hash(&text).to_hex().to_string(), list);
            for line in String::from_utf8(text).unwrap().lines() {
                let path = line.split(' ').next().unwrap();
                let name = path
                    .strip_prefix("packs/")
                    .and_then(|p| p.split_once('/'))
                    .and_then(|(_, f)| f.strip_suffix(".pack"))
                    .unwrap_or_else(|| panic!("extent line {line:?}"));
                packs.insert(name.to_string());
            }
            lists.insert(list);
        }
    }
    (lists, packs)
}

/// `t` holds exactly the lists and packs the snapshots `kept` reference:
/// nothing they need is missing, nothing else is left.
#[track_caller]
pub(crate) fn assert_holds_exactly(t: &dyn Target, kept: &[&String]) {
    let (mut lists, mut packs) = (BTreeSet::new(), BTreeSet::new());
    for id in kept {
        let (l, p) = references(t, id);
        lists.extend(l);
        packs.extend(p);
    }
    let keys = t.keys();
    assert_eq!(lists_in(&keys), lists, "extent lists on {}", t.name());
    assert_eq!(packs_in(&keys), packs, "packs on {}", t.name());
}

/// What an interrupted run leaves on `t`: a real pack and the extent list
/// of a stream that no manifest names, plus a list (no manifest either)
/// pointing into `kept_pack`, a pack a kept snapshot uses. Returns the keys.
fn plant_orphans(t: &dyn Target, kept_pack: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    common::plant_stream(dir.path(), POLICY, b"an interrupted run's data", 2);
    let mut keys = Vec::new();
    for e in walkdir::WalkDir::new(dir.path()) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(dir.path()).unwrap();
            let key = rel.to_string_lossy().into_owned();
            t.put(&key, &std::fs::read(e.path()).unwrap());
            keys.push(key);
        }
    }
    let text = format!("packs/{}/{kept_pack}.pack 0 8\n", &kept_pack[..2]);
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    let key = format!("{POLICY}/lists/{hash}.extents");
    t.put(&key, text.as_bytes());
    keys.push(key);
    assert_eq!(keys.len(), 3, "{keys:?}");
    keys
}

/// `run --time`, returning (snapshot id, archive hash of the only source).
fn run_at(s: &Setup, time: &str) -> (String, String) {
    let out = s.run(&["run", POLICY, "--time", time, "--json"]);
    expect_code(&out, 0, &format!("run --time {time}"));
    let v = stdout_json(&out);
    let id = v[0]["snapshot"].as_str().expect("snapshot id").to_string();
    let hash = v[0]["sources"][0]["archive_hash"]
        .as_str()
        .expect("archive hash")
        .to_string();
    (id, hash)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Restore snapshot `id` of [`POLICY`] from `target` alone into
/// `<setup>/<dir>`; returns that directory (one subdirectory per source).
pub(crate) fn restore_from(s: &Setup, id: &str, target: &str, dir: &str) -> std::path::PathBuf {
    let to = s.path().join(dir);
    let out = s.run(&[
        "restore",
        POLICY,
        id,
        "--to",
        to.to_str().unwrap(),
        "--target",
        target,
    ]);
    expect_code(&out, 0, &format!("restore {id} from {target}"));
    to
}

/// Restore `id` from `target` alone and return the bytes of
/// site/index.html (the unchanging file is checked too).
fn restored_index(s: &Setup, id: &str, target: &str) -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let to = restore_from(s, id, target, &format!("restore-{n}-{id}-{target}"));
    if let Ok(logo) = std::fs::read(to.join("site/static/logo.txt")) {
        assert_eq!(logo, b"unchanging");
    }
    std::fs::read(to.join("site").join("index.html")).unwrap()
}

/// The scenario: six snapshots over five days, three archive versions shared
/// by several snapshots each; prune with daily = 3, then daily = 1.
fn prune_end_to_end(s: &Setup, a: &dyn Target, b: &dyn Target) {
    let targets = format!("targets = [{:?}, {:?}]\n", a.name(), b.name());
    s.policy(POLICY, &format!("{targets}[retention]\ndaily = 3\n"));
    s.write_source("static/logo.txt", b"unchanging");

    s.write_source("index.html", b"version one");
    let (id1, h1) = run_at(s, "2026-01-01T02:30:00+01:00");
    let (id2, h1b) = run_at(s, "2026-01-02T02:30:00+01:00");
    s.write_source("index.html", b"version two");
    let (id3, h2) = run_at(s, "2026-01-03T02:30:00+01:00");
    let (id4, h2b) = run_at(s, "2026-01-04T02:30:00+01:00");
    s.write_source("index.html", b"version three");
    let (id5a, h3) = run_at(s, "2026-01-05T02:30:00+01:00");
    let (id5b, h3b) = run_at(s, "2026-01-05T14:00:00+01:00");
    // Unchanged sources give the same stream, and share its extent list
    // and packs.
    assert_eq!(
        (h1.as_str(), h2.as_str(), h3.as_str()),
        (&*h1b, &*h2b, &*h3b)
    );
    assert_eq!(set(&[&h1, &h2, &h3]).len(), 3);
    let all_ids = set(&[&id1, &id2, &id3, &id4, &id5a, &id5b]);
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(snapshot_ids(&keys, POLICY), all_ids, "{}", t.name());
        for (x, y) in [(&id1, &id2), (&id3, &id4), (&id5a, &id5b)] {
            assert_eq!(references(t, x), references(t, y), "{x} and {y}");
        }
        for (id, h) in [(&id1, &h1), (&id3, &h2), (&id5b, &h3)] {
            assert_eq!(manifest_of(t, id)["sources"][0]["stream"]["blake3"], **h);
        }
        assert_holds_exactly(t, &[&id1, &id3, &id5b]);
    }
    let old_list = stream_list(a, &id1);
    // Packs only version two's snapshots use (version one's pack is still
    // referenced by later snapshots: chunks they share).
    let two_only: BTreeSet<String> = references(a, &id3)
        .1
        .difference(&references(a, &id5b).1)
        .cloned()
        .collect();
    assert!(!two_only.is_empty(), "version two added a pack of its own");

    // Orphans left by an interrupted run: a pack and extent lists that no
    // manifest names (one of them pointing into a pack still in use).
    let kept_pack = references(a, &id5b).1.into_iter().next().unwrap();
    let orphans = plant_orphans(a, &kept_pack);

    // --dry-run: the decision, and nothing deleted anywhere.
    let (before_a, before_b) = (a.keys(), b.keys());
    let out = s.run(&["prune", "--dry-run", "--json"]);
    expect_code(&out, 0, "prune --dry-run");
    assert_eq!(a.keys(), before_a, "dry run deleted on {}", a.name());
    assert_eq!(b.keys(), before_b, "dry run deleted on {}", b.name());
    let v = stdout_json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["policy"], POLICY);
    assert_eq!(
        ids(&v[0]["keep"]),
        vec![id5b.clone(), id4.clone(), id3.clone()]
    );
    assert_eq!(
        ids(&v[0]["remove"]),
        vec![id5a.clone(), id2.clone(), id1.clone()]
    );
    assert_eq!(v[0]["keep"][0]["time"], "2026-01-05T14:00:00+01:00");
    assert_eq!(v[0]["remove"][0]["time"], "2026-01-05T02:30:00+01:00");
    for k in v[0]["keep"].as_array().unwrap() {
        assert_eq!(k["reasons"], serde_json::json!(["daily snapshot"]), "{k}");
    }

    // The real prune.
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "prune");
    let v2 = stdout_json(&out);
    assert_eq!(ids(&v2[0]["keep"]), ids(&v[0]["keep"]));
    assert_eq!(ids(&v2[0]["remove"]), ids(&v[0]["remove"]));
    // The dry run decided the repack the real prune made.
    assert_eq!(v2[0]["repack"]["packs"], v[0]["repack"]["packs"]);
    let repacked: BTreeSet<String> = v2[0]["repack"]["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(
            snapshot_ids(&keys, POLICY),
            set(&[&id3, &id4, &id5b]),
            "snapshots on {}",
            t.name()
        );
        // Version one's stream was referenced only by removed snapshots; h3
        // survives because the kept 14:00 snapshot still references it
        // although 02:30 is gone. Orphans go; what is kept is whole.
        assert_holds_exactly(t, &[&id3, &id4, &id5b]);
        assert!(!lists_in(&keys).contains(&old_list), "{}", t.name());
        // The orphan list pointing into a kept pack is gone, the pack is
        // not (unless repacking moved its chunks: then it is gone as well).
        assert_eq!(
            packs_in(&keys).contains(&kept_pack),
            !repacked.contains(&kept_pack),
            "{}",
            t.name()
        );
        assert!(repacked.is_disjoint(&packs_in(&keys)), "{}", t.name());
        for k in &orphans {
            assert!(!keys.contains(k), "orphan {k} left on {}", t.name());
        }
        assert!(keys.iter().any(|k| k.contains("RESTORE")));
        // Every kept snapshot still restores, byte for byte, from each target.
        assert_eq!(restored_index(s, &id3, t.name()), b"version two");
        assert_eq!(restored_index(s, &id4, t.name()), b"version two");
        assert_eq!(restored_index(s, &id5b, t.name()), b"version three");
    }

    // Tighter policy: now h2 has no snapshot left and goes too.
    s.policy(POLICY, &format!("{targets}[retention]\ndaily = 1\n"));
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "prune daily=1");
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(snapshot_ids(&keys, POLICY), set(&[&id5b]));
        assert_holds_exactly(t, &[&id5b]);
        assert!(packs_in(&keys).is_disjoint(&two_only), "{}", t.name());
        assert_eq!(restored_index(s, &id5b, t.name()), b"version three");
    }
    // Nothing left to do: a second prune is a no-op.
    let (before_a, before_b) = (a.keys(), b.keys());
    expect_code(&s.run(&["prune"]), 0, "idempotent prune");
    assert_eq!((a.keys(), b.keys()), (before_a, before_b));
}

/// One target down: the other is pruned, the down one is untouched and
/// reported (exit 3), and the next prune catches up.
fn prune_with_target_down(s: &Setup, a: &dyn Target, b: &dyn Target) {
    s.policy(
        POLICY,
        &format!(
            "targets = [{:?}, {:?}]\n[retention]\ndaily = 1\n",
            a.name(),
            b.name()
        ),
    );
    let mut made = Vec::new();
    for (day, content) in [(1, "one"), (2, "two"), (3, "three")] {
        s.write_source("index.html", content.as_bytes());
        made.push(run_at(s, &format!("2026-02-0{day}T03:00:00Z")));
    }
    let before_b = b.keys();
    assert_eq!(snapshot_ids(&before_b, POLICY).len(), 3);

    b.set_down(true);
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 3, "prune with a target down");
    let v = stdout_json(&out);
    let tr = v[0]["targets"].as_array().unwrap();
    let status = |name: &str| {
        tr.iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no target {name} in {v}"))["status"]
            .clone()
    };
    assert_eq!(status(a.name()), "pruned");
    assert_eq!(status(b.name()), "unreachable");
    let ka = a.keys();
    assert_eq!(snapshot_ids(&ka, POLICY), set(&[&made[2].0]));
    assert_holds_exactly(a, &[&made[2].0]);
    assert_eq!(
        manifest_of(a, &made[2].0)["sources"][0]["stream"]["blake3"],
        made[2].1
    );
    assert_eq!(restored_index(s, &made[2].0, a.name()), b"three");

    b.set_down(false);
    assert_eq!(b.keys(), before_b, "nothing may change on the down target");

    // Back up: the next prune brings it in line.
    let out = s.run(&["prune"]);
    expect_code(&out, 0, "prune after the target is back");
    let kb = b.keys();
    assert_eq!(snapshot_ids(&kb, POLICY), set(&[&made[2].0]));
    assert_holds_exactly(b, &[&made[2].0]);
    assert_eq!(restored_index(s, &made[2].0, b.name()), b"three");
}

pub(crate) fn fs_pair(s: &Setup) -> (FsTestTarget, FsTestTarget) {
    let a = FsTestTarget::new(s.path(), "a");
    let b = FsTestTarget::new(s.path(), "b");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    (a, b)
}

#[test]
fn fs_prune_end_to_end() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    prune_end_to_end(&s, &a, &b);
}

#[test]
fn fs_prune_with_one_target_down() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    prune_with_target_down(&s, &a, &b);
}

/// A manifest that cannot be read may reference any archive: its target keeps
/// all archives (and says so, exit 3); the other target is pruned normally.
#[test]
fn fs_unreadable_manifest_keeps_archives_on_its_target() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    s.policy(POLICY, "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n");
    s.write_source("index.html", b"old");
    let (id1, h1) = run_at(&s, "2026-03-01T00:00:00Z");
    s.write_source("index.html", b"new");
    let (id2, h2) = run_at(&s, "2026-03-02T00:00:00Z");
    let damaged = format!("{POLICY}/snapshots/20260301T120000Z-0badf00d.json");
    b.put(&damaged, b"{ not a manifest");
    let before_b = b.keys();
    let (old_lists, old_packs) = references(&b, &id1);

    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 3, "prune with an unreadable manifest on b");
    let (ka, kb) = (a.keys(), b.keys());
    assert_eq!(snapshot_ids(&ka, POLICY), set(&[&id2]));
    assert_holds_exactly(&a, &[&id2]);
    assert!(lists_in(&ka).is_disjoint(&old_lists));
    assert_eq!(manifest_of(&a, &id2)["sources"][0]["stream"]["blake3"], h2);
    assert_ne!(h1, h2);
    // b: the forgotten snapshot's manifest is gone, but no extent list and
    // no pack is deleted (the unreadable one may reference any).
    assert!(!snapshot_ids(&kb, POLICY).contains(&id1));
    assert!(kb.contains(&damaged), "the unknown snapshot is left alone");
    assert_eq!(lists_in(&kb), lists_in(&before_b));
    assert_eq!(packs_in(&kb), packs_in(&before_b));
    assert!(old_lists.is_subset(&lists_in(&kb)));
    assert!(old_packs.is_subset(&packs_in(&kb)));
    for t in ["a", "b"] {
        assert_eq!(restored_index(&s, &id2, t), b"new");
    }
    assert!(stderr(&out).contains("0badf00d"), "{}", stderr(&out));
}

/// The newest snapshot survives even a policy that would keep only older
/// ones by count (last = 1 keeps the newest by instant, whatever its offset).
#[test]
fn newest_by_instant_is_kept_across_offsets() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    s.policy(POLICY, "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n");
    s.write_source("index.html", b"x");
    // 23:30-05:00 is 04:30Z the next day: newer than 01:00+09:00 (= 16:00Z).
    let (newest, _) = run_at(&s, "2026-04-01T23:30:00-05:00");
    let (older, _) = run_at(&s, "2026-04-02T01:00:00+09:00");
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "prune");
    let v = stdout_json(&out);
    assert_eq!(ids(&v[0]["keep"]), vec![newest.clone()]);
    assert_eq!(v[0]["keep"][0]["time"], "2026-04-01T23:30:00-05:00");
    assert_eq!(ids(&v[0]["remove"]), vec![older]);
    for t in [&a, &b] {
        assert_eq!(snapshot_ids(&t.keys(), POLICY), set(&[&newest]));
    }
}

/// An S3 target on Garage under a unique prefix, listed and written with an
/// independent S3 client. With a private Garage instance, `set_down` stops
/// that server (other tests keep theirs).
pub(crate) struct S3TestTarget {
    name: String,
    prefix: String,
    env: s3_common::S3Env,
    key_vars: (String, String),
    garage: Option<s3_common::Garage>,
}

impl S3TestTarget {
    /// On the shared test server (None: skipped, see s3_common).
    pub(crate) fn shared(name: &str) -> Option<S3TestTarget> {
        let env = s3_common::s3_env()?;
        Some(S3TestTarget {
            name: name.to_string(),
            prefix: format!("{}/", s3_common::unique("prune")),
            env,
            key_vars: (
                "BACKUPCTL_TEST_S3_KEY_ID".into(),
                "BACKUPCTL_TEST_S3_SECRET".into(),
            ),
            garage: None,
        })
    }

    /// On a private server of its own, so it can be taken down.
    fn private(name: &str) -> Option<S3TestTarget> {
        let garage = s3_common::Garage::start("prune")?;
        let env = garage.env.clone();
        // backupctl reads the key from variables the config names; these are
        // unique to this instance.
        let tag = s3_common::unique("k")
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            .to_uppercase();
        let key_vars = (
            format!("PRUNE_S3_{tag}_KEY"),
            format!("PRUNE_S3_{tag}_SECRET"),
        );
        Some(S3TestTarget {
            name: name.to_string(),
            prefix: "prune/".to_string(),
            env,
            key_vars,
            garage: Some(garage),
        })
    }

    /// The variables its config names, for every command (see
    /// [`Setup::env`]).
    pub(crate) fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (self.key_vars.0.clone(), self.env.key_id.clone()),
            (self.key_vars.1.clone(), self.env.secret.clone()),
        ]
    }
}

impl Target for S3TestTarget {
    fn get(&self, key: &str) -> Vec<u8> {
        self.env.get(&format!("{}{key}", self.prefix))
    }
}

impl TestTarget for S3TestTarget {
    fn name(&self) -> &str {
        &self.name
    }
    fn config_snippet(&self) -> String {
        format!(
            "[targets.{}]\ntype = \"s3\"\nbucket = {:?}\nprefix = {:?}\nregion = {:?}\nendpoint = {:?}\nlocation = \"loc-{}\"\naccess_key_id_env = {:?}\nsecret_access_key_env = {:?}\n",
            self.name, self.env.bucket, self.prefix, self.env.region, self.env.endpoint, self.name, self.key_vars.0, self.key_vars.1
        )
    }
    fn keys(&self) -> BTreeSet<String> {
        self.env
            .list_keys(&self.prefix)
            .into_iter()
            .map(|(k, _)| k[self.prefix.len()..].to_string())
            .collect()
    }
    fn set_down(&self, down: bool) {
        let g = self
            .garage
            .as_ref()
            .expect("set_down needs a private Garage");
        if down {
            g.stop();
        } else {
            g.restart();
        }
    }
    fn put(&self, key: &str, data: &[u8]) {
        self.env
            .put(&format!("{}{key}", self.prefix), data.to_vec());
    }
}

/// A setup with directory target "a" and S3 target "b" on the shared test
/// server (None: skipped, see s3_common).
pub(crate) fn fs_and_s3() -> Option<(Setup, FsTestTarget, S3TestTarget)> {
    let b = S3TestTarget::shared("b")?;
    let mut s = Setup::new();
    s.env = b.child_env();
    let a = FsTestTarget::new(s.path(), "a");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    Some((s, a, b))
}

#[test]
fn s3_prune_end_to_end() {
    let Some((s, a, b)) = fs_and_s3() else {
        return;
    };
    prune_end_to_end(&s, &a, &b);
}

#[test]
fn s3_prune_with_the_s3_target_down() {
    let Some(b) = S3TestTarget::private("b") else {
        return;
    };
    let mut s = Setup::new();
    s.env = b.child_env();
    let a = FsTestTarget::new(s.path(), "a");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    prune_with_target_down(&s, &a, &b);
}

/// `run --time T` started in the background (stdout captured).
fn spawn_run(s: &Setup, time: &str) -> std::process::Child {
    s.cmd()
        .args(["run", POLICY, "--time", time, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Restore `id` (from any target) into a fresh directory and return it.
fn restore_to(s: &Setup, id: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let to = s.path().join(format!("whole-{n}-{id}"));
    let out = s.run(&["restore", POLICY, id, "--to", to.to_str().unwrap()]);
    expect_code(&out, 0, &format!("restore {id}"));
    to.join("site")
}

/// A prune that starts while a run is writing never deletes what the run
/// builds on. The run dedups against a pack that only the oldest snapshot
/// references and that `last = 1` would delete; without `--wait` the prune
/// is refused (the policy lock), with it the prune waits, then keeps the new
/// snapshot, whose every byte restores.
#[test]
fn prune_beside_a_running_run_deletes_nothing_it_needs() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    s.policy(POLICY, "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n");
    // Big enough to fill packs that hold nothing else.
    let shared = random_bytes(40 << 20);
    s.write_source("shared.bin", &shared);
    s.write_source("index.html", b"one");
    let (id1, _) = run_at(&s, "2026-03-01T00:00:00Z");
    // Day 2 drops shared.bin: only snapshot 1 references its chunks.
    std::fs::remove_file(s.source.join("shared.bin")).unwrap();
    s.write_source("index.html", b"two");
    let (id2, _) = run_at(&s, "2026-03-02T00:00:00Z");
    let (_, packs1) = references(&a, &id1);
    let (_, packs2) = references(&a, &id2);
    let only1: BTreeSet<String> = packs1.difference(&packs2).cloned().collect();
    assert!(!only1.is_empty(), "snapshot 1 has packs of its own");

    // Day 3: shared.bin is back (its chunks are found in snapshot 1's packs)
    // beside a large new file that keeps the run busy.
    s.write_source("shared.bin", &shared);
    s.write_source("big.bin", &random_bytes(256 << 20));
    s.write_source("index.html", b"three");
    let staging = s.state.join("staging").join(POLICY);
    let run = spawn_run(&s, "2026-03-03T00:00:00Z");
    wait_for(60, "the run's staging directory", || {
        std::fs::read_dir(&staging)
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| ())
    });
    let refused = s.run(&["prune", "--json"]);
    expect_code(&refused, 1, "prune while the run holds the lock");
    assert!(stderr(&refused).contains("--wait"), "{}", stderr(&refused));
    assert!(
        only1.is_subset(&packs_in(&a.keys())),
        "nothing deleted by the refused prune"
    );
    let waiting = s
        .cmd()
        .args(["prune", "--wait", "5m", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = run.wait_with_output().unwrap();
    expect_code(&run, 0, "the run beside a prune");
    let id3 = stdout_json(&run)[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let pruned = waiting.wait_with_output().unwrap();
    expect_code(&pruned, 0, "prune after waiting for the run");
    for t in [&a as &dyn Target, &b] {
        assert_eq!(
            snapshot_ids(&t.keys(), POLICY),
            set(&[&id3]),
            "{}",
            t.name()
        );
        assert_holds_exactly(t, &[&id3]);
    }
    let site = restore_to(&s, &id3);
    assert_eq!(std::fs::read(site.join("shared.bin")).unwrap(), shared);
    assert_eq!(std::fs::read(site.join("index.html")).unwrap(), b"three");
    let v = s.run(&["verify", POLICY, "--all"]);
    expect_code(&v, 0, "verify after the prune");
}

/// `kill -9` at any moment of a prune loses nothing that remains listed:
/// prunes are killed after growing delays; after each, every snapshot still
/// listed verifies on every target and restores byte for byte, and a final
/// prune and run finish the job.
#[test]
fn a_prune_killed_at_any_moment_leaves_every_listed_snapshot_whole() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    s.policy(POLICY, "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n");
    // Eight snapshots, each with a file of its own (packs of their own) and
    // a common one.
    let common = random_bytes(1 << 20);
    s.write_source("common.bin", &common);
    let mut contents = Vec::new();
    for day in 1..=8 {
        let own = random_bytes(2 << 20);
        s.write_source("own.bin", &own);
        s.write_source("index.html", format!("day {day}").as_bytes());
        let (id, _) = run_at(&s, &format!("2026-03-{day:02}T00:00:00Z"));
        contents.push((id, own));
    }
    for delay_ms in [1u64, 5, 15, 40, 100] {
        kill_after(&s, &["prune", "-q"], delay_ms);
        let listed = stdout_json(&s.run(&["list", POLICY, "--json"]));
        let listed: Vec<String> = listed[0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert!(!listed.is_empty(), "the newest snapshot is never lost");
        let v = s.run(&["verify", POLICY, "--all"]);
        expect_code(
            &v,
            0,
            &format!("verify after a prune killed at {delay_ms} ms"),
        );
        let newest = listed.iter().max().unwrap();
        let (_, own) = contents.iter().find(|(id, _)| id == newest).unwrap();
        let site = restore_to(&s, newest);
        assert_eq!(&std::fs::read(site.join("own.bin")).unwrap(), own);
        assert_eq!(std::fs::read(site.join("common.bin")).unwrap(), common);
    }
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "a prune after the killed ones");
    let newest = &contents.last().unwrap().0;
    for t in [&a as &dyn Target, &b] {
        assert_eq!(snapshot_ids(&t.keys(), POLICY), set(&[newest]));
        assert_holds_exactly(t, &[newest]);
    }
    s.write_source("index.html", b"after");
    run_at(&s, "2026-03-09T00:00:00Z");
    let v = s.run(&["verify", POLICY, "--all"]);
    expect_code(&v, 0, "verify after the next run");
}
