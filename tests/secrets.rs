//! Secrets are never printed or written: every command runs with real S3
//! keys and database passwords set (and with a database that refuses them,
//! so error paths run too), then everything it printed and every file it
//! wrote — directory targets, the S3 bucket prefix, the state directory,
//! restores — is searched for each secret.

use crate::db_common;
use crate::s3_common;

use db_common::DbServer;
use std::path::Path;
use std::process::Output;

fn all_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_is_ever_printed_or_written() {
    let (Some(s3), Some(pg), Some(my)) = (
        s3_common::s3_env(),
        DbServer::postgres(),
        DbServer::mariadb(),
    ) else {
        return; // skipped (or failed by the harness when services are required)
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = s3_common::unique("secrets");
    let pgdb = format!("secrets_{}", db_common::db_hex(6));
    let mydb = format!("secrets_{}", db_common::db_hex(6));
    pg.psql("postgres", &format!("CREATE DATABASE {pgdb}"));
    pg.psql(
        &pgdb,
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    my.mysql(None, &format!("CREATE DATABASE {mydb}"));
    my.mysql(
        Some(&mydb),
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'a');",
    );
    std::fs::create_dir_all(d.join("site")).unwrap();
    std::fs::write(d.join("site/index.html"), "hello").unwrap();

    let config = format!(
        "state_dir = \"state\"\n\n[targets.disk]\ntype = \"fs\"\npath = \"disk\"\nlocation = \"office\"\ncreate = true\n\n{}",
        s3.target_toml("cloud", &prefix, "cloud", "")
    );
    std::fs::write(d.join("backupctl.toml"), config).unwrap();
    std::fs::create_dir_all(d.join("policies")).unwrap();
    let policy = |pg_port: u16| {
        format!(
            "targets = [\"disk\", \"cloud\"]\n[retention]\nlast = 2\n\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = {:?}\n\n[[sources]]\nname = \"pg\"\ntype = \"postgres\"\ndatabase = \"{pgdb}\"\nhost = \"{}\"\nport = {pg_port}\nuser = \"{}\"\npassword_env = \"SCAN_PG_PASSWORD\"\n\n[[sources]]\nname = \"my\"\ntype = \"mysql\"\ndatabase = \"{mydb}\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword_env = \"SCAN_MY_PASSWORD\"\n",
            d.join("site").display().to_string(),
            pg.host,
            pg.user,
            my.host,
            my.port,
            my.user
        )
    };
    std::fs::write(d.join("policies/shop.toml"), policy(pg.port)).unwrap();

    let secrets = [
        s3.secret.clone(),
        s3.key_id.clone(),
        pg.password.clone(),
        my.password.clone(),
    ];
    let mut env: Vec<(&str, String)> = s3.child_env();
    env.push(("SCAN_PG_PASSWORD", pg.password.clone()));
    env.push(("SCAN_MY_PASSWORD", my.password.clone()));
    // The same secrets under the names tools and SDKs read by themselves.
    env.push(("AWS_SECRET_ACCESS_KEY", s3.secret.clone()));
    env.push(("PGPASSWORD", pg.password.clone()));
    env.push(("MYSQL_PWD", my.password.clone()));
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cfg = d.join("backupctl.toml");
    let mut outputs: Vec<(String, Output)> = Vec::new();
    let mut run = |args: &[&str], want: Option<i32>| {
        let o = s3_common::run_cli(&cfg, args, &envs);
        if let Some(w) = want {
            assert_eq!(
                o.status.code(),
                Some(w),
                "{args:?}: {}",
                s3_common::text(&o)
            );
        }
        outputs.push((args.join(" "), o));
    };
    let out1 = d.join("restored");
    run(&["init"], Some(0));
    run(&["check"], Some(0));
    run(&["check", "--json"], Some(0));
    run(&["-vv", "run"], Some(0));
    run(&["run", "--json"], Some(0));
    run(&["run", "--dry-run", "--json"], Some(0));
    run(&["list", "--json"], Some(0));
    run(&["-vv", "verify", "--all"], Some(0));
    run(&["verify", "--json"], Some(0));
    run(
        &["restore", "shop", "--to", out1.to_str().unwrap()],
        Some(0),
    );
    let into_pg = format!("{pgdb}_r");
    let into_my = format!("{mydb}_r");
    run(
        &[
            "restore",
            "shop",
            "--source",
            "pg",
            "--into-database",
            &into_pg,
        ],
        Some(0),
    );
    run(
        &[
            "restore",
            "shop",
            "--source",
            "my",
            "--into-database",
            &into_my,
        ],
        Some(0),
    );
    run(&["sync", "--json"], Some(0));
    run(&["-vv", "prune", "--dry-run"], Some(0));
    run(&["prune", "--json"], Some(0));
    run(&["schedule", "--json"], Some(0));
    // Error paths: the database refuses the password; the server is down.
    let mut bad_env = env.clone();
    bad_env.retain(|(k, _)| *k != "SCAN_PG_PASSWORD");
    bad_env.push(("SCAN_PG_PASSWORD", format!("{}-wrong", pg.password)));
    let bad: Vec<(&str, &str)> = bad_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    std::fs::write(d.join("policies/shop.toml"), policy(1)).unwrap();
    run(&["-vv", "run"], Some(1));
    std::fs::write(d.join("policies/shop.toml"), policy(pg.port)).unwrap();
    let o = s3_common::run_cli(&cfg, &["-vv", "run"], &bad);
    assert_eq!(o.status.code(), Some(1), "{}", s3_common::text(&o));
    outputs.push(("run with a wrong password".into(), o));

    let mut found = Vec::new();
    for (what, o) in &outputs {
        for sec in &secrets {
            for (stream, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                if contains(bytes, sec) {
                    found.push(format!("`{what}` {stream}"));
                }
            }
        }
    }
    for (path, bytes) in all_files(d) {
        for sec in &secrets {
            if contains(&bytes, sec) {
                found.push(format!("file {path}"));
            }
        }
    }
    for (key, _) in s3.list_keys(&prefix) {
        let bytes = s3.get(&key);
        for sec in &secrets {
            if contains(&bytes, sec) {
                found.push(format!("S3 object {key}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets leaked into: {found:#?}");
    // The scan saw real work: every source restored.
    assert!(out1.join("site/index.html").is_file());
    assert_eq!(pg.psql(&into_pg, "SELECT count(*) FROM t").trim(), "2");
    pg.psql("postgres", &format!("DROP DATABASE {pgdb}"));
    pg.psql("postgres", &format!("DROP DATABASE {into_pg}"));
    my.mysql(
        None,
        &format!("DROP DATABASE {mydb}; DROP DATABASE {into_my}"),
    );
}
