//! `backupctl verify`: for each chosen snapshot and each target, read every
//! extent of every source from that target alone (every chunk checked
//! against its id, every pack index against the pack's name, the stream
//! against its BLAKE3 in the signed manifest), unpack into the scratch
//! area, check every file against its BLAKE3 in the file index, and run
//! source-specific checks (databases: load the dump into a scratch
//! database). `--read-all` also re-hashes every pack each target holds
//! (restic's `check --read-data`). Packs found damaged are recorded in the
//! policy's state; `sync` replaces them from another target.
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
use crate::archive::SourceRecord;
use crate::config::{Config, Policy, SourceSpec};
use crate::error::{ConfigError, ExitCode};
use crate::ops::Verdict;
use crate::ops::{combine, load_catalog, state};
use crate::repo::fetch::{self, FetchError};
use crate::repo::{Catalog, Hash, Holding, Key};
use crate::storage::DynBackend;
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub all: bool,
    pub sample: Option<usize>,
    pub target: Option<String>,
    /// Also re-hash every pack on every target.
    pub read_all: bool,
    /// Where progress is shown (hidden by default).
    pub display: crate::progress::Handle,
}

/// `--read-all` on one target.
#[derive(Debug, Serialize)]
pub struct PackCheck {
    pub target: String,
    /// Packs read and checked.
    pub packs: usize,
    pub bytes: u64,
    /// Packs that failed (damaged, truncated, unreadable), with why.
    pub damaged: Vec<(String, String)>,
    /// The target could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How one snapshot checked out on one target (JSON: `ok`, `failed`,
/// `missing` when the target lacks it, `unreachable`). Variants are in
/// order of how bad they are, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Ok,
    Missing,
    Unreachable,
    Failed,
}

status_names!(CheckStatus {
    Ok => "ok",
    Missing => "missing",
    Unreachable => "unreachable",
    Failed => "failed",
});

