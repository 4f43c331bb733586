//! The daemon's jobs (the schedules themselves live in
//! [`backupctl::ops::daemon`]): each one goes through the same per-policy
//! loop as the commands ([`super::each`]: the policy lock, isolation, run then
//! prune) and is logged on one line per part.

use super::each::{for_each_policy, Locking, Outcome, Plan};
use backupctl::config::{Config, Policy};
use backupctl::ops::daemon::DaemonOptions;
use backupctl::ops::due::{self, Job};
use backupctl::ops::{run, verify, Coded};
use tokio_util::sync::CancellationToken;

/// One job of one policy, through the same per-policy loop as the CLI
/// (lock, isolation, run-then-prune), logged on one line each.
pub async fn execute(
    cfg: &Config,
    opts: &DaemonOptions,
    policy: &Policy,
    job: Job,
    cancel: &CancellationToken,
) {
    let names = [policy.name.clone()];
    tracing::info!("daemon: policy {}: {} starting", policy.name, job.name());
    match job {
        Job::Run => {
            let plan = Plan {
                names: &names,
                locking: Some(Locking::Take {
                    op: "run",
                    wait: None,
                }),
                cancel: Some(cancel.clone()),
                op: Some("run"),
                ..Default::default()
            };
            let ro = run::RunOptions {
                cancel: Some(cancel.clone()),
                ..Default::default()
            };
            let (ro, prune) = (&ro, opts.prune);
            let out = for_each_policy(cfg, &plan, move |p, _| {
                Box::pin(async move {
                    // The occurrence fired: run, and catch up any target an
                    // earlier partial run missed.
                    let mut d = due::decide(cfg, p, Job::Run, backupctl::clock::now()).await?;
                    backupctl::notify::stale::check(
                        cfg,
                        p,
                        d.last_success,
                        backupctl::clock::now(),
                    );
                    d.due = true;
                    run::run_step(cfg, p, Some(&d), ro, prune).await
                })
            })
            .await;
            log_outcome(policy, job, out, |step| {
                let mut parts = Vec::new();
                if let Some(r) = &step.run {
                    parts.push(format!(
                        "run {}{}{}",
                        r.status,
                        r.snapshot
                            .as_deref()
                            .map(|s| format!(", snapshot {s}"))
                            .unwrap_or_default(),
                        r.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
                if let Some(c) = &step.catch_up {
                    parts.push(format!("catch-up {}", c.result));
                }
                if let Some(p) = &step.prune {
                    parts.push(format!(
                        "prune {}: kept {}, removed {} snapshot(s)",
                        p.result,
                        p.keep.len(),
                        p.remove.len()
                    ));
                }
                if let Some(e) = &step.prune_error {
                    parts.push(format!("prune failed: {e}"));
                }
                parts
            });
        }
        Job::Verify => {
            let plan = Plan {
                names: &names,
                cancel: Some(cancel.clone()),
                op: Some("verify"),
                ..Default::default()
            };
            let vo = verify::VerifyOptions::default();
            let vo = &vo;
            let out = for_each_policy(cfg, &plan, move |p, _| {
                Box::pin(verify::verify_policy(cfg, p, vo))
            })
            .await;
            log_outcome(policy, job, out, |r| {
                vec![format!(
                    "verify {}{}",
                    r.result,
                    if r.problems.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.problems.join("; "))
                    }
                )]
            });
        }
    }
}

/// One log line per part of each result; failures at error level.
fn log_outcome<T: Coded>(
    policy: &Policy,
    job: Job,
    out: Result<Outcome<T>, backupctl::error::ConfigError>,
    describe: impl Fn(&T) -> Vec<String>,
) {
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("daemon: policy {}: {} failed: {e}", policy.name, job.name());
            return;
        }
    };
    for r in &out.results {
        let ok = r.exit_code() == backupctl::error::ExitCode::Success;
        for line in describe(r) {
            if ok {
                tracing::info!("daemon: policy {}: {line}", policy.name);
            } else {
                tracing::error!("daemon: policy {}: {line}", policy.name);
            }
        }
    }
    for f in &out.failures {
        tracing::error!(
            "daemon: policy {}: {} failed: {}",
            f.policy,
            job.name(),
            f.error
        );
    }
}
