//! Bytes <-> messages: the bincode encoding and the length-prefixed frame
//! codec. Every encode and decode call of DartSync goes through here.
//!
//! bincode 2 is pinned (`=2.0.1`; 3.x is an empty release and the crate is
//! unmaintained), so keeping it behind [`encode`] / [`decode`] means a later
//! switch of format touches this one file.
//!
//! # Frames
//! A frame is a big-endian `u32` length followed by that many bytes of one
//! encoded message. [`FrameCodec`] checks the length prefix against its
//! maximum ([`MAX_FRAME_LEN`], or a tighter bound per call with
//! [`FrameCodec::decode_bounded`]) as soon as the four prefix bytes are
//! there, before any byte of the body is buffered or reserved; a receiver
//! that knows which message comes next reads it with that message's bound
//! (see [`crate::limits`]).
//!
//! # Bounds while decoding
//! [`decode`] never allocates for a length it has not checked. bincode
//! would decode a `Vec<T>` by reading its length and then pushing that many
//! elements, and a `String` by allocating its claimed length before reading
//! it; so wire messages are decoded through a guard (`guard`) that checks,
//! before anything is allocated, every string against
//! [`MAX_WIRE_STRING`](crate::limits::MAX_WIRE_STRING), every byte buffer
//! against [`MAX_CHUNK_LEN`](crate::limits::MAX_CHUNK_LEN), every list
//! against [`MAX_WIRE_LIST`](crate::limits::MAX_WIRE_LIST) and every map
//! against [`MAX_WIRE_MAP`](crate::limits::MAX_WIRE_MAP). Lists with a
//! tighter bound of their own (records, entries, holders, chunks) decode
//! with [`bounded_vec`], which fails on a claimed length above the bound
//! before decoding any element. None of this changes the bytes: a bounded
//! list encodes exactly as a `Vec`. The whole message is in memory already
//! (one frame, bounded), so a decoded message costs at most its frame's
//! bytes plus a fixed amount per element, and every count is bounded.
//!
//! Local storage ([`encode_stored`] / [`decode_stored`]) is not network
//! input: it has its own size bound ([`MAX_STORED_LEN`]) and no guard (a
//! stored chunk list is longer than any wire list).

mod guard;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

pub use guard::{bounded_string, bounded_vec};

use crate::limits::{MAX_FRAME_LEN, MAX_STORED_LEN};

/// Bytes of a frame's length prefix.
const PREFIX_LEN: usize = 4;

/// Why bytes could not become a message, or a message bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A frame announced (or a message needs) more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// The announced or needed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid message (unknown variant, invalid path,
    /// truncated, a length beyond its limit).
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The frame held more bytes than the message used.
    #[error("malformed message: {0} trailing bytes")]
    TrailingBytes(usize),
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

fn stored_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_STORED_LEN>()
}

/// Encodes one message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(msg, config())?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_FRAME_LEN });
    }
    Ok(bytes)
}

/// The encoded length of `value` in bytes, without encoding it anywhere
/// (to cut batches by size).
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    Ok(bincode::serde::encode_into_std_write(value, &mut std::io::sink(), config())?)
}

/// Decodes one message that must use every byte of `bytes`, with every
/// string, list and map bounded while decoding (see the module header).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_FRAME_LEN });
    }
    let (msg, used) = bincode::serde::seed_decode_from_slice(guard::Guarded::<T>::new(), bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(msg)
}

/// Encodes a value for local storage (index, tracker database). Same
/// format as the wire, bounded by [`MAX_STORED_LEN`] instead of the frame
/// limit.
pub fn encode_stored<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, stored_config())?;
    if bytes.len() > MAX_STORED_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_STORED_LEN });
    }
    Ok(bytes)
}

