//! The sync engine: the peer's main loop, and the only place that changes
//! the synced folder on behalf of the cluster.
//!
//! One closed [`Event`] enum lists every trigger: a local change from the
//! scanner, a tracker event (connection, delta), a finished download, a
//! retry tick. For each path the engine compares three things — the
//! global record (from deltas), the index (what the peer last wrote or
//! announced) and the disk — with the pure [`plan`] function, then carries
//! out the resulting [`Action`].
//!
//! Invariants:
//! - A file becomes visible only whole and verified: downloads land in
//!   `.dartsync/tmp` and are renamed into place.
//! - The engine never overwrites or deletes a file that differs from the
//!   index (an edit not yet announced), nor one whose indexed version is not
//!   dominated by the incoming one: it asks the scanner to announce the
//!   local version and lets the tracker decide.
//! - Replaced and deleted files go to the version history, never away.
//! - One download per path at a time; a newer version cancels the older.
//! - The tracker pages new holders (a few) but no departure: a device the
//!   device list shows gone leaves every holder list here, and a path
//!   waiting or queued that it leaves with no holder asks the tracker for
//!   the holders online now (`Sources`), as does a download that finds
//!   none of its holders able to deliver (once per failure, so at the pace
//!   of the path's backoff).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dartsync_shared::human::{plural, size};
use dartsync_shared::path::case_fold_key;
use dartsync_shared::proto::ptp::{ConflictNotice, Delta, DeviceInfo, Holder, PeerReport};
use dartsync_shared::status::{Conflict, FolderState, MAX_LISTED, WaitingPath};
use dartsync_shared::{ChunkInfo, FileRecord, PeerId, RelPath, VersionVector};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deadlines::Deadlines;
use crate::local::LocalState;
use crate::local::commit::Gated;
use crate::status::{EngineView, StatusBoard, TransferView, folder_state};
use crate::sync::apply::Applier;
use crate::sync::case_names::CaseNames;
use crate::sync::error::ApplyError;
use crate::sync::history::{BeforeKeep, History};
use crate::sync::index_source::IndexSource;
use crate::sync::install::{Installed, Installer};
use crate::sync::plan::{Action, plan};
use crate::sync::tracker_client::{ClientCommand, TrackerClient, TrackerEvent};
use crate::sync::waiting::{Parked, Reason, Waiting};
use crate::transfer::{ChunkSource, DownloadError, DownloadJob, DownloadOutcome, DownloadProgress, Downloader};

mod brake_notice;
mod global;
mod look;
mod queued;
mod receive_only;
mod release;
mod slots;

use global::{GlobalEntry, GlobalTable};
use look::RoundLook;
use queued::Queued;
pub use receive_only::EngineCommand;
use receive_only::LocalEdits;
use release::MemoryRelease;
pub use release::ReleaseFn;
use slots::FetchSlots;

/// The summary of waiting paths is logged when it changed and at least
/// this long after the last one...
const SUMMARY_MIN_GAP: Duration = Duration::from_secs(60);
/// ...and, while paths keep waiting, again after this long.
const SUMMARY_REPEAT: Duration = Duration::from_secs(15 * 60);
/// How often timers (retries, re-checks) are looked at.
const TICK: Duration = Duration::from_millis(250);
/// After the engine writes a path, the scanner re-checks it this much
/// later: a user's delete of a file we just wrote may be looked at before
/// our write was recorded, and then seen as nothing new.
const RECHECK_AFTER: Duration = Duration::from_millis(800);
/// Local changes announced in one batch at most.
const ANNOUNCE_BATCH: usize = 1024;
/// How long local changes are gathered into one announcement after the
/// first (a small part of the edit-to-sync latency).
const ANNOUNCE_GATHER: Duration = Duration::from_millis(5);
/// How long an announcement may wait for the tracker to send it back in a
/// delta before the engine stops counting it as in flight (the tracker
/// dropped it: a refused record, or a version it already had).
const ECHO_WAIT: Duration = Duration::from_secs(30);
/// A download running longer than this logs its progress, every this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Reports to the tracker are sent at most this often.
const REPORT_GAP: Duration = Duration::from_millis(250);
/// The status board is refreshed at most this often (and on every tick).
const PUBLISH_GAP: Duration = Duration::from_millis(200);

/// Every trigger of the main loop.
#[derive(Debug)]
enum Event {
    Local(FileRecord),
    Tracker(TrackerEvent),
    /// Finished downloads: the first, and every other that finished by
    /// the time it was taken (one reconcile round and one status refresh
    /// for a burst of small files, not one each).
    Download(Vec<DownloadDone>),
    /// A download stopped fetching (its file may still wait for the
    /// installer): its slot can start the next one.
    SlotFreed,
    Command(EngineCommand),
    Tick,
    Shutdown,
}

/// A finished download task.
#[derive(Debug)]
struct DownloadDone {
    path: RelPath,
    record: FileRecord,
    result: Result<(DownloadOutcome, Installed), DownloadError>,
}

/// A download in progress.
#[derive(Debug)]
struct Running {
    record: FileRecord,
    cancel: CancellationToken,
    /// Live counters (status, progress lines).
    progress: Arc<DownloadProgress>,
    started: Instant,
    /// When progress was last logged, and the bytes done then.
    logged: (Instant, u64),
}

impl Running {
    fn new(record: FileRecord, cancel: CancellationToken, progress: Arc<DownloadProgress>) -> Running {
        let now = Instant::now();
        Running { record, cancel, progress, started: now, logged: (now, 0) }
    }
}

