//! Ignore rules: which paths of the folder never produce records.
//!
//! Two layers, both gitignore-style matchers from the `ignore` crate:
//! - the built-in rules ([`BUILTIN_PATTERNS`]: editor swap and backup files,
//!   OS litter, partial downloads), which the user cannot un-ignore;
//! - the user's `.dartsyncignore` at the folder root ([`IGNORE_FILE`]),
//!   re-read by [`IgnoreRules::reload_if_changed`] when its size, mtime or
//!   inode changes and it has settled (not changed within the quiet period).
//!
//! The ignore file itself is never ignored (it syncs, so every peer applies
//! the same rules). `.dartsync/` (in any spelling) cannot be expressed as a
//! [`dartsync_shared::RelPath`] at all; the walker skips it with
//! [`dartsync_shared::path::is_state_dir_name`] before a `RelPath` is even
//! built. The ignore file is read through the folder's jail, so a
//! `.dartsyncignore` that is a symlink is not followed.
//!
//! A path is ignored when it or any of its parents matches, so everything
//! inside an ignored folder is ignored too. This module does no walking and
//! keeps no list of ignored paths; callers ask per path.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::ignore::gitignore::{Gitignore, GitignoreBuilder};
use dartsync_shared::RelPath;

use crate::jail::{Jail, Meta};
use crate::local::stat::{StatKey, changed_within, unchanged_since};

/// The gitignore-style file at the folder root.
pub const IGNORE_FILE: &str = ".dartsyncignore";

/// Patterns that are always ignored: editor swap/backup/lock files, OS
/// metadata files, partial downloads and temp files.
pub const BUILTIN_PATTERNS: &[&str] = &["*.swp", "*.swx", "*~", ".#*", ".DS_Store", "Thumbs.db", "*.part", "*.tmp"];

/// Largest `.dartsyncignore` read; the rest of a bigger file is dropped
/// with a warning (the file comes from disk and may be hostile).
pub const MAX_IGNORE_FILE_LEN: u64 = 1024 * 1024;

/// Outcome of [`IgnoreRules::reload_if_changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The file is as last loaded.
    Unchanged,
    /// The file changed and the rules were re-read.
    Reloaded,
    /// The file changed within the quiet period; ask again later.
    Pending,
}

/// The ignore rules of one folder.
#[derive(Debug)]
pub struct IgnoreRules {
    jail: Arc<Jail>,
    builtin: Gitignore,
    user: Gitignore,
    /// The ignore file as last loaded; `None` when it did not exist.
    stamp: Option<StatKey>,
}

impl IgnoreRules {
    /// Loads the built-in rules and `root/.dartsyncignore` (if present).
    /// Bad lines in the ignore file are logged and skipped.
    pub(crate) fn load(jail: Arc<Jail>) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new(jail.root());
        for pattern in BUILTIN_PATTERNS {
            if let Err(err) = builder.add_line(None, pattern) {
                // Static patterns; a failure here is a programming error we
                // still refuse to panic on.
                tracing::error!(%pattern, %err, "built-in ignore pattern rejected");
            }
        }
        let builtin = builder.build().unwrap_or_else(|err| {
            tracing::error!(%err, "built-in ignore rules failed to build");
            Gitignore::empty()
        });
        let (user, stamp) = load_user(&jail);
        IgnoreRules { jail, builtin, user, stamp }
    }

    /// Re-reads the ignore file if it changed (appeared, vanished, or got a
    /// new size, mtime or inode), unless it changed less than `quiet` ago
    /// and no event certified it complete since (`settled_at`, see
    /// [`crate::local::watch::Touched`]): a half-saved file could briefly
    /// un-ignore everything, so the old rules stay until it settles
    /// ([`Reload::Pending`]).
    pub fn reload_if_changed(&mut self, quiet: Duration, settled_at: Option<i64>) -> Reload {
        let meta = file_meta(&self.jail);
        if meta.as_ref().map(StatKey::of) == self.stamp {
            return Reload::Unchanged;
        }
        let certified = |m: &Meta| settled_at.is_some_and(|at| unchanged_since(m, at));
        if meta.as_ref().is_some_and(|m| changed_within(m, quiet) && !certified(m)) {
            return Reload::Pending;
        }
        let (user, stamp) = load_user(&self.jail);
        self.user = user;
        self.stamp = stamp;
        tracing::info!(rules = self.user.num_ignores(), "reloaded {IGNORE_FILE}");
        Reload::Reloaded
    }

    /// True when `path` (a folder if `is_dir`) or one of its parents is
    /// ignored. The ignore file itself never is.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.as_str() == IGNORE_FILE {
            return false;
        }
        let rel = Path::new(path.as_str());
        self.builtin.matched_path_or_any_parents(rel, is_dir).is_ignore()
            || self.user.matched_path_or_any_parents(rel, is_dir).is_ignore()
    }
}

/// The `lstat` of the ignore file, if it is a regular file.
fn file_meta(jail: &Jail) -> Option<Meta> {
    jail.lstat(Path::new(IGNORE_FILE)).ok().flatten().filter(Meta::is_file)
}

