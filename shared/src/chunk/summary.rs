//! Chunk-list summaries: a chunk list cut into content-defined groups, each
//! named by a 16-byte digest, so a receiver that holds an older list of the
//! same file (the version it replaces) fetches only the groups it lacks
//! instead of the whole list (about 180 KB for a 1 GiB file).
//!
//! # Grouping
//! A group ends after a chunk whose hash has the low [`GROUP_BITS`] bits of
//! its first byte zero (one chunk in 32 on average), after [`MAX_GROUP`]
//! chunks, or at the end of the list. The rule looks at the chunks, not at
//! their index, so an edit that adds or removes chunks changes the groups
//! around it and no others. A digest covers each member's length and hash
//! but not its offset, so an insertion that shifts every later offset
//! leaves the later digests as they were.
//!
//! # Trust
//! A summary is only a hint of what to fetch. [`ListPlan::rebuild`] puts
//! the list together from the receiver's base list and the fetched ranges,
//! recomputing every offset; the caller accepts the result only if its
//! [`chunk_list_hash`](super::chunk_list_hash) equals the record's `chunks`,
//! exactly as for a list fetched whole. A lying summary costs a round trip,
//! never a wrong file. Memory is bounded by the record's size, as for a
//! whole list (see [`ListPlan::rebuild`]).

use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkInfo;
use crate::id::ContentHash;
use crate::limits::{CHUNK_LIST_PAGE, MAX_CHUNK_LEN, MIN_CHUNK_LEN};
use crate::proto::ProtocolError;

/// A group ends after a chunk whose hash's first byte has these many low
/// bits zero: 2^5 = 32 chunks per group on average.
pub const GROUP_BITS: u32 = 5;

/// Most chunks in one group.
pub const MAX_GROUP: u32 = 128;

/// Most groups in one summary (a list of about two million chunks, 512 GiB
/// at the default piece length; about 1.2 MB on the wire). A longer list
/// has no summary: it is fetched whole, in pages.
pub const MAX_SUMMARY_GROUPS: usize = 1 << 16;

/// The digest of one group: the first 16 bytes of a keyed blake3 over each
/// member's length and hash. 16 bytes suffice: a collision can only make a
/// rebuilt list fail its hash check, and the list is then fetched whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupDigest(pub [u8; 16]);

/// One group of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Chunks in the group: 1 to [`MAX_GROUP`].
    pub count: u32,
    /// Digest of the group's chunks.
    pub digest: GroupDigest,
}

/// The summary of the chunk list of one content: its groups in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSummary {
    /// The whole-file hash the list describes.
    pub content: ContentHash,
    /// The groups, in list order (bounded while decoding).
    #[serde(deserialize_with = "summary_groups")]
    pub groups: Vec<GroupSummary>,
}

fn summary_groups<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<GroupSummary>, D::Error> {
    crate::codec::bounded_vec(deserializer, MAX_SUMMARY_GROUPS, "chunk list summary")
}

/// True when a group ends after `chunk`.
fn ends_group(chunk: &ChunkInfo) -> bool {
    chunk.hash.0[0] & ((1 << GROUP_BITS) - 1) == 0
}

/// The groups of `list`, as index ranges covering it in order.
pub fn group_ranges(list: &[ChunkInfo]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(list.len() / (1 << GROUP_BITS) + 1);
    let mut start = 0;
    for (i, chunk) in list.iter().enumerate() {
        if ends_group(chunk) || i + 1 - start == MAX_GROUP as usize {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < list.len() {
        out.push(start..list.len());
    }
    out
}

/// The digest of a group of chunks.
pub fn group_digest(chunks: &[ChunkInfo]) -> GroupDigest {
    let mut hasher = blake3::Hasher::new_derive_key("dartsync chunk list group v1");
    for chunk in chunks {
        hasher.update(&chunk.len.to_le_bytes());
        hasher.update(&chunk.hash.0);
    }
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    GroupDigest(digest)
}

/// The summary of `list`, the chunk list of `content`; `None` when it has
/// more than [`MAX_SUMMARY_GROUPS`] groups.
pub fn summarize(content: ContentHash, list: &[ChunkInfo]) -> Option<ListSummary> {
    let ranges = group_ranges(list);
    if ranges.len() > MAX_SUMMARY_GROUPS {
        return None;
    }
    let groups =
        ranges.into_iter().map(|r| GroupSummary { count: r.len() as u32, digest: group_digest(&list[r]) }).collect();
    Some(ListSummary { content, groups })
}

impl ListSummary {
    /// Chunks in the whole list.
    pub fn total(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.count)).sum()
    }

    /// Checks a summary received from the network on its own.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        crate::proto::check_len("chunk list summary", self.groups.len(), MAX_SUMMARY_GROUPS)?;
        if self.groups.iter().any(|g| g.count == 0 || g.count > MAX_GROUP) {
            return Err(ProtocolError::Invalid("chunk list summary: a group outside 1..=MAX_GROUP chunks"));
        }
        Ok(())
    }
}

