//! `backupctl drill` on a deployment: one policy with a files tree and a
//! PostgreSQL database, on a directory target and a Garage S3 target, two
//! snapshots. Checked independently: snapshot ids and sizes from `list
//! --json` and the manifest files, the clock pinned with BACKUPCTL_NOW, the
//! metrics file with prometheus_client's parser, the HTML report rendered
//! by headless Chromium, the report's stock-tools commands run with sh.

use crate::common::*;
use crate::db_common::{db_hex, text, DbServer};
use crate::s3_common::{s3_env, services_required, unique};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A name no report may print raw: it is in the directory target's path
/// (so in the stock-tools commands) and its location.
const HOSTILE_DIR: &str = "<script>alert(1)</script> & co";
const HOSTILE_LOCATION: &str = "<img src=x onerror=alert(2)>";

const T1: &str = "2026-03-01T02:00:00Z";
const T2: &str = "2026-03-02T02:00:00Z";
/// Three hours after the newest snapshot.
const NOW: &str = "2026-03-02T05:00:00Z";

struct Deployment {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    env: Vec<(String, String)>,
    fs_root: PathBuf,
    pg: DbServer,
    db: String,
}

impl Deployment {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = bin();
        c.arg("--config")
            .arg(&self.cfg)
            .args(args)
            .env("TZ", "UTC")
            .env("BACKUPCTL_NOW", NOW);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn drill(&self, args: &[&str], want: i32) -> serde_json::Value {
        let mut a = vec!["drill", "--json"];
        a.extend_from_slice(args);
        let o = self.run(&a);
        assert_eq!(o.status.code(), Some(want), "drill {args:?}: {}", text(&o));
        json(&o)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.pg.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        );
    }
}

/// Drills load dumps into scratch databases on the shared PostgreSQL
/// server: they hold the lock the PostgreSQL tests count those under.
fn pg_lock() -> std::sync::MutexGuard<'static, ()> {
    crate::db_postgres::VERIFY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn deploy() -> Option<Deployment> {
    let pg = DbServer::postgres()?;
    let s3 = s3_env()?;
    let dir = tempfile::Builder::new()
        .prefix("backupctl-drill-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    let db = format!("t_{}", db_hex(10));
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    pg.psql(
        &db,
        "CREATE TABLE items (id serial PRIMARY KEY, name text);
         INSERT INTO items (name) SELECT 'item ' || i FROM generate_series(1, 500) i;
         CREATE TABLE notes (k text);
         INSERT INTO notes VALUES ('a'), ('b'), ('c');",
    );
    let src = root.join("src");
    make_tree(&src);
    let fs_root = root.join(HOSTILE_DIR).join("local");
    std::fs::create_dir_all(root.join("policies")).unwrap();
    let prefix = unique("drill");
    let cfg = root.join("backupctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}/state\"\n\n[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"{HOSTILE_LOCATION}\"\n\n{}",
            root.display(),
            fs_root.display(),
            s3.target_toml("garage", &prefix, "offsite", "")
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("policies/shop.toml"),
        format!(
            "targets = [\"local\", \"garage\"]\n\n[retention]\ndaily = 7\n\n\
             [[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n\n\
             [[sources]]\nname = \"pgdb\"\ntype = \"postgres\"\ndatabase = \"{db}\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"TEST_PG_PW\"\n",
            src.display(),
            pg.host,
            pg.port,
            pg.user
        ),
    )
    .unwrap();
    let mut env: Vec<(String, String)> = s3
        .child_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("TEST_PG_PW".into(), pg.password.clone()));
    let d = Deployment {
        dir,
        cfg,
        env,
        fs_root,
        pg,
        db,
    };
    for t in [T1, T2] {
        let o = d.run(&["run", "--time", t]);
        assert_eq!(o.status.code(), Some(0), "run at {t}: {}", text(&o));
        std::fs::write(src.join("changed.txt"), format!("changed at {t}\n")).unwrap();
        d.pg.psql(&d.db, "INSERT INTO notes VALUES ('more')");
    }
    Some(d)
}

fn target<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {r}"))
}

/// Where test artifacts are kept (screenshots).
fn artifacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Render `html` in headless Chromium: a screenshot kept under
/// target/test-artifacts, and no console message (an error, an uncaught
/// exception). None when Chromium is missing (skipped, unless the services
/// are required).
fn chromium_render(html: &Path, shot_name: &str) -> Option<PathBuf> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(bin) = bin else {
        if services_required() {
            panic!("chromium required (BACKUPCTL_TEST_REQUIRE_SERVICES=1): run scripts/install-deps.sh");
        }
        eprintln!("skipped: chromium not installed (scripts/install-deps.sh installs it)");
        return None;
    };
    let shot = artifacts().join(shot_name);
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium: {err}");
    for l in err.lines() {
        assert!(
            !l.contains("CONSOLE") && !l.contains("Uncaught"),
            "console message while rendering the report: {l}"
        );
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "no screenshot");
    assert!(png.len() > 5000, "screenshot suspiciously small");
    Some(shot)
}

