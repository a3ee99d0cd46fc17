//! The tracker client: one long-lived PTP session with the tracker,
//! re-established with backoff whenever it drops.
//!
//! On every (re)connection it registers with the last `seq` and `epoch` it
//! received, then sends the peer's whole local summary (so a restarted
//! tracker rebuilds who holds what), then streams incremental
//! announcements, `Have`s and `Sources` questions from the engine and
//! `KeepAlive`s every interval. Deltas, answers and connection changes go
//! to the engine as [`TrackerEvent`]s.
//!
//! While the tracker is away, commands are dropped rather than queued: the
//! summary sent on the next registration carries the same information
//! (every local record, including what was downloaded). Nothing is lost,
//! and memory stays bounded.
//!
//! # Whom we talk to
//! Every session, and the first start's [`probe_welcome`], checks the
//! tracker's static key (proven by the Noise handshake) against the pin in
//! `.dartsync/tracker.pin` ([`super::tracker_pin`]) before sending it
//! anything; the first tracker that answers `Register` with a `Welcome` is
//! pinned. A different tracker is refused and retried with backoff like
//! any other failure: the peer does not exit, so an impostor or a stray
//! tracker on the address cannot take it down, and it reconnects by itself
//! once the trusted tracker is back.
//!
//! # Admission
//! A tracker holding this device for approval answers `Register` with
//! `Pending`: the client warns once (and `dartsync status` says so),
//! answers each `Pending` with `KeepAlive` and waits on the same
//! connection for the `Welcome` that follows `dartsync tracker admit`;
//! then the session proceeds as usual. `Revoked` (at `Register` or
//! mid-session) is logged as an error, shown in status, and the client
//! asks again only every [`REVOKED_PAUSE`]. Every device list the tracker
//! pushes also goes to the piece server's [`PeerGate`], so this peer serves
//! chunks only to devices the tracker lists as admitted.
//!
//! # A silent tracker
//! The tracker answers `Register` and pushes deltas, but sends nothing to
//! an idle peer, and a stopped tracker process still has its kernel
//! acknowledge our keep-alives. So a session with no frame for
//! [`silence_limit`] (3 keep-alive intervals, at least 3 s) runs a liveness
//! check: a second connection whose handshake the tracker answers (its
//! accept loop and runtime are alive), closed without registering, so the
//! session is not disturbed. If nothing answers within [`liveness_limit`],
//! the session ends with "tracker silent for N s" and the client
//! reconnects. Any frame cancels a check. A tracker that sends a frame at
//! least once per interval is never checked this way.
//!
//! # A tracker found on the LAN
//! Without `--tracker-addr` the config carries a [`Locator`]: the client
//! starts from the remembered address (or looks on the LAN first when
//! there is none), remembers an address once a tracker there answered
//! `Register`, and after [`REDISCOVER_AFTER`] failed attempts in a row to
//! reach it (unreachable or silent) looks on the LAN again for up to
//! [`REDISCOVER_WAIT`] (a Pi with a new DHCP lease) before retrying. Several
//! trackers of the cluster on the LAN end the client with an error asking
//! for `--tracker-addr`.
//!
//! # Failures in the log
//! A failure is classified ([`Trouble`]: unreachable, wrong cluster key,
//! not a tracker, no answer, untrusted tracker, refused, session lost) and
//! its message carries the hint to fix it. The same kind of failure in a
//! row is logged at once, then again after 10 s, 1 min, 5 min and every
//! 15 min ([`RepeatLog`]), with the count of failed attempts; a change of
//! kind is logged at once. Each attempt is a `debug` line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::backoff::Backoff;
use dartsync_shared::channel::{self, ChannelError, HANDSHAKE_TIMEOUT};
use dartsync_shared::device::DeviceState;
use dartsync_shared::id::PublicKey;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::ptp::{
    BrakeNotice, ConflictNotice, Delta, DeviceInfo, Holder, PeerMessage, PeerReport, Register, TrackerMessage, Welcome,
    announce_batches,
};
use dartsync_shared::proto::{PROTOCOL_VERSION, ProtocolError};
use dartsync_shared::{FileRecord, RelPath, VersionVector};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::locate::Locator;
use super::tracker_pin::{PinError, TrackerPin, Trust};
use crate::status::StatusBoard;
use crate::transfer::PeerGate;

/// How long to wait for TCP connect, and for `Welcome` after `Register`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deltas buffered for the engine before the client stops reading.
const MAX_PENDING_DELTAS: usize = 4;
/// First and largest pause between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Pause after the tracker refused us outright (`Refused`): what it
/// refused is what the next session would send again.
const REFUSED_PAUSE: Duration = Duration::from_secs(300);
/// Pause after the tracker said this device is revoked: only its operator
/// can change that, so ask again rarely (a restart asks at once).
const REVOKED_PAUSE: Duration = Duration::from_secs(900);
/// Keep-alive intervals without a frame before the tracker is checked.
const SILENT_INTERVALS: u32 = 3;
/// The silence limit is never shorter than this.
const MIN_SILENCE: Duration = Duration::from_secs(3);
/// The liveness check may take at least this long.
const MIN_LIVENESS: Duration = Duration::from_secs(3);
/// Failed attempts in a row to reach a tracker found on the LAN before
/// the LAN is asked again.
const REDISCOVER_AFTER: u32 = 3;
/// How long one such search may take before the client retries the
/// address it has.
const REDISCOVER_WAIT: Duration = Duration::from_secs(30);
/// A session that lasted this long ends a streak of failures in the log.
const STABLE_SESSION: Duration = Duration::from_secs(60);
/// Pauses between log lines about one kind of failure that goes on: the
/// last one repeats.
const RELOG_GAPS: [Duration; 4] =
    [Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(900)];

