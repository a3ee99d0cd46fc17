//! [`CompactRecord`]: a `FileRecord` as the in-memory table keeps it.
//!
//! The tracker holds one record per path for the whole folder, on a Pi, so
//! the table does not store the wire type: the path lives once, in the
//! table's key, and the version vector's first pair is in place (one
//! writer, most records), the others and a symlink's target behind one
//! thin pointer that most records leave empty, instead of a `BTreeMap`
//! (whose first node alone costs about 200 bytes). The chunk-list hash is
//! kept only where it does not follow from the size and content hash
//! ([`ChunksForm`]): a folder, a tombstone, an empty file and a file of one
//! chunk (most files) need none of its 32 bytes. Converting
//! back ([`CompactRecord::to_record`]) yields exactly the record that was
//! stored; the causality and content comparisons the rules need work on the
//! compact form directly.
//!
//! [`RecordAt`] serializes a compact record under its path byte for byte
//! as the `FileRecord` it stands for, so delta pages are encoded straight
//! from the table (no record, path copy or vector map built per entry).
//!
//! Not here: any rule about which record wins (see `state`).

use dartsync_shared::chunk::whole_file_list_hash;
use dartsync_shared::{Causality, ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, SerializeStructVariant, Serializer};

/// What few records have: more than one writer, a symlink's target, a
/// chunk list of several chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extra {
    /// The vector's pairs after the first, in peer order.
    more: Box<[(ShortId, u64)]>,
    /// A symlink's target.
    symlink: Option<Box<str>>,
    /// The chunk-list hash of a [`ChunksForm::Listed`] record.
    chunks: Option<ContentHash>,
}

/// Where a record's chunk-list hash comes from. The form is chosen from the
/// hash itself, so equal records have equal forms, and any hash a peer
/// sends (even one that matches no file) is kept exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunksForm {
    /// The hash of an empty list ([`ContentHash::empty`]): folders,
    /// tombstones, empty files.
    Empty,
    /// The hash of one chunk holding the whole file ([`whole_file_list_hash`]).
    Whole,
    /// Anything else, kept in [`Extra::chunks`].
    Listed,
}

/// `CompactRecord::first` of an empty vector (no counter of a vector is 0).
const NO_PAIR: (ShortId, u64) = (ShortId(0), 0);

/// One version of one path, without its path: 80 bytes, and a heap block
/// only for a symlink's target, a vector of several writers or a chunk
/// list of several chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactRecord {
    size: u64,
    mtime_ns: i64,
    content: ContentHash,
    /// The vector's first `(peer, counter)` ([`NO_PAIR`] when it is
    /// empty); pairs in peer order, no zero counters (as in `VersionVector`).
    first: (ShortId, u64),
    /// The other pairs, a symlink's target and a listed chunk-list hash,
    /// for the few records that have any (a thin pointer, 8 bytes).
    extra: Option<Box<Extra>>,
    mode: u32,
    /// A folder (when there is no symlink target).
    dir: bool,
    deleted: bool,
    /// Where the chunk-list hash comes from.
    chunks: ChunksForm,
}

impl CompactRecord {
    /// The compact form of `record` (its path is dropped).
    pub fn new(record: FileRecord) -> Self {
        let (dir, symlink) = match record.kind {
            FileKind::File => (false, None),
            FileKind::Dir => (true, None),
            FileKind::Symlink { target } => (false, Some(target.into_boxed_str())),
        };
        let mut pairs = record.version.iter();
        let first = pairs.next().unwrap_or(NO_PAIR);
        let more: Box<[(ShortId, u64)]> = pairs.collect();
        let (chunks, listed) = if record.chunks == ContentHash::empty() {
            (ChunksForm::Empty, None)
        } else if whole_file_list_hash(record.size, record.content) == Some(record.chunks) {
            (ChunksForm::Whole, None)
        } else {
            (ChunksForm::Listed, Some(record.chunks))
        };
        let extra = (!more.is_empty() || symlink.is_some() || listed.is_some())
            .then(|| Box::new(Extra { more, symlink, chunks: listed }));
        CompactRecord {
            size: record.size,
            mtime_ns: record.mtime_ns,
            content: record.content,
            first,
            extra,
            mode: record.mode,
            dir,
            deleted: record.deleted,
            chunks,
        }
    }

    /// The chunk-list hash.
    fn chunks(&self) -> ContentHash {
        let listed = || self.extra.as_ref().and_then(|extra| extra.chunks);
        match self.chunks {
            ChunksForm::Empty => None,
            // `new` picks `Whole` only where `whole_file_list_hash` is `Some`.
            ChunksForm::Whole => whole_file_list_hash(self.size, self.content),
            ChunksForm::Listed => listed(),
        }
        .unwrap_or_else(ContentHash::empty)
    }

