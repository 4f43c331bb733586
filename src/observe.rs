//! What happens after each policy's step in the shared per-policy loop
//! (the CLI's per-policy loop, which `run`, `verify`, `prune`, `sync`, the `--due`
//! runs and the daemon all go through): one summary log line, the
//! notification its result calls for, and the metric state it updates.
//!
//! The summary line is one log event at level info, for syslog and the
//! journal, e.g.
//!
//! ```text
//! INFO summary policy=shop op=run status=partial snapshot=20260303T013000Z-c0699904 targets=nas:complete,offsite:failed bytes_read=261721866 bytes_stored=8283750 seconds=4.1 error="target offsite: ..."
//! ```
//!
//! With `--log-format json` its fields are JSON fields (numbers as numbers).

use crate::config::Config;
use crate::error::ExitCode;
use crate::notify::{self, Event, EventKind, TargetStatus};
use crate::ops::run::TargetStatus as TS;
use crate::ops::sync::CopyStatus;
use crate::ops::Coded;

/// One policy's step, summarised.
#[derive(Debug, Clone)]
pub struct Summary {
    /// "run", "verify", "prune" or "sync".
    pub op: &'static str,
    pub policy: String,
    pub status: String,
    pub snapshot: Option<String>,
    pub targets: Vec<TargetStatus>,
    pub bytes_read: Option<u64>,
    pub bytes_stored: Option<u64>,
    pub seconds: Option<f64>,
    /// A run's catch-up of targets that missed snapshots, and its prune.
    pub catch_up: Option<String>,
    pub prune: Option<String>,
    pub error: Option<String>,
    /// The notification it calls for.
    pub event: Option<EventKind>,
}

impl Summary {
    fn new(op: &'static str, policy: &str, status: &str) -> Summary {
        Summary {
            op,
            policy: policy.to_string(),
            status: status.to_string(),
            snapshot: None,
            targets: Vec::new(),
            bytes_read: None,
            bytes_stored: None,
            seconds: None,
            catch_up: None,
            prune: None,
            error: None,
            event: None,
        }
    }

    /// `nas:complete,offsite:failed`
    pub fn targets_text(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("{}:{}", t.name, t.status))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One line for people (a notification's `message`).
    pub fn message(&self) -> String {
        let mut s = format!("policy {}: {} {}", self.policy, self.op, self.status);
        if let Some(id) = &self.snapshot {
            s.push_str(&format!(", snapshot {id}"));
        }
        if !self.targets.is_empty() {
            s.push_str(&format!(", targets {}", self.targets_text()));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(": {e}"));
        }
        s
    }
}

/// A per-policy result the loop can summarise. The default (for `list`,
/// `schedule`) is to say nothing.
pub trait Observe {
    fn summary(&self) -> Option<Summary> {
        None
    }
    /// Update the policy's metric state (not for dry runs).
    fn record(&self, _cfg: &Config) {}
}

fn join_errors<'a>(errors: impl Iterator<Item = &'a str>) -> Option<String> {
    let v: Vec<&str> = errors.collect();
    if v.is_empty() {
        return None;
    }
    let mut s = v.join("; ");
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    Some(s)
}

impl Observe for crate::ops::run::RunStep {
    fn summary(&self) -> Option<Summary> {
        let code = self.exit_code();
        let mut s = Summary::new("run", self.policy(), "");
        if let Some(r) = &self.run {
            if r.dry_run {
                return None;
            }
            s.status = r.status.to_string();
            s.snapshot = r.snapshot.clone();
            s.targets = r
                .targets
                .iter()
                .map(|t| TargetStatus {
                    name: t.name.clone(),
                    status: t.status.to_string(),
                })
                .collect();
            s.bytes_read = Some(r.sources.iter().map(|x| x.content_size).sum());
            s.bytes_stored = Some(r.targets.iter().map(|t| t.uploaded_bytes).sum());
            s.seconds = Some(r.duration_seconds);
            s.error = r.error.clone().or_else(|| {
                join_errors(
                    r.targets
                        .iter()
                        .filter_map(|t| t.error.as_deref().filter(|_| t.status != TS::Complete)),
                )
                .map(|e| format!("target(s) failed: {e}"))
            });
            if r.status == crate::ops::run::RunStatus::Incomplete && s.error.is_none() {
                let n: usize = r.sources.iter().map(|x| x.unreadable.len()).sum();
                s.error = Some(format!(
                    "{n} source files or directories could not be read and are not in the snapshot"
                ));
            }
        } else if let Some(c) = &self.catch_up {
            s.status = format!("catch-up {}", c.result);
        }
        if let Some(c) = &self.catch_up {
            s.catch_up = Some(c.result.to_string());
            if c.exit_code() != ExitCode::Success && s.error.is_none() {
                s.error = join_errors(c.problems.iter().map(String::as_str));
            }
        }
        if let Some(p) = &self.prune {
            s.prune = Some(p.result.to_string());
        }
        if let Some(e) = &self.prune_error {
            s.prune = Some("failed".into());
            if s.error.is_none() {
                s.error = Some(format!("prune: {e}"));
            }
        }
        s.event = match code {
            ExitCode::Success if self.run.is_some() => Some(EventKind::Success),
            ExitCode::Success => None,
            ExitCode::Partial => Some(EventKind::Partial),
            ExitCode::Failure | ExitCode::Usage => Some(EventKind::Failure),
        };
        Some(s)
    }

