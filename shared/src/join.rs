//! The join handshake: a laptop with an invite code and no cluster key gets
//! the key and the tracker's identity, and the tracker learns the laptop's
//! identity, over the tracker's usual TCP port.
//!
//! # Messages
//! 1. Joiner -> tracker, 44 bytes in the clear: [`JOIN_MAGIC`]
//!    (`DSJOIN\r\n`, which no Noise handshake starts with), the join
//!    version (1), the code's nameplate (u16, big endian), and SPAKE2
//!    message A (33 bytes) computed from the whole code.
//! 2. Tracker -> joiner: one status byte. [`STATUS_OK`] is followed by
//!    SPAKE2 message B (33 bytes); [`STATUS_UNKNOWN`] (no open invite with
//!    that nameplate: expired, used, burned or never made) and
//!    [`STATUS_VERSION`] end the connection.
//! 3. Both sides now hold the SPAKE2 key, equal only if both used the same
//!    code. They run DartSync's usual Noise `XXpsk0` handshake
//!    ([`crate::channel`]) with a PSK derived from it instead of the
//!    cluster key: the joiner with the identity of the folder it joins, the
//!    tracker with its own. With another code the PSK differs and the
//!    tracker's first read fails: a wrong guess, counted against the
//!    invite, which is burned after [`MAX_FAILURES`].
//! 4. Inside the channel, [`JoinRequest`] (the device name) and
//!    [`JoinReply`] (the cluster key, or a refusal).
//!
//! # What each side proves
//! The joiner proves it knows the code (it could not complete the Noise
//! handshake otherwise) and its static key (Noise `XX`), which the tracker
//! admits. The tracker proves it knows the code, hence that it is the
//! tracker that made the invite, and its static key, which the joiner pins
//! as the tracker's identity.
//!
//! # What a LAN attacker can do
//! The words of the code never cross the wire; the nameplate does.
//! A passive attacker sees two SPAKE2 messages and a Noise session: nothing
//! that lets it test guesses offline. An active attacker gets one online
//! guess per connection (SPAKE2's property): as the joiner it burns the
//! invite after [`MAX_FAILURES`] guesses (a denial of service, noticed at
//! once: `join` fails and `dartsync invite` makes a new code); as a fake
//! tracker it gets one guess and the joiner fails cleanly, having written
//! nothing. It cannot learn the cluster key, nor make a laptop trust it.

use std::time::Duration;

use spake2::{Ed25519Group, Identity as SpakeIdentity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::channel::{self, ChannelError};
use crate::id::{PeerId, PublicKey};
use crate::invite_code::InviteCode;
use crate::key::{ClusterKey, Identity};
use crate::proto::ProtocolError;
pub use crate::proto::join::{JoinReply, JoinRequest, MAX_JOIN_FRAME};

/// The first bytes of a join connection.
pub const JOIN_MAGIC: &[u8; 8] = b"DSJOIN\r\n";

/// The version of this handshake.
pub const JOIN_VERSION: u8 = 1;

/// Wrong guesses an invite survives; the next one burns it.
pub const MAX_FAILURES: u8 = 3;

/// Status byte: message B follows.
pub const STATUS_OK: u8 = 0;
/// Status byte: no open invite with that nameplate.
pub const STATUS_UNKNOWN: u8 = 1;
/// Status byte: another join version.
pub const STATUS_VERSION: u8 = 2;

/// The whole join, either side, must finish within this.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// SPAKE2 messages on Ed25519: a side byte and a point.
const SPAKE_MSG_LEN: usize = 33;

/// Message 1's length.
pub const HELLO_LEN: usize = JOIN_MAGIC.len() + 1 + 2 + SPAKE_MSG_LEN;

const ID_JOINER: &[u8] = b"dartsync join: device";
const ID_TRACKER: &[u8] = b"dartsync join: tracker";
const PSK_CONTEXT: &str = "dartsync join v1 2026-12 noise psk";

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The other side is not a DartSync join peer.
    #[error("not a DartSync join: {0}")]
    Malformed(&'static str),
    /// The tracker has no open invite with this code's number.
    #[error(
        "the tracker has no open invite numbered {0}: it expired, was used, or was burned after {MAX_FAILURES} \
         wrong tries; run `dartsync invite` on the tracker's machine for a new code"
    )]
    UnknownInvite(u16),
    /// The tracker speaks another join version.
    #[error("the tracker speaks another version of the join handshake (update DartSync on one side)")]
    Version,
    /// The key exchange did not produce a shared key: the codes differ.
    #[error(
        "the tracker did not accept the code: check it for a typo (a wrong try is counted, and the code is \
         burned after {MAX_FAILURES}); `dartsync invite` on the tracker's machine makes a new one"
    )]
    WrongCode,
    /// The tracker refused this device after the code was accepted.
    #[error("the tracker refused this device: {0}")]
    Refused(String),
    /// The channel failed after the code was accepted.
    #[error(transparent)]
    Channel(ChannelError),
    /// A message failed validation.
    #[error("invalid join message: {0}")]
    Invalid(#[from] ProtocolError),
    /// No progress in time.
    #[error("the join did not finish within {0:?}")]
    Timeout(Duration),
}

