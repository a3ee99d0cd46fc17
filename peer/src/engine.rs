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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dartsync_shared::proto::ptp::{Delta, Holder};
use dartsync_shared::{Causality, FileKind, FileRecord, PeerId, RelPath};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApplyError};
use crate::download::{DownloadError, DownloadJob, DownloadOutcome, Downloader};
use crate::history::History;
use crate::local::LocalState;
use crate::source::IndexSource;
use crate::tracker_client::{ClientCommand, TrackerClient, TrackerEvent};

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
pub struct GlobalEntry {
    /// The global record.
    pub record: FileRecord,
    /// Holders other than this peer.
    pub holders: Vec<Holder>,
}

/// What to do about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: in sync, or our version is newer or concurrent (announced).
    Nothing,
    /// The disk has an unannounced edit: let the scanner announce it.
    AnnounceLocal,
    /// Our bytes already are the global content: adopt its version.
    Adopt,
    /// Create the folder.
    MakeDir,
    /// Create the symlink.
    MakeLink,
    /// Delete what is there (file, link or empty folder).
    Delete,
    /// Fetch the content.
    Download,
}

/// Decides what to do about one path, from the global record, the index's
/// record (`None` if the path was never indexed) and whether the disk
/// differs from the index. Pure: no I/O.
pub fn plan(global: &FileRecord, indexed: Option<&FileRecord>, locally_modified: bool) -> Action {
    if let Some(local) = indexed {
        match global.version.compare(&local.version) {
            Causality::Equal if !locally_modified => return Action::Nothing,
            Causality::Dominates => {}
            // Ours is newer, concurrent, or equal but edited since: the
            // scanner announces it and the tracker decides.
            _ => return if locally_modified { Action::AnnounceLocal } else { Action::Nothing },
        }
        if locally_modified {
            return Action::AnnounceLocal;
        }
        if global.same_content(local) && global.kind == local.kind {
            return Action::Adopt;
        }
    } else if locally_modified {
        // Something unindexed sits at that path: never overwrite or delete
        // it blindly.
        return Action::AnnounceLocal;
    }
    if global.deleted {
        return Action::Delete;
    }
    match global.kind {
        FileKind::Dir => Action::MakeDir,
        FileKind::Symlink { .. } => Action::MakeLink,
        FileKind::File => Action::Download,
    }
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

/// What became of a finished download.
#[derive(Debug)]
enum Installed {
    /// In place, indexed.
    Yes,
    /// Not wanted any more, or the local file was edited meanwhile.
    Skipped,
    /// Installing failed.
    Failed(ApplyError),
}

/// What a download task needs to move its result into place; cheap to
/// clone, so installs run in the download tasks, concurrently.
#[derive(Debug, Clone)]
struct Installer {
    root: PathBuf,
    history: History,
    local: LocalState,
    source: Arc<IndexSource>,
}

impl Installer {
    /// Moves a finished download into place unless the local file was
    /// edited meanwhile or holds a version the record does not supersede.
    async fn install(&self, record: &FileRecord, outcome: &DownloadOutcome) -> Installed {
        match self.try_install(record, outcome).await {
            Ok(true) => Installed::Yes,
            Ok(false) => {
                let _ = std::fs::remove_file(&outcome.temp_path);
                Installed::Skipped
            }
            Err(e) => {
                let _ = std::fs::remove_file(&outcome.temp_path);
                Installed::Failed(e)
            }
        }
    }

    async fn try_install(&self, record: &FileRecord, outcome: &DownloadOutcome) -> Result<bool, ApplyError> {
        let path = &record.path;
        let local = &self.local;
        let before = local.index().get(path).map_err(ApplyError::local)?;
        let modified = local.is_locally_modified(path).await.map_err(ApplyError::local)?;
        if plan(record, before.as_ref().map(|e| &e.record), modified) != Action::Download {
            if modified {
                local.mark_dirty(path);
            }
            return Ok(false);
        }
        let saved = Arc::new(std::sync::Mutex::new(None));
        let op = {
            let (root, history, record, temp, saved) =
                (self.root.clone(), self.history.clone(), record.clone(), outcome.temp_path.clone(), saved.clone());
            move || {
                let kept = apply::install_file(&root, &history, &record, &temp).map_err(std::io::Error::other)?;
                *saved.lock().expect("not poisoned") = kept;
                Ok(())
            }
        };
        let applied = local
            .apply_if_unmodified(path, record.clone(), outcome.chunks.clone(), op)
            .await
            .map_err(ApplyError::local)?;
        if applied {
            remember_saved(&self.source, saved, before);
        } else {
            local.mark_dirty(path);
        }
        Ok(applied)
    }
}

/// Tells the chunk source where the previous content of a path went.
fn remember_saved(
    source: &IndexSource,
    saved: Arc<std::sync::Mutex<Option<PathBuf>>>,
    before: Option<crate::index::IndexEntry>,
) {
    let saved = saved.lock().expect("not poisoned").take();
    if let (Some(saved), Some(before)) = (saved, before)
        && before.record.is_file()
    {
        source.remember_history(saved, before.record.content, &before.chunks);
    }
}

/// A download in progress.
#[derive(Debug)]
struct Active {
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
}

/// The running engine.
#[derive(Debug)]
pub struct Engine {
    parts: EngineParts,
    root: PathBuf,
    global: HashMap<RelPath, GlobalEntry>,
    active: HashMap<RelPath, Active>,
    jobs: JoinSet<DownloadDone>,
    /// Paths to reconsider on the next pass.
    dirty: BTreeSet<RelPath>,
    /// Paths waiting to be retried, and when.
    retry: HashMap<RelPath, Instant>,
    /// Paths waiting for a free download slot.
    queued: BTreeSet<RelPath>,
    /// Paths the engine wrote, to re-check once the watcher has settled.
    recheck: Vec<(Instant, RelPath)>,
    /// The tracker epoch the global table belongs to.
    epoch: Option<u64>,
}

impl Engine {
    /// A new engine over `parts`.
    pub fn new(parts: EngineParts) -> Self {
        let root = parts.local.dirs().root.clone();
        Engine {
            parts,
            root,
            global: HashMap::new(),
            active: HashMap::new(),
            jobs: JoinSet::new(),
            dirty: BTreeSet::new(),
            retry: HashMap::new(),
            queued: BTreeSet::new(),
            recheck: Vec::new(),
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
                let ours = self.parts.local.index().piece_len().ok().flatten();
                if ours.is_some_and(|p| p != welcome.piece_len) {
                    tracing::warn!(
                        "the tracker's piece length is {} bytes but this folder is chunked with {:?}; \
                         transfers still work, delta sync is less effective",
                        welcome.piece_len,
                        ours
                    );
                }
                tracing::debug!(epoch = welcome.epoch, "connected to tracker");
            }
            Event::Tracker(TrackerEvent::Disconnected(_)) => {}
            Event::Tracker(TrackerEvent::Delta(delta)) => self.apply_delta(delta),
            Event::Download(done) => self.finish_download(*done).await,
            Event::Tick => {
                let now = Instant::now();
                let due: Vec<RelPath> =
                    self.retry.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
                for path in due {
                    self.retry.remove(&path);
                    self.dirty.insert(path);
                }
                let (due, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.recheck).into_iter().partition(|(at, _)| *at <= now);
                self.recheck = later;
                for (_, path) in due {
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
            let waiting = self.retry.remove(&path).is_some();
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
                tracing::warn!(%path, "cannot apply: {e}; will retry");
                self.retry.insert(path, Instant::now() + RETRY_EVERY);
            }
        }
    }

    async fn reconcile(&mut self, path: &RelPath) -> Result<(), ApplyError> {
        let Some(global) = self.global.get(path).cloned() else { return Ok(()) };
        let before = self.parts.local.index().get(path).map_err(ApplyError::local)?;
        let modified = self.parts.local.is_locally_modified(path).await.map_err(ApplyError::local)?;
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
                local.adopt_version(&global.record).await.map_err(ApplyError::local)?;
                self.have(&global.record).await;
                Ok(())
            }
            Action::MakeDir | Action::MakeLink | Action::Delete => {
                let record = global.record.clone();
                let disk = record.path.to_local(&self.root);
                if record.deleted && std::fs::read_dir(&disk).is_ok_and(|mut d| d.next().is_some()) {
                    tracing::debug!(%path, "folder deleted elsewhere still has content here; kept");
                    return Ok(());
                }
                let saved = Arc::new(std::sync::Mutex::new(None));
                let op = {
                    let (root, history, record, saved) =
                        (self.root.clone(), self.parts.history.clone(), record.clone(), saved.clone());
                    move || {
                        let out = apply::apply_metadata(&root, &history, &record).map_err(std::io::Error::other)?;
                        *saved.lock().expect("not poisoned") = out.saved;
                        if out.outcome == apply::MetaOutcome::NotEmpty {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::DirectoryNotEmpty,
                                "folder still has content",
                            ));
                        }
                        Ok(())
                    }
                };
                let applied =
                    local.apply_if_unmodified(path, record.clone(), Vec::new(), op).await.map_err(ApplyError::local)?;
                if !applied {
                    local.mark_dirty(path);
                    return Ok(());
                }
                remember_saved(&self.parts.source, saved, before);
                self.recheck.push((Instant::now() + RECHECK_AFTER, path.clone()));
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
        self.active.insert(path.clone(), Active { record: global.record.clone(), cancel: cancel.clone() });
        let downloader = self.parts.downloader.clone();
        let installer = Installer {
            root: self.root.clone(),
            history: self.parts.history.clone(),
            local: self.parts.local.clone(),
            source: self.parts.source.clone(),
        };
        let record = global.record.clone();
        let job = DownloadJob { record: global.record, holders: global.holders };
        self.jobs.spawn(async move {
            let result = match downloader.download(job, cancel.clone()).await {
                Ok(outcome) if cancel.is_cancelled() => {
                    let _ = std::fs::remove_file(&outcome.temp_path);
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
                    tracing::warn!(%path, "download failed: {e}; will retry");
                    self.retry.insert(path, Instant::now() + RETRY_EVERY);
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
                self.recheck.push((Instant::now() + RECHECK_AFTER, path.clone()));
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
                tracing::warn!(%path, "cannot install the downloaded file: {e}; will retry");
                self.retry.insert(path, Instant::now() + RETRY_EVERY);
            }
        }
    }

    async fn have(&self, record: &FileRecord) {
        self.parts
            .client
            .send(ClientCommand::Have { path: record.path.clone(), version: record.version.clone() })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::{ContentHash, ShortId, VersionVector};

    fn rec(kind: FileKind, content: &[u8], vv: &[(u64, u64)], deleted: bool) -> FileRecord {
        let file = kind == FileKind::File && !deleted;
        FileRecord {
            path: RelPath::new("p").unwrap(),
            kind,
            size: if file { content.len() as u64 } else { 0 },
            mtime_ns: 0,
            mode: 0o644,
            content: if file { ContentHash::of(content) } else { ContentHash::empty() },
            chunks: ContentHash::empty(),
            version: VersionVector::from_entries(vv.iter().map(|(p, c)| (ShortId(*p), *c))),
            deleted,
        }
    }

    #[test]
    fn plan_table() {
        use Action::*;
        let f = |c: &[u8], vv: &[(u64, u64)]| rec(FileKind::File, c, vv, false);
        let tomb = |vv: &[(u64, u64)]| rec(FileKind::File, b"", vv, true);
        let dir = |vv: &[(u64, u64)]| rec(FileKind::Dir, b"", vv, false);
        let cases: Vec<(FileRecord, Option<FileRecord>, bool, Action)> = vec![
            // New file, nothing here.
            (f(b"a", &[(1, 1)]), None, false, Download),
            // Same version: nothing.
            (f(b"a", &[(1, 1)]), Some(f(b"a", &[(1, 1)])), false, Nothing),
            // Newer global version with other bytes.
            (f(b"b", &[(1, 2)]), Some(f(b"a", &[(1, 1)])), false, Download),
            // Newer global version with our bytes (merged conflict): adopt.
            (f(b"a", &[(1, 2), (2, 1)]), Some(f(b"a", &[(2, 1)])), false, Adopt),
            // Our version is newer or concurrent: the tracker decides.
            (f(b"a", &[(1, 1)]), Some(f(b"b", &[(1, 2)])), false, Nothing),
            (f(b"a", &[(1, 1)]), Some(f(b"b", &[(2, 1)])), false, Nothing),
            // Unannounced local edit: never overwritten.
            (f(b"b", &[(1, 2)]), Some(f(b"a", &[(1, 1)])), true, AnnounceLocal),
            (tomb(&[(1, 2)]), Some(f(b"a", &[(1, 1)])), true, AnnounceLocal),
            // Unindexed local file where a global file wants to go.
            (f(b"a", &[(1, 1)]), None, true, AnnounceLocal),
            // Deletions, folders.
            (tomb(&[(1, 2)]), Some(f(b"a", &[(1, 1)])), false, Delete),
            (tomb(&[(1, 1)]), None, false, Delete),
            (dir(&[(1, 1)]), None, false, MakeDir),
            (dir(&[(1, 2)]), Some(dir(&[(1, 1)])), false, Adopt),
        ];
        for (i, (global, indexed, modified, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan(&global, indexed.as_ref(), modified), want, "case {i}");
        }
    }
}
