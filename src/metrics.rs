//! Prometheus metrics in the textfile-collector format (`--metrics-file
//! PATH` on `run`, `verify`, `prune`, `sync` and `daemon`; `drill` later).
//!
//! What the metrics say is kept per policy in the run history
//! ([`crate::ops::state`], section `metrics`), updated by every run, verify,
//! prune and sync whether or not a metrics file is asked for (so the
//! counters count every run). Writing the file renders every policy of the
//! configuration from that state, so a run of one policy never drops the
//! others' series. Before writing, the policies just acted on have their
//! snapshot counts refreshed from their targets. The file is written to a
//! temporary name beside it (`.NAME.tmp-*`, ignored by node_exporter) and
//! renamed over it, so a scrape never sees half a file.

use crate::config::Config;
use crate::ops::state::{self, PolicyState};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Per-policy metric state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyMetrics {
    /// Source bytes read by runs (file contents, dumps), ever.
    #[serde(default)]
    pub bytes_read_total: u64,
    /// Archive bytes written to targets (new archives of runs, copies of
    /// `sync` and catch-ups), ever.
    #[serde(default)]
    pub bytes_stored_total: u64,
    /// When the snapshot of the last run that completed on every target
    /// (status complete or incomplete) was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<FixedOffset>>,
    /// The newest snapshot time recorded by any run (partial included):
    /// what `stale` measures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_snapshot: Option<DateTime<FixedOffset>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, TargetMetrics>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetMetrics {
    /// Whether the target worked the last time it was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// Snapshots complete on it, when last listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
    /// Seconds the last test restore from it took (`drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
}

/// What one run contributes.
pub struct RunMetrics<'a> {
    pub status: &'a str,
    pub time: DateTime<FixedOffset>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
    /// (target, up)
    pub targets: Vec<(String, Option<bool>)>,
}

/// Record a run (not a dry run) in the policy's state.
pub fn record_run(cfg: &Config, policy: &str, r: &RunMetrics<'_>) {
    state::update(&cfg.state_dir, policy, |st| {
        let m = &mut st.metrics;
        m.bytes_read_total = m.bytes_read_total.saturating_add(r.bytes_read);
        m.bytes_stored_total = m.bytes_stored_total.saturating_add(r.bytes_stored);
        m.last_run_duration_seconds = Some(r.seconds);
        if matches!(r.status, "complete" | "incomplete") {
            m.last_success = Some(r.time);
        }
        if matches!(r.status, "complete" | "incomplete" | "partial") {
            m.newest_snapshot = Some(m.newest_snapshot.map_or(r.time, |t| t.max(r.time)));
        }
        for (t, up) in &r.targets {
            if let Some(up) = up {
                m.targets.entry(t.clone()).or_default().up = Some(*up);
            }
        }
    });
}

/// Record bytes copied to targets and which targets answered (sync, prune,
/// verify).
pub fn record_targets(cfg: &Config, policy: &str, stored: u64, targets: &[(String, bool)]) {
    state::update(&cfg.state_dir, policy, |st| {
        let m = &mut st.metrics;
        m.bytes_stored_total = m.bytes_stored_total.saturating_add(stored);
        for (t, up) in targets {
            m.targets.entry(t.clone()).or_default().up = Some(*up);
        }
    });
}

/// Record a test restore's duration (for `drill`).
pub fn record_restore(cfg: &Config, policy: &str, target: &str, seconds: f64) {
    state::update(&cfg.state_dir, policy, |st| {
        st.metrics
            .targets
            .entry(target.to_string())
            .or_default()
            .restore_seconds = Some(seconds);
    });
}

/// List the targets of `policies` and record how many snapshots each holds
/// complete; an unreachable target is recorded as down (its count is kept).
pub async fn refresh(cfg: &Config, policies: &[String]) {
    for name in policies {
        let Some(policy) = cfg.policies.get(name) else {
            continue;
        };
        let catalog = match crate::ops::open_catalog(cfg, policy, None).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics: policy {name}: {e:#}");
                continue;
            }
        };
        let mut counts: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for s in &catalog.targets {
            counts.insert(s.target.name().to_string(), s.view.is_ok().then_some(0));
        }
        for e in &catalog.entries {
            for t in &e.complete_on {
                if let Some(Some(n)) = counts.get_mut(t) {
                    *n += 1;
                }
            }
        }
        state::update(&cfg.state_dir, name, |st| {
            for (t, n) in &counts {
                let tm = st.metrics.targets.entry(t.clone()).or_default();
                match n {
                    Some(n) => tm.snapshots = Some(*n),
                    None => tm.up = Some(false),
                }
            }
        });
    }
}

