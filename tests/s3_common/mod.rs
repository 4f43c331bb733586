//! Shared test helpers. Sections are kept apart to ease merging.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the binary with `--config cfg` and arguments; returns the output.
pub fn run_cli(cfg: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = crate::common::bin();
    c.arg("--config").arg(cfg).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("running backupctl")
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Is the service required (CI)? Then a missing one is a failure, not a skip.
pub fn services_required() -> bool {
    std::env::var("BACKUPCTL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Skip (return false) or panic when a service's variables are missing.
pub fn service_available(service: &str, vars: &[&str]) -> bool {
    let missing: Vec<&&str> = vars
        .iter()
        .filter(|v| std::env::var(v).map(|x| x.is_empty()).unwrap_or(true))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{service} not available ({missing:?} unset): start it with scripts/services/{service}.sh start and source .services/{service}.env"
    );
    if services_required() {
        panic!("BACKUPCTL_TEST_REQUIRE_SERVICES=1 but {msg}");
    }
    eprintln!("skipped: {msg}");
    false
}

/// A fresh random hex string (unique names per test).
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}-{}-{:x}-{}",
        std::process::id(),
        t & 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// S3 (Garage) helpers
// ---------------------------------------------------------------------------

/// Connection details of a Garage instance.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
}

const S3_VARS: [&str; 5] = [
    "BACKUPCTL_TEST_S3_ENDPOINT",
    "BACKUPCTL_TEST_S3_BUCKET",
    "BACKUPCTL_TEST_S3_REGION",
    "BACKUPCTL_TEST_S3_KEY_ID",
    "BACKUPCTL_TEST_S3_SECRET",
];

/// The shared Garage instance (scripts/services/garage.sh start), or None (skipped).
pub fn s3_env() -> Option<S3Env> {
    if !service_available("garage", &S3_VARS) {
        return None;
    }
    let v = |k: &str| std::env::var(k).unwrap();
    Some(S3Env {
        endpoint: v(S3_VARS[0]),
        bucket: v(S3_VARS[1]),
        region: v(S3_VARS[2]),
        key_id: v(S3_VARS[3]),
        secret: v(S3_VARS[4]),
    })
}

impl S3Env {
    /// Environment for the child process: the key under the variable names
    /// the generated configs use.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TEST_S3_KEY_ID", self.key_id.clone()),
            ("TEST_S3_SECRET", self.secret.clone()),
        ]
    }

    /// A `[targets.NAME]` table for this server under `prefix`.
    pub fn target_toml(&self, name: &str, prefix: &str, location: &str, extra: &str) -> String {
        format!(
            "[targets.{name}]\ntype = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nregion = \"{}\"\nendpoint = \"{}\"\nlocation = \"{location}\"\naccess_key_id_env = \"TEST_S3_KEY_ID\"\nsecret_access_key_env = \"TEST_S3_SECRET\"\n{extra}\n",
            self.bucket, self.region, self.endpoint
        )
    }

    /// An independent S3 client (the SDK used directly, not backupctl's target).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.key_id,
                &self.secret,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every key under `prefix` (independent listing).
    pub fn list_keys(&self, prefix: &str) -> Vec<(String, i64)> {
        let client = self.client();
        let bucket = self.bucket.clone();
        let prefix = prefix.to_string();
        block_on(async move {
            let mut out = Vec::new();
            let mut pages = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(p) = pages.next().await {
                for o in p.expect("listing").contents() {
                    out.push((o.key().unwrap().to_string(), o.size().unwrap_or(0)));
                }
            }
            out
        })
    }

    /// In-progress multipart uploads under `prefix`.
    pub fn multipart_uploads(&self, prefix: &str) -> Vec<String> {
        let client = self.client();
        let bucket = self.bucket.clone();
        let prefix = prefix.to_string();
        block_on(async move {
            let out = client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .send()
                .await
                .expect("listing multipart uploads");
            out.uploads()
                .iter()
                .map(|u| u.key().unwrap_or_default().to_string())
                .collect()
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let client = self.client();
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        block_on(async move {
            let o = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get");
            o.body.collect().await.expect("body").into_bytes().to_vec()
        })
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        let client = self.client();
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        block_on(async move {
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(data.into())
                .send()
                .await
                .expect("put");
        })
    }

    pub fn delete(&self, key: &str) {
        let client = self.client();
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        block_on(async move {
            client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("delete");
        })
    }
}

/// Run a future on a private runtime (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A private Garage instance in its own directory (for tests that stop the
/// server); wiped on drop.
pub struct Garage {
    pub dir: PathBuf,
    pub env: S3Env,
}

fn garage_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/garage.sh")
}

