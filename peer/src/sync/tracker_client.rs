//! The tracker client: one long-lived PTP session with the tracker,
//! re-established with backoff whenever it drops.
//!
//! On every (re)connection it registers with the last `seq` and `epoch` it
//! received, then sends the peer's whole local summary (so a restarted
//! tracker rebuilds who holds what), then streams incremental
//! announcements and `Have`s from the engine and `KeepAlive`s every
//! interval. Deltas and connection changes go to the engine as
//! [`TrackerEvent`]s.
//!
//! While the tracker is away, commands are dropped rather than queued: the
//! summary sent on the next registration carries the same information
//! (every local record, including what was downloaded). Nothing is lost,
//! and memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::backoff::Backoff;
use dartsync_shared::channel::{self, ChannelError};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::MAX_RECORDS_PER_MESSAGE;
use dartsync_shared::proto::ProtocolError;
use dartsync_shared::proto::ptp::{Delta, PeerMessage, Register, TrackerMessage, Welcome};
use dartsync_shared::{FileRecord, RelPath, VersionVector};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long to wait for TCP connect, and for `Welcome` after `Register`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deltas buffered for the engine before the client stops reading.
const MAX_PENDING_DELTAS: usize = 4;
/// First and largest pause between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Why one session with the tracker ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The tracker address did not resolve.
    #[error("cannot resolve tracker address {addr}: {source}")]
    Resolve {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TCP connect failed or timed out.
    #[error("cannot connect to tracker {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The secure channel failed (handshake, framing, decryption).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The tracker sent an invalid or unexpected message.
    #[error("tracker broke the protocol: {0}")]
    Protocol(String),
    /// The tracker refused the session.
    #[error("tracker refused us: {0}")]
    Refused(String),
    /// The tracker closed the connection.
    #[error("tracker closed the connection")]
    Closed,
    /// Reading the local summary failed.
    #[error("cannot read the local summary: {0}")]
    Summary(String),
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// What the client tells the engine.
#[derive(Debug)]
pub enum TrackerEvent {
    /// A session was established.
    Connected(Welcome),
    /// Changes of the global table.
    Delta(Delta),
    /// The session ended; the client is reconnecting.
    Disconnected(String),
}

/// What the engine asks the client to send.
#[derive(Debug, Clone)]
pub enum ClientCommand {
    /// Local changes.
    Announce(Vec<FileRecord>),
    /// A finished download (or an applied deletion/folder).
    Have {
        /// The path.
        path: RelPath,
        /// The version now held.
        version: VersionVector,
    },
}

/// Produces the whole local summary (blocking; run on a blocking thread).
pub type SummaryFn = Arc<dyn Fn() -> Result<Vec<FileRecord>, String> + Send + Sync>;

/// Settings of the client.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of the tracker.
    pub tracker_addr: String,
    /// Our piece server's port.
    pub listen_port: u16,
    /// The cluster key.
    pub key: ClusterKey,
    /// Our identity.
    pub identity: Identity,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("tracker_addr", &self.tracker_addr)
            .field("listen_port", &self.listen_port)
            .finish_non_exhaustive()
    }
}

/// Handle to the running client.
#[derive(Debug, Clone)]
pub struct TrackerClient {
    commands: mpsc::Sender<ClientCommand>,
}

impl TrackerClient {
    /// Starts the client task. Events arrive on `events`; the task ends when
    /// `shutdown` is cancelled (after a `Goodbye` if connected).
    pub fn spawn(
        cfg: ClientConfig,
        summary: SummaryFn,
        events: mpsc::Sender<TrackerEvent>,
        shutdown: CancellationToken,
    ) -> (TrackerClient, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(run(cfg, summary, events, rx, shutdown));
        (TrackerClient { commands: tx }, task)
    }

    /// Queues a command; waits if the queue is full (backpressure).
    pub async fn send(&self, cmd: ClientCommand) {
        // The client only stops at shutdown; a failed send then is harmless.
        let _ = self.commands.send(cmd).await;
    }
}

/// Asks the tracker for its `Welcome` (keep-alive interval, piece length)
/// and leaves at once. Used on a folder's first start, so it is chunked
/// with the cluster's piece length from the beginning.
pub async fn probe_welcome(cfg: &ClientConfig) -> Result<Welcome, ClientError> {
    let (mut reader, mut writer) = open(cfg).await?;
    writer
        .send(&PeerMessage::Register(Register {
            peer_id: cfg.identity.peer_id(),
            listen_port: cfg.listen_port,
            seen_seq: 0,
            epoch: 0,
        }))
        .await?;
    let welcome = read_welcome(&mut reader).await;
    let _ = writer.send(&PeerMessage::Goodbye).await;
    let _ = writer.shutdown().await;
    welcome
}

type Reader = dartsync_shared::channel::ChannelReader<tokio::io::ReadHalf<TcpStream>>;
type Writer = dartsync_shared::channel::ChannelWriter<tokio::io::WriteHalf<TcpStream>>;

