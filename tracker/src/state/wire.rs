//! Delta pages encoded straight from the table.
//!
//! A page used to be built as a `Delta` (a `FileRecord` per entry: a path
//! copy, a vector map, a holders list), handed to the session and encoded
//! there. Every one of those blocks was freed a moment later, between the
//! entries the table kept allocating meanwhile, and the holes they left
//! stayed in the heap: the load tool's tracker sat tens of MiB above its
//! table after paging 100,000 entries to 50 sessions. Now the actor
//! encodes the page into one buffer from the compact entries (borrowed
//! paths, [`RecordAt`]) and the session only sends it; the buffer of a big
//! page comes from `mmap` and goes back when it is sent.
//!
//! The bytes are exactly `codec::encode(&TrackerMessage::Delta(delta))` of
//! the `Delta` the page stands for; a test holds them to it.
//!
//! Not here: which entries a page holds (`State::next_page`).

use std::ops::Range;

use dartsync_shared::codec::{self, CodecError};
use dartsync_shared::proto::ptp::Holder;
use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};

use super::Entry;
use crate::compact::RecordAt;

/// `TrackerMessage::Delta`'s variant index (`Welcome` is 0).
const DELTA_VARIANT: u32 = 1;

/// One entry of a page: its path, the entry, and its holders' place in
/// the page's holder list.
#[derive(Debug)]
pub(super) struct PageEntry<'a> {
    pub path: &'a str,
    pub entry: &'a Entry,
    pub holders: Range<usize>,
}

/// A page's header and entries.
#[derive(Debug)]
pub(super) struct PageOut<'a> {
    pub epoch: u64,
    pub from_seq: u64,
    pub to_seq: u64,
    pub full: bool,
    pub entries: &'a [PageEntry<'a>],
    /// Every entry's holders, one after another.
    pub holders: &'a [Holder],
}

impl PageOut<'_> {
    /// The frame of `TrackerMessage::Delta` with this page.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(&AsMessage(self))
    }
}

struct AsMessage<'a>(&'a PageOut<'a>);

impl Serialize for AsMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("TrackerMessage", DELTA_VARIANT, "Delta", &AsDelta(self.0))
    }
}

struct AsDelta<'a>(&'a PageOut<'a>);

impl Serialize for AsDelta<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let page = self.0;
        let mut out = serializer.serialize_struct("Delta", 5)?;
        out.serialize_field("epoch", &page.epoch)?;
        out.serialize_field("from_seq", &page.from_seq)?;
        out.serialize_field("to_seq", &page.to_seq)?;
        out.serialize_field("full", &page.full)?;
        out.serialize_field("entries", &AsEntries(page))?;
        out.end()
    }
}

struct AsEntries<'a>(&'a PageOut<'a>);

impl Serialize for AsEntries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let page = self.0;
        let mut out = serializer.serialize_seq(Some(page.entries.len()))?;
        for e in page.entries {
            let holders = page.holders.get(e.holders.clone()).unwrap_or_default();
            out.serialize_element(&AsEntry { e, holders })?;
        }
        out.end()
    }
}

struct AsEntry<'a> {
    e: &'a PageEntry<'a>,
    holders: &'a [Holder],
}

impl Serialize for AsEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("DeltaEntry", 3)?;
        out.serialize_field("record", &RecordAt { path: self.e.path, record: &self.e.entry.record })?;
        out.serialize_field("seq", &self.e.entry.seq)?;
        out.serialize_field("holders", self.holders)?;
        out.end()
    }
}
