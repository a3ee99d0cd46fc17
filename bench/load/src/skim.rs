//! Reading a delta page's head without its entries (`--skim`): the seq it
//! brings a session to and how many entries it holds.
//!
//! A run of 1,000 sessions × 1,000,000 records sends about 100 GB of
//! pages; decoding and validating every entry in the load tool would need
//! more CPU than the tracker under test, on the same 2 cores. A skimming
//! session still receives and decrypts every byte (the tracker's work and
//! buffers are the same), but reads only the fields before the entries.
//!
//! The head follows bincode 2's standard encoding of
//! `TrackerMessage::Delta(Delta { epoch, from_seq, to_seq, full, entries })`
//! as `shared::codec` writes it: the variant index, then the fields in
//! order (varints, a bool byte), then the entries' count. The unit test
//! encodes real messages with `shared::codec`, so a change of `Delta` or of
//! the encoding fails it.

/// The variant index of `TrackerMessage::Delta`.
const DELTA_VARIANT: u32 = 1;

/// What a session needs from a delta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHead {
    /// The session's seq after this page.
    pub to_seq: u64,
    /// Entries in the page.
    pub entries: u64,
}

/// The head of `frame` if it is a delta page (`None` for any other
/// message, or bytes that are not a delta's head).
pub fn delta_head(frame: &[u8]) -> Option<DeltaHead> {
    type Head = (u32, u64, u64, u64, bool, u64);
    let ((variant, _epoch, _from, to_seq, _full, entries), _) =
        bincode::decode_from_slice::<Head, _>(frame, bincode::config::standard()).ok()?;
    (variant == DELTA_VARIANT).then_some(DeltaHead { to_seq, entries })
}

#[cfg(test)]
mod tests {
    use dartsync_shared::codec;
    use dartsync_shared::proto::ptp::{Delta, TrackerMessage};

    use super::*;
    use crate::layout;

    #[test]
    fn the_head_of_a_real_page_reads_as_the_whole_page_decodes() {
        let author = dartsync_shared::key::Identity::generate().peer_id();
        let entries: Vec<_> = (0..300)
            .map(|i| dartsync_shared::proto::ptp::DeltaEntry {
                record: layout::record(i, author),
                seq: 1_000_000 + i as u64,
                holders: Vec::new(),
            })
            .collect();
        for (count, to_seq, full) in [(0, 0, false), (1, 7, true), (300, 1_000_299, false), (129, u64::MAX, false)] {
            let delta = Delta { epoch: 3, from_seq: 2, to_seq, full, entries: entries[..count].to_vec() };
            let frame = codec::encode(&TrackerMessage::Delta(delta)).unwrap();
            assert_eq!(delta_head(&frame), Some(DeltaHead { to_seq, entries: count as u64 }));
        }
    }

    #[test]
    fn other_messages_have_no_head() {
        let devices = codec::encode(&TrackerMessage::Devices { devices: Vec::new() }).unwrap();
        assert_eq!(delta_head(&devices), None);
        assert_eq!(delta_head(&codec::encode(&TrackerMessage::Revoked).unwrap()), None);
        assert_eq!(delta_head(&[]), None);
        assert_eq!(delta_head(&[1, 0xff]), None, "truncated");
    }
}
