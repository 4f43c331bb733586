//! A `Write` that runs another `Write` on its own thread.
//!
//! A source's thread reads files, builds tar headers and hashes each file;
//! the packer behind it cuts chunks, names them (BLAKE3) and looks them up.
//! Done on one thread, the two add up; [`Piped`] hands the bytes over in
//! 1 MiB blocks through a short bounded queue, so they overlap on two cores
//! (an unchanged night is mostly this work). Blocks are recycled, and the
//! first error of the inner writer is returned by the next write or by
//! [`Piped::finish`].

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Bytes per block handed over.
const BLOCK: usize = 1 << 20;
/// Blocks in flight (queued or being written) besides the one being filled.
const DEPTH: usize = 3;

/// The writer thread's result: the inner writer back, or its first error.
type Outcome<W> = io::Result<W>;

pub struct Piped<W: Write + Send + 'static> {
    tx: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Outcome<W>>>,
    block: Vec<u8>,
}

impl<W: Write + Send + 'static> Piped<W> {
    /// Start the thread that writes into `inner`.
    pub fn new(name: &str, mut inner: W) -> io::Result<Piped<W>> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        let (give_back, free) = mpsc::channel::<Vec<u8>>();
        let thread =
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || -> Outcome<W> {
                    for mut block in rx {
                        inner.write_all(&block)?;
                        block.clear();
                        // The other side may be finishing: a lost block is fine.
                        let _ = give_back.send(block);
                    }
                    inner.flush()?;
                    Ok(inner)
                })?;
        Ok(Piped {
            tx: Some(tx),
            free,
            thread: Some(thread),
            block: Vec::with_capacity(BLOCK),
        })
    }

    /// Hand the filled block over; on a dead thread, its error.
    fn send(&mut self) -> io::Result<()> {
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK));
        let full = std::mem::replace(&mut self.block, next);
        let sent = self.tx.as_ref().map(|tx| tx.send(full).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: it failed (or panicked).
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the stream's writer thread stopped")),
        }
    }

    fn join(&mut self) -> Outcome<W> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the stream's writer thread panicked"))),
            None => Err(io::Error::other(
                "the stream's writer thread already stopped",
            )),
        }
    }

    /// Write what is left, wait for the thread, and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl<W: Write + Send + 'static> Write for Piped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.send()?;
        }
        Ok(n)
    }
    /// Blocks are handed over when full; [`Piped::finish`] flushes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for Piped<W> {
    fn drop(&mut self) {
        // Unfinished (an error upstream): stop the thread, drop what it had.
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..5 * BLOCK + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut p = Piped::new("test", Vec::new()).unwrap();
        let mut at = 0;
        for (i, step) in [1usize, 100, BLOCK, 3 * BLOCK + 17, 9]
            .iter()
            .cycle()
            .enumerate()
        {
            if at == data.len() || i > 1000 {
                break;
            }
            let end = (at + step).min(data.len());
            p.write_all(&data[at..end]).unwrap();
            at = end;
        }
        assert_eq!(p.finish().unwrap(), data);
    }

    struct FailAfter(usize);
    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 < buf.len() {
                return Err(io::Error::other("disk on fire"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_inner_writers_error_comes_back() {
        let mut p = Piped::new("test", FailAfter(2 * BLOCK)).unwrap();
        let block = vec![0u8; BLOCK];
        let mut failed = None;
        for _ in 0..10 {
            if let Err(e) = p.write_all(&block) {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => p.finish().err().expect("an error"),
        };
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }

    #[test]
    fn an_error_at_the_end_comes_back_from_finish() {
        let mut p = Piped::new("test", FailAfter(10)).unwrap();
        p.write_all(b"twenty bytes of data").unwrap();
        let e = p.finish().err().expect("an error");
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }
}
