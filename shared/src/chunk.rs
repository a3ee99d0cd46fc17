//! Content-defined chunking (FastCDC) and hashing in one streaming pass.
//!
//! A file is cut into chunks whose boundaries depend on the content, with
//! average size = the tracker's piece length, minimum avg/4 and maximum
//! avg*4, so inserting bytes in a large file changes only the chunks around
//! the insertion. One pass over a `Read` yields the chunk list
//! (`[(offset, len, blake3)]`), the whole-file blake3 and the blake3 of the
//! chunk list; nothing but the current chunk is held in memory.
//!
//! This module does no file-system work of its own (no stat, no retry on a
//! file that changes while read): callers own that.
//!
//! Two finer views serve small edits of big files: [`summary`] names groups
//! of a chunk list so a receiver fetches only the part of the list that
//! changed, and [`parts`] cuts one chunk finer so it fetches only the part
//! of a chunk that changed.

pub mod parts;
pub mod summary;

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::id::ContentHash;
use crate::limits::{MAX_PIECE_LEN, MIN_PIECE_LEN};

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Offset of the chunk in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// blake3 of the chunk bytes.
    pub hash: ContentHash,
}

/// FastCDC size parameters derived from a piece length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Minimum chunk size (avg / 4).
    pub min: u32,
    /// Average chunk size (the piece length).
    pub avg: u32,
    /// Maximum chunk size (avg * 4).
    pub max: u32,
}

impl ChunkParams {
    /// Parameters for `piece_len`, clamped to the protocol's limits.
    pub fn for_piece_len(piece_len: u32) -> Self {
        let avg = piece_len.clamp(MIN_PIECE_LEN, MAX_PIECE_LEN);
        ChunkParams { min: avg / 4, avg, max: avg * 4 }
    }
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self::for_piece_len(crate::limits::DEFAULT_PIECE_LEN)
    }
}

/// The result of chunking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedFile {
    /// Total bytes read.
    pub size: u64,
    /// blake3 of all bytes.
    pub content: ContentHash,
    /// The chunks in file order.
    pub chunks: Vec<ChunkInfo>,
    /// blake3 of the chunk list ([`chunk_list_hash`]).
    pub chunks_hash: ContentHash,
}

/// The one chunk of a file of `size` bytes (1 to `u32::MAX`) that is a
/// single chunk: offset 0, the whole size, the file's `content` hash.
/// `None` for an empty file (no chunks) or one too long for one chunk.
/// A peer derives a small file's chunk list from its record with it, and
/// the tracker the list's hash.
pub fn whole_file_chunk(size: u64, content: ContentHash) -> Option<ChunkInfo> {
    let len = u32::try_from(size).ok().filter(|len| *len > 0)?;
    Some(ChunkInfo { offset: 0, len, hash: content })
}

/// The chunk-list hash of a file that is one chunk ([`whole_file_chunk`]).
pub fn whole_file_list_hash(size: u64, content: ContentHash) -> Option<ContentHash> {
    whole_file_chunk(size, content).map(|chunk| chunk_list_hash(&[chunk]))
}

/// True when `chunks` is one chunk, at offset 0, whose hash is `content`,
/// the whole file's hash: that chunk is the whole file (its bytes hash to
/// the file's), so a file verified chunk by chunk was verified whole, and
/// the file is found by its content wherever its chunk is looked for.
pub fn is_one_whole_chunk(chunks: &[ChunkInfo], content: &ContentHash) -> bool {
    matches!(chunks, [only] if only.offset == 0 && only.hash == *content)
}

/// Hash of a chunk list: blake3 over `offset (u64 LE) || len (u32 LE) ||
/// hash (32 bytes)` of every chunk in order. Independent of the wire
/// encoding, so it is stable across format changes.
pub fn chunk_list_hash(chunks: &[ChunkInfo]) -> ContentHash {
    let mut hasher = blake3::Hasher::new();
    for chunk in chunks {
        hasher.update(&chunk.offset.to_le_bytes());
        hasher.update(&chunk.len.to_le_bytes());
        hasher.update(&chunk.hash.0);
    }
    hasher.finalize().into()
}

/// True when `chunks` tile `[0, size)` exactly, in order, each within the
/// size limits (the last one may be shorter than the minimum).
pub fn chunk_list_is_well_formed(chunks: &[ChunkInfo], size: u64, params: ChunkParams) -> bool {
    let mut expected = 0u64;
    for chunk in chunks {
        if chunk.offset != expected || chunk.len == 0 || chunk.len > params.max {
            return false;
        }
        expected += u64::from(chunk.len);
    }
    expected == size
}

/// Chunks and hashes everything `reader` yields, in one pass.
pub fn chunk_reader<R: Read>(reader: R, params: ChunkParams) -> std::io::Result<ChunkedFile> {
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let stream = fastcdc::v2020::StreamCDC::new(reader, params.min, params.avg, params.max);
    for item in stream {
        let chunk = item.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        whole.update(&chunk.data);
        let len = u32::try_from(chunk.length).map_err(|_| std::io::Error::other("chunk longer than u32"))?;
        chunks.push(ChunkInfo { offset: chunk.offset, len, hash: ContentHash::of(&chunk.data) });
        size += u64::from(len);
    }
    let chunks_hash = chunk_list_hash(&chunks);
    Ok(ChunkedFile { size, content: whole.finalize().into(), chunks, chunks_hash })
}

