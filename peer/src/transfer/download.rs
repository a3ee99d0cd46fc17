//! The multi-source downloader: turns a [`FileRecord`] plus its holders
//! into a verified, fsynced temp file ready to be renamed into place.
//!
//! # Steps of [`Downloader::download`]
//! 1. **Chunk list**: from the local [`ChunkSource`] if some local file has
//!    the same content (a rename or copy: no network at all), else from the
//!    holders in turn. With a base list of
//!    [`DownloadLimits::summary_min_base`] chunks or more, a holder is
//!    first asked for the list's summary and only the groups the base
//!    lacks are fetched ([`dartsync_shared::chunk::summary`]); a rebuilt
//!    list that fails its check is fetched whole. A list is accepted only if its hash equals the
//!    record's `chunks` and it tiles `[0, size)`; a holder sending another
//!    list is dropped as a liar. Holders answering `Busy` (a chunk-list page
//!    takes an upload slot too) are asked again in rounds with the busy
//!    backoff, until [`DownloadLimits::busy_give_up`].
//! 2. **Local** (blocking pool): open `<content>.part` (a file of at most
//!    [`DownloadLimits::persist_every_bytes`] is written straight under a
//!    fresh `<content>.<n>.done` name instead: it is never resumed); if a
//!    valid state file from an earlier run exists, re-hash every chunk it marks done and
//!    keep those that verify (the bitmap is a hint, never trusted alone);
//!    then copy every missing chunk the `ChunkSource` can produce (old
//!    version of the file, any other file) after verifying it, and chunks
//!    that repeat inside the file. This is the delta sync and the rename
//!    handling. Then [`refine`]: chunks that replace base chunks are
//!    fetched part by part, only the parts the base lacks.
//! 3. **Network** ([`worker`]): one connection per holder, several requests
//!    in flight each, one shared queue of missing chunks; lying, failing or
//!    `NotAvailable` holders are dropped and their chunks requeued, `Busy`
//!    holders back off. Progress of a file bigger than
//!    [`DownloadLimits::persist_every_bytes`] is persisted every that many
//!    bytes and whenever the phase ends, so a killed peer resumes where it
//!    stopped; a smaller file is simply fetched again (no state file, no
//!    fsyncs: most files of a folder are small, and each fsync costs more
//!    than fetching them).
//! 4. **Finish**: check the whole file's hash against the record's
//!    `content` (not a file of one chunk: that chunk was verified). The
//!    hash was taken while the chunks were written, in file order
//!    ([`prefix_hash`]); only what it could not cover is read back from
//!    disk here. Then rename
//!    `<content>.part` to a unique `<content>.<n>.done` (a small file has
//!    that name already), drop the state file. A small file of one chunk
//!    makes no blocking trip here at all. The caller owns the `.done` file from then on and makes
//!    it durable when it installs it (one fsync of the file before the
//!    rename into place, one of the folder after).
//!
//! File names and the state format are described in [`part`].
//!
//! # Invariants
//! - One download per content at a time in one `Downloader` (a second one
//!   for the same content waits), so a `.part` has one writer.
//! - Nothing is written to the `.part` before it is verified against its
//!   chunk hash, and the returned file hashes to `record.content`.
//! - Cancel or failure leaves `.part` + state for a later resume; only a
//!   whole-file mismatch (the record is inconsistent) deletes them. A small
//!   download's file is removed when it fails or is cancelled.
//!
//! # Not here
//! Renaming into the synced folder, mtime and mode, the index, `Have`, and
//! which downloads to run (the apply engine owns those).

mod assemble;
mod error;
mod links;
mod list;
mod prefix_hash;
mod refine;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::{ChunkInfo, ContentHash, FileRecord, PeerId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transfer::chunk_source::ChunkSource;
use crate::transfer::part::{self, Bitmap, PartState};
use assemble::{FinishError, TempFile, finish, prepare};
pub use error::{DownloadError, HolderError};
use refine::RefineStep;
use worker::{Conn, Group, Work, WorkerCtx, WorkerEnd};
pub use worker::{DownloadLimits, HolderStats};

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct DownloadJob {
    /// The version to fetch; must be a live regular file
    /// ([`FileRecord::is_file`]).
    pub record: FileRecord,
    /// Peers that hold exactly this version.
    pub holders: Vec<Holder>,
    /// Filled in while the download runs (for status and progress logs).
    pub progress: Arc<DownloadProgress>,
    /// The chunk list of the version this one replaces on this peer, if
    /// any (its *base*): only the parts of the new chunk list and of the
    /// changed chunks that the base lacks are fetched. A hint: everything
    /// read from it is verified.
    pub base: Vec<ChunkInfo>,
}

impl DownloadJob {
    /// A job with fresh progress counters and no base.
    pub fn new(record: FileRecord, holders: Vec<Holder>) -> DownloadJob {
        DownloadJob { record, holders, progress: Arc::default(), base: Vec::new() }
    }

