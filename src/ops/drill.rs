//! `backupctl drill`: a recovery drill. For each target of a policy (or
//! the one named), the newest snapshot that target holds is restored into
//! the scratch area from that target alone, exactly as `verify` checks a
//! snapshot (every file against its BLAKE3 in the file index, database
//! dumps loaded into scratch databases and their row counts compared), and
//! timed: the restore time and throughput (RTO) and the data's age (RPO:
//! now minus the snapshot's time) per target. The results are kept in the
//! policy's state (`drill`, shown by `schedule`), the restore seconds in the
//! metrics state (`backupctl_restore_seconds`), and [`super::drill_report`]
//! writes them as Markdown or a self-contained HTML page, with the commands
//! to restore by hand.
//!
//! Writes only the scratch area and the state: no policy lock is taken.

use crate::archive::beneath::Dir;
use crate::config::{Config, Policy, TargetSpec};
use crate::error::ExitCode;
use crate::ops::verify::{check_on_target, scratch_root, CheckStatus};
use crate::ops::{combine, load_catalog, state, Verdict};
use crate::repo::Catalog;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// Only this target.
    pub target: Option<String>,
    /// Where progress is shown (hidden by default).
    pub display: crate::progress::Handle,
}

/// One source of the drilled snapshot on one target.
#[derive(Debug, Clone, Serialize)]
pub struct SourceDrill {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed bytes of its tar stream (the manifest's `stream.size`).
    pub bytes: u64,
    pub files: u64,
    /// The tar stream's extent list, relative to the policy's directory.
    pub extents: String,
    /// BLAKE3 of the uncompressed tar stream.
    pub blake3: String,
    /// `ok` or `failed`.
    pub result: CheckStatus,
    pub problems: Vec<String>,
    /// Database sources: rows per table (`database.table`) the scratch
    /// database was checked against.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rows: BTreeMap<String, u64>,
    /// Database sources: the databases its dumps hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
}

/// How the drill went on one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetDrill {
    pub target: String,
    /// "fs" or "s3".
    pub kind: String,
    pub location: String,
    /// The snapshot restored (the newest this target holds).
    pub snapshot: Option<String>,
    pub snapshot_time: Option<String>,
    /// `ok`, `failed`, `missing` (no snapshot there) or `unreachable`.
    pub result: CheckStatus,
    /// Wall-clock seconds of the restore (download, unpack, file hashes,
    /// database loads).
    pub seconds: f64,
    /// Uncompressed bytes restored (the sources' tar streams).
    pub bytes: u64,
    /// bytes / seconds, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// RPO: seconds from the snapshot's time to the drill.
    pub age_seconds: Option<i64>,
    pub error: Option<String>,
    pub sources: Vec<SourceDrill>,
    /// When each snapshot this target holds was taken, oldest first (the
    /// restore points).
    pub restore_points: Vec<String>,
    /// How to restore this snapshot from this target by hand.
    pub commands: RestoreCommands,
}

/// The commands to restore a snapshot by hand, from one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreCommands {
    /// With backupctl.
    pub backupctl: Vec<String>,
    /// With stock tools (sh, tail, head, zstd, tar), one command per line.
    pub stock: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DrillResult {
    pub policy: String,
    /// When the drill started.
    pub time: String,
    /// `ok`, `failed` or `partial`.
    pub result: Verdict,
    pub targets: Vec<TargetDrill>,
    pub problems: Vec<String>,
}

impl DrillResult {
    pub fn exit_code(&self) -> ExitCode {
        self.result.exit_code()
    }
}

/// The last drill of a policy, in its state (`status`/`schedule` show it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillRecord {
    pub last_attempt: Option<DateTime<FixedOffset>>,
    /// "success", "partial" or "failed".
    pub last_result: Option<String>,
    /// When the last drill without a failure started.
    pub last_success: Option<DateTime<FixedOffset>>,
    /// Per target, its last drill.
    #[serde(default)]
    pub targets: BTreeMap<String, DrillTargetRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillTargetRecord {
    pub time: Option<DateTime<FixedOffset>>,
    pub result: String,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<String>,
    pub seconds: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
    pub age_seconds: Option<i64>,
    pub error: Option<String>,
}

