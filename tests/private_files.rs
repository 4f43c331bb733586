//! Issue 9 (local users): everything backupctl writes is private to the user
//! it runs as (0600 files, 0700 directories) whatever the umask, and no other
//! user can open (and so `flock`) a policy's lock file.

use crate::common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

/// Run the binary with `umask 000` (and the test hook `hook`, if any).
fn run_umask_000(s: &Setup, args: &[&str], hook: Option<&str>) -> Output {
    let mut c = bin_via("sh", &["-c", "umask 000; exec \"$0\" \"$@\""]);
    c.arg("--config").arg(s.config_path()).args(args);
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

/// Permission bits of a path (not following a symbolic link).
fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
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
    // More than one pack's worth of incompressible data, read before
    // public/index.html: by then a pack is closed and on its way to both
    // targets.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..(20 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(src.join("data/0-big.bin"), big).unwrap();
    // While the run is under way (the SQLite copy staged; packs being
    // written to the targets), record every mode there: at the SQLite copy,
    // and at public/index.html, every 20 ms until a pack is on both targets
    // (so a pack temporary is likely, though not certain, to be seen too).
    let log = s.path("modes-during-run.txt");
    let hook = format!(
        "rec() {{ find '{state}' '{targets}' -printf '%m %p\\n' >> '{log}' 2>/dev/null; }}\n\
         packs() {{ find '{targets}' -name '*.pack' 2>/dev/null | wc -l; }}\n\
         case \"$1:$3\" in\n\
         sqlite-copy:) rec;;\n\
         before-open:public/index.html)\n\
           i=0; while [ \"$(packs)\" -lt 2 ] && [ $i -lt 3000 ]; do rec; sleep 0.02; i=$((i+1)); done\n\
           rec;;\n\
         esac\n",
        state = s.path("state").display(),
        targets = s.path("targets").display(),
        log = log.display()
    );
    expect_code(&run_umask_000(&s, &["run"], Some(&hook)), 0);
    expect_code(&run_umask_000(&s, &["run"], None), 0);
    expect_code(&run_umask_000(&s, &["verify", "--all"], None), 0);
    expect_code(&run_umask_000(&s, &["verify", "--read-all"], None), 0);
    expect_code(&run_umask_000(&s, &["prune"], None), 0);
    expect_code(&run_umask_000(&s, &["init", "gamma"], None), 0);

    let during = std::fs::read_to_string(&log).unwrap();
    for (what, needle) in [
        ("the SQLite copy", "/sqlite-"),
        ("a pack on alpha", "/targets/alpha/shop/packs/"),
        ("a pack on beta", "/targets/beta/shop/packs/"),
        ("the lock file", "shop.lock"),
        ("the staging directory", "/staging/shop/"),
        ("the pack index cache", "/cache/packs/shop"),
    ] {
        assert!(
            during.contains(needle),
            "{what} was seen during the run:\n{during}"
        );
    }
    assert!(
        during
            .lines()
            .any(|l| l.contains("/shop/packs/") && l.ends_with(".pack")),
        "a whole pack was seen during the run:\n{during}"
    );
    let temporaries = during.lines().filter(|l| l.contains(".tmp-")).count();
    eprintln!("pack temporaries seen during the run: {temporaries}");
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
    // Everything v2 keeps on a target exists, and is 0600 in 0700
    // directories: packs, extent lists, signatures, manifests, the marker
    // and the restore instructions.
    for t in ["alpha", "beta"] {
        let root = s.target_dir(t);
        let mut files = vec![
            root.join("backupctl-target.json"),
            root.join("RESTORE-README.txt"),
        ];
        let (p, l, m) = (
            packs(&root, "shop"),
            lists(&root, "shop"),
            manifests(&root, "shop"),
        );
        assert!(
            !p.is_empty() && l.len() >= 2 && m.len() == 2,
            "{t}: {p:?} {l:?} {m:?}"
        );
        files.extend(m.iter().map(|m| m.with_extension("sig")));
        let mut dirs = vec![
            root.clone(),
            root.join("shop"),
            root.join("shop/packs"),
            root.join("shop/lists"),
            root.join("shop/snapshots"),
        ];
        dirs.extend(p.iter().map(|p| p.parent().unwrap().to_path_buf()));
        files.extend(p);
        files.extend(l);
        files.extend(m);
        for f in &files {
            assert_eq!(mode_of(f), 0o600, "{}", f.display());
        }
        for d in &dirs {
            assert_eq!(mode_of(d), 0o700, "{}", d.display());
        }
    }
    for f in ["backupctl-target.json", "RESTORE-README.txt"] {
        assert_eq!(mode_of(&s.target_dir("gamma").join(f)), 0o600, "gamma {f}");
    }
    assert_eq!(mode_of(&s.target_dir("gamma")), 0o700);
    // The pack index cache the second run filled.
    let idx: Vec<_> = walkdir::WalkDir::new(s.path("state/cache/packs/shop"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    assert!(!idx.is_empty(), "pack indexes cached");
    for f in &idx {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
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
