//! The mass-change brake: one device's announcements that would delete or
//! overwrite a large part of the cluster's files within a short window are
//! held instead of published, until an operator approves or rejects them
//! on the tracker machine (`dartsync tracker approve|reject`).
//!
//! Pure (times are passed in) and owned by the actor, which asks it about
//! every `Announce` before the state sees it:
//! - A device's destructive changes (deletions and overwrites of live
//!   files) are counted in a sliding window ([`BrakeConfig::window`]), by
//!   distinct path: a file saved fifty times in a minute is one file
//!   changed, not fifty (a path both overwritten and deleted counts as a
//!   deletion).
//! - Deletions are always *staged*: kept back (with everything the device
//!   announces after them, in order) until the device has been quiet for
//!   [`SETTLE`], then published if the window stayed under the limits. An
//!   `rm -rf` reaches the tracker in many small batches as the watcher sees
//!   it; it is judged whole before any of it leaks out. A single deletion
//!   waits [`SETTLE`] longer than an edit.
//! - Overwrites are published at once while the window holds at most
//!   [`STAGE_AFTER`] destructive changes (everyday edits never wait), and
//!   staged beyond that: a mass overwrite leaks at most that many.
//! - Over a limit (more than [`BrakeConfig::max_files`], or more than
//!   [`BrakeConfig::max_percent`] of the live files and at least
//!   [`MIN_FILES_FOR_PERCENT`]), everything staged and everything the
//!   device announces afterwards is *held*. Held records are kept per path
//!   (the latest one), at most [`MAX_HELD`].
//! - `approve` hands the held records back for publishing and restarts the
//!   window; `reject` drops them, remembers the rejected versions (a
//!   replay of one is ignored) and queues a notice telling the device which
//!   paths to put back.
//!
//! The brake's state lives in memory: a tracker restart forgets held
//! changes, and the device's next summary is judged afresh (and held
//! again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use dartsync_shared::proto::ptp::BrakeNotice;
use dartsync_shared::{FileRecord, PeerId, RelPath, VersionVector};

/// Overwrites published at once while the window holds at most this many
/// destructive changes; beyond, they are staged.
pub(crate) const STAGE_AFTER: u64 = 20;
/// A staged device is judged after this long without an announcement.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);
/// The percentage limit applies from this many destructive changes on
/// (deleting 3 of 4 files is an everyday edit).
pub(crate) const MIN_FILES_FOR_PERCENT: u64 = 50;
/// Held (or staged) records per device at most; beyond, the session is
/// refused until an operator decides.
pub(crate) const MAX_HELD: usize = 200_000;
/// Rejected paths sent per notice.
pub(crate) const REJECTED_PER_NOTICE: usize = dartsync_shared::limits::MAX_REJECTED_PATHS;

/// The brake's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BrakeConfig {
    /// More destructive changes than this in the window are held (0: no
    /// count limit).
    pub max_files: u64,
    /// More than this percentage of the live files in the window is held
    /// (0: no percentage limit).
    pub max_percent: u8,
    /// The window.
    pub window: Duration,
}

impl BrakeConfig {
    /// Whether the brake is on at all.
    pub fn enabled(&self) -> bool {
        self.max_files > 0 || self.max_percent > 0
    }

    /// Whether `changes` destructive changes against `live` live files are
    /// over a limit.
    pub fn over(&self, changes: u64, live: u64) -> bool {
        let by_count = self.max_files > 0 && changes > self.max_files;
        let by_share = self.max_percent > 0
            && changes >= MIN_FILES_FOR_PERCENT
            && changes.saturating_mul(100) > u64::from(self.max_percent).saturating_mul(live);
        by_count || by_share
    }
}

/// The changes of a batch that would delete or overwrite live files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Destructive {
    /// Live files (or folders, links) deleted.
    pub deleted: Vec<RelPath>,
    /// Live files replaced by other content.
    pub overwritten: Vec<RelPath>,
}

impl Destructive {
    fn deletes(&self) -> u64 {
        self.deleted.len() as u64
    }

    fn overwrites(&self) -> u64 {
        self.overwritten.len() as u64
    }
}

/// Destructive changes in the window, by distinct path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    deletes: u64,
    overwrites: u64,
}

