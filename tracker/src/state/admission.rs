//! The state's side of device admission: which devices may register,
//! what an operator's `admit` and `revoke` change, and the pending
//! devices that have a session open. The rules themselves are the
//! registry's (`crate::registry`); a pending device never enters the peer
//! table, so it holds nothing, authors nothing and is told nothing.

use std::net::SocketAddr;

use dartsync_shared::PeerId;
use dartsync_shared::config::AdmitPolicy;
use dartsync_shared::device::DeviceState;

use super::State;
use crate::registry::{ArriveError, DeviceEntry, ResolveError};

impl State {
    /// Registry entries loaded from the database. Known peers without an
    /// entry (a database from before the registry) are admitted: they were
    /// members already.
    pub fn restore_registry(&mut self, entries: Vec<(PeerId, DeviceEntry)>, now_unix: u64) {
        self.registry.restore(entries);
        let members: Vec<PeerId> = self.known.keys().copied().filter(|id| self.registry.state(*id).is_none()).collect();
        for peer in members {
            let name = self.devices.name(peer).unwrap_or_default().to_owned();
            // Under `Auto` a new entry is admitted; it is persisted with the next commit.
            let _ = self.registry.arrive(peer, &name, AdmitPolicy::Auto, now_unix);
        }
    }

    /// `peer` registers as `name`: admitted, pending or revoked under
    /// `policy` (see the registry's rules).
    pub fn arrive(
        &mut self,
        peer: PeerId,
        name: &str,
        policy: AdmitPolicy,
        now_unix: u64,
    ) -> Result<DeviceState, ArriveError> {
        self.registry.arrive(peer, name, policy, now_unix)
    }

    /// `peer`'s state, if the tracker ever decided about it.
    pub fn device_state(&self, peer: PeerId) -> Option<DeviceState> {
        self.registry.state(peer)
    }

    /// The device an operator's `query` names.
    pub fn resolve_device(&self, query: &str) -> Result<PeerId, ResolveError> {
        self.registry.resolve(query)
    }

    /// Admits `peer`; its state before (`None`: unknown).
    pub fn admit_device(&mut self, peer: PeerId, now_unix: u64) -> Option<DeviceState> {
        self.registry.admit(peer, now_unix)
    }

    /// `peer` joined with an invite (see [`crate::registry::Registry::invited`]).
    pub fn invite_device(
        &mut self,
        peer: PeerId,
        name: &str,
        now_unix: u64,
    ) -> Result<Option<DeviceState>, DeviceState> {
        self.registry.invited(peer, name, now_unix)
    }

    /// Revokes `peer` and takes it off the peer table (so off every
    /// holders set) if it is online; its state before (`None`: unknown).
    pub fn revoke_device(&mut self, peer: PeerId, now_unix: u64) -> Option<DeviceState> {
        let before = self.registry.revoke(peer, now_unix)?;
        self.remove_peer(peer, now_unix);
        self.pending_online.remove(&peer);
        Some(before)
    }

    /// A pending device's session opened (`Some(addr)`) or closed (`None`).
    pub fn set_pending_online(&mut self, peer: PeerId, addr: Option<SocketAddr>) {
        match addr {
            Some(addr) => self.pending_online.insert(peer, addr),
            None => self.pending_online.remove(&peer),
        };
    }

    /// Where a pending device with an open session connects from.
    pub fn pending_addr(&self, peer: PeerId) -> Option<SocketAddr> {
        self.pending_online.get(&peer).copied()
    }

    /// The name a device last registered with, from the registry (pending
    /// and revoked devices have no entry in the known peers' names).
    pub fn registry_name(&self, peer: PeerId) -> Option<&str> {
        self.registry.get(peer).map(|e| e.name.as_str()).filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use dartsync_shared::ShortId;

    use super::*;
    use crate::state::{Arrival, StateConfig};

    fn config() -> StateConfig {
        StateConfig {
            interval: Duration::from_secs(10),
            tombstone_max_age: Duration::from_secs(3600),
            max_records: 1000,
            max_records_per_peer: 1000,
            max_known_peers: 2,
        }
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn register(state: &mut State, peer: PeerId, session: u64, now: u64) {
        let addr = "127.0.0.1:9".parse().unwrap();
        state.register(Arrival { peer, addr, session, seen_seq: 0, epoch: 0 }, Instant::now(), now);
    }

    #[test]
    fn revoking_an_online_device_takes_it_off_the_table_and_the_registry_is_written() {
        let mut state = State::new(config(), ShortId(1), 7);
        assert_eq!(state.arrive(id(1), "alice", AdmitPolicy::Auto, 1), Ok(DeviceState::Admitted));
        register(&mut state, id(1), 1, 1);
        assert!(state.is_current(id(1), 1));
        let write = state.take_dirty();
        assert_eq!(write.devices.len(), 1);
        assert_eq!(state.resolve_device("alice"), Ok(id(1)));
        assert_eq!(state.revoke_device(id(1), 2), Some(DeviceState::Admitted));
        assert!(!state.is_current(id(1), 1), "the revoked device is offline at once");
        assert_eq!(state.device_state(id(1)), Some(DeviceState::Revoked));
        let write = state.take_dirty();
        assert_eq!(write.devices[0].1.as_ref().unwrap().state, DeviceState::Revoked);
        // The device list shows it revoked.
        let list = state.device_list();
        assert_eq!(list.iter().find(|d| d.peer_id == id(1)).unwrap().state, DeviceState::Revoked);
    }

    #[test]
    fn pending_devices_are_listed_but_never_enter_the_peer_table() {
        let mut state = State::new(config(), ShortId(1), 7);
        assert_eq!(state.arrive(id(2), "bob", AdmitPolicy::Approve, 1), Ok(DeviceState::Pending));
        state.set_pending_online(id(2), Some("127.0.0.1:5".parse().unwrap()));
        assert!(!state.is_current(id(2), 1));
        let status = state.tracker_status(id(0), "x".into(), 5);
        let bob = status.devices.iter().find(|d| d.name == "bob").unwrap();
        assert_eq!((bob.state, bob.online, bob.up_to_date), (DeviceState::Pending, true, false));
        assert_eq!(bob.addr.as_deref(), Some("127.0.0.1:5"));
        state.set_pending_online(id(2), None);
        let status = state.tracker_status(id(0), "x".into(), 5);
        assert!(!status.devices.iter().find(|d| d.name == "bob").unwrap().online);
    }

    #[test]
    fn old_members_are_admitted_at_load_and_forgotten_ones_lose_admission_only() {
        let mut state = State::new(config(), ShortId(1), 7);
        for n in 1..=3 {
            register(&mut state, id(n), u64::from(n), u64::from(n));
            state.remove_peer(id(n), u64::from(n));
        }
        // max_known_peers = 2: peer 1 was forgotten.
        state.restore_registry(Vec::new(), 10);
        assert_eq!(state.device_state(id(1)), None);
        assert_eq!(state.device_state(id(2)), Some(DeviceState::Admitted));
        assert_eq!(state.device_state(id(3)), Some(DeviceState::Admitted));
        state.revoke_device(id(2), 11);
        register(&mut state, id(4), 4, 12);
        state.arrive(id(4), "", AdmitPolicy::Auto, 12).unwrap();
        state.remove_peer(id(4), 13);
        register(&mut state, id(5), 5, 14);
        // Known peers 2 and 3 were forgotten; the revocation of 2 stays.
        assert_eq!(state.device_state(id(2)), Some(DeviceState::Revoked));
        assert_eq!(state.device_state(id(3)), None);
    }
}
