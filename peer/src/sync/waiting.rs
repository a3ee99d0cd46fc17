//! [`Waiting`]: the paths the engine cannot bring in line right now, each
//! with a reason, a version, and when to look again.
//!
//! The discipline it keeps: a path that fails is never retried on a fixed
//! timer. A transient failure waits with exponential backoff and jitter
//! (seconds, growing to minutes); a path with nobody to fetch from waits
//! for a delta that brings a holder (the timer is only a safety net); a
//! permanent refusal (a parent that is a symlink, a name too long, a case
//! collision) waits for a different version and has no timer at all.
//! Anything that could fix a path wakes it early: a newer version, a delta
//! that changes its holders, a local change. The reasons stay here for a
//! status report and feed one summary line.
//!
//! Pure: the clock is passed in; no I/O, no logging (the engine logs what
//! [`Waiting::park`] and [`Waiting::resolve`] tell it).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use dartsync_shared::backoff::Backoff;
use dartsync_shared::{RelPath, VersionVector};

use crate::deadlines::Deadlines;

/// First pause after a transient failure.
const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest pause after repeated transient failures.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often a path with no holder online is looked at anyway (a delta
/// with a holder wakes it at once).
const NO_HOLDER_RECHECK: Duration = Duration::from_secs(300);

/// Why a path waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No peer online holds this version.
    NoHolder,
    /// Holders were asked and none could deliver (unreachable, busy, bad
    /// data).
    Unreachable(String),
    /// The file was downloaded and verified but could not be put in place
    /// (permission denied, read-only, a folder in the way); the verified
    /// copy is kept and only the install is retried.
    InstallFailed(String),
    /// Not enough free space for the file plus the reserve.
    DiskFull { need: u64, free: u64 },
    /// This version can never be written here (a parent is a symlink or a
    /// file, a name too long, a case collision): waits for another version.
    Refused(String),
}

impl Reason {
    /// A short class name for the summary line.
    fn class(&self) -> &'static str {
        match self {
            Reason::NoHolder => "no holder online",
            Reason::Unreachable(_) => "holders unreachable",
            Reason::InstallFailed(_) => "cannot write",
            Reason::DiskFull { .. } => "disk full",
            Reason::Refused(_) => "refused here",
        }
    }

    /// Whether a user should hear about this path on its own: conditions
    /// of the path itself, not of the cluster (a holder being offline is
    /// said once for all paths, in the summary).
    pub(crate) fn is_path_specific(&self) -> bool {
        !matches!(self, Reason::NoHolder | Reason::Unreachable(_))
    }

    /// What would fix it, for the log line.
    pub(crate) fn fix(&self) -> &'static str {
        match self {
            Reason::NoHolder => "waiting for a peer that has it to come online",
            Reason::Unreachable(_) => "retrying with backoff",
            Reason::InstallFailed(_) => "retrying the install with backoff; the verified download is kept",
            Reason::DiskFull { .. } => "free some space; retrying with backoff",
            Reason::Refused(_) => "left alone until a newer version arrives",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoHolder => f.write_str("no peer that has it is online"),
            Reason::Unreachable(why) | Reason::InstallFailed(why) | Reason::Refused(why) => f.write_str(why),
            Reason::DiskFull { need, free } => {
                write!(f, "disk full: {need} bytes needed (with the reserve), {free} free")
            }
        }
    }
}

/// One waiting path.
#[derive(Debug)]
struct Entry {
    version: VersionVector,
    reason: Reason,
    /// Failures in a row for this version.
    attempts: u32,
    backoff: Backoff,
    /// Whether the path is blocked until its deadline (false once due or
    /// woken: the next reconcile may try it).
    blocked: bool,
}

/// The waiting paths (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// Ordered, so the paths under a folder are one range.
    entries: BTreeMap<RelPath, Entry>,
    timers: Deadlines<RelPath, Instant>,
}

/// What [`Waiting::park`] tells the engine to say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// The path just started waiting, or waits for another reason now.
    New,
    /// The same reason again (say nothing).
    Again,
}