/// How long a session may go without a frame from the tracker before it
/// is checked: [`SILENT_INTERVALS`] keep-alive intervals, at least
/// [`MIN_SILENCE`].
pub(crate) fn silence_limit(interval: Duration) -> Duration {
    interval.saturating_mul(SILENT_INTERVALS).max(MIN_SILENCE)
}

/// How long the liveness check of a silent tracker may take: one interval,
/// within [`MIN_LIVENESS`] and the handshake's own deadline.
pub(crate) fn liveness_limit(interval: Duration) -> Duration {
    interval.clamp(MIN_LIVENESS, HANDSHAKE_TIMEOUT)
}

/// Why one session with the tracker ended (or never began).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Looking for the tracker on the LAN failed (several trackers, or no
    /// mDNS).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The tracker address did not resolve.
    #[error("cannot resolve the tracker address {addr} ({source}) — is --tracker-addr right?")]
    Resolve {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TCP connect failed or timed out.
    #[error("no tracker at {addr} ({}) — is it running? is --tracker-addr right?", io_reason(source))]
    Unreachable {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The remote closed the handshake: it holds another cluster key.
    #[error(
        "the tracker at {addr} rejected our cluster key (our key fingerprint {fingerprint}) — \
         copy the tracker's cluster.key here"
    )]
    WrongKey {
        /// The address.
        addr: String,
        /// Our key's fingerprint.
        fingerprint: String,
    },
    /// Something answered that does not speak DartSync's tracker protocol.
    #[error("{addr} answered but is not a DartSync tracker ({why})")]
    NotATracker {
        /// The address.
        addr: String,
        /// What it did instead.
        why: String,
    },
    /// The connection was accepted but nothing answered in time.
    #[error(
        "{addr} accepted the connection but did not answer {stage} within {} s — \
         is the tracker hung, or is it not a DartSync tracker?",
        after.as_secs()
    )]
    NoAnswer {
        /// The address.
        addr: String,
        /// What went unanswered.
        stage: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The tracker is not the one this folder trusts (or the pin is
    /// unusable).
    #[error(transparent)]
    Untrusted(#[from] PinError),
    /// The tracker refused the session.
    #[error("the tracker at {addr} refused us: {reason}")]
    Refused {
        /// The address.
        addr: String,
        /// Its reason.
        reason: String,
    },
    /// The tracker revoked this device.
    #[error(
        "the tracker at {addr} revoked this device ({label}): it syncs nothing until the tracker's operator \
         runs `dartsync tracker admit {id}` on the tracker machine; asking again every {} min",
        REVOKED_PAUSE.as_secs() / 60
    )]
    Revoked {
        /// The address.
        addr: String,
        /// `NAME, id ID`.
        label: String,
        /// This device's id.
        id: String,
    },
    /// No frame for a while, and the liveness check failed.
    #[error("tracker silent for {secs} s, and a liveness check failed: {why}")]
    Silent {
        /// Seconds since the last frame.
        secs: u64,
        /// Why the check failed.
        why: String,
    },
    /// The secure channel failed (framing, decryption, I/O) after the
    /// handshake.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The tracker sent an invalid or unexpected message.
    #[error("tracker broke the protocol: {0}")]
    Protocol(String),
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

/// A short reason for a failed connect.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "connect timed out".into(),
        _ => e.to_string(),
    }
}

/// Kinds of failure, for rate-limited logging: a streak of one kind is
/// logged at growing intervals, a new kind at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Nothing listens at the address, or it does not resolve.
    Unreachable,
    /// The handshake was closed: another cluster key.
    WrongKey,
    /// Something else answered.
    NotATracker,
    /// Something accepted the connection but did not answer.
    NoAnswer,
    /// Not the pinned tracker, or an unusable pin.
    Untrusted,
    /// The tracker refused us.
    Refused,
    /// The tracker revoked this device.
    Revoked,
    /// An established session ended.
    Lost,
    /// Anything else before `Welcome`.
    Other,
}

impl ClientError {
    /// The kind of failure of a session that never got its `Welcome`.
    pub(crate) fn trouble(&self) -> Trouble {
        match self {
            ClientError::Resolve { .. } | ClientError::Unreachable { .. } => Trouble::Unreachable,
            ClientError::WrongKey { .. } => Trouble::WrongKey,
            ClientError::NotATracker { .. } => Trouble::NotATracker,
            ClientError::NoAnswer { .. } => Trouble::NoAnswer,
            ClientError::Untrusted(_) => Trouble::Untrusted,
            ClientError::Refused { .. } => Trouble::Refused,
            ClientError::Revoked { .. } => Trouble::Revoked,
            ClientError::Silent { .. } => Trouble::Lost,
            ClientError::Channel(_)
            | ClientError::Protocol(_)
            | ClientError::Closed
            | ClientError::Summary(_)
            | ClientError::Discovery(_) => Trouble::Other,
        }
    }
}

/// Classifies a failed handshake. With a wrong cluster key the tracker
/// fails the handshake and closes; the initiator only sees the connection
/// close (or reset) before the handshake completes. Anything that answers
/// with bytes that are not a DartSync handshake is not a tracker.
fn handshake_error(cfg: &ClientConfig, e: ChannelError) -> ClientError {
    use std::io::ErrorKind;
    let addr = cfg.tracker_addr.clone();
    let not_a_tracker = |why: String| ClientError::NotATracker { addr: addr.clone(), why };
    match e {
        ChannelError::ClosedInHandshake => ClientError::WrongKey { addr, fingerprint: cfg.key.fingerprint() },
        ChannelError::Io(ref io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ) =>
        {
            ClientError::WrongKey { addr, fingerprint: cfg.key.fingerprint() }
        }
        ChannelError::HandshakeTimeout(after) => ClientError::NoAnswer { addr, stage: "the handshake", after },
        ChannelError::Version(theirs) => {
            not_a_tracker(format!("it speaks {theirs}; we speak DartSync protocol {PROTOCOL_VERSION}"))
        }
        ChannelError::Noise(_) | ChannelError::Decrypt => not_a_tracker("its handshake does not decrypt".into()),
        other => not_a_tracker(format!("its answer to our handshake: {other}")),
    }
}

