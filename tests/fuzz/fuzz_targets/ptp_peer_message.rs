//! Fuzz target: bytes -> `PeerMessage` through `dartsync_shared::codec::decode`
//! (what the tracker reads from each peer frame), then `validate`. Never panics; a decoded message re-encodes and
//! decodes back to itself.
#![no_main]

use dartsync_shared::codec::{decode, encode};
use dartsync_shared::proto::ptp::PeerMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode::<PeerMessage>(data) else { return };
    let valid = msg.validate().is_ok();
    if let Ok(bytes) = encode(&msg) {
        let again = decode::<PeerMessage>(&bytes).expect("a decoded message re-encodes to bytes that decode");
        assert_eq!(again, msg);
        assert_eq!(again.validate().is_ok(), valid);
    }
});