fn load_user(jail: &Jail) -> (Gitignore, Option<StatKey>) {
    let path = jail.root().join(IGNORE_FILE);
    let stamp = file_meta(jail).as_ref().map(StatKey::of);
    if stamp.is_none() {
        return (Gitignore::empty(), None);
    }
    let text = match read_bounded(jail, &path) {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read the ignore file; using built-in rules only");
            return (Gitignore::empty(), stamp);
        }
    };
    let mut builder = GitignoreBuilder::new(jail.root());
    for (n, line) in text.lines().enumerate() {
        if let Err(err) = builder.add_line(Some(path.clone()), line) {
            tracing::warn!(line = n + 1, %err, "skipping a bad line of {IGNORE_FILE}");
        }
    }
    match builder.build() {
        Ok(rules) => (rules, stamp),
        Err(err) => {
            tracing::warn!(%err, "{IGNORE_FILE} does not build; using built-in rules only");
            (Gitignore::empty(), stamp)
        }
    }
}

fn read_bounded(jail: &Jail, path: &Path) -> std::io::Result<String> {
    let file = jail.open_read(Path::new(IGNORE_FILE)).map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    file.take(MAX_IGNORE_FILE_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IGNORE_FILE_LEN {
        tracing::warn!(path = %path.display(), "ignore file longer than {MAX_IGNORE_FILE_LEN} bytes; the rest is dropped");
        bytes.truncate(MAX_IGNORE_FILE_LEN as usize);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: &IgnoreRules, table: &[(&str, bool, bool)]) {
        for &(path, is_dir, ignored) in table {
            let rel = RelPath::new(path).unwrap();
            assert_eq!(rules.is_ignored(&rel, is_dir), ignored, "{path} (dir: {is_dir})");
        }
    }

    #[test]
    fn builtin_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let rules = IgnoreRules::load(Arc::new(Jail::open(tmp.path()).unwrap()));
        check(
            &rules,
            &[
                ("a.swp", false, true),
                ("deep/er/.b.swx", false, true),
                ("notes.txt~", false, true),
                (".#lock", false, true),
                ("x/.DS_Store", false, true),
                ("Thumbs.db", false, true),
                ("movie.mkv.part", false, true),
                ("scratch.tmp", false, true),
                ("scratch.tmp/inside.txt", false, true),
                ("notes.txt", false, false),
                ("swp", false, false),
                ("dir.with.dots/file", false, false),
                (IGNORE_FILE, false, false),
                ("sub/.dartsyncignore", false, false),
            ],
        );
    }

    #[test]
    fn user_rules_are_loaded_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(IGNORE_FILE), "build/\n*.log\n!keep.log\n/top-only\n# comment\n\n").unwrap();
        let mut rules = IgnoreRules::load(Arc::new(Jail::open(tmp.path()).unwrap()));
        check(
            &rules,
            &[
                ("build", true, true),
                ("build/out.o", false, true),
                ("src/build/x", false, true),
                ("build", false, false),
                ("a.log", false, true),
                ("keep.log", false, false),
                ("top-only", false, true),
                ("sub/top-only", false, false),
                ("src/main.rs", false, false),
            ],
        );
        assert_eq!(rules.reload_if_changed(Duration::ZERO, None), Reload::Unchanged);
        // A new version of the file (different size) is picked up.
        std::fs::write(tmp.path().join(IGNORE_FILE), "*.rs\n").unwrap();
        // Just written: it may be half-saved, the old rules stay.
        assert_eq!(rules.reload_if_changed(Duration::from_secs(3600), None), Reload::Pending);
        check(&rules, &[("a.log", false, true)]);
        assert_eq!(rules.reload_if_changed(Duration::ZERO, None), Reload::Reloaded);
        check(&rules, &[("src/main.rs", false, true), ("a.log", false, false)]);
        // The user cannot ignore the ignore file, nor un-ignore built-ins.
        std::fs::write(tmp.path().join(IGNORE_FILE), "*\n!*.swp\n").unwrap();
        assert_eq!(rules.reload_if_changed(Duration::ZERO, None), Reload::Reloaded);
        check(&rules, &[(IGNORE_FILE, false, false), ("a.swp", false, true), ("x", false, true)]);
        std::fs::remove_file(tmp.path().join(IGNORE_FILE)).unwrap();
        // A deletion is atomic: no need to wait.
        assert_eq!(rules.reload_if_changed(Duration::from_secs(3600), None), Reload::Reloaded);
        check(&rules, &[("x", false, false)]);
        // Just written, but closed since (certified): no need to wait.
        std::fs::write(tmp.path().join(IGNORE_FILE), "*.bin\n").unwrap();
        assert_eq!(rules.reload_if_changed(Duration::from_secs(3600), None), Reload::Pending);
        let closed = crate::local::stat::now_ns();
        assert_eq!(rules.reload_if_changed(Duration::from_secs(3600), Some(closed)), Reload::Reloaded);
        check(&rules, &[("a.bin", false, true)]);
    }

    #[test]
    fn bad_lines_are_skipped_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(IGNORE_FILE), "a[\n*.bak\n").unwrap();
        let rules = IgnoreRules::load(Arc::new(Jail::open(tmp.path()).unwrap()));
        check(&rules, &[("x.bak", false, true), ("a", false, false)]);
    }
}
