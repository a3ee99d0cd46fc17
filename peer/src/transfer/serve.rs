//! The piece server: answers other peers' requests (P2P protocol,
//! [`dartsync_shared::proto::p2p`]: chunk-list pages and summaries, chunks,
//! the parts of a chunk and single parts) from local content.
//!
//! # Shape
//! [`serve`] runs an accept loop (cancel token first, then reaping finished
//! connections, then the periodic summary of refused connections, then the
//! pre-authentication waiting room, then `accept`), one task per
//! connection in a `JoinSet`. A connection first needs a place in the
//! pre-authentication pool ([`dartsync_shared::preauth`]: at most
//! [`PREAUTH_TOTAL`] connections in the handshake, [`PREAUTH_PER_SOURCE`]
//! per source address, idle ones displaceable); without one it waits a few
//! tens of milliseconds for its first bytes, without a task, or is closed,
//! with no handshake. With one, it runs the Noise handshake
//! ([`PreAuthLimiter::handshake`]: first message within 2 s, all of it
//! within 10 s), gives the place back, and only then takes one of the
//! [`MAX_CONNECTIONS`] authenticated slots (closed at once if none is
//! free), so connections without the cluster key never crowd out peers.
//! Then a reader and a writer run side by side: the reader validates each
//! request and starts its disk work on the blocking pool at once; the
//! writer awaits those results **in request order** and sends them, so a
//! client may pipeline several requests while several disk reads run
//! concurrently. At most [`PIPELINE_DEPTH`] answers wait per connection;
//! beyond that the reader stops reading (TCP backpressure).
//!
//! # Admitted peers only
//! After the handshake (the cluster key) and an authenticated slot, the
//! [`PeerGate`] decides: a peer the tracker lists as admitted is served; a
//! revoked one is closed at once; one not listed yet gets
//! [`ADMISSION_GRACE`] for a device list that admits it (a peer started a
//! moment ago, or admitted a moment ago), then is closed. Each refused
//! peer is logged once. A connection whose peer is revoked while it is
//! open is closed at its next request.
//!
//! # Upload slots
//! Every request, of whatever kind, needs one slot of its
//! requesting [`PeerId`] (shared by all connections of that peer) and one
//! of the server's total; a request that finds either full is answered
//! `Busy` at once, never queued (the brief's BUSY/READY). A slot is held
//! from the request until its answer is about to be written, so a client
//! that keeps at most `slots_per_peer` requests in flight never sees `Busy`
//! from its own requests. (A chunk-list page is a whole-list lookup plus
//! up to 3 MiB of answer, and a chunk's parts a chunk read and cut: as
//! costly as a chunk, so they are bounded the same way.)
//!
//! # Invariants
//! - Only verified bytes leave: a chunk is read from each candidate the
//!   [`ChunkSource`] names, or from the downloader's partial file
//!   `<content>.part` in `tmp_dir`, and sent only if it hashes to the
//!   requested hash, or if it was read from an indexed file that shows the
//!   stamp (size, mtime, inode) the index recorded with the chunk, before
//!   and after the read ([`read_served`]: the scanner's own test for "not
//!   changed"; the receiver hashes every chunk anyway). A part is read at
//!   its place inside such a candidate and checked the same way; a chunk's
//!   parts are cut from bytes that were hashed. A file changed since
//!   indexing answers `NotAvailable`, never wrong bytes. (The hidden `corrupt_for_tests` switch breaks this on
//!   purpose, after verification, so downloaders can be tested against a
//!   liar.)
//! - Nothing under `.dartsync/` is reachable by name: requests carry hashes,
//!   the only path built from a request is `tmp_dir/<64 hex>.part`.
//! - A request that fails [`P2pRequest::validate`] or a malformed frame
//!   ends that connection only, with one warn line. A failed handshake
//!   ends it too, counted and logged at most once per source per minute
//!   plus a summary (never a line per connection).
//!
//! # Not here
//! No knowledge of records, the tracker or the index's freshness: the
//! [`ChunkSource`] decides what may be a candidate.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::backoff::Backoff;
use dartsync_shared::channel::{ChannelError, ChannelWriter, SecureChannel};
use dartsync_shared::chunk::parts::cut_parts;
use dartsync_shared::chunk::summary::summarize;
use dartsync_shared::codec::CodecError;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::preauth::{self, PreAuthConfig, PreAuthLimiter, PreAuthPermit};
use dartsync_shared::proto::ProtocolError;
use dartsync_shared::proto::p2p::{ChunkListPage, P2pRequest, P2pResponse};
use dartsync_shared::{ChunkInfo, ContentHash, PeerId};
use parking_lot::Mutex;
use tokio::io::WriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::transfer::chunk_source::{Candidate, ChunkSource, read_at_verified, read_served, read_verified};
use crate::transfer::gate::{ADMISSION_GRACE, Admission, PeerGate};
use crate::transfer::part::part_path;

