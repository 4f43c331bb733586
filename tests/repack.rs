//! Repacking, prune's last step, where users meet it: a policy of a site tree
//! and an SQLite database on a directory target and an S3 target (Garage on
//! loopback), a second policy beside it, three weeks of nightly runs each
//! followed by prune. Checked independently of backupctl: trees by BLAKE3,
//! the database with the `sqlite3` CLI, streams rebuilt by hand with `sh`,
//! `tail`, `head`, `zstd`, `tar` and `b3sum`, stored and live bytes summed
//! from the target's own files and lists.

use crate::common::{self, HashList};
use crate::prune::{
    assert_holds_exactly, fs_and_s3, fs_pair, packs_in, restore_from, Target, POLICY,
};
use crate::sched_common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const FILES: usize = 48;

/// The site: `FILES` files of 96 KiB (one chunk each) and an index page.
fn seed_site(s: &Setup) {
    for i in 0..FILES {
        s.write_source(&format!("media/f{i:02}.bin"), &random_bytes(96 << 10));
    }
    s.write_source("index.html", b"<h1>day 0</h1>");
}

/// One night's change: `n` files rewritten (which ones depends on `day`).
fn change_site(s: &Setup, day: usize, n: usize) {
    for k in 0..n {
        let i = (day * 7 + k * 5) % FILES;
        s.write_source(&format!("media/f{i:02}.bin"), &random_bytes(96 << 10));
    }
    s.write_source("index.html", format!("<h1>day {day}</h1>").as_bytes());
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let o = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI (Debian package sqlite3)");
    assert!(o.status.success(), "sqlite3 {sql}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A database of 4,000 rows of 256 random bytes; each night changes 1%.
fn seed_db(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, day INT, blob BLOB);
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 4000)
           INSERT INTO orders SELECT x, 0, randomblob(256) FROM i;",
    )
    .unwrap();
}

fn change_db(db: &Path, day: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute(
        "UPDATE orders SET day = ?1, blob = randomblob(256) WHERE id % 100 = ?1 % 100",
        [day as i64],
    )
    .unwrap();
}

/// What a snapshot must restore to: the tree's hash list and the sum of
/// the database's `day` column (queried with sqlite3 at backup time).
struct Expected {
    tree: HashList,
    db_days: String,
}

/// The stream of `list` on fs target root `root`, rebuilt with the
/// README's shell line, piped into `rest`; run from the policy directory.
fn by_hand(root: &Path, policy: &str, list: &str, rest: &str) {
    let line = format!(
        r#"while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done < lists/{list}.extents | {rest}"#
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&line)
        .current_dir(root.join(policy))
        .output()
        .unwrap();
    assert!(o.status.success(), "{line}: {}", stderr(&o));
}

/// Stored bytes (every pack's size) and live bytes (the union of the
/// extents the remaining lists name), from the directory target's files.
fn stored_and_live(root: &Path, policy: &str) -> (u64, u64) {
    let dir = root.join(policy);
    let mut ranges: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for e in std::fs::read_dir(dir.join("lists")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (o, l): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            ranges.entry(f[0].to_string()).or_default().push((o, o + l));
        }
    }
    let mut stored = 0;
    let mut live = 0;
    for e in walkdir::WalkDir::new(dir.join("packs")) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        stored += e.metadata().unwrap().len();
        let rel = e
            .path()
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut r = ranges.remove(&rel).unwrap_or_default();
        r.sort();
        let mut end = 0;
        for (a, b) in r {
            let a = a.max(end);
            if b > a {
                live += b - a;
                end = b;
            }
        }
    }
    assert!(
        ranges.is_empty(),
        "lists name packs that are not there: {ranges:?}"
    );
    (stored, live)
}

