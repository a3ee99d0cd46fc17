//! Fuzz target: a peer index entry (record + stat, the `entries` table of
//! `.dartsync/index.redb`) stored raw and read back through the index, as
//! `dartsync_peer::fuzzing::index_entry_input` describes (`key NUL value`).
//! Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = dartsync_peer::fuzzing::index_entry_input(data) {
        panic!("{e}");
    }
});
