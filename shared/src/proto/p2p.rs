//! P2P: the peer <-> peer piece protocol, direct TCP, pipelined.
//!
//! A downloader opens one encrypted connection per holder and keeps several
//! requests in flight on it. The server answers **in request order**, one
//! response per request, so the client matches responses to requests by
//! position; every response also echoes what it answers (`content` or
//! `hash`) so a mismatch is detected.
//!
//! # GetChunkList (paged)
//! `path` and `content` name a version; `first` is the index of the first
//! chunk wanted and `max` (1 to [`CHUNK_LIST_PAGE`]) how many at most. The
//! holder answers with one page of the chunk list of that content,
//! [`P2pResponse::ChunkList`] carrying a [`ChunkListPage`] (the whole list's
//! `total` length, the page's `first` index, up to `max` chunks; cut by
//! [`ChunkListPage::of`]), or `NotAvailable` when it lacks that content or
//! `first` is past the end. A page is empty only at the end of the list
//! (the one page of an empty file), so every page makes progress. Lists of
//! any length up to [`MAX_CHUNKS_PER_FILE`] (a 1 TiB file at the smallest
//! piece length) thus travel in frames of about 3 MiB at most, and page
//! requests pipeline like chunk requests.
//!
//! The client collects pages with a [`ChunkListAssembler`], which checks
//! every page against the pages before and against the file size (same
//! content and total, no gap or overlap, chunks tiling `[0, size)`), and
//! then checks the whole list's hash against the record's `chunks` field.
//! A failed check is holder-fatal (see [`crate::error`]).
//!
//! # GetChunk
//! Asks for `len` bytes at `offset` of the file whose content is `content`,
//! which must hash to `hash`. The holder reads them, checks the hash itself
//! (a file changed since indexing answers `NotAvailable`) and answers
//! [`P2pResponse::Chunk`]. `Busy` means its upload slots are full: the
//! client moves that chunk to another holder (the brief's BUSY/READY).
//!
//! # Small edits of big files (protocol 7)
//! A receiver that has an older version of the file (its *base*) does not
//! need the whole new chunk list, nor the whole of a changed chunk:
//! - `GetChunkListSummary` asks for the list's content-defined groups and
//!   their digests ([`ListSummary`], [`crate::chunk::summary`]); the
//!   receiver fetches with `GetChunkList` only the ranges of groups its
//!   base list lacks, rebuilds the list and checks its hash against the
//!   record as always. `NotAvailable` (no such content, or a list too long
//!   for a summary) sends it back to fetching the list whole.
//! - `GetChunkParts` asks for the finer cut of one chunk
//!   ([`crate::chunk::parts`]): the receiver reads the parts it has
//!   locally, asks for each missing one with `GetPart` (a byte range of the
//!   chunk, verified against the part's hash by both sides) and writes the
//!   chunk only once it hashes to the chunk's hash.

use serde::{Deserialize, Serialize};

use super::{ProtocolError, check_len};
use crate::chunk::ChunkInfo;
use crate::chunk::parts::{MAX_PARTS, PART_MAX, PartInfo};
use crate::chunk::summary::ListSummary;
use crate::codec::{self, CodecError};
use crate::id::ContentHash;
use crate::limits::{CHUNK_LIST_PAGE, MAX_CHUNK_LEN, MAX_CHUNKS_PER_FILE, MAX_FRAME_LEN, MIN_CHUNK_LEN};
use crate::path::RelPath;

/// Upper bound of one encoded [`ChunkInfo`]: offset varint (9), length
/// varint (5), hash (32).
const MAX_ENCODED_CHUNK_INFO: usize = 9 + 5 + 32;

/// Upper bound of the rest of an encoded `ChunkList` response: variant,
/// content, total, first and the list length.
const MAX_PAGE_OVERHEAD: usize = 1 + 32 + 9 + 9 + 9;

const _: () = assert!(
    MAX_PAGE_OVERHEAD + CHUNK_LIST_PAGE as usize * MAX_ENCODED_CHUNK_INFO <= MAX_FRAME_LEN / 4,
    "a full chunk-list page must fit a frame with room to spare"
);

