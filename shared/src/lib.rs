//! `dartsync-shared`: everything the tracker and the peers must agree on.
//!
//! This crate is the API boundary of DartSync. It owns the wire messages
//! ([`proto`]), their encoding ([`codec`]), the encrypted transport
//! ([`channel`]), the record and version-vector types ([`record`],
//! [`version`]), identities ([`id`]), the only gate from wire paths to disk
//! paths ([`path`]), content-defined chunking ([`chunk`]), the cluster key
//! ([`key`]), the LAN discovery model ([`discovery`]: what a tracker
//! announces, how announcements are checked and picked) and the
//! configuration file ([`config`]), plus two small
//! helpers every crate uses: [`hex`] and [`backoff`]. With the `test-util`
//! feature, `test_util` holds the helpers of every crate's tests.
//!
//! The pure parts (records, versions, ids, paths, chunking over a `Read`)
//! know nothing about tokio; only [`codec`] and [`channel`] (and the
//! test-only `test_util`) are async. The
//! crate knows nothing about redb, notify or the file tree of a peer.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod channel;
pub mod chunk;
pub mod codec;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod device;
pub mod discovery;
pub mod error;
pub mod hex;
pub mod human;
pub mod id;
pub mod invite_code;
pub mod join;
pub mod key;
pub mod limits;
mod noise;
pub mod path;
pub mod preauth;
pub mod proto;
pub mod record;
pub mod status;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod time;
pub mod version;
pub mod versions;

pub use chunk::{ChunkInfo, ChunkParams, ChunkedFile};
pub use id::{ContentHash, PeerId, ShortId};
pub use path::RelPath;
pub use record::{FileKind, FileRecord};
pub use version::{Causality, VersionVector};

/// Gives the allocator's free memory back to the system: the binary's
/// `malloc_trim(0)`, handed to the tracker and the peer, which say when
/// (the library crates hold no `unsafe`). Must be safe to call from any
/// thread at any time.
pub type ReleaseFn = fn();
