//! Whom the piece server serves: the devices the tracker lists as
//! admitted. The cluster key proves a connection is a member's; the gate
//! keeps out members the tracker revoked (or holds for approval).
//!
//! The tracker client feeds it every device list (`Devices`) the tracker
//! pushes ([`PeerGate::update`]); the server asks it about each
//! authenticated connection ([`PeerGate::check`]). A peer listed as
//! revoked is refused at once. One not (yet) listed as admitted — this
//! peer has no list yet after a start, or the tracker admitted it a moment
//! ago and the new list is on its way — is given [`ADMISSION_GRACE`] for a
//! list that admits it, then refused; the downloader on the other side
//! treats the refusal like any unreachable holder and retries later.
//!
//! [`PeerGate::open`] serves everyone (tests that drive a server alone).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::device::DeviceState;
use dartsync_shared::proto::ptp::DeviceInfo;
use tokio::sync::watch;

/// How long a connection of a peer not listed as admitted waits for a
/// device list that admits it.
pub const ADMISSION_GRACE: Duration = Duration::from_secs(10);

/// What the gate says about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Listed as admitted: serve it.
    Admitted,
    /// Listed as revoked: refuse it.
    Revoked,
    /// Not listed as admitted within the grace: refuse it.
    Unknown,
}

/// The members as the last device list had them.
#[derive(Debug, Default)]
struct Members {
    admitted: HashSet<PeerId>,
    revoked: HashSet<PeerId>,
}

/// The admitted set, shared by the tracker client (writer) and the piece
/// server (reader). Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerGate {
    /// `None` until the first device list arrives.
    members: Arc<watch::Sender<Option<Arc<Members>>>>,
    /// Serves everyone (tests).
    open: bool,
}

impl Default for PeerGate {
    fn default() -> Self {
        PeerGate::new()
    }
}

impl PeerGate {
    /// A gate that admits nobody until the first device list.
    pub fn new() -> PeerGate {
        PeerGate { members: Arc::new(watch::channel(None).0), open: false }
    }

    /// A gate that serves every holder of the cluster key (tests).
    pub fn open() -> PeerGate {
        PeerGate { open: true, ..PeerGate::new() }
    }

    /// The tracker's latest device list.
    pub fn update(&self, devices: &[DeviceInfo]) {
        let mut members = Members::default();
        for d in devices {
            match d.state {
                DeviceState::Admitted => members.admitted.insert(d.peer_id),
                DeviceState::Revoked => members.revoked.insert(d.peer_id),
                DeviceState::Pending => false,
            };
        }
        self.members.send_replace(Some(Arc::new(members)));
    }

    /// True when the current list says `peer` is revoked (checked before
    /// each request of an open connection).
    pub fn is_revoked(&self, peer: PeerId) -> bool {
        !self.open && self.members.borrow().as_deref().is_some_and(|m| m.revoked.contains(&peer))
    }

    /// Whether to serve `peer`, waiting up to `grace` for a list that
    /// admits it if the current one does not.
    pub async fn check(&self, peer: PeerId, grace: Duration) -> Admission {
        if self.open {
            return Admission::Admitted;
        }
        let mut rx = self.members.subscribe();
        let wait = async {
            loop {
                let verdict = match rx.borrow_and_update().as_deref() {
                    Some(m) if m.admitted.contains(&peer) => Some(Admission::Admitted),
                    Some(m) if m.revoked.contains(&peer) => Some(Admission::Revoked),
                    _ => None,
                };
                if let Some(verdict) = verdict {
                    return verdict;
                }
                if rx.changed().await.is_err() {
                    return Admission::Unknown;
                }
            }
        };
        tokio::time::timeout(grace, wait).await.unwrap_or(Admission::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8, state: DeviceState) -> DeviceInfo {
        DeviceInfo {
            peer_id: PeerId([n; 16]),
            name: String::new(),
            online: true,
            up_to_date: true,
            last_seen: 0,
            state,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admitted_are_served_revoked_refused_at_once_and_unknown_after_the_grace() {
        let gate = PeerGate::new();
        let (a, r, p) = (PeerId([1; 16]), PeerId([2; 16]), PeerId([3; 16]));
        gate.update(&[
            device(1, DeviceState::Admitted),
            device(2, DeviceState::Revoked),
            device(3, DeviceState::Pending),
        ]);
        assert_eq!(gate.check(a, ADMISSION_GRACE).await, Admission::Admitted);
        assert!(gate.is_revoked(r) && !gate.is_revoked(a) && !gate.is_revoked(p));
        let start = tokio::time::Instant::now();
        assert_eq!(gate.check(r, ADMISSION_GRACE).await, Admission::Revoked);
        assert_eq!(start.elapsed(), Duration::ZERO, "a revoked peer is refused without waiting");
        assert_eq!(gate.check(p, ADMISSION_GRACE).await, Admission::Unknown);
        assert_eq!(start.elapsed(), ADMISSION_GRACE);
        assert_eq!(PeerGate::open().check(r, ADMISSION_GRACE).await, Admission::Admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_before_the_list_waits_for_it() {
        let gate = PeerGate::new();
        let peer = PeerId([7; 16]);
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.check(peer, ADMISSION_GRACE).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        gate.update(&[device(8, DeviceState::Admitted)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "a list without it: still waiting within the grace");
        gate.update(&[device(8, DeviceState::Admitted), device(7, DeviceState::Admitted)]);
        assert_eq!(waiting.await.unwrap(), Admission::Admitted);
    }
}