/// Most authenticated connections served at once; more are closed right
/// after their handshake.
pub const MAX_CONNECTIONS: usize = 256;

/// Most connections in the handshake at once, from all sources.
pub const PREAUTH_TOTAL: usize = preauth::DEFAULT_TOTAL;

/// Most connections in the handshake at once from one source address.
pub const PREAUTH_PER_SOURCE: usize = preauth::DEFAULT_PER_SOURCE;

/// Most answers queued per connection before the server stops reading it.
pub const PIPELINE_DEPTH: usize = 16;

/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Accept errors (out of file descriptors, say) back off from this...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// ...up to this, and never give up: the condition is usually temporary.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Piece server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Concurrent requests (`GetChunk`, `GetChunkList`) served to one peer
    /// (all its connections together); more are answered `Busy`.
    pub slots_per_peer: usize,
    /// Concurrent requests (`GetChunk`, `GetChunkList`) served in total;
    /// more are answered `Busy`.
    pub slots_total: usize,
    /// Test-only: flip one byte of every chunk sent (after verification),
    /// to test downloaders against a lying holder. Never set in production.
    pub corrupt_for_tests: bool,
    /// The downloader's temp folder (`.dartsync/tmp`): chunks of
    /// `<content>.part` files there may be served too.
    pub tmp_dir: PathBuf,
    /// Whom to serve: the devices the tracker lists as admitted
    /// ([`PeerGate::open`] serves every holder of the cluster key).
    pub gate: PeerGate,
}

/// Why the piece server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process listens on the address already.
    #[error(
        "cannot listen for peers on {addr}: the address is already in use — pick another port with --listen, \
         or leave --listen out for a free one"
    )]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
}

/// Binds the piece server's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::AddrInUse { addr },
        _ => ServeError::Bind { addr, source },
    })
}

