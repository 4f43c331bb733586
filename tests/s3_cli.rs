//! S3 targets through the real binary against the shared loopback Garage:
//! a mixed fs + s3 round trip, sync, bad credentials, a missing bucket, and
//! failover from a corrupted S3 copy. Results are checked independently:
//! restored bytes against the source, objects listed and hashed through the
//! S3 API directly and `b3sum`.

use crate::s3_common;

use s3_common::{run_cli, text, S3Env};
use std::path::{Path, PathBuf};

struct Setup {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    src: PathBuf,
    prefix: String,
    env: S3Env,
    envs: Vec<(&'static str, String)>,
}

impl Setup {
    /// Targets `local` (fs) and `offsite` (s3); the policy `site` uses `order`.
    fn new(env: S3Env, order: &[&str], s3_extra: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        s3_common::make_tree(&src, 12 * 1024 * 1024);
        let prefix = format!("cli/{}/", s3_common::unique("p"));
        let targets = format!(
            "[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"office\"\n\n{}",
            tmp.path().join("fs-target").display(),
            env.target_toml("offsite", &prefix, "garage-dc", s3_extra)
        );
        let cfg = s3_common::write_config(&tmp.path().join("conf"), &targets, "site", order, &src);
        let envs = env.child_env();
        Setup {
            tmp,
            cfg,
            src,
            prefix,
            env,
            envs,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(&self.cfg, args, &envs)
    }

    fn keys(&self) -> Vec<(String, i64)> {
        self.env.list_keys(&self.prefix)
    }

    /// The pack keys on offsite.
    fn pack_keys(&self) -> Vec<String> {
        s3_common::pack_keys(&self.keys(), &self.prefix, "site")
    }

    /// The key of a pack the tar stream of snapshot `id` uses on offsite.
    fn stream_pack_key(&self, id: &str) -> String {
        let m = self.env.manifest(&self.prefix, "site", id);
        let list = m["sources"][0]["stream"]["list"].as_str().unwrap();
        self.env
            .packs_of_list(&self.prefix, "site", list)
            .into_iter()
            .next()
            .expect("the stream uses a pack")
    }

    /// The fs target's file for S3 key `key` (same layout below the root).
    fn fs_twin(&self, key: &str) -> PathBuf {
        self.fs_root().join(key.strip_prefix(&self.prefix).unwrap())
    }

    fn fs_root(&self) -> PathBuf {
        self.tmp.path().join("fs-target")
    }
}

fn b3sum_of(data: &[u8], dir: &Path) -> String {
    let f = dir.join("obj.bin");
    std::fs::write(&f, data).unwrap();
    let o = std::process::Command::new("b3sum")
        .arg("--no-names")
        .arg(&f)
        .output()
        .expect("b3sum (scripts/install-deps.sh installs it)");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn restore_and_compare(s: &Setup, extra: &[&str]) -> std::process::Output {
    let to = s.tmp.path().join(s3_common::unique("restore"));
    let mut args = vec!["restore", "site", "--to", to.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = s.run(&args);
    assert_eq!(o.status.code(), Some(0), "restore: {}", text(&o));
    assert_eq!(
        s3_common::tree_contents(&to.join("site")),
        s3_common::tree_contents(&s.src),
        "restored tree differs from the source"
    );
    o
}

#[test]
fn mixed_fs_and_s3_round_trip() {
    let Some(env) = s3_common::s3_env() else {
        return;
    };
    let s = Setup::new(env, &["local", "offsite"], "part_size_mib = 5");

    let o = s.run(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.contains("target offsite") && l.contains("ok, probe")),
        "{out}"
    );

    let o = s.run(&["run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = runs[0]["snapshot"].as_str().unwrap().to_string();
    let hash = runs[0]["sources"][0]["archive_hash"]
        .as_str()
        .unwrap()
        .to_string();

    // Independently: the layout under the prefix; the tar stream rebuilt
    // from the S3 objects alone (extents sliced out of the packs, `zstd
    // -dc`) has the BLAKE3 `run` reported, and extracts to the source.
    let keys = s.keys();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let (lists, packs) = s.env.references(&s.prefix, "site", &id);
    assert_eq!(lists.len(), 2, "a stream and an index list: {lists:?}");
    assert!(!packs.is_empty());
    for want in [
        format!("{}RESTORE-README.txt", s.prefix),
        format!("{}site/snapshots/{id}.json", s.prefix),
        format!("{}site/snapshots/{id}.sig", s.prefix),
    ]
    .into_iter()
    .chain(lists.iter().cloned())
    .chain(packs.iter().cloned())
    {
        assert!(names.contains(&want.as_str()), "{want} not in {names:?}");
    }
    for p in &packs {
        let rest = p.strip_prefix(&format!("{}site/packs/", s.prefix)).unwrap();
        let (hh, file) = rest.split_once('/').unwrap();
        assert!(file.starts_with(hh) && file.ends_with(".pack"), "{p}");
    }
    let tar = s.env.source_tar(&s.prefix, "site", &id, "site");
    assert_eq!(s3_common::b3sum_bytes(&tar), hash);
    let x = s.tmp.path().join("untarred");
    s3_common::untar(&tar, &x);
    assert_eq!(
        s3_common::tree_contents(&x),
        s3_common::tree_contents(&s.src)
    );
    // Same packs and lists, byte for byte, as the fs copy.
    for k in lists.iter().chain(s.pack_keys().iter()) {
        let obj = s.env.get(k);
        assert_eq!(obj, std::fs::read(s.fs_twin(k)).unwrap(), "{k}");
    }
    assert_eq!(
        s.pack_keys(),
        packs,
        "every pack on offsite is one the snapshot uses"
    );
    assert!(s.env.multipart_uploads(&s.prefix).is_empty());

    let o = s.run(&["list", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        l[0]["snapshots"][0]["targets"],
        serde_json::json!(["local", "offsite"])
    );

    let o = restore_and_compare(&s, &["--target", "offsite"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("from target offsite"));

    let o = s.run(&["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results: Vec<(&str, &str)> = v[0]["snapshots"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"].as_str().unwrap(), t["result"].as_str().unwrap()))
        .collect();
    assert_eq!(results, vec![("local", "ok"), ("offsite", "ok")]);

    // Unchanged source: no pack is uploaded again; the new snapshot uses
    // the same lists and packs.
    let before = s.pack_keys();
    let o = s.run(&["run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["sources"][0]["archive_hash"], hash.as_str());
    assert_eq!(r[0]["sources"][0]["new_chunks"], 0, "{r}");
    let off = &r[0]["targets"][1];
    assert_eq!(off["name"], "offsite");
    assert_eq!(off["archives_already_present"], packs.len(), "{r}");
    assert_eq!(off["packs_uploaded"], 0, "{r}");
    assert_eq!(off["packs_copied"], 0, "{r}");
    assert_eq!(off["uploaded_bytes"], 0);
    assert_eq!(s.pack_keys(), before);
    let id2 = r[0]["snapshot"].as_str().unwrap();
    assert_eq!(s.env.references(&s.prefix, "site", id2), (lists, packs));
}

#[test]
fn sync_copies_what_a_target_lacks_or_holds_truncated() {
    let Some(env) = s3_common::s3_env() else {
        return;
    };
    let s = Setup::new(env, &["local", "offsite"], "");
    let o = s.run(&["run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = s.run(&["run", "--time", "2026-01-31T02:30:00+01:00"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // offsite loses a manifest and a pack (both snapshots use it); local
    // gets that pack truncated.
    let keys = s.keys();
    let manifests = s3_common::manifest_keys(&keys, &s.prefix, "site");
    assert_eq!(manifests.len(), 2);
    let manifest = manifests[0].clone();
    let ids: Vec<String> = manifests
        .iter()
        .map(|k| {
            k.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    let pack = s.stream_pack_key(&ids[0]);
    assert_eq!(s.stream_pack_key(&ids[1]), pack, "the snapshots share it");
    let good = s.env.get(&pack);
    s.env.delete(&manifest);
    s.env.delete(&pack);
    let local_pack = s.fs_twin(&pack);
    let full = std::fs::read(&local_pack).unwrap();
    assert_eq!(full, good);
    std::fs::write(&local_pack, &full[..full.len() / 2]).unwrap();

    // Now neither target holds an intact copy of the pack: nothing to copy
    // from, the truncated copy is refused (checked against its name) and
    // never written to offsite.
    let o = s.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let short = &pack.rsplit('/').next().unwrap()[..16];
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("no intact copy of pack {short}")) && out.contains("local:"),
        "{}",
        text(&o)
    );
    assert!(
        !s.keys().iter().any(|(k, _)| k == &pack || k == &manifest),
        "nothing copied from a damaged copy"
    );

    // Repair local, then sync offsite from it.
    std::fs::write(&local_pack, &full).unwrap();
    let before = s.keys();
    let o = s.run(&["sync", "--dry-run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let copies = d[0]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{d}");
    assert!(copies
        .iter()
        .all(|c| c["status"] == "would copy" && c["target"] == "offsite"));
    assert_eq!(s.keys(), before, "a dry run writes nothing");

    let o = s.run(&["sync", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let keys: Vec<String> = s.keys().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&manifest) && keys.contains(&pack), "{keys:?}");
    let copied = s.env.get(&pack);
    assert_eq!(copied, good, "the pack is back, byte for byte");
    assert_eq!(
        b3sum_of(&copied, s.tmp.path()),
        b3sum_of(&full, s.tmp.path())
    );
    // Everything both snapshots reference is on offsite again.
    for id in &ids {
        let (lists, packs) = s.env.references(&s.prefix, "site", id);
        for k in lists.iter().chain(packs.iter()) {
            assert!(keys.contains(k), "{k} missing after sync");
        }
        let tar = s.env.source_tar(&s.prefix, "site", id, "site");
        assert!(!tar.is_empty());
    }

    // A second sync has nothing to do.
    let o = s.run(&["sync", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(d[0]["copies"].as_array().unwrap().is_empty(), "{d}");

    let o = s.run(&["verify", "--all", "--target", "offsite"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    restore_and_compare(&s, &["--target", "offsite"]);
}

#[test]
fn wrong_credentials_fail_fast_naming_the_target() {
    let Some(env) = s3_common::s3_env() else {
        return;
    };
    let mut s = Setup::new(env, &["local", "offsite"], "max_attempts = 5");
    s.envs[1].1 = "0".repeat(64); // a wrong secret
    let t0 = std::time::Instant::now();
    let o = s.run(&["run"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        t0.elapsed().as_secs() < 30,
        "permanent errors are not retried"
    );
    let all = text(&o);
    assert!(
        all.contains("target offsite") && all.contains("credentials"),
        "{all}"
    );
    assert!(
        !all.contains(&"0".repeat(64)),
        "the secret must never be printed"
    );
    // local got the snapshot.
    assert!(std::fs::read_dir(s.fs_root().join("site/snapshots"))
        .unwrap()
        .next()
        .is_some());
    let o = s.run(&["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.contains("target offsite")
            && l.contains("FAILED")
            && l.contains("credentials")),
        "{out}"
    );
}

#[test]
fn missing_bucket_is_named() {
    let Some(mut env) = s3_common::s3_env() else {
        return;
    };
    env.bucket = "backupctl-no-such-bucket".into();
    let s = Setup::new(env, &["local", "offsite"], "");
    let o = s.run(&["run"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let all = text(&o);
    assert!(
        all.contains("target offsite")
            && all.contains("bucket \"backupctl-no-such-bucket\" does not exist"),
        "{all}"
    );
    let o = s.run(&["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("does not exist"));
}

#[test]
fn restore_fails_over_from_a_corrupted_s3_copy() {
    let Some(env) = s3_common::s3_env() else {
        return;
    };
    let s = Setup::new(env, &["offsite", "local"], "part_size_mib = 5");
    let o = s.run(&["run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Flip bytes in the middle of a pack the snapshot's tar stream uses,
    // through the S3 API.
    let o = s.run(&["list", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = l[0]["snapshots"][0]["id"].as_str().unwrap().to_string();
    let key = s.stream_pack_key(&id);
    let mut data = s.env.get(&key);
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0xff;
    }
    s.env.put(&key, data);

    // The restore is byte-exact: the damaged extent is read from local
    // instead (failover is per extent), and the damage on offsite is named.
    let o = restore_and_compare(&s, &[]);
    let pack_name = key
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".pack")
        .to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.contains("offsite")
            && l.contains(&pack_name)
            && l.contains("trying the next target")),
        "{err}"
    );
    // offsite alone cannot serve it.
    let to = s.tmp.path().join("offsite-only");
    let o = s.run(&[
        "restore",
        "site",
        "--target",
        "offsite",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let o = s.run(&["verify", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("target offsite: failed"), "{out}");
    assert!(out.contains("target local: ok"), "{out}");
}

#[test]
fn unset_credential_variable_is_a_config_error() {
    // No server needed: the target cannot even be opened.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    s3_common::make_tree(&src, 10);
    let env = S3Env {
        endpoint: "http://127.0.0.1:9".into(),
        bucket: "b".into(),
        region: "garage".into(),
        key_id: String::new(),
        secret: String::new(),
    };
    let targets = format!(
        "[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"office\"\n\n{}",
        tmp.path().join("fs").display(),
        env.target_toml("offsite", "", "dc", "")
    );
    let cfg = s3_common::write_config(
        &tmp.path().join("conf"),
        &targets,
        "site",
        &["local", "offsite"],
        &src,
    );
    // Without the credentials variables (the command gets only what a test
    // sets).
    let o = crate::common::bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("backupctl.toml")
            && err.contains("targets.offsite.access_key_id_env")
            && err.contains("TEST_S3_KEY_ID is not set"),
        "{err}"
    );
    assert!(!tmp.path().join("fs").exists(), "nothing is written");
}
