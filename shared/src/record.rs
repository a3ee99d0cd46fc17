//! [`FileRecord`]: what the tracker and the peers know about one path.
//!
//! A record describes one version of one path: its kind, size, mtime,
//! permission bits, content hash, chunk-list hash and version vector. A
//! deletion is a record with `deleted = true` (a tombstone) that keeps the
//! version vector, so a stale re-announcement of the old file loses to it.
//! Records travel in `Announce` and `Delta`; anything decoded from the wire
//! must pass [`FileRecord::validate`] before it is used.

use serde::{Deserialize, Serialize};

use crate::id::ContentHash;
use crate::limits::MAX_LINK_TARGET_LEN;
use crate::path::RelPath;
use crate::version::{VersionError, VersionVector};

/// The only mode bits a record carries: read, write and execute for user,
/// group and others. Setuid, setgid, sticky and file-type bits never travel
/// (a peer must not be able to plant a setuid file on another machine), and
/// a record with any of them is invalid.
pub const PERMISSION_BITS: u32 = 0o777;

/// What kind of filesystem entry a record describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file; its bytes are described by `content` and `chunks`.
    File,
    /// A directory (records keep empty folders alive).
    Dir,
    /// A symbolic link to a path inside the folder, relative to the link's
    /// own directory.
    Symlink {
        /// The link target as stored in the link.
        target: String,
    },
}

/// One version of one path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path, relative to the synced folder.
    pub path: RelPath,
    /// File, folder or symlink.
    pub kind: FileKind,
    /// Size in bytes (0 for folders, symlinks and tombstones).
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch. Data, not
    /// causality: restored on download, used only to break conflict ties.
    pub mtime_ns: i64,
    /// Unix permission bits, within [`PERMISSION_BITS`] (`0o777`).
    pub mode: u32,
    /// blake3 of the file bytes ([`ContentHash::empty`] for non-files).
    pub content: ContentHash,
    /// blake3 of the chunk list ([`crate::chunk::ChunkedFile::chunks_hash`]).
    pub chunks: ContentHash,
    /// Causal history of this path.
    pub version: VersionVector,
    /// True for a tombstone.
    pub deleted: bool,
}

/// Why a record from the wire was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The version vector is empty: every record has a history.
    #[error("record {path}: empty version vector")]
    NoVersion {
        /// The record's path.
        path: RelPath,
    },
    /// The version vector is malformed: too long, a zero counter, or a
    /// counter above [`crate::limits::MAX_COUNTER`].
    #[error("record {path}: {source}")]
    BadVersion {
        /// The record's path.
        path: RelPath,
        /// What is wrong with the vector.
        source: VersionError,
    },
    /// A folder, symlink or tombstone claims a size or content.
    #[error("record {path}: {what}")]
    Inconsistent {
        /// The record's path.
        path: RelPath,
        /// What is inconsistent.
        what: &'static str,
    },
    /// The mode has bits outside [`PERMISSION_BITS`] (setuid, setgid,
    /// sticky or file-type bits).
    #[error("record {path}: mode {mode:#o} has bits outside the permission bits 0o777")]
    BadMode {
        /// The record's path.
        path: RelPath,
        /// The offending mode.
        mode: u32,
    },
    /// A symlink target is absolute, too long or climbs out of the folder.
    #[error("record {path}: symlink target {target:?} leaves the folder")]
    BadLinkTarget {
        /// The record's path.
        path: RelPath,
        /// The offending target.
        target: String,
    },
}

impl FileRecord {
    /// True for a live regular file.
    pub fn is_file(&self) -> bool {
        !self.deleted && self.kind == FileKind::File
    }

    /// True for a live folder.
    pub fn is_dir(&self) -> bool {
        !self.deleted && self.kind == FileKind::Dir
    }

    /// True when `other` describes the same bytes and metadata (ignoring the
    /// version vector): the same file reached by two histories.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        self.deleted == other.deleted
            && self.kind == other.kind
            && (self.deleted || (self.content == other.content && self.size == other.size))
    }

    /// Checks a record received from the network. The path was already
    /// validated when it was decoded.
    pub fn validate(&self) -> Result<(), RecordError> {
        let path = || self.path.clone();
        if self.version.is_empty() {
            return Err(RecordError::NoVersion { path: path() });
        }
        self.version.check().map_err(|source| RecordError::BadVersion { path: path(), source })?;
        if self.mode & !PERMISSION_BITS != 0 {
            return Err(RecordError::BadMode { path: path(), mode: self.mode });
        }
        let non_file = self.deleted || self.kind != FileKind::File;
        if non_file && self.size != 0 {
            return Err(RecordError::Inconsistent {
                path: path(),
                what: "a folder, symlink or tombstone must have size 0",
            });
        }
        if let FileKind::Symlink { target } = &self.kind
            && !link_target_stays_inside(&self.path, target)
        {
            return Err(RecordError::BadLinkTarget { path: path(), target: target.clone() });
        }
        Ok(())
    }
}

