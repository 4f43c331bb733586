//! Configuration: `backupctl.toml` plus `policies/*.toml`, parsed and validated
//! into a model the rest of the crate trusts.
//!
//! Every problem is a [`ConfigError`] naming the file, the key and what was
//! expected; the CLI maps it to exit code 2. Validation never writes anything.
//! Relative paths anywhere in the configuration resolve against the directory
//! that holds `backupctl.toml`.

mod spec;

pub use spec::*;

use crate::error::ConfigError;
use crate::retention::RetentionPolicy;
use crate::schedule::Schedule;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where `--config` was not given, these are searched in order.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["./backupctl.toml", "/etc/backupctl/backupctl.toml"];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// Its directory; relative paths resolve against it.
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub policies_dir: PathBuf,
    /// The host signing key: `key_file`, else `<state_dir>/keys/host.key`.
    pub key_file: PathBuf,
    /// Whether `key_file` was set (then it must exist to sign).
    pub key_file_configured: bool,
    /// Keys pinned by `trusted_keys` and by `--trust` for this run; see
    /// [`Config::trust`] for the full set.
    pub pinned_keys: crate::trust::Trust,
    pub targets: BTreeMap<String, TargetSpec>,
    pub policies: BTreeMap<String, Policy>,
    /// Policy files that could not be loaded, by policy name (file stem).
    /// They fail on their own: every other policy still runs.
    pub broken: BTreeMap<String, ConfigError>,
    /// `[[notify]]` of backupctl.toml: notifiers for every policy.
    pub notify: Vec<crate::notify::NotifySpec>,
    /// `location`: where this host is, if said.
    pub location: Option<String>,
    /// `[fleet]`: targets other hosts write to, watched by `status`.
    pub fleet: Option<Fleet>,
}

/// `[fleet]`, validated.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub targets: Vec<String>,
    pub max_age: std::time::Duration,
}

/// A watched policy's newest snapshot may be this old by default (a nightly
/// run plus two hours of slack).
pub const FLEET_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(26 * 3600);

/// Validate `[fleet]`: its targets must be defined.
fn parse_fleet(
    path: &Path,
    spec: Option<spec::FleetSpec>,
    targets: &BTreeMap<String, TargetSpec>,
) -> Result<Option<Fleet>, ConfigError> {
    let Some(spec) = spec else { return Ok(None) };
    for (i, t) in spec.targets.iter().enumerate() {
        if !targets.contains_key(t) {
            return Err(ConfigError::new(
                path.display(),
                format!("fleet.targets[{i}]"),
                format!("unknown target {t:?}: expected a name defined under [targets]"),
            ));
        }
    }
    let max_age = match spec.max_age.as_deref() {
        Some(t) => crate::duration::parse_elapsed(t)
            .map_err(|e| ConfigError::new(path.display(), "fleet.max_age", e.to_string()))?,
        None => FLEET_MAX_AGE,
    };
    Ok(Some(Fleet {
        targets: spec.targets,
        max_age,
    }))
}

/// A validated policy (`policies/<name>.toml`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub file: PathBuf,
    pub schedule: Option<Schedule>,
    pub schedule_text: Option<String>,
    pub jitter: Option<std::time::Duration>,
    /// Target names, in the policy's order (restore tries them in this order).
    pub targets: Vec<String>,
    pub compression_level: i32,
    pub retention: RetentionPolicy,
    pub sources: Vec<SourceSpec>,
    pub verify: VerifySpec,
    pub verify_schedule: Option<Schedule>,
    /// `[verify] max_age`: `status` reports the policy unverified beyond it.
    pub verify_max_age: Option<std::time::Duration>,
    /// The policy's own `[[notify]]` notifiers (the global ones apply too).
    pub notify: Vec<crate::notify::NotifySpec>,
    /// `max_age`: the newest snapshot may be this old before `stale`.
    pub max_age: Option<std::time::Duration>,
}

/// Find the config file: explicit flag, then `BACKUPCTL_CONFIG` (handled by
/// clap's `env`), then the default locations.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    for p in DEFAULT_CONFIG_PATHS {
        let p = Path::new(p);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
    }
    Err(ConfigError::new(
        "backupctl",
        "",
        format!(
            "no configuration found: pass --config FILE, set BACKUPCTL_CONFIG, or create one of {}",
            DEFAULT_CONFIG_PATHS.join(", ")
        ),
    ))
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display(), "", format!("cannot read file: {e}")))
}