/// Serves peers on `listener` until `shutdown` is cancelled. Failing
/// accepts back off (the shared [`Backoff`] policy) and never end the
/// server; every per-connection problem ends that connection alone.
pub async fn serve(
    listener: TcpListener,
    key: ClusterKey,
    identity: Identity,
    source: Arc<dyn ChunkSource>,
    cfg: ServeConfig,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    tracing::debug!(addr = %local, slots_per_peer = cfg.slots_per_peer, slots_total = cfg.slots_total, "piece server listening");
    if cfg.corrupt_for_tests {
        tracing::warn!("piece server corrupts every chunk it sends (test mode)");
    }
    let ctx = Arc::new(Ctx {
        key,
        identity,
        source,
        total: Arc::new(Semaphore::new(cfg.slots_total.max(1))),
        per_peer: Mutex::new(HashMap::new()),
        refused_logged: Mutex::new(HashSet::new()),
        buffers: Buffers::default(),
        cfg,
    });
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let preauth = PreAuthLimiter::new(
        "piece server",
        PreAuthConfig { total: PREAUTH_TOTAL, per_source: PREAUTH_PER_SOURCE, ..PreAuthConfig::default() },
    );
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + preauth::REPORT_EVERY, preauth::REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    loop {
        let sweep_at = preauth.next_sweep().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            _ = report.tick() => preauth.report(),
            () = tokio::time::sleep_until(sweep_at.unwrap_or_else(tokio::time::Instant::now)), if sweep_at.is_some() => {
                for (stream, addr, place) in preauth.sweep() {
                    spawn_connection(&mut tasks, &ctx, &preauth, &connections, stream, addr, place);
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    backoff.reset();
                    // Beyond the pre-authentication pool: waiting for its
                    // first bytes, or closed at once.
                    if let Some((stream, place)) = preauth.admit(stream, addr) {
                        spawn_connection(&mut tasks, &ctx, &preauth, &connections, stream, addr, place);
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    // One line when the trouble starts, then one per doubling.
                    if backoff.attempts().is_power_of_two() {
                        tracing::warn!(%error, failures = backoff.attempts(), retry_in = ?delay, "piece server cannot accept connections");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            },
        }
    }
    tasks.shutdown().await;
    tracing::debug!(addr = %local, "piece server stopped");
}

/// Spawns the task of a connection admitted to the handshake: the
/// handshake, then an authenticated slot, then the requests.
fn spawn_connection(
    tasks: &mut JoinSet<()>,
    ctx: &Arc<Ctx>,
    preauth: &PreAuthLimiter,
    connections: &Arc<Semaphore>,
    stream: TcpStream,
    addr: SocketAddr,
    place: PreAuthPermit,
) {
    let (ctx, preauth, connections) = (ctx.clone(), preauth.clone(), connections.clone());
    let span = tracing::debug_span!("p2p", %addr);
    tasks.spawn(
        async move {
            // Latency matters more than packet count for pipelined small
            // answers.
            let _ = stream.set_nodelay(true);
            // Failures are counted and logged by the limiter.
            let Ok(channel) = preauth.handshake(place, stream, &ctx.key, &ctx.identity).await else {
                return;
            };
            let Ok(permit) = connections.try_acquire_owned() else {
                tracing::debug!("too many peer connections; closing a new one");
                return;
            };
            let peer = channel.remote_peer_id();
            match ctx.cfg.gate.check(peer, ADMISSION_GRACE).await {
                Admission::Admitted => {}
                refused => {
                    ctx.refused(peer, refused);
                    return;
                }
            }
            connection(channel, ctx).await;
            drop(permit);
        }
        .instrument(span),
    );
}

/// State shared by every connection.
struct Ctx {
    key: ClusterKey,
    identity: Identity,
    source: Arc<dyn ChunkSource>,
    cfg: ServeConfig,
    /// Upload slots in total.
    total: Arc<Semaphore>,
    /// Upload slots per peer, with the number of open connections of that
    /// peer so the entry goes away with its last connection (the map stays
    /// bounded by [`MAX_CONNECTIONS`]). std Mutex: held for a lookup only.
    per_peer: Mutex<HashMap<PeerId, PeerSlots>>,
    /// Peers already logged as refused by the gate (at most
    /// [`MAX_REFUSED_LOGGED`]; then it starts over).
    refused_logged: Mutex<HashSet<PeerId>>,
    /// Read buffers of chunks already sent, for the next reads.
    buffers: Buffers,
}

/// Chunk buffers kept for reuse at most...
const POOLED_BUFFERS: usize = 8;
/// ...each of at most this capacity (the longest chunk at the default
/// piece length; a longer one is freed after use).
const POOLED_BUFFER_MAX: usize = 4 * dartsync_shared::limits::DEFAULT_PIECE_LEN as usize;

/// The read buffers of chunks that were sent, given to the next reads: a
/// chunk read into a fresh allocation paid its page faults (the kernel
/// zeroing each page) about as much as the copy itself. Bounded by
/// [`POOLED_BUFFERS`] × [`POOLED_BUFFER_MAX`].
#[derive(Default)]
struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Buffers {
    /// A buffer to read a chunk into (empty, maybe with room).
    fn take(&self) -> Vec<u8> {
        self.free.lock().pop().unwrap_or_default()
    }

    /// Keeps `buf` for a later read, if there is room.
    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() > POOLED_BUFFER_MAX {
            return;
        }
        let mut free = self.free.lock();
        if free.len() < POOLED_BUFFERS {
            buf.clear();
            free.push(buf);
        }
    }
}

/// Refused peers remembered so each is logged once.
const MAX_REFUSED_LOGGED: usize = 1024;

struct PeerSlots {
    connections: usize,
    slots: Arc<Semaphore>,
}

impl Ctx {
    /// Logs a connection the gate refused, once per peer.
    fn refused(&self, peer: PeerId, why: Admission) {
        let mut logged = self.refused_logged.lock();
        if logged.len() >= MAX_REFUSED_LOGGED {
            logged.clear();
        }
        let first = logged.insert(peer);
        let why = match why {
            Admission::Revoked => "the tracker revoked it",
            _ => "the tracker does not list it as admitted",
        };
        if first {
            tracing::warn!("refusing chunks to peer {}: {why}", peer.fmt_short());
        } else {
            tracing::debug!("refusing chunks to peer {}: {why}", peer.fmt_short());
        }
    }

    /// Registers a connection of `peer` and returns its slot semaphore plus
    /// a guard that unregisters it.
    fn register(self: &Arc<Self>, peer: PeerId) -> PeerGuard {
        let mut map = self.per_peer.lock();
        let entry = map.entry(peer).or_insert_with(|| PeerSlots {
            connections: 0,
            slots: Arc::new(Semaphore::new(self.cfg.slots_per_peer.max(1))),
        });
        entry.connections += 1;
        PeerGuard { ctx: self.clone(), peer, slots: entry.slots.clone() }
    }

    /// One upload slot of the requesting peer (`slots`) and one of the
    /// total, or `None` if either is full.
    fn take_slots(&self, slots: &Arc<Semaphore>) -> Option<Slots> {
        let mine = slots.clone().try_acquire_owned().ok()?;
        let all = self.total.clone().try_acquire_owned().ok()?;
        Some(Slots { _mine: mine, _all: all })
    }

    /// Starts the work for one request (every kind takes an upload slot
    /// and runs on the blocking pool); the result is awaited in order by
    /// the writer.
    fn start(&self, request: P2pRequest, slots: &Arc<Semaphore>) -> Pending {
        let Some(held) = self.take_slots(slots) else {
            return Pending::Ready(P2pResponse::Busy);
        };
        let (source, tmp_dir, corrupt) = (self.source.clone(), self.cfg.tmp_dir.clone(), self.cfg.corrupt_for_tests);
        let buf = match request {
            P2pRequest::GetChunk { .. } | P2pRequest::GetPart { .. } => self.buffers.take(),
            _ => Vec::new(),
        };
        let job = tokio::task::spawn_blocking(move || answer(source.as_ref(), &tmp_dir, request, corrupt, buf));
        Pending::Work { job, slots: held }
    }
}

/// The answer to one validated request, from local content; a chunk or a
/// part is read into `buf`. Blocking.
fn answer(
    source: &dyn ChunkSource,
    tmp_dir: &std::path::Path,
    request: P2pRequest,
    corrupt: bool,
    buf: Vec<u8>,
) -> P2pResponse {
    match request {
        P2pRequest::GetChunkList { content, first, max, .. } => source
            .chunk_list(&content)
            .and_then(|chunks| ChunkListPage::of(content, &chunks, first, max))
            .map_or(P2pResponse::NotAvailable, P2pResponse::ChunkList),
        P2pRequest::GetChunk { content, offset, len, hash } => {
            let chunk = ChunkInfo { offset, len, hash };
            read_range(source, &part_path(tmp_dir, &content), &chunk, 0, len, &hash, Check::Served { corrupt, buf })
        }
        P2pRequest::GetChunkListSummary { content, .. } => source
            .chunk_list(&content)
            .and_then(|chunks| summarize(content, &chunks))
            .map_or(P2pResponse::NotAvailable, P2pResponse::ChunkListSummary),
        P2pRequest::GetChunkParts { content, chunk } => {
            let part = part_path(tmp_dir, &content);
            // The parts' hashes are computed from these bytes: hashed.
            match read_range(source, &part, &chunk, 0, chunk.len, &chunk.hash, Check::Hashed) {
                P2pResponse::Chunk { hash, bytes } => P2pResponse::ChunkParts { hash, parts: cut_parts(&bytes) },
                other => other,
            }
        }
        P2pRequest::GetPart { content, chunk, at, len, hash } => {
            read_range(source, &part_path(tmp_dir, &content), &chunk, at, len, &hash, Check::Served { corrupt, buf })
        }
    }
}

/// How [`read_range`] vouches for the bytes it returns.
#[derive(Debug)]
enum Check {
    /// Bytes sent as they are (a chunk, a part), read into `buf`: hashed,
    /// or vouched for by an index stamp that still holds
    /// ([`read_served`]); the receiver hashes them again. `corrupt`: the
    /// `corrupt_for_tests` switch.
    Served { corrupt: bool, buf: Vec<u8> },
    /// Bytes something else is computed from (a chunk's parts): always
    /// hashed.
    Hashed,
}

/// Drops a connection's registration in the per-peer slot map.
struct PeerGuard {
    ctx: Arc<Ctx>,
    peer: PeerId,
    slots: Arc<Semaphore>,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut map = self.ctx.per_peer.lock();
        if let Some(entry) = map.get_mut(&self.peer) {
            entry.connections -= 1;
            if entry.connections == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// The upload slots one request holds: its peer's and the total's.
struct Slots {
    _mine: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

/// One answer in the making.
enum Pending {
    /// Known at once (`Busy`).
    Ready(P2pResponse),
    /// Disk work on the blocking pool, with the upload slots it holds.
    Work { job: JoinHandle<P2pResponse>, slots: Slots },
}

impl Pending {
    /// Waits for the answer and releases the slots before it is sent.
    async fn finish(self) -> P2pResponse {
        match self {
            Pending::Ready(response) => response,
            Pending::Work { job, slots } => {
                let response = job.await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "chunk read task failed");
                    P2pResponse::NotAvailable
                });
                drop(slots);
                response
            }
        }
    }
}

/// `len` bytes at `at` inside `chunk` (a whole chunk: `at` 0 and the
/// chunk's length; a part: a range the request validation kept inside the
/// chunk), read where the chunk may be read (each candidate the
/// [`ChunkSource`] names, else the downloader's `.part`) and returned only
/// if they hash to `hash` (or, as `check` allows, an index stamp vouches
/// for them).
fn read_range(
    source: &dyn ChunkSource,
    part: &std::path::Path,
    chunk: &ChunkInfo,
    at: u32,
    len: u32,
    hash: &ContentHash,
    check: Check,
) -> P2pResponse {
    let at = u64::from(at);
    let candidates: Vec<_> =
        source.locate(&chunk.hash, chunk.len).into_iter().map(|c| Candidate { offset: c.offset + at, ..c }).collect();
    let (found, corrupt) = match check {
        Check::Served { corrupt, mut buf } => {
            (read_served(source, &candidates, len, hash, &mut buf).then_some(buf), corrupt)
        }
        Check::Hashed => (read_verified(source, &candidates, len, hash), false),
    };
    let found = found.or_else(|| read_at_verified(part, chunk.offset.saturating_add(at), len, hash).ok().flatten());
    match found {
        Some(mut bytes) => {
            if corrupt && let Some(first) = bytes.first_mut() {
                *first ^= 0xFF;
            }
            P2pResponse::Chunk { hash: *hash, bytes }
        }
        None => P2pResponse::NotAvailable,
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("bad request stream: {0}")]
    Channel(ChannelError),
    #[error("invalid request: {0}")]
    Invalid(ProtocolError),
    #[error("cannot send an answer: {0}")]
    Send(ChannelError),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("the tracker revoked this peer")]
    Revoked,
}

