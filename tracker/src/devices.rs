//! Who the devices are and where they stand: their names (persisted),
//! the last [`PeerReport`] of each online peer, the recent conflicts and
//! the conflict notices waiting for their sessions.
//!
//! Pure like `state`, which owns one `Devices` and tells it when peers
//! come, go or are forgotten. Bounds: one name (at most 64 bytes) per known
//! peer, one report per online peer, [`MAX_RECENT_CONFLICTS`] conflicts and
//! [`MAX_NOTICES_PER_PEER`] undelivered notices per online peer (older ones
//! are dropped: the copy itself is in the table either way).

use std::collections::{BTreeSet, HashMap, VecDeque};

use dartsync_shared::device::file_name_part;
use dartsync_shared::proto::ptp::{ConflictNotice, PeerReport};
use dartsync_shared::status::{LastEvent, MAX_EVENTS};
use dartsync_shared::{PeerId, RelPath};

/// Conflicts remembered for `status --tracker`.
pub(crate) const MAX_RECENT_CONFLICTS: usize = 100;
/// Undelivered conflict notices kept per online peer.
pub(crate) const MAX_NOTICES_PER_PEER: usize = 32;

/// One resolved conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConflictLog {
    /// The path the winner kept.
    pub path: RelPath,
    /// Where the loser was kept, if anywhere.
    pub copy: Option<RelPath>,
    /// The winner's author.
    pub winner: PeerId,
    /// The loser's author.
    pub loser: PeerId,
    /// Unix seconds.
    pub at: u64,
}

/// Names, reports, conflicts and notices.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    names: HashMap<PeerId, Box<str>>,
    dirty_names: BTreeSet<PeerId>,
    reports: HashMap<PeerId, PeerReport>,
    conflicts: VecDeque<ConflictLog>,
    notices: HashMap<PeerId, VecDeque<ConflictNotice>>,
    /// Recent events for people, newest first.
    events: VecDeque<LastEvent>,
}

impl Devices {
    /// Names loaded from the database.
    pub fn restore(&mut self, names: impl IntoIterator<Item = (PeerId, String)>) {
        self.names.extend(names.into_iter().map(|(id, n)| (id, n.into_boxed_str())));
    }

    /// `peer` registered calling itself `name` (checked by the protocol;
    /// empty keeps the name it had).
    pub fn set_name(&mut self, peer: PeerId, name: &str) {
        if name.is_empty() || self.names.get(&peer).is_some_and(|n| **n == *name) {
            return;
        }
        self.names.insert(peer, name.into());
        self.dirty_names.insert(peer);
    }

    /// `peer` is forgotten (no longer known).
    pub fn forget(&mut self, peer: PeerId) {
        if self.names.remove(&peer).is_some() {
            self.dirty_names.insert(peer);
        }
        self.offline(peer);
    }

    /// `peer` went offline: its report and undelivered notices go.
    pub fn offline(&mut self, peer: PeerId) {
        self.reports.remove(&peer);
        self.notices.remove(&peer);
    }

    /// `peer`'s name, if it ever said one.
    pub fn name(&self, peer: PeerId) -> Option<&str> {
        self.names.get(&peer).map(|n| &**n)
    }

    /// What people call `peer`: its name, else its short id.
    pub fn display_name(&self, peer: PeerId) -> String {
        self.name(peer).map_or_else(|| peer.fmt_short(), str::to_owned)
    }

    /// `name (shortid)` for log lines: the name people know, the id that
    /// tells two devices of one name apart.
    pub fn label(&self, peer: PeerId) -> String {
        match self.name(peer) {
            Some(name) => format!("{name} ({})", peer.fmt_short()),
            None => format!("peer {}", peer.fmt_short()),
        }
    }

    /// The device part of a conflict copy's name for `peer`: its name made
    /// safe for a file name, with the short id appended when another
    /// known device has the same one; the short id for a nameless device.
    pub fn file_tag(&self, peer: PeerId) -> String {
        let Some(name) = self.name(peer) else {
            return peer.fmt_short();
        };
        let part = file_name_part(name);
        let shared = self.names.iter().any(|(other, n)| *other != peer && file_name_part(n) == part);
        if shared { format!("{part}-{}", peer.fmt_short()) } else { part }
    }

    /// Names changed since the last call: `(peer, Some(name))` to write,
    /// `(peer, None)` to delete.
    pub fn take_dirty_names(&mut self) -> Vec<(PeerId, Option<String>)> {
        std::mem::take(&mut self.dirty_names)
            .into_iter()
            .map(|id| (id, self.names.get(&id).map(|n| n.to_string())))
            .collect()
    }

