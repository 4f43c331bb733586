//! `type = "files"`: a directory tree, walked in a stable order (sorted by
//! name) so unchanged trees give byte-identical archives. Excludes are
//! gitignore-style patterns relative to the source path.
//!
//! The tree is read through [`super::walk`]: a symbolic link, another file or
//! a FIFO swapped in after the walk saw an entry is never followed or read;
//! the entry is skipped with a warning naming it. What is there but cannot be
//! read (permission denied, an I/O error) is recorded as *unreadable*: the
//! snapshot is incomplete (`run` exits 3). What vanishes or changes while
//! being read only gets a warning, as with GNU tar.

use super::walk::{self, Entry, Kind, Refusal, Seen, Visitor};
use super::{ArchiveContext, LocalPath, Size, Source, SourceOutput};
use crate::archive::{ArchiveWriter, EntryMeta};
use crate::config::FilesSourceSpec;
use crate::error::Context;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;

impl Source for FilesSourceSpec {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "files"
    }

    fn local_path(&self) -> Option<LocalPath<'_>> {
        Some(LocalPath {
            path: &self.path,
            dir: true,
        })
    }

    fn archive(
        &self,
        w: &mut ArchiveWriter,
        _ctx: &ArchiveContext<'_>,
    ) -> crate::error::Result<SourceOutput> {
        archive_tree(self, w)
    }

    fn estimate(&self) -> crate::error::Result<Option<Size>> {
        scan(self).map(Some)
    }
}

/// Build the exclude matcher for a source.
pub fn excludes(spec: &FilesSourceSpec) -> crate::error::Result<Gitignore> {
    let mut b = GitignoreBuilder::new(&spec.path);
    for pat in &spec.exclude {
        b.add_line(None, pat)
            .with_context(|| format!("source {}: invalid exclude pattern {pat:?}", spec.name))?;
    }
    Ok(b.build()?)
}

fn options(spec: &FilesSourceSpec) -> walk::Options {
    walk::Options {
        one_file_system: spec.one_file_system,
    }
}

fn excluded(gi: &Gitignore, rel: &Path, is_dir: bool) -> bool {
    gi.matched(rel, is_dir).is_ignore()
}

/// Total bytes and files that would be archived (for progress and --dry-run).
pub fn scan(spec: &FilesSourceSpec) -> crate::error::Result<Size> {
    struct Count<'a> {
        gi: &'a Gitignore,
        bytes: u64,
        files: u64,
    }
    impl Visitor for Count<'_> {
        fn skip(&mut self, rel: &Path, is_dir: bool) -> bool {
            excluded(self.gi, rel, is_dir)
        }
        fn dir(&mut self, _: &Path, _: &Path, _: &Seen) -> crate::error::Result<()> {
            Ok(())
        }
        fn entry(&mut self, e: &Entry<'_>) -> crate::error::Result<()> {
            if e.seen.kind == Kind::File {
                self.files += 1;
                self.bytes += e.seen.size;
            }
            Ok(())
        }
        fn refused(&mut self, _: &Path, _: &Path, _: bool, _: Refusal) -> crate::error::Result<()> {
            Ok(())
        }
    }
    let gi = excludes(spec)?;
    let mut c = Count {
        gi: &gi,
        bytes: 0,
        files: 0,
    };
    walk::walk(&spec.path, options(spec), &mut c)?;
    Ok(Size {
        bytes: c.bytes,
        files: c.files,
    })
}

/// Tar metadata of what the walk saw.
fn entry_meta(s: &Seen) -> EntryMeta {
    EntryMeta {
        mode: s.mode & 0o7777,
        uid: s.uid.into(),
        gid: s.gid.into(),
        mtime: s.mtime,
        mtime_nsec: s.mtime_nsec,
    }
}

/// Writes what the walk reports into the archive.
struct Archiver<'a> {
    w: &'a mut ArchiveWriter,
    gi: &'a Gitignore,
}

impl Visitor for Archiver<'_> {
    fn skip(&mut self, rel: &Path, is_dir: bool) -> bool {
        excluded(self.gi, rel, is_dir)
    }

    fn dir(&mut self, rel: &Path, path: &Path, seen: &Seen) -> crate::error::Result<()> {
        self.w
            .add_dir(rel, &entry_meta(seen))
            .with_context(|| format!("archiving {}", path.display()))
    }

    fn entry(&mut self, e: &Entry<'_>) -> crate::error::Result<()> {
        match e.seen.kind {
            Kind::File => match e.open_file() {
                Ok((file, meta)) => self
                    .w
                    .add_file(e.rel, e.path, file, &meta)
                    .with_context(|| format!("archiving {}", e.path.display())),
                Err(why) => self.refused(e.rel, e.path, false, why),
            },
            Kind::Symlink => match e.read_link() {
                Ok(target) => self
                    .w
                    .add_symlink(e.rel, &target, &entry_meta(&e.seen))
                    .with_context(|| format!("archiving {}", e.path.display())),
                Err(why) => self.refused(e.rel, e.path, false, why),
            },
            Kind::Special => {
                self.w.warn(format!(
                    "{}: special file (socket, FIFO or device) skipped",
                    e.path.display()
                ));
                Ok(())
            }
            Kind::Dir => unreachable!("the walk reports directories with Visitor::dir"),
        }
    }

    fn refused(
        &mut self,
        rel: &Path,
        path: &Path,
        is_dir: bool,
        why: Refusal,
    ) -> crate::error::Result<()> {
        let path = path.display();
        match why {
            Refusal::Vanished => self.w.warn(format!(
                "{path}: vanished while being read; not in this snapshot"
            )),
            Refusal::Replaced(what) => self.w.warn(format!(
                "{path}: {what} after the walk saw it; skipped, not in this snapshot"
            )),
            Refusal::Unreadable(e) if is_dir => {
                let mut name = rel.to_string_lossy().into_owned();
                if name.is_empty() {
                    name.push('.');
                }
                name.push('/');
                self.w.unreadable(
                    name,
                    format!("{path}: directory cannot be read ({e}); its contents are not in this snapshot"),
                )
            }
            Refusal::Unreadable(e) => self.w.unreadable(
                rel.to_string_lossy().into_owned(),
                format!("{path}: cannot be read ({e}); not in this snapshot"),
            ),
        }
        Ok(())
    }
}

pub fn archive_tree(
    spec: &FilesSourceSpec,
    w: &mut ArchiveWriter,
) -> crate::error::Result<SourceOutput> {
    let gi = excludes(spec)?;
    let root = &spec.path;
    crate::ensure!(
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
    walk::walk(root, options(spec), &mut Archiver { w, gi: &gi })?;
    Ok(SourceOutput {
        origin: root.display().to_string(),
        database: None,
    })
}