/// What the joiner gets.
#[derive(Debug)]
pub struct Granted {
    /// The cluster key.
    pub key: ClusterKey,
    /// The tracker's static key, to pin.
    pub tracker: PublicKey,
}

/// Runs the joiner's side over `stream` (connected to the tracker's port).
pub async fn join<S>(stream: S, code: &InviteCode, identity: &Identity, name: &str) -> Result<Granted, JoinError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(JOIN_TIMEOUT, join_inner(stream, code, identity, name))
        .await
        .map_err(|_| JoinError::Timeout(JOIN_TIMEOUT))?
}

async fn join_inner<S>(mut stream: S, code: &InviteCode, identity: &Identity, name: &str) -> Result<Granted, JoinError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (spake, msg_a) = Spake2::<Ed25519Group>::start_a(
        &Password::new(code.password()),
        &SpakeIdentity::new(ID_JOINER),
        &SpakeIdentity::new(ID_TRACKER),
    );
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(JOIN_MAGIC);
    hello.push(JOIN_VERSION);
    hello.extend_from_slice(&code.nameplate().to_be_bytes());
    hello.extend_from_slice(&msg_a);
    stream.write_all(&hello).await?;
    stream.flush().await?;
    let status = read_status(&mut stream).await?;
    match status {
        STATUS_OK => {}
        STATUS_UNKNOWN => return Err(JoinError::UnknownInvite(code.nameplate())),
        STATUS_VERSION => return Err(JoinError::Version),
        _ => return Err(JoinError::Malformed("unknown status byte")),
    }
    let mut msg_b = [0u8; SPAKE_MSG_LEN];
    stream.read_exact(&mut msg_b).await.map_err(early_eof)?;
    let shared = spake.finish(&msg_b).map_err(|_| JoinError::Malformed("bad SPAKE2 message"))?;
    let psk = derive_psk(&shared);
    let channel = channel::connect(stream, &psk, identity).await.map_err(|e| match e {
        // The tracker closes without answering when our first message does
        // not decrypt under its PSK: the codes differ.
        ChannelError::ClosedInHandshake | ChannelError::Noise(_) | ChannelError::Decrypt => JoinError::WrongCode,
        ChannelError::Io(e) if is_reset(&e) => JoinError::WrongCode,
        other => JoinError::Channel(other),
    })?;
    let tracker = channel.remote_key();
    let (mut reader, mut writer) = channel.split();
    writer.send(&JoinRequest { name: name.to_owned() }).await.map_err(JoinError::Channel)?;
    let reply: JoinReply = reader
        .recv_bounded(MAX_JOIN_FRAME)
        .await
        .map_err(JoinError::Channel)?
        .ok_or(JoinError::Malformed("the tracker closed without an answer"))?;
    reply.validate()?;
    match reply {
        JoinReply::Granted { cluster_key } => Ok(Granted { key: ClusterKey::from_bytes(cluster_key), tracker }),
        JoinReply::Refused { reason } => Err(JoinError::Refused(reason)),
    }
}

async fn read_status<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u8, JoinError> {
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await.map_err(early_eof)?;
    Ok(status[0])
}

fn early_eof(e: std::io::Error) -> JoinError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        JoinError::Malformed("the tracker closed the connection (is this a DartSync tracker of a recent release?)")
    } else {
        JoinError::Io(e)
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
}

fn derive_psk(shared: &[u8]) -> ClusterKey {
    ClusterKey::from_bytes(blake3::derive_key(PSK_CONTEXT, shared))
}

/// Message 1 as the tracker read it.
#[derive(Debug)]
pub struct JoinHello {
    nameplate: u16,
    version: u8,
    msg_a: [u8; SPAKE_MSG_LEN],
}

impl JoinHello {
    /// The nameplate of the code the joiner holds.
    pub fn nameplate(&self) -> u16 {
        self.nameplate
    }
}

