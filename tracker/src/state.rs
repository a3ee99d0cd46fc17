//! The tracker's state machine: global file table, peer table, `seq`,
//! `epoch`, conflict rules, deltas, expiry and tombstone GC.
//!
//! Pure: no channels, no sockets, no disk, no clock. Time comes in as
//! arguments (`now: Instant` for heartbeats, `now_unix` seconds for
//! tombstone ages), so every rule is unit-tested directly. The actor owns
//! the one `State`, persists what [`State::take_dirty`] hands it, and only
//! then lets sessions see the change.
//!
//! # Table
//! `path -> Entry { record, seq, record_seq, author, deleted_at, holders }`.
//! `seq` is the tracker-wide change number of the entry's last change of any
//! kind (record or holders); every change takes the next global `seq`, and
//! `by_seq` indexes entries by it, so a delta "everything after S" is a
//! range scan and no per-peer copy of the table exists. `record_seq` is the
//! seq of the last *record* change: the only seq that is persisted.
//! `holders` are the online peers that hold exactly `record` (soft state,
//! rebuilt from `Announce` and `Have` after a restart).
//!
//! # Rules for `Announce` of record R by peer A, global record G
//! - no G: accept R; holders = {A}.
//! - R's vector equals G's and the content is the same: A joins the holders.
//! - R dominates G: accept R; holders = {A}, plus G's holders when the
//!   content is the same bytes.
//! - G dominates R: stale or replayed, ignored.
//! - concurrent (or equal vectors with different content): the winner is
//!   the live version when the other is a deletion, else the later mtime,
//!   ties broken by the larger author `PeerId` (the author of a record is
//!   the peer whose announcement made it global). The winner's vector
//!   becomes `merge(G, R)` bumped by the **tracker's own** `ShortId`: a
//!   counter no peer writes, so the result dominates both and a further
//!   edit by either author, made before it saw the merge, is still
//!   concurrent with it (not silently stale). The loser, unless it is a
//!   deletion, is kept as a conflict copy (see [`crate::conflict`]) with its
//!   own content, vector, author and holders. Two concurrent versions with
//!   the same content (two deletions, two identical files) just merge: no
//!   copy, holders of both.
//! - concurrent, but the merged vector's largest counter is already
//!   [`MAX_COUNTER`](dartsync_shared::limits::MAX_COUNTER), so no vector
//!   can dominate both: the announcement is ignored (`Unresolvable`) and
//!   the table is unchanged. Only a forged history gets there: counters
//!   grow by one per edit.
//!
//! # Peers
//! A registered peer has a heartbeat deadline of `3 x interval` after its
//! last message; [`State::expire`] removes peers past it. Removing a peer
//! (expiry, `Goodbye`, disconnect, or a new `Register` of the same id)
//! removes it from every holders set, which is a change of those entries.
//! `sent_seq` is how far deltas have been handed to the peer's session.
//!
//! # Deltas
//! [`State::next_page`] hands a session the entries with `seq` in
//! `(sent_seq, seq]`, at most [`MAX_RECORDS_PER_MESSAGE`] and about half a
//! frame of bytes per page; the last page's `to_seq` is the current seq (so
//! a page may be empty and only move the peer forward). A peer registering
//! with another epoch, or a `seen_seq` beyond ours, starts from 0 and every
//! page until it is caught up is marked `full`.
//!
//! # Tombstone GC
//! Tracking "every peer that ever held the path" per path would cost a set
//! per entry, so the tracker uses a superset: every *known* peer (any peer
//! that registered in the last `tombstone_max_age`, persisted with the
//! `seen_seq` it reported at its last `Register` in this epoch). A tombstone
//! is dropped when each known peer has either reported a `seen_seq` at or
//! after the tombstone's `record_seq` or holds the tombstone (announced the
//! deletion or sent `Have` for it), or when it is older than
//! `tombstone_max_age` by the tracker's wall clock.
//!
//! # Not here
//! Persistence format (`store`), message I/O (`session`), scheduling (`actor`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dartsync_shared::limits::{MAX_FRAME_LEN, MAX_HOLDERS_PER_ENTRY, MAX_RECORDS_PER_MESSAGE};
use dartsync_shared::proto::ptp::{Delta, DeltaEntry, Holder};
use dartsync_shared::version::CounterExhausted;
use dartsync_shared::{Causality, FileRecord, PeerId, RelPath, ShortId, VersionVector};

use crate::compact::CompactRecord;
use crate::conflict::conflict_path;

/// How many alternative names are tried for one conflict copy.
const MAX_CONFLICT_NAME_ATTEMPTS: u32 = 16;

/// Byte budget of one delta page: half a frame, against an upper-bound
/// estimate of each entry's encoded size.
const DELTA_BYTE_BUDGET: usize = MAX_FRAME_LEN / 2;

/// Timing rules of the state.
#[derive(Debug, Clone)]
pub(crate) struct StateConfig {
    /// Keep-alive interval; a peer silent for 3 x interval expires.
    pub interval: Duration,
    /// Tombstones (and known peers) older than this are dropped.
    pub tombstone_max_age: Duration,
}

/// One entry of the global table (its path is the key).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    record: CompactRecord,
    /// Seq of the last change of any kind.
    seq: u64,
    /// Seq of the last record change (persisted).
    record_seq: u64,
    /// The peer whose announcement made `record` global.
    author: PeerId,
    /// Unix seconds when a tombstone was accepted; `None` for live records.
    deleted_at: Option<u64>,
    /// Online peers holding exactly `record`, sorted, no duplicates.
    holders: Vec<PeerId>,
}

/// An online peer.
#[derive(Debug, Clone)]
struct Peer {
    /// Where its piece server is reached (connecting IP + listen port).
    addr: SocketAddr,
    /// The session currently speaking for it; older sessions are ignored.
    session: u64,
    /// Heartbeat deadline; also a key of `State::deadlines`.
    deadline: Instant,
    /// Entries up to this seq were handed to the session.
    sent_seq: u64,
    /// The peer gets a whole-table resend (`full: true`) until caught up.
    full_pending: bool,
}

/// What the tracker remembers of a peer across restarts, for tombstone GC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KnownPeer {
    /// The `seen_seq` it reported at its last `Register` (0 if that was
    /// for another epoch).
    pub acked_seq: u64,
    /// Unix seconds when it last registered or left.
    pub last_seen_unix: u64,
}

