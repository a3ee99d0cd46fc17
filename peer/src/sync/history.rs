//! Version history: files the peer replaces or deletes on behalf of the
//! cluster are moved (not copied, not lost) to
//! `.dartsync/versions/<path>~<YYYYMMDD-HHMMSS.nnnnnnnnn>`, keeping the last
//! N versions of each path.
//!
//! Every operation goes through two jails: the synced folder (where the
//! file is taken from) and `.dartsync/versions` (where it goes), so neither
//! side ever follows a symlink, and every move is fsynced on both sides.
//!
//! The stamp is the local wall-clock time of the move: it only orders the
//! history of one peer, it never decides causality. History files live
//! under `.dartsync/`, so they are never scanned, announced or served by
//! path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dartsync_shared::RelPath;
use dartsync_shared::time::utc_stamp;

use crate::jail::{Jail, JailError, rel_path};

/// Separator between a path and its stamp in a history file name.
const STAMP_SEP: char = '~';
/// Names tried for one stamp before giving up (two saves of one path in
/// the same nanosecond are already unlikely).
const MAX_NAME_TRIES: u32 = 1000;

/// The version folder of one synced folder.
#[derive(Debug, Clone)]
pub(crate) struct History {
    versions: Arc<Jail>,
    keep: usize,
}

impl History {
    /// History kept in the jail `versions`, at most `keep` versions per
    /// path (0 keeps none: replaced files are deleted).
    pub(crate) fn new(versions: Arc<Jail>, keep: usize) -> Self {
        History { versions, keep }
    }

    /// The folder (relative to the versions root) holding the versions of
    /// `path`, and their common name prefix.
    fn slot(path: &RelPath) -> (Option<&Path>, String) {
        let parent = rel_path(path).parent().filter(|p| !p.as_os_str().is_empty());
        (parent, format!("{}{STAMP_SEP}", path.file_name()))
    }

    /// Moves the file or symlink at `path` in `folder` into the history;
    /// returns where it went (absolute; `None` when there was nothing to
    /// save, it is a folder, or `keep` is 0, in which case it is removed).
    pub(crate) fn save(&self, folder: &Jail, path: &RelPath) -> Result<Option<PathBuf>, JailError> {
        let rel = rel_path(path);
        let Some(meta) = folder.lstat(rel)? else { return Ok(None) };
        if meta.is_dir() {
            return Ok(None);
        }
        if self.keep == 0 {
            folder.remove_file(rel)?;
            return Ok(None);
        }
        let dest = self.place(path, |dest| folder.move_to(rel, &self.versions, dest))?;
        self.prune(path)?;
        Ok(Some(self.versions.root().join(dest)))
    }

    /// Keeps a copy of the regular file at `path` in `folder` (a hard link,
    /// or a copy where links are impossible) without removing it, so it
    /// can then be replaced atomically. Returns where the copy went.
    pub(crate) fn preserve(&self, folder: &Jail, path: &RelPath) -> Result<Option<PathBuf>, JailError> {
        if self.keep == 0 {
            return Ok(None);
        }
        let rel = rel_path(path);
        if !folder.lstat(rel)?.is_some_and(|m| m.is_file()) {
            return Ok(None);
        }
        let dest = self.place(path, |dest| match folder.link_to(rel, &self.versions, dest) {
            // No hard links on this file system: copy.
            Err(JailError::Io { .. }) => folder.copy_to(rel, &self.versions, dest),
            other => other,
        })?;
        self.prune(path)?;
        Ok(Some(self.versions.root().join(dest)))
    }

