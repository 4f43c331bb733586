//! The database servers (PostgreSQL, MySQL/MariaDB), written once over the
//! [`Engine`] trait: dumping a source's databases into the archive, verify
//! (load each dump into a scratch database, compare row counts, drop it
//! again) and `restore --into-database`. Every configured server source
//! ([`ServerSource`]) is a [`Source`] through this module.
//!
//! What an engine supplies is what truly differs: its client tools and how
//! they connect, its SQL dialect (quoting, listing and counting tables,
//! creating, dropping and renaming databases), how one database is dumped,
//! and how a dump is loaded safely. The loading rules of the module
//! documentation of [`super`] hold for every engine: loading asks the
//! engine whether its loader is safe before anything is opened, and nothing
//! about loading comes from the manifest.
//!
//! Not here: the SQL and the dump formats themselves ([`super::postgres`],
//! [`super::mysql`]); running tools and streaming dumps ([`super::db`]).

use super::db::{self, DatabaseFacts, DumpFile, DumpedDatabase, LoadError};
use super::{ArchiveContext, DatabaseRestore, DumpFormat, Source, SourceOutput};
use crate::archive::ArchiveWriter;
use crate::config::{DatabaseSelection, DbServerSpec, DbSourceSpec, VerifySpec};
use crate::error::Context;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Where and as whom to connect, with the password read from the variable
/// `password_env` names (never on a command line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoint {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// `what` prefixes a configuration error (`"[verify] postgres"`; empty
    /// for a source, whose name the caller adds).
    pub fn resolve(server: &DbServerSpec, what: &str) -> crate::error::Result<Endpoint> {
        Ok(Endpoint {
            host: server.host.clone(),
            port: server.port,
            user: server.user.clone(),
            password: db::password_from_env(what, server.password_env.as_deref())?,
        })
    }

    /// "postgres backup@127.0.0.1:5432" (never the password).
    pub fn describe<E: Engine>(&self) -> String {
        format!(
            "{} {}@{}:{}",
            E::KIND,
            self.user.as_deref().unwrap_or("(default user)"),
            self.host.as_deref().unwrap_or(E::DEFAULT_HOST),
            self.port.unwrap_or(E::DEFAULT_PORT)
        )
    }
}

/// How `restore --into-database --force` replaces a database that exists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Replace {
    /// Load into a fresh temporary database; only when that succeeds, drop
    /// the old one and rename the new one into place (a dump that does not
    /// load leaves the old database untouched).
    LoadThenRename,
    /// Drop and recreate the database, then load (for a server that cannot
    /// rename databases: the old one is gone before the load).
    DropThenLoad,
}

/// Why a dump is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purpose {
    /// Into a scratch database on a verification server, where the dump's
    /// roles may not exist (PostgreSQL skips ownership and privileges).
    Verify,
    /// Into the source's own server, as the dump has it.
    Restore,
}

/// One database server engine, connected: its client tools and the
/// [`Endpoint`] of one server (nothing is opened until a method runs a
/// tool), loading dumps in one source's configured format.
pub trait Engine: Sized {
    /// The source type and the manifest's engine: "postgres" or "mysql".
    const KIND: &'static str;
    /// Shown by [`Endpoint::describe`] when no host is configured.
    const DEFAULT_HOST: &'static str;
    const DEFAULT_PORT: u16;
    /// What a database holds that makes it "not empty" for restore, for
    /// the refusal ("tables, views or sequences").
    const OBJECTS: &'static str;
    const REPLACE: Replace;
    /// The manifest's `row_counts`: how the recorded counts relate to the
    /// dump.
    const ROW_COUNTS: &'static str;

    /// Are the client tools installed? (An error names the Debian package.)
    fn find_tools() -> crate::error::Result<()>;
    /// Find the tools, for `endpoint`, loading dumps in `format` (the
    /// configured source's, never the manifest's).
    fn open(endpoint: Endpoint, format: &str) -> crate::error::Result<Self>;
    fn endpoint(&self) -> &Endpoint;
    /// The policy's verification server for this engine, if configured.
    fn verify_server(servers: &VerifySpec) -> Option<&DbServerSpec>;

    /// "postgres backup@127.0.0.1:5432".
    fn describe(&self) -> String {
        self.endpoint().describe::<Self>()
    }

