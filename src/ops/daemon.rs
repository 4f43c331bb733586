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
use crate::ops::{policy_lock, prune, run, verify};
use chrono::{DateTime, FixedOffset, Local, TimeDelta};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Prune after each complete run (default on).
    pub prune: bool,
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
            let d = due::decide(cfg, policy, job, now).await?;
            let fire_at = if d.due {
                tracing::info!("daemon: {} -> starting now (catch-up)", d.describe());
                Some(now)
            } else {
                next_fire(policy, job, now)
            };
            if let Some(fire_at) = fire_at {
                if !d.due {
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
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
        let (policy, job) = (slots[i].policy, slots[i].job);
        execute(cfg, opts, policy, job, &cancel).await;
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

async fn execute(
    cfg: &Config,
    opts: &DaemonOptions,
    policy: &Policy,
    job: Job,
    cancel: &CancellationToken,
) {
    match job {
        Job::Run => {
            let _lock = match policy_lock(cfg, &policy.name, "run", None).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("daemon: policy {}: run skipped: {e:#}", policy.name);
                    return;
                }
            };
            tracing::info!("daemon: policy {}: run starting", policy.name);
            let ro = run::RunOptions {
                cancel: Some(cancel.clone()),
                ..Default::default()
            };
            let r = match run::run_policy(cfg, policy, &ro).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("daemon: policy {}: run failed: {e:#}", policy.name);
                    return;
                }
            };
            tracing::info!(
                "daemon: policy {}: run {}{}{}",
                policy.name,
                r.status,
                r.snapshot
                    .as_deref()
                    .map(|s| format!(", snapshot {s}"))
                    .unwrap_or_default(),
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            if opts.prune && r.status == "complete" && !cancel.is_cancelled() {
                match prune::prune_policy(cfg, policy, &prune::PruneOptions::default()).await {
                    Ok(p) => tracing::info!(
                        "daemon: policy {}: prune {}: kept {}, removed {} snapshot(s)",
                        policy.name,
                        p.result,
                        p.keep.len(),
                        p.remove.len()
                    ),
                    Err(e) => {
                        tracing::error!("daemon: policy {}: prune failed: {e:#}", policy.name)
                    }
                }
            }
        }
        Job::Verify => {
            tracing::info!("daemon: policy {}: verify starting", policy.name);
            match verify::verify_policy(cfg, policy, &verify::VerifyOptions::default()).await {
                Ok(r) => tracing::info!(
                    "daemon: policy {}: verify {}{}",
                    policy.name,
                    r.result,
                    if r.problems.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.problems.join("; "))
                    }
                ),
                Err(e) => {
                    tracing::error!("daemon: policy {}: verify failed: {e:#}", policy.name)
                }
            }
        }
    }
}
