//! Issue 13 (operator surface): browsing snapshots without restoring them,
//! `ls`, `find`, `diff` and `dump`, through the real binary.
//!
//! One policy with two sources (`site`, a varied tree, and `etc`, a small
//! one) on an fs target (`local`) and an S3 target (`offsite`, the shared
//! Garage), three snapshots taken with `run --time`, with files added,
//! deleted, modified and chmod-ed between them. Every expectation comes
//! from the test's own record of each state (walked and hashed by the test
//! with walkdir and the `blake3` crate, `b3sum` for dumped bytes), never
//! from backupctl. Damage is planted in the exact zstd frames that hold a
//! file, found by rebuilding the tar stream independently.

use crate::common;
use crate::s3_common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

/// What the test recorded of one entry at snapshot time.
#[derive(Debug, Clone, PartialEq)]
struct Exp {
    kind: &'static str,
    mode: u32,
    size: u64,
    blake3: Option<String>,
    mtime: (i64, u32),
}

/// `SOURCE/rel` (the root as `SOURCE`) -> entry, walked independently.
type State = BTreeMap<String, Exp>;

fn record(state: &mut State, source: &str, root: &Path) {
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let path = if rel.is_empty() {
            source.to_string()
        } else {
            format!("{source}/{rel}")
        };
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let (kind, size, blake3) = if m.file_type().is_symlink() {
            ("symlink", 0, None)
        } else if m.is_dir() {
            ("dir", 0, None)
        } else {
            let data = std::fs::read(e.path()).unwrap();
            (
                "file",
                data.len() as u64,
                Some(blake3::hash(&data).to_hex().to_string()),
            )
        };
        state.insert(
            path,
            Exp {
                kind,
                mode: m.permissions().mode() & 0o7777,
                size,
                blake3,
                mtime: (m.mtime(), m.mtime_nsec() as u32),
            },
        );
    }
}

struct World {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    envs: Vec<(&'static str, String)>,
    env: s3_common::S3Env,
    prefix: String,
    site: PathBuf,
    etc: PathBuf,
    /// Snapshot ids, oldest first, and the state each was taken of.
    ids: Vec<String>,
    states: Vec<State>,
    /// site/docs/report.txt as it was in each snapshot.
    reports: Vec<Vec<u8>>,
    large: Vec<u8>,
}

const LARGE: &str = "site/data/large.bin";
/// Larger than dump's whole-file buffer (16 MiB): streamed.
const LARGE_SIZE: usize = 17 * 1024 * 1024 + 12_345;

impl World {
    fn run(&self, args: &[&str]) -> Output {
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s3_common::run_cli(&self.cfg, args, &envs)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            s3_common::text(&o)
        );
        o
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.ok(args);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", s3_common::text(&o)))
    }

    fn fs_root(&self) -> PathBuf {
        self.tmp.path().join("fs-target")
    }

    fn snapshot(&mut self, time: &str) {
        self.ok(&["run", "shop", "--time", time]);
        let mut st = State::new();
        record(&mut st, "site", &self.site);
        record(&mut st, "etc", &self.etc);
        self.states.push(st);
        self.reports
            .push(std::fs::read(self.site.join("docs/report.txt")).unwrap());
        let l = self.json(&["list", "shop", "--json"]);
        let snaps = l[0]["snapshots"].as_array().unwrap();
        assert_eq!(snaps.len(), self.ids.len() + 1, "{l}");
        let id = snaps.last().unwrap()["id"].as_str().unwrap().to_string();
        // Complete on both targets.
        assert_eq!(
            snaps.last().unwrap()["targets"],
            serde_json::json!(["local", "offsite"]),
            "{l}"
        );
        self.ids.push(id);
    }
}