    /// An SQL identifier.
    fn ident(s: &str) -> String;
    /// An SQL string literal.
    fn lit(s: &str) -> String;

    fn exists(&self, db: &str) -> crate::error::Result<bool>;
    /// Tables, views and the like in `db` (see [`Engine::OBJECTS`]).
    fn objects(&self, db: &str) -> crate::error::Result<u64>;
    fn create_db(&self, db: &str) -> crate::error::Result<()>;
    /// Drop `db` if it exists (even while others are connected to it).
    fn drop_db(&self, db: &str) -> crate::error::Result<()>;
    /// Only with [`Replace::LoadThenRename`].
    fn rename_db(&self, from: &str, to: &str) -> crate::error::Result<()>;
    /// Rows of every table of `db`, as the manifest names tables.
    fn counts(&self, db: &str) -> crate::error::Result<BTreeMap<String, u64>>;

    /// Can dumps of the configured format be loaded safely here? Err says
    /// why not (for people).
    fn check_loader(&self) -> Result<(), String>;
    /// Feed a dump into `db` (after [`Engine::check_loader`]). Err holds
    /// the loader's error output.
    fn feed(&self, input: Box<dyn Read + Send>, db: &str, purpose: Purpose) -> Result<(), String>;
    /// Checks of a snapshot before its dumps are loaded for verification
    /// (PostgreSQL: the globals dump is complete; a warning when loading as
    /// a superuser). Returns problems.
    fn before_verify(
        &self,
        _source: &str,
        _facts: &DatabaseFacts,
        _dir: &Path,
    ) -> crate::error::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// The dump tool (its `--version` goes into the manifest).
    fn dump_tool(&self) -> &Path;
    /// The server's version, asked in database `first` (or the engine's
    /// default one).
    fn server_version(&self, first: Option<&str>) -> crate::error::Result<String>;
    /// Every database `all = true` dumps.
    fn list_databases(&self) -> crate::error::Result<Vec<String>>;
    /// With `all = true`: the cluster-wide objects (PostgreSQL's roles).
    fn dump_globals(
        &self,
        _w: &mut ArchiveWriter,
        _ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<Option<DumpFile>> {
        Ok(None)
    }
    /// Stream one database's dump into `w`, with its tables' row counts as
    /// of the dumped snapshot.
    fn dump_database(
        &self,
        w: &mut ArchiveWriter,
        name: &str,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<(DumpFile, BTreeMap<String, u64>)>;
}

/// A configured source of a database server (`type = "postgres"`,
/// `"mysql"`): which engine, and the format its dumps are in.
pub trait ServerSource: DbSourceSpec {
    type Engine: Engine;
    fn format(&self) -> &str;
}

/// The engine on the source's own server.
fn own_server<S: ServerSource>(s: &S) -> crate::error::Result<S::Engine> {
    S::Engine::open(Endpoint::resolve(&s.server(), "")?, s.format())
}

impl<S: ServerSource> Source for S {
    fn name(&self) -> &str {
        self.source_name()
    }

    fn kind(&self) -> &'static str {
        S::Engine::KIND
    }

    fn preflight(&self) -> crate::error::Result<()> {
        S::Engine::find_tools()
            .and_then(|_| db::password_from_env("", self.server().password_env.as_deref()))
            .map(|_| ())
            .map_err(|e| e.context(format!("source {}", self.source_name())))
    }

    fn archive(
        &self,
        w: &mut ArchiveWriter,
        ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<SourceOutput> {
        archive(&own_server(self)?, &self.selection(), self.format(), w, ctx)
    }

    fn dump_format(&self) -> Option<DumpFormat<'_>> {
        Some(DumpFormat {
            engine: S::Engine::KIND,
            format: self.format(),
        })
    }

    /// On the `[verify]` server for the engine, else the source's own.
    fn verify_dumps(
        &self,
        servers: &VerifySpec,
        facts: &DatabaseFacts,
        dir: &Path,
    ) -> crate::error::Result<Vec<String>> {
        let endpoint = match S::Engine::verify_server(servers) {
            Some(v) => Endpoint::resolve(v, &format!("[verify] {}", S::Engine::KIND))?,
            None => Endpoint::resolve(&self.server(), "")?,
        };
        let engine = S::Engine::open(endpoint, self.format())?;
        verify(&engine, self.source_name(), facts, dir)
    }

    fn database_restore(&self) -> Option<&dyn DatabaseRestore> {
        Some(self)
    }
}

impl<S: ServerSource> DatabaseRestore for S {
    fn restore_into(
        &self,
        d: &DumpedDatabase,
        dir: &Path,
        into: &str,
        force: bool,
    ) -> crate::error::Result<LoadReport> {
        restore_into(&own_server(self)?, d, dir, into, force)
    }
}

/// Dump the selected databases into `w` and describe them for the manifest.
fn archive<E: Engine>(
    e: &E,
    sel: &DatabaseSelection,
    format: &str,
    w: &mut ArchiveWriter,
    ctx: &ArchiveContext<'_>,
) -> crate::error::Result<SourceOutput> {
    let dump_tool = db::tool_version(e.dump_tool())?;
    let named = sel.names();
    let server_version = e.server_version(named.first().map(String::as_str))?;
    let names = if sel.all { e.list_databases()? } else { named };
    let globals = if sel.all {
        e.dump_globals(w, ctx)?
    } else {
        None
    };
    let mut databases = Vec::new();
    for name in &names {
        let (dump, tables) = e.dump_database(w, name, ctx)?;
        tracing::info!(
            "dumped {} database {name}: {} bytes, {} tables",
            E::KIND,
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
        engine: E::KIND.into(),
        dump_tool,
        server_version,
        format: format.into(),
        row_counts: E::ROW_COUNTS.into(),
        globals,
        databases,
    };
    Ok(SourceOutput {
        origin: format!("{} {}", e.describe(), names.join(",")),
        database: Some(facts.to_value()),
    })
}

/// A database made for a load, dropped when this goes out of scope unless
/// [`TempDb::keep`] was called.
struct TempDb<'a, E: Engine> {
    engine: &'a E,
    name: String,
    keep: bool,
}

impl<'a, E: Engine> TempDb<'a, E> {
    /// A new database named `prefix` and random hex.
    fn create(engine: &'a E, prefix: &str) -> crate::error::Result<TempDb<'a, E>> {
        let name = format!("{prefix}{}", crate::util::random_hex(12));
        engine.create_db(&name)?;
        Ok(TempDb {
            engine,
            name,
            keep: false,
        })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl<E: Engine> Drop for TempDb<'_, E> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.engine.drop_db(&self.name) {
            tracing::error!("could not drop scratch database {}: {e:#}", self.name);
        }
    }
}

/// Load a dump into `db`, refused when the engine's loader is not safe
/// (see [`Engine::check_loader`]).
fn load<E: Engine>(
    e: &E,
    dir: &Path,
    dump: &DumpFile,
    db: &str,
    purpose: Purpose,
) -> Result<(), LoadError> {
    e.check_loader().map_err(LoadError::Refused)?;
    let input = db::open_dump(dir, dump).map_err(|e| LoadError::Failed(format!("{e:#}")))?;
    e.feed(input, db, purpose).map_err(LoadError::Failed)
}

/// Load every database dump of an unpacked archive into a scratch database
/// and compare row counts. Returns problems. The dump format is the
/// configured source's (the caller has refused facts that disagree with
/// it); `facts` gives the dumps and the expected counts.
fn verify<E: Engine>(
    e: &E,
    source: &str,
    facts: &DatabaseFacts,
    dir: &Path,
) -> crate::error::Result<Vec<String>> {
    if !facts.databases.is_empty() {
        if let Err(why) = e.check_loader() {
            // Before any scratch database is made.
            return Ok(vec![format!(
                "source {source}: {}",
                LoadError::Refused(why)
            )]);
        }
    }
    let mut problems = e.before_verify(source, facts, dir)?;
    for d in &facts.databases {
        let label = format!("source {source}: database {}", d.name);
        let scratch = TempDb::create(e, "backupctl_verify_")
            .with_context(|| format!("{label}: creating a scratch database on {}", e.describe()))?;
        if let Err(err) = load(e, dir, &d.dump, &scratch.name, Purpose::Verify) {
            problems.push(format!("{label}: {err}"));
            continue;
        }
        let loaded = e.counts(&scratch.name)?;
        let p = db::compare_counts(&label, &d.tables, &loaded);
        if p.is_empty() {
            tracing::info!(
                "{label}: dump loads on {}, {} tables with matching row counts",
                e.describe(),
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

/// Restore the dump of `d` into `into` on the engine's server. An existing
/// non-empty database is refused (exit 2) unless `force`; how it is then
/// replaced is [`Engine::REPLACE`]. Afterwards every table's row count must
/// be the recorded one.
fn restore_into<E: Engine>(
    e: &E,
    d: &DumpedDatabase,
    dir: &Path,
    into: &str,
    force: bool,
) -> crate::error::Result<LoadReport> {
    // Before anything on the server changes.
    e.check_loader().map_err(|why| {
        crate::error::Error::failure(format!("database {}: {}", d.name, LoadError::Refused(why)))
    })?;
    let exists = e.exists(into)?;
    let objects = if exists { e.objects(into)? } else { 0 };
    if objects > 0 && !force {
        return Err(crate::error::Error::usage(format!(
            "database {into} on {} is not empty ({objects} {}); pass --force to replace it",
            e.describe(),
            E::OBJECTS
        )));
    }
    let replaced_existing = match E::REPLACE {
        Replace::LoadThenRename => load_then_rename(e, d, dir, into, exists)?,
        Replace::DropThenLoad => drop_then_load(e, d, dir, into, exists, objects > 0)?,
    };
    let loaded = e.counts(into)?;
    let problems = db::compare_counts(&format!("database {into}"), &d.tables, &loaded);
    crate::ensure!(
        problems.is_empty(),
        "restored, but row counts differ from the dump: {}",
        problems.join("; ")
    );
    Ok(LoadReport {
        database: into.to_string(),
        server: e.describe(),
        tables: loaded.len(),
        rows: loaded.values().sum(),
        replaced_existing,
    })
}

/// [`Replace::LoadThenRename`]; returns whether `into` was replaced.
fn load_then_rename<E: Engine>(
    e: &E,
    d: &DumpedDatabase,
    dir: &Path,
    into: &str,
    exists: bool,
) -> crate::error::Result<bool> {
    let temp = TempDb::create(e, "backupctl_restore_")?;
    load(e, dir, &d.dump, &temp.name, Purpose::Restore).map_err(|err| {
        crate::error::Error::failure(format!(
            "database {}: {err}; {into} was left unchanged",
            d.name
        ))
    })?;
    if exists {
        e.drop_db(into)?;
    }
    e.rename_db(&temp.name, into)?;
    temp.keep();
    Ok(exists)
}

/// [`Replace::DropThenLoad`]: a database that exists but is empty is loaded
/// into as it is. Returns whether `into` was replaced.
fn drop_then_load<E: Engine>(
    e: &E,
    d: &DumpedDatabase,
    dir: &Path,
    into: &str,
    exists: bool,
    not_empty: bool,
) -> crate::error::Result<bool> {
    if not_empty {
        e.drop_db(into)?;
    }
    if not_empty || !exists {
        e.create_db(into)?;
    }
    load(e, dir, &d.dump, into, Purpose::Restore).map_err(|err| {
        crate::error::Error::failure(format!("database {}, loading into {into}: {err}", d.name))
    })?;
    Ok(not_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_the_password_from_the_named_variable() {
        let server = DbServerSpec {
            host: Some("h".into()),
            port: Some(1),
            user: Some("u".into()),
            password_env: None,
        };
        let ep = Endpoint::resolve(&server, "").unwrap();
        assert_eq!(
            (ep.host.as_deref(), ep.port, ep.password),
            (Some("h"), Some(1), None)
        );
        let unset = DbServerSpec {
            password_env: Some("BACKUPCTL_TEST_SURELY_UNSET_PASSWORD".into()),
            ..server
        };
        let e = Endpoint::resolve(&unset, "[verify] mysql").unwrap_err();
        assert!(matches!(e.exit_code(), crate::error::ExitCode::Usage));
        assert!(
            e.to_string()
                .starts_with("[verify] mysql: password_env names"),
            "{e}"
        );
    }
}
