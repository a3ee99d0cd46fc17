//! Parts of a chunk: a second, finer content-defined cut of one chunk
//! (FastCDC with 2, 8 and 32 KiB as minimum, average and maximum), so a
//! receiver that has the chunk this one replaced fetches only the few KiB
//! around an edit instead of the whole chunk (256 KiB on average).
//!
//! Both sides cut with the same parameters: the holder cuts the new chunk
//! and sends the parts' lengths and hashes; the receiver cuts the chunks it
//! has and looks the parts up by hash. Cutting starts at each chunk's
//! start, and content-defined cut points resynchronise a few parts after
//! an insertion, so an edit changes the parts around it and no others.
//!
//! # Trust
//! A part list is a hint: the receiver reads each part it has locally only
//! if it hashes to the listed hash, fetches the others (each verified
//! against its hash by both sides), and writes the chunk only once the
//! whole chunk hashes to the chunk's hash.

use serde::{Deserialize, Serialize};

use crate::id::ContentHash;
use crate::limits::MAX_CHUNK_LEN;

/// Smallest part (except a chunk's last part).
pub const PART_MIN: u32 = 2 * 1024;
/// Average part.
pub const PART_AVG: u32 = 8 * 1024;
/// Largest part.
pub const PART_MAX: u32 = 32 * 1024;

/// Most parts one chunk can have ([`MAX_CHUNK_LEN`] cut at [`PART_MIN`]).
pub const MAX_PARTS: usize = (MAX_CHUNK_LEN / PART_MIN) as usize + 1;

/// One part of a chunk; parts tile their chunk in order, so offsets are
/// implied by the lengths before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartInfo {
    /// Length in bytes: 1 to [`PART_MAX`].
    pub len: u32,
    /// blake3 of the part's bytes.
    pub hash: ContentHash,
}

/// The parts of `chunk` (the bytes of one chunk), in order.
pub fn cut_parts(chunk: &[u8]) -> Vec<PartInfo> {
    fastcdc::v2020::FastCDC::new(chunk, PART_MIN, PART_AVG, PART_MAX)
        .map(|c| PartInfo { len: c.length as u32, hash: ContentHash::of(&chunk[c.offset..c.offset + c.length]) })
        .collect()
}

/// True when `parts` tile a chunk of `chunk_len` bytes: at most
/// [`MAX_PARTS`], each 1 to [`PART_MAX`] bytes, adding up to `chunk_len`.
pub fn parts_tile(parts: &[PartInfo], chunk_len: u32) -> bool {
    parts.len() <= MAX_PARTS
        && parts.iter().all(|p| p.len > 0 && p.len <= PART_MAX)
        && parts.iter().map(|p| u64::from(p.len)).sum::<u64>() == u64::from(chunk_len)
}

/// The offsets of `parts` inside their chunk, in order.
pub fn part_offsets(parts: &[PartInfo]) -> impl Iterator<Item = (u32, &PartInfo)> {
    parts.iter().scan(0u32, |at, p| {
        let start = *at;
        *at = at.saturating_add(p.len);
        Some((start, p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::det_bytes;
    use std::collections::HashSet;

    #[test]
    fn parts_tile_the_chunk_and_hash_their_bytes() {
        for len in [1usize, 100, 2048, 8192, 256 * 1024, 1024 * 1024 + 7] {
            let chunk = det_bytes(len as u64, len);
            let parts = cut_parts(&chunk);
            assert!(parts_tile(&parts, len as u32), "len {len}");
            for (at, p) in part_offsets(&parts) {
                assert_eq!(p.hash, ContentHash::of(&chunk[at as usize..][..p.len as usize]));
            }
        }
        assert!(cut_parts(&[]).is_empty());
        assert!(parts_tile(&[], 0));
    }

    #[test]
    fn an_edit_changes_only_the_parts_around_it() {
        let chunk = det_bytes(11, 256 * 1024);
        let old: HashSet<ContentHash> = cut_parts(&chunk).iter().map(|p| p.hash).collect();
        let mut overwritten = chunk.clone();
        overwritten[100_000] ^= 1;
        let mut inserted = chunk.clone();
        inserted.splice(50_000..50_000, [7u8; 100]);
        for edited in [overwritten, inserted] {
            let parts = cut_parts(&edited);
            let new: u64 = parts.iter().filter(|p| !old.contains(&p.hash)).map(|p| u64::from(p.len)).sum();
            assert!(new <= 3 * u64::from(PART_MAX), "{new} new bytes of {}", edited.len());
        }
    }

    #[test]
    fn lists_that_do_not_tile_are_refused() {
        let parts = cut_parts(&det_bytes(1, 100_000));
        assert!(!parts_tile(&parts, 99_999));
        let mut empty = parts.clone();
        empty[0].len = 0;
        assert!(!parts_tile(&empty, 100_000 - parts[0].len));
        let long = [PartInfo { len: PART_MAX + 1, hash: ContentHash::of(b"") }];
        assert!(!parts_tile(&long, PART_MAX + 1));
    }
}
