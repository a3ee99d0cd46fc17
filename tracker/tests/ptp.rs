//! The tracker over real TCP on 127.0.0.1 with hand-driven fake peers:
//! deltas, expiry, reconnects, epochs, conflicts, limits and hostile input.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use dartsync_shared::VersionVector;
use dartsync_shared::codec;
use dartsync_shared::key::Identity;
use dartsync_shared::limits::MAX_COUNTER;
use dartsync_shared::proto::ptp::{Delta, DeltaEntry, Holder, PeerMessage, Register, TrackerMessage, announce_batches};
use dartsync_shared::test_util::{det_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLOW: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_announce_reaches_the_other_peer_as_exactly_that_delta() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let mut b = tracker.peer(4002).await;
    assert_eq!(a.welcome.epoch, tracker.epoch);
    assert_eq!((a.welcome.interval_ms, a.welcome.seq), (10_000, 0));

    let r1 = file("docs/one.txt", "one", edit(&VersionVector::new(), a.id()), 100);
    a.announce(vec![r1.clone()]).await;
    let holder = Holder { peer_id: a.id(), addr: format!("127.0.0.1:{}", a.listen_port).parse().unwrap() };
    let want = Delta {
        epoch: tracker.epoch,
        from_seq: 0,
        to_seq: 1,
        full: false,
        entries: vec![DeltaEntry { record: r1.clone(), seq: 1, holders: vec![holder.clone()] }],
    };
    assert_eq!(b.delta().await, want);
    // The announcer gets it too (and ignores it), without itself as a
    // holder: no peer is listed to itself.
    let mut to_a = want.clone();
    to_a.entries[0].holders.clear();
    assert_eq!(a.delta().await, to_a);

    // The next delta is exactly the next change: nothing else was sent in between.
    let r2 = file("two", "two", edit(&VersionVector::new(), a.id()), 100);
    a.announce(vec![r2.clone()]).await;
    let d = b.delta().await;
    assert_eq!((d.from_seq, d.to_seq, d.full), (1, 2, false));
    assert_eq!(d.entries, vec![DeltaEntry { record: r2, seq: 2, holders: vec![holder] }]);

    // B downloads r1 and says so: both are holders now. A and B hold it,
    // so they are not told (only their seq moves); a peer that lacks it is.
    b.send(&PeerMessage::Have { path: r1.path.clone(), version: r1.version.clone() }).await;
    let d = b.delta().await;
    assert_eq!((d.to_seq, d.entries.len()), (3, 0), "{d:?}");
    let mut c = tracker.peer(4003).await;
    let d = c.delta().await;
    let r1_entry = d.entries.iter().find(|e| e.record.path == r1.path).unwrap();
    let holders: Vec<_> = r1_entry.holders.iter().map(|h| h.peer_id).collect();
    assert_eq!(holders.len(), 2);
    assert!(holders.contains(&a.id()) && holders.contains(&b.id()));
    tracker.stop().await;
}

