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

use crate::archive::ExtractOptions;
use crate::config::{Config, Policy, SourceSpec};
use crate::error::CodedError;
use crate::repo::fetch;
use crate::source::db::DatabaseFacts;
use crate::source::{mysql, postgres};
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
    pub load: postgres::LoadReport,
}

pub async fn restore_into_database(
    cfg: &Config,
    policy: &Policy,
    o: &RestoreDbOptions,
) -> anyhow::Result<RestoreDbResult> {
    let spec = policy
        .sources
        .iter()
        .find(|s| s.name() == o.source)
        .ok_or_else(|| {
            CodedError::usage(format!(
                "policy {} has no source {:?}; --into-database loads into that source's configured server",
                policy.name, o.source
            ))
        })?
        .clone();
    if !matches!(spec, SourceSpec::Postgres(_) | SourceSpec::Mysql(_)) {
        return Err(CodedError::usage(format!(
            "source {} is of type {}: --into-database works for postgres and mysql sources; restore it with --to DIR",
            o.source,
            spec.kind()
        ))
        .into());
    }
    if o.into.is_empty() {
        return Err(CodedError::usage("--into-database: expected a database name").into());
    }
    let catalog = crate::ops::load_catalog(cfg, policy, o.target.as_deref()).await?;
    let entry = catalog.resolve(o.snapshot.as_deref())?;
    let m = entry.manifest.clone();
    let rec = m.source(&o.source).ok_or_else(|| {
        CodedError::usage(format!("snapshot {} has no source {:?}", m.id, o.source))
    })?;
    // Which targets this manifest came from, for messages.
    let held_by = if entry.complete_on.is_empty() {
        String::new()
    } else {
        format!(" on target {}", entry.complete_on.join(", "))
    };
    if rec.kind != spec.kind() {
        return Err(CodedError::failure(format!(
            "source {}: snapshot {}{held_by}: not loaded: the manifest records a {} source, \
             the configuration a {} source",
            rec.name,
            m.id,
            rec.kind,
            spec.kind()
        ))
        .into());
    }
    let facts = DatabaseFacts::from_record(rec)?;
    let (engine, format) = crate::source::configured_dump(&spec).expect("a database source");
    facts.check_configured(engine, format).map_err(|p| {
        CodedError::failure(format!(
            "source {}: snapshot {}{held_by}: {p}",
            rec.name, m.id
        ))
    })?;
    let dumped = match &o.database {
        Some(d) => facts.databases.iter().find(|x| &x.name == d),
        None if facts.databases.len() == 1 => facts.databases.first(),
        None => facts.databases.iter().find(|x| x.name == o.into),
    }
    .ok_or_else(|| {
        CodedError::usage(format!(
            "source {} of snapshot {} holds the databases {}: choose one with --database NAME",
            rec.name,
            m.id,
            facts
                .databases
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?
    .clone();

    // The same checked scratch root as verify; never ownership or setuid there.
    let scratch_root = crate::ops::verify::scratch_root(cfg, policy)?;
    let opts = ExtractOptions {
        preserve_owner: false,
        ..Default::default()
    };
    let fetched =
        fetch::unpack_first_intact(&catalog, entry, rec, &scratch_root, &opts, None).await?;
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
    let loaded = tokio::task::spawn_blocking(move || match &spec {
        SourceSpec::Postgres(s) => postgres::restore_into(s, &d, &dir2, &into, force),
        SourceSpec::Mysql(s) => mysql::restore_into(s, &d, &dir2, &into, force),
        _ => unreachable!("checked above"),
    })
    .await
    .expect("restore task panicked");
    let _ = std::fs::remove_dir_all(&dir);
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
