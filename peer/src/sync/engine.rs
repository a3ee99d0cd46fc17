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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dartsync_shared::error::Retry;
use dartsync_shared::path::case_fold_key;
use dartsync_shared::proto::ptp::{Delta, Holder};
use dartsync_shared::{FileRecord, PeerId, RelPath, VersionVector};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deadlines::Deadlines;
use crate::jail::rel_path;
use crate::local::LocalState;
use crate::local::commit::Gated;
use crate::sync::apply::Applier;
use crate::sync::case_names::CaseNames;
use crate::sync::error::ApplyError;
use crate::sync::history::History;
use crate::sync::index_source::IndexSource;
use crate::sync::install::{Installed, Installer};
use crate::sync::plan::{Action, plan};
use crate::sync::tracker_client::{ClientCommand, TrackerClient, TrackerEvent};
use crate::transfer::{DownloadError, DownloadJob, DownloadOutcome, Downloader};

/// How long a failed path waits before it is retried.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often timers (retries, re-checks) are looked at.
const TICK: Duration = Duration::from_millis(250);
/// After the engine writes a path, the scanner re-checks it this much
/// later: the watcher's debouncer drops a create followed by a quick
/// delete, which would otherwise hide a user deleting a file we just wrote.
const RECHECK_AFTER: Duration = Duration::from_millis(800);
/// Local changes announced in one batch at most.
const ANNOUNCE_BATCH: usize = 1024;

/// One entry of the global table as this peer knows it.
#[derive(Debug, Clone)]
struct GlobalEntry {
    /// The global record.
    record: FileRecord,
    /// Holders other than this peer.
    holders: Vec<Holder>,
}

/// Every trigger of the main loop.
#[derive(Debug)]
enum Event {
    Local(FileRecord),
    Tracker(TrackerEvent),
    Download(Box<DownloadDone>),
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
}

/// The running engine.
#[derive(Debug)]
pub struct Engine {
    parts: EngineParts,
    /// Carries out records in the folder.
    applier: Applier,
    global: HashMap<RelPath, GlobalEntry>,
    active: HashMap<RelPath, Running>,
    jobs: JoinSet<DownloadDone>,
    /// Paths to reconsider on the next pass.
    dirty: BTreeSet<RelPath>,
    /// Paths waiting to be retried, ordered by when.
    retry: Deadlines<RelPath, Instant>,
    /// Paths that cannot take their global version here (see
    /// [`Engine::failed`]), with that version: skipped until another one
    /// arrives.
    parked: HashMap<RelPath, VersionVector>,
    /// On a case-insensitive folder, which path owns each case-folded name.
    case_names: Option<CaseNames>,
    /// Paths waiting for a free download slot.
    queued: BTreeSet<RelPath>,
    /// Paths the engine wrote, to re-check once the watcher has settled.
    recheck: Deadlines<RelPath, Instant>,
    /// The tracker epoch the global table belongs to.
    epoch: Option<u64>,
}

