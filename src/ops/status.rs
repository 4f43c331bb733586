//! `backupctl status`: is every policy backed up, fresh, in enough places,
//! and proven restorable? One answer per policy, read from the targets
//! themselves (each snapshot authenticated, as every command does) and from
//! the policy's history in the state directory.
//!
//! A policy is **unhealthy** (exit 1) when it has no complete snapshot, its
//! newest is stale (older than `max_age`, else 1.5 schedule intervals), its
//! last run failed, a target is unreachable or lacks the newest snapshot, a
//! target serves a manifest that does not authenticate, the last
//! verification or drill failed, or `[verify] max_age` is set and the last
//! successful verification is older (or never happened). The 3-2-1 assessment (at
//! least 3 copies counting the live data, in at least 2 distinct
//! `location`s, at least 1 away from this host's `location`) is reported as
//! a warning, not a failure.
//!
//! **Fleets.** `[fleet] targets` names targets other hosts write to
//! (typically one prefix per host in a shared bucket). Every policy found on
//! such a target is reported as `TARGET/POLICY`, from that target alone,
//! stale beyond `[fleet] max_age` (default 26h); its snapshots count only if
//! signed by a key in `trusted_keys`. A monitoring machine needs no policy
//! files and no sources: only the targets, the keys, and credentials that
//! can list and read.

use crate::config::{Config, Policy, TargetSpec};
use crate::repo::layout::Key;
use crate::repo::{Catalog, TargetState};
use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// The newest complete snapshot.
#[derive(Debug, Serialize)]
pub struct Newest {
    pub id: String,
    pub time: String,
    pub host: String,
    pub age_seconds: i64,
}

/// One target's part in a policy.
#[derive(Debug, Serialize)]
pub struct TargetHealth {
    pub name: String,
    pub location: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Holds the newest complete snapshot complete.
    pub holds_newest: bool,
    /// Snapshots complete on this target.
    pub restore_points: usize,
    /// Bytes of every object of the policy on this target.
    pub bytes_stored: u64,
}

/// The last run, from the history (`None` on a monitoring machine).
#[derive(Debug, Serialize)]
pub struct LastRun {
    pub time: Option<String>,
    pub result: Option<String>,
    pub message: Option<String>,
}

/// Verification, from the history.
#[derive(Debug, Serialize)]
pub struct VerifyHealth {
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_result: Option<String>,
    /// Targets on which the last verification passed.
    pub targets: Vec<String>,
    /// `[verify] max_age`, when set.
    pub max_age_seconds: Option<i64>,
    /// Beyond `max_age` since the last success (or never verified).
    pub overdue: bool,
}

/// The last recovery drill (`backupctl drill`), from the history.
#[derive(Debug, Serialize)]
pub struct DrillHealth {
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_result: Option<String>,
    /// Per target: when, result, restore seconds and throughput, RPO.
    pub targets: std::collections::BTreeMap<String, crate::ops::drill::DrillTargetRecord>,
}

/// The 3-2-1 rule for the newest snapshot.
#[derive(Debug, Serialize)]
pub struct Rule321 {
    /// Complete copies on targets, plus the live data.
    pub copies: usize,
    /// Distinct `location`s of the targets holding it.
    pub locations: usize,
    /// Copies away from this host (`location` differs from the host's; with
    /// no host `location` set, S3 targets count as away and fs ones do not).
    pub offsite: usize,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    /// The policy's name; `TARGET/POLICY` for a watched (fleet) policy.
    pub policy: String,
    /// Read from a `[fleet]` target rather than a local policy.
    pub watched: bool,
    pub healthy: bool,
    /// Why it is unhealthy (empty when healthy).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub newest: Option<Newest>,
    /// How old the newest snapshot may be (none: no schedule, no max_age).
    pub max_age_seconds: Option<i64>,
    pub stale: bool,
    pub last_run: Option<LastRun>,
    pub targets: Vec<TargetHealth>,
    pub verify: Option<VerifyHealth>,
    /// The last drill (`None` when the policy was never drilled here).
    pub drill: Option<DrillHealth>,
    pub rule_3_2_1: Option<Rule321>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub time: String,
    pub healthy: bool,
    pub policies: Vec<PolicyStatus>,
}

