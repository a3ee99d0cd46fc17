//! [`Meta`], what `lstat` says about an entry, [`Entry`], one name of a
//! folder listing, and the timestamp conversions of the jail.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Stat, Timespec, Timestamps, UTIME_OMIT, fstat};

use super::error::{JailError, Kind};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// What `lstat` says about an entry (a symlink is described, never
/// followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// What the entry is.
    pub(crate) kind: Kind,
    /// Size in bytes (for a symlink, the length of its target).
    pub(crate) size: u64,
    /// Permission bits, `& 0o7777` (what is on disk; the jail only ever
    /// sets `0o777` bits).
    pub(crate) mode: u32,
    /// Inode number.
    pub(crate) inode: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub(crate) mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch (moves with
    /// every write, whatever the mtime is set to).
    pub(crate) ctime_ns: i64,
}

impl Meta {
    /// The metadata in a `stat` result.
    // The field types of `Stat` differ between architectures (`c_long` on
    // x86_64, `i64` on 32-bit ARM): `as` is the portable conversion, and
    // sizes and inodes are never negative.
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn of(stat: &Stat) -> Meta {
        Meta {
            kind: Kind::of_mode(stat.st_mode),
            size: stat.st_size as u64,
            mode: stat.st_mode & 0o7777,
            inode: stat.st_ino as u64,
            mtime_ns: nanos(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            ctime_ns: nanos(stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        }
    }

    /// The metadata of an open file (its `fstat`), comparable with an
    /// `lstat` from [`super::Jail::lstat`].
    pub(crate) fn of_file(file: &File) -> io::Result<Meta> {
        Ok(Meta::of(&fstat(file)?))
    }

    /// A regular file.
    pub(crate) fn is_file(&self) -> bool {
        self.kind == Kind::File
    }

    /// A folder.
    pub(crate) fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// A symlink.
    pub(crate) fn is_symlink(&self) -> bool {
        self.kind == Kind::Symlink
    }
}

/// One entry of a folder listing ([`super::Jail::read_dir`]).
#[derive(Debug)]
pub(crate) struct Entry {
    /// The name in its folder (not necessarily UTF-8).
    pub(crate) name: OsString,
    /// Its `lstat`, or why that failed (a name that vanished between
    /// listing and `lstat` is not listed at all).
    pub(crate) meta: Result<Meta, JailError>,
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(NANOS_PER_SEC).saturating_add(nsec)
}

/// `mtime` as a `Timespec`, before the epoch included.
pub(super) fn timespec(mtime: SystemTime) -> Timespec {
    let (secs, nsec) = match mtime.duration_since(UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).unwrap_or(i64::MAX), i64::from(after.subsec_nanos())),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).map_or(i64::MIN, |s| -s);
            match i64::from(before.subsec_nanos()) {
                0 => (secs, 0),
                n => (secs.saturating_sub(1), NANOS_PER_SEC - n),
            }
        }
    };
    Timespec { tv_sec: secs, tv_nsec: nsec }
}

/// Timestamps that set the mtime and leave the atime alone.
pub(super) fn mtime_only(mtime: Timespec) -> Timestamps {
    Timestamps { last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT }, last_modification: mtime }
}

/// The mtime recorded in a `stat` result.
#[allow(clippy::unnecessary_cast)] // as in `Meta::of`
pub(super) fn mtime_of(stat: &Stat) -> Timespec {
    Timespec { tv_sec: stat.st_mtime as i64, tv_nsec: stat.st_mtime_nsec as i64 }
}
