//! The folder jail: every file-system operation the peer does on behalf of
//! the cluster beneath one root folder. It is the only code that touches
//! synced paths; `.dartsync/tmp` and `.dartsync/versions` get jails of
//! their own, so a download is installed and a replaced file is kept by
//! moving between jails, never through a path string.
//!
//! # Invariant
//! No operation resolves through a symlink in any component, the last one
//! included, except where it is about the link itself (`lstat`,
//! `read_link`, `remove_file`, `set_mtime`, a rename, link or replacement
//! of the entry). A symlink where a folder is expected is an error
//! ([`JailError::SymlinkInPath`]), never followed: whatever links local
//! users or other peers put in the folder, an announced path cannot create,
//! change or delete anything outside the root.
//!
//! # How
//! The root is opened once ([`Jail::open`]). An operation on `a/b/c` opens
//! the folder `a/b` beneath the root's fd (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` where the
//! kernel has it, else one `openat(O_NOFOLLOW | O_DIRECTORY)` per name; see
//! `resolve`), then acts on `c` with the `*at` call on that fd: `mkdirat`,
//! `renameat`, `linkat`, `unlinkat`, `symlinkat`, `readlinkat`, `statat`
//! and `utimensat` with `AT_SYMLINK_NOFOLLOW`, or `openat(O_NOFOLLOW)` and
//! then `fchmod`/`futimens`/`fsync` on the opened file. A name is only ever
//! looked up relative to a folder fd opened without following, so swapping
//! a folder for a symlink at any moment cannot redirect an operation.
//!
//! Also:
//! - paths are checked first: relative, plain names only (no `.`, `..`,
//!   empty name or NUL), and no name equal to `.dartsync` in any ASCII case
//!   (defence in depth: `RelPath` refuses it already). A listing never
//!   shows such a name either;
//! - only the permission bits `0o777` are ever applied: setuid, setgid and
//!   sticky never travel;
//! - the parent folder is fsynced after every create, rename, link and
//!   delete (both parents for a move), and a failed fsync is an error;
//! - errors carry the operation and the relative path, and say whether a
//!   retry can help ([`JailError::is_permanent`]).
//!
//! # Not here
//! No policy (what the history keeps, when to retry, which mode a record
//! wants) and nothing async: every call blocks (`spawn_blocking`). No
//! defence against a local process *moving* a folder out of the root while
//! an operation holds it open: symlinks are the threat, renames by the
//! folder's owner are not.

mod at;
mod error;
mod meta;
mod rel;
mod resolve;
#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{
    AtFlags, Dir, Mode, OFlags, fchmod, fstat, fsync, futimens, linkat, mkdirat, openat, readlinkat, renameat, statat,
    symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;

use self::at::{chmod_in, entry_error, kind_error, open_file_in, permissions, rename_error};
pub(crate) use self::error::{JailError, Kind};
pub(crate) use self::meta::{Entry, Meta};
use self::rel::Rel;
use self::resolve::{Access, Stop, Strategy};

/// Space on the file system of a jail's root, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes an unprivileged writer may still use.
    pub(crate) available: u64,
    /// Size of the file system.
    pub(crate) total: u64,
}

/// A synced path as a path relative to the folder jail's root.
pub(crate) fn rel_path(path: &dartsync_shared::RelPath) -> &Path {
    Path::new(path.as_str())
}

/// Mode of the folders created on the way to the destination of
/// [`Jail::link_to`], [`Jail::copy_to`] and [`Jail::move_to`].
const PARENT_MODE: u32 = 0o700;

/// The operation named by an fsync error: which one needed it matters
/// less than the folder that failed.
const FSYNC_OP: &str = "sync the folder of";

/// A root folder and every operation beneath it. See the module header.
#[derive(Debug)]
pub(crate) struct Jail {
    /// The root, canonicalised once at open: for messages only, never used
    /// to reach a file.
    root_path: PathBuf,
    /// The root folder, opened once, read-only so it can be fsynced: every
    /// operation starts from this fd.
    root: OwnedFd,
    /// How folders beneath the root are opened.
    strategy: Strategy,
}

/// The folder an operation acts in: the root, or one opened beneath it.
enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Opened(fd) => fd.as_fd(),
        }
    }
}

