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
  backupctl ls shop latest site/public     a snapshot's files, without restoring
  backupctl dump shop latest site/app.conf > app.conf
                                           one file, verified, to stdout
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
    /// Is every policy backed up, fresh, on every target and verified? (exit 1 if not)
    Status(StatusArgs),
    /// List a snapshot's files (from its file index; nothing is restored).
    Ls(LsArgs),
    /// Find paths matching a pattern across all snapshots: where a file existed, and when.
    Find(FindArgs),
    /// Compare two snapshots: files added, removed and changed, with sizes.
    Diff(DiffArgs),
    /// Write one file of a snapshot to stdout, verified against its recorded hash.
    Dump(DumpArgs),
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

// ---------------------------------------------------------------------------
// Browsing a snapshot: ls, find, diff, dump (src/ops/browse.rs)
// ---------------------------------------------------------------------------

const STATUS_HELP: &str = "\
Per policy: the newest complete snapshot and its age against the schedule (stale
beyond 1.5 intervals, or the policy's `max_age`), each target (reachable, holds the
newest snapshot, restore points, bytes stored), the last run and verification, and
the 3-2-1 assessment. Policies found on `[fleet] targets` are shown as TARGET/POLICY.

Exit codes: 0 healthy; 1 anything stale, failed, missing on a target, or unverified
beyond `[verify] max_age`; 2 configuration error. With --nagios: one line in the
Nagios plugin format and its codes (0 OK, 1 WARNING: 3-2-1 only, 2 CRITICAL).

Examples:
  backupctl status                       every policy (and every fleet target's)
  backupctl status shop --json           one policy, machine-readable
  backupctl status --nagios              for check_by_ssh / NRPE / Icinga
";

const LS_HELP: &str = "\
Paths are SOURCE/relative/path: a snapshot holds one tree per source of the policy
(`backupctl list POLICY --json` names them), and SOURCE alone is that source's root.
SNAPSHOT is an id (or a unique prefix of one) or `latest`. With one argument after
POLICY, it is the SNAPSHOT if it is `latest` or names a snapshot, else a PATH in the
latest snapshot. Directories end in `/`. Only the file index is read.

Examples:
  backupctl ls shop                              every file of the latest snapshot
  backupctl ls shop site/public                  one directory (recursively), latest snapshot
  backupctl ls shop 20260131T023000Z-1a2b --long  modes, owners, sizes and mtimes
  backupctl ls shop latest site --json           one source, machine-readable

Exit codes: 0 listed; 1 no reachable target, or no target serves the index intact;
2 unknown policy, snapshot, source or path.";

const FIND_HELP: &str = "\
PATTERN is a glob (`*`, `?`, `[abc]`, `**`). Without a `/` it matches the last
component of each path (like `find -name`); with one, the whole SOURCE/relative/path,
where `*` stays within one component and `**` crosses them. Every snapshot's file
index is read (each distinct index once); no archive is downloaded.

Examples:
  backupctl find shop 'invoice-*.pdf'            every snapshot holding such a file
  backupctl find shop 'site/uploads/**/*.jpg'    by full path
  backupctl find shop config.php --json          machine-readable

Exit codes: 0 searched (with or without matches); 1 no reachable target; 2 unknown
policy or invalid pattern; 3 some snapshots could not be searched (named).";

const DIFF_HELP: &str = "\
Compares the file indexes of two snapshots (no archive is downloaded). An entry is
changed when its type, content (BLAKE3), size, mode, owner, link target or mtime
differs; a directory's mtime alone is not a change (it moves whenever an entry is
added or removed, which is reported itself). Lines start with + (added),
- (removed) or M (changed, with what changed). Differences do not change the exit
code.

Examples:
  backupctl diff shop 20260130T023000Z-9f8e latest
  backupctl diff shop 20260130 20260131 --json   unique id prefixes

Exit codes: 0 compared; 1 no reachable target, or no target serves an index intact;
2 unknown policy or snapshot.";

const DUMP_HELP: &str = "\
Writes exactly the file's bytes to stdout, nothing else (messages go to stderr).
The source's tar stream is read through the pack reader (every chunk checked, each
extent failing over to the next target) up to the end of that one file, and the
file's BLAKE3 is checked against the snapshot's file index: a file up to 16 MiB is
checked before anything is written; a larger one is streamed, and a mismatch found
at its end still exits 1, saying the output must be discarded.

Examples:
  backupctl dump shop latest site/config/settings.php > settings.php
  backupctl dump shop 20260131T023000Z-1a2b shopdb/shop.sql | less

Exit codes: 0 written and verified; 1 no reachable target, no target serves it intact,
or its bytes do not match the index (the output is then not the file); 2 unknown
policy, snapshot, source or path, or PATH is not a regular file.";

#[derive(Debug, Args)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    /// Policies (or TARGET/POLICY of a fleet target) to report (default: all).
    pub policies: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// One line in the Nagios plugin format, with its exit codes.
    #[arg(long, conflicts_with = "json")]
    pub nagios: bool,
}

#[derive(Debug, Args)]
#[command(after_help = LS_HELP)]
pub struct LsArgs {
    /// The policy's name (policies/NAME.toml).
    pub policy: String,
    /// Snapshot id (or a unique prefix), or `latest` (the default).
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    /// SOURCE or SOURCE/relative/path: list only it and what is beneath it.
    #[arg(value_name = "PATH")]
    pub path: Option<String>,
    /// Also show type and mode, owner (uid:gid), size in bytes and mtime.
    #[arg(long, short = 'l')]
    pub long: bool,
    /// Machine-readable output (the entries with every field).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = FIND_HELP)]
pub struct FindArgs {
    /// The policy's name (policies/NAME.toml).
    pub policy: String,
    /// Glob matched against each path's last component, or (with a `/`)
    /// against the whole SOURCE/relative/path.
    pub pattern: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = DIFF_HELP)]
pub struct DiffArgs {
    /// The policy's name (policies/NAME.toml).
    pub policy: String,
    /// The older snapshot (id, unique prefix, or `latest`).
    #[arg(value_name = "SNAP1")]
    pub from: String,
    /// The newer snapshot.
    #[arg(value_name = "SNAP2")]
    pub to: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = DUMP_HELP)]
pub struct DumpArgs {
    /// The policy's name (policies/NAME.toml).
    pub policy: String,
    /// Snapshot id (or a unique prefix), or `latest`.
    pub snapshot: String,
    /// SOURCE/relative/path of a regular file.
    pub path: String,
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
