//! The local index: what this peer knows about every path of its folder,
//! persisted in redb under `.dartsync/index.redb`.
//!
//! Per path the index stores the last [`FileRecord`] (tombstones included,
//! so a path's version-vector history survives its deletion), the file's
//! chunk list, and the [`StatKey`] of the disk entry the record describes:
//! a re-stat that yields the same key means "unchanged", with no read.
//!
//! Tables (all values go through [`dartsync_shared::codec::encode_stored`]
//! with versioned storage structs private to this module; the wire types are
//! converted at this edge, never stored as is):
//! - `entries`: path -> record + stat;
//! - `chunk_lists`: path -> chunk list (live files only);
//! - `by_content`: (content hash, path) -> () for live files, so a chunk
//!   list can be found by content;
//! - `by_chunk`: (chunk hash, path, offset) -> length for live files, so a
//!   chunk can be copied from any local file holding it; not for a file of
//!   one chunk (most small files): that chunk is the whole file, its hash
//!   the content hash, and `by_content` finds it ([`Index::locate_chunk`]
//!   looks in both), so the row would be a second random B-tree insert
//!   per small file for nothing;
//! - `saved_versions` (in [`saved`]): history file name -> who made and
//!   replaced that saved version, its size and hash.
//!
//! Invariant: the two secondary tables are updated in the same write
//! transaction as `entries`, so they always describe exactly the live files
//! of `entries`. Everything read back is validated (paths, version vectors,
//! record consistency); a corrupt value is a [`LocalError::Corrupt`], never
//! a panic.
//!
//! Durability: [`Index::write`] commits durably; [`Index::write_soon`]
//! (the engine's entries for files it just made durable on disk) commits
//! at once but becomes durable with the next flush, a group commit that
//! [`crate::local`] runs a moment later, and when the index is closed.
//!
//! All methods are synchronous and may block on disk I/O: async callers use
//! `spawn_blocking`. The index compares nothing with the disk; the scanner
//! ([`crate::local::scan`]) does that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dartsync_shared::chunk::{ChunkInfo, is_one_whole_chunk};
use dartsync_shared::codec::{decode_stored, encode_stored};
use dartsync_shared::record::PERMISSION_BITS;
use dartsync_shared::{ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::local::error::LocalError;
use crate::local::stat::StatKey;

mod saved;
pub use saved::SavedMeta;

type Hash32 = [u8; 32];

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const CHUNK_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("chunk_lists");
const BY_CONTENT: TableDefinition<(Hash32, &str), ()> = TableDefinition::new("by_content");
const BY_CHUNK: TableDefinition<(Hash32, &str, u64), u32> = TableDefinition::new("by_chunk");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema";
const META_PIECE_LEN: &str = "piece_len";
/// redb page cache (a tenth of it buffers writes). The default (1 GiB)
/// would let a large index grow the peer's memory far beyond what a scan
/// needs. The index of 100,000 files is about 78 MB; a cache of 64 MiB
/// filled up with it and was 40-50 MiB of a peer's 135-145 MiB RSS
/// (`bench/peer-memory`). Pages read past the cache come from the
/// kernel's page cache, which is not the peer's memory.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Layout version of this database; bumped on incompatible changes.
const SCHEMA_VERSION: u64 = 1;

/// Everything the index knows about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The last record (a tombstone after a deletion).
    pub record: FileRecord,
    /// The chunk list of a live file (empty otherwise).
    pub chunks: Vec<ChunkInfo>,
    /// The disk entry the record describes; `None` for tombstones (and for
    /// records whose disk entry was not there when they were stored).
    pub stat: Option<StatKey>,
}

/// Where a chunk can be read locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// A live file holding the chunk.
    pub path: RelPath,
    /// Offset of the chunk in that file.
    pub offset: u64,
    /// Length of the chunk.
    pub len: u32,
    /// The stat the file had when its chunk list was stored (read in the
    /// same transaction as the location).
    pub stat: Option<StatKey>,
}

impl ChunkLocation {
    /// A location read back from the index (its path validated), with the
    /// stat of its entry.
    fn at(
        entries: &impl ReadableTable<&'static str, &'static [u8]>,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<ChunkLocation, LocalError> {
        let valid = RelPath::new(path).map_err(|e| corrupt(path, format!("bad path: {e}")))?;
        let stat = entries.get(path)?.map(|v| decode_head(path, v.value())).transpose()?.and_then(|h| h.stat);
        Ok(ChunkLocation { path: valid, offset, len, stat })
    }
}

/// A record and its stat, without the chunk list (what scans compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) record: FileRecord,
    pub(crate) stat: Option<StatKey>,
}

