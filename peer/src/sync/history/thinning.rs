//! The version history's schedule, as one pure function: which saved
//! versions to delete, given them all, the time and the policy. No file
//! system, no clock of its own (tests pass a fake `now`).
//!
//! **Age rules**, per path, on each version's age (`now - saved_at`; a
//! version from the future counts as brand new):
//! 1. older than `max_age` (30 days): deleted;
//! 2. younger than an hour: kept;
//! 3. younger than a day: only the oldest version of each UTC hour is
//!    kept (the content the path had when that hour's first change came);
//! 4. older: only the oldest of each UTC day is kept.
//!
//! Buckets are fixed calendar hours and days, not windows sliding with
//! `now`, and the oldest of a bucket never changes once it is in the
//! past: a version kept once stays kept until it moves to a coarser bucket
//! or expires, and thinning twice deletes nothing new.
//!
//! **Size budget, bursts and anchors.** A burst is a run of saves of one
//! path, each within [`BURST_GAP`] of the previous one. A version is saved
//! when it is replaced, so the first save of a burst holds the content the
//! path had *before* the burst; that version (the oldest of the path's
//! latest burst among the versions the age rules keep) is the path's
//! anchor. While the kept versions exceed `budget` bytes, the oldest
//! non-anchor version (of any path) is deleted; anchors are deleted, oldest
//! first, only once no non-anchor is left. So a burst of quick versions
//! never pushes out the version from before it: the burst's own versions,
//! and every other path's non-anchors, go first.

use std::collections::{BTreeMap, HashSet};

/// Nanoseconds in an hour.
const HOUR: i64 = 3_600 * 1_000_000_000;
/// Nanoseconds in a day.
const DAY: i64 = 24 * HOUR;
/// Saves of one path closer together than this belong to one burst.
pub(crate) const BURST_GAP: i64 = 10 * 60 * 1_000_000_000;

/// One saved version, as the schedule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionInfo {
    /// The synced path it was saved from (versions are grouped by it).
    pub(crate) path: String,
    /// When it was saved, in ns since the Unix epoch.
    pub(crate) saved_at_ns: i64,
    /// Its size in bytes.
    pub(crate) size: u64,
}

/// What the schedule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Versions older than this (ns) are deleted.
    pub(crate) max_age_ns: i64,
    /// Bytes the kept versions may take (`u64::MAX`: no budget).
    pub(crate) budget: u64,
}