/// The persisted part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PersistedEntry {
    /// The global record.
    pub record: FileRecord,
    /// Seq of its last record change.
    pub seq: u64,
    /// The peer whose announcement made it global.
    pub author: PeerId,
    /// Unix seconds when a tombstone was accepted.
    pub deleted_at: Option<u64>,
}

/// Changes to write before anyone sees them.
#[derive(Debug, Default)]
pub(crate) struct PendingWrite {
    /// Entries to put.
    pub put_entries: Vec<PersistedEntry>,
    /// Entries to delete (tombstones collected).
    pub delete_entries: Vec<RelPath>,
    /// Known peers to put.
    pub put_peers: Vec<(PeerId, KnownPeer)>,
    /// Known peers to delete.
    pub delete_peers: Vec<PeerId>,
}

impl PendingWrite {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_entries.is_empty()
            && self.delete_entries.is_empty()
            && self.put_peers.is_empty()
            && self.delete_peers.is_empty()
    }
}

/// What one announced record did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The record became the global one.
    Accepted { path: RelPath, seq: u64 },
    /// The announcer joined the holders of the equal global record.
    Holder { path: RelPath, seq: u64 },
    /// The announcer already held the equal global record.
    Unchanged { path: RelPath },
    /// The global record dominates: ignored.
    Stale { path: RelPath },
    /// Concurrent versions with the same content: vectors merged.
    Merged { path: RelPath, seq: u64 },
    /// Concurrent versions: `winner` authored the version that stays at
    /// `path`; the loser was kept at `copy` (`None` when the loser was a
    /// deletion, or no free name was found).
    Conflict { path: RelPath, seq: u64, winner: PeerId, copy: Option<RelPath>, loser_deleted: bool },
    /// Concurrent versions whose merged vector cannot be bumped (a counter
    /// at the limit): ignored, nothing changed.
    Unresolvable { path: RelPath, error: CounterExhausted },
}

/// A peer's `Register`, as the state needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The peer (proven by the handshake).
    pub peer: PeerId,
    /// Its piece server: the connecting IP plus its listen port.
    pub addr: SocketAddr,
    /// The session speaking for it from now on.
    pub session: u64,
    /// The last seq it applied.
    pub seen_seq: u64,
    /// The epoch that seq belongs to.
    pub epoch: u64,
}

/// The answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The session this registration replaced, if the peer was online.
    pub replaced: Option<u64>,
    /// True when the peer gets the whole table (epoch mismatch).
    pub full: bool,
}

/// The next piece of a peer's delta stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// The delta to send; `None` when the peer has seen everything.
    pub delta: Option<Delta>,
    /// More entries are waiting: ask again at once.
    pub more: bool,
}

/// The tracker's whole in-memory state.
#[derive(Debug)]
pub(crate) struct State {
    config: StateConfig,
    /// Bumps the vectors of conflict winners (see the module header).
    tracker_short: ShortId,
    epoch: u64,
    seq: u64,
    /// The table. Paths are shared with `by_seq`, stored once; entries are
    /// boxed so B-tree nodes (about half full) hold pointers, not 200 bytes.
    entries: BTreeMap<Arc<RelPath>, Box<Entry>>,
    /// `seq -> path` of every entry, by its current `seq`.
    by_seq: BTreeMap<u64, Arc<RelPath>>,
    peers: HashMap<PeerId, Peer>,
    /// Heartbeat deadlines, soonest first.
    deadlines: BTreeSet<(Instant, PeerId)>,
    known: BTreeMap<PeerId, KnownPeer>,
    dirty_entries: BTreeSet<Arc<RelPath>>,
    dirty_peers: BTreeSet<PeerId>,
}

impl State {
    /// An empty table (a fresh database).
    pub fn new(config: StateConfig, tracker_short: ShortId, epoch: u64) -> Self {
        State {
            config,
            tracker_short,
            epoch,
            seq: 0,
            entries: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            peers: HashMap::new(),
            deadlines: BTreeSet::new(),
            known: BTreeMap::new(),
            dirty_entries: BTreeSet::new(),
            dirty_peers: BTreeSet::new(),
        }
    }

    /// The state as persisted: `seq` resumes at `seq_floor` (at least every
    /// seq ever handed out), holders are empty, no peer is online.
    pub fn restore(
        config: StateConfig,
        tracker_short: ShortId,
        epoch: u64,
        seq_floor: u64,
        entries: Vec<PersistedEntry>,
        known: Vec<(PeerId, KnownPeer)>,
    ) -> Self {
        let mut state = State::new(config, tracker_short, epoch);
        state.seq = entries.iter().map(|e| e.seq).max().unwrap_or(0).max(seq_floor);
        let mut entries = entries;
        entries.sort_by_key(|e| e.seq);
        for PersistedEntry { record, seq, author, deleted_at } in entries {
            let path = Arc::new(record.path.clone());
            let mut seq = seq;
            if state.by_seq.contains_key(&seq) {
                // Two entries cannot share a seq; repair a damaged table by
                // giving the second one a new seq (written back).
                state.seq += 1;
                seq = state.seq;
                state.dirty_entries.insert(path.clone());
            }
            state.by_seq.insert(seq, path.clone());
            let record = CompactRecord::new(record);
            let entry = Box::new(Entry { record, seq, record_seq: seq, author, deleted_at, holders: Vec::new() });
            state.entries.insert(path, entry);
        }
        state.known = known.into_iter().collect();
        state
    }

