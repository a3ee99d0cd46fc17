//! A test-only hostile peer: it holds the cluster key and an identity of
//! its own, speaks PTP to the tracker and serves the content it announces
//! over P2P like a real peer, but announces whatever records a test hands
//! it, including ones no honest peer would send (links that climb, paths
//! into `.dartsync`, setuid modes, counters of `u64::MAX`).
//!
//! Records the normal API cannot even encode (a `RelPath` refuses
//! `.DARTSYNC/x`) are encoded with a placeholder path of the same length
//! and patched byte for byte ([`Hostile::announce_patched`]), the way the
//! protocol's own tests forge a hostile path.
//!
//! Blocking API for `#[test]` functions: the client runs its own small
//! tokio runtime; the tracker session and the piece server are tasks on it.
//! Everything it learns (the global table from `Delta`s, why a session
//! ended) lands in a shared state the test polls with deadlines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dartsync_shared::channel;
use dartsync_shared::chunk::parts::cut_parts;
use dartsync_shared::chunk::summary::summarize;
use dartsync_shared::chunk::{ChunkInfo, ChunkParams, chunk_bytes};
use dartsync_shared::codec;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::p2p::{ChunkListPage, P2pRequest, P2pResponse};
use dartsync_shared::proto::ptp::{PeerMessage, Register, TrackerMessage, Welcome};
use dartsync_shared::{Causality, ContentHash, FileKind, FileRecord, PeerId, RelPath, ShortId, VersionVector};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::bytes::Bytes;

/// How long any single exchange with the tracker may take.
const EXCHANGE: Duration = Duration::from_secs(20);

/// What the tracker did with an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record shows up in the global table (a `Delta` carried it).
    Accepted,
    /// The tracker ended the session; the reason it sent (`Refused`), or
    /// how the connection ended.
    Dropped(String),
}

/// What the session and server tasks share with the test thread.
#[derive(Debug, Default)]
struct Shared {
    /// The global table as the tracker's deltas describe it, by path.
    table: HashMap<String, FileRecord>,
    /// Id of the current session (bumped on every connect).
    session: u64,
    /// Sessions that ended, and why.
    ended: HashMap<u64, String>,
    /// Chunks served to real peers.
    chunks_served: u64,
}

/// Content this client serves: whole-file hash -> (bytes, chunk list).
type Store = Arc<Mutex<StoreMap>>;
/// Content -> its bytes and chunk list.
type StoreMap = HashMap<ContentHash, (Vec<u8>, Vec<ChunkInfo>)>;

/// The hostile peer.
pub struct Hostile {
    rt: tokio::runtime::Runtime,
    key: ClusterKey,
    identity: Identity,
    tracker: SocketAddr,
    serve_port: u16,
    shared: Arc<Mutex<Shared>>,
    store: Store,
    /// Frames to send on the current session.
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    welcome: Option<Welcome>,
    /// Next counter of this client's own entry in version vectors.
    counter: u64,
}

impl std::fmt::Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hostile({})", self.identity.peer_id())
    }
}

impl Hostile {
    /// Loads the cluster key at `key_file`, starts the piece server on
    /// 127.0.0.1 and registers with the tracker at `tracker`.
    pub fn start(key_file: &Path, tracker: SocketAddr) -> Hostile {
        let key = ClusterKey::load(key_file).expect("load cluster key");
        let identity = Identity::generate();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let store: Store = Arc::default();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind piece server");
        let serve_port = listener.local_addr().unwrap().port();
        rt.spawn(serve(listener, key.clone(), identity.clone(), store.clone(), shared.clone()));
        let mut hostile =
            Hostile { rt, key, identity, tracker, serve_port, shared, store, tx: None, welcome: None, counter: 1 };
        hostile.reconnect();
        hostile
    }

    /// This client's peer id (the tracker logs it when it drops us).
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// This client's entry in version vectors.
    pub fn short(&self) -> ShortId {
        self.identity.peer_id().short()
    }

    /// The tracker's `Welcome` of the current session.
    pub fn welcome(&self) -> &Welcome {
        self.welcome.as_ref().expect("connected")
    }

    /// Chunks served to real peers so far.
    pub fn chunks_served(&self) -> u64 {
        self.shared.lock().unwrap().chunks_served
    }

