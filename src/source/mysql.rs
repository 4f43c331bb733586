//! `type = "mysql"` (MySQL or MariaDB): one `mariadb-dump` (or `mysqldump`)
//! per database with `--single-transaction --routines --triggers --events`,
//! streamed into the archive as `<db>.sql`. The dump has no `CREATE
//! DATABASE`/`USE`, so it loads into any database name (restore, verify).
//!
//! Row counts: InnoDB cannot share a transaction's snapshot with another
//! session, so the counts are taken from the dump stream itself while it is
//! archived (tables from `CREATE TABLE`, rows from the tuples of each
//! `INSERT INTO`): they describe exactly the snapshot that was dumped.
//! (Tables of non-transactional engines such as MyISAM are not consistent
//! under `--single-transaction`; that is mysqldump's own limit.)
//!
//! Credentials: the password goes into a temporary option file (mode 0600,
//! removed afterwards) passed with `--defaults-extra-file`; never on a
//! command line. `all = true` dumps every database except the system
//! schemas (accounts and grants are not included).
//!
//! Loading (`verify`, `restore --into-database`) treats the dump as hostile:
//! the client runs with `--sandbox` (MariaDB client 10.5.25, 10.6.18,
//! 10.11.8, 11.0.6 and later), which refuses the client commands that reach
//! the file system or a shell (`system`, `\!`, `source`, `tee`, ...), with
//! `--local-infile=0` (no `LOAD DATA LOCAL`: the dump cannot make the client
//! read a local file) and with `EDITOR`/`VISUAL` set to `false` (the
//! client's `edit`/`\e`, which `--sandbox` lets through, would otherwise run
//! the user's editor on input from the dump). A client without `--sandbox`
//! (Oracle's `mysql`, older MariaDB releases) does not load dumps at all.
//! SQL itself runs with the privileges of the loading user on the server
//! (`SELECT ... INTO OUTFILE`, other databases): see the README.

use super::db::{self, DatabaseFacts, DumpFile, DumpJob, DumpedDatabase, LoadError};
use super::SourceOutput;
use crate::archive::ArchiveWriter;
use crate::config::{DbServerSpec, MysqlSourceSpec};
use crate::error::CodedError;
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "mariadb-client";
/// The first MariaDB client releases of each series with `--sandbox`.
pub const MIN_MARIADB_SANDBOX: &str = "10.5.25, 10.6.18, 10.11.8 or 11.0.6";
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "performance_schema", "sys", "mysql"];

/// A temporary option file holding the password, removed on drop.
struct OptionFile(PathBuf);

impl OptionFile {
    fn create(password: &str) -> anyhow::Result<OptionFile> {
        let path =
            std::env::temp_dir().join(format!("backupctl-my-{}.cnf", crate::util::random_hex(16)));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating option file {}", path.display()))?;
        let esc = password.replace('\\', "\\\\").replace('"', "\\\"");
        writeln!(f, "[client]\npassword=\"{esc}\"")?;
        f.sync_all()?;
        Ok(OptionFile(path))
    }
}

impl Drop for OptionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where and as whom to connect.
pub struct MyConn {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    options: Option<OptionFile>,
}

impl MyConn {
    fn new(
        host: Option<String>,
        port: Option<u16>,
        user: Option<String>,
        password: Option<String>,
    ) -> anyhow::Result<MyConn> {
        Ok(MyConn {
            host,
            port,
            user,
            options: password.map(|p| OptionFile::create(&p)).transpose()?,
        })
    }

    pub fn for_source(s: &MysqlSourceSpec) -> anyhow::Result<MyConn> {
        let pw = db::password_from_env("", s.password_env.as_deref())?;
        MyConn::new(s.host.clone(), s.port, s.user.clone(), pw)
    }

    pub fn for_server(d: &DbServerSpec, what: &str) -> anyhow::Result<MyConn> {
        let pw = db::password_from_env(what, d.password_env.as_deref())?;
        MyConn::new(d.host.clone(), d.port, d.user.clone(), pw)
    }

    pub fn describe(&self) -> String {
        format!(
            "mysql {}@{}:{}",
            self.user.as_deref().unwrap_or("(default user)"),
            self.host.as_deref().unwrap_or("localhost"),
            self.port.unwrap_or(3306)
        )
    }

