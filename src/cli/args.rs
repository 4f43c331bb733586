//! Command-line definitions (clap). No behaviour lives here.

use chrono::{DateTime, FixedOffset};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Configuration: --config FILE, else $BACKUPCTL_CONFIG, else ./backupctl.toml, else
/etc/backupctl/backupctl.toml. Policies are the *.toml files in policies/ beside it.

Exit codes:
  0  success
  1  the operation failed (integrity problems found included)
  2  usage or configuration error
  3  partial: done on some targets but not all, or some source files could not
     be read (run status incomplete)
With several policies the worst code wins: 2, then 1, then 3.

Examples:
  backupctl init                           prepare every target (once, after mounting)
  backupctl check                          validate config, probe every target
  backupctl run                            back up every policy now
  backupctl run shop --dry-run             show what would be backed up
  backupctl list shop                      snapshots and where each is complete
  backupctl restore shop --to /srv/restore latest snapshot of every source
  backupctl restore shop --source shopdb --into-database shop_restored
                                           load a database dump into its server
  backupctl verify --all                   re-hash and test-restore everything
  backupctl drill --report drill.html      restore from every target, timed; an HTML report
  backupctl sync                           copy snapshots a target lacks from the others
  backupctl prune --dry-run                which snapshots retention keeps, and why
  backupctl run --due --prune              for cron: run what is due, then prune
  backupctl schedule                       next run times and last results
  backupctl daemon                         run the schedules in one long-running process
  backupctl notify test                    send a test event to every notifier
  backupctl run --due --metrics-file /var/lib/node_exporter/textfile_collector/backupctl.prom
                                           ... and write Prometheus metrics
  backupctl schedule --systemd             systemd units for the daemon or a 5-minute timer
  backupctl completions bash               shell completions (bash, zsh, fish)";

