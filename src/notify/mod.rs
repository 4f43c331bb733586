//! Notifications: webhooks, healthchecks pings and commands, fired on
//! `start`, `success`, `failure`, `partial`, `stale` and `verify_failed`.
//!
//! Notifiers come from `[[notify]]` tables in `backupctl.toml` (every
//! policy) and in policy files (that policy). An event goes to each notifier
//! whose `on` lists it.
//!
//! Delivery never holds up a backup: [`emit`] queues the event and returns;
//! each notifier has its own worker that delivers its events in order (a
//! healthchecks `/start` always precedes the run's result), every attempt
//! bounded by the notifier's `timeout`, with `retries` more attempts after
//! a failure (backoff 1 s, 2 s, 4 s, ...). A notifier that fails or hangs
//! is logged (warning) and never changes a command's result. Before the
//! process exits, [`flush`] waits for what is still queued, at most one
//! delivery bound (`timeout` x attempts + backoff) of the slowest notifier.
//!
//! Where events are fired (one place each): `start` in
//! [`crate::ops::run::run_step`]; `success`, `failure`, `partial` and
//! `verify_failed` from each policy's result in the shared per-policy loop
//! (the CLI's per-policy loop, through [`crate::observe`]); `stale` from the
//! due decisions of `run --due` and the daemon ([`stale`]).

pub mod send;
pub mod spec;
pub mod stale;
pub mod tail;

pub use spec::{redact_url, EventKind, NotifySpec, Sink, UrlSource};

use crate::config::{Config, Policy};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Per-policy notification state (in the run history).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotifyState {
    /// The newest snapshot time a `stale` event was sent for: one event per
    /// stale spell, not one per `run --due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_sent_for: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// A target's part in the event.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub name: String,
    /// "complete", "failed", "unreachable", ...
    pub status: String,
}

/// One event, as a webhook receives it (JSON) and a command reads it
/// (`BACKUPCTL_*` variables).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub policy: Option<String>,
    /// "run" or "verify" (none for `stale` and `test`).
    pub op: Option<String>,
    /// The policy's result: "complete", "partial", "incomplete", "failed", ...
    pub status: Option<String>,
    pub snapshot: Option<String>,
    pub targets: Vec<TargetStatus>,
    pub error: Option<String>,
    pub host: String,
    /// RFC 3339.
    pub time: String,
    /// One line for people.
    pub message: String,
    /// The last log lines of this policy's step (healthchecks bodies, a
    /// command's standard input).
    #[serde(skip)]
    pub log_tail: String,
}

impl Event {
    pub fn new(event: EventKind, policy: Option<&str>) -> Event {
        Event {
            event,
            policy: policy.map(str::to_string),
            op: None,
            status: None,
            snapshot: None,
            targets: Vec::new(),
            error: None,
            host: crate::util::hostname(),
            time: crate::clock::now().to_rfc3339(),
            message: String::new(),
            log_tail: String::new(),
        }
    }

    /// `nas:complete,offsite:failed`
    pub fn targets_text(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("{}:{}", t.name, t.status))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn about(&self) -> String {
        match &self.policy {
            Some(p) => format!("{} event for policy {p}", self.event.name()),
            None => format!("{} event", self.event.name()),
        }
    }
}

/// The notifiers an event of `policy` goes to: the global ones, then the
/// policy's own.
pub fn notifiers<'a>(cfg: &'a Config, policy: Option<&'a Policy>) -> Vec<&'a NotifySpec> {
    cfg.notify
        .iter()
        .chain(policy.into_iter().flat_map(|p| p.notify.iter()))
        .collect()
}

struct Hub {
    workers: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Arc<Event>>>>,
    pending: AtomicUsize,
    /// The longest delivery bound of the notifiers used so far.
    bound: Mutex<Duration>,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        workers: Mutex::new(HashMap::new()),
        pending: AtomicUsize::new(0),
        bound: Mutex::new(Duration::ZERO),
    })
}

/// Queue `ev` for every notifier of `policy` (and the global ones) whose
/// `on` lists it. Returns at once; must be called inside the runtime.
pub fn emit(cfg: &Config, policy: Option<&Policy>, ev: Event) {
    let specs: Vec<&NotifySpec> = notifiers(cfg, policy)
        .into_iter()
        .filter(|s| s.on.contains(&ev.event))
        .collect();
    if specs.is_empty() {
        return;
    }
    let ev = Arc::new(ev);
    let h = hub();
    for s in specs {
        {
            let mut b = h.bound.lock().unwrap_or_else(|e| e.into_inner());
            *b = (*b).max(s.bound());
        }
        let mut workers = h.workers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = workers.entry(s.origin.clone()).or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(worker(s.clone(), rx));
            tx
        });
        h.pending.fetch_add(1, Ordering::SeqCst);
        if tx.send(ev.clone()).is_err() {
            h.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Deliver one notifier's events in order.
async fn worker(spec: NotifySpec, mut rx: tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>) {
    while let Some(ev) = rx.recv().await {
        match send::deliver(&spec, &ev).await {
            Ok(detail) => tracing::info!(
                "notify: {} sent to {}: {detail}",
                ev.about(),
                spec.describe()
            ),
            Err(e) => tracing::warn!(
                "notify: {} not delivered to {}: {e}",
                ev.about(),
                spec.describe()
            ),
        }
        hub().pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait for the queued notifications, at most the longest delivery bound of
/// the notifiers used; what is still undelivered then is given up (logged).
pub async fn flush() {
    let h = hub();
    if h.pending.load(Ordering::SeqCst) == 0 {
        return;
    }
    let bound = *h.bound.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = tokio::time::Instant::now() + bound;
    while h.pending.load(Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "notify: {} notification(s) not delivered within {}s; giving up",
                h.pending.load(Ordering::SeqCst),
                bound.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The result of delivering a test event to one notifier.
#[derive(Debug, Serialize)]
pub struct Delivery {
    /// `webhook https://hooks.example/… (backupctl.toml notify[0])`
    pub notifier: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub origin: String,
    pub policy: Option<String>,
    pub ok: bool,
    /// What the receiver answered (`HTTP 200`, `exited 0`).
    pub detail: Option<String>,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Deliver `ev` to `spec` now (with its retries), for `notify test`.
pub async fn deliver_now(spec: &NotifySpec, ev: &Event) -> Delivery {
    let started = std::time::Instant::now();
    let r = send::deliver(spec, ev).await;
    Delivery {
        notifier: spec.describe(),
        kind: spec.sink.kind(),
        origin: spec.origin.clone(),
        policy: ev.policy.clone(),
        ok: r.is_ok(),
        detail: r.as_ref().ok().cloned(),
        error: r.err(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// "26h", "1d2h", "90s": a duration for messages.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let mut out = String::new();
    for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{u}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// The `start` event of a policy's run.
pub fn start_event(policy: &Policy) -> Event {
    let mut ev = Event::new(EventKind::Start, Some(&policy.name));
    ev.op = Some("run".into());
    ev.status = Some("started".into());
    ev.targets = policy
        .targets
        .iter()
        .map(|t| TargetStatus {
            name: t.clone(),
            status: "pending".into(),
        })
        .collect();
    ev.message = format!("policy {}: run started", policy.name);
    ev
}
