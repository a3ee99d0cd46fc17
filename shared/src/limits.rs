//! Hard size limits shared by every decoder and every validator.
//!
//! One place for every bound, so the frame codec, the bincode decoder and
//! the message validators can never disagree. Each limit is checked before
//! the corresponding allocation happens: a frame's length prefix before its
//! body is buffered ([`crate::codec::FrameCodec`]), a list's or string's
//! length before its elements are decoded ([`crate::codec`]).
//!
//! # Frame sizes by message
//! | frame | bound |
//! |---|---|
//! | P2P `Chunk` response | [`MAX_FRAME_LEN`]: one [`MAX_CHUNK_LEN`] chunk plus its header |
//! | P2P `ChunkList` page | about 3 MiB ([`CHUNK_LIST_PAGE`] entries) |
//! | PTP `Announce`, `Delta` | [`MAX_BATCH_BYTES`] (and [`MAX_RECORDS_PER_MESSAGE`] records) |
//! | PTP `Have` and every other peer message | [`MAX_CONTROL_FRAME`] |
//! | PTP `Register`, the first frame of a session | [`MAX_REGISTER_FRAME`] |
//! | P2P requests | [`MAX_P2P_REQUEST_FRAME`] |
//!
//! The encoded-size bounds below count bincode's worst cases (standard
//! config): a varint takes at most [`VARINT_MAX`] bytes (9 for a `u64` or a
//! length, 5 for a `u32`, 3 for a `u16`), an enum variant index below 251
//! one byte; tests in `proto` encode the largest message of each kind and
//! check it against its bound.

/// Most bytes of one bincode varint (a `u64` or a length).
pub const VARINT_MAX: usize = 9;

/// Largest encoded message (one frame) accepted from the network, in bytes:
/// a `Chunk` response of [`MAX_CHUNK_LEN`] bytes plus 4 KiB for its header
/// (variant, hash and length take 42 bytes).
///
/// Every other message is smaller by construction (see the table in the
/// module header): a chunk-list page is about 3 MiB, a record batch at most
/// [`MAX_BATCH_BYTES`]. Receivers that know which message comes next use the
/// tighter bound of that message (the tracker reads `Register` with
/// [`MAX_REGISTER_FRAME`] and every later peer message with
/// [`MAX_BATCH_BYTES`]).
pub const MAX_FRAME_LEN: usize = MAX_CHUNK_LEN as usize + 4096;

/// Largest value stored locally through `codec::encode_stored` (the peer's
/// index, the tracker's database): 32 MiB. Not a network bound; a stored
/// chunk list of a big file is larger than any frame.
pub const MAX_STORED_LEN: usize = 32 * 1024 * 1024;

/// Largest piece length (average chunk size) a tracker may hand out.
pub const MAX_PIECE_LEN: u32 = 4 * 1024 * 1024;

/// Smallest piece length a tracker may hand out (FastCDC needs min >= 64).
pub const MIN_PIECE_LEN: u32 = 4 * 1024;

/// Default piece length: the average chunk size, 256 KiB.
pub const DEFAULT_PIECE_LEN: u32 = 256 * 1024;

/// Largest single chunk: the FastCDC maximum for the largest piece length.
pub const MAX_CHUNK_LEN: u32 = MAX_PIECE_LEN * 4;

/// Most records in one `Announce` or one `Delta` message. Larger sets are
/// split over several messages (also at [`MAX_BATCH_BYTES`]).
pub const MAX_RECORDS_PER_MESSAGE: usize = 4096;

/// Most paths in one rejection notice of the mass-change brake (a longer
/// list comes in several): 256 paths of the longest length take about
/// 1 MiB, well within [`MAX_BATCH_BYTES`].
pub const MAX_REJECTED_PATHS: usize = 256;

/// Largest encoded `Announce` or `Delta` message, in bytes: 4 MiB.
///
/// A sender cuts its record batches at [`MAX_RECORDS_PER_MESSAGE`] records
/// or at this many encoded bytes, whichever comes first
/// (`proto::ptp::announce_batches`). 4,096 records of a typical size
/// (a 100-byte path, a few version entries: about 250 bytes) take about
/// 1 MiB; a record of the largest possible size ([`MAX_ENCODED_RECORD`])
/// always fits with room to spare. The tracker reads every peer message
/// after `Register` with this bound, so one session never buffers more.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Upper bound of one encoded `FileRecord`: path (length + [`MAX_PATH_LEN`]),
/// kind (variant + length + [`MAX_LINK_TARGET_LEN`]), size, mtime, mode,
/// two hashes, version vector (length + [`MAX_VERSION_ENTRIES`] pairs of
/// two varints), deleted flag: 26,740 bytes.
pub const MAX_ENCODED_RECORD: usize = (VARINT_MAX + MAX_PATH_LEN)
    + (1 + VARINT_MAX + MAX_LINK_TARGET_LEN)
    + VARINT_MAX
    + VARINT_MAX
    + 5
    + 32
    + 32
    + (VARINT_MAX + MAX_VERSION_ENTRIES * 2 * VARINT_MAX)
    + 1;