#[derive(Debug, Parser)]
#[command(
    name = "backupctl",
    version,
    about = "Backups that exist in several places and are known to restore",
    long_about = "backupctl backs up file trees and databases into plain, content-hashed .tar.zst \
archives, pushes each snapshot to several storage targets, verifies that what the targets \
hold restores, and restores from whichever target still answers.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BACKUPCTL_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// For cron: print nothing at all when everything succeeded; on a failure
    /// or a partial result, only a short summary of what failed and what to do.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More output (repeat for more).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Also trust snapshots signed by this public key for this run
    /// (`ed25519:...`, as `backupctl key fingerprint` prints it; repeatable).
    /// For a disaster restore on a machine whose config does not pin the key yet.
    #[arg(long, global = true, value_name = "KEY")]
    pub trust: Vec<String>,
    /// Log records as plain text lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Append log records to this file instead of writing them to stderr
    /// (results and summaries still go to stdout). The file gets level info
    /// and above even with -q, so it keeps every policy's summary line.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and every policy; probe each target (write, read back, delete).
    Check(CheckArgs),
    /// Make targets ready for backups: create a directory target's root and its marker file.
    ///
    /// A directory target is used only once `init` has written
    /// backupctl-target.json at its root, so an unmounted disk or share (whose
    /// empty mount point is still there) is reported as unreachable instead of
    /// silently filling the local disk. S3 targets get the marker under their
    /// prefix (the bucket must exist). Targets already initialised are left as
    /// they are; a non-empty directory without backupctl data is refused.
    Init(InitArgs),
    /// The host signing key: every snapshot manifest is signed with it, and
    /// only snapshots signed by a trusted key are listed, restored, copied or
    /// pruned.
    ///
    /// Without `key_file` in backupctl.toml the first run creates a key under
    /// the state directory. Machines that restore pin its public half with
    /// `trusted_keys = ["ed25519:..."]` (what `key fingerprint` prints).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Back up now: every policy, or the ones named.
    ///
    /// Each source becomes one .tar.zst archive named by its BLAKE3 hash; the
    /// archive is pushed to every target of the policy, and the snapshot manifest
    /// is written last, so an interrupted run leaves no visible snapshot.
    /// An unchanged source produces the same archive, which is not stored again.
    Run(RunArgs),
    /// List snapshots, with the targets on which each is complete.
    List(ListArgs),
    /// Restore a snapshot into a directory (each source under DIR/<source>/).
    ///
    /// Targets are tried in the policy's order; a target that is unreachable,
    /// lacks the snapshot or serves damaged bytes is skipped with a warning.
    Restore(RestoreArgs),
    /// Prove integrity: re-hash archives on every target and test-restore them into a scratch area.
    Verify(VerifyArgs),
    /// Recovery drill: restore each target's newest snapshot into the scratch
    /// area, timed (RTO) and aged (RPO); optionally a Markdown or HTML report.
    ///
    /// Files are compared with their hashes and database dumps loaded into
    /// scratch databases with their row counts checked, from each target
    /// alone. The results are kept in the policy's state (`schedule` shows
    /// them). Exit 1 if a restore failed, 3 if a target was unreachable or
    /// held no snapshot.
    Drill(DrillArgs),
    /// Apply the retention rules: forget old snapshots, then delete unreferenced archives.
    ///
    /// The decision (which snapshots to keep, and why) is taken over the
    /// snapshots of every reachable target; each target is then pruned on its
    /// own: first the manifests of forgotten snapshots, then the archives no
    /// remaining snapshot references. A target that cannot be listed is left
    /// untouched (exit 3). The newest snapshot is never removed.
    Prune(PruneArgs),
    /// Show each policy's schedules: next run times, whether due, last result.
    Schedule(ScheduleArgs),
    /// Run the policies' schedules in a long-running process (for systemd).
    ///
    /// Each decision is logged on one line. Missed occurrences are caught up
    /// once at start. SIGTERM/SIGINT aborts the current run cleanly (no partial
    /// snapshot becomes visible) and exits 0.
    Daemon(DaemonArgs),
    /// Copy every snapshot a target lacks (or holds incomplete) from a target where it is complete.
    ///
    /// Archives are downloaded once, checked against their BLAKE3 name, uploaded to
    /// each target that needs them; the manifest is written last. Incomplete S3
    /// multipart uploads left by a crash or an outage are aborted first.
    Sync(SyncArgs),
    /// Notifications: `notify test` sends a test event to every notifier.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Print a shell completion script (bash, zsh, fish, ...).
    ///
    /// bash: `backupctl completions bash > /etc/bash_completion.d/backupctl`;
    /// zsh: into a directory of $fpath as `_backupctl`; fish:
    /// `~/.config/fish/completions/backupctl.fish`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write every page into a directory.
    Man(ManArgs),
}

/// The log record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--metrics-file` (run, verify, prune, sync, daemon).
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Afterwards, write Prometheus metrics for every policy to this file
    /// (textfile-collector format, replaced atomically), e.g.
    /// /var/lib/node_exporter/textfile_collector/backupctl.prom.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test event to every notifier: the global ones, and those of
    /// POLICY (default: of every policy). Exit 1 if any failed.
    Test(NotifyTestArgs),
}

