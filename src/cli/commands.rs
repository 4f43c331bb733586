//! One handler per command that needs the configuration: options from the
//! command line in, the operation run (through the per-policy loop where
//! there are policies), the result shown, the exit code out.

use super::args;
use super::each::{for_each_policy, Locking, Outcome, Plan};
use super::output::{self as report, print_json, say};
use super::render::*;
use backupctl::config::Config;
use backupctl::error::ExitCode;
use backupctl::observe::Observe;
use backupctl::ops::due::Job;
use backupctl::ops::{self, Coded};
use tokio_util::sync::CancellationToken;

/// `check`: configuration, targets and sources, without writing.
pub async fn check(
    cfg: &Config,
    a: &args::CheckArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let r = ops::check::check(cfg).await;
    let code = r.exit_code();
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, code, render_check);
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    Ok(code)
}

/// `init`: write the marker on fs targets.
pub async fn init(
    cfg: &Config,
    a: &args::InitArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let r = ops::init::init(cfg, &a.targets).await?;
    let code = r.exit_code();
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, code, render_init);
    Ok(code)
}

/// `run`: back up each policy (or the due ones), then prune with `--prune`.
pub async fn run(
    cfg: &Config,
    a: &args::RunArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let cancel = cancel_on_signal();
    let opts = ops::run::RunOptions {
        display: report::display(),
        time: a.time,
        dry_run: a.dry_run,
        cancel: Some(cancel.clone()),
    };
    let opts = &opts;
    let prune = a.prune;
    let plan = Plan {
        names: &a.policies,
        due: a.due.then_some(Job::Run),
        locking: locking("run", a.dry_run, a.wait),
        cancel: Some(cancel),
        op: Some("run"),
    };
    let o = for_each_policy(cfg, &plan, move |p, d| {
        Box::pin(async move { ops::run::run_step(cfg, p, d.as_ref(), opts, prune).await })
    })
    .await?;
    write_metrics(cfg, &a.metrics, &o).await;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_run_step))
}

/// `prune`: apply retention on every target.
pub async fn prune(
    cfg: &Config,
    a: &args::PruneArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let opts = ops::prune::PruneOptions { dry_run: a.dry_run };
    let opts = &opts;
    let plan = Plan {
        names: &a.policies,
        locking: locking("prune", a.dry_run, a.wait),
        op: Some("prune"),
        ..Default::default()
    };
    let o = for_each_policy(cfg, &plan, move |p, _| {
        Box::pin(ops::prune::prune_policy(cfg, p, opts))
    })
    .await?;
    write_metrics(cfg, &a.metrics, &o).await;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_prune))
}

/// `verify`: re-hash and test-restore sampled snapshots.
pub async fn verify(
    cfg: &Config,
    a: &args::VerifyArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let opts = ops::verify::VerifyOptions {
        display: report::display(),
        all: a.all,
        sample: a.sample,
        target: a.target.clone(),
        read_all: a.read_all,
    };
    let opts = &opts;
    let plan = Plan {
        names: &a.policies,
        due: a.due.then_some(Job::Verify),
        op: Some("verify"),
        ..Default::default()
    };
    let o = for_each_policy(cfg, &plan, move |p, _| {
        Box::pin(ops::verify::verify_policy(cfg, p, opts))
    })
    .await?;
    write_metrics(cfg, &a.metrics, &o).await;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_verify))
}

/// `drill`: restore each target's newest snapshot, timed; `--report`.
pub async fn drill(
    cfg: &Config,
    a: &args::DrillArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    if let Some(r) = &a.report {
        if ops::drill_report::Format::of(r).is_none() {
            return Err(backupctl::error::Error::usage(format!(
                "--report {}: the file name must end in .md or .html",
                r.display()
            )));
        }
    }
    let opts = ops::drill::DrillOptions {
        display: report::display(),
        target: a.target.clone(),
    };
    let opts = &opts;
    let plan = Plan {
        names: &a.policies,
        op: Some("drill"),
        ..Default::default()
    };
    let o = for_each_policy(cfg, &plan, move |p, _| {
        Box::pin(ops::drill::drill_policy(cfg, p, opts))
    })
    .await?;
    write_metrics(cfg, &a.metrics, &o).await;
    let mut code = Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_drill);
    if let Some(r) = &a.report {
        let now = backupctl::clock::now().to_rfc3339();
        let failed: Vec<(String, String)> = o
            .failures
            .iter()
            .map(|f| (f.policy.clone(), f.error.clone()))
            .collect();
        let rep = ops::drill_report::Report {
            results: &o.results,
            failed: &failed,
            now: &now,
        };
        if let Err(e) = ops::drill_report::write(r, &rep) {
            eprintln!("error: {e:#}");
            code = ops::combine([code, ExitCode::Failure]);
        }
    }
    Ok(code)
}

