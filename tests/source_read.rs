//! Issue 9 (source side): reading a source tree is race-safe, and what cannot
//! be read makes the snapshot incomplete.
//!
//! Swaps happen at exactly the point between the walk's look at an entry and
//! its open, through the debug-only `BACKUPCTL_TEST_HOOK` (see
//! `backupctl::util::test_hook`), so the tests are deterministic.

use crate::common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "OUTSIDE-SECRET-4f1d9c";

/// A source tree, a secret file and a secret directory outside it, one target.
fn setup() -> (Setup, PathBuf) {
    let s = Setup::new();
    let src = s.path("src");
    for (rel, content) in [
        ("a-first.txt", "first\n"),
        ("uploads/photo.jpg", "jpeg\n"),
        ("uploads/deep/x.txt", "x\n"),
        ("wp-config.php", "<?php // mine\n"),
        ("zz-last.txt", "last\n"),
    ] {
        s.write(&format!("src/{rel}"), content);
    }
    s.write("outside/shadow", &format!("root:{SECRET}:19000::::::\n"));
    s.write(
        "outside/keys/id_ed25519",
        &format!("{SECRET} private key\n"),
    );
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    (s, src)
}

/// `backupctl run --json` with the test hook `script` (sh; `$1` the hook
/// point, `$2` the path, `$3` the relative path); kills it and fails after
/// `limit`. Returns the output and how long it took.
fn run_with_hook(s: &Setup, script: &str, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = s
        .cmd()
        .args(["run", "--json"])
        .env("BACKUPCTL_TEST_HOOK", script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let o = child.wait_with_output().unwrap();
            panic!(
                "run did not finish within {limit:?}\n{}\n{}",
                stdout(&o),
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

/// The tar stream of the one snapshot on target `t`, rebuilt from its packs
/// (and checked against the manifest's BLAKE3).
fn tar_bytes(s: &Setup) -> Vec<u8> {
    let t = s.target_dir("t");
    assert_eq!(manifests(&t, "shop").len(), 1);
    latest_tar(&t, "shop", "site")
}

/// The file index records of the one snapshot on target `t`, and the raw
/// index stream.
fn index_records(s: &Setup) -> (Vec<serde_json::Value>, Vec<u8>) {
    let t = s.target_dir("t");
    let ms = manifests(&t, "shop");
    assert_eq!(ms.len(), 1);
    let m = manifest(&ms[0]);
    let rec = source_record(&m, "site");
    let raw = stream_from_list(&t, "shop", rec["index"]["list"].as_str().unwrap());
    assert_eq!(
        blake3::hash(&raw).to_hex().to_string(),
        rec["index"]["blake3"].as_str().unwrap(),
        "the index stream is what the manifest says"
    );
    let records = String::from_utf8(raw.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (records, raw)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Restore the latest snapshot and return the restored source directory.
fn restore(s: &Setup) -> PathBuf {
    let out = s.path("restored");
    let o = s.run(&["restore", "shop", "--to", out.to_str().unwrap()]);
    expect_code(&o, 0);
    out.join("site")
}

/// Every regular file's content under `root`, by relative path.
fn contents(root: &Path) -> Vec<(String, String)> {
    snapshot_tree(root)
        .into_iter()
        .filter(|(_, v)| v.kind == "file")
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.data).into_owned()))
        .collect()
}

/// The checks every swap test makes: the hook fired, the outside secret is
/// nowhere in the archive or the restored tree, a warning names the swapped
/// path and says `what`, and everything else was backed up (`before`: the
/// tree's files before the run; reading a FIFO in it now would block).
fn assert_swap_skipped(
    s: &Setup,
    src: &Path,
    before: Vec<(String, String)>,
    o: &Output,
    swapped: &str,
    what: &str,
) {
    expect_code(o, 0);
    assert!(s.path("hook-fired").exists(), "the test hook never ran");
    let j = json(o);
    assert_eq!(j[0]["status"], "complete", "{j}");
    let warnings: Vec<String> = j[0]["sources"][0]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    let named = src.join(swapped).display().to_string();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&named) && w.contains(what) && w.contains("skipped")),
        "a warning names {named} and says {what:?}: {warnings:?}"
    );
    assert!(
        j[0]["sources"][0]["unreadable"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a swap is a change, not an unreadable file: {j}"
    );
    // Not in the tar stream, not in the file index, not in the manifest.
    let tar = tar_bytes(s);
    assert!(!contains(&tar, SECRET), "outside content in the archive");
    let (records, raw) = index_records(s);
    assert!(!contains(&raw, SECRET), "outside content in the file index");
    let listed: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"a-first.txt") && listed.contains(&"zz-last.txt"),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.starts_with(swapped)),
        "{swapped} is in the file index: {listed:?}"
    );
    let manifest = std::fs::read_to_string(&manifests(&s.target_dir("t"), "shop")[0]).unwrap();
    assert!(!manifest.contains(SECRET), "{manifest}");
    assert!(!manifest.contains(&format!("\"{swapped}")), "{manifest}");
    // The rest of the tree is there, unchanged.
    let restored = restore(s);
    let got = contents(&restored);
    assert!(
        !got.iter().any(|(_, c)| c.contains(SECRET)),
        "outside content restored: {got:?}"
    );
    let expected: Vec<(String, String)> = before
        .into_iter()
        .filter(|(k, _)| !k.starts_with(swapped))
        .collect();
    let got: Vec<(String, String)> = got
        .into_iter()
        .filter(|(k, _)| !k.starts_with(swapped))
        .collect();
    assert_eq!(got, expected);
    assert!(
        !restored.join(swapped).exists() && restored.join(swapped).symlink_metadata().is_err(),
        "{swapped} is not restored in any form"
    );
}

