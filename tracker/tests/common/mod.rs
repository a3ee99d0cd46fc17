//! Plumbing for the tracker's integration tests: a tracker on 127.0.0.1:0
//! in a temp dir, and hand-driven fake peers speaking PTP over the real
//! secure channel with their own identities.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dartsync_shared::channel::{self, ChannelReader, ChannelWriter};
use dartsync_shared::config::TrackerConfig;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::DEFAULT_PIECE_LEN;
use dartsync_shared::proto::ptp::{Delta, DeltaEntry, Holder, PeerMessage, Register, TrackerMessage, Welcome};
use dartsync_shared::test_util::RecordBuilder;
use dartsync_shared::{FileRecord, PeerId, RelPath, VersionVector};
use dartsync_tracker::{Tracker, TrackerError};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the tracker should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Shows tracker logs with `--nocapture` (`RUST_LOG` filters).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A tracker running in this process.
pub struct TestTracker {
    pub addr: SocketAddr,
    pub key: ClusterKey,
    pub epoch: u64,
    /// The data directory (its control socket is `control.sock`).
    pub data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), TrackerError>>>,
    _dir: tempfile::TempDir,
}

impl TestTracker {
    pub async fn start(interval: Duration, max_peers: usize) -> TestTracker {
        Self::start_with(interval, max_peers, |_| {}).await
    }

    /// Like [`Self::start`], with the configuration adjusted by `tune`
    /// (bounds, mostly) before the tracker binds.
    pub async fn start_with(
        interval: Duration,
        max_peers: usize,
        tune: impl FnOnce(&mut TrackerConfig),
    ) -> TestTracker {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut config = TrackerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            // Loopback never announces; no multicast from tests either way.
            discovery: false,
            data_dir: dir.path().join("data"),
            interval,
            piece_len: DEFAULT_PIECE_LEN,
            max_peers,
            tombstone_max_age: Duration::from_secs(30 * 86_400),
            ..TrackerConfig::default()
        };
        tune(&mut config);
        let key = ClusterKey::generate();
        let tracker = Tracker::bind(config, key.clone()).await.unwrap();
        let (addr, epoch) = (tracker.local_addr(), tracker.epoch());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tracker.run(shutdown.clone()));
        let data_dir = dir.path().join("data");
        TestTracker { addr, key, epoch, data_dir, shutdown, task: Some(task), _dir: dir }
    }

    /// Stops the tracker and checks it stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
    }

    /// A new peer identity, registered as a brand-new peer.
    pub async fn peer(&self, listen_port: u16) -> FakePeer {
        FakePeer::register(self.addr, &self.key, Identity::generate(), listen_port, 0, 0).await
    }

    /// The whole table as a fresh peer sees it.
    pub async fn table(&self) -> BTreeMap<String, DeltaEntry> {
        full_table(self.addr, &self.key).await
    }
}

impl Drop for TestTracker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A hand-driven peer.
pub struct FakePeer {
    pub identity: Identity,
    pub reader: ChannelReader<ReadHalf<TcpStream>>,
    pub writer: ChannelWriter<WriteHalf<TcpStream>>,
    pub welcome: Welcome,
    pub listen_port: u16,
}

/// Connects and completes the Noise handshake.
pub async fn handshake(
    addr: SocketAddr,
    key: &ClusterKey,
    identity: &Identity,
) -> (ChannelReader<ReadHalf<TcpStream>>, ChannelWriter<WriteHalf<TcpStream>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    channel::connect(stream, key, identity).await.unwrap().split()
}

