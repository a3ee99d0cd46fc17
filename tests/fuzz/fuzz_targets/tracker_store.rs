//! Fuzz target: the tracker's database values (meta, entries, known peers)
//! stored raw in `tracker.redb` and loaded as at start-up, as
//! `dartsync_tracker::fuzzing::store_input` describes (first byte: which
//! table). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = dartsync_tracker::fuzzing::store_input(data) {
        panic!("{e}");
    }
});
