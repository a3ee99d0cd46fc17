//! One load run against a [`Target`], phase by phase:
//!
//! 1. idle: the tracker's RSS before any session, 12 s after its start
//!    (once it has handed its start-up code pages back);
//! 2. connect: N simulated peers register (a few handshakes at a time: the
//!    tracker's pre-auth pool takes 8 per source address);
//! 3. entries: the authors announce a quarter of the records, then the
//!    rest, and every session receives them (RSS after each: the slope is
//!    the cost of one entry, the redb page cache filling in the first part);
//! 4. holders: every other holder announces the same records, then
//!    reports itself up to date; once every session lists every peer up
//!    to date (so the tracker has applied every announcement) and every
//!    session's seq has moved past the holder changes that take a seq (up
//!    to `HOLDER_FANOUT` holders an entry; the entries themselves go only
//!    to sessions that lack the record); RSS: the cost of a
//!    holding; then a fresh observer reads the whole table to check the
//!    holders lists;
//! 5. steady: every peer reports itself up to date; once every session has
//!    a device list showing every peer up to date (the tracker sends it
//!    every 5 s at most with 1,000 sessions), RSS once settled;
//! 6. keep-alive CPU: the tracker's CPU share over a window in which the
//!    peers only send keep-alives at the interval the tracker asked for;
//! 7. fan-out: peer 0 announces edits one at a time; for each, the delay
//!    until every session has received the delta holding it;
//! 8. departure: the last peer says `Goodbye`; every entry it held loses
//!    a holder: the delta entries and bytes the sessions left receive
//!    until their device lists show it gone and their seqs stand still,
//!    the time until the device lists show it, the tracker's CPU.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dartsync_shared::FileRecord;
use dartsync_shared::limits::HOLDER_FANOUT;
use dartsync_shared::proto::ptp::{PeerMessage, announce_batches};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::LoadError;
use crate::layout::{self, Layout};
use crate::procfs;
use crate::report::Outcome;
use crate::sim::{Probe, Reading, SimPeer};
use crate::stats::{Latencies, slope_bytes};
use crate::tracker::Target;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated peers.
    pub peers: usize,
    /// Records in the table.
    pub records: usize,
    /// Peers holding each record (`None`: every peer).
    pub holders: Option<usize>,
    /// Edits for the fan-out measurement (0 skips it).
    pub edits: usize,
    /// The keep-alive CPU window (zero skips it).
    pub cpu_window: Duration,
    /// Longest wait for one phase.
    pub phase_timeout: Duration,
    /// Longest wait for one edit to reach every session.
    pub edit_timeout: Duration,
    /// Handshakes at a time.
    pub connect_parallel: usize,
    /// Peers announcing at a time.
    pub announce_parallel: usize,
    /// Progress lines on stderr.
    pub progress: bool,
    /// How the sessions read delta pages.
    pub reading: Reading,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            peers: 50,
            records: 100_000,
            holders: None,
            edits: 20,
            cpu_window: Duration::from_secs(30),
            phase_timeout: Duration::from_secs(900),
            edit_timeout: Duration::from_secs(10),
            connect_parallel: 6,
            announce_parallel: 8,
            progress: true,
            reading: Reading::Whole,
        }
    }
}

/// How long after the tracker's start its idle RSS is read: its start-up
/// code pages are handed back 10 s after start (`src/code_pages.rs`).
pub const IDLE_AFTER_START: Duration = Duration::from_secs(12);

/// Attempts to connect one peer.
const CONNECT_ATTEMPTS: u32 = 10;

/// Quiet time after which a phase counts as settled even below the
/// expected seq (a tracker that gives holder changes no seq of their own).
const QUIET: Duration = Duration::from_secs(5);

/// How long the sessions must stand still after a departure before what
/// it set off counts as over.
const QUIET_AFTER_DEPARTURE: Duration = Duration::from_secs(2);