impl Jail {
    /// Opens the jail rooted at `root`, a folder chosen by the user: it is
    /// resolved (links included) once, here, and never again.
    pub(crate) fn open(root: &Path) -> Result<Jail, JailError> {
        Jail::open_with(root, None)
    }

    /// [`Jail::open`] with the resolution strategy forced (tests) or probed.
    fn open_with(root: &Path, strategy: Option<Strategy>) -> Result<Jail, JailError> {
        const OP: &str = "open jail";
        let io_error = |source| JailError::Io { op: OP, path: root.to_owned(), source };
        let root_path = root.canonicalize().map_err(io_error)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&root_path, flags, Mode::empty()).map_err(|e| io_error(e.into()))?;
        let strategy = strategy.unwrap_or_else(|| Strategy::detect(fd.as_fd()));
        Ok(Jail { root_path, root: fd, strategy })
    }

    /// The root folder, for messages.
    pub(crate) fn root(&self) -> &Path {
        &self.root_path
    }

    /// Free and total space of the file system holding the root (what an
    /// unprivileged writer may still use, and its size), in bytes.
    pub(crate) fn free_space(&self) -> Result<Space, JailError> {
        let stat = rustix::fs::fstatvfs(&self.root).map_err(|errno| JailError::Io {
            op: "measure free space",
            path: PathBuf::new(),
            source: errno.into(),
        })?;
        Ok(Space {
            available: stat.f_bavail.saturating_mul(stat.f_frsize),
            total: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }

    /// The `lstat` of `rel`; `None` when it (or a parent folder) does not
    /// exist. A parent that is a symlink or not a folder is an error.
    pub(crate) fn lstat(&self, rel: &Path) -> Result<Option<Meta>, JailError> {
        const OP: &str = "stat";
        let rel = Rel::check(OP, rel)?;
        let parent = match self.parent(OP, &rel, Access::Lookup) {
            Err(JailError::NotFound { .. }) => return Ok(None),
            parent => parent?,
        };
        match statat(&parent, rel.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Meta::of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(errno) => Err(JailError::from_errno(OP, rel.path, errno)),
        }
    }

    /// The target of the symlink `rel` (not interpreted, not followed).
    pub(crate) fn read_link(&self, rel: &Path) -> Result<PathBuf, JailError> {
        const OP: &str = "read symlink";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Lookup)?;
        match readlinkat(&parent, rel.name, Vec::new()) {
            Ok(target) => Ok(PathBuf::from(OsString::from_vec(target.into_bytes()))),
            // Not a symlink.
            Err(Errno::INVAL) => Err(kind_error(OP, &rel, parent.as_fd(), Errno::INVAL)),
            Err(errno) => Err(entry_error(OP, &rel, parent.as_fd(), errno)),
        }
    }

    /// The entries of the folder `dir` (`None`: the root), each with its
    /// `lstat`, in no particular order; `.dartsync` is never listed.
    pub(crate) fn read_dir(&self, dir: Option<&Path>) -> Result<Vec<Entry>, JailError> {
        const OP: &str = "list folder";
        let (path, fd) = match dir {
            None => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
                let fd = openat(&self.root, ".", flags, Mode::empty())
                    .map_err(|errno| JailError::from_errno(OP, Path::new(""), errno))?;
                (Path::new(""), fd)
            }
            Some(dir) => {
                let rel = Rel::check(OP, dir)?;
                (rel.path, self.open_dir(OP, rel.path, rel.path, Access::Modify)?)
            }
        };
        let mut listing = Dir::new(fd).map_err(|errno| JailError::from_errno(OP, path, errno))?;
        let mut names = Vec::new();
        for entry in listing.by_ref() {
            let entry = entry.map_err(|errno| JailError::from_errno(OP, path, errno))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if !matches!(name.as_bytes(), b"." | b"..") && !rel::is_state_dir(name) {
                names.push(name.to_owned());
            }
        }
        let fd = listing.fd().map_err(|errno| JailError::from_errno(OP, path, errno))?;
        Ok(names.into_iter().filter_map(|name| at::stat_entry(OP, path, fd, name)).collect())
    }

    /// Opens the regular file `rel` for reading. A symlink (even to a file
    /// inside the root), folder or special file is refused.
    pub(crate) fn open_read(&self, rel: &Path) -> Result<File, JailError> {
        const OP: &str = "open";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Lookup)?;
        open_file_in(OP, &rel, parent.as_fd()).map(|(file, _)| file)
    }

    /// Creates the folder `rel` (one level: its parent must exist) with
    /// exactly `mode & 0o777`. An existing folder is kept and gets that
    /// mode; anything else there is refused ([`JailError::WrongKind`]).
    pub(crate) fn create_dir(&self, rel: &Path, mode: u32) -> Result<(), JailError> {
        const OP: &str = "create folder";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Modify)?;
        let created = match mkdirat(&parent, rel.name, permissions(mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(errno) => return Err(entry_error(OP, &rel, parent.as_fd(), errno)),
        };
        // Exact bits whatever the umask, and the mode of a folder kept.
        chmod_in(OP, &rel, parent.as_fd(), &[Kind::Dir], mode)?;
        if created {
            fsync_dir(rel.path, &parent)?;
        }
        Ok(())
    }

    /// Creates the folder `rel` and its missing parents, one name at a
    /// time, never following a link. Folders it creates get
    /// `(mode | 0o700) & 0o777` (it must enter them itself); existing ones
    /// are kept as they are.
    pub(crate) fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<(), JailError> {
        const OP: &str = "create folders";
        let rel = Rel::check(OP, rel)?;
        self.make_dirs(OP, rel.path, Some(rel.path), mode).map(drop)
    }

    /// Moves the finished file `temp` of the jail `from` (the peer's
    /// `.dartsync/tmp`) to `dest`, atomically: sets its permission bits to
    /// `mode & 0o777` and its mtime, fsyncs it, renames it over whatever
    /// file or symlink is at `dest` (a folder there is refused) and fsyncs
    /// the folder of `dest`. (Not the temp folder: a temp name that comes
    /// back after a crash is only a stale temp file.) The parent of `dest`
    /// must exist ([`JailError::NotFound`] naming `dest` if not). To keep
    /// the replaced content, [`Jail::link_to`] it into the history first.
    ///
    /// Returns the installed file's metadata, read through its own
    /// descriptor after the rename: what this call put there, whatever the
    /// path holds a moment later (and no second lookup of the path).
    pub(crate) fn install_file(
        &self,
        dest: &Path,
        from: &Jail,
        temp: &Path,
        mode: u32,
        mtime: SystemTime,
    ) -> Result<Meta, JailError> {
        const OP: &str = "install";
        let dest = Rel::check(OP, dest)?;
        let temp = Rel::check(OP, temp)?;
        let temp_parent = from.parent(OP, &temp, Access::Modify)?;
        let (file, _) = open_file_in(OP, &temp, temp_parent.as_fd())?;
        let io_error = |source: Errno| JailError::Io { op: OP, path: temp.path.to_owned(), source: source.into() };
        fchmod(&file, permissions(mode)).map_err(io_error)?;
        futimens(&file, &meta::mtime_only(meta::timespec(mtime))).map_err(io_error)?;
        fsync(&file).map_err(io_error)?;
        let dest_parent = self.parent(OP, &dest, Access::Modify)?;
        renameat(&temp_parent, temp.name, &dest_parent, dest.name)
            .map_err(|errno| rename_error(OP, &temp, &dest, dest_parent.as_fd(), errno))?;
        let installed = Meta::of(&fstat(&file).map_err(io_error)?);
        fsync_dir(dest.path, &dest_parent)?;
        Ok(installed)
    }

    /// Hard-links the entry `rel` (a file or symlink, not followed) as
    /// `to_rel` in the jail `to` (the history), creating the missing
    /// folders there (mode 0700). Never replaces: an existing `to_rel` is
    /// [`JailError::AlreadyExists`].
    pub(crate) fn link_to(&self, rel: &Path, to: &Jail, to_rel: &Path) -> Result<(), JailError> {
        const OP: &str = "link";
        let src = Rel::check(OP, rel)?;
        let dest = Rel::check(OP, to_rel)?;
        let src_parent = self.parent(OP, &src, Access::Lookup)?;
        let dest_parent = to.make_dirs(OP, dest.path, dest.parent, PARENT_MODE)?;
        linkat(&src_parent, src.name, &dest_parent, dest.name, AtFlags::empty()).map_err(|errno| match errno {
            Errno::EXIST => JailError::AlreadyExists { op: OP, path: dest.path.to_owned() },
            // A folder cannot be hard-linked; for anything else EPERM means
            // the file system has no hard links (copy instead).
            Errno::PERM if at::kind_at(src_parent.as_fd(), src.name) == Some(Kind::Dir) => {
                JailError::WrongKind { op: OP, path: src.path.to_owned(), found: Kind::Dir }
            }
            errno => entry_error(OP, &src, src_parent.as_fd(), errno),
        })?;
        fsync_dir(dest.path, &dest_parent)
    }

    /// Copies the regular file `rel` to `to_rel` in the jail `to`, with its
    /// permission bits (`& 0o777`) and mtime, fsynced, creating the missing
    /// folders there (mode 0700); for when [`Jail::link_to`] is impossible.
    /// Never replaces; a failed copy leaves nothing behind.
    pub(crate) fn copy_to(&self, rel: &Path, to: &Jail, to_rel: &Path) -> Result<(), JailError> {
        const OP: &str = "copy";
        let src = Rel::check(OP, rel)?;
        let dest = Rel::check(OP, to_rel)?;
        let src_parent = self.parent(OP, &src, Access::Lookup)?;
        let (mut input, stat) = open_file_in(OP, &src, src_parent.as_fd())?;
        let dest_parent = to.make_dirs(OP, dest.path, dest.parent, PARENT_MODE)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&dest_parent, dest.name, flags, Mode::from_raw_mode(0o600))
            .map_err(|errno| entry_error(OP, &dest, dest_parent.as_fd(), errno))?;
        let mut output = File::from(fd);
        if let Err(e) = at::fill_copy(&mut input, &mut output, &stat) {
            // Best effort: the copy failed already, that error is the one to report.
            let _ = unlinkat(&dest_parent, dest.name, AtFlags::empty());
            return Err(JailError::Io { op: OP, path: dest.path.to_owned(), source: e });
        }
        fsync_dir(dest.path, &dest_parent)
    }

    /// Renames the entry `rel` (of any kind, not followed) to `to_rel` in
    /// the jail `to` (the history for a deletion; `self` for a rename),
    /// creating the missing folders there (mode 0700). Never replaces: an
    /// existing `to_rel` is [`JailError::AlreadyExists`]. Fsyncs both
    /// folders.
    pub(crate) fn move_to(&self, rel: &Path, to: &Jail, to_rel: &Path) -> Result<(), JailError> {
        const OP: &str = "move";
        let src = Rel::check(OP, rel)?;
        let dest = Rel::check(OP, to_rel)?;
        let src_parent = self.parent(OP, &src, Access::Modify)?;
        let dest_parent = to.make_dirs(OP, dest.path, dest.parent, PARENT_MODE)?;
        at::rename_no_replace(src_parent.as_fd(), src.name, dest_parent.as_fd(), dest.name)
            .map_err(|errno| rename_error(OP, &src, &dest, dest_parent.as_fd(), errno))?;
        fsync_dir(dest.path, &dest_parent)?;
        fsync_dir(src.path, &src_parent)
    }

    /// Makes `rel` a symlink to `target` (stored as given, never
    /// followed). Something already at `rel` is replaced atomically (a new
    /// link under a temporary name renamed over it), unless it is a folder.
    pub(crate) fn create_symlink(&self, rel: &Path, target: &Path) -> Result<(), JailError> {
        const OP: &str = "create symlink";
        let rel = Rel::check(OP, rel)?;
        if target.as_os_str().is_empty() {
            return Err(JailError::InvalidPath { op: OP, path: rel.path.to_owned(), reason: "empty symlink target" });
        }
        let parent = self.parent(OP, &rel, Access::Modify)?;
        match symlinkat(target, &parent, rel.name) {
            Ok(()) => {}
            Err(Errno::EXIST) => at::replace_with_symlink(OP, &rel, parent.as_fd(), target)?,
            Err(errno) => return Err(entry_error(OP, &rel, parent.as_fd(), errno)),
        }
        fsync_dir(rel.path, &parent)
    }

    /// Removes the file or symlink `rel` (the link itself, never its
    /// target). A folder is refused.
    pub(crate) fn remove_file(&self, rel: &Path) -> Result<(), JailError> {
        const OP: &str = "remove";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Modify)?;
        unlinkat(&parent, rel.name, AtFlags::empty()).map_err(|errno| entry_error(OP, &rel, parent.as_fd(), errno))?;
        fsync_dir(rel.path, &parent)
    }

    /// Removes the folder `rel` if it is empty ([`JailError::NotEmpty`]
    /// otherwise). A symlink to a folder is refused, not followed.
    pub(crate) fn remove_empty_dir(&self, rel: &Path) -> Result<(), JailError> {
        const OP: &str = "remove folder";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Modify)?;
        unlinkat(&parent, rel.name, AtFlags::REMOVEDIR).map_err(|errno| match errno {
            Errno::NOTEMPTY | Errno::EXIST => JailError::NotEmpty { op: OP, path: rel.path.to_owned() },
            errno => entry_error(OP, &rel, parent.as_fd(), errno),
        })?;
        fsync_dir(rel.path, &parent)
    }

    /// Sets the permission bits of the file or folder `rel` to
    /// `mode & 0o777`. A symlink or special file is refused.
    pub(crate) fn set_mode(&self, rel: &Path, mode: u32) -> Result<(), JailError> {
        const OP: &str = "set mode";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Lookup)?;
        chmod_in(OP, &rel, parent.as_fd(), &[Kind::File, Kind::Dir], mode)
    }

    /// Sets the mtime of `rel` (of a symlink itself, not of its target),
    /// leaving the atime alone.
    pub(crate) fn set_mtime(&self, rel: &Path, mtime: SystemTime) -> Result<(), JailError> {
        const OP: &str = "set mtime";
        let rel = Rel::check(OP, rel)?;
        let parent = self.parent(OP, &rel, Access::Lookup)?;
        let times = meta::mtime_only(meta::timespec(mtime));
        utimensat(&parent, rel.name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| entry_error(OP, &rel, parent.as_fd(), errno))
    }

    /// The folder holding `rel`.
    fn parent(&self, op: &'static str, rel: &Rel<'_>, access: Access) -> Result<DirFd<'_>, JailError> {
        match rel.parent {
            None => Ok(DirFd::Root(self.root.as_fd())),
            Some(dir) => self.open_dir(op, rel.path, dir, access).map(DirFd::Opened),
        }
    }

    /// Opens the folder `dir` (`path` itself or one of its parents).
    fn open_dir(&self, op: &'static str, path: &Path, dir: &Path, access: Access) -> Result<OwnedFd, JailError> {
        resolve::open_dir(self.root.as_fd(), self.strategy, dir, access).map_err(|stop| stop_error(op, path, dir, stop))
    }

    /// Opens the folder `dir` (`None`: the root), creating the missing
    /// folders on the way; see [`Jail::create_dir_all`].
    fn make_dirs(&self, op: &'static str, path: &Path, dir: Option<&Path>, mode: u32) -> Result<DirFd<'_>, JailError> {
        let Some(dir) = dir else { return Ok(DirFd::Root(self.root.as_fd())) };
        match self.open_dir(op, path, dir, Access::Modify) {
            Err(JailError::NotFound { .. }) => {}
            found => return found.map(DirFd::Opened),
        }
        let mut current = DirFd::Root(self.root.as_fd());
        for (i, name) in rel::names(dir).enumerate() {
            let (next, created) =
                at::enter_or_make(current.as_fd(), name, i, mode).map_err(|stop| stop_error(op, path, dir, stop))?;
            if created {
                fsync_dir(path, &current)?;
            }
            current = DirFd::Opened(next);
        }
        Ok(current)
    }
}

/// Maps where a folder could not be opened to an error about `path`.
fn stop_error(op: &'static str, path: &Path, dir: &Path, stop: Stop) -> JailError {
    match stop {
        Stop::Missing => JailError::NotFound { op, path: path.to_owned() },
        Stop::Errno(errno) => JailError::from_errno(op, path, errno),
        Stop::Blocked { at, found } => {
            let component = rel::prefix(dir, at + 1);
            if component == path {
                JailError::WrongKind { op, path: path.to_owned(), found }
            } else if found == Kind::Symlink {
                JailError::SymlinkInPath { op, path: path.to_owned(), component: component.to_owned() }
            } else {
                JailError::NotADirectory { op, path: path.to_owned(), component: component.to_owned() }
            }
        }
    }
}

/// Fsyncs the folder that gained or lost the entry `path`.
fn fsync_dir(path: &Path, dir: &impl AsFd) -> Result<(), JailError> {
    fsync(dir).map_err(|errno| JailError::Io { op: FSYNC_OP, path: path.to_owned(), source: errno.into() })
}
