//! Memory bounds of the tracker, measured on a tracker in a process of its
//! own, driven over TCP on 127.0.0.1 by fake peers in this one.
//!
//! Each test starts the tracker in a child process: this test binary run
//! again with only [`tracker_child_process`] selected and
//! `DARTSYNC_TRACKER_MEMORY_CHILD` set. The child answers one-line commands
//! on stdin (`rss`, `peak`, `reset`) with its `VmRSS` / `VmHWM` from
//! `/proc/self/status` (`reset` restarts the peak through
//! `/proc/self/clear_refs`), so every number is the tracker's alone: not
//! the fake peers', not the other tests'. Each test asserts its bound and
//! prints its numbers as `memory:` lines (`-- --nocapture`);
//! `bench/tracker-memory/run.sh` runs this file in a release build and
//! collects them. ARCHITECTURE.md ("Tracker memory") holds the formula
//! these numbers fill in.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::*;
use dartsync_shared::codec;
use dartsync_shared::config::TrackerConfig;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::limits::{DEFAULT_PIECE_LEN, MAX_BATCH_BYTES};
use dartsync_shared::proto::ptp::{PeerMessage, announce_batches};
use dartsync_shared::test_util::within;
use dartsync_shared::{FileRecord, PeerId, VersionVector};
use dartsync_tracker::{DB_FILE, Tracker};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Set in the child: its settings and key (see [`ChildTracker::start`]).
const CHILD_ENV: &str = "DARTSYNC_TRACKER_MEMORY_CHILD";

/// Answers of the child's protocol follow this tag (the test harness
/// prints on the same stdout).
const TAG: &str = "@@ ";

const MIB: u64 = 1024;

/// Slots for batch frames in the tracker (`session::BATCH_SLOTS`).
const BATCH_SLOTS: u64 = 4;

/// Plaintext bytes of one Noise message: sending at most this much makes
/// the tracker read all of it before it closes (no reset).
const ONE_NOISE_MESSAGE: usize = 65_535 - 16;

/// How the child tracker is configured.
#[derive(Debug, Clone)]
struct Settings {
    interval: Duration,
    max_peers: usize,
    max_records: usize,
    max_records_per_peer: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(10),
            max_peers: 64,
            max_records: dartsync_shared::config::DEFAULT_MAX_RECORDS,
            max_records_per_peer: dartsync_shared::config::DEFAULT_MAX_RECORDS_PER_PEER,
        }
    }
}

/// The tracker process and the pipes of its command protocol.
struct ChildTracker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    key: ClusterKey,
    dir: tempfile::TempDir,
}

impl ChildTracker {
    fn start(settings: &Settings) -> ChildTracker {
        let dir = tempfile::tempdir().unwrap();
        let key = ClusterKey::generate();
        let spec = format!(
            "{} {} {} {} {} {}",
            settings.interval.as_millis(),
            settings.max_peers,
            settings.max_records,
            settings.max_records_per_peer,
            dartsync_shared::hex::encode(key.as_bytes()),
            dir.path().join("data").display(),
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tracker_child_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            // The allocator as the `dartsync` binary sets it for a tracker
            // (`src/malloc_tuning.rs`): one arena per core, and blocks of
            // 128 KiB and more from `mmap`, handed back when freed. With
            // glibc's sliding threshold, a freed 4 MiB batch buffer raises
            // it and the next ones come from whichever arena a thread
            // holds, so the peak here varied by 13 MiB from run to run.
            .env("MALLOC_ARENA_MAX", "2")
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut tracker = ChildTracker { child, stdin, stdout, addr: "127.0.0.1:1".parse().unwrap(), key, dir };
        let ready = tracker.answer();
        tracker.addr = ready.strip_prefix("ready ").unwrap().parse().unwrap();
        tracker
    }

    /// The next line of the protocol (without the tag).
    fn answer(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the tracker process ended");
            // The harness's `test tracker_child_process ... ` may open the line.
            if let Some(at) = line.find(TAG) {
                return line[at + TAG.len()..].trim_end().to_owned();
            }
        }
    }

    fn ask(&mut self, command: &str) -> u64 {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let answer = self.answer();
        answer.parse().unwrap_or_else(|_| panic!("{command}: {answer}"))
    }

    /// Resident memory now, KiB.
    fn rss_kib(&mut self) -> u64 {
        self.ask("rss")
    }

    /// Restarts the peak at the current resident memory; returns it, KiB.
    fn reset_peak(&mut self) -> u64 {
        self.ask("reset");
        self.rss_kib()
    }

