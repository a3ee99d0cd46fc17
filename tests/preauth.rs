//! End-to-end: connections without the cluster key cost the cluster
//! nothing that matters. A real tracker and two real peers; this test opens
//! thousands of idle TCP connections from 127.0.0.1 to the tracker and to a
//! peer's piece server, and keeps churning them, while
//! - a brand-new peer starts and registers within [`REGISTER_WITHIN`],
//! - a 10 MiB file syncs to it from the flooded piece server,
//! - the tracker's resident memory grows by at most [`RSS_GROWTH`] and
//!   is back near where it started within [`RSS_RETURN`] of the end,
//! - the tracker and the peer each log at most [`MAX_FLOOD_LINES`] lines
//!   about the flood.
//!
//! Plus: a stranger with a wrong key, recording every byte the tracker and
//! the piece server send it, never sees their static public keys.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dartsync_shared::channel;
use dartsync_shared::key::{ClusterKey, Identity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cluster::{Cluster, Options, random_bytes, snapshot, write};
use crate::util::{Proc, wait_until};

const MIB: usize = 1024 * 1024;

/// Idle connections held open against the tracker.
const TRACKER_FLOOD: usize = 2000;

/// Idle connections held open against the flooded peer's piece server.
const PIECE_FLOOD: usize = 500;

/// While the flood runs, this many of the oldest connections are closed
/// and as many new ones opened, per round (continuous pressure).
const CHURN: usize = 100;

/// The flood lasts at least this long.
const FLOOD_LASTS: Duration = Duration::from_secs(8);

/// How long a new peer may take from spawn to registration.
const REGISTER_WITHIN: Duration = Duration::from_secs(3);

/// How long the 10 MiB file may take to arrive.
const SYNC_WITHIN: Duration = Duration::from_secs(25);

/// The tracker's RSS may grow by at most this much during the flood...
const RSS_GROWTH: u64 = 16 * MIB as u64;

/// ...and must be back within [`RSS_SETTLED`] of its baseline this soon.
const RSS_RETURN: Duration = Duration::from_secs(30);

/// "Back near the baseline".
const RSS_SETTLED: u64 = 4 * MIB as u64;

/// Log lines about unauthenticated connections per process.
const MAX_FLOOD_LINES: usize = 12;

/// Resident set size of `pid` in bytes.
fn rss(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The soft limit of open files of this process.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft = line.split_whitespace().nth(3).unwrap();
    soft.parse().unwrap_or(u64::MAX)
}

/// Lines of `proc` about unauthenticated connections or failed handshakes.
fn flood_lines(proc: &Proc) -> Vec<String> {
    proc.lines()
        .into_iter()
        .filter(|l| l.contains("unauthenticated") || l.contains("handshake") || l.contains("dropping connection"))
        .collect()
}

/// Flood connections opened so far, and attempts that could not connect
/// within a second.
#[derive(Default)]
struct FloodStats {
    opened: AtomicUsize,
    failed: AtomicUsize,
}

/// Opens `tracker_n` + `piece_n` idle connections, then churns [`CHURN`]
/// of them per round until `stop`; closes everything on return.
fn flood(
    tracker: SocketAddr,
    piece: SocketAddr,
    tracker_n: usize,
    piece_n: usize,
    stop: &AtomicBool,
    stats: &FloodStats,
) {
    let mut held: VecDeque<TcpStream> = VecDeque::with_capacity(tracker_n + piece_n);
    let total = tracker_n + piece_n;
    // Every `every`-th connection goes to the piece server.
    let every = total.checked_div(piece_n).map_or(usize::MAX, |n| n.max(1));
    let target = |i: usize| if i % every == every - 1 { piece } else { tracker };
    let mut i = 0usize;
    let open_one = |held: &mut VecDeque<TcpStream>, i: &mut usize| {
        match TcpStream::connect_timeout(&target(*i), Duration::from_secs(1)) {
            Ok(s) => {
                held.push_back(s);
                stats.opened.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        *i += 1;
    };
    while held.len() < total && !stop.load(Ordering::SeqCst) {
        open_one(&mut held, &mut i);
    }
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..CHURN.min(held.len()) {
            held.pop_front();
        }
        for _ in 0..CHURN {
            open_one(&mut held, &mut i);
        }
    }
}

/// A stream that records every byte read from it.
struct Recording<S> {
    inner: S,
    seen: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.seen.extend_from_slice(&new);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every byte `addr` sends a stranger with a wrong cluster key that tries
/// the handshake (until the remote closes).
fn stranger_sees(addr: SocketAddr) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut recording = Recording { inner: stream, seen: Vec::new() };
        let result = channel::connect(&mut recording, &ClusterKey::generate(), &Identity::generate()).await;
        assert!(result.is_err(), "a wrong key got through");
        // Whatever else arrives before the close.
        let mut rest = Vec::new();
        let mut inner = recording.inner.into_std().unwrap();
        inner.set_nonblocking(false).unwrap();
        inner.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = inner.read_to_end(&mut rest);
        let mut seen = recording.seen;
        seen.extend_from_slice(&rest);
        seen
    })
}

/// Whether the static public key of the identity stored at `path` shows in
/// `bytes` (any 32-byte window).
fn shows_key(bytes: &[u8], identity: &Path) -> bool {
    let public = Identity::load(identity).unwrap().public();
    bytes.windows(32).any(|w| w == public.0)
}

