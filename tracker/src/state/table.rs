//! [`Table`]: the global table's entries, found by path and listed by seq,
//! in the fewest bytes per entry.
//!
//! The tracker keeps one entry per path of the whole folder, on a Pi, so
//! what the containers cost per entry counts as much as the entry. A
//! `BTreeMap<RelPath, Box<Entry>>` beside a `BTreeMap<u64, RelPath>` cost
//! about 140 bytes per entry on top of it (a 48-64 byte path block, a block
//! for the entry, a slot in each of two half-full B-trees). Here:
//! - entries live in one vector of slots (a removed entry's slot is reused),
//!   so an entry is no heap block of its own;
//! - paths live in one string arena, an entry's path is a place in it
//!   (offset and length, 8 bytes); the arena is rewritten without the paths
//!   of removed entries once those are more than half of it;
//! - the path index is a hash table of slot numbers (5 bytes a bucket),
//!   keyed by a per-process random SipHash key, so no peer can choose paths
//!   that collide;
//! - `by_seq` lists each entry's seq and slot in seq order ([`SeqLog`]:
//!   about 12 to 15 bytes an entry).
//!
//! An entry's seq changes only through [`Table::set_seq`], which keeps
//! `by_seq` in step; the other fields are the caller's. Slot order is not
//! path order: a walk over the whole table (tombstone GC) resumes at a slot
//! number.
//!
//! Not here: what an entry holds or any rule about it (`state`).

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::Entry;
use super::seq_log::SeqLog;

/// Where a path lies in the arena: `offset << 16 | len` (a path is at most
/// `MAX_PATH_LEN`, 4,096 bytes; the arena at most 2^48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathAt(u64);

impl PathAt {
    fn new(offset: usize, len: usize) -> Self {
        let len = u16::try_from(len).expect("a table path is at most MAX_PATH_LEN bytes");
        PathAt(((offset as u64) << 16) | u64::from(len))
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = (self.0 >> 16) as usize;
        start..start + (self.0 & 0xffff) as usize
    }
}

/// One occupied slot.
#[derive(Debug)]
struct Stored {
    path: PathAt,
    entry: Entry,
}

/// Paths of removed entries are dropped from the arena once they are more
/// than half of it and at least this many bytes.
const COMPACT_AFTER: usize = 64 * 1024;

/// The entries (see the module header).
#[derive(Debug, Default)]
pub(super) struct Table {
    slots: Vec<Option<Stored>>,
    /// Empty slots, reused first.
    free: Vec<u32>,
    /// Slots by the hash of their path.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Every entry's path, one after another.
    arena: String,
    /// Bytes of the arena no entry uses any more.
    dead: usize,
    /// Each entry's seq -> its slot.
    by_seq: SeqLog,
}

/// The path stored in `slot` (a free function, so the index can be
/// borrowed mutably while paths are read).
fn path_in<'a>(slots: &'a [Option<Stored>], arena: &'a str, slot: u32) -> &'a str {
    match &slots[slot as usize] {
        Some(stored) => &arena[stored.path.range()],
        None => unreachable!("the index names only occupied slots"),
    }
}

impl Table {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// The slot of `path`'s entry.
    fn find(&self, path: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(path);
        self.index.find(hash, |&slot| path_in(&self.slots, &self.arena, slot) == path).copied()
    }

    fn stored(&self, slot: u32) -> &Stored {
        self.slots[slot as usize].as_ref().expect("an occupied slot")
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.find(path).map(|slot| &self.stored(slot).entry)
    }

