//! Per-policy cross-process lock on `<state_dir>/locks/<name>.lock`.
//!
//! Exclusion is an advisory whole-file lock (`File::try_lock`, i.e. `flock`
//! on Unix): the kernel releases it when the holder exits or dies, so a lock
//! can never stay stuck. The file also carries a small JSON record of the
//! holder (pid, host, start time, operation) so a refused caller can say who
//! holds the lock, and so a new holder can notice that the previous one died
//! without cleaning up ([`Lock::took_over_from`]). Dropping a [`Lock`] empties
//! the record and releases the lock. The file itself is never deleted:
//! unlinking a flock'ed file lets two processes lock two different inodes.
//!
//! Only the user backupctl runs as can open the lock file (and so `flock` it
//! to block runs): it is 0600 in a 0700 `locks/` directory of a 0700 state
//! directory. Looser modes left by older versions are tightened; a state
//! directory, `locks/` or lock file owned by another user is refused.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Local, SecondsFormat, SubsecRound};
use serde::{Deserialize, Serialize};

/// How often [`Lock::acquire`] retries while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Who holds (or held) a lock: the record stored in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub pid: u32,
    pub host: String,
    /// When the holder acquired the lock (RFC 3339 in the record).
    pub since: DateTime<FixedOffset>,
    /// The operation it runs: "run", "prune", "sync", ...
    pub op: String,
}

impl HolderInfo {
    /// A record for this process, now (whole seconds, as stored).
    pub fn current(op: &str) -> HolderInfo {
        HolderInfo {
            pid: std::process::id(),
            host: host_name(),
            since: Local::now().fixed_offset().trunc_subsecs(0),
            op: op.to_string(),
        }
    }

    /// The record as one line of JSON:
    /// `{"pid":1,"host":"h","since":"2024-05-01T03:00:00+02:00","op":"run"}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a HolderInfo always serializes")
    }

    /// Parses a record written by [`HolderInfo::to_json`] (unknown keys are
    /// ignored). `None` if the text is not such a record.
    pub fn from_json(text: &str) -> Option<HolderInfo> {
        serde_json::from_str(text.trim()).ok()
    }
}

impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on host {:?} (operation {:?}) since {}",
            self.pid,
            self.host,
            self.op,
            self.since.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// Errors from [`Lock::acquire`].
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder (possibly in this same process) has the lock. `holder`
    /// is `None` when its record could not be read (e.g. not written yet).
    #[error("{name:?} is locked by {} (lock file {})", describe(holder), path.display())]
    Held {
        name: String,
        path: PathBuf,
        holder: Option<HolderInfo>,
    },
    #[error(
        "invalid lock name {0:?}: expected a non-empty name of letters, digits, '-', '_' or '.', \
         not starting with '.'"
    )]
    InvalidName(String),
    #[error("lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe(holder: &Option<HolderInfo>) -> String {
    match holder {
        Some(h) => h.to_string(),
        None => "another process (no holder record)".to_string(),
    }
}

/// A held lock; dropping it empties the holder record and releases the lock.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    /// This holder's record, as written to the lock file.
    pub holder: HolderInfo,
    /// Set when the lock file still held another holder's record although
    /// nobody held the lock: that holder died without releasing it. The
    /// caller should log a warning (its operation may have been cut short).
    pub took_over_from: Option<HolderInfo>,
}

impl Lock {
    /// Acquires the lock `<state_dir>/locks/<name>.lock` for operation `op`
    /// ("run", "prune", "sync"), creating the directory if needed.
    ///
    /// If a live holder has it: with `wait == None` returns
    /// [`LockError::Held`] at once; otherwise retries until `wait` has
    /// elapsed, then returns the same error.
    pub fn acquire(
        state_dir: &Path,
        name: &str,
        op: &str,
        wait: Option<Duration>,
    ) -> Result<Lock, LockError> {
        validate_name(name)?;
        let dir = state_dir.join("locks");
        let path = dir.join(format!("{name}.lock"));
        let io_err = |source: io::Error| LockError::Io {
            path: path.clone(),
            source,
        };
        crate::util::private_dir(state_dir)
            .and_then(|_| crate::util::private_dir(&dir))
            .map_err(|source| LockError::Io {
                path: dir.clone(),
                source,
            })?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err)?;
        make_private(&file).map_err(io_err)?;

        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
                Err(TryLockError::WouldBlock) => {
                    let now = Instant::now();
                    match deadline {
                        Some(deadline) if now < deadline => {
                            thread::sleep(POLL_INTERVAL.min(deadline - now));
                        }
                        _ => {
                            return Err(LockError::Held {
                                name: name.to_string(),
                                path: path.clone(),
                                holder: read_holder_with_retry(&mut file),
                            });
                        }
                    }
                }
            }
        }

        // We hold the lock: a leftover record means its writer died.
        let took_over_from = read_record(&mut file)
            .ok()
            .and_then(|t| HolderInfo::from_json(&t));
        let holder = HolderInfo::current(op);
        write_record(&mut file, &holder.to_json()).map_err(io_err)?;
        Ok(Lock {
            file,
            path,
            holder,
            took_over_from,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Empty the record first, while still holding the lock; closing the
        // file (dropping it) would release the lock anyway.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The lock file must be this user's; group/other access (left by older
/// versions) is removed.
fn make_private(file: &File) -> io::Result<()> {
    let m = file.metadata()?;
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "owned by uid {}, not by uid {euid} that backupctl runs as: another user could \
                 hold it to block every run; remove it",
                m.uid()
            ),
        ));
    }
    if m.mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), LockError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(LockError::InvalidName(name.to_string()))
    }
}

