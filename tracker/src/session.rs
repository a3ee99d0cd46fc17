//! One task per authenticated connection (the accept loop, `server`, runs
//! the Noise handshake): `Register`, then messages in and delta pages out,
//! until the peer leaves, breaks the protocol, or the actor closes the
//! session.
//!
//! # Protocol checks
//! - The first message must be `Register`, within [`REGISTER_TIMEOUT`], and
//!   its `peer_id` must be the id proven by the handshake key.
//! - Every later message must decode (`RelPath` rejects hostile paths while
//!   decoding, the channel rejects oversized frames before allocating) and
//!   pass `PeerMessage::validate`; a second `Register` is a breach.
//!
//! # Memory
//! No frame is buffered beyond the bound of the message it can be: the
//! first frame is read with [`MAX_REGISTER_FRAME`] (38 bytes), every later
//! one with [`MAX_BATCH_BYTES`]; a longer length prefix drops the peer
//! before any of its body is read. A frame above [`MAX_CONTROL_FRAME`] (an
//! `Announce` batch; every other message fits below) must first take one of
//! [`BATCH_SLOTS`] tracker-wide slots, and keeps it until the actor has
//! applied the batch; until then the session reads nothing more (TCP
//! pushes back on the peer). A slot held by a peer that stalls mid-frame is
//! freed when the actor expires the peer (3 keep-alive intervals without a
//! message). So every session costs at most one small frame, and all of
//! them together at most `BATCH_SLOTS` batches; the formula is in
//! ARCHITECTURE.md. The channel's buffers, grown by a large page or batch,
//! are given back once the session has caught up (the write buffer, all
//! of it: the next page allocates its own) or handled the message (the
//! read buffers, above [`IDLE_BUFFER_BYTES`]). Tracker channels seal
//! frames in [`TRACKER_PIECE_LEN`](dartsync_shared::channel::TRACKER_PIECE_LEN)
//! (16 KiB) Noise messages both ways, so a session that waits for a batch
//! slot or a slow reader holds one piece, not a 64 KiB message: 1,000 idle
//! sessions that each kept the two pieces of their last page would still
//! hold about 32 MiB.
//! Each message is handed to the actor and applied before the next is
//! read, and a batch refused by a bound (record quota, full table) drops
//! the peer with the actor's reason.
//!
//! Any failure drops this connection only, with one `warn` line naming the
//! peer (or its address before the handshake) and the reason, and a
//! best-effort `Refused { reason }` when the channel is still usable. A bad
//! message never reaches the actor, so the table is unchanged.
//!
//! # Concurrency
//! After `Register` the read half and the write half run in one `select!`
//! together with the session's cancellation token: the reader forwards
//! messages to the actor, the writer sends `Welcome` and then pulls delta
//! pages whenever the committed seq moves. After an interval with nothing
//! to send it still asks the actor and sends a heartbeat (an empty delta
//! repeating the last seq sent), so a peer notices a hung tracker or actor
//! by silence alone. The actor's answer to a `Sources` goes from the
//! reader to the writer over a small queue ([`ANSWERS_WAITING`]; the
//! writer sends answers between pages); a full queue drops the answer, so
//! the reader never waits on the writer. A peer that does not read cannot
//! stop us from reading its keep-alives, and a peer that stops sending is
//! expired by the actor, which cancels the token.
//!
//! # Admission
//! A device the actor holds for approval gets `Pending` and its session
//! waits (`wait_for_admission`): `Pending` again every interval, only
//! `KeepAlive` (and `Goodbye`) accepted from the peer, each frame read with
//! [`MAX_CONTROL_FRAME`], dropped after three silent intervals; when the
//! operator admits it the `Welcome` arrives and the session goes on as
//! after any registration. A revoked device (at `Register`, or when the
//! actor closes its session for a revocation) is sent `Revoked` before the
//! close.
//!
//! Not here: any table rule (`state`), ordering of changes (`actor`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::channel::{
    ChannelError, ChannelReader, ChannelWriter, HANDSHAKE_TIMEOUT, SecureChannel, TRACKER_PIECE_LEN,
};
use dartsync_shared::codec::CodecError;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::{MAX_BATCH_BYTES, MAX_CONTROL_FRAME, MAX_REASON_LEN, MAX_REGISTER_FRAME};
use dartsync_shared::proto::ProtocolError;
use dartsync_shared::proto::ptp::{Delta, PeerMessage, TrackerMessage, Welcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::actor::{ActorHandle, DeviceList, Heard, LeaveReason, Link, RegisterReply, Verdict};
use crate::invite::Invites;
use crate::memory::Churn;
use crate::state::Page;

/// Read buffer a session keeps between messages: any message but the
/// smallest grows the channel's read buffers to its Noise message (up to
/// 64 KiB; 26 KiB a session in the load tool's run with 1,000 peers), and
/// a session keeps them only while it reads a burst (see "Memory").
const IDLE_BUFFER_BYTES: usize = 1024;

/// How long a connected peer may take to send `Register`.
pub(crate) const REGISTER_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;

/// How long we try to deliver a `Refused` or a clean close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers (to `Sources`) waiting for the writer at most; a peer that
/// asks faster than it reads loses the answers past these (it asks again
/// after its next failed download), and the reader never waits on the
/// writer.
const ANSWERS_WAITING: usize = 16;

/// The answers the reader hands the writer, oldest first. Empty, it holds
/// no heap: most sessions never ask (a channel allocated its first block
/// with each session, 0.6 KB with 1,000 sessions online).
#[derive(Default)]
struct Answers {
    queue: std::sync::Mutex<VecDeque<Box<TrackerMessage>>>,
    ready: Notify,
}

impl Answers {
    /// Queues `answer` for the writer; false (dropped) when
    /// [`ANSWERS_WAITING`] wait already.
    fn push(&self, answer: Box<TrackerMessage>) -> bool {
        let mut queue = self.queue.lock().expect("answers lock");
        if queue.len() >= ANSWERS_WAITING {
            return false;
        }
        queue.push_back(answer);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// The oldest answer waiting; the queue's buffer goes back once empty.
    fn pop(&self) -> Option<Box<TrackerMessage>> {
        let mut queue = self.queue.lock().expect("answers lock");
        let answer = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        answer
    }
}

/// Frames above [`MAX_CONTROL_FRAME`] being received or applied at once,
/// tracker-wide (see the module header).
pub(crate) const BATCH_SLOTS: usize = 4;

/// What every session needs.
#[derive(Debug)]
pub(crate) struct SessionCtx {
    /// The cluster key (Noise PSK).
    pub key: ClusterKey,
    /// The tracker's static identity.
    pub identity: Identity,
    /// The state actor.
    pub actor: ActorHandle,
    /// Cancelled when the tracker stops.
    pub shutdown: CancellationToken,
    /// [`BATCH_SLOTS`] permits, one per large frame in flight.
    pub batch_slots: Arc<Semaphore>,
    /// The open invites (`dartsync join` connections).
    pub invites: Arc<Invites>,
    /// Bytes paged out and batches taken in (see `memory`).
    pub churn: Churn,
}

/// Why a session dropped its peer.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("invalid message: {0}")]
    Invalid(#[from] ProtocolError),
    #[error("protocol breach: {0}")]
    Protocol(&'static str),
    #[error("no Register within {0:?}")]
    NoRegister(Duration),
    #[error("the first message must be Register (at most {MAX_REGISTER_FRAME} bytes): {0}")]
    FirstFrame(CodecError),
    #[error("{0}")]
    Refused(String),
    #[error("silent for {0:?} while waiting for approval")]
    Silent(Duration),
}

impl SessionError {
    /// The reason to send in `Refused`, when the channel can still carry it.
    fn refusal(&self) -> Option<String> {
        match self {
            SessionError::Channel(ChannelError::Codec(_)) | SessionError::Invalid(_) | SessionError::Protocol(_) => {
                Some(self.to_string())
            }
            SessionError::NoRegister(_) | SessionError::FirstFrame(_) | SessionError::Refused(_) => {
                Some(self.to_string())
            }
            SessionError::Silent(_) => None,
            SessionError::Channel(_) => None,
        }
    }
}

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer said `Goodbye`.
    Goodbye,
    /// The peer closed the connection between frames.
    Closed,
    /// The actor closed the session (expiry, replacement, shutdown).
    Cancelled,
    /// A probe got its `Welcome`; it never joined the peer table.
    Probe,
    /// The device is revoked (at `Register`, or the actor closed its
    /// session for it): it is told so before the close.
    Revoked,
}

/// How waiting for approval ended.
enum Waited {
    /// Admitted: carry on with this `Welcome`.
    Admitted(Welcome),
    /// The session ends.
    End(End),
}

/// A pending device silent for this many keep-alive intervals is dropped.
const PENDING_SILENT_INTERVALS: u32 = 3;

/// Serves one authenticated connection to the end (the handshake is the
/// accept loop's, `server`, under its pre-authentication limits).
pub(crate) async fn run(channel: SecureChannel<TcpStream>, remote: SocketAddr, session: u64, ctx: Arc<SessionCtx>) {
    let peer = channel.remote_peer_id();
    let (mut reader, mut writer) = channel.split();
    writer.set_piece_len(TRACKER_PIECE_LEN);
    let mut refused = false;
    match serve(&mut reader, &mut writer, peer, remote, session, &ctx).await {
        Ok(End::Cancelled) => {}
        Ok(End::Revoked) => {
            tracing::info!("told revoked device {} from {remote} it is revoked; closing", peer.fmt_short());
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.send(&TrackerMessage::Revoked)).await;
        }
        Ok(End::Probe) => tracing::debug!("answered a piece-length probe from {remote}"),
        Ok(End::Goodbye) => ctx.actor.left(peer, session, LeaveReason::Goodbye).await,
        Ok(End::Closed) => ctx.actor.left(peer, session, LeaveReason::Closed).await,
        Err(e) => {
            tracing::warn!("dropping peer {} from {remote}: {e}", peer.fmt_short());
            if let Some(reason) = e.refusal() {
                refuse(&mut writer, reason).await;
                refused = true;
            }
            ctx.actor.left(peer, session, LeaveReason::Dropped).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
    if refused {
        // A peer that pipelines (its whole summary in batches) has sent more
        // than we read: read it away until the peer closes, so the close is
        // clean and the reason is not lost to a reset.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, reader.drain()).await;
    }
}

/// Sends `Refused { reason }` if the peer reads it in time.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(writer: &mut ChannelWriter<W>, mut reason: String) {
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.send(&TrackerMessage::Refused { reason })).await;
}

async fn serve<R, W>(
    reader: &mut ChannelReader<R>,
    writer: &mut ChannelWriter<W>,
    peer: PeerId,
    remote: SocketAddr,
    session: u64,
    ctx: &SessionCtx,
) -> Result<End, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(REGISTER_TIMEOUT, reader.recv_bounded::<PeerMessage>(MAX_REGISTER_FRAME))
        .await
        .map_err(|_| SessionError::NoRegister(REGISTER_TIMEOUT))?
        .map_err(|e| match e {
            ChannelError::Codec(e) => SessionError::FirstFrame(e),
            e => SessionError::Channel(e),
        })?;
    let register = match first {
        None => return Ok(End::Closed),
        Some(PeerMessage::Register(register)) => register,
        Some(_) => return Err(SessionError::Protocol("the first message must be Register")),
    };
    if register.peer_id != peer {
        return Err(SessionError::Protocol("Register names another peer id than the handshake key proves"));
    }
    if !register.name.is_empty() && dartsync_shared::device::check_device_name(&register.name).is_err() {
        return Err(SessionError::Protocol("invalid device name in Register"));
    }
    if register.probe {
        return match ctx.actor.probe(peer).await {
            None => Ok(End::Cancelled),
            Some(None) => Ok(End::Revoked),
            Some(Some(welcome)) => {
                writer.send(&TrackerMessage::Welcome(welcome)).await?;
                Ok(End::Probe)
            }
        };
    }
    let addr = SocketAddr::new(remote.ip(), register.listen_port);
    let token = ctx.shutdown.child_token();
    let revoked = Arc::new(AtomicBool::new(false));
    let heard = Heard::default();
    let link = Link { token: token.clone(), revoked: revoked.clone(), heard: heard.clone() };
    // Where this peer stands: what a heartbeat may claim it has seen.
    let (seen_seq, seen_epoch) = (register.seen_seq, register.epoch);
    let registered = ctx.actor.register(peer, addr, session, register.seen_seq, register.epoch, register.name, link);
    let welcome = match registered.await {
        None => return Ok(End::Cancelled),
        Some(RegisterReply::Welcome(welcome)) => welcome,
        Some(RegisterReply::Revoked) => return Ok(End::Revoked),
        Some(RegisterReply::Refused(reason)) => return Err(SessionError::Refused(reason)),
        Some(RegisterReply::Pending { interval_ms, admitted }) => {
            match wait_for_admission(reader, writer, interval_ms, admitted, &token, &revoked).await? {
                Waited::Admitted(welcome) => welcome,
                Waited::End(end) => return Ok(end),
            }
        }
    };
    let closed = |revoked: &AtomicBool| if revoked.load(Ordering::Acquire) { End::Revoked } else { End::Cancelled };
    let answers = Answers::default();
    tokio::select! {
        biased;
        () = token.cancelled() => Ok(closed(&revoked)),
        end = read_loop(reader, peer, session, ctx, &heard, &answers) => end,
        end = write_loop(writer, welcome, (seen_seq, seen_epoch), peer, session, ctx, &answers) => end,
    }
}