/// What the client tells the engine.
#[derive(Debug)]
pub enum TrackerEvent {
    /// A session was established.
    Connected {
        /// The tracker's answer.
        welcome: Welcome,
        /// The seq this session starts from (0 after an epoch change): the
        /// peer has seen the whole table once its deltas reach
        /// `welcome.seq`.
        seen_seq: u64,
    },
    /// Changes of the global table (or an empty delta that moves the
    /// peer's seq forward).
    Delta(Delta),
    /// The tracker's device list.
    Devices(Vec<DeviceInfo>),
    /// A version this peer held lost a conflict.
    Conflict(ConflictNotice),
    /// The tracker's mass-change brake held, released or rejected this
    /// peer's changes.
    Brake(BrakeNotice),
    /// The tracker's answer to [`ClientCommand::Sources`].
    Sources {
        /// The path asked about.
        path: RelPath,
        /// The version asked about (still the global one).
        version: VersionVector,
        /// The online peers holding it (a few; possibly this peer).
        holders: Vec<Holder>,
    },
    /// An established session ended; the client is reconnecting.
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
    /// Where this peer stands.
    Report(PeerReport),
    /// The holders known of `version` of `path` could not deliver: ask
    /// which peers hold it now (answered with [`TrackerEvent::Sources`]).
    Sources {
        /// The path.
        path: RelPath,
        /// The version wanted.
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
    /// Where the tracker's identity is pinned (`.dartsync/tracker.pin`).
    pub pin_file: std::path::PathBuf,
    /// This device's name, sent in `Register`.
    pub name: String,
    /// Where the link's state is shown (`dartsync status`).
    pub status: StatusBoard,
    /// The piece server's gate, fed with every device list.
    pub gate: PeerGate,
    /// Without `--tracker-addr`: where the tracker is found (and
    /// remembered). `tracker_addr` is then where to start, empty when no
    /// address is known yet.
    pub(crate) locator: Option<Arc<Locator>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("tracker_addr", &self.tracker_addr)
            .field("listen_port", &self.listen_port)
            .field("pin_file", &self.pin_file)
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
    ) -> (TrackerClient, JoinHandle<Result<(), ClientError>>) {
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
/// with the cluster's piece length from the beginning. Honours (and on
/// first contact writes) the tracker pin.
pub async fn probe_welcome(cfg: &ClientConfig) -> Result<Welcome, ClientError> {
    let pin = TrackerPin::new(cfg.pin_file.clone());
    let (_reader, mut writer, welcome, _tracker) = register(cfg, &pin, 0, 0, true, None).await?;
    let _ = writer.shutdown().await;
    Ok(welcome)
}

type Reader = dartsync_shared::channel::ChannelReader<tokio::io::ReadHalf<TcpStream>>;
type Writer = dartsync_shared::channel::ChannelWriter<tokio::io::WriteHalf<TcpStream>>;

/// Resolves, connects, runs the handshake and checks the tracker's key
/// against the pin (before anything is sent to it). Returns the halves and
/// the tracker's key.
async fn open(cfg: &ClientConfig, pin: &TrackerPin) -> Result<(Reader, Writer, PublicKey), ClientError> {
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
        .map_err(|_| ClientError::Unreachable {
            addr: cfg.tracker_addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| ClientError::Unreachable { addr: cfg.tracker_addr.clone(), source })?;
    let _ = stream.set_nodelay(true);
    let channel = channel::connect(stream, &cfg.key, &cfg.identity).await.map_err(|e| handshake_error(cfg, e))?;
    let tracker = channel.remote_key();
    pin.check_async(&cfg.tracker_addr, tracker).await?;
    let (reader, mut writer) = channel.split();
    // Small Noise messages: the tracker holds one per session while it
    // waits for a batch slot (`TRACKER_PIECE_LEN`).
    writer.set_piece_len(channel::TRACKER_PIECE_LEN);
    Ok((reader, writer, tracker))
}

/// Opens a session and registers: [`open`], `Register`, `Welcome`, and the
/// pin written on first contact.
async fn register(
    cfg: &ClientConfig,
    pin: &TrackerPin,
    seen_seq: u64,
    epoch: u64,
    probe: bool,
    commands: Option<&mut mpsc::Receiver<ClientCommand>>,
) -> Result<(Reader, Writer, Welcome, PublicKey), ClientError> {
    let (mut reader, mut writer, tracker) = open(cfg, pin).await?;
    let mut register = Register::new(cfg.identity.peer_id(), cfg.listen_port, seen_seq, epoch, &cfg.name);
    register.probe = probe;
    writer.send(&PeerMessage::Register(register)).await?;
    let welcome = match read_welcome(&mut reader, &cfg.tracker_addr).await {
        Ok(Answer::Welcome(welcome)) => welcome,
        Ok(Answer::Pending { interval_ms }) => {
            wait_for_admission(cfg, &mut reader, &mut writer, interval_ms, commands).await?
        }
        Err(ClientError::Revoked { .. }) => return Err(revoked(cfg)),
        Err(e) => return Err(e),
    };
    if pin.pin_async(&cfg.tracker_addr, tracker).await? == Trust::FirstContact {
        tracing::info!(
            "first contact with tracker {} at {}: trusting it from now on (pinned in {})",
            tracker.peer_id(),
            cfg.tracker_addr,
            pin.file().display()
        );
    }
    Ok((reader, writer, welcome, tracker))
}

/// The tracker's answer to `Register`.
enum Answer {
    /// Registered.
    Welcome(Welcome),
    /// This device waits for the operator's approval.
    Pending { interval_ms: u64 },
}

/// `NAME, id ID` of this device.
fn this_device(cfg: &ClientConfig) -> String {
    format!("{}, id {}", cfg.name, cfg.identity.peer_id())
}

/// The error for a revocation, naming this device.
fn revoked(cfg: &ClientConfig) -> ClientError {
    ClientError::Revoked {
        addr: cfg.tracker_addr.clone(),
        label: this_device(cfg),
        id: cfg.identity.peer_id().to_string(),
    }
}

/// What to type after `dartsync tracker admit` for this device.
fn admit_arg(cfg: &ClientConfig) -> String {
    if cfg.name.is_empty() {
        cfg.identity.peer_id().to_string()
    } else if cfg.name.contains(|c: char| c.is_whitespace() || c == '\'') {
        format!("\"{}\"", cfg.name)
    } else {
        cfg.name.clone()
    }
}

/// Held for approval: says so (a warning once, and in `dartsync status`),
/// answers each of the tracker's `Pending` with `KeepAlive`, and waits
/// for the `Welcome` that follows `dartsync tracker admit`. Nothing else
/// is sent meanwhile, and nothing else is expected.
async fn wait_for_admission(
    cfg: &ClientConfig,
    reader: &mut Reader,
    writer: &mut Writer,
    interval_ms: u64,
    commands: Option<&mut mpsc::Receiver<ClientCommand>>,
) -> Result<Welcome, ClientError> {
    if cfg.status.set_admission(DeviceState::Pending) {
        tracing::warn!(
            "this device ({}) waits for approval: on the tracker machine run `dartsync tracker admit {}`",
            this_device(cfg),
            admit_arg(cfg)
        );
    }
    cfg.status.tracker_failed("waiting for approval by the tracker's operator".into());
    let silence = silence_limit(Duration::from_millis(interval_ms));
    writer.send(&PeerMessage::KeepAlive).await?;
    let quiet = tokio::time::sleep(silence);
    tokio::pin!(quiet);
    let mut commands = commands;
    loop {
        let msg = tokio::select! {
            () = &mut quiet => {
                return Err(ClientError::Silent {
                    secs: silence.as_secs(),
                    why: "no word while waiting for approval".into(),
                });
            }
            // The engine's commands are dropped while we wait (as while
            // disconnected): the summary sent after `Welcome` carries them.
            cmd = async { match commands.as_deref_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                if cmd.is_none() {
                    commands = None;
                }
                continue;
            }
            // `recv` is cancel-safe.
            msg = reader.recv::<TrackerMessage>() => msg?.ok_or(ClientError::Closed)?,
        };
        quiet.as_mut().reset(Instant::now() + silence);
        msg.validate()?;
        match msg {
            TrackerMessage::Pending { .. } => writer.send(&PeerMessage::KeepAlive).await?,
            TrackerMessage::Welcome(welcome) => {
                tracing::info!("the tracker admitted this device ({})", this_device(cfg));
                return Ok(welcome);
            }
            TrackerMessage::Revoked => return Err(revoked(cfg)),
            TrackerMessage::Refused { reason } => {
                return Err(ClientError::Refused { addr: cfg.tracker_addr.clone(), reason });
            }
            other => {
                return Err(ClientError::Protocol(format!("{} while waiting for approval", other.kind())));
            }
        }
    }
}

/// Waits for the tracker's answer to `Register`.
async fn read_welcome(reader: &mut Reader, addr: &str) -> Result<Answer, ClientError> {
    let not_a_tracker = |why: String| ClientError::NotATracker { addr: addr.to_owned(), why };
    let msg = match tokio::time::timeout(CONNECT_TIMEOUT, reader.recv::<TrackerMessage>()).await {
        Err(_) => {
            return Err(ClientError::NoAnswer { addr: addr.to_owned(), stage: "Register", after: CONNECT_TIMEOUT });
        }
        Ok(Err(e)) => return Err(not_a_tracker(format!("no Welcome after Register: {e}"))),
        Ok(Ok(None)) => {
            return Err(not_a_tracker("it closed the connection instead of answering Register; a peer's port?".into()));
        }
        Ok(Ok(Some(msg))) => msg,
    };
    msg.validate().map_err(|e| not_a_tracker(format!("invalid answer to Register: {e}")))?;
    match msg {
        TrackerMessage::Welcome(w) => Ok(Answer::Welcome(w)),
        TrackerMessage::Pending { interval_ms } => Ok(Answer::Pending { interval_ms }),
        TrackerMessage::Refused { reason } => Err(ClientError::Refused { addr: addr.to_owned(), reason }),
        // Completed with this device's name by `register`.
        TrackerMessage::Revoked => {
            Err(ClientError::Revoked { addr: addr.to_owned(), label: String::new(), id: String::new() })
        }
        other => Err(not_a_tracker(format!("it answered Register with {}", other.kind()))),
    }
}

/// Proves the tracker is alive without disturbing the session: a second
/// connection that completes the handshake (and the pin check) within
/// `limit`, then closes without registering. A process that answers at
/// all is alive: one that closes the handshake at once (a tracker shedding
/// load before authentication does) passes too. A stopped or hung process
/// never answers (its kernel still accepts the connection), and one that
/// is gone refuses it: those fail.
async fn liveness(cfg: &ClientConfig, pin: &TrackerPin, limit: Duration) -> Result<(), ClientError> {
    match tokio::time::timeout(limit, open(cfg, pin)).await {
        Err(_) => Err(ClientError::NoAnswer { addr: cfg.tracker_addr.clone(), stage: "the handshake", after: limit }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e @ (ClientError::WrongKey { .. } | ClientError::NotATracker { .. }))) => {
            tracing::debug!("liveness check: the tracker answered, though not with a handshake: {e}");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
    }
}

/// Where the peer is in the tracker's history.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    seen_seq: u64,
    epoch: u64,
}

/// Asks the locator for the tracker's address (until found when none is
/// known, else for [`REDISCOVER_WAIT`]) and makes it `cfg`'s. `Ok(false)`:
/// shutdown came first.
async fn locate(cfg: &mut ClientConfig, shutdown: &CancellationToken) -> Result<bool, ClientError> {
    let Some(locator) = cfg.locator.clone() else {
        return Ok(true);
    };
    let wait = if cfg.tracker_addr.is_empty() { None } else { Some(REDISCOVER_WAIT) };
    let found = tokio::select! {
        found = locator.find(wait) => found,
        () = shutdown.cancelled() => return Ok(false),
    };
    let found = match found {
        Ok(found) => found,
        // mDNS trouble with an address still in hand: keep trying it.
        Err(e @ crate::discovery::DiscoveryError::Mdns(_)) if !cfg.tracker_addr.is_empty() => {
            tracing::warn!("{e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    match found {
        Some(addr) => cfg.tracker_addr = addr,
        None => {
            tracing::info!("no tracker of this cluster answered on the LAN; trying {} again", cfg.tracker_addr);
            cfg.status.set_tracker_addr(cfg.tracker_addr.clone(), true);
        }
    }
    Ok(true)
}

async fn run(
    mut cfg: ClientConfig,
    summary: SummaryFn,
    events: mpsc::Sender<TrackerEvent>,
    mut commands: mpsc::Receiver<ClientCommand>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let pin = TrackerPin::new(cfg.pin_file.clone());
    let mut progress = Progress::default();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut troubles = RepeatLog::default();
    let mut attempt = 0u64;
    // Failed attempts in a row to reach the address (for re-discovery).
    let mut unreachable = 0u32;
    loop {
        if cfg.tracker_addr.is_empty() || (cfg.locator.is_some() && unreachable >= REDISCOVER_AFTER) {
            unreachable = 0;
            if !locate(&mut cfg, &shutdown).await? {
                return Ok(());
            }
        }
        attempt += 1;
        tracing::debug!(attempt, "connecting to tracker {}", cfg.tracker_addr);
        let mut welcomed = None;
        // The session first: on shutdown a connected session says Goodbye
        // itself; one still connecting is dropped.
        let result = tokio::select! {
            biased;
            r = session(&cfg, &pin, &summary, &events, &mut commands, &mut progress, &mut welcomed, &shutdown) => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match (&welcomed, err.trouble()) {
            (None, Trouble::Unreachable | Trouble::NoAnswer) => unreachable += 1,
            _ => unreachable = 0,
        }
        cfg.status.tracker_failed(err.to_string());
        let is_revoked = matches!(err, ClientError::Revoked { .. });
        if is_revoked {
            cfg.status.set_admission(DeviceState::Revoked);
        }
        let now = std::time::Instant::now();
        let trouble = match welcomed {
            _ if is_revoked => {
                backoff.reset();
                Trouble::Revoked
            }
            Some(since) => {
                // A session that got as far as Welcome starts the backoff
                // afresh; one that lasted ends the streak of failures.
                backoff.reset();
                attempt = 0;
                if since.elapsed() >= STABLE_SESSION {
                    troubles.reset();
                }
                Trouble::Lost
            }
            None => err.trouble(),
        };
        match troubles.failed(trouble, now) {
            Say::Quiet => {}
            Say::First if trouble == Trouble::Revoked => tracing::error!("{err}"),
            Say::Again { count, over } if trouble == Trouble::Revoked => {
                tracing::error!("{err} ({count} refusals in {})", fmt_duration(over))
            }
            Say::First if trouble == Trouble::Lost => tracing::warn!("tracker session ended: {err}; reconnecting"),
            Say::First => tracing::warn!("{err}"),
            Say::Again { count, over } if trouble == Trouble::Lost => tracing::warn!(
                "tracker session ended: {err}; reconnecting ({count} sessions lost in {})",
                fmt_duration(over)
            ),
            Say::Again { count, over } => {
                tracing::warn!("{err} ({count} failed attempts in {}; still retrying)", fmt_duration(over))
            }
        }
        if welcomed.is_some() && events.send(TrackerEvent::Disconnected(err.to_string())).await.is_err() {
            return Ok(());
        }
        // Drop commands while disconnected: what they say is already in the
        // index, and the next session's summary (read after this pause)
        // carries it.
        // A tracker that refused us (record quota, full table, full
        // tracker) will refuse the same summary again: come back much later
        // rather than resend it every few seconds.
        let delay = match err {
            ClientError::Revoked { .. } => REVOKED_PAUSE,
            ClientError::Refused { .. } => REFUSED_PAUSE,
            _ => backoff.next_delay(),
        };
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = &mut pause => break,
                cmd = commands.recv() => if cmd.is_none() { return Ok(()) },
            }
        }
    }
}

/// A liveness check in flight.
type Check<'a> = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + 'a>>;

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &ClientConfig,
    pin: &TrackerPin,
    summary: &SummaryFn,
    events: &mpsc::Sender<TrackerEvent>,
    commands: &mut mpsc::Receiver<ClientCommand>,
    progress: &mut Progress,
    welcomed: &mut Option<std::time::Instant>,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let (mut reader, mut writer, welcome, tracker) =
        register(cfg, pin, progress.seen_seq, progress.epoch, false, Some(&mut *commands)).await?;
    if welcome.epoch != progress.epoch {
        // A new tracker history: everything will be resent.
        progress.seen_seq = 0;
        progress.epoch = welcome.epoch;
    }
    *welcomed = Some(std::time::Instant::now());
    tracing::info!("registered with tracker {}", cfg.tracker_addr);
    if let Some(locator) = &cfg.locator {
        locator.remember(&cfg.tracker_addr).await;
    }
    tracing::debug!(
        epoch = format_args!("{:016x}", welcome.epoch),
        seq = welcome.seq,
        tracker = %tracker.peer_id().fmt_short(),
        "registered"
    );
    cfg.status.tracker_connected();
    let interval = Duration::from_millis(welcome.interval_ms);
    if events.send(TrackerEvent::Connected { welcome, seen_seq: progress.seen_seq }).await.is_err() {
        return Ok(());
    }

    // The whole local summary, so the tracker knows what we hold.
    let make_summary = summary.clone();
    let records = tokio::task::spawn_blocking(move || make_summary())
        .await
        .map_err(|e| ClientError::Summary(e.to_string()))?
        .map_err(ClientError::Summary)?;
    for batch in announce_batches(&records) {
        writer.send(&PeerMessage::Announce { records: batch.to_vec() }).await?;
    }
    tracing::debug!(records = records.len(), "sent local summary");

    let mut keepalive = tokio::time::interval_at(Instant::now() + interval, interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Silence: no frame since `last_heard` for `silence` starts a liveness
    // check; any frame cancels it.
    let silence = silence_limit(interval);
    let mut last_heard = Instant::now();
    let quiet_until = tokio::time::sleep_until(last_heard + silence);
    tokio::pin!(quiet_until);
    let mut check: Option<Check<'_>> = None;
    // Deltas received but not yet taken by the engine. The loop never
    // blocks on the engine (which may itself be waiting to hand us a
    // command): it stops reading from the tracker instead, so TCP pushes
    // back, while keep-alives and commands keep flowing.
    let mut pending: std::collections::VecDeque<TrackerEvent> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = writer.send(&PeerMessage::Goodbye).await;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            _ = keepalive.tick() => writer.send(&PeerMessage::KeepAlive).await?,
            checked = async { match check.as_mut() { Some(c) => c.await, None => std::future::pending().await } }, if check.is_some() => match checked {
                Ok(()) => {
                    check = None;
                    tracing::debug!("no message from the tracker for {silence:?}, but it passed a liveness check");
                    last_heard = Instant::now();
                    quiet_until.as_mut().reset(last_heard + silence);
                }
                Err(e) => {
                    let secs = last_heard.elapsed().as_secs();
                    return Err(ClientError::Silent { secs, why: e.to_string() });
                }
            },
            permit = events.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(event) = pending.pop_front() {
                        permit.send(event);
                    }
                }
                Err(_) => return Ok(()),
            },
            cmd = commands.recv() => match cmd {
                Some(ClientCommand::Announce(records)) => {
                    for batch in announce_batches(&records) {
                        writer.send(&PeerMessage::Announce { records: batch.to_vec() }).await?;
                    }
                }
                Some(ClientCommand::Have { path, version }) => {
                    writer.send(&PeerMessage::Have { path, version }).await?;
                }
                Some(ClientCommand::Sources { path, version }) => {
                    writer.send(&PeerMessage::Sources { path, version }).await?;
                }
                Some(ClientCommand::Report(report)) => writer.send(&PeerMessage::Report(report)).await?,
                None => return Ok(()),
            },
            msg = reader.recv::<TrackerMessage>(), if pending.len() < MAX_PENDING_DELTAS => {
                let msg = msg?.ok_or(ClientError::Closed)?;
                last_heard = Instant::now();
                quiet_until.as_mut().reset(last_heard + silence);
                check = None;
                msg.validate()?;
                match msg {
                    TrackerMessage::Delta(delta) => {
                        if delta.epoch != progress.epoch {
                            return Err(ClientError::Protocol("delta from another epoch".into()));
                        }
                        let advanced = delta.to_seq > progress.seen_seq;
                        progress.seen_seq = progress.seen_seq.max(delta.to_seq);
                        // An empty delta that does not move us forward (a
                        // tracker's heartbeat) is not worth a queue slot.
                        if delta.full || !delta.entries.is_empty() || advanced {
                            pending.push_back(TrackerEvent::Delta(delta));
                        }
                    }
                    TrackerMessage::Devices { devices } => {
                        cfg.gate.update(&devices);
                        pending.push_back(TrackerEvent::Devices(devices));
                    }
                    TrackerMessage::Revoked => return Err(revoked(cfg)),
                    TrackerMessage::Pending { .. } => {
                        return Err(ClientError::Protocol("Pending after Welcome".into()));
                    }
                    TrackerMessage::Conflict(notice) => pending.push_back(TrackerEvent::Conflict(notice)),
                    TrackerMessage::Brake(notice) => pending.push_back(TrackerEvent::Brake(notice)),
                    TrackerMessage::Sources { path, version, holders } => {
                        pending.push_back(TrackerEvent::Sources { path, version, holders });
                    }
                    TrackerMessage::Refused { reason } => {
                        return Err(ClientError::Refused { addr: cfg.tracker_addr.clone(), reason });
                    }
                    TrackerMessage::Welcome(_) => return Err(ClientError::Protocol("unexpected Welcome".into())),
                }
            }
            () = &mut quiet_until, if check.is_none() => {
                check = Some(Box::pin(liveness(cfg, pin, liveness_limit(interval))));
            }
        }
    }
}

