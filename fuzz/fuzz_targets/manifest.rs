//! Fuzzes what a storage target serves before a snapshot is used (format
//! v2): the manifest parser ([`Manifest::parse`], schema 2), signature files
//! ([`Trust::verify`]), file index records (the JSON lines of a source's
//! index stream, parsed as `repo::fetch::read_index` does), target listings
//! ([`TargetView::from_listing`] over [`Key::parse`]) and the name,
//! snapshot-id, hash, object-key and pack-path validators every key is built
//! from.
//!
//! Proves, for any bytes: nothing panics; a manifest that parses is valid in
//! every field later used to build a key or path (policy and source names,
//! the id, the streams' hashes and extent-list names, the lists' recorded
//! sizes), survives a serialise and parse round trip unchanged, and the sums
//! and bounds derived from it can be computed; a signature file that is not a
//! genuine signature by a trusted key never verifies (the input used as a
//! signature), while the harness's own signature over the input verifies and
//! stops verifying once one byte, the id or the policy changes; file index
//! records that parse give exact path bytes, bounds ([`Expected`]), `b3sum`
//! lines and comparisons without panicking; the validators accept only names
//! that are one plain path component (object keys: only plain relative
//! components); and a listing sorts into snapshots, signatures, packs and
//! lists only keys of the policy's own layout, each of which rebuilds to
//! exactly the key listed.
#![no_main]

use backupctl::archive::manifest::{b3sums, is_hash, FileRecord};
use backupctl::archive::reader::{compare_files, name_problem};
use backupctl::archive::{Expected, Manifest};
use backupctl::config::is_valid_name;
use backupctl::pack::extents::{name_of_path, pack_path, MAX_LIST_BYTES};
use backupctl::repo::catalog::TargetView;
use backupctl::repo::{is_snapshot_id, Hash, Key, PolicyName, SnapshotId};
use backupctl::storage::{ObjectInfo, ObjectKey};
use backupctl::trust::{AuthError, HostKey, Trust};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
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
        assert!(PolicyName::new(s).is_ok());
    }
    if is_snapshot_id(s) {
        assert!(is_valid_name(s), "{s:?}");
        assert_eq!(s.len(), 25);
        assert!(SnapshotId::new(s).is_ok());
    }
    if is_hash(s) {
        assert!(is_valid_name(s));
        assert!(Hash::new(s).is_ok());
    }
    if let Some(name) = name_of_path(s) {
        assert!(is_hash(name), "{s:?}");
        assert_eq!(pack_path(name), s);
    }
    if let Ok(k) = ObjectKey::new(s) {
        // Relative, plain components only: below an fs root or an S3 prefix.
        assert!(!s.starts_with('/') && !s.chars().any(char::is_control), "{s:?}");
        for c in Path::new(k.as_str()).components() {
            assert!(matches!(c, Component::Normal(_)), "{s:?}");
        }
        assert_eq!(k.as_str(), s);
    }
}

fn components(k: &ObjectKey) -> usize {
    Path::new(k.as_str()).components().count()
}

