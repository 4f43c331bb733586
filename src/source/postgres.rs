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
//!
//! Deduplication: an unchanged database must give the same dump bytes.
//! Custom-format dumps are written uncompressed (`--compress=0`: zstd
//! compresses the archive) and their header's creation time, the one part
//! that differs between two dumps of an unchanged database, is rewritten to
//! a fixed date as it streams by ([`normalise_custom_header`]). Plain dumps
//! (and `pg_dumpall`) from pg_dump releases with psql's `\restrict` guard
//! would carry a new random key each time; they get `--restrict-key` with a
//! key derived from a secret kept in the state directory
//! ([`restrict_key`]), stable across runs but unknown to the server.
//!
//! This module is the [`Postgres`] [`Engine`]: the tools, the SQL dialect,
//! the dump commands and formats, and the loaders. Verify and `restore
//! --into-database` (load into a temporary database, then rename it into
//! place) are written once in [`super::server_db`].
//!
//! Loading treats the dump as hostile: nothing in it may run commands on
//! this host ([`Postgres`]'s `check_loader` and `feed`).
//!
//! - Custom format: `pg_restore --format=custom`, reading the dump from its
//!   stdin. pg_restore has no meta-commands; it only sends the archive's SQL
//!   to the server. Nothing else comes from the archive: no `--use-list`,
//!   no environment, and the database is ours.
//! - Plain SQL: `psql -X` (no psqlrc) with `ON_ERROR_STOP`, and before the
//!   first byte of the dump the line `\restrict KEY` with a fresh random key
//!   made for this load (never written anywhere, never from the dump): psql
//!   then refuses every backslash meta-command (`\!`, `\o |cmd`, `\copy ...
//!   program`, `\i`, `\set`, `\gexec`, `\connect`, ...) except
//!   `\unrestrict` with that key, which no dump can know. The dump's own
//!   guard lines (`\restrict K` ... `\unrestrict K`, written by pg_dump) would
//!   fail inside ours, so exactly those lines are blanked as the dump streams
//!   by ([`OwnGuardFilter`]); that gives a dump nothing, since it stays under
//!   our key either way. A psql without `\restrict` (releases before 13.22,
//!   14.19, 15.14, 16.10, 17.6) does not load plain dumps at all.
//!
//! What the restriction cannot stop is SQL the server itself runs: as a
//! superuser a dump can use `COPY ... TO/FROM PROGRAM` (commands as the
//! server's OS user, on the server's host), untrusted languages or role
//! changes. Verify logs a warning when it loads as a superuser; the README
//! recommends a `[verify] postgres` role without superuser rights.

use super::db::{self, DatabaseFacts, DumpFile, DumpJob, HeadRewrite};
use super::server_db::{Endpoint, Engine, Purpose, Replace, ServerSource};
use super::ArchiveContext;
use crate::archive::ArchiveWriter;
use crate::config::{DbServerSpec, PostgresSourceSpec, VerifySpec};
use crate::error::Context;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const PACKAGE: &str = "postgresql-client";
const GLOBALS_ENTRY: &str = "globals.pg_dumpall.sql";
/// The last line of a complete `pg_dumpall` dump.
const GLOBALS_COMPLETE: &str = "PostgreSQL database cluster dump complete";

/// Custom-format archive versions 1.N whose header layout is known (the
/// layout has been the same since 1.7, except for the compression field,
/// which is a single byte from 1.15 on: PostgreSQL 16).
const CUSTOM_MINOR_VERSIONS: std::ops::RangeInclusive<u8> = 7..=16;

/// The creation time written into custom-format headers: 2000-01-01
/// 00:00:00 as pg_dump's `struct tm` fields (sec, min, hour, mday, mon
/// (0-based), year - 1900, isdst). `pg_restore -l` shows it as "Archive
/// created at"; the real time is the snapshot's.
pub const FIXED_CREATION_TIME: [i64; 7] = [0, 0, 0, 1, 0, 100, 0];

/// The longest custom-format header prefix that holds the creation time:
/// magic and 6 bytes, the compression field and 7 integers of 8 bytes.
pub const CUSTOM_HEAD_LEN: usize = 11 + 9 + 7 * 9;

/// Read pg_dump's `WriteInt` encoding at `at`: a sign byte (0 or 1), then
/// the magnitude in `size` bytes, least significant first.
fn read_int(h: &[u8], at: usize, size: usize) -> Result<i128, String> {
    let b = h
        .get(at..at + 1 + size)
        .ok_or_else(|| format!("the header is truncated ({} bytes)", h.len()))?;
    let magnitude = b[1..]
        .iter()
        .rev()
        .fold(0i128, |acc, &x| (acc << 8) | x as i128);
    match b[0] {
        0 => Ok(magnitude),
        1 => Ok(-magnitude),
        s => Err(format!("integer at byte {at} has sign byte {s}")),
    }
}

