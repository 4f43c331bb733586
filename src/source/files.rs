//! `type = "files"`: a directory tree, walked in a stable order (sorted by
//! name) so unchanged trees give byte-identical archives. Excludes are
//! gitignore-style patterns relative to the source path.

use super::SourceOutput;
use crate::archive::{ArchiveWriter, EntryMeta};
use crate::config::FilesSourceSpec;
use anyhow::Context;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;

/// Build the exclude matcher for a source.
pub fn excludes(spec: &FilesSourceSpec) -> anyhow::Result<Gitignore> {
    let mut b = GitignoreBuilder::new(&spec.path);
    for pat in &spec.exclude {
        b.add_line(None, pat)
            .with_context(|| format!("source {}: invalid exclude pattern {pat:?}", spec.name))?;
    }
    Ok(b.build()?)
}

/// Walk the tree, yielding (relative path, entry) for everything not excluded.
pub fn walk<'a>(
    spec: &'a FilesSourceSpec,
    gi: &'a Gitignore,
) -> impl Iterator<Item = Result<walkdir::DirEntry, walkdir::Error>> + 'a {
    walkdir::WalkDir::new(&spec.path)
        .follow_links(false)
        .same_file_system(spec.one_file_system)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(move |e| {
            let rel = e.path().strip_prefix(&spec.path).unwrap_or(e.path());
            !gi.matched(rel, e.file_type().is_dir()).is_ignore()
        })
}

/// Total bytes and files that would be archived (for progress and --dry-run).
pub fn scan(spec: &FilesSourceSpec) -> anyhow::Result<(u64, u64)> {
    let gi = excludes(spec)?;
    let (mut bytes, mut files) = (0u64, 0u64);
    for e in walk(spec, &gi).flatten() {
        if e.file_type().is_file() {
            files += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((bytes, files))
}

pub fn archive_tree(spec: &FilesSourceSpec, w: &mut ArchiveWriter) -> anyhow::Result<SourceOutput> {
    let gi = excludes(spec)?;
    let root = &spec.path;
    anyhow::ensure!(
        root.is_dir(),
        "source {}: {} is not a directory",
        spec.name,
        root.display()
    );
    // The root's own mode, owner and mtime, as the entry "./".
    let root_meta = std::fs::metadata(root)
        .with_context(|| format!("source {}: {}", spec.name, root.display()))?;
    w.add_root(&EntryMeta::from_metadata(&root_meta))
        .with_context(|| format!("archiving {}", root.display()))?;
    for entry in walk(spec, &gi) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                {
                    w.warn(format!(
                        "{}: vanished while walking; not in this snapshot",
                        e.path()
                            .map(Path::display)
                            .map(|d| d.to_string())
                            .unwrap_or_default()
                    ));
                } else {
                    w.warn(format!("source {}: {e}; skipped", spec.name));
                }
                continue;
            }
        };
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays under root");
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                w.warn(format!(
                    "{}: {e}; not in this snapshot",
                    entry.path().display()
                ));
                continue;
            }
        };
        let ft = meta.file_type();
        let em = EntryMeta::from_metadata(&meta);
        if ft.is_dir() {
            w.add_dir(rel, &em)
                .with_context(|| format!("archiving {}", entry.path().display()))?;
        } else if ft.is_file() {
            w.add_file(rel, entry.path(), &meta)
                .with_context(|| format!("archiving {}", entry.path().display()))?;
        } else if ft.is_symlink() {
            match std::fs::read_link(entry.path()) {
                Ok(target) => w
                    .add_symlink(rel, &target, &em)
                    .with_context(|| format!("archiving {}", entry.path().display()))?,
                Err(e) => w.warn(format!(
                    "{}: cannot read link: {e}; not in this snapshot",
                    entry.path().display()
                )),
            }
        } else {
            w.warn(format!(
                "{}: special file (socket, FIFO or device) skipped",
                entry.path().display()
            ));
        }
    }
    Ok(SourceOutput {
        origin: root.display().to_string(),
        database: None,
    })
}
