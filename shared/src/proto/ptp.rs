//! PTP: the peer <-> tracker protocol, on one long-lived connection per peer.
//!
//! The brief's REGISTER, Interval/Piece Length reply, FILE UPDATE and KEEP
//! ALIVE packets, made incremental and causal.
//!
//! # Session
//! 1. The peer connects and completes the Noise handshake; the tracker now
//!    knows the peer's public key, hence its [`PeerId`].
//! 2. Peer: [`PeerMessage::Register`] with its listen port, the last `seq`
//!    it applied and the tracker `epoch` that `seq` belongs to.
//! 3. Tracker: [`TrackerMessage::Welcome`] with the keep-alive interval,
//!    the piece length, its epoch and current seq.
//! 4. Peer: its whole local summary as one or more
//!    [`PeerMessage::Announce`] batches, so a restarted tracker rebuilds
//!    who holds what. Then incremental `Announce`s as local changes happen.
//! 5. Tracker: [`TrackerMessage::Delta`] messages carrying every entry whose
//!    `seq` is newer than what the peer has seen (all entries if the epoch
//!    differs), then one `Delta` per accepted change.
//! 6. Peer: [`PeerMessage::Have`] after each finished download;
//!    [`PeerMessage::KeepAlive`] every interval. A peer silent for three
//!    intervals is expired.
//!
//! # Register
//! `peer_id` must equal the id proven in the handshake; `seen_seq` and
//! `epoch` let the tracker send only what the peer missed; `name` is the
//! device name shown to people. A `probe` registration only fetches the
//! `Welcome` (the piece length, on a folder's first start): the tracker
//! answers it and forgets it.
//!
//! # Report, Devices, Conflict
//! A peer sends [`PeerMessage::Report`] when where it stands changes (at
//! most about once a second); the tracker sends every session
//! [`TrackerMessage::Devices`] after `Welcome` and whenever the list
//! changes (a device comes, goes, or becomes up to date or not), and
//! [`TrackerMessage::Conflict`] to the online holders of a version that
//! lost a conflict, after the delta that carries the copy.
//!
//! # Admission
//! A device the tracker holds for approval gets [`TrackerMessage::Pending`]
//! instead of `Welcome` (and again every interval; it answers each with
//! `KeepAlive` and sends nothing else), then `Welcome` on the same session
//! once it is admitted. A revoked device gets [`TrackerMessage::Revoked`]
//! (at `Register`, or at once when revoked mid-session) and the session
//! closes. `Devices` carries every device's [`DeviceState`]; peers serve
//! chunks only to admitted ones.
//!
//! # Announce
//! Up to [`MAX_RECORDS_PER_MESSAGE`] records and [`MAX_BATCH_BYTES`] encoded
//! bytes (cut with [`announce_batches`]), each a version of one path as the
//! peer holds it (tombstones included). The tracker accepts, ignores
//! (stale) or resolves a conflict for each, as DESIGN.md describes. A peer
//! authoring more entries of the table than the tracker's quota is refused
//! (`Refused`, with the reason) at the first record beyond it; the records
//! before it stay accepted.
//!
//! # Have
//! The peer now holds `version` of `path` (it finished a download); the
//! tracker adds it to the holders if that is still the global version.
//!
//! # Sources
//! A delta lists a few of an entry's holders (the tracker pages new
//! holders until an entry has a few, and never a holder's departure: in a
//! synced cluster that would page every entry the departing peer held to
//! every session). So a peer whose listed holders of a version could not
//! deliver (gone, unreachable, busy) sends [`PeerMessage::Sources`]; the
//! tracker answers [`TrackerMessage::Sources`] with the holders online
//! now (none: the peer waits for a delta that brings one), or nothing if
//! that is no longer the global version (the delta of the newer one is on
//! its way).
//!
//! # Delta
//! Entries with `seq` in `(from_seq, to_seq]`, each with the reachable
//! addresses of the peers holding exactly that version. `full` marks a
//! resend of the whole table after an epoch change. At most
//! [`MAX_RECORDS_PER_MESSAGE`] entries and [`MAX_BATCH_BYTES`] bytes.
//!
//! # Sizes
//! Every list and string is bounded while it is decoded, before it is
//! allocated (records, entries, holders, the reason; see
//! [`crate::codec`]), so a message claiming 250,000 records fails at its
//! length field. The tracker reads `Register` with
//! [`MAX_REGISTER_FRAME`](crate::limits::MAX_REGISTER_FRAME) and every
//! later message with [`MAX_BATCH_BYTES`]; tests below encode the largest
//! message of each kind against its bound.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ProtocolError, check_len};
use crate::codec::{bounded_string, bounded_vec};
use crate::device::{DeviceState, MAX_DEVICE_NAME};
use crate::id::PeerId;
use crate::limits::{
    MAX_BATCH_BYTES, MAX_DEVICES, MAX_HOLDERS_PER_ENTRY, MAX_REASON_LEN, MAX_RECORDS_PER_MESSAGE, MAX_REJECTED_PATHS,
    VARINT_MAX,
};
use crate::path::RelPath;
use crate::record::{FileKind, FileRecord};
use crate::version::VersionVector;

