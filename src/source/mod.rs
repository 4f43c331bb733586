//! Sources: what goes into a snapshot. [`Source`] is what every source can
//! do (preflight, archive into one [`ArchiveWriter`] per snapshot, estimate a
//! dry run, verify an unpacked snapshot); [`SourceSpec::source`] turns a
//! configured `[[sources]]` entry into one. Callers (run, verify, restore,
//! check) go through the trait and never match on the source type.
//!
//! - [`files`]: a directory tree with gitignore-style excludes, read through
//!   the race-safe descriptor-based walk of [`walk`].
//! - database sources write dumps and record [`db::DatabaseFacts`] in the
//!   manifest ([`db`]: what all of them share). The two servers
//!   ([`postgres`], [`mysql`]) are [`server_db::Engine`]s: dumping,
//!   verify-by-loading and `restore --into-database` are written once in
//!   [`server_db`]. [`sqlite`] copies a database file.
//!
//! Loading treats a snapshot as hostile input (a target may be in an
//! attacker's hands): the engine, dump format and server come from the
//! local configuration, never from the manifest ([`verify_unpacked`],
//! [`db::DatabaseFacts::check_configured`]), and every loader runs in a mode
//! in which nothing in a dump can run commands on this host: `pg_restore`
//! for custom dumps, `psql` under a `\restrict` key of its own for plain
//! ones, `mariadb --sandbox`, and SQLite opened defensively (see each
//! module).
//!
//! Not here: where archives go (`ops::run`), fetching and unpacking them
//! (`ops::restore`, `ops::verify`).

pub mod db;
pub mod files;
pub mod mysql;
pub mod postgres;
pub mod server_db;
pub mod sqlite;
pub mod walk;

use crate::archive::{ArchiveWriter, SourceRecord};
use crate::config::{SourceSpec, VerifySpec};
use db::{DatabaseFacts, DumpedDatabase};
use std::path::Path;

/// What a source reports besides the archive itself.
#[derive(Debug, Default)]
pub struct SourceOutput {
    /// What was backed up, for people ("/var/www/shop", "postgres shop@127.0.0.1:5432").
    pub origin: String,
    /// Database facts for the manifest (tool and server versions, row counts).
    pub database: Option<serde_json::Value>,
}

/// What archiving may use besides the source itself. The snapshot time is
/// not an input: an unchanged source gives the same archive whenever it is
/// taken.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveContext<'a> {
    /// The run's staging directory (SQLite's backup copy goes there).
    pub staging: &'a Path,
    /// backupctl's state directory (PostgreSQL keeps the secret of its
    /// plain dumps' restrict keys there).
    pub state_dir: &'a Path,
}

/// A path on this host that a source reads.
#[derive(Debug, Clone, Copy)]
pub struct LocalPath<'a> {
    pub path: &'a Path,
    /// A directory (file trees), else a regular file (SQLite).
    pub dir: bool,
}

impl LocalPath<'_> {
    /// Is it there, and of the right kind?
    pub fn present(&self) -> bool {
        if self.dir {
            self.path.is_dir()
        } else {
            self.path.is_file()
        }
    }

    /// "directory" or "file", for messages.
    pub fn what(&self) -> &'static str {
        if self.dir {
            "directory"
        } else {
            "file"
        }
    }
}

/// How much a dry run would read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Size {
    pub bytes: u64,
    pub files: u64,
}

/// How a database source's dumps are loaded: the manifest must record the
/// same (see [`DatabaseFacts::check_configured`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DumpFormat<'a> {
    /// "postgres", "mysql" or "sqlite".
    pub engine: &'static str,
    /// "custom" or "plain" (PostgreSQL), "sql" (MySQL), "sqlite".
    pub format: &'a str,
}

/// What every source can do. Archiving and verifying run on a blocking
/// thread.
pub trait Source {
    /// The configured name.
    fn name(&self) -> &str;

    /// The configured `type` ("files", "postgres", "mysql", "sqlite"), as
    /// recorded in the manifest.
    fn kind(&self) -> &'static str;

    /// The path on this host the source reads, if any (`check` reports a
    /// missing one as a configuration error).
    fn local_path(&self) -> Option<LocalPath<'_>> {
        None
    }

    /// Before writing anything: can this source be read at all? (By
    /// default: its local path is there; databases: the client tools are
    /// installed and the password variable is set.)
    fn preflight(&self) -> crate::error::Result<()> {
        let Some(p) = self.local_path().filter(|p| !p.present()) else {
            return Ok(());
        };
        Err(crate::error::Error::failure(format!(
            "source {}: {} does not exist or is not a {}{}; this policy was not backed up",
            self.name(),
            p.path.display(),
            p.what(),
            if p.dir {
                " (a share not mounted? a site moved?)"
            } else {
                ""
            }
        )))
    }

    /// Write the source's content into `w`. The caller (ops::run) names the
    /// source in the error message.
    fn archive(
        &self,
        w: &mut ArchiveWriter,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<SourceOutput>;

    /// For `run --dry-run` and progress: how much archiving would read, when
    /// that can be known without reading it (None for databases).
    fn estimate(&self) -> crate::error::Result<Option<Size>> {
        Ok(None)
    }

    /// How this source's dumps are loaded (None for file trees).
    fn dump_format(&self) -> Option<DumpFormat<'_>> {
        None
    }

    /// Source-specific checks of the dumps of a snapshot unpacked at `dir`
    /// (databases: load each into a scratch database, or check the SQLite
    /// copy, and compare row counts). Called only when the manifest's facts
    /// match [`Source::dump_format`]. Returns the problems found; empty
    /// means verified. `servers` is the policy's `[verify]` section.
    fn verify_dumps(
        &self,
        _servers: &VerifySpec,
        _facts: &DatabaseFacts,
        _dir: &Path,
    ) -> crate::error::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// `restore --into-database`, for sources that can load a dump into
    /// their own server (None: restore them as files with `--to`).
    fn database_restore(&self) -> Option<&dyn DatabaseRestore> {
        None
    }
}

