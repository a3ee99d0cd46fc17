//! Version history: files the peer replaces or deletes on behalf of the
//! cluster are moved (not copied, not lost) to
//! `.dartsync/versions/<path>~<YYYYMMDD-HHMMSS.nnnnnnnnn>` (names:
//! [`names`]), then thinned by age within a size budget ([`thinning`]).
//!
//! Every operation goes through two jails: the synced folder (where the
//! file is taken from) and `.dartsync/versions` (where it goes), so neither
//! side ever follows a symlink, and every move is fsynced on both sides.
//! Who made each version, who replaced it, its size and hash go to the
//! index's `saved_versions` table ([`SavedMeta`]); a history file without a
//! row (an older release, a crash) is still listed, from its name and
//! `stat`.
//!
//! Thinning runs for the saved path after each save (age rules only, cheap:
//! one folder listing) and for the whole history in [`History::sweep`]
//! (age rules and the size budget), which the daemon runs hourly and soon
//! after a save takes the history over its budget.
//!
//! The stamp is the local wall-clock time of the move: it only orders the
//! history of one peer, it never decides causality. History files live
//! under `.dartsync/`, so they are never scanned, announced or served by
//! path.

pub(crate) mod names;
pub(crate) mod thinning;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dartsync_shared::config::VersionsPolicy;
use dartsync_shared::{FileRecord, RelPath, ShortId, VersionVector};
use tokio::sync::Notify;

use crate::jail::{Jail, JailError, rel_path};
use crate::local::index::{Index, SavedMeta};
use crate::sync::history::thinning::{Schedule, VersionInfo, thin};

/// Names tried for one stamp before giving up (two saves of one path in
/// the same nanosecond are already unlikely).
const MAX_NAME_TRIES: u32 = 1000;
/// Nanoseconds in a day.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// Looks up a device's name by its version-vector id.
pub(crate) type DeviceNames = Arc<dyn Fn(ShortId) -> Option<String> + Send + Sync>;

/// Told the absolute history path a file is about to be moved or linked
/// to, just before it goes there: whoever reads the file's content by
/// location (the chunk source) learns the new place before the old one
/// disappears, so a download copying from the file never finds it in
/// neither. A name that then turns out to be taken is told too, and is
/// only a stale hint.
#[derive(Clone, Copy)]
pub(crate) struct BeforeKeep<'a>(pub(crate) &'a dyn Fn(&Path));

impl std::fmt::Debug for BeforeKeep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeKeep")
    }
}

/// Why a file is being saved: the index's record of what is there (the
/// version being saved), and who replaced or deleted it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cause<'a> {
    /// The indexed record of the file being saved.
    pub(crate) saved: Option<&'a FileRecord>,
    /// The device whose change replaces it.
    pub(crate) by: Option<ShortId>,
    /// It is being deleted, not replaced.
    pub(crate) deleted: bool,
    /// Told where the file goes before it goes there.
    pub(crate) before_keep: Option<BeforeKeep<'a>>,
}

impl<'a> Cause<'a> {
    /// The file recorded as `saved` is replaced (or deleted) by `by`.
    pub(crate) fn replacing(saved: Option<&'a FileRecord>, by: &FileRecord) -> Cause<'a> {
        Cause { saved, by: author(&by.version), deleted: by.deleted, before_keep: None }
    }

    /// The same cause, telling `hook` where the file goes before it goes.
    pub(crate) fn telling(self, hook: Option<BeforeKeep<'a>>) -> Cause<'a> {
        Cause { before_keep: hook, ..self }
    }

    /// Runs the hook, if any, for `dest` (absolute).
    fn tell(&self, dest: &Path) {
        if let Some(BeforeKeep(hook)) = self.before_keep {
            hook(dest);
        }
    }
}

/// The device that made a version: the one whose counter is highest (a
/// scanner sets its own counter above every other when it records an
/// edit). `None` when the highest counter is shared.
pub(crate) fn author(version: &VersionVector) -> Option<ShortId> {
    let max = version.max_counter();
    let mut top = version.iter().filter(|(_, c)| *c == max).map(|(id, _)| id);
    let first = top.next()?;
    top.next().is_none().then_some(first)
}

/// One file in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Relative to the versions root.
    pub(crate) file: PathBuf,
    /// The synced path it was saved from.
    pub(crate) path: RelPath,
    /// When it was saved (ns).
    pub(crate) saved_at_ns: i64,
    /// Size on disk.
    pub(crate) size: u64,
    /// A symlink rather than a file.
    pub(crate) symlink: bool,
    /// What was recorded when it was saved.
    pub(crate) meta: Option<SavedMeta>,
}

/// What one [`History::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Versions deleted.
    pub(crate) deleted: usize,
    /// Bytes they held.
    pub(crate) freed: u64,
    /// Bytes the history holds now.
    pub(crate) kept: u64,
    /// The budget it was thinned to.
    pub(crate) budget: u64,
}

