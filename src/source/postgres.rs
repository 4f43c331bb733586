//! `type = "postgres"`: one `pg_dump` per database (custom format
//! `<db>.pgdump` by default, or plain SQL `<db>.sql`), streamed into the
//! archive; with `all = true` also `pg_dumpall --globals-only` (roles,
//! tablespaces) as `globals.pg_dumpall.sql`.
//!
//! Consistency: for each database a `psql` session opens a REPEATABLE READ
//! READ ONLY transaction (what pg_dump itself uses), exports its snapshot with
//! `pg_export_snapshot()` and counts every table's rows; `pg_dump --snapshot`
//! then dumps exactly that snapshot, so the recorded counts describe the dump.
//!
//! Credentials: PGPASSWORD from `password_env`, else the usual PG* variables
//! and ~/.pgpass; never on a command line. Tools run with `-w` (never prompt).

use super::db::{self, DatabaseFacts, DumpFile, DumpJob, DumpedDatabase};
use super::SourceOutput;
use crate::archive::ArchiveWriter;
use crate::config::{DbServerSpec, PostgresSourceSpec};
use crate::error::CodedError;
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const PACKAGE: &str = "postgresql-client";
const GLOBALS_ENTRY: &str = "globals.pg_dumpall.sql";

/// Every table (ordinary and partitioned, not extension-owned) with its row
/// count, as one JSON object on one line.
const COUNT_SQL: &str = "SELECT coalesce(json_object_agg(t.name, t.n ORDER BY t.name), '{}') FROM (SELECT format('%I.%I', n.nspname, c.relname) AS name, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')) t";

/// Relations that make a database "not empty" for restore.
const USER_OBJECTS_SQL: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct PgConn {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
}

impl PgConn {
    pub fn for_source(s: &PostgresSourceSpec) -> anyhow::Result<PgConn> {
        Ok(PgConn {
            host: s.host.clone(),
            port: s.port,
            user: s.user.clone(),
            password: db::password_from_env("", s.password_env.as_deref())?,
        })
    }

    pub fn for_server(d: &DbServerSpec, what: &str) -> anyhow::Result<PgConn> {
        Ok(PgConn {
            host: d.host.clone(),
            port: d.port,
            user: d.user.clone(),
            password: db::password_from_env(what, d.password_env.as_deref())?,
        })
    }

    /// "postgres backup@127.0.0.1:5432" (no password).
    pub fn describe(&self) -> String {
        format!(
            "postgres {}@{}:{}",
            self.user.as_deref().unwrap_or("(default user)"),
            self.host.as_deref().unwrap_or("(local socket)"),
            self.port.unwrap_or(5432)
        )
    }

    /// A command for a PostgreSQL client tool with the connection in its
    /// environment.
    pub fn command(&self, tool: &Path) -> Command {
        let mut c = Command::new(tool);
        c.env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "backupctl")
            .env_remove("PGDATABASE");
        if let Some(h) = &self.host {
            c.env("PGHOST", h);
        }
        if let Some(p) = self.port {
            c.env("PGPORT", p.to_string());
        }
        if let Some(u) = &self.user {
            c.env("PGUSER", u);
        }
        if let Some(pw) = &self.password {
            c.env("PGPASSWORD", pw);
        }
        c
    }

    fn psql(&self, tools: &Tools, dbname: &str) -> Command {
        let mut c = self.command(&tools.psql);
        c.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(dbname);
        c
    }

    /// Run one SQL statement in `dbname`, returning its trimmed output.
    fn query(&self, tools: &Tools, dbname: &str, sql: &str) -> anyhow::Result<String> {
        let what = format!("psql on database {dbname} ({})", self.describe());
        Ok(
            db::run_output(self.psql(tools, dbname).arg("-c").arg(sql), None, &what)?
                .trim()
                .to_string(),
        )
    }
}

/// The client tools, found on PATH.
pub struct Tools {
    psql: PathBuf,
    pg_dump: PathBuf,
    pg_dumpall: PathBuf,
    pg_restore: PathBuf,
}

