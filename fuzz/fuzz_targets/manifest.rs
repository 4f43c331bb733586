//! Fuzzes what a storage target serves before a snapshot is used: the
//! manifest parser ([`Manifest::parse`]), signature files
//! ([`Trust::verify`]), target listings ([`TargetView::from_listing`]) and
//! the name and snapshot-id validators every key is built from.
//!
//! Proves, for any bytes: nothing panics; a manifest that parses is valid in
//! every field later used to build a key or path (policy and source names,
//! the id, archive hashes, non-UTF-8 file names), survives a serialise and
//! parse round trip unchanged, and the sums, bounds and listings derived from
//! it can be computed; a signature file that is not a genuine signature by a
//! trusted key never verifies (the input used as a signature), while the
//! harness's own signature over the input verifies and stops verifying once
//! one byte, the id or the policy changes; the validators accept only names
//! that are one plain path component, and a listing sorts only keys under
//! the policy's prefix into snapshots and archives.
#![no_main]

use backupctl::archive::manifest::{b3sums, is_hash};
use backupctl::archive::{Expected, Manifest};
use backupctl::config::is_valid_name;
use backupctl::repo::{self, is_snapshot_id, TargetView};
use backupctl::target::ObjectInfo;
use backupctl::trust::{AuthError, HostKey, Trust};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::OnceLock;

/// The trusted key: a fixed seed, written once to a private temporary file
/// (the only way the library loads a key).
fn key() -> &'static (HostKey, Trust) {
    static KEY: OnceLock<(HostKey, Trust)> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        std::fs::write(
            &path,
            "backupctl-ed25519-secret-v1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        )
        .unwrap();
        let k = HostKey::load(&path).unwrap();
        let t = Trust::new([k.public()]);
        (k, t)
    })
}

/// A name accepted by a validator is exactly one plain path component.
fn one_component(s: &str) {
    let mut c = Path::new(s).components();
    assert_eq!(c.next(), Some(Component::Normal(s.as_ref())), "{s:?}");
    assert_eq!(c.next(), None, "{s:?}");
    assert!(!s.contains(['/', '\0', '\\']) && s.len() <= 128, "{s:?}");
}

fn check_names(s: &str) {
    if is_valid_name(s) {
        one_component(s);
        assert!(s.is_ascii() && !s.starts_with('.'));
    }
    if is_snapshot_id(s) {
        assert!(is_valid_name(s), "{s:?}");
        assert_eq!(s.len(), 25);
    }
    if is_hash(s) {
        assert!(is_valid_name(s));
    }
}

fn check_manifest(m: &Manifest) {
    assert!(is_valid_name(&m.policy) && is_snapshot_id(&m.id));
    for key in [
        repo::manifest_key(&m.policy, &m.id),
        repo::signature_key(&m.policy, &m.id),
    ] {
        assert_eq!(Path::new(&key).components().count(), 3, "{key}");
    }
    for s in &m.sources {
        assert!(is_valid_name(&s.name) && is_hash(&s.archive_hash));
        assert!(!s.origin.chars().any(char::is_control));
        for w in &s.warnings {
            assert!(!w.chars().any(char::is_control), "{w:?}");
        }
        let key = repo::archive_key(&m.policy, &s.archive_hash);
        assert_eq!(Path::new(&key).components().count(), 3, "{key}");
        let e = Expected::from_record(s).expect("paths checked by parse");
        assert!(e.files.len() <= s.files.len());
        for f in &s.files {
            let raw = f.path_bytes().expect("checked by parse");
            assert!(e.size_of(&raw).is_some());
            let _ = backupctl::archive::reader::name_problem(Path::new(OsStr::from_bytes(&raw)));
        }
        let _ = b3sums(&s.files);
    }
    // What `list` shows for a snapshot.
    let _ = (m.total_archive_size(), m.total_content_size());
    let _ = backupctl::util::short_time(&m.time.to_rfc3339());
    // A parsed manifest serialises and parses back to itself (the free-form
    // `database` facts aside: floats in JSON need not round-trip exactly).
    let back = Manifest::parse(&m.to_json()).expect("a parsed manifest re-parses");
    let strip = |m: &Manifest| {
        let mut m = m.clone();
        for s in &mut m.sources {
            s.database = None;
        }
        m
    };
    assert_eq!(strip(&back), strip(m));
}

fuzz_target!(|data: &[u8]| {
    let (k, trust) = key();

    // The manifest as a target serves it.
    let parsed = Manifest::parse(data);
    if let Ok(m) = &parsed {
        check_manifest(m);
    }
    let (policy, id) = match &parsed {
        Ok(m) => (m.policy.as_str(), m.id.as_str()),
        Err(_) => ("shop", "20260101T000000Z-0123abcd"),
    };

    // The input as a signature file: never genuine.
    match trust.verify(policy, id, data, Some(data)) {
        Ok(_) => panic!("the input verified as its own signature"),
        Err(AuthError::UnknownKey(_) | AuthError::Altered(_) | AuthError::Malformed(_)) => {}
        Err(AuthError::Unsigned) => unreachable!(),
    }
    let _ = trust.verify(policy, id, b"{}", Some(data));

    // A genuine signature over the input, and what must break it (for one
    // input in eight: signing and verifying dominate the run time).
    if blake3::hash(data).as_bytes()[1] % 8 != 0 {
        check_listing(data);
        return;
    }
    let sig = k.sign_manifest(policy, id, data);
    assert_eq!(trust.verify(policy, id, data, Some(&sig)), Ok(k.public()));
    if !data.is_empty() {
        let mut altered = data.to_vec();
        let i = blake3::hash(data).as_bytes()[0] as usize % data.len();
        altered[i] ^= 1;
        assert_eq!(
            trust.verify(policy, id, &altered, Some(&sig)),
            Err(AuthError::Altered(k.public()))
        );
    }
    assert!(trust
        .verify(policy, "20260101T000000Z-0123abce", data, Some(&sig))
        .is_err());
    assert!(trust.verify("other", id, data, Some(&sig)).is_err());
    assert!(Trust::default()
        .verify(policy, id, data, Some(&sig))
        .is_err());

    check_listing(data);
});

/// The validators, on every line of the input; the lines as a listing.
fn check_listing(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut listing = Vec::new();
    for (n, line) in text.lines().enumerate().take(64) {
        check_names(line);
        check_names(line.trim_matches(|c: char| c == '"' || c == ',' || c.is_whitespace()));
        listing.push(ObjectInfo {
            key: line.to_string(),
            size: n as u64,
        });
    }
    let v = TargetView::from_listing("shop", listing);
    for s in &v.snapshots {
        assert!(is_snapshot_id(s));
    }
    for h in v.archives.keys() {
        assert!(is_hash(h));
    }
    for o in v.others.keys() {
        assert!(o.starts_with("shop/"), "{o:?}");
    }
}
