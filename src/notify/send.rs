//! Delivering one event to one notifier: bounded attempts, retries with
//! backoff, and error messages from which the URL's secret parts are removed.
//!
//! HTTP goes through hyper 1 with rustls (ring) and the system's root
//! certificates, the stack the AWS SDK already builds: no OpenSSL, no
//! extra crates.

use super::spec::{split_url, NotifySpec, Sink};
use super::{Event, EventKind};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::sync::OnceLock;

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt (connection refused, timeout, HTTP 5xx, 429,
    /// a command's non-zero exit).
    Transient(String),
    /// Another attempt would fail the same way (a variable not set, HTTP
    /// 4xx, a program that does not exist).
    Permanent(String),
}

/// Deliver `ev` with `spec`'s timeout and retries. Ok: what the receiver
/// answered; Err: why it was given up. Neither contains a secret.
pub async fn deliver(spec: &NotifySpec, ev: &Event) -> Result<String, String> {
    let attempts = spec.retries + 1;
    let mut last = String::new();
    for n in 0..attempts {
        if n > 0 {
            tokio::time::sleep(NotifySpec::backoff(n)).await;
        }
        match tokio::time::timeout(spec.timeout, attempt(spec, ev)).await {
            Ok(Ok(detail)) if n == 0 => return Ok(detail),
            Ok(Ok(detail)) => return Ok(format!("{detail} (attempt {})", n + 1)),
            Ok(Err(Failure::Permanent(e))) => return Err(e),
            Ok(Err(Failure::Transient(e))) => last = e,
            Err(_) => {
                last = format!(
                    "no answer within the timeout of {}",
                    super::human_duration(spec.timeout.as_secs() as i64)
                )
            }
        }
        if n + 1 < attempts {
            tracing::debug!(
                "notify: {} attempt {} failed: {last}; retrying",
                spec.describe(),
                n + 1
            );
        }
    }
    Err(if attempts > 1 {
        format!("{last} (gave up after {attempts} attempts)")
    } else {
        last
    })
}

async fn attempt(spec: &NotifySpec, ev: &Event) -> Result<String, Failure> {
    match &spec.sink {
        Sink::Webhook(src) => {
            let url = src.resolve().map_err(Failure::Permanent)?;
            let body = serde_json::to_vec(ev).expect("event serialises");
            post(&url, "application/json", body).await
        }
        Sink::Healthchecks(src) => {
            let base = src.resolve().map_err(Failure::Permanent)?;
            let url = healthchecks_url(&base, ev.event);
            post(
                &url,
                "text/plain; charset=utf-8",
                ev.log_tail.clone().into_bytes(),
            )
            .await
        }
        Sink::Command(argv) => command(argv, ev).await,
    }
}

/// The ping URL for an event: `/start`, the URL itself (success), `/fail`,
/// or `/log` for a test (logged by healthchecks without changing the
/// check's state).
pub fn healthchecks_url(base: &str, kind: EventKind) -> String {
    let suffix = match kind {
        EventKind::Start => "/start",
        EventKind::Success => "",
        EventKind::Test => "/log",
        EventKind::Failure | EventKind::Partial | EventKind::Stale | EventKind::VerifyFailed => {
            "/fail"
        }
    };
    let base = base.split('#').next().unwrap_or(base);
    let (path, query) = match base.find('?') {
        Some(i) => base.split_at(i),
        None => (base, ""),
    };
    format!("{}{suffix}{query}", path.trim_end_matches('/'))
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(e) => {
                // No system certificates (no ca-certificates package):
                // https notifiers fail with a certificate error, http works.
                tracing::debug!("notify: no system root certificates: {e}");
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector)
    })
}

