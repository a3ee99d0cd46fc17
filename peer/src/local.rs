//! The peer's local state: the facade over [`crate::local::dirs`], [`crate::local::index`],
//! [`crate::local::scan`], [`crate::watch`] and [`crate::local::ignore`] that the sync
//! engine uses.
//!
//! [`LocalState::start`] opens `.dartsync/` and the index, starts the
//! watcher, and spawns one task (the *scanner task*) that owns every scan:
//! first the startup scan (offline edits become new versions, vanished
//! paths tombstones, unchanged files cost one `stat`), then a loop over
//! dirty paths (from the watcher and [`LocalState::mark_dirty`]), deferred
//! retries, full-rescan requests and the periodic full rescan. New local
//! versions come out of one bounded channel of [`FileRecord`]s, in commit
//! order; a slow consumer slows the scanner down (backpressure), nothing
//! piles up in memory.
//!
//! Invariants:
//! - Only the scanner task creates versions. Records the peer writes itself
//!   go in through [`LocalState::record_applied`] /
//!   [`LocalState::apply_if_unmodified`] / [`LocalState::adopt_version`],
//!   which store them with a fresh stat under the commit lock; the scanner
//!   then finds disk == index and emits nothing (echo suppression by state
//!   comparison, no ignore-next-event flags).
//! - Every blocking call (stat, hashing, redb) runs in `spawn_blocking`.
//! - The task stops when the shutdown token is cancelled; after
//!   [`LocalState::stopped`] resolves and every handle is dropped the index
//!   is closed and may be reopened.
//!
//! No network code lives here; announcing the changes is the tracker
//! client's job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dartsync_shared::chunk::{ChunkInfo, ChunkParams};
use dartsync_shared::key::Identity;
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use dartsync_shared::{FileRecord, RelPath, ShortId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) mod commit;
pub(crate) mod dirs;
pub(crate) mod error;
pub(crate) mod ignore;
pub(crate) mod index;
mod probe;
mod scan;
pub(crate) mod stat;
mod watch;

use crate::deadlines::Deadlines;
use commit::{Gated, WriteGate, Wrote};
use dirs::{FolderLock, Jails, PeerDirs};
pub(crate) use error::LocalError;
use ignore::IgnoreRules;
use index::{Index, IndexEntry};
use probe::Probe;
use scan::{ScanReport, Scanner, ScannerConfig};
use watch::{Touched, Wakeup, Watcher};

/// Capacity of the channel of local changes.
pub const CHANGES_CAPACITY: usize = 1024;
/// Capacity of the command channel ([`LocalState::mark_dirty`]); overflow
/// turns into a full rescan.
const COMMAND_CAPACITY: usize = 1024;
/// Capacity of the watcher's channel, in batches; while it is full the
/// watcher gathers further events into the next batch.
const WATCH_CAPACITY: usize = 4;
/// The engine's index entries ([`Index::write_soon`]) are made durable
/// this long after the first of a burst: one group commit instead of one
/// per file.
const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// How to run the local state of one folder.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Average chunk size (the tracker's piece length).
    pub piece_len: u32,
    /// Interval of the full rescan that catches missed events.
    pub rescan: Duration,
    /// This peer's id in version vectors.
    pub me: ShortId,
    /// The quiet period: a file modified more recently than this is not
    /// hashed yet (it may still be written), unless an event certified it
    /// complete since (closed after writing, renamed into place).
    pub quiet: Duration,
    /// Do not announce permission bits: every file reads as 0644 and every
    /// folder as 0755, so a local `chmod` is no change (file systems
    /// without Unix modes).
    pub ignore_perms: bool,
    /// Report local changes but never index them (a receive-only folder).
    pub receive_only: bool,
}

impl LocalConfig {
    /// Default full-rescan interval.
    pub const DEFAULT_RESCAN: Duration = Duration::from_secs(600);
    /// Default quiet period: longer than the pauses of a slow writer that
    /// keeps its file open (a download, a recording), so such a file is
    /// announced once, whole.
    pub const DEFAULT_QUIET: Duration = Duration::from_secs(3);

