//! The tracker's pre-authentication limits over real TCP on 127.0.0.1:
//! connections without the cluster key never take a session slot, never
//! keep a member out (even from the same address), and are closed quickly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dartsync_shared::channel::{self, FIRST_MESSAGE_TIMEOUT};
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::ptp::{PeerMessage, Register, TrackerMessage};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const SLOW: Duration = Duration::from_secs(10);

/// Idle connections opened at once: far beyond every pool.
const IDLE: usize = 300;

/// How long a member may take to register while the flood is held open.
const PROMPTLY: Duration = Duration::from_millis(1500);

/// Registers a brand-new peer the way the real tracker client does: a
/// connection refused or closed before the handshake ends is retried after
/// 200 ms, doubling (its reconnect backoff, without the jitter). Returns the
/// peer and the number of attempts.
async fn register_like_a_peer(tracker: &TestTracker, listen_port: u16) -> (FakePeer, u32) {
    let identity = Identity::generate();
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
        let stream = TcpStream::connect(tracker.addr).await.unwrap();
        match channel::connect(stream, &tracker.key, &identity).await {
            Ok(ch) => {
                let (mut reader, mut writer) = ch.split();
                let register = Register::new(identity.peer_id(), listen_port, 0, 0, "test");
                writer.send(&PeerMessage::Register(register)).await.unwrap();
                let welcome = match recv(&mut reader).await {
                    TrackerMessage::Welcome(w) => w,
                    other => panic!("expected Welcome, got {other:?}"),
                };
                return (FakePeer { identity, reader, writer, welcome, listen_port }, attempt);
            }
            // The client's reconnect backoff (not a synchronisation).
            Err(_) => tokio::time::sleep(delay).await,
        }
        delay *= 2;
    }
    panic!("no registration in 8 attempts");
}

/// Opens `n` TCP connections that never send a byte.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Waits for EOF (or a reset) on `stream`; returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(limit, stream.read(&mut buf)).await.expect("the tracker kept an idle connection");
    assert!(matches!(n, Ok(0) | Err(_)), "the tracker answered an idle connection: {n:?}");
    start.elapsed()
}

#[tokio::test]
async fn idle_connections_without_the_key_never_keep_members_out() {
    // Two session slots only: if idle connections took them, nobody would
    // get in.
    let tracker = TestTracker::start(SLOW, 2).await;
    let mut flood = idle_connections(tracker.addr, IDLE).await;

    let start = Instant::now();
    let (a, tries_a) = register_like_a_peer(&tracker, 4001).await;
    let (b, tries_b) = register_like_a_peer(&tracker, 4002).await;
    let took = start.elapsed();
    eprintln!("two members registered in {took:?} ({tries_a} + {tries_b} attempts) past {IDLE} idle connections");
    assert!(took < PROMPTLY, "two members took {took:?} to register past {IDLE} idle connections");

    // Every idle connection is closed: most at once, the few admitted to
    // the handshake by the first-message deadline (or when displaced).
    let limit = FIRST_MESSAGE_TIMEOUT + Duration::from_secs(3);
    for stream in &mut flood {
        closed_within(stream, limit).await;
    }

    // The session cap still holds for members.
    let (mut reader, _writer) = handshake(tracker.addr, &tracker.key, &Identity::generate()).await;
    assert!(expect_closed(&mut reader).await.is_some_and(|r| r.contains("full")));
    a.goodbye().await;
    b.goodbye().await;
    tracker.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_message_deadline() {
    let tracker = TestTracker::start(SLOW, 4).await;
    let mut silent = TcpStream::connect(tracker.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(8)).await;
    assert!(took >= FIRST_MESSAGE_TIMEOUT - Duration::from_millis(100), "closed after only {took:?}");
    assert!(took < FIRST_MESSAGE_TIMEOUT + Duration::from_secs(2), "closed after {took:?}");
    tracker.stop().await;
}

#[tokio::test]
async fn a_wrong_key_fails_without_an_answer_and_members_still_get_in() {
    let tracker = TestTracker::start(SLOW, 4).await;
    for _ in 0..20 {
        let stream = TcpStream::connect(tracker.addr).await.unwrap();
        let err = dartsync_shared::channel::connect(stream, &ClusterKey::generate(), &Identity::generate())
            .await
            .expect_err("a wrong key got through");
        assert!(err.to_string().contains("closed the connection"), "{err}");
    }
    let start = Instant::now();
    let (a, _) = register_like_a_peer(&tracker, 4001).await;
    assert!(start.elapsed() < PROMPTLY);
    a.goodbye().await;
    tracker.stop().await;
}
