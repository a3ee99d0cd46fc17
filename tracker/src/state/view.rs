//! Read-only views of the state for people: the device list every
//! session receives (`Devices`) and what `dartsync status --tracker`
//! shows. Nothing here changes the state.

use dartsync_shared::PeerId;
use dartsync_shared::device::DeviceState;
use dartsync_shared::limits::MAX_DEVICES;
use dartsync_shared::proto::ptp::DeviceInfo;
use dartsync_shared::status::{Conflict, MAX_LISTED, STATUS_SCHEMA, TrackerDevice, TrackerStatus};

use super::State;

impl State {
    /// True when `peer` is online, has seen every record change and
    /// reports nothing pending or waiting.
    fn up_to_date(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
            && self.devices.report(peer).is_some_and(|r| r.up_to_date && r.seen_seq >= self.last_record_seq)
    }

    /// Known peers, online first, then pending devices with a session,
    /// then the most recently seen, then the other pending and revoked
    /// devices (the most recently changed first); at most [`MAX_DEVICES`].
    fn devices_in_order(&self) -> Vec<PeerId> {
        let online = self.peers.keys().copied();
        let mut ids: Vec<PeerId> = online.collect();
        ids.sort_by_key(|id| (self.devices.display_name(*id), *id));
        let mut waiting: Vec<PeerId> = self.pending_online.keys().copied().collect();
        waiting.sort_by_key(|id| (self.name_of(*id).unwrap_or_default().to_owned(), *id));
        ids.extend(waiting);
        let offline = self.known_by_age.iter().rev().map(|(_, id)| *id).filter(|id| !self.peers.contains_key(id));
        ids.extend(offline.filter(|id| !self.pending_online.contains_key(id)));
        let mut rest: Vec<(u64, PeerId)> = self
            .registry
            .iter()
            .filter(|(id, _)| !self.known.contains_key(id) && !self.pending_online.contains_key(id))
            .map(|(id, e)| (e.since, id))
            .collect();
        rest.sort_by(|a, b| b.cmp(a));
        ids.extend(rest.into_iter().map(|(_, id)| id));
        ids.truncate(MAX_DEVICES);
        ids
    }

    /// A device's name: as a known peer, else as the registry has it.
    fn name_of(&self, peer: PeerId) -> Option<&str> {
        self.devices.name(peer).or_else(|| self.registry_name(peer))
    }

    /// What people call a device: its name, else its short id.
    fn display_name_of(&self, peer: PeerId) -> String {
        self.name_of(peer).map_or_else(|| peer.fmt_short(), str::to_owned)
    }

    /// A device's state (a known peer without an entry counts as admitted:
    /// it registered before the registry).
    fn state_of(&self, peer: PeerId) -> DeviceState {
        self.registry.state(peer).unwrap_or_default()
    }

    /// The device list sent to every session. It changes only when a device
    /// comes, goes, is renamed or becomes (not) up to date.
    pub fn device_list(&self) -> Vec<DeviceInfo> {
        self.devices_in_order()
            .into_iter()
            .map(|id| {
                let online = self.peers.contains_key(&id) || self.pending_online.contains_key(&id);
                DeviceInfo {
                    peer_id: id,
                    name: self.name_of(id).unwrap_or_default().to_owned(),
                    online,
                    up_to_date: self.up_to_date(id),
                    last_seen: if online { 0 } else { self.known.get(&id).map_or(0, |k| k.last_seen_unix) },
                    state: self.state_of(id),
                }
            })
            .collect()
    }

    /// The status of the tracker for `dartsync status --tracker`.
    pub fn tracker_status(&self, id: PeerId, listen: String, now_unix: u64) -> TrackerStatus {
        let (records, tombstones) = self.counts();
        let devices = self
            .devices_in_order()
            .into_iter()
            .map(|peer| {
                let online = self.peers.get(&peer);
                let waiting = self.pending_addr(peer);
                let report = self.devices.report(peer);
                TrackerDevice {
                    name: self.display_name_of(peer),
                    id: peer.to_string(),
                    addr: online.map(|p| p.addr).or(waiting).map(|a| a.to_string()),
                    online: online.is_some() || waiting.is_some(),
                    last_seen: match (online, waiting) {
                        (None, None) => self.known.get(&peer).map(|k| k.last_seen_unix),
                        _ => Some(now_unix),
                    },
                    up_to_date: self.up_to_date(peer),
                    behind: online.map_or(0, |_| self.last_record_seq.saturating_sub(report.map_or(0, |r| r.seen_seq))),
                    pending_files: report.map_or(0, |r| r.pending_files),
                    pending_bytes: report.map_or(0, |r| r.pending_bytes),
                    waiting: report.map_or(0, |r| r.waiting),
                    rate: report.map_or(0, |r| r.rate),
                    state: self.state_of(peer),
                }
            })
            .collect();
        let conflicts = self
            .devices
            .recent_conflicts()
            .take(MAX_LISTED)
            .map(|c| Conflict {
                path: c.path.to_string(),
                copy: c.copy.as_ref().map(ToString::to_string),
                winner: self.devices.display_name(c.winner),
                loser: self.devices.display_name(c.loser),
                at: c.at,
            })
            .collect();
        TrackerStatus {
            schema: STATUS_SCHEMA,
            id: id.to_string(),
            listen,
            epoch: format!("{:016x}", self.epoch),
            seq: self.seq,
            records: records as u64,
            tombstones: tombstones as u64,
            devices,
            conflicts,
            events: self.devices.events().cloned().collect(),
            held: Vec::new(),
        }
    }
}