/// Runs every phase against `target`.
pub async fn run(target: &Target, opts: &Options) -> Result<Outcome, LoadError> {
    let layout = Layout::new(opts.peers, opts.records, opts.holders.unwrap_or(opts.peers));
    let say = |what: String| {
        if opts.progress {
            eprintln!("[load] {what}");
        }
    };
    let pid = target.pid;
    let mut o = Outcome {
        peers: layout.peers,
        records: layout.records,
        holders: layout.holders,
        skimmed: opts.reading == Reading::Skim,
        ..Outcome::default()
    };

    // Idle means after start-up: the tracker hands its start-up code
    // pages back `IDLE_AFTER_START` after it starts (`src/code_pages.rs`).
    let age = procfs::age(pid)?;
    tokio::time::sleep(IDLE_AFTER_START.saturating_sub(age).max(Duration::from_millis(500))).await;
    let idle = procfs::settled(pid).await?;
    (o.idle_rss_kib, o.idle_anon_kib) = (idle.rss_kib, idle.anon_kib);
    say(format!("idle tracker: {} KiB", o.idle_rss_kib));

    // Connect.
    let start = Instant::now();
    let probe = Probe::new();
    let (peers, retries) = connect_all(target, &layout, opts, &probe).await?;
    o.connect_secs = start.elapsed().as_secs_f64();
    if retries > 0 {
        o.notes.push(format!("{retries} handshakes were retried while the peers connected (the tracker was busy)"));
    }
    o.interval_ms = peers[0].welcome.interval_ms;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sessions = procfs::sample(pid)?;
    o.sessions_rss_kib = sessions.rss_kib;
    // Heap only: the first sessions also map code pages again that the
    // idle tracker had handed back, which is no cost of a session.
    o.session_bytes = slope_bytes(o.idle_anon_kib, sessions.anon_kib, layout.peers as u64);
    say(format!("{} sessions in {:.1} s: {} KiB", layout.peers, o.connect_secs, o.sessions_rss_kib));

    // Entries, then holders.
    let ids: Vec<_> = peers.iter().map(|p| p.id).collect();
    let records: Arc<Vec<FileRecord>> =
        Arc::new((0..layout.records).map(|i| layout::record(i, ids[layout.author_of(i)])).collect());
    let base_seq = peers.iter().map(SimPeer::seq).max().unwrap_or(0);
    let quarter = layout.records / 4;
    let start = Instant::now();
    let cpu_start = procfs::sample(pid)?.cpu_ticks;
    let lists = (0..layout.peers).map(|p| layout.authored(p, 0..quarter)).collect();
    announce(&peers, &records, lists, opts.announce_parallel).await?;
    settle(&peers, base_seq + quarter as u64, opts.phase_timeout, "a quarter of the records", &mut o.notes).await?;
    o.quarter_rss_kib = procfs::settled(pid).await?.rss_kib;
    let lists = (0..layout.peers).map(|p| layout.authored(p, quarter..layout.records)).collect();
    announce(&peers, &records, lists, opts.announce_parallel).await?;
    let seq =
        settle(&peers, base_seq + layout.records as u64, opts.phase_timeout, "every record", &mut o.notes).await?;
    o.announce_secs = start.elapsed().as_secs_f64();
    let reading = procfs::settled(pid).await?;
    o.entries_rss_kib = reading.rss_kib;
    o.announce_cpu_secs = cpu_secs(reading.cpu_ticks - cpu_start);
    o.entry_bytes = slope_bytes(o.quarter_rss_kib, o.entries_rss_kib, (layout.records - quarter) as u64);
    say(format!("{} records in {:.1} s: {} KiB", layout.records, o.announce_secs, o.entries_rss_kib));

    let start = Instant::now();
    let cpu_start = reading.cpu_ticks;
    let lists = (0..layout.peers).map(|p| layout.held(p)).collect();
    announce(&peers, &records, lists, opts.announce_parallel).await?;
    let extra = layout.holdings() - layout.records as u64;
    // A holder takes a seq only while the entry has at most
    // `HOLDER_FANOUT` holders (past them it is paged to no one), so seqs
    // that stand still do not say the tracker is done. Each peer's
    // `Report` follows its announcements on its session, which the
    // tracker applies in order: once every session lists every peer up to
    // date, every holding is in the table.
    for peer in &peers {
        peer.report_up_to_date().await?;
    }
    if !wait_until(&peers, opts.phase_timeout, || peers.iter().all(|p| up_to_date_listed(p) >= layout.peers)).await? {
        o.notes.push("every holder: not every session listed every peer up to date in time".to_owned());
    }
    let paged = layout.holders.min(HOLDER_FANOUT).saturating_sub(1) as u64;
    settle(&peers, seq + layout.records as u64 * paged, opts.phase_timeout, "every holder", &mut o.notes).await?;
    o.holders_secs = start.elapsed().as_secs_f64();
    let reading = procfs::settled(pid).await?;
    o.holders_rss_kib = reading.rss_kib;
    o.holders_cpu_secs = cpu_secs(reading.cpu_ticks - cpu_start);
    o.holder_bytes = slope_bytes(o.entries_rss_kib, o.holders_rss_kib, extra);
    // The holders list reaches the peers that lack a record; here every
    // session holds what it holds, so a fresh observer (after the RSS
    // reading) reads the whole table and the holders it lists.
    let observer = SimPeer::connect(target, layout.peers, 0.0, probe.clone(), opts.reading).await?;
    let observed = std::slice::from_ref(&observer);
    // Its `Welcome` says the seq at once; the table follows in pages.
    let whole_table = || observer.seen.entries.load(Ordering::Relaxed) >= layout.records as u64;
    if !wait_until(observed, opts.phase_timeout, whole_table).await? {
        o.notes.push("the observer did not receive the whole table in time".to_owned());
    }
    o.max_holders_listed =
        peers.iter().chain(observed).map(|p| p.seen.max_holders.load(Ordering::Relaxed)).max().unwrap_or(0);
    observer.close().await;
    let listed = layout.holders.min(HOLDER_FANOUT);
    if layout.records > 0 && !o.skimmed && o.max_holders_listed < listed {
        o.notes.push(format!(
            "at most {} holders were listed on an entry, {listed} expected: the tracker did not take every copy as a holder",
            o.max_holders_listed
        ));
    }
    say(format!("{} holdings in {:.1} s: {} KiB", layout.holdings(), o.holders_secs, o.holders_rss_kib));

    // Steady state.
    for peer in &peers {
        peer.report_up_to_date().await?;
    }
    if !wait_until(&peers, opts.phase_timeout, || peers.iter().all(|p| up_to_date_listed(p) >= layout.peers)).await? {
        o.notes.push("not every session got a device list with every peer up to date in time".to_owned());
    }
    let steady = procfs::settled(pid).await?;
    (o.steady_rss_kib, o.steady_anon_kib) = (steady.rss_kib, steady.anon_kib);
    o.steady_bytes_per_holding = slope_bytes(0, steady.rss_kib, layout.holdings());
    o.table_bytes_per_holding = slope_bytes(o.sessions_rss_kib, steady.rss_kib, layout.holdings());
    say(format!("steady: {} KiB", o.steady_rss_kib));

    // Keep-alive CPU.
    if !opts.cpu_window.is_zero() {
        say(format!("measuring keep-alive CPU for {} s", opts.cpu_window.as_secs()));
        o.keepalive_cpu_percent = Some(procfs::measure_cpu(pid, opts.cpu_window).await?);
        o.cpu_window_secs = opts.cpu_window.as_secs_f64();
        check_alive(&peers)?;
    }

    // Fan-out.
    let mut samples = Vec::new();
    let mut lasts = Vec::new();
    let edits = opts.edits.min(layout.records);
    let stride = (layout.records / edits.max(1)).max(1);
    let editor = &peers[0];
    for n in 0..edits {
        let edit = layout::edited(&records[n * stride], editor.id.short(), n as u64);
        let mut hits = probe.arm(edit.path.clone(), edit.version.clone());
        let sent = Instant::now();
        editor.send(PeerMessage::Announce { records: vec![edit] }).await?;
        let mut reached = vec![false; layout.peers];
        let mut count = 0;
        let mut last = Duration::ZERO;
        let deadline = sent + opts.edit_timeout;
        while count < layout.peers {
            match tokio::time::timeout_at(deadline, hits.recv()).await {
                Ok(Some((peer, at))) if !reached[peer] => {
                    reached[peer] = true;
                    count += 1;
                    last = at.saturating_duration_since(sent);
                    samples.push(last);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        probe.disarm();
        if count == layout.peers {
            o.edits_complete += 1;
            lasts.push(last);
        } else {
            o.notes
                .push(format!("edit {n} reached {count} of {} sessions within {:?}", layout.peers, opts.edit_timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    o.edits = edits;
    o.fanout = Latencies::of(&samples);
    o.fanout_all = Latencies::of(&lasts);
    if edits > 0 {
        say(format!(
            "fan-out: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            o.fanout.p50_ms, o.fanout.p99_ms, o.fanout.max_ms
        ));
    }
    check_alive(&peers)?;

    // Departure.
    let mut peers = peers;
    if layout.peers > 1 && layout.records > 0 {
        let edited: HashSet<usize> = (0..edits).map(|n| n * stride).collect();
        let leaving = peers.pop().expect("more than one peer");
        let held = layout
            .authored(leaving.index, 0..layout.records)
            .into_iter()
            .chain(layout.held(leaving.index))
            .filter(|i| !edited.contains(i))
            .count() as u64;
        let before = |peers: &[SimPeer]| {
            peers.iter().fold((0, 0), |(e, b), p| {
                (e + p.seen.entries.load(Ordering::SeqCst), b + p.seen.delta_bytes.load(Ordering::SeqCst))
            })
        };
        let (entries, bytes) = before(&peers);
        let cpu_start = procfs::sample(pid)?.cpu_ticks;
        let start = Instant::now();
        leaving.close().await;
        // Applied once every session's device list shows it gone; then
        // whatever it set off (a tracker that pages departures sends the
        // entries it held) until the sessions' seqs stand still.
        let gone = || peers.iter().all(|p| p.seen.devices_online.load(Ordering::SeqCst) < layout.peers);
        if !wait_until(&peers, opts.phase_timeout, gone).await? {
            o.notes.push("a peer's departure: not every session's device list showed it in time".to_owned());
        }
        o.departure_secs = start.elapsed().as_secs_f64();
        quiet(&peers, opts.phase_timeout).await?;
        let reading = procfs::settled(pid).await?;
        o.departure_cpu_secs = cpu_secs(reading.cpu_ticks - cpu_start);
        let (entries_after, bytes_after) = before(&peers);
        (o.departed_held, o.departure_entries, o.departure_bytes) =
            (held, entries_after - entries, bytes_after - bytes);
        say(format!(
            "a peer holding {held} entries left: {} entries ({} bytes) paged to the {} sessions left in {:.1} s",
            o.departure_entries,
            o.departure_bytes,
            peers.len(),
            o.departure_secs
        ));
    }
    o.peak_rss_kib = procfs::sample(pid)?.hwm_kib;

    let mut closing = JoinSet::new();
    for peer in peers {
        closing.spawn(peer.close());
    }
    while closing.join_next().await.is_some() {}
    Ok(o)
}

async fn connect_all(
    target: &Target,
    layout: &Layout,
    opts: &Options,
    probe: &Arc<Probe>,
) -> Result<(Vec<SimPeer>, u32), LoadError> {
    let gate = Arc::new(Semaphore::new(opts.connect_parallel.max(1)));
    let reading = opts.reading;
    let mut tasks = JoinSet::new();
    for index in 0..layout.peers {
        let (gate, target, probe) = (gate.clone(), target.clone(), probe.clone());
        let phase = index as f64 / layout.peers as f64;
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the gate stays open");
            // A busy tracker may drop a handshake (2 s for its first
            // message): retry like a real peer would, with a growing pause.
            let mut attempt = 0;
            loop {
                match SimPeer::connect(&target, index, phase, probe.clone(), reading).await {
                    Ok(peer) => return Ok((peer, attempt)),
                    Err(e) if attempt + 1 >= CONNECT_ATTEMPTS => return Err(e),
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                    }
                }
            }
        });
    }
    let mut peers = Vec::with_capacity(layout.peers);
    let mut retries = 0;
    while let Some(joined) = tasks.join_next().await {
        let (peer, attempts) = joined.map_err(|e| LoadError::Task(e.to_string()))??;
        retries += attempts;
        peers.push(peer);
    }
    peers.sort_by_key(|p| p.index);
    Ok((peers, retries))
}

/// Each peer `p` announces `lists[p]` (record indexes), in batches;
/// `parallel` peers at a time.
async fn announce(
    peers: &[SimPeer],
    records: &Arc<Vec<FileRecord>>,
    lists: Vec<Vec<usize>>,
    parallel: usize,
) -> Result<(), LoadError> {
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for (peer, list) in peers.iter().zip(lists) {
        if list.is_empty() {
            continue;
        }
        let (gate, records, sender) = (gate.clone(), records.clone(), peer.sender());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the gate stays open");
            for part in list.chunks(dartsync_shared::limits::MAX_RECORDS_PER_MESSAGE) {
                let part: Vec<FileRecord> = part.iter().map(|&i| records[i].clone()).collect();
                for batch in announce_batches(&part) {
                    sender.send(PeerMessage::Announce { records: batch.to_vec() }).await?;
                }
            }
            Ok::<(), LoadError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| LoadError::Task(e.to_string()))??;
    }
    Ok(())
}

/// Waits until every session has seen `expected` (or every session
/// stands at the same seq for [`QUIET`], noted); returns the seq reached.
async fn settle(
    peers: &[SimPeer],
    expected: u64,
    timeout: Duration,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<u64, LoadError> {
    let deadline = Instant::now() + timeout;
    let mut last = (0, 0);
    let mut since = Instant::now();
    loop {
        check_alive(peers)?;
        let min = peers.iter().map(SimPeer::seq).min().unwrap_or(expected);
        let max = peers.iter().map(SimPeer::seq).max().unwrap_or(expected);
        if min >= expected {
            return Ok(min);
        }
        if (min, max) != last {
            last = (min, max);
            since = Instant::now();
        } else if min == max && since.elapsed() >= QUIET {
            notes.push(format!("{what}: every session settled at seq {min}, below the {expected} expected"));
            return Ok(min);
        }
        if Instant::now() >= deadline {
            return Err(LoadError::Timeout { what: what.to_owned(), min, max, expected });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every session stands at one seq and has received no delta
/// entry for [`QUIET_AFTER_DEPARTURE`].
async fn quiet(peers: &[SimPeer], timeout: Duration) -> Result<(), LoadError> {
    let deadline = Instant::now() + timeout;
    let look = || {
        let seqs = peers.iter().map(SimPeer::seq);
        let entries: u64 = peers.iter().map(|p| p.seen.entries.load(Ordering::SeqCst)).sum();
        (seqs.clone().min(), seqs.max(), entries)
    };
    let mut last = look();
    let mut since = Instant::now();
    loop {
        check_alive(peers)?;
        let now = look();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now.0 == now.1 && since.elapsed() >= QUIET_AFTER_DEPARTURE {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (min, max) = (now.0.unwrap_or(0), now.1.unwrap_or(0));
            return Err(LoadError::Timeout { what: "quiet after a departure".into(), min, max, expected: max });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes
/// (false); fails if one of `peers` ends meanwhile.
async fn wait_until(peers: &[SimPeer], timeout: Duration, done: impl Fn() -> bool) -> Result<bool, LoadError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        check_alive(peers)?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// Peers online and up to date in the last device list `peer` received.
fn up_to_date_listed(peer: &SimPeer) -> usize {
    peer.seen.devices_up_to_date.load(Ordering::SeqCst)
}

fn cpu_secs(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

fn check_alive(peers: &[SimPeer]) -> Result<(), LoadError> {
    match peers.iter().find_map(|p| p.end_reason().map(|why| (p.index, why))) {
        Some((index, what)) => Err(LoadError::Session { index, what }),
        None => Ok(()),
    }
}
