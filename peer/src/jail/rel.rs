//! Checking a relative path before any system call sees it, and splitting
//! it into names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::JailError;

/// The longest name Linux file systems accept (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// A checked path beneath a jail root: names separated by single `/`,
/// none of them empty, `.`, `..` or the state directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rel<'a> {
    /// The whole path, for errors.
    pub(super) path: &'a Path,
    /// The folder holding the entry; `None` when it is the root itself.
    pub(super) parent: Option<&'a Path>,
    /// The entry's own name.
    pub(super) name: &'a OsStr,
}

impl<'a> Rel<'a> {
    /// Checks `path` for the operation `op`.
    pub(super) fn check(op: &'static str, path: &'a Path) -> Result<Rel<'a>, JailError> {
        let bytes = path.as_os_str().as_bytes();
        let invalid = |reason| JailError::InvalidPath { op, path: path.to_owned(), reason };
        if bytes.is_empty() {
            return Err(invalid("empty path"));
        }
        if bytes.starts_with(b"/") {
            return Err(invalid("absolute path"));
        }
        if bytes.contains(&0) {
            return Err(invalid("NUL in path"));
        }
        for name in bytes.split(|&b| b == b'/') {
            match name {
                b"" => return Err(invalid("empty component")),
                b"." | b".." => return Err(invalid("`.` or `..` component")),
                _ if is_state_dir(OsStr::from_bytes(name)) => return Err(invalid("names the .dartsync state folder")),
                _ if name.len() > NAME_MAX => return Err(JailError::NameTooLong { op, path: path.to_owned() }),
                _ => {}
            }
        }
        let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (Some(Path::new(OsStr::from_bytes(&bytes[..i]))), OsStr::from_bytes(&bytes[i + 1..])),
            None => (None, path.as_os_str()),
        };
        Ok(Rel { path, parent, name })
    }
}

/// True for the per-folder state directory in any spelling a
/// case-insensitive file system would resolve to it (`.DartSync`, ...): the
/// same rule as [`dartsync_shared::path::is_state_dir_name`]; a name that
/// is not UTF-8 compares its bytes in ASCII case.
pub(super) fn is_state_dir(name: &OsStr) -> bool {
    match name.to_str() {
        Some(name) => dartsync_shared::path::is_state_dir_name(name),
        None => name.as_bytes().eq_ignore_ascii_case(b".dartsync"),
    }
}

/// The names of a checked path, first to last.
pub(super) fn names(path: &Path) -> impl Iterator<Item = &OsStr> {
    path.as_os_str().as_bytes().split(|&b| b == b'/').map(OsStr::from_bytes)
}

/// The first `count` names of a checked path (all of it when it has fewer).
pub(super) fn prefix(path: &Path, count: usize) -> &Path {
    let bytes = path.as_os_str().as_bytes();
    let end = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .nth(count.saturating_sub(1))
        .map_or(bytes.len(), |(i, _)| i);
    Path::new(OsStr::from_bytes(&bytes[..end]))
}