    /// `peer` (online) says where it stands.
    pub fn set_report(&mut self, peer: PeerId, report: PeerReport) {
        self.reports.insert(peer, report);
    }

    /// The last report of an online peer.
    pub fn report(&self, peer: PeerId) -> Option<&PeerReport> {
        self.reports.get(&peer)
    }

    /// Remembers a conflict and queues a notice for each of `tell` (the
    /// online holders of the losing version).
    pub fn record_conflict(&mut self, log: ConflictLog, tell: impl IntoIterator<Item = PeerId>) {
        let notice = ConflictNotice {
            path: log.path.clone(),
            copy: log.copy.clone(),
            winner: self.display_name(log.winner),
            loser: self.display_name(log.loser),
            at: log.at,
        };
        for peer in tell {
            let queue = self.notices.entry(peer).or_default();
            if queue.len() == MAX_NOTICES_PER_PEER {
                queue.pop_front();
            }
            queue.push_back(notice.clone());
        }
        if self.conflicts.len() == MAX_RECENT_CONFLICTS {
            self.conflicts.pop_back();
        }
        let what = match &log.copy {
            Some(copy) => format!("conflict on {}: {}'s version kept, the other is {copy}", log.path, notice.winner),
            None => format!("conflict on {}: {}'s edit won over a deletion", log.path, notice.winner),
        };
        self.note(log.at, what);
        self.conflicts.push_front(log);
    }

    /// Something people may want to know happened ("bob registered").
    pub fn note(&mut self, at: u64, what: String) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_back();
        }
        self.events.push_front(LastEvent { at, what });
    }

    /// Recent events, newest first.
    pub fn events(&self) -> impl Iterator<Item = &LastEvent> {
        self.events.iter()
    }

    /// The notices waiting for `peer`'s session.
    pub fn take_notices(&mut self, peer: PeerId) -> Vec<ConflictNotice> {
        self.notices.remove(&peer).map(Vec::from).unwrap_or_default()
    }

    /// Recent conflicts, newest first.
    pub fn recent_conflicts(&self) -> impl Iterator<Item = &ConflictLog> {
        self.conflicts.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    #[test]
    fn names_tags_and_labels() {
        let mut d = Devices::default();
        assert_eq!(d.file_tag(id(1)), id(1).fmt_short());
        d.set_name(id(1), "Bob's Laptop");
        assert_eq!(d.file_tag(id(1)), "bob-s-laptop");
        assert_eq!(d.label(id(1)), format!("Bob's Laptop ({})", id(1).fmt_short()));
        d.set_name(id(2), "bob-s laptop");
        assert_eq!(d.file_tag(id(1)), format!("bob-s-laptop-{}", id(1).fmt_short()));
        assert_eq!(d.take_dirty_names().len(), 2);
        d.set_name(id(2), "");
        assert_eq!(d.name(id(2)), Some("bob-s laptop"), "an empty name keeps the old one");
        d.forget(id(2));
        assert_eq!(d.take_dirty_names(), vec![(id(2), None)]);
        assert_eq!(d.file_tag(id(1)), "bob-s-laptop");
    }

    #[test]
    fn notices_and_conflicts_are_bounded() {
        let mut d = Devices::default();
        d.set_name(id(1), "alice");
        let log = |n: u64| ConflictLog {
            path: RelPath::new(&format!("f{n}")).unwrap(),
            copy: None,
            winner: id(1),
            loser: id(2),
            at: n,
        };
        for n in 0..(MAX_RECENT_CONFLICTS as u64 + 10) {
            d.record_conflict(log(n), [id(2)]);
        }
        assert_eq!(d.recent_conflicts().count(), MAX_RECENT_CONFLICTS);
        assert_eq!(d.recent_conflicts().next().unwrap().at, MAX_RECENT_CONFLICTS as u64 + 9);
        let notices = d.take_notices(id(2));
        assert_eq!(notices.len(), MAX_NOTICES_PER_PEER);
        assert_eq!(notices[0].winner, "alice");
        assert_eq!(notices[0].loser, id(2).fmt_short());
        assert!(d.take_notices(id(2)).is_empty());
        d.record_conflict(log(1), [id(2)]);
        d.offline(id(2));
        assert!(d.take_notices(id(2)).is_empty());
    }
}
