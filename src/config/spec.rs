//! The serde shapes of the configuration files (the documented keys).

use super::{from_value, resolve};
use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub policies_dir: Option<PathBuf>,
    /// The host signing key (default `<state_dir>/keys/host.key`).
    pub key_file: Option<PathBuf>,
    /// Public keys whose snapshots are trusted (`ed25519:<base64>`).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    #[serde(default)]
    pub targets: BTreeMap<String, toml::Value>,
    /// `[[notify]]`: notifiers for every policy (see [`crate::notify`]).
    #[serde(default)]
    pub notify: Vec<toml::Value>,
    /// Where this host is (compared with the targets' `location` by the
    /// 3-2-1 assessment of `status`).
    pub location: Option<String>,
    /// `[fleet]`: targets other hosts write to, watched by `status`.
    pub fleet: Option<FleetSpec>,
}

/// `[fleet]` of backupctl.toml: on a monitoring machine, the targets whose
/// every policy `status` reports (each host's snapshots, read from the
/// targets and authenticated with `trusted_keys`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Target names (defined under `[targets]`), typically one per host
    /// prefix of a shared bucket.
    pub targets: Vec<String>,
    /// How old a watched policy's newest snapshot may be (default 26h).
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    #[serde(default)]
    pub targets: Vec<String>,
    pub compression_level: Option<i32>,
    pub retention: Option<toml::Value>,
    #[serde(default)]
    pub sources: Vec<toml::Value>,
    pub verify: Option<toml::Value>,
    /// `[[notify]]`: this policy's own notifiers.
    #[serde(default)]
    pub notify: Vec<toml::Value>,
    /// How old the newest snapshot may be before `stale` is notified.
    pub max_age: Option<String>,
}

/// Reads the `type` key of a tagged table and returns the remaining table.
fn split_type(
    file: &Path,
    key: &str,
    value: toml::Value,
    kinds: &[&str],
) -> Result<(String, toml::Value), ConfigError> {
    let fd = file.display();
    let toml::Value::Table(mut table) = value else {
        return Err(ConfigError::new(&fd, key, "expected a table"));
    };
    let expected = kinds
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let kind = match table.remove("type") {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            return Err(ConfigError::new(
                &fd,
                format!("{key}.type"),
                format!("expected a string, one of {expected}"),
            ))
        }
        None => {
            return Err(ConfigError::new(
                &fd,
                format!("{key}.type"),
                format!("missing: expected one of {expected}"),
            ))
        }
    };
    if !kinds.contains(&kind.as_str()) {
        return Err(ConfigError::new(
            &fd,
            format!("{key}.type"),
            format!("unknown type {kind:?}: expected one of {expected}"),
        ));
    }
    Ok((kind, toml::Value::Table(table)))
}

/// A storage target as configured in `[targets.NAME]`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetSpec {
    Fs(FsTargetSpec),
    S3(S3TargetSpec),
}

impl TargetSpec {
    pub(super) fn parse(
        file: &Path,
        key: &str,
        dir: &Path,
        value: toml::Value,
    ) -> Result<TargetSpec, ConfigError> {
        let (kind, rest) = split_type(file, key, value, &["fs", "s3"])?;
        let spec = match kind.as_str() {
            "fs" => {
                let mut s: FsTargetSpec = from_value(file, key, rest)?;
                s.path = resolve(dir, &s.path);
                TargetSpec::Fs(s)
            }
            _ => {
                if let toml::Value::Table(t) = &rest {
                    for plain in [
                        "access_key_id",
                        "secret_access_key",
                        "session_token",
                        "secret_key",
                        "access_key",
                    ] {
                        if t.contains_key(plain) {
                            return Err(ConfigError::new(
                                file.display(),
                                format!("{key}.{plain}"),
                                "plain-text credentials are refused: use the standard AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, instance roles) or name environment variables with access_key_id_env / secret_access_key_env",
                            ));
                        }
                    }
                }
                let s: S3TargetSpec = from_value(file, key, rest)?;
                s.validate(file, key)?;
                TargetSpec::S3(s)
            }
        };
        if spec.location().trim().is_empty() {
            return Err(ConfigError::new(
                file.display(),
                format!("{key}.location"),
                "expected a non-empty string naming where this copy physically lives",
            ));
        }
        Ok(spec)
    }

