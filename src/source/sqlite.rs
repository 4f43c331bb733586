//! `type = "sqlite"`: a copy made with SQLite's online backup API (through
//! rusqlite, SQLite compiled in), safe while the application writes: the copy
//! is one read transaction, so it is a committed state of the database.
//!
//! Unlike the server dumps this is not streamed: the backup API writes a
//! database file, so the copy goes to the run's staging directory first
//! (its size must be known for the tar entry), is checked with `PRAGMA
//! integrity_check`, its tables' rows are counted, and it is archived as
//! `<file name>` and then deleted.
//!
//! The entry has the fixed metadata of generated content (mtime the Unix
//! epoch, see [`EntryMeta::generated`]) but the source file's permission
//! bits, so a restored copy has the source's mode.
//!
//! `verify` opens the restored file, which may come from a hostile target,
//! only as data ([`open_guarded`]): the path must name a regular file inside
//! the scratch directory (no `..`, no symbolic link); extension loading is
//! off, `ATTACH` is impossible, the schema is untrusted (`trusted_schema`
//! off: functions and virtual tables not marked innocuous cannot be used
//! from views, triggers, defaults or indexes), `SQLITE_DBCONFIG_DEFENSIVE`
//! is on, and views and triggers are disabled. Rows are counted only in
//! real tables as SQLite itself classifies them (`PRAGMA table_list`), never
//! in a view dressed up as a table.

use super::db::{DatabaseFacts, DumpFile, DumpedDatabase};
use super::{ArchiveContext, DumpFormat, LocalPath, Source, SourceOutput};
use crate::archive::{ArchiveWriter, EntryMeta};
use crate::config::{SqliteSourceSpec, VerifySpec};
use crate::error::Context;
use rusqlite::config::DbConfig;
use rusqlite::{ffi, Connection, OpenFlags};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

impl Source for SqliteSourceSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn local_path(&self) -> Option<LocalPath<'_>> {
        Some(LocalPath {
            path: &self.path,
            dir: false,
        })
    }

    fn archive(
        &self,
        w: &mut ArchiveWriter,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<SourceOutput> {
        archive(self, w, ctx.staging)
    }

    fn dump_format(&self) -> Option<DumpFormat<'_>> {
        Some(DumpFormat {
            engine: "sqlite",
            format: "sqlite",
        })
    }

    fn verify_dumps(
        &self,
        _servers: &VerifySpec,
        facts: &DatabaseFacts,
        dir: &Path,
    ) -> crate::error::Result<Vec<String>> {
        verify(&self.name, facts, dir)
    }
}

/// Open a database file as data only: nothing in it can run code, load an
/// extension or reach another file (see the module documentation). A
/// symbolic link is refused (`SQLITE_OPEN_NOFOLLOW`).
pub fn open_guarded(path: &Path) -> crate::error::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false),
    ] {
        let now = conn.set_db_config(setting, on)?;
        crate::ensure!(now == on, "SQLite refused the setting {setting:?} = {on}");
    }
    // Neither in rusqlite's safe API (without its load_extension and limits
    // features): extension loading off (it is by default; made sure of),
    // and no attached databases at all.
    // SAFETY: the handle is valid for the life of `conn`; the variadic
    // arguments are what SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION takes (an int,
    // and an int* for the resulting state).
    let (rc, load_ext) = unsafe {
        let db = conn.handle();
        let mut state: std::ffi::c_int = 1;
        let rc = ffi::sqlite3_db_config(
            db,
            ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0 as std::ffi::c_int,
            &mut state as *mut std::ffi::c_int,
        );
        ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_ATTACHED, 0);
        (rc, state)
    };
    crate::ensure!(
        rc == ffi::SQLITE_OK && load_ext == 0,
        "SQLite refused to disable extension loading"
    );
    Ok(conn)
}

/// Integrity check and row counts of a database file, opened with
/// [`open_guarded`].
pub fn inspect(path: &Path) -> crate::error::Result<(Vec<String>, BTreeMap<String, u64>)> {
    let conn = open_guarded(path)?;
    let mut problems = Vec::new();
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if rows != ["ok"] {
        problems.extend(rows.into_iter().take(20));
    }
    // Ordinary tables and the shadow tables of virtual ones, as SQLite
    // classifies them from the parsed schema; not views, not virtual tables.
    let mut stmt = conn.prepare(
        "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut counts = BTreeMap::new();
    for n in names {
        let q = format!("SELECT count(*) FROM \"{}\"", n.replace('"', "\"\""));
        let c: i64 = conn.query_row(&q, [], |r| r.get(0))?;
        counts.insert(n, c as u64);
    }
    Ok((problems, counts))
}

pub fn archive(
    spec: &SqliteSourceSpec,
    w: &mut ArchiveWriter,
    staging: &Path,
) -> crate::error::Result<SourceOutput> {
    let source_meta = std::fs::metadata(&spec.path)
        .ok()
        .filter(|m| m.is_file())
        .ok_or_else(|| crate::err!("{} does not exist or is not a file", spec.path.display()))?;
    let copy = staging.join(format!("sqlite-{}.db", crate::util::random_hex(12)));
    let _cleanup = RemoveFile(copy.clone());
    // Created 0600 before SQLite opens it (SQLite would create it 0644, and
    // gives its journals the database file's mode).
    crate::util::create_private_file(&copy)
        .with_context(|| format!("creating {}", copy.display()))?;
    backup_copy(&spec.path, &copy)?;
    crate::util::test_hook("sqlite-copy", &[copy.as_os_str()]);
    let (problems, tables) = inspect(&copy)?;
    crate::ensure!(
        problems.is_empty(),
        "the copy of {} fails PRAGMA integrity_check: {}",
        spec.path.display(),
        problems.join("; ")
    );
    let entry = entry_name(&spec.path);
    // Fixed metadata (see EntryMeta::generated), except that the restored
    // file gets the source file's permission bits.
    let meta = EntryMeta {
        mode: source_meta.permissions().mode() & 0o777,
        ..EntryMeta::generated()
    };
    let dump = archive_copy(w, &copy, entry, &meta)?;
    let facts = DatabaseFacts {
        engine: "sqlite".into(),
        dump_tool: format!(
            "SQLite online backup API (rusqlite, SQLite {})",
            rusqlite::version()
        ),
        server_version: rusqlite::version().to_string(),
        format: "sqlite".into(),
        row_counts: "counted in the backup copy".into(),
        globals: None,
        databases: vec![DumpedDatabase {
            name: "main".into(),
            dump,
            tables,
        }],
    };
    Ok(SourceOutput {
        origin: spec.path.display().to_string(),
        database: Some(facts.to_value()),
    })
}

/// Copy the database at `path` into the (empty) file `copy` with the online
/// backup API, in one step: one read transaction, so the copy is one
/// committed state (chunked steps would restart whenever the application
/// writes). A writer holding a lock makes us wait, up to 10 minutes.
fn backup_copy(path: &Path, copy: &Path) -> crate::error::Result<()> {
    use rusqlite::backup::StepResult;
    let src = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    src.busy_timeout(Duration::from_secs(60))?;
    let mut dst = Connection::open(copy)?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        match backup
            .step(-1)
            .with_context(|| format!("online backup of {}", path.display()))?
        {
            StepResult::Done => return Ok(()),
            StepResult::More => continue,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => crate::bail!(
                "online backup of {}: the database stayed locked for 10 minutes",
                path.display()
            ),
        }
    }
}

