//! `backupctl check`: the configuration and every policy are valid (loading
//! them already proves it), and each target accepts a probe: write, read back,
//! delete, with the latency reported. Policy files that fail to load and
//! source paths that do not exist are reported here as configuration errors
//! (exit 2); at run time they fail only their own policy. A target that is
//! not there (an fs root without its marker) fails its probe; `check` never
//! creates anything.

use crate::config::{Config, Policy};
use crate::error::{ConfigError, ExitCode};
use crate::ops::warn_locations;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ProbeResult {
    pub target: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub location: String,
    pub description: String,
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub config: String,
    pub policies: Vec<String>,
    pub targets: Vec<ProbeResult>,
    pub warnings: Vec<String>,
    /// Configuration problems: policy files that do not load, source paths
    /// that do not exist. Each names the file and the key (exit 2).
    pub errors: Vec<String>,
}

impl CheckResult {
    pub fn exit_code(&self) -> ExitCode {
        if !self.errors.is_empty() {
            ExitCode::Usage
        } else if self.targets.iter().all(|t| t.ok) {
            ExitCode::Success
        } else {
            ExitCode::Failure
        }
    }
}

async fn probe(cfg: &Config, name: &str) -> ProbeResult {
    let spec = &cfg.targets[name];
    let mut r = ProbeResult {
        target: name.to_string(),
        kind: spec.kind().into(),
        location: spec.location().into(),
        description: String::new(),
        ok: false,
        latency_ms: None,
        error: None,
        note: None,
    };
    let t = match crate::storage::open(cfg, name).await {
        Ok(t) => t,
        Err(e) => {
            r.error = Some(format!("{e:#}"));
            return r;
        }
    };
    r.description = t.describe();
    match t.readiness().await {
        Ok(crate::storage::Readiness::Ready) => {}
        Ok(crate::storage::Readiness::CreatedOnFirstRun(note)) => {
            // Nothing to probe yet, and check never creates anything.
            r.ok = true;
            r.note = Some(note);
            return r;
        }
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    }
    let key = crate::repo::Key::probe().object();
    let payload = format!("backupctl probe {}", crate::util::random_hex(16)).into_bytes();
    let start = std::time::Instant::now();
    let res: Result<(), String> = async {
        t.put_bytes(&key, payload.clone())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let back = t
            .get_bytes(&key)
            .await
            .map_err(|e| format!("read back: {e}"))?;
        if back != payload {
            return Err("read back different bytes than written".into());
        }
        t.delete(&key).await.map_err(|e| format!("delete: {e}"))?;
        Ok(())
    }
    .await;
    r.latency_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
    match res {
        Ok(()) => r.ok = true,
        Err(e) => {
            let _ = t.delete(&key).await;
            r.error = Some(e);
        }
    }
    r
}

/// Source paths of `policy` that do not exist now (an unmounted share, a
/// deleted site), as configuration errors naming the key. At run time they
/// fail only this policy (see [`crate::source::Source::preflight`]);
/// restore, list and verify never need them.
fn missing_paths(policy: &Policy) -> Vec<ConfigError> {
    policy
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = s.source().local_path().filter(|p| !p.present())?;
            Some(ConfigError::new(
                policy.file.display(),
                format!("sources[{i}] ({}).path", s.name()),
                format!(
                    "{} does not exist or is not a {}",
                    p.path.display(),
                    p.what()
                ),
            ))
        })
        .collect()
}

pub async fn check(cfg: &Config) -> CheckResult {
    let mut warnings = Vec::new();
    for p in cfg.policies.values() {
        if let Some(w) = warn_locations(cfg, p) {
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
    if cfg.policies.is_empty() {
        warnings.push(format!("no policies in {}", cfg.policies_dir.display()));
    }
    let mut errors: Vec<String> = cfg.broken.values().map(|e| e.to_string()).collect();
    for p in cfg.policies.values() {
        errors.extend(missing_paths(p).iter().map(|e| e.to_string()));
    }
    let names: Vec<&String> = cfg.targets.keys().collect();
    let targets = futures::future::join_all(names.iter().map(|n| probe(cfg, n))).await;
    CheckResult {
        config: cfg.path.display().to_string(),
        policies: cfg.policies.keys().cloned().collect(),
        targets,
        warnings,
        errors,
    }
}
