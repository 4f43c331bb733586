//! The deployment shapes users run, on directory targets: several sources per
//! policy, several policies, one policy's trouble never stopping another,
//! targets that are not there, quiet cron output, catching up a target that
//! missed a night, and the restore details operators rely on.

mod common;

use common::*;
use std::path::Path;

/// Config with fs targets `names`, each initialised (`backupctl init`), at
/// `<dir>/mnt-<name>/backups`, so removing `mnt-<name>` unplugs it.
fn mounted_config(s: &Setup, names: &[&str]) {
    let mut c = String::from("state_dir = \"state\"\n");
    for (i, n) in names.iter().enumerate() {
        std::fs::create_dir_all(s.path(&format!("mnt-{n}"))).unwrap();
        c.push_str(&format!(
            "\n[targets.{n}]\ntype = \"fs\"\npath = \"mnt-{n}/backups\"\nlocation = \"site-{i}\"\n"
        ));
    }
    s.write("backupctl.toml", &c);
    let o = s.run(&["init"]);
    expect_code(&o, 0);
}

fn root(s: &Setup, name: &str) -> std::path::PathBuf {
    s.path(&format!("mnt-{name}/backups"))
}

fn unplug(s: &Setup, name: &str) {
    std::fs::rename(
        s.path(&format!("mnt-{name}")),
        s.path(&format!("mnt-{name}.away")),
    )
    .unwrap();
    // The empty mount point stays, as on a real machine.
    std::fs::create_dir_all(s.path(&format!("mnt-{name}"))).unwrap();
}

fn plug(s: &Setup, name: &str) {
    std::fs::remove_dir(s.path(&format!("mnt-{name}"))).unwrap();
    std::fs::rename(
        s.path(&format!("mnt-{name}.away")),
        s.path(&format!("mnt-{name}")),
    )
    .unwrap();
}

fn policy(s: &Setup, name: &str, targets: &[&str], extra: &str, sources: &[(&str, &Path)]) {
    let t: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let mut p = format!(
        "targets = [{}]\n{extra}\n[retention]\ndaily = 7\n",
        t.join(", ")
    );
    for (n, path) in sources {
        p.push_str(&format!(
            "\n[[sources]]\nname = {n:?}\ntype = \"files\"\npath = {:?}\n",
            path.display().to_string()
        ));
    }
    s.write(&format!("policies/{name}.toml"), &p);
}