#[derive(Debug)]
struct Totals {
    /// Bytes in the history (exact after a sweep, kept up to date by saves
    /// and deletions in between).
    bytes: AtomicU64,
    /// The budget the last sweep computed.
    budget: AtomicU64,
    /// Woken when a save takes the history over its budget.
    over_budget: Notify,
}

/// The version folder of one synced folder. Cheap to clone.
#[derive(Clone)]
pub(crate) struct History {
    versions: Arc<Jail>,
    index: Index,
    policy: VersionsPolicy,
    names: Option<DeviceNames>,
    totals: Arc<Totals>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("versions", &self.versions.root()).field("policy", &self.policy).finish()
    }
}

/// Now, in ns since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

impl History {
    /// History kept in the jail `versions` under `policy`, its rows in
    /// `index`. Until the first sweep the budget is the policy's floor.
    pub(crate) fn new(versions: Arc<Jail>, index: Index, policy: VersionsPolicy) -> Self {
        let totals =
            Totals { bytes: AtomicU64::new(0), budget: AtomicU64::new(policy.budget(0)), over_budget: Notify::new() };
        History { versions, index, policy, names: None, totals: Arc::new(totals) }
    }

    /// Names the devices of saved versions with `names`.
    pub(crate) fn with_names(mut self, names: DeviceNames) -> Self {
        self.names = Some(names);
        self
    }

    /// The versions jail.
    pub(crate) fn jail(&self) -> &Arc<Jail> {
        &self.versions
    }

    /// The index holding the rows.
    #[cfg(test)]
    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// The name of device `id`, if known.
    pub(crate) fn name_of(&self, id: ShortId) -> Option<String> {
        self.names.as_ref().and_then(|names| names(id))
    }

    /// Whether replaced files are kept at all.
    pub(crate) fn enabled(&self) -> bool {
        self.policy.enabled
    }

    /// Moves the file or symlink at `path` in `folder` into the history;
    /// returns where it went (absolute; `None` when there was nothing to
    /// save, it is a folder, or versions are off, in which case it is
    /// removed).
    pub(crate) fn save(&self, folder: &Jail, path: &RelPath, cause: Cause<'_>) -> Result<Option<PathBuf>, JailError> {
        let rel = rel_path(path);
        let Some(meta) = folder.lstat(rel)? else { return Ok(None) };
        if meta.is_dir() {
            return Ok(None);
        }
        if !self.policy.enabled {
            folder.remove_file(rel)?;
            return Ok(None);
        }
        let (dest, at) = self.place(path, |dest| {
            cause.tell(&self.versions.root().join(dest));
            folder.move_to(rel, &self.versions, dest)
        })?;
        self.saved(path, &dest, at, meta.size, meta.is_symlink(), cause);
        Ok(Some(self.versions.root().join(dest)))
    }

    /// Keeps a copy of the regular file or symlink at `path` in `folder`
    /// (a hard link, or a copy where links are impossible) without
    /// removing it, so it can then be replaced atomically. Returns where
    /// the copy went.
    pub(crate) fn preserve(
        &self,
        folder: &Jail,
        path: &RelPath,
        cause: Cause<'_>,
    ) -> Result<Option<PathBuf>, JailError> {
        if !self.policy.enabled {
            return Ok(None);
        }
        let rel = rel_path(path);
        let Some(meta) = folder.lstat(rel)?.filter(|m| m.is_file() || m.is_symlink()) else { return Ok(None) };
        let (dest, at) = self.place(path, |dest| {
            cause.tell(&self.versions.root().join(dest));
            match folder.link_to(rel, &self.versions, dest) {
                // No hard links on this file system: copy (files only).
                Err(JailError::Io { .. }) if meta.is_file() => folder.copy_to(rel, &self.versions, dest),
                other => other,
            }
        })?;
        self.saved(path, &dest, at, meta.size, meta.is_symlink(), cause);
        Ok(Some(self.versions.root().join(dest)))
    }

