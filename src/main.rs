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
use backupctl::error::ExitCode;
use clap::Parser;
use cli::args::{Cli, Command};
use cli::commands;
use cli::output::{self as report, print_json, say};

/// glibc raises its mmap threshold to the size of each large block freed, so
/// after the first packs (16 MiB), 1 MiB pipe blocks and compressed frames
/// come from per-thread arenas that keep what is freed: a 1 GB run peaked at
/// 198 MB instead of 76 MB. A fixed threshold turns that off; blocks of
/// 1 MiB and more are mapped and unmapped whole, so code that reads many
/// such blocks reuses its buffers (the restore side does) rather than
/// paying fresh pages for each.
fn bound_allocator_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() {
    bound_allocator_memory();
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
            let code = e.exit_code();
            eprintln!("error: {e:#}");
            code
        }
    };
    // Notifications still queued: at most one delivery bound (see notify).
    rt.block_on(backupctl::notify::flush());
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    std::process::exit(code.code());
}

fn load(cli: &Cli) -> backupctl::error::Result<Config> {
    let path = config::locate(cli.config.as_deref())?;
    Ok(Config::load(&path)?)
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

async fn dispatch(cli: Cli) -> backupctl::error::Result<ExitCode> {
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
            .map_err(|e| backupctl::error::Error::usage(format!("--trust: {e}")))?;
        cfg.pinned_keys.add(key);
    }
    let cfg = &cfg;
    let quiet = cli.quiet;
    match &cli.command {
        Command::Check(a) => commands::check(cfg, a, quiet).await,
        Command::Init(a) => commands::init(cfg, a, quiet).await,
        Command::Run(a) => commands::run(cfg, a, quiet).await,
        Command::Prune(a) => commands::prune(cfg, a, quiet).await,
        Command::Verify(a) => commands::verify(cfg, a, quiet).await,
        Command::Drill(a) => commands::drill(cfg, a, quiet).await,
        Command::Sync(a) => commands::sync(cfg, a, quiet).await,
        Command::List(a) => commands::list(cfg, a, quiet).await,
        Command::Schedule(a) => commands::schedule(cfg, a, quiet).await,
        Command::Notify(cli::args::NotifyCommand::Test(a)) => {
            commands::notify_test(cfg, a, quiet).await
        }
        Command::Daemon(a) => commands::daemon(cfg, a, quiet).await,
        Command::Restore(a) => commands::restore(cfg, a, quiet).await,
        Command::Status(a) => commands::status(cfg, a, quiet).await,
        Command::Ls(a) => commands::ls(cfg, a, quiet).await,
        Command::Find(a) => commands::find(cfg, a, quiet).await,
        Command::Diff(a) => commands::diff(cfg, a, quiet).await,
        Command::Dump(a) => commands::dump(cfg, a, quiet).await,
        Command::Key(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled before loading the configuration")
        }
    }
}

/// `key init` and `key fingerprint`: with `--key-file` they need no
/// configuration (a fresh machine, a key made before the config).
fn key_command(cli: &Cli, k: &cli::args::KeyCommand) -> backupctl::error::Result<ExitCode> {
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
                return Err(backupctl::error::Error::usage(e.to_string()))
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