fn write_int(h: &mut [u8], at: usize, size: usize, v: i64) {
    h[at] = u8::from(v < 0);
    let mut m = v.unsigned_abs();
    for b in &mut h[at + 1..at + 1 + size] {
        *b = (m & 0xff) as u8;
        m >>= 8;
    }
}

/// Rewrite the creation time in the start of a pg_dump custom-format
/// archive (`h`, at least [`CUSTOM_HEAD_LEN`] bytes unless the dump is
/// shorter) to [`FIXED_CREATION_TIME`], leaving every other byte alone.
///
/// The header, as `WriteHead` in pg_backup_archiver.c writes it: "PGDMP",
/// version bytes major, minor, revision, intSize, offSize, the format byte
/// (1 = custom), the compression field (an integer before archive version
/// 1.15, one byte, the algorithm, from 1.15 on), then seven integers
/// sec, min, hour, mday, mon, year, isdst (then strings: database name and
/// versions). Integers are a sign byte and intSize bytes, little-endian.
///
/// Strict: anything unexpected (no magic, an unknown version, intSize not 4
/// or 8, another format, a field out of range, too few bytes) is an error
/// naming it, and `h` is left unchanged.
pub fn normalise_custom_header(h: &mut [u8]) -> Result<(), String> {
    if h.len() < 11 {
        return Err(format!("the header is truncated ({} bytes)", h.len()));
    }
    if &h[..5] != b"PGDMP" {
        return Err("no PGDMP magic at the start".into());
    }
    let (major, minor, rev) = (h[5], h[6], h[7]);
    let (int_size, off_size, format) = (h[8] as usize, h[9], h[10]);
    if major != 1 || !CUSTOM_MINOR_VERSIONS.contains(&minor) {
        return Err(format!("unknown archive version {major}.{minor}.{rev}"));
    }
    if int_size != 4 && int_size != 8 {
        return Err(format!("unexpected integer size {int_size}"));
    }
    if off_size != 4 && off_size != 8 {
        return Err(format!("unexpected offset size {off_size}"));
    }
    if format != 1 {
        return Err(format!("format byte {format} is not the custom format (1)"));
    }
    let step = 1 + int_size;
    let mut at = 11;
    if minor >= 15 {
        at += 1;
    } else {
        read_int(h, at, int_size)?;
        at += step;
    }
    const FIELDS: [(&str, i128, i128); 7] = [
        ("tm_sec", 0, 61),
        ("tm_min", 0, 59),
        ("tm_hour", 0, 23),
        ("tm_mday", 1, 31),
        ("tm_mon", 0, 11),
        ("tm_year", 0, i32::MAX as i128),
        ("tm_isdst", i32::MIN as i128, i32::MAX as i128),
    ];
    for (i, (name, lo, hi)) in FIELDS.iter().enumerate() {
        let v = read_int(h, at + i * step, int_size)?;
        if v < *lo || v > *hi {
            return Err(format!("creation time field {name} is {v}"));
        }
    }
    for (i, v) in FIXED_CREATION_TIME.iter().enumerate() {
        write_int(h, at + i * step, int_size, *v);
    }
    Ok(())
}

/// [`normalise_custom_header`] as a [`HeadRewrite`] of a custom dump.
const CUSTOM_HEAD: HeadRewrite = HeadRewrite {
    len: CUSTOM_HEAD_LEN,
    rewrite: |h| {
        normalise_custom_header(h).map_err(|why| {
            format!(
                "custom-format header not recognised ({why}); archived as pg_dump wrote it, \
                 creation time included, so this dump will not deduplicate"
            )
        })
    },
};

/// The file in the state directory holding the secret that
/// [`restrict_key`] derives keys from (64 hex digits, mode 0600).
const RESTRICT_SECRET_FILE: &str = "pg-restrict-key.secret";