    fn command(&self, tool: &Path) -> Command {
        let mut c = Command::new(tool);
        // Must come first.
        if let Some(o) = &self.options {
            c.arg(format!("--defaults-extra-file={}", o.0.display()));
        }
        if let Some(h) = &self.host {
            c.arg(format!("--host={h}"));
        }
        if let Some(p) = self.port {
            c.arg(format!("--port={p}"));
        }
        if let Some(u) = &self.user {
            c.arg(format!("--user={u}"));
        }
        c.env_remove("MYSQL_PWD");
        c
    }

    /// The client, with `--sandbox` where it has it (queries in verify and
    /// restore carry table names from the loaded dump), `--local-infile=0`,
    /// and a harmless editor for `edit`/`\e`, which the sandbox lets run.
    fn client(&self, tools: &Tools) -> Command {
        let mut c = self.command(&tools.client);
        if tools.sandbox {
            c.arg("--sandbox");
        }
        c.args([
            "--local-infile=0",
            "--connect-timeout=10",
            "--default-character-set=utf8mb4",
        ])
        .env("EDITOR", "false")
        .env("VISUAL", "false");
        c
    }

    fn query(&self, tools: &Tools, db: Option<&str>, sql: &str) -> anyhow::Result<String> {
        let mut c = self.client(tools);
        c.args(["--batch", "--raw", "--skip-column-names", "-e", sql]);
        if let Some(d) = db {
            c.arg(format!("--database={d}"));
        }
        let what = format!(
            "{} on {}{}",
            tools.client_name(),
            self.describe(),
            db.map(|d| format!(" database {d}")).unwrap_or_default()
        );
        Ok(db::run_output(&mut c, None, &what)?.trim().to_string())
    }
}

pub struct Tools {
    dump: PathBuf,
    client: PathBuf,
    /// The client knows `--sandbox` (its `--help` lists it).
    sandbox: bool,
}

impl Tools {
    pub fn find() -> anyhow::Result<Tools> {
        let client = db::find_tool(&["mariadb", "mysql"], PACKAGE)?;
        let sandbox = db::run_output(
            Command::new(&client).arg("--help"),
            None,
            "mysql client --help",
        )
        .is_ok_and(|help| {
            help.lines()
                .any(|l| l.trim_start().starts_with("--sandbox"))
        });
        Ok(Tools {
            dump: db::find_tool(&["mariadb-dump", "mysqldump"], PACKAGE)?,
            client,
            sandbox,
        })
    }

