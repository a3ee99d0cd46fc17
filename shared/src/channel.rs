//! The secure channel: Noise `XXpsk3_25519_ChaChaPoly_BLAKE2s` over any byte
//! stream, carrying length-prefixed frames of encoded messages.
//!
//! # Handshake
//! Both sides hold the 32-byte cluster key (the Noise PSK) and an x25519
//! static identity. The XX pattern exchanges both static keys, so after the
//! handshake each side knows the other's [`PublicKey`], hence its
//! [`PeerId`]. The first handshake payload of each side carries
//! [`MAGIC`] and [`PROTOCOL_VERSION`]; a mismatch fails with a clear error.
//! A wrong cluster key fails the responder when it reads the third
//! message; the responder then closes, and the initiator, which waits for
//! an encrypted confirmation, fails too. The handshake has a deadline
//! ([`HANDSHAKE_TIMEOUT`]) so a silent client cannot hold a slot.
//!
//! # Transport
//! Each Noise transport message goes on the wire as a big-endian `u16`
//! length plus ciphertext (at most 65535 bytes). The plaintext stream is a
//! sequence of frames ([`FrameCodec`]: `u32` length + encoded message); a
//! frame larger than one Noise message is split over several and
//! reassembled. Frame lengths are checked against
//! [`crate::limits::MAX_FRAME_LEN`] before buffering beyond one Noise
//! message.
//!
//! # Halves
//! [`SecureChannel::split`] gives a reader and a writer that can be used
//! from different tasks (each direction has its own nonce), so a session
//! can wait for an incoming message and send outgoing ones at once.
//! [`ChannelReader::recv`] is cancel-safe: all state lives in the reader.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{self, CodecError, FrameCodec};
use crate::id::{PeerId, PublicKey};
use crate::key::{ClusterKey, Identity};
use crate::proto::PROTOCOL_VERSION;

/// The Noise protocol name (defined in `noise`, below both this module and
/// [`crate::key`]; re-exported here where it has always been).
pub use crate::noise::NOISE_PARAMS;

/// Bytes that open each side's first handshake payload.
pub const MAGIC: &[u8; 8] = b"DARTSYNC";

/// The Noise prologue: binds the handshake to this application.
const PROLOGUE: &[u8] = b"dartsync noise v1";

/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest Noise message.
const MAX_NOISE_MSG: usize = 65535;

/// Noise authentication tag length.
const TAG_LEN: usize = 16;

/// Largest plaintext carried by one Noise transport message.
const MAX_PLAINTEXT: usize = MAX_NOISE_MSG - TAG_LEN;

/// Plaintext of the responder's confirmation after a good handshake.
const CONFIRM: &[u8] = b"ok";

/// Why the channel failed. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The remote closed the connection during the handshake.
    #[error("handshake failed: the remote closed the connection (wrong cluster key, or not a DartSync node?)")]
    ClosedInHandshake,
    /// The handshake did not finish in time.
    #[error("handshake failed: no answer within {0:?}")]
    HandshakeTimeout(Duration),
    /// Noise rejected a message: wrong key or tampered data.
    #[error("handshake failed: {0} (wrong cluster key?)")]
    Noise(snow::Error),
    /// The remote speaks another protocol or version.
    #[error("handshake failed: remote speaks {0}, we speak DartSync protocol {PROTOCOL_VERSION}")]
    Version(String),
    /// A transport message failed to decrypt: tampering or a bug.
    #[error("decryption failed: the stream was tampered with or corrupted")]
    Decrypt,
    /// A frame or message was malformed or too large.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The remote closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

impl From<snow::Error> for ChannelError {
    fn from(e: snow::Error) -> Self {
        ChannelError::Noise(e)
    }
}

fn noise_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(2).big_endian().max_frame_length(MAX_NOISE_MSG).new_codec()
}

fn hello_payload() -> Vec<u8> {
    let mut payload = MAGIC.to_vec();
    payload.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    payload
}

fn check_hello(payload: &[u8]) -> Result<(), ChannelError> {
    if payload.len() != MAGIC.len() + 2 || &payload[..MAGIC.len()] != MAGIC {
        return Err(ChannelError::Version("an unknown protocol".into()));
    }
    let version = u16::from_be_bytes([payload[MAGIC.len()], payload[MAGIC.len() + 1]]);
    if version != PROTOCOL_VERSION {
        return Err(ChannelError::Version(format!("DartSync protocol {version}")));
    }
    Ok(())
}

/// An established, authenticated, encrypted connection.
#[derive(Debug)]
pub struct SecureChannel<S> {
    reader: ChannelReader<ReadHalf<S>>,
    writer: ChannelWriter<WriteHalf<S>>,
}

