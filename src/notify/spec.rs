//! The `[[notify]]` tables of `backupctl.toml` and of policy files.
//!
//! ```toml
//! [[notify]]
//! on = ["failure", "partial", "stale"]
//! webhook_env = "BACKUPCTL_WEBHOOK_URL"     # or webhook = "https://..."
//! timeout = "10s"                            # per attempt (default)
//! retries = 2                                # after a failed attempt (default)
//! ```
//!
//! Exactly one of `webhook`, `webhook_env`, `healthchecks`,
//! `healthchecks_env` or `command`. URLs are secrets (tokens in the path,
//! the query string or the user info): they are never echoed in errors,
//! logs or output, only their redacted form ([`redact_url`]).

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// What happened. `test` is sent only by `backupctl notify test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Start,
    Success,
    Failure,
    Partial,
    Stale,
    VerifyFailed,
    Test,
}

/// The events `on` accepts.
pub const EVENTS: &[(&str, EventKind)] = &[
    ("start", EventKind::Start),
    ("success", EventKind::Success),
    ("failure", EventKind::Failure),
    ("partial", EventKind::Partial),
    ("stale", EventKind::Stale),
    ("verify_failed", EventKind::VerifyFailed),
];

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Success => "success",
            EventKind::Failure => "failure",
            EventKind::Partial => "partial",
            EventKind::Stale => "stale",
            EventKind::VerifyFailed => "verify_failed",
            EventKind::Test => "test",
        }
    }
}

/// Where a URL comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum UrlSource {
    /// Written in the file (`webhook`, `healthchecks`).
    Literal(String),
    /// Read from this environment variable when sending (`*_env`); `key`
    /// is the configuration key that named it.
    Env { key: &'static str, var: String },
}

impl UrlSource {
    /// The URL, or why there is none (never containing the URL).
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            UrlSource::Literal(u) => Ok(u.clone()),
            UrlSource::Env { key, var } => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    let v = v.trim().to_string();
                    check_url(&v).map_err(|e| {
                        format!("{key}: the environment variable {var} does not hold {e}")
                    })?;
                    Ok(v)
                }
                _ => Err(format!(
                    "{key}: the environment variable {var} is not set (or empty)"
                )),
            },
        }
    }

    /// How it is shown: the redacted URL, or which variable holds it.
    pub fn describe(&self) -> String {
        match self {
            UrlSource::Literal(u) => redact_url(u),
            UrlSource::Env { var, .. } => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => format!("${var} ({})", redact_url(v.trim())),
                _ => format!("${var}"),
            },
        }
    }
}

/// How a notification is delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// JSON POST of the event.
    Webhook(UrlSource),
    /// healthchecks.io-style pings: `/start`, success, `/fail`.
    Healthchecks(UrlSource),
    /// A program, with the event in `BACKUPCTL_*` environment variables.
    Command(Vec<String>),
}

impl Sink {
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Webhook(_) => "webhook",
            Sink::Healthchecks(_) => "healthchecks",
            Sink::Command(_) => "command",
        }
    }
}

/// One validated `[[notify]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySpec {
    pub on: BTreeSet<EventKind>,
    pub sink: Sink,
    /// Bound of one attempt (connect, send, answer; a command's run time).
    pub timeout: Duration,
    /// Attempts after a failed one (with backoff 1 s, 2 s, 4 s, ...).
    pub retries: u32,
    /// Where it is configured, e.g. `backupctl.toml notify[0]` or
    /// `policy shop notify[1]`: names it in logs.
    pub origin: String,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 2;
const MAX_RETRIES: u32 = 10;
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

impl NotifySpec {
    /// Backoff before retry `n` (1-based): 1 s, 2 s, 4 s, ... at most 30 s.
    pub fn backoff(n: u32) -> Duration {
        Duration::from_secs((1u64 << (n.saturating_sub(1)).min(5)).min(30))
    }

    /// The longest one event can take to deliver, retries included.
    pub fn bound(&self) -> Duration {
        let mut d = self.timeout * (self.retries + 1);
        for n in 1..=self.retries {
            d += Self::backoff(n);
        }
        d
    }

