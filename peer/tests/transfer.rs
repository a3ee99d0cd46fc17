//! Transfer layer over real TCP on 127.0.0.1: piece servers as tasks (each
//! with its own identity, one cluster key) and the multi-source downloader.
//! Local content comes from `MemoryChunkSource`s over temp folders, so these
//! tests do not depend on the peer's index.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dartsync_peer::transfer::{Candidate, ChunkSource, MemoryChunkSource};
use dartsync_peer::transfer::{DownloadError, DownloadJob, DownloadLimits, DownloadOutcome, Downloader, HolderError};
use dartsync_peer::transfer::{PeerGate, ServeConfig, serve};
use dartsync_shared::channel::{self, SecureChannel};
use dartsync_shared::chunk::parts::PART_MAX;
use dartsync_shared::chunk::{ChunkParams, ChunkedFile, chunk_bytes};
use dartsync_shared::codec::encode;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::{CHUNK_LIST_PAGE, MAX_CHUNK_LEN};
use dartsync_shared::proto::p2p::{ChunkListPage, P2pRequest, P2pResponse};
use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::test_util::{RecordBuilder, det_bytes, eventually_async, rel, within};
use dartsync_shared::{ChunkInfo, ContentHash, FileRecord, PeerId};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Small pieces so a few MiB make many chunks. (Debug builds move about
/// 1 MB/s through the Noise channel, so the files stay small.)
const PIECE: u32 = 16 * 1024;
const MIB: usize = 1024 * 1024;
const KIB: usize = 1024;
/// Deadline for every poll and every "promptly".
const DEADLINE: Duration = Duration::from_secs(20);

fn params() -> ChunkParams {
    ChunkParams::for_piece_len(PIECE)
}

fn record(path: &str, chunked: &ChunkedFile) -> FileRecord {
    RecordBuilder::file(path).chunked(chunked).build()
}

/// A folder with files, indexed by a `MemoryChunkSource`.
struct Site {
    dir: TempDir,
    source: Arc<MemoryChunkSource>,
}

impl Site {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(MemoryChunkSource::new());
        let site = Site { dir, source };
        for (name, bytes) in files {
            site.put(name, bytes);
        }
        site
    }

    fn put(&self, name: &str, bytes: &[u8]) -> ChunkedFile {
        self.put_with(name, bytes, params())
    }

    /// [`Self::put`] chunked with `params`.
    fn put_with(&self, name: &str, bytes: &[u8], params: ChunkParams) -> ChunkedFile {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        self.source.add_file(&path, params).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// How most tests start: a cluster key and a site holding one file `f` of
/// `len` deterministic bytes, with its chunking and record.
struct OneFile {
    key: ClusterKey,
    bytes: Vec<u8>,
    chunked: ChunkedFile,
    rec: FileRecord,
    site: Site,
}

fn one_file(seed: u64, len: usize) -> OneFile {
    let bytes = det_bytes(seed, len);
    let site = Site::new(&[("f", &bytes)]);
    let chunked = chunk_bytes(&bytes, params());
    OneFile { key: ClusterKey::generate(), rec: record("f", &chunked), bytes, chunked, site }
}

/// A piece server running as a task.
struct Server {
    addr: SocketAddr,
    peer_id: PeerId,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    _tmp: TempDir,
}

impl Server {
    async fn start(key: &ClusterKey, source: Arc<dyn ChunkSource>, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = ServeConfig {
            slots_per_peer: 4,
            slots_total: 16,
            corrupt_for_tests: false,
            tmp_dir: tmp.path().into(),
            gate: PeerGate::open(),
        };
        tweak(&mut cfg);
        Self::start_with(key, source, cfg, tmp).await
    }

    async fn start_with(key: &ClusterKey, source: Arc<dyn ChunkSource>, cfg: ServeConfig, tmp: TempDir) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = Identity::generate();
        let peer_id = identity.peer_id();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, key.clone(), identity, source, cfg, stop.clone()));
        Server { addr, peer_id, stop, task: Some(task), _tmp: tmp }
    }

    fn holder(&self) -> Holder {
        Holder { peer_id: self.peer_id, addr: self.addr }
    }

    async fn client(&self, key: &ClusterKey, identity: &Identity) -> SecureChannel<TcpStream> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        channel::connect(stream, key, identity).await.unwrap()
    }

    /// Stops the server and checks it stopped cleanly and promptly.
    async fn stop(mut self) {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        within(DEADLINE, "the server to stop", task).await.expect("server task panicked");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn downloader(key: &ClusterKey, source: Arc<dyn ChunkSource>, tmp: &Path) -> Downloader {
    Downloader::new(key.clone(), Identity::generate(), source, tmp.to_owned(), DownloadLimits::default())
}

/// A downloader that persists progress every 64 KiB, so the 1 MiB files of
/// these tests are resumable (by default only files above 8 MiB are).
fn resumable_downloader(key: &ClusterKey, source: Arc<dyn ChunkSource>, tmp: &Path) -> Downloader {
    let limits = DownloadLimits { persist_every_bytes: 64 * 1024, ..DownloadLimits::default() };
    Downloader::new(key.clone(), Identity::generate(), source, tmp.to_owned(), limits)
}

fn empty_source() -> Arc<dyn ChunkSource> {
    Arc::new(MemoryChunkSource::new())
}

async fn download(d: &Downloader, record: &FileRecord, holders: Vec<Holder>) -> Result<DownloadOutcome, DownloadError> {
    let job = DownloadJob::new(record.clone(), holders);
    within(Duration::from_secs(120), "the download", d.download(job, CancellationToken::new())).await
}

fn check_outcome(outcome: &DownloadOutcome, expected: &[u8]) {
    assert_eq!(std::fs::read(&outcome.temp_path).unwrap(), expected, "downloaded bytes differ");
    assert_eq!(outcome.bytes_local + outcome.bytes_resumed + outcome.bytes_fetched, expected.len() as u64);
    assert_eq!(outcome.fetched_by_holder.iter().map(|(_, b)| b).sum::<u64>(), outcome.bytes_fetched);
}

/// Names in `dir` (sorted), for checking temp-file leftovers.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A gate test sources can block on, so a test decides when a read
/// finishes. Opens on drop so no blocking thread outlives the test.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
}