    pub fn location(&self) -> &str {
        match self {
            TargetSpec::Fs(s) => &s.location,
            TargetSpec::S3(s) => &s.location,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TargetSpec::Fs(_) => "fs",
            TargetSpec::S3(_) => "s3",
        }
    }
}

/// `type = "fs"`: a local or mounted (NAS) directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FsTargetSpec {
    pub path: PathBuf,
    pub location: String,
    /// Create the root (and its marker) on the first `run` when it is
    /// missing. Off by default: a missing root is a disk that is not mounted,
    /// and must not be silently replaced by a directory on the local disk.
    #[serde(default)]
    pub create: bool,
}

/// `type = "s3"`: any S3-compatible object store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3TargetSpec {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub location: String,
    pub storage_class: Option<String>,
    /// Name of the environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// Name of the environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// Multipart part size in MiB (default 16, minimum 5).
    pub part_size_mib: Option<u64>,
    /// Parts uploaded concurrently per archive (default 4).
    pub parts_in_flight: Option<usize>,
    /// Attempts for transient errors before giving up (default 5).
    pub max_attempts: Option<u32>,
}

impl S3TargetSpec {
    fn validate(&self, file: &Path, key: &str) -> Result<(), ConfigError> {
        let fd = file.display();
        if self.bucket.trim().is_empty() {
            return Err(ConfigError::new(
                &fd,
                format!("{key}.bucket"),
                "expected a bucket name",
            ));
        }
        if self.access_key_id_env.is_some() != self.secret_access_key_env.is_some() {
            return Err(ConfigError::new(
                &fd,
                key,
                "access_key_id_env and secret_access_key_env go together: set both or neither",
            ));
        }
        if let Some(p) = self.part_size_mib {
            if !(5..=5120).contains(&p) {
                return Err(ConfigError::new(
                    &fd,
                    format!("{key}.part_size_mib"),
                    "expected a part size from 5 to 5120 MiB",
                ));
            }
        }
        if self.parts_in_flight == Some(0) {
            return Err(ConfigError::new(
                &fd,
                format!("{key}.parts_in_flight"),
                "expected at least 1",
            ));
        }
        Ok(())
    }
}

/// One `[[sources]]` entry. What a source does (archive, verify, load) is
/// [`crate::source::Source`], which `SourceSpec::source` (in `crate::source`)
/// turns each entry into.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    Files(FilesSourceSpec),
    Postgres(PostgresSourceSpec),
    Mysql(MysqlSourceSpec),
    Sqlite(SqliteSourceSpec),
}

impl SourceSpec {
    pub(super) fn parse(
        file: &Path,
        key: &str,
        dir: &Path,
        value: toml::Value,
    ) -> Result<SourceSpec, ConfigError> {
        let (kind, rest) = split_type(file, key, value, &["files", "postgres", "mysql", "sqlite"])?;
        Ok(match kind.as_str() {
            "files" => {
                let mut s: FilesSourceSpec = from_value(file, key, rest)?;
                s.path = resolve(dir, &s.path);
                SourceSpec::Files(s)
            }
            "postgres" => {
                let s: PostgresSourceSpec = from_value(file, key, rest)?;
                s.selection().validate(file, key)?;
                if !matches!(s.format.as_str(), "custom" | "plain") {
                    return Err(ConfigError::new(
                        file.display(),
                        format!("{key}.format"),
                        format!("expected \"custom\" or \"plain\", got {:?}", s.format),
                    ));
                }
                SourceSpec::Postgres(s)
            }
            "mysql" => {
                let s: MysqlSourceSpec = from_value(file, key, rest)?;
                s.selection().validate(file, key)?;
                SourceSpec::Mysql(s)
            }
            _ => {
                let mut s: SqliteSourceSpec = from_value(file, key, rest)?;
                s.path = resolve(dir, &s.path);
                SourceSpec::Sqlite(s)
            }
        })
    }

    pub fn name(&self) -> &str {
        match self {
            SourceSpec::Files(s) => &s.name,
            SourceSpec::Postgres(s) => &s.name,
            SourceSpec::Mysql(s) => &s.name,
            SourceSpec::Sqlite(s) => &s.name,
        }
    }
}

