//! The watcher: notify (inotify on Linux), recursive over the folder,
//! turned into batches of [`Touched`] paths: "this may have changed", and
//! for some, "and it was complete at this instant".
//!
//! notify's callback runs on its own thread and only forwards raw events
//! into a channel. A second thread, the coalescer, drains that channel:
//! it drops access-only events (opens and closes without a write are not
//! subscribed to at all) and paths under `.dartsync/` (which is
//! not watched at all where the backend allows it), merges
//! repeated paths, and `try_send`s each batch into a bounded channel at
//! once (a burst is gathered for at most [`GATHER`]). It never blocks on
//! the scanner and never touches the index. When the channel is full, or
//! the kernel queue overflowed (notify's `Rescan` flag), it raises the
//! [`Wakeup`] rescan flag instead: a full rescan finds whatever the lost
//! events described.
//!
//! Two events certify a file complete — [`Touched::settled_at`]: a close
//! after writing (`IN_CLOSE_WRITE`), and a rename into place
//! (`IN_MOVED_TO`, which certifies the whole subtree of a moved folder).
//! The scanner announces such a file at once instead of waiting out the
//! quiet period, unless it changed again after that instant. Every other
//! event (a create, a write without a close yet, a chmod) leaves the file
//! to the quiet period, so a file still being written is never announced
//! half-written.
//!
//! An event is only a hint: the scanner re-stats the path and compares with
//! the index (so our own writes, already recorded, produce no change).
//! Symlinks are not followed. Watching is best effort by design: the
//! periodic full rescan ([`crate::local`]) catches anything missed
//! (inotify watch limits, events lost at startup).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use dartsync_shared::path::STATE_DIR;
use notify::event::{AccessKind, AccessMode, EventKindMask, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{Notify, mpsc};

use crate::local::error::LocalError;
use crate::local::stat::now_ns;

/// Raw events queued between notify's thread and the coalescer at most;
/// beyond that, events are dropped and a full rescan requested. The queue
/// allocates as events come ([`raw_queue`]): a `sync_channel` of this size
/// reserved 3.5 MiB up front, for a backlog that is nearly always empty.
const RAW_CAPACITY: usize = 65_536;
/// Distinct paths the coalescer holds while the scanner is busy at most;
/// beyond that, they are dropped and a full rescan requested.
const MAX_PENDING: usize = 100_000;
/// While the scanner's channel is full, the coalescer tries again this
/// often (gathering further events meanwhile).
const RESEND: Duration = Duration::from_millis(5);

/// A path that may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Touched {
    /// Absolute path.
    pub(crate) path: PathBuf,
    /// When an event certified the file (or, for a folder moved into
    /// place, everything under it) complete, in nanoseconds since the Unix
    /// epoch: closed after writing, or renamed into place. `None`: only
    /// the quiet period tells when it is complete.
    pub(crate) settled_at: Option<i64>,
}

/// A request for a full rescan, raised from any thread, awaited by the
/// scanner task.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    rescan: AtomicBool,
    notify: Notify,
}

impl Wakeup {
    /// Asks for a full rescan (events were lost).
    pub(crate) fn request_rescan(&self) {
        self.rescan.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Takes the pending rescan request, if any.
    pub(crate) fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::AcqRel)
    }

    /// Resolves after the next [`Wakeup::request_rescan`] (or at once if one
    /// happened since the last wait).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A running recursive watch; dropping it stops watching (notify's thread,
/// then the coalescer, which sees its input channel close).
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// What one raw event says about its paths.
enum Seen {
    /// Nothing worth a look (a read, an open).
    Ignore,
    /// May have changed; complete only once quiet.
    Changed,
    /// Complete as of now: closed after writing, or renamed into place.
    /// For a rename with both ends known, only the last path (the
    /// destination) is complete; the source is merely gone.
    Settled,
    /// The kernel dropped events.
    Lost,
}

