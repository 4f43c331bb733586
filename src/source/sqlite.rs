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

use super::db::{DatabaseFacts, DumpFile, DumpedDatabase};
use super::SourceOutput;
use crate::archive::{ArchiveWriter, EntryMeta};
use crate::config::SqliteSourceSpec;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Integrity check and row counts of a database file.
pub fn inspect(path: &Path) -> anyhow::Result<(Vec<String>, BTreeMap<String, u64>)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut problems = Vec::new();
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if rows != ["ok"] {
        problems.extend(rows.into_iter().take(20));
    }
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
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
) -> anyhow::Result<SourceOutput> {
    let source_meta = std::fs::metadata(&spec.path)
        .ok()
        .filter(|m| m.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("{} does not exist or is not a file", spec.path.display())
        })?;
    let copy = staging.join(format!("sqlite-{}.db", crate::util::random_hex(12)));
    let _cleanup = RemoveFile(copy.clone());
    // Created 0600 before SQLite opens it (SQLite would create it 0644, and
    // gives its journals the database file's mode).
    crate::util::create_private_file(&copy)
        .with_context(|| format!("creating {}", copy.display()))?;
    {
        let src = Connection::open_with_flags(
            &spec.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", spec.path.display()))?;
        src.busy_timeout(Duration::from_secs(60))?;
        let mut dst = Connection::open(&copy)?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // All pages in one step: one read transaction, so the copy is one
        // committed state (chunked steps would restart whenever the
        // application writes). A writer holding a lock makes us wait.
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            use rusqlite::backup::StepResult;
            match backup
                .step(-1)
                .with_context(|| format!("online backup of {}", spec.path.display()))?
            {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => anyhow::bail!(
                    "online backup of {}: the database stayed locked for 10 minutes",
                    spec.path.display()
                ),
            }
        }
    }
    crate::util::test_hook("sqlite-copy", &[copy.as_os_str()]);
    let (problems, tables) = inspect(&copy)?;
    anyhow::ensure!(
        problems.is_empty(),
        "the copy of {} fails PRAGMA integrity_check: {}",
        spec.path.display(),
        problems.join("; ")
    );
    let entry = spec
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database.sqlite".into());
    let size = std::fs::metadata(&copy)?.len();
    let mut f = std::fs::File::open(&copy)?;
    let hash = {
        let mut h = blake3::Hasher::new();
        h.update_reader(&mut f)?;
        h.finalize().to_hex().to_string()
    };
    // Fixed metadata (see EntryMeta::generated), except that the restored
    // file gets the source file's permission bits.
    let meta = EntryMeta {
        mode: source_meta.permissions().mode() & 0o777,
        ..EntryMeta::generated()
    };
    let mut f = std::fs::File::open(&copy)?;
    w.add_reader(Path::new(&entry), size, &meta, &mut f)?;
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
            dump: DumpFile {
                entries: vec![entry],
                size,
                blake3: hash,
            },
            tables,
        }],
    };
    Ok(SourceOutput {
        origin: spec.path.display().to_string(),
        database: Some(facts.to_value()),
    })
}

/// The restored file passes integrity_check and its row counts match.
pub fn verify(source: &str, facts: &DatabaseFacts, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for d in &facts.databases {
        let Some(entry) = d.dump.entries.first() else {
            continue;
        };
        let label = format!("source {source}: {entry}");
        match inspect(&dir.join(entry)) {
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
