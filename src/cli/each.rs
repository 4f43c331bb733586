//! The one per-policy loop behind `run`, `verify`, `sync`, `prune`, the
//! `--due` runs and the daemon, so they cannot drift apart.
//!
//! For each chosen policy, in order: a policy file that failed to load is
//! reported (exit 2) and skipped; with `due`, the schedule decides whether the
//! policy acts now; with `lock`, the policy's lock is taken; then the step
//! runs. Whatever goes wrong in one policy (a missing source path, a dump tool
//! or database that is not there, a held lock, an unreachable target) is
//! recorded for that policy and the next one still runs. Only a selection
//! that names an unknown policy fails the whole command.

use backupctl::config::{Config, Policy};
use backupctl::error::ExitCode;
use backupctl::ops::due::{self, Decision, Job};
use backupctl::ops::{combine, policy_lock, Coded};
use futures::future::BoxFuture;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether the step needs the policy's lock (run, prune, sync write).
#[derive(Debug, Clone, Copy)]
pub enum Locking {
    None,
    Take {
        op: &'static str,
        wait: Option<Duration>,
    },
}

/// A policy whose step did not produce a result.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFailure {
    pub policy: String,
    pub error: String,
    #[serde(skip)]
    pub code: ExitCode,
}

/// Everything the loop saw.
#[derive(Debug)]
pub struct Outcome<T> {
    pub results: Vec<T>,
    pub failures: Vec<PolicyFailure>,
    /// With `due`: how many policies were considered and did not act now.
    pub not_due: usize,
}

impl<T: Coded> Outcome<T> {
    /// The worst code (precedence: 2 configuration, 1 failure, 3 partial, 0).
    pub fn exit_code(&self) -> ExitCode {
        combine(
            self.results
                .iter()
                .map(Coded::exit_code)
                .chain(self.failures.iter().map(|f| f.code)),
        )
    }
}

/// How to go through the policies.
#[derive(Debug, Clone, Default)]
pub struct Plan<'a> {
    /// Policy names (empty: all).
    pub names: &'a [String],
    /// Only the policies this scheduled job is due for (or has targets to
    /// catch up); the decision is passed to the step.
    pub due: Option<Job>,
    pub locking: Option<Locking>,
    /// Stop starting new policies once cancelled.
    pub cancel: Option<CancellationToken>,
    /// The operation ("run", "verify", "prune", "sync"), for the summary
    /// line and the notification of a policy that fails without a result
    /// (see [`backupctl::observe`]); None: nothing is said.
    pub op: Option<&'static str>,
}

/// Run `step` for each policy of `plan`. `step` gets the policy and, with
/// `due`, the decision that made it act.
pub async fn for_each_policy<'c, T, F>(
    cfg: &'c Config,
    plan: &Plan<'_>,
    mut step: F,
) -> Result<Outcome<T>, backupctl::error::ConfigError>
where
    F: FnMut(&'c Policy, Option<Decision>) -> BoxFuture<'c, backupctl::error::Result<T>>,
    T: backupctl::observe::Observe,
{
    let sel = cfg.selection(plan.names)?;
    let mut out = Outcome {
        results: Vec::new(),
        failures: Vec::new(),
        not_due: 0,
    };
    for (name, e) in &sel.broken {
        let mark = backupctl::notify::tail::mark();
        let error = format!("policy file not loaded: {e}");
        backupctl::observe::failed(cfg, plan.op, name, &error, mark);
        out.failures.push(PolicyFailure {
            policy: name.clone(),
            error: format!("policy file not loaded: {e}"),
            code: ExitCode::Usage,
        });
    }
    let fail = |out: &mut Outcome<T>, policy: &str, e: backupctl::error::Error, mark: u64| {
        let error = format!("{e:#}");
        tracing::debug!("policy {policy}: {error}");
        backupctl::observe::failed(cfg, plan.op, policy, &error, mark);
        out.failures.push(PolicyFailure {
            policy: policy.to_string(),
            error,
            code: e.exit_code(),
        });
    };
    for p in sel.policies {
        if plan.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            out.failures.push(PolicyFailure {
                policy: p.name.clone(),
                error: "not started: interrupted by a signal".into(),
                code: ExitCode::Failure,
            });
            continue;
        }
        let mark = backupctl::notify::tail::mark();
        let decision = match plan.due {
            None => None,
            Some(job) => match due::decide(cfg, p, job, backupctl::clock::now()).await {
                Ok(d) => {
                    if job == Job::Run {
                        backupctl::notify::stale::check(
                            cfg,
                            p,
                            d.last_success,
                            backupctl::clock::now(),
                        );
                    }
                    if d.acts() {
                        tracing::info!("{}", d.describe());
                        Some(d)
                    } else {
                        tracing::debug!("{}", d.describe());
                        out.not_due += 1;
                        continue;
                    }
                }
                Err(e) => {
                    fail(&mut out, &p.name, e, mark);
                    continue;
                }
            },
        };
        let _lock = match plan.locking.unwrap_or(Locking::None) {
            Locking::None => None,
            Locking::Take { op, wait } => match policy_lock(cfg, &p.name, op, wait).await {
                Ok(l) => Some(l),
                Err(e) => {
                    fail(&mut out, &p.name, e, mark);
                    continue;
                }
            },
        };
        let started = std::time::Instant::now();
        match step(p, decision).await {
            Ok(r) => {
                backupctl::observe::finished(cfg, &r, mark, started.elapsed().as_secs_f64());
                out.results.push(r)
            }
            Err(e) => fail(&mut out, &p.name, e, mark),
        }
    }
    Ok(out)
}