    /// Highest resident memory since the last reset, KiB.
    fn peak_kib(&mut self) -> u64 {
        self.ask("peak")
    }

    async fn peer(&self, listen_port: u16) -> FakePeer {
        FakePeer::register(self.addr, &self.key, Identity::generate(), listen_port, 0, 0).await
    }
}

impl Drop for ChildTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the tracker process the other tests measure. It
/// does nothing unless `DARTSYNC_TRACKER_MEMORY_CHILD` is set.
#[test]
fn tracker_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.splitn(6, ' ').collect();
    let [interval_ms, max_peers, max_records, max_records_per_peer, key, data_dir] = fields[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let key = ClusterKey::from_bytes(dartsync_shared::hex::decode32(key).unwrap());
    let config = TrackerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        discovery: false,
        data_dir: data_dir.into(),
        interval: Duration::from_millis(interval_ms.parse().unwrap()),
        piece_len: DEFAULT_PIECE_LEN,
        max_peers: max_peers.parse().unwrap(),
        max_records: max_records.parse().unwrap(),
        max_records_per_peer: max_records_per_peer.parse().unwrap(),
        ..TrackerConfig::default()
    };
    // The runtime `dartsync tracker` uses.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let tracker = Tracker::bind(config, key).await.unwrap();
        println!("{TAG}ready {}", tracker.local_addr());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(tracker.run(shutdown.clone()));
        tokio::task::spawn_blocking(serve_commands).await.unwrap();
        shutdown.cancel();
        run.await.unwrap().unwrap();
    });
}

/// Answers `rss`, `peak` and `reset` until stdin closes.
fn serve_commands() {
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "rss" => status_kib("VmRSS:"),
            "peak" => status_kib("VmHWM:"),
            "reset" => match std::fs::write("/proc/self/clear_refs", "5") {
                Ok(()) => "0".to_owned(),
                Err(e) => format!("cannot reset the peak: {e}"),
            },
            other => format!("unknown command {other:?}"),
        };
        println!("{TAG}{answer}");
    }
}

fn status_kib(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..].trim().trim_end_matches("kB").trim().to_owned()
}

/// A realistic record: a 30-byte path, one version entry.
fn record(i: usize, author: PeerId) -> FileRecord {
    let path = format!("dir{:03}/sub{:02}/file-{i:07}.txt", i % 1000, i % 97);
    file(&path, &i.to_string(), edit(&VersionVector::new(), author), 1_700_000_000)
}

