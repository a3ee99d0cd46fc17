//! The secure channel: Noise `XXpsk0_25519_{AESGCM,ChaChaPoly}_BLAKE2s`
//! over any byte stream, carrying length-prefixed frames of encoded
//! messages.
//!
//! # Handshake
//! Both sides hold the 32-byte cluster key (the Noise PSK) and an x25519
//! static identity. The XX pattern exchanges both static keys, so after the
//! handshake each side knows the other's [`PublicKey`], hence its
//! [`PeerId`]. `psk0` mixes the cluster key in before anything else, so
//! every handshake payload and both static keys travel encrypted under keys
//! that depend on it: a host without the cluster key learns no identity.
//! The first handshake payload of each side carries [`MAGIC`] and
//! [`PROTOCOL_VERSION`]; a mismatch fails with a clear error (a node of
//! protocol 2, which spoke `XXpsk3`, is recognised and named as such).
//!
//! The initiator picks the cipher its CPU seals fastest
//! ([`Cipher::preferred`]); the responder accepts either (see
//! [`crate::noise`]).
//!
//! A wrong cluster key fails the responder when it reads the first
//! message; the responder then closes without answering, and the
//! initiator, which waits for message 2, fails too (the remote closed).
//!
//! # Deadlines
//! The responder waits at most [`FIRST_MESSAGE_TIMEOUT`] for the first
//! message and the whole handshake has [`HANDSHAKE_TIMEOUT`], so a silent
//! client cannot hold a slot for long. Handshake messages are at most
//! [`MAX_HANDSHAKE_MSG`] bytes, checked before buffering, so a connection
//! still in the handshake costs a few KiB. [`accept_with`] tells its caller
//! when the first message has been authenticated (made with the cluster
//! key, or replayed from one that was), which the listeners' pre-
//! authentication pools ([`crate::preauth`]) use to tell idle connections
//! from members.
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
use tokio_util::codec::{Decoder, FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{self, CodecError, FrameCodec};
use crate::id::{PeerId, PublicKey};
use crate::key::{ClusterKey, Identity};
use crate::proto::PROTOCOL_VERSION;

/// The Noise protocol name (defined in `noise`, below both this module and
/// [`crate::key`]; re-exported here where it has always been).
pub use crate::noise::{Cipher, NOISE_PARAMS};

/// Bytes that open each side's first handshake payload.
pub const MAGIC: &[u8; 8] = b"DARTSYNC";

/// The Noise prologue: binds the handshake to this application.
const PROLOGUE: &[u8] = b"dartsync noise v1";

/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the responder waits for the initiator's first message. A
/// member sends it right after connecting; a connection that stays silent
/// this long is dropped long before [`HANDSHAKE_TIMEOUT`].
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest handshake message accepted (ours are 58, 106 and 64 bytes);
/// a larger length prefix fails the handshake before anything is buffered.
pub const MAX_HANDSHAKE_MSG: usize = 256;

/// The Noise protocol of DartSync protocol 2 and older: the cluster key was
/// mixed in only at the end of message 3. Used only to recognise such a node
/// and say so.
const LEGACY_NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message.
const MAX_NOISE_MSG: usize = 65535;

/// Noise authentication tag length.
const TAG_LEN: usize = 16;

/// Largest plaintext carried by one Noise transport message.
const MAX_PLAINTEXT: usize = MAX_NOISE_MSG - TAG_LEN;

/// Plaintext bytes a Noise message carries on a tracker channel (both
/// ways; [`ChannelWriter::set_piece_len`]). A receiver decrypts a whole
/// message before it knows a frame's length, and a sender with a slow
/// reader holds one sealed message, so with 1,000 sessions this is what
/// each of them holds at most beyond a frame it is reading or a page its
/// peer reads: 16 MiB in all where whole messages were 64 MiB. It costs
/// 18 bytes a piece (0.1%). Peer-to-peer channels keep whole messages.
pub const TRACKER_PIECE_LEN: usize = 16 * 1024;

/// The smallest piece [`ChannelWriter::set_piece_len`] takes.
const MIN_PIECE_LEN: usize = 1024;

/// Plaintext of the responder's confirmation after a good handshake.
const CONFIRM: &[u8] = b"ok";

/// Why the channel failed. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The remote closed the connection during the handshake.
    #[error(
        "handshake failed: the remote closed the connection (wrong cluster key, an older DartSync release, or not a DartSync node?)"
    )]
    ClosedInHandshake,
    /// The initiator sent no first message in time.
    #[error("handshake failed: no first message within {0:?}")]
    NoFirstMessage(Duration),
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