impl Garage {
    /// Start a private instance (None when Garage is not available: skipped).
    pub fn start(tag: &str) -> Option<Garage> {
        s3_env()?; // the shared one runs, so garage is installed
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("garage-{tag}")));
        let mut g = Garage {
            dir,
            env: S3Env {
                endpoint: String::new(),
                bucket: String::new(),
                region: String::new(),
                key_id: String::new(),
                secret: String::new(),
            },
        };
        g.script("start");
        let envfile = std::fs::read_to_string(g.dir.join("env")).expect("garage env file");
        let get = |k: &str| {
            envfile
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap_or_else(|| panic!("{k} missing in garage env"))
                .to_string()
        };
        g.env = S3Env {
            endpoint: get(S3_VARS[0]),
            bucket: get(S3_VARS[1]),
            region: get(S3_VARS[2]),
            key_id: get(S3_VARS[3]),
            secret: get(S3_VARS[4]),
        };
        Some(g)
    }

    fn script(&self, cmd: &str) {
        let o = Command::new("bash")
            .arg(garage_script())
            .arg(cmd)
            .arg(&self.dir)
            .output()
            .expect("garage.sh");
        assert!(o.status.success(), "garage.sh {cmd}: {}", text(&o));
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    /// Start again: same port, key and data.
    pub fn restart(&self) {
        self.script("start");
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(garage_script())
            .arg("wipe")
            .arg(&self.dir)
            .output();
    }
}

/// Write `backupctl.toml` (with `targets`) and `policies/<policy>.toml` in
/// `dir`; returns the config path.
pub fn write_config(
    dir: &Path,
    targets_toml: &str,
    policy: &str,
    policy_targets: &[&str],
    source: &Path,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let cfg = dir.join("backupctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n\n{targets_toml}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let list = policy_targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.join("policies").join(format!("{policy}.toml")),
        format!(
            "schedule = \"30 2 * * *\"\ntargets = [{list}]\n\n[retention]\ndaily = 7\n\n[[sources]]\nname = \"site\"\ntype = \"files\"\npath = \"{}\"\n",
            source.display()
        ),
    )
    .unwrap();
    cfg
}

/// `n` bytes that do not compress (a fast PRNG seeded by `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A small tree with text, binary, empty and nested files.
pub fn make_tree(root: &Path, big: usize) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("hello.txt"), "hello world\n").unwrap();
    std::fs::write(root.join("a/b/grüße.txt"), "unicode\n".repeat(100)).unwrap();
    std::fs::write(root.join("a/empty"), b"").unwrap();
    std::fs::write(root.join("a/noise.bin"), noise(big, 7)).unwrap();
}

/// Every regular file under `root`: relative path -> content.
pub fn tree_contents(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &p, out);
            } else if ft.is_file() {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------
// Format v2 on an S3 target, read independently (the SDK, `b3sum`, `zstd`):
// `<prefix><policy>/packs/<hh>/<name>.pack`, `<prefix><policy>/lists/<hash>.extents`,
// `<prefix><policy>/snapshots/<id>.{sig,json}`. `prefix` ends with '/' (or is empty).
// ---------------------------------------------------------------------------

/// `b3sum` (the system tool) of bytes.
pub fn b3sum_bytes(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("b3sum")
        .arg("--no-names")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("b3sum installed (scripts/install-deps.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(o.status.success(), "b3sum failed");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Decompress concatenated zstd frames with the `zstd` CLI.
pub fn zstd_decompress(compressed: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd installed");
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || stdin.write_all(&compressed));
    let o = child.wait_with_output().unwrap();
    let _ = w.join().unwrap();
    assert!(o.status.success(), "zstd -dc failed");
    o.stdout
}

/// The pack keys of a policy in a listing (`(key, size)` pairs).
pub fn pack_keys(keys: &[(String, i64)], prefix: &str, policy: &str) -> Vec<String> {
    let p = format!("{prefix}{policy}/packs/");
    let mut v: Vec<String> = keys
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&p) && k.ends_with(".pack"))
        .cloned()
        .collect();
    v.sort();
    v
}

