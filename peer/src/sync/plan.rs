//! The sync planner: what to do about one path, as a pure function of the
//! global record, the index's record and whether the disk differs from the
//! index (an unannounced local edit). No I/O: the engine gathers the three
//! inputs and carries out the [`Action`]; the table test below is the
//! specification.

use dartsync_shared::{Causality, FileKind, FileRecord};

/// What to do about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing: in sync, or our version is newer or concurrent (announced).
    Nothing,
    /// The disk has an unannounced edit: let the scanner announce it.
    AnnounceLocal,
    /// Our bytes already are the global content: adopt its version.
    Adopt,
    /// Create the folder.
    MakeDir,
    /// Create the symlink.
    MakeLink,
    /// Delete what is there (file, link or empty folder).
    Delete,
    /// Fetch the content.
    Download,
}

/// Decides what to do about one path, from the global record, the index's
/// record (`None` if the path was never indexed) and whether the disk
/// differs from the index. Pure: no I/O.
pub(crate) fn plan(global: &FileRecord, indexed: Option<&FileRecord>, locally_modified: bool) -> Action {
    if let Some(local) = indexed {
        match global.version.compare(&local.version) {
            Causality::Equal if !locally_modified => return Action::Nothing,
            Causality::Dominates => {}
            // Ours is newer, concurrent, or equal but edited since: the
            // scanner announces it and the tracker decides.
            _ => return if locally_modified { Action::AnnounceLocal } else { Action::Nothing },
        }
        if locally_modified {
            return Action::AnnounceLocal;
        }
        if global.same_content(local) && global.kind == local.kind {
            return Action::Adopt;
        }
    } else if locally_modified {
        // Something unindexed sits at that path: never overwrite or delete
        // it blindly.
        return Action::AnnounceLocal;
    }
    if global.deleted {
        return Action::Delete;
    }
    match global.kind {
        FileKind::Dir => Action::MakeDir,
        FileKind::Symlink { .. } => Action::MakeLink,
        FileKind::File => Action::Download,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::test_util::RecordBuilder;

    #[test]
    fn plan_table() {
        use Action::*;
        let f = |c: &[u8], vv: &[(u64, u64)]| RecordBuilder::file("p").body(c).vv(vv).build();
        let tomb = |vv: &[(u64, u64)]| RecordBuilder::file("p").vv(vv).tombstone().build();
        let dir = |vv: &[(u64, u64)]| RecordBuilder::dir("p").vv(vv).build();
        let cases: Vec<(FileRecord, Option<FileRecord>, bool, Action)> = vec![
            // New file, nothing here.
            (f(b"a", &[(1, 1)]), None, false, Download),
            // Same version: nothing.
            (f(b"a", &[(1, 1)]), Some(f(b"a", &[(1, 1)])), false, Nothing),
            // Newer global version with other bytes.
            (f(b"b", &[(1, 2)]), Some(f(b"a", &[(1, 1)])), false, Download),
            // Newer global version with our bytes (merged conflict): adopt.
            (f(b"a", &[(1, 2), (2, 1)]), Some(f(b"a", &[(2, 1)])), false, Adopt),
            // Our version is newer or concurrent: the tracker decides.
            (f(b"a", &[(1, 1)]), Some(f(b"b", &[(1, 2)])), false, Nothing),
            (f(b"a", &[(1, 1)]), Some(f(b"b", &[(2, 1)])), false, Nothing),
            // Unannounced local edit: never overwritten.
            (f(b"b", &[(1, 2)]), Some(f(b"a", &[(1, 1)])), true, AnnounceLocal),
            (tomb(&[(1, 2)]), Some(f(b"a", &[(1, 1)])), true, AnnounceLocal),
            // Unindexed local file where a global file wants to go.
            (f(b"a", &[(1, 1)]), None, true, AnnounceLocal),
            // Deletions, folders.
            (tomb(&[(1, 2)]), Some(f(b"a", &[(1, 1)])), false, Delete),
            (tomb(&[(1, 1)]), None, false, Delete),
            (dir(&[(1, 1)]), None, false, MakeDir),
            (dir(&[(1, 2)]), Some(dir(&[(1, 1)])), false, Adopt),
        ];
        for (i, (global, indexed, modified, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan(&global, indexed.as_ref(), modified), want, "case {i}");
        }
    }
}