/// One run of a rebuilt list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `count` chunks copied from the base list, from index `start`.
    Base { start: usize, count: usize },
    /// `count` chunks fetched from the holder, from index `first` of the
    /// new list.
    Fetch { first: u64, count: u32 },
}

/// How to rebuild a chunk list from a base list and a summary: which runs
/// come from the base and which ranges to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPlan {
    pieces: Vec<Piece>,
    total: u64,
}

/// Why [`ListPlan::rebuild`] failed: the holder's answers do not fit the
/// plan or the record. The caller drops that holder's summary and fetches
/// the list whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    /// The summary claims more chunks than a file of this size can have.
    #[error("a summary of {total} chunks cannot describe a file of {size} bytes")]
    ImpossibleTotal {
        /// Chunks the summary claims.
        total: u64,
        /// The record's size.
        size: u64,
    },
    /// A fetched range has another number of chunks than asked for.
    #[error("fetched range {index} has {got} chunks, expected {expected}")]
    WrongCount {
        /// Which fetched range (in [`ListPlan::fetches`] order).
        index: usize,
        /// Chunks asked for.
        expected: u32,
        /// Chunks received.
        got: usize,
    },
    /// Fewer or more ranges than the plan asked for.
    #[error("{got} fetched ranges for a plan of {expected}")]
    WrongRanges {
        /// Ranges the plan asked for.
        expected: usize,
        /// Ranges supplied.
        got: usize,
    },
    /// A chunk is empty or too long, or the chunks run past the file.
    #[error("the rebuilt list does not tile a file of {size} bytes")]
    BadTiling {
        /// The record's size.
        size: u64,
    },
}

impl ListPlan {
    /// Plans the list `summary` describes from `base` (the receiver's list
    /// of another version of the file): groups whose digest a base group
    /// has come from the base, the others are fetched, in ranges of at most
    /// [`CHUNK_LIST_PAGE`] chunks. `summary` must have passed
    /// [`ListSummary::validate`].
    pub fn new(summary: &ListSummary, base: &[ChunkInfo]) -> ListPlan {
        let mut known: HashMap<GroupDigest, Range<usize>> = HashMap::new();
        for range in group_ranges(base) {
            known.entry(group_digest(&base[range.clone()])).or_insert(range);
        }
        let mut pieces: Vec<Piece> = Vec::new();
        let mut next = 0u64;
        for group in &summary.groups {
            let count = group.count;
            let piece = match known.get(&group.digest) {
                Some(range) if range.len() == count as usize => Piece::Base { start: range.start, count: range.len() },
                _ => Piece::Fetch { first: next, count },
            };
            match (pieces.last_mut(), piece) {
                (Some(Piece::Base { start, count }), Piece::Base { start: s, count: c }) if *start + *count == s => {
                    *count += c;
                }
                (Some(Piece::Fetch { count, .. }), Piece::Fetch { count: c, .. })
                    if u64::from(*count) + u64::from(c) <= u64::from(CHUNK_LIST_PAGE) =>
                {
                    *count += c;
                }
                _ => pieces.push(piece),
            }
            next += u64::from(count);
        }
        ListPlan { pieces, total: next }
    }

    /// The ranges to fetch, as `(first index, count)` of the new list, in
    /// order: each fits one `GetChunkList` request.
    pub fn fetches(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.pieces.iter().filter_map(|p| match *p {
            Piece::Fetch { first, count } => Some((first, count)),
            Piece::Base { .. } => None,
        })
    }