    /// A configuration with the default piece length, rescan interval and
    /// quiet period.
    pub fn new(me: ShortId) -> LocalConfig {
        LocalConfig {
            piece_len: DEFAULT_PIECE_LEN,
            rescan: Self::DEFAULT_RESCAN,
            me,
            quiet: Self::DEFAULT_QUIET,
            ignore_perms: false,
            receive_only: false,
        }
    }
}

enum Command {
    Dirty(RelPath),
    Rescan(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Inner {
    dirs: PeerDirs,
    jails: Jails,
    /// The folder's file system ignores letter case.
    case_insensitive: bool,
    index: Index,
    gate: Arc<WriteGate>,
    commands: mpsc::Sender<Command>,
    wakeup: Arc<Wakeup>,
    /// Number of full scans finished (successfully or not).
    scans: tokio::sync::watch::Receiver<u64>,
    /// Paths the scanner saw change and has not recorded yet (still being
    /// written, or changed while it looked).
    unsettled: Arc<AtomicUsize>,
    tasks: TaskTracker,
    /// The folder's lock, held for as long as this state lives (last, so
    /// it is released after everything above is dropped).
    _lock: FolderLock,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Dirty(p) => write!(f, "Dirty({p})"),
            Command::Rescan(_) => f.write_str("Rescan"),
        }
    }
}

/// A handle on the local state of one folder (cheap to clone).
#[derive(Debug, Clone)]
pub struct LocalState {
    inner: Arc<Inner>,
}

/// A folder whose state directory and index are open, before its scanner
/// and watcher start ([`LocalState::start`]). Lets the daemon learn the
/// stored piece length without opening the index twice.
#[derive(Debug)]
pub struct OpenFolder {
    dirs: PeerDirs,
    jails: Jails,
    case_insensitive: bool,
    index: Index,
    identity: Identity,
    piece_len: Option<u32>,
    lock: FolderLock,
}

impl OpenFolder {
    /// Creates (if needed) the folder and `.dartsync/`, loads the identity
    /// and opens the index (blocking: call it from `spawn_blocking` or
    /// before the runtime is busy).
    pub fn open(root: &std::path::Path) -> Result<OpenFolder, LocalError> {
        let dirs = PeerDirs::create(root)?;
        // Before the index: a second peer on this folder stops here, with
        // the first one's pid.
        let lock = FolderLock::acquire(&dirs)?;
        let jails = dirs.open_jails()?;
        let case_insensitive = dirs.is_case_insensitive()?;
        if case_insensitive {
            tracing::info!("{} ignores letter case: paths differing only in case are kept apart", dirs.root.display());
        }
        let identity = dirs.load_identity()?;
        let index = Index::open(&dirs.index)?;
        let piece_len = index.piece_len()?;
        Ok(OpenFolder { dirs, jails, case_insensitive, index, identity, piece_len, lock })
    }