#[test]
fn drill_restores_from_every_target_and_reports() {
    let _g = pg_lock();
    let Some(d) = deploy() else {
        return;
    };
    let o = d.run(&["list", "--json"]);
    expect_code(&o, 0);
    let listed = json(&o);
    let snaps = listed[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let newest = snaps[1]["id"].as_str().unwrap().to_string();
    assert_eq!(
        snaps[1]["targets"],
        serde_json::json!(["local", "garage"]),
        "{listed}"
    );
    // The bytes a restore reads: the tar streams' uncompressed sizes, as the
    // manifest file on the directory target records them.
    let m = manifest(
        &d.fs_root
            .join("shop/snapshots")
            .join(format!("{newest}.json")),
    );
    let bytes: u64 = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"]["size"].as_u64().unwrap())
        .sum();
    assert!(bytes > 0);

    let md = d.path("out/drill.md");
    let html = d.path("out/drill.html");
    std::fs::create_dir_all(md.parent().unwrap()).unwrap();
    let prom = d.path("out/backupctl.prom");
    let r = d.drill(
        &[
            "--report",
            md.to_str().unwrap(),
            "--metrics-file",
            prom.to_str().unwrap(),
        ],
        0,
    );
    let r = &r[0];
    assert_eq!(r["policy"], "shop");
    assert_eq!(r["result"], "ok", "{r}");
    for name in ["local", "garage"] {
        let t = target(r, name);
        assert_eq!(t["result"], "ok", "{t}");
        assert_eq!(t["snapshot"], newest.as_str());
        assert!(t["seconds"].as_f64().unwrap() > 0.0, "{t}");
        assert_eq!(t["bytes"].as_u64(), Some(bytes), "{t}");
        let mbps = t["mb_per_s"].as_f64().unwrap();
        let want = bytes as f64 / t["seconds"].as_f64().unwrap() / 1e6;
        assert!((mbps - want).abs() < 1e-6 * want.max(1.0), "{t}");
        // RPO: BACKUPCTL_NOW minus the snapshot's time.
        assert_eq!(t["age_seconds"].as_i64(), Some(3 * 3600), "{t}");
        assert_eq!(t["restore_points"].as_array().unwrap().len(), 2, "{t}");
        let pg = t["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "pgdb")
            .unwrap();
        assert_eq!(pg["result"], "ok");
        // Row counts checked in the scratch database, as psql counts them
        // (the newest snapshot was taken before the last insert).
        let items: u64 =
            d.pg.psql(&d.db, "SELECT count(*) FROM items")
                .parse()
                .unwrap();
        let notes: u64 =
            d.pg.psql(&d.db, "SELECT count(*) FROM notes")
                .parse()
                .unwrap();
        assert_eq!(pg["rows"][format!("{}.public.items", d.db)], items);
        assert_eq!(pg["rows"][format!("{}.public.notes", d.db)], notes - 1);
    }
    // No scratch database left behind.
    assert_eq!(
        d.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'backupctl\\_verify\\_%'"
        ),
        "0"
    );

    // The state keeps it, and `schedule` shows it.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("state/history/shop.json")).unwrap()).unwrap();
    assert_eq!(st["drill"]["last_result"], "success", "{st}");
    for name in ["local", "garage"] {
        assert_eq!(st["drill"]["targets"][name]["result"], "ok");
        assert_eq!(st["drill"]["targets"][name]["snapshot"], newest.as_str());
        assert_eq!(st["drill"]["targets"][name]["bytes"].as_u64(), Some(bytes));
    }
    let o = d.run(&["schedule"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("drill: last success"), "{out}");
    assert!(out.contains("garage: ok, snapshot"), "{out}");
    let o = d.run(&["schedule", "--json"]);
    assert_eq!(json(&o)[0]["drill"]["targets"]["local"]["result"], "ok");
    // `status` shows the same drill, per target.
    let o = d.run(&["status", "--json"]);
    let sp = &json(&o)["policies"][0];
    assert_eq!(sp["drill"]["last_result"], "success", "{sp}");
    for name in ["local", "garage"] {
        assert_eq!(sp["drill"]["targets"][name], st["drill"]["targets"][name]);
    }
    assert!(!sp["problems"].to_string().contains("drill"), "{sp}");

    // The metrics file: one restore_seconds sample per target.
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
             print(json.dumps([[s.name, s.labels, s.value] for m in f(open(sys.argv[1]).read()) for s in m.samples]))",
        ])
        .arg(&prom)
        .output()
        .unwrap();
    if parsed.status.success() {
        let samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
            serde_json::from_slice(&parsed.stdout).unwrap();
        for name in ["local", "garage"] {
            let v = samples
                .iter()
                .find(|(n, l, _)| {
                    n == "backupctl_restore_seconds"
                        && l.get("policy").map(String::as_str) == Some("shop")
                        && l.get("target").map(String::as_str) == Some(name)
                        && l.len() == 2
                })
                .unwrap_or_else(|| panic!("no restore seconds for {name}: {samples:?}"));
            let s = target(r, name)["seconds"].as_f64().unwrap();
            assert!((v.2 - s).abs() < 0.002, "{v:?} vs {s}");
        }
    } else if services_required() {
        panic!(
            "prometheus_client could not parse {}: {}",
            prom.display(),
            String::from_utf8_lossy(&parsed.stderr)
        );
    }

    // The Markdown report: the table, the commands, nothing hostile raw.
    let text_md = std::fs::read_to_string(&md).unwrap();
    assert!(text_md.contains("| target | snapshot | result | seconds | MB/s | age (RPO) | error |"));
    assert!(
        text_md.contains(&format!("| local | {newest} | ok |")),
        "{text_md}"
    );
    assert!(
        text_md.contains(&format!("| garage | {newest} | ok |")),
        "{text_md}"
    );
    assert!(text_md.contains(&format!(
        "backupctl restore shop {newest} --to /restore/shop --target garage"
    )));
    assert!(text_md.contains("aws s3 sync"));
    assert!(text_md.contains("| zstd -dc | tar -xpf - -C"));
    // Outside code blocks (shown literally by every renderer, and copied
    // into a shell as they are) nothing hostile is raw.
    let mut prose = String::new();
    let mut in_code = false;
    for l in text_md.lines() {
        if l.starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            prose.push_str(l);
            prose.push('\n');
        }
    }
    assert!(
        !prose.contains("<script>") && !prose.contains("<img"),
        "{text_md}"
    );
    assert!(
        prose.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{text_md}"
    );

    // The stock-tools commands for the directory target restore the tree.
    let local = target(r, "local");
    let dest = d.path("manual");
    let script: Vec<String> = local["commands"]["stock"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_str()
                .unwrap()
                .replace("/restore/", &format!("{}/", dest.display()))
        })
        .collect();
    let o = Command::new("sh")
        .args(["-ec", &script.join("\n")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{script:?}: {}", text(&o));
    let restored = dest.join("shop/site");
    assert_eq!(
        std::fs::read(restored.join("data/big.txt")).unwrap(),
        std::fs::read(d.path("src/data/big.txt")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("changed.txt")).unwrap(),
        format!("changed at {T1}\n")
    );
    let dump = dest.join("shop/pgdb").join(format!("{}.pgdump", d.db));
    assert!(dump.is_file(), "{:?}", files_under(&dest));

    // The HTML report: self-contained, charts, escaped, renders cleanly.
    let o = d.run(&["drill", "--report", html.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.matches("<svg").count() >= 2, "two charts");
    assert_eq!(
        page.matches("<circle").count(),
        4,
        "2 snapshots x 2 targets"
    );
    assert!(page.matches("<rect").count() >= 2, "a bar per target");
    // No external asset: no attribute that loads anything (the only URL is
    // the S3 endpoint, as text in the manual-restore commands).
    for attr in [
        "src=\"", "src='", "href=", "url(", "@import", "<link", "<iframe", "<object",
    ] {
        assert!(!page.contains(attr), "asset reference {attr}");
    }
    for l in page.lines() {
        if l.contains("http://") || l.contains("https://") {
            assert!(l.contains("--endpoint-url"), "external reference: {l}");
        }
    }
    assert!(
        !page.contains("<script") && !page.contains("<img"),
        "unescaped"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
    assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"));
    chromium_render(&html, "drill-report.png");
}

#[test]
fn a_damaged_pack_fails_that_target_only_and_target_restricts() {
    let _g = pg_lock();
    let Some(d) = deploy() else {
        return;
    };
    // Damage the site stream of the newest snapshot on the directory target
    // (bytes in the middle of its largest extent).
    let newest = manifests(&d.fs_root, "shop").pop().unwrap();
    let m = manifest(&newest);
    let list = source_record(&m, "site")["stream"]["list"]
        .as_str()
        .unwrap()
        .to_string();
    let lines = std::fs::read_to_string(list_path(&d.fs_root, "shop", &list)).unwrap();
    let (pack, off, len) = crate::common::largest_extent(&lines);
    let path = d.fs_root.join("shop").join(pack);
    let mut b = std::fs::read(&path).unwrap();
    let mid = off + len / 2;
    for x in &mut b[mid..(mid + 16).min(off + len)] {
        *x ^= 0xff;
    }
    std::fs::write(&path, b).unwrap();

    let html = d.path("damaged.html");
    let r = d.drill(&["--report", html.to_str().unwrap()], 1);
    let r = &r[0];
    assert_eq!(r["result"], "failed", "{r}");
    let local = target(r, "local");
    assert_eq!(local["result"], "failed", "{local}");
    assert!(
        local["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{local}"
    );
    let site = local["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "site")
        .unwrap();
    assert_eq!(site["result"], "failed");
    assert_eq!(target(r, "garage")["result"], "ok", "{r}");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("state/history/shop.json")).unwrap()).unwrap();
    assert_eq!(st["drill"]["last_result"], "failed");
    assert_eq!(st["drill"]["targets"]["local"]["result"], "failed");
    assert_eq!(st["drill"]["targets"]["garage"]["result"], "ok");
    let o = d.run(&["status", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a failed drill needs attention: {}",
        text(&o)
    );
    let sp = &json(&o)["policies"][0];
    assert!(
        sp["problems"].to_string().contains("last drill failed"),
        "{sp}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("class=\"failed\">failed<"), "{page}");
    chromium_render(&html, "drill-report-damaged.png");

    // --target: only that target is restored (and recorded).
    let r = d.drill(&["--target", "garage"], 0);
    let ts = r[0]["targets"].as_array().unwrap();
    assert_eq!(ts.len(), 1, "{r}");
    assert_eq!(ts[0]["target"], "garage");
    assert_eq!(ts[0]["result"], "ok");
    let r = d.drill(&["--target", "local"], 1);
    assert_eq!(r[0]["targets"].as_array().unwrap().len(), 1);
    assert_eq!(r[0]["targets"][0]["result"], "failed");

    // An unknown report format is a usage error before anything runs.
    let o = d.run(&["drill", "--report", d.path("r.txt").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Without services: a target that holds no snapshot is `missing`, one
/// that cannot be reached `unreachable` (exit 3, the others still drilled);
/// the Markdown report says so.
#[test]
fn missing_and_unreachable_targets_are_partial() {
    let s = Setup::new();
    s.fs_config(&["a", "b"]);
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    s.write(
        "backupctl.toml",
        &format!(
            "{cfg}\n[targets.gone]\ntype = \"fs\"\npath = \"{}\"\nlocation = \"elsewhere\"\n",
            s.path("not-mounted").display()
        ),
    );
    make_tree(&s.path("src"));
    s.files_policy("shop", &s.path("src"), &["a"], "");
    let run = |args: &[&str]| {
        let mut c = s.cmd();
        c.env("TZ", "UTC")
            .env("BACKUPCTL_NOW", "2026-05-01T12:00:00Z")
            .env_remove("BACKUPCTL_LOG")
            .args(args);
        c.output().unwrap()
    };
    let o = run(&["run", "--time", "2026-05-01T00:00:00Z"]);
    expect_code(&o, 0);
    s.files_policy("shop", &s.path("src"), &["a", "b", "gone"], "");
    expect_code(&run(&["init", "b"]), 0);
    let md = s.path("drill.md");
    let o = run(&["drill", "--json", "--report", md.to_str().unwrap()]);
    expect_code(&o, 3);
    let r = &json(&o)[0];
    assert_eq!(r["result"], "partial", "{r}");
    assert_eq!(target(r, "a")["result"], "ok");
    assert_eq!(target(r, "a")["age_seconds"], 12 * 3600);
    assert_eq!(target(r, "b")["result"], "missing");
    assert_eq!(target(r, "b")["snapshot"], serde_json::Value::Null);
    assert_eq!(target(r, "gone")["result"], "unreachable");
    let text_md = std::fs::read_to_string(&md).unwrap();
    assert!(text_md.contains("| b | - | missing |"), "{text_md}");
    assert!(text_md.contains("| gone | - | unreachable |"), "{text_md}");
    // Text output names every target.
    let o = run(&["drill"]);
    expect_code(&o, 3);
    let out = stdout(&o);
    assert!(out.contains("policy shop: drill PARTIAL"), "{out}");
    assert!(out.contains("target a: ok, snapshot"), "{out}");
    assert!(out.contains("target b: missing"), "{out}");
    // A policy that cannot be drilled at all is in the report too.
    s.write("policies/broken.toml", "targets = [\"a\"\n");
    let o = run(&["drill", "--report", md.to_str().unwrap()]);
    expect_code(&o, 2);
    let text_md = std::fs::read_to_string(&md).unwrap();
    assert!(text_md.contains("## Policies not drilled"), "{text_md}");
    assert!(
        text_md.contains("- broken: policy file not loaded"),
        "{text_md}"
    );
    assert!(text_md.contains("## Policy shop: PARTIAL"), "{text_md}");
}