fn check_manifest(m: &Manifest) {
    let policy = PolicyName::new(&m.policy).expect("policy checked by parse");
    let id = SnapshotId::new(&m.id).expect("id checked by parse");
    for key in [
        Key::Manifest {
            policy: policy.clone(),
            id: id.clone(),
        },
        Key::Signature {
            policy: policy.clone(),
            id: id.clone(),
        },
    ] {
        let obj = key.object();
        assert_eq!(components(&obj), 3, "{obj}");
        assert_eq!(Key::parse(&obj), Some(key));
    }
    for s in &m.sources {
        assert!(is_valid_name(&s.name));
        assert!(!s.origin.chars().any(char::is_control));
        for w in &s.warnings {
            assert!(!w.chars().any(char::is_control), "{w:?}");
        }
        for st in s.streams() {
            assert!(is_hash(&st.blake3));
            assert!(st.list_size <= MAX_LIST_BYTES);
            let hash = Hash::new(&st.list).expect("list name checked by parse");
            let key = Key::List {
                policy: policy.clone(),
                hash,
            };
            let obj = key.object();
            assert_eq!(components(&obj), 3, "{obj}");
            assert_eq!(Key::parse(&obj), Some(key));
        }
        let e = Expected::from_index(s, &[]).expect("no records");
        assert_eq!(e.tar_size, s.stream.size);
    }
    // What `list` shows for a snapshot.
    let _ = (m.total_stored(), m.total_content_size());
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

/// The input as a file index stream: one JSON record per line, as
/// `read_index` parses it, then what restore and verify do with the records.
fn check_index(data: &[u8], m: Option<&Manifest>) {
    let mut records = Vec::new();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(rec) = serde_json::from_slice::<FileRecord>(line) else {
            continue;
        };
        let Ok(raw) = rec.path_bytes() else {
            continue;
        };
        let _ = name_problem(Path::new(OsStr::from_bytes(&raw)));
        records.push(rec);
    }
    if records.is_empty() {
        return;
    }
    let _ = b3sums(&records);
    if let Some(src) = m.and_then(|m| m.sources.first()) {
        let e = Expected::from_index(src, &records).expect("paths checked above");
        for f in records.iter().filter(|f| f.is_file()) {
            assert!(e.size_of(&f.path_bytes().unwrap()).is_some());
        }
    }
    let got: HashMap<Vec<u8>, (u64, String)> = records
        .iter()
        .take(1)
        .map(|f| (f.path_bytes().unwrap().into_owned(), (f.size, f.blake3.clone())))
        .collect();
    let _ = compare_files(&records, &got, None);
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

    check_index(data, parsed.as_ref().ok());

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

/// The validators, on every line of the input; the lines that are object
/// keys as a listing of policy `shop`.
fn check_listing(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut listing = Vec::new();
    for (n, line) in text.lines().enumerate().take(64) {
        check_names(line);
        check_names(line.trim_matches(|c: char| c == '"' || c == ',' || c.is_whitespace()));
        if let Ok(key) = ObjectKey::new(line) {
            if let Some(k) = Key::parse(&key) {
                // One object per key: what is deleted or read by the typed
                // key is exactly the object listed.
                assert_eq!(k.object(), key, "{line:?}");
            }
            listing.push(ObjectInfo {
                key,
                size: n as u64,
            });
        }
    }
    let listed: HashSet<ObjectKey> = listing.iter().map(|o| o.key.clone()).collect();
    let shop = PolicyName::new("shop").unwrap();
    let n = listing.len();
    let v = TargetView::from_listing(&shop, listing);
    let mut classified = 0;
    let mut own = |key: Key| {
        let obj = key.object();
        assert!(obj.as_str().starts_with("shop/"), "{obj}");
        assert!(listed.contains(&obj), "{obj} was not listed");
        classified += 1;
    };
    for id in v.snapshots.keys() {
        own(Key::Manifest {
            policy: shop.clone(),
            id: id.clone(),
        });
    }
    for id in v.signatures.keys() {
        own(Key::Signature {
            policy: shop.clone(),
            id: id.clone(),
        });
    }
    for name in v.packs.keys() {
        own(Key::Pack {
            policy: shop.clone(),
            name: name.clone(),
        });
    }
    for hash in v.lists.keys() {
        own(Key::List {
            policy: shop.clone(),
            hash: hash.clone(),
        });
    }
    // Nothing listed is lost: classified (duplicates merged) or kept aside.
    assert!(classified + v.others.len() <= n);
    for o in &v.others {
        assert!(
            !matches!(
                Key::parse(&o.key),
                Some(Key::Manifest { ref policy, .. } | Key::Signature { ref policy, .. }
                    | Key::Pack { ref policy, .. } | Key::List { ref policy, .. }) if *policy == shop
            ),
            "{} left out",
            o.key
        );
    }
}
