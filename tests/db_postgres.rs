//! PostgreSQL sources against a real server (scripts/services/postgres.sh),
//! driving the backupctl binary; results checked with independent psql /
//! pg_restore calls.

use crate::db_common;
use db_common::*;

/// Creates a database with a few kinds of objects and data.
fn make_db(pg: &DbServer, rows: u32) -> String {
    let db = format!("t_{}", db_hex(10));
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
             CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers(id), note text, amount numeric(10,2), data bytea);
             CREATE SCHEMA \"Odd Schema\";
             CREATE TABLE \"Odd Schema\".\"Mixed Case\" (k text);
             CREATE TABLE empty_table (x int);
             CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
             INSERT INTO customers (name) SELECT 'Kunde ' || i || ' Grüße ''quoted''' FROM generate_series(1, 50) i;
             INSERT INTO orders (customer, note, amount, data)
               SELECT 1 + i % 50, repeat('note ' || i || E'\\ttab\\nnewline ', 3), (i * 1.37)::numeric(10,2), decode(md5(i::text), 'hex')
               FROM generate_series(1, {rows}) i;
             INSERT INTO \"Odd Schema\".\"Mixed Case\" VALUES ('a'), ('b');"
        ),
    );
    db
}

/// Independent fingerprint of the data.
fn fingerprint(pg: &DbServer, db: &str) -> String {
    pg.psql(
        db,
        "SELECT (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o) || ' ' ||
                (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c) || ' ' ||
                (SELECT string_agg(k, ',' ORDER BY k) FROM \"Odd Schema\".\"Mixed Case\") || ' ' ||
                (SELECT count(*) FROM big_orders) || ' ' || (SELECT count(*) FROM empty_table)",
    )
}

fn source(pg: &DbServer, db: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"pgdb\"\ntype = \"postgres\"\ndatabase = \"{db}\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"TEST_PG_PW\"\n{extra}\n",
        pg.host, pg.port, pg.user
    )
}

/// Verify runs one at a time in this test binary, so we can check that the
/// scratch databases it creates are always dropped (`drill` tests hold it too).
pub(crate) static VERIFY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn verify(s: &DbSetup, pg: &DbServer) -> std::process::Output {
    verify_args(s, pg, &["verify"])
}

fn verify_args(s: &DbSetup, pg: &DbServer, args: &[&str]) -> std::process::Output {
    let _g = VERIFY.lock().unwrap_or_else(|e| e.into_inner());
    let q = "SELECT datname FROM pg_database WHERE datname LIKE 'backupctl\\_verify\\_%'";
    let list = || pg.psql("postgres", q).lines().map(str::to_string).collect();
    let before = list();
    let o = s.run(args, &[("TEST_PG_PW", pg.password.as_str())]);
    assert_scratch_dropped(&before, list, &text(&o));
    o
}

fn drop_db(pg: &DbServer, db: &str) {
    pg.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[test]
fn pg_backup_verify_restore_into_database_round_trip() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 3000);
    let before = fingerprint(&pg, &db);
    let s = DbSetup::new(&source(&pg, &db, ""), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];

    let o = s.run(&["run", "--json"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains(&pg.password), "password leaked");
    assert_eq!(s.manifests("a").len(), 1);

    // The manifest records versions and row counts at dump time.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.manifests("b")[0]).unwrap()).unwrap();
    let facts = &m["sources"][0]["database"];
    assert!(
        facts["dump_tool"].as_str().unwrap().contains("pg_dump"),
        "{facts}"
    );
    assert!(
        facts["server_version"].as_str().unwrap().starts_with("15"),
        "{facts}"
    );
    let d0 = &facts["databases"][0];
    assert_eq!(d0["name"], db.as_str());
    assert_eq!(d0["entries"][0], format!("{db}.pgdump"));
    assert_eq!(d0["tables"]["public.orders"], 3000);
    assert_eq!(d0["tables"]["public.customers"], 50);
    assert_eq!(d0["tables"]["public.empty_table"], 0);
    assert_eq!(d0["tables"]["\"Odd Schema\".\"Mixed Case\""], 2);

    // verify loads the dump into a scratch database, which is dropped again.
    let o = verify(&s, &pg);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The generic restore writes the dump file; pg_restore reads it.
    let out = s.path().join("out");
    let o = s.run(&["restore", "db", "--to", out.to_str().unwrap()], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dump = out.join("pgdb").join(format!("{db}.pgdump"));
    let l = std::process::Command::new("pg_restore")
        .arg("-l")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(l.status.success());
    assert!(String::from_utf8_lossy(&l.stdout).contains("TABLE DATA public orders"));

    // Wreck the database: the classic bad update.
    pg.psql(&db, "DELETE FROM orders WHERE id % 3 = 0; DROP TABLE empty_table; UPDATE customers SET name = 'x'");
    assert_ne!(fingerprint_partial(&pg, &db), before);

    // Refused without --force (exit 2), nothing changed.
    let o = s.run(
        &["restore", "db", "--source", "pgdb", "--into-database", &db],
        &pw,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not empty"), "{}", text(&o));
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM orders"), "2000");

    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            &db,
            "--force",
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fingerprint(&pg, &db), before);

    // Into a new database name as well.
    let other = format!("{db}_copy");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            &other,
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fingerprint(&pg, &other), before);
    drop_db(&pg, &other);
    drop_db(&pg, &db);
}