/// Snapshot ids `list --json` shows for `policy`.
fn listed(s: &Setup, policy: &str) -> Vec<String> {
    let v = stdout_json(&s.run(&["list", policy, "--json"]));
    v[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Restore `id` of `shop` from `target` alone and check it against `want`.
fn restore_and_check(s: &Setup, id: &str, target: &str, want: &Expected) {
    let to = restore_from(s, id, target, &format!("restore-{id}-{target}"));
    common::assert_hash_list(&want.tree, &to.join("site"), &format!("{id} from {target}"));
    let db = to.join("app/app.db");
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(sqlite3(&db, "SELECT sum(day) FROM orders"), want.db_days);
}

/// Three weeks, nightly run then prune (daily 3, weekly 2), on an fs and an
/// S3 target. Repacking must keep every retained snapshot restorable byte
/// for byte from each target alone and by hand, and keep stored bytes near
/// live bytes (without it, three weeks of rewritten files stay stored).
#[test]
fn three_weeks_of_nightly_prune_repack_and_every_snapshot_stays_whole() {
    let Some((s, a, b)) = fs_and_s3() else {
        return;
    };
    let db = s.path().join("app.db");
    seed_db(&db);
    s.policy(
        POLICY,
        &format!(
            "targets = [\"a\", \"b\"]\n[retention]\ndaily = 3\nweekly = 2\n\n\
             [[sources]]\nname = \"app\"\ntype = \"sqlite\"\npath = {:?}\n",
            db.display().to_string()
        ),
    );
    // A second policy on the directory target, pruned by the same command.
    let blog = s.path().join("blog");
    std::fs::create_dir_all(&blog).unwrap();
    std::fs::write(blog.join("post.md"), random_bytes(300 << 10)).unwrap();
    std::fs::write(
        s.path().join("policies/blog.toml"),
        format!(
            "targets = [\"a\"]\n[retention]\nlast = 2\n\n[[sources]]\nname = \"blog\"\n\
             type = \"files\"\npath = {:?}\n",
            blog.display().to_string()
        ),
    )
    .unwrap();
    seed_site(&s);

    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut moved_away: BTreeSet<String> = BTreeSet::new();
    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut repacks = 0;
    let mut blog_want = Vec::new();
    for day in 1..=21usize {
        if day > 1 {
            change_site(&s, day, 5);
            change_db(&db, day);
            blog_want = random_bytes(300 << 10);
            std::fs::write(blog.join("post.md"), &blog_want).unwrap();
        }
        let now = format!("2026-05-{day:02}T02:30:00Z");
        let out = s.run_at(&now, &["run", "--json"]);
        expect_code(&out, 0, &format!("run day {day}"));
        let v = stdout_json(&out);
        let id = v
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == POLICY)
            .and_then(|p| p["snapshot"].as_str())
            .unwrap()
            .to_string();
        expected.insert(
            id,
            Expected {
                tree: common::hash_list(&s.source, |_| false),
                db_days: sqlite3(&db, "SELECT sum(day) FROM orders"),
            },
        );
        // A dry run says what the prune will repack, and changes nothing.
        let before = (a.keys(), b.keys());
        let out = s.run_at(&now, &["prune", POLICY, "--dry-run", "--json"]);
        expect_code(&out, 0, "prune --dry-run");
        let dry = stdout_json(&out)[0]["repack"]["packs"].clone();
        assert_eq!((a.keys(), b.keys()), before, "a dry run changes nothing");
        let out = s.run_at(&now, &["prune", "--json"]);
        expect_code(&out, 0, &format!("prune day {day}"));
        let v = stdout_json(&out);
        let shop = v
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == POLICY)
            .unwrap();
        let rp = &shop["repack"];
        assert_eq!(rp["packs"], dry, "day {day}: the dry run's decision");
        let names = |k: &str| -> Vec<String> {
            rp[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect()
        };
        if !names("packs").is_empty() {
            repacks += 1;
            assert!(!names("packs_written").is_empty(), "{rp}");
            assert!(rp["dead_bytes"].as_u64().unwrap() > 0 || names("packs").len() > 1);
            moved_away.extend(names("packs"));
            written.extend(names("packs_written"));
        }
        let kept: Vec<String> = listed(&s, POLICY);
        expected.retain(|id, _| kept.contains(id));
        assert_eq!(
            expected.len(),
            kept.len(),
            "every listed snapshot was made here"
        );
        let kept_refs: Vec<&String> = kept.iter().collect();
        for t in [&a as &dyn Target, &b] {
            // Exactly what the remaining manifests reference; the moved packs
            // are gone, the new ones are there while referenced.
            assert_holds_exactly(t, &kept_refs);
            let packs = packs_in(&t.keys());
            assert!(
                moved_away.iter().all(|p| !packs.contains(p)),
                "a repacked pack is still on {}",
                t.name()
            );
        }
        if day % 7 == 0 {
            let out = s.run(&["verify", POLICY, "--all", "--json"]);
            expect_code(&out, 0, &format!("verify --all on day {day}"));
        }
    }
    assert!(repacks >= 5, "prune repacked on {repacks} of 21 nights");
    assert!(written.len() >= 2);

    // Stored bytes stay near live bytes: a repacked pack is at most about a
    // tenth dead, and without repacking three weeks of rewritten files
    // would be most of the target.
    let (stored, live) = stored_and_live(&a.root, POLICY);
    assert!(
        live as f64 >= 0.85 * stored as f64,
        "stored {stored} bytes for {live} live"
    );

    // Every retained snapshot restores from each target alone.
    for (id, want) in &expected {
        for t in ["a", "b"] {
            restore_and_check(&s, id, t, want);
        }
    }
    // By hand, the oldest retained snapshot (its lists rewritten the most):
    // the stream's BLAKE3 is the manifest's, and it unpacks to the tree.
    let (oldest, want) = expected.iter().next().unwrap();
    let m: Value =
        serde_json::from_slice(&a.get(&format!("{POLICY}/snapshots/{oldest}.json"))).unwrap();
    let site = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "site")
        .unwrap();
    let list = site["stream"]["list"].as_str().unwrap();
    let tar = s.path().join("by-hand.tar");
    by_hand(
        &a.root,
        POLICY,
        list,
        &format!("zstd -dc > {}", tar.display()),
    );
    let b3 = std::process::Command::new("b3sum")
        .args(["--no-names"])
        .arg(&tar)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(b3.stdout).unwrap().trim(),
        site["stream"]["blake3"].as_str().unwrap()
    );
    let dest = s.path().join("by-hand");
    std::fs::create_dir_all(&dest).unwrap();
    by_hand(
        &a.root,
        POLICY,
        list,
        &format!("zstd -dc | tar -xpf - -C {}", dest.display()),
    );
    common::assert_hash_list(&want.tree, &dest, "restored by hand");

    // The other policy was pruned and repacked on its own; its newest
    // snapshot is whole.
    let to = s.path().join("blog-out");
    let out = s.run(&["restore", "blog", "--to", to.to_str().unwrap()]);
    expect_code(&out, 0, "restore blog");
    assert_eq!(std::fs::read(to.join("blog/post.md")).unwrap(), blog_want);
}

