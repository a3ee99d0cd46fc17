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
//! seq of the last *record* change (kept as its distance below `seq`): the
//! only seq that is persisted.
//! `holders` are the online peers that hold exactly `record` (soft state,
//! rebuilt from `Announce` and `Have` after a restart).
//!
//! # Rules for `Announce` of record R by peer A, global record G
//! - no G: accept R; holders = {A}.
//! - R's vector equals G's and the content is the same: A joins the holders.
//! - R dominates G: accept R; holders = {A}, plus G's holders when the
//!   content is the same bytes.
//! - G dominates R: stale or replayed, ignored.
//! - every accepted R's mtime is first clamped: one more than
//!   [`MTIME_ALLOWANCE_SECS`] past the tracker's clock becomes the
//!   tracker's time (a device whose clock runs far ahead would otherwise
//!   win every conflict); the clamped record is what the table keeps.
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
//! # Bounds
//! An announced record that could add an entry authored by its announcer
//! (a new path, an edit of another peer's entry, a conflict) is refused,
//! with the rest of its batch, when the table holds `max_records` entries
//! or the announcer already authors `max_records_per_peer`
//! ([`Refusal`]); the records before it stay accepted. Re-announcing, and
//! editing its own entries, stay possible at the quota. One accepted record
//! adds at most two entries (a conflict's winner and copy), so a count can
//! pass its bound by one. Entries outlive their author (the table is the
//! folder, not a cache of who is online): what bounds it is `max_records`.
//! The table loaded at start may exceed a lowered bound; nothing is deleted,
//! new entries are refused until it is below.
//!
//! # Peers
//! A registered peer has a heartbeat deadline of `3 x interval` after its
//! last message; [`State::expire`] removes peers past it. Removing a peer
//! (expiry, `Goodbye`, disconnect, or a new `Register` of the same id)
//! removes it from every holders set. That takes no seq and is paged to
//! no one: paging it would send every entry the peer held to every
//! session (a laptop closing its lid in a synced 1,000-peer cluster of
//! 1,000,000 files: 10^9 entries), and a peer that holds the record needs
//! no sources. A peer that lacks it tries the holders it was told of and,
//! when they fail, asks for the ones online now ([`State::sources`]).
//! An online peer has a small *slot* (`u16`, reused after it leaves), and a
//! holders set is a set of slots ([`HolderSet`]): a 64-bit map inside the
//! entry while the slots in use are below 64, else the smaller of a sorted
//! list (2 bytes per holder) and a bitmap (1 bit per online peer), where
//! the peer's id would take 16 bytes per holder and a reverse index (peer
//! -> paths) another 8 to 16. The price: removing a peer is one pass over the table
//! (a few milliseconds per 100,000 entries; peers expiring together share
//! one pass), on disconnects, which are rare next to announcements.
//! `sent_seq` is how far deltas have been handed to the peer's session.
//!
//! # Deltas
//! [`State::next_page`] hands a session the entries with `seq` in
//! `(sent_seq, seq]`, except entries where all the session has not seen
//! is holders that came (no record change) and the peer holds the record
//! itself or the entry has more than [`HOLDER_FANOUT`] holders: holders
//! are what a peer needs to fetch a record it lacks, and more than a few
//! add little. An entry lists at most [`HOLDER_FANOUT`] holders, starting
//! after the session's own slot, so peers that lack the same record fetch
//! it from different holders and an entry held by 1,000 peers costs a
//! page 8 holders, not 256. So a holder that
//! takes an entry past [`HOLDER_FANOUT`] holders takes no seq at all: it
//! would be paged to no one, and a seq would only make every session step
//! over it. With every peer holding every file, this keeps a cluster's
//! start (each peer announcing what it holds) from paging every entry to
//! every session once per holder, and from moving each entry once per
//! holder. A page holds at most [`MAX_RECORDS_PER_MESSAGE`] entries and
//! [`page_budget`] bytes; the last page's `to_seq` is the current seq (so
//! a page may be empty and only move the peer forward). A peer registering
//! with another epoch, or a `seen_seq` beyond ours, starts from 0 and every
//! page until it is caught up is marked `full`. A page leaves as an encoded
//! frame, written straight from the table (`wire`).
//!
//! # Tombstone GC
//! Tracking "every peer that ever held the path" per path would cost a set
//! per entry, so the tracker uses a superset: every *known* peer (any peer
//! that registered in the last `tombstone_max_age`, persisted with the
//! `seen_seq` it reported at its last `Register` in this epoch; at most
//! `max_known_peers`, beyond which the offline peer seen longest ago is
//! forgotten). A tombstone is dropped when each known peer has either
//! reported a `seen_seq` at or after the tombstone's `record_seq` or holds
//! the tombstone (announced the deletion or sent `Have` for it), or when it
//! is older than `tombstone_max_age` by the tracker's wall clock.
//!
//! A GC pass ([`State::start_gc`]) is incremental: [`State::gc_step`]
//! looks at the next `budget` entries after a cursor (a path), so the actor
//! interleaves slices with events and no pass blocks the sessions. Each
//! tombstone costs O(log known + holders): the known peers' `acked_seq`s,
//! sorted once per slice, tell how many have not confirmed it, and only
//! its holders can make up for them.
//!
//! # Not here
//! Persistence format (`store`), message I/O (`session`), scheduling (`actor`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dartsync_shared::codec::CodecError;
use dartsync_shared::limits::{HOLDER_FANOUT, MAX_BATCH_BYTES, MAX_RECORDS_PER_MESSAGE};
#[cfg(test)]
use dartsync_shared::proto::ptp::Delta;
use dartsync_shared::proto::ptp::{BrakeNotice, ConflictNotice, Holder, PeerReport};
use dartsync_shared::version::CounterExhausted;
use dartsync_shared::{Causality, FileRecord, PeerId, RelPath, ShortId, VersionVector};

use crate::brake::Destructive;
use crate::compact::CompactRecord;
use crate::conflict::conflict_path;
use crate::devices::{ConflictLog, Devices};
use crate::registry::{DeviceEntry, Registry};

mod admission;
mod authors;
mod holders;
mod seq_log;
mod table;
mod view;
mod wire;

use authors::{AuthorRef, Authors};
use holders::HolderSet;
use table::Table;
use wire::{PageEntry, PageOut};

/// How many alternative names are tried for one conflict copy.
const MAX_CONFLICT_NAME_ATTEMPTS: u32 = 16;

/// Most bytes of one delta page, against an upper-bound estimate of each
/// entry's encoded size: a quarter of a batch, 1 MiB.
const DELTA_BYTE_BUDGET: usize = MAX_BATCH_BYTES / 4;

/// Page bytes the sessions may hold at once, all together. A session holds
/// its page while its peer reads it, so the page budget
/// ([`page_budget`]) shrinks as sessions grow: 1,000 sessions catching up
/// at once hold about 64 MiB of pages, where 1 MiB each was 1 GiB.
const PAGES_IN_FLIGHT_BYTES: usize = 32 << 20;

/// The smallest page budget (a page holds at least one entry, however big).
const MIN_PAGE_BYTES: usize = 64 << 10;

/// Byte budget of one delta page with `sessions` online: 1 MiB up to 32
/// sessions, then `PAGES_IN_FLIGHT_BYTES` shared out, 64 KiB from 512 on.
fn page_budget(sessions: usize) -> usize {
    (PAGES_IN_FLIGHT_BYTES / sessions.max(1)).clamp(MIN_PAGE_BYTES, DELTA_BYTE_BUDGET)
}

/// Timing rules and bounds of the state.
#[derive(Debug, Clone)]
pub(crate) struct StateConfig {
    /// Keep-alive interval; a peer silent for 3 x interval expires.
    pub interval: Duration,
    /// Tombstones (and known peers) older than this are dropped.
    pub tombstone_max_age: Duration,
    /// Most entries in the table.
    pub max_records: usize,
    /// Most entries one peer may author.
    pub max_records_per_peer: usize,
    /// Most known peers remembered.
    pub max_known_peers: usize,
}

/// One entry of the global table (its path is the table's key): 120
/// bytes, in place in the table's slots (tested).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    record: CompactRecord,
    /// Seq of the last change of any kind (changed only by the table,
    /// [`Table::set_seq`], through [`Entry::set_seq`]).
    seq: u64,
    /// Slots of the online peers holding exactly `record`.
    holders: HolderSet,
    /// The last record change (persisted) as `seq - record_seq`, read
    /// through [`Entry::record_seq`]; at most [`AGE_LATELY`], past which the
    /// record reads as that much older than `seq`, later than it is (a
    /// peer then gets the record again, never misses it).
    record_age: u32,
    /// The peer whose announcement made `record` global.
    author: AuthorRef,
    /// Unix seconds when a tombstone was accepted ([`NO_TIME`] for live
    /// records and for a tombstone whose time is not known, such as one
    /// past 2106), read through [`Entry::deleted_at`].
    deleted_at: u32,
}

/// The largest `Entry::record_age`.
const AGE_LATELY: u32 = u32::MAX;

/// `Entry::deleted_at` of an entry with no deletion time.
const NO_TIME: u32 = u32::MAX;

impl Entry {
    /// A new record at `seq`, with no holders and no deletion time.
    fn new(record: CompactRecord, seq: u64, author: AuthorRef) -> Self {
        Entry { record, seq, holders: HolderSet::default(), record_age: 0, author, deleted_at: NO_TIME }
    }

