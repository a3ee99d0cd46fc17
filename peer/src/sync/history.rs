//! Version history: files the peer replaces or deletes on behalf of the
//! cluster are moved (not copied, not lost) to
//! `.dartsync/versions/<path>~<YYYYMMDD-HHMMSS.nnnnnnnnn>`, keeping the last
//! N versions of each path.
//!
//! The stamp is the local wall-clock time of the move: it only orders the
//! history of one peer, it never decides causality. History files live
//! under `.dartsync/`, so they are never scanned, announced or served by
//! path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dartsync_shared::RelPath;
use dartsync_shared::time::utc_stamp;

/// Separator between a path and its stamp in a history file name.
const STAMP_SEP: char = '~';

/// The version folder of one synced folder.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
    keep: usize,
}

impl History {
    /// History kept in `dir`, at most `keep` versions per path (0 keeps
    /// none: replaced files are deleted).
    pub fn new(dir: PathBuf, keep: usize) -> Self {
        History { dir, keep }
    }

    /// Where the versions of `path` live and their common name prefix.
    fn slot(&self, path: &RelPath) -> (PathBuf, String) {
        let local = path.to_local(&self.dir);
        let parent = local.parent().map(Path::to_path_buf).unwrap_or_else(|| self.dir.clone());
        (parent, format!("{}{STAMP_SEP}", path.file_name()))
    }

    /// Moves the file at `path` inside `root` into the history; returns
    /// where it went (`None` when there was nothing to save or `keep` is 0,
    /// in which case the file is removed).
    pub fn save(&self, root: &Path, path: &RelPath) -> io::Result<Option<PathBuf>> {
        let src = path.to_local(root);
        let meta = match fs::symlink_metadata(&src) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            return Ok(None);
        }
        if self.keep == 0 {
            fs::remove_file(&src)?;
            return Ok(None);
        }
        let dest = self.fresh_slot(path)?;
        fs::rename(&src, &dest)?;
        self.prune(path)?;
        Ok(Some(dest))
    }

    /// Keeps a copy of the file at `path` (a hard link, or a copy where
    /// links are impossible) without removing it, so it can then be
    /// replaced atomically. Returns where the copy went.
    pub fn preserve(&self, root: &Path, path: &RelPath) -> io::Result<Option<PathBuf>> {
        if self.keep == 0 {
            return Ok(None);
        }
        let src = path.to_local(root);
        if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            return Ok(None);
        }
        let dest = self.fresh_slot(path)?;
        if fs::hard_link(&src, &dest).is_err() {
            fs::copy(&src, &dest)?;
        }
        self.prune(path)?;
        Ok(Some(dest))
    }

    /// A new, unused history file name for `path`.
    fn fresh_slot(&self, path: &RelPath) -> io::Result<PathBuf> {
        let (parent, prefix) = self.slot(path);
        fs::create_dir_all(&parent)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let base = format!("{prefix}{}.{:09}", utc_stamp(now.as_secs() as i64), now.subsec_nanos());
        let mut dest = parent.join(&base);
        let mut n = 1;
        while fs::symlink_metadata(&dest).is_ok() {
            dest = parent.join(format!("{base}-{n}"));
            n += 1;
        }
        Ok(dest)
    }

    /// The saved versions of `path`, oldest first.
    pub fn versions_of(&self, path: &RelPath) -> io::Result<Vec<PathBuf>> {
        let (parent, prefix) = self.slot(path);
        let entries = match fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|e| e.path())
            .collect();
        // Stamps sort lexicographically in time order.
        found.sort();
        Ok(found)
    }

    fn prune(&self, path: &RelPath) -> io::Result<()> {
        let versions = self.versions_of(path)?;
        let excess = versions.len().saturating_sub(self.keep);
        for old in &versions[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_moves_and_prunes_to_keep() {
        let root = tempfile::tempdir().unwrap();
        let hist_dir = root.path().join(".dartsync/versions");
        let history = History::new(hist_dir.clone(), 3);
        let path = RelPath::new("docs/a.txt").unwrap();
        fs::create_dir_all(root.path().join("docs")).unwrap();
        for i in 0..5 {
            fs::write(path.to_local(root.path()), format!("v{i}")).unwrap();
            let saved = history.save(root.path(), &path).unwrap().unwrap();
            assert!(saved.starts_with(&hist_dir));
            assert!(!path.to_local(root.path()).exists());
        }
        let versions = history.versions_of(&path).unwrap();
        let contents: Vec<String> = versions.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
        assert_eq!(contents, ["v2", "v3", "v4"]);
        // A sibling with a common prefix is not mixed in.
        let other = RelPath::new("docs/a.txt.bak").unwrap();
        fs::write(other.to_local(root.path()), "x").unwrap();
        history.save(root.path(), &other).unwrap();
        assert_eq!(history.versions_of(&path).unwrap().len(), 3);
        assert!(history.save(root.path(), &RelPath::new("missing").unwrap()).unwrap().is_none());
    }

    #[test]
    fn keep_zero_deletes() {
        let root = tempfile::tempdir().unwrap();
        let history = History::new(root.path().join("v"), 0);
        let path = RelPath::new("f").unwrap();
        fs::write(path.to_local(root.path()), "x").unwrap();
        assert!(history.save(root.path(), &path).unwrap().is_none());
        assert!(!path.to_local(root.path()).exists());
    }
}