    /// After a save: the row, the running total, the path's age rules.
    /// Failures here cost metadata or a late thinning, never the save.
    fn saved(&self, path: &RelPath, dest: &Path, at: i64, size: u64, symlink: bool, cause: Cause<'_>) {
        let saved = cause.saved.filter(|r| !r.deleted);
        let made_by = saved.and_then(|r| author(&r.version));
        let row = SavedMeta {
            path: path.clone(),
            saved_at_ns: at,
            size,
            content: saved.filter(|r| r.is_file() && r.size == size).map(|r| r.content),
            symlink,
            made_by,
            made_by_name: made_by.and_then(|id| self.name_of(id)),
            replaced_by: cause.by,
            replaced_by_name: cause.by.and_then(|id| self.name_of(id)),
            deleted: cause.deleted,
        };
        if let Some(key) = dest.to_str()
            && let Err(e) = self.index.put_saved(key, &row)
        {
            tracing::warn!("cannot record who made the saved version {}: {e}", dest.display());
        }
        let total = self.totals.bytes.fetch_add(size, Ordering::AcqRel).saturating_add(size);
        if let Err(e) = self.thin_path(path) {
            tracing::warn!("cannot thin the saved versions of {path}: {e}");
        }
        if total > self.totals.budget.load(Ordering::Acquire) {
            self.totals.over_budget.notify_one();
        }
    }