#[tokio::test]
async fn a_silent_peer_expires_and_leaves_the_holders() {
    let interval = Duration::from_millis(300);
    let tracker = TestTracker::start(interval, 16).await;
    let mut a = tracker.peer(4001).await;
    let FakePeer { reader: mut b_reader, writer: mut b_writer, .. } = tracker.peer(4002).await;
    // B stays alive; A never sends a keep-alive.
    let keep_alive = tokio::spawn(async move {
        loop {
            if b_writer.send(&PeerMessage::KeepAlive).await.is_err() {
                break;
            }
            tokio::time::sleep(interval / 3).await;
        }
    });

    let r1 = file("f", "x", edit(&VersionVector::new(), a.id()), 1);
    // Taken before sending, so the tracker's deadline is at least this + 3 x interval.
    let last_message = Instant::now();
    a.announce(vec![r1.clone()]).await;
    // B hears of the record, then of A going offline (a device list),
    // with no delta about it: a departure takes no seq.
    let mut delta = None;
    let elapsed = loop {
        match recv(&mut b_reader).await {
            TrackerMessage::Delta(d) if d.entries.is_empty() && !d.full => continue,
            TrackerMessage::Delta(d) if delta.is_none() => delta = Some(d),
            TrackerMessage::Devices { devices } if devices.iter().any(|d| d.peer_id == a.id() && !d.online) => {
                break last_message.elapsed();
            }
            TrackerMessage::Devices { .. } => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(delta.unwrap().entries[0].holders.len(), 1);
    assert!(elapsed >= interval * 3, "expired after {elapsed:?}, before 3 x interval");
    assert!(elapsed <= interval * 3 + Duration::from_secs(1), "expired only after {elapsed:?}");
    // And A's connection was closed.
    expect_closed(&mut a.reader).await;
    keep_alive.abort();
    // A peer that asks (C lacks the record) learns that no one holds it.
    let mut c = tracker.peer(4003).await;
    assert_eq!(c.delta().await.entries[0].holders, vec![]);
    assert_eq!(c.sources(&r1.path, &r1.version).await, Some(vec![]));
    // A version that is not the global one gets no answer (here: the
    // heartbeat that follows).
    let other = file("f", "y", edit(&VersionVector::new(), c.id()), 1);
    assert_eq!(c.sources(&other.path, &other.version).await, None);
    tracker.stop().await;
}

#[tokio::test]
async fn a_reconnecting_peer_gets_only_what_it_missed() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let v = edit(&VersionVector::new(), a.id());
    a.announce(vec![file("one", "1", v.clone(), 1)]).await;
    a.delta().await;

    let b_id = Identity::generate();
    let mut b = FakePeer::register(tracker.addr, &tracker.key, b_id.clone(), 4002, 0, 0).await;
    let seen = b.deltas_until(1).await.last().unwrap().to_seq;
    assert_eq!(seen, 1);
    b.goodbye().await;

    // While B is away: two new files and a deletion.
    a.announce(vec![file("two", "2", v.clone(), 1), file("three", "3", v.clone(), 1)]).await;
    a.announce(vec![tombstone("one", edit(&v, a.id()), 2)]).await;
    a.deltas_until(4).await;

    let mut b = FakePeer::register(tracker.addr, &tracker.key, b_id, 4002, seen, tracker.epoch).await;
    assert_eq!(b.welcome.seq, 4);
    let d = b.delta().await;
    assert_eq!((d.from_seq, d.to_seq, d.full), (1, 4, false));
    let got: Vec<_> = d.entries.iter().map(|e| (e.record.path.as_str(), e.seq, e.record.deleted)).collect();
    assert_eq!(got, vec![("two", 2, false), ("three", 3, false), ("one", 4, true)]);
    tracker.stop().await;
}

#[tokio::test]
async fn a_peer_with_a_stale_epoch_gets_the_full_table() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let v = edit(&VersionVector::new(), a.id());
    a.announce(vec![file("a", "1", v.clone(), 1), file("b", "2", v.clone(), 1)]).await;
    a.announce(vec![tombstone("a", edit(&v, a.id()), 2)]).await;
    a.deltas_until(3).await;

    let stale = tracker.epoch.wrapping_add(1);
    let mut c = FakePeer::register(tracker.addr, &tracker.key, Identity::generate(), 4003, 2, stale).await;
    assert_eq!(c.welcome.epoch, tracker.epoch);
    let d = c.delta().await;
    assert!(d.full);
    assert_eq!((d.from_seq, d.to_seq), (0, 3));
    let got: Vec<_> = d.entries.iter().map(|e| (e.record.path.as_str(), e.record.deleted)).collect();
    assert_eq!(got, vec![("b", false), ("a", true)]);
    // Later changes are incremental again.
    a.announce(vec![file("c", "3", v, 1)]).await;
    let d = c.delta().await;
    assert_eq!((d.from_seq, d.to_seq, d.full, d.entries.len()), (3, 4, false, 1));
    tracker.stop().await;
}

