//! [`LocalError`]: why an operation on the peer's local state (folder
//! layout, identity, index, scanner, watcher) failed. Its own module so the
//! modules under [`crate::local`] can return it without importing the
//! facade that imports them.

use std::path::PathBuf;

use dartsync_shared::RelPath;
use dartsync_shared::codec::CodecError;
use dartsync_shared::key::KeyError;

use crate::jail::JailError;

/// Why an operation on the local state failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file or folder could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The path on disk.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder to sync exists but is not a folder (a regular file, a
    /// device, a socket...).
    #[error("cannot sync {}: it is a file, not a folder; pass a folder to --peer", path.display())]
    NotAFolder {
        /// The path given as the folder.
        path: PathBuf,
    },
    /// Another process holds the folder's lock (`.dartsync/lock`).
    #[error(
        "another dartsync{} is already syncing {}; stop it first",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        folder.display()
    )]
    Locked {
        /// The synced folder.
        folder: PathBuf,
        /// The holder's process id, as written in the lock file (absent
        /// if it has not written it yet).
        pid: Option<u32>,
    },
    /// The index database could not be opened (in use by another process,
    /// unreadable, or not a redb file).
    #[error("cannot open the index {path}: {source}")]
    IndexOpen {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// A read or write of the index failed.
    #[error("index: {0}")]
    Index(Box<redb::Error>),
    /// The index was written by an incompatible version.
    #[error("index {path} has schema {found}; this version reads schema {supported}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u64,
        /// The schema this build understands.
        supported: u64,
    },
    /// A stored value does not decode or does not validate.
    #[error("index entry {key:?} is corrupt: {what}")]
    Corrupt {
        /// The key of the bad value.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// A value could not be encoded for storage (e.g. a chunk list beyond
    /// the codec's size limit).
    #[error("cannot store {path}: {source}")]
    Encode {
        /// The path whose entry failed.
        path: RelPath,
        /// The cause.
        source: CodecError,
    },
    /// A jailed file-system operation failed (see [`JailError`]).
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The node identity could not be read or created.
    #[error("identity: {0}")]
    Identity(#[from] KeyError),
    /// The file watcher could not be started.
    #[error("file watcher: {0}")]
    Watch(#[from] notify::Error),
    /// A record handed to [`LocalState`] is inconsistent.
    #[error("record for {path} refused: {what}")]
    InvalidRecord {
        /// The path concerned.
        path: RelPath,
        /// What is wrong.
        what: String,
    },
    /// The scanner task has stopped (shutdown).
    #[error("the local state has stopped")]
    Stopped,
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for LocalError {
            fn from(e: $t) -> Self {
                LocalError::Index(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
