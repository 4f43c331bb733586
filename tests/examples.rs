//! The example configuration and policies users copy (`backupctl.example.toml`
//! and `policies/*.toml` at the repository root) pass `backupctl check` once
//! their paths point at directories that exist, and say what the docs say.

use crate::sched_common;

use sched_common::*;
use std::path::Path;

/// Replace every `path = "..."` value with a fresh directory under `base`
/// (created; for targets the parent is created and the root left to `check`).
fn repoint(text: &str, base: &Path, tag: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("path = \"") {
            let original = &rest[..rest.find('"').expect("closing quote")];
            assert!(
                original.starts_with('/'),
                "examples use absolute paths: {line}"
            );
            let dir = base.join(format!("{tag}-{i}")).join("data");
            std::fs::create_dir_all(&dir).unwrap();
            out.push_str(&format!("path = {:?}", dir.display().to_string()));
            out.push_str(&rest[original.len() + 1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn example_config_and_policies_pass_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = Setup::new();
    let cfg = std::fs::read_to_string(repo.join("backupctl.example.toml")).unwrap();
    let cfg = repoint(&cfg, s.path(), "target").replace(
        "state_dir = \"/var/lib/backupctl\"",
        &format!("state_dir = {:?}", s.state.display().to_string()),
    );
    std::fs::write(&s.config, cfg).unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(repo.join("policies")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let text = repoint(&std::fs::read_to_string(&p).unwrap(), s.path(), &stem);
            std::fs::write(s.path().join("policies").join(p.file_name().unwrap()), text).unwrap();
            names.push(stem);
        }
    }
    names.sort();
    assert_eq!(names, ["app-hourly", "records", "shop"]);

    // Directory targets must be initialised: before `init`, check fails them.
    let out = s.run(&["check", "--json"]);
    expect_code(&out, 1, "check before init");
    let out = s.run(&["init"]);
    expect_code(&out, 0, "init of the example targets");
    let out = s.run(&["check", "--json"]);
    expect_code(&out, 0, "check of the examples");
    let v = stdout_json(&out);
    assert_eq!(v["policies"], serde_json::json!(names));
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");

    // The retention rules are the ones the docs promise.
    let retention = |name: &str| -> toml::Value {
        let text = std::fs::read_to_string(repo.join("policies").join(format!("{name}.toml")));
        toml::from_str::<toml::Value>(&text.unwrap()).unwrap()["retention"].clone()
    };
    let r = retention("shop");
    assert_eq!(
        (
            r["daily"].as_integer(),
            r["weekly"].as_integer(),
            r["monthly"].as_integer()
        ),
        (Some(7), Some(4), Some(12))
    );
    let r = retention("app-hourly");
    assert_eq!(
        [&r["hourly"], &r["daily"], &r["weekly"], &r["monthly"]].map(|x| x.as_integer()),
        [Some(24), Some(7), Some(4), Some(12)]
    );
    assert_eq!(retention("records")["yearly"].as_integer(), Some(-1));

    // `schedule` reads them too: every example is scheduled.
    let out = s.run_at("2026-06-01T00:00:00Z", &["schedule", "--json"]);
    expect_code(&out, 0, "schedule");
    for p in stdout_json(&out).as_array().unwrap() {
        assert!(p["run"]["schedule"].is_string(), "{p}");
    }
}

// ---------------------------------------------------------------------------
// The README's examples (issue 8): every TOML block loads, the Quick start
// runs end to end, the configuration reference lists exactly the keys the
// configuration accepts, and the demo's steps work.
// ---------------------------------------------------------------------------

use crate::db_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use toml::{Table, Value};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// A fenced ```toml block of the README.
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The `## ` section it is in.
    section: String,
    text: String,
}

fn toml_blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    let mut in_other_fence = false;
    for (i, line) in readme.lines().enumerate() {
        if let Some(b) = open.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(open.take().unwrap());
            } else {
                b.text.push_str(line);
                b.text.push('\n');
            }
            continue;
        }
        if in_other_fence {
            in_other_fence = !line.trim_start().starts_with("```");
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
        } else if let Some(info) = line.trim_start().strip_prefix("```") {
            if info.trim().eq_ignore_ascii_case("toml") {
                open = Some(Block {
                    line: i + 1,
                    section: section.clone(),
                    text: String::new(),
                });
            } else {
                in_other_fence = true;
            }
        }
    }
    assert!(open.is_none(), "unterminated ```toml block in the README");
    out
}

