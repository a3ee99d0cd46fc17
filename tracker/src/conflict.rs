//! Names of conflict copies: `name.sync-conflict-YYYYMMDD-HHMMSS-<device>.ext`.
//!
//! When two versions of a path are concurrent, the tracker keeps the loser
//! under a new name next to the original (DESIGN.md, "Conflicts"). This
//! module owns only that name: the time is the loser's mtime in UTC, `<device>`
//! the loser's author as the state names it (its device name made safe for
//! a file name, `bobs-laptop`, with the short id appended when two devices
//! share that name; the short id alone for a device without a name), `.ext` the original extension
//! if there is one (`archive.tar.gz` keeps `.gz`; a dotfile such as
//! `.bashrc` has none).
//!
//! Invariants: the result is always a valid [`RelPath`] that differs from
//! the original. When the name or the whole path would exceed the limits of
//! [`dartsync_shared::limits`], the stem is shortened (on a character
//! boundary); when even a one-character stem does not fit under the parent
//! folder, the copy goes to the top of the folder. A second attempt at the
//! same name (`attempt > 1`) appends `-<attempt>` after the peer.
//!
//! It does not decide who wins, nor look at the table: see `state`.

use dartsync_shared::RelPath;
use dartsync_shared::limits::{MAX_NAME_LEN, MAX_PATH_LEN};

/// The conflict-copy path for a loser at `original` with mtime `mtime_ns`
/// authored by the device `device` (a file-name-safe tag of at most 48
/// bytes); `attempt` (from 1) picks an alternative name when an earlier one
/// is taken.
pub(crate) fn conflict_path(original: &RelPath, mtime_ns: i64, device: &str, attempt: u32) -> RelPath {
    let name = original.file_name();
    let mut suffix = format!(".sync-conflict-{}-{device}", utc_stamp(mtime_ns));
    if attempt > 1 {
        suffix.push_str(&format!("-{attempt}"));
    }
    let (stem, ext) = match name.rsplit_once('.') {
        // A long extension would leave no room for the stem: treat the whole name as the stem.
        Some((stem, ext)) if !stem.is_empty() && suffix.len() + 1 + ext.len() < MAX_NAME_LEN => (stem, Some(ext)),
        _ => (name, None),
    };
    let tail = match ext {
        Some(ext) => format!("{suffix}.{ext}"),
        None => suffix,
    };
    let parent = original.parent();
    let build = |parent: Option<&RelPath>| -> Option<RelPath> {
        let parent_len = parent.map_or(0, |p| p.as_str().len() + 1);
        let budget = (MAX_NAME_LEN - tail.len()).min(MAX_PATH_LEN.checked_sub(parent_len + tail.len())?);
        if budget == 0 {
            return None;
        }
        let stem = truncate_at_char(stem, budget);
        let file = format!("{stem}{tail}");
        match parent {
            Some(p) => p.join(&file).ok(),
            None => RelPath::new(&file).ok(),
        }
    };
    build(parent.as_ref())
        .or_else(|| build(None))
        .expect("a stem of at least one character plus a conflict suffix is a valid top-level name")
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `YYYYMMDD-HHMMSS` in UTC for a time in nanoseconds since the Unix epoch.
pub(crate) fn utc_stamp(mtime_ns: i64) -> String {
    dartsync_shared::time::utc_stamp(mtime_ns.div_euclid(1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1_000_000_000;

    fn peer() -> dartsync_shared::PeerId {
        dartsync_shared::PeerId([0x42; 16])
    }

    #[test]
    fn stamps() {
        for (ns, want) in [
            (0, "19700101-000000"),
            (1_700_000_000 * NS, "20231114-221320"),
            // 2024-02-29 23:59:59, a leap day.
            (1_709_251_199 * NS + 999_999_999, "20240229-235959"),
            (-1, "19691231-235959"),
            (951_782_400 * NS, "20000229-000000"),
        ] {
            assert_eq!(utc_stamp(ns), want, "{ns}");
        }
    }

    #[test]
    fn names() {
        let short = peer().fmt_short();
        let t = 1_700_000_000 * NS;
        for (orig, attempt, want) in [
            ("report.txt", 1, format!("report.sync-conflict-20231114-221320-{short}.txt")),
            ("docs/a b.txt", 1, format!("docs/a b.sync-conflict-20231114-221320-{short}.txt")),
            ("Makefile", 1, format!("Makefile.sync-conflict-20231114-221320-{short}")),
            (".bashrc", 1, format!(".bashrc.sync-conflict-20231114-221320-{short}")),
            ("x.tar.gz", 1, format!("x.tar.sync-conflict-20231114-221320-{short}.gz")),
            ("d/x.txt", 3, format!("d/x.sync-conflict-20231114-221320-{short}-3.txt")),
        ] {
            let got = conflict_path(&RelPath::new(orig).unwrap(), t, &short, attempt);
            assert_eq!(got.as_str(), want);
        }
    }

    #[test]
    fn long_names_are_shortened_to_fit() {
        let t = 1_700_000_000 * NS;
        // A 255-byte name of multi-byte characters.
        let long = format!("{}.txt", "é".repeat(125));
        assert!(long.len() <= MAX_NAME_LEN);
        let got = conflict_path(&RelPath::new(&long).unwrap(), t, "bobs-laptop", 1);
        assert!(got.file_name().len() <= MAX_NAME_LEN);
        assert!(got.file_name().starts_with('é') && got.file_name().ends_with("-bobs-laptop.txt"));

        // A parent so long that no stem fits under it: the copy goes to the top.
        let parent = vec!["p".repeat(250); 17].join("/");
        let deep = format!("{}/{}", &parent[..MAX_PATH_LEN - 6], "f.txt");
        let deep = RelPath::new(&deep).unwrap();
        let got = conflict_path(&deep, t, "bobs-laptop", 1);
        assert!(got.parent().is_none(), "{}", got.as_str());
        assert!(got.as_str().starts_with("f.sync-conflict-"));

        // A huge extension counts as part of the stem.
        let ext = format!("a.{}", "e".repeat(240));
        let got = conflict_path(&RelPath::new(&ext).unwrap(), t, "bobs-laptop", 1);
        assert!(got.file_name().len() <= MAX_NAME_LEN);
        assert_ne!(got.as_str(), ext);
    }
}