/// Turn a toml deserialisation error into "file:line:col: message".
fn toml_error(file: &Path, text: &str, key_prefix: &str, err: toml::de::Error) -> ConfigError {
    let mut where_ = file.display().to_string();
    if let Some(span) = err.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        where_ = format!("{where_}:{line}:{col}");
    }
    let msg = err.message().trim().to_string();
    ConfigError::new(where_, key_prefix, msg)
}

fn from_value<T: DeserializeOwned>(
    file: &Path,
    key: &str,
    v: toml::Value,
) -> Result<T, ConfigError> {
    T::deserialize(v)
        .map_err(|e| ConfigError::new(file.display(), key, e.message().trim().to_string()))
}

/// Resolve a possibly relative path against the config directory.
/// The result is normalised lexically (`a/b/../c` -> `a/c`) for readable messages.
pub fn resolve(dir: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Config {
    /// Load and validate the configuration and every policy.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        let (mut cfg, policies_dir_set) = Config::parse_main(path, &text)?;
        if cfg.policies_dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.policies_dir)
                .map_err(|e| {
                    ConfigError::new(
                        cfg.policies_dir.display(),
                        "",
                        format!("cannot read policies directory: {e}"),
                    )
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            files.sort();
            for file in files {
                // The name is checked before the file is read.
                let loaded = policy_name(&file).and_then(|_| {
                    let text = read_file(&file)?;
                    cfg.parse_policy(&file, &text)
                });
                cfg.insert_policy(&file, loaded);
            }
        } else if policies_dir_set {
            return Err(ConfigError::new(
                path.display(),
                "policies_dir",
                format!("{} is not a directory", cfg.policies_dir.display()),
            ));
        }
        Ok(cfg)
    }

    /// The configuration in `text` (the file `path`) and the policies in
    /// `policies` (each its file path and text), validated as [`Config::load`]
    /// validates them, without reading or writing anything: `policies_dir`
    /// is not listed (the policies given are the ones there), and whether
    /// source paths exist is left to [`Policy::missing_paths`], as in `load`.
    pub fn from_texts<'a>(
        path: &Path,
        text: &str,
        policies: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Config, ConfigError> {
        let (mut cfg, _) = Config::parse_main(path, text)?;
        for (file, text) in policies {
            let loaded = policy_name(file).and_then(|_| cfg.parse_policy(file, text));
            cfg.insert_policy(file, loaded);
        }
        Ok(cfg)
    }

    /// `backupctl.toml` alone (no policies yet), and whether it set
    /// `policies_dir`.
    fn parse_main(path: &Path, text: &str) -> Result<(Config, bool), ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, "", e))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let state_dir = raw
            .state_dir
            .as_deref()
            .map(|p| resolve(&dir, p))
            .unwrap_or_else(|| dir.join(".backupctl"));
        let policies_dir = raw
            .policies_dir
            .as_deref()
            .map(|p| resolve(&dir, p))
            .unwrap_or_else(|| dir.join("policies"));

        let key_file_configured = raw.key_file.is_some();
        let key_file = raw
            .key_file
            .as_deref()
            .map(|p| resolve(&dir, p))
            .unwrap_or_else(|| state_dir.join("keys").join("host.key"));
        let mut trust = crate::trust::Trust::default();
        for (i, k) in raw.trusted_keys.iter().enumerate() {
            let key = k
                .parse::<crate::trust::PublicKey>()
                .map_err(|e| ConfigError::new(path.display(), format!("trusted_keys[{i}]"), e))?;
            trust.add(key);
        }

        let notify = crate::notify::spec::parse_list(path, "backupctl.toml", raw.notify)?;
        let mut targets = BTreeMap::new();
        for (name, value) in raw.targets {
            let key = format!("targets.{name}");
            validate_name(path, &key, &name)?;
            let spec = TargetSpec::parse(path, &key, &dir, value)?;
            targets.insert(name, spec);
        }
        let fleet = parse_fleet(path, raw.fleet, &targets)?;

        Ok((
            Config {
                path: abs,
                dir,
                state_dir,
                policies_dir,
                key_file,
                key_file_configured,
                pinned_keys: trust,
                targets,
                policies: BTreeMap::new(),
                broken: BTreeMap::new(),
                notify,
                location: raw.location,
                fleet,
            },
            raw.policies_dir.is_some(),
        ))
    }

    fn parse_policy(&self, file: &Path, text: &str) -> Result<Policy, ConfigError> {
        Policy::parse(file, text, &self.dir, &self.targets, &self.state_dir)
    }

    /// File a policy that loaded, or its error under the file's stem: a
    /// broken policy fails on its own.
    fn insert_policy(&mut self, file: &Path, loaded: Result<Policy, ConfigError>) {
        match loaded {
            Ok(policy) => {
                self.policies.insert(policy.name.clone(), policy);
            }
            Err(e) => {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.broken.insert(stem, e);
            }
        }
    }

    /// Keys whose snapshots are trusted: the pinned ones and this host's own
    /// key when its key file is readable (read now: a run may just have
    /// created it).
    pub fn trust(&self) -> crate::trust::Trust {
        let mut t = self.pinned_keys.clone();
        if let Ok(own) = crate::trust::HostKey::load(&self.key_file) {
            t.add(own.public());
        }
        t
    }

    /// The key that signs this host's snapshots. With `key_file` set, that
    /// file must exist (`backupctl key init`); without it, a key is created
    /// under the state directory on first use, and how to pin it is printed
    /// once.
    pub fn signing_key(&self) -> crate::error::Result<crate::trust::HostKey> {
        use crate::trust::HostKey;
        match HostKey::load(&self.key_file) {
            Ok(k) => Ok(k),
            Err(crate::trust::KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !self.key_file_configured =>
            {
                let k = HostKey::create(&self.key_file)?;
                eprintln!(
                    "backupctl: created this host's signing key {}.\n\
                     Snapshots are signed with it; a machine that restores them must trust it. \
                     Add this line to backupctl.toml on every machine that restores or verifies \
                     (and keep a copy of the key file itself with your recovery documents):\n\
                     \n    trusted_keys = [\"{}\"]\n",
                    k.path.display(),
                    k.public()
                );
                Ok(k)
            }
            Err(crate::trust::KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(ConfigError::new(
                    self.path.display(),
                    "key_file",
                    format!(
                        "{} does not exist: create it with `backupctl key init --key-file {}`",
                        self.key_file.display(),
                        self.key_file.display()
                    ),
                )
                .into())
            }
            Err(e) => Err(ConfigError::new(self.path.display(), "key_file", e.to_string()).into()),
        }
    }

    /// The policies named on the command line (all when `names` is empty),
    /// with the broken ones among them set apart. A name that is neither a
    /// policy nor a broken policy file is a usage error.
    pub fn selection(&self, names: &[String]) -> Result<Selection<'_>, ConfigError> {
        let mut sel = Selection::default();
        if names.is_empty() {
            if self.policies.is_empty() && self.broken.is_empty() {
                return Err(ConfigError::new(
                    self.policies_dir.display(),
                    "",
                    "no policies found: add a *.toml policy file to this directory",
                ));
            }
            sel.policies = self.policies.values().collect();
            sel.broken = self.broken.iter().map(|(n, e)| (n.clone(), e)).collect();
            return Ok(sel);
        }
        for n in names {
            if let Some(e) = self.broken.get(n) {
                if !sel.broken.iter().any(|(b, _)| b == n) {
                    sel.broken.push((n.clone(), e));
                }
                continue;
            }
            let p = self.policy(n)?;
            if !sel.policies.iter().any(|q| q.name == p.name) {
                sel.policies.push(p);
            }
        }
        Ok(sel)
    }

    /// The valid policies named (all when `names` is empty); a broken one
    /// named, or any broken one when all are asked for, is its error.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Policy>, ConfigError> {
        let sel = self.selection(names)?;
        if let Some((_, e)) = sel.broken.first() {
            return Err((*e).clone());
        }
        Ok(sel.policies)
    }

    /// One policy by name; a policy file that failed to load gives its error.
    pub fn policy(&self, name: &str) -> Result<&Policy, ConfigError> {
        if let Some(e) = self.broken.get(name) {
            return Err(e.clone());
        }
        self.policies.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
            ConfigError::new(
                self.policies_dir.display(),
                "",
                format!("no policy named {name:?} (known: {})", known.join(", ")),
            )
        })
    }
}