/// What a connection did, for its closing debug line.
#[derive(Debug, Default)]
struct Served {
    chunks: u64,
    bytes: u64,
    busy: u64,
    not_available: u64,
}

async fn connection(channel: SecureChannel<TcpStream>, ctx: Arc<Ctx>) {
    match connection_inner(channel, ctx).await {
        Ok((peer, served)) => tracing::debug!(
            peer = %peer.fmt_short(),
            chunks = served.chunks,
            bytes = served.bytes,
            busy = served.busy,
            not_available = served.not_available,
            "peer connection closed"
        ),
        Err(ConnError::Idle(after)) => tracing::debug!(?after, "idle peer connection closed"),
        Err(ConnError::Send(e)) => tracing::debug!(error = %e, "peer went away"),
        Err(e) => tracing::warn!(error = %e, "dropping peer connection"),
    }
}

async fn connection_inner(channel: SecureChannel<TcpStream>, ctx: Arc<Ctx>) -> Result<(PeerId, Served), ConnError> {
    let peer = channel.remote_peer_id();
    tracing::debug!(peer = %peer.fmt_short(), "peer connected");
    let guard = ctx.register(peer);
    let (mut reader, mut writer) = channel.split();
    let (tx, mut rx) = mpsc::channel::<Pending>(PIPELINE_DEPTH);
    // Ends the reader when the writer fails (the client went away).
    let writer_failed = CancellationToken::new();

    let read_side = {
        let ctx = ctx.clone();
        let writer_failed = writer_failed.clone();
        async move {
            loop {
                let received = tokio::select! {
                    () = writer_failed.cancelled() => return Ok(()),
                    r = tokio::time::timeout(IDLE_TIMEOUT, reader.recv::<P2pRequest>()) => r,
                };
                let request = match received {
                    Err(_) => return Err(ConnError::Idle(IDLE_TIMEOUT)),
                    Ok(Err(e)) => return Err(ConnError::Channel(e)),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(request))) => request,
                };
                request.validate().map_err(ConnError::Invalid)?;
                // Revoked while connected: not one more answer.
                if ctx.cfg.gate.is_revoked(peer) {
                    return Err(ConnError::Revoked);
                }
                let pending = ctx.start(request, &guard.slots);
                if tx.send(pending).await.is_err() {
                    return Ok(());
                }
            }
        }
    };

    let write_side = async move {
        let result = write_answers(&mut writer, &mut rx, &ctx.buffers).await;
        if result.is_err() {
            writer_failed.cancel();
        } else {
            let _ = writer.shutdown().await;
        }
        result
    };

    let (read, write) = tokio::join!(read_side, write_side);
    // The reader's verdict (garbage, idle) is the interesting one; the
    // writer drained what was already accepted before the close.
    read?;
    Ok((peer, write?))
}