    /// `webhook https://hooks.example/… (backupctl.toml notify[0])`: never
    /// the secret parts of a URL.
    pub fn describe(&self) -> String {
        let what = match &self.sink {
            Sink::Webhook(u) | Sink::Healthchecks(u) => u.describe(),
            Sink::Command(argv) => argv[0].clone(),
        };
        format!("{} {what} ({})", self.sink.kind(), self.origin)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    on: Vec<String>,
    webhook: Option<String>,
    webhook_env: Option<String>,
    healthchecks: Option<String>,
    healthchecks_env: Option<String>,
    command: Option<Vec<String>>,
    timeout: Option<String>,
    retries: Option<u32>,
}

/// Parse the `notify` array of one file; `origin` names the file in logs
/// (`backupctl.toml`, `policy shop`).
pub fn parse_list(
    file: &Path,
    origin: &str,
    values: Vec<toml::Value>,
) -> Result<Vec<NotifySpec>, ConfigError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_one(file, &format!("notify[{i}]"), origin, v))
        .collect()
}

/// One `notify` entry at `key`: its events, exactly one sink, its timeout
/// and retries, each checked in that order.
fn parse_one(
    file: &Path,
    key: &str,
    origin: &str,
    v: toml::Value,
) -> Result<NotifySpec, ConfigError> {
    let raw = RawNotify::deserialize(v)
        .map_err(|e| ConfigError::new(file.display(), key, e.message().trim().to_string()))?;
    let on = parse_events(file, key, &raw.on)?;
    let sink = parse_sink(file, key, &raw)?;
    let timeout = parse_timeout(file, key, raw.timeout.as_deref())?;
    let retries = raw.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > MAX_RETRIES {
        return Err(ConfigError::new(
            file.display(),
            format!("{key}.retries"),
            format!("expected at most {MAX_RETRIES}"),
        ));
    }
    Ok(NotifySpec {
        on,
        sink,
        timeout,
        retries,
        origin: format!("{origin} {key}"),
    })
}

/// `on`: at least one event, each one of [`EVENTS`].
fn parse_events(file: &Path, key: &str, on: &[String]) -> Result<BTreeSet<EventKind>, ConfigError> {
    let expected = EVENTS
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let err = |m: String| ConfigError::new(file.display(), format!("{key}.on"), m);
    if on.is_empty() {
        return Err(err(format!("expected at least one event: {expected}")));
    }
    on.iter()
        .map(|e| match EVENTS.iter().find(|(n, _)| n == e) {
            Some((_, k)) => Ok(*k),
            None => Err(err(format!("unknown event {e:?}: expected {expected}"))),
        })
        .collect()
}

/// The one sink of an entry: a webhook or healthchecks URL (literal or
/// from an environment variable) or a command.
fn parse_sink(file: &Path, key: &str, raw: &RawNotify) -> Result<Sink, ConfigError> {
    let mut sinks = Vec::new();
    if let Some(u) = &raw.webhook {
        sinks.push(Sink::Webhook(literal_url(file, key, "webhook", u)?));
    }
    if let Some(v) = &raw.webhook_env {
        sinks.push(Sink::Webhook(env_url(file, key, "webhook_env", v)?));
    }
    if let Some(u) = &raw.healthchecks {
        sinks.push(Sink::Healthchecks(literal_url(
            file,
            key,
            "healthchecks",
            u,
        )?));
    }
    if let Some(v) = &raw.healthchecks_env {
        sinks.push(Sink::Healthchecks(env_url(
            file,
            key,
            "healthchecks_env",
            v,
        )?));
    }
    if let Some(argv) = &raw.command {
        if argv.first().is_none_or(|a| a.trim().is_empty()) {
            return Err(ConfigError::new(
                file.display(),
                format!("{key}.command"),
                "expected a program and its arguments, e.g. [\"/usr/local/bin/page-me\", \"--urgent\"]",
            ));
        }
        sinks.push(Sink::Command(argv.clone()));
    }
    if sinks.len() != 1 {
        return Err(ConfigError::new(
            file.display(),
            key,
            "expected exactly one of webhook, webhook_env, healthchecks, healthchecks_env or command",
        ));
    }
    Ok(sinks.pop().expect("one sink"))
}

/// A URL given in the file at `key.k`; the message never repeats it (it may
/// hold a token).
fn literal_url(file: &Path, key: &str, k: &'static str, u: &str) -> Result<UrlSource, ConfigError> {
    check_url(u).map_err(|e| {
        ConfigError::new(
            file.display(),
            format!("{key}.{k}"),
            format!("expected {e}"),
        )
    })?;
    Ok(UrlSource::Literal(u.to_string()))
}