    fn record(&self, cfg: &Config) {
        let policy = self.policy().to_string();
        if let Some(r) = self.run.as_ref().filter(|r| !r.dry_run) {
            crate::metrics::record_run(
                cfg,
                &policy,
                &crate::metrics::RunMetrics {
                    status: r.status.as_str(),
                    time: r.time,
                    bytes_read: r.sources.iter().map(|x| x.content_size).sum(),
                    bytes_stored: r.targets.iter().map(|t| t.uploaded_bytes).sum(),
                    seconds: r.duration_seconds,
                    targets: r
                        .targets
                        .iter()
                        .map(|t| {
                            let up = match t.status {
                                TS::Complete => Some(true),
                                TS::Failed => Some(false),
                                TS::Aborted | TS::Skipped => None,
                            };
                            (t.name.clone(), up)
                        })
                        .collect(),
                },
            );
        }
        if let Some(c) = &self.catch_up {
            c.record(cfg);
        }
        if let Some(p) = &self.prune {
            p.record(cfg);
        }
    }
}

impl Observe for crate::ops::verify::VerifyResult {
    fn summary(&self) -> Option<Summary> {
        let mut s = Summary::new("verify", &self.policy, self.result.as_str());
        s.snapshot = self.snapshots.first().map(|x| x.id.clone());
        // Per target, its worst result over the snapshots checked.
        let mut worst: Vec<(String, crate::ops::verify::CheckStatus)> = Vec::new();
        for sc in &self.snapshots {
            for t in &sc.targets {
                match worst.iter_mut().find(|w| w.0 == t.target) {
                    Some(w) => w.1 = w.1.max(t.result),
                    None => worst.push((t.target.clone(), t.result)),
                }
            }
        }
        s.targets = worst
            .into_iter()
            .map(|(name, r)| TargetStatus {
                name,
                status: r.to_string(),
            })
            .collect();
        s.error = join_errors(self.problems.iter().map(String::as_str));
        s.event = (self.result != crate::ops::Verdict::Ok).then_some(EventKind::VerifyFailed);
        Some(s)
    }

    fn record(&self, cfg: &Config) {
        let mut up: Vec<(String, bool)> = Vec::new();
        for sc in &self.snapshots {
            for t in &sc.targets {
                if !up.iter().any(|(n, _)| n == &t.target) {
                    up.push((
                        t.target.clone(),
                        t.result != crate::ops::verify::CheckStatus::Unreachable,
                    ));
                }
            }
        }
        crate::metrics::record_targets(cfg, &self.policy, 0, &up);
    }
}

impl Observe for crate::ops::prune::PruneResult {
    fn summary(&self) -> Option<Summary> {
        let status = if self.dry_run {
            "dry-run"
        } else {
            self.result.as_str()
        };
        let mut s = Summary::new("prune", &self.policy, status);
        s.targets = self
            .targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name.clone(),
                status: t.status.to_string(),
            })
            .collect();
        s.error = join_errors(self.targets.iter().filter_map(|t| t.error.as_deref()));
        Some(s)
    }

    fn record(&self, cfg: &Config) {
        let up: Vec<(String, bool)> = self
            .targets
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.status != crate::ops::prune::PruneStatus::Unreachable,
                )
            })
            .collect();
        crate::metrics::record_targets(cfg, &self.policy, 0, &up);
    }
}

