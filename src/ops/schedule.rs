//! `backupctl schedule`: for each policy, its run and verification schedules,
//! the next run times, whether each is due now, and the last result with its
//! time (from local state; a run's last success falls back to the newest
//! snapshot on the targets).

use crate::config::{Config, Policy};
use crate::ops::due::{self, Job};
use crate::ops::state;
use chrono::{DateTime, FixedOffset, Local};
use serde::Serialize;

/// How many upcoming times are listed.
pub const UPCOMING: usize = 3;

#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// The cron expression, or null when the job is not scheduled.
    pub schedule: Option<String>,
    /// The next occurrences (local time), soonest first.
    pub next: Vec<String>,
    pub due: bool,
    /// "success", "incomplete" (some source files could not be read),
    /// "partial", "failed" or "aborted"; null when never attempted.
    pub last_result: Option<String>,
    pub last_attempt: Option<String>,
    pub last_message: Option<String>,
    pub last_success: Option<String>,
    /// Where last_success comes from: "state", "targets" or "none".
    pub last_success_from: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PolicySchedule {
    pub policy: String,
    /// Random delay added to each occurrence by the daemon.
    pub jitter_seconds: Option<u64>,
    pub run: JobStatus,
    pub verify: JobStatus,
    pub last_snapshot: Option<String>,
    /// The last recovery drill (`drill`), per target.
    pub drill: crate::ops::drill::DrillRecord,
}

fn rfc(t: Option<DateTime<FixedOffset>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}

pub async fn policy_schedule(
    cfg: &Config,
    policy: &Policy,
    now: DateTime<FixedOffset>,
) -> crate::error::Result<PolicySchedule> {
    let st = state::load(&cfg.state_dir, &policy.name);
    let job = |j: Job, rec: &state::OpRecord, d: due::Decision| JobStatus {
        schedule: d.schedule.clone(),
        next: j
            .schedule(policy)
            .map(|s| {
                s.upcoming(&now.with_timezone(&Local), UPCOMING)
                    .into_iter()
                    .map(|t| t.fixed_offset().to_rfc3339())
                    .collect()
            })
            .unwrap_or_default(),
        due: d.due,
        last_result: rec.last_result.clone(),
        last_attempt: rfc(rec.last_attempt),
        last_message: rec.last_message.clone(),
        last_success: rfc(d.last_success.or(rec.last_success)),
        last_success_from: d.basis,
    };
    let run = job(
        Job::Run,
        &st.run,
        due::decide(cfg, policy, Job::Run, now).await?,
    );
    let verify = job(
        Job::Verify,
        &st.verify,
        due::decide(cfg, policy, Job::Verify, now).await?,
    );
    Ok(PolicySchedule {
        policy: policy.name.clone(),
        jitter_seconds: policy.jitter.map(|j| j.as_secs()),
        run,
        verify,
        last_snapshot: st.run.last_snapshot.clone(),
        drill: st.drill,
    })
}

impl crate::ops::Coded for PolicySchedule {
    fn exit_code(&self) -> crate::error::ExitCode {
        crate::error::ExitCode::Success
    }
}