    /// The entry at `path`, to change anything but its seq.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        let slot = self.find(path)?;
        self.slots[slot as usize].as_mut().map(|stored| &mut stored.entry)
    }

    /// True when an entry has seq `seq`.
    pub fn has_seq(&self, seq: u64) -> bool {
        self.by_seq.get(seq).is_some()
    }

    /// Makes `entry` the entry at `path` (its seq must be no other entry's);
    /// returns the entry it replaced.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Option<Entry> {
        let seq = entry.seq;
        if let Some(slot) = self.find(path) {
            let stored = self.slots[slot as usize].as_mut().expect("an occupied slot");
            let old = std::mem::replace(&mut stored.entry, entry);
            self.by_seq.remove(old.seq);
            self.by_seq.insert(seq, slot);
            return Some(old);
        }
        let at = PathAt::new(self.arena.len(), path.len());
        self.arena.push_str(path);
        let stored = Some(Stored { path: at, entry });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = stored;
                slot
            }
            None => {
                self.slots.push(stored);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries (max_records)")
            }
        };
        let Table { slots, index, hasher, arena, .. } = self;
        index.insert_unique(hasher.hash_one(path), slot, |&s| hasher.hash_one(path_in(slots, arena, s)));
        self.by_seq.insert(seq, slot);
        None
    }

    /// Removes the entry at `path`.
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        let hash = self.hasher.hash_one(path);
        let Table { slots, index, arena, .. } = self;
        let found = index.find_entry(hash, |&slot| path_in(slots, arena, slot) == path).ok()?;
        let (slot, _) = found.remove();
        let stored = self.slots[slot as usize].take().expect("an occupied slot");
        self.free.push(slot);
        self.by_seq.remove(stored.entry.seq);
        self.dead += path.len();
        if self.dead >= COMPACT_AFTER && self.dead > self.arena.len() / 2 {
            self.compact_paths();
        }
        Some(stored.entry)
    }

    /// Rewrites the arena with the paths in use only.
    fn compact_paths(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.dead);
        for stored in self.slots.iter_mut().flatten() {
            let path = &self.arena[stored.path.range()];
            stored.path = PathAt::new(arena.len(), path.len());
            arena.push_str(path);
        }
        self.arena = arena;
        self.dead = 0;
    }

    /// Gives the entry whose seq is `old` the seq `new` (no other entry's);
    /// returns it, or `None` if no entry has seq `old`.
    pub fn set_seq(&mut self, old: u64, new: u64) -> Option<&mut Entry> {
        let slot = self.by_seq.remove(old)?;
        self.by_seq.insert(new, slot);
        let stored = self.slots[slot as usize].as_mut().expect("by_seq names only occupied slots");
        stored.entry.set_seq(new);
        Some(&mut stored.entry)
    }

    /// Entries with a seq above `from`, by seq.
    pub fn since(&self, from: u64) -> impl Iterator<Item = (&str, &Entry)> {
        self.by_seq.after(from).map(|(_, slot)| {
            let stored = self.stored(slot);
            (&self.arena[stored.path.range()], &stored.entry)
        })
    }

    /// Every entry with its path, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.starting_at_slot(0).map(|(_, path, entry)| (path, entry))
    }

    /// Every entry, to change anything but its seq.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.slots.iter_mut().flatten().map(|stored| &mut stored.entry)
    }

    /// The entries in slot `first` and after, with their slots and paths.
    pub fn starting_at_slot(&self, first: u32) -> impl Iterator<Item = (u32, &str, &Entry)> {
        let arena = &self.arena;
        self.slots.iter().enumerate().skip(first as usize).filter_map(move |(slot, stored)| {
            let stored = stored.as_ref()?;
            Some((slot as u32, &arena[stored.path.range()], &stored.entry))
        })
    }

    /// Bytes the table's memory takes for what it holds: the slots and the
    /// arena up to their length (room reserved past it is never touched, so
    /// it is no resident memory), the whole index, the seq log's pairs.
    #[cfg(test)]
    pub fn resident_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Option<Stored>>()
            + self.free.len() * 4
            + self.arena.len()
            + self.index.allocation_size()
            + self.by_seq.resident_bytes()
    }

    /// Checks the indexes agree with the slots (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let occupied = self.slots.iter().flatten().count();
        assert_eq!(occupied, self.by_seq.len(), "one seq per entry");
        assert_eq!(occupied, self.index.len(), "one index bucket per entry");
        assert_eq!(occupied + self.free.len(), self.slots.len(), "every slot is occupied or free");
        for (seq, slot) in self.by_seq.after(0) {
            assert_eq!(self.stored(slot).entry.seq, seq);
        }
        for (slot, path, _) in self.starting_at_slot(0) {
            assert_eq!(self.find(path), Some(slot), "{path}");
        }
        let live: usize = self.iter().map(|(path, _)| path.len()).sum();
        assert_eq!(live + self.dead, self.arena.len(), "arena bytes are live or dead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::CompactRecord;
    use dartsync_shared::test_util::RecordBuilder;

    fn entry(seq: u64) -> Entry {
        let record = CompactRecord::new(RecordBuilder::file("x").body("x").build());
        let author = super::super::Authors::default().add(dartsync_shared::PeerId([1; 16]));
        Entry::new(record, seq, author)
    }

    #[test]
    fn a_slot_is_the_entry_and_its_path_place() {
        assert_eq!(std::mem::size_of::<Option<Stored>>(), 128);
    }

    #[test]
    fn finds_lists_replaces_and_removes_entries_with_their_seqs_in_step() {
        let mut table = Table::default();
        assert!(table.insert("a/b", entry(1)).is_none());
        assert!(table.insert("c", entry(2)).is_none());
        assert!(table.insert("a/bc", entry(3)).is_none());
        assert_eq!(table.get("a/b").map(|e| e.seq), Some(1));
        assert!(table.get("a").is_none() && table.get("a/b/").is_none());
        let replaced = table.insert("c", entry(4)).expect("c was there");
        assert_eq!(replaced.seq, 2);
        assert!(!table.has_seq(2) && table.has_seq(4));
        assert_eq!(table.set_seq(1, 5).map(|e| e.seq), Some(5));
        assert!(table.set_seq(1, 6).is_none(), "no entry has seq 1 any more");
        let since: Vec<(&str, u64)> = table.since(3).map(|(p, e)| (p, e.seq)).collect();
        assert_eq!(since, [("c", 4), ("a/b", 5)]);
        assert_eq!(table.since(u64::MAX).count(), 0);
        assert_eq!(table.remove("a/b").map(|e| e.seq), Some(5));
        assert!(table.remove("a/b").is_none());
        assert!(table.get("a/b").is_none() && table.get("a/bc").is_some());
        assert_eq!(table.len(), 2);
        table.check();
        // The freed slot is reused.
        table.insert("d", entry(7));
        assert_eq!(table.slots.len(), 3);
        assert_eq!(table.get("d").map(|e| e.seq), Some(7));
        table.check();
    }

    #[test]
    fn the_paths_of_removed_entries_leave_the_arena_once_they_are_most_of_it() {
        let mut table = Table::default();
        let name = |i: u32| format!("folder-{i:04}/{}", "n".repeat(100));
        for i in 0..2_000 {
            table.insert(&name(i), entry(u64::from(i) + 1));
        }
        let full = table.arena.len();
        for i in (0..2_000).filter(|i| i % 4 != 0) {
            assert!(table.remove(&name(i)).is_some());
            table.check();
        }
        assert!(table.arena.len() < full / 2, "{} of {full} bytes kept", table.arena.len());
        for i in 0..2_000 {
            assert_eq!(table.get(&name(i)).is_some(), i % 4 == 0, "{i}");
        }
        let listed: Vec<u64> = table.since(0).map(|(_, e)| e.seq).collect();
        assert_eq!(listed, (0..2_000).filter(|i| i % 4 == 0).map(|i| i + 1).collect::<Vec<u64>>());
    }

    #[test]
    fn an_entry_costs_the_table_at_most_208_bytes_after_churn() {
        // The load tool's paths (26 bytes), every entry's seq moved three
        // times (holders coming), a tenth removed (tombstones collected).
        let mut table = Table::default();
        let path = |i: u64| format!("d{:03}/s{:02}/file-{i:08}.dat", i % 1000, i % 97);
        let n = 100_000u64;
        for i in 0..n {
            table.insert(&path(i), entry(i + 1));
        }
        let mut next = n + 1;
        for round in 0..3 {
            for i in 0..n {
                let old = i + 1 + round * n;
                assert!(table.set_seq(old, next).is_some());
                next += 1;
            }
        }
        for i in (0..n).step_by(10) {
            assert!(table.remove(&path(i)).is_some());
        }
        let per_entry = table.resident_bytes() / table.len();
        // 128 in the slot, 26 of path, about 7 of index, 12 to 15 of seq
        // log (about 174 before the removals); the removed entries' slots
        // and paths wait for reuse (192 measured).
        assert!(per_entry <= 208, "{per_entry} bytes an entry");
        table.check();
    }

    #[test]
    fn a_walk_from_a_slot_resumes_where_it_stopped() {
        let mut table = Table::default();
        for i in 0..10u64 {
            table.insert(&format!("p{i}"), entry(i + 1));
        }
        table.remove("p3");
        let first: Vec<u32> = table.starting_at_slot(0).take(4).map(|(slot, _, _)| slot).collect();
        assert_eq!(first, [0, 1, 2, 4]);
        let rest: Vec<&str> = table.starting_at_slot(5).map(|(_, path, _)| path).collect();
        assert_eq!(rest, ["p5", "p6", "p7", "p8", "p9"]);
    }
}
