//! [`SeqLog`]: each entry's seq and slot, in seq order, in 12 bytes an
//! entry (a `BTreeMap<u64, u32>` took about 27 in its half-full nodes).
//!
//! Seqs only grow: a changed entry takes the next seq, so its new pair is
//! appended and its old one is marked dead in place. Lookups are binary
//! searches over the seqs; a scan skips the dead pairs. Once the dead are
//! more than a quarter of the live (and at least [`COMPACT_AFTER`]), the log is
//! rewritten without them and its spare room handed back, so it holds at
//! most 1.25 pairs per entry (a peer joining, which changes every entry's
//! holders, writes a whole table of new pairs: many small rewrites, not
//! one log of every change).
//!
//! Not here: what a slot holds (`table`).

/// The slot of a dead pair.
const DEAD: u32 = u32::MAX;

/// Dead pairs below this are never worth a rewrite.
const COMPACT_AFTER: usize = 1024;

/// `(seq, slot)` pairs by seq (see the module header).
#[derive(Debug, Default)]
pub(super) struct SeqLog {
    /// Strictly increasing.
    seqs: Vec<u64>,
    /// The slot of the entry at `seqs[i]`, or [`DEAD`].
    slots: Vec<u32>,
    /// Live pairs.
    live: usize,
}

impl SeqLog {
    /// Number of live pairs.
    pub fn len(&self) -> usize {
        self.live
    }

    /// The index of `seq`'s live pair.
    fn position(&self, seq: u64) -> Option<usize> {
        let at = self.seqs.binary_search(&seq).ok()?;
        (self.slots[at] != DEAD).then_some(at)
    }

    /// The slot whose entry has seq `seq`.
    pub fn get(&self, seq: u64) -> Option<u32> {
        self.position(seq).map(|at| self.slots[at])
    }

    /// Adds `seq -> slot` (`seq` must be no live pair's). A seq above every
    /// other is appended; another one (only a damaged database loads out of
    /// order) goes in its place.
    pub fn insert(&mut self, seq: u64, slot: u32) {
        debug_assert_ne!(slot, DEAD);
        let at = self.seqs.partition_point(|s| *s < seq);
        if at == self.seqs.len() {
            self.seqs.push(seq);
            self.slots.push(slot);
        } else if self.seqs[at] == seq {
            debug_assert_eq!(self.slots[at], DEAD, "seq {seq} is taken");
            self.live -= usize::from(self.slots[at] != DEAD);
            self.slots[at] = slot;
        } else {
            self.seqs.insert(at, seq);
            self.slots.insert(at, slot);
        }
        self.live += 1;
    }

    /// Removes `seq`'s pair; its slot.
    pub fn remove(&mut self, seq: u64) -> Option<u32> {
        let at = self.position(seq)?;
        let slot = std::mem::replace(&mut self.slots[at], DEAD);
        self.live -= 1;
        let dead = self.seqs.len() - self.live;
        if dead >= COMPACT_AFTER && dead > self.live / 4 {
            self.compact();
        }
        Some(slot)
    }

    /// Drops the dead pairs and the room they took.
    fn compact(&mut self) {
        let mut kept = 0;
        for at in 0..self.seqs.len() {
            if self.slots[at] != DEAD {
                self.seqs[kept] = self.seqs[at];
                self.slots[kept] = self.slots[at];
                kept += 1;
            }
        }
        self.seqs.truncate(kept);
        self.slots.truncate(kept);
        // Room for a quarter more before the next reallocation.
        let room = kept + kept / 4;
        self.seqs.shrink_to(room);
        self.slots.shrink_to(room);
    }

    /// Bytes of the pairs held, live and dead (tests).
    #[cfg(test)]
    pub fn resident_bytes(&self) -> usize {
        self.seqs.len() * 8 + self.slots.len() * 4
    }

    /// The live pairs with a seq above `from`, by seq.
    pub fn after(&self, from: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let start = self.seqs.partition_point(|s| *s <= from);
        self.seqs[start..]
            .iter()
            .zip(&self.slots[start..])
            .filter(|(_, slot)| **slot != DEAD)
            .map(|(s, slot)| (*s, *slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_seqs_leave_dead_pairs_that_scans_skip_and_rewrites_drop() {
        let mut log = SeqLog::default();
        for slot in 0..10_000u32 {
            log.insert(u64::from(slot) + 1, slot);
        }
        // Every entry changes three times: each takes the next seq.
        let mut next = 10_001u64;
        let mut seq_of: Vec<u64> = (1..=10_000).collect();
        for _ in 0..3 {
            for slot in 0..10_000u32 {
                assert_eq!(log.remove(seq_of[slot as usize]), Some(slot));
                log.insert(next, slot);
                seq_of[slot as usize] = next;
                next += 1;
                assert!(log.seqs.len() <= log.live + log.live / 4 + COMPACT_AFTER + 1, "dead pairs are dropped");
            }
        }
        assert_eq!(log.len(), 10_000);
        for (slot, &seq) in seq_of.iter().enumerate() {
            assert_eq!(log.get(seq), Some(slot as u32));
        }
        assert_eq!(log.get(1), None, "a moved seq is gone");
        assert!(log.remove(1).is_none());
        let tail: Vec<(u64, u32)> = log.after(next - 4).collect();
        assert_eq!(tail, [(next - 3, 9_997), (next - 2, 9_998), (next - 1, 9_999)]);
        assert_eq!(log.after(0).count(), 10_000);
        assert!(log.after(0).map(|(s, _)| s).is_sorted());
    }

    #[test]
    fn a_seq_below_the_last_goes_in_its_place() {
        let mut log = SeqLog::default();
        log.insert(5, 0);
        log.insert(9, 1);
        log.insert(7, 2);
        log.remove(9);
        log.insert(9, 3);
        let all: Vec<(u64, u32)> = log.after(0).collect();
        assert_eq!(all, [(5, 0), (7, 2), (9, 3)]);
        assert_eq!(log.len(), 3);
    }
}
