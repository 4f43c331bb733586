//! How results reach people: indicatif progress bars when stderr is a
//! terminal, plain one-line log records otherwise (cron mails stay short),
//! and JSON on stdout for `--json`.

use backupctl::progress::Counters as Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();

/// Where and how log records go (`--log-format`, `--log-file`).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// One JSON object per record instead of a text line.
    pub json: bool,
    /// Append records to this file instead of stderr; it gets level info
    /// and above even when quiet.
    pub file: Option<std::path::PathBuf>,
}

/// Set up logging: the console (stderr; above the progress bars on a
/// terminal) or `--log-file`, and the in-memory tail that notifications
/// carry ([`backupctl::notify::tail`]). Fails only when the log file cannot be
/// opened.
pub fn init_with(verbosity: i8, opts: &LogOptions) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, Layer, Registry};
    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

    let tty = std::io::stderr().is_terminal();
    let multi = MULTI
        .get_or_init(|| tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())));
    // Quiet (cron): only errors reach the console; the command's own summary
    // says what failed and what to do.
    let level = |v: i8| match v {
        i8::MIN..=-1 => "error",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = |v: i8| {
        tracing_subscriber::EnvFilter::try_from_env("BACKUPCTL_LOG").unwrap_or_else(|_| {
            // Third-party libraries stay silent: their warnings (the AWS SDK's
            // per-provider credential notes, skipped part-level checksums) are
            // not actionable, and backupctl's own errors carry their causes.
            // BACKUPCTL_LOG brings them back for debugging.
            tracing_subscriber::EnvFilter::new(format!("backupctl={},off", level(v)))
        })
    };
    let mut layers: Vec<Boxed> = Vec::new();
    match &opts.file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)
                .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
            let writer = std::sync::Mutex::new(file);
            let l = fmt::layer().with_target(false).with_ansi(false);
            let file_filter = filter(verbosity.max(0));
            layers.push(if opts.json {
                l.json()
                    .flatten_event(true)
                    .with_writer(writer)
                    .with_filter(file_filter)
                    .boxed()
            } else {
                l.with_writer(writer).with_filter(file_filter).boxed()
            });
        }
        None => {
            let l = fmt::layer().with_target(false).with_ansi(tty && !opts.json);
            let console = filter(verbosity);
            layers.push(match (multi.clone(), opts.json) {
                (Some(m), false) => l
                    .without_time()
                    .with_writer(move || SuspendWriter {
                        multi: m.clone(),
                        buf: Vec::new(),
                    })
                    .with_filter(console)
                    .boxed(),
                (Some(m), true) => l
                    .json()
                    .flatten_event(true)
                    .with_writer(move || SuspendWriter {
                        multi: m.clone(),
                        buf: Vec::new(),
                    })
                    .with_filter(console)
                    .boxed(),
                (None, false) => l.with_writer(std::io::stderr).with_filter(console).boxed(),
                (None, true) => l
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(console)
                    .boxed(),
            });
        }
    }
    // What notifications carry: backupctl's records at info and above (debug
    // with -v), as text, without the notifiers' own reports.
    let tail_level = level(verbosity.max(0));
    layers.push(
        fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .with_writer(backupctl::notify::tail::TailWriter::default)
            .with_filter(tracing_subscriber::EnvFilter::new(format!(
                "backupctl={tail_level},backupctl::notify=off,off"
            )))
            .boxed(),
    );
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(())
}

/// Writes a log record above the progress bars.
struct SuspendWriter {
    multi: MultiProgress,
    buf: Vec<u8>,
}

impl Write for SuspendWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SuspendWriter {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.multi.suspend(|| {
            let _ = std::io::stderr().write_all(&buf);
        });
    }
}

/// A progress bar fed from shared counters; a no-op without a terminal.
pub struct Bar {
    bar: Option<ProgressBar>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Bar {
    /// `total`: expected bytes, when known (gives a percentage and ETA).
    pub fn new(label: &str, total: Option<u64>, progress: Arc<Progress>) -> Bar {
        let Some(Some(multi)) = MULTI.get() else {
            return Bar {
                bar: None,
                stop: None,
            };
        };
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{prefix:>14} {spinner} {bytes} {msg} {bytes_per_sec}",
                )
                .expect("template"),
            ),
        };
        let bar = multi.add(bar);
        bar.set_prefix(label.to_string());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let b = bar.clone();
        std::thread::spawn(move || loop {
            b.set_position(progress.bytes.load(Ordering::Relaxed));
            b.set_message(format!("{} files", progress.files.load(Ordering::Relaxed)));
            match rx.recv_timeout(Duration::from_millis(150)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        });
        Bar {
            bar: Some(bar),
            stop: Some(tx),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Print a JSON value on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// Print a line of human output on stdout (above any bars).
pub fn say(line: impl AsRef<str>) {
    let line = line.as_ref();
    match MULTI.get() {
        Some(Some(m)) => m.suspend(|| println!("{line}")),
        _ => println!("{line}"),
    }
}

/// True when progress bars are shown (stderr is a terminal).
pub fn is_tty() -> bool {
    matches!(MULTI.get(), Some(Some(_)))
}

/// The terminal's progress bars as the library's progress display.
pub struct Bars;

impl backupctl::progress::Display for Bars {
    fn task(&self, label: &str, total: Option<u64>, counters: Arc<Progress>) -> Box<dyn Send> {
        Box::new(Bar::new(label, total, counters))
    }
    fn visible(&self) -> bool {
        is_tty()
    }
}

/// The display handle the commands pass to the library.
pub fn display() -> backupctl::progress::Handle {
    backupctl::progress::Handle(Arc::new(Bars))
}