impl Gate {
    fn wait(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct GateGuard(Arc<Gate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Blocks every chunk lookup on a gate.
struct GatedSource {
    inner: Arc<MemoryChunkSource>,
    gate: Arc<Gate>,
}

impl ChunkSource for GatedSource {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        self.gate.wait();
        self.inner.locate(hash, len)
    }
}

/// Serves only the first `left` chunk lookups, then nothing.
/// Serves only the chunks in `served`. Which chunks a holder has is fixed
/// by their place in the file, not by the order of lookups: a holder reads
/// the chunks of pipelined requests in parallel, so a count of lookups
/// would hand out its quota in a racy order.
struct LimitedSource {
    inner: Arc<MemoryChunkSource>,
    served: std::collections::HashSet<ContentHash>,
}

impl ChunkSource for LimitedSource {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        if self.served.contains(hash) { self.inner.locate(hash, len) } else { Vec::new() }
    }
}

/// A holder that serves the first `served` chunks of `chunks` (of `site`)
/// and answers `NotAvailable` for the others.
async fn flaky_server(key: &ClusterKey, site: &Site, chunks: &[ChunkInfo], served: usize) -> Server {
    let served = chunks[..served].iter().map(|c| c.hash).collect();
    let source = LimitedSource { inner: site.source.clone(), served };
    Server::start(key, Arc::new(source), |_| {}).await
}

/// Holds the first chunk lookup of each of several servers until every one
/// of them has had its first lookup: each holder is then certain to get
/// requests before any chunk is served, whatever the speed of the build.
struct RendezvousSource {
    inner: Arc<MemoryChunkSource>,
    all: Arc<std::sync::Barrier>,
    waited: std::sync::atomic::AtomicBool,
}

impl RendezvousSource {
    fn group(sources: &[Arc<MemoryChunkSource>]) -> Vec<Arc<dyn ChunkSource>> {
        let all = Arc::new(std::sync::Barrier::new(sources.len()));
        sources
            .iter()
            .map(|inner| {
                Arc::new(RendezvousSource { inner: inner.clone(), all: all.clone(), waited: Default::default() })
                    as Arc<dyn ChunkSource>
            })
            .collect()
    }
}

impl ChunkSource for RendezvousSource {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        if !self.waited.swap(true, Ordering::SeqCst) {
            self.all.wait();
        }
        self.inner.locate(hash, len)
    }
}

/// Serves the chunks in `free` (fixed by place, not by lookup order), and
/// blocks the lookups of the others on a gate
/// (and finds nothing once it opens).
struct GatedAfter {
    inner: Arc<MemoryChunkSource>,
    free: std::collections::HashSet<ContentHash>,
    gate: Arc<Gate>,
}

impl ChunkSource for GatedAfter {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        if self.free.contains(hash) {
            return self.inner.locate(hash, len);
        }
        self.gate.wait();
        Vec::new()
    }
}

/// Answers chunk lists with one chunk hash altered.
struct ListLiar(Arc<MemoryChunkSource>);

impl ChunkSource for ListLiar {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        let mut list = self.0.chunk_list(content)?;
        list[0].hash = ContentHash::of(b"lie");
        Some(list)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        self.0.locate(hash, len)
    }
}

/// Claims `list` for every content.
struct AnyContent {
    inner: Arc<MemoryChunkSource>,
    list: Vec<ChunkInfo>,
}

impl ChunkSource for AnyContent {
    fn chunk_list(&self, _content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        Some(self.list.clone())
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        self.inner.locate(hash, len)
    }
}

/// A file that moves while it is copied from (as a rename's tombstone,
/// applied meanwhile, moves the old file into the history): the first
/// `moved_after` lookups name the place it is leaving, later ones its new
/// place.
struct MovedAway {
    inner: Arc<MemoryChunkSource>,
    gone: PathBuf,
    moved_after: usize,
    lookups: AtomicUsize,
}

impl ChunkSource for MovedAway {
    fn chunk_list(&self, content: &ContentHash) -> Option<Vec<ChunkInfo>> {
        self.inner.chunk_list(content)
    }

    fn locate(&self, hash: &ContentHash, len: u32) -> Vec<Candidate> {
        if self.lookups.fetch_add(1, Ordering::SeqCst) < self.moved_after {
            return vec![Candidate::unvouched(self.gone.clone(), 0)];
        }
        self.inner.locate(hash, len)
    }
}

// ---------------------------------------------------------------- downloader

#[tokio::test]
async fn a_file_moved_away_while_it_is_copied_from_is_found_at_its_new_place() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(32, 2 * MIB);
    let local = Site::new(&[("history/old-name", &bytes)]);
    let chunked = chunk_bytes(&bytes, params());
    assert!(chunked.chunks.len() > 10);
    // The move completes while the first half of the chunks is looked up.
    let source = Arc::new(MovedAway {
        inner: local.source.clone(),
        gone: local.path("old-name"),
        moved_after: chunked.chunks.len() / 2,
        lookups: AtomicUsize::new(0),
    });
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, source, tmp.path());
    let dead = Holder { peer_id: Identity::generate().peer_id(), addr: dead_addr().await };
    let outcome = download(&d, &record("new-name", &chunked), vec![dead]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert_eq!((outcome.bytes_local, outcome.bytes_fetched), (bytes.len() as u64, 0));
}

#[tokio::test]
async fn a_chunk_list_of_many_pages_is_fetched_page_by_page() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(31, MIB);
    let site = Site::new(&[("paged", &bytes)]);
    let chunked = chunk_bytes(&bytes, params());
    let server = Server::start(&key, site.source.clone(), |_| {}).await;
    // The server answers at most what is asked: 7 entries a page here.
    let page = 7;
    assert!(chunked.chunks.len() > 4 * page as usize, "{} chunks", chunked.chunks.len());
    let mut client = server.client(&key, &Identity::generate()).await;
    let ask = |first| P2pRequest::GetChunkList { path: rel("paged"), content: chunked.content, first, max: page };
    client.send(&ask(7)).await.unwrap();
    let P2pResponse::ChunkList(second) = recv(&mut client).await else { panic!("expected a page") };
    assert_eq!((second.first, second.chunks.as_slice()), (7, &chunked.chunks[7..14]));
    assert_eq!(second.total, chunked.chunks.len() as u64);
    client.send(&ask(second.total + 1)).await.unwrap();
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable, "a page past the end");

    let tmp = tempfile::tempdir().unwrap();
    let limits = DownloadLimits { chunk_list_page: page, ..DownloadLimits::default() };
    let d = Downloader::new(key.clone(), Identity::generate(), empty_source(), tmp.path().to_owned(), limits);
    let outcome = download(&d, &record("paged", &chunked), vec![server.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert_eq!(outcome.chunks, chunked.chunks);
    server.stop().await;
}

#[tokio::test]
async fn a_file_held_by_three_servers_comes_from_all_three() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(1, 2 * MIB);
    let sites: Vec<Site> = (0..3).map(|_| Site::new(&[("big", &bytes)])).collect();
    let chunked = chunk_bytes(&bytes, params());
    assert!(chunked.chunks.len() >= 64, "{} chunks", chunked.chunks.len());
    let mut servers = Vec::new();
    let sources: Vec<_> = sites.iter().map(|s| s.source.clone()).collect();
    for source in RendezvousSource::group(&sources) {
        servers.push(Server::start(&key, source, |_| {}).await);
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let outcome = download(&d, &record("big", &chunked), servers.iter().map(Server::holder).collect()).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert_eq!(outcome.bytes_fetched, bytes.len() as u64);
    assert_eq!(outcome.chunks, chunked.chunks);
    assert_eq!(outcome.fetched_by_holder.len(), 3);
    for (server, (peer, fetched)) in servers.iter().zip(&outcome.fetched_by_holder) {
        assert_eq!(*peer, server.peer_id);
        assert!(*fetched > 0, "holder {peer:?} sent nothing: {:?}", outcome.fetched_by_holder);
    }
    assert!(outcome.holders.iter().all(|h| h.dropped.is_none()), "{:?}", outcome.holders);
    // Nothing left behind but the handed-out file.
    let left = names(tmp.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".done"), "{left:?}");
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_small_edit_fetches_only_the_changed_chunks() {
    let key = ClusterKey::generate();
    let old = det_bytes(2, MIB);
    let mut new = old.clone();
    new.insert(old.len() / 2, 0x5A);
    let remote = Site::new(&[("f", &new)]);
    let server = Server::start(&key, remote.source.clone(), |_| {}).await;
    let local = Site::new(&[("f", &old)]);
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, local.source.clone(), tmp.path());
    let new_chunked = chunk_bytes(&new, params());
    let outcome = download(&d, &record("f", &new_chunked), vec![server.holder()]).await.unwrap();
    check_outcome(&outcome, &new);
    let old_hashes: HashSet<_> = chunk_bytes(&old, params()).chunks.iter().map(|c| c.hash).collect();
    let changed: u64 =
        new_chunked.chunks.iter().filter(|c| !old_hashes.contains(&c.hash)).map(|c| u64::from(c.len)).sum();
    assert!(changed > 0);
    assert_eq!(outcome.bytes_fetched, changed);
    assert!(outcome.bytes_fetched <= 4 * u64::from(params().max), "{}", outcome.bytes_fetched);
    assert_eq!(outcome.bytes_local, new.len() as u64 - changed);
    server.stop().await;
}