/// Decodes a value from local storage; a corrupt value is an error, never
/// a panic.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_STORED_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_STORED_LEN });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, stored_config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Length-prefixed frames: `u32` big-endian length, then the payload.
///
/// Stateless between calls: the length prefix stays in the buffer until the
/// whole frame is there, so [`FrameCodec::peek_len`] can read it and each
/// call may apply its own bound.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec with the protocol's maximum frame length.
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }

    /// A codec with a custom maximum (tests, and smaller internal limits).
    pub fn with_max(max: usize) -> Self {
        FrameCodec { max }
    }

    /// The maximum frame length.
    pub fn max_frame_length(&self) -> usize {
        self.max
    }

    /// The length the frame at the start of `src` announces, once its four
    /// prefix bytes are there.
    pub fn peek_len(src: &[u8]) -> Option<usize> {
        let prefix: [u8; PREFIX_LEN] = src.get(..PREFIX_LEN)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(prefix)).ok()
    }

    /// The length prefix of a frame of `len` bytes; [`CodecError::Oversized`]
    /// above the codec's maximum. For senders that write the prefix and the
    /// payload without joining them first.
    pub fn prefix(&self, len: usize) -> Result<[u8; PREFIX_LEN], CodecError> {
        let max = self.max;
        let len = u32::try_from(len).ok().filter(|_| len <= max).ok_or(CodecError::Oversized { len, max })?;
        Ok(len.to_be_bytes())
    }

    /// Like [`Decoder::decode`], with a bound of `max` bytes (at most the
    /// codec's own) for this frame: a longer prefix is
    /// [`CodecError::Oversized`] as soon as it is seen, before the body is
    /// buffered. While the body is incomplete, `src` is grown to hold
    /// exactly the frame (never more than the bound).
    pub fn decode_bounded(&mut self, src: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, CodecError> {
        let max = max.min(self.max);
        let Some(len) = Self::peek_len(src) else {
            return Ok(None);
        };
        if len > max {
            return Err(CodecError::Oversized { len, max });
        }
        let needed = PREFIX_LEN + len;
        if src.len() < needed {
            src.reserve(needed - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        Ok(Some(src.split_to(len)))
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let max = self.max;
        self.decode_bounded(src, max)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed in the middle of a frame ({} bytes pending)", src.len()),
            ))),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        let prefix = self.prefix(item.len())?;
        dst.reserve(PREFIX_LEN + item.len());
        dst.extend_from_slice(&prefix);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ptp::PeerMessage;
    use proptest::prelude::*;

    #[test]
    fn oversized_length_prefix_is_rejected_without_allocating() {
        let mut codec = FrameCodec::new();
        // A 4 GiB - 1 length prefix followed by a few bytes.
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3][..]);
        let before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Oversized { .. }), "{err}");
        // Nothing was reserved for the announced frame.
        assert!(buf.capacity() <= before.max(64), "capacity grew to {}", buf.capacity());
    }

    #[test]
    fn a_per_frame_bound_refuses_a_long_prefix_before_its_body() {
        let mut codec = FrameCodec::new();
        // The prefix alone decides: 31 MiB announced, 3 bytes present.
        let mut buf = BytesMut::from(&[0x01, 0xF0, 0, 0, 1, 2, 3][..]);
        assert_eq!(FrameCodec::peek_len(&buf), Some(0x01F0_0000));
        assert_eq!(FrameCodec::peek_len(&buf[..3]), None);
        let before = buf.capacity();
        let err = codec.decode_bounded(&mut buf, 1024).unwrap_err();
        assert!(matches!(err, CodecError::Oversized { len: 0x01F0_0000, max: 1024 }), "{err}");
        assert_eq!(buf.capacity(), before, "nothing reserved for a refused frame");
        assert_eq!(buf.len(), 7, "nothing consumed");
        // Within the bound: the buffer grows to exactly the frame, then yields it.
        let mut buf = BytesMut::from(&[0, 0, 0, 200, 9][..]);
        assert!(codec.decode_bounded(&mut buf, 200).unwrap().is_none());
        assert!(buf.capacity() >= 204);
        buf.extend_from_slice(&[7; 199]);
        let frame = codec.decode_bounded(&mut buf, 200).unwrap().unwrap();
        assert_eq!((frame.len(), frame[0], buf.len()), (200, 9, 0));
        // The bound never exceeds the codec's own maximum.
        let mut small = FrameCodec::with_max(10);
        let mut buf = BytesMut::from(&[0, 0, 0, 11][..]);
        assert!(matches!(small.decode_bounded(&mut buf, 1000), Err(CodecError::Oversized { len: 11, max: 10 })));
        // Encoding refuses what the peer would refuse.
        assert!(small.encode(Bytes::from_static(&[0; 11]), &mut BytesMut::new()).is_err());
    }

    #[test]
    fn stored_values_have_their_own_bound() {
        let big = vec![0u8; crate::limits::MAX_FRAME_LEN + 1];
        assert!(matches!(encode(&big), Err(CodecError::Oversized { .. })));
        let stored = encode_stored(&big).unwrap();
        assert_eq!(decode_stored::<Vec<u8>>(&stored).unwrap().len(), big.len());
        // A long list is fine in storage, not on the wire.
        let list = vec![(1u64, 2u32); crate::limits::MAX_WIRE_LIST + 1];
        let bytes = encode_stored(&list).unwrap();
        assert!(decode::<Vec<(u64, u32)>>(&bytes).is_err());
        assert_eq!(decode_stored::<Vec<(u64, u32)>>(&bytes).unwrap(), list);
    }

    #[test]
    fn frames_round_trip_and_partial_frames_wait() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"hello"), &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 5]);
        let mut partial = buf.split_to(6);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        assert_eq!(&codec.decode(&mut partial).unwrap().unwrap()[..], b"hello");
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&[0, 0, 0, 10, 1, 2][..]);
        assert!(codec.decode_eof(&mut buf).is_err());
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).unwrap().is_none());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&PeerMessage::KeepAlive).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<PeerMessage>(&bytes), Err(CodecError::TrailingBytes(1))));
    }

    #[test]
    fn huge_inner_length_is_rejected() {
        // Announce with a claimed 2^62 records: must fail, not allocate.
        let bytes = [1u8, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode::<PeerMessage>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<PeerMessage>(&bytes);
            let _ = decode::<crate::proto::ptp::TrackerMessage>(&bytes);
            let _ = decode::<crate::proto::p2p::P2pRequest>(&bytes);
            let _ = decode::<crate::proto::p2p::P2pResponse>(&bytes);
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = codec.decode_eof(&mut buf);
        }

        #[test]
        fn truncations_of_valid_messages_error(cut in 0usize..40) {
            let msg = PeerMessage::Register(crate::proto::ptp::Register::new(crate::id::PeerId([9; 16]), 65535, u64::MAX, 12345, "test"));
            let bytes = encode(&msg).unwrap();
            if cut < bytes.len() {
                prop_assert!(decode::<PeerMessage>(&bytes[..cut]).is_err());
            }
        }
    }
}
