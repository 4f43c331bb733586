//! Small shared helpers: random ids, host name, human-readable sizes, private
//! files and directories (everything backupctl creates is 0600/0700), and
//! the debug-only [`test_hook`].

use std::sync::atomic::{AtomicU64, Ordering};

/// `n` random hex characters (from the OS, with a time/pid/counter fallback).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !ok {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = blake3::Hasher::new();
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        let len = bytes.len();
        bytes.copy_from_slice(&h.finalize().as_bytes()[..len]);
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    s
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// True when running as root (ownership is recorded and restored).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Create `dir` and its missing parents with mode 0700 (whatever the umask);
/// directories that exist are left as they are.
pub fn create_private_dir_all(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Make `dir` a directory only this user can enter: created with its missing
/// parents at 0700 whatever the umask, or, when it exists, tightened to 0700
/// if group or others have any access (with a warning; a symbolic link is
/// followed). A directory owned by another user is refused
/// (`PermissionDenied`, saying what to do): its owner could change what
/// backupctl writes or locks there. Used for the state directory and
/// everything backupctl keeps in it (locks, history, staging, scratch).
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    create_private_dir_all(dir)?;
    let m = std::fs::metadata(dir)?;
    if !m.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by uid {euid} that backupctl runs as; refusing to \
                 keep state there (its owner could read or swap it): chown it to uid {euid} \
                 or choose another state_dir/scratch_dir",
                dir.display(),
                m.uid()
            ),
        ));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "{} was accessible to other users (mode {:o}); made it private (0700)",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Create (truncate) a file readable and writable by its owner only (0600).
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Test hook, in debug builds only (the body is compiled out of release
/// builds, so nothing can trigger it there): when `BACKUPCTL_TEST_HOOK` is
/// set, run it with `sh -c`, the hook point as `$1` and `args` as `$2`...,
/// and wait for it. Points: `before-open` (`$2` the path, `$3` the path
/// relative to the source root; after the tree walk saw the entry, before it
/// is opened) and `sqlite-copy` (`$2` the staged copy, once it is complete).
/// Integration tests use it to change things at exactly that point.
#[inline]
pub fn test_hook(point: &str, args: &[&std::ffi::OsStr]) {
    #[cfg(debug_assertions)]
    if let Some(cmd) = std::env::var_os("BACKUPCTL_TEST_HOOK") {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg("backupctl-test-hook")
            .arg(point)
            .args(args)
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            tracing::warn!("test hook at {point}: {status:?}");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (point, args);
}

/// "2026-11-22T02:30:00.123456789+01:00" -> "2026-11-22 02:30:00+01:00":
/// times for people, to the second (JSON keeps full precision).
pub fn short_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%:z").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// `s` with control characters (and bidirectional overrides) escaped, for
/// printing names that come from a target or a source tree: a hostile name
/// cannot rewrite the terminal or forge log lines.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
