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
//! This module is the [`Mysql`] [`Engine`]: the tools, the SQL dialect, the
//! dump command and the loader. Verify and `restore --into-database` (which
//! drops and recreates a database, as MySQL cannot rename one) are written
//! once in [`super::server_db`].
//!
//! Loading treats the dump as hostile: the client runs with `--sandbox` (MariaDB client 10.5.25, 10.6.18,
//! 10.11.8, 11.0.6 and later), which refuses the client commands that reach
//! the file system or a shell (`system`, `\!`, `source`, `tee`, ...), with
//! `--local-infile=0` (no `LOAD DATA LOCAL`: the dump cannot make the client
//! read a local file) and with `EDITOR`/`VISUAL` set to `false` (the
//! client's `edit`/`\e`, which `--sandbox` lets through, would otherwise run
//! the user's editor on input from the dump). A client without `--sandbox`
//! (Oracle's `mysql`, older MariaDB releases) does not load dumps at all.
//! SQL itself runs with the privileges of the loading user on the server
//! (`SELECT ... INTO OUTFILE`, other databases): see the README.

use super::db::{self, DumpFile, DumpJob};
use super::server_db::{Endpoint, Engine, Purpose, Replace, ServerSource};
use super::ArchiveContext;
use crate::archive::ArchiveWriter;
use crate::config::{DbServerSpec, MysqlSourceSpec, VerifySpec};
use crate::error::Context;
use std::collections::BTreeMap;
use std::io::{Read, Write};
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
    fn create(password: &str) -> crate::error::Result<OptionFile> {
        let path =
            std::env::temp_dir().join(format!("backupctl-my-{}.cnf", crate::util::random_hex(16)));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating option file {}", path.display()))?;
        // Removed again if writing fails.
        let file = OptionFile(path);
        f.write_all(option_file_text(password).as_bytes())?;
        f.sync_all()?;
        Ok(file)
    }
}

/// The option file's text: the password as a quoted option value.
fn option_file_text(password: &str) -> String {
    let esc = password.replace('\\', "\\\\").replace('"', "\\\"");
    format!("[client]\npassword=\"{esc}\"\n")
}

impl Drop for OptionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub struct Tools {
    dump: PathBuf,
    client: PathBuf,
    /// The client knows `--sandbox` (its `--help` lists it).
    sandbox: bool,
}

