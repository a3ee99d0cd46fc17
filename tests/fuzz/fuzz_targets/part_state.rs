//! Fuzz target: a download's `.part.state` file (`PartState::decode`), as
//! is and with a correct blake3 trailer appended (so mutations get past
//! the checksum to the field checks). Never panics; a state that decodes
//! re-encodes to exactly its bytes.
#![no_main]

use dartsync_peer::fuzzing::{part_state_reencodes, seal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_ne!(part_state_reencodes(data), Some(false), "a state file re-encodes to other bytes");
    assert_ne!(part_state_reencodes(&seal(data)), Some(false), "a sealed body re-encodes to other bytes");
});
