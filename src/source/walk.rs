//! The race-safe tree walk behind `files` sources: it owns how a source tree
//! is looked at and opened; [`super::files`] decides what goes in the archive.
//!
//! Everything is done relative to directory descriptors. Each directory is
//! opened relative to its parent's descriptor with `O_DIRECTORY |
//! O_NOFOLLOW`, each entry is looked at with `fstatat` (not following links)
//! and opened with `O_NOFOLLOW | O_NONBLOCK` relative to its directory's
//! descriptor. So a path component swapped for a symbolic link between the
//! walk and the read is never followed, and a swapped FIFO cannot block the
//! open. What is opened is `fstat`ed and must be the very object the walk saw
//! (type, device, inode); anything else is a [`Refusal::Replaced`]: reported
//! and skipped, never substituted. FIFOs, sockets and devices are never read:
//! the walk reports them as [`Kind::Special`], and one found in place of a
//! regular file is refused after the non-blocking open, before any read.
//!
//! The order is stable: a directory comes before its contents, which are
//! visited sorted by name (bytewise), so an unchanged tree is visited the same
//! way every time. Each level of the tree holds one descriptor while its
//! subdirectories are walked (a tree deeper than the open-file limit reports
//! its deepest directories as unreadable).
//!
//! In debug builds only, [`crate::util::test_hook`] runs at `before-open`
//! (after the walk's `fstatat` of an entry, before it is opened), so tests
//! can swap entries at exactly that point.

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What kind of entry the walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFO, socket or device: never opened.
    Special,
}

/// What the walk saw of an entry (`fstatat` without following links), or of
/// an opened directory (`fstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl Seen {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &rustix::fs::Stat) -> Seen {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        };
        Seen {
            kind,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: (st.st_size as i64).max(0) as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: (st.st_mtime_nsec as i64).clamp(0, 999_999_999) as u32,
        }
    }
}

/// Why an entry the walk saw is not read.
#[derive(Debug)]
pub enum Refusal {
    /// It no longer exists.
    Vanished,
    /// Something else is there now (a symbolic link, another file, a FIFO,
    /// ...): the tree changed, or someone tries to make backupctl read
    /// something outside it. Says what it is now.
    Replaced(&'static str),
    /// It is there but cannot be read: permission denied, an I/O error.
    Unreadable(io::Error),
}

/// A non-directory entry, as the walk saw it, that can be opened (or its
/// link read) relative to its directory's descriptor.
pub struct Entry<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    /// The path relative to the walk's root.
    pub rel: &'a Path,
    /// The path under the root as configured (for messages).
    pub path: &'a Path,
    pub seen: Seen,
}

impl Entry<'_> {
    /// Open a regular file for reading; it must still be the regular file the
    /// walk saw (same device and inode). The metadata is `fstat` of the
    /// opened file.
    pub fn open_file(&self) -> Result<(File, Metadata), Refusal> {
        crate::util::test_hook(
            "before-open",
            &[self.path.as_os_str(), self.rel.as_os_str()],
        );
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(self.dir, self.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return Err(refusal(e, "no longer a regular file")),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(Refusal::Unreadable)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            return Err(Refusal::Replaced(if ft.is_fifo() {
                "replaced by a FIFO"
            } else if ft.is_dir() {
                "replaced by a directory"
            } else {
                "replaced by a socket or device"
            }));
        }
        if meta.dev() != self.seen.dev || meta.ino() != self.seen.ino {
            return Err(Refusal::Replaced("replaced by another file"));
        }
        // Back to ordinary blocking reads (regular files ignore O_NONBLOCK on
        // Linux, but not every file system need agree).
        rustix::fs::fcntl_setfl(&file, OFlags::empty())
            .map_err(|e| Refusal::Unreadable(e.into()))?;
        Ok((file, meta))
    }

    /// The target of a symbolic link.
    pub fn read_link(&self) -> Result<PathBuf, Refusal> {
        match rustix::fs::readlinkat(self.dir, self.name, Vec::new()) {
            Ok(t) => Ok(PathBuf::from(OsString::from_vec(t.into_bytes()))),
            Err(e) if e == Errno::INVAL => Err(Refusal::Replaced("no longer a symbolic link")),
            Err(e) => Err(refusal(e, "no longer a symbolic link")),
        }
    }
}

/// An open error as a refusal; `special` describes ENXIO/ENODEV (the name
/// now refers to a socket or device).
fn refusal(e: Errno, special: &'static str) -> Refusal {
    if e == Errno::NOENT {
        Refusal::Vanished
    } else if e == Errno::LOOP {
        Refusal::Replaced("replaced by a symbolic link")
    } else if e == Errno::NXIO || e == Errno::NODEV {
        Refusal::Replaced(special)
    } else {
        Refusal::Unreadable(e.into())
    }
}