impl Tools {
    pub fn find() -> crate::error::Result<Tools> {
        let client = db::find_tool(&["mariadb", "mysql"], PACKAGE)?;
        let sandbox = db::ask_tool(&client, "--help").is_ok_and(|help| {
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
        let version = db::tool_version_or_path(&self.client);
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

/// A MySQL/MariaDB server and the client tools. Credentials: a temporary
/// option file holding the password, for as long as this lives.
pub struct Mysql {
    endpoint: Endpoint,
    options: Option<OptionFile>,
    tools: Tools,
}

impl Mysql {
    fn command(&self, tool: &Path) -> Command {
        let ep = &self.endpoint;
        let mut c = Command::new(tool);
        // Must come first.
        if let Some(o) = &self.options {
            c.arg(format!("--defaults-extra-file={}", o.0.display()));
        }
        if let Some(h) = &ep.host {
            c.arg(format!("--host={h}"));
        }
        if let Some(p) = ep.port {
            c.arg(format!("--port={p}"));
        }
        if let Some(u) = &ep.user {
            c.arg(format!("--user={u}"));
        }
        c.env_remove("MYSQL_PWD");
        c
    }

    /// The client, with `--sandbox` where it has it (queries in verify and
    /// restore carry table names from the loaded dump), `--local-infile=0`,
    /// and a harmless editor for `edit`/`\e`, which the sandbox lets run.
    fn client(&self) -> Command {
        let mut c = self.command(&self.tools.client);
        if self.tools.sandbox {
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

    fn query(&self, db: Option<&str>, sql: &str) -> crate::error::Result<String> {
        let mut c = self.client();
        c.args(["--batch", "--raw", "--skip-column-names", "-e", sql]);
        if let Some(d) = db {
            c.arg(format!("--database={d}"));
        }
        let what = format!(
            "{} on {}{}",
            self.tools.client_name(),
            self.describe(),
            db.map(|d| format!(" database {d}")).unwrap_or_default()
        );
        Ok(db::run_output(&mut c, None, &what)?.trim().to_string())
    }

    /// A statement outside any database.
    fn admin(&self, sql: &str) -> crate::error::Result<String> {
        self.query(None, sql)
    }
}

impl ServerSource for MysqlSourceSpec {
    type Engine = Mysql;

    fn format(&self) -> &str {
        "sql"
    }
}

impl Engine for Mysql {
    const KIND: &'static str = "mysql";
    const DEFAULT_HOST: &'static str = "localhost";
    const DEFAULT_PORT: u16 = 3306;
    const OBJECTS: &'static str = "tables, views or routines";
    const REPLACE: Replace = Replace::DropThenLoad;
    const ROW_COUNTS: &'static str = "counted from the dump stream (rows of each table's INSERT statements), i.e. the dumped snapshot";

    fn find_tools() -> crate::error::Result<()> {
        Tools::find().map(drop)
    }

    fn open(endpoint: Endpoint, _format: &str) -> crate::error::Result<Mysql> {
        let tools = Tools::find()?;
        let options = endpoint.password.as_deref().map(OptionFile::create);
        Ok(Mysql {
            options: options.transpose()?,
            endpoint,
            tools,
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn verify_server(servers: &VerifySpec) -> Option<&DbServerSpec> {
        servers.mysql.as_ref()
    }

    fn ident(s: &str) -> String {
        format!("`{}`", s.replace('`', "``"))
    }

    /// Backslash escapes are on by default.
    fn lit(s: &str) -> String {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    fn exists(&self, db: &str) -> crate::error::Result<bool> {
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            Self::lit(db)
        );
        Ok(self.admin(&sql)? != "0")
    }

    fn objects(&self, db: &str) -> crate::error::Result<u64> {
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {0}) + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {0})",
            Self::lit(db)
        );
        Ok(self.admin(&sql)?.parse().unwrap_or(0))
    }

    fn create_db(&self, db: &str) -> crate::error::Result<()> {
        let sql = format!("CREATE DATABASE {} CHARACTER SET utf8mb4", Self::ident(db));
        self.admin(&sql).map(drop)
    }

    fn drop_db(&self, db: &str) -> crate::error::Result<()> {
        self.admin(&format!("DROP DATABASE IF EXISTS {}", Self::ident(db)))
            .map(drop)
    }

    fn rename_db(&self, _from: &str, _to: &str) -> crate::error::Result<()> {
        crate::bail!("MySQL cannot rename a database")
    }

    fn counts(&self, db: &str) -> crate::error::Result<BTreeMap<String, u64>> {
        let tables = self.admin(&format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
            Self::lit(db)
        ))?;
        let Some(sql) = count_sql(db, tables.lines().filter(|t| !t.is_empty())) else {
            return Ok(BTreeMap::new());
        };
        db::parse_counts(&self.admin(&sql)?, db)
    }

    /// Loading needs `--sandbox`.
    fn check_loader(&self) -> Result<(), String> {
        self.tools.check_sandbox()
    }

    fn feed(&self, input: Box<dyn Read + Send>, db: &str, _purpose: Purpose) -> Result<(), String> {
        let mut c = self.client();
        c.arg("--batch").arg(format!("--database={db}"));
        let what = format!("{} loading the dump", self.tools.client_name());
        db::feed(&mut c, input, &what)
    }

    fn dump_tool(&self) -> &Path {
        &self.tools.dump
    }

    fn server_version(&self, first: Option<&str>) -> crate::error::Result<String> {
        self.query(first, "SELECT VERSION()")
    }

    /// All but the system schemas.
    fn list_databases(&self) -> crate::error::Result<Vec<String>> {
        Ok(self
            .admin("SHOW DATABASES")?
            .lines()
            .filter(|d| !SYSTEM_SCHEMAS.contains(&d.to_ascii_lowercase().as_str()))
            .map(str::to_string)
            .collect())
    }

    /// Row counts from the dump stream itself ([`DumpCounter`]).
    fn dump_database(
        &self,
        w: &mut ArchiveWriter,
        name: &str,
        _ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<(DumpFile, BTreeMap<String, u64>)> {
        let mut counter = DumpCounter::default();
        let mut observe = |b: &[u8]| counter.feed(b);
        let mut cmd = self.command(&self.tools.dump);
        cmd.args(DUMP_OPTIONS).arg("--").arg(name);
        let job = DumpJob {
            entry: format!("{}.sql", db::entry_stem(name)),
            what: format!("dump of database {name} ({})", self.describe()),
            complete_marker: Some("-- Dump completed"),
            observer: Some(&mut observe),
            head: None,
        };
        let dump = db::stream_dump(w, &mut cmd, job)?;
        Ok((dump, counter.tables))
    }
}

/// mysqldump's options (see the module documentation).
const DUMP_OPTIONS: &[&str] = &[
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
];

/// One statement counting the rows of `tables` of `db` as a JSON object
/// (None without tables).
fn count_sql<'a>(db: &str, tables: impl Iterator<Item = &'a str>) -> Option<String> {
    let parts: Vec<String> = tables
        .map(|t| {
            format!(
                "SELECT {} AS t, COUNT(*) AS n FROM {}.{}",
                Mysql::lit(t),
                Mysql::ident(db),
                Mysql::ident(t)
            )
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "SELECT JSON_OBJECTAGG(q.t, q.n) FROM ({}) q",
            parts.join(" UNION ALL ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_backticks_quotes_and_backslashes() {
        assert_eq!(Mysql::ident("wp"), "`wp`");
        assert_eq!(Mysql::ident("a`b"), "`a``b`");
        assert_eq!(Mysql::lit("it's"), "'it\\'s'");
        assert_eq!(Mysql::lit("a\\'b"), "'a\\\\\\'b'");
        assert_eq!(parse_ident(b"`a``b` VALUES"), Some(("a`b".to_string(), 6)));
        assert_eq!(parse_ident(b"`open"), None);
        assert_eq!(parse_ident(b"plain"), None);
    }

    #[test]
    fn row_count_statement_quotes_every_name() {
        assert_eq!(count_sql("d", std::iter::empty()), None);
        let sql = count_sql("my`db", ["t", "o'k"].into_iter()).unwrap();
        assert_eq!(
            sql,
            "SELECT JSON_OBJECTAGG(q.t, q.n) FROM (SELECT 't' AS t, COUNT(*) AS n FROM \
             `my``db`.`t` UNION ALL SELECT 'o\\'k' AS t, COUNT(*) AS n FROM `my``db`.`o'k`) q"
        );
    }

    #[test]
    fn option_file_quotes_the_password() {
        assert_eq!(
            option_file_text("p\"w\\x"),
            "[client]\npassword=\"p\\\"w\\\\x\"\n"
        );
    }

    #[test]
    fn servers_are_described_without_the_password() {
        let ep = Endpoint {
            password: Some("secret".into()),
            ..Default::default()
        };
        assert_eq!(
            ep.describe::<Mysql>(),
            "mysql (default user)@localhost:3306"
        );
        let ep = Endpoint {
            host: Some("db".into()),
            port: Some(3307),
            user: Some("backup".into()),
            password: None,
        };
        assert_eq!(ep.describe::<Mysql>(), "mysql backup@db:3307");
    }

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
