//! The watcher: notify (inotify on Linux) with notify-debouncer-full,
//! recursive over the folder, turned into "these paths may have changed".
//!
//! The notify callback runs on the debouncer's own thread and only forwards:
//! it drops access-only events and paths under `.dartsync/`, and `try_send`s
//! the remaining absolute paths of one debounced batch into a bounded
//! channel. It never blocks and never touches the index. When the channel is
//! full, or the kernel queue overflowed (notify's `Rescan` flag), it raises
//! the [`Wakeup`] rescan flag instead: a full rescan finds whatever the lost
//! events described.
//!
//! An event is only a hint: the scanner re-stats the path and compares with
//! the index (so our own writes, already recorded, produce no change).
//! Symlinks are not followed. Watching is best effort by design: the
//! periodic full rescan ([`crate::local`]) catches anything missed
//! (inotify watch limits, events lost at startup).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dartsync_shared::path::STATE_DIR;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer_opt};
use tokio::sync::{Notify, mpsc};

use crate::local::error::LocalError;

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

/// A running recursive watch; dropping it stops watching.
pub struct Watcher {
    // Drop stops the debouncer thread and the inotify thread.
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Watches `root` recursively. Batches of changed paths go to `paths`;
    /// lost events raise `wakeup`. Blocking: walks the tree to add watches.
    pub(crate) fn start(
        root: &Path,
        debounce: Duration,
        paths: mpsc::Sender<Vec<PathBuf>>,
        wakeup: Arc<Wakeup>,
    ) -> Result<Watcher, LocalError> {
        let state_dir = root.join(STATE_DIR);
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                let mut batch = Vec::new();
                for event in events {
                    if event.need_rescan() {
                        wakeup.request_rescan();
                        continue;
                    }
                    let relevant = match event.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                        EventKind::Access(_) => false,
                        _ => true,
                    };
                    if relevant {
                        batch.extend(event.event.paths.into_iter().filter(|p| !p.starts_with(&state_dir)));
                    }
                }
                if !batch.is_empty() && paths.try_send(batch).is_err() {
                    // Full (or the scanner is gone): fall back to a rescan.
                    wakeup.request_rescan();
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "file watcher error; the periodic rescan will catch up");
                }
            }
        };
        // A zero debounce would make the debouncer thread spin.
        let debounce = debounce.max(Duration::from_millis(10));
        let config = notify::Config::default().with_follow_symlinks(false);
        let tick = (debounce / 4).max(Duration::from_millis(10)).min(debounce);
        let mut debouncer = new_debouncer_opt::<_, notify::RecommendedWatcher, RecommendedCache>(
            debounce,
            Some(tick),
            handler,
            RecommendedCache::new(),
            config,
        )?;
        debouncer.watch(root, RecursiveMode::Recursive)?;
        Ok(Watcher { _debouncer: debouncer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::{eventually_async, within};

    #[tokio::test]
    async fn changes_are_forwarded_and_state_dir_is_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join(STATE_DIR)).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let wakeup = Arc::new(Wakeup::default());
        let _watcher = Watcher::start(&root, Duration::from_millis(50), tx, wakeup.clone()).unwrap();
        std::fs::write(root.join(STATE_DIR).join("noise"), b"x").unwrap();
        std::fs::write(root.join("hello.txt"), b"x").unwrap();
        let mut seen = Vec::new();
        within(Duration::from_secs(20), "an event for hello.txt", async {
            while !seen.contains(&root.join("hello.txt")) {
                seen.extend(rx.recv().await.unwrap());
            }
        })
        .await;
        assert!(seen.iter().all(|p| !p.starts_with(root.join(STATE_DIR))), "{seen:?}");
        assert!(!wakeup.take_rescan());
    }

    #[tokio::test]
    async fn a_full_channel_requests_a_rescan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let wakeup = Arc::new(Wakeup::default());
        let _watcher = Watcher::start(&root, Duration::from_millis(20), tx, wakeup.clone()).unwrap();
        let mut n = 0;
        // Keep producing events until a batch finds the channel full.
        eventually_async(Duration::from_secs(20), "a rescan request", async || {
            std::fs::write(root.join(format!("f{n}")), b"x").unwrap();
            n += 1;
            tokio::time::timeout(Duration::from_millis(50), wakeup.notified()).await.ok();
            wakeup.take_rescan()
        })
        .await;
    }
}