impl Observe for crate::ops::sync::SyncResult {
    fn summary(&self) -> Option<Summary> {
        let mut s = Summary::new("sync", &self.policy, self.result.as_str());
        let mut targets: Vec<TargetStatus> = Vec::new();
        for c in &self.copies {
            match targets.iter_mut().find(|t| t.name == c.target) {
                Some(t) if c.status == CopyStatus::Failed => t.status = "failed".into(),
                Some(_) => {}
                None => targets.push(TargetStatus {
                    name: c.target.clone(),
                    status: if c.status == CopyStatus::Failed {
                        "failed".into()
                    } else {
                        "synced".into()
                    },
                }),
            }
        }
        for (t, _) in &self.unreachable {
            targets.push(TargetStatus {
                name: t.clone(),
                status: "unreachable".into(),
            });
        }
        s.targets = targets;
        if !self.dry_run {
            s.bytes_stored = Some(self.stored_bytes());
        }
        s.error = join_errors(self.problems.iter().map(String::as_str));
        Some(s)
    }

    fn record(&self, cfg: &Config) {
        if self.dry_run {
            return;
        }
        let mut up: Vec<(String, bool)> = self
            .unreachable
            .iter()
            .map(|(t, _)| (t.clone(), false))
            .collect();
        for c in &self.copies {
            let ok = match c.status {
                CopyStatus::Copied => true,
                CopyStatus::Failed => false,
                CopyStatus::WouldCopy => continue,
            };
            match up.iter_mut().find(|(n, _)| n == &c.target) {
                Some((_, u)) => *u &= ok,
                None => up.push((c.target.clone(), ok)),
            }
        }
        crate::metrics::record_targets(cfg, &self.policy, self.stored_bytes(), &up);
    }
}

impl crate::ops::sync::SyncResult {
    /// Bytes copied to targets.
    pub fn stored_bytes(&self) -> u64 {
        self.copies
            .iter()
            .filter(|c| c.status == CopyStatus::Copied)
            .map(|c| c.bytes)
            .sum()
    }
}

impl Observe for crate::ops::list::PolicyListing {}
impl Observe for crate::ops::schedule::PolicySchedule {}
impl Observe for crate::ops::run::RunResult {}

/// Log the summary line.
fn log_summary(s: &Summary) {
    let targets = s.targets_text();
    tracing::info!(
        policy = %s.policy,
        op = %s.op,
        status = %s.status,
        snapshot = s.snapshot.as_deref().map(tracing::field::display),
        targets = (!targets.is_empty()).then_some(tracing::field::display(&targets)),
        bytes_read = s.bytes_read,
        bytes_stored = s.bytes_stored,
        seconds = s.seconds.map(|x| (x * 10.0).round() / 10.0),
        catch_up = s.catch_up.as_deref().map(tracing::field::display),
        prune = s.prune.as_deref().map(tracing::field::display),
        error = s.error.as_deref().map(tracing::field::debug),
        "summary"
    );
}

fn notify(cfg: &Config, s: &Summary, mark: u64) {
    let Some(kind) = s.event else {
        return;
    };
    let mut ev = Event::new(kind, Some(&s.policy));
    ev.op = Some(s.op.to_string());
    ev.status = Some(s.status.clone());
    ev.snapshot = s.snapshot.clone();
    ev.targets = s.targets.clone();
    ev.error = s.error.clone();
    ev.message = s.message();
    ev.log_tail = notify::tail::since(mark);
    notify::emit(cfg, cfg.policies.get(&s.policy), ev);
}

/// A policy's step produced `r` (the loop calls this).
pub fn finished<T: Observe>(cfg: &Config, r: &T, mark: u64, seconds: f64) {
    r.record(cfg);
    if let Some(mut s) = r.summary() {
        s.seconds.get_or_insert(seconds);
        log_summary(&s);
        notify(cfg, &s, mark);
    }
}

/// A policy of an `op` step failed without a result (a held lock, a
/// policy file that does not load, an error before the step could report).
pub fn failed(cfg: &Config, op: Option<&'static str>, policy: &str, error: &str, mark: u64) {
    let Some(op) = op else {
        return;
    };
    let mut s = Summary::new(op, policy, "failed");
    s.error = Some(error.to_string());
    s.event = match op {
        "run" => Some(EventKind::Failure),
        "verify" => Some(EventKind::VerifyFailed),
        _ => None,
    };
    log_summary(&s);
    notify(cfg, &s, mark);
}