/// Tracker: reads message 1 (magic included) within
/// [`channel::FIRST_MESSAGE_TIMEOUT`]. A hello of another version is
/// answered [`STATUS_VERSION`] and refused.
pub async fn read_hello<S>(stream: &mut S) -> Result<JoinHello, JoinError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; HELLO_LEN];
    tokio::time::timeout(channel::FIRST_MESSAGE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| JoinError::Timeout(channel::FIRST_MESSAGE_TIMEOUT))?
        .map_err(JoinError::Io)?;
    let hello = parse_hello(&buf)?;
    if hello.version != JOIN_VERSION {
        let _ = stream.write_all(&[STATUS_VERSION]).await;
        return Err(JoinError::Version);
    }
    Ok(hello)
}

/// Parses message 1.
fn parse_hello(buf: &[u8; HELLO_LEN]) -> Result<JoinHello, JoinError> {
    let (magic, rest) = buf.split_at(JOIN_MAGIC.len());
    if magic != JOIN_MAGIC {
        return Err(JoinError::Malformed("no join magic"));
    }
    let version = rest[0];
    let nameplate = u16::from_be_bytes([rest[1], rest[2]]);
    let mut msg_a = [0u8; SPAKE_MSG_LEN];
    msg_a.copy_from_slice(&rest[3..]);
    Ok(JoinHello { nameplate, version, msg_a })
}

/// Tracker: no open invite has the hello's nameplate.
pub async fn refuse_unknown<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.write_all(&[STATUS_UNKNOWN]).await;
    let _ = stream.shutdown().await;
}

/// Tracker: the rest of the join after a hello whose nameplate belongs to
/// `code`: message B, then the Noise handshake as the responder. A
/// [`JoinError::WrongCode`] is a wrong guess; any other error after
/// message B should be counted as one too (the joiner may have stopped to
/// think about its guess). On success the request is read and checked.
pub async fn answer<S>(
    mut stream: S,
    hello: &JoinHello,
    code: &InviteCode,
    identity: &Identity,
) -> Result<JoinSession<S>, JoinError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (spake, msg_b) = Spake2::<Ed25519Group>::start_b(
        &Password::new(code.password()),
        &SpakeIdentity::new(ID_JOINER),
        &SpakeIdentity::new(ID_TRACKER),
    );
    let mut answer = Vec::with_capacity(1 + SPAKE_MSG_LEN);
    answer.push(STATUS_OK);
    answer.extend_from_slice(&msg_b);
    stream.write_all(&answer).await?;
    stream.flush().await?;
    let shared = spake.finish(&hello.msg_a).map_err(|_| JoinError::Malformed("bad SPAKE2 message"))?;
    let psk = derive_psk(&shared);
    let channel = channel::accept(stream, &psk, identity).await.map_err(|e| match e {
        ChannelError::Noise(_) | ChannelError::Decrypt => JoinError::WrongCode,
        other => JoinError::Channel(other),
    })?;
    let device = channel.remote_peer_id();
    let (mut reader, writer) = channel.split();
    let request: JoinRequest = reader
        .recv_bounded(MAX_JOIN_FRAME)
        .await
        .map_err(JoinError::Channel)?
        .ok_or(JoinError::Malformed("the device closed before its request"))?;
    request.validate()?;
    Ok(JoinSession { device, request, writer })
}

/// Tracker: an accepted code, before the answer.
#[derive(Debug)]
pub struct JoinSession<S> {
    device: PeerId,
    request: JoinRequest,
    writer: channel::ChannelWriter<tokio::io::WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> JoinSession<S> {
    /// The joining device's id (proven by its static key).
    pub fn device(&self) -> PeerId {
        self.device
    }

    /// The name the device asked for.
    pub fn name(&self) -> &str {
        &self.request.name
    }

    /// Hands over the cluster key.
    pub async fn grant(mut self, key: &ClusterKey) -> Result<(), JoinError> {
        self.reply(&JoinReply::Granted { cluster_key: *key.as_bytes() }).await
    }

    /// Tells the device why it may not join.
    pub async fn refuse(mut self, reason: String) -> Result<(), JoinError> {
        self.reply(&JoinReply::Refused { reason }).await
    }

    async fn reply(&mut self, reply: &JoinReply) -> Result<(), JoinError> {
        self.writer.send(reply).await.map_err(JoinError::Channel)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer.shutdown()).await;
        Ok(())
    }
}

