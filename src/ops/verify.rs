//! `backupctl verify`: for each chosen snapshot and each target, re-hash the
//! archive bytes against their name, unpack into the scratch area, check every
//! file against its BLAKE3 in the manifest, and run source-specific checks
//! (databases: load the dump into a scratch database). The scratch area is
//! removed afterwards.
//!
//! Snapshot choice: `--all`, or a sample of N (default: the policy's
//! `[verify] sample`): the newest snapshot first, then those verified least
//! recently (never-verified first), so repeated runs cover the whole history.

use crate::archive::{ExtractOptions, Manifest};
use crate::config::{Config, Policy};
use crate::error::ExitCode;
use crate::ops::restore::{fetch_and_extract, FetchError};
use crate::ops::{combine, open_targets, state};
use crate::repo::{self, Catalog};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub all: bool,
    pub sample: Option<usize>,
    pub target: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ArchiveCheck {
    pub source: String,
    pub archive: String,
    /// "ok" or "failed"
    pub result: String,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    /// "ok", "failed", "missing" (snapshot not on this target) or "unreachable"
    pub result: String,
    pub error: Option<String>,
    pub archives: Vec<ArchiveCheck>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotCheck {
    pub id: String,
    pub time: String,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Serialize)]
pub struct VerifyResult {
    pub policy: String,
    /// "ok", "failed" or "partial"
    pub result: String,
    pub snapshots: Vec<SnapshotCheck>,
    pub problems: Vec<String>,
}

impl VerifyResult {
    pub fn exit_code(&self) -> ExitCode {
        match self.result.as_str() {
            "ok" => ExitCode::Success,
            "partial" => ExitCode::Partial,
            _ => ExitCode::Failure,
        }
    }
}

/// Choose which snapshots to verify (indices into `ids`, oldest-first input).
pub fn choose(
    ids: &[String],
    verified: &std::collections::BTreeMap<String, chrono::DateTime<chrono::FixedOffset>>,
    n: usize,
) -> Vec<usize> {
    if ids.is_empty() || n == 0 {
        return Vec::new();
    }
    let newest = ids.len() - 1;
    let mut rest: Vec<usize> = (0..newest).collect();
    // never verified first, then least recently verified; ties newest first
    rest.sort_by(|&a, &b| {
        let (va, vb) = (verified.get(&ids[a]), verified.get(&ids[b]));
        va.cmp(&vb).then(b.cmp(&a))
    });
    let mut out = vec![newest];
    out.extend(rest.into_iter().take(n - 1));
    out
}

async fn check_on_target(
    cfg: &Config,
    policy: &Policy,
    catalog: &Catalog,
    m: &Manifest,
    ti: usize,
) -> TargetCheck {
    let st = &catalog.targets[ti];
    let t = &st.target;
    let mut tc = TargetCheck {
        target: t.name().to_string(),
        result: "ok".into(),
        error: None,
        archives: Vec::new(),
    };
    let view = match &st.view {
        Ok(v) => v,
        Err(e) => {
            tc.result = "unreachable".into();
            tc.error = Some(e.clone());
            return tc;
        }
    };
    if !view.snapshots.contains(&m.id) {
        tc.result = "missing".into();
        tc.error = Some("snapshot not on this target (backupctl sync copies it)".into());
        return tc;
    }
    // Use this target's own manifest: it must parse and agree with the catalog.
    let own = match t.get_bytes(&repo::manifest_key(&policy.name, &m.id)).await {
        Ok(b) => Manifest::parse(&b),
        Err(e) => Err(e.to_string()),
    };
    let own = match own {
        Ok(o) if o == *m => o,
        Ok(_) => {
            tc.result = "failed".into();
            tc.error = Some("manifest differs from the copy on other targets".into());
            return tc;
        }
        Err(e) => {
            tc.result = "failed".into();
            tc.error = Some(format!("manifest: {e}"));
            return tc;
        }
    };
    let scratch_root = policy
        .verify
        .scratch_dir
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("scratch"));
    // What is unpacked there keeps the source's modes: only this user may
    // enter the scratch area.
    if let Err(e) = crate::util::private_dir(&scratch_root) {
        tc.result = "failed".into();
        tc.error = Some(format!("scratch area {}: {e}", scratch_root.display()));
        return tc;
    }
    for rec in &own.sources {
        let scratch = scratch_root.join(format!("verify-{}", crate::util::random_hex(8)));
        let label = format!("{}:{}", t.name(), rec.name);
        let opts = ExtractOptions {
            preserve_owner: false,
            hash_files: true,
            ..Default::default()
        };
        let mut ac = ArchiveCheck {
            source: rec.name.clone(),
            archive: repo::archive_key(&policy.name, &rec.archive_hash),
            result: "ok".into(),
            problems: Vec::new(),
        };
        match fetch_and_extract(t, &policy.name, rec, &scratch, &opts, &label).await {
            Ok(rep) => {
                ac.problems = crate::archive::reader::compare_files(&rec.files, &rep.files, None);
                if ac.problems.is_empty() {
                    let spec = policy.sources.iter().find(|s| s.name() == rec.name);
                    match crate::source::verify_unpacked(policy, spec, rec, &scratch) {
                        Ok(p) => ac.problems.extend(p),
                        Err(e) => ac.problems.push(format!("{e:#}")),
                    }
                }
            }
            Err(FetchError::Skip(e)) => ac.problems.push(e),
            Err(FetchError::Fatal(e)) => ac.problems.push(format!("scratch area: {e:#}")),
        }
        let _ = std::fs::remove_dir_all(&scratch);
        if !ac.problems.is_empty() {
            ac.result = "failed".into();
            tc.result = "failed".into();
            for p in &ac.problems {
                tracing::error!(
                    "verify target={} snapshot={} source={}: {p}",
                    t.name(),
                    m.id,
                    rec.name
                );
            }
        } else {
            tracing::info!(
                "verified target={} snapshot={} source={} archive={}",
                t.name(),
                m.id,
                rec.name,
                &rec.archive_hash[..16]
            );
        }
        tc.archives.push(ac);
    }
    let _ = std::fs::remove_dir(&scratch_root);
    tc
}

