//! `restore --include`: which paths of a source are restored, with the same
//! gitignore-style patterns as a source's `exclude` (`*.php` at any depth,
//! `/index.html` at the root, `uploads/` directories only, `!keep.txt` to
//! leave out again); a pattern naming a directory selects everything under
//! it. Remembers which patterns matched, so a restore can say which matched
//! nothing.

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Include {
    gi: Arc<Gitignore>,
    patterns: Vec<String>,
    hits: Arc<Mutex<BTreeSet<String>>>,
}

impl Include {
    /// None when there are no patterns (everything is restored).
    pub fn new(patterns: &[String]) -> Result<Option<Include>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut b = GitignoreBuilder::new("");
        for p in patterns {
            b.add_line(None, p)
                .map_err(|e| format!("--include {p:?}: {e}"))?;
        }
        let gi = b.build().map_err(|e| format!("--include: {e}"))?;
        Ok(Some(Include {
            gi: Arc::new(gi),
            patterns: patterns.to_vec(),
            hits: Arc::default(),
        }))
    }

    /// Is `rel` (relative to the source root) selected?
    pub fn matches(&self, rel: &Path, is_dir: bool) -> bool {
        if rel.as_os_str().is_empty() || rel.has_root() {
            return false;
        }
        match self.gi.matched_path_or_any_parents(rel, is_dir) {
            ignore::Match::Ignore(glob) => {
                self.hits
                    .lock()
                    .expect("include hits")
                    .insert(glob.original().to_string());
                true
            }
            _ => false,
        }
    }

    /// The patterns that selected nothing so far.
    pub fn unmatched(&self) -> Vec<String> {
        let hits = self.hits.lock().expect("include hits");
        self.patterns
            .iter()
            .filter(|p| !p.starts_with('!') && !hits.contains(p.as_str()))
            .cloned()
            .collect()
    }

    /// A fresh copy with no hits recorded.
    pub fn fresh(&self) -> Include {
        Include {
            gi: self.gi.clone(),
            patterns: self.patterns.clone(),
            hits: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(p: &[&str]) -> Include {
        Include::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn gitignore_semantics() {
        let i = inc(&["*.php", "/index.html", "uploads", "docs/", "!secret.php"]);
        assert!(i.matches(Path::new("a/b/c.php"), false));
        assert!(!i.matches(Path::new("a/secret.php"), false));
        assert!(i.matches(Path::new("index.html"), false));
        assert!(!i.matches(Path::new("sub/index.html"), false));
        assert!(i.matches(Path::new("uploads/2026/x.jpg"), false));
        assert!(i.matches(Path::new("docs/readme.txt"), false));
        assert!(
            !i.matches(Path::new("docs"), false),
            "docs/ names a directory"
        );
        assert!(!i.matches(Path::new("other.txt"), false));
        assert!(i.unmatched().is_empty());
        let j = inc(&["*.php", "nothing-here"]);
        assert!(j.matches(Path::new("x.php"), false));
        assert_eq!(j.unmatched(), vec!["nothing-here".to_string()]);
        assert!(j.fresh().unmatched().len() == 2);
    }
}
