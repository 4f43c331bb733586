//! The example configuration and policies users copy (`backupctl.example.toml`
//! and `policies/*.toml` at the repository root) pass `backupctl check` once
//! their paths point at directories that exist, and say what the docs say.

mod sched_common;

use sched_common::*;
use std::path::Path;

/// Replace every `path = "..."` value with a fresh directory under `base`
/// (created; for targets the parent is created and the root left to `check`).
fn repoint(text: &str, base: &Path, tag: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("path = \"") {
            let original = &rest[..rest.find('"').expect("closing quote")];
            assert!(
                original.starts_with('/'),
                "examples use absolute paths: {line}"
            );
            let dir = base.join(format!("{tag}-{i}")).join("data");
            std::fs::create_dir_all(&dir).unwrap();
            out.push_str(&format!("path = {:?}", dir.display().to_string()));
            out.push_str(&rest[original.len() + 1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn example_config_and_policies_pass_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = Setup::new();
    let cfg = std::fs::read_to_string(repo.join("backupctl.example.toml")).unwrap();
    let cfg = repoint(&cfg, s.path(), "target").replace(
        "state_dir = \"/var/lib/backupctl\"",
        &format!("state_dir = {:?}", s.state.display().to_string()),
    );
    std::fs::write(&s.config, cfg).unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(repo.join("policies")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let text = repoint(&std::fs::read_to_string(&p).unwrap(), s.path(), &stem);
            std::fs::write(s.path().join("policies").join(p.file_name().unwrap()), text).unwrap();
            names.push(stem);
        }
    }
    names.sort();
    assert_eq!(names, ["app-hourly", "records", "shop"]);

    // Directory targets must be initialised: before `init`, check fails them.
    let out = s.run(&["check", "--json"]);
    expect_code(&out, 1, "check before init");
    let out = s.run(&["init"]);
    expect_code(&out, 0, "init of the example targets");
    let out = s.run(&["check", "--json"]);
    expect_code(&out, 0, "check of the examples");
    let v = stdout_json(&out);
    assert_eq!(v["policies"], serde_json::json!(names));
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");

    // The retention rules are the ones the docs promise.
    let retention = |name: &str| -> toml::Value {
        let text = std::fs::read_to_string(repo.join("policies").join(format!("{name}.toml")));
        toml::from_str::<toml::Value>(&text.unwrap()).unwrap()["retention"].clone()
    };
    let r = retention("shop");
    assert_eq!(
        (
            r["daily"].as_integer(),
            r["weekly"].as_integer(),
            r["monthly"].as_integer()
        ),
        (Some(7), Some(4), Some(12))
    );
    let r = retention("app-hourly");
    assert_eq!(
        [&r["hourly"], &r["daily"], &r["weekly"], &r["monthly"]].map(|x| x.as_integer()),
        [Some(24), Some(7), Some(4), Some(12)]
    );
    assert_eq!(retention("records")["yearly"].as_integer(), Some(-1));

    // `schedule` reads them too: every example is scheduled.
    let out = s.run_at("2026-06-01T00:00:00Z", &["schedule", "--json"]);
    expect_code(&out, 0, "schedule");
    for p in stdout_json(&out).as_array().unwrap() {
        assert!(p["run"]["schedule"].is_string(), "{p}");
    }
}