    /// Runs `put` with fresh history names for `path` until one is free;
    /// returns the name and its time.
    fn place(&self, path: &RelPath, put: impl Fn(&Path) -> Result<(), JailError>) -> Result<(PathBuf, i64), JailError> {
        let at = now_ns();
        let mut n = 0;
        loop {
            let dest = names::name_for(path, at, n);
            match put(&dest) {
                Ok(()) => return Ok((dest, at)),
                Err(JailError::AlreadyExists { .. }) if n < MAX_NAME_TRIES => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The saved versions of `path`, oldest first.
    pub(crate) fn list(&self, path: &RelPath) -> Result<Vec<Listed>, JailError> {
        let (parent, prefix) = names::slot(path);
        let entries = match self.versions.read_dir(parent) {
            Ok(entries) => entries,
            Err(JailError::NotFound { .. } | JailError::NotADirectory { .. } | JailError::SymlinkInPath { .. }) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let rows: BTreeMap<String, SavedMeta> =
            self.index.saved_with_prefix(&names::key_prefix(path)).unwrap_or_default().into_iter().collect();
        let mut found = Vec::new();
        for entry in entries {
            let Ok(meta) = entry.meta.as_ref() else { continue };
            if !(meta.is_file() || meta.is_symlink()) {
                continue;
            }
            let Some(name) = entry.name.to_str().filter(|n| n.starts_with(&prefix)) else { continue };
            let file = parent.map_or_else(|| PathBuf::from(name), |p| p.join(name));
            let Some(key) = file.to_str() else { continue };
            let Some((from, at)) = names::parse(key).filter(|(p, _)| p == path) else { continue };
            let row = rows.get(key).cloned();
            found.push(Listed {
                saved_at_ns: row.as_ref().map_or(at, |r| r.saved_at_ns),
                file: file.clone(),
                path: from,
                size: meta.size,
                symlink: meta.is_symlink(),
                meta: row,
            });
        }
        found.sort_by(|a, b| (a.saved_at_ns, &a.file).cmp(&(b.saved_at_ns, &b.file)));
        Ok(found)
    }

    /// Other paths in `path`'s folder with saved versions and a similar
    /// name (same name in another letter case, one name containing the
    /// other, or a common start of 3 characters): at most 5, for "did you
    /// mean".
    pub(crate) fn near(&self, path: &RelPath) -> Vec<String> {
        let (parent, _) = names::slot(path);
        let Ok(entries) = self.versions.read_dir(parent) else { return Vec::new() };
        let want = path.file_name().to_lowercase();
        let mut found = std::collections::BTreeSet::new();
        for entry in entries {
            let Some(name) = entry.name.to_str() else { continue };
            let file = parent.map_or_else(|| PathBuf::from(name), |p| p.join(name));
            let Some((other, _)) = file.to_str().and_then(names::parse) else { continue };
            let have = other.file_name().to_lowercase();
            let common = want.chars().zip(have.chars()).take_while(|(a, b)| a == b).count();
            if &other != path && (have.contains(&want) || want.contains(&have) || common >= 3) {
                found.insert(other.to_string());
            }
        }
        found.into_iter().take(5).collect()
    }

    /// Every file in the history (folders walked without following links).
    fn list_all(&self) -> Result<Vec<Listed>, JailError> {
        let rows: BTreeMap<String, SavedMeta> =
            self.index.saved_with_prefix("").unwrap_or_default().into_iter().collect();
        let mut out = Vec::new();
        let mut dirs: Vec<Option<PathBuf>> = vec![None];
        while let Some(dir) = dirs.pop() {
            let entries = match self.versions.read_dir(dir.as_deref()) {
                Ok(entries) => entries,
                Err(JailError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let Ok(meta) = entry.meta.as_ref() else { continue };
                let file = dir.as_ref().map_or_else(|| PathBuf::from(&entry.name), |d| d.join(&entry.name));
                if meta.is_dir() {
                    dirs.push(Some(file));
                    continue;
                }
                let Some((path, at)) = file.to_str().and_then(names::parse) else { continue };
                let row = file.to_str().and_then(|k| rows.get(k)).cloned();
                out.push(Listed {
                    saved_at_ns: row.as_ref().map_or(at, |r| r.saved_at_ns),
                    path,
                    size: meta.size,
                    symlink: meta.is_symlink(),
                    meta: row,
                    file,
                });
            }
        }
        // Rows whose file is gone (deleted by hand, or a crash).
        let present: std::collections::HashSet<&Path> = out.iter().map(|l| l.file.as_path()).collect();
        let stale: Vec<String> = rows.keys().filter(|k| !present.contains(Path::new(k.as_str()))).cloned().collect();
        if let Err(e) = self.index.remove_saved(&stale) {
            tracing::debug!("cannot forget rows of vanished versions: {e}");
        }
        Ok(out)
    }

    /// Applies the age rules to the versions of `path`.
    fn thin_path(&self, path: &RelPath) -> Result<(), JailError> {
        let versions = self.list(path)?;
        let schedule = Schedule { max_age_ns: self.max_age_ns(), budget: u64::MAX };
        self.delete(&versions, &thin(&infos(&versions), now_ns(), &schedule));
        Ok(())
    }

    /// Thins the whole history: age rules, then the size budget for a
    /// folder whose live files hold `folder_bytes`.
    pub(crate) fn sweep(&self, folder_bytes: u64) -> Result<Swept, JailError> {
        let budget = self.policy.budget(folder_bytes);
        self.totals.budget.store(budget, Ordering::Release);
        let versions = self.list_all()?;
        let schedule = Schedule { max_age_ns: self.max_age_ns(), budget };
        let doomed = thin(&infos(&versions), now_ns(), &schedule);
        let (deleted, freed) = self.delete(&versions, &doomed);
        let total: u64 = versions.iter().map(|v| v.size).sum();
        let kept = total.saturating_sub(freed);
        self.totals.bytes.store(kept, Ordering::Release);
        // Folders left empty (best effort; a save may be filling one).
        let mut dirs: Vec<&Path> =
            doomed.iter().filter_map(|&i| versions[i].file.parent()).filter(|p| !p.as_os_str().is_empty()).collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.dedup();
        for dir in dirs {
            for d in dir.ancestors().filter(|p| !p.as_os_str().is_empty()) {
                if self.versions.remove_empty_dir(d).is_err() {
                    break;
                }
            }
        }
        Ok(Swept { deleted, freed, kept, budget })
    }

    /// Resolves once a save has taken the history over its budget.
    pub(crate) async fn over_budget(&self) {
        self.totals.over_budget.notified().await;
    }

    fn max_age_ns(&self) -> i64 {
        i64::try_from(self.policy.max_age_days).unwrap_or(i64::MAX / DAY_NS).saturating_mul(DAY_NS)
    }

    /// Deletes `versions[i]` for each `i` in `doomed`; returns how many
    /// went and their bytes.
    fn delete(&self, versions: &[Listed], doomed: &[usize]) -> (usize, u64) {
        let (mut deleted, mut freed, mut keys) = (0, 0, Vec::new());
        for &i in doomed {
            let v = &versions[i];
            match self.versions.remove_file(&v.file) {
                Ok(()) | Err(JailError::NotFound { .. }) => {
                    deleted += 1;
                    freed += v.size;
                    if let Some(k) = v.file.to_str() {
                        keys.push(k.to_owned());
                    }
                }
                Err(e) => tracing::warn!("cannot delete the old version {}: {e}", v.file.display()),
            }
        }
        if let Err(e) = self.index.remove_saved(&keys) {
            tracing::debug!("cannot forget rows of deleted versions: {e}");
        }
        let _ = self.totals.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(freed)));
        (deleted, freed)
    }

    /// The saved versions of `path`, oldest first (absolute paths).
    #[cfg(test)]
    pub(crate) fn versions_of(&self, path: &RelPath) -> Result<Vec<PathBuf>, JailError> {
        Ok(self.list(path)?.into_iter().map(|l| self.versions.root().join(l.file)).collect())
    }
}

fn infos(versions: &[Listed]) -> Vec<VersionInfo> {
    versions
        .iter()
        .map(|v| VersionInfo { path: v.path.as_str().to_owned(), saved_at_ns: v.saved_at_ns, size: v.size })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use dartsync_shared::test_util::{RecordBuilder, vv};

    use super::*;

    pub(crate) struct Fixture {
        pub(crate) root: tempfile::TempDir,
        pub(crate) folder: Arc<Jail>,
        pub(crate) history: History,
    }

    pub(crate) fn fixture(policy: VersionsPolicy) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let versions = root.path().join(".dartsync/versions");
        fs::create_dir_all(&versions).unwrap();
        let index = Index::open(&root.path().join(".dartsync/index.redb")).unwrap();
        let folder = Arc::new(Jail::open(root.path()).unwrap());
        let history = History::new(Arc::new(Jail::open(&versions).unwrap()), index, policy);
        Fixture { root, folder, history }
    }

    #[test]
    fn saves_move_and_keep_everything_from_the_last_hour() {
        let f = fixture(VersionsPolicy::default());
        let path = RelPath::new("docs/a.txt").unwrap();
        fs::create_dir_all(f.root.path().join("docs")).unwrap();
        for i in 0..8 {
            fs::write(path.to_local(f.root.path()), format!("v{i}")).unwrap();
            let saved = f.history.save(&f.folder, &path, Cause::default()).unwrap().unwrap();
            assert!(saved.starts_with(f.history.jail().root()));
            assert!(!path.to_local(f.root.path()).exists());
        }
        let kept = f.history.versions_of(&path).unwrap();
        let contents: Vec<String> = kept.iter().map(|p| fs::read_to_string(p).unwrap()).collect();
        assert_eq!(contents, (0..8).map(|i| format!("v{i}")).collect::<Vec<_>>());
        // A sibling with a common prefix is not mixed in.
        let other = RelPath::new("docs/a.txt.bak").unwrap();
        fs::write(other.to_local(f.root.path()), "x").unwrap();
        f.history.save(&f.folder, &other, Cause::default()).unwrap();
        assert_eq!(f.history.versions_of(&path).unwrap().len(), 8);
        assert!(f.history.save(&f.folder, &RelPath::new("missing").unwrap(), Cause::default()).unwrap().is_none());
    }

    #[test]
    fn metadata_round_trips_and_old_files_are_listed_without_it() {
        let f = fixture(VersionsPolicy::default());
        let path = RelPath::new("a.txt").unwrap();
        let (alice, bob) = (ShortId(0xa), ShortId(0xb));
        let names: DeviceNames = Arc::new(move |id| (id == alice).then(|| "alice".to_owned()));
        let history = f.history.clone().with_names(names);
        fs::write(path.to_local(f.root.path()), "hello").unwrap();
        let indexed = RecordBuilder::file("a.txt").body(b"hello").vv(&[(0xa, 3), (0xb, 1)]).build();
        let deletion = RecordBuilder::file("a.txt").tombstone().vv(&[(0xa, 3), (0xb, 4)]).build();
        history.save(&f.folder, &path, Cause::replacing(Some(&indexed), &deletion)).unwrap().unwrap();
        // A history file from an older release: no row.
        let old = "a.txt~20200101-000000.000000000";
        fs::write(f.history.jail().root().join(old), "older").unwrap();
        let listed = history.list(&path).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].file, PathBuf::from(old));
        assert_eq!((listed[0].size, listed[0].meta.clone()), (5, None));
        assert_eq!(listed[0].saved_at_ns, 1_577_836_800 * 1_000_000_000);
        let meta = listed[1].meta.clone().unwrap();
        assert_eq!(meta.content, Some(indexed.content));
        assert_eq!((meta.made_by, meta.made_by_name.as_deref()), (Some(alice), Some("alice")));
        assert_eq!((meta.replaced_by, meta.replaced_by_name), (Some(bob), None));
        assert!(meta.deleted && !meta.symlink);
        assert_eq!(meta.size, 5);
        assert_eq!(author(&vv(&[(1, 2), (2, 2)])), None);
    }