    /// Seq of the last record change (at most [`AGE_LATELY`] before `seq`).
    fn record_seq(&self) -> u64 {
        self.seq - u64::from(self.record_age)
    }

    /// Moves the entry to `seq` (only [`Table::set_seq`] calls it, keeping
    /// its seq index in step); the record keeps its seq.
    fn set_seq(&mut self, seq: u64) {
        let record_seq = self.record_seq().min(seq);
        self.record_age = u32::try_from(seq - record_seq).unwrap_or(AGE_LATELY);
        self.seq = seq;
    }

    /// Unix seconds when the tombstone was accepted, if known.
    fn deleted_at(&self) -> Option<u64> {
        Some(self.deleted_at).filter(|at| *at != NO_TIME).map(u64::from)
    }

    /// Sets when the tombstone was accepted (a time past `u32` is unknown).
    fn set_deleted_at(&mut self, at: Option<u64>) {
        self.deleted_at = at.and_then(|at| u32::try_from(at).ok()).unwrap_or(NO_TIME);
    }
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
    /// Its slot in holders sets ([`NO_SLOT`]: none, it holds nothing).
    slot: u16,
}

/// A slot no peer gets: with every slot taken (65,535 peers online at
/// once, beyond any `max_peers`), a newcomer holds nothing.
const NO_SLOT: u16 = u16::MAX;

/// The slots of online peers (see the module header).
#[derive(Debug, Default)]
struct Slots {
    /// Slot -> the online peer in it.
    peers: Vec<Option<PeerId>>,
    /// Slots free for reuse.
    free: Vec<u16>,
}

impl Slots {
    /// A slot for `peer` ([`NO_SLOT`] when all are taken).
    fn take(&mut self, peer: PeerId) -> u16 {
        if let Some(slot) = self.free.pop() {
            self.peers[usize::from(slot)] = Some(peer);
            return slot;
        }
        match u16::try_from(self.peers.len()) {
            Ok(slot) if slot != NO_SLOT => {
                self.peers.push(Some(peer));
                slot
            }
            _ => NO_SLOT,
        }
    }

    /// Frees `slot` (no holders set may name it any more).
    fn release(&mut self, slot: u16) {
        if let Some(place) = self.peers.get_mut(usize::from(slot)) {
            *place = None;
            self.free.push(slot);
        }
    }

    /// The peer in `slot`.
    fn peer(&self, slot: u16) -> Option<PeerId> {
        self.peers.get(usize::from(slot)).copied().flatten()
    }
}

/// A tombstone-GC pass in progress.
#[derive(Debug)]
struct GcPass {
    /// The tracker's wall clock when the pass started.
    now_unix: u64,
    /// The table slot the next slice starts at.
    cursor: u32,
}

/// What one GC slice did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GcStep {
    /// Tombstones dropped in this slice.
    pub dropped: Vec<RelPath>,
    /// The pass is over.
    pub done: bool,
}

/// Why an announcement was cut short. The session is refused with this
/// reason; the records before the refused one stay accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The announcer authors `max_records_per_peer` entries already.
    #[error(
        "record quota reached: this peer authors {authored} entries of the global table and the limit \
         (max_records_per_peer) is {max}; {path} and the rest of its batch were not accepted"
    )]
    PeerQuota {
        /// Entries the peer authors.
        authored: usize,
        /// The quota.
        max: usize,
        /// The first record not accepted.
        path: RelPath,
    },
    /// The table holds `max_records` entries already.
    #[error(
        "the global table is full: {entries} entries and the limit (max_records) is {max}; {path} and the \
         rest of its batch were not accepted"
    )]
    TableFull {
        /// Entries in the table.
        entries: usize,
        /// The bound.
        max: usize,
        /// The first record not accepted.
        path: RelPath,
    },
}

/// The result of an `Announce` batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announced {
    /// One outcome per accepted record, in order.
    pub outcomes: Vec<Outcome>,
    /// Records whose mtime was in the future and was clamped.
    pub clamped: usize,
    /// Set when the batch was cut short; the rest was not looked at.
    pub refused: Option<Refusal>,
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
    /// Device names to put (`Some`) or delete (`None`).
    pub names: Vec<(PeerId, Option<String>)>,
    /// Device registry entries to put (`Some`) or delete (`None`).
    pub devices: Vec<(PeerId, Option<DeviceEntry>)>,
}

impl PendingWrite {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_entries.is_empty()
            && self.delete_entries.is_empty()
            && self.put_peers.is_empty()
            && self.delete_peers.is_empty()
            && self.names.is_empty()
            && self.devices.is_empty()
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
#[derive(Debug)]
pub(crate) struct Page {
    /// The delta to send; `None` when the peer has seen everything.
    pub delta: Option<EncodedDelta>,
    /// Conflicts this peer's version lost, to send after the delta.
    pub notices: Vec<ConflictNotice>,
    /// Mass-change brake notices for this peer (filled in by the actor).
    pub brake: Vec<BrakeNotice>,
    /// More entries are waiting: ask again at once.
    pub more: bool,
}

/// A delta page, encoded (see `wire`).
#[derive(Debug)]
pub(crate) struct EncodedDelta {
    /// The page's `to_seq`: the peer's `seen_seq` once it has it.
    pub to_seq: u64,
    /// The frame of `TrackerMessage::Delta`; an error only if the page
    /// could not be encoded, which its byte budget rules out.
    pub frame: Result<Vec<u8>, CodecError>,
}

#[cfg(test)]
impl EncodedDelta {
    /// The `Delta` the frame holds.
    pub fn decode(&self) -> Delta {
        match dartsync_shared::codec::decode(self.frame.as_ref().expect("the page encodes")) {
            Ok(dartsync_shared::proto::ptp::TrackerMessage::Delta(delta)) => delta,
            other => panic!("not a delta: {other:?}"),
        }
    }
}

/// The tracker's whole in-memory state.
#[derive(Debug)]
pub(crate) struct State {
    config: StateConfig,
    /// Bumps the vectors of conflict winners (see the module header).
    tracker_short: ShortId,
    epoch: u64,
    seq: u64,
    /// The table: entries by path and by seq.
    entries: Table,
    peers: HashMap<PeerId, Peer>,
    /// Online peers' slots (holders sets name these).
    slots: Slots,
    /// Entries' authors, with how many entries each authors.
    authors: Authors,
    /// Heartbeat deadlines, soonest first.
    deadlines: BTreeSet<(Instant, PeerId)>,
    known: BTreeMap<PeerId, KnownPeer>,
    /// `known` by `last_seen_unix`, oldest first (eviction, forgetting).
    known_by_age: BTreeSet<(u64, PeerId)>,
    /// The tombstone-GC pass in progress.
    gc: Option<GcPass>,
    dirty_entries: BTreeSet<RelPath>,
    dirty_peers: BTreeSet<PeerId>,
    /// Names, reports, conflicts and notices of the devices.
    devices: Devices,
    /// Admitted, pending and revoked devices (persisted).
    registry: Registry,
    /// Pending devices with a session open now (they are not in `peers`),
    /// and where they connect from.
    pending_online: HashMap<PeerId, SocketAddr>,
    /// The seq of the last record change (not a holders change): a peer
    /// that has seen it has seen every record.
    last_record_seq: u64,
}

impl State {
    /// An empty table (a fresh database).
    pub fn new(config: StateConfig, tracker_short: ShortId, epoch: u64) -> Self {
        State {
            config,
            tracker_short,
            epoch,
            seq: 0,
            entries: Table::default(),
            peers: HashMap::new(),
            slots: Slots::default(),
            authors: Authors::default(),
            deadlines: BTreeSet::new(),
            known: BTreeMap::new(),
            known_by_age: BTreeSet::new(),
            gc: None,
            dirty_entries: BTreeSet::new(),
            dirty_peers: BTreeSet::new(),
            devices: Devices::default(),
            registry: Registry::default(),
            pending_online: HashMap::new(),
            last_record_seq: 0,
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
        state.last_record_seq = entries.iter().map(|e| e.seq).max().unwrap_or(0);
        state.seq = state.last_record_seq.max(seq_floor);
        let mut entries = entries;
        entries.sort_by_key(|e| e.seq);
        for PersistedEntry { record, seq, author, deleted_at } in entries {
            let path = record.path.clone();
            let mut seq = seq;
            if state.entries.has_seq(seq) {
                // Two entries cannot share a seq; repair a damaged table by
                // giving the second one a new seq (written back).
                state.seq += 1;
                seq = state.seq;
                state.dirty_entries.insert(path.clone());
            }
            let author = state.authors.add(author);
            let mut entry = Entry::new(CompactRecord::new(record), seq, author);
            entry.set_deleted_at(deleted_at);
            if let Some(old) = state.entries.insert(path.as_str(), entry) {
                // The same path twice (a damaged table): the later seq stays.
                state.authors.sub(old.author);
            }
        }
        for (peer, k) in known {
            state.known.insert(peer, k);
            state.known_by_age.insert((k.last_seen_unix, peer));
        }
        // A lowered bound applies at once (written back with the first commit).
        state.evict_known();
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
        (self.entries.len(), self.entries.iter().filter(|(_, e)| e.record.deleted()).count())
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
        self.set_known(peer, KnownPeer { acked_seq: acked, last_seen_unix: now_unix });
        let slot = self.slots.take(peer);
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
                slot,
            },
        );
        self.evict_known();
        Registration { replaced, full: !incremental }
    }