/// `a` in single quotes for sh (no quoting when it needs none).
pub fn sh_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return a.to_string();
    }
    format!("'{}'", a.replace('\'', "'\\''"))
}

/// Rows per `database.table` and the database names of a database source.
fn rows_of(rec: &crate::archive::SourceRecord) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut rows = BTreeMap::new();
    let mut dbs = Vec::new();
    let Some(d) = &rec.database else {
        return (rows, dbs);
    };
    for db in d["databases"].as_array().into_iter().flatten() {
        let name = db["name"].as_str().unwrap_or_default();
        dbs.push(name.to_string());
        for (t, n) in db["tables"].as_object().into_iter().flatten() {
            rows.insert(format!("{name}.{t}"), n.as_u64().unwrap_or(0));
        }
    }
    (rows, dbs)
}

/// The manual-restore commands for snapshot `m` of `policy` from target
/// `target` (spec `spec`).
pub fn restore_commands(
    policy: &str,
    target: &str,
    spec: Option<&TargetSpec>,
    m: &crate::archive::Manifest,
) -> RestoreCommands {
    let q = sh_quote;
    let mut c = RestoreCommands::default();
    let dir = format!("/restore/{policy}");
    c.backupctl.push(format!(
        "backupctl restore {} {} --to {} --target {}",
        q(policy),
        q(&m.id),
        q(&dir),
        q(target)
    ));
    for s in &m.sources {
        if s.database.is_some() {
            let (_, dbs) = rows_of(s);
            for db in dbs {
                c.backupctl.push(format!(
                    "backupctl restore {} {} --source {} --into-database {} --database {} --target {}",
                    q(policy),
                    q(&m.id),
                    q(&s.name),
                    q(&format!("{db}_restored")),
                    q(&db),
                    q(target)
                ));
            }
        }
    }
    match spec {
        Some(TargetSpec::Fs(f)) => {
            c.stock.push(format!(
                "cd {}",
                q(&f.path.join(policy).display().to_string())
            ));
        }
        Some(TargetSpec::S3(s)) => {
            let prefix = s.prefix.trim_matches('/');
            let url = if prefix.is_empty() {
                format!("s3://{}/{policy}/", s.bucket)
            } else {
                format!("s3://{}/{prefix}/{policy}/", s.bucket)
            };
            let mut sync = format!("aws s3 sync {} {}", q(&url), q(&format!("./{policy}/")));
            if let Some(e) = &s.endpoint {
                sync.push_str(&format!(" --endpoint-url {}", q(e)));
            }
            c.stock.push(sync);
            c.stock.push(format!("cd {}", q(policy)));
        }
        None => c.stock.push(format!("cd <target root>/{}", q(policy))),
    }
    for s in &m.sources {
        let dest = format!("{dir}/{}", s.name);
        c.stock.push(format!("mkdir -p {}", q(&dest)));
        c.stock.push(crate::repo::readme::stock_restore_pipe(
            &q(&format!("lists/{}.extents", s.stream.list)),
            &q(&dest),
        ));
    }
    c
}

/// Drill one policy: every target (or `o.target`), its newest snapshot.
pub async fn drill_policy(
    cfg: &Config,
    policy: &Policy,
    o: &DrillOptions,
) -> crate::error::Result<DrillResult> {
    let scratch = scratch_root(cfg, policy)?;
    let catalog = load_catalog(cfg, policy, o.target.as_deref()).await?;
    let now = crate::clock::now();
    let mut problems: Vec<String> = catalog
        .bad_manifests
        .iter()
        .map(|d| d.to_string())
        .collect();
    let mut codes = Vec::new();
    let mut targets = Vec::new();
    for ti in 0..catalog.targets.len() {
        let mut td = TargetDrill::new(cfg, &catalog, &catalog.targets[ti]);
        if let Some(i) = newest_on(&catalog, ti, &mut td) {
            let drill = Drill {
                cfg,
                policy,
                catalog: &catalog,
                scratch: &scratch,
                display: &o.display,
                now,
            };
            drill.restore(ti, i, &mut td).await;
        }
        codes.push(td.result.exit_code());
        if let Some(p) = td.log(&policy.name) {
            problems.push(p);
        }
        targets.push(td);
    }
    if targets.is_empty() {
        problems.push(format!("policy {}: no targets", policy.name));
        codes.push(ExitCode::Failure);
    }
    if !catalog.bad_manifests.is_empty() {
        codes.push(ExitCode::Failure);
    }
    let result = match combine(codes) {
        ExitCode::Success => Verdict::Ok,
        ExitCode::Partial => Verdict::Partial,
        _ => Verdict::Failed,
    };
    let r = DrillResult {
        policy: policy.name.clone(),
        time: now.to_rfc3339(),
        result,
        targets,
        problems,
    };
    record(cfg, &r, now);
    Ok(r)
}