/// The codec of Noise messages on the wire, during the handshake (at most
/// [`MAX_HANDSHAKE_MSG`] bytes each); raised to [`MAX_NOISE_MSG`] after it.
fn noise_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(2).big_endian().max_frame_length(MAX_HANDSHAKE_MSG).new_codec()
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

/// The transport keys and the cipher the handshake settled on.
struct Transport(snow::StatelessTransportState, Cipher);

/// Decrypts the transport message under `nonce` into `out` and moves the
/// nonce on; any failure is [`ChannelError::Decrypt`].
fn open_next(transport: &Transport, nonce: &mut u64, msg: &[u8], out: &mut [u8]) -> Result<usize, ChannelError> {
    let n = transport.0.read_message(*nonce, msg, out).map_err(|_| ChannelError::Decrypt)?;
    *nonce += 1;
    Ok(n)
}

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
    /// Most plaintext bytes sealed into one Noise message.
    piece_len: usize,
}

/// Runs the initiator side of the handshake (the side that connected).
pub async fn connect<S>(stream: S, key: &ClusterKey, identity: &Identity) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(handshake(stream, key, identity, true, Cipher::preferred(), || {})).await
}

/// Runs the responder side of the handshake (the side that accepted).
pub async fn accept<S>(stream: S, key: &ClusterKey, identity: &Identity) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with(stream, key, identity, || {}).await
}

/// [`accept`], calling `first_message_ok` as soon as the initiator's first
/// message has been authenticated: it was made with the cluster key (or is
/// a replay of one that was; only the rest of the handshake proves the
/// initiator holds the key). Listeners use it to stop counting the
/// connection as idle.
pub async fn accept_with<S>(
    stream: S,
    key: &ClusterKey,
    identity: &Identity,
    first_message_ok: impl FnOnce(),
) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    with_timeout(handshake(stream, key, identity, false, Cipher::preferred(), first_message_ok)).await
}

async fn with_timeout<T>(fut: impl Future<Output = Result<T, ChannelError>>) -> Result<T, ChannelError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut).await.map_err(|_| ChannelError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
}

/// The DartSync protocol version a node of protocol 2 or older announces
/// in `msg`, its first handshake message under [`LEGACY_NOISE_PARAMS`];
/// `None` if `msg` is not one.
fn legacy_version(msg: &[u8], identity: &Identity) -> Option<u16> {
    // An ephemeral key plus the encrypted 10-byte hello, nothing else.
    if msg.len() != 32 + MAGIC.len() + 2 + TAG_LEN {
        return None;
    }
    // Message 1 of XXpsk3 depends on no key: any PSK decrypts it.
    let params = LEGACY_NOISE_PARAMS.parse().ok()?;
    let mut state = snow::Builder::new(params)
        .local_private_key(identity.secret())
        .ok()?
        .psk(3, &[0; 32])
        .ok()?
        .prologue(PROLOGUE)
        .ok()?
        .build_responder()
        .ok()?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let n = state.read_message(msg, &mut payload).ok()?;
    let hello = payload.get(..n)?;
    let version = hello.strip_prefix(MAGIC.as_slice())?;
    Some(u16::from_be_bytes(version.try_into().ok()?))
}

/// A handshake state builder for `cipher` with our identity, the cluster
/// key and the prologue.
fn builder<'a>(cipher: Cipher, key: &'a ClusterKey, identity: &'a Identity) -> Result<snow::Builder<'a>, ChannelError> {
    Ok(snow::Builder::new(cipher.params())
        .local_private_key(identity.secret())?
        .psk(crate::noise::PSK_LOCATION, key.as_bytes())?
        .prologue(PROLOGUE)?)
}

