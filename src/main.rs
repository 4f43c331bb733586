//! The thin CLI: parse arguments, set up output, run one command, map the
//! outcome to a documented exit code.

use backupctl::cli::{Cli, Command};
use backupctl::config::{self, Config};
use backupctl::error::{exit_code_for, ExitCode};
use backupctl::ops::due::Job;
use backupctl::ops::{self, combine};
use backupctl::report::{self, print_json, say};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    report::init(if cli.quiet {
        -1
    } else {
        cli.verbose.min(3) as i8
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code_for(&e);
            eprintln!("error: {e:#}");
            code
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    std::process::exit(code.code());
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let path = config::locate(cli.config.as_deref())?;
    Ok(Config::load(&path)?)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = load(&cli)?;
    match &cli.command {
        Command::Check(a) => {
            let r = ops::check::check(&cfg).await;
            if a.json {
                print_json(&r);
            } else {
                say(format!(
                    "config {}: valid, {} policies: {}",
                    r.config,
                    r.policies.len(),
                    r.policies.join(", ")
                ));
                for t in &r.targets {
                    match &t.error {
                        None => say(format!(
                            "target {} ({}, location {}): ok, probe {:.0} ms",
                            t.target,
                            t.description,
                            t.location,
                            t.latency_ms.unwrap_or(0.0)
                        )),
                        Some(e) => say(format!(
                            "target {} ({}, location {}): FAILED: {e}",
                            t.target, t.kind, t.location
                        )),
                    }
                }
                for w in &r.warnings {
                    say(format!("warning: {w}"));
                }
            }
            Ok(r.exit_code())
        }
        Command::Run(a) => {
            let mut policies = cfg.select(&a.policies)?;
            if a.due {
                policies = due_policies(&cfg, policies, Job::Run).await?;
                if policies.is_empty() {
                    if a.json {
                        print_json(&Vec::<()>::new());
                    }
                    return Ok(ExitCode::Success);
                }
            }
            let cancel = cancel_on_signal();
            let opts = ops::run::RunOptions {
                time: a.time,
                dry_run: a.dry_run,
                cancel: Some(cancel.clone()),
            };
            let mut results = Vec::new();
            let mut codes = Vec::new();
            for p in policies {
                if cancel.is_cancelled() {
                    codes.push(ExitCode::Failure);
                    break;
                }
                let Some(_lock) =
                    lock_unless_dry_run(&cfg, &p.name, "run", a.dry_run, a.wait, &mut codes).await
                else {
                    continue;
                };
                let run = ops::run::run_policy(&cfg, p, &opts).await?;
                codes.push(run.exit_code());
                let mut prune = None;
                if a.prune && !a.dry_run {
                    if run.status == "complete" && !cancel.is_cancelled() {
                        match ops::prune::prune_policy(&cfg, p, &Default::default()).await {
                            Ok(r) => {
                                codes.push(r.exit_code());
                                prune = Some(r);
                            }
                            Err(e) => {
                                eprintln!("error: policy {}: prune: {e:#}", p.name);
                                codes.push(exit_code_for(&e));
                            }
                        }
                    } else {
                        tracing::warn!(
                            "policy {}: not pruned: the run did not complete on every target",
                            p.name
                        );
                    }
                }
                results.push(RunAndPrune { run, prune });
            }
            if a.json {
                print_json(&results);
            } else {
                for r in &results {
                    say(render_run(&r.run));
                    if let Some(p) = &r.prune {
                        say(ops::prune::render(p));
                    }
                }
            }
            Ok(combine(codes))
        }
        Command::Prune(a) => {
            let policies = cfg.select(&a.policies)?;
            let opts = ops::prune::PruneOptions { dry_run: a.dry_run };
            let mut out = Vec::new();
            let mut codes = Vec::new();
            for p in policies {
                let Some(_lock) =
                    lock_unless_dry_run(&cfg, &p.name, "prune", a.dry_run, a.wait, &mut codes)
                        .await
                else {
                    continue;
                };
                match ops::prune::prune_policy(&cfg, p, &opts).await {
                    Ok(r) => {
                        codes.push(r.exit_code());
                        out.push(r);
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        codes.push(exit_code_for(&e));
                    }
                }
            }
            if a.json {
                print_json(&out);
            } else {
                for r in &out {
                    say(ops::prune::render(r));
                }
            }
            Ok(combine(codes))
        }
        Command::Schedule(a) => {
            let now = backupctl::clock::now();
            let mut out = Vec::new();
            for p in cfg.select(&[])? {
                out.push(ops::schedule::policy_schedule(&cfg, p, now).await?);
            }
            if a.json {
                print_json(&out);
            } else {
                for p in &out {
                    say(ops::schedule::render(p));
                }
            }
            Ok(ExitCode::Success)
        }
        Command::Daemon(a) => {
            let cancel = cancel_on_signal();
            let opts = ops::daemon::DaemonOptions { prune: !a.no_prune };
            ops::daemon::run_daemon(&cfg, &opts, cancel).await?;
            Ok(ExitCode::Success)
        }
        Command::List(a) => {
            let policies = match &a.policy {
                Some(p) => vec![cfg.policy(p)?],
                None => cfg.select(&[])?,
            };
            let mut out = Vec::new();
            for p in policies {
                out.push(ops::list::list_policy(&cfg, p).await?);
            }
            if a.json {
                print_json(&out);
            } else {
                for l in &out {
                    say(ops::list::render(l));
                }
            }
            let unreachable = out.iter().any(|l| l.targets.iter().any(|t| !t.reachable));
            Ok(if unreachable {
                ExitCode::Partial
            } else {
                ExitCode::Success
            })
        }
        Command::Restore(a) => {
            let policy = cfg.policy(&a.policy)?;
            if let Some(into) = &a.into_database {
                let opts = ops::restore_db::RestoreDbOptions {
                    snapshot: a.snapshot.clone(),
                    source: a.source.clone().unwrap_or_default(),
                    into: into.clone(),
                    database: a.database.clone(),
                    target: a.target.clone(),
                    force: a.force,
                };
                let r = ops::restore_db::restore_into_database(&cfg, policy, &opts).await?;
                if a.json {
                    print_json(&r);
                } else {
                    say(format!(
                        "restored database {} of source {} (snapshot {}, {}) from target {} into {} on {}: {} tables, {} rows{}",
                        r.from_database,
                        r.source,
                        r.snapshot,
                        r.time,
                        r.target,
                        r.load.database,
                        r.load.server,
                        r.load.tables,
                        r.load.rows,
                        if r.load.replaced_existing { " (replaced the existing database)" } else { "" }
                    ));
                }
                return Ok(ExitCode::Success);
            }
            let opts = ops::restore::RestoreOptions {
                snapshot: a.snapshot.clone(),
                to: a.to.clone().expect("clap requires --to"),
                source: a.source.clone(),
                target: a.target.clone(),
                include: a.include.clone(),
                force: a.force,
                allow_external_links: a.allow_external_links,
            };
            let (r, code) = ops::restore::restore(&cfg, policy, &opts).await?;
            if a.json {
                print_json(&r);
            } else {
                for s in &r.sources {
                    say(format!(
                        "restored {} of snapshot {} ({}) from target {}: {} files, {} -> {}",
                        s.name,
                        r.snapshot,
                        r.time,
                        s.target,
                        s.files,
                        backupctl::util::human_bytes(s.bytes),
                        s.path
                    ));
                }
            }
            Ok(code)
        }
        Command::Verify(a) => {
            let mut policies = cfg.select(&a.policies)?;
            if a.due {
                policies = due_policies(&cfg, policies, Job::Verify).await?;
                if policies.is_empty() {
                    if a.json {
                        print_json(&Vec::<()>::new());
                    }
                    return Ok(ExitCode::Success);
                }
            }
            let opts = ops::verify::VerifyOptions {
                all: a.all,
                sample: a.sample,
                target: a.target.clone(),
            };
            let mut results = Vec::new();
            for p in policies {
                results.push(ops::verify::verify_policy(&cfg, p, &opts).await?);
            }
            if a.json {
                print_json(&results);
            } else {
                for r in &results {
                    say(render_verify(r));
                }
            }
            Ok(combine(results.iter().map(|r| r.exit_code())))
        }
        Command::Sync(a) => {
            let policies = cfg.select(&a.policies)?;
            let opts = ops::sync::SyncOptions {
                dry_run: a.dry_run,
                abort_uploads_older_than: a.abort_uploads_older_than,
            };
            let mut results = Vec::new();
            let mut codes = Vec::new();
            for p in policies {
                let Some(_lock) =
                    lock_unless_dry_run(&cfg, &p.name, "sync", a.dry_run, a.wait, &mut codes).await
                else {
                    continue;
                };
                let r = ops::sync::sync_policy(&cfg, p, &opts).await?;
                codes.push(r.exit_code());
                results.push(r);
            }
            if a.json {
                print_json(&results);
            } else {
                for r in &results {
                    say(ops::sync::render(r));
                }
            }
            Ok(combine(codes))
        }
    }
}

/// A run, and the prune that followed it (`run --prune`).
#[derive(serde::Serialize)]
struct RunAndPrune {
    #[serde(flatten)]
    run: ops::run::RunResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    prune: Option<ops::prune::PruneResult>,
}

/// The policies whose `job` is due now. Due decisions are logged at info,
/// the others at debug (a cron line every few minutes stays quiet).
async fn due_policies<'a>(
    cfg: &Config,
    policies: Vec<&'a backupctl::config::Policy>,
    job: Job,
) -> anyhow::Result<Vec<&'a backupctl::config::Policy>> {
    let now = backupctl::clock::now();
    let mut due = Vec::new();
    for p in policies {
        let d = ops::due::decide(cfg, p, job, now).await?;
        if d.due {
            tracing::info!("{}", d.describe());
            due.push(p);
        } else {
            tracing::debug!("{}", d.describe());
        }
    }
    Ok(due)
}