/// A pending device's session until an operator admits it: `Pending`
/// now and every interval, the peer's `KeepAlive`s read (nothing else is
/// allowed), nothing else sent. Ends with the `Welcome` when admitted, or
/// when the peer leaves, goes silent, or the actor closes the session.
async fn wait_for_admission<R, W>(
    reader: &mut ChannelReader<R>,
    writer: &mut ChannelWriter<W>,
    interval_ms: u64,
    mut admitted: tokio::sync::oneshot::Receiver<Welcome>,
    token: &CancellationToken,
    revoked: &AtomicBool,
) -> Result<Waited, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let interval = Duration::from_millis(interval_ms.max(1));
    let silence = interval.saturating_mul(PENDING_SILENT_INTERVALS).max(REGISTER_TIMEOUT);
    writer.send(&TrackerMessage::Pending { interval_ms }).await?;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silent = tokio::time::sleep(silence);
    tokio::pin!(silent);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => {
                let end = if revoked.load(Ordering::Acquire) { End::Revoked } else { End::Cancelled };
                return Ok(Waited::End(end));
            }
            welcome = &mut admitted => {
                return Ok(match welcome {
                    Ok(welcome) => Waited::Admitted(welcome),
                    Err(_) => Waited::End(End::Cancelled),
                });
            }
            () = &mut silent => return Err(SessionError::Silent(silence)),
            _ = tick.tick() => writer.send(&TrackerMessage::Pending { interval_ms }).await?,
            // `recv_bounded` is cancel-safe: a frame half read stays in the reader.
            msg = reader.recv_bounded::<PeerMessage>(MAX_CONTROL_FRAME) => match msg? {
                None => return Ok(Waited::End(End::Closed)),
                Some(PeerMessage::KeepAlive) => silent.as_mut().reset(tokio::time::Instant::now() + silence),
                Some(PeerMessage::Goodbye) => return Ok(Waited::End(End::Goodbye)),
                Some(_) => return Err(SessionError::Protocol("only KeepAlive is allowed while waiting for approval")),
            },
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut ChannelReader<R>,
    peer: PeerId,
    session: u64,
    ctx: &SessionCtx,
    heard: &Heard,
    answers: &Answers,
) -> Result<End, SessionError> {
    loop {
        let Some(len) = reader.peek_frame_len().await? else {
            return Ok(End::Closed);
        };
        heard.now();
        // A batch waits for a slot before its body is read; one too long
        // for any message fails in `recv_bounded` before it is read either.
        let slot = if (MAX_CONTROL_FRAME + 1..=MAX_BATCH_BYTES).contains(&len) {
            // Waiting for a slot is the tracker's delay, not the peer's
            // silence (1,000 peers announcing at once wait their turn
            // longer than the expiry window); once it has one, the peer
            // must send the body in time again.
            heard.in_flight();
            let slot = ctx.batch_slots.clone().acquire_owned().await;
            heard.now();
            match slot {
                Ok(slot) => Some(slot),
                Err(_) => return Ok(End::Cancelled),
            }
        } else {
            None
        };
        let Some(msg) = reader.recv_bounded::<PeerMessage>(MAX_BATCH_BYTES).await? else {
            return Ok(End::Closed);
        };
        if slot.is_some() {
            ctx.churn.add(len);
        }
        msg.validate()?;
        match msg {
            PeerMessage::Register(_) => return Err(SessionError::Protocol("a second Register")),
            PeerMessage::Goodbye => return Ok(End::Goodbye),
            msg => {
                heard.in_flight();
                let verdict = ctx.actor.message(peer, session, msg, slot).await;
                heard.now();
                if reader.buffer_capacity() > IDLE_BUFFER_BYTES {
                    reader.release_buffers();
                }
                match verdict {
                    Some(Verdict::Continue) => {}
                    Some(Verdict::Answer(answer)) => {
                        if !answers.push(answer) {
                            tracing::debug!(%peer, "a sources answer dropped: the peer is not reading");
                        }
                    }
                    Some(Verdict::Refuse(reason)) => return Err(SessionError::Refused(reason)),
                    None => return Ok(End::Cancelled),
                }
            }
        }
    }
}