impl Counts {
    fn total(self) -> u64 {
        self.deletes + self.overwrites
    }
}

/// A device's destructive changes of the last window, counted by distinct
/// path as they come and go (no pass over the window per announcement).
#[derive(Debug, Default)]
struct PathWindow {
    /// (when, path, deleted?) in arrival order.
    events: VecDeque<(Instant, RelPath, bool)>,
    /// Path -> (overwrites, deletions) of it in the window.
    paths: HashMap<RelPath, (u32, u32)>,
    counts: Counts,
}

impl PathWindow {
    /// What one path counts as, given its overwrites and deletions.
    fn class((overwrites, deletes): (u32, u32)) -> Counts {
        match (overwrites, deletes) {
            (_, 1..) => Counts { deletes: 1, overwrites: 0 },
            (1.., 0) => Counts { deletes: 0, overwrites: 1 },
            (0, 0) => Counts::default(),
        }
    }

    fn adjust(&mut self, path: &RelPath, deleted: bool, up: bool) {
        let entry = self.paths.entry(path.clone()).or_default();
        let before = Self::class(*entry);
        let slot = if deleted { &mut entry.1 } else { &mut entry.0 };
        *slot = if up { slot.saturating_add(1) } else { slot.saturating_sub(1) };
        let now = *entry;
        if now == (0, 0) {
            self.paths.remove(path);
        }
        let after = Self::class(now);
        self.counts.deletes = self.counts.deletes + after.deletes - before.deletes;
        self.counts.overwrites = self.counts.overwrites + after.overwrites - before.overwrites;
    }

    fn push(&mut self, now: Instant, changes: &Destructive) {
        for (paths, deleted) in [(&changes.deleted, true), (&changes.overwritten, false)] {
            for path in paths {
                self.adjust(path, deleted, true);
                self.events.push_back((now, path.clone(), deleted));
            }
        }
    }

    /// Forgets what is older than `window`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while self.events.front().is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > window) {
            if let Some((_, path, deleted)) = self.events.pop_front() {
                self.adjust(&path, deleted, false);
            }
        }
    }

    fn clear(&mut self) {
        *self = PathWindow::default();
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What to do with an announcement.
#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    /// Publish these records now.
    Publish(Vec<FileRecord>),
    /// Kept back (staged or held); nothing to do now.
    Kept,
    /// The device just went over a limit: everything it staged is held.
    /// The actor logs it and tells the device.
    NowHeld(HeldSummary),
    /// Too many records kept back for this device.
    TooMany,
}

/// A device's held change, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldSummary {
    /// Deletions in the window that tripped the brake, and since.
    pub deletes: u64,
    /// Overwrites likewise.
    pub overwrites: u64,
    /// Live files when it tripped.
    pub live: u64,
    /// Records held.
    pub records: usize,
    /// Unix seconds when it tripped.
    pub since: u64,
}

#[derive(Debug, Default)]
struct DeviceBrake {
    /// Recent destructive changes.
    window: PathWindow,
    /// Records kept back while the device is judged: latest per path.
    staged: BTreeMap<RelPath, FileRecord>,
    /// When the device last announced while staged.
    last_at: Option<Instant>,
    /// Set once over a limit: everything is held until a decision.
    held: Option<HeldSummary>,
    /// Versions an operator rejected: a replay of one is ignored.
    rejected: HashMap<RelPath, VersionVector>,
}

impl DeviceBrake {
    fn keep(&mut self, records: Vec<FileRecord>) -> bool {
        for r in records {
            self.staged.insert(r.path.clone(), r);
        }
        self.staged.len() <= MAX_HELD
    }