fn tree(s: &Setup, rel: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let r = s.path(rel);
    for (f, c) in files {
        let p = r.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
    r
}

fn snapshot_count(s: &Setup, target: &str, policy: &str) -> usize {
    manifests(&root(s, target), policy).len()
}

/// The bug the README's own nightly example hit: the second source's writer
/// removed the first source's pending temporary file on every fs target.
#[test]
fn two_file_trees_in_one_policy_on_two_fs_targets() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let site = s.path("www");
    make_tree(&site);
    let uploads = tree(
        &s,
        "uploads",
        &[("2026/a.txt", "upload a"), ("b.bin", "bb")],
    );
    policy(
        &s,
        "shop",
        &["nas", "offsite"],
        "",
        &[("site", &site), ("uploads", &uploads)],
    );
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j[0]["status"], "complete", "{j}");
    for t in ["nas", "offsite"] {
        assert_eq!(snapshot_count(&s, t, "shop"), 1);
        assert_eq!(archives(&root(&s, t), "shop").len(), 2);
        let out = s.path(&format!("restore-{t}"));
        let o = s.run(&[
            "restore",
            "shop",
            "--target",
            t,
            "--to",
            out.to_str().unwrap(),
        ]);
        expect_code(&o, 0);
        assert_same_tree(&site, &out.join("site"));
        assert_same_tree(&uploads, &out.join("uploads"));
    }
    // No temporaries left behind on either target.
    for t in ["nas", "offsite"] {
        let left: Vec<_> = walkdir::WalkDir::new(root(&s, t))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// An unmounted share under one policy: `check` reports it as a config
/// error (exit 2), `run` fails only that policy (exit 1) naming the path,
/// and every read command still works for it.
#[test]
fn a_missing_source_path_fails_only_its_policy() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "shop")]);
    let blog = tree(&s, "blog", &[("index.html", "blog")]);
    policy(&s, "blog", &["nas", "offsite"], "", &[("site", &blog)]);
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &shop)]);
    expect_code(&s.run(&["run"]), 0);

    std::fs::rename(&blog, s.path("blog.unmounted")).unwrap();
    let o = s.run(&["check"]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("policies/blog.toml"), "{err}");
    assert!(err.contains("sources[0] (site).path"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    let o = s.run(&["run", "--json"]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("policy blog"), "{err}");
    assert!(err.contains(&blog.display().to_string()), "{err}");
    let j = json(&o);
    assert_eq!(j.as_array().unwrap().len(), 1, "shop still ran: {j}");
    assert_eq!(j[0]["policy"], "shop");
    assert_eq!(j[0]["status"], "complete");
    assert_eq!(snapshot_count(&s, "nas", "shop"), 2);
    assert_eq!(snapshot_count(&s, "nas", "blog"), 1);

    // Naming only the healthy policy: the other is not even looked at.
    expect_code(&s.run(&["run", "shop"]), 0);
    // Reads never need the source path: list, restore, verify, schedule.
    expect_code(&s.run(&["list", "blog"]), 0);
    let out = s.path("blog-restored");
    expect_code(
        &s.run(&["restore", "blog", "--to", out.to_str().unwrap()]),
        0,
    );
    assert_eq!(
        std::fs::read_to_string(out.join("site/index.html")).unwrap(),
        "blog"
    );
    expect_code(&s.run(&["verify", "blog"]), 0);
    expect_code(&s.run(&["schedule"]), 0);
}

/// A policy file that does not load is reported (exit 2) and skipped; the
/// others are still backed up.
#[test]
fn a_broken_policy_file_does_not_stop_the_others() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "shop")]);
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &shop)]);
    s.write("policies/typo.toml", "targets = [\"nas\"]\nretension = 3\n");
    let o = s.run(&["run"]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("policies/typo.toml"), "{err}");
    assert!(err.contains("retension"), "{err}");
    assert_eq!(snapshot_count(&s, "nas", "shop"), 1);
    expect_code(&s.run(&["run", "shop"]), 0);
    expect_code(&s.run(&["check"]), 2);
    expect_code(&s.run(&["run", "typo"]), 2);
}

/// A lock held by another process fails that policy only.
#[test]
fn a_held_lock_fails_only_its_policy() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let a = tree(&s, "a", &[("f", "a")]);
    let b = tree(&s, "b", &[("f", "b")]);
    policy(&s, "alpha", &["nas", "offsite"], "", &[("site", &a)]);
    policy(&s, "beta", &["nas", "offsite"], "", &[("site", &b)]);
    expect_code(&s.run(&["run"]), 0);
    // Hold alpha's lock from another process with flock(1).
    let lock = s.path("state/locks/alpha.lock");
    assert!(lock.exists(), "the lock file is kept");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock (util-linux)");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = s.run(&["run", "--json"]);
    holder.kill().ok();
    holder.wait().ok();
    expect_code(&o, 1);
    assert!(stderr(&o).contains("policy alpha"), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(j[0]["policy"], "beta");
    assert_eq!(snapshot_count(&s, "nas", "beta"), 2);
    assert_eq!(snapshot_count(&s, "nas", "alpha"), 1);
}

