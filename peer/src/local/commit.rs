//! [`WriteGate`]: the one door through which the peer's own writes to its
//! folder enter the index, and the commit lock the scanner shares with it.
//!
//! The sync engine never writes a path unless [`WriteGate::apply_if_unmodified`]
//! says the disk still equals the index and the incoming version supersedes
//! the indexed one; the check, the write and the new index entry happen
//! under one lock, so no scan can commit in between. The scanner takes the
//! same lock ([`WriteGate::lock`]) for its commits; a plan whose index entry
//! changed meanwhile is dropped and re-checked. This is the echo
//! suppression: by state comparison, never by "ignore the next event" flags.
//!
//! Synchronous and blocking (stat, hash, redb): [`crate::local::LocalState`]
//! runs it in `spawn_blocking`. It does not decide what to write (the sync
//! engine does) and performs no write of its own but the index entry.

use std::collections::HashSet;

use dartsync_shared::chunk::{ChunkInfo, chunk_list_hash};
use dartsync_shared::{Causality, FileKind, FileRecord, RelPath};
use parking_lot::{Mutex, MutexGuard};

use crate::jail::Meta;
use crate::local::error::LocalError;
use crate::local::index::Index;
use crate::local::probe::{Disk, HashError, Probe};
use crate::local::stat::StatKey;

/// What one write of [`WriteGate::apply_all_if_unmodified`] returns.
#[derive(Debug)]
pub(crate) struct Wrote<T> {
    /// Handed back in [`Gated::Applied`].
    pub(crate) value: T,
    /// What the write made at the record's path, as it saw it (an
    /// installed file, through its own descriptor after the rename), when
    /// it knows; indexed instead of a fresh look at the path, which might
    /// already show a later edit as if it were the peer's own write.
    pub(crate) made: Option<Meta>,
}

/// What [`WriteGate::apply_if_unmodified`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gated<T> {
    /// The disk holds an unannounced edit, or the index a version the
    /// record does not supersede: nothing was written.
    Refused,
    /// The operation ran and chose to write nothing.
    Declined,
    /// The operation wrote; its record is indexed. `agrees` is false when
    /// the disk does not hold what the record describes (the path needs a
    /// re-check).
    Applied {
        /// What the operation returned.
        value: T,
        /// Whether the disk matched the record afterwards.
        agrees: bool,
    },
}

/// A write made under the commit lock whose index entry is not stored
/// yet ([`WriteGate::apply_all_if_unmodified`]).
struct Unstored {
    /// Its place among the batch's results.
    at: usize,
    record: FileRecord,
    chunks: Vec<ChunkInfo>,
    stat: Option<StatKey>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct WriteGate {
    pub(crate) index: Index,
    pub(crate) probe: Probe,
    /// Held while committing to the index, by the scanner and by every
    /// write of the engine; never held while the scanner hashes.
    lock: Mutex<()>,
}

impl WriteGate {
    pub(crate) fn new(index: Index, probe: Probe) -> WriteGate {
        WriteGate { index, probe, lock: Mutex::new(()) }
    }

    /// The commit lock, for the scanner's commits.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock()
    }

    /// True when the disk differs from the index for `path`: an unannounced
    /// edit, or something that appeared or vanished. Reads the file only if
    /// its stat moved. (The peer itself reads the entry once and calls
    /// [`WriteGate::differs_from`].)
    #[cfg(test)]
    pub(crate) fn differs(&self, path: &RelPath) -> Result<bool, LocalError> {
        let head = self.index.head(path)?;
        self.differs_from(path, head.as_ref().map(|h| (&h.record, h.stat)))
    }