/// `sync`: copy what a target lacks and repair damage.
pub async fn sync(
    cfg: &Config,
    a: &args::SyncArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let opts = ops::sync::SyncOptions {
        dry_run: a.dry_run,
        abort_uploads_older_than: a.abort_uploads_older_than,
        only_targets: None,
    };
    let opts = &opts;
    let plan = Plan {
        names: &a.policies,
        locking: locking("sync", a.dry_run, a.wait),
        op: Some("sync"),
        ..Default::default()
    };
    let o = for_each_policy(cfg, &plan, move |p, _| {
        Box::pin(ops::sync::sync_policy(cfg, p, opts))
    })
    .await?;
    write_metrics(cfg, &a.metrics, &o).await;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_sync))
}

/// `list`: the snapshots of each policy.
pub async fn list(
    cfg: &Config,
    a: &args::ListArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let plan = Plan {
        names: &a.policies,
        ..Default::default()
    };
    let o = for_each_policy(cfg, &plan, move |p, _| {
        Box::pin(ops::list::list_policy(cfg, p))
    })
    .await?;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_list))
}

/// `schedule`: when each policy runs next.
pub async fn schedule(
    cfg: &Config,
    a: &args::ScheduleArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let now = backupctl::clock::now();
    let o = for_each_policy(cfg, &Plan::default(), move |p, _| {
        Box::pin(ops::schedule::policy_schedule(cfg, p, now))
    })
    .await?;
    Ok(Show {
        json: a.json,
        quiet,
    }
    .outcome(&o, render_schedule))
}

/// `notify test`: send a test event to every notifier.
pub async fn notify_test(
    cfg: &Config,
    a: &args::NotifyTestArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let r = ops::notify_test::notify_test(cfg, a.policy.as_deref()).await?;
    let code = r.exit_code();
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, code, render_notify_test);
    Ok(code)
}

/// `daemon`: run the schedules until stopped.
pub async fn daemon(
    cfg: &Config,
    a: &args::DaemonArgs,
    _quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let cancel = cancel_on_signal();
    let opts = ops::daemon::DaemonOptions {
        prune: !a.no_prune,
        metrics_file: a.metrics.metrics_file.clone(),
    };
    let (o, c) = (&opts, cancel.clone());
    ops::daemon::run_daemon(cfg, &opts, cancel, async move |policy, job| {
        super::daemon::execute(cfg, o, policy, job, &c).await
    })
    .await?;
    Ok(ExitCode::Success)
}

/// `restore`: files into `--to`, or a database with `--into-database`.
pub async fn restore(
    cfg: &Config,
    a: &args::RestoreArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let policy = cfg.policy(&a.policy)?;
    let show = Show {
        json: a.json,
        quiet,
    };
    if let Some(into) = &a.into_database {
        let opts = ops::restore_db::RestoreDbOptions {
            snapshot: a.snapshot.clone(),
            source: a.source.clone().unwrap_or_default(),
            into: into.clone(),
            database: a.database.clone(),
            target: a.target.clone(),
            force: a.force,
        };
        let r = ops::restore_db::restore_into_database(cfg, policy, &opts).await?;
        show.one(&r, ExitCode::Success, render_restore_db);
        return Ok(ExitCode::Success);
    }
    let opts = ops::restore::RestoreOptions {
        display: report::display(),
        snapshot: a.snapshot.clone(),
        to: a.to.clone().expect("clap requires --to"),
        source: a.source.clone(),
        target: a.target.clone(),
        include: a.include.clone(),
        force: a.force,
        no_same_owner: a.no_same_owner,
    };
    if a.allow_external_links {
        tracing::warn!(
            "--allow-external-links is deprecated and has no effect: symbolic links are \
             always restored as they were and never followed while restoring"
        );
    }
    let (r, code) = ops::restore::restore(cfg, policy, &opts).await?;
    show.one(&r, code, render_restore);
    Ok(code)
}

