//! [`StatKey`]: the one stat stamp of the peer — what a re-`lstat` of a
//! path is compared with to decide whether its content may have changed
//! (size, mtime, inode) and whether its permission bits did — plus the
//! time helpers every stamp user needs ([`changed_within`],
//! [`unchanged_since`], [`now_ns`]).
//!
//! Pure functions of a jail [`Meta`] (an `lstat` or `fstat` taken without
//! following links); no I/O of their own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::jail::Meta;

/// What a re-stat of a path is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    /// Size in bytes (as `lstat` reports it; not 0 for folders).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Permission bits (`& 0o777`: setuid, setgid and sticky never travel).
    pub mode: u32,
}

impl StatKey {
    /// The key of an `lstat` result.
    pub(crate) fn of(meta: &Meta) -> StatKey {
        StatKey { size: meta.size, mtime_ns: meta.mtime_ns, inode: meta.inode, mode: meta.mode & 0o777 }
    }

    /// True when size, mtime and inode are the same: the content needs no
    /// re-read (permission bits are compared separately).
    pub fn same_content_stamp(&self, other: &StatKey) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns && self.inode == other.inode
    }
}

/// The wall clock in nanoseconds since the Unix epoch (file stamps' unit).
pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// When `meta`'s content last changed, as far as "is it still being
/// written?" goes: its mtime. Every write moves mtime to the present; a
/// writer sets it into the past (`cp -p`, `tar`, `touch -d`) only once it
/// has written everything. ctime is not used: a rename, a chmod or a new
/// hard link moves it without touching the content, and a file moved into
/// a folder created a moment before (whose rename inotify may not report:
/// the new folder is not watched yet) would otherwise wait out the quiet
/// period for nothing.
fn last_change(meta: &Meta) -> i64 {
    meta.mtime_ns
}

/// True when `meta`'s file changed less than `quiet` ago: it may still be
/// being written.
pub(crate) fn changed_within(meta: &Meta, quiet: Duration) -> bool {
    let age = now_ns().saturating_sub(last_change(meta));
    age >= 0 && (age as u128) < quiet.as_nanos()
}

/// True when `meta`'s file has not changed since `at` (nanoseconds since
/// the epoch): an event at `at` that certified it complete still holds.
pub(crate) fn unchanged_since(meta: &Meta, at: i64) -> bool {
    last_change(meta) <= at
}
