//! The apply executor: the file-system operations that make the folder
//! match a global record. Decisions are made by [`crate::sync::plan::plan`];
//! this module only carries them out, safely, and only through the jails
//! ([`crate::jail`]): no symlink is ever followed, on the way to a path or
//! at it.
//!
//! - a downloaded file is renamed over its destination atomically (the path
//!   never disappears and never shows partial content); the previous
//!   content is hard-linked (or copied) into the version history first;
//! - a deleted file or link is moved into the version history, not
//!   unlinked;
//! - a deleted folder is removed only when empty; otherwise it is kept and
//!   the operation reports that it wrote nothing (`Ok(None)`);
//! - mtime and permission bits (`0o777` only) are restored from the record;
//! - missing parent folders are created (they normally arrive as records of
//!   their own, parents first); a parent that is a symlink or a file is an
//!   error that says so ([`ApplyError::is_permanent`]).
//!
//! It never decides whether an operation is wanted and never touches the
//! index.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dartsync_shared::{FileKind, FileRecord, RelPath};

use crate::jail::{JailError, Meta, rel_path};
use crate::local::dirs::Jails;
use crate::sync::error::ApplyError;
use crate::sync::history::{BeforeKeep, Cause, History};

/// Mode of parent folders the engine has to create before their own record
/// arrives (the record's mode is applied when it does).
const PARENT_MODE: u32 = 0o755;

/// The record's mtime as a `SystemTime`.
pub(crate) fn mtime_of(record: &FileRecord) -> SystemTime {
    let ns = record.mtime_ns;
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// What [`apply_metadata`] did: `None` when a non-empty folder is in the
/// way (it is kept, nothing was written); otherwise where a replaced file
/// went in the version history, if one was saved.
pub(crate) type Cleared = Option<Option<PathBuf>>;

/// Mode of files this peer writes when permission bits are ignored.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of folders this peer writes when permission bits are ignored.
const DEFAULT_DIR_MODE: u32 = 0o755;

/// Carries out records in one folder: its jails, its history, and whether
/// permission bits are applied. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Applier {
    pub(crate) jails: Jails,
    pub(crate) history: History,
    /// Leave permission bits alone (`--ignore-perms`): files get 0644,
    /// folders 0755, and a mode-only change writes nothing.
    pub(crate) ignore_perms: bool,
}

impl Applier {
    /// Applies a folder, symlink or deletion record; `replaced` is the
    /// indexed record of what is there (for the history's metadata);
    /// `before_keep` is told where it goes in the history before it goes.
    pub(crate) fn metadata(
        &self,
        record: &FileRecord,
        replaced: Option<&FileRecord>,
        before_keep: Option<BeforeKeep<'_>>,
    ) -> Result<Cleared, ApplyError> {
        let cause = Cause::replacing(replaced, record).telling(before_keep);
        apply_metadata(&self.jails, &self.history, record, self.dir_mode(record), cause)
    }

    /// Moves what is at `path` out of the way: files and links go to the
    /// history (returned; `local` is the record of the local version, when
    /// known), an empty folder is removed, a non-empty one is kept. Used to
    /// put back the cluster's version over a local change.
    pub(crate) fn set_aside(&self, path: &RelPath, local: Option<&FileRecord>) -> Result<Option<PathBuf>, ApplyError> {
        let cause = Cause { saved: local, ..Cause::default() };
        Ok(clear(&self.jails, &self.history, path, cause)?.flatten())
    }

    /// Moves a verified download into place (see [`install_file`]);
    /// `replaced` is the indexed record of what is there; `before_keep`
    /// is told where it goes in the history before it goes.
    pub(crate) fn install(
        &self,
        record: &FileRecord,
        temp: &Path,
        replaced: Option<&FileRecord>,
        before_keep: Option<BeforeKeep<'_>>,
    ) -> Result<Meta, ApplyError> {
        let mode = if self.ignore_perms { DEFAULT_FILE_MODE } else { record.mode & 0o777 };
        let cause = Cause::replacing(replaced, record).telling(before_keep);
        install_file(&self.jails, &self.history, record, temp, mode, cause)
    }