/// Largest encoded PTP `Register` (variant, 16-byte id, `u16` port, two
/// `u64`s, the device name, the probe flag): 112 bytes. The tracker reads a session's first frame with this
/// bound, before it knows who is talking.
pub const MAX_REGISTER_FRAME: usize =
    1 + 16 + 3 + VARINT_MAX + VARINT_MAX + (VARINT_MAX + crate::device::MAX_DEVICE_NAME) + 1;

/// Most devices in one `Devices` message (a tracker knows at most this
/// many peers in its list; the limit of known peers is larger only in
/// configurations nobody runs).
pub const MAX_DEVICES: usize = 4096;

/// Largest encoded P2P request: a `GetChunkList` with the longest path
/// (variant, path, content hash, `first`, `max`): 4,152 bytes. A piece
/// server can read every request with this bound.
pub const MAX_P2P_REQUEST_FRAME: usize = 1 + (VARINT_MAX + MAX_PATH_LEN) + 32 + VARINT_MAX + 5;

/// Largest encoded PTP peer message that is not a record batch: a `Have`
/// with the longest path and the longest version vector (22,547 bytes);
/// `KeepAlive` and `Goodbye` are one byte. The tracker buffers frames up to
/// this size in every session; a larger frame (an `Announce` batch) waits
/// for one of a few tracker-wide batch slots first.
pub const MAX_CONTROL_FRAME: usize =
    1 + (VARINT_MAX + MAX_PATH_LEN) + (VARINT_MAX + MAX_VERSION_ENTRIES * 2 * VARINT_MAX);

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

/// Most holders a `Delta` entry may list (a bound on what is read; the
/// tracker lists at most [`HOLDER_FANOUT`]).
pub const MAX_HOLDERS_PER_ENTRY: usize = 256;

/// Holders a peer that lacks a record is told about: a delta lists at
/// most this many of an entry's holders (more sources help a download
/// little), and the tracker pages an entry's new holders as they come
/// until it has this many. A holder beyond them changes no page, so it
/// takes no seq of the tracker; a peer hears of it with the next change of
/// the record, or when the holders it knows fail and it asks (`Sources`).
pub const HOLDER_FANOUT: usize = 8;

/// Longest symlink target carried in a record.
pub const MAX_LINK_TARGET_LEN: usize = 4096;

/// Longest free-text reason in an error message on the wire.
pub const MAX_REASON_LEN: usize = 1024;

/// Longest string of any wire message (a path, a symlink target, a reason),
/// checked while decoding before the string is allocated.
pub const MAX_WIRE_STRING: usize = max(max(MAX_PATH_LEN, MAX_LINK_TARGET_LEN), MAX_REASON_LEN);

/// Most elements of any list of a wire message (a chunk-list page is the
/// longest), checked while decoding before any element is; each list also
/// has its own tighter bound ([`MAX_RECORDS_PER_MESSAGE`],
/// [`MAX_HOLDERS_PER_ENTRY`]).
pub const MAX_WIRE_LIST: usize = max(max(CHUNK_LIST_PAGE as usize, MAX_RECORDS_PER_MESSAGE), MAX_HOLDERS_PER_ENTRY);

/// Most entries of any map of a wire message (a version vector).
pub const MAX_WIRE_MAP: usize = MAX_VERSION_ENTRIES;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

const _: () = {
    assert!(MAX_ENCODED_RECORD + 1 + VARINT_MAX <= MAX_BATCH_BYTES / 64, "a batch holds many records of any size");
    assert!(MAX_BATCH_BYTES <= MAX_FRAME_LEN, "a batch fits a frame");
    assert!(MAX_CONTROL_FRAME < MAX_BATCH_BYTES && MAX_REGISTER_FRAME < MAX_CONTROL_FRAME);
    assert!(MAX_FRAME_LEN <= MAX_STORED_LEN);
};
