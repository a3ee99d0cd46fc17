//! Who announces what (pure): the records of a run and which simulated
//! peers hold each one.
//!
//! Record `i` is held by `holders` peers: with every peer holding every
//! record (the default, as in a real cluster where each device has the
//! whole folder) peer 0 authors all of them and the others announce the
//! same records (same content, same version), so the tracker adds them as
//! holders. With fewer holders, record `i` is authored by peer `i mod N`
//! and also held by the next `holders - 1` peers (mod N); `holders = 1`
//! is every peer announcing distinct paths.

use dartsync_shared::chunk::{ChunkParams, whole_file_list_hash};
use dartsync_shared::id::ContentHash;
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use dartsync_shared::path::RelPath;
use dartsync_shared::record::{FileKind, FileRecord};
use dartsync_shared::version::VersionVector;
use dartsync_shared::{PeerId, ShortId};

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Simulated peers (N).
    pub peers: usize,
    /// Records in the table (R).
    pub records: usize,
    /// Peers holding each record, 1..=N.
    pub holders: usize,
}

impl Layout {
    /// A layout; `holders` is clamped to `1..=peers`.
    pub fn new(peers: usize, records: usize, holders: usize) -> Layout {
        Layout { peers, records, holders: holders.clamp(1, peers.max(1)) }
    }

    /// True when every peer holds every record.
    pub fn all_hold(&self) -> bool {
        self.holders >= self.peers
    }

    /// The peer that authors record `i`.
    pub fn author_of(&self, i: usize) -> usize {
        if self.all_hold() { 0 } else { i % self.peers }
    }

    /// Records in `range` that `peer` authors, ascending.
    pub fn authored(&self, peer: usize, range: std::ops::Range<usize>) -> Vec<usize> {
        if self.all_hold() {
            return if peer == 0 { range.collect() } else { Vec::new() };
        }
        let first = range.start + (peer + self.peers - range.start % self.peers) % self.peers;
        (first..range.end).step_by(self.peers).collect()
    }