/// The newest snapshot target `ti` serves a manifest for (an unauthentic
/// one fails the drill rather than being passed over); why not, in `td`.
fn newest_on(catalog: &Catalog, ti: usize, td: &mut TargetDrill) -> Option<usize> {
    match &catalog.targets[ti].view {
        Err(e) => {
            td.result = CheckStatus::Unreachable;
            td.error = Some(e.clone());
            None
        }
        Ok(v) => {
            let i = (0..catalog.entries.len())
                .rev()
                .find(|&i| v.snapshots.contains_key(&catalog.entries[i].id));
            if i.is_none() {
                td.result = CheckStatus::Missing;
                td.error = Some("no snapshot of this policy on this target".into());
            }
            i
        }
    }
}

/// What one policy's drill restores with.
struct Drill<'a> {
    cfg: &'a Config,
    policy: &'a Policy,
    catalog: &'a Catalog,
    scratch: &'a Dir,
    display: &'a crate::progress::Handle,
    now: DateTime<FixedOffset>,
}

impl Drill<'_> {
    /// Restore snapshot `i` from target `ti` alone, timed, with verify's
    /// per-target check; the row `td` gets the times, sizes and results.
    async fn restore(&self, ti: usize, i: usize, td: &mut TargetDrill) {
        let entry = &self.catalog.entries[i];
        let m = &entry.manifest;
        td.snapshot = Some(m.id.clone());
        td.snapshot_time = Some(m.time.to_rfc3339());
        td.age_seconds = Some((self.now - m.time).num_seconds());
        td.bytes = m
            .sources
            .iter()
            .map(|s| s.stream.size)
            .fold(0, u64::saturating_add);
        let spec = self.cfg.targets.get(&td.target);
        td.commands = restore_commands(&self.policy.name, &td.target, spec, m);
        let started = std::time::Instant::now();
        let tc = check_on_target(
            self.policy,
            self.catalog,
            entry,
            ti,
            self.scratch,
            self.display,
            &self.cfg.state_dir,
        )
        .await;
        td.seconds = started.elapsed().as_secs_f64();
        if td.seconds > 0.0 {
            td.mb_per_s = td.bytes as f64 / td.seconds / 1e6;
        }
        td.result = tc.result;
        td.error = tc.error;
        for rec in &m.sources {
            let (rows, databases) = rows_of(rec);
            let ac = tc.archives.iter().find(|a| a.source == rec.name);
            td.sources.push(SourceDrill {
                name: rec.name.clone(),
                kind: rec.kind.clone(),
                bytes: rec.stream.size,
                files: rec.files,
                extents: format!("lists/{}.extents", rec.stream.list),
                blake3: rec.stream.blake3.clone(),
                result: ac.map_or(td.result, |a| a.result),
                problems: ac.map(|a| a.problems.clone()).unwrap_or_default(),
                rows,
                databases,
            });
        }
        if td.error.is_none() && td.result != CheckStatus::Ok {
            let first: Vec<String> = td
                .sources
                .iter()
                .flat_map(|s| s.problems.iter().map(|p| format!("{}: {p}", s.name)))
                .take(3)
                .collect();
            td.error = Some(first.join("; "));
        }
    }
}

