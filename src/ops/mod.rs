//! One module per command. Each returns a result that the CLI renders (text
//! or `--json`) and an [`ExitCode`].

pub mod check;
pub mod list;
pub mod restore;
pub mod run;
pub mod state;
pub mod sync;
pub mod verify;

use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::target::{self, DynTarget};

/// Open the policy's targets in its order (or only `only`).
pub async fn open_targets(
    cfg: &Config,
    policy: &Policy,
    only: Option<&str>,
) -> anyhow::Result<Vec<DynTarget>> {
    let mut out = Vec::new();
    if let Some(name) = only {
        if !cfg.targets.contains_key(name) {
            return Err(crate::error::CodedError::usage(format!(
                "unknown target {name:?}: defined targets are {}",
                cfg.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        if !policy.targets.iter().any(|t| t == name) {
            tracing::warn!(
                "target {name} is not one of policy {}'s targets; using it anyway",
                policy.name
            );
        }
        out.push(target::open(cfg, name).await?);
        return Ok(out);
    }
    for name in &policy.targets {
        out.push(target::open(cfg, name).await?);
    }
    Ok(out)
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
