//! [`CompactRecord`]: a `FileRecord` as the in-memory table keeps it.
//!
//! The tracker holds one record per path for the whole folder, on a Pi, so
//! the table does not store the wire type: the path lives once, in the
//! table's key, and the version vector is a boxed slice instead of a
//! `BTreeMap` (whose first node alone costs about 200 bytes). Converting
//! back ([`CompactRecord::to_record`]) yields exactly the record that was
//! stored; the causality and content comparisons the rules need work on the
//! compact form directly.
//!
//! Not here: any rule about which record wins (see `state`).

use dartsync_shared::{Causality, ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};

/// Kind of a compact record; a symlink target is boxed (16 bytes, not 24).
#[derive(Debug, Clone, PartialEq, Eq)]
enum CompactKind {
    File,
    Dir,
    Symlink(Box<str>),
}

/// One version of one path, without its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactRecord {
    kind: CompactKind,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    deleted: bool,
    content: ContentHash,
    chunks: ContentHash,
    /// `(peer, counter)` in peer order, no zero counters (as in `VersionVector`).
    version: Box<[(ShortId, u64)]>,
}

impl CompactRecord {
    /// The compact form of `record` (its path is dropped).
    pub fn new(record: FileRecord) -> Self {
        CompactRecord {
            kind: match record.kind {
                FileKind::File => CompactKind::File,
                FileKind::Dir => CompactKind::Dir,
                FileKind::Symlink { target } => CompactKind::Symlink(target.into_boxed_str()),
            },
            size: record.size,
            mtime_ns: record.mtime_ns,
            mode: record.mode,
            deleted: record.deleted,
            content: record.content,
            chunks: record.chunks,
            version: record.version.iter().collect(),
        }
    }

    /// The full record at `path`.
    pub fn to_record(&self, path: &RelPath) -> FileRecord {
        FileRecord {
            path: path.clone(),
            kind: match &self.kind {
                CompactKind::File => FileKind::File,
                CompactKind::Dir => FileKind::Dir,
                CompactKind::Symlink(target) => FileKind::Symlink { target: target.to_string() },
            },
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
        VersionVector::from_entries(self.version.iter().copied())
    }

    /// True for a tombstone.
    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// Number of entries of the version vector.
    pub fn version_len(&self) -> usize {
        self.version.len()
    }

    /// Length of the symlink target, 0 for other kinds.
    pub fn target_len(&self) -> usize {
        match &self.kind {
            CompactKind::Symlink(target) => target.len(),
            _ => 0,
        }
    }

    /// How `other`'s version relates to this one (`other.compare(self)`).
    pub fn compare_from(&self, other: &VersionVector) -> Causality {
        other.compare(&self.version())
    }

    /// True when the version vector is exactly `other`.
    pub fn version_is(&self, other: &VersionVector) -> bool {
        self.version.len() == other.len() && self.version.iter().copied().eq(other.iter())
    }

    /// `FileRecord::same_content` against a full record.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        let kind_eq = match (&self.kind, &other.kind) {
            (CompactKind::File, FileKind::File) | (CompactKind::Dir, FileKind::Dir) => true,
            (CompactKind::Symlink(a), FileKind::Symlink { target: b }) => **a == **b,
            _ => false,
        };
        self.deleted == other.deleted
            && kind_eq
            && (self.deleted || (self.content == other.content && self.size == other.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::RecordBuilder;

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