impl Waiting {
    /// Whether `path` at `version` must not be tried now.
    pub(crate) fn blocks(&self, path: &RelPath, version: &VersionVector) -> bool {
        self.entries.get(path).is_some_and(|e| e.blocked && e.version == *version)
    }

    /// True when `path` waits, whatever its version.
    pub(crate) fn contains(&self, path: &RelPath) -> bool {
        self.entries.contains_key(path)
    }

    /// Records that `path` at `version` failed with `reason` at `now`, and
    /// schedules the next look.
    pub(crate) fn park(&mut self, path: &RelPath, version: &VersionVector, reason: Reason, now: Instant) -> Parked {
        let entry = match self.entries.get_mut(path) {
            Some(e) if e.version == *version => e,
            _ => {
                let fresh = Entry {
                    version: version.clone(),
                    reason: reason.clone(),
                    attempts: 0,
                    backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
                    blocked: true,
                };
                self.entries.insert(path.clone(), fresh);
                self.entries.get_mut(path).expect("just inserted")
            }
        };
        let told = if entry.attempts > 0 && entry.reason == reason { Parked::Again } else { Parked::New };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.blocked = true;
        let delay = match &reason {
            Reason::Refused(_) => None,
            Reason::NoHolder => Some(NO_HOLDER_RECHECK),
            _ => Some(entry.backoff.next_delay()),
        };
        entry.reason = reason;
        match delay {
            Some(delay) => self.timers.insert(path.clone(), now + delay),
            None => {
                self.timers.remove(path);
            }
        }
        told
    }

    /// Lets `path` be tried at the next reconcile (something that could fix
    /// it happened: its holders changed, the disk changed). Returns whether
    /// it was waiting.
    pub(crate) fn wake(&mut self, path: &RelPath) -> bool {
        self.timers.remove(path);
        match self.entries.get_mut(path) {
            Some(e) if e.blocked && !matches!(e.reason, Reason::Refused(_)) => {
                e.blocked = false;
                true
            }
            _ => false,
        }
    }

    /// A local change at `changed`: wakes the waiting paths at or under it
    /// (a link in their way became a folder, space was freed), refused
    /// ones included, and returns them.
    pub(crate) fn wake_under(&mut self, changed: &RelPath) -> Vec<RelPath> {
        let inside = format!("{changed}/");
        let mut woken = Vec::new();
        for (path, entry) in self.entries.range_mut(changed.clone()..) {
            if path != changed && !path.as_str().starts_with(&inside) {
                if path.as_str() > inside.as_str() {
                    break;
                }
                continue;
            }
            if entry.blocked {
                entry.blocked = false;
                woken.push(path.clone());
            }
        }
        for path in &woken {
            self.timers.remove(path);
        }
        woken
    }