// ---- storage types (a boundary of their own: append variants only) ----

#[derive(Serialize, Deserialize)]
enum StoredEntry {
    V1(EntryV1),
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    kind: StoredKind,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    content: Hash32,
    chunks: Hash32,
    version: Vec<(u64, u64)>,
    deleted: bool,
    stat: Option<StoredStat>,
}

#[derive(Serialize, Deserialize)]
enum StoredKind {
    File,
    Dir,
    Symlink(String),
}

#[derive(Serialize, Deserialize)]
struct StoredStat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    mode: u32,
}

#[derive(Serialize, Deserialize)]
enum StoredChunks {
    V1(Vec<(u64, u32, Hash32)>),
}

fn encode_head(head: &Head) -> Result<Vec<u8>, LocalError> {
    let r = &head.record;
    let entry = StoredEntry::V1(EntryV1 {
        kind: match &r.kind {
            FileKind::File => StoredKind::File,
            FileKind::Dir => StoredKind::Dir,
            FileKind::Symlink { target } => StoredKind::Symlink(target.clone()),
        },
        size: r.size,
        mtime_ns: r.mtime_ns,
        mode: r.mode,
        content: r.content.0,
        chunks: r.chunks.0,
        version: r.version.iter().map(|(peer, counter)| (peer.0, counter)).collect(),
        deleted: r.deleted,
        stat: head.stat.map(|s| StoredStat { size: s.size, mtime_ns: s.mtime_ns, inode: s.inode, mode: s.mode }),
    });
    encode_stored(&entry).map_err(|source| LocalError::Encode { path: r.path.clone(), source })
}

fn corrupt(key: &str, what: impl Into<String>) -> LocalError {
    LocalError::Corrupt { key: key.to_owned(), what: what.into() }
}

fn decode_head(key: &str, bytes: &[u8]) -> Result<Head, LocalError> {
    let path = RelPath::new(key).map_err(|e| corrupt(key, format!("bad path: {e}")))?;
    let StoredEntry::V1(e) = decode_stored(bytes).map_err(|e| corrupt(key, e.to_string()))?;
    let version = VersionVector::from_entries(e.version.iter().map(|&(peer, counter)| (ShortId(peer), counter)));
    if version.len() != e.version.len() {
        return Err(corrupt(key, "version vector has zero or repeated entries"));
    }
    let record = FileRecord {
        path,
        kind: match e.kind {
            StoredKind::File => FileKind::File,
            StoredKind::Dir => FileKind::Dir,
            StoredKind::Symlink(target) => FileKind::Symlink { target },
        },
        size: e.size,
        mtime_ns: e.mtime_ns,
        // Older versions stored setuid/setgid/sticky bits; only 0o777 travels.
        mode: e.mode & PERMISSION_BITS,
        content: ContentHash(e.content),
        chunks: ContentHash(e.chunks),
        version,
        deleted: e.deleted,
    };
    record.validate().map_err(|err| corrupt(key, err.to_string()))?;
    let stat =
        e.stat.map(|s| StatKey { size: s.size, mtime_ns: s.mtime_ns, inode: s.inode, mode: s.mode & PERMISSION_BITS });
    Ok(Head { record, stat })
}

fn encode_chunks(path: &RelPath, chunks: &[ChunkInfo]) -> Result<Vec<u8>, LocalError> {
    let stored = StoredChunks::V1(chunks.iter().map(|c| (c.offset, c.len, c.hash.0)).collect());
    encode_stored(&stored).map_err(|source| LocalError::Encode { path: path.clone(), source })
}

fn decode_chunks(key: &str, bytes: &[u8]) -> Result<Vec<ChunkInfo>, LocalError> {
    let StoredChunks::V1(list) = decode_stored(bytes).map_err(|e| corrupt(key, e.to_string()))?;
    Ok(list.into_iter().map(|(offset, len, hash)| ChunkInfo { offset, len, hash: ContentHash(hash) }).collect())
}