/// The bytes of an `Announce` frame as a peer would send it, length
/// prefix first, claiming `claimed` records and holding `present` copies of
/// one record: built by hand, since the encoder refuses such a message.
fn announce_frame(claimed: u32, present: usize) -> Vec<u8> {
    let one = codec::encode(&record(0, PeerId([1; 16]))).unwrap();
    let mut body = vec![1u8, 0xFC];
    body.extend_from_slice(&claimed.to_le_bytes());
    for _ in 0..present {
        body.extend_from_slice(&one);
    }
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// The prefix of a frame of `len` bytes and its first `present` body bytes.
fn stalled_frame(len: usize, present: usize) -> Vec<u8> {
    let mut frame = u32::try_from(len).unwrap().to_be_bytes().to_vec();
    frame.resize(4 + present, 0xA5);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announce_claiming_250000_records_is_refused_without_allocating_it() {
    let mut tracker = ChildTracker::start(&Settings::default());
    let mut honest = tracker.peer(4001).await;
    let mut whole_sender = tracker.peer(4002).await;
    let mut counted_sender = tracker.peer(4003).await;

    // 250,000 records as any encoder would lay them out: 22 MB, far beyond
    // the batch bound. The tracker decides at the length prefix; the first
    // Noise message of the frame is all it ever reads.
    let whole = announce_frame(250_000, 250_000);
    assert!(whole.len() > 20_000_000);
    // Claiming 250,000 records inside a frame that fits the batch bound
    // (about 46,000 present): refused at the count, before any record.
    let fits = (MAX_BATCH_BYTES - 6) / codec::encode(&record(0, PeerId([1; 16]))).unwrap().len();
    let counted = announce_frame(250_000, fits);
    assert!(counted.len() - 4 <= MAX_BATCH_BYTES);

    let base = tracker.reset_peak();
    whole_sender.writer.send_unframed(&whole[..ONE_NOISE_MESSAGE]).await.unwrap();
    let reason = expect_closed(&mut whole_sender.reader).await.unwrap_or_default();
    assert!(reason.contains(&format!("exceeds the limit of {MAX_BATCH_BYTES} bytes")), "{reason}");
    counted_sender.writer.send_unframed(&counted).await.unwrap();
    let reason = expect_closed(&mut counted_sender.reader).await.unwrap_or_default();
    assert!(reason.contains("announce records: 250000 entries exceed the limit of 4096"), "{reason}");
    let peak = tracker.peak_kib().saturating_sub(base);
    println!("memory: two 250,000-record Announces refused: tracker peak +{peak} KiB over {base} KiB");
    assert!(peak < 16 * MIB, "tracker peak grew by {peak} KiB");

    // Nothing was applied, and an honest member is served as before.
    let r = record(1, honest.id());
    honest.announce(vec![r.clone()]).await;
    let delta = honest.delta().await;
    assert_eq!((delta.to_seq, delta.entries.len()), (1, 1));
    assert_eq!(delta.entries[0].record, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_frames_announcing_31_mib_are_refused_at_their_prefix() {
    let mut tracker = ChildTracker::start(&Settings::default());
    let mut peers = Vec::new();
    for i in 0..20 {
        peers.push(tracker.peer(5000 + i).await);
    }
    let head = stalled_frame(31 << 20, ONE_NOISE_MESSAGE - 4);
    let base = tracker.reset_peak();
    let mut closing = JoinSet::new();
    for mut peer in peers {
        let head = head.clone();
        closing.spawn(async move {
            peer.writer.send_unframed(&head).await.unwrap();
            expect_closed(&mut peer.reader).await
        });
    }
    while let Some(reason) = closing.join_next().await {
        let reason = reason.unwrap().unwrap_or_default();
        assert!(reason.contains(&format!("frame of {} bytes exceeds the limit of {MAX_BATCH_BYTES}", 31 << 20)));
    }
    let peak = tracker.peak_kib().saturating_sub(base);
    println!("memory: 20 frames of 31 MiB refused at their prefix: tracker peak +{peak} KiB (unbounded: 620 MiB)");
    assert!(peak < 8 * MIB, "tracker peak grew by {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stalled_batch_frames_cost_at_most_the_batch_slots() {
    // Twenty members each send a batch frame of the largest allowed size
    // but one byte, then stall: at most BATCH_SLOTS of them are buffered at
    // a time, the others wait unread, and all are expired (3 x interval
    // without a message), which frees their slots.
    let interval = Duration::from_millis(500);
    let mut tracker = ChildTracker::start(&Settings { interval, ..Settings::default() });
    let mut stallers = Vec::new();
    for i in 0..20 {
        stallers.push(tracker.peer(5000 + i).await);
    }
    // Registered last: on a busy machine, registering the twenty can take
    // longer than the 1.5 s after which a silent member expires.
    let mut honest = tracker.peer(4001).await;
    let frame = stalled_frame(MAX_BATCH_BYTES, MAX_BATCH_BYTES - 1);
    let base = tracker.reset_peak();
    let mut closing = JoinSet::new();
    for mut peer in stallers {
        let frame = frame.clone();
        closing.spawn(async move {
            // Fails once the tracker closes a connection it has not read.
            let _ = peer.writer.send_unframed(&frame).await;
            expect_closed(&mut peer.reader).await
        });
    }
    // Meanwhile small messages still go through: a keep-alive every third
    // of an interval, and an announcement that comes back as a delta.
    let r = record(7, honest.id());
    honest.announce(vec![r.clone()]).await;
    assert_eq!(honest.delta().await.entries[0].record, r);
    let mut keep_alive = tokio::time::interval(interval / 3);
    let mut closed = 0;
    within(PATIENCE, "every staller dropped", async {
        while closed < 20 {
            tokio::select! {
                joined = closing.join_next() => {
                    joined.unwrap().unwrap();
                    closed += 1;
                }
                _ = keep_alive.tick() => honest.send(&PeerMessage::KeepAlive).await,
            }
        }
    })
    .await;
    let peak = tracker.peak_kib().saturating_sub(base);
    // The slots, one Noise message and its buffers per session (256 KiB),
    // and room for the allocator.
    let bound = BATCH_SLOTS * (MAX_BATCH_BYTES as u64 / 1024) + 20 * 256 + 12 * MIB;
    println!(
        "memory: 20 stalled frames of 4 MiB: tracker peak +{peak} KiB (bound {bound} KiB = {BATCH_SLOTS} slots x 4 MiB \
         + 20 x 256 KiB + 12 MiB; unbounded: 80 MiB)"
    );
    assert!(peak < bound, "tracker peak grew by {peak} KiB");
    // The honest member was never expired.
    let r = record(8, honest.id());
    honest.announce(vec![r.clone()]).await;
    assert_eq!(honest.delta().await.entries[0].record, r);
}

/// How many records the per-entry measurement announces (the bench sets
/// more).
fn measured_entries() -> usize {
    std::env::var("DARTSYNC_MEMORY_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_costs_a_bounded_amount_per_entry_and_session() {
    let n = measured_entries();
    let defaults = Settings::default();
    let mut tracker = ChildTracker::start(&Settings {
        max_peers: 128,
        max_records: n.max(defaults.max_records),
        max_records_per_peer: n.max(defaults.max_records_per_peer),
        ..defaults
    });
    let mut author = tracker.peer(4001).await;
    let epoch = author.welcome.epoch;
    let records: Vec<FileRecord> = (0..n).map(|i| record(i, author.id())).collect();

    // Idle sessions of a new tracker: up to date, nothing to send them.
    let sessions = 100u16;
    let before = tracker.rss_kib();
    let mut idle = Vec::new();
    for i in 0..sessions {
        idle.push(FakePeer::register(tracker.addr, &tracker.key, Identity::generate(), 6000 + i, 0, epoch).await);
    }
    let after = tracker.rss_kib();
    let per_session = after.saturating_sub(before) / u64::from(sessions);
    println!("memory: {sessions} idle sessions: tracker RSS {before} -> {after} KiB, {per_session} KiB per session");
    assert!(per_session < 256, "{per_session} KiB per idle session");
    // Gone before the table grows (they would be sent every change).
    for peer in idle {
        peer.goodbye().await;
    }

    // The slope between a quarter and all of the records: the redb page
    // cache (at most 8 MiB) and the allocator's first arenas fill in the
    // first quarter.
    let quarter = n / 4;
    let mut marks = Vec::new();
    let mut sent = 0;
    marks.push(tracker.rss_kib());
    for part in [&records[..quarter], &records[quarter..]] {
        for batch in announce_batches(part) {
            author.announce(batch.to_vec()).await;
        }
        sent += part.len();
        within(PATIENCE * 6, "the author's deltas to reach every record", author.deltas_until(sent as u64)).await;
        marks.push(tracker.rss_kib());
    }
    let per_entry = (marks[2].saturating_sub(marks[1]) * 1024) / (n - quarter) as u64;
    let db = std::fs::metadata(tracker.dir.path().join("data").join(DB_FILE)).unwrap().len();
    println!(
        "memory: {n} entries: tracker RSS {} -> {} -> {} KiB (0, {quarter}, {n} entries): {per_entry} bytes per \
         entry; database {} bytes per entry",
        marks[0],
        marks[1],
        marks[2],
        db / n as u64
    );
    // Measured 509 B (this process frees nothing back to the kernel: no
    // release function; 556 B before pages were encoded from the table).
    assert!(per_entry < 768, "{per_entry} bytes per entry");

    // A second holder of every entry: what each further online holder costs.
    let mut holder = tracker.peer(4003).await;
    let target = holder.welcome.seq + n as u64;
    let before = tracker.rss_kib();
    for batch in announce_batches(&records) {
        holder.announce(batch.to_vec()).await;
    }
    within(PATIENCE * 6, "the holder's deltas to reach every record", holder.deltas_until(target)).await;
    let after = tracker.rss_kib();
    let per_holding = (after.saturating_sub(before) * 1024) / n as u64;
    println!(
        "memory: a second holder of {n} entries: tracker RSS {before} -> {after} KiB, {per_holding} bytes per entry"
    );
    // Measured 30 B (a holder is a bit in the entry; the rest is the seq
    // index moving): 46 B with holder lists.
    assert!(per_holding < 128, "{per_holding} bytes per entry and holder");
    holder.goodbye().await;

    // The entries stay when their author leaves: they are the folder.
    author.goodbye().await;
    let mut observer = tracker.peer(4002).await;
    let mut seen = 0;
    for delta in observer.deltas_until(observer.welcome.seq).await {
        seen += delta.entries.len();
    }
    assert_eq!(seen, n, "every entry outlives its author");

    drop(observer);
}
