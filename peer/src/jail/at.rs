//! Operations on one entry of an already opened folder: the `*at` calls
//! behind [`super::Jail`]'s methods, and the mapping of their errors to
//! what the entry turned out to be.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{
    AtFlags, CWD, Mode, OFlags, RenameFlags, Stat, chmodat, fchmod, fstat, fsync, futimens, mkdirat, openat, renameat,
    renameat_with, statat, symlinkat, unlinkat,
};
use rustix::io::Errno;

use super::error::{JailError, Kind};
use super::meta::{self, Entry, Meta};
use super::rel::Rel;
use super::resolve::{self, Stop};

/// The only permission bits the jail ever applies: setuid, setgid and
/// sticky never travel.
const PERMISSION_BITS: u32 = 0o777;

/// Numbers the temporary names of [`replace_with_symlink`].
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// `mode` cut to the bits that may travel.
pub(super) fn permissions(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & PERMISSION_BITS)
}

/// What the entry `name` of `parent` is, if it still exists.
pub(super) fn kind_at(parent: BorrowedFd<'_>, name: &OsStr) -> Option<Kind> {
    statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).ok().map(|stat| Kind::of_mode(stat.st_mode))
}

/// The error for an operation on `rel` that failed because of what the
/// entry is: [`JailError::WrongKind`] with its kind, if it still exists.
pub(super) fn kind_error(op: &'static str, rel: &Rel<'_>, parent: BorrowedFd<'_>, errno: Errno) -> JailError {
    match kind_at(parent, rel.name) {
        Some(found) => JailError::WrongKind { op, path: rel.path.to_owned(), found },
        None => JailError::from_errno(op, rel.path, errno),
    }
}

/// Maps the errno of a `*at` call on the entry `rel` in `parent`.
pub(super) fn entry_error(op: &'static str, rel: &Rel<'_>, parent: BorrowedFd<'_>, errno: Errno) -> JailError {
    match errno {
        // `O_NOFOLLOW` met a link, `O_DIRECTORY` a non-folder, unlink a folder.
        Errno::LOOP | Errno::NOTDIR | Errno::ISDIR => kind_error(op, rel, parent, errno),
        errno => JailError::from_errno(op, rel.path, errno),
    }
}

/// Maps the errno of a rename of `src` to `dest` (in `dest_parent`).
pub(super) fn rename_error(
    op: &'static str,
    src: &Rel<'_>,
    dest: &Rel<'_>,
    dest_parent: BorrowedFd<'_>,
    errno: Errno,
) -> JailError {
    match errno {
        Errno::EXIST | Errno::NOTEMPTY => JailError::AlreadyExists { op, path: dest.path.to_owned() },
        // A file over a folder, or a folder over a non-folder.
        Errno::ISDIR | Errno::NOTDIR => kind_error(op, dest, dest_parent, errno),
        errno => JailError::from_errno(op, src.path, errno),
    }
}

/// Opens the regular file `rel` in `parent` read-only, never following a
/// link; returns it with its `stat`.
pub(super) fn open_file_in(op: &'static str, rel: &Rel<'_>, parent: BorrowedFd<'_>) -> Result<(File, Stat), JailError> {
    // O_NONBLOCK: a FIFO must not block the open before it is refused.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat(parent, rel.name, flags, Mode::empty()).map_err(|errno| entry_error(op, rel, parent, errno))?;
    let stat = fstat(&fd).map_err(|errno| JailError::from_errno(op, rel.path, errno))?;
    match Kind::of_mode(stat.st_mode) {
        Kind::File => Ok((File::from(fd), stat)),
        found => Err(JailError::WrongKind { op, path: rel.path.to_owned(), found }),
    }
}

/// Sets the permission bits (`mode & 0o777`) of the entry `rel` in
/// `parent` if it is one of `kinds`, never following a link.
pub(super) fn chmod_in(
    op: &'static str,
    rel: &Rel<'_>,
    parent: BorrowedFd<'_>,
    kinds: &[Kind],
    mode: u32,
) -> Result<(), JailError> {
    let errno_error = |errno| JailError::from_errno(op, rel.path, errno);
    // O_PATH: opening has no effect on any kind of file and needs no
    // permission; the kind is checked on the very inode that is changed.
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(parent, rel.name, flags, Mode::empty()).map_err(|errno| entry_error(op, rel, parent, errno))?;
    let stat = fstat(&fd).map_err(errno_error)?;
    let found = Kind::of_mode(stat.st_mode);
    if !kinds.contains(&found) {
        return Err(JailError::WrongKind { op, path: rel.path.to_owned(), found });
    }
    // fchmod refuses O_PATH fds; the fd's /proc link reaches exactly its
    // inode (what glibc does for fchmodat(AT_SYMLINK_NOFOLLOW)).
    let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match chmodat(CWD, by_fd.as_str(), permissions(mode), AtFlags::empty()) {
        // No /proc: reopen the entry readable and fchmod that.
        Err(Errno::NOENT) => chmod_reopened(parent, rel.name, &stat, mode),
        done => done,
    }
    .map_err(errno_error)
}