    /// The same job with `base` as the chunk list of the version it
    /// replaces.
    pub fn with_base(mut self, base: Vec<ChunkInfo>) -> DownloadJob {
        self.base = base;
        self
    }
}

/// How far one download is, readable while it runs.
#[derive(Debug, Default)]
pub struct DownloadProgress {
    /// Bytes of the file in place: resumed, copied from local files, fetched.
    done: AtomicU64,
    /// Holders being fetched from.
    sources: AtomicU32,
}

impl DownloadProgress {
    /// Bytes of the file in place so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Holders being fetched from.
    pub fn sources(&self) -> u32 {
        self.sources.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn set_sources(&self, n: usize) {
        self.sources.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

/// A finished download.
#[derive(Debug)]
pub struct DownloadOutcome {
    /// The verified, fsynced file (`<tmp_dir>/<content>.<n>.done`), ready
    /// to be renamed into place. The caller owns it.
    pub temp_path: PathBuf,
    /// The file's chunk list (verified against the record).
    pub chunks: Vec<ChunkInfo>,
    /// Bytes copied from local files (other files, the old version, chunks
    /// repeated inside this file) without network.
    pub bytes_local: u64,
    /// Bytes found verified in the partial file of an earlier run.
    pub bytes_resumed: u64,
    /// Bytes received from holders and accepted.
    /// `bytes_local + bytes_resumed + bytes_fetched == record.size`.
    pub bytes_fetched: u64,
    /// Accepted bytes per holder, every holder listed (0 for unused or
    /// dropped ones), in the job's order.
    pub fetched_by_holder: Vec<(PeerId, u64)>,
    /// Per-holder details, same order.
    pub holders: Vec<HolderStats>,
    /// Wall time of the whole download.
    pub elapsed: Duration,
}

/// Fetches files from holders. Share one per peer (behind an `Arc`): it
/// keeps the set of contents being downloaded so two downloads never write
/// the same `.part`.
pub struct Downloader {
    ctx: Arc<WorkerCtx>,
    source: Arc<dyn ChunkSource>,
    tmp_dir: PathBuf,
    active: Active,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader").field("tmp_dir", &self.tmp_dir).field("limits", &self.ctx.limits).finish()
    }
}

/// Groups chunks by (hash, len), in order of first appearance.
fn group_chunks(chunks: &[ChunkInfo]) -> Vec<Group> {
    let mut index: HashMap<(ContentHash, u32), usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let g = *index.entry((c.hash, c.len)).or_insert_with(|| {
            groups.push(Group { hash: c.hash, len: c.len, members: Vec::new() });
            groups.len() - 1
        });
        groups[g].members.push(i);
    }
    groups
}

impl Downloader {
    /// A downloader writing temp files into `tmp_dir` (the peer's
    /// `.dartsync/tmp`, created on demand) and copying local chunks found
    /// through `source`.
    pub fn new(
        key: ClusterKey,
        identity: Identity,
        source: Arc<dyn ChunkSource>,
        tmp_dir: PathBuf,
        limits: DownloadLimits,
    ) -> Self {
        let ctx = Arc::new(WorkerCtx { key, identity, limits, links: links::Links::default() });
        Downloader { ctx, source, tmp_dir, active: Active::default() }
    }