/// What the walk reports, in order.
pub trait Visitor {
    /// Excludes: true skips the entry (for a directory, its whole subtree).
    fn skip(&mut self, rel: &Path, is_dir: bool) -> bool;
    /// A directory, before its contents: `seen` is `fstat` of the opened
    /// directory, or the walk's view when it is not descended (a mount point
    /// with `one_file_system`, or a directory that cannot be read, reported
    /// next with [`Visitor::refused`]).
    fn dir(&mut self, rel: &Path, path: &Path, seen: &Seen) -> crate::error::Result<()>;
    /// Anything but a directory.
    fn entry(&mut self, e: &Entry<'_>) -> crate::error::Result<()>;
    /// An entry (`is_dir`: a directory or its listing) that is not walked.
    fn refused(
        &mut self,
        rel: &Path,
        path: &Path,
        is_dir: bool,
        why: Refusal,
    ) -> crate::error::Result<()>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Do not descend into directories on another file system than the
    /// root's (they are reported, empty).
    pub one_file_system: bool,
}

/// Walk the tree at `root` (a directory; the one path that is followed if it
/// is a symbolic link). Fails only when the root cannot be opened or the
/// visitor fails; every other problem goes to [`Visitor::refused`].
pub fn walk(root: &Path, opts: Options, v: &mut dyn Visitor) -> crate::error::Result<()> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .map_err(|e| crate::err!("cannot open {}: {e}", root.display()))?;
    let st = rustix::fs::fstat(&fd)
        .map_err(io::Error::from)
        .map_err(|e| crate::err!("cannot stat {}: {e}", root.display()))?;
    let mut w = Walker {
        opts,
        root_dev: Seen::from_stat(&st).dev,
        rel: PathBuf::new(),
        path: root.to_path_buf(),
        v,
    };
    w.contents(fd)
}

struct Walker<'v> {
    opts: Options,
    root_dev: u64,
    /// The current directory, relative to the root and as a full path.
    rel: PathBuf,
    path: PathBuf,
    v: &'v mut dyn Visitor,
}

