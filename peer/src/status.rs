//! The peer's status board: what `dartsync status` shows, kept up to date
//! by the tracker client (the link), the engine (pending work, transfers,
//! waiting paths, devices, conflicts) and read by the control socket.
//!
//! A leaf module: it knows the status model of `dartsync_shared::status`
//! and the downloader's progress counters, nothing of the engine. Writers
//! replace their part under a short lock; a reader builds a
//! [`PeerStatus`] from it, reading live transfer progress at that moment
//! (so two reads a second apart show the bytes moving even between engine
//! updates).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dartsync_shared::device::DeviceState;
use dartsync_shared::proto::ptp::DeviceInfo;
use dartsync_shared::status::{
    Conflict, Device, FolderState, HeldByTracker, LastEvent, MAX_EVENTS, MAX_LISTED, PeerStatus, Pending,
    STATUS_SCHEMA, TrackerLink, Transfer, WaitingPath,
};
use dartsync_shared::{PeerId, ShortId};
use parking_lot::Mutex;

use crate::transfer::DownloadProgress;

/// Conflicts this device lost that status lists.
const MAX_CONFLICTS: usize = 20;
/// The download rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch by the wall clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The folder's state from its parts, in order of precedence.
pub(crate) fn folder_state(connected: bool, busy: bool, waiting: u64) -> FolderState {
    if !connected {
        FolderState::TrackerUnreachable
    } else if busy {
        FolderState::Syncing
    } else if waiting > 0 {
        FolderState::Waiting
    } else {
        FolderState::UpToDate
    }
}

/// One download in progress, as the engine hands it to the board.
#[derive(Debug, Clone)]
pub(crate) struct TransferView {
    /// The path.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Live counters of the download.
    pub progress: Arc<DownloadProgress>,
    /// When it started.
    pub started: Instant,
}

/// The engine's part of the status.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineView {
    /// Work in flight: catching up with the tracker, downloads running or
    /// queued, paths to reconsider, changes not yet announced.
    pub busy: bool,
    /// Files downloading or queued.
    pub pending_files: u64,
    /// Bytes of the queued (not yet started) downloads.
    pub queued_bytes: u64,
    /// Downloads running (at most [`MAX_LISTED`] are kept).
    pub transfers: Vec<TransferView>,
    /// Waiting paths (at most [`MAX_LISTED`]).
    pub waiting: Vec<WaitingPath>,
    /// All waiting paths.
    pub waiting_total: u64,
    /// Local changes the tracker has not been told yet.
    pub unannounced: u64,
    /// Files in the cluster's table, and their size.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Bytes downloaded by finished transfers since start (for the rate).
    pub finished_bytes: u64,
    /// The folder is receive-only.
    pub receive_only: bool,
    /// Receive-only: local changes kept and not sent (at most
    /// [`MAX_LISTED`]), and how many in all.
    pub local_changes: Vec<String>,
    /// All of them.
    pub local_changes_total: u64,
}

#[derive(Debug)]
struct Board {
    folder: String,
    name: String,
    id: PeerId,
    tracker: TrackerLink,
    /// What the tracker last said about this device.
    admission: DeviceState,
    devices: Vec<DeviceInfo>,
    engine: EngineView,
    conflicts: VecDeque<Conflict>,
    /// Recent events, newest first.
    events: VecDeque<LastEvent>,
    /// This peer's dashboard URL.
    dashboard: Option<String>,
    /// This device's changes held by the tracker's brake.
    held: Option<HeldByTracker>,
    /// (when, bytes in place across all downloads) samples for the rate.
    samples: VecDeque<(Instant, u64)>,
}

/// The link is down (or not up yet) because of `why`; `since` moves only
/// when it goes down (or on the first failure).
fn link_failed(b: &mut Board, why: String) {
    if b.tracker.connected || b.tracker.since.is_none() {
        b.tracker.since = Some(unix_now());
    }
    b.tracker.connected = false;
    b.tracker.error = Some(why);
}

/// The shared board (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct StatusBoard {
    inner: Arc<Mutex<Board>>,
}

impl StatusBoard {
    /// A board for `folder`, this device `name`/`id`, tracker `addr`.
    pub fn new(folder: &Path, name: String, id: PeerId, tracker_addr: String) -> StatusBoard {
        let board = Board {
            folder: folder.display().to_string(),
            name,
            id,
            tracker: TrackerLink { addr: tracker_addr, connected: false, since: None, error: None, discovered: false },
            admission: DeviceState::Admitted,
            devices: Vec::new(),
            engine: EngineView { busy: true, ..EngineView::default() },
            conflicts: VecDeque::new(),
            events: VecDeque::new(),
            dashboard: None,
            held: None,
            samples: VecDeque::new(),
        };
        StatusBoard { inner: Arc::new(Mutex::new(board)) }
    }

    /// The tracker session is up.
    pub fn tracker_connected(&self) {
        let mut b = self.inner.lock();
        b.admission = DeviceState::Admitted;
        b.tracker.connected = true;
        b.tracker.since = Some(unix_now());
        b.tracker.error = None;
    }

