//! Paths created and opened *beneath* a directory descriptor, never through a
//! symbolic link and never as an absolute path: what the reader uses to write
//! a tree, and what `verify` uses to own its scratch directory.
//!
//! Every path is walked one component at a time with
//! `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)` (creating missing
//! directories with `mkdirat`), and leaves are created with `O_CREAT | O_EXCL
//! | O_NOFOLLOW`, `symlinkat` or `linkat` relative to their parent's
//! descriptor. A symbolic link anywhere on the way stops the walk (`ELOOP`),
//! whatever it points to, so a link in the tree can never redirect a write;
//! and since no absolute path is ever built, a tree deeper than `PATH_MAX`
//! restores like any other. (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! gives the same guarantee in one call, but needs Linux 5.6, is itself
//! limited to `PATH_MAX`, and creating the missing parents needs the walk
//! anyway.) [`Cursor`] keeps the descriptors of the current directory's
//! ancestors, so entries in tree order cost one `openat` per new directory.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn retry<F: FnMut() -> libc::c_int>(mut f: F) -> io::Result<libc::c_int> {
    loop {
        match check(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Open the directory `name` in `parent`, refusing a symbolic link.
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = retry(|| unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(parent, name, mode)` (the umask applies).
pub fn mkdir_at(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    retry(|| unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Create the regular file `name` in `parent`: it must not exist (not even as
/// a dangling symbolic link).
pub fn create_file_at(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    let c = cstr(name)?;
    let fd = retry(|| unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Open the regular file `name` in `parent` for reading, refusing a symbolic link.
pub fn open_file_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let c = cstr(name)?;
    let fd = retry(|| unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `symlinkat(target, parent, name)`.
pub fn symlink_at(target: &OsStr, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    retry(|| unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), c.as_ptr()) })?;
    Ok(())
}

/// `linkat(src_dir, src, dst_dir, dst, 0)`: a hard link to `src` itself
/// (a symbolic link is not followed).
pub fn link_at(
    src_dir: BorrowedFd<'_>,
    src: &OsStr,
    dst_dir: BorrowedFd<'_>,
    dst: &OsStr,
) -> io::Result<()> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    retry(|| unsafe {
        libc::linkat(
            src_dir.as_raw_fd(),
            s.as_ptr(),
            dst_dir.as_raw_fd(),
            d.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

/// `fchownat(parent, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn lchown_at(parent: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    retry(|| unsafe {
        libc::fchownat(
            parent.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// Set the mtime (and atime) of `name` in `parent` without following a link.
pub fn set_link_mtime_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mtime: filetime::FileTime,
) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = libc::timespec {
        tv_sec: mtime.unix_seconds() as libc::time_t,
        tv_nsec: mtime.nanoseconds() as _,
    };
    let times = [ts, ts];
    retry(|| unsafe {
        libc::utimensat(
            parent.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// What `name` in `parent` is, without following a link.
pub fn kind_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::mode_t> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    retry(|| unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st.st_mode & libc::S_IFMT)
}

/// An open directory and the path it was opened by (for messages and for
/// tools that need a path).
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

impl Dir {
    /// Open an existing directory by path (following symbolic links in the
    /// path: the caller chose it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(Dir {
            fd: f.into(),
            path: path.to_path_buf(),
        })
    }

    /// Open an existing directory by path, refusing a final symbolic link.
    pub fn open_nofollow(path: &Path) -> io::Result<Dir> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Dir {
            fd: f.into(),
            path: path.to_path_buf(),
        })
    }

    /// Create a new directory `<prefix><random hex>` with mode 0700 inside
    /// this one (never reusing an existing name) and open it.
    pub fn create_fresh(&self, prefix: &str) -> io::Result<Dir> {
        for _ in 0..16 {
            let name = OsString::from(format!("{prefix}{}", crate::util::random_hex(16)));
            match mkdir_at(self.fd.as_fd(), &name, 0o700) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let fd = open_dir_at(self.fd.as_fd(), &name)?;
            // mkdirat applied the umask; make sure of 0700 whatever it was.
            let f = File::from(fd);
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            return Ok(Dir {
                fd: f.into(),
                path: self.path.join(&name),
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a fresh directory name",
        ))
    }

    /// `fstat` of the open directory: (owner uid, mode bits).
    pub fn owner_and_mode(&self) -> io::Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let m = File::from(self.fd.try_clone()?).metadata()?;
        Ok((m.uid(), m.mode() & 0o7777))
    }
}

/// Remove the directory `path` and everything in it (a symbolic link or file
/// at `path` is removed itself, never followed). Unlike
/// `std::fs::remove_dir_all`, which recurses once per level, this keeps one
/// descriptor and no recursion however deep the tree is: an archive can make
/// a tree tens of thousands of levels deep, enough to overflow a thread's
/// stack in std's remover (and abort the process). It climbs back with
/// `".."`, checked to be the directory it came from, and gives every
/// directory mode 0700 first (a restored 0500 or 0000 directory is still
/// ours to empty).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    if !std::fs::symlink_metadata(path)?.is_dir() {
        return std::fs::remove_file(path);
    }
    /// Unlink what is not a directory in `fd`; return the subdirectories.
    fn clear(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
        let _ = fchmod(fd, 0o700);
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        for ent in rustix::fs::Dir::read_from(fd)? {
            let ent = ent?;
            let name = ent.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let is_dir = match ent.file_type() {
                FileType::Directory => true,
                FileType::Unknown => {
                    kind_at(fd, OsStr::from_bytes(name.to_bytes()))? == libc::S_IFDIR
                }
                _ => false,
            };
            if is_dir {
                subdirs.push(name.to_owned());
            } else {
                files.push(name.to_owned());
            }
        }
        for f in files {
            rustix::fs::unlinkat(fd, f.as_c_str(), AtFlags::empty())?;
        }
        Ok(subdirs)
    }
    let id = |fd: BorrowedFd<'_>| -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(fd)?;
        Ok((st.st_dev, st.st_ino))
    };
    let mut cur: OwnedFd = Dir::open_nofollow(path)?.fd;
    let mut pending = clear(cur.as_fd())?;
    // Per level above the current one: the current directory's name in it,
    // its identity, and its subdirectories still to remove.
    let mut above: Vec<(CString, (u64, u64), Vec<CString>)> = Vec::new();
    loop {
        if let Some(sub) = pending.pop() {
            let fd = open_dir_at(cur.as_fd(), OsStr::from_bytes(sub.to_bytes()))?;
            above.push((sub, id(cur.as_fd())?, std::mem::take(&mut pending)));
            cur = fd;
            pending = clear(cur.as_fd())?;
        } else if let Some((name, parent_id, rest)) = above.pop() {
            let up = open_dir_at(cur.as_fd(), OsStr::new(".."))?;
            if id(up.as_fd())? != parent_id {
                return Err(io::Error::other(
                    "a directory was moved while being removed",
                ));
            }
            rustix::fs::unlinkat(up.as_fd(), name.as_c_str(), AtFlags::REMOVEDIR)?;
            cur = up;
            pending = rest;
        } else {
            break;
        }
    }
    drop(cur);
    std::fs::remove_dir(path)
}

/// `fchmod` on a descriptor.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    retry(|| unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// `fchown` on a descriptor.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    retry(|| unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

/// Set the mtime (and atime) of an open file or directory.
pub fn set_fd_mtime(fd: BorrowedFd<'_>, mtime: filetime::FileTime) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: mtime.unix_seconds() as libc::time_t,
        tv_nsec: mtime.nanoseconds() as _,
    };
    let times = [ts, ts];
    retry(|| unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

/// Why a walk stopped.
#[derive(Debug)]
pub enum WalkError {
    /// The component at this depth (0-based) is a symbolic link.
    Symlink(usize),
    /// The component at this depth exists and is not a directory.
    NotDir(usize),
    /// The component at this depth does not exist (walks without create).
    Missing(usize),
    /// Another error at this depth.
    Io(usize, io::Error),
}

/// Levels whose descriptors stay open; deeper ancestors are reopened from
/// the nearest open one when needed (keeps descriptor use bounded).
const KEEP_OPEN: usize = 64;

/// The descriptors of one directory and its ancestors beneath a root.
pub struct Cursor<'r> {
    root: BorrowedFd<'r>,
    names: Vec<OsString>,
    fds: Vec<Option<OwnedFd>>,
}

impl<'r> Cursor<'r> {
    pub fn new(root: BorrowedFd<'r>) -> Cursor<'r> {
        Cursor {
            root,
            names: Vec::new(),
            fds: Vec::new(),
        }
    }

    fn fd_at(&self, level: usize) -> BorrowedFd<'_> {
        if level == 0 {
            self.root
        } else {
            self.fds[level - 1]
                .as_ref()
                .expect("the deepest level is open")
                .as_fd()
        }
    }

    fn classify(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        depth: usize,
        e: io::Error,
    ) -> WalkError {
        match e.raw_os_error() {
            Some(libc::ELOOP) => WalkError::Symlink(depth),
            Some(libc::ENOTDIR) => match kind_at(parent, name) {
                Ok(k) if k == libc::S_IFLNK => WalkError::Symlink(depth),
                _ => WalkError::NotDir(depth),
            },
            Some(libc::ENOENT) => WalkError::Missing(depth),
            _ => WalkError::Io(depth, e),
        }
    }

    /// The directory `comps` beneath the root. With `create`, missing
    /// components are made with mode 0700 and `created` is called with the
    /// depth of each (so the caller can give them their final mode later).
    pub fn dir(
        &mut self,
        comps: &[&OsStr],
        create: bool,
        created: &mut dyn FnMut(usize),
    ) -> Result<BorrowedFd<'_>, WalkError> {
        let common = self
            .names
            .iter()
            .zip(comps)
            .take_while(|(a, b)| a.as_os_str() == **b)
            .count();
        self.names.truncate(common);
        self.fds.truncate(common);
        // The deepest kept level must be open.
        if common > 0 && self.fds[common - 1].is_none() {
            let base = self
                .fds
                .iter()
                .rposition(|f| f.is_some())
                .map_or(0, |i| i + 1);
            let mut cur: Option<OwnedFd> = None;
            for level in base..common {
                let parent = match &cur {
                    Some(fd) => fd.as_fd(),
                    None => self.fd_at(base),
                };
                let fd = open_dir_at(parent, &self.names[level])
                    .map_err(|e| self.classify(parent, &self.names[level], level, e))?;
                cur = Some(fd);
            }
            self.fds[common - 1] = cur;
        }
        for (depth, name) in comps.iter().enumerate().skip(common) {
            let parent = self.fd_at(depth);
            let fd = match open_dir_at(parent, name) {
                Ok(fd) => fd,
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    match mkdir_at(parent, name, 0o700) {
                        Ok(()) => created(depth),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(self.classify(parent, name, depth, e)),
                    }
                    let fd = open_dir_at(parent, name)
                        .map_err(|e| self.classify(parent, name, depth, e))?;
                    // mkdirat applied the umask: writable by us whatever it was.
                    fchmod(fd.as_fd(), 0o700).map_err(|e| WalkError::Io(depth, e))?;
                    fd
                }
                Err(e) => return Err(self.classify(parent, name, depth, e)),
            };
            if depth >= KEEP_OPEN {
                if let Some(prev) = self.fds.last_mut() {
                    *prev = None;
                }
            }
            self.names.push(name.to_os_string());
            self.fds.push(Some(fd));
        }
        Ok(self.fd_at(comps.len()))
    }
}