/// Sends the answers in request order until the reader side is done.
async fn write_answers(
    writer: &mut ChannelWriter<WriteHalf<TcpStream>>,
    rx: &mut mpsc::Receiver<Pending>,
    buffers: &Buffers,
) -> Result<Served, ConnError> {
    let mut served = Served::default();
    while let Some(pending) = rx.recv().await {
        let response = pending.finish().await;
        match &response {
            P2pResponse::Chunk { bytes, .. } => {
                served.chunks += 1;
                served.bytes += bytes.len() as u64;
            }
            P2pResponse::Busy => served.busy += 1,
            P2pResponse::NotAvailable => served.not_available += 1,
            P2pResponse::ChunkList(_) | P2pResponse::ChunkListSummary(_) | P2pResponse::ChunkParts { .. } => {}
        }
        let sent = match &response {
            // The chunk's bytes go from the read buffer straight into the
            // Noise messages, not through an encoded copy of the frame.
            P2pResponse::Chunk { hash, bytes } => match P2pResponse::chunk_head(*hash, bytes.len()) {
                Ok(head) => writer.send_frame_parts(&[&head, bytes]).await,
                Err(e) => Err(ChannelError::Codec(e)),
            },
            _ => writer.send(&response).await,
        };
        if let P2pResponse::Chunk { bytes, .. } = response {
            buffers.give(bytes);
        }
        match sent {
            Ok(()) => {}
            // A chunk list too large for one frame: nothing was written.
            Err(ChannelError::Codec(CodecError::Oversized { .. })) => {
                writer.send(&P2pResponse::NotAvailable).await.map_err(ConnError::Send)?;
            }
            Err(e) => return Err(ConnError::Send(e)),
        }
    }
    Ok(served)
}
