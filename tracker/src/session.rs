//! One task per peer connection: handshake, `Register`, then messages in
//! and delta pages out, until the peer leaves, breaks the protocol, or the
//! actor closes the session.
//!
//! # Protocol checks
//! - The Noise handshake (cluster key, protocol version) must succeed.
//! - The first message must be `Register`, within [`REGISTER_TIMEOUT`], and
//!   its `peer_id` must be the id proven by the handshake key.
//! - Every later message must decode (`RelPath` rejects hostile paths while
//!   decoding, the channel rejects oversized frames before allocating) and
//!   pass `PeerMessage::validate`; a second `Register` is a breach.
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
//! pages whenever the committed seq moves. A peer that does not read cannot
//! stop us from reading its keep-alives, and a peer that stops sending is
//! expired by the actor, which cancels the token.
//!
//! Not here: any table rule (`state`), ordering of changes (`actor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::channel::{self, ChannelError, ChannelReader, ChannelWriter, HANDSHAKE_TIMEOUT};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::MAX_REASON_LEN;
use dartsync_shared::proto::ProtocolError;
use dartsync_shared::proto::ptp::{PeerMessage, TrackerMessage, Welcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::actor::{ActorHandle, LeaveReason};

/// How long a connected peer may take to send `Register`.
pub(crate) const REGISTER_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;

/// How long we try to deliver a `Refused` or a clean close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl SessionError {
    /// The reason to send in `Refused`, when the channel can still carry it.
    fn refusal(&self) -> Option<String> {
        match self {
            SessionError::Channel(ChannelError::Codec(_)) | SessionError::Invalid(_) | SessionError::Protocol(_) => {
                Some(self.to_string())
            }
            SessionError::NoRegister(_) => Some(self.to_string()),
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
}

/// Serves one accepted connection to the end.
pub(crate) async fn run(stream: TcpStream, remote: SocketAddr, session: u64, ctx: Arc<SessionCtx>) {
    let _ = stream.set_nodelay(true);
    let channel = match channel::accept(stream, &ctx.key, &ctx.identity).await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::warn!("dropping connection from {remote}: {e}");
            return;
        }
    };
    let peer = channel.remote_peer_id();
    let (mut reader, mut writer) = channel.split();
    match serve(&mut reader, &mut writer, peer, remote, session, &ctx).await {
        Ok(End::Cancelled) => {}
        Ok(End::Goodbye) => ctx.actor.left(peer, session, LeaveReason::Goodbye).await,
        Ok(End::Closed) => ctx.actor.left(peer, session, LeaveReason::Closed).await,
        Err(e) => {
            tracing::warn!("dropping peer {peer} from {remote}: {e}");
            if let Some(reason) = e.refusal() {
                refuse(&mut writer, reason).await;
            }
            ctx.actor.left(peer, session, LeaveReason::Dropped).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
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
    let first = tokio::time::timeout(REGISTER_TIMEOUT, reader.recv::<PeerMessage>())
        .await
        .map_err(|_| SessionError::NoRegister(REGISTER_TIMEOUT))??;
    let register = match first {
        None => return Ok(End::Closed),
        Some(PeerMessage::Register(register)) => register,
        Some(_) => return Err(SessionError::Protocol("the first message must be Register")),
    };
    if register.peer_id != peer {
        return Err(SessionError::Protocol("Register names another peer id than the handshake key proves"));
    }
    let addr = SocketAddr::new(remote.ip(), register.listen_port);
    let token = ctx.shutdown.child_token();
    let Some(welcome) = ctx.actor.register(peer, addr, session, register.seen_seq, register.epoch, token.clone()).await
    else {
        return Ok(End::Cancelled);
    };
    tokio::select! {
        biased;
        () = token.cancelled() => Ok(End::Cancelled),
        end = read_loop(reader, peer, session, &ctx.actor) => end,
        end = write_loop(writer, welcome, peer, session, &ctx.actor) => end,
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut ChannelReader<R>,
    peer: PeerId,
    session: u64,
    actor: &ActorHandle,
) -> Result<End, SessionError> {
    loop {
        let Some(msg) = reader.recv::<PeerMessage>().await? else {
            return Ok(End::Closed);
        };
        msg.validate()?;
        match msg {
            PeerMessage::Register(_) => return Err(SessionError::Protocol("a second Register")),
            PeerMessage::Goodbye => return Ok(End::Goodbye),
            msg => {
                if !actor.message(peer, session, msg).await {
                    return Ok(End::Cancelled);
                }
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: &mut ChannelWriter<W>,
    welcome: Welcome,
    peer: PeerId,
    session: u64,
    actor: &ActorHandle,
) -> Result<End, SessionError> {
    let mut committed = actor.subscribe();
    writer.send(&TrackerMessage::Welcome(welcome)).await?;
    loop {
        committed.borrow_and_update();
        loop {
            let Some(page) = actor.next_page(peer, session).await else {
                return Ok(End::Cancelled);
            };
            if let Some(delta) = page.delta {
                writer.send(&TrackerMessage::Delta(delta)).await?;
            }
            if !page.more {
                break;
            }
        }
        if committed.changed().await.is_err() {
            return Ok(End::Cancelled);
        }
    }
}