/// Not part of the API: the hello of a given code, for hostile-input tests.
#[doc(hidden)]
pub fn hello_bytes_for_tests(nameplate: u16, version: u8) -> Vec<u8> {
    let mut hello = JOIN_MAGIC.to_vec();
    hello.push(version);
    hello.extend_from_slice(&nameplate.to_be_bytes());
    hello.extend_from_slice(&[0u8; SPAKE_MSG_LEN]);
    hello
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    /// A tracker side that knows `known` as the only open invite.
    async fn tracker_side<S>(
        mut stream: S,
        known: InviteCode,
        identity: Identity,
        key: ClusterKey,
    ) -> Result<PeerId, JoinError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let hello = read_hello(&mut stream).await?;
        if hello.nameplate() != known.nameplate() {
            refuse_unknown(&mut stream).await;
            return Err(JoinError::UnknownInvite(hello.nameplate()));
        }
        let session = answer(stream, &hello, &known, &identity).await?;
        let device = session.device();
        assert_eq!(session.name(), "laptop");
        session.grant(&key).await?;
        Ok(device)
    }

    #[tokio::test]
    async fn the_right_code_hands_over_the_key_and_both_identities() {
        let code = InviteCode::generate(7);
        let (tracker_id, device_id, key) = (Identity::generate(), Identity::generate(), ClusterKey::generate());
        let (a, b) = duplex(4096);
        let tracker_pub = tracker_id.public();
        let server = tokio::spawn(tracker_side(b, code.clone(), tracker_id, key.clone()));
        let granted = join(a, &code, &device_id, "laptop").await.unwrap();
        assert_eq!(granted.key.as_bytes(), key.as_bytes());
        assert_eq!(granted.tracker, tracker_pub);
        assert_eq!(server.await.unwrap().unwrap(), device_id.peer_id());
    }

    #[tokio::test]
    async fn a_wrong_code_with_the_right_nameplate_fails_on_both_sides_without_the_key() {
        let code = InviteCode::generate(7);
        let wrong = loop {
            let c = InviteCode::generate(7);
            if c != code {
                break c;
            }
        };
        let (a, b) = duplex(4096);
        let server = tokio::spawn(tracker_side(b, code, Identity::generate(), ClusterKey::generate()));
        let err = join(a, &wrong, &Identity::generate(), "laptop").await.unwrap_err();
        assert!(matches!(err, JoinError::WrongCode), "{err:?}");
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, JoinError::WrongCode), "{err:?}");
    }

    #[tokio::test]
    async fn an_unknown_nameplate_is_answered_as_such() {
        let (a, b) = duplex(4096);
        let server =
            tokio::spawn(tracker_side(b, InviteCode::generate(8), Identity::generate(), ClusterKey::generate()));
        let err = join(a, &InviteCode::generate(9), &Identity::generate(), "laptop").await.unwrap_err();
        assert!(matches!(err, JoinError::UnknownInvite(9)), "{err:?}");
        assert!(err.to_string().contains("dartsync invite"), "{err}");
        let _ = server.await;
    }

    #[tokio::test]
    async fn hostile_hellos_are_refused_without_panicking() {
        // Wrong magic.
        let (mut a, mut b) = duplex(4096);
        a.write_all(&[b'X'; HELLO_LEN]).await.unwrap();
        assert!(matches!(read_hello(&mut b).await, Err(JoinError::Malformed(_))));
        // Another version: answered, then refused.
        let (mut a, mut b) = duplex(4096);
        a.write_all(&hello_bytes_for_tests(7, 99)).await.unwrap();
        assert!(matches!(read_hello(&mut b).await, Err(JoinError::Version)));
        let mut status = [0u8; 1];
        a.read_exact(&mut status).await.unwrap();
        assert_eq!(status[0], STATUS_VERSION);
        // A truncated hello.
        let (mut a, mut b) = duplex(4096);
        a.write_all(&JOIN_MAGIC[..]).await.unwrap();
        drop(a);
        assert!(read_hello(&mut b).await.is_err());
        // A point that is not on the curve: the answer fails cleanly.
        let (mut a, mut b) = duplex(4096);
        let mut bad = hello_bytes_for_tests(7, JOIN_VERSION);
        let last = bad.len() - 1;
        bad[last] = 0xff;
        a.write_all(&bad).await.unwrap();
        let hello = read_hello(&mut b).await.unwrap();
        let result = answer(b, &hello, &InviteCode::generate(7), &Identity::generate()).await;
        assert!(result.is_err());
    }
}
