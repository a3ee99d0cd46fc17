//! Fuzzing entry points: thin wrappers that feed arbitrary bytes to the
//! tracker's decoders of its database values and say whether they decoded.
//!
//! Not an API. Compiled only with the `fuzzing` feature (which the
//! cargo-fuzz project in `tests/fuzz` enables) and in unit tests, hidden
//! from the docs, free to change at any time.
//!
//! The stored value types (`StoredMeta`, `StoredEntry`, `StoredPeer`) and
//! their decoding are private to [`crate::store`], so they are reached the
//! way the tracker reaches them: the bytes are written raw into the `meta`,
//! `entries` and `peers` tables of a fresh `tracker.redb` in a scratch
//! folder and `Store::open` loads the database (decoding and validating
//! every value, migrating or dropping what older versions wrote). One redb
//! file per input, in a scratch folder on `/dev/shm` (`TMPDIR` when set).
//!
//! The wrappers add no panic of their own: a panic under them is a bug in
//! the store's loading. Failures of the scaffolding (scratch folder, redb)
//! are [`HarnessError`]s, never a verdict on the input.

use std::collections::BTreeSet;
use std::path::Path;

use dartsync_shared::test_util::{ScratchDir, harness};
use redb::{Database, TableDefinition};

use crate::store::{DB_FILE, Store, StoreError};

/// The store's `meta` table, by name and type.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The store's `entries` table (path -> stored entry).
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// The store's `peers` table (peer id bytes -> stored known peer).
const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");
/// The one key of the `meta` table.
pub const META_KEY: &str = "meta";

/// The scaffolding around a decoder failed (not a verdict on the input).
pub use dartsync_shared::test_util::HarnessError;

/// Raw rows of a tracker database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rows<'a> {
    /// The value under `meta` in the `meta` table (the store creates one
    /// when there is none).
    pub meta: Option<&'a [u8]>,
    /// `entries`: path -> stored entry.
    pub entries: &'a [(&'a str, &'a [u8])],
    /// `peers`: peer id bytes (16 when valid) -> stored known peer.
    pub peers: &'a [(&'a [u8], &'a [u8])],
}

/// Writes `rows` raw into a fresh database and loads it as the tracker does
/// at start-up: true when it loaded and kept every entry and peer.
pub fn store(rows: Rows<'_>) -> Result<bool, HarnessError> {
    let scratch = scratch()?;
    write_raw(&scratch.dir.join(DB_FILE), rows)?;
    match Store::open(&scratch.dir) {
        Ok((_, loaded)) => {
            let entries = rows.entries.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>().len();
            let peers = rows.peers.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>().len();
            Ok(loaded.entries.len() == entries && loaded.known.len() == peers)
        }
        Err(e @ (StoreError::Db { .. } | StoreError::Encode { .. })) => Err(harness("load the store", e)),
        Err(
            StoreError::Decode { .. } | StoreError::Path { .. } | StoreError::Record { .. } | StoreError::PeerId { .. },
        ) => Ok(false),
    }
}

/// [`store`] of `bytes` as the tracker's global values.
pub fn meta(bytes: &[u8]) -> Result<bool, HarnessError> {
    store(Rows { meta: Some(bytes), ..Rows::default() })
}

/// [`store`] of `bytes` as the entry of path `key`.
pub fn entry(key: &str, bytes: &[u8]) -> Result<bool, HarnessError> {
    store(Rows { entries: &[(key, bytes)], ..Rows::default() })
}

/// [`store`] of `bytes` as the known peer whose id bytes are `key`.
pub fn known_peer(key: &[u8], bytes: &[u8]) -> Result<bool, HarnessError> {
    store(Rows { peers: &[(key, bytes)], ..Rows::default() })
}

/// The input format of the `tracker_store` fuzz target: the first byte
/// picks the table (modulo 3), the rest is
/// - 0: the `meta` value;
/// - 1: an entry, `path NUL value` (no NUL: path `a`, all of it the value;
///   a path that is not UTF-8 is read lossily);
/// - 2: a known peer, 16 bytes of id then the value (fewer bytes: all of
///   them the id, an empty value).
pub fn store_input(data: &[u8]) -> Result<bool, HarnessError> {
    let Some((&which, rest)) = data.split_first() else { return Ok(false) };
    match which % 3 {
        0 => meta(rest),
        1 => {
            let (key, value) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (String::from_utf8_lossy(&rest[..at]), &rest[at + 1..]),
                None => ("a".into(), rest),
            };
            entry(&key, value)
        }
        _ => {
            let (key, value) = rest.split_at(rest.len().min(16));
            known_peer(key, value)
        }
    }
}

