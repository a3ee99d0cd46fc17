//! Fuzzing entry points: thin wrappers that feed arbitrary bytes to the
//! peer's decoders of its own on-disk state and say whether they decoded.
//!
//! Not an API. Compiled only with the `fuzzing` feature (which the
//! cargo-fuzz project in `tests/fuzz` enables) and in unit tests, hidden
//! from the docs, free to change at any time.
//!
//! What is reached and how:
//! - `.part.state` files: [`crate::transfer::part`]'s `PartState::decode`,
//!   called directly ([`part_state`]; [`part_state_sealed`] appends the
//!   blake3 trailer first, so mutated bodies get past the checksum and
//!   reach the field checks).
//! - Index values: `decode_head` and `decode_chunks` are private to
//!   [`crate::local::index`], so they are reached the way the peer reaches
//!   them: the bytes are written raw into the `entries` / `chunk_lists`
//!   tables of a fresh `index.redb` in a scratch folder, then
//!   `Index::open` (which decodes every entry to drop the ones it refuses)
//!   and `Index::all` (which decodes every head and every live file's chunk
//!   list) read them back ([`index_entry`], [`index_chunks`]). One redb
//!   file per input, in a scratch folder on `/dev/shm` (`TMPDIR` when set).
//!
//! The wrappers add no panic of their own: a panic under them is a bug in
//! the decoder. Failures of the scaffolding (scratch folder, redb) are
//! [`HarnessError`]s, never a verdict on the input.

use std::path::Path;
use std::sync::OnceLock;

use dartsync_shared::chunk::ChunkInfo;
use dartsync_shared::test_util::{ScratchDir, harness};
use dartsync_shared::{ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::local::error::LocalError;
use crate::local::index::{Index, IndexEntry};
use crate::local::stat::StatKey;
use crate::transfer::part::PartState;

/// The index's `entries` table, by name and type (path -> stored head).
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// The index's `chunk_lists` table (path -> stored chunk list).
const CHUNK_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("chunk_lists");
/// The key [`index_chunks`] stores its chunk list under.
pub const CHUNKS_KEY: &str = "f";

/// The scaffolding around a decoder failed (not a verdict on the input).
pub use dartsync_shared::test_util::HarnessError;

/// True when `bytes` are a well-formed `.part.state` file.
pub fn part_state(bytes: &[u8]) -> bool {
    PartState::decode(bytes).is_some()
}

/// [`part_state`] of `body` followed by its correct blake3 trailer.
pub fn part_state_sealed(body: &[u8]) -> bool {
    part_state(&seal(body))
}

/// `None` when `bytes` do not decode as a `.part.state`; otherwise whether
/// encoding the decoded state gives back exactly `bytes` (it always should:
/// the format has one encoding per state).
pub fn part_state_reencodes(bytes: &[u8]) -> Option<bool> {
    PartState::decode(bytes).map(|state| state.encode() == bytes)
}

/// `body` followed by the blake3 of `body`, as a state file ends.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out
}

/// Stores `value` raw as the index entry (record + stat) of `key` and reads
/// the index back; true when the entry decoded, validated and was kept.
pub fn index_entry(key: &str, value: &[u8]) -> Result<bool, HarnessError> {
    index_values(key, value, None)
}

/// The input format of the `index_entry` fuzz target: `key NUL value`
/// (no NUL: key `a`, all of it the value; a key that is not UTF-8 is read
/// lossily), fed to [`index_entry`].
pub fn index_entry_input(data: &[u8]) -> Result<bool, HarnessError> {
    let (key, value) = match data.iter().position(|&b| b == 0) {
        Some(at) => (String::from_utf8_lossy(&data[..at]), &data[at + 1..]),
        None => ("a".into(), data),
    };
    index_entry(&key, value)
}

/// Stores `value` raw as the chunk list of a valid live file
/// ([`CHUNKS_KEY`]) and reads the index back; true when the list decoded.
pub fn index_chunks(value: &[u8]) -> Result<bool, HarnessError> {
    index_values(CHUNKS_KEY, valid_file_head()?, Some(value))
}

/// Stores `head` (and, if given, `chunks`) raw under `key`, opens the index
/// (which drops entries it refuses) and reads every entry back: true when
/// the entry came back whole.
pub fn index_values(key: &str, head: &[u8], chunks: Option<&[u8]>) -> Result<bool, HarnessError> {
    let scratch = scratch()?;
    let path = scratch.dir.join("index.redb");
    write_raw(&path, key, head, chunks)?;
    let index = Index::open(&path).map_err(|e| harness("open the index", e))?;
    match index.all() {
        Ok(entries) => Ok(entries.len() == 1),
        Err(LocalError::Corrupt { .. }) => Ok(false),
        Err(e) => Err(harness("read the index", e)),
    }
}