impl TargetDrill {
    /// The row of target `st`, nothing drilled yet.
    fn new(cfg: &Config, catalog: &Catalog, st: &crate::repo::TargetState) -> TargetDrill {
        let name = st.name().to_string();
        TargetDrill {
            kind: match cfg.targets.get(&name) {
                Some(TargetSpec::Fs(_)) => "fs".into(),
                Some(TargetSpec::S3(_)) => "s3".into(),
                None => String::new(),
            },
            target: name,
            location: st.target.location().to_string(),
            snapshot: None,
            snapshot_time: None,
            result: CheckStatus::Ok,
            seconds: 0.0,
            bytes: 0,
            mb_per_s: 0.0,
            age_seconds: None,
            error: None,
            sources: Vec::new(),
            restore_points: catalog
                .held_by(st)
                .into_iter()
                .map(|i| catalog.entries[i].manifest.time.to_rfc3339())
                .collect(),
            commands: RestoreCommands::default(),
        }
    }

    /// Log the row's outcome; the problem line when it is not ok.
    fn log(&self, policy: &str) -> Option<String> {
        if self.result == CheckStatus::Ok {
            tracing::info!(
                "drill policy={policy} target={} snapshot={} seconds={:.3} bytes={} age_seconds={}",
                self.target,
                self.snapshot.as_deref().unwrap_or(""),
                self.seconds,
                self.bytes,
                self.age_seconds.unwrap_or(0)
            );
            return None;
        }
        let p = format!(
            "target {}: {}{}",
            self.target,
            self.result,
            self.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        tracing::error!("drill policy={policy}: {p}");
        Some(p)
    }
}

/// Keep the drill in the policy's state.
fn record(cfg: &Config, r: &DrillResult, now: DateTime<FixedOffset>) {
    state::update(&cfg.state_dir, &r.policy, |s| {
        let d = &mut s.drill;
        d.last_attempt = Some(now);
        d.last_result = Some(match r.result {
            Verdict::Ok => "success".into(),
            v => v.to_string(),
        });
        if r.result != Verdict::Failed {
            d.last_success = Some(now);
        }
        for t in &r.targets {
            d.targets.insert(
                t.target.clone(),
                DrillTargetRecord {
                    time: Some(now),
                    result: t.result.to_string(),
                    snapshot: t.snapshot.clone(),
                    snapshot_time: t.snapshot_time.clone(),
                    seconds: t.seconds,
                    bytes: t.bytes,
                    mb_per_s: t.mb_per_s,
                    age_seconds: t.age_seconds,
                    error: t.error.clone(),
                },
            );
        }
    });
}

impl crate::observe::Observe for DrillResult {
    fn summary(&self) -> Option<crate::observe::Summary> {
        let errors: Vec<&str> = self.problems.iter().map(String::as_str).collect();
        let mut error = errors.join("; ");
        if error.len() > 1000 {
            let mut cut = 1000;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
            error.push('…');
        }
        Some(crate::observe::Summary {
            op: "drill",
            policy: self.policy.clone(),
            status: self.result.to_string(),
            snapshot: self.targets.iter().find_map(|t| t.snapshot.clone()),
            targets: self
                .targets
                .iter()
                .map(|t| crate::notify::TargetStatus {
                    name: t.target.clone(),
                    status: t.result.to_string(),
                })
                .collect(),
            bytes_read: None,
            bytes_stored: None,
            seconds: None,
            catch_up: None,
            prune: None,
            error: (!error.is_empty()).then_some(error),
            event: (self.result != Verdict::Ok).then_some(crate::notify::EventKind::VerifyFailed),
        })
    }

    /// The restore seconds of every target that restored (the
    /// `backupctl_restore_seconds` gauge) and which targets answered.
    fn record(&self, cfg: &Config) {
        let mut up = Vec::new();
        for t in &self.targets {
            if t.result == CheckStatus::Ok {
                crate::metrics::record_restore(cfg, &self.policy, &t.target, t.seconds);
            }
            up.push((t.target.clone(), t.result != CheckStatus::Unreachable));
        }
        crate::metrics::record_targets(cfg, &self.policy, 0, &up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("shop"), "shop");
        assert_eq!(sh_quote("/srv/a b"), "'/srv/a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(sh_quote(""), "''");
    }
}