    /// A symlink's target.
    fn symlink(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|extra| extra.symlink.as_deref())
    }

    /// The vector's pairs, in peer order.
    fn pairs(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        let first = Some(self.first).filter(|pair| *pair != NO_PAIR);
        let more: &[(ShortId, u64)] = self.extra.as_ref().map_or(&[], |extra| &extra.more);
        first.into_iter().chain(more.iter().copied())
    }

    fn kind(&self) -> FileKind {
        match (self.symlink(), self.dir) {
            (Some(target), _) => FileKind::Symlink { target: target.to_owned() },
            (None, true) => FileKind::Dir,
            (None, false) => FileKind::File,
        }
    }

    /// The full record at `path`.
    pub fn to_record(&self, path: &RelPath) -> FileRecord {
        FileRecord {
            path: path.clone(),
            kind: self.kind(),
            size: self.size,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            content: self.content,
            chunks: self.chunks(),
            version: self.version(),
            deleted: self.deleted,
        }
    }

    /// The version vector.
    pub fn version(&self) -> VersionVector {
        VersionVector::from_entries(self.pairs())
    }

    /// True for a tombstone.
    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// Number of entries of the version vector.
    pub fn version_len(&self) -> usize {
        usize::from(self.first != NO_PAIR) + self.extra.as_ref().map_or(0, |extra| extra.more.len())
    }

    /// Length of the symlink target, 0 for other kinds.
    pub fn target_len(&self) -> usize {
        self.symlink().map_or(0, str::len)
    }

    /// How `other`'s version relates to this one (`other.compare(self)`).
    pub fn compare_from(&self, other: &VersionVector) -> Causality {
        other.compare(&self.version())
    }

    /// True when the version vector is exactly `other`.
    pub fn version_is(&self, other: &VersionVector) -> bool {
        self.version_len() == other.len() && self.pairs().eq(other.iter())
    }

    /// `FileRecord::same_content` against a full record.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        let kind_eq = match (self.symlink(), self.dir, &other.kind) {
            (None, false, FileKind::File) | (None, true, FileKind::Dir) => true,
            (Some(a), _, FileKind::Symlink { target: b }) => a == b,
            _ => false,
        };
        self.deleted == other.deleted
            && kind_eq
            && (self.deleted || (self.content == other.content && self.size == other.size))
    }
}

/// A compact record at its path, serialized exactly as
/// `FileRecord { path, kind, size, mtime_ns, mode, content, chunks,
/// version, deleted }` (serde's derive: fields in order; `RelPath` as a
/// string; `FileKind` as variants 0, 1, 2 `{ target }`; the vector as a
/// newtype around a map). A test holds it to the real encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordAt<'a> {
    /// The path (the table's key).
    pub path: &'a str,
    /// The record.
    pub record: &'a CompactRecord,
}

impl Serialize for RecordAt<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let mut out = serializer.serialize_struct("FileRecord", 9)?;
        out.serialize_field("path", self.path)?;
        out.serialize_field("kind", &KindOf(r))?;
        out.serialize_field("size", &r.size)?;
        out.serialize_field("mtime_ns", &r.mtime_ns)?;
        out.serialize_field("mode", &r.mode)?;
        out.serialize_field("content", &r.content)?;
        out.serialize_field("chunks", &r.chunks())?;
        out.serialize_field("version", &VersionOf(r))?;
        out.serialize_field("deleted", &r.deleted)?;
        out.end()
    }
}

/// A record's kind, serialized as `FileKind`.
struct KindOf<'a>(&'a CompactRecord);

impl Serialize for KindOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.0.symlink(), self.0.dir) {
            (Some(target), _) => {
                let mut out = serializer.serialize_struct_variant("FileKind", 2, "Symlink", 1)?;
                out.serialize_field("target", target)?;
                out.end()
            }
            (None, true) => serializer.serialize_unit_variant("FileKind", 1, "Dir"),
            (None, false) => serializer.serialize_unit_variant("FileKind", 0, "File"),
        }
    }
}

/// A record's vector, serialized as `VersionVector` (a newtype around a map).
struct VersionOf<'a>(&'a CompactRecord);

impl Serialize for VersionOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct("VersionVector", &PairsAsMap(self.0))
    }
}

struct PairsAsMap<'a>(&'a CompactRecord);