    /// Applies a new version whose content this peer already has but whose
    /// permission bits differ (a `chmod` elsewhere): sets them, unless
    /// permission bits are ignored.
    pub(crate) fn mode(&self, record: &FileRecord) -> Result<Option<()>, ApplyError> {
        if !self.ignore_perms {
            let mode = if record.is_dir() { self.dir_mode(record) } else { record.mode & 0o777 };
            self.jails.folder.set_mode(rel_path(&record.path), mode)?;
        }
        Ok(Some(()))
    }

    /// Removes a finished download that will not be installed (`temp`, a
    /// name in `.dartsync/tmp`). Best effort: an abandoned temp file is
    /// swept later anyway.
    pub(crate) fn discard_temp(&self, temp: &Path) {
        let name = temp.file_name().map(Path::new).unwrap_or(temp);
        if let Err(e) = self.jails.tmp.remove_file(name) {
            tracing::debug!("cannot remove the temp file {}: {e}", temp.display());
        }
    }

    fn dir_mode(&self, record: &FileRecord) -> u32 {
        // Keep folders traversable by their owner whatever the record says.
        if self.ignore_perms { DEFAULT_DIR_MODE } else { (record.mode | 0o700) & 0o777 }
    }
}

/// Makes sure the parent folders of `rel` exist (never through a link).
fn ensure_parent(jails: &Jails, rel: &Path) -> Result<(), JailError> {
    match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => jails.folder.create_dir_all(parent, PARENT_MODE),
        None => Ok(()),
    }
}