#[tokio::test]
async fn a_rename_needs_no_network_even_with_dead_holders() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(3, MIB);
    let local = Site::new(&[("old-name", &bytes)]);
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, local.source.clone(), tmp.path());
    let chunked = chunk_bytes(&bytes, params());
    let dead = Holder { peer_id: Identity::generate().peer_id(), addr: dead_addr().await };
    let outcome = download(&d, &record("new-name", &chunked), vec![dead]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert_eq!(outcome.bytes_fetched, 0);
    assert_eq!(outcome.bytes_local, bytes.len() as u64);
    assert!(outcome.holders[0].dropped.is_none(), "the dead holder was contacted: {:?}", outcome.holders);
}

#[tokio::test]
async fn repeated_chunks_are_fetched_once() {
    let key = ClusterKey::generate();
    // The same 256 KiB block three times: content-defined chunking repeats
    // the inner chunks.
    let block = det_bytes(4, 256 * KIB);
    let bytes: Vec<u8> = [&block[..], &block[..], &block[..]].concat();
    let remote = Site::new(&[("rep", &bytes)]);
    let server = Server::start(&key, remote.source.clone(), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let chunked = chunk_bytes(&bytes, params());
    let distinct: u64 = {
        let mut seen = HashSet::new();
        chunked.chunks.iter().filter(|c| seen.insert((c.hash, c.len))).map(|c| u64::from(c.len)).sum()
    };
    assert!(distinct < bytes.len() as u64 * 2 / 3, "test data does not repeat chunks");
    let outcome = download(&d, &record("rep", &chunked), vec![server.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert_eq!(outcome.bytes_fetched, distinct);
    server.stop().await;
}

#[tokio::test]
async fn a_lying_holder_is_dropped_and_the_file_still_arrives() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(5, MIB);
    let sites: Vec<Site> = (0..3).map(|_| Site::new(&[("f", &bytes)])).collect();
    // The rendezvous makes sure the liar gets chunk requests too.
    let sources: Vec<_> = sites.iter().map(|s| s.source.clone()).collect();
    let mut sources = RendezvousSource::group(&sources).into_iter();
    let liar = Server::start(&key, sources.next().unwrap(), |c| c.corrupt_for_tests = true).await;
    let honest1 = Server::start(&key, sources.next().unwrap(), |_| {}).await;
    let honest2 = Server::start(&key, sources.next().unwrap(), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let chunked = chunk_bytes(&bytes, params());
    let holders = vec![liar.holder(), honest1.holder(), honest2.holder()];
    let outcome = download(&d, &record("f", &chunked), holders).await.unwrap();
    check_outcome(&outcome, &bytes);
    let liar_stats = &outcome.holders[0];
    assert_eq!(liar_stats.peer_id, liar.peer_id);
    assert_eq!(liar_stats.bytes, 0);
    assert!(
        matches!(liar_stats.dropped, Some(HolderError::HashMismatch { .. })),
        "liar not dropped: {:?}",
        liar_stats.dropped
    );
    assert!(liar_stats.dropped.as_ref().unwrap().is_lie());
    assert!(outcome.holders[1..].iter().all(|h| h.dropped.is_none()));
    for s in [liar, honest1, honest2] {
        s.stop().await;
    }
}

#[tokio::test]
async fn a_liar_as_only_holder_fails_the_download_without_writing_its_bytes() {
    let OneFile { key, chunked, rec, site, .. } = one_file(6, 256 * KIB);
    let liar = Server::start(&key, site.source.clone(), |c| c.corrupt_for_tests = true).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let err = download(&d, &rec, vec![liar.holder()]).await.unwrap_err();
    match &err {
        DownloadError::NoHoldersLeft { missing_chunks, failures, .. } => {
            assert_eq!(*missing_chunks, chunked.chunks.len());
            assert!(matches!(failures[..], [(p, HolderError::HashMismatch { .. })] if p == liar.peer_id));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("failed its hash check"), "{err}");
    liar.stop().await;
}

#[tokio::test]
async fn a_wrong_chunk_list_drops_that_holder_and_the_next_one_is_used() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(7, 256 * KIB);
    let (a, b) = (Site::new(&[("f", &bytes)]), Site::new(&[("f", &bytes)]));
    let liar = Server::start(&key, Arc::new(ListLiar(a.source.clone())), |_| {}).await;
    let honest = Server::start(&key, b.source.clone(), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let chunked = chunk_bytes(&bytes, params());
    let outcome = download(&d, &record("f", &chunked), vec![liar.holder(), honest.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert!(matches!(outcome.holders[0].dropped, Some(HolderError::BadChunkList(_))), "{:?}", outcome.holders[0]);
    assert_eq!(outcome.fetched_by_holder[1].1, bytes.len() as u64);
}

#[tokio::test]
async fn holders_that_cannot_help_give_a_clear_error() {
    let OneFile { key, rec, site, .. } = one_file(8, 256 * KIB);
    let server = Server::start(&key, site.source.clone(), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());

    // No holders at all.
    let err = download(&d, &rec, vec![]).await.unwrap_err();
    assert!(matches!(&err, DownloadError::NoChunkList { failures, .. } if failures.is_empty()), "{err:?}");
    // The right address, the wrong peer id.
    let impostor = Holder { peer_id: Identity::generate().peer_id(), addr: server.addr };
    // Nobody listening.
    let dead = Holder { peer_id: Identity::generate().peer_id(), addr: dead_addr().await };
    // A holder without that content.
    let other = Site::new(&[("g", b"other bytes")]);
    let without = Server::start(&key, other.source.clone(), |_| {}).await;
    let err = download(&d, &rec, vec![impostor, dead, without.holder()]).await.unwrap_err();
    let DownloadError::NoChunkList { failures, .. } = &err else { panic!("unexpected {err:?}") };
    assert!(matches!(failures[0].1, HolderError::WrongPeer { actual } if actual == server.peer_id), "{err}");
    assert!(matches!(failures[1].1, HolderError::Connect(_)), "{err}");
    assert!(matches!(failures[2].1, HolderError::NotAvailable), "{err}");
    assert!(err.to_string().contains("no chunk list"), "{err}");
    assert_eq!(err.retry(), dartsync_shared::error::Retry::Temporary);

    // A directory record is refused.
    let dir = RecordBuilder::dir("f").build();
    assert!(matches!(download(&d, &dir, vec![]).await, Err(DownloadError::NotAFile { .. })));
    server.stop().await;
    without.stop().await;
}

#[tokio::test]
async fn an_empty_file_needs_no_holder() {
    let key = ClusterKey::generate();
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), &tmp.path().join("not-yet"));
    let chunked = chunk_bytes(b"", params());
    let outcome = download(&d, &record("empty", &chunked), vec![]).await.unwrap();
    assert_eq!(std::fs::metadata(&outcome.temp_path).unwrap().len(), 0);
    assert_eq!((outcome.bytes_local, outcome.bytes_fetched), (0, 0));
    // An "empty" record that claims content is inconsistent.
    let bad = RecordBuilder::file("empty").chunked(&chunked).content(ContentHash::of(b"x")).build();
    assert!(matches!(download(&d, &bad, vec![]).await, Err(DownloadError::ContentMismatch { .. })));
}

#[tokio::test]
async fn a_whole_file_mismatch_deletes_the_partial_file() {
    let OneFile { key, chunked, site: local, .. } = one_file(9, 256 * KIB);
    let source = Arc::new(AnyContent { inner: local.source.clone(), list: chunked.chunks.clone() });
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, source, tmp.path());
    let rec = RecordBuilder::file("f").chunked(&chunked).content(ContentHash::of(b"something else")).build();
    let err = download(&d, &rec, vec![]).await.unwrap_err();
    assert!(matches!(&err, DownloadError::ContentMismatch { actual, .. } if *actual == chunked.content), "{err:?}");
    assert_eq!(err.retry(), dartsync_shared::error::Retry::Permanent);
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
}

#[tokio::test]
async fn a_small_failed_download_leaves_no_state_and_is_fetched_again() {
    const SERVED: usize = 10;
    let OneFile { key, bytes, chunked, rec, site } = one_file(10, MIB);
    let flaky = flaky_server(&key, &site, &chunked.chunks, SERVED).await;
    let tmp = tempfile::tempdir().unwrap();
    // 1 MiB is below the default persist threshold: no state file, no
    // fsync, nothing to resume.
    let d = downloader(&key, empty_source(), tmp.path());
    assert!(download(&d, &rec, vec![flaky.holder()]).await.is_err());
    // Its file had a name of its own (written in place, no `.part`): the
    // failed download removes it (in the blocking pool, so poll).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names(tmp.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "left behind: {:?}", names(tmp.path()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flaky.stop().await;
    let honest = Server::start(&key, site.source.clone(), |_| {}).await;
    let d = downloader(&key, empty_source(), tmp.path());
    let outcome = download(&d, &rec, vec![honest.holder()]).await.unwrap();
    assert_eq!((outcome.bytes_resumed, outcome.bytes_fetched), (0, bytes.len() as u64));
    assert_eq!(std::fs::read(&outcome.temp_path).unwrap(), bytes);
    assert_eq!(chunked.content, rec.content);
    // The one file in the temp folder is the one handed out.
    let done = outcome.temp_path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(done.ends_with(".done"), "{done}");
    assert_eq!(names(tmp.path()), vec![done]);
    honest.stop().await;
}

#[tokio::test]
async fn a_failed_download_resumes_and_fetches_only_the_rest() {
    const SERVED: usize = 10;
    let OneFile { key, bytes, chunked, rec, site } = one_file(10, MIB);
    let flaky = flaky_server(&key, &site, &chunked.chunks, SERVED).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = resumable_downloader(&key, empty_source(), tmp.path());
    let err = download(&d, &rec, vec![flaky.holder()]).await.unwrap_err();
    let DownloadError::NoHoldersLeft { missing_chunks, failures, .. } = &err else { panic!("unexpected {err:?}") };
    assert_eq!(*missing_chunks, chunked.chunks.len() - SERVED);
    assert!(matches!(failures[..], [(_, HolderError::NotAvailable)]), "{err}");
    let hex = chunked.content.to_hex();
    assert_eq!(names(tmp.path()), vec![format!("{hex}.part"), format!("{hex}.part.state")]);
    flaky.stop().await;

    // A new downloader (as after a restart) with an honest holder.
    let honest = Server::start(&key, site.source.clone(), |_| {}).await;
    let d = resumable_downloader(&key, empty_source(), tmp.path());
    let outcome = download(&d, &rec, vec![honest.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    let first: u64 = chunked.chunks[..SERVED].iter().map(|c| u64::from(c.len)).sum();
    assert_eq!(outcome.bytes_resumed, first);
    assert_eq!(outcome.bytes_fetched, bytes.len() as u64 - first);
    assert!(outcome.bytes_fetched < bytes.len() as u64);
    let left = names(tmp.path());
    assert!(left.len() == 1 && left[0].ends_with(".done"), "{left:?}");
    honest.stop().await;
}

#[tokio::test]
async fn a_damaged_partial_file_is_reverified_on_resume() {
    let OneFile { key, bytes, chunked, rec, site } = one_file(11, 512 * KIB);
    let flaky = flaky_server(&key, &site, &chunked.chunks, 6).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = resumable_downloader(&key, empty_source(), tmp.path());
    download(&d, &rec, vec![flaky.holder()]).await.unwrap_err();
    // Flip a byte of the first chunk behind the state file's back.
    let part = tmp.path().join(format!("{}.part", chunked.content.to_hex()));
    let mut raw = std::fs::read(&part).unwrap();
    raw[10] ^= 1;
    std::fs::write(&part, raw).unwrap();
    let honest = Server::start(&key, site.source.clone(), |_| {}).await;
    let outcome = download(&d, &rec, vec![honest.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    // The flaky holder served six chunks; how many of them were persisted
    // before its failure ended the first attempt depends on timing. The
    // damaged first chunk must never count: what was resumed is some of
    // chunks 1 to 5, nothing else.
    let later: Vec<u64> = chunked.chunks[1..6].iter().map(|c| u64::from(c.len)).collect();
    let sums: Vec<u64> = (1u32..1 << later.len())
        .map(|m| (0..later.len()).filter(|i| m & (1 << i) != 0).map(|i| later[i]).sum())
        .collect();
    assert!(sums.contains(&outcome.bytes_resumed), "resumed {} bytes: not a set of chunks 1-5", outcome.bytes_resumed);
}

#[tokio::test]
async fn a_killed_download_resumes_from_its_last_persisted_progress() {
    let OneFile { key, bytes, chunked, rec, site } = one_file(15, MIB);
    const SERVED: usize = 12;
    let gate = Arc::new(Gate::default());
    let _open_on_exit = GateGuard(gate.clone());
    let free = chunked.chunks[..SERVED].iter().map(|c| c.hash).collect();
    let source = GatedAfter { inner: site.source.clone(), free, gate: gate.clone() };
    let server = Server::start(&key, Arc::new(source), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let limits = DownloadLimits { persist_every_bytes: 64 * 1024, ..DownloadLimits::default() };
    let d = Arc::new(Downloader::new(
        key.clone(),
        Identity::generate(),
        empty_source(),
        tmp.path().to_owned(),
        limits.clone(),
    ));
    let task = {
        let (d, job) = (d.clone(), DownloadJob::new(rec.clone(), vec![server.holder()]));
        tokio::spawn(async move { d.download(job, CancellationToken::new()).await })
    };
    // Wait until the served chunks are on disk, then kill the download
    // without letting it save its progress a last time.
    let part = tmp.path().join(format!("{}.part", chunked.content.to_hex()));
    let served_end = (chunked.chunks[SERVED - 1].offset + u64::from(chunked.chunks[SERVED - 1].len)) as usize;
    eventually_async(DEADLINE, "the served chunks to be written", async || {
        std::fs::read(&part).is_ok_and(|raw| raw.len() == bytes.len() && raw[..served_end] == bytes[..served_end])
    })
    .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    gate.open();
    server.stop().await;

    let honest = Server::start(&key, site.source.clone(), |_| {}).await;
    let d = Downloader::new(key.clone(), Identity::generate(), empty_source(), tmp.path().to_owned(), limits);
    let outcome = download(&d, &rec, vec![honest.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    assert!(outcome.bytes_resumed > 0, "nothing was persisted before the kill");
    assert!(outcome.bytes_resumed <= served_end as u64);
    assert!(outcome.bytes_fetched < bytes.len() as u64);
    honest.stop().await;
}

#[tokio::test]
async fn cancel_stops_promptly_and_keeps_the_partial_file() {
    let OneFile { key, bytes, chunked, rec, site } = one_file(12, 512 * KIB);
    let gate = Arc::new(Gate::default());
    let _open_on_exit = GateGuard(gate.clone());
    let stuck =
        Server::start(&key, Arc::new(GatedSource { inner: site.source.clone(), gate: gate.clone() }), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = Arc::new(resumable_downloader(&key, empty_source(), tmp.path()));
    let cancel = CancellationToken::new();
    let task = {
        let (d, rec, holder, cancel) = (d.clone(), rec.clone(), stuck.holder(), cancel.clone());
        tokio::spawn(async move { d.download(DownloadJob::new(rec, vec![holder]), cancel).await })
    };
    eventually_async(DEADLINE, "the server to start reading", async || gate.calls() > 0).await;
    cancel.cancel();
    let result = within(DEADLINE, "the cancelled download to stop", task).await.unwrap();
    assert!(matches!(result, Err(DownloadError::Cancelled { .. })), "{result:?}");
    let hex = chunked.content.to_hex();
    assert_eq!(names(tmp.path()), vec![format!("{hex}.part"), format!("{hex}.part.state")]);
    gate.open();
    stuck.stop().await;

    // Resumes (nothing was done yet, so everything is fetched) and cleans up.
    let honest = Server::start(&key, site.source.clone(), |_| {}).await;
    let outcome = download(&d, &rec, vec![honest.holder()]).await.unwrap();
    check_outcome(&outcome, &bytes);
    honest.stop().await;
}

#[tokio::test]
async fn busy_holders_are_retried_and_both_clients_finish() {
    let OneFile { key, bytes, rec, site, .. } = one_file(13, 512 * KIB);
    let server = Server::start(&key, site.source.clone(), |c| c.slots_total = 1).await;
    let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (d1, d2) = (downloader(&key, empty_source(), t1.path()), downloader(&key, empty_source(), t2.path()));
    let (a, b) = tokio::join!(download(&d1, &rec, vec![server.holder()]), download(&d2, &rec, vec![server.holder()]));
    let (a, b) = (a.unwrap(), b.unwrap());
    check_outcome(&a, &bytes);
    check_outcome(&b, &bytes);
    let busy = a.holders[0].busy + b.holders[0].busy;
    assert!(busy > 0, "one slot for two clients never answered Busy");
    server.stop().await;
}

#[tokio::test]
async fn two_downloads_of_one_content_do_not_share_a_temp_file() {
    let OneFile { key, bytes, chunked, site, .. } = one_file(14, 256 * KIB);
    let server = Server::start(&key, site.source.clone(), |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let (r1, r2) = (record("a", &chunked), record("b", &chunked));
    let (a, b) = tokio::join!(download(&d, &r1, vec![server.holder()]), download(&d, &r2, vec![server.holder()]));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.temp_path, b.temp_path);
    check_outcome(&a, &bytes);
    check_outcome(&b, &bytes);
    server.stop().await;
}

#[tokio::test]
async fn cleanup_removes_only_stale_temp_files() {
    let key = ClusterKey::generate();
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let (keep, stale) = (ContentHash::of(b"keep"), ContentHash::of(b"stale"));
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    for c in [keep, stale] {
        for suffix in [".part", ".part.state", ".3.done"] {
            let path = tmp.path().join(format!("{}{suffix}", c.to_hex()));
            std::fs::write(&path, b"x").unwrap();
            if c == stale {
                std::fs::File::options().write(true).open(&path).unwrap().set_modified(two_days_ago).unwrap();
            }
        }
    }
    let unrelated = tmp.path().join("unrelated.txt");
    std::fs::write(&unrelated, b"x").unwrap();
    std::fs::File::options().write(true).open(&unrelated).unwrap().set_modified(two_days_ago).unwrap();
    let removed = d.cleanup_stale(Duration::from_secs(24 * 3600)).unwrap();
    assert_eq!(removed, 3);
    let left = names(tmp.path());
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.iter().all(|n| n.starts_with(&keep.to_hex()) || n == "unrelated.txt"), "{left:?}");
}

// ------------------------------------------------------------------- server

async fn recv(client: &mut SecureChannel<TcpStream>) -> P2pResponse {
    within(DEADLINE, "an answer", client.recv::<P2pResponse>()).await.unwrap().expect("closed")
}

fn get(content: &ContentHash, c: &ChunkInfo) -> P2pRequest {
    P2pRequest::GetChunk { content: *content, offset: c.offset, len: c.len, hash: c.hash }
}

/// Waits until the server closes `stream` (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    within(DEADLINE, "the server to close the connection", async {
        while let Ok(1..) = stream.read(&mut buf).await {}
    })
    .await;
}

/// The server still answers a well-behaved client.
async fn still_serves(server: &Server, key: &ClusterKey, content: &ContentHash, chunk: &ChunkInfo) {
    let mut client = server.client(key, &Identity::generate()).await;
    client.send(&get(content, chunk)).await.unwrap();
    assert!(matches!(recv(&mut client).await, P2pResponse::Chunk { .. }));
}

#[tokio::test]
async fn answers_come_in_request_order() {
    let OneFile { key, bytes, chunked: f, site, .. } = one_file(20, MIB);
    // Six requests in flight, each holding an upload slot.
    let server = Server::start(&key, site.source.clone(), |c| c.slots_per_peer = 8).await;
    let mut client = server.client(&key, &Identity::generate()).await;
    let absent = ChunkInfo { offset: 0, len: 100, hash: ContentHash::of(b"absent") };
    let path = rel("f");
    let requests = [
        get(&f.content, &f.chunks[3]),
        get(&f.content, &absent),
        get(&f.content, &f.chunks[0]),
        P2pRequest::GetChunkList { path: path.clone(), content: f.content, first: 0, max: CHUNK_LIST_PAGE },
        P2pRequest::GetChunkList { path, content: ContentHash::of(b"nope"), first: 0, max: CHUNK_LIST_PAGE },
        get(&f.content, &f.chunks[1]),
    ];
    for r in &requests {
        client.send(r).await.unwrap();
    }
    let chunk_at = |c: &ChunkInfo| bytes[c.offset as usize..(c.offset + u64::from(c.len)) as usize].to_vec();
    assert_eq!(recv(&mut client).await, P2pResponse::Chunk { hash: f.chunks[3].hash, bytes: chunk_at(&f.chunks[3]) });
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    assert_eq!(recv(&mut client).await, P2pResponse::Chunk { hash: f.chunks[0].hash, bytes: chunk_at(&f.chunks[0]) });
    let whole = ChunkListPage { content: f.content, total: f.chunks.len() as u64, first: 0, chunks: f.chunks.clone() };
    assert_eq!(recv(&mut client).await, P2pResponse::ChunkList(whole));
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    assert_eq!(recv(&mut client).await, P2pResponse::Chunk { hash: f.chunks[1].hash, bytes: chunk_at(&f.chunks[1]) });
    server.stop().await;
}

#[tokio::test]
async fn a_file_changed_after_indexing_answers_not_available() {
    let OneFile { key, bytes, chunked: f, site, .. } = one_file(21, MIB);
    let server = Server::start(&key, site.source.clone(), |_| {}).await;
    let mut client = server.client(&key, &Identity::generate()).await;
    // Same size, other bytes: the index still points at it.
    std::fs::write(site.path("f"), det_bytes(22, MIB)).unwrap();
    client.send(&get(&f.content, &f.chunks[2])).await.unwrap();
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    // Truncated.
    std::fs::write(site.path("f"), b"tiny").unwrap();
    client.send(&get(&f.content, &f.chunks[2])).await.unwrap();
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    // Restored: served again.
    std::fs::write(site.path("f"), &bytes).unwrap();
    client.send(&get(&f.content, &f.chunks[2])).await.unwrap();
    assert!(matches!(recv(&mut client).await, P2pResponse::Chunk { .. }));
    server.stop().await;
}

#[tokio::test]
async fn chunks_of_partial_temp_files_are_served() {
    let key = ClusterKey::generate();
    let bytes = det_bytes(23, MIB);
    let f = chunk_bytes(&bytes, params());
    let tmp = tempfile::tempdir().unwrap();
    // A half-written .part: the first half present, the rest zeros.
    let mut partial = bytes.clone();
    let half = f.chunks[f.chunks.len() / 2];
    partial[half.offset as usize..].fill(0);
    std::fs::write(tmp.path().join(format!("{}.part", f.content.to_hex())), &partial).unwrap();
    let cfg = ServeConfig {
        slots_per_peer: 4,
        slots_total: 16,
        corrupt_for_tests: false,
        tmp_dir: tmp.path().to_owned(),
        gate: PeerGate::open(),
    };
    let server = Server::start_with(&key, empty_source(), cfg, tempfile::tempdir().unwrap()).await;
    let mut client = server.client(&key, &Identity::generate()).await;
    client.send(&get(&f.content, &f.chunks[0])).await.unwrap();
    assert!(matches!(recv(&mut client).await, P2pResponse::Chunk { hash, .. } if hash == f.chunks[0].hash));
    client.send(&get(&f.content, &half)).await.unwrap();
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    // A chunk list is only served from the chunk source.
    client
        .send(&P2pRequest::GetChunkList { path: rel("f"), content: f.content, first: 0, max: CHUNK_LIST_PAGE })
        .await
        .unwrap();
    assert_eq!(recv(&mut client).await, P2pResponse::NotAvailable);
    server.stop().await;
}

#[tokio::test]
async fn hostile_input_drops_only_that_connection() {
    let OneFile { key, chunked: f, site, .. } = one_file(24, MIB);
    let server = Server::start(&key, site.source.clone(), |_| {}).await;

    // Garbage instead of a handshake.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"\x00\x10GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    closed_by_server(&mut raw).await;
    still_serves(&server, &key, &f.content, &f.chunks[0]).await;

    // A 4 GiB length prefix, then the client gives up writing.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await.unwrap();
    raw.shutdown().await.unwrap();
    closed_by_server(&mut raw).await;
    still_serves(&server, &key, &f.content, &f.chunks[0]).await;

    // A wrong cluster key.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(channel::connect(stream, &ClusterKey::generate(), &Identity::generate()).await.is_err());

    // Authenticated, then a frame that is not a request.
    let client = server.client(&key, &Identity::generate()).await;
    let (mut reader, mut writer) = client.split();
    writer.send_frame(bytes::Bytes::from_static(&[0xEE, 1, 2, 3, 4])).await.unwrap();
    let end = within(DEADLINE, "the server to drop the connection", reader.recv::<P2pResponse>()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    still_serves(&server, &key, &f.content, &f.chunks[0]).await;

    // Authenticated, then a request that fails validation (oversized chunk);
    // the answer to the valid request before it still arrives.
    let mut client = server.client(&key, &Identity::generate()).await;
    client.send(&get(&f.content, &f.chunks[1])).await.unwrap();
    let huge = P2pRequest::GetChunk { content: f.content, offset: 0, len: MAX_CHUNK_LEN + 1, hash: f.chunks[0].hash };
    client.send(&huge).await.unwrap();
    assert!(matches!(recv(&mut client).await, P2pResponse::Chunk { .. }));
    let end = within(DEADLINE, "the server to drop the connection", client.recv::<P2pResponse>()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    still_serves(&server, &key, &f.content, &f.chunks[0]).await;
    server.stop().await;
}

#[tokio::test]
async fn full_slots_answer_busy_at_once() {
    let OneFile { key, chunked: f, site, .. } = one_file(25, MIB);
    let gate = Arc::new(Gate::default());
    let _open_on_exit = GateGuard(gate.clone());
    let source = Arc::new(GatedSource { inner: site.source.clone(), gate: gate.clone() });
    let server = Server::start(&key, source, |c| {
        c.slots_per_peer = 1;
        c.slots_total = 2;
    })
    .await;
    let (x, y, z) = (Identity::generate(), Identity::generate(), Identity::generate());

    // X's first request takes X's only slot and blocks on the gate.
    let mut x1 = server.client(&key, &x).await;
    x1.send(&get(&f.content, &f.chunks[0])).await.unwrap();
    eventually_async(DEADLINE, "x1's read", async || gate.calls() == 1).await;
    // X again, on a second connection: per-peer slots are full.
    let mut x2 = server.client(&key, &x).await;
    x2.send(&get(&f.content, &f.chunks[1])).await.unwrap();
    assert_eq!(recv(&mut x2).await, P2pResponse::Busy);
    // Y gets a slot (the second of the total) and blocks too.
    let mut y1 = server.client(&key, &y).await;
    y1.send(&get(&f.content, &f.chunks[2])).await.unwrap();
    eventually_async(DEADLINE, "y1's read", async || gate.calls() == 2).await;
    // Z: the total is full.
    let mut z1 = server.client(&key, &z).await;
    z1.send(&get(&f.content, &f.chunks[3])).await.unwrap();
    assert_eq!(recv(&mut z1).await, P2pResponse::Busy);
    // A chunk-list request needs a slot too.
    z1.send(&P2pRequest::GetChunkList { path: rel("f"), content: f.content, first: 0, max: CHUNK_LIST_PAGE })
        .await
        .unwrap();
    assert_eq!(recv(&mut z1).await, P2pResponse::Busy);

    gate.open();
    assert!(matches!(recv(&mut x1).await, P2pResponse::Chunk { .. }));
    assert!(matches!(recv(&mut y1).await, P2pResponse::Chunk { .. }));
    // Slots are free again.
    z1.send(&get(&f.content, &f.chunks[3])).await.unwrap();
    assert!(matches!(recv(&mut z1).await, P2pResponse::Chunk { .. }));
    x2.send(&get(&f.content, &f.chunks[1])).await.unwrap();
    assert!(matches!(recv(&mut x2).await, P2pResponse::Chunk { .. }));
    server.stop().await;
}

#[tokio::test]
async fn corrupt_mode_flips_a_byte_of_every_chunk() {
    let OneFile { key, chunked: f, site, .. } = one_file(26, MIB);
    let server = Server::start(&key, site.source.clone(), |c| c.corrupt_for_tests = true).await;
    let mut client = server.client(&key, &Identity::generate()).await;
    for c in &f.chunks[..3] {
        client.send(&get(&f.content, c)).await.unwrap();
        let P2pResponse::Chunk { hash, bytes } = recv(&mut client).await else { panic!("no chunk") };
        assert_eq!(hash, c.hash);
        assert_eq!(bytes.len(), c.len as usize);
        assert_ne!(ContentHash::of(&bytes), c.hash);
    }
    server.stop().await;
}

/// A TCP forwarder to `to` that counts the connections it accepted and the
/// bytes it carried (both ways, counted as they pass), and can cut every
/// open one (as a holder closing idle connections would).
struct CountingProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    async fn start(to: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (count, carried, handles) = (accepted.clone(), bytes.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let carried = carried.clone();
                handles.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::join!(
                            pump(from_client, to_server, carried.clone()),
                            pump(from_server, to_client, carried)
                        );
                    }
                }));
            }
        });
        CountingProxy { addr, accepted, bytes, open, task }
    }

    /// Bytes carried so far, both directions.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every connection open through the proxy.
    fn cut(&self) {
        for handle in self.open.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

/// Copies `from` to `to`, counting into `carried` before each write.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    carried: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        carried.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

#[tokio::test]
async fn successive_downloads_from_one_holder_share_one_connection_and_survive_its_loss() {
    let files: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("f{i}"), det_bytes(100 + i, 3_000 + i as usize))).collect();
    let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let site = Site::new(&named);
    let key = ClusterKey::generate();
    let server = Server::start(&key, site.source.clone(), |_| {}).await;
    let proxy = CountingProxy::start(server.addr).await;
    let holder = Holder { peer_id: server.peer_id, addr: proxy.addr };
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, empty_source(), tmp.path());
    let record_of = |(name, bytes): &(String, Vec<u8>)| record(name, &chunk_bytes(bytes, params()));
    for file in &files[..3] {
        let outcome = download(&d, &record_of(file), vec![holder.clone()]).await.unwrap();
        check_outcome(&outcome, &file.1);
    }
    assert_eq!(proxy.accepted(), 1, "each download made its own connection");
    // The holder drops the idle connection: the next download notices and
    // reconnects once, and goes on over the new one.
    proxy.cut();
    for file in &files[3..] {
        let outcome = download(&d, &record_of(file), vec![holder.clone()]).await.unwrap();
        check_outcome(&outcome, &file.1);
    }
    assert_eq!(proxy.accepted(), 2);
    server.stop().await;
}

/// The tracker's device list, as the gate gets it.
fn listed(devices: &[(PeerId, dartsync_shared::device::DeviceState)]) -> Vec<dartsync_shared::proto::ptp::DeviceInfo> {
    devices
        .iter()
        .map(|(peer_id, state)| dartsync_shared::proto::ptp::DeviceInfo {
            peer_id: *peer_id,
            name: String::new(),
            online: true,
            up_to_date: true,
            last_seen: 0,
            state: *state,
        })
        .collect()
}

#[tokio::test]
async fn the_gate_waits_for_a_late_list_serves_admitted_peers_and_drops_revoked_ones() {
    use dartsync_shared::device::DeviceState::{Admitted, Revoked};
    let key = ClusterKey::generate();
    let bytes = det_bytes(29, MIB);
    let f = chunk_bytes(&bytes, params());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(format!("{}.part", f.content.to_hex())), &bytes).unwrap();
    let gate = PeerGate::new();
    let cfg = ServeConfig {
        slots_per_peer: 4,
        slots_total: 16,
        corrupt_for_tests: false,
        tmp_dir: tmp.path().to_owned(),
        gate: gate.clone(),
    };
    let server = Server::start_with(&key, empty_source(), cfg, tempfile::tempdir().unwrap()).await;
    let (member, outcast) = (Identity::generate(), Identity::generate());
    // A member that connects before this server has any device list: its
    // request waits (within the grace) and is answered once the list comes.
    let mut client = server.client(&key, &member).await;
    client.send(&get(&f.content, &f.chunks[0])).await.unwrap();
    let answer = tokio::spawn(async move {
        let response = recv(&mut client).await;
        (client, response)
    });
    gate.update(&listed(&[(outcast.peer_id(), Admitted)]));
    gate.update(&listed(&[(outcast.peer_id(), Revoked), (member.peer_id(), Admitted)]));
    let (mut client, response) = within(DEADLINE, "the late-listed member's answer", answer).await.unwrap();
    assert!(matches!(response, P2pResponse::Chunk { hash, .. } if hash == f.chunks[0].hash));
    // A revoked identity with the cluster key: closed without an answer.
    let mut bad = server.client(&key, &outcast).await;
    bad.send(&get(&f.content, &f.chunks[0])).await.unwrap();
    let closed = within(DEADLINE, "the revoked peer's close", bad.recv::<P2pResponse>()).await;
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    // Revoked while connected: its next request ends the connection.
    gate.update(&listed(&[(member.peer_id(), Revoked)]));
    client.send(&get(&f.content, &f.chunks[1])).await.unwrap();
    let closed = within(DEADLINE, "the member's close after revocation", client.recv::<P2pResponse>()).await;
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    server.stop().await;
}

