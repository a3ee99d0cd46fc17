//! The one task that owns the tracker's state.
//!
//! Sessions talk to it through a cheap-clone [`ActorHandle`]: an `mpsc` of
//! [`Command`]s, each carrying a `oneshot` for its reply. The actor loop is
//! a `biased` select over shutdown, the next heartbeat deadline, the
//! tombstone-GC tick and the inbox, so every change gets one order and one
//! `seq`.
//!
//! # Messages and memory
//! A session waits for the [`Verdict`] on each message before it reads the
//! next, so it has at most one decoded message in flight; an `Announce`
//! batch larger than [`MAX_CONTROL_FRAME`](dartsync_shared::limits::MAX_CONTROL_FRAME)
//! also carries its batch slot (see `session`), released only when the
//! actor has applied it. A batch refused by a bound (quota, full table)
//! answers [`Verdict::Refuse`] and the session drops its peer with that
//! reason.
//!
//! # Tombstone GC between events
//! Every [`GC_PERIOD`] a GC pass starts; it then advances [`GC_SLICE`]
//! entries per loop turn, after whatever event the turn handled (or on its
//! own when the inbox is empty), and commits what it dropped like any other
//! change. No turn looks at more than `GC_SLICE` entries, so a pass over a
//! big table never holds up the sessions.
//!
//! # Commit before anyone sees it
//! After each event the actor takes the state's pending writes and commits
//! them (plus a raised seq ceiling when needed, see `store`) on the blocking
//! pool, awaiting the commit before it handles the next event. Only then
//! does it publish the new global seq on a `watch` channel and answer
//! deferred `Register`s. Sessions pull their delta pages with
//! [`ActorHandle::next_page`], which the actor answers from committed state
//! only, so no peer ever sees a change that a crash could take back.
//! A failed commit stops the tracker (the memory state may be ahead of the
//! disk); a restart reloads the disk.
//!
//! # Pull, not push
//! The actor never queues deltas per peer. A session woken by the seq watch
//! asks for "everything after what you handed me" and gets at most one page
//! at a time, so a slow peer costs one page of memory and falls behind
//! harmlessly, and changes of one entry in between are coalesced.
//!
//! # Admission
//! Each `Register` is decided by the device registry (`state::admission`,
//! `registry`) under the configured [`AdmitPolicy`]: an admitted device
//! joins the peer table; a pending one is answered
//! [`RegisterReply::Pending`] and its arrival is held in `pending` (it never
//! enters the peer table, so it holds, authors and is sent nothing) until
//! `admit` registers it as if it had just arrived and hands its session the
//! `Welcome`; a revoked one is answered [`RegisterReply::Revoked`]. `revoke`
//! takes the device off the peer table (and so off every holders set) and
//! closes its session through its [`Link`], flagged so the session says
//! `Revoked` before it closes. Both are committed like any other change.
//!
//! Not here: the rules (`state`), sockets (`session`), the database (`store`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dartsync_shared::PeerId;
use dartsync_shared::codec;
use dartsync_shared::config::AdmitPolicy;
use dartsync_shared::device::DeviceState;
use dartsync_shared::proto::ptp::{DeviceInfo, PeerMessage, TrackerMessage, Welcome};
use dartsync_shared::status::TrackerStatus;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::TrackerError;
use crate::brake::{Brake, BrakeConfig};
use crate::state::{Arrival, Outcome, Page, State};
use crate::store::{SEQ_RESERVE, Store};

/// Capacity of the actor's inbox; senders wait when it is full. Each
/// session has at most one message in it (it waits for the verdict), and a
/// large batch also holds a batch slot, so the inbox adds no memory term of
/// its own.
const INBOX: usize = 32;

mod held;

pub(crate) use held::BrakeAction;

/// How often a tombstone-GC pass starts.
const GC_PERIOD: Duration = Duration::from_secs(600);

/// Entries a GC pass looks at per actor turn.
const GC_SLICE: usize = 1024;