/// Requests a downloader sends to a holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum P2pRequest {
    /// One page of the chunk list of a version.
    GetChunkList {
        /// The path (a hint for the holder's lookup).
        path: RelPath,
        /// The whole-file hash of the version.
        content: ContentHash,
        /// Index of the first chunk wanted.
        first: u64,
        /// Most chunks wanted: 1 to [`CHUNK_LIST_PAGE`].
        max: u32,
    },
    /// One chunk.
    GetChunk {
        /// The whole-file hash the chunk belongs to.
        content: ContentHash,
        /// Offset of the chunk in that file.
        offset: u64,
        /// Length of the chunk.
        len: u32,
        /// blake3 of the chunk bytes.
        hash: ContentHash,
    },
    /// The summary of the chunk list of a version (protocol 7).
    GetChunkListSummary {
        /// The path (a hint for the holder's lookup).
        path: RelPath,
        /// The whole-file hash of the version.
        content: ContentHash,
    },
    /// The parts of one chunk (protocol 7).
    GetChunkParts {
        /// The whole-file hash the chunk belongs to.
        content: ContentHash,
        /// The chunk, as the chunk list names it.
        chunk: ChunkInfo,
    },
    /// One part of a chunk: `len` bytes at `at` inside `chunk`, hashing to
    /// `hash` (protocol 7). Answered with [`P2pResponse::Chunk`].
    GetPart {
        /// The whole-file hash the chunk belongs to.
        content: ContentHash,
        /// The chunk, as the chunk list names it.
        chunk: ChunkInfo,
        /// Offset of the part inside the chunk.
        at: u32,
        /// Length of the part: 1 to [`PART_MAX`].
        len: u32,
        /// blake3 of the part's bytes.
        hash: ContentHash,
    },
}

/// Responses a holder sends, one per request, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum P2pResponse {
    /// One page of the chunk list of a content.
    ChunkList(ChunkListPage),
    /// The bytes of one chunk.
    Chunk {
        /// The chunk hash that was asked for.
        hash: ContentHash,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The holder does not have that (any more).
    NotAvailable,
    /// Upload slots full; ask another holder.
    Busy,
    /// The summary of a chunk list: the answer to `GetChunkListSummary`.
    ChunkListSummary(ListSummary),
    /// The parts of a chunk: the answer to `GetChunkParts`.
    ChunkParts {
        /// The chunk hash that was asked for.
        hash: ContentHash,
        /// The parts in order (bounded while decoding).
        #[serde(deserialize_with = "chunk_parts")]
        parts: Vec<PartInfo>,
    },
}

fn chunk_parts<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<PartInfo>, D::Error> {
    crate::codec::bounded_vec(deserializer, MAX_PARTS, "chunk parts")
}

/// One page of a chunk list: the answer to `GetChunkList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListPage {
    /// The whole-file hash the list describes.
    pub content: ContentHash,
    /// Number of chunks in the whole list.
    pub total: u64,
    /// Index of `chunks[0]` in the whole list.
    pub first: u64,
    /// At most [`CHUNK_LIST_PAGE`] chunks, in file order (bounded while
    /// decoding).
    #[serde(deserialize_with = "page_chunks")]
    pub chunks: Vec<ChunkInfo>,
}

fn page_chunks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<ChunkInfo>, D::Error> {
    crate::codec::bounded_vec(deserializer, CHUNK_LIST_PAGE as usize, "chunk list page")
}

impl ChunkListPage {
    /// The page of `list` (the whole chunk list of `content`) that
    /// `GetChunkList { first, max, .. }` asks for, with `max` clamped to
    /// 1..=[`CHUNK_LIST_PAGE`]. `None` when `first` is past the end of the
    /// list: answer `NotAvailable`.
    pub fn of(content: ContentHash, list: &[ChunkInfo], first: u64, max: u32) -> Option<Self> {
        let start = usize::try_from(first).ok().filter(|start| *start <= list.len())?;
        let len = (max.clamp(1, CHUNK_LIST_PAGE) as usize).min(list.len() - start);
        Some(ChunkListPage { content, total: list.len() as u64, first, chunks: list[start..start + len].to_vec() })
    }

    /// Index one past the page's last chunk.
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.chunks.len() as u64)
    }

    /// Checks a page received from the network on its own (the
    /// [`ChunkListAssembler`] checks it against the pages before).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_len("chunk list page", self.chunks.len(), CHUNK_LIST_PAGE as usize)?;
        if self.total > MAX_CHUNKS_PER_FILE {
            return Err(ProtocolError::Invalid("chunk list: total above MAX_CHUNKS_PER_FILE"));
        }
        match self.first.checked_add(self.chunks.len() as u64) {
            Some(end) if end <= self.total => {}
            _ => return Err(ProtocolError::Invalid("chunk list: page runs past the total")),
        }
        if self.chunks.is_empty() && self.first < self.total {
            return Err(ProtocolError::Invalid("chunk list: empty page before the end of the list"));
        }
        Ok(())
    }
}