fn read_record(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

fn write_record(file: &mut File, text: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.flush()
}

/// Reads the current holder's record; retries briefly because a new holder
/// truncates the file before writing its record.
fn read_holder_with_retry(file: &mut File) -> Option<HolderInfo> {
    for attempt in 0..5 {
        if attempt > 0 {
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(h) = read_record(file)
            .ok()
            .and_then(|t| HolderInfo::from_json(&t))
        {
            return Some(h);
        }
    }
    None
}

/// This machine's host name, from the kernel, else `$HOSTNAME`.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "backupctl-lock-test-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn lock_path(dir: &TestDir, name: &str) -> PathBuf {
        dir.0.join("locks").join(format!("{name}.lock"))
    }

    #[test]
    fn acquire_writes_record_and_drop_releases_and_empties_it() {
        let dir = TestDir::new("basic");
        let lock = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        assert_eq!(lock.path(), lock_path(&dir, "home"));
        assert!(lock.took_over_from.is_none());
        assert_eq!(lock.holder.pid, std::process::id());
        assert_eq!(lock.holder.op, "run");
        assert!(!lock.holder.host.is_empty());

        let text = fs::read_to_string(lock.path()).unwrap();
        // The record is real JSON and round-trips.
        let via_serde: HolderInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(via_serde, lock.holder);
        assert_eq!(HolderInfo::from_json(&text), Some(lock.holder.clone()));

        drop(lock);
        let path = lock_path(&dir, "home");
        assert!(path.exists(), "the lock file is kept");
        assert_eq!(fs::read_to_string(&path).unwrap(), "");

        // Re-acquire: no takeover after a clean release.
        let again = Lock::acquire(&dir.0, "home", "prune", None).unwrap();
        assert!(again.took_over_from.is_none());
        assert_eq!(again.holder.op, "prune");
    }

    #[test]
    fn second_acquire_in_same_process_is_refused_with_holder_info() {
        let dir = TestDir::new("held");
        let first = Lock::acquire(&dir.0, "home", "sync", None).unwrap();
        let err = Lock::acquire(&dir.0, "home", "run", None).unwrap_err();
        match &err {
            LockError::Held { name, path, holder } => {
                assert_eq!(name, "home");
                assert_eq!(path, first.path());
                assert_eq!(holder.as_ref(), Some(&first.holder));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let msg = err.to_string();
        for part in [
            format!("pid {}", std::process::id()),
            format!("host {:?}", first.holder.host),
            "operation \"sync\"".to_string(),
            format!(
                "since {}",
                first
                    .holder
                    .since
                    .to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        ] {
            assert!(msg.contains(&part), "{msg:?} should contain {part:?}");
        }
        // The refused attempt did not disturb the holder's record.
        let text = fs::read_to_string(first.path()).unwrap();
        assert_eq!(HolderInfo::from_json(&text), Some(first.holder.clone()));
        // Other names are independent.
        assert!(Lock::acquire(&dir.0, "other", "run", None).is_ok());
    }

    #[test]
    fn stale_record_without_flock_is_taken_over() {
        let dir = TestDir::new("stale");
        fs::create_dir_all(dir.0.join("locks")).unwrap();
        let dead = HolderInfo {
            pid: 999_999,
            host: "old-host".to_string(),
            since: DateTime::parse_from_rfc3339("2024-05-01T03:00:00+02:00").unwrap(),
            op: "prune".to_string(),
        };
        fs::write(lock_path(&dir, "home"), dead.to_json() + "\n").unwrap();

        let lock = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        assert_eq!(lock.took_over_from, Some(dead));
        let text = fs::read_to_string(lock.path()).unwrap();
        assert_eq!(HolderInfo::from_json(&text), Some(lock.holder.clone()));
    }

    #[test]
    fn garbage_record_is_not_reported_as_takeover() {
        let dir = TestDir::new("garbage");
        fs::create_dir_all(dir.0.join("locks")).unwrap();
        fs::write(lock_path(&dir, "home"), "not json at all, longer than the new record will be ......................................................").unwrap();
        let lock = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        assert!(lock.took_over_from.is_none());
        // The old content is fully replaced, not overwritten in place.
        let text = fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text, lock.holder.to_json() + "\n");
    }

    #[test]
    fn held_without_record_reports_unknown_holder() {
        let dir = TestDir::new("norecord");
        fs::create_dir_all(dir.0.join("locks")).unwrap();
        let raw = File::create(lock_path(&dir, "home")).unwrap();
        raw.try_lock().unwrap();
        let err = Lock::acquire(&dir.0, "home", "run", None).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { holder: None, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no holder record"), "{err}");
    }

    #[test]
    fn wait_times_out_with_held() {
        let dir = TestDir::new("timeout");
        let _first = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        let start = Instant::now();
        let err =
            Lock::acquire(&dir.0, "home", "prune", Some(Duration::from_millis(300))).unwrap_err();
        let waited = start.elapsed();
        assert!(
            matches!(
                err,
                LockError::Held {
                    holder: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[test]
    fn wait_succeeds_when_holder_releases() {
        let dir = TestDir::new("wait");
        let first = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let start = Instant::now();
        let lock = Lock::acquire(&dir.0, "home", "sync", Some(Duration::from_secs(10))).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(lock.took_over_from.is_none());
        releaser.join().unwrap();
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = TestDir::new("names");
        for bad in ["", ".hidden", "a/b", "..", "sp ace", "ünï"] {
            let err = Lock::acquire(&dir.0, bad, "run", None).unwrap_err();
            assert!(matches!(err, LockError::InvalidName(_)), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("expected a non-empty name"));
        }
        assert!(Lock::acquire(&dir.0, "Home-2.daily_x", "run", None).is_ok());
    }

    #[test]
    fn io_error_names_the_path() {
        let dir = TestDir::new("io");
        // "locks" exists as a file, so the directory cannot be created.
        fs::write(dir.0.join("locks"), "").unwrap();
        let err = Lock::acquire(&dir.0, "home", "run", None).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("locks"), "{err}");
    }

    #[test]
    fn lock_files_are_private_and_looser_modes_are_tightened() {
        let dir = TestDir::new("modes");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        // Left by an older version: world-readable state, locks and lock file.
        fs::create_dir_all(dir.0.join("locks")).unwrap();
        fs::write(lock_path(&dir, "home"), "").unwrap();
        for (p, m) in [
            (dir.0.clone(), 0o755),
            (dir.0.join("locks"), 0o777),
            (lock_path(&dir, "home"), 0o666),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        let lock = Lock::acquire(&dir.0, "home", "run", None).unwrap();
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&dir.0.join("locks")), 0o700);
        assert_eq!(mode(lock.path()), 0o600);
        let other = Lock::acquire(&dir.0, "new", "run", None).unwrap();
        assert_eq!(mode(other.path()), 0o600);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = TestDir::new("symlink");
        fs::create_dir_all(dir.0.join("locks")).unwrap();
        let elsewhere = dir.0.join("elsewhere");
        fs::write(&elsewhere, "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, lock_path(&dir, "home")).unwrap();
        let err = Lock::acquire(&dir.0, "home", "run", None).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "keep");
    }

    #[test]
    fn json_record_round_trips() {
        let info = HolderInfo {
            pid: 42,
            host: "we\"ird\\host\n\u{1}é".to_string(),
            since: DateTime::parse_from_rfc3339("2024-12-31T23:30:00-05:00").unwrap(),
            op: "run".to_string(),
        };
        let text = info.to_json();
        assert!(!text.contains('\n'), "one line: {text}");
        assert_eq!(HolderInfo::from_json(&text), Some(info.clone()));
        let fixed = HolderInfo {
            host: "h".to_string(),
            ..info
        };
        assert_eq!(
            fixed.to_json(),
            r#"{"pid":42,"host":"h","since":"2024-12-31T23:30:00-05:00","op":"run"}"#
        );
        // Other key orders and unknown keys are fine.
        let extra = r#" {"op":"prune","v":2,"pid":7,"host":"h","since":"2024-01-01T00:00:00Z"} "#;
        assert_eq!(HolderInfo::from_json(extra).map(|h| h.pid), Some(7));
        for bad in [
            "",
            "{}",
            "{",
            "[]",
            r#"{"pid":-1,"host":"h","since":"2024-01-01T00:00:00Z","op":"r"}"#,
        ] {
            assert_eq!(HolderInfo::from_json(bad), None, "{bad:?}");
        }
    }
}