/// `type = "files"`: a directory tree.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceSpec {
    pub name: String,
    pub path: PathBuf,
    /// gitignore-style patterns relative to `path`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Stay on the file system of `path` (do not cross mount points).
    #[serde(default)]
    pub one_file_system: bool,
}

/// Which databases a database source dumps: `database`, `databases` or `all`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatabaseSelection {
    pub database: Option<String>,
    pub databases: Option<Vec<String>>,
    pub all: bool,
}

impl DatabaseSelection {
    pub(super) fn validate(&self, file: &Path, key: &str) -> Result<(), ConfigError> {
        let n = self.database.is_some() as u8 + self.databases.is_some() as u8 + self.all as u8;
        if n != 1 {
            return Err(ConfigError::new(
                file.display(),
                key,
                "expected exactly one of database = \"name\", databases = [\"a\", \"b\"] or all = true",
            ));
        }
        if matches!(&self.databases, Some(v) if v.is_empty()) {
            return Err(ConfigError::new(
                file.display(),
                format!("{key}.databases"),
                "expected at least one database name",
            ));
        }
        Ok(())
    }

    /// The explicitly named databases (empty for `all`).
    pub fn names(&self) -> Vec<String> {
        match (&self.database, &self.databases) {
            (Some(d), _) => vec![d.clone()],
            (_, Some(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
}

fn default_pg_format() -> String {
    "custom".to_string()
}

/// `type = "postgres"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceSpec {
    pub name: String,
    pub database: Option<String>,
    pub databases: Option<Vec<String>>,
    #[serde(default)]
    pub all: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    pub password_env: Option<String>,
    /// pg_dump format: "custom" (default) or "plain".
    #[serde(default = "default_pg_format")]
    pub format: String,
}

/// `type = "mysql"` (MySQL or MariaDB).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceSpec {
    pub name: String,
    pub database: Option<String>,
    pub databases: Option<Vec<String>>,
    #[serde(default)]
    pub all: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password_env: Option<String>,
}

/// What the database-server source types (`postgres`, `mysql`) have in
/// common: which databases, and where the server is.
pub trait DbSourceSpec {
    /// The source's `name`.
    fn source_name(&self) -> &str;
    /// The `database` / `databases` / `all` keys as one value.
    fn selection(&self) -> DatabaseSelection;
    /// The server to dump from (and restore into): `host`, `port`, `user`,
    /// `password_env`.
    fn server(&self) -> DbServerSpec;
}

macro_rules! db_source_spec {
    ($($t:ty),*) => {$(
        impl DbSourceSpec for $t {
            fn source_name(&self) -> &str {
                &self.name
            }
            fn selection(&self) -> DatabaseSelection {
                DatabaseSelection { database: self.database.clone(), databases: self.databases.clone(), all: self.all }
            }
            fn server(&self) -> DbServerSpec {
                DbServerSpec { host: self.host.clone(), port: self.port, user: self.user.clone(), password_env: self.password_env.clone() }
            }
        }
    )*};
}
db_source_spec!(PostgresSourceSpec, MysqlSourceSpec);

/// `type = "sqlite"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceSpec {
    pub name: String,
    pub path: PathBuf,
}

/// Connection to a verification database server (`[verify] postgres = {...}`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbServerSpec {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password_env: Option<String>,
}

fn default_sample() -> usize {
    1
}

/// The policy's `[verify]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// Snapshots verified per `verify` run by default.
    #[serde(default = "default_sample")]
    pub sample: usize,
    /// Where samples are unpacked; default `<state_dir>/scratch`.
    pub scratch_dir: Option<PathBuf>,
    /// Cron schedule making verification due (`verify --due`).
    pub schedule: Option<String>,
    /// How long ago the last successful verification may be before
    /// `status` reports the policy unverified (e.g. `"8d"`).
    pub max_age: Option<String>,
    pub postgres: Option<DbServerSpec>,
    pub mysql: Option<DbServerSpec>,
}

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            sample: 1,
            scratch_dir: None,
            schedule: None,
            max_age: None,
            postgres: None,
            mysql: None,
        }
    }
}