fn fingerprint_partial(pg: &DbServer, db: &str) -> String {
    pg.psql(
        db,
        "SELECT count(*) || ' ' || (SELECT min(name) FROM customers) FROM orders",
    )
}

#[test]
fn pg_plain_format_two_databases_and_split_parts() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let a = make_db(&pg, 10);
    // A database whose dump exceeds one 32 MiB part.
    let b = format!("t_{}", db_hex(10));
    pg.psql("postgres", &format!("CREATE DATABASE {b}"));
    pg.psql(
        &b,
        "CREATE TABLE blobs (id int PRIMARY KEY, payload text);
         INSERT INTO blobs SELECT i, string_agg(md5(i::text || j::text), '') FROM generate_series(1, 4500) i, generate_series(1, 250) j GROUP BY i;",
    );
    let b_sum = pg.psql(
        &b,
        "SELECT md5(string_agg(payload, '' ORDER BY id)) FROM blobs",
    );
    let src = format!(
        "[[sources]]\nname = \"pgdb\"\ntype = \"postgres\"\ndatabases = [\"{a}\", \"{b}\"]\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"TEST_PG_PW\"\nformat = \"plain\"\n",
        pg.host, pg.port, pg.user
    );
    let s = DbSetup::new(&src, "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    let o = s.run(&["run"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.manifests("a")[0]).unwrap()).unwrap();
    let dbs = &m["sources"][0]["database"]["databases"];
    assert_eq!(dbs[0]["entries"][0], format!("{a}.sql"));
    let parts = dbs[1]["entries"].as_array().unwrap();
    assert!(parts.len() >= 2, "expected a split dump: {parts:?}");
    assert_eq!(parts[0], format!("{b}.sql.part-000001"));

    // pg_dump wrote its own \restrict guard (with backupctl's derived key)
    // into the plain dumps; they load under backupctl's outer \restrict.
    let out = s.path().join("out");
    let o = s.run(&["restore", "db", "--to", out.to_str().unwrap()], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plain = std::fs::read_to_string(out.join("pgdb").join(format!("{a}.sql"))).unwrap();
    assert!(
        plain.lines().any(|l| l.starts_with("\\restrict "))
            && plain.lines().any(|l| l.starts_with("\\unrestrict ")),
        "{}",
        &plain[..plain.len().min(2000)]
    );

    let o = verify(&s, &pg);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    pg.psql(&b, "TRUNCATE blobs");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            &b,
            "--force",
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        pg.psql(
            &b,
            "SELECT md5(string_agg(payload, '' ORDER BY id)) FROM blobs"
        ),
        b_sum
    );
    // Two databases and no --database: the one named like the target is used.
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            "nonexistent_name",
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--database"), "{}", text(&o));
    drop_db(&pg, &a);
    drop_db(&pg, &b);
}

