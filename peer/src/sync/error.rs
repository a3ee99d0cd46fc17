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