    /// Device names loaded from the database.
    pub fn restore_names(&mut self, names: Vec<(PeerId, String)>) {
        self.devices.restore(names.into_iter().filter(|(id, _)| self.known.contains_key(id)));
    }

    /// `peer` (registered) calls itself `name`.
    pub fn set_name(&mut self, peer: PeerId, name: &str) {
        if self.known.contains_key(&peer) {
            self.devices.set_name(peer, name);
        }
    }

    /// `peer` (online) says where it stands.
    pub fn set_report(&mut self, peer: PeerId, report: PeerReport) {
        if self.peers.contains_key(&peer) {
            self.devices.set_report(peer, report);
        }
    }

    /// Something people may want to know happened (status, dashboard).
    pub fn note_event(&mut self, now_unix: u64, what: String) {
        self.devices.note(now_unix, what);
    }

    /// `name (shortid)` of a peer, for log lines.
    pub fn label(&self, peer: PeerId) -> String {
        self.devices.label(peer)
    }

    /// The name people know `peer` by (its short id if it has none).
    pub fn display_name(&self, peer: PeerId) -> String {
        self.devices.display_name(peer)
    }

    /// Remembers `peer` as known (persisted).
    fn set_known(&mut self, peer: PeerId, k: KnownPeer) {
        if let Some(old) = self.known.insert(peer, k) {
            self.known_by_age.remove(&(old.last_seen_unix, peer));
        }
        self.known_by_age.insert((k.last_seen_unix, peer));
        self.dirty_peers.insert(peer);
    }

    /// Forgets a known peer (persisted).
    fn forget_known(&mut self, peer: PeerId) {
        if let Some(old) = self.known.remove(&peer) {
            self.known_by_age.remove(&(old.last_seen_unix, peer));
            self.dirty_peers.insert(peer);
            self.devices.forget(peer);
            self.registry.forget(peer);
        }
    }

    /// Forgets the offline known peers seen longest ago until at most
    /// `max_known_peers` are left. Online peers are never forgotten (the
    /// configuration keeps `max_known_peers >= max_peers`).
    fn evict_known(&mut self) {
        while self.known.len() > self.config.max_known_peers {
            let Some(&(_, oldest)) = self.known_by_age.iter().find(|(_, id)| !self.peers.contains_key(id)) else {
                break;
            };
            self.forget_known(oldest);
        }
    }