/// Removes entries an older version wrote that this one refuses to load (a
/// path naming the state directory in another spelling, a version counter
/// above the limit), with their chunk lists and secondary rows, so one such
/// entry cannot stop every scan. The scanner re-records whatever the disk
/// still holds. Returns how many entries went.
fn purge_unloadable(txn: &redb::WriteTransaction) -> Result<usize, LocalError> {
    let mut entries = txn.open_table(ENTRIES)?;
    let mut bad = std::collections::HashSet::new();
    for row in entries.iter()? {
        let (key, value) = row?;
        if let Err(e) = decode_head(key.value(), value.value()) {
            tracing::warn!(key = key.value(), "dropping an index entry: {e}");
            bad.insert(key.value().to_owned());
        }
    }
    if bad.is_empty() {
        return Ok(0);
    }
    let mut chunk_lists = txn.open_table(CHUNK_LISTS)?;
    for key in &bad {
        entries.remove(key.as_str())?;
        chunk_lists.remove(key.as_str())?;
    }
    let mut by_content = txn.open_table(BY_CONTENT)?;
    let stale: Vec<(Hash32, String)> = by_content
        .iter()?
        .filter_map(Result::ok)
        .map(|(k, _)| {
            let (hash, path) = k.value();
            (hash, path.to_owned())
        })
        .filter(|(_, path)| bad.contains(path))
        .collect();
    for (hash, path) in &stale {
        by_content.remove((*hash, path.as_str()))?;
    }
    let mut by_chunk = txn.open_table(BY_CHUNK)?;
    let stale: Vec<(Hash32, String, u64)> = by_chunk
        .iter()?
        .filter_map(Result::ok)
        .map(|(k, _)| {
            let (hash, path, offset) = k.value();
            (hash, path.to_owned(), offset)
        })
        .filter(|(_, path, _)| bad.contains(path))
        .collect();
    for (hash, path, offset) in &stale {
        by_chunk.remove((*hash, path.as_str(), *offset))?;
    }
    Ok(bad.len())
}

/// Exclusive upper bound of the keys strictly inside `prefix/`: `/` + 1 is `0`.
fn subtree_bounds(prefix: &RelPath) -> (String, String) {
    (format!("{prefix}/"), format!("{prefix}0"))
}

/// The local index (a cheap-to-clone handle on one redb database).
#[derive(Clone)]
pub struct Index {
    db: Arc<Database>,
    path: PathBuf,
    lazy: Arc<LazyCommits>,
}

/// Bookkeeping of [`Index::write_soon`] commits not yet made durable; the
/// last clone of an [`Index`] to go makes them durable.
struct LazyCommits {
    db: Arc<Database>,
    unflushed: AtomicBool,
    /// Woken by every lazy commit (the flusher waits on it).
    wanted: Notify,
}

impl LazyCommits {
    fn flush(&self) -> Result<bool, LocalError> {
        if !self.unflushed.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let result = (|| -> Result<(), LocalError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            self.unflushed.store(true, Ordering::Release);
        }
        result.map(|()| true)
    }
}