/// A token cancelled by the first SIGTERM or SIGINT; a second one exits at once.
fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        ops::daemon::shutdown_signal().await;
        tracing::warn!(
            "stopping: finishing or aborting the current step (signal again to exit now)"
        );
        t.cancel();
        ops::daemon::shutdown_signal().await;
        std::process::exit(ExitCode::Failure.code());
    });
    token
}

/// One run, prune or sync per policy at a time: take the policy's lock, unless
/// this is a dry run (it writes nothing). When the lock can't be had, the error
/// is printed, its exit code recorded, and None tells the caller to skip the
/// policy.
async fn lock_unless_dry_run(
    cfg: &Config,
    policy: &str,
    op: &str,
    dry_run: bool,
    wait: Option<std::time::Duration>,
    codes: &mut Vec<ExitCode>,
) -> Option<Option<backupctl::lock::Lock>> {
    if dry_run {
        return Some(None);
    }
    match ops::policy_lock(cfg, policy, op, wait).await {
        Ok(l) => Some(Some(l)),
        Err(e) => {
            eprintln!("error: {e:#}");
            codes.push(exit_code_for(&e));
            None
        }
    }
}

fn render_run(r: &ops::run::RunResult) -> String {
    use backupctl::util::human_bytes;
    let mut s = match &r.snapshot {
        Some(id) => format!(
            "policy {}: snapshot {} {} ({:.1}s)\n",
            r.policy, id, r.status, r.duration_seconds
        ),
        None => format!("policy {}: {}\n", r.policy, r.status),
    };
    for src in &r.sources {
        match &src.error {
            Some(e) => s.push_str(&format!("  source {}: FAILED: {e}\n", src.name)),
            None => s.push_str(&format!(
                "  source {}: {} files, {} -> {}{}\n",
                src.name,
                src.files,
                human_bytes(src.content_size),
                if r.dry_run {
                    "(dry run)".to_string()
                } else {
                    human_bytes(src.archive_size)
                },
                if src.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warnings", src.warnings.len())
                }
            )),
        }
    }
    for t in &r.targets {
        match &t.error {
            Some(e) => s.push_str(&format!(
                "  target {} ({}): FAILED: {e}\n",
                t.name, t.location
            )),
            None => s.push_str(&format!(
                "  target {} ({}): {}, {} uploaded, {} archives already present\n",
                t.name,
                t.location,
                t.status,
                human_bytes(t.uploaded_bytes),
                t.archives_already_present
            )),
        }
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    s.trim_end().to_string()
}

fn render_verify(r: &ops::verify::VerifyResult) -> String {
    let mut s = format!("policy {}: {}\n", r.policy, r.result.to_uppercase());
    for snap in &r.snapshots {
        s.push_str(&format!("  snapshot {} ({})\n", snap.id, snap.time));
        for t in &snap.targets {
            s.push_str(&format!(
                "    target {}: {}{}\n",
                t.target,
                t.result,
                t.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            for a in &t.archives {
                s.push_str(&format!("      {} {}: {}\n", a.source, a.archive, a.result));
                for p in &a.problems {
                    s.push_str(&format!("        - {p}\n"));
                }
            }
        }
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    s.trim_end().to_string()
}
