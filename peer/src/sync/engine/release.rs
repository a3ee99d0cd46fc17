//! [`MemoryRelease`]: handing the heap freed by a burst of syncing back to
//! the system.
//!
//! A burst (a joining peer taking in 100,000 records, the scanner indexing
//! a new folder, thousands of small downloads) frees most of what it
//! allocated, in small blocks between the entries that stay. glibc gives
//! back only the free top of a heap, so the peer's RSS stays near its peak.
//! The engine counts the work it did (delta entries applied, downloads
//! finished, local changes announced) and calls the binary's release
//! function (glibc's `malloc_trim(0)`; the library crates hold no `unsafe`)
//! on the blocking pool when the folder becomes up to date after a burst,
//! and at most every [`BURST_EVERY`] during a long one. Measured with
//! `bench/peer-memory` at 100,000 files: one call took a receiver that had
//! just caught up from 65.4 to 63.1 MiB.

use std::time::{Duration, Instant};

pub use dartsync_shared::ReleaseFn;

/// Work (entries, downloads, changes) that makes a release worth its cost
/// (one pass over the allocator's free lists: milliseconds).
const RELEASE_AFTER: u64 = 1_000;

/// During a burst that does not stop, at most one release per this.
const BURST_EVERY: Duration = Duration::from_secs(10);

/// Work during a burst that makes an early release worth it.
const BURST_WORK: u64 = 20_000;

/// When to call the release function.
#[derive(Debug, Default)]
pub(super) struct MemoryRelease {
    release: Option<ReleaseFn>,
    /// Work since the last release.
    work: u64,
    /// When the last release was made.
    last: Option<Instant>,
}

impl MemoryRelease {
    /// Releases with `release` (`None`: never).
    pub(super) fn new(release: Option<ReleaseFn>) -> Self {
        MemoryRelease { release, work: 0, last: None }
    }

    /// Counts `n` units of work.
    pub(super) fn note(&mut self, n: usize) {
        self.work = self.work.saturating_add(n as u64);
    }

    /// The release function, if one is due now: `settled` is true when the
    /// folder has just become up to date.
    pub(super) fn due(&mut self, now: Instant, settled: bool) -> Option<ReleaseFn> {
        let release = self.release?;
        let burst = self.work >= BURST_WORK && self.last.is_none_or(|at| now.duration_since(at) >= BURST_EVERY);
        if !(settled && self.work >= RELEASE_AFTER || burst) {
            return None;
        }
        self.work = 0;
        self.last = Some(now);
        Some(release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing() {}

    #[test]
    fn releases_when_settled_after_enough_work() {
        let mut r = MemoryRelease::new(Some(nothing));
        let t0 = Instant::now();
        assert!(r.due(t0, true).is_none(), "no work: nothing to give back");
        r.note(10);
        assert!(r.due(t0, true).is_none(), "too little work");
        r.note(RELEASE_AFTER as usize);
        assert!(r.due(t0, false).is_none(), "still busy, not a long burst");
        assert!(r.due(t0, true).is_some());
        assert!(r.due(t0, true).is_none(), "the work was counted once");
    }

    #[test]
    fn a_long_burst_releases_at_most_every_burst_gap() {
        let mut r = MemoryRelease::new(Some(nothing));
        let t0 = Instant::now();
        r.note(BURST_WORK as usize);
        assert!(r.due(t0, false).is_some());
        r.note(BURST_WORK as usize);
        assert!(r.due(t0 + BURST_EVERY / 2, false).is_none());
        assert!(r.due(t0 + BURST_EVERY, false).is_some());
    }

    #[test]
    fn without_a_release_function_never() {
        let mut r = MemoryRelease::new(None);
        r.note(usize::MAX);
        assert!(r.due(Instant::now(), true).is_none());
    }
}
