//! The storage conformance suite: every test runs against every backend, an
//! fs directory and an S3 bucket prefix on the loopback Garage (skipped
//! without it unless BACKUPCTL_TEST_REQUIRE_SERVICES=1). It covers every
//! method of `storage::Backend` and the paths archives really take (streamed
//! reads, ranged reads, uploads committed under their hash). What was stored
//! is also checked independently: on the file system, or through the S3 API
//! with a client of its own.

use crate::s3_common;

use backupctl::config::{FsTargetSpec, S3TargetSpec};
use backupctl::storage::fs::FsBackend;
use backupctl::storage::s3::S3Backend;
use backupctl::storage::{
    Backend, DynBackend, ObjectKey, ObjectReader, Prefix, Readiness, StorageError,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a test can see of a backend's storage without the backend.
enum Raw {
    Fs {
        root: PathBuf,
    },
    S3 {
        env: s3_common::S3Env,
        prefix: String,
        staging: PathBuf,
    },
}

struct Fixture {
    b: DynBackend,
    raw: Raw,
    tmp: tempfile::TempDir,
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn prefix(s: &str) -> Prefix {
    Prefix::new(s).unwrap()
}

fn fs_fixture() -> Option<Fixture> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let spec = FsTargetSpec {
        path: root.clone(),
        location: "here".into(),
        create: true,
    };
    Some(Fixture {
        b: Arc::new(FsBackend::new("suite-fs", &spec)),
        raw: Raw::Fs { root },
        tmp,
    })
}

fn s3_spec(env: &s3_common::S3Env, prefix: &str) -> S3TargetSpec {
    S3TargetSpec {
        bucket: env.bucket.clone(),
        prefix: prefix.to_string(),
        region: Some(env.region.clone()),
        endpoint: Some(env.endpoint.clone()),
        force_path_style: None,
        location: "there".into(),
        storage_class: None,
        access_key_id_env: Some("BACKUPCTL_TEST_S3_KEY_ID".into()),
        secret_access_key_env: Some("BACKUPCTL_TEST_S3_SECRET".into()),
        part_size_mib: Some(5),
        parts_in_flight: Some(3),
        max_attempts: Some(3),
    }
}

async fn s3_fixture() -> Option<Fixture> {
    let env = s3_common::s3_env()?;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = format!("suite/{}/", s3_common::unique("t"));
    let staging = tmp.path().join("staging");
    let b = S3Backend::new(
        Path::new("test.toml"),
        "suite-s3",
        &s3_spec(&env, &prefix),
        &staging,
    )
    .await
    .expect("s3 target");
    Some(Fixture {
        b: Arc::new(b),
        raw: Raw::S3 {
            env,
            prefix,
            staging,
        },
        tmp,
    })
}

impl Fixture {
    /// The object at `key`, read without the backend (None: absent).
    async fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.raw {
            Raw::Fs { root } => std::fs::read(root.join(key)).ok(),
            Raw::S3 { env, prefix, .. } => {
                let o = env
                    .client()
                    .get_object()
                    .bucket(&env.bucket)
                    .key(format!("{prefix}{key}"))
                    .send()
                    .await
                    .ok()?;
                Some(o.body.collect().await.unwrap().into_bytes().to_vec())
            }
        }
    }

    /// Store `data` under a name the backend would refuse as a key.
    async fn raw_plant(&self, name: &str, data: &[u8]) {
        match &self.raw {
            Raw::Fs { root } => {
                let p = root.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap();
            }
            Raw::S3 { env, prefix, .. } => {
                env.client()
                    .put_object()
                    .bucket(&env.bucket)
                    .key(format!("{prefix}{name}"))
                    .body(data.to_vec().into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// What interrupted or failed writes left: fs temporaries, S3 multipart
    /// uploads and staging files.
    async fn leftovers(&self) -> Vec<String> {
        let files = |dir: &Path, only_tmp: bool| -> Vec<String> {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| e.path().display().to_string())
                .filter(|p| !only_tmp || p.contains(".tmp-"))
                .collect()
        };
        match &self.raw {
            Raw::Fs { root } => files(root, true),
            Raw::S3 {
                env,
                prefix,
                staging,
            } => {
                let uploads = env
                    .client()
                    .list_multipart_uploads()
                    .bucket(&env.bucket)
                    .prefix(prefix)
                    .send()
                    .await
                    .unwrap();
                let mut out: Vec<String> = uploads
                    .uploads()
                    .iter()
                    .map(|u| format!("upload {}", u.key().unwrap_or_default()))
                    .collect();
                out.extend(files(staging, false));
                out
            }
        }
    }

    /// A name a backend may hold (stored by someone else) that is not a key.
    fn odd_name(&self) -> &'static str {
        match self.raw {
            Raw::Fs { .. } => "o/ctl\u{1}name",
            Raw::S3 { .. } => "o//double",
        }
    }

    /// Listed keys, without the marker (which an fs `create = true` target
    /// writes with its first object).
    async fn listed_data(&self, p: &Prefix) -> Vec<String> {
        self.b
            .list(p)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .filter(|k| k != "backupctl-target.json")
            .collect()
    }

    fn scratch(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

/// Read a stream to its end on a blocking thread (as the unpacker does).
async fn read_blocking(r: ObjectReader) -> Vec<u8> {
    let mut r = r.into_blocking_read();
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    })
    .await
    .unwrap()
}

/// Read a stream to its end asynchronously.
async fn read_async(r: ObjectReader) -> Vec<u8> {
    let mut v = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r.into_async_read(), &mut v)
        .await
        .unwrap();
    v
}

async fn put_get_stat(f: Fixture) {
    let t = &f.b;
    t.put_bytes(&key("p/small.txt"), b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(t.get_bytes(&key("p/small.txt")).await.unwrap(), b"hello");
    assert_eq!(t.stat(&key("p/small.txt")).await.unwrap(), Some(5));
    // A file of several 5 MiB parts (multipart on S3), and one of zero bytes.
    let big = s3_common::noise(13 * 1024 * 1024 + 17, 3);
    let path = f.scratch("big.bin", &big);
    t.put_file(&key("p/big.bin"), &path).await.unwrap();
    assert_eq!(
        t.stat(&key("p/big.bin")).await.unwrap(),
        Some(big.len() as u64)
    );
    let blocking = read_blocking(t.get(&key("p/big.bin")).await.unwrap()).await;
    assert!(blocking == big, "streamed (blocking) download differs");
    let streamed = read_async(t.get(&key("p/big.bin")).await.unwrap()).await;
    assert!(streamed == big, "streamed (async) download differs");
    let empty = f.scratch("empty", b"");
    t.put_file(&key("p/empty"), &empty).await.unwrap();
    assert_eq!(t.get_bytes(&key("p/empty")).await.unwrap(), b"");
    assert_eq!(t.stat(&key("p/empty")).await.unwrap(), Some(0));
    // Overwrite replaces.
    t.put_bytes(&key("p/small.txt"), b"bye".to_vec())
        .await
        .unwrap();
    assert_eq!(t.get_bytes(&key("p/small.txt")).await.unwrap(), b"bye");
    // What was stored is what an independent reader sees.
    assert!(f.raw_get("p/big.bin").await.unwrap() == big);
    assert_eq!(f.raw_get("p/small.txt").await.unwrap(), b"bye");
}

async fn get_range(f: Fixture) {
    let t = &f.b;
    let data = s3_common::noise(7 * 1024 * 1024 + 3, 11);
    let size = data.len() as u64;
    t.put_file(&key("r/obj"), &f.scratch("obj", &data))
        .await
        .unwrap();
    // Random ranges (a fixed seed), some spanning most of the object.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..12 {
        let offset = next() % size;
        let len = 1 + next() % (size - offset);
        let got = read_blocking(t.get_range(&key("r/obj"), offset, len).await.unwrap()).await;
        assert!(
            got == data[offset as usize..(offset + len) as usize],
            "range {offset}+{len}"
        );
    }
    // At the end: the last bytes, the last byte, nothing at the very end.
    let tail = read_async(t.get_range(&key("r/obj"), size - 100, 100).await.unwrap()).await;
    assert!(tail == data[data.len() - 100..]);
    let last = read_async(t.get_range(&key("r/obj"), size - 1, 1).await.unwrap()).await;
    assert_eq!(last, &data[data.len() - 1..]);
    let none = read_async(t.get_range(&key("r/obj"), size, 0).await.unwrap()).await;
    assert!(none.is_empty());
    let whole = read_blocking(t.get_range(&key("r/obj"), 0, size).await.unwrap()).await;
    assert!(whole == data);
    // Outside the object: refused, not shortened.
    for (offset, len) in [(size - 10, 11), (size, 1), (size + 5, 1), (size + 1, 0)] {
        match t.get_range(&key("r/obj"), offset, len).await {
            Err(StorageError::Permanent { message, .. }) => {
                assert!(message.contains("outside the object"), "{message}")
            }
            Err(e) => panic!("range {offset}+{len}: {e}"),
            Ok(_) => panic!("range {offset}+{len} outside the object was served"),
        }
    }
    assert!(t
        .get_range(&key("r/absent"), 0, 1)
        .await
        .err()
        .unwrap()
        .is_not_found());
}

async fn get_limited(f: Fixture) {
    let t = &f.b;
    let data = s3_common::noise(100_000, 4);
    t.put_bytes(&key("g/x"), data.clone()).await.unwrap();
    assert_eq!(t.get_limited(&key("g/x"), 100_000).await.unwrap(), data);
    assert_eq!(t.get_limited(&key("g/x"), 1 << 20).await.unwrap(), data);
    match t.get_limited(&key("g/x"), 99_999).await {
        Err(StorageError::Permanent { message, .. }) => {
            assert!(message.contains("larger than 99999 bytes"), "{message}")
        }
        other => panic!("over the limit: {:?}", other.map(|v| v.len())),
    }
    assert!(t
        .get_limited(&key("g/absent"), 10)
        .await
        .unwrap_err()
        .is_not_found());
}

async fn missing_keys(f: Fixture) {
    let t = &f.b;
    assert!(matches!(
        t.get(&key("nope/x")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(t
        .get_bytes(&key("nope/x"))
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(t.stat(&key("nope/x")).await.unwrap(), None);
    t.delete(&key("nope/x"))
        .await
        .expect("deleting an absent key is ok");
    assert!(t.list(&prefix("nope/")).await.unwrap().is_empty());
    // A directory is not an object.
    t.put_bytes(&key("d/sub/x"), b"1".to_vec()).await.unwrap();
    assert_eq!(t.stat(&key("d/sub")).await.unwrap(), None);
}

async fn list_and_delete(f: Fixture) {
    let t = &f.b;
    // More than one listing page on S3 (1000 keys per page).
    use futures::stream::StreamExt;
    let n = 1003;
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let t = t.clone();
            async move {
                t.put_bytes(&key(&format!("l/k{i:05}")), vec![b'x'; i % 7])
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(results.iter().all(|r| r.is_ok()));
    t.put_bytes(&key("lx/other"), b"1".to_vec()).await.unwrap();
    t.put_bytes(&key("l.a"), b"22".to_vec()).await.unwrap();
    let listed = t.list(&prefix("l/")).await.unwrap();
    assert_eq!(listed.len(), n, "listing must be complete");
    for (i, o) in listed.iter().enumerate() {
        assert_eq!(o.key.as_str(), format!("l/k{i:05}"));
        assert_eq!(o.size, (i % 7) as u64);
    }
    assert_eq!(t.list(&prefix("lx/")).await.unwrap().len(), 1);
    // A prefix is a start of keys, not a directory; the result is sorted.
    let all_l = t.list(&prefix("l")).await.unwrap();
    assert_eq!(all_l.len(), n + 2);
    assert!(all_l.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert_eq!(all_l[0].key.as_str(), "l.a");
    assert_eq!(f.listed_data(&Prefix::all()).await.len(), n + 2);
    t.delete(&key("l/k00005")).await.unwrap();
    assert_eq!(t.stat(&key("l/k00005")).await.unwrap(), None);
    assert_eq!(t.list(&prefix("l/")).await.unwrap().len(), n - 1);
    t.delete(&key("l/k00005")).await.unwrap();
}

/// Names that are not keys are refused before they reach a backend, and
/// what someone else stored under such a name is left out of listings.
async fn odd_names(f: Fixture) {
    for bad in [
        "",
        "/abs",
        "a//b",
        "a/",
        ".",
        "..",
        "../up",
        "a/../../b",
        "nul\0",
        "new\nline",
        "tab\t",
    ] {
        assert!(ObjectKey::new(bad).is_err(), "{bad:?} accepted as a key");
    }
    for bad in ["/", "../", "a//", "x\0"] {
        assert!(Prefix::new(bad).is_err(), "{bad:?} accepted as a prefix");
    }
    let t = &f.b;
    // Odd but valid names work like any other.
    for odd in [
        "o/with space",
        "o/ünïcödé",
        "o/.hidden",
        "o/a.b.c",
        "o/x%20y",
        "o/-dash",
    ] {
        t.put_bytes(&key(odd), odd.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(t.get_bytes(&key(odd)).await.unwrap(), odd.as_bytes());
    }
    t.put_bytes(&key("o/zz"), b"ok".to_vec()).await.unwrap();
    f.raw_plant(f.odd_name(), b"planted").await;
    assert_eq!(f.raw_get(f.odd_name()).await.unwrap(), b"planted");
    let listed = f.listed_data(&prefix("o/")).await;
    assert_eq!(listed.len(), 7, "{listed:?}");
    assert!(listed.iter().all(|k| ObjectKey::new(k.as_str()).is_ok()));
}

/// A reader never sees a partial object while a large write is in flight:
/// neither a 24 MiB `put_file` (multipart on S3) nor an upload being
/// written and committed.
async fn atomic_writes(f: Fixture) {
    let t = f.b.clone();
    let data = s3_common::noise(24 * 1024 * 1024, 9);
    let path = f.scratch("atomic.bin", &data);
    let up = {
        let (t, path) = (t.clone(), path.clone());
        tokio::spawn(async move { t.put_file(&key("a/atomic.bin"), &path).await })
    };
    let watch = |name: &'static str| {
        let t = t.clone();
        let size = data.len() as u64;
        async move {
            if let Some(s) = t.stat(&key(name)).await.unwrap() {
                assert_eq!(s, size, "partial object visible");
            }
            assert!(t
                .list(&prefix("a/"))
                .await
                .unwrap()
                .iter()
                .all(|o| o.size == size));
        }
    };
    while !up.is_finished() {
        watch("a/atomic.bin").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    up.await.unwrap().unwrap();
    assert!(t.get_bytes(&key("a/atomic.bin")).await.unwrap() == data);

    // An upload: nothing visible while written, all of it once committed.
    let mut u = t.upload(&key("a")).await.unwrap();
    let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let u = tokio::task::spawn_blocking(move || {
        for c in chunks {
            u.write_all(&c).unwrap();
        }
        u
    })
    .await
    .unwrap();
    assert_eq!(t.list(&prefix("a/")).await.unwrap().len(), 1);
    let commit = tokio::spawn(async move { u.commit(&key("a/committed.bin")).await });
    while !commit.is_finished() {
        watch("a/committed.bin").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(commit.await.unwrap().unwrap(), "stored");
    assert!(f.raw_get("a/committed.bin").await.unwrap() == data);
    assert!(f.leftovers().await.is_empty(), "{:?}", f.leftovers().await);
}

/// A save that fails leaves nothing behind: no object, no temporary, no
/// upload in progress.
async fn failed_saves_leave_nothing(f: Fixture) {
    let t = &f.b;
    let gone = f.tmp.path().join("does-not-exist");
    assert!(t.put_file(&key("f/x"), &gone).await.is_err());
    assert_eq!(t.stat(&key("f/x")).await.unwrap(), None);
    // An upload aborted, and one dropped unfinished.
    let mut u = t.upload(&key("f")).await.unwrap();
    u.write_all(&s3_common::noise(3 << 20, 1)).unwrap();
    u.abort();
    let mut u = t.upload(&key("f")).await.unwrap();
    u.write_all(b"half").unwrap();
    drop(u);
    assert!(t.list(&prefix("f")).await.unwrap().is_empty());
    assert!(f.leftovers().await.is_empty(), "{:?}", f.leftovers().await);
    // Nothing was left under any name.
    assert!(f.listed_data(&Prefix::all()).await.is_empty());
}

/// Upload, commit; commit of an object that is already there (equal size):
/// discarded, the stored one untouched; an upload's leftovers from a killed
/// process are removed by the next upload into the same directory.
async fn upload_commit_abort(f: Fixture) {
    let t = &f.b;
    let data = s3_common::noise(6 << 20, 21);
    let write = |mut u: Box<dyn backupctl::storage::Upload>, d: &[u8]| {
        u.write_all(d).unwrap();
        u
    };
    let u = write(t.upload(&key("u/archives")).await.unwrap(), &data);
    assert!(u.commit(&key("u/archives/one")).await.unwrap());
    assert!(t.get_bytes(&key("u/archives/one")).await.unwrap() == data);
    // The same bytes again: already there.
    let u = write(t.upload(&key("u/archives")).await.unwrap(), &data);
    assert!(!u.commit(&key("u/archives/one")).await.unwrap());
    assert!(f.raw_get("u/archives/one").await.unwrap() == data);
    // Different content of another size: stored.
    let u = write(t.upload(&key("u/archives")).await.unwrap(), b"short");
    assert!(u.commit(&key("u/archives/one")).await.unwrap());
    assert_eq!(t.get_bytes(&key("u/archives/one")).await.unwrap(), b"short");
    // An empty upload is an empty object.
    let u = t.upload(&key("u/archives")).await.unwrap();
    assert!(u.commit(&key("u/archives/empty")).await.unwrap());
    assert_eq!(t.stat(&key("u/archives/empty")).await.unwrap(), Some(0));
    let mut u = t.upload(&key("u/archives")).await.unwrap();
    u.write_all(&data).unwrap();
    u.abort();
    assert_eq!(
        t.list(&prefix("u/")).await.unwrap().len(),
        2,
        "abort stores nothing"
    );
    assert!(f.leftovers().await.is_empty(), "{:?}", f.leftovers().await);
}

/// A killed process's leftovers: the next upload into the same directory
/// removes them (the caller holds the policy lock), and cleanup_incomplete
/// removes those older than its age.
async fn cleanup_incomplete(f: Fixture) {
    let t = &f.b;
    t.put_bytes(&key("c/archives/keep"), b"k".to_vec())
        .await
        .unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    let plant_local = |dir: &Path, name: &str, old_time: bool| {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, b"left").unwrap();
        if old_time {
            filetime::set_file_mtime(&p, old).unwrap();
        }
        p
    };
    match &f.raw {
        Raw::Fs { root } => {
            let stale = plant_local(&root.join("c/other"), "x.tmp-00000001", true);
            let fresh = plant_local(&root.join("c/other"), "y.tmp-00000002", false);
            assert_eq!(
                t.cleanup_incomplete(Duration::from_secs(3600))
                    .await
                    .unwrap(),
                1
            );
            assert!(!stale.exists() && fresh.exists());
            // (c/archives was cleaned once already, by the first write there.)
            let killed = plant_local(&root.join("c/new"), "incoming.tmp-0badf00d", false);
            let u = t.upload(&key("c/new")).await.unwrap();
            assert!(
                !killed.exists(),
                "the next upload removes a killed run's temporary"
            );
            u.abort();
            assert_eq!(t.cleanup_incomplete(Duration::ZERO).await.unwrap(), 1);
            assert!(!fresh.exists());
        }
        Raw::S3 {
            env,
            prefix,
            staging,
        } => {
            let client = env.client();
            let created = client
                .create_multipart_upload()
                .bucket(&env.bucket)
                .key(format!("{prefix}c/archives/stale"))
                .send()
                .await
                .unwrap();
            assert!(created.upload_id().is_some());
            let stale = plant_local(&staging.join("c/other"), "incoming.tmp-1", true);
            let fresh = plant_local(&staging.join("c/other"), "incoming.tmp-2", false);
            assert_eq!(
                t.cleanup_incomplete(Duration::from_secs(3600))
                    .await
                    .unwrap(),
                1
            );
            assert!(!stale.exists() && fresh.exists());
            // The upload just started is younger than an hour; with no age
            // limit it goes too, with the fresh staging file.
            assert_eq!(t.cleanup_incomplete(Duration::ZERO).await.unwrap(), 2);
            assert!(!fresh.exists());
            let killed = plant_local(&staging.join("c/archives"), "incoming.tmp-3", false);
            let u = t.upload(&key("c/archives")).await.unwrap();
            assert!(
                !killed.exists(),
                "the next upload removes a killed run's staging file"
            );
            u.abort();
        }
    }
    assert!(f.leftovers().await.is_empty(), "{:?}", f.leftovers().await);
    assert_eq!(t.get_bytes(&key("c/archives/keep")).await.unwrap(), b"k");
}

/// init writes the marker once; an fs target without root or marker is
/// unavailable (an unmounted disk), never recreated unless `create = true`.
async fn init_and_readiness(f: Fixture) {
    let t = &f.b;
    match &f.raw {
        Raw::Fs { root } => {
            // create = true: not there yet, created by the first write.
            assert!(matches!(
                t.readiness().await.unwrap(),
                Readiness::CreatedOnFirstRun(_)
            ));
            assert!(t.list(&Prefix::all()).await.unwrap().is_empty());
            assert!(t.init().await.unwrap());
            assert!(root.join("backupctl-target.json").is_file());
            let spec = |path: PathBuf| FsTargetSpec {
                path,
                location: "x".into(),
                create: false,
            };
            let missing = FsBackend::new("gone", &spec(f.tmp.path().join("unmounted")));
            let unavailable =
                |r: Result<(), StorageError>| matches!(r, Err(StorageError::Unavailable { .. }));
            assert!(unavailable(missing.readiness().await.map(|_| ())));
            assert!(unavailable(missing.get(&key("x")).await.map(|_| ())));
            assert!(unavailable(missing.stat(&key("x")).await.map(|_| ())));
            assert!(unavailable(missing.list(&Prefix::all()).await.map(|_| ())));
            assert!(unavailable(
                missing.put_bytes(&key("x"), b"1".to_vec()).await
            ));
            assert!(unavailable(missing.upload(&key("d")).await.map(|_| ())));
            assert!(!f.tmp.path().join("unmounted").exists());
            // A root without the marker: the empty mount point of a disk.
            let bare = f.tmp.path().join("bare");
            std::fs::create_dir_all(&bare).unwrap();
            let no_marker = FsBackend::new("bare", &spec(bare.clone()));
            assert!(unavailable(no_marker.readiness().await.map(|_| ())));
            assert!(unavailable(no_marker.get(&key("x")).await.map(|_| ())));
            // init adopts an empty directory, refuses one holding other data.
            assert!(no_marker.init().await.unwrap());
            assert_eq!(no_marker.readiness().await.unwrap(), Readiness::Ready);
            let busy = f.tmp.path().join("busy");
            std::fs::create_dir_all(&busy).unwrap();
            std::fs::write(busy.join("photo.jpg"), b"x").unwrap();
            assert!(matches!(
                FsBackend::new("busy", &spec(busy)).init().await,
                Err(StorageError::Permanent { .. })
            ));
        }
        Raw::S3 { .. } => {
            assert_eq!(t.readiness().await.unwrap(), Readiness::Ready);
            assert!(t.init().await.unwrap());
        }
    }
    assert!(!t.init().await.unwrap(), "already a target");
    assert_eq!(t.readiness().await.unwrap(), Readiness::Ready);
    assert!(f.raw_get("backupctl-target.json").await.is_some());
}

fn capabilities(f: Fixture) {
    let c = f.b.capabilities();
    match f.raw {
        Raw::Fs { .. } => assert!(c.local_files && !c.multipart),
        Raw::S3 { .. } => assert!(!c.local_files && c.multipart),
    }
    assert!(c.ranged_reads);
    assert!(!c.object_lock);
}

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(f) = $make else { return };
                        super::$name(f).await;
                    }
                };
            }

            case!(put_get_stat);
            case!(get_range);
            case!(get_limited);
            case!(missing_keys);
            case!(list_and_delete);
            case!(odd_names);
            case!(atomic_writes);
            case!(failed_saves_leave_nothing);
            case!(upload_commit_abort);
            case!(cleanup_incomplete);
            case!(init_and_readiness);

            #[tokio::test]
            async fn capabilities() {
                let Some(f) = $make else { return };
                super::capabilities(f);
            }
        }
    };
}

suite!(fs, fs_fixture());
suite!(s3, s3_fixture().await);

/// What the S3 target stored is a plain object under the prefix, and a
/// multipart upload leaves nothing in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_are_plain_objects_under_the_prefix() {
    let Some(f) = s3_fixture().await else {
        return;
    };
    let Raw::S3 { env, prefix, .. } = &f.raw else {
        unreachable!()
    };
    let data = s3_common::noise(11 * 1024 * 1024, 5);
    f.b.put_file(&key("dir/f"), &f.scratch("f", &data))
        .await
        .unwrap();
    let got = env
        .client()
        .get_object()
        .bucket(&env.bucket)
        .key(format!("{prefix}dir/f"))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
    assert!(f.leftovers().await.is_empty(), "{:?}", f.leftovers().await);
}
