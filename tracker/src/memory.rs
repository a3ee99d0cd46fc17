//! Handing freed heap back to the system after bursts of paging.
//!
//! Paging the table out is the tracker's big churn: every session's delta
//! pages are built (records, paths, holder lists), encoded and freed, and
//! incoming `Announce` batches are decoded and freed, all interleaved with
//! the entries that stay. Freed small blocks stay in the allocator's heap
//! between live ones, and glibc gives back only the free top of a heap. In
//! the load tool's run (`bench/load`, 50 sessions x 100,000 records), the
//! tracker sat at 125 MiB RSS after the records phase; one
//! `malloc_trim(0)`, called from a debugger, took it to 82 MiB at once.
//!
//! So the sessions count the bytes they page out and take in as batches
//! ([`Churn`]), and a small task ([`spawn`]) calls the binary's release
//! function (glibc's `malloc_trim(0)`; the library crates hold no `unsafe`)
//! on the blocking pool once at least [`RELEASE_AFTER`] bytes went through:
//! when the burst is over (nothing more for one [`TICK`]), and every
//! [`BURST_EVERY`] during a long burst, so the peak stays down too. A quiet
//! tracker never calls it.
//!
//! Not here: the allocator settings (the binary's `malloc_tuning`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use dartsync_shared::ReleaseFn;

/// How often the churn counter is looked at.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Bytes of churn that make a release worth its cost (a pass over the free
/// lists, a few milliseconds for a heap of 100 MiB).
pub(crate) const RELEASE_AFTER: u64 = 1024 * 1024;

/// During a burst that does not stop, at most one release per this.
pub(crate) const BURST_EVERY: Duration = Duration::from_secs(2);

/// Bytes paged out and batches taken in since the tracker started; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Churn(Arc<AtomicU64>);

impl Churn {
    /// Counts `bytes` more.
    pub fn add(&self, bytes: usize) {
        self.0.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When to release (pure, so the rule is tested without a clock).
#[derive(Debug)]
struct Policy {
    /// The total at the last release.
    released_at_total: u64,
    /// The total at the previous tick.
    last_total: u64,
    /// When the last release ran.
    released_at: Instant,
}

impl Policy {
    fn new(now: Instant) -> Self {
        Policy { released_at_total: 0, last_total: 0, released_at: now }
    }

    /// Whether to release now, given the counter's `total`.
    fn tick(&mut self, total: u64, now: Instant) -> bool {
        let quiet = total == self.last_total;
        self.last_total = total;
        let churned = total.saturating_sub(self.released_at_total) >= RELEASE_AFTER;
        let due = quiet || now.duration_since(self.released_at) >= BURST_EVERY;
        if churned && due {
            self.released_at_total = total;
            self.released_at = now;
            true
        } else {
            false
        }
    }
}

/// Watches `churn` until `cancel` fires, calling `release` by the rule of
/// the module header.
pub(crate) fn spawn(release: ReleaseFn, churn: Churn, cancel: CancellationToken) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut policy = Policy::new(Instant::now());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                now = tick.tick() => {
                    if policy.tick(churn.total(), now) {
                        // One at a time: the next tick waits for this one.
                        let _ = tokio::task::spawn_blocking(release).await;
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_burst_is_released_when_it_stops_and_a_quiet_tracker_never() {
        let start = Instant::now();
        let mut policy = Policy::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!policy.tick(0, at(250)), "nothing churned");
        assert!(!policy.tick(MIB / 2, at(500)), "below the threshold");
        assert!(!policy.tick(MIB / 2, at(750)), "quiet, but below the threshold");
        assert!(!policy.tick(2 * MIB, at(1000)), "still going");
        assert!(policy.tick(2 * MIB, at(1250)), "the burst stopped");
        assert!(!policy.tick(2 * MIB, at(1500)), "released already");
        assert!(!policy.tick(2 * MIB, at(60_000)), "a quiet tracker is left alone");
    }

    #[test]
    fn a_long_burst_is_released_every_few_seconds() {
        let start = Instant::now();
        let mut policy = Policy::new(start);
        let mut released = Vec::new();
        for step in 1..=40u64 {
            let now = start + TICK * u32::try_from(step).unwrap();
            if policy.tick(step * MIB, now) {
                released.push(now.duration_since(start));
            }
        }
        assert_eq!(released.len(), 5, "10 s of churn, one release per {BURST_EVERY:?}: {released:?}");
        for pair in released.windows(2) {
            assert!(pair[1] - pair[0] >= BURST_EVERY, "{released:?}");
        }
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count_call() {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn the_task_calls_the_release_function_after_churn() {
        let churn = Churn::default();
        let cancel = CancellationToken::new();
        let task = spawn(count_call, churn.clone(), cancel.clone());
        churn.add(3 * 1024 * 1024);
        let deadline = Instant::now() + Duration::from_secs(10);
        while CALLS.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 1, "one release after the churn");
        cancel.cancel();
        task.await.unwrap();
    }
}