#[derive(Debug, Args)]
pub struct NotifyTestArgs {
    /// Only the global notifiers and this policy's.
    pub policy: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write backupctl.1 and one page per command (backupctl-run.1, ...)
    /// into this directory instead of printing backupctl.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `--wait [DURATION]`: no value waits as long as it takes.
const WAIT_HELP: &str = "If the policy is locked by another run, prune or sync, wait for it: \
up to DURATION (e.g. 30m, 2h), or as long as it takes without a value. Default: fail at once (exit 1)";

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Policies to prune (default: all).
    pub policies: Vec<String>,
    /// Show what would be kept and deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever",
          value_parser = parse_wait, help = WAIT_HELP)]
    pub wait: Option<Duration>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Print systemd units instead: backupctl.service (the daemon), or
    /// backupctl-run.service/.timer (`-q run --due --prune` every 5 minutes)
    /// and backupctl-verify.service/.timer (`-q verify --due` hourly).
    #[arg(long, conflicts_with = "json")]
    pub systemd: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Do not prune after each complete run.
    #[arg(long)]
    pub no_prune: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a new signing key (mode 0600); never overwrites an existing one.
    Init(KeyArgs),
    /// Print the public key to pin in `trusted_keys` on restoring machines.
    Fingerprint(KeyArgs),
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key file (default: `key_file` of the configuration, else
    /// <state_dir>/keys/host.key).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Targets to initialise (default: every target in backupctl.toml).
    pub targets: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policies to run (default: all).
    pub policies: Vec<String>,
    /// Record the snapshot as taken at this instant (RFC 3339, offset kept), e.g. 2026-01-31T02:30:00+01:00.
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub time: Option<DateTime<FixedOffset>>,
    /// Show what would be backed up, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only the policies whose schedule had an occurrence since their last
    /// success (a cron line every few minutes catches up once after downtime).
    #[arg(long, conflicts_with = "time")]
    pub due: bool,
    /// Prune each policy after a complete run.
    #[arg(long)]
    pub prune: bool,
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever",
          value_parser = parse_wait, help = WAIT_HELP)]
    pub wait: Option<Duration>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Policies to list (default: all).
    pub policies: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub policy: String,
    /// Snapshot id (or a unique prefix); default: the latest.
    pub snapshot: Option<String>,
    /// Destination directory; must be empty unless --force.
    #[arg(long, value_name = "DIR", required_unless_present = "into_database")]
    pub to: Option<PathBuf>,
    /// Load a database source's dump into this database on the source's
    /// configured server (needs --source); a non-empty database is refused
    /// unless --force, which replaces it.
    #[arg(long, value_name = "DBNAME", conflicts_with_all = ["to", "include"], requires = "source")]
    pub into_database: Option<String>,
    /// With --into-database: which dump of a multi-database source to load
    /// (default: the only one, or the one named DBNAME).
    #[arg(long, value_name = "NAME", requires = "into_database")]
    pub database: Option<String>,
    /// Only this source.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Only this target (no failover).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Only paths matching this glob (relative to the source root; repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Restore into a non-empty directory (an existing DIR/<source> is moved aside, not deleted);
    /// with --into-database: replace a non-empty database.
    #[arg(long)]
    pub force: bool,
    /// Do not restore ownership (even as root): files belong to the user
    /// running the restore, and setuid/setgid bits are dropped (always the
    /// case when not running as root).
    #[arg(long)]
    pub no_same_owner: bool,
    /// Deprecated, no effect: symbolic links are always restored as they
    /// were, wherever they point, and never followed while restoring.
    #[arg(long)]
    pub allow_external_links: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Policies to verify (default: all).
    pub policies: Vec<String>,
    /// Every snapshot.
    #[arg(long, conflicts_with = "sample")]
    pub all: bool,
    /// This many snapshots: the newest, then the least recently verified (default: [verify] sample).
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Only this target.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Only the policies whose `[verify] schedule` had an occurrence since
    /// their last successful verification.
    #[arg(long)]
    pub due: bool,
    /// Also read every pack on every target and check it against its
    /// content hash (like `restic check --read-data`): finds damage in data
    /// no sampled snapshot happens to use. Costs a full download.
    #[arg(long)]
    pub read_all: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    if s == "forever" {
        // "As long as it takes", without overflowing Instant arithmetic.
        return Ok(Duration::from_secs(100 * 365 * 24 * 3600));
    }
    backupctl::schedule::parse_duration(s, "--wait duration")
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Policies to sync (default: all).
    pub policies: Vec<String>,
    /// Show what would be copied, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Clean up incomplete uploads (S3 multipart uploads, temporaries on
    /// directory targets) started longer ago than this (e.g. 24h, 30m, 7d, 0s).
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = backupctl::ops::sync::parse_age)]
    pub abort_uploads_older_than: std::time::Duration,
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever",
          value_parser = parse_wait, help = WAIT_HELP)]
    pub wait: Option<Duration>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

fn parse_time(s: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-31T02:30:00+01:00: {e}"))
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Policies to drill (default: all).
    pub policies: Vec<String>,
    /// Only this target.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Also write a report: Markdown (FILE ends in .md) or a self-contained
    /// HTML page (.html) with charts and the commands to restore by hand.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}