impl CheckStatus {
    /// What this result contributes to the exit code: a failure is 1, a
    /// target that lacks the snapshot or cannot be reached 3 (partial).
    pub fn exit_code(self) -> ExitCode {
        match self {
            CheckStatus::Ok => ExitCode::Success,
            CheckStatus::Failed => ExitCode::Failure,
            CheckStatus::Missing | CheckStatus::Unreachable => ExitCode::Partial,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ArchiveCheck {
    pub source: String,
    /// The source's extent list (`<policy>/lists/<hash>.extents`).
    pub archive: String,
    /// Packs its streams were read from (every extent).
    pub packs: usize,
    /// `ok` or `failed`.
    pub result: CheckStatus,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub result: CheckStatus,
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
    /// `ok`, `failed` or `partial`.
    pub result: Verdict,
    pub snapshots: Vec<SnapshotCheck>,
    /// `--read-all`: every pack of every target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<PackCheck>,
    pub problems: Vec<String>,
}

impl VerifyResult {
    pub fn exit_code(&self) -> ExitCode {
        self.result.exit_code()
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
pub fn scratch_root(cfg: &Config, policy: &Policy) -> crate::error::Result<Dir> {
    let default = cfg.state_dir.join("scratch");
    let path = policy.verify.scratch_dir.clone().unwrap_or(default.clone());
    let what = if path == default {
        format!("{} (the default, <state_dir>/scratch)", path.display())
    } else {
        path.display().to_string()
    };
    let refuse = |msg: String| -> crate::error::Error {
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
            .map_err(|e| crate::err!("creating the scratch directory {what}: {e}"))?;
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
        Err(e) => return Err(crate::err!("opening the scratch directory {what}: {e}")),
    };
    let (uid, mode) = dir
        .owner_and_mode()
        .map_err(|e| crate::err!("scratch directory {what}: {e}"))?;
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

/// Check snapshot `entry` on target `ti` alone (also `drill`'s test restore).
pub(crate) async fn check_on_target(
    policy: &Policy,
    catalog: &Catalog,
    entry: &crate::repo::Entry,
    ti: usize,
    scratch_root: &Dir,
    display: &crate::progress::Handle,
    state_dir: &std::path::Path,
) -> TargetCheck {
    let m = &entry.manifest;
    let st = &catalog.targets[ti];
    let t = &st.target;
    let mut tc = TargetCheck {
        target: t.name().to_string(),
        result: CheckStatus::Ok,
        error: None,
        archives: Vec::new(),
    };
    let older;
    let (entry, m) = match older_copy(catalog, st, entry).await {
        Some(Ok(e)) => {
            tracing::info!(
                "target {}: snapshot {}: checking its older copy (repacked elsewhere since; \
                 `backupctl sync` or the next prune brings it up to date)",
                t.name(),
                entry.id
            );
            older = e;
            (&older, &older.manifest)
        }
        Some(Err(why)) => {
            tc.result = CheckStatus::Failed;
            tc.error = Some(why);
            return tc;
        }
        None => (entry, m),
    };
    if let Some((result, error)) = holding_problem(catalog, st, entry) {
        tc.result = result;
        tc.error = Some(error);
        return tc;
    }
    let mut damaged = Vec::new();
    for rec in &m.sources {
        let check = SourceCheck {
            policy,
            catalog,
            entry,
            target: t,
            display,
        };
        let ac = check.run(rec, scratch_root, &mut damaged).await;
        if ac.result != CheckStatus::Ok {
            tc.result = CheckStatus::Failed;
        }
        tc.archives.push(ac);
    }
    record_damaged(state_dir, &policy.name, &damaged);
    tc
}

/// The snapshot as `st` holds it when that is an older revision (repacked
/// while the target was away): its own manifest, read again and checked
/// against the digest that authenticated when the catalog was loaded.
/// None when `st` holds the current copy or none.
async fn older_copy(
    catalog: &Catalog,
    st: &crate::repo::TargetState,
    entry: &crate::repo::Entry,
) -> Option<Result<crate::repo::Entry, String>> {
    if !st.holds_older(entry) {
        return None;
    }
    let digest = *st.authentic.get(&entry.id)?;
    let r = async {
        let bytes = crate::repo::fetch::manifest(&st.target, &catalog.policy, &entry.id).await?;
        if *blake3::hash(&bytes).as_bytes() != digest {
            return Err("manifest changed since it authenticated".to_string());
        }
        let manifest = crate::archive::Manifest::parse(&bytes)?;
        if manifest.id != entry.manifest.id || manifest.policy != entry.manifest.policy {
            return Err("names another snapshot or policy".to_string());
        }
        let mut e = entry.clone();
        e.manifest = manifest;
        e.digest = digest;
        Ok(e)
    };
    Some(r.await.map_err(|e: String| format!("its older copy: {e}")))
}

/// Why this target's copy of `entry` cannot be checked: its own manifest
/// must have authenticated and be this one.
fn holding_problem(
    catalog: &Catalog,
    st: &crate::repo::TargetState,
    entry: &crate::repo::Entry,
) -> Option<(CheckStatus, String)> {
    match catalog.holding(st, entry) {
        Holding::Holds => None,
        Holding::Unreachable(e) => Some((CheckStatus::Unreachable, e.to_string())),
        Holding::Absent => Some((
            CheckStatus::Missing,
            "snapshot not on this target (backupctl sync copies it)".to_string(),
        )),
        Holding::NotUsed(Some(d)) => Some((CheckStatus::Failed, format!("manifest: {}", d.reason))),
        Holding::NotUsed(None) => Some((
            CheckStatus::Failed,
            "manifest differs from the authentic copy".to_string(),
        )),
    }
}

/// One source of one snapshot, checked on one target alone.
struct SourceCheck<'a> {
    policy: &'a Policy,
    catalog: &'a Catalog,
    entry: &'a crate::repo::Entry,
    target: &'a DynBackend,
    display: &'a crate::progress::Handle,
}

impl SourceCheck<'_> {
    /// Unpack `rec` from this target into a fresh scratch directory,
    /// compare every file with the file index, then the source's own check
    /// (databases loaded into scratch databases); damaged packs join
    /// `damaged`.
    async fn run(
        &self,
        rec: &SourceRecord,
        scratch_root: &Dir,
        damaged: &mut Vec<(String, String)>,
    ) -> ArchiveCheck {
        let t = self.target;
        let catalog = self.catalog;
        let mut ac = ArchiveCheck {
            source: rec.name.clone(),
            archive: Hash::new(&rec.stream.list)
                .map(|hash| {
                    Key::List {
                        policy: catalog.policy.clone(),
                        hash,
                    }
                    .object()
                    .to_string()
                })
                .unwrap_or_default(),
            packs: 0,
            result: CheckStatus::Ok,
            problems: Vec::new(),
        };
        match scratch_root.create_fresh("verify-") {
            Ok(scratch) => {
                self.unpack_and_compare(rec, &scratch, &mut ac, damaged)
                    .await;
                let _ = crate::archive::beneath::remove_tree(&scratch.path);
            }
            Err(e) => ac.problems.push(format!(
                "scratch area: creating a directory in {}: {e}",
                scratch_root.path.display()
            )),
        }
        let id = &self.entry.manifest.id;
        if !ac.problems.is_empty() {
            ac.result = CheckStatus::Failed;
            for p in &ac.problems {
                tracing::error!(
                    "verify target={} snapshot={id} source={}: {p}",
                    t.name(),
                    rec.name
                );
            }
        } else {
            tracing::info!(
                "verified target={} snapshot={id} source={} archive={}",
                t.name(),
                rec.name,
                &rec.stream.blake3[..16]
            );
        }
        ac
    }

    /// The unpack into `scratch` and the comparisons; problems join `ac`.
    async fn unpack_and_compare(
        &self,
        rec: &SourceRecord,
        scratch: &Dir,
        ac: &mut ArchiveCheck,
        damaged: &mut Vec<(String, String)>,
    ) {
        let t = self.target;
        let label = format!("{}:{}", t.name(), rec.name);
        // Never ownership, never setuid/setgid, never the archive root's mode.
        let opts = ExtractOptions {
            preserve_owner: false,
            apply_root: false,
            hash_files: true,
            display: self.display.clone(),
            ..Default::default()
        };
        // This target alone, its pack indexes read from it (no cache).
        let policy = &self.catalog.policy;
        let sources = [fetch::Packs::new(t, policy, None)];
        match fetch::unpack(&sources, policy, rec, scratch, &opts, &label).await {
            Ok(u) => {
                ac.packs = packs_of(self.entry);
                ac.problems =
                    crate::archive::reader::compare_files(&u.index, &u.report.files, None);
                if ac.problems.is_empty() {
                    let source = self
                        .policy
                        .sources
                        .iter()
                        .find(|s| s.name() == rec.name)
                        .map(SourceSpec::source);
                    let checked = crate::source::verify_unpacked(
                        &self.policy.verify,
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
            Err(FetchError::Damaged(e, read)) => {
                ac.problems.push(e);
                damaged.extend(read.failed);
            }
            Err(FetchError::Fatal(e)) => ac.problems.push(format!("scratch area: {e:#}")),
        }
    }
}

fn packs_of(entry: &crate::repo::Entry) -> usize {
    entry.packs.len()
}

/// Remember packs that failed on a target (`sync` replaces them).
pub fn record_damaged(state_dir: &std::path::Path, policy: &str, damaged: &[(String, String)]) {
    if damaged.is_empty() {
        return;
    }
    for (t, p) in damaged {
        tracing::warn!("target {t}: pack {p} is damaged or unreadable there; `backupctl sync` replaces it from another target");
    }
    state::update(state_dir, policy, |s| {
        for (t, p) in damaged {
            s.damaged.entry(t.clone()).or_default().insert(p.clone());
        }
    });
}

/// `--read-all`: re-hash every pack target `st` holds for the policy.
async fn read_all(catalog: &Catalog, st: &crate::repo::TargetState) -> PackCheck {
    let mut pc = PackCheck {
        target: st.name().to_string(),
        packs: 0,
        bytes: 0,
        damaged: Vec::new(),
        error: None,
    };
    let view = match &st.view {
        Ok(v) => v,
        Err(e) => {
            pc.error = Some(e.clone());
            return pc;
        }
    };
    let mut names: Vec<Hash> = view.packs.keys().cloned().collect();
    names.sort();
    // Two packs in flight (at most 2 x PACK_MAX in memory): one downloads
    // while the other is hashed. The futures own what they use.
    use futures::stream::StreamExt;
    let mut checks = futures::stream::iter(names.into_iter().map(|n| {
        let (t, policy) = (st.target.clone(), catalog.policy.clone());
        async move {
            let r = fetch::pack(&t, &policy, &n).await;
            (n, r)
        }
    }))
    .buffered(2);
    while let Some((n, r)) = checks.next().await {
        pc.packs += 1;
        match r {
            Ok(b) => pc.bytes += b.len() as u64,
            Err(e) => {
                tracing::error!("verify --read-all target={}: pack {n}: {e}", st.name());
                pc.damaged.push((n.to_string(), e));
            }
        }
    }
    pc
}

pub async fn verify_policy(
    cfg: &Config,
    policy: &Policy,
    o: &VerifyOptions,
) -> crate::error::Result<VerifyResult> {
    let scratch = scratch_root(cfg, policy)?;
    let catalog = load_catalog(cfg, policy, o.target.as_deref()).await?;
    let mut f = Findings::default();
    for d in &catalog.bad_manifests {
        f.problem(ExitCode::Failure, d.to_string());
    }
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
    if ids.is_empty() {
        f.problem(
            ExitCode::Failure,
            format!(
                "policy {}: no snapshots found on any reachable target",
                policy.name
            ),
        );
    }
    let mut snapshots = Vec::new();
    for i in picks {
        let sc = check_snapshot(cfg, policy, &catalog, i, &scratch, o, &mut f).await;
        if sc.targets.iter().all(|t| t.result == CheckStatus::Ok) {
            let id = sc.id.clone();
            state::update(&cfg.state_dir, &policy.name, |s| {
                s.verified.insert(id, now);
            });
        }
        snapshots.push(sc);
    }
    let packs = if o.read_all {
        read_all_targets(cfg, policy, &catalog, &mut f).await
    } else {
        Vec::new()
    };
    let result = match combine(f.codes) {
        ExitCode::Success => Verdict::Ok,
        ExitCode::Partial => Verdict::Partial,
        _ => Verdict::Failed,
    };
    let passed: Vec<String> = catalog
        .targets
        .iter()
        .map(|t| t.target.name().to_string())
        .filter(|n| {
            !snapshots.is_empty()
                && snapshots.iter().all(|sc| {
                    sc.targets
                        .iter()
                        .any(|t| &t.target == n && t.result == CheckStatus::Ok)
                })
        })
        .collect();
    state::update(&cfg.state_dir, &policy.name, |s| {
        s.verified_on = passed;
        s.verify.last_attempt = Some(now);
        s.verify.last_result = Some(if result == Verdict::Ok {
            "success".into()
        } else {
            result.to_string()
        });
        if result != Verdict::Failed {
            s.verify.last_success = Some(now);
        }
    });
    Ok(VerifyResult {
        policy: policy.name.clone(),
        result,
        snapshots,
        packs,
        problems: f.problems,
    })
}

/// What a verification found so far: the problems, in order, and the exit
/// code each check contributes.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    codes: Vec<ExitCode>,
}

impl Findings {
    fn problem(&mut self, code: ExitCode, msg: String) {
        self.codes.push(code);
        self.problems.push(msg);
    }
}

/// Check snapshot `i` of the catalog on every target.
async fn check_snapshot(
    cfg: &Config,
    policy: &Policy,
    catalog: &Catalog,
    i: usize,
    scratch: &Dir,
    o: &VerifyOptions,
    f: &mut Findings,
) -> SnapshotCheck {
    let m = &catalog.entries[i].manifest;
    let mut sc = SnapshotCheck {
        id: m.id.clone(),
        time: m.time.to_rfc3339(),
        targets: Vec::new(),
    };
    for ti in 0..catalog.targets.len() {
        let tc = check_on_target(
            policy,
            catalog,
            &catalog.entries[i],
            ti,
            scratch,
            &o.display,
            &cfg.state_dir,
        )
        .await;
        let code = tc.result.exit_code();
        if tc.result == CheckStatus::Ok {
            f.codes.push(code);
        } else {
            f.problem(
                code,
                format!(
                    "snapshot {} on target {}: {}{}",
                    m.id,
                    tc.target,
                    tc.result,
                    tc.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            );
        }
        sc.targets.push(tc);
    }
    sc
}

/// `--read-all`: re-hash every pack on every target; damaged packs are
/// recorded in the policy's state for `sync` to repair.
async fn read_all_targets(
    cfg: &Config,
    policy: &Policy,
    catalog: &Catalog,
    f: &mut Findings,
) -> Vec<PackCheck> {
    let mut packs = Vec::new();
    for st in &catalog.targets {
        let pc = read_all(catalog, st).await;
        if let Some(e) = &pc.error {
            f.problem(
                ExitCode::Partial,
                format!("--read-all: target {}: {e}", pc.target),
            );
        }
        if !pc.damaged.is_empty() {
            f.codes.push(ExitCode::Failure);
            for (p, e) in &pc.damaged {
                f.problems
                    .push(format!("target {}: pack {p}: {e}", pc.target));
            }
            let d: Vec<(String, String)> = pc
                .damaged
                .iter()
                .map(|(p, _)| (pc.target.clone(), p.clone()))
                .collect();
            record_damaged(&cfg.state_dir, &policy.name, &d);
        }
        tracing::info!(
            "verify --read-all target={} packs={} bytes={} damaged={}",
            pc.target,
            pc.packs,
            pc.bytes,
            pc.damaged.len()
        );
        packs.push(pc);
    }
    packs
}