/// What a README block is, decided from its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `backupctl.toml`: `[targets.NAME]` tables, `state_dir`, `policies_dir`.
    Config,
    /// A policy file with `targets`, `[retention]` and `[[sources]]`.
    Policy,
    /// Part of a policy (a `[retention]` section, `[[sources]]` entries,
    /// schedule keys): checked inside a minimal policy.
    PolicyFragment,
}

fn parse_block(b: &Block) -> Table {
    toml::from_str(&b.text).unwrap_or_else(|e| {
        panic!(
            "README.md:{}: the toml block does not parse: {e}\n{}",
            b.line, b.text
        )
    })
}

/// Config if `targets` is a table or a config-only key is present; policy if
/// `targets` is an array or a policy-only key is present; anything else (or
/// both) fails, so a new kind of block cannot escape the test.
fn classify(b: &Block, t: &Table) -> Kind {
    const CONFIG_ONLY: &[&str] = &["state_dir", "policies_dir"];
    const POLICY_ONLY: &[&str] = &[
        "schedule",
        "jitter",
        "compression_level",
        "retention",
        "sources",
        "verify",
        "max_age",
    ];
    // `[[notify]]` is accepted in both; alone it is a backupctl.toml block
    // (notifiers for every policy).
    let only_notify = !t.is_empty() && t.keys().all(|k| k == "notify");
    let config = t.get("targets").is_some_and(Value::is_table)
        || CONFIG_ONLY.iter().any(|k| t.contains_key(*k))
        || only_notify;
    let policy = t.get("targets").is_some_and(Value::is_array)
        || POLICY_ONLY.iter().any(|k| t.contains_key(*k));
    match (config, policy) {
        (true, false) => Kind::Config,
        (false, true) => {
            if ["targets", "retention", "sources"]
                .iter()
                .all(|k| t.contains_key(*k))
            {
                Kind::Policy
            } else {
                Kind::PolicyFragment
            }
        }
        (true, true) => panic!(
            "README.md:{}: the toml block mixes backupctl.toml and policy keys; split it\n{}",
            b.line, b.text
        ),
        (false, false) => panic!(
            "README.md:{}: the toml block is neither a backupctl.toml, a policy nor a part of \
             one; teach tests/examples.rs about it\n{}",
            b.line, b.text
        ),
    }
}

/// `/var/www/shop` -> `<base>/var/www/shop`.
fn reroot(base: &Path, p: &str) -> PathBuf {
    assert!(p.starts_with('/'), "not absolute: {p}");
    base.join(p.trim_start_matches('/'))
}

fn set_str(t: &mut Table, key: &str, v: &Path) {
    t.insert(key.into(), Value::String(v.display().to_string()));
}