/// How often the device list is recomputed (when something changed) and,
/// if it differs, published to every session: this often up to
/// [`DEVICES_SESSIONS_PER_STEP`] sessions, and one more step per that many
/// sessions beyond (a list of N devices to N sessions costs N², so with
/// 1,000 peers reporting it goes out every 5 s, not 4 times a second).
const DEVICES_EVERY: Duration = Duration::from_millis(250);

/// Sessions per [`DEVICES_EVERY`] step of the device-list period.
const DEVICES_SESSIONS_PER_STEP: usize = 50;

/// The period of device-list publication with `online` sessions.
fn devices_period(online: usize) -> Duration {
    let steps = u32::try_from(online.div_ceil(DEVICES_SESSIONS_PER_STEP)).unwrap_or(u32::MAX).max(1);
    DEVICES_EVERY.saturating_mul(steps)
}

/// The device list as published to sessions: the list, and its
/// `TrackerMessage::Devices` frame, encoded once for every session (with
/// 1,000 peers a list is about 100 KB; a copy and an encoding per session
/// cost 1,000 times that in small blocks, which stayed in the heap between
/// the sessions' own).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PublishedDevices {
    /// The devices.
    pub list: Vec<DeviceInfo>,
    /// The frame; `None` if the list could not be encoded (longer than a
    /// frame: sessions then send none, a warning says why).
    pub frame: Option<Bytes>,
}

impl PublishedDevices {
    fn new(list: Vec<DeviceInfo>) -> Self {
        let frame = match codec::encode(&TrackerMessage::Devices { devices: list.clone() }) {
            Ok(frame) => Some(Bytes::from(frame)),
            Err(e) => {
                tracing::warn!("the device list of {} devices is not sent to peers: {e}", list.len());
                None
            }
        };
        PublishedDevices { list, frame }
    }
}

/// The published device list, shared by every session.
pub(crate) type DeviceList = Arc<PublishedDevices>;

/// What the actor says about a session's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Applied (or harmlessly ignored): read the next message.
    Continue,
    /// Send this answer on the session, then read the next message.
    Answer(Box<TrackerMessage>),
    /// Refused by a bound: drop the peer with this reason.
    Refuse(String),
}

/// Why a session ended, as told to the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveReason {
    /// The peer said `Goodbye`.
    Goodbye,
    /// The peer closed the connection.
    Closed,
    /// The session dropped the peer (protocol breach, bad frame, I/O error).
    Dropped,
}

impl std::fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaveReason::Goodbye => "goodbye",
            LeaveReason::Closed => "connection closed",
            LeaveReason::Dropped => "dropped",
        })
    }
}

/// The actor's answer to `Register`.
#[derive(Debug)]
pub(crate) enum RegisterReply {
    /// Admitted: the `Welcome` (after the registration is committed).
    Welcome(Welcome),
    /// Held for approval: tell the peer, then wait for `admitted` (its
    /// sender is dropped if the session is replaced or revoked).
    Pending {
        /// The keep-alive interval, for the `Pending` messages.
        interval_ms: u64,
        /// The `Welcome`, once an operator admits the device.
        admitted: oneshot::Receiver<Welcome>,
    },
    /// The device is revoked: tell it and close.
    Revoked,
    /// Refused for another reason (too many pending devices).
    Refused(String),
}

/// What an operator's `admit` or `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminDone {
    /// The device's name (its short id if it has none).
    pub name: String,
    /// Its id.
    pub id: PeerId,
    /// Its state before.
    pub before: DeviceState,
    /// Its state now.
    pub state: DeviceState,
}

/// A session the actor can close: its token, and the flag that tells it
/// the reason is a revocation (it then says `Revoked` before closing).
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// Cancelled to close the session.
    pub token: CancellationToken,
    /// Set before `token` is cancelled when the device was revoked.
    pub revoked: Arc<AtomicBool>,
    /// When the session last heard from its peer.
    pub heard: Heard,
}

/// When a session last read a frame from its peer, or that a frame of it
/// is being applied right now: a peer whose message waits in a busy
/// actor's queue is alive, whatever its deadline says.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heard(Arc<AtomicU64>);