    /// [`WriteGate::differs`] against an indexed record and stat the caller
    /// has just read (`None`: the index has no entry for `path`).
    pub(crate) fn differs_from(
        &self,
        path: &RelPath,
        indexed: Option<(&FileRecord, Option<StatKey>)>,
    ) -> Result<bool, LocalError> {
        let meta = self.probe.lstat(path)?;
        let live = indexed.filter(|(record, _)| !record.deleted);
        let differs = match (live, self.probe.classify(path, meta.as_ref())) {
            (None, Disk::Missing) => false,
            (None, _) => true,
            (Some(_), Disk::Missing | Disk::Unsyncable(_)) => true,
            (Some((record, _)), Disk::Dir(_)) => record.kind != FileKind::Dir,
            (Some((record, _)), Disk::Symlink(_, target)) => {
                !matches!(&record.kind, FileKind::Symlink { target: t } if *t == target)
            }
            (Some((record, indexed_stat)), Disk::File(stat)) => {
                if record.kind != FileKind::File {
                    true
                } else if let Some(known) = indexed_stat.filter(|s| s.same_content_stamp(&stat)) {
                    known.mode != stat.mode
                } else {
                    match self.probe.hash_file(path, &stat) {
                        Ok(Some(chunked)) => {
                            chunked.content != record.content || indexed_stat.is_some_and(|s| s.mode != stat.mode)
                        }
                        // Being written: certainly not what the index says.
                        Ok(None) => true,
                        Err(e) if e.is_gone() => true,
                        Err(HashError::Open(e)) => return Err(e.into()),
                        Err(HashError::Read(source)) => {
                            return Err(LocalError::Io { path: self.probe.local(path), source });
                        }
                    }
                }
            }
        };
        Ok(differs)
    }

    /// Stores a record the peer wrote itself, with a fresh stat of the disk.
    /// Returns false when the disk does not hold what the record describes
    /// (the entry is stored without a stat, so the next check re-examines
    /// it).
    fn store_applied_locked(&self, record: &FileRecord, chunks: &[ChunkInfo]) -> Result<bool, LocalError> {
        let (stat, agrees) = self.stat_applied(record)?;
        let chunks = if record.is_file() { chunks } else { &[] };
        // The disk write is already durable; the entry joins the next group
        // commit (see `Index::write_soon` for why losing it is harmless).
        self.index.write_soon(|w| w.put(record, chunks, stat))?;
        Ok(agrees)
    }

    /// The stat to index for a record the peer just wrote, and whether
    /// the disk holds what the record describes (without a stat when it
    /// does not, so the next check re-examines the path).
    fn stat_applied(&self, record: &FileRecord) -> Result<(Option<StatKey>, bool), LocalError> {
        let meta = self.probe.lstat(&record.path)?;
        Ok(Self::judge_applied(record, meta))
    }

    /// [`Self::stat_applied`] for what the write saw it made (`meta`, not
    /// normalized yet), with no second look at the path.
    fn stat_written(&self, record: &FileRecord, meta: Meta) -> (Option<StatKey>, bool) {
        Self::judge_applied(record, Some(self.probe.normalize(meta)))
    }

    /// The stat to index for `record` given what its path holds, and
    /// whether that is what the record describes.
    fn judge_applied(record: &FileRecord, meta: Option<Meta>) -> (Option<StatKey>, bool) {
        let matching = match (&record.kind, &meta) {
            _ if record.deleted => None,
            (FileKind::File, Some(m)) if m.is_file() => Some(StatKey::of(m)),
            (FileKind::Dir, Some(m)) if m.is_dir() => Some(StatKey::of(m)),
            (FileKind::Symlink { .. }, Some(m)) if m.is_symlink() => Some(StatKey::of(m)),
            _ => None,
        };
        let agrees = if record.deleted { meta.is_none() } else { matching.is_some() };
        (matching, agrees)
    }

    /// Checks a record handed in by the rest of the peer.
    fn check_record(path: &RelPath, record: &FileRecord, chunks: &[ChunkInfo]) -> Result<(), LocalError> {
        let bad = |what: String| LocalError::InvalidRecord { path: path.clone(), what };
        if record.path != *path {
            return Err(bad(format!("record is for {}", record.path)));
        }
        record.validate().map_err(|e| bad(e.to_string()))?;
        if record.is_file() {
            let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            if chunk_list_hash(chunks) != record.chunks || total != record.size {
                return Err(bad("chunk list does not match the record".to_owned()));
            }
        }
        Ok(())
    }

