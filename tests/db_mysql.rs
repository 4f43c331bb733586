//! MySQL/MariaDB sources against a real MariaDB (scripts/services/mariadb.sh),
//! driving the backupctl binary; results checked with independent queries.

use crate::db_common;
use db_common::*;

fn make_db(my: &DbServer, rows: u32) -> String {
    let db = format!("t_{}", db_hex(10));
    my.mysql(None, &format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"));
    my.mysql(
        Some(&db),
        &format!(
            "CREATE TABLE posts (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200), body TEXT, bin BLOB) ENGINE=InnoDB;
             CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, post INT) ENGINE=InnoDB;
             CREATE TABLE `odd ``name`` (x)` (k VARCHAR(10));
             CREATE TABLE empty_table (x INT);
             CREATE TRIGGER posts_ai AFTER INSERT ON posts FOR EACH ROW INSERT INTO audit (post) VALUES (NEW.id);
             CREATE PROCEDURE post_count() SELECT COUNT(*) FROM posts;
             CREATE VIEW long_posts AS SELECT id FROM posts WHERE LENGTH(body) > 40;
             INSERT INTO `odd ``name`` (x)` VALUES ('a'), ('b(c)');
             INSERT INTO posts (title, body, bin)
               SELECT CONCAT('Grüße ''post'' (', seq, ')'), REPEAT(CONCAT('line ', seq, '\\n\\t\\\\ ), ('), 1 + seq % 5), UNHEX(MD5(seq))
               FROM seq_1_to_{rows};"
        ),
    );
    db
}

fn fingerprint(my: &DbServer, db: &str) -> String {
    my.mysql(
        Some(db),
        "SELECT CONCAT_WS(' ',
           (SELECT MD5(GROUP_CONCAT(CONCAT_WS('|', id, title, body, HEX(bin)) ORDER BY id SEPARATOR ',')) FROM posts),
           (SELECT COUNT(*) FROM audit),
           (SELECT GROUP_CONCAT(k ORDER BY k) FROM `odd ``name`` (x)`),
           (SELECT COUNT(*) FROM long_posts),
           (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()),
           (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()))",
    )
}

fn source(my: &DbServer, db: &str) -> String {
    format!(
        "[[sources]]\nname = \"wp\"\ntype = \"mysql\"\ndatabase = \"{db}\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"TEST_MY_PW\"\n",
        my.host, my.port, my.user
    )
}

/// One verify at a time in this binary, so we can check that its scratch
/// databases are always dropped.
static VERIFY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn verify(s: &DbSetup, my: &DbServer, args: &[&str]) -> std::process::Output {
    let _g = VERIFY.lock().unwrap_or_else(|e| e.into_inner());
    let q = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'backupctl\\_verify\\_%'";
    let list = || my.mysql(None, q).lines().map(str::to_string).collect();
    let before = list();
    let o = s.run(args, &[("TEST_MY_PW", my.password.as_str())]);
    assert_scratch_dropped(&before, list, &text(&o));
    o
}

fn drop_db(my: &DbServer, db: &str) {
    my.mysql(None, &format!("DROP DATABASE IF EXISTS {db}"));
}

#[test]
fn mysql_backup_verify_restore_into_database_round_trip() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    // group_concat_max_len: the fingerprint covers every row.
    my.mysql(None, "SET GLOBAL group_concat_max_len = 1073741824");
    let db = make_db(&my, 2000);
    let before = fingerprint(&my, &db);
    let s = DbSetup::new(&source(&my, &db), "");
    let pw = [("TEST_MY_PW", my.password.as_str())];

    let o = s.run(&["run"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains(&my.password), "password leaked");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.manifests("a")[0]).unwrap()).unwrap();
    let facts = &m["sources"][0]["database"];
    assert!(
        facts["dump_tool"].as_str().unwrap().contains("Distrib"),
        "{facts}"
    );
    assert!(
        facts["server_version"]
            .as_str()
            .unwrap()
            .contains("MariaDB"),
        "{facts}"
    );
    let d0 = &facts["databases"][0];
    assert_eq!(d0["entries"][0], format!("{db}.sql"));
    // Recorded counts agree with an independent count.
    assert_eq!(d0["tables"]["posts"], 2000, "{d0}");
    assert_eq!(d0["tables"]["audit"], 2000, "{d0}");
    assert_eq!(d0["tables"]["odd `name` (x)"], 2, "{d0}");
    assert_eq!(d0["tables"]["empty_table"], 0, "{d0}");
    assert_eq!(d0["tables"].as_object().unwrap().len(), 4, "{d0}");

    let o = verify(&s, &my, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    my.mysql(
        Some(&db),
        "DELETE FROM posts WHERE id % 2 = 0; DROP PROCEDURE post_count",
    );
    let o = s.run(
        &["restore", "db", "--source", "wp", "--into-database", &db],
        &pw,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not empty"), "{}", text(&o));
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "wp",
            "--into-database",
            &db,
            "--force",
        ],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fingerprint(&my, &db), before);

    let copy = format!("{db}_copy");
    let o = s.run(
        &["restore", "db", "--source", "wp", "--into-database", &copy],
        &pw,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fingerprint(&my, &copy), before);
    drop_db(&my, &copy);
    drop_db(&my, &db);
}

