//! `backupctl status` against a real deployment: a policy with two sources
//! on an fs target and a Garage S3 target, the clock set with
//! `BACKUPCTL_NOW`; healthy, stale, missing on a target, failed and
//! unverified states, the Nagios line, and a fleet of two hosts writing to
//! one bucket watched from a monitoring machine that has no policies.
//! Expected values are computed independently (object sizes summed from the
//! file system and from an S3 client of the test's own).

use crate::s3_common::{self, run_cli, text, S3Env};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const T0: &str = "2026-05-04T02:30:00+00:00";

fn env(s3: &S3Env, now: &str) -> Vec<(&'static str, String)> {
    let mut e = s3.child_env();
    e.push(("BACKUPCTL_NOW", now.to_string()));
    e.push(("TZ", "UTC".to_string()));
    e
}

fn cli(cfg: &Path, s3: &S3Env, now: &str, args: &[&str]) -> Output {
    let e = env(s3, now);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_cli(cfg, args, &e)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// One host: a config with an fs target (`location = "office"`) and an S3
/// target under `prefix` (`location = "offsite"`), and policy `shop` with
/// two file sources.
struct Host {
    dir: PathBuf,
    cfg: PathBuf,
    fs_root: PathBuf,
    prefix: String,
}

impl Host {
    fn new(base: &Path, name: &str, s3: &S3Env, policy_extra: &str) -> Host {
        let dir = base.join(name);
        let fs_root = dir.join("nas");
        std::fs::create_dir_all(&fs_root).unwrap();
        for src in ["site", "etc"] {
            let d = dir.join(src);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("a.txt"), format!("{name} {src}\n")).unwrap();
            std::fs::write(d.join("b.bin"), s3_common::noise(300_000, 7)).unwrap();
        }
        let prefix = format!("{}/", s3_common::unique(name));
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        let cfg = dir.join("backupctl.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{}\"\nlocation = \"office\"\n\n[targets.nas]\ntype = \"fs\"\npath = \"{}\"\nlocation = \"office\"\n\n{}",
                dir.join("state").display(),
                fs_root.display(),
                s3.target_toml("offsite", &prefix, "offsite", "")
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("policies/shop.toml"),
            format!(
                "schedule = \"30 2 * * *\"\ntargets = [\"nas\", \"offsite\"]\n{policy_extra}\n[retention]\ndaily = 7\n\n\
                 [[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n\n\
                 [[sources]]\nname = \"etc\"\ntype = \"files\"\npath = \"{}\"\n",
                dir.join("site").display(),
                dir.join("etc").display()
            ),
        )
        .unwrap();
        let o = cli(&cfg, s3, T0, &["init", "nas"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        Host {
            dir,
            cfg,
            fs_root,
            prefix,
        }
    }

    fn run(&self, s3: &S3Env, now: &str) -> Output {
        cli(&self.cfg, s3, now, &["run", "--json"])
    }

    fn public_key(&self, s3: &S3Env) -> String {
        let o = cli(&self.cfg, s3, T0, &["key", "fingerprint", "--json"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        json(&o)["public_key"].as_str().unwrap().to_string()
    }
}

/// Bytes under `root/shop/` on the file system, summed independently.
fn fs_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.map(|e| e.unwrap())
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&root.join("shop"))
}

/// Bytes under `prefix + shop/` in the bucket, from the test's own client.
fn s3_bytes(s3: &S3Env, prefix: &str) -> u64 {
    s3.list_keys(&format!("{prefix}shop/"))
        .iter()
        .map(|(_, n)| *n as u64)
        .sum()
}

fn policy<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v:#}"))
}

/// `status --json` at `now`, expecting exit `want`; the report.
fn status_at(cfg: &Path, s3: &S3Env, now: &str, want: i32) -> Value {
    let o = cli(cfg, s3, now, &["status", "--json"]);
    assert_eq!(code(&o), want, "{}", text(&o));
    json(&o)
}

fn problems(p: &Value) -> String {
    p["problems"].to_string()
}

#[test]
fn status_reports_healthy_stale_missing_failed_and_nagios() {
    let Some(s3) = s3_common::s3_env() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let h = Host::new(base.path(), "shop-host", &s3, "");
    let r = h.run(&s3, T0);
    assert_eq!(code(&r), 0, "{}", text(&r));
    let id = json(&r)[0]["snapshot"].as_str().unwrap().to_string();

    // Healthy three hours later.
    let o = cli(
        &h.cfg,
        &s3,
        "2026-05-04T05:30:00+00:00",
        &["status", "--json"],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["healthy"], true);
    let p = policy(&v, "shop");
    assert_eq!(p["newest"]["id"], id.as_str());
    assert_eq!(p["newest"]["age_seconds"], 3 * 3600);
    assert_eq!(p["max_age_seconds"], 36 * 3600, "1.5 daily intervals");
    let t = p["targets"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    for t in t {
        assert_eq!(t["reachable"], true);
        assert_eq!(t["holds_newest"], true);
        assert_eq!(t["restore_points"], 1);
    }
    assert_eq!(t[0]["bytes_stored"].as_u64().unwrap(), fs_bytes(&h.fs_root));
    assert_eq!(
        t[1]["bytes_stored"].as_u64().unwrap(),
        s3_bytes(&s3, &h.prefix)
    );
    assert!(t[0]["bytes_stored"].as_u64().unwrap() > 300_000);
    let rule = &p["rule_3_2_1"];
    assert_eq!(rule["copies"], 3);
    assert_eq!(rule["locations"], 2);
    assert_eq!(rule["offsite"], 1);
    assert_eq!(rule["ok"], true);
    let n = cli(
        &h.cfg,
        &s3,
        "2026-05-04T05:30:00+00:00",
        &["status", "--nagios"],
    );
    assert_eq!(code(&n), 0, "{}", text(&n));
    let line = String::from_utf8_lossy(&n.stdout).to_string();
    assert!(
        line.starts_with("BACKUPCTL OK - 1 policies healthy |"),
        "{line}"
    );
    assert!(line.contains("'age_shop'=10800s;;129600"), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");

    // Stale: 40 hours without a snapshot (more than 1.5 daily intervals).
    let late = "2026-05-05T18:30:00+00:00";
    let p = policy(&status_at(&h.cfg, &s3, late, 1), "shop").clone();
    assert_eq!(p["stale"], true);
    assert!(problems(&p).contains("stale"), "{p:#}");
    let n = cli(&h.cfg, &s3, late, &["status", "--nagios"]);
    assert_eq!(code(&n), 2, "CRITICAL: {}", text(&n));
    assert!(String::from_utf8_lossy(&n.stdout).starts_with("BACKUPCTL CRITICAL - shop: stale"));

    // Missing on a target: the fs target is away for the next night's run
    // (partial), then back: it lacks the newest snapshot.
    let away = h.dir.join("nas-away");
    std::fs::rename(&h.fs_root, &away).unwrap();
    std::fs::write(h.dir.join("site/a.txt"), "changed\n").unwrap();
    let r = h.run(&s3, "2026-05-05T02:30:00+00:00");
    assert_eq!(code(&r), 3, "partial run: {}", text(&r));
    let p = policy(
        &status_at(&h.cfg, &s3, "2026-05-05T03:00:00+00:00", 1),
        "shop",
    )
    .clone();
    assert_eq!(p["targets"][0]["reachable"], false, "{p:#}");
    std::fs::rename(&away, &h.fs_root).unwrap();
    let p = policy(
        &status_at(&h.cfg, &s3, "2026-05-05T03:00:00+00:00", 1),
        "shop",
    )
    .clone();
    assert_eq!(p["targets"][0]["holds_newest"], false);
    assert_eq!(p["targets"][0]["restore_points"], 1);
    assert_eq!(p["targets"][1]["holds_newest"], true);
    assert_eq!(p["targets"][1]["restore_points"], 2);
    assert!(
        problems(&p).contains("target nas lacks the newest snapshot"),
        "{p:#}"
    );
    // sync catches it up: healthy again.
    let s = cli(&h.cfg, &s3, "2026-05-05T03:00:00+00:00", &["sync"]);
    assert_eq!(code(&s), 0, "{}", text(&s));
    let o = cli(&h.cfg, &s3, "2026-05-05T03:10:00+00:00", &["status"]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // Failed: the next run cannot read a source.
    std::fs::rename(h.dir.join("etc"), h.dir.join("etc-gone")).unwrap();
    let r = h.run(&s3, "2026-05-06T02:30:00+00:00");
    assert_ne!(code(&r), 0, "{}", text(&r));
    let p = policy(
        &status_at(&h.cfg, &s3, "2026-05-06T03:00:00+00:00", 1),
        "shop",
    )
    .clone();
    assert!(problems(&p).contains("last run failed"), "{p:#}");
    assert_eq!(p["last_run"]["result"], "failed");

    // An unknown policy is a usage error.
    let o = cli(&h.cfg, &s3, T0, &["status", "nope"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
}

#[test]
fn status_reports_a_policy_unverified_beyond_verify_max_age() {
    let Some(s3) = s3_common::s3_env() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let h = Host::new(
        base.path(),
        "verify-host",
        &s3,
        "\n[verify]\nmax_age = \"8d\"\n",
    );
    assert_eq!(code(&h.run(&s3, T0)), 0);
    let soon = "2026-05-04T03:00:00+00:00";
    let o = cli(&h.cfg, &s3, soon, &["status", "--json"]);
    assert_eq!(code(&o), 1, "never verified: {}", text(&o));
    let p = policy(&json(&o), "shop").clone();
    assert!(problems(&p).contains("never verified"), "{p:#}");
    assert_eq!(p["verify"]["overdue"], true);
    assert_eq!(p["verify"]["max_age_seconds"], 8 * 86400);

    let v = cli(&h.cfg, &s3, soon, &["verify"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    let p = policy(
        &status_at(&h.cfg, &s3, "2026-05-04T04:00:00+00:00", 0),
        "shop",
    )
    .clone();
    assert_eq!(p["verify"]["overdue"], false);
    assert_eq!(p["verify"]["last_result"], "success");
    let on: Vec<&str> = p["verify"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(on, ["nas", "offsite"]);
}

/// Two hosts write to one bucket under their own prefixes; a monitoring
/// machine with only the two targets, the two public keys and `[fleet]`
/// reports both, and a host whose key it does not trust counts for nothing.
#[test]
fn a_fleet_of_two_hosts_is_watched_from_one_machine() {
    let Some(s3) = s3_common::s3_env() else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let a = Host::new(base.path(), "host-a", &s3, "");
    let b = Host::new(base.path(), "host-b", &s3, "");
    assert_eq!(code(&a.run(&s3, T0)), 0);
    assert_eq!(code(&b.run(&s3, "2026-05-03T02:00:00+00:00")), 0);
    let monitor = |keys: &[String]| -> PathBuf {
        let dir = base.path().join(format!("monitor-{}", keys.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("backupctl.toml");
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        std::fs::write(
            &cfg,
            format!(
                "state_dir = \"{}\"\ntrusted_keys = [{}]\n\n{}\n{}\n[fleet]\ntargets = [\"shop-a\", \"shop-b\"]\nmax_age = \"26h\"\n",
                dir.join("state").display(),
                keys.join(", "),
                s3.target_toml("shop-a", &a.prefix, "offsite", ""),
                s3.target_toml("shop-b", &b.prefix, "offsite", ""),
            ),
        )
        .unwrap();
        cfg
    };
    let both = monitor(&[a.public_key(&s3), b.public_key(&s3)]);
    let now = "2026-05-04T04:30:00+00:00";
    let o = cli(&both, &s3, now, &["status", "--json"]);
    // host-b's snapshot is 26.5 hours old: more than max_age.
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v = json(&o);
    let pa = policy(&v, "shop-a/shop");
    assert_eq!(pa["healthy"], true, "{pa:#}");
    assert_eq!(pa["watched"], true);
    assert_eq!(pa["newest"]["age_seconds"], 2 * 3600);
    assert_eq!(
        pa["targets"][0]["bytes_stored"].as_u64().unwrap(),
        s3_bytes(&s3, &a.prefix)
    );
    let pb = policy(&v, "shop-b/shop");
    assert_eq!(pb["stale"], true, "{pb:#}");
    assert_eq!(pb["newest"]["age_seconds"], 26 * 3600 + 1800);
    // Only host-a's key: host-b's snapshots do not count.
    let one = monitor(&[a.public_key(&s3)]);
    let o = cli(
        &one,
        &s3,
        "2026-05-04T03:30:00+00:00",
        &["status", "--json"],
    );
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v = json(&o);
    assert_eq!(policy(&v, "shop-a/shop")["healthy"], true);
    let pb = policy(&v, "shop-b/shop");
    assert!(pb["newest"].is_null(), "{pb:#}");
    assert!(problems(pb).contains("no complete snapshot"), "{pb:#}");
    // One watched policy by name.
    let o = cli(
        &both,
        &s3,
        "2026-05-04T03:30:00+00:00",
        &["status", "shop-a/shop"],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
}