/// A source whose dumps load straight into its configured server.
pub trait DatabaseRestore {
    /// Load the dump of `d` (unpacked at `dir`) into the database `into`,
    /// replacing an existing non-empty one only with `force`.
    fn restore_into(
        &self,
        d: &DumpedDatabase,
        dir: &Path,
        into: &str,
        force: bool,
    ) -> crate::error::Result<server_db::LoadReport>;
}

impl SourceSpec {
    /// The configured source, as a [`Source`].
    pub fn source(&self) -> &dyn Source {
        match self {
            SourceSpec::Files(s) => s,
            SourceSpec::Postgres(s) => s,
            SourceSpec::Mysql(s) => s,
            SourceSpec::Sqlite(s) => s,
        }
    }
}

/// Verification beyond file hashes for a source unpacked at `dir`. Returns
/// the problems found; empty means verified.
///
/// `source` is the source as the policy configures it now. Everything about
/// loading (engine, dump format, server) comes from it; the manifest only
/// says which dumps there are and what row counts to expect. A record whose
/// type or database facts disagree with the configuration is a problem and
/// nothing is loaded; so is a database source that is no longer configured
/// (its files were still checked against their hashes by the caller).
pub fn verify_unpacked(
    servers: &VerifySpec,
    source: Option<&dyn Source>,
    record: &SourceRecord,
    dir: &Path,
) -> crate::error::Result<Vec<String>> {
    let name = record.name.as_str();
    let Some(source) = source else {
        if record.kind == "files" && record.database.is_none() {
            return Ok(Vec::new());
        }
        return Ok(vec![format!(
            "source {name}: {} dump not loaded: source not in the configuration \
             (its files were checked against their hashes only)",
            record.kind
        )]);
    };
    if source.kind() != record.kind {
        return Ok(vec![format!(
            "source {name}: not loaded: the manifest records a {} source, the configuration \
             a {} source",
            record.kind,
            source.kind()
        )]);
    }
    let Some(configured) = source.dump_format() else {
        return Ok(Vec::new());
    };
    let facts = DatabaseFacts::from_record(record)?;
    if let Err(p) = facts.check_configured(configured.engine, configured.format) {
        return Ok(vec![format!("source {name}: {p}")]);
    }
    source.verify_dumps(servers, &facts, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FilesSourceSpec, SqliteSourceSpec};

    fn record(kind: &str, database: Option<serde_json::Value>) -> SourceRecord {
        let stream = serde_json::json!({
            "size": 0, "blake3": "", "stored": 0, "list": "", "list_size": 0,
        });
        serde_json::from_value(serde_json::json!({
            "name": "app", "type": kind, "origin": "", "stream": stream, "index": stream,
            "content_size": 0, "entries": 0, "files": 0, "database": database,
        }))
        .unwrap()
    }

    fn facts(engine: &str, format: &str) -> serde_json::Value {
        serde_json::json!({
            "engine": engine, "dump_tool": "t", "server_version": "v", "format": format,
            "row_counts": "", "databases": [],
        })
    }

    #[test]
    fn unpacked_snapshots_are_checked_against_the_configuration_before_loading() {
        let none = tempfile::tempdir().unwrap();
        let v = VerifySpec::default();
        let files = FilesSourceSpec {
            name: "app".into(),
            path: none.path().to_path_buf(),
            exclude: Vec::new(),
            one_file_system: false,
        };
        let sqlite = SqliteSourceSpec {
            name: "app".into(),
            path: none.path().join("app.db"),
        };
        let check = |src: Option<&dyn Source>, rec: &SourceRecord| {
            verify_unpacked(&v, src, rec, none.path()).unwrap()
        };
        assert!(check(Some(&files), &record("files", None)).is_empty());
        assert!(check(None, &record("files", None)).is_empty());
        let p = check(None, &record("sqlite", Some(facts("sqlite", "sqlite"))));
        assert!(p[0].contains("sqlite dump not loaded: source not in the configuration"));
        let p = check(Some(&files), &record("sqlite", None));
        assert!(p[0].contains("records a sqlite source, the configuration a files source"));
        let p = check(
            Some(&sqlite),
            &record("sqlite", Some(facts("mysql", "sql"))),
        );
        assert!(p[0].starts_with("source app: not loaded: the manifest records a mysql dump"));
        // Facts that match, with no dumps in them: nothing to load.
        assert!(check(
            Some(&sqlite),
            &record("sqlite", Some(facts("sqlite", "sqlite")))
        )
        .is_empty());
        assert!(verify_unpacked(&v, Some(&sqlite), &record("sqlite", None), none.path()).is_err());
    }

    #[test]
    fn missing_local_paths_fail_preflight_naming_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let files = FilesSourceSpec {
            name: "site".into(),
            path: dir.path().join("gone"),
            exclude: Vec::new(),
            one_file_system: false,
        };
        let e = files.preflight().unwrap_err().to_string();
        assert!(e.starts_with("source site: "), "{e}");
        assert!(
            e.contains("is not a directory (a share not mounted?"),
            "{e}"
        );
        let sqlite = SqliteSourceSpec {
            name: "app".into(),
            path: dir.path().to_path_buf(),
        };
        let e = sqlite.preflight().unwrap_err().to_string();
        assert!(
            e.contains("is not a file; this policy was not backed up"),
            "{e}"
        );
        let here = FilesSourceSpec {
            path: dir.path().to_path_buf(),
            ..files
        };
        here.preflight().unwrap();
    }
}
