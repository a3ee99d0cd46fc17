//! The status model: what `dartsync status` shows, as the peers and the
//! tracker report it over their control sockets ([`crate::control`]).
//!
//! These types are the documented JSON schema (version
//! [`STATUS_SCHEMA`]; see `docs/status.md`). Fields are only ever added
//! within one schema version; a removal or a change of meaning bumps it.
//! Times are Unix seconds (UTC); sizes are bytes; ids are the
//! 26-character peer ids, names the devices' names.

use serde::{Deserialize, Serialize};

pub use crate::device::DeviceState;

/// The version of the status JSON schema.
pub const STATUS_SCHEMA: u32 = 1;

/// At most this many waiting paths, transfers and conflicts are listed
/// in one status (the totals are always exact).
pub const MAX_LISTED: usize = 100;

/// The state of one synced folder, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderState {
    /// The tracker revoked this device: it syncs nothing until the
    /// tracker's operator admits it again.
    Revoked,
    /// The tracker holds this device for approval (`admit = "approve"`):
    /// nothing is sent or received until `dartsync tracker admit` on the
    /// tracker's machine.
    PendingApproval,
    /// The tracker cannot be reached: local changes wait, nothing new
    /// arrives.
    TrackerUnreachable,
    /// Files are being fetched or installed, or local changes are being
    /// announced.
    Syncing,
    /// Nothing is in flight, but some paths cannot take their newest
    /// version (listed in `waiting` with the reason).
    Waiting,
    /// Every path holds the cluster's newest version.
    UpToDate,
}

impl FolderState {
    /// The word the human output starts with.
    pub fn label(self) -> &'static str {
        match self {
            FolderState::Revoked => "Revoked",
            FolderState::PendingApproval => "Waiting for approval",
            FolderState::TrackerUnreachable => "Tracker unreachable",
            FolderState::Syncing => "Syncing",
            FolderState::Waiting => "Waiting",
            FolderState::UpToDate => "Up to date",
        }
    }
}

/// A peer's connection to its tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerLink {
    /// The tracker address as configured (`host:port`).
    pub addr: String,
    /// Connected and registered right now.
    pub connected: bool,
    /// When the link last changed state (connected or lost), if ever.
    pub since: Option<u64>,
    /// Why the last attempt failed, while not connected.
    pub error: Option<String>,
    /// The address was found on the LAN (no `--tracker-addr`); while
    /// none is found yet, `addr` is empty and `error` says the peer is
    /// looking.
    #[serde(default)]
    pub discovered: bool,
}

/// One device of the cluster, as a peer learns it from the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device name (hostname by default, `--name`).
    pub name: String,
    /// The peer id.
    pub id: String,
    /// Registered with the tracker right now.
    pub online: bool,
    /// It has applied every change the tracker knows and nothing waits.
    pub up_to_date: bool,
    /// When the tracker last heard from it (None if never).
    pub last_seen: Option<u64>,
    /// This is the device answering.
    #[serde(default)]
    pub this_device: bool,
    /// Admitted, pending or revoked (older peers: admitted).
    #[serde(default)]
    pub state: DeviceState,
}

/// What is left to fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Files downloading or queued.
    pub files: u64,
    /// Bytes of them not yet on disk.
    pub bytes: u64,
    /// Current download rate, bytes per second (over the last seconds).
    pub rate: u64,
    /// Seconds left at that rate, when there is a rate.
    pub eta_secs: Option<u64>,
}

/// One file being downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The path.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Bytes already in place (fetched, copied from local files, resumed).
    pub done: u64,
    /// Peers it is being fetched from.
    pub sources: u32,
    /// Seconds since it started.
    pub elapsed_secs: u64,
}

/// A path that cannot take its newest version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingPath {
    /// The path.
    pub path: String,
    /// Why, and what would fix it.
    pub reason: String,
}

/// A conflict: two devices changed one path concurrently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The path whose name the winner kept.
    pub path: String,
    /// Where the other version is kept (a `.sync-conflict-` copy), or
    /// None when an edit won over a delete and nothing was copied.
    pub copy: Option<String>,
    /// The device whose version kept the name.
    pub winner: String,
    /// The device whose version was moved to the copy.
    pub loser: String,
    /// When the tracker resolved it.
    pub at: u64,
}