/// Without `/proc`: reopens the entry `name` of `parent` (a file or
/// folder, as in `seen`) and changes its mode if it is still that inode.
pub(super) fn chmod_reopened(parent: BorrowedFd<'_>, name: &OsStr, seen: &Stat, mode: u32) -> Result<(), Errno> {
    let kind = match Kind::of_mode(seen.st_mode) {
        Kind::Dir => OFlags::DIRECTORY,
        _ => OFlags::NONBLOCK | OFlags::NOCTTY,
    };
    let fd = openat(parent, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | kind, Mode::empty())?;
    let now = fstat(&fd)?;
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino) {
        // Replaced meanwhile: a retry looks again.
        return Err(Errno::AGAIN);
    }
    fchmod(&fd, permissions(mode))
}

/// Opens the folder `name` of `at` (name number `index` of the path being
/// made), creating it with `(mode | 0o700) & 0o777` first if it is
/// missing. Returns it, and whether `at` gained an entry.
pub(super) fn enter_or_make(
    at: BorrowedFd<'_>,
    name: &OsStr,
    index: usize,
    mode: u32,
) -> Result<(OwnedFd, bool), Stop> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let stop = |errno| resolve::stopped_at(at, name, index, errno);
    match openat(at, name, flags, Mode::empty()) {
        Ok(fd) => return Ok((fd, false)),
        Err(Errno::NOENT) => {}
        Err(errno) => return Err(stop(errno)),
    }
    let mode = permissions(mode | 0o700);
    let created = match mkdirat(at, name, mode) {
        Ok(()) => true,
        // Made concurrently: enter it.
        Err(Errno::EXIST) => false,
        Err(errno) => return Err(Stop::Errno(errno)),
    };
    let fd = openat(at, name, flags, Mode::empty()).map_err(stop)?;
    if created {
        // The umask may have taken bits: set exactly what was asked.
        fchmod(&fd, mode).map_err(Stop::Errno)?;
    }
    Ok((fd, created))
}

/// Renames without replacing; on a file system without `RENAME_NOREPLACE`,
/// checks first (racy only against local processes).
pub(super) fn rename_no_replace(
    src_parent: BorrowedFd<'_>,
    src: &OsStr,
    dest_parent: BorrowedFd<'_>,
    dest: &OsStr,
) -> Result<(), Errno> {
    match renameat_with(src_parent, src, dest_parent, dest, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => match statat(dest_parent, dest, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Err(Errno::EXIST),
            Err(Errno::NOENT) => renameat(src_parent, src, dest_parent, dest),
            Err(errno) => Err(errno),
        },
        done => done,
    }
}

/// Replaces whatever non-folder is at `rel` with a symlink to `target`: a
/// link under a temporary name (`*.tmp`, ignored by the scanner) renamed
/// over it.
pub(super) fn replace_with_symlink(
    op: &'static str,
    rel: &Rel<'_>,
    parent: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), JailError> {
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let temp = OsString::from(format!(".dartsync-link-{}-{n}.tmp", std::process::id()));
    symlinkat(target, parent, &temp).map_err(|errno| JailError::from_errno(op, rel.path, errno))?;
    if let Err(errno) = renameat(parent, &temp, parent, rel.name) {
        // Best effort: the rename failed, that error is the one to report.
        let _ = unlinkat(parent, &temp, AtFlags::empty());
        return Err(entry_error(op, rel, parent, errno));
    }
    Ok(())
}

/// The listing entry for `name` in the folder `dir` (at `path`); `None`
/// when it vanished since it was listed.
pub(super) fn stat_entry(op: &'static str, path: &Path, dir: BorrowedFd<'_>, name: OsString) -> Option<Entry> {
    let meta = match statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Meta::of(&stat)),
        Err(Errno::NOENT) => return None,
        Err(errno) => Err(JailError::from_errno(op, &path.join(&name), errno)),
    };
    Some(Entry { name, meta })
}

/// Copies `input` (whose `stat` is given) into `output` with its
/// permission bits and mtime, and fsyncs it.
pub(super) fn fill_copy(input: &mut File, output: &mut File, stat: &Stat) -> io::Result<()> {
    io::copy(input, output)?;
    fchmod(&*output, permissions(stat.st_mode))?;
    futimens(&*output, &meta::mtime_only(meta::mtime_of(stat)))?;
    fsync(&*output)?;
    Ok(())
}
