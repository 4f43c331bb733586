//! Is a policy's run (or verification) due? The catch-up rule of
//! [`crate::schedule::Schedule::is_due`]: due when the schedule had an
//! occurrence since the last success, so a machine that was off for a night
//! or a week runs once, not once per missed occurrence.
//!
//! The last success comes from local state (`ops::state`) first; where that
//! is lost, a run falls back to the newest snapshot time on the targets (they
//! are the truth; state is a cache). Schedules are evaluated on the local
//! wall clock (`TZ`). A policy without a schedule is never due.

use crate::config::{Config, Policy};
use crate::ops::{open_catalog, state};
use crate::schedule::Schedule;
use chrono::{DateTime, FixedOffset, Local};
use serde::Serialize;

/// Which scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    Run,
    Verify,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Run => "run",
            Job::Verify => "verify",
        }
    }

    pub fn schedule(self, policy: &Policy) -> Option<&Schedule> {
        match self {
            Job::Run => policy.schedule.as_ref(),
            Job::Verify => policy.verify_schedule.as_ref(),
        }
    }
}

/// One due decision, with what it was based on.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub policy: String,
    pub job: Job,
    pub due: bool,
    pub schedule: Option<String>,
    /// The last success the decision used.
    pub last_success: Option<DateTime<FixedOffset>>,
    /// Where `last_success` came from: "state", "targets" or "none".
    pub basis: &'static str,
    /// The first occurrence after `last_success` (when due: the missed one).
    pub occurrence: Option<DateTime<FixedOffset>>,
    /// The next occurrence after now.
    pub next: Option<DateTime<FixedOffset>>,
    /// Runs only: targets that missed an earlier snapshot (a partial run) and
    /// are to be caught up by the next `run --due`, due or not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub catch_up: Vec<String>,
}

impl Decision {
    /// A decision that does nothing (used when deciding failed).
    pub fn not_due(policy: &Policy, job: Job) -> Decision {
        Decision {
            policy: policy.name.clone(),
            job,
            due: false,
            schedule: job.schedule(policy).map(|s| s.source().to_string()),
            last_success: None,
            basis: "none",
            occurrence: None,
            next: None,
            catch_up: Vec::new(),
        }
    }

    /// Does `run --due` / `verify --due` act on this policy now (scheduled,
    /// or targets to catch up)?
    pub fn acts(&self) -> bool {
        self.due || !self.catch_up.is_empty()
    }

    /// One log line.
    pub fn describe(&self) -> String {
        let mut s = self.describe_schedule();
        if !self.catch_up.is_empty() {
            s.push_str(&format!(
                "; target(s) {} missed a snapshot and are caught up",
                self.catch_up.join(", ")
            ));
        }
        s
    }

    fn describe_schedule(&self) -> String {
        let Some(schedule) = &self.schedule else {
            return format!(
                "policy {}: {} not due: no schedule",
                self.policy,
                self.job.name()
            );
        };
        let last = match &self.last_success {
            Some(t) => format!(
                "last success {} (from {})",
                t.to_rfc3339(),
                if self.basis == "targets" {
                    "the newest snapshot on the targets"
                } else {
                    "local state"
                }
            ),
            None => "never succeeded".to_string(),
        };
        if self.due {
            format!(
                "policy {}: {} due (schedule {schedule:?}, {last}{})",
                self.policy,
                self.job.name(),
                self.occurrence
                    .map(|o| format!(", missed {}", o.to_rfc3339()))
                    .unwrap_or_default()
            )
        } else {
            format!(
                "policy {}: {} not due (schedule {schedule:?}, {last}, next {})",
                self.policy,
                self.job.name(),
                self.next
                    .map(|n| n.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            )
        }
    }
}

/// The newest snapshot time on the policy's reachable targets.
pub async fn newest_on_targets(
    cfg: &Config,
    policy: &Policy,
) -> crate::error::Result<Option<DateTime<FixedOffset>>> {
    // A decision, not a command: the run that follows warns and checks trust.
    let catalog = open_catalog(cfg, policy, None).await?;
    Ok(catalog.entries.iter().map(|e| e.manifest.time).max())
}

/// Decide whether `job` of `policy` is due at `now`.
pub async fn decide(
    cfg: &Config,
    policy: &Policy,
    job: Job,
    now: DateTime<FixedOffset>,
) -> crate::error::Result<Decision> {
    let mut d = Decision::not_due(policy, job);
    d.schedule = None;
    let st = state::load(&cfg.state_dir, &policy.name);
    if job == Job::Run {
        d.catch_up = st
            .run
            .missed_targets
            .iter()
            .filter(|t| policy.targets.contains(t))
            .cloned()
            .collect();
    }
    let Some(schedule) = job.schedule(policy) else {
        return Ok(d);
    };
    d.schedule = Some(schedule.source().to_string());
    let recorded = match job {
        Job::Run => st.run.last_success,
        Job::Verify => st.verify.last_success,
    };
    if let Some(t) = recorded {
        d.last_success = Some(t);
        d.basis = "state";
    } else if job == Job::Run {
        if let Some(t) = newest_on_targets(cfg, policy).await? {
            d.last_success = Some(t);
            d.basis = "targets";
        }
    }
    let local_now = now.with_timezone(&Local);
    let last = d.last_success.map(|t| t.with_timezone(&Local));
    d.due = schedule.is_due(last.as_ref(), &local_now);
    d.occurrence = last
        .as_ref()
        .and_then(|l| schedule.next_after(l))
        .map(|t| t.fixed_offset());
    d.next = schedule.next_after(&local_now).map(|t| t.fixed_offset());
    Ok(d)
}
