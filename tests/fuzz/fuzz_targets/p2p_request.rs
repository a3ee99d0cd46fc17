//! Fuzz target: bytes -> `P2pRequest` through `dartsync_shared::codec::decode`
//! (what the piece server reads from a downloader), then `validate`. Never panics; a decoded message re-encodes and
//! decodes back to itself.
#![no_main]

use dartsync_shared::codec::{decode, encode};
use dartsync_shared::proto::p2p::P2pRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode::<P2pRequest>(data) else { return };
    let valid = msg.validate().is_ok();
    if let Ok(bytes) = encode(&msg) {
        let again = decode::<P2pRequest>(&bytes).expect("a decoded message re-encodes to bytes that decode");
        assert_eq!(again, msg);
        assert_eq!(again.validate().is_ok(), valid);
    }
});
