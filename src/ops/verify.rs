//! `backupctl verify`: for each chosen snapshot and each target, re-hash the
//! archive bytes against their name, unpack into the scratch area, check every
//! file against its BLAKE3 in the manifest, and run source-specific checks
//! (databases: load the dump into a scratch database).
//!
//! Verify often runs as root on archives from targets it does not trust, so
//! its scratch area is its own: the scratch root (`[verify] scratch_dir`,
//! default `<state_dir>/scratch`, created with mode 0700) must be a real
//! directory owned by the running user and writable by nobody else, or the
//! policy is refused (exit 2); each archive is unpacked through the
//! descriptor of a fresh 0700 directory with a random name made inside it
//! (never an existing path), which is removed afterwards. Ownership and
//! setuid/setgid bits are never applied there.
//!
//! Snapshot choice: `--all`, or a sample of N (default: the policy's
//! `[verify] sample`): the newest snapshot first, then those verified least
//! recently (never-verified first), so repeated runs cover the whole history.

use crate::archive::beneath::Dir;
use crate::archive::ExtractOptions;
use crate::config::{Config, Policy, SourceSpec};
use crate::error::{ConfigError, ExitCode};
use crate::ops::{combine, load_catalog, state};
use crate::repo::fetch::{self, FetchError};
use crate::repo::{Catalog, Hash, Holding, Key};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub all: bool,
    pub sample: Option<usize>,
    pub target: Option<String>,
    /// Where progress is shown (hidden by default).
    pub display: crate::progress::Handle,
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

/// Open the policy's scratch root, creating the default one (mode 0700):
/// refused (a configuration error, exit 2) unless it is a directory owned by
/// the running user that nobody else can write.
pub fn scratch_root(cfg: &Config, policy: &Policy) -> anyhow::Result<Dir> {
    let default = cfg.state_dir.join("scratch");
    let path = policy.verify.scratch_dir.clone().unwrap_or(default.clone());
    let what = if path == default {
        format!("{} (the default, <state_dir>/scratch)", path.display())
    } else {
        path.display().to_string()
    };
    let refuse = |msg: String| -> anyhow::Error {
        ConfigError::new(
            policy.file.display(),
            "[verify] scratch_dir",
            format!(
                "{what}: {msg}; verify unpacks untrusted archives there and refuses a directory \
                 another user could change: use a directory owned by this user with mode 0700 \
                 (or leave the setting out: <state_dir>/scratch is created so)"
            ),
        )
        .into()
    };
    let is_link = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
    };
    if std::fs::symlink_metadata(&path).is_err() {
        crate::util::create_private_dir_all(&path)
            .map_err(|e| anyhow::anyhow!("creating the scratch directory {what}: {e}"))?;
    }
    let dir = match Dir::open_nofollow(&path) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(refuse(if is_link(&path) {
                "is a symbolic link".into()
            } else {
                "is not a directory".into()
            }))
        }
        Err(e) => return Err(anyhow::anyhow!("opening the scratch directory {what}: {e}")),
    };
    let (uid, mode) = dir
        .owner_and_mode()
        .map_err(|e| anyhow::anyhow!("scratch directory {what}: {e}"))?;
    let euid = unsafe { libc::geteuid() };
    if uid != euid {
        return Err(refuse(format!(
            "is owned by uid {uid}, not by the user running backupctl (uid {euid})"
        )));
    }
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "is group- or world-writable (mode {mode:04o})"
        )));
    }
    Ok(dir)
}

async fn check_on_target(
    policy: &Policy,
    catalog: &Catalog,
    entry: &crate::repo::Entry,
    ti: usize,
    scratch_root: &Dir,
    display: &crate::progress::Handle,
) -> TargetCheck {
    let m = &entry.manifest;
    let st = &catalog.targets[ti];
    let t = &st.target;
    let mut tc = TargetCheck {
        target: t.name().to_string(),
        result: "ok".into(),
        error: None,
        archives: Vec::new(),
    };
    // This target's own manifest must have authenticated and be this one.
    let problem = match catalog.holding(st, entry) {
        Holding::Holds => None,
        Holding::Unreachable(e) => Some(("unreachable", e.to_string())),
        Holding::Absent => Some((
            "missing",
            "snapshot not on this target (backupctl sync copies it)".to_string(),
        )),
        Holding::NotUsed(Some(d)) => Some(("failed", format!("manifest: {}", d.reason))),
        Holding::NotUsed(None) => Some((
            "failed",
            "manifest differs from the authentic copy".to_string(),
        )),
    };
    if let Some((result, error)) = problem {
        tc.result = result.into();
        tc.error = Some(error);
        return tc;
    }
    for rec in &m.sources {
        let label = format!("{}:{}", t.name(), rec.name);
        // Never ownership, never setuid/setgid, never the archive root's mode.
        let opts = ExtractOptions {
            preserve_owner: false,
            apply_root: false,
            hash_files: true,
            display: display.clone(),
            ..Default::default()
        };
        let mut ac = ArchiveCheck {
            source: rec.name.clone(),
            archive: Hash::new(&rec.archive_hash)
                .map(|hash| {
                    Key::Archive {
                        policy: catalog.policy.clone(),
                        hash,
                    }
                    .object()
                    .to_string()
                })
                .unwrap_or_default(),
            result: "ok".into(),
            problems: Vec::new(),
        };
        let scratch = match scratch_root.create_fresh("verify-") {
            Ok(d) => Some(d),
            Err(e) => {
                ac.problems.push(format!(
                    "scratch area: creating a directory in {}: {e}",
                    scratch_root.path.display()
                ));
                None
            }
        };
        if let Some(scratch) = &scratch {
            match fetch::unpack(t, &catalog.policy, rec, scratch, &opts, &label).await {
                Ok(rep) => {
                    ac.problems =
                        crate::archive::reader::compare_files(&rec.files, &rep.files, None);
                    if ac.problems.is_empty() {
                        let source = policy
                            .sources
                            .iter()
                            .find(|s| s.name() == rec.name)
                            .map(SourceSpec::source);
                        let checked = crate::source::verify_unpacked(
                            &policy.verify,
                            source,
                            rec,
                            &scratch.path,
                        );
                        match checked {
                            Ok(p) => ac.problems.extend(p),
                            Err(e) => ac.problems.push(format!("{e:#}")),
                        }
                    }
                }
                Err(FetchError::Skip(e)) => ac.problems.push(e),
                Err(FetchError::Fatal(e)) => ac.problems.push(format!("scratch area: {e:#}")),
            }
            let _ = std::fs::remove_dir_all(&scratch.path);
        }
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
    tc
}

pub async fn verify_policy(
    cfg: &Config,
    policy: &Policy,
    o: &VerifyOptions,
) -> anyhow::Result<VerifyResult> {
    let scratch = scratch_root(cfg, policy)?;
    let catalog = load_catalog(cfg, policy, o.target.as_deref()).await?;
    let mut problems: Vec<String> = catalog
        .bad_manifests
        .iter()
        .map(|d| d.to_string())
        .collect();
    let ids: Vec<String> = catalog.entries.iter().map(|e| e.id.to_string()).collect();
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
            let tc = check_on_target(
                policy,
                &catalog,
                &catalog.entries[i],
                ti,
                &scratch,
                &o.display,
            )
            .await;
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
