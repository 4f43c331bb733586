//! The deployments users run, on real servers (issue 8, "Real deployments",
//! items 1 and 6): the real binary against a real S3 service (Garage), a real
//! PostgreSQL and a real MariaDB, with nothing mocked.
//!
//! - [`multi_source_policies_on_fs_and_s3`]: a policy with a file tree, a
//!   SQLite, a PostgreSQL and a MariaDB source and a policy with two file trees,
//!   on a directory target and an S3 target together, restore from each target
//!   byte for byte (content, modes, mtimes) and table for table.
//! - [`a_month_of_operation`]: three policies shaped like those in `policies/`
//!   (a nightly shop with PostgreSQL, a nightly WordPress with MariaDB, an
//!   hourly SQLite app) on two mounted directory targets and an S3 bucket,
//!   driven through 35 days by `BACKUPCTL_NOW` and `run --due --prune` /
//!   `verify --due` as cron would, in a time zone with a daylight-saving change,
//!   with the sites and databases changing in between and one disk unplugged
//!   for three days. At the end: the snapshots on every target are exactly the
//!   ones the retention rules keep (computed with `backupctl::retention` on the
//!   recorded times), every one of them restores to the state recorded when it
//!   was taken, the days the disk missed were caught up, nothing unreferenced
//!   is left anywhere, healthy nights print nothing under `-q`, and a fresh
//!   machine with only the config and the credentials restores everything
//!   after the first target is lost.
//!
//! Every check is independent of backupctl: trees are compared by hash lists
//! computed here (BLAKE3 of the content, permission bits, mtimes), extent
//! lists are hashed with `b3sum` (or the `blake3` crate for S3 objects), tar
//! streams are rebuilt from the packs by slicing and `zstd -dc` and hashed,
//! and table contents are read with `psql`, `mariadb` and `sqlite3`.

use crate::common;
use crate::db_common;
use crate::s3_common;

use backupctl::retention::{self, RetentionPolicy};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Weekday};
use common::{
    assert_hash_list, assert_same_tree, b3sums, files_under, hash_list, list_path, HashList, Mount,
};
use db_common::{db_hex, sqlite3, DbServer};
use s3_common::S3Env;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// A time zone with a daylight-saving change inside the simulated month.
const TZ: &str = "Europe/Berlin";

// ---------------------------------------------------------------------------
// The deployment under test.
// ---------------------------------------------------------------------------

/// The three services, or None (skipped; a failure under
/// BACKUPCTL_TEST_REQUIRE_SERVICES=1).
struct Services {
    pg: DbServer,
    my: DbServer,
    s3: S3Env,
}

fn services() -> Option<Services> {
    let pg = DbServer::postgres();
    let my = DbServer::mariadb();
    let s3 = s3_common::s3_env();
    Some(Services {
        pg: pg?,
        my: my?,
        s3: s3?,
    })
}

/// Databases created by a test, dropped when it ends (however it ends).
struct Databases<'a> {
    svc: &'a Services,
    pg: Vec<String>,
    my: Vec<String>,
}

impl<'a> Databases<'a> {
    fn new(svc: &'a Services) -> Self {
        Databases {
            svc,
            pg: Vec::new(),
            my: Vec::new(),
        }
    }

    /// A fresh name, dropped at the end (`kind`: "pg" or "my").
    fn name(&mut self, kind: &str, tag: &str) -> String {
        let n = format!("deploy_{tag}_{}", db_hex(8));
        match kind {
            "pg" => self.pg.push(n.clone()),
            _ => self.my.push(n.clone()),
        }
        n
    }
}

impl Drop for Databases<'_> {
    fn drop(&mut self) {
        // No panics here: this may run while a test is failing.
        let pg = &self.svc.pg;
        for db in &self.pg {
            let _ = Command::new("psql")
                .args(["-X", "-q", "-d", "postgres", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .env("PGHOST", &pg.host)
                .env("PGPORT", pg.port.to_string())
                .env("PGUSER", &pg.user)
                .env("PGPASSWORD", &pg.password)
                .output();
        }
        let my = &self.svc.my;
        for db in &self.my {
            let _ = Command::new("mariadb")
                .arg(format!("--host={}", my.host))
                .arg(format!("--port={}", my.port))
                .arg(format!("--user={}", my.user))
                .env("MYSQL_PWD", &my.password)
                .args(["-e", &format!("DROP DATABASE IF EXISTS {db}")])
                .output();
        }
    }
}

/// A machine's backupctl setup in a temporary directory: `etc/` holds the
/// config and its policies, `srv/` the data being backed up, `mnt-*/` the
/// mounted disks.
struct Deployment {
    dir: tempfile::TempDir,
    /// Secrets and the time zone, as a systemd EnvironmentFile would give them.
    env: Vec<(String, String)>,
}

impl Deployment {
    fn new(svc: &Services) -> Deployment {
        let dir = tempfile::Builder::new()
            .prefix("backupctl-deploy-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("etc/policies")).unwrap();
        let mut env: Vec<(String, String)> = svc
            .s3
            .child_env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push(("DEPLOY_PG_PASSWORD".into(), svc.pg.password.clone()));
        env.push(("DEPLOY_MY_PASSWORD".into(), svc.my.password.clone()));
        env.push(("TZ".into(), TZ.into()));
        Deployment { dir, env }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("etc/backupctl.toml")
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// The binary with `config` and the deployment's environment (nothing
    /// inherited that could change its behaviour: see [`common::bin`]).
    fn cmd_with(&self, config: &Path) -> Command {
        let mut c = common::bin();
        c.arg("--config")
            .arg(config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd_with(&self.config()).args(args).output().unwrap()
    }

    fn run_at(&self, now: &DateTime<FixedOffset>, args: &[&str]) -> Output {
        self.cmd_with(&self.config())
            .env("BACKUPCTL_NOW", now.to_rfc3339())
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn expect(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{what}: {}", text(o));
}

#[track_caller]
fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(o)))
}

fn fs_target(name: &str, root: &Path, location: &str) -> String {
    format!(
        "[targets.{name}]\ntype = \"fs\"\npath = {:?}\nlocation = {location:?}\n",
        root.display().to_string()
    )
}

fn files_source(name: &str, path: &Path, exclude: &[&str]) -> String {
    format!(
        "[[sources]]\nname = {name:?}\ntype = \"files\"\npath = {:?}\nexclude = {exclude:?}\n",
        path.display().to_string()
    )
}

fn pg_source(name: &str, pg: &DbServer, db: &str) -> String {
    format!(
        "[[sources]]\nname = {name:?}\ntype = \"postgres\"\ndatabase = {db:?}\nhost = {:?}\nport = {}\nuser = {:?}\npassword_env = \"DEPLOY_PG_PASSWORD\"\n",
        pg.host, pg.port, pg.user
    )
}

fn my_source(name: &str, my: &DbServer, db: &str) -> String {
    format!(
        "[[sources]]\nname = {name:?}\ntype = \"mysql\"\ndatabase = {db:?}\nhost = {:?}\nport = {}\nuser = {:?}\npassword_env = \"DEPLOY_MY_PASSWORD\"\n",
        my.host, my.port, my.user
    )
}

fn sqlite_source(name: &str, path: &Path) -> String {
    format!(
        "[[sources]]\nname = {name:?}\ntype = \"sqlite\"\npath = {:?}\n",
        path.display().to_string()
    )
}

fn write_file(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// `n` bytes of incompressible data (differs with `seed`).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    s3_common::noise(n, seed)
}

// ---------------------------------------------------------------------------
// The shop's, WordPress's and the app's data, and how they change.
// ---------------------------------------------------------------------------

const SHOP_TABLES: &[&str] = &["customers", "orders"];
const WP_TABLES: &[&str] = &["wp_posts", "wp_options"];

fn create_shop_db(pg: &DbServer, db: &str) {
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    pg.psql(
        db,
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text,
                                 since timestamptz NOT NULL DEFAULT '2025-01-01T00:00:00Z');
         CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers(id),
                              total numeric(10,2), note text, payload bytea);
         INSERT INTO customers (name, email)
           SELECT 'Kunde ' || i || ' Grüße', 'k' || i || '@example.org' FROM generate_series(1, 40) i;
         INSERT INTO orders (customer, total, note, payload)
           SELECT 1 + i % 40, i * 3.5,
                  CASE WHEN i % 7 = 0 THEN NULL ELSE 'order ' || i || E'\\ttab ''q''' END,
                  decode(md5(i::text), 'hex')
           FROM generate_series(1, 300) i;",
    );
}

/// A day's business: new orders, an updated customer, old orders deleted.
fn change_shop_db(pg: &DbServer, db: &str, day: u32) {
    pg.psql(
        db,
        &format!(
            "INSERT INTO orders (customer, total, note, payload)
               SELECT 1 + (i * {day}) % 40, i + {day} * 0.25, 'day {day} order ' || i, decode(md5(i::text || '{day}'), 'hex')
               FROM generate_series(1, 6) i;
             UPDATE customers SET email = 'changed-{day}@example.org' WHERE id = {};
             DELETE FROM orders WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 2);",
            1 + day % 40
        ),
    );
}