    /// The temp folder.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// Downloads `job.record` (see the module docs for the steps). Stops
    /// promptly when `cancel` fires, keeping the partial file.
    pub async fn download(
        &self,
        job: DownloadJob,
        cancel: CancellationToken,
    ) -> Result<DownloadOutcome, DownloadError> {
        let started = Instant::now();
        let record = job.record.clone();
        let path = record.path.clone();
        if !record.is_file() {
            return Err(DownloadError::NotAFile { path });
        }
        let cancelled = || DownloadError::Cancelled { path: record.path.clone() };
        let _active = self.active.acquire(record.content, &cancel).await.ok_or_else(cancelled)?;
        let me = self.ctx.identity.peer_id();
        let mut seen = HashSet::new();
        let holders: Vec<Holder> =
            job.holders.iter().filter(|h| h.peer_id != me && seen.insert(h.peer_id)).cloned().collect();
        let mut stats: Vec<HolderStats> = holders.iter().map(HolderStats::new).collect();
        tracing::debug!(%path, size = record.size, content = %record.content.fmt_short(), holders = holders.len(), "download starting");

        if record.size == 0 {
            let temp_path = self.finish_empty(&record).await?;
            return Ok(outcome(temp_path, Vec::new(), (0, 0, 0), stats, started));
        }

        let (chunks, mut conn) = self.chunk_list(&record, &holders, &job.base, &mut stats, &cancel).await?;
        let chunks: Arc<[ChunkInfo]> = chunks.into();
        let groups: Arc<[Group]> = group_chunks(&chunks).into();

        let resumable = self.resumable(&record);
        let temp = TempFile::new(&self.tmp_dir, &record.content, resumable);
        // A small download's file is its own (a fresh name): it goes when
        // the download fails or is cancelled. A `.part` stays for a resume.
        let discard = (!resumable).then(|| DiscardOnDrop(Some(temp.path.clone())));
        let prepared = {
            let (temp, source, chunks, groups, cancel) =
                (temp.clone(), self.source.clone(), chunks.clone(), groups.clone(), cancel.clone());
            let header = PartState {
                content: record.content,
                chunks_hash: record.chunks,
                size: record.size,
                done: Bitmap::new(chunks.len()),
            };
            tokio::task::spawn_blocking(move || prepare(&temp, header, &chunks, &groups, source.as_ref(), &cancel))
                .await
                .map_err(|e| self.io_err(&self.tmp_dir, std::io::Error::other(e)))?
                .map_err(|(p, e)| self.io_err(&p, e))?
        };
        let part = temp.path.clone();
        let state_path = part::state_path(&self.tmp_dir, &record.content);
        let (bytes_resumed, mut bytes_local) = (prepared.bytes_resumed, prepared.bytes_local);
        let (mut missing, mut header) = (prepared.missing, prepared.header);
        job.progress.add(bytes_resumed + bytes_local);
        if !missing.is_empty() && !job.base.is_empty() && !cancel.is_cancelled() {
            let mut step = RefineStep {
                record: &record,
                chunks: &chunks,
                groups: &groups,
                file: &prepared.file,
                holders: &holders,
                stats: &mut stats,
                conn: &mut conn,
            };
            let refined = self.refine(&mut step, &job.base, &missing, &cancel).await;
            for &g in &refined.groups {
                for &i in &groups[g].members {
                    header.done.set(i, true);
                }
            }
            missing.retain(|g| !refined.groups.contains(g));
            bytes_local += refined.bytes_local;
            job.progress.add(refined.bytes_local + refined.bytes_fetched);
        }
        tracing::debug!(
            %path, chunks = chunks.len(), bytes_resumed, bytes_local, missing_groups = missing.len(),
            "local chunks in place"
        );
        let work = Arc::new(
            Work::new(
                prepared.file.clone(),
                chunks.clone(),
                groups,
                missing,
                header,
                state_path,
                // A small file is fetched again rather than resumed: it
                // never saves its progress (`finish` removes no state file).
                if resumable { self.ctx.limits.persist_every_bytes } else { u64::MAX },
            )
            .with_progress(job.progress.clone()),
        );

        if !work.finished() {
            if resumable {
                self.persist(&work, &part).await?;
            }
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            self.fetch(&record, &part, &work, &holders, conn, &mut stats, &cancel).await?;
        } else if let Some((i, conn)) = conn {
            // Clean (nothing in flight): kept for the next download.
            let (reader, writer) = conn.split();
            self.ctx.links.put(holders[i].peer_id, holders[i].addr, reader, writer);
        }

        drop(prepared.file);
        let temp_path = if !resumable && dartsync_shared::chunk::is_one_whole_chunk(&chunks, &record.content) {
            // Nothing to read again and nothing to rename: no blocking trip.
            part.clone()
        } else {
            let (temp, content, list) = (temp.clone(), record.content, chunks.clone());
            let hashed = work.take_prefix_hash();
            tokio::task::spawn_blocking(move || finish(&temp, &content, &list, hashed))
                .await
                .map_err(|e| self.io_err(&part, std::io::Error::other(e)))?
                .map_err(|e| match e {
                    FinishError::Io(p, source) => DownloadError::Io { path: p, source },
                    FinishError::Mismatch(actual) => {
                        DownloadError::ContentMismatch { path: record.path.clone(), expected: record.content, actual }
                    }
                })?
        };
        // Handed out: the caller owns the file now.
        if let Some(discard) = discard {
            discard.keep();
        }
        let bytes_fetched: u64 = stats.iter().map(|s| s.bytes).sum();
        let bytes_local = bytes_local + work.duplicate_bytes();
        debug_assert_eq!(bytes_local + bytes_resumed + bytes_fetched, record.size);
        let outcome = outcome(temp_path, chunks.to_vec(), (bytes_local, bytes_resumed, bytes_fetched), stats, started);
        tracing::debug!(
            %path, bytes_local, bytes_resumed, bytes_fetched, elapsed = ?outcome.elapsed, "download verified"
        );
        Ok(outcome)
    }

