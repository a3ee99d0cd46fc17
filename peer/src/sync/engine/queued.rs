//! Downloads waiting for a free slot: their paths in path order (parents
//! before children), with the bytes they will fetch summed as they come and
//! go, because status reads that sum after every finished download (a
//! pass over thousands of queued paths each time made a burst of small
//! files quadratic), and the slots promised to paths taken out of the
//! queue whose downloads the next round has not started yet.

use std::collections::{BTreeMap, HashSet};

use dartsync_shared::RelPath;

/// The queue of downloads waiting for a slot.
#[derive(Debug, Default)]
pub(super) struct Queued {
    /// Path -> the size of the version it waits to fetch.
    paths: BTreeMap<RelPath, u64>,
    /// Sum of the sizes in `paths`.
    bytes: u64,
    /// Paths [`Queued::promote`] took out since the last
    /// [`Queued::round_started`]: their slots are spoken for.
    promoted: HashSet<RelPath>,
}

impl Queued {
    /// Queues `path` (a version of `size` bytes), replacing what was queued
    /// for it.
    pub(super) fn insert(&mut self, path: RelPath, size: u64) {
        if let Some(old) = self.paths.insert(path, size) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    /// Takes the first path in path order.
    pub(super) fn pop_first(&mut self) -> Option<RelPath> {
        let (path, size) = self.paths.pop_first()?;
        self.bytes -= size;
        Some(path)
    }

    /// Takes out the first paths for the slots that are free: `max` less
    /// the `active` downloads and the paths taken out before whose round
    /// has not run. Without the second term, a batch of k finished
    /// downloads, each calling this, would take out 1 + 2 + ... + k paths
    /// for k slots, and each one beyond would be looked at on disk only to
    /// be queued again.
    pub(super) fn promote(&mut self, active: usize, max: usize) -> Vec<RelPath> {
        let free = max.saturating_sub(active + self.promoted.len());
        let taken: Vec<RelPath> = std::iter::from_fn(|| self.pop_first()).take(free).collect();
        self.promoted.extend(taken.iter().cloned());
        taken
    }

    /// A round took the promoted paths, returned here: it starts their
    /// downloads (they count as active from then on), queues them again,
    /// or needs none.
    pub(super) fn round_started(&mut self) -> HashSet<RelPath> {
        std::mem::take(&mut self.promoted)
    }

    /// Forgets `path` if it is queued.
    pub(super) fn remove(&mut self, path: &RelPath) {
        if let Some(size) = self.paths.remove(path) {
            self.bytes -= size;
        }
    }

    /// True when `path` waits for a slot.
    pub(super) fn contains(&self, path: &RelPath) -> bool {
        self.paths.contains_key(path)
    }

    /// Paths queued.
    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Bytes the queued downloads will fetch (their versions' sizes).
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::rel;

    #[test]
    fn the_sum_follows_inserts_replacements_pops_and_removals() {
        let mut q = Queued::default();
        q.insert(rel("b"), 10);
        q.insert(rel("a"), 5);
        q.insert(rel("c"), 7);
        assert_eq!((q.len(), q.bytes()), (3, 22));
        q.insert(rel("b"), 1); // a newer version of b
        assert_eq!((q.len(), q.bytes()), (3, 13));
        assert_eq!(q.pop_first(), Some(rel("a")));
        assert_eq!(q.bytes(), 8);
        q.remove(&rel("c"));
        q.remove(&rel("never"));
        assert_eq!((q.len(), q.bytes()), (1, 1));
        assert_eq!(q.pop_first(), Some(rel("b")));
        assert!(q.is_empty());
        assert_eq!((q.pop_first(), q.bytes()), (None, 0));
    }

    #[test]
    fn promotion_counts_the_slots_promised_before_the_round() {
        let mut q = Queued::default();
        for name in ["a", "b", "c", "d", "e", "f"] {
            q.insert(rel(name), 1);
        }
        assert!(q.promote(4, 4).is_empty(), "every slot busy");
        // Three downloads finish one after the other before a round runs.
        assert_eq!(q.promote(3, 4), vec![rel("a")]);
        assert_eq!(q.promote(2, 4), vec![rel("b")]);
        assert_eq!(q.promote(1, 4), vec![rel("c")]);
        assert_eq!(q.len(), 3, "three slots, three paths");
        // The round started two of them; one needed no download.
        assert_eq!(q.round_started(), [rel("a"), rel("b"), rel("c")].into_iter().collect());
        assert_eq!(q.promote(3, 4), vec![rel("d")]);
        assert_eq!(q.round_started().len(), 1);
        assert_eq!(q.promote(0, 4), vec![rel("e"), rel("f")]);
        assert!(q.promote(0, 4).is_empty() && q.is_empty());
    }
}