impl Heard {
    /// A frame of the peer is being applied.
    const IN_FLIGHT: u64 = u64::MAX;

    /// The session read a frame now (or finished applying one).
    pub fn now(&self) {
        let ms = mono_now().saturating_duration_since(heard_base()).as_millis();
        self.0.store(
            u64::try_from(ms).unwrap_or(u64::MAX - 1).saturating_add(1).min(Self::IN_FLIGHT - 1),
            Ordering::Relaxed,
        );
    }

    /// A frame of the peer went to the actor and is not applied yet.
    pub fn in_flight(&self) {
        self.0.store(Self::IN_FLIGHT, Ordering::Relaxed);
    }

    /// When the peer was last heard (`now` while a frame is in flight).
    fn when(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            Self::IN_FLIGHT => Some(now),
            ms => Some(heard_base() + Duration::from_millis(ms - 1)),
        }
    }
}

/// The origin of [`Heard`]'s clock.
fn heard_base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(mono_now)
}

impl Link {
    fn close(&self, revoked: bool) {
        if revoked {
            self.revoked.store(true, Ordering::Release);
        }
        self.token.cancel();
    }
}

/// A pending device's open session, waiting for `admit`.
#[derive(Debug)]
struct PendingLink {
    arrival: Arrival,
    name: String,
    link: Link,
    admitted: oneshot::Sender<Welcome>,
}

/// A reply held until the changes before it are committed.
#[derive(Debug)]
enum Deferred {
    Register(oneshot::Sender<RegisterReply>),
    Probe(oneshot::Sender<Option<Welcome>>),
    Admitted(oneshot::Sender<Welcome>),
}

/// A request to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    /// A session completed `Register`.
    Register {
        peer: PeerId,
        addr: SocketAddr,
        session: u64,
        seen_seq: u64,
        epoch: u64,
        /// The device name (may be empty).
        name: String,
        /// Closes the session (expiry, replacement, revocation).
        link: Link,
        reply: oneshot::Sender<RegisterReply>,
    },
    /// `Announce`, `Have` or `KeepAlive` from a registered session.
    Message {
        peer: PeerId,
        session: u64,
        msg: PeerMessage,
        /// The batch slot of a large frame, held until the message is applied.
        slot: Option<OwnedSemaphorePermit>,
        /// No answer (dropped) when the session is no longer current.
        reply: oneshot::Sender<Verdict>,
    },
    /// The session's next delta page.
    NextPage { peer: PeerId, session: u64, reply: oneshot::Sender<Option<Page>> },
    /// The session ended.
    Left { peer: PeerId, session: u64, why: LeaveReason },
    /// A probe (`Register` with `probe`): the `Welcome`, nothing else
    /// (`None`: the device is revoked).
    Probe { peer: PeerId, reply: oneshot::Sender<Option<Welcome>> },
    /// `dartsync tracker admit DEVICE`.
    Admit { device: String, reply: oneshot::Sender<Result<AdminDone, String>> },
    /// A device joined with an invite code (`dartsync join`): admitted.
    Invited { peer: PeerId, name: String, reply: oneshot::Sender<Result<(), String>> },
    /// `dartsync tracker revoke DEVICE`.
    Revoke { device: String, reply: oneshot::Sender<Result<AdminDone, String>> },
    /// `dartsync status --tracker`.
    Status { id: PeerId, listen: String, reply: oneshot::Sender<TrackerStatus> },
    /// `dartsync tracker approve|reject [DEVICE]`.
    Brake { action: BrakeAction, device: Option<String>, reply: oneshot::Sender<Result<serde_json::Value, String>> },
}

/// A cheap-clone handle for sessions.
#[derive(Debug, Clone)]
pub(crate) struct ActorHandle {
    tx: mpsc::Sender<Command>,
    seq: watch::Receiver<u64>,
    devices: watch::Receiver<DeviceList>,
}

