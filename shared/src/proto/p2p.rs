//! P2P: the peer <-> peer piece protocol, direct TCP, pipelined.
//!
//! A downloader opens one encrypted connection per holder and keeps several
//! requests in flight on it. The server answers **in request order**, one
//! response per request, so the client matches responses to requests by
//! position; every response also echoes what it answers (`content` or
//! `hash`) so a mismatch is detected.
//!
//! # GetChunkList
//! `path` and `content` name a version; the holder answers with the chunk
//! list of that content ([`P2pResponse::ChunkList`]) or `NotAvailable`. The
//! client checks the list's hash against the record's `chunks` field.
//!
//! # GetChunk
//! Asks for `len` bytes at `offset` of the file whose content is `content`,
//! which must hash to `hash`. The holder reads them, checks the hash itself
//! (a file changed since indexing answers `NotAvailable`) and answers
//! [`P2pResponse::Chunk`]. `Busy` means its upload slots are full: the
//! client moves that chunk to another holder (the brief's BUSY/READY).

use serde::{Deserialize, Serialize};

use super::{ProtocolError, check_len};
use crate::chunk::ChunkInfo;
use crate::id::ContentHash;
use crate::limits::{MAX_CHUNK_LEN, MAX_CHUNKS_PER_LIST};
use crate::path::RelPath;

/// Requests a downloader sends to a holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum P2pRequest {
    /// The chunk list of a version.
    GetChunkList {
        /// The path (a hint for the holder's lookup).
        path: RelPath,
        /// The whole-file hash of the version.
        content: ContentHash,
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
}

/// Responses a holder sends, one per request, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum P2pResponse {
    /// The chunk list of `content`.
    ChunkList {
        /// The whole-file hash the list describes.
        content: ContentHash,
        /// The chunks, in file order.
        chunks: Vec<ChunkInfo>,
    },
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
}

impl P2pRequest {
    /// Checks a request received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            P2pRequest::GetChunk { len, .. } if *len > MAX_CHUNK_LEN => {
                Err(ProtocolError::Invalid("get chunk: length above the chunk limit"))
            }
            _ => Ok(()),
        }
    }
}

impl P2pResponse {
    /// Checks a response received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            P2pResponse::ChunkList { chunks, .. } => check_len("chunk list", chunks.len(), MAX_CHUNKS_PER_LIST),
            P2pResponse::Chunk { bytes, .. } => check_len("chunk bytes", bytes.len(), MAX_CHUNK_LEN as usize),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn requests() -> Vec<P2pRequest> {
        vec![
            P2pRequest::GetChunkList { path: RelPath::new("a").unwrap(), content: ContentHash::of(b"a") },
            P2pRequest::GetChunk { content: ContentHash::of(b"a"), offset: 5, len: 9, hash: ContentHash::of(b"c") },
        ]
    }

    fn responses() -> Vec<P2pResponse> {
        vec![
            P2pResponse::ChunkList {
                content: ContentHash::of(b"a"),
                chunks: vec![ChunkInfo { offset: 0, len: 3, hash: ContentHash::of(b"abc") }],
            },
            P2pResponse::Chunk { hash: ContentHash::of(b"abc"), bytes: b"abc".to_vec() },
            P2pResponse::NotAvailable,
            P2pResponse::Busy,
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
    fn chunk_bytes_are_encoded_compactly() {
        let msg = P2pResponse::Chunk { hash: ContentHash::of(b""), bytes: vec![0xAB; 1000] };
        let bytes = encode(&msg).unwrap();
        assert!(bytes.len() < 1000 + 32 + 8, "{}", bytes.len());
    }

    #[test]
    fn oversized_requests_are_invalid() {
        let req = P2pRequest::GetChunk {
            content: ContentHash::of(b"a"),
            offset: 0,
            len: MAX_CHUNK_LEN + 1,
            hash: ContentHash::of(b"a"),
        };
        assert!(req.validate().is_err());
    }
}