/// Chunks an in-memory buffer (the same cut points as [`chunk_reader`],
/// without its buffer of `params.max` bytes).
pub fn chunk_bytes(bytes: &[u8], params: ChunkParams) -> ChunkedFile {
    let chunks: Vec<ChunkInfo> = fastcdc::v2020::FastCDC::new(bytes, params.min, params.avg, params.max)
        .map(|c| {
            let data = &bytes[c.offset..c.offset + c.length];
            // A chunk is at most `params.max` (a u32) long.
            ChunkInfo { offset: c.offset as u64, len: c.length as u32, hash: ContentHash::of(data) }
        })
        .collect();
    let chunks_hash = chunk_list_hash(&chunks);
    ChunkedFile { size: bytes.len() as u64, content: ContentHash::of(bytes), chunks, chunks_hash }
}

/// [`chunk_reader`] for a source expected to hold `expected` bytes: one
/// that fits in a chunk buffer is read whole into a buffer of its own size
/// and chunked in memory (most files are small; the streaming chunker
/// allocates `params.max` bytes whatever the size). A source longer than
/// expected is still read to its end, by the streaming chunker.
pub fn chunk_reader_sized<R: Read>(mut reader: R, params: ChunkParams, expected: u64) -> std::io::Result<ChunkedFile> {
    let max = u64::from(params.max);
    if expected > max {
        return chunk_reader(reader, params);
    }
    let mut head = Vec::with_capacity(expected as usize + 1);
    (&mut reader).take(max + 1).read_to_end(&mut head)?;
    if head.len() as u64 <= max {
        return Ok(chunk_bytes(&head, params));
    }
    chunk_reader(std::io::Cursor::new(head).chain(reader), params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::det_bytes;

    /// Boundary sizes around the default parameters: empty, one byte, just
    /// under/at the minimum, the average, the maximum and one past it, and a
    /// size spanning many chunks.
    const KIB: usize = 1024;
    const INTERESTING_SIZES: [usize; 9] =
        [0, 1, 64 * KIB - 1, 64 * KIB, 256 * KIB, 1024 * KIB, 1024 * KIB + 1, 3 * 1024 * KIB + 7, 9 * 1024 * KIB];

    #[test]
    fn chunk_lists_tile_the_file_and_hash_correctly() {
        let params = ChunkParams::default();
        for (i, size) in INTERESTING_SIZES.into_iter().enumerate() {
            let data = det_bytes(i as u64, size);
            let f = chunk_bytes(&data, params);
            assert_eq!(f.size, size as u64);
            assert_eq!(f.content, ContentHash::of(&data));
            assert!(chunk_list_is_well_formed(&f.chunks, f.size, params), "size {size}");
            assert_eq!(f.chunks_hash, chunk_list_hash(&f.chunks));
            for c in &f.chunks {
                let bytes = &data[c.offset as usize..c.offset as usize + c.len as usize];
                assert_eq!(c.hash, ContentHash::of(bytes));
                assert!(c.len <= params.max);
            }
            if size == 0 {
                assert!(f.chunks.is_empty());
            }
        }
    }

    #[test]
    fn in_memory_sized_and_streaming_chunking_agree() {
        let params = ChunkParams::default();
        for (i, size) in INTERESTING_SIZES.into_iter().enumerate() {
            let data = det_bytes(100 + i as u64, size);
            let streamed = chunk_reader(data.as_slice(), params).unwrap();
            assert_eq!(chunk_bytes(&data, params), streamed, "size {size}");
            // Right, too small and too large an expectation: the same result.
            for expected in [size as u64, 0, size as u64 / 2, size as u64 + 5] {
                let sized = chunk_reader_sized(data.as_slice(), params, expected).unwrap();
                assert_eq!(sized, streamed, "size {size}, expected {expected}");
            }
        }
    }

    #[test]
    fn chunking_is_deterministic() {
        let data = det_bytes(42, 5 * 1024 * KIB);
        let params = ChunkParams::default();
        assert_eq!(chunk_bytes(&data, params), chunk_bytes(&data, params));
    }

    #[test]
    fn one_byte_insertion_changes_at_most_three_chunks() {
        let params = ChunkParams::default();
        let data = det_bytes(7, 8 * 1024 * KIB);
        let mut edited = data.clone();
        edited.insert(data.len() / 2, 0x5A);
        let before = chunk_bytes(&data, params);
        let after = chunk_bytes(&edited, params);
        let old: std::collections::HashSet<_> = before.chunks.iter().map(|c| c.hash).collect();
        let changed = after.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(before.chunks.len() >= 8, "too few chunks to mean anything");
        assert!(changed <= 3, "{changed} chunks changed");
    }

    #[test]
    fn malformed_lists_are_detected() {
        let params = ChunkParams::default();
        let f = chunk_bytes(&det_bytes(1, 2 * 1024 * KIB), params);
        assert!(!chunk_list_is_well_formed(&f.chunks, f.size + 1, params));
        let mut gap = f.chunks.clone();
        gap[1].offset += 1;
        assert!(!chunk_list_is_well_formed(&gap, f.size, params));
    }

    #[test]
    fn piece_len_is_clamped() {
        assert_eq!(ChunkParams::for_piece_len(1).avg, MIN_PIECE_LEN);
        assert_eq!(ChunkParams::for_piece_len(u32::MAX).avg, MAX_PIECE_LEN);
    }
}