fn create_wp_db(my: &DbServer, db: &str) {
    my.mysql(None, &format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"));
    my.mysql(
        Some(db),
        "CREATE TABLE wp_posts (ID BIGINT PRIMARY KEY AUTO_INCREMENT, post_title VARCHAR(200),
                                post_content LONGTEXT, post_status VARCHAR(20), post_date DATETIME) ENGINE=InnoDB;
         CREATE TABLE wp_options (option_id BIGINT PRIMARY KEY AUTO_INCREMENT,
                                  option_name VARCHAR(191) UNIQUE, option_value LONGTEXT) ENGINE=InnoDB;
         INSERT INTO wp_posts (post_title, post_content, post_status, post_date)
           SELECT CONCAT('Beitrag ', seq, ' – ''quoted'''), REPEAT(CONCAT('Absatz ', seq, '\\n\\t'), 1 + seq % 7),
                  IF(seq % 5 = 0, 'draft', 'publish'), '2026-01-01 10:00:00' + INTERVAL seq HOUR
           FROM seq_1_to_150;
         INSERT INTO wp_options (option_name, option_value)
           SELECT CONCAT('option_', seq), CONCAT('value ', seq) FROM seq_1_to_30;",
    );
}

fn change_wp_db(my: &DbServer, db: &str, day: u32) {
    my.mysql(
        Some(db),
        &format!(
            "INSERT INTO wp_posts (post_title, post_content, post_status, post_date)
               VALUES ('Tag {day}', 'Neuer Beitrag am Tag {day} ✓', 'publish', '2026-03-01 09:00:00' + INTERVAL {day} DAY);
             UPDATE wp_options SET option_value = 'day {day}' WHERE option_name = 'option_{}';
             DELETE FROM wp_posts ORDER BY ID LIMIT 1;",
            1 + day % 30
        ),
    );
}

fn create_app_db(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    sqlite3(
        path,
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT, payload BLOB);
         CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200)
           INSERT INTO events (at, kind, payload) SELECT '2026-02-28 ' || i, 'init', randomblob(40) FROM s;
         INSERT INTO counters VALUES ('logins', 0), ('orders', 0);",
    );
}

/// The app's work between two ticks.
fn change_app_db(path: &Path, tick: usize) {
    sqlite3(
        path,
        &format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 12)
               INSERT INTO events (at, kind, payload) SELECT 'tick {tick} ' || i, 'login', randomblob(24) FROM s;
             UPDATE counters SET value = value + {tick} WHERE name = 'logins';
             DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 5);"
        ),
    );
}

/// Everything in a SQLite database, as the `sqlite3` CLI dumps it.
fn sqlite_dump(path: &Path) -> String {
    sqlite3(path, ".dump")
}