/// The stored head of a live, empty file at [`CHUNKS_KEY`], encoded once
/// by the index itself.
fn valid_file_head() -> Result<&'static [u8], HarnessError> {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(head) = HEAD.get() {
        return Ok(head);
    }
    let path = RelPath::new(CHUNKS_KEY).map_err(|e| harness("the chunk list's path", e))?;
    let record = FileRecord {
        path,
        kind: FileKind::File,
        size: 0,
        mtime_ns: 0,
        mode: 0o644,
        content: ContentHash::empty(),
        chunks: ContentHash::empty(),
        version: VersionVector::from_entries([(ShortId(1), 1)]),
        deleted: false,
    };
    let (head, _) = encode_raw(&record, &[], None)?;
    Ok(HEAD.get_or_init(|| head))
}

/// The raw values the index stores for one entry (head, and the chunk list
/// of a live file), encoded through `Index::put` and read back from redb.
fn encode_raw(
    record: &FileRecord,
    chunks: &[ChunkInfo],
    stat: Option<StatKey>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), HarnessError> {
    let scratch = scratch()?;
    let path = scratch.dir.join("index.redb");
    {
        let index = Index::open(&path).map_err(|e| harness("open the index", e))?;
        let entry = IndexEntry { record: record.clone(), chunks: chunks.to_vec(), stat };
        index.put(&entry).map_err(|e| harness("store an entry", e))?;
    }
    let db = Database::open(&path).map_err(|e| harness("reopen the index", e))?;
    let txn = db.begin_read().map_err(|e| harness("begin a read", e))?;
    let key = record.path.as_str();
    let head = read_raw(&txn, ENTRIES, key)?.ok_or_else(|| harness("read the head", "missing"))?;
    Ok((head, read_raw(&txn, CHUNK_LISTS, key)?))
}

/// The raw value of `key` in `table`.
fn read_raw(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, HarnessError> {
    let table = txn.open_table(table).map_err(|e| harness("open a table", e))?;
    let value = table.get(key).map_err(|e| harness("read a value", e))?;
    Ok(value.map(|v| v.value().to_vec()))
}

/// Writes the raw rows of one entry into a new redb file at `path`.
fn write_raw(path: &Path, key: &str, head: &[u8], chunks: Option<&[u8]>) -> Result<(), HarnessError> {
    let db = Database::create(path).map_err(|e| harness("create a database", e))?;
    let txn = db.begin_write().map_err(|e| harness("begin a write", e))?;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(|e| harness("open a table", e))?;
        entries.insert(key, head).map_err(|e| harness("write a value", e))?;
        if let Some(chunks) = chunks {
            let mut lists = txn.open_table(CHUNK_LISTS).map_err(|e| harness("open a table", e))?;
            lists.insert(key, chunks).map_err(|e| harness("write a value", e))?;
        }
    }
    txn.commit().map_err(|e| harness("commit", e))
}

