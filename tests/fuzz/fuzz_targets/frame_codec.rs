//! Fuzz target: a byte stream through `FrameCodec`, arriving in pieces, as
//! a connection delivers it; every frame is then decoded as a
//! `PeerMessage`. The first byte picks the piece size (its low 7 bits; 0:
//! all at once) and, with its top bit, a codec bound of 64 bytes
//! (`FrameCodec::with_max`) instead of the protocol's. No frame may exceed
//! its bound; nothing panics.
#![no_main]

use bytes::BytesMut;
use dartsync_shared::codec::{FrameCodec, decode};
use dartsync_shared::limits::MAX_FRAME_LEN;
use dartsync_shared::proto::ptp::PeerMessage;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let step = match usize::from(first & 0x7f) {
        0 => stream.len().max(1),
        n => n,
    };
    let bound = if first & 0x80 != 0 { 64 } else { MAX_FRAME_LEN };
    let mut codec = FrameCodec::with_max(bound);
    let mut buf = BytesMut::new();
    let frame = |frame: BytesMut| {
        assert!(frame.len() <= bound, "a frame of {} bytes passed a bound of {bound}", frame.len());
        if let Ok(msg) = decode::<PeerMessage>(&frame) {
            let _ = msg.validate();
        }
    };
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frame(f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(f)) = codec.decode_eof(&mut buf) {
        frame(f);
    }
});