    /// A copy of the global table as the deltas of every session so far
    /// describe it.
    pub fn table(&self) -> HashMap<String, FileRecord> {
        self.shared.lock().unwrap().table.clone()
    }

    /// True while the current session is up.
    pub fn connected(&self) -> bool {
        let shared = self.shared.lock().unwrap();
        self.tx.is_some() && !shared.ended.contains_key(&shared.session)
    }

    /// (Re)connects: handshake, `Register { seen_seq: 0, epoch: 0 }`, and
    /// waits for `Welcome`. Then the whole table follows as deltas, which
    /// the session task collects.
    pub fn reconnect(&mut self) {
        self.tx = None;
        let id = {
            let mut shared = self.shared.lock().unwrap();
            shared.session += 1;
            shared.session
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let fut = open_session(
            self.tracker,
            self.key.clone(),
            self.identity.clone(),
            self.serve_port,
            self.shared.clone(),
            id,
            rx,
        );
        let welcome = self
            .rt
            .block_on(async { tokio::time::timeout(EXCHANGE, fut).await })
            .expect("tracker answered Register in time")
            .unwrap_or_else(|e| panic!("hostile client could not register: {e}"));
        self.welcome = Some(welcome);
        self.tx = Some(tx);
    }

    /// Reconnects if the tracker dropped the current session.
    pub fn ensure_connected(&mut self) {
        if !self.connected() {
            self.reconnect();
        }
    }

    /// A fresh version vector `{self: n}` (n counts up per call).
    pub fn next_version(&mut self) -> VersionVector {
        let v = VersionVector::from_entries([(self.short(), self.counter)]);
        self.counter += 1;
        v
    }

    /// A file record for `bytes` at `path` (mode 0o644), chunked with the
    /// tracker's piece length; the bytes are served to whoever asks.
    pub fn file(&mut self, path: &str, bytes: &[u8]) -> FileRecord {
        let piece_len = self.welcome().piece_len;
        let chunked = chunk_bytes(bytes, ChunkParams::for_piece_len(piece_len));
        self.store.lock().unwrap().insert(chunked.content, (bytes.to_vec(), chunked.chunks.clone()));
        FileRecord {
            path: RelPath::new(path).expect("valid path"),
            kind: FileKind::File,
            size: chunked.size,
            mtime_ns: now_ns(),
            mode: 0o644,
            content: chunked.content,
            chunks: chunked.chunks_hash,
            version: self.next_version(),
            deleted: false,
        }
    }

    /// A folder record.
    pub fn dir(&mut self, path: &str) -> FileRecord {
        self.meta_record(path, FileKind::Dir, 0o755)
    }

    /// A symlink record `path -> target` (nothing checks the target here).
    pub fn symlink(&mut self, path: &str, target: &str) -> FileRecord {
        self.meta_record(path, FileKind::Symlink { target: target.to_owned() }, 0o777)
    }

    fn meta_record(&mut self, path: &str, kind: FileKind, mode: u32) -> FileRecord {
        FileRecord {
            path: RelPath::new(path).expect("valid path"),
            kind,
            size: 0,
            mtime_ns: now_ns(),
            mode,
            content: ContentHash::empty(),
            chunks: ContentHash::empty(),
            version: self.next_version(),
            deleted: false,
        }
    }

    /// Announces `records` in one `Announce` (reconnecting first if the
    /// tracker dropped us) and waits until they are all in the global table
    /// or the tracker drops the session.
    pub fn announce(&mut self, records: Vec<FileRecord>) -> Outcome {
        let expect: Vec<(String, VersionVector)> =
            records.iter().map(|r| (r.path.as_str().to_owned(), r.version.clone())).collect();
        let frame = codec::encode(&PeerMessage::Announce { records }).expect("encode announce");
        self.send_and_wait(frame, &expect)
    }

    /// Announces `records` after replacing, in the encoded message, each
    /// placeholder path text with its hostile text of the same byte length
    /// (`(placeholder, hostile)` pairs). This is how a path that
    /// `RelPath` refuses (`.DARTSYNC/x`) goes on the wire: bincode encodes a
    /// string as its length and bytes, so an equal-length swap is the same
    /// message with another path.
    pub fn announce_patched(&mut self, records: Vec<FileRecord>, swaps: &[(&str, &str)]) -> Outcome {
        let mut expect: Vec<(String, VersionVector)> =
            records.iter().map(|r| (r.path.as_str().to_owned(), r.version.clone())).collect();
        let mut frame = codec::encode(&PeerMessage::Announce { records }).expect("encode announce");
        for (placeholder, hostile) in swaps {
            assert_eq!(placeholder.len(), hostile.len(), "swap {placeholder:?} -> {hostile:?} must keep the length");
            let at: Vec<usize> = frame
                .windows(placeholder.len())
                .enumerate()
                .filter(|(_, w)| *w == placeholder.as_bytes())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(at.len(), 1, "placeholder {placeholder:?} must occur exactly once in the encoded message");
            frame[at[0]..at[0] + placeholder.len()].copy_from_slice(hostile.as_bytes());
            for (path, _) in &mut expect {
                if path == placeholder {
                    *path = (*hostile).to_owned();
                }
            }
        }
        assert!(
            codec::decode::<PeerMessage>(&frame).is_err(),
            "the patched message should be one the normal decoder refuses (else use announce)"
        );
        self.send_and_wait(frame, &expect)
    }

    /// Announces `records` (cut into batches that fit a frame) without
    /// waiting for anything: for announcements the tracker may hold.
    pub fn announce_no_wait(&mut self, records: &[FileRecord]) {
        self.ensure_connected();
        for batch in dartsync_shared::proto::ptp::announce_batches(records) {
            let frame = codec::encode(&PeerMessage::Announce { records: batch.to_vec() }).expect("encode announce");
            self.tx.as_ref().unwrap().send(Bytes::from(frame)).expect("session task alive");
        }
    }

    fn send_and_wait(&mut self, frame: Vec<u8>, expect: &[(String, VersionVector)]) -> Outcome {
        self.ensure_connected();
        let session = self.shared.lock().unwrap().session;
        self.tx.as_ref().unwrap().send(Bytes::from(frame)).expect("session task alive");
        let deadline = Instant::now() + EXCHANGE;
        loop {
            {
                let shared = self.shared.lock().unwrap();
                if let Some(why) = shared.ended.get(&session) {
                    return Outcome::Dropped(why.clone());
                }
                let all_in = expect.iter().all(|(path, version)| {
                    shared
                        .table
                        .get(path)
                        .is_some_and(|r| matches!(r.version.compare(version), Causality::Equal | Causality::Dominates))
                });
                if all_in {
                    return Outcome::Accepted;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tracker neither accepted {expect:?} nor dropped us within {EXCHANGE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Says `Goodbye` and closes the session.
    pub fn goodbye(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Bytes::from(codec::encode(&PeerMessage::Goodbye).unwrap()));
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.tx = None;
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Connects, registers and spawns the session task; returns the `Welcome`.
async fn open_session(
    tracker: SocketAddr,
    key: ClusterKey,
    identity: Identity,
    serve_port: u16,
    shared: Arc<Mutex<Shared>>,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> Result<Welcome, String> {
    let stream = TcpStream::connect(tracker).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let channel = channel::connect(stream, &key, &identity).await.map_err(|e| format!("handshake: {e}"))?;
    let (mut reader, mut writer) = channel.split();
    let register = Register::new(identity.peer_id(), serve_port, 0, 0, "test");
    writer.send(&PeerMessage::Register(register)).await.map_err(|e| format!("register: {e}"))?;
    let welcome = match reader.recv::<TrackerMessage>().await.map_err(|e| format!("welcome: {e}"))? {
        Some(TrackerMessage::Welcome(w)) => w,
        other => return Err(format!("expected Welcome, got {other:?}")),
    };
    let interval = Duration::from_millis(welcome.interval_ms.max(2) / 2);
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(interval);
        let why = loop {
            tokio::select! {
                msg = reader.recv::<TrackerMessage>() => match msg {
                    Ok(Some(TrackerMessage::Delta(delta))) => {
                        let mut shared = shared.lock().unwrap();
                        if delta.full {
                            shared.table.clear();
                        }
                        for entry in delta.entries {
                            shared.table.insert(entry.record.path.as_str().to_owned(), entry.record);
                        }
                    }
                    Ok(Some(TrackerMessage::Devices { .. } | TrackerMessage::Conflict(_))) => {}
                    Ok(Some(TrackerMessage::Refused { reason })) => break format!("refused: {reason}"),
                    Ok(Some(other)) => break format!("unexpected message {other:?}"),
                    Ok(None) => break "closed by the tracker".to_owned(),
                    Err(e) => break format!("channel error: {e}"),
                },
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        if let Err(e) = writer.send_frame(frame).await {
                            break format!("send failed: {e}");
                        }
                    }
                    None => {
                        let _ = writer.shutdown().await;
                        break "closed by the client".to_owned();
                    }
                },
                _ = keepalive.tick() => {
                    if let Err(e) = writer.send(&PeerMessage::KeepAlive).await {
                        break format!("keep-alive failed: {e}");
                    }
                }
            }
        };
        shared.lock().unwrap().ended.insert(id, why);
    });
    Ok(welcome)
}

/// The piece server: answers every P2P request for the content
/// in `store`, in request order, on every accepted connection.
async fn serve(listener: TcpListener, key: ClusterKey, identity: Identity, store: Store, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (key, identity, store, shared) = (key.clone(), identity.clone(), store.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(mut channel) = channel::accept(stream, &key, &identity).await else { return };
            while let Ok(Some(request)) = channel.recv::<P2pRequest>().await {
                let response = answer(&store, &shared, request);
                if channel.send(&response).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn answer(store: &Store, shared: &Mutex<Shared>, request: P2pRequest) -> P2pResponse {
    let store = store.lock().unwrap();
    match request {
        P2pRequest::GetChunkList { content, first, max, .. } => match store.get(&content) {
            Some((_, chunks)) => match ChunkListPage::of(content, chunks, first, max) {
                Some(page) => P2pResponse::ChunkList(page),
                None => P2pResponse::NotAvailable,
            },
            None => P2pResponse::NotAvailable,
        },
        P2pRequest::GetChunk { content, offset, len, hash } => {
            let Some((bytes, _)) = store.get(&content) else { return P2pResponse::NotAvailable };
            let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
                return P2pResponse::NotAvailable;
            };
            let Some(piece) = start.checked_add(len).and_then(|end| bytes.get(start..end)) else {
                return P2pResponse::NotAvailable;
            };
            if ContentHash::of(piece) != hash {
                return P2pResponse::NotAvailable;
            }
            shared.lock().unwrap().chunks_served += 1;
            P2pResponse::Chunk { hash, bytes: piece.to_vec() }
        }
        P2pRequest::GetChunkListSummary { content, .. } => {
            match store.get(&content).and_then(|(_, chunks)| summarize(content, chunks)) {
                Some(summary) => P2pResponse::ChunkListSummary(summary),
                None => P2pResponse::NotAvailable,
            }
        }
        P2pRequest::GetChunkParts { content, chunk } => match verified_range(&store, &content, &chunk, 0, chunk.len) {
            Some(piece) => P2pResponse::ChunkParts { hash: chunk.hash, parts: cut_parts(piece) },
            None => P2pResponse::NotAvailable,
        },
        P2pRequest::GetPart { content, chunk, at, len, hash } => {
            match verified_range(&store, &content, &chunk, at, len).filter(|part| ContentHash::of(part) == hash) {
                Some(part) => P2pResponse::Chunk { hash, bytes: part.to_vec() },
                None => P2pResponse::NotAvailable,
            }
        }
    }
}

/// `len` bytes at `at` inside `chunk` of `content`, if the chunk is there
/// and verifies.
fn verified_range<'a>(
    store: &'a StoreMap,
    content: &ContentHash,
    chunk: &ChunkInfo,
    at: u32,
    len: u32,
) -> Option<&'a [u8]> {
    let (bytes, _) = store.get(content)?;
    let start = usize::try_from(chunk.offset).ok()?;
    let whole = bytes.get(start..start.checked_add(chunk.len as usize)?)?;
    if ContentHash::of(whole) != chunk.hash {
        return None;
    }
    whole.get(at as usize..(at as usize).checked_add(len as usize)?)
}
