//! Issue 13, part A (the operator surface): notifications received by real
//! HTTP servers and commands, metrics parsed by Prometheus' own text-format
//! parser, JSON logs and log files, completions, man pages and the systemd
//! units. Everything drives the real binary.

#[allow(unused_imports)] // common re-exports v2 helpers this file does not use
use crate::common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A tiny HTTP server on 127.0.0.1 (std only): records every request, then
// answers 200, answers with another status, or never answers.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Status(u16),
    /// Accept, read the request, never answer (until the test ends).
    Hang,
}

struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let reqs = reqs.clone();
                std::thread::spawn(move || handle(conn, answer, reqs));
            }
        });
        Server { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Wait until `n` requests arrived (at most 10 s).
    fn wait_for(&self, n: usize) -> Vec<Request> {
        let t = Instant::now();
        while self.requests().len() < n && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.requests()
    }
}

fn handle(mut conn: TcpStream, answer: Answer, reqs: Arc<Mutex<Vec<Request>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // One request per connection is enough for the client under test: it
    // may keep the connection open and send another, so loop.
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        buf = body.split_off(len);
        reqs.lock().unwrap().push(Request {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let status = match answer {
            Answer::Hang => {
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            Answer::Ok => 200,
            Answer::Status(s) => s,
        };
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nOK");
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A setup with fs targets `a` and `b`, a source tree, and policy `shop`
/// (`policy_extra` goes into the policy before `[retention]`), with
/// `config_extra` appended to backupctl.toml.
fn setup(config_extra: &str, policy_extra: &str) -> Setup {
    let s = Setup::new();
    s.fs_config(&["a", "b"]);
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    s.write("backupctl.toml", &format!("{cfg}\n{config_extra}\n"));
    make_tree(&s.path("src"));
    s.files_policy("shop", &s.path("src"), &["a", "b"], policy_extra);
    s
}

fn run_env(s: &Setup, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = s.cmd();
    c.env("TZ", "UTC");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().unwrap()
}

fn assert_absent(o: &Output, secrets: &[&str], what: &str) {
    let all = format!("{}{}", stdout(o), stderr(o));
    for sec in secrets {
        assert!(
            !all.contains(sec),
            "{what}: the secret {sec:?} was printed:\n{all}"
        );
    }
}

fn json_body(r: &Request) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// The newest snapshot id of `shop`, from `list --json`.
fn newest_snapshot(s: &Setup) -> String {
    let o = run_env(s, &[], &["list", "shop", "--json"]);
    let v = json(&o);
    v[0]["snapshots"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

#[test]
fn webhook_and_healthchecks_receive_events_and_secrets_stay_hidden() {
    let srv = Server::start(Answer::Ok);
    let uuid = "5b6a4a0e-secret-uuid-444455556666";
    let token = "hooktoken-SECRET";
    let query = "qsecret-Q";
    let password = "pw-SECRET";
    let hc = srv.url(&format!("/ping/{uuid}"));
    let hook = format!(
        "http://user:{password}@127.0.0.1:{}/hook/{token}?token={query}",
        srv.port
    );
    let s = setup(
        "[[notify]]\non = [\"start\", \"success\", \"failure\"]\nhealthchecks_env = \"TEST_HC_URL\"\n\n\
         [[notify]]\non = [\"success\", \"failure\"]\nwebhook_env = \"TEST_HOOK_URL\"\n",
        "",
    );
    let env = [
        ("TEST_HC_URL", hc.as_str()),
        ("TEST_HOOK_URL", hook.as_str()),
    ];
    let secrets = [uuid, token, query, password];

    let o = run_env(&s, &env, &["-v", "run"]);
    expect_code(&o, 0);
    assert_absent(&o, &secrets, "run -v");
    // Redacted, the notifiers are still named.
    assert!(
        stderr(&o).contains(&format!("http://127.0.0.1:{}/…", srv.port)),
        "{}",
        stderr(&o)
    );
    let id = newest_snapshot(&s);
    let reqs = srv.wait_for(3);
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    assert!(reqs.iter().all(|r| r.method == "POST"), "{reqs:#?}");
    let pings: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/ping/"))
        .collect();
    let paths: Vec<&str> = pings.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [format!("/ping/{uuid}/start"), format!("/ping/{uuid}")],
        "healthchecks: /start first, then the success ping"
    );
    let tail = &pings[1].body;
    assert!(
        tail.contains("summary policy=shop op=run status=complete"),
        "the success ping carries the log tail:\n{tail}"
    );
    assert!(tail.contains(&id), "{tail}");

    let hooks: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/hook/"))
        .collect();
    assert_eq!(hooks.len(), 1, "{reqs:#?}");
    assert_eq!(hooks[0].path, format!("/hook/{token}?token={query}"));
    assert_eq!(hooks[0].headers["content-type"], "application/json");
    {
        use base64::Engine;
        let want = base64::engine::general_purpose::STANDARD.encode(format!("user:{password}"));
        assert_eq!(hooks[0].headers["authorization"], format!("Basic {want}"));
    }
    let j = json_body(hooks[0]);
    assert_eq!(j["event"], "success", "{j}");
    assert_eq!(j["policy"], "shop");
    assert_eq!(j["snapshot"], id.as_str());
    assert_eq!(j["status"], "complete");
    assert!(j["error"].is_null(), "{j}");
    assert_eq!(
        j["targets"],
        serde_json::json!([{"name": "a", "status": "complete"}, {"name": "b", "status": "complete"}])
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(j["host"], host.trim());
    chrono::DateTime::parse_from_rfc3339(j["time"].as_str().unwrap()).unwrap();

    // A failing run: the source directory is gone.
    std::fs::rename(s.path("src"), s.path("src.away")).unwrap();
    let o = run_env(&s, &env, &["run"]);
    expect_code(&o, 1);
    assert_absent(&o, &secrets, "failed run");
    let reqs = srv.wait_for(6);
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    let fail = reqs
        .iter()
        .find(|r| r.path == format!("/ping/{uuid}/fail"))
        .expect("a /fail ping");
    assert!(
        fail.body
            .contains("summary policy=shop op=run status=failed"),
        "{}",
        fail.body
    );
    assert!(
        fail.body.contains("src"),
        "the cause is in the tail: {}",
        fail.body
    );
    let j = json_body(
        reqs[3..]
            .iter()
            .find(|r| r.path.starts_with("/hook/"))
            .expect("a webhook for the failure"),
    );
    assert_eq!(j["event"], "failure", "{j}");
    assert!(
        j["error"].as_str().is_some_and(|e| e.contains("src")),
        "{j}"
    );

    // `notify test` reports both, with the secrets hidden; healthchecks
    // gets a /log ping that does not change the check's state.
    let o = run_env(&s, &env, &["notify", "test"]);
    expect_code(&o, 0);
    assert_absent(&o, &secrets, "notify test");
    assert_eq!(
        stdout(&o).lines().filter(|l| l.starts_with("ok ")).count(),
        2
    );
    let reqs = srv.wait_for(8);
    assert!(
        reqs.iter().any(|r| r.path == format!("/ping/{uuid}/log")),
        "{reqs:#?}"
    );
    let t = reqs[6..]
        .iter()
        .find(|r| r.path.starts_with("/hook/"))
        .unwrap();
    assert_eq!(json_body(t)["event"], "test");

    // A variable that is not set: that notifier fails, naming the key and
    // the variable, never anything else.
    let o = run_env(
        &s,
        &[("TEST_HC_URL", hc.as_str())],
        &["notify", "test", "--json"],
    );
    expect_code(&o, 1);
    let v = json(&o);
    let failed: Vec<&serde_json::Value> = v["notifiers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("webhook_env: the environment variable TEST_HOOK_URL is not set"),
        "{v}"
    );
}

#[test]
fn a_hanging_or_failing_notifier_never_fails_the_backup() {
    let hang = Server::start(Answer::Hang);
    let broken = Server::start(Answer::Status(500));
    let s = setup(
        &format!(
            "[[notify]]\non = [\"start\", \"success\"]\nwebhook = \"{}\"\ntimeout = \"1s\"\nretries = 1\n\n\
             [[notify]]\non = [\"start\", \"success\"]\nhealthchecks = \"{}\"\ntimeout = \"1s\"\nretries = 1\n\n\
             [[notify]]\non = [\"success\"]\ncommand = [\"sh\", \"-c\", \"sleep 60\"]\ntimeout = \"1s\"\nretries = 0\n",
            hang.url("/hang"),
            broken.url("/ping/x")
        ),
        "",
    );
    let t = Instant::now();
    let o = run_env(&s, &[], &["run"]);
    let took = t.elapsed();
    expect_code(&o, 0);
    // Each notifier's bound is 1 s x 2 attempts + 1 s backoff; the run waits
    // at most one bound for what is still queued when it ends.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let err = stderr(&o);
    assert!(
        err.contains("not delivered") && err.contains("HTTP 500"),
        "failures are logged:\n{err}"
    );
    // The 500 was retried: both attempts of the start ping arrived.
    let start: Vec<Request> = broken
        .requests()
        .into_iter()
        .filter(|r| r.path == "/ping/x/start")
        .collect();
    assert_eq!(start.len(), 2, "{start:#?}");
    assert!(!hang.requests().is_empty(), "the hanging server was asked");
    // The backup itself is there.
    assert_eq!(manifests(&s.target_dir("a"), "shop").len(), 1);
    assert_eq!(manifests(&s.target_dir("b"), "shop").len(), 1);
}

#[test]
fn a_command_notifier_gets_the_event_in_its_environment() {
    let s = Setup::new();
    // Target b is a directory that was never initialised: unreachable, so
    // the run is partial (exit 3).
    s.write(
        "backupctl.toml",
        "state_dir = \"state\"\n\n[targets.a]\ntype = \"fs\"\ncreate = true\npath = \"targets/a\"\nlocation = \"one\"\n\n\
         [targets.b]\ntype = \"fs\"\npath = \"targets/b\"\nlocation = \"two\"\n",
    );
    make_tree(&s.path("src"));
    let out = s.path("event.env");
    let stdin = s.path("event.stdin");
    let script = format!(
        "env | grep '^BACKUPCTL_' | grep -v '^BACKUPCTL_EVENT_JSON=' > '{}'; cat > '{}'",
        out.display(),
        stdin.display()
    );
    s.files_policy(
        "shop",
        &s.path("src"),
        &["a", "b"],
        &format!(
            "[[notify]]\non = [\"partial\", \"failure\"]\ncommand = [\"sh\", \"-c\", {}]\n",
            toml::Value::String(script)
        ),
    );
    let o = run_env(&s, &[], &["-q", "run"]);
    expect_code(&o, 3);
    let env: BTreeMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env["BACKUPCTL_EVENT"], "partial", "{env:#?}");
    assert_eq!(env["BACKUPCTL_POLICY"], "shop");
    assert_eq!(env["BACKUPCTL_OP"], "run");
    assert_eq!(env["BACKUPCTL_STATUS"], "partial");
    assert_eq!(env["BACKUPCTL_SNAPSHOT"], newest_snapshot(&s));
    assert_eq!(env["BACKUPCTL_TARGETS"], "a:complete,b:failed");
    assert!(env["BACKUPCTL_ERROR"].contains("b"), "{env:#?}");
    assert!(!env["BACKUPCTL_HOST"].is_empty());
    chrono::DateTime::parse_from_rfc3339(&env["BACKUPCTL_TIME"]).unwrap();
    let tail = std::fs::read_to_string(&stdin).unwrap();
    assert!(
        tail.contains("summary policy=shop op=run status=partial"),
        "the log tail on standard input:\n{tail}"
    );
}

#[test]
fn notify_test_reports_each_notifier_and_fails_if_any_failed() {
    let srv = Server::start(Answer::Ok);
    let s = setup(
        &format!(
            "[[notify]]\non = [\"failure\"]\nwebhook = \"{}\"\n\n\
             [[notify]]\non = [\"failure\"]\nwebhook = \"http://127.0.0.1:1/closed-port\"\ntimeout = \"2s\"\nretries = 0\n",
            srv.url("/hook/t")
        ),
        "[[notify]]\non = [\"stale\"]\ncommand = [\"sh\", \"-c\", \"test $BACKUPCTL_EVENT = test\"]\n",
    );
    let o = run_env(&s, &[], &["notify", "test", "shop", "--json"]);
    expect_code(&o, 1);
    let v = json(&o);
    let n = v["notifiers"].as_array().unwrap();
    assert_eq!(n.len(), 3, "{v}");
    let by_origin: BTreeMap<&str, &serde_json::Value> = n
        .iter()
        .map(|x| (x["origin"].as_str().unwrap(), x))
        .collect();
    assert_eq!(by_origin["backupctl.toml notify[0]"]["ok"], true, "{v}");
    assert_eq!(
        by_origin["backupctl.toml notify[0]"]["detail"],
        "HTTP 200 OK"
    );
    assert_eq!(by_origin["backupctl.toml notify[1]"]["ok"], false, "{v}");
    assert_eq!(by_origin["policy shop notify[0]"]["ok"], true, "{v}");
    assert_eq!(by_origin["policy shop notify[0]"]["type"], "command");
    let reqs = srv.wait_for(1);
    let j = json_body(&reqs[0]);
    assert_eq!(j["event"], "test");
    assert_eq!(j["policy"], "shop");
    // (`notify test` delivers to every notifier whatever its `on` says; the
    // command checked BACKUPCTL_EVENT=test.)

    // The human output: one line per notifier.
    let o = run_env(&s, &[], &["notify", "test"]);
    expect_code(&o, 1);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("FAILED")).count(),
        1,
        "{out}"
    );

    // Nothing configured: exit 1, saying so.
    let bare = Setup::new();
    bare.fs_config(&["a"]);
    make_tree(&bare.path("src"));
    bare.files_policy("p", &bare.path("src"), &["a"], "");
    let o = run_env(&bare, &[], &["notify", "test"]);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("no notifiers are configured"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stale_fires_once_when_the_newest_snapshot_is_older_than_max_age() {
    let log = "events.log";
    let notify = format!(
        "[[notify]]\non = [\"stale\"]\ncommand = [\"sh\", \"-c\", \"echo \\\"$BACKUPCTL_EVENT $BACKUPCTL_POLICY $BACKUPCTL_SNAPSHOT\\\" >> {log}\"]\n"
    );
    // Scheduled once a year, so `run --due` does not run it in between:
    // `max_age` decides.
    let s = setup(
        "",
        &format!("schedule = \"0 3 1 1 *\"\nmax_age = \"26h\"\n{notify}"),
    );
    // A second policy without max_age: 1.5 intervals of its hourly schedule.
    s.files_policy(
        "hourly",
        &s.path("src"),
        &["a"],
        &format!("schedule = \"0 * * * *\"\n{notify}"),
    );
    let events = || {
        std::fs::read_to_string(s.dir.path().join(log))
            .or_else(|_| std::fs::read_to_string(log))
            .unwrap_or_default()
    };
    let at = |now: &str, args: &[&str]| {
        let mut c = s.cmd();
        c.current_dir(s.dir.path())
            .env("TZ", "UTC")
            .env("BACKUPCTL_NOW", now);
        c.args(args).output().unwrap()
    };
    let t0 = "2026-03-01T03:00:00Z";
    expect_code(&at(t0, &["run", "--time", t0]), 0);
    let shop_id = newest_snapshot(&s);

    // 25 hours later: not stale yet (hourly is: 25h > 1.5h, and it is due).
    let o = at("2026-03-02T04:00:00Z", &["-q", "run", "--due"]);
    expect_code(&o, 0);
    assert_eq!(
        events().lines().collect::<Vec<_>>(),
        [format!("stale hourly {}", {
            // hourly's newest snapshot before this run is the first one.
            let o = run_env(&s, &[], &["list", "hourly", "--json"]);
            json(&o)[0]["snapshots"][0]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })],
        "only hourly is stale at +25h"
    );
    // 27 hours after shop's snapshot: stale, once.
    let o = at("2026-03-02T06:00:00Z", &["run", "--due", "shop"]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("policy shop: stale"),
        "logged: {}",
        stderr(&o)
    );
    let o = at("2026-03-02T07:00:00Z", &["-q", "run", "--due", "shop"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).is_empty() && stderr(&o).is_empty(),
        "-q stays silent"
    );
    let shop_events: Vec<String> = events()
        .lines()
        .filter(|l| l.contains(" shop "))
        .map(str::to_string)
        .collect();
    assert_eq!(shop_events, [format!("stale shop {shop_id}")]);

    // A new snapshot ends the spell; the next one that gets old fires again.
    let t1 = "2026-03-02T08:00:00Z";
    expect_code(&at(t1, &["run", "shop", "--time", t1]), 0);
    expect_code(&at("2026-03-03T09:00:00Z", &["run", "--due", "shop"]), 0);
    assert_eq!(events().lines().filter(|l| l.contains(" shop ")).count(), 1);
    expect_code(&at("2026-03-03T11:00:00Z", &["run", "--due", "shop"]), 0);
    assert_eq!(
        events().lines().filter(|l| l.contains(" shop ")).count(),
        2,
        "{}",
        events()
    );
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Parse a textfile with prometheus_client's parser: (family name, type,
/// sample name, labels, value) for every sample. None when the parser is
/// not installed (skipped, unless the services are required).
fn prometheus_parse(path: &Path) -> Option<Vec<serde_json::Value>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var("BACKUPCTL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("python3 with prometheus_client required: run scripts/install-deps.sh");
        }
        eprintln!("skipped: python3 -c 'import prometheus_client' failed (scripts/install-deps.sh installs it)");
        return None;
    }
    let o = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prometheus_client rejected the file:\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(path).unwrap()
    );
    Some(serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap())
}

fn sample(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels.iter().all(|(k, v)| s["labels"][k] == *v)
                && s["labels"].as_object().unwrap().len() == labels.len()
        })
        .map(|s| s["value"].as_f64().unwrap())
}

#[test]
fn the_metrics_file_parses_and_matches_what_happened() {
    let s = setup("", "");
    s.files_policy("blog", &s.path("src"), &["a"], "");
    let m = s.path("textfile/backupctl.prom");
    std::fs::create_dir_all(m.parent().unwrap()).unwrap();
    let ms = m.to_str().unwrap();

    let mut read = 0u64;
    let mut stored = 0u64;
    let run = |args: &[&str], read: &mut u64, stored: &mut u64| {
        let o = run_env(&s, &[], args);
        expect_code(&o, 0);
        for r in json(&o).as_array().unwrap() {
            if r["policy"] == "shop" {
                for src in r["sources"].as_array().unwrap() {
                    *read += src["content_size"].as_u64().unwrap();
                }
                for t in r["targets"].as_array().unwrap() {
                    *stored += t["uploaded_bytes"].as_u64().unwrap();
                }
            }
        }
    };
    run(
        &[
            "run",
            "--json",
            "--time",
            "2026-01-01T00:00:00Z",
            "--metrics-file",
            ms,
        ],
        &mut read,
        &mut stored,
    );
    std::fs::write(s.path("src/new.txt"), "more content\n".repeat(100)).unwrap();
    run(
        &[
            "run",
            "shop",
            "--json",
            "--time",
            "2026-01-02T00:00:00+01:00",
        ],
        &mut read,
        &mut stored,
    );
    // The last command acts on shop only: blog's series stay.
    expect_code(
        &run_env(&s, &[], &["verify", "shop", "--metrics-file", ms]),
        0,
    );
    let Some(samples) = prometheus_parse(&m) else {
        return;
    };
    let shop = [("policy", "shop")];
    assert_eq!(
        sample(&samples, "backupctl_last_success_timestamp_seconds", &shop),
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00+01:00")
                .unwrap()
                .timestamp() as f64
        )
    );
    assert_eq!(
        sample(
            &samples,
            "backupctl_last_success_timestamp_seconds",
            &[("policy", "blog")]
        ),
        Some(1767225600.0)
    );
    assert_eq!(
        sample(&samples, "backupctl_bytes_read_total", &shop),
        Some(read as f64)
    );
    assert_eq!(
        sample(&samples, "backupctl_bytes_stored_total", &shop),
        Some(stored as f64)
    );
    assert!(read > 0 && stored > 0);
    assert!(sample(&samples, "backupctl_last_run_duration_seconds", &shop).unwrap() > 0.0);
    assert_eq!(
        sample(&samples, "backupctl_last_verify_ok", &shop),
        Some(1.0)
    );
    assert!(sample(&samples, "backupctl_last_verify_timestamp_seconds", &shop).is_some());
    assert_eq!(
        sample(&samples, "backupctl_last_verify_ok", &[("policy", "blog")]),
        None,
        "blog was never verified"
    );
    // Counters are typed so; the rest are gauges.
    for x in &samples {
        let name = x["name"].as_str().unwrap();
        let want = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(x["type"], want, "{x}");
        assert!(name.starts_with("backupctl_"), "{x}");
    }
    // Snapshot counts per target, as `list --json` sees them.
    let listed = json(&run_env(&s, &[], &["list", "--json"]));
    for p in listed.as_array().unwrap() {
        let policy = p["policy"].as_str().unwrap();
        for t in ["a", "b"] {
            let n = p["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["targets"].as_array().unwrap().iter().any(|y| y == t))
                .count();
            let got = sample(
                &samples,
                "backupctl_snapshots",
                &[("policy", policy), ("target", t)],
            );
            if policy == "blog" && t == "b" {
                assert_eq!(got, None, "blog does not use b");
            } else {
                assert_eq!(got, Some(n as f64), "{policy} on {t}");
                assert_eq!(
                    sample(
                        &samples,
                        "backupctl_target_up",
                        &[("policy", policy), ("target", t)]
                    ),
                    Some(1.0)
                );
            }
        }
    }
    assert_eq!(
        sample(
            &samples,
            "backupctl_snapshots",
            &[("policy", "shop"), ("target", "a")]
        ),
        Some(2.0)
    );
    // HELP and TYPE lines for every family; replaced atomically, readable
    // by the collector, no temporary left behind.
    let text = std::fs::read_to_string(&m).unwrap();
    for fam in ["backupctl_bytes_read_total", "backupctl_snapshots"] {
        assert!(text.contains(&format!("# HELP {fam} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {fam} ")), "{text}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&m).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let names: Vec<String> = std::fs::read_dir(m.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["backupctl.prom"]);

    // A target that went away is down; prune and sync write the file too.
    // (A file where the directory was: `create = true` cannot make it again.)
    std::fs::rename(s.target_dir("b"), s.path("b.away")).unwrap();
    std::fs::write(s.target_dir("b"), "not a directory").unwrap();
    let o = run_env(&s, &[], &["sync", "shop", "--metrics-file", ms]);
    expect_code(&o, 1);
    let samples = prometheus_parse(&m).unwrap();
    assert_eq!(
        sample(
            &samples,
            "backupctl_target_up",
            &[("policy", "shop"), ("target", "b")]
        ),
        Some(0.0)
    );
    std::fs::remove_file(s.target_dir("b")).unwrap();
    std::fs::rename(s.path("b.away"), s.target_dir("b")).unwrap();
    expect_code(&run_env(&s, &[], &["prune", "--metrics-file", ms]), 0);
    let samples = prometheus_parse(&m).unwrap();
    assert_eq!(
        sample(
            &samples,
            "backupctl_target_up",
            &[("policy", "shop"), ("target", "b")]
        ),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

#[test]
fn json_logs_parse_and_the_log_file_gets_the_summary_line() {
    let s = setup("", "");
    let o = run_env(&s, &[], &["--log-format", "json", "run"]);
    expect_code(&o, 0);
    let mut summaries = Vec::new();
    for line in stderr(&o).lines().filter(|l| !l.trim().is_empty()) {
        // The one-time note about the new signing key is not a log record.
        if !line.starts_with('{') {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        if v["message"] == "summary" {
            summaries.push(v);
        }
    }
    assert_eq!(summaries.len(), 1, "{}", stderr(&o));
    let v = &summaries[0];
    assert_eq!(v["policy"], "shop");
    assert_eq!(v["op"], "run");
    assert_eq!(v["status"], "complete");
    assert_eq!(v["targets"], "a:complete,b:complete");
    assert!(
        v["bytes_read"].as_u64().unwrap() > 0,
        "numbers stay numbers: {v}"
    );
    assert!(v["snapshot"].is_string());

    // -q: nothing on stdout or stderr; the log file still gets info.
    let file = s.path("logs/backupctl.log");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let fs = file.to_str().unwrap();
    let o = run_env(&s, &[], &["-q", "--log-file", fs, "run"]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("summary policy=shop op=run status=complete"))
        .unwrap_or_else(|| panic!("no summary line in the log file:\n{text}"));
    for k in [
        "snapshot=",
        "targets=a:complete,b:complete",
        "bytes_read=",
        "bytes_stored=",
        "seconds=",
    ] {
        assert!(line.contains(k), "{k}: {line}");
    }
    // Appended, not replaced; JSON works there too; a failure's summary says why.
    std::fs::rename(s.path("src"), s.path("src.away")).unwrap();
    let o = run_env(
        &s,
        &[],
        &["-q", "--log-file", fs, "--log-format", "json", "run"],
    );
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("error: policy shop"),
        "-q still says what failed"
    );
    let text2 = std::fs::read_to_string(&file).unwrap();
    assert!(text2.starts_with(&text));
    let failed: serde_json::Value = text2[text.len()..]
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "summary")
        .expect("a JSON summary");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().is_some_and(|e| e.contains("src")),
        "{failed}"
    );

    // A log file that cannot be opened is a usage error.
    let o = run_env(&s, &[], &["--log-file", "/nonexistent-dir/x.log", "list"]);
    expect_code(&o, 2);
}

// ---------------------------------------------------------------------------
// Completions, man pages, systemd units
// ---------------------------------------------------------------------------

fn bin_out(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

#[test]
fn completions_are_produced_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = bin_out(&["completions", shell]);
        expect_code(&o, 0);
        let text = stdout(&o);
        assert!(text.len() > 1000, "{shell}: {} bytes", text.len());
        assert!(text.contains("backupctl"), "{shell}");
        for sub in ["run", "verify", "notify", "completions"] {
            assert!(text.contains(sub), "{shell}: {sub}");
        }
        let f = dir.path().join(format!("backupctl.{shell}"));
        std::fs::write(&f, &text).unwrap();
        // Each shell checks the syntax where it is installed (bash always is).
        let checker = Command::new(shell).arg("-n").arg(&f).output();
        match checker {
            Ok(c) => assert!(
                c.status.success(),
                "{shell} -n rejects the script: {}",
                String::from_utf8_lossy(&c.stderr)
            ),
            Err(_) if shell != "bash" => eprintln!("{shell} not installed: syntax not checked"),
            Err(e) => panic!("bash: {e}"),
        }
    }
    assert!(stdout(&bin_out(&["completions", "bash"])).contains("--metrics-file"));
}

#[test]
fn man_pages_render_and_the_committed_ones_are_up_to_date() {
    let o = bin_out(&["man"]);
    expect_code(&o, 0);
    let page = stdout(&o);
    for s in [
        ".TH backupctl 1",
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(s), "{s} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    expect_code(
        &bin_out(&["-q", "man", "--out-dir", dir.path().to_str().unwrap()]),
        0,
    );
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/man");
    let list = |d: &Path| -> BTreeMap<String, String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
    };
    let generated = list(dir.path());
    assert!(
        generated.contains_key("backupctl-run.1"),
        "{:?}",
        generated.keys()
    );
    assert!(
        generated.contains_key("backupctl-notify-test.1"),
        "{:?}",
        generated.keys()
    );
    assert_eq!(generated["backupctl.1"], page);
    assert!(
        list(&committed) == generated,
        "contrib/man/ is out of date: regenerate it with \
         `target/debug/backupctl man --out-dir contrib/man` (after `rm contrib/man/*.1`)"
    );
    // man renders them (where man-db is installed).
    for name in ["backupctl.1", "backupctl-run.1"] {
        match Command::new("man")
            .arg("-l")
            .arg(committed.join(name))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
        {
            Ok(r) => {
                assert!(
                    r.status.success(),
                    "man -l {name}: {}",
                    String::from_utf8_lossy(&r.stderr)
                );
                let text = String::from_utf8_lossy(&r.stdout);
                assert!(text.contains("backupctl"), "{text}");
                if name == "backupctl-run.1" {
                    assert!(text.contains("--metrics-file"), "{text}");
                }
            }
            Err(_) => eprintln!("man not installed: rendering not checked"),
        }
    }
}

#[test]
fn schedule_systemd_prints_the_committed_units() {
    let o = bin_out(&["schedule", "--systemd"]);
    expect_code(&o, 0);
    let text = stdout(&o);
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("# /etc/systemd/system/") {
            let name = rest.split(':').next().unwrap().to_string();
            units.insert(name.clone(), String::new());
            current = Some(name);
        }
        if let Some(c) = &current {
            units.get_mut(c).unwrap().push_str(line);
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut committed = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        committed.insert(
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read_to_string(&p).unwrap(),
        );
    }
    // Units are separated by one blank line.
    let trimmed: BTreeMap<String, String> = units
        .into_iter()
        .map(|(k, v)| (k, v.trim_end().to_string() + "\n"))
        .collect();
    assert_eq!(trimmed, committed);
    let names: Vec<&str> = committed.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "backupctl-run.service",
            "backupctl-run.timer",
            "backupctl-verify.service",
            "backupctl-verify.timer",
            "backupctl.service"
        ]
    );
    assert!(committed["backupctl-run.service"]
        .contains("ExecStart=/usr/local/bin/backupctl --config /etc/backupctl/backupctl.toml -q run --due --prune"));
    assert!(committed["backupctl-run.timer"].contains("OnCalendar=*:0/5"));
    assert!(committed["backupctl.service"].contains(" daemon\n"));
    // With --config, the units name that file.
    let o = bin_out(&[
        "--config",
        "/srv/bk/backupctl.toml",
        "schedule",
        "--systemd",
    ]);
    expect_code(&o, 0);
    assert!(stdout(&o).contains("--config /srv/bk/backupctl.toml -q verify --due"));
    assert!(!stdout(&o).contains("/etc/backupctl/backupctl.toml"));
}