    fn idle(&self) -> bool {
        self.window.is_empty() && self.staged.is_empty() && self.held.is_none() && self.rejected.is_empty()
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Brake {
    config: BrakeConfig,
    devices: HashMap<PeerId, DeviceBrake>,
    /// Notices waiting for each device's session.
    notices: HashMap<PeerId, VecDeque<BrakeNotice>>,
}

impl Brake {
    /// A brake with `config`.
    pub fn new(config: BrakeConfig) -> Brake {
        Brake { config, devices: HashMap::new(), notices: HashMap::new() }
    }

    /// Drops records `peer` announces again after they were rejected
    /// (same path and version); a different version of such a path ends
    /// its rejection.
    pub fn drop_rejected(&mut self, peer: PeerId, records: &mut Vec<FileRecord>) {
        let Some(dev) = self.devices.get_mut(&peer) else { return };
        if dev.rejected.is_empty() {
            return;
        }
        records.retain(|r| match dev.rejected.get(&r.path) {
            Some(v) if *v == r.version => false,
            Some(_) => {
                dev.rejected.remove(&r.path);
                true
            }
            None => true,
        });
    }

    /// `peer` now holds the cluster's version of `path` (a `Have`): a
    /// rejection of it is settled.
    pub fn settled(&mut self, peer: PeerId, path: &RelPath) {
        if let Some(dev) = self.devices.get_mut(&peer) {
            dev.rejected.remove(path);
        }
    }

    /// Judges an announcement of `records` by `peer`, `destructive` of
    /// them against the table; `live` gives the number of live files (only
    /// called when needed: it may cost a pass over the table).
    pub fn judge(
        &mut self,
        peer: PeerId,
        records: Vec<FileRecord>,
        destructive: Destructive,
        live: impl FnOnce() -> u64,
        now: Instant,
        now_unix: u64,
    ) -> Decision {
        if !self.config.enabled() {
            return Decision::Publish(records);
        }
        let window = self.config.window;
        let dev = self.devices.entry(peer).or_default();
        dev.window.expire(now, window);
        dev.window.push(now, &destructive);
        if dev.held.is_some() {
            let fits = dev.keep(records);
            let records = dev.staged.len();
            if let Some(held) = dev.held.as_mut() {
                held.deletes += destructive.deletes();
                held.overwrites += destructive.overwrites();
                held.records = records;
            }
            return if fits { Decision::Kept } else { Decision::TooMany };
        }
        let total = dev.window.counts;
        if dev.staged.is_empty() && destructive.deleted.is_empty() && total.total() <= STAGE_AFTER {
            return Decision::Publish(records);
        }
        let live = live();
        let fits = dev.keep(records);
        dev.last_at = Some(now);
        if self.config.over(total.total(), live) {
            let summary = HeldSummary {
                deletes: total.deletes,
                overwrites: total.overwrites,
                live,
                records: dev.staged.len(),
                since: now_unix,
            };
            dev.held = Some(summary);
            self.notices.entry(peer).or_default().push_back(BrakeNotice::Held {
                deletes: summary.deletes,
                overwrites: summary.overwrites,
                live,
            });
            return Decision::NowHeld(summary);
        }
        if fits { Decision::Kept } else { Decision::TooMany }
    }

    /// When the next staged device is due to be judged.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.devices.values().filter(|d| d.held.is_none()).filter_map(|d| d.last_at.map(|at| at + SETTLE)).min()
    }

    /// Staged records of devices quiet for [`SETTLE`] and still under the
    /// limits: publish them.
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<FileRecord>)> {
        let mut out = Vec::new();
        for (peer, dev) in &mut self.devices {
            if dev.held.is_none() && dev.last_at.is_some_and(|at| now.saturating_duration_since(at) >= SETTLE) {
                dev.last_at = None;
                out.push((*peer, std::mem::take(&mut dev.staged).into_values().collect()));
            }
        }
        let window = self.config.window;
        for dev in self.devices.values_mut() {
            dev.window.expire(now, window);
        }
        self.devices.retain(|_, d| !d.idle());
        out
    }

    /// The devices with held changes.
    pub fn held(&self) -> Vec<(PeerId, HeldSummary)> {
        let mut out: Vec<(PeerId, HeldSummary)> =
            self.devices.iter().filter_map(|(p, d)| d.held.map(|h| (*p, h))).collect();
        out.sort_by_key(|(p, h)| (h.since, *p));
        out
    }