/// What one edit-with-a-base download did: the outcome, the bytes on the
/// wire, and the bytes of the new version's chunks the base lacks.
struct EditRun {
    outcome: DownloadOutcome,
    wire: u64,
    changed_chunk_bytes: u64,
    new: ChunkedFile,
}

/// Serves `new` (from `holders` servers, the first lying about every chunk
/// byte if `liar_first`) to a downloader whose folder has `old`, chunked
/// with `params`, through a counting proxy; the job names `old` as its
/// base when `with_base`.
async fn edit_run(old: &[u8], new: &[u8], params: ChunkParams, with_base: bool, liar_first: bool) -> EditRun {
    let key = ClusterKey::generate();
    let remote = Site::new(&[]);
    let new_chunked = remote.put_with("f", new, params);
    let local = Site::new(&[]);
    let old_chunked = local.put_with("f", old, params);
    let liar = Server::start(&key, remote.source.clone(), |c| c.corrupt_for_tests = true).await;
    let honest = Server::start(&key, remote.source.clone(), |_| {}).await;
    let proxy = CountingProxy::start(if liar_first { liar.addr } else { honest.addr }).await;
    let first = Holder { peer_id: if liar_first { liar.peer_id } else { honest.peer_id }, addr: proxy.addr };
    let holders = if liar_first { vec![first, honest.holder()] } else { vec![first] };
    let tmp = tempfile::tempdir().unwrap();
    let d = downloader(&key, local.source.clone(), tmp.path());
    let mut job = DownloadJob::new(record("f", &new_chunked), holders);
    if with_base {
        job = job.with_base(old_chunked.chunks.clone());
    }
    let outcome =
        within(Duration::from_secs(120), "the download", d.download(job, CancellationToken::new())).await.unwrap();
    check_outcome(&outcome, new);
    let old_hashes: HashSet<_> = old_chunked.chunks.iter().map(|c| c.hash).collect();
    let changed_chunk_bytes =
        new_chunked.chunks.iter().filter(|c| !old_hashes.contains(&c.hash)).map(|c| u64::from(c.len)).sum();
    let wire = proxy.bytes();
    liar.stop().await;
    honest.stop().await;
    EditRun { outcome, wire, changed_chunk_bytes, new: new_chunked }
}

