//! `backupctl notify test [POLICY]`: a `test` event to every notifier (the
//! global ones, and those of POLICY or of every policy), delivered now with
//! each notifier's timeout and retries; one result per notifier. Webhooks
//! get `"event": "test"`, healthchecks a `/log` ping (logged without
//! changing the check's state), commands `BACKUPCTL_EVENT=test`.

use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::notify::{self, Delivery, Event, EventKind, NotifySpec};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct NotifyTestReport {
    pub notifiers: Vec<Delivery>,
}

impl NotifyTestReport {
    pub fn exit_code(&self) -> ExitCode {
        if self.notifiers.iter().all(|d| d.ok) {
            ExitCode::Success
        } else {
            ExitCode::Failure
        }
    }
}

fn test_event(policy: Option<&str>) -> Event {
    let mut ev = Event::new(EventKind::Test, policy);
    ev.status = Some("test".into());
    ev.message = format!(
        "backupctl test notification from {}{}",
        ev.host,
        policy.map(|p| format!(" (policy {p})")).unwrap_or_default()
    );
    ev.log_tail = format!("{}\n", ev.message);
    ev
}

pub async fn notify_test(
    cfg: &Config,
    policy: Option<&str>,
) -> crate::error::Result<NotifyTestReport> {
    let policies: Vec<&Policy> = match policy {
        Some(name) => vec![cfg.policy(name)?],
        None => cfg.policies.values().collect(),
    };
    let mut jobs: Vec<(&NotifySpec, Event)> =
        cfg.notify.iter().map(|s| (s, test_event(policy))).collect();
    for p in &policies {
        for s in &p.notify {
            jobs.push((s, test_event(Some(&p.name))));
        }
    }
    if jobs.is_empty() {
        return Err(crate::error::Error::failure(format!(
            "no notifiers are configured ([[notify]] in {}{})",
            cfg.path.display(),
            match policy {
                Some(p) => format!(" or in policy {p}"),
                None => " or in a policy".into(),
            }
        )));
    }
    let notifiers =
        futures::future::join_all(jobs.iter().map(|(s, ev)| notify::deliver_now(s, ev))).await;
    Ok(NotifyTestReport { notifiers })
}