    /// Approves `peer`'s held change: its records, to publish. The window
    /// starts afresh.
    pub fn approve(&mut self, peer: PeerId) -> Option<Vec<FileRecord>> {
        let dev = self.devices.get_mut(&peer)?;
        let held = dev.held.take()?;
        dev.window.clear();
        dev.last_at = None;
        let records: Vec<FileRecord> = std::mem::take(&mut dev.staged).into_values().collect();
        self.notices.entry(peer).or_default().push_back(BrakeNotice::Approved { records: held.records as u64 });
        Some(records)
    }

    /// Rejects `peer`'s held change: its records are dropped and the device
    /// is told which paths to put back. Returns how many.
    pub fn reject(&mut self, peer: PeerId) -> Option<usize> {
        let dev = self.devices.get_mut(&peer)?;
        dev.held.take()?;
        dev.window.clear();
        dev.last_at = None;
        let staged = std::mem::take(&mut dev.staged);
        let n = staged.len();
        let paths: Vec<RelPath> = staged.keys().cloned().collect();
        dev.rejected.extend(staged.into_iter().map(|(p, r)| (p, r.version)));
        let queue = self.notices.entry(peer).or_default();
        for chunk in paths.chunks(REJECTED_PER_NOTICE) {
            queue.push_back(BrakeNotice::Rejected { paths: chunk.to_vec() });
        }
        Some(n)
    }

