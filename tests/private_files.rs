//! Issue 9 (local users): everything backupctl writes is private to the user
//! it runs as (0600 files, 0700 directories) whatever the umask, and no other
//! user can open (and so `flock`) a policy's lock file.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

/// Run the binary with `umask 000` (and the test hook `hook`, if any).
fn run_umask_000(s: &Setup, args: &[&str], hook: Option<&str>) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(bin())
        .arg("--config")
        .arg(s.config_path())
        .args(args)
        .env_remove("BACKUPCTL_CONFIG");
    if let Some(h) = hook {
        c.env("BACKUPCTL_TEST_HOOK", h);
    }
    c.output().unwrap()
}

/// Every path under `root` (itself included) whose mode gives group or
/// others any access, with its mode.
fn loose(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (m.mode() & 0o077 != 0 && !m.file_type().is_symlink())
                .then(|| format!("{:o} {}", m.mode() & 0o7777, e.path().display()))
        })
        .collect()
}

fn sqlite_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);
         INSERT INTO orders (item) VALUES ('a'), ('b');",
    )
    .unwrap();
}

#[test]
fn everything_written_is_private_even_with_umask_000() {
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    sqlite_db(&s.path("shop.db"));
    s.write(
        "backupctl.toml",
        "state_dir = \"state\"\n\
         [targets.alpha]\ntype = \"fs\"\ncreate = true\npath = \"targets/alpha\"\nlocation = \"a\"\n\
         [targets.beta]\ntype = \"fs\"\ncreate = true\npath = \"targets/beta\"\nlocation = \"b\"\n\
         [targets.gamma]\ntype = \"fs\"\npath = \"targets/gamma\"\nlocation = \"c\"\n",
    );
    s.write(
        "policies/shop.toml",
        &format!(
            "targets = [\"alpha\", \"beta\"]\n[retention]\nlast = 2\n\n\
             [[sources]]\nname = \"db\"\ntype = \"sqlite\"\npath = \"{}\"\n\n\
             [[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n",
            s.path("shop.db").display(),
            src.display()
        ),
    );
    // While the run is under way (the SQLite copy staged; archives being
    // written into temporaries on the targets), record every mode there.
    let log = s.path("modes-during-run.txt");
    let hook = format!(
        "case \"$1:$3\" in sqlite-copy:|before-open:public/index.html) \
         find '{state}' '{targets}' -printf '%m %p\\n' >> '{log}';; esac",
        state = s.path("state").display(),
        targets = s.path("targets").display(),
        log = log.display()
    );
    expect_code(&run_umask_000(&s, &["run"], Some(&hook)), 0);
    expect_code(&run_umask_000(&s, &["run"], None), 0);
    expect_code(&run_umask_000(&s, &["verify", "--all"], None), 0);
    expect_code(&run_umask_000(&s, &["prune"], None), 0);
    expect_code(&run_umask_000(&s, &["init", "gamma"], None), 0);

    let during = std::fs::read_to_string(&log).unwrap();
    for (what, needle) in [
        ("the SQLite copy", "/sqlite-"),
        ("an archive temporary", "incoming.tmp-"),
        ("the lock file", "shop.lock"),
        ("the staging directory", "/staging/shop/"),
    ] {
        assert!(
            during.contains(needle),
            "{what} was seen during the run:\n{during}"
        );
    }
    let loose_during: Vec<&str> = during
        .lines()
        .filter(|l| {
            let mode = u32::from_str_radix(l.split(' ').next().unwrap(), 8).unwrap();
            mode & 0o077 != 0
        })
        .collect();
    assert!(
        loose_during.is_empty(),
        "readable by others during the run: {loose_during:#?}"
    );
    for root in [s.path("state"), s.path("targets")] {
        assert!(root.is_dir());
        assert_eq!(
            loose(&root),
            Vec::<String>::new(),
            "under {}",
            root.display()
        );
    }
    // The source's modes are kept inside the archive, of course.
    let out = s.path("restored");
    expect_code(
        &s.run(&[
            "restore",
            "shop",
            "--source",
            "site",
            "--to",
            out.to_str().unwrap(),
        ]),
        0,
    );
    assert_same_tree(&src, &out.join("site"));
}

#[test]
fn looser_state_left_by_older_versions_is_tightened() {
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    // What an older backupctl left with umask 022 (or worse).
    s.write("state/history/shop.json", "{}\n");
    s.write("state/locks/shop.lock", "");
    for (p, m) in [
        ("state", 0o755),
        ("state/history", 0o755),
        ("state/history/shop.json", 0o644),
        ("state/locks", 0o777),
        ("state/locks/shop.lock", 0o666),
    ] {
        std::fs::set_permissions(s.path(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let o = s.run(&["run"]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("made it private"),
        "says what it tightened: {}",
        stderr(&o)
    );
    assert_eq!(loose(&s.path("state")), Vec::<String>::new());
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !running_as_root() {
        eprintln!("skipped: needs root (to give the state directory to another user)");
        return;
    }
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    std::fs::create_dir_all(s.path("state")).unwrap();
    std::os::unix::fs::chown(s.path("state"), Some(65534), Some(65534)).unwrap();
    let o = s.run(&["run"]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("owned by uid 65534"), "{}", stderr(&o));
    assert!(manifests(&s.target_dir("t"), "shop").is_empty());
}

#[test]
fn another_user_cannot_open_or_flock_the_lock_file() {
    if !running_as_root() {
        eprintln!("skipped: needs root (to try the lock as another user)");
        return;
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .args(args)
            .output()
    };
    if !as_nobody(&["true"]).is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: setpriv cannot switch to nobody here");
        return;
    }
    let s = Setup::new();
    let src = s.path("src");
    make_tree(&src);
    s.fs_config(&["t"]);
    s.files_policy("shop", &src, &["t"], "");
    // Let other users as far as the state directory (tempdirs are 0700).
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    expect_code(&run_umask_000(&s, &["run"], None), 0);
    let lock = s.path("state/locks/shop.lock");
    assert!(lock.is_file());
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o7777, 0o600);
    // Even with the lock file itself opened up, the 0700 directories keep
    // other users out; and with the directories opened up, the 0600 file does.
    for (dir_mode, file_mode) in [(0o700, 0o600), (0o700, 0o666), (0o755, 0o600)] {
        for d in ["state", "state/locks"] {
            std::fs::set_permissions(s.path(d), std::fs::Permissions::from_mode(dir_mode)).unwrap();
        }
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(file_mode)).unwrap();
        let lock_s = lock.to_str().unwrap();
        for args in [
            vec!["flock", "--nonblock", "--shared", lock_s, "true"],
            vec!["cat", lock_s],
        ] {
            let o = as_nobody(&args).unwrap();
            assert!(
                !o.status.success(),
                "nobody ran {args:?} with dirs {dir_mode:o}, file {file_mode:o}"
            );
            assert!(
                stderr(&o).contains("Permission denied"),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
    // backupctl tightens whatever it finds again.
    expect_code(&s.run(&["run"]), 0);
    assert_eq!(loose(&s.path("state")), Vec::<String>::new());
}