fn classify(event: &notify::Event) -> Seen {
    if event.need_rescan() {
        return Seen::Lost;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Seen::Settled,
        EventKind::Access(_) => Seen::Ignore,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Seen::Settled,
        _ => Seen::Changed,
    }
}

impl Watcher {
    /// Watches `root` recursively. Batches of touched paths go to `paths`;
    /// lost events raise `wakeup`. Blocking: walks the tree to add watches.
    pub(crate) fn start(
        root: &Path,
        paths: mpsc::Sender<Vec<Touched>>,
        wakeup: Arc<Wakeup>,
    ) -> Result<Watcher, LocalError> {
        let (raw_tx, raw_rx) = raw_queue(RAW_CAPACITY);
        let handler_wakeup = wakeup.clone();
        let handler = move |result: notify::Result<notify::Event>| match result {
            Ok(event) => {
                // Full: events are lost, a rescan finds them. Disconnected:
                // the scanner is gone, nobody to tell.
                if let Err(RawSendError::Full) = raw_tx.try_send((event, now_ns())) {
                    handler_wakeup.request_rescan();
                }
            }
            Err(error) => tracing::warn!(%error, "file watcher error; the periodic rescan will catch up"),
        };
        // Creations, removals, writes, metadata and renames, and a close
        // after writing (it certifies a file complete); not opens or
        // closes without a write: every file the piece server or the
        // scanner reads would otherwise cost an event, one wake-up of
        // notify's thread and one of the coalescer, only to be dropped
        // (measured: a tenth of a writer's CPU serving 10,000 small files).
        let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
        let config = notify::Config::default().with_follow_symlinks(false).with_event_kinds(kinds);
        let mut watcher = notify::RecommendedWatcher::new(handler, config)?;
        watcher.watch(root, RecursiveMode::Recursive)?;
        let state_dir = root.join(STATE_DIR);
        // The peer's own writes under `.dartsync/` (downloads, the index,
        // the history) are not the folder's: unwatched, they cost neither
        // the kernel nor notify's thread an event each. Best effort (a
        // backend that cannot drop part of a recursive watch keeps it);
        // the coalescer drops whatever still comes from there.
        if let Err(error) = watcher.unwatch(&state_dir) {
            tracing::debug!(%error, "the state folder stays watched; its events are dropped");
        }
        let coalescer = Coalescer { state_dir, pending: HashMap::new(), wakeup };
        std::thread::Builder::new()
            .name("dartsync-watch".into())
            .spawn(move || coalescer.run(raw_rx, paths))
            .map_err(|e| LocalError::Io { path: root.to_owned(), source: e })?;
        Ok(Watcher { _watcher: watcher })
    }
}

/// Merges raw events into batches for the scanner.
struct Coalescer {
    state_dir: PathBuf,
    /// Path -> the latest instant it was certified complete.
    pending: HashMap<PathBuf, Option<i64>>,
    wakeup: Arc<Wakeup>,
}