/// Policies chosen for a command.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    pub policies: Vec<&'a Policy>,
    /// Named (or all) policies whose files failed to load, with why.
    pub broken: Vec<(String, &'a ConfigError)>,
}

/// The names of policies, targets and sources: letters, digits, `-`, `_`
/// and `.`, not starting with `.` (so never `..`, `/` or empty), at most 128.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

fn validate_name(file: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            file.display(),
            key,
            format!("invalid name {name:?}: expected letters, digits, '-', '_' or '.', not starting with '.'"),
        ))
    }
}

/// A policy's name: its file's stem, checked like every name.
fn policy_name(file: &Path) -> Result<String, ConfigError> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    validate_name(file, "(file name)", &name)?;
    Ok(name)
}

/// A schedule expression at `key`.
fn parse_schedule(file: &Path, key: &str, s: &str) -> Result<Schedule, ConfigError> {
    s.parse::<Schedule>()
        .map_err(|e| ConfigError::new(file.display(), key, e.to_string()))
}

/// `targets`: at least one, each defined in backupctl.toml, none twice.
fn check_targets(
    file: &Path,
    names: &[String],
    defined: &BTreeMap<String, TargetSpec>,
) -> Result<(), ConfigError> {
    let fd = file.display();
    if names.is_empty() {
        return Err(ConfigError::new(
            &fd,
            "targets",
            "expected at least one target name, e.g. targets = [\"nas\", \"offsite\"]",
        ));
    }
    let mut seen = BTreeSet::new();
    for t in names {
        if !defined.contains_key(t) {
            let known: Vec<&str> = defined.keys().map(String::as_str).collect();
            return Err(ConfigError::new(
                &fd,
                "targets",
                format!(
                    "target {t:?} is not defined in backupctl.toml (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if !seen.insert(t) {
            return Err(ConfigError::new(
                &fd,
                "targets",
                format!("target {t:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// `compression_level`: a zstd level from 1 to 19 (3 when unset).
fn compression_level(file: &Path, level: Option<i32>) -> Result<i32, ConfigError> {
    let level = level.unwrap_or(3);
    if !(1..=19).contains(&level) {
        return Err(ConfigError::new(
            file.display(),
            "compression_level",
            format!("expected a zstd level from 1 to 19, got {level}"),
        ));
    }
    Ok(level)
}

/// `[retention]`: required, valid, with at least one rule.
fn parse_retention(file: &Path, raw: Option<toml::Value>) -> Result<RetentionPolicy, ConfigError> {
    let fd = file.display();
    let retention: RetentionPolicy = match raw {
        Some(v) => from_value(file, "retention", v)?,
        None => {
            return Err(ConfigError::new(
                &fd,
                "retention",
                "missing [retention] section: expected at least one rule, e.g. daily = 7",
            ))
        }
    };
    retention
        .validate()
        .map_err(|e| ConfigError::new(&fd, "retention", e))?;
    if retention.is_empty() {
        return Err(ConfigError::new(
            &fd,
            "retention",
            "no retention rule set: expected at least one of last, hourly, daily, weekly, monthly, yearly (a count, -1 = unlimited) or within (e.g. \"14d\")",
        ));
    }
    Ok(retention)
}

/// `[[sources]]`: at least one, each valid and named uniquely.
fn parse_sources(
    file: &Path,
    dir: &Path,
    raw: Vec<toml::Value>,
) -> Result<Vec<SourceSpec>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            file.display(),
            "sources",
            "expected at least one [[sources]] entry",
        ));
    }
    let mut sources = Vec::new();
    let mut names = BTreeSet::new();
    for (i, v) in raw.into_iter().enumerate() {
        let key = format!("sources[{i}]");
        let src = SourceSpec::parse(file, &key, dir, v)?;
        let key = format!("sources[{i}] ({})", src.name());
        validate_name(file, &key, src.name())?;
        if !names.insert(src.name().to_string()) {
            return Err(ConfigError::new(
                file.display(),
                format!("sources[{i}].name"),
                format!(
                    "duplicate source name {:?}: each source needs a unique name",
                    src.name()
                ),
            ));
        }
        sources.push(src);
    }
    Ok(sources)
}

/// `[verify]` (defaults when absent), its scratch directory resolved
/// (`<state_dir>/scratch` by default), and its schedule.
fn parse_verify(
    file: &Path,
    dir: &Path,
    state_dir: &Path,
    raw: Option<toml::Value>,
) -> Result<(VerifySpec, Option<Schedule>), ConfigError> {
    let mut verify: VerifySpec = match raw {
        Some(v) => from_value(file, "verify", v)?,
        None => VerifySpec::default(),
    };
    verify.scratch_dir = Some(match verify.scratch_dir.take() {
        Some(p) => resolve(dir, &p),
        None => state_dir.join("scratch"),
    });
    let schedule = verify
        .schedule
        .as_deref()
        .map(|s| parse_schedule(file, "verify.schedule", s))
        .transpose()?;
    Ok((verify, schedule))
}

impl Policy {
    /// The policy in `text` (the file `file`); reads nothing. Keys are
    /// checked one after another; the first problem is the error.
    fn parse(
        file: &Path,
        text: &str,
        dir: &Path,
        targets: &BTreeMap<String, TargetSpec>,
        state_dir: &Path,
    ) -> Result<Policy, ConfigError> {
        let name = policy_name(file)?;
        let raw: RawPolicy = toml::from_str(text).map_err(|e| toml_error(file, text, "", e))?;
        let fd = file.display();
        let schedule = raw
            .schedule
            .as_deref()
            .map(|s| parse_schedule(file, "schedule", s))
            .transpose()?;
        let jitter = raw
            .jitter
            .as_deref()
            .map(crate::schedule::parse_jitter)
            .transpose()
            .map_err(|e| ConfigError::new(&fd, "jitter", e))?;
        check_targets(file, &raw.targets, targets)?;
        let level = compression_level(file, raw.compression_level)?;
        let retention = parse_retention(file, raw.retention)?;
        let sources = parse_sources(file, dir, raw.sources)?;
        let (verify, verify_schedule) = parse_verify(file, dir, state_dir, raw.verify)?;
        let verify_max_age = verify
            .max_age
            .as_deref()
            .map(|t| {
                crate::duration::parse_elapsed(t)
                    .map_err(|e| ConfigError::new(file.display(), "verify.max_age", e.to_string()))
            })
            .transpose()?;
        let notify = crate::notify::spec::parse_list(file, &format!("policy {name}"), raw.notify)?;
        let max_age = raw
            .max_age
            .as_deref()
            .map(|t| {
                crate::duration::parse_elapsed(t)
                    .map_err(|e| ConfigError::new(&fd, "max_age", e.to_string()))
            })
            .transpose()?;
        Ok(Policy {
            notify,
            max_age,
            name,
            file: file.to_path_buf(),
            schedule,
            schedule_text: raw.schedule,
            jitter,
            targets: raw.targets,
            compression_level: level,
            retention,
            sources,
            verify,
            verify_schedule,
            verify_max_age,
        })
    }

    /// The distinct `location` values of this policy's targets.
    pub fn locations<'a>(&self, cfg: &'a Config) -> BTreeSet<&'a str> {
        self.targets
            .iter()
            .filter_map(|t| cfg.targets.get(t))
            .map(|t| t.location())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error's full text, as the CLI prints it.
    fn text<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> String {
        r.expect_err("an error").to_string()
    }

    #[test]
    fn targets_must_be_listed_defined_and_distinct() {
        let file = Path::new("/etc/backupctl/policies/shop.toml");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut defined = BTreeMap::new();
        assert_eq!(
            text(check_targets(file, &names(&["nas"]), &defined)),
            "/etc/backupctl/policies/shop.toml: targets: target \"nas\" is not defined in backupctl.toml (defined: none)"
        );
        let fs: toml::Value =
            toml::from_str("type = \"fs\"\npath = \"/srv\"\nlocation = \"home\"").unwrap();
        let nas = TargetSpec::parse(file, "targets.nas", Path::new("/"), fs).unwrap();
        defined.insert("nas".to_string(), nas.clone());
        defined.insert("usb".to_string(), nas);
        check_targets(file, &names(&["nas", "usb"]), &defined).unwrap();
        assert_eq!(
            text(check_targets(file, &names(&["nas", "off"]), &defined)),
            "/etc/backupctl/policies/shop.toml: targets: target \"off\" is not defined in backupctl.toml (defined: nas, usb)"
        );
        assert_eq!(
            text(check_targets(file, &names(&["usb", "usb"]), &defined)),
            "/etc/backupctl/policies/shop.toml: targets: target \"usb\" is listed twice"
        );
        assert!(text(check_targets(file, &[], &defined)).starts_with(
            "/etc/backupctl/policies/shop.toml: targets: expected at least one target name"
        ));
    }

    #[test]
    fn compression_levels_are_zstd_levels() {
        let file = Path::new("p.toml");
        assert_eq!(compression_level(file, None).unwrap(), 3);
        assert_eq!(compression_level(file, Some(1)).unwrap(), 1);
        assert_eq!(compression_level(file, Some(19)).unwrap(), 19);
        assert_eq!(
            text(compression_level(file, Some(20))),
            "p.toml: compression_level: expected a zstd level from 1 to 19, got 20"
        );
        assert!(compression_level(file, Some(0)).is_err());
    }

    #[test]
    fn retention_is_required_and_needs_a_rule() {
        let file = Path::new("p.toml");
        assert!(text(parse_retention(file, None))
            .starts_with("p.toml: retention: missing [retention] section"));
        let empty = toml::Value::Table(Default::default());
        assert!(text(parse_retention(file, Some(empty)))
            .starts_with("p.toml: retention: no retention rule set"));
        let daily: toml::Value = toml::from_str("daily = 7").unwrap();
        assert!(!parse_retention(file, Some(daily)).unwrap().is_empty());
    }
}