    /// The tracker's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current global seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of entries (tombstones included) and of tombstones.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.entries.values().filter(|e| e.record.deleted()).count())
    }

    /// True when `session` is the current session of `peer`.
    pub fn is_current(&self, peer: PeerId, session: u64) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.session == session)
    }

    /// Registers a peer (replacing any older session of it).
    pub fn register(&mut self, arrival: Arrival, now: Instant, now_unix: u64) -> Registration {
        let Arrival { peer, addr, session, seen_seq, epoch } = arrival;
        let replaced = self.peers.get(&peer).map(|p| p.session);
        if replaced.is_some() {
            // A new session rebuilds the peer's holdings from its summary.
            self.remove_peer(peer, now_unix);
        }
        let incremental = epoch == self.epoch && seen_seq <= self.seq;
        // The latest report counts, even if lower than an earlier one: a
        // peer restored from a backup has not seen what it once had.
        let acked = if incremental { seen_seq } else { 0 };
        self.known.insert(peer, KnownPeer { acked_seq: acked, last_seen_unix: now_unix });
        self.dirty_peers.insert(peer);
        let deadline = now + self.expiry_after();
        self.deadlines.insert((deadline, peer));
        self.peers.insert(
            peer,
            Peer {
                addr,
                session,
                deadline,
                sent_seq: if incremental { seen_seq } else { 0 },
                full_pending: !incremental,
            },
        );
        Registration { replaced, full: !incremental }
    }

    /// How long a silent peer stays in the table.
    pub fn expiry_after(&self) -> Duration {
        self.config.interval.saturating_mul(3)
    }

    /// A message from `peer` arrived: postpone its expiry.
    pub fn touch(&mut self, peer: PeerId, now: Instant) {
        let after = self.expiry_after();
        if let Some(p) = self.peers.get_mut(&peer) {
            self.deadlines.remove(&(p.deadline, peer));
            p.deadline = now + after;
            self.deadlines.insert((p.deadline, peer));
        }
    }

    /// The soonest heartbeat deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes every peer whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant, now_unix: u64) -> Vec<PeerId> {
        let mut expired = Vec::new();
        while let Some(&(at, peer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.remove_peer(peer, now_unix);
            expired.push(peer);
        }
        expired
    }

    /// Removes `peer` from the peer table and from every holders set.
    /// Returns false if it was not online.
    pub fn remove_peer(&mut self, peer: PeerId, now_unix: u64) -> bool {
        let Some(p) = self.peers.remove(&peer) else {
            return false;
        };
        self.deadlines.remove(&(p.deadline, peer));
        if let Some(k) = self.known.get_mut(&peer) {
            k.last_seen_unix = now_unix;
            self.dirty_peers.insert(peer);
        }
        let mut changed = Vec::new();
        for entry in self.entries.values_mut() {
            if let Ok(i) = entry.holders.binary_search(&peer) {
                entry.holders.remove(i);
                changed.push(entry.seq);
            }
        }
        for old in changed {
            self.bump_entry(old);
        }
        true
    }

    /// Gives the entry whose seq is `old` the next seq (a holders change).
    fn bump_entry(&mut self, old: u64) {
        if let Some(path) = self.by_seq.remove(&old) {
            self.seq += 1;
            if let Some(entry) = self.entries.get_mut(&path) {
                entry.seq = self.seq;
            }
            self.by_seq.insert(self.seq, path);
        }
    }

    /// Applies an `Announce` batch from `peer`.
    pub fn announce(&mut self, peer: PeerId, records: Vec<FileRecord>, now_unix: u64) -> Vec<Outcome> {
        records.into_iter().map(|r| self.announce_one(peer, r, now_unix)).collect()
    }

    fn announce_one(&mut self, peer: PeerId, record: FileRecord, now_unix: u64) -> Outcome {
        let path = record.path.clone();
        let Some(global) = self.entries.get(&path) else {
            let seq = self.put(record, peer, vec![peer], now_unix);
            return Outcome::Accepted { path, seq };
        };
        match global.record.compare_from(&record.version) {
            Causality::Equal if global.record.same_content(&record) => {
                if self.add_holder(&path, peer) {
                    Outcome::Holder { path, seq: self.seq }
                } else {
                    Outcome::Unchanged { path }
                }
            }
            Causality::Dominates => {
                let mut holders = if global.record.same_content(&record) { global.holders.clone() } else { Vec::new() };
                insert_sorted(&mut holders, peer);
                let seq = self.put(record, peer, holders, now_unix);
                Outcome::Accepted { path, seq }
            }
            Causality::DominatedBy => Outcome::Stale { path },
            Causality::Equal | Causality::Concurrent => self.resolve(peer, record, now_unix),
        }
    }

    /// Concurrent versions at one path (see the module header).
    fn resolve(&mut self, announcer: PeerId, announced: FileRecord, now_unix: u64) -> Outcome {
        let path = announced.path.clone();
        let entry = self.entries.get(&path).expect("resolve is called for a path in the table");
        let global = entry.record.to_record(&path);
        let (global_author, global_holders) = (entry.author, entry.holders.clone());
        let merged: VersionVector = match global.version.merge(&announced.version).bumped(self.tracker_short) {
            Ok(merged) => merged,
            Err(error) => return Outcome::Unresolvable { path, error },
        };
        let announced_wins = match (announced.deleted, global.deleted) {
            (false, true) => true,
            (true, false) => false,
            _ => (announced.mtime_ns, announcer) > (global.mtime_ns, global_author),
        };
        if announced.same_content(&global) {
            let (mut winner, author) = if announced_wins { (announced, announcer) } else { (global, global_author) };
            winner.version = merged;
            let mut holders = global_holders;
            insert_sorted(&mut holders, announcer);
            let seq = self.put(winner, author, holders, now_unix);
            return Outcome::Merged { path, seq };
        }
        let (mut winner, winner_author, winner_holders, loser, loser_author, loser_holders) = if announced_wins {
            (announced, announcer, vec![announcer], global, global_author, global_holders)
        } else {
            (global, global_author, global_holders, announced, announcer, vec![announcer])
        };
        winner.version = merged;
        let seq = self.put(winner, winner_author, winner_holders, now_unix);
        let loser_deleted = loser.deleted;
        let copy =
            if loser_deleted { None } else { self.keep_conflict_copy(loser, loser_author, loser_holders, now_unix) };
        Outcome::Conflict { path, seq, winner: winner_author, copy, loser_deleted }
    }

    /// Keeps a losing version under a conflict name. Returns the name, or
    /// `None` when every candidate name holds something else.
    fn keep_conflict_copy(
        &mut self,
        mut loser: FileRecord,
        author: PeerId,
        holders: Vec<PeerId>,
        now_unix: u64,
    ) -> Option<RelPath> {
        let original = loser.path.clone();
        for attempt in 1..=MAX_CONFLICT_NAME_ATTEMPTS {
            let path = conflict_path(&original, loser.mtime_ns, author, attempt);
            match self.entries.get(&path) {
                None => {
                    loser.path = path.clone();
                    self.put(loser, author, holders, now_unix);
                    return Some(path);
                }
                Some(existing) => match existing.record.compare_from(&loser.version) {
                    // The same copy was kept before (a replayed conflict).
                    Causality::Equal if existing.record.same_content(&loser) => {
                        for h in holders {
                            self.add_holder(&path, h);
                        }
                        return Some(path);
                    }
                    // Kept before, then edited or deleted by a user.
                    Causality::DominatedBy => return Some(path),
                    _ => {}
                },
            }
        }
        None
    }

    /// Applies `Have`: `peer` now holds `version` of `path`.
    pub fn have(&mut self, peer: PeerId, path: &RelPath, version: &VersionVector) -> bool {
        match self.entries.get(path) {
            Some(e) if e.record.version_is(version) => self.add_holder(path, peer),
            _ => false,
        }
    }

    /// Makes `record` the global record of its path with a new seq.
    fn put(&mut self, record: FileRecord, author: PeerId, holders: Vec<PeerId>, now_unix: u64) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let path = match self.entries.get_key_value(&record.path) {
            Some((path, old)) => {
                let path = path.clone();
                self.by_seq.remove(&old.seq);
                path
            }
            None => Arc::new(record.path.clone()),
        };
        let deleted_at = record.deleted.then_some(now_unix);
        let record = CompactRecord::new(record);
        let entry = Box::new(Entry { record, seq, record_seq: seq, author, deleted_at, holders });
        self.entries.insert(path.clone(), entry);
        self.by_seq.insert(seq, path.clone());
        self.dirty_entries.insert(path);
        seq
    }

    /// Adds a holder; a change (new seq) only if it was not one already.
    fn add_holder(&mut self, path: &RelPath, peer: PeerId) -> bool {
        if !self.peers.contains_key(&peer) {
            return false;
        }
        let Some(entry) = self.entries.get_mut(path) else {
            return false;
        };
        if !insert_sorted(&mut entry.holders, peer) {
            return false;
        }
        let old = entry.seq;
        self.bump_entry(old);
        true
    }

    /// The next delta page for `peer`'s session, advancing its `sent_seq`;
    /// `None` when `session` is not the peer's current session.
    pub fn next_page(&mut self, peer: PeerId, session: u64) -> Option<Page> {
        let p = self.peers.get_mut(&peer).filter(|p| p.session == session)?;
        let from = p.sent_seq;
        if from >= self.seq {
            // Nothing was ever handed out (a new tracker): the `Welcome` was the whole table.
            p.full_pending = false;
            return Some(Page { delta: None, more: false });
        }
        let full = p.full_pending;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut last = from;
        let mut more = false;
        for (&seq, path) in self.by_seq.range(from + 1..) {
            let entry = &self.entries[path];
            let size = estimate_size(path, entry);
            if entries.len() == MAX_RECORDS_PER_MESSAGE || (!entries.is_empty() && bytes + size > DELTA_BYTE_BUDGET) {
                more = true;
                break;
            }
            bytes += size;
            entries.push(self.delta_entry(path, entry));
            last = seq;
        }
        let to_seq = if more { last } else { self.seq };
        let p = self.peers.get_mut(&peer).expect("peer looked up above");
        p.sent_seq = to_seq;
        if !more {
            p.full_pending = false;
        }
        Some(Page { delta: Some(Delta { epoch: self.epoch, from_seq: from, to_seq, full, entries }), more })
    }

    fn delta_entry(&self, path: &RelPath, entry: &Entry) -> DeltaEntry {
        let holders = entry
            .holders
            .iter()
            .filter_map(|id| self.peers.get(id).map(|p| Holder { peer_id: *id, addr: p.addr }))
            .take(MAX_HOLDERS_PER_ENTRY)
            .collect();
        DeltaEntry { record: entry.record.to_record(path), seq: entry.seq, holders }
    }

    /// Drops tombstones every known peer has seen, or older than the maximum
    /// age, and forgets peers not seen for that long. Returns the paths dropped.
    pub fn gc_tombstones(&mut self, now_unix: u64) -> Vec<RelPath> {
        let max_age = self.config.tombstone_max_age.as_secs();
        let stale: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(id, k)| !self.peers.contains_key(id) && now_unix.saturating_sub(k.last_seen_unix) > max_age)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.known.remove(&id);
            self.dirty_peers.insert(id);
        }
        let collectable: Vec<Arc<RelPath>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.record.deleted())
            .filter(|(_, e)| {
                let old = e.deleted_at.is_some_and(|at| now_unix.saturating_sub(at) >= max_age);
                old || self
                    .known
                    .iter()
                    .all(|(id, k)| k.acked_seq >= e.record_seq || e.holders.binary_search(id).is_ok())
            })
            .map(|(path, _)| path.clone())
            .collect();
        for path in &collectable {
            if let Some(e) = self.entries.remove(path) {
                self.by_seq.remove(&e.seq);
                self.dirty_entries.insert(path.clone());
            }
        }
        collectable.iter().map(|p| RelPath::clone(p)).collect()
    }

    /// Everything changed since the last call, to be persisted.
    pub fn take_dirty(&mut self) -> PendingWrite {
        let mut write = PendingWrite::default();
        for path in std::mem::take(&mut self.dirty_entries) {
            match self.entries.get(&path) {
                Some(e) => write.put_entries.push(persisted(&path, e)),
                None => write.delete_entries.push(RelPath::clone(&path)),
            }
        }
        for id in std::mem::take(&mut self.dirty_peers) {
            match self.known.get(&id) {
                Some(k) => write.put_peers.push((id, *k)),
                None => write.delete_peers.push(id),
            }
        }
        write
    }

    /// The persisted view of the whole state, sorted by path and peer.
    #[cfg(test)]
    pub fn persisted_view(&self) -> (u64, Vec<PersistedEntry>, Vec<(PeerId, KnownPeer)>) {
        (
            self.epoch,
            self.entries.iter().map(|(path, e)| persisted(path, e)).collect(),
            self.known.iter().map(|(id, k)| (*id, *k)).collect(),
        )
    }

    /// The record, seq and holders of `path` (tests).
    #[cfg(test)]
    pub fn entry(&self, path: &str) -> Option<(FileRecord, u64, Vec<PeerId>)> {
        let path = RelPath::new(path).ok()?;
        self.entries.get(&path).map(|e| (e.record.to_record(&path), e.seq, e.holders.clone()))
    }

    /// Checks the internal indexes agree (tests).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        assert_eq!(self.by_seq.len(), self.entries.len());
        for (seq, path) in &self.by_seq {
            assert_eq!(self.entries[path].seq, *seq, "{path}");
            assert!(*seq <= self.seq);
        }
        assert_eq!(self.deadlines.len(), self.peers.len());
        for e in self.entries.values() {
            assert!(e.holders.windows(2).all(|w| w[0] < w[1]));
            assert!(e.holders.iter().all(|h| self.peers.contains_key(h)), "offline holder");
            assert!(e.record_seq <= e.seq);
        }
    }
}

