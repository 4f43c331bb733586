//! Cutting a tar stream into chunks where files begin and end.
//!
//! [`TarChunker`] is a `Write` sink for the (deterministic) tar stream of a
//! source. It parses the stream as it passes and cuts it into chunks:
//!
//! - every entry's header blocks, with the PAX and GNU long-name records that
//!   precede them, are one [`ChunkKind::Header`] chunk, so a metadata-only
//!   change (a new mtime) rewrites a header chunk and nothing else;
//! - a file's content (with its padding to 512 bytes) up to
//!   [`Params::whole_max`] is one [`ChunkKind::Content`] chunk; larger
//!   content is cut with FastCDC (v2020, pinned: see the golden vectors in
//!   the tests) so that an edit in a large file, a dump or a log rewrites
//!   only the chunks around it;
//! - the end-of-archive blocks (and anything after them) are one
//!   [`ChunkKind::End`] chunk.
//!
//! Concatenating the chunks in order gives back the stream byte for byte.
//! What the chunker does not understand (a malformed header) is never lost:
//! it falls back to cutting the rest of the stream with FastCDC.

use std::io::{self, Write};

/// Chunk sizes (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Content up to this size is one chunk.
    pub whole_max: usize,
    /// FastCDC bounds for larger content.
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Params {
    /// The format's chunking. Changing these changes every chunk id of large
    /// files: a new format version, never a silent change.
    pub const V2: Params = Params {
        whole_max: 256 << 10,
        min: 16 << 10,
        avg: 64 << 10,
        max: 256 << 10,
    };

    /// File index streams: FastCDC throughout, smaller chunks (a changed
    /// file rewrites a few KiB of the index).
    pub const INDEX: Params = Params {
        whole_max: 0,
        min: 4 << 10,
        avg: 16 << 10,
        max: 64 << 10,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Header,
    Content,
    End,
}

/// Receives each chunk, in stream order.
pub trait ChunkSink {
    fn chunk(&mut self, kind: ChunkKind, data: &[u8]) -> io::Result<()>;
}

impl<F: FnMut(ChunkKind, &[u8]) -> io::Result<()>> ChunkSink for F {
    fn chunk(&mut self, kind: ChunkKind, data: &[u8]) -> io::Result<()> {
        self(kind, data)
    }
}

enum State {
    /// Collecting header blocks (and their metadata records).
    Header,
    /// Inside a PAX/long-name record's data: `left` bytes (with padding).
    Meta { left: u64 },
    /// Inside a file's content: `left` bytes of content and padding.
    Content { left: u64, cdc: bool },
    /// After the end-of-archive blocks, or after a header we do not
    /// understand: everything left is cut by FastCDC / kept as the end.
    Tail { cdc: bool },
}

pub struct TarChunker<S: ChunkSink> {
    sink: S,
    params: Params,
    state: State,
    /// Header bytes collected so far (whole blocks).
    header: Vec<u8>,
    /// The block being assembled (< 512 bytes).
    block: Vec<u8>,
    /// Content bytes not yet cut.
    buf: Vec<u8>,
}

const BLOCK: usize = 512;

/// Parse a tar numeric field: octal text, or GNU base-256 (high bit set).
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .try_fold(0u64, |a, b| {
            a.checked_mul(8)?.checked_add((b - b'0') as u64)
        })
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

impl<S: ChunkSink> TarChunker<S> {
    pub fn new(sink: S, params: Params) -> Self {
        TarChunker {
            sink,
            params,
            state: State::Header,
            header: Vec::with_capacity(4 * BLOCK),
            block: Vec::with_capacity(BLOCK),
            buf: Vec::new(),
        }
    }

    /// A chunker for a stream that is not tar (a file index): FastCDC from
    /// the first byte.
    pub fn raw(sink: S, params: Params) -> Self {
        let mut c = TarChunker::new(sink, params);
        c.state = State::Tail { cdc: true };
        c
    }

    /// Flush what is pending (the end of the stream) and give back the sink.
    pub fn finish(mut self) -> io::Result<S> {
        match self.state {
            State::Content { cdc, .. } | State::Tail { cdc } => self.flush_buf(cdc, true)?,
            _ => {}
        }
        // A partial block or unfinished header: keep it as the end.
        let mut rest = std::mem::take(&mut self.header);
        rest.extend_from_slice(&self.block);
        rest.extend_from_slice(&self.buf);
        if !rest.is_empty() {
            self.sink.chunk(ChunkKind::End, &rest)?;
        }
        Ok(self.sink)
    }

    /// A complete 512-byte block in the header state.
    fn header_block(&mut self) -> io::Result<()> {
        let b = std::mem::take(&mut self.block);
        if b.iter().all(|x| *x == 0) {
            // End of archive: the rest is the trailer (zeros), one chunk.
            if !self.header.is_empty() {
                // Metadata records without their entry: keep them together.
                let h = std::mem::take(&mut self.header);
                self.sink.chunk(ChunkKind::Header, &h)?;
            }
            self.buf.extend_from_slice(&b);
            self.state = State::Tail { cdc: false };
            return Ok(());
        }
        let size = parse_number(&b[124..136]);
        let kind = b[156];
        self.header.extend_from_slice(&b);
        let Some(size) = size else {
            // Not a header we understand: stop parsing, keep everything.
            let h = std::mem::take(&mut self.header);
            self.buf.extend_from_slice(&h);
            self.state = State::Tail { cdc: true };
            return Ok(());
        };
        match kind {
            b'x' | b'g' | b'L' | b'K' => {
                self.state = if size == 0 {
                    State::Header
                } else {
                    State::Meta { left: padded(size) }
                };
            }
            _ => {
                // Hard links, symlinks, directories and devices carry no
                // content whatever their size field says (GNU tar writes 0).
                let content = if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
                    0
                } else {
                    size
                };
                let h = std::mem::take(&mut self.header);
                self.sink.chunk(ChunkKind::Header, &h)?;
                if content > 0 {
                    self.state = State::Content {
                        left: padded(content),
                        cdc: padded(content) > self.params.whole_max as u64,
                    };
                } else {
                    self.state = State::Header;
                }
            }
        }
        Ok(())
    }

    /// Cut `buf` with FastCDC while it holds at least a maximum chunk (or
    /// everything when `end`); without `cdc`, `end` emits it whole.
    fn flush_buf(&mut self, cdc: bool, end: bool) -> io::Result<()> {
        let kind = if matches!(self.state, State::Tail { .. }) && !cdc {
            ChunkKind::End
        } else {
            ChunkKind::Content
        };
        if !cdc {
            if end && !self.buf.is_empty() {
                let b = std::mem::take(&mut self.buf);
                self.sink.chunk(kind, &b)?;
            }
            return Ok(());
        }
        let p = self.params;
        let mut start = 0;
        while self.buf.len() - start >= p.max || (end && start < self.buf.len()) {
            let rest = &self.buf[start..];
            let cdc = fastcdc::v2020::FastCDC::new(rest, p.min, p.avg, p.max);
            let (_, cut) = cdc.cut(0, rest.len());
            let cut = cut.max(1).min(rest.len());
            self.sink.chunk(kind, &rest[..cut])?;
            start += cut;
        }
        self.buf.drain(..start);
        Ok(())
    }
}