pub async fn verify_policy(
    cfg: &Config,
    policy: &Policy,
    o: &VerifyOptions,
) -> anyhow::Result<VerifyResult> {
    let targets = open_targets(cfg, policy, o.target.as_deref()).await?;
    let catalog = Catalog::load(&policy.name, &targets).await;
    let mut problems: Vec<String> = catalog
        .bad_manifests
        .iter()
        .map(|(t, id, e)| format!("target {t}: snapshot {id}: {e}"))
        .collect();
    let ids: Vec<String> = catalog
        .entries
        .iter()
        .map(|e| e.manifest.id.clone())
        .collect();
    let st = state::load(&cfg.state_dir, &policy.name);
    let picks: Vec<usize> = if o.all {
        (0..ids.len()).rev().collect()
    } else {
        choose(
            &ids,
            &st.verified,
            o.sample.unwrap_or(policy.verify.sample).max(1),
        )
    };
    let now = crate::clock::now();
    let mut snapshots = Vec::new();
    let mut codes = Vec::new();
    if !problems.is_empty() {
        codes.push(ExitCode::Failure);
    }
    if ids.is_empty() {
        problems.push(format!(
            "policy {}: no snapshots found on any reachable target",
            policy.name
        ));
        codes.push(ExitCode::Failure);
    }
    for i in picks {
        let m = &catalog.entries[i].manifest;
        let mut sc = SnapshotCheck {
            id: m.id.clone(),
            time: m.time.to_rfc3339(),
            targets: Vec::new(),
        };
        for ti in 0..catalog.targets.len() {
            let tc = check_on_target(cfg, policy, &catalog, m, ti).await;
            codes.push(match tc.result.as_str() {
                "ok" => ExitCode::Success,
                "failed" => ExitCode::Failure,
                _ => ExitCode::Partial,
            });
            if tc.result != "ok" {
                problems.push(format!(
                    "snapshot {} on target {}: {}{}",
                    m.id,
                    tc.target,
                    tc.result,
                    tc.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            sc.targets.push(tc);
        }
        if sc.targets.iter().all(|t| t.result == "ok") {
            let id = m.id.clone();
            state::update(&cfg.state_dir, &policy.name, |s| {
                s.verified.insert(id, now);
            });
        }
        snapshots.push(sc);
    }
    let code = combine(codes);
    let result = match code {
        ExitCode::Success => "ok",
        ExitCode::Partial => "partial",
        _ => "failed",
    };
    let r = result.to_string();
    state::update(&cfg.state_dir, &policy.name, |s| {
        s.verify.last_attempt = Some(now);
        s.verify.last_result = Some(if r == "ok" {
            "success".into()
        } else {
            r.clone()
        });
        if r != "failed" {
            s.verify.last_success = Some(now);
        }
    });
    Ok(VerifyResult {
        policy: policy.name.clone(),
        result: result.into(),
        snapshots,
        problems,
    })
}
