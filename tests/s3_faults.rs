//! Fault tests with a private Garage instance each (so stopping it does not
//! disturb other tests): the server stopped in the middle of an upload,
//! restore while the first target is down, and a 1 GiB upload with bounded
//! memory.

use crate::s3_common;

use s3_common::{run_cli, text, Garage};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Setup {
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    src: PathBuf,
    prefix: String,
    garage: Garage,
    envs: Vec<(&'static str, String)>,
}

impl Setup {
    fn new(
        tag: &str,
        order: &[&str],
        s3_extra: &str,
        fill: impl FnOnce(&std::path::Path),
    ) -> Option<Setup> {
        let garage = Garage::start(tag)?;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fill(&src);
        let prefix = format!("{}/", s3_common::unique(tag));
        let targets = format!(
            "[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"office\"\n\n{}",
            tmp.path().join("fs-target").display(),
            garage
                .env
                .target_toml("offsite", &prefix, "garage-dc", s3_extra)
        );
        let cfg = s3_common::write_config(&tmp.path().join("conf"), &targets, "site", order, &src);
        let envs = garage.env.child_env();
        Some(Setup {
            tmp,
            cfg,
            src,
            prefix,
            garage,
            envs,
        })
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run_cli(&self.cfg, args, &self.envs())
    }

    fn restore_and_compare(&self, extra: &[&str]) -> std::process::Output {
        let to = self.tmp.path().join(s3_common::unique("restore"));
        let mut args = vec!["restore", "site", "--to", to.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        assert_eq!(o.status.code(), Some(0), "restore: {}", text(&o));
        assert_eq!(
            s3_common::tree_contents(&to.join("site")),
            s3_common::tree_contents(&self.src),
            "restored tree differs from the source"
        );
        o
    }
}

/// The files under an fs target's root as an S3 listing under `prefix`.
fn files_as_keys(root: &std::path::Path, prefix: &str) -> Vec<(String, i64)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy();
            (format!("{prefix}{rel}"), e.metadata().unwrap().len() as i64)
        })
        .collect()
}