    /// Loading a dump needs `--sandbox`; Err says why not (for people).
    fn check_sandbox(&self) -> Result<(), String> {
        if self.sandbox {
            return Ok(());
        }
        let version = db::run_output(
            Command::new(&self.client).arg("--version"),
            None,
            "mysql client --version",
        )
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| self.client.display().to_string());
        Err(format!(
            "the client {} ({version}) has no --sandbox, without which a dump \
             could run shell commands (system, \\!); loading needs the MariaDB client \
             {MIN_MARIADB_SANDBOX} or later (Debian package {PACKAGE})",
            self.client.display()
        ))
    }

    fn client_name(&self) -> String {
        self.client
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Identifier quoting.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// String literal quoting (backslash escapes are on by default).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Counts tables and rows in a mysqldump stream as it passes by: `CREATE
/// TABLE` at a line start adds a table with 0 rows; each top-level tuple of
/// an `INSERT INTO` at a line start adds a row. Quoted strings (with
/// backslash escapes) are skipped; `DELIMITER ;;` blocks (triggers,
/// routines, events) are ignored.
#[derive(Debug, Default)]
pub struct DumpCounter {
    pub tables: BTreeMap<String, u64>,
    line: Vec<u8>,
    mode: Mode,
    current: String,
    depth: u32,
    in_string: bool,
    escaped: bool,
    in_delimiter_block: bool,
}

#[derive(Debug, Default, PartialEq)]
enum Mode {
    /// Collecting the start of a line to decide what it is.
    #[default]
    LineStart,
    /// Inside an INSERT's VALUES list.
    Values,
    /// Skipping to the end of the line.
    Skip,
}

const PREFIX_KEEP: usize = 4096;

impl DumpCounter {
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            match self.mode {
                Mode::Skip => {
                    if b == b'\n' {
                        self.mode = Mode::LineStart;
                        self.line.clear();
                    }
                }
                Mode::LineStart => {
                    if b == b'\n' {
                        self.end_line_start();
                        self.line.clear();
                        continue;
                    }
                    self.line.push(b);
                    self.check_prefix();
                }
                Mode::Values => self.values_byte(b),
            }
        }
    }

    fn end_line_start(&mut self) {
        // `INSERT INTO `t` VALUES` alone on its line (rows on the next lines).
        if self.try_insert(true) {
            return;
        }
        let l = String::from_utf8_lossy(&self.line);
        let l = l.trim_end();
        if l == "DELIMITER ;;" {
            self.in_delimiter_block = true;
        } else if l == "DELIMITER ;" {
            self.in_delimiter_block = false;
        } else if !self.in_delimiter_block {
            if let Some(name) = l
                .strip_prefix("CREATE TABLE ")
                .and_then(|r| parse_ident(r.as_bytes()).map(|x| x.0))
            {
                self.tables.entry(name).or_insert(0);
            }
        }
    }

    /// At `INSERT INTO `name` VALUES` (followed by a space, or by the end of
    /// the line when `at_eol`), switch to counting tuples.
    fn try_insert(&mut self, at_eol: bool) -> bool {
        if self.in_delimiter_block || !self.line.starts_with(b"INSERT INTO `") {
            return false;
        }
        let Some((name, used)) = parse_ident(&self.line[12..]) else {
            return false;
        };
        let rest = &self.line[12 + used..];
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        let tail = if let Some(t) = rest.strip_prefix(b" VALUES ") {
            t.to_vec()
        } else if at_eol && rest == b" VALUES" {
            Vec::new()
        } else {
            if rest.len() > 8 {
                self.mode = Mode::Skip;
            }
            return false;
        };
        self.tables.entry(name.clone()).or_insert(0);
        self.current = name;
        self.mode = Mode::Values;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        for b in tail {
            self.values_byte(b);
        }
        true
    }

    fn check_prefix(&mut self) {
        let l = &self.line;
        if self.in_delimiter_block {
            if !b"DELIMITER ;".starts_with(l) && !l.starts_with(b"DELIMITER ;") {
                self.mode = Mode::Skip;
            }
            return;
        }
        if l.starts_with(b"INSERT INTO `") {
            self.try_insert(false);
            return;
        }
        let possible = [&b"INSERT INTO `"[..], b"CREATE TABLE `", b"DELIMITER ;"]
            .iter()
            .any(|p| p.starts_with(l) || l.starts_with(p));
        if !possible || l.len() > PREFIX_KEEP {
            self.mode = Mode::Skip;
        }
    }

    fn values_byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'\'' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'\'' => self.in_string = true,
            b'(' => {
                if self.depth == 0 {
                    *self.tables.entry(self.current.clone()).or_insert(0) += 1;
                }
                self.depth += 1;
            }
            b')' => self.depth = self.depth.saturating_sub(1),
            // End of the statement: skip the rest of its line.
            b';' if self.depth == 0 => self.mode = Mode::Skip,
            _ => {}
        }
    }
}

/// Parse a backtick-quoted identifier at the start of `s`: (name, bytes used).
fn parse_ident(s: &[u8]) -> Option<(String, usize)> {
    if s.first() != Some(&b'`') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < s.len() {
        if s[i] == b'`' {
            if s.get(i + 1) == Some(&b'`') {
                out.push(b'`');
                i += 2;
                continue;
            }
            return Some((String::from_utf8_lossy(&out).into_owned(), i + 1));
        }
        out.push(s[i]);
        i += 1;
    }
    None
}