/// The address in the line "piece server listening on ADDR" of `peer`.
fn piece_addr(peer: &Proc) -> SocketAddr {
    let line = peer.wait_for_line("piece server listening on ", Duration::from_secs(20));
    line.split("piece server listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_flood_without_the_key_keeps_no_member_out() {
    let started = Instant::now();
    let budget = open_files_limit().saturating_sub(512) as usize;
    let piece_n = PIECE_FLOOD.min(budget / 5);
    let tracker_n = TRACKER_FLOOD.min(budget - piece_n);
    assert!(tracker_n >= 1500, "open-files limit too low for the flood: {}", open_files_limit());

    let mut cluster = Cluster::start(Options { peers: 0, ..Options::default() });
    let p0 = cluster.folder(0);
    std::fs::create_dir_all(&p0).unwrap();
    let bytes = random_bytes(10 * MIB, 77);
    write(&p0, "big.bin", &bytes);
    cluster.start_peer(0);
    cluster.wait_registered(0, 1);
    let tracker_addr = cluster.tracker_addr;
    let piece = piece_addr(cluster.peer(0));
    let tracker_pid = cluster.tracker.as_ref().unwrap().pid();

    let baseline = rss(tracker_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let flooder = {
        let (stop, stats) = (stop.clone(), stats.clone());
        std::thread::spawn(move || flood(tracker_addr, piece, tracker_n, piece_n, &stop, &stats))
    };
    let mut peak = baseline;
    // Every flood connection is open (and churning): a new peer arrives.
    let flood_start = Instant::now();
    wait_until(Duration::from_secs(20), "the flood to be under way", || {
        peak = peak.max(rss(tracker_pid));
        stats.opened.load(Ordering::SeqCst) >= tracker_n + piece_n + CHURN
    });
    std::fs::create_dir_all(cluster.folder(1)).unwrap();
    let spawned = Instant::now();
    cluster.start_peer(1);
    let peer1 = cluster.peer(1);
    wait_until(REGISTER_WITHIN + Duration::from_secs(10), "peer1 to register during the flood", || {
        peak = peak.max(rss(tracker_pid));
        peer1.lines().iter().any(|l| l.contains("registered with tracker"))
    });
    let registered = spawned.elapsed();

    let expected = snapshot(&p0);
    let sync_start = Instant::now();
    wait_until(SYNC_WITHIN, "the 10 MiB file to reach peer1 during the flood", || {
        peak = peak.max(rss(tracker_pid));
        snapshot(&cluster.folder(1)) == expected
    });
    let synced = sync_start.elapsed();
    // The flood goes on for a while in any case (memory under a sustained
    // flood, and its log lines).
    wait_until(FLOOD_LASTS + Duration::from_secs(5), "the flood to have lasted", || {
        peak = peak.max(rss(tracker_pid));
        flood_start.elapsed() >= FLOOD_LASTS
    });
    let flood_opened = stats.opened.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    flooder.join().unwrap();
    peak = peak.max(rss(tracker_pid));

    let ended = Instant::now();
    let mut now_rss = rss(tracker_pid);
    wait_until(RSS_RETURN, "the tracker's memory to settle", || {
        now_rss = rss(tracker_pid);
        now_rss <= baseline + RSS_SETTLED
    });
    let settled = ended.elapsed();

    let tracker_lines = flood_lines(cluster.tracker.as_ref().unwrap());
    let peer_lines = flood_lines(cluster.peer(0));
    eprintln!(
        "flood: {flood_opened} connections opened in {:?} ({} failed to connect), {tracker_n} + {piece_n} held; \
         peer1 registered {registered:?} after spawn; 10 MiB synced in {synced:?}; tracker RSS {} KiB -> peak {} KiB \
         -> {} KiB ({settled:?} after the flood); flood log lines: tracker {}, peer0 {}; total {:?}",
        flood_start.elapsed(),
        stats.failed.load(Ordering::SeqCst),
        baseline / 1024,
        peak / 1024,
        now_rss / 1024,
        tracker_lines.len(),
        peer_lines.len(),
        started.elapsed()
    );
    for l in tracker_lines.iter().chain(&peer_lines) {
        eprintln!("  {l}");
    }
    assert!(registered <= REGISTER_WITHIN, "peer1 took {registered:?} to register during the flood");
    assert!(peak <= baseline + RSS_GROWTH, "tracker RSS grew from {baseline} to {peak}");
    assert!(tracker_lines.len() <= MAX_FLOOD_LINES, "the tracker logged {} lines about the flood", tracker_lines.len());
    assert!(peer_lines.len() <= MAX_FLOOD_LINES, "peer0 logged {} lines about the flood", peer_lines.len());

    assert!(!tracker_lines.is_empty() && !peer_lines.is_empty(), "the flood went unnoticed");

    // Strangers learn no identity.
    let tracker_id = cluster.dir.path().join("tracker-data/identity");
    let seen = stranger_sees(tracker_addr);
    assert!(seen.is_empty(), "the tracker answered a stranger with {} bytes", seen.len());
    assert!(!shows_key(&seen, &tracker_id));
    let seen = stranger_sees(piece);
    assert!(seen.is_empty(), "the piece server answered a stranger with {} bytes", seen.len());
    assert!(!shows_key(&seen, &p0.join(".dartsync/identity")));

    // Members are unaffected afterwards too.
    write(&cluster.folder(1), "after.txt", b"after the flood");
    let expected = snapshot(&cluster.folder(1));
    cluster.wait_tree(&expected, Duration::from_secs(20));
    cluster.kill_peer(1);
    cluster.kill_peer(0);
}