/// Open the regular file `rel` beneath `root` for reading, refusing symbolic
/// links on the way and at the end.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<File> {
    let comps: Vec<&OsStr> = rel.iter().collect();
    let Some((leaf, dirs)) = comps.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut cur = Cursor::new(root);
    let dir = cur.dir(dirs, false, &mut |_| {}).map_err(|e| match e {
        WalkError::Io(_, e) => e,
        other => io::Error::other(format!("{}: {other:?}", rel.display())),
    })?;
    open_file_at(dir, leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found writing the fuzz harness: after a hostile archive made a tree
    /// 20,000 levels deep (directories need no manifest entry), removing
    /// the scratch or staging directory with std's recursive remover
    /// overflowed the stack and aborted verify or restore. `remove_tree`
    /// empties it on a small stack, opens what it must, and follows no link.
    #[test]
    fn remove_tree_handles_deep_trees_on_a_small_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let top = tmp.path().join("tree");
        std::fs::create_dir(&top).unwrap();
        let mut fd = Dir::open(&top).unwrap().fd;
        for level in 0..5_000 {
            if level % 1000 == 0 {
                create_file_at(fd.as_fd(), OsStr::new("f"), 0o600).unwrap();
                symlink_at(outside.as_os_str(), fd.as_fd(), OsStr::new("l")).unwrap();
                mkdir_at(fd.as_fd(), OsStr::new("side"), 0o700).unwrap();
            }
            mkdir_at(fd.as_fd(), OsStr::new("a"), 0o700).unwrap();
            let next = open_dir_at(fd.as_fd(), OsStr::new("a")).unwrap();
            if level == 4_000 {
                fchmod(fd.as_fd(), 0o500).unwrap();
            }
            fd = next;
        }
        fchmod(fd.as_fd(), 0).unwrap();
        drop(fd);
        let t = top.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&t))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
        // A file or a link is removed itself.
        let l = tmp.path().join("link");
        std::os::unix::fs::symlink(&outside, &l).unwrap();
        remove_tree(&l).unwrap();
        assert!(outside.join("keep").exists() && !l.exists());
    }
}
