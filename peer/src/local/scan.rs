//! The scanner: compares the disk with the index and turns differences into
//! new records.
//!
//! A scan walks a subtree (or the whole folder), `lstat`s every entry once
//! and re-reads a file only when its size, mtime or inode differ from the
//! index's [`StatKey`] (or when the piece length changed, which forces a
//! re-chunk). Differences become new versions: this peer's counter is set
//! to one more than the largest counter of the vector last known for the
//! path ([`VersionVector::bumped`]); a vanished path becomes a tombstone,
//! bumped the same way. Index entries under the scanned subtree that were
//! not seen on disk are tombstoned, children before parents; new entries
//! are recorded parents before children.
//!
//! Invariants:
//! - **Nothing half-written is announced.** A file is hashed only once its
//!   last change (its mtime: every write moves it) is older than the quiet
//!   period, or when an event certified it complete after that change
//!   ([`Settled`]: closed after writing, renamed into place); its stat is
//!   taken before opening, from the open file before and after hashing,
//!   and again just before the commit. Any movement defers the path (it is
//!   retried later).
//! - **Echo suppression by state comparison.** Planning runs without locks
//!   against a snapshot of the index; the commit takes the commit lock and
//!   re-reads each entry inside the write transaction: if another writer
//!   (`record_applied`, `adopt_version`) changed it in between, the plan is
//!   dropped and the path re-checked. Records the peer wrote itself
//!   therefore never come back as local changes.
//! - Symlinks are never followed; one pointing outside the folder is
//!   skipped with one warning per path. Special files are skipped. Ignored
//!   paths are never recorded, and existing entries of paths that became
//!   ignored are left alone (not tombstoned).
//!
//! Everything here is synchronous and blocking (stat, read, redb): the
//! async side ([`crate::local`]) runs it in `spawn_blocking`. This module
//! does not watch anything and owns no task; it does not decide when to
//! scan.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::chunk::{ChunkInfo, ChunkedFile};
use dartsync_shared::path::is_state_dir_name;
use dartsync_shared::version::CounterExhausted;
use dartsync_shared::{ContentHash, FileKind, FileRecord, RelPath, ShortId, VersionVector};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::jail::{JailError, Meta, rel_path};
use crate::local::commit::WriteGate;
use crate::local::error::LocalError;
use crate::local::ignore::{IGNORE_FILE, IgnoreRules, Reload};
use crate::local::index::{Head, IndexEntry};
use crate::local::probe::{Disk, Observed};
use crate::local::stat::{StatKey, changed_within, unchanged_since};

/// Plans committed per write transaction during a scan.
const BATCH_RECORDS: usize = 512;
/// Bytes hashed after which a batch is committed early (bounds the memory
/// held in pending chunk lists and the latency of big files).
const BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// What one scan operation found that the caller must act on.
#[derive(Debug, Default)]
pub(crate) struct ScanReport {
    /// Records committed and sent as local changes.
    pub(crate) emitted: usize,
    /// Paths to check again after the quiet period (still being written, or
    /// changed while the scan looked at them).
    pub(crate) retry: Vec<RelPath>,
    /// Folders this scan recorded for the first time: files created in
    /// them before the watcher watched them made no event, so they are
    /// looked at again a moment later.
    pub(crate) new_dirs: Vec<RelPath>,
    /// The scan stopped early because of shutdown.
    pub(crate) interrupted: bool,
}

/// How a scan looks at files.
#[derive(Debug, Default)]
struct How {
    /// Re-hash every file (the piece length changed).
    force: bool,
    /// Files that need not wait out the quiet period.
    settled: Settled,
}

/// Paths an event certified complete, each with the instant it did (see
/// [`crate::local::watch::Touched::settled_at`]); an entry covers its
/// whole subtree (a folder renamed into place).
#[derive(Debug, Default)]
pub(crate) struct Settled(HashMap<RelPath, i64>);

impl Settled {
    /// Certifications of the given paths (`None`: none).
    pub(crate) fn of(paths: &BTreeMap<RelPath, Option<i64>>) -> Settled {
        Settled(paths.iter().filter_map(|(p, at)| Some((p.clone(), (*at)?))).collect())
    }

    /// True when `path` or one of its ancestors was certified complete and
    /// the file has not changed since.
    fn covers(&self, path: &RelPath, meta: &Meta) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let certified = |p: &RelPath| self.0.get(p).is_some_and(|&at| unchanged_since(meta, at));
        certified(path) || path.ancestors().iter().any(certified)
    }
}

/// A record to store, with what it was planned against.
#[derive(Debug)]
struct Pending {
    expected: Option<Head>,
    seen: Observed,
    entry: IndexEntry,
    emit: bool,
}

/// Why planning one path failed.
enum PlanError {
    Local(LocalError),
    Exhausted(CounterExhausted),
}

