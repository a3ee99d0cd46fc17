//! The network phase of one download: a shared queue of missing chunks and
//! one pipelined worker per holder pulling from it.
//!
//! # Shape
//! [`Work`] owns everything the workers share: the open `.part`, the chunk
//! groups (chunks with equal hash and length are fetched once and written
//! at every offset), the queue of groups still to fetch, the done bitmap and
//! the persistence of progress. Each holder gets one connection and one
//! [`run_holder`] task that keeps up to `in_flight_per_holder` requests in
//! flight, taking groups from the front of the queue; a fast holder comes
//! back for more sooner, so it naturally fetches more.
//!
//! # Invariants
//! - A group is in exactly one place: the queue, one worker's in-flight
//!   list, or done. A worker that stops for any reason puts its in-flight
//!   groups back at the front of the queue and wakes the others.
//! - A chunk is written only after its bytes hash to the expected hash, and
//!   its bit is set only after the write.
//! - `Busy` requeues the chunk and pauses that holder (doubling backoff); a
//!   holder that has answered only `Busy` for `busy_give_up` is dropped.
//!   Any other failure (lie, `NotAvailable`, protocol error, timeout,
//!   closed connection) drops the holder for this download.

use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use dartsync_shared::channel::{self, SecureChannel};
use dartsync_shared::chunk::parts::PART_AVG;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::CHUNK_LIST_PAGE;
use dartsync_shared::proto::p2p::{P2pRequest, P2pResponse};
use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::{ChunkInfo, ContentHash, PeerId};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::HolderError;
use super::links::{Links, Reader, Writer};
use super::prefix_hash::PrefixHash;
use crate::transfer::part::{Bitmap, PartState, save_state};

/// Knobs of the downloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadLimits {
    /// Requests kept in flight on each holder connection. Keep it at most
    /// the holders' `upload_slots_per_peer` (default 4) or they answer the
    /// extra ones `Busy`.
    pub in_flight_per_holder: usize,
    /// TCP connect deadline per holder (the handshake has its own).
    pub connect_timeout: Duration,
    /// Longest wait for one answer before the holder is dropped.
    pub request_timeout: Duration,
    /// Pause after a `Busy` answer; doubles while answers stay `Busy`.
    pub busy_backoff: Duration,
    /// Longest pause after `Busy`.
    pub busy_backoff_max: Duration,
    /// A holder that has answered only `Busy` for this long is dropped.
    pub busy_give_up: Duration,
    /// Progress is made durable (fsync + state file) after this many new
    /// bytes; a killed peer re-fetches at most about this much.
    pub persist_every_bytes: u64,
    /// Chunk-list entries asked for per request (holders answer at most
    /// [`CHUNK_LIST_PAGE`]); tests lower it to exercise paging.
    pub chunk_list_page: u32,
    /// Shortest base list worth asking for the new list's summary (a
    /// shorter list is fetched whole: 128 entries are about 6 KB).
    pub summary_min_base: usize,
    /// Shortest chunk worth fetching part by part (a shorter one is
    /// fetched whole).
    pub refine_min_chunk: u32,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            in_flight_per_holder: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(20),
            busy_backoff_max: Duration::from_secs(1),
            busy_give_up: Duration::from_secs(120),
            persist_every_bytes: 8 * 1024 * 1024,
            chunk_list_page: CHUNK_LIST_PAGE,
            summary_min_base: 128,
            refine_min_chunk: 4 * PART_AVG,
        }
    }
}

/// What one holder did for one download.
#[derive(Debug)]
pub struct HolderStats {
    /// The holder.
    pub peer_id: PeerId,
    /// Where it was reached.
    pub addr: SocketAddr,
    /// Chunks accepted from it (verified and written).
    pub chunks: u64,
    /// Bytes accepted from it.
    pub bytes: u64,
    /// `Busy` answers it gave.
    pub busy: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<HolderError>,
}

impl HolderStats {
    pub(super) fn new(holder: &Holder) -> Self {
        HolderStats { peer_id: holder.peer_id, addr: holder.addr, chunks: 0, bytes: 0, busy: 0, dropped: None }
    }
}

/// An established connection to a holder.
pub(crate) type Conn = SecureChannel<TcpStream>;