#[tokio::test]
async fn concurrent_announces_keep_both_versions() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let mut b = tracker.peer(4002).await;
    let base = edit(&VersionVector::new(), a.id());
    a.announce(vec![file("r.txt", "base", base.clone(), 100)]).await;
    b.delta().await;
    a.announce(vec![file("r.txt", "by a", edit(&base, a.id()), 200)]).await;
    b.announce(vec![file("r.txt", "by b", edit(&base, b.id()), 300)]).await;
    b.deltas_until(4).await;
    let table = tracker.table().await;
    assert_eq!(table.len(), 2, "{:?}", table.keys());
    let winner = &table["r.txt"];
    assert_eq!(winner.record.content, dartsync_shared::ContentHash::of(b"by b"));
    // Both fake peers call themselves "test": the short id tells them apart.
    let copy_name = format!("r.sync-conflict-19700101-000320-test-{}.txt", a.id().fmt_short());
    let copy = table.get(&copy_name).unwrap_or_else(|| panic!("no {copy_name} in {:?}", table.keys()));
    assert_eq!(copy.record.content, dartsync_shared::ContentHash::of(b"by a"));
    assert_eq!(copy.holders.iter().map(|h| h.peer_id).collect::<Vec<_>>(), vec![a.id()]);
    // The loser is told, after the delta carrying the copy; the winner is not.
    let notice = a.conflict_notice().await;
    assert_eq!((notice.path.as_str(), notice.copy.as_ref().map(|c| c.as_str())), ("r.txt", Some(copy_name.as_str())));
    assert_eq!((notice.winner.as_str(), notice.loser.as_str()), ("test", "test"));
    tracker.stop().await;
}

#[tokio::test]
async fn hostile_input_drops_that_connection_only_and_changes_nothing() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let v = edit(&VersionVector::new(), a.id());
    a.announce(vec![file("keep", "k", v.clone(), 1)]).await;
    a.delta().await;
    let before = tracker.table().await;
    assert_eq!(before.len(), 1);

    // Garbage instead of a handshake.
    let mut raw = tokio::net::TcpStream::connect(tracker.addr).await.unwrap();
    let _ = raw.write_all(&det_bytes(7, 70_000)).await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the tracker kept a garbage connection open");

    // A 4 GiB length prefix from a registered peer.
    let mut p = tracker.peer(5001).await;
    p.writer.send_unframed(&[0xFF, 0xFF, 0xFF, 0xFF, 0]).await.unwrap();
    let reason = expect_closed(&mut p.reader).await;
    assert!(reason.is_some_and(|r| r.contains("exceeds")), "no clear reason");

    // Random bytes as a frame.
    let junk = det_bytes(11, 300);
    assert!(codec::decode::<PeerMessage>(&junk).is_err());
    let mut p = tracker.peer(5002).await;
    p.writer.send_frame(Bytes::from(junk)).await.unwrap();
    expect_closed(&mut p.reader).await;

    // An Announce whose path climbs out of the folder (hand-patched bytes).
    let evil = "../../etc/passwd";
    let placeholder = "a".repeat(evil.len());
    let record = file(&placeholder, "pwned", v.clone(), 1);
    let mut bytes = codec::encode(&PeerMessage::Announce { records: vec![record] }).unwrap();
    let at = bytes.windows(placeholder.len()).position(|w| w == placeholder.as_bytes()).unwrap();
    bytes[at..at + evil.len()].copy_from_slice(evil.as_bytes());
    let mut p = tracker.peer(5003).await;
    p.writer.send_frame(Bytes::from(bytes)).await.unwrap();
    let reason = expect_closed(&mut p.reader).await;
    assert!(reason.is_some(), "a decodable-frame error is explained");

    // A record that decodes but is invalid (no version vector).
    let mut p = tracker.peer(5004).await;
    p.announce(vec![file("bad", "x", VersionVector::new(), 1)]).await;
    assert!(expect_closed(&mut p.reader).await.is_some_and(|r| r.contains("version")));

    // Announce before Register.
    let (mut reader, mut writer) = handshake(tracker.addr, &tracker.key, &Identity::generate()).await;
    writer.send(&PeerMessage::Announce { records: vec![file("early", "x", v.clone(), 1)] }).await.unwrap();
    assert!(expect_closed(&mut reader).await.is_some_and(|r| r.contains("Register")));

    // Register claiming someone else's id.
    let (mut reader, mut writer) = handshake(tracker.addr, &tracker.key, &Identity::generate()).await;
    let register = Register::new(a.id(), 1, 0, 0, "test");
    writer.send(&PeerMessage::Register(register)).await.unwrap();
    assert!(expect_closed(&mut reader).await.is_some());

    // A second Register.
    let mut p = tracker.peer(5005).await;
    let again = Register::new(p.id(), 1, 0, 0, "test");
    p.send(&PeerMessage::Register(again)).await;
    assert!(expect_closed(&mut p.reader).await.is_some());

    // A wrong cluster key never gets in.
    let stream = tokio::net::TcpStream::connect(tracker.addr).await.unwrap();
    let wrong = dartsync_shared::key::ClusterKey::generate();
    assert!(dartsync_shared::channel::connect(stream, &wrong, &Identity::generate()).await.is_err());

    // Nothing changed, and the honest peer is still served.
    assert_eq!(tracker.table().await, before);
    a.announce(vec![file("after", "x", v, 1)]).await;
    let d = a.delta().await;
    assert_eq!(d.entries.iter().map(|e| e.record.path.as_str()).collect::<Vec<_>>(), ["after"]);
    assert!(tracker.table().await.contains_key("after"));
    tracker.stop().await;
}