    /// The folder layout.
    pub fn dirs(&self) -> &PeerDirs {
        &self.dirs
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The piece length the index was chunked with; `None` for a new
    /// folder.
    pub fn piece_len(&self) -> Option<u32> {
        self.piece_len
    }
}

impl LocalState {
    /// Starts the watcher and the scanner task over an [`OpenFolder`], and
    /// returns the handle with the stream of local changes (new versions
    /// with a bumped vector, tombstones, and re-chunked records after a
    /// piece-length change). The startup scan runs in the background;
    /// [`LocalState::initial_scan_done`] tells when it finished. Everything
    /// stops when `shutdown` is cancelled.
    pub async fn start(
        folder: OpenFolder,
        cfg: LocalConfig,
        shutdown: CancellationToken,
    ) -> Result<(LocalState, mpsc::Receiver<FileRecord>), LocalError> {
        let OpenFolder { dirs, jails, case_insensitive, index, piece_len: stored_piece_len, lock, .. } = folder;
        let folder_jail = jails.folder.clone();
        let rules = tokio::task::spawn_blocking(move || IgnoreRules::load(folder_jail)).await?;

        let (changes_tx, changes_rx) = mpsc::channel(CHANGES_CAPACITY);
        let probe = Probe::new(jails.folder.clone(), ChunkParams::for_piece_len(cfg.piece_len), cfg.ignore_perms);
        let gate = Arc::new(WriteGate::new(index.clone(), probe));
        let scanner_config = ScannerConfig { me: cfg.me, quiet: cfg.quiet, receive_only: cfg.receive_only };
        let scanner = Arc::new(Scanner::new(scanner_config, gate.clone(), rules, changes_tx, shutdown.clone()));

        // The watcher starts before the startup scan so no change between
        // the two is lost.
        let wakeup = Arc::new(Wakeup::default());
        let (watch_tx, watch_rx) = mpsc::channel(WATCH_CAPACITY);
        let (watch_root, watch_wakeup) = (dirs.root.clone(), wakeup.clone());
        let watcher =
            match tokio::task::spawn_blocking(move || Watcher::start(&watch_root, watch_tx, watch_wakeup)).await? {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::warn!(%err, "file watcher unavailable; relying on periodic rescans");
                    None
                }
            };

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (scans_tx, scans_rx) = tokio::sync::watch::channel(0u64);
        let unsettled = Arc::new(AtomicUsize::new(0));
        let task = ScanTask {
            scanner,
            index: index.clone(),
            root: dirs.root.clone(),
            piece_len: cfg.piece_len,
            rechunk: stored_piece_len != Some(cfg.piece_len),
            rescan_every: cfg.rescan,
            retry_delay: (cfg.quiet / 8).clamp(Duration::from_millis(20), Duration::from_millis(400)),
            commands: commands_rx,
            watch_rx,
            wakeup: wakeup.clone(),
            scans: scans_tx,
            unsettled: unsettled.clone(),
            shutdown,
            dirty: BTreeMap::new(),
            retry: Deadlines::default(),
            new_dirs: Deadlines::default(),
            waiters: Vec::new(),
            want_full: false,
            next_full: Instant::now() + cfg.rescan,
            _watcher: watcher,
        };
        let tasks = TaskTracker::new();
        tasks.spawn(flush_index(index.clone(), task.shutdown.clone()));
        tasks.spawn(task.run());
        tasks.close();
        let inner = Inner {
            dirs,
            jails,
            case_insensitive,
            index,
            gate,
            commands: commands_tx,
            wakeup,
            scans: scans_rx,
            unsettled,
            tasks,
            _lock: lock,
        };
        Ok((LocalState { inner: Arc::new(inner) }, changes_rx))
    }

    /// The folder layout.
    pub fn dirs(&self) -> &PeerDirs {
        &self.inner.dirs
    }

    /// The jails every write on behalf of the cluster goes through.
    pub(crate) fn jails(&self) -> &Jails {
        &self.inner.jails
    }

    /// Whether the folder's file system ignores letter case.
    pub(crate) fn case_insensitive(&self) -> bool {
        self.inner.case_insensitive
    }

    /// The index (synchronous: call it from `spawn_blocking`).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The index entry of `path` and whether the disk differs from it (an
    /// unannounced local edit, including a file that appeared or
    /// vanished): what the engine plans with. Reads the file only if its
    /// stat moved. An ignored file at a path the index does not know
    /// counts as a difference (never overwritten silently).
    pub(crate) async fn local_view(&self, path: &RelPath) -> Result<(Option<IndexEntry>, bool), LocalError> {
        let (local, p) = (self.clone(), path.clone());
        tokio::task::spawn_blocking(move || local.local_view_blocking(&p)).await?
    }

    /// [`LocalState::local_view`] for blocking code, so many paths share
    /// one trip to the blocking pool.
    pub(crate) fn local_view_blocking(&self, path: &RelPath) -> Result<(Option<IndexEntry>, bool), LocalError> {
        let gate = &self.inner.gate;
        let entry = gate.index.get(path)?;
        let differs = gate.differs_from(path, entry.as_ref().map(|e| (&e.record, e.stat)))?;
        Ok((entry, differs))
    }