/// Removes whatever is at the record's path to make room for a record of
/// another kind: files and links go to the history, empty folders are
/// removed, a non-empty folder is kept (`Ok(None)`).
fn clear(jails: &Jails, history: &History, path: &RelPath, cause: Cause<'_>) -> Result<Cleared, ApplyError> {
    let rel = rel_path(path);
    let meta = match jails.folder.lstat(rel) {
        Ok(meta) => meta,
        // Behind a symlink or a file: not in this folder, nothing to remove.
        Err(JailError::SymlinkInPath { .. } | JailError::NotADirectory { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(meta) = meta else { return Ok(Some(None)) };
    if meta.is_dir() {
        return match jails.folder.remove_empty_dir(rel) {
            Ok(()) => Ok(Some(None)),
            Err(JailError::NotEmpty { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    Ok(Some(history.save(&jails.folder, path, cause)?))
}

/// Applies a folder, symlink or deletion record; a folder gets `dir_mode`.
fn apply_metadata(
    jails: &Jails,
    history: &History,
    record: &FileRecord,
    dir_mode: u32,
    cause: Cause<'_>,
) -> Result<Cleared, ApplyError> {
    if record.deleted {
        return clear(jails, history, &record.path, cause);
    }
    let rel = rel_path(&record.path);
    let mut saved = None;
    match &record.kind {
        FileKind::Dir => {
            if jails.folder.lstat(rel)?.is_some_and(|m| !m.is_dir()) {
                let Some(cleared) = clear(jails, history, &record.path, cause)? else { return Ok(None) };
                saved = cleared;
            }
            ensure_parent(jails, rel)?;
            jails.folder.create_dir(rel, dir_mode)?;
        }
        FileKind::Symlink { target } => {
            ensure_parent(jails, rel)?;
            if jails.folder.lstat(rel)?.is_some_and(|m| m.is_dir()) {
                let Some(cleared) = clear(jails, history, &record.path, cause)? else { return Ok(None) };
                saved = cleared;
            } else if jails.folder.lstat(rel)?.is_some_and(|m| m.is_file()) {
                saved = history.preserve(&jails.folder, &record.path, cause)?;
            }
            // Replaces a file or link at the path atomically.
            jails.folder.create_symlink(rel, Path::new(target))?;
            jails.folder.set_mtime(rel, mtime_of(record))?;
        }
        FileKind::File => return Err(ApplyError::NotMetadata { path: record.path.clone() }),
    }
    Ok(Some(saved))
}

/// Moves a verified download (`temp`, a name in `.dartsync/tmp`) into
/// place: keeps the previous content in the history, then sets `mode` and
/// the record's mtime, fsyncs and renames atomically over the destination,
/// and fsyncs the folder. Missing parent folders are created when the
/// rename finds them missing (they nearly always exist: one lookup less
/// per file of a burst). Returns the installed file as its own descriptor
/// saw it after the rename ([`crate::jail::Jail::install_file`]).
fn install_file(
    jails: &Jails,
    history: &History,
    record: &FileRecord,
    temp: &Path,
    mode: u32,
    cause: Cause<'_>,
) -> Result<Meta, ApplyError> {
    let rel = rel_path(&record.path);
    match jails.folder.lstat(rel)? {
        Some(meta) if meta.is_dir() => {
            let cleared = clear(jails, history, &record.path, cause)?;
            if cleared.is_none() {
                return Err(ApplyError::FolderInTheWay { path: record.path.clone() });
            }
        }
        // A file is kept in the history; a link or special file is replaced
        // by the rename itself, and a link's target text kept all the same.
        Some(_) => {
            history.preserve(&jails.folder, &record.path, cause)?;
        }
        None => {}
    }
    let name = temp.file_name().map(Path::new).unwrap_or(temp);
    let install = || jails.folder.install_file(rel, &jails.tmp, name, mode, mtime_of(record));
    let meta = match install() {
        // The folder of `rel` is missing (not the temp file: that error
        // names the temp path).
        Err(JailError::NotFound { path, .. })
            if path == rel && rel.parent().is_some_and(|p| !p.as_os_str().is_empty()) =>
        {
            ensure_parent(jails, rel)?;
            install()?
        }
        result => result?,
    };
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use dartsync_shared::test_util::{RecordBuilder, rel};

    use super::*;
    use crate::jail::Jail;

    /// Not a whole second: the nanoseconds must reach the disk too.
    const MTIME_NS: i64 = 1_600_000_000_123_456_789;

    struct Fixture {
        root: tempfile::TempDir,
        applier: Applier,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        for dir in [".dartsync/tmp", ".dartsync/versions"] {
            fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let jails = Jails {
            folder: Arc::new(Jail::open(root.path()).unwrap()),
            tmp: Arc::new(Jail::open(&root.path().join(".dartsync/tmp")).unwrap()),
            versions: Arc::new(Jail::open(&root.path().join(".dartsync/versions")).unwrap()),
        };
        let index = crate::local::index::Index::open(&root.path().join(".dartsync/index.redb")).unwrap();
        let history = History::new(jails.versions.clone(), index, Default::default());
        Fixture { root, applier: Applier { jails, history, ignore_perms: false } }
    }

    impl Fixture {
        fn path(&self, p: &str) -> PathBuf {
            self.root.path().join(p)
        }
        fn temp(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let temp = self.path(".dartsync/tmp").join(name);
            fs::write(&temp, bytes).unwrap();
            temp
        }
    }

    #[test]
    fn install_replaces_atomically_and_keeps_history() {
        let f = fixture();
        let temp = f.temp("new.done", b"new");
        let rec = RecordBuilder::file("a/b.txt").mode(0o4755).mtime_ns(MTIME_NS).build();
        fs::create_dir_all(f.path("a")).unwrap();
        fs::write(f.path("a/b.txt"), b"old").unwrap();
        f.applier.install(&rec, &temp, None, None).unwrap();
        assert_eq!(fs::read(f.path("a/b.txt")).unwrap(), b"new");
        let meta = fs::metadata(f.path("a/b.txt")).unwrap();
        assert_eq!(meta.modified().unwrap(), mtime_of(&rec));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "setuid never applied");
        let versions = f.applier.history.versions_of(&rec.path).unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(fs::read(&versions[0]).unwrap(), b"old");
    }

    #[test]
    fn deletions_go_to_history_and_keep_non_empty_folders() {
        let f = fixture();
        fs::create_dir_all(f.path("d/e")).unwrap();
        fs::write(f.path("d/e/f"), b"x").unwrap();
        let gone_dir = RecordBuilder::dir("d/e").tombstone().build();
        let out = f.applier.metadata(&gone_dir, None, None).unwrap();
        assert_eq!(out, None, "a non-empty folder is kept");
        let out = f.applier.metadata(&RecordBuilder::file("d/e/f").tombstone().build(), None, None).unwrap();
        assert!(out.is_some_and(|saved| saved.is_some()));
        assert!(!f.path("d/e/f").exists());
        assert_eq!(f.applier.history.versions_of(&rel("d/e/f")).unwrap().len(), 1);
        let out = f.applier.metadata(&gone_dir, None, None).unwrap();
        assert_eq!(out, Some(None));
        assert!(!f.path("d/e").exists());
    }

    #[test]
    fn folders_and_links_are_created() {
        let f = fixture();
        f.applier.metadata(&RecordBuilder::dir("x/y").build(), None, None).unwrap();
        assert!(f.path("x/y").is_dir());
        let link = RecordBuilder::symlink("x/l", "y").mtime_ns(MTIME_NS).build();
        f.applier.metadata(&link, None, None).unwrap();
        assert_eq!(fs::read_link(f.path("x/l")).unwrap(), PathBuf::from("y"));
        assert_eq!(fs::symlink_metadata(f.path("x/l")).unwrap().modified().unwrap(), mtime_of(&link));
        let file = RecordBuilder::file("x/f").mode(0o2600).build();
        fs::write(f.path("x/f"), b"x").unwrap();
        f.applier.mode(&file).unwrap();
        assert_eq!(fs::metadata(f.path("x/f")).unwrap().permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn nothing_is_written_through_a_symlinked_parent() {
        let f = fixture();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), f.path("docs")).unwrap();
        let temp = f.temp("x.done", b"payload");
        let file = RecordBuilder::file("docs/x").build();
        let err = f.applier.install(&file, &temp, None, None).unwrap_err();
        assert!(err.is_permanent(), "{err}");
        for rec in [RecordBuilder::dir("docs/d").build(), RecordBuilder::symlink("docs/l", "x").build()] {
            let err = f.applier.metadata(&rec, None, None).unwrap_err();
            assert!(err.is_permanent(), "{}: {err}", rec.path);
        }
        // A deletion behind the link finds nothing of the folder's there.
        fs::write(outside.path().join("x"), b"not the folder's").unwrap();
        let gone = RecordBuilder::file("docs/x").tombstone().build();
        assert_eq!(f.applier.metadata(&gone, None, None).unwrap(), Some(None));
        let left: Vec<_> = fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["x"], "something outside was written or removed");
        assert_eq!(fs::read(outside.path().join("x")).unwrap(), b"not the folder's");
    }

    #[test]
    fn ignored_permission_bits_are_never_applied() {
        let mut f = fixture();
        f.applier.ignore_perms = true;
        let mut rec = RecordBuilder::file("p.txt").mode(0o600).build();
        let temp = f.temp("p.done", b"p");
        f.applier.install(&rec, &temp, None, None).unwrap();
        assert_eq!(fs::metadata(f.path("p.txt")).unwrap().permissions().mode() & 0o7777, 0o644);
        rec.mode = 0o700;
        f.applier.mode(&rec).unwrap();
        assert_eq!(fs::metadata(f.path("p.txt")).unwrap().permissions().mode() & 0o7777, 0o644);
        let dir = RecordBuilder::dir("d").mode(0o700).build();
        f.applier.metadata(&dir, None, None).unwrap();
        assert_eq!(fs::metadata(f.path("d")).unwrap().permissions().mode() & 0o7777, 0o755);
    }
}