/// A peer's introduction, the first message after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The peer's id; must match the key proven in the handshake.
    pub peer_id: PeerId,
    /// The TCP port of the peer's piece server (its address is the one the
    /// tracker sees the connection come from).
    pub listen_port: u16,
    /// The last tracker `seq` whose changes the peer has applied.
    pub seen_seq: u64,
    /// The tracker epoch `seen_seq` belongs to (0 for a new peer).
    pub epoch: u64,
    /// The device's name (at most [`MAX_DEVICE_NAME`] bytes, no control
    /// characters; empty: the tracker shows the id).
    #[serde(deserialize_with = "device_name")]
    pub name: String,
    /// Only asking for the `Welcome` (a folder's first start learns the
    /// piece length): the tracker answers and forgets the session; the peer
    /// closes it at once.
    pub probe: bool,
}

impl Register {
    /// A registration of `peer_id` (not a probe).
    pub fn new(peer_id: PeerId, listen_port: u16, seen_seq: u64, epoch: u64, name: &str) -> Register {
        Register { peer_id, listen_port, seen_seq, epoch, name: name.to_owned(), probe: false }
    }
}

/// Where a peer stands, sent when it changes (at most about once a
/// second): the tracker shows every device as up to date or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The last tracker `seq` the peer has received and applied.
    pub seen_seq: u64,
    /// Nothing to fetch, install or announce, nothing waiting.
    pub up_to_date: bool,
    /// Files still to fetch.
    pub pending_files: u64,
    /// Bytes still to fetch.
    pub pending_bytes: u64,
    /// Paths that cannot take their newest version now.
    pub waiting: u64,
    /// Download rate, bytes per second.
    pub rate: u64,
}

/// One device of the cluster as the tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id.
    pub peer_id: PeerId,
    /// Its name (may be empty: then show the id).
    #[serde(deserialize_with = "device_name")]
    pub name: String,
    /// Registered right now.
    pub online: bool,
    /// Online, has seen every record change and reports nothing pending.
    pub up_to_date: bool,
    /// Unix seconds it was last seen, for an offline device (0: never or
    /// online).
    pub last_seen: u64,
    /// Admitted, pending or revoked: peers serve chunks only to admitted
    /// devices.
    pub state: DeviceState,
}

/// Sent to the device(s) whose version lost a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictNotice {
    /// The path whose name the winner kept.
    pub path: RelPath,
    /// Where the losing version is kept (`None`: it was a deletion, or no
    /// free name was found).
    pub copy: Option<RelPath>,
    /// The winner's device name.
    #[serde(deserialize_with = "device_name")]
    pub winner: String,
    /// The loser's device name.
    #[serde(deserialize_with = "device_name")]
    pub loser: String,
    /// Unix seconds when the tracker resolved it.
    pub at: u64,
}

/// The tracker's mass-change brake, about the receiving peer's own
/// changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrakeNotice {
    /// This peer's recent changes would delete or overwrite too much of the
    /// cluster at once: they (and what follows) are held at the tracker
    /// until an operator approves or rejects them there.
    Held {
        /// Deletions in the window that tripped the brake.
        deletes: u64,
        /// Overwrites in it.
        overwrites: u64,
        /// Live files in the table then.
        live: u64,
    },
    /// The operator approved: the held changes are published.
    Approved {
        /// How many records.
        records: u64,
    },
    /// The operator rejected the held changes to these paths: put the
    /// cluster's version back. Long lists come in several notices.
    Rejected {
        /// At most [`MAX_REJECTED_PATHS`] (bounded while decoding).
        #[serde(deserialize_with = "rejected_paths")]
        paths: Vec<RelPath>,
    },
}