/// The engine's inputs and collaborators.
#[derive(Debug)]
pub struct EngineParts {
    /// Local state (index, scanner).
    pub local: LocalState,
    /// Version history.
    pub history: History,
    /// The tracker client.
    pub client: TrackerClient,
    /// Events from the tracker client.
    pub tracker_events: mpsc::Receiver<TrackerEvent>,
    /// Local changes from the scanner.
    pub local_changes: mpsc::Receiver<FileRecord>,
    /// The downloader.
    pub downloader: Arc<Downloader>,
    /// Local content lookup (told about files moved into the history).
    pub source: Arc<IndexSource>,
    /// Our peer id (filtered out of holders).
    pub me: PeerId,
    /// Files downloaded at once.
    pub max_parallel_downloads: usize,
    /// The piece length this folder is chunked with.
    pub chunked_with: u32,
    /// Neither apply nor announce permission bits.
    pub ignore_perms: bool,
    /// Never announce local changes (see [`receive_only`]).
    pub receive_only: bool,
    /// Requests from the control socket.
    pub commands: mpsc::Receiver<EngineCommand>,
    /// Free space kept on the folder's file system: a download that would
    /// eat into it waits.
    pub min_disk_free: DiskReserve,
    /// Where the engine shows what it is doing (`dartsync status`).
    pub status: StatusBoard,
    /// Gives freed heap back to the system after bursts (`None`: never).
    pub release_memory: Option<ReleaseFn>,
}

/// The free space a peer leaves on its folder's file system.
#[derive(Debug, Clone, Copy)]
pub enum DiskReserve {
    /// The smaller of 1 GiB and 1% of the file system.
    Default,
    /// This many bytes.
    Bytes(u64),
}

impl DiskReserve {
    /// The reserve on a file system of `total` bytes.
    fn bytes(self, total: u64) -> u64 {
        match self {
            DiskReserve::Default => (1u64 << 30).min(total / 100),
            DiskReserve::Bytes(n) => n,
        }
    }
}

/// Why a failed download waits.
fn download_reason(e: &DownloadError) -> Reason {
    match e {
        DownloadError::NoChunkList { failures, .. } if failures.is_empty() => Reason::NoHolder,
        DownloadError::NoChunkList { .. } | DownloadError::NoHoldersLeft { .. } => Reason::Unreachable(e.to_string()),
        DownloadError::NotAFile { .. } | DownloadError::ContentMismatch { .. } => Reason::Refused(e.to_string()),
        DownloadError::Io { .. } | DownloadError::Cancelled { .. } => Reason::InstallFailed(e.to_string()),
    }
}

/// Where the engine stands, for the status board and the tracker.
#[derive(Debug, Default)]
struct Standing {
    /// The tracker session is up.
    connected: bool,
    /// The highest seq received.
    seen_to: u64,
    /// The tracker's seq at registration: caught up once `seen_to` reaches it.
    caught_up_to: Option<u64>,
    /// Local changes made while the tracker was away (the next summary
    /// carries them).
    unannounced: u64,
    /// The last local change announced, until the tracker sends it back:
    /// it handles a session's batches in order, so then every earlier one
    /// is in the table too (see [`Echo`]).
    awaiting_echo: Option<Echo>,
    /// Live files in the global table, and their size.
    files: u64,
    bytes: u64,
    /// Bytes fetched by finished downloads since start.
    finished_bytes: u64,
    /// The last report sent, and when.
    reported: Option<(PeerReport, Instant)>,
    /// The last state, to log the moment the folder becomes up to date.
    state: Option<FolderState>,
    /// When the board was last refreshed.
    published: Option<Instant>,
}

/// An announced change the tracker has not sent back yet.
#[derive(Debug)]
struct Echo {
    path: RelPath,
    version: dartsync_shared::VersionVector,
    sent: Instant,
}

impl Echo {
    /// True when `record` (from a delta) answers the announcement: this
    /// version, a newer one, or one that won a conflict with it.
    fn answered_by(&self, record: &FileRecord) -> bool {
        record.path == self.path && record.version.compare(&self.version) != dartsync_shared::Causality::DominatedBy
    }
}

/// The running engine.
#[derive(Debug)]
pub struct Engine {
    parts: EngineParts,
    /// Carries out records in the folder.
    applier: Applier,
    /// Moves finished downloads into place, in batches.
    installer: Installer,
    global: GlobalTable,
    active: HashMap<RelPath, Running>,
    /// The download slots: held while fetching, not while installing.
    slots: Arc<FetchSlots>,
    jobs: JoinSet<DownloadDone>,
    /// Paths to reconsider on the next pass.
    dirty: BTreeSet<RelPath>,
    /// Paths that cannot take their global version now, with the reason
    /// and when to look again (see [`Waiting`]).
    waiting: Waiting,
    /// Verified downloads whose install failed, by path: only the install
    /// is retried, never the download.
    kept: HashMap<RelPath, (FileRecord, DownloadOutcome)>,
    /// The devices online in the tracker's last device list.
    online: HashSet<PeerId>,
    /// The last summary of waiting paths logged, and when.
    last_summary: (String, Option<Instant>),
    /// On a case-insensitive folder, which path owns each case-folded name.
    case_names: Option<CaseNames>,
    /// Paths waiting for a free download slot.
    queued: Queued,
    /// Paths the engine wrote, to re-check once the watcher has settled.
    recheck: Deadlines<RelPath, Instant>,
    /// The tracker epoch the global table belongs to.
    epoch: Option<u64>,
    /// Where the engine stands (status, reports).
    standing: Standing,
    /// Receive-only: local changes kept and not sent.
    local_edits: LocalEdits,
    /// When to give freed heap back.
    release: MemoryRelease,
}

