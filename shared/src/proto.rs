//! Wire messages: PTP (peer <-> tracker) and P2P (peer <-> peer).
//!
//! # Goals
//! - One enum per direction per protocol, encoded with bincode 2 by
//!   [`crate::codec`] and carried in frames over the encrypted
//!   [`crate::channel`].
//! - Incremental: the tracker pushes changes since a peer's `seen_seq`,
//!   never the whole table unless the tracker's `epoch` changed.
//! - Content-addressed transfers: peers ask each other for chunks by hash,
//!   so every byte received is verifiable.
//!
//! # Non-goals
//! - No file content ever goes through the tracker.
//! - No negotiation of options: the protocol version is checked once in the
//!   handshake ([`PROTOCOL_VERSION`]); a mismatch ends the connection.
//!
//! # Compatibility
//! bincode encodes an enum by its variant index, so **the order of variants
//! is the protocol**. Variants are only ever appended. The tests in
//! [`ptp`] and [`p2p`] pin the encoded bytes of each variant so that a
//! reordering fails a test.
//!
//! # Trust
//! Nothing decoded is trusted. Frame sizes are bounded before allocation
//! ([`crate::limits::MAX_FRAME_LEN`]), paths are validated while decoding
//! ([`crate::path::RelPath`]), and every message has a `validate` method the
//! receiver calls before acting on it (record counts, record consistency,
//! chunk lengths). Unknown variants are decode errors.

pub mod join;
pub mod p2p;
pub mod ptp;

/// Version of the wire protocol, checked in the handshake. Bump it on any
/// incompatible change to a message.
///
/// - 1: first release.
/// - 2: chunk lists travel in pages (`GetChunkList { first, max }`,
///   `ChunkList(ChunkListPage)`), so a list of any length fits in frames.
/// - 3: the handshake is `Noise_XXpsk0` (the cluster key mixed in before
///   any static key travels, so a host without it learns no identity).
/// - 4: `Register` carries the device name and a probe flag; `Report`,
///   `Devices` and `Conflict` messages (what `dartsync status` shows).
/// - 5: `Brake` notices (the tracker's mass-change brake held, released or
///   rejected the peer's changes).
/// - 6: device admission: `Pending` and `Revoked` answers, and each
///   device's state (admitted, pending, revoked) in `Devices`.
/// - 7: small edits of big files: `GetChunkListSummary`, `GetChunkParts`
///   and `GetPart` with their answers (P2P).
/// - 8: `Sources` (PTP): a peer whose holders of a version could not
///   deliver asks for the ones online now; the tracker no longer pages a
///   holder's departure.
pub const PROTOCOL_VERSION: u16 = 8;

/// Why a decoded message was rejected by its `validate` method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A list in the message is longer than its limit.
    #[error("{what}: {len} entries exceed the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record in the message is malformed.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// A version vector outside a record is malformed.
    #[error("{what}: {source}")]
    Version {
        /// Which message carried it.
        what: &'static str,
        /// What is wrong with it.
        source: crate::version::VersionError,
    },
    /// A field has a value outside its allowed range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Checks `len <= max` for a list named `what`.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), ProtocolError> {
    if len > max { Err(ProtocolError::TooMany { what, len, max }) } else { Ok(()) }
}