/// A fresh scratch folder for one input.
fn scratch() -> Result<ScratchDir, HarnessError> {
    ScratchDir::new("dartsync-peer-fuzz").map_err(|e| harness("create a scratch folder", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::part::Bitmap;
    use dartsync_shared::codec::encode;
    use dartsync_shared::proto::p2p::{ChunkListPage, P2pRequest, P2pResponse};
    use dartsync_shared::proto::ptp::{Delta, DeltaEntry, Holder, PeerMessage, Register, TrackerMessage, Welcome};
    use dartsync_shared::record::PERMISSION_BITS;
    use dartsync_shared::test_util::{RecordBuilder, rel, vv};
    use dartsync_shared::{PeerId, codec};
    use proptest::prelude::*;

    fn state(content: [u8; 32], chunks: [u8; 32], size: u64, bits: &[bool]) -> PartState {
        let mut done = Bitmap::new(bits.len());
        for (i, &b) in bits.iter().enumerate() {
            done.set(i, b);
        }
        PartState { content: ContentHash(content), chunks_hash: ContentHash(chunks), size, done }
    }

    fn kind() -> impl Strategy<Value = FileKind> {
        prop_oneof![
            Just(FileKind::File),
            Just(FileKind::Dir),
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}".prop_map(|target| FileKind::Symlink { target }),
        ]
    }

    /// Valid records, with mode bits beyond 0o777 sometimes (the index
    /// masks them on the way back, as older versions stored them).
    fn record() -> impl Strategy<Value = FileRecord> {
        (
            "[a-z]{1,6}(/[a-z0-9_-][a-z0-9 ._-]{0,5}){0,3}",
            kind(),
            any::<u64>(),
            any::<i64>(),
            0u32..0o10000,
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            prop::collection::vec((any::<u64>(), 1u64..(1 << 62)), 1..6),
            any::<bool>(),
        )
            .prop_map(|(path, kind, size, mtime_ns, mode, content, chunks, version, deleted)| {
                let non_file = deleted || kind != FileKind::File;
                FileRecord {
                    path: rel(&path),
                    kind,
                    size: if non_file { 0 } else { size },
                    mtime_ns,
                    mode,
                    content: ContentHash(content),
                    chunks: ContentHash(chunks),
                    version: VersionVector::from_entries(version.into_iter().map(|(p, c)| (ShortId(p), c))),
                    deleted,
                }
            })
    }

    fn stat() -> impl Strategy<Value = Option<StatKey>> {
        prop::option::of(
            (any::<u64>(), any::<i64>(), any::<u64>(), 0u32..0o10000)
                .prop_map(|(size, mtime_ns, inode, mode)| StatKey { size, mtime_ns, inode, mode }),
        )
    }

    fn chunk_list() -> impl Strategy<Value = Vec<ChunkInfo>> {
        prop::collection::vec(
            (any::<u64>(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(offset, len, hash)| ChunkInfo {
                offset,
                len,
                hash: ContentHash(hash),
            }),
            0..40,
        )
    }

    /// Reads the one entry of an index holding `head` (+ `chunks`) raw.
    fn read_back(head: &[u8], chunks: Option<&[u8]>) -> Vec<IndexEntry> {
        let scratch = scratch().unwrap();
        let path = scratch.dir.join("index.redb");
        write_raw(&path, CHUNKS_KEY, head, chunks).unwrap();
        Index::open(&path).unwrap().all().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic_the_state_decoder(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = part_state(&bytes);
            let _ = part_state_sealed(&bytes);
            prop_assert_ne!(part_state_reencodes(&bytes), Some(false));
            prop_assert_ne!(part_state_reencodes(&seal(&bytes)), Some(false));
        }

        #[test]
        fn states_round_trip_and_damaged_ones_never_panic(
            content in any::<[u8; 32]>(),
            chunks in any::<[u8; 32]>(),
            size in any::<u64>(),
            bits in prop::collection::vec(any::<bool>(), 0..300),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let state = state(content, chunks, size, &bits);
            let bytes = state.encode();
            prop_assert_eq!(PartState::decode(&bytes), Some(state));
            prop_assert_eq!(part_state_reencodes(&bytes), Some(true));
            // Any strict truncation fails (the length is part of the format).
            let cut = at.index(bytes.len());
            prop_assert!(!part_state(&bytes[..cut]));
            // A flipped byte fails the trailer...
            let mut bad = bytes.clone();
            bad[at.index(bytes.len())] ^= flip;
            prop_assert!(!part_state(&bad));
            // ... and with a recomputed trailer reaches the field checks.
            let body = &bytes[..bytes.len() - 32];
            let mut bad = body.to_vec();
            if !bad.is_empty() {
                let i = at.index(bad.len());
                bad[i] ^= flip;
            }
            let _ = part_state_sealed(&bad);
            prop_assert_ne!(part_state_reencodes(&seal(&bad)), Some(false));
        }
    }

    proptest! {
        // One redb file per case: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_index_values_never_panic(
            key in "[a-zA-Z./ ]{0,12}",
            head in prop::collection::vec(any::<u8>(), 0..160),
            chunks in prop::collection::vec(any::<u8>(), 0..160),
        ) {
            index_entry(&key, &head).unwrap();
            index_chunks(&chunks).unwrap();
            index_values(&key, &head, Some(&chunks)).unwrap();
        }

        #[test]
        fn entries_round_trip_and_damaged_ones_never_panic(
            record in record(),
            stat in stat(),
            chunks in chunk_list(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let mut record = record;
            record.path = rel(CHUNKS_KEY);
            let chunks = if record.is_file() { chunks } else { Vec::new() };
            let (head, list) = encode_raw(&record, &chunks, stat).unwrap();
            prop_assert_eq!(list.is_some(), record.is_file());
            let back = read_back(&head, list.as_deref());
            let mut expected = record.clone();
            expected.mode &= PERMISSION_BITS;
            let stat = stat.map(|s| StatKey { mode: s.mode & PERMISSION_BITS, ..s });
            prop_assert_eq!(back, vec![IndexEntry { record: expected, chunks: chunks.clone(), stat }]);
            prop_assert!(index_values(CHUNKS_KEY, &head, list.as_deref()).unwrap());

            // Strict truncations of a valid head or chunk list never decode.
            let cut = at.index(head.len());
            prop_assert!(!index_entry(CHUNKS_KEY, &head[..cut]).unwrap());
            let mut bad = head.clone();
            bad[at.index(head.len())] ^= flip;
            let _ = index_entry(CHUNKS_KEY, &bad).unwrap();
            if let Some(list) = list {
                let cut = at.index(list.len());
                prop_assert!(!index_chunks(&list[..cut]).unwrap());
                let mut bad = list.clone();
                bad[at.index(list.len())] ^= flip;
                let _ = index_chunks(&bad).unwrap();
            }
        }
    }

    #[test]
    fn the_chunk_list_target_stores_under_a_live_file() {
        assert!(
            index_chunks(&encode_raw(&RecordBuilder::file(CHUNKS_KEY).build(), &[], None).unwrap().1.unwrap()).unwrap()
        );
        assert!(!index_chunks(&[]).unwrap());
    }

    /// Writes the seed corpus of the cargo-fuzz targets in `tests/fuzz`
    /// when `DARTSYNC_FUZZ_CORPUS` names a folder (the targets' `corpus`
    /// folder); does nothing otherwise. The wire messages are seeded here
    /// too: `shared` has no fuzzing module and this crate's tests have every
    /// type at hand. The tracker's store values are seeded by the tracker's
    /// `fuzzing` tests.
    #[test]
    fn write_fuzz_corpus() {
        let Some(root) = std::env::var_os("DARTSYNC_FUZZ_CORPUS").map(std::path::PathBuf::from) else { return };
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let file = RecordBuilder::file("docs/a b.txt").body("hello").vv(&[(7, 2), (9, 1)]).build();
        let link = RecordBuilder::symlink("docs/link", "a b.txt").vv(&[(7, 3)]).build();
        let dir = RecordBuilder::dir("docs").mode(0o755).vv(&[(1, 1)]).build();
        let gone = RecordBuilder::file("old.txt").vv(&[(2, 5)]).tombstone().build();
        let hash = ContentHash::of(b"chunk");
        let chunk = ChunkInfo { offset: 0, len: 5, hash };

        let peer = [
            ("register", PeerMessage::Register(Register::new(PeerId([3; 16]), 4242, 17, 99, "test"))),
            (
                "announce",
                PeerMessage::Announce { records: vec![file.clone(), link.clone(), dir.clone(), gone.clone()] },
            ),
            ("have", PeerMessage::Have { path: rel("docs/a b.txt"), version: vv(&[(7, 2)]) }),
            ("keepalive", PeerMessage::KeepAlive),
            ("goodbye", PeerMessage::Goodbye),
            ("sources", PeerMessage::Sources { path: rel("docs/a b.txt"), version: vv(&[(7, 2)]) }),
        ];
        let holder = Holder { peer_id: PeerId([1; 16]), addr: "127.0.0.1:9".parse().unwrap() };
        let holder6 = Holder { peer_id: PeerId([2; 16]), addr: "[::1]:4242".parse().unwrap() };
        let tracker = [
            ("welcome", TrackerMessage::Welcome(Welcome { interval_ms: 10_000, piece_len: 262_144, epoch: 5, seq: 6 })),
            (
                "delta",
                TrackerMessage::Delta(Delta {
                    epoch: 5,
                    from_seq: 1,
                    to_seq: 4,
                    full: false,
                    entries: vec![
                        DeltaEntry { record: file.clone(), seq: 2, holders: vec![holder.clone(), holder6] },
                        DeltaEntry { record: link.clone(), seq: 3, holders: vec![holder] },
                        DeltaEntry { record: gone.clone(), seq: 4, holders: vec![] },
                    ],
                }),
            ),
            (
                "delta_full_empty",
                TrackerMessage::Delta(Delta { epoch: 6, from_seq: 0, to_seq: 0, full: true, entries: vec![] }),
            ),
            ("refused", TrackerMessage::Refused { reason: "tracker full".into() }),
            (
                "sources",
                TrackerMessage::Sources {
                    path: rel("docs/a b.txt"),
                    version: vv(&[(7, 2)]),
                    holders: vec![Holder { peer_id: PeerId([1; 16]), addr: "127.0.0.1:9".parse().unwrap() }],
                },
            ),
        ];
        let requests = [
            (
                "get_chunk_list",
                P2pRequest::GetChunkList { path: rel("docs/a b.txt"), content: file.content, first: 0, max: 65_536 },
            ),
            ("get_chunk", P2pRequest::GetChunk { content: file.content, offset: 0, len: 5, hash }),
        ];
        let responses = [
            (
                "chunk_list",
                P2pResponse::ChunkList(ChunkListPage {
                    content: file.content,
                    total: 1,
                    first: 0,
                    chunks: vec![chunk],
                }),
            ),
            (
                "chunk_list_end",
                P2pResponse::ChunkList(ChunkListPage { content: file.content, total: 1, first: 1, chunks: vec![] }),
            ),
            ("chunk", P2pResponse::Chunk { hash, bytes: b"chunk".to_vec() }),
            ("not_available", P2pResponse::NotAvailable),
            ("busy", P2pResponse::Busy),
        ];
        let mut stream = Vec::new();
        for (name, msg) in &peer {
            let bytes = encode(msg).unwrap();
            msg.validate().unwrap();
            write("ptp_peer_message", name, &bytes);
            stream.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
            stream.extend_from_slice(&bytes);
        }
        for (name, msg) in &tracker {
            msg.validate().unwrap();
            write("ptp_tracker_message", name, &encode(msg).unwrap());
        }
        for (name, msg) in &requests {
            msg.validate().unwrap();
            write("p2p_request", name, &encode(msg).unwrap());
        }
        for (name, msg) in &responses {
            msg.validate().unwrap();
            write("p2p_response", name, &encode(msg).unwrap());
        }
        // frame_codec: a first byte choosing the read size and bound, then the stream.
        for (name, first) in [("frames_whole", 0x00), ("frames_bytewise", 0x01), ("frames_bounded", 0x83)] {
            let mut bytes = vec![first];
            bytes.extend_from_slice(&stream);
            write("frame_codec", name, &bytes);
        }
        assert!(codec::decode::<PeerMessage>(&stream[4..]).is_err(), "the stream is framed");

        // index_entry: `key NUL value`.
        let stat = Some(StatKey { size: 5, mtime_ns: 1_700_000_000_000_000_000, inode: 42, mode: 0o644 });
        for (name, record, chunks, stat) in [
            ("file", &file, vec![chunk], stat),
            ("link", &link, vec![], stat),
            ("dir", &dir, vec![], None),
            ("tombstone", &gone, vec![], None),
        ] {
            let (head, list) = encode_raw(record, &chunks, stat).unwrap();
            let mut bytes = record.path.as_str().as_bytes().to_vec();
            bytes.push(0);
            bytes.extend_from_slice(&head);
            assert!(index_entry_input(&bytes).unwrap());
            write("index_entry", name, &bytes);
            if let Some(list) = list {
                assert!(index_chunks(&list).unwrap());
                write("index_chunks", name, &list);
            }
        }
        let many: Vec<ChunkInfo> = (0..64u32)
            .map(|i| ChunkInfo { offset: u64::from(i) * 4096, len: 4096, hash: ContentHash::of(&i.to_le_bytes()) })
            .collect();
        let (_, list) = encode_raw(&RecordBuilder::file(CHUNKS_KEY).size(64 * 4096).build(), &many, None).unwrap();
        write("index_chunks", "many", &list.unwrap());
        let (_, list) = encode_raw(&RecordBuilder::file(CHUNKS_KEY).build(), &[], None).unwrap();
        write("index_chunks", "empty", &list.unwrap());

        // part_state: whole state files, and bodies for the sealed variant.
        for (name, n) in [("none", 0), ("one", 1), ("byte", 8), ("odd", 13), ("many", 200)] {
            let bits: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
            let bytes = state(file.content.0, file.chunks.0, 12_345, &bits).encode();
            assert!(part_state(&bytes));
            write("part_state", name, &bytes);
            write("part_state", &format!("{name}_body"), &bytes[..bytes.len() - 32]);
        }
    }
}