/// An unplugged disk is unreachable, named, and never recreated on the local
/// disk; `check` says so too. `init` refuses a non-empty foreign directory.
#[test]
fn a_target_that_is_not_mounted_is_unreachable_not_recreated() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "usb"]);
    let shop = tree(&s, "shop", &[("index.html", "shop")]);
    policy(&s, "shop", &["nas", "usb"], "", &[("site", &shop)]);
    expect_code(&s.run(&["run"]), 0);
    unplug(&s, "usb");

    let o = s.run(&["run", "--json"]);
    expect_code(&o, 3);
    let j = json(&o);
    assert_eq!(j[0]["status"], "partial");
    let usb = &j[0]["targets"][1];
    assert_eq!(usb["name"], "usb");
    assert!(
        usb["error"].as_str().unwrap().contains("not mounted"),
        "{usb}"
    );
    assert!(
        !root(&s, "usb").exists(),
        "the mount point must stay empty: nothing recreated"
    );
    let o = s.run(&["check"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("target usb"), "{}", stdout(&o));
    assert!(stdout(&o).contains("FAILED"), "{}", stdout(&o));
    assert!(!root(&s, "usb").exists(), "check creates nothing");
    // Listing names the unreachable target (exit 3) and shows the rest.
    let o = s.run(&["list", "--json"]);
    expect_code(&o, 3);

    // A non-empty directory that is not a target is not adopted by init.
    std::fs::create_dir_all(root(&s, "usb")).unwrap();
    std::fs::write(root(&s, "usb").join("holiday.jpg"), "not a backup").unwrap();
    let o = s.run(&["init", "usb"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("not empty"), "{}", stdout(&o));
    assert!(!root(&s, "usb").join("backupctl-target.json").exists());
    std::fs::remove_dir_all(root(&s, "usb")).unwrap();
    std::fs::remove_dir(s.path("mnt-usb")).unwrap();
    std::fs::rename(s.path("mnt-usb.away"), s.path("mnt-usb")).unwrap();
    expect_code(&s.run(&["init", "usb"]), 0);
    let o = s.run(&["init", "--json"]);
    expect_code(&o, 0);
    assert!(json(&o)["targets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "already initialised"));
}

/// `create = true` makes the first run create a local directory target.
#[test]
fn create_true_targets_are_created_by_the_first_run() {
    let s = Setup::new();
    s.write(
        "backupctl.toml",
        "state_dir = \"state\"\n[targets.a]\ntype = \"fs\"\npath = \"local/a\"\nlocation = \"x\"\ncreate = true\n[targets.b]\ntype = \"fs\"\npath = \"local/b\"\nlocation = \"y\"\ncreate = true\n",
    );
    let shop = tree(&s, "shop", &[("index.html", "shop")]);
    policy(&s, "shop", &["a", "b"], "", &[("site", &shop)]);
    let o = s.run(&["check", "--json"]);
    expect_code(&o, 0);
    assert!(!s.path("local/a").exists(), "check creates nothing");
    expect_code(&s.run(&["run"]), 0);
    assert!(s.path("local/a/backupctl-target.json").is_file());
    assert!(s.path("local/b/backupctl-target.json").is_file());
}

/// Under cron (`-q`): nothing at all when everything succeeded; a short
/// summary naming what failed and what to do otherwise.
#[test]
fn quiet_is_silent_on_success_and_short_on_trouble() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "shop")]);
    policy(
        &s,
        "shop",
        &["nas", "offsite"],
        "schedule = \"30 2 * * *\"\n[verify]\nschedule = \"0 5 * * 0\"",
        &[("site", &shop)],
    );
    let silent = |args: &[&str], now: &str| {
        let o = s
            .cmd()
            .env("BACKUPCTL_NOW", now)
            .arg("-q")
            .args(args)
            .output()
            .unwrap();
        expect_code(&o, 0);
        assert_eq!(stdout(&o), "", "{args:?}: stdout must be empty");
        assert_eq!(stderr(&o), "", "{args:?}: stderr must be empty");
    };
    // The very first run creates the host signing key and says, once, how
    // to pin it (even under -q: the operator must act on it).
    let o = s
        .cmd()
        .env("BACKUPCTL_NOW", "2026-03-01T03:00:00Z")
        .args(["-q", "run"])
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("trusted_keys = [\"ed25519:"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
    silent(&["run", "--due", "--prune"], "2026-03-02T03:00:00Z");
    silent(&["run", "--due", "--prune"], "2026-03-02T03:05:00Z");
    silent(&["prune"], "2026-03-02T03:06:00Z");
    silent(&["verify", "--all"], "2026-03-02T03:07:00Z");
    silent(&["verify", "--due"], "2026-03-08T06:00:00Z");
    silent(&["sync"], "2026-03-08T06:00:00Z");

    unplug(&s, "offsite");
    let o = s
        .cmd()
        .env("BACKUPCTL_NOW", "2026-03-03T03:00:00Z")
        .args(["-q", "run", "--due", "--prune"])
        .output()
        .unwrap();
    expect_code(&o, 3);
    let out = stdout(&o);
    assert!(out.contains("policy shop"), "{out}");
    assert!(out.contains("offsite"), "{out}");
    assert!(out.contains("to do:"), "{out}");
    assert!(out.lines().count() <= 8, "short: {out}");
}