impl Tools {
    pub fn find() -> anyhow::Result<Tools> {
        Ok(Tools {
            psql: db::find_tool(&["psql"], PACKAGE)?,
            pg_dump: db::find_tool(&["pg_dump"], PACKAGE)?,
            pg_dumpall: db::find_tool(&["pg_dumpall"], PACKAGE)?,
            pg_restore: db::find_tool(&["pg_restore"], PACKAGE)?,
        })
    }
}

/// SQL string literal (standard_conforming_strings is on since 9.1).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A psql session holding an exported snapshot open while pg_dump runs.
struct SnapshotSession {
    child: Child,
    err: std::thread::JoinHandle<String>,
    what: String,
}

impl SnapshotSession {
    /// Open the transaction; returns the session, the snapshot id and the
    /// row counts seen by that snapshot.
    fn open(
        conn: &PgConn,
        tools: &Tools,
        dbname: &str,
    ) -> anyhow::Result<(SnapshotSession, String, BTreeMap<String, u64>)> {
        let what = format!("database {dbname} ({})", conn.describe());
        let mut child = conn
            .psql(tools, dbname)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{what}: cannot start psql"))?;
        let mut stderr = child.stderr.take().expect("piped");
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s.trim().to_string()
        });
        let mut stdin = child.stdin.take().expect("piped");
        let script = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n{COUNT_SQL};\n"
        );
        let wrote = stdin
            .write_all(script.as_bytes())
            .and_then(|_| stdin.flush());
        child.stdin = Some(stdin);
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let (mut snap, mut counts) = (String::new(), String::new());
        let ok = wrote.is_ok()
            && out.read_line(&mut snap).unwrap_or(0) > 0
            && out.read_line(&mut counts).unwrap_or(0) > 0;
        if !ok {
            drop(child.stdin.take());
            let _ = child.kill();
            let status = child.wait().ok();
            let e = err.join().unwrap_or_default();
            anyhow::bail!(
                "{what}: cannot open a snapshot: {}",
                if e.is_empty() {
                    format!("psql ended ({status:?})")
                } else {
                    db::one_line(&e)
                }
            );
        }
        child.stdout = Some(out.into_inner());
        let counts = db::parse_counts(&counts, &what)?;
        Ok((
            SnapshotSession { child, err, what },
            snap.trim().to_string(),
            counts,
        ))
    }

    /// End the transaction (after pg_dump finished with the snapshot).
    fn close(mut self) -> anyhow::Result<()> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        let status = self.child.wait()?;
        let e = self.err.join().unwrap_or_default();
        anyhow::ensure!(
            status.success(),
            "{}: snapshot session failed ({status}): {}",
            self.what,
            db::one_line(&e)
        );
        Ok(())
    }
}

fn dump_entry(db_name: &str, format: &str) -> String {
    let ext = if format == "plain" { "sql" } else { "pgdump" };
    format!("{}.{ext}", db::entry_stem(db_name))
}

