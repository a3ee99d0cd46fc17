//! [`ApplyError`]: why the engine could not make a path match its global
//! record (a jailed file-system operation, or the local index), and whether
//! trying again can help. Its own module so `apply`, `install` and the
//! engine share it without importing each other.

use dartsync_shared::RelPath;

use crate::jail::JailError;
use crate::local::LocalError;

/// Why applying a record failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// A file-system operation in the folder, its temp folder or its
    /// history failed.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// A folder with content sits where a file must go.
    #[error("{path}: a folder with content is in the way")]
    FolderInTheWay {
        /// The record's path.
        path: RelPath,
    },
    /// On a case-insensitive folder, the path's name (or a parent's) differs
    /// only in case from a path already there.
    #[error(
        "{path}: its name differs only in letter case from {other}, which this case-insensitive folder already holds"
    )]
    CaseCollision {
        /// The refused path.
        path: RelPath,
        /// The path that keeps the name.
        other: RelPath,
    },
    /// A file record reached the metadata path (a bug, not a disk state).
    #[error("{path}: file content must be installed from a download")]
    NotMetadata {
        /// The record's path.
        path: RelPath,
    },
    /// The local index or the write gate failed.
    #[error("local index: {0}")]
    Local(Box<LocalError>),
}

impl From<LocalError> for ApplyError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Jail(e) => ApplyError::Jail(e),
            other => ApplyError::Local(Box::new(other)),
        }
    }
}

impl ApplyError {
    /// True when retrying the same record cannot help: a parent is a
    /// symlink or a file, the name is too long or invalid here. The engine
    /// parks such a path until a different record arrives for it.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            ApplyError::Jail(e) => e.is_permanent(),
            ApplyError::NotMetadata { .. } | ApplyError::CaseCollision { .. } => true,
            ApplyError::FolderInTheWay { .. } | ApplyError::Local(_) => false,
        }
    }
}

/// Why `dartsync versions` or `dartsync restore` was refused; the text is
/// what the user reads.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionsError {
    /// Not a path inside the synced folder.
    #[error("{path:?} is not a path inside the synced folder: {why}")]
    InvalidPath {
        /// As given.
        path: String,
        /// Why not.
        why: String,
    },
    /// The history holds nothing for the path.
    #[error(
        "no saved versions of {path} on this device ({device}). Versions exist only on the devices that \
         replaced or deleted the file on behalf of the cluster (the device where it was edited or deleted \
         keeps none): try `dartsync versions` on the other devices.{near}"
    )]
    NoVersions {
        /// The path.
        path: RelPath,
        /// This device's name.
        device: String,
        /// Similar names with versions, as a sentence (or empty).
        near: String,
    },
    /// Version history is off here.
    #[error("no saved versions of {path}: version history is off on this device (versions = \"off\")")]
    Off {
        /// The path.
        path: RelPath,
    },
    /// `--version N` beyond the list.
    #[error("{path} has {count} saved version(s) here; there is no number {number} (1 is the newest)")]
    NoSuchNumber {
        /// The path.
        path: RelPath,
        /// Asked for.
        number: u32,
        /// How many there are.
        count: usize,
    },
    /// `--at` could not be read.
    #[error("{0}")]
    BadTime(String),
    /// `--at` before every saved version.
    #[error("no version of {path} was saved at or before {at} (UTC); the oldest is from {oldest} (UTC)")]
    NothingAt {
        /// The path.
        path: RelPath,
        /// As given.
        at: String,
        /// The oldest version's time.
        oldest: String,
    },
    /// `--at` matches several versions.
    #[error("{at} matches {} versions of {path}: {}; pick one with --version N or a more precise --at", .candidates.len(), .candidates.join(", "))]
    Ambiguous {
        /// The path.
        path: RelPath,
        /// As given.
        at: String,
        /// `#N (time)` of each match.
        candidates: Vec<String>,
    },
    /// `--to` names something that exists.
    #[error("{path} already exists; pass --force to replace it (what is there is kept in the version history first)")]
    Exists {
        /// The target.
        path: RelPath,
    },
    /// A folder is where the file would go.
    #[error("{path} is a folder; restore to another path with --to")]
    FolderInTheWay {
        /// The target.
        path: RelPath,
    },
    /// The saved copy does not hash to what was recorded.
    #[error("the saved version {file} does not match its recorded content hash; not restored")]
    Damaged {
        /// The history file.
        file: String,
    },
    /// A jailed file-system operation failed.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The index failed.
    #[error(transparent)]
    Local(#[from] LocalError),
}