/// Absolute paths left anywhere in `v` (after repointing there must be none
/// outside `base`, so a new kind of path cannot write outside the sandbox).
fn foreign_paths(v: &Value, base: &Path, at: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with('/') && !Path::new(s).starts_with(base) => {
            out.push(format!("{at} = {s:?}"))
        }
        Value::Table(t) => {
            for (k, x) in t {
                // A notifier's program is run, never written to.
                if k == "command" && at.contains(".notify[") {
                    continue;
                }
                foreign_paths(x, base, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                foreign_paths(x, base, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The environment variables named by `*_env` keys anywhere in `v`.
fn env_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Table(t) => {
            for (k, x) in t {
                match x {
                    Value::String(s) if k.ends_with("_env") => {
                        out.insert(s.clone());
                    }
                    _ => env_names(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| env_names(x, out)),
        _ => {}
    }
}

/// A closed port on loopback: S3 probes fail fast and never leave the machine.
const NO_ENDPOINT: &str = "http://127.0.0.1:1";

/// Repoint a backupctl.toml into `base`: state and policies dirs, fs target
/// roots (their parent, the "mount point", is created; the root is left to
/// `init`), S3 endpoints to a closed local port.
fn repoint_config(cfg: &mut Table, base: &Path) {
    for key in ["state_dir", "policies_dir"] {
        if let Some(Value::String(p)) = cfg.get(key) {
            if p.starts_with('/') {
                let p = reroot(base, p);
                set_str(cfg, key, &p);
            }
        }
    }
    if let Some(Value::Table(targets)) = cfg.get_mut("targets") {
        for (_, t) in targets.iter_mut() {
            let t = t.as_table_mut().expect("[targets.NAME] is a table");
            match t.get("type").and_then(Value::as_str) {
                Some("fs") => {
                    let p = t["path"].as_str().expect("fs path").to_string();
                    let p = if p.starts_with('/') {
                        reroot(base, &p)
                    } else {
                        base.join(p)
                    };
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    set_str(t, "path", &p);
                }
                Some("s3") => {
                    t.insert("endpoint".into(), Value::String(NO_ENDPOINT.into()));
                }
                other => panic!("unknown target type {other:?}"),
            }
        }
    }
}

/// Repoint a policy into `base`: file trees (created), SQLite files (created,
/// empty), the verify scratch directory.
fn repoint_policy(policy: &mut Table, base: &Path) {
    if let Some(Value::Array(sources)) = policy.get_mut("sources") {
        for s in sources.iter_mut() {
            let s = s.as_table_mut().expect("[[sources]] is a table");
            let Some(p) = s.get("path").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let p = reroot(base, &p);
            match s.get("type").and_then(Value::as_str) {
                Some("sqlite") => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, b"").unwrap(); // an empty file is an empty database
                }
                _ => std::fs::create_dir_all(&p).unwrap(),
            }
            set_str(s, "path", &p);
        }
    }
    if let Some(Value::Table(v)) = policy.get_mut("verify") {
        if let Some(p) = v.get("scratch_dir").and_then(Value::as_str) {
            let p = reroot(base, p);
            set_str(v, "scratch_dir", &p);
        }
    }
}

fn write_toml(path: &Path, t: &Table) {
    std::fs::write(path, toml::to_string(t).unwrap()).unwrap();
}

/// fs targets for these names (under `<base>/mnt-<name>/backupctl`).
fn fs_targets(names: &[String], base: &Path) -> Table {
    let mut targets = Table::new();
    for n in names {
        let mount = base.join(format!("mnt-{n}"));
        std::fs::create_dir_all(&mount).unwrap();
        let mut t = Table::new();
        t.insert("type".into(), "fs".into());
        set_str(&mut t, "path", &mount.join("backupctl"));
        t.insert("location".into(), format!("loc-{n}").into());
        targets.insert(n.clone(), Value::Table(t));
    }
    targets
}

fn sandbox_config(s: &Setup, targets: Table) -> Table {
    let mut cfg = Table::new();
    set_str(&mut cfg, "state_dir", &s.state);
    cfg.insert("targets".into(), Value::Table(targets));
    cfg
}

/// Load one README block the way a user would: write it (completed into a
/// minimal policy when it is a fragment) into a sandbox, `init` its
/// directory targets, and `check`.
fn check_block(b: &Block) -> Kind {
    let mut t = parse_block(b);
    let kind = classify(b, &t);
    let s = Setup::new();
    let base = s.path();
    let mut env = BTreeSet::new();
    env_names(&Value::Table(t.clone()), &mut env);
    let (cfg, policy) = match kind {
        Kind::Config => {
            repoint_config(&mut t, base);
            (t, None)
        }
        Kind::Policy | Kind::PolicyFragment => {
            t.entry("targets")
                .or_insert_with(|| Value::Array(vec!["a".into(), "b".into()]));
            t.entry("retention")
                .or_insert_with(|| toml::toml! { daily = 7 }.into());
            if !t.contains_key("sources") {
                let mut src: Table = toml::toml! { name = "site" type = "files" };
                set_str(&mut src, "path", &s.source);
                t.insert("sources".into(), Value::Array(vec![Value::Table(src)]));
            }
            repoint_policy(&mut t, base);
            let names: Vec<String> = t["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            (sandbox_config(&s, fs_targets(&names, base)), Some(t))
        }
    };
    let mut foreign = Vec::new();
    foreign_paths(
        &Value::Table(cfg.clone()),
        base,
        "backupctl.toml",
        &mut foreign,
    );
    if let Some(p) = &policy {
        foreign_paths(&Value::Table(p.clone()), base, "policy", &mut foreign);
    }
    assert!(
        foreign.is_empty(),
        "README.md:{}: paths this test does not know how to repoint: {foreign:?}",
        b.line
    );
    write_toml(&s.config, &cfg);
    if let Some(p) = &policy {
        write_toml(&s.path().join("policies/readme.toml"), p);
    }
    let run = |args: &[&str]| {
        let mut c = s.cmd();
        for v in &env {
            c.env(v, "readme-test-dummy");
        }
        c.args(args).output().unwrap()
    };
    let what = format!("README.md:{} ({:?}, section {:?})", b.line, kind, b.section);
    let targets = cfg.get("targets").and_then(Value::as_table);
    let of_type = |ty: &str| -> Vec<String> {
        targets
            .map(|t| {
                t.iter()
                    .filter(|(_, v)| v["type"].as_str() == Some(ty))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (fs, s3) = (of_type("fs"), of_type("s3"));
    if !fs.is_empty() {
        let mut args = vec!["init"];
        args.extend(fs.iter().map(String::as_str));
        expect_code(&run(&args), 0, &format!("{what}: init"));
    }
    let out = run(&["check"]);
    let err = stderr(&out);
    assert!(
        !err.contains("error:"),
        "{what}: configuration errors:\n{err}\n{}",
        b.text
    );
    if s3.is_empty() {
        expect_code(&out, 0, &format!("{what}: check"));
    } else {
        // The S3 probe cannot succeed (no such endpoint here); the block
        // must still parse and validate.
        assert_ne!(out.status.code(), Some(2), "{what}: check: {err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for t in &fs {
            assert!(
                stdout.contains(&format!("target {t} ("))
                    && !stdout.contains(&format!("target {t} (fs, ")),
                "{what}: fs target {t} not ok:\n{stdout}"
            );
        }
    }
    kind
}

#[test]
fn every_toml_block_in_the_readme_loads() {
    let blocks = toml_blocks(&readme());
    assert!(blocks.len() >= 6, "found only {} toml blocks", blocks.len());
    let mut kinds = BTreeMap::new();
    for b in &blocks {
        let kind = check_block(b);
        eprintln!("README.md:{}: {kind:?} ({})", b.line, b.section);
        *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
    }
    for k in ["Config", "Policy", "PolicyFragment"] {
        assert!(kinds.contains_key(k), "no {k} block: {kinds:?}");
    }
}

/// The Quick start's config and policy, from the README.
fn quick_start() -> (Table, Table) {
    let blocks: Vec<Block> = toml_blocks(&readme())
        .into_iter()
        .filter(|b| b.section == "Quick start")
        .collect();
    let mut config = None;
    let mut policy = None;
    for b in &blocks {
        let t = parse_block(b);
        match classify(b, &t) {
            Kind::Config => assert!(config.replace(t).is_none(), "two configs"),
            Kind::Policy => assert!(policy.replace(t).is_none(), "two policies"),
            Kind::PolicyFragment => panic!("README.md:{}: a fragment in the Quick start", b.line),
        }
    }
    (
        config.expect("the Quick start has a backupctl.toml"),
        policy.expect("the Quick start has a policy"),
    )
}

/// Drops the databases the test created, whatever happens.
struct DropDatabases(db_common::DbServer, Vec<String>);

impl Drop for DropDatabases {
    fn drop(&mut self) {
        for d in &self.1 {
            let _ = std::process::Command::new("psql")
                .args(["-X", "-q", "-d", "postgres", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"))
                .env("PGHOST", &self.0.host)
                .env("PGPORT", self.0.port.to_string())
                .env("PGUSER", &self.0.user)
                .env("PGPASSWORD", &self.0.password)
                .output();
        }
    }
}

/// Regular files under `root` (relative path -> bytes), skipping `skip`.
fn files_of(root: &Path, skip: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .filter(|(rel, _)| !skip(rel))
        .collect()
}

/// The Quick start as written (paths re-rooted in a temp dir, the database
/// on the test PostgreSQL server): init, check, run, list, restore, verify.
#[test]
fn the_quick_start_runs_end_to_end() {
    let (mut cfg, mut policy) = quick_start();

    // The repository's example files are the Quick start's, with comments
    // (the policy file may add optional keys).
    let example: Table =
        toml::from_str(&std::fs::read_to_string(repo().join("backupctl.example.toml")).unwrap())
            .unwrap();
    assert_eq!(
        cfg, example,
        "backupctl.example.toml differs from the Quick start"
    );
    let shop: Table =
        toml::from_str(&std::fs::read_to_string(repo().join("policies/shop.toml")).unwrap())
            .unwrap();
    for (k, v) in &policy {
        assert_eq!(
            Some(v),
            shop.get(k),
            "policies/shop.toml: {k} differs from the Quick start"
        );
    }

    let Some(pg) = db_common::DbServer::postgres() else {
        return;
    };
    let s = Setup::new();
    let base = s.path();
    repoint_config(&mut cfg, base);
    write_toml(&s.config, &cfg);

    // The database source, pointed at the test server under a fresh name.
    let db = format!("shop_{}", db_common::db_hex(10));
    let _drop = DropDatabases(pg.clone(), vec![db.clone(), format!("{db}_restored")]);
    let sources = policy["sources"].as_array_mut().unwrap();
    let pg_src = sources
        .iter_mut()
        .map(|x| x.as_table_mut().unwrap())
        .find(|x| x["type"].as_str() == Some("postgres"))
        .expect("the Quick start backs up a PostgreSQL database");
    let password_env = pg_src["password_env"].as_str().unwrap().to_string();
    pg_src.insert("database".into(), db.clone().into());
    pg_src.insert("host".into(), pg.host.clone().into());
    pg_src.insert("port".into(), i64::from(pg.port).into());
    pg_src.insert("user".into(), pg.user.clone().into());
    repoint_policy(&mut policy, base);
    let site_src = policy["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"].as_str() == Some("files"))
        .expect("the Quick start backs up a file tree")
        .clone();
    let site = PathBuf::from(site_src["path"].as_str().unwrap());
    let site_name = site_src["name"].as_str().unwrap().to_string();
    let db_name = pg_src_name(&policy);
    write_toml(&s.path().join("policies/shop.toml"), &policy);

    // Content: a small shop, with what the policy excludes.
    for (rel, data) in [
        ("index.php", b"<?php echo 'shop';".to_vec()),
        ("lib/cart/Cart.php", b"class Cart {}".to_vec()),
        ("uploads/2026/photo.bin", random_bytes(200_000)),
        ("uploads/empty.txt", Vec::new()),
        ("cache/page.html", b"cached".to_vec()),
        ("uploads/upload.tmp", b"half".to_vec()),
    ] {
        let p = site.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    pg.psql(
        &db,
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, cents int NOT NULL); \
         INSERT INTO orders (item, cents) SELECT 'item ' || g, g * 100 FROM generate_series(1, 250) g;",
    );

    let run = |args: &[&str]| {
        s.cmd()
            .env(&password_env, &pg.password)
            .args(args)
            .output()
            .unwrap()
    };
    expect_code(
        &run(&["check"]),
        1,
        "check before init (targets not there yet)",
    );
    expect_code(&run(&["init"]), 0, "init");
    let out = run(&["check", "--json"]);
    expect_code(&out, 0, "check");
    let j = stdout_json(&out);
    assert_eq!(j["policies"], serde_json::json!(["shop"]));
    assert!(j["warnings"].as_array().unwrap().is_empty(), "{j}");

    let out = run(&["run", "--json"]);
    expect_code(&out, 0, "run");
    let j = stdout_json(&out);
    assert_eq!(j[0]["status"], "complete", "{j}");

    let out = run(&["list", "--json"]);
    expect_code(&out, 0, "list");
    let j = stdout_json(&out);
    let snaps = j[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{j}");
    let names: Vec<&str> = snaps[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [site_name.as_str(), db_name.as_str()]);
    assert_eq!(snaps[0]["targets"], serde_json::json!(["nas", "offsite"]));

    // A test restore from each target: the tree byte for byte (less what
    // `exclude` leaves out), and the dump.
    let excluded = |rel: &str| rel.starts_with("cache/") || rel.ends_with(".tmp");
    let want = files_of(&site, excluded);
    assert_eq!(want.len(), 4);
    for t in ["nas", "offsite"] {
        let to = base.join(format!("restore-test-{t}"));
        let out = run(&[
            "restore",
            "shop",
            "--target",
            t,
            "--to",
            to.to_str().unwrap(),
        ]);
        expect_code(&out, 0, &format!("restore from {t}"));
        assert_eq!(
            files_of(&to.join(&site_name), |_| false),
            want,
            "restored from {t}"
        );
        let dump = std::fs::read(to.join(&db_name).join(format!("{db}.pgdump"))).unwrap();
        assert!(dump.starts_with(b"PGDMP"), "a custom-format dump");
    }
    let out = run(&[
        "restore",
        "shop",
        "--source",
        &db_name,
        "--into-database",
        &format!("{db}_restored"),
    ]);
    expect_code(&out, 0, "restore --into-database");
    let q = "SELECT count(*), sum(cents), string_agg(item, ',' ORDER BY id) FROM orders";
    assert_eq!(pg.psql(&format!("{db}_restored"), q), pg.psql(&db, q));

    expect_code(&run(&["verify"]), 0, "verify");
}

fn pg_src_name(policy: &Table) -> String {
    policy["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"].as_str() == Some("postgres"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The README's "where" labels, and the configuration tables each covers.
const WHERE: &[(&str, &[&str])] = &[
    ("`backupctl.toml`", &["config"]),
    ("`[targets.NAME]`", &["fs", "s3"]),
    ("`[targets.NAME]` fs", &["fs"]),
    ("`[targets.NAME]` s3", &["s3"]),
    ("policy", &["policy"]),
    ("`[retention]`", &["retention"]),
    ("`[[sources]]`", &["files", "postgres", "mysql", "sqlite"]),
    ("`[[sources]]` files", &["files"]),
    ("`[[sources]]` postgres, mysql", &["postgres", "mysql"]),
    ("`[[sources]]` postgres", &["postgres"]),
    ("`[[sources]]` mysql", &["mysql"]),
    ("`[[sources]]` sqlite", &["sqlite"]),
    ("`[verify]`", &["verify"]),
    (
        "`[verify.postgres]`, `[verify.mysql]`",
        &["verify.postgres", "verify.mysql"],
    ),
    ("`[[notify]]`", &["notify"]),
    ("`[fleet]`", &["fleet"]),
];

const TARGET_TYPES: &[&str] = &["fs", "s3"];
const SOURCE_TYPES: &[&str] = &["files", "postgres", "mysql", "sqlite"];

/// The words in backticks in `s`.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Scope -> keys, from the README's "Configuration reference" table.
fn documented_keys() -> BTreeMap<String, BTreeSet<String>> {
    let text = readme();
    let start = text
        .find("\n### Configuration reference\n")
        .expect("README has a Configuration reference section");
    let mut rows = text[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| where |"))
        .take_while(|l| l.starts_with('|'));
    let header = rows.next().expect("the reference table");
    assert_eq!(header, "| where | key | type | default | meaning |");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows.skip(1) {
        let cells: Vec<&str> = row
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 5, "a reference row with 5 cells: {row}");
        assert!(
            cells[2..].iter().all(|c| !c.is_empty()),
            "empty cell: {row}"
        );
        let scopes = WHERE
            .iter()
            .find(|(w, _)| *w == cells[0])
            .unwrap_or_else(|| panic!("unknown \"where\" {:?} (add it to WHERE): {row}", cells[0]))
            .1;
        let keys = backticked(cells[1]);
        assert!(!keys.is_empty(), "no key in backticks: {row}");
        for scope in scopes {
            for k in &keys {
                assert!(
                    out.entry(scope.to_string()).or_default().insert(k.clone()),
                    "{scope}.{k} documented twice"
                );
            }
        }
    }
    out
}

const PROBE_KEY: &str = "zz_not_a_key";

/// The keys `backupctl` accepts in one configuration table, read from its own
/// "unknown field" error (serde lists every field the struct has).
fn accepted_keys(scope: &str) -> BTreeSet<String> {
    let (cfg, policy) = probe_files(scope, Some(PROBE_KEY.into()), None);
    let err = probe(&cfg, &policy);
    let needle = format!("unknown field `{PROBE_KEY}`");
    let line = err
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("{scope}: no unknown-field error:\n{err}"));
    let rest = &line[line.find(&needle).unwrap() + needle.len()..];
    let mut keys: BTreeSet<String> = if rest.contains("there are no fields") {
        BTreeSet::new()
    } else {
        backticked(rest).into_iter().collect()
    };
    assert!(!keys.is_empty(), "{scope}: {line}");
    if TARGET_TYPES.contains(&scope) || SOURCE_TYPES.contains(&scope) {
        keys.insert("type".into()); // the tag, read before the struct
    }
    keys
}

/// The `type` values accepted for targets ("targets") or sources ("sources").
fn accepted_types(what: &str) -> BTreeSet<String> {
    let scope = if what == "targets" { "fs" } else { "files" };
    let (cfg, policy) = probe_files(scope, None, Some("zz-type"));
    let err = probe(&cfg, &policy);
    let line = err
        .lines()
        .find(|l| l.contains("unknown type \"zz-type\""))
        .unwrap_or_else(|| panic!("{what}: no unknown-type error:\n{err}"));
    line[line.find("expected").unwrap()..]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A valid backupctl.toml and policy with `extra` inserted as a key into
/// the table `scope` (and its type replaced by `kind`, when given).
fn probe_files(scope: &str, extra: Option<String>, kind: Option<&str>) -> (Table, Table) {
    let mut fs: Table = toml::toml! { type = "fs" path = "/nowhere/a" location = "x" };
    let mut cfg = Table::new();
    let mut policy: Table = toml::toml! {
        targets = ["a"]
        [retention]
        daily = 1
    };
    let mut source: Table = match scope {
        "postgres" | "mysql" => toml::toml! { name = "s" database = "d" },
        "sqlite" => toml::toml! { name = "s" path = "/nowhere/db.sqlite" },
        _ => toml::toml! { name = "s" path = "/nowhere" },
    };
    let src_type = if SOURCE_TYPES.contains(&scope) {
        scope
    } else {
        "files"
    };
    source.insert("type".into(), src_type.into());
    let mut verify = Table::new();
    let mut notify: Table = toml::toml! { on = ["failure"] command = ["true"] };
    let mut fleet: Table = toml::toml! { targets = ["a"] };
    let table: &mut Table = match scope {
        "fleet" => &mut fleet,
        "config" => &mut cfg,
        "notify" => &mut notify,
        "fs" => &mut fs,
        "s3" => {
            fs = toml::toml! { type = "s3" bucket = "b" location = "x" };
            &mut fs
        }
        "policy" => &mut policy,
        "retention" => policy["retention"].as_table_mut().unwrap(),
        "files" | "postgres" | "mysql" | "sqlite" => &mut source,
        "verify" => &mut verify,
        "verify.postgres" | "verify.mysql" => {
            let k = scope.trim_start_matches("verify.");
            verify.insert(k.into(), Value::Table(Table::new()));
            verify[k].as_table_mut().unwrap()
        }
        other => panic!("unknown scope {other}"),
    };
    if let Some(k) = extra {
        table.insert(k, 1.into());
    }
    if let Some(k) = kind {
        table.insert("type".into(), k.into());
    }
    if !verify.is_empty() {
        policy.insert("verify".into(), Value::Table(verify));
    }
    if scope == "notify" {
        cfg.insert("notify".into(), Value::Array(vec![Value::Table(notify)]));
    }
    if scope == "fleet" {
        cfg.insert("fleet".into(), Value::Table(fleet));
    }
    policy.insert("sources".into(), Value::Array(vec![Value::Table(source)]));
    let mut targets = Table::new();
    targets.insert("a".into(), Value::Table(fs));
    cfg.insert("targets".into(), Value::Table(targets));
    (cfg, policy)
}

/// `check` on these files; its stderr (a configuration error is expected).
fn probe(cfg: &Table, policy: &Table) -> String {
    let s = Setup::new();
    let mut cfg = cfg.clone();
    set_str(&mut cfg, "state_dir", &s.state);
    write_toml(&s.config, &cfg);
    write_toml(&s.path().join("policies/probe.toml"), policy);
    let out = s.run(&["check"]);
    expect_code(&out, 2, "check with an unknown key or type");
    stderr(&out)
}

#[test]
fn the_configuration_reference_lists_every_key() {
    let documented = documented_keys();
    assert_eq!(
        accepted_types("targets"),
        TARGET_TYPES.iter().map(|s| s.to_string()).collect(),
        "target types changed: document them in the README and update TARGET_TYPES and WHERE"
    );
    assert_eq!(
        accepted_types("sources"),
        SOURCE_TYPES.iter().map(|s| s.to_string()).collect(),
        "source types changed: document them in the README and update SOURCE_TYPES and WHERE"
    );
    let scopes: BTreeSet<&str> = WHERE.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let mut problems = Vec::new();
    for scope in scopes {
        let accepted = accepted_keys(scope);
        let doc = documented.get(scope).cloned().unwrap_or_default();
        for k in accepted.difference(&doc) {
            problems.push(format!(
                "{scope}: key `{k}` is accepted but has no README row"
            ));
        }
        for k in doc.difference(&accepted) {
            problems.push(format!(
                "{scope}: README documents `{k}`, which is not accepted"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "configuration reference out of date:\n{}",
        problems.join("\n")
    );
}

/// Copy a tree (files, directories, symbolic links).
fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// `scripts/demo.sh`'s steps, run on a copy of `fixtures/` (so the
/// repository's `.demo/` is never touched): run, list, verify succeed, with
/// both sources on both targets.
#[test]
fn the_demo_backs_up_files_and_a_database_to_two_targets() {
    let script = std::fs::read_to_string(repo().join("scripts/demo.sh")).unwrap();
    let config = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("export BACKUPCTL_CONFIG="))
        .expect("demo.sh exports BACKUPCTL_CONFIG")
        .to_string();
    let steps: Vec<Vec<&str>> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("target/debug/backupctl "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let commands: Vec<&str> = steps.iter().map(|s| s[0]).collect();
    assert_eq!(commands, ["run", "list", "verify"], "the demo's steps");

    let dir = tempfile::Builder::new()
        .prefix("backupctl-demo-")
        .tempdir()
        .unwrap();
    copy_tree(&repo().join("fixtures"), &dir.path().join("fixtures"));
    let cmd = |args: &[&str]| {
        crate::common::bin()
            .args(args)
            .current_dir(dir.path())
            .env("BACKUPCTL_CONFIG", &config)
            .env("TZ", "UTC")
            .output()
            .unwrap()
    };
    for step in &steps {
        expect_code(&cmd(step), 0, &format!("demo step {step:?}"));
    }

    let out = cmd(&["list", "--json"]);
    expect_code(&out, 0, "list --json");
    let j = stdout_json(&out);
    assert_eq!(j.as_array().unwrap().len(), 1, "one policy: {j}");
    let snaps = j[0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{j}");
    let sources: Vec<(&str, &str)> = snaps[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x["type"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, [("site", "files"), ("db", "sqlite")]);
    let targets = snaps[0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "complete on both targets: {j}");

    let out = cmd(&["verify", "--json"]);
    expect_code(&out, 0, "verify --json");
    let j = stdout_json(&out);
    let checked = &j[0]["snapshots"][0]["targets"];
    assert_eq!(checked.as_array().unwrap().len(), 2, "{j}");
    for t in checked.as_array().unwrap() {
        assert_eq!(t["result"], "ok", "{t}");
        assert_eq!(t["archives"].as_array().unwrap().len(), 2, "{t}");
    }
    // Everything the demo wrote is in the copy.
    for t in ["target-a", "target-b"] {
        assert!(
            dir.path()
                .join(".demo")
                .join(t)
                .join("backupctl-target.json")
                .is_file(),
            "{t} is under the temporary copy"
        );
    }
}