    /// Runs `put` with fresh history names for `path` until one is free.
    fn place(&self, path: &RelPath, put: impl Fn(&Path) -> Result<(), JailError>) -> Result<PathBuf, JailError> {
        let (parent, prefix) = Self::slot(path);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let base = format!("{prefix}{}.{:09}", utc_stamp(now.as_secs() as i64), now.subsec_nanos());
        let mut n = 0;
        loop {
            let name = if n == 0 { base.clone() } else { format!("{base}-{n}") };
            let dest = parent.map_or_else(|| PathBuf::from(&name), |p| p.join(&name));
            match put(&dest) {
                Ok(()) => return Ok(dest),
                Err(JailError::AlreadyExists { .. }) if n < MAX_NAME_TRIES => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The saved versions of `path`, oldest first (absolute paths).
    #[cfg(test)]
    pub(crate) fn versions_of(&self, path: &RelPath) -> Result<Vec<PathBuf>, JailError> {
        Ok(self.names_of(path)?.into_iter().map(|rel| self.versions.root().join(rel)).collect())
    }

    /// The saved versions of `path`, oldest first, relative to the
    /// versions root.
    fn names_of(&self, path: &RelPath) -> Result<Vec<PathBuf>, JailError> {
        let (parent, prefix) = Self::slot(path);
        let entries = match self.versions.read_dir(parent) {
            Ok(entries) => entries,
            Err(JailError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found: Vec<PathBuf> = entries
            .into_iter()
            .filter(|e| e.meta.as_ref().is_ok_and(|m| m.is_file() || m.is_symlink()))
            .filter_map(|e| e.name.to_str().filter(|n| n.starts_with(&prefix)).map(str::to_owned))
            .map(|name| parent.map_or_else(|| PathBuf::from(&name), |p| p.join(&name)))
            .collect();
        // Stamps sort lexicographically in time order.
        found.sort();
        Ok(found)
    }

    fn prune(&self, path: &RelPath) -> Result<(), JailError> {
        let versions = self.names_of(path)?;
        let excess = versions.len().saturating_sub(self.keep);
        for old in &versions[..excess] {
            self.versions.remove_file(old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn jails(root: &Path) -> (Arc<Jail>, Arc<Jail>) {
        let versions = root.join(".dartsync/versions");
        fs::create_dir_all(&versions).unwrap();
        (Arc::new(Jail::open(root).unwrap()), Arc::new(Jail::open(&versions).unwrap()))
    }

    #[test]
    fn saves_moves_and_prunes_to_keep() {
        let root = tempfile::tempdir().unwrap();
        let (folder, versions) = jails(root.path());
        let history = History::new(versions.clone(), 3);
        let path = RelPath::new("docs/a.txt").unwrap();
        fs::create_dir_all(root.path().join("docs")).unwrap();
        for i in 0..5 {
            fs::write(path.to_local(root.path()), format!("v{i}")).unwrap();
            let saved = history.save(&folder, &path).unwrap().unwrap();
            assert!(saved.starts_with(versions.root()));
            assert!(!path.to_local(root.path()).exists());
        }
        let kept = history.versions_of(&path).unwrap();
        let contents: Vec<String> = kept.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
        assert_eq!(contents, ["v2", "v3", "v4"]);
        // A sibling with a common prefix is not mixed in.
        let other = RelPath::new("docs/a.txt.bak").unwrap();
        fs::write(other.to_local(root.path()), "x").unwrap();
        history.save(&folder, &other).unwrap();
        assert_eq!(history.versions_of(&path).unwrap().len(), 3);
        assert!(history.save(&folder, &RelPath::new("missing").unwrap()).unwrap().is_none());
    }

    #[test]
    fn preserve_keeps_the_file_in_place() {
        let root = tempfile::tempdir().unwrap();
        let (folder, versions) = jails(root.path());
        let history = History::new(versions, 2);
        let path = RelPath::new("top.txt").unwrap();
        fs::write(path.to_local(root.path()), "old").unwrap();
        let saved = history.preserve(&folder, &path).unwrap().unwrap();
        assert_eq!(fs::read_to_string(saved).unwrap(), "old");
        assert_eq!(fs::read_to_string(path.to_local(root.path())).unwrap(), "old");
    }

    #[test]
    fn keep_zero_deletes() {
        let root = tempfile::tempdir().unwrap();
        let (folder, versions) = jails(root.path());
        let history = History::new(versions, 0);
        let path = RelPath::new("f").unwrap();
        fs::write(path.to_local(root.path()), "x").unwrap();
        assert!(history.save(&folder, &path).unwrap().is_none());
        assert!(!path.to_local(root.path()).exists());
    }

    #[test]
    fn a_symlinked_parent_is_refused_and_nothing_outside_moves() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("docs")).unwrap();
        let (folder, versions) = jails(root.path());
        let history = History::new(versions, 3);
        let path = RelPath::new("docs/secret").unwrap();
        assert!(matches!(history.save(&folder, &path), Err(JailError::SymlinkInPath { .. })));
        assert!(matches!(history.preserve(&folder, &path), Err(JailError::SymlinkInPath { .. })));
        assert_eq!(fs::read_to_string(outside.path().join("secret")).unwrap(), "s");
    }
}