impl P2pRequest {
    /// Checks a request received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            P2pRequest::GetChunkList { max, .. } if *max == 0 || *max > CHUNK_LIST_PAGE => {
                Err(ProtocolError::Invalid("get chunk list: page size outside 1..=CHUNK_LIST_PAGE"))
            }
            P2pRequest::GetChunkList { first, .. } if *first > MAX_CHUNKS_PER_FILE => {
                Err(ProtocolError::Invalid("get chunk list: first index above MAX_CHUNKS_PER_FILE"))
            }
            P2pRequest::GetChunk { len, .. } if *len > MAX_CHUNK_LEN => {
                Err(ProtocolError::Invalid("get chunk: length above the chunk limit"))
            }
            P2pRequest::GetChunkParts { chunk, .. } | P2pRequest::GetPart { chunk, .. }
                if chunk.len > MAX_CHUNK_LEN =>
            {
                Err(ProtocolError::Invalid("chunk parts: chunk length above the chunk limit"))
            }
            P2pRequest::GetPart { chunk, at, len, .. }
                if *len == 0 || *len > PART_MAX || u64::from(*at) + u64::from(*len) > u64::from(chunk.len) =>
            {
                Err(ProtocolError::Invalid("get part: range outside the chunk or longer than PART_MAX"))
            }
            _ => Ok(()),
        }
    }
}

impl P2pResponse {
    /// The encoding of `Chunk { hash, bytes }` up to the bytes, for a
    /// `bytes` of `len` bytes: the whole encoding is this head followed by
    /// the bytes themselves, so a server can send a chunk without copying it
    /// into an encoded frame first
    /// ([`crate::channel::ChannelWriter::send_frame_parts`]).
    pub fn chunk_head(hash: ContentHash, len: usize) -> Result<Vec<u8>, CodecError> {
        let mut head = codec::encode(&P2pResponse::Chunk { hash, bytes: Vec::new() })?;
        // An empty byte string ends the encoding as its length, 0 (one
        // byte); a length is encoded as a u64 would be.
        debug_assert_eq!(head.last(), Some(&0));
        head.pop();
        head.extend_from_slice(&codec::encode(&(len as u64))?);
        Ok(head)
    }