/// Connects to `holder` and checks it is who the tracker said.
pub(crate) async fn connect(
    holder: &Holder,
    key: &ClusterKey,
    identity: &Identity,
    connect_timeout: Duration,
) -> Result<Conn, HolderError> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(holder.addr))
        .await
        .map_err(|_| HolderError::ConnectTimeout(connect_timeout))?
        .map_err(HolderError::Connect)?;
    let _ = stream.set_nodelay(true);
    let conn = channel::connect(stream, key, identity).await.map_err(HolderError::Channel)?;
    let actual = conn.remote_peer_id();
    if actual != holder.peer_id {
        return Err(HolderError::WrongPeer { actual });
    }
    tracing::debug!(holder = %holder.peer_id, addr = %holder.addr, cipher = ?conn.cipher(), "connected to holder");
    Ok(conn)
}

/// [`connect`] once the holder's handshake gate lets this caller through
/// (see [`Links::connecting`]).
pub(crate) async fn gated_connect(holder: &Holder, ctx: &WorkerCtx) -> Result<Conn, HolderError> {
    let _permit = ctx.links.connecting(holder.peer_id, holder.addr).await;
    connect(holder, &ctx.key, &ctx.identity, ctx.limits.connect_timeout).await
}

/// A kept link to the holder, else a new one once the holder's handshake
/// gate lets this caller through (a link kept while it waited is taken
/// instead). True when the link was kept.
pub(crate) async fn take_or_connect(holder: &Holder, ctx: &WorkerCtx) -> Result<(Reader, Writer, bool), HolderError> {
    let kept = || ctx.links.take(holder.peer_id, holder.addr).map(|(reader, writer)| (reader, writer, true));
    if let Some(link) = kept() {
        return Ok(link);
    }
    let _permit = ctx.links.connecting(holder.peer_id, holder.addr).await;
    if let Some(link) = kept() {
        return Ok(link);
    }
    let (reader, writer) = connect(holder, &ctx.key, &ctx.identity, ctx.limits.connect_timeout).await?.split();
    Ok((reader, writer, false))
}

/// Chunks sharing one hash and length: fetched once, written at every
/// member's offset.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The chunk hash.
    pub hash: ContentHash,
    /// The chunk length.
    pub len: u32,
    /// Indices into the chunk list, in file order.
    pub members: Vec<usize>,
}

/// What the workers of one download share.
#[derive(Debug)]
pub(crate) struct Work {
    /// The `.part`, opened read-write; writes go through `write_all_at`.
    file: Arc<File>,
    chunks: Arc<[ChunkInfo]>,
    groups: Arc<[Group]>,
    /// Identity of the state file.
    header: PartState,
    state_path: PathBuf,
    persist_every_bytes: u64,
    /// parking_lot Mutex: held only for queue and bitmap bookkeeping, never across
    /// an await or an I/O call.
    state: Mutex<WorkState>,
    /// Serialises state-file writes; a writer that finds it taken skips its
    /// turn (the holder will write a newer snapshot anyway).
    persist_lock: Mutex<()>,
    /// Woken when groups are requeued or the last group completes.
    notify: Notify,
    /// The whole-file hash of the prefix written so far (lock order:
    /// this, then `state`).
    prefix: Mutex<PrefixHash>,
    /// Bytes in place, for status.
    pub(crate) progress: Arc<super::DownloadProgress>,
}

#[derive(Debug)]
struct WorkState {
    queue: VecDeque<usize>,
    /// Groups neither done nor abandoned.
    remaining: usize,
    done: Bitmap,
    unsaved_bytes: u64,
    /// Bytes written from a fetched chunk at its duplicate offsets.
    duplicate_bytes: u64,
}

impl Work {
    /// Shares `file` among workers; `missing` lists the groups to fetch;
    /// `header.done` holds the chunks already written.
    pub(crate) fn new(
        file: Arc<File>,
        chunks: Arc<[ChunkInfo]>,
        groups: Arc<[Group]>,
        missing: Vec<usize>,
        header: PartState,
        state_path: PathBuf,
        persist_every_bytes: u64,
    ) -> Self {
        let remaining = missing.len();
        let done = header.done.clone();
        Work {
            file,
            chunks,
            groups,
            header,
            state_path,
            persist_every_bytes: persist_every_bytes.max(1),
            state: Mutex::new(WorkState {
                queue: missing.into(),
                remaining,
                done,
                unsaved_bytes: 0,
                duplicate_bytes: 0,
            }),
            persist_lock: Mutex::new(()),
            notify: Notify::new(),
            prefix: Mutex::new(PrefixHash::new()),
            progress: Arc::default(),
        }
    }