/// Snapshots with packs worth repacking: a 12 MiB day-one tree, then five
/// nights each rewriting four of its 24 files, no prune in between. With
/// `last = 1` the next prune forgets five snapshots and repacks.
fn history_to_repack(s: &Setup) -> String {
    s.policy(POLICY, "targets = [\"a\", \"b\"]\n[retention]\nlast = 1\n");
    for i in 0..24 {
        s.write_source(&format!("f{i:02}.bin"), &random_bytes(512 << 10));
    }
    let mut newest = String::new();
    for day in 1..=6 {
        if day > 1 {
            for k in 0..4 {
                let i = (day * 4 + k) % 24;
                s.write_source(&format!("f{i:02}.bin"), &random_bytes(512 << 10));
            }
        }
        let out = s.run(&[
            "run",
            POLICY,
            "--time",
            &format!("2026-06-{day:02}T00:00:00Z"),
            "--json",
        ]);
        expect_code(&out, 0, "run");
        newest = stdout_json(&out)[0]["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
    }
    newest
}

/// `kill -9` at any moment of a prune that repacks loses nothing: after
/// each kill the newest snapshot verifies on both targets and restores
/// byte for byte; a final prune finishes, leaving exactly what it needs.
#[test]
fn a_repack_killed_at_any_moment_loses_nothing() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    let newest = history_to_repack(&s);
    let want = common::hash_list(&s.source, |_| false);
    let check = |what: &str| {
        let v = s.run(&["verify", POLICY, "--all"]);
        expect_code(&v, 0, &format!("verify after {what}"));
        for t in ["a", "b"] {
            let to = restore_from(&s, &newest, t, &format!("r-{}-{t}", what.replace(' ', "-")));
            common::assert_hash_list(&want, &to.join("site"), what);
        }
    };
    for delay_ms in [5u64, 30, 80, 150, 300, 600] {
        kill_after(&s, &["prune", "-q"], delay_ms);
        assert_eq!(listed(&s, POLICY).iter().max(), Some(&newest));
        check(&format!("a prune killed at {delay_ms} ms"));
    }
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "the prune after the killed ones");
    for t in [&a as &dyn Target, &b] {
        assert_holds_exactly(t, &[&newest]);
    }
    let (stored, live) = stored_and_live(&a.root, POLICY);
    assert!(
        live as f64 >= 0.85 * stored as f64,
        "stored {stored} for {live} live"
    );
    check("the final prune");
}