impl Walker<'_> {
    /// The entries of the (opened) current directory, sorted by name.
    fn contents(&mut self, fd: OwnedFd) -> crate::error::Result<()> {
        let mut dir = match Dir::new(fd) {
            Ok(d) => d,
            Err(e) => {
                return self
                    .v
                    .refused(&self.rel, &self.path, true, Refusal::Unreadable(e.into()))
            }
        };
        let mut names: Vec<CString> = Vec::new();
        let mut listing_error = None;
        for ent in &mut dir {
            match ent {
                Ok(ent) => {
                    let n = ent.file_name();
                    if n.to_bytes() != b"." && n.to_bytes() != b".." {
                        names.push(n.to_owned());
                    }
                }
                Err(e) => {
                    listing_error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = listing_error {
            // Walk what could be listed; the directory is reported incomplete.
            self.v
                .refused(&self.rel, &self.path, true, Refusal::Unreadable(e.into()))?;
        }
        names.sort_unstable();
        let dfd = dir.fd().map_err(io::Error::from)?;
        for name in &names {
            let os = OsStr::from_bytes(name.to_bytes());
            self.rel.push(os);
            self.path.push(os);
            let r = self.child(dfd, name);
            self.rel.pop();
            self.path.pop();
            r?;
        }
        Ok(())
    }

    /// One entry of the directory `dfd`; `self.rel`/`self.path` name it.
    fn child(&mut self, dfd: BorrowedFd<'_>, name: &CStr) -> crate::error::Result<()> {
        let seen = match rustix::fs::statat(dfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Seen::from_stat(&st),
            Err(e) if e == Errno::NOENT => {
                return self
                    .v
                    .refused(&self.rel, &self.path, false, Refusal::Vanished)
            }
            Err(e) => {
                return self
                    .v
                    .refused(&self.rel, &self.path, false, Refusal::Unreadable(e.into()))
            }
        };
        let is_dir = seen.kind == Kind::Dir;
        if self.v.skip(&self.rel, is_dir) {
            return Ok(());
        }
        if !is_dir {
            return self.v.entry(&Entry {
                dir: dfd,
                name,
                rel: &self.rel,
                path: &self.path,
                seen,
            });
        }
        if self.opts.one_file_system && seen.dev != self.root_dev {
            // A mount point: the directory itself, not what is mounted there.
            return self.v.dir(&self.rel, &self.path, &seen);
        }
        crate::util::test_hook(
            "before-open",
            &[self.path.as_os_str(), self.rel.as_os_str()],
        );
        let flags = OFlags::RDONLY
            | OFlags::DIRECTORY
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(dfd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e == Errno::NOTDIR => {
                // O_DIRECTORY is checked before O_NOFOLLOW: say what is there.
                let now = rustix::fs::statat(dfd, name, AtFlags::SYMLINK_NOFOLLOW);
                let what = match now.map(|st| Seen::from_stat(&st).kind) {
                    Ok(Kind::Symlink) => "replaced by a symbolic link",
                    _ => "no longer a directory",
                };
                return self
                    .v
                    .refused(&self.rel, &self.path, true, Refusal::Replaced(what));
            }
            Err(e) => {
                let why = refusal(e, "no longer a directory");
                if matches!(why, Refusal::Unreadable(_)) {
                    // It is there: keep the (empty) directory itself.
                    self.v.dir(&self.rel, &self.path, &seen)?;
                }
                return self.v.refused(&self.rel, &self.path, true, why);
            }
        };
        let now = match rustix::fs::fstat(&fd) {
            Ok(st) => Seen::from_stat(&st),
            Err(e) => {
                self.v.dir(&self.rel, &self.path, &seen)?;
                return self
                    .v
                    .refused(&self.rel, &self.path, true, Refusal::Unreadable(e.into()));
            }
        };
        if now.dev != seen.dev || now.ino != seen.ino {
            return self.v.refused(
                &self.rel,
                &self.path,
                true,
                Refusal::Replaced("replaced by another directory"),
            );
        }
        self.v.dir(&self.rel, &self.path, &now)?;
        self.contents(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Records what the walk reports, one line per event.
    #[derive(Default)]
    struct Log {
        lines: Vec<String>,
        skip: Vec<&'static str>,
        read: bool,
    }

    impl Visitor for Log {
        fn skip(&mut self, rel: &Path, _is_dir: bool) -> bool {
            self.skip.iter().any(|s| rel == Path::new(s))
        }
        fn dir(&mut self, rel: &Path, _path: &Path, seen: &Seen) -> crate::error::Result<()> {
            assert_eq!(seen.kind, Kind::Dir);
            self.lines.push(format!("dir {}", rel.display()));
            Ok(())
        }
        fn entry(&mut self, e: &Entry<'_>) -> crate::error::Result<()> {
            let line = match e.seen.kind {
                Kind::File if self.read => match e.open_file() {
                    Ok((f, m)) => {
                        let text = std::io::read_to_string(f)?;
                        assert_eq!(m.len(), e.seen.size);
                        format!("file {} {text:?}", e.rel.display())
                    }
                    Err(r) => format!("refused {} {r:?}", e.rel.display()),
                },
                Kind::File => format!("file {}", e.rel.display()),
                Kind::Symlink => format!(
                    "link {} -> {}",
                    e.rel.display(),
                    e.read_link().unwrap().display()
                ),
                Kind::Special => format!("special {}", e.rel.display()),
                Kind::Dir => unreachable!(),
            };
            self.lines.push(line);
            Ok(())
        }
        fn refused(
            &mut self,
            rel: &Path,
            _path: &Path,
            is_dir: bool,
            why: Refusal,
        ) -> crate::error::Result<()> {
            let why = match why {
                Refusal::Vanished => "vanished".to_string(),
                Refusal::Replaced(w) => w.to_string(),
                Refusal::Unreadable(e) => format!("unreadable {:?}", e.kind()),
            };
            self.lines.push(format!(
                "refused{} {} {why}",
                if is_dir { " dir" } else { "" },
                rel.display()
            ));
            Ok(())
        }
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("b/inner")).unwrap();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::write(r.join("b/inner/z"), "z").unwrap();
        std::fs::write(r.join("b/y"), "y").unwrap();
        std::fs::write(r.join("a/x"), "x").unwrap();
        std::fs::write(r.join("B"), "upper").unwrap();
        std::os::unix::fs::symlink("a/x", r.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("etc-link")).unwrap();
        t
    }

    fn run(root: &Path, v: &mut Log) {
        walk(root, Options::default(), v).unwrap();
    }

    #[test]
    fn visits_in_sorted_preorder_without_following_links() {
        let t = tree();
        let mut v = Log {
            read: true,
            ..Default::default()
        };
        run(t.path(), &mut v);
        assert_eq!(
            v.lines,
            [
                "file B \"upper\"",
                "dir a",
                "file a/x \"x\"",
                "dir b",
                "dir b/inner",
                "file b/inner/z \"z\"",
                "file b/y \"y\"",
                "link etc-link -> /etc",
                "link link -> a/x",
            ]
        );
        // The same tree, the same walk.
        let mut again = Log {
            read: true,
            ..Default::default()
        };
        run(t.path(), &mut again);
        assert_eq!(v.lines, again.lines);
    }

    #[test]
    fn skipped_directories_are_not_descended() {
        let t = tree();
        let mut v = Log {
            skip: vec!["b", "link"],
            ..Default::default()
        };
        run(t.path(), &mut v);
        assert_eq!(
            v.lines,
            ["file B", "dir a", "file a/x", "link etc-link -> /etc"]
        );
    }

    #[test]
    fn fifos_are_special_and_never_opened() {
        let t = tree();
        let fifo = t.path().join("a/pipe");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut v = Log {
            read: true,
            ..Default::default()
        };
        run(t.path(), &mut v);
        assert!(
            v.lines.contains(&"special a/pipe".to_string()),
            "{:?}",
            v.lines
        );
    }

    #[test]
    fn a_file_swapped_after_the_walk_saw_it_is_refused() {
        // Entry::open_file checks what it opened against what the walk saw.
        struct Swap(Vec<String>);
        impl Visitor for Swap {
            fn skip(&mut self, _: &Path, _: bool) -> bool {
                false
            }
            fn dir(&mut self, _: &Path, _: &Path, _: &Seen) -> crate::error::Result<()> {
                Ok(())
            }
            fn entry(&mut self, e: &Entry<'_>) -> crate::error::Result<()> {
                if e.seen.kind != Kind::File {
                    return Ok(());
                }
                let p = e.path.to_path_buf();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name == "y" {
                    // A rename over it (a new file first: a freed inode
                    // number may be reused at once).
                    let new = p.with_file_name("y.new");
                    std::fs::write(&new, "another file").unwrap();
                    std::fs::rename(&new, &p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
                match name.as_str() {
                    "x" => std::os::unix::fs::symlink("/etc/passwd", &p).unwrap(),
                    "z" => {
                        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
                        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                    }
                    _ => {}
                }
                let what = match e.open_file() {
                    Ok(_) => "read".to_string(),
                    Err(Refusal::Replaced(w)) => w.to_string(),
                    Err(r) => format!("{r:?}"),
                };
                self.0.push(format!("{} {what}", e.rel.display()));
                Ok(())
            }
            fn refused(
                &mut self,
                _: &Path,
                _: &Path,
                _: bool,
                _: Refusal,
            ) -> crate::error::Result<()> {
                Ok(())
            }
        }
        let t = tree();
        let mut v = Swap(Vec::new());
        walk(t.path(), Options::default(), &mut v).unwrap();
        assert_eq!(
            v.0,
            [
                "B Vanished",
                "a/x replaced by a symbolic link",
                "b/inner/z replaced by a FIFO",
                "b/y replaced by another file",
            ]
        );
    }

    #[test]
    fn unreadable_directories_are_reported_and_kept_empty() {
        if crate::util::is_root() {
            eprintln!("skipped: root reads every directory");
            return;
        }
        let t = tree();
        let b = t.path().join("b");
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut v = Log::default();
        run(t.path(), &mut v);
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(v.lines.contains(&"dir b".to_string()), "{:?}", v.lines);
        assert!(
            v.lines
                .contains(&"refused dir b unreadable PermissionDenied".to_string()),
            "{:?}",
            v.lines
        );
        assert!(!v.lines.iter().any(|l| l.contains("b/y")), "{:?}", v.lines);
    }

    #[test]
    fn one_file_system_stops_at_mount_points() {
        // /dev/pts is its own file system (devpts) in /dev (devtmpfs) on
        // Linux; without that there is nothing to test here.
        use std::os::unix::fs::MetadataExt;
        let (Ok(dev), Ok(pts)) = (std::fs::metadata("/dev"), std::fs::metadata("/dev/pts")) else {
            eprintln!("skipped: no /dev/pts");
            return;
        };
        if dev.dev() == pts.dev() {
            eprintln!("skipped: /dev/pts is not a mount point here");
            return;
        }
        let walk_dev = |one_file_system| {
            let mut v = Log {
                skip: vec!["shm"],
                ..Default::default()
            };
            walk(Path::new("/dev"), Options { one_file_system }, &mut v).unwrap();
            v.lines
        };
        let within = walk_dev(true);
        assert!(within.contains(&"dir pts".to_string()), "{within:?}");
        assert!(!within.iter().any(|l| l.contains(" pts/")), "{within:?}");
        let across = walk_dev(false);
        assert!(across.iter().any(|l| l.contains(" pts/")), "{across:?}");
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let err = walk(
            &t.path().join("nope"),
            Options::default(),
            &mut Log::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot open") && err.contains("nope"), "{err}");
    }
}
