//! [`Links`]: authenticated connections to holders kept open between
//! downloads, so a burst of small files costs one TCP connect and one
//! Noise handshake per holder, not one per file.
//!
//! A worker hands its link back only when it ended cleanly with nothing in
//! flight (so no answer to an old request can be read by the next user).
//! A link is taken only for the holder (peer id and address) it was made
//! for, at most [`MAX_IDLE`] after it was handed back (well inside the
//! piece server's idle timeout); at most [`MAX_IDLE_PER_HOLDER`] wait per
//! holder. The server may still have closed a link meanwhile: the worker
//! that took it retries once on a fresh connection if the link failed
//! before any chunk arrived on it.
//!
//! Handshakes to one holder are gated: at most
//! [`MAX_CONNECTING_PER_HOLDER`] at a time ([`Links::connecting`]). A
//! burst of downloads would otherwise open one connection each at once,
//! and a holder's piece server lets only
//! [`PREAUTH_PER_SOURCE`](crate::transfer::serve::PREAUTH_PER_SOURCE)
//! connections of one address be in the handshake: it closed the rest, and
//! their files waited as "holder unreachable" until a retry.
//!
//! A link's buffers grow to the largest frame it carried (a chunk of up to
//! [`MAX_CHUNK_LEN`](dartsync_shared::limits::MAX_CHUNK_LEN) bytes); a link
//! is pooled with them given back, so the idle links of every holder cost
//! a few KiB each, not a chunk each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::channel::{ChannelReader, ChannelWriter};
use parking_lot::Mutex;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The reading half of a link to a holder.
pub(crate) type Reader = ChannelReader<ReadHalf<TcpStream>>;
/// The writing half of a link to a holder.
pub(crate) type Writer = ChannelWriter<WriteHalf<TcpStream>>;

/// Idle links kept per holder at most.
/// As many as downloads run at once by default (`max_parallel_downloads`
/// = 16, each on its own link): with only 4 kept, a burst of small files
/// made a Noise handshake for three files in four (an eighth of a
/// receiver's CPU per file went to Diffie-Hellman).
pub(crate) const MAX_IDLE_PER_HOLDER: usize = 16;
/// An idle link older than this is closed rather than reused.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(30);
/// Handshakes to one holder under way at once at most. Well below the
/// piece server's limit per address (8), so that three peers behind one
/// address (or on one machine) stay below it together.
pub(crate) const MAX_CONNECTING_PER_HOLDER: usize = 2;

/// A holder, as links are kept for it.
type HolderKey = (PeerId, SocketAddr);

/// One idle link.
struct Idle {
    reader: Reader,
    writer: Writer,
    since: Instant,
}

/// Idle links by holder, and the gates of handshakes under way.
#[derive(Default)]
pub(crate) struct Links {
    idle: Mutex<HashMap<HolderKey, Vec<Idle>>>,
    /// Gates of the holders someone connects to or waits for (others are
    /// dropped at the next [`Links::connecting`]).
    gates: Mutex<HashMap<HolderKey, Arc<Semaphore>>>,
}

/// Leave to make one handshake with a holder ([`Links::connecting`]);
/// dropped when the handshake is over, whatever its outcome.
pub(crate) type ConnectPermit = OwnedSemaphorePermit;

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.lock().values().map(Vec::len).sum();
        f.debug_struct("Links").field("idle", &idle).finish()
    }
}

impl Links {
    /// The most recently returned idle link to this holder, if one is
    /// fresh enough.
    pub(crate) fn take(&self, peer: PeerId, addr: SocketAddr) -> Option<(Reader, Writer)> {
        let mut idle = self.idle.lock();
        let links = idle.get_mut(&(peer, addr))?;
        links.retain(|l| l.since.elapsed() < MAX_IDLE);
        let link = links.pop();
        if links.is_empty() {
            idle.remove(&(peer, addr));
        }
        link.map(|l| (l.reader, l.writer))
    }