/// Two sources on fs + S3, three snapshots:
/// 1. the trees as made;
/// 2. site/old.txt deleted, site/new/added.txt added, site/docs/report.txt
///    rewritten (longer), site/run.sh chmod 0755 -> 0700, etc/extra.conf
///    added;
/// 3. etc/app.conf rewritten (same size), site/new/ deleted.
fn world() -> Option<World> {
    let env = s3_common::s3_env()?;
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("src/site");
    let etc = tmp.path().join("src/etc");
    common::make_tree(&site);
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("old.txt"), "deleted after the first snapshot\n").unwrap();
    std::fs::write(site.join("docs/report.txt"), "report v1\n").unwrap();
    let large = s3_common::noise(LARGE_SIZE, 42);
    std::fs::write(site.join("data/large.bin"), &large).unwrap();
    std::fs::create_dir_all(etc.join("keys")).unwrap();
    std::fs::write(etc.join("app.conf"), "v=1\n").unwrap();
    std::fs::write(etc.join("keys/k.pem"), "-----BEGIN-----\n").unwrap();
    std::fs::set_permissions(
        etc.join("keys/k.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let prefix = format!("browse/{}/", s3_common::unique("p"));
    let conf = tmp.path().join("conf");
    std::fs::create_dir_all(conf.join("policies")).unwrap();
    let cfg = conf.join("backupctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n\n[targets.local]\ntype = \"fs\"\npath = \"{}\"\nlocation = \"office\"\n\n{}",
            conf.join("state").display(),
            tmp.path().join("fs-target").display(),
            env.target_toml("offsite", &prefix, "garage-dc", "")
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("policies/shop.toml"),
        format!(
            "targets = [\"local\", \"offsite\"]\n\n[retention]\ndaily = 7\n\n\
             [[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n\n\
             [[sources]]\nname = \"etc\"\ntype = \"files\"\npath = \"{}\"\n",
            site.display(),
            etc.display()
        ),
    )
    .unwrap();
    let envs = env.child_env();
    let mut w = World {
        tmp,
        cfg,
        envs,
        env,
        prefix,
        site,
        etc,
        ids: Vec::new(),
        states: Vec::new(),
        reports: Vec::new(),
        large,
    };
    // An fs target without `create`: once initialised, a missing root is
    // an unreachable target (an unmounted disk), not an empty one.
    w.ok(&["init"]);
    w.snapshot("2026-01-01T02:00:00Z");

    let site = w.site.clone();
    std::fs::remove_file(site.join("old.txt")).unwrap();
    std::fs::create_dir_all(site.join("new")).unwrap();
    std::fs::write(site.join("new/added.txt"), "added in the second snapshot\n").unwrap();
    std::fs::write(site.join("docs/report.txt"), "report v2, which is longer\n").unwrap();
    std::fs::set_permissions(site.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(w.etc.join("extra.conf"), "extra=yes\n").unwrap();
    w.snapshot("2026-01-02T02:00:00Z");

    std::fs::write(w.etc.join("app.conf"), "v=2\n").unwrap();
    std::fs::remove_dir_all(site.join("new")).unwrap();
    w.snapshot("2026-01-03T02:00:00+01:00");
    Some(w)
}

/// The text `ls` prints for a state: paths, directories ending in `/`.
fn ls_lines(st: &State, under: Option<&str>) -> BTreeSet<String> {
    st.iter()
        .filter(|(p, _)| match under {
            None => true,
            Some(u) => *p == u || p.starts_with(&format!("{u}/")),
        })
        .map(|(p, e)| {
            if e.kind == "dir" {
                format!("{p}/")
            } else {
                p.clone()
            }
        })
        .collect()
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn set_of(v: Vec<String>) -> BTreeSet<String> {
    let n = v.len();
    let s: BTreeSet<String> = v.into_iter().collect();
    assert_eq!(s.len(), n, "duplicate lines");
    s
}

/// The first `n` whitespace-separated fields of a line, and the rest.
fn fields(line: &str, n: usize) -> (Vec<&str>, &str) {
    let mut out = Vec::new();
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    (out, rest.trim_start())
}

#[test]
fn ls_lists_exactly_each_snapshot_tree() {
    let Some(w) = world() else {
        return;
    };
    for (i, id) in w.ids.iter().enumerate() {
        let st = &w.states[i];
        // Plain: exactly the tree, both sources.
        let got = set_of(lines(&w.ok(&["ls", "shop", id])));
        assert_eq!(got, ls_lines(st, None), "ls of snapshot {i} ({id})");

        // --long: type, mode, owner, size, mtime per entry.
        let o = w.ok(&["ls", "shop", id, "--long"]);
        let mut seen = BTreeSet::new();
        for line in lines(&o) {
            let (f, rest) = fields(&line, 5);
            let path = rest.split(" -> ").next().unwrap().trim_end_matches('/');
            let e = st
                .get(path)
                .unwrap_or_else(|| panic!("unexpected entry {path:?} in {line:?}"));
            assert_eq!(f[0], e.kind, "{line}");
            if e.kind != "symlink" {
                assert_eq!(f[1], format!("{:04o}", e.mode), "{line}");
            }
            assert_eq!(f[3], e.size.to_string(), "{line}");
            let t = chrono::DateTime::parse_from_rfc3339(f[4]).unwrap();
            if e.kind != "dir" || path.contains('/') {
                assert_eq!(
                    (t.timestamp(), t.timestamp_subsec_nanos()),
                    e.mtime,
                    "{line}"
                );
            }
            seen.insert(path.to_string());
        }
        assert_eq!(seen, st.keys().cloned().collect::<BTreeSet<_>>());

        // --json: every field, as recorded.
        let j = w.json(&["ls", "shop", id, "--json"]);
        assert_eq!(j["snapshot"], id.as_str());
        let entries = j["entries"].as_array().unwrap();
        assert_eq!(entries.len(), st.len(), "{j}");
        for e in entries {
            let p = e["path"].as_str().unwrap();
            let want = &st[p];
            assert_eq!(e["type"], want.kind, "{e}");
            assert_eq!(e["size"], want.size, "{e}");
            assert_eq!(e["source"], p.split('/').next().unwrap(), "{e}");
            if want.kind != "symlink" {
                assert_eq!(e["mode"], format!("{:04o}", want.mode), "{e}");
            }
            assert_eq!(e["blake3"].as_str().map(str::to_string), want.blake3, "{e}");
        }
    }
    // The tree changed between snapshots: the listings differ as made.
    assert!(ls_lines(&w.states[0], None).contains("site/old.txt"));
    assert!(!ls_lines(&w.states[1], None).contains("site/old.txt"));

    // PATH: one directory and what is beneath it; with one argument after
    // the policy, a path in the latest snapshot.
    let got = set_of(lines(&w.ok(&["ls", "shop", &w.ids[1], "site/new"])));
    assert_eq!(got, ls_lines(&w.states[1], Some("site/new")));
    assert_eq!(got.len(), 2, "{got:?}");
    let got = set_of(lines(&w.ok(&["ls", "shop", "etc"])));
    assert_eq!(got, ls_lines(&w.states[2], Some("etc")));
    let got = set_of(lines(&w.ok(&[
        "ls",
        "shop",
        "latest",
        "site/docs/report.txt",
    ])));
    assert_eq!(got, BTreeSet::from(["site/docs/report.txt".to_string()]));

    // Not there: exit 2, naming what was not found.
    let o = w.run(&["ls", "shop", &w.ids[0], "site/new"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    assert!(
        s3_common::text(&o).contains("site/new"),
        "{}",
        s3_common::text(&o)
    );
    let o = w.run(&["ls", "shop", "20991231T000000Z-00000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("20991231T000000Z-00000000"));
    let o = w.run(&["ls", "nosuchpolicy"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuchpolicy"));
    let o = w.run(&["ls", "shop", "latest", "nosource/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosource"));
}

#[test]
fn find_and_diff_report_exactly_what_changed() {
    let Some(w) = world() else {
        return;
    };
    // A file deleted after the first snapshot: found there only.
    let j = w.json(&["find", "shop", "old.txt", "--json"]);
    let m = j["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{j}");
    assert_eq!(m[0]["path"], "site/old.txt");
    let ids: Vec<&str> = m[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![w.ids[0].as_str()], "{j}");
    assert_eq!(j["searched"].as_array().unwrap().len(), 3);
    let text = String::from_utf8(w.ok(&["find", "shop", "old.txt"]).stdout).unwrap();
    assert!(
        text.contains(&w.ids[0]) && !text.contains(&w.ids[1]),
        "{text}"
    );

    // Added in the second, deleted in the third.
    let j = w.json(&["find", "shop", "added.txt", "--json"]);
    let snaps = &j["matches"][0]["snapshots"];
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(snaps[0]["id"], w.ids[1].as_str());

    // A full-path glob: the report in all three, with its hash in each.
    let j = w.json(&["find", "shop", "site/docs/*.txt", "--json"]);
    let m = j["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{j}");
    for (i, s) in m[0]["snapshots"].as_array().unwrap().iter().enumerate() {
        assert_eq!(s["id"], w.ids[i].as_str());
        assert_eq!(
            s["blake3"],
            blake3::hash(&w.reports[i]).to_hex().to_string(),
            "{s}"
        );
    }
    // `*` does not cross `/`; `**` does.
    let j = w.json(&["find", "shop", "site/*.txt", "--json"]);
    let paths: BTreeSet<&str> = j["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, BTreeSet::from(["site/empty.txt", "site/old.txt"]));
    let j = w.json(&["find", "shop", "**/*.conf", "--json"]);
    let paths: BTreeSet<&str> = j["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["etc/app.conf", "etc/extra.conf", "site/secret.conf"])
    );
    let j = w.json(&["find", "shop", "no-such-*", "--json"]);
    assert_eq!(j["matches"], serde_json::json!([]));
    let o = w.run(&["find", "shop", "a[", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));

    // diff: exactly the changes made, computed from the recorded states.
    for (a, b) in [(0, 1), (1, 2), (0, 2)] {
        let j = w.json(&["diff", "shop", &w.ids[a], &w.ids[b], "--json"]);
        let (sa, sb) = (&w.states[a], &w.states[b]);
        let names = |k: &str| -> BTreeSet<String> {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|e| e["path"].as_str().unwrap().to_string())
                .collect()
        };
        let added: BTreeSet<String> = sb
            .keys()
            .filter(|k| !sa.contains_key(*k))
            .cloned()
            .collect();
        let removed: BTreeSet<String> = sa
            .keys()
            .filter(|k| !sb.contains_key(*k))
            .cloned()
            .collect();
        let changed: BTreeSet<String> = sa
            .iter()
            .filter(|(k, e)| {
                sb.get(*k).is_some_and(|n| {
                    let mut n = n.clone();
                    if e.kind == "dir" && n.kind == "dir" {
                        n.mtime = e.mtime;
                    }
                    **e != n
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(names("added"), added, "diff {a} {b}: {j}");
        assert_eq!(names("removed"), removed, "diff {a} {b}: {j}");
        assert_eq!(names("changed"), changed, "diff {a} {b}: {j}");
        let bytes: u64 = added.iter().map(|k| sb[k].size).sum();
        assert_eq!(j["added_bytes"], bytes);
    }
    // ... which are the ones this test made.
    let j = w.json(&["diff", "shop", &w.ids[0], &w.ids[1], "--json"]);
    let names = |k: &str| -> Vec<String> {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("added"),
        vec!["etc/extra.conf", "site/new", "site/new/added.txt"]
    );
    assert_eq!(names("removed"), vec!["site/old.txt"]);
    assert_eq!(
        names("changed"),
        vec!["site/docs/report.txt", "site/run.sh"]
    );
    let changed = j["changed"].as_array().unwrap();
    let report = &changed[0];
    assert_eq!(report["old"]["size"], w.reports[0].len());
    assert_eq!(report["new"]["size"], w.reports[1].len());
    assert!(report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "content"));
    assert_eq!(changed[1]["changes"], serde_json::json!(["mode"]));
    assert_eq!(changed[1]["old"]["mode"], "0755");
    assert_eq!(changed[1]["new"]["mode"], "0700");
    // Same size, new content.
    let j = w.json(&["diff", "shop", &w.ids[1], "latest", "--json"]);
    let c = j["changed"].as_array().unwrap();
    assert_eq!(c.len(), 1, "{j}");
    assert_eq!(c[0]["path"], "etc/app.conf");
    assert_eq!(c[0]["changes"][0], "content");
    // Text: + - M lines.
    let t = String::from_utf8(w.ok(&["diff", "shop", &w.ids[0], &w.ids[1]]).stdout).unwrap();
    for want in [
        "+ site/new/added.txt",
        "+ site/new/",
        "- site/old.txt",
        "M site/run.sh  (mode 0755 -> 0700)",
        "M site/docs/report.txt",
        "3 added",
    ] {
        assert!(t.contains(want), "{want:?} in\n{t}");
    }
    // Identical snapshots: nothing.
    let j = w.json(&["diff", "shop", &w.ids[2], &w.ids[2], "--json"]);
    assert_eq!(j["added"], serde_json::json!([]));
    assert_eq!(j["changed"], serde_json::json!([]));
    let o = w.run(&["diff", "shop", &w.ids[0], "20991231T000000Z-00000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
}

/// Dump to a file; returns the output and the file.
fn dump_to(w: &World, snap: &str, path: &str) -> (Output, PathBuf) {
    let o = w.run(&["dump", "shop", snap, path]);
    let f = w.tmp.path().join(s3_common::unique("dump"));
    std::fs::write(&f, &o.stdout).unwrap();
    (o, f)
}

#[track_caller]
fn assert_dump(w: &World, snap: &str, path: &str, want: &[u8]) {
    let (o, f) = dump_to(w, snap, path);
    assert_eq!(o.status.code(), Some(0), "dump {path}: {}", {
        let mut o = o.clone();
        o.stdout.truncate(200);
        s3_common::text(&o)
    });
    assert!(
        o.stdout == want,
        "dump {path} of {snap}: bytes differ ({} vs {} bytes)",
        o.stdout.len(),
        want.len()
    );
    assert_eq!(
        common::b3sum(&f),
        blake3::hash(want).to_hex().to_string(),
        "b3sum of dumped {path}"
    );
}

#[test]
fn dump_writes_the_exact_bytes_also_from_s3_alone() {
    let Some(w) = world() else {
        return;
    };
    assert_dump(&w, &w.ids[0], "site/docs/report.txt", &w.reports[0]);
    assert_dump(&w, &w.ids[1], "site/docs/report.txt", &w.reports[1]);
    assert_dump(&w, "latest", "etc/app.conf", b"v=2\n");
    assert_dump(&w, &w.ids[0], "etc/app.conf", b"v=1\n");
    assert_dump(
        &w,
        "latest",
        "site/data/ünïcödé dir/grüße 日本.txt",
        "unicode content ✓\n".as_bytes(),
    );
    assert_dump(&w, "latest", "site/empty.txt", b"");
    assert_dump(&w, "latest", LARGE, &w.large);

    // Not in that snapshot, not a file, no such source: exit 2, named.
    let o = w.run(&["dump", "shop", &w.ids[0], "site/new/added.txt"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("site/new/added.txt"));
    let o = w.run(&["dump", "shop", "latest", "site/data"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    let o = w.run(&["dump", "shop", "latest", "site/index-link"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    let o = w.run(&["dump", "shop", "latest", "nosource/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));
    let o = w.run(&["dump", "shop", "20991231T000000Z-00000000", "etc/app.conf"]);
    assert_eq!(o.status.code(), Some(2), "{}", s3_common::text(&o));

    // The fs target gone (its directory renamed): everything from S3.
    let away = w.tmp.path().join("fs-target.away");
    std::fs::rename(w.fs_root(), &away).unwrap();
    assert_dump(&w, &w.ids[0], "site/docs/report.txt", &w.reports[0]);
    assert_dump(&w, "latest", LARGE, &w.large);
    let got = set_of(lines(&w.ok(&["ls", "shop", &w.ids[1]])));
    assert_eq!(got, ls_lines(&w.states[1], None));
    let j = w.json(&["find", "shop", "old.txt", "--json"]);
    assert_eq!(j["matches"][0]["snapshots"][0]["id"], w.ids[0].as_str());

    // No target reachable at all (S3 credentials wrong too): exit 1.
    let mut envs: Vec<(&str, &str)> = w.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for e in envs.iter_mut() {
        if e.0 == "TEST_S3_SECRET" {
            e.1 = "wrong-secret";
        }
    }
    for args in [
        vec!["ls", "shop"],
        vec!["dump", "shop", "latest", "etc/app.conf"],
        vec!["find", "shop", "x"],
    ] {
        let o = s3_common::run_cli(&w.cfg, &args, &envs);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?}: {}",
            s3_common::text(&o)
        );
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    std::fs::rename(&away, w.fs_root()).unwrap();
    assert_dump(&w, "latest", "etc/app.conf", b"v=2\n");
}

/// The (offset, compressed length) in its pack of every zstd frame of the
/// `source` tar stream of the snapshot `id` that holds bytes of the tar
/// entry `rel`, found independently: the stream rebuilt from the fs
/// target's extents, the entry located with the `tar` crate, frames walked
/// with zstd's own frame-size function.
fn frames_of(w: &World, id: &str, source: &str, rel: &str) -> Vec<(PathBuf, u64, u64)> {
    let root = w.fs_root();
    let mpath = root.join("shop/snapshots").join(format!("{id}.json"));
    let tar = common::source_tar(&root, "shop", &mpath, source);
    let mut ar = tar::Archive::new(&tar[..]);
    let (start, len) = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| &*e.path_bytes() == rel.as_bytes())
        .map(|e| (e.raw_file_position(), e.size()))
        .unwrap_or_else(|| panic!("{rel} not in the tar stream"));
    assert!(len > 0);
    let m = common::manifest(&mpath);
    let list = common::source_record(&m, source)["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(common::list_path(&root, "shop", &list)).unwrap();
    let mut out = Vec::new();
    let mut pos = 0u64; // uncompressed offset in the stream
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let pack = root.join("shop").join(f[0]);
        let bytes = std::fs::read(&pack).unwrap();
        let (o, l): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let mut at = o;
        while at < o + l {
            let c = zstd::zstd_safe::find_frame_compressed_size(&bytes[at..o + l]).unwrap();
            let plain = zstd::decode_all(&bytes[at..at + c]).unwrap();
            let (a, b) = (pos, pos + plain.len() as u64);
            if a < start + len && start < b {
                out.push((pack.clone(), at as u64, c as u64));
            }
            pos = b;
            at += c;
        }
    }
    assert_eq!(pos, tar.len() as u64, "frames cover the stream");
    assert!(!out.is_empty());
    out
}

fn flip_in(data: &mut [u8], offset: u64, len: u64) {
    let i = (offset + len / 2) as usize;
    data[i] ^= 0x55;
}

/// Flip a byte of the frame at `off`/`len` in the S3 copy of the fs pack
/// `pack` (the same name under the bucket's prefix).
fn damage_on_s3(w: &World, pack: &Path, off: u64, len: u64) {
    let key = format!(
        "{}shop/{}",
        w.prefix,
        pack.strip_prefix(w.fs_root().join("shop"))
            .unwrap()
            .display()
    );
    let mut b = w.env.get(&key);
    flip_in(&mut b, off, len);
    w.env.put(&key, b);
}

#[test]
fn dump_fails_loudly_on_damaged_or_planted_bytes() {
    let Some(w) = world() else {
        return;
    };
    let id = w.ids[2].clone();
    let frames = frames_of(&w, &id, "site", "docs/report.txt");
    let big = frames_of(&w, &id, "site", "data/large.bin");

    // Damaged on the fs target only: served from S3 instead, exact.
    let mut originals = BTreeMap::new();
    for (pack, off, len) in &frames {
        let mut b = originals
            .entry(pack.clone())
            .or_insert_with(|| std::fs::read(pack).unwrap())
            .clone();
        flip_in(&mut b, *off, *len);
        std::fs::write(pack, b).unwrap();
    }
    let (o, _) = dump_to(&w, &id, "site/docs/report.txt");
    assert_eq!(o.status.code(), Some(0), "{}", s3_common::text(&o));
    assert_eq!(o.stdout, w.reports[2]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("trying the next target"),
        "{}",
        s3_common::text(&o)
    );

    // Damaged on S3 too: exit 1, nothing written, the damage named.
    for (pack, off, len) in &frames {
        damage_on_s3(&w, pack, *off, *len);
    }
    let (o, _) = dump_to(&w, &id, "site/docs/report.txt");
    assert_eq!(o.status.code(), Some(1), "{}", s3_common::text(&o));
    assert!(o.stdout.is_empty(), "damaged bytes written: {:?}", o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("site/docs/report.txt") && err.contains("no target serves it intact"),
        "{err}"
    );
    // The other source's stream is intact: still served.
    assert_dump(&w, &id, "etc/app.conf", b"v=2\n");

    // The large file damaged in one frame on both targets: streamed, so
    // bytes may have been written, but the exit is 1 and says so.
    let (pack, off, len) = big[big.len() / 2].clone();
    let mut b = std::fs::read(&pack).unwrap();
    flip_in(&mut b, off, len);
    std::fs::write(&pack, b).unwrap();
    damage_on_s3(&w, &pack, off, len);
    let (o, _) = dump_to(&w, &id, LARGE);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.len() < LARGE_SIZE);
    assert!(
        w.large.starts_with(&o.stdout),
        "what was written is the file's start"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DISCARD THE OUTPUT"), "{err}");
}

/// A signed snapshot whose tar stream (intact chunks, right stream hash)
/// holds other bytes than its file index records: only dump's own check of
/// the file's BLAKE3 catches it. fs target only.
#[test]
fn dump_refuses_a_file_whose_bytes_do_not_match_the_index() {
    let s = common::Setup::new();
    // Without `create`: the renamed-away target below is unreachable (the
    // planted snapshot brings the marker).
    s.write(
        "backupctl.toml",
        "state_dir = \"state\"\n\n[targets.t]\ntype = \"fs\"\npath = \"targets/t\"\nlocation = \"here\"\n",
    );
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    s.files_policy("p", &src, &["t"], "");
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("app.conf", b"evil".as_slice()),
        ("ok.txt", b"fine".as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    // The index says app.conf is "good" (same size, other hash).
    let files = vec![
        ("app.conf".to_string(), b"good".to_vec()),
        ("ok.txt".to_string(), b"fine".to_vec()),
    ];
    let id = "20260101T000000Z-0badf11e";
    common::plant_snapshot(
        &s.target_dir("t"),
        "p",
        id,
        "2026-01-01T00:00:00Z",
        Some(&common::host_key(&s)),
        &[common::Planted::files("site", tar, &files)],
    );
    let o = s.run(&["dump", "p", id, "site/ok.txt"]);
    common::expect_code(&o, 0);
    assert_eq!(o.stdout, b"fine");
    let o = s.run(&["dump", "p", "latest", "site/app.conf"]);
    common::expect_code(&o, 1);
    assert!(o.stdout.is_empty(), "{:?}", o.stdout);
    let err = common::stderr(&o);
    assert!(
        err.contains("site/app.conf")
            && err.contains(&blake3::hash(b"good").to_hex().to_string()[..16]),
        "{err}"
    );
    // ls shows what the index says.
    let o = s.run(&["ls", "p", "--json"]);
    common::expect_code(&o, 0);
    let j = common::json(&o);
    let paths: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["site/app.conf", "site/ok.txt"]);

    // The target gone: no reachable target, exit 1.
    std::fs::rename(s.target_dir("t"), s.path("t.away")).unwrap();
    let o = s.run(&["ls", "p"]);
    common::expect_code(&o, 1);
    let o = s.run(&["dump", "p", "latest", "site/ok.txt"]);
    common::expect_code(&o, 1);
    assert!(o.stdout.is_empty());
}