/// The secret in `<state_dir>/pg-restrict-key.secret`, created on first use.
fn restrict_secret(state_dir: &Path) -> crate::error::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(RESTRICT_SECRET_FILE);
    let valid = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !path.exists() {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
            .context("reading /dev/urandom")?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Written in full under a temporary name, then linked into place: a
        // concurrent run either creates the file or finds a complete one.
        let tmp = state_dir.join(format!(
            ".{RESTRICT_SECRET_FILE}.{}",
            crate::util::random_hex(12)
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{secret}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| match std::fs::hard_link(&tmp, &path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            });
        let _ = std::fs::remove_file(&tmp);
        written.with_context(|| format!("creating {}", path.display()))?;
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let secret = text.trim();
    crate::ensure!(
        valid(secret),
        "{} does not hold 64 hex digits; delete it and a new secret is made \
         (plain dumps then change once)",
        path.display()
    );
    Ok(secret.to_string())
}

/// The psql `\restrict` key for the plain dump `what` (a database name, or
/// the globals dump). pg_dump would choose a random key per dump (a guard
/// against a hostile server smuggling psql meta-commands into the dump), so
/// no two plain dumps would be equal. This key is as unguessable for the
/// server but stable: the BLAKE3-derived key of a random secret kept in the
/// state directory and of `what` (64 hex digits). A lost state directory
/// means a new secret, and plain dumps that change once.
pub fn restrict_key(state_dir: &Path, what: &str) -> crate::error::Result<String> {
    let secret = restrict_secret(state_dir)?;
    let mut material = secret.into_bytes();
    material.push(0);
    material.extend_from_slice(what.as_bytes());
    let key = blake3::derive_key("backupctl 2025-12 pg_dump --restrict-key", &material);
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Every table (ordinary and partitioned, not extension-owned) with its row
/// count, as one JSON object on one line.
const COUNT_SQL: &str = "SELECT coalesce(json_object_agg(t.name, t.n ORDER BY t.name), '{}') FROM (SELECT format('%I.%I', n.nspname, c.relname) AS name, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')) t";

/// Relations that make a database "not empty" for restore.
const USER_OBJECTS_SQL: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

/// The database administrative statements run in.
const MAINTENANCE_DB: &str = "postgres";

/// The client tools, found on PATH.
pub struct Tools {
    psql: PathBuf,
    pg_dump: PathBuf,
    pg_dumpall: PathBuf,
    pg_restore: PathBuf,
}

impl Tools {
    pub fn find() -> crate::error::Result<Tools> {
        Ok(Tools {
            psql: db::find_tool(&["psql"], PACKAGE)?,
            pg_dump: db::find_tool(&["pg_dump"], PACKAGE)?,
            pg_dumpall: db::find_tool(&["pg_dumpall"], PACKAGE)?,
            pg_restore: db::find_tool(&["pg_restore"], PACKAGE)?,
        })
    }

    /// Can this psql load a plain dump safely, i.e. does it know
    /// `\restrict`? Err says why not (for people).
    fn check_psql_restrict(&self) -> Result<(), String> {
        let help = db::ask_tool(&self.psql, "--help=commands").map_err(|e| format!("{e:#}"))?;
        if help.contains("\\restrict") {
            return Ok(());
        }
        Err(format!(
            "{} has no \\restrict, without which a plain dump could run \
             shell commands through psql meta-commands (\\! and others); plain dumps need \
             psql from PostgreSQL {MIN_PSQL_RESTRICT} or later (install a newer {PACKAGE})",
            db::tool_version_or_path(&self.psql)
        ))
    }
}

/// Does this pg_dump / pg_dumpall know `--restrict-key` (and so write
/// `\restrict` lines into plain dumps)? Older releases do neither.
fn has_restrict_key(tool: &Path) -> crate::error::Result<bool> {
    Ok(db::ask_tool(tool, "--help")?.contains("--restrict-key"))
}

/// `--restrict-key=KEY` for the plain dump `what` ([`restrict_key`]), when
/// the dump tool `knows` the option.
fn restrict_key_arg(
    knows: bool,
    state_dir: &Path,
    what: &str,
) -> crate::error::Result<Option<String>> {
    if !knows {
        return Ok(None);
    }
    Ok(Some(format!(
        "--restrict-key={}",
        restrict_key(state_dir, what)?
    )))
}

/// The first psql releases of each branch with `\restrict` (August 2025).
pub const MIN_PSQL_RESTRICT: &str = "13.22, 14.19, 15.14, 16.10 or 17.6";

/// A PostgreSQL server and the client tools, loading dumps in one source's
/// format. Credentials: PGPASSWORD in the tools' environment.
pub struct Postgres {
    endpoint: Endpoint,
    tools: Tools,
    /// "custom" or "plain": the configured source's.
    format: String,
    /// pg_dump knows `--restrict-key` (asked once, on the first plain dump).
    dump_restrict_key: OnceCell<bool>,
}

impl Postgres {
    fn plain(&self) -> bool {
        self.format == "plain"
    }

    /// A command for a PostgreSQL client tool with the connection in its
    /// environment.
    fn command(&self, tool: &Path) -> Command {
        let ep = &self.endpoint;
        let mut c = Command::new(tool);
        c.env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "backupctl")
            .env_remove("PGDATABASE");
        if let Some(h) = &ep.host {
            c.env("PGHOST", h);
        }
        if let Some(p) = ep.port {
            c.env("PGPORT", p.to_string());
        }
        if let Some(u) = &ep.user {
            c.env("PGUSER", u);
        }
        if let Some(pw) = &ep.password {
            c.env("PGPASSWORD", pw);
        }
        c
    }

    fn psql(&self, dbname: &str) -> Command {
        let mut c = self.command(&self.tools.psql);
        c.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(dbname);
        c
    }

    /// Run one SQL statement in `dbname`, returning its trimmed output.
    fn query(&self, dbname: &str, sql: &str) -> crate::error::Result<String> {
        let what = format!("psql on database {dbname} ({})", self.describe());
        let out = db::run_output(self.psql(dbname).arg("-c").arg(sql), None, &what)?;
        Ok(out.trim().to_string())
    }

    /// Is the role we log in as a superuser? (Then SQL in a dump, such as
    /// `COPY ... TO PROGRAM`, can run commands on the database server.)
    fn is_superuser(&self) -> crate::error::Result<bool> {
        let sql = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user";
        Ok(self.query(MAINTENANCE_DB, sql)? == "t")
    }

    /// Does pg_dump know `--restrict-key`? (Asked once.)
    fn pg_dump_knows_restrict_key(&self) -> crate::error::Result<bool> {
        if let Some(k) = self.dump_restrict_key.get() {
            return Ok(*k);
        }
        let k = has_restrict_key(&self.tools.pg_dump)?;
        Ok(*self.dump_restrict_key.get_or_init(|| k))
    }
}

impl ServerSource for PostgresSourceSpec {
    type Engine = Postgres;

    fn format(&self) -> &str {
        &self.format
    }
}

impl Engine for Postgres {
    const KIND: &'static str = "postgres";
    const DEFAULT_HOST: &'static str = "(local socket)";
    const DEFAULT_PORT: u16 = 5432;
    const OBJECTS: &'static str = "tables, views or sequences";
    const REPLACE: Replace = Replace::LoadThenRename;
    const ROW_COUNTS: &'static str =
        "counted in the exported snapshot that pg_dump --snapshot dumped";

    fn find_tools() -> crate::error::Result<()> {
        Tools::find().map(drop)
    }

    fn open(endpoint: Endpoint, format: &str) -> crate::error::Result<Postgres> {
        Ok(Postgres {
            endpoint,
            tools: Tools::find()?,
            format: format.to_string(),
            dump_restrict_key: OnceCell::new(),
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn verify_server(servers: &VerifySpec) -> Option<&DbServerSpec> {
        servers.postgres.as_ref()
    }

    /// standard_conforming_strings is on since 9.1.
    fn lit(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    fn ident(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }

    fn exists(&self, db: &str) -> crate::error::Result<bool> {
        let sql = format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            Self::lit(db)
        );
        Ok(self.query(MAINTENANCE_DB, &sql)? != "0")
    }

    fn objects(&self, db: &str) -> crate::error::Result<u64> {
        Ok(self.query(db, USER_OBJECTS_SQL)?.parse().unwrap_or(0))
    }

    fn create_db(&self, db: &str) -> crate::error::Result<()> {
        let sql = format!("CREATE DATABASE {} TEMPLATE template0", Self::ident(db));
        self.query(MAINTENANCE_DB, &sql).map(drop)
    }

    fn drop_db(&self, db: &str) -> crate::error::Result<()> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", Self::ident(db));
        self.query(MAINTENANCE_DB, &sql).map(drop)
    }

    fn rename_db(&self, from: &str, to: &str) -> crate::error::Result<()> {
        let sql = format!(
            "ALTER DATABASE {} RENAME TO {}",
            Self::ident(from),
            Self::ident(to)
        );
        self.query(MAINTENANCE_DB, &sql).map(drop)
    }

    fn counts(&self, db: &str) -> crate::error::Result<BTreeMap<String, u64>> {
        db::parse_counts(&self.query(db, COUNT_SQL)?, db)
    }

    /// Custom dumps go to pg_restore, which has no meta-commands; plain
    /// ones need a psql with `\restrict`.
    fn check_loader(&self) -> Result<(), String> {
        if self.plain() {
            self.tools.check_psql_restrict()
        } else {
            Ok(())
        }
    }

    /// In one transaction. Custom dumps: `pg_restore --format=custom` from
    /// stdin (verify: without ownership and privileges, since roles may
    /// differ). Plain dumps: `psql -X -v ON_ERROR_STOP=1` after a
    /// `\restrict` line with a key of this load's own, with the dump's own
    /// guard lines blanked ([`OwnGuardFilter`]).
    fn feed(&self, input: Box<dyn Read + Send>, db: &str, purpose: Purpose) -> Result<(), String> {
        if self.plain() {
            // Alphanumeric, like pg_dump's keys; 256 random bits.
            let key = crate::util::random_hex(64);
            let guarded = std::io::Cursor::new(format!("\\restrict {key}\n").into_bytes())
                .chain(OwnGuardFilter::new(input));
            let mut c = self.psql(db);
            c.arg("--single-transaction");
            return db::feed(&mut c, Box::new(guarded), "psql loading the dump");
        }
        let mut c = self.command(&self.tools.pg_restore);
        c.args([
            "-w",
            "--format=custom",
            "--exit-on-error",
            "--single-transaction",
            "-d",
            db,
        ]);
        if purpose == Purpose::Verify {
            c.args(["--no-owner", "--no-privileges"]);
        }
        db::feed(&mut c, input, "pg_restore")
    }

    /// Roles are cluster-wide: the globals dump is never loaded into a
    /// verification server, only checked to be complete.
    fn before_verify(
        &self,
        source: &str,
        facts: &DatabaseFacts,
        dir: &Path,
    ) -> crate::error::Result<Vec<String>> {
        if !facts.databases.is_empty() && self.is_superuser().unwrap_or(false) {
            tracing::warn!(
                "source {source}: verify loads dumps as a superuser ({}): SQL in a dump, such as \
                 COPY ... TO PROGRAM, can run commands on the database server; configure \
                 [verify] postgres with a role that is not a superuser (see the README)",
                self.describe()
            );
        }
        let mut problems = Vec::new();
        if let Some(g) = &facts.globals {
            let mut text = String::new();
            db::open_dump(dir, g)?.read_to_string(&mut text)?;
            if !text.contains(GLOBALS_COMPLETE) {
                problems.push(format!("source {source}: the globals dump is incomplete"));
            }
        }
        Ok(problems)
    }

    fn dump_tool(&self) -> &Path {
        &self.tools.pg_dump
    }

    fn server_version(&self, first: Option<&str>) -> crate::error::Result<String> {
        self.query(first.unwrap_or(MAINTENANCE_DB), "SHOW server_version")
    }

    fn list_databases(&self) -> crate::error::Result<Vec<String>> {
        let sql = "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn \
                   ORDER BY datname";
        Ok(self
            .query(MAINTENANCE_DB, sql)?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// `pg_dumpall --globals-only`: roles, tablespaces.
    fn dump_globals(
        &self,
        w: &mut ArchiveWriter,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<Option<DumpFile>> {
        let tool = &self.tools.pg_dumpall;
        let mut cmd = self.command(tool);
        cmd.args(["-w", "--globals-only", "-l", MAINTENANCE_DB]);
        let knows = has_restrict_key(tool)?;
        cmd.args(restrict_key_arg(
            knows,
            ctx.state_dir,
            "pg_dumpall --globals-only",
        )?);
        let job = DumpJob {
            entry: GLOBALS_ENTRY.into(),
            what: format!("pg_dumpall --globals-only ({})", self.describe()),
            complete_marker: Some(GLOBALS_COMPLETE),
            observer: None,
            head: None,
        };
        Ok(Some(db::stream_dump(w, &mut cmd, job)?))
    }

    /// `pg_dump --snapshot` of a snapshot exported by a session that counts
    /// the rows in that same snapshot.
    fn dump_database(
        &self,
        w: &mut ArchiveWriter,
        name: &str,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<(DumpFile, BTreeMap<String, u64>)> {
        let plain = self.plain();
        let entry = dump_entry(name, &self.format);
        crate::ensure!(
            entry != GLOBALS_ENTRY,
            "database {name:?}: its dump name clashes with the globals dump"
        );
        let knows = plain && self.pg_dump_knows_restrict_key()?;
        let restrict = restrict_key_arg(knows, ctx.state_dir, name)?;
        let (session, snapshot, tables) = SnapshotSession::open(self, name)?;
        let mut cmd = self.command(&self.tools.pg_dump);
        cmd.arg("-w")
            .arg(format!("--format={}", self.format))
            .arg(format!("--snapshot={snapshot}"));
        if !plain {
            cmd.arg("--compress=0");
        }
        cmd.args(restrict).arg("-d").arg(name);
        let job = DumpJob {
            entry,
            what: format!("pg_dump of database {name}"),
            complete_marker: plain.then_some("PostgreSQL database dump complete"),
            observer: None,
            head: (!plain).then_some(CUSTOM_HEAD),
        };
        let dumped = db::stream_dump(w, &mut cmd, job);
        let closed = session.close();
        let dump = dumped?;
        closed?;
        Ok((dump, tables))
    }
}

/// Blanks a plain dump's own psql guard lines as it streams by: the line
/// `\restrict K` (the first such line sets K) and every line `\unrestrict K`
/// with that same K, each exactly so on a line of its own; each becomes an
/// empty line. Every other byte passes unchanged. pg_dump (13.22, 14.19,
/// 15.14, 16.10, 17.6 and later) writes one such pair around a plain dump;
/// loaded under our own `\restrict` (see [`Postgres`]), a nested `\restrict` is an
/// error, and so is an `\unrestrict` with a key other than ours.
///
/// Blanking these lines whatever K is (ours from [`restrict_key`], or
/// pg_dump's random one, or a planted dump's) gives a dump nothing: psql
/// stays restricted under a key the dump cannot know, so every other
/// meta-command still fails. A line with another key passes through and
/// fails the load.
pub struct OwnGuardFilter<R> {
    inner: R,
    out: Vec<u8>,
    pos: usize,
    /// The start of the current line while it may still be a guard line.
    line: Vec<u8>,
    state: LineState,
    key: Option<Vec<u8>>,
    done: bool,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum LineState {
    /// At the start of a line.
    Start,
    /// Collecting a line that starts with a backslash.
    Candidate,
    /// Inside a line that is not a guard line: pass to its end.
    Pass,
}

/// The longest guard line looked at (pg_dump's keys are 64 characters).
const GUARD_LINE_MAX: usize = 12 + 256;

const RESTRICT: &[u8] = b"\\restrict ";
const UNRESTRICT: &[u8] = b"\\unrestrict ";

/// `\restrict KEY` or `\unrestrict KEY` (KEY alphanumeric, as pg_dump
/// requires): (is it `\restrict`, KEY).
fn guard_line(line: &[u8]) -> Option<(bool, &[u8])> {
    let (restrict, key) = if let Some(k) = line.strip_prefix(RESTRICT) {
        (true, k)
    } else {
        (false, line.strip_prefix(UNRESTRICT)?)
    };
    (!key.is_empty() && key.iter().all(u8::is_ascii_alphanumeric)).then_some((restrict, key))
}

/// Could `prefix` still grow into a guard line?
fn may_be_guard(prefix: &[u8]) -> bool {
    [RESTRICT, UNRESTRICT].iter().any(|p| {
        if prefix.len() <= p.len() {
            p.starts_with(prefix)
        } else {
            prefix.starts_with(p) && prefix[p.len()..].iter().all(u8::is_ascii_alphanumeric)
        }
    })
}

impl<R: Read> OwnGuardFilter<R> {
    pub fn new(inner: R) -> OwnGuardFilter<R> {
        OwnGuardFilter {
            inner,
            out: Vec::new(),
            pos: 0,
            line: Vec::new(),
            state: LineState::Start,
            key: None,
            done: false,
            buf: vec![0; 64 << 10],
        }
    }

    /// A complete candidate line (without its newline): is it one of the
    /// dump's own guard lines?
    fn is_own_guard(&mut self) -> bool {
        match guard_line(&self.line) {
            Some((true, k)) if self.key.is_none() => {
                self.key = Some(k.to_vec());
                true
            }
            Some((_, k)) => self.key.as_deref() == Some(k),
            None => false,
        }
    }

    fn process(&mut self, buf: &[u8]) {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                LineState::Start => {
                    self.state = if buf[i] == b'\\' {
                        self.line.clear();
                        LineState::Candidate
                    } else {
                        LineState::Pass
                    };
                }
                LineState::Pass => match buf[i..].iter().position(|&b| b == b'\n') {
                    Some(n) => {
                        self.out.extend_from_slice(&buf[i..=i + n]);
                        i += n + 1;
                        self.state = LineState::Start;
                    }
                    None => {
                        self.out.extend_from_slice(&buf[i..]);
                        i = buf.len();
                    }
                },
                LineState::Candidate => {
                    let b = buf[i];
                    i += 1;
                    if b == b'\n' {
                        if !self.is_own_guard() {
                            self.out.extend_from_slice(&self.line);
                        }
                        self.out.push(b'\n');
                        self.line.clear();
                        self.state = LineState::Start;
                    } else {
                        self.line.push(b);
                        if self.line.len() > GUARD_LINE_MAX || !may_be_guard(&self.line) {
                            self.out.append(&mut self.line);
                            self.state = LineState::Pass;
                        }
                    }
                }
            }
        }
    }

    /// The end of the dump: a last line without a newline.
    fn finish(&mut self) {
        if self.state == LineState::Candidate && !self.is_own_guard() {
            self.out.append(&mut self.line);
        }
        self.line.clear();
        self.done = true;
    }
}

impl<R: Read> Read for OwnGuardFilter<R> {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done || dst.is_empty() {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let mut buf = std::mem::take(&mut self.buf);
            let got = self.inner.read(&mut buf);
            let n = match got {
                Ok(n) => n,
                Err(e) => {
                    self.buf = buf;
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            if n == 0 {
                self.finish();
            } else {
                self.process(&buf[..n]);
            }
            self.buf = buf;
        }
        let n = dst.len().min(self.out.len() - self.pos);
        dst[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
        pg: &Postgres,
        dbname: &str,
    ) -> crate::error::Result<(SnapshotSession, String, BTreeMap<String, u64>)> {
        let what = format!("database {dbname} ({})", pg.describe());
        let mut child = pg
            .psql(dbname)
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
            crate::bail!(
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
    fn close(mut self) -> crate::error::Result<()> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        let status = self.child.wait()?;
        let e = self.err.join().unwrap_or_default();
        crate::ensure!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(Postgres::ident("shop"), "\"shop\"");
        assert_eq!(Postgres::ident("Odd \"Name\""), "\"Odd \"\"Name\"\"\"");
        assert_eq!(Postgres::lit("it's"), "'it''s'");
        // standard_conforming_strings: a backslash is just a backslash.
        assert_eq!(Postgres::lit("a\\b"), "'a\\b'");
    }

    #[test]
    fn dump_entries_are_named_after_the_database_and_format() {
        assert_eq!(dump_entry("shop", "custom"), "shop.pgdump");
        assert_eq!(dump_entry("shop", "plain"), "shop.sql");
        assert_eq!(dump_entry("a/b", "plain"), "a%2Fb.sql");
        // The one database whose dump dump_database refuses.
        assert_eq!(dump_entry("globals.pg_dumpall", "plain"), GLOBALS_ENTRY);
    }

    #[test]
    fn restrict_key_option_only_for_tools_that_know_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(restrict_key_arg(false, dir.path(), "shop").unwrap(), None);
        assert!(!dir.path().join(RESTRICT_SECRET_FILE).exists());
        let arg = restrict_key_arg(true, dir.path(), "shop").unwrap().unwrap();
        let key = restrict_key(dir.path(), "shop").unwrap();
        assert_eq!(arg, format!("--restrict-key={key}"));
    }

    #[test]
    fn servers_are_described_without_the_password() {
        let ep = Endpoint {
            password: Some("secret".into()),
            ..Default::default()
        };
        assert_eq!(
            ep.describe::<Postgres>(),
            "postgres (default user)@(local socket):5432"
        );
    }

    fn put_int(out: &mut Vec<u8>, size: usize, v: i64) {
        out.push(u8::from(v < 0));
        let m = v.unsigned_abs();
        out.extend((0..size).map(|i| (m >> (8 * i)) as u8));
    }

    /// A custom-format archive start as pg_dump writes it (WriteHead), then
    /// a few bytes standing for the rest of the dump.
    fn dump(minor: u8, int_size: usize, compression: i64, crtm: [i64; 7]) -> Vec<u8> {
        let mut h = b"PGDMP".to_vec();
        h.extend([1, minor, 0, int_size as u8, 8, 1]);
        if minor >= 15 {
            h.push(compression as u8);
        } else {
            put_int(&mut h, int_size, compression);
        }
        for v in crtm {
            put_int(&mut h, int_size, v);
        }
        for s in ["shop", "15.18 (Debian 15.18-0+deb12u1)", "15.18"] {
            put_int(&mut h, int_size, s.len() as i64);
            h.extend(s.as_bytes());
        }
        h.extend(b"\x01\x02 the table of contents and data ...");
        h
    }

    /// 2026-12-01 10:38:14, DST unknown.
    const SOME_TIME: [i64; 7] = [14, 38, 10, 1, 11, 126, -1];

    /// Through the streaming filter, one byte per read.
    fn filtered(input: &[u8]) -> (Vec<u8>, Option<Result<(), String>>) {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut r = db::HeadReader::new(OneByte(input), Some(CUSTOM_HEAD));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        (out, r.outcome.take())
    }

    #[test]
    fn custom_header_time_is_rewritten_in_both_layouts() {
        // Before 1.15 the compression field is an integer (here -1, the
        // default level); from 1.15 (PostgreSQL 16) a byte.
        for (minor, int_size, compression) in [
            (14, 4, -1),
            (14, 8, 0),
            (12, 4, 6),
            (15, 4, 0),
            (16, 4, 1),
            (16, 8, 2),
        ] {
            let input = dump(minor, int_size, compression, SOME_TIME);
            let expected = dump(minor, int_size, compression, FIXED_CREATION_TIME);
            assert_ne!(input, expected);
            assert_eq!(input.len(), expected.len());
            let mut h = input.clone();
            assert_eq!(
                normalise_custom_header(&mut h),
                Ok(()),
                "1.{minor} int {int_size}"
            );
            assert_eq!(h, expected, "1.{minor} int {int_size}");
            let (out, outcome) = filtered(&input);
            assert_eq!(outcome, Some(Ok(())));
            assert_eq!(out, expected, "streamed, 1.{minor} int {int_size}");
            // Idempotent: an already fixed header stays as it is.
            let (again, _) = filtered(&expected);
            assert_eq!(again, expected);
        }
    }

    #[test]
    fn custom_header_fields_are_where_pg_restore_reads_them() {
        let mut h = dump(14, 4, 0, SOME_TIME);
        normalise_custom_header(&mut h).unwrap();
        // 11 header bytes, the 5-byte compression integer, then the seven.
        let got: Vec<i128> = (0..7)
            .map(|i| read_int(&h, 16 + i * 5, 4).unwrap())
            .collect();
        assert_eq!(got, [0, 0, 0, 1, 0, 100, 0]);
        let mut h = dump(16, 8, 0, SOME_TIME);
        normalise_custom_header(&mut h).unwrap();
        let got: Vec<i128> = (0..7)
            .map(|i| read_int(&h, 12 + i * 9, 8).unwrap())
            .collect();
        assert_eq!(got, [0, 0, 0, 1, 0, 100, 0]);
    }

    #[test]
    fn unexpected_custom_headers_pass_through_unchanged() {
        let good = dump(14, 4, 0, SOME_TIME);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated before the version", good[..9].to_vec()),
            ("truncated inside the time", good[..30].to_vec()),
            (
                "not a pg_dump archive",
                b"-- PostgreSQL database dump\n".to_vec(),
            ),
            ("unknown minor version", dump(17, 4, 0, SOME_TIME)),
            ("old minor version", dump(6, 4, 0, SOME_TIME)),
            ("intSize 2", dump(14, 2, 0, SOME_TIME)),
            ("hour 25", dump(14, 4, 0, [0, 0, 25, 1, 0, 100, 0])),
        ];
        let mut v = good.clone();
        v[5] = 2; // major version 2
        cases.push(("unknown major version", v));
        let mut v = good.clone();
        v[10] = 3; // the tar format
        cases.push(("another format", v));
        let mut v = good.clone();
        v[16] = 7; // sign byte of tm_sec
        cases.push(("bad sign byte", v));
        for (what, input) in cases {
            let mut h = input.clone();
            assert!(normalise_custom_header(&mut h).is_err(), "{what}");
            assert_eq!(h, input, "{what}");
            let (out, outcome) = filtered(&input);
            assert_eq!(out, input, "{what}: streamed bytes changed");
            let why = outcome.unwrap().unwrap_err();
            assert!(why.contains("not recognised"), "{what}: {why}");
        }
    }

    /// Through [`OwnGuardFilter`], in reads of `chunk` bytes from the input.
    fn guard_filtered(input: &[u8], chunk: usize) -> String {
        struct Chunks<'a>(&'a [u8], usize);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        OwnGuardFilter::new(Chunks(input, chunk))
            .read_to_end(&mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn own_guard_lines_of_a_plain_dump_are_blanked_and_nothing_else() {
        let key = "a".repeat(40) + "B9";
        let dump = format!(
            "--\n-- PostgreSQL database dump\n--\n\n\\restrict {key}\n\nSET x = 1;\n\
             COPY t (a) FROM stdin;\n\\restrict {key}x\n\\.\n\\unrestrict other\n\
             \\unrestrict {key} \n  \\unrestrict {key}\n\\unrestrict {key}\n\\! id\n\
             {long}\n\\unrestrict {key}",
            long = "\\".repeat(100_000)
        );
        let want = dump
            .replace(&format!("\\restrict {key}\n"), "\n")
            .replace(&format!("\n\\unrestrict {key}\n"), "\n\n");
        let want = want.strip_suffix(&format!("\\unrestrict {key}")).unwrap();
        // Blanked: the first \restrict, and the two \unrestrict lines with
        // its key exactly; kept: the other key, trailing blank, indented.
        assert_eq!(want.matches(&key).count(), 3, "{}", &want[..300]);
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(
                guard_filtered(dump.as_bytes(), chunk),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn guard_filter_passes_dumps_without_guard_lines_unchanged() {
        for input in [
            "",
            "\\",
            "\\restrict",
            "\\restrict \n",
            "\\unrestrict k\n\\restrict k\n",
            "SELECT 1;\n\\restrict k!\n",
            "\\restrictk\n\\unrestrictk",
            "no newline at the end",
        ] {
            let want = if input == "\\unrestrict k\n\\restrict k\n" {
                // An \unrestrict before any \restrict is kept (and fails);
                // the \restrict after it sets the key and is blanked.
                "\\unrestrict k\n\n"
            } else {
                input
            };
            for chunk in [1, 5, 4096] {
                assert_eq!(guard_filtered(input.as_bytes(), chunk), want, "{input:?}");
            }
        }
    }

    #[test]
    fn restrict_keys_are_stable_per_state_dir_and_differ_otherwise() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let k = restrict_key(a.path(), "shop").unwrap();
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|c| c.is_ascii_alphanumeric()), "{k}");
        assert_eq!(restrict_key(a.path(), "shop").unwrap(), k);
        assert_ne!(restrict_key(a.path(), "other").unwrap(), k);
        assert_ne!(restrict_key(b.path(), "shop").unwrap(), k);
        use std::os::unix::fs::PermissionsExt;
        let secret = a.path().join(RESTRICT_SECRET_FILE);
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The key is not the secret itself.
        assert!(!std::fs::read_to_string(&secret).unwrap().contains(&k));
        std::fs::write(&secret, "garbage\n").unwrap();
        let e = restrict_key(a.path(), "shop").unwrap_err();
        assert!(format!("{e:#}").contains("64 hex digits"), "{e:#}");
    }
}
