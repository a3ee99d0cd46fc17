//! [`CompactRecord`]: a `FileRecord` as the in-memory table keeps it.
//!
//! The tracker holds one record per path for the whole folder, on a Pi, so
//! the table does not store the wire type: the path lives once, in the
//! table's key, and the version vector is one pair in place (one writer,
//! most records) or a boxed slice, instead of a `BTreeMap` (whose first
//! node alone costs about 200 bytes). Converting
//! back ([`CompactRecord::to_record`]) yields exactly the record that was
//! stored; the causality and content comparisons the rules need work on the
//! compact form directly.
//!
//! [`RecordAt`] serializes a compact record under its path byte for byte
//! as the `FileRecord` it stands for, so delta pages are encoded straight
//! from the table (no record, path copy or vector map built per entry).
//!
//! Not here: any rule about which record wins (see `state`).

use dartsync_shared::{Causality, ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, SerializeStructVariant, Serializer};

/// A version vector with one writer (most records) needs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CompactVersion {
    /// Exactly one `(peer, counter)`.
    One((ShortId, u64)),
    /// None, or more than one, in peer order.
    Many(Box<[(ShortId, u64)]>),
}

impl CompactVersion {
    fn as_slice(&self) -> &[(ShortId, u64)] {
        match self {
            CompactVersion::One(pair) => std::slice::from_ref(pair),
            CompactVersion::Many(pairs) => pairs,
        }
    }
}

/// One version of one path, without its path: 120 bytes, and a heap block
/// only for a symlink's target or a vector of several writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactRecord {
    size: u64,
    mtime_ns: i64,
    content: ContentHash,
    chunks: ContentHash,
    /// `(peer, counter)` in peer order, no zero counters (as in `VersionVector`).
    version: CompactVersion,
    /// A symlink's target (doubly boxed: a thin pointer, 8 bytes); `None`
    /// for files and folders.
    symlink: Option<Box<Box<str>>>,
    mode: u32,
    /// A folder (when `symlink` is `None`).
    dir: bool,
    deleted: bool,
}

impl CompactRecord {
    /// The compact form of `record` (its path is dropped).
    pub fn new(record: FileRecord) -> Self {
        let (dir, symlink) = match record.kind {
            FileKind::File => (false, None),
            FileKind::Dir => (true, None),
            FileKind::Symlink { target } => (false, Some(Box::new(target.into_boxed_str()))),
        };
        let version = match record.version.len() {
            1 => CompactVersion::One(record.version.iter().next().expect("one entry")),
            _ => CompactVersion::Many(record.version.iter().collect()),
        };
        CompactRecord {
            size: record.size,
            mtime_ns: record.mtime_ns,
            content: record.content,
            chunks: record.chunks,
            version,
            symlink,
            mode: record.mode,
            dir,
            deleted: record.deleted,
        }
    }

    fn kind(&self) -> FileKind {
        match (&self.symlink, self.dir) {
            (Some(target), _) => FileKind::Symlink { target: target.to_string() },
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
            chunks: self.chunks,
            version: self.version(),
            deleted: self.deleted,
        }
    }

    /// The version vector.
    pub fn version(&self) -> VersionVector {
        VersionVector::from_entries(self.version.as_slice().iter().copied())
    }

    /// True for a tombstone.
    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// Number of entries of the version vector.
    pub fn version_len(&self) -> usize {
        self.version.as_slice().len()
    }

    /// Length of the symlink target, 0 for other kinds.
    pub fn target_len(&self) -> usize {
        self.symlink.as_ref().map_or(0, |target| target.len())
    }

    /// How `other`'s version relates to this one (`other.compare(self)`).
    pub fn compare_from(&self, other: &VersionVector) -> Causality {
        other.compare(&self.version())
    }

    /// True when the version vector is exactly `other`.
    pub fn version_is(&self, other: &VersionVector) -> bool {
        let mine = self.version.as_slice();
        mine.len() == other.len() && mine.iter().copied().eq(other.iter())
    }

    /// `FileRecord::same_content` against a full record.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        let kind_eq = match (&self.symlink, self.dir, &other.kind) {
            (None, false, FileKind::File) | (None, true, FileKind::Dir) => true,
            (Some(a), _, FileKind::Symlink { target: b }) => ***a == **b,
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
        out.serialize_field("chunks", &r.chunks)?;
        out.serialize_field("version", &VersionOf(r.version.as_slice()))?;
        out.serialize_field("deleted", &r.deleted)?;
        out.end()
    }
}

/// A record's kind, serialized as `FileKind`.
struct KindOf<'a>(&'a CompactRecord);

impl Serialize for KindOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (&self.0.symlink, self.0.dir) {
            (Some(target), _) => {
                let mut out = serializer.serialize_struct_variant("FileKind", 2, "Symlink", 1)?;
                out.serialize_field("target", &***target)?;
                out.end()
            }
            (None, true) => serializer.serialize_unit_variant("FileKind", 1, "Dir"),
            (None, false) => serializer.serialize_unit_variant("FileKind", 0, "File"),
        }
    }
}

/// A vector's pairs, serialized as `VersionVector` (a newtype around a map).
struct VersionOf<'a>(&'a [(ShortId, u64)]);

impl Serialize for VersionOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct("VersionVector", &PairsAsMap(self.0))
    }
}

struct PairsAsMap<'a>(&'a [(ShortId, u64)]);

impl Serialize for PairsAsMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(self.0.len()))?;
        for (peer, counter) in self.0 {
            out.serialize_entry(peer, counter)?;
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::codec;
    use dartsync_shared::test_util::RecordBuilder;

    #[test]
    fn a_record_of_one_writer_fits_120_bytes_without_a_heap_block() {
        assert_eq!(std::mem::size_of::<CompactRecord>(), 120);
        let record = RecordBuilder::file("a").body("x").version(VersionVector::from_entries([(ShortId(4), 9)])).build();
        let compact = CompactRecord::new(record.clone());
        assert!(matches!(compact.version, CompactVersion::One((ShortId(4), 9))));
        assert!(compact.symlink.is_none());
        assert_eq!(compact.to_record(&record.path), record);
        let empty = RecordBuilder::file("b").version(VersionVector::new()).build();
        assert_eq!(CompactRecord::new(empty.clone()).to_record(&empty.path), empty, "an empty vector round-trips");
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
            RecordBuilder::file("gone").version(two).tombstone(),
            RecordBuilder::file("none").version(VersionVector::new()),
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
