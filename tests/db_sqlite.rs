//! SQLite sources: the online backup while an application writes; the
//! restored copy is checked with the system `sqlite3` CLI (independent of
//! backupctl's bundled SQLite).

use crate::db_common;
use db_common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn sqlite3(file: &std::path::Path, sql: &str) -> String {
    let o = std::process::Command::new("sqlite3")
        .arg(file)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI (Debian package sqlite3)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Transfers money between accounts; each transaction also appends to a
/// ledger and bumps a counter, so a consistent state has
/// sum(balance) = 100000 and count(ledger) = meta.n.
fn writer(path: std::path::PathBuf, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let tx = c.transaction().unwrap();
        let (from, to, amount) = ((i % 10) as i64, ((i * 7 + 3) % 10) as i64, (i % 13) as i64);
        tx.execute(
            "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
            (amount, from),
        )
        .unwrap();
        tx.execute(
            "INSERT INTO ledger (src, dst, amount, memo) VALUES (?1, ?2, ?3, hex(randomblob(64)))",
            (from, to, amount),
        )
        .unwrap();
        tx.execute(
            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
            (amount, to),
        )
        .unwrap();
        tx.execute("UPDATE meta SET n = n + 1", ()).unwrap();
        tx.commit().unwrap();
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn backup_while_writing(journal_mode: &str) {
    let s0 = tempfile::tempdir().unwrap();
    let db = s0.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = {journal_mode};
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
             CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INT, dst INT, amount INT, memo TEXT);
             CREATE TABLE meta (n INTEGER NOT NULL);
             CREATE TABLE filler (id INTEGER PRIMARY KEY, blob BLOB);
             INSERT INTO meta VALUES (0);
             WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < 9)
               INSERT INTO accounts SELECT x, 10000 FROM i;
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 20000)
               INSERT INTO filler SELECT x, randomblob(1000) FROM i;"
        ))
        .unwrap();
    }
    let src = format!(
        "[[sources]]\nname = \"app\"\ntype = \"sqlite\"\npath = \"{}\"\n",
        db.display()
    );
    let s = DbSetup::new(&src, "");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = {
        let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || writer(db, stop, done))
    };
    while done.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let before = done.load(Ordering::Relaxed);
    let o = s.run(&["run"], &[]);
    let after = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        after > before,
        "the writer made no progress during the backup"
    );

    let out = s.path().join("out");
    let o = s.run(&["restore", "db", "--to", out.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let copy = out.join("app/app.db");
    assert_eq!(sqlite3(&copy, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        sqlite3(&copy, "SELECT sum(balance) FROM accounts"),
        "100000"
    );
    assert_eq!(
        sqlite3(
            &copy,
            "SELECT (SELECT count(*) FROM ledger) = (SELECT n FROM meta)"
        ),
        "1"
    );
    let n: u64 = sqlite3(&copy, "SELECT n FROM meta").parse().unwrap();
    assert!(
        n >= before && n <= after,
        "copy state {n} outside [{before}, {after}]"
    );
    // The recorded row count is that of the copy.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.manifests("a")[0]).unwrap()).unwrap();
    assert_eq!(
        m["sources"][0]["database"]["databases"][0]["tables"]["ledger"], n,
        "{m}"
    );
    assert_eq!(
        m["sources"][0]["database"]["databases"][0]["tables"]["filler"],
        20000
    );

    let o = s.run(&["verify"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A corrupted archive on one target is reported there only.
    s.damage_stream("a", "app");
    let o = s.run(&["verify", "--json"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["snapshots"][0]["targets"][0]["result"], "failed");
    assert_eq!(v[0]["snapshots"][0]["targets"][1]["result"], "ok");
}

#[test]
fn sqlite_backup_while_writing_rollback_journal() {
    backup_while_writing("delete");
}

#[test]
fn sqlite_backup_while_writing_wal() {
    backup_while_writing("wal");
}

fn sqlite_source(db: &std::path::Path) -> String {
    format!(
        "[[sources]]\nname = \"app\"\ntype = \"sqlite\"\npath = \"{}\"\n",
        db.display()
    )
}

fn sqlite_dedupe(journal_mode: &str) {
    let s0 = tempfile::tempdir().unwrap();
    let db = s0.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = {journal_mode};
             CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, blob BLOB);
             CREATE INDEX items_name ON items (name);
             WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 25000)
               INSERT INTO items SELECT x, 'item ' || x, randomblob(200) FROM i;"
        ))
        .unwrap();
    }
    let s = DbSetup::new(&sqlite_source(&db), "");
    s.assert_dedupes("app", &[], || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("UPDATE items SET name = 'changed' WHERE id = 12000", ())
            .unwrap();
    });
}