    /// Counts the bytes written into `progress` (status, progress lines).
    pub(crate) fn with_progress(mut self, progress: Arc<super::DownloadProgress>) -> Self {
        self.progress = progress;
        self
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, WorkState> {
        self.state.lock()
    }

    fn take(&self) -> Option<usize> {
        self.lock().queue.pop_front()
    }

    fn has_queued(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// True when every group is done.
    pub(crate) fn finished(&self) -> bool {
        self.lock().remaining == 0
    }

    /// Groups not done yet, and their bytes (each group counted once per
    /// member).
    pub(crate) fn missing(&self) -> (usize, u64) {
        let st = self.lock();
        let mut chunks = 0;
        let mut bytes = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if !st.done.get(i) {
                chunks += 1;
                bytes += u64::from(c.len);
            }
        }
        (chunks, bytes)
    }

    /// The whole-file hasher fed with the file's first bytes, in order,
    /// as their chunks were written, and how many bytes it has hashed
    /// (`finish` reads the rest). Call once every worker has stopped.
    pub(crate) fn take_prefix_hash(&self) -> (blake3::Hasher, u64) {
        std::mem::replace(&mut *self.prefix.lock(), PrefixHash::new()).into_parts(&self.chunks)
    }

    /// Bytes written at duplicate offsets of fetched chunks.
    pub(crate) fn duplicate_bytes(&self) -> u64 {
        self.lock().duplicate_bytes
    }

    /// Puts groups back at the front of the queue, in order, and wakes
    /// waiting workers.
    fn requeue(&self, groups: impl DoubleEndedIterator<Item = usize>) {
        {
            let mut st = self.lock();
            for g in groups.rev() {
                st.queue.push_front(g);
            }
        }
        self.notify.notify_waiters();
    }

    /// Verifies `bytes` against group `g` and writes them at every member's
    /// offset. `Ok(false)` when they do not verify (nothing written).
    /// Blocking.
    fn accept_chunk(&self, g: usize, bytes: &[u8]) -> std::io::Result<bool> {
        let group = &self.groups[g];
        if bytes.len() != group.len as usize || ContentHash::of(bytes) != group.hash {
            return Ok(false);
        }
        for &i in &group.members {
            self.file.write_all_at(bytes, self.chunks[i].offset)?;
        }
        let (finished, due) = {
            let mut st = self.lock();
            if group.members.iter().all(|&i| st.done.get(i)) {
                return Ok(true);
            }
            for &i in &group.members {
                st.done.set(i, true);
            }
            let len = u64::from(group.len);
            st.remaining -= 1;
            st.unsaved_bytes += len * group.members.len() as u64;
            st.duplicate_bytes += len * (group.members.len() as u64 - 1);
            self.progress.add(len * group.members.len() as u64);
            let due = st.unsaved_bytes >= self.persist_every_bytes;
            (st.remaining == 0, due)
        };
        self.prefix.lock().written(&self.file, &self.chunks, |i| self.lock().done.get(i), &group.members, bytes)?;
        if finished {
            self.notify.notify_waiters();
        }
        if due {
            self.persist(false)?;
        }
        Ok(true)
    }

    /// Makes the progress so far durable: `sync_data` the `.part`, then
    /// replace the state file. With `wait == false` it skips when another
    /// worker is persisting right now. Blocking.
    pub(crate) fn persist(&self, wait: bool) -> std::io::Result<()> {
        let _turn = if wait {
            self.persist_lock.lock()
        } else {
            match self.persist_lock.try_lock() {
                Some(turn) => turn,
                None => return Ok(()),
            }
        };
        // Snapshot first: every bit in it belongs to a write that completed
        // before the sync below starts.
        let done = {
            let mut st = self.lock();
            st.unsaved_bytes = 0;
            st.done.clone()
        };
        self.file.sync_data()?;
        save_state(&self.state_path, &PartState { done, ..self.header.clone() })
    }

    /// The done bitmap now.
    pub(crate) fn done(&self) -> Bitmap {
        self.lock().done.clone()
    }
}

/// Settings for workers, shared by all downloads of one downloader.
#[derive(Debug)]
pub(crate) struct WorkerCtx {
    pub key: ClusterKey,
    pub identity: Identity,
    pub limits: DownloadLimits,
    /// Links to holders kept open between downloads.
    pub links: Links,
}

/// Why a worker stopped.
#[derive(Debug)]
pub(crate) enum WorkerEnd {
    /// Nothing left to fetch.
    Finished,
    /// The holder failed and is dropped for this download (the reason is
    /// in [`HolderStats::dropped`]).
    HolderDropped,
    /// The download was cancelled.
    Cancelled,
    /// Writing the local temp file failed: fatal for the download.
    Local(std::io::Error),
}

/// What one worker reports when it stops.
#[derive(Debug)]
pub(crate) struct WorkerReport {
    pub stats: HolderStats,
    pub end: WorkerEnd,
}

/// Why the worker loop stopped early.
#[derive(Debug)]
enum Stop {
    Holder(HolderError),
    Cancelled,
    Local(std::io::Error),
}

/// Fetches groups from one holder until nothing is left, the holder fails
/// or `cancel` fires. `conn` is reused if the chunk list came over it.
pub(crate) async fn run_holder(
    work: Arc<Work>,
    holder: Holder,
    conn: Option<Conn>,
    ctx: Arc<WorkerCtx>,
    cancel: CancellationToken,
) -> WorkerReport {
    let mut worker = HolderWorker {
        work,
        inflight: VecDeque::new(),
        stats: HolderStats::new(&holder),
        addr: holder.addr,
        busy_streak: 0,
    };
    let end = worker.run_inner(&holder, conn, &ctx, &cancel).await;
    if !worker.inflight.is_empty() {
        let lost: Vec<usize> = worker.inflight.drain(..).collect();
        worker.work.requeue(lost.into_iter());
    }
    let peer = holder.peer_id.fmt_short();
    match &end {
        Ok(()) => tracing::debug!(
            %peer, addr = %holder.addr, chunks = worker.stats.chunks, bytes = worker.stats.bytes,
            busy = worker.stats.busy, "holder done"
        ),
        Err(Stop::Holder(e)) if e.is_lie() => tracing::warn!(
            %peer, addr = %holder.addr, error = %e, "holder dropped: it sent bad data"
        ),
        Err(Stop::Holder(e)) => tracing::debug!(
            %peer, addr = %holder.addr, error = %e, chunks = worker.stats.chunks, "holder dropped"
        ),
        Err(Stop::Cancelled) => tracing::debug!(%peer, "holder worker cancelled"),
        Err(Stop::Local(e)) => tracing::debug!(%peer, error = %e, "holder worker stopped: local write failed"),
    }
    let mut stats = worker.stats;
    let end = match end {
        Ok(()) => WorkerEnd::Finished,
        Err(Stop::Holder(e)) => {
            stats.dropped = Some(e);
            WorkerEnd::HolderDropped
        }
        Err(Stop::Cancelled) => WorkerEnd::Cancelled,
        Err(Stop::Local(e)) => WorkerEnd::Local(e),
    };
    WorkerReport { stats, end }
}

struct HolderWorker {
    work: Arc<Work>,
    /// Groups requested and not answered yet, in request order.
    inflight: VecDeque<usize>,
    stats: HolderStats,
    addr: SocketAddr,
    busy_streak: u32,
}

impl HolderWorker {
    async fn run_inner(
        &mut self,
        holder: &Holder,
        conn: Option<Conn>,
        ctx: &WorkerCtx,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        if self.work.finished() {
            if let Some(conn) = conn {
                let (reader, writer) = conn.split();
                ctx.links.put(holder.peer_id, holder.addr, reader, writer);
            }
            return Ok(());
        }
        let (mut reader, mut writer, pooled) = match conn {
            Some(conn) => {
                let (reader, writer) = conn.split();
                (reader, writer, false)
            }
            None => self.take_or_connect(holder, ctx, cancel).await?,
        };
        tracing::debug!(peer = %holder.peer_id.fmt_short(), addr = %self.addr, pooled, "holder connected");
        let mut result = self.pipeline(&mut reader, &mut writer, &ctx.limits, cancel).await;
        if pooled && self.stats.chunks == 0 && matches!(&result, Err(Stop::Holder(e)) if !e.is_lie()) {
            // The holder closed the idle link meanwhile: once more, fresh.
            tracing::debug!(peer = %holder.peer_id.fmt_short(), "kept link was closed; reconnecting");
            let lost: Vec<usize> = self.inflight.drain(..).collect();
            self.work.requeue(lost.into_iter());
            (reader, writer) = self.connect(holder, ctx, cancel).await?;
            result = self.pipeline(&mut reader, &mut writer, &ctx.limits, cancel).await;
        }
        if result.is_ok() && self.inflight.is_empty() {
            ctx.links.put(holder.peer_id, holder.addr, reader, writer);
        }
        result
    }