pub fn archive(
    spec: &PostgresSourceSpec,
    w: &mut ArchiveWriter,
    time: i64,
) -> anyhow::Result<SourceOutput> {
    let tools = Tools::find()?;
    let conn = PgConn::for_source(spec)?;
    let version = db::run_output(
        Command::new(&tools.pg_dump).arg("--version"),
        None,
        "pg_dump --version",
    )?
    .trim()
    .to_string();
    let sel = spec.selection();
    let first = if sel.all {
        "postgres".to_string()
    } else {
        sel.names()[0].clone()
    };
    let server_version = conn.query(&tools, &first, "SHOW server_version")?;
    let names = if sel.all {
        conn.query(
            &tools,
            "postgres",
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname",
        )?
        .lines()
        .map(str::to_string)
        .collect()
    } else {
        sel.names()
    };

    let mut globals = None;
    if sel.all {
        let mut cmd = conn.command(&tools.pg_dumpall);
        cmd.args(["-w", "--globals-only", "-l", "postgres"]);
        globals = Some(db::stream_dump(
            w,
            &mut cmd,
            time,
            DumpJob {
                entry: GLOBALS_ENTRY.into(),
                what: format!("pg_dumpall --globals-only ({})", conn.describe()),
                complete_marker: Some("PostgreSQL database cluster dump complete"),
                observer: None,
            },
        )?);
    }
    let mut databases = Vec::new();
    for name in &names {
        let entry = dump_entry(name, &spec.format);
        anyhow::ensure!(
            entry != GLOBALS_ENTRY,
            "database {name:?}: its dump name clashes with the globals dump"
        );
        let (session, snapshot, tables) = SnapshotSession::open(&conn, &tools, name)?;
        let mut cmd = conn.command(&tools.pg_dump);
        cmd.arg("-w")
            .arg(format!("--format={}", spec.format))
            .arg(format!("--snapshot={snapshot}"))
            .arg("-d")
            .arg(name);
        let dumped = db::stream_dump(
            w,
            &mut cmd,
            time,
            DumpJob {
                entry,
                what: format!("pg_dump of database {name}"),
                complete_marker: (spec.format == "plain")
                    .then_some("PostgreSQL database dump complete"),
                observer: None,
            },
        );
        let closed = session.close();
        let dump = dumped?;
        closed?;
        tracing::info!(
            "dumped postgres database {name}: {} bytes, {} tables",
            dump.size,
            tables.len()
        );
        databases.push(DumpedDatabase {
            name: name.clone(),
            dump,
            tables,
        });
    }
    let facts = DatabaseFacts {
        engine: "postgres".into(),
        dump_tool: version,
        server_version,
        format: spec.format.clone(),
        row_counts: "counted in the exported snapshot that pg_dump --snapshot dumped".into(),
        globals,
        databases,
    };
    Ok(SourceOutput {
        origin: format!("{} {}", conn.describe(), names.join(",")),
        database: Some(facts.to_value()),
    })
}

/// A database created for a load, dropped when this goes out of scope unless
/// [`TempDb::keep`] was called.
struct TempDb<'a> {
    conn: &'a PgConn,
    tools: &'a Tools,
    name: String,
    keep: bool,
}

impl<'a> TempDb<'a> {
    fn create(conn: &'a PgConn, tools: &'a Tools, name: String) -> anyhow::Result<TempDb<'a>> {
        conn.query(
            tools,
            "postgres",
            &format!("CREATE DATABASE {} TEMPLATE template0", ident(&name)),
        )?;
        Ok(TempDb {
            conn,
            tools,
            name,
            keep: false,
        })
    }
}

impl Drop for TempDb<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.conn.query(
            self.tools,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name)),
        ) {
            tracing::error!("could not drop scratch database {}: {e:#}", self.name);
        }
    }
}

/// Load a dump into `dbname` in one transaction. `keep_owners`: restore
/// ownership and privileges (restore) or not (verify, where roles may differ).
fn load(
    conn: &PgConn,
    tools: &Tools,
    format: &str,
    dir: &Path,
    dump: &DumpFile,
    dbname: &str,
    keep_owners: bool,
) -> Result<(), String> {
    let input = db::open_dump(dir, dump).map_err(|e| format!("{e:#}"))?;
    if format == "plain" {
        let mut c = conn.psql(tools, dbname);
        c.arg("--single-transaction");
        db::feed(&mut c, input, "psql loading the dump")
    } else {
        let mut c = conn.command(&tools.pg_restore);
        c.args([
            "-w",
            "--exit-on-error",
            "--single-transaction",
            "-d",
            dbname,
        ]);
        if !keep_owners {
            c.args(["--no-owner", "--no-privileges"]);
        }
        db::feed(&mut c, input, "pg_restore")
    }
}

fn counts(conn: &PgConn, tools: &Tools, dbname: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let out = conn.query(tools, dbname, COUNT_SQL)?;
    db::parse_counts(&out, dbname)
}

/// The verification server: `[verify] postgres`, else the source's own.
fn verify_conn(
    verify: Option<&DbServerSpec>,
    spec: Option<&PostgresSourceSpec>,
    source: &str,
) -> anyhow::Result<PgConn> {
    match (verify, spec) {
        (Some(v), _) => PgConn::for_server(v, "[verify] postgres"),
        (None, Some(s)) => PgConn::for_source(s),
        (None, None) => PgConn::for_server(
            &DbServerSpec::default(),
            &format!("source {source} (no longer in the policy)"),
        ),
    }
}