/// The extent list keys of a policy in a listing.
pub fn list_keys_of(keys: &[(String, i64)], prefix: &str, policy: &str) -> Vec<String> {
    let p = format!("{prefix}{policy}/lists/");
    let mut v: Vec<String> = keys
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&p) && k.ends_with(".extents"))
        .cloned()
        .collect();
    v.sort();
    v
}

/// The manifest keys (`.json`) of a policy in a listing, oldest first.
pub fn manifest_keys(keys: &[(String, i64)], prefix: &str, policy: &str) -> Vec<String> {
    let p = format!("{prefix}{policy}/snapshots/");
    let mut v: Vec<String> = keys
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(&p) && k.ends_with(".json"))
        .cloned()
        .collect();
    v.sort();
    v
}

impl S3Env {
    /// A manifest, parsed.
    pub fn manifest(&self, prefix: &str, policy: &str, id: &str) -> serde_json::Value {
        let data = self.get(&format!("{prefix}{policy}/snapshots/{id}.json"));
        serde_json::from_slice(&data).expect("manifest JSON")
    }

    /// The text of extent list `list`, checked against its name with `b3sum`.
    pub fn list_text(&self, prefix: &str, policy: &str, list: &str) -> String {
        let text = self.get(&format!("{prefix}{policy}/lists/{list}.extents"));
        assert_eq!(
            b3sum_bytes(&text),
            list,
            "extent list {list} is not what its name says"
        );
        String::from_utf8(text).unwrap()
    }

    /// The pack keys extent list `list` names.
    pub fn packs_of_list(&self, prefix: &str, policy: &str, list: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .list_text(prefix, policy, list)
            .lines()
            .map(|l| format!("{prefix}{policy}/{}", l.split(' ').next().unwrap()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The stream extent list `list` describes, rebuilt as RESTORE-README
    /// says: each extent sliced out of its pack object, concatenated, `zstd -dc`.
    pub fn stream_from_list(&self, prefix: &str, policy: &str, list: &str) -> Vec<u8> {
        let text = self.list_text(prefix, policy, list);
        let mut packs: std::collections::HashMap<String, Vec<u8>> = Default::default();
        let mut compressed = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 3, "extent line {line:?}");
            let bytes = packs
                .entry(f[0].to_string())
                .or_insert_with(|| self.get(&format!("{prefix}{policy}/{}", f[0])));
            let (o, l): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            compressed.extend_from_slice(&bytes[o..o + l]);
        }
        zstd_decompress(compressed)
    }

    /// The tar stream of `source` in snapshot `id`, checked against the
    /// manifest's BLAKE3 with `b3sum`.
    pub fn source_tar(&self, prefix: &str, policy: &str, id: &str, source: &str) -> Vec<u8> {
        let m = self.manifest(prefix, policy, id);
        let rec = m["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == source)
            .unwrap_or_else(|| panic!("no source {source} in {m}"))
            .clone();
        let tar = self.stream_from_list(prefix, policy, rec["stream"]["list"].as_str().unwrap());
        assert_eq!(
            b3sum_bytes(&tar),
            rec["stream"]["blake3"].as_str().unwrap(),
            "the rebuilt tar stream of {source} is not what the manifest says"
        );
        tar
    }

    /// The lists and packs snapshot `id` references (keys).
    pub fn references(&self, prefix: &str, policy: &str, id: &str) -> (Vec<String>, Vec<String>) {
        let m = self.manifest(prefix, policy, id);
        let (mut lists, mut packs) = (Vec::new(), Vec::new());
        for s in m["sources"].as_array().unwrap() {
            for k in ["stream", "index"] {
                let l = s[k]["list"].as_str().unwrap();
                lists.push(format!("{prefix}{policy}/lists/{l}.extents"));
                packs.extend(self.packs_of_list(prefix, policy, l));
            }
        }
        lists.sort();
        lists.dedup();
        packs.sort();
        packs.dedup();
        (lists, packs)
    }
}

/// Extract a tar stream with the system `tar` into `dest` (created).
pub fn untar(tar: &[u8], dest: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(dest).unwrap();
    let mut child = Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(tar).unwrap();
    assert!(child.wait().unwrap().success(), "tar -x failed");
}
