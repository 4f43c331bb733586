//! One module per command. Each returns a result that the CLI renders (text
//! or `--json`) and an [`ExitCode`].

/// `as_str` and `Display` for a status enum, with the names its serde
/// attributes give it (JSON output, logs and text share one spelling).
macro_rules! status_names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The name, as in JSON output and logs.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod browse;
pub mod check;
pub mod daemon;
pub mod drill;
pub mod drill_report;
pub mod due;
pub mod init;
pub mod list;
pub mod notify_test;
pub mod prune;
pub mod repack;
pub mod restore;
pub mod restore_db;
pub mod run;
pub mod schedule;
pub mod state;
pub mod status;
pub mod sync;
pub mod verify;

use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::lock::{Lock, LockError};
use crate::repo::{Catalog, PolicyName};
use crate::storage::{self, DynBackend};
use std::time::Duration;

/// A per-policy result that knows its exit code.
pub trait Coded {
    fn exit_code(&self) -> ExitCode;
}

macro_rules! coded {
    ($($t:ty),*) => {$(
        impl Coded for $t {
            fn exit_code(&self) -> ExitCode {
                <$t>::exit_code(self)
            }
        }
    )*};
}
coded!(
    crate::ops::prune::PruneResult,
    crate::ops::sync::SyncResult,
    crate::ops::verify::VerifyResult,
    crate::ops::drill::DrillResult
);

/// Open the policy's targets in its order (or only `only`).
pub async fn open_targets(
    cfg: &Config,
    policy: &Policy,
    only: Option<&str>,
) -> crate::error::Result<Vec<DynBackend>> {
    let mut out = Vec::new();
    if let Some(name) = only {
        if !cfg.targets.contains_key(name) {
            return Err(crate::error::Error::usage(format!(
                "unknown target {name:?}: defined targets are {}",
                cfg.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !policy.targets.iter().any(|t| t == name) {
            tracing::warn!(
                "target {name} is not one of policy {}'s targets; using it anyway",
                policy.name
            );
        }
        out.push(storage::open(cfg, name).await?);
        return Ok(out);
    }
    for name in &policy.targets {
        out.push(storage::open(cfg, name).await?);
    }
    Ok(out)
}

/// Open the policy's targets (or only `only`), then read, authenticate and
/// merge what they hold (no warnings, no trust check: see [`load_catalog`]).
pub async fn open_catalog(
    cfg: &Config,
    policy: &Policy,
    only: Option<&str>,
) -> crate::error::Result<Catalog> {
    let targets = open_targets(cfg, policy, only).await?;
    Ok(Catalog::load(&PolicyName::of(policy), &targets, &cfg.trust()).await)
}

/// The catalog every command works from: [`open_catalog`], warning about the
/// targets that cannot be reached. A machine that trusts no key while the
/// targets hold signed snapshots gets the usage error that says which key
/// to pin.
pub async fn load_catalog(
    cfg: &Config,
    policy: &Policy,
    only: Option<&str>,
) -> crate::error::Result<Catalog> {
    let catalog = open_catalog(cfg, policy, only).await?;
    for (t, e) in catalog.unreachable() {
        tracing::warn!("target {t} unreachable, skipping it: {e}");
    }
    catalog.require_trust()?;
    Ok(catalog)
}

/// The 3-2-1 rule: copies in at least two distinct locations.
pub fn warn_locations(cfg: &Config, policy: &Policy) -> Option<String> {
    let locs = policy.locations(cfg);
    (locs.len() < 2).then(|| {
        format!(
            "policy {}: all targets are in one location ({}); keep copies in at least two locations (3-2-1 rule)",
            policy.name,
            locs.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Combine per-item exit codes: any failure wins, then partial.
pub fn combine(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
    let mut worst = ExitCode::Success;
    for c in codes {
        worst = match (worst, c) {
            (ExitCode::Usage, _) | (_, ExitCode::Usage) => ExitCode::Usage,
            (ExitCode::Failure, _) | (_, ExitCode::Failure) => ExitCode::Failure,
            (ExitCode::Partial, _) | (_, ExitCode::Partial) => ExitCode::Partial,
            _ => ExitCode::Success,
        };
    }
    worst
}

/// Take the per-policy lock (`<state_dir>/locks/<policy>.lock`) that keeps
/// run, prune and sync of one policy from running at the same time, across
/// processes. With `wait == None` a held lock fails at once (exit code 1, the
/// message names the holder); otherwise it is retried until `wait` has passed.
/// A lock left by a dead process is taken over with a warning.
pub async fn policy_lock(
    cfg: &Config,
    policy: &str,
    op: &str,
    wait: Option<Duration>,
) -> crate::error::Result<Lock> {
    let (dir, name, op_s) = (cfg.state_dir.clone(), policy.to_string(), op.to_string());
    let res = tokio::task::spawn_blocking(move || Lock::acquire(&dir, &name, &op_s, wait))
        .await
        .expect("lock task panicked");
    match res {
        Ok(lock) => {
            if let Some(dead) = &lock.took_over_from {
                tracing::warn!(
                    "policy {policy}: took over the lock left by {dead}, which is no longer running; \
                     its {} may have been cut short",
                    dead.op
                );
            }
            tracing::debug!(
                "policy {policy}: lock {} taken for {op}",
                lock.path().display()
            );
            Ok(lock)
        }
        Err(e @ LockError::Held { .. }) => Err(crate::error::Error::failure(format!(
            "policy {policy}: cannot {op}: {e}{}",
            if wait.is_some() {
                " (gave up waiting)"
            } else {
                "; pass --wait [DURATION] to wait for it"
            }
        ))),
        Err(e) => {
            Err(crate::error::Error::from(e).context(format!("policy {policy}: cannot {op}")))
        }
    }
}

/// A policy step's overall result for `prune` and `sync` (JSON: `ok`,
/// `partial`, `failed`, `dry-run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    /// Done on some targets, or with problems left for a person.
    Partial,
    Failed,
    DryRun,
}

status_names!(Verdict {
    Ok => "ok",
    Partial => "partial",
    Failed => "failed",
    DryRun => "dry-run",
});

impl Verdict {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Verdict::Ok | Verdict::DryRun => ExitCode::Success,
            Verdict::Partial => ExitCode::Partial,
            Verdict::Failed => ExitCode::Failure,
        }
    }
}
