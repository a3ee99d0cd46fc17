//! The on-disk layout of one synced folder: the folder itself and its
//! `.dartsync/` state directory.
//!
//! `DIR/.dartsync/` holds the node identity (`identity`, mode 0600), the
//! redb index (`index.redb`), downloads in progress (`tmp/`), replaced or
//! deleted files (`versions/`) and, once a tracker has answered, the
//! tracker's pinned identity (`tracker.pin`, see `sync::tracker_pin`). It is created on first start, never synced
//! and never announced: [`dartsync_shared::RelPath`] cannot name anything
//! under it, and the scanner never descends into it.
//!
//! Invariant: every path in [`PeerDirs`] is absolute and built from the
//! canonical form of the folder root, so paths reported by the watcher
//! (which are the watched path joined with names) strip cleanly against
//! [`PeerDirs::root`].
//!
//! This module only creates folders and the identity file; it does not read
//! or write the index (see [`crate::local::index`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dartsync_shared::key::Identity;
use dartsync_shared::path::STATE_DIR;

use crate::jail::Jail;
use crate::local::error::LocalError;

/// Name of the identity file inside `.dartsync/`.
pub const IDENTITY_FILE: &str = "identity";
/// Name of the index database inside `.dartsync/`.
pub const INDEX_FILE: &str = "index.redb";
/// Name of the download folder inside `.dartsync/`.
pub const TMP_DIR: &str = "tmp";
/// Name of the version-history folder inside `.dartsync/`.
pub const VERSIONS_DIR: &str = "versions";
/// Name of the tracker's pinned identity inside `.dartsync/`.
pub const TRACKER_PIN_FILE: &str = "tracker.pin";

/// The jails every file-system operation on behalf of the cluster goes
/// through (see [`crate::jail`]): the synced folder, the downloads in
/// `.dartsync/tmp` and the history in `.dartsync/versions`. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Jails {
    /// The synced folder.
    pub(crate) folder: Arc<Jail>,
    /// `.dartsync/tmp`: finished downloads are installed from here.
    pub(crate) tmp: Arc<Jail>,
    /// `.dartsync/versions`: replaced and deleted files go here.
    pub(crate) versions: Arc<Jail>,
}

/// The paths of one synced folder and its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDirs {
    /// The synced folder (canonical, absolute).
    pub root: PathBuf,
    /// `root/.dartsync`: never synced.
    pub state: PathBuf,
    /// `root/.dartsync/tmp`: partial downloads.
    pub tmp: PathBuf,
    /// `root/.dartsync/versions`: replaced and deleted files.
    pub versions: PathBuf,
    /// `root/.dartsync/identity`: the node's x25519 keypair (mode 0600).
    pub identity: PathBuf,
    /// `root/.dartsync/index.redb`: the local index.
    pub index: PathBuf,
    /// `root/.dartsync/tracker.pin`: the tracker's identity, pinned at
    /// first contact (written by the tracker client, not here).
    pub tracker_pin: PathBuf,
}

impl PeerDirs {
    /// Creates (if needed) the folder, `.dartsync/` (mode 0700) with `tmp/`
    /// and `versions/`, and the identity file. Idempotent.
    pub fn create(root: &Path) -> Result<PeerDirs, LocalError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        let root = root.canonicalize().map_err(io(root))?;
        let state = root.join(STATE_DIR);
        let dirs = PeerDirs {
            tmp: state.join(TMP_DIR),
            versions: state.join(VERSIONS_DIR),
            identity: state.join(IDENTITY_FILE),
            index: state.join(INDEX_FILE),
            tracker_pin: state.join(TRACKER_PIN_FILE),
            state,
            root,
        };
        std::fs::create_dir_all(&dirs.state).map_err(io(&dirs.state))?;
        if let Err(e) = std::fs::set_permissions(&dirs.state, std::fs::Permissions::from_mode(0o700)) {
            // File systems without permission bits (vfat without `quiet`)
            // refuse a chmod; the state stays as private as the mount is.
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return Err(LocalError::Io { path: dirs.state.clone(), source: e });
            }
            tracing::warn!(
                "cannot make {} private ({e}); its file system keeps no permission bits",
                dirs.state.display()
            );
        }
        for dir in [&dirs.tmp, &dirs.versions] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Identity::load_or_create(&dirs.identity)?;
        Ok(dirs)
    }

    /// Opens the three jails of the folder (see [`Jails`]).
    pub(crate) fn open_jails(&self) -> Result<Jails, LocalError> {
        Ok(Jails {
            folder: Arc::new(Jail::open(&self.root)?),
            tmp: Arc::new(Jail::open(&self.tmp)?),
            versions: Arc::new(Jail::open(&self.versions)?),
        })
    }

    /// Whether the folder's file system ignores letter case (vfat, exFAT,
    /// NTFS, ext4 casefold, macOS): creates a probe file in `tmp/` (same
    /// file system as the folder, never synced) and looks it up in the
    /// other case.
    pub(crate) fn is_case_insensitive(&self) -> Result<bool, LocalError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalError::Io { path, source }
        };
        let upper = self.tmp.join(format!("CASE-PROBE-{}", std::process::id()));
        let lower = self.tmp.join(format!("case-probe-{}", std::process::id()));
        std::fs::write(&upper, b"").map_err(io(&upper))?;
        let insensitive = std::fs::symlink_metadata(&lower).is_ok();
        std::fs::remove_file(&upper).map_err(io(&upper))?;
        Ok(insensitive)
    }

    /// Loads this node's identity (created by [`PeerDirs::create`]).
    pub fn load_identity(&self) -> Result<Identity, LocalError> {
        Ok(Identity::load_or_create(&self.identity)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn layout_is_created_once_and_identity_is_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nested/folder");
        let dirs = PeerDirs::create(&root).unwrap();
        assert!(dirs.root.is_absolute());
        for dir in [&dirs.state, &dirs.tmp, &dirs.versions] {
            assert!(dir.is_dir(), "{dir:?}");
        }
        assert_eq!(std::fs::metadata(&dirs.state).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&dirs.identity).unwrap().mode() & 0o777, 0o600);
        assert!(!dirs.is_case_insensitive().unwrap(), "the test file system tells case apart");
        assert_eq!(std::fs::read_dir(&dirs.tmp).unwrap().count(), 0, "the probe file is gone");
        let first = dirs.load_identity().unwrap().peer_id();
        let again = PeerDirs::create(&root).unwrap();
        assert_eq!(again, dirs);
        assert_eq!(again.load_identity().unwrap().peer_id(), first);
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("f");
        std::fs::write(&root, b"x").unwrap();
        assert!(matches!(PeerDirs::create(&root), Err(LocalError::Io { .. })));
    }
}