#[test]
fn mysql_corrupted_target_verify_and_failover() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    let db = make_db(&my, 300);
    let before = fingerprint(&my, &db);
    let s = DbSetup::new(&source(&my, &db), "");
    let pw = [("TEST_MY_PW", my.password.as_str())];
    let o = s.run(&["run"], &pw);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    s.damage_stream("a", "wp");
    let o = verify(&s, &my, &["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["snapshots"][0]["targets"][0]["result"], "failed");
    assert_eq!(v[0]["snapshots"][0]["targets"][1]["result"], "ok", "{v}");
    my.mysql(Some(&db), "DROP TABLE posts");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "wp",
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
    assert_eq!(fingerprint(&my, &db), before);
    drop_db(&my, &db);
}

#[test]
fn mysql_faults_wrong_password_missing_database_killed_dump() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    let db = make_db(&my, 20000);
    let s = DbSetup::new(&source(&my, &db), "");
    let wrong = "wrong-Secret-Password-456";
    let o = s.run(&["run"], &[("TEST_MY_PW", wrong)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Access denied"), "{}", text(&o));
    assert!(!text(&o).contains(wrong), "password leaked");
    assert!(s.manifests("a").is_empty() && s.manifests("b").is_empty());

    let s2 = DbSetup::new(&source(&my, "missing_db_x"), "");
    let o = s2.run(&["run"], &[("TEST_MY_PW", my.password.as_str())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Unknown database"), "{}", text(&o));
    assert!(s2.manifests("a").is_empty());

    // The dump tool dies part-way through.
    let bin = s.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v mariadb-dump"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.join("mariadb-dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {0} --version;; esac\n{0} \"$@\" | head -c 100000\nkill -9 $$\n",
            real.trim()
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
            ("TEST_MY_PW", my.password.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("no snapshot was recorded"), "{t}");
    assert!(t.contains("signal: 9") || t.contains("SIGKILL"), "{t}");
    assert!(s.manifests("a").is_empty() && s.manifests("b").is_empty());
    drop_db(&my, &db);
}

#[test]
fn mysql_unchanged_database_gives_identical_archives() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    let db = make_db(&my, 300);
    // An event too: its definition carries timestamps of its own.
    my.mysql(
        Some(&db),
        "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0",
    );
    // A large table of poorly compressible text, so that the dump is cut
    // into many chunks and storing it again would be visible in bytes.
    my.mysql(
        Some(&db),
        "CREATE TABLE bulk (id INT PRIMARY KEY, h TEXT) ENGINE=InnoDB;
         INSERT INTO bulk SELECT seq, CONCAT(SHA2(seq, 512), SHA2(seq + 1000000, 512))
           FROM seq_1_to_24000;",
    );
    let s = DbSetup::new(&source(&my, &db), "");
    let pw = [("TEST_MY_PW", my.password.as_str())];
    s.assert_dedupes("wp", &pw, || {
        my.mysql(Some(&db), "UPDATE bulk SET h = 'changed' WHERE id = 12000");
    });
    // The dumps themselves (not just the tar around them): the same BLAKE3
    // recorded twice.
    let mut dump_hashes: Vec<String> = s
        .manifests("a")
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
            v["sources"][0]["database"]["databases"][0]["blake3"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    dump_hashes.sort();
    dump_hashes.dedup();
    assert_eq!(dump_hashes.len(), 2, "{dump_hashes:?}");
    drop_db(&my, &db);
}

// ---------------------------------------------------------------------------
// Hostile snapshots (issue 9): a dump planted on a target never commands
// the host, in verify or in restore --into-database.
// ---------------------------------------------------------------------------

fn planted_sql(attack: &str) -> Vec<u8> {
    format!("CREATE TABLE t (x INT);\n{attack}\nINSERT INTO t VALUES (1);\n").into_bytes()
}

/// Plant one snapshot of source `wp` on both targets, one database per dump.
fn plant_my(s: &DbSetup, engine: &str, format: &str, dumps: &[(&str, Vec<u8>)]) -> String {
    let entries: Vec<String> = dumps.iter().map(|(d, _)| format!("{d}.sql")).collect();
    let facts_in: Vec<(&str, &str, &[u8])> = dumps
        .iter()
        .zip(&entries)
        .map(|((d, data), e)| (*d, e.as_str(), data.as_slice()))
        .collect();
    let facts = planted_facts(engine, format, &facts_in, serde_json::json!({"t": 1}));
    let files: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .zip(dumps)
        .map(|(e, (_, data))| (e.as_str(), data.clone()))
        .collect();
    s.plant(&["a", "b"], "wp", "mysql", facts, &files)
}

#[test]
fn mysql_planted_dump_cannot_run_commands_in_verify_or_restore() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    let m = Markers::create();
    let attacks: Vec<(&str, String)> = vec![
        ("system", format!("system touch {}", m.path("m1"))),
        ("bang", format!("\\! touch {}", m.path("m2"))),
        ("tee", format!("tee {}", m.path("m3"))),
        ("source", format!("source {}", m.path("m4"))),
        // --sandbox lets `edit` run $EDITOR; backupctl gives it `false`.
        ("edit", "edit".to_string()),
        ("edit_short", "SELECT 1 \\e".to_string()),
    ];
    let dumps: Vec<(&str, Vec<u8>)> = attacks.iter().map(|(d, a)| (*d, planted_sql(a))).collect();
    let s = DbSetup::new(&source(&my, "wp_planted"), "");
    plant_my(&s, "mysql", "sql", &dumps);
    let editor = format!("touch {}", m.path("m5"));
    let env = [
        ("TEST_MY_PW", my.password.as_str()),
        ("EDITOR", editor.as_str()),
        ("VISUAL", editor.as_str()),
    ];

    let o = {
        let _g = VERIFY.lock().unwrap_or_else(|e| e.into_inner());
        s.run(&["verify", "--json"], &env)
    };
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for i in 0..2 {
        let tc = &v[0]["snapshots"][0]["targets"][i];
        assert_eq!(tc["result"], "failed", "{v}");
        assert_eq!(tc["archives"][0]["source"], "wp", "{v}");
        let problems = tc["archives"][0]["problems"].to_string();
        for (d, _) in &attacks {
            assert!(
                problems.contains(&format!("source wp: database {d}: the dump does not load")),
                "{d}: {problems}"
            );
        }
    }
    assert!(t.contains("Not allowed in the sandbox mode"), "{t}");
    assert!(t.contains("target=a") && t.contains("source=wp"), "{t}");
    let scratch = my.mysql(
        None,
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'backupctl\\_verify\\_%'",
    );
    assert_eq!(scratch, "0", "scratch database left behind");

    for (d, _) in &attacks {
        let into = format!("planted_{}", db_hex(8));
        let o = s.run(
            &[
                "restore",
                "db",
                "--source",
                "wp",
                "--database",
                d,
                "--into-database",
                &into,
            ],
            &env,
        );
        let t = text(&o);
        m.assert_none(&t);
        assert_eq!(o.status.code(), Some(1), "{d}: {t}");
        assert!(
            t.contains("source wp") && t.contains("from target a"),
            "{t}"
        );
        assert!(t.contains("does not load"), "{t}");
        drop_db(&my, &into);
    }
    m.assert_none("at the end");
}

#[test]
fn mysql_manifest_or_client_that_cannot_load_safely_is_refused() {
    let Some(my) = DbServer::mariadb() else {
        return;
    };
    let m = Markers::create();
    let dump = planted_sql(&format!("system touch {}", m.path("m1")));
    // Facts claiming another engine for a mysql source.
    let s = DbSetup::new(&source(&my, "wp_planted"), "");
    plant_my(&s, "postgres", "plain", &[("wp_planted", dump.clone())]);
    let o = verify(&s, &my, &["verify"]);
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("source wp: not loaded"), "{t}");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "wp",
            "--into-database",
            "planted_x",
        ],
        &[("TEST_MY_PW", my.password.as_str())],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("not loaded"), "{t}");

    // A client without --sandbox (what `mysql` from Oracle, or an older
    // MariaDB, is) loads nothing.
    let s = DbSetup::new(&source(&my, "wp_planted"), "");
    plant_my(&s, "mysql", "sql", &[("wp_planted", dump)]);
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v mariadb"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bin = s.path().join("oldbin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("mariadb");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --help) {0} --help | grep -v sandbox; exit 0;; esac\nexec {0} \"$@\"\n",
            real.trim()
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
            ("TEST_MY_PW", my.password.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("has no --sandbox"), "{t}");
    assert!(t.contains("10.11.8"), "{t}");
    let o = s.run(
        &[
            "restore",
            "db",
            "--source",
            "wp",
            "--into-database",
            "planted_no_sandbox",
        ],
        &[
            ("TEST_MY_PW", my.password.as_str()),
            ("PATH", path.as_str()),
        ],
    );
    let t = text(&o);
    m.assert_none(&t);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not loaded") && t.contains("from target a"),
        "{t}"
    );
    let n = my.mysql(
        None,
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'planted_no_sandbox'",
    );
    assert_eq!(n, "0", "the database was created before the refusal");
}
