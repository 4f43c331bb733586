//! Issue 2: every bad-input case exits 2 with a message naming the file, the
//! key and what is expected, and writes nothing.

use crate::common;
use common::*;

struct Case {
    name: &'static str,
    config: Option<&'static str>,
    policy: &'static str,
    /// Substrings the error must contain.
    expect: &'static [&'static str],
}

const CONFIG: &str = "state_dir = \"state\"\n[targets.nas]\ntype = \"fs\"\ncreate = true\npath = \"targets/nas\"\nlocation = \"office\"\n[targets.off]\ntype = \"fs\"\ncreate = true\npath = \"targets/off\"\nlocation = \"dc\"\n";

const GOOD_TAIL: &str = "[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "unknown key (typo)",
            config: None,
            policy: "targets = [\"nas\"]\n[retension]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "retension", "expected"],
        },
        Case {
            name: "undefined target",
            config: None,
            policy: "targets = [\"nas\", \"cloud\"]\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "targets", "\"cloud\"", "not defined"],
        },
        Case {
            name: "invalid cron",
            config: None,
            policy: "schedule = \"61 2 * * *\"\ntargets = [\"nas\"]\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "schedule", "expected"],
        },
        Case {
            name: "cron with wrong field count",
            config: None,
            policy: "schedule = \"2 * *\"\ntargets = [\"nas\"]\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "schedule", "5 fields"],
        },
        Case {
            name: "no retention rules",
            config: None,
            policy: "targets = [\"nas\"]\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "retention", "at least one"],
        },
        Case {
            name: "empty retention table",
            config: None,
            policy: "targets = [\"nas\"]\n[retention]\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "retention", "daily"],
        },
        Case {
            name: "duplicate source names",
            config: None,
            policy: "targets = [\"nas\"]\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "sources[1].name", "duplicate"],
        },
        Case {
            name: "policy is not valid TOML",
            config: None,
            policy: "targets = [\"nas\"\n[retention\n",
            expect: &["policies/shop.toml:"],
        },
        Case {
            name: "config is not valid TOML",
            config: Some("[targets.nas\ntype = fs\n"),
            policy: "",
            expect: &["backupctl.toml:"],
        },
        Case {
            name: "unknown target type",
            config: Some("[targets.nas]\ntype = \"ftp\"\npath = \"x\"\nlocation = \"office\"\n"),
            policy: "",
            expect: &["backupctl.toml", "targets.nas.type", "\"ftp\"", "\"fs\", \"s3\""],
        },
        Case {
            name: "unknown source type",
            config: None,
            policy: "targets = [\"nas\"]\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"rsync\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "sources[0].type", "\"rsync\"", "\"files\""],
        },
        Case {
            name: "unknown key in a target",
            config: Some("[targets.nas]\ntype = \"fs\"\ncreate = true\npath = \"x\"\nlocation = \"office\"\nfoo = 1\n"),
            policy: "",
            expect: &["backupctl.toml", "targets.nas", "foo"],
        },
        Case {
            name: "target without location",
            config: Some("[targets.nas]\ntype = \"fs\"\ncreate = true\npath = \"x\"\n"),
            policy: "",
            expect: &["backupctl.toml", "targets.nas", "location"],
        },
        Case {
            name: "plain-text S3 secret",
            config: Some("[targets.s3]\ntype = \"s3\"\nbucket = \"b\"\nlocation = \"x\"\nsecret_access_key = \"hunter2\"\n"),
            policy: "",
            expect: &["backupctl.toml", "targets.s3.secret_access_key", "plain-text"],
        },
        Case {
            name: "bad compression level",
            config: None,
            policy: "targets = [\"nas\"]\ncompression_level = 40\n[retention]\ndaily = 7\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "compression_level", "1 to 19"],
        },
        Case {
            name: "negative retention count",
            config: None,
            policy: "targets = [\"nas\"]\n[retention]\ndaily = -5\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"src\"\n",
            expect: &["policies/shop.toml", "retention", "daily"],
        },
    ]
}

#[test]
fn every_bad_input_exits_2_with_a_precise_message_and_writes_nothing() {
    let _ = GOOD_TAIL;
    for case in cases() {
        let s = Setup::new();
        std::fs::create_dir_all(s.path("src")).unwrap();
        std::fs::write(s.path("src/a.txt"), "a").unwrap();
        s.write("backupctl.toml", case.config.unwrap_or(CONFIG));
        if case.config.is_none() || !case.policy.is_empty() {
            s.write("policies/shop.toml", case.policy);
        }
        for cmd in [&["check"][..], &["run"][..]] {
            let o = s.run(cmd);
            assert_eq!(
                code(&o),
                2,
                "case {:?} ({cmd:?}): exit code; stderr: {}",
                case.name,
                stderr(&o)
            );
            let err = stderr(&o);
            for want in case.expect {
                assert!(
                    err.contains(want),
                    "case {:?} ({cmd:?}): error should contain {want:?}:\n{err}",
                    case.name
                );
            }
            assert!(!err.contains("hunter2"), "secrets never printed");
            assert!(
                !s.path("targets").exists(),
                "case {:?}: nothing written to targets",
                case.name
            );
            assert!(
                !s.path("state").exists(),
                "case {:?}: no state written",
                case.name
            );
        }
    }
}

#[test]
fn missing_config_and_unknown_policy_are_usage_errors() {
    let s = Setup::new();
    let o = s.run(&["list"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("backupctl.toml"), "{}", stderr(&o));

    s.write("backupctl.toml", CONFIG);
    std::fs::create_dir_all(s.path("src")).unwrap();
    s.write(
        "policies/shop.toml",
        &format!("targets = [\"nas\", \"off\"]\n[retention]\ndaily = 7\n{GOOD_TAIL}"),
    );
    let o = s.run(&["run", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("\"nope\""), "{}", stderr(&o));
    let o = s.run(&["run", "--time", "yesterday"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
    // The good config is accepted by check.
    let o = s.run(&["check"]);
    expect_code(&o, 0);
}

#[test]
fn config_is_found_via_env_var_and_cwd() {
    let s = Setup::new();
    s.write("backupctl.toml", CONFIG);
    std::fs::create_dir_all(s.path("src")).unwrap();
    s.write(
        "policies/shop.toml",
        &format!("targets = [\"nas\", \"off\"]\n[retention]\ndaily = 7\n{GOOD_TAIL}"),
    );
    let o = bin()
        .arg("check")
        .env("BACKUPCTL_CONFIG", s.config_path())
        .current_dir("/")
        .output()
        .unwrap();
    expect_code(&o, 0);
    let o = bin()
        .arg("check")
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    expect_code(&o, 0);
}