#[test]
fn pg_dump_that_does_not_load_fails_verify_naming_the_error() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 5);
    let role = format!("r_{}", db_hex(8));
    pg.psql("postgres", &format!("CREATE ROLE {role}"));
    pg.psql(&db, &format!("GRANT SELECT ON orders TO {role}"));
    let s = DbSetup::new(&source(&pg, &db, "format = \"plain\""), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    let o = s.run(&["run"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The role disappears from the server: the plain dump's GRANT cannot load.
    pg.psql(&db, &format!("DROP OWNED BY {role}"));
    pg.psql("postgres", &format!("DROP ROLE {role}"));
    let o = verify(&s, &pg);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("source pgdb"), "{t}");
    assert!(t.contains("does not load"), "{t}");
    assert!(
        t.contains(&format!("role \"{role}\" does not exist")),
        "{t}"
    );
    drop_db(&pg, &db);
}

#[test]
fn pg_corrupted_target_is_reported_and_restore_fails_over() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 500);
    let before = fingerprint(&pg, &db);
    let s = DbSetup::new(&source(&pg, &db, ""), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    let o = s.run(&["run"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    s.damage_stream("a", "pgdb");

    let o = verify_args(&s, &pg, &["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let targets = &v[0]["snapshots"][0]["targets"];
    assert_eq!(targets[0]["target"], "a");
    assert_eq!(targets[0]["result"], "failed");
    assert_eq!(targets[1]["target"], "b");
    assert_eq!(targets[1]["result"], "ok", "{v}");

    pg.psql(&db, "DROP TABLE orders CASCADE");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            &db,
            "--force",
            "--json",
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["target"], "b", "{r}");
    assert_eq!(r["skipped_targets"][0][0], "a", "{r}");
    assert_eq!(fingerprint(&pg, &db), before);
    drop_db(&pg, &db);
}

fn assert_no_snapshot(s: &DbSetup, o: &std::process::Output) {
    assert!(
        s.manifests("a").is_empty() && s.manifests("b").is_empty(),
        "{}",
        text(o)
    );
}

#[test]
fn pg_wrong_password_fails_clearly_and_stores_nothing() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 5);
    let s = DbSetup::new(&source(&pg, &db, ""), "");
    let wrong = "wrong-Secret-Password-123";
    let o = s.run(&["run"], &[("TEST_PG_PW", wrong)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("password authentication failed"), "{t}");
    assert!(!t.contains(wrong), "password leaked: {t}");
    assert_no_snapshot(&s, &o);

    // The variable named by password_env is not set (the command gets only
    // what a test sets): a usage error.
    let o = s.cmd().arg("run").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TEST_PG_PW"), "{}", text(&o));
    assert_no_snapshot(&s, &o);
    drop_db(&pg, &db);
}

#[test]
fn pg_server_down_or_database_missing_fails() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = DbServer { port, ..pg.clone() };
    let s = DbSetup::new(&source(&down, "shop", ""), "");
    let o = s.run(&["run"], &[("TEST_PG_PW", pg.password.as_str())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Connection refused"), "{}", text(&o));
    assert_no_snapshot(&s, &o);

    let missing = format!("missing_{}", db_hex(8));
    let s = DbSetup::new(&source(&pg, &missing, ""), "");
    let o = s.run(&["run"], &[("TEST_PG_PW", pg.password.as_str())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("database \"{missing}\" does not exist")),
        "{}",
        text(&o)
    );
    assert_no_snapshot(&s, &o);
}

#[test]
fn pg_dump_killed_mid_dump_stores_no_snapshot() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 20000);
    let s = DbSetup::new(&source(&pg, &db, "format = \"plain\""), "");
    // A pg_dump first on PATH that answers --version and --help, but streams
    // only part of the real dump, then dies.
    let bin = s.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = which("pg_dump");
    let wrapper = bin.join("pg_dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version|--help) exec {real} \"$1\";; esac\n{real} \"$@\" | head -c 200000\nkill -9 $$\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = s.run(
        &["run"],
        &[
            ("TEST_PG_PW", pg.password.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("pg_dump of database"), "{t}");
    assert!(t.contains("SIGKILL") || t.contains("signal"), "{t}");
    assert!(t.contains("no snapshot was recorded"), "{t}");
    assert_no_snapshot(&s, &o);
    let o = s.run(&["list", "db", "--json"], &[]);
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l[0]["snapshots"].as_array().map(Vec::len), Some(0), "{l}");
    drop_db(&pg, &db);
}

#[test]
fn pg_missing_client_tool_names_the_package() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let s = DbSetup::new(&source(&pg, "whatever", ""), "");
    let empty = s.path().join("emptybin");
    std::fs::create_dir_all(&empty).unwrap();
    let o = s.run(
        &["run"],
        &[("TEST_PG_PW", "x"), ("PATH", empty.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("postgresql-client"), "{}", text(&o));
    assert_no_snapshot(&s, &o);
}

fn which(tool: &str) -> String {
    let o = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn pg_dedupe(format: &str) {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 300);
    // A sequence, a function and a large object as well.
    pg.psql(
        &db,
        "CREATE SEQUENCE counter START 40; SELECT nextval('counter');
         CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
         SELECT lo_from_bytea(0, 'large object');",
    );
    // A large table of poorly compressible text, so that the dump is cut
    // into many chunks and storing it again would be visible in bytes.
    pg.psql(
        &db,
        "CREATE TABLE bulk (id int PRIMARY KEY, h text);
         INSERT INTO bulk SELECT i, encode(sha512(i::text::bytea), 'hex')
             || encode(sha512((i + 1000000)::text::bytea), 'hex')
           FROM generate_series(1, 24000) i;",
    );
    let s = DbSetup::new(&source(&pg, &db, &format!("format = \"{format}\"")), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    s.assert_dedupes("pgdb", &pw, || {
        pg.psql(&db, "UPDATE bulk SET h = 'changed' WHERE id = 12000");
    });
    drop_db(&pg, &db);
}

#[test]
fn pg_custom_unchanged_database_gives_identical_archives() {
    pg_dedupe("custom");
}

#[test]
fn pg_plain_unchanged_database_gives_identical_archives() {
    pg_dedupe("plain");
}

#[test]
fn pg_normalised_custom_dump_restores_with_pg_restore_and_into_database() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let db = make_db(&pg, 2000);
    let before = fingerprint(&pg, &db);
    let s = DbSetup::new(&source(&pg, &db, ""), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    s.run_at("2026-03-01T02:30:00+00:00", &pw);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.manifests("a")[0]).unwrap()).unwrap();
    assert!(
        m["sources"][0]["warnings"]
            .as_array()
            .is_none_or(|w| w.is_empty()),
        "{m}"
    );

    let out = s.path().join("out");
    let o = s.run(&["restore", "db", "--to", out.to_str().unwrap()], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dump = out.join("pgdb").join(format!("{db}.pgdump"));
    // pg_restore reads the rewritten header: the fixed creation time, and no
    // compression inside the dump.
    let l = std::process::Command::new("pg_restore")
        .arg("-l")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(l.status.success(), "{}", String::from_utf8_lossy(&l.stderr));
    let listing = String::from_utf8_lossy(&l.stdout);
    assert!(
        listing.contains("Archive created at 2000-01-01 00:00:00"),
        "{listing}"
    );
    assert!(
        listing.contains("Compression: 0") || listing.contains("Compression: none"),
        "{listing}"
    );
    assert!(listing.contains(&format!("dbname: {db}")), "{listing}");

    // Loaded by pg_restore itself into a fresh database.
    let by_pg_restore = format!("{db}_pgr");
    pg.psql("postgres", &format!("CREATE DATABASE {by_pg_restore}"));
    let r = std::process::Command::new("pg_restore")
        .args(["--exit-on-error", "--single-transaction", "-d"])
        .arg(&by_pg_restore)
        .arg(&dump)
        .env("PGHOST", &pg.host)
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", &pg.user)
        .env("PGPASSWORD", &pg.password)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(fingerprint(&pg, &by_pg_restore), before);

    // And by backupctl restore --into-database.
    let by_backupctl = format!("{db}_cli");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--into-database",
            &by_backupctl,
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fingerprint(&pg, &by_backupctl), before);
    drop_db(&pg, &by_pg_restore);
    drop_db(&pg, &by_backupctl);
    drop_db(&pg, &db);
}

// ---------------------------------------------------------------------------
// Hostile snapshots (issue 9): a dump planted on a target never commands
// the host, in verify or in restore --into-database.
// ---------------------------------------------------------------------------

/// A plain dump: a table, then `attack`, then a row.
fn planted_plain(attack: &str) -> Vec<u8> {
    format!(
        "SET client_min_messages = warning;\nCREATE TABLE public.t (x int);\n{attack}\nINSERT INTO public.t VALUES (1);\n"
    )
    .into_bytes()
}

/// Plant one snapshot of source `pgdb` (type postgres, recorded `format`)
/// on both targets: one database per dump.
fn plant_pg(s: &DbSetup, format: &str, dumps: &[(&str, Vec<u8>)]) -> String {
    let ext = if format == "plain" { "sql" } else { "pgdump" };
    let entries: Vec<String> = dumps.iter().map(|(d, _)| format!("{d}.{ext}")).collect();
    let facts_in: Vec<(&str, &str, &[u8])> = dumps
        .iter()
        .zip(&entries)
        .map(|((d, data), e)| (*d, e.as_str(), data.as_slice()))
        .collect();
    let facts = planted_facts(
        "postgres",
        format,
        &facts_in,
        serde_json::json!({"public.t": 1}),
    );
    let files: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .zip(dumps)
        .map(|(e, (_, data))| (e.as_str(), data.clone()))
        .collect();
    s.plant(&["a", "b"], "pgdb", "postgres", facts, &files)
}

fn restore_into(s: &DbSetup, pg: &DbServer, db: &str, into: &str) -> std::process::Output {
    s.run(
        &[
            "restore",
            "db",
            "--source",
            "pgdb",
            "--database",
            db,
            "--into-database",
            into,
        ],
        &[("TEST_PG_PW", pg.password.as_str())],
    )
}

fn db_exists(pg: &DbServer, db: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) != "0"
}

#[test]
fn pg_planted_plain_dump_cannot_run_commands_in_verify_or_restore() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let m = Markers::create();
    let guess = db_hex(64);
    let evil_key = db_hex(64);
    let attacks: Vec<(&str, String)> = vec![
        ("shell", format!("\\! touch {}", m.path("m1"))),
        (
            "unrestrict_guess",
            format!("\\unrestrict {guess}\n\\! touch {}", m.path("m2")),
        ),
        (
            // The dump's own guard pair (blanked on load), then an escape:
            // still under backupctl's key.
            "own_guard_pair",
            format!(
                "\\restrict {evil_key}\nSELECT 1;\n\\unrestrict {evil_key}\n\\! touch {}",
                m.path("m2b")
            ),
        ),
        (
            "output_pipe",
            format!("\\o |touch {}\nSELECT 1;", m.path("m3")),
        ),
        (
            "copy_program",
            format!("\\copy (select 1) to program 'touch {}'", m.path("m4")),
        ),
        (
            "gexec_pipe",
            format!("SELECT 1 \\g |touch {}", m.path("m5")),
        ),
        (
            "set_then_shell",
            format!("\\set ON_ERROR_STOP 0\n\\! touch {}", m.path("m6")),
        ),
    ];
    let dumps: Vec<(&str, Vec<u8>)> = attacks
        .iter()
        .map(|(d, a)| (*d, planted_plain(a)))
        .collect();
    let s = DbSetup::new(&source(&pg, "shop", "format = \"plain\""), "");
    let id = plant_pg(&s, "plain", &dumps);

    let o = verify_args(&s, &pg, &["verify", "--json"]);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let snap = &v[0]["snapshots"][0];
    assert_eq!(snap["id"], id.as_str(), "{v}");
    for (i, name) in ["a", "b"].iter().enumerate() {
        let tc = &snap["targets"][i];
        assert_eq!(tc["target"], *name, "{v}");
        assert_eq!(tc["result"], "failed", "{v}");
        let ac = &tc["archives"][0];
        assert_eq!(ac["source"], "pgdb", "{v}");
        let problems: Vec<&str> = ac["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        for (d, _) in &attacks {
            assert!(
                problems.iter().any(|p| p.contains(&format!(
                    "source pgdb: database {d}: the dump does not load"
                ))),
                "{d}: {problems:?}"
            );
        }
    }
    assert!(t.contains("backslash commands are restricted"), "{t}");
    assert!(t.contains("target=a") && t.contains("source=pgdb"), "{t}");

    for (d, _) in &attacks {
        let into = format!("planted_{}", db_hex(8));
        let o = restore_into(&s, &pg, d, &into);
        let t = text(&o);
        m.assert_none(&t);
        assert_eq!(o.status.code(), Some(1), "{d}: {t}");
        assert!(t.contains("source pgdb"), "{t}");
        assert!(t.contains("from target a"), "{t}");
        assert!(t.contains("does not load"), "{t}");
        assert!(!db_exists(&pg, &into), "{d}: {into} was created");
    }
    m.assert_none("at the end");
}

