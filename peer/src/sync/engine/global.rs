//! [`GlobalTable`]: the global table as this peer knows it, from the
//! tracker's deltas: the record of every path, and who else holds it.
//!
//! It is the peer's largest structure (one entry per path of the folder),
//! so it is kept small:
//! - an entry is keyed by its record's own path (no second copy of it),
//!   and the set holds a pointer to it;
//! - holder lists are shared: most paths of a cluster are held by the
//!   same few peers, so equal lists are one allocation ([`HolderLists`]).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::{FileRecord, PeerId, RelPath, VersionVector};

/// A shared list of holders.
type HolderList = Arc<[Holder]>;

/// One entry of the global table as this peer knows it.
#[derive(Debug, Clone)]
pub(super) struct GlobalEntry {
    /// The global record.
    pub(super) record: FileRecord,
    /// Holders other than this peer (shared with other entries).
    pub(super) holders: Arc<[Holder]>,
}

/// An entry, hashed and compared by its path only (so the set can be
/// looked up by a `&RelPath`). Boxed: the set's slots stay one pointer,
/// so growing it past a power of two copies 8 bytes per path, not 180,
/// and the old and new slot arrays (both live while it grows) stay small.
#[derive(Debug)]
struct ByPath(Box<GlobalEntry>);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.record.path == other.0.record.path
    }
}

impl Eq for ByPath {}

impl Hash for ByPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `RelPath` hashes: `Borrow` requires the same hash.
        self.0.record.path.hash(state);
    }
}

impl Borrow<RelPath> for ByPath {
    fn borrow(&self) -> &RelPath {
        &self.0.record.path
    }
}

/// The global table.
#[derive(Debug, Default)]
pub(super) struct GlobalTable {
    entries: HashSet<ByPath>,
    lists: HolderLists,
}

impl GlobalTable {
    /// The entry of `path`.
    pub(super) fn get(&self, path: &RelPath) -> Option<&GlobalEntry> {
        self.entries.get(path).map(|e| &*e.0)
    }

    /// True when the table has an entry for `path`.
    pub(super) fn contains_key(&self, path: &RelPath) -> bool {
        self.entries.contains(path)
    }

    /// Sets the entry of `record.path`; returns the one it replaced.
    pub(super) fn insert(&mut self, record: FileRecord, holders: Vec<Holder>) -> Option<GlobalEntry> {
        let holders = self.lists.share(holders);
        self.entries.replace(ByPath(Box::new(GlobalEntry { record, holders }))).map(|e| *e.0)
    }

    /// Replaces the holders of `path` when its record is `version` and
    /// `holders` differ from the ones known; true if it did.
    pub(super) fn set_holders(&mut self, path: &RelPath, version: &VersionVector, holders: Vec<Holder>) -> bool {
        let Some(entry) = self.get(path) else { return false };
        if entry.record.version != *version || *entry.holders == *holders {
            return false;
        }
        let record = entry.record.clone();
        self.insert(record, holders);
        true
    }

    /// Takes the peers in `gone` out of every holder list; returns the
    /// paths whose list changed and that `wanted` picks. Nothing happens
    /// unless a list names one of them; then the set is rebuilt in one
    /// pass, each distinct list filtered once (lists are shared), so a
    /// departure costs a 100,000-file peer a second slot array for a
    /// moment, not a copy of every path.
    pub(super) fn drop_holders(&mut self, gone: &HashSet<PeerId>, wanted: impl Fn(&RelPath) -> bool) -> Vec<RelPath> {
        let names_gone = |list: &[Holder]| list.iter().any(|h| gone.contains(&h.peer_id));
        if !self.entries.iter().any(|e| names_gone(&e.0.holders)) {
            return Vec::new();
        }
        // By the old list's address; the old list is kept alive with its
        // new one, so no address is reused while the pass runs.
        let mut filtered: HashMap<*const Holder, (HolderList, HolderList)> = HashMap::new();
        let mut picked = Vec::new();
        let entries = std::mem::take(&mut self.entries);
        let mut kept = HashSet::with_capacity(entries.len());
        for ByPath(mut entry) in entries {
            if names_gone(&entry.holders) {
                let lists = &mut self.lists;
                let (_, list) = filtered.entry(Arc::as_ptr(&entry.holders).cast::<Holder>()).or_insert_with(|| {
                    let left = entry.holders.iter().filter(|h| !gone.contains(&h.peer_id)).cloned().collect();
                    (entry.holders.clone(), lists.share(left))
                });
                entry.holders = list.clone();
                if wanted(&entry.record.path) {
                    picked.push(entry.record.path.clone());
                }
            }
            kept.insert(ByPath(entry));
        }
        self.entries = kept;
        picked
    }

