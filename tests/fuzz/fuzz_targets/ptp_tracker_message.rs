//! Fuzz target: bytes -> `TrackerMessage` through `dartsync_shared::codec::decode`
//! (what a peer reads from the tracker), then `validate`. Never panics; a decoded message re-encodes and
//! decodes back to itself.
#![no_main]

use dartsync_shared::codec::{decode, encode};
use dartsync_shared::proto::ptp::TrackerMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode::<TrackerMessage>(data) else { return };
    let valid = msg.validate().is_ok();
    if let Ok(bytes) = encode(&msg) {
        let again = decode::<TrackerMessage>(&bytes).expect("a decoded message re-encodes to bytes that decode");
        assert_eq!(again, msg);
        assert_eq!(again.validate().is_ok(), valid);
    }
});