    /// [`take_or_connect`], unless `cancel` fires first.
    async fn take_or_connect(
        &self,
        holder: &Holder,
        ctx: &WorkerCtx,
        cancel: &CancellationToken,
    ) -> Result<(Reader, Writer, bool), Stop> {
        tokio::select! {
            () = cancel.cancelled() => Err(Stop::Cancelled),
            link = take_or_connect(holder, ctx) => link.map_err(Stop::Holder),
        }
    }

    /// A new link to the holder, through its handshake gate.
    async fn connect(
        &self,
        holder: &Holder,
        ctx: &WorkerCtx,
        cancel: &CancellationToken,
    ) -> Result<(Reader, Writer), Stop> {
        tokio::select! {
            () = cancel.cancelled() => Err(Stop::Cancelled),
            c = gated_connect(holder, ctx) => Ok(c.map_err(Stop::Holder)?.split()),
        }
    }

    async fn pipeline(
        &mut self,
        reader: &mut Reader,
        writer: &mut Writer,
        limits: &DownloadLimits,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let depth = limits.in_flight_per_holder.max(1);
        let mut paused_until: Option<Instant> = None;
        let mut last_progress = Instant::now();
        loop {
            if paused_until.is_some_and(|t| Instant::now() >= t) {
                paused_until = None;
            }
            if paused_until.is_none() {
                while self.inflight.len() < depth {
                    let Some(g) = self.work.take() else { break };
                    self.inflight.push_back(g);
                    self.send_request(writer, g).await?;
                }
            }
            if self.inflight.is_empty() {
                let notified = self.work.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.work.finished() {
                    return Ok(());
                }
                if paused_until.is_none() && self.work.has_queued() {
                    continue;
                }
                let until = paused_until.unwrap_or_else(Instant::now);
                tokio::select! {
                    () = cancel.cancelled() => return Err(Stop::Cancelled),
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(until), if paused_until.is_some() => {}
                }
                continue;
            }
            let received = tokio::select! {
                () = cancel.cancelled() => return Err(Stop::Cancelled),
                r = tokio::time::timeout(limits.request_timeout, reader.recv::<P2pResponse>()) => r,
            };
            let response = match received {
                Err(_) => return Err(Stop::Holder(HolderError::Timeout(limits.request_timeout))),
                Ok(Err(e)) => return Err(Stop::Holder(HolderError::Channel(e))),
                Ok(Ok(None)) => return Err(Stop::Holder(HolderError::Closed)),
                Ok(Ok(Some(response))) => response,
            };
            response.validate().map_err(|e| Stop::Holder(HolderError::Protocol(e)))?;
            let g = *self.inflight.front().expect("a response is awaited only with a request in flight");
            match response {
                P2pResponse::Chunk { hash, bytes } => {
                    let group = &self.work.groups[g];
                    if hash != group.hash {
                        return Err(Stop::Holder(HolderError::Unexpected("a chunk other than the one requested")));
                    }
                    let len = bytes.len() as u64;
                    let work = self.work.clone();
                    let accepted = tokio::task::spawn_blocking(move || work.accept_chunk(g, &bytes))
                        .await
                        .map_err(|e| Stop::Local(std::io::Error::other(e)))?
                        .map_err(Stop::Local)?;
                    if !accepted {
                        let offset = self.work.chunks[group.members[0]].offset;
                        return Err(Stop::Holder(HolderError::HashMismatch { offset }));
                    }
                    self.inflight.pop_front();
                    self.stats.chunks += 1;
                    self.stats.bytes += len;
                    self.busy_streak = 0;
                    last_progress = Instant::now();
                }
                P2pResponse::Busy => {
                    self.inflight.pop_front();
                    self.work.requeue(std::iter::once(g));
                    self.stats.busy += 1;
                    if last_progress.elapsed() >= limits.busy_give_up {
                        return Err(Stop::Holder(HolderError::BusyTooLong(limits.busy_give_up)));
                    }
                    let backoff = limits
                        .busy_backoff
                        .saturating_mul(1 << self.busy_streak.min(16))
                        .min(limits.busy_backoff_max.max(limits.busy_backoff));
                    self.busy_streak += 1;
                    paused_until = Some(Instant::now() + backoff);
                }
                P2pResponse::NotAvailable => return Err(Stop::Holder(HolderError::NotAvailable)),
                P2pResponse::ChunkList(_) | P2pResponse::ChunkListSummary(_) | P2pResponse::ChunkParts { .. } => {
                    return Err(Stop::Holder(HolderError::Unexpected("a chunk list or part list instead of a chunk")));
                }
            }
        }
    }

    async fn send_request(&mut self, writer: &mut Writer, g: usize) -> Result<(), Stop> {
        let group = &self.work.groups[g];
        let first = self.work.chunks[group.members[0]];
        let request = P2pRequest::GetChunk {
            content: self.work.header.content,
            offset: first.offset,
            len: group.len,
            hash: group.hash,
        };
        writer.send(&request).await.map_err(|e| Stop::Holder(HolderError::Channel(e)))
    }
}
