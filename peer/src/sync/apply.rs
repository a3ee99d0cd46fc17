//! The apply executor: the file-system operations that make the folder
//! match a global record. Decisions are made by [`crate::sync::plan::plan`];
//! this module only carries them out, safely:
//!
//! - a downloaded file is renamed over its destination atomically (the path
//!   never disappears and never shows partial content); the previous
//!   content is hard-linked (or copied) into the version history first;
//! - a deleted file is moved into the version history, not unlinked;
//! - a deleted folder is removed only when empty; otherwise it is kept and
//!   the operation reports that it wrote nothing (`Ok(None)`);
//! - mtime and permission bits are restored from the record.
//!
//! It never decides whether an operation is wanted and never touches the
//! index.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dartsync_shared::{FileKind, FileRecord};

use crate::sync::history::History;
use crate::sync::error::ApplyError;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io { op, path: path.to_owned(), source }
}

/// The record's mtime as a `SystemTime`.
pub(crate) fn mtime_of(record: &FileRecord) -> SystemTime {
    let ns = record.mtime_ns;
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ApplyError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err("chmod", path))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable; some file systems refuse.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Makes sure the parent folders of `path` exist.
fn ensure_parent(path: &Path) -> Result<(), ApplyError> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_err("create folder", parent)),
        None => Ok(()),
    }
}

/// Removes whatever is at `path` to make room for a record of another
/// kind: files go to the history, links are removed, empty folders removed.
/// `Ok(None)`: a non-empty folder is in the way and was kept; otherwise
/// where a replaced file went in the history.
fn clear(root: &Path, history: &History, record: &FileRecord, path: &Path) -> Result<Cleared, ApplyError> {
    let done = |saved| Ok(Some(saved));
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return done(None),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if meta.file_type().is_symlink() {
        fs::remove_file(path).map_err(io_err("remove link", path))?;
    } else if meta.is_dir() {
        match fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                return Ok(None);
            }
            Err(e) => return Err(io_err("remove folder", path)(e)),
        }
    } else {
        let saved = history.save(root, &record.path).map_err(io_err("save old version of", path))?;
        return done(saved);
    }
    done(None)
}

/// What [`apply_metadata`] did: `None` when a non-empty folder is in the
/// way (it is kept, nothing was written); otherwise where a replaced file
/// went in the version history, if one was saved.
pub(crate) type Cleared = Option<Option<PathBuf>>;

/// Applies a folder, symlink or deletion record.
pub(crate) fn apply_metadata(root: &Path, history: &History, record: &FileRecord) -> Result<Cleared, ApplyError> {
    let path = record.path.to_local(root);
    if record.deleted {
        return clear(root, history, record, &path);
    }
    let mut saved = None;
    match &record.kind {
        FileKind::Dir => {
            let meta = fs::symlink_metadata(&path);
            if meta.as_ref().is_ok_and(|m| !m.is_dir() || m.file_type().is_symlink()) {
                let Some(cleared) = clear(root, history, record, &path)? else { return Ok(None) };
                saved = cleared;
            }
            fs::create_dir_all(&path).map_err(io_err("create folder", &path))?;
            // Keep folders traversable by their owner whatever the record says.
            set_mode(&path, record.mode | 0o700)?;
        }
        FileKind::Symlink { target } => {
            let Some(cleared) = clear(root, history, record, &path)? else { return Ok(None) };
            saved = cleared;
            ensure_parent(&path)?;
            std::os::unix::fs::symlink(target, &path).map_err(io_err("create symlink", &path))?;
        }
        FileKind::File => {
            return Err(ApplyError::Io {
                op: "apply",
                path,
                source: io::Error::other("file content must be installed from a download"),
            });
        }
    }
    Ok(Some(saved))
}

