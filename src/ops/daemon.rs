//! `backupctl daemon`: the policies' run and verification schedules in one
//! long-running process.
//!
//! At start each scheduled job is checked with the catch-up rule of `--due`
//! (one run if occurrences were missed while nothing was running), then fires
//! at each next occurrence plus a random delay of up to the policy's `jitter`.
//! Jobs run one at a time; each decision is logged on one line. A run takes
//! the policy lock (a held lock skips that occurrence) and, unless disabled,
//! prunes after a complete run.
//!
//! SIGTERM or SIGINT: while idle, exit at once; during a run, abort it at the
//! next safe point (the source being read stops, the staging area is removed,
//! no manifest is written, so no partial snapshot becomes visible) or let it
//! finish if it is already writing manifests; then exit 0.

use crate::config::{Config, Policy};
use crate::ops::due::{self, Job};
use crate::ops::each::{for_each_policy, Coded, Locking, Outcome, Plan};
use crate::ops::{run, verify};
use chrono::{DateTime, FixedOffset, Local, TimeDelta};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Prune after each complete run (default on).
    pub prune: bool,
    /// Write the Prometheus textfile after each job (`--metrics-file`).
    pub metrics_file: Option<std::path::PathBuf>,
}

struct Slot<'a> {
    policy: &'a Policy,
    job: Job,
    fire_at: DateTime<FixedOffset>,
}

/// A random delay in `[0, max)`.
fn jitter(max: Option<Duration>) -> TimeDelta {
    let Some(max) = max.filter(|m| !m.is_zero()) else {
        return TimeDelta::zero();
    };
    let r = u64::from_str_radix(&crate::util::random_hex(16), 16).unwrap_or(0);
    let ms = r % (max.as_millis().max(1) as u64);
    TimeDelta::milliseconds(ms as i64)
}

/// The next occurrence after `after`, plus jitter.
fn next_fire(
    slot_policy: &Policy,
    job: Job,
    after: DateTime<FixedOffset>,
) -> Option<DateTime<FixedOffset>> {
    let s = job.schedule(slot_policy)?;
    let next = s.next_after(&after.with_timezone(&Local))?.fixed_offset();
    Some(next + jitter(slot_policy.jitter))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Run until `cancel` is cancelled. Returns when the current step has
/// finished or been aborted.
pub async fn run_daemon(
    cfg: &Config,
    opts: &DaemonOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let now = crate::clock::now();
    tracing::info!(
        "daemon: started (pid {}), {} policies",
        std::process::id(),
        cfg.policies.len()
    );
    let mut slots: Vec<Slot> = Vec::new();
    for policy in cfg.policies.values() {
        for job in [Job::Run, Job::Verify] {
            if job.schedule(policy).is_none() {
                continue;
            }
            let d = match due::decide(cfg, policy, job, now).await {
                Ok(d) => d,
                Err(e) => {
                    // One policy's trouble never stops the daemon: try at
                    // the next occurrence.
                    tracing::error!(
                        "daemon: policy {}: {}: cannot decide whether it is due: {e:#}",
                        policy.name,
                        job.name()
                    );
                    due::Decision::not_due(policy, job)
                }
            };
            let fire_at = if d.acts() {
                tracing::info!("daemon: {} -> starting now (catch-up)", d.describe());
                Some(now)
            } else {
                next_fire(policy, job, now)
            };
            if let Some(fire_at) = fire_at {
                if !d.acts() {
                    tracing::info!(
                        "daemon: policy {}: {} next at {}",
                        policy.name,
                        job.name(),
                        fire_at.to_rfc3339()
                    );
                }
                slots.push(Slot {
                    policy,
                    job,
                    fire_at,
                });
            }
        }
    }
    tracing::info!("daemon: {} scheduled job(s)", slots.len());

    loop {
        let Some(i) = (0..slots.len()).min_by_key(|&i| slots[i].fire_at) else {
            tracing::info!("daemon: nothing is scheduled; waiting for a signal");
            cancel.cancelled().await;
            break;
        };
        let wait = (slots[i].fire_at - crate::clock::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        // Between jobs, wake every few minutes to notice stale policies.
        let nap = wait.min(crate::notify::stale::DAEMON_CHECK_EVERY);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = cancel.cancelled() => break,
        }
        if nap < wait {
            crate::notify::stale::check_all(cfg, crate::clock::now());
            continue;
        }
        let (policy, job) = (slots[i].policy, slots[i].job);
        execute(cfg, opts, policy, job, &cancel).await;
        if let Some(path) = &opts.metrics_file {
            if let Err(e) = crate::metrics::write(cfg, &names_of(policy), path).await {
                tracing::error!("daemon: writing the metrics file {}: {e}", path.display());
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        match next_fire(policy, job, crate::clock::now().max(slots[i].fire_at)) {
            Some(t) => {
                tracing::info!(
                    "daemon: policy {}: {} next at {}",
                    policy.name,
                    job.name(),
                    t.to_rfc3339()
                );
                slots[i].fire_at = t;
            }
            None => {
                slots.remove(i);
            }
        }
    }
    tracing::info!("daemon: stopped");
    Ok(())
}

/// One job of one policy, through the same per-policy loop as the CLI
/// (lock, isolation, run-then-prune), logged on one line each.
async fn execute(
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
                    let mut d = due::decide(cfg, p, Job::Run, crate::clock::now()).await?;
                    crate::notify::stale::check(cfg, p, d.last_success, crate::clock::now());
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

fn names_of(policy: &Policy) -> Vec<String> {
    vec![policy.name.clone()]
}

/// One log line per part of each result; failures at error level.
fn log_outcome<T: Coded>(
    policy: &Policy,
    job: Job,
    out: Result<Outcome<T>, crate::error::ConfigError>,
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
        let ok = r.exit_code() == crate::error::ExitCode::Success;
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
