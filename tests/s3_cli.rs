//! S3 targets through the real binary against the shared loopback Garage:
//! a mixed fs + s3 round trip, sync, bad credentials, a missing bucket, and
//! failover from a corrupted S3 copy. Results are checked independently:
//! restored bytes against the source, objects listed and hashed through the
//! S3 API directly and `b3sum`.

mod s3_common;

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

    fn archive_key(&self) -> String {
        self.keys()
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k.ends_with(".tar.zst"))
            .expect("an archive on s3")
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

    // Independently: the layout under the prefix, and the archive's BLAKE3.
    let keys = s.keys();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        format!("{}RESTORE-README.txt", s.prefix),
        format!("{}site/snapshots/{id}.json", s.prefix),
        format!("{}site/archives/{hash}.tar.zst", s.prefix),
        format!("{}site/archives/{hash}.b3sums", s.prefix),
    ] {
        assert!(names.contains(&want.as_str()), "{want} not in {names:?}");
    }
    let archive = s
        .env
        .get(&format!("{}site/archives/{hash}.tar.zst", s.prefix));
    assert_eq!(b3sum_of(&archive, s.tmp.path()), hash);
    // Same bytes as the fs copy.
    let fs_copy = std::fs::read(s.fs_root().join(format!("site/archives/{hash}.tar.zst"))).unwrap();
    assert_eq!(archive, fs_copy);
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

    // Unchanged source: the archive is not uploaded again.
    let o = s.run(&["run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["targets"][1]["name"], "offsite");
    assert_eq!(r[0]["targets"][1]["archives_already_present"], 1);
    assert_eq!(r[0]["targets"][1]["uploaded_bytes"], 0);
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

    // offsite loses a manifest and the archive (both snapshots share it);
    // local gets the archive truncated.
    let keys = s.keys();
    let manifest = keys
        .iter()
        .map(|(k, _)| k.clone())
        .find(|k| k.contains("/snapshots/") && k.ends_with(".json"))
        .unwrap();
    let archive = s.archive_key();
    s.env.delete(&manifest);
    s.env.delete(&archive);
    let hash = archive
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".tar.zst");
    let local_archive = s.fs_root().join(format!("site/archives/{hash}.tar.zst"));
    let full = std::fs::read(&local_archive).unwrap();
    std::fs::write(&local_archive, &full[..full.len() / 2]).unwrap();

    // Now neither target holds a complete copy of anything: nothing to copy from.
    let o = s.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("complete on no reachable target"));

    // Repair local, then sync offsite from it.
    std::fs::write(&local_archive, &full).unwrap();
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
    assert!(
        keys.contains(&manifest) && keys.contains(&archive),
        "{keys:?}"
    );
    assert_eq!(b3sum_of(&s.env.get(&archive), s.tmp.path()), hash);

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
    // Flip bytes in the middle of the archive object, through the S3 API.
    let key = s.archive_key();
    let mut data = s.env.get(&key);
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0xff;
    }
    s.env.put(&key, data);

    let o = restore_and_compare(&s, &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("from target local"),
        "{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("offsite") && l.contains("trying the next target")),
        "{err}"
    );

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
    let mut c = s3_common::bin();
    c.arg("--config").arg(&cfg).arg("run");
    c.env_remove("TEST_S3_KEY_ID").env_remove("TEST_S3_SECRET");
    let o = c.output().unwrap();
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