impl Engine {
    /// A new engine over `parts`.
    pub fn new(parts: EngineParts) -> Self {
        let applier = Applier {
            jails: parts.local.jails().clone(),
            history: parts.history.clone(),
            ignore_perms: parts.ignore_perms,
        };
        let case_names = parts.local.case_insensitive().then(CaseNames::default);
        Engine {
            parts,
            applier,
            global: HashMap::new(),
            active: HashMap::new(),
            jobs: JoinSet::new(),
            dirty: BTreeSet::new(),
            retry: Deadlines::default(),
            parked: HashMap::new(),
            case_names,
            queued: BTreeSet::new(),
            recheck: Deadlines::default(),
            epoch: None,
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
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(done) => Event::Download(Box::new(done)),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => continue,
                },
                Some(ev) = self.parts.tracker_events.recv() => Event::Tracker(ev),
                Some(rec) = self.parts.local_changes.recv() => Event::Local(rec),
                _ = tick.tick() => Event::Tick,
            };
            if matches!(event, Event::Shutdown) {
                break;
            }
            let kind = match &event {
                Event::Local(_) => "local",
                Event::Tracker(_) => "tracker",
                Event::Download(_) => "download",
                Event::Tick => "tick",
                Event::Shutdown => "shutdown",
            };
            let t0 = Instant::now();
            self.handle(event).await;
            let t1 = Instant::now();
            let n = self.dirty.len();
            self.reconcile_dirty().await;
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
                let mut batch = vec![first];
                while batch.len() < ANNOUNCE_BATCH {
                    match self.parts.local_changes.try_recv() {
                        Ok(rec) => batch.push(rec),
                        Err(_) => break,
                    }
                }
                tracing::trace!(records = batch.len(), "announcing local changes");
                // Sent even while disconnected: the client drops what it
                // cannot send, and its next summary carries it.
                self.parts.client.send(ClientCommand::Announce(batch)).await;
            }
            Event::Tracker(TrackerEvent::Connected(welcome)) => {
                if self.epoch.is_some_and(|e| e != welcome.epoch) {
                    // A new tracker history: the full table follows.
                    self.global.clear();
                }
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
                tracing::debug!(epoch = welcome.epoch, "connected to tracker");
            }
            Event::Tracker(TrackerEvent::Disconnected(why)) => {
                tracing::debug!(%why, "tracker away; the global table stays until it is back");
            }
            Event::Tracker(TrackerEvent::Delta(delta)) => self.apply_delta(delta),
            Event::Download(done) => self.finish_download(*done).await,
            Event::Tick => {
                let now = Instant::now();
                self.dirty.extend(self.retry.take_due(now));
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
        for entry in delta.entries {
            let holders = entry.holders.into_iter().filter(|h| h.peer_id != self.parts.me).collect();
            let path = entry.record.path.clone();
            // Most deltas only change holders (someone finished a download):
            // reconsider the path only if its record changed, or if it is
            // waiting for holders.
            let record_changed = self.global.get(&path).is_none_or(|g| g.record != entry.record);
            if let Some(names) = self.case_names.as_mut()
                && let Some(freed) = names.update(&path, !entry.record.deleted)
            {
                // Paths refused for that name may take it now.
                let waiting: Vec<RelPath> =
                    self.parked.keys().filter(|p| case_fold_key(p) == freed && **p != path).cloned().collect();
                for p in waiting {
                    self.parked.remove(&p);
                    self.dirty.insert(p);
                }
            }
            let waiting = self.retry.remove(&path);
            self.global.insert(path.clone(), GlobalEntry { record: entry.record, holders });
            if record_changed || waiting {
                self.dirty.insert(path);
            }
        }
    }

    /// Moves queued downloads into the dirty set while slots are free.
    fn start_queued(&mut self) {
        let free = self.parts.max_parallel_downloads.saturating_sub(self.active.len());
        for _ in 0..free {
            let Some(path) = self.queued.pop_first() else { break };
            self.dirty.insert(path);
        }
    }

    /// Reconsiders every dirty path until none is left (a deletion can make
    /// its parent folder deletable).
    async fn reconcile_dirty(&mut self) {
        for _ in 0..16 {
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
        let (mut deletions, others): (Vec<RelPath>, Vec<RelPath>) =
            paths.into_iter().partition(|p| self.global.get(p).is_some_and(|g| g.record.deleted));
        // BTreeSet order puts parents before children; reverse for deletions.
        deletions.reverse();
        for path in others.into_iter().chain(deletions) {
            if let Err(e) = self.reconcile(&path).await {
                let permanent = e.is_permanent();
                self.failed(path, "cannot apply", &e, permanent);
            }
        }
    }

    async fn reconcile(&mut self, path: &RelPath) -> Result<(), ApplyError> {
        let Some(global) = self.global.get(path).cloned() else { return Ok(()) };
        if self.parked.get(path) == Some(&global.record.version) {
            return Ok(());
        }
        self.parked.remove(path);
        if !global.record.deleted
            && let Some(other) = self.case_names.as_ref().and_then(|names| names.collision(path))
        {
            return Err(ApplyError::CaseCollision { path: path.clone(), other: other.clone() });
        }
        let (before, modified) = self.parts.local.local_view(path).await?;
        let action = plan(&global.record, before.as_ref().map(|e| &e.record), modified);
        if action != Action::Download {
            self.cancel_download(path);
        }
        let local = &self.parts.local;
        match action {
            Action::Nothing => Ok(()),
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
                let op = {
                    let (applier, record) = (self.applier.clone(), record.clone());
                    move || applier.metadata(&record)
                };
                match local.apply_if_unmodified(record.clone(), Vec::new(), op).await? {
                    Gated::Refused => return Ok(()),
                    Gated::Declined => {
                        tracing::debug!(%path, "folder deleted elsewhere still has content here; kept");
                        return Ok(());
                    }
                    Gated::Applied { value: saved, .. } => {
                        if let (Some(saved), Some(before)) = (saved, before)
                            && before.record.is_file()
                        {
                            self.parts.source.remember_history(saved, before.record.content, &before.chunks);
                        }
                    }
                }
                self.recheck.insert(path.clone(), Instant::now() + RECHECK_AFTER);
                if record.deleted
                    && let Some(parent) = path.parent()
                    && self.global.get(&parent).is_some_and(|g| g.record.deleted)
                {
                    self.dirty.insert(parent);
                }
                self.have(&record).await;
                match action {
                    Action::Delete => tracing::info!("synced {path}: deleted"),
                    Action::MakeDir => tracing::debug!("synced {path}: folder"),
                    _ => tracing::info!("synced {path}: symlink"),
                }
                Ok(())
            }
            Action::Download => {
                // A parent this peer can never write through (a symlink, a
                // file) would waste the whole download: refuse before it.
                if let Some(parent) = path.parent() {
                    let jails = self.applier.jails.clone();
                    let checked = tokio::task::spawn_blocking(move || jails.folder.lstat(rel_path(&parent)).map(drop))
                        .await
                        .map_err(|e| ApplyError::from(crate::local::LocalError::Task(e)))?;
                    if let Err(e) = checked
                        && e.is_permanent()
                    {
                        return Err(e.into());
                    }
                }
                self.start_download(global);
                Ok(())
            }
        }
    }

    fn cancel_download(&mut self, path: &RelPath) {
        if let Some(active) = self.active.remove(path) {
            active.cancel.cancel();
        }
    }

    fn start_download(&mut self, global: GlobalEntry) {
        let path = global.record.path.clone();
        if let Some(active) = self.active.get(&path) {
            if active.record.version == global.record.version {
                return;
            }
            tracing::debug!(%path, "newer version announced; cancelling the older download");
            self.cancel_download(&path);
        }
        if self.active.len() >= self.parts.max_parallel_downloads {
            self.queued.insert(path);
            return;
        }
        let cancel = CancellationToken::new();
        self.active.insert(path.clone(), Running { record: global.record.clone(), cancel: cancel.clone() });
        let downloader = self.parts.downloader.clone();
        let installer = Installer {
            applier: self.applier.clone(),
            local: self.parts.local.clone(),
            source: self.parts.source.clone(),
        };
        let record = global.record.clone();
        let job = DownloadJob { record: global.record, holders: global.holders };
        self.jobs.spawn(async move {
            let result = match downloader.download(job, cancel.clone()).await {
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

    async fn finish_download(&mut self, done: DownloadDone) {
        let DownloadDone { path, record, result } = done;
        if self.active.get(&path).is_some_and(|a| a.record.version == record.version) {
            self.active.remove(&path);
        }
        self.start_queued();
        let (outcome, installed) = match result {
            Ok(done) => done,
            Err(e) => {
                if self.global.get(&path).is_some_and(|g| g.record.version == record.version) {
                    let permanent = e.retry() == Retry::Permanent;
                    self.failed(path, "download failed", &e, permanent);
                }
                return;
            }
        };
        match installed {
            Installed::Yes => {
                let sources: Vec<String> = outcome
                    .fetched_by_holder
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(id, n)| format!("{}={n}", id.fmt_short()))
                    .collect();
                tracing::info!(
                    "synced {path} ({} bytes) in {} ms: {} bytes local, {} bytes fetched from {} peers [{}], {} bytes resumed",
                    record.size,
                    outcome.elapsed.as_millis(),
                    outcome.bytes_local,
                    outcome.bytes_fetched,
                    sources.len(),
                    sources.join(", "),
                    outcome.bytes_resumed
                );
                self.recheck.insert(path.clone(), Instant::now() + RECHECK_AFTER);
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
                let permanent = e.is_permanent();
                self.failed(path, "cannot install the downloaded file", &e, permanent);
            }
        }
    }

    /// A path could not be brought in line with its global record. A
    /// transient failure is retried later; a permanent one (a parent that
    /// is a symlink or a file, a name too long for this file system, a
    /// record that cannot be right) is parked: logged once, and left alone
    /// until a different version of the path arrives.
    fn failed(&mut self, path: RelPath, what: &str, error: &dyn std::fmt::Display, permanent: bool) {
        let Some(global) = self.global.get(&path) else { return };
        if permanent {
            tracing::warn!(%path, "{what}: {error}; parked until a newer version arrives");
            self.parked.insert(path, global.record.version.clone());
        } else {
            tracing::warn!(%path, "{what}: {error}; will retry");
            self.retry.insert(path, Instant::now() + RETRY_EVERY);
        }
    }

    async fn have(&self, record: &FileRecord) {
        self.parts
            .client
            .send(ClientCommand::Have { path: record.path.clone(), version: record.version.clone() })
            .await;
    }
}