pub fn archive(spec: &MysqlSourceSpec, w: &mut ArchiveWriter) -> anyhow::Result<SourceOutput> {
    let tools = Tools::find()?;
    let conn = MyConn::for_source(spec)?;
    let version = db::run_output(
        Command::new(&tools.dump).arg("--version"),
        None,
        "dump tool --version",
    )?
    .trim()
    .to_string();
    let sel = spec.selection();
    let server_version = conn.query(
        &tools,
        sel.names().first().map(String::as_str),
        "SELECT VERSION()",
    )?;
    let names: Vec<String> = if sel.all {
        conn.query(&tools, None, "SHOW DATABASES")?
            .lines()
            .filter(|d| !SYSTEM_SCHEMAS.contains(&d.to_ascii_lowercase().as_str()))
            .map(str::to_string)
            .collect()
    } else {
        sel.names()
    };
    let mut databases = Vec::new();
    for name in &names {
        let mut counter = DumpCounter::default();
        let mut observe = |b: &[u8]| counter.feed(b);
        let mut cmd = conn.command(&tools.dump);
        cmd.args([
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--default-character-set=utf8mb4",
            "--quick",
            "--skip-dump-date",
            "--no-tablespaces",
            "--skip-lock-tables",
            "--comments",
            "--",
        ])
        .arg(name);
        let dump: DumpFile = db::stream_dump(
            w,
            &mut cmd,
            DumpJob {
                entry: format!("{}.sql", db::entry_stem(name)),
                what: format!("dump of database {name} ({})", conn.describe()),
                complete_marker: Some("-- Dump completed"),
                observer: Some(&mut observe),
                head: None,
            },
        )?;
        tracing::info!(
            "dumped mysql database {name}: {} bytes, {} tables",
            dump.size,
            counter.tables.len()
        );
        databases.push(DumpedDatabase {
            name: name.clone(),
            dump,
            tables: counter.tables,
        });
    }
    let facts = DatabaseFacts {
        engine: "mysql".into(),
        dump_tool: version,
        server_version,
        format: "sql".into(),
        row_counts: "counted from the dump stream (rows of each table's INSERT statements), i.e. the dumped snapshot".into(),
        globals: None,
        databases,
    };
    Ok(SourceOutput {
        origin: format!("{} {}", conn.describe(), names.join(",")),
        database: Some(facts.to_value()),
    })
}

/// Load a dump into `dbname` with the client in `--sandbox` mode (refused
/// without it; see the module documentation).
fn load(
    conn: &MyConn,
    tools: &Tools,
    dir: &Path,
    dump: &DumpFile,
    dbname: &str,
) -> Result<(), LoadError> {
    tools.check_sandbox().map_err(LoadError::Refused)?;
    let input = db::open_dump(dir, dump).map_err(|e| LoadError::Failed(format!("{e:#}")))?;
    let mut c = conn.client(tools);
    c.arg("--batch").arg(format!("--database={dbname}"));
    db::feed(
        &mut c,
        input,
        &format!("{} loading the dump", tools.client_name()),
    )
    .map_err(LoadError::Failed)
}

fn counts(conn: &MyConn, tools: &Tools, dbname: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let tables = conn.query(
        tools,
        None,
        &format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
            lit(dbname)
        ),
    )?;
    let parts: Vec<String> = tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            format!(
                "SELECT {} AS t, COUNT(*) AS n FROM {}.{}",
                lit(t),
                ident(dbname),
                ident(t)
            )
        })
        .collect();
    if parts.is_empty() {
        return Ok(BTreeMap::new());
    }
    let out = conn.query(
        tools,
        None,
        &format!(
            "SELECT JSON_OBJECTAGG(q.t, q.n) FROM ({}) q",
            parts.join(" UNION ALL ")
        ),
    )?;
    db::parse_counts(&out, dbname)
}

struct TempDb<'a> {
    conn: &'a MyConn,
    tools: &'a Tools,
    name: String,
}

impl Drop for TempDb<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.conn.query(
            self.tools,
            None,
            &format!("DROP DATABASE IF EXISTS {}", ident(&self.name)),
        ) {
            tracing::error!("could not drop scratch database {}: {e:#}", self.name);
        }
    }
}

fn create_db(conn: &MyConn, tools: &Tools, name: &str) -> anyhow::Result<()> {
    conn.query(
        tools,
        None,
        &format!("CREATE DATABASE {} CHARACTER SET utf8mb4", ident(name)),
    )?;
    Ok(())
}