impl Coalescer {
    fn run(mut self, raw: RawReceiver, out: mpsc::Sender<Vec<Touched>>) {
        loop {
            let next = if self.pending.is_empty() {
                raw.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected)
            } else {
                raw.recv_timeout(RESEND)
            };
            match next {
                Ok((event, at)) => self.absorb(event, at),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while let Ok((event, at)) = raw.try_recv() {
                self.absorb(event, at);
            }
            if self.pending.is_empty() {
                continue;
            }
            match out.try_reserve() {
                Ok(permit) => {
                    let batch = self.pending.drain().map(|(path, settled_at)| Touched { path, settled_at }).collect();
                    permit.send(batch);
                }
                // The scanner is busy: keep gathering, send later.
                Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    }

    fn absorb(&mut self, event: notify::Event, at: i64) {
        let seen = classify(&event);
        match seen {
            Seen::Ignore => return,
            Seen::Lost => {
                self.wakeup.request_rescan();
                return;
            }
            Seen::Changed | Seen::Settled => {}
        }
        let last = event.paths.len().saturating_sub(1);
        for (i, path) in event.paths.into_iter().enumerate() {
            if path.starts_with(&self.state_dir) {
                continue;
            }
            let settled = matches!(seen, Seen::Settled).then_some(at).filter(|_| i == last);
            if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&path) {
                self.pending.clear();
                self.wakeup.request_rescan();
            }
            let slot = self.pending.entry(path).or_insert(None);
            *slot = (*slot).max(settled);
        }
    }
}

/// A raw event and when it was seen (ns).
type RawEvent = (notify::Event, i64);

/// The queue from notify's thread to the coalescer: a channel that
/// allocates as it fills, bounded by a count of the events in it.
fn raw_queue(capacity: usize) -> (RawSender, RawReceiver) {
    let (tx, rx) = std_mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (RawSender { tx, queued: queued.clone(), capacity }, RawReceiver { rx, queued })
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
enum RawSendError {
    /// `capacity` events wait already.
    Full,
    /// The coalescer is gone.
    Disconnected,
}

/// notify's side of [`raw_queue`].
struct RawSender {
    tx: std_mpsc::Sender<RawEvent>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl RawSender {
    /// Queues `event` unless `capacity` events wait already.
    fn try_send(&self, event: RawEvent) -> Result<(), RawSendError> {
        // One sender: nobody else can raise the count between the check
        // and the increment; the receiver only lowers it.
        if self.queued.load(Ordering::Acquire) >= self.capacity {
            return Err(RawSendError::Full);
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(event).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            RawSendError::Disconnected
        })
    }
}

/// The coalescer's side of [`raw_queue`].
struct RawReceiver {
    rx: std_mpsc::Receiver<RawEvent>,
    queued: Arc<AtomicUsize>,
}

impl RawReceiver {
    fn took(&self, event: RawEvent) -> RawEvent {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        event
    }

    fn recv(&self) -> Result<RawEvent, std_mpsc::RecvError> {
        self.rx.recv().map(|e| self.took(e))
    }

    fn recv_timeout(&self, timeout: Duration) -> Result<RawEvent, std_mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|e| self.took(e))
    }

