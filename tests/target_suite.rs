//! One storage-target test suite, run against every backend: an fs directory
//! and an S3 bucket prefix on the loopback Garage (skipped without it unless
//! BACKUPCTL_TEST_REQUIRE_SERVICES=1). Checks go through the `Target` trait
//! and, for what was stored, independently (the file system, or the S3 API).

mod s3_common;

use backupctl::config::{FsTargetSpec, S3TargetSpec};
use backupctl::target::{fs::FsTarget, s3::S3Target, ByteStream, DynTarget, Target, TargetError};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

struct Fixture {
    target: DynTarget,
    _tmp: tempfile::TempDir,
}

fn fs_target() -> Option<Fixture> {
    let tmp = tempfile::tempdir().unwrap();
    let spec = FsTargetSpec {
        path: tmp.path().join("root"),
        location: "here".into(),
        create: true,
    };
    Some(Fixture {
        target: Arc::new(FsTarget::new("suite-fs", &spec)),
        _tmp: tmp,
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

async fn s3_target() -> Option<Fixture> {
    let env = s3_common::s3_env()?;
    let prefix = format!("suite/{}/", s3_common::unique("t"));
    let t = S3Target::new(Path::new("test.toml"), "suite-s3", &s3_spec(&env, &prefix))
        .await
        .expect("s3 target");
    Some(Fixture {
        target: Arc::new(t),
        _tmp: tempfile::tempdir().unwrap(),
    })
}

async fn read_stream(s: ByteStream) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        s.into_blocking_read().read_to_end(&mut v).unwrap();
        v
    })
    .await
    .unwrap()
}

// The stream must be converted inside the runtime; do it here.
async fn get_all(t: &DynTarget, key: &str) -> Vec<u8> {
    let s = t.get(key).await.expect("get");
    match s {
        ByteStream::File(_) => read_stream(s).await,
        ByteStream::Async(mut r) => {
            let mut v = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v)
                .await
                .unwrap();
            v
        }
    }
}

async fn put_get_stat(t: DynTarget, dir: &Path) {
    t.put_bytes("p/small.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(t.get_bytes("p/small.txt").await.unwrap(), b"hello");
    assert_eq!(t.stat("p/small.txt").await.unwrap(), Some(5));
    // A file of several 5 MiB parts (multipart on S3), and one of zero bytes.
    let big = s3_common::noise(13 * 1024 * 1024 + 17, 3);
    let path = dir.join("big.bin");
    std::fs::write(&path, &big).unwrap();
    t.put_file("p/big.bin", &path).await.unwrap();
    assert_eq!(t.stat("p/big.bin").await.unwrap(), Some(big.len() as u64));
    let back = get_all(&t, "p/big.bin").await;
    assert_eq!(
        blake3::hash(&back),
        blake3::hash(&big),
        "streamed download differs"
    );
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    t.put_file("p/empty", &empty).await.unwrap();
    assert_eq!(t.get_bytes("p/empty").await.unwrap(), b"");
    // Overwrite replaces.
    t.put_bytes("p/small.txt", b"bye".to_vec()).await.unwrap();
    assert_eq!(t.get_bytes("p/small.txt").await.unwrap(), b"bye");
}

async fn missing_keys(t: DynTarget) {
    assert!(matches!(
        t.get("nope/x").await,
        Err(TargetError::NotFound { .. })
    ));
    assert!(t.get_bytes("nope/x").await.unwrap_err().is_not_found());
    assert_eq!(t.stat("nope/x").await.unwrap(), None);
    t.delete("nope/x")
        .await
        .expect("deleting an absent key is ok");
    assert!(t.list("nope/").await.unwrap().is_empty());
}

async fn list_and_delete(t: DynTarget) {
    // More than one listing page on S3 (1000 keys per page).
    use futures::stream::StreamExt;
    let n = 1003;
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let t = t.clone();
            async move { t.put_bytes(&format!("l/k{i:05}"), vec![b'x'; i % 7]).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(results.iter().all(|r| r.is_ok()));
    t.put_bytes("lx/other", b"1".to_vec()).await.unwrap();
    let listed = t.list("l/").await.unwrap();
    assert_eq!(listed.len(), n, "listing must be complete");
    for (i, o) in listed.iter().enumerate() {
        assert_eq!(o.key, format!("l/k{i:05}"));
        assert_eq!(o.size, (i % 7) as u64);
    }
    assert_eq!(t.list("lx/").await.unwrap().len(), 1);
    assert_eq!(t.list("l").await.unwrap().len(), n + 1);
    t.delete("l/k00005").await.unwrap();
    assert_eq!(t.stat("l/k00005").await.unwrap(), None);
    assert_eq!(t.list("l/").await.unwrap().len(), n - 1);
}

/// A reader never sees a partial object while a large upload is in flight.
async fn atomic_put(t: DynTarget, dir: &Path) {
    let data = s3_common::noise(24 * 1024 * 1024, 9);
    let path = dir.join("atomic.bin");
    std::fs::write(&path, &data).unwrap();
    let up = {
        let (t, path) = (t.clone(), path.clone());
        tokio::spawn(async move { t.put_file("a/atomic.bin", &path).await })
    };
    let mut seen = 0;
    while !up.is_finished() {
        if let Some(size) = t.stat("a/atomic.bin").await.unwrap() {
            assert_eq!(size, data.len() as u64, "partial object visible");
            seen += 1;
        }
        assert!(t
            .list("a/")
            .await
            .unwrap()
            .iter()
            .all(|o| o.size == data.len() as u64));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    up.await.unwrap().unwrap();
    let _ = seen;
    assert_eq!(
        blake3::hash(&t.get_bytes("a/atomic.bin").await.unwrap()),
        blake3::hash(&data)
    );
}

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_get_stat() {
                let Some(f) = $make else { return };
                let d = tempfile::tempdir().unwrap();
                super::put_get_stat(f.target.clone(), d.path()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn missing_keys() {
                let Some(f) = $make else { return };
                super::missing_keys(f.target.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_and_delete() {
                let Some(f) = $make else { return };
                super::list_and_delete(f.target.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn atomic_put() {
                let Some(f) = $make else { return };
                let d = tempfile::tempdir().unwrap();
                super::atomic_put(f.target.clone(), d.path()).await;
            }
        }
    };
}

suite!(fs, fs_target());
suite!(s3, s3_target().await);

/// What the S3 target stored is what an independent client reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_are_plain_objects_under_the_prefix() {
    let Some(env) = s3_common::s3_env() else {
        return;
    };
    let prefix = format!("suite/{}/", s3_common::unique("plain"));
    let t = S3Target::new(Path::new("t.toml"), "x", &s3_spec(&env, &prefix))
        .await
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let data = s3_common::noise(11 * 1024 * 1024, 5);
    std::fs::write(d.path().join("f"), &data).unwrap();
    t.put_file("dir/f", &d.path().join("f")).await.unwrap();
    let client = env.client();
    let got = client
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
    let uploads = client
        .list_multipart_uploads()
        .bucket(&env.bucket)
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "no upload left in progress: {:?}",
        uploads.uploads()
    );
}