    /// Checks a response received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            P2pResponse::ChunkList(page) => page.validate(),
            P2pResponse::Chunk { bytes, .. } => check_len("chunk bytes", bytes.len(), MAX_CHUNK_LEN as usize),
            P2pResponse::ChunkListSummary(summary) => summary.validate(),
            P2pResponse::ChunkParts { parts, .. } => {
                check_len("chunk parts", parts.len(), MAX_PARTS)?;
                if parts.iter().any(|p| p.len == 0 || p.len > PART_MAX) {
                    return Err(ProtocolError::Invalid("chunk parts: a part outside 1..=PART_MAX bytes"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Why a chunk list assembled from pages was refused. Every variant means
/// the holder lied or is broken: drop it for this download.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkListError {
    /// The page fails [`ChunkListPage::validate`].
    #[error("invalid chunk list page: {0}")]
    Invalid(#[from] ProtocolError),
    /// The page describes another content than the one asked for.
    #[error("chunk list page for content {got}, expected {expected}")]
    WrongContent {
        /// The content asked for.
        expected: ContentHash,
        /// The content the page names.
        got: ContentHash,
    },
    /// A file of this size cannot have this many chunks at any piece length.
    #[error("a chunk list of {total} chunks cannot describe a file of {size} bytes")]
    ImpossibleTotal {
        /// The claimed number of chunks.
        total: u64,
        /// The file size from the record.
        size: u64,
    },
    /// A later page claims another total than the first one.
    #[error("chunk list total changed from {before} to {now} between pages")]
    TotalChanged {
        /// The total of the first page.
        before: u64,
        /// The total of this page.
        now: u64,
    },
    /// The page does not start where the list collected so far ends.
    #[error("chunk list page starts at index {got}, expected {expected}")]
    OutOfOrder {
        /// The next index wanted.
        expected: u64,
        /// The page's first index.
        got: u64,
    },
    /// A chunk leaves a gap or overlap, is empty, too long, or runs past
    /// the end of the file.
    #[error("chunk {index} (offset {offset}, {len} bytes) does not continue the list at offset {expected} of {size}")]
    BadChunk {
        /// Its index in the whole list.
        index: u64,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
        /// Where it should start.
        expected: u64,
        /// The file size.
        size: u64,
    },
    /// The complete list covers another number of bytes than the file has.
    #[error("chunk list covers {covered} bytes of a {size}-byte file")]
    SizeMismatch {
        /// Bytes covered by the chunks.
        covered: u64,
        /// The file size.
        size: u64,
    },
    /// [`ChunkListAssembler::finish`] before the last page.
    #[error("chunk list incomplete: {have} chunks of {total:?}")]
    Incomplete {
        /// Chunks collected.
        have: u64,
        /// The total, if any page arrived.
        total: Option<u64>,
    },
}

/// Collects the pages of one chunk list, checking each as it arrives.
///
/// Pure: it builds requests and accepts pages; the caller does the I/O and,
/// once [`Self::finish`] returns the list, compares its
/// [`chunk_list_hash`](crate::chunk::chunk_list_hash) with the record's
/// `chunks` field. Memory grows with the pages received, never with the
/// `total` a holder claims, and `total` is bounded by the file size before
/// anything is collected.
#[derive(Debug, Clone)]
pub struct ChunkListAssembler {
    content: ContentHash,
    /// The file size from the record.
    size: u64,
    /// The total from the first page.
    total: Option<u64>,
    chunks: Vec<ChunkInfo>,
    /// Where the next chunk must start.
    next_offset: u64,
}

impl ChunkListAssembler {
    /// Collects the chunk list of `content`, a file of `size` bytes (both
    /// from the record being downloaded).
    pub fn new(content: ContentHash, size: u64) -> Self {
        ChunkListAssembler { content, size, total: None, chunks: Vec::new(), next_offset: 0 }
    }

    /// Index of the next chunk wanted (the number collected so far).
    pub fn next_index(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// True once every page arrived.
    pub fn is_complete(&self) -> bool {
        self.total == Some(self.next_index())
    }

    /// The request for the next page (a full page), `None` once complete.
    /// Requests for later pages may be sent before earlier pages arrive as
    /// long as pages are pushed in order; this asks for the page after
    /// those already pushed.
    pub fn next_request(&self, path: &RelPath) -> Option<P2pRequest> {
        (!self.is_complete()).then(|| P2pRequest::GetChunkList {
            path: path.clone(),
            content: self.content,
            first: self.next_index(),
            max: CHUNK_LIST_PAGE,
        })
    }

    /// Adds the next page, in order.
    pub fn push(&mut self, page: ChunkListPage) -> Result<(), ChunkListError> {
        page.validate()?;
        if page.content != self.content {
            return Err(ChunkListError::WrongContent { expected: self.content, got: page.content });
        }
        match self.total {
            Some(before) if before != page.total => {
                return Err(ChunkListError::TotalChanged { before, now: page.total });
            }
            Some(_) => {}
            None => {
                // Every chunk but the last is at least MIN_CHUNK_LEN and at
                // most MAX_CHUNK_LEN long, whatever the piece length.
                let most = self.size.div_ceil(u64::from(MIN_CHUNK_LEN));
                let least = self.size.div_ceil(u64::from(MAX_CHUNK_LEN));
                if !(least..=most).contains(&page.total) {
                    return Err(ChunkListError::ImpossibleTotal { total: page.total, size: self.size });
                }
                self.total = Some(page.total);
            }
        }
        if page.first != self.next_index() {
            return Err(ChunkListError::OutOfOrder { expected: self.next_index(), got: page.first });
        }
        let mut offset = self.next_offset;
        for (i, chunk) in page.chunks.iter().enumerate() {
            let end = offset.checked_add(u64::from(chunk.len)).filter(|end| *end <= self.size);
            if chunk.offset != offset || chunk.len == 0 || chunk.len > MAX_CHUNK_LEN || end.is_none() {
                return Err(ChunkListError::BadChunk {
                    index: page.first + i as u64,
                    offset: chunk.offset,
                    len: chunk.len,
                    expected: offset,
                    size: self.size,
                });
            }
            offset = end.unwrap_or(offset);
        }
        let complete = page.end() == page.total;
        if complete && offset != self.size {
            return Err(ChunkListError::SizeMismatch { covered: offset, size: self.size });
        }
        self.next_offset = offset;
        self.chunks.extend_from_slice(&page.chunks);
        Ok(())
    }

    /// The whole list, once complete. Its hash is the caller's to check.
    pub fn finish(self) -> Result<Vec<ChunkInfo>, ChunkListError> {
        if !self.is_complete() {
            return Err(ChunkListError::Incomplete { have: self.next_index(), total: self.total });
        }
        Ok(self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_list_hash;
    use crate::chunk::summary::{GroupDigest, GroupSummary, MAX_SUMMARY_GROUPS};
    use crate::codec::{FrameCodec, decode, encode};
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    fn hash(n: u64) -> ContentHash {
        ContentHash::of(&n.to_le_bytes())
    }

    #[test]
    fn a_chunk_head_followed_by_the_bytes_is_the_chunk_encoded() {
        // Lengths around every varint width bincode uses (1, 3, 5 bytes).
        for len in [0, 1, 250, 251, 252, 65_535, 65_536, 262_144, MAX_CHUNK_LEN as usize] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut joined = P2pResponse::chunk_head(hash(7), len).unwrap();
            joined.extend_from_slice(&bytes);
            let whole = P2pResponse::Chunk { hash: hash(7), bytes };
            assert_eq!(joined, encode(&whole).unwrap(), "len {len}");
            assert_eq!(decode::<P2pResponse>(&joined).unwrap(), whole);
        }
    }

    /// `n` chunks of `len` bytes each.
    fn list(n: u64, len: u32) -> Vec<ChunkInfo> {
        (0..n).map(|i| ChunkInfo { offset: i * u64::from(len), len, hash: hash(i) }).collect()
    }

    fn page(total: u64, first: u64, chunks: Vec<ChunkInfo>) -> ChunkListPage {
        ChunkListPage { content: ContentHash::of(b"c"), total, first, chunks }
    }

    fn requests() -> Vec<P2pRequest> {
        vec![
            P2pRequest::GetChunkList {
                path: RelPath::new("a").unwrap(),
                content: ContentHash::of(b"a"),
                first: 0,
                max: CHUNK_LIST_PAGE,
            },
            P2pRequest::GetChunk { content: ContentHash::of(b"a"), offset: 5, len: 9, hash: ContentHash::of(b"c") },
            P2pRequest::GetChunkListSummary { path: RelPath::new("a").unwrap(), content: ContentHash::of(b"a") },
            P2pRequest::GetChunkParts { content: ContentHash::of(b"a"), chunk: a_chunk() },
            P2pRequest::GetPart { content: ContentHash::of(b"a"), chunk: a_chunk(), at: 2, len: 3, hash: hash(1) },
        ]
    }

    fn a_chunk() -> ChunkInfo {
        ChunkInfo { offset: 10, len: 5, hash: ContentHash::of(b"abcde") }
    }

    fn responses() -> Vec<P2pResponse> {
        vec![
            P2pResponse::ChunkList(ChunkListPage {
                content: ContentHash::of(b"a"),
                total: 1,
                first: 0,
                chunks: vec![ChunkInfo { offset: 0, len: 3, hash: ContentHash::of(b"abc") }],
            }),
            P2pResponse::Chunk { hash: ContentHash::of(b"abc"), bytes: b"abc".to_vec() },
            P2pResponse::NotAvailable,
            P2pResponse::Busy,
            P2pResponse::ChunkListSummary(ListSummary {
                content: ContentHash::of(b"a"),
                groups: vec![GroupSummary { count: 3, digest: GroupDigest([7; 16]) }],
            }),
            P2pResponse::ChunkParts { hash: hash(2), parts: vec![PartInfo { len: 5, hash: hash(3) }] },
        ]
    }

    #[test]
    fn every_message_round_trips_with_pinned_variant() {
        for (i, msg) in requests().into_iter().enumerate() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(bytes[0] as usize, i);
            assert_eq!(decode::<P2pRequest>(&bytes).unwrap(), msg);
            msg.validate().unwrap();
        }
        for (i, msg) in responses().into_iter().enumerate() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(bytes[0] as usize, i);
            assert_eq!(decode::<P2pResponse>(&bytes).unwrap(), msg);
            msg.validate().unwrap();
        }
        assert_eq!(encode(&P2pResponse::Busy).unwrap(), [3]);
    }

    #[test]
    fn paged_chunk_list_bytes_are_pinned() {
        // Protocol 2: GetChunkList = variant 0, path, content, first, max (varints).
        let req = P2pRequest::GetChunkList {
            path: RelPath::new("a").unwrap(),
            content: ContentHash([0xAA; 32]),
            first: 5,
            max: CHUNK_LIST_PAGE,
        };
        let want = [&[0u8, 1, b'a'][..], &[0xAA; 32], &[5], &[252, 0, 0, 1, 0]].concat();
        assert_eq!(encode(&req).unwrap(), want);
        // ChunkList = variant 0, content, total, first, then the chunks.
        let resp = P2pResponse::ChunkList(ChunkListPage {
            content: ContentHash([0xBB; 32]),
            total: 300,
            first: 2,
            chunks: vec![ChunkInfo { offset: 7, len: 3, hash: ContentHash([0xCC; 32]) }],
        });
        let want = [&[0u8][..], &[0xBB; 32], &[251, 0x2C, 0x01], &[2], &[1, 7, 3], &[0xCC; 32]].concat();
        assert_eq!(encode(&resp).unwrap(), want);
    }

    #[test]
    fn summary_and_parts_bytes_are_pinned() {
        // Protocol 7: GetChunkListSummary = variant 2, path, content.
        let req =
            P2pRequest::GetChunkListSummary { path: RelPath::new("a").unwrap(), content: ContentHash([0xAA; 32]) };
        assert_eq!(encode(&req).unwrap(), [&[2u8, 1, b'a'][..], &[0xAA; 32]].concat());
        // GetPart = variant 4, content, chunk (offset, len, hash), at, len, hash.
        let chunk = ChunkInfo { offset: 1, len: 9, hash: ContentHash([0xCC; 32]) };
        let req = P2pRequest::GetPart {
            content: ContentHash([0xAA; 32]),
            chunk,
            at: 4,
            len: 5,
            hash: ContentHash([0xDD; 32]),
        };
        let want = [&[4u8][..], &[0xAA; 32], &[1, 9], &[0xCC; 32], &[4, 5], &[0xDD; 32]].concat();
        assert_eq!(encode(&req).unwrap(), want);
        // ChunkListSummary = variant 4, content, groups (count, 16-byte digest).
        let resp = P2pResponse::ChunkListSummary(ListSummary {
            content: ContentHash([0xBB; 32]),
            groups: vec![GroupSummary { count: 2, digest: GroupDigest([0xEE; 16]) }],
        });
        assert_eq!(encode(&resp).unwrap(), [&[4u8][..], &[0xBB; 32], &[1, 2], &[0xEE; 16]].concat());
    }

    #[test]
    fn part_requests_and_answers_are_bounded() {
        let part = |at, len| P2pRequest::GetPart {
            content: ContentHash::of(b"a"),
            chunk: ChunkInfo { offset: 0, len: 100_000, hash: hash(0) },
            at,
            len,
            hash: hash(1),
        };
        assert!(part(0, PART_MAX).validate().is_ok());
        assert!(part(100_000 - 10, 10).validate().is_ok());
        assert!(part(100_000 - 10, 11).validate().is_err(), "runs past the chunk");
        assert!(part(u32::MAX, 1).validate().is_err(), "overflowing range");
        assert!(part(0, 0).validate().is_err());
        assert!(part(0, PART_MAX + 1).validate().is_err());
        let huge = ChunkInfo { offset: 0, len: MAX_CHUNK_LEN + 1, hash: hash(0) };
        assert!(P2pRequest::GetChunkParts { content: hash(0), chunk: huge }.validate().is_err());
        let parts = |len| P2pResponse::ChunkParts { hash: hash(0), parts: vec![PartInfo { len, hash: hash(1) }] };
        assert!(parts(PART_MAX).validate().is_ok());
        assert!(parts(0).validate().is_err());
        assert!(parts(PART_MAX + 1).validate().is_err());
        // A part list longer than MAX_PARTS does not even decode.
        let long =
            P2pResponse::ChunkParts { hash: hash(0), parts: vec![PartInfo { len: 1, hash: hash(1) }; MAX_PARTS + 1] };
        assert!(decode::<P2pResponse>(&encode(&long).unwrap()).is_err());
        // Nor a summary longer than MAX_SUMMARY_GROUPS.
        let groups = vec![GroupSummary { count: 1, digest: GroupDigest([0; 16]) }; MAX_SUMMARY_GROUPS + 1];
        let long = P2pResponse::ChunkListSummary(ListSummary { content: hash(0), groups });
        assert!(decode::<P2pResponse>(&encode(&long).unwrap()).is_err());
    }

    #[test]
    fn chunk_bytes_are_encoded_compactly() {
        let msg = P2pResponse::Chunk { hash: ContentHash::of(b""), bytes: vec![0xAB; 1000] };
        let bytes = encode(&msg).unwrap();
        assert!(bytes.len() < 1000 + 32 + 8, "{}", bytes.len());
    }

    #[test]
    fn request_validation_table() {
        let get = |first, max| P2pRequest::GetChunkList {
            path: RelPath::new("a").unwrap(),
            content: ContentHash::of(b"a"),
            first,
            max,
        };
        let chunk = |len| P2pRequest::GetChunk { content: ContentHash::of(b"a"), offset: 0, len, hash: hash(0) };
        let cases = [
            (get(0, 1), true),
            (get(7, CHUNK_LIST_PAGE), true),
            (get(MAX_CHUNKS_PER_FILE, 1), true),
            (get(0, 0), false),
            (get(0, CHUNK_LIST_PAGE + 1), false),
            (get(MAX_CHUNKS_PER_FILE + 1, 1), false),
            (chunk(MAX_CHUNK_LEN), true),
            (chunk(MAX_CHUNK_LEN + 1), false),
        ];
        for (req, ok) in cases {
            assert_eq!(req.validate().is_ok(), ok, "{req:?}");
        }
    }

    #[test]
    fn page_validation_table() {
        let full = list(u64::from(CHUNK_LIST_PAGE) + 1, 1024);
        let cases = [
            ("the one page of an empty list", page(0, 0, vec![]), true),
            ("one chunk", page(1, 0, list(1, 5)), true),
            ("last page", page(10, 8, list(2, 5)), true),
            ("empty page at the end", page(10, 10, vec![]), true),
            ("a full page", page(MAX_CHUNKS_PER_FILE, 0, full[..CHUNK_LIST_PAGE as usize].to_vec()), true),
            ("over the page limit", page(MAX_CHUNKS_PER_FILE, 0, full.clone()), false),
            ("total over the file limit", page(MAX_CHUNKS_PER_FILE + 1, 0, list(1, 5)), false),
            ("runs past the total", page(2, 1, list(2, 5)), false),
            ("first past the total", page(2, 3, vec![]), false),
            ("first + len overflows", page(MAX_CHUNKS_PER_FILE, u64::MAX, list(1, 5)), false),
            ("empty page before the end", page(2, 1, vec![]), false),
        ];
        for (name, page, ok) in cases {
            assert_eq!(page.validate().is_ok(), ok, "{name}");
            assert_eq!(P2pResponse::ChunkList(page).validate().is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn pages_are_cut_from_the_whole_list() {
        let c = ContentHash::of(b"c");
        let l = list(10, 4);
        let p = ChunkListPage::of(c, &l, 3, 4).unwrap();
        assert_eq!((p.total, p.first, p.end(), &p.chunks[..]), (10, 3, 7, &l[3..7]));
        assert_eq!(ChunkListPage::of(c, &l, 8, 100).unwrap().chunks, &l[8..]);
        assert_eq!(ChunkListPage::of(c, &l, 0, 0).unwrap().chunks.len(), 1, "max is at least 1");
        assert!(ChunkListPage::of(c, &l, 10, 5).unwrap().chunks.is_empty());
        assert_eq!(ChunkListPage::of(c, &l, 11, 5), None);
        assert_eq!(ChunkListPage::of(c, &l, u64::MAX, 5), None);
        let big = list(u64::from(CHUNK_LIST_PAGE) * 2, 4);
        assert_eq!(ChunkListPage::of(c, &big, 0, u32::MAX).unwrap().chunks.len(), CHUNK_LIST_PAGE as usize);
        for p in [ChunkListPage::of(c, &l, 0, 3).unwrap(), ChunkListPage::of(c, &[], 0, 3).unwrap()] {
            p.validate().unwrap();
        }
    }

    #[test]
    fn a_million_entry_list_round_trips_in_pages_within_the_frame_limit() {
        // Worst-case varints: offsets past 2^32 (9 bytes), lengths past 2^16 (5 bytes).
        let n = 1_000_000u64;
        let whole = list(n, MAX_CHUNK_LEN);
        let size = n * u64::from(MAX_CHUNK_LEN);
        let content = ContentHash::of(b"big");
        let path = RelPath::new("big").unwrap();
        let mut assembler = ChunkListAssembler::new(content, size);
        let mut codec = FrameCodec::new();
        let (mut pages, mut bytes) = (0, 0);
        while let Some(request) = assembler.next_request(&path) {
            let request: P2pRequest = decode(&encode(&request).unwrap()).unwrap();
            request.validate().unwrap();
            let P2pRequest::GetChunkList { content, first, max, .. } = request else { panic!("{request:?}") };
            let response = P2pResponse::ChunkList(ChunkListPage::of(content, &whole, first, max).unwrap());
            let encoded = encode(&response).unwrap();
            assert!(encoded.len() <= MAX_FRAME_LEN / 4, "page of {} bytes", encoded.len());
            bytes += encoded.len();
            let mut wire = BytesMut::new();
            codec.encode(Bytes::from(encoded), &mut wire).unwrap();
            let frame = codec.decode(&mut wire).unwrap().unwrap();
            let response: P2pResponse = decode(&frame).unwrap();
            response.validate().unwrap();
            let P2pResponse::ChunkList(page) = response else { panic!("{response:?}") };
            assembler.push(page).unwrap();
            pages += 1;
        }
        assert_eq!(pages, n.div_ceil(u64::from(CHUNK_LIST_PAGE)));
        assert!(bytes > MAX_FRAME_LEN, "{bytes} bytes: the list alone would fit one frame");
        let got = assembler.finish().unwrap();
        assert_eq!(chunk_list_hash(&got), chunk_list_hash(&whole));
        assert_eq!(got, whole);
    }

    #[test]
    fn the_largest_request_fits_its_bound() {
        use crate::limits::{MAX_P2P_REQUEST_FRAME, MAX_PATH_LEN};
        let unit = format!("{}/", "p".repeat(254));
        let mut path = unit.repeat(MAX_PATH_LEN / unit.len());
        path.push_str(&"q".repeat(MAX_PATH_LEN - path.len()));
        let requests = [
            P2pRequest::GetChunkList {
                path: RelPath::new(&path).unwrap(),
                content: hash(1),
                first: u64::MAX,
                max: u32::MAX,
            },
            P2pRequest::GetChunk { content: hash(1), offset: u64::MAX, len: u32::MAX, hash: hash(2) },
        ];
        let sizes: Vec<usize> = requests.iter().map(|r| encode(r).unwrap().len()).collect();
        let largest = sizes.iter().copied().max().unwrap_or(0);
        assert!(largest <= MAX_P2P_REQUEST_FRAME && largest + 16 > MAX_P2P_REQUEST_FRAME, "{sizes:?}");
    }

    #[test]
    fn a_full_page_of_worst_case_entries_fits_the_bound() {
        let worst = ChunkInfo { offset: u64::MAX, len: u32::MAX, hash: hash(0) };
        let page = ChunkListPage {
            content: hash(1),
            total: u64::MAX,
            first: u64::MAX,
            chunks: vec![worst; CHUNK_LIST_PAGE as usize],
        };
        let bytes = encode(&P2pResponse::ChunkList(page)).unwrap();
        assert!(bytes.len() <= MAX_PAGE_OVERHEAD + CHUNK_LIST_PAGE as usize * MAX_ENCODED_CHUNK_INFO);
    }

    #[test]
    fn the_assembler_refuses_inconsistent_pages() {
        let c = ContentHash::of(b"c");
        let l = list(4, 2048); // a file of 8 KiB in 4 chunks
        let size = 4 * 2048;
        let at = |first, chunks: &[ChunkInfo]| ChunkListPage { content: c, total: 4, first, chunks: chunks.to_vec() };
        let shifted = |mut v: Vec<ChunkInfo>, by: u64| {
            v[0].offset += by;
            v
        };
        type Case = (&'static str, Vec<ChunkListPage>, u64, fn(&ChunkListError) -> bool);
        let cases: Vec<Case> = vec![
            ("wrong content", vec![ChunkListPage { content: hash(9), ..at(0, &l[..2]) }], size, |e| {
                matches!(e, ChunkListError::WrongContent { .. })
            }),
            ("invalid page", vec![ChunkListPage { total: 1, ..at(0, &l[..2]) }], size, |e| {
                matches!(e, ChunkListError::Invalid(_))
            }),
            ("too many chunks for the size", vec![at(0, &l[..2])], 2047, |e| {
                matches!(e, ChunkListError::ImpossibleTotal { total: 4, size: 2047 })
            }),
            ("too few chunks for the size", vec![ChunkListPage { total: 1, ..at(0, &l[..1]) }], 1 << 40, |e| {
                matches!(e, ChunkListError::ImpossibleTotal { .. })
            }),
            ("total changes", vec![at(0, &l[..2]), ChunkListPage { total: 5, ..at(2, &l[2..]) }], size, |e| {
                matches!(e, ChunkListError::TotalChanged { before: 4, now: 5 })
            }),
            ("skips a page", vec![at(0, &l[..1]), at(2, &l[2..])], size, |e| {
                matches!(e, ChunkListError::OutOfOrder { expected: 1, got: 2 })
            }),
            ("repeats a page", vec![at(0, &l[..2]), at(0, &l[..2])], size, |e| {
                matches!(e, ChunkListError::OutOfOrder { expected: 2, got: 0 })
            }),
            ("gap between pages", vec![at(0, &l[..2]), at(2, &shifted(l[2..].to_vec(), 1))], size, |e| {
                matches!(e, ChunkListError::BadChunk { index: 2, expected: 4096, .. })
            }),
            ("runs past the file", vec![at(0, &l)], size - 1, |e| {
                matches!(e, ChunkListError::BadChunk { index: 3, .. })
            }),
            ("ends short of the file", vec![at(0, &l)], size + 1, |e| {
                matches!(e, ChunkListError::SizeMismatch { covered: 8192, size: 8193 })
            }),
        ];
        for (name, pages, size, want) in cases {
            let mut asm = ChunkListAssembler::new(c, size);
            let err = pages.into_iter().find_map(|p| asm.push(p).err()).unwrap_or_else(|| panic!("{name}: accepted"));
            assert!(want(&err), "{name}: {err}");
        }
        // In order, it works, and finishing early is an error.
        let mut asm = ChunkListAssembler::new(c, size);
        asm.push(at(0, &l[..3])).unwrap();
        assert_eq!(asm.next_index(), 3);
        assert!(!asm.is_complete());
        assert!(matches!(asm.clone().finish(), Err(ChunkListError::Incomplete { have: 3, total: Some(4) })));
        asm.push(at(3, &l[3..])).unwrap();
        assert!(asm.is_complete() && asm.next_request(&RelPath::new("f").unwrap()).is_none());
        assert_eq!(asm.finish().unwrap(), l);
        // An empty file: one empty page.
        let mut empty = ChunkListAssembler::new(ContentHash::empty(), 0);
        assert!(matches!(empty.clone().finish(), Err(ChunkListError::Incomplete { have: 0, total: None })));
        empty.push(ChunkListPage { content: ContentHash::empty(), total: 0, first: 0, chunks: vec![] }).unwrap();
        assert_eq!(empty.finish().unwrap(), vec![]);
    }
}
