//! What the database sources share: finding client tools, running them with
//! checked exit status and stderr, streaming a dump tool's stdout straight
//! into the archive (optionally rewriting its first bytes, see
//! [`HeadRewrite`]), feeding a (possibly split) dump back into a loader, and
//! the database facts recorded in the manifest.
//!
//! Dumps are archived with [`EntryMeta::generated`], whose metadata does not
//! depend on the snapshot time: an unchanged database gives the same dump
//! bytes and so the same archive, stored only once.

use crate::archive::{ArchiveWriter, EntryMeta};
use crate::error::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The manifest's `database` field of a database source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseFacts {
    /// "postgres", "mysql" or "sqlite".
    pub engine: String,
    /// The dump tool and its version, as it reports it.
    pub dump_tool: String,
    pub server_version: String,
    /// pg_dump format ("custom" or "plain"); MySQL: "sql"; SQLite: "sqlite".
    pub format: String,
    /// How the row counts relate to the dump.
    pub row_counts: String,
    /// Roles and other cluster-wide objects (PostgreSQL `all = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<DumpFile>,
    pub databases: Vec<DumpedDatabase>,
}

/// One dump inside the archive: its entries (parts, in order), size and hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpFile {
    /// Tar entry names; more than one when the dump was split into parts
    /// (concatenate them in this order).
    pub entries: Vec<String>,
    pub size: u64,
    /// BLAKE3 of the whole dump (the parts concatenated).
    pub blake3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpedDatabase {
    pub name: String,
    #[serde(flatten)]
    pub dump: DumpFile,
    /// Rows per table at dump time (`schema.table` for PostgreSQL).
    pub tables: BTreeMap<String, u64>,
}

impl DatabaseFacts {
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("facts serialise")
    }

    /// Refuse a dump whose recorded engine or format is not the configured
    /// one. How a dump is loaded (which loader, which format) follows the
    /// local configuration only; a manifest that disagrees, say one claiming
    /// a plain SQL dump for a source configured as custom format, is refused
    /// rather than followed. Err is the problem, for people.
    pub fn check_configured(&self, engine: &str, format: &str) -> Result<(), String> {
        if self.engine == engine && self.format == format {
            return Ok(());
        }
        Err(format!(
            "not loaded: the manifest records a {} dump in {:?} format, but the configuration \
             has a {engine} source whose dumps are in {format:?} format (dumps are loaded as \
             the configuration says, never as the manifest says)",
            self.engine, self.format
        ))
    }

    pub fn from_record(rec: &crate::archive::SourceRecord) -> crate::error::Result<DatabaseFacts> {
        let v = rec.database.clone().ok_or_else(|| {
            crate::err!(
                "source {}: the manifest has no database facts for this source",
                rec.name
            )
        })?;
        serde_json::from_value(v)
            .with_context(|| format!("source {}: unreadable database facts", rec.name))
    }
}

/// Find the first of `names` on PATH, or fail naming the Debian package.
pub fn find_tool(names: &[&str], package: &str) -> crate::error::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    crate::bail!(
        "{} not found on PATH: install the Debian package {package} (apt-get install {package})",
        names.join(" or ")
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The password from the environment variable named by `password_env`.
/// A named but unset variable is a usage error (exit 2). `what` prefixes the
/// message (`"[verify] postgres"`; empty for a source, whose name the caller adds).
pub fn password_from_env(source: &str, var: Option<&str>) -> crate::error::Result<Option<String>> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(crate::error::Error::usage(format!(
            "{}password_env names the environment variable {var}, which is not set",
            if source.is_empty() {
                String::new()
            } else {
                format!("{source}: ")
            }
        ))),
    }
}

/// A file-name-safe form of a database name for tar entries: ASCII letters,
/// digits, `-`, `_` and inner `.` stay; everything else becomes `%XX`.
pub fn entry_stem(db: &str) -> String {
    let mut s = String::new();
    for (i, b) in db.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        s.push_str("%00");
    }
    s
}

/// Keep at most this much of a tool's stderr.
const STDERR_KEEP: usize = 64 << 10;

fn spawn_stderr_reader(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut err = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = STDERR_KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).trim().to_string()
    })
}

/// Lines of stderr that report an error (as opposed to notices and warnings).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("fatal")
        })
        .collect()
}