#[test]
fn server_stopped_mid_upload_then_sync_completes() {
    let Some(s) = Setup::new(
        "midupload",
        &["local", "offsite"],
        "part_size_mib = 5\nparts_in_flight = 1\nmax_attempts = 2",
        |p| s3_common::make_tree(p, 160 * 1024 * 1024),
    ) else {
        return;
    };
    let mut child = crate::common::bin()
        .arg("--config")
        .arg(&s.cfg)
        .arg("run")
        .envs(s.envs())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the archive's multipart upload is under way, then stop the server.
    let t0 = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run finished before the server could be stopped"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no upload started");
        if !s.garage.env.multipart_uploads(&s.prefix).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    s.garage.stop();
    let o = child.wait_with_output().unwrap();
    eprintln!("run with the server stopped mid-upload: {}", text(&o));
    assert_eq!(o.status.code(), Some(3), "partial: {}", text(&o));
    let all = text(&o);
    assert!(all.contains("target offsite"), "{all}");
    // The fs target completed.
    let snaps: Vec<_> = std::fs::read_dir(s.tmp.path().join("fs-target/site/snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .collect();
    assert_eq!(snaps.len(), 1);

    s.garage.restart();
    let keys = s.garage.env.list_keys(&s.prefix);
    assert!(
        !keys.iter().any(|(k, _)| k.contains("/snapshots/")),
        "no snapshot (manifest or signature) may be visible on s3: {keys:?}"
    );
    // Whatever packs or lists did land are whole: byte for byte the fs
    // target's copies (an interrupted multipart upload never shows).
    let fs_root = s.tmp.path().join("fs-target");
    for (k, _) in &keys {
        if k.ends_with(".pack") || k.ends_with(".extents") {
            let rel = k.strip_prefix(&s.prefix).unwrap();
            assert_eq!(
                s.garage.env.get(k),
                std::fs::read(fs_root.join(rel)).unwrap(),
                "{k} is not a complete copy"
            );
        }
    }
    let fs_packs = s3_common::pack_keys(&files_as_keys(&fs_root, &s.prefix), &s.prefix, "site");
    assert!(
        s3_common::pack_keys(&keys, &s.prefix, "site").len() < fs_packs.len(),
        "the outage stopped the pack uploads"
    );
    // The fs target's copy restores on its own, and its tar stream is what
    // its manifest says.
    s.restore_and_compare(&["--target", "local"]);
    let o = s.run(&["list", "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        l[0]["snapshots"][0]["targets"],
        serde_json::json!(["local"])
    );

    // Sync: aborts the upload the outage left behind, copies the snapshot.
    let o = s.run(&["sync", "--abort-uploads-older-than", "0s", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["copies"][0]["target"], "offsite");
    assert_eq!(r[0]["copies"][0]["status"], "copied");
    assert!(
        s.garage.env.multipart_uploads(&s.prefix).is_empty(),
        "stale multipart uploads are aborted"
    );
    let keys = s.garage.env.list_keys(&s.prefix);
    assert!(
        keys.iter()
            .any(|(k, _)| k.contains("/snapshots/") && k.ends_with(".json")),
        "{keys:?}"
    );
    // offsite now holds every pack, identical to the fs target's.
    assert_eq!(
        s3_common::pack_keys(&keys, &s.prefix, "site"),
        fs_packs,
        "the packs on offsite after sync"
    );
    let id = snaps[0]
        .as_ref()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .trim_end_matches(".json")
        .to_string();
    let (_, used) = s.garage.env.references(&s.prefix, "site", &id);
    for k in &used {
        let rel = k.strip_prefix(&s.prefix).unwrap();
        assert_eq!(
            s.garage.env.get(k),
            std::fs::read(fs_root.join(rel)).unwrap(),
            "{k}"
        );
    }

    let o = s.run(&["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for t in v[0]["snapshots"][0]["targets"].as_array().unwrap() {
        assert_eq!(t["result"], "ok", "{t}");
    }
    s.restore_and_compare(&["--target", "offsite"]);
}

#[test]
fn restore_fails_over_when_the_first_target_is_down() {
    let Some(s) = Setup::new("down", &["offsite", "local"], "max_attempts = 2", |p| {
        s3_common::make_tree(p, 3 * 1024 * 1024)
    }) else {
        return;
    };
    let o = s.run(&["run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    s.garage.stop();
    let t0 = Instant::now();
    let o = s.restore_and_compare(&[]);
    eprintln!(
        "restore with the first target down ({:.1} s): {}",
        t0.elapsed().as_secs_f64(),
        text(&o)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "a dead endpoint must fail fast"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("from target local"),
        "{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("offsite") && l.contains("unreachable")),
        "{err}"
    );
    // verify reports the outage as partial (3), naming the target.
    let o = s.run(&["verify", "--all"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("target offsite: unreachable"));
}

#[test]
fn one_gib_archive_uploads_with_bounded_memory() {
    let Some(s) = Setup::new("1gib", &["offsite"], "", |p| {
        std::fs::create_dir_all(p).unwrap();
        let mut f = std::fs::File::create(p.join("big.bin")).unwrap();
        for i in 0..64 {
            f.write_all(&s3_common::noise(16 << 20, 100 + i)).unwrap();
        }
    }) else {
        return;
    };
    let o = crate::common::bin_via("/usr/bin/time", &["-v"])
        .arg("--config")
        .arg(&s.cfg)
        .args(["run", "--json"])
        .envs(s.envs())
        .output()
        .expect("/usr/bin/time (Debian package `time`)");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let kb: u64 = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .expect("peak RSS in /usr/bin/time output")
        .trim()
        .parse()
        .unwrap();
    eprintln!("peak RSS for a 1 GiB upload: {} MiB", kb / 1024);
    assert!(kb < 200 * 1024, "peak RSS {kb} kB is over 200 MB");
    // Every pack the stream's extents use is there, complete (at least as
    // long as its extents reach), the extents cover the compressed size
    // `run` reported, and no upload lingers.
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = r[0]["snapshot"].as_str().unwrap();
    let size = r[0]["sources"][0]["archive_size"].as_i64().unwrap();
    assert!(size > 1 << 30, "incompressible: {size}");
    let env = &s.garage.env;
    let keys: std::collections::BTreeMap<String, i64> =
        env.list_keys(&s.prefix).into_iter().collect();
    let m = env.manifest(&s.prefix, "site", id);
    assert!(
        m["sources"][0]["stream"]["size"].as_u64().unwrap() > 1 << 30,
        "the tar stream holds the whole file"
    );
    let list = m["sources"][0]["stream"]["list"].as_str().unwrap();
    let text = env.list_text(&s.prefix, "site", list);
    let mut covered = 0i64;
    let mut reach: std::collections::BTreeMap<String, i64> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (off, len): (i64, i64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        covered += len;
        let end = reach
            .entry(format!("{}site/{}", s.prefix, f[0]))
            .or_default();
        *end = (*end).max(off + len);
    }
    assert_eq!(covered, size, "the extents cover archive_size");
    assert!(
        reach.len() >= 32,
        "1 GiB in packs of at most 64 MiB: {reach:?}"
    );
    for (k, end) in &reach {
        let got = keys.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert!(got >= end, "{k}: {got} bytes, extents reach {end}");
        assert!(*got <= 64 << 20, "{k}: {got} bytes, over PACK_MAX");
    }
    assert!(env.multipart_uploads(&s.prefix).is_empty());
}

/// A TCP relay to the S3 server that, once armed, cuts every connection whose
/// response passes `cut_after` bytes: a connection reset in the middle of a
/// download (the server itself is real). With `up_rate`, requests are passed
/// on at that many bytes per second: a slow link.
struct CuttingRelay {
    endpoint: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingRelay {
    fn start(upstream: &str, cut_after: usize, up_rate: Option<usize>) -> CuttingRelay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let up = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let armed2 = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    match up_rate {
                        None => {
                            let _ = std::io::copy(&mut c_in, &mut s_out);
                        }
                        Some(rate) => {
                            let mut buf = vec![0u8; rate / 10];
                            while let Ok(n) = c_in.read(&mut buf) {
                                if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let armed = armed2.clone();
                std::thread::spawn(move || {
                    let (mut s_in, mut c_out) = (server, client);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut sent = 0;
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if armed.load(Ordering::SeqCst) && sent + n > cut_after {
                            let _ = c_out.write_all(&buf[..cut_after.saturating_sub(sent)]);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingRelay { endpoint, armed }
    }
}

#[test]
fn connection_reset_mid_download_fails_over() {
    let Some(mut env) = s3_common::s3_env() else {
        return;
    };
    let relay = CuttingRelay::start(&env.endpoint, 2 * 1024 * 1024, None);
    env.endpoint = relay.endpoint.clone();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    s3_common::make_tree(&src, 24 * 1024 * 1024);
    let prefix = format!("{}/", s3_common::unique("reset"));
    let targets = format!(
        "[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"office\"\n\n{}",
        tmp.path().join("fs-target").display(),
        env.target_toml("offsite", &prefix, "garage-dc", "max_attempts = 2")
    );
    let cfg = s3_common::write_config(
        &tmp.path().join("conf"),
        &targets,
        "site",
        &["offsite", "local"],
        &src,
    );
    let owned = env.child_env();
    let envs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_cli(&cfg, &["run"], &envs);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    relay.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let to = tmp.path().join("restore");
    let o = run_cli(
        &cfg,
        &["restore", "site", "--to", to.to_str().unwrap()],
        &envs,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("from target local"),
        "{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("target offsite") && l.contains("trying the next target")),
        "{err}"
    );
    assert_eq!(
        s3_common::tree_contents(&to.join("site")),
        s3_common::tree_contents(&src)
    );
    // Through the relay the S3 copy never downloads whole: verify fails it.
    let o = run_cli(&cfg, &["verify", "--target", "offsite"], &envs);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn a_slow_target_does_not_hold_back_the_others() {
    let Some(mut env) = s3_common::s3_env() else {
        return;
    };
    // About 8 s to upload the archive through a 1 MiB/s link.
    let relay = CuttingRelay::start(&env.endpoint, usize::MAX, Some(1 << 20));
    env.endpoint = relay.endpoint.clone();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    s3_common::make_tree(&src, 8 * 1024 * 1024);
    let prefix = format!("{}/", s3_common::unique("slow"));
    let fs_root = tmp.path().join("fs-target");
    let targets = format!(
        "[targets.local]\ntype = \"fs\"\ncreate = true\npath = \"{}\"\nlocation = \"office\"\n\n{}",
        fs_root.display(),
        env.target_toml("offsite", &prefix, "garage-dc", "")
    );
    let cfg = s3_common::write_config(
        &tmp.path().join("conf"),
        &targets,
        "site",
        &["offsite", "local"],
        &src,
    );
    let mut child = crate::common::bin()
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .envs(env.child_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The fs target's snapshot is committed while the slow upload goes on.
    let t0 = Instant::now();
    let snapshots = fs_root.join("site/snapshots");
    loop {
        let done = std::fs::read_dir(&snapshots).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        });
        if done {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the fs target had its snapshot"
        );
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the slow target should still be uploading when the fast one is complete"
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        env.list_keys(&prefix)
            .iter()
            .any(|(k, _)| k.contains("/snapshots/") && k.ends_with(".json")),
        "the slow target completes too"
    );
}