/// True when a symlink at `link` pointing to `target` resolves (lexically)
/// to a path inside the folder, and `target` is a plain relative path.
pub fn link_target_stays_inside(link: &RelPath, target: &str) -> bool {
    if target.is_empty()
        || target.len() > MAX_LINK_TARGET_LEN
        || target.starts_with('/')
        || target.contains('\0')
        || target.contains('\\')
    {
        return false;
    }
    // Depth of the directory holding the link.
    let mut depth: i64 = link.components().count() as i64 - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            // At any depth: `a/.dartsync` can reach the state directory
            // through a link `a` -> `.`, and no synced path is named so.
            c if crate::path::is_state_dir_name(c) => return false,
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_COUNTER;
    use crate::test_util::RecordBuilder;

    /// What `validate` should say.
    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        NoVersion,
        BadVersion,
        BadMode,
        Inconsistent,
        BadLinkTarget,
    }

    fn check(name: &str, record: RecordBuilder, want: Want) {
        let got = match record.build().validate() {
            Ok(()) => Want::Ok,
            Err(RecordError::NoVersion { .. }) => Want::NoVersion,
            Err(RecordError::BadVersion { .. }) => Want::BadVersion,
            Err(RecordError::BadMode { .. }) => Want::BadMode,
            Err(RecordError::Inconsistent { .. }) => Want::Inconsistent,
            Err(RecordError::BadLinkTarget { .. }) => Want::BadLinkTarget,
        };
        assert_eq!(got, want, "{name}");
    }

    #[test]
    fn validation_table() {
        let file = || RecordBuilder::file("a").body("abc");
        let cases = [
            ("plain file", file(), Want::Ok),
            ("empty file", RecordBuilder::file("e"), Want::Ok),
            ("folder", RecordBuilder::dir("d"), Want::Ok),
            ("symlink", RecordBuilder::symlink("l", "a"), Want::Ok),
            ("tombstone", file().tombstone(), Want::Ok),
            ("no version", file().version(VersionVector::new()), Want::NoVersion),
            ("counter at the limit", file().vv(&[(1, MAX_COUNTER)]), Want::Ok),
            ("counter past the limit", file().vv(&[(1, MAX_COUNTER + 1)]), Want::BadVersion),
            ("counter u64::MAX", file().vv(&[(2, 1), (1, u64::MAX)]), Want::BadVersion),
            ("folder with a size", RecordBuilder::dir("d").size(3), Want::Inconsistent),
            ("tombstone with a size", file().tombstone().size(3), Want::Inconsistent),
            ("setuid file", file().mode(0o4755), Want::BadMode),
            ("raw st_mode of a folder", RecordBuilder::dir("d").mode(0o040755), Want::BadMode),
            ("link out of the folder", RecordBuilder::symlink("l", "../x"), Want::BadLinkTarget),
        ];
        for (name, record, want) in cases {
            check(name, record, want);
        }
        let err = file().vv(&[(1, u64::MAX)]).build().validate().unwrap_err().to_string();
        assert!(err.contains("record a") && err.contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn only_permission_bits_travel() {
        for (mode, ok) in [
            (0o644, true),
            (0o777, true),
            (0o000, true),
            (0o4755, false),   // setuid
            (0o2755, false),   // setgid
            (0o1777, false),   // sticky
            (0o100644, false), // S_IFREG | 0644: a raw st_mode
            (0o040755, false), // S_IFDIR | 0755
            (u32::MAX, false),
        ] {
            check(
                &format!("mode {mode:#o}"),
                RecordBuilder::file("m").mode(mode),
                if ok { Want::Ok } else { Want::BadMode },
            );
        }
    }

    #[test]
    fn symlink_targets() {
        let link = RelPath::new("a/b/link").unwrap();
        for (target, inside) in [
            ("c", true),
            ("../c", true),
            ("../../c", true),
            ("../../../c", false),
            ("/etc/passwd", false),
            ("", false),
            ("./x/../y", true),
            ("../../.dartsync/identity", false),
            ("../../.DartSync/identity", false),
            ("loop/.dartsync/identity", false),
            ("../.dartsyncignore", true),
        ] {
            assert_eq!(link_target_stays_inside(&link, target), inside, "{target}");
        }
    }
}
