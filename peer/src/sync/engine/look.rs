//! [`RoundLook`]: what one reconcile round reads from the disk before it
//! plans, in one trip to the blocking pool for all its paths: each path's
//! index entry and whether the disk differs from it, whether a file's
//! parent folder can be written through, and the free space of the
//! folder's file system. A burst of small files costs one blocking task
//! per round, not three per file.
//!
//! What it reads can change before the round acts on it, exactly as a
//! single look could: every write still goes through the write gate,
//! which checks again under the commit lock.

use std::collections::HashMap;

use dartsync_shared::RelPath;

use crate::jail::{JailError, Space, rel_path};
use crate::local::dirs::Jails;
use crate::local::index::IndexEntry;
use crate::local::{LocalError, LocalState};

/// The index entry of a path and whether the disk differs from it (see
/// [`LocalState::local_view`]).
pub(super) type LocalView = (Option<IndexEntry>, bool);

/// What the round knows of one path.
#[derive(Debug)]
pub(super) struct Look {
    pub(super) view: Result<LocalView, LocalError>,
    /// Only for a path that may be downloaded: why its parent folder can
    /// never be written through (a symlink, a file), if it cannot.
    pub(super) blocked_parent: Option<JailError>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct RoundLook {
    paths: HashMap<RelPath, Look>,
    /// The folder's file system, `None` if it could not be measured.
    pub(super) space: Option<Space>,
}

impl RoundLook {
    /// Looks at `paths`; `files` are those whose global record is a live
    /// file (their parent folder is checked too, and the free space is
    /// measured once if there is any).
    pub(super) async fn take(local: &LocalState, jails: &Jails, paths: Vec<RelPath>, files: Vec<RelPath>) -> RoundLook {
        if paths.is_empty() {
            return RoundLook::default();
        }
        let (local, jails) = (local.clone(), jails.clone());
        let looked = tokio::task::spawn_blocking(move || {
            let mut looks: HashMap<RelPath, Look> = paths
                .into_iter()
                .map(|p| {
                    let view = local.local_view_blocking(&p);
                    (p, Look { view, blocked_parent: None })
                })
                .collect();
            for path in &files {
                let Some(parent) = path.parent() else { continue };
                if let Err(e) = jails.folder.lstat(rel_path(&parent))
                    && e.is_permanent()
                    && let Some(look) = looks.get_mut(path)
                {
                    look.blocked_parent = Some(e);
                }
            }
            let space = if files.is_empty() { None } else { jails.folder.free_space().ok() };
            RoundLook { paths: looks, space }
        })
        .await;
        looked.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the look at the disk failed; each path is looked at on its own");
            RoundLook::default()
        })
    }

    /// What was read for `path` (`None` if it was not part of the round).
    pub(super) fn path(&mut self, path: &RelPath) -> Option<Look> {
        self.paths.remove(path)
    }
}
