//! `dartsync join`: this device side of joining a cluster with an invite
//! code.
//!
//! Opens (creating if needed) the folder to sync, so the identity the
//! tracker admits is the one the peer will run with; connects to the
//! tracker; runs the join handshake (`dartsync_shared::join`); and, only
//! once the tracker has handed over the key, pins the tracker's identity
//! in the folder's `.dartsync/tracker.pin` (replacing any older pin: the
//! code proved this tracker directly) and remembering its address in
//! `.dartsync/tracker.addr` (tried first by the next start without an
//! address). Writing the cluster key file is
//! the caller's (it owns where keys live). A failed join leaves no pin and
//! no key; at most an empty folder with its `.dartsync/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dartsync_shared::id::PublicKey;
use dartsync_shared::invite_code::InviteCode;
use dartsync_shared::join::{self, JoinError};
use dartsync_shared::key::ClusterKey;
use dartsync_shared::{PeerId, hex};

use crate::discovery::{DiscoveryError, Filter, discover};
use crate::local::{LocalError, OpenFolder};
use crate::sync::tracker_pin::{PinError, TrackerPin};

/// TCP connect to the tracker must succeed within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerJoinError {
    /// The folder could not be opened or created.
    #[error(transparent)]
    Folder(#[from] LocalError),
    /// The tracker's address did not resolve.
    #[error("cannot resolve the tracker address {addr}: {source}")]
    Resolve {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No TCP connection to the tracker.
    #[error("cannot reach the tracker at {addr}: {source}")]
    Unreachable {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("joining through {addr} failed: {source}")]
    Join {
        /// The address.
        addr: String,
        /// The cause.
        source: JoinError,
    },
    /// The tracker's identity could not be pinned.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A blocking task failed.
    #[error("internal error: {0}")]
    Task(String),
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// The cluster key (not yet written anywhere).
    pub key: ClusterKey,
    /// The tracker's identity, pinned in the folder.
    pub tracker: PublicKey,
    /// This device's id in the folder (what the tracker admitted).
    pub device: PeerId,
    /// The tracker address that answered.
    pub addr: std::net::SocketAddr,
}

impl Joined {
    /// The tracker's id, for messages.
    pub fn tracker_id(&self) -> PeerId {
        self.tracker.peer_id()
    }

    /// The tracker's key as hex, for messages.
    pub fn tracker_key_hex(&self) -> String {
        hex::encode(&self.tracker.0)
    }
}

/// Finds the tracker whose LAN announcement lists `code`'s nameplate
/// (waiting at most `timeout`): its address.
pub async fn find_inviting_tracker(code: &InviteCode, timeout: Duration) -> Result<String, DiscoveryError> {
    let found = discover(Filter::Nameplate(code.nameplate()), timeout).await?;
    Ok(found.addr().to_string())
}

/// Joins the tracker at `tracker_addr` (HOST:PORT) with `code`, as the
/// device `name` syncing `folder`.
pub async fn join(folder: &Path, tracker_addr: &str, code: &InviteCode, name: &str) -> Result<Joined, PeerJoinError> {
    let existed = folder.exists();
    let result = join_folder(folder, tracker_addr, code, name).await;
    if result.is_err() && !existed {
        // Leave nothing behind: the folder this attempt created, unless
        // something else appeared in it meanwhile.
        let folder = folder.to_owned();
        let _ = tokio::task::spawn_blocking(move || remove_created(&folder)).await;
    }
    result
}

/// Removes `folder`'s `.dartsync/` and then `folder` if it is empty.
fn remove_created(folder: &Path) {
    let state = folder.join(dartsync_shared::path::STATE_DIR);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir(folder);
}

async fn join_folder(
    folder: &Path,
    tracker_addr: &str,
    code: &InviteCode,
    name: &str,
) -> Result<Joined, PeerJoinError> {
    let root: PathBuf = folder.to_owned();
    let opened = tokio::task::spawn_blocking(move || OpenFolder::open(&root))
        .await
        .map_err(|e| PeerJoinError::Task(e.to_string()))??;
    let identity = opened.identity().clone();
    let pin = TrackerPin::new(opened.dirs().tracker_pin.clone());
    let addr = tokio::net::lookup_host(tracker_addr)
        .await
        .map_err(|source| PeerJoinError::Resolve { addr: tracker_addr.to_owned(), source })?
        .next()
        .ok_or_else(|| PeerJoinError::Resolve {
            addr: tracker_addr.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    let unreachable = |source| PeerJoinError::Unreachable { addr: tracker_addr.to_owned(), source };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s")))?
        .map_err(unreachable)?;
    let _ = stream.set_nodelay(true);
    let granted = join::join(stream, code, &identity, name)
        .await
        .map_err(|source| PeerJoinError::Join { addr: tracker_addr.to_owned(), source })?;
    let tracker = granted.tracker;
    tokio::task::spawn_blocking(move || pin.replace(&tracker))
        .await
        .map_err(|e| PeerJoinError::Task(e.to_string()))??;
    // The next `dartsync --peer DIR` without an address tries this one
    // first. Only a convenience: a failure is a warning.
    let remember = opened.dirs().tracker_addr.clone();
    let text = addr.to_string();
    match tokio::task::spawn_blocking(move || crate::sync::locate::write_atomically(&remember, &text)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot remember the tracker address in the folder: {e}"),
        Err(e) => tracing::warn!("cannot remember the tracker address in the folder: {e}"),
    }
    // Release the folder lock before the caller starts the peer on it.
    drop(opened);
    Ok(Joined { key: granted.key, tracker, device: identity.peer_id(), addr })
}