impl Serialize for PairsAsMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(self.0.version_len()))?;
        for (peer, counter) in self.0.pairs() {
            out.serialize_entry(&peer, &counter)?;
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
    use dartsync_shared::codec;
    use dartsync_shared::limits::MIN_PIECE_LEN;
    use dartsync_shared::test_util::RecordBuilder;

    #[test]
    fn a_record_of_one_writer_and_one_chunk_fits_80_bytes_without_a_heap_block() {
        assert_eq!(std::mem::size_of::<CompactRecord>(), 80);
        let record = RecordBuilder::file("a").body("x").version(VersionVector::from_entries([(ShortId(4), 9)])).build();
        let compact = CompactRecord::new(record.clone());
        assert_eq!(compact.first, (ShortId(4), 9));
        assert_eq!(compact.chunks, ChunksForm::Whole);
        assert!(compact.extra.is_none());
        assert_eq!(compact.to_record(&record.path), record);
        let empty = RecordBuilder::file("b").version(VersionVector::new()).build();
        assert_eq!(CompactRecord::new(empty.clone()).to_record(&empty.path), empty, "an empty vector round-trips");
    }

    #[test]
    fn only_a_chunk_list_hash_that_does_not_follow_from_the_content_is_kept() {
        let one = VersionVector::from_entries([(ShortId(1), 1)]);
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let chunked = chunk_bytes(&bytes, ChunkParams::for_piece_len(MIN_PIECE_LEN));
        assert!(chunked.chunks.len() > 1, "the big file is several chunks");
        let several = RecordBuilder::file("big").chunked(&chunked).version(one.clone()).build();
        let odd = RecordBuilder::file("odd").body("x").chunks(ContentHash::of(b"no such list")).version(one.clone());
        let cases = [
            (RecordBuilder::file("empty").body("").version(one.clone()).build(), ChunksForm::Empty),
            (RecordBuilder::dir("d").version(one.clone()).build(), ChunksForm::Empty),
            (RecordBuilder::file("gone").body("x").version(one.clone()).tombstone().build(), ChunksForm::Empty),
            (RecordBuilder::file("small").body("x").version(one.clone()).build(), ChunksForm::Whole),
            (several, ChunksForm::Listed),
            (odd.clone().build(), ChunksForm::Listed),
            (odd.size(u64::from(u32::MAX) + 1).build(), ChunksForm::Listed),
        ];
        for (record, form) in cases {
            let compact = CompactRecord::new(record.clone());
            assert_eq!(compact.chunks, form, "{}", record.path);
            assert_eq!(compact.extra.is_some(), form == ChunksForm::Listed, "{}", record.path);
            assert_eq!(compact.to_record(&record.path), record, "{}", record.path);
            let at = RecordAt { path: record.path.as_str(), record: &compact };
            assert_eq!(codec::encode(&at).unwrap(), codec::encode(&record).unwrap(), "{}", record.path);
        }
    }

    #[test]
    fn a_record_at_its_path_encodes_byte_for_byte_as_the_full_record() {
        let two = VersionVector::from_entries([(ShortId(3), 2), (ShortId(1), 7)]);
        let one = VersionVector::from_entries([(ShortId(u64::MAX), 1)]);
        for builder in [
            RecordBuilder::file("a/b c").body("x").version(two.clone()),
            RecordBuilder::file("ü/é.txt").body("").version(one.clone()),
            RecordBuilder::dir("d").version(one.clone()),
            RecordBuilder::symlink("a/l", "../ü/x").version(two.clone()),
            RecordBuilder::symlink("one/l", "x").version(one.clone()),
            RecordBuilder::file("gone").version(two).tombstone(),
            RecordBuilder::file("none").version(VersionVector::new()),
            RecordBuilder::file("listed").body("x").chunks(ContentHash::of(b"list")).version(one.clone()),
        ] {
            let record = builder.mtime_ns(-3).mode(0o751).build();
            let compact = CompactRecord::new(record.clone());
            let at = RecordAt { path: record.path.as_str(), record: &compact };
            assert_eq!(codec::encode(&at).unwrap(), codec::encode(&record).unwrap(), "{record:?}");
            assert_eq!(codec::encode_stored(&at).unwrap(), codec::encode_stored(&record).unwrap(), "{record:?}");
        }
    }

    #[test]
    fn round_trips_and_compares_like_the_full_record() {
        let vv = VersionVector::from_entries([(ShortId(3), 2), (ShortId(1), 7)]);
        for builder in
            [RecordBuilder::file("a/b").body("x"), RecordBuilder::dir("a/b"), RecordBuilder::symlink("a/b", "../x")]
        {
            let record = builder.mtime_ns(-3).mode(0o700).version(vv.clone()).build();
            let compact = CompactRecord::new(record.clone());
            assert_eq!(compact.to_record(&record.path), record);
            assert!(compact.version_is(&vv));
            assert!(!compact.version_is(&vv.bumped(ShortId(1)).unwrap()));
            assert!(!compact.version_is(&VersionVector::new()));
            assert_eq!(compact.compare_from(&vv.bumped(ShortId(9)).unwrap()), Causality::Dominates);
            assert!(compact.same_content(&record));
            let mut other = record.clone();
            other.content = ContentHash::of(b"z");
            assert_eq!(compact.same_content(&other), record.same_content(&other));
            other.deleted = true;
            assert!(!compact.same_content(&other));
        }
    }
}
