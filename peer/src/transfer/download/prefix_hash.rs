//! [`PrefixHash`]: the whole-file hash of a download, taken while its
//! chunks are written, so the final check reads back from disk only what
//! the stream could not cover.
//!
//! The hash runs over the file in order. A verified chunk written at the
//! end of the hashed prefix is hashed from the bytes in hand; one written
//! further on is kept in memory (at most [`HELD_MAX`] bytes per download)
//! until the prefix reaches it, or, when there is no room, read back from
//! the `.part` then. Chunks already in place before the network phase
//! (resumed, copied locally, refined) are read back when the prefix
//! reaches them. [`super::assemble::finish`] hashes whatever is left
//! after the prefix, from disk, and compares the whole with the record's
//! content hash, exactly as a full re-read would.
//!
//! # Invariants
//! - Only chunks marked done (verified and written) enter the hash, each
//!   once, in file order: the hash of the prefix is the hash of the file's
//!   bytes before chunk `next` as they are on disk.
//! - Held bytes are bounded ([`HELD_MAX`]); dropping them costs a read,
//!   never correctness.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use dartsync_shared::ChunkInfo;

/// Most bytes of chunks that arrived ahead of the hashed prefix kept in
/// memory per download (a few pipelined requests' worth).
pub(crate) const HELD_MAX: usize = 4 << 20;

/// The running whole-file hash of one download's prefix.
#[derive(Debug)]
pub(crate) struct PrefixHash {
    hasher: blake3::Hasher,
    /// Chunks `[0, next)` (by index in the chunk list) are hashed.
    next: usize,
    /// Bytes of done chunks beyond `next`, by chunk index.
    held: BTreeMap<usize, Vec<u8>>,
    held_bytes: usize,
}

impl PrefixHash {
    /// Nothing hashed yet.
    pub(crate) fn new() -> PrefixHash {
        PrefixHash { hasher: blake3::Hasher::new(), next: 0, held: BTreeMap::new(), held_bytes: 0 }
    }