    /// The tracker address changed (found on the LAN when `discovered`).
    pub fn set_tracker_addr(&self, addr: String, discovered: bool) {
        let mut b = self.inner.lock();
        b.tracker.addr = addr;
        b.tracker.discovered = discovered;
    }

    /// The peer is looking for its tracker on the LAN (`why` says so).
    pub fn tracker_looking(&self, why: String) {
        let mut b = self.inner.lock();
        b.tracker.discovered = true;
        link_failed(&mut b, why);
    }

    /// A session failed or ended; `since` moves only when the link goes
    /// down (or the first attempt fails), not at every retry.
    pub fn tracker_failed(&self, why: String) {
        let mut b = self.inner.lock();
        link_failed(&mut b, why);
    }

    /// The tracker says this device is pending or revoked (or, with
    /// `Admitted`, no longer so); true when that is news.
    pub fn set_admission(&self, state: DeviceState) -> bool {
        let mut b = self.inner.lock();
        std::mem::replace(&mut b.admission, state) != state
    }

    /// The tracker's latest device list.
    pub fn set_devices(&self, devices: Vec<DeviceInfo>) {
        self.inner.lock().devices = devices;
    }

    /// The name of the device whose version-vector id is `short` (this
    /// one included), if the tracker's device list names it.
    pub fn device_name(&self, short: ShortId) -> Option<String> {
        let b = self.inner.lock();
        if b.id.short() == short {
            return Some(b.name.clone());
        }
        b.devices.iter().find(|d| d.peer_id.short() == short && !d.name.is_empty()).map(|d| d.name.clone())
    }

    /// A conflict this device's version lost.
    pub fn add_conflict(&self, conflict: Conflict) {
        let mut b = self.inner.lock();
        if b.conflicts.len() == MAX_CONFLICTS {
            b.conflicts.pop_back();
        }
        b.conflicts.push_front(conflict);
    }

    /// Something happened to the folder ("synced docs/a.txt").
    pub fn event(&self, what: String) {
        let mut b = self.inner.lock();
        if b.events.len() == MAX_EVENTS {
            b.events.pop_back();
        }
        b.events.push_front(LastEvent { at: unix_now(), what });
    }

    /// The tracker holds this device's mass change (`None`: no longer).
    pub fn set_held(&self, held: Option<HeldByTracker>) {
        self.inner.lock().held = held;
    }

    /// The dashboard this peer serves.
    pub fn set_dashboard(&self, url: String) {
        self.inner.lock().dashboard = Some(url);
    }

    /// The dashboard's URL, if this peer serves one.
    pub fn dashboard(&self) -> Option<String> {
        self.inner.lock().dashboard.clone()
    }

    /// The current download rate, bytes per second.
    pub fn rate(&self) -> u64 {
        Self::rate_of(&self.inner.lock())
    }