/// A partial run leaves the missed target due: the next `run --due` copies
/// what it missed once it answers, without a new backup; until then each
/// attempt says it is still missing (exit 3).
#[test]
fn a_partial_run_is_caught_up_by_the_next_due_run() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "v1")]);
    policy(
        &s,
        "shop",
        &["nas", "offsite"],
        "schedule = \"30 2 * * *\"",
        &[("site", &shop)],
    );
    let at = |now: &str, args: &[&str]| {
        s.cmd()
            .env("BACKUPCTL_NOW", now)
            .args(args)
            .output()
            .unwrap()
    };
    expect_code(&at("2026-03-01T03:00:00Z", &["run", "--due"]), 0);
    unplug(&s, "offsite");
    std::fs::write(shop.join("index.html"), "v2").unwrap();
    expect_code(&at("2026-03-02T03:00:00Z", &["run", "--due"]), 3);
    // Not scheduled again, but the missed target keeps it acting.
    let o = at("2026-03-02T03:05:00Z", &["run", "--due", "--json"]);
    expect_code(&o, 3);
    assert!(json(&o)[0]["catch_up"].is_object(), "{}", stdout(&o));
    assert_eq!(snapshot_count(&s, "nas", "shop"), 2);
    plug(&s, "offsite");
    let o = at("2026-03-02T03:10:00Z", &["run", "--due", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert!(j[0]["snapshot"].is_null(), "no new backup: {j}");
    assert_eq!(j[0]["catch_up"]["result"], "ok", "{j}");
    assert_eq!(snapshot_count(&s, "offsite", "shop"), 2);
    assert_eq!(snapshot_count(&s, "nas", "shop"), 2);
    // Caught up: nothing acts until the next occurrence.
    let o = at("2026-03-02T03:15:00Z", &["run", "--due", "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o), serde_json::json!([]));
    let out = s.path("from-offsite");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            "--target",
            "offsite",
            "--to",
            out.to_str().unwrap(),
        ]),
        0,
    );
    assert_eq!(
        std::fs::read_to_string(out.join("site/index.html")).unwrap(),
        "v2"
    );
}

