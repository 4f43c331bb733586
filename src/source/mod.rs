//! Sources: what goes into a snapshot. Each source writes its entries into one
//! [`ArchiveWriter`] (one archive per source per snapshot).
//!
//! - [`files`]: a directory tree with gitignore-style excludes, read through
//!   the race-safe descriptor-based walk of [`walk`].
//! - database sources ([`postgres`], [`mysql`], [`sqlite`]) write their dumps
//!   in (see [`db`] for what they share) and record [`db::DatabaseFacts`] in
//!   the manifest; `verify` and `restore --into-database` load those dumps
//!   again.
//!
//! Loading treats a snapshot as hostile input (a target may be in an
//! attacker's hands): the engine, dump format and server come from the
//! local configuration, never from the manifest ([`verify_unpacked`],
//! [`db::DatabaseFacts::check_configured`]), and every loader runs in a mode
//! in which nothing in a dump can run commands on this host: `pg_restore`
//! for custom dumps, `psql` under a `\restrict` key of its own for plain
//! ones, `mariadb --sandbox`, and SQLite opened defensively (see each
//! module).

pub mod db;
pub mod files;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub mod walk;

use crate::archive::{ArchiveWriter, SourceRecord};
use crate::config::{Policy, SourceSpec};
use std::path::Path;

/// What a source reports besides the archive itself.
#[derive(Debug, Default)]
pub struct SourceOutput {
    /// What was backed up, for people ("/var/www/shop", "postgres shop@127.0.0.1:5432").
    pub origin: String,
    /// Database facts for the manifest (tool and server versions, row counts).
    pub database: Option<serde_json::Value>,
}

/// Write `spec`'s content into `w`. Runs on a blocking thread. `staging` is
/// the run's staging directory (SQLite's backup copy goes there);
/// `state_dir` is backupctl's state directory (PostgreSQL keeps the secret
/// of its plain dumps' restrict keys there). The snapshot time is not an
/// input: an unchanged source gives the same archive whenever it is taken.
pub fn archive_source(
    spec: &SourceSpec,
    w: &mut ArchiveWriter,
    staging: &Path,
    state_dir: &Path,
) -> anyhow::Result<SourceOutput> {
    // The caller (ops::run) names the source in its error message.
    match spec {
        SourceSpec::Files(s) => files::archive_tree(s, w),
        SourceSpec::Postgres(s) => postgres::archive(s, w, state_dir),
        SourceSpec::Mysql(s) => mysql::archive(s, w),
        SourceSpec::Sqlite(s) => sqlite::archive(s, w, staging),
    }
}

/// Before writing anything: can this source be read at all? (Files: the path
/// exists; databases: the client tool is installed.)
pub fn preflight(spec: &SourceSpec) -> anyhow::Result<()> {
    let db_tools = match spec {
        SourceSpec::Files(s) => {
            if !s.path.is_dir() {
                return Err(crate::error::CodedError::failure(format!(
                    "source {}: {} does not exist or is not a directory (a share not mounted? \
                     a site moved?); this policy was not backed up",
                    s.name,
                    s.path.display()
                ))
                .into());
            }
            return Ok(());
        }
        SourceSpec::Sqlite(s) if !s.path.is_file() => {
            return Err(crate::error::CodedError::failure(format!(
                "source {}: {} does not exist or is not a file; this policy was not backed up",
                s.name,
                s.path.display()
            ))
            .into());
        }
        SourceSpec::Postgres(s) => postgres::Tools::find()
            .and_then(|_| db::password_from_env("", s.password_env.as_deref()).map(|_| ())),
        SourceSpec::Mysql(s) => mysql::Tools::find()
            .and_then(|_| db::password_from_env("", s.password_env.as_deref()).map(|_| ())),
        SourceSpec::Sqlite(_) => Ok(()),
    };
    db_tools.map_err(|e| e.context(format!("source {}", spec.name())))
}

/// The engine and dump format a configured database source's dumps are
/// loaded as (None for file trees).
pub fn configured_dump(spec: &SourceSpec) -> Option<(&'static str, &str)> {
    match spec {
        SourceSpec::Files(_) => None,
        SourceSpec::Postgres(s) => Some(("postgres", s.format.as_str())),
        SourceSpec::Mysql(_) => Some(("mysql", "sql")),
        SourceSpec::Sqlite(_) => Some(("sqlite", "sqlite")),
    }
}

/// Verification beyond file hashes for a source unpacked at `dir` (databases:
/// load the dump into a scratch database and compare row counts). Returns the
/// problems found; empty means verified.
///
/// `spec` is the source as the policy configures it now. Everything about
/// loading (engine, dump format, server) comes from it; the manifest only
/// says which dumps there are and what row counts to expect. A record whose
/// type or database facts disagree with the configuration is a problem and
/// nothing is loaded; so is a database source that is no longer configured
/// (its files were still checked against their hashes by the caller).
pub fn verify_unpacked(
    policy: &Policy,
    spec: Option<&SourceSpec>,
    record: &SourceRecord,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let name = record.name.as_str();
    let Some(spec) = spec else {
        if record.kind == "files" && record.database.is_none() {
            return Ok(Vec::new());
        }
        return Ok(vec![format!(
            "source {name}: {} dump not loaded: source not in the configuration \
             (its files were checked against their hashes only)",
            record.kind
        )]);
    };
    if spec.kind() != record.kind {
        return Ok(vec![format!(
            "source {name}: not loaded: the manifest records a {} source, the configuration \
             a {} source",
            record.kind,
            spec.kind()
        )]);
    }
    let Some((engine, format)) = configured_dump(spec) else {
        return Ok(Vec::new());
    };
    let facts = db::DatabaseFacts::from_record(record)?;
    if let Err(p) = facts.check_configured(engine, format) {
        return Ok(vec![format!("source {name}: {p}")]);
    }
    match spec {
        SourceSpec::Postgres(s) => {
            postgres::verify(policy.verify.postgres.as_ref(), s, &facts, dir)
        }
        SourceSpec::Mysql(s) => mysql::verify(policy.verify.mysql.as_ref(), s, &facts, dir),
        SourceSpec::Sqlite(s) => sqlite::verify(&s.name, &facts, dir),
        SourceSpec::Files(_) => Ok(Vec::new()),
    }
}
