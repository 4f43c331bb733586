//! Sources: what goes into a snapshot. Each source writes its entries into one
//! [`ArchiveWriter`] (one archive per source per snapshot).
//!
//! - [`files`]: a directory tree with gitignore-style excludes, read through
//!   the race-safe descriptor-based walk of [`walk`].
//! - database sources ([`postgres`], [`mysql`], [`sqlite`]) write their dumps
//!   in (see [`db`] for what they share) and record [`db::DatabaseFacts`] in
//!   the manifest; `verify` loads those dumps again.

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

/// Verification beyond file hashes for a source unpacked at `dir` (databases:
/// load the dump into a scratch database and compare row counts). Returns the
/// problems found; empty means verified.
pub fn verify_unpacked(
    policy: &Policy,
    spec: Option<&SourceSpec>,
    record: &SourceRecord,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let facts = || db::DatabaseFacts::from_record(record);
    let name = record.name.as_str();
    match record.kind.as_str() {
        "postgres" => {
            let spec = match spec {
                Some(SourceSpec::Postgres(s)) => Some(s),
                _ => None,
            };
            postgres::verify(policy.verify.postgres.as_ref(), spec, name, &facts()?, dir)
        }
        "mysql" => {
            let spec = match spec {
                Some(SourceSpec::Mysql(s)) => Some(s),
                _ => None,
            };
            mysql::verify(policy.verify.mysql.as_ref(), spec, name, &facts()?, dir)
        }
        "sqlite" => sqlite::verify(name, &facts()?, dir),
        _ => Ok(Vec::new()),
    }
}