impl StatusReport {
    pub fn exit_code(&self) -> crate::error::ExitCode {
        if self.healthy {
            crate::error::ExitCode::Success
        } else {
            crate::error::ExitCode::Failure
        }
    }

    /// The one line a Nagios/Icinga check prints, and its plugin exit code
    /// (0 OK, 1 WARNING: only 3-2-1 warnings, 2 CRITICAL: anything
    /// unhealthy; the same numbers as `ExitCode`'s 0, 1, 2), with
    /// performance data after `|`.
    pub fn nagios(&self) -> (String, crate::error::ExitCode) {
        use crate::error::ExitCode;
        let bad: Vec<String> = self
            .policies
            .iter()
            .filter(|p| !p.healthy)
            .map(|p| format!("{}: {}", p.policy, p.problems.join(", ")))
            .collect();
        let warned: Vec<String> = self
            .policies
            .iter()
            .filter(|p| p.healthy && !p.warnings.is_empty())
            .map(|p| format!("{}: {}", p.policy, p.warnings.join(", ")))
            .collect();
        let (word, code, text) = if !bad.is_empty() {
            ("CRITICAL", ExitCode::Usage, bad.join("; "))
        } else if !warned.is_empty() {
            ("WARNING", ExitCode::Failure, warned.join("; "))
        } else {
            (
                "OK",
                ExitCode::Success,
                format!("{} policies healthy", self.policies.len()),
            )
        };
        let mut perf = vec![
            format!("policies={}", self.policies.len()),
            format!("unhealthy={}", bad.len()),
        ];
        for p in &self.policies {
            if let Some(n) = &p.newest {
                perf.push(format!(
                    "'age_{}'={}s;;{}",
                    p.policy.replace(['\'', '=', ' '], "_"),
                    n.age_seconds,
                    p.max_age_seconds.map(|s| s.to_string()).unwrap_or_default()
                ));
            }
        }
        (
            format!("BACKUPCTL {word} - {text} | {}", perf.join(" ")),
            code,
        )
    }
}

/// Status of the named policies (local or `TARGET/POLICY` of a fleet
/// target), or of all of them. An unknown name is a usage error.
pub async fn status(cfg: &Config, names: &[String]) -> crate::error::Result<StatusReport> {
    let now = crate::clock::now();
    let wanted = |n: &str| names.is_empty() || names.iter().any(|w| w == n);
    let mut policies = Vec::new();
    for p in cfg.policies.values().filter(|p| wanted(&p.name)) {
        policies.push(local(cfg, p, now).await);
    }
    for (name, e) in cfg.broken.iter().filter(|(n, _)| wanted(n)) {
        policies.push(PolicyStatus::broken(name, e.to_string()));
    }
    if let Some(fleet) = &cfg.fleet {
        for t in &fleet.targets {
            for s in watched(cfg, t, fleet.max_age, now).await {
                if wanted(&s.policy) {
                    policies.push(s);
                }
            }
        }
    }
    for n in names {
        if !policies.iter().any(|p| &p.policy == n) {
            return Err(crate::error::Error::usage(format!(
                "no policy {n:?}: expected a policy in {} or TARGET/POLICY of a [fleet] target",
                cfg.policies_dir.display()
            )));
        }
    }
    policies.sort_by(|a, b| a.policy.cmp(&b.policy));
    Ok(StatusReport {
        time: now.to_rfc3339(),
        healthy: policies.iter().all(|p| p.healthy),
        policies,
    })
}