fn describe_failure(what: &str, status: Option<ExitStatus>, stderr: &str) -> String {
    let st = match status {
        Some(s) if s.success() => "reported errors".to_string(),
        Some(s) => format!("failed ({s})"),
        None => "failed".to_string(),
    };
    if stderr.is_empty() {
        format!("{what} {st}")
    } else {
        format!("{what} {st}: {}", one_line(stderr))
    }
}

/// Collapse a multi-line message into one line (log records stay one line).
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Run `cmd` to completion (stdin from `input`, or empty), returning stdout.
/// A non-zero exit or an error line on stderr fails with the stderr text.
pub fn run_output(
    cmd: &mut Command,
    input: Option<&[u8]>,
    what: &str,
) -> crate::error::Result<String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let err = spawn_stderr_reader(&mut child);
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let mut out = Vec::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_end(&mut out)?;
    }
    let status = child.wait()?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stderr = err.join().unwrap_or_default();
    if !status.success() || !error_lines(&stderr).is_empty() {
        crate::bail!(describe_failure(what, Some(status), &stderr));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// What `tool ARG` prints (`--help`, `--version`), checked like
/// [`run_output`].
pub fn ask_tool(tool: &Path, arg: &str) -> crate::error::Result<String> {
    let what = format!("{} {arg}", tool.display());
    run_output(Command::new(tool).arg(arg), None, &what)
}

/// `tool --version`, trimmed (the manifest's `dump_tool`).
pub fn tool_version(tool: &Path) -> crate::error::Result<String> {
    Ok(ask_tool(tool, "--version")?.trim().to_string())
}

/// The tool's version for a message, or its path when it does not say.
pub fn tool_version_or_path(tool: &Path) -> String {
    tool_version(tool).unwrap_or_else(|_| tool.display().to_string())
}

/// Sees every block of a dump as it streams by.
pub type Observer<'a> = &'a mut dyn FnMut(&[u8]);

/// A reader that remembers the last bytes it passed and shows every block to
/// an observer (the MySQL row counter).
struct Tap<'a, R> {
    inner: R,
    tail: Vec<u8>,
    observer: Option<Observer<'a>>,
}

const TAIL_KEEP: usize = 1024;

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        if let Some(o) = self.observer.as_mut() {
            o(got);
        }
        self.tail.extend_from_slice(got);
        if self.tail.len() > 2 * TAIL_KEEP {
            self.tail.drain(..self.tail.len() - TAIL_KEEP);
        }
        Ok(n)
    }
}

/// A rewrite of a dump's first bytes as they stream by (PostgreSQL's
/// custom-format header, whose creation time would make every dump differ).
#[derive(Clone, Copy)]
pub struct HeadRewrite {
    /// The first `len` bytes of the dump (fewer if it is shorter) are
    /// buffered and handed to `rewrite`.
    pub len: usize,
    /// Rewrites those bytes in place (same length), or leaves them exactly
    /// as they are and says why (that becomes a warning of the source).
    pub rewrite: fn(&mut [u8]) -> Result<(), String>,
}

/// Passes a stream through, except that its first bytes go through a
/// [`HeadRewrite`] first.
pub struct HeadReader<R> {
    inner: R,
    head: Option<HeadRewrite>,
    buf: Vec<u8>,
    pos: usize,
    broken: bool,
    /// What the rewrite said, once it has run (None before the first read,
    /// or when there is no rewrite).
    pub outcome: Option<Result<(), String>>,
}

impl<R: Read> HeadReader<R> {
    pub fn new(inner: R, head: Option<HeadRewrite>) -> HeadReader<R> {
        HeadReader {
            inner,
            head,
            buf: Vec::new(),
            pos: 0,
            broken: false,
            outcome: None,
        }
    }

    fn fill_head(&mut self, h: HeadRewrite) -> std::io::Result<()> {
        let mut buf = vec![0u8; h.len];
        let mut got = 0;
        while got < h.len {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        let before = buf.clone();
        let outcome = (h.rewrite)(&mut buf);
        if outcome.is_err() {
            // A rewrite that gives up leaves the bytes alone, whatever it did.
            buf = before;
        }
        self.outcome = Some(outcome);
        self.buf = buf;
        Ok(())
    }
}

impl<R: Read> Read for HeadReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(h) = self.head.take() {
            if let Err(e) = self.fill_head(h) {
                // Part of the head may be lost: never pass on what follows.
                self.broken = true;
                return Err(e);
            }
        }
        if self.broken {
            return Err(std::io::Error::other(
                "reading the start of the dump failed",
            ));
        }
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(out)
    }
}

