//! `backupctl prune` end to end, driving the binary. The scenarios take
//! targets through the `TestTarget` trait so the same checks run against any
//! backend: fs, and S3 (Garage on loopback, listed with an independent client).

mod s3_common;
mod sched_common;

use sched_common::*;
use serde_json::Value;
use std::collections::BTreeSet;

const POLICY: &str = "shop";

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

/// Restore `id` from `target` and return the bytes of site/index.html.
fn restored_index(s: &Setup, id: &str, target: &str) -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let to = s.path().join(format!("restore-{n}-{id}-{target}"));
    let out = s.run(&[
        "restore",
        POLICY,
        id,
        "--to",
        to.to_str().unwrap(),
        "--target",
        target,
    ]);
    expect_code(&out, 0, "restore");
    std::fs::read(to.join("site").join("index.html")).unwrap()
}

/// The scenario: six snapshots over five days, three archive versions shared
/// by several snapshots each; prune with daily = 3, then daily = 1.
pub fn prune_end_to_end(s: &Setup, a: &dyn TestTarget, b: &dyn TestTarget) {
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
    // Unchanged sources share archives.
    assert_eq!(
        (h1.as_str(), h2.as_str(), h3.as_str()),
        (&*h1b, &*h2b, &*h3b)
    );
    assert_eq!(set(&[&h1, &h2, &h3]).len(), 3);
    let all_ids = set(&[&id1, &id2, &id3, &id4, &id5a, &id5b]);
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(snapshot_ids(&keys, POLICY), all_ids, "{}", t.name());
        assert_eq!(archive_hashes(&keys, POLICY), set(&[&h1, &h2, &h3]));
    }

    // An orphan left by an interrupted run: archive + b3sums, no manifest.
    let orphan = "ab".repeat(32);
    a.put(
        &format!("{POLICY}/archives/{orphan}.tar.zst"),
        b"interrupted upload",
    );
    a.put(&format!("{POLICY}/archives/{orphan}.b3sums"), b"x");

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
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(
            snapshot_ids(&keys, POLICY),
            set(&[&id3, &id4, &id5b]),
            "snapshots on {}",
            t.name()
        );
        // h1 was referenced only by removed snapshots; h3 survives because the
        // kept 14:00 snapshot still references it although 02:30 is gone.
        assert_eq!(
            archive_hashes(&keys, POLICY),
            set(&[&h2, &h3]),
            "archives on {}",
            t.name()
        );
        for h in [&h2, &h3] {
            assert!(keys.contains(&format!("{POLICY}/archives/{h}.b3sums")));
        }
        for h in [&h1, &orphan] {
            assert!(!keys.contains(&format!("{POLICY}/archives/{h}.b3sums")));
        }
        assert!(keys.iter().any(|k| k.contains("RESTORE")));
        // Kept snapshots still restore, byte for byte.
        assert_eq!(restored_index(s, &id3, t.name()), b"version two");
        assert_eq!(restored_index(s, &id5b, t.name()), b"version three");
    }

    // Tighter policy: now h2 has no snapshot left and goes too.
    s.policy(POLICY, &format!("{targets}[retention]\ndaily = 1\n"));
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "prune daily=1");
    for t in [a, b] {
        let keys = t.keys();
        assert_eq!(snapshot_ids(&keys, POLICY), set(&[&id5b]));
        assert_eq!(archive_hashes(&keys, POLICY), set(&[&h3]));
        assert_eq!(restored_index(s, &id5b, t.name()), b"version three");
    }
    // Nothing left to do: a second prune is a no-op.
    let (before_a, before_b) = (a.keys(), b.keys());
    expect_code(&s.run(&["prune"]), 0, "idempotent prune");
    assert_eq!((a.keys(), b.keys()), (before_a, before_b));
}

/// One target down: the other is pruned, the down one is untouched and
/// reported (exit 3), and the next prune catches up.
pub fn prune_with_target_down(s: &Setup, a: &dyn TestTarget, b: &dyn TestTarget) {
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
    assert_eq!(archive_hashes(&ka, POLICY), set(&[&made[2].1]));

    b.set_down(false);
    assert_eq!(b.keys(), before_b, "nothing may change on the down target");

    // Back up: the next prune brings it in line.
    let out = s.run(&["prune"]);
    expect_code(&out, 0, "prune after the target is back");
    let kb = b.keys();
    assert_eq!(snapshot_ids(&kb, POLICY), set(&[&made[2].0]));
    assert_eq!(archive_hashes(&kb, POLICY), set(&[&made[2].1]));
}

fn fs_pair(s: &Setup) -> (FsTestTarget, FsTestTarget) {
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

    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 3, "prune with an unreadable manifest on b");
    let (ka, kb) = (a.keys(), b.keys());
    assert_eq!(snapshot_ids(&ka, POLICY), set(&[&id2]));
    assert_eq!(archive_hashes(&ka, POLICY), set(&[&h2]));
    // b: the forgotten snapshot's manifest is gone, but no archive is deleted.
    assert!(!snapshot_ids(&kb, POLICY).contains(&id1));
    assert!(kb.contains(&damaged), "the unknown snapshot is left alone");
    assert_eq!(archive_hashes(&kb, POLICY), set(&[&h1, &h2]));
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
struct S3TestTarget {
    name: String,
    prefix: String,
    env: s3_common::S3Env,
    key_vars: (String, String),
    garage: Option<s3_common::Garage>,
}

impl S3TestTarget {
    /// On the shared test server (None: skipped, see s3_common).
    fn shared(name: &str) -> Option<S3TestTarget> {
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
        // unique to this instance (std serialises env access with spawning).
        let tag = s3_common::unique("k")
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            .to_uppercase();
        let key_vars = (
            format!("PRUNE_S3_{tag}_KEY"),
            format!("PRUNE_S3_{tag}_SECRET"),
        );
        std::env::set_var(&key_vars.0, &env.key_id);
        std::env::set_var(&key_vars.1, &env.secret);
        Some(S3TestTarget {
            name: name.to_string(),
            prefix: "prune/".to_string(),
            env,
            key_vars,
            garage: Some(garage),
        })
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

#[test]
fn s3_prune_end_to_end() {
    let Some(b) = S3TestTarget::shared("b") else {
        return;
    };
    let s = Setup::new();
    let a = FsTestTarget::new(s.path(), "a");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    prune_end_to_end(&s, &a, &b);
}

#[test]
fn s3_prune_with_the_s3_target_down() {
    let Some(b) = S3TestTarget::private("b") else {
        return;
    };
    let s = Setup::new();
    let a = FsTestTarget::new(s.path(), "a");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    prune_with_target_down(&s, &a, &b);
}