    /// Stores a record as written by the peer, whatever the disk holds
    /// (tests set up an "already applied" state with it). Returns whether
    /// the disk matched the record.
    #[cfg(test)]
    pub(crate) fn record_applied(
        &self,
        path: &RelPath,
        record: &FileRecord,
        chunks: &[ChunkInfo],
    ) -> Result<bool, LocalError> {
        Self::check_record(path, record, chunks)?;
        let _guard = self.lock.lock();
        self.store_applied_locked(record, chunks)
    }

    /// Runs `op` (a write of `path` on behalf of the cluster) and records
    /// `record` with a fresh stat, all under the commit lock, unless the
    /// disk differs from the index for `path` or the index holds a version
    /// `record` does not supersede ([`Gated::Refused`], `op` not run). An
    /// `op` that returns `Ok(None)` wrote nothing ([`Gated::Declined`]; the
    /// index is left alone). No scan can commit between the check, the
    /// write and the record.
    pub(crate) fn apply_if_unmodified<T, E>(
        &self,
        record: &FileRecord,
        chunks: &[ChunkInfo],
        op: impl FnOnce() -> Result<Option<T>, E>,
    ) -> Result<Gated<T>, E>
    where
        E: From<LocalError>,
    {
        Self::check_record(&record.path, record, chunks)?;
        let _guard = self.lock.lock();
        let Some(value) = self.run_if_unmodified_locked(record, op)? else { return Ok(Gated::Refused) };
        let Some(value) = value else { return Ok(Gated::Declined) };
        let agrees = self.store_applied_locked(record, chunks)?;
        Ok(Gated::Applied { value, agrees })
    }

    /// [`WriteGate::apply_if_unmodified`] for many writes, in order, under
    /// one hold of the commit lock and with their index entries in one
    /// commit (a burst of small downloads: one transaction, not one per
    /// file). Each write gets its own result, as if made alone. A path
    /// written twice in one batch sees its first write indexed before the
    /// second is checked. A write that knows the stat of what it made
    /// ([`Wrote::made`]) has that indexed; otherwise the path is looked at.
    pub(crate) fn apply_all_if_unmodified<T, E, F>(
        &self,
        writes: Vec<(FileRecord, Vec<ChunkInfo>, F)>,
    ) -> Vec<Result<Gated<T>, E>>
    where
        E: From<LocalError>,
        F: FnOnce() -> Result<Option<Wrote<T>>, E>,
    {
        let _guard = self.lock.lock();
        let mut results: Vec<Result<Gated<T>, E>> = Vec::with_capacity(writes.len());
        let mut unstored: Vec<Unstored> = Vec::new();
        let mut paths = HashSet::new();
        for (record, chunks, op) in writes {
            if !paths.insert(record.path.clone()) {
                self.store_all_locked(std::mem::take(&mut unstored), &mut results);
                paths = HashSet::from([record.path.clone()]);
            }
            let checked = Self::check_record(&record.path, &record, &chunks).map_err(E::from);
            let result = checked.and_then(|()| match self.run_if_unmodified_locked(&record, op)? {
                None => Ok(Gated::Refused),
                Some(None) => Ok(Gated::Declined),
                Some(Some(Wrote { value, made })) => {
                    let (stat, agrees) = match made {
                        Some(meta) => self.stat_written(&record, meta),
                        None => self.stat_applied(&record)?,
                    };
                    let chunks = if record.is_file() { chunks } else { Vec::new() };
                    unstored.push(Unstored { at: results.len(), record, chunks, stat });
                    Ok(Gated::Applied { value, agrees })
                }
            });
            results.push(result);
        }
        self.store_all_locked(unstored, &mut results);
        results
    }