fn persisted(path: &RelPath, e: &Entry) -> PersistedEntry {
    PersistedEntry { record: e.record.to_record(path), seq: e.record_seq, author: e.author, deleted_at: e.deleted_at }
}

/// Inserts into a sorted vector; false if already present.
fn insert_sorted(v: &mut Vec<PeerId>, id: PeerId) -> bool {
    match v.binary_search(&id) {
        Ok(_) => false,
        Err(i) => {
            v.insert(i, id);
            true
        }
    }
}

/// An upper bound of an entry's encoded size in a delta (bincode varints
/// take at most 9 bytes, a holder at most 16 + 1 + 16 + 3 bytes).
fn estimate_size(path: &RelPath, e: &Entry) -> usize {
    let target = e.record.target_len() + 9;
    let holders = e.holders.len().min(MAX_HOLDERS_PER_ENTRY) * 48;
    128 + path.as_str().len() + target + e.record.version_len() * 18 + holders
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::ContentHash;
    use dartsync_shared::test_util::RecordBuilder;

    const T0: u64 = 1_700_000_000;
    const TRACKER: ShortId = ShortId(0xDEAD_BEEF);

    fn config() -> StateConfig {
        StateConfig { interval: Duration::from_secs(10), tombstone_max_age: Duration::from_secs(30 * 86_400) }
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|(p, c)| (id(*p).short(), *c)))
    }

    /// The shape every rule test uses; built by the shared test builder.
    fn file(path: &str, body: &str, version: VersionVector, mtime_s: i64) -> FileRecord {
        RecordBuilder::file(path).body(body).version(version).mtime_s(mtime_s).build()
    }

    fn tombstone(path: &str, version: VersionVector, mtime_s: i64) -> FileRecord {
        RecordBuilder::file(path).version(version).mtime_s(mtime_s).tombstone().build()
    }

    struct Fixture {
        state: State,
        now: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture { state: State::new(config(), TRACKER, 77), now: Instant::now() }
        }

        fn join(&mut self, n: u8) {
            let addr = SocketAddr::from(([127, 0, 0, n], 4000 + u16::from(n)));
            self.state.register(
                Arrival { peer: id(n), addr, session: u64::from(n), seen_seq: 0, epoch: 77 },
                self.now,
                T0,
            );
        }

        fn announce(&mut self, n: u8, record: FileRecord) -> Outcome {
            let mut out = self.state.announce(id(n), vec![record], T0);
            self.state.check_invariants();
            assert_eq!(out.len(), 1);
            out.remove(0)
        }

        fn global(&self, path: &str) -> (FileRecord, u64, Vec<PeerId>) {
            self.state.entry(path).unwrap_or_else(|| panic!("{path} not in the table"))
        }
    }

    #[test]
    fn dominance_table() {
        #[derive(Debug, PartialEq)]
        enum Want {
            Accepted,
            Holder,
            Stale,
            Conflict,
        }
        // The global record, announced by peer 1; then peer 2 announces `announced`.
        let global = || file("f", "one", vv(&[(1, 2)]), 100);
        let cases = [
            ("equal version, same content", file("f", "one", vv(&[(1, 2)]), 100), Want::Holder, vec![id(1), id(2)]),
            ("dominating edit", file("f", "two", vv(&[(1, 2), (2, 3)]), 50), Want::Accepted, vec![id(2)]),
            ("dominating, same bytes", file("f", "one", vv(&[(1, 2), (2, 3)]), 50), Want::Accepted, vec![id(1), id(2)]),
            ("dominated: stale replay", file("f", "old", vv(&[(1, 1)]), 900), Want::Stale, vec![id(1)]),
            ("concurrent, later mtime wins", file("f", "two", vv(&[(2, 1)]), 200), Want::Conflict, vec![id(2)]),
            ("concurrent, earlier mtime loses", file("f", "two", vv(&[(2, 1)]), 50), Want::Conflict, vec![id(1)]),
            ("equal version, other bytes", file("f", "two", vv(&[(1, 2)]), 50), Want::Conflict, vec![id(1)]),
        ];
        for (name, announced, want, holders) in cases {
            let mut fx = Fixture::new();
            fx.join(1);
            fx.join(2);
            fx.announce(1, global());
            let before = fx.global("f");
            let seq = fx.state.seq();
            fx.state.take_dirty();
            let out = fx.announce(2, announced.clone());
            let got = match &out {
                Outcome::Accepted { .. } => Want::Accepted,
                Outcome::Holder { .. } => Want::Holder,
                Outcome::Stale { .. } => Want::Stale,
                Outcome::Conflict { .. } => Want::Conflict,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(got, want, "{name}");
            let (after, after_seq, after_holders) = fx.global("f");
            assert_eq!(after_holders, holders, "{name}");
            let dirty = fx.state.take_dirty();
            match want {
                Want::Stale => {
                    assert_eq!(fx.global("f"), before, "{name}");
                    assert_eq!(fx.state.seq(), seq, "{name}");
                    assert!(dirty.is_empty(), "{name}");
                }
                Want::Holder => {
                    assert_eq!(after, before.0, "{name}");
                    assert!(after_seq > seq && dirty.is_empty(), "{name}: holders are not persisted");
                }
                Want::Accepted => {
                    assert_eq!(after, announced, "{name}");
                    assert_eq!(dirty.put_entries.len(), 1, "{name}");
                }
                Want::Conflict => {
                    assert!(after.version.dominates(&announced.version), "{name}");
                    assert!(after.version.dominates(&before.0.version), "{name}");
                    assert_eq!(fx.state.counts().0, 2, "{name}: a conflict copy exists");
                    assert_eq!(dirty.put_entries.len(), 2, "{name}");
                }
            }
        }
    }

    #[test]
    fn accept_new_and_dominating_records() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        assert!(matches!(fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1)), Outcome::Accepted { seq: 1, .. }));
        // Re-announcing the same version is not a change.
        assert!(matches!(fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1)), Outcome::Unchanged { .. }));
        assert_eq!(fx.state.seq(), 1);
        // Peer 2 downloaded it: holder.
        assert!(fx.state.have(id(2), &RelPath::new("a").unwrap(), &vv(&[(1, 1)])));
        assert_eq!(fx.global("a").2, vec![id(1), id(2)]);
        assert_eq!(fx.global("a").1, 2, "a holder change takes a new seq");
        // Have for another version does nothing.
        assert!(!fx.state.have(id(2), &RelPath::new("a").unwrap(), &vv(&[(1, 5)])));
        // A metadata-only change (same bytes) keeps the holders of those bytes.
        let mut chmod = file("a", "x", vv(&[(1, 1), (2, 2)]), 1);
        chmod.mode = 0o600;
        assert!(matches!(fx.announce(2, chmod.clone()), Outcome::Accepted { seq: 3, .. }));
        assert_eq!(fx.global("a"), (chmod, 3, vec![id(1), id(2)]));
        // A real edit: only the editor holds it.
        let edit = file("a", "y", vv(&[(1, 3), (2, 2)]), 2);
        fx.announce(1, edit.clone());
        assert_eq!(fx.global("a"), (edit, 4, vec![id(1)]));
    }

    #[test]
    fn concurrent_edits_keep_both_versions() {
        let mut fx = Fixture::new();
        for n in 1..=3 {
            fx.join(n);
        }
        let base = vv(&[(1, 1)]);
        fx.announce(1, file("docs/r.txt", "base", base.clone(), 100));
        fx.state.have(id(3), &RelPath::new("docs/r.txt").unwrap(), &base);
        // Peers 1 and 2 edit concurrently; peer 2's mtime is later.
        let ours = file("docs/r.txt", "edit by 1", base.bumped(id(1).short()).unwrap(), 200);
        fx.announce(1, ours.clone());
        fx.state.have(id(3), &RelPath::new("docs/r.txt").unwrap(), &ours.version);
        let theirs = file("docs/r.txt", "edit by 2", base.bumped(id(2).short()).unwrap(), 300);
        let out = fx.announce(2, theirs.clone());
        let copy_name = format!("docs/r.sync-conflict-19700101-000320-{}.txt", id(1).fmt_short());
        match &out {
            Outcome::Conflict { winner, copy, loser_deleted: false, .. } => {
                assert_eq!(*winner, id(2));
                assert_eq!(copy.as_ref().map(RelPath::as_str), Some(copy_name.as_str()));
            }
            other => panic!("{other:?}"),
        }
        // The winner keeps the path with a vector dominating both.
        let (won, _, holders) = fx.global("docs/r.txt");
        assert_eq!(won.content, theirs.content);
        assert!(won.version.dominates(&ours.version) && won.version.dominates(&theirs.version));
        assert_eq!(won.version, ours.version.merge(&theirs.version).bumped(TRACKER).unwrap());
        assert_eq!(holders, vec![id(2)]);
        // The loser is kept with its content, vector and holders (peers 1 and 3).
        let (lost, _, holders) = fx.global(&copy_name);
        assert_eq!((lost.content, lost.version.clone(), lost.mtime_ns), (ours.content, ours.version, ours.mtime_ns));
        assert_eq!(holders, vec![id(1), id(3)]);
        // Replaying either original version is now stale: no second copy.
        let seq = fx.state.seq();
        assert!(matches!(
            fx.announce(1, file("docs/r.txt", "edit by 1", base.bumped(id(1).short()).unwrap(), 200)),
            Outcome::Stale { .. }
        ));
        assert!(matches!(fx.announce(2, theirs), Outcome::Stale { .. }));
        assert_eq!(fx.state.seq(), seq);
        assert_eq!(fx.state.counts(), (2, 0));
    }

    #[test]
    fn mtime_ties_go_to_the_larger_peer_id() {
        for (first, second, winner) in [(1u8, 2u8, 2u8), (2, 1, 2)] {
            let mut fx = Fixture::new();
            fx.join(first);
            fx.join(second);
            fx.announce(first, file("f", "a", vv(&[(first, 1)]), 100));
            let out = fx.announce(second, file("f", "b", vv(&[(second, 1)]), 100));
            let Outcome::Conflict { winner: w, copy: Some(copy), .. } = out else { panic!("{out:?}") };
            assert_eq!(w, id(winner));
            let loser = if winner == first { second } else { first };
            assert!(copy.as_str().contains(&id(loser).fmt_short()), "{copy:?}");
            assert_eq!(fx.global("f").0.content, ContentHash::of(if winner == first { b"a" } else { b"b" }));
        }
    }

    #[test]
    fn an_edit_beats_a_concurrent_deletion() {
        // Deletion first, concurrent edit announced later (earlier mtime): the edit wins.
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("f", "v1", vv(&[(1, 1)]), 100));
        fx.announce(1, tombstone("f", vv(&[(1, 2)]), 900));
        let edit = file("f", "v2", vv(&[(1, 1), (2, 2)]), 200);
        let out = fx.announce(2, edit.clone());
        assert!(matches!(out, Outcome::Conflict { copy: None, loser_deleted: true, .. }), "{out:?}");
        let (g, _, holders) = fx.global("f");
        assert!(!g.deleted);
        assert_eq!(g.content, edit.content);
        assert_eq!(holders, vec![id(2)]);
        assert_eq!(fx.state.counts(), (1, 0), "no conflict copy of a deletion");

        // Edit first, concurrent deletion later (later mtime): the edit stays, vector merged.
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("f", "v1", vv(&[(1, 1)]), 100));
        fx.announce(2, file("f", "v2", vv(&[(1, 1), (2, 2)]), 200));
        let del = tombstone("f", vv(&[(1, 2)]), 900);
        let out = fx.announce(1, del.clone());
        assert!(matches!(out, Outcome::Conflict { copy: None, loser_deleted: true, winner, .. } if winner == id(2)));
        let (g, _, holders) = fx.global("f");
        assert!(!g.deleted);
        assert!(g.version.dominates(&del.version));
        assert_eq!(holders, vec![id(2)]);
        // The deletion, replayed, is stale now.
        assert!(matches!(fx.announce(1, del), Outcome::Stale { .. }));
    }

    #[test]
    fn concurrent_same_content_merges_without_a_copy() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, tombstone("f", vv(&[(1, 1)]), 1));
        let out = fx.announce(2, tombstone("f", vv(&[(2, 1)]), 2));
        assert!(matches!(out, Outcome::Merged { .. }), "{out:?}");
        let (g, _, holders) = fx.global("f");
        assert!(g.deleted);
        assert_eq!(holders, vec![id(1), id(2)]);
        assert_eq!(fx.state.counts(), (1, 1));
        // Equal vectors but different bytes (a broken peer): treated as a conflict, nothing lost.
        fx.announce(1, file("g", "a", vv(&[(1, 1)]), 1));
        let out = fx.announce(2, file("g", "b", vv(&[(1, 1)]), 2));
        assert!(matches!(out, Outcome::Conflict { copy: Some(_), .. }), "{out:?}");
        assert_eq!(fx.state.counts(), (3, 1));
    }

    #[test]
    fn a_conflict_at_the_counter_limit_is_ignored_not_saturated() {
        use dartsync_shared::limits::MAX_COUNTER;
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        // Valid, but nothing can dominate it and a concurrent version.
        fx.announce(1, file("f", "a", vv(&[(1, MAX_COUNTER)]), 10));
        let before = fx.global("f");
        let seq = fx.state.seq();
        fx.state.take_dirty();
        let out = fx.announce(2, file("f", "b", vv(&[(2, 1)]), 20));
        let Outcome::Unresolvable { path, error } = out else { panic!("{out:?}") };
        assert_eq!((path.as_str(), error.peer, error.max), ("f", TRACKER, MAX_COUNTER));
        assert_eq!(fx.global("f"), before);
        assert_eq!((fx.state.seq(), fx.state.counts()), (seq, (1, 0)));
        assert!(fx.state.take_dirty().is_empty());
        // One below the limit still resolves, at exactly the limit.
        fx.announce(1, file("g", "a", vv(&[(1, MAX_COUNTER - 1)]), 10));
        assert!(matches!(fx.announce(2, file("g", "b", vv(&[(2, 1)]), 20)), Outcome::Conflict { .. }));
        assert_eq!(fx.global("g").0.version.get(TRACKER), MAX_COUNTER);
    }

    #[test]
    fn repeated_conflict_names_get_alternatives() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("f", "a", vv(&[(1, 1)]), 10));
        fx.announce(2, file("f", "b", vv(&[(2, 1)]), 20)); // copy of peer 1's "a" at mtime 10
        // Peer 1 makes another concurrent edit with the same mtime second and different bytes.
        let out = fx.announce(1, file("f", "c", vv(&[(1, 5)]), 10));
        // Peer 1's record is concurrent and older: it loses again, same name taken by "a".
        let Outcome::Conflict { copy: Some(copy), .. } = out else { panic!("{out:?}") };
        assert!(copy.as_str().ends_with(&format!("{}-2", id(1).fmt_short())), "{copy:?}");
        assert_eq!(fx.state.counts(), (3, 0));
    }

    #[test]
    fn expiry_removes_holders_and_bumps_their_entries() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, file("b", "y", vv(&[(1, 1)]), 1));
        fx.state.have(id(2), &RelPath::new("a").unwrap(), &vv(&[(1, 1)]));
        let start = fx.now;
        assert_eq!(fx.state.next_deadline(), Some(start + Duration::from_secs(30)));
        // Peer 2 keeps talking, peer 1 goes silent.
        fx.state.touch(id(2), start + Duration::from_secs(20));
        assert!(fx.state.expire(start + Duration::from_secs(29), T0).is_empty());
        let seq = fx.state.seq();
        assert_eq!(fx.state.expire(start + Duration::from_secs(30), T0), vec![id(1)]);
        fx.state.check_invariants();
        assert_eq!(fx.global("a").2, vec![id(2)]);
        assert_eq!(fx.global("b").2, vec![]);
        assert_eq!(fx.state.seq(), seq + 2, "both entries changed");
        assert!(fx.global("a").1 > seq && fx.global("b").1 > seq);
        assert_eq!(fx.state.next_deadline(), Some(start + Duration::from_secs(50)));
        // The next page for peer 2 carries exactly those two entries.
        let page = fx.state.next_page(id(2), 2).unwrap();
        let delta = page.delta.unwrap();
        assert!(!page.more);
        let got: Vec<_> = delta.entries.iter().filter(|e| e.seq > seq).map(|e| e.record.path.as_str()).collect();
        assert_eq!(got, vec!["a", "b"]);
        assert!(delta.entries.iter().all(|e| e.holders.iter().all(|h| h.peer_id != id(1))));
        // An expired peer's stale session gets nothing.
        assert_eq!(fx.state.next_page(id(1), 1), None);
        assert!(!fx.state.remove_peer(id(1), T0));
    }

    #[test]
    fn reregistering_replaces_the_session_and_clears_holdings() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        let addr = SocketAddr::from(([10, 0, 0, 1], 9999));
        let reg = fx.state.register(Arrival { peer: id(1), addr, session: 42, seen_seq: 1, epoch: 77 }, fx.now, T0);
        assert_eq!(reg, Registration { replaced: Some(1), full: false });
        assert!(fx.state.is_current(id(1), 42) && !fx.state.is_current(id(1), 1));
        assert_eq!(fx.global("a").2, vec![]);
        fx.state.check_invariants();
        // Its summary makes it a holder again, at its new address.
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        let delta = fx.state.next_page(id(1), 42).unwrap().delta.unwrap();
        assert_eq!(delta.from_seq, 1);
        assert_eq!(delta.entries[0].holders, vec![Holder { peer_id: id(1), addr }]);
    }

    #[test]
    fn pages_follow_seq_epoch_and_limits() {
        let mut fx = Fixture::new();
        fx.join(1);
        let n = MAX_RECORDS_PER_MESSAGE + 10;
        let records: Vec<_> = (0..n).map(|i| file(&format!("f{i}"), "x", vv(&[(1, 1)]), 1)).collect();
        fx.state.announce(id(1), records, T0);
        assert_eq!(fx.state.seq(), n as u64);
        // A peer from another epoch gets the whole table in pages, all marked full.
        let addr = SocketAddr::from(([127, 0, 0, 9], 1));
        assert!(
            fx.state.register(Arrival { peer: id(9), addr, session: 9, seen_seq: 5, epoch: 1234 }, fx.now, T0).full
        );
        let first = fx.state.next_page(id(9), 9).unwrap();
        assert!(first.more);
        let d1 = first.delta.unwrap();
        assert_eq!((d1.from_seq, d1.to_seq, d1.full, d1.entries.len()), (0, 4096, true, 4096));
        let second = fx.state.next_page(id(9), 9).unwrap();
        assert!(!second.more);
        let d2 = second.delta.unwrap();
        assert_eq!((d2.from_seq, d2.to_seq, d2.full, d2.entries.len()), (4096, n as u64, true, 10));
        assert_eq!(fx.state.next_page(id(9), 9).unwrap(), Page { delta: None, more: false });
        // Later changes are incremental.
        fx.announce(1, file("new", "x", vv(&[(1, 1)]), 1));
        let d3 = fx.state.next_page(id(9), 9).unwrap().delta.unwrap();
        assert!(!d3.full);
        assert_eq!((d3.from_seq, d3.to_seq, d3.entries.len()), (n as u64, n as u64 + 1, 1));
        // A peer of this epoch that saw seq 4100 gets only what came after.
        let addr = SocketAddr::from(([127, 0, 0, 8], 1));
        assert!(
            !fx.state.register(Arrival { peer: id(8), addr, session: 8, seen_seq: 4100, epoch: 77 }, fx.now, T0).full
        );
        let d4 = fx.state.next_page(id(8), 8).unwrap().delta.unwrap();
        let paths: Vec<_> = d4.entries.iter().map(|e| e.seq).collect();
        assert_eq!(paths, (4101..=n as u64 + 1).collect::<Vec<_>>());
        // A peer claiming a seq from the future gets the full table.
        let addr = SocketAddr::from(([127, 0, 0, 7], 1));
        assert!(
            fx.state.register(Arrival { peer: id(7), addr, session: 7, seen_seq: 1 << 40, epoch: 77 }, fx.now, T0).full
        );
    }

    #[test]
    fn tombstones_are_collected_once_every_known_peer_saw_them() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("f", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, tombstone("f", vv(&[(1, 2)]), 2));
        let tomb_seq = fx.global("f").1;
        // Nobody has confirmed it yet (peer 1 holds it, peer 2 has not seen it).
        assert!(fx.state.gc_tombstones(T0 + 60).is_empty());
        // Peer 2 applies the deletion and says so.
        fx.state.have(id(2), &RelPath::new("f").unwrap(), &vv(&[(1, 2)]));
        assert_eq!(fx.state.gc_tombstones(T0 + 60), vec![RelPath::new("f").unwrap()]);
        fx.state.check_invariants();
        assert_eq!(fx.state.counts(), (0, 0));
        assert_eq!(fx.state.take_dirty().delete_entries, vec![RelPath::new("f").unwrap()]);

        // Same again, confirmed by seen_seq at a later Register instead of holding.
        fx.announce(1, file("g", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, tombstone("g", vv(&[(1, 2)]), 2));
        let tomb_seq2 = fx.global("g").1;
        assert!(tomb_seq2 > tomb_seq);
        fx.state.remove_peer(id(2), T0);
        assert!(fx.state.gc_tombstones(T0 + 60).is_empty(), "peer 2 is offline and has not seen it");
        let addr = SocketAddr::from(([127, 0, 0, 2], 1));
        fx.state.register(Arrival { peer: id(2), addr, session: 20, seen_seq: tomb_seq2 - 1, epoch: 77 }, fx.now, T0);
        assert!(fx.state.gc_tombstones(T0 + 60).is_empty(), "seen_seq before the tombstone");
        fx.state.register(Arrival { peer: id(2), addr, session: 21, seen_seq: tomb_seq2, epoch: 77 }, fx.now, T0);
        assert_eq!(fx.state.gc_tombstones(T0 + 60), vec![RelPath::new("g").unwrap()]);

        // Unconfirmed tombstones go after the maximum age.
        fx.announce(1, file("h", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, tombstone("h", vv(&[(1, 2)]), 2));
        let max_age = config().tombstone_max_age.as_secs();
        assert!(fx.state.gc_tombstones(T0 + max_age - 1).is_empty());
        assert_eq!(fx.state.gc_tombstones(T0 + max_age), vec![RelPath::new("h").unwrap()]);
        // Live records are never collected.
        fx.announce(1, file("live", "x", vv(&[(1, 1)]), 1));
        assert!(fx.state.gc_tombstones(u64::MAX).is_empty());
        assert!(fx.state.entry("live").is_some());
    }

    #[test]
    fn long_gone_peers_are_forgotten() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, tombstone("f", vv(&[(1, 1)]), 2));
        fx.state.remove_peer(id(2), T0);
        fx.state.take_dirty();
        let max_age = config().tombstone_max_age.as_secs();
        fx.state.gc_tombstones(T0 + max_age + 1);
        let write = fx.state.take_dirty();
        assert_eq!(write.delete_peers, vec![id(2)], "offline past the max age");
        assert!(write.put_peers.is_empty(), "peer 1 is online");
    }

    #[test]
    fn restore_gives_back_the_persisted_state() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        fx.announce(2, tombstone("b", vv(&[(2, 1)]), 1));
        fx.state.have(id(2), &RelPath::new("a").unwrap(), &vv(&[(1, 1)]));
        let (epoch, entries, known) = fx.state.persisted_view();
        let seq = fx.state.seq();
        let restored = State::restore(config(), TRACKER, epoch, seq, entries.clone(), known.clone());
        restored.check_invariants();
        assert_eq!(restored.persisted_view(), (epoch, entries, known));
        assert_eq!(restored.seq(), seq);
        assert_eq!(restored.entry("a").unwrap().2, vec![], "holders are soft state");
    }
}
