//! The deployment shapes users run, on directory targets: several sources per
//! policy, several policies, one policy's trouble never stopping another,
//! targets that are not there, quiet cron output, catching up a target that
//! missed a night, and the restore details operators rely on.

use crate::common;

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
        // Two sources, each with a tar stream and an index stream, each
        // rebuilt independently and matching the manifest's BLAKE3.
        let r = root(&s, t);
        let m = manifests(&r, "shop");
        let mut want_lists = std::collections::BTreeSet::new();
        for src in ["site", "uploads"] {
            let tar = source_tar(&r, "shop", &m[0], src);
            assert!(!tar.is_empty(), "{t}: empty {src} stream");
            let rec = source_record(&manifest(&m[0]), src).clone();
            want_lists.insert(rec["stream"]["list"].as_str().unwrap().to_string());
            want_lists.insert(rec["index"]["list"].as_str().unwrap().to_string());
        }
        let got_lists: std::collections::BTreeSet<String> = lists(&r, "shop")
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got_lists, want_lists, "{t}: extent lists");
        assert!(!packs(&r, "shop").is_empty(), "{t}: no packs");
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
    // What the removed snapshot alone used is gone from offsite too: only
    // the kept snapshot's lists remain, and its packs are exactly the ones
    // those lists name; both targets hold the same data again.
    for t in ["nas", "offsite"] {
        let r = root(&s, t);
        let m = manifest(&manifests(&r, "shop")[0]);
        let rec = source_record(&m, "site");
        let keep: Vec<String> = ["stream", "index"]
            .iter()
            .map(|k| rec[k]["list"].as_str().unwrap().to_string())
            .collect();
        let mut got: Vec<String> = lists(&r, "shop")
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        let mut want = keep.clone();
        want.sort();
        want.dedup();
        assert_eq!(got, want, "{t}: lists after prune");
        let mut want_packs: Vec<_> = keep
            .iter()
            .flat_map(|l| packs_of_list(&r, "shop", l))
            .collect();
        want_packs.sort();
        want_packs.dedup();
        assert_eq!(packs(&r, "shop"), want_packs, "{t}: packs after prune");
        let tar = latest_tar(&r, "shop", "site");
        let out = s.path(&format!("untar-{t}"));
        untar(&tar, &out);
        assert_eq!(
            std::fs::read_to_string(out.join("index.html")).unwrap(),
            "v2"
        );
    }
    let rel = |t: &str| -> Vec<String> {
        packs(&root(&s, t), "shop")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(rel("nas"), rel("offsite"));
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
        let r = root(&s, t);
        let m = manifest(&manifests(&r, "beta")[0]);
        let list = source_record(&m, "site")["stream"]["list"]
            .as_str()
            .unwrap()
            .to_string();
        let ps = packs_of_list(&r, "beta", &list);
        assert!(!ps.is_empty());
        for p in ps {
            flip_byte(&p);
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

/// What a `kill -9` during `sync` leaves (temporaries beside the packs
/// and extent lists on an fs target: sync holds what it copies in memory,
/// it has no staging directory of its own) is cleaned by the next sync of
/// that policy; what a killed run leaves in the staging area is cleaned by
/// the next run, and neither stops the copy.
#[test]
fn leftovers_of_a_killed_sync_are_cleaned() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let shop = tree(&s, "shop", &[("index.html", "v1")]);
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &shop)]);
    expect_code(&s.run(&["run"]), 0);
    let off = root(&s, "offsite");
    let ps = packs(&off, "shop");
    assert!(!ps.is_empty());
    let pack_dir = ps[0].parent().unwrap().to_path_buf();
    let tmp_pack = pack_dir.join(format!(
        "{}.tmp-0badf00d",
        ps[0].file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp_pack, "partial").unwrap();
    let tmp_list = off.join("shop/lists/deadbeef.extents.tmp-0badf00d");
    std::fs::write(&tmp_list, "partial").unwrap();
    // The copy sync has to make writes into those directories.
    for p in ps.iter().chain(lists(&off, "shop").iter()) {
        std::fs::remove_file(p).unwrap();
    }
    let o = s.run(&["sync", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert_eq!(j[0]["copies"][0]["status"], "copied", "{j}");
    assert!(!tmp_pack.exists(), "pack temporary left by a killed sync");
    assert!(!tmp_list.exists(), "list temporary left by a killed sync");
    assert!(
        stderr(&o).contains("left by an interrupted"),
        "{}",
        stderr(&o)
    );
    assert!(
        !s.path("state/staging/shop").exists()
            || files_under(&s.path("state/staging/shop")).is_empty(),
        "sync stages nothing locally"
    );
    // The copy is whole: rebuilt independently and restored from offsite alone.
    let tar = latest_tar(&off, "shop", "site");
    let x = s.path("untarred");
    untar(&tar, &x);
    assert_eq!(std::fs::read_to_string(x.join("index.html")).unwrap(), "v1");
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
    assert_same_tree(&shop, &out.join("site"));
    // A killed run's staging directory goes with the next run.
    let staging = s.path("state/staging/shop/20260101T000000Z-0123abcd");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("0123.pack"), "partial").unwrap();
    let o = s.run(&["run"]);
    expect_code(&o, 0);
    assert!(!staging.exists(), "staging left by a killed run");
    assert!(
        stderr(&o).contains("left by an interrupted"),
        "{}",
        stderr(&o)
    );
}

/// Pack file names of a policy on an fs target.
fn pack_names(target: &Path, policy: &str) -> std::collections::BTreeSet<String> {
    packs(target, policy)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A pack the latest snapshot uses, damaged on the first target: restore
/// still succeeds (from the other target) with identical bytes, `verify`
/// fails naming the damaged target, `sync` replaces the pack with an intact
/// copy (byte for byte the other target's), and `verify` passes again.
#[test]
fn a_pack_damaged_on_one_target_is_restored_around_reported_and_replaced() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let site = s.path("www");
    make_tree(&site);
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &site)]);
    expect_code(&s.run(&["run"]), 0);
    let (nas, off) = (root(&s, "nas"), root(&s, "offsite"));
    let m = manifest(manifests(&nas, "shop").last().unwrap());
    let list = source_record(&m, "site")["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = packs_of_list(&nas, "shop", &list)[0].clone();
    let twin = off.join(victim.strip_prefix(&nas).unwrap());
    let good = std::fs::read(&twin).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), good, "same pack on both");
    flip_byte(&victim);
    assert_ne!(std::fs::read(&victim).unwrap(), good);
    let pack_name = victim.file_stem().unwrap().to_string_lossy().into_owned();

    // The damaged target alone cannot serve it...
    let o = s.run(&[
        "restore",
        "shop",
        "--target",
        "nas",
        "--to",
        s.path("from-nas").to_str().unwrap(),
    ]);
    expect_code(&o, 1);
    // ...but the restore fails over to offsite, byte-exact.
    let out = s.path("restored");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_same_tree(&site, &out.join("site"));

    // verify reports the damage on nas, and only there.
    let o = s.run(&["verify", "shop", "--json"]);
    assert_ne!(code(&o), 0, "verify passed over a damaged pack");
    let j = json(&o);
    assert_eq!(j[0]["result"], "failed", "{j}");
    let per_target = |name: &str| -> String {
        j[0]["snapshots"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .unwrap_or_else(|| panic!("no {name} in {j}"))["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(per_target("nas"), "failed", "{j}");
    assert_eq!(per_target("offsite"), "ok", "{j}");
    let err = stderr(&o);
    assert!(err.contains("target nas"), "{err}");
    assert!(
        err.contains(&pack_name) || err.contains(&pack_name[..16]),
        "the damaged pack is named: {err}"
    );

    // sync puts the intact copy back on nas.
    let o = s.run(&["sync", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    let repaired = j[0]["repaired"].as_array().cloned().unwrap_or_default();
    assert!(
        repaired
            .iter()
            .any(|r| r[0] == "nas" && r[1].as_str().unwrap().contains(&pack_name[..16])),
        "{j}"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        good,
        "the damaged pack on nas is byte for byte offsite's again"
    );
    assert_eq!(b3sum(&victim), b3sum(&twin));
    expect_code(&s.run(&["verify", "shop"]), 0);
    // And nas alone serves the snapshot again.
    let out = s.path("from-nas-again");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            "--target",
            "nas",
            "--to",
            out.to_str().unwrap(),
        ]),
        0,
    );
    assert_same_tree(&site, &out.join("site"));
}

/// A target that was down during a run gets, on the next run, the snapshot
/// it missed and the packs that run uploaded to the others only (copied
/// from the target that holds them); then it alone restores the source.
#[test]
fn a_target_that_was_down_gets_the_missed_snapshot_and_its_packs_next_run() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    let site = s.path("www");
    make_tree(&site);
    policy(
        &s,
        "shop",
        &["nas", "offsite"],
        "schedule = \"30 2 * * *\"",
        &[("site", &site)],
    );
    let at = |now: &str, args: &[&str]| {
        s.cmd()
            .env("BACKUPCTL_NOW", now)
            .args(args)
            .output()
            .unwrap()
    };
    let (nas, off) = (root(&s, "nas"), root(&s, "offsite"));
    expect_code(&at("2026-03-01T03:00:00Z", &["run", "--due"]), 0);
    let before = pack_names(&nas, "shop");
    assert_eq!(before, pack_names(&off, "shop"));

    unplug(&s, "offsite");
    // New data only the missed run uploads (incompressible, so new packs).
    let noise: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519).rotate_left(13) >> 7) as u8)
        .collect();
    std::fs::write(site.join("data/new.bin"), &noise).unwrap();
    std::fs::write(site.join("public/index.html"), "<h1>v2</h1>\n").unwrap();
    let o = at("2026-03-02T03:00:00Z", &["run", "--due", "--json"]);
    expect_code(&o, 3);
    let missed_id = json(&o)[0]["snapshot"].as_str().unwrap().to_string();
    let missed: std::collections::BTreeSet<String> = pack_names(&nas, "shop")
        .difference(&before)
        .cloned()
        .collect();
    assert!(!missed.is_empty(), "the missed run uploaded new packs");
    plug(&s, "offsite");
    assert_eq!(snapshot_count(&s, "offsite", "shop"), 1);
    assert!(pack_names(&off, "shop").is_disjoint(&missed));

    // The next run: nothing changed, so no new pack; offsite receives the
    // missed packs from nas, then the missed snapshot too.
    let o = at("2026-03-03T03:00:00Z", &["run", "--due", "--json"]);
    expect_code(&o, 0);
    let j = json(&o);
    assert!(j[0]["snapshot"].is_string(), "a new snapshot: {j}");
    assert_eq!(j[0]["status"], "complete", "{j}");
    let t = |name: &str| {
        j[0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(t("offsite")["packs_uploaded"], 0, "{j}");
    assert_eq!(t("offsite")["packs_copied"], missed.len(), "{j}");
    assert_eq!(t("nas")["packs_copied"], 0, "{j}");
    assert_eq!(j[0]["catch_up"]["result"], "ok", "{j}");
    assert_eq!(snapshot_count(&s, "offsite", "shop"), 3);
    let ids = |r: &Path| -> Vec<String> {
        manifests(r, "shop")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(ids(&off), ids(&nas));
    assert!(ids(&off).iter().any(|n| n.starts_with(&missed_id)));
    assert_eq!(pack_names(&off, "shop"), pack_names(&nas, "shop"));
    for p in &missed {
        let hh = &p[..2];
        let rel = format!("shop/packs/{hh}/{p}");
        assert_eq!(
            std::fs::read(off.join(&rel)).unwrap(),
            std::fs::read(nas.join(&rel)).unwrap(),
            "{rel} copied intact"
        );
    }
    // Independently rebuilt from offsite: the missed snapshot's stream.
    let missed_manifest = off.join(format!("shop/snapshots/{missed_id}.json"));
    let tar = source_tar(&off, "shop", &missed_manifest, "site");
    let x = s.path("untarred");
    untar(&tar, &x);
    assert_eq!(std::fs::read(x.join("data/new.bin")).unwrap(), noise);

    // offsite alone (nas unplugged) restores the latest and the missed one.
    unplug(&s, "nas");
    for (snap, dir) in [(None, "latest"), (Some(missed_id.as_str()), "missed")] {
        let out = s.path(&format!("from-offsite-{dir}"));
        let mut args = vec!["restore", "shop"];
        args.extend(snap);
        args.extend(["--target", "offsite", "--to", out.to_str().unwrap()]);
        let o = s.run(&args);
        expect_code(&o, 0);
        assert_same_tree(&site, &out.join("site"));
    }
}

/// `verify --read-all` reads every pack, not only those of the sampled
/// snapshots: a pack only an older snapshot uses, damaged on one target,
/// passes a sampled verify of the newest snapshot unseen, and is named by
/// `--read-all` on that target alone.
#[test]
fn read_all_finds_damage_no_sampled_snapshot_reads() {
    let s = Setup::new();
    mounted_config(&s, &["nas", "offsite"]);
    // Incompressible, distinct content on each day, so day 2 shares no
    // content chunk with day 1.
    let bytes = |seed: u64| crate::s3_common::noise(2 << 20, seed);
    let site = s.path("www");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("day1.bin"), bytes(1)).unwrap();
    policy(&s, "shop", &["nas", "offsite"], "", &[("site", &site)]);
    expect_code(&s.run(&["run", "--time", "2026-03-01T02:00:00+00:00"]), 0);
    std::fs::remove_file(site.join("day1.bin")).unwrap();
    std::fs::write(site.join("day2.bin"), bytes(2)).unwrap();
    expect_code(&s.run(&["run", "--time", "2026-03-02T02:00:00+00:00"]), 0);

    let nas = root(&s, "nas");
    let ms = manifests(&nas, "shop");
    assert_eq!(ms.len(), 2);
    let packs_of = |m: &Path| -> std::collections::BTreeSet<std::path::PathBuf> {
        let m = manifest(m);
        let rec = source_record(&m, "site");
        ["stream", "index"]
            .iter()
            .flat_map(|k| packs_of_list(&nas, "shop", rec[k]["list"].as_str().unwrap()))
            .collect()
    };
    // The bytes of day1.bin: the largest extent of day 1's stream. Day 2
    // shares no content with it (only, perhaps, the tar end chunk).
    let day1 = manifest(&ms[0]);
    let list = source_record(&day1, "site")["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(list_path(&nas, "shop", &list)).unwrap();
    let (pack, off, len) = crate::common::largest_extent(&text);
    assert!(
        len > 1 << 20,
        "day1.bin's content is one large extent: {text}"
    );
    let victim = nas.join("shop").join(&pack);
    let mut b = std::fs::read(&victim).unwrap();
    b[off + len / 2] ^= 0xff;
    std::fs::write(&victim, b).unwrap();
    let name = victim.file_stem().unwrap().to_string_lossy().into_owned();

    // A sampled verify of the newest snapshot never reads it.
    let o = s.run(&["verify", "shop", "--sample", "1", "--json"]);
    expect_code(&o, 0);
    assert_eq!(
        json(&o)[0]["snapshots"][0]["id"],
        ms[1].file_stem().unwrap().to_str().unwrap()
    );

    // --read-all does, on nas only.
    let o = s.run(&["verify", "shop", "--sample", "1", "--read-all", "--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let j = json(&o);
    let packs = j[0]["packs"].as_array().unwrap();
    let on = |t: &str| packs.iter().find(|p| p["target"] == t).unwrap().clone();
    let damaged: Vec<String> = on("nas")["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damaged, std::slice::from_ref(&name), "{j}");
    assert!(
        on("offsite")["damaged"].as_array().unwrap().is_empty(),
        "{j}"
    );
    let total = packs_of(&ms[0]).union(&packs_of(&ms[1])).count() as u64;
    assert_eq!(on("offsite")["packs"], total, "every pack read: {j}");
    assert!(stderr(&o).contains(&name[..16]), "{}", stderr(&o));
}