/// Resolves, connects and runs the handshake.
async fn open(cfg: &ClientConfig) -> Result<(Reader, Writer), ClientError> {
    let addr = tokio::net::lookup_host(&cfg.tracker_addr)
        .await
        .map_err(|source| ClientError::Resolve { addr: cfg.tracker_addr.clone(), source })?
        .next()
        .ok_or_else(|| ClientError::Resolve {
            addr: cfg.tracker_addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connect {
            addr: cfg.tracker_addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| ClientError::Connect { addr: cfg.tracker_addr.clone(), source })?;
    let _ = stream.set_nodelay(true);
    Ok(channel::connect(stream, &cfg.key, &cfg.identity).await?.split())
}

/// Waits for the tracker's answer to `Register`.
async fn read_welcome(reader: &mut Reader) -> Result<Welcome, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, reader.recv::<TrackerMessage>()).await {
        Err(_) => Err(ClientError::Protocol("no Welcome within 5 s".into())),
        Ok(msg) => {
            let msg = msg?.ok_or(ClientError::Closed)?;
            msg.validate()?;
            match msg {
                TrackerMessage::Welcome(w) => Ok(w),
                TrackerMessage::Refused { reason } => Err(ClientError::Refused(reason)),
                other => Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
            }
        }
    }
}

/// Where the peer is in the tracker's history.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    seen_seq: u64,
    epoch: u64,
}

async fn run(
    cfg: ClientConfig,
    summary: SummaryFn,
    events: mpsc::Sender<TrackerEvent>,
    mut commands: mpsc::Receiver<ClientCommand>,
    shutdown: CancellationToken,
) {
    let mut progress = Progress::default();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut last_error = String::new();
    loop {
        let mut welcomed = false;
        // The session first: on shutdown a connected session says Goodbye
        // itself; one still connecting is dropped.
        let result = tokio::select! {
            biased;
            r = session(&cfg, &summary, &events, &mut commands, &mut progress, &mut welcomed, &shutdown) => r,
            _ = shutdown.cancelled() => return,
        };
        let msg = match result {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        // Log a repeated failure once, not on every retry.
        if msg != last_error {
            tracing::warn!("tracker session ended: {msg}; reconnecting");
            last_error = msg.clone();
        }
        if events.send(TrackerEvent::Disconnected(msg)).await.is_err() {
            return;
        }
        // A session that got as far as Welcome starts the backoff afresh.
        if welcomed {
            backoff.reset();
        }
        // Drop commands while disconnected: what they say is already in the
        // index, and the next session's summary (read after this pause)
        // carries it.
        let pause = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut pause => break,
                cmd = commands.recv() => if cmd.is_none() { return },
            }
        }
    }
}

async fn session(
    cfg: &ClientConfig,
    summary: &SummaryFn,
    events: &mpsc::Sender<TrackerEvent>,
    commands: &mut mpsc::Receiver<ClientCommand>,
    progress: &mut Progress,
    welcomed: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let (mut reader, mut writer) = open(cfg).await?;
    writer
        .send(&PeerMessage::Register(Register {
            peer_id: cfg.identity.peer_id(),
            listen_port: cfg.listen_port,
            seen_seq: progress.seen_seq,
            epoch: progress.epoch,
        }))
        .await?;
    let welcome = read_welcome(&mut reader).await?;
    if welcome.epoch != progress.epoch {
        // A new tracker history: everything will be resent.
        progress.seen_seq = 0;
        progress.epoch = welcome.epoch;
    }
    *welcomed = true;
    tracing::info!(epoch = welcome.epoch, seq = welcome.seq, "registered with tracker {}", cfg.tracker_addr);
    let interval = Duration::from_millis(welcome.interval_ms);
    if events.send(TrackerEvent::Connected(welcome)).await.is_err() {
        return Ok(());
    }

    // The whole local summary, so the tracker knows what we hold.
    let make_summary = summary.clone();
    let records = tokio::task::spawn_blocking(move || make_summary())
        .await
        .map_err(|e| ClientError::Summary(e.to_string()))?
        .map_err(ClientError::Summary)?;
    for batch in records.chunks(MAX_RECORDS_PER_MESSAGE) {
        writer.send(&PeerMessage::Announce { records: batch.to_vec() }).await?;
    }
    tracing::debug!(records = records.len(), "sent local summary");

    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Deltas received but not yet taken by the engine. The loop never
    // blocks on the engine (which may itself be waiting to hand us a
    // command): it stops reading from the tracker instead, so TCP pushes
    // back, while keep-alives and commands keep flowing.
    let mut pending: std::collections::VecDeque<Delta> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = writer.send(&PeerMessage::Goodbye).await;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            _ = keepalive.tick() => writer.send(&PeerMessage::KeepAlive).await?,
            permit = events.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(TrackerEvent::Delta(pending.pop_front().expect("pending is not empty"))),
                Err(_) => return Ok(()),
            },
            cmd = commands.recv() => match cmd {
                Some(ClientCommand::Announce(records)) => {
                    for batch in records.chunks(MAX_RECORDS_PER_MESSAGE) {
                        writer.send(&PeerMessage::Announce { records: batch.to_vec() }).await?;
                    }
                }
                Some(ClientCommand::Have { path, version }) => {
                    writer.send(&PeerMessage::Have { path, version }).await?;
                }
                None => return Ok(()),
            },
            msg = reader.recv::<TrackerMessage>(), if pending.len() < MAX_PENDING_DELTAS => {
                let msg = msg?.ok_or(ClientError::Closed)?;
                msg.validate()?;
                match msg {
                    TrackerMessage::Delta(delta) => {
                        if delta.epoch != progress.epoch {
                            return Err(ClientError::Protocol("delta from another epoch".into()));
                        }
                        progress.seen_seq = progress.seen_seq.max(delta.to_seq);
                        pending.push_back(delta);
                    }
                    TrackerMessage::Refused { reason } => return Err(ClientError::Refused(reason)),
                    TrackerMessage::Welcome(_) => return Err(ClientError::Protocol("unexpected Welcome".into())),
                }
            }
        }
    }
}