/// The tar entry of a copy of `path`: the file's own name.
fn entry_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database.sqlite".into())
}

/// Hash the finished copy, then add it to the archive as `entry`.
fn archive_copy(
    w: &mut ArchiveWriter,
    copy: &Path,
    entry: String,
    meta: &EntryMeta,
) -> crate::error::Result<DumpFile> {
    let size = std::fs::metadata(copy)?.len();
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(copy)?)?;
    let mut f = std::fs::File::open(copy)?;
    w.add_reader(Path::new(&entry), size, meta, &mut f)?;
    Ok(DumpFile {
        entries: vec![entry],
        size,
        blake3: h.finalize().to_hex().to_string(),
    })
}

/// The restored file passes integrity_check and its row counts match. The
/// file must be a regular file inside `dir` (the manifest names it).
pub fn verify(
    source: &str,
    facts: &DatabaseFacts,
    dir: &Path,
) -> crate::error::Result<Vec<String>> {
    let mut out = Vec::new();
    for d in &facts.databases {
        let Some(entry) = d.dump.entries.first() else {
            continue;
        };
        let label = format!("source {source}: {entry}");
        let path = match crate::archive::reader::safe_relative(Path::new(entry)) {
            Ok(rel) if !rel.as_os_str().is_empty() => dir.join(rel),
            _ => {
                out.push(format!(
                    "{label}: not opened: the manifest names a file outside the archive"
                ));
                continue;
            }
        };
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(format!(
                "{label}: not opened: not a regular file in the archive"
            ));
            continue;
        }
        match inspect(&path) {
            Ok((problems, counts)) => {
                out.extend(
                    problems
                        .into_iter()
                        .map(|p| format!("{label}: integrity_check: {p}")),
                );
                out.extend(super::db::compare_counts(&label, &d.tables, &counts));
            }
            Err(e) => out.push(format!("{label}: cannot be opened: {e:#}")),
        }
    }
    Ok(out)
}

struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for ext in ["-journal", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(ext);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_connections_cannot_load_extensions_attach_or_run_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);
                 CREATE VIEW forever AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT n FROM c;
                 CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO t VALUES (NEW.x + 1); END;",
            )
            .unwrap();
        }
        let c = open_guarded(&path).unwrap();
        let err = |sql: &str| {
            let mut stmt = match c.prepare(sql) {
                Ok(s) => s,
                Err(e) => return e.to_string(),
            };
            let mut rows = stmt.raw_query();
            match rows.next() {
                Ok(_) => panic!("{sql}: no error"),
                Err(e) => e.to_string(),
            }
        };
        let e = err("SELECT load_extension('/nonexistent.so')");
        assert!(e.contains("not authorized"), "{e}");
        let other = dir.path().join("other.db");
        let e = err(&format!("ATTACH '{}' AS o", other.display()));
        assert!(e.contains("too many attached databases"), "{e}");
        assert!(!other.exists());
        // Views are disabled: an error at once, not an endless query.
        let e = err("SELECT count(*) FROM forever");
        assert!(!e.is_empty());
        c.execute_batch("PRAGMA writable_schema = ON").unwrap();
        let e = err("UPDATE sqlite_schema SET sql = '' WHERE name = 't'");
        assert!(e.contains("may not be modified"), "{e}");
        let trusted: i64 = c
            .query_row("PRAGMA trusted_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(trusted, 0);
        // Triggers do not fire.
        c.execute("INSERT INTO t VALUES (10)", ()).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        drop(c);
        // Only real tables are counted, never a view.
        let (problems, counts) = inspect(&path).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(counts, BTreeMap::from([("t".to_string(), 3)]));
    }

    #[test]
    fn copies_are_archived_under_the_source_file_name() {
        assert_eq!(entry_name(Path::new("/var/lib/app/app.db")), "app.db");
        assert_eq!(entry_name(Path::new("/")), "database.sqlite");
    }

    #[test]
    fn symbolic_links_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        Connection::open(&real)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_guarded(&link).is_err());
        assert!(open_guarded(&real).is_ok());
    }
}
