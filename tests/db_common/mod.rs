//! Shared test helpers. Sections are kept separate to ease merging.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------
// Services (scripts/services/*.sh): env vars, skip or require.
// ---------------------------------------------------------------------------

/// The service's variables from the environment, else from
/// `.services/<service>.env`. Missing: skip (None) with a note, or
/// panic when BACKUPCTL_TEST_REQUIRE_SERVICES=1.
pub fn service_env(service: &str, vars: &[&str]) -> Option<HashMap<String, String>> {
    let mut found: HashMap<String, String> = vars
        .iter()
        .filter_map(|v| std::env::var(v).ok().map(|x| (v.to_string(), x)))
        .collect();
    if found.len() < vars.len() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".services")
            .join(format!("{service}.env"));
        if let Ok(text) = std::fs::read_to_string(&file) {
            found.clear();
            for line in text.lines() {
                if let Some((k, v)) = line.trim().trim_start_matches("export ").split_once('=') {
                    if vars.contains(&k) {
                        found.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
    }
    if found.len() == vars.len() {
        return Some(found);
    }
    if std::env::var("BACKUPCTL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "service {service} required (BACKUPCTL_TEST_REQUIRE_SERVICES=1) but {} not set: run scripts/services/{service}.sh start",
            vars.join(", ")
        );
    }
    eprintln!("skipped: service {service} not running (scripts/services/{service}.sh start)");
    None
}

// ---------------------------------------------------------------------------
// Database test helpers (issue 4).
// ---------------------------------------------------------------------------

/// `n` random hex characters.
pub fn db_hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    let mut s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    s.truncate(n);
    s
}