/// How to stream one dump.
pub struct DumpJob<'a> {
    /// Tar entry name (parts get `.part-NNNNNN` appended).
    pub entry: String,
    /// For messages: "pg_dump of database shop".
    pub what: String,
    /// Text the dump ends with when complete (plain SQL dumps), checked in
    /// addition to the exit status.
    pub complete_marker: Option<&'static str>,
    pub observer: Option<Observer<'a>>,
    /// Rewrite the dump's first bytes before they are archived.
    pub head: Option<HeadRewrite>,
}

/// Run a dump tool and stream its stdout straight into the archive (no
/// temporary copy; [`ArchiveWriter::add_stream`] splits large dumps into
/// parts), with [`EntryMeta::generated`] metadata. The dump fails when the
/// tool exits non-zero or is killed, prints an error on stderr, or (for plain
/// SQL) lacks its completion marker; other stderr lines, and a head rewrite
/// that gave up, become warnings of the source.
pub fn stream_dump(
    w: &mut ArchiveWriter,
    cmd: &mut Command,
    job: DumpJob<'_>,
) -> crate::error::Result<DumpFile> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{}: cannot start {:?}", job.what, cmd.get_program()))?;
    let err = spawn_stderr_reader(&mut child);
    let mut tap = Tap {
        inner: HeadReader::new(child.stdout.take().expect("stdout piped"), job.head),
        tail: Vec::new(),
        observer: job.observer,
    };
    let added = w.add_stream(Path::new(&job.entry), &EntryMeta::generated(), &mut tap);
    if added.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let stderr = err.join().unwrap_or_default();
    if !status.success() || !error_lines(&stderr).is_empty() {
        crate::bail!(
            "{}; the dump is incomplete",
            describe_failure(&job.what, Some(status), &stderr)
        );
    }
    let (entries, blake3, size) =
        added.with_context(|| format!("{}: writing the archive", job.what))?;
    if let Some(marker) = job.complete_marker {
        let tail = String::from_utf8_lossy(&tap.tail);
        crate::ensure!(
            tail.contains(marker),
            "{}: the dump ends without its completion line ({marker:?}); it is truncated",
            job.what
        );
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        w.warn(format!("{}: {}", job.what, line.trim()));
    }
    if let Some(Err(why)) = tap.inner.outcome.take() {
        w.warn(format!("{}: {why}", job.what));
    }
    Ok(DumpFile {
        entries,
        size,
        blake3,
    })
}

/// The dump's parts, concatenated, from an unpacked archive in `dir`.
pub fn open_dump(dir: &Path, dump: &DumpFile) -> crate::error::Result<Box<dyn Read + Send>> {
    let mut r: Box<dyn Read + Send> = Box::new(std::io::empty());
    for e in &dump.entries {
        let p = Path::new(e);
        crate::ensure!(
            p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "unsafe dump entry name {e:?} in the manifest"
        );
        let f = std::fs::File::open(dir.join(p))
            .with_context(|| format!("dump part {e} is missing from the archive"))?;
        r = Box::new(r.chain(f));
    }
    Ok(r)
}

/// Why a dump was not loaded (verify and restore name it in their messages).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Refused before anything ran: there is no safe way to load it here
    /// (a client without its sandbox, say).
    #[error("not loaded: {0}")]
    Refused(String),
    /// The loader ran and failed (the server's or the tool's error).
    #[error("the dump does not load: {0}")]
    Failed(String),
}

/// Feed `input` into a loader's stdin (psql, pg_restore, mariadb). Err holds
/// the loader's error output.
pub fn feed(cmd: &mut Command, mut input: Box<dyn Read + Send>, what: &str) -> Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let err = spawn_stderr_reader(&mut child);
    let mut stdin = child.stdin.take().expect("stdin piped");
    let writer = std::thread::spawn(move || std::io::copy(&mut input, &mut stdin).map(|_| ()));
    let status = child.wait().map_err(|e| format!("{what}: {e}"))?;
    let wrote = writer.join().unwrap_or(Ok(()));
    let stderr = err.join().unwrap_or_default();
    if !status.success() || !error_lines(&stderr).is_empty() {
        return Err(describe_failure(what, Some(status), &stderr));
    }
    if let Err(e) = wrote {
        return Err(format!("{what}: reading the dump: {e}"));
    }
    Ok(())
}

