//! Unattended operation, driving the binary: `run --due` / `verify --due`
//! catch-up with an injected clock (`BACKUPCTL_NOW`), `schedule --json`, the
//! policy lock between real processes (contention, waiting, a stale lock left
//! by a killed process), and the daemon (a run, and SIGTERM mid-run).

use crate::sched_common;

use sched_common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Kills the child (SIGKILL, after SIGCONT) if the test fails half-way.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    /// Wait for exit (at most `secs`) and return the exit code.
    fn wait(&mut self, secs: u64) -> Option<i32> {
        let c = self.child();
        let status = wait_for(secs, "the process to exit", || c.try_wait().unwrap());
        self.0 = None;
        status.code()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn setup_with_targets() -> (Setup, FsTestTarget, FsTestTarget) {
    let s = Setup::new();
    let a = FsTestTarget::new(s.path(), "a");
    let b = FsTestTarget::new(s.path(), "b");
    s.write_config(&[a.config_snippet(), b.config_snippet()]);
    (s, a, b)
}

fn snapshots(t: &FsTestTarget, policy: &str) -> Vec<String> {
    snapshot_ids(&t.keys(), policy).into_iter().collect()
}

/// A policy whose run takes seconds: 4 MiB of random bytes at zstd level 19.
fn slow_policy(s: &Setup, name: &str, extra: &str) {
    s.write_source("big.bin", &random_bytes(4 << 20));
    s.policy(
        name,
        &format!(
            "{extra}\ntargets = [\"a\", \"b\"]\ncompression_level = 19\n[retention]\nlast = 5\n"
        ),
    );
}

/// The holder record in the lock file, once it names `pid`.
fn lock_record_names(state: &Path, policy: &str, pid: u32) -> Option<()> {
    let text = std::fs::read_to_string(state.join("locks").join(format!("{policy}.lock"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    (v["pid"].as_u64() == Some(u64::from(pid))).then_some(())
}

#[test]
fn run_due_catches_up_once_with_injected_clock() {
    let (s, a, _b) = setup_with_targets();
    s.write_source("index.html", b"hello");
    s.policy(
        "nightly",
        "schedule = \"30 2 * * *\"\ntargets = [\"a\", \"b\"]\n\
         [retention]\ndaily = 7\n[verify]\nschedule = \"0 4 * * 0\"\n",
    );
    s.policy(
        "manual",
        "targets = [\"a\", \"b\"]\n[retention]\ndaily = 7\n",
    );
    let due = |now: &str| {
        let out = s.run_at(now, &["run", "--due"]);
        expect_code(&out, 0, &format!("run --due at {now}"));
        snapshots(&a, "nightly")
    };
    // Never run, no snapshots: due at once.
    let v = due("2026-03-01T03:00:00Z");
    assert_eq!(v.len(), 1);
    assert!(v[0].starts_with("20260301T030000Z-"), "{v:?}");
    // Later the same day: the 02:30 occurrence is done.
    assert_eq!(due("2026-03-01T23:59:00Z").len(), 1);
    // The next night, and a cron line every few minutes after it: once.
    assert_eq!(due("2026-03-02T02:35:00Z").len(), 2);
    assert_eq!(due("2026-03-02T02:40:00Z").len(), 2);
    // Machine off for a week: one catch-up run, not seven.
    let v = due("2026-03-09T12:00:00Z");
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[2].starts_with("20260309T120000Z-"), "{v:?}");
    assert_eq!(due("2026-03-09T12:05:00Z").len(), 3);
    // Local state lost: the newest snapshot on the targets stands in (its
    // signing key is pinned in the config, as the README asks).
    let fp = s.run(&["key", "fingerprint"]);
    expect_code(&fp, 0, "key fingerprint");
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "trusted_keys = [{:?}]\n{cfg}",
            String::from_utf8_lossy(&fp.stdout).trim()
        ),
    )
    .unwrap();
    std::fs::remove_dir_all(&s.state).unwrap();
    assert_eq!(due("2026-03-09T13:00:00Z").len(), 3);
    assert_eq!(due("2026-03-10T02:31:00Z").len(), 4);
    // A policy without a schedule is never due.
    assert!(snapshots(&a, "manual").is_empty());

    // schedule --json: next times, last result and its time.
    let out = s.run_at("2026-03-10T09:00:00Z", &["schedule", "--json"]);
    expect_code(&out, 0, "schedule --json");
    let v = stdout_json(&out);
    let nightly = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "nightly")
        .unwrap();
    assert_eq!(nightly["run"]["schedule"], "30 2 * * *");
    assert_eq!(
        nightly["run"]["next"],
        serde_json::json!([
            "2026-03-11T02:30:00+00:00",
            "2026-03-12T02:30:00+00:00",
            "2026-03-13T02:30:00+00:00"
        ])
    );
    assert_eq!(nightly["run"]["due"], false);
    assert_eq!(nightly["run"]["last_result"], "success");
    assert_eq!(nightly["run"]["last_attempt"], "2026-03-10T02:31:00+00:00");
    // 2026-03-15 is the next Sunday.
    assert_eq!(nightly["verify"]["next"][0], "2026-03-15T04:00:00+00:00");
    let manual = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "manual")
        .unwrap();
    assert_eq!(manual["run"]["schedule"], serde_json::Value::Null);
    assert_eq!(manual["run"]["due"], false);

    // verify --due: never verified -> due; then not until next Sunday 04:00.
    let verified = |now: &str| {
        let out = s.run_at(now, &["verify", "--due", "--json"]);
        expect_code(&out, 0, &format!("verify --due at {now}"));
        let v = stdout_json(&out);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["policy"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(verified("2026-03-10T10:00:00Z"), vec!["nightly"]);
    assert!(verified("2026-03-14T10:00:00Z").is_empty());
    assert_eq!(verified("2026-03-22T10:00:00Z"), vec!["nightly"]);
    assert!(verified("2026-03-22T10:05:00Z").is_empty());
}

#[test]
fn lock_contention_between_two_processes() {
    let (s, a, _b) = setup_with_targets();
    slow_policy(&s, "slow", "");
    let mut holder = Guard(Some(
        s.cmd()
            .args(["run", "slow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = holder.pid();
    wait_for(60, "the run to take the lock", || {
        lock_record_names(&s.state, "slow", pid)
    });
    // Freeze the holder: it keeps the lock for as long as the test needs.
    signal(pid, libc::SIGSTOP);

    for args in [&["run", "slow"][..], &["prune", "slow"][..]] {
        let out = s.run(args);
        expect_code(&out, 1, &format!("{args:?} while a run holds the lock"));
        let err = stderr(&out);
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(err.contains("operation \"run\""), "{err}");
        assert!(err.contains("--wait"), "{err}");
    }
    let started = Instant::now();
    let out = s.run(&["run", "slow", "--wait", "1s"]);
    expect_code(&out, 1, "run --wait 1s");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(stderr(&out).contains("gave up waiting"), "{}", stderr(&out));
    // A dry run takes no lock.
    expect_code(
        &s.run(&["prune", "slow", "--dry-run"]),
        0,
        "prune --dry-run",
    );

    // --wait without a value waits as long as it takes.
    let mut waiter = Guard(Some(
        s.cmd()
            .args(["prune", "slow", "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.child().try_wait().unwrap().is_none(),
        "prune --wait must wait while the run holds the lock"
    );
    assert!(
        snapshots(&a, "slow").is_empty(),
        "the frozen run is not done"
    );
    signal(pid, libc::SIGCONT);
    assert_eq!(holder.wait(120), Some(0), "the run finishes normally");
    assert_eq!(waiter.wait(60), Some(0), "the waiting prune then runs");
    assert_eq!(snapshots(&a, "slow").len(), 1);
}

#[test]
fn stale_lock_of_a_killed_process_is_taken_over() {
    let (s, a, _b) = setup_with_targets();
    slow_policy(&s, "slow", "");
    let mut victim = Guard(Some(
        s.cmd()
            .args(["run", "slow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = victim.pid();
    wait_for(60, "the run to take the lock and stage its archive", || {
        lock_record_names(&s.state, "slow", pid)?;
        (!in_flight_files(&s).is_empty()).then_some(())
    });
    signal(pid, libc::SIGKILL);
    assert_eq!(victim.wait(30), None, "killed by a signal");
    // The record of the dead holder is still there; its flock is gone.
    assert!(lock_record_names(&s.state, "slow", pid).is_some());

    assert!(
        snapshots(&a, "slow").is_empty(),
        "the killed run recorded nothing"
    );
    assert!(
        !in_flight_files(&s).is_empty(),
        "a SIGKILLed run cannot clean up"
    );

    let out = s.run(&["run", "slow"]);
    expect_code(&out, 0, "run after the holder was killed");
    let err = stderr(&out);
    assert!(err.contains("took over"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains("left by an interrupted run"), "{err}");
    assert!(in_flight_files(&s).is_empty(), "{:?}", in_flight_files(&s));
    assert_eq!(snapshots(&a, "slow").len(), 1);
    // Released again after the run: the next one takes it silently.
    let out = s.run(&["prune", "slow"]);
    expect_code(&out, 0, "second prune");
    assert!(!stderr(&out).contains("took over"), "{}", stderr(&out));
}

fn spawn_daemon(s: &Setup, log: &Path) -> Guard {
    let f = std::fs::File::create(log).unwrap();
    Guard(Some(
        s.cmd()
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap(),
    ))
}

/// Files of a run in flight: the staging area (network targets) and the
/// temporaries fs targets receive the archive into while it is written.
fn in_flight_files(s: &Setup) -> Vec<String> {
    let staging = s.state.join("staging");
    walkdir::WalkDir::new(s.path())
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            e.path().starts_with(&staging) || e.file_name().to_string_lossy().contains(".tmp-")
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn daemon_sigterm_mid_run_exits_0_without_partial_snapshot() {
    let (s, a, b) = setup_with_targets();
    // Never run: due at once (catch-up).
    slow_policy(&s, "slow", "schedule = \"0 3 * * *\"");
    let log = s.path().join("daemon.log");
    let mut daemon = spawn_daemon(&s, &log);
    let pid = daemon.pid();
    wait_for(60, "the run to stage its archive", || {
        (!in_flight_files(&s).is_empty()).then_some(())
    });
    // Deliver SIGTERM while the archive is being written.
    signal(pid, libc::SIGSTOP);
    signal(pid, libc::SIGTERM);
    signal(pid, libc::SIGCONT);
    assert_eq!(daemon.wait(120), Some(0), "daemon exit code");

    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("daemon log:\n{text}");
    assert!(text.contains("policy slow: run due"), "{text}");
    assert!(text.contains("aborted"), "{text}");
    assert!(text.contains("daemon: stopped"), "{text}");
    for t in [&a, &b] {
        assert!(
            snapshots(t, "slow").is_empty(),
            "no snapshot may be visible"
        );
    }
    assert!(
        in_flight_files(&s).is_empty(),
        "staging not cleaned: {:?}",
        in_flight_files(&s)
    );
    // The lock was released: a prune gets it without a takeover warning.
    let out = s.run(&["prune", "slow"]);
    expect_code(&out, 0, "prune after the daemon stopped");
    assert!(!stderr(&out).contains("took over"));
}

#[test]
fn daemon_runs_due_policy_logs_decisions_and_stops_when_idle() {
    let (s, a, _b) = setup_with_targets();
    s.write_source("index.html", b"daemon");
    s.policy(
        "site",
        "schedule = \"0 3 * * *\"\njitter = \"10m\"\ntargets = [\"a\", \"b\"]\n[retention]\nlast = 3\n",
    );
    s.policy(
        "manual",
        "targets = [\"a\", \"b\"]\n[retention]\nlast = 3\n",
    );
    let log = s.path().join("daemon.log");
    let mut daemon = spawn_daemon(&s, &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(60, "the run and the next-run decision", || {
        read().contains("policy site: run next at").then_some(())
    });
    assert_eq!(snapshots(&a, "site").len(), 1);
    assert!(snapshots(&a, "manual").is_empty());
    signal(daemon.pid(), libc::SIGTERM);
    assert_eq!(daemon.wait(30), Some(0));
    let text = read();
    for want in [
        "policy site: run due",
        "policy site: run complete",
        "policy site: prune ok",
        "daemon: stopped",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