#[test]
fn sqlite_unchanged_database_gives_identical_archives_rollback_journal() {
    sqlite_dedupe("delete");
}

#[test]
fn sqlite_unchanged_database_gives_identical_archives_wal() {
    sqlite_dedupe("wal");
}

#[test]
fn sqlite_restored_copy_keeps_the_source_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let s0 = tempfile::tempdir().unwrap();
    let db = s0.path().join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    let s = DbSetup::new(&sqlite_source(&db), "");
    for (i, mode) in [0o640u32, 0o604].into_iter().enumerate() {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).unwrap();
        s.run_at(&format!("2026-03-0{}T02:30:00+00:00", i + 1), &[]);
        let out = s.path().join(format!("out-{i}"));
        let o = s.run(&["restore", "db", "--to", out.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let copy = out.join("app/app.db");
        let got = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "restored mode {got:o}, source {mode:o}");
        assert_eq!(sqlite3(&copy, "SELECT count(*) FROM t"), "2");
    }
}

// ---------------------------------------------------------------------------
// Hostile snapshots (issue 9).
// ---------------------------------------------------------------------------

fn sqlite_facts(entry: &str, data: &[u8], tables: serde_json::Value) -> serde_json::Value {
    planted_facts("sqlite", "sqlite", &[("main", entry, data)], tables)
}

#[test]
fn sqlite_planted_files_are_opened_only_inside_the_scratch_area_and_as_data() {
    let s0 = tempfile::tempdir().unwrap();
    let db = s0.path().join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE t (x); INSERT INTO t VALUES (1);
             CREATE VIEW forever AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT n FROM c;",
        )
        .unwrap();
    let data = std::fs::read(&db).unwrap();

    // The manifest points the check at a file outside the archive: a real
    // database of this host.
    let outside = s0.path().join("outside.db");
    std::fs::copy(&db, &outside).unwrap();
    let s = DbSetup::new(&sqlite_source(&db), "");
    let facts = sqlite_facts(
        outside.to_str().unwrap(),
        &data,
        serde_json::json!({"t": 1}),
    );
    s.plant(
        &["a", "b"],
        "app",
        "sqlite",
        facts,
        &[("app.db", data.clone())],
    );
    let o = s.run(&["verify"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not opened: the manifest names a file outside the archive"),
        "{t}"
    );
    assert!(t.contains("target=a") && t.contains("source=app"), "{t}");
    assert_eq!(std::fs::read(&outside).unwrap(), data);

    // A view that never ends, named in the manifest as a table: not run
    // (only real tables are counted), so verify ends, reporting it missing.
    let s = DbSetup::new(&sqlite_source(&db), "");
    let facts = sqlite_facts("app.db", &data, serde_json::json!({"t": 1, "forever": 1}));
    s.plant(
        &["a", "b"],
        "app",
        "sqlite",
        facts,
        &[("app.db", data.clone())],
    );
    let o = s.run(&["verify"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("table forever is missing"), "{t}");

    // Facts of another engine for a sqlite source; a source not configured.
    let s = DbSetup::new(&sqlite_source(&db), "");
    let mut facts = sqlite_facts("app.db", &data, serde_json::json!({"t": 1}));
    facts["format"] = "plain".into();
    s.plant(
        &["a", "b"],
        "app",
        "sqlite",
        facts,
        &[("app.db", data.clone())],
    );
    let o = s.run(&["verify"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("source app: not loaded"), "{t}");
    let s = DbSetup::new(&sqlite_source(&db).replace("\"app\"", "\"other\""), "");
    let facts = sqlite_facts("app.db", &data, serde_json::json!({"t": 1}));
    s.plant(&["a", "b"], "app", "sqlite", facts, &[("app.db", data)]);
    let o = s.run(&["verify"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("source app: sqlite dump not loaded: source not in the configuration"),
        "{t}"
    );
}