#[tokio::test]
async fn a_small_edit_moves_a_slice_of_the_chunk_list_not_all_of_it() {
    // 16 MiB in 16 KiB pieces: a list of about 1,000 chunks, 45 KB whole.
    let old = det_bytes(40, 16 * MIB);
    let mut new = old.clone();
    new.insert(8 * MIB, 0x5A);
    let whole = edit_run(&old, &new, params(), false, false).await;
    let sliced = edit_run(&old, &new, params(), true, false).await;
    let page = ChunkListPage::of(ContentHash::of(&new), &sliced.new.chunks, 0, CHUNK_LIST_PAGE).unwrap();
    let list_bytes = encode(&P2pResponse::ChunkList(page)).unwrap().len() as u64;
    assert!(sliced.new.chunks.len() >= 500, "{} chunks", sliced.new.chunks.len());
    // Without a base the whole list travels (the measure works)...
    let overhead = |run: &EditRun| run.wire - run.outcome.bytes_fetched;
    assert!(overhead(&whole) >= list_bytes, "{} bytes besides content, list {list_bytes}", overhead(&whole));
    // ...with one, a summary and a group or two of it.
    assert!(
        overhead(&sliced) < list_bytes / 4,
        "{} bytes besides content; the whole list is {list_bytes}",
        overhead(&sliced)
    );
}