    /// Chunks of the new list that come from the base.
    pub fn from_base(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match *p {
                Piece::Base { count, .. } => count as u64,
                Piece::Fetch { .. } => 0,
            })
            .sum()
    }

    /// Chunks in the new list.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The new list of a `size`-byte file: runs of `base` (the list the
    /// plan was made with) and `fetched` ranges
    /// (one per [`Self::fetches`] entry, in order; their offsets are
    /// ignored) in plan order, with offsets recomputed. It refuses a total
    /// a file of `size` bytes cannot have before building anything, and
    /// stops at the first chunk that runs past `size`. The caller still
    /// checks the list's hash against the record.
    pub fn rebuild(
        &self,
        base: &[ChunkInfo],
        fetched: &[Vec<ChunkInfo>],
        size: u64,
    ) -> Result<Vec<ChunkInfo>, RebuildError> {
        let most = size.div_ceil(u64::from(MIN_CHUNK_LEN));
        if self.total > most {
            return Err(RebuildError::ImpossibleTotal { total: self.total, size });
        }
        let expected = self.fetches().count();
        if fetched.len() != expected {
            return Err(RebuildError::WrongRanges { expected, got: fetched.len() });
        }
        let mut out = Vec::with_capacity(self.total as usize);
        let mut offset = 0u64;
        let mut push = |out: &mut Vec<ChunkInfo>, c: &ChunkInfo| {
            let end = offset.checked_add(u64::from(c.len)).filter(|end| *end <= size);
            match end {
                Some(end) if c.len > 0 && c.len <= MAX_CHUNK_LEN => {
                    out.push(ChunkInfo { offset, len: c.len, hash: c.hash });
                    offset = end;
                    Ok(())
                }
                _ => Err(RebuildError::BadTiling { size }),
            }
        };
        let mut ranges = fetched.iter().enumerate();
        for piece in &self.pieces {
            match *piece {
                Piece::Base { start, count } => {
                    // Planned with another base: refuse rather than panic.
                    let run = base.get(start..start + count).ok_or(RebuildError::BadTiling { size })?;
                    for c in run {
                        push(&mut out, c)?;
                    }
                }
                Piece::Fetch { count, .. } => {
                    let Some((index, range)) = ranges.next() else {
                        return Err(RebuildError::WrongRanges { expected, got: fetched.len() });
                    };
                    if range.len() != count as usize {
                        return Err(RebuildError::WrongCount { index, expected: count, got: range.len() });
                    }
                    for c in range {
                        push(&mut out, c)?;
                    }
                }
            }
        }
        if offset != size {
            return Err(RebuildError::BadTiling { size });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkParams, chunk_bytes, chunk_list_hash};
    use crate::test_util::det_bytes;

    const MIB: usize = 1024 * 1024;

    /// Rebuilds `new`'s list from `old`'s through a summary, fetching the
    /// planned ranges from `new` itself; returns the list and how many
    /// entries were fetched.
    fn rebuild(old: &[ChunkInfo], new: &[ChunkInfo], size: u64) -> (Vec<ChunkInfo>, u64) {
        let summary = summarize(ContentHash::of(b"new"), new).unwrap();
        summary.validate().unwrap();
        assert_eq!(summary.total(), new.len() as u64);
        let plan = ListPlan::new(&summary, old);
        let fetched: Vec<Vec<ChunkInfo>> =
            plan.fetches().map(|(first, count)| new[first as usize..][..count as usize].to_vec()).collect();
        let entries = fetched.iter().map(|f| f.len() as u64).sum();
        assert_eq!(entries + plan.from_base(), plan.total());
        (plan.rebuild(old, &fetched, size).unwrap(), entries)
    }

    fn params() -> ChunkParams {
        ChunkParams::for_piece_len(16 * 1024)
    }

    #[test]
    fn groups_cover_the_list_and_respect_the_maximum() {
        let f = chunk_bytes(&det_bytes(1, 8 * MIB), params());
        let ranges = group_ranges(&f.chunks);
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(f.chunks.len()));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert!(ranges.iter().all(|r| !r.is_empty() && r.len() <= MAX_GROUP as usize));
        assert!(ranges.len() > 4, "{} chunks in {} groups", f.chunks.len(), ranges.len());
        // A list of identical chunks that never end a group is cut at MAX_GROUP.
        let mut hash = ContentHash::of(b"x");
        hash.0[0] = 1;
        let same: Vec<ChunkInfo> = (0..300).map(|i| ChunkInfo { offset: i * 10, len: 10, hash }).collect();
        assert_eq!(group_ranges(&same), vec![0..128, 128..256, 256..300]);
        assert!(group_ranges(&[]).is_empty());
    }

    #[test]
    fn an_overwrite_fetches_one_group_and_rebuilds_the_exact_list() {
        let data = det_bytes(2, 8 * MIB);
        let mut edited = data.clone();
        edited[4 * MIB] ^= 0x55;
        let (old, new) = (chunk_bytes(&data, params()), chunk_bytes(&edited, params()));
        let (list, fetched) = rebuild(&old.chunks, &new.chunks, new.size);
        assert_eq!(chunk_list_hash(&list), new.chunks_hash);
        assert!(fetched <= 2 * MAX_GROUP as u64 && fetched < new.chunks.len() as u64 / 4, "fetched {fetched}");
    }

    #[test]
    fn an_insertion_shifting_every_offset_fetches_only_around_it() {
        let data = det_bytes(3, 8 * MIB);
        let mut edited = data.clone();
        edited.splice(MIB..MIB, det_bytes(9, 3000));
        let (old, new) = (chunk_bytes(&data, params()), chunk_bytes(&edited, params()));
        let (list, fetched) = rebuild(&old.chunks, &new.chunks, new.size);
        assert_eq!(list, new.chunks);
        assert!(fetched < new.chunks.len() as u64 / 4, "fetched {fetched} of {}", new.chunks.len());
    }

    #[test]
    fn an_unrelated_base_fetches_everything_and_an_empty_list_works() {
        let (old, new) = (chunk_bytes(&det_bytes(4, MIB), params()), chunk_bytes(&det_bytes(5, MIB), params()));
        let (list, fetched) = rebuild(&old.chunks, &new.chunks, new.size);
        assert_eq!((list, fetched), (new.chunks.clone(), new.chunks.len() as u64));
        let (list, fetched) = rebuild(&old.chunks, &[], 0);
        assert_eq!((list.len(), fetched), (0, 0));
    }

    #[test]
    fn fetch_ranges_fit_a_page() {
        let hash = |i: u64| {
            let mut h = ContentHash::of(&i.to_le_bytes());
            h.0[0] = if i % 2 == 1 { 0 } else { 1 }; // groups of two chunks
            h
        };
        let n = u64::from(CHUNK_LIST_PAGE) + 10;
        let new: Vec<ChunkInfo> = (0..n).map(|i| ChunkInfo { offset: i * 1024, len: 1024, hash: hash(i) }).collect();
        let plan = ListPlan::new(&summarize(ContentHash::of(b"n"), &new).unwrap(), &[]);
        let fetches: Vec<_> = plan.fetches().collect();
        assert_eq!(fetches, vec![(0, CHUNK_LIST_PAGE), (u64::from(CHUNK_LIST_PAGE), 10)]);
    }

    #[test]
    fn hostile_answers_are_refused() {
        let f = chunk_bytes(&det_bytes(6, 2 * MIB), params());
        let summary = summarize(ContentHash::of(b"f"), &f.chunks).unwrap();
        let plan = ListPlan::new(&summary, &[]);
        let fetched: Vec<Vec<ChunkInfo>> =
            plan.fetches().map(|(first, count)| f.chunks[first as usize..][..count as usize].to_vec()).collect();
        assert_eq!(plan.rebuild(&[], &fetched, f.size).unwrap(), f.chunks);
        // Missing ranges, a short range, a size the chunks do not tile.
        assert!(matches!(plan.rebuild(&[], &fetched[1..], f.size), Err(RebuildError::WrongRanges { .. })));
        let mut short = fetched.clone();
        short[0].pop();
        assert!(matches!(plan.rebuild(&[], &short, f.size), Err(RebuildError::WrongCount { .. })));
        assert_eq!(plan.rebuild(&[], &fetched, f.size + 1), Err(RebuildError::BadTiling { size: f.size + 1 }));
        assert_eq!(plan.rebuild(&[], &fetched, f.size - 1), Err(RebuildError::BadTiling { size: f.size - 1 }));
        let mut empty = fetched.clone();
        empty[0][0].len = 0;
        assert!(plan.rebuild(&[], &empty, f.size).is_err());
        // A summary claiming more chunks than the size allows builds nothing.
        let huge = ListSummary {
            content: summary.content,
            groups: vec![GroupSummary { count: MAX_GROUP, digest: GroupDigest([0; 16]) }; 1000],
        };
        let plan = ListPlan::new(&huge, &[]);
        assert!(matches!(plan.rebuild(&[], &[], 4096), Err(RebuildError::ImpossibleTotal { .. })));
        // Validation: empty or oversize groups.
        for count in [0, MAX_GROUP + 1] {
            let bad = ListSummary {
                content: summary.content,
                groups: vec![GroupSummary { count, digest: GroupDigest([0; 16]) }],
            };
            assert!(bad.validate().is_err());
        }
    }
}