struct Transport(snow::StatelessTransportState);

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

/// The receiving half of a [`SecureChannel`].
#[derive(Debug)]
pub struct ChannelReader<R> {
    transport: Arc<Transport>,
    frames: FramedRead<R, LengthDelimitedCodec>,
    nonce: u64,
    plain: BytesMut,
    frame_codec: FrameCodec,
    remote: PublicKey,
}

/// The sending half of a [`SecureChannel`].
#[derive(Debug)]
pub struct ChannelWriter<W> {
    transport: Arc<Transport>,
    sink: FramedWrite<W, LengthDelimitedCodec>,
    nonce: u64,
    frame_codec: FrameCodec,
    remote: PublicKey,
}

/// Runs the initiator side of the handshake (the side that connected).
pub async fn connect<S>(stream: S, key: &ClusterKey, identity: &Identity) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(handshake(stream, key, identity, true)).await
}

/// Runs the responder side of the handshake (the side that accepted).
pub async fn accept<S>(stream: S, key: &ClusterKey, identity: &Identity) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(handshake(stream, key, identity, false)).await
}

async fn with_timeout<T>(fut: impl Future<Output = Result<T, ChannelError>>) -> Result<T, ChannelError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut).await.map_err(|_| ChannelError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
}

async fn handshake<S>(
    stream: S,
    key: &ClusterKey,
    identity: &Identity,
    initiator: bool,
) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let builder = snow::Builder::new(crate::noise::params())
        .local_private_key(identity.secret())?
        .psk(3, key.as_bytes())?
        .prologue(PROLOGUE)?;
    let mut state = if initiator { builder.build_initiator()? } else { builder.build_responder()? };
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, noise_codec());
    let mut sink = FramedWrite::new(write, noise_codec());
    let mut buf = vec![0u8; MAX_NOISE_MSG];
    let mut payload = vec![0u8; MAX_NOISE_MSG];

    async fn next_msg<R: AsyncRead + Unpin>(
        frames: &mut FramedRead<R, LengthDelimitedCodec>,
    ) -> Result<BytesMut, ChannelError> {
        match frames.next().await {
            Some(Ok(msg)) => Ok(msg),
            Some(Err(e)) => Err(e.into()),
            None => Err(ChannelError::ClosedInHandshake),
        }
    }

    if initiator {
        // -> e (hello)
        let n = state.write_message(&hello_payload(), &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        // <- e, ee, s, es (hello)
        let msg = next_msg(&mut frames).await?;
        let n = state.read_message(&msg, &mut payload)?;
        check_hello(&payload[..n])?;
        // -> s, se, psk
        let n = state.write_message(&[], &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
    } else {
        // <- e (hello)
        let msg = next_msg(&mut frames).await?;
        let n = state.read_message(&msg, &mut payload)?;
        check_hello(&payload[..n])?;
        // -> e, ee, s, es (hello)
        let n = state.write_message(&hello_payload(), &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        // <- s, se, psk: fails here with a wrong cluster key.
        let msg = next_msg(&mut frames).await?;
        state.read_message(&msg, &mut payload)?;
    }
    let remote =
        state.get_remote_static().and_then(PublicKey::from_slice).ok_or(ChannelError::Noise(snow::Error::Input))?;
    let transport = Arc::new(Transport(state.into_stateless_transport_mode()?));
    let mut reader = ChannelReader {
        transport: transport.clone(),
        frames,
        nonce: 0,
        plain: BytesMut::new(),
        frame_codec: FrameCodec::new(),
        remote,
    };
    let mut writer = ChannelWriter { transport, sink, nonce: 0, frame_codec: FrameCodec::new(), remote };
    if initiator {
        // Wait for the responder's confirmation so a wrong key fails here too.
        let msg = next_msg(&mut reader.frames).await?;
        let n = reader.decrypt_one(&msg, &mut payload)?;
        if &payload[..n] != CONFIRM {
            return Err(ChannelError::Decrypt);
        }
    } else {
        writer.send_plain(CONFIRM).await?;
    }
    Ok(SecureChannel { reader, writer })
}

impl<S: AsyncRead + AsyncWrite> SecureChannel<S> {
    /// The remote's static public key, proven in the handshake.
    pub fn remote_key(&self) -> PublicKey {
        self.reader.remote
    }

    /// The remote's peer id.
    pub fn remote_peer_id(&self) -> PeerId {
        self.reader.remote.peer_id()
    }

    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        self.writer.send(msg).await
    }

    /// Receives one message; `Ok(None)` when the remote closed cleanly
    /// between frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        self.reader.recv().await
    }

    /// Splits into halves usable from separate tasks.
    pub fn split(self) -> (ChannelReader<ReadHalf<S>>, ChannelWriter<WriteHalf<S>>) {
        (self.reader, self.writer)
    }
}