/// A label value, escaped as the text format requires.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// One metric family: its name, type, help text and samples (labels, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

/// Every family, in output order: (name, type, help).
const FAMILIES: [(&str, &str, &str); 9] = [
    (
        "backupctl_last_success_timestamp_seconds",
        "gauge",
        "When the snapshot of the policy's last run that completed on every target was taken (Unix time).",
    ),
    (
        "backupctl_last_run_duration_seconds",
        "gauge",
        "How long the policy's last run took.",
    ),
    (
        "backupctl_bytes_read_total",
        "counter",
        "Source bytes read by the policy's runs (file contents, database dumps).",
    ),
    (
        "backupctl_bytes_stored_total",
        "counter",
        "Archive bytes written to the policy's targets (new archives, copies by sync and catch-up).",
    ),
    (
        "backupctl_target_up",
        "gauge",
        "1 if the target worked the last time the policy used it, else 0.",
    ),
    (
        "backupctl_snapshots",
        "gauge",
        "Snapshots of the policy complete on the target, when last listed.",
    ),
    (
        "backupctl_last_verify_timestamp_seconds",
        "gauge",
        "When the policy was last verified (Unix time).",
    ),
    (
        "backupctl_last_verify_ok",
        "gauge",
        "1 if the policy's last verification found everything intact on every target, else 0.",
    ),
    (
        "backupctl_restore_seconds",
        "gauge",
        "How long the last test restore of the policy from the target took.",
    ),
];

// Indices into FAMILIES.
const LAST_SUCCESS: usize = 0;
const LAST_RUN_DURATION: usize = 1;
const BYTES_READ: usize = 2;
const BYTES_STORED: usize = 3;
const TARGET_UP: usize = 4;
const SNAPSHOTS: usize = 5;
const LAST_VERIFY: usize = 6;
const LAST_VERIFY_OK: usize = 7;
const RESTORE_SECONDS: usize = 8;

/// The textfile for these policies' states (sorted by policy name).
pub fn render(states: &BTreeMap<String, PolicyState>) -> String {
    let mut fams: Vec<Family> = FAMILIES
        .iter()
        .map(|&(name, kind, help)| Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        })
        .collect();
    for (policy, st) in states {
        add_policy(&mut fams, policy, st);
    }
    let mut out = String::new();
    for f in fams.iter().filter(|f| !f.samples.is_empty()) {
        write_family(&mut out, f);
    }
    out
}

/// A time as Unix seconds (millisecond precision).
fn timestamp(t: &DateTime<FixedOffset>) -> String {
    num(t.timestamp_millis() as f64 / 1000.0)
}

/// Seconds rounded to the millisecond.
fn seconds(s: f64) -> String {
    num((s * 1000.0).round() / 1000.0)
}

/// Add one policy's samples to the families.
fn add_policy(fams: &mut [Family], policy: &str, st: &PolicyState) {
    let m = &st.metrics;
    let p = || vec![("policy", policy.to_string())];
    let pt = |t: &str| vec![("policy", policy.to_string()), ("target", t.to_string())];
    if let Some(t) = &m.last_success {
        fams[LAST_SUCCESS].samples.push((p(), timestamp(t)));
    }
    if let Some(d) = m.last_run_duration_seconds {
        fams[LAST_RUN_DURATION].samples.push((p(), seconds(d)));
    }
    if m.bytes_read_total > 0 || m.last_run_duration_seconds.is_some() {
        let v = m.bytes_read_total.to_string();
        fams[BYTES_READ].samples.push((p(), v));
    }
    if m.bytes_stored_total > 0 || m.last_run_duration_seconds.is_some() {
        let v = m.bytes_stored_total.to_string();
        fams[BYTES_STORED].samples.push((p(), v));
    }
    for (t, tm) in &m.targets {
        if let Some(up) = tm.up {
            fams[TARGET_UP]
                .samples
                .push((pt(t), (up as u8).to_string()));
        }
        if let Some(n) = tm.snapshots {
            fams[SNAPSHOTS].samples.push((pt(t), n.to_string()));
        }
        if let Some(s) = tm.restore_seconds {
            fams[RESTORE_SECONDS].samples.push((pt(t), seconds(s)));
        }
    }
    if let Some(t) = &st.verify.last_attempt {
        fams[LAST_VERIFY].samples.push((p(), timestamp(t)));
        let ok = st.verify.last_result.as_deref() == Some("success");
        fams[LAST_VERIFY_OK]
            .samples
            .push((p(), (ok as u8).to_string()));
    }
}