    /// Chunks `members` (indices into `chunks`) were just written with
    /// `bytes` and marked done in `done`: hashes every done chunk the
    /// prefix can now reach (these from `bytes`, held ones from memory,
    /// others read back from `file`) and keeps `bytes` for members still
    /// ahead of it while there is room. Blocking.
    pub(crate) fn written(
        &mut self,
        file: &File,
        chunks: &[ChunkInfo],
        done: impl Fn(usize) -> bool,
        members: &[usize],
        bytes: &[u8],
    ) -> std::io::Result<()> {
        while self.next < chunks.len() {
            let i = self.next;
            if members.contains(&i) {
                self.hasher.update(bytes);
            } else if let Some(held) = self.held.remove(&i) {
                self.held_bytes -= held.len();
                self.hasher.update(&held);
            } else if done(i) {
                let c = &chunks[i];
                let mut back = vec![0u8; c.len as usize];
                file.read_exact_at(&mut back, c.offset)?;
                self.hasher.update(&back);
            } else {
                break;
            }
            self.next += 1;
        }
        for &i in members.iter().filter(|&&i| i >= self.next) {
            if self.held_bytes + bytes.len() > HELD_MAX {
                break;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = self.held.entry(i) {
                slot.insert(bytes.to_vec());
                self.held_bytes += bytes.len();
            }
        }
        Ok(())
    }

    /// The hasher and the byte offset up to which it has hashed the file
    /// (the rest is for the caller to read); drops what it held.
    pub(crate) fn into_parts(self, chunks: &[ChunkInfo]) -> (blake3::Hasher, u64) {
        let end = || chunks.last().map_or(0, |c| c.offset + u64::from(c.len));
        let offset = chunks.get(self.next).map_or_else(end, |c| c.offset);
        (self.hasher, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::ContentHash;
    use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
    use dartsync_shared::test_util::det_bytes;

    use crate::transfer::part::Bitmap;

    /// Writes `order` of a file's chunks into a fresh file (every chunk
    /// `pre` says is there first), feeding each to a prefix hash, then
    /// hashes the rest from disk as `finish` does.
    fn run(bytes: &[u8], pre: &[usize], order: &[usize]) -> (ContentHash, u64) {
        let chunked = chunk_bytes(bytes, ChunkParams::for_piece_len(4096));
        let chunks = chunked.chunks;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let file = File::options().create_new(true).read(true).write(true).open(&path).unwrap();
        file.set_len(bytes.len() as u64).unwrap();
        let mut done = Bitmap::new(chunks.len());
        let slice =
            |i: usize| &bytes[chunks[i].offset as usize..(chunks[i].offset + u64::from(chunks[i].len)) as usize];
        for &i in pre {
            file.write_all_at(slice(i), chunks[i].offset).unwrap();
            done.set(i, true);
        }
        let mut prefix = PrefixHash::new();
        for &i in order {
            file.write_all_at(slice(i), chunks[i].offset).unwrap();
            done.set(i, true);
            prefix.written(&file, &chunks, |j| done.get(j), &[i], slice(i)).unwrap();
        }
        let (mut hasher, from) = prefix.into_parts(&chunks);
        hasher.update(&bytes[from as usize..]);
        (hasher.finalize().into(), from)
    }

    #[test]
    fn chunks_in_any_order_hash_to_the_file() {
        let bytes = det_bytes(11, 200_000);
        let n = chunk_bytes(&bytes, ChunkParams::for_piece_len(4096)).chunks.len();
        assert!(n > 10, "want many chunks, got {n}");
        let want = ContentHash::of(&bytes);
        let in_order: Vec<usize> = (0..n).collect();
        let (got, from) = run(&bytes, &[], &in_order);
        assert_eq!((got, from), (want, bytes.len() as u64), "in order: all hashed on the way");
        let reversed: Vec<usize> = (0..n).rev().collect();
        assert_eq!(run(&bytes, &[], &reversed).0, want, "reversed: held, then hashed");
        let pairs: Vec<usize> = (0..n).map(|i| i ^ 1).filter(|&i| i < n).collect();
        assert_eq!(run(&bytes, &[], &pairs).0, want);
        // Chunks in place before (resumed, copied) are read back.
        let rest: Vec<usize> = (0..n).filter(|i| i % 3 != 0).collect();
        let pre: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
        assert_eq!(run(&bytes, &pre, &rest), (want, bytes.len() as u64));
        // Stopped early (a chunk never came): the rest is for the caller.
        let (_, from) = run(&bytes, &[], &in_order[..n / 2]);
        assert!(from > 0 && from < bytes.len() as u64);
    }

    #[test]
    fn held_bytes_stay_bounded_and_dropped_chunks_are_read_back() {
        // Big chunks, arriving last first: more than HELD_MAX ahead.
        let bytes = det_bytes(12, 3 * HELD_MAX);
        let chunks = chunk_bytes(&bytes, ChunkParams::for_piece_len(256 * 1024)).chunks;
        let dir = tempfile::tempdir().unwrap();
        let file = File::options().create_new(true).read(true).write(true).open(dir.path().join("p")).unwrap();
        let mut done = Bitmap::new(chunks.len());
        let mut prefix = PrefixHash::new();
        for i in (0..chunks.len()).rev() {
            let c = chunks[i];
            let slice = &bytes[c.offset as usize..(c.offset + u64::from(c.len)) as usize];
            file.write_all_at(slice, c.offset).unwrap();
            done.set(i, true);
            prefix.written(&file, &chunks, |j| done.get(j), &[i], slice).unwrap();
            assert!(prefix.held_bytes <= HELD_MAX);
        }
        let (hasher, from) = prefix.into_parts(&chunks);
        assert_eq!((ContentHash::from(hasher.finalize()), from), (ContentHash::of(&bytes), bytes.len() as u64));
    }
}
