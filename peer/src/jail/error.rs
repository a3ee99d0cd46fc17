//! [`JailError`]: why a jailed operation failed, with the relative path and
//! the operation, and whether trying again later can help
//! ([`JailError::is_permanent`]). [`Kind`]: what an entry is, as `lstat`
//! sees it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::io::Errno;

/// What a directory entry is, seen without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket or device: never synced.
    Special,
}

impl Kind {
    /// The kind encoded in a raw `st_mode`.
    pub(super) fn of_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Dir => "folder",
            Kind::Symlink => "symlink",
            Kind::Special => "special file",
        })
    }
}

/// Why a jailed operation failed. `op` names the operation and `path` is
/// the path relative to the jail it was given (the one the error concerns
/// when an operation takes two jails).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The path is not a plain relative path beneath the root: empty,
    /// absolute, `.`/`..`/empty components, NUL, or a `.dartsync`
    /// component (compared ASCII-case-insensitively).
    #[error("{op} {path:?}: invalid path: {reason}")]
    InvalidPath { op: &'static str, path: PathBuf, reason: &'static str },
    /// A name (or the whole path) is longer than the file system allows.
    #[error("{op} {path:?}: name too long")]
    NameTooLong { op: &'static str, path: PathBuf },
    /// `component`, a proper prefix of `path`, is a symlink: it is never
    /// followed.
    #[error("{op} {path:?}: {component:?} is a symlink, and symlinks are never followed")]
    SymlinkInPath { op: &'static str, path: PathBuf, component: PathBuf },
    /// `component`, a proper prefix of `path`, is neither a folder nor a
    /// symlink.
    #[error("{op} {path:?}: {component:?} is not a folder")]
    NotADirectory { op: &'static str, path: PathBuf, component: PathBuf },
    /// The entry at `path` itself is of a kind the operation refuses: a
    /// folder in the way of a file, a symlink where a file or folder is
    /// read or changed, a special file.
    #[error("{op} {path:?}: is a {found}")]
    WrongKind { op: &'static str, path: PathBuf, found: Kind },
    /// `path`, or one of its parent folders, does not exist.
    #[error("{op} {path:?}: no such file or folder")]
    NotFound { op: &'static str, path: PathBuf },
    /// Something already exists at `path` and the operation never replaces.
    #[error("{op} {path:?}: already exists")]
    AlreadyExists { op: &'static str, path: PathBuf },
    /// The folder at `path` still has entries.
    #[error("{op} {path:?}: folder not empty")]
    NotEmpty { op: &'static str, path: PathBuf },
    /// Any other failure of a system call (including fsync).
    #[error("{op} {path:?}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

impl JailError {
    /// True when retrying the same operation cannot succeed until something
    /// else changes the folder (the caller parks the path, woken by events
    /// on it); false for errors that may pass (a parent not there yet,
    /// other I/O errors).
    pub(crate) fn is_permanent(&self) -> bool {
        !matches!(self, JailError::NotFound { .. } | JailError::Io { .. })
    }

    /// Maps an errno whose meaning does not depend on where the path
    /// stopped resolving. `ELOOP`, `ENOTDIR` and `EISDIR` are classified by
    /// the caller first, which knows which entry they concern.
    pub(super) fn from_errno(op: &'static str, path: &Path, errno: Errno) -> JailError {
        let path = path.to_owned();
        match errno {
            Errno::NOENT => JailError::NotFound { op, path },
            Errno::NAMETOOLONG => JailError::NameTooLong { op, path },
            Errno::EXIST => JailError::AlreadyExists { op, path },
            Errno::NOTEMPTY => JailError::NotEmpty { op, path },
            _ => JailError::Io { op, path, source: errno.into() },
        }
    }
}
