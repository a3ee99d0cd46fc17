//! The multi-source downloader: turns a [`FileRecord`] plus its holders
//! into a verified, fsynced temp file ready to be renamed into place.
//!
//! # Steps of [`Downloader::download`]
//! 1. **Chunk list**: from the local [`ChunkSource`] if some local file has
//!    the same content (a rename or copy: no network at all), else from the
//!    holders in turn. With a base list of
//!    [`DownloadLimits::summary_min_base`] chunks or more, a holder is first asked for the list's summary and only the
//!    groups the base lacks are fetched
//!    ([`dartsync_shared::chunk::summary`]); a rebuilt list that fails its
//!    check is fetched whole. A list is accepted only if its hash equals the
//!    record's `chunks` and it tiles `[0, size)`; a holder sending another
//!    list is dropped as a liar. Holders answering `Busy` (a chunk-list page
//!    takes an upload slot too) are asked again in rounds with the busy
//!    backoff, until [`DownloadLimits::busy_give_up`].
//! 2. **Local** (blocking pool): open `<content>.part`; if a valid state
//!    file from an earlier run exists, re-hash every chunk it marks done and
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
//! 4. **Finish**: re-hash the whole file against the record's `content`,
//!    rename `<content>.part` to a unique `<content>.<n>.done`, drop the
//!    state file. The caller owns the `.done` file from then on and makes
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
//!   whole-file mismatch (the record is inconsistent) deletes them.
//!
//! # Not here
//! Renaming into the synced folder, mtime and mode, the index, `Have`, and
//! which downloads to run (the apply engine owns those).

mod assemble;
mod error;
mod links;
mod refine;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use dartsync_shared::chunk::summary::ListPlan;
use dartsync_shared::chunk::{ChunkParams, chunk_list_hash, chunk_list_is_well_formed};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::{MAX_PIECE_LEN, MIN_CHUNK_LEN};
use dartsync_shared::proto::p2p::{ChunkListAssembler, P2pRequest, P2pResponse};
use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::{ChunkInfo, ContentHash, FileRecord, PeerId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transfer::chunk_source::ChunkSource;
use crate::transfer::part::{self, Bitmap, PartState};
use assemble::{FinishError, finish, prepare};
pub use error::{DownloadError, HolderError};
use refine::{LocalParts, Refined, Refiner};
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

/// The chunk-size bound for checking received lists: the protocol maximum,
/// not the tracker's current piece length, so files chunked before a
/// piece-length change still download (the list hash is the authority).
fn list_params() -> ChunkParams {
    ChunkParams::for_piece_len(MAX_PIECE_LEN)
}

/// Checks a chunk list against the record it should describe.
fn check_list(list: &[ChunkInfo], record: &FileRecord) -> Result<(), &'static str> {
    if chunk_list_hash(list) != record.chunks {
        return Err("its hash differs from the record's");
    }
    if !chunk_list_is_well_formed(list, record.size, list_params()) {
        return Err("it does not tile the file");
    }
    Ok(())
}