    #[test]
    fn the_sweep_applies_the_budget_and_forgets_vanished_rows() {
        let f = fixture(VersionsPolicy::default());
        let big = vec![7u8; 1 << 20];
        for i in 0..80 {
            let path = RelPath::new(&format!("d{}/f{i}", i % 3)).unwrap();
            fs::create_dir_all(f.root.path().join(format!("d{}", i % 3))).unwrap();
            fs::write(path.to_local(f.root.path()), &big).unwrap();
            f.history.save(&f.folder, &path, Cause::default()).unwrap();
        }
        // 80 MiB saved, budget 64 MiB (the floor): 16 go, oldest first.
        let swept = f.history.sweep(0).unwrap();
        assert_eq!((swept.deleted, swept.kept, swept.budget), (16, 64 << 20, 64 << 20));
        assert!(f.history.list(&RelPath::new("d0/f0").unwrap()).unwrap().is_empty());
        assert_eq!(f.history.list(&RelPath::new("d2/f77").unwrap()).unwrap().len(), 1);
        assert_eq!(f.history.index().saved_with_prefix("").unwrap().len(), 64);
        // Removed by hand: the row goes with the next sweep.
        fs::remove_file(f.history.versions_of(&RelPath::new("d2/f77").unwrap()).unwrap()[0].clone()).unwrap();
        assert_eq!(f.history.sweep(0).unwrap().deleted, 0);
        assert_eq!(f.history.index().saved_with_prefix("").unwrap().len(), 63);
    }

