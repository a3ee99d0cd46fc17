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
//! Not here: the rules (`state`), sockets (`session`), the database (`store`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dartsync_shared::PeerId;
use dartsync_shared::proto::ptp::{DeviceInfo, PeerMessage, Welcome};
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
/// if it differs, published to every session.
const DEVICES_EVERY: Duration = Duration::from_millis(250);

/// The device list as published to sessions.
pub(crate) type DeviceList = Arc<Vec<DeviceInfo>>;

/// What the actor says about a session's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Applied (or harmlessly ignored): read the next message.
    Continue,
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
        /// Cancelled by the actor to close the session (expiry, replacement).
        token: CancellationToken,
        reply: oneshot::Sender<Welcome>,
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
    /// A probe (`Register` with `probe`): the `Welcome`, nothing else.
    Probe { reply: oneshot::Sender<Welcome> },
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
        token: CancellationToken,
    ) -> Option<Welcome> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Register { peer, addr, session, seen_seq, epoch, name, token, reply }).await.ok()?;
        rx.await.ok()
    }

    /// The `Welcome` for a probe; `None` when the actor is gone.
    pub async fn probe(&self) -> Option<Welcome> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Probe { reply }).await.ok()?;
        rx.await.ok()
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
    /// Cancels each online peer's session (expiry, replacement, shutdown).
    links: HashMap<PeerId, CancellationToken>,
    /// `Register` replies held until the registration is committed.
    deferred: Vec<oneshot::Sender<Welcome>>,
    interval_ms: u64,
    piece_len: u32,
    /// The mass-change brake, and its window (for messages).
    brake: Brake,
    brake_window: Duration,
    /// Peers already warned about a clock far ahead (once per run).
    clock_warned: std::collections::HashSet<PeerId>,
}

/// Seconds since the Unix epoch by the wall clock (0 if it is before 1970).
fn unix_now() -> u64 {
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
    ) -> (Actor, ActorHandle) {
        let (tx, inbox) = mpsc::channel(INBOX);
        let (seq_tx, seq) = watch::channel(state.seq());
        let (devices_tx, devices) = watch::channel(Arc::new(state.device_list()));
        let actor = Actor {
            state,
            store,
            ceiling,
            inbox,
            seq_tx,
            devices_tx,
            devices_dirty: false,
            links: HashMap::new(),
            deferred: Vec::new(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            piece_len,
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
        let mut devices = tokio::time::interval(DEVICES_EVERY);
        devices.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                _ = devices.tick(), if self.devices_dirty => self.publish_devices(),
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
        for token in self.links.values() {
            token.cancel();
        }
        result
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register { peer, addr, session, seen_seq, epoch, name, token, reply } => {
                let arrival = Arrival { peer, addr, session, seen_seq, epoch };
                let reg = self.state.register(arrival, mono_now(), unix_now());
                self.state.set_name(peer, &name);
                self.devices_dirty = true;
                let label = self.state.label(peer);
                if let Some(old) = self.links.insert(peer, token) {
                    old.cancel();
                    tracing::info!("{label} reconnected: its old session is closed");
                }
                self.state.note_event(unix_now(), format!("{label} registered from {addr}"));
                if reg.full {
                    tracing::info!("{label} registered from {addr}; sending it the whole table");
                } else {
                    tracing::info!("{label} registered from {addr}");
                }
                tracing::debug!(seen_seq, epoch = format_args!("{epoch:016x}"), "registration of {label}");
                self.deferred.push(reply);
            }
            Command::Probe { reply } => self.deferred.push(reply),
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
                    if let Some(token) = self.links.remove(&peer) {
                        token.cancel();
                    }
                    let what = format!("{} left ({why})", self.state.label(peer));
                    tracing::info!("{what}");
                    self.state.note_event(unix_now(), what);
                }
            }
        }
    }

    fn expire(&mut self) {
        let silent = self.state.expiry_after();
        for peer in self.state.expire(mono_now(), unix_now()) {
            self.devices_dirty = true;
            if let Some(token) = self.links.remove(&peer) {
                token.cancel();
            }
            let what = format!("{} expired: no message for {} s", self.state.label(peer), silent.as_secs());
            tracing::info!("{what}");
            self.state.note_event(unix_now(), what);
        }
    }

    /// Recomputes the device list and publishes it if it changed.
    fn publish_devices(&mut self) {
        self.devices_dirty = false;
        let list = self.state.device_list();
        self.devices_tx.send_if_modified(|current| {
            let changed = **current != list;
            if changed {
                *current = Arc::new(list);
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
        for reply in self.deferred.drain(..) {
            let _ = reply.send(Welcome {
                interval_ms: self.interval_ms,
                piece_len: self.piece_len,
                epoch: self.state.epoch(),
                seq,
            });
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
