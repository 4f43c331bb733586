//! `stale`: a policy whose newest snapshot is older than its `max_age`, or,
//! without one, than 1.5 schedule intervals. Checked by `run --due` for
//! every policy it considers (due or not) and by the daemon (before each
//! run, and every few minutes between runs). One event per stale spell: it
//! is sent again only after a newer snapshot was taken.
//!
//! The newest snapshot is the one recorded in the run history (the time the
//! snapshot was taken, as `list` shows it, including partial and incomplete
//! runs); where the history has none, the due decision's last success (the
//! history's, else the newest snapshot on the targets). A policy that has
//! never had a snapshot is not stale: its runs fail, and that is notified.

use super::{Event, EventKind};
use crate::config::{Config, Policy};
use crate::ops::state;
use chrono::{DateTime, FixedOffset, Local, TimeDelta};

/// How old the newest snapshot may be, and why (for the message).
pub fn threshold(policy: &Policy, newest: DateTime<FixedOffset>) -> Option<(TimeDelta, String)> {
    if let Some(max) = policy.max_age {
        let d = TimeDelta::from_std(max).ok()?;
        return Some((
            d,
            format!("max_age {}", super::human_duration(d.num_seconds())),
        ));
    }
    let s = policy.schedule.as_ref()?;
    let a = s.next_after(&newest.with_timezone(&Local))?;
    let b = s.next_after(&a)?;
    let limit = (b - a) * 3 / 2;
    Some((
        limit,
        format!(
            "1.5 intervals of the schedule {:?}, {}",
            s.source(),
            super::human_duration(limit.num_seconds())
        ),
    ))
}

/// Check `policy` at `now`; `fallback` is the due decision's last success.
/// Emits `stale` (and logs a warning) at most once per newest snapshot.
pub fn check(
    cfg: &Config,
    policy: &Policy,
    fallback: Option<DateTime<FixedOffset>>,
    now: DateTime<FixedOffset>,
) {
    let st = state::load(&cfg.state_dir, &policy.name);
    let Some(newest) = st.metrics.newest_snapshot.or(fallback) else {
        return;
    };
    let Some((limit, why)) = threshold(policy, newest) else {
        return;
    };
    let age = now - newest;
    if age <= limit || st.notify.stale_sent_for == Some(newest) {
        return;
    }
    let msg = format!(
        "policy {}: stale: the newest snapshot ({}) is {} old, more than {why}",
        policy.name,
        newest.to_rfc3339(),
        super::human_duration(age.num_seconds())
    );
    tracing::warn!("{msg}");
    let mut ev = Event::new(EventKind::Stale, Some(&policy.name));
    ev.snapshot = st.run.last_snapshot.clone();
    ev.status = Some("stale".into());
    ev.error = Some(msg.clone());
    ev.message = msg.clone();
    ev.log_tail = format!("{msg}\n");
    super::emit(cfg, Some(policy), ev);
    state::update(&cfg.state_dir, &policy.name, |s| {
        s.notify.stale_sent_for = Some(newest);
    });
}

/// The daemon's check between runs: every policy, from the history alone.
pub fn check_all(cfg: &Config, now: DateTime<FixedOffset>) {
    for p in cfg.policies.values() {
        let fallback = state::load(&cfg.state_dir, &p.name).run.last_success;
        check(cfg, p, fallback, now);
    }
}

/// How often the daemon checks for stale policies between its jobs.
pub const DAEMON_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(300);