impl Drop for LazyCommits {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            tracing::error!(%err, "cannot make the last index entries durable; the next scan re-checks them");
        }
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (creating if needed) the index at `path`. Fails if another
    /// process (or another `Index` in this one) has it open, or if it was
    /// written by a newer, incompatible version.
    pub fn open(path: &Path) -> Result<Index, LocalError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| LocalError::IndexOpen { path: path.to_owned(), source: Box::new(e.into()) })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(ENTRIES)?;
            txn.open_table(CHUNK_LISTS)?;
            txn.open_table(BY_CONTENT)?;
            txn.open_table(BY_CHUNK)?;
            txn.open_table(saved::SAVED)?;
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(META_SCHEMA)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(LocalError::Schema { path: path.to_owned(), found, supported: SCHEMA_VERSION });
                }
            }
        }
        let purged = purge_unloadable(&txn)?;
        txn.commit()?;
        if purged > 0 {
            tracing::warn!(entries = purged, index = %path.display(), "dropped index entries this version refuses");
        }
        let db = Arc::new(db);
        let lazy = Arc::new(LazyCommits { db: db.clone(), unflushed: AtomicBool::new(false), wanted: Notify::new() });
        Ok(Index { db, path: path.to_owned(), lazy })
    }

    /// The index entry of `path`, tombstones included.
    pub fn get(&self, path: &RelPath) -> Result<Option<IndexEntry>, LocalError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let Some(bytes) = entries.get(path.as_str())? else { return Ok(None) };
        let head = decode_head(path.as_str(), bytes.value())?;
        let chunks = match txn.open_table(CHUNK_LISTS)?.get(path.as_str())? {
            Some(list) if head.record.is_file() => decode_chunks(path.as_str(), list.value())?,
            _ => Vec::new(),
        };
        Ok(Some(IndexEntry { record: head.record, chunks, stat: head.stat }))
    }

    /// Every entry, tombstones included, in path order.
    pub fn all(&self) -> Result<Vec<IndexEntry>, LocalError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let lists = txn.open_table(CHUNK_LISTS)?;
        let mut out = Vec::new();
        for item in entries.iter()? {
            let (key, value) = item?;
            let head = decode_head(key.value(), value.value())?;
            let chunks = match lists.get(key.value())? {
                Some(list) if head.record.is_file() => decode_chunks(key.value(), list.value())?,
                _ => Vec::new(),
            };
            out.push(IndexEntry { record: head.record, chunks, stat: head.stat });
        }
        Ok(out)
    }

    /// Every record, tombstones included, in path order (without chunk
    /// lists: the cheap form of [`Index::all`] for the `Register` summary).
    pub fn records(&self) -> Result<Vec<FileRecord>, LocalError> {
        Ok(self.heads(None)?.into_values().map(|h| h.record).collect())
    }

    /// The chunk list of any live file whose content is `content`.
    pub fn chunk_list(&self, content: &ContentHash) -> Result<Option<Vec<ChunkInfo>>, LocalError> {
        let txn = self.db.begin_read()?;
        let by_content = txn.open_table(BY_CONTENT)?;
        let lists = txn.open_table(CHUNK_LISTS)?;
        for item in by_content.range::<(Hash32, &str)>((content.0, "")..)? {
            let (key, _) = item?;
            let (hash, path) = key.value();
            if hash != content.0 {
                break;
            }
            if let Some(list) = lists.get(path)? {
                return Ok(Some(decode_chunks(path, list.value())?));
            }
        }
        Ok(None)
    }

    /// Every live file location holding a chunk with hash `hash`: the
    /// chunks of `by_chunk`, and the files of one chunk whose content is
    /// `hash` (they have no `by_chunk` row), each location once.
    pub fn locate_chunk(&self, hash: &ContentHash) -> Result<Vec<ChunkLocation>, LocalError> {
        let txn = self.db.begin_read()?;
        let by_chunk = txn.open_table(BY_CHUNK)?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in by_chunk.range::<(Hash32, &str, u64)>((hash.0, "", 0)..)? {
            let (key, len) = item?;
            let (h, path, offset) = key.value();
            if h != hash.0 {
                break;
            }
            out.push(ChunkLocation::at(&entries, path, offset, len.value())?);
        }
        let by_content = txn.open_table(BY_CONTENT)?;
        let lists = txn.open_table(CHUNK_LISTS)?;
        for item in by_content.range::<(Hash32, &str)>((hash.0, "")..)? {
            let (key, _) = item?;
            let (h, path) = key.value();
            if h != hash.0 {
                break;
            }
            let Some(list) = lists.get(path)? else { continue };
            let list = decode_chunks(path, list.value())?;
            if is_one_whole_chunk(&list, hash) && !out.iter().any(|l| l.path.as_str() == path && l.offset == 0) {
                out.push(ChunkLocation::at(&entries, path, 0, list[0].len)?);
            }
        }
        Ok(out)
    }

    /// The piece length the stored chunk lists were cut with.
    pub fn piece_len(&self) -> Result<Option<u32>, LocalError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(META_PIECE_LEN)? {
            None => Ok(None),
            Some(v) => u32::try_from(v.value()).map(Some).map_err(|_| corrupt(META_PIECE_LEN, "out of range")),
        }
    }

    /// Remembers the piece length the chunk lists are cut with.
    pub fn set_piece_len(&self, v: u32) -> Result<(), LocalError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(META_PIECE_LEN, u64::from(v))?;
        txn.commit()?;
        Ok(())
    }

    /// Stores one entry (replacing what was there) in its own transaction.
    pub fn put(&self, entry: &IndexEntry) -> Result<(), LocalError> {
        self.write(|w| w.put(&entry.record, &entry.chunks, entry.stat))
    }

    /// Records and stats of `prefix` and everything under it (the whole
    /// index for `None`), keyed by path.
    pub(crate) fn heads(&self, prefix: Option<&RelPath>) -> Result<BTreeMap<RelPath, Head>, LocalError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = BTreeMap::new();
        let mut add = |key: &str, value: &[u8]| -> Result<(), LocalError> {
            let head = decode_head(key, value)?;
            out.insert(head.record.path.clone(), head);
            Ok(())
        };
        match prefix {
            None => {
                for item in entries.iter()? {
                    let (k, v) = item?;
                    add(k.value(), v.value())?;
                }
            }
            Some(prefix) => {
                if let Some(v) = entries.get(prefix.as_str())? {
                    add(prefix.as_str(), v.value())?;
                }
                let (lo, hi) = subtree_bounds(prefix);
                for item in entries.range::<&str>(lo.as_str()..hi.as_str())? {
                    let (k, v) = item?;
                    add(k.value(), v.value())?;
                }
            }
        }
        Ok(out)
    }

    /// Total size of the live files: what the version history's size
    /// budget is a share of. Reads every entry (hourly, not per file).
    pub(crate) fn live_bytes(&self) -> Result<u64, LocalError> {
        Ok(self.heads(None)?.values().filter(|h| h.record.is_file()).map(|h| h.record.size).sum())
    }

    /// The record and stat of one path.
    pub(crate) fn head(&self, path: &RelPath) -> Result<Option<Head>, LocalError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        entries.get(path.as_str())?.map(|v| decode_head(path.as_str(), v.value())).transpose()
    }

    /// Runs `f` inside one write transaction, committed durably if `f`
    /// succeeds and rolled back otherwise. Makes earlier
    /// [`Index::write_soon`] commits durable too.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&mut IndexWriter<'_>) -> Result<R, LocalError>,
    ) -> Result<R, LocalError> {
        let txn = self.db.begin_write()?;
        // Write transactions are exclusive: every lazy commit so far is
        // covered by this one.
        let covered = self.lazy.unflushed.swap(false, Ordering::AcqRel);
        let result = Self::run(&txn, f).and_then(|r| txn.commit().map(|()| r).map_err(LocalError::from));
        if result.is_err() && covered {
            self.lazy.unflushed.store(true, Ordering::Release);
        }
        result
    }

    /// Like [`Index::write`], but the commit becomes durable only with the
    /// next [`Index::flush`] or durable write (a group commit). For entries
    /// that describe what is already durable on disk: if they are lost in
    /// a crash, the next scan finds the disk ahead of the index and
    /// announces the same content again, which the tracker merges with the
    /// version it has.
    pub(crate) fn write_soon<R>(
        &self,
        f: impl FnOnce(&mut IndexWriter<'_>) -> Result<R, LocalError>,
    ) -> Result<R, LocalError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let result = Self::run(&txn, f)?;
        txn.commit()?;
        self.lazy.unflushed.store(true, Ordering::Release);
        self.lazy.wanted.notify_one();
        Ok(result)
    }

    /// Makes every [`Index::write_soon`] commit so far durable; false when
    /// there was none.
    pub(crate) fn flush(&self) -> Result<bool, LocalError> {
        self.lazy.flush()
    }

    /// Resolves after the next [`Index::write_soon`] commit (at once if one
    /// happened since the last wait).
    pub(crate) async fn flush_wanted(&self) {
        self.lazy.wanted.notified().await;
    }

    fn run<R>(
        txn: &redb::WriteTransaction,
        f: impl FnOnce(&mut IndexWriter<'_>) -> Result<R, LocalError>,
    ) -> Result<R, LocalError> {
        let mut writer = IndexWriter {
            entries: txn.open_table(ENTRIES)?,
            chunk_lists: txn.open_table(CHUNK_LISTS)?,
            by_content: txn.open_table(BY_CONTENT)?,
            by_chunk: txn.open_table(BY_CHUNK)?,
        };
        f(&mut writer)
    }
}