/// How a command's results are shown: JSON, or text (none on success
/// with `-q`).
#[derive(Clone, Copy)]
pub struct Show {
    pub json: bool,
    pub quiet: bool,
}

impl Show {
    /// Print an outcome of the per-policy loop; returns its exit code.
    pub fn outcome<T: serde::Serialize + Coded>(
        self,
        o: &Outcome<T>,
        render: impl Fn(&T) -> String,
    ) -> ExitCode {
        if self.json {
            print_json(&o.results);
        } else {
            for r in &o.results {
                if !self.quiet || r.exit_code() != ExitCode::Success {
                    say(render(r));
                }
            }
        }
        for f in &o.failures {
            eprintln!("error: policy {}: {}", f.policy, f.error);
        }
        o.exit_code()
    }

    /// Print a single result.
    pub fn one<T: serde::Serialize>(self, r: &T, code: ExitCode, render: impl Fn(&T) -> String) {
        if self.json {
            print_json(r);
        } else if !self.quiet || code != ExitCode::Success {
            say(render(r));
        }
    }
}

/// Take the policy lock for steps that write, not for dry runs.
fn locking(op: &'static str, dry_run: bool, wait: Option<std::time::Duration>) -> Option<Locking> {
    (!dry_run).then_some(Locking::Take { op, wait })
}

/// `--metrics-file`: refresh the policies that acted, write every policy's
/// metrics. A file that cannot be written is an error message, not a
/// changed exit code.
async fn write_metrics<T: Observe>(cfg: &Config, m: &args::MetricsArgs, o: &Outcome<T>) {
    let Some(path) = &m.metrics_file else {
        return;
    };
    let mut names: Vec<String> = o
        .results
        .iter()
        .filter_map(|r| r.summary())
        .map(|s| s.policy)
        .collect();
    names.sort();
    names.dedup();
    if let Err(e) = backupctl::metrics::write(cfg, &names, path).await {
        eprintln!("error: --metrics-file {}: {e}", path.display());
    }
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

/// `status`: health of every policy, for people, scripts and Nagios.
pub async fn status(
    cfg: &Config,
    a: &args::StatusArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let r = ops::status::status(cfg, &a.policies).await?;
    if a.nagios {
        let (line, code) = r.nagios();
        println!("{line}");
        return Ok(code);
    }
    let code = r.exit_code();
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, code, render_status);
    Ok(code)
}

// ---------------------------------------------------------------------------
// Browsing a snapshot: ls, find, diff, dump (backupctl::ops::browse)
// ---------------------------------------------------------------------------

/// `ls`: a snapshot's entries, from its file indexes.
pub async fn ls(cfg: &Config, a: &args::LsArgs, quiet: bool) -> backupctl::error::Result<ExitCode> {
    let policy = cfg.policy(&a.policy)?;
    let r = ops::browse::ls(cfg, policy, a.snapshot.as_deref(), a.path.as_deref()).await?;
    let long = a.long;
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, ExitCode::Success, |r| render_ls(r, long));
    Ok(ExitCode::Success)
}

/// `find`: paths matching a pattern, across snapshots.
pub async fn find(
    cfg: &Config,
    a: &args::FindArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let policy = cfg.policy(&a.policy)?;
    let r = ops::browse::find(cfg, policy, &a.pattern).await?;
    let code = r.exit_code();
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, code, render_find);
    Ok(code)
}

/// `diff`: what changed between two snapshots.
pub async fn diff(
    cfg: &Config,
    a: &args::DiffArgs,
    quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let policy = cfg.policy(&a.policy)?;
    let r = ops::browse::diff(cfg, policy, &a.from, &a.to).await?;
    Show {
        json: a.json,
        quiet,
    }
    .one(&r, ExitCode::Success, render_diff);
    Ok(ExitCode::Success)
}

/// `dump`: one file's bytes to stdout (nothing else goes there).
pub async fn dump(
    cfg: &Config,
    a: &args::DumpArgs,
    _quiet: bool,
) -> backupctl::error::Result<ExitCode> {
    let policy = cfg.policy(&a.policy)?;
    let out = Box::new(std::io::stdout());
    ops::browse::dump(cfg, policy, &a.snapshot, &a.path, out).await?;
    Ok(ExitCode::Success)
}
