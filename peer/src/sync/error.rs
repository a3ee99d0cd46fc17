//! [`ApplyError`]: why the engine could not make a path match its global
//! record (a file-system operation, or the local index). Its own module so
//! `apply`, `install` and the engine share it without importing each other.

use std::io;
use std::path::PathBuf;

use crate::local::LocalError;

/// Why applying a record failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The local index or the write gate failed.
    #[error("local index: {0}")]
    Local(Box<LocalError>),
}

impl From<LocalError> for ApplyError {
    fn from(e: LocalError) -> Self {
        ApplyError::Local(Box::new(e))
    }
}
