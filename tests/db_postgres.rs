//! PostgreSQL sources against a real server (scripts/services/postgres.sh),
//! driving the backupctl binary; results checked with independent psql /
//! pg_restore calls.

mod db_common;
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
/// scratch databases it creates are always dropped.
static VERIFY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn verify(s: &DbSetup, pg: &DbServer) -> std::process::Output {
    verify_args(s, pg, &["verify"])
}

fn verify_args(s: &DbSetup, pg: &DbServer, args: &[&str]) -> std::process::Output {
    let _g = VERIFY.lock().unwrap_or_else(|e| e.into_inner());
    let q = "SELECT count(*) FROM pg_database WHERE datname LIKE 'backupctl\\_verify\\_%'";
    let before = pg.psql("postgres", q);
    let o = s.run(args, &[("TEST_PG_PW", pg.password.as_str())]);
    assert_eq!(
        pg.psql("postgres", q),
        before,
        "scratch database left behind: {}",
        text(&o)
    );
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
    flip_bytes(&s.archives("a")[0]);

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

    // The variable named by password_env is not set: a usage error.
    let mut c = s.cmd();
    c.arg("run").env_remove("TEST_PG_PW");
    let o = c.output().unwrap();
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
    let s = DbSetup::new(&source(&pg, &db, &format!("format = \"{format}\"")), "");
    let pw = [("TEST_PG_PW", pg.password.as_str())];
    s.assert_dedupes("pgdb", &pw, || {
        pg.psql(&db, "UPDATE customers SET name = 'changed' WHERE id = 1");
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