/// The first days of a web shop's tree.
fn create_site(root: &Path, tag: &str) {
    for i in 0..12 {
        write_file(
            &root.join(format!("products/p{i:02}.html")),
            format!("<h1>{tag} product {i}</h1>\n")
                .repeat(20)
                .as_bytes(),
        );
    }
    write_file(&root.join("index.php"), b"<?php require 'app.php';\n");
    write_file(&root.join("app.php"), b"<?php echo 'hello';\n");
    write_file(&root.join("assets/logo.bin"), &noise(30_000, 1));
    write_file(&root.join("config/secret.php"), b"<?php $key = 'x';\n");
    std::fs::set_permissions(
        root.join("config/secret.php"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    write_file(&root.join("bin/cron.sh"), b"#!/bin/sh\nphp app.php\n");
    std::fs::set_permissions(
        root.join("bin/cron.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("uploads/empty")).unwrap();
    write_file(&root.join("cache/page-0.html"), b"cached");
    std::os::unix::fs::symlink("products/p00.html", root.join("current")).unwrap();
}

/// A day of edits: one page rewritten, an upload added, an old one deleted
/// every third day, a permission change every fourth, cache and temporary
/// files (excluded) churned, the `current` link moved.
fn change_site(root: &Path, day: u32) {
    write_file(
        &root.join(format!("products/p{:02}.html", day % 12)),
        format!("<h1>product rewritten on day {day}</h1>\n").as_bytes(),
    );
    write_file(
        &root.join(format!("uploads/2026/img-{day:02}.bin")),
        &noise(2_000 + 500 * day as usize, 100 + day as u64),
    );
    if day % 3 == 2 {
        let oldest = std::fs::read_dir(root.join("uploads/2026"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        std::fs::remove_file(oldest).unwrap();
    }
    if day % 4 == 1 {
        let p = root.join("app.php");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let new = if mode == 0o644 { 0o640 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(new)).unwrap();
    }
    write_file(&root.join(format!("cache/page-{day}.html")), b"cached");
    let _ = std::fs::remove_file(root.join(format!("cache/page-{}.html", day.wrapping_sub(2))));
    write_file(&root.join(format!("products/upload-{day}.tmp")), b"partial");
    let _ = std::fs::remove_file(root.join(format!("products/upload-{}.tmp", day.wrapping_sub(1))));
    std::fs::remove_file(root.join("current")).unwrap();
    std::os::unix::fs::symlink(
        format!("products/p{:02}.html", day % 12),
        root.join("current"),
    )
    .unwrap();
}

/// What the site policies exclude: `cache/` and `**/*.tmp`.
const SITE_EXCLUDE: &[&str] = &["cache/", "**/*.tmp"];

fn site_excluded(rel: &str) -> bool {
    rel == "cache" || rel.starts_with("cache/") || rel.ends_with(".tmp")
}

// ---------------------------------------------------------------------------
// Test 1: multi-source policies on every target type.
// ---------------------------------------------------------------------------

/// A policy with a file tree, SQLite, PostgreSQL and MariaDB, and a policy
/// with two file trees, on a directory target and an S3 target together;
/// every source restores from each target on its own.
#[test]
fn multi_source_policies_on_fs_and_s3() {
    let Some(svc) = services() else {
        return;
    };
    let d = Deployment::new(&svc);
    let mut dbs = Databases::new(&svc);
    let disk = Mount::new(d.path("mnt-disk"));
    let prefix = format!("deploy/{}/", s3_common::unique("multi"));
    d.write(
        "etc/backupctl.toml",
        &format!(
            "state_dir = \"state\"\n\n{}\n{}",
            fs_target("disk", &disk.root(), "office"),
            svc.s3.target_toml("cloud", &prefix, "eu-central-1", "")
        ),
    );
    expect(&d.run(&["init"]), 0, "init");

    let site = d.path("srv/www/shop");
    common::make_tree(&site);
    let app = d.path("srv/app/app.db");
    create_app_db(&app);
    let shopdb = dbs.name("pg", "shop");
    create_shop_db(&svc.pg, &shopdb);
    let wpdb = dbs.name("my", "wp");
    create_wp_db(&svc.my, &wpdb);
    let uploads = d.path("srv/uploads");
    common::make_tree(&uploads);
    write_file(&uploads.join("big/noise.bin"), &noise(3 << 20, 7));
    let docs = d.path("srv/docs");
    write_file(&docs.join("handbook/ch1.md"), b"# Chapter 1\n");
    write_file(&docs.join("handbook/ch2.md"), "# Kapitel 2 ✓\n".as_bytes());
    write_file(&docs.join("empty.txt"), b"");

    d.write(
        "etc/policies/shop.toml",
        &format!(
            "targets = [\"disk\", \"cloud\"]\n[retention]\ndaily = 7\n\n{}\n{}\n{}\n{}",
            files_source("site", &site, &[]),
            sqlite_source("app", &app),
            pg_source("shopdb", &svc.pg, &shopdb),
            my_source("wpdb", &svc.my, &wpdb),
        ),
    );
    d.write(
        "etc/policies/media.toml",
        &format!(
            "targets = [\"disk\", \"cloud\"]\n[retention]\ndaily = 7\n\n{}\n{}",
            files_source("uploads", &uploads, &[]),
            files_source("docs", &docs, &[]),
        ),
    );
    let o = d.run(&["run", "--json"]);
    expect(&o, 0, "run");
    let j = json(&o);
    for p in j.as_array().unwrap() {
        assert_eq!(p["status"], "complete", "{p}");
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["status"], "complete", "{t}");
        }
    }
    let app_rows = sqlite_dump(&app);
    let shop_rows = svc.pg.pg_rows(&shopdb, SHOP_TABLES);
    let wp_rows = svc.my.my_rows(&wpdb, WP_TABLES);
    assert!(shop_rows.lines().count() > 300 && wp_rows.lines().count() > 150);

    for t in ["disk", "cloud"] {
        let out = d.path(&format!("restore-{t}"));
        let o = d.run(&[
            "restore",
            "shop",
            "--target",
            t,
            "--to",
            out.to_str().unwrap(),
            "--json",
        ]);
        expect(&o, 0, "restore shop");
        for s in json(&o)["sources"].as_array().unwrap() {
            assert_eq!(s["target"], t, "{s}");
        }
        assert_same_tree(&site, &out.join("site"));
        assert_eq!(sqlite_dump(&out.join("app/app.db")), app_rows, "{t}: app");
        assert!(out.join(format!("shopdb/{shopdb}.pgdump")).is_file());
        assert!(out.join(format!("wpdb/{wpdb}.sql")).is_file());

        let into = dbs.name("pg", "shop_restored");
        let o = d.run(&[
            "restore",
            "shop",
            "--source",
            "shopdb",
            "--into-database",
            &into,
            "--target",
            t,
        ]);
        expect(&o, 0, "restore --into-database (postgres)");
        assert_eq!(svc.pg.pg_rows(&into, SHOP_TABLES), shop_rows, "{t}: shopdb");
        let into = dbs.name("my", "wp_restored");
        let o = d.run(&[
            "restore",
            "shop",
            "--source",
            "wpdb",
            "--into-database",
            &into,
            "--target",
            t,
        ]);
        expect(&o, 0, "restore --into-database (mysql)");
        assert_eq!(svc.my.my_rows(&into, WP_TABLES), wp_rows, "{t}: wpdb");

        let out = d.path(&format!("media-{t}"));
        let o = d.run(&[
            "restore",
            "media",
            "--target",
            t,
            "--to",
            out.to_str().unwrap(),
        ]);
        expect(&o, 0, "restore media");
        assert_same_tree(&uploads, &out.join("uploads"));
        assert_same_tree(&docs, &out.join("docs"));
    }
    let o = d.run(&["verify", "--all", "--json"]);
    expect(&o, 0, "verify --all");
    for p in json(&o).as_array().unwrap() {
        assert_eq!(p["result"], "ok", "{p}");
        for s in p["snapshots"].as_array().unwrap() {
            let ts: BTreeSet<&str> = s["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["target"].as_str().unwrap())
                .collect();
            assert_eq!(ts, BTreeSet::from(["disk", "cloud"]), "{s}");
        }
    }
}

// ---------------------------------------------------------------------------
// Test 2: a month of operation.
// ---------------------------------------------------------------------------

/// What a source held when a snapshot was taken, recorded by the test.
#[derive(Clone, Debug, PartialEq)]
struct SourceState {
    tree: Option<HashList>,
    /// Table contents (psql / mariadb / sqlite3 output).
    rows: Option<String>,
}

/// One snapshot the test saw being taken.
#[derive(Clone, Debug)]
struct Taken {
    id: String,
    time: DateTime<FixedOffset>,
    /// Source name -> what it held.
    state: BTreeMap<String, SourceState>,
    /// Source name -> BLAKE3 of its tar stream (from the manifest).
    streams: BTreeMap<String, String>,
    /// Source name -> its stream's and its index's extent lists, with the
    /// BLAKE3 the manifest records for each.
    lists: BTreeMap<String, [(String, String); 2]>,
    /// Taken while the offsite disk was unplugged.
    while_unplugged: bool,
}

struct Pol {
    name: &'static str,
    order: [&'static str; 3],
    retention: RetentionPolicy,
    /// Everything ever taken, oldest first.
    taken: Vec<Taken>,
    /// The ids retention keeps, as the test computes it after each prune.
    kept: BTreeSet<String>,
}

impl Pol {
    fn new(name: &'static str, order: [&'static str; 3], retention_toml: &str) -> Pol {
        Pol {
            name,
            order,
            retention: toml::from_str(retention_toml).unwrap(),
            taken: Vec::new(),
            kept: BTreeSet::new(),
        }
    }

    fn get(&self, id: &str) -> &Taken {
        self.taken.iter().find(|t| t.id == id).unwrap()
    }

    /// `prune` at `now`, computed by the library's retention module over the
    /// recorded times of the snapshots still kept.
    fn prune(&mut self, now: &DateTime<FixedOffset>) {
        self.kept = self.keep_now(now);
    }

    /// What `prune` at `now` keeps of the snapshots still kept.
    fn keep_now(&self, now: &DateTime<FixedOffset>) -> BTreeSet<String> {
        let live: Vec<&Taken> = self
            .taken
            .iter()
            .filter(|t| self.kept.contains(&t.id))
            .collect();
        let times: Vec<DateTime<FixedOffset>> = live.iter().map(|t| t.time).collect();
        retention::apply(&times, &self.retention, now.to_utc())
            .keep
            .iter()
            .map(|k| live[k.index].id.clone())
            .collect()
    }

    /// What retention keeps when applied once to everything ever taken.
    fn keep_of_all(&self, now: &DateTime<FixedOffset>) -> BTreeSet<String> {
        let times: Vec<DateTime<FixedOffset>> = self.taken.iter().map(|t| t.time).collect();
        retention::apply(&times, &self.retention, now.to_utc())
            .keep
            .iter()
            .map(|k| self.taken[k.index].id.clone())
            .collect()
    }
}

/// `date`'s idea of a local wall-clock time in [`TZ`] (independent of chrono).
fn local_time(day: NaiveDate, hour: u32, minute: u32) -> DateTime<FixedOffset> {
    let o = Command::new("date")
        .env("TZ", TZ)
        .arg("-d")
        .arg(format!("{day} {hour:02}:{minute:02}"))
        .arg("+%Y-%m-%dT%H:%M:%S%:z")
        .output()
        .unwrap();
    assert!(o.status.success(), "date: {}", text(&o));
    DateTime::parse_from_rfc3339(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Snapshot ids of `policy` on an fs target (its manifests).
fn fs_ids(root: &Path, policy: &str) -> BTreeSet<String> {
    common::manifests(root, policy)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Snapshot ids of `policy` on the S3 target, listed with the SDK.
fn s3_ids(s3: &S3Env, prefix: &str, policy: &str) -> BTreeSet<String> {
    let p = format!("{prefix}{policy}/snapshots/");
    s3.list_keys(&p)
        .into_iter()
        .filter_map(|(k, _)| {
            k.strip_prefix(&p)?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect()
}

/// The month's deployment: what the test knows and checks.
struct Month<'a> {
    svc: &'a Services,
    d: Deployment,
    prefix: String,
    nas: Mount,
    offsite: Mount,
    shop_site: PathBuf,
    wp_site: PathBuf,
    app_db: PathBuf,
    shop_db: String,
    wp_db: String,
    pols: Vec<Pol>,
}

impl Month<'_> {
    fn pol(&self, name: &str) -> &Pol {
        self.pols.iter().find(|p| p.name == name).unwrap()
    }

    fn root(&self, target: &str) -> PathBuf {
        match target {
            "nas" => self.nas.root(),
            "offsite" => self.offsite.root(),
            t => panic!("{t} is not an fs target"),
        }
    }

    fn ids_on(&self, target: &str, policy: &str) -> BTreeSet<String> {
        match target {
            "cloud" => s3_ids(&self.svc.s3, &self.prefix, policy),
            t => fs_ids(&self.root(t), policy),
        }
    }

    /// Every target named holds exactly the snapshots retention keeps.
    #[track_caller]
    fn assert_retained(&self, targets: &[&str], when: &str) {
        for p in &self.pols {
            for t in targets {
                let on = self.ids_on(t, p.name);
                assert_eq!(
                    on,
                    p.kept,
                    "{when}: policy {} on target {t}: held (left) vs kept by the retention rules (right)",
                    p.name
                );
            }
        }
    }

    /// The state of each source of `policy` now.
    fn state(&self, policy: &str) -> BTreeMap<String, SourceState> {
        let mut m = BTreeMap::new();
        match policy {
            "shop" => {
                m.insert(
                    "site".into(),
                    SourceState {
                        tree: Some(hash_list(&self.shop_site, site_excluded)),
                        rows: None,
                    },
                );
                m.insert(
                    "db".into(),
                    SourceState {
                        tree: None,
                        rows: Some(self.svc.pg.pg_rows(&self.shop_db, SHOP_TABLES)),
                    },
                );
            }
            "wordpress" => {
                m.insert(
                    "site".into(),
                    SourceState {
                        tree: Some(hash_list(&self.wp_site, site_excluded)),
                        rows: None,
                    },
                );
                m.insert(
                    "db".into(),
                    SourceState {
                        tree: None,
                        rows: Some(self.svc.my.my_rows(&self.wp_db, WP_TABLES)),
                    },
                );
            }
            _ => {
                m.insert(
                    "data".into(),
                    SourceState {
                        tree: None,
                        rows: Some(sqlite_dump(&self.app_db)),
                    },
                );
            }
        }
        m
    }

    /// Restore `snapshot` of `policy` (None: the latest, with failover when
    /// `target` is None) with `config` and check every source against
    /// `want`. Returns the targets used per source.
    fn restore_and_check(
        &self,
        dbs: &mut Databases,
        config: &Path,
        policy: &str,
        snapshot: Option<&str>,
        target: Option<&str>,
        want: &BTreeMap<String, SourceState>,
    ) -> BTreeMap<String, String> {
        let out = self
            .d
            .path(&format!("restores/{}", s3_common::unique(policy)));
        let mut args = vec!["restore", policy];
        args.extend(snapshot);
        args.extend(["--to", out.to_str().unwrap(), "--json"]);
        if let Some(t) = target {
            args.extend(["--target", t]);
        }
        let o = self.d.cmd_with(config).args(&args).output().unwrap();
        expect(&o, 0, &format!("restore {args:?}"));
        let j = json(&o);
        let mut used = BTreeMap::new();
        for s in j["sources"].as_array().unwrap() {
            used.insert(
                s["name"].as_str().unwrap().to_string(),
                s["target"].as_str().unwrap().to_string(),
            );
        }
        let what = format!("{policy} {snapshot:?} from {target:?}");
        for (name, st) in want {
            if let Some(tree) = &st.tree {
                assert_hash_list(tree, &out.join(name), &what);
            }
        }
        if let Some(st) = want.get("data") {
            let got = sqlite_dump(&out.join("data/app.db"));
            assert!(
                got == *st.rows.as_ref().unwrap(),
                "{what}: app database differs"
            );
        }
        if let Some(rows) = want.get("db").and_then(|s| s.rows.as_ref()) {
            let kind = if policy == "shop" { "pg" } else { "my" };
            let into = dbs.name(kind, "check");
            let mut args = vec!["restore", policy];
            args.extend(snapshot);
            args.extend(["--source", "db", "--into-database", into.as_str(), "--json"]);
            if let Some(t) = target {
                args.extend(["--target", t]);
            }
            let o = self.d.cmd_with(config).args(&args).output().unwrap();
            expect(&o, 0, &format!("restore {args:?}"));
            let got = if kind == "pg" {
                let r = self.svc.pg.pg_rows(&into, SHOP_TABLES);
                self.svc
                    .pg
                    .psql("postgres", &format!("DROP DATABASE {into} WITH (FORCE)"));
                r
            } else {
                let r = self.svc.my.my_rows(&into, WP_TABLES);
                self.svc.my.mysql(None, &format!("DROP DATABASE {into}"));
                r
            };
            assert!(got == *rows, "{what}: database contents differ");
            let tdb = json(&o)["target"].as_str().unwrap().to_string();
            used.insert("db (into database)".into(), tdb);
        }
        std::fs::remove_dir_all(&out).unwrap();
        used
    }
}

/// Ticks of the simulated cron: `run --due --prune` then `verify --due` at
/// these local times every day (the app's hourly schedule runs at each).
/// Two a day keep every path of the month (nightly and hourly policies,
/// verify schedules, the unplugged disk, the clock change) at half the runs
/// of four: this test is the suite's long pole.
const TICK_HOURS: [u32; 2] = [4, 16];
const TICK_MINUTE: u32 = 20;
const DAYS: u32 = 35;
/// The offsite disk is unplugged for these days (0-based; the last of March
/// is 30), across the daylight-saving change of 29 March.
const UNPLUGGED: std::ops::Range<u32> = 28..31;

/// Does `verify --due` act on `policy` at this tick? Its schedules: the app
/// nightly at 03:45, the shop on Sundays at 05:00, WordPress on Wednesdays at
/// 06:00; every one once at the very first tick (never verified).
fn verify_expected(policy: &str, first: bool, weekday: Weekday, hour: u32) -> bool {
    first
        || match policy {
            "app" => hour == 4,
            "shop" => weekday == Weekday::Sun && hour == 16,
            _ => weekday == Weekday::Wed && hour == 16,
        }
}

/// 35 days of a real deployment; see the module documentation.
#[test]
fn a_month_of_operation() {
    let Some(svc) = services() else {
        return;
    };
    let started = Instant::now();
    let d = Deployment::new(&svc);
    let mut dbs = Databases::new(&svc);
    let prefix = format!("deploy/{}/", s3_common::unique("month"));
    let nas = Mount::new(d.path("mnt-nas"));
    let offsite = Mount::new(d.path("mnt-offsite"));
    d.write(
        "etc/backupctl.toml",
        &format!(
            "state_dir = \"../var/lib/backupctl\"\n\n{}\n{}\n{}",
            fs_target("nas", &nas.root(), "office"),
            fs_target("offsite", &offsite.root(), "home"),
            svc.s3.target_toml("cloud", &prefix, "eu-central-1", "")
        ),
    );
    expect(&d.run(&["init"]), 0, "init");
    // As the Quick start says: make the host key and pin it in the config,
    // so the recovery machine (which has only the config) trusts the
    // snapshots.
    let k = d.run(&["key", "init", "--json"]);
    expect(&k, 0, "key init");
    let public: serde_json::Value = serde_json::from_slice(&k.stdout).unwrap();
    let cfg = std::fs::read_to_string(d.config()).unwrap();
    std::fs::write(
        d.config(),
        format!("trusted_keys = [{}]\n{cfg}", public["public_key"]),
    )
    .unwrap();

    let shop_site = d.path("srv/www/shop");
    create_site(&shop_site, "shop");
    let wp_site = d.path("srv/www/wordpress");
    create_site(&wp_site, "wp");
    let app_db = d.path("srv/app/app.db");
    create_app_db(&app_db);
    let shop_db = dbs.name("pg", "shop");
    create_shop_db(&svc.pg, &shop_db);
    let wp_db = dbs.name("my", "wordpress");
    create_wp_db(&svc.my, &wp_db);

    let daily = "daily = 7\nweekly = 4\nmonthly = 12\n";
    let hourly = "hourly = 24\ndaily = 7\nweekly = 4\nmonthly = 12\n";
    let list = |o: &[&str; 3]| {
        o.iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pols = vec![
        Pol::new("shop", ["nas", "offsite", "cloud"], daily),
        Pol::new("wordpress", ["nas", "cloud", "offsite"], daily),
        Pol::new("app", ["nas", "offsite", "cloud"], hourly),
    ];
    d.write(
        "etc/policies/shop.toml",
        &format!(
            "schedule = \"30 2 * * *\"\njitter = \"10m\"\ntargets = [{}]\n\n[retention]\n{daily}\n{}\n{}\n[verify]\nschedule = \"0 5 * * 0\"\nsample = 2\n",
            list(&pols[0].order),
            files_source("site", &shop_site, SITE_EXCLUDE),
            pg_source("db", &svc.pg, &shop_db),
        ),
    );
    d.write(
        "etc/policies/wordpress.toml",
        &format!(
            "schedule = \"0 3 * * *\"\ntargets = [{}]\n\n[retention]\n{daily}\n{}\n{}\n[verify]\nschedule = \"0 6 * * 3\"\n",
            list(&pols[1].order),
            files_source("site", &wp_site, SITE_EXCLUDE),
            my_source("db", &svc.my, &wp_db),
        ),
    );
    d.write(
        "etc/policies/app.toml",
        &format!(
            "schedule = \"15 * * * *\"\njitter = \"2m\"\ntargets = [{}]\n\n[retention]\n{hourly}\n{}\n[verify]\nschedule = \"45 3 * * *\"\n",
            list(&pols[2].order),
            sqlite_source("data", &app_db),
        ),
    );
    expect(&d.run(&["check"]), 0, "check");

    let mut m = Month {
        svc: &svc,
        d,
        prefix,
        nas,
        offsite,
        shop_site,
        wp_site,
        app_db,
        shop_db,
        wp_db,
        pols,
    };
    let start = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let mut tick = 0usize;
    let mut quiet_ticks = 0;
    let mut verified: BTreeMap<&str, usize> = BTreeMap::new();
    let mut caught_up: BTreeSet<String> = BTreeSet::new();
    let mut unplugged = false;
    let mut last_now = None;
    // Per policy: did anything change since its last snapshot?
    let mut changed: BTreeMap<&str, bool> = BTreeMap::new();
    let loop_started = Instant::now();

    for day in 0..DAYS {
        let date = start + chrono::Days::new(day as u64);
        // The disk goes away before the first tick of the first unplugged
        // day and comes back before the first tick after.
        if day == UNPLUGGED.start {
            m.offsite.unplug();
            unplugged = true;
        }
        let plugged_back = day == UNPLUGGED.end;
        if plugged_back {
            m.offsite.plug();
            unplugged = false;
        }
        // A day of business, except every sixth day (nothing changes: the
        // unchanged sources must give the same archives).
        if day % 6 != 5 && day > 0 {
            change_site(&m.shop_site, day);
            change_shop_db(&svc.pg, &m.shop_db, day);
            change_site(&m.wp_site, day + 100);
            change_wp_db(&svc.my, &m.wp_db, day);
            changed.insert("shop", true);
            changed.insert("wordpress", true);
        }
        let day_states: BTreeMap<&str, BTreeMap<String, SourceState>> = ["shop", "wordpress"]
            .into_iter()
            .map(|p| (p, m.state(p)))
            .collect();

        for (hi, &hour) in TICK_HOURS.iter().enumerate() {
            let now = local_time(date, hour, TICK_MINUTE);
            let first = tick == 0;
            if tick % 5 != 3 && !first {
                change_app_db(&m.app_db, tick);
                changed.insert("app", true);
            }
            let app_state = m.state("app");
            // Which policies the schedules make due: the nightly ones at the
            // first tick after 02:30 / 03:00 (the 04:20 one, also on the night
            // the clocks go forward), the hourly app at every tick.
            let due: BTreeSet<&str> = m
                .pols
                .iter()
                .map(|p| p.name)
                .filter(|&p| p == "app" || hi == 0)
                .collect();
            let catch_up_tick = plugged_back && hi == 0;
            let quiet = !unplugged && !catch_up_tick;
            let before: BTreeMap<&str, BTreeSet<String>> = m
                .pols
                .iter()
                .map(|p| (p.name, fs_ids(&m.nas.root(), p.name)))
                .collect();

            let run = if quiet {
                let o = m.d.run_at(&now, &["-q", "run", "--due", "--prune"]);
                expect(&o, 0, &format!("{now}: -q run --due --prune"));
                assert!(
                    o.stdout.is_empty() && o.stderr.is_empty(),
                    "{now}: a healthy night under -q prints nothing: {}",
                    text(&o)
                );
                quiet_ticks += 1;
                None
            } else {
                let o = m.d.run_at(&now, &["run", "--due", "--prune", "--json"]);
                expect(
                    &o,
                    if unplugged { 3 } else { 0 },
                    &format!("{now}: run --due --prune"),
                );
                Some(json(&o))
            };

            // The new snapshots, read from the first target's manifests.
            for p in m.pols.iter_mut() {
                let ids = fs_ids(&m.nas.root(), p.name);
                let new: Vec<&String> = ids.difference(&before[p.name]).collect();
                let want = usize::from(due.contains(p.name));
                assert_eq!(
                    new.len(),
                    want,
                    "{now}: policy {}: new snapshots {new:?}, expected {want}",
                    p.name
                );
                for id in new {
                    let man =
                        read_json(&m.nas.root().join(format!("{}/snapshots/{id}.json", p.name)));
                    let time = DateTime::parse_from_rfc3339(man["time"].as_str().unwrap()).unwrap();
                    assert_eq!(time, now, "{id}: recorded time");
                    assert_eq!(time.offset(), now.offset(), "{id}: recorded offset");
                    let streams: BTreeMap<String, String> = man["sources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            (
                                s["name"].as_str().unwrap().to_string(),
                                s["stream"]["blake3"].as_str().unwrap().to_string(),
                            )
                        })
                        .collect();
                    let lists = source_lists(&man);
                    // Unchanged sources give the same tar stream as last
                    // time, stored in the same extents.
                    if let Some(prev) = p.taken.last() {
                        if !changed.get(p.name).copied().unwrap_or(false) {
                            assert_eq!(
                                streams, prev.streams,
                                "{now}: policy {}: nothing changed since {}, yet the tar streams differ",
                                p.name, prev.id
                            );
                            // Same extents as the previous snapshot's lists
                            // as stored now (a prune may have repacked them
                            // since: `revision` says so).
                            let prev_now = m
                                .nas
                                .root()
                                .join(format!("{}/snapshots/{}.json", p.name, prev.id));
                            let prev_lists = if prev_now.exists() {
                                source_lists(&read_json(&prev_now))
                            } else {
                                prev.lists.clone()
                            };
                            assert_eq!(
                                lists, prev_lists,
                                "{now}: policy {}: nothing changed since {}, yet the extent lists differ",
                                p.name, prev.id
                            );
                        } else {
                            for (s, h) in &streams {
                                let same_state =
                                    prev.state[s] == day_or_app(&day_states, &app_state, p.name)[s];
                                if !same_state {
                                    assert_ne!(
                                        h, &prev.streams[s],
                                        "{now}: policy {}: source {s} changed, same tar stream",
                                        p.name
                                    );
                                }
                            }
                        }
                    }
                    changed.insert(p.name, false);
                    p.taken.push(Taken {
                        id: id.clone(),
                        time,
                        state: day_or_app(&day_states, &app_state, p.name).clone(),
                        streams,
                        lists,
                        while_unplugged: unplugged,
                    });
                    p.kept.insert(id.clone());
                }
            }

            // What the JSON says, on the ticks that are not quiet.
            if let Some(j) = &run {
                for e in j.as_array().unwrap() {
                    let policy = e["policy"]
                        .as_str()
                        .or(e["catch_up"]["policy"].as_str())
                        .unwrap();
                    if unplugged {
                        assert!(e.get("prune").is_none(), "{now}: pruned a partial run: {e}");
                        if let Some(st) = e["status"].as_str() {
                            assert_eq!(st, "partial", "{e}");
                            let off = e["targets"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|t| t["name"] == "offsite")
                                .unwrap();
                            assert_eq!(off["status"], "failed", "{off}");
                            assert!(
                                off["error"].as_str().unwrap().contains("not mounted"),
                                "{off}"
                            );
                        } else {
                            assert_eq!(e["catch_up"]["result"], "partial", "{e}");
                        }
                    } else {
                        // The first tick after the disk came back: a complete
                        // run, then the catch-up of what the disk missed, then
                        // the prune.
                        assert_eq!(e["status"], "complete", "{e}");
                        let cu = &e["catch_up"];
                        assert_eq!(cu["result"], "ok", "{policy}: {e}");
                        let p = m.pol(policy);
                        // It copies exactly the snapshots taken while the disk
                        // was away that retention keeps at this moment.
                        let live = p.keep_now(&now);
                        let want: BTreeSet<String> = p
                            .taken
                            .iter()
                            .filter(|t| t.while_unplugged && live.contains(&t.id))
                            .map(|t| t.id.clone())
                            .collect();
                        let got: BTreeSet<String> = cu["copies"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| {
                                assert_eq!(c["target"], "offsite", "{c}");
                                assert_eq!(c["status"], "copied", "{c}");
                                c["snapshot"].as_str().unwrap().to_string()
                            })
                            .collect();
                        assert_eq!(got, want, "{policy}: caught up");
                        assert!(!want.is_empty());
                        caught_up.extend(got);
                        assert_eq!(e["prune"]["result"], "ok", "{e}");
                    }
                }
            }

            // The model prunes where backupctl must have: after each run that
            // completed on every target.
            if !unplugged {
                for p in m.pols.iter_mut().filter(|p| due.contains(p.name)) {
                    p.prune(&now);
                }
            }
            m.assert_retained(&["nas"], &now.to_string());
            if !unplugged {
                m.assert_retained(&["offsite"], &now.to_string());
            } else {
                assert!(
                    !m.offsite.root().exists(),
                    "nothing written to the mount point"
                );
            }
            if hi == 0 {
                m.assert_retained(&["cloud"], &now.to_string());
            }
            if catch_up_tick {
                // (c) the unplugged days are complete on the disk now: every
                // one that retention keeps is there, with all its lists and
                // the packs they name, rebuilding to the recorded streams.
                for p in &m.pols {
                    for t in p.taken.iter().filter(|t| t.while_unplugged) {
                        if !p.kept.contains(&t.id) {
                            continue;
                        }
                        let root = m.offsite.root();
                        assert!(
                            root.join(format!("{}/snapshots/{}.json", p.name, t.id))
                                .is_file(),
                            "{} missing on offsite",
                            t.id
                        );
                        check_streams(&root, p.name, t);
                    }
                }
                // Nothing left for sync to do.
                let o = m.d.run_at(&now, &["sync", "--json"]);
                expect(&o, 0, "sync after the catch-up");
                for r in json(&o).as_array().unwrap() {
                    assert_eq!(r["result"], "ok", "{r}");
                    assert_eq!(r["copies"], serde_json::json!([]), "{r}");
                }
            }

            // verify --due, on its schedules.
            let want: BTreeSet<String> = m
                .pols
                .iter()
                .map(|p| p.name)
                .filter(|p| verify_expected(p, first, date.weekday(), hour))
                .map(str::to_string)
                .collect();
            let o = m.d.run_at(&now, &["verify", "--due", "--json"]);
            expect(
                &o,
                if unplugged && !want.is_empty() { 3 } else { 0 },
                &format!("{now}: verify --due"),
            );
            let got: BTreeSet<String> = json(&o)
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let want = if unplugged { "partial" } else { "ok" };
                    assert_eq!(r["result"], want, "{now}: {r}");
                    for s in r["snapshots"].as_array().unwrap() {
                        for t in s["targets"].as_array().unwrap() {
                            let ok = t["result"] == "ok"
                                || (unplugged
                                    && t["target"] == "offsite"
                                    && t["result"] == "unreachable");
                            assert!(ok, "{now}: {t}");
                        }
                    }
                    r["policy"].as_str().unwrap().to_string()
                })
                .collect();
            assert_eq!(got, want, "{now}: verify --due acted on");
            for p in &got {
                *verified.entry(m.pol(p).name).or_default() += 1;
            }
            last_now = Some(now);
            tick += 1;
        }
    }
    let loop_secs = loop_started.elapsed().as_secs_f64();
    let now = last_now.unwrap();

    // (a) Every target holds exactly what the retention rules keep, and that
    // is also what the rules give applied once to the whole month.
    m.assert_retained(&["nas", "offsite", "cloud"], "at the end");
    for p in &m.pols {
        assert_eq!(p.kept, p.keep_of_all(&now), "policy {}", p.name);
    }
    let o = m.d.run_at(&now, &["sync", "--json"]);
    expect(&o, 0, "final sync");
    for r in json(&o).as_array().unwrap() {
        assert_eq!(r["copies"], serde_json::json!([]), "{r}");
    }

    // (c) The unplugged days that retention still keeps are on the disk.
    let mut unplugged_kept = 0;
    for p in &m.pols {
        let on = fs_ids(&m.offsite.root(), p.name);
        for t in p.taken.iter().filter(|t| t.while_unplugged) {
            if p.kept.contains(&t.id) {
                assert!(on.contains(&t.id), "{} not on offsite", t.id);
                unplugged_kept += 1;
            }
        }
    }
    assert!(unplugged_kept > 0, "some unplugged days are still kept");

    // (d) Nothing unreferenced anywhere: each target holds exactly the
    // markers, the kept manifests (identical on every target), the extent
    // lists they reference (each hashing to its name) and the packs those
    // lists name (each named by the BLAKE3 of its index); every kept stream
    // rebuilds from the packs to the BLAKE3 its manifest records.
    let checks_started = Instant::now();
    let mut expected_keys = BTreeSet::from([
        "backupctl-target.json".to_string(),
        "RESTORE-README.txt".to_string(),
    ]);
    let nas = m.nas.root();
    for p in &m.pols {
        for id in &p.kept {
            expected_keys.insert(format!("{}/snapshots/{id}.json", p.name));
            expected_keys.insert(format!("{}/snapshots/{id}.sig", p.name));
            // The lists the manifest names now (repacking rewrites them).
            let man = read_json(&nas.join(format!("{}/snapshots/{id}.json", p.name)));
            for pair in source_lists(&man).values() {
                for (list, _) in pair {
                    expected_keys.insert(format!("{}/lists/{list}.extents", p.name));
                    // The list's text is fixed by its name (checked below on
                    // every target); the packs it names, from the first.
                    for pack in common::packs_of_list(&nas, p.name, list) {
                        let rel = pack.strip_prefix(&nas).unwrap();
                        expected_keys.insert(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    assert!(expected_keys.iter().any(|k| k.ends_with(".pack")));
    for t in ["nas", "offsite"] {
        let root = m.root(t);
        assert_eq!(files_under(&root), expected_keys, "files on target {t}");
        let lists: Vec<PathBuf> = expected_keys
            .iter()
            .filter(|k| k.ends_with(".extents"))
            .map(|k| root.join(k))
            .collect();
        for (path, h) in b3sums(&lists) {
            let name = path.file_name().unwrap().to_string_lossy();
            assert_eq!(
                name.strip_suffix(".extents").unwrap(),
                h,
                "{}",
                path.display()
            );
        }
        for k in expected_keys.iter().filter(|k| k.ends_with(".pack")) {
            let data = std::fs::read(root.join(k)).unwrap();
            assert_eq!(pack_name(&data), pack_stem(k), "{t}: {k}");
        }
        for p in &m.pols {
            for id in &p.kept {
                check_streams(&root, p.name, p.get(id));
            }
        }
    }
    let s3_keys: BTreeSet<String> = svc
        .s3
        .list_keys(&m.prefix)
        .into_iter()
        .map(|(k, _)| k.strip_prefix(&m.prefix).unwrap().to_string())
        .collect();
    assert_eq!(s3_keys, expected_keys, "objects on target cloud");
    assert_eq!(svc.s3.multipart_uploads(&m.prefix), Vec::<String>::new());
    for k in &expected_keys {
        let data = svc.s3.get(&format!("{}{k}", m.prefix));
        if let Some(h) = k.rsplit('/').next().unwrap().strip_suffix(".extents") {
            assert_eq!(blake3::hash(&data).to_hex().as_str(), h, "cloud: {k}");
        } else if k.ends_with(".pack") {
            assert_eq!(pack_name(&data), pack_stem(k), "cloud: {k}");
            // The same bytes as the pack whose streams rebuilt above.
            assert!(
                std::fs::read(nas.join(k)).unwrap() == data,
                "pack {k} differs between cloud and nas"
            );
        } else if k.contains("/snapshots/") {
            for t in ["nas", "offsite"] {
                assert!(
                    std::fs::read(m.root(t).join(k)).unwrap() == data,
                    "manifest {k} differs between cloud and {t}"
                );
            }
        }
    }
    // The local state holds no leftovers either.
    let state = m.d.path("var/lib/backupctl");
    let left: Vec<String> = files_under(&state.join("staging"))
        .into_iter()
        .chain(files_under(&state.join("scratch")))
        .collect();
    assert!(left.is_empty(), "left in the state directory: {left:?}");

    // (b) Every kept snapshot restores to what was recorded when it was
    // taken: trees by hash list, databases loaded into a scratch database
    // and compared table by table. The targets take turns.
    let config = m.d.config();
    let mut restores = 0;
    for pi in 0..m.pols.len() {
        let p = &m.pols[pi];
        for (i, id) in p.kept.iter().enumerate() {
            let t = p.order[i % 3];
            let want = p.get(id).state.clone();
            let used = m.restore_and_check(&mut dbs, &config, p.name, Some(id), Some(t), &want);
            assert!(used.values().all(|u| u == t), "{used:?}");
            restores += 1;
        }
    }
    let checks_secs = checks_started.elapsed().as_secs_f64();

    // Disaster recovery on a fresh machine: only the config and the
    // credentials; the old machine's data and state are gone, and so is the
    // first target, entirely.
    let dr_started = Instant::now();
    let fresh = m.d.path("fresh/etc");
    std::fs::create_dir_all(fresh.join("policies")).unwrap();
    let cfg = std::fs::read_to_string(m.d.config())
        .unwrap()
        .replace("../var/lib/backupctl", "../var/lib/backupctl-new");
    std::fs::write(fresh.join("backupctl.toml"), cfg).unwrap();
    for p in ["shop", "wordpress", "app"] {
        std::fs::copy(
            m.d.path(&format!("etc/policies/{p}.toml")),
            fresh.join(format!("policies/{p}.toml")),
        )
        .unwrap();
    }
    std::fs::rename(m.d.path("srv"), m.d.path("srv.old-machine")).unwrap();
    std::fs::rename(m.d.path("var"), m.d.path("var.old-machine")).unwrap();
    std::fs::remove_dir_all(&m.nas.mount).unwrap();
    let fresh_cfg = fresh.join("backupctl.toml");
    let mut dr_from = BTreeMap::new();
    for pi in 0..m.pols.len() {
        let p = &m.pols[pi];
        let last = p.taken.last().unwrap();
        assert!(p.kept.contains(&last.id));
        let want = last.state.clone();
        let used = m.restore_and_check(&mut dbs, &fresh_cfg, p.name, None, None, &want);
        // Failover: the next target in the policy's order.
        for (s, t) in &used {
            assert_eq!(t, p.order[1], "policy {}: source {s}", p.name);
        }
        dr_from.insert(p.name, p.order[1]);
    }
    // The new machine takes over the schedules without running everything
    // again: with no local history, the newest snapshot on the targets is
    // the last success.
    let later = now + chrono::TimeDelta::minutes(10);
    let o =
        m.d.cmd_with(&fresh_cfg)
            .env("BACKUPCTL_NOW", later.to_rfc3339())
            .args(["schedule", "--json"])
            .output()
            .unwrap();
    expect(&o, 0, "schedule on the new machine");
    for s in json(&o).as_array().unwrap() {
        let p = m.pol(s["policy"].as_str().unwrap());
        let run = &s["run"];
        assert_eq!(run["due"], false, "{s}");
        assert_eq!(run["last_success_from"], "targets", "{s}");
        let last = DateTime::parse_from_rfc3339(run["last_success"].as_str().unwrap()).unwrap();
        assert_eq!(last, p.taken.last().unwrap().time, "{s}");
    }
    // And by hand, as RESTORE-README.txt says: sh, tail, head, zstd, tar
    // and b3sum only, from inside <target>/<policy>/.
    {
        let shop = m.pol("shop");
        let last = shop.taken.last().unwrap();
        let root = m.offsite.root();
        let readme = std::fs::read_to_string(root.join("RESTORE-README.txt")).unwrap();
        let slice = r#"while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done \"#;
        for line in [
            slice,
            "< lists/<list>.extents | zstd -dc > /restore/<source>.tar",
            "b3sum /restore/<source>.tar",
            "... | zstd -dc | tar -xpf - -C /restore/<source>",
        ] {
            assert!(readme.contains(line), "RESTORE-README.txt lacks {line:?}");
        }
        let slice = slice.trim_end_matches('\\').trim_end();
        // Step 5's filter, exactly as the README gives it.
        let jq = readme
            .lines()
            .find_map(|l| {
                let from = l.find("jq -r '")?;
                let to = l.rfind('\'')?;
                Some(&l[from..=to])
            })
            .expect("RESTORE-README.txt gives a jq filter for step 5");
        // Step 1: the newest manifest, and the site's stream in it.
        let newest = common::manifests(&root, "shop").pop().unwrap();
        assert_eq!(
            newest.file_stem().unwrap().to_string_lossy(),
            last.id,
            "the newest manifest sorts last"
        );
        let man = read_json(&newest);
        let rec = common::source_record(&man, "site");
        let list = rec["stream"]["list"].as_str().unwrap();
        let blake = rec["stream"]["blake3"].as_str().unwrap();
        assert_eq!(blake, last.streams["site"]);
        let policy_dir = root.join("shop");
        let work = m.d.path("by-hand");
        std::fs::create_dir_all(&work).unwrap();
        // Steps 2 and 3: rebuild the tar stream into a file, b3sum it.
        let tar = work.join("site.tar");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{slice} < lists/\"$1\".extents | zstd -dc > \"$2\""
            ))
            .args(["sh", list, tar.to_str().unwrap()])
            .current_dir(&policy_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "rebuild the stream: {}", text(&o));
        assert_eq!(common::b3sum(&tar), blake, "b3sum of the rebuilt stream");
        // Step 4, as one pipe.
        let out = work.join("site");
        std::fs::create_dir_all(&out).unwrap();
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{slice} < lists/\"$1\".extents | zstd -dc | tar -xpf - -C \"$2\""
            ))
            .args(["sh", list, out.to_str().unwrap()])
            .current_dir(&policy_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "slice | zstd | tar: {}", text(&o));
        assert_hash_list(last.state["site"].tree.as_ref().unwrap(), &out, "by hand");
        // Step 5: every file against the index stream, with jq and b3sum.
        let index = rec["index"]["list"].as_str().unwrap();
        let sums = work.join("site.b3sums");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{slice} < lists/\"$1\".extents | zstd -dc | {jq} > \"$2\""
            ))
            .args(["sh", index, sums.to_str().unwrap()])
            .current_dir(&policy_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "index | jq: {}", text(&o));
        let n = std::fs::read_to_string(&sums).unwrap().lines().count();
        assert_eq!(n as u64, rec["files"].as_u64().unwrap(), "index lines");
        let o = Command::new("b3sum")
            .arg("--check")
            .arg(&sums)
            .current_dir(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "b3sum --check: {}", text(&o));
    }
    let dr_secs = dr_started.elapsed().as_secs_f64();

    let taken: Vec<String> = m
        .pols
        .iter()
        .map(|p| format!("{} {}", p.name, p.taken.len()))
        .collect();
    let kept: Vec<String> = m
        .pols
        .iter()
        .map(|p| format!("{} {}", p.name, p.kept.len()))
        .collect();
    eprintln!(
        "a month of operation: {DAYS} days simulated in {TZ} (DST change included), {tick} ticks \
         ({quiet_ticks} silent under -q), offsite unplugged days {}..{} ({} snapshots caught up); \
         snapshots taken: {}; kept per policy: {}; verify --due runs: {verified:?}; \
         {restores} snapshot restores checked; disaster recovery from {dr_from:?}; \
         wall time {:.0}s (month {:.0}s, end checks {:.0}s, recovery {:.0}s)",
        UNPLUGGED.start,
        UNPLUGGED.end - 1,
        caught_up.len(),
        taken.join(", "),
        kept.join(", "),
        started.elapsed().as_secs_f64(),
        loop_secs,
        checks_secs,
        dr_secs,
    );
}

/// The recorded state of `policy`'s sources at a tick.
fn day_or_app<'a>(
    day: &'a BTreeMap<&str, BTreeMap<String, SourceState>>,
    app: &'a BTreeMap<String, SourceState>,
    policy: &str,
) -> &'a BTreeMap<String, SourceState> {
    if policy == "app" {
        app
    } else {
        &day[policy]
    }
}

/// Per source of a manifest: its stream's and its index's extent lists, each
/// with the BLAKE3 the manifest records for the stream.
fn source_lists(man: &serde_json::Value) -> BTreeMap<String, [(String, String); 2]> {
    man["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let pair = ["stream", "index"].map(|k| {
                (
                    s[k]["list"].as_str().unwrap().to_string(),
                    s[k]["blake3"].as_str().unwrap().to_string(),
                )
            });
            (s["name"].as_str().unwrap().to_string(), pair)
        })
        .collect()
}

