//! The thin CLI: parse arguments, set up output, run one command through the
//! shared per-policy loop ([`cli::each`]), render the results
//! ([`cli::render`]), and map the outcome to a documented exit code.
//!
//! Output rules: `--json` prints the results on stdout; otherwise each
//! policy's summary is printed, except under `-q`, where a successful policy
//! prints nothing at all (cron sends no mail) and a failed or partial one
//! prints its short summary. Policies that could not be run at all are
//! always named on stderr (`error: policy NAME: ...`).

mod cli;

use backupctl::config::{self, Config};
use backupctl::error::{exit_code_for, ExitCode};
use backupctl::observe::Observe;
use backupctl::ops::due::Job;
use backupctl::ops::{self, Coded};
use clap::Parser;
use cli::args::{Cli, Command};
use cli::each::{for_each_policy, Locking, Outcome, Plan};
use cli::output::{self as report, print_json, say};
use cli::render::*;
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    let log = report::LogOptions {
        json: cli.log_format == cli::args::LogFormat::Json,
        file: cli.log_file.clone(),
    };
    let verbosity = if cli.quiet {
        -1
    } else {
        cli.verbose.min(3) as i8
    };
    if let Err(e) = report::init_with(verbosity, &log) {
        eprintln!("error: {e}");
        std::process::exit(ExitCode::Usage.code());
    }
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
    // Notifications still queued: at most one delivery bound (see notify).
    rt.block_on(backupctl::notify::flush());
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    std::process::exit(code.code());
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let path = config::locate(cli.config.as_deref())?;
    Ok(Config::load(&path)?)
}

/// How results are shown.
#[derive(Clone, Copy)]
struct Show {
    json: bool,
    quiet: bool,
}

impl Show {
    /// Print an outcome of the per-policy loop; returns its exit code.
    fn outcome<T: serde::Serialize + Coded>(
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
    fn one<T: serde::Serialize>(self, r: &T, code: ExitCode, render: impl Fn(&T) -> String) {
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
async fn write_metrics<T: Observe>(cfg: &Config, m: &cli::args::MetricsArgs, o: &Outcome<T>) {
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

/// Commands that need no configuration: completions, man pages, systemd units.
fn standalone(cli: &Cli) -> Option<ExitCode> {
    use clap::CommandFactory;
    use std::io::Write;
    match &cli.command {
        Command::Completions(a) => {
            let _ =
                std::io::stdout().write_all(&cli::contrib::completions(a.shell, Cli::command()));
        }
        Command::Man(a) => {
            let pages = cli::contrib::man_pages(Cli::command());
            match &a.out_dir {
                None => {
                    let _ = std::io::stdout().write_all(&pages[0].1);
                }
                Some(dir) => {
                    for (name, roff) in &pages {
                        if let Err(e) = std::fs::write(dir.join(name), roff) {
                            eprintln!("error: writing {}: {e}", dir.join(name).display());
                            return Some(ExitCode::Failure);
                        }
                    }
                    if !cli.quiet {
                        say(format!(
                            "wrote {} man pages to {}",
                            pages.len(),
                            dir.display()
                        ));
                    }
                }
            }
        }
        Command::Schedule(a) if a.systemd => {
            let config = cli
                .config
                .as_deref()
                .map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf()));
            print!("{}", cli::contrib::systemd_units(config.as_deref()));
        }
        _ => return None,
    }
    Some(ExitCode::Success)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Key(k) = &cli.command {
        return key_command(&cli, k);
    }
    if let Some(code) = standalone(&cli) {
        return Ok(code);
    }
    let mut cfg = load(&cli)?;
    for k in &cli.trust {
        let key = k
            .parse()
            .map_err(|e| backupctl::error::CodedError::usage(format!("--trust: {e}")))?;
        cfg.pinned_keys.add(key);
    }
    let cfg = &cfg;
    let quiet = cli.quiet;
    match &cli.command {
        Command::Check(a) => {
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
        Command::Init(a) => {
            let r = ops::init::init(cfg, &a.targets).await?;
            let code = r.exit_code();
            Show {
                json: a.json,
                quiet,
            }
            .one(&r, code, render_init);
            Ok(code)
        }
        Command::Run(a) => {
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
        Command::Prune(a) => {
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
        Command::Verify(a) => {
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
        Command::Sync(a) => {
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
        Command::List(a) => {
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
        Command::Schedule(a) => {
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
        Command::Key(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled before loading the configuration")
        }
        Command::Notify(cli::args::NotifyCommand::Test(a)) => {
            let r = ops::notify_test::notify_test(cfg, a.policy.as_deref()).await?;
            let code = r.exit_code();
            Show {
                json: a.json,
                quiet,
            }
            .one(&r, code, render_notify_test);
            Ok(code)
        }
        Command::Daemon(a) => {
            let cancel = cancel_on_signal();
            let opts = ops::daemon::DaemonOptions {
                prune: !a.no_prune,
                metrics_file: a.metrics.metrics_file.clone(),
            };
            let (o, c) = (&opts, cancel.clone());
            ops::daemon::run_daemon(cfg, &opts, cancel, async move |policy, job| {
                cli::daemon::execute(cfg, o, policy, job, &c).await
            })
            .await?;
            Ok(ExitCode::Success)
        }
        Command::Restore(a) => {
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
    }
}

/// `key init` and `key fingerprint`: with `--key-file` they need no
/// configuration (a fresh machine, a key made before the config).
fn key_command(cli: &Cli, k: &cli::args::KeyCommand) -> anyhow::Result<ExitCode> {
    use backupctl::trust::{HostKey, KeyError};
    use cli::args::KeyCommand;
    let (KeyCommand::Init(a) | KeyCommand::Fingerprint(a)) = k;
    let path = match &a.key_file {
        Some(p) => p.clone(),
        None => load(cli)?.key_file,
    };
    let key = match k {
        KeyCommand::Init(_) => match HostKey::create(&path) {
            Ok(key) => key,
            Err(e @ KeyError::Exists { .. }) => {
                return Err(backupctl::error::CodedError::usage(e.to_string()).into())
            }
            Err(e) => return Err(e.into()),
        },
        KeyCommand::Fingerprint(_) => HostKey::load(&path)?,
    };
    let public = key.public().to_string();
    if a.json {
        print_json(&serde_json::json!({
            "key_file": path.display().to_string(),
            "public_key": public,
        }));
    } else if matches!(k, KeyCommand::Init(_)) {
        say(format!(
            "created {} (keep a copy with your recovery documents)\npublic key: {public}\n\
             pin it on every machine that restores or verifies, in backupctl.toml:\n    trusted_keys = [\"{public}\"]",
            path.display()
        ));
    } else {
        say(&public);
    }
    Ok(ExitCode::Success)
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