/// The indices (into `versions`, ascending) of the versions to delete.
pub(crate) fn thin(versions: &[VersionInfo], now_ns: i64, schedule: &Schedule) -> Vec<usize> {
    let mut by_path: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, v) in versions.iter().enumerate() {
        by_path.entry(&v.path).or_default().push(i);
    }
    let age = |i: usize| now_ns.saturating_sub(versions[i].saved_at_ns).max(0);
    let mut delete = vec![false; versions.len()];
    let mut anchor = vec![false; versions.len()];
    for list in by_path.values_mut() {
        list.sort_by_key(|&i| (versions[i].saved_at_ns, i));
        // Age rules. Oldest first, so the first version met in a bucket is
        // its oldest.
        let mut seen_hours = HashSet::new();
        let mut seen_days = HashSet::new();
        for &i in list.iter() {
            let (a, t) = (age(i), versions[i].saved_at_ns);
            if a >= schedule.max_age_ns {
                delete[i] = true;
                continue;
            }
            let first_in_hour = seen_hours.insert(t.div_euclid(HOUR));
            let first_in_day = seen_days.insert(t.div_euclid(DAY));
            delete[i] = match a {
                a if a < HOUR => false,
                a if a < DAY => !first_in_hour,
                _ => !first_in_day,
            };
        }
        // The anchor: the oldest kept version of the latest burst.
        let kept: Vec<usize> = list.iter().copied().filter(|&i| !delete[i]).collect();
        if let Some(mut first) = kept.len().checked_sub(1) {
            while first > 0
                && versions[kept[first]].saved_at_ns.saturating_sub(versions[kept[first - 1]].saved_at_ns) < BURST_GAP
            {
                first -= 1;
            }
            anchor[kept[first]] = true;
        }
    }
    let mut total: u64 = (0..versions.len()).filter(|&i| !delete[i]).map(|i| versions[i].size).sum();
    if total > schedule.budget {
        let mut order: Vec<usize> = (0..versions.len()).filter(|&i| !delete[i]).collect();
        order.sort_by_key(|&i| (anchor[i], versions[i].saved_at_ns, i));
        for i in order {
            if total <= schedule.budget {
                break;
            }
            delete[i] = true;
            total -= versions[i].size;
        }
    }
    (0..versions.len()).filter(|&i| delete[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * 1_000_000_000;
    /// A fixed "now": 2023-11-15 00:00:00 UTC, on an hour and day boundary.
    const NOW: i64 = 1_700_006_400 * 1_000_000_000;
    const MONTH: Schedule = Schedule { max_age_ns: 30 * DAY, budget: u64::MAX };

    fn v(path: &str, ago: i64, size: u64) -> VersionInfo {
        VersionInfo { path: path.into(), saved_at_ns: NOW - ago, size }
    }

    /// The ages (as given) of the versions that survive.
    fn kept(versions: &[VersionInfo], schedule: &Schedule) -> Vec<(String, i64)> {
        let gone = thin(versions, NOW, schedule);
        versions
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.contains(i))
            .map(|(_, v)| (v.path.clone(), NOW - v.saved_at_ns))
            .collect()
    }

    fn ages(list: &[(String, i64)]) -> Vec<i64> {
        list.iter().map(|(_, a)| *a).collect()
    }

    #[test]
    fn the_age_schedule_table() {
        // (versions of one path as ages, the ages that survive)
        let cases: Vec<(&str, Vec<i64>, Vec<i64>)> = vec![
            (
                "everything from the last hour",
                vec![MIN, 2 * MIN, 30 * MIN, 59 * MIN],
                vec![MIN, 2 * MIN, 30 * MIN, 59 * MIN],
            ),
            (
                "one per hour for a day: the oldest of each UTC hour",
                // 19:10 and 19:40, then 21:10, 21:20 and 21:50 the day before.
                vec![
                    5 * HOUR - 10 * MIN,
                    5 * HOUR - 40 * MIN,
                    3 * HOUR - 10 * MIN,
                    3 * HOUR - 20 * MIN,
                    3 * HOUR - 50 * MIN,
                ],
                vec![5 * HOUR - 10 * MIN, 3 * HOUR - 10 * MIN],
            ),
            (
                "one per day up to 30 days: the oldest of each UTC day",
                vec![3 * DAY + HOUR, 3 * DAY + 2 * HOUR, 3 * DAY + 3 * HOUR, 10 * DAY + 2 * HOUR, 10 * DAY + 3 * HOUR],
                vec![3 * DAY + 3 * HOUR, 10 * DAY + 3 * HOUR],
            ),
            ("nothing older than 30 days", vec![31 * DAY, 40 * DAY], vec![]),
            ("a version from the future counts as new", vec![-HOUR, -2 * HOUR], vec![-HOUR, -2 * HOUR]),
        ];
        for (what, given, want) in cases {
            let versions: Vec<VersionInfo> = given.iter().map(|&a| v("f", a, 1)).collect();
            let mut got = ages(&kept(&versions, &MONTH));
            got.sort();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_burst_never_pushes_out_the_version_from_before_it() {
        // `f` was replaced once a day ago; now a burst of ten 10-byte
        // versions of `f` and an older file `g` compete for 25 bytes.
        let mut versions = vec![v("f", DAY / 2, 10), v("g", 2 * DAY, 10), v("g", 2 * DAY + HOUR, 10)];
        versions.extend((0..10).map(|k| v("f", 10 * MIN - k * MIN, 10)));
        let budget = Schedule { max_age_ns: 30 * DAY, budget: 25 };
        let got = kept(&versions, &budget);
        // Anchors: f's burst started 10 minutes ago (its first save holds
        // the content from before it); g's is its newest (a lone version).
        // Non-anchors go oldest first until 25 bytes remain.
        assert_eq!(got, vec![("g".into(), 2 * DAY), ("f".into(), 10 * MIN)]);
        // The anchors alone over budget: oldest anchor first.
        let tight = Schedule { max_age_ns: 30 * DAY, budget: 10 };
        assert_eq!(kept(&versions, &tight), vec![("f".into(), 10 * MIN)]);
    }

    #[test]
    fn the_budget_deletes_oldest_first_across_paths() {
        let versions = vec![v("a", 3 * MIN, 100), v("a", 50 * MIN, 100), v("b", 20 * MIN, 100), v("b", 40 * MIN, 100)];
        let schedule = Schedule { max_age_ns: 30 * DAY, budget: 250 };
        // a's saves are 47 minutes apart (two bursts: its anchor is the
        // newer), b's 20 (likewise): the older of each goes, oldest first.
        assert_eq!(kept(&versions, &schedule), vec![("a".into(), 3 * MIN), ("b".into(), 20 * MIN)]);
        let roomy = Schedule { max_age_ns: 30 * DAY, budget: 400 };
        assert_eq!(kept(&versions, &roomy).len(), 4);
    }

    #[test]
    fn thinning_is_stable() {
        // Versions every 7 minutes for three days; thin, then thin what is
        // left again at the same time: nothing more goes.
        let versions: Vec<VersionInfo> = (0..(3 * 24 * 60 / 7)).map(|k| v("f", k * 7 * MIN, 1)).collect();
        let gone = thin(&versions, NOW, &MONTH);
        let left: Vec<VersionInfo> =
            versions.iter().enumerate().filter(|(i, _)| !gone.contains(i)).map(|(_, v)| v.clone()).collect();
        assert!(thin(&left, NOW, &MONTH).is_empty());
        // Last hour: 9 (0..56 min), then at most one per hour and per day.
        assert!(left.len() < 9 + 24 + 3, "{}", left.len());
        assert!(left.len() >= 9 + 23, "{}", left.len());
    }
}