/// Messages a peer sends to the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Introduction; answered by `Welcome`.
    Register(Register),
    /// Versions of paths as this peer holds them.
    Announce {
        /// The records, at most [`MAX_RECORDS_PER_MESSAGE`] (bounded while
        /// decoding).
        #[serde(deserialize_with = "announce_records")]
        records: Vec<FileRecord>,
    },
    /// The peer finished downloading `version` of `path`.
    Have {
        /// The path.
        path: RelPath,
        /// The version now held.
        version: VersionVector,
    },
    /// Heartbeat, every `interval`.
    KeepAlive,
    /// Clean disconnect: the peer leaves the peer table at once.
    Goodbye,
    /// Where the peer stands (see [`PeerReport`]).
    Report(PeerReport),
    /// The holders this peer knows of `version` of `path` could not
    /// deliver: which peers hold it now? (See the module header.)
    Sources {
        /// The path.
        path: RelPath,
        /// The version wanted.
        version: VersionVector,
    },
}

/// The tracker's answer to `Register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Keep-alive interval in milliseconds.
    pub interval_ms: u64,
    /// Average chunk size for FastCDC.
    pub piece_len: u32,
    /// The tracker's epoch: changes when its table was rebuilt from nothing.
    pub epoch: u64,
    /// The tracker's current seq.
    pub seq: u64,
}

/// A peer that holds one version, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's id.
    pub peer_id: PeerId,
    /// Its piece server: the address it connected from plus its listen port.
    pub addr: SocketAddr,
}

/// One changed entry of the global table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaEntry {
    /// The global record of the path.
    pub record: FileRecord,
    /// The seq of the entry's last change.
    pub seq: u64,
    /// Online peers holding exactly this version, at most
    /// [`MAX_HOLDERS_PER_ENTRY`] (bounded while decoding).
    #[serde(deserialize_with = "entry_holders")]
    pub holders: Vec<Holder>,
}

/// Changes of the global table a peer has not seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The tracker epoch.
    pub epoch: u64,
    /// Entries are newer than this seq.
    pub from_seq: u64,
    /// Entries are at most this seq; the peer's new `seen_seq`.
    pub to_seq: u64,
    /// A whole-table resend (epoch change).
    pub full: bool,
    /// The entries, at most [`MAX_RECORDS_PER_MESSAGE`] (bounded while
    /// decoding).
    #[serde(deserialize_with = "delta_entries")]
    pub entries: Vec<DeltaEntry>,
}

/// Messages the tracker sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerMessage {
    /// Answer to `Register`.
    Welcome(Welcome),
    /// Changes since the peer's `seen_seq`.
    Delta(Delta),
    /// The tracker refuses the session (full, wrong id, protocol breach);
    /// the connection closes after it.
    Refused {
        /// A human-readable reason, at most [`MAX_REASON_LEN`] bytes
        /// (bounded while decoding).
        #[serde(deserialize_with = "refusal_reason")]
        reason: String,
    },
    /// Every device the tracker knows, sent after `Welcome` and whenever
    /// one comes, goes, or becomes (not) up to date.
    Devices {
        /// At most [`MAX_DEVICES`] (bounded while decoding).
        #[serde(deserialize_with = "device_list")]
        devices: Vec<DeviceInfo>,
    },
    /// This peer's version of a path lost a conflict.
    Conflict(ConflictNotice),
    /// The mass-change brake held, released or rejected this peer's
    /// changes.
    Brake(BrakeNotice),
    /// Answer to `Register` of a device that waits for the operator's
    /// approval (`admit = "approve"`), repeated every interval while it
    /// waits (the peer answers each with `KeepAlive`). It gets nothing else
    /// until it is admitted; then `Welcome` follows on the same session.
    Pending {
        /// Keep-alive interval in milliseconds.
        interval_ms: u64,
    },
    /// This device is revoked: the session closes after this message, and
    /// every later registration is refused with it.
    Revoked,
    /// Answer to [`PeerMessage::Sources`]: the online peers holding
    /// `version` of `path` (a few of them), which is still the global
    /// version.
    Sources {
        /// The path asked about.
        path: RelPath,
        /// The version asked about.
        version: VersionVector,
        /// At most [`MAX_HOLDERS_PER_ENTRY`] (bounded while decoding);
        /// empty when no online peer holds it.
        #[serde(deserialize_with = "entry_holders")]
        holders: Vec<Holder>,
    },
}

fn rejected_paths<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RelPath>, D::Error> {
    bounded_vec(deserializer, MAX_REJECTED_PATHS, "rejected paths")
}

fn announce_records<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<FileRecord>, D::Error> {
    bounded_vec(deserializer, MAX_RECORDS_PER_MESSAGE, "announce records")
}

fn delta_entries<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<DeltaEntry>, D::Error> {
    bounded_vec(deserializer, MAX_RECORDS_PER_MESSAGE, "delta entries")
}

fn entry_holders<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Holder>, D::Error> {
    bounded_vec(deserializer, MAX_HOLDERS_PER_ENTRY, "holders")
}

fn device_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    bounded_string(deserializer, MAX_DEVICE_NAME, "device name")
}