/// Sends one page: its delta frame, if it has one (counted as churn, and
/// its `to_seq` noted in `last_to`), then its notices. Returns whether more
/// pages are waiting.
async fn send_page<W: AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    page: Page,
    last_to: &mut u64,
    churn: &Churn,
) -> Result<bool, SessionError> {
    if let Some(delta) = page.delta {
        *last_to = delta.to_seq;
        // Encoded by the actor: a peer that reads slowly holds only the
        // bytes being sent.
        let frame = delta.frame.map_err(ChannelError::from)?;
        churn.add(frame.len());
        writer.send_frame(frame.into()).await?;
    }
    for notice in page.notices {
        writer.send(&TrackerMessage::Conflict(notice)).await?;
    }
    for notice in page.brake {
        writer.send(&TrackerMessage::Brake(notice)).await?;
    }
    Ok(page.more)
}

/// Sends the device list (encoded once by the actor), counted as churn:
/// with 1,000 peers it is about 100 KB, sealed into each session's buffer.
async fn send_devices<W: AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    list: &DeviceList,
    churn: &Churn,
) -> Result<(), SessionError> {
    if let Some(frame) = list.frame.clone() {
        churn.add(frame.len());
        writer.send_frame(frame).await?;
    }
    Ok(())
}

/// What woke an idle writer.
enum Woke {
    /// The committed seq moved: pages may be waiting.
    Committed,
    /// The device list changed.
    Devices,
    /// Answers for the peer are waiting.
    Answers,
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    welcome: Welcome,
    seen: (u64, u64),
    peer: PeerId,
    session: u64,
    ctx: &SessionCtx,
    answers: &Answers,
) -> Result<End, SessionError> {
    let actor = &ctx.actor;
    let mut committed = actor.subscribe();
    let mut devices = actor.subscribe_devices();
    let interval = Duration::from_millis(welcome.interval_ms.max(1));
    let epoch = welcome.epoch;
    // The last seq this peer has been sent (a heartbeat repeats it, so it
    // never claims the peer saw more than it got).
    let (seen_seq, seen_epoch) = seen;
    let mut last_to = if seen_epoch == epoch { seen_seq } else { 0 };
    writer.send(&TrackerMessage::Welcome(welcome)).await?;
    let list = devices.borrow_and_update().clone();
    send_devices(writer, &list, &ctx.churn).await?;
    loop {
        committed.borrow_and_update();
        loop {
            let Some(page) = actor.next_page(peer, session).await else {
                return Ok(End::Cancelled);
            };
            let more = send_page(writer, page, &mut last_to, &ctx.churn).await?;
            // Answers go between pages, not behind a long backlog.
            while let Some(answer) = answers.pop() {
                writer.send(&answer).await?;
            }
            if !more {
                break;
            }
        }
        // Caught up: the buffer the pages grew goes back.
        if writer.buffer_capacity() > 0 {
            writer.release_buffers();
        }
        let woke = tokio::time::timeout(interval, async {
            tokio::select! {
                changed = committed.changed() => changed.map(|()| Woke::Committed),
                changed = devices.changed() => changed.map(|()| Woke::Devices),
                () = answers.ready.notified() => Ok(Woke::Answers),
            }
        });
        match woke.await {
            Ok(Ok(Woke::Committed)) => {}
            Ok(Ok(Woke::Devices)) => {
                let list = devices.borrow_and_update().clone();
                send_devices(writer, &list, &ctx.churn).await?;
            }
            Ok(Ok(Woke::Answers)) => {
                while let Some(answer) = answers.pop() {
                    writer.send(&answer).await?;
                }
            }
            Ok(Err(_)) => return Ok(End::Cancelled),
            // Quiet for an interval: a heartbeat, after asking the actor
            // (a hung actor sends none, and the peer notices the silence).
            Err(_) => {
                let Some(page) = actor.next_page(peer, session).await else {
                    return Ok(End::Cancelled);
                };
                if page.delta.is_none() {
                    let empty = Delta { epoch, from_seq: last_to, to_seq: last_to, full: false, entries: Vec::new() };
                    writer.send(&TrackerMessage::Delta(empty)).await?;
                }
                send_page(writer, page, &mut last_to, &ctx.churn).await?;
                // The rest of a long backlog follows at once (the loop's top).
            }
        }
    }
}
