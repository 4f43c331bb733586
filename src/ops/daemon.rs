//! `backupctl daemon`: the policies' run and verification schedules in one
//! long-running process.
//!
//! At start each scheduled job is checked with the catch-up rule of `--due`
//! (one run if occurrences were missed while nothing was running), then fires
//! at each next occurrence plus a random delay of up to the policy's `jitter`.
//! Jobs run one at a time, through the caller's `execute` (the CLI runs
//! them through its per-policy loop: the policy lock, isolation, run then
//! prune); each decision is logged on one line.
//!
//! SIGTERM or SIGINT: while idle, exit at once; during a run, abort it at the
//! next safe point (the source being read stops, the staging area is removed,
//! no manifest is written, so no partial snapshot becomes visible) or let it
//! finish if it is already writing manifests; then exit 0.

use crate::config::{Config, Policy};
use crate::ops::due::{self, Job};
use chrono::{DateTime, FixedOffset, Local, TimeDelta};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Prune after each complete run (default on; the caller's `execute`
    /// does it).
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

/// Run until `cancel` is cancelled, calling `execute` for each job as it
/// falls due (the caller runs it through its per-policy loop). Returns when
/// the current job has finished or been aborted.
pub async fn run_daemon<'c>(
    cfg: &'c Config,
    opts: &DaemonOptions,
    cancel: CancellationToken,
    mut execute: impl AsyncFnMut(&'c Policy, Job),
) -> crate::error::Result<()> {
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
        execute(policy, job).await;
        if let Some(path) = &opts.metrics_file {
            if let Err(e) =
                crate::metrics::write(cfg, std::slice::from_ref(&policy.name), path).await
            {
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