/// What [`RepeatLog::failed`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// A new kind of failure: log it.
    First,
    /// The same kind goes on and a re-log is due.
    Again {
        /// Failures of this kind in a row, this one included.
        count: u64,
        /// Since the first of them.
        over: Duration,
    },
    /// Logged recently enough: stay quiet.
    Quiet,
}

/// Rate limit for a failure that keeps happening: a new kind is logged at
/// once; the same kind again after the gaps in [`RELOG_GAPS`] (10 s, 1 min,
/// 5 min, then every 15 min). Pure: the clock is passed in.
#[derive(Debug)]
pub(crate) struct RepeatLog<K> {
    streak: Option<Streak<K>>,
}

#[derive(Debug)]
struct Streak<K> {
    kind: K,
    first: std::time::Instant,
    logged: std::time::Instant,
    relogs: usize,
    count: u64,
}

impl<K> Default for RepeatLog<K> {
    fn default() -> Self {
        RepeatLog { streak: None }
    }
}

impl<K: PartialEq> RepeatLog<K> {
    /// Records a failure of `kind` at `now`; says whether to log it.
    pub(crate) fn failed(&mut self, kind: K, now: std::time::Instant) -> Say {
        match &mut self.streak {
            Some(streak) if streak.kind == kind => {
                streak.count = streak.count.saturating_add(1);
                let gap = RELOG_GAPS[streak.relogs.min(RELOG_GAPS.len() - 1)];
                if now.saturating_duration_since(streak.logged) < gap {
                    return Say::Quiet;
                }
                streak.logged = now;
                streak.relogs += 1;
                Say::Again { count: streak.count, over: now.saturating_duration_since(streak.first) }
            }
            _ => {
                self.streak = Some(Streak { kind, first: now, logged: now, relogs: 0, count: 1 });
                Say::First
            }
        }
    }

