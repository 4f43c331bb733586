//! The last log lines, kept in memory for notifications: a healthchecks
//! ping carries the tail of the policy's log as its body, a command gets it
//! on standard input. Fed by a log layer installed in [`crate::report`]
//! (plain text, level info and above, whatever `-q` says).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Lines kept, and the most a tail may hold (healthchecks' default ping
/// body limit is 10 kB).
const KEEP_LINES: usize = 200;
pub const MAX_TAIL_BYTES: usize = 10_000;

struct Tail {
    next: u64,
    lines: VecDeque<(u64, String)>,
}

static TAIL: Mutex<Tail> = Mutex::new(Tail {
    next: 0,
    lines: VecDeque::new(),
});

fn lock() -> std::sync::MutexGuard<'static, Tail> {
    TAIL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A position in the log: [`since`] returns what was logged after it.
pub fn mark() -> u64 {
    lock().next
}

/// The lines logged since `mark`, newest last, at most [`MAX_TAIL_BYTES`]
/// (older lines are dropped first).
pub fn since(mark: u64) -> String {
    let t = lock();
    let mut picked: Vec<&str> = Vec::new();
    let mut bytes = 0;
    for (seq, line) in t.lines.iter().rev() {
        if *seq < mark || bytes + line.len() > MAX_TAIL_BYTES {
            break;
        }
        bytes += line.len();
        picked.push(line);
    }
    picked.reverse();
    picked.concat()
}

fn push(text: &str) {
    let mut t = lock();
    for line in text.split_inclusive('\n') {
        let seq = t.next;
        t.next += 1;
        let mut line = line.to_string();
        if line.len() > MAX_TAIL_BYTES / 4 {
            let mut cut = MAX_TAIL_BYTES / 4;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("…\n");
        }
        t.lines.push_back((seq, line));
        if t.lines.len() > KEEP_LINES {
            t.lines.pop_front();
        }
    }
}

/// One log record being written (a `tracing_subscriber` writer).
#[derive(Default)]
pub struct TailWriter(Vec<u8>);

impl Write for TailWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TailWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            push(&String::from_utf8_lossy(&self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_returns_only_newer_lines() {
        push("before\n");
        let m = mark();
        push("one\ntwo\n");
        assert_eq!(since(m), "one\ntwo\n");
    }
}