/// Load every database dump of an unpacked archive into a scratch database
/// on the verification server and compare row counts. Returns problems.
pub fn verify(
    verify_server: Option<&DbServerSpec>,
    spec: Option<&PostgresSourceSpec>,
    source: &str,
    facts: &DatabaseFacts,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let tools = Tools::find()?;
    let conn = verify_conn(verify_server, spec, source)?;
    let mut problems = Vec::new();
    if let Some(g) = &facts.globals {
        // Roles are cluster-wide: never loaded into a verification server.
        let mut text = String::new();
        std::io::Read::read_to_string(&mut db::open_dump(dir, g)?, &mut text)?;
        if !text.contains("PostgreSQL database cluster dump complete") {
            problems.push(format!("source {source}: the globals dump is incomplete"));
        }
    }
    for d in &facts.databases {
        let label = format!("source {source}: database {}", d.name);
        let scratch = TempDb::create(
            &conn,
            &tools,
            format!("backupctl_verify_{}", crate::util::random_hex(12)),
        )
        .with_context(|| {
            format!(
                "{label}: creating a scratch database on {}",
                conn.describe()
            )
        })?;
        if let Err(e) = load(
            &conn,
            &tools,
            &facts.format,
            dir,
            &d.dump,
            &scratch.name,
            false,
        ) {
            problems.push(format!("{label}: the dump does not load: {e}"));
            continue;
        }
        let loaded = counts(&conn, &tools, &scratch.name)?;
        let p = db::compare_counts(&label, &d.tables, &loaded);
        if p.is_empty() {
            tracing::info!(
                "{label}: dump loads on {}, {} tables with matching row counts",
                conn.describe(),
                loaded.len()
            );
        }
        problems.extend(p);
    }
    Ok(problems)
}

/// What a restore into a database did.
#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub database: String,
    pub server: String,
    pub tables: usize,
    pub rows: u64,
    pub replaced_existing: bool,
}

/// Restore the dump of `from_db` into `into` on the source's server. The
/// dump is loaded into a fresh temporary database first; only when that
/// succeeds is an existing `into` (with `force`) dropped and the new one
/// renamed into place, so a dump that fails to load leaves `into` untouched.
pub fn restore_into(
    spec: &PostgresSourceSpec,
    facts: &DatabaseFacts,
    d: &DumpedDatabase,
    dir: &Path,
    into: &str,
    force: bool,
) -> anyhow::Result<LoadReport> {
    let tools = Tools::find()?;
    let conn = PgConn::for_source(spec)?;
    let exists = conn.query(
        &tools,
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            lit(into)
        ),
    )? != "0";
    if exists {
        let n: u64 = conn
            .query(&tools, into, USER_OBJECTS_SQL)?
            .parse()
            .unwrap_or(0);
        if n > 0 && !force {
            return Err(CodedError::usage(format!(
                "database {into} on {} is not empty ({n} tables, views or sequences); pass --force to replace it",
                conn.describe()
            ))
            .into());
        }
    }
    let mut temp = TempDb::create(
        &conn,
        &tools,
        format!("backupctl_restore_{}", crate::util::random_hex(12)),
    )?;
    load(&conn, &tools, &facts.format, dir, &d.dump, &temp.name, true).map_err(|e| {
        CodedError::failure(format!(
            "database {}: the dump does not load: {e}; {into} was left unchanged",
            d.name
        ))
    })?;
    if exists {
        conn.query(
            &tools,
            "postgres",
            &format!("DROP DATABASE {} WITH (FORCE)", ident(into)),
        )?;
    }
    conn.query(
        &tools,
        "postgres",
        &format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(&temp.name),
            ident(into)
        ),
    )?;
    temp.keep = true;
    let loaded = counts(&conn, &tools, into)?;
    let problems = db::compare_counts(&format!("database {into}"), &d.tables, &loaded);
    anyhow::ensure!(
        problems.is_empty(),
        "restored, but row counts differ from the dump: {}",
        problems.join("; ")
    );
    Ok(LoadReport {
        database: into.to_string(),
        server: conn.describe(),
        tables: loaded.len(),
        rows: loaded.values().sum(),
        replaced_existing: exists,
    })
}