#[test]
fn pg_manifest_that_disagrees_with_the_configuration_is_not_followed() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let m = Markers::create();
    let dump = planted_plain(&format!("\\! touch {}", m.path("m1")));
    // Configured as custom (the default); the manifest claims plain.
    let s = DbSetup::new(&source(&pg, "shop", ""), "");
    plant_pg(&s, "plain", &[("shop", dump.clone())]);
    let o = verify(&s, &pg);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("source pgdb: not loaded"), "{t}");
    assert!(t.contains("\"plain\" format"), "{t}");
    assert!(t.contains("target=a"), "{t}");
    let o = restore_into(&s, &pg, "shop", "planted_mismatch");
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("source pgdb") && t.contains("not loaded"), "{t}");
    assert!(
        t.contains("on target a, b") || t.contains("on target b, a"),
        "{t}"
    );
    assert!(!db_exists(&pg, "planted_mismatch"));

    // Another engine in the facts of a postgres record.
    let s = DbSetup::new(&source(&pg, "shop", "format = \"plain\""), "");
    let facts = planted_facts(
        "mysql",
        "sql",
        &[("shop", "shop.sql", &dump)],
        serde_json::json!({"public.t": 1}),
    );
    s.plant(
        &["a", "b"],
        "pgdb",
        "postgres",
        facts,
        &[("shop.sql", dump.clone())],
    );
    let o = verify(&s, &pg);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("records a mysql dump"), "{t}");

    // A source that is no longer configured: hashes checked, nothing loaded.
    let s = DbSetup::new(
        &source(&pg, "shop", "format = \"plain\"").replace("pgdb", "other"),
        "",
    );
    plant_pg(&s, "plain", &[("shop", dump.clone())]);
    let o = verify(&s, &pg);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("source pgdb: postgres dump not loaded: source not in the configuration"),
        "{t}"
    );
    m.assert_none("at the end");
}