impl FakePeer {
    pub async fn register(
        addr: SocketAddr,
        key: &ClusterKey,
        identity: Identity,
        listen_port: u16,
        seen_seq: u64,
        epoch: u64,
    ) -> FakePeer {
        let (mut reader, mut writer) = handshake(addr, key, &identity).await;
        let register = Register::new(identity.peer_id(), listen_port, seen_seq, epoch, "test");
        writer.send(&PeerMessage::Register(register)).await.unwrap();
        let welcome = match recv(&mut reader).await {
            TrackerMessage::Welcome(w) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        FakePeer { identity, reader, writer, welcome, listen_port }
    }

    pub fn id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub async fn send(&mut self, msg: &PeerMessage) {
        self.writer.send(msg).await.unwrap();
    }

    pub async fn announce(&mut self, records: Vec<FileRecord>) {
        self.send(&PeerMessage::Announce { records }).await;
    }

    /// The next message, which must be a `Delta`.
    /// The next delta with news, skipping heartbeats (empty deltas the
    /// tracker sends to a quiet session every interval).
    pub async fn delta(&mut self) -> Delta {
        loop {
            match recv(&mut self.reader).await {
                TrackerMessage::Delta(d) if d.entries.is_empty() && !d.full && d.from_seq == d.to_seq => continue,
                TrackerMessage::Delta(d) => return d,
                // Device lists and conflict notices are not table news.
                TrackerMessage::Devices { .. } | TrackerMessage::Conflict(_) => continue,
                other => panic!("expected Delta, got {other:?}"),
            }
        }
    }

    /// The next conflict notice, skipping everything else.
    pub async fn conflict_notice(&mut self) -> dartsync_shared::proto::ptp::ConflictNotice {
        loop {
            if let TrackerMessage::Conflict(notice) = recv(&mut self.reader).await {
                return notice;
            }
        }
    }

    /// Asks which peers hold `version` of `path` now and reads until the
    /// answer (skipping heartbeats and device lists; a delta with news
    /// before it fails the test). `None`: the tracker did not answer
    /// (another version is global), seen as the heartbeat that follows.
    pub async fn sources(&mut self, path: &RelPath, version: &VersionVector) -> Option<Vec<Holder>> {
        self.send(&PeerMessage::Sources { path: path.clone(), version: version.clone() }).await;
        loop {
            match recv(&mut self.reader).await {
                TrackerMessage::Sources { path: p, version: v, holders } => {
                    assert_eq!((&p, &v), (path, version));
                    return Some(holders);
                }
                TrackerMessage::Delta(d) if d.entries.is_empty() && !d.full && d.from_seq == d.to_seq => return None,
                TrackerMessage::Devices { .. } => continue,
                other => panic!("expected the sources answer, got {other:?}"),
            }
        }
    }

    /// Reads until a device list shows `peer` offline.
    pub async fn until_offline(&mut self, peer: PeerId) {
        loop {
            if let TrackerMessage::Devices { devices } = recv(&mut self.reader).await
                && devices.iter().any(|d| d.peer_id == peer && !d.online)
            {
                return;
            }
        }
    }

    /// Reads deltas until one reaches `seq`; returns them all.
    pub async fn deltas_until(&mut self, seq: u64) -> Vec<Delta> {
        let mut out = Vec::new();
        while out.last().is_none_or(|d: &Delta| d.to_seq < seq) {
            out.push(self.delta().await);
        }
        out
    }

    pub async fn goodbye(mut self) {
        self.send(&PeerMessage::Goodbye).await;
        let _ = self.writer.shutdown().await;
    }
}

/// One message, within [`PATIENCE`], checked like a real peer would.
pub async fn recv(reader: &mut ChannelReader<ReadHalf<TcpStream>>) -> TrackerMessage {
    let msg: TrackerMessage = tokio::time::timeout(PATIENCE, reader.recv())
        .await
        .expect("tracker silent")
        .expect("channel error")
        .expect("tracker closed the connection");
    msg.validate().unwrap();
    msg
}

/// Reads until the tracker closes the connection; returns the `Refused`
/// reason if one came first. Panics if it stays open past [`PATIENCE`].
pub async fn expect_closed(reader: &mut ChannelReader<ReadHalf<TcpStream>>) -> Option<String> {
    let mut refused = None;
    loop {
        match tokio::time::timeout(PATIENCE, reader.recv::<TrackerMessage>()).await {
            Err(_) => panic!("the tracker kept the connection open"),
            Ok(Ok(Some(TrackerMessage::Refused { reason }))) => refused = Some(reason),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => return refused,
        }
    }
}

/// The whole table, read by a fresh observer peer.
pub async fn full_table(addr: SocketAddr, key: &ClusterKey) -> BTreeMap<String, DeltaEntry> {
    let mut observer = FakePeer::register(addr, key, Identity::generate(), 1, 0, 0).await;
    let mut table = BTreeMap::new();
    if observer.welcome.seq > 0 {
        for delta in observer.deltas_until(observer.welcome.seq).await {
            assert!(delta.full, "a new peer gets the full table");
            for entry in delta.entries {
                table.insert(entry.record.path.as_str().to_owned(), entry);
            }
        }
    }
    observer.goodbye().await;
    table
}

/// A file record (the shape every test here uses, built by the shared
/// test builder).
pub fn file(path: &str, body: &str, version: VersionVector, mtime_s: i64) -> FileRecord {
    RecordBuilder::file(path).body(body).version(version).mtime_s(mtime_s).build()
}

/// A tombstone.
pub fn tombstone(path: &str, version: VersionVector, mtime_s: i64) -> FileRecord {
    RecordBuilder::file(path).version(version).mtime_s(mtime_s).tombstone().build()
}

/// The version after `peer` edits `known`.
pub fn edit(known: &VersionVector, peer: PeerId) -> VersionVector {
    known.bumped(peer.short()).expect("test counters are far below the limit")
}