    /// The refused paths that `pick` selects.
    pub(crate) fn refused_matching(&self, pick: impl Fn(&RelPath) -> bool) -> Vec<RelPath> {
        self.entries
            .iter()
            .filter(|(p, e)| matches!(e.reason, Reason::Refused(_)) && pick(p))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Paths whose deadline passed: unblocked, returned to be tried.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<RelPath> {
        let due = self.timers.take_due(now);
        for path in &due {
            if let Some(e) = self.entries.get_mut(path) {
                e.blocked = false;
            }
        }
        due
    }

    /// `path` is in line now (or its record went away): forgets it and
    /// returns why it was waiting, if it was.
    pub(crate) fn resolve(&mut self, path: &RelPath) -> Option<(Reason, u32)> {
        self.timers.remove(path);
        self.entries.remove(path).map(|e| (e.reason, e.attempts))
    }

    /// Number of waiting paths.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The first `max` waiting paths with their reason and what would fix
    /// it, for `dartsync status`.
    pub(crate) fn listed(&self, max: usize) -> Vec<(String, String)> {
        self.entries
            .iter()
            .take(max)
            .map(|(path, e)| (path.to_string(), format!("{}; {}", e.reason, e.reason.fix())))
            .collect()
    }

    /// One line: how many paths wait, by reason class (`""` when none).
    pub(crate) fn summary(&self) -> String {
        if self.entries.is_empty() {
            return String::new();
        }
        let mut by_class: BTreeMap<&'static str, usize> = BTreeMap::new();
        for e in self.entries.values() {
            *by_class.entry(e.reason.class()).or_default() += 1;
        }
        let parts: Vec<String> = by_class.iter().map(|(class, n)| format!("{n} {class}")).collect();
        let n = self.entries.len();
        format!("{n} {} waiting: {}", if n == 1 { "path" } else { "paths" }, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use dartsync_shared::test_util::{rel, vv};

    use super::*;

    #[test]
    fn transient_failures_back_off_and_only_new_reasons_are_told() {
        let mut w = Waiting::default();
        let (p, v) = (rel("a"), vv(&[(1, 1)]));
        let t0 = Instant::now();
        let why = || Reason::InstallFailed("permission denied".into());
        assert_eq!(w.park(&p, &v, why(), t0), Parked::New);
        assert!(w.blocks(&p, &v));
        assert!(!w.blocks(&p, &vv(&[(1, 2)])), "a newer version is not blocked");
        assert!(w.take_due(t0 + Duration::from_millis(500)).is_empty(), "nothing due before the first pause");
        let mut gaps = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            let due = loop {
                now += Duration::from_millis(100);
                let due = w.take_due(now);
                if !due.is_empty() {
                    break now;
                }
            };
            gaps.push(due);
            assert!(!w.blocks(&p, &v));
            assert_eq!(w.park(&p, &v, why(), now), Parked::Again);
        }
        let pauses: Vec<Duration> = gaps.windows(2).map(|g| g[1] - g[0]).collect();
        assert!(pauses.last().unwrap() >= &Duration::from_secs(30), "backoff grows: {pauses:?}");
        assert!(pauses.iter().all(|d| *d <= RETRY_MAX + Duration::from_millis(200)), "capped: {pauses:?}");
        assert_eq!(w.park(&p, &v, Reason::DiskFull { need: 2, free: 1 }, now), Parked::New, "a new reason is told");
        assert_eq!(w.resolve(&p).map(|(r, n)| (r.class(), n)), Some(("disk full", 10)));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn refusals_wait_for_a_new_version_and_holders_wake_the_rest() {
        let mut w = Waiting::default();
        let t0 = Instant::now();
        let v = vv(&[(1, 1)]);
        w.park(&rel("r"), &v, Reason::Refused("parent is a symlink".into()), t0);
        w.park(&rel("n"), &v, Reason::NoHolder, t0);
        assert!(w.take_due(t0 + Duration::from_secs(3600)).iter().all(|p| p.as_str() == "n"), "refusals have no timer");
        w.park(&rel("n"), &v, Reason::NoHolder, t0);
        assert!(!w.wake(&rel("r")), "a refusal is not woken by holders");
        assert!(w.blocks(&rel("r"), &v));
        assert!(w.wake(&rel("n")));
        assert!(!w.blocks(&rel("n"), &v));
        assert_eq!(w.refused_matching(|_| true), [rel("r")]);
        assert_eq!(w.summary(), "2 paths waiting: 1 no holder online, 1 refused here");
    }

    #[test]
    fn a_local_change_wakes_what_is_under_it_and_nothing_else() {
        let mut w = Waiting::default();
        let (t0, v) = (Instant::now(), vv(&[(1, 1)]));
        for p in ["docs/x", "docs/sub/y", "docs-old/z", "doc", "other"] {
            w.park(&rel(p), &v, Reason::Refused("parent is a symlink".into()), t0);
        }
        let mut woken = w.wake_under(&rel("docs"));
        woken.sort();
        assert_eq!(woken, [rel("docs/sub/y"), rel("docs/x")]);
        assert!(!w.blocks(&rel("docs/x"), &v));
        assert!(w.blocks(&rel("docs-old/z"), &v) && w.blocks(&rel("doc"), &v));
        assert_eq!(w.wake_under(&rel("other")), [rel("other")]);
    }
}
