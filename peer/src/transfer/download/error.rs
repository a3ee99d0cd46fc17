//! Why a holder was dropped from a download ([`HolderError`]) and why a
//! download failed ([`DownloadError`]), with the retry class the engine
//! acts on. Its own module so the orchestrator and the per-holder workers
//! share it without importing each other.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use dartsync_shared::channel::ChannelError;
use dartsync_shared::error::Retry;
use dartsync_shared::proto::ProtocolError;
use dartsync_shared::proto::p2p::ChunkListError;
use dartsync_shared::{ContentHash, PeerId, RelPath};

/// Why a holder was dropped from one download. Lies (see
/// [`HolderError::is_lie`]) are logged at warn; the rest at debug.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// TCP connect failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// TCP connect did not finish in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Handshake or channel failure.
    #[error("{0}")]
    Channel(ChannelError),
    /// Someone else answered at the holder's address.
    #[error("the peer at that address is {actual}, not the holder")]
    WrongPeer {
        /// Who answered.
        actual: PeerId,
    },
    /// A response failed validation.
    #[error("invalid response: {0}")]
    Protocol(ProtocolError),
    /// A response of the wrong kind.
    #[error("protocol breach: {0}")]
    Unexpected(&'static str),
    /// The chunk list does not match the record.
    #[error("bad chunk list: {0}")]
    BadChunkList(&'static str),
    /// A page of the chunk list does not fit the pages before it or the
    /// record's size.
    #[error("bad chunk list page: {0}")]
    ChunkList(ChunkListError),
    /// A chunk failed its hash check.
    #[error("chunk at offset {offset} failed its hash check")]
    HashMismatch {
        /// Offset of the chunk in the file.
        offset: u64,
    },
    /// The holder does not have the content (any more).
    #[error("does not have the content")]
    NotAvailable,
    /// `Busy` to a chunk-list request.
    #[error("busy")]
    Busy,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The holder closed the connection.
    #[error("closed the connection")]
    Closed,
    /// Only `Busy` answers for too long.
    #[error("answered only Busy for {0:?}")]
    BusyTooLong(Duration),
}

impl HolderError {
    /// True when the holder sent data that contradicts the record (a liar
    /// or a broken peer), as opposed to being unreachable or out of date.
    pub fn is_lie(&self) -> bool {
        matches!(
            self,
            HolderError::HashMismatch { .. }
                | HolderError::BadChunkList(_)
                | HolderError::ChunkList(_)
                | HolderError::Unexpected(_)
                | HolderError::Protocol(_)
        )
    }
}

pub(crate) fn fmt_failures(failures: &[(PeerId, HolderError)]) -> String {
    if failures.is_empty() {
        return "no holders to ask".into();
    }
    let mut out = String::new();
    for (i, (peer, e)) in failures.iter().enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(out, "{sep}{}: {e}", peer.fmt_short());
    }
    out
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The record is not a live regular file.
    #[error("{path}: not a regular file record")]
    NotAFile {
        /// The record's path.
        path: RelPath,
    },
    /// No local file and no holder produced a chunk list matching the
    /// record.
    #[error("{path}: no chunk list ({})", fmt_failures(.failures))]
    NoChunkList {
        /// The record's path.
        path: RelPath,
        /// Each holder tried and why it failed.
        failures: Vec<(PeerId, HolderError)>,
    },
    /// Every holder was dropped while chunks were still missing. The
    /// partial file is kept for a later resume.
    #[error("{path}: {missing_chunks} chunks ({missing_bytes} bytes) missing and no holder left ({})", fmt_failures(.failures))]
    NoHoldersLeft {
        /// The record's path.
        path: RelPath,
        /// Chunks still missing.
        missing_chunks: usize,
        /// Their bytes.
        missing_bytes: u64,
        /// Each dropped holder and why.
        failures: Vec<(PeerId, HolderError)>,
    },
    /// Every chunk verified but the whole file does not hash to the
    /// record's content: the record is inconsistent. The partial file is
    /// deleted.
    #[error("{path}: assembled file hashes to {actual}, record says {expected}")]
    ContentMismatch {
        /// The record's path.
        path: RelPath,
        /// The record's content hash.
        expected: ContentHash,
        /// What the assembled bytes hash to.
        actual: ContentHash,
    },
    /// The cancel token fired; the partial file is kept.
    #[error("{path}: download cancelled")]
    Cancelled {
        /// The record's path.
        path: RelPath,
    },
    /// Local disk trouble in the temp folder.
    #[error("{path}: {source}")]
    Io {
        /// The temp file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether trying again later may succeed.
    pub fn retry(&self) -> Retry {
        match self {
            DownloadError::NotAFile { .. } | DownloadError::ContentMismatch { .. } => Retry::Permanent,
            _ => Retry::Temporary,
        }
    }
}
