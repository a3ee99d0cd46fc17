//! Opening a folder beneath the jail root without following any symlink.
//!
//! Two strategies, the same result:
//! - [`Strategy::Openat2`]: one `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+): the kernel
//!   refuses any symlink, magic link or `..` escape on the way;
//! - [`Strategy::Walk`]: one `openat(O_NOFOLLOW | O_DIRECTORY)` per name,
//!   each relative to the folder fd opened by the step before.
//!
//! Which one works is probed once per process ([`Strategy::detect`]): a
//! kernel without `openat2`, or a seccomp filter that refuses it, answers
//! `ENOSYS` (or `EPERM`) and the walk is used from then on.
//!
//! `RESOLVE_NO_XDEV` is deliberately not set: a mount point inside the
//! folder is the user's choice, and the walk could not enforce it anyway.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, openat, openat2, statat};
use rustix::io::Errno;

use super::error::Kind;
use super::rel;

/// The `openat2` resolution: beneath the fd, no symlink of any kind.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` answers `EAGAIN` when a concurrent rename may have confused a
/// scoped lookup; it is retried this many times before giving up.
const EAGAIN_RETRIES: usize = 16;

/// What [`Strategy::detect`] found, shared by every jail of the process.
static DETECTED: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const OPENAT2: u8 = 1;
const WALK: u8 = 2;

/// How folders beneath a root are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    /// One `openat2` call per folder.
    Openat2,
    /// One `openat(O_NOFOLLOW)` per name.
    Walk,
}

impl Strategy {
    /// The strategy this kernel supports, probed on `root` the first time.
    pub(super) fn detect(root: BorrowedFd<'_>) -> Strategy {
        match DETECTED.load(Ordering::Relaxed) {
            OPENAT2 => return Strategy::Openat2,
            WALK => return Strategy::Walk,
            _ => {}
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let found = match openat2(root, ".", flags, Mode::empty(), RESOLVE) {
            Err(Errno::NOSYS | Errno::PERM) => Strategy::Walk,
            _ => Strategy::Openat2,
        };
        remember(found);
        found
    }
}

fn remember(strategy: Strategy) {
    let value = match strategy {
        Strategy::Openat2 => OPENAT2,
        Strategy::Walk => WALK,
    };
    DETECTED.store(value, Ordering::Relaxed);
}

/// What an opened folder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Only as the base of `*at` calls (`O_PATH`: no read permission
    /// needed, cannot be fsynced).
    Lookup,
    /// Also fsynced or listed (`O_RDONLY`).
    Modify,
}

impl Access {
    fn flags(self) -> OFlags {
        match self {
            Access::Lookup => OFlags::PATH,
            Access::Modify => OFlags::RDONLY,
        }
    }
}

/// Why a folder could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Name number `at` (from 0) is not a folder: it is a `found`.
    Blocked { at: usize, found: Kind },
    /// A name does not exist.
    Missing,
    /// Any other failure.
    Errno(Errno),
}

/// Opens the folder `dir` (a checked, non-empty path) beneath `root`.
pub(super) fn open_dir(root: BorrowedFd<'_>, strategy: Strategy, dir: &Path, access: Access) -> Result<OwnedFd, Stop> {
    match strategy {
        Strategy::Openat2 => open_beneath(root, dir, access),
        Strategy::Walk => walk(root, dir, access),
    }
}

fn open_beneath(root: BorrowedFd<'_>, dir: &Path, access: Access) -> Result<OwnedFd, Stop> {
    let flags = access.flags() | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut retries = 0;
    loop {
        match openat2(root, dir, flags, Mode::empty(), RESOLVE) {
            Ok(fd) => return Ok(fd),
            Err(Errno::AGAIN) if retries < EAGAIN_RETRIES => retries += 1,
            Err(Errno::NOSYS) => {
                remember(Strategy::Walk);
                return walk(root, dir, access);
            }
            Err(Errno::NOENT) => return Err(Stop::Missing),
            // Stopped on a link or a non-folder: a walk tells which name.
            // If the walk gets through, the folder changed meanwhile.
            Err(errno @ (Errno::LOOP | Errno::NOTDIR | Errno::XDEV)) => {
                return walk(root, dir, Access::Lookup).and(Err(Stop::Errno(errno)));
            }
            Err(errno) => return Err(Stop::Errno(errno)),
        }
    }
}

fn walk(root: BorrowedFd<'_>, dir: &Path, access: Access) -> Result<OwnedFd, Stop> {
    let count = rel::names(dir).count();
    let mut current: Option<OwnedFd> = None;
    for (i, name) in rel::names(dir).enumerate() {
        let at = current.as_ref().map_or(root, AsFd::as_fd);
        // Only the folder the caller gets needs to be readable.
        let access = if i + 1 == count { access } else { Access::Lookup };
        let flags = access.flags() | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(at, name, flags, Mode::empty()).map_err(|errno| stopped_at(at, name, i, errno))?;
        current = Some(fd);
    }
    current.ok_or(Stop::Errno(Errno::INVAL))
}

/// Classifies a failed `openat(at, name, O_DIRECTORY | O_NOFOLLOW)` of
/// name number `at_index`.
pub(super) fn stopped_at(at: BorrowedFd<'_>, name: &OsStr, at_index: usize, errno: Errno) -> Stop {
    match errno {
        Errno::NOENT => Stop::Missing,
        Errno::NOTDIR | Errno::LOOP => match statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if Kind::of_mode(stat.st_mode) != Kind::Dir => {
                Stop::Blocked { at: at_index, found: Kind::of_mode(stat.st_mode) }
            }
            // Changed meanwhile: report what happened.
            _ => Stop::Errno(errno),
        },
        errno => Stop::Errno(errno),
    }
}