    fn io_err(&self, path: &Path, source: std::io::Error) -> DownloadError {
        DownloadError::Io { path: path.to_owned(), source }
    }

    /// True when progress on `record` is persisted for a resume; a smaller
    /// file is fetched again instead.
    fn resumable(&self, record: &FileRecord) -> bool {
        record.size > self.ctx.limits.persist_every_bytes
    }

    async fn persist(&self, work: &Arc<Work>, part: &Path) -> Result<(), DownloadError> {
        let w = work.clone();
        tokio::task::spawn_blocking(move || w.persist(true))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| self.io_err(part, e))
    }

    /// An empty file: nothing to fetch, only a file to create.
    async fn finish_empty(&self, record: &FileRecord) -> Result<PathBuf, DownloadError> {
        if record.content != ContentHash::empty() {
            return Err(DownloadError::ContentMismatch {
                path: record.path.clone(),
                expected: record.content,
                actual: ContentHash::empty(),
            });
        }
        let tmp_dir = self.tmp_dir.clone();
        let done = part::fresh_done_path(&tmp_dir, &record.content);
        let target = done.clone();
        // Made durable by the installer, like every download.
        tokio::task::spawn_blocking(move || part::create_in_tmp(&tmp_dir, &target, |p| File::create(p).map(drop)))
            .await
            .map_err(|e| self.io_err(&done, std::io::Error::other(e)))?
            .map_err(|(p, e)| self.io_err(&p, e))?;
        Ok(done)
    }