/// A target that was away while prune ran elsewhere still holds snapshots
/// retention removed: `sync` never copies them back, and the next prune
/// removes them there.
#[test]
fn sync_never_resurrects_what_prune_removed() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "v1")]);
    s.write(
        "policies/shop.toml",
        &format!(
            "targets = [\"nas\", \"offsite\"]\n[retention]\nlast = 1\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = {:?}\n",
            shop.display().to_string()
        ),
    );
    expect_code(&s.run(&["run", "--time", "2026-03-01T03:00:00Z"]), 0);
    unplug(&s, "offsite");
    std::fs::write(shop.join("index.html"), "v2").unwrap();
    expect_code(&s.run(&["run", "--time", "2026-03-02T03:00:00Z"]), 3);
    expect_code(&s.run(&["prune"]), 3);
    assert_eq!(snapshot_count(&s, "nas", "shop"), 1);
    plug(&s, "offsite");
    let o = s.run(&["sync", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j[0]["not_retained"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(
        snapshot_count(&s, "nas", "shop"),
        1,
        "the pruned snapshot must not come back"
    );
    assert_eq!(snapshot_count(&s, "offsite", "shop"), 2);
    expect_code(&s.run(&["prune"]), 0);
    assert_eq!(snapshot_count(&s, "offsite", "shop"), 1);
    assert_eq!(archives(&root(&s, "offsite"), "shop").len(), 1);
}

/// `--include` takes the same gitignore-style patterns as `exclude`, says
/// which pattern matched nothing, and fails (leaving no `--to` behind) when
/// nothing matches at all.
#[test]
fn include_is_gitignore_style_and_says_when_nothing_matches() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let site = tree(
        &s,
        "site",
        &[
            ("index.php", "i"),
            ("lib/deep/a.php", "a"),
            ("lib/readme.txt", "r"),
            ("uploads/2026/x.jpg", "x"),
            ("uploads/y.jpg", "y"),
        ],
    );
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &site)]);
    expect_code(&s.run(&["run"]), 0);
    let out = s.path("r1");
    let o = s.run(&[
        "restore",
        "shop",
        "--to",
        out.to_str().unwrap(),
        "--include",
        "*.php",
        "--include",
        "uploads/",
        "--include",
        "nothing-like-this",
    ]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("nothing-like-this"), "{}", stderr(&o));
    let got: Vec<String> = walkdir::WalkDir::new(out.join("site"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(out.join("site"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        got,
        [
            "index.php",
            "lib/deep/a.php",
            "uploads/2026/x.jpg",
            "uploads/y.jpg"
        ]
    );
    let out2 = s.path("r2");
    let o = s.run(&[
        "restore",
        "shop",
        "--to",
        out2.to_str().unwrap(),
        "--include",
        "*.doc",
    ]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("matches no file"), "{}", stderr(&o));
    assert!(!out2.exists(), "no --to left behind");
}

/// Small things: `list` takes several policies, an ambiguous id prefix is a
/// usage error, human times are to the second, and a restore that fails
/// removes the destination it created.
#[test]
fn list_prefixes_times_and_failed_restores() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let a = tree(&s, "a", &[("f", "a")]);
    let b = tree(&s, "b", &[("f", "b")]);
    policy(&s, "alpha", &["nas", "offsite"], "", &[("site", &a)]);
    policy(&s, "beta", &["nas", "offsite"], "", &[("site", &b)]);
    s.write("policies/gamma.toml", "nonsense = [");
    let o = s.run(&["run", "alpha", "--time", "2026-03-01T03:00:00.123456+01:00"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("2026-03-01 03:00:00+01:00"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains(".123456"), "{}", stdout(&o));
    expect_code(
        &s.run(&["run", "alpha", "--time", "2026-03-01T03:00:00Z"]),
        0,
    );
    expect_code(&s.run(&["run", "beta"]), 0);

    let o = s.run(&["list", "alpha", "beta", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert_eq!(j[0]["snapshots"].as_array().unwrap().len(), 2);
    // Both alpha snapshots start with 20260301T0: ambiguous.
    let out = s.path("amb");
    let o = s.run(&[
        "restore",
        "alpha",
        "20260301T0",
        "--to",
        out.to_str().unwrap(),
    ]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("matches 2 snapshots"), "{}", stderr(&o));

    // Every copy damaged: the restore fails and leaves no destination.
    for t in ["nas", "offsite"] {
        for a in archives(&root(&s, t), "beta") {
            flip_byte(&a);
        }
    }
    let out = s.path("fails");
    let o = s.run(&["restore", "beta", "--to", out.to_str().unwrap()]);
    expect_code(&o, 1);
    assert!(!out.exists(), "{} left behind", out.display());
    // An existing (empty) destination is left where it was.
    std::fs::create_dir_all(&out).unwrap();
    expect_code(
        &s.run(&["restore", "beta", "--to", out.to_str().unwrap()]),
        1,
    );
    assert!(out.is_dir());
}

/// What a `kill -9` during `sync` leaves (its staging directory, a
/// temporary beside the archives on an fs target) is cleaned by the next
/// sync or run of that policy, as for a killed run.
#[test]
fn leftovers_of_a_killed_sync_are_cleaned() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "v1")]);
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &shop)]);
    expect_code(&s.run(&["run"]), 0);
    let staging = s.path("state/staging/shop/sync-0123abcd");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("x.tar.zst"), "partial").unwrap();
    let tmp = root(&s, "offsite").join("shop/archives/deadbeef.b3sums.tmp-0badf00d");
    std::fs::write(&tmp, "partial").unwrap();
    // The copy sync has to make writes into the archives directory.
    for a in archives(&root(&s, "offsite"), "shop") {
        std::fs::remove_file(a).unwrap();
    }
    let o = s.run(&["sync"]);
    expect_code(&o, 0);
    assert!(!staging.exists(), "sync staging left by a killed sync");
    assert!(!tmp.exists(), "temporary left by a killed sync");
    assert!(
        stderr(&o).contains("left by an interrupted"),
        "{}",
        stderr(&o)
    );
}
