//! `backupctl init [TARGET...]`: make targets ready to receive backups.
//!
//! For a directory target: create the root when missing and write the marker
//! (`backupctl-target.json`) that tells a mounted disk from the empty mount
//! point underneath it; for S3: write the marker under the prefix (the bucket
//! must exist). The restore instructions are written too. An existing target
//! is left as it is; a non-empty directory that holds no backupctl data is
//! refused.

use crate::config::Config;
use crate::error::ExitCode;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct InitResult {
    pub target: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// "initialised", "already initialised" or "failed"
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub targets: Vec<InitResult>,
}

impl InitReport {
    pub fn exit_code(&self) -> ExitCode {
        let failed = self.targets.iter().filter(|t| t.error.is_some()).count();
        match failed {
            0 => ExitCode::Success,
            n if n == self.targets.len() => ExitCode::Failure,
            _ => ExitCode::Partial,
        }
    }
}

async fn init_one(cfg: &Config, name: &str) -> InitResult {
    let mut r = InitResult {
        target: name.to_string(),
        kind: cfg.targets[name].kind().to_string(),
        description: String::new(),
        status: "failed".into(),
        error: None,
    };
    let res = async {
        let t = crate::storage::open(cfg, name).await?;
        r.description = t.describe();
        let fresh = t.init().await?;
        t.put_bytes(
            &crate::repo::Key::RestoreReadme.object(),
            crate::repo::readme::restore_instructions().into_bytes(),
        )
        .await?;
        Ok::<_, crate::error::Error>(fresh)
    }
    .await;
    match res {
        Ok(true) => r.status = "initialised".into(),
        Ok(false) => r.status = "already initialised".into(),
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r
}

/// Initialise the named targets (all when `names` is empty).
pub async fn init(cfg: &Config, names: &[String]) -> crate::error::Result<InitReport> {
    for n in names {
        if !cfg.targets.contains_key(n) {
            return Err(crate::error::Error::usage(format!(
                "unknown target {n:?}: defined targets are {}",
                cfg.targets.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let chosen: Vec<&String> = if names.is_empty() {
        cfg.targets.keys().collect()
    } else {
        names.iter().collect()
    };
    let targets = futures::future::join_all(chosen.iter().map(|n| init_one(cfg, n))).await;
    for t in &targets {
        match &t.error {
            None => tracing::info!("init target={}: {}", t.target, t.status),
            Some(e) => tracing::error!("init target={}: {e}", t.target),
        }
    }
    Ok(InitReport { targets })
}