#[tokio::test]
async fn a_one_byte_change_in_a_big_chunk_fetches_only_the_parts_around_it() {
    let params = ChunkParams::for_piece_len(256 * 1024);
    let old = det_bytes(41, 4 * MIB);
    let mut overwritten = old.clone();
    overwritten[2 * MIB + 123] ^= 0x01;
    let mut inserted = old.clone();
    inserted.insert(MIB + 77, 0x5A);
    for (what, new, most_parts) in [("overwrite", &overwritten, 1), ("insertion", &inserted, 4)] {
        let run = edit_run(&old, new, params, true, false).await;
        let fetched = run.outcome.bytes_fetched;
        assert!(fetched > 0, "{what}");
        assert!(fetched <= most_parts * u64::from(PART_MAX), "{what}: fetched {fetched}");
        assert!(
            fetched * 4 <= run.changed_chunk_bytes,
            "{what}: fetched {fetched} of {} changed chunk bytes",
            run.changed_chunk_bytes
        );
        assert!(run.outcome.holders[0].dropped.is_none(), "{what}: {:?}", run.outcome.holders);
    }
}

#[tokio::test]
async fn a_holder_lying_about_parts_is_dropped_and_the_chunk_comes_whole_from_another() {
    let params = ChunkParams::for_piece_len(256 * 1024);
    let old = det_bytes(42, 4 * MIB);
    let mut new = old.clone();
    new[3 * MIB] ^= 0x01;
    let run = edit_run(&old, &new, params, true, true).await;
    let holders = &run.outcome.holders;
    assert!(holders[0].dropped.as_ref().is_some_and(HolderError::is_lie), "{holders:?}");
    assert_eq!(holders[0].bytes, 0, "nothing of the liar's was accepted");
    assert_eq!(holders[1].bytes, run.changed_chunk_bytes, "the honest holder sent the changed chunk whole");
}