/// A hook that replaces `rel` with what `replace` (sh, `$2` the path) makes.
fn hook(s: &Setup, rel: &str, replace: &str) -> String {
    format!(
        "[ \"$1:$3\" = 'before-open:{rel}' ] || exit 0\ntouch '{}'\n{replace}\n",
        s.path("hook-fired").display()
    )
}

#[test]
fn a_file_swapped_for_a_symlink_to_an_outside_file_is_not_read() {
    let (s, src) = setup();
    let script = hook(
        &s,
        "wp-config.php",
        &format!(
            "rm -f \"$2\" && ln -s '{}' \"$2\"",
            s.path("outside/shadow").display()
        ),
    );
    let before = contents(&src);
    let (o, _) = run_with_hook(&s, &script, Duration::from_secs(60));
    assert_swap_skipped(
        &s,
        &src,
        before,
        &o,
        "wp-config.php",
        "replaced by a symbolic link",
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_to_an_outside_directory_is_not_read() {
    let (s, src) = setup();
    let script = hook(
        &s,
        "uploads",
        &format!(
            "rm -rf \"$2\" && ln -s '{}' \"$2\"",
            s.path("outside/keys").display()
        ),
    );
    let before = contents(&src);
    let (o, _) = run_with_hook(&s, &script, Duration::from_secs(60));
    assert_swap_skipped(
        &s,
        &src,
        before,
        &o,
        "uploads",
        "replaced by a symbolic link",
    );
}

#[test]
fn a_file_swapped_for_a_fifo_is_skipped_at_once() {
    let (s, src) = setup();
    let script = hook(&s, "wp-config.php", "rm -f \"$2\" && mkfifo \"$2\"");
    let before = contents(&src);
    let (o, took) = run_with_hook(&s, &script, Duration::from_secs(60));
    assert_swap_skipped(&s, &src, before, &o, "wp-config.php", "replaced by a FIFO");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_file_swapped_for_another_file_is_not_substituted() {
    // Same name, other inode (a rename over it): not what the walk saw.
    let (s, src) = setup();
    let script = hook(
        &s,
        "wp-config.php",
        &format!(
            "cp '{}' \"$2.new\" && mv \"$2.new\" \"$2\"",
            s.path("outside/shadow").display()
        ),
    );
    let before = contents(&src);
    let (o, _) = run_with_hook(&s, &script, Duration::from_secs(60));
    assert_swap_skipped(
        &s,
        &src,
        before,
        &o,
        "wp-config.php",
        "replaced by another file",
    );
}

// ---- unreadable files (as an unprivileged user) ----

/// backupctl under `setpriv` to nobody, when running as root with setpriv
/// available.
fn as_nobody() -> Option<Command> {
    if !running_as_root() {
        eprintln!("skipped: needs root (to make files another user cannot read)");
        return None;
    }
    let ok = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: setpriv cannot switch to nobody here");
        return None;
    }
    Some(bin_via(
        "setpriv",
        &["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"],
    ))
}

fn chown_nobody(p: &Path) {
    let st = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn unreadable_files_make_the_snapshot_incomplete_exit_3() {
    let Some(mut nobody) = as_nobody() else {
        return;
    };
    let (s, src) = setup();
    // nobody must reach the config, and own the tree, target and state.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.write("src/private/key.pem", "root only\n");
    s.write("src/secret.conf", "root only\n");
    std::fs::create_dir_all(s.path("targets")).unwrap();
    std::fs::create_dir_all(s.path("state")).unwrap();
    s.write(
        "policies/shop.toml",
        &format!(
            "targets = [\"t\"]\nschedule = \"30 2 * * *\"\n[retention]\ndaily = 7\n\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n",
            src.display()
        ),
    );
    for d in ["src", "targets", "state"] {
        chown_nobody(&s.path(d));
    }
    // Owned by root, closed to others: nobody cannot read them.
    for (p, mode) in [("src/private", 0o700), ("src/secret.conf", 0o600)] {
        std::os::unix::fs::chown(s.path(p), Some(0), Some(0)).unwrap();
        std::fs::set_permissions(s.path(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let at = "2026-03-01T03:00:00Z";
    let o = nobody
        .arg("--config")
        .arg(s.config_path())
        .args(["run", "--json"])
        .env("BACKUPCTL_NOW", at)
        .output()
        .unwrap();
    expect_code(&o, 3);
    let j = json(&o);
    assert_eq!(j[0]["status"], "incomplete", "{j}");
    assert!(
        j[0]["snapshot"].is_string(),
        "the snapshot is recorded: {j}"
    );
    assert_eq!(
        j[0]["sources"][0]["unreadable"],
        serde_json::json!(["private/", "secret.conf"]),
        "{j}"
    );
    let warnings = j[0]["sources"][0]["warnings"].to_string();
    assert!(
        warnings.contains("secret.conf") && warnings.contains("ermission denied"),
        "{warnings}"
    );
    // The manifest says so; the readable files are all there.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests(&s.target_dir("t"), "shop")[0]).unwrap())
            .unwrap();
    assert_eq!(
        m["sources"][0]["unreadable"],
        serde_json::json!(["private/", "secret.conf"])
    );
    assert_eq!(m["sources"][0]["files"], 5, "{m}");
    let (records, _) = index_records(&s);
    let files: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "file")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "a-first.txt",
            "uploads/deep/x.txt",
            "uploads/photo.jpg",
            "wp-config.php",
            "zz-last.txt"
        ]
    );
    // Nothing of what could not be read: the unreadable directory is kept
    // only as an empty directory, the unreadable file not at all.
    for r in &records {
        let p = r["path"].as_str().unwrap();
        assert!(
            !p.starts_with("private/") && p != "secret.conf",
            "{r} in the index"
        );
        if p == "private" {
            assert_eq!(r["type"], "dir", "{r}");
        }
    }
    assert!(!contains(&tar_bytes(&s), "root only"));
    // list: the field in --json, a marker for people.
    let o = s.run(&["list", "--json"]);
    expect_code(&o, 0);
    let l = json(&o);
    assert_eq!(
        l[0]["snapshots"][0]["sources"][0]["unreadable"],
        serde_json::json!(["private/", "secret.conf"])
    );
    let o = s.run(&["list"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("[incomplete: 2 unreadable]"),
        "{}",
        stdout(&o)
    );
    // Done as far as the schedule goes: not due again 5 minutes later.
    let o = s
        .cmd()
        .args(["run", "--due", "--json"])
        .env("BACKUPCTL_NOW", "2026-03-01T03:05:00Z")
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert_eq!(json(&o), serde_json::json!([]), "not due: {}", stdout(&o));
    assert_eq!(manifests(&s.target_dir("t"), "shop").len(), 1);
}

#[test]
fn readable_trees_stay_complete_and_old_manifests_parse() {
    // No unreadable field when everything was read (manifests stay as they
    // were), and the run is complete (exit 0).
    let (s, _src) = setup();
    let o = s.run(&["run", "--json"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)[0]["status"], "complete");
    let text = std::fs::read_to_string(&manifests(&s.target_dir("t"), "shop")[0]).unwrap();
    assert!(!text.contains("unreadable"), "{text}");
    let o = s.run(&["list", "--json"]);
    expect_code(&o, 0);
    assert_eq!(
        json(&o)[0]["snapshots"][0]["sources"][0]["unreadable"],
        serde_json::json!([])
    );
    expect_code(&s.run(&["verify"]), 0);
}