#[test]
fn pg_plain_dumps_are_not_loaded_by_a_psql_without_restrict() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let m = Markers::create();
    let s = DbSetup::new(&source(&pg, "shop", "format = \"plain\""), "");
    plant_pg(
        &s,
        "plain",
        &[(
            "shop",
            planted_plain(&format!("\\! touch {}", m.path("m1"))),
        )],
    );
    // A psql that answers like one from before the August 2025 releases.
    let bin = s.path().join("oldbin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("psql");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --help=commands) {0} --help=commands | grep -v restrict; exit 0;; --version) echo 'psql (PostgreSQL) 15.13'; exit 0;; esac\nexec {0} \"$@\"\n",
            which("psql")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = s.run(
        &["verify"],
        &[
            ("TEST_PG_PW", pg.password.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("source pgdb: not loaded: psql (PostgreSQL) 15.13 has no \\restrict"),
        "{t}"
    );
    assert!(t.contains("15.14"), "{t}");
    let mut c = s.cmd();
    c.args([
        "restore",
        "db",
        "--source",
        "pgdb",
        "--into-database",
        "planted_old_psql",
    ])
    .env("TEST_PG_PW", &pg.password)
    .env("PATH", &path);
    let o = c.output().unwrap();
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not loaded") && t.contains("from target a"),
        "{t}"
    );
    assert!(!db_exists(&pg, "planted_old_psql"));
}

#[test]
fn pg_verify_as_a_role_without_superuser_rights() {
    let Some(pg) = DbServer::postgres() else {
        return;
    };
    let role = format!("verify_{}", db_hex(8));
    let role_pw = db_hex(24);
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{role_pw}'"),
    );
    let verify_toml = format!(
        "[verify]\npostgres = {{ host = \"{}\", port = {}, user = \"{role}\", password_env = \"TEST_PG_VERIFY_PW\" }}\n",
        pg.host, pg.port
    );
    let env = [
        ("TEST_PG_PW", pg.password.as_str()),
        ("TEST_PG_VERIFY_PW", role_pw.as_str()),
    ];

    // A genuine custom-format dump verifies as that role (loaded with
    // --no-owner --no-privileges into a scratch database it owns), with no
    // warning about superusers.
    let db = make_db(&pg, 50);
    let s = DbSetup::new(&source(&pg, &db, ""), &verify_toml);
    let o = s.run(&["run"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = s.run(&["verify"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("superuser"), "{}", text(&o));
    // As the superuser, verify warns.
    let s2 = DbSetup::new(&source(&pg, &db, ""), "");
    let o = s2.run(&["run"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = s2.run(&["verify"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("as a superuser"), "{}", text(&o));

    // Server-side COPY ... TO PROGRAM in a planted dump: refused to a role
    // that is not a superuser (the marker would be made by the server's OS
    // user, in a world-writable directory).
    let m = Markers::create();
    let s = DbSetup::new(&source(&pg, "shop", "format = \"plain\""), &verify_toml);
    plant_pg(
        &s,
        "plain",
        &[(
            "shop",
            planted_plain(&format!(
                "COPY (SELECT 1) TO PROGRAM 'touch {}';",
                m.path("m1")
            )),
        )],
    );
    let o = s.run(&["verify"], &env);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("pg_execute_server_program"), "{t}");
    let left = pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = '{role}'"),
    );
    assert_eq!(left, "0", "scratch database left behind");
    drop_db(&pg, &db);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}
