//! Shared helpers for the integration tests (which drive the real binary).
#![allow(dead_code)]

// ---------------------------------------------------------------------------
// Retention / scheduling / locking helpers (issue 5).
// ---------------------------------------------------------------------------

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A target under test: how the config names it, and an independent view of
/// what it holds (never through backupctl).
pub trait TestTarget {
    /// The `[targets.NAME]` name.
    fn name(&self) -> &str;
    /// The TOML table defining it in backupctl.toml.
    fn config_snippet(&self) -> String;
    /// Every key stored under the target's root, listed independently.
    fn keys(&self) -> BTreeSet<String>;
    /// Make the target unreachable (`true`) or bring it back (`false`).
    fn set_down(&self, down: bool);
    /// Store an object directly (to plant orphans or damaged manifests).
    fn put(&self, key: &str, data: &[u8]);
}

/// A local directory target whose root sits one level below a "mount" dir,
/// so taking the mount away makes the target unavailable (not just empty).
pub struct FsTestTarget {
    pub name: String,
    pub mount: PathBuf,
    pub root: PathBuf,
}

impl FsTestTarget {
    pub fn new(base: &Path, name: &str) -> FsTestTarget {
        let mount = base.join(format!("mnt-{name}"));
        std::fs::create_dir_all(&mount).unwrap();
        let root = mount.join("backups");
        // Initialised, as `backupctl init` leaves it: taking the mount away
        // then makes the target unavailable.
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("backupctl-target.json"), "{}\n").unwrap();
        FsTestTarget {
            name: name.to_string(),
            mount,
            root,
        }
    }
}

impl TestTarget for FsTestTarget {
    fn name(&self) -> &str {
        &self.name
    }
    fn config_snippet(&self) -> String {
        format!(
            "[targets.{}]\ntype = \"fs\"\npath = {:?}\nlocation = \"loc-{}\"\n",
            self.name,
            self.root.display().to_string(),
            self.name
        )
    }
    fn keys(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if !self.root.exists() {
            return out;
        }
        for e in walkdir::WalkDir::new(&self.root) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                out.insert(
                    e.path()
                        .strip_prefix(&self.root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        out
    }
    fn put(&self, key: &str, data: &[u8]) {
        let p = self.root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    fn set_down(&self, down: bool) {
        let off = self.mount.with_extension("off");
        if down {
            std::fs::rename(&self.mount, &off).unwrap();
        } else {
            std::fs::rename(&off, &self.mount).unwrap();
        }
    }
}

/// A test setup: a temp dir with backupctl.toml, policies/, a state dir and
/// a source tree.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub source: PathBuf,
    /// Variables every command gets (a target's credentials).
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// A fresh directory; call [`Setup::write_config`] next.
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("backupctl-sched-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("backupctl.toml");
        let state = dir.path().join("state");
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        Setup {
            dir,
            config,
            state,
            source,
            env: Vec::new(),
        }
    }

    /// Write backupctl.toml with these target definitions.
    pub fn write_config(&self, target_snippets: &[String]) {
        let mut text = format!("state_dir = {:?}\n\n", self.state.display().to_string());
        for s in target_snippets {
            text.push_str(s);
            text.push('\n');
        }
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `policies/<name>.toml` with the given body plus a files source
    /// named "site" over `self.source`.
    pub fn policy(&self, name: &str, body: &str) {
        let text = format!(
            "{body}\n\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = {:?}\n",
            self.source.display().to_string()
        );
        std::fs::write(
            self.path().join("policies").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    /// The binary with this config and [`Setup::env`]; TZ pinned to UTC.
    pub fn cmd(&self) -> Command {
        let mut c = crate::common::bin();
        c.arg("--config")
            .arg(&self.config)
            .env("TZ", "UTC")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Run with arguments; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run with the clock pinned at `now`.
    pub fn run_at(&self, now: &str, args: &[&str]) -> Output {
        self.cmd()
            .env("BACKUPCTL_NOW", now)
            .args(args)
            .output()
            .unwrap()
    }

    /// Write a file into the source tree.
    pub fn write_source(&self, rel: &str, content: &[u8]) {
        let p = self.source.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// Panics with stdout/stderr unless the exit code is `code`.
pub fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Snapshot ids of `policy` in a key listing.
pub fn snapshot_ids(keys: &BTreeSet<String>, policy: &str) -> BTreeSet<String> {
    let prefix = format!("{policy}/snapshots/");
    keys.iter()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json"))
        .map(str::to_string)
        .collect()
}

/// Archive hashes of `policy` in a key listing (the `.tar.zst` files).
pub fn archive_hashes(keys: &BTreeSet<String>, policy: &str) -> BTreeSet<String> {
    let prefix = format!("{policy}/archives/");
    keys.iter()
        .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".tar.zst"))
        .map(str::to_string)
        .collect()
}

/// Send a signal to a child process.
pub fn signal(pid: u32, sig: i32) {
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Poll `f` every 5 ms until it returns Some, or panic after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Incompressible bytes (for a source that takes seconds at zstd level 19).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64);
    for chunk in v.chunks_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

/// Start backupctl with `args` (output discarded) and `kill -9` it after
/// `delay_ms` milliseconds.
pub fn kill_after(s: &Setup, args: &[&str], delay_ms: u64) {
    let mut child = s
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
}