fn device_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<DeviceInfo>, D::Error> {
    bounded_vec(deserializer, MAX_DEVICES, "devices")
}

/// Checks a device name from the wire: empty, or a valid name.
fn check_wire_name(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Ok(());
    }
    crate::device::check_device_name(name).map_err(|_| ProtocolError::Invalid("invalid device name"))
}

fn refusal_reason<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    bounded_string(deserializer, MAX_REASON_LEN, "refusal reason")
}

/// An upper bound of `record`'s encoded size, from its lengths alone (see
/// [`crate::limits::MAX_ENCODED_RECORD`] for the field-by-field count).
pub fn encoded_record_bound(record: &FileRecord) -> usize {
    let target = match &record.kind {
        FileKind::Symlink { target } => target.len(),
        FileKind::File | FileKind::Dir => 0,
    };
    (VARINT_MAX + record.path.as_str().len())
        + (1 + VARINT_MAX + target)
        + 2 * VARINT_MAX
        + 5
        + 64
        + (VARINT_MAX + record.version.len() * 2 * VARINT_MAX)
        + 1
}

/// Bytes of an `Announce` around its records: variant and list length.
const ANNOUNCE_OVERHEAD: usize = 1 + VARINT_MAX;

/// Cuts `records` into `Announce` batches, in order: each at most
/// [`MAX_RECORDS_PER_MESSAGE`] records and at most [`MAX_BATCH_BYTES`]
/// encoded bytes (by [`encoded_record_bound`]), so every batch fits the
/// tracker's frame bound whatever the records' sizes. Send each as
/// `PeerMessage::Announce { records: batch.to_vec() }`.
pub fn announce_batches(records: &[FileRecord]) -> impl Iterator<Item = &[FileRecord]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = ANNOUNCE_OVERHEAD;
        let mut n = 0;
        for record in rest.iter().take(MAX_RECORDS_PER_MESSAGE) {
            let size = encoded_record_bound(record);
            // One record always fits (MAX_ENCODED_RECORD is far below the budget).
            if n > 0 && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

impl PeerMessage {
    /// Checks a message received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            PeerMessage::Announce { records } => {
                check_len("announce records", records.len(), MAX_RECORDS_PER_MESSAGE)?;
                records.iter().try_for_each(|r| r.validate().map_err(Into::into))
            }
            PeerMessage::Register(r) => check_wire_name(&r.name),
            PeerMessage::Have { version, .. } => check_wanted("have", "have: empty version vector", version),
            PeerMessage::Sources { version, .. } => check_wanted("sources", "sources: empty version vector", version),
            _ => Ok(()),
        }
    }
}

/// The version of a `Have` or `Sources` (`what`): not empty (else
/// `empty`), every counter valid.
fn check_wanted(what: &'static str, empty: &'static str, version: &VersionVector) -> Result<(), ProtocolError> {
    if version.is_empty() {
        return Err(ProtocolError::Invalid(empty));
    }
    version.check().map_err(|source| ProtocolError::Version { what, source })
}

