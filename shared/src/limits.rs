//! Hard size limits shared by every decoder and every validator.
//!
//! One place for every bound, so the frame codec, the bincode decoder and
//! the message validators can never disagree. Each limit is checked before
//! the corresponding allocation happens.

/// Largest encoded message (one frame) accepted from the network, in bytes.
///
/// The biggest legitimate messages are a `Chunk` (at most
/// [`MAX_CHUNK_LEN`] bytes of payload), an `Announce` / `Delta` batch of
/// [`MAX_RECORDS_PER_MESSAGE`] records and a chunk-list page of
/// [`CHUNK_LIST_PAGE`] entries (about 3 MiB); 32 MiB leaves room for all.
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;

/// Largest piece length (average chunk size) a tracker may hand out.
pub const MAX_PIECE_LEN: u32 = 4 * 1024 * 1024;

/// Smallest piece length a tracker may hand out (FastCDC needs min >= 64).
pub const MIN_PIECE_LEN: u32 = 4 * 1024;

/// Default piece length: the average chunk size, 256 KiB.
pub const DEFAULT_PIECE_LEN: u32 = 256 * 1024;

/// Largest single chunk: the FastCDC maximum for the largest piece length.
pub const MAX_CHUNK_LEN: u32 = MAX_PIECE_LEN * 4;

/// Most records in one `Announce` or one `Delta` message. Larger sets are
/// split over several messages.
pub const MAX_RECORDS_PER_MESSAGE: usize = 4096;

/// Smallest chunk FastCDC cuts at any piece length (a file's last chunk
/// may be shorter): the minimum (avg / 4) of [`MIN_PIECE_LEN`], 1 KiB.
pub const MIN_CHUNK_LEN: u32 = MIN_PIECE_LEN / 4;

/// The largest file whose chunk list is guaranteed to fit
/// [`MAX_CHUNKS_PER_FILE`] at every allowed piece length: 1 TiB. Larger
/// files still sync at piece lengths where their list fits (at the default
/// piece length, 64 KiB minimum chunks, up to 64 TiB).
pub const LISTED_FILE_SIZE: u64 = 1 << 40;

/// Most entries in one file's chunk list: a [`LISTED_FILE_SIZE`] file cut
/// into [`MIN_CHUNK_LEN`] chunks, 2^30. A list this long (48 GiB in memory)
/// never travels whole: it is fetched in pages of [`CHUNK_LIST_PAGE`].
pub const MAX_CHUNKS_PER_FILE: u64 = LISTED_FILE_SIZE.div_ceil(MIN_CHUNK_LEN as u64);

/// Most entries in one chunk-list page (one `ChunkList` response): 65,536
/// entries of at most 46 encoded bytes, about 3 MiB, a tenth of
/// [`MAX_FRAME_LEN`]. A 1 TiB file takes about 64 pages at the default
/// piece length and at most 16,384 at any.
pub const CHUNK_LIST_PAGE: u32 = 1 << 16;

/// Longest relative path in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest single path component in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Most entries in one version vector (one per peer that ever edited the
/// path).
pub const MAX_VERSION_ENTRIES: usize = 1024;

/// Largest version-vector counter a valid record may carry: 2^62.
///
/// A counter grows by one per local edit, so no honest history comes near
/// it; a record above it is invalid (forged or corrupt), and a bump that
/// would pass it fails instead of saturating. The headroom up to `u64::MAX`
/// keeps every `max + 1` on valid vectors free of overflow.
pub const MAX_COUNTER: u64 = 1 << 62;

/// Most holders listed for one entry in a `Delta`.
pub const MAX_HOLDERS_PER_ENTRY: usize = 256;

/// Longest symlink target carried in a record.
pub const MAX_LINK_TARGET_LEN: usize = 4096;

/// Longest free-text reason in an error message on the wire.
pub const MAX_REASON_LEN: usize = 1024;