/// The tables of one write transaction.
pub(crate) struct IndexWriter<'t> {
    entries: Table<'t, &'static str, &'static [u8]>,
    chunk_lists: Table<'t, &'static str, &'static [u8]>,
    by_content: Table<'t, (Hash32, &'static str), ()>,
    by_chunk: Table<'t, (Hash32, &'static str, u64), u32>,
}

impl IndexWriter<'_> {
    /// The record and stat of `path` as this transaction sees them.
    pub(crate) fn head(&self, path: &RelPath) -> Result<Option<Head>, LocalError> {
        self.entries.get(path.as_str())?.map(|v| decode_head(path.as_str(), v.value())).transpose()
    }

    /// Removes the entry of `path` and its secondary rows (nothing if
    /// there is none).
    pub(crate) fn remove(&mut self, path: &RelPath) -> Result<(), LocalError> {
        let key = path.as_str();
        let Some(old) = self.head(path)? else { return Ok(()) };
        if old.record.is_file() {
            if let Some(list) = self.chunk_lists.remove(key)? {
                for c in decode_chunks(key, list.value())? {
                    self.by_chunk.remove((c.hash.0, key, c.offset))?;
                }
            }
            self.by_content.remove((old.record.content.0, key))?;
        }
        self.entries.remove(key)?;
        Ok(())
    }

    /// Stores `record` (under its own path) with its chunk list and stat,
    /// keeping the secondary tables in step. Values are encoded before
    /// anything is changed, so an [`LocalError::Encode`] leaves the
    /// transaction untouched (the caller may skip the entry and go on).
    pub(crate) fn put(
        &mut self,
        record: &FileRecord,
        chunks: &[ChunkInfo],
        stat: Option<StatKey>,
    ) -> Result<(), LocalError> {
        let key = record.path.as_str();
        let head_bytes = encode_head(&Head { record: record.clone(), stat })?;
        let chunk_bytes = if record.is_file() { Some(encode_chunks(&record.path, chunks)?) } else { None };
        let old = self.head(&record.path)?;
        let old_chunks = match &old {
            Some(h) if h.record.is_file() => match self.chunk_lists.get(key)? {
                Some(list) => decode_chunks(key, list.value())?,
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        let same_live_content =
            old.as_ref().is_some_and(|h| h.record.is_file() && record.is_file() && h.record.content == record.content)
                && old_chunks == chunks;
        if !same_live_content {
            if let Some(h) = old.as_ref().filter(|h| h.record.is_file()) {
                self.by_content.remove((h.record.content.0, key))?;
                for c in &old_chunks {
                    self.by_chunk.remove((c.hash.0, key, c.offset))?;
                }
            }
            if let Some(bytes) = &chunk_bytes {
                self.chunk_lists.insert(key, bytes.as_slice())?;
                self.by_content.insert((record.content.0, key), ())?;
                // Such a file is found through `by_content`.
                if !is_one_whole_chunk(chunks, &record.content) {
                    for c in chunks {
                        self.by_chunk.insert((c.hash.0, key, c.offset), c.len)?;
                    }
                }
            } else {
                self.chunk_lists.remove(key)?;
            }
        }
        self.entries.insert(key, head_bytes.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
    use dartsync_shared::test_util::{RecordBuilder, det_bytes};

    fn file(path: &str, bytes: &[u8], counter: u64) -> (FileRecord, Vec<ChunkInfo>) {
        let chunked = chunk_bytes(bytes, ChunkParams::for_piece_len(4096));
        (RecordBuilder::file(path).chunked(&chunked).vv(&[(7, counter)]).build(), chunked.chunks)
    }

    fn stat(inode: u64) -> Option<StatKey> {
        Some(StatKey { size: 1, mtime_ns: 2, inode, mode: 0o644 })
    }

    #[test]
    fn entries_round_trip_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("index.redb");
        let (rec, chunks) = file("dir/a b.txt", &det_bytes(1, 20_000), 1);
        {
            let index = Index::open(&db).unwrap();
            assert_eq!(index.piece_len().unwrap(), None);
            index.set_piece_len(4096).unwrap();
            index.put(&IndexEntry { record: rec.clone(), chunks: chunks.clone(), stat: stat(5) }).unwrap();
        }
        let index = Index::open(&db).unwrap();
        assert_eq!(index.piece_len().unwrap(), Some(4096));
        let got = index.get(&rec.path).unwrap().unwrap();
        assert_eq!(got, IndexEntry { record: rec.clone(), chunks, stat: stat(5) });
        assert_eq!(index.all().unwrap().len(), 1);
        assert_eq!(index.records().unwrap(), vec![rec]);
        assert!(index.get(&RelPath::new("missing").unwrap()).unwrap().is_none());
    }

    #[test]
    fn remove_forgets_the_entry_and_its_content_and_chunk_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("index.redb")).unwrap();
        let bytes = det_bytes(3, 20_000);
        let (a, chunks) = file("a", &bytes, 1);
        let (b, b_chunks) = file("b", &bytes, 1);
        index
            .write(|w| {
                w.put(&a, &chunks, stat(1))?;
                w.put(&b, &b_chunks, stat(2))
            })
            .unwrap();
        let first = chunks[0].hash;
        assert_eq!(index.locate_chunk(&first).unwrap().len(), 2);
        index.write(|w| w.remove(&a.path)).unwrap();
        assert!(index.get(&a.path).unwrap().is_none());
        let left = index.locate_chunk(&first).unwrap();
        assert_eq!(left.len(), 1, "only b still holds the chunk: {left:?}");
        assert!(index.chunk_list(&a.content).unwrap().is_some(), "b has the same content");
        index.write(|w| w.remove(&b.path)).unwrap();
        assert!(index.chunk_list(&a.content).unwrap().is_none());
        assert!(index.locate_chunk(&first).unwrap().is_empty());
        // Removing what is not there is fine.
        index.write(|w| w.remove(&b.path)).unwrap();
    }

    #[test]
    fn lazy_writes_are_group_committed_and_flushed_on_close() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("index.redb");
        let (a, a_chunks) = file("a", &det_bytes(1, 9_000), 1);
        let (b, b_chunks) = file("b", &det_bytes(2, 9_000), 1);
        {
            let index = Index::open(&db).unwrap();
            assert!(!index.flush().unwrap(), "nothing to flush yet");
            index.write_soon(|w| w.put(&a, &a_chunks, stat(1))).unwrap();
            // Visible at once, durable with the flush.
            assert_eq!(index.get(&a.path).unwrap().unwrap().record, a);
            assert!(index.flush().unwrap());
            assert!(!index.flush().unwrap(), "flushed twice");
            // A durable write covers lazy ones before it.
            index.write_soon(|w| w.put(&a, &a_chunks, stat(3))).unwrap();
            index.write(|w| w.put(&b, &b_chunks, stat(2))).unwrap();
            assert!(!index.flush().unwrap(), "the durable write covered it");
            // Left unflushed: closing the index makes it durable.
            index.write_soon(|w| w.put(&b, &b_chunks, stat(4))).unwrap();
        }
        let index = Index::open(&db).unwrap();
        assert_eq!(index.get(&a.path).unwrap().unwrap().stat, stat(3));
        assert_eq!(index.get(&b.path).unwrap().unwrap().stat, stat(4));
    }

    #[test]
    fn a_second_open_of_the_same_database_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("index.redb");
        let _first = Index::open(&db).unwrap();
        assert!(matches!(Index::open(&db), Err(LocalError::IndexOpen { .. })));
    }

    #[test]
    fn secondary_tables_follow_the_live_files() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        let bytes = det_bytes(3, 50_000);
        let (a, a_chunks) = file("a", &bytes, 1);
        let (b, b_chunks) = file("sub/b", &bytes, 1);
        assert!(a_chunks.len() > 2, "want several chunks");
        index.put(&IndexEntry { record: a.clone(), chunks: a_chunks.clone(), stat: stat(1) }).unwrap();
        index.put(&IndexEntry { record: b.clone(), chunks: b_chunks.clone(), stat: stat(2) }).unwrap();
        assert_eq!(index.chunk_list(&a.content).unwrap(), Some(a_chunks.clone()));
        let first = a_chunks[1];
        let locs = index.locate_chunk(&first.hash).unwrap();
        let paths: Vec<_> = locs.iter().map(|l| l.path.as_str().to_owned()).collect();
        assert_eq!(paths, ["a", "sub/b"]);
        assert!(locs.iter().all(|l| l.offset == first.offset && l.len == first.len));
        // Each with the stat stored with its chunk list.
        assert_eq!(locs.iter().map(|l| l.stat).collect::<Vec<_>>(), [stat(1), stat(2)]);

        // Tombstoning `a` removes it from the secondary tables only.
        let tomb = RecordBuilder::file("a").version(a.version.bumped(ShortId(7)).unwrap()).tombstone().build();
        index.put(&IndexEntry { record: tomb.clone(), chunks: vec![], stat: None }).unwrap();
        assert_eq!(index.locate_chunk(&first.hash).unwrap().len(), 1);
        assert_eq!(index.get(&a.path).unwrap().unwrap().record, tomb);

        // Rewriting `sub/b` with other content drops its old chunks.
        let (b2, b2_chunks) = file("sub/b", &det_bytes(9, 9_000), 2);
        index.put(&IndexEntry { record: b2.clone(), chunks: b2_chunks.clone(), stat: stat(3) }).unwrap();
        assert!(index.locate_chunk(&first.hash).unwrap().is_empty());
        assert_eq!(index.chunk_list(&a.content).unwrap(), None);
        assert_eq!(index.chunk_list(&b2.content).unwrap(), Some(b2_chunks.clone()));
        let locs = index.locate_chunk(&b2_chunks[0].hash).unwrap();
        assert_eq!(locs.iter().map(|l| l.stat).collect::<Vec<_>>(), [stat(3)]);
    }

    #[test]
    fn empty_files_have_an_empty_chunk_list() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        assert_eq!(index.chunk_list(&ContentHash::empty()).unwrap(), None);
        let (e, chunks) = file("empty", b"", 1);
        assert!(chunks.is_empty());
        index.put(&IndexEntry { record: e, chunks, stat: stat(1) }).unwrap();
        assert_eq!(index.chunk_list(&ContentHash::empty()).unwrap(), Some(vec![]));
    }

    #[test]
    fn a_file_of_one_chunk_has_no_chunk_row_and_is_located_through_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        let small = det_bytes(4, 1_000);
        let (a, a_chunks) = file("a", &small, 1);
        let (b, b_chunks) = file("dir/b", &small, 1);
        assert_eq!(a_chunks.len(), 1, "want a file of one chunk");
        assert_eq!(a_chunks[0].hash, a.content);
        // A bigger file one of whose chunks is that same content.
        let big: Vec<u8> = [det_bytes(6, 30_000), small.clone(), det_bytes(7, 30_000)].concat();
        let (c, c_chunks) = file("c", &big, 1);
        let inner = c_chunks.iter().find(|x| x.hash == a.content).copied();
        index.put(&IndexEntry { record: a.clone(), chunks: a_chunks.clone(), stat: stat(1) }).unwrap();
        index.put(&IndexEntry { record: b.clone(), chunks: b_chunks, stat: stat(2) }).unwrap();
        index.put(&IndexEntry { record: c.clone(), chunks: c_chunks.clone(), stat: stat(3) }).unwrap();
        let rows = {
            let txn = index.db.begin_read().unwrap();
            let by_chunk = txn.open_table(BY_CHUNK).unwrap();
            by_chunk.iter().unwrap().count()
        };
        assert_eq!(rows, c_chunks.len(), "only the file of several chunks has chunk rows");

        let mut got: Vec<(String, u64, u32)> = index
            .locate_chunk(&a.content)
            .unwrap()
            .into_iter()
            .map(|l| (l.path.as_str().to_owned(), l.offset, l.len))
            .collect();
        got.sort();
        let mut want = vec![("a".to_owned(), 0, a_chunks[0].len), ("dir/b".to_owned(), 0, a_chunks[0].len)];
        want.extend(inner.map(|x| ("c".to_owned(), x.offset, x.len)));
        want.sort();
        assert_eq!(got, want);

        // A row written by an earlier version for a one-chunk file is not
        // listed twice.
        let txn = index.db.begin_write().unwrap();
        txn.open_table(BY_CHUNK).unwrap().insert((a.content.0, "a", 0), a_chunks[0].len).unwrap();
        txn.commit().unwrap();
        assert_eq!(index.locate_chunk(&a.content).unwrap().len(), want.len());

        // Gone with the files.
        index.write(|w| w.remove(&a.path)).unwrap();
        index.write(|w| w.remove(&b.path)).unwrap();
        let left: Vec<String> =
            index.locate_chunk(&a.content).unwrap().into_iter().map(|l| l.path.as_str().to_owned()).collect();
        assert_eq!(left, inner.map(|_| "c".to_owned()).into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn subtree_heads_do_not_leak_siblings() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("i.redb")).unwrap();
        for p in ["a", "a/x", "a/y/z", "a b", "a.txt", "ab", "a0", "b"] {
            let (r, c) = file(p, p.as_bytes(), 1);
            index.put(&IndexEntry { record: r, chunks: c, stat: stat(1) }).unwrap();
        }
        let got: Vec<_> =
            index.heads(Some(&RelPath::new("a").unwrap())).unwrap().keys().map(|k| k.to_string()).collect();
        assert_eq!(got, ["a", "a/x", "a/y/z"]);
        assert_eq!(index.heads(None).unwrap().len(), 8);
    }

    #[test]
    fn corrupt_values_are_errors_and_are_dropped_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("i.redb");
        let (good, good_chunks) = file("good", &det_bytes(5, 20_000), 1);
        let index = Index::open(&db).unwrap();
        index.put(&IndexEntry { record: good.clone(), chunks: good_chunks.clone(), stat: stat(1) }).unwrap();
        let txn = index.db.begin_write().unwrap();
        {
            let mut entries = txn.open_table(ENTRIES).unwrap();
            entries.insert("garbage", &[0xFFu8, 1, 2][..]).unwrap();
            entries.insert("../escape", &[0u8][..]).unwrap();
            entries.insert("a/.DartSync/x", &[0u8][..]).unwrap();
            let mut by_chunk = txn.open_table(BY_CHUNK).unwrap();
            by_chunk.insert((good_chunks[0].hash.0, "a/.DartSync/x", 0), good_chunks[0].len).unwrap();
        }
        txn.commit().unwrap();
        // While open: an error, not a panic.
        assert!(matches!(index.get(&RelPath::new("garbage").unwrap()), Err(LocalError::Corrupt { .. })));
        drop(index);
        // Reopened: the unloadable entries and their rows are gone, the rest stays.
        let index = Index::open(&db).unwrap();
        assert_eq!(index.get(&RelPath::new("garbage").unwrap()).unwrap(), None);
        assert_eq!(index.heads(None).unwrap().len(), 1);
        assert_eq!(index.get(&good.path).unwrap().unwrap().record, good);
        let locs = index.locate_chunk(&good_chunks[0].hash).unwrap();
        assert_eq!(locs.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), ["good"]);
    }
}