impl Engine {
    /// A new engine over `parts` (starts its installing task: needs a
    /// tokio runtime).
    pub fn new(parts: EngineParts) -> Self {
        let applier = Applier {
            jails: parts.local.jails().clone(),
            history: parts.history.clone(),
            ignore_perms: parts.ignore_perms,
        };
        let case_names = parts.local.case_insensitive().then(CaseNames::default);
        let slots: Arc<FetchSlots> = Arc::default();
        let fetching = slots.clone();
        let installer = Installer::start(
            applier.clone(),
            parts.local.clone(),
            parts.source.clone(),
            Arc::new(move || fetching.fetching() > 0),
        );
        let release = MemoryRelease::new(parts.release_memory);
        Engine {
            parts,
            applier,
            installer,
            global: GlobalTable::default(),
            active: HashMap::new(),
            slots,
            jobs: JoinSet::new(),
            dirty: BTreeSet::new(),
            waiting: Waiting::default(),
            kept: HashMap::new(),
            online: HashSet::new(),
            last_summary: (String::new(), None),
            case_names,
            queued: Queued::default(),
            recheck: Deadlines::default(),
            epoch: None,
            standing: Standing::default(),
            local_edits: LocalEdits::default(),
            release,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Shutdown,
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    let mut finished = Vec::new();
                    let mut next = Some(done);
                    while let Some(done) = next {
                        match done {
                            Ok(done) => finished.push(done),
                            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                            Err(_) => {}
                        }
                        next = self.jobs.try_join_next();
                    }
                    if finished.is_empty() {
                        continue;
                    }
                    Event::Download(finished)
                }
                () = self.slots.freed() => Event::SlotFreed,
                Some(ev) = self.parts.tracker_events.recv() => Event::Tracker(ev),
                Some(rec) = self.parts.local_changes.recv() => Event::Local(rec),
                Some(cmd) = self.parts.commands.recv() => Event::Command(cmd),
                _ = tick.tick() => Event::Tick,
            };
            if matches!(event, Event::Shutdown) {
                break;
            }
            let kind = match &event {
                Event::Local(_) => "local",
                Event::Tracker(_) => "tracker",
                Event::Download(_) => "download",
                Event::SlotFreed => "slot",
                Event::Command(_) => "command",
                Event::Tick => "tick",
                Event::Shutdown => "shutdown",
            };
            let t0 = Instant::now();
            // Ticks and finished downloads always refresh the board; other
            // events at once when the folder's state changed (status must
            // never say "up to date" while a change is being applied),
            // else at most every PUBLISH_GAP.
            let forced = matches!(event, Event::Tick | Event::Download(_));
            self.handle(event).await;
            let t1 = Instant::now();
            let n = self.dirty.len();
            self.reconcile_dirty().await;
            let state = folder_state(self.standing.connected, self.busy(), self.waiting.len() as u64);
            if forced
                || self.standing.state != Some(state)
                || self.standing.published.is_none_or(|at| at.elapsed() >= PUBLISH_GAP)
            {
                self.publish_standing().await;
            }
            tracing::trace!(
                kind,
                handle_us = (t1 - t0).as_micros() as u64,
                reconcile_us = t1.elapsed().as_micros() as u64,
                dirty = n,
                "engine event"
            );
        }
        for active in self.active.values() {
            active.cancel.cancel();
        }
        self.jobs.shutdown().await;
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Local(first) => {
                // The scanner sends a burst in pieces as it commits them:
                // gather a moment so a burst is one announcement (and one
                // log line), not dozens.
                let mut batch = vec![first];
                let until = tokio::time::Instant::now() + ANNOUNCE_GATHER;
                while batch.len() < ANNOUNCE_BATCH {
                    let next = match self.parts.local_changes.try_recv() {
                        Ok(rec) => Some(rec),
                        Err(mpsc::error::TryRecvError::Empty) => {
                            tokio::time::timeout_at(until, self.parts.local_changes.recv()).await.ok().flatten()
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                    match next {
                        Some(rec) => batch.push(rec),
                        None => break,
                    }
                }
                if self.parts.receive_only {
                    self.keep_local(batch);
                    return;
                }
                self.release.note(batch.len());
                let n = batch.len() as u64;
                let first = &batch[0].path;
                let more = if n > 1 { format!(" and {} more", n - 1) } else { String::new() };
                self.parts.status.event(format!("announced {n} local {}: {first}{more}", plural(n, "change")));
                if self.standing.connected {
                    tracing::info!("announced {n} local {}: {first}{more}", plural(n, "change"));
                } else {
                    self.standing.unannounced += n;
                    tracing::info!(
                        "{n} local {} ({first}{more}) will be announced when the tracker is back",
                        plural(n, "change")
                    );
                }
                // A local change may fix what a waiting path needs (a link
                // in its way replaced by a folder, space freed).
                for record in &batch {
                    for path in self.waiting.wake_under(&record.path) {
                        self.dirty.insert(path);
                    }
                }
                let last = &batch[batch.len() - 1];
                self.standing.awaiting_echo =
                    Some(Echo { path: last.path.clone(), version: last.version.clone(), sent: Instant::now() });
                // Sent even while disconnected: the client drops what it
                // cannot send, and its next summary carries it.
                self.parts.client.send(ClientCommand::Announce(batch)).await;
            }
            Event::Tracker(TrackerEvent::Connected { welcome, seen_seq }) => {
                if self.epoch.is_some_and(|e| e != welcome.epoch) {
                    // A new tracker history: the full table follows.
                    self.global.clear();
                    self.standing.files = 0;
                    self.standing.bytes = 0;
                }
                let st = &mut self.standing;
                st.connected = true;
                st.seen_to = seen_seq;
                st.caught_up_to = Some(welcome.seq);
                // The session's summary carried every local change.
                st.unannounced = 0;
                // A new session: the tracker says again if it holds a
                // mass change of ours (it forgets them when it restarts).
                self.parts.status.set_held(None);
                st.reported = None;
                self.epoch = Some(welcome.epoch);
                let ours = self.parts.chunked_with;
                if ours != welcome.piece_len {
                    tracing::warn!(
                        "the tracker's piece length is {} bytes but this folder is chunked with {:?}; \
                         transfers still work, delta sync is less effective",
                        welcome.piece_len,
                        ours
                    );
                }
            }
            Event::Tracker(TrackerEvent::Disconnected(why)) => {
                self.standing.connected = false;
                tracing::debug!(%why, "tracker away; the global table stays until it is back");
            }
            Event::Tracker(TrackerEvent::Delta(delta)) => {
                self.standing.seen_to = self.standing.seen_to.max(delta.to_seq);
                self.apply_delta(delta);
            }
            Event::Tracker(TrackerEvent::Devices(devices)) => {
                self.devices_left(&devices).await;
                self.parts.status.set_devices(devices);
            }
            Event::Tracker(TrackerEvent::Sources { path, version, holders }) => {
                self.sources_answered(path, &version, holders);
            }
            Event::Tracker(TrackerEvent::Conflict(notice)) => self.conflict_lost(notice),
            Event::Tracker(TrackerEvent::Brake(notice)) => {
                // Held or rejected: no echo comes (status shows the hold).
                self.standing.awaiting_echo = None;
                self.brake_notice(notice).await
            }
            Event::Download(finished) => {
                self.release.note(finished.len());
                for done in finished {
                    self.finish_download(done).await;
                }
            }
            Event::SlotFreed => self.start_queued(),
            Event::Command(EngineCommand::Revert { under, reply }) => {
                let _ = reply.send(self.revert(under).await);
            }
            Event::Tick => {
                let now = Instant::now();
                if let Some(echo) = self.standing.awaiting_echo.take_if(|e| now.duration_since(e.sent) >= ECHO_WAIT) {
                    tracing::debug!(path = %echo.path, "the tracker did not send our announcement back; not waiting for it");
                }
                self.verify_local_edits(now).await;
                self.dirty.extend(self.waiting.take_due(now));
                self.log_summary(now);
                for path in self.recheck.take_due(now) {
                    self.parts.local.mark_dirty(&path);
                }
                self.start_queued();
            }
            Event::Shutdown => {}
        }
    }

    fn apply_delta(&mut self, delta: Delta) {
        if delta.full {
            tracing::debug!(entries = delta.entries.len(), "full table from tracker");
        }
        self.release.note(delta.entries.len());
        for entry in delta.entries {
            if self.standing.awaiting_echo.as_ref().is_some_and(|echo| echo.answered_by(&entry.record)) {
                self.standing.awaiting_echo = None;
            }
            let holders: Vec<Holder> = entry.holders.into_iter().filter(|h| h.peer_id != self.parts.me).collect();
            let path = entry.record.path.clone();
            // Most deltas only change holders (someone finished a download):
            // reconsider the path only if its record changed, or if it is
            // waiting for holders.
            let record_changed = self.global.get(&path).is_none_or(|g| g.record != entry.record);
            if let Some(names) = self.case_names.as_mut()
                && let Some(freed) = names.update(&path, !entry.record.deleted)
            {
                // Paths refused for that name may take it now.
                for p in self.waiting.refused_matching(|p| case_fold_key(p) == freed && *p != path) {
                    self.waiting.resolve(&p);
                    self.dirty.insert(p);
                }
            }
            if record_changed {
                // Another version: whatever blocked the old one may not apply.
                self.waiting.resolve(&path);
                self.discard_kept(&path);
            }
            // New holders may be exactly what a waiting path needs.
            let woken = self.waiting.wake(&path);
            if entry.record.is_file() {
                self.standing.files += 1;
                self.standing.bytes += entry.record.size;
            }
            let old = self.global.insert(entry.record, holders);
            if let Some(old) = old.filter(|o| o.record.is_file()) {
                self.standing.files -= 1;
                self.standing.bytes -= old.record.size;
            }
            if record_changed || woken {
                self.dirty.insert(path);
            }
        }
    }

    /// Download slots in use (see [`FetchSlots::in_use`]).
    fn slots_in_use(&self) -> usize {
        self.slots.in_use(self.active.len(), self.parts.max_parallel_downloads)
    }

    /// Moves queued downloads into the dirty set while slots are free
    /// (slots promised to paths moved before the round count as taken).
    fn start_queued(&mut self) {
        let promoted = self.queued.promote(self.slots_in_use(), self.parts.max_parallel_downloads);
        self.dirty.extend(promoted);
    }

    /// Reconsiders every dirty path until none is left (a deletion can make
    /// its parent folder deletable).
    async fn reconcile_dirty(&mut self) {
        for _ in 0..16 {
            // Slots a round left free (a promoted path needed no download)
            // go to the next queued paths now, not at the next event.
            self.start_queued();
            if self.dirty.is_empty() {
                return;
            }
            self.reconcile_round().await;
        }
    }

    /// One pass over the dirty paths: files and folders first (parents
    /// before children), deletions last (children before parents).
    async fn reconcile_round(&mut self) {
        let paths: Vec<RelPath> = std::mem::take(&mut self.dirty).into_iter().collect();
        let promoted = self.queued.round_started();
        let paths = self.queue_behind_others(paths, &promoted);
        let paths = self.park_unheld(paths).await;
        let (mut deletions, others): (Vec<RelPath>, Vec<RelPath>) =
            paths.into_iter().partition(|p| self.global.get(p).is_some_and(|g| g.record.deleted));
        // BTreeSet order puts parents before children; reverse for deletions.
        deletions.reverse();
        let files = others
            .iter()
            .filter(|p| self.global.get(p).is_some_and(|g| g.record.is_file() && !g.record.deleted))
            .cloned()
            .collect();
        let looked = others.iter().chain(&deletions).filter(|p| self.global.contains_key(p)).cloned().collect();
        let mut look = RoundLook::take(&self.parts.local, &self.applier.jails, looked, files).await;
        for path in others.into_iter().chain(deletions) {
            if let Err(e) = self.reconcile(&path, &mut look).await {
                let reason = if e.is_permanent() {
                    Reason::Refused(e.to_string())
                } else {
                    Reason::InstallFailed(e.to_string())
                };
                self.park(&path, "cannot apply", reason);
            }
        }
    }

    /// Queues, without a look at the disk, the files among `paths` that
    /// could only wait for a slot, and returns the rest. Every slot is
    /// spoken for while other downloads wait (the queue is not empty after
    /// promotion); such a path is a live file someone holds, not being
    /// downloaded, promoted, kept or held back. It is looked at and planned
    /// whole when a slot frees, so a look now would be thrown away: a burst
    /// of thousands of small files arriving in delta pages was looked at
    /// twice per file.
    fn queue_behind_others(&mut self, paths: Vec<RelPath>, promoted: &HashSet<RelPath>) -> Vec<RelPath> {
        if self.queued.is_empty() {
            return paths;
        }
        let mut rest = Vec::with_capacity(paths.len());
        for path in paths {
            let size = self.global.get(&path).filter(|g| !g.holders.is_empty()).map(|g| &g.record).and_then(|r| {
                let waits = r.is_file()
                    && !r.deleted
                    && !promoted.contains(&path)
                    && !self.active.contains_key(&path)
                    && !self.kept.contains_key(&path)
                    && !self.waiting.blocks(&path, &r.version);
                waits.then_some(r.size)
            });
            match size {
                Some(size) => self.queued.insert(path, size),
                None => rest.push(path),
            }
        }
        rest
    }

    /// Brings `path` in line with its global record, planning with what
    /// `look` read of it (or a fresh look if the round did not read it).
    async fn reconcile(&mut self, path: &RelPath, look: &mut RoundLook) -> Result<(), ApplyError> {
        let Some(global) = self.global.get(path).cloned() else {
            self.waiting.resolve(path);
            return Ok(());
        };
        if self.waiting.blocks(path, &global.record.version) {
            return Ok(());
        }
        if !global.record.deleted
            && let Some(other) = self.case_names.as_ref().and_then(|names| names.collision(path))
        {
            return Err(ApplyError::CaseCollision { path: path.clone(), other: other.clone() });
        }
        let (view, blocked_parent) = match look.path(path) {
            Some(l) => (l.view.ok(), l.blocked_parent),
            None => (None, None),
        };
        let (before, modified) = match view {
            Some(view) => view,
            // Not read by the round, or the read failed: once more, with
            // the error if it fails again.
            None => self.parts.local.local_view(path).await?,
        };
        let action = plan(&global.record, before.as_ref().map(|e| &e.record), modified);
        if action != Action::Download {
            self.cancel_download(path);
            self.discard_kept(path);
            // In line (or not ours to change): nothing waits any more.
            self.recovered(path);
        }
        let local = &self.parts.local;
        match action {
            Action::Nothing => Ok(()),
            Action::AnnounceLocal if self.parts.receive_only => {
                self.cluster_over_local(path, &global, before.as_ref()).await
            }
            Action::AnnounceLocal => {
                tracing::debug!(%path, "local edit not yet announced; announcing it instead of applying");
                local.mark_dirty(path);
                Ok(())
            }
            Action::Adopt => {
                let record = &global.record;
                let indexed = before.as_ref().filter(|b| b.record.chunks == record.chunks || !record.is_file());
                match indexed {
                    // Same bytes, other permission bits: set them through
                    // the write gate, which stores the new version.
                    Some(b) if !record.deleted && b.record.mode != record.mode && b.record.kind == record.kind => {
                        let (applier, target) = (self.applier.clone(), record.clone());
                        let op = move || applier.mode(&target);
                        let chunks = if record.is_file() { b.chunks.clone() } else { Vec::new() };
                        if !matches!(
                            local.apply_if_unmodified(record.clone(), chunks, op).await?,
                            Gated::Applied { .. }
                        ) {
                            return Ok(());
                        }
                    }
                    _ => {
                        local.adopt_version(record).await?;
                    }
                }
                self.have(record).await;
                Ok(())
            }
            Action::MakeDir | Action::MakeLink | Action::Delete => {
                let record = global.record.clone();
                // A tombstone of something this peer never had is not news.
                let had = before.as_ref().is_some_and(|b| !b.record.deleted);
                let op = {
                    let (applier, record, source) = (self.applier.clone(), record.clone(), self.parts.source.clone());
                    let index = self.parts.local.index().clone();
                    move || {
                        // The entry being replaced, read under the commit
                        // lock: an install that finished a moment ago (after
                        // `local_view` above) is exactly what is cleared.
                        let replaced = index.get(&record.path)?;
                        // Known to the chunk source before the file moves
                        // into the history, so a download copying its chunks
                        // right now (the other half of a rename) finds them
                        // at one place or the other.
                        let remember = |saved: &std::path::Path| source.remember_entry(replaced.as_ref(), saved);
                        let keep = Some(BeforeKeep(&remember));
                        applier.metadata(&record, replaced.as_ref().map(|r| &r.record), keep)
                    }
                };
                match local.apply_if_unmodified(record.clone(), Vec::new(), op).await? {
                    Gated::Refused => return Ok(()),
                    Gated::Declined => {
                        tracing::debug!(%path, "folder deleted elsewhere still has content here; kept");
                        return Ok(());
                    }
                    Gated::Applied { .. } => {}
                }
                self.recheck.insert(path.clone(), Instant::now() + RECHECK_AFTER);
                if record.deleted
                    && let Some(parent) = path.parent()
                    && self.global.get(&parent).is_some_and(|g| g.record.deleted)
                {
                    self.dirty.insert(parent);
                }
                self.have(&record).await;
                if had || action != Action::Delete {
                    let what = if action == Action::Delete { "deleted" } else { "synced" };
                    self.parts.status.event(format!("{what} {path}"));
                }
                match action {
                    Action::Delete if had => tracing::info!("synced {path}: deleted"),
                    Action::Delete => tracing::debug!("synced {path}: deleted (never here)"),
                    Action::MakeDir => tracing::debug!("synced {path}: folder"),
                    _ => tracing::info!("synced {path}: symlink"),
                }
                Ok(())
            }
            Action::Download => {
                if self.kept.get(path).is_some_and(|(r, _)| r.version == global.record.version) {
                    // Verified already: only the install is retried.
                    self.start_install(path);
                    return Ok(());
                }
                // A parent this peer can never write through (a symlink, a
                // file) would waste the whole download: refuse before it.
                if let Some(e) = blocked_parent {
                    return Err(e.into());
                }
                if let Some(short) = self.disk_short_for(&global.record, look.space) {
                    self.park(path, "cannot download", short);
                    return Ok(());
                }
                // The version replaced here, if it is a file: only what it
                // lacks is fetched.
                let base = before.filter(|b| b.record.is_file()).map(|b| b.chunks).unwrap_or_default();
                self.start_download(global, base);
                Ok(())
            }
        }
    }

    fn cancel_download(&mut self, path: &RelPath) {
        self.queued.remove(path);
        if let Some(active) = self.active.remove(path) {
            active.cancel.cancel();
        }
    }

    fn start_download(&mut self, global: GlobalEntry, base: Vec<ChunkInfo>) {
        let path = global.record.path.clone();
        if let Some(active) = self.active.get(&path) {
            if active.record.version == global.record.version {
                return;
            }
            tracing::debug!(%path, "newer version announced; cancelling the older download");
            self.cancel_download(&path);
        }
        if self.slots_in_use() >= self.parts.max_parallel_downloads {
            self.queued.insert(path, global.record.size);
            return;
        }
        let cancel = CancellationToken::new();
        let job = DownloadJob::new(global.record.clone(), global.holders.to_vec()).with_base(base);
        self.active.insert(path.clone(), Running::new(global.record.clone(), cancel.clone(), job.progress.clone()));
        let downloader = self.parts.downloader.clone();
        let installer = self.installer.clone();
        let record = global.record;
        let slot = self.slots.take();
        self.jobs.spawn(async move {
            let fetched = downloader.download(job, cancel.clone()).await;
            // The slot goes to the next download while this file waits for
            // the installer (see `slots`).
            drop(slot);
            let result = match fetched {
                Ok(outcome) if cancel.is_cancelled() => {
                    installer.applier.discard_temp(&outcome.temp_path);
                    Ok((outcome, Installed::Skipped))
                }
                Ok(outcome) => {
                    let installed = installer.install(&record, &outcome).await;
                    Ok((outcome, installed))
                }
                Err(e) => Err(e),
            };
            DownloadDone { path, record, result }
        });
    }

    /// Retries the install of a verified download kept after a failed
    /// install (no bytes are fetched again).
    fn start_install(&mut self, path: &RelPath) {
        if self.active.contains_key(path) {
            return;
        }
        let Some((record, outcome)) = self.kept.remove(path) else { return };
        let cancel = CancellationToken::new();
        let progress = Arc::new(DownloadProgress::default());
        progress.add(record.size);
        self.active.insert(path.clone(), Running::new(record.clone(), cancel, progress));
        let installer = self.installer.clone();
        let path = path.clone();
        tracing::debug!(%path, "retrying the install of the verified download");
        self.jobs.spawn(async move {
            let installed = installer.install(&record, &outcome).await;
            DownloadDone { path, record, result: Ok((outcome, installed)) }
        });
    }

    /// Drops a kept verified download (a newer version or no longer needed).
    fn discard_kept(&mut self, path: &RelPath) {
        if let Some((_, outcome)) = self.kept.remove(path) {
            self.applier.discard_temp(&outcome.temp_path);
        }
    }

    /// Parks, without trying, the files among `paths` that nobody online
    /// holds and whose bytes no local file has (a delta that brings a
    /// holder wakes them); returns the rest. One blocking task for the
    /// whole batch: a peer joining a cluster whose only holder is away
    /// stays idle however many such files there are.
    async fn park_unheld(&mut self, paths: Vec<RelPath>) -> Vec<RelPath> {
        let unheld: Vec<(RelPath, dartsync_shared::ContentHash)> = paths
            .iter()
            .filter_map(|p| self.global.get(p).map(|g| (p, g)))
            .filter(|(p, g)| {
                let r = &g.record;
                r.is_file() && r.size > 0 && g.holders.is_empty() && !self.waiting.blocks(p, &r.version)
            })
            .map(|(p, g)| (p.clone(), g.record.content))
            .collect();
        if unheld.is_empty() {
            return paths;
        }
        let source = self.parts.source.clone();
        let local: HashSet<RelPath> = tokio::task::spawn_blocking(move || {
            unheld.into_iter().filter(|(_, c)| source.chunk_list(c).is_some()).map(|(p, _)| p).collect()
        })
        .await
        .unwrap_or_default();
        let mut rest = Vec::with_capacity(paths.len());
        for path in paths {
            let unheld = self.global.get(&path).is_some_and(|g| {
                let r = &g.record;
                r.is_file() && r.size > 0 && g.holders.is_empty() && !self.waiting.blocks(&path, &r.version)
            });
            if unheld && !local.contains(&path) {
                self.cancel_download(&path);
                self.park(&path, "cannot download", Reason::NoHolder);
            } else {
                rest.push(path);
            }
        }
        rest
    }

    /// `Some(reason)` when the folder's file system (`space`, as the round
    /// measured it) lacks room for `record` plus the reserve.
    fn disk_short_for(&self, record: &FileRecord, space: Option<crate::jail::Space>) -> Option<Reason> {
        let free = space?;
        let reserve = self.parts.min_disk_free;
        let need = record.size.saturating_add(reserve.bytes(free.total));
        (free.available < need).then_some(Reason::DiskFull { need, free: free.available })
    }

    async fn finish_download(&mut self, done: DownloadDone) {
        let DownloadDone { path, record, result } = done;
        if self.active.get(&path).is_some_and(|a| a.record.version == record.version) {
            self.active.remove(&path);
        }
        self.start_queued();
        let (outcome, installed) = match result {
            Ok(done) => done,
            Err(DownloadError::Cancelled { .. }) => return,
            Err(e) => {
                if self.global.get(&path).is_some_and(|g| g.record.version == record.version) {
                    self.park(&path, "download failed", download_reason(&e));
                    // The holders this peer knows may have left (the
                    // tracker pages no departure): ask for the ones online
                    // now. Once per failure, so at the pace of the backoff.
                    if matches!(e, DownloadError::NoChunkList { .. } | DownloadError::NoHoldersLeft { .. }) {
                        self.ask_sources(&record).await;
                    }
                }
                return;
            }
        };
        match installed {
            Installed::Yes => {
                self.standing.finished_bytes += outcome.bytes_fetched;
                let sources = outcome.fetched_by_holder.iter().filter(|(_, n)| *n > 0).count() as u64;
                let mut how =
                    vec![format!("{} fetched from {sources} {}", size(outcome.bytes_fetched), plural(sources, "peer"))];
                if outcome.bytes_local > 0 {
                    how.push(format!("{} already here", size(outcome.bytes_local)));
                }
                if outcome.bytes_resumed > 0 {
                    how.push(format!("{} resumed", size(outcome.bytes_resumed)));
                }
                self.parts.status.event(format!("synced {path} ({})", size(record.size)));
                tracing::info!(
                    "synced {path} ({}) in {:.1} s: {}",
                    size(record.size),
                    outcome.elapsed.as_secs_f64(),
                    how.join(", ")
                );
                // Exact counts for tests and debugging (the list is built
                // only when the line is logged).
                tracing::debug!(
                    "transfer of {path} done: local={} fetched={} resumed={} from [{}]",
                    outcome.bytes_local,
                    outcome.bytes_fetched,
                    outcome.bytes_resumed,
                    outcome
                        .fetched_by_holder
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(id, n)| format!("{}={n}", id.fmt_short()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.recheck.insert(path.clone(), Instant::now() + RECHECK_AFTER);
                self.recovered(&path);
                self.have(&record).await;
                // A newer version may have arrived while this one downloaded.
                if self.global.get(&path).is_some_and(|g| g.record.version != record.version) {
                    self.dirty.insert(path);
                }
            }
            Installed::Skipped => {
                self.dirty.insert(path);
            }
            Installed::Failed(e) => {
                let current = self.global.get(&path).is_some_and(|g| g.record.version == record.version);
                if e.is_permanent() || !current {
                    self.applier.discard_temp(&outcome.temp_path);
                } else {
                    self.kept.insert(path.clone(), (record.clone(), outcome));
                }
                if current {
                    let reason = if e.is_permanent() {
                        Reason::Refused(e.to_string())
                    } else {
                        Reason::InstallFailed(e.to_string())
                    };
                    self.park(&path, "cannot install the downloaded file", reason);
                }
            }
        }
    }

    /// A path could not be brought in line with its global record: it waits
    /// (see [`Waiting`]). A condition of the path itself is logged once, at
    /// warn, with what would fix it; one of the cluster (no holder online,
    /// holders unreachable) only in the summary.
    fn park(&mut self, path: &RelPath, what: &str, reason: Reason) {
        let Some(global) = self.global.get(path) else { return };
        let version = global.record.version.clone();
        let told = self.waiting.park(path, &version, reason.clone(), Instant::now());
        if told == Parked::New && reason.is_path_specific() {
            tracing::warn!(%path, "{what}: {reason}; parked, {}", reason.fix());
        } else {
            tracing::debug!(%path, "{what}: {reason}; waiting");
        }
    }

    /// `path` is in line: if it was waiting, say so (once, for the reasons
    /// that were said).
    fn recovered(&mut self, path: &RelPath) {
        if let Some((reason, attempts)) = self.waiting.resolve(path)
            && reason.is_path_specific()
        {
            tracing::info!(
                %path,
                "recovered after {attempts} failed {}: {reason}",
                plural(u64::from(attempts), "attempt")
            );
        }
    }

    /// Logs how many paths wait and why, when that changed (at most every
    /// [`SUMMARY_MIN_GAP`]) or again after [`SUMMARY_REPEAT`].
    fn log_summary(&mut self, now: Instant) {
        let since = self.last_summary.1.map(|at| now.saturating_duration_since(at));
        // Counting every waiting path each tick would be the busy loop this
        // is meant to prevent: look at most once per gap.
        if since.is_some_and(|since| since < SUMMARY_MIN_GAP) {
            return;
        }
        let summary = self.waiting.summary();
        let last = &self.last_summary.0;
        let due = match since {
            None => !summary.is_empty(),
            Some(since) => {
                (summary != *last && since >= SUMMARY_MIN_GAP) || (!summary.is_empty() && since >= SUMMARY_REPEAT)
            }
        };
        if !due {
            return;
        }
        if summary.is_empty() {
            tracing::info!("no paths waiting any more");
        } else {
            tracing::info!("{summary}");
        }
        self.last_summary = (summary, Some(now));
    }

    /// A version this peer held lost a conflict: say so (a user reads
    /// the peer's log, not the tracker's) and list it in status.
    fn conflict_lost(&mut self, notice: ConflictNotice) {
        let ConflictNotice { path, copy, winner, loser, at } = notice;
        match &copy {
            Some(copy) => tracing::warn!(
                "conflict on {path}: {winner}'s version kept the name; the version from {loser} is kept as {copy}"
            ),
            None => {
                tracing::warn!("conflict on {path}: {winner}'s edit won over the deletion from {loser}; the file stays")
            }
        }
        self.parts.status.event(format!("lost a conflict on {path}"));
        self.parts.status.add_conflict(Conflict {
            path: path.to_string(),
            copy: copy.map(|c| c.to_string()),
            winner,
            loser,
            at,
        });
    }

    /// Work in flight: the startup scan still running, local changes still
    /// settling or waiting in the channel, the last announcement not yet
    /// back from the tracker, not caught up, downloads or installs running
    /// or queued, paths to reconsider, changes made while the tracker was
    /// away.
    fn busy(&self) -> bool {
        let st = &self.standing;
        let caught_up = st.caught_up_to.is_some_and(|to| st.seen_to >= to);
        !self.parts.local.initial_scan_finished()
            || self.parts.local.changes_unsettled()
            || !self.parts.local_changes.is_empty()
            || st.awaiting_echo.is_some()
            || !caught_up
            || !self.active.is_empty()
            || !self.queued.is_empty()
            || !self.kept.is_empty()
            || !self.dirty.is_empty()
            || st.unannounced > 0
    }

    /// Refreshes the status board, reports to the tracker when where we
    /// stand changed, logs long downloads' progress and the moment the
    /// folder is up to date.
    async fn publish_standing(&mut self) {
        let now = Instant::now();
        self.standing.published = Some(now);
        let busy = self.busy();
        let waiting_total = self.waiting.len() as u64;
        let queued_bytes = self.queued.bytes();
        let transfers: Vec<TransferView> = self
            .active
            .iter()
            .take(MAX_LISTED)
            .map(|(path, r)| TransferView {
                path: path.to_string(),
                size: r.record.size,
                progress: r.progress.clone(),
                started: r.started,
            })
            .collect();
        let pending_files = (self.active.len() + self.queued.len() + self.kept.len()) as u64;
        let pending_bytes =
            queued_bytes + self.active.values().map(|r| r.record.size.saturating_sub(r.progress.done())).sum::<u64>();
        let (local_changes, local_changes_total) = self.local_edits.listed();
        let st = &self.standing;
        let view = EngineView {
            busy,
            pending_files,
            queued_bytes,
            transfers,
            waiting: self
                .waiting
                .listed(MAX_LISTED)
                .into_iter()
                .map(|(path, reason)| WaitingPath { path, reason })
                .collect(),
            waiting_total,
            unannounced: st.unannounced,
            files: st.files,
            bytes: st.bytes,
            finished_bytes: st.finished_bytes,
            receive_only: self.parts.receive_only,
            local_changes,
            local_changes_total,
        };
        self.parts.status.publish(view);

        let state = folder_state(st.connected, busy, waiting_total);
        let settled = state == FolderState::UpToDate && st.state != Some(FolderState::UpToDate);
        if settled {
            tracing::info!("up to date ({} {}, {})", st.files, plural(st.files, "file"), size(st.bytes));
        }
        if let Some(release) = self.release.due(now, settled) {
            tokio::task::spawn_blocking(release);
        }
        self.standing.state = Some(state);
        self.log_progress(now);

        let report = PeerReport {
            seen_seq: self.standing.seen_to,
            up_to_date: state == FolderState::UpToDate,
            pending_files,
            pending_bytes,
            waiting: waiting_total,
            rate: self.parts.status.rate(),
        };
        let due = match self.standing.reported {
            None => true,
            Some((last, at)) => last != report && now.duration_since(at) >= REPORT_GAP,
        };
        if self.standing.connected && due {
            self.standing.reported = Some((report, now));
            self.parts.client.send(ClientCommand::Report(report)).await;
        }
    }

    /// Every [`PROGRESS_EVERY`], one line per download running longer.
    fn log_progress(&mut self, now: Instant) {
        for (path, r) in &mut self.active {
            let (at, before) = r.logged;
            if now.duration_since(at) < PROGRESS_EVERY {
                continue;
            }
            let done = r.progress.done().min(r.record.size);
            let rate = (done.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()) as u64;
            let sources = u64::from(r.progress.sources());
            let percent = (done * 100).checked_div(r.record.size).unwrap_or(100);
            tracing::info!(
                "downloading {path}: {} of {} ({percent}%), {}/s from {sources} {}",
                size(done),
                size(r.record.size),
                size(rate),
                plural(sources, "peer")
            );
            r.logged = (now, done);
        }
    }

    /// Devices online in the last device list and not in `devices`: they
    /// hold nothing now (the tracker pages no departure), so they leave
    /// every holder list here. A path this peer waits for or has queued
    /// whose list named one is woken (it tries the holders left; with
    /// none left it waits quietly for a delta that brings one, instead of
    /// trying the one gone), and one whose list is now empty asks for the
    /// holders online now (a delta lists a few of them: there may be
    /// others). Paths whose list still names a holder ask only if those
    /// fail, so a departure in the middle of a big sync does not send the
    /// tracker a question per file.
    async fn devices_left(&mut self, devices: &[DeviceInfo]) {
        let online: HashSet<PeerId> = devices.iter().filter(|d| d.online).map(|d| d.peer_id).collect();
        let gone: HashSet<PeerId> = self.online.difference(&online).copied().collect();
        self.online = online;
        if gone.is_empty() {
            return;
        }
        let (waiting, queued) = (&self.waiting, &self.queued);
        let lacking = self.global.drop_holders(&gone, |p| waiting.contains(p) || queued.contains(p));
        for path in lacking {
            if let Some(record) = self.global.get(&path).filter(|g| g.holders.is_empty()).map(|g| g.record.clone()) {
                self.ask_sources(&record).await;
            }
            if self.waiting.wake(&path) {
                self.dirty.insert(path);
            }
        }
    }

    /// Asks the tracker which peers hold `record` now.
    async fn ask_sources(&self, record: &FileRecord) {
        self.parts
            .client
            .send(ClientCommand::Sources { path: record.path.clone(), version: record.version.clone() })
            .await;
    }

    /// The tracker's answer to [`Self::ask_sources`]: holders that differ
    /// from the ones known (for the version still global here) replace
    /// them and wake the path; the same ones leave it to its backoff, so
    /// holders that are online but unreachable from here are not retried
    /// in a loop.
    fn sources_answered(&mut self, path: RelPath, version: &VersionVector, holders: Vec<Holder>) {
        let holders: Vec<Holder> = holders.into_iter().filter(|h| h.peer_id != self.parts.me).collect();
        let listed = holders.len();
        if !self.global.set_holders(&path, version, holders) {
            return;
        }
        tracing::debug!(%path, holders = listed, "new sources from the tracker");
        if self.waiting.wake(&path) {
            self.dirty.insert(path);
        }
    }

    async fn have(&self, record: &FileRecord) {
        self.parts
            .client
            .send(ClientCommand::Have { path: record.path.clone(), version: record.version.clone() })
            .await;
    }
}