impl ActorHandle {
    /// Registers a peer; `None` when the actor is gone.
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        session: u64,
        seen_seq: u64,
        epoch: u64,
        name: String,
        link: Link,
    ) -> Option<RegisterReply> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Register { peer, addr, session, seen_seq, epoch, name, link, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The `Welcome` for a probe (`Some(None)`: the device is revoked);
    /// `None` when the actor is gone.
    pub async fn probe(&self, peer: PeerId) -> Option<Option<Welcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Probe { peer, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Admits a device (a name, an id or a unique id prefix).
    pub async fn admit(&self, device: String) -> Result<AdminDone, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Admit { device, reply }).await.map_err(|_| "the tracker is stopping".to_owned())?;
        rx.await.map_err(|_| "the tracker is stopping".to_owned())?
    }

    /// Admits a device that proved an invite code; `Err` says why not
    /// (revoked, or the tracker is stopping).
    pub async fn invited(&self, peer: PeerId, name: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Invited { peer, name, reply }).await.map_err(|_| "the tracker is stopping".to_owned())?;
        rx.await.map_err(|_| "the tracker is stopping".to_owned())?
    }

    /// Revokes a device (a name, an id or a unique id prefix).
    pub async fn revoke(&self, device: String) -> Result<AdminDone, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Revoke { device, reply }).await.map_err(|_| "the tracker is stopping".to_owned())?;
        rx.await.map_err(|_| "the tracker is stopping".to_owned())?
    }

    /// The tracker's status; `None` when the actor is gone.
    pub async fn status(&self, id: PeerId, listen: String) -> Option<TrackerStatus> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Status { id, listen, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Approves or rejects a held mass change; `None` when the actor is
    /// gone.
    pub async fn decide(
        &self,
        action: BrakeAction,
        device: Option<String>,
    ) -> Option<Result<serde_json::Value, String>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Brake { action, device, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Hands a message to the actor and waits until it is applied; `None`
    /// when the session is no longer current or the actor is gone.
    pub async fn message(
        &self,
        peer: PeerId,
        session: u64,
        msg: PeerMessage,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<Verdict> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Message { peer, session, msg, slot, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The next page; `None` when the session is no longer current or the
    /// actor is gone.
    pub async fn next_page(&self, peer: PeerId, session: u64) -> Option<Page> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::NextPage { peer, session, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Tells the actor a session ended.
    pub async fn left(&self, peer: PeerId, session: u64, why: LeaveReason) {
        let _ = self.tx.send(Command::Left { peer, session, why }).await;
    }

    /// A receiver of the committed global seq.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.clone()
    }

    /// A receiver of the device list.
    pub fn subscribe_devices(&self) -> watch::Receiver<DeviceList> {
        self.devices.clone()
    }
}

/// The state-owning task.
#[derive(Debug)]
pub(crate) struct Actor {
    state: State,
    store: Arc<Store>,
    /// The seq ceiling on disk.
    ceiling: u64,
    inbox: mpsc::Receiver<Command>,
    seq_tx: watch::Sender<u64>,
    devices_tx: watch::Sender<DeviceList>,
    /// Something that may change the device list happened since it was
    /// last computed.
    devices_dirty: bool,
    /// Closes each online peer's session (expiry, replacement, revocation,
    /// shutdown).
    links: HashMap<PeerId, Link>,
    /// Pending devices' sessions, waiting for `admit`.
    pending: HashMap<PeerId, PendingLink>,
    /// Replies held until the changes before them are committed.
    deferred: Vec<Deferred>,
    interval_ms: u64,
    piece_len: u32,
    /// Who may join.
    policy: AdmitPolicy,
    /// The mass-change brake, and its window (for messages).
    brake: Brake,
    brake_window: Duration,
    /// Peers already warned about a clock far ahead (once per run).
    clock_warned: std::collections::HashSet<PeerId>,
}

/// Seconds since the Unix epoch by the wall clock (0 if it is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The monotonic clock, through tokio so paused-time tests control it.
fn mono_now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    /// An actor over `state`, whose persisted seq ceiling is `ceiling`.
    pub fn new(
        state: State,
        store: Arc<Store>,
        ceiling: u64,
        interval: Duration,
        piece_len: u32,
        brake: BrakeConfig,
        policy: AdmitPolicy,
    ) -> (Actor, ActorHandle) {
        let (tx, inbox) = mpsc::channel(INBOX);
        let (seq_tx, seq) = watch::channel(state.seq());
        let (devices_tx, devices) = watch::channel(Arc::new(PublishedDevices::new(state.device_list())));
        let actor = Actor {
            state,
            store,
            ceiling,
            inbox,
            seq_tx,
            devices_tx,
            devices_dirty: false,
            links: HashMap::new(),
            pending: HashMap::new(),
            deferred: Vec::new(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            piece_len,
            policy,
            brake: Brake::new(brake),
            brake_window: brake.window,
            clock_warned: std::collections::HashSet::new(),
        };
        (actor, ActorHandle { tx, seq, devices })
    }

    /// Runs until `shutdown` is cancelled or a commit fails.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TrackerError> {
        let mut gc = tokio::time::interval(GC_PERIOD);
        gc.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The device list goes out at most once per period (which grows
        // with the sessions); changes in between wait for it.
        let mut devices_at = tokio::time::Instant::now();
        let mut collected = 0usize;
        let result = loop {
            let deadline = self.state.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                () = sleep_until(deadline) => self.expire(),
                () = sleep_until(self.brake.next_deadline()) => self.release_staged(),
                _ = gc.tick() => {
                    self.state.start_gc(unix_now());
                }
                () = tokio::time::sleep_until(devices_at), if self.devices_dirty => {
                    self.publish_devices();
                    devices_at = tokio::time::Instant::now() + devices_period(self.links.len());
                }
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break Ok(()),
                },
                // Idle: nothing but the GC slice below.
                () = std::future::ready(()), if self.state.gc_active() => {}
            }
            if self.state.gc_active() {
                let step = self.state.gc_step(GC_SLICE);
                collected += step.dropped.len();
                if step.done {
                    if collected > 0 {
                        tracing::info!("collected {collected} tombstones");
                    }
                    collected = 0;
                }
            }
            if let Err(e) = self.settle().await {
                break Err(e);
            }
        };
        for link in self.links.values() {
            link.close(false);
        }
        for pending in self.pending.values() {
            pending.link.close(false);
        }
        result
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register { peer, addr, session, seen_seq, epoch, name, link, reply } => {
                let arrival = Arrival { peer, addr, session, seen_seq, epoch };
                match self.state.arrive(peer, &name, self.policy, unix_now()) {
                    Ok(DeviceState::Admitted) => {
                        self.join(arrival, &name, link);
                        self.deferred.push(Deferred::Register(reply));
                    }
                    Ok(DeviceState::Pending) => {
                        let (admitted, rx) = oneshot::channel();
                        let label = self.device_label(peer);
                        let pending = PendingLink { arrival, name, link, admitted };
                        if let Some(old) = self.pending.insert(peer, pending) {
                            old.link.close(false);
                        }
                        self.state.set_pending_online(peer, Some(addr));
                        self.devices_dirty = true;
                        let what = format!("{label} waits for approval (from {addr})");
                        tracing::warn!(
                            "{what}: to let it sync, run `dartsync tracker admit {}` on this machine",
                            self.admin_arg(peer)
                        );
                        self.state.note_event(unix_now(), what);
                        let _ = reply.send(RegisterReply::Pending { interval_ms: self.interval_ms, admitted: rx });
                    }
                    Ok(DeviceState::Revoked) => {
                        tracing::info!("refused revoked device {} from {addr}", self.device_label(peer));
                        let _ = reply.send(RegisterReply::Revoked);
                    }
                    Err(e) => {
                        tracing::warn!("refused new device {} from {addr}: {e}", self.device_label(peer));
                        let _ = reply.send(RegisterReply::Refused(e.to_string()));
                    }
                }
            }
            Command::Probe { peer, reply } => {
                if self.state.device_state(peer) == Some(DeviceState::Revoked) {
                    let _ = reply.send(None);
                } else {
                    self.deferred.push(Deferred::Probe(reply));
                }
            }
            Command::Admit { device, reply } => {
                let _ = reply.send(self.admit(&device));
            }
            Command::Revoke { device, reply } => {
                let _ = reply.send(self.revoke(&device));
            }
            Command::Invited { peer, name, reply } => {
                let _ = reply.send(self.invited(peer, &name));
            }
            Command::Status { id, listen, reply } => {
                let mut status = self.state.tracker_status(id, listen, unix_now());
                status.held = self.held_changes();
                let _ = reply.send(status);
            }
            Command::Brake { action, device, reply } => {
                let _ = reply.send(self.decide(action, device.as_deref()));
            }
            Command::Message { peer, session, msg, slot, reply } => {
                if !self.state.is_current(peer, session) {
                    return;
                }
                self.state.touch(peer, mono_now());
                let verdict = match msg {
                    PeerMessage::Announce { records } => self.announce(peer, records),
                    PeerMessage::Have { path, version } => {
                        self.brake.settled(peer, &path);
                        if self.state.have(peer, &path, &version) {
                            tracing::trace!("{} now holds {path}", self.state.label(peer));
                        }
                        Verdict::Continue
                    }
                    PeerMessage::Report(report) => {
                        self.state.set_report(peer, report);
                        self.devices_dirty = true;
                        Verdict::Continue
                    }
                    PeerMessage::Sources { path, version } => match self.state.sources(peer, &path, &version) {
                        Some(holders) => Verdict::Answer(Box::new(TrackerMessage::Sources { path, version, holders })),
                        None => Verdict::Continue,
                    },
                    PeerMessage::KeepAlive | PeerMessage::Register(_) | PeerMessage::Goodbye => Verdict::Continue,
                };
                // The batch is applied: its slot goes back before the session hears.
                drop(slot);
                let _ = reply.send(verdict);
            }
            Command::NextPage { peer, session, reply } => {
                let mut page = self.state.next_page(peer, session);
                if let Some(page) = page.as_mut().filter(|p| !p.more) {
                    page.brake = self.brake.take_notices(peer);
                }
                let _ = reply.send(page);
            }
            Command::Left { peer, session, why } => {
                if self.state.is_current(peer, session) {
                    self.state.remove_peer(peer, unix_now());
                    self.devices_dirty = true;
                    if let Some(link) = self.links.remove(&peer) {
                        link.close(false);
                    }
                    let what = format!("{} left ({why})", self.state.label(peer));
                    tracing::info!("{what}");
                    self.state.note_event(unix_now(), what);
                } else if self.pending.get(&peer).is_some_and(|p| p.arrival.session == session) {
                    self.pending.remove(&peer);
                    self.state.set_pending_online(peer, None);
                    self.devices_dirty = true;
                    tracing::info!("{} left while waiting for approval ({why})", self.device_label(peer));
                }
            }
        }
    }

    fn expire(&mut self) {
        let silent = self.state.expiry_after();
        let now = mono_now();
        let links = &self.links;
        let heard = |peer: PeerId| links.get(&peer).and_then(|l| l.heard.when(now));
        for peer in self.state.expire(now, unix_now(), heard) {
            self.devices_dirty = true;
            if let Some(link) = self.links.remove(&peer) {
                link.close(false);
            }
            let what = format!("{} expired: no message for {} s", self.state.label(peer), silent.as_secs());
            tracing::info!("{what}");
            self.state.note_event(unix_now(), what);
        }
    }

    /// An admitted device joins the peer table (its `Welcome` goes out
    /// after the commit).
    fn join(&mut self, arrival: Arrival, name: &str, link: Link) {
        let Arrival { peer, addr, seen_seq, epoch, .. } = arrival;
        let reg = self.state.register(arrival, mono_now(), unix_now());
        self.state.set_name(peer, name);
        self.devices_dirty = true;
        let label = self.state.label(peer);
        if let Some(old) = self.links.insert(peer, link) {
            old.close(false);
            tracing::info!("{label} reconnected: its old session is closed");
        }
        if let Some(old) = self.pending.remove(&peer) {
            old.link.close(false);
            self.state.set_pending_online(peer, None);
        }
        self.state.note_event(unix_now(), format!("{label} registered from {addr}"));
        if reg.full {
            tracing::info!("{label} registered from {addr}; sending it the whole table");
        } else {
            tracing::info!("{label} registered from {addr}");
        }
        tracing::debug!(seen_seq, epoch = format_args!("{epoch:016x}"), "registration of {label}");
    }

    /// `name (shortid)` of any device, pending and revoked ones included.
    fn device_label(&self, peer: PeerId) -> String {
        match self.state.registry_name(peer) {
            Some(name) => format!("{name} ({})", peer.fmt_short()),
            None => self.state.label(peer),
        }
    }

    /// What to type after `dartsync tracker admit` for `peer`: its name
    /// when that names it alone, else its id.
    fn admin_arg(&self, peer: PeerId) -> String {
        match self.state.registry_name(peer) {
            Some(name) if self.state.resolve_device(name) == Ok(peer) && !name.contains(char::is_whitespace) => {
                name.to_owned()
            }
            Some(name) if self.state.resolve_device(name) == Ok(peer) => format!("'{name}'"),
            _ => peer.to_string(),
        }
    }

    /// `dartsync tracker admit`: a pending device with a session open
    /// proceeds at once, as if it had just registered.
    fn admit(&mut self, query: &str) -> Result<AdminDone, String> {
        let peer = self.state.resolve_device(query).map_err(|e| e.to_string())?;
        let now = unix_now();
        let before = self.state.admit_device(peer, now).ok_or_else(|| format!("no device {query:?}"))?;
        let label = self.device_label(peer);
        if before != DeviceState::Admitted {
            let what = match before {
                DeviceState::Revoked => format!("{label} admitted again (it was revoked)"),
                _ => format!("{label} admitted"),
            };
            self.became_admitted(peer, now, what);
        }
        Ok(self.done(peer, before))
    }

    /// `peer` is admitted now (`what` says how): logged, noted, its
    /// pending session (if one is open) proceeds as if it had just
    /// registered, and the device list goes out at once (peers serve it
    /// once their list says so).
    fn became_admitted(&mut self, peer: PeerId, now: u64, what: String) {
        tracing::info!("{what}");
        self.state.note_event(now, what);
        if let Some(pending) = self.pending.remove(&peer) {
            self.state.set_pending_online(peer, None);
            self.join(pending.arrival, &pending.name, pending.link);
            self.deferred.push(Deferred::Admitted(pending.admitted));
        }
        self.publish_devices();
    }

    /// `dartsync join` with a good code: the device is admitted before it
    /// ever registers (also under `--admit approve`; the code was the
    /// approval), unless it was revoked.
    fn invited(&mut self, peer: PeerId, name: &str) -> Result<(), String> {
        let now = unix_now();
        match self.state.invite_device(peer, name, now) {
            Err(_) => Err(format!(
                "this device ({}) was revoked; on the tracker's machine, `dartsync tracker admit {}` lets it back in",
                peer.fmt_short(),
                peer
            )),
            Ok(before) => {
                let what = format!("{name} ({}) joined with an invite code", peer.fmt_short());
                if before == Some(DeviceState::Admitted) {
                    tracing::info!("{what}");
                    self.state.note_event(now, what);
                } else {
                    self.became_admitted(peer, now, what);
                }
                Ok(())
            }
        }
    }

    /// `dartsync tracker revoke`: its sessions close at once (telling it
    /// why), its holdings go, and its registrations are refused.
    fn revoke(&mut self, query: &str) -> Result<AdminDone, String> {
        let peer = self.state.resolve_device(query).map_err(|e| e.to_string())?;
        let now = unix_now();
        let label = self.device_label(peer);
        let before = self.state.revoke_device(peer, now).ok_or_else(|| format!("no device {query:?}"))?;
        if let Some(link) = self.links.remove(&peer) {
            link.close(true);
        }
        if let Some(pending) = self.pending.remove(&peer) {
            pending.link.close(true);
        }
        if before != DeviceState::Revoked {
            // Peers learn whom to refuse from the device list: publish it
            // now, not at the next tick.
            self.publish_devices();
            let what = format!("{label} revoked");
            tracing::warn!(
                "{what}: its session is closed, its copies are no longer offered, its registrations are refused"
            );
            self.state.note_event(now, what);
        }
        Ok(self.done(peer, before))
    }

    fn done(&self, peer: PeerId, before: DeviceState) -> AdminDone {
        AdminDone {
            name: self.state.registry_name(peer).map_or_else(|| peer.fmt_short(), str::to_owned),
            id: peer,
            before,
            state: self.state.device_state(peer).unwrap_or_default(),
        }
    }

    /// Recomputes the device list and publishes it if it changed.
    fn publish_devices(&mut self) {
        self.devices_dirty = false;
        let list = self.state.device_list();
        self.devices_tx.send_if_modified(|current| {
            let changed = current.list != list;
            if changed {
                *current = Arc::new(PublishedDevices::new(list));
            }
            changed
        });
    }

    /// Commits pending changes, then publishes them.
    async fn settle(&mut self) -> Result<(), TrackerError> {
        let write = self.state.take_dirty();
        let seq = self.state.seq();
        let raise = (seq > self.ceiling).then(|| seq.saturating_add(SEQ_RESERVE));
        if !write.is_empty() || raise.is_some() {
            let store = self.store.clone();
            let epoch = self.state.epoch();
            match tokio::task::spawn_blocking(move || store.commit(epoch, &write, raise)).await {
                Ok(result) => result.map_err(TrackerError::Store)?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(TrackerError::Interrupted),
            }
            if let Some(ceiling) = raise {
                self.ceiling = ceiling;
            }
        }
        self.seq_tx.send_if_modified(|current| {
            let changed = *current != seq;
            *current = seq;
            changed
        });
        let welcome =
            Welcome { interval_ms: self.interval_ms, piece_len: self.piece_len, epoch: self.state.epoch(), seq };
        for reply in self.deferred.drain(..) {
            let _ = match reply {
                Deferred::Register(reply) => reply.send(RegisterReply::Welcome(welcome.clone())).map_err(drop),
                Deferred::Probe(reply) => reply.send(Some(welcome.clone())).map_err(drop),
                Deferred::Admitted(reply) => reply.send(welcome.clone()).map_err(drop),
            };
        }
        Ok(())
    }
}