    /// Records `peer` holds without authoring them, ascending.
    pub fn held(&self, peer: usize) -> Vec<usize> {
        if self.all_hold() {
            return if peer == 0 { Vec::new() } else { (0..self.records).collect() };
        }
        // Record i is held by peers i, i+1, ..., i+holders-1 (mod N).
        let mut out: Vec<usize> = (1..self.holders)
            .flat_map(|j| {
                let author = (peer + self.peers - j) % self.peers;
                (author..self.records).step_by(self.peers)
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// (record, holder) pairs in the table once every peer has announced.
    pub fn holdings(&self) -> u64 {
        (self.records * self.holders) as u64
    }
}

/// One record in this many is a file of several chunks (2 to 9 MiB); the
/// others are files of 1,000 to 5,999 bytes, one chunk each. A folder of
/// documents, code and photos is mostly small files by count.
pub const SEVERAL_CHUNKS_EVERY: usize = 20;

/// Size of record `i`.
fn size_of(i: usize) -> u64 {
    if i % SEVERAL_CHUNKS_EVERY == SEVERAL_CHUNKS_EVERY - 1 {
        (2 + (i as u64 / SEVERAL_CHUNKS_EVERY as u64) % 8) << 20
    } else {
        1000 + (i as u64 % 5000)
    }
}

/// The chunk-list hash a peer would announce for a file of `size` bytes
/// with `content`: a file shorter than the smallest chunk is one chunk
/// (its list hash follows from the content hash); a bigger one gets a hash
/// of its own from `list`.
fn chunks_of(size: u64, content: ContentHash, list: &[u8]) -> ContentHash {
    let smallest = ChunkParams::for_piece_len(DEFAULT_PIECE_LEN).min;
    match whole_file_list_hash(size, content) {
        Some(one_chunk) if size < u64::from(smallest) => one_chunk,
        _ => ContentHash::of(list),
    }
}

/// Record `i` of a run as its holders announce it: a 30-byte path, a size,
/// content and chunk-list hashes, version 1 of `author`.
pub fn record(i: usize, author: PeerId) -> FileRecord {
    let path = RelPath::new(&format!("d{:03}/s{:02}/file-{i:08}.dat", i % 1000, i % 97)).expect("a valid path");
    let size = size_of(i);
    let content = ContentHash::of(&(i as u64).to_le_bytes());
    FileRecord {
        path,
        kind: FileKind::File,
        size,
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        content,
        chunks: chunks_of(size, content, &(!(i as u64)).to_le_bytes()),
        version: VersionVector::from_entries([(author.short(), 1)]),
        deleted: false,
    }
}

/// An edit of `base` by `editor`: new content, the version bumped by the
/// editor (so it dominates), mtime a second later.
pub fn edited(base: &FileRecord, editor: ShortId, n: u64) -> FileRecord {
    let mut r = base.clone();
    r.version = base.version.bumped(editor).expect("counters far below the limit");
    r.content = ContentHash::of(format!("edit {n} of {}", base.path.as_str()).as_bytes());
    r.chunks = chunks_of(r.size, r.content, format!("chunks {n} of {}", base.path.as_str()).as_bytes());
    r.mtime_ns += 1_000_000_000;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders_of(layout: &Layout, i: usize) -> Vec<usize> {
        (0..layout.peers).filter(|&p| layout.author_of(i) == p || layout.held(p).contains(&i)).collect::<Vec<_>>()
    }

    #[test]
    fn every_peer_holds_every_record_by_default() {
        let l = Layout::new(4, 10, 4);
        assert!(l.all_hold());
        assert_eq!(l.authored(0, 0..10), (0..10).collect::<Vec<_>>());
        assert!(l.authored(2, 0..10).is_empty());
        assert!(l.held(0).is_empty());
        assert_eq!(l.held(3).len(), 10);
        assert_eq!(l.holdings(), 40);
    }

    #[test]
    fn fewer_holders_spread_authors_and_copies() {
        let l = Layout::new(5, 23, 2);
        for i in 0..23 {
            let a = l.author_of(i);
            assert_eq!(holders_of(&l, i), {
                let mut v = vec![a, (a + 1) % 5];
                v.sort_unstable();
                v
            });
        }
        // Authored records, split in two ranges, cover each exactly once.
        let mut all: Vec<usize> =
            (0..5).flat_map(|p| l.authored(p, 0..7).into_iter().chain(l.authored(p, 7..23))).collect();
        all.sort_unstable();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        assert_eq!(Layout::new(5, 23, 1).held(3), Vec::<usize>::new());
        assert_eq!(Layout::new(3, 5, 9).holders, 3);
    }

    #[test]
    fn records_are_valid_and_edits_dominate() {
        let author = PeerId([7; 16]);
        let r = record(12_345, author);
        r.validate().unwrap();
        assert!(r.path.as_str().len() >= 25);
        let e = edited(&r, PeerId([9; 16]).short(), 1);
        e.validate().unwrap();
        assert!(e.version.dominates(&r.version));
        assert_ne!(e.content, r.content);
    }

    #[test]
    fn small_files_carry_the_chunk_list_of_one_chunk_and_big_ones_their_own() {
        let author = PeerId([7; 16]);
        let one_chunk = |r: &FileRecord| Some(r.chunks) == whole_file_list_hash(r.size, r.content);
        let small = record(0, author);
        assert!(small.size < 6000 && one_chunk(&small));
        assert!(one_chunk(&edited(&small, author.short(), 1)), "an edit stays one chunk");
        let big = record(SEVERAL_CHUNKS_EVERY - 1, author);
        assert!(big.size >= 2 << 20 && !one_chunk(&big));
        assert_ne!(edited(&big, author.short(), 1).chunks, big.chunks);
        let bigs = (0..10 * SEVERAL_CHUNKS_EVERY).filter(|&i| record(i, author).size > 6000).count();
        assert_eq!(bigs, 10);
    }
}
