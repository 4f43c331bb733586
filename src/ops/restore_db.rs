//! `backupctl restore POLICY [SNAPSHOT] --source NAME --into-database DB`:
//! fetch a database source's archive (failing over across targets like
//! `restore --to`), unpack it into the scratch area, and load the dump into
//! the source's configured server. A non-empty database is refused unless
//! `--force`.
//!
//! How the dump is loaded (engine, format, server) follows the source as the
//! policy configures it; a snapshot whose manifest disagrees (another source
//! type, another dump format) is refused before anything is fetched, and the
//! loaders themselves never let a dump run commands on this host (see
//! [`crate::source`]).

use crate::archive::{ExtractOptions, SourceRecord};
use crate::config::{Config, Policy, SourceSpec};
use crate::repo::fetch;
use crate::repo::Entry;
use crate::source::db::{DatabaseFacts, DumpedDatabase};
use crate::source::server_db::LoadReport;
use crate::source::Source;
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct RestoreDbOptions {
    pub snapshot: Option<String>,
    pub source: String,
    pub into: String,
    /// Which dump of a multi-database source (default: the only one, or
    /// the one named like `into`).
    pub database: Option<String>,
    pub target: Option<String>,
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub struct RestoreDbResult {
    pub policy: String,
    pub snapshot: String,
    pub time: String,
    pub source: String,
    pub target: String,
    pub skipped_targets: Vec<(String, String)>,
    /// The database dumped.
    pub from_database: String,
    #[serde(flatten)]
    pub load: LoadReport,
}

pub async fn restore_into_database(
    cfg: &Config,
    policy: &Policy,
    o: &RestoreDbOptions,
) -> crate::error::Result<RestoreDbResult> {
    let spec = database_source(policy, o)?.clone();
    let catalog = crate::ops::load_catalog(cfg, policy, o.target.as_deref()).await?;
    let entry = catalog.resolve(o.snapshot.as_deref())?;
    let m = entry.manifest.clone();
    let rec = m.source(&o.source).ok_or_else(|| {
        crate::error::Error::usage(format!("snapshot {} has no source {:?}", m.id, o.source))
    })?;
    let dumped = chosen_dump(spec.source(), entry, rec, o)?;

    // The same checked scratch root as verify; never ownership or setuid there.
    let scratch_root = crate::ops::verify::scratch_root(cfg, policy)?;
    let opts = ExtractOptions {
        preserve_owner: false,
        ..Default::default()
    };
    let fetched =
        fetch::unpack_first_intact(&catalog, entry, rec, &scratch_root, &opts, None, None).await?;
    let (tname, dir, skipped) = (fetched.target, fetched.value.dir, fetched.skipped);
    tracing::info!(
        "restore policy={} snapshot={} source={} database={} from target={} into database {}",
        policy.name,
        m.id,
        rec.name,
        dumped.name,
        tname,
        o.into
    );
    let (into, force, dir2) = (o.into.clone(), o.force, dir.clone());
    let d = dumped.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let loader = spec.source().database_restore().expect("checked above");
        loader.restore_into(&d, &dir2, &into, force)
    })
    .await
    .expect("restore task panicked");
    let _ = crate::archive::beneath::remove_tree(&dir);
    let load = loaded.map_err(|e| {
        e.context(format!(
            "source {} of snapshot {} from target {tname}",
            rec.name, m.id
        ))
    })?;
    Ok(RestoreDbResult {
        policy: policy.name.clone(),
        snapshot: m.id.clone(),
        time: m.time.to_rfc3339(),
        source: rec.name.clone(),
        target: tname,
        skipped_targets: skipped,
        from_database: dumped.name,
        load,
    })
}

/// The configured source `--source` names, if it can load into a database
/// (usage errors otherwise, before anything is fetched).
fn database_source<'a>(
    policy: &'a Policy,
    o: &RestoreDbOptions,
) -> crate::error::Result<&'a SourceSpec> {
    let spec = policy
        .sources
        .iter()
        .find(|s| s.name() == o.source)
        .ok_or_else(|| {
            crate::error::Error::usage(format!(
                "policy {} has no source {:?}; --into-database loads into that source's configured server",
                policy.name, o.source
            ))
        })?;
    let source = spec.source();
    if source.database_restore().is_none() {
        return Err(crate::error::Error::usage(format!(
            "source {} is of type {}: --into-database works for postgres and mysql sources; restore it with --to DIR",
            o.source,
            source.kind()
        )));
    }
    if o.into.is_empty() {
        return Err(crate::error::Error::usage(
            "--into-database: expected a database name",
        ));
    }
    Ok(spec)
}

/// The dump to load: the record must be of the configured source's type
/// and dump format (else nothing is loaded, exit 1); `--database` chooses
/// among several.
fn chosen_dump(
    source: &dyn Source,
    entry: &Entry,
    rec: &SourceRecord,
    o: &RestoreDbOptions,
) -> crate::error::Result<DumpedDatabase> {
    let id = &entry.manifest.id;
    // Which targets this manifest came from, for messages.
    let held_by = if entry.complete_on.is_empty() {
        String::new()
    } else {
        format!(" on target {}", entry.complete_on.join(", "))
    };
    if rec.kind != source.kind() {
        return Err(crate::error::Error::failure(format!(
            "source {}: snapshot {id}{held_by}: not loaded: the manifest records a {} source, \
             the configuration a {} source",
            rec.name,
            rec.kind,
            source.kind()
        )));
    }
    let facts = DatabaseFacts::from_record(rec)?;
    let configured = source.dump_format().expect("a database source");
    facts
        .check_configured(configured.engine, configured.format)
        .map_err(|p| {
            crate::error::Error::failure(format!(
                "source {}: snapshot {id}{held_by}: {p}",
                rec.name
            ))
        })?;
    let dumped = match &o.database {
        Some(d) => facts.databases.iter().find(|x| &x.name == d),
        None if facts.databases.len() == 1 => facts.databases.first(),
        None => facts.databases.iter().find(|x| x.name == o.into),
    };
    dumped.cloned().ok_or_else(|| {
        let names: Vec<&str> = facts.databases.iter().map(|d| d.name.as_str()).collect();
        crate::error::Error::usage(format!(
            "source {} of snapshot {id} holds the databases {}: choose one with --database NAME",
            rec.name,
            names.join(", ")
        ))
    })
}