#[tokio::test]
async fn extra_peers_are_refused_when_full() {
    let tracker = TestTracker::start(SLOW, 1).await;
    let mut a = tracker.peer(4001).await;
    let (mut reader, _writer) = handshake(tracker.addr, &tracker.key, &Identity::generate()).await;
    let reason = expect_closed(&mut reader).await;
    assert!(reason.is_some_and(|r| r.contains("full")));
    // The admitted peer is unaffected.
    a.announce(vec![file("x", "x", edit(&VersionVector::new(), a.id()), 1)]).await;
    assert_eq!(a.delta().await.to_seq, 1);
    tracker.stop().await;
}

#[tokio::test]
async fn a_reconnect_with_the_same_id_replaces_the_old_session() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let id = Identity::generate();
    let mut old = FakePeer::register(tracker.addr, &tracker.key, id.clone(), 4001, 0, 0).await;
    let x = file("x", "x", edit(&VersionVector::new(), id.peer_id()), 1);
    old.announce(vec![x.clone()]).await;
    old.delta().await;
    let mut new = FakePeer::register(tracker.addr, &tracker.key, id.clone(), 4999, 1, tracker.epoch).await;
    expect_closed(&mut old.reader).await;
    // The old session's holdings are gone until the new one announces its summary.
    assert_eq!(new.sources(&x.path, &x.version).await, Some(vec![]));
    new.announce(vec![x.clone()]).await;
    // Applied (its own page moves on, empty: it holds the record) ...
    let d = new.delta().await;
    assert!(d.entries.is_empty(), "{d:?}");
    // ... and another peer sees it as the holder, at its new address.
    let mut other = tracker.peer(4002).await;
    let d = other.delta().await;
    let port: Vec<_> = d.entries[0].holders.iter().map(|h| h.addr.port()).collect();
    assert_eq!(port, vec![4999]);
    tracker.stop().await;
}

#[tokio::test]
async fn goodbye_removes_the_peer_from_the_holders_at_once() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let mut b = tracker.peer(4002).await;
    let x = file("x", "x", edit(&VersionVector::new(), a.id()), 1);
    a.announce(vec![x.clone()]).await;
    assert_eq!(b.delta().await.entries[0].holders.len(), 1);
    let holder = Holder { peer_id: a.id(), addr: format!("127.0.0.1:{}", a.listen_port).parse().unwrap() };
    assert_eq!(b.sources(&x.path, &x.version).await, Some(vec![holder]));
    let a_id = a.id();
    a.goodbye().await;
    b.until_offline(a_id).await;
    // B lacks the record: when it asks, no one holds it any more.
    assert_eq!(b.sources(&x.path, &x.version).await, Some(vec![]));
    tracker.stop().await;
}

