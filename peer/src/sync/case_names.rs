//! [`CaseNames`]: which path owns each case-insensitive name, for folders
//! on case-insensitive file systems (vfat/exFAT sticks, NTFS, ext4 with
//! casefold, macOS). There `Readme.md` and `README.md` are one file, and a
//! folder `Docs` is where `docs/x` would land: applying both records would
//! let one overwrite the other. The first live path with a name keeps it;
//! a later path whose name (or any parent's name) differs only in case from
//! a live path is refused (the engine parks it with a reason) and is
//! reconsidered when the owner goes away.
//!
//! Pure: fed by the engine from deltas, no I/O. Not used on case-sensitive
//! folders, where such paths are simply distinct.

use std::collections::HashMap;

use dartsync_shared::RelPath;
use dartsync_shared::path::case_fold_key;

/// Owners of case-folded names (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct CaseNames {
    owners: HashMap<String, RelPath>,
}

impl CaseNames {
    /// Records that `path` is live (or deleted, `live == false`) in the
    /// global table. Returns the folded name it gave up, if it owned one:
    /// paths waiting for that name may now take it.
    pub(crate) fn update(&mut self, path: &RelPath, live: bool) -> Option<String> {
        let key = case_fold_key(path);
        if live {
            self.owners.entry(key).or_insert_with(|| path.clone());
            None
        } else if self.owners.get(&key) == Some(path) {
            self.owners.remove(&key);
            Some(key)
        } else {
            None
        }
    }

    /// The live path whose name `path` (or one of its parents) collides
    /// with: same letters, other case. `None` when `path` may be written.
    pub(crate) fn collision(&self, path: &RelPath) -> Option<&RelPath> {
        path.ancestors()
            .iter()
            .chain(std::iter::once(path))
            .find_map(|p| self.owners.get(&case_fold_key(p)).filter(|owner| *owner != p))
    }
}

#[cfg(test)]
mod tests {
    use dartsync_shared::test_util::rel;

    use super::*;

    #[test]
    fn the_first_name_wins_and_its_children_and_cousins_are_refused() {
        let mut names = CaseNames::default();
        names.update(&rel("Docs"), true);
        names.update(&rel("Docs/a.txt"), true);
        names.update(&rel("README.md"), true);
        names.update(&rel("Readme.md"), true);
        assert_eq!(names.collision(&rel("README.md")), None);
        assert_eq!(names.collision(&rel("Readme.md")), Some(&rel("README.md")));
        assert_eq!(names.collision(&rel("docs")), Some(&rel("Docs")));
        assert_eq!(names.collision(&rel("docs/b.txt")), Some(&rel("Docs")), "a child of a colliding folder");
        assert_eq!(names.collision(&rel("Docs/b.txt")), None);
        assert_eq!(names.collision(&rel("Docs/A.TXT")), Some(&rel("Docs/a.txt")));
        assert_eq!(names.collision(&rel("other")), None);
    }

    #[test]
    fn a_deleted_owner_frees_the_name() {
        let mut names = CaseNames::default();
        names.update(&rel("A.txt"), true);
        names.update(&rel("a.txt"), true);
        assert_eq!(names.update(&rel("a.txt"), false), None, "the loser owned nothing");
        assert_eq!(names.update(&rel("A.txt"), false), Some(case_fold_key(&rel("a.txt"))));
        assert_eq!(names.collision(&rel("a.txt")), None);
        names.update(&rel("a.txt"), true);
        assert_eq!(names.collision(&rel("A.txt")), Some(&rel("a.txt")));
    }
}