    #[test]
    fn preserve_keeps_the_file_in_place() {
        let f = fixture(VersionsPolicy::default());
        let path = RelPath::new("top.txt").unwrap();
        fs::write(path.to_local(f.root.path()), "old").unwrap();
        let saved = f.history.preserve(&f.folder, &path, Cause::default()).unwrap().unwrap();
        assert_eq!(fs::read_to_string(saved).unwrap(), "old");
        assert_eq!(fs::read_to_string(path.to_local(f.root.path())).unwrap(), "old");
    }

    #[test]
    fn the_new_place_is_told_while_the_file_is_still_at_the_old_one() {
        let f = fixture(VersionsPolicy::default());
        let path = RelPath::new("a.bin").unwrap();
        let local = path.to_local(f.root.path());
        for preserve in [false, true] {
            fs::write(&local, "content").unwrap();
            let told = std::cell::RefCell::new(Vec::new());
            let hook = |dest: &Path| {
                // Still at the old place, not yet at the new one: a reader
                // told about both finds it at one or the other throughout.
                assert_eq!(fs::read_to_string(&local).unwrap(), "content");
                assert!(!dest.exists(), "{} exists before the move", dest.display());
                told.borrow_mut().push(dest.to_owned());
            };
            let cause = Cause::default().telling(Some(BeforeKeep(&hook)));
            let saved = if preserve {
                f.history.preserve(&f.folder, &path, cause)
            } else {
                f.history.save(&f.folder, &path, cause)
            };
            let saved = saved.unwrap().unwrap();
            assert_eq!(told.into_inner(), std::slice::from_ref(&saved), "preserve={preserve}");
            assert_eq!(fs::read_to_string(&saved).unwrap(), "content");
        }
    }

    #[test]
    fn versions_off_deletes() {
        let f = fixture(VersionsPolicy { enabled: false, ..VersionsPolicy::default() });
        let path = RelPath::new("f").unwrap();
        fs::write(path.to_local(f.root.path()), "x").unwrap();
        assert!(f.history.save(&f.folder, &path, Cause::default()).unwrap().is_none());
        assert!(!path.to_local(f.root.path()).exists());
        assert!(f.history.list(&path).unwrap().is_empty());
    }

    #[test]
    fn a_symlinked_parent_is_refused_and_nothing_outside_moves() {
        let f = fixture(VersionsPolicy::default());
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), f.root.path().join("docs")).unwrap();
        let path = RelPath::new("docs/secret").unwrap();
        assert!(matches!(f.history.save(&f.folder, &path, Cause::default()), Err(JailError::SymlinkInPath { .. })));
        assert!(matches!(f.history.preserve(&f.folder, &path, Cause::default()), Err(JailError::SymlinkInPath { .. })));
        assert_eq!(fs::read_to_string(outside.path().join("secret")).unwrap(), "s");
    }
}