    /// Runs `op` — a write of `record.path` on behalf of the cluster — and
    /// records `record` (with `chunks`) under the commit lock, unless the
    /// disk differs from the index or the index holds a version `record`
    /// does not supersede (see [`WriteGate::apply_if_unmodified`]). A path
    /// refused, or written but not matching the record afterwards, is
    /// re-checked by the scanner.
    pub(crate) async fn apply_if_unmodified<T, E, F>(
        &self,
        record: FileRecord,
        chunks: Vec<ChunkInfo>,
        op: F,
    ) -> Result<Gated<T>, E>
    where
        F: FnOnce() -> Result<Option<T>, E> + Send + 'static,
        T: Send + 'static,
        E: From<LocalError> + Send + 'static,
    {
        let gate = self.inner.gate.clone();
        let path = record.path.clone();
        let outcome = tokio::task::spawn_blocking(move || gate.apply_if_unmodified(&record, &chunks, op))
            .await
            .map_err(|e| E::from(LocalError::Task(e)))??;
        if matches!(outcome, Gated::Refused | Gated::Applied { agrees: false, .. }) {
            self.mark_dirty(&path);
        }
        Ok(outcome)
    }

    /// [`LocalState::apply_if_unmodified`] for many writes at once: one
    /// blocking task, one hold of the commit lock, one index commit (see
    /// [`WriteGate::apply_all_if_unmodified`]). One result per write, in
    /// order.
    pub(crate) async fn apply_all_if_unmodified<T, E, F>(
        &self,
        writes: Vec<(FileRecord, Vec<ChunkInfo>, F)>,
    ) -> Vec<Result<Gated<T>, E>>
    where
        F: FnOnce() -> Result<Option<Wrote<T>>, E> + Send + 'static,
        T: Send + 'static,
        E: From<LocalError> + Send + 'static,
    {
        let gate = self.inner.gate.clone();
        let paths: Vec<RelPath> = writes.iter().map(|(record, _, _)| record.path.clone()).collect();
        let outcomes = match tokio::task::spawn_blocking(move || gate.apply_all_if_unmodified(writes)).await {
            Ok(outcomes) => outcomes,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => return paths.iter().map(|_| Err(E::from(LocalError::Stopped))).collect(),
        };
        for (path, outcome) in paths.iter().zip(&outcomes) {
            if matches!(outcome, Ok(Gated::Refused | Gated::Applied { agrees: false, .. })) {
                self.mark_dirty(path);
            }
        }
        outcomes
    }

    /// Puts back the cluster's view of `path`: runs `op` (which moves what
    /// the disk holds there out of the way) and forgets the index entry,
    /// both under the commit lock, so the engine then sees a path it never
    /// had and fetches the global version. Used by `revert` in a
    /// receive-only folder.
    pub(crate) async fn set_aside<T, E, F>(&self, path: &RelPath, op: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<LocalError> + Send + 'static,
    {
        let gate = self.inner.gate.clone();
        let p = path.clone();
        let done = tokio::task::spawn_blocking(move || gate.set_aside(&p, op))
            .await
            .map_err(|e| E::from(LocalError::Task(e)))??;
        self.mark_dirty(path);
        Ok(done)
    }

    /// Runs `op` on the blocking pool under the commit lock: no engine
    /// write and no scanner commit runs meanwhile. For writes a user asks
    /// for (`dartsync restore`); the scanner then records them as a local
    /// change like any other.
    pub(crate) async fn with_commit_lock<T: Send + 'static>(
        &self,
        op: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LocalError> {
        let gate = self.inner.gate.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let _locked = gate.lock();
            op()
        })
        .await?)
    }

    /// Asks the scanner to re-check `path` (and its subtree) soon.
    pub fn mark_dirty(&self, path: &RelPath) {
        if self.inner.commands.try_send(Command::Dirty(path.clone())).is_err() {
            self.inner.wakeup.request_rescan();
        }
    }

    /// Stores `record` as the version of its path without a content change
    /// (see [`WriteGate::adopt_version`]). Returns whether it was stored.
    pub(crate) async fn adopt_version(&self, record: &FileRecord) -> Result<bool, LocalError> {
        let gate = self.inner.gate.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || gate.adopt_version(&record)).await?
    }

    /// Runs a full rescan now and waits for it to finish. Changes it finds
    /// are sent on the change stream before this returns.
    pub async fn rescan_now(&self) -> Result<(), LocalError> {
        let (tx, rx) = oneshot::channel();
        self.inner.commands.send(Command::Rescan(tx)).await.map_err(|_| LocalError::Stopped)?;
        rx.await.map_err(|_| LocalError::Stopped)
    }

    /// Waits until the startup scan finished (its changes are already on
    /// the change stream). Returns at once if the scanner task stopped.
    pub async fn initial_scan_done(&self) {
        let mut scans = self.inner.scans.clone();
        // An error means the task is gone: nothing more to wait for.
        let _ = scans.wait_for(|n| *n >= 1).await;
    }

    /// True once the startup scan has finished (or the scanner stopped):
    /// until then, files of the folder may not be indexed or announced
    /// yet, so the folder is not up to date whatever the tracker says.
    pub fn initial_scan_finished(&self) -> bool {
        *self.inner.scans.borrow() >= 1 || self.inner.scans.has_changed().is_err()
    }

    /// True while the scanner holds changed paths it has not recorded and
    /// announced yet: files still being written (it waits for them to
    /// settle), or changed while it looked at them.
    pub fn changes_unsettled(&self) -> bool {
        self.inner.unsettled.load(Ordering::Acquire) > 0
    }

    /// Total bytes read for hashing since start.
    pub fn bytes_hashed(&self) -> u64 {
        self.inner.gate.probe.bytes_hashed()
    }

    /// Waits until the scanner task and the watcher have stopped (after the
    /// shutdown token was cancelled).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// A folder recorded for the first time is scanned again this much later:
/// files created in it before the watcher added its watch make no event.
const NEW_DIR_RECHECK: Duration = Duration::from_millis(1500);

/// The scanner task: owns the dirty set, the retry timers and the watcher.
struct ScanTask {
    scanner: Arc<Scanner>,
    index: Index,
    root: PathBuf,
    piece_len: u32,
    /// The index was chunked with another piece length (or never): the
    /// startup scan re-chunks every file.
    rechunk: bool,
    rescan_every: Duration,
    retry_delay: Duration,
    commands: mpsc::Receiver<Command>,
    watch_rx: mpsc::Receiver<Vec<Touched>>,
    wakeup: Arc<Wakeup>,
    scans: tokio::sync::watch::Sender<u64>,
    /// Paths in `retry` and `dirty` after each step, for
    /// [`LocalState::changes_unsettled`].
    unsettled: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    /// Paths to check, with the instant an event certified each complete.
    dirty: BTreeMap<RelPath, Option<i64>>,
    /// Changed paths to re-check once they settled, ordered by when.
    retry: Deadlines<RelPath, Instant>,
    /// New folders to look at again (files made in them before they were
    /// watched), ordered by when: not known changes, so kept apart from
    /// `retry`.
    new_dirs: Deadlines<RelPath, Instant>,
    /// Callers of `rescan_now` waiting for the next full scan.
    waiters: Vec<oneshot::Sender<()>>,
    want_full: bool,
    next_full: Instant,
    // Dropped last: stops watching when the task ends.
    _watcher: Option<Watcher>,
}

enum Wake {
    Stop,
    Command(Command),
    Paths(Vec<Touched>),
    Timer,
}

/// Runs the group commits of the index until `shutdown`, then one last.
async fn flush_index(index: Index, shutdown: CancellationToken) {
    let flush = async |index: &Index| {
        let index = index.clone();
        match tokio::task::spawn_blocking(move || index.flush()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(%err, "cannot make index entries durable; tried again with the next change")
            }
            Err(err) => tracing::error!(%err, "index flush task failed"),
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = index.flush_wanted() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(FLUSH_AFTER) => {}
        }
        flush(&index).await;
    }
    // Entries written after this are flushed when the index closes.
    flush(&index).await;
}