fn log_outcome(state: &State, peer: PeerId, outcome: &Outcome) {
    let peer = state.label(peer);
    match outcome {
        Outcome::Accepted { path, seq } => tracing::debug!("accepted {path} from {peer} at seq {seq}"),
        Outcome::Merged { path, seq } => {
            tracing::debug!("merged concurrent equal versions of {path} from {peer} at seq {seq}")
        }
        Outcome::Conflict { path, seq, winner, copy: Some(copy), .. } => {
            let winner = state.label(*winner);
            tracing::info!("conflict on {path} (seq {seq}): {winner}'s version stays, the other is kept as {copy}")
        }
        Outcome::Conflict { path, seq, winner, copy: None, loser_deleted: true } => {
            let winner = state.label(*winner);
            tracing::info!("conflict on {path} (seq {seq}): {winner}'s edit wins over a concurrent deletion")
        }
        Outcome::Conflict { path, winner, copy: None, loser_deleted: false, .. } => {
            let winner = state.label(*winner);
            tracing::warn!("conflict on {path}: {winner}'s version stays; no free name to keep the other one")
        }
        Outcome::Holder { path, .. } => tracing::trace!("{peer} holds {path}"),
        Outcome::Unchanged { .. } => {}
        Outcome::Stale { path } => tracing::debug!("ignored stale {path} from {peer}"),
        Outcome::Unresolvable { path, error } => {
            tracing::warn!("ignored {path} from {peer}: concurrent with the global version, and {error}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_list_period_grows_with_the_sessions() {
        assert_eq!(devices_period(0), DEVICES_EVERY);
        assert_eq!(devices_period(50), DEVICES_EVERY);
        assert_eq!(devices_period(51), DEVICES_EVERY * 2);
        assert_eq!(devices_period(1000), Duration::from_secs(5));
    }
}