/// A local policy: its own targets, its history, its schedule.
async fn local(cfg: &Config, policy: &Policy, now: DateTime<FixedOffset>) -> PolicyStatus {
    let catalog = match crate::ops::open_catalog(cfg, policy, None).await {
        Ok(c) => c,
        Err(e) => return PolicyStatus::broken(&policy.name, format!("{e:#}")),
    };
    let mut s = assess(cfg, &policy.name, &catalog, now, |newest| {
        crate::notify::stale::threshold(policy, newest).map(|(d, _)| d)
    });
    let st = crate::ops::state::load(&cfg.state_dir, &policy.name);
    let run = &st.run;
    if run.last_result.as_deref() == Some("failed") {
        s.problem(format!(
            "last run failed{}",
            run.last_message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    s.last_run = Some(LastRun {
        time: run.last_attempt.map(|t| t.to_rfc3339()),
        result: run.last_result.clone(),
        message: run.last_message.clone(),
    });
    let v = verify_health(policy, &st, now);
    if v.last_result.as_deref().is_some_and(|r| r == "failed") {
        s.problem("last verification failed".into());
    }
    if v.overdue {
        s.problem(match &v.last_success {
            Some(t) => format!("unverified since {t} (verify.max_age exceeded)"),
            None => "never verified (verify.max_age is set)".into(),
        });
    }
    s.verify = Some(v);
    let d = &st.drill;
    if d.last_attempt.is_some() {
        if d.last_result.as_deref() == Some("failed") {
            s.problem("last drill failed".into());
        }
        s.drill = Some(DrillHealth {
            last_attempt: d.last_attempt.map(|t| t.to_rfc3339()),
            last_success: d.last_success.map(|t| t.to_rfc3339()),
            last_result: d.last_result.clone(),
            targets: d.targets.clone(),
        });
    }
    s
}

/// `[verify]` health from the history.
fn verify_health(
    policy: &Policy,
    st: &crate::ops::state::PolicyState,
    now: DateTime<FixedOffset>,
) -> VerifyHealth {
    let v = &st.verify;
    let max = policy
        .verify_max_age
        .and_then(|d| chrono::TimeDelta::from_std(d).ok());
    let overdue = match (max, v.last_success) {
        (Some(max), Some(t)) => now - t > max,
        (Some(_), None) => true,
        (None, _) => false,
    };
    VerifyHealth {
        last_attempt: v.last_attempt.map(|t| t.to_rfc3339()),
        last_success: v.last_success.map(|t| t.to_rfc3339()),
        last_result: v.last_result.clone(),
        targets: st.verified_on.clone(),
        max_age_seconds: max.map(|d| d.num_seconds()),
        overdue,
    }
}

/// Every policy found on fleet target `name`, each from that target alone.
async fn watched(
    cfg: &Config,
    name: &str,
    max_age: std::time::Duration,
    now: DateTime<FixedOffset>,
) -> Vec<PolicyStatus> {
    let target = match crate::storage::open(cfg, name).await {
        Ok(t) => t,
        Err(e) => return vec![PolicyStatus::broken(name, format!("{e:#}"))],
    };
    let root = crate::storage::Prefix::new("").expect("the empty prefix is valid");
    let listed = match target.list(&root).await {
        Ok(l) => l,
        Err(e) => {
            let mut s = PolicyStatus::broken(name, format!("target {name} unreachable: {e}"));
            s.watched = true;
            return vec![s];
        }
    };
    let mut names = std::collections::BTreeSet::new();
    for o in &listed {
        if let Some(Key::Manifest { policy, .. }) = Key::parse(&o.key) {
            names.insert(policy);
        }
    }
    let max = chrono::TimeDelta::from_std(max_age).ok();
    let mut out = Vec::new();
    for pname in names {
        let catalog = Catalog::load(&pname, std::slice::from_ref(&target), &cfg.trust()).await;
        let label = format!("{name}/{pname}");
        let mut s = assess(cfg, &label, &catalog, now, |_| max);
        s.watched = true;
        out.push(s);
    }
    out
}

/// What the targets say about one policy: newest snapshot and staleness,
/// per-target holdings, damaged manifests, 3-2-1.
fn assess(
    cfg: &Config,
    label: &str,
    catalog: &Catalog,
    now: DateTime<FixedOffset>,
    threshold: impl Fn(DateTime<FixedOffset>) -> Option<chrono::TimeDelta>,
) -> PolicyStatus {
    let mut s = PolicyStatus::new(label);
    let newest = catalog
        .entries
        .iter()
        .rev()
        .find(|e| !e.complete_on.is_empty());
    match newest {
        None => s.problem("no complete snapshot on any reachable target".into()),
        Some(e) => {
            let m = &e.manifest;
            let age = now - m.time;
            let limit = threshold(m.time);
            s.max_age_seconds = limit.map(|d| d.num_seconds());
            if let Some(limit) = limit.filter(|l| age > *l) {
                s.stale = true;
                s.problem(format!(
                    "stale: newest snapshot {} is {} old (more than {})",
                    m.id,
                    crate::notify::human_duration(age.num_seconds()),
                    crate::notify::human_duration(limit.num_seconds())
                ));
            }
            s.newest = Some(Newest {
                id: m.id.clone(),
                time: m.time.to_rfc3339(),
                host: m.host.clone(),
                age_seconds: age.num_seconds(),
            });
        }
    }
    for st in &catalog.targets {
        let h = target_health(cfg, catalog, st, newest);
        if let Some(e) = &h.error {
            s.problem(format!("target {} unreachable: {e}", h.name));
        } else if newest.is_some() && !h.holds_newest {
            s.problem(format!("target {} lacks the newest snapshot", h.name));
        }
        s.targets.push(h);
    }
    for d in &catalog.bad_manifests {
        s.problem(d.to_string());
    }
    if let Some(e) = newest {
        let r = rule_321(cfg, &e.complete_on);
        if !r.ok {
            s.warnings.push(format!(
                "3-2-1 not met: {} copies (3 wanted), {} locations (2 wanted), {} away from this host (1 wanted)",
                r.copies, r.locations, r.offsite
            ));
        }
        s.rule_3_2_1 = Some(r);
    }
    s
}

/// One target's row.
fn target_health(
    cfg: &Config,
    catalog: &Catalog,
    st: &TargetState,
    newest: Option<&crate::repo::Entry>,
) -> TargetHealth {
    let name = st.target.name().to_string();
    let location = cfg
        .targets
        .get(&name)
        .map(|t| t.location().to_string())
        .unwrap_or_default();
    let (bytes_stored, error) = match &st.view {
        Ok(v) => {
            let sum = v.packs.values().chain(v.lists.values()).sum::<u64>()
                + v.snapshots.values().sum::<u64>()
                + v.signatures.values().sum::<u64>();
            (sum, None)
        }
        Err(e) => (0, Some(e.clone())),
    };
    TargetHealth {
        reachable: error.is_none(),
        holds_newest: newest.is_some_and(|e| e.complete_on.contains(&name)),
        restore_points: catalog
            .entries
            .iter()
            .filter(|e| e.complete_on.contains(&name))
            .count(),
        bytes_stored,
        error,
        location,
        name,
    }
}

/// 3-2-1 over the targets holding the newest snapshot complete.
fn rule_321(cfg: &Config, holding: &[String]) -> Rule321 {
    let specs: Vec<&TargetSpec> = holding.iter().filter_map(|n| cfg.targets.get(n)).collect();
    let locations: std::collections::BTreeSet<&str> = specs.iter().map(|t| t.location()).collect();
    let offsite = specs
        .iter()
        .filter(|t| match &cfg.location {
            Some(here) => t.location() != here,
            None => matches!(t, TargetSpec::S3(_)),
        })
        .count();
    let copies = holding.len() + 1;
    Rule321 {
        copies,
        locations: locations.len(),
        offsite,
        ok: copies >= 3 && locations.len() >= 2 && offsite >= 1,
    }
}

impl PolicyStatus {
    /// A policy that could not be assessed at all (broken file, targets
    /// that cannot be opened): unhealthy, with why.
    fn broken(label: &str, why: String) -> PolicyStatus {
        let mut s = PolicyStatus::new(label);
        s.problem(why);
        s
    }

    /// Nothing found wrong yet, nothing known.
    fn new(label: &str) -> PolicyStatus {
        PolicyStatus {
            policy: label.to_string(),
            watched: false,
            healthy: true,
            problems: Vec::new(),
            warnings: Vec::new(),
            newest: None,
            max_age_seconds: None,
            stale: false,
            last_run: None,
            targets: Vec::new(),
            verify: None,
            drill: None,
            rule_3_2_1: None,
        }
    }

    fn problem(&mut self, why: String) {
        self.healthy = false;
        self.problems.push(why);
    }
}