/// Load every dump into a scratch database on the verification server
/// (`[verify] mysql`, else the source's own) and compare row counts.
pub fn verify(
    verify_server: Option<&DbServerSpec>,
    spec: &MysqlSourceSpec,
    facts: &DatabaseFacts,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let source = spec.name.as_str();
    let tools = Tools::find()?;
    let conn = match verify_server {
        Some(v) => MyConn::for_server(v, "[verify] mysql")?,
        None => MyConn::for_source(spec)?,
    };
    if let Err(why) = tools.check_sandbox() {
        // Before any scratch database is made.
        return Ok(vec![format!(
            "source {source}: {}",
            LoadError::Refused(why)
        )]);
    }
    let mut problems = Vec::new();
    for d in &facts.databases {
        let label = format!("source {source}: database {}", d.name);
        let name = format!("backupctl_verify_{}", crate::util::random_hex(12));
        create_db(&conn, &tools, &name).with_context(|| {
            format!(
                "{label}: creating a scratch database on {}",
                conn.describe()
            )
        })?;
        let scratch = TempDb {
            conn: &conn,
            tools: &tools,
            name,
        };
        if let Err(e) = load(&conn, &tools, dir, &d.dump, &scratch.name) {
            problems.push(format!("{label}: {e}"));
            continue;
        }
        let loaded = counts(&conn, &tools, &scratch.name)?;
        problems.extend(db::compare_counts(&label, &d.tables, &loaded));
    }
    Ok(problems)
}

/// Restore into `into` on the source's server. An existing non-empty
/// database is refused unless `force`, which drops and recreates it (MySQL
/// cannot rename a database, so unlike PostgreSQL the old one is gone before
/// the load).
pub fn restore_into(
    spec: &MysqlSourceSpec,
    d: &DumpedDatabase,
    dir: &Path,
    into: &str,
    force: bool,
) -> anyhow::Result<super::postgres::LoadReport> {
    let tools = Tools::find()?;
    // Before anything on the server changes.
    tools.check_sandbox().map_err(|why| {
        CodedError::failure(format!("database {}: {}", d.name, LoadError::Refused(why)))
    })?;
    let conn = MyConn::for_source(spec)?;
    let exists = conn.query(
        &tools,
        None,
        &format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            lit(into)
        ),
    )? != "0";
    let mut replaced = false;
    if exists {
        let n: u64 = conn
            .query(
                &tools,
                None,
                &format!(
                    "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {0}) + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {0})",
                    lit(into)
                ),
            )?
            .parse()
            .unwrap_or(0);
        if n > 0 && !force {
            return Err(CodedError::usage(format!(
                "database {into} on {} is not empty ({n} tables, views or routines); pass --force to replace it",
                conn.describe()
            ))
            .into());
        }
        if n > 0 {
            conn.query(&tools, None, &format!("DROP DATABASE {}", ident(into)))?;
            create_db(&conn, &tools, into)?;
            replaced = true;
        }
    } else {
        create_db(&conn, &tools, into)?;
    }
    if let Err(e) = load(&conn, &tools, dir, &d.dump, into) {
        return Err(
            CodedError::failure(format!("database {}, loading into {into}: {e}", d.name)).into(),
        );
    }
    let loaded = counts(&conn, &tools, into)?;
    let problems = db::compare_counts(&format!("database {into}"), &d.tables, &loaded);
    anyhow::ensure!(
        problems.is_empty(),
        "restored, but row counts differ from the dump: {}",
        problems.join("; ")
    );
    Ok(super::postgres::LoadReport {
        database: into.to_string(),
        server: conn.describe(),
        tables: loaded.len(),
        rows: loaded.values().sum(),
        replaced_existing: replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts_tuples_not_parentheses_in_strings() {
        let dump = b"-- header\nCREATE TABLE `a``b` (\n  `id` int\n);\nCREATE TABLE `empty` (\n `x` int);\nINSERT INTO `a``b` VALUES (1,'x(y)\\'),(z'),(2,NULL),(3,0xABCD);\nINSERT INTO `a``b` VALUES (4,'a\nb');\nINSERT INTO `a``b` VALUES\n(5,'x'),\n(6,'(');\nDELIMITER ;;\nINSERT INTO `log` VALUES (NEW.id);\nDELIMITER ;\n-- Dump completed\n";
        // Feed in awkward chunk sizes.
        for chunk in [1usize, 3, 7, 1000] {
            let mut c = DumpCounter::default();
            for part in dump.chunks(chunk) {
                c.feed(part);
            }
            assert_eq!(
                c.tables.get("a`b"),
                Some(&6),
                "chunk {chunk}: {:?}",
                c.tables
            );
            assert_eq!(c.tables.get("empty"), Some(&0));
            assert!(!c.tables.contains_key("log"));
        }
    }
}
