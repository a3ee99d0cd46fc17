//! History file names: `<path>~<YYYYMMDD-HHMMSS.nnnnnnnnn>[-n]` beneath
//! `.dartsync/versions`, mirroring the synced folder's layout. Pure: makes
//! and reads names, never touches the disk. The stamp is the UTC time the
//! version was saved; `-n` separates two saves in the same nanosecond.

use std::path::{Path, PathBuf};

use dartsync_shared::RelPath;
use dartsync_shared::time::{parse_user_time, utc_stamp};

use crate::jail::rel_path;

/// Separator between a path and its stamp in a history file name.
pub(crate) const STAMP_SEP: char = '~';
/// Length of `YYYYMMDD-HHMMSS.nnnnnnnnn`.
const STAMP_LEN: usize = 25;

/// The folder (relative to the versions root) holding the versions of
/// `path`, and their common name prefix.
pub(crate) fn slot(path: &RelPath) -> (Option<&Path>, String) {
    let parent = rel_path(path).parent().filter(|p| !p.as_os_str().is_empty());
    (parent, format!("{}{STAMP_SEP}", path.file_name()))
}

/// The key prefix of `path`'s history files (`docs/a.txt~`).
pub(crate) fn key_prefix(path: &RelPath) -> String {
    format!("{}{STAMP_SEP}", path.as_str())
}

/// The name of the `n`th try for a version of `path` saved at `ns`
/// (nanoseconds since the Unix epoch), relative to the versions root.
pub(crate) fn name_for(path: &RelPath, ns: i64, n: u32) -> PathBuf {
    let (parent, prefix) = slot(path);
    let secs = ns.div_euclid(1_000_000_000);
    let base = format!("{prefix}{}.{:09}", utc_stamp(secs), ns.rem_euclid(1_000_000_000));
    let name = if n == 0 { base } else { format!("{base}-{n}") };
    parent.map_or_else(|| PathBuf::from(&name), |p| p.join(&name))
}

/// Reads a history file's name (relative to the versions root): the
/// synced path it was saved from, and when (ns). `None` for names this
/// module did not make.
pub(crate) fn parse(rel: &str) -> Option<(RelPath, i64)> {
    let (path, stamp) = rel.rsplit_once(STAMP_SEP)?;
    if stamp.len() < STAMP_LEN || !stamp.is_char_boundary(STAMP_LEN) {
        return None;
    }
    let (stamp, tail) = stamp.split_at(STAMP_LEN);
    if !(tail.is_empty()
        || tail.strip_prefix('-').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    {
        return None;
    }
    let span = parse_user_time(stamp).ok()?;
    Some((RelPath::new(path).ok()?, span.start_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let path = RelPath::new("docs/a~b.txt").unwrap();
        let ns = 1_700_000_000_123_456_789;
        let name = name_for(&path, ns, 0);
        assert_eq!(name, PathBuf::from("docs/a~b.txt~20231114-221320.123456789"));
        assert_eq!(parse(name.to_str().unwrap()), Some((path.clone(), ns)));
        let second = name_for(&path, ns, 2);
        assert_eq!(parse(second.to_str().unwrap()), Some((path.clone(), ns)));
        assert!(second.to_str().unwrap().starts_with(&key_prefix(&path)));
        for bad in [
            "x",
            "x~2023",
            "x~20231114-221320.123456789-",
            "x~20231114-221320.123456789z",
            "~20231114-221320.123456789",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
