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
//! `epoch` let the tracker send only what the peer missed.
//!
//! # Announce
//! Up to [`MAX_RECORDS_PER_MESSAGE`] records, each a version of one path as
//! the peer holds it (tombstones included). The tracker accepts, ignores
//! (stale) or resolves a conflict for each, as DESIGN.md describes.
//!
//! # Have
//! The peer now holds `version` of `path` (it finished a download); the
//! tracker adds it to the holders if that is still the global version.
//!
//! # Delta
//! Entries with `seq` in `(from_seq, to_seq]`, each with the reachable
//! addresses of the peers holding exactly that version. `full` marks a
//! resend of the whole table after an epoch change.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ProtocolError, check_len};
use crate::id::PeerId;
use crate::limits::{MAX_HOLDERS_PER_ENTRY, MAX_REASON_LEN, MAX_RECORDS_PER_MESSAGE};
use crate::path::RelPath;
use crate::record::FileRecord;
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
}

/// Messages a peer sends to the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Introduction; answered by `Welcome`.
    Register(Register),
    /// Versions of paths as this peer holds them.
    Announce {
        /// The records, at most [`MAX_RECORDS_PER_MESSAGE`].
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
    /// Online peers holding exactly this version.
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
    /// The entries, at most [`MAX_RECORDS_PER_MESSAGE`].
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
        /// A human-readable reason.
        reason: String,
    },
}

impl PeerMessage {
    /// Checks a message received from the network.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            PeerMessage::Announce { records } => {
                check_len("announce records", records.len(), MAX_RECORDS_PER_MESSAGE)?;
                records.iter().try_for_each(|r| r.validate().map_err(Into::into))
            }
            PeerMessage::Have { version, .. } => {
                if version.is_empty() {
                    return Err(ProtocolError::Invalid("have: empty version vector"));
                }
                version.check().map_err(|source| ProtocolError::Version { what: "have", source })
            }
            _ => Ok(()),
        }
    }
}

impl TrackerMessage {
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
            PeerMessage::Register(Register { peer_id: PeerId([3; 16]), listen_port: 4242, seen_seq: 17, epoch: 99 }),
            PeerMessage::Announce { records: vec![sample_record()] },
            PeerMessage::Have {
                path: RelPath::new("x").unwrap(),
                version: VersionVector::from_entries([(ShortId(1), 1)]),
            },
            PeerMessage::KeepAlive,
            PeerMessage::Goodbye,
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
        assert_eq!(firsts, [0, 1, 2, 3, 4]);
        let firsts: Vec<u8> = tracker_messages().iter().map(|m| encode(m).unwrap()[0]).collect();
        assert_eq!(firsts, [0, 1, 2]);
        assert_eq!(encode(&PeerMessage::KeepAlive).unwrap(), [3]);
        assert_eq!(
            encode(&PeerMessage::Register(Register {
                peer_id: PeerId([0; 16]),
                listen_port: 1,
                seen_seq: 2,
                epoch: 3
            }))
            .unwrap(),
            [[0u8].as_slice(), &[0; 16], &[1, 2, 3]].concat()
        );
    }

    #[test]
    fn unknown_variant_is_an_error() {
        assert!(decode::<PeerMessage>(&[200]).is_err());
        assert!(decode::<TrackerMessage>(&[3]).is_err());
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
        let have = PeerMessage::Have { path: RelPath::new("x").unwrap(), version: forged };
        assert!(matches!(have.validate(), Err(ProtocolError::Version { source, .. }) if source == want));
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