    /// Forgets every entry (a new tracker history: the full table follows).
    pub(super) fn clear(&mut self) {
        self.entries = HashSet::new();
        self.lists = HolderLists::default();
    }

    /// Number of paths.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Holder lists in use, each kept once.
///
/// Lists no entry uses any more are dropped when the set has doubled since
/// the last sweep, so the set stays within twice the lists in use (plus a
/// constant) and a sweep costs O(1) per list added.
#[derive(Debug)]
struct HolderLists {
    lists: HashSet<Arc<[Holder]>>,
    /// The set's size after the last sweep.
    swept_at: usize,
    /// The empty list (most common while a cluster starts), never swept.
    empty: Arc<[Holder]>,
}

impl Default for HolderLists {
    fn default() -> Self {
        HolderLists { lists: HashSet::new(), swept_at: 0, empty: Arc::from(Vec::new()) }
    }
}

/// Lists kept before the first sweep.
const SWEEP_FLOOR: usize = 64;

impl HolderLists {
    /// The shared copy of `holders`.
    fn share(&mut self, holders: Vec<Holder>) -> Arc<[Holder]> {
        if holders.is_empty() {
            return self.empty.clone();
        }
        if let Some(shared) = self.lists.get(holders.as_slice()) {
            return shared.clone();
        }
        if self.lists.len() >= (2 * self.swept_at).max(SWEEP_FLOOR) {
            // Only this set holds them: no entry uses them any more.
            self.lists.retain(|list| Arc::strong_count(list) > 1);
            self.swept_at = self.lists.len();
        }
        let shared: Arc<[Holder]> = Arc::from(holders);
        self.lists.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::vv;
    use dartsync_shared::{ContentHash, FileKind};

    fn record(path: &str, counter: u64) -> FileRecord {
        FileRecord {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: counter,
            mtime_ns: 0,
            mode: 0o644,
            content: ContentHash([counter as u8; 32]),
            chunks: ContentHash([counter as u8; 32]),
            version: vv(&[(1, counter)]),
            deleted: false,
        }
    }

    fn holder(n: u8) -> Holder {
        Holder { peer_id: PeerId([n; 16]), addr: ([127, 0, 0, 1], 4000 + u16::from(n)).into() }
    }

    #[test]
    fn entries_are_found_and_replaced_by_path() {
        let mut table = GlobalTable::default();
        assert!(table.insert(record("a", 1), vec![holder(1)]).is_none());
        assert!(table.insert(record("b/c", 1), vec![]).is_none());
        let old = table.insert(record("a", 2), vec![holder(2)]).unwrap();
        assert_eq!(old.record, record("a", 1));
        assert_eq!(&old.holders[..], &[holder(1)]);
        let now = table.get(&RelPath::new("a").unwrap()).unwrap();
        assert_eq!(now.record, record("a", 2));
        assert_eq!(&now.holders[..], &[holder(2)]);
        assert!(table.contains_key(&RelPath::new("b/c").unwrap()));
        assert!(!table.contains_key(&RelPath::new("b").unwrap()));
        assert_eq!(table.len(), 2);
        table.clear();
        assert_eq!(table.len(), 0);
        assert!(table.get(&RelPath::new("a").unwrap()).is_none());
    }

    #[test]
    fn holders_are_replaced_only_for_the_version_known_and_only_when_they_differ() {
        let mut table = GlobalTable::default();
        let a = RelPath::new("a").unwrap();
        table.insert(record("a", 2), vec![holder(1)]);
        assert!(!table.set_holders(&a, &vv(&[(1, 1)]), vec![holder(2)]), "another version");
        assert!(!table.set_holders(&a, &vv(&[(1, 2)]), vec![holder(1)]), "the same holders");
        assert!(!table.set_holders(&RelPath::new("b").unwrap(), &vv(&[(1, 2)]), vec![holder(2)]), "no entry");
        assert_eq!(&table.get(&a).unwrap().holders[..], &[holder(1)]);
        assert!(table.set_holders(&a, &vv(&[(1, 2)]), vec![holder(2), holder(3)]));
        let now = table.get(&a).unwrap();
        assert_eq!((&now.record, &now.holders[..]), (&record("a", 2), &[holder(2), holder(3)][..]));
        assert!(table.set_holders(&a, &vv(&[(1, 2)]), vec![]));
        assert!(table.get(&a).unwrap().holders.is_empty());
    }

    #[test]
    fn peers_that_left_leave_every_holder_list() {
        let mut table = GlobalTable::default();
        for i in 0..10 {
            table.insert(record(&format!("f{i}"), 1), vec![holder(1), holder(2)]);
        }
        table.insert(record("only-3", 1), vec![holder(3)]);
        table.insert(record("only-2", 1), vec![holder(2)]);
        let wanted = |p: &RelPath| p.as_str() != "f5";
        let mut touched = table.drop_holders(&HashSet::from([PeerId([2; 16])]), wanted);
        touched.sort();
        assert_eq!(touched.len(), 10, "every list naming peer 2 but f5's (not wanted): {touched:?}");
        assert!(!touched.contains(&RelPath::new("only-3").unwrap()));
        assert_eq!(&table.get(&RelPath::new("f5").unwrap()).unwrap().holders[..], &[holder(1)]);
        let f0 = table.get(&RelPath::new("f0").unwrap()).unwrap().holders.clone();
        assert_eq!(&f0[..], &[holder(1)]);
        assert!(Arc::ptr_eq(&f0, &table.get(&RelPath::new("f9").unwrap()).unwrap().holders), "still shared");
        assert!(table.get(&RelPath::new("only-2").unwrap()).unwrap().holders.is_empty());
        assert_eq!(&table.get(&RelPath::new("only-3").unwrap()).unwrap().holders[..], &[holder(3)]);
        assert_eq!(table.len(), 12);
        assert!(table.drop_holders(&HashSet::from([PeerId([9; 16])]), |_| true).is_empty());
        assert_eq!(table.len(), 12);
    }

    #[test]
    fn an_entry_stays_small() {
        // The record (path, kind, size, time, mode, two hashes, a one-writer
        // version inline) and a shared holder list; the set adds a pointer.
        let size = std::mem::size_of::<GlobalEntry>();
        println!("GlobalEntry: {size} bytes");
        assert!(size <= 168, "GlobalEntry is {size} bytes");
        assert_eq!(std::mem::size_of::<ByPath>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn equal_holder_lists_are_one_allocation() {
        let mut table = GlobalTable::default();
        for i in 0..100 {
            table.insert(record(&format!("f{i}"), 1), vec![holder(1), holder(2)]);
        }
        let a = table.get(&RelPath::new("f0").unwrap()).unwrap().holders.clone();
        let b = table.get(&RelPath::new("f99").unwrap()).unwrap().holders.clone();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(table.lists.lists.len(), 1);
    }

    #[test]
    fn unused_holder_lists_are_swept() {
        let mut table = GlobalTable::default();
        // One path whose holders change 10,000 times: every list but the
        // last becomes unused.
        for i in 0..10_000u32 {
            let list = vec![holder((i % 251) as u8), holder(((i / 251) % 251) as u8 + 1)];
            table.insert(record("moving", 1), list);
        }
        assert!(table.lists.lists.len() <= 2 * SWEEP_FLOOR, "{} lists kept", table.lists.lists.len());
        let now = table.get(&RelPath::new("moving").unwrap()).unwrap();
        assert_eq!(now.holders.len(), 2);
    }
}