/// Snapshot `t` of `policy` is whole on the fs target at `root`: its
/// manifest is there, every extent list it references hashes to its name,
/// and every stream and index rebuilds from the packs (slices, `zstd -dc`)
/// to the BLAKE3 recorded when it was taken.
#[track_caller]
fn check_streams(root: &Path, policy: &str, t: &Taken) {
    assert!(
        root.join(format!("{policy}/snapshots/{}.json", t.id))
            .is_file(),
        "{} missing on {}",
        t.id,
        root.display()
    );
    // The lists as the manifest names them now (a prune may have repacked
    // the snapshot since it was taken: new lists, the same streams).
    let now = source_lists(&read_json(
        &root.join(format!("{policy}/snapshots/{}.json", t.id)),
    ));
    for (source, pair) in &t.lists {
        for ((_, want), (list, now_want)) in pair.iter().zip(&now[source]) {
            assert_eq!(want, now_want, "{}: {source}: the stream changed", t.id);
            assert!(
                list_path(root, policy, list).is_file(),
                "{}: list {list} of {source} missing on {}",
                t.id,
                root.display()
            );
            let data = common::stream_from_list(root, policy, list);
            assert_eq!(
                blake3::hash(&data).to_hex().as_str(),
                want,
                "{}: a stream of {source} on {} does not rebuild",
                t.id,
                root.display()
            );
        }
        assert_eq!(pair[0].1, t.streams[source]);
    }
}

/// The name a pack's bytes give it: the BLAKE3 of its index payload (the
/// bytes before the 12-byte tail "u32 LE payload length | BCPKEND2").
fn pack_name(data: &[u8]) -> String {
    let n = data.len();
    assert!(n >= 12 && &data[n - 8..] == b"BCPKEND2", "not a pack");
    let plen = u32::from_le_bytes(data[n - 12..n - 8].try_into().unwrap()) as usize;
    let payload = &data[n - 12 - plen..n - 12];
    assert!(payload.starts_with(b"BCPKIDX2"), "not a pack index");
    blake3::hash(payload).to_hex().to_string()
}

/// The name part of a pack key `<policy>/packs/<hh>/<name>.pack`.
fn pack_stem(key: &str) -> &str {
    let name = key
        .rsplit('/')
        .next()
        .unwrap()
        .strip_suffix(".pack")
        .unwrap();
    assert!(
        key.ends_with(&format!("packs/{}/{name}.pack", &name[..2])),
        "{key}"
    );
    name
}