impl TrackerMessage {
    /// The message's name, for errors ("a Delta").
    pub fn kind(&self) -> &'static str {
        match self {
            TrackerMessage::Welcome(_) => "a Welcome",
            TrackerMessage::Delta(_) => "a Delta",
            TrackerMessage::Refused { .. } => "a Refused",
            TrackerMessage::Devices { .. } => "a device list",
            TrackerMessage::Conflict(_) => "a conflict notice",
            TrackerMessage::Brake(_) => "a brake notice",
            TrackerMessage::Pending { .. } => "a pending notice",
            TrackerMessage::Revoked => "a revocation",
            TrackerMessage::Sources { .. } => "a sources answer",
        }
    }

    /// Checks a message received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            TrackerMessage::Welcome(w) => {
                if !(crate::limits::MIN_PIECE_LEN..=crate::limits::MAX_PIECE_LEN).contains(&w.piece_len) {
                    return Err(ProtocolError::Invalid("welcome: piece length out of range"));
                }
                if w.interval_ms == 0 {
                    return Err(ProtocolError::Invalid("welcome: zero interval"));
                }
                Ok(())
            }
            TrackerMessage::Delta(d) => {
                check_len("delta entries", d.entries.len(), MAX_RECORDS_PER_MESSAGE)?;
                if d.to_seq < d.from_seq {
                    return Err(ProtocolError::Invalid("delta: to_seq before from_seq"));
                }
                for entry in &d.entries {
                    check_len("holders", entry.holders.len(), MAX_HOLDERS_PER_ENTRY)?;
                    entry.record.validate()?;
                }
                Ok(())
            }
            TrackerMessage::Refused { reason } => check_len("reason bytes", reason.len(), MAX_REASON_LEN),
            TrackerMessage::Devices { devices } => {
                check_len("devices", devices.len(), MAX_DEVICES)?;
                devices.iter().try_for_each(|d| check_wire_name(&d.name))
            }
            TrackerMessage::Conflict(n) => {
                check_wire_name(&n.winner)?;
                check_wire_name(&n.loser)
            }
            TrackerMessage::Brake(BrakeNotice::Rejected { paths }) => {
                check_len("rejected paths", paths.len(), MAX_REJECTED_PATHS)
            }
            TrackerMessage::Brake(_) => Ok(()),
            TrackerMessage::Pending { interval_ms } => {
                if *interval_ms == 0 {
                    return Err(ProtocolError::Invalid("pending: zero interval"));
                }
                Ok(())
            }
            TrackerMessage::Revoked => Ok(()),
            TrackerMessage::Sources { version, holders, .. } => {
                check_len("holders", holders.len(), MAX_HOLDERS_PER_ENTRY)?;
                check_wanted("sources", "sources: empty version vector", version)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::id::ShortId;
    use crate::test_util::RecordBuilder;

    fn sample_record() -> FileRecord {
        RecordBuilder::file("docs/a b.txt").body("hello").vv(&[(7, 2)]).build()
    }

    fn peer_messages() -> Vec<PeerMessage> {
        vec![
            PeerMessage::Register(Register::new(PeerId([3; 16]), 4242, 17, 99, "bobs-laptop")),
            PeerMessage::Announce { records: vec![sample_record()] },
            PeerMessage::Have {
                path: RelPath::new("x").unwrap(),
                version: VersionVector::from_entries([(ShortId(1), 1)]),
            },
            PeerMessage::KeepAlive,
            PeerMessage::Goodbye,
            PeerMessage::Report(PeerReport {
                seen_seq: 9,
                up_to_date: false,
                pending_files: 2,
                pending_bytes: 3,
                waiting: 1,
                rate: 4,
            }),
            PeerMessage::Sources {
                path: RelPath::new("x").unwrap(),
                version: VersionVector::from_entries([(ShortId(1), 1)]),
            },
        ]
    }

    fn tracker_messages() -> Vec<TrackerMessage> {
        vec![
            TrackerMessage::Welcome(Welcome { interval_ms: 10_000, piece_len: 262_144, epoch: 5, seq: 6 }),
            TrackerMessage::Delta(Delta {
                epoch: 5,
                from_seq: 1,
                to_seq: 2,
                full: false,
                entries: vec![DeltaEntry {
                    record: sample_record(),
                    seq: 2,
                    holders: vec![Holder { peer_id: PeerId([1; 16]), addr: "127.0.0.1:9".parse().unwrap() }],
                }],
            }),
            TrackerMessage::Refused { reason: "full".into() },
            TrackerMessage::Devices {
                devices: vec![DeviceInfo {
                    peer_id: PeerId([2; 16]),
                    name: "pi".into(),
                    online: true,
                    up_to_date: false,
                    last_seen: 0,
                    state: DeviceState::Pending,
                }],
            },
            TrackerMessage::Conflict(ConflictNotice {
                path: RelPath::new("doc.txt").unwrap(),
                copy: Some(RelPath::new("doc.sync-conflict-20261201-202659-bob.txt").unwrap()),
                winner: "alice".into(),
                loser: "bob".into(),
                at: 1,
            }),
            TrackerMessage::Brake(BrakeNotice::Rejected { paths: vec![RelPath::new("a/b").unwrap()] }),
            TrackerMessage::Pending { interval_ms: 1000 },
            TrackerMessage::Revoked,
            TrackerMessage::Sources {
                path: RelPath::new("x").unwrap(),
                version: VersionVector::from_entries([(ShortId(1), 1)]),
                holders: vec![Holder { peer_id: PeerId([1; 16]), addr: "[::1]:9".parse().unwrap() }],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in peer_messages() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<PeerMessage>(&bytes).unwrap(), msg);
            msg.validate().unwrap();
        }
        for msg in tracker_messages() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<TrackerMessage>(&bytes).unwrap(), msg);
            msg.validate().unwrap();
        }
    }

    #[test]
    fn variant_order_is_pinned() {
        // The first byte is the variant index: reordering variants breaks this.
        let firsts: Vec<u8> = peer_messages().iter().map(|m| encode(m).unwrap()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 3, 4, 5, 6]);
        let firsts: Vec<u8> = tracker_messages().iter().map(|m| encode(m).unwrap()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(encode(&PeerMessage::KeepAlive).unwrap(), [3]);
        assert_eq!(
            encode(&PeerMessage::Register(Register::new(PeerId([0; 16]), 1, 2, 3, "a"))).unwrap(),
            [[0u8].as_slice(), &[0; 16], &[1, 2, 3], &[1, b'a'], &[0]].concat()
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let mut register = Register::new(PeerId([1; 16]), 1, 0, 0, "ok");
        register.name = "evil\x1b[2J".into();
        assert!(PeerMessage::Register(register.clone()).validate().is_err());
        register.name = "n".repeat(MAX_DEVICE_NAME + 1);
        let bytes = encode(&PeerMessage::Register(register)).unwrap();
        assert!(decode::<PeerMessage>(&bytes).is_err(), "a long name fails while decoding");
        let notice = ConflictNotice {
            path: RelPath::new("a").unwrap(),
            copy: None,
            winner: "a\nb".into(),
            loser: "c".into(),
            at: 0,
        };
        assert!(TrackerMessage::Conflict(notice).validate().is_err());
    }

    #[test]
    fn unknown_variant_is_an_error() {
        assert!(decode::<PeerMessage>(&[200]).is_err());
        assert!(decode::<TrackerMessage>(&[8]).is_err());
    }

    #[test]
    fn hostile_path_fails_to_decode() {
        let mut rec = sample_record();
        let good = encode(&PeerMessage::Announce { records: vec![rec.clone()] }).unwrap();
        assert!(decode::<PeerMessage>(&good).is_ok());
        // Same shape, but a path that climbs out: built by hand since RelPath refuses it.
        rec.path = RelPath::new("aaaaaaaaaaaaaaaaaaa").unwrap();
        let bytes = encode(&PeerMessage::Announce { records: vec![rec] }).unwrap();
        let needle = b"aaaaaaaaaaaaaaaaaaa";
        let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut evil = bytes.clone();
        evil[at..at + needle.len()].copy_from_slice(b"../../../etc/passwd");
        assert!(decode::<PeerMessage>(&evil).is_err());
    }

    #[test]
    fn validation_rejects_oversized_batches() {
        let records = vec![sample_record(); MAX_RECORDS_PER_MESSAGE + 1];
        assert!(PeerMessage::Announce { records }.validate().is_err());
        let bad = TrackerMessage::Welcome(Welcome { interval_ms: 0, piece_len: 262_144, epoch: 1, seq: 0 });
        assert!(bad.validate().is_err());
        assert!(TrackerMessage::Pending { interval_ms: 0 }.validate().is_err());
    }

    /// A path of exactly `MAX_PATH_LEN` bytes.
    fn longest_path() -> String {
        let unit = format!("{}/", "p".repeat(254));
        let mut path = unit.repeat(crate::limits::MAX_PATH_LEN / unit.len());
        path.push_str(&"q".repeat(crate::limits::MAX_PATH_LEN - path.len()));
        assert_eq!(path.len(), crate::limits::MAX_PATH_LEN);
        path
    }

    /// A vector of `MAX_VERSION_ENTRIES` entries with 9-byte varints.
    fn longest_version() -> VersionVector {
        use crate::limits::{MAX_COUNTER, MAX_VERSION_ENTRIES};
        VersionVector::from_entries((0..MAX_VERSION_ENTRIES as u64).map(|i| (ShortId(u64::MAX - i), MAX_COUNTER)))
    }

    /// The largest record the encoding allows (not a valid one: validation
    /// is not the point, bytes are).
    fn largest_record() -> FileRecord {
        use crate::limits::MAX_LINK_TARGET_LEN;
        FileRecord {
            path: RelPath::new(&longest_path()).unwrap(),
            kind: FileKind::Symlink { target: "t".repeat(MAX_LINK_TARGET_LEN) },
            size: u64::MAX,
            mtime_ns: i64::MIN,
            mode: u32::MAX,
            content: crate::id::ContentHash([0xFF; 32]),
            chunks: crate::id::ContentHash([0xFF; 32]),
            version: longest_version(),
            deleted: true,
        }
    }

    #[test]
    fn the_largest_message_of_each_kind_fits_its_bound() {
        use crate::limits::{MAX_CONTROL_FRAME, MAX_ENCODED_RECORD, MAX_REGISTER_FRAME};
        let mut register = Register::new(PeerId([0xFF; 16]), u16::MAX, u64::MAX, u64::MAX, "");
        register.name = "n".repeat(MAX_DEVICE_NAME);
        let register = PeerMessage::Register(register);
        let len = encode(&register).unwrap().len();
        assert!(len <= MAX_REGISTER_FRAME && len + 16 > MAX_REGISTER_FRAME, "{len} vs {MAX_REGISTER_FRAME}");
        let devices = TrackerMessage::Devices {
            devices: vec![
                DeviceInfo {
                    peer_id: PeerId([0xFF; 16]),
                    name: "n".repeat(MAX_DEVICE_NAME),
                    online: true,
                    up_to_date: true,
                    last_seen: u64::MAX,
                    state: DeviceState::Revoked,
                };
                MAX_DEVICES
            ],
        };
        assert!(encode(&devices).unwrap().len() <= MAX_BATCH_BYTES);
        let rejected = TrackerMessage::Brake(BrakeNotice::Rejected {
            paths: vec![RelPath::new(&longest_path()).unwrap(); MAX_REJECTED_PATHS],
        });
        assert!(encode(&rejected).unwrap().len() <= MAX_BATCH_BYTES);
        let too_many = TrackerMessage::Brake(BrakeNotice::Rejected {
            paths: vec![RelPath::new("a").unwrap(); MAX_REJECTED_PATHS + 1],
        });
        assert!(decode::<TrackerMessage>(&encode(&too_many).unwrap()).is_err());
        let have = PeerMessage::Have { path: RelPath::new(&longest_path()).unwrap(), version: longest_version() };
        let have = encode(&have).unwrap().len();
        assert!(have <= MAX_CONTROL_FRAME && have + 32 > MAX_CONTROL_FRAME, "{have} vs {MAX_CONTROL_FRAME}");
        let ask = PeerMessage::Sources { path: RelPath::new(&longest_path()).unwrap(), version: longest_version() };
        let ask = encode(&ask).unwrap().len();
        assert!(ask <= MAX_CONTROL_FRAME, "{ask} vs {MAX_CONTROL_FRAME}");
        let holder = Holder { peer_id: PeerId([0xFF; 16]), addr: "[ffff::ffff]:65535".parse().unwrap() };
        let answer = TrackerMessage::Sources {
            path: RelPath::new(&longest_path()).unwrap(),
            version: longest_version(),
            holders: vec![holder; MAX_HOLDERS_PER_ENTRY],
        };
        assert!(encode(&answer).unwrap().len() <= MAX_BATCH_BYTES);
        let record = largest_record();
        let bytes = crate::codec::encoded_len(&record).unwrap();
        assert!(bytes <= MAX_ENCODED_RECORD && bytes + 32 > MAX_ENCODED_RECORD, "{bytes} vs {MAX_ENCODED_RECORD}");
        assert!(encoded_record_bound(&record) >= bytes);
        for record in [sample_record(), RecordBuilder::symlink("a/l", "../b").build(), record] {
            assert!(encoded_record_bound(&record) >= crate::codec::encoded_len(&record).unwrap());
        }
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes() {
        use crate::limits::MAX_ENCODED_RECORD;
        let small = vec![sample_record(); MAX_RECORDS_PER_MESSAGE * 2 + 5];
        let sizes: Vec<usize> = announce_batches(&small).map(<[_]>::len).collect();
        assert_eq!(sizes, [MAX_RECORDS_PER_MESSAGE, MAX_RECORDS_PER_MESSAGE, 5]);
        // Records of the largest size: cut by bytes, every batch within the bound.
        let big = vec![largest_record(); 2 * MAX_BATCH_BYTES / MAX_ENCODED_RECORD];
        let batches: Vec<&[FileRecord]> = announce_batches(&big).collect();
        assert!(batches.len() >= 2, "{}", batches.len());
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), big.len());
        for batch in batches {
            let len = encode(&PeerMessage::Announce { records: batch.to_vec() }).unwrap().len();
            assert!(len <= MAX_BATCH_BYTES, "{len}");
        }
        assert_eq!(announce_batches(&[]).count(), 0);
    }

    #[test]
    fn an_announce_claiming_250000_records_fails_at_its_length_field() {
        // Variant 1 (Announce), the claimed count, then 5,000 real records:
        // refused at the count, before one record is decoded.
        let one = crate::codec::encoded_len(&sample_record()).unwrap();
        let whole = encode(&PeerMessage::Announce { records: vec![sample_record(); 5_000] }).unwrap();
        let records = &whole[whole.len() - 5_000 * one..];
        // 250,000 takes bincode's 4-byte varint form: 0xFC, then u32 LE.
        let mut bytes = vec![1u8, 0xFC];
        bytes.extend_from_slice(&250_000u32.to_le_bytes());
        bytes.extend_from_slice(records);
        let err = decode::<PeerMessage>(&bytes).unwrap_err().to_string();
        assert!(err.contains("announce records: 250000 entries exceed the limit of 4096"), "{err}");
        // One more than the limit, all present: refused; exactly the limit decodes.
        let over = encode(&PeerMessage::Announce { records: vec![sample_record(); MAX_RECORDS_PER_MESSAGE + 1] });
        let err = decode::<PeerMessage>(&over.unwrap()).unwrap_err().to_string();
        assert!(err.contains("4097 entries exceed the limit of 4096"), "{err}");
        let at = PeerMessage::Announce { records: vec![sample_record(); MAX_RECORDS_PER_MESSAGE] };
        assert_eq!(decode::<PeerMessage>(&encode(&at).unwrap()).unwrap(), at);
        // The same for holders and a reason beyond their bounds.
        let holder = Holder { peer_id: PeerId([1; 16]), addr: "127.0.0.1:9".parse().unwrap() };
        let entry = DeltaEntry { record: sample_record(), seq: 1, holders: vec![holder; MAX_HOLDERS_PER_ENTRY + 1] };
        let delta =
            TrackerMessage::Delta(Delta { epoch: 1, from_seq: 0, to_seq: 1, full: false, entries: vec![entry] });
        assert!(decode::<TrackerMessage>(&encode(&delta).unwrap()).unwrap_err().to_string().contains("holders"));
        let refused = TrackerMessage::Refused { reason: "r".repeat(MAX_REASON_LEN + 1) };
        assert!(decode::<TrackerMessage>(&encode(&refused).unwrap()).unwrap_err().to_string().contains("reason"));
        // Strings inside records too: a symlink target beyond every wire
        // string, refused on its length before it is copied.
        let long = FileRecord { kind: FileKind::Symlink { target: "t".repeat(5000) }, ..sample_record() };
        let err = decode::<PeerMessage>(&encode(&PeerMessage::Announce { records: vec![long] }).unwrap()).unwrap_err();
        assert!(err.to_string().contains("string of 5000 bytes exceeds the limit of 4096"), "{err}");
    }

    #[test]
    fn counters_past_the_limit_are_invalid_in_every_message() {
        use crate::limits::MAX_COUNTER;
        use crate::version::VersionError;
        let forged = VersionVector::from_entries([(ShortId(7), u64::MAX)]);
        let want = VersionError::CounterTooLarge { peer: ShortId(7), counter: u64::MAX };
        let record = FileRecord { version: forged.clone(), ..sample_record() };
        // It encodes and decodes fine: validation is what refuses it.
        let announce =
            decode::<PeerMessage>(&encode(&PeerMessage::Announce { records: vec![record.clone()] }).unwrap());
        match announce.unwrap().validate() {
            Err(ProtocolError::Record(crate::record::RecordError::BadVersion { source, .. })) => {
                assert_eq!(source, want)
            }
            other => panic!("{other:?}"),
        }
        let have = PeerMessage::Have { path: RelPath::new("x").unwrap(), version: forged.clone() };
        assert!(matches!(have.validate(), Err(ProtocolError::Version { source, .. }) if source == want));
        // A question and an answer about sources: a forged or an empty version is refused.
        let x = RelPath::new("x").unwrap();
        let ask = PeerMessage::Sources { path: x.clone(), version: forged.clone() };
        assert!(matches!(ask.validate(), Err(ProtocolError::Version { what: "sources", source }) if source == want));
        let empty = PeerMessage::Sources { path: x.clone(), version: VersionVector::new() };
        assert_eq!(empty.validate(), Err(ProtocolError::Invalid("sources: empty version vector")));
        let answer = TrackerMessage::Sources { path: x.clone(), version: forged, holders: vec![] };
        assert!(matches!(answer.validate(), Err(ProtocolError::Version { source, .. }) if source == want));
        let holder = Holder { peer_id: PeerId([1; 16]), addr: "127.0.0.1:9".parse().unwrap() };
        let crowded = TrackerMessage::Sources {
            path: x,
            version: VersionVector::from_entries([(ShortId(7), 1)]),
            holders: vec![holder; MAX_HOLDERS_PER_ENTRY + 1],
        };
        assert!(decode::<TrackerMessage>(&encode(&crowded).unwrap()).unwrap_err().to_string().contains("holders"));
        let delta = TrackerMessage::Delta(Delta {
            epoch: 1,
            from_seq: 0,
            to_seq: 1,
            full: false,
            entries: vec![DeltaEntry { record, seq: 1, holders: vec![] }],
        });
        assert!(delta.validate().is_err());
        let at_limit =
            FileRecord { version: VersionVector::from_entries([(ShortId(7), MAX_COUNTER)]), ..sample_record() };
        PeerMessage::Announce { records: vec![at_limit] }.validate().unwrap();
    }
}