#[tokio::test]
async fn a_record_with_a_counter_past_the_limit_is_refused_and_never_relayed() {
    let tracker = TestTracker::start(SLOW, 16).await;
    let mut a = tracker.peer(4001).await;
    let mut b = tracker.peer(4002).await;
    let mut evil = tracker.peer(4003).await;

    // A forged counter, in a batch with an innocent record: the batch is
    // refused whole and the connection dropped with a reason.
    let forged = file("forged", "x", VersionVector::from_entries([(evil.id().short(), u64::MAX)]), 1);
    let innocent = file("innocent", "y", edit(&VersionVector::new(), evil.id()), 1);
    evil.announce(vec![innocent, forged]).await;
    let reason = expect_closed(&mut evil.reader).await;
    assert!(reason.as_deref().is_some_and(|r| r.contains("forged") && r.contains("exceeds the limit")), "{reason:?}");

    // A counter exactly at the limit is valid.
    let at_limit = VersionVector::from_entries([(a.id().short(), MAX_COUNTER)]);
    a.announce(vec![file("edge", "e", at_limit, 1)]).await;
    let seen: Vec<String> =
        b.deltas_until(1).await.iter().flat_map(|d| d.entries.iter().map(|e| e.record.path.to_string())).collect();
    assert_eq!(seen, ["edge"], "the first delta after the refusal carries only the valid record");
    let table = tracker.table().await;
    assert_eq!(table.keys().collect::<Vec<_>>(), ["edge"]);
    tracker.stop().await;
}

#[tokio::test]
async fn a_member_over_its_record_quota_is_refused_and_others_are_unaffected() {
    // The default quota is 500,000 records (DEFAULT_MAX_RECORDS_PER_PEER);
    // the rule is the same at any size and the cost of the run grows with
    // the records sent (about 1.5 s per 25,000 in a debug build), so this
    // member meets a quota of 20,000 with 25,000 records.
    const QUOTA: usize = 20_000;
    let tracker = TestTracker::start_with(SLOW, 16, |c| c.max_records_per_peer = QUOTA).await;
    let mut a = tracker.peer(4001).await;
    let mut b = tracker.peer(4002).await;
    let v = edit(&VersionVector::new(), a.id());
    let records: Vec<_> = (0..QUOTA + 5_000).map(|i| file(&format!("a/{i:06}"), "x", v.clone(), 1)).collect();
    for batch in announce_batches(&records) {
        // The tracker stops reading at the refusal.
        if a.writer.send(&PeerMessage::Announce { records: batch.to_vec() }).await.is_err() {
            break;
        }
    }
    let reason = expect_closed(&mut a.reader).await.unwrap_or_default();
    assert!(
        reason.contains("max_records_per_peer") && reason.contains(&format!("limit (max_records_per_peer) is {QUOTA}")),
        "{reason}"
    );
    assert!(reason.contains(&format!("a/{QUOTA:06}")), "the first record refused is named: {reason}");

    // Exactly the records up to the quota are in the table.
    let table = tracker.table().await;
    assert_eq!(table.len(), QUOTA);
    assert!(table.keys().all(|p| p.as_str() < format!("a/{QUOTA:06}").as_str()));

    // Another member is served as before.
    let mine = file("b/mine", "b", edit(&VersionVector::new(), b.id()), 1);
    b.announce(vec![mine.clone()]).await;
    within(PATIENCE * 3, "b's record to come back", async {
        while !b.delta().await.entries.iter().any(|e| e.record == mine) {}
    })
    .await;

    // The member itself may come back and hold what it has; only a record
    // that would add an entry is refused again.
    let mut a = FakePeer::register(tracker.addr, &tracker.key, a.identity.clone(), 4001, 0, 0).await;
    a.announce(vec![records[0].clone()]).await;
    a.announce(vec![records[QUOTA + 1].clone()]).await;
    let reason = expect_closed(&mut a.reader).await.unwrap_or_default();
    assert!(reason.contains(&format!("a/{:06}", QUOTA + 1)), "{reason}");
    assert_eq!(tracker.table().await.len(), QUOTA + 1, "b's record and a's quota");
    tracker.stop().await;
}