impl From<LocalError> for PlanError {
    fn from(e: LocalError) -> Self {
        PlanError::Local(e)
    }
}

impl From<CounterExhausted> for PlanError {
    fn from(e: CounterExhausted) -> Self {
        PlanError::Exhausted(e)
    }
}

enum Plan {
    Nothing,
    Store(Box<Pending>),
    Defer,
}

/// Plans accumulated across the subtrees of one scan operation.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    bytes: u64,
    report: ScanReport,
}

/// Compares one folder with its index (see the module docs).
#[derive(Debug)]
pub(crate) struct Scanner {
    /// The index, the disk reader and the commit lock shared with the
    /// engine's writes.
    gate: Arc<WriteGate>,
    rules: Mutex<IgnoreRules>,
    me: ShortId,
    /// A file modified less than this long ago may still be being written.
    quiet: Duration,
    /// Local changes are reported but never indexed (a receive-only
    /// folder): the index keeps what the cluster gave, so the engine sees
    /// them as unannounced edits and `revert` can put the cluster's
    /// version back.
    receive_only: bool,
    changes: mpsc::Sender<FileRecord>,
    shutdown: CancellationToken,
}

/// Settings of a [`Scanner`].
#[derive(Debug)]
pub(crate) struct ScannerConfig {
    pub(crate) me: ShortId,
    pub(crate) quiet: Duration,
    pub(crate) receive_only: bool,
}

fn tombstone(path: &RelPath, previous: &FileRecord, version: VersionVector) -> FileRecord {
    FileRecord {
        path: path.clone(),
        kind: previous.kind.clone(),
        size: 0,
        mtime_ns: previous.mtime_ns,
        mode: previous.mode,
        content: ContentHash::empty(),
        chunks: ContentHash::empty(),
        version,
        deleted: true,
    }
}

fn non_file(path: &RelPath, kind: FileKind, stat: &StatKey, version: VersionVector) -> FileRecord {
    FileRecord {
        path: path.clone(),
        kind,
        size: 0,
        mtime_ns: stat.mtime_ns,
        mode: stat.mode,
        content: ContentHash::empty(),
        chunks: ContentHash::empty(),
        version,
        deleted: false,
    }
}

impl Scanner {
    pub(crate) fn new(
        config: ScannerConfig,
        gate: Arc<WriteGate>,
        rules: IgnoreRules,
        changes: mpsc::Sender<FileRecord>,
        shutdown: CancellationToken,
    ) -> Scanner {
        Scanner {
            gate,
            rules: Mutex::new(rules),
            me: config.me,
            quiet: config.quiet,
            receive_only: config.receive_only,
            changes,
            shutdown,
        }
    }

    /// Re-reads `.dartsyncignore` if it changed and settled; true when the
    /// rules changed. A file still within the quiet period is retried.
    fn reload_ignore(&self, report: &mut ScanReport, settled: &Settled) -> bool {
        let settled_at =
            settled.0.get(&RelPath::new(IGNORE_FILE).expect("the ignore file name is a valid path")).copied();
        match self.rules.lock().reload_if_changed(self.quiet, settled_at) {
            Reload::Unchanged => false,
            Reload::Reloaded => true,
            Reload::Pending => {
                report.retry.push(RelPath::new(IGNORE_FILE).expect("the ignore file name is a valid path"));
                false
            }
        }
    }

    fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.rules.lock().is_ignored(path, is_dir)
    }

    fn next_version(&self, expected: Option<&Head>) -> Result<VersionVector, CounterExhausted> {
        expected.map_or_else(VersionVector::new, |h| h.record.version.clone()).bumped(self.me)
    }

    /// Decides what to store for `path`, given the index's view and one
    /// `lstat` of the disk. Hashes the file if its stat moved (or
    /// `how.force`).
    /// A change that cannot get a new version (its vector's counters are at
    /// the limit) is reported once and not recorded.
    fn plan(
        &self,
        path: &RelPath,
        expected: Option<&Head>,
        meta: Option<&Meta>,
        how: &How,
    ) -> Result<Plan, LocalError> {
        match self.plan_change(path, expected, meta, how) {
            Ok(plan) => Ok(plan),
            Err(PlanError::Local(e)) => Err(e),
            Err(PlanError::Exhausted(e)) => {
                self.gate.probe.warn_once(path.as_str(), "local change not recorded", &e);
                Ok(Plan::Nothing)
            }
        }
    }

    fn plan_change(
        &self,
        path: &RelPath,
        expected: Option<&Head>,
        meta: Option<&Meta>,
        how: &How,
    ) -> Result<Plan, PlanError> {
        let seen = Observed::of(meta);
        let live = expected.filter(|h| !h.record.deleted);
        let store = |record: FileRecord, chunks: Vec<ChunkInfo>, stat: Option<StatKey>, emit: bool| {
            Plan::Store(Box::new(Pending {
                expected: expected.cloned(),
                seen,
                entry: IndexEntry { record, chunks, stat },
                emit,
            }))
        };
        let plan = match self.gate.probe.classify(path, meta) {
            Disk::Missing | Disk::Unsyncable(_) => match live {
                Some(h) => store(tombstone(path, &h.record, self.next_version(expected)?), Vec::new(), None, true),
                None => Plan::Nothing,
            },
            Disk::Dir(stat) => match live {
                Some(h) if h.record.kind == FileKind::Dir && h.stat.map_or(h.record.mode, |s| s.mode) == stat.mode => {
                    Plan::Nothing
                }
                _ => store(
                    non_file(path, FileKind::Dir, &stat, self.next_version(expected)?),
                    Vec::new(),
                    Some(stat),
                    true,
                ),
            },
            Disk::Symlink(stat, target) => match live {
                Some(h) if matches!(&h.record.kind, FileKind::Symlink { target: t } if *t == target) => Plan::Nothing,
                _ => {
                    let record = non_file(path, FileKind::Symlink { target }, &stat, self.next_version(expected)?);
                    store(record, Vec::new(), Some(stat), true)
                }
            },
            Disk::File(stat) => {
                let known = live.filter(|h| h.record.kind == FileKind::File);
                let same_stamp = known.and_then(|h| h.stat).is_some_and(|s| s.same_content_stamp(&stat));
                match known {
                    Some(h) if same_stamp && !how.force => {
                        if h.stat.is_some_and(|s| s.mode == stat.mode) {
                            Plan::Nothing
                        } else {
                            // Permission change only: a new version, no read.
                            let chunks = self.gate.index.get(path)?.map(|e| e.chunks).unwrap_or_default();
                            let mut record = h.record.clone();
                            record.mode = stat.mode;
                            record.version = self.next_version(expected)?;
                            store(record, chunks, Some(stat), true)
                        }
                    }
                    _ if meta.is_some_and(|m| changed_within(m, self.quiet) && !how.settled.covers(path, m)) => {
                        Plan::Defer
                    }
                    _ => match self.gate.probe.hash_file(path, &stat) {
                        Ok(None) => Plan::Defer,
                        Err(e) if e.is_gone() => Plan::Defer,
                        Err(e) => {
                            self.gate.probe.warn_once(path.as_str(), "cannot read file; skipped", &e);
                            Plan::Nothing
                        }
                        Ok(Some(chunked)) => self.plan_hashed(path, expected, known, stat, chunked, &store)?,
                    },
                }
            }
        };
        Ok(plan)
    }

    fn plan_hashed(
        &self,
        path: &RelPath,
        expected: Option<&Head>,
        known: Option<&Head>,
        stat: StatKey,
        chunked: ChunkedFile,
        store: &dyn Fn(FileRecord, Vec<ChunkInfo>, Option<StatKey>, bool) -> Plan,
    ) -> Result<Plan, PlanError> {
        let mode_same = known.and_then(|h| h.stat).is_some_and(|s| s.mode == stat.mode);
        match known {
            Some(h) if h.record.content == chunked.content && mode_same => {
                // Same bytes (a touch, or a re-chunk after a piece-length
                // change): keep the version. A new chunk list is announced
                // with the unchanged vector so the global record matches it.
                let rechunked = h.record.chunks != chunked.chunks_hash;
                let mut record = h.record.clone();
                record.chunks = chunked.chunks_hash;
                Ok(store(record, chunked.chunks, Some(stat), rechunked))
            }
            _ => {
                let record = FileRecord {
                    path: path.clone(),
                    kind: FileKind::File,
                    size: chunked.size,
                    mtime_ns: stat.mtime_ns,
                    // With permission bits ignored, an edit keeps the mode
                    // the cluster knows rather than announce a made-up one.
                    mode: match known {
                        Some(h) if self.gate.probe.ignores_perms() => h.record.mode,
                        _ => stat.mode,
                    },
                    content: chunked.content,
                    chunks: chunked.chunks_hash,
                    version: self.next_version(expected)?,
                    deleted: false,
                };
                Ok(store(record, chunked.chunks, Some(stat), true))
            }
        }
    }

    fn add(&self, plan: Plan, path: &RelPath, batch: &mut Batch) -> Result<(), LocalError> {
        match plan {
            Plan::Nothing => {}
            Plan::Defer => batch.report.retry.push(path.clone()),
            Plan::Store(pending) => {
                batch.bytes += pending.entry.record.size;
                batch.pending.push(*pending);
                if batch.pending.len() >= BATCH_RECORDS || batch.bytes >= BATCH_BYTES {
                    self.flush(batch)?;
                }
            }
        }
        Ok(())
    }

    /// Commits the pending plans that still hold, then sends the new
    /// records as local changes.
    fn flush(&self, batch: &mut Batch) -> Result<(), LocalError> {
        batch.bytes = 0;
        if batch.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut batch.pending);
        let retry = &mut batch.report.retry;
        let new_dirs = &mut batch.report.new_dirs;
        let committed = {
            let _guard = self.gate.lock();
            self.gate.index.write(|w| {
                let mut out = Vec::new();
                for p in pending {
                    let path = &p.entry.record.path;
                    if w.head(path)? != p.expected || Observed::of(self.gate.probe.lstat(path)?.as_ref()) != p.seen {
                        retry.push(path.clone());
                        continue;
                    }
                    if p.expected.is_none() && p.entry.record.kind == FileKind::Dir && !p.entry.record.deleted {
                        new_dirs.push(path.clone());
                    }
                    if p.emit && self.receive_only {
                        // Reported, never indexed (see `receive_only`).
                        out.push(p.entry.record);
                        continue;
                    }
                    match w.put(&p.entry.record, &p.entry.chunks, p.entry.stat) {
                        Ok(()) => {}
                        // Only this entry is unstorable (e.g. a chunk list
                        // beyond the codec limit); the transaction is intact.
                        Err(err @ LocalError::Encode { .. }) => {
                            self.gate.probe.warn_once(path.as_str(), "cannot index; skipped", &err);
                            continue;
                        }
                        Err(err) => return Err(err),
                    }
                    if p.emit {
                        out.push(p.entry.record);
                    }
                }
                Ok(out)
            })?
        };
        batch.report.emitted += committed.len();
        for record in committed {
            self.emit(record);
        }
        Ok(())
    }

    /// Sends one local change, waiting for room (backpressure) unless the
    /// peer is shutting down or nobody listens any more.
    fn emit(&self, record: FileRecord) {
        tracing::debug!(path = %record.path, deleted = record.deleted, "local change");
        let sent = futures::executor::block_on(async {
            tokio::select! {
                biased;
                res = self.changes.send(record) => res.is_ok(),
                () = self.shutdown.cancelled() => false,
            }
        });
        if !sent {
            tracing::debug!("local change not delivered (receiver gone or shutting down); the index keeps it");
        }
    }

    /// Scans the whole folder. `force` re-hashes every file (the piece
    /// length changed).
    pub(crate) fn full_scan(&self, force: bool) -> Result<ScanReport, LocalError> {
        let mut batch = Batch::default();
        let how = How { force, settled: Settled::default() };
        self.reload_ignore(&mut batch.report, &how.settled);
        self.scan_subtree(None, &how, &mut batch)?;
        self.flush(&mut batch)?;
        Ok(batch.report)
    }

    /// Re-checks dirty paths: each path's subtree, or that of its outermost
    /// ancestor not known as a folder (so a new tree is recorded whole).
    /// Each path comes with the instant an event certified it complete, if
    /// one did. A changed `.dartsyncignore` turns this into a full scan
    /// (paths may have become ignored or visible anywhere).
    pub(crate) fn check_paths(&self, paths: BTreeMap<RelPath, Option<i64>>) -> Result<ScanReport, LocalError> {
        // The peer's own writes that these events may report are indexed
        // under the commit lock right after they are made (an install
        // batch: all its renames, then one commit). Waiting for the lock
        // once means none is still unrecorded, so none is hashed here for
        // nothing and then dropped at the commit.
        drop(self.gate.lock());
        let how = How { force: false, settled: Settled::of(&paths) };
        let mut early = ScanReport::default();
        if self.reload_ignore(&mut early, &how.settled) {
            let mut report = self.full_scan(false)?;
            report.retry.extend(early.retry);
            return Ok(report);
        }
        let mut bases = BTreeSet::new();
        for path in paths.into_keys() {
            let mut base = path.clone();
            for ancestor in path.ancestors() {
                if !self.gate.index.head(&ancestor)?.is_some_and(|h| h.record.is_dir()) {
                    base = ancestor;
                    break;
                }
            }
            bases.insert(base);
        }
        let mut batch = Batch { report: early, ..Batch::default() };
        for base in &bases {
            if base.ancestors().iter().any(|a| bases.contains(a)) {
                continue; // covered by the ancestor's subtree
            }
            if self.shutdown.is_cancelled() {
                batch.report.interrupted = true;
                break;
            }
            self.scan_subtree(Some(base), &how, &mut batch)?;
        }
        self.flush(&mut batch)?;
        Ok(batch.report)
    }

    /// Walks `base` (the whole folder for `None`) and plans every entry;
    /// then tombstones index entries of the subtree not seen on disk.
    fn scan_subtree(&self, base: Option<&RelPath>, how: &How, batch: &mut Batch) -> Result<(), LocalError> {
        let heads = self.gate.index.heads(base)?;
        let mut seen: HashSet<RelPath> = HashSet::new();
        // Folders that could not be listed: their entries are left alone.
        let mut unreadable: Vec<Option<RelPath>> = Vec::new();
        let mut stack: Vec<Option<RelPath>> = Vec::new();
        match base {
            None => stack.push(None),
            Some(base) => {
                let meta = self.gate.probe.lstat(base)?;
                let is_dir = meta
                    .as_ref()
                    .map_or_else(|| heads.get(base).is_some_and(|h| h.record.kind == FileKind::Dir), |m| m.is_dir());
                if self.is_ignored(base, is_dir) {
                    return Ok(());
                }
                seen.insert(base.clone());
                let plan = self.plan(base, heads.get(base), meta.as_ref(), how)?;
                self.add(plan, base, batch)?;
                if meta.as_ref().is_some_and(|m| m.is_dir()) {
                    stack.push(Some(base.clone()));
                }
            }
        }
        let jail = self.gate.probe.jail();
        while let Some(dir_rel) = stack.pop() {
            if self.shutdown.is_cancelled() {
                batch.report.interrupted = true;
                return Ok(());
            }
            let shown = dir_rel.as_ref().map_or(".", |d| d.as_str()).to_owned();
            let entries = match jail.read_dir(dir_rel.as_ref().map(rel_path)) {
                Ok(entries) => entries,
                Err(e) => {
                    if !matches!(e, JailError::NotFound { .. }) {
                        self.gate.probe.warn_once(&shown, "cannot list folder", &e);
                    }
                    unreadable.push(dir_rel);
                    continue;
                }
            };
            for entry in entries {
                let Some(name) = entry.name.to_str() else {
                    self.gate.probe.warn_once(
                        &format!("{shown}/{}", entry.name.to_string_lossy()),
                        "name is not UTF-8; skipped",
                        &"",
                    );
                    continue;
                };
                if is_state_dir_name(name) {
                    continue;
                }
                let rel = match &dir_rel {
                    None => RelPath::new(name),
                    Some(d) => d.join(name),
                };
                let rel = match rel {
                    Ok(rel) => rel,
                    Err(e) => {
                        self.gate.probe.warn_once(&format!("{shown}/{name}"), "name cannot be synced; skipped", &e);
                        continue;
                    }
                };
                let meta = match entry.meta {
                    Ok(meta) => self.gate.probe.normalize(meta),
                    Err(JailError::NotFound { .. }) => continue,
                    Err(e) => {
                        self.gate.probe.warn_once(rel.as_str(), "cannot stat; skipped", &e);
                        // Not seen, but not known to be gone either.
                        unreadable.push(Some(rel));
                        continue;
                    }
                };
                if self.is_ignored(&rel, meta.is_dir()) {
                    continue;
                }
                seen.insert(rel.clone());
                let plan = self.plan(&rel, heads.get(&rel), Some(&meta), how)?;
                self.add(plan, &rel, batch)?;
                if meta.is_dir() {
                    stack.push(Some(rel));
                }
            }
        }
        // Known live paths that were not seen: gone (children first).
        let under_unreadable = |p: &RelPath| unreadable.iter().any(|u| u.as_ref().is_none_or(|u| p.starts_with(u)));
        let missing: Vec<&Head> = heads
            .values()
            .rev()
            .filter(|h| !h.record.deleted && !seen.contains(&h.record.path))
            .filter(|h| !under_unreadable(&h.record.path))
            .filter(|h| !self.is_ignored(&h.record.path, h.record.kind == FileKind::Dir))
            .collect();
        for head in missing {
            let path = &head.record.path;
            match self.gate.probe.lstat(path)? {
                // It appeared after the walk passed its folder.
                Some(_) => batch.report.retry.push(path.clone()),
                None => {
                    let plan = self.plan(path, Some(head), None, &How::default())?;
                    self.add(plan, path, batch)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Synchronous scanner tests (no watcher, no runtime tasks): the
    //! end-to-end behaviour with the watcher is tested in `local.rs`.
    use std::path::PathBuf;

    use super::*;
    use crate::jail::Jail;
    use crate::local::index::Index;
    use crate::local::probe::Probe;
    use dartsync_shared::chunk::ChunkParams;
    use dartsync_shared::test_util::{RecordBuilder, det_bytes};

    /// Dirty paths no event certified complete.
    fn unsettled(paths: &[&str]) -> BTreeMap<RelPath, Option<i64>> {
        paths.iter().map(|p| (RelPath::new(p).unwrap(), None)).collect()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        scanner: Scanner,
        rx: mpsc::Receiver<FileRecord>,
    }

    fn fixture() -> Fixture {
        fixture_with(false)
    }

    fn fixture_with(ignore_perms: bool) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let index = Index::open(&tmp.path().join("index.redb")).unwrap();
        let (tx, rx) = mpsc::channel(10_000);
        let jail = Arc::new(Jail::open(&root).unwrap());
        let gate =
            Arc::new(WriteGate::new(index, Probe::new(jail.clone(), ChunkParams::for_piece_len(4096), ignore_perms)));
        let config = ScannerConfig { me: ShortId(1), quiet: Duration::ZERO, receive_only: false };
        let scanner = Scanner::new(config, gate, IgnoreRules::load(jail), tx, CancellationToken::new());
        Fixture { _tmp: tmp, root, scanner, rx }
    }

    impl Fixture {
        fn changes(&mut self) -> Vec<FileRecord> {
            let mut out = Vec::new();
            while let Ok(r) = self.rx.try_recv() {
                out.push(r);
            }
            out
        }
    }

    fn summary(records: &[FileRecord]) -> Vec<String> {
        records.iter().map(|r| format!("{}{}", if r.deleted { "-" } else { "+" }, r.path)).collect()
    }

    #[test]
    fn full_scan_records_parents_first_and_tombstones_children_first() {
        let mut f = fixture();
        std::fs::create_dir_all(f.root.join("a/b")).unwrap();
        std::fs::write(f.root.join("a/b/c.txt"), b"hello").unwrap();
        f.scanner.full_scan(false).unwrap();
        let added = f.changes();
        assert_eq!(summary(&added), ["+a", "+a/b", "+a/b/c.txt"]);
        assert!(added.iter().all(|r| r.version == VersionVector::from_entries([(ShortId(1), 1)])));
        assert!(added.iter().all(|r| r.validate().is_ok()));

        std::fs::remove_dir_all(f.root.join("a")).unwrap();
        f.scanner.full_scan(false).unwrap();
        let removed = f.changes();
        assert_eq!(summary(&removed), ["-a/b/c.txt", "-a/b", "-a"]);
        assert!(removed.iter().all(|r| r.version.get(ShortId(1)) == 2 && r.validate().is_ok()));
    }

    #[test]
    fn bump_uses_the_largest_counter_known() {
        let mut f = fixture();
        std::fs::write(f.root.join("x"), b"v1").unwrap();
        // The index knows a global version from other peers.
        let global = VersionVector::from_entries([(ShortId(9), 5), (ShortId(1), 2)]);
        let chunked = dartsync_shared::chunk::chunk_bytes(b"v1", ChunkParams::for_piece_len(4096));
        let record = RecordBuilder::file("x").chunked(&chunked).version(global.clone()).build();
        assert!(f.scanner.gate.record_applied(&record.path, &record, &chunked.chunks).unwrap());
        f.scanner.full_scan(false).unwrap();
        assert!(f.changes().is_empty(), "applied record echoed");
        std::fs::write(f.root.join("x"), b"v2 longer").unwrap();
        f.scanner.full_scan(false).unwrap();
        let got = f.changes();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].version, VersionVector::from_entries([(ShortId(9), 5), (ShortId(1), 6)]));
        assert!(got[0].version.dominates(&global));
    }

    #[test]
    fn a_touch_is_not_a_new_version_and_a_chmod_is() {
        use std::os::unix::fs::PermissionsExt;
        let mut f = fixture();
        let p = f.root.join("t");
        std::fs::write(&p, b"same").unwrap();
        f.scanner.full_scan(false).unwrap();
        assert_eq!(f.changes().len(), 1);
        let file = std::fs::File::options().write(true).open(&p).unwrap();
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
        f.scanner.full_scan(false).unwrap();
        assert!(f.changes().is_empty(), "mtime alone is not a change");
        let before = f.scanner.gate.probe.bytes_hashed();
        f.scanner.full_scan(false).unwrap();
        assert_eq!(f.scanner.gate.probe.bytes_hashed(), before, "the new stat was stored");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        f.scanner.full_scan(false).unwrap();
        let got = f.changes();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].mode, 0o600);
        assert_eq!(f.scanner.gate.probe.bytes_hashed(), before, "a chmod needs no read");
    }

    #[test]
    fn check_paths_escalates_to_unknown_ancestors_and_catches_folder_renames() {
        let mut f = fixture();
        std::fs::create_dir_all(f.root.join("new/deep/er")).unwrap();
        std::fs::write(f.root.join("new/deep/er/f"), b"1").unwrap();
        std::fs::write(f.root.join("new/g"), b"2").unwrap();
        // Only the deepest file is reported dirty; the whole new tree is found.
        f.scanner.check_paths(unsettled(&["new/deep/er/f"])).unwrap();
        let mut got = summary(&f.changes());
        got.sort();
        assert_eq!(got, ["+new", "+new/deep", "+new/deep/er", "+new/deep/er/f", "+new/g"]);

        std::fs::rename(f.root.join("new"), f.root.join("moved")).unwrap();
        f.scanner.check_paths(unsettled(&["new", "moved"])).unwrap();
        let got = f.changes();
        let mut names = summary(&got);
        names.sort();
        assert_eq!(
            names,
            [
                "+moved",
                "+moved/deep",
                "+moved/deep/er",
                "+moved/deep/er/f",
                "+moved/g",
                "-new",
                "-new/deep",
                "-new/deep/er",
                "-new/deep/er/f",
                "-new/g"
            ]
        );
        let content = |p: &str| got.iter().find(|r| r.path.as_str() == p).unwrap().content;
        assert_eq!(content("moved/g"), ContentHash::of(b"2"));
    }

    #[test]
    fn a_file_replacing_a_folder_tombstones_its_children() {
        let mut f = fixture();
        std::fs::create_dir_all(f.root.join("x/y")).unwrap();
        f.scanner.full_scan(false).unwrap();
        f.changes();
        std::fs::remove_dir_all(f.root.join("x")).unwrap();
        std::fs::write(f.root.join("x"), b"now a file").unwrap();
        f.scanner.check_paths(unsettled(&["x"])).unwrap();
        let got = f.changes();
        assert_eq!(summary(&got), ["+x", "-x/y"]);
        assert_eq!(got[0].kind, FileKind::File);
        assert_eq!(got[0].version.get(ShortId(1)), 2, "bumped from the folder's vector");
    }

    #[test]
    fn a_recent_file_is_deferred_not_announced() {
        let mut f = fixture();
        f.scanner.quiet = Duration::from_secs(3600);
        std::fs::write(f.root.join("busy"), b"partial").unwrap();
        let report = f.scanner.full_scan(false).unwrap();
        assert!(f.changes().is_empty());
        assert_eq!(report.retry, [RelPath::new("busy").unwrap()]);
        assert_eq!(f.scanner.gate.probe.bytes_hashed(), 0);
    }

    #[test]
    fn only_a_recent_write_defers_not_a_recent_rename_or_chmod() {
        let mut f = fixture();
        f.scanner.quiet = Duration::from_secs(3600);
        // Written long ago (mtime in the past), moved and chmodded just now
        // (ctime now): complete, nothing to wait for.
        std::fs::write(f.root.join("old"), b"long done").unwrap();
        let file = std::fs::File::options().write(true).open(f.root.join("old")).unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200)).unwrap();
        drop(file);
        std::fs::create_dir(f.root.join("new")).unwrap();
        std::fs::rename(f.root.join("old"), f.root.join("new/moved")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.root.join("new/moved"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let report = f.scanner.full_scan(false).unwrap();
        let announced: Vec<String> = f.changes().iter().map(|r| r.path.to_string()).collect();
        assert_eq!(announced, ["new", "new/moved"]);
        assert!(report.retry.is_empty(), "{:?}", report.retry);
    }

    #[test]
    fn a_recent_file_certified_complete_after_its_last_change_is_announced_at_once() {
        let mut f = fixture();
        f.scanner.quiet = Duration::from_secs(3600);
        std::fs::create_dir_all(f.root.join("moved/in")).unwrap();
        std::fs::write(f.root.join("closed"), b"whole").unwrap();
        std::fs::write(f.root.join("moved/in/deep"), b"whole too").unwrap();
        std::fs::write(f.root.join("certified-too-early"), b"partial").unwrap();
        let now = crate::local::stat::now_ns();
        let dirty: BTreeMap<RelPath, Option<i64>> = [
            (RelPath::new("closed").unwrap(), Some(now)),
            // A folder renamed into place certifies its subtree.
            (RelPath::new("moved").unwrap(), Some(now)),
            // Certified a minute before its last change: still quiet.
            (RelPath::new("certified-too-early").unwrap(), Some(now - 60_000_000_000)),
        ]
        .into();
        let report = f.scanner.check_paths(dirty).unwrap();
        let mut announced: Vec<String> = f.changes().iter().map(|r| r.path.to_string()).collect();
        announced.sort();
        assert_eq!(announced, ["closed", "moved", "moved/in", "moved/in/deep"]);
        assert_eq!(report.retry, [RelPath::new("certified-too-early").unwrap()]);
    }

    #[test]
    fn a_concurrent_index_write_cancels_a_stale_plan() {
        let mut f = fixture();
        let path = RelPath::new("raced").unwrap();
        std::fs::write(f.root.join("raced"), b"remote content").unwrap();
        let meta = f.scanner.gate.probe.lstat(&path).unwrap().unwrap();
        let Plan::Store(pending) = f.scanner.plan(&path, None, Some(&meta), &How::default()).unwrap() else {
            panic!("expected a plan")
        };
        // The apply engine records the file between plan and commit.
        let chunked = dartsync_shared::chunk::chunk_bytes(b"remote content", ChunkParams::for_piece_len(4096));
        let mut record = pending.entry.record.clone();
        record.version = VersionVector::from_entries([(ShortId(42), 3)]);
        assert!(f.scanner.gate.record_applied(&path, &record, &chunked.chunks).unwrap());
        let mut batch = Batch::default();
        batch.pending.push(*pending);
        f.scanner.flush(&mut batch).unwrap();
        assert!(f.changes().is_empty(), "stale plan committed");
        assert_eq!(batch.report.retry, std::slice::from_ref(&path));
        f.scanner.check_paths([(path.clone(), None)].into()).unwrap();
        assert!(f.changes().is_empty(), "echo after re-check");
        assert_eq!(f.scanner.gate.index.get(&path).unwrap().unwrap().record.version, record.version);
    }

    #[test]
    fn differs_and_adopt() {
        let mut f = fixture();
        let path = RelPath::new("d").unwrap();
        assert!(!f.scanner.gate.differs(&path).unwrap());
        std::fs::write(f.root.join("d"), b"abc").unwrap();
        assert!(f.scanner.gate.differs(&path).unwrap(), "appeared");
        f.scanner.full_scan(false).unwrap();
        let rec = f.changes().pop().unwrap();
        assert!(!f.scanner.gate.differs(&path).unwrap());
        std::fs::write(f.root.join("d"), b"abd").unwrap();
        assert!(f.scanner.gate.differs(&path).unwrap(), "edited");
        std::fs::write(f.root.join("d"), b"abc").unwrap();
        assert!(!f.scanner.gate.differs(&path).unwrap(), "same bytes again");

        let mut merged = rec.clone();
        merged.version = rec.version.merge(&VersionVector::from_entries([(ShortId(5), 4)])).bumped(ShortId(5)).unwrap();
        assert!(f.scanner.gate.adopt_version(&merged).unwrap());
        assert_eq!(f.scanner.gate.index.get(&path).unwrap().unwrap().record.version, merged.version);
        let mut other = merged.clone();
        other.content = ContentHash::of(b"zzz");
        assert!(!f.scanner.gate.adopt_version(&other).unwrap());
        f.scanner.full_scan(false).unwrap();
        assert!(f.changes().is_empty());

        std::fs::remove_file(f.root.join("d")).unwrap();
        assert!(f.scanner.gate.differs(&path).unwrap(), "vanished");
    }

    #[test]
    fn bad_records_are_refused() {
        let f = fixture();
        let chunked = dartsync_shared::chunk::chunk_bytes(b"abc", ChunkParams::for_piece_len(4096));
        let record = RecordBuilder::file("a").chunked(&chunked).vv(&[(2, 1)]).build();
        let other = RelPath::new("b").unwrap();
        assert!(matches!(
            f.scanner.gate.record_applied(&other, &record, &chunked.chunks),
            Err(LocalError::InvalidRecord { .. })
        ));
        assert!(matches!(
            f.scanner.gate.record_applied(&record.path, &record, &[]),
            Err(LocalError::InvalidRecord { .. })
        ));
        let mut no_version = record.clone();
        no_version.version = VersionVector::new();
        assert!(f.scanner.gate.adopt_version(&no_version).is_err());
    }

    #[test]
    fn piece_length_change_rechunks_without_bumping() {
        let mut f = fixture();
        let data = det_bytes(13, 200_000);
        std::fs::write(f.root.join("big"), &data).unwrap();
        f.scanner.full_scan(false).unwrap();
        let first = f.changes().pop().unwrap();
        Arc::get_mut(&mut f.scanner.gate).expect("the fixture holds the only gate").probe.params =
            ChunkParams::for_piece_len(16 * 1024);
        f.scanner.full_scan(true).unwrap();
        let again = f.changes();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].version, first.version);
        assert_eq!(again[0].content, first.content);
        assert_ne!(again[0].chunks, first.chunks);
    }

    #[test]
    fn ignored_permission_bits_are_not_announced() {
        use std::os::unix::fs::PermissionsExt;
        let mut f = fixture_with(true);
        let p = f.root.join("f");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(f.root.join("d")).unwrap();
        std::fs::set_permissions(f.root.join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
        f.scanner.full_scan(false).unwrap();
        let got = f.changes();
        let mode = |path: &str| got.iter().find(|r| r.path.as_str() == path).unwrap().mode;
        assert_eq!((mode("f"), mode("d")), (0o644, 0o755), "modes on disk are not announced");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        f.scanner.full_scan(false).unwrap();
        assert!(f.changes().is_empty(), "a chmod is no change");
    }
}
