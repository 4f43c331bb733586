//! MySQL/MariaDB sources against a real MariaDB (scripts/services/mariadb.sh),
//! driving the backupctl binary; results checked with independent queries.

mod db_common;
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
    let q = "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'backupctl\\_verify\\_%'";
    let before = my.mysql(None, q);
    let o = s.run(args, &[("TEST_MY_PW", my.password.as_str())]);
    assert_eq!(
        my.mysql(None, q),
        before,
        "scratch database left behind: {}",
        text(&o)
    );
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
    flip_bytes(&s.archives("a")[0]);
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
    let s = DbSetup::new(&source(&my, &db), "");
    let pw = [("TEST_MY_PW", my.password.as_str())];
    s.assert_dedupes("wp", &pw, || {
        my.mysql(Some(&db), "UPDATE posts SET title = 'changed' WHERE id = 7");
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
