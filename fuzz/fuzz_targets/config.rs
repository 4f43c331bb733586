//! Fuzzes the configuration parser through [`Config::from_texts`], the pure
//! entry point `Config::load` uses: the input is the text of `backupctl.toml`
//! and up to three policy files, separated by NUL bytes (which TOML text
//! cannot contain).
//!
//! Proves: no text makes parsing or validation panic or hang, whatever it
//! holds; a configuration that loads keeps the model's promises (every
//! target, policy and source name is a valid name, compression levels are
//! 1-19, retention rules are valid and non-empty, every policy names only
//! defined targets, once each); and what the rest of the program does with a
//! loaded policy at once (schedules' next occurrences, `prune`'s retention
//! decision over snapshot times near the ends of the representable range,
//! serialising the specs) does not panic either. Nothing is read or written.
#![no_main]

use backupctl::config::{is_valid_name, Config};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};

/// Snapshot times as manifests may carry them (RFC 3339: years 0000-9999,
/// offsets up to a day), oldest first.
fn times() -> Vec<DateTime<FixedOffset>> {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
    vec![
        at("0000-01-01T00:00:00+23:59"),
        at("1969-12-31T23:59:59.999999999Z"),
        at("2024-02-29T12:00:00+01:00"),
        at("2026-03-29T01:30:00+01:00"),
        at("2026-03-29T03:30:00+02:00"),
        at("2026-10-25T02:30:00+02:00"),
        at("2026-10-25T02:30:00+01:00"),
        at("9999-12-31T23:59:59-23:59"),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let main = parts.next().unwrap_or_default();
    let files: Vec<(PathBuf, &str)> = parts
        .take(3)
        .enumerate()
        .map(|(i, t)| (PathBuf::from(format!("/fuzz/policies/p{i}.toml")), t))
        .collect();
    let cfg = match Config::from_texts(
        Path::new("/fuzz/backupctl.toml"),
        main,
        files.iter().map(|(p, t)| (p.as_path(), *t)),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(cfg.policies.len() + cfg.broken.len(), files.len());
    for (name, t) in &cfg.targets {
        assert!(is_valid_name(name), "target {name:?}");
        assert!(!t.location().trim().is_empty());
        let _ = serde_json::to_string(t).unwrap();
    }
    for e in cfg.broken.values() {
        let _ = e.to_string();
    }
    let now = Utc.with_ymd_and_hms(2026, 3, 29, 1, 59, 59).unwrap();
    let times = times();
    for (name, p) in &cfg.policies {
        assert_eq!(name, &p.name);
        assert!(is_valid_name(name));
        assert!((1..=19).contains(&p.compression_level));
        assert!(!p.targets.is_empty() && !p.sources.is_empty());
        for (i, t) in p.targets.iter().enumerate() {
            assert!(cfg.targets.contains_key(t), "undefined target {t:?}");
            assert!(!p.targets[..i].contains(t), "target {t:?} twice");
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &p.sources {
            assert!(is_valid_name(s.name()), "source {:?}", s.name());
            assert!(names.insert(s.name()), "source {:?} twice", s.name());
            let _ = serde_json::to_string(s).unwrap();
        }
        assert!(p.retention.validate().is_ok() && !p.retention.is_empty());
        let d = backupctl::retention::apply(&times, &p.retention, now);
        assert_eq!(d.keep.len() + d.remove.len(), times.len());
        for s in p.schedule.iter().chain(p.verify_schedule.iter()) {
            let _ = s.upcoming(&now, 2);
            let _ = s.is_due(Some(&now), &now);
            let _ = s.next_after(&times[0]);
            let _ = s.next_after(&times[times.len() - 1]);
        }
        let _ = p.locations(&cfg);
    }
    let _ = cfg.selection(&[]);
    let _ = cfg.select(&["p0".to_string(), "p1".to_string()]);
});