/// Compare row counts after a load with those recorded at dump time.
pub fn compare_counts(
    label: &str,
    recorded: &BTreeMap<String, u64>,
    loaded: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (t, n) in recorded {
        match loaded.get(t) {
            None => out.push(format!(
                "{label}: table {t} is missing after loading the dump"
            )),
            Some(m) if m != n => out.push(format!(
                "{label}: table {t} has {m} rows after loading, {n} at dump time"
            )),
            _ => {}
        }
    }
    for t in loaded.keys().filter(|t| !recorded.contains_key(*t)) {
        out.push(format!(
            "{label}: table {t} appears after loading but was not recorded at dump time"
        ));
    }
    out
}

/// Parse `{"table": count, ...}` as printed by a database's JSON aggregate.
pub fn parse_counts(out: &str, what: &str) -> crate::error::Result<BTreeMap<String, u64>> {
    let t = out.trim();
    if t.is_empty() || t == "NULL" {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(t).with_context(|| format!("{what}: unexpected row count output {t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_stems_are_safe() {
        assert_eq!(entry_stem("shop"), "shop");
        assert_eq!(entry_stem("a/b"), "a%2Fb");
        assert_eq!(entry_stem(".."), "%2E.");
        assert_eq!(entry_stem("Grüße db"), "Gr%C3%BC%C3%9Fe%20db");
    }

    #[test]
    fn head_reader_rewrites_only_the_head_and_undoes_a_rewrite_that_gives_up() {
        use std::io::Read;
        let upper = HeadRewrite {
            len: 4,
            rewrite: |h| {
                h.make_ascii_uppercase();
                Ok(())
            },
        };
        let run = |input: &[u8], head| {
            let mut r = HeadReader::new(input, head);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            (String::from_utf8(out).unwrap(), r.outcome)
        };
        assert_eq!(run(b"abcdefgh", Some(upper)).0, "ABCDefgh");
        assert_eq!(run(b"ab", Some(upper)).0, "AB");
        assert_eq!(run(b"abcdefgh", None), ("abcdefgh".into(), None));
        let gives_up = HeadRewrite {
            len: 4,
            rewrite: |h| {
                h.fill(b'x');
                Err("no".into())
            },
        };
        assert_eq!(
            run(b"abcdefgh", Some(gives_up)),
            ("abcdefgh".into(), Some(Err("no".into())))
        );
    }

    #[test]
    fn row_counts_parse_from_a_json_object_or_nothing() {
        assert!(parse_counts("", "db").unwrap().is_empty());
        assert!(parse_counts(" NULL\n", "db").unwrap().is_empty());
        assert_eq!(
            parse_counts("{\"public.t\": 3, \"u\": 0}\n", "db").unwrap(),
            BTreeMap::from([("public.t".to_string(), 3), ("u".to_string(), 0)])
        );
        let e = parse_counts("ERROR", "db x").unwrap_err();
        assert!(format!("{e:#}").starts_with("db x: unexpected row count output"));
        assert!(parse_counts("{\"t\": -1}", "db").is_err());
    }

    #[test]
    fn facts_must_match_the_configured_engine_and_format() {
        let facts = DatabaseFacts {
            engine: "postgres".into(),
            dump_tool: "pg_dump".into(),
            server_version: "17".into(),
            format: "plain".into(),
            row_counts: String::new(),
            globals: None,
            databases: Vec::new(),
        };
        assert_eq!(facts.check_configured("postgres", "plain"), Ok(()));
        let p = facts.check_configured("postgres", "custom").unwrap_err();
        assert!(
            p.starts_with("not loaded: the manifest records a postgres dump in \"plain\" format")
        );
        assert!(
            p.contains("a postgres source whose dumps are in \"custom\" format"),
            "{p}"
        );
        assert!(facts.check_configured("mysql", "plain").is_err());
    }

    #[test]
    fn tool_output_is_kept_to_one_line_and_its_error_lines() {
        assert_eq!(one_line("  a\n\n b \n"), "a | b");
        assert_eq!(
            error_lines("NOTICE: x\nERROR: y\npg_dump: FATAL z\nwarning"),
            ["ERROR: y", "pg_dump: FATAL z"]
        );
    }

    #[test]
    fn count_comparison_names_differences() {
        let a = BTreeMap::from([("t".to_string(), 3u64), ("u".to_string(), 1)]);
        let b = BTreeMap::from([("t".to_string(), 2u64), ("v".to_string(), 0)]);
        let p = compare_counts("db x", &a, &b);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(compare_counts("x", &a, &a).is_empty());
    }
}