/// A server from the services' env file.
#[derive(Clone, Debug)]
pub struct DbServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl DbServer {
    fn from(service: &str, prefix: &str) -> Option<DbServer> {
        let names: Vec<String> = ["HOST", "PORT", "USER", "PASSWORD"]
            .iter()
            .map(|k| format!("{prefix}_{k}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let e = service_env(service, &refs)?;
        Some(DbServer {
            host: e[&names[0]].clone(),
            port: e[&names[1]].parse().unwrap(),
            user: e[&names[2]].clone(),
            password: e[&names[3]].clone(),
        })
    }

    pub fn postgres() -> Option<DbServer> {
        DbServer::from("postgres", "BACKUPCTL_TEST_PG")
    }

    pub fn mariadb() -> Option<DbServer> {
        DbServer::from("mariadb", "BACKUPCTL_TEST_MYSQL")
    }

    /// Run SQL with psql (independent of backupctl); panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run SQL with the mariadb client; panics on error.
    pub fn mysql(&self, db: Option<&str>, sql: &str) -> String {
        let mut c = Command::new("mariadb");
        c.args(["--batch", "--skip-column-names", "--raw"])
            .arg(format!("--host={}", self.host))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={}", self.user))
            .env("MYSQL_PWD", &self.password)
            .args(["-e", sql]);
        if let Some(d) = db {
            c.arg(d);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "mariadb {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A config with two fs targets (`a` in location "office", `b` in "offsite")
/// and one policy `db` whose sources are `sources_toml`.
pub struct DbSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl DbSetup {
    pub fn new(sources_toml: &str, verify_toml: &str) -> DbSetup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        let config = root.join("backupctl.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{0}/state\"\n\n[targets.a]\ntype = \"fs\"\ncreate = true\npath = \"{0}/target-a\"\nlocation = \"office\"\n\n[targets.b]\ntype = \"fs\"\ncreate = true\npath = \"{0}/target-b\"\nlocation = \"offsite\"\n",
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("policies/db.toml"),
            format!(
                "targets = [\"a\", \"b\"]\n\n[retention]\ndaily = 7\n\n{sources_toml}\n{verify_toml}\n"
            ),
        )
        .unwrap();
        DbSetup { dir, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// backupctl with this setup's config.
    pub fn cmd(&self) -> Command {
        let mut c = crate::common::bin();
        c.arg("--config").arg(&self.config);
        c
    }

    /// Run backupctl with `args` (plus extra env), returning the output.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Snapshot manifests stored on target `t` (files under */snapshots/).
    pub fn manifests(&self, t: &str) -> Vec<PathBuf> {
        let dir = self.path().join(format!("target-{t}/db/snapshots"));
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The fs target `t`'s root directory (`target-<t>`).
    pub fn target(&self, t: &str) -> PathBuf {
        self.path().join(format!("target-{t}"))
    }

    /// Every pack of policy `db` on target `t`.
    pub fn packs(&self, t: &str) -> Vec<PathBuf> {
        crate::common::packs(&self.target(t), "db")
    }

    /// Corrupt the tar stream of `source` in the newest snapshot on target
    /// `t`: flip bytes in the middle of the largest extent its list names
    /// (inside a zstd frame of the stream, not in a pack's index). Returns
    /// the damaged pack.
    pub fn damage_stream(&self, t: &str, source: &str) -> PathBuf {
        let root = self.target(t);
        let newest = crate::common::manifests(&root, "db")
            .pop()
            .expect("a snapshot on the target");
        let m = crate::common::manifest(&newest);
        let list = crate::common::source_record(&m, source)["stream"]["list"]
            .as_str()
            .unwrap()
            .to_string();
        let text = std::fs::read_to_string(crate::common::list_path(&root, "db", &list)).unwrap();
        let (pack, off, len) = crate::common::largest_extent(&text);
        let path = root.join("db").join(pack);
        let mut b = std::fs::read(&path).unwrap();
        let mid = off + len / 2;
        for x in &mut b[mid..(mid + 16).min(off + len)] {
            *x ^= 0xff;
        }
        std::fs::write(&path, b).unwrap();
        path
    }
}

/// stdout + stderr as text, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------
// Dumps that dedupe (issue 8).
// ---------------------------------------------------------------------------

impl DbSetup {
    /// `backupctl run --time TIME` (RFC 3339); asserts success.
    pub fn run_at(&self, time: &str, env: &[(&str, &str)]) {
        let o = self.run(&["run", "--time", time], env);
        assert_eq!(o.status.code(), Some(0), "run at {time}: {}", text(&o));
    }

    /// The `archive_hash` (the tar stream's BLAKE3) of source `source` in
    /// every snapshot of policy `db`, oldest first, as `backupctl list
    /// --json` reports them.
    pub fn archive_hashes(&self, source: &str) -> Vec<String> {
        let o = self.run(&["list", "db", "--json"], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut snaps: Vec<(String, String)> = v[0]["snapshots"]
            .as_array()
            .unwrap_or_else(|| panic!("no snapshots in {v}"))
            .iter()
            .map(|s| {
                let src = s["sources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == source)
                    .unwrap_or_else(|| panic!("no source {source} in {s}"));
                (
                    s["id"].as_str().unwrap().to_string(),
                    src["archive_hash"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // Snapshot ids start with the UTC time.
        snaps.sort();
        snaps.into_iter().map(|(_, h)| h).collect()
    }

    /// Back up twice at two different instants (with `pause` in between,
    /// so that anything stamped with the wall clock differs too), call
    /// `change` (a one-row change), back up again; assert that the first two
    /// tar streams of `source` are the same (BLAKE3 in the manifests) and
    /// the third differs, and that the chunks are stored once: the unchanged
    /// run adds no pack to either target, and the run after the one-row
    /// change adds far fewer pack bytes than storing the dump again would.
    /// Returns the three stream hashes.
    pub fn assert_dedupes(
        &self,
        source: &str,
        env: &[(&str, &str)],
        change: impl FnOnce(),
    ) -> Vec<String> {
        let (a, b) = (self.target("a"), self.target("b"));
        self.run_at("2026-03-01T02:30:00+00:00", env);
        let packs1 = (self.packs("a"), self.packs("b"));
        let bytes1 = crate::common::pack_bytes(&a, "db");
        assert!(!packs1.0.is_empty(), "no pack on target a");
        // Past a second boundary of the wall clock (pg_dump's header time has
        // one-second resolution).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        self.run_at("2026-03-02T02:30:00+00:00", env);
        assert_eq!(
            (self.packs("a"), self.packs("b")),
            packs1,
            "an unchanged database added packs"
        );
        let bytes2 = crate::common::pack_bytes(&a, "db");
        assert_eq!(bytes2, bytes1, "an unchanged database added pack bytes");
        change();
        self.run_at("2026-03-03T02:30:00+00:00", env);
        let bytes3 = crate::common::pack_bytes(&a, "db");

        let h = crate::common::stream_hashes(&a, "db", source);
        assert_eq!(h.len(), 3, "three snapshots: {h:?}");
        assert_eq!(
            h[0], h[1],
            "an unchanged database gave a different tar stream: {h:?}"
        );
        assert_ne!(
            h[1], h[2],
            "a one-row change gave the same tar stream: {h:?}"
        );
        assert_eq!(
            crate::common::stream_hashes(&b, "db", source),
            h,
            "target b holds other snapshots"
        );
        assert_eq!(self.archive_hashes(source), h, "list --json disagrees");
        // Every snapshot's stream rebuilds (slice, zstd -dc) to the recorded
        // BLAKE3 on both targets.
        for t in [&a, &b] {
            for m in crate::common::manifests(t, "db") {
                crate::common::source_tar(t, "db", &m, source);
            }
        }

        // Stored once, by bytes. The stream must be large enough for the
        // comparison to mean something (many content-defined chunks).
        let newest = crate::common::manifests(&a, "db").pop().unwrap();
        let m = crate::common::manifest(&newest);
        let stream = &crate::common::source_record(&m, source)["stream"];
        let size = stream["size"].as_u64().unwrap();
        let stored = stream["stored"].as_u64().unwrap();
        assert!(
            size >= 4 << 20 && stored >= 1 << 20,
            "the dump is too small to show deduplication: {stream}"
        );
        let added = bytes3 - bytes2;
        eprintln!("{source}: stream {size} bytes, {stored} stored; the one-row change added {added} pack bytes");
        assert!(added > 0, "the one-row change stored nothing");
        // Storing the dump whole again would add about `stored` bytes.
        assert!(
            added * 5 < stored,
            "a one-row change added {added} pack bytes for a stream of {size} bytes ({stored} compressed): not deduplicated"
        );
        h
    }
}

// ---------------------------------------------------------------------------
// Planted snapshots: a hostile target (issue 9).
// ---------------------------------------------------------------------------

impl DbSetup {
    /// Plant a snapshot of policy `db` on fs targets `targets`, the way an
    /// attacker who can write there would: a real tar stream made with
    /// Python's tarfile holding `files` (name, bytes) at its root, packed
    /// into a pack with its extent list, and a manifest whose source
    /// `source` of type `kind` has `database` facts and a file index with
    /// correct hashes (so loading is reached). The snapshot is newer than
    /// any genuine one (2030). Returns the snapshot id.
    pub fn plant(
        &self,
        targets: &[&str],
        source: &str,
        kind: &str,
        database: serde_json::Value,
        files: &[(&str, Vec<u8>)],
    ) -> String {
        let work = self.path().join(format!("plant-{}", db_hex(8)));
        std::fs::create_dir_all(&work).unwrap();
        let mut adds = String::new();
        for (i, (name, data)) in files.iter().enumerate() {
            let p = work.join(format!("f{i}"));
            std::fs::write(&p, data).unwrap();
            adds.push_str(&format!(
                "i = tarfile.TarInfo({name:?}); i.size = {}; i.mode = 0o600; t.addfile(i, open({:?}, 'rb'))\n",
                data.len(),
                p.to_str().unwrap()
            ));
        }
        let tar = work.join("a.tar");
        let script = format!(
            "import tarfile\nt = tarfile.open({:?}, 'w', format=tarfile.GNU_FORMAT)\n{adds}t.close()\n",
            tar.to_str().unwrap()
        );
        let st = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success());
        let tar = std::fs::read(&tar).unwrap();
        // The index as tarfile wrote the entries (uid/gid/mtime 0).
        let records: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, data)| {
                serde_json::json!({
                    "path": name, "type": "file", "mode": 0o600, "uid": 0, "gid": 0,
                    "mtime": 0, "size": data.len(),
                    "blake3": blake3::hash(data).to_hex().to_string(),
                })
            })
            .collect();
        let id = format!("20300101T000000Z-{}", db_hex(8));
        // Signed with the host's own key: loading safety is tested behind
        // authentication (defence in depth).
        let kp = self.path().join("state/keys/host.key");
        let key = backupctl::trust::HostKey::load(&kp)
            .unwrap_or_else(|_| backupctl::trust::HostKey::create(&kp).unwrap());
        for t in targets {
            let planted = crate::common::Planted {
                name: source.into(),
                kind: kind.into(),
                origin: "planted".into(),
                tar: tar.clone(),
                records: records.clone(),
                database: Some(database.clone()),
            };
            crate::common::plant_snapshot(
                &self.target(t),
                "db",
                &id,
                "2030-01-01T00:00:00Z",
                Some(&key),
                &[planted],
            );
        }
        let _ = std::fs::remove_dir_all(&work);
        id
    }
}

/// Database facts for a planted manifest: `dumps` are (database name, dump
/// entry, dump bytes), each with the row counts `tables`.
pub fn planted_facts(
    engine: &str,
    format: &str,
    dumps: &[(&str, &str, &[u8])],
    tables: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "engine": engine, "dump_tool": "planted", "server_version": "planted",
        "format": format, "row_counts": "planted",
        "databases": dumps.iter().map(|(db, entry, data)| serde_json::json!({
            "name": db, "entries": [entry], "size": data.len(),
            "blake3": blake3::hash(data).to_hex().to_string(),
            "tables": tables,
        })).collect::<Vec<_>>(),
    })
}

/// Marker files that a planted dump tries to create (absolute paths under a
/// fresh directory), and a check that none of them exists.
pub struct Markers {
    pub dir: tempfile::TempDir,
}

impl Markers {
    pub fn create() -> Markers {
        // Under /tmp and world-writable, so that a command run by the
        // database server's OS user would be able to create them too.
        let dir = tempfile::Builder::new()
            .prefix("backupctl-markers-")
            .tempdir_in("/tmp")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        Markers { dir }
    }

    /// The absolute path of marker `name`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// Panics naming any marker file that exists.
    pub fn assert_none(&self, context: &str) {
        let found: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            found.is_empty(),
            "a planted dump ran commands on this host: {found:?} exist\n{context}"
        );
    }
}

// Table contents read with each database's own client (issue 8, deployments).
// ---------------------------------------------------------------------------

/// Run SQL (or a dot-command) with the system `sqlite3` CLI; panics on error.
pub fn sqlite3(file: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(file)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI (Debian package sqlite3)");
    assert!(
        o.status.success(),
        "sqlite3 {} {sql}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl DbServer {
    /// Every row of each table, ordered by its first column, as psql's
    /// `COPY ... TO STDOUT` writes them.
    pub fn pg_rows(&self, db: &str, tables: &[&str]) -> String {
        let mut out = String::new();
        for t in tables {
            out.push_str(&format!("-- {t}\n"));
            out.push_str(&self.psql(
                db,
                &format!("COPY (SELECT * FROM {t} ORDER BY 1) TO STDOUT"),
            ));
            out.push('\n');
        }
        out
    }

    /// Every row of each table, ordered by its first column, as the mariadb
    /// client prints them (tab-separated, raw).
    pub fn my_rows(&self, db: &str, tables: &[&str]) -> String {
        let sql: String = tables
            .iter()
            .map(|t| format!("SELECT '-- {t}'; SELECT * FROM {t} ORDER BY 1;"))
            .collect();
        self.mysql(Some(db), &sql)
    }
}

/// The scratch databases `list` names now that were not in `before` are
/// gone within a minute: another test's verify (the deployment month runs
/// its own against the same server) may hold one for a moment; one left
/// behind stays.
pub fn assert_scratch_dropped(
    before: &std::collections::BTreeSet<String>,
    list: impl Fn() -> std::collections::BTreeSet<String>,
    what: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left: Vec<String> = list().difference(before).cloned().collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scratch database left behind: {left:?}: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