/// `text` with every secret part of `url` (the whole URL, its user info,
/// its path and query) replaced.
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, "[url]");
    if let Some(p) = split_url(url) {
        if let Some(u) = p.userinfo.filter(|u| !u.is_empty()) {
            out = out.replace(u, "[redacted]");
            // The password alone (long enough not to be an ordinary word).
            if let Some((_, pw)) = u.split_once(':').filter(|(_, pw)| pw.len() >= 4) {
                out = out.replace(pw, "[redacted]");
            }
        }
        if p.rest.len() > 1 {
            out = out.replace(p.rest, "/[redacted]");
        }
    }
    out
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> Result<String, Failure> {
    use base64::Engine;
    let p = split_url(url).ok_or_else(|| Failure::Permanent("not a URL".into()))?;
    let rest = p.rest.split('#').next().unwrap_or("");
    let clean = format!(
        "{}://{}{}",
        p.scheme,
        p.host,
        if rest.is_empty() { "/" } else { rest }
    );
    let uri: http::Uri = clean.parse().map_err(|_| {
        Failure::Permanent(
            "the URL is not valid (the value is not shown: it may hold a secret)".into(),
        )
    })?;
    let mut req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(
            http::header::USER_AGENT,
            concat!("backupctl/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(ui) = p.userinfo {
        let token = base64::engine::general_purpose::STANDARD.encode(percent_decode(ui));
        req = req.header(http::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure::Permanent(scrub(&e.to_string(), url)))?;
    let resp = client()
        .request(req)
        .await
        .map_err(|e| Failure::Transient(scrub(&chain(&e), url)))?;
    let status = resp.status();
    drop(resp);
    let code = status.as_u16();
    let text = format!(
        "HTTP {code}{}",
        status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    match code {
        200..=299 => Ok(text),
        408 | 425 | 429 | 500..=599 => Err(Failure::Transient(text)),
        300..=399 => Err(Failure::Permanent(format!(
            "{text} (redirects are not followed)"
        ))),
        _ => Err(Failure::Permanent(text)),
    }
}

/// The `BACKUPCTL_*` variables a command notifier gets.
pub fn env_vars(ev: &Event) -> Vec<(&'static str, String)> {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        ("BACKUPCTL_EVENT", ev.event.name().to_string()),
        ("BACKUPCTL_POLICY", o(&ev.policy)),
        ("BACKUPCTL_OP", o(&ev.op)),
        ("BACKUPCTL_STATUS", o(&ev.status)),
        ("BACKUPCTL_SNAPSHOT", o(&ev.snapshot)),
        ("BACKUPCTL_TARGETS", ev.targets_text()),
        ("BACKUPCTL_ERROR", o(&ev.error)),
        ("BACKUPCTL_HOST", ev.host.clone()),
        ("BACKUPCTL_TIME", ev.time.clone()),
        ("BACKUPCTL_MESSAGE", ev.message.clone()),
        (
            "BACKUPCTL_EVENT_JSON",
            serde_json::to_string(ev).expect("event serialises"),
        ),
    ]
}

/// Kills the command's process group if the attempt is abandoned (timeout).
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

async fn command(argv: &[String], ev: &Event) -> Result<String, Failure> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env_vars(ev))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Permanent(format!("cannot start {}: {e}", argv[0])))?;
    let mut guard = GroupKill(child.id().map(|p| p as i32));
    if let Some(mut stdin) = child.stdin.take() {
        // The log tail is small (at most 10 kB): it fits the pipe even when
        // the command does not read it.
        let _ = stdin.write_all(ev.log_tail.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Failure::Transient(format!("waiting for {}: {e}", argv[0])))?;
    guard.0 = None;
    if out.status.success() {
        return Ok("exited 0".into());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    let tail: String = err
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let how = match out.status.code() {
        Some(c) => format!("exited {c}"),
        None => format!("ended by {}", out.status),
    };
    Err(Failure::Transient(if tail.is_empty() {
        how
    } else {
        format!("{how}: {}", crate::util::printable(&tail))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthchecks_urls() {
        let b = "https://hc.example/ping/abc";
        assert_eq!(healthchecks_url(b, EventKind::Start), format!("{b}/start"));
        assert_eq!(healthchecks_url(b, EventKind::Success), b);
        assert_eq!(healthchecks_url(b, EventKind::Partial), format!("{b}/fail"));
        assert_eq!(
            healthchecks_url("https://hc.example/ping/abc/?x=1", EventKind::Failure),
            "https://hc.example/ping/abc/fail?x=1"
        );
        assert_eq!(healthchecks_url(b, EventKind::Test), format!("{b}/log"));
    }

    #[test]
    fn scrub_removes_secret_parts() {
        let u = "https://me:pw-secret@h.example/ping/uuid-1?k=tok";
        let s = scrub(
            &format!("error at {u} and pw-secret and /ping/uuid-1?k=tok"),
            u,
        );
        assert!(
            !s.contains("pw-secret") && !s.contains("uuid-1") && !s.contains("tok"),
            "{s}"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab%40"), b"a:b@");
        assert_eq!(percent_decode("100%"), b"100%");
    }
}
