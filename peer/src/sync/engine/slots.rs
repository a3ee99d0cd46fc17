//! Download slots: how many downloads are fetching, and the wake-up the
//! engine gets when one stops.
//!
//! A download holds its slot while it fetches, not while its verified file
//! waits for the installer. The installer takes everything queued as one
//! batch (one commit of the index), so slots that stay busy during an
//! install left the installer one to three files per batch in a burst of
//! small files (measured: 3,726 batches for 10,000 files, 2,022 of them of
//! one file) and the network idle while it ran. Files waiting for the
//! installer are bounded on their own: at most [`INSTALL_BACKLOG`] times
//! the slots are active (fetching or installing) at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Downloads active at once (fetching, or verified and waiting for the
/// installer) are at most this many times the download slots.
pub(super) const INSTALL_BACKLOG: usize = 4;

/// The fetching downloads, shared by the engine and its download tasks.
#[derive(Debug, Default)]
pub(super) struct FetchSlots {
    fetching: AtomicUsize,
    freed: Notify,
}

impl FetchSlots {
    /// Takes a slot for a download about to start (the engine checked that
    /// one is free); it is given back when the returned guard is dropped.
    pub(super) fn take(self: &Arc<Self>) -> FetchSlot {
        self.fetching.fetch_add(1, Ordering::AcqRel);
        FetchSlot(self.clone())
    }

    /// Slots in use: the fetching downloads, or all of `max` once `active`
    /// (every download task, installing ones included) reaches
    /// [`INSTALL_BACKLOG`] times `max`.
    pub(super) fn in_use(&self, active: usize, max: usize) -> usize {
        if active >= max.saturating_mul(INSTALL_BACKLOG) {
            return max;
        }
        self.fetching()
    }

    /// Downloads fetching now (the installer waits a moment for them to
    /// gather a batch).
    pub(super) fn fetching(&self) -> usize {
        self.fetching.load(Ordering::Acquire)
    }

    /// Resolves once a slot was given back since the last call (a slot
    /// given back while nobody waits is remembered, never lost).
    pub(super) async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// One fetching download's slot; given back on drop (the fetch ended,
/// failed, or its task was cancelled).
#[derive(Debug)]
pub(super) struct FetchSlot(Arc<FetchSlots>);

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.0.fetching.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_slot_counts_until_dropped_and_wakes_the_engine_once_given_back() {
        let slots = Arc::new(FetchSlots::default());
        let (a, b) = (slots.take(), slots.take());
        assert_eq!(slots.in_use(2, 16), 2);
        drop(a);
        assert_eq!(slots.in_use(2, 16), 1);
        // Given back before anyone waited: the wake-up is kept.
        tokio::time::timeout(Duration::from_secs(5), slots.freed()).await.expect("the freed slot was announced");
        // Nothing given back since: no wake-up.
        assert!(tokio::time::timeout(Duration::from_millis(50), slots.freed()).await.is_err());
        drop(b);
        assert_eq!(slots.in_use(1, 16), 0);
    }

    #[test]
    fn too_many_files_waiting_to_install_fill_every_slot() {
        let slots = Arc::new(FetchSlots::default());
        let _fetching = slots.take();
        assert_eq!(slots.in_use(63, 16), 1);
        assert_eq!(slots.in_use(64, 16), 16);
        assert_eq!(slots.in_use(100, 16), 16);
    }
}
