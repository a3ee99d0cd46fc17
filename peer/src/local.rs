//! The peer's local state: the facade over [`crate::dirs`], [`crate::index`],
//! [`crate::scan`], [`crate::watch`] and [`crate::ignore`] that the sync
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

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::chunk::ChunkInfo;
use dartsync_shared::codec::CodecError;
use dartsync_shared::key::KeyError;
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use dartsync_shared::{FileRecord, RelPath, ShortId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dirs::PeerDirs;
use crate::ignore::IgnoreRules;
use crate::index::Index;
use crate::scan::{ScanReport, Scanner, ScannerConfig};
use crate::watch::{Wakeup, Watcher};

/// Capacity of the channel of local changes.
pub const CHANGES_CAPACITY: usize = 1024;
/// Capacity of the command channel ([`LocalState::mark_dirty`]); overflow
/// turns into a full rescan.
const COMMAND_CAPACITY: usize = 1024;
/// Capacity of the watcher's channel, in debounced batches; overflow turns
/// into a full rescan.
const WATCH_CAPACITY: usize = 256;

/// Why an operation on the local state failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file or folder could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The path on disk.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The index database could not be opened (in use by another process,
    /// unreadable, or not a redb file).
    #[error("cannot open the index {path}: {source}")]
    IndexOpen {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// A read or write of the index failed.
    #[error("index: {0}")]
    Index(Box<redb::Error>),
    /// The index was written by an incompatible version.
    #[error("index {path} has schema {found}; this version reads schema {supported}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u64,
        /// The schema this build understands.
        supported: u64,
    },
    /// A stored value does not decode or does not validate.
    #[error("index entry {key:?} is corrupt: {what}")]
    Corrupt {
        /// The key of the bad value.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// A value could not be encoded for storage (e.g. a chunk list beyond
    /// the codec's size limit).
    #[error("cannot store {path}: {source}")]
    Encode {
        /// The path whose entry failed.
        path: RelPath,
        /// The cause.
        source: CodecError,
    },
    /// The node identity could not be read or created.
    #[error("identity: {0}")]
    Identity(#[from] KeyError),
    /// The file watcher could not be started.
    #[error("file watcher: {0}")]
    Watch(#[from] notify::Error),
    /// A record handed to [`LocalState`] is inconsistent.
    #[error("record for {path} refused: {what}")]
    InvalidRecord {
        /// The path concerned.
        path: RelPath,
        /// What is wrong.
        what: String,
    },
    /// The scanner task has stopped (shutdown).
    #[error("the local state has stopped")]
    Stopped,
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for LocalError {
            fn from(e: $t) -> Self {
                LocalError::Index(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// How to run the local state of one folder.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The synced folder (created if missing).
    pub root: PathBuf,
    /// Average chunk size (the tracker's piece length).
    pub piece_len: u32,
    /// Interval of the full rescan that catches missed events.
    pub rescan: Duration,
    /// This peer's id in version vectors.
    pub me: ShortId,
    /// Watcher debounce; also the quiet period: a file modified more
    /// recently than this is not hashed yet (it may still be written).
    pub debounce: Duration,
}

impl LocalConfig {
    /// Default full-rescan interval.
    pub const DEFAULT_RESCAN: Duration = Duration::from_secs(600);
    /// Default watcher debounce and quiet period.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

    /// A configuration with the default piece length, rescan interval and
    /// debounce.
    pub fn new(root: impl Into<PathBuf>, me: ShortId) -> LocalConfig {
        LocalConfig {
            root: root.into(),
            piece_len: DEFAULT_PIECE_LEN,
            rescan: Self::DEFAULT_RESCAN,
            me,
            debounce: Self::DEFAULT_DEBOUNCE,
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
    index: Index,
    scanner: Arc<Scanner>,
    commands: mpsc::Sender<Command>,
    wakeup: Arc<Wakeup>,
    /// Number of full scans finished (successfully or not).
    scans: watch::Receiver<u64>,
    tasks: TaskTracker,
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

impl LocalState {
    /// Opens `.dartsync/` and the index, starts the watcher and the scanner
    /// task, and returns the handle with the stream of local changes (new
    /// versions with a bumped vector, tombstones, and re-chunked records
    /// after a piece-length change). The startup scan runs in the
    /// background; [`LocalState::initial_scan_done`] tells when it
    /// finished. Everything stops when `shutdown` is cancelled.
    pub async fn start(
        cfg: LocalConfig,
        shutdown: CancellationToken,
    ) -> Result<(LocalState, mpsc::Receiver<FileRecord>), LocalError> {
        let root = cfg.root.clone();
        let (dirs, index, rules) = tokio::task::spawn_blocking(move || -> Result<_, LocalError> {
            let dirs = PeerDirs::create(&root)?;
            let index = Index::open(&dirs.index)?;
            let rules = IgnoreRules::load(&dirs.root);
            Ok((dirs, index, rules))
        })
        .await??;

        let (changes_tx, changes_rx) = mpsc::channel(CHANGES_CAPACITY);
        let scanner_config =
            ScannerConfig { root: dirs.root.clone(), me: cfg.me, piece_len: cfg.piece_len, quiet: cfg.debounce };
        let scanner = Arc::new(Scanner::new(scanner_config, index.clone(), rules, changes_tx, shutdown.clone()));

        // The watcher starts before the startup scan so no change between
        // the two is lost.
        let wakeup = Arc::new(Wakeup::default());
        let (watch_tx, watch_rx) = mpsc::channel(WATCH_CAPACITY);
        let (watch_root, watch_wakeup, debounce) = (dirs.root.clone(), wakeup.clone(), cfg.debounce);
        let watcher =
            match tokio::task::spawn_blocking(move || Watcher::start(&watch_root, debounce, watch_tx, watch_wakeup))
                .await?
            {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::warn!(%err, "file watcher unavailable; relying on periodic rescans");
                    None
                }
            };

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (scans_tx, scans_rx) = watch::channel(0u64);
        let actor = Actor {
            scanner: scanner.clone(),
            index: index.clone(),
            root: dirs.root.clone(),
            piece_len: cfg.piece_len,
            rescan_every: cfg.rescan,
            retry_delay: cfg.debounce.max(Duration::from_millis(50)),
            commands: commands_rx,
            watch_rx,
            wakeup: wakeup.clone(),
            scans: scans_tx,
            shutdown,
            dirty: BTreeSet::new(),
            retry: HashMap::new(),
            waiters: Vec::new(),
            want_full: false,
            next_full: Instant::now() + cfg.rescan,
            _watcher: watcher,
        };
        let tasks = TaskTracker::new();
        tasks.spawn(actor.run());
        tasks.close();
        let inner = Inner { dirs, index, scanner, commands: commands_tx, wakeup, scans: scans_rx, tasks };
        Ok((LocalState { inner: Arc::new(inner) }, changes_rx))
    }

    /// The folder layout.
    pub fn dirs(&self) -> &PeerDirs {
        &self.inner.dirs
    }

    /// The index (synchronous: call it from `spawn_blocking`).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// Records a file, folder, symlink or tombstone the peer itself wrote
    /// (after the rename into place, or the delete): stores `record` (its
    /// version vector is the global one) and `chunks` with a fresh stat of
    /// the disk, so the scanner sees no local change. If the disk does not
    /// hold what the record describes, the path is re-checked (and any
    /// difference becomes a local change).
    pub async fn record_applied(
        &self,
        path: &RelPath,
        record: FileRecord,
        chunks: Vec<ChunkInfo>,
    ) -> Result<(), LocalError> {
        let scanner = self.inner.scanner.clone();
        let p = path.clone();
        let agrees = tokio::task::spawn_blocking(move || scanner.record_applied(&p, &record, &chunks)).await??;
        if !agrees {
            self.mark_dirty(path);
        }
        Ok(())
    }

    /// The race-free form of "check [`is_locally_modified`](Self::is_locally_modified),
    /// write, [`record_applied`](Self::record_applied)": under the commit
    /// lock, refuses (returns `Ok(false)`, `op` not run) if the disk differs
    /// from the index for `path`; otherwise runs `op` (the rename into
    /// place, the delete, the mkdir) and records `record` with a fresh stat.
    /// No scan can commit between the check and the record.
    pub async fn apply_if_unmodified<F>(
        &self,
        path: &RelPath,
        record: FileRecord,
        chunks: Vec<ChunkInfo>,
        op: F,
    ) -> Result<bool, LocalError>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let scanner = self.inner.scanner.clone();
        let p = path.clone();
        let outcome =
            tokio::task::spawn_blocking(move || scanner.apply_if_unmodified(&p, &record, &chunks, op)).await??;
        match outcome {
            None => Ok(false),
            Some(agrees) => {
                if !agrees {
                    self.mark_dirty(path);
                }
                Ok(true)
            }
        }
    }

    /// True when the disk differs from the index for `path`: an unannounced
    /// local edit, including a file that appeared or vanished. Reads the
    /// file only if its stat moved. An ignored file at a path the index does
    /// not know counts as a difference (never overwritten silently).
    pub async fn is_locally_modified(&self, path: &RelPath) -> Result<bool, LocalError> {
        let scanner = self.inner.scanner.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || scanner.differs(&p)).await?
    }

    /// Asks the scanner to re-check `path` (and its subtree) soon.
    pub fn mark_dirty(&self, path: &RelPath) {
        if self.inner.commands.try_send(Command::Dirty(path.clone())).is_err() {
            self.inner.wakeup.request_rescan();
        }
    }

    /// Stores `record` as the version of its path without a content change
    /// (e.g. the tracker merged vectors and our file already has the
    /// winner's content), if the disk holds exactly that content (or is
    /// absent, for a tombstone). Returns whether it was stored.
    pub async fn adopt_version(&self, record: &FileRecord) -> Result<bool, LocalError> {
        let scanner = self.inner.scanner.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || scanner.adopt_version(&record)).await?
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

    /// Number of full scans finished so far.
    pub fn full_scans(&self) -> u64 {
        *self.inner.scans.borrow()
    }

    /// Total bytes read for hashing since start.
    pub fn bytes_hashed(&self) -> u64 {
        self.inner.scanner.bytes_hashed()
    }

    /// Waits until the scanner task and the watcher have stopped (after the
    /// shutdown token was cancelled).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// The scanner task: owns the dirty set, the retry timers and the watcher.
struct Actor {
    scanner: Arc<Scanner>,
    index: Index,
    root: PathBuf,
    piece_len: u32,
    rescan_every: Duration,
    retry_delay: Duration,
    commands: mpsc::Receiver<Command>,
    watch_rx: mpsc::Receiver<Vec<PathBuf>>,
    wakeup: Arc<Wakeup>,
    scans: watch::Sender<u64>,
    shutdown: CancellationToken,
    dirty: BTreeSet<RelPath>,
    /// Paths to re-check, with when.
    retry: HashMap<RelPath, Instant>,
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
    Paths(Vec<PathBuf>),
    Timer,
}

impl Actor {
    async fn run(mut self) {
        let index = self.index.clone();
        let force = match tokio::task::spawn_blocking(move || index.piece_len()).await {
            Ok(Ok(stored)) => stored != Some(self.piece_len),
            Ok(Err(err)) => {
                tracing::error!(%err, "cannot read the stored piece length; re-chunking everything");
                true
            }
            Err(err) => {
                tracing::error!(%err, "startup scan task failed");
                return;
            }
        };
        self.full_scan(force).await;
        while !self.shutdown.is_cancelled() {
            let next_retry = self.retry.values().min().copied();
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
        }
        tracing::debug!("local state stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dirty(path) => {
                self.dirty.insert(path);
            }
            Command::Rescan(reply) => self.waiters.push(reply),
        }
    }

    fn on_paths(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            if path == self.root {
                continue;
            }
            match RelPath::from_local(&self.root, &path) {
                Ok(rel) => {
                    self.dirty.insert(rel);
                }
                Err(err) => tracing::debug!(path = %path.display(), %err, "event for an unsyncable path"),
            }
        }
    }

    async fn step(&mut self) {
        if self.wakeup.take_rescan() {
            self.want_full = true;
        }
        let now = Instant::now();
        let due: Vec<RelPath> = self.retry.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
        for path in due {
            self.retry.remove(&path);
            self.dirty.insert(path);
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
                    self.retry.entry(path).or_insert(at);
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