    /// Number of known peers (tests, logs).
    pub fn known_count(&self) -> usize {
        self.known.len()
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

    /// Removes every peer whose deadline is at or before `now`, unless
    /// `heard` says its session read from it since (`Some(when)`, within
    /// the expiry window: a busy tracker had not applied its message yet),
    /// which re-arms its deadline from then.
    pub fn expire(&mut self, now: Instant, now_unix: u64, heard: impl Fn(PeerId) -> Option<Instant>) -> Vec<PeerId> {
        let mut expired = Vec::new();
        let window = self.expiry_after();
        while let Some(&(at, peer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            if let Some(when) = heard(peer).filter(|w| *w + window > now) {
                self.touch(peer, when);
                continue;
            }
            // Off the deadlines now; the table pass is shared below.
            self.deadlines.pop_first();
            expired.push(peer);
        }
        self.remove_peers(&expired, now_unix);
        expired
    }

    /// Removes `peer` from the peer table and from every holders set (one
    /// pass over the table). Returns false if it was not online.
    pub fn remove_peer(&mut self, peer: PeerId, now_unix: u64) -> bool {
        self.remove_peers(&[peer], now_unix) == 1
    }

    /// Removes `peers` from the peer table and from every holders set, in
    /// one pass over the table; how many were online.
    fn remove_peers(&mut self, peers: &[PeerId], now_unix: u64) -> usize {
        let mut slots = Vec::new();
        let mut removed = 0;
        for &peer in peers {
            let Some(p) = self.peers.remove(&peer) else {
                continue;
            };
            removed += 1;
            self.deadlines.remove(&(p.deadline, peer));
            self.devices.offline(peer);
            if let Some(&k) = self.known.get(&peer) {
                self.set_known(peer, KnownPeer { last_seen_unix: now_unix, ..k });
            }
            if p.slot != NO_SLOT {
                slots.push(p.slot);
            }
        }
        if slots.is_empty() {
            return removed;
        }
        slots.sort_unstable();
        // Holders that went take no seq and are paged to no one (see the
        // module header): a peer that lacks a record asks for sources when
        // the ones it knows fail.
        for entry in self.entries.values_mut() {
            if !entry.holders.is_empty() {
                entry.holders.retain(|h| slots.binary_search(&h).is_err());
            }
        }
        for slot in slots {
            self.slots.release(slot);
        }
        removed
    }

    /// `peer`'s slot, if it is online and has one.
    fn slot_of(&self, peer: PeerId) -> Option<u16> {
        self.peers.get(&peer).map(|p| p.slot).filter(|s| *s != NO_SLOT)
    }

    /// `{peer's slot}`, or nothing if it has none.
    fn own_slot(&self, peer: PeerId) -> HolderSet {
        HolderSet::of(self.slot_of(peer))
    }

    /// Entries authored by `peer`.
    fn authored(&self, peer: PeerId) -> usize {
        self.authors.count(peer)
    }

    /// Gives the entry whose seq is `old` the next seq (a holder came).
    fn bump_entry(&mut self, old: u64) {
        let new = self.seq + 1;
        if self.entries.set_seq(old, new).is_some() {
            self.seq = new;
        }
    }

    /// Applies an `Announce` batch from `peer`, in order, up to the first
    /// record refused by a bound (see the module header).
    pub fn announce(&mut self, peer: PeerId, records: Vec<FileRecord>, now_unix: u64) -> Announced {
        let mut outcomes = Vec::with_capacity(records.len());
        let mut clamped = 0;
        for mut record in records {
            if let Some(refusal) = self.check_bounds(peer, &record) {
                return Announced { outcomes, clamped, refused: Some(refusal) };
            }
            clamped += usize::from(clamp_future_mtime(&mut record, now_unix));
            outcomes.push(self.announce_one(peer, record, now_unix));
        }
        Announced { outcomes, clamped, refused: None }
    }

    /// How many of `records` would delete or replace the content of a live
    /// entry (what the mass-change brake counts). Versions the table
    /// already has or supersedes count for nothing.
    pub fn destructive(&self, records: &[FileRecord]) -> Destructive {
        let mut d = Destructive::default();
        for r in records {
            let Some(e) = self.entries.get(r.path.as_str()) else { continue };
            if e.record.deleted() {
                continue;
            }
            match e.record.compare_from(&r.version) {
                Causality::DominatedBy => continue,
                Causality::Equal if e.record.same_content(r) => continue,
                _ => {}
            }
            if r.deleted {
                d.deleted.push(r.path.clone());
            } else if !e.record.same_content(r) {
                d.overwritten.push(r.path.clone());
            }
        }
        d
    }

    /// Live (not deleted) entries: one pass over the table.
    pub fn live_count(&self) -> u64 {
        let (all, tombstones) = self.counts();
        (all - tombstones) as u64
    }

    /// Refuses `record` if it could add an entry authored by `peer` while
    /// the table or `peer`'s quota is full.
    fn check_bounds(&self, peer: PeerId, record: &FileRecord) -> Option<Refusal> {
        let full = self.entries.len() >= self.config.max_records;
        let authored = self.authored(peer);
        let over_quota = authored >= self.config.max_records_per_peer;
        if !(full || over_quota) || !self.may_add_entry(peer, record) {
            return None;
        }
        let path = record.path.clone();
        Some(if over_quota {
            Refusal::PeerQuota { authored, max: self.config.max_records_per_peer, path }
        } else {
            Refusal::TableFull { entries: self.entries.len(), max: self.config.max_records, path }
        })
    }

    /// False only when announcing `record` certainly adds no entry and no
    /// authorship for `peer`: a stale version, the global version again,
    /// or an edit of an entry `peer` authored already.
    fn may_add_entry(&self, peer: PeerId, record: &FileRecord) -> bool {
        let Some(global) = self.entries.get(record.path.as_str()) else {
            return true;
        };
        match global.record.compare_from(&record.version) {
            Causality::DominatedBy => false,
            Causality::Equal if global.record.same_content(record) => false,
            Causality::Dominates => self.authors.peer(global.author) != peer,
            Causality::Equal | Causality::Concurrent => true,
        }
    }

    fn announce_one(&mut self, peer: PeerId, record: FileRecord, now_unix: u64) -> Outcome {
        let path = record.path.clone();
        let Some(global) = self.entries.get(path.as_str()) else {
            let holders = self.own_slot(peer);
            let seq = self.put(record, peer, holders, now_unix);
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
                let mut holders =
                    if global.record.same_content(&record) { global.holders.clone() } else { HolderSet::default() };
                if let Some(slot) = self.slot_of(peer) {
                    holders.insert(slot);
                }
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
        let entry = self.entries.get(path.as_str()).expect("resolve is called for a path in the table");
        let global = entry.record.to_record(&path);
        let (global_author, global_holders) = (self.authors.peer(entry.author), entry.holders.clone());
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
            if let Some(slot) = self.slot_of(announcer) {
                holders.insert(slot);
            }
            let seq = self.put(winner, author, holders, now_unix);
            return Outcome::Merged { path, seq };
        }
        let announcer_slot = self.own_slot(announcer);
        let (mut winner, winner_author, winner_holders, loser, loser_author, loser_holders) = if announced_wins {
            (announced, announcer, announcer_slot, global, global_author, global_holders)
        } else {
            (global, global_author, global_holders, announced, announcer, announcer_slot)
        };
        winner.version = merged;
        let seq = self.put(winner, winner_author, winner_holders, now_unix);
        let loser_deleted = loser.deleted;
        // Who held the losing version is told (the author too, if online).
        let mut tell: Vec<PeerId> = loser_holders.iter().filter_map(|s| self.slots.peer(s)).collect();
        tell.sort_unstable();
        insert_sorted(&mut tell, loser_author);
        tell.retain(|p| self.peers.contains_key(p));
        let copy =
            if loser_deleted { None } else { self.keep_conflict_copy(loser, loser_author, loser_holders, now_unix) };
        let log = ConflictLog {
            path: path.clone(),
            copy: copy.clone(),
            winner: winner_author,
            loser: loser_author,
            at: now_unix,
        };
        self.devices.record_conflict(log, tell);
        Outcome::Conflict { path, seq, winner: winner_author, copy, loser_deleted }
    }

    /// Keeps a losing version under a conflict name. Returns the name, or
    /// `None` when every candidate name holds something else.
    fn keep_conflict_copy(
        &mut self,
        mut loser: FileRecord,
        author: PeerId,
        holders: HolderSet,
        now_unix: u64,
    ) -> Option<RelPath> {
        let original = loser.path.clone();
        let tag = self.devices.file_tag(author);
        for attempt in 1..=MAX_CONFLICT_NAME_ATTEMPTS {
            let path = conflict_path(&original, loser.mtime_ns, &tag, attempt);
            match self.entries.get(path.as_str()) {
                None => {
                    loser.path = path.clone();
                    self.put(loser, author, holders, now_unix);
                    return Some(path);
                }
                Some(existing) => match existing.record.compare_from(&loser.version) {
                    // The same copy was kept before (a replayed conflict).
                    Causality::Equal if existing.record.same_content(&loser) => {
                        for h in holders.iter() {
                            self.add_holder_slot(&path, h);
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
        match self.entries.get(path.as_str()) {
            Some(e) if e.record.version_is(version) => self.add_holder(path, peer),
            _ => false,
        }
    }

    /// Makes `record` the global record of its path with a new seq.
    fn put(&mut self, record: FileRecord, author: PeerId, mut holders: HolderSet, now_unix: u64) -> u64 {
        // Only online peers hold anything (slots of peers gone meanwhile
        // are free).
        holders.retain(|h| self.slots.peer(h).is_some());
        self.seq += 1;
        let seq = self.seq;
        self.last_record_seq = seq;
        let path = record.path.clone();
        let deleted = record.deleted;
        let mut entry = Entry::new(CompactRecord::new(record), seq, self.authors.add(author));
        entry.holders = holders;
        // A clock too far off (past 2106) counts as unknown.
        entry.set_deleted_at(deleted.then_some(now_unix));
        if let Some(old) = self.entries.insert(path.as_str(), entry) {
            self.authors.sub(old.author);
        }
        self.dirty_entries.insert(path);
        seq
    }

    /// Adds a holder; a change (new seq) only if it was not one already.
    fn add_holder(&mut self, path: &RelPath, peer: PeerId) -> bool {
        match self.slot_of(peer) {
            Some(slot) => self.add_holder_slot(path, slot),
            None => false,
        }
    }

    /// [`Self::add_holder`] by slot.
    fn add_holder_slot(&mut self, path: &RelPath, slot: u16) -> bool {
        if self.slots.peer(slot).is_none() {
            return false;
        }
        let Some(entry) = self.entries.get_mut(path.as_str()) else {
            return false;
        };
        if !entry.holders.insert(slot) {
            return false;
        }
        // Past `HOLDER_FANOUT` holders, a holder that came is paged to no
        // session (`nothing_new_for`), so it takes no seq: 1,000 peers
        // announcing what they hold move each entry 7 times, not 999,
        // and no session steps over the other 992.
        if entry.holders.len() <= HOLDER_FANOUT {
            let old = entry.seq;
            self.bump_entry(old);
        }
        true
    }

    /// The answer to `peer`'s `Sources` for `version` of `path`: a few of
    /// the online peers holding it, listed as a delta would list them;
    /// `None` when that is not the global version (the delta of the one
    /// that is reaches the peer anyway) or `peer` is not online.
    pub fn sources(&self, peer: PeerId, path: &RelPath, version: &VersionVector) -> Option<Vec<Holder>> {
        let me = self.peers.get(&peer)?.slot;
        let entry = self.entries.get(path.as_str()).filter(|e| e.record.version_is(version))?;
        let mut holders: Vec<Holder> = self.listed_holders(&entry.holders, me).collect();
        holders.sort_unstable_by_key(|h| h.peer_id);
        Some(holders)
    }

    /// The holders a delta lists to the peer in `me`: at most
    /// [`HOLDER_FANOUT`], online, in [`listed_from`]'s order.
    fn listed_holders<'a>(&'a self, holders: &'a HolderSet, me: u16) -> impl Iterator<Item = Holder> + 'a {
        listed_from(holders, me)
            .filter_map(|slot| {
                let id = self.slots.peer(slot)?;
                self.peers.get(&id).map(|p| Holder { peer_id: id, addr: p.addr })
            })
            .take(HOLDER_FANOUT)
    }

    /// The next delta page for `peer`'s session, advancing its `sent_seq`;
    /// `None` when `session` is not the peer's current session.
    pub fn next_page(&mut self, peer: PeerId, session: u64) -> Option<Page> {
        let p = self.peers.get_mut(&peer).filter(|p| p.session == session)?;
        let from = p.sent_seq;
        if from >= self.seq {
            // Nothing was ever handed out (a new tracker): the `Welcome` was the whole table.
            p.full_pending = false;
            return Some(Page {
                delta: None,
                notices: self.devices.take_notices(peer),
                brake: Vec::new(),
                more: false,
            });
        }
        let full = p.full_pending;
        let me = p.slot;
        let budget = page_budget(self.peers.len());
        let mut entries: Vec<PageEntry<'_>> = Vec::new();
        let mut holders: Vec<Holder> = Vec::new();
        let mut bytes = 0usize;
        let mut last = from;
        let mut more = false;
        for (path, entry) in self.entries.since(from) {
            let seq = entry.seq;
            if !full && nothing_new_for(entry, from, me) {
                last = seq;
                continue;
            }
            let size = estimate_size(path, entry);
            if entries.len() == MAX_RECORDS_PER_MESSAGE || (!entries.is_empty() && bytes + size > budget) {
                more = true;
                break;
            }
            bytes += size;
            let first = holders.len();
            holders.extend(self.listed_holders(&entry.holders, me));
            holders[first..].sort_unstable_by_key(|h| h.peer_id);
            entries.push(PageEntry { path, entry, holders: first..holders.len() });
            last = seq;
        }
        let to_seq = if more { last } else { self.seq };
        let page = PageOut { epoch: self.epoch, from_seq: from, to_seq, full, entries: &entries, holders: &holders };
        let frame = page.encode();
        let p = self.peers.get_mut(&peer).expect("peer looked up above");
        p.sent_seq = to_seq;
        if !more {
            p.full_pending = false;
        }
        // Notices go with the last page, after the copies they name.
        let notices = if more { Vec::new() } else { self.devices.take_notices(peer) };
        Some(Page { delta: Some(EncodedDelta { to_seq, frame }), notices, brake: Vec::new(), more })
    }

    /// Starts a tombstone-GC pass (see the module header), unless one is
    /// running, and forgets offline peers not seen for `tombstone_max_age`.
    /// Returns false when a pass was already running.
    pub fn start_gc(&mut self, now_unix: u64) -> bool {
        if self.gc.is_some() {
            return false;
        }
        let max_age = self.config.tombstone_max_age.as_secs();
        let stale: Vec<PeerId> = self
            .known_by_age
            .iter()
            .take_while(|(seen, _)| now_unix.saturating_sub(*seen) > max_age)
            .filter(|(_, id)| !self.peers.contains_key(id))
            .map(|(_, id)| *id)
            .collect();
        for id in stale {
            self.forget_known(id);
        }
        self.gc = Some(GcPass { now_unix, cursor: 0 });
        true
    }

    /// True while a GC pass is running.
    pub fn gc_active(&self) -> bool {
        self.gc.is_some()
    }

    /// Looks at the next `budget` entries of the running GC pass and drops
    /// the collectable tombstones among them.
    pub fn gc_step(&mut self, budget: usize) -> GcStep {
        let Some(pass) = &self.gc else {
            return GcStep { dropped: Vec::new(), done: true };
        };
        let max_age = self.config.tombstone_max_age.as_secs();
        let now_unix = pass.now_unix;
        let mut acked: Vec<u64> = self.known.values().map(|k| k.acked_seq).collect();
        acked.sort_unstable();
        let mut visited = 0;
        let mut next = pass.cursor;
        let mut collectable = Vec::new();
        for (slot, path, e) in self.entries.starting_at_slot(pass.cursor).take(budget) {
            visited += 1;
            next = slot + 1;
            if !e.record.deleted() {
                continue;
            }
            let old = e.deleted_at().is_some_and(|at| now_unix.saturating_sub(at) >= max_age);
            // Known peers that have not confirmed it by seen_seq ...
            let unconfirmed = acked.partition_point(|a| *a < e.record_seq());
            // ... must all hold it.
            let confirmed_by_holding = || {
                e.holders
                    .iter()
                    .filter_map(|s| self.slots.peer(s))
                    .filter(|h| self.known.get(h).is_some_and(|k| k.acked_seq < e.record_seq()))
                    .count()
            };
            // A table path was a valid `RelPath` when it came in.
            if (old || unconfirmed == 0 || unconfirmed == confirmed_by_holding())
                && let Ok(path) = RelPath::new(path)
            {
                collectable.push(path);
            }
        }
        let done = visited < budget;
        let mut dropped = Vec::with_capacity(collectable.len());
        for path in collectable {
            if let Some(e) = self.entries.remove(path.as_str()) {
                self.authors.sub(e.author);
                dropped.push(path.clone());
                self.dirty_entries.insert(path);
            }
        }
        if done {
            self.gc = None;
        } else if let Some(pass) = &mut self.gc {
            pass.cursor = next;
        }
        GcStep { dropped, done }
    }

    /// A whole GC pass at once; returns the paths dropped (tests).
    #[cfg(test)]
    pub fn gc_tombstones(&mut self, now_unix: u64) -> Vec<RelPath> {
        self.start_gc(now_unix);
        let mut dropped = Vec::new();
        loop {
            let step = self.gc_step(3);
            dropped.extend(step.dropped);
            if step.done {
                return dropped;
            }
        }
    }

    /// The persisted part of `e`, the entry at `path`.
    fn persisted(&self, path: &RelPath, e: &Entry) -> PersistedEntry {
        PersistedEntry {
            record: e.record.to_record(path),
            seq: e.record_seq(),
            author: self.authors.peer(e.author),
            deleted_at: e.deleted_at(),
        }
    }

    /// Everything changed since the last call, to be persisted.
    pub fn take_dirty(&mut self) -> PendingWrite {
        let mut write = PendingWrite::default();
        for path in std::mem::take(&mut self.dirty_entries) {
            match self.entries.get(path.as_str()) {
                Some(e) => write.put_entries.push(self.persisted(&path, e)),
                None => write.delete_entries.push(path),
            }
        }
        for id in std::mem::take(&mut self.dirty_peers) {
            match self.known.get(&id) {
                Some(k) => write.put_peers.push((id, *k)),
                None => write.delete_peers.push(id),
            }
        }
        write.names = self.devices.take_dirty_names();
        write.devices = self.registry.take_dirty();
        write
    }

    /// The persisted view of the whole state, sorted by path and peer.
    #[cfg(test)]
    pub fn persisted_view(&self) -> (u64, Vec<PersistedEntry>, Vec<(PeerId, KnownPeer)>) {
        (
            self.epoch,
            {
                let mut entries: Vec<PersistedEntry> = self
                    .entries
                    .iter()
                    .map(|(path, e)| self.persisted(&RelPath::new(path).expect("a table path"), e))
                    .collect();
                entries.sort_by(|a, b| a.record.path.cmp(&b.record.path));
                entries
            },
            self.known.iter().map(|(id, k)| (*id, *k)).collect(),
        )
    }

    /// The record, seq and holders of `path` (tests).
    #[cfg(test)]
    pub fn entry(&self, path: &str) -> Option<(FileRecord, u64, Vec<PeerId>)> {
        let path = RelPath::new(path).ok()?;
        self.entries.get(path.as_str()).map(|e| {
            let mut holders: Vec<PeerId> = e.holders.iter().filter_map(|s| self.slots.peer(s)).collect();
            holders.sort_unstable();
            (e.record.to_record(&path), e.seq, holders)
        })
    }

    /// Checks the internal indexes agree (tests).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        self.entries.check();
        assert_eq!(self.deadlines.len(), self.peers.len());
        let mut authored: HashMap<PeerId, usize> = HashMap::new();
        for (path, e) in self.entries.iter() {
            assert!(e.seq <= self.seq);
            for h in e.holders.iter() {
                let peer = self.slots.peer(h).unwrap_or_else(|| panic!("{path}: free slot {h} holds it"));
                assert_eq!(self.peers[&peer].slot, h, "{path}: slot {h} is not {peer}'s");
            }
            assert!(e.record_seq() <= e.seq);
            *authored.entry(self.authors.peer(e.author)).or_default() += 1;
        }
        assert_eq!(authored, self.authors.counts());
        let taken = self.slots.peers.iter().filter(|p| p.is_some()).count();
        assert_eq!(taken, self.peers.values().filter(|p| p.slot != NO_SLOT).count(), "slots in use");
        assert_eq!(taken + self.slots.free.len(), self.slots.peers.len(), "every slot is taken or free");
        for (id, p) in &self.peers {
            if p.slot != NO_SLOT {
                assert_eq!(self.slots.peer(p.slot), Some(*id), "{id}'s slot");
            }
        }
        assert_eq!(self.known.len(), self.known_by_age.len());
        assert!(self.known_by_age.iter().all(|(seen, id)| self.known[id].last_seen_unix == *seen));
        assert!(self.peers.keys().all(|id| self.known.contains_key(id)), "an online peer is not known");
    }
}

/// How far past the tracker's clock an announced mtime may be before it is
/// clamped to the tracker's time: clocks of machines on one LAN rarely
/// differ by more.
pub(crate) const MTIME_ALLOWANCE_SECS: i64 = 60;

/// Clamps an mtime more than [`MTIME_ALLOWANCE_SECS`] past `now_unix` to
/// `now_unix`; true when it did.
fn clamp_future_mtime(record: &mut FileRecord, now_unix: u64) -> bool {
    let now_ns = i64::try_from(now_unix).unwrap_or(i64::MAX / 2).saturating_mul(1_000_000_000);
    let limit = now_ns.saturating_add(MTIME_ALLOWANCE_SECS * 1_000_000_000);
    if record.mtime_ns > limit {
        record.mtime_ns = now_ns;
        return true;
    }
    false
}

/// True when all that a session which was handed everything up to `sent`
/// has not seen of `e` is holders that came, and the peer (in `slot`)
/// needs no news of them: it holds the record itself, or it knows
/// [`HOLDER_FANOUT`] sources already. Such a change is not paged to it.
fn nothing_new_for(e: &Entry, sent: u64, slot: u16) -> bool {
    if e.record_seq() > sent {
        return false;
    }
    let holds = slot != NO_SLOT && e.holders.contains(slot);
    holds || e.holders.len() > HOLDER_FANOUT
}

/// The slots of `holders` in the order a delta lists them to the peer at
/// `me` (never its own): those after its slot first, then from the lowest (so peers
/// lacking the same record are each sent to a different few of its
/// holders, not all to the lowest slots).
fn listed_from(holders: &HolderSet, me: u16) -> impl Iterator<Item = u16> + '_ {
    holders.iter().skip_while(move |s| *s <= me).chain(holders.iter().take_while(move |s| *s < me))
}

/// Inserts into a sorted vector; false if already present. Grows the
/// vector by exactly one: holder lists are short and there is one per
/// entry, so doubling would cost more memory than the copies it saves.
fn insert_sorted<T: Ord>(v: &mut Vec<T>, id: T) -> bool {
    match v.binary_search(&id) {
        Ok(_) => false,
        Err(i) => {
            v.reserve_exact(1);
            v.insert(i, id);
            true
        }
    }
}

/// An upper bound of an entry's encoded size in a delta (bincode varints
/// take at most 9 bytes, a holder at most 16 + 1 + 16 + 3 bytes).
fn estimate_size(path: &str, e: &Entry) -> usize {
    let target = e.record.target_len() + 9;
    let holders = e.holders.len().min(HOLDER_FANOUT) * 48;
    128 + path.len() + target + e.record.version_len() * 18 + holders
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::ContentHash;
    use dartsync_shared::test_util::RecordBuilder;

    const T0: u64 = 1_700_000_000;
    const TRACKER: ShortId = ShortId(0xDEAD_BEEF);

    #[test]
    fn an_entry_stays_small() {
        // The per-record cost that ARCHITECTURE.md's memory formula uses:
        // 120 bytes in place in the table's slots (128 with its path's place).
        assert_eq!(std::mem::size_of::<Entry>(), 120);
    }

    #[test]
    fn the_page_budget_shrinks_as_sessions_grow_and_bounds_them_all() {
        assert_eq!(page_budget(0), DELTA_BYTE_BUDGET);
        assert_eq!(page_budget(32), DELTA_BYTE_BUDGET);
        assert_eq!(page_budget(64), 512 << 10);
        assert_eq!(page_budget(1000), MIN_PAGE_BYTES);
        for sessions in [1, 50, 256, 512, 1000, 4096] {
            let all = sessions * page_budget(sessions);
            assert!(all <= PAGES_IN_FLIGHT_BYTES.max(sessions * MIN_PAGE_BYTES), "{sessions}: {all}");
        }
    }

    #[test]
    fn an_entry_far_past_its_record_reads_the_record_as_later_never_earlier() {
        let record = CompactRecord::new(RecordBuilder::file("x").body("x").build());
        let mut e = Entry::new(record, 10, Authors::default().add(PeerId([1; 16])));
        e.set_seq(20);
        assert_eq!(e.record_seq(), 10);
        let far = 10 + u64::from(u32::MAX) + 5;
        e.set_seq(far);
        assert_eq!(e.record_seq(), far - u64::from(AGE_LATELY), "later than 10 by 5");
        e.set_seq(far + 1);
        assert_eq!(e.record_seq(), far + 1 - u64::from(AGE_LATELY), "it stays AGE_LATELY behind");
    }

    #[test]
    fn a_page_encodes_byte_for_byte_as_the_delta_of_its_entries() {
        let mut fx = Fixture::new();
        for n in 1..=3 {
            fx.join(n);
        }
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        fx.announce(2, file("a", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, RecordBuilder::symlink("d/l", "../a").version(vv(&[(1, 1), (2, 3)])).build());
        fx.announce(2, tombstone("t", vv(&[(2, 1)]), 5));
        fx.announce(1, RecordBuilder::dir("d").version(vv(&[(1, 2)])).build());
        let page = fx.state.next_page(id(3), 3).unwrap().delta.unwrap();
        let frame = page.frame.as_ref().unwrap().clone();
        let delta = page.decode();
        assert_eq!((delta.epoch, delta.from_seq, delta.to_seq, delta.full), (77, 0, fx.state.seq, false));
        let mut expected = Vec::new();
        for path in ["a", "d/l", "t", "d"] {
            let (record, seq, holders) = fx.global(path);
            let holders = holders
                .into_iter()
                .map(|peer| {
                    let n = peer.0[0];
                    Holder { peer_id: peer, addr: SocketAddr::from(([127, 0, 0, n], 4000 + u16::from(n))) }
                })
                .collect();
            expected.push(dartsync_shared::proto::ptp::DeltaEntry { record, seq, holders });
        }
        expected.sort_by_key(|e| e.seq);
        assert_eq!(expected[0].holders.len(), 2, "a has two holders");
        assert_eq!(delta.entries, expected);
        let owned = dartsync_shared::codec::encode(&dartsync_shared::proto::ptp::TrackerMessage::Delta(delta)).unwrap();
        assert_eq!(frame, owned, "the same bytes as the derived encoding");
    }

    fn config() -> StateConfig {
        StateConfig {
            interval: Duration::from_secs(10),
            tombstone_max_age: Duration::from_secs(30 * 86_400),
            max_records: 100_000,
            max_records_per_peer: 10_000,
            max_known_peers: 8,
        }
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
            assert_eq!((out.outcomes.len(), &out.refused), (1, &None));
            out.outcomes.remove(0)
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
    fn a_clock_far_ahead_does_not_win_every_conflict() {
        let now = T0 as i64;
        // Peer 1's clock runs a year ahead; peer 2 edits concurrently,
        // 30 s later by the tracker's clock.
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        let ahead = fx.state.announce(id(1), vec![file("f", "future", vv(&[(1, 1)]), now + 365 * 86_400)], T0);
        assert_eq!(ahead.clamped, 1);
        assert_eq!(fx.global("f").0.mtime_ns, now * 1_000_000_000, "kept at the tracker's time");
        let later = fx.state.announce(id(2), vec![file("f", "honest", vv(&[(2, 1)]), now + 30)], T0 + 30);
        assert_eq!(later.clamped, 0, "within the allowance");
        assert!(matches!(later.outcomes[0], Outcome::Conflict { winner, .. } if winner == id(2)));
        assert_eq!(fx.global("f").0.content, ContentHash::of(b"honest"));
        fx.state.check_invariants();
        // Within the allowance nothing is touched; ties still go to the
        // larger id.
        let mut rec = file("g", "x", vv(&[(1, 1)]), now + MTIME_ALLOWANCE_SECS);
        assert!(!clamp_future_mtime(&mut rec, T0));
        assert_eq!(rec.mtime_ns, (now + MTIME_ALLOWANCE_SECS) * 1_000_000_000);
        let mut both = Fixture::new();
        both.join(1);
        both.join(2);
        both.state.announce(id(1), vec![file("h", "a", vv(&[(1, 1)]), now + 9_999_999)], T0);
        let out = both.state.announce(id(2), vec![file("h", "b", vv(&[(2, 1)]), now + 8_888_888)], T0);
        assert!(matches!(out.outcomes[0], Outcome::Conflict { winner, .. } if winner == id(2)), "tie: larger id");
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
    fn expiry_removes_holders_and_pages_nothing() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.announce(1, file("a", "x", vv(&[(1, 1)]), 1));
        fx.announce(1, file("b", "y", vv(&[(1, 1)]), 1));
        fx.state.have(id(2), &RelPath::new("a").unwrap(), &vv(&[(1, 1)]));
        let start = fx.now;
        assert_eq!(fx.state.next_deadline(), Some(start + Duration::from_secs(30)));
        assert_eq!(fx.state.next_page(id(2), 2).unwrap().delta.unwrap().decode().entries.len(), 2);
        // Peer 2 keeps talking, peer 1 goes silent.
        fx.state.touch(id(2), start + Duration::from_secs(20));
        assert!(fx.state.expire(start + Duration::from_secs(29), T0, |_| None).is_empty());
        let seq = fx.state.seq();
        assert_eq!(fx.state.expire(start + Duration::from_secs(30), T0, |_| None), vec![id(1)]);
        fx.state.check_invariants();
        assert_eq!(fx.global("a").2, vec![id(2)]);
        assert_eq!(fx.global("b").2, vec![]);
        assert_eq!(fx.state.seq(), seq, "no seq, no page");
        assert!(fx.state.next_page(id(2), 2).unwrap().delta.is_none());
        assert_eq!(fx.state.next_deadline(), Some(start + Duration::from_secs(50)));
        // Peer 2, which lacks "b", learns that no one holds it now when
        // it asks.
        assert_eq!(fx.state.sources(id(2), &RelPath::new("b").unwrap(), &vv(&[(1, 1)])), Some(vec![]));
        // An expired peer's stale session gets nothing.
        assert!(fx.state.next_page(id(1), 1).is_none());
        assert!(fx.state.sources(id(1), &RelPath::new("a").unwrap(), &vv(&[(1, 1)])).is_none());
        assert!(!fx.state.remove_peer(id(1), T0));
    }

    #[test]
    fn a_peer_heard_by_its_session_is_not_expired() {
        let mut fx = Fixture::new();
        fx.join(1);
        let start = fx.now;
        // Its session read a frame of it at 25 s that the actor has not
        // applied yet: not expired at 30 s, its deadline counts from then.
        let heard = start + Duration::from_secs(25);
        assert!(fx.state.expire(start + Duration::from_secs(30), T0, |_| Some(heard)).is_empty());
        assert_eq!(fx.state.next_deadline(), Some(start + Duration::from_secs(55)));
        // Heard too long ago counts for nothing.
        let late = start + Duration::from_secs(55);
        assert_eq!(fx.state.expire(late, T0, |_| Some(start)), vec![id(1)]);
        fx.state.check_invariants();
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
        let delta = fx.state.next_page(id(1), 42).unwrap().delta.unwrap().decode();
        assert_eq!(delta.from_seq, 1);
        assert_eq!(delta.to_seq, fx.state.seq());
        // A peer that lacks it learns the holder at its new address.
        fx.join(2);
        let delta = fx.state.next_page(id(2), 2).unwrap().delta.unwrap().decode();
        assert_eq!(delta.entries[0].holders, vec![Holder { peer_id: id(1), addr }]);
    }

    #[test]
    fn a_peer_lacking_a_record_hears_of_a_few_new_holders_and_asks_for_the_others() {
        let mut fx = Fixture::new();
        for n in 1..=12 {
            fx.join(n);
        }
        fx.announce(1, file("f", "x", vv(&[(1, 1)]), 1));
        let f = RelPath::new("f").unwrap();
        let page = |fx: &mut Fixture, n: u8| fx.state.next_page(id(n), u64::from(n)).unwrap().delta.map(|d| d.decode());
        assert_eq!(page(&mut fx, 12).unwrap().entries.len(), 1);
        // Holders 2..=8 are paged to peer 12 (it lacks the record) ...
        for n in 2..=HOLDER_FANOUT as u8 {
            assert!(fx.state.have(id(n), &f, &vv(&[(1, 1)])));
            assert_eq!(page(&mut fx, 12).unwrap().entries.len(), 1, "holder {n}");
        }
        // ... more are not: it knows eight sources. They take no seq, so
        // no session steps over them.
        for n in HOLDER_FANOUT as u8 + 1..=11 {
            let seq = fx.state.seq();
            assert!(fx.state.have(id(n), &f, &vv(&[(1, 1)])));
            assert_eq!(fx.state.seq(), seq, "holder {n} took a seq");
            assert!(page(&mut fx, 12).is_none(), "holder {n}");
        }
        // A peer that comes now lacks it and reads eight of the holders.
        fx.join(13);
        assert_eq!(page(&mut fx, 13).unwrap().entries[0].holders.len(), HOLDER_FANOUT);
        // Holders leaving are paged to no one; a peer lacking the record
        // asks and gets eight of the holders left, never one that left.
        for n in 1..=5 {
            assert!(fx.state.remove_peer(id(n), T0));
        }
        assert!(page(&mut fx, 12).is_none());
        let sources = fx.state.sources(id(12), &f, &vv(&[(1, 1)])).unwrap();
        let ids: BTreeSet<PeerId> = sources.iter().map(|h| h.peer_id).collect();
        assert_eq!(ids, (6..=11).map(id).collect(), "six holders are left");
        assert_eq!(sources[0].addr, SocketAddr::from(([127, 0, 0, 6], 4006)));
        // Not for another version: the delta of the global one comes anyway.
        assert!(fx.state.sources(id(12), &f, &vv(&[(1, 2)])).is_none());
        assert!(fx.state.sources(id(12), &RelPath::new("g").unwrap(), &vv(&[(1, 1)])).is_none());
        fx.state.check_invariants();
    }

    #[test]
    fn a_departure_from_a_synced_cluster_is_paged_to_no_one() {
        let mut fx = Fixture::new();
        for n in 1..=5 {
            fx.join(n);
        }
        let paths = ["a", "b", "c"];
        for p in paths {
            fx.announce(1, file(p, p, vv(&[(1, 1)]), 1));
            for n in 2..=5 {
                assert!(fx.state.have(id(n), &RelPath::new(p).unwrap(), &vv(&[(1, 1)])));
            }
        }
        let pages = |fx: &mut Fixture, n: u8| {
            let mut entries = Vec::new();
            while let Some(page) = fx.state.next_page(id(n), u64::from(n)) {
                entries.extend(page.delta.map(|d| d.decode().entries).unwrap_or_default());
                if !page.more {
                    break;
                }
            }
            entries
        };
        for n in 1..=5 {
            pages(&mut fx, n);
        }
        // Every peer holds every file; one leaving changes the holders of
        // all three entries and takes no seq: no one hears of it.
        let seq = fx.state.seq();
        assert!(fx.state.remove_peer(id(3), T0));
        assert_eq!(fx.state.seq(), seq, "a departure takes no seq");
        for n in [1, 2, 4, 5] {
            assert_eq!(pages(&mut fx, n), vec![], "peer {n}");
        }
        // Nor does a peer that lacks the records; it asks when the
        // holders it knows fail.
        fx.join(6);
        assert_eq!(pages(&mut fx, 6).len(), 3);
        assert!(fx.state.remove_peer(id(4), T0));
        assert_eq!(pages(&mut fx, 6), vec![]);
        for p in paths {
            let sources = fx.state.sources(id(6), &RelPath::new(p).unwrap(), &vv(&[(1, 1)])).unwrap();
            let mut ids: Vec<PeerId> = sources.iter().map(|h| h.peer_id).collect();
            ids.sort();
            assert_eq!(ids, vec![id(1), id(2), id(5)], "{p}");
        }
        fx.state.check_invariants();
    }

    #[test]
    fn a_delta_lists_a_few_holders_starting_after_the_peers_own_slot() {
        let mut fx = Fixture::new();
        for n in 1..=14 {
            fx.join(n);
        }
        fx.announce(1, file("f", "x", vv(&[(1, 1)]), 1));
        // Every peer but 3 and 9 holds it.
        for n in (2..=14).filter(|n| ![3, 9].contains(n)) {
            assert!(fx.state.have(id(n), &RelPath::new("f").unwrap(), &vv(&[(1, 1)])));
        }
        let listed = |fx: &mut Fixture, n: u8| -> Vec<PeerId> {
            fx.state.register(
                Arrival {
                    peer: id(n),
                    addr: SocketAddr::from(([127, 0, 0, n], 4000)),
                    session: 100 + u64::from(n),
                    seen_seq: 0,
                    epoch: 77,
                },
                fx.now,
                T0,
            );
            let delta = fx.state.next_page(id(n), 100 + u64::from(n)).unwrap().delta.unwrap().decode();
            delta
                .entries
                .iter()
                .find(|e| e.record.path.as_str() == "f")
                .unwrap()
                .holders
                .iter()
                .map(|h| h.peer_id)
                .collect()
        };
        // Slots go in order of arrival: peer n has slot n - 1, and a peer
        // that registers again takes the lowest free one (its own). Peer
        // 3 is sent to the eight holders after it; peer 9 to the five
        // after it, then the lowest three.
        let mut to_3 = listed(&mut fx, 3);
        let mut to_9 = listed(&mut fx, 9);
        to_3.sort();
        to_9.sort();
        let ids = |ns: &[u8]| ns.iter().map(|n| id(*n)).collect::<Vec<_>>();
        assert_eq!(to_3, ids(&[4, 5, 6, 7, 8, 10, 11, 12]));
        assert_eq!(to_9, ids(&[1, 2, 4, 10, 11, 12, 13, 14]));
        fx.state.check_invariants();
    }

    #[test]
    fn holder_changes_go_only_to_peers_that_lack_the_record() {
        let mut fx = Fixture::new();
        for n in 1..=3 {
            fx.join(n);
        }
        fx.announce(1, file("f", "x", vv(&[(1, 1)]), 1));
        for n in 1..=3 {
            let delta = fx.state.next_page(id(n), u64::from(n)).unwrap().delta.unwrap().decode();
            assert_eq!(delta.entries.len(), 1, "everyone gets the new record");
        }
        // Peer 2 fetched it: peer 3, which lacks it, hears of the new
        // source; peers 1 and 2 hold it and hear nothing.
        assert!(fx.state.have(id(2), &RelPath::new("f").unwrap(), &vv(&[(1, 1)])));
        let page = |fx: &mut Fixture, n: u8| fx.state.next_page(id(n), u64::from(n)).unwrap().delta.unwrap().decode();
        assert!(page(&mut fx, 1).entries.is_empty());
        assert!(page(&mut fx, 2).entries.is_empty());
        let to_3 = page(&mut fx, 3);
        assert_eq!(to_3.entries.len(), 1);
        assert_eq!(to_3.entries[0].holders.iter().map(|h| h.peer_id).collect::<Vec<_>>(), vec![id(1), id(2)]);
        // A new record version goes to everyone, holders or not.
        fx.announce(1, file("f", "y", vv(&[(1, 2)]), 2));
        for n in 1..=3 {
            assert_eq!(page(&mut fx, n).entries.len(), 1, "peer {n}");
        }
        fx.state.check_invariants();
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
        let d1 = first.delta.unwrap().decode();
        assert_eq!((d1.from_seq, d1.to_seq, d1.full, d1.entries.len()), (0, 4096, true, 4096));
        let second = fx.state.next_page(id(9), 9).unwrap();
        assert!(!second.more);
        let d2 = second.delta.unwrap().decode();
        assert_eq!((d2.from_seq, d2.to_seq, d2.full, d2.entries.len()), (4096, n as u64, true, 10));
        let caught_up = fx.state.next_page(id(9), 9).unwrap();
        assert!(caught_up.delta.is_none() && caught_up.notices.is_empty() && !caught_up.more, "{caught_up:?}");
        // Later changes are incremental.
        fx.announce(1, file("new", "x", vv(&[(1, 1)]), 1));
        let d3 = fx.state.next_page(id(9), 9).unwrap().delta.unwrap().decode();
        assert!(!d3.full);
        assert_eq!((d3.from_seq, d3.to_seq, d3.entries.len()), (n as u64, n as u64 + 1, 1));
        // A peer of this epoch that saw seq 4100 gets only what came after.
        let addr = SocketAddr::from(([127, 0, 0, 8], 1));
        assert!(
            !fx.state.register(Arrival { peer: id(8), addr, session: 8, seen_seq: 4100, epoch: 77 }, fx.now, T0).full
        );
        let d4 = fx.state.next_page(id(8), 8).unwrap().delta.unwrap().decode();
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
    fn removing_a_peer_takes_its_slot_out_of_every_holders_set_and_no_seq() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        let records: Vec<_> = (0..500).map(|i| file(&format!("f{i}"), "x", vv(&[(1, 1)]), 1)).collect();
        fx.state.announce(id(1), records, T0);
        for i in [3, 250, 499] {
            assert!(fx.state.have(id(2), &RelPath::new(&format!("f{i}")).unwrap(), &vv(&[(1, 1)])));
        }
        fx.state.check_invariants();
        let seq = fx.state.seq();
        assert!(fx.state.remove_peer(id(2), T0));
        fx.state.check_invariants();
        assert_eq!(fx.state.seq(), seq, "a departure takes no seq");
        for i in [3, 250, 499, 0] {
            assert_eq!(fx.global(&format!("f{i}")).2, vec![id(1)], "f{i}");
        }
        assert!(fx.state.remove_peer(id(1), T0));
        assert_eq!(fx.state.seq(), seq);
        for i in [0, 3, 499] {
            assert_eq!(fx.global(&format!("f{i}")).2, vec![], "f{i}");
        }
        fx.state.check_invariants();
    }

    #[test]
    fn slots_are_reused_and_a_new_peer_never_inherits_holdings() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.join(2);
        fx.state.announce(id(1), vec![file("f", "x", vv(&[(1, 1)]), 1)], T0);
        assert!(fx.state.have(id(2), &RelPath::new("f").unwrap(), &vv(&[(1, 1)])));
        assert_eq!(fx.global("f").2, vec![id(1), id(2)]);
        // Peer 2 leaves; peer 3 takes its slot and holds nothing yet.
        assert!(fx.state.remove_peer(id(2), T0));
        fx.join(3);
        fx.state.check_invariants();
        assert_eq!(fx.state.peers[&id(3)].slot, 1, "the freed slot is reused");
        assert_eq!(fx.global("f").2, vec![id(1)]);
        // Peers expiring together: one pass, every holders set cleaned.
        fx.join(4);
        assert!(fx.state.have(id(3), &RelPath::new("f").unwrap(), &vv(&[(1, 1)])));
        assert!(fx.state.have(id(4), &RelPath::new("f").unwrap(), &vv(&[(1, 1)])));
        let later = Instant::now() + Duration::from_secs(3600);
        let mut expired = fx.state.expire(later, T0 + 3600, |_| None);
        expired.sort_unstable();
        assert_eq!(expired, vec![id(1), id(3), id(4)]);
        fx.state.check_invariants();
        assert!(fx.global("f").2.is_empty());
        assert!(fx.state.slots.peers.iter().all(Option::is_none));
    }

    #[test]
    fn the_record_quota_stops_a_batch_at_the_first_record_beyond_it() {
        let mut fx = Fixture::new();
        fx.state.config.max_records_per_peer = 3;
        fx.state.config.max_records = 5;
        fx.join(1);
        fx.join(2);
        fx.join(3);
        let batch: Vec<_> = (0..5).map(|i| file(&format!("a{i}"), "x", vv(&[(1, 1)]), 1)).collect();
        let out = fx.state.announce(id(1), batch, T0);
        fx.state.check_invariants();
        assert_eq!(out.outcomes.len(), 3, "accepted up to the quota");
        let Some(Refusal::PeerQuota { authored: 3, max: 3, path }) = &out.refused else { panic!("{out:?}") };
        assert_eq!(path.as_str(), "a3");
        let reason = out.refused.as_ref().unwrap().to_string();
        assert!(reason.contains("max_records_per_peer") && reason.contains("a3"), "{reason}");
        assert_eq!(fx.state.counts(), (3, 0));
        // At the quota: its own entries can still be edited and re-announced,
        // and it can join the holders of others' entries.
        let edit = file("a0", "y", vv(&[(1, 2)]), 2);
        let again = file("a1", "x", vv(&[(1, 1)]), 1);
        assert!(fx.state.announce(id(1), vec![edit, again], T0).refused.is_none());
        fx.state.announce(id(2), vec![file("b0", "x", vv(&[(2, 1)]), 1)], T0);
        let holder = fx.state.announce(id(1), vec![file("b0", "x", vv(&[(2, 1)]), 1)], T0);
        assert!(matches!(holder.outcomes[..], [Outcome::Holder { .. }]) && holder.refused.is_none());
        // Taking over another peer's entry would add one: refused.
        let takeover = fx.state.announce(id(1), vec![file("b0", "z", vv(&[(2, 1), (1, 5)]), 3)], T0);
        assert!(matches!(takeover.refused, Some(Refusal::PeerQuota { .. })));
        // Another peer fills the table; then nobody adds entries.
        let out =
            fx.state.announce(id(2), vec![file("b1", "x", vv(&[(2, 1)]), 1), file("b2", "x", vv(&[(2, 1)]), 1)], T0);
        assert_eq!(out.outcomes.len(), 1);
        assert!(matches!(out.refused, Some(Refusal::TableFull { entries: 5, max: 5, .. })), "{out:?}");
        assert!(matches!(
            fx.state.announce(id(3), vec![file("c", "x", vv(&[(3, 1)]), 1)], T0).refused,
            Some(Refusal::TableFull { .. })
        ));
        // Collecting a tombstone makes room again.
        fx.state.announce(id(2), vec![tombstone("b1", vv(&[(2, 2)]), 2)], T0);
        fx.state.have(id(1), &RelPath::new("b1").unwrap(), &vv(&[(2, 2)]));
        fx.state.have(id(3), &RelPath::new("b1").unwrap(), &vv(&[(2, 2)]));
        assert_eq!(fx.state.gc_tombstones(T0), vec![RelPath::new("b1").unwrap()]);
        assert!(fx.state.announce(id(3), vec![file("c", "x", vv(&[(3, 1)]), 1)], T0).refused.is_none());
        fx.state.check_invariants();
    }

    #[test]
    fn tombstone_gc_runs_in_slices_after_a_cursor() {
        let mut fx = Fixture::new();
        fx.join(1);
        fx.announce(1, file("live", "x", vv(&[(1, 1)]), 1));
        for i in 0..10 {
            fx.announce(1, tombstone(&format!("t{i}"), vv(&[(1, 1)]), 1));
        }
        assert!(fx.state.start_gc(T0));
        assert!(!fx.state.start_gc(T0), "one pass at a time");
        let first = fx.state.gc_step(4);
        assert_eq!((first.dropped.len(), first.done), (3, false), "`live` is in the first slot: 3 of 4 are tombstones");
        // Events between slices: a tombstone behind the cursor (in a slot
        // freed by the slice) waits for the next pass, the rest of the pass
        // goes on.
        fx.announce(1, tombstone("a-new", vv(&[(1, 1)]), 1));
        let mut dropped = first.dropped;
        loop {
            let step = fx.state.gc_step(4);
            dropped.extend(step.dropped);
            fx.state.check_invariants();
            if step.done {
                break;
            }
        }
        assert_eq!(dropped.len(), 10);
        assert!(!fx.state.gc_active());
        assert_eq!(fx.state.counts(), (2, 1), "`live` and `a-new` are left");
        assert_eq!(fx.state.gc_tombstones(T0), vec![RelPath::new("a-new").unwrap()]);
        // Stepping without a pass does nothing.
        assert_eq!(fx.state.gc_step(4), GcStep { dropped: vec![], done: true });
    }

    #[test]
    fn a_tombstone_goes_when_the_peers_that_did_not_confirm_it_hold_it() {
        // Known peers 1..=4 acked seq 0, 2, 5, 9 (at their last Register);
        // a tombstone at record_seq 5 is unconfirmed by peers 1 and 2.
        struct Case {
            name: &'static str,
            holders: &'static [u8],
            collect: bool,
        }
        let cases = [
            Case { name: "nobody holds it", holders: &[], collect: false },
            Case { name: "one of the two holds it", holders: &[1], collect: false },
            Case { name: "both hold it", holders: &[1, 2], collect: true },
            Case { name: "confirmed peers hold it, not the others", holders: &[3, 4], collect: false },
            Case { name: "everyone holds it", holders: &[1, 2, 3, 4], collect: true },
        ];
        for case in cases {
            let mut fx = Fixture::new();
            for (n, acked) in [(1u8, 0u64), (2, 2), (3, 5), (4, 9)] {
                let addr = SocketAddr::from(([127, 0, 0, n], 1));
                fx.state.seq = fx.state.seq.max(acked);
                let arrival = Arrival { peer: id(n), addr, session: u64::from(n), seen_seq: acked, epoch: 77 };
                fx.state.register(arrival, fx.now, T0);
            }
            fx.state.seq = 4;
            fx.announce(4, tombstone("t", vv(&[(4, 1)]), 1));
            assert_eq!(fx.state.entry("t").unwrap().1, 5);
            for &h in case.holders {
                fx.state.have(id(h), &RelPath::new("t").unwrap(), &vv(&[(4, 1)]));
            }
            if !case.holders.contains(&4) {
                // The announcer holds it from its announcement; drop it for the table.
                fx.state.remove_peer(id(4), T0);
            }
            let dropped = fx.state.gc_tombstones(T0).len();
            assert_eq!(dropped == 1, case.collect, "{}", case.name);
        }
    }

    #[test]
    fn known_peers_are_bounded_and_the_oldest_offline_one_goes_first() {
        let mut fx = Fixture::new();
        let max = config().max_known_peers;
        // Peers 1..=max register, then leave at T0 + n (peer 1 first).
        for n in 1..=max as u8 {
            fx.join(n);
        }
        for n in 1..=max as u8 {
            fx.state.remove_peer(id(n), T0 + u64::from(n));
        }
        fx.state.take_dirty();
        // Peer 2 comes back (online: never evicted); two new peers arrive.
        fx.join(2);
        fx.join(100);
        fx.join(101);
        fx.state.check_invariants();
        assert_eq!(fx.state.known_count(), max);
        let write = fx.state.take_dirty();
        assert_eq!(write.delete_peers, vec![id(1), id(3)], "the two seen longest ago, skipping online peer 2");
        assert!(fx.state.known.contains_key(&id(2)) && fx.state.known.contains_key(&id(101)));
        // Restored with a lower bound: trimmed at once, persisted as deletes.
        let (epoch, entries, known) = fx.state.persisted_view();
        let lower = StateConfig { max_known_peers: 3, ..config() };
        let mut restored = State::restore(lower, TRACKER, epoch, fx.state.seq(), entries, known);
        restored.check_invariants();
        assert_eq!(restored.known_count(), 3);
        assert_eq!(restored.take_dirty().delete_peers.len(), max - 3);
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
