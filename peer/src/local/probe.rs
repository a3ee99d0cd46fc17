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
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dartsync_shared::RelPath;
use dartsync_shared::chunk::{ChunkParams, ChunkedFile, chunk_reader};
use dartsync_shared::record::link_target_stays_inside;
use parking_lot::Mutex;

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
    pub(crate) fn of(meta: Option<&Metadata>) -> Observed {
        match meta {
            None => Observed::Missing,
            Some(m) if m.is_file() => Observed::File(StatKey::of(m)),
            Some(m) if m.is_dir() => Observed::Dir { inode: m.ino(), mode: StatKey::of(m).mode },
            Some(m) => Observed::Other(StatKey::of(m)),
        }
    }
}

/// `lstat` of `path`; `None` when nothing is there.
pub(crate) fn lstat(path: &Path) -> Result<Option<Metadata>, LocalError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // A component is a file now (`a` replaced `a/`): the path is gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
        Err(source) => Err(LocalError::Io { path: path.to_owned(), source }),
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
    root: PathBuf,
    pub(crate) params: ChunkParams,
    bytes_hashed: AtomicU64,
    /// Paths already warned about (bounded by [`MAX_WARNED`]).
    warned: Mutex<HashSet<String>>,
}

impl Probe {
    pub(crate) fn new(root: PathBuf, params: ChunkParams) -> Probe {
        Probe { root, params, bytes_hashed: AtomicU64::new(0), warned: Mutex::new(HashSet::new()) }
    }

    /// The synced folder.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` lives on disk.
    pub(crate) fn local(&self, path: &RelPath) -> PathBuf {
        path.to_local(&self.root)
    }

    /// `lstat` of `path` inside the folder.
    pub(crate) fn lstat(&self, path: &RelPath) -> Result<Option<Metadata>, LocalError> {
        lstat(&self.local(path))
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
    pub(crate) fn classify(&self, path: &RelPath, meta: Option<&Metadata>) -> Disk {
        let Some(meta) = meta else { return Disk::Missing };
        let stat = StatKey::of(meta);
        let kind = meta.file_type();
        if kind.is_file() {
            Disk::File(stat)
        } else if kind.is_dir() {
            Disk::Dir(stat)
        } else if kind.is_symlink() {
            let target = match std::fs::read_link(self.local(path)) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Disk::Missing,
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
    pub(crate) fn hash_file(&self, path: &RelPath, before: &StatKey) -> std::io::Result<Option<ChunkedFile>> {
        let file = std::fs::File::open(self.local(path))?;
        let stable = |meta: &Metadata| meta.is_file() && StatKey::of(meta).same_content_stamp(before);
        if !stable(&file.metadata()?) {
            return Ok(None);
        }
        let chunked = chunk_reader(Counting { inner: &file, counter: &self.bytes_hashed }, self.params)?;
        if !stable(&file.metadata()?) || chunked.size != before.size {
            return Ok(None);
        }
        Ok(Some(chunked))
    }
}