/// Moves a verified download into place: restores mtime and mode on the
/// temp file, keeps the previous content in the history, then renames
/// atomically over the destination and syncs the folder. Returns where the
/// previous content went in the history, if there was any.
pub(crate) fn install_file(
    root: &Path,
    history: &History,
    record: &FileRecord,
    temp: &Path,
) -> Result<Option<PathBuf>, ApplyError> {
    let dest = record.path.to_local(root);
    ensure_parent(&dest)?;
    set_mode(temp, record.mode)?;
    let file = fs::OpenOptions::new().write(true).open(temp).map_err(io_err("open", temp))?;
    // The downloader fsynced the content; mtime and mode need no fsync of
    // their own (a crash at worst leaves an older mtime to re-announce).
    file.set_times(fs::FileTimes::new().set_modified(mtime_of(record))).map_err(io_err("set mtime of", temp))?;
    drop(file);
    let saved = match fs::symlink_metadata(&dest) {
        Ok(meta) if meta.is_file() => {
            history.preserve(root, &record.path).map_err(io_err("save old version of", &dest))?
        }
        Ok(_) => {
            if clear(root, history, record, &dest)?.is_none() {
                return Err(ApplyError::Io {
                    op: "replace",
                    path: dest,
                    source: io::Error::new(io::ErrorKind::DirectoryNotEmpty, "a non-empty folder is in the way"),
                });
            }
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", &dest)(e)),
    };
    fs::rename(temp, &dest).map_err(io_err("rename into place", &dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent);
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::{ContentHash, RelPath, ShortId, VersionVector};

    fn record(path: &str, kind: FileKind, deleted: bool) -> FileRecord {
        FileRecord {
            path: RelPath::new(path).unwrap(),
            kind,
            size: 0,
            mtime_ns: 1_600_000_000_123_456_789,
            mode: 0o640,
            content: ContentHash::empty(),
            chunks: ContentHash::empty(),
            version: VersionVector::from_entries([(ShortId(1), 1)]),
            deleted,
        }
    }

    #[test]
    fn install_replaces_atomically_and_keeps_history() {
        let root = tempfile::tempdir().unwrap();
        let history = History::new(root.path().join(".dartsync/versions"), 5);
        let tmp = root.path().join("new.part");
        fs::write(&tmp, b"new").unwrap();
        let rec = record("a/b.txt", FileKind::File, false);
        fs::create_dir_all(root.path().join("a")).unwrap();
        fs::write(root.path().join("a/b.txt"), b"old").unwrap();
        install_file(root.path(), &history, &rec, &tmp).unwrap();
        assert_eq!(fs::read(root.path().join("a/b.txt")).unwrap(), b"new");
        let meta = fs::metadata(root.path().join("a/b.txt")).unwrap();
        assert_eq!(meta.modified().unwrap(), mtime_of(&rec));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let versions = history.versions_of(&rec.path).unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(fs::read(&versions[0]).unwrap(), b"old");
    }

    #[test]
    fn deletions_go_to_history_and_keep_non_empty_folders() {
        let root = tempfile::tempdir().unwrap();
        let history = History::new(root.path().join(".dartsync/versions"), 5);
        fs::create_dir_all(root.path().join("d/e")).unwrap();
        fs::write(root.path().join("d/e/f"), b"x").unwrap();
        let out = apply_metadata(root.path(), &history, &record("d/e", FileKind::Dir, true)).unwrap();
        assert_eq!(out, None, "a non-empty folder is kept");
        let out = apply_metadata(root.path(), &history, &record("d/e/f", FileKind::File, true)).unwrap();
        assert!(out.is_some_and(|saved| saved.is_some()));
        assert!(!root.path().join("d/e/f").exists());
        assert_eq!(history.versions_of(&RelPath::new("d/e/f").unwrap()).unwrap().len(), 1);
        let out = apply_metadata(root.path(), &history, &record("d/e", FileKind::Dir, true)).unwrap();
        assert_eq!(out, Some(None));
        assert!(!root.path().join("d/e").exists());
    }

    #[test]
    fn folders_and_links_are_created() {
        let root = tempfile::tempdir().unwrap();
        let history = History::new(root.path().join(".dartsync/versions"), 5);
        apply_metadata(root.path(), &history, &record("x/y", FileKind::Dir, false)).unwrap();
        assert!(root.path().join("x/y").is_dir());
        let link = record("x/l", FileKind::Symlink { target: "y".into() }, false);
        apply_metadata(root.path(), &history, &link).unwrap();
        assert_eq!(fs::read_link(root.path().join("x/l")).unwrap(), PathBuf::from("y"));
    }
}