    /// Notices for `peer`'s session.
    pub fn take_notices(&mut self, peer: PeerId) -> Vec<BrakeNotice> {
        self.notices.remove(&peer).map(Vec::from).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use dartsync_shared::test_util::RecordBuilder;

    use super::*;

    const LIMITS: BrakeConfig = BrakeConfig { max_files: 1000, max_percent: 50, window: Duration::from_secs(60) };

    fn peer(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn records(prefix: &str, n: usize) -> Vec<FileRecord> {
        (0..n).map(|i| RecordBuilder::file(&format!("{prefix}/{i}")).tombstone().build()).collect()
    }

    /// `n` paths never used before in this test binary.
    fn fresh_paths(n: u64) -> Vec<RelPath> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let first = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        (first..first + n).map(|i| RelPath::new(&format!("fresh/{i}")).unwrap()).collect()
    }

    /// Deletions of `n` distinct paths.
    fn deletes(n: u64) -> Destructive {
        Destructive { deleted: fresh_paths(n), overwritten: Vec::new() }
    }

    /// Overwrites of `n` distinct paths.
    fn overwrites(n: u64) -> Destructive {
        Destructive { deleted: Vec::new(), overwritten: fresh_paths(n) }
    }

    #[test]
    fn a_file_saved_again_and_again_counts_once_and_is_never_held() {
        let mut brake = Brake::new(LIMITS);
        let t0 = Instant::now();
        let path = RelPath::new("notes.txt").unwrap();
        // 500 saves of one file within the window, in a cluster of one file.
        for i in 0..500u64 {
            let batch = vec![RecordBuilder::file("notes.txt").build()];
            let same = Destructive { deleted: Vec::new(), overwritten: vec![path.clone()] };
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(brake.judge(peer(1), batch.clone(), same, || 1, at, 0), Decision::Publish(batch), "save {i}");
        }
        assert!(brake.held().is_empty());
        // Deleted after all that: one deletion, staged until quiet, then published.
        let t1 = t0 + Duration::from_secs(50);
        let gone = Destructive { deleted: vec![path.clone()], overwritten: Vec::new() };
        let tomb = vec![RecordBuilder::file("notes.txt").tombstone().build()];
        assert_eq!(brake.judge(peer(1), tomb, gone, || 1, t1, 0), Decision::Kept);
        assert_eq!(brake.due(t1 + SETTLE)[0].1.len(), 1);
        // Distinct files still count one by one: the 21st is staged.
        let t2 = t1 + Duration::from_secs(120);
        for i in 0..STAGE_AFTER {
            let batch = records(&format!("many{i}"), 1);
            assert_eq!(brake.judge(peer(2), batch.clone(), overwrites(1), || 1000, t2, 0), Decision::Publish(batch));
        }
        assert_eq!(brake.judge(peer(2), records("one-more", 1), overwrites(1), || 1000, t2, 0), Decision::Kept);
    }

    #[test]
    fn limits_by_count_and_share_with_a_floor() {
        // (changes, live files, over?)
        let table = [
            (1000, 1_000_000, false),
            (1001, 1_000_000, true),
            (3, 4, false),   // under the floor: everyday
            (49, 60, false), // still under the floor
            (50, 100, false),
            (51, 100, true),
            (600, 2000, false),
            (1001, 2000, true),
        ];
        for (changes, live, over) in table {
            assert_eq!(LIMITS.over(changes, live), over, "{changes} of {live}");
        }
        let off = BrakeConfig { max_files: 0, max_percent: 0, ..LIMITS };
        assert!(!off.enabled() && !off.over(1_000_000, 1));
        let count_only = BrakeConfig { max_percent: 0, ..LIMITS };
        assert!(!count_only.over(900, 1000) && count_only.over(1001, 1_000_000));
    }

    #[test]
    fn everyday_edits_are_published_at_once_and_a_deletion_after_it_settles() {
        let mut brake = Brake::new(LIMITS);
        let t0 = Instant::now();
        for i in 0..STAGE_AFTER {
            let batch = records(&format!("d{i}"), 1);
            let d = brake.judge(peer(1), batch.clone(), overwrites(1), || 10, t0, 0);
            assert_eq!(d, Decision::Publish(batch));
        }
        // One more overwrite in the window is staged.
        assert_eq!(brake.judge(peer(1), records("o", 1), overwrites(1), || 10, t0, 0), Decision::Kept);
        assert_eq!(brake.due(t0 + SETTLE).len(), 1);
        // A single deletion waits until the device is quiet.
        let t1 = t0 + Duration::from_secs(120);
        assert_eq!(brake.judge(peer(2), records("del", 1), deletes(1), || 10, t1, 0), Decision::Kept);
        assert_eq!(brake.next_deadline(), Some(t1 + SETTLE));
        assert_eq!(brake.due(t1 + SETTLE)[0].1.len(), 1);
        // Non-destructive changes are never counted.
        let d = brake.judge(peer(3), records("new", 500), Destructive::default(), || panic!("not needed"), t0, 0);
        assert!(matches!(d, Decision::Publish(r) if r.len() == 500));
    }

    #[test]
    fn a_burst_in_small_batches_is_staged_then_held_whole() {
        let mut brake = Brake::new(LIMITS);
        let t0 = Instant::now();
        // 1,600 deletions of 2,000 files in batches of 100, 100 ms apart.
        let mut decisions = Vec::new();
        for i in 0..16u64 {
            let at = t0 + Duration::from_millis(100 * i);
            let d = brake.judge(peer(1), records(&format!("b{i}"), 100), deletes(100), || 2000, at, 7);
            decisions.push(d);
        }
        // The first batch (100 > STAGE_AFTER) is already staged: nothing leaks.
        assert!(decisions.iter().all(|d| !matches!(d, Decision::Publish(_))), "{decisions:?}");
        let tripped = decisions.iter().position(|d| matches!(d, Decision::NowHeld(_))).expect("held");
        assert_eq!(tripped, 10, "1,100 > 1,000 within the window");
        assert!(brake.due(t0 + Duration::from_secs(30)).is_empty(), "held, not released");
        let held = brake.held();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].1.deletes, held[0].1.records, held[0].1.since), (1600, 1600, 7));
        assert!(matches!(brake.take_notices(peer(1)).as_slice(), [BrakeNotice::Held { deletes: 1100, .. }]));
        // Another device is not affected.
        let other = records("o", 1);
        assert_eq!(brake.judge(peer(2), other.clone(), overwrites(1), || 2000, t0, 0), Decision::Publish(other));
        // Approve: all 1,600 come back for publishing, the window restarts.
        let approved = brake.approve(peer(1)).unwrap();
        assert_eq!(approved.len(), 1600);
        assert!(brake.held().is_empty());
        assert!(matches!(brake.take_notices(peer(1)).as_slice(), [BrakeNotice::Approved { records: 1600 }]));
        assert!(brake.approve(peer(1)).is_none(), "nothing held any more");
    }

    #[test]
    fn a_staged_burst_under_the_limits_is_published_after_it_settles() {
        let mut brake = Brake::new(LIMITS);
        let t0 = Instant::now();
        assert_eq!(brake.judge(peer(1), records("a", 30), deletes(30), || 5000, t0, 0), Decision::Kept);
        let t1 = t0 + Duration::from_secs(1);
        // Anything the device sends meanwhile waits behind it, in order.
        assert_eq!(brake.judge(peer(1), records("b", 5), Destructive::default(), || 5000, t1, 0), Decision::Kept);
        assert_eq!(brake.next_deadline(), Some(t1 + SETTLE));
        assert!(brake.due(t1 + SETTLE - Duration::from_millis(1)).is_empty());
        let due = brake.due(t1 + SETTLE);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.len(), 35);
        assert!(brake.next_deadline().is_none());
    }

    #[test]
    fn the_window_slides() {
        let mut brake = Brake::new(BrakeConfig { max_files: 100, max_percent: 0, window: Duration::from_secs(60) });
        let t0 = Instant::now();
        // 90 deletions, settled and published...
        assert_eq!(brake.judge(peer(1), records("a", 90), deletes(90), || 1_000_000, t0, 0), Decision::Kept);
        assert_eq!(brake.due(t0 + SETTLE).len(), 1);
        // ...20 more within the minute trip the limit...
        let d = brake.judge(peer(1), records("b", 20), deletes(20), || 1_000_000, t0 + Duration::from_secs(30), 0);
        assert!(matches!(d, Decision::NowHeld(HeldSummary { deletes: 110, records: 20, .. })), "{d:?}");
        // ...but a minute later the same 20 would not.
        let mut brake = Brake::new(BrakeConfig { max_files: 100, max_percent: 0, window: Duration::from_secs(60) });
        assert_eq!(brake.judge(peer(1), records("a", 90), deletes(90), || 1_000_000, t0, 0), Decision::Kept);
        brake.due(t0 + SETTLE);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(brake.judge(peer(1), records("b", 30), deletes(30), || 1_000_000, later, 0), Decision::Kept);
        assert_eq!(brake.due(later + SETTLE)[0].1.len(), 30);
    }

    #[test]
    fn reject_tells_the_device_and_ignores_replays() {
        let mut brake = Brake::new(BrakeConfig { max_files: 10, max_percent: 0, window: Duration::from_secs(60) });
        let t0 = Instant::now();
        let batch = records("x", 700);
        assert!(matches!(brake.judge(peer(1), batch.clone(), deletes(700), || 800, t0, 0), Decision::NowHeld(_)));
        brake.take_notices(peer(1));
        assert_eq!(brake.reject(peer(1)), Some(700));
        let notices = brake.take_notices(peer(1));
        let paths: usize = notices
            .iter()
            .map(|n| match n {
                BrakeNotice::Rejected { paths } => paths.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(paths, 700);
        assert_eq!(notices.len(), 700usize.div_ceil(REJECTED_PER_NOTICE));
        // The device's summary replays them: dropped.
        let mut replay = batch.clone();
        replay.push(RecordBuilder::file("fresh").build());
        brake.drop_rejected(peer(1), &mut replay);
        assert_eq!(replay.len(), 1);
        // It put one path back: that rejection is settled.
        brake.settled(peer(1), &batch[0].path);
        let mut again = vec![batch[0].clone()];
        brake.drop_rejected(peer(1), &mut again);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn too_many_held_records_are_refused() {
        let mut brake = Brake::new(BrakeConfig { max_files: 10, max_percent: 0, window: Duration::from_secs(60) });
        let t0 = Instant::now();
        assert!(matches!(brake.judge(peer(1), records("x", 25), deletes(25), || 30, t0, 0), Decision::NowHeld(_)));
        let d = brake.judge(peer(1), records("y", MAX_HELD), Destructive::default(), || 30, t0, 0);
        assert_eq!(d, Decision::TooMany);
    }

    #[test]
    fn an_off_brake_publishes_everything() {
        let mut brake = Brake::new(BrakeConfig { max_files: 0, max_percent: 0, window: Duration::from_secs(60) });
        let batch = records("x", 5000);
        assert_eq!(
            brake.judge(peer(1), batch.clone(), deletes(5000), || 5000, Instant::now(), 0),
            Decision::Publish(batch)
        );
    }
}