impl ScanTask {
    async fn run(mut self) {
        self.full_scan(self.rechunk).await;
        self.publish_unsettled();
        while !self.shutdown.is_cancelled() {
            let next_retry = self.retry.next().into_iter().chain(self.new_dirs.next()).min();
            let wake = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Wake::Stop,
                () = self.wakeup.notified() => Wake::Timer,
                Some(cmd) = self.commands.recv() => Wake::Command(cmd),
                Some(paths) = self.watch_rx.recv() => Wake::Paths(paths),
                () = tokio::time::sleep_until(next_retry.unwrap_or(self.next_full)), if next_retry.is_some() => Wake::Timer,
                () = tokio::time::sleep_until(self.next_full) => {
                    self.want_full = true;
                    Wake::Timer
                }
            };
            match wake {
                Wake::Stop => break,
                Wake::Command(cmd) => self.on_command(cmd),
                Wake::Paths(paths) => self.on_paths(paths),
                Wake::Timer => {}
            }
            // Take everything already queued before scanning once.
            while let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
            }
            while let Ok(paths) = self.watch_rx.try_recv() {
                self.on_paths(paths);
            }
            self.step().await;
            self.publish_unsettled();
        }
        tracing::debug!("local state stopped");
    }

    /// Tells [`LocalState::changes_unsettled`] what waits to settle.
    fn publish_unsettled(&self) {
        self.unsettled.store(self.retry.len() + self.dirty.len(), Ordering::Release);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dirty(path) => self.touch(path, None),
            Command::Rescan(reply) => self.waiters.push(reply),
        }
    }

    fn on_paths(&mut self, touched: Vec<Touched>) {
        for Touched { path, settled_at } in touched {
            if path == self.root {
                continue;
            }
            match RelPath::from_local(&self.root, &path) {
                Ok(rel) => self.touch(rel, settled_at),
                Err(err) => tracing::debug!(path = %path.display(), %err, "event for an unsyncable path"),
            }
        }
    }

    /// Marks `path` dirty, keeping the latest certification of it.
    fn touch(&mut self, path: RelPath, settled_at: Option<i64>) {
        let slot = self.dirty.entry(path).or_insert(None);
        *slot = (*slot).max(settled_at);
    }

    async fn step(&mut self) {
        if self.wakeup.take_rescan() {
            self.want_full = true;
        }
        let now = Instant::now();
        for path in self.retry.take_due(now).into_iter().chain(self.new_dirs.take_due(now)) {
            self.touch(path, None);
        }
        if self.want_full || !self.waiters.is_empty() {
            self.full_scan(false).await;
        } else if !self.dirty.is_empty() {
            let paths = std::mem::take(&mut self.dirty);
            let scanner = self.scanner.clone();
            let result = tokio::task::spawn_blocking(move || scanner.check_paths(paths)).await;
            self.absorb(result, "re-check");
        }
    }

    /// Runs a full scan and answers whoever waits for one.
    async fn full_scan(&mut self, force: bool) {
        // Paths dirtied before this point are covered by the scan.
        self.dirty.clear();
        let waiters = std::mem::take(&mut self.waiters);
        let scanner = self.scanner.clone();
        let result = tokio::task::spawn_blocking(move || scanner.full_scan(force)).await;
        let complete = matches!(&result, Ok(Ok(report)) if !report.interrupted);
        self.absorb(result, "full scan");
        if force && complete {
            let index = self.index.clone();
            let piece_len = self.piece_len;
            match tokio::task::spawn_blocking(move || index.set_piece_len(piece_len)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(%err, "cannot store the piece length"),
                Err(err) => tracing::error!(%err, "cannot store the piece length"),
            }
        }
        self.want_full = false;
        self.next_full = Instant::now() + self.rescan_every;
        self.scans.send_modify(|n| *n += 1);
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    fn absorb(&mut self, result: Result<Result<ScanReport, LocalError>, tokio::task::JoinError>, what: &str) {
        match result {
            Ok(Ok(report)) => {
                let at = Instant::now() + self.retry_delay;
                for path in report.retry {
                    self.retry.insert_if_absent(path, at);
                }
                let later = Instant::now() + NEW_DIR_RECHECK;
                for dir in report.new_dirs {
                    self.new_dirs.insert_if_absent(dir, later);
                }
                if report.emitted > 0 {
                    tracing::debug!(changes = report.emitted, "{what} done");
                }
            }
            // Logged, not fatal: the next scan tries again.
            Ok(Err(err)) => tracing::error!(%err, "{what} failed"),
            Err(err) => tracing::error!(%err, "{what} task failed"),
        }
    }
}

#[cfg(test)]
mod tests;