impl<S: ChunkSink> Write for TarChunker<S> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let take = (BLOCK - self.block.len()).min(data.len());
                    self.block.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.block.len() == BLOCK {
                        self.header_block()?;
                    }
                }
                State::Meta { left } => {
                    let take = (left as usize).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Meta { left }
                    };
                }
                State::Content { left, cdc } => {
                    let take = (left.min(usize::MAX as u64) as usize).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let left = left - take as u64;
                    if left == 0 {
                        if cdc {
                            self.flush_buf(true, true)?;
                        } else {
                            let b = std::mem::take(&mut self.buf);
                            self.sink.chunk(ChunkKind::Content, &b)?;
                        }
                        self.state = State::Header;
                    } else {
                        self.state = State::Content { left, cdc };
                        if cdc {
                            self.flush_buf(true, false)?;
                        }
                    }
                }
                State::Tail { cdc } => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    if cdc {
                        self.flush_buf(true, false)?;
                    }
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream made by the `tar` crate from (path, content) pairs.
    fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, c.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn chunks(stream: &[u8], p: Params, step: usize) -> Vec<(ChunkKind, Vec<u8>)> {
        let mut out = Vec::new();
        let mut c = TarChunker::new(
            |k: ChunkKind, d: &[u8]| {
                out.push((k, d.to_vec()));
                Ok(())
            },
            p,
        );
        for piece in stream.chunks(step) {
            c.write_all(piece).unwrap();
        }
        let _ = c.finish().unwrap();
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    const SMALL: Params = Params {
        whole_max: 8 << 10,
        min: 2 << 10,
        avg: 4 << 10,
        max: 16 << 10,
    };

    #[test]
    fn chunks_concatenate_to_the_stream_whatever_the_write_sizes() {
        let long = format!("{}/file.txt", "d".repeat(150)); // GNU long name
        let stream = tar_of(&[
            ("a.txt", b"hello".to_vec()),
            ("empty", Vec::new()),
            (&long, b"long name".to_vec()),
            ("big.bin", noise(100_000, 1)),
        ]);
        for step in [1, 7, 512, 4096, 1 << 20] {
            let c = chunks(&stream, SMALL, step);
            let joined: Vec<u8> = c.iter().flat_map(|(_, d)| d.clone()).collect();
            assert_eq!(joined, stream, "step {step}");
            let kinds: Vec<ChunkKind> = c.iter().map(|(k, _)| *k).collect();
            assert_eq!(kinds[0], ChunkKind::Header);
            assert_eq!(kinds[1], ChunkKind::Content);
            assert_eq!(kinds[2], ChunkKind::Header, "empty file: header only");
            assert_eq!(kinds[3], ChunkKind::Header, "long name record + header");
            assert_eq!(*kinds.last().unwrap(), ChunkKind::End);
            assert!(c.iter().all(|(_, d)| d.len() <= SMALL.max));
            assert!(
                c.iter().filter(|(k, _)| *k == ChunkKind::Content).count() > 4,
                "the large file is cut"
            );
            // Every header chunk is whole blocks.
            assert!(c
                .iter()
                .filter(|(k, _)| *k == ChunkKind::Header)
                .all(|(_, d)| d.len() % 512 == 0));
        }
    }

    #[test]
    fn a_metadata_change_rewrites_only_the_header() {
        let content = noise(50_000, 7);
        let a = tar_of(&[("x", content.clone()), ("y", b"y".to_vec())]);
        let mut b = tar::Builder::new(Vec::new());
        for (p, c, mt) in [("x", &content, 1), ("y", &b"y".to_vec(), 0)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000 + mt);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, c.as_slice()).unwrap();
        }
        let b = b.into_inner().unwrap();
        let ca = chunks(&a, SMALL, 4096);
        let cb = chunks(&b, SMALL, 4096);
        let differ: Vec<usize> = (0..ca.len()).filter(|&i| ca[i] != cb[i]).collect();
        assert_eq!(differ, vec![0], "only x's header differs");
    }

    #[test]
    fn an_edit_in_a_large_file_rewrites_only_nearby_chunks() {
        let mut big = noise(400_000, 3);
        let a = chunks(&tar_of(&[("big", big.clone())]), SMALL, 9999);
        big[200_000] ^= 1;
        let b = chunks(&tar_of(&[("big", big)]), SMALL, 9999);
        let set: std::collections::HashSet<&Vec<u8>> = a.iter().map(|(_, d)| d).collect();
        let new = b.iter().filter(|(_, d)| !set.contains(d)).count();
        assert!(new <= 2, "{new} new chunks of {}", b.len());
    }

    /// Cut points are part of the format: a chunker change silently loses
    /// dedup. These are the V2 cut points of a fixed input.
    #[test]
    fn golden_cut_points_of_the_v2_parameters() {
        let data = noise(2 << 20, 42);
        let stream = tar_of(&[("golden.bin", data)]);
        let c = chunks(&stream, Params::V2, 65536);
        let sizes: Vec<usize> = c.iter().map(|(_, d)| d.len()).collect();
        let total: usize = sizes.iter().sum();
        assert_eq!(total, stream.len());
        let digest = blake3::hash(
            &sizes
                .iter()
                .flat_map(|s| (*s as u64).to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(
            (sizes.len(), &digest.to_hex()[..16]),
            (GOLDEN.0, GOLDEN.1),
            "sizes {sizes:?}"
        );
    }
    const GOLDEN: (usize, &str) = (30, "38bda5a5af11f3e2");

    #[test]
    fn numbers_in_octal_and_base_256() {
        assert_eq!(parse_number(b"00000000017\0"), Some(15));
        assert_eq!(parse_number(b"     17 \0"), Some(15));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(parse_number(b"\0\0\0"), Some(0));
    }
}
