//! The real tracker binary, killed with SIGKILL and restarted on the same
//! data dir, keeps every committed record and tombstone, its epoch, and
//! never reuses a seq a peer has already seen. Driven by fake peers that
//! speak PTP over the real secure channel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dartsync_shared::channel::{self, ChannelReader, ChannelWriter};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::ptp::{Delta, PeerMessage, Register, TrackerMessage, Welcome};
use dartsync_shared::test_util::{RecordBuilder, rel, within};
use dartsync_shared::{FileRecord, VersionVector};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::util::{run, spawn_tracker};

type Reader = ChannelReader<ReadHalf<TcpStream>>;
type Writer = ChannelWriter<WriteHalf<TcpStream>>;

struct Peer {
    reader: Reader,
    writer: Writer,
    welcome: Welcome,
}

async fn register(addr: SocketAddr, key: &ClusterKey, id: &Identity, seen_seq: u64, epoch: u64) -> Peer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = channel::connect(stream, key, id).await.unwrap().split();
    let register = Register::new(id.peer_id(), 4000, seen_seq, epoch, "test");
    writer.send(&PeerMessage::Register(register)).await.unwrap();
    let welcome = match recv(&mut reader).await {
        TrackerMessage::Welcome(w) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    Peer { reader, writer, welcome }
}

/// The next message about the table (device lists and conflict notices
/// are skipped).
async fn recv(reader: &mut Reader) -> TrackerMessage {
    loop {
        let msg = within(Duration::from_secs(20), "a tracker message", reader.recv())
            .await
            .expect("channel error")
            .expect("tracker closed the connection");
        if !matches!(msg, TrackerMessage::Devices { .. } | TrackerMessage::Conflict(_)) {
            return msg;
        }
    }
}

/// Deltas until one reaches `seq`, folded into `table` (path -> (record, seq)).
async fn read_until(peer: &mut Peer, seq: u64, table: &mut BTreeMap<String, (FileRecord, u64)>) -> Vec<Delta> {
    let mut deltas = Vec::new();
    while deltas.last().is_none_or(|d: &Delta| d.to_seq < seq) {
        let TrackerMessage::Delta(delta) = recv(&mut peer.reader).await else { panic!("expected Delta") };
        for e in &delta.entries {
            table.insert(e.record.path.as_str().to_owned(), (e.record.clone(), e.seq));
        }
        deltas.push(delta);
    }
    deltas
}

fn record(path: &str, body: &str, version: VersionVector, deleted: bool) -> FileRecord {
    RecordBuilder::file(path).body(body).version(version).deleted(deleted).build()
}

#[test]
fn tracker_killed_with_sigkill_keeps_committed_records_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    let data = dir.path().join("data");
    let (status, _, _) = run(&["init", "--key-file", key_file.to_str().unwrap()], &[]);
    assert!(status.success());
    let key = ClusterKey::load(&key_file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (a, b) = (Identity::generate(), Identity::generate());

    let mut tracker = spawn_tracker(&key_file, &data);
    let addr = tracker.listen_addr();
    let (epoch, seen, committed) = rt.block_on(async {
        let mut pa = register(addr, &key, &a, 0, 0).await;
        let mut pb = register(addr, &key, &b, 0, 0).await;
        let epoch = pa.welcome.epoch;
        let va = VersionVector::new().bumped(a.peer_id().short()).unwrap();
        let files: Vec<_> =
            (0..40).map(|i| record(&format!("dir/f{i:02}"), &format!("body {i}"), va.clone(), false)).collect();
        pa.writer.send(&PeerMessage::Announce { records: files }).await.unwrap();
        // Ten deletions.
        let gone: Vec<_> = (0..10)
            .map(|i| record(&format!("dir/f{i:02}"), "", va.bumped(a.peer_id().short()).unwrap(), true))
            .collect();
        pa.writer.send(&PeerMessage::Announce { records: gone }).await.unwrap();
        // A conflict: B edits dir/f39 concurrently with a later mtime, A's version becomes a copy.
        let theirs = record("dir/f39", "B's much longer body", va.bumped(b.peer_id().short()).unwrap(), false);
        let mut ours = record("dir/f39", "A's", va.bumped(a.peer_id().short()).unwrap(), false);
        ours.mtime_ns -= 1_000_000_000;
        pa.writer.send(&PeerMessage::Announce { records: vec![ours] }).await.unwrap();
        // B's message travels on another connection: wait until A's three
        // announcements are in (40 files, 10 tombstones, one edit: seq 51)
        // so B's edit cannot overtake them.
        let mut table = BTreeMap::new();
        read_until(&mut pa, 51, &mut table).await;
        pb.writer.send(&PeerMessage::Announce { records: vec![theirs] }).await.unwrap();
        // Seen by a peer = committed: the winner and its copy (seq 53).
        read_until(&mut pa, 53, &mut table).await;
        // A holder-only change takes seq 54 without a record write: the
        // restarted tracker must still never hand out 54 again.
        let have = PeerMessage::Have { path: rel("dir/f20"), version: va.clone() };
        pb.writer.send(&have).await.unwrap();
        let deltas = read_until(&mut pa, 54, &mut table).await;
        (epoch, deltas.last().unwrap().to_seq, table)
    });
    assert_eq!(committed.len(), 41, "40 files plus one conflict copy");
    assert_eq!(committed.values().filter(|(r, _)| r.deleted).count(), 10);
    assert!(committed.keys().any(|k| k.contains(".sync-conflict-")));

    tracker.kill();
    let tracker = spawn_tracker(&key_file, &data);
    let addr = tracker.listen_addr();
    rt.block_on(async {
        // A new observer gets the full table: every committed record and tombstone.
        let mut observer = register(addr, &key, &Identity::generate(), 0, 0).await;
        assert_eq!(observer.welcome.epoch, epoch, "the epoch survives a restart");
        assert!(observer.welcome.seq >= seen, "seq went back from {seen} to {}", observer.welcome.seq);
        let mut table = BTreeMap::new();
        let until = observer.welcome.seq;
        let deltas = read_until(&mut observer, until, &mut table).await;
        assert!(deltas.iter().all(|d| d.full));
        assert_eq!(table.len(), committed.len());
        for (path, (record, seq)) in &committed {
            let (got, got_seq) = &table[path];
            assert_eq!(got, record, "{path}");
            assert!(got_seq <= seq, "{path}");
        }

        // A returns with what it has seen: same epoch, no full resend, and a
        // new change gets a seq it has never seen.
        let mut pa = register(addr, &key, &a, seen, epoch).await;
        assert_eq!(pa.welcome.epoch, epoch);
        let va = VersionVector::new().bumped(a.peer_id().short()).unwrap();
        let late = record("after-restart", "x", va, false);
        pa.writer.send(&PeerMessage::Announce { records: vec![late] }).await.unwrap();
        // (First, possibly, an empty delta moving A to the restarted tracker's seq.)
        let entry = loop {
            let TrackerMessage::Delta(d) = recv(&mut pa.reader).await else { panic!("expected Delta") };
            assert!(!d.full);
            assert!(d.from_seq >= seen);
            if let Some(e) = d.entries.into_iter().find(|e| e.record.path.as_str() == "after-restart") {
                break e;
            }
        };
        assert!(entry.seq > seen, "seq {} reused after restart (seen {seen})", entry.seq);
    });
    drop(tracker);
}