/// A family's HELP and TYPE lines, then one line per sample.
fn write_family(out: &mut String, f: &Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
    for (labels, v) in &f.samples {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        let _ = writeln!(out, "{}{{{}}} {v}", f.name, l.join(","));
    }
}

/// Refresh `touched` policies' snapshot counts, then write the textfile for
/// every policy of the configuration to `path`, atomically.
pub async fn write(cfg: &Config, touched: &[String], path: &Path) -> std::io::Result<()> {
    refresh(cfg, touched).await;
    let states: BTreeMap<String, PolicyState> = cfg
        .policies
        .keys()
        .map(|n| (n.clone(), state::load(&cfg.state_dir, n)))
        .collect();
    write_atomic(path, render(&states).as_bytes())
}

/// Write `bytes` to `path` by way of a temporary file beside it (mode 0644:
/// the collector usually runs as another user).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the metrics file path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", crate::util::random_hex(8)));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_families_typed() {
        let mut st = PolicyState::default();
        st.metrics.bytes_read_total = 10;
        st.metrics.last_run_duration_seconds = Some(1.5);
        st.metrics.targets.insert(
            "a\"b\\c\nd".into(),
            TargetMetrics {
                up: Some(true),
                snapshots: Some(2),
                restore_seconds: None,
            },
        );
        let mut m = BTreeMap::new();
        m.insert("shop".to_string(), st);
        let text = render(&m);
        assert!(text.contains("# TYPE backupctl_bytes_read_total counter\n"));
        assert!(text.contains("backupctl_bytes_read_total{policy=\"shop\"} 10\n"));
        assert!(text.contains("backupctl_last_run_duration_seconds{policy=\"shop\"} 1.5\n"));
        assert!(
            text.contains("backupctl_snapshots{policy=\"shop\",target=\"a\\\"b\\\\c\\nd\"} 2\n")
        );
        assert!(!text.contains("backupctl_restore_seconds"));
    }

    /// Families come in a fixed order, each with its samples by policy;
    /// a family without samples is left out.
    #[test]
    fn families_in_order_then_policies() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let mut a = PolicyState::default();
        a.metrics.last_success = Some(t("2026-01-01T00:00:00.5Z"));
        a.metrics.last_run_duration_seconds = Some(2.0004);
        a.metrics.bytes_stored_total = 7;
        a.metrics.targets.insert(
            "nas".into(),
            TargetMetrics {
                up: Some(false),
                snapshots: Some(3),
                restore_seconds: Some(0.25),
            },
        );
        a.verify.last_attempt = Some(t("2026-01-02T00:00:00Z"));
        a.verify.last_result = Some("success".into());
        let mut b = PolicyState::default();
        b.metrics.bytes_read_total = 5;
        b.verify.last_attempt = Some(t("2026-01-02T00:00:00Z"));
        b.verify.last_result = Some("failure".into());
        let states = BTreeMap::from([("b".to_string(), b), ("a".to_string(), a)]);
        let text = render(&states);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "backupctl_last_success_timestamp_seconds{policy=\"a\"} 1767225600.5",
                "backupctl_last_run_duration_seconds{policy=\"a\"} 2",
                "backupctl_bytes_read_total{policy=\"a\"} 0",
                "backupctl_bytes_read_total{policy=\"b\"} 5",
                "backupctl_bytes_stored_total{policy=\"a\"} 7",
                "backupctl_target_up{policy=\"a\",target=\"nas\"} 0",
                "backupctl_snapshots{policy=\"a\",target=\"nas\"} 3",
                "backupctl_last_verify_timestamp_seconds{policy=\"a\"} 1767312000",
                "backupctl_last_verify_timestamp_seconds{policy=\"b\"} 1767312000",
                "backupctl_last_verify_ok{policy=\"a\"} 1",
                "backupctl_last_verify_ok{policy=\"b\"} 0",
                "backupctl_restore_seconds{policy=\"a\",target=\"nas\"} 0.25",
            ]
        );
        assert_eq!(text.matches("# HELP ").count(), 9);
        assert!(text.starts_with(
            "# HELP backupctl_last_success_timestamp_seconds When the snapshot of the policy's last run that completed on every target was taken (Unix time).\n# TYPE backupctl_last_success_timestamp_seconds gauge\n"
        ));
    }
}
