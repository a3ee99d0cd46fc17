//! Bytes <-> messages: the bincode encoding and the length-prefixed frame
//! codec. Every encode and decode call of DartSync goes through here.
//!
//! bincode 2 is pinned (`=2.0.1`; 3.x is an empty release and the crate is
//! unmaintained), so keeping it behind [`encode`] / [`decode`] means a later
//! switch of format touches this one file.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of one
//! encoded message. [`FrameCodec`] checks the length against
//! [`MAX_FRAME_LEN`] before reserving any memory, and the bincode decoder
//! runs with the same limit, so no length field from the network can make
//! us allocate more than one frame.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::limits::MAX_FRAME_LEN;

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
    /// truncated, length fields beyond the limit).
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

/// Encodes one message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(msg, config())?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_FRAME_LEN });
    }
    Ok(bytes)
}

/// Decodes one message that must use every byte of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::Oversized { len: bytes.len(), max: MAX_FRAME_LEN });
    }
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(msg)
}

/// Encodes a value for local storage (index, tracker database). Same
/// format as the wire, without the frame limit's relevance to callers.
pub fn encode_stored<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode(value)
}

/// Decodes a value from local storage; a corrupt value is an error, never
/// a panic.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode(bytes)
}

/// Length-prefixed frames: `u32` big-endian length, then the payload.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl FrameCodec {
    /// A codec with the protocol's maximum frame length.
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }

    /// A codec with a custom maximum (tests, and smaller internal limits).
    pub fn with_max(max: usize) -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max)
                .new_codec(),
        }
    }

    /// The maximum frame length.
    pub fn max_frame_length(&self) -> usize {
        self.inner.max_frame_length()
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

fn frame_error(err: std::io::Error, max: usize) -> CodecError {
    // LengthDelimitedCodec reports an oversized length prefix as InvalidData
    // before reserving anything; give it a precise variant.
    if err.kind() == std::io::ErrorKind::InvalidData {
        CodecError::Oversized { len: max.saturating_add(1), max }
    } else {
        CodecError::Io(err)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let max = self.max_frame_length();
        self.inner.decode(src).map_err(|e| frame_error(e, max))
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
        let max = self.max_frame_length();
        if item.len() > max {
            return Err(CodecError::Oversized { len: item.len(), max });
        }
        self.inner.encode(item, dst).map_err(|e| frame_error(e, max))
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
            let msg = PeerMessage::Register(crate::proto::ptp::Register {
                peer_id: crate::id::PeerId([9; 16]),
                listen_port: 65535,
                seen_seq: u64::MAX,
                epoch: 12345,
            });
            let bytes = encode(&msg).unwrap();
            if cut < bytes.len() {
                prop_assert!(decode::<PeerMessage>(&bytes[..cut]).is_err());
            }
        }
    }
}