/// The chunk list of a file cut into a single chunk, derived from the
/// record alone: that chunk is the whole file, so its hash is the content
/// hash. `None` when the record's list hash says the file has more chunks
/// (or the guess does not tile the file). Saves a round trip for every
/// small file.
fn single_chunk_list(record: &FileRecord) -> Option<Vec<ChunkInfo>> {
    let len = u32::try_from(record.size).ok().filter(|&len| len > 0)?;
    let list = vec![ChunkInfo { offset: 0, len, hash: record.content }];
    check_list(&list, record).is_ok().then_some(list)
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

        let prepared = {
            let (tmp_dir, source, chunks, groups, cancel) =
                (self.tmp_dir.clone(), self.source.clone(), chunks.clone(), groups.clone(), cancel.clone());
            let header = PartState {
                content: record.content,
                chunks_hash: record.chunks,
                size: record.size,
                done: Bitmap::new(chunks.len()),
            };
            tokio::task::spawn_blocking(move || prepare(&tmp_dir, header, &chunks, &groups, source.as_ref(), &cancel))
                .await
                .map_err(|e| self.io_err(&self.tmp_dir, std::io::Error::other(e)))?
                .map_err(|(p, e)| self.io_err(&p, e))?
        };
        let part = part::part_path(&self.tmp_dir, &record.content);
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
                self.ctx.limits.persist_every_bytes,
            )
            .with_progress(job.progress.clone()),
        );

        if !work.finished() {
            if self.resumable(&record) {
                self.persist(&work, &part).await?;
            }
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            self.fetch(&record, &work, &holders, conn, &mut stats, &cancel).await?;
        } else if let Some((i, conn)) = conn {
            // Clean (nothing in flight): kept for the next download.
            let (reader, writer) = conn.split();
            self.ctx.links.put(holders[i].peer_id, holders[i].addr, reader, writer);
        }

        let temp_path = {
            drop(prepared.file);
            let (tmp_dir, content) = (self.tmp_dir.clone(), record.content);
            tokio::task::spawn_blocking(move || finish(&tmp_dir, &content))
                .await
                .map_err(|e| self.io_err(&part, std::io::Error::other(e)))?
                .map_err(|e| match e {
                    FinishError::Io(p, source) => DownloadError::Io { path: p, source },
                    FinishError::Mismatch(actual) => {
                        DownloadError::ContentMismatch { path: record.path.clone(), expected: record.content, actual }
                    }
                })?
        };
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
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&tmp_dir)?;
            // Made durable by the installer, like every download.
            File::create(&target).map(drop)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| self.io_err(&done, e))?;
        Ok(done)
    }

    /// Step 1: a verified chunk list, from the local source or a holder
    /// (whose connection is returned for reuse).
    async fn chunk_list(
        &self,
        record: &FileRecord,
        holders: &[Holder],
        base: &[ChunkInfo],
        stats: &mut [HolderStats],
        cancel: &CancellationToken,
    ) -> Result<(Vec<ChunkInfo>, Option<(usize, Conn)>), DownloadError> {
        let (source, content) = (self.source.clone(), record.content);
        let local = tokio::task::spawn_blocking(move || source.chunk_list(&content)).await.ok().flatten();
        if let Some(list) = local {
            match check_list(&list, record) {
                Ok(()) => {
                    tracing::debug!(path = %record.path, "chunk list from a local file");
                    return Ok((list, None));
                }
                Err(why) => tracing::debug!(path = %record.path, why, "local chunk list does not fit the record"),
            }
        }
        if let Some(list) = single_chunk_list(record) {
            return Ok((list, None));
        }
        // Holders answering `Busy` (upload slots full, chunk lists included)
        // are asked again after a pause, in rounds, like busy chunks.
        let limits = &self.ctx.limits;
        let (started, mut busy_streak) = (Instant::now(), 0u32);
        loop {
            let mut busy = Vec::new();
            for (i, holder) in holders.iter().enumerate() {
                if stats[i].dropped.is_some() {
                    continue;
                }
                let fetched = tokio::select! {
                    () = cancel.cancelled() => return Err(DownloadError::Cancelled { path: record.path.clone() }),
                    r = self.fetch_list(holder, record, base) => r,
                };
                match fetched {
                    Ok((list, conn)) => return Ok((list, Some((i, conn)))),
                    Err(HolderError::Busy) => {
                        stats[i].busy += 1;
                        busy.push(i);
                    }
                    Err(e) => {
                        if e.is_lie() {
                            tracing::warn!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped: it sent bad data");
                        } else {
                            tracing::debug!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped");
                        }
                        stats[i].dropped = Some(e);
                    }
                }
            }
            if busy.is_empty() || started.elapsed() >= limits.busy_give_up {
                for i in busy {
                    stats[i].dropped = Some(HolderError::BusyTooLong(limits.busy_give_up));
                }
                break;
            }
            let pause = limits
                .busy_backoff
                .saturating_mul(1 << busy_streak.min(16))
                .min(limits.busy_backoff_max.max(limits.busy_backoff));
            busy_streak += 1;
            tokio::select! {
                () = cancel.cancelled() => return Err(DownloadError::Cancelled { path: record.path.clone() }),
                () = tokio::time::sleep(pause) => {}
            }
        }
        let failures = stats.iter_mut().filter_map(|s| s.dropped.take().map(|e| (s.peer_id, e))).collect();
        Err(DownloadError::NoChunkList { path: record.path.clone(), failures })
    }

    /// Fetches the chunk list from one holder, rebuilt from `base` and the
    /// list's summary when `base` is long enough, else (or when that fails
    /// its check) page by page (a list of any length fits: each page is one
    /// bounded frame), and checks it.
    async fn fetch_list(
        &self,
        holder: &Holder,
        record: &FileRecord,
        base: &[ChunkInfo],
    ) -> Result<(Vec<ChunkInfo>, Conn), HolderError> {
        let limits = &self.ctx.limits;
        let mut conn = worker::connect(holder, &self.ctx.key, &self.ctx.identity, limits.connect_timeout).await?;
        if base.len() >= limits.summary_min_base
            && let Some(list) = self.rebuild_list(&mut conn, record, base).await?
        {
            return Ok((list, conn));
        }
        let mut list = ChunkListAssembler::new(record.content, record.size);
        while !list.is_complete() {
            let request = P2pRequest::GetChunkList {
                path: record.path.clone(),
                content: record.content,
                first: list.next_index(),
                max: limits.chunk_list_page,
            };
            conn.send(&request).await.map_err(HolderError::Channel)?;
            match self.answer(&mut conn).await? {
                P2pResponse::ChunkList(page) => list.push(page).map_err(HolderError::ChunkList)?,
                P2pResponse::NotAvailable => return Err(HolderError::NotAvailable),
                P2pResponse::Busy => return Err(HolderError::Busy),
                _ => return Err(HolderError::Unexpected("not a chunk list page")),
            }
        }
        let chunks = list.finish().map_err(HolderError::ChunkList)?;
        check_list(&chunks, record).map_err(HolderError::BadChunkList)?;
        Ok((chunks, conn))
    }

    /// The next answer on `conn`, validated.
    async fn answer(&self, conn: &mut Conn) -> Result<P2pResponse, HolderError> {
        let timeout = self.ctx.limits.request_timeout;
        let response = tokio::time::timeout(timeout, conn.recv::<P2pResponse>())
            .await
            .map_err(|_| HolderError::Timeout(timeout))?
            .map_err(HolderError::Channel)?
            .ok_or(HolderError::Closed)?;
        response.validate().map_err(HolderError::Protocol)?;
        Ok(response)
    }

    /// The chunk list rebuilt from `base` and the holder's summary of it,
    /// fetching only the ranges of groups `base` lacks. `Ok(None)` (with
    /// the connection clean) when the holder has no summary for it or the
    /// rebuilt list fails its check: the caller fetches the list whole.
    async fn rebuild_list(
        &self,
        conn: &mut Conn,
        record: &FileRecord,
        base: &[ChunkInfo],
    ) -> Result<Option<Vec<ChunkInfo>>, HolderError> {
        let request = P2pRequest::GetChunkListSummary { path: record.path.clone(), content: record.content };
        conn.send(&request).await.map_err(HolderError::Channel)?;
        let summary = match self.answer(conn).await? {
            P2pResponse::ChunkListSummary(summary) if summary.content == record.content => summary,
            P2pResponse::ChunkListSummary(_) => return Err(HolderError::Unexpected("a summary of another content")),
            P2pResponse::NotAvailable => return Ok(None),
            P2pResponse::Busy => return Err(HolderError::Busy),
            _ => return Err(HolderError::Unexpected("not a chunk list summary")),
        };
        let plan = ListPlan::new(&summary, base);
        if plan.total() > record.size.div_ceil(u64::from(MIN_CHUNK_LEN)) {
            return Err(HolderError::BadChunkList("its summary claims more chunks than the file can have"));
        }
        let ranges: Vec<(u64, u32)> = plan.fetches().collect();
        let mut fetched = Vec::with_capacity(ranges.len());
        for window in ranges.chunks(self.ctx.limits.in_flight_per_holder.max(1)) {
            for &(first, max) in window {
                let request =
                    P2pRequest::GetChunkList { path: record.path.clone(), content: record.content, first, max };
                conn.send(&request).await.map_err(HolderError::Channel)?;
            }
            for &(first, max) in window {
                match self.answer(conn).await? {
                    P2pResponse::ChunkList(page)
                        if page.content == record.content
                            && page.first == first
                            && page.chunks.len() == max as usize =>
                    {
                        fetched.push(page.chunks);
                    }
                    P2pResponse::ChunkList(_) => {
                        return Err(HolderError::BadChunkList("a page other than the range asked for"));
                    }
                    P2pResponse::NotAvailable => return Err(HolderError::NotAvailable),
                    P2pResponse::Busy => return Err(HolderError::Busy),
                    _ => return Err(HolderError::Unexpected("not a chunk list page")),
                }
            }
        }
        let from_network: usize = fetched.iter().map(Vec::len).sum();
        match plan.rebuild(base, &fetched, record.size) {
            Ok(list) if check_list(&list, record).is_ok() => {
                tracing::debug!(
                    path = %record.path, chunks = list.len(), fetched = from_network, groups = summary.groups.len(),
                    "chunk list rebuilt from the base"
                );
                Ok(Some(list))
            }
            Ok(_) => {
                tracing::debug!(path = %record.path, "rebuilt chunk list fails its check; fetching it whole");
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(path = %record.path, error = %e, "chunk list cannot be rebuilt; fetching it whole");
                Ok(None)
            }
        }
    }

    /// Step 2½ ([`refine`]): chunks replacing base chunks fetched part by
    /// part. Uses the connection the list came over, else a fresh one to
    /// the first usable holder; a holder that lies is marked dropped. What
    /// fails otherwise is left to the network phase.
    async fn refine(
        &self,
        step: &mut RefineStep<'_>,
        base: &[ChunkInfo],
        missing: &[usize],
        cancel: &CancellationToken,
    ) -> Refined {
        let mut out = Refined::default();
        let local = {
            let (source, base, chunks) = (self.source.clone(), base.to_vec(), step.chunks.clone());
            tokio::task::spawn_blocking(move || LocalParts::load(&base, &chunks, source.as_ref())).await
        };
        let Ok(Some(local)) = local else { return out };
        let (i, mut conn) = match step.conn.take() {
            Some(reused) => reused,
            None => {
                let Some(i) = step.stats.iter().position(|s| s.dropped.is_none()) else { return out };
                let limits = &self.ctx.limits;
                let holder = &step.holders[i];
                match worker::connect(holder, &self.ctx.key, &self.ctx.identity, limits.connect_timeout).await {
                    Ok(conn) => (i, conn),
                    Err(e) => {
                        tracing::debug!(peer = %holder.peer_id.fmt_short(), error = %e, "cannot refine chunks");
                        return out;
                    }
                }
            }
        };
        let mut refiner = Refiner {
            conn: &mut conn,
            record: step.record,
            chunks: step.chunks,
            groups: step.groups,
            local: &local,
            file: step.file,
            limits: &self.ctx.limits,
        };
        let result = tokio::select! {
            () = cancel.cancelled() => Err(None),
            r = refiner.run(missing, &mut out) => r.map_err(Some),
        };
        let holder = &step.holders[i];
        let stats = &mut step.stats[i];
        stats.bytes += out.bytes_fetched;
        stats.chunks += out.groups.len() as u64;
        match result {
            Ok(()) => *step.conn = Some((i, conn)),
            Err(None) => {}
            Err(Some(e)) if e.is_lie() => {
                tracing::warn!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped: it sent bad data");
                stats.dropped = Some(e);
            }
            Err(Some(e)) => tracing::debug!(peer = %holder.peer_id.fmt_short(), error = %e, "refining chunks stopped"),
        }
        tracing::debug!(
            path = %step.record.path, refined = out.groups.len(), bytes_local = out.bytes_local,
            bytes_fetched = out.bytes_fetched, "chunks refined from the base"
        );
        out
    }

    /// Step 3: every usable holder fetches from the shared queue until it is
    /// empty, or every holder is gone, or `cancel` fires.
    async fn fetch(
        &self,
        record: &FileRecord,
        work: &Arc<Work>,
        holders: &[Holder],
        mut conn: Option<(usize, Conn)>,
        stats: &mut [HolderStats],
        cancel: &CancellationToken,
    ) -> Result<(), DownloadError> {
        let part = part::part_path(&self.tmp_dir, &record.content);
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
            self.persist(work, &part).await?;
        }
        if let Some(source) = local_error {
            return Err(DownloadError::Io { path: part, source });
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

/// What [`Downloader::refine`] works on, borrowed from the download.
struct RefineStep<'a> {
    record: &'a FileRecord,
    chunks: &'a Arc<[ChunkInfo]>,
    groups: &'a [Group],
    file: &'a Arc<File>,
    holders: &'a [Holder],
    stats: &'a mut [HolderStats],
    conn: &'a mut Option<(usize, Conn)>,
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

    #[test]
    fn a_one_chunk_file_needs_no_chunk_list_and_a_bigger_one_does() {
        use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
        use dartsync_shared::test_util::{RecordBuilder, det_bytes};
        let params = ChunkParams::for_piece_len(64 * 1024);
        let record_of = |bytes: &[u8]| {
            let chunked = chunk_bytes(bytes, params);
            let mut record = RecordBuilder::file("f").body(bytes).build();
            record.chunks = chunked.chunks_hash;
            (record, chunked.chunks)
        };
        let (small, chunks) = record_of(&det_bytes(1, 10_000));
        assert_eq!(chunks.len(), 1);
        assert_eq!(single_chunk_list(&small), Some(chunks));
        let (big, chunks) = record_of(&det_bytes(2, 2_000_000));
        assert!(chunks.len() > 1);
        assert_eq!(single_chunk_list(&big), None);
        // A record whose list hash lies about the content is not trusted.
        let mut lying = small.clone();
        lying.content = ContentHash::of(b"other");
        assert_eq!(single_chunk_list(&lying), None);
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