/// Writes `rows` into a new redb file at `path`.
fn write_raw(path: &Path, rows: Rows<'_>) -> Result<(), HarnessError> {
    let db = Database::create(path).map_err(|e| harness("create a database", e))?;
    let txn = db.begin_write().map_err(|e| harness("begin a write", e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| harness("open a table", e))?;
        if let Some(value) = rows.meta {
            meta.insert(META_KEY, value).map_err(|e| harness("write a value", e))?;
        }
        let mut entries = txn.open_table(ENTRIES).map_err(|e| harness("open a table", e))?;
        for &(key, value) in rows.entries {
            entries.insert(key, value).map_err(|e| harness("write a value", e))?;
        }
        let mut peers = txn.open_table(PEERS).map_err(|e| harness("open a table", e))?;
        for &(key, value) in rows.peers {
            peers.insert(key, value).map_err(|e| harness("write a value", e))?;
        }
    }
    txn.commit().map_err(|e| harness("commit", e))
}

/// A fresh scratch folder for one input.
fn scratch() -> Result<ScratchDir, HarnessError> {
    ScratchDir::new("dartsync-tracker-fuzz").map_err(|e| harness("create a scratch folder", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KnownPeer, PendingWrite, PersistedEntry};
    use dartsync_shared::record::PERMISSION_BITS;
    use dartsync_shared::test_util::{RecordBuilder, rel};
    use dartsync_shared::{ContentHash, FileKind, FileRecord, PeerId, ShortId, VersionVector};
    use proptest::prelude::*;
    use redb::{ReadableDatabase, ReadableTable};

    fn kind() -> impl Strategy<Value = FileKind> {
        prop_oneof![
            Just(FileKind::File),
            Just(FileKind::Dir),
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}".prop_map(|target| FileKind::Symlink { target }),
        ]
    }

    fn persisted() -> impl Strategy<Value = PersistedEntry> {
        (
            "[a-z]{1,6}(/[a-z0-9_-][a-z0-9 ._-]{0,5}){0,3}",
            kind(),
            (any::<u64>(), any::<i64>(), 0u32..0o10000),
            (any::<[u8; 32]>(), any::<[u8; 32]>()),
            prop::collection::vec((any::<u64>(), 1u64..(1 << 62)), 1..6),
            any::<bool>(),
            (any::<u64>(), any::<[u8; 16]>(), any::<Option<u64>>()),
        )
            .prop_map(
                |(path, kind, (size, mtime_ns, mode), (content, chunks), version, deleted, (seq, author, at))| {
                    let non_file = deleted || kind != FileKind::File;
                    let record = FileRecord {
                        path: rel(&path),
                        kind,
                        size: if non_file { 0 } else { size },
                        mtime_ns,
                        mode,
                        content: ContentHash(content),
                        chunks: ContentHash(chunks),
                        version: VersionVector::from_entries(version.into_iter().map(|(p, c)| (ShortId(p), c))),
                        deleted,
                    };
                    PersistedEntry { record, seq, author: PeerId(author), deleted_at: at }
                },
            )
    }

    /// The raw rows of a database holding exactly `write` and the meta
    /// values, written by the store itself: (meta, entries, peers).
    type RawRows = (Vec<u8>, Vec<(String, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>);

    fn encode_rows(epoch: u64, ceiling: u64, write: &PendingWrite) -> RawRows {
        let scratch = scratch().unwrap();
        {
            let (store, _) = Store::open(&scratch.dir).unwrap();
            store.commit(epoch, write, Some(ceiling)).unwrap();
        }
        let db = Database::open(scratch.dir.join(DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap().get(META_KEY).unwrap().unwrap().value().to_vec();
        let entries = txn
            .open_table(ENTRIES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect();
        let peers = txn
            .open_table(PEERS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        (meta, entries, peers)
    }

    proptest! {
        // One redb file per case: few cases.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_values_never_panic(
            key in "[a-zA-Z./ ]{0,12}",
            id in prop::collection::vec(any::<u8>(), 0..20),
            value in prop::collection::vec(any::<u8>(), 0..160),
            input in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            meta(&value).unwrap();
            entry(&key, &value).unwrap();
            known_peer(&id, &value).unwrap();
            store_input(&input).unwrap();
        }

        #[test]
        fn values_round_trip_and_damaged_ones_never_panic(
            entry in persisted(),
            peer in (any::<[u8; 16]>(), any::<u64>(), any::<u64>()),
            (epoch, ceiling) in (1u64.., any::<u64>()),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let (id, acked_seq, last_seen_unix) = peer;
            let known = KnownPeer { acked_seq, last_seen_unix };
            let write = PendingWrite {
                put_entries: vec![entry.clone()],
                put_peers: vec![(PeerId(id), known)],
                ..PendingWrite::default()
            };
            let (meta_bytes, entries, peers) = encode_rows(epoch, ceiling, &write);
            prop_assert_eq!(entries.len(), 1);
            prop_assert_eq!(peers.len(), 1);
            let (key, value) = (&entries[0].0, &entries[0].1);
            let (peer_key, peer_value) = (&peers[0].0, &peers[0].1);
            let rows = Rows {
                meta: Some(&meta_bytes),
                entries: &[(key, value)],
                peers: &[(peer_key, peer_value)],
            };
            prop_assert!(store(rows).unwrap());

            // What loads is what was written (mode bits beyond 0o777 masked).
            let scratch = scratch().unwrap();
            write_raw(&scratch.dir.join(DB_FILE), rows).unwrap();
            let (_, loaded) = Store::open(&scratch.dir).unwrap();
            let mut expected = entry;
            expected.record.mode &= PERMISSION_BITS;
            prop_assert_eq!((loaded.epoch, loaded.seq_ceiling), (epoch, ceiling));
            prop_assert_eq!(loaded.entries, vec![expected]);
            prop_assert_eq!(loaded.known, vec![(PeerId(id), known)]);

            // Strict truncations never load; flipped bytes never panic.
            for (i, bytes) in [&meta_bytes, value, peer_value].into_iter().enumerate() {
                let cut = &bytes[..at.index(bytes.len())];
                let mut bad = bytes.clone();
                bad[at.index(bytes.len())] ^= flip;
                for (input, truncated) in [(cut, true), (&bad[..], false)] {
                    let loaded = match i {
                        0 => meta(input),
                        1 => super::entry(key, input),
                        _ => known_peer(peer_key, input),
                    }
                    .unwrap();
                    prop_assert!(!(truncated && loaded), "a truncated value loaded");
                }
            }
        }
    }

    #[test]
    fn input_format_reaches_each_table() {
        assert!(!store_input(&[]).unwrap());
        // A fresh database with no meta value gets one.
        assert!(store(Rows::default()).unwrap());
        assert!(!store_input(&[0]).unwrap(), "an empty meta value is corrupt");
        assert!(!store_input(&[2, 1, 2, 3]).unwrap(), "a 3-byte peer id is refused");
        assert!(!store_input(b"\x01../x\x00").unwrap(), "a path outside the folder is refused");
    }

    /// Writes the seed corpus of the `tracker_store` cargo-fuzz target in
    /// `tests/fuzz` when `DARTSYNC_FUZZ_CORPUS` names a folder (the
    /// targets' `corpus` folder); does nothing otherwise.
    #[test]
    fn write_fuzz_corpus() {
        let Some(root) = std::env::var_os("DARTSYNC_FUZZ_CORPUS").map(std::path::PathBuf::from) else { return };
        let dir = root.join("tracker_store");
        std::fs::create_dir_all(&dir).unwrap();
        let put =
            |record: FileRecord, seq, deleted_at| PersistedEntry { record, seq, author: PeerId([7; 16]), deleted_at };
        let write = PendingWrite {
            put_entries: vec![
                put(RecordBuilder::file("docs/a b.txt").body("hello").vv(&[(7, 2), (9, 1)]).build(), 3, None),
                put(RecordBuilder::symlink("docs/link", "a b.txt").vv(&[(7, 3)]).build(), 4, None),
                put(RecordBuilder::dir("shared").mode(0o775).vv(&[(1, 1)]).build(), 5, None),
                put(RecordBuilder::file("old.txt").vv(&[(2, 5)]).tombstone().build(), 6, Some(1_700_000_000)),
            ],
            put_peers: vec![(PeerId([1; 16]), KnownPeer { acked_seq: 6, last_seen_unix: 1_700_000_100 })],
            ..PendingWrite::default()
        };
        let (meta_bytes, entries, peers) = encode_rows(0x1234_5678_9abc_def0, 4096 + 6, &write);
        let mut seed = vec![0];
        seed.extend_from_slice(&meta_bytes);
        std::fs::write(dir.join("meta"), &seed).unwrap();
        for (i, (key, value)) in entries.iter().enumerate() {
            let mut seed = vec![1];
            seed.extend_from_slice(key.as_bytes());
            seed.push(0);
            seed.extend_from_slice(value);
            assert!(store_input(&seed).unwrap(), "{key}");
            std::fs::write(dir.join(format!("entry_{i}")), &seed).unwrap();
        }
        for (i, (key, value)) in peers.iter().enumerate() {
            let mut seed = vec![2];
            seed.extend_from_slice(key);
            seed.extend_from_slice(value);
            assert!(store_input(&seed).unwrap());
            std::fs::write(dir.join(format!("peer_{i}")), &seed).unwrap();
        }
    }
}