impl<R: AsyncRead + Unpin> ChannelReader<R> {
    /// The remote's peer id.
    pub fn remote_peer_id(&self) -> PeerId {
        self.remote.peer_id()
    }

    fn decrypt_one(&mut self, msg: &[u8], out: &mut [u8]) -> Result<usize, ChannelError> {
        let n = self.transport.0.read_message(self.nonce, msg, out).map_err(|_| ChannelError::Decrypt)?;
        self.nonce += 1;
        Ok(n)
    }

    /// Receives one message; `Ok(None)` when the remote closed cleanly
    /// between frames. Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        match self.recv_frame().await? {
            Some(frame) => Ok(Some(codec::decode(&frame)?)),
            None => Ok(None),
        }
    }

    /// Receives one raw frame (an encoded message).
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, ChannelError> {
        let mut out = vec![0u8; MAX_NOISE_MSG];
        loop {
            if let Some(frame) = self.frame_codec.decode(&mut self.plain)? {
                return Ok(Some(frame));
            }
            match self.frames.next().await {
                Some(Ok(msg)) => {
                    let n = self.decrypt_one(&msg, &mut out)?;
                    self.plain.extend_from_slice(&out[..n]);
                }
                Some(Err(e)) => return Err(e.into()),
                None if self.plain.is_empty() => return Ok(None),
                None => return Err(ChannelError::Truncated),
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> ChannelWriter<W> {
    /// The remote's peer id.
    pub fn remote_peer_id(&self) -> PeerId {
        self.remote.peer_id()
    }

    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        let encoded = codec::encode(msg)?;
        self.send_frame(Bytes::from(encoded)).await
    }

    /// Sends one raw frame (an encoded message).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        let mut plain = BytesMut::with_capacity(frame.len() + 4);
        self.frame_codec.encode(frame, &mut plain)?;
        self.send_plain(&plain).await
    }

    /// Sends `bytes` as channel plaintext without a frame header.
    ///
    /// Only for tests that play a hostile peer (a forged frame length such as
    /// a 4 GiB prefix, a frame cut short): the bytes are encrypted and
    /// authenticated as usual, and the receiver's frame decoder sees them as
    /// the next bytes of its frame stream. Well-behaved code always uses
    /// [`Self::send`] or [`Self::send_frame`].
    pub async fn send_unframed(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        self.send_plain(bytes).await
    }

    async fn send_plain(&mut self, plain: &[u8]) -> Result<(), ChannelError> {
        let mut buf = vec![0u8; MAX_NOISE_MSG];
        for piece in plain.chunks(MAX_PLAINTEXT) {
            let n = self.transport.0.write_message(self.nonce, piece, &mut buf).map_err(ChannelError::Noise)?;
            self.nonce += 1;
            self.sink.feed(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        SinkExt::<Bytes>::flush(&mut self.sink).await?;
        Ok(())
    }

    /// Flushes and shuts down the write direction.
    pub async fn shutdown(&mut self) -> Result<(), ChannelError> {
        SinkExt::<Bytes>::flush(&mut self.sink).await?;
        self.sink.get_mut().shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::p2p::P2pResponse;
    use crate::proto::ptp::PeerMessage;
    use tokio::io::AsyncReadExt;

    fn pair() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
        tokio::io::duplex(1 << 20)
    }

    #[tokio::test]
    async fn same_key_handshake_moves_a_10_mib_message() {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let (ia, ib) = (Identity::generate(), Identity::generate());
        let key2 = key.clone();
        let ib2 = ib.clone();
        let server = tokio::spawn(async move { accept(b, &key2, &ib2).await });
        let mut client = connect(a, &key, &ia).await.unwrap();
        let mut server = server.await.unwrap().unwrap();
        assert_eq!(client.remote_peer_id(), ib.peer_id());
        assert_eq!(server.remote_peer_id(), ia.peer_id());

        let bytes = crate::test_util::det_bytes(10, 10 * 1024 * 1024);
        let msg = P2pResponse::Chunk { hash: crate::id::ContentHash::of(&bytes), bytes };
        let sent = msg.clone();
        let sender = tokio::spawn(async move {
            client.send(&sent).await.unwrap();
            client.send(&PeerMessage::KeepAlive).await.unwrap();
            client
        });
        let got: P2pResponse = server.recv().await.unwrap().unwrap();
        assert_eq!(got, msg);
        let ka: PeerMessage = server.recv().await.unwrap().unwrap();
        assert_eq!(ka, PeerMessage::KeepAlive);
        drop(sender.await.unwrap());
        // Clean close between frames.
        assert!(server.recv::<PeerMessage>().await.unwrap().is_none());
    }

    #[test]
    fn hello_carries_protocol_2_and_refuses_protocol_1() {
        assert_eq!(hello_payload(), b"DARTSYNC\x00\x02");
        check_hello(&hello_payload()).unwrap();
        let err = check_hello(b"DARTSYNC\x00\x01").unwrap_err().to_string();
        assert!(err.contains("protocol 1") && err.contains("protocol 2"), "{err}");
        assert!(check_hello(b"HTTP/1.1 200").is_err());
    }

    #[tokio::test]
    async fn different_keys_fail_on_both_sides() {
        let (a, b) = pair();
        let server = tokio::spawn(async move { accept(b, &ClusterKey::generate(), &Identity::generate()).await });
        let client = connect(a, &ClusterKey::generate(), &Identity::generate()).await;
        let server = server.await.unwrap();
        assert!(client.is_err(), "client accepted a wrong key");
        assert!(server.is_err(), "server accepted a wrong key");
        let msg = client.unwrap_err().to_string();
        assert!(msg.contains("handshake failed"), "{msg}");
    }

    #[tokio::test]
    async fn garbage_fails_the_handshake() {
        let (mut a, b) = pair();
        let server = tokio::spawn(async move { accept(b, &ClusterKey::generate(), &Identity::generate()).await });
        a.write_all(b"\x00\x10GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let result = server.await.unwrap();
        assert!(result.is_err());
        // The server dropped its end: reading gives EOF.
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let (_a, b) = pair();
        let result = accept(b, &ClusterKey::generate(), &Identity::generate()).await;
        assert!(matches!(result, Err(ChannelError::HandshakeTimeout(_))));
    }

    #[tokio::test]
    async fn halves_work_concurrently() {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let k2 = key.clone();
        let server = tokio::spawn(async move { accept(b, &k2, &Identity::generate()).await.unwrap() });
        let client = connect(a, &key, &Identity::generate()).await.unwrap();
        let server = server.await.unwrap();
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        for i in 0..50u64 {
            let m = PeerMessage::Register(crate::proto::ptp::Register {
                peer_id: PeerId([1; 16]),
                listen_port: 1,
                seen_seq: i,
                epoch: 0,
            });
            cw.send(&m).await.unwrap();
            sw.send(&m).await.unwrap();
            assert_eq!(sr.recv::<PeerMessage>().await.unwrap().unwrap(), m);
            assert_eq!(cr.recv::<PeerMessage>().await.unwrap().unwrap(), m);
        }
    }

    #[tokio::test]
    async fn unframed_bytes_reach_the_frame_decoder() {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let k2 = key.clone();
        let server = tokio::spawn(async move { accept(b, &k2, &Identity::generate()).await.unwrap() });
        let client = connect(a, &key, &Identity::generate()).await.unwrap();
        let mut server = server.await.unwrap();
        let (_r, mut w) = client.split();
        // A hand-made frame holding `KeepAlive` (one byte, variant 3) ...
        w.send_unframed(&[0, 0, 0, 1, 3]).await.unwrap();
        assert_eq!(server.recv::<PeerMessage>().await.unwrap(), Some(PeerMessage::KeepAlive));
        // ... and a forged 4 GiB length prefix.
        w.send_unframed(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
        let err = server.recv::<PeerMessage>().await.unwrap_err();
        assert!(matches!(err, ChannelError::Codec(CodecError::Oversized { .. })), "{err}");
    }

    #[tokio::test]
    async fn oversized_frame_from_an_authenticated_peer_is_rejected() {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let k2 = key.clone();
        let server = tokio::spawn(async move { accept(b, &k2, &Identity::generate()).await.unwrap() });
        let client = connect(a, &key, &Identity::generate()).await.unwrap();
        let mut server = server.await.unwrap();
        let (_r, mut w) = client.split();
        // A plaintext claiming a 4 GiB frame.
        w.send_plain(&[0xFF, 0xFF, 0xFF, 0xFF, 0]).await.unwrap();
        let err = server.recv::<PeerMessage>().await.unwrap_err();
        assert!(matches!(err, ChannelError::Codec(CodecError::Oversized { .. })), "{err}");
    }
}