    /// Indexes the entries of writes already made, in one commit; if that
    /// fails, each on its own, so only a write whose own entry cannot be
    /// stored reports the error.
    fn store_all_locked<T, E: From<LocalError>>(&self, unstored: Vec<Unstored>, results: &mut [Result<Gated<T>, E>]) {
        if unstored.is_empty() {
            return;
        }
        let together = self.index.write_soon(|w| unstored.iter().try_for_each(|u| w.put(&u.record, &u.chunks, u.stat)));
        if together.is_ok() {
            return;
        }
        for u in unstored {
            if let Err(e) = self.index.write_soon(|w| w.put(&u.record, &u.chunks, u.stat)) {
                results[u.at] = Err(e.into());
            }
        }
    }

    /// Under the commit lock: `None` (nothing run) when the disk differs
    /// from the index for the record's path or the index holds a version
    /// the record does not supersede; otherwise what `op` returned.
    fn run_if_unmodified_locked<T, E>(
        &self,
        record: &FileRecord,
        op: impl FnOnce() -> Result<Option<T>, E>,
    ) -> Result<Option<Option<T>>, E>
    where
        E: From<LocalError>,
    {
        let path = &record.path;
        let head = self.index.head(path)?;
        if self.differs_from(path, head.as_ref().map(|h| (&h.record, h.stat)))? {
            return Ok(None);
        }
        // Never replace a version the incoming one does not supersede (a
        // local edit indexed since the caller decided).
        if let Some(known) = head
            && !matches!(record.version.compare(&known.record.version), Causality::Dominates | Causality::Equal)
        {
            return Ok(None);
        }
        op().map(Some)
    }

    /// Runs `op` and removes the index entry of `path`, under the commit
    /// lock (see [`crate::local::LocalState::set_aside`]).
    pub(crate) fn set_aside<T, E>(&self, path: &RelPath, op: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: From<LocalError>,
    {
        let _guard = self.lock.lock();
        let value = op()?;
        self.index.write(|w| w.remove(path))?;
        Ok(value)
    }

    /// Stores `record` as the version of its path without a content change
    /// (e.g. the tracker merged vectors and our file already has the
    /// winner's content), if the disk holds exactly that content (or is
    /// absent, for a tombstone). Returns whether it was stored.
    pub(crate) fn adopt_version(&self, record: &FileRecord) -> Result<bool, LocalError> {
        record.validate().map_err(|e| LocalError::InvalidRecord { path: record.path.clone(), what: e.to_string() })?;
        let path = &record.path;
        let _guard = self.lock.lock();
        let meta = self.probe.lstat(path)?;
        let (chunks, stat) = match (self.probe.classify(path, meta.as_ref()), &record.kind) {
            (Disk::Missing | Disk::Unsyncable(_), _) if record.deleted => (Vec::new(), None),
            _ if record.deleted => return Ok(false),
            (Disk::Dir(stat), FileKind::Dir) => (Vec::new(), Some(stat)),
            (Disk::Symlink(stat, target), FileKind::Symlink { target: want }) if target == *want => {
                (Vec::new(), Some(stat))
            }
            (Disk::File(stat), FileKind::File) => {
                let known = self.index.get(path)?.filter(|e| e.record.is_file());
                match known {
                    Some(e)
                        if e.stat.is_some_and(|s| s.same_content_stamp(&stat))
                            && e.record.content == record.content
                            && e.record.chunks == record.chunks =>
                    {
                        (e.chunks, Some(stat))
                    }
                    _ => match self.probe.hash_file(path, &stat) {
                        Ok(Some(c)) if c.content == record.content && c.chunks_hash == record.chunks => {
                            (c.chunks, Some(stat))
                        }
                        Ok(_) => return Ok(false),
                        Err(e) if e.is_gone() => return Ok(false),
                        Err(HashError::Open(e)) => return Err(e.into()),
                        Err(HashError::Read(source)) => {
                            return Err(LocalError::Io { path: self.probe.local(path), source });
                        }
                    },
                }
            }
            _ => return Ok(false),
        };
        self.index.write(|w| w.put(record, &chunks, stat))?;
        Ok(true)
    }
}