    /// Step 3: every usable holder fetches from the shared queue until it is
    /// empty, or every holder is gone, or `cancel` fires.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        record: &FileRecord,
        part: &Path,
        work: &Arc<Work>,
        holders: &[Holder],
        mut conn: Option<(usize, Conn)>,
        stats: &mut [HolderStats],
        cancel: &CancellationToken,
    ) -> Result<(), DownloadError> {
        let workers_cancel = cancel.child_token();
        let mut workers = JoinSet::new();
        work.progress.set_sources(stats.iter().filter(|s| s.dropped.is_none()).count());
        // One worker per holder, but never more than there are chunks to
        // fetch (a small file needs one holder, not a connection to each);
        // the holder that sent the chunk list goes first. A holder that
        // drops out makes room for the next one.
        let mut waiting: std::collections::VecDeque<usize> =
            (0..holders.len()).filter(|&i| stats[i].dropped.is_none()).collect();
        if let Some(&(j, _)) = conn.as_ref()
            && let Some(at) = waiting.iter().position(|&i| i == j)
        {
            waiting.remove(at);
            waiting.push_front(j);
        }
        let spawn = |i: usize, reuse: Option<Conn>, workers: &mut JoinSet<_>| {
            let run =
                worker::run_holder(work.clone(), holders[i].clone(), reuse, self.ctx.clone(), workers_cancel.clone());
            workers.spawn(async move { (i, run.await) });
        };
        for _ in 0..work.missing().0.max(1) {
            let Some(i) = waiting.pop_front() else { break };
            let reuse = match conn.take() {
                Some((j, c)) if j == i => Some(c),
                other => {
                    conn = other;
                    None
                }
            };
            spawn(i, reuse, &mut workers);
        }
        let mut local_error = None;
        while let Some(joined) = workers.join_next().await {
            let (i, report) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => continue,
            };
            let s = &mut stats[i];
            s.chunks += report.stats.chunks;
            s.bytes += report.stats.bytes;
            s.busy += report.stats.busy;
            s.dropped = report.stats.dropped;
            if let WorkerEnd::Local(e) = report.end {
                local_error.get_or_insert(e);
                workers_cancel.cancel();
            } else if !work.finished()
                && !workers_cancel.is_cancelled()
                && let Some(next) = waiting.pop_front()
            {
                spawn(next, None, &mut workers);
            }
        }
        if self.resumable(record) {
            self.persist(work, part).await?;
        }
        if let Some(source) = local_error {
            return Err(DownloadError::Io { path: part.to_owned(), source });
        }
        if work.finished() {
            return Ok(());
        }
        if cancel.is_cancelled() {
            tracing::debug!(path = %record.path, done = work.done().count(), "download cancelled; partial file kept");
            return Err(DownloadError::Cancelled { path: record.path.clone() });
        }
        let (missing_chunks, missing_bytes) = work.missing();
        let failures = stats.iter_mut().filter_map(|s| s.dropped.take().map(|e| (s.peer_id, e))).collect();
        Err(DownloadError::NoHoldersLeft { path: record.path.clone(), missing_chunks, missing_bytes, failures })
    }

    /// Removes temp files not touched for `older_than` whose content is not
    /// being downloaded now: abandoned `.part` files with their state files
    /// (a download of a version nobody holds any more never resumes), and
    /// `.done` files a crash between download and rename left behind. A
    /// `.part` is written to as its download progresses, so a live one is
    /// always young. Unknown names are left alone. Returns how many files
    /// were removed. Blocking.
    pub fn cleanup_stale(&self, older_than: Duration) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.tmp_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Some((content, kind)) = part::parse_temp_name(&name) else { continue };
            let modified = match entry.metadata().and_then(|m| m.modified()) {
                Ok(modified) => modified,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let age = now.duration_since(modified).unwrap_or_default();
            if age < older_than || self.active.contains(&content) {
                continue;
            }
            tracing::debug!(file = %name, kind = ?kind, ?age, "removing stale temp file");
            part::remove_if_exists(&entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// Removes a small download's temp file when the download ends without
/// handing it out (an error or a cancel: the future is dropped); in the
/// blocking pool when there is a runtime.
struct DiscardOnDrop(Option<PathBuf>);

impl DiscardOnDrop {
    /// The file was handed out: leave it.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else { return };
        let remove = move || {
            if let Err(err) = part::remove_if_exists(&path) {
                tracing::warn!(file = %path.display(), %err, "cannot remove the temp file of a failed download");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

fn outcome(
    temp_path: PathBuf,
    chunks: Vec<ChunkInfo>,
    (bytes_local, bytes_resumed, bytes_fetched): (u64, u64, u64),
    holders: Vec<HolderStats>,
    started: Instant,
) -> DownloadOutcome {
    DownloadOutcome {
        temp_path,
        chunks,
        bytes_local,
        bytes_resumed,
        bytes_fetched,
        fetched_by_holder: holders.iter().map(|h| (h.peer_id, h.bytes)).collect(),
        holders,
        elapsed: started.elapsed(),
    }
}

/// Contents being downloaded now, so one content has one writer.
#[derive(Debug, Default)]
struct Active {
    /// parking_lot Mutex: a set lookup, never held across an await.
    set: Mutex<HashSet<ContentHash>>,
    released: Notify,
}

impl Active {
    /// Waits until no other download of `content` runs, then claims it.
    /// `None` if `cancel` fires first.
    async fn acquire(&self, content: ContentHash, cancel: &CancellationToken) -> Option<ActiveGuard<'_>> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.set.lock().insert(content) {
                return Some(ActiveGuard { active: self, content });
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = released => {}
            }
        }
    }

    fn contains(&self, content: &ContentHash) -> bool {
        self.set.lock().contains(content)
    }
}

struct ActiveGuard<'a> {
    active: &'a Active,
    content: ContentHash,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.active.set.lock().remove(&self.content);
        self.active.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_merge_repeated_chunks() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        let chunks = [
            ChunkInfo { offset: 0, len: 1, hash: a },
            ChunkInfo { offset: 1, len: 1, hash: b },
            ChunkInfo { offset: 2, len: 1, hash: a },
            ChunkInfo { offset: 3, len: 2, hash: a },
        ];
        let groups = group_chunks(&chunks);
        let members: Vec<_> = groups.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn a_second_download_of_the_same_content_waits() {
        let active = Active::default();
        let c = ContentHash::of(b"x");
        let cancel = CancellationToken::new();
        let first = active.acquire(c, &cancel).await.unwrap();
        assert!(active.contains(&c));
        let other = CancellationToken::new();
        let waiting = active.acquire(c, &other);
        tokio::pin!(waiting);
        // Not available while the first holds it.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(first);
        let second = waiting.await.unwrap();
        assert!(active.contains(&c));
        drop(second);
        assert!(!active.contains(&c));
        // A cancelled wait gives up.
        let _held = active.acquire(c, &cancel).await.unwrap();
        let gone = CancellationToken::new();
        gone.cancel();
        assert!(active.acquire(c, &gone).await.is_none());
    }
}
