//! Content between peers: the [`ChunkSource`] trait (what local bytes may
//! serve a chunk), the piece server ([`serve`]) with its [`PeerGate`]
//! (admitted devices only), and the multi-source
//! downloader ([`Downloader`]), plus the naming and progress format of the
//! partial files both of them read (`part`).
//!
//! Knows content hashes, chunk lists and `.dartsync/tmp`; knows nothing of
//! records' history, the index or the tracker. Public because the
//! integration tests in `peer/tests/transfer.rs` drive a server and a
//! downloader directly.

pub(crate) mod chunk_source;
mod download;
pub(crate) mod gate;
pub(crate) mod part;
mod serve;

pub use chunk_source::{Candidate, ChunkSource, MemoryChunkSource};
pub use download::{
    DownloadError, DownloadJob, DownloadLimits, DownloadOutcome, DownloadProgress, Downloader, HolderError, HolderStats,
};
pub use gate::{ADMISSION_GRACE, Admission, PeerGate};
pub use serve::{ServeConfig, ServeError, bind, serve};