/// The handshake. The initiator uses `cipher`; the responder takes the
/// cipher whose name authenticates the first message (`cipher` unused).
async fn handshake<S>(
    stream: S,
    key: &ClusterKey,
    identity: &Identity,
    initiator: bool,
    cipher: Cipher,
    first_message_ok: impl FnOnce(),
) -> Result<SecureChannel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, noise_codec());
    let mut sink = FramedWrite::new(write, noise_codec());
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];

    async fn next_msg<R: AsyncRead + Unpin>(
        frames: &mut FramedRead<R, LengthDelimitedCodec>,
    ) -> Result<BytesMut, ChannelError> {
        match frames.next().await {
            Some(Ok(msg)) => Ok(msg),
            Some(Err(e)) => Err(e.into()),
            None => Err(ChannelError::ClosedInHandshake),
        }
    }

    let (state, cipher) = if initiator {
        let mut state = builder(cipher, key, identity)?.build_initiator()?;
        // -> psk, e (hello)
        let n = state.write_message(&hello_payload(), &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        // <- e, ee, s, es (hello)
        let msg = next_msg(&mut frames).await?;
        let n = state.read_message(&msg, &mut payload)?;
        check_hello(&payload[..n])?;
        // -> s, se
        let n = state.write_message(&[], &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        (state, cipher)
    } else {
        // <- psk, e (hello): fails here with a wrong cluster key, before we
        // have sent anything.
        let msg = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, next_msg(&mut frames))
            .await
            .map_err(|_| ChannelError::NoFirstMessage(FIRST_MESSAGE_TIMEOUT))??;
        let mut failure = snow::Error::Decrypt;
        let mut accepted = None;
        for cipher in Cipher::ALL {
            let mut state = builder(cipher, key, identity)?.build_responder()?;
            match state.read_message(&msg, &mut payload) {
                Ok(n) => {
                    accepted = Some((state, n, cipher));
                    break;
                }
                Err(e) => failure = e,
            }
        }
        let Some((mut state, n, cipher)) = accepted else {
            return Err(match legacy_version(&msg, identity) {
                Some(v) => ChannelError::Version(format!("DartSync protocol {v} (an older release)")),
                None => ChannelError::Noise(failure),
            });
        };
        check_hello(&payload[..n])?;
        first_message_ok();
        // -> e, ee, s, es (hello)
        let n = state.write_message(&hello_payload(), &mut buf)?;
        sink.send(Bytes::copy_from_slice(&buf[..n])).await?;
        // <- s, se
        let msg = next_msg(&mut frames).await?;
        state.read_message(&msg, &mut payload)?;
        (state, cipher)
    };
    let remote =
        state.get_remote_static().and_then(PublicKey::from_slice).ok_or(ChannelError::Noise(snow::Error::Input))?;
    let transport = Arc::new(Transport(state.into_stateless_transport_mode()?, cipher));
    // Transport messages may be as large as Noise allows.
    frames.decoder_mut().set_max_frame_length(MAX_NOISE_MSG);
    sink.encoder_mut().set_max_frame_length(MAX_NOISE_MSG);
    let mut reader = ChannelReader {
        transport: transport.clone(),
        frames,
        nonce: 0,
        plain: BytesMut::new(),
        frame_codec: FrameCodec::new(),
        remote,
    };
    let mut writer =
        ChannelWriter { transport, sink, nonce: 0, frame_codec: FrameCodec::new(), remote, piece_len: MAX_PLAINTEXT };
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
    /// The cipher the handshake settled on.
    pub fn cipher(&self) -> Cipher {
        self.reader.transport.1
    }

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
        open_next(&self.transport, &mut self.nonce, msg, out)
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
        loop {
            if let Some(frame) = self.frame_codec.decode(&mut self.plain)? {
                return Ok(Some(frame));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// The length of the next frame, as soon as its 4-byte prefix has
    /// arrived, consuming nothing: the caller decides how (and with which
    /// bound, after which wait) to receive it. `Ok(None)` when the remote
    /// closed cleanly between frames. Reads at most one Noise message
    /// beyond the prefix. Cancel-safe.
    pub async fn peek_frame_len(&mut self) -> Result<Option<usize>, ChannelError> {
        loop {
            if let Some(len) = FrameCodec::peek_len(&self.plain) {
                return Ok(Some(len));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Receives one message whose frame is at most `max_len` bytes; `Ok(None)`
    /// when the remote closed cleanly between frames. A longer length prefix
    /// is [`CodecError::Oversized`] as soon as it is seen, so no more than
    /// `max_len` bytes plus one Noise message are ever buffered for a frame;
    /// the message is decoded with every list and string bounded
    /// ([`codec::decode`]). After a large frame the buffer is released, so an
    /// idle reader holds no more than one Noise message. Cancel-safe.
    pub async fn recv_bounded<T: DeserializeOwned>(&mut self, max_len: usize) -> Result<Option<T>, ChannelError> {
        loop {
            if let Some(frame) = self.frame_codec.decode_bounded(&mut self.plain, max_len)? {
                if frame.len() > MAX_NOISE_MSG {
                    // `plain` still shares the frame's allocation: move what
                    // follows the frame (less than one Noise message) out, so
                    // the allocation goes with the frame.
                    self.plain = BytesMut::from(&self.plain[..]);
                }
                return Ok(Some(codec::decode(&frame)?));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads one Noise message and decrypts it straight onto the end of the
    /// plaintext buffer (no scratch copy). False at a clean end of stream
    /// between frames.
    async fn read_more(&mut self) -> Result<bool, ChannelError> {
        match self.frames.next().await {
            Some(Ok(msg)) => {
                let start = self.plain.len();
                self.plain.resize(start + msg.len(), 0);
                let opened = open_next(&self.transport, &mut self.nonce, &msg, &mut self.plain[start..]);
                // Keep the plaintext; on a failure drop the room made for it.
                self.plain.truncate(start + opened.as_ref().map_or(0, |n| *n));
                opened.map(|_| true)
            }
            Some(Err(e)) => Err(e.into()),
            None if self.plain.is_empty() => Ok(false),
            None => Err(ChannelError::Truncated),
        }
    }

    /// Gives back the memory of buffers grown for earlier frames (up to a
    /// whole maximum chunk each), keeping only bytes already received and
    /// not yet read: for a reader that will sit idle, such as a pooled
    /// link. The next frame grows them again as needed.
    pub fn release_buffers(&mut self) {
        // `plain` may be a view into the allocation of a large frame
        // received earlier; a copy of what it holds owns just that.
        self.plain = BytesMut::from(&self.plain[..]);
        let read = self.frames.read_buffer_mut();
        *read = BytesMut::from(&read[..]);
    }

    /// Bytes of buffer this reader holds (capacity, not content); a buffer
    /// still shared with a frame handed out counts only its own part.
    pub fn buffer_capacity(&self) -> usize {
        self.plain.capacity() + self.frames.read_buffer().capacity()
    }

    /// Reads and drops whatever the remote still sends, one Noise message
    /// at a time (never decrypted or buffered), until it closes. After a
    /// `Refused`, this lets the connection close cleanly: a socket closed
    /// with unread data resets the connection, and the remote may then
    /// lose the reason. Use it under a timeout.
    pub async fn drain(&mut self) -> Result<(), ChannelError> {
        self.plain.clear();
        while let Some(msg) = self.frames.next().await {
            msg?;
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> ChannelWriter<W> {
    /// The remote's peer id.
    pub fn remote_peer_id(&self) -> PeerId {
        self.remote.peer_id()
    }

    /// Seals at most `len` bytes of plaintext into one Noise message from
    /// now on (at least 1 KiB; at most, and by default, what one message
    /// holds). The receiver sees the same frames: only the buffers on both
    /// sides shrink (see [`TRACKER_PIECE_LEN`]).
    pub fn set_piece_len(&mut self, len: usize) {
        self.piece_len = len.clamp(MIN_PIECE_LEN, MAX_PLAINTEXT);
    }

    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        let encoded = codec::encode(msg)?;
        self.send_frame(Bytes::from(encoded)).await
    }

    /// Sends one raw frame (an encoded message). The length prefix and the
    /// frame are sealed piece by piece as if joined (the same Noise
    /// messages), without a copy of the whole frame: the first message
    /// carries the prefix and the frame's head, the others are sealed
    /// straight from the frame into the write buffer.
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ChannelError> {
        self.send_frame_parts(&[&frame]).await
    }

    /// Sends one frame made of `parts` one after the other (an encoded
    /// message cut in pieces, such as a chunk's head and its bytes),
    /// exactly as [`Self::send_frame`] would send them joined (the same
    /// Noise messages), without joining them: a Noise message that lies in
    /// one part is sealed straight from it, one that spans parts is
    /// gathered first.
    pub async fn send_frame_parts(&mut self, parts: &[&[u8]]) -> Result<(), ChannelError> {
        let frame_len = parts.iter().map(|p| p.len()).sum();
        let prefix = self.frame_codec.prefix(frame_len)?;
        let slices: Vec<&[u8]> =
            std::iter::once(&prefix[..]).chain(parts.iter().copied()).filter(|p| !p.is_empty()).collect();
        // The next byte to send: `slices[i][at]`.
        let (mut i, mut at) = (0, 0);
        let mut gathered = Vec::new();
        while i < slices.len() {
            let here = &slices[i][at..];
            if here.len() >= self.piece_len || i + 1 == slices.len() {
                let take = here.len().min(self.piece_len);
                self.seal_and_feed(&here[..take]).await?;
                at += take;
            } else {
                // A piece that spans parts: gathered first.
                gathered.clear();
                while i < slices.len() && gathered.len() < self.piece_len {
                    let here = &slices[i][at..];
                    let take = here.len().min(self.piece_len - gathered.len());
                    gathered.extend_from_slice(&here[..take]);
                    at += take;
                    if at == slices[i].len() {
                        (i, at) = (i + 1, 0);
                    }
                }
                self.seal_and_feed(&gathered).await?;
                continue;
            }
            if at == slices[i].len() {
                (i, at) = (i + 1, 0);
            }
        }
        SinkExt::<Bytes>::flush(&mut self.sink).await?;
        Ok(())
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
        for piece in plain.chunks(self.piece_len) {
            self.seal_and_feed(piece).await?;
        }
        SinkExt::<Bytes>::flush(&mut self.sink).await?;
        Ok(())
    }

    /// Encrypts one piece of plaintext (at most [`MAX_PLAINTEXT`] bytes)
    /// straight into the write buffer, behind its `u16` length, unflushed.
    /// Waits first for the buffer to drain when it holds a sealed piece's
    /// worth or more, so a large frame costs about two pieces of buffer.
    async fn seal_and_feed(&mut self, piece: &[u8]) -> Result<(), ChannelError> {
        if self.sink.write_buffer().len() >= self.piece_len + TAG_LEN {
            SinkExt::<Bytes>::flush(&mut self.sink).await?;
        }
        let buf = self.sink.write_buffer_mut();
        let start = buf.len();
        buf.resize(start + 2 + piece.len() + TAG_LEN, 0);
        let n = match self.transport.0.write_message(self.nonce, piece, &mut buf[start + 2..]) {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(start);
                return Err(ChannelError::Noise(e));
            }
        };
        let len = u16::try_from(n).expect("a sealed piece of at most MAX_PLAINTEXT bytes fits a Noise message");
        buf[start..start + 2].copy_from_slice(&len.to_be_bytes());
        buf.truncate(start + 2 + n);
        self.nonce += 1;
        Ok(())
    }

    /// Gives back the memory of the write buffer, keeping whatever it
    /// still holds (nothing after a completed send): for a writer that
    /// will sit idle, such as a pooled link.
    pub fn release_buffers(&mut self) {
        let buf = self.sink.write_buffer_mut();
        *buf = BytesMut::from(&buf[..]);
    }

    /// Bytes of buffer this writer holds (capacity, not content).
    pub fn buffer_capacity(&self) -> usize {
        self.sink.write_buffer().capacity()
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

    #[tokio::test]
    async fn a_frame_sent_in_parts_arrives_as_the_parts_joined() {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let (ia, ib) = (Identity::generate(), Identity::generate());
        let (key2, ib2) = (key.clone(), ib.clone());
        let server = tokio::spawn(async move { accept(b, &key2, &ib2).await });
        let client = connect(a, &key, &ia).await.unwrap();
        let (mut reader, _server_writer) = server.await.unwrap().unwrap().split();
        let (_client_reader, mut writer) = client.split();
        // Small pieces, so that parts end just before, at and after a
        // piece's end (the prefix takes 4 bytes of the first piece).
        writer.set_piece_len(1024);
        let bytes = crate::test_util::det_bytes(3, 5000);
        let cuts: Vec<Vec<usize>> = vec![
            vec![],
            vec![0],
            vec![1],
            vec![1019],
            vec![1020],
            vec![1021],
            vec![2044, 2045],
            vec![10, 3000, 3000, 3001],
            vec![5000],
        ];
        let frames: Vec<Vec<Vec<u8>>> = cuts
            .iter()
            .map(|cut| {
                let mut edges = vec![0];
                edges.extend(cut);
                edges.push(bytes.len());
                edges.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
            })
            .chain([vec![], vec![vec![], b"x".to_vec(), vec![]]])
            .collect();
        let sent = frames.clone();
        let sender = tokio::spawn(async move {
            for parts in &sent {
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                writer.send_frame_parts(&parts).await.unwrap();
            }
            writer
        });
        for parts in &frames {
            let got = reader.recv_frame().await.unwrap().unwrap();
            assert_eq!(&got[..], &parts.concat()[..], "{} parts", parts.len());
        }
        drop(sender.await.unwrap());
    }

    #[test]
    fn hello_carries_protocol_8_and_refuses_older_protocols() {
        assert_eq!(hello_payload(), b"DARTSYNC\x00\x08");
        check_hello(&hello_payload()).unwrap();
        for old in [1u8, 2, 3, 4, 5, 6, 7] {
            let err = check_hello(&[b"DARTSYNC".as_slice(), &[0, old]].concat()).unwrap_err().to_string();
            assert!(err.contains(&format!("protocol {old}")) && err.contains("protocol 8"), "{err}");
        }
        assert!(check_hello(b"HTTP/1.1 200").is_err());
    }

    /// An initiator of either cipher reaches the same responder, which
    /// answers in the initiator's cipher: messages both ways arrive intact,
    /// and each Noise protocol name is the one the initiator chose (the
    /// frames of one cipher do not decrypt under the other).
    #[tokio::test]
    async fn the_responder_speaks_the_cipher_the_initiator_chose() {
        for cipher in Cipher::ALL {
            let key = ClusterKey::generate();
            let (a, b) = pair();
            let (k2, ib) = (key.clone(), Identity::generate());
            let server = tokio::spawn(async move { accept(b, &k2, &ib).await });
            let mut client =
                with_timeout(handshake(a, &key, &Identity::generate(), true, cipher, || {})).await.unwrap();
            let mut server = server.await.unwrap().unwrap();
            assert_eq!(client.cipher(), cipher);
            assert_eq!(server.cipher(), cipher);
            let bytes = crate::test_util::det_bytes(3, 300_000);
            let msg = P2pResponse::Chunk { hash: crate::id::ContentHash::of(&bytes), bytes };
            client.send(&msg).await.unwrap();
            assert_eq!(server.recv::<P2pResponse>().await.unwrap().unwrap(), msg, "{cipher:?}");
            server.send(&PeerMessage::KeepAlive).await.unwrap();
            assert_eq!(client.recv::<PeerMessage>().await.unwrap().unwrap(), PeerMessage::KeepAlive, "{cipher:?}");
        }
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
    async fn a_silent_client_is_dropped_after_the_first_message_deadline() {
        let (_a, b) = pair();
        let start = tokio::time::Instant::now();
        let result = accept(b, &ClusterKey::generate(), &Identity::generate()).await;
        assert!(matches!(result, Err(ChannelError::NoFirstMessage(FIRST_MESSAGE_TIMEOUT))), "{result:?}");
        assert_eq!(start.elapsed(), FIRST_MESSAGE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_after_its_first_message_meets_the_whole_deadline() {
        let key = ClusterKey::generate();
        let (mut a, b) = pair();
        let start = tokio::time::Instant::now();
        let k2 = key.clone();
        let server = tokio::spawn(async move {
            let mut first = false;
            let r = accept_with(b, &k2, &Identity::generate(), || first = true).await;
            (r, first)
        });
        // A genuine message 1, then silence.
        let mut init = initiator(&key, &Identity::generate());
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let n = init.write_message(&hello_payload(), &mut buf).unwrap();
        a.write_all(&u16::try_from(n).unwrap().to_be_bytes()).await.unwrap();
        a.write_all(&buf[..n]).await.unwrap();
        let (result, first) = server.await.unwrap();
        assert!(first, "an authentic first message was not reported");
        assert!(matches!(result, Err(ChannelError::HandshakeTimeout(HANDSHAKE_TIMEOUT))), "{result:?}");
        assert_eq!(start.elapsed(), HANDSHAKE_TIMEOUT);
    }

    #[tokio::test]
    async fn an_oversized_handshake_message_is_refused_before_buffering() {
        let (mut a, b) = pair();
        let server = tokio::spawn(async move { accept(b, &ClusterKey::generate(), &Identity::generate()).await });
        // Claims 65,535 bytes; sends a few.
        a.write_all(&[0xFF, 0xFF, 1, 2, 3]).await.unwrap();
        let result = server.await.unwrap();
        assert!(matches!(result, Err(ChannelError::Io(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_wrong_key_is_not_reported_as_an_authentic_first_message() {
        let (a, b) = pair();
        let server = tokio::spawn(async move {
            let mut first = false;
            let r = accept_with(b, &ClusterKey::generate(), &Identity::generate(), || first = true).await;
            (r.is_ok(), first)
        });
        assert!(connect(a, &ClusterKey::generate(), &Identity::generate()).await.is_err());
        assert_eq!(server.await.unwrap(), (false, false));
    }

    #[tokio::test]
    async fn a_protocol_2_node_is_named_as_such() {
        let key = ClusterKey::generate();
        let (mut a, b) = pair();
        let k2 = key.clone();
        let server = tokio::spawn(async move { accept(b, &k2, &Identity::generate()).await });
        // What a protocol-2 node sends first: XXpsk3, hello "DARTSYNC" 2.
        let mut old = legacy_initiator(&key, &Identity::generate());
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let n = old.write_message(b"DARTSYNC\x00\x02", &mut buf).unwrap();
        a.write_all(&u16::try_from(n).unwrap().to_be_bytes()).await.unwrap();
        a.write_all(&buf[..n]).await.unwrap();
        let err = server.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("protocol 2") && err.contains("protocol 8"), "{err}");
    }

    /// A snow initiator of the current handshake.
    fn initiator(key: &ClusterKey, identity: &Identity) -> snow::HandshakeState {
        snow::Builder::new(crate::noise::params())
            .local_private_key(identity.secret())
            .unwrap()
            .psk(crate::noise::PSK_LOCATION, key.as_bytes())
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap()
    }

    /// A snow initiator of the protocol-2 handshake (`XXpsk3`).
    fn legacy_initiator(key: &ClusterKey, identity: &Identity) -> snow::HandshakeState {
        snow::Builder::new(LEGACY_NOISE_PARAMS.parse().unwrap())
            .local_private_key(identity.secret())
            .unwrap()
            .psk(3, key.as_bytes())
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap()
    }

    /// A stranger's probe of a responder: it connects as an initiator with
    /// its own (wrong) cluster key, sends message 1 as `stranger` builds it,
    /// and returns every byte the responder sends back before closing (or
    /// within a second), plus the static key the stranger's handshake state
    /// learned from them, if any.
    async fn probe<S>(responder: S, mut stranger: snow::HandshakeState) -> (Vec<u8>, Option<Vec<u8>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut responder = responder;
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let n = stranger.write_message(&hello_payload(), &mut buf).unwrap();
        responder.write_all(&u16::try_from(n).unwrap().to_be_bytes()).await.unwrap();
        responder.write_all(&buf[..n]).await.unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(1), responder.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(k)) => reply.extend_from_slice(&chunk[..k]),
            }
        }
        let mut learned = None;
        if reply.len() > 2 {
            let len = usize::from(u16::from_be_bytes([reply[0], reply[1]]));
            if let Some(msg2) = reply.get(2..2 + len) {
                let mut out = [0u8; MAX_HANDSHAKE_MSG];
                if stranger.read_message(msg2, &mut out).is_ok() {
                    learned = stranger.get_remote_static().map(<[u8]>::to_vec);
                }
            }
        }
        (reply, learned)
    }

    /// Whether `key` shows in `bytes` or was learned by the stranger.
    fn revealed(key: &PublicKey, (bytes, learned): &(Vec<u8>, Option<Vec<u8>>)) -> bool {
        bytes.windows(32).any(|w| w == key.0) || learned.as_deref() == Some(key.0.as_slice())
    }

    #[tokio::test]
    async fn without_the_cluster_key_the_handshake_reveals_no_static_key() {
        let key = ClusterKey::generate();
        let responder = Identity::generate();
        let public = responder.public();

        // The current responder, probed with a wrong key, and with no key
        // at all (plain XX): nothing comes back, and nothing is learned.
        let strangers = [
            initiator(&ClusterKey::generate(), &Identity::generate()),
            snow::Builder::new("Noise_XX_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
                .local_private_key(Identity::generate().secret())
                .unwrap()
                .prologue(PROLOGUE)
                .unwrap()
                .build_initiator()
                .unwrap(),
        ];
        for stranger in strangers {
            let (a, b) = pair();
            let (k2, r2) = (key.clone(), responder.clone());
            let server = tokio::spawn(async move { accept(b, &k2, &r2).await });
            let seen = probe(a, stranger).await;
            assert!(server.await.unwrap().is_err());
            assert!(!revealed(&public, &seen), "the responder's static key leaked: {} bytes back", seen.0.len());
            assert!(seen.0.is_empty(), "the responder answered a stranger: {:?}", seen.0);
        }

        // The same probe against the protocol-2 handshake (XXpsk3) learns
        // the key from message 2: the check above can fail.
        let (mut a, b) = pair();
        let r2 = responder.clone();
        let old_responder = tokio::spawn(async move {
            let mut state = snow::Builder::new(LEGACY_NOISE_PARAMS.parse().unwrap())
                .local_private_key(r2.secret())
                .unwrap()
                .psk(3, key.as_bytes())
                .unwrap()
                .prologue(PROLOGUE)
                .unwrap()
                .build_responder()
                .unwrap();
            let mut frames = FramedRead::new(b, noise_codec());
            let msg = frames.next().await.unwrap().unwrap();
            let mut out = [0u8; MAX_HANDSHAKE_MSG];
            state.read_message(&msg, &mut out).unwrap();
            let n = state.write_message(&hello_payload(), &mut out).unwrap();
            let mut b = frames.into_inner();
            b.write_all(&u16::try_from(n).unwrap().to_be_bytes()).await.unwrap();
            b.write_all(&out[..n]).await.unwrap();
            b.shutdown().await.unwrap();
        });
        let stranger = legacy_initiator(&ClusterKey::generate(), &Identity::generate());
        let seen = probe(&mut a, stranger).await;
        old_responder.await.unwrap();
        assert!(revealed(&public, &seen), "sanity: XXpsk3 should reveal the responder's static key");
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
            let m = PeerMessage::Register(crate::proto::ptp::Register::new(PeerId([1; 16]), 1, i, 0, "test"));
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

    /// A connected channel pair over an in-memory pipe.
    async fn channels() -> (SecureChannel<tokio::io::DuplexStream>, SecureChannel<tokio::io::DuplexStream>) {
        let key = ClusterKey::generate();
        let (a, b) = pair();
        let k2 = key.clone();
        let server = tokio::spawn(async move { accept(b, &k2, &Identity::generate()).await.unwrap() });
        let client = connect(a, &key, &Identity::generate()).await.unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn frames_at_noise_message_boundaries_arrive_whole() {
        let (client, server) = channels().await;
        let (_cr, mut w) = client.split();
        let (mut r, _sw) = server.split();
        // The prefix and the frame are sealed piece by piece without being
        // joined: every split point around one and two Noise messages.
        for len in
            [0, 1, MAX_PLAINTEXT - 5, MAX_PLAINTEXT - 4, MAX_PLAINTEXT - 3, 2 * MAX_PLAINTEXT - 4, 2 * MAX_PLAINTEXT]
        {
            let frame = crate::test_util::det_bytes(len as u64, len);
            let sender = async {
                w.send_frame(Bytes::from(frame.clone())).await.unwrap();
            };
            let (got, ()) = tokio::join!(r.recv_frame(), sender);
            assert_eq!(got.unwrap().unwrap(), frame, "frame of {len} bytes");
        }
    }

    #[tokio::test]
    async fn small_pieces_carry_the_same_frames_and_a_receiver_holds_one_piece() {
        let (client, server) = channels().await;
        let (_cr, mut w) = client.split();
        let (mut r, _sw) = server.split();
        w.set_piece_len(TRACKER_PIECE_LEN);
        for len in [0, 1, TRACKER_PIECE_LEN - 4, TRACKER_PIECE_LEN, 3 * TRACKER_PIECE_LEN + 7, 200_000] {
            let frame = crate::test_util::det_bytes(len as u64, len);
            let sender = async {
                w.send_frame(Bytes::from(frame.clone())).await.unwrap();
            };
            // The receiver learns the length from the first piece alone.
            let (peeked, ()) = tokio::join!(r.peek_frame_len(), sender);
            assert_eq!(peeked.unwrap(), Some(len));
            assert!(r.plain.len() <= TRACKER_PIECE_LEN, "{} bytes held to learn a length", r.plain.len());
            assert_eq!(r.recv_frame().await.unwrap().unwrap(), frame, "frame of {len} bytes");
        }
        // A reader that stops reading: the writer holds about two pieces.
        let big = Bytes::from(crate::test_util::det_bytes(9, 1 << 20));
        {
            let mut sending = std::pin::pin!(w.send_frame(big));
            assert!(futures::poll!(&mut sending).is_pending(), "the pipe fills before 1 MiB is sent");
        }
        let held = w.sink.write_buffer().capacity();
        assert!(held <= 2 * (2 + TRACKER_PIECE_LEN + TAG_LEN), "{held} bytes of buffer for a stalled reader");
        w.set_piece_len(1);
        assert_eq!(w.piece_len, MIN_PIECE_LEN);
        w.set_piece_len(usize::MAX);
        assert_eq!(w.piece_len, MAX_PLAINTEXT);
    }

    #[tokio::test]
    async fn released_buffers_keep_only_unread_bytes() {
        let (client, server) = channels().await;
        let (mut r, _cw) = client.split();
        let (_sr, mut w) = server.split();
        let bytes = crate::test_util::det_bytes(3, 1 << 20);
        let chunk = P2pResponse::Chunk { hash: crate::id::ContentHash::of(&bytes), bytes };
        let sent = chunk.clone();
        let sender = tokio::spawn(async move {
            w.send(&sent).await.unwrap();
            // Two small frames after it, in one go: the second one stays
            // buffered in the reader.
            w.send_unframed(&[0, 0, 0, 1, 3, 0, 0, 0, 1, 3]).await.unwrap();
            w
        });
        assert_eq!(r.recv::<P2pResponse>().await.unwrap(), Some(chunk));
        assert_eq!(r.recv::<PeerMessage>().await.unwrap(), Some(PeerMessage::KeepAlive));
        // Receiving after the big frame reused its allocation.
        assert!(r.buffer_capacity() >= 1 << 20, "{}", r.buffer_capacity());
        let mut w = sender.await.unwrap();
        assert!(w.buffer_capacity() > 0);

        r.release_buffers();
        w.release_buffers();
        assert!(r.buffer_capacity() <= 64, "{}", r.buffer_capacity());
        assert_eq!(w.buffer_capacity(), 0);
        // The buffered frame survived, and the channel still works.
        assert_eq!(r.recv::<PeerMessage>().await.unwrap(), Some(PeerMessage::KeepAlive));
        w.send(&PeerMessage::KeepAlive).await.unwrap();
        assert_eq!(r.recv::<PeerMessage>().await.unwrap(), Some(PeerMessage::KeepAlive));
    }
}
