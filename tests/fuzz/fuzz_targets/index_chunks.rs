//! Fuzz target: a peer index chunk list (the `chunk_lists` table of
//! `.dartsync/index.redb`) stored raw under a valid live file and read back
//! through the index (`dartsync_peer::fuzzing::index_chunks`). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = dartsync_peer::fuzzing::index_chunks(data) {
        panic!("{e}");
    }
});