/// A target away while prune repacks keeps its older copies (prune deletes
/// nothing there); back, it counts as lacking the rewritten snapshot until
/// `sync` copies it, and the next prune frees its old packs.
#[test]
fn a_target_away_during_repack_catches_up_through_sync() {
    let s = Setup::new();
    let (a, b) = fs_pair(&s);
    let newest = history_to_repack(&s);
    let want = common::hash_list(&s.source, |_| false);
    b.set_down(true);
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 3, "prune with b away");
    let v = stdout_json(&out);
    assert!(
        !v[0]["repack"]["packs"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_holds_exactly(&a, &[&newest]);
    b.set_down(false);
    // b still holds the snapshot's older copy, authentic and complete on its
    // own: restore from b alone serves it, byte for byte.
    let to = restore_from(&s, &newest, "b", "from-b-early");
    common::assert_hash_list(&want, &to.join("site"), "b's older copy");
    // verify checks each target's own copy: b's older one is whole (b also
    // still holds what prune forgot while it was away: not checked here).
    let out = s.run(&["verify", POLICY]);
    expect_code(&out, 0, "verify with b holding the older copy");
    let out = s.run(&["sync", POLICY, "--json"]);
    expect_code(&out, 0, "sync");
    let v = stdout_json(&out);
    assert!(
        v[0]["copies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["snapshot"] == newest.as_str() && c["target"] == "b"),
        "{v}"
    );
    let out = s.run(&["prune", "--json"]);
    expect_code(&out, 0, "prune with both back");
    for t in [&a as &dyn Target, &b] {
        assert_holds_exactly(t, &[&newest]);
    }
    for t in ["a", "b"] {
        let to = restore_from(&s, &newest, t, &format!("after-{t}"));
        common::assert_hash_list(&want, &to.join("site"), t);
    }
    let v = s.run(&["verify", POLICY, "--all"]);
    expect_code(&v, 0, "verify after catching up");
    // The local pack index cache knows only packs that are still stored
    // (the repacked ones' indexes were read, then forgotten with them).
    let cached: BTreeSet<String> = walkdir::WalkDir::new(s.state.join("cache/packs").join(POLICY))
        .into_iter()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_str()?.strip_suffix(".idx")?.to_string();
            Some(name)
        })
        .collect();
    assert!(!cached.is_empty());
    assert!(cached.is_subset(&packs_in(&a.keys())), "{cached:?}");
}