    fn try_recv(&self) -> Result<RawEvent, std_mpsc::TryRecvError> {
        self.rx.try_recv().map(|e| self.took(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::{eventually_async, within};
    use std::io::Write;

    /// Receives batches until `done` holds for everything seen so far.
    async fn collect(
        rx: &mut mpsc::Receiver<Vec<Touched>>,
        what: &str,
        done: impl Fn(&[Touched]) -> bool,
    ) -> Vec<Touched> {
        let mut seen = Vec::new();
        within(Duration::from_secs(20), what, async {
            while !done(&seen) {
                seen.extend(rx.recv().await.unwrap());
            }
        })
        .await;
        seen
    }

    fn start(root: &Path, capacity: usize) -> (Watcher, mpsc::Receiver<Vec<Touched>>, Arc<Wakeup>) {
        let (tx, rx) = mpsc::channel(capacity);
        let wakeup = Arc::new(Wakeup::default());
        (Watcher::start(root, tx, wakeup.clone()).unwrap(), rx, wakeup)
    }

    #[test]
    fn the_raw_queue_holds_at_most_its_capacity_and_frees_slots_as_the_coalescer_takes() {
        let event = || (notify::Event::new(EventKind::Any), 0);
        let (tx, rx) = raw_queue(2);
        assert_eq!(tx.try_send(event()), Ok(()));
        assert_eq!(tx.try_send(event()), Ok(()));
        assert_eq!(tx.try_send(event()), Err(RawSendError::Full));
        assert!(rx.try_recv().is_ok());
        assert_eq!(tx.try_send(event()), Ok(()), "a slot came free");
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_ok());
        assert!(rx.recv().is_ok());
        assert!(matches!(rx.try_recv(), Err(std_mpsc::TryRecvError::Empty)));
        drop(rx);
        assert_eq!(tx.try_send(event()), Err(RawSendError::Disconnected));
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn changes_are_forwarded_and_state_dir_is_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join(STATE_DIR)).unwrap();
        let (_watcher, mut rx, wakeup) = start(&root, 64);
        std::fs::write(root.join(STATE_DIR).join("noise"), b"x").unwrap();
        std::fs::write(root.join("hello.txt"), b"x").unwrap();
        let hello = root.join("hello.txt");
        let seen = collect(&mut rx, "an event for hello.txt", |seen| seen.iter().any(|t| t.path == hello)).await;
        assert!(seen.iter().all(|t| !t.path.starts_with(root.join(STATE_DIR))), "{seen:?}");
        assert!(!wakeup.take_rescan());
    }

    #[tokio::test]
    async fn only_a_close_after_writing_or_a_rename_into_place_certifies_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (_watcher, mut rx, _wakeup) = start(&root, 64);
        let (open, closed, moved) = (root.join("open.bin"), root.join("closed.bin"), root.join("moved.bin"));
        // Written and still open: touched, never certified.
        let mut file = std::fs::File::create(&open).unwrap();
        file.write_all(b"first half").unwrap();
        let seen = collect(&mut rx, "a write to open.bin", |seen| seen.iter().any(|t| t.path == open)).await;
        assert!(seen.iter().filter(|t| t.path == open).all(|t| t.settled_at.is_none()), "{seen:?}");
        // Closed after writing: certified no earlier than the write.
        let before = now_ns();
        std::fs::write(&closed, b"whole").unwrap();
        let seen = collect(&mut rx, "the close of closed.bin", |seen| {
            seen.iter().any(|t| t.path == closed && t.settled_at.is_some())
        })
        .await;
        let at = seen.iter().filter(|t| t.path == closed).find_map(|t| t.settled_at).unwrap();
        assert!(at >= before, "certified at {at}, before the write at {before}");
        assert!(seen.iter().filter(|t| t.path == open).all(|t| t.settled_at.is_none()), "{seen:?}");
        // Renamed into place: the destination is certified, the source not.
        std::fs::rename(&closed, &moved).unwrap();
        let seen = collect(&mut rx, "the rename to moved.bin", |seen| {
            seen.iter().any(|t| t.path == moved && t.settled_at.is_some())
        })
        .await;
        assert!(seen.iter().filter(|t| t.path == closed).all(|t| t.settled_at.is_none()), "{seen:?}");
        drop(file);
    }

    #[tokio::test]
    async fn a_busy_scanner_gets_one_merged_batch_not_a_rescan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (_watcher, mut rx, wakeup) = start(&root, 1);
        // Nobody reads while 500 files are written: the first batch fills
        // the channel, everything after it is gathered into the next one.
        for n in 0..500 {
            std::fs::write(root.join(format!("f{n}")), b"x").unwrap();
        }
        let last = root.join("f499");
        let seen = collect(&mut rx, "all 500 files", |seen| seen.iter().any(|t| t.path == last)).await;
        let distinct: std::collections::HashSet<_> = seen.iter().map(|t| &t.path).collect();
        assert_eq!(distinct.len(), 500);
        assert!(!wakeup.take_rescan(), "a full channel must not cost a rescan");
    }

    #[tokio::test]
    async fn a_dropped_scanner_stops_the_coalescer_quietly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (watcher, rx, wakeup) = start(&root, 1);
        drop(rx);
        let mut n = 0;
        // Events keep coming; nothing panics, no rescan is asked for.
        eventually_async(Duration::from_secs(5), "events after the scanner left", async || {
            std::fs::write(root.join(format!("f{n}")), b"x").unwrap();
            n += 1;
            n > 20
        })
        .await;
        assert!(!wakeup.take_rescan());
        drop(watcher);
    }
}
