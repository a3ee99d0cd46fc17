//! The piece server's limits over real TCP on 127.0.0.1: chunk-list
//! requests take upload slots like chunks, connections without the cluster
//! key never keep a member out and get nothing back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dartsync_peer::transfer::{Candidate, ChunkSource, MemoryChunkSource, PeerGate, ServeConfig, serve};
use dartsync_shared::channel::{self, ChannelError, FIRST_MESSAGE_TIMEOUT, SecureChannel};
use dartsync_shared::chunk::{ChunkParams, ChunkedFile};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::CHUNK_LIST_PAGE;
use dartsync_shared::proto::p2p::{P2pRequest, P2pResponse};
use dartsync_shared::test_util::{det_bytes, eventually_async, rel, within};
use dartsync_shared::{ChunkInfo, ContentHash};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// Blocks every chunk-list lookup until opened (so a request holds its
/// slot); opens on drop.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

struct GatedLists {
    inner: Arc<MemoryChunkSource>,
    gate: Arc<Gate>,
}

impl ChunkSource for GatedLists {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.gate.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.cv.wait(open).unwrap();
        }
        drop(open);
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        self.inner.locate(hash, len)
    }
}

struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A piece server task over `source`; stopped when the token drops.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    _tmp: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(key: &ClusterKey, source: Arc<dyn ChunkSource>, slots_per_peer: usize, slots_total: usize) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ServeConfig {
        slots_per_peer,
        slots_total,
        corrupt_for_tests: false,
        tmp_dir: tmp.path().into(),
        gate: PeerGate::open(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, key.clone(), Identity::generate(), source, cfg, stop.clone()));
    Server { addr, stop, _tmp: tmp }
}

async fn client(addr: SocketAddr, key: &ClusterKey, identity: &Identity) -> SecureChannel<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    channel::connect(stream, key, identity).await.unwrap()
}

async fn recv(c: &mut SecureChannel<TcpStream>) -> P2pResponse {
    within(DEADLINE, "an answer", c.recv::<P2pResponse>()).await.unwrap().expect("closed")
}

fn list_request(content: ContentHash) -> P2pRequest {
    P2pRequest::GetChunkList { path: rel("f"), content, first: 0, max: CHUNK_LIST_PAGE }
}

/// A memory source holding one 256 KiB file.
fn one_file() -> (Arc<MemoryChunkSource>, ChunkedFile, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, det_bytes(5, 256 * 1024)).unwrap();
    let source = Arc::new(MemoryChunkSource::new());
    let chunked = source.add_file(&path, ChunkParams::for_piece_len(16 * 1024)).unwrap();
    (source, chunked, dir)
}

#[tokio::test]
async fn chunk_list_requests_take_upload_slots_per_peer_and_in_total() {
    let (inner, f, _dir) = one_file();
    let key = ClusterKey::generate();
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let source = Arc::new(GatedLists { inner, gate: gate.clone() });
    let server = start(&key, source, 1, 2).await;
    let (x, y, z) = (Identity::generate(), Identity::generate(), Identity::generate());

    // X's chunk list holds X's only slot (blocked on the gate).
    let mut x1 = client(server.addr, &key, &x).await;
    x1.send(&list_request(f.content)).await.unwrap();
    eventually_async(DEADLINE, "x1's lookup", async || gate.calls.load(Ordering::SeqCst) == 1).await;
    // X again, on another connection: its per-peer slots are full.
    let mut x2 = client(server.addr, &key, &x).await;
    x2.send(&list_request(f.content)).await.unwrap();
    assert_eq!(recv(&mut x2).await, P2pResponse::Busy);
    // Y takes the second slot of the total; Z finds the total full.
    let mut y1 = client(server.addr, &key, &y).await;
    y1.send(&list_request(f.content)).await.unwrap();
    eventually_async(DEADLINE, "y1's lookup", async || gate.calls.load(Ordering::SeqCst) == 2).await;
    let mut z1 = client(server.addr, &key, &z).await;
    z1.send(&list_request(f.content)).await.unwrap();
    assert_eq!(recv(&mut z1).await, P2pResponse::Busy);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 2, "a Busy request did work anyway");

    gate.open();
    assert!(matches!(recv(&mut x1).await, P2pResponse::ChunkList(_)));
    assert!(matches!(recv(&mut y1).await, P2pResponse::ChunkList(_)));
    // The slots are free again.
    z1.send(&list_request(f.content)).await.unwrap();
    assert!(matches!(recv(&mut z1).await, P2pResponse::ChunkList(_)));
    x2.send(&list_request(f.content)).await.unwrap();
    assert!(matches!(recv(&mut x2).await, P2pResponse::ChunkList(_)));
}

#[tokio::test]
async fn idle_connections_without_the_key_never_keep_a_member_out() {
    let (source, f, _dir) = one_file();
    let key = ClusterKey::generate();
    let server = start(&key, source, 4, 16).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let start = Instant::now();
    let mut member = client(server.addr, &key, &Identity::generate()).await;
    member.send(&list_request(f.content)).await.unwrap();
    assert!(matches!(recv(&mut member).await, P2pResponse::ChunkList(_)));
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "a member took {took:?} past 300 idle connections");
    // Every idle connection is closed, the last by the first-message deadline.
    let mut buf = [0u8; 16];
    for stream in &mut idle {
        let n = within(
            FIRST_MESSAGE_TIMEOUT + Duration::from_secs(3),
            "an idle connection to close",
            stream.read(&mut buf),
        )
        .await;
        assert!(matches!(n, Ok(0) | Err(_)), "an idle connection got {n:?}");
    }
}

#[tokio::test]
async fn a_wrong_key_is_closed_before_any_answer() {
    let (source, _f, _dir) = one_file();
    let server = start(&ClusterKey::generate(), source, 4, 16).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    // The initiator waits for message 2 (the responder's identity): the
    // server closes instead of sending it.
    let err = channel::connect(stream, &ClusterKey::generate(), &Identity::generate()).await.unwrap_err();
    assert!(matches!(err, ChannelError::ClosedInHandshake), "{err}");
}