/// `dartsync status` of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    /// The folder's state.
    pub state: FolderState,
    /// The synced folder.
    pub folder: String,
    /// This device's name.
    pub name: String,
    /// This device's peer id.
    pub id: String,
    /// The tracker link.
    pub tracker: TrackerLink,
    /// Every device the tracker knows, this one included.
    pub devices: Vec<Device>,
    /// What is left to fetch.
    pub pending: Pending,
    /// Downloads in progress (at most [`MAX_LISTED`]).
    pub transfers: Vec<Transfer>,
    /// Paths that wait, with the reason (at most [`MAX_LISTED`]).
    pub waiting: Vec<WaitingPath>,
    /// How many paths wait in all.
    pub waiting_total: u64,
    /// Recent conflicts this device took part in, newest first.
    pub conflicts: Vec<Conflict>,
    /// Local changes the tracker has not been told yet.
    pub unannounced: u64,
    /// Files (not folders or deleted paths) in the cluster's table.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Bytes this peer fetched from other peers (finished downloads) since
    /// it started.
    #[serde(default)]
    pub received_bytes: u64,
    /// The last thing that happened to the folder, if anything yet.
    #[serde(default)]
    pub last_event: Option<LastEvent>,
    /// Recent events, newest first (at most [`MAX_EVENTS`]).
    #[serde(default)]
    pub events: Vec<LastEvent>,
    /// This peer's web dashboard, when it serves one.
    #[serde(default)]
    pub dashboard: Option<String>,
    /// The folder is receive-only: local changes are never announced.
    #[serde(default)]
    pub receive_only: bool,
    /// Receive-only: local changes kept here and not sent (at most
    /// [`MAX_LISTED`]); `dartsync revert` puts back the cluster's version.
    #[serde(default)]
    pub local_changes: Vec<String>,
    /// Receive-only: how many local changes in all.
    #[serde(default)]
    pub local_changes_total: u64,
    /// This device's recent changes are held by the tracker's mass-change
    /// brake, waiting for `dartsync tracker approve` or `reject` there.
    #[serde(default)]
    pub held_by_tracker: Option<HeldByTracker>,
}

/// This device's mass change, held by the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldByTracker {
    /// Deletions counted when the brake tripped.
    pub deletes: u64,
    /// Overwrites counted then.
    pub overwrites: u64,
    /// When this device heard of it (Unix seconds).
    pub since: u64,
}

/// Events a status lists at most.
pub const MAX_EVENTS: usize = 20;

/// Something that happened to a folder ("synced docs/a.txt").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// When (Unix seconds).
    pub at: u64,
    /// What, in a few words.
    pub what: String,
}

/// One device as the tracker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerDevice {
    /// The device name.
    pub name: String,
    /// The peer id.
    pub id: String,
    /// Its piece server, while online.
    pub addr: Option<String>,
    /// Registered right now.
    pub online: bool,
    /// When the tracker last heard from it.
    pub last_seen: Option<u64>,
    /// It reported nothing pending and has seen every change.
    pub up_to_date: bool,
    /// Changes of the table it has not acknowledged yet.
    pub behind: u64,
    /// Files it reported still to fetch.
    pub pending_files: u64,
    /// Bytes it reported still to fetch.
    pub pending_bytes: u64,
    /// Paths it reported waiting.
    pub waiting: u64,
    /// Its download rate as it last reported it, bytes per second.
    #[serde(default)]
    pub rate: u64,
    /// Admitted, pending or revoked (older trackers: admitted).
    #[serde(default)]
    pub state: DeviceState,
}

/// `dartsync status --tracker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerStatus {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    /// The tracker's id.
    pub id: String,
    /// Where it listens.
    pub listen: String,
    /// Its epoch, 16 hex digits.
    pub epoch: String,
    /// Its current seq.
    pub seq: u64,
    /// Records in the table (tombstones included).
    pub records: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Every known device, online first.
    pub devices: Vec<TrackerDevice>,
    /// Recent conflicts, newest first (at most [`MAX_LISTED`]).
    pub conflicts: Vec<Conflict>,
    /// Recent events (devices coming and going, conflicts), newest first
    /// (at most [`MAX_EVENTS`]).
    #[serde(default)]
    pub events: Vec<LastEvent>,
    /// Mass changes held by the brake, waiting for `dartsync tracker
    /// approve` or `reject`, oldest first.
    #[serde(default)]
    pub held: Vec<HeldChange>,
}

/// A device's mass change held by the tracker's brake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldChange {
    /// The device's name.
    pub device: String,
    /// Its peer id.
    pub id: String,
    /// Deletions of live files counted so far.
    pub deletes: u64,
    /// Overwrites of live files counted so far.
    pub overwrites: u64,
    /// Records held (the latest per path).
    pub records: u64,
    /// When the brake tripped (Unix seconds).
    pub since: u64,
}

impl PeerStatus {
    /// The exit code of `dartsync status`: 0 up to date, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.state != FolderState::UpToDate)
    }
}