    /// Forgets the streak (after a success): the next failure is new.
    pub(crate) fn reset(&mut self) {
        self.streak = None;
    }
}

/// `45 s`, `3 min 20 s`, `2 h 5 min`.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Feeds one failure per second for `total` seconds and returns the
    /// seconds (from the first) at which a line is logged.
    fn logged_at(log: &mut RepeatLog<Trouble>, t0: StdInstant, from: u64, total: u64, kind: Trouble) -> Vec<u64> {
        (from..from + total).filter(|t| log.failed(kind, t0 + secs(*t)) != Say::Quiet).collect()
    }

    #[test]
    fn a_failure_that_goes_on_is_relogged_at_growing_intervals() {
        let t0 = StdInstant::now();
        let mut log = RepeatLog::default();
        let at = logged_at(&mut log, t0, 0, 3 * 3600, Trouble::WrongKey);
        // 0, +10 s, +1 min, +5 min, then every 15 min.
        let mut want = vec![0, 10, 70, 370];
        let mut next = 370 + 900;
        while next < 3 * 3600 {
            want.push(next);
            next += 900;
        }
        assert_eq!(at, want);
        assert!(at.iter().filter(|t| **t < 15).count() <= 2, "at most two lines in the first 15 s");
    }

    #[test]
    fn repeats_carry_the_count_and_the_duration() {
        let t0 = StdInstant::now();
        let mut log = RepeatLog::default();
        assert_eq!(log.failed(Trouble::Unreachable, t0), Say::First);
        for t in 1..10 {
            assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(t)), Say::Quiet, "t = {t}");
        }
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(12)), Say::Again { count: 11, over: secs(12) });
        // The next gap (1 min) counts from the last line, not the first.
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(70)), Say::Quiet);
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(72)), Say::Again { count: 13, over: secs(72) });
    }

    #[test]
    fn another_kind_or_a_reset_is_logged_at_once() {
        let t0 = StdInstant::now();
        let mut log = RepeatLog::default();
        assert_eq!(log.failed(Trouble::Unreachable, t0), Say::First);
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(1)), Say::Quiet);
        assert_eq!(log.failed(Trouble::Untrusted, t0 + secs(2)), Say::First);
        assert_eq!(log.failed(Trouble::Untrusted, t0 + secs(3)), Say::Quiet);
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(4)), Say::First);
        log.reset();
        assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(5)), Say::First);
        // A clock that does not move never logs a repeat.
        for _ in 0..100 {
            assert_eq!(log.failed(Trouble::Unreachable, t0 + secs(5)), Say::Quiet);
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(secs(0)), "0 s");
        assert_eq!(fmt_duration(secs(59)), "59 s");
        assert_eq!(fmt_duration(secs(60)), "1 min");
        assert_eq!(fmt_duration(secs(200)), "3 min 20 s");
        assert_eq!(fmt_duration(secs(7500)), "2 h 5 min");
    }

    #[test]
    fn silence_and_liveness_limits_follow_the_interval() {
        assert_eq!(silence_limit(Duration::from_millis(100)), MIN_SILENCE);
        assert_eq!(silence_limit(secs(1)), secs(3));
        assert_eq!(silence_limit(secs(10)), secs(30));
        assert_eq!(liveness_limit(Duration::from_millis(1)), MIN_LIVENESS);
        assert_eq!(liveness_limit(secs(5)), secs(5));
        assert_eq!(liveness_limit(secs(3600)), HANDSHAKE_TIMEOUT);
    }

    fn config(key: ClusterKey, addr: String, pin_file: std::path::PathBuf) -> ClientConfig {
        let identity = Identity::generate();
        let status = StatusBoard::new(std::path::Path::new("/f"), "test".into(), identity.peer_id(), addr.clone());
        let gate = PeerGate::new();
        ClientConfig {
            tracker_addr: addr,
            listen_port: 1,
            key,
            identity,
            pin_file,
            name: "test".into(),
            status,
            gate,
            locator: None,
        }
    }

    /// A fake tracker: accepts one connection with `key` and `identity`,
    /// answers Register with Welcome, then keeps the connection open.
    async fn fake_tracker(key: ClusterKey, identity: Identity) -> (String, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(ch) = channel::accept(stream, &key, &identity).await else { continue };
                let (mut r, mut w) = ch.split();
                if let Ok(Some(PeerMessage::Register(_))) = r.recv::<PeerMessage>().await {
                    let welcome = Welcome { interval_ms: 1000, piece_len: 65_536, epoch: 1, seq: 0 };
                    w.send(&TrackerMessage::Welcome(welcome)).await.unwrap();
                }
                tokio::spawn(async move {
                    while let Ok(Some(_)) = r.recv::<PeerMessage>().await {}
                    drop(w);
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_liveness_check_fails_only_without_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("tracker.pin");
        let key = ClusterKey::generate();
        let limit = Duration::from_millis(300);

        // A tracker that answers the handshake.
        let tracker = Identity::generate();
        let (addr, task) = fake_tracker(key.clone(), tracker.clone()).await;
        let cfg = config(key.clone(), addr, pin_file.clone());
        TrackerPin::new(pin_file.clone()).pin("x", &tracker.public()).unwrap();
        liveness(&cfg, &TrackerPin::new(pin_file.clone()), limit).await.unwrap();
        task.abort();

        // One that closes at once (shedding load) is alive too.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = config(key.clone(), listener.local_addr().unwrap().to_string(), pin_file.clone());
        let closer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        liveness(&cfg, &TrackerPin::new(pin_file.clone()), limit).await.unwrap();
        closer.await.unwrap();

        // One whose kernel accepts but which never answers (stopped) fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = config(key.clone(), listener.local_addr().unwrap().to_string(), pin_file.clone());
        let err = liveness(&cfg, &TrackerPin::new(pin_file.clone()), limit).await.unwrap_err();
        assert!(matches!(err, ClientError::NoAnswer { .. }), "{err}");
        drop(listener);

        // So does one that is gone.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = config(key, format!("127.0.0.1:{port}"), pin_file.clone());
        let err = liveness(&cfg, &TrackerPin::new(pin_file), limit).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::Unreachable, "{err}");
    }

    #[tokio::test]
    async fn the_probe_pins_the_first_tracker_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("tracker.pin");
        let key = ClusterKey::generate();
        let (t1, t2) = (Identity::generate(), Identity::generate());
        let (addr1, task1) = fake_tracker(key.clone(), t1.clone()).await;
        let cfg = config(key.clone(), addr1, pin_file.clone());
        assert_eq!(probe_welcome(&cfg).await.unwrap().piece_len, 65_536);
        let pinned = TrackerPin::new(pin_file.clone()).load().unwrap();
        assert_eq!(pinned, Some(t1.public()));
        // The same tracker again: fine.
        probe_welcome(&cfg).await.unwrap();
        task1.abort();

        let (addr2, task2) = fake_tracker(key.clone(), t2.clone()).await;
        let cfg = config(key, addr2.clone(), pin_file.clone());
        let err = probe_welcome(&cfg).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::Untrusted, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("the tracker at {addr2} is {}", t2.peer_id())), "{text}");
        assert!(text.contains(&format!("but this folder trusts {}", t1.peer_id())), "{text}");
        assert_eq!(TrackerPin::new(pin_file).load().unwrap(), Some(t1.public()), "the pin is unchanged");
        task2.abort();
    }

    #[tokio::test]
    async fn misconfigurations_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("tracker.pin");
        let key = ClusterKey::generate();

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe_welcome(&config(key.clone(), format!("127.0.0.1:{port}"), pin_file.clone())).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::Unreachable, "{err}");
        assert!(err.to_string().contains("(connection refused) — is it running? is --tracker-addr right?"), "{err}");

        // A tracker of another cluster.
        let (addr, task) = fake_tracker(ClusterKey::generate(), Identity::generate()).await;
        let err = probe_welcome(&config(key.clone(), addr.clone(), pin_file.clone())).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::WrongKey, "{err}");
        let want = format!(
            "the tracker at {addr} rejected our cluster key (our key fingerprint {}) — copy the tracker's cluster.key here",
            key.fingerprint()
        );
        assert_eq!(err.to_string(), want);
        task.abort();

        // Something that is not DartSync.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let http = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        });
        let err = probe_welcome(&config(key.clone(), addr.clone(), pin_file.clone())).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::NotATracker, "{err}");
        assert!(err.to_string().starts_with(&format!("{addr} answered but is not a DartSync tracker")), "{err}");
        http.await.unwrap();
        assert!(!pin_file.exists(), "nothing was pinned");
    }

    #[tokio::test]
    async fn a_peer_port_is_not_a_tracker_and_is_not_pinned() {
        // Same cluster key, handshake fine, but Register goes unanswered.
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("tracker.pin");
        let key = ClusterKey::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut ch = channel::accept(s, &server_key, &Identity::generate()).await.unwrap();
            let _ = ch.recv::<PeerMessage>().await;
        });
        let err = probe_welcome(&config(key, addr, pin_file.clone())).await.unwrap_err();
        assert_eq!(err.trouble(), Trouble::NotATracker, "{err}");
        server.await.unwrap();
        assert!(!pin_file.exists());
    }
}
