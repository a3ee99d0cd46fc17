//! The on-disk layout of one synced folder: the folder itself and its
//! `.dartsync/` state directory.
//!
//! `DIR/.dartsync/` holds the node identity (`identity`, mode 0600), the
//! redb index (`index.redb`), downloads in progress (`tmp/`), replaced or
//! deleted files (`versions/`) and, once a tracker has answered, the
//! tracker's pinned identity (`tracker.pin`, see `sync::tracker_pin`), the
//! tracker address found on the LAN (`tracker.addr`, see `sync::locate`), and
//! the lock of the running peer (`lock`, see [`FolderLock`]). It is created on first start, never synced
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
/// Name of the tracker address found on the LAN, inside `.dartsync/`.
pub const TRACKER_ADDR_FILE: &str = "tracker.addr";
/// Name of the lock file inside `.dartsync/` (see [`FolderLock`]).
pub const LOCK_FILE: &str = "lock";

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
    /// `root/.dartsync/tracker.addr`: the tracker address last found on
    /// the LAN (written by `sync::locate`, not here).
    pub tracker_addr: PathBuf,
    /// `root/.dartsync/lock`: held by the running peer ([`FolderLock`]).
    pub lock: PathBuf,
}

impl PeerDirs {
    /// Creates (if needed) the folder, `.dartsync/` (mode 0700) with `tmp/`
    /// and `versions/`, and the identity file. Idempotent.
    pub fn create(root: &Path) -> Result<PeerDirs, LocalError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalError::Io { path, source }
        };
        // Refuse a file (or a device, a socket) before creating anything;
        // `metadata` follows a symlink to a folder, which is fine.
        match std::fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => return Err(LocalError::NotAFolder { path: root.to_owned() }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LocalError::Io { path: root.to_owned(), source: e }),
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        let root = root.canonicalize().map_err(io(root))?;
        let state = root.join(STATE_DIR);
        let dirs = PeerDirs {
            tmp: state.join(TMP_DIR),
            versions: state.join(VERSIONS_DIR),
            identity: state.join(IDENTITY_FILE),
            index: state.join(INDEX_FILE),
            tracker_pin: state.join(TRACKER_PIN_FILE),
            tracker_addr: state.join(TRACKER_ADDR_FILE),
            lock: state.join(LOCK_FILE),
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

/// One running peer's claim on its folder: an exclusive `flock` on
/// `.dartsync/lock`, which holds the owner's pid (for the message a second
/// `dartsync` on the same folder prints). Released when dropped, or by the
/// kernel when the process dies, so a crash leaves no stale lock.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

impl FolderLock {
    /// Takes the lock of the folder laid out in `dirs`, without waiting:
    /// [`LocalError::Locked`] (naming the holder's pid) if another process
    /// has it.
    pub fn acquire(dirs: &PeerDirs) -> Result<FolderLock, LocalError> {
        use rustix::fs::{FlockOperation, flock};
        use rustix::io::Errno;
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;

        let path = &dirs.lock;
        let io = |source| LocalError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(LocalError::Locked { folder: dirs.root.clone(), pid });
            }
            // A file system without locks: the index's own lock still
            // keeps a second peer out, with a less helpful message.
            Err(e @ (Errno::NOLCK | Errno::OPNOTSUPP)) => {
                tracing::warn!("cannot lock {} ({e}); do not run two peers on this folder", path.display());
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        Ok(FolderLock { _file: file })
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
        assert!(matches!(PeerDirs::create(&root), Err(LocalError::NotAFolder { .. })));
        assert!(!tmp.path().join(STATE_DIR).exists());
    }

    #[test]
    fn a_missing_parent_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = PeerDirs::create(&tmp.path().join("a/b/c")).unwrap();
        assert!(dirs.state.is_dir());
    }

    #[test]
    fn the_lock_is_exclusive_names_its_holder_and_is_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = PeerDirs::create(tmp.path()).unwrap();
        let held = FolderLock::acquire(&dirs).unwrap();
        assert_eq!(std::fs::read_to_string(&dirs.lock).unwrap(), format!("{}\n", std::process::id()));
        // flock locks belong to the open file description: a second open
        // in this process conflicts just like another process would.
        match FolderLock::acquire(&dirs) {
            Err(e @ LocalError::Locked { pid: Some(pid), .. }) => {
                assert_eq!(pid, std::process::id());
                assert_eq!(
                    e.to_string(),
                    format!("another dartsync (pid {pid}) is already syncing {}; stop it first", dirs.root.display())
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        let _again = FolderLock::acquire(&dirs).unwrap();
    }
}
