//! [`Probe`]: reads the synced folder for the scanner and the write gate —
//! one `lstat` classified into [`Disk`], a symlink's target, a file hashed
//! only if its stat holds still while it is read — plus warn-once logging
//! for paths that cannot be synced.
//!
//! Read-only: nothing here writes to the folder or the index, and nothing
//! here decides what a difference means (that is [`crate::local::scan`]'s
//! and [`crate::local::commit`]'s job). Everything is synchronous and
//! blocking; callers run it in `spawn_blocking`.

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dartsync_shared::RelPath;
use dartsync_shared::chunk::{ChunkParams, ChunkedFile, chunk_reader_sized};
use dartsync_shared::record::link_target_stays_inside;
use parking_lot::Mutex;

use crate::jail::{Jail, JailError, Meta, rel_path};
use crate::local::error::LocalError;
use crate::local::stat::StatKey;

/// Most distinct paths remembered for warn-once messages.
const MAX_WARNED: usize = 10_000;

/// One `lstat` of a path, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disk {
    Missing,
    File(StatKey),
    Dir(StatKey),
    Symlink(StatKey, String),
    /// Present but not synced: special file, symlink leaving the folder,
    /// non-UTF-8 link target.
    Unsyncable(StatKey),
}

/// What must not move between planning a record and committing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    Missing,
    File(StatKey),
    /// Folder mtimes move with every child; only identity and mode count.
    Dir {
        inode: u64,
        mode: u32,
    },
    Other(StatKey),
}

impl Observed {
    pub(crate) fn of(meta: Option<&Meta>) -> Observed {
        match meta {
            None => Observed::Missing,
            Some(m) if m.is_file() => Observed::File(StatKey::of(m)),
            Some(m) if m.is_dir() => Observed::Dir { inode: m.inode, mode: StatKey::of(m).mode },
            Some(m) => Observed::Other(StatKey::of(m)),
        }
    }
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// It could not be opened (gone, replaced by a folder or link, or a
    /// parent is a link).
    #[error(transparent)]
    Open(JailError),
    /// Reading it failed.
    #[error("read: {0}")]
    Read(std::io::Error),
}

impl HashError {
    /// The file is not there (any more) as a regular file of the folder:
    /// the caller re-checks the path rather than report an error.
    pub(crate) fn is_gone(&self) -> bool {
        matches!(
            self,
            HashError::Open(
                JailError::NotFound { .. }
                    | JailError::WrongKind { .. }
                    | JailError::SymlinkInPath { .. }
                    | JailError::NotADirectory { .. }
            )
        )
    }
}

/// Counts bytes read, for [`Probe::bytes_hashed`].
struct Counting<'a, R> {
    inner: R,
    counter: &'a AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads one folder's entries (see the module docs).
#[derive(Debug)]
pub(crate) struct Probe {
    /// The synced folder; every read goes through it, never following a
    /// symlink.
    jail: Arc<Jail>,
    pub(crate) params: ChunkParams,
    bytes_hashed: AtomicU64,
    /// Paths already warned about (bounded by [`MAX_WARNED`]).
    warned: Mutex<HashSet<String>>,
    /// Report every file as 0644 and every folder as 0755 (`ignore_perms`).
    ignore_perms: bool,
}

impl Probe {
    pub(crate) fn new(jail: Arc<Jail>, params: ChunkParams, ignore_perms: bool) -> Probe {
        Probe { jail, params, bytes_hashed: AtomicU64::new(0), warned: Mutex::new(HashSet::new()), ignore_perms }
    }

    /// Whether permission bits are ignored (see [`Probe::normalize`]).
    pub(crate) fn ignores_perms(&self) -> bool {
        self.ignore_perms
    }

    /// `meta` as the scanner should see it: with permission bits ignored,
    /// files read as 0644 and folders as 0755 whatever the disk says.
    pub(crate) fn normalize(&self, mut meta: Meta) -> Meta {
        if self.ignore_perms {
            meta.mode = if meta.is_dir() { 0o755 } else { 0o644 };
        }
        meta
    }

    /// The folder's jail.
    pub(crate) fn jail(&self) -> &Arc<Jail> {
        &self.jail
    }

    /// Where `path` lives on disk (for messages).
    pub(crate) fn local(&self, path: &RelPath) -> PathBuf {
        path.to_local(self.jail.root())
    }

    /// `lstat` of `path` inside the folder; `None` when nothing is there,
    /// and also when a parent is a symlink or a file: such a path does not
    /// exist *in the folder* (whatever the link points to).
    pub(crate) fn lstat(&self, path: &RelPath) -> Result<Option<Meta>, LocalError> {
        match self.jail.lstat(rel_path(path)) {
            Ok(meta) => Ok(meta.map(|m| self.normalize(m))),
            Err(JailError::SymlinkInPath { .. } | JailError::NotADirectory { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes read for hashing since this probe was created.
    pub(crate) fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.load(Ordering::Relaxed)
    }

    /// Logs `what` once per `key` (a path), at warn.
    pub(crate) fn warn_once(&self, key: &str, what: &str, detail: &dyn std::fmt::Display) {
        let mut warned = self.warned.lock();
        if warned.len() < MAX_WARNED && warned.insert(key.to_owned()) {
            tracing::warn!(path = key, "{what}: {detail}");
        }
    }

    /// Classifies an `lstat` result (reads the target of a symlink).
    pub(crate) fn classify(&self, path: &RelPath, meta: Option<&Meta>) -> Disk {
        let Some(meta) = meta else { return Disk::Missing };
        let stat = StatKey::of(meta);
        if meta.is_file() {
            Disk::File(stat)
        } else if meta.is_dir() {
            Disk::Dir(stat)
        } else if meta.is_symlink() {
            let target = match self.jail.read_link(rel_path(path)) {
                Ok(t) => t,
                Err(JailError::NotFound { .. }) => return Disk::Missing,
                Err(e) => {
                    self.warn_once(path.as_str(), "cannot read symlink; skipped", &e);
                    return Disk::Unsyncable(stat);
                }
            };
            match target.to_str() {
                Some(t) if link_target_stays_inside(path, t) => Disk::Symlink(stat, t.to_owned()),
                _ => {
                    self.warn_once(path.as_str(), "symlink points outside the folder; skipped", &target.display());
                    Disk::Unsyncable(stat)
                }
            }
        } else {
            tracing::debug!(%path, "special file skipped");
            Disk::Unsyncable(stat)
        }
    }

    /// Hashes a file whose `lstat` gave `before`; `None` when the file moved
    /// (size, mtime or inode) while it was read.
    /// Opened through the jail: a file behind a symlinked parent is never
    /// read.
    pub(crate) fn hash_file(&self, path: &RelPath, before: &StatKey) -> Result<Option<ChunkedFile>, HashError> {
        let file = self.jail.open_read(rel_path(path)).map_err(HashError::Open)?;
        let stable = |meta: &Meta| meta.is_file() && StatKey::of(meta).same_content_stamp(before);
        if !stable(&Meta::of_file(&file).map_err(HashError::Read)?) {
            return Ok(None);
        }
        let chunked =
            chunk_reader_sized(Counting { inner: &file, counter: &self.bytes_hashed }, self.params, before.size)
                .map_err(HashError::Read)?;
        if !stable(&Meta::of_file(&file).map_err(HashError::Read)?) || chunked.size != before.size {
            return Ok(None);
        }
        Ok(Some(chunked))
    }
}