    /// The engine's latest view; also samples the download rate.
    pub fn publish(&self, view: EngineView) {
        let now = Instant::now();
        let moved = view.finished_bytes + view.transfers.iter().map(|t| t.progress.done()).sum::<u64>();
        let mut b = self.inner.lock();
        b.samples.push_back((now, moved));
        while b.samples.front().is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW) {
            b.samples.pop_front();
        }
        b.engine = view;
    }

    /// Bytes per second over the last [`RATE_WINDOW`].
    fn rate_of(b: &Board) -> u64 {
        match (b.samples.front(), b.samples.back()) {
            (Some((t0, v0)), Some((t1, v1))) if t1 > t0 => {
                let secs = t1.duration_since(*t0).as_secs_f64();
                (v1.saturating_sub(*v0) as f64 / secs) as u64
            }
            _ => 0,
        }
    }

    /// What `dartsync status` shows right now.
    pub fn snapshot(&self) -> PeerStatus {
        let b = self.inner.lock();
        let e = &b.engine;
        let transfers: Vec<Transfer> = e
            .transfers
            .iter()
            .take(MAX_LISTED)
            .map(|t| Transfer {
                path: t.path.clone(),
                size: t.size,
                done: t.progress.done().min(t.size),
                sources: t.progress.sources(),
                elapsed_secs: t.started.elapsed().as_secs(),
            })
            .collect();
        let left: u64 = e.queued_bytes + transfers.iter().map(|t| t.size - t.done).sum::<u64>();
        let rate = Self::rate_of(&b);
        let pending = Pending {
            files: e.pending_files,
            bytes: left,
            rate,
            eta_secs: (rate > 0 && left > 0).then(|| left.div_ceil(rate)),
        };
        let my_id = b.id;
        let devices = b
            .devices
            .iter()
            .map(|d| Device {
                name: if d.name.is_empty() { d.peer_id.fmt_short() } else { d.name.clone() },
                id: d.peer_id.to_string(),
                online: d.online,
                up_to_date: d.up_to_date,
                last_seen: if d.online { Some(unix_now()) } else { (d.last_seen > 0).then_some(d.last_seen) },
                this_device: d.peer_id == my_id,
                state: d.state,
            })
            .collect();
        PeerStatus {
            schema: STATUS_SCHEMA,
            state: match b.admission {
                DeviceState::Revoked => FolderState::Revoked,
                DeviceState::Pending => FolderState::PendingApproval,
                DeviceState::Admitted => folder_state(b.tracker.connected, e.busy, e.waiting_total),
            },
            folder: b.folder.clone(),
            name: b.name.clone(),
            id: b.id.to_string(),
            tracker: b.tracker.clone(),
            devices,
            pending,
            transfers,
            waiting: e.waiting.clone(),
            waiting_total: e.waiting_total,
            conflicts: b.conflicts.iter().cloned().collect(),
            unannounced: e.unannounced,
            files: e.files,
            bytes: e.bytes,
            received_bytes: e.finished_bytes,
            last_event: b.events.front().cloned(),
            events: b.events.iter().cloned().collect(),
            dashboard: b.dashboard.clone(),
            receive_only: e.receive_only,
            local_changes: e.local_changes.clone(),
            local_changes_total: e.local_changes_total,
            held_by_tracker: b.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> StatusBoard {
        StatusBoard::new(Path::new("/f"), "laptop".into(), PeerId([1; 16]), "pi:7373".into())
    }

    #[test]
    fn states_follow_their_precedence() {
        assert_eq!(folder_state(false, true, 3), FolderState::TrackerUnreachable);
        assert_eq!(folder_state(true, true, 3), FolderState::Syncing);
        assert_eq!(folder_state(true, false, 3), FolderState::Waiting);
        assert_eq!(folder_state(true, false, 0), FolderState::UpToDate);
    }

    #[test]
    fn pending_and_revoked_come_before_every_other_state() {
        let b = board();
        b.tracker_connected();
        b.publish(EngineView::default());
        assert!(b.set_admission(DeviceState::Pending));
        assert!(!b.set_admission(DeviceState::Pending), "no news the second time");
        assert_eq!(b.snapshot().state, FolderState::PendingApproval);
        b.set_admission(DeviceState::Revoked);
        b.tracker_failed("revoked".into());
        assert_eq!(b.snapshot().state, FolderState::Revoked);
        b.tracker_connected();
        assert_eq!(b.snapshot().state, FolderState::UpToDate);
    }

    #[test]
    fn the_link_remembers_when_it_went_down_not_each_retry() {
        let b = board();
        assert_eq!(b.snapshot().state, FolderState::TrackerUnreachable);
        b.tracker_connected();
        b.publish(EngineView::default());
        assert_eq!(b.snapshot().state, FolderState::UpToDate);
        assert_eq!(b.snapshot().last_event, None);
        b.event("synced a.txt".into());
        assert_eq!(b.snapshot().last_event.map(|e| e.what).as_deref(), Some("synced a.txt"));
        b.tracker_failed("connection refused".into());
        let since = b.snapshot().tracker.since;
        b.tracker_failed("connection refused again".into());
        let s = b.snapshot();
        assert_eq!(
            (s.state, s.tracker.since, s.tracker.error.as_deref()),
            (FolderState::TrackerUnreachable, since, Some("connection refused again"))
        );
    }

    #[test]
    fn pending_bytes_read_live_progress() {
        let b = board();
        b.tracker_connected();
        let progress = Arc::new(DownloadProgress::default());
        let view = EngineView {
            busy: true,
            pending_files: 2,
            queued_bytes: 100,
            transfers: vec![TransferView {
                path: "a".into(),
                size: 50,
                progress: progress.clone(),
                started: Instant::now(),
            }],
            ..EngineView::default()
        };
        b.publish(view);
        assert_eq!(b.snapshot().pending.bytes, 150);
        progress.add(20);
        let s = b.snapshot();
        assert_eq!((s.state, s.pending.files, s.pending.bytes), (FolderState::Syncing, 2, 130));
        assert_eq!(s.transfers[0].done, 20);
    }

    #[test]
    fn this_device_is_marked_and_conflicts_are_bounded() {
        let b = board();
        b.set_devices(vec![
            DeviceInfo {
                peer_id: PeerId([1; 16]),
                name: "laptop".into(),
                online: true,
                up_to_date: true,
                last_seen: 0,
                state: DeviceState::Admitted,
            },
            DeviceInfo {
                peer_id: PeerId([2; 16]),
                name: String::new(),
                online: false,
                up_to_date: false,
                last_seen: 7,
                state: DeviceState::Revoked,
            },
        ]);
        for n in 0..30 {
            b.add_conflict(Conflict {
                path: format!("f{n}"),
                copy: None,
                winner: "x".into(),
                loser: "laptop".into(),
                at: n,
            });
        }
        let s = b.snapshot();
        assert!(s.devices[0].this_device && !s.devices[1].this_device);
        assert_eq!(s.devices[1].name, PeerId([2; 16]).fmt_short());
        assert_eq!(s.devices[1].last_seen, Some(7));
        assert_eq!(s.conflicts.len(), MAX_CONFLICTS);
        assert_eq!(s.conflicts[0].path, "f29");
    }
}
