//! Extent lists: where a stream's compressed bytes are, in stream order.
//!
//! One line per extent, `PACK OFFSET LENGTH`, with `PACK` the pack's path
//! relative to the policy's directory on the target
//! (`packs/<first two hex>/<name>.pack`). Adjacent extents of one pack are
//! coalesced. The concatenation of the extents is a sequence of whole zstd
//! frames; decompressed, it is the stream. By hand, from the policy's
//! directory:
//!
//! ```sh
//! while read p o l; do tail -c +$((o+1)) "$p" | head -c "$l"; done < site.extents | zstd -dc | tar -xpf - -C DIR
//! ```

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The pack's name (64 hex).
    pub pack: String,
    pub offset: u64,
    pub len: u64,
}

/// The pack's path relative to the policy directory.
pub fn pack_path(name: &str) -> String {
    format!("packs/{}/{name}.pack", &name[..2])
}

/// The name in a pack path, when the path is exactly what [`pack_path`] makes.
pub fn name_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("packs/")?;
    let (dir, file) = rest.split_once('/')?;
    let name = file.strip_suffix(".pack")?;
    (crate::archive::manifest::is_hash(name) && dir == &name[..2]).then_some(name)
}

/// An extent list refuses to grow past this many lines (a 100 GB source
/// fragmented into 64 KiB runs is ~1.6 M lines).
pub const MAX_EXTENTS: usize = 4 << 20;
/// An extent list refuses to be larger than this many bytes.
pub const MAX_LIST_BYTES: u64 = 512 << 20;

/// Builds a list, coalescing a run that continues where the last one ended.
#[derive(Debug, Default, Clone)]
pub struct ExtentList {
    pub extents: Vec<Extent>,
}

impl ExtentList {
    pub fn push(&mut self, pack: &str, offset: u64, len: u64) {
        if let Some(last) = self.extents.last_mut() {
            if last.pack == pack && last.offset + last.len == offset {
                last.len += len;
                return;
            }
        }
        self.extents.push(Extent {
            pack: pack.to_string(),
            offset,
            len,
        });
    }

    /// The text form (what is stored, and what the shell line reads).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(self.extents.len() * 96);
        for e in &self.extents {
            let _ = writeln!(s, "{} {} {}", pack_path(&e.pack), e.offset, e.len);
        }
        s
    }

    /// Parse and validate the text form: every line names a pack path as
    /// [`pack_path`] makes it and two decimal numbers; nothing else.
    pub fn parse(text: &[u8]) -> Result<ExtentList, String> {
        let text = std::str::from_utf8(text).map_err(|_| "extent list is not text".to_string())?;
        let mut out = ExtentList::default();
        for (i, line) in text.lines().enumerate() {
            if out.extents.len() >= MAX_EXTENTS {
                return Err(format!("extent list longer than {MAX_EXTENTS} lines"));
            }
            let bad = |w: &str| format!("extent list line {}: {w}", i + 1);
            let mut f = line.split(' ');
            let (Some(p), Some(o), Some(l), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad("expected PACK OFFSET LENGTH"));
            };
            let name = name_of_path(p).ok_or_else(|| bad("not a pack path"))?;
            let num = |s: &str| {
                (!s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| bad("not a number"))
            };
            let (offset, len) = (num(o)?, num(l)?);
            if len == 0
                || offset
                    .checked_add(len)
                    .is_none_or(|e| e > super::format::PACK_MAX)
            {
                return Err(bad("extent outside any pack"));
            }
            out.extents.push(Extent {
                pack: name.to_string(),
                offset,
                len,
            });
        }
        Ok(out)
    }

    /// The distinct packs, in first-use order.
    pub fn packs(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.extents
            .iter()
            .map(|e| e.pack.as_str())
            .filter(|p| seen.insert(*p))
            .collect()
    }

    pub fn compressed_len(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_render_parse() {
        let a = "a".repeat(64);
        let b = format!("b{}", "0".repeat(63));
        let mut l = ExtentList::default();
        l.push(&a, 0, 10);
        l.push(&a, 10, 5); // continues: coalesced
        l.push(&b, 0, 7);
        l.push(&a, 100, 3);
        assert_eq!(l.extents.len(), 3);
        let text = l.render();
        assert_eq!(
            text.lines().next().unwrap(),
            format!("packs/aa/{a}.pack 0 15")
        );
        assert_eq!(
            ExtentList::parse(text.as_bytes()).unwrap().extents,
            l.extents
        );
        assert_eq!(l.packs(), vec![a.as_str(), b.as_str()]);
    }

    #[test]
    fn hostile_lists_are_refused() {
        let a = "a".repeat(64);
        for bad in [
            format!("packs/aa/{a}.pack 0"),
            format!("packs/aa/{a}.pack 0 0"),
            format!("packs/ab/{a}.pack 0 1"),
            format!("../packs/aa/{a}.pack 0 1"),
            "packs/aa/../../etc/passwd 0 1".to_string(),
            "/etc/passwd 0 1".to_string(),
            format!("packs/aa/{a}.pack -1 1"),
            format!("packs/aa/{a}.pack 0 99999999999999"),
            format!("packs/aa/{a}.pack  0 1"),
            format!("packs/aa/{a}.pack 0 1 extra"),
        ] {
            assert!(ExtentList::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(ExtentList::parse(&[0xff, 0xfe]).is_err());
    }
}