    /// Waits until this download may make a handshake with the holder
    /// (fewer than [`MAX_CONNECTING_PER_HOLDER`] under way), first come
    /// first served. Cancel-safe. A caller that waited should look for a
    /// kept link again ([`Links::take`]) before connecting.
    pub(crate) async fn connecting(&self, peer: PeerId, addr: SocketAddr) -> ConnectPermit {
        let gate = {
            let mut gates = self.gates.lock();
            // A gate only the map holds has no handshake and no waiter.
            gates.retain(|_, gate| Arc::strong_count(gate) > 1);
            gates.entry((peer, addr)).or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTING_PER_HOLDER))).clone()
        };
        gate.acquire_owned().await.expect("a gate is never closed")
    }

    /// Keeps a link with nothing in flight for the next download from the
    /// same holder; expired links of every holder are closed meanwhile.
    pub(crate) fn put(&self, peer: PeerId, addr: SocketAddr, mut reader: Reader, mut writer: Writer) {
        reader.release_buffers();
        writer.release_buffers();
        let mut idle = self.idle.lock();
        idle.retain(|_, links| {
            links.retain(|l| l.since.elapsed() < MAX_IDLE);
            !links.is_empty()
        });
        let links = idle.entry((peer, addr)).or_default();
        if links.len() < MAX_IDLE_PER_HOLDER {
            links.push(Idle { reader, writer, since: Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::channel;
    use dartsync_shared::key::{ClusterKey, Identity};
    use dartsync_shared::proto::p2p::P2pResponse;
    use dartsync_shared::{ContentHash, test_util};
    use tokio::net::TcpListener;

    /// A link over loopback TCP and the holder's end of it.
    async fn link() -> (Reader, Writer, channel::SecureChannel<TcpStream>) {
        let key = ClusterKey::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            channel::accept(stream, &server_key, &Identity::generate()).await.unwrap()
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (reader, writer) = channel::connect(stream, &key, &Identity::generate()).await.unwrap().split();
        (reader, writer, server.await.unwrap())
    }

    #[tokio::test]
    async fn handshakes_to_one_holder_are_gated_and_gates_are_forgotten() {
        let links = Links::default();
        let (peer, other) = (Identity::generate().peer_id(), Identity::generate().peer_id());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut held: Vec<ConnectPermit> = Vec::new();
        for _ in 0..MAX_CONNECTING_PER_HOLDER {
            held.push(links.connecting(peer, addr).await);
        }
        // The next one waits, for this holder only.
        let waiting = tokio::time::timeout(Duration::from_millis(50), links.connecting(peer, addr)).await;
        assert!(waiting.is_err(), "a handshake beyond the limit was allowed");
        let elsewhere = tokio::time::timeout(Duration::from_secs(5), links.connecting(other, addr)).await;
        assert!(elsewhere.is_ok(), "another holder was held up");
        drop(elsewhere);
        held.pop();
        let next = tokio::time::timeout(Duration::from_secs(5), links.connecting(peer, addr)).await;
        assert!(next.is_ok(), "a freed handshake was not handed on");
        drop(next);
        drop(held);
        // Only the holder connected to last keeps a gate.
        let _last = links.connecting(other, addr).await;
        let gates: Vec<HolderKey> = links.gates.lock().keys().copied().collect();
        assert_eq!(gates, [(other, addr)], "gates of idle holders are kept");
    }

    #[tokio::test]
    async fn a_pooled_link_keeps_no_chunk_sized_buffer() {
        let (mut reader, writer, mut holder) = link().await;
        let bytes = test_util::det_bytes(7, 1 << 20);
        let chunk = P2pResponse::Chunk { hash: ContentHash::of(&bytes), bytes };
        // A big frame, then a small one: receiving the second reuses the
        // big frame's allocation, as a link in use does.
        holder.send(&chunk).await.unwrap();
        holder.send(&P2pResponse::Busy).await.unwrap();
        assert_eq!(reader.recv::<P2pResponse>().await.unwrap(), Some(chunk));
        assert_eq!(reader.recv::<P2pResponse>().await.unwrap(), Some(P2pResponse::Busy));
        assert!(reader.buffer_capacity() >= 1 << 20, "in use: {}", reader.buffer_capacity());

        let links = Links::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let holder_id = reader.remote_peer_id();
        links.put(holder_id, addr, reader, writer);
        let (mut reader, writer) = links.take(holder_id, addr).unwrap();
        assert_eq!(reader.buffer_capacity(), 0);
        assert_eq!(writer.buffer_capacity(), 0);

        // Still a working link: the next frame arrives whole.
        holder.send(&P2pResponse::Busy).await.unwrap();
        assert_eq!(reader.recv::<P2pResponse>().await.unwrap(), Some(P2pResponse::Busy));
    }
}