/// A URL read from the environment variable named at `key.k`.
fn env_url(file: &Path, key: &str, k: &'static str, var: &str) -> Result<UrlSource, ConfigError> {
    if var.trim().is_empty() || var.contains('=') {
        return Err(ConfigError::new(
            file.display(),
            format!("{key}.{k}"),
            "expected the name of an environment variable",
        ));
    }
    Ok(UrlSource::Env {
        key: k,
        var: var.to_string(),
    })
}

/// `timeout`: a duration from 1s to 10m ([`DEFAULT_TIMEOUT`] when unset).
fn parse_timeout(file: &Path, key: &str, t: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(t) = t else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let err = |m: String| ConfigError::new(file.display(), format!("{key}.timeout"), m);
    let d = crate::duration::parse_elapsed(t).map_err(|e| err(e.to_string()))?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(err("expected a duration from 1s to 10m".to_string()));
    }
    Ok(d)
}

/// The parts of a URL: scheme, user info, host[:port], the rest (path,
/// query, fragment).
pub(crate) struct UrlParts<'a> {
    pub scheme: &'a str,
    pub userinfo: Option<&'a str>,
    pub host: &'a str,
    pub rest: &'a str,
}

pub(crate) fn split_url(u: &str) -> Option<UrlParts<'_>> {
    let (scheme, after) = u.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    Some(UrlParts {
        scheme,
        userinfo,
        host,
        rest,
    })
}

/// Is this an http(s) URL with a host? The error says what was expected
/// and never contains the URL.
fn check_url(u: &str) -> Result<(), String> {
    let ok = split_url(u).is_some_and(|p| {
        matches!(p.scheme, "http" | "https")
            && !p.host.is_empty()
            && !u.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if ok {
        Ok(())
    } else {
        Err(
            "an http:// or https:// URL with a host (the value is not shown: it may hold a secret)"
                .into(),
        )
    }
}

/// A URL as it may be shown: scheme and host only, e.g.
/// `https://hc.example/…`. User info, path (tokens such as a healthchecks
/// uuid or a Slack hook's secret), query and fragment are left out.
pub fn redact_url(u: &str) -> String {
    match split_url(u) {
        Some(p) => {
            let user = if p.userinfo.is_some() { "…@" } else { "" };
            let rest = if p.rest.is_empty() || p.rest == "/" {
                ""
            } else {
                "/…"
            };
            format!("{}://{user}{}{rest}", p.scheme, p.host)
        }
        None => "(a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redact_url("https://hc.example/ping/5b6a4a0e-1111-2222-3333-444455556666"),
            "https://hc.example/…"
        );
        assert_eq!(
            redact_url("https://user:secret@hooks.example:8443/x?token=abc#f"),
            "https://…@hooks.example:8443/…"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/"), "http://127.0.0.1:9");
        assert_eq!(redact_url("not a url"), "(a URL)");
    }

    #[test]
    fn bound_counts_every_attempt_and_backoff() {
        let s = NotifySpec {
            on: BTreeSet::new(),
            sink: Sink::Command(vec!["true".into()]),
            timeout: Duration::from_secs(10),
            retries: 2,
            origin: "x".into(),
        };
        assert_eq!(s.bound(), Duration::from_secs(33));
        assert_eq!(NotifySpec::backoff(3), Duration::from_secs(4));
        assert_eq!(NotifySpec::backoff(10), Duration::from_secs(30));
    }

    fn parse(t: &str) -> Result<NotifySpec, ConfigError> {
        let v: toml::Value = toml::from_str(t).unwrap();
        parse_one(Path::new("f.toml"), "notify[0]", "backupctl.toml", v)
    }

    #[test]
    fn validation_names_the_key_and_never_the_url() {
        let e = parse("on = [\"failure\"]\nwebhook = \"ftp://secret-token@x/y\"").unwrap_err();
        assert!(e.to_string().contains("notify[0].webhook"), "{e}");
        assert!(!e.to_string().contains("secret-token"), "{e}");
        let e = parse("on = [\"nope\"]\ncommand = [\"true\"]").unwrap_err();
        assert!(e.to_string().contains("unknown event"), "{e}");
        let e = parse("on = [\"start\"]").unwrap_err();
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let s = parse(
            "on = [\"start\", \"stale\"]\nhealthchecks_env = \"HC\"\ntimeout = \"2s\"\nretries = 0",
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.retries, 0);
        assert_eq!(s.on.len(), 2);
        assert_eq!(s.origin, "backupctl.toml notify[0]");
    }
}
